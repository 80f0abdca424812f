//! The connection-pool / circuit-breaker state machine of one cluster, with Envoy's semantics.
//!
//! Pure: no I/O, no clocks, no async. `C` is a pooled connection handle, `W` a waiter token (the
//! async layer uses a oneshot sender). A request is admitted to an idle connection, or reserves a
//! new connection while under `max_connections`, or waits FIFO while under `max_pending_requests`,
//! or overflows. `max_requests` caps requests holding a connection (or a connect slot).

use std::collections::VecDeque;

use config::Limits;

/// What `admit` decided for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<C> {
    /// Use this idle connection.
    Use(C),
    /// A connection slot was reserved: open a new connection for this request.
    Connect,
    /// Wait in the pending queue under this id.
    Queued(u64),
    /// Refused: answer 503 UO.
    Overflow(Overflow),
}

/// What [`Pool::admit_for`] may do with an idle connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// To the wanted host and open: use it.
    Take,
    /// To another host: leave it idle.
    Skip,
    /// Closed by the peer or idle too long: close it.
    Discard,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The pending queue was full (the pool had no connection to give nor open).
    Pending,
    /// `max_requests` requests were already in flight.
    Requests,
}

/// What a waiter is handed when it leaves the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant<C> {
    Use(C),
    Connect,
}

/// Side effects of `admit` that the stats layer counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AdmitNotes {
    /// A new connection was wanted but `max_connections` refused it (Envoy's `upstream_cx_overflow`).
    pub cx_overflow: bool,
}

/// A snapshot for gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolState {
    pub connections: u32,
    pub idle: u32,
    pub pending: u32,
    pub requests: u32,
}

#[derive(Debug)]
pub struct Pool<C, W> {
    limits: Limits,
    /// Open or opening connections, idle or busy (HTTP and opaque TCP alike).
    connections: u32,
    /// Requests holding a connection or a connect slot.
    requests: u32,
    idle: Vec<C>,
    pending: VecDeque<(u64, W)>,
    next_id: u64,
}

fn under(n: u32, max: Option<u32>) -> bool {
    max.is_none_or(|m| n < m)
}

impl<C, W> Pool<C, W> {
    pub fn new(limits: Limits) -> Self {
        Pool {
            limits,
            connections: 0,
            requests: 0,
            idle: Vec::new(),
            pending: VecDeque::new(),
            next_id: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn state(&self) -> PoolState {
        PoolState {
            connections: self.connections,
            idle: self.idle.len() as u32,
            pending: self.pending.len() as u32,
            requests: self.requests,
        }
    }

    /// Decides for one new request. Idle connections for which `usable` is false are discarded
    /// (they were closed by the peer). `waiter` is called only if the request is queued.
    #[cfg(test)]
    pub fn admit(
        &mut self,
        usable: impl Fn(&C) -> bool,
        waiter: impl FnOnce() -> W,
    ) -> (Admit<C>, AdmitNotes) {
        self.admit_for(
            |c| if usable(c) { Idle::Take } else { Idle::Discard },
            waiter,
        )
    }

    /// [`Pool::admit`] for a request bound to one host of several: `judge` says of each idle
    /// connection whether it is to that host and usable (`Take`), to another host (`Skip`), or
    /// closed (`Discard`). With no idle connection to its host and no room for another
    /// connection, the request closes the least recently used idle connection to another host
    /// and opens its own in that slot: the limit holds and the balancer's choice stands.
    pub fn admit_for(
        &mut self,
        judge: impl Fn(&C) -> Idle,
        waiter: impl FnOnce() -> W,
    ) -> (Admit<C>, AdmitNotes) {
        let mut notes = AdmitNotes::default();
        if !under(self.requests, self.limits.max_requests) {
            return (Admit::Overflow(Overflow::Requests), notes);
        }
        // Most recently used first: keeps the hot set of connections small.
        let mut i = self.idle.len();
        while i > 0 {
            i -= 1;
            match judge(&self.idle[i]) {
                Idle::Skip => {}
                Idle::Take => {
                    let c = self.idle.remove(i);
                    self.requests += 1;
                    return (Admit::Use(c), notes);
                }
                Idle::Discard => {
                    drop(self.idle.remove(i));
                    self.connections -= 1;
                }
            }
        }
        if under(self.connections, self.limits.max_connections) {
            self.connections += 1;
            self.requests += 1;
            return (Admit::Connect, notes);
        }
        if !self.idle.is_empty() {
            // Every idle connection is to another host: trade the oldest for a new one.
            drop(self.idle.remove(0));
            self.requests += 1;
            return (Admit::Connect, notes);
        }
        notes.cx_overflow = true;
        if under(self.pending.len() as u32, self.limits.max_pending_requests) {
            let id = self.next_id;
            self.next_id += 1;
            self.pending.push_back((id, waiter()));
            return (Admit::Queued(id), notes);
        }
        (Admit::Overflow(Overflow::Pending), notes)
    }

    /// New limits (the control plane changed the policy). Connections and requests over the new
    /// limits finish; the limits apply to what comes next.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// A request finished with its connection. A `reusable` connection goes to the first waiter
    /// or back to the idle set; otherwise it is closed, which may let a waiter open a new one.
    pub fn release(&mut self, conn: C, reusable: bool) -> Option<(W, Grant<C>)> {
        self.requests -= 1;
        if reusable {
            if let Some((_, w)) = self.pending.pop_front() {
                self.requests += 1;
                return Some((w, Grant::Use(conn)));
            }
            self.idle.push(conn);
            None
        } else {
            drop(conn);
            self.connections -= 1;
            self.grant_connect()
        }
    }

    /// A reserved connect slot was given back (the connect failed, or its request went away).
    pub fn connect_failed(&mut self) -> Option<(W, Grant<C>)> {
        self.requests -= 1;
        self.connections -= 1;
        self.grant_connect()
    }

    /// Takes an idle connection out of the pool (its peer closed it, or it idled too long); the
    /// caller closes it. `None` if it is not idle (busy, or already gone).
    #[allow(clippy::type_complexity)]
    pub fn remove_idle(
        &mut self,
        is_it: impl Fn(&C) -> bool,
    ) -> Option<(C, Option<(W, Grant<C>)>)> {
        let i = self.idle.iter().position(is_it)?;
        let c = self.idle.swap_remove(i);
        self.connections -= 1;
        Some((c, self.grant_connect()))
    }

    /// A queued request went away (client disconnect, timeout). False if it was no longer
    /// queued: it has been granted something, which the caller must give back.
    pub fn cancel(&mut self, id: u64) -> bool {
        match self.pending.iter().position(|(i, _)| *i == id) {
            Some(i) => {
                self.pending.remove(i);
                true
            }
            None => false,
        }
    }

    /// Opaque TCP: one connection, no request accounting. False means overflow.
    pub fn open_tcp(&mut self) -> bool {
        if under(self.connections, self.limits.max_connections) {
            self.connections += 1;
            true
        } else {
            false
        }
    }

    /// An opaque TCP connection closed.
    pub fn close_tcp(&mut self) -> Option<(W, Grant<C>)> {
        self.connections -= 1;
        self.grant_connect()
    }

    fn grant_connect(&mut self) -> Option<(W, Grant<C>)> {
        if under(self.connections, self.limits.max_connections)
            && under(self.requests, self.limits.max_requests)
        {
            let (_, w) = self.pending.pop_front()?;
            self.connections += 1;
            self.requests += 1;
            return Some((w, Grant::Connect));
        }
        None
    }

    /// Envoy's `circuit_breakers.default.cx_open`: 1 exactly while at the connection limit.
    pub fn cx_open(&self) -> bool {
        !under(self.connections, self.limits.max_connections)
    }
    pub fn rq_pending_open(&self) -> bool {
        !under(self.pending.len() as u32, self.limits.max_pending_requests)
    }
    pub fn rq_open(&self) -> bool {
        !under(self.requests, self.limits.max_requests)
    }
    pub fn remaining_cx(&self) -> Option<u32> {
        self.limits
            .max_connections
            .map(|m| m.saturating_sub(self.connections))
    }
    pub fn remaining_pending(&self) -> Option<u32> {
        self.limits
            .max_pending_requests
            .map(|m| m.saturating_sub(self.pending.len() as u32))
    }
    pub fn remaining_rq(&self) -> Option<u32> {
        self.limits
            .max_requests
            .map(|m| m.saturating_sub(self.requests))
    }
}

#[cfg(test)]
mod tests;

//! A cluster: one upstream address, its pool (the [`crate::pool`] state machine behind a small
//! per-cluster mutex), its stats, and the connector that opens HTTP/1.1 client connections.
//!
//! A pooled connection is a plain socket and its read buffer: the request that leases it drives
//! it from its own task (see [`crate::http`]). While idle in the pool nothing polls it; a sweeper
//! task per cluster, running only while the cluster has idle connections, closes those the peer
//! closed and those idle past the idle timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::iobuf::Buf;
use crate::pool::{Admit, Grant, Overflow, Pool};
use crate::stats::{ClusterStats, Registry};
use config::Limits;

/// A pooled HTTP/1.1 client connection.
pub struct Conn {
    pub io: TcpStream,
    /// Bytes read and not yet consumed (empty, and holding no memory, while idle).
    pub buf: Buf,
    /// Requests sent on it so far.
    uses: u32,
    /// When it last went idle (ms since process start), for the idle timeout.
    last_used: u64,
    stats: Arc<ClusterStats>,
}

impl Conn {
    /// Still open, as far as can be told without blocking: nothing (no EOF, no stray bytes) has
    /// arrived while it sat idle. Usually answered from the runtime's readiness state, without
    /// a system call.
    fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: EOF or unsolicited bytes, or stale readiness from the last read.
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Open and not idle for `idle` or longer (that one is counted as an idle timeout).
    fn usable(&self, now: u64, idle: Duration) -> bool {
        if Duration::from_millis(now.saturating_sub(self.last_used)) >= idle {
            self.stats.upstream_cx_idle_timeout.inc();
            return false;
        }
        self.is_open()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stats.upstream_cx_destroy.inc();
    }
}

fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

type Waiter = oneshot::Sender<Grant<Conn>>;

pub struct Cluster {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<ClusterStats>,
    pool: Mutex<Pool<Conn, Waiter>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_requests_per_connection: Option<u32>,
    /// A sweeper task is watching the idle connections.
    sweeping: AtomicBool,
}

/// Connection timeouts of a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// An idle pooled connection is closed after this long.
    pub idle: Duration,
}

/// Why no connection could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireError {
    /// Circuit breaker: 503 UO.
    Overflow,
    /// Connect failed or timed out: 503 UF.
    ConnectFailed,
}

impl Cluster {
    pub fn new(
        name: String,
        addr: SocketAddr,
        limits: Limits,
        timeouts: Timeouts,
        registry: &Registry,
    ) -> Arc<Cluster> {
        let stats = registry.cluster(&name);
        let c = Cluster {
            name,
            addr,
            stats,
            pool: Mutex::new(Pool::new(limits)),
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.idle,
            max_requests_per_connection: limits.max_requests_per_connection,
            sweeping: AtomicBool::new(false),
        };
        c.sync(&c.pool.lock().expect("pool lock"));
        Arc::new(c)
    }

    pub fn limits(&self) -> Limits {
        self.pool.lock().expect("pool lock").limits()
    }

    /// Copies the pool's state into the gauges (called with the pool lock held).
    fn sync(&self, p: &Pool<Conn, Waiter>) {
        let s = p.state();
        let st = &self.stats;
        st.upstream_cx_active.set(s.connections as i64);
        st.upstream_rq_active.set(s.requests as i64);
        st.upstream_rq_pending_active.set(s.pending as i64);
        st.cb_cx_open.set(p.cx_open() as i64);
        st.cb_rq_pending_open.set(p.rq_pending_open() as i64);
        st.cb_rq_open.set(p.rq_open() as i64);
        let opt = |v: Option<u32>| v.map_or(-1, |v| v as i64);
        st.cb_remaining_cx.set(opt(p.remaining_cx()));
        st.cb_remaining_pending.set(opt(p.remaining_pending()));
        st.cb_remaining_rq.set(opt(p.remaining_rq()));
    }

    fn with_pool<T>(&self, f: impl FnOnce(&mut Pool<Conn, Waiter>) -> T) -> T {
        let mut p = self.pool.lock().expect("pool lock");
        let t = f(&mut p);
        self.sync(&p);
        t
    }

    /// Hands a grant to its waiter; if the waiter is gone, gives the grant back to the pool
    /// (which may produce a grant for the next waiter).
    fn dispatch(&self, mut next: Option<(Waiter, Grant<Conn>)>) {
        while let Some((w, g)) = next.take() {
            if let Err(g) = w.send(g) {
                next = self.give_back(g);
            }
        }
    }

    fn give_back(&self, g: Grant<Conn>) -> Option<(Waiter, Grant<Conn>)> {
        match g {
            Grant::Use(c) => self.with_pool(|p| p.release(c, true)),
            Grant::Connect => self.with_pool(|p| p.connect_failed()),
        }
    }

    /// Gets a connection for one request, waiting in the pending queue if the pool says so.
    /// Dropping the future while queued leaves the queue cleanly.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        // Idle connections the peer closed (or idled out) are dropped by `admit` itself.
        // The oneshot channel is only made for a request that must wait.
        let mut rx = None;
        // The clock is read only if there is an idle connection to judge.
        let now = std::cell::Cell::new(None);
        let (admit, notes) = self.with_pool(|p| {
            p.admit(
                |c| {
                    let t = now.get().unwrap_or_else(now_ms);
                    now.set(Some(t));
                    c.usable(t, self.idle_timeout)
                },
                || {
                    let (tx, r) = oneshot::channel();
                    rx = Some(r);
                    tx
                },
            )
        });
        if notes.cx_overflow {
            self.stats.upstream_cx_overflow.inc();
        }
        let grant = match admit {
            Admit::Use(c) => Grant::Use(c),
            Admit::Connect => Grant::Connect,
            Admit::Overflow(o) => {
                self.stats.upstream_rq_pending_overflow.inc();
                if o == Overflow::Requests {
                    tracing::debug!(cluster = %self.name, "max requests reached");
                }
                return Err(AcquireError::Overflow);
            }
            Admit::Queued(id) => {
                self.stats.upstream_rq_pending_total.inc();
                let guard = PendingGuard {
                    cluster: self,
                    id,
                    rx,
                };
                guard.wait().await
            }
        };
        match grant {
            Grant::Use(mut c) => {
                c.uses += 1;
                Ok(Lease {
                    cluster: self.clone(),
                    conn: Some(c),
                    reusable: false,
                })
            }
            Grant::Connect => self.connect().await,
        }
    }

    /// Opens a new connection in a slot the pool reserved.
    async fn connect(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        // If this future is dropped mid-connect, the slot must go back.
        struct Slot<'a>(Option<&'a Cluster>);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                if let Some(c) = self.0 {
                    let next = c.with_pool(|p| p.connect_failed());
                    c.dispatch(next);
                }
            }
        }
        let mut slot = Slot(Some(self));
        let st = &self.stats;
        st.upstream_cx_total.inc();
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(cluster = %self.name, error = %e, "upstream connect failed");
                    st.upstream_cx_connect_fail.inc();
                    return Err(AcquireError::ConnectFailed);
                }
                Err(_) => {
                    st.upstream_cx_connect_fail.inc();
                    st.upstream_cx_connect_timeout.inc();
                    return Err(AcquireError::ConnectFailed);
                }
            };
        let _ = stream.set_nodelay(true);
        st.upstream_cx_http1_total.inc();
        slot.0 = None;
        Ok(Lease {
            cluster: self.clone(),
            conn: Some(Conn {
                io: stream,
                buf: Buf::new(),
                uses: 1,
                last_used: now_ms(),
                stats: self.stats.clone(),
            }),
            reusable: false,
        })
    }

    /// Closes idle connections that the peer closed or that idled too long, every second
    /// (or every idle timeout, if shorter) while there are idle connections; then exits.
    async fn sweep(self: Arc<Self>) {
        let every = self.idle_timeout.min(Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            let now = now_ms();
            let idle = self.idle_timeout;
            while let Some((c, next)) = self.with_pool(|p| p.remove_idle(|c| !c.usable(now, idle)))
            {
                drop(c);
                self.dispatch(next);
            }
            self.sweeping.store(false, Ordering::Release);
            // Exit when nothing is idle; a connection going idle later starts a new sweeper.
            if self.with_pool(|p| p.state().idle) == 0 || self.sweeping.swap(true, Ordering::AcqRel)
            {
                return;
            }
        }
    }

    /// Opaque TCP: takes a connection slot, or `None` on overflow (counted).
    pub fn open_tcp(self: &Arc<Self>) -> Option<TcpSlot> {
        if self.with_pool(|p| p.open_tcp()) {
            self.stats.upstream_cx_total.inc();
            Some(TcpSlot(self.clone()))
        } else {
            self.stats.upstream_cx_overflow.inc();
            None
        }
    }

    /// Text lines for `/clusters`.
    pub fn describe(&self, out: &mut String) {
        use std::fmt::Write;
        let l = self.limits();
        let n = &self.name;
        for (key, limit) in [
            ("default_priority::max_connections", l.max_connections),
            (
                "default_priority::max_pending_requests",
                l.max_pending_requests,
            ),
            ("default_priority::max_requests", l.max_requests),
            ("max_requests_per_connection", l.max_requests_per_connection),
        ] {
            match limit {
                Some(v) => writeln!(out, "{n}::{key}::{v}"),
                None => writeln!(out, "{n}::{key}::unlimited"),
            }
            .expect("writing to a String");
        }
        let a = self.addr;
        let s = &self.stats;
        let values: [(&str, &dyn std::fmt::Display); 6] = [
            ("cx_active", &s.upstream_cx_active.get()),
            ("cx_total", &s.upstream_cx_total.get()),
            ("cx_connect_fail", &s.upstream_cx_connect_fail.get()),
            ("rq_active", &s.upstream_rq_active.get()),
            ("rq_total", &s.upstream_rq_total.get()),
            ("rq_timeout", &s.upstream_rq_timeout.get()),
        ];
        for (key, value) in values {
            writeln!(out, "{n}::{a}::{key}::{value}").expect("writing to a String");
        }
    }
}

/// Waits in the queue; leaving early (drop) cancels cleanly.
struct PendingGuard<'a> {
    cluster: &'a Cluster,
    id: u64,
    rx: Option<oneshot::Receiver<Grant<Conn>>>,
}

impl PendingGuard<'_> {
    async fn wait(mut self) -> Grant<Conn> {
        let rx = self.rx.as_mut().expect("receiver");
        let g = rx.await.expect("the pool never drops a queued waiter");
        self.rx = None;
        g
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let c = self.cluster;
        c.stats.upstream_rq_cancelled.inc();
        if c.with_pool(|p| p.cancel(self.id)) {
            return;
        }
        // Already granted (or about to be): close the channel, then give back what arrived.
        rx.close();
        if let Ok(g) = rx.try_recv() {
            let next = c.give_back(g);
            c.dispatch(next);
        }
    }
}

/// A request's hold on a connection. Dropped without `reusable` the connection is closed.
pub struct Lease {
    cluster: Arc<Cluster>,
    conn: Option<Conn>,
    reusable: bool,
}

impl Lease {
    /// The leased connection.
    pub fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("leased connection")
    }

    /// Requests this connection has carried, this one included.
    pub fn uses(&self) -> u32 {
        self.conn.as_ref().map_or(0, |c| c.uses)
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The exchange completed cleanly: keep the connection if the response allowed it and it
    /// has not served its quota.
    pub fn done(&mut self, upstream_reusable: bool) {
        let max = self.cluster.max_requests_per_connection;
        self.reusable = upstream_reusable && max.is_none_or(|m| self.uses() < m);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take() {
            // Stray bytes after a response mean the connection is out of step: close it.
            let reusable = self.reusable && c.buf.is_empty();
            if reusable {
                c.last_used = now_ms();
                c.buf.release();
            }
            let next = self.cluster.with_pool(|p| p.release(c, reusable));
            let went_idle = reusable && next.is_none();
            self.cluster.dispatch(next);
            if went_idle && !self.cluster.sweeping.swap(true, Ordering::AcqRel) {
                tokio::spawn(self.cluster.clone().sweep());
            }
        }
    }
}

/// An opaque TCP connection's slot in the pool.
pub struct TcpSlot(Arc<Cluster>);
impl Drop for TcpSlot {
    fn drop(&mut self) {
        let next = self.0.with_pool(|p| p.close_tcp());
        self.0.dispatch(next);
    }
}

/// The clusters of a process, by name. Lookups take a read lock; a new destination a write lock.
/// Outbound destinations are unbounded (an app may call thousands of IPs), so once there are
/// `sweep_at` clusters, creating another first forgets the idle ones (no connection, no request,
/// nothing queued) and their stats; a destination seen again starts afresh.
pub struct Clusters {
    map: RwLock<std::collections::HashMap<String, Arc<Cluster>>>,
    sweep_at: std::sync::atomic::AtomicUsize,
}

/// How many clusters may exist before idle ones are forgotten.
pub const MAX_IDLE_CLUSTERS: usize = 1024;

impl Default for Clusters {
    fn default() -> Self {
        Clusters {
            map: RwLock::default(),
            sweep_at: std::sync::atomic::AtomicUsize::new(MAX_IDLE_CLUSTERS),
        }
    }
}

impl Clusters {
    pub fn get_or_create(
        &self,
        name: &str,
        registry: &Registry,
        make: impl FnOnce() -> Arc<Cluster>,
    ) -> Arc<Cluster> {
        if let Some(c) = self.map.read().expect("clusters lock").get(name) {
            return c.clone();
        }
        let mut map = self.map.write().expect("clusters lock");
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        if map.len() >= self.sweep_at.load(Ordering::Relaxed) {
            map.retain(|n, c| {
                let idle =
                    c.pool.lock().expect("pool lock").state() == crate::pool::PoolState::default();
                if idle {
                    registry.remove_cluster(n);
                }
                !idle
            });
            // Busy clusters are kept; sweep again only once as many more have come.
            self.sweep_at
                .store((map.len() * 2).max(MAX_IDLE_CLUSTERS), Ordering::Relaxed);
        }
        map.entry(name.to_string()).or_insert_with(make).clone()
    }

    pub fn len(&self) -> usize {
        self.map.read().expect("clusters lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<Cluster>> {
        let mut v: Vec<_> = self
            .map
            .read()
            .expect("clusters lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests;

/// Envoy-style cluster names: `inbound_<port>`, outbound `<ip>:<port>` (`[v6]:port`).
pub fn inbound_name(port: u16) -> String {
    format!("inbound_{port}")
}
pub fn outbound_name(addr: SocketAddr) -> String {
    addr.to_string()
}

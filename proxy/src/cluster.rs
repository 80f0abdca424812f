//! A cluster: its hosts (one original destination, or a Service's endpoints from the control
//! plane), the [`crate::balancer`] that picks one per request, the [`crate::outlier`] detector
//! that ejects failing ones, one pool (the [`crate::pool`] state machine behind a small
//! per-cluster mutex) whose limits are the cluster's circuit breaker while its connections are
//! each to one host, its stats, and the connector that opens HTTP/1.1 client connections.
//!
//! A pooled connection is a plain socket and its read buffer: the request that leases it drives
//! it from its own task (see [`crate::http`]). While idle in the pool nothing polls it; a sweeper
//! task per cluster, running only while the cluster has idle connections, closes those the peer
//! closed and those idle past the idle timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::balancer::Balancer;
use crate::host::{now_ms, Active, Host};
use crate::iobuf::Buf;
use crate::outlier::{Detector, Outcome, Reason};
use crate::pool::{Admit, Grant, Idle, Overflow, Pool};
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
    /// The host it is connected to.
    host: Arc<Host>,
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

type Waiter = oneshot::Sender<Grant<Conn>>;

/// The hosts and how to choose among them, replaced whole when the control plane says so.
#[derive(Debug)]
pub struct Lb {
    pub hosts: Arc<[Arc<Host>]>,
    pub balancer: Balancer,
    pub detector: Arc<Detector>,
}

impl Lb {
    /// The host the balancer picks (the HTTP/2 path's choice per stream).
    pub fn pick_host(&self, key: Option<u64>) -> Option<Arc<Host>> {
        self.pick(key).cloned()
    }

    fn pick(&self, key: Option<u64>) -> Option<&Arc<Host>> {
        let any_ejected = self.detector.ejected_now() > 0;
        let now = if any_ejected { now_ms() } else { 0 };
        self.balancer.pick(&self.hosts, any_ejected, key, now)
    }
}

pub struct Cluster {
    pub name: String,
    /// The address this cluster was made for (the original destination, or a Service address).
    pub addr: SocketAddr,
    pub stats: Arc<ClusterStats>,
    lb: RwLock<Arc<Lb>>,
    pool: Mutex<Pool<Conn, Waiter>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_requests_per_connection: Option<u32>,
    /// A sweeper task is watching the idle connections.
    sweeping: AtomicBool,
    /// The control plane defined this cluster (a Service), not an original destination.
    via_api: AtomicBool,
    /// Its balancer hashes a request key (read per request without taking the lb lock).
    hashing: AtomicBool,
    /// Route retries in flight, and how many may be (`maxRetries`, Envoy's `max_retries`
    /// circuit breaker, default 3).
    retries_active: AtomicU32,
    max_retries: AtomicU32,
    /// The HTTP/2 path's streams and connections (see [`crate::http2`]).
    pub h2: crate::http2::Streams,
}

/// Envoy's default `max_retries` circuit breaker.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// A retry in flight, counted against the cluster's `maxRetries` until dropped.
pub struct RetryToken(Arc<Cluster>);

impl Drop for RetryToken {
    fn drop(&mut self) {
        self.0.retries_active.fetch_sub(1, Ordering::Relaxed);
    }
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
    /// No endpoint at all: 503 UH.
    NoHost,
}

/// A host as the control plane names it: address and pod.
pub type Endpoint = (SocketAddr, Option<String>);

impl Cluster {
    pub fn new(
        name: String,
        addr: SocketAddr,
        limits: Limits,
        timeouts: Timeouts,
        registry: &Registry,
    ) -> Arc<Cluster> {
        let stats = registry.cluster(&name);
        let lb = Lb {
            hosts: Arc::from(vec![Arc::new(Host::new(addr, None))]),
            balancer: Balancer::default(),
            detector: Arc::new(Detector::new(None)),
        };
        stats.membership_total.set(1);
        stats.membership_healthy.set(1);
        let c = Cluster {
            name,
            addr,
            stats,
            lb: RwLock::new(Arc::new(lb)),
            pool: Mutex::new(Pool::new(limits)),
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.idle,
            max_requests_per_connection: limits.max_requests_per_connection,
            sweeping: AtomicBool::new(false),
            via_api: AtomicBool::new(false),
            hashing: AtomicBool::new(false),
            retries_active: AtomicU32::new(0),
            max_retries: AtomicU32::new(DEFAULT_MAX_RETRIES),
            h2: crate::http2::Streams::default(),
        };
        c.sync(&c.pool.lock().expect("pool lock"));
        Arc::new(c)
    }

    /// Sets the `maxRetries` circuit breaker (a policy's `http.maxRetries`).
    pub fn set_max_retries(&self, n: u32) {
        self.max_retries.store(n, Ordering::Relaxed);
    }

    /// Room for one more retry, or `None` (counted as `upstream_rq_retry_overflow`) when
    /// `maxRetries` retries are in flight.
    pub fn try_retry(self: &Arc<Self>) -> Option<RetryToken> {
        let max = self.max_retries.load(Ordering::Relaxed);
        let prev = self.retries_active.fetch_add(1, Ordering::Relaxed);
        if prev >= max {
            self.retries_active.fetch_sub(1, Ordering::Relaxed);
            self.stats.upstream_rq_retry_overflow.inc();
            return None;
        }
        Some(RetryToken(self.clone()))
    }

    pub fn limits(&self) -> Limits {
        self.pool.lock().expect("pool lock").limits()
    }

    /// Copies the pool's state into the gauges (called with the pool lock held).
    fn sync(&self, p: &Pool<Conn, Waiter>) {
        let s = p.state();
        let st = &self.stats;
        // Upstream HTTP/2 connections open count too (a load, no lock).
        st.upstream_cx_active
            .set(s.connections as i64 + i64::from(self.h2.connections()));
        // HTTP/2 streams in flight and waiting count too (two loads, no lock).
        let (streams, waiting) = self.h2.state();
        st.upstream_rq_active
            .set(i64::from(s.requests) + i64::from(streams));
        st.upstream_rq_pending_active
            .set(i64::from(s.pending) + i64::from(waiting));
        st.cb_cx_open.set(p.cx_open() as i64);
        st.cb_rq_pending_open.set(p.rq_pending_open() as i64);
        st.cb_rq_open.set(p.rq_open() as i64);
        let opt = |v: Option<u32>| v.map_or(-1, |v| v as i64);
        st.cb_remaining_cx.set(opt(p.remaining_cx()));
        st.cb_remaining_pending.set(opt(p.remaining_pending()));
        st.cb_remaining_rq.set(opt(p.remaining_rq()));
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long a pooled upstream connection may stay idle.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Brings the gauges up to date (after an HTTP/2 stream starts, waits or ends).
    pub fn sync_gauges(&self) {
        self.with_pool(|_| ());
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

    /// What its balancer hashes, if it hashes (the common case answers from one flag).
    pub fn hash_on(&self) -> Option<config::api::HashOn> {
        if !self.hashing.load(Ordering::Relaxed) {
            return None;
        }
        self.lb().balancer.hash_on().cloned()
    }

    /// The hosts and balancer now.
    pub fn lb(&self) -> Arc<Lb> {
        self.lb.read().expect("lb lock").clone()
    }

    /// Replaces the hosts, balancer, outlier settings and limits (a control-plane update).
    /// Hosts that stay keep their counters and ejections; hosts that go finish their requests,
    /// and their idle connections are closed.
    pub fn update(
        self: &Arc<Self>,
        endpoints: &[Endpoint],
        balancer: config::api::Balancer,
        outlier: Option<config::api::Outlier>,
        limits: Limits,
    ) {
        self.via_api.store(true, Ordering::Relaxed);
        let now = now_ms();
        let mut lb = self.lb.write().expect("lb lock");
        let old = lb.clone();
        let detector = if old.detector.config() == outlier.as_ref() {
            old.detector.clone()
        } else {
            // New settings: every host starts afresh.
            for h in old.hosts.iter() {
                old.detector.restore(&h.outlier, now);
            }
            Arc::new(Detector::new(outlier))
        };
        let hosts: Vec<Arc<Host>> = endpoints
            .iter()
            .map(|(addr, pod)| {
                old.hosts
                    .iter()
                    .find(|h| h.addr == *addr && !h.is_removed())
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Host::new(*addr, pod.clone())))
            })
            .collect();
        for h in old.hosts.iter() {
            if !hosts.iter().any(|n| Arc::ptr_eq(n, h)) {
                h.removed.store(true, Ordering::Relaxed);
                detector.restore(&h.outlier, now);
            }
        }
        self.hashing.store(
            matches!(balancer, config::api::Balancer::ConsistentHash { .. }),
            Ordering::Relaxed,
        );
        *lb = Arc::new(Lb {
            hosts: Arc::from(hosts),
            balancer: Balancer::new(balancer),
            detector,
        });
        self.sync_membership(&lb);
        drop(lb);
        self.with_pool(|p| p.set_limits(limits));
        // Close what is idle to hosts that left.
        while let Some((c, next)) = self.with_pool(|p| p.remove_idle(|c| c.host.is_removed())) {
            drop(c);
            self.dispatch(next);
        }
    }

    fn sync_membership(&self, lb: &Lb) {
        let total = lb.hosts.len() as i64;
        let out = lb.detector.ejected_now() as i64;
        self.stats.membership_total.set(total);
        self.stats.membership_healthy.set((total - out).max(0));
        self.stats.outlier_ejections_active.set(out);
    }

    /// Feeds one outcome of a request to `host` to the outlier detector, and carries out the
    /// ejection it decides on: the host is out until its time is over.
    pub fn report(self: &Arc<Self>, lb: &Arc<Lb>, host: &Arc<Host>, outcome: Outcome) {
        if matches!(outcome, Outcome::ConnectFailed)
            || matches!(outcome, Outcome::Status(s) if s >= 500)
        {
            host.rq_error.fetch_add(1, Ordering::Relaxed);
        }
        if !lb.detector.enabled() {
            return;
        }
        let now = now_ms();
        let st = &self.stats;
        match lb
            .detector
            .record(&host.outlier, outcome, lb.hosts.len(), now)
        {
            Ok(None) => {}
            Err(_) => st.outlier_ejections_overflow.inc(),
            Ok(Some(e)) => {
                st.outlier_ejections_enforced_total.inc();
                match e.reason {
                    Reason::Consecutive5xx => st.outlier_ejections_enforced_5xx.inc(),
                    Reason::ConsecutiveGateway => st.outlier_ejections_enforced_gateway.inc(),
                }
                tracing::info!(cluster = %self.name, host = %host.addr, reason = ?e.reason,
                    for_ms = e.until - now, "outlier detection: host ejected");
                self.sync_membership(lb);
                let (this, lb, host) = (self.clone(), lb.clone(), host.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(e.until.saturating_sub(now_ms())))
                        .await;
                    lb.detector.restore(&host.outlier, now_ms());
                    tracing::info!(cluster = %this.name, host = %host.addr, "outlier detection: host returned");
                    this.sync_membership(&this.lb());
                });
            }
        }
    }

    /// Gets a connection for one request, waiting in the pending queue if the pool says so.
    /// The balancer picks the host (`key`: a consistent-hash key); an idle connection to that
    /// host is reused. Dropping the future while queued leaves the queue cleanly.
    pub async fn acquire(self: &Arc<Self>, key: Option<u64>) -> Result<Lease, AcquireError> {
        let lb = self.lb();
        let Some(host) = lb.pick(key) else {
            return Err(AcquireError::NoHost);
        };
        let host = host.clone();
        let many = lb.hosts.len() > 1;
        // Idle connections the peer closed (or idled out) are dropped by `admit` itself.
        // The oneshot channel is only made for a request that must wait.
        let mut rx = None;
        // The clock is read only if there is an idle connection to judge.
        let now = std::cell::Cell::new(None);
        let (admit, notes) = self.with_pool(|p| {
            p.admit_for(
                |c| {
                    if many && !Arc::ptr_eq(&c.host, &host) {
                        return if c.host.is_removed() {
                            Idle::Discard
                        } else {
                            Idle::Skip
                        };
                    }
                    let t = now.get().unwrap_or_else(now_ms);
                    now.set(Some(t));
                    if c.usable(t, self.idle_timeout) && !c.host.is_removed() {
                        Idle::Take
                    } else {
                        Idle::Discard
                    }
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
                    active: Active::new(c.host.clone()),
                    lb,
                    conn: Some(c),
                    reusable: false,
                })
            }
            Grant::Connect => self.connect(lb, host).await,
        }
    }

    /// Opens a new connection in a slot the pool reserved.
    async fn connect(
        self: &Arc<Self>,
        lb: Arc<Lb>,
        host: Arc<Host>,
    ) -> Result<Lease, AcquireError> {
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
        let active = Active::new(host.clone());
        host.cx_total.fetch_add(1, Ordering::Relaxed);
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(host.addr)).await {
                Ok(Ok(s)) => s,
                r => {
                    match r {
                        Ok(Err(e)) => tracing::debug!(cluster = %self.name, host = %host.addr,
                            error = %e, "upstream connect failed"),
                        _ => st.upstream_cx_connect_timeout.inc(),
                    }
                    st.upstream_cx_connect_fail.inc();
                    host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                    self.report(&lb, &host, Outcome::ConnectFailed);
                    return Err(AcquireError::ConnectFailed);
                }
            };
        let _ = stream.set_nodelay(true);
        st.upstream_cx_http1_total.inc();
        slot.0 = None;
        Ok(Lease {
            cluster: self.clone(),
            active,
            lb,
            conn: Some(Conn {
                io: stream,
                buf: Buf::new(),
                uses: 1,
                last_used: now_ms(),
                stats: self.stats.clone(),
                host,
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

    /// Opaque TCP: takes a connection slot and picks a host (`key`: a consistent-hash key, the
    /// client's address), or says why not (overflow is counted).
    pub fn open_tcp(self: &Arc<Self>, key: Option<u64>) -> Result<TcpSlot, AcquireError> {
        let lb = self.lb();
        let Some(host) = lb.pick(key).cloned() else {
            self.stats.upstream_cx_none_healthy.inc();
            return Err(AcquireError::NoHost);
        };
        if self.with_pool(|p| p.open_tcp()) {
            self.stats.upstream_cx_total.inc();
            Ok(TcpSlot {
                cluster: self.clone(),
                active: Active::new(host),
                lb,
            })
        } else {
            self.stats.upstream_cx_overflow.inc();
            Err(AcquireError::Overflow)
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
        writeln!(
            out,
            "{n}::added_via_api::{}",
            self.via_api.load(Ordering::Relaxed)
        )
        .expect("writing to a String");
        let lb = self.lb();
        writeln!(out, "{n}::lb_policy::{}", lb.balancer.name()).expect("writing to a String");
        if let Some(o) = lb.detector.config() {
            let opt = |v: Option<u32>| v.map_or("off".to_string(), |v| v.to_string());
            writeln!(
                out,
                "{n}::outlier_detection::consecutive_5xx={},consecutive_gateway_errors={},\
                 base_ejection_time_ms={},max_ejection_percent={}",
                opt(o.consecutive_5xx),
                opt(o.consecutive_gateway_errors),
                o.base_ejection_time_ms,
                o.max_ejection_percent
            )
            .expect("writing to a String");
        }
        let now = now_ms();
        // HTTP/1 connections in the pool, and HTTP/2 ones open.
        let cx_active =
            self.with_pool(|p| p.state().connections) as u64 + u64::from(self.h2.connections());
        for h in lb.hosts.iter() {
            let a = h.addr;
            let r = std::sync::atomic::Ordering::Relaxed;
            let single = lb.hosts.len() == 1;
            let values: [(&str, &dyn std::fmt::Display); 10] = [
                // Per host only where one host has them all.
                ("cx_active", &if single { cx_active } else { 0 }),
                ("cx_connect_fail", &h.cx_connect_fail.load(r)),
                ("cx_total", &h.cx_total.load(r)),
                ("rq_active", &h.active.load(r)),
                ("rq_error", &h.rq_error.load(r)),
                ("rq_timeout", &h.rq_timeout.load(r)),
                ("rq_total", &h.rq_total.load(r)),
                ("health_flags", &h.health_flags(now)),
                ("pod", &h.pod.as_deref().unwrap_or("-")),
                ("outlier_ejections", &h.outlier.ejection_count()),
            ];
            for (key, value) in values {
                writeln!(out, "{n}::{a}::{key}::{value}").expect("writing to a String");
            }
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
    /// The host this request counts against (its connection's host).
    active: Active,
    lb: Arc<Lb>,
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

    /// The host this request went to.
    pub fn host(&self) -> &Arc<Host> {
        &self.active.0
    }

    /// Tells outlier detection how the request ended.
    pub fn report(&self, outcome: Outcome) {
        self.cluster.report(&self.lb, &self.active.0, outcome);
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
            // Nor is a connection to a host that left the cluster kept.
            let reusable = self.reusable && c.buf.is_empty() && !c.host.is_removed();
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

/// An opaque TCP connection's slot in the pool, and the host it goes to.
pub struct TcpSlot {
    cluster: Arc<Cluster>,
    active: Active,
    lb: Arc<Lb>,
}

impl TcpSlot {
    pub fn host(&self) -> &Arc<Host> {
        &self.active.0
    }

    /// The connection to the host failed.
    pub fn connect_failed(&self) {
        self.active
            .0
            .cx_connect_fail
            .fetch_add(1, Ordering::Relaxed);
        self.cluster
            .report(&self.lb, &self.active.0, Outcome::ConnectFailed);
    }
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let next = self.cluster.with_pool(|p| p.close_tcp());
        self.cluster.dispatch(next);
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
                // A Service's cluster lives as long as its watch, busy or not.
                let idle = !c.via_api.load(Ordering::Relaxed)
                    && c.pool.lock().expect("pool lock").state()
                        == crate::pool::PoolState::default();
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

//! A host: one endpoint (pod IP and port) of a cluster, with the counters its balancer reads and
//! its outlier detector writes, all lock-free so the per-request path takes no lock for them.
//!
//! A host outlives its place in the endpoint set: requests in flight and pooled connections hold
//! it, so a pod that goes away finishes what it is doing; `removed` tells the pool to close its
//! idle connections instead of reusing them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Milliseconds since the process started: the one clock of pools, hosts and outlier detection.
pub fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

#[derive(Debug)]
pub struct Host {
    pub addr: SocketAddr,
    /// The pod's name, when the control plane knows it.
    pub pod: Option<String>,
    /// Requests (HTTP) or connections (opaque TCP) in flight: what least-request compares.
    pub active: AtomicU32,
    pub rq_total: AtomicU64,
    /// 5xx answers, resets and connect failures.
    pub rq_error: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub cx_total: AtomicU64,
    /// Requests that got no response head within the request timeout.
    pub rq_timeout: AtomicU64,
    /// No longer in the cluster's endpoint set.
    pub removed: AtomicBool,
    /// Outlier detection's view of this host.
    pub outlier: crate::outlier::HostState,
}

impl Host {
    pub fn new(addr: SocketAddr, pod: Option<String>) -> Host {
        Host {
            addr,
            pod,
            active: AtomicU32::new(0),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            cx_total: AtomicU64::new(0),
            rq_timeout: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            outlier: Default::default(),
        }
    }

    /// Envoy's `/clusters` health flags: `healthy`, or `/failed_outlier_check` while ejected.
    pub fn health_flags(&self, now: u64) -> &'static str {
        if self.outlier.ejected(now) {
            "/failed_outlier_check"
        } else {
            "healthy"
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Relaxed)
    }
}

/// One request's (or TCP connection's) hold on a host: counts it active until dropped.
#[derive(Debug)]
pub struct Active(pub std::sync::Arc<Host>);

impl Active {
    pub fn new(host: std::sync::Arc<Host>) -> Active {
        host.active.fetch_add(1, Relaxed);
        host.rq_total.fetch_add(1, Relaxed);
        Active(host)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

//! Discovery: asks the control plane what an outbound address is, on demand (Linkerd's model: a
//! proxy learns only the destinations its app talks to), and keeps each answer current.
//!
//! The first connection to an address starts a watch (`GET /v1/destinations/<addr>`, one HTTP/2
//! stream per address over one connection to the control plane) and waits up to
//! [`FIRST_ANSWER_WAIT`] for the first answer. A Service port becomes a cluster named as Istio
//! names it, whose hosts, balancer, outlier settings and limits follow every later answer. An
//! address the control plane does not know, or one asked while it cannot be reached, goes to its
//! original destination as before.
//!
//! When the control plane goes away the proxy keeps its last answers, `control_plane.connected`
//! reads 0, and each watch retries with a capped, jittered backoff. Everything is bounded: the
//! number of watched addresses ([`MAX_DESTINATIONS`]) and the length of one answer
//! ([`MAX_ANSWER_BYTES`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http2::SendRequest;
use tokio::sync::watch;

use config::api::{
    Destination, GatewayUpdate, Routes, ServiceRef, Update, GATEWAY_WATCH_PATH, WATCH_PATH,
};
use config::Limits;

use crate::cluster::{Cluster, Endpoint};
use crate::router::{RouteSlot, Table, Upstream};
use crate::stats::Gauge;
use crate::Proxy;

/// How long a new destination's first connection waits for the control plane's answer.
pub const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(1);
/// Addresses watched at most; past it, new addresses go to their original destination.
pub const MAX_DESTINATIONS: usize = 10_000;
/// The longest answer line accepted (a Service of some 50,000 endpoints).
pub const MAX_ANSWER_BYTES: usize = 4 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the proxy knows about an address.
#[derive(Clone)]
enum Answer {
    /// Asked, not answered yet.
    Pending,
    /// Not a Service: the original destination.
    Passthrough,
    Service(Upstream),
}

/// Why a watch ended.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("connecting to the control plane {0}: {1}")]
    Connect(String, String),
    #[error("the control plane answered {0} for {1}")]
    Status(hyper::StatusCode, String),
    #[error("the stream broke: {0}")]
    Stream(String),
    #[error("an answer longer than {MAX_ANSWER_BYTES} bytes")]
    TooLong,
    #[error("an answer that is not what the proxy understands: {0}")]
    Bad(serde_json::Error),
    #[error("the control plane ended the stream")]
    Ended,
}

pub struct Discovery {
    control: String,
    domain: String,
    watches: Mutex<HashMap<SocketAddr, watch::Receiver<Answer>>>,
    /// The route table of each Service port, by cluster name (a Service's IPv4 and IPv6
    /// addresses share it).
    slots: Mutex<HashMap<String, Arc<RouteSlot>>>,
    conn: tokio::sync::Mutex<Option<SendRequest<Empty<Bytes>>>>,
    /// The last attempt to reach the control plane failed: new addresses do not wait for it.
    down: std::sync::atomic::AtomicBool,
}

impl Discovery {
    pub fn new(control: String, domain: String) -> Discovery {
        Discovery {
            control,
            domain,
            watches: Mutex::default(),
            slots: Mutex::default(),
            conn: tokio::sync::Mutex::new(None),
            down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn connected(proxy: &Proxy) -> &Gauge {
        proxy
            .registry
            .control_plane_connected
            .get_or_init(Gauge::default)
    }

    /// Where the requests to a Service at `addr` go, or `None` to forward to `addr` itself.
    pub async fn resolve(
        self: &Arc<Self>,
        proxy: &Arc<Proxy>,
        addr: SocketAddr,
    ) -> Option<Upstream> {
        self.resolve_within(proxy, addr, FIRST_ANSWER_WAIT).await
    }

    /// [`Discovery::resolve`], waiting up to `wait` for a first answer (a gateway's upstream, at
    /// start, may wait longer than a connection can).
    pub async fn resolve_within(
        self: &Arc<Self>,
        proxy: &Arc<Proxy>,
        addr: SocketAddr,
        wait: Duration,
    ) -> Option<Upstream> {
        let mut rx = {
            let mut w = self.watches.lock().expect("watches lock");
            match w.get(&addr) {
                Some(rx) => rx.clone(),
                None if w.len() >= MAX_DESTINATIONS => {
                    tracing::debug!(%addr, "{MAX_DESTINATIONS} destinations watched already: forwarding as is");
                    return None;
                }
                None => {
                    let (tx, rx) = watch::channel(Answer::Pending);
                    w.insert(addr, rx.clone());
                    tokio::spawn(self.clone().watch(proxy.clone(), addr, tx));
                    rx
                }
            }
        };
        let pending = matches!(*rx.borrow(), Answer::Pending);
        // While the control plane is known to be down, do not make each new address wait.
        if pending && !self.down.load(std::sync::atomic::Ordering::Relaxed) {
            let _ =
                tokio::time::timeout(wait, rx.wait_for(|a| !matches!(a, Answer::Pending))).await;
        }
        let answer = rx.borrow().clone();
        match answer {
            Answer::Service(c) => Some(c),
            Answer::Pending | Answer::Passthrough => None,
        }
    }

    /// The shared HTTP/2 connection to the control plane, opened if there is none.
    async fn sender(&self) -> Result<SendRequest<Empty<Bytes>>, WatchError> {
        let mut conn = self.conn.lock().await;
        if let Some(s) = conn.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let err =
            |e: &dyn std::fmt::Display| WatchError::Connect(self.control.clone(), e.to_string());
        let tcp = tokio::time::timeout(
            FIRST_ANSWER_WAIT,
            tokio::net::TcpStream::connect(self.control.as_str()),
        )
        .await
        .map_err(|_| err(&"timed out"))?
        .map_err(|e| err(&e))?;
        let _ = tcp.set_nodelay(true);
        let (send, driver) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| err(&e))?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "control-plane connection closed");
            }
        });
        *conn = Some(send.clone());
        Ok(send)
    }

    /// Follows one address for the life of the process, reconnecting with backoff.
    async fn watch(
        self: Arc<Self>,
        proxy: Arc<Proxy>,
        addr: SocketAddr,
        tx: watch::Sender<Answer>,
    ) {
        let path = format!("{WATCH_PATH}{addr}");
        self.follow(
            &proxy,
            &path,
            || {
                // Versions order the answers of one stream; a restarted control plane counts afresh.
                let mut version = 0;
                let (this, proxy, tx) = (&self, &proxy, &tx);
                move |u: Update| {
                    if u.version >= version {
                        version = u.version;
                        this.apply(proxy, tx, u);
                    }
                }
            },
            || {
                // Nobody waits forever for a first answer that cannot come.
                tx.send_if_modified(|a| {
                    let pending = matches!(a, Answer::Pending);
                    if pending {
                        *a = Answer::Passthrough;
                    }
                    pending
                });
            },
        )
        .await
    }

    /// Gateway mode: the routes of `Gateway` `gw`, kept current in the returned slot for the
    /// life of the process (empty until the first answer: 404 `NR`).
    pub fn watch_gateway(self: &Arc<Self>, proxy: &Arc<Proxy>, gw: ServiceRef) -> Arc<RouteSlot> {
        let slot = Arc::new(RouteSlot::default());
        let (this, proxy, out) = (self.clone(), proxy.clone(), slot.clone());
        tokio::spawn(async move {
            let path = format!("{GATEWAY_WATCH_PATH}{}/{}", gw.namespace, gw.name);
            this.follow(&proxy, &path, || {
                let mut version = 0;
                let (this, proxy, slot) = (&this, &proxy, &out);
                move |u: GatewayUpdate| {
                    if u.version < version {
                        return;
                    }
                    version = u.version;
                    if u.routes.is_none() {
                        tracing::warn!(gateway = %u.gateway, "the control plane knows no Gateway of class trellis by that name: every request is 404 NR");
                    }
                    slot.set(u.routes.as_ref().and_then(|r| {
                        this.table(proxy, r)
                            .map_err(|e| tracing::warn!(gateway = %u.gateway, error = %e, "routes refused"))
                            .ok()
                    }));
                }
            }, || {})
            .await
        });
        slot
    }

    /// Follows one watch path for the life of the process: each stream's lines go to the
    /// function `each` makes for it; `lost` runs after each stream ends. Reconnects with capped,
    /// jittered backoff.
    async fn follow<T, F>(
        &self,
        proxy: &Arc<Proxy>,
        path: &str,
        mut each: impl FnMut() -> F,
        lost: impl Fn(),
    ) where
        T: serde::de::DeserializeOwned,
        F: FnMut(T),
    {
        let mut backoff = BACKOFF_MIN;
        loop {
            let r = self.stream(proxy, path, each()).await;
            let connected = Self::connected(proxy);
            match r {
                Err(WatchError::Connect(..) | WatchError::Stream(_) | WatchError::Ended) => {
                    if connected.get() == 1 {
                        tracing::warn!(control_plane = %self.control, "control plane lost: keeping the last answers, reconnecting");
                    }
                    connected.set(0);
                    self.down.store(true, std::sync::atomic::Ordering::Relaxed);
                    *self.conn.lock().await = None;
                }
                Err(ref e) => tracing::warn!(%path, error = %e, "discovery"),
                Ok(()) => backoff = BACKOFF_MIN,
            }
            lost();
            let jitter = crate::balancer::random() % (backoff.as_millis() as u64 / 2 + 1);
            tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One watch stream, its lines handed to `apply` until it ends.
    async fn stream<T: serde::de::DeserializeOwned>(
        &self,
        proxy: &Arc<Proxy>,
        path: &str,
        mut apply: impl FnMut(T),
    ) -> Result<(), WatchError> {
        let mut send = self.sender().await?;
        let req = hyper::Request::get(format!("http://{}{path}", self.control))
            .body(Empty::new())
            .expect("a valid request");
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| WatchError::Stream(e.to_string()))?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(WatchError::Status(resp.status(), path.to_string()));
        }
        self.down.store(false, std::sync::atomic::Ordering::Relaxed);
        let connected = Self::connected(proxy);
        if connected.get() == 0 {
            tracing::info!(control_plane = %self.control, "control plane connected");
        }
        connected.set(1);
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        loop {
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(nl + 1);
                let line = &line[..nl];
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                apply(serde_json::from_slice(line).map_err(WatchError::Bad)?);
            }
            if buf.len() > MAX_ANSWER_BYTES {
                return Err(WatchError::TooLong);
            }
            match body.frame().await {
                None => return Err(WatchError::Ended),
                Some(Err(e)) => return Err(WatchError::Stream(e.to_string())),
                Some(Ok(f)) => {
                    if let Ok(mut data) = f.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }

    fn apply(&self, proxy: &Arc<Proxy>, tx: &watch::Sender<Answer>, u: Update) {
        let answer = match u.destination {
            None => Answer::Passthrough,
            Some(d) => {
                let cluster = self.cluster(proxy, u.address, &d);
                let slot = self
                    .slots
                    .lock()
                    .expect("slots lock")
                    .entry(cluster.name.clone())
                    .or_default()
                    .clone();
                slot.set(d.routes.as_ref().and_then(|r| {
                    self.table(proxy, r)
                        .map_err(|e| tracing::warn!(cluster = %cluster.name, error = %e, "routes refused: requests go to the Service itself"))
                        .ok()
                }));
                Answer::Service(Upstream::Routed {
                    default: Some(cluster),
                    routes: slot,
                })
            }
        };
        tx.send_replace(answer);
    }

    /// A route table, its backends made or brought up to date as clusters.
    pub fn table(
        &self,
        proxy: &Arc<Proxy>,
        routes: &Routes,
    ) -> Result<Arc<Table>, crate::router::TableError> {
        let clusters: Vec<Arc<Cluster>> = routes
            .backends
            .iter()
            .map(|b| {
                // A backend is named, not addressed: its cluster's address is only a label.
                let addr = b
                    .endpoints
                    .first()
                    .map_or(SocketAddr::from(([0, 0, 0, 0], b.port)), |e| e.address);
                self.cluster(proxy, addr, b)
            })
            .collect();
        Table::new(routes, &clusters).map(Arc::new)
    }

    /// The cluster of a Service port, made or brought up to date.
    fn cluster(&self, proxy: &Arc<Proxy>, addr: SocketAddr, d: &Destination) -> Arc<Cluster> {
        let name = d.cluster_name(&self.domain);
        let limits = merge(proxy.config.pools.outbound, d.policy.pool);
        let mut timeouts = proxy.timeouts();
        if let Some(ms) = d.policy.connect_timeout_ms {
            timeouts.connect = Duration::from_millis(ms);
        }
        if let Some(ms) = d.policy.idle_timeout_ms {
            timeouts.idle = Duration::from_millis(ms);
        }
        let c = proxy.clusters.get_or_create(&name, &proxy.registry, || {
            Cluster::new(name.clone(), addr, limits, timeouts, &proxy.registry)
        });
        let endpoints: Vec<Endpoint> = d
            .endpoints
            .iter()
            .map(|e| (e.address, e.pod.clone()))
            .collect();
        c.update(
            &endpoints,
            d.policy.balancer.clone(),
            d.policy.outlier.clone(),
            limits,
        );
        c.set_max_retries(
            d.policy
                .max_retries
                .unwrap_or(crate::cluster::DEFAULT_MAX_RETRIES),
        );
        tracing::debug!(cluster = %name, endpoints = endpoints.len(), "destination updated");
        c
    }
}

/// The pod's outbound limits with the policy's fields laid over them.
fn merge(pod: Limits, policy: Limits) -> Limits {
    Limits {
        max_connections: policy.max_connections.or(pod.max_connections),
        max_pending_requests: policy.max_pending_requests.or(pod.max_pending_requests),
        max_requests: policy.max_requests.or(pod.max_requests),
        max_requests_per_connection: policy
            .max_requests_per_connection
            .or(pod.max_requests_per_connection),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_sets_only_the_limits_it_names() {
        let pod = Limits {
            max_connections: Some(100),
            max_pending_requests: Some(50),
            ..Limits::default()
        };
        let policy = Limits {
            max_connections: Some(3),
            max_requests_per_connection: Some(1),
            ..Limits::default()
        };
        assert_eq!(
            merge(pod, policy),
            Limits {
                max_connections: Some(3),
                max_pending_requests: Some(50),
                max_requests: None,
                max_requests_per_connection: Some(1),
            }
        );
    }
}

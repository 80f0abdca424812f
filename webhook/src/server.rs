//! `webhook serve`: the HTTPS admission server (axum over rustls), and the limits that keep any
//! client from holding more of it than its share.
//!
//! Routes: `POST /mutate` (AdmissionReview), `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! Shutdown ([`drain`]): on SIGTERM `/readyz` answers 503 at once and `/mutate` keeps being served
//! (new connections too) for the grace period, while endpoints drop the pod; HTTP/1.1 answers say
//! `Connection: close` meanwhile, so keep-alive callers move to new connections. Then the listener
//! closes and open connections finish.
//! Bodies over 3 MiB get 413 (the API server never sends more); unusable bodies get 400 with the
//! parse error; nothing a client sends can panic the server.
//!
//! The webhook runs with `failurePolicy: Fail` in a 128 MiB container: if a client can exhaust it,
//! pod creation stops in every meshed namespace. So everything a client can make it hold is bounded
//! ([`ServeLimits`]): open connections (more wait in the listen backlog), the time a TLS handshake,
//! a request head, a request body and an idle connection may take, the request-body bytes held at
//! once across all connections (reserved per request, before its body is read), and the reviews
//! decoded at once (CPU work, run off the async
//! workers so `/healthz` keeps answering).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::admission;
use crate::injector::InjectorConfig;
use crate::metrics::Metrics;
use crate::namespaces::{Enforcement, NamespaceCache, SYNC_WAIT};
use crate::tls::ReloadingCert;

/// Largest AdmissionReview accepted; the API server's own request limit is 3 MiB.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What one client, or all of them together, can make the server hold. Every limit is a flag of
/// `webhook serve` (and a `TRELLIS_` variable); the defaults suit a 128 MiB container.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ServeLimits {
    /// Most connections open at once; further ones wait in the listen backlog until one closes.
    #[arg(long, env = "TRELLIS_MAX_OPEN_CONNECTIONS", default_value_t = 256, value_parser = parse_count)]
    pub max_open_connections: usize,

    /// Most reviews of large bodies (over 64 KiB) decoded and injected at once, on the blocking
    /// pool; 0 means one per CPU. A real pod's review (a few KiB) is done in place.
    #[arg(long, env = "TRELLIS_MAX_CONCURRENT_REVIEWS", default_value_t = 0)]
    pub max_concurrent_reviews: usize,

    /// Most request-body bytes held at once across all connections (at least one 3 MiB body); a
    /// request reserves its Content-Length (3 MiB without one) before its body is read.
    #[arg(long, env = "TRELLIS_MAX_BUFFERED_BODY_BYTES", default_value_t = 4 * MAX_BODY, value_parser = parse_body_budget)]
    pub max_buffered_body_bytes: usize,

    /// Time a client has to complete the TLS handshake.
    #[arg(long, env = "TRELLIS_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub tls_handshake_timeout: Duration,

    /// Time a client has to send a request head (HTTP/1.1; an idle keep-alive connection waiting
    /// for its next head is closed after it too), and to start a new connection's first request.
    #[arg(long, env = "TRELLIS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub header_read_timeout: Duration,

    /// Time a client has to send a request body.
    #[arg(long, env = "TRELLIS_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub body_read_timeout: Duration,

    /// A connection with no request in flight for this long is closed (HTTP/2: with GOAWAY).
    #[arg(long, env = "TRELLIS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub idle_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        config::args::clap_defaults()
    }
}

impl ServeLimits {
    /// Reviews decoded at once: the flag, or one per CPU.
    pub fn concurrent_reviews(&self) -> usize {
        match self.max_concurrent_reviews {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`{s}` is not a count: expected a whole number of at least 1"
        )),
    }
}

fn parse_body_budget(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= MAX_BODY => Ok(n),
        _ => Err(format!(
            "`{s}` is not a byte count of at least {MAX_BODY}: one largest body must fit"
        )),
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match config::parse::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!(
            "`{s}` is not a timeout: expected more than 0, like 10s"
        )),
        Err(e) => Err(e.to_string()),
    }
}

pub struct AppState {
    pub injector: InjectorConfig,
    pub metrics: Metrics,
    pub ready: AtomicBool,
    /// Namespaces' Pod Security levels; `None`: no check (see [`crate::namespaces`]).
    pub namespaces: Option<NamespaceCache>,
    /// One permit per review being decoded and injected.
    reviews: Semaphore,
    /// One permit per request-body byte a request may hold, taken before its body is read.
    body_bytes: Semaphore,
    body_read_timeout: Duration,
}

impl AppState {
    /// The state with the default [`ServeLimits`].
    pub fn new(injector: InjectorConfig) -> Arc<Self> {
        Self::with_limits(injector, &ServeLimits::default())
    }

    pub fn with_limits(injector: InjectorConfig, limits: &ServeLimits) -> Arc<Self> {
        Self::with_namespaces(injector, limits, None)
    }

    /// [`AppState::with_limits`], refusing injection where `namespaces` says Pod Security forbids it.
    pub fn with_namespaces(
        injector: InjectorConfig,
        limits: &ServeLimits,
        namespaces: Option<NamespaceCache>,
    ) -> Arc<Self> {
        Arc::new(AppState {
            injector,
            metrics: Metrics::default(),
            ready: AtomicBool::new(true),
            namespaces,
            reviews: Semaphore::new(limits.concurrent_reviews()),
            body_bytes: Semaphore::new(limits.max_buffered_body_bytes.max(MAX_BODY)),
            body_read_timeout: limits.body_read_timeout,
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            close_when_draining,
        ))
        .with_state(state)
}

/// While draining, HTTP/1.1 answers carry `Connection: close`: the caller's next request opens a
/// new connection, which endpoints by then send to another replica.
async fn close_when_draining(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let http1 = req.version() <= axum::http::Version::HTTP_11;
    let mut res = next.run(req).await;
    if http1 && !state.ready.load(Ordering::Relaxed) {
        res.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    res
}

/// The shutdown future for [`serve`] after a SIGTERM: marks the server not ready (`/readyz`
/// answers 503) at once, then keeps serving for `grace` — the time endpoints and kube-proxy take
/// to stop sending the API server's calls here — or until `cut_short` (a second signal) resolves.
pub async fn drain(
    state: &AppState,
    grace: Duration,
    cut_short: impl std::future::Future<Output = ()>,
) {
    state.ready.store(false, Ordering::Relaxed);
    tracing::info!(
        grace = %config::format_duration(grace),
        "shutting down: /readyz answers 503, still serving until the grace period ends"
    );
    tokio::select! {
        _ = tokio::time::sleep(grace) => {}
        _ = cut_short => tracing::info!("second signal: stopping now"),
    }
}

/// Why a request body was not read whole.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("request body is over {MAX_BODY} bytes (3 MiB), the API server's own limit")]
    TooLarge,
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    #[error("request body could not be read: {0}")]
    Read(axum::Error),
}

impl BodyError {
    fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads `body` whole (at most [`MAX_BODY`] bytes) within the body timeout, first taking one
/// `body_bytes` permit per byte it may hold (its `Content-Length`, or [`MAX_BODY`] without one):
/// the bytes held across all requests stay bounded. The permits are taken at once, not as bytes
/// arrive: requests each holding part of what they need would wait on one another until their
/// timeouts.
async fn read_body<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    mut body: Body,
) -> Result<(Vec<u8>, tokio::sync::SemaphorePermit<'a>), BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(BodyError::TooLarge);
    }
    let most = declared.unwrap_or(MAX_BODY);
    let read = async {
        let n = u32::try_from(most).expect("at most MAX_BODY");
        let held = state
            .body_bytes
            .acquire_many(n)
            .await
            .expect("never closed");
        let mut buf = Vec::with_capacity(most);
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
                continue; // trailers
            };
            // hyper holds a body to its Content-Length; this holds one without to MAX_BODY.
            if buf.len() + data.len() > most {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
        Ok((buf, held))
    };
    tokio::time::timeout(state.body_read_timeout, read)
        .await
        .map_err(|_| BodyError::Timeout(state.body_read_timeout))?
}

/// Reviews of bodies up to this size run on the async worker that read them (see [`mutate`]).
const INLINE_REVIEW_MAX: usize = 64 * 1024;

async fn mutate(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let error = |status: StatusCode, text: String| {
        state
            .metrics
            .record("error", "", start.elapsed().as_secs_f64());
        tracing::warn!("bad review: {text}");
        (status, text).into_response()
    };
    let (body, _held) = match read_body(&state, &headers, body).await {
        Ok(read) => read,
        Err(e) => return error(e.status(), e.to_string()),
    };
    // Just after start, the first list of Namespaces may still be on its way: wait for it, briefly.
    if let Some(ns) = state.namespaces.as_ref().filter(|ns| !ns.is_synced()) {
        ns.wait_synced(SYNC_WAIT).await;
    }
    // Decoding and injecting is CPU work. A real pod's review (a few KiB) takes tens of
    // microseconds: done in place, it costs less than the hand-off. A large body could take
    // milliseconds: on the blocking pool, a few at a time, so `/healthz` keeps answering.
    let done = if body.len() <= INLINE_REVIEW_MAX {
        Ok(review(&state, &body))
    } else {
        let _permit = state.reviews.acquire().await.expect("never closed");
        let st = Arc::clone(&state);
        tokio::task::spawn_blocking(move || {
            let res = review(&st, &body);
            // Freed here, on the blocking thread, not on an async worker.
            drop(body);
            res
        })
        .await
    };
    match done {
        Ok(Ok((out, verdict))) => {
            let elapsed = start.elapsed().as_secs_f64();
            state
                .metrics
                .record(verdict.result(), verdict.reason(), elapsed);
            tracing::info!(uid = %crate::echo::shown(&out.response.uid), result = verdict.result(), reason = verdict.reason(), "review");
            let body = serde_json::to_vec(&out).expect("response serializes");
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("review failed: {e}"),
        ),
    }
}

/// One review, with the Pod Security check when the server has a namespace cache.
fn review(
    state: &AppState,
    body: &[u8],
) -> Result<(admission::ReviewOut, admission::Verdict), admission::ReviewError> {
    let Some(cache) = &state.namespaces else {
        return admission::review(body, &state.injector);
    };
    admission::review_in(body, &state.injector, &|ns| {
        let found = cache.lookup(ns);
        match found {
            Enforcement::NotSynced => tracing::warn!(
                namespace = %crate::echo::shown(ns),
                "namespaces not listed yet: injecting without the Pod Security check"
            ),
            Enforcement::UnknownNamespace => tracing::warn!(
                namespace = %crate::echo::shown(ns),
                "namespace not in the cache yet: injecting without the Pod Security check"
            ),
            _ => {}
        }
        found
    })
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// The HTTP/1.1 and HTTP/2 settings every connection is served with.
fn http_builder(limits: &ServeLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Reviews' heads are small; this bounds what a head can make a connection buffer.
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        // What a client can have buffered here before its bodies are read: 32 streams, 64 KiB
        // each, 128 KiB in all (hyper's defaults are 200 streams and 1 MiB).
        .max_concurrent_streams(32)
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(128 * 1024)
        .max_header_list_size(64 * 1024);
    builder
}

/// Accepts TLS connections on `listener` until `shutdown` resolves, then lets open connections
/// finish (for up to 10 s). At most `limits.max_open_connections` are open at once.
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    app: Router,
    limits: &ServeLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(cert.server_config()));
    let builder = Arc::new(http_builder(limits));
    let open = Arc::new(Semaphore::new(limits.max_open_connections));
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // Past the cap, connections are not accepted: they wait in the kernel's backlog.
        let permit = tokio::select! {
            permit = Arc::clone(&open).acquire_owned() => permit.expect("never closed"),
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let conn = Connection {
            acceptor: acceptor.clone(),
            builder: Arc::clone(&builder),
            app: app.clone(),
            limits: limits.clone(),
            stopped: stopped.clone(),
            peer,
        };
        tokio::spawn(async move {
            conn.run(tcp).await;
            drop(permit);
        });
    }
    let _ = stop.send(true);
    let all = u32::try_from(limits.max_open_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = open.acquire_many(all) => {},
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("open connections did not finish in {SHUTDOWN_GRACE:?}"),
    }
    Ok(())
}

/// One accepted connection and what serving it needs.
struct Connection {
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    limits: ServeLimits,
    stopped: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Connection {
    /// TLS, then HTTP until the client closes, the server stops, or the connection stays idle
    /// (no request in flight) past its deadline: then it is shut down gracefully, and dropped if
    /// it has not finished [`ServeLimits::header_read_timeout`] later.
    async fn run(mut self, tcp: tokio::net::TcpStream) {
        let peer = self.peer;
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(
            self.limits.tls_handshake_timeout,
            self.acceptor.accept(tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
        };
        let activity = Arc::new(Activity::new());
        let app = self.app.clone();
        let tracked = Arc::clone(&activity);
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let guard = tracked.start();
                let call = app.clone().oneshot(req.map(Body::new));
                async move {
                    let res = call.await;
                    drop(guard);
                    res
                }
            });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(tls), service);
        tokio::pin!(conn);
        let mut closing: Option<tokio::time::Instant> = None;
        loop {
            let wake = closing.unwrap_or_else(|| activity.deadline(&self.limits).into());
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    return;
                }
                _ = self.stopped.changed(), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(tokio::time::Instant::now() + self.limits.header_read_timeout);
                }
                _ = tokio::time::sleep_until(wake) => {
                    if closing.is_some() {
                        return tracing::debug!(%peer, "connection dropped: it did not close after shutdown");
                    }
                    if activity.deadline(&self.limits) <= Instant::now() {
                        tracing::debug!(%peer, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = Some(tokio::time::Instant::now() + self.limits.header_read_timeout);
                    }
                }
            }
        }
    }
}

/// A connection's requests: how many are in flight, whether there was any, and when the last
/// one started or ended.
struct Activity(Mutex<ActivityState>);

struct ActivityState {
    in_flight: usize,
    served: bool,
    since: Instant,
}

/// Marks one request in flight until dropped.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Activity(Mutex::new(ActivityState {
            in_flight: 0,
            served: false,
            since: Instant::now(),
        }))
    }

    fn start(self: &Arc<Self>) -> InFlight {
        let mut s = self.0.lock().expect("not poisoned");
        s.in_flight += 1;
        s.served = true;
        s.since = Instant::now();
        InFlight(Arc::clone(self))
    }

    /// When the connection counts as idle, if nothing happens before: a new connection gets the
    /// header timeout for its first request, one that has served requests the idle timeout.
    fn deadline(&self, limits: &ServeLimits) -> Instant {
        let s = self.0.lock().expect("not poisoned");
        if s.in_flight > 0 {
            // Re-checked later; a request's own time is bounded by the body timeout.
            Instant::now() + limits.idle_timeout
        } else if s.served {
            s.since + limits.idle_timeout
        } else {
            s.since + limits.header_read_timeout
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0 .0.lock().expect("not poisoned");
        s.in_flight -= 1;
        s.since = Instant::now();
    }
}

/// The default listen address: `[::]:8443`, both families (see [`bind`]).
pub const DEFAULT_LISTEN: &str = "[::]:8443";

/// Binds `addr`, returning the listener (so tests can bind port 0 and read the address).
///
/// `[::]` (the default) is one dual-stack socket (`IPV6_V6ONLY` off, whatever the node's
/// `net.ipv6.bindv6only`), so the API server and the kubelet reach it over IPv4, IPv6 or both. On a
/// node without IPv6 (the socket cannot be made or bound) it falls back to `0.0.0.0` on the same
/// port. Any other address is bound as given.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let v6_any = matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified());
    if !v6_any {
        return TcpListener::bind(addr).await;
    }
    match bind_dual_stack(addr) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
        Err(e) => {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(%addr, fallback = %v4, "no IPv6 here ({e}): listening on IPv4 only");
            TcpListener::bind(v4).await
        }
    }
}

fn bind_dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    s.set_only_v6(false)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

//! The discovery server: `GET /v1/destinations/{ip:port}` answers a stream of NDJSON
//! [`config::api::Update`] lines (the current answer at once, then one line per change of that
//! answer), `GET /v1/gateways/{namespace}/{name}` likewise a stream of
//! [`config::api::GatewayUpdate`]s, plus `/ready`; and the metrics server (`/metrics`, `/ready`).
//!
//! [`serve`] runs hyper-util's auto connection builder, so one port takes HTTP/1.1 and HTTP/2
//! with prior knowledge (h2c), as proxies may use either. Everything is bounded: at most
//! `max_streams` streams at once (then 503), and each stream buffers only its latest answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::store::{Store, Subscription, Topic};
use config::api::ServiceRef;

/// The default of `--max-streams`.
pub const DEFAULT_MAX_STREAMS: usize = 100_000;

/// Concurrent HTTP/2 streams allowed on one connection. A proxy watches every destination it
/// knows over one connection (up to 10,000), so this is not where streams are limited:
/// `--max-streams` is, across all connections, with a 503. (hyper's default is 200: the 201st
/// watch of a proxy waited, unanswered, until another ended.)
const STREAMS_PER_CONNECTION: u32 = DEFAULT_MAX_STREAMS as u32;

#[derive(Clone)]
struct App {
    store: Arc<Store>,
    streams: Arc<Semaphore>,
    max_streams: usize,
}

/// The discovery router (`/v1/destinations/{addr}`, `/ready`).
pub fn router(store: Arc<Store>, max_streams: usize) -> Router {
    let app = App {
        store,
        streams: Arc::new(Semaphore::new(max_streams)),
        max_streams,
    };
    Router::new()
        .route("/v1/destinations/{addr}", get(destination))
        .route("/v1/gateways/{namespace}/{name}", get(gateway))
        .route("/ready", get(ready))
        .with_state(app)
}

/// The metrics router (`/metrics`, `/ready`).
pub fn metrics_router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready_store))
        .with_state(store)
}

/// Serves `router` on `listener` until the task is dropped (connections already accepted run on
/// in their own tasks until they close).
///
/// Every connection has `TCP_NODELAY`: a stream's update is a few small writes (HTTP/2 frames),
/// and with Nagle's algorithm the second waited for the peer's delayed ACK, 40 ms on Linux.
pub async fn serve(listener: TcpListener, router: Router) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(STREAMS_PER_CONNECTION);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            // The peer gave up before we accepted: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            // Out of descriptors or memory: others may free some; do not spin meanwhile (as
            // axum::serve does).
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn destination(State(app): State<App>, Path(addr): Path<String>) -> Response {
    let Ok(address) = addr.parse::<SocketAddr>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "`{addr}` is not a destination address: expected ip:port, like 10.96.0.10:80 \
                 or [fd00::10]:80\n"
            ),
        )
            .into_response();
    };
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return too_many(&app);
    };
    stream(app.store.subscribe(address), permit)
}

/// `GET /v1/gateways/{namespace}/{name}`: the routes of one Gateway, bounded by the same
/// `--max-streams` as destinations.
async fn gateway(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return too_many(&app);
    };
    stream(
        app.store.subscribe_gateway(ServiceRef { namespace, name }),
        permit,
    )
}

fn too_many(app: &App) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "too many streams: all {} (--max-streams) are in use\n",
            app.max_streams
        ),
    )
        .into_response()
}

fn stream<T: Topic + serde::Serialize>(
    sub: Subscription<T>,
    permit: OwnedSemaphorePermit,
) -> Response {
    let stream = futures_util::stream::unfold(
        Stream {
            sub,
            first: true,
            _permit: permit,
        },
        next_line,
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(stream))
        .expect("a static response head")
}

struct Stream<T: Topic> {
    sub: Subscription<T>,
    first: bool,
    _permit: OwnedSemaphorePermit,
}

/// The current answer first, then the latest one after each change; ends if the store goes.
async fn next_line<T: Topic + serde::Serialize>(
    mut s: Stream<T>,
) -> Option<(Result<Bytes, Infallible>, Stream<T>)> {
    if !std::mem::take(&mut s.first) && s.sub.rx.changed().await.is_err() {
        return None;
    }
    let update = s.sub.rx.borrow_and_update().clone();
    let mut line = serde_json::to_vec(&*update).expect("an update serializes");
    line.push(b'\n');
    s.sub.store().metrics.pushes.inc();
    Some((Ok(Bytes::from(line)), s))
}

async fn ready(State(app): State<App>) -> Response {
    ready_store(State(app.store)).await
}

async fn ready_store(State(store): State<Arc<Store>>) -> Response {
    if store.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first load is not done\n",
        )
            .into_response()
    }
}

async fn metrics(State(store): State<Arc<Store>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        store.metrics.encode(),
    )
        .into_response()
}

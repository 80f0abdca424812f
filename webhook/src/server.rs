//! `webhook serve`: the HTTPS admission server (axum over rustls).
//!
//! Routes: `POST /mutate` (AdmissionReview), `GET /healthz`, `GET /readyz`, `GET /metrics`.
//! Bodies over 3 MiB get 413 (the API server never sends more); unusable bodies get 400 with the
//! parse error; nothing a client sends can panic the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission;
use crate::injector::InjectorConfig;
use crate::metrics::Metrics;
use crate::tls::ReloadingCert;

/// Largest AdmissionReview accepted; the API server's own request limit is 3 MiB.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct AppState {
    pub injector: InjectorConfig,
    pub metrics: Metrics,
    pub ready: AtomicBool,
}

impl AppState {
    pub fn new(injector: InjectorConfig) -> Arc<Self> {
        Arc::new(AppState {
            injector,
            metrics: Metrics::default(),
            ready: AtomicBool::new(true),
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn mutate(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            // Over 3 MiB (413) or an unreadable body: counted, and answered with axum's status.
            state
                .metrics
                .record("error", "", start.elapsed().as_secs_f64());
            tracing::warn!("bad review body: {rejection}");
            return rejection.into_response();
        }
    };
    match admission::review(&body, &state.injector) {
        Ok((out, verdict)) => {
            let elapsed = start.elapsed().as_secs_f64();
            state
                .metrics
                .record(verdict.result(), verdict.reason(), elapsed);
            tracing::info!(uid = %out.response.uid, result = verdict.result(), reason = verdict.reason(), "review");
            let body = serde_json::to_vec(&out).expect("response serializes");
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => {
            state
                .metrics
                .record("error", "", start.elapsed().as_secs_f64());
            tracing::warn!("bad review: {e}");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
    }
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

/// Accepts TLS connections on `listener` until `shutdown` resolves, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(cert.server_config()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {},
        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => tracing::warn!("open connections did not finish in 10s"),
    }
    Ok(())
}

/// Binds `addr`, returning the listener (so tests can bind port 0 and read the address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

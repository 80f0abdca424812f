//! HTTP/2 (prior knowledge, as gRPC speaks it) through the real `proxy gateway`: streams are
//! forwarded one by one over pooled upstream HTTP/2 connections, trailers pass through, and the
//! pool limits count streams, with Envoy's gRPC answer to an overflow.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::ProxyProc;
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/2 app: answers each stream with its request body, `grpc-status: 0` as a trailer,
/// after `delay`; counts the streams in flight and their peak.
struct App {
    addr: SocketAddr,
    peak: Arc<AtomicUsize>,
}

async fn start_h2_app(delay: Duration) -> App {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (n, p) = (n.clone(), p.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (n, p) = (n.clone(), p.clone());
                    async move {
                        let inflight = n.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(inflight, Ordering::SeqCst);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        tokio::time::sleep(delay).await;
                        n.fetch_sub(1, Ordering::SeqCst);
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let body = Full::new(body).with_trailers(async { Some(Ok(trailers)) });
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    App { addr, peak }
}

/// One client HTTP/2 connection to the proxy.
async fn client(to: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(to).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn grpc_call(body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri("http://app/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_and_its_trailers_pass_through() {
    let app = start_h2_app(Duration::ZERO).await;
    let px = ProxyProc::gateway(app.addr, &["--access-log"]).await;
    let mut c = client(px.listen).await;
    for _ in 0..3 {
        let resp = c.send_request(grpc_call("hello")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let got = resp.into_body().collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(got.to_bytes(), "hello");
    }
    let c = format!("cluster.{}", app.addr);
    let stats = px.stats().snapshot().await;
    assert_eq!(
        stats.value(&format!("{c}.upstream_cx_http2_total")),
        Some(1)
    );
    assert_eq!(stats.value(&format!("{c}.upstream_rq_total")), Some(3));
    assert_eq!(
        stats.value(&format!("{c}.upstream_rq_200")),
        Some(3),
        "{stats}"
    );
    // Envoy's access log line, protocol HTTP/2, the body's 5 bytes sent, the upstream host.
    let line = support::wait_log(&px, "\"POST /echo.Echo/Say HTTP/2\" 200 - 0 5 ").await;
    assert!(line.contains(&app.addr.to_string()), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_requests_bounds_streams_and_the_overflow_gets_grpc_unavailable() {
    // App Mesh's pool walkthrough as gRPC: 30 callers on one connection, max-requests 10.
    let app = start_h2_app(Duration::from_millis(800)).await;
    let px = ProxyProc::gateway(app.addr, &["--max-requests=10", "--max-pending-requests=1"]).await;
    let c = client(px.listen).await;
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let resp = c.send_request(grpc_call("hi")).await.unwrap();
                let overloaded = resp.headers().get("x-envoy-overloaded").cloned();
                let status = resp.headers().get("grpc-status").cloned();
                let body = resp.into_body().collect().await.unwrap();
                let status =
                    status.or_else(|| body.trailers().and_then(|t| t.get("grpc-status").cloned()));
                (
                    status.unwrap().to_str().unwrap().to_string(),
                    overloaded.is_some(),
                )
            })
        })
        .collect();
    let mut ok = 0;
    let mut unavailable = 0;
    for call in calls {
        match call.await.unwrap() {
            (s, false) if s == "0" => ok += 1,
            (s, true) if s == "14" => unavailable += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // 10 in flight and 1 waiting get through; the other 19 are refused at once.
    assert_eq!((ok, unavailable), (11, 19));
    assert!(
        app.peak.load(Ordering::SeqCst) <= 10,
        "peak {}",
        app.peak.load(Ordering::SeqCst)
    );
    let stats = px.stats().snapshot().await;
    let c = format!("cluster.{}", app.addr);
    assert_eq!(
        stats.value(&format!("{c}.upstream_rq_pending_overflow")),
        Some(19)
    );
    assert_eq!(
        stats.value(&format!("{c}.upstream_cx_http2_total")),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let app = start_h2_app(Duration::ZERO).await;
    let px = ProxyProc::gateway(app.addr, &["--idle-timeout=1s"]).await;
    let s = TcpStream::connect(px.listen).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let resp = send.send_request(grpc_call("once")).await.unwrap();
    resp.into_body().collect().await.unwrap();
    // Quiet for the idle timeout: the proxy says GOAWAY and closes.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle connection closed")
        .unwrap()
        .ok();
    assert!(send.is_closed());
}

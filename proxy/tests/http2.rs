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
    start_h2_app_with(delay, None).await
}

/// [`start_h2_app`], advertising `SETTINGS_MAX_CONCURRENT_STREAMS` when given.
async fn start_h2_app_with(delay: Duration, max_streams: Option<u32>) -> App {
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
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    App { addr, peak }
}

/// One client HTTP/2 connection to the proxy.
async fn client(to: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    support::h2_client(to).await.0
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
    // The host's counters, as HTTP/1 keeps them (least-request and /clusters read them).
    let clusters = kit::http::get(px.admin, "/clusters").await.unwrap().body;
    for want in ["rq_total::3", "cx_total::1", "rq_active::0", "rq_error::0"] {
        assert!(
            clusters.contains(&format!("{}::{want}\n", app.addr)),
            "{want} in {clusters}"
        );
    }
    // Envoy's access log line, protocol HTTP/2, the request body's 5 bytes received and the
    // answer's 5 sent, the upstream host.
    let line = support::wait_log(&px, "\"POST /echo.Echo/Say HTTP/2\" 200 - 5 5 ").await;
    assert!(line.contains(&app.addr.to_string()), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_requests_bounds_streams_and_the_overflow_gets_grpc_unavailable() {
    // App Mesh's pool walkthrough as gRPC: 30 callers on one connection, max-requests 10.
    let app = start_h2_app(Duration::from_millis(1500)).await;
    let px = ProxyProc::gateway(app.addr, &["--max-requests=10", "--max-pending-requests=1"]).await;
    let c = client(px.listen).await;
    let stats = px.stats();
    let cname = format!("cluster.{}", app.addr);
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
    // While they run: 10 streams active upstream, 1 waiting.
    stats
        .metric(format!("{cname}.upstream_rq_active"))
        .eventually_eq(10)
        .await;
    stats
        .metric(format!("{cname}.upstream_rq_pending_active"))
        .eventually_eq(1)
        .await;
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
    assert_eq!(stats.value(&format!("{c}.upstream_rq_active")), Some(0));
    assert_eq!(
        stats.value(&format!("{c}.upstream_rq_pending_active")),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let app = start_h2_app(Duration::ZERO).await;
    let px = ProxyProc::gateway(app.addr, &["--idle-timeout=1s"]).await;
    let (mut send, conn) = support::h2_client(px.listen).await;
    let resp = send.send_request(grpc_call("once")).await.unwrap();
    resp.into_body().collect().await.unwrap();
    // Quiet for the idle timeout: the proxy says GOAWAY and closes.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle connection closed")
        .unwrap()
        .ok();
    assert!(send.is_closed());
    // So does the idle upstream connection.
    let c = format!("cluster.{}", app.addr);
    px.stats()
        .metric(format!("{c}.upstream_cx_idle_timeout"))
        .eventually_eq(1)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_cx_destroy"))
        .eventually_eq(1)
        .await;
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Writes `frames` after the preface and an empty SETTINGS until the proxy stops reading;
/// returns whether it closed the connection (reads end) within 10 s, and what was written.
async fn flood(
    px: &ProxyProc,
    frames: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> (bool, usize) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = TcpStream::connect(px.listen).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut written = 0;
        let mut start = PREFACE.to_vec();
        start.extend(frame(4, 0, 0, &[]));
        if w.write_all(&start).await.is_err() {
            return written;
        }
        for f in frames {
            if w.write_all(&f).await.is_err() {
                break;
            }
            written += f.len();
        }
        written
    });
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    writer.abort();
    (closed, writer.await.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_or_a_malformed_frame_costs_the_sender_its_connection() {
    let app = start_h2_app(Duration::ZERO).await;
    let px = ProxyProc::gateway(app.addr, &[]).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames of literal headers, endlessly
    // (the 2024 CONTINUATION-flood class): at most 64 MiB are offered.
    let mut block = Vec::new();
    for i in 0..100 {
        let name = format!("x-flood-{i:03}");
        block.push(0x00); // literal without indexing, new name
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(100);
        block.extend_from_slice(&[b'a'; 100]);
    }
    let first = frame(1, 0, 1, &[0x82, 0x86, 0x84]); // :method GET, :scheme http, :path /
    let n = 64 * 1024 * 1024 / block.len();
    let rest = std::iter::repeat_with(move || frame(9, 0, 1, &block)).take(n);
    let (closed, written) = flood(&px, std::iter::once(first).chain(rest)).await;
    assert!(closed, "the flooding connection is closed");
    assert!(
        written < 16 * 1024 * 1024,
        "closed only after {written} bytes"
    );

    // A frame on stream 0 that must not be there (DATA), and a SETTINGS frame of a bad size.
    for bad in [frame(0, 0, 0, b"data"), frame(4, 0, 0, &[0; 5])] {
        let (closed, _) = flood(&px, std::iter::once(bad)).await;
        assert!(closed, "a malformed frame closes its connection");
    }

    // The proxy serves the next client as before.
    let mut c = client(px.listen).await;
    let resp = c.send_request(grpc_call("still here")).await.unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_retires_upstream_connections() {
    let app = start_h2_app(Duration::ZERO).await;
    let px = ProxyProc::gateway(app.addr, &["--max-requests-per-connection=2"]).await;
    let mut c = client(px.listen).await;
    for _ in 0..6 {
        let resp = c.send_request(grpc_call("x")).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    // Two streams each: three upstream connections, each closed once its streams are done.
    let c = format!("cluster.{}", app.addr);
    px.stats()
        .metric(format!("{c}.upstream_cx_http2_total"))
        .now_eq(3)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_cx_destroy"))
        .eventually_eq(3)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_spares_connections_with_a_stream_open() {
    // One stream waits on a slow upstream three times the idle timeout: no byte moves, but a
    // stream is open, so neither connection is idle (Envoy counts idle only without streams).
    let app = start_h2_app(Duration::from_secs(3)).await;
    let px = ProxyProc::gateway(app.addr, &["--idle-timeout=1s"]).await;
    let (mut send, conn) = support::h2_client(px.listen).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        send.send_request(grpc_call("slow")),
    )
    .await
    .expect("an answer")
    .expect("the stream's answer, not a GOAWAY");
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap();
    assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(got.to_bytes(), "slow");
    let c = format!("cluster.{}", app.addr);
    let stats = px.stats().snapshot().await;
    assert_eq!(
        stats.value(&format!("{c}.upstream_cx_idle_timeout")),
        Some(0),
        "{stats}"
    );
    // Idle once the stream is done: both close after the idle timeout.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle connection closed")
        .unwrap()
        .ok();
    px.stats()
        .metric(format!("{c}.upstream_cx_idle_timeout"))
        .eventually_eq(1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_past_the_peers_max_concurrent_streams_open_another_connection() {
    // The app allows 2 streams per connection; 6 slow streams at once (no max-connections):
    // each connection is given no more than its peer allows, so all 6 reach the app together
    // over 3 upstream connections, rather than 4 waiting inside one.
    let app = start_h2_app_with(Duration::from_millis(1500), Some(2)).await;
    let px = ProxyProc::gateway(app.addr, &[]).await;
    let c = client(px.listen).await;
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let resp = c.send_request(grpc_call("hi")).await.unwrap();
                let got = resp.into_body().collect().await.unwrap();
                got.trailers().unwrap()["grpc-status"].clone()
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), "0");
    }
    assert_eq!(app.peak.load(Ordering::SeqCst), 6);
    let c = format!("cluster.{}", app.addr);
    let stats = px.stats().snapshot().await;
    assert_eq!(
        stats.value(&format!("{c}.upstream_cx_http2_total")),
        Some(3),
        "{stats}"
    );
    // The next streams reuse them.
    let mut one = client(px.listen).await;
    let resp = one.send_request(grpc_call("again")).await.unwrap();
    resp.into_body().collect().await.unwrap();
    px.stats()
        .metric(format!("{c}.upstream_cx_http2_total"))
        .now_eq(3)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_gauges_count_http2_streams_and_connections() {
    let app = start_h2_app(Duration::from_millis(1500)).await;
    let px = ProxyProc::gateway(app.addr, &[]).await;
    let mut c = client(px.listen).await;
    let call = tokio::spawn(async move {
        let resp = c.send_request(grpc_call("hi")).await.unwrap();
        resp.into_body().collect().await.unwrap();
        c
    });
    let cname = format!("cluster.{}", app.addr);
    let stats = px.stats();
    // While the stream is open: one request active downstream, one connection upstream.
    stats
        .metric("http.gateway.downstream_rq_active")
        .eventually_eq(1)
        .await;
    stats
        .metric(format!("{cname}.upstream_cx_active"))
        .eventually_eq(1)
        .await;
    let _c = call.await.unwrap();
    stats
        .metric("http.gateway.downstream_rq_active")
        .eventually_eq(0)
        .await;
    // The upstream connection stays pooled, open.
    stats
        .metric(format!("{cname}.upstream_cx_active"))
        .now_eq(1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_reset_mid_body_is_logged_ur() {
    // The app sends a head and some body, then its body fails: hyper resets the stream.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(CutShort(false)))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let px = ProxyProc::gateway(addr, &["--access-log"]).await;
    let mut c = client(px.listen).await;
    let resp = c.send_request(grpc_call("x")).await.unwrap();
    let _ = resp.into_body().collect().await;
    support::wait_log(&px, "\"POST /echo.Echo/Say HTTP/2\" 200 UR ").await;
    px.stats()
        .metric(format!("cluster.{addr}.upstream_rq_rx_reset"))
        .eventually_eq(1)
        .await;
}

/// A body that sends "part", then fails (so hyper resets its stream).
struct CutShort(bool);

impl hyper::body::Body for CutShort {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        if self.0 {
            return std::task::Poll::Ready(Some(Err(std::io::Error::other("cut"))));
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            b"part",
        )))))
    }
}

/// How [`start_refuser`] refuses the streams it never processed.
#[derive(Clone, Copy)]
enum Refusal {
    /// GOAWAY (NO_ERROR, last stream 1), as nginx does at its `keepalive_requests`; then the
    /// connection closes.
    Goaway,
    /// RST_STREAM REFUSED_STREAM on each, as a server past its own stream limit does; the
    /// connection stays open.
    ResetRefused,
}

/// The first upstream connection refuses streams it never processed: it takes stream 1, waits
/// until `refused` more streams have reached it, refuses them as `how` says, and answers stream
/// 1 `200`. Every later connection is served by the echo app at `echo`. Frames are written by
/// hand: only stream ids are read, and `:status: 200` is HPACK's static index 8 (one byte, 0x88).
async fn start_refuser(echo: SocketAddr, refused: usize, how: Refusal) -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        // Later connections go to the echo app.
        tokio::spawn(async move {
            while let Ok((mut down, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut up = TcpStream::connect(echo).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
            }
        });
        let mut preface = [0u8; 24];
        s.read_exact(&mut preface).await.unwrap();
        s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
        let mut streams = Vec::new();
        while streams.len() < 1 + refused {
            let mut h = [0u8; 9];
            s.read_exact(&mut h).await.unwrap();
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.unwrap();
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            match h[3] {
                // SETTINGS (not an ACK): acknowledge.
                0x4 if h[4] & 1 == 0 => s.write_all(&frame(0x4, 1, 0, &[])).await.unwrap(),
                0x1 => streams.push(id),
                _ => {}
            }
        }
        assert_eq!(streams[0], 1);
        match how {
            Refusal::Goaway => {
                let mut goaway = 1u32.to_be_bytes().to_vec();
                goaway.extend_from_slice(&0u32.to_be_bytes());
                s.write_all(&frame(0x7, 0, 0, &goaway)).await.unwrap();
            }
            Refusal::ResetRefused => {
                for id in &streams[1..] {
                    // REFUSED_STREAM is error code 0x7.
                    s.write_all(&frame(0x3, 0, *id, &7u32.to_be_bytes()))
                        .await
                        .unwrap();
                }
            }
        }
        // END_HEADERS | END_STREAM, `:status: 200`.
        s.write_all(&frame(0x1, 0x4 | 0x1, 1, &[0x88]))
            .await
            .unwrap();
        if let Refusal::Goaway = how {
            s.shutdown().await.unwrap();
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_refused_by_an_upstream_goaway_go_again_on_another_connection() {
    refused_streams_go_again(Refusal::Goaway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_reset_refused_stream_go_again_on_another_connection() {
    refused_streams_go_again(Refusal::ResetRefused).await;
}

/// Four streams the upstream refuses unprocessed, with bodies bigger than a frame, are sent
/// again (bodies whole) on a new connection; the first stream is answered where it was.
async fn refused_streams_go_again(how: Refusal) {
    let app = start_h2_app(Duration::ZERO).await;
    let upstream = start_refuser(app.addr, 4, how).await;
    let px = ProxyProc::gateway(upstream, &[]).await;
    let c = client(px.listen).await;
    // Stream 1 upstream: held by the refuser until the four others have reached it.
    let mut first = c.clone();
    let first = tokio::spawn(async move {
        let req = Request::get("http://app/first")
            .body(Full::new(Bytes::new()))
            .unwrap();
        first.send_request(req).await.unwrap().status()
    });
    let cname = format!("cluster.{upstream}");
    px.stats()
        .metric(format!("{cname}.upstream_rq_active"))
        .eventually_eq(1)
        .await;
    // Four calls with bodies of 20 KB (more than a frame; together more than the connection's
    // first window, so part of each is still downstream when the stream is refused).
    let calls: Vec<_> = (0..4u8)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let body = Bytes::from(vec![b'a' + i; 20_000]);
                let req = Request::post("http://app/echo.Echo/Say")
                    .header("content-type", "application/grpc")
                    .body(Full::new(body.clone()))
                    .unwrap();
                let resp = c.send_request(req).await.unwrap();
                let status = resp.status();
                let got = resp.into_body().collect().await.unwrap().to_bytes();
                (status, got == body)
            })
        })
        .collect();
    assert_eq!(first.await.unwrap(), 200);
    for call in calls {
        assert_eq!(call.await.unwrap(), (hyper::StatusCode::OK, true));
    }
    let stats = px.stats();
    stats
        .metric(format!("{cname}.upstream_rq_retry"))
        .now_eq(4)
        .await;
    stats
        .metric(format!("{cname}.upstream_cx_http2_total"))
        .now_eq(2)
        .await;
    stats
        .metric(format!("{cname}.upstream_rq_200"))
        .now_eq(5)
        .await;
}

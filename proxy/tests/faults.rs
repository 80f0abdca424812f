//! Faults: upstream refuses (UF), too slow (UT), client gone (DC, pending or in flight), upstream
//! resets (UC), a 1 GiB streamed body with flat memory; and HTTP/1.1 details.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use kit::http::Client;
use support::{free_addr, read_to_close, start_app, start_resetter, wait_log, ProxyProc, Zeros};

/// Whether the proxy closes `s` within `limit` (what it sends meanwhile is read and dropped).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        while !matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusing_is_503_uf() {
    let dead = free_addr();
    let px = ProxyProc::gateway(dead, &["--access-log"]).await;
    let mut c = Client::connect(px.listen).await.unwrap();
    let a = c.get("/").await.unwrap();
    assert_eq!(a.status, 503);
    assert!(a.body.contains("connection failure"), "{}", a.body);
    assert!(a.headers.get("x-envoy-overloaded").is_none());
    px.stats()
        .metric(format!("cluster.{dead}.upstream_cx_connect_fail"))
        .now_eq(1)
        .await;
    // The failed connect gave its slot back.
    px.stats()
        .metric(format!("cluster.{dead}.upstream_cx_active"))
        .now_eq(0)
        .await;
    wait_log(&px, "\" 503 UF ").await;
    // The client connection is still usable.
    assert_eq!(c.get("/").await.unwrap().status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_ut() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &["--request-timeout=300ms", "--access-log"]).await;
    let mut c = Client::connect(px.listen).await.unwrap();
    let a = c.get("/?delay_ms=3000").await.unwrap();
    assert_eq!(a.status, 504);
    assert_eq!(a.body, "upstream request timeout");
    px.stats()
        .metric(format!("cluster.{app}.upstream_rq_timeout"))
        .now_eq(1)
        .await;
    px.stats()
        .metric(format!("cluster.{app}.upstream_rq_504"))
        .now_eq(1)
        .await;
    wait_log(&px, "\" 504 UT ").await;
    // The timed-out connection was closed, not reused mid-response; next request is fine.
    assert_eq!(c.get("/").await.unwrap().status, 200);
    px.stats()
        .metric(format!("cluster.{app}.upstream_rq_active"))
        .eventually_eq(0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_request_is_dc_and_releases_everything() {
    let app = start_app().await;
    let px = ProxyProc::gateway(
        app,
        &[
            "--max-connections=1",
            "--max-pending-requests=5",
            "--access-log",
        ],
    )
    .await;
    let c = format!("cluster.{app}");
    // A holds the only connection; B waits in the queue.
    let mut a = TcpStream::connect(px.listen).await.unwrap();
    a.write_all(b"GET /?delay_ms=1500 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    px.stats()
        .metric(format!("{c}.upstream_rq_active"))
        .eventually_eq(1)
        .await;
    let mut b = TcpStream::connect(px.listen).await.unwrap();
    b.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    px.stats()
        .metric(format!("{c}.upstream_rq_pending_active"))
        .eventually_eq(1)
        .await;
    px.stats()
        .metric(format!("{c}.circuit_breakers.default.cx_open"))
        .now_eq(1)
        .await;
    // Both clients go away.
    drop(b);
    px.stats()
        .metric(format!("{c}.upstream_rq_pending_active"))
        .eventually_eq(0)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_rq_cancelled"))
        .now_eq(1)
        .await;
    drop(a);
    px.stats()
        .metric(format!("{c}.upstream_rq_active"))
        .eventually_eq(0)
        .await;
    px.stats()
        .metric("http.gateway.downstream_rq_active")
        .eventually_eq(0)
        .await;
    wait_log(&px, "\" 0 DC ").await;
    // Nothing leaked: the pool serves again.
    let mut client = Client::connect(px.listen).await.unwrap();
    assert_eq!(client.get("/").await.unwrap().status, 200);
    px.stats()
        .metric(format!("{c}.upstream_rq_pending_overflow"))
        .now_eq(0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_before_headers_is_503_uc() {
    let up = start_resetter().await;
    let px = ProxyProc::gateway(up, &["--access-log"]).await;
    let mut c = Client::connect(px.listen).await.unwrap();
    let a = c.get("/").await.unwrap();
    assert_eq!(a.status, 503);
    assert!(
        a.body.contains("disconnect/reset before headers"),
        "{}",
        a.body
    );
    px.stats()
        .metric(format!("cluster.{up}.upstream_rq_rx_reset"))
        .now_eq(1)
        .await;
    wait_log(&px, "\" 503 UC ").await;
    px.stats()
        .metric(format!("cluster.{up}.upstream_cx_active"))
        .eventually_eq(0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_streams_both_ways_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &[]).await;
    let mut c = Client::connect(px.listen).await.unwrap();
    let req = Request::post("/sink")
        .header("host", "app")
        .body(Zeros(GIB))
        .unwrap();
    let a = c.send(req).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body, GIB.to_string());

    // And down, on a connection of its own: count without keeping.
    let mut down = Client::connect(px.listen).await.unwrap();
    let resp = down
        .send_streaming(
            Request::get(format!("/big?bytes={GIB}"))
                .header("host", "app")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut n = 0u64;
    use http_body_util::BodyExt;
    while let Some(f) = body.frame().await {
        n += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(n, GIB);
    let rss = support::peak_rss_kib(px.child.id());
    eprintln!("proxy peak RSS after 2 GiB streamed: {rss} KiB");
    assert!(rss > 0 && rss < 128 * 1024, "peak RSS {rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_details() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &[]).await;
    let mut c = Client::connect(px.listen).await.unwrap();

    // x-request-id added, x-forwarded-for set, hop-by-hop headers not forwarded.
    let req = Request::get("/")
        .header("host", "app")
        .header("keep-alive", "timeout=5")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let a = c.send(req).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-seen-x-request-id"].len(), 36);
    assert_eq!(a.headers["x-seen-x-forwarded-for"], "127.0.0.1");
    assert!(a.headers.get("x-seen-keep-alive").is_none());
    // A client's own request id is kept.
    let req = Request::get("/")
        .header("host", "app")
        .header("x-request-id", "mine")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        c.send(req).await.unwrap().headers["x-seen-x-request-id"],
        "mine"
    );

    // HEAD, then the same connection still works.
    let req = Request::head("/")
        .header("host", "app")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let a = c.send(req).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "");
    assert_eq!(c.get("/").await.unwrap().body, "ok");

    // Expect: 100-continue gets its interim response, then the body flows.
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(
        b"POST /sink HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n5") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }

    // Malformed request: 400 on that connection, everyone else unaffected.
    let mut bad = TcpStream::connect(px.listen).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        .await
        .unwrap();
    let n = bad.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(c.get("/").await.unwrap().status, 200);

    // Upgrade (WebSocket-style) is tunnelled: bytes echo through.
    let mut ws = TcpStream::connect(px.listen).await.unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nhost: app\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let n = ws.read(&mut buf[..1]).await.unwrap();
        assert!(n > 0);
        head.push(buf[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    ws.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    ws.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_respects_max_connections() {
    // An echo upstream on a port declared opaque: no detection, plain bytes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let opaque = format!("--opaque-ports={}", up.port());
    let px = ProxyProc::gateway(up, &["--max-connections=1", &opaque]).await;
    let mut first = TcpStream::connect(px.listen).await.unwrap();
    first.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"PRI * HTTP/2.0\r\n");
    // The second connection overflows: closed at once, counted.
    let mut second = TcpStream::connect(px.listen).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .expect("overflowing connection closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    px.stats()
        .metric(format!("cluster.{up}.upstream_cx_overflow"))
        .now_eq(1)
        .await;
    px.stats()
        .metric("tcp.gateway.upstream_cx_overflow")
        .now_eq(1)
        .await;
    px.stats()
        .metric(format!("cluster.{up}.circuit_breakers.default.cx_open"))
        .now_eq(1)
        .await;
    drop(first);
    px.stats()
        .metric(format!("cluster.{up}.upstream_cx_active"))
        .eventually_eq(0)
        .await;
    let mut third = TcpStream::connect(px.listen).await.unwrap();
    third.write_all(b"again").await.unwrap();
    let mut b5 = [0u8; 5];
    third.read_exact(&mut b5).await.unwrap();
    assert_eq!(&b5, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_hold_no_upstream_connection_in_gateway_mode() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &["--max-connections=1"]).await;
    // A pre-dialled spare connection (HTTP clients do this) says nothing for a while.
    let mut silent = TcpStream::connect(px.listen).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    px.stats()
        .metric(format!("cluster.{app}.upstream_cx_total"))
        .now_eq(0)
        .await;
    px.stats()
        .metric("tcp.gateway.downstream_cx_total")
        .now_eq(0)
        .await;
    // So the only upstream connection slot is free for real requests.
    let mut c = Client::connect(px.listen).await.unwrap();
    assert_eq!(c.get("/").await.unwrap().status, 200);
    drop(c);
    // And the silent one may still speak HTTP later.
    silent
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    silent.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_closed_after_the_idle_timeout() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &["--idle-timeout=1s"]).await;
    // Keep-alive client that goes quiet after one request.
    let mut idle = TcpStream::connect(px.listen).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Slowloris: half a request head, then nothing.
    let mut slow = TcpStream::connect(px.listen).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    for (name, s) in [("idle", &mut idle), ("slow", &mut slow)] {
        assert!(
            closed_within(s, Duration::from_secs(20)).await,
            "{name} connection never closed"
        );
    }
    px.stats()
        .metric("http.gateway.downstream_cx_active")
        .eventually_eq(0)
        .await;
    // A request that takes longer than the idle timeout is not cut: it is not idle.
    let mut c = Client::connect(px.listen).await.unwrap();
    assert_eq!(c.get("/?delay_ms=2500").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_clients_hold_the_pool_no_longer_than_the_idle_timeout() {
    let app = start_app().await;
    let px = ProxyProc::gateway(
        app,
        &["--max-connections=2", "--idle-timeout=1s", "--access-log"],
    )
    .await;
    // Not HTTP: proxied as opaque TCP, each holding one of the two connection slots.
    let mut garbage = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(px.listen).await.unwrap();
        s.write_all(b"x\r\n").await.unwrap();
        garbage.push(s);
    }
    px.stats()
        .metric(format!("cluster.{app}.upstream_cx_active"))
        .eventually_eq(2)
        .await;
    // Quiet for the idle timeout: closed, and the slots are free again.
    for s in &mut garbage {
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "an idle opaque connection was never closed"
        );
    }
    px.stats()
        .metric("tcp.gateway.idle_timeout")
        .eventually_eq(2)
        .await;
    let mut c = Client::connect(px.listen).await.unwrap();
    assert_eq!(c.get("/").await.unwrap().status, 200);
}

/// An upstream that answers every request with a head and 7 bytes of a 100-byte body, then
/// stalls (holding the connection).
async fn start_staller() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                    .await;
                tokio::time::sleep(Duration::from_secs(600)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_ends_after_the_idle_timeout_si() {
    // Upstream stalls mid-body: the client gets what came, then the stream ends.
    let up = start_staller().await;
    let px = ProxyProc::gateway(
        up,
        &["--max-connections=1", "--idle-timeout=1s", "--access-log"],
    )
    .await;
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The stalled stream is ended.
    let all = read_to_close(&mut s).await;
    assert!(all.ends_with("\r\n\r\npartial"), "{all}");
    wait_log(&px, " 200 SI ").await;
    px.stats()
        .metric(format!("cluster.{up}.upstream_rq_active"))
        .eventually_eq(0)
        .await;
    px.stats()
        .metric(format!("cluster.{up}.upstream_cx_active"))
        .eventually_eq(0)
        .await;

    // The client stalls mid-upload: 408, and the app's pool slot is free again.
    let app = start_app().await;
    let px = ProxyProc::gateway(
        app,
        &["--max-connections=1", "--idle-timeout=1s", "--access-log"],
    )
    .await;
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // The stalled upload is ended.
    let all = read_to_close(&mut s).await;
    assert!(all.starts_with("HTTP/1.1 408 "), "{all}");
    assert!(all.ends_with("\r\n\r\nstream timeout"), "{all}");
    wait_log(&px, " 408 SI ").await;
    px.stats()
        .metric("http.gateway.downstream_rq_idle_timeout")
        .now_eq(1)
        .await;
    let mut c = Client::connect(px.listen).await.unwrap();
    assert_eq!(c.get("/").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_starts_when_the_upload_is_complete() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &["--request-timeout=1s", "--idle-timeout=2s"]).await;
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    // 3 s of upload, three request timeouts long, but never idle.
    s.write_all(b"POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: 30\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"abc").await.unwrap();
    }
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut b = [0u8; 1024];
        while !String::from_utf8_lossy(&all).ends_with("\r\n\r\n30") {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&all));
            all.extend_from_slice(&b[..n]);
        }
    })
    .await
    .expect("an answer");
    assert!(
        all.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&all)
    );
    px.stats()
        .metric(format!("cluster.{app}.upstream_rq_timeout"))
        .now_eq(0)
        .await;
}

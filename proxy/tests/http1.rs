//! HTTP/1.x on the wire through the proxy, against a scripted upstream that answers exactly the
//! bytes each case needs: pipelining, chunked and close-delimited bodies, HTTP/1.0 clients,
//! upstream connections that close between requests, refused heads, connection reuse and the
//! idle sweeper.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{read_to_close, start_app, wait_log_lines, ProxyProc};

/// Reads one request head (these tests send no request bodies to it).
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..i + 4).collect();
            return Some(String::from_utf8(head).unwrap());
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The scripted upstream. By path: `/chunked` answers a chunked body; `/close` a body delimited
/// by closing the connection; `/once` a normal answer, then it closes the connection (without
/// saying so); `/early` a 413 before the request body, then it closes; anything else echoes the request head it received as a content-length body.
async fn scripted() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = read_head(&mut s, &mut buf).await {
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let out = match path.as_str() {
                        "/chunked" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                                       5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-t: 1\r\n\r\n"
                            .to_string(),
                        "/close" => "HTTP/1.1 200 OK\r\n\r\nuntil the end".to_string(),
                        "/once" => "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce".to_string(),
                        "/early" => {
                            // Refuses the body without reading it, then hangs up.
                            let _ = s
                                .write_all(
                                    b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
                                )
                                .await;
                            return;
                        }
                        _ => format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}",
                            head.len()
                        ),
                    };
                    if s.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                    if path == "/close" || path == "/once" {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads one response with a content-length body.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    let head = read_head(s, buf).await.expect("a response head");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("content-length");
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_upstream_connection() {
    let up = scripted().await;
    let px = ProxyProc::gateway(up, &[]).await;
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\nGET /c HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    for path in ["/a", "/b", "/c"] {
        let (head, body) = read_response(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            body.starts_with(&format!("GET {path} HTTP/1.1\r\n")),
            "{body}"
        );
        // What upstream received: the proxy's additions, the client's headers untouched.
        assert!(body.contains("\r\nhost: x\r\n"), "{body}");
        assert!(body.contains("\r\nx-request-id: "), "{body}");
        assert!(
            body.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
            "{body}"
        );
    }
    px.stats()
        .metric(format!("cluster.{up}.upstream_cx_total"))
        .now_eq(1)
        .await;
    px.stats()
        .metric(format!("cluster.{up}.upstream_rq_total"))
        .now_eq(3)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_close_delimited_responses() {
    let up = scripted().await;
    let px = ProxyProc::gateway(up, &[]).await;

    // Chunked passes through byte for byte (extensions and trailers included), and the
    // connection then carries the next request.
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(b"GET /chunked HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let want_body = "5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
    let mut got = Vec::new();
    while !got.ends_with(want_body.as_bytes()) {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let got = String::from_utf8(got).unwrap();
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
        "{got}"
    );
    s.write_all(b"GET /again HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (_, body) = read_response(&mut s, &mut Vec::new()).await;
    assert!(body.starts_with("GET /again "), "{body}");

    // An HTTP/1.0 client cannot take chunked: it gets the payload, ended by the close.
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(b"GET /chunked HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let all = read_to_close(&mut s).await;
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(!all.contains("chunked"), "{all}");
    assert!(all.ends_with("\r\n\r\nhello world"), "{all}");

    // A body delimited by the upstream closing ends the client's connection the same way,
    // and the client is told.
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(b"GET /close HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let all = read_to_close(&mut s).await;
    assert!(all.contains("\r\nconnection: close\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\nuntil the end"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_bodies_reach_upstream() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &["--access-log"]).await;
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    // Sent in pieces, split inside the framing.
    for part in [
        &b"POST /sink HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r"[..],
        b"\nhel",
        b"lo\r\n3\r\nabc\r\n0\r\n",
        b"\r\n",
    ] {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut buf = Vec::new();
    let (_, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(body, "8");
    // The access log counts payload, not framing.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = px.access_log();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("\"POST /sink HTTP/1.1\" 200 - 8 1 "))
        {
            assert!(l.contains(&format!("\"{app}\"")), "{l}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_its_connection_between_requests_costs_the_client_nothing() {
    let up = scripted().await;
    let px = ProxyProc::gateway(up, &[]).await;
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..5 {
        s.write_all(b"GET /once HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert_eq!(body, "once");
        // Right after the close, or some time later: either way the dead connection is not used.
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let c = format!("cluster.{up}");
    px.stats()
        .metric(format!("{c}.upstream_rq_200"))
        .now_eq(5)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_cx_total"))
        .now_eq(5)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_rq_rx_reset"))
        .now_eq(0)
        .await;
    // The last closed connection is noticed while idle, without a request to trip over it.
    px.stats()
        .metric(format!("{c}.upstream_cx_active"))
        .eventually_eq(0)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_cx_destroy"))
        .eventually_eq(5)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let up = scripted().await;
    let px = ProxyProc::gateway(up, &["--idle-timeout=1s"]).await;
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut s, &mut Vec::new()).await;
    let c = format!("cluster.{up}");
    px.stats()
        .metric(format!("{c}.upstream_cx_active"))
        .now_eq(1)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_cx_idle_timeout"))
        .eventually_eq(1)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_cx_active"))
        .eventually_eq(0)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_cx_destroy"))
        .now_eq(1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_heads_get_their_status_and_the_proxy_keeps_serving() {
    let up = scripted().await;
    let px = ProxyProc::gateway(up, &[]).await;
    let huge = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024));
    // Each answer names what was wrong.
    let cases: [(&[u8], &str, &str); 10] = [
        (
            huge.as_bytes(),
            "HTTP/1.1 431 ",
            "HTTP/1 head over 61440 bytes or 100 header lines",
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com\r\n\r\n",
            "HTTP/1.1 405 ",
            "CONNECT is not proxied",
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            "HTTP/1.1 400 ",
            "malformed HTTP/1 head: conflicting content-length values",
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 400 ",
            "malformed HTTP/1 head: both transfer-encoding and content-length (a smuggling risk)",
        ),
        // A wrong request line is refused, never tunnelled past the proxy's checks.
        (
            b"get / HTTP/1.1\r\nhost: x\r\n\r\n",
            "HTTP/1.1 400 ",
            "malformed HTTP/1 head: the method has lower-case letters (methods are case-sensitive: GET, not get)",
        ),
        (
            b"GET\t/ HTTP/1.1\r\nhost: x\r\n\r\n",
            "HTTP/1.1 400 ",
            "malformed HTTP/1 head: invalid method or token",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 501 ",
            "transfer-encoding other than a single `chunked` is not implemented",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 501 ",
            "transfer-encoding other than a single `chunked` is not implemented",
        ),
        (
            b"GET / HTTP/1.1\r\n\r\n",
            "HTTP/1.1 400 ",
            "malformed HTTP/1 head: no host header",
        ),
        (
            b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "HTTP/1.1 400 ",
            "malformed HTTP/1 head: more than one host header",
        ),
    ];
    for (raw, want, why) in cases {
        let mut s = TcpStream::connect(px.listen).await.unwrap();
        // A refused client may be cut off mid-send: that is fine.
        let _ = s.write_all(raw).await;
        let all = read_to_close(&mut s).await;
        assert!(all.starts_with(want), "{want}: {all}");
        assert!(all.ends_with(&format!("\r\n\r\n{why}")), "{why}: {all}");
        assert!(all.contains("\r\nconnection: close\r\n"), "{all}");
    }
    px.stats()
        .metric(format!("cluster.{up}.upstream_rq_total"))
        .now_eq(0)
        .await;
    px.stats()
        .metric("http.gateway.downstream_cx_protocol_error")
        .now_eq(cases.len() as i64)
        .await;
    // Other methods are HTTP whatever they are called, and empty lines before a request line
    // are skipped (RFC 9112 §2.2).
    for raw in [
        &b"PROPFIND / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        b"\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(px.listen).await.unwrap();
        s.write_all(raw).await.unwrap();
        let (head, _) = read_response(&mut s, &mut Vec::new()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    px.stats()
        .metric(format!("cluster.{up}.upstream_rq_total"))
        .now_eq(2)
        .await;
    // Nobody else noticed.
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_request_body_reaches_the_client_and_nothing_is_reused() {
    let up = scripted().await;
    let px = ProxyProc::gateway(up, &[]).await;
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(b"POST /early HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 30000]).await.unwrap();
    let mut buf = Vec::new();
    let (head, _) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
    // The rest of the body has nowhere to go: the client's connection ends after the answer,
    // and the answer says so.
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let _ = s.write_all(&[b'x'; 30000]).await;
    read_to_close(&mut s).await;
    let c = format!("cluster.{up}");
    px.stats()
        .metric(format!("{c}.upstream_rq_413"))
        .now_eq(1)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_cx_active"))
        .eventually_eq(0)
        .await;
    px.stats()
        .metric("http.gateway.downstream_rq_active")
        .eventually_eq(0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_upstream_thinks_cancels_at_once() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &["--access-log"]).await;
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    s.write_all(b"GET /?delay_ms=8000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let c = format!("cluster.{app}");
    px.stats()
        .metric(format!("{c}.upstream_rq_active"))
        .eventually_eq(1)
        .await;
    let left = std::time::Instant::now();
    drop(s);
    px.stats()
        .metric(format!("{c}.upstream_rq_active"))
        .eventually_eq(0)
        .await;
    px.stats()
        .metric("http.gateway.downstream_rq_active")
        .eventually_eq(0)
        .await;
    // Noticed when the client left, not when the app finally answered.
    assert!(
        left.elapsed() < Duration::from_secs(4),
        "{:?}",
        left.elapsed()
    );
    px.stats()
        .metric(format!("{c}.upstream_rq_tx_reset"))
        .now_eq(1)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !px.access_log().contains("\" 0 DC ") {
        assert!(std::time::Instant::now() < deadline, "{}", px.access_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_lengths_go_on_as_one_and_h2c_is_not_offered_upstream() {
    let up = scripted().await;
    let px = ProxyProc::gateway(up, &[]).await;
    let mut s = TcpStream::connect(px.listen).await.unwrap();
    let mut buf = Vec::new();
    // The upstream echoes the head it received.
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0, 0\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let (head, echoed) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = echoed.to_ascii_lowercase();
    assert_eq!(lower.matches("content-length").count(), 1, "{echoed}");
    assert!(echoed.contains("\r\ncontent-length: 0\r\n"), "{echoed}");
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n\
          http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, echoed) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = echoed.to_ascii_lowercase();
    assert!(
        !lower.contains("upgrade") && !lower.contains("http2-settings"),
        "{echoed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_get_400_naming_the_fault() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &["--access-log"]).await;
    let head = "POST /sink HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    // The bad bytes with the head, or after a good chunk already went upstream.
    let cases: [(&str, &str); 5] = [
        ("ffffffffffffffffff\r\n", ""),
        ("-5\r\n", ""),
        ("0x5\r\n", ""),
        ("5\r\nhelloXX", ""),
        ("5\r\nhello\r\n", "zz\r\n"),
    ];
    for (first, later) in cases {
        let mut s = TcpStream::connect(px.listen).await.unwrap();
        s.write_all(format!("{head}{first}").as_bytes())
            .await
            .unwrap();
        if !later.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.write_all(later.as_bytes()).await.unwrap();
        }
        let all = read_to_close(&mut s).await;
        assert!(
            all.starts_with("HTTP/1.1 400 "),
            "{first:?} {later:?}: {all}"
        );
        assert!(
            all.contains("\r\n\r\nmalformed chunked request body: "),
            "{first:?} {later:?}: {all}"
        );
    }
    px.stats()
        .metric("http.gateway.downstream_cx_protocol_error")
        .eventually_eq(cases.len() as i64)
        .await;
    px.stats()
        .metric(format!("cluster.{app}.upstream_rq_active"))
        .eventually_eq(0)
        .await;
    // The access log blames the client's protocol (DPE), not its going away (DC).
    wait_log_lines(&px, " 400 DPE ", cases.len()).await;
}

//! Shutdown (issue 15): after SIGTERM the outbound listener keeps serving the app, inbound (and a
//! gateway) serves on for `--drain-time` telling callers `connection: close`, and the process exits
//! once no connection is left, never later than `max(--drain-time, --drain-max)` (30 s unless the
//! webhook renders the pod's grace period).
//!
//! The gateway tests need nothing; the sidecar test runs the proxy in a pod network namespace with
//! proxyinit's redirect rules, as `transparent.rs` does (root, iproute2, iptables; run it under
//! `flock /tmp/trellis-netns.lock`).

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use kit::http::{get, Client};
use kit::netns::{Netns, Pair};
use kit::process::{Proc, Spec};
use kit::root::require_root;
use tokio::net::{TcpListener, TcpSocket};

use support::{install_proxyinit_rules, listen_in, start_app, start_app_with, ProxyProc};

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

/// Waits up to `within` for `child` to exit.
async fn exit_of(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/ready` answers 503 (`DRAINING`) from the SIGTERM on: polled briefly, since the signal is
/// handled asynchronously.
async fn wait_not_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = get(admin, "/ready").await.unwrap();
        if r.status == 503 {
            assert_eq!(r.body, "DRAINING\n");
            return;
        }
        assert!(Instant::now() < deadline, "/ready still {}", r.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_inbound_finishes_in_flight_and_tells_new_callers_connection_close() {
    let app = start_app().await;
    let mut px = ProxyProc::gateway(app, &["--drain-time=3s"]).await;
    let listen = px.listen;

    // A caller's pooled keep-alive connection, idle at SIGTERM.
    let mut kept = Client::connect(listen).await.unwrap();
    let r = kept.get("/").await.unwrap();
    assert_eq!((r.status, r.header("connection")), (200, None));
    // A request in flight at SIGTERM.
    let slow = tokio::spawn(async move {
        let mut c = Client::connect(listen).await.unwrap();
        let r = c.get("/?delay_ms=1500").await.unwrap();
        (r.status, r.header("connection").map(str::to_string))
    });
    px.stats()
        .metric(format!("cluster.{app}.upstream_rq_active"))
        .eventually_eq(1)
        .await;

    let t0 = Instant::now();
    sigterm(px.child.id());
    wait_not_ready(px.admin).await;
    px.stats().metric("server.live").now_eq(0).await;

    // New callers are still served, and told to go away.
    let mut fresh = Client::connect(listen)
        .await
        .expect("accepting after SIGTERM");
    let r = fresh.get("/").await.unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(
        fresh.get("/").await.is_err(),
        "the connection closes after its `connection: close` answer"
    );
    // The idle pooled connection was kept, and its next answer says close.
    let r = kept.get("/").await.unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));

    // The request in flight at SIGTERM finished.
    let (status, connection) = slow.await.unwrap();
    assert_eq!((status, connection.as_deref()), (200, Some("close")));

    // Still accepting 2 s in (drain time 3 s)...
    tokio::time::sleep_until((t0 + Duration::from_secs(2)).into()).await;
    let r = get(listen, "/")
        .await
        .expect("accepting within the drain time");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    // ...then no more, and the process exits 0 once nothing is left.
    let status = exit_of(&mut px.child, Duration::from_secs(8))
        .await
        .expect("no exit after the drain time");
    let took = t0.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(2900),
        "exited {took:?} after SIGTERM, before the drain time (3 s)"
    );
    assert!(
        tokio::net::TcpStream::connect(listen).await.is_err(),
        "still accepting after exiting"
    );
}

/// Nothing open (a native sidecar's case: the app has exited): exit right after the drain time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nothing_open_exits_after_the_drain_time() {
    let app = start_app().await;
    let mut px = ProxyProc::gateway(app, &["--drain-time=1s"]).await;
    let t0 = Instant::now();
    sigterm(px.child.id());
    let status = exit_of(&mut px.child, Duration::from_secs(5))
        .await
        .expect("no exit within 5 s of SIGTERM with nothing open (drain time 1 s)");
    let took = t0.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(900),
        "exited {took:?} after SIGTERM, before the drain time (1 s)"
    );
}

/// A pod's grace period far past any clock (`terminationGracePeriodSeconds` is an i64, rendered
/// as `--drain-max`) is taken as "no bound of ours": with nothing open the proxy still exits
/// cleanly after the drain time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_huge_drain_max_still_exits_after_the_drain_time() {
    let app = start_app().await;
    let huge = format!("--drain-max={}s", i64::MAX);
    let mut px = ProxyProc::gateway(app, &["--drain-time=1s", &huge]).await;
    sigterm(px.child.id());
    let status = exit_of(&mut px.child, Duration::from_secs(5))
        .await
        .expect("no exit within 5 s of SIGTERM with nothing open (drain time 1 s)");
    assert!(status.success(), "{status}");
}

/// A request that never ends does not hold the process past the bound: `--drain-max` (the pod's
/// grace period; 8 s here, 30 s by default), since the drain time (1 s) is shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exit_is_bounded_when_a_request_lingers() {
    let app = start_app().await;
    let mut px = ProxyProc::gateway(
        app,
        &[
            "--drain-time=1s",
            "--drain-max=8s",
            "--request-timeout=300s",
        ],
    )
    .await;
    let listen = px.listen;
    let lingering = tokio::spawn(async move {
        let mut c = Client::connect(listen).await.unwrap();
        c.get("/?delay_ms=120000").await
    });
    px.stats()
        .metric(format!("cluster.{app}.upstream_rq_active"))
        .eventually_eq(1)
        .await;
    let t0 = Instant::now();
    sigterm(px.child.id());
    // Held past the drain time by the request in flight...
    assert!(
        exit_of(&mut px.child, Duration::from_secs(5))
            .await
            .is_none(),
        "exited with a request in flight, before the bound"
    );
    // ...but not past the bound.
    let status = exit_of(&mut px.child, Duration::from_secs(10))
        .await
        .expect("still running 15 s after SIGTERM");
    let took = t0.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        (Duration::from_secs(7)..Duration::from_secs(11)).contains(&took),
        "exited {took:?} after SIGTERM; the bound is 8 s"
    );
    assert!(
        lingering.await.unwrap().is_err(),
        "the lingering request was cut"
    );
}

/// `/quitquitquit` during a SIGTERM drain cuts it short: every listener stops at once and the
/// process exits within the drain time, though the drain would have lasted 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_cuts_a_sigterm_drain_short() {
    let app = start_app().await;
    let mut px = ProxyProc::gateway(app, &["--drain-time=20s"]).await;
    sigterm(px.child.id());
    wait_not_ready(px.admin).await;
    assert_eq!(get(px.listen, "/").await.unwrap().status, 200);
    let t0 = Instant::now();
    assert_eq!(
        kit::http::post(px.admin, "/quitquitquit")
            .await
            .unwrap()
            .status,
        200
    );
    let status = exit_of(&mut px.child, Duration::from_secs(5))
        .await
        .expect("no exit within 5 s of /quitquitquit");
    assert!(status.success(), "{status}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

async fn client(ns: &Netns, addr: SocketAddr) -> Client {
    Client::to(addr).netns(ns).connect().await.unwrap()
}

/// The sidecar for real (redirect rules, uid 1337): after SIGTERM the app's outbound calls go on
/// past the drain time, on new and on pooled connections, while inbound is closed; the process
/// exits once the app's last connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_the_outbound_listener_serving_the_app() {
    require_root();
    let net = Pair::new(true).unwrap();
    let (pod, peer) = (&net.pod, &net.peer);
    install_proxyinit_rules(pod);
    start_app_with(listen_in(pod, "0.0.0.0:8080"));
    let outside = SocketAddr::from((
        net.peer_ip(),
        start_app_with(listen_in(peer, "0.0.0.0:0")).port(),
    ));

    let argv = [env!("CARGO_BIN_EXE_proxy"), "--drain-time=2s"];
    let spec = Spec::new(argv.map(String::from).to_vec(), 1337, 1337);
    let log = kit::process::temp_file("proxy-log").unwrap();
    let mut proxy = Proc::spawn("proxy", &spec, pod, log).unwrap();
    let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
    let ready = || async {
        match Client::to(admin).netns(pod).connect().await {
            Ok(mut c) => c.get("/ready").await.map(|r| r.status).unwrap_or(0),
            Err(_) => 0,
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready().await != 200 {
        assert!(
            Instant::now() < deadline,
            "sidecar never became ready:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The app's pooled connection to an outside service, and a caller's to the app.
    let mut pooled = client(pod, outside).await;
    assert_eq!(pooled.get("/").await.unwrap().status, 200);
    let inbound = SocketAddr::from((net.pod_ip(), 8080));
    let mut caller = client(peer, inbound).await;
    assert_eq!(caller.get("/").await.unwrap().status, 200);

    let t0 = Instant::now();
    sigterm(proxy.child.id());
    let deadline = Instant::now() + Duration::from_secs(2);
    while ready().await != 503 {
        assert!(Instant::now() < deadline, "/ready not 503 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Inbound: callers are told to leave.
    let r = caller.get("/").await.unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));

    // 3 s after SIGTERM, past the 2 s drain time: the app's new outbound connection works, and so
    // does its pooled one, which is not asked to close.
    tokio::time::sleep_until((t0 + Duration::from_secs(3)).into()).await;
    let r = client(pod, outside).await.get("/").await.unwrap();
    assert_eq!((r.status, r.header("connection")), (200, None));
    let r = pooled.get("/").await.unwrap();
    assert_eq!((r.status, r.header("connection")), (200, None));
    // Inbound stopped accepting at the drain time.
    let refused = TcpSocket::from_std_stream(peer.socket_for(inbound).unwrap())
        .connect(inbound)
        .await;
    assert!(
        refused.is_err(),
        "inbound still accepting after the drain time"
    );
    // The app's open connection holds the proxy...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        proxy.try_status().is_none(),
        "the proxy exited while the app still had a connection open:\n{}",
        proxy.logs()
    );
    // ...until the app closes it (as the kernel does when the app exits).
    drop(pooled);
    let closed = Instant::now();
    let status = proxy.wait(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "no exit after the last connection closed:\n{}",
            proxy.logs()
        )
    });
    assert!(status.success(), "{status}");
    assert!(
        closed.elapsed() < Duration::from_secs(2),
        "{:?}",
        closed.elapsed()
    );
    let logs = proxy.logs();
    assert!(logs.contains("drained: no connection left"), "{logs}");
    let _ = std::fs::remove_file(&proxy.log);
}

/// An HTTP/2 app answering every stream `ok` after `delay`.
async fn start_h2_app(delay: Duration) -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// HTTP/2 callers are told to leave with a GOAWAY, and the stream in flight at SIGTERM finishes
/// on the same connection before it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_http2_callers_goaway_and_finishes_their_streams() {
    use http_body_util::BodyExt as _;
    let app = start_h2_app(Duration::from_millis(1500)).await;
    let mut px = ProxyProc::gateway(app, &["--drain-time=3s"]).await;
    let (mut send, conn) = support::h2_client(px.listen).await;
    let req = hyper::Request::get("http://app/slow")
        .body(http_body_util::Full::default())
        .unwrap();
    // Held open on our side: only the proxy can end the connection.
    let held = send.clone();
    let slow = tokio::spawn(async move {
        let r = send.send_request(req).await?;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    });
    px.stats()
        .metric(format!("cluster.{app}.upstream_rq_active"))
        .eventually_eq(1)
        .await;
    sigterm(px.child.id());
    let (status, body) = slow
        .await
        .unwrap()
        .expect("the stream in flight at SIGTERM");
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    // The proxy's GOAWAY ends the connection once its last stream is done.
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(
        ended.is_ok(),
        "the HTTP/2 connection is still open after its last stream, though draining"
    );
    drop(held);
    let status = exit_of(&mut px.child, Duration::from_secs(8))
        .await
        .expect("no exit after the drain time");
    assert!(status.success(), "{status}");
}

/// A caller that connects during the drain is still served: its first streams are answered
/// (the proxy's GOAWAY names them as processed), then the connection closes. Ten connections,
/// one after another, so a race between the handshake and the drain would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_http2_connection_during_the_drain_is_served_then_closed() {
    use http_body_util::BodyExt as _;
    let app = start_h2_app(Duration::ZERO).await;
    let mut px = ProxyProc::gateway(app, &["--drain-time=4s"]).await;
    sigterm(px.child.id());
    wait_not_ready(px.admin).await;
    for i in 0..10 {
        let (mut send, conn) = support::h2_client(px.listen).await;
        let req = hyper::Request::get("http://app/late")
            .body(http_body_util::Full::default())
            .unwrap();
        let r = send
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: its first stream during the drain: {e}"));
        assert_eq!(r.status(), 200, "connection {i}");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok", "connection {i}");
        // `send` is held: only the proxy can end the connection.
        let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
        assert!(
            ended.is_ok(),
            "connection {i} still open after its stream, though draining"
        );
        drop(send);
    }
    let status = exit_of(&mut px.child, Duration::from_secs(10))
        .await
        .expect("no exit after the drain time");
    assert!(status.success(), "{status}");
}

//! Transparent mode for real: a "pod" network namespace with the redirect rules proxyinit computes
//! (`proxyinit::rules`, applied by `proxyinit::apply` as the init container does: inbound → 15006,
//! outbound → 15001, the proxy's uid/gid and loopback exempt), the sidecar running as uid 1337
//! inside it, and a peer namespace on the other end of a veth pair playing the client and the
//! outside world. Needs root, iproute2 and iptables: fails without them, never skips.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kit::http::Client;
use kit::netns::{Netns, Pair};
use kit::process::{Proc, Spec};
use kit::root::require_root;
use kit::stats::Matcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::{install_proxyinit_rules, listen_in, start_app_with};

/// A raw TCP connection to `addr` made from inside `ns`.
async fn dial(ns: &Netns, addr: SocketAddr) -> TcpStream {
    TcpSocket::from_std_stream(ns.socket_for(addr).unwrap())
        .connect(addr)
        .await
        .unwrap()
}

async fn client(ns: &Netns, addr: SocketAddr) -> Client {
    Client::to(addr).netns(ns).connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_in_a_network_namespace_with_iptables_redirect() {
    require_root();
    let net = Pair::new(true).unwrap();
    let (pod, peer) = (&net.pod, &net.peer);
    install_proxyinit_rules(pod);

    // The app in the pod, on 8080 (and 8081 for IPv6); an outside HTTP service and a
    // server-speaks-first service in the peer.
    let app = start_app_with(listen_in(pod, "0.0.0.0:8080"));
    assert_eq!(app.port(), 8080);
    let app6 = start_app_with(listen_in(pod, "[::]:8081"));
    assert_eq!(app6.port(), 8081);
    let peer_ip = std::net::IpAddr::V4(net.peer_ip());
    let outside = SocketAddr::new(peer_ip, start_app_with(listen_in(peer, "0.0.0.0:0")).port());
    let banner_listener = listen_in(peer, "0.0.0.0:0");
    let banner = SocketAddr::new(peer_ip, banner_listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = banner_listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = s
                    .write_all(b"220 hello from a server that speaks first\r\n")
                    .await;
                let mut b = [0u8; 16];
                let _ = s.read(&mut b).await;
            });
        }
    });

    // The sidecar in the pod as uid/gid 1337, like the injected container.
    let argv = [
        env!("CARGO_BIN_EXE_proxy"),
        "--max-connections=1",
        "--max-pending-requests=1",
        "--outbound-max-connections=5",
    ];
    let spec = Spec::new(argv.map(String::from).to_vec(), 1337, 1337);
    let log = kit::process::temp_file("proxy-log").unwrap();
    let proxy = Proc::spawn("proxy", &spec, pod, log).unwrap();
    let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = match Client::to(admin).netns(pod).connect().await {
            Ok(mut c) => c.get("/ready").await.map(|r| r.status).unwrap_or(0),
            Err(_) => 0,
        };
        if ready == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar never became ready:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = Matcher::new(admin).from_netns(pod);

    // 1. Inbound: the client dials the pod's app port; the sidecar sits in between.
    let target = SocketAddr::from((net.pod_ip(), 8080));
    let a = client(peer, target).await.get("/").await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers["x-seen-x-forwarded-for"],
        net.peer_ip().to_string().as_str()
    );
    assert!(a.headers.contains_key("x-seen-x-request-id"));
    stats
        .metric("cluster.inbound_8080.upstream_rq_200")
        .now_eq(1)
        .await;
    stats
        .metric("http.inbound.downstream_rq_total")
        .now_eq(1)
        .await;

    // Inbound limits 1 connection / 1 pending: 4 slow concurrent requests, some 503 UO.
    let slow = || async move {
        let a = client(peer, target)
            .await
            .get("/?delay_ms=500")
            .await
            .unwrap();
        (a.status, a.headers.contains_key("x-envoy-overloaded"))
    };
    let (c1, c2, c3, c4) = tokio::join!(slow(), slow(), slow(), slow());
    let codes = [c1, c2, c3, c4];
    let uo = codes.iter().filter(|c| **c == (503, true)).count();
    let ok = codes.iter().filter(|c| c.0 == 200).count();
    assert!(uo >= 1 && ok >= 1 && uo + ok == 4, "{codes:?}");
    stats
        .metric("cluster.inbound_8080.upstream_rq_pending_overflow")
        .now_eq(uo as i64)
        .await;

    // IPv6 inbound: IP6T_SO_ORIGINAL_DST.
    let target6 = SocketAddr::from((net.pod_ip6(), 8081));
    assert_eq!(
        client(peer, target6).await.get("/").await.unwrap().status,
        200
    );
    stats
        .metric("cluster.inbound_8081.upstream_rq_200")
        .now_eq(1)
        .await;

    // 2. Outbound: the app dials an outside service; the sidecar (uid 1337, exempt) forwards it.
    assert_eq!(
        client(pod, outside).await.get("/").await.unwrap().status,
        200
    );
    stats
        .metric(format!("cluster.{outside}.upstream_rq_200"))
        .now_eq(1)
        .await;
    stats
        .metric("http.outbound.downstream_rq_total")
        .now_eq(1)
        .await;

    // 3. Server speaks first: nothing to sniff, so after the detection timeout it is opaque TCP.
    let mut s = dial(pod, banner).await;
    let mut b = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
        .await
        .expect("banner relayed")
        .unwrap();
    assert!(b[..n].starts_with(b"220 hello"));
    stats
        .metric("tcp.outbound.downstream_cx_total")
        .now_eq(1)
        .await;
    stats
        .metric(format!("cluster.{banner}.upstream_cx_total"))
        .now_eq(1)
        .await;

    // 4. No loops: a connection whose destination is the proxy's own listener is refused.
    let mut s = dial(pod, "127.0.0.1:15001".parse().unwrap()).await;
    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "a looping connection must be closed");
    stats
        .metric("http.outbound.downstream_cx_loop_refused")
        .now_eq(1)
        .await;

    // 5. The admin port is reachable from other pods (it is never captured): they may read
    // health and stats, never stop or reconfigure the proxy, nor read its configuration.
    let pod_admin = SocketAddr::from((net.pod_ip(), 9901));
    let from_peer = |method: &'static str, path: &'static str| async move {
        let mut c = client(peer, pod_admin).await;
        c.request(method, path, Vec::new()).await.unwrap()
    };
    for (method, path) in [
        ("POST", "/quitquitquit"),
        ("POST", "/logging?level=trace"),
        ("GET", "/config_dump"),
    ] {
        let r = from_peer(method, path).await;
        assert_eq!(
            r.status, 403,
            "{method} {path} from another pod: {}",
            r.body
        );
        assert!(r.body.contains("from the pod itself"), "{}", r.body);
    }
    for path in ["/ready", "/stats", "/stats/prometheus"] {
        assert_eq!(from_peer("GET", path).await.status, 200, "GET {path}");
    }
    let mut local = Client::to(admin).netns(pod).connect().await.unwrap();
    let r = local
        .request("POST", "/logging?level=debug", Vec::new())
        .await
        .unwrap();
    assert_eq!(
        r.status, 200,
        "POST /logging from the pod itself: {}",
        r.body
    );
    let _ = std::fs::remove_file(&proxy.log);
}

//! The `webhook serve` binary's life around its listener: SIGTERM during a rollout (`/readyz`
//! answers 503 while `/mutate` is still served through the grace period, then the process exits),
//! and the default listen address answering over IPv6 and IPv4 alike.

mod support;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::{connect, free_port, serve_binary, testdata, Binary};

/// The binary without an API server, with `args`, answering on `probe`.
async fn serve(tag: &str, args: &[String], probe: SocketAddr) -> Binary {
    serve_binary(tag, None, args, probe).await
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
}

#[tokio::test]
async fn sigterm_answers_readyz_503_and_keeps_serving_mutate_through_the_grace_period() {
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let grace = Duration::from_secs(3);
    let mut s = serve(
        "sigterm",
        &[
            format!("--listen=127.0.0.1:{port}"),
            "--shutdown-grace=3s".into(),
        ],
        addr,
    )
    .await;
    let body = std::fs::read(testdata("reviews/plain-pod.json")).unwrap();
    // A keep-alive connection opened before the signal, as the API server would hold.
    let mut held = connect(addr, &s.bundle.ca_pem).await.unwrap();
    let r = held.get("/readyz").await.unwrap();
    assert_eq!(r.status, 200, "ready before the signal");
    assert_eq!(r.header("connection"), None);

    sigterm(&s.child);
    let signalled = Instant::now();
    // /readyz turns 503 at once (well within a second).
    let mut c = connect(addr, &s.bundle.ca_pem).await.unwrap();
    loop {
        let r = c.get("/readyz").await.unwrap();
        if r.status == 503 {
            assert_eq!(r.header("connection"), Some("close"));
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "/readyz still {} a second after SIGTERM",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Through the grace period, reviews are served on the held connection and on new ones.
    let r = held.request("POST", "/mutate", body.clone()).await.unwrap();
    assert_eq!(r.status, 200, "held connection: {}", r.body);
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "draining: the caller is told to reconnect"
    );
    let mut served_late = 0;
    while signalled.elapsed() < grace - Duration::from_millis(700) {
        let mut fresh = connect(addr, &s.bundle.ca_pem)
            .await
            .unwrap_or_else(|e| panic!("refused {:?} after SIGTERM: {e}", signalled.elapsed()));
        let r = fresh
            .request("POST", "/mutate", body.clone())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("\"allowed\":true"), "{}", r.body);
        served_late += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        served_late >= 5,
        "only {served_late} reviews in the grace period"
    );
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "still running in the grace period"
    );
    // Then it stops: exit 0 soon after the grace period, and the port is closed.
    let status = kit::process::wait_timeout(&mut s.child, grace + Duration::from_secs(5))
        .expect("the webhook exits after its grace period");
    let took = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= grace,
        "exited after {took:?}, before the {grace:?} grace"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn a_second_signal_cuts_the_grace_period_short() {
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = serve(
        "sigterm2",
        &[
            format!("--listen=127.0.0.1:{port}"),
            "--shutdown-grace=60s".into(),
        ],
        addr,
    )
    .await;
    sigterm(&s.child);
    let mut c = connect(addr, &s.bundle.ca_pem).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while c.get("/readyz").await.unwrap().status != 503 {
        assert!(Instant::now() < deadline, "never draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    let second = Instant::now();
    sigterm(&s.child);
    let status = kit::process::wait_timeout(&mut s.child, Duration::from_secs(15))
        .expect("exits well before the 60 s grace");
    assert!(status.success(), "{status}");
    assert!(second.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn the_default_listen_address_answers_over_ipv6_and_ipv4() {
    let port = free_port();
    // The default address (`[::]`) with only its port changed, as the Deployment runs it.
    let default = webhook_default_listen();
    let listen = SocketAddr::new(default.ip(), port);
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let s = serve("dualstack", &[format!("--listen={listen}")], v4).await;
    for addr in [v6, v4] {
        let mut c = connect(addr, &s.bundle.ca_pem)
            .await
            .unwrap_or_else(|e| panic!("{addr}: {e}"));
        let body = std::fs::read(testdata("reviews/plain-pod.json")).unwrap();
        let r = c.request("POST", "/mutate", body).await.unwrap();
        assert_eq!(r.status, 200, "{addr}: {}", r.body);
        assert_eq!(c.get("/readyz").await.unwrap().status, 200, "{addr}");
    }
}

/// `webhook serve --help`'s default for `--listen`.
fn webhook_default_listen() -> SocketAddr {
    let out = Command::new(env!("CARGO_BIN_EXE_webhook"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let line = help
        .lines()
        .skip_while(|l| !l.contains("--listen"))
        .find(|l| l.contains("[default:"))
        .unwrap_or_else(|| panic!("no --listen default in:\n{help}"));
    let at = line.find("[default: ").unwrap() + "[default: ".len();
    let addr = &line[at..line.rfind(']').unwrap()];
    let addr: SocketAddr = addr.parse().unwrap();
    assert_eq!(
        addr.ip(),
        std::net::IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        "{line}"
    );
    addr
}

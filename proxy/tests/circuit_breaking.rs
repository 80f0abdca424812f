//! The circuit-breaking walkthroughs (App Mesh connection pools, Istio's circuit-breaking task),
//! on loopback: the real `proxy gateway` in front of a slow app, real concurrent clients.

mod support;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kit::http::{Client, Response};
use support::{start_app, ProxyProc};

const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

#[derive(Default)]
struct Tally {
    ok: AtomicU32,
    overflow: AtomicU32,
    /// 503s missing the header or body: must stay 0.
    bad_503: AtomicU32,
    other: AtomicU32,
}

impl Tally {
    fn record(&self, a: &Response) {
        let _ = self.count(a);
    }

    fn count(&self, a: &Response) -> u32 {
        match a.status {
            200 => self.ok.fetch_add(1, SeqCst),
            503 => {
                let h = a.headers.get("x-envoy-overloaded").map(|v| v.as_bytes());
                if h == Some(b"true") && a.body == OVERFLOW_BODY {
                    self.overflow.fetch_add(1, SeqCst)
                } else {
                    eprintln!("unexpected 503: {:?} {}", a.headers, a.body);
                    self.bad_503.fetch_add(1, SeqCst)
                }
            }
            s => {
                eprintln!("unexpected status {s}: {}", a.body);
                self.other.fetch_add(1, SeqCst)
            }
        }
    }
}

/// Runs `clients` keep-alive clients; each takes requests from `budget` until it is spent or
/// `until` passes.
async fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    path: &'static str,
    budget: Option<u32>,
    until: Duration,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let left = Arc::new(AtomicI64::new(budget.map_or(i64::MAX, i64::from)));
    let end = Instant::now() + until;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (tally, left) = (tally.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await.expect("connect to proxy");
            while Instant::now() < end && left.fetch_sub(1, SeqCst) > 0 {
                match client.get(path).await {
                    Ok(a) => tally.record(&a),
                    Err(e) => {
                        eprintln!("client error: {e}");
                        tally.other.fetch_add(1, SeqCst);
                        client = Client::connect(addr).await.expect("reconnect");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_10_10_with_30_clients_overflow_with_503_uo() {
    let app = start_app().await;
    let px = Arc::new(
        ProxyProc::gateway(
            app,
            &[
                "--max-connections=10",
                "--max-pending-requests=10",
                "--idle-timeout=1s",
                "--access-log",
            ],
        )
        .await,
    );
    let c = format!("cluster.{app}");

    // Sample the gauges while the load runs.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (px, running, c) = (px.clone(), running.clone(), c.clone());
        tokio::spawn(async move {
            let (mut max_cx, mut saw_open, mut samples) = (0i64, false, 0);
            while running.load(SeqCst) {
                let s = px.stats().snapshot().await;
                let n = |k: &str| {
                    let name = format!("{c}.{k}");
                    s.value(&name)
                        .unwrap_or_else(|| panic!("no {name} in /stats:\n{s}"))
                };
                max_cx = max_cx.max(n("upstream_cx_active"));
                saw_open |= n("circuit_breakers.default.cx_open") == 1;
                assert!(n("upstream_rq_pending_active") <= 10);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (max_cx, saw_open, samples)
        })
    };
    let tally = load(
        px.listen,
        30,
        "/?delay_ms=150",
        None,
        Duration::from_secs(4),
    )
    .await;
    running.store(false, SeqCst);
    let (max_cx, saw_open, samples) = sampler.await.unwrap();

    let ok = tally.ok.load(SeqCst);
    let overflow = tally.overflow.load(SeqCst);
    eprintln!("200: {ok}, 503 UO: {overflow}, samples: {samples}, max cx: {max_cx}");
    assert!(ok > 0, "some requests must pass");
    assert!(overflow > 0, "some requests must overflow");
    assert_eq!(tally.bad_503.load(SeqCst), 0);
    assert_eq!(tally.other.load(SeqCst), 0);
    assert!(samples > 0);
    assert!(max_cx <= 10, "upstream_cx_active reached {max_cx}");
    assert!(saw_open, "cx_open never read 1 under load");

    px.stats()
        .metric(format!("{c}.upstream_rq_pending_overflow"))
        .now_eq(i64::from(overflow))
        .await;
    px.stats()
        .metric(format!("{c}.upstream_rq_200"))
        .now_eq(i64::from(ok))
        .await;
    assert!(
        px.stats()
            .metric(format!("{c}.upstream_cx_overflow"))
            .value()
            .await
            >= i64::from(overflow)
    );
    // Idle connections time out, then the breaker closes.
    px.stats()
        .metric(format!("{c}.upstream_cx_active"))
        .eventually_eq(0)
        .await;
    px.stats()
        .metric(format!("{c}.circuit_breakers.default.cx_open"))
        .now_eq(0)
        .await;
    px.stats()
        .metric(format!("{c}.circuit_breakers.default.remaining_cx"))
        .now_eq(10)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_rq_pending_active"))
        .now_eq(0)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_rq_active"))
        .now_eq(0)
        .await;
    // The access log carries the UO flag (written off the request path, so allow it to lag).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let uo = px
            .access_log()
            .lines()
            .filter(|l| l.contains("\" 503 UO "))
            .count();
        if uo > 0 {
            assert!(uo <= overflow as usize);
            break;
        }
        assert!(Instant::now() < deadline, "no UO line in the access log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_request_per_connection_3_connections_1_pending_mostly_overflow() {
    let app = start_app().await;
    let px = ProxyProc::gateway(
        app,
        &[
            "--max-connections=3",
            "--max-pending-requests=1",
            "--max-requests-per-connection=1",
        ],
    )
    .await;
    let c = format!("cluster.{app}");
    let tally = load(
        px.listen,
        20,
        "/?delay_ms=300",
        Some(50),
        Duration::from_secs(120),
    )
    .await;
    let ok = tally.ok.load(SeqCst);
    let overflow = tally.overflow.load(SeqCst);
    eprintln!("200: {ok}, 503 UO: {overflow}");
    assert_eq!(tally.bad_503.load(SeqCst), 0);
    assert_eq!(tally.other.load(SeqCst), 0);
    assert_eq!(ok + overflow, 50);
    assert!(overflow > ok, "most answers must be 503 ({ok} 200s)");
    px.stats()
        .metric(format!("{c}.upstream_rq_pending_overflow"))
        .now_eq(i64::from(overflow))
        .await;
    px.stats()
        .metric(format!("{c}.upstream_rq_200"))
        .now_eq(i64::from(ok))
        .await;
    px.stats()
        .metric(format!("{c}.upstream_rq_total"))
        .now_eq(i64::from(ok))
        .await;
    // One request per connection: every 200 had its own upstream connection.
    px.stats()
        .metric(format!("{c}.upstream_cx_total"))
        .now_eq(i64::from(ok))
        .await;
    px.stats()
        .metric(format!("{c}.upstream_cx_active"))
        .eventually_eq(0)
        .await;
    px.stats()
        .metric(format!("{c}.circuit_breakers.default.cx_open"))
        .now_eq(0)
        .await;
    px.stats()
        .metric(format!("{c}.circuit_breakers.default.rq_pending_open"))
        .now_eq(0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_limits_two_clients_all_succeed() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &[]).await;
    let c = format!("cluster.{app}");
    let tally = load(
        px.listen,
        2,
        "/?delay_ms=20",
        Some(20),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(tally.ok.load(SeqCst), 20);
    assert_eq!(tally.overflow.load(SeqCst) + tally.other.load(SeqCst), 0);
    px.stats()
        .metric(format!("{c}.upstream_rq_200"))
        .now_eq(20)
        .await;
    px.stats()
        .metric(format!("{c}.upstream_rq_pending_overflow"))
        .now_eq(0)
        .await;
    // Keep-alive: two clients never need more than two upstream connections.
    assert!(
        px.stats()
            .metric(format!("{c}.upstream_cx_total"))
            .value()
            .await
            <= 2
    );
    let s = px.stats().snapshot().await;
    assert!(
        !s.has(&format!("{c}.circuit_breakers.default.remaining_cx")),
        "no remaining_* gauge when unlimited"
    );
    assert_eq!(s.get("http.gateway.downstream_rq_total"), Some("20"));
}

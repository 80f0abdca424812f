//! Routes, end to end through the real binary: a gateway whose `--upstream` is a Service that a
//! stand-in control plane (HTTP/2, NDJSON, as `control` speaks it) answers with HTTPRoutes
//! compiled. Weights, header matches, a live switch, NR, faults (FI, DI), timeouts (UT), retries
//! (URX and the retry stats), redirects, rewrites, header modifiers and mirrors.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use config::api::{
    Abort, Delay, Destination, Endpoint, Fault, HeaderModifier, Mirror, PathMatch, PathModifier,
    Policy, Redirect, Retry, Rewrite, RouteMatch, Routes, Rule, ServiceRef, StringMatch, Update,
    ValueMatch, WeightedBackend,
};
use http_body_util::Full;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kit::http::Client;
use support::{free_addr, wait_log, ProxyProc};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A backend that says who it is, counts what it got, and can be told to fail or be slow:
/// `?status=N`, `?delay_ms=N`; `/flaky` answers 500 and 200 in turn, `/flaky.Grpc/Call` a
/// trailers-only `grpc-status: 14` and 200.
#[derive(Clone)]
struct App {
    name: &'static str,
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
}

async fn app(name: &'static str, delay: Duration) -> App {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let flaky = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let hits = counted.clone();
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let flaky = flaky.clone();
                    async move {
                        let q: HashMap<String, String> = req
                            .uri()
                            .query()
                            .unwrap_or("")
                            .split('&')
                            .filter_map(|kv| kv.split_once('='))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect();
                        let ms = q.get("delay_ms").and_then(|v| v.parse().ok()).unwrap_or(0);
                        tokio::time::sleep(delay + Duration::from_millis(ms)).await;
                        let mut status =
                            q.get("status").and_then(|v| v.parse().ok()).unwrap_or(200);
                        if req.uri().path() == "/flaky"
                            && flaky.fetch_add(1, Ordering::SeqCst).is_multiple_of(2)
                        {
                            status = 500;
                        }
                        // Every other answer a gRPC trailers-only UNAVAILABLE.
                        if req.uri().path() == "/flaky.Grpc/Call"
                            && flaky.fetch_add(1, Ordering::SeqCst).is_multiple_of(2)
                        {
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            let h = resp.headers_mut();
                            h.insert("content-type", "application/grpc".parse().unwrap());
                            h.insert("grpc-status", "14".parse().unwrap());
                            return Ok::<_, Infallible>(resp);
                        }
                        let body = format!(
                            "{name} {} host={} x-added={}",
                            req.uri(),
                            req.headers()
                                .get("host")
                                .map_or("", |v| v.to_str().unwrap_or("")),
                            req.headers()
                                .get("x-added")
                                .map_or("", |v| v.to_str().unwrap_or("")),
                        );
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                // HTTP/1.1 and HTTP/2 (prior knowledge), as a gRPC-capable app serves.
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    App { name, addr, hits }
}

/// The body of a watch stream: each answer the control plane gives, as one NDJSON line.
struct Lines(tokio::sync::mpsc::Receiver<String>);

impl Lines {
    fn follow(mut rx: watch::Receiver<String>) -> Lines {
        let (tx, lines) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let line = format!("{}\n", rx.borrow_and_update().as_str());
                if tx.send(line).await.is_err() || rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Lines(lines)
    }
}

impl hyper::body::Body for Lines {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|l| l.map(|l| Ok(Frame::data(Bytes::from(l)))))
    }
}

/// A stand-in control plane that answers every watch with the current `Update` and every change.
struct ControlPlane {
    addr: SocketAddr,
    tx: watch::Sender<String>,
    /// The answer to every gateway watch.
    gw: watch::Sender<String>,
    service: SocketAddr,
    version: AtomicU64,
}

impl ControlPlane {
    async fn start(service: SocketAddr, first: Destination) -> ControlPlane {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let line = serde_json::to_string(&Update {
            version: 1,
            address: service,
            destination: Some(first),
        })
        .unwrap();
        let (tx, rx) = watch::channel(line);
        let (gw, gw_rx) = watch::channel(String::new());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (rx, gw_rx) = (rx.clone(), gw_rx.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let rx = if req
                            .uri()
                            .path()
                            .starts_with(config::api::GATEWAY_WATCH_PATH)
                        {
                            gw_rx.clone()
                        } else {
                            rx.clone()
                        };
                        async move { Ok::<_, Infallible>(Response::new(Lines::follow(rx))) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        ControlPlane {
            addr,
            tx,
            gw,
            service,
            version: AtomicU64::new(1),
        }
    }

    fn push(&self, d: Destination) {
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        let line = serde_json::to_string(&Update {
            version,
            address: self.service,
            destination: Some(d),
        })
        .unwrap();
        self.tx.send_replace(line);
    }
}

fn service(name: &str, port: u16, apps: &[&App]) -> Destination {
    Destination {
        service: ServiceRef {
            namespace: "default".into(),
            name: name.into(),
        },
        port,
        endpoints: apps
            .iter()
            .map(|a| Endpoint {
                address: a.addr,
                pod: Some(a.name.into()),
            })
            .collect(),
        policy: Policy::default(),
        routes: None,
    }
}

fn to(backend: usize, weight: u32) -> WeightedBackend {
    WeightedBackend { backend, weight }
}

fn rule(source: &str, backends: Vec<WeightedBackend>) -> Rule {
    Rule {
        source: source.into(),
        backends,
        ..Rule::default()
    }
}

/// A rule to backend 0 whose `HTTPFault` aborts `per_million` of requests with `status`.
fn aborting(source: &str, status: u16, per_million: u32) -> Rule {
    Rule {
        fault: Some(Fault {
            abort: Some(Abort {
                status,
                per_million,
            }),
            delay: None,
        }),
        ..rule(source, vec![to(0, 1)])
    }
}

/// A rule to backend 0 whose `HTTPFault` delays every request by `delay_ms`.
fn delaying(source: &str, delay_ms: u64) -> Rule {
    Rule {
        fault: Some(Fault {
            delay: Some(Delay {
                delay_ms,
                per_million: 1_000_000,
            }),
            abort: None,
        }),
        ..rule(source, vec![to(0, 1)])
    }
}

/// A rule to backend 0 that rewrites the host to `reviews.internal` and the matched prefix to
/// `/v2`, sets `x-added: yes` on the request and adds `x-route: rewritten` to the answer.
fn rewriting(source: &str) -> Rule {
    Rule {
        rewrite: Some(Rewrite {
            hostname: Some("reviews.internal".into()),
            path: Some(PathModifier::ReplacePrefixMatch("/v2".into())),
        }),
        request_headers: Some(HeaderModifier {
            set: vec![("x-added".into(), "yes".into())],
            ..HeaderModifier::default()
        }),
        response_headers: Some(HeaderModifier {
            add: vec![("x-route".into(), "rewritten".into())],
            ..HeaderModifier::default()
        }),
        ..rule(source, vec![to(0, 1)])
    }
}

/// A rule to `backends` whose `RequestRedirect` sets `scheme`, `hostname` and the path, with
/// `status`.
fn redirecting(
    source: &str,
    backends: Vec<WeightedBackend>,
    (scheme, hostname): (Option<&str>, Option<&str>),
    path: PathModifier,
    status: u16,
) -> Rule {
    Rule {
        redirect: Some(Redirect {
            scheme: scheme.map(Into::into),
            hostname: hostname.map(Into::into),
            path: Some(path),
            port: None,
            status,
        }),
        ..rule(source, backends)
    }
}

fn any(rule: usize) -> RouteMatch {
    RouteMatch {
        rule,
        ..RouteMatch::default()
    }
}

/// A match on a path prefix.
fn prefix(rule: usize, p: &str) -> RouteMatch {
    RouteMatch {
        path: Some(PathMatch::Prefix(p.into())),
        ..any(rule)
    }
}

fn header(rule: usize, name: &str, value: StringMatch) -> RouteMatch {
    RouteMatch {
        rule,
        headers: vec![ValueMatch {
            name: name.into(),
            value,
        }],
        ..RouteMatch::default()
    }
}

/// `reviews` with routes over `backends` (each app its own Service `reviews-<name>`).
fn reviews(apps: &[&App], matches: Vec<RouteMatch>, rules: Vec<Rule>) -> Destination {
    let mut d = service("reviews", 9080, &[apps[0]]);
    d.routes = Some(Routes {
        matches,
        rules,
        backends: apps
            .iter()
            .map(|a| service(&format!("reviews-{}", a.name), 9080, &[a]))
            .collect(),
    });
    d
}

/// A gateway in front of the Service `reviews` at a made-up address, told by `cp`.
async fn gateway(first: Destination) -> (ControlPlane, ProxyProc) {
    let service = free_addr();
    let cp = ControlPlane::start(service, first).await;
    let px = ProxyProc::gateway(
        service,
        &[&format!("--control-plane={}", cp.addr), "--access-log"],
    )
    .await;
    (cp, px)
}

async fn send(c: &mut Client, path: &str, headers: &[(&str, &str)]) -> kit::http::Response {
    let mut b = Request::get(path).header("host", "reviews:9080");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    c.send(b.body(http_body_util::Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap()
}

/// How many of `n` requests each app answered.
async fn spread(c: &mut Client, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let a = send(c, "/reviews/0", headers).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let who = a.body.split(' ').next().unwrap().to_string();
        *seen.entry(who).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_header_matches_and_a_live_switch() {
    let v1 = app("v1", Duration::ZERO).await;
    let v2 = app("v2", Duration::ZERO).await;
    let jason = header(0, "end-user", StringMatch::Exact("jason".into()));
    let (cp, px) = gateway(reviews(
        &[&v1, &v2],
        vec![jason.clone(), any(1)],
        vec![
            rule("default/reviews#0", vec![to(1, 1)]),
            rule("default/reviews#1", vec![to(0, 90), to(1, 10)]),
        ],
    ))
    .await;
    let mut c = Client::connect(px.listen).await.unwrap();
    let seen = spread(&mut c, 1000, &[]).await;
    let v2n = seen.get("v2").copied().unwrap_or(0);
    // Binomial(1000, 0.1): mean 100, sd 9.5; 57..=143 is ±4.5 sd (±3 sd failed once in a
    // full run: 1 in 370 is too often for CI).
    assert!((57..=143).contains(&v2n), "{seen:?}");
    let seen = spread(&mut c, 50, &[("end-user", "jason")]).await;
    assert_eq!(seen.get("v2"), Some(&50), "{seen:?}");

    // All to v1, switched live: the same kept-alive connection follows.
    cp.push(reviews(
        &[&v1, &v2],
        vec![any(0)],
        vec![rule("default/reviews#0", vec![to(0, 1)])],
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut v2_meanwhile = 0;
    loop {
        let seen = spread(&mut c, 20, &[("end-user", "jason")]).await;
        if seen.get("v1") == Some(&20) {
            break;
        }
        v2_meanwhile += seen.get("v2").copied().unwrap_or(0);
        assert!(Instant::now() < deadline, "never switched: {seen:?}");
    }
    px.stats()
        .metric("cluster.outbound|9080||reviews-v2.default.svc.cluster.local.upstream_rq_200")
        .now_eq((v2n + 50 + v2_meanwhile) as i64)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_nr_and_a_rule_with_nothing_to_send_to_is_500() {
    let v1 = app("v1", Duration::ZERO).await;
    let (_cp, px) = gateway(reviews(
        &[&v1],
        vec![
            RouteMatch {
                path: Some(PathMatch::Prefix("/reviews".into())),
                ..any(0)
            },
            RouteMatch {
                path: Some(PathMatch::Exact("/empty".into())),
                ..any(1)
            },
        ],
        vec![
            rule("default/reviews#0", vec![to(0, 1)]),
            rule("default/reviews#1", vec![]),
        ],
    ))
    .await;
    let mut c = Client::connect(px.listen).await.unwrap();
    assert_eq!(send(&mut c, "/reviews/1", &[]).await.status, 200);
    let a = send(&mut c, "/ratings", &[]).await;
    assert_eq!(a.status, 404);
    wait_log(&px, "\"GET /ratings HTTP/1.1\" 404 NR ").await;
    px.stats().metric("http.gateway.no_route").now_eq(1).await;
    assert_eq!(send(&mut c, "/empty", &[]).await.status, 500);
    // The connection survives both.
    assert_eq!(send(&mut c, "/reviews/2", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_fault_never_reaches_the_app_and_a_delay_is_waited() {
    let v1 = app("v1", Duration::ZERO).await;
    let abort = aborting("default/ratings#0", 503, 500_000);
    let delay = delaying("default/ratings#1", 300);
    let (_cp, px) = gateway(reviews(
        &[&v1],
        vec![
            header(1, "end-user", StringMatch::Exact("jason".into())),
            any(0),
        ],
        vec![abort, delay],
    ))
    .await;
    let mut c = Client::connect(px.listen).await.unwrap();
    let mut aborted = 0;
    for _ in 0..1000 {
        let a = send(&mut c, "/ratings/0", &[]).await;
        if a.status == 503 {
            assert_eq!(a.body, "fault filter abort");
            aborted += 1;
        } else {
            assert_eq!(a.status, 200);
        }
    }
    // Binomial(1000, 0.5): sd 15.8; 429..=571 is ±4.5 sd.
    assert!((429..=571).contains(&aborted), "{aborted}");
    assert_eq!(v1.hits.load(Ordering::SeqCst), 1000 - aborted as u64);
    px.stats()
        .metric("http.gateway.fault.aborts_injected")
        .now_eq(aborted as i64)
        .await;
    wait_log(&px, "\" 503 FI ").await;

    let t = Instant::now();
    let a = send(&mut c, "/ratings/0", &[("end-user", "jason")]).await;
    assert_eq!(a.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    wait_log(&px, "\" 200 DI ").await;
    px.stats()
        .metric("http.gateway.fault.delays_injected")
        .now_eq(1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_is_504_ut_and_retries_hide_a_flaky_backend() {
    let v1 = app("v1", Duration::ZERO).await;
    let mut timed = rule("default/reviews#0", vec![to(0, 1)]);
    timed.timeout_ms = Some(300);
    let mut retried = rule("default/reviews#1", vec![to(0, 1)]);
    retried.retry = Some(Retry {
        codes: vec![500, 503],
        attempts: 2,
        backoff_ms: Some(10),
    });
    let (_cp, px) = gateway(reviews(
        &[&v1],
        vec![
            RouteMatch {
                path: Some(PathMatch::Prefix("/slow".into())),
                ..any(0)
            },
            any(1),
        ],
        vec![timed, retried],
    ))
    .await;
    let mut c = Client::connect(px.listen).await.unwrap();
    let t = Instant::now();
    let a = send(&mut c, "/slow?delay_ms=3000", &[]).await;
    assert_eq!(a.status, 504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    wait_log(&px, "\" 504 UT ").await;

    // Every other answer is a 500: each request gets its 200 through one retry.
    for _ in 0..10 {
        let a = send(&mut c, "/flaky", &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let cluster = "cluster.outbound|9080||reviews-v1.default.svc.cluster.local";
    px.stats()
        .metric(format!("{cluster}.upstream_rq_retry"))
        .now_eq(10)
        .await;
    px.stats()
        .metric(format!("{cluster}.upstream_rq_retry_success"))
        .now_eq(10)
        .await;

    // Always 503: the first try and two retries, then the last answer with URX.
    let before = v1.hits.load(Ordering::SeqCst);
    let a = send(&mut c, "/x?status=503", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(v1.hits.load(Ordering::SeqCst) - before, 3);
    wait_log(&px, "\" 503 URX ").await;
    px.stats()
        .metric(format!("{cluster}.upstream_rq_retry_limit_exceeded"))
        .now_eq(1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_rewrites_and_header_modifiers() {
    let v1 = app("v1", Duration::ZERO).await;
    let redirect = redirecting(
        "default/reviews#0",
        vec![],
        (Some("https"), Some("example.com")),
        PathModifier::ReplacePrefixMatch("/new".into()),
        301,
    );
    let rewritten = rewriting("default/reviews#1");
    let (_cp, px) = gateway(reviews(
        &[&v1],
        vec![
            RouteMatch {
                path: Some(PathMatch::Prefix("/old".into())),
                ..any(0)
            },
            RouteMatch {
                path: Some(PathMatch::Prefix("/v1".into())),
                ..any(1)
            },
        ],
        vec![redirect, rewritten],
    ))
    .await;
    let mut c = Client::connect(px.listen).await.unwrap();
    let a = send(&mut c, "/old/page?x=1", &[]).await;
    assert_eq!(a.status, 301);
    assert_eq!(
        a.header("location"),
        Some("https://example.com/new/page?x=1")
    );
    let a = send(&mut c, "/v1/items?x=1", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "v1 /v2/items?x=1 host=reviews.internal x-added=yes");
    assert_eq!(a.header("x-route"), Some("rewritten"));
    px.stats()
        .metric("http.gateway.rq_redirect")
        .now_eq(1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_sees_every_request_and_a_slow_one_slows_no_client() {
    let v1 = app("v1", Duration::ZERO).await;
    let shadow = app("shadow", Duration::from_millis(500)).await;
    let mut r = rule("default/reviews#0", vec![to(0, 1)]);
    r.mirrors = vec![Mirror {
        backend: 1,
        per_million: 1_000_000,
    }];
    let (_cp, px) = gateway(reviews(&[&v1, &shadow], vec![any(0)], vec![r])).await;
    let mut c = Client::connect(px.listen).await.unwrap();
    let t = Instant::now();
    for _ in 0..20 {
        let a = send(&mut c, "/reviews/0", &[]).await;
        assert_eq!(a.status, 200);
        assert!(a.body.starts_with("v1 "), "{}", a.body);
    }
    // Twenty answers from v1, none waiting on the 500 ms mirror.
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while shadow.hits.load(Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "the mirror saw {} of 20",
            shadow.hits.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    px.stats()
        .metric("http.gateway.rq_mirrored")
        .now_eq(20)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_finds_the_mirrors_pool_full_is_dropped_and_counted() {
    let v1 = app("v1", Duration::ZERO).await;
    let shadow = app("shadow", Duration::from_millis(500)).await;
    let mut d = mirrored(&v1, &shadow);
    // The mirror's pool: one connection, one copy waiting for it.
    let pool = &mut d.routes.as_mut().unwrap().backends[1].policy.pool;
    pool.max_connections = Some(1);
    pool.max_pending_requests = Some(1);
    let (_cp, px) = gateway(d).await;
    let mut c = Client::connect(px.listen).await.unwrap();
    for _ in 0..10 {
        let a = send(&mut c, "/reviews/0", &[]).await;
        assert_eq!(a.status, 200);
    }
    // The slow mirror holds its one connection while the ten go by: the copies past the one
    // waiting are dropped, each counted; those that went reach the mirror.
    let stats = px.stats();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mirrored, dropped) = loop {
        let now = stats.snapshot().await;
        let (m, d) = (
            now.num("http.gateway.rq_mirrored"),
            now.num("http.gateway.rq_mirror_dropped"),
        );
        if m + d == 10 || Instant::now() >= deadline {
            break (m, d);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        mirrored + dropped,
        10,
        "{mirrored} mirrored, {dropped} dropped"
    );
    assert!(dropped >= 1, "{mirrored} mirrored, {dropped} dropped");
    wait_hits(&shadow, mirrored).await;
    assert_eq!(shadow.hits.load(Ordering::SeqCst), mirrored);
}

/// How [`post_in_two_parts`] frames its body.
#[derive(Clone, Copy, Debug)]
enum Framed {
    Length,
    /// `Transfer-Encoding: chunked`, in chunks of 1000 bytes.
    Chunked,
    /// `Content-Length`, with `Expect: 100-continue`: the body waits for the `100 Continue`.
    ExpectContinue,
}

/// A raw HTTP/1.1 POST: its head, then (after `pause`) its `body`; the answer's status and body.
async fn post_in_two_parts(
    to: SocketAddr,
    path: &str,
    body: &[u8],
    pause: Duration,
    framed: Framed,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
    let framing = match framed {
        Framed::Length => format!("content-length: {}\r\n", body.len()),
        Framed::Chunked => "transfer-encoding: chunked\r\n".to_string(),
        Framed::ExpectContinue => {
            format!("content-length: {}\r\nexpect: 100-continue\r\n", body.len())
        }
    };
    let expect_continue = matches!(framed, Framed::ExpectContinue);
    let head =
        format!("POST {path} HTTP/1.1\r\nhost: reviews:9080\r\n{framing}connection: close\r\n\r\n");
    let body: Vec<u8> = match framed {
        Framed::Chunked => {
            let mut out = Vec::new();
            for c in body.chunks(1000) {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            out
        }
        _ => body.to_vec(),
    };
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    if expect_continue {
        // Nothing is sent until the proxy says go on.
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("no 100 Continue within 5 s")
            .unwrap();
        got.extend_from_slice(&b[..n]);
        assert!(got.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"), "{got:?}");
        got.clear();
    }
    tokio::time::sleep(pause).await;
    s.write_all(&body).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_bodies_up_to_64_kib_are_mirrored_whole() {
    let primary = recorder("primary", false).await;
    let shadow = recorder("shadow", false).await;
    let (_cp, px) = gateway(mirrored(&primary.app, &shadow.app)).await;
    let stats = px.stats();

    // A body that arrives with its head, one that comes 200 ms after it, one the client holds
    // back for `Expect: 100-continue`, a chunked one: each reaches the primary and its copy the
    // mirror, whole.
    let cases = [
        (pattern(3000), Duration::ZERO, Framed::Length),
        (
            pattern(40 * 1024),
            Duration::from_millis(200),
            Framed::Length,
        ),
        (pattern(64 * 1024), Duration::ZERO, Framed::ExpectContinue),
        (
            pattern(30 * 1024),
            Duration::from_millis(100),
            Framed::Chunked,
        ),
    ];
    for (i, (body, pause, expect)) in cases.iter().enumerate() {
        let (status, got) = post_in_two_parts(px.listen, "/reviews/1", body, *pause, *expect).await;
        assert_eq!(
            (status, got),
            (200, format!("primary got {} bytes", body.len())),
            "case {i}"
        );
        wait_hits(&shadow.app, i as u64 + 1).await;
        let seen = shadow.seen.lock().unwrap();
        assert_eq!(seen[i].authority, "reviews-shadow:9080", "case {i}");
        assert!(
            seen[i].body == body[..],
            "case {i}: the copy's body differs"
        );
    }
    stats.metric("http.gateway.rq_mirrored").now_eq(4).await;

    // Past 64 KiB the body streams to the primary as ever, with a Content-Length or chunked;
    // the copy is dropped and counted.
    let big = pattern(100 * 1024);
    for framed in [Framed::Length, Framed::Chunked] {
        let (status, got) =
            post_in_two_parts(px.listen, "/reviews/1", &big, Duration::ZERO, framed).await;
        assert_eq!(
            (status, got),
            (200, format!("primary got {} bytes", 100 * 1024)),
            "{framed:?}"
        );
    }
    stats
        .metric("http.gateway.rq_mirror_dropped")
        .now_eq(2)
        .await;
    stats.metric("http.gateway.rq_mirrored").now_eq(4).await;
    assert_eq!(shadow.app.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_bodies_up_to_64_kib_are_retried_whole() {
    let flaky = recorder("flaky", false).await;
    let mut r = rule("default/reviews#0", vec![to(0, 1)]);
    r.retry = Some(Retry {
        codes: vec![500],
        attempts: 1,
        backoff_ms: Some(10),
    });
    let (_cp, px) = gateway(reviews(&[&flaky.app], vec![any(0)], vec![r])).await;

    // The first try is answered 500, the retry 200: the app read the same body both times,
    // though it came 200 ms after the head; with a Content-Length, then chunked.
    let body = pattern(20 * 1024);
    for (i, framed) in [Framed::Length, Framed::Chunked].into_iter().enumerate() {
        let (status, got) = post_in_two_parts(
            px.listen,
            "/flaky",
            &body,
            Duration::from_millis(200),
            framed,
        )
        .await;
        assert_eq!(
            (status, got),
            (200, format!("flaky got {} bytes", body.len())),
            "{framed:?}"
        );
        let seen = flaky.seen.lock().unwrap();
        assert_eq!(seen.len(), 2 * (i + 1), "{framed:?}");
        assert!(
            seen.iter().all(|s| s.body == body[..]),
            "{framed:?}: a try's body differs"
        );
    }
    let cluster = "cluster.outbound|9080||reviews-flaky.default.svc.cluster.local";
    px.stats()
        .metric(format!("{cluster}.upstream_rq_retry_success"))
        .now_eq(2)
        .await;

    // Past 64 KiB it is not kept, so not retried: the 500 goes back.
    let big = pattern(100 * 1024);
    let (status, _) =
        post_in_two_parts(px.listen, "/flaky", &big, Duration::ZERO, Framed::Length).await;
    assert_eq!(status, 500);
    assert_eq!(flaky.seen.lock().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_the_routes_attached_to_it() {
    let red = app("red", Duration::ZERO).await;
    let blue = app("blue", Duration::ZERO).await;
    let cp = ControlPlane::start(free_addr(), service("unused", 80, &[])).await;
    let routes = |paths: &[(&str, usize)]| Routes {
        matches: paths
            .iter()
            .enumerate()
            .map(|(i, (p, _))| RouteMatch {
                path: Some(PathMatch::Prefix((*p).into())),
                ..any(i)
            })
            .collect(),
        rules: paths
            .iter()
            .map(|(_, b)| rule("appmesh/color-routes#0", vec![to(*b, 1)]))
            .collect(),
        backends: vec![
            service("color-red", 8080, &[&red]),
            service("color-blue", 8080, &[&blue]),
        ],
    };
    cp.gw.send_replace(
        serde_json::to_string(&config::api::GatewayUpdate {
            version: 1,
            gateway: ServiceRef {
                namespace: "appmesh".into(),
                name: "ingress-gw".into(),
            },
            routes: Some(routes(&[("/paths/red", 0)])),
        })
        .unwrap(),
    );
    // `--upstream` is replaced by `--gateway`; the admin API still answers.
    let px = ProxyProc::gateway_with(&[
        "--gateway=appmesh/ingress-gw",
        &format!("--control-plane={}", cp.addr),
        "--access-log",
    ])
    .await;
    let mut c = Client::connect(px.listen).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let a = loop {
        let a = send(&mut c, "/paths/red", &[]).await;
        if a.status == 200 || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(a.status, 200);
    assert!(a.body.starts_with("red /paths/red"), "{}", a.body);
    assert_eq!(send(&mut c, "/paths/blue", &[]).await.status, 404);
    // A route added live.
    cp.gw.send_replace(
        serde_json::to_string(&config::api::GatewayUpdate {
            version: 2,
            gateway: ServiceRef {
                namespace: "appmesh".into(),
                name: "ingress-gw".into(),
            },
            routes: Some(routes(&[("/paths/red", 0), ("/paths/blue", 1)])),
        })
        .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while send(&mut c, "/paths/blue", &[]).await.status != 200 {
        assert!(Instant::now() < deadline, "the new route never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    px.stats()
        .metric("cluster.outbound|8080||color-red.default.svc.cluster.local.upstream_rq_200")
        .now_eq(1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_follow_the_routes_one_by_one() {
    let v1 = app("v1", Duration::ZERO).await;
    let v2 = app("v2", Duration::ZERO).await;
    let jason = header(0, "end-user", StringMatch::Exact("jason".into()));
    let (_cp, px) = gateway(reviews(
        &[&v1, &v2],
        vec![jason, any(1)],
        vec![
            rule("default/reviews#0", vec![to(1, 1)]),
            rule("default/reviews#1", vec![to(0, 1)]),
        ],
    ))
    .await;
    // One HTTP/2 connection; each stream is routed on its own headers.
    let mut send = h2_client(px.listen).await;
    for (user, want) in [("jason", "v2"), ("bob", "v1"), ("jason", "v2")] {
        let req = Request::builder()
            .uri(format!("http://reviews/reviews/0?user={user}"))
            .header("end-user", user)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.starts_with(want), "{user}: {body}");
    }
    assert_eq!(v2.hits.load(Ordering::SeqCst), 2);
    assert_eq!(v1.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_without_a_route_or_a_backend_get_grpc_statuses() {
    let v1 = app("v1", Duration::ZERO).await;
    let exact = |rule: usize, path: &str| RouteMatch {
        path: Some(PathMatch::Exact(path.into())),
        ..any(rule)
    };
    // As control compiles a GRPCRoute: a method is an exact path; the second rule's one
    // backend is invalid (nothing to send to).
    let (_cp, px) = gateway(reviews(
        &[&v1],
        vec![
            exact(0, "/reviews.Reviews/Get"),
            exact(1, "/reviews.Reviews/Broken"),
        ],
        vec![
            rule("default/reviews#0", vec![to(0, 1)]),
            rule("default/reviews#1", vec![]),
        ],
    ))
    .await;
    let mut send = h2_client(px.listen).await;
    let call = |path: &str, grpc: bool| {
        let mut b = Request::post(format!("http://reviews:9080{path}"));
        if grpc {
            b = b
                .header("content-type", "application/grpc")
                .header("te", "trailers");
        }
        b.body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    // GRPCRoute: an invalid backend answers UNAVAILABLE, trailers-only (HTTP 200); no route
    // answers UNIMPLEMENTED, as Envoy maps its 404.
    for (path, want) in [("/reviews.Reviews/Broken", "14"), ("/other.Svc/Call", "12")] {
        let resp = send.send_request(call(path, true)).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let status = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap());
        assert_eq!(status, Some(want), "{path}: {:?}", resp.headers());
        assert!(resp.headers().contains_key("grpc-message"), "{path}");
    }
    // The same stream without gRPC's content type is HTTPRoute's: 500.
    let resp = send
        .send_request(call("/reviews.Reviews/Broken", false))
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    // The connection carries on: the valid method reaches the app.
    let resp = send
        .send_request(call("/reviews.Reviews/Get", true))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(v1.hits.load(Ordering::SeqCst), 1);
    wait_log(&px, "\"POST /reviews.Reviews/Broken HTTP/2\" 200 ").await;
}

/// An HTTP/2 (prior knowledge) connection to `to`.
async fn h2_client(to: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    support::h2_client(to).await.0
}

/// A stream's status, `grpc-status` (if any), a header and its body.
async fn h2_send(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
    grpc: bool,
) -> (u16, Option<String>, Option<String>, String) {
    let mut b = Request::post(format!("http://reviews:9080{path}"));
    if grpc {
        b = b.header("content-type", "application/grpc");
    }
    let resp = send
        .send_request(
            b.body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
                .unwrap(),
        )
        .await
        .unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, grpc_status, route) = (resp.status().as_u16(), h("grpc-status"), h("x-route"));
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        grpc_status,
        route,
        String::from_utf8_lossy(&body).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_get_the_rules_faults_timeouts_rewrites_and_header_edits() {
    let v1 = app("v1", Duration::ZERO).await;
    let abort = aborting("default/reviews#0", 503, 1_000_000);
    let delay = delaying("default/reviews#1", 300);
    let mut timed = rule("default/reviews#2", vec![to(0, 1)]);
    timed.timeout_ms = Some(200);
    let rewritten = rewriting("default/reviews#3");
    let (_cp, px) = gateway(reviews(
        &[&v1],
        vec![
            prefix(0, "/abort"),
            prefix(1, "/delay"),
            prefix(2, "/slow"),
            prefix(3, "/v1"),
        ],
        vec![abort, delay, timed, rewritten],
    ))
    .await;
    let mut c = h2_client(px.listen).await;

    // Abort: never reaches the app; gRPC gets UNAVAILABLE (503's mapping), trailers-only.
    let a = h2_send(&mut c, "/abort/x", false).await;
    assert_eq!((a.0, &a.3[..]), (503, "fault filter abort"));
    let a = h2_send(&mut c, "/abort/x", true).await;
    assert_eq!((a.0, a.1.as_deref()), (200, Some("14")));
    assert_eq!(v1.hits.load(Ordering::SeqCst), 0);
    wait_log(&px, "\"POST /abort/x HTTP/2\" 503 FI ").await;
    px.stats()
        .metric("http.gateway.fault.aborts_injected")
        .now_eq(2)
        .await;

    // Delay: waited, then forwarded; `DI` in the log.
    let t = Instant::now();
    let a = h2_send(&mut c, "/delay/x", true).await;
    assert_eq!(a.0, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    wait_log(&px, "\"POST /delay/x HTTP/2\" 200 DI ").await;

    // The route's timeout: 504 `UT`, for gRPC DEADLINE_EXCEEDED.
    let t = Instant::now();
    let a = h2_send(&mut c, "/slow/x?delay_ms=2000", false).await;
    assert_eq!(a.0, 504);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    let a = h2_send(&mut c, "/slow/x?delay_ms=2000", true).await;
    assert_eq!((a.0, a.1.as_deref()), (200, Some("4")));
    wait_log(&px, "\"POST /slow/x?delay_ms=2000 HTTP/2\" 504 UT ").await;

    // URLRewrite and the header modifiers.
    let a = h2_send(&mut c, "/v1/items?x=1", false).await;
    assert_eq!(a.0, 200);
    assert_eq!(
        a.3,
        "v1 http://reviews.internal/v2/items?x=1 host= x-added=yes"
    );
    assert_eq!(a.2.as_deref(), Some("rewritten"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_are_retried_by_their_route() {
    let v1 = app("v1", Duration::ZERO).await;
    let mut retried = rule("default/reviews#0", vec![to(0, 1)]);
    retried.retry = Some(Retry {
        codes: vec![500, 503],
        attempts: 2,
        backoff_ms: Some(10),
    });
    let (_cp, px) = gateway(reviews(&[&v1], vec![any(0)], vec![retried])).await;
    let mut c = h2_client(px.listen).await;
    // Every other answer a 500, or for gRPC a trailers-only UNAVAILABLE (retried as a 503):
    // each call, body and all, gets its 200 through one retry.
    for path in ["/flaky", "/flaky.Grpc/Call"] {
        for _ in 0..5 {
            let a = h2_send(&mut c, path, path.contains("Grpc")).await;
            assert_eq!((a.0, a.1.as_deref()), (200, None), "{path}: {}", a.3);
        }
    }
    let cluster = "cluster.outbound|9080||reviews-v1.default.svc.cluster.local";
    let stats = px.stats();
    stats
        .metric(format!("{cluster}.upstream_rq_retry"))
        .now_eq(10)
        .await;
    stats
        .metric(format!("{cluster}.upstream_rq_retry_success"))
        .now_eq(10)
        .await;
    assert_eq!(v1.hits.load(Ordering::SeqCst), 20);

    // Always 503: the first try and two retries, then the last answer with URX.
    let a = h2_send(&mut c, "/x?status=503", false).await;
    assert_eq!(a.0, 503);
    assert_eq!(v1.hits.load(Ordering::SeqCst), 23);
    wait_log(&px, "\"POST /x?status=503 HTTP/2\" 503 URX ").await;
    stats
        .metric(format!("{cluster}.upstream_rq_retry_limit_exceeded"))
        .now_eq(1)
        .await;
}

/// A stream sent on `send`: its answer's head, whether the head ended the stream, and its body.
async fn h2_request(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (hyper::http::response::Parts, bool, Bytes) {
    let resp = send.send_request(req).await.unwrap();
    let ended = hyper::body::Body::is_end_stream(resp.body());
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    (parts, ended, body)
}

/// A POST to `reviews:9080` with `body`, gRPC's content type when `grpc`, and `headers`.
fn h2_post(path: &str, grpc: bool, headers: &[(&str, &str)], body: Bytes) -> Request<Full<Bytes>> {
    let mut b = Request::post(format!("http://reviews:9080{path}"));
    if grpc {
        b = b
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::new(body)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_are_redirected_by_their_route_after_its_fault() {
    let v1 = app("v1", Duration::ZERO).await;
    // A new scheme, no port: the request's port goes (the scheme's own is implied); the matched
    // prefix is replaced.
    let to_https = redirecting(
        "default/reviews#0",
        vec![],
        (Some("https"), None),
        PathModifier::ReplacePrefixMatch("/new".into()),
        301,
    );
    // A rule with backends and a redirect redirects (as on HTTP/1); the request's port stays.
    let moved = redirecting(
        "default/reviews#1",
        vec![to(0, 1)],
        (None, Some("example.com")),
        PathModifier::ReplaceFullPath("/elsewhere".into()),
        302,
    );
    // The fault comes first.
    let mut faulty = aborting("default/reviews#2", 503, 1_000_000);
    faulty.redirect = to_https.redirect.clone();
    let (_cp, px) = gateway(reviews(
        &[&v1],
        vec![prefix(0, "/old"), prefix(1, "/moved"), prefix(2, "/faulty")],
        vec![to_https, moved, faulty],
    ))
    .await;
    let mut c = h2_client(px.listen).await;
    let body = || Bytes::from_static(b"\0\0\0\0\0");

    // A plain stream and a gRPC call alike: the filter's status and `location`, no body, the
    // stream ended by the head.
    for grpc in [false, true] {
        let (head, ended, got) =
            h2_request(&mut c, h2_post("/old/page?x=1", grpc, &[], body())).await;
        assert_eq!(head.status, 301, "grpc: {grpc}");
        assert_eq!(
            head.headers.get("location").map(|v| v.to_str().unwrap()),
            Some("https://reviews/new/page?x=1"),
            "grpc: {grpc}"
        );
        assert!(ended && got.is_empty(), "grpc: {grpc}: {got:?}");
    }
    let get = Request::get("http://reviews:9080/moved/a?y=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (head, ended, _) = h2_request(&mut c, get).await;
    assert_eq!(head.status, 302);
    assert_eq!(
        head.headers.get("location").map(|v| v.to_str().unwrap()),
        Some("http://example.com:9080/elsewhere?y=2")
    );
    assert!(ended);
    let (head, _, got) = h2_request(&mut c, h2_post("/faulty/x", false, &[], body())).await;
    assert_eq!(
        (head.status.as_u16(), &got[..]),
        (503, &b"fault filter abort"[..])
    );

    // No stream reached the app; each redirect logged with its code and no flag, and counted.
    assert_eq!(v1.hits.load(Ordering::SeqCst), 0);
    wait_log(&px, "\"POST /old/page?x=1 HTTP/2\" 301 - ").await;
    wait_log(&px, "\"GET /moved/a?y=2 HTTP/2\" 302 - ").await;
    let stats = px.stats();
    stats.metric("http.gateway.rq_redirect").now_eq(3).await;
    stats
        .metric("http.gateway.fault.aborts_injected")
        .now_eq(1)
        .await;
}

/// What a [`recorder`] saw of one request: its authority (`:authority`, else `host`) and body.
#[derive(Clone, Debug)]
struct Seen {
    authority: String,
    body: Bytes,
}

/// A backend that reads each request whole and records it (`app.hits` counts those recorded).
/// It answers `<name> got N bytes`, or when it `stall`s never answers: each request is held
/// until the client gives it up, and `cancelled` counts those given up. `/flaky` is answered
/// 500 and 200 in turn (its body read and recorded either way).
struct Recorder {
    app: App,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    cancelled: Arc<AtomicU64>,
}

async fn recorder(name: &'static str, stall: bool) -> Recorder {
    struct Cancelled(Arc<AtomicU64>);
    impl Drop for Cancelled {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let cancelled = Arc::new(AtomicU64::new(0));
    let (h, s, x) = (hits.clone(), seen.clone(), cancelled.clone());
    let flaky = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = l.accept().await else {
                continue;
            };
            let (hits, seen, cancelled, flaky) = (h.clone(), s.clone(), x.clone(), flaky.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (hits, seen, cancelled) = (hits.clone(), seen.clone(), cancelled.clone());
                    let fail = req.uri().path() == "/flaky"
                        && flaky.fetch_add(1, Ordering::SeqCst).is_multiple_of(2);
                    async move {
                        let authority = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                req.headers()
                                    .get("host")
                                    .map(|v| v.to_str().unwrap().to_string())
                            })
                            .unwrap_or_default();
                        let body = http_body_util::BodyExt::collect(req.into_body())
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let n = body.len();
                        seen.lock().unwrap().push(Seen { authority, body });
                        hits.fetch_add(1, Ordering::SeqCst);
                        if stall {
                            let _counted = Cancelled(cancelled);
                            std::future::pending::<()>().await;
                        }
                        let mut resp =
                            Response::new(Full::new(Bytes::from(format!("{name} got {n} bytes"))));
                        if fail {
                            *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    Recorder {
        app: App { name, addr, hits },
        seen,
        cancelled,
    }
}

/// Waits (10 s at most) until `app` has had `n` requests.
async fn wait_hits(app: &App, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.hits.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "{} had {} of {n} requests",
            app.name,
            app.hits.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `reviews` with one rule: to `primary`, mirrored in full to `shadow`.
fn mirrored(primary: &App, shadow: &App) -> Destination {
    let mut r = rule("default/reviews#0", vec![to(0, 1)]);
    r.mirrors = vec![Mirror {
        backend: 1,
        per_million: 1_000_000,
    }];
    reviews(&[primary, shadow], vec![any(0)], vec![r])
}

/// A gRPC message of `n` bytes: the 5-byte prefix (uncompressed, length), then a pattern.
fn grpc_message(n: usize) -> Bytes {
    let mut m = vec![0u8];
    m.extend_from_slice(&(n as u32).to_be_bytes());
    m.extend((0..n).map(|i| (i % 251) as u8));
    Bytes::from(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_are_mirrored_with_their_bodies_up_to_64_kib() {
    let primary = recorder("primary", false).await;
    let shadow = recorder("shadow", false).await;
    let (_cp, px) = gateway(mirrored(&primary.app, &shadow.app)).await;
    let mut c = h2_client(px.listen).await;

    // A gRPC unary call: the client has the primary's answer; the mirror gets the same body
    // under the `-shadow` authority, port kept.
    let message = grpc_message(3000);
    let call = h2_post("/reviews.Reviews/Get", true, &[], message.clone());
    let (head, _, got) = h2_request(&mut c, call).await;
    assert_eq!(head.status, 200);
    assert_eq!(&got[..], b"primary got 3005 bytes");
    wait_hits(&shadow.app, 1).await;
    {
        let seen = shadow.seen.lock().unwrap();
        assert_eq!(seen[0].authority, "reviews-shadow:9080");
        assert_eq!(seen[0].body, message);
        let primary_seen = primary.seen.lock().unwrap();
        assert_eq!(primary_seen[0].authority, "reviews:9080");
    }

    // A stream without a body is copied too.
    let get = Request::get("http://reviews:9080/reviews/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (head, _, got) = h2_request(&mut c, get).await;
    assert_eq!(
        (head.status.as_u16(), &got[..]),
        (200, &b"primary got 0 bytes"[..])
    );
    wait_hits(&shadow.app, 2).await;
    {
        let seen = shadow.seen.lock().unwrap();
        assert_eq!(seen[1].authority, "reviews-shadow:9080");
        assert!(seen[1].body.is_empty());
    }
    let stats = px.stats();
    stats.metric("http.gateway.rq_mirrored").now_eq(2).await;

    // Past 64 KiB the body is not kept: the client's call goes through, the copy is dropped
    // and counted so (both counts are final before the client has its answer).
    let big = grpc_message(100 * 1024);
    let call = h2_post("/reviews.Reviews/Put", true, &[], big);
    let (head, _, got) = h2_request(&mut c, call).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        &got[..],
        format!("primary got {} bytes", 100 * 1024 + 5).as_bytes()
    );
    stats
        .metric("http.gateway.rq_mirror_dropped")
        .now_eq(1)
        .await;
    stats.metric("http.gateway.rq_mirrored").now_eq(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_mirror_that_never_answers_holds_up_no_stream() {
    let primary = recorder("primary", false).await;
    let shadow = recorder("shadow", true).await;
    let (_cp, px) = gateway(mirrored(&primary.app, &shadow.app)).await;
    let mut c = h2_client(px.listen).await;
    for i in 0..3 {
        let call = h2_post("/reviews.Reviews/Get", true, &[], grpc_message(100));
        let (head, _, got) = h2_request(&mut c, call).await;
        assert_eq!(
            (head.status.as_u16(), &got[..]),
            (200, &b"primary got 105 bytes"[..]),
            "{i}"
        );
    }
    // Every copy reached the mirror, which holds them all unanswered; none was given up. Had a
    // client's stream waited for its copy's answer, it would have had its own only once the
    // proxy gave the copy up (after 15 s), and the mirror would count it cancelled.
    wait_hits(&shadow.app, 3).await;
    assert_eq!(shadow.cancelled.load(Ordering::SeqCst), 0);
    px.stats()
        .metric("http.gateway.rq_mirrored")
        .now_eq(3)
        .await;
}

/// A gRPC server that answers at once and streams the request's body back as it comes (a
/// client-streaming or bidi call whose server sends its headers first).
async fn early_echo(name: &'static str) -> App {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = l.accept().await else {
                continue;
            };
            let hits = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async move { Ok::<_, Infallible>(Response::new(req.into_body())) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    App { name, addr, hits }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_answered_before_its_body_ends_is_mirrored_whole() {
    let primary = early_echo("primary").await;
    let shadow = recorder("shadow", false).await;
    let (_cp, px) = gateway(mirrored(&primary, &shadow.app)).await;
    let tcp = tokio::net::TcpStream::connect(px.listen).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://reviews:9080/reviews.Reviews/Chat")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (answer, mut up) = send.send_request(req, false).unwrap();
    let (first, second) = (grpc_message(1000), grpc_message(2000));
    up.send_data(first.clone(), false).unwrap();
    // The server's headers come before the client has sent all of its body.
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(shadow.app.hits.load(Ordering::SeqCst), 0);
    up.send_data(second.clone(), true).unwrap();
    let mut body = answer.into_body();
    let mut echoed = Vec::new();
    while let Some(d) = body.data().await {
        let d = d.unwrap();
        let _ = body.flow_control().release_capacity(d.len());
        echoed.extend_from_slice(&d);
    }
    let whole = [first, second].concat();
    assert_eq!(echoed, whole);
    // The copy went once the body's end was read: all of it, to the mirror.
    wait_hits(&shadow.app, 1).await;
    {
        let seen = shadow.seen.lock().unwrap();
        assert_eq!(seen[0].authority, "reviews-shadow:9080");
        assert_eq!(seen[0].body, whole);
    }
    let stats = px.stats();
    stats.metric("http.gateway.rq_mirrored").now_eq(1).await;
    stats
        .metric("http.gateway.rq_mirror_dropped")
        .now_eq(0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_keep_to_one_pod_per_consistent_hash_key() {
    let pods = [
        app("p0", Duration::ZERO).await,
        app("p1", Duration::ZERO).await,
        app("p2", Duration::ZERO).await,
    ];
    let mut d = service("reviews", 9080, &[&pods[0], &pods[1], &pods[2]]);
    d.policy.balancer = config::api::Balancer::ConsistentHash {
        on: config::api::HashOn::Header("x-user".into()),
    };
    let (_cp, px) = gateway(d).await;
    let mut c = h2_client(px.listen).await;
    let keys: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let mut pod_of = HashMap::new();
    for key in &keys {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let call = h2_post("/reviews/0", false, &[("x-user", key)], Bytes::new());
            let (head, _, got) = h2_request(&mut c, call).await;
            assert_eq!(head.status, 200);
            let got = String::from_utf8_lossy(&got);
            seen.insert(got.split(' ').next().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{key} went to {seen:?}");
        pod_of.insert(key.clone(), seen.into_iter().next().unwrap());
    }
    // Twelve keys over three pods: all on one would be a 1 in 177,147 chance.
    let pods_used: std::collections::HashSet<_> = pod_of.values().collect();
    assert!(pods_used.len() >= 2, "{pod_of:?}");
    // HTTP/1 takes the same key to the same pod.
    let mut h1 = Client::connect(px.listen).await.unwrap();
    for key in &keys {
        let a = send(&mut h1, "/reviews/0", &[("x-user", key)]).await;
        assert_eq!(a.body.split(' ').next(), Some(&pod_of[key][..]), "{key}");
    }
}

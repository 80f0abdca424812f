//! The end-to-end scenarios, shared by the tests (`tests/sandbox.rs`) and `make demo`. Each drives
//! real traffic through a [`Mesh`] and returns a [`Report`]: what the clients saw (200/503 counts),
//! the key stat lines as the sidecars' `/stats` shows them, and checks that pass or fail.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use kit::stats::Stats;

use crate::load::{self, LoadResult};
use crate::manifests;
use crate::mesh::{Mesh, ADMIN_PORT};

mod grpc;
pub mod ipv6;
mod routes;
mod services;
mod sigterm;
pub use grpc::{
    call as grpc_call, grpc_calls, grpc_many_streams, grpc_pool, grpc_route_fault,
    grpc_route_mirror, Calls, GRPC,
};
pub use routes::{
    fault_abort, fault_delay, gateway, header_match, live_switch, mirror, retries, timeout,
    user_agent, weights, ROUTES,
};
pub use services::{
    control_plane_down, load_balancing, outlier_detection, scale_down, service_cluster,
    traffic_policy_pool, SERVICES,
};
pub use sigterm::sigterm_drain;

/// The demo pods every scenario needs, in creation order.
pub const TRANSPARENCY: &[&str] = &["green", "client"];
pub const INBOUND_POOL: &[&str] = &["green", "blue"];
pub const OUTBOUND_POOL: &[&str] = &["red", "client"];
pub const OPT_OUT: &[&str] = &["blue", "client"];
pub const SHUTDOWN: &[&str] = &["red", "client"];
pub const HOSTILE: &[&str] = &["green", "blue"];
pub const ALL_PODS: &[&str] = &["green", "red", "blue", "client"];

#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub name: &'static str,
    /// One sentence: what is being shown.
    pub shows: &'static str,
    pub ok_200: u64,
    pub overflow_503: u64,
    pub other: u64,
    /// Key lines as `/stats` shows them, prefixed by the pod.
    pub stats: Vec<String>,
    /// Other evidence (access log lines, the webhook's message).
    pub notes: Vec<String>,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(name: &'static str, shows: &'static str) -> Report {
        Report {
            name,
            shows,
            ..Report::default()
        }
    }

    fn check(&mut self, what: impl Into<String>, ok: bool, detail: impl Into<String>) -> bool {
        self.checks.push(Check {
            what: what.into(),
            ok,
            detail: detail.into(),
        });
        ok
    }

    fn count(&mut self, r: &LoadResult) {
        self.ok_200 += r.code(200);
        self.overflow_503 += r.code(503);
        self.other += r.other();
    }

    fn stat(&mut self, pod: &str, s: &Stats, name: &str) {
        self.stats.push(format!("{pod:<7} {}", s.line(name)));
    }

    fn stat_under_load(&mut self, pod: &str, s: &Stats, name: &str) {
        self.stats
            .push(format!("{pod:<7} {:<72} (under load)", s.line(name)));
    }

    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== {}: {}", self.name, self.shows)?;
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            writeln!(f, "  {mark} {}", c.what)?;
            let lines: Vec<&str> = c.detail.lines().collect();
            if c.ok && lines.len() == 1 && lines[0].len() <= 120 {
                writeln!(f, "         ({})", lines[0])?;
            } else if !c.ok {
                for l in &lines[lines.len().saturating_sub(60)..] {
                    writeln!(f, "         {l}")?;
                }
            }
        }
        if !self.stats.is_empty() {
            writeln!(f, "  stats, as the sidecars' /stats show them:")?;
            for s in &self.stats {
                writeln!(f, "    {s}")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "  {n}")?;
        }
        write!(
            f,
            "  clients saw: {} x 200, {} x 503, {} other",
            self.ok_200, self.overflow_503, self.other
        )
    }
}

/// Waits (up to `secs`) until `read` gives at least `want`; the last value read.
fn poll_until(secs: u64, want: u64, read: impl Fn() -> anyhow::Result<u64>) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let n = read()?;
        if n >= want || Instant::now() >= deadline {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Access log lines of `pod`'s proxy containing every one of `parts`, waiting up to 3 s for the
/// (asynchronous) writer.
fn access_log_lines(mesh: &Mesh, pod: &str, parts: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let lines: Vec<String> = mesh
            .pod(pod)
            .logs("proxy")
            .lines()
            .filter(|l| l.starts_with('[') && parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .collect();
        if !lines.is_empty() || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stats(mesh: &Mesh, pod: &str) -> anyhow::Result<Stats> {
    mesh.stats(pod)
}

fn summary(r: &LoadResult) -> String {
    format!(
        "codes {:?}, x-envoy-overloaded {}, errors {}{}, bodies {:?}",
        r.codes,
        r.overloaded,
        r.errors,
        r.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        r.bodies
    )
}

/// The client reaches green by pod IP through both sidecars; the app's own localhost traffic and
/// excluded ports bypass them.
pub fn transparency(mesh: &Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "transparency",
        "client -> green pod IP:8080 passes the client's sidecar (outbound) and green's (inbound); \
         localhost and excluded ports do not",
    );
    let (client, green) = (mesh.pod("client"), mesh.pod("green"));
    let out_cluster = format!("cluster.{}:8080", green.ip);
    let in_cluster = "cluster.inbound_8080";
    let g0 = stats(mesh, "green")?;

    let r = load::run(client, &format!("http://{}:8080/", green.ip), 1, 1)?;
    rep.count(&r);
    rep.check(
        format!("client -> http://{}:8080/ answers 200 \"green\"", green.ip),
        r.code(200) == 1 && r.bodies.contains_key("green"),
        summary(&r),
    );
    let c1 = stats(mesh, "client")?;
    let g1 = stats(mesh, "green")?;
    rep.check(
        format!("the client's sidecar forwarded it: {out_cluster}.upstream_rq_total = 1"),
        c1.num(&format!("{out_cluster}.upstream_rq_total")) == 1,
        c1.line(&format!("{out_cluster}.upstream_rq_total")),
    );
    let in_before = g0.num(&format!("{in_cluster}.upstream_rq_total"));
    rep.check(
        format!("green's sidecar forwarded it: {in_cluster}.upstream_rq_total grew by 1"),
        g1.num(&format!("{in_cluster}.upstream_rq_total")) == in_before + 1,
        format!(
            "before {in_before}, {}",
            g1.line(&format!("{in_cluster}.upstream_rq_total"))
        ),
    );
    rep.stat("client", &c1, "http.outbound.downstream_rq_total");
    rep.stat("client", &c1, &format!("{out_cluster}.upstream_rq_total"));
    rep.stat("green", &g1, "http.inbound.downstream_rq_total");
    rep.stat("green", &g1, &format!("{in_cluster}.upstream_rq_total"));

    let upstream = format!("\"{}:8080\"", green.ip);
    let c_log = access_log_lines(mesh, "client", &["\"GET / HTTP/1.1\" 200 - ", &upstream]);
    rep.check(
        "the client's sidecar logged it: \"GET / HTTP/1.1\" 200 - ... upstream green:8080",
        !c_log.is_empty(),
        mesh.pod("client").logs("proxy"),
    );
    let g_log = access_log_lines(mesh, "green", &["\"GET / HTTP/1.1\" 200 - "]);
    rep.check(
        "green's sidecar logged it: \"GET / HTTP/1.1\" 200 -",
        !g_log.is_empty(),
        mesh.pod("green").logs("proxy"),
    );
    for l in c_log.iter().take(1) {
        rep.notes.push(format!("client access log: {l}"));
    }
    for l in g_log.iter().take(1) {
        rep.notes.push(format!("green  access log: {l}"));
    }

    // The app's own localhost traffic: straight to the app, not counted by the proxy.
    let r = load::run(green, "http://127.0.0.1:8080/", 1, 1)?;
    rep.count(&r);
    let g2 = stats(mesh, "green")?;
    rep.check(
        "green's app calling 127.0.0.1:8080 reaches itself without its sidecar",
        r.code(200) == 1
            && g2.num(&format!("{in_cluster}.upstream_rq_total"))
                == g1.num(&format!("{in_cluster}.upstream_rq_total")),
        format!(
            "{}; {}",
            summary(&r),
            g2.line(&format!("{in_cluster}.upstream_rq_total"))
        ),
    );

    // Port 8081: excluded outbound on the client, inbound on green; neither sidecar sees it.
    let r = load::run(client, &format!("http://{}:8081/healthz", green.ip), 1, 1)?;
    rep.count(&r);
    let c3 = stats(mesh, "client")?;
    let g3 = stats(mesh, "green")?;
    let c_8081 = c3.names_with(&format!("{}:8081", green.ip));
    let g_8081 = g3.names_with("inbound_8081");
    rep.check(
        "client -> green:8081 (excluded ports) answers 200 and neither sidecar has a cluster for it",
        r.code(200) == 1
            && c_8081.is_empty()
            && g_8081.is_empty()
            && c3.num("http.outbound.downstream_rq_total")
                == c1.num("http.outbound.downstream_rq_total"),
        format!("{}; client: {c_8081:?}; green: {g_8081:?}", summary(&r)),
    );
    Ok(rep)
}

/// The busiest sample with the cluster's `cx_open` at 1, if any.
fn peak<'a>(samples: &'a [Stats], cluster: &str, listener: &str) -> Option<&'a Stats> {
    samples
        .iter()
        .filter(|s| s.num(&format!("{cluster}.circuit_breakers.default.cx_open")) == 1)
        .max_by_key(|s| {
            (
                s.num(&format!("{cluster}.upstream_cx_active")),
                s.num(&format!("{listener}.downstream_cx_active")),
            )
        })
}

/// Samples `/stats` of `pod` while `run` goes on; returns every sample.
fn sample_during(
    mesh: &Mesh,
    pod: &str,
    mut run: load::Running,
) -> anyhow::Result<(LoadResult, Vec<Stats>)> {
    let mut samples = Vec::new();
    while !run.is_done() {
        samples.push(stats(mesh, pod)?);
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok((run.finish()?, samples))
}

/// Issue 15: green's readiness probe, as the webhook rewrote it (an `httpGet` on the proxy's
/// app-health port 15020), called by the "kubelet" while 30 clients saturate green's inbound pool:
/// the clients get 503 UO, the probe keeps answering 200, because the proxy runs it against the
/// app directly, outside the pool.
pub fn probes_under_overload(mesh: &Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "probes under overload",
        "green's rewritten readiness probe (15020 /app-health/app/readyz) while 30 clients \
         saturate max-connections 10 -> the clients get 503 UO, the probe stays 200",
    );
    let green = mesh.pod("green");
    let app = green.admitted.pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "app")
        .cloned()
        .unwrap_or_default();
    let get = &app["readinessProbe"]["httpGet"];
    let path = get["path"].as_str().unwrap_or("").to_string();
    let port = get["port"].as_u64().unwrap_or(0) as u16;
    rep.check(
        "the webhook rewrote green's readiness probe to the app-health port",
        path == "/app-health/app/readyz" && port == config::defaults::APP_HEALTH_PORT,
        format!("httpGet {port} {path}"),
    );
    let url = format!("http://{}:8080/?delay_ms=500", green.ip);
    let mut run = load::start(mesh.pod("blue"), &url, 30, 300)?;
    let mut codes = Vec::new();
    while !run.is_done() {
        codes.push(match crate::get(&mesh.node, green.addr(port), &path) {
            Ok(r) => r.status,
            Err(_) => 0,
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = run.finish()?;
    rep.count(&r);
    rep.check(
        "the clients overflowed green's pool (503)",
        r.code(503) > 0,
        summary(&r),
    );
    rep.check(
        "every probe the kubelet sent during the overload answered 200",
        !codes.is_empty() && codes.iter().all(|c| *c == 200),
        format!("{} probes: {codes:?}", codes.len()),
    );
    Ok(rep)
}

/// App Mesh's walkthrough: green allows 10 connections and 10 pending requests; 30 concurrent
/// clients (from blue, outside the mesh) get some 503s, flagged UO, counted in green's sidecar.
pub fn inbound_pool(mesh: &Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "inbound pool",
        "green: max-connections 10, max-pending-requests 10; 30 concurrent clients, 300 requests \
         of 500 ms -> the excess is refused at once with 503 UO",
    );
    let green = mesh.pod("green");
    let c = "cluster.inbound_8080";
    let before = stats(mesh, "green")?;
    let url = format!("http://{}:8080/?delay_ms=500", green.ip);
    let run = load::start(mesh.pod("blue"), &url, 30, 300)?;
    let (r, samples) = sample_during(mesh, "green", run)?;
    let after = stats(mesh, "green")?;
    rep.count(&r);
    rep.check(
        "some requests succeed (200 \"green\") and some are refused (503)",
        r.code(200) > 0 && r.code(503) > 0 && r.errors == 0,
        summary(&r),
    );
    rep.check(
        "every 503 carries x-envoy-overloaded: true",
        r.overloaded == r.code(503),
        summary(&r),
    );
    let overflow = after.num(&format!("{c}.upstream_rq_pending_overflow"))
        - before.num(&format!("{c}.upstream_rq_pending_overflow"));
    rep.check(
        format!("green's sidecar counted each: {c}.upstream_rq_pending_overflow"),
        overflow == r.code(503),
        format!("grew by {overflow}, clients saw {} x 503", r.code(503)),
    );
    let max_cx = Stats::highest(&samples, &format!("{c}.upstream_cx_active"));
    rep.check(
        format!("{c}.upstream_cx_active reaches 10 and no more"),
        max_cx == 10,
        format!("highest of {} samples: {max_cx}", samples.len()),
    );
    let peak = peak(&samples, c, "http.inbound");
    rep.check(
        format!("{c}.circuit_breakers.default.cx_open reads 1 under load"),
        peak.is_some(),
        format!("{} samples", samples.len()),
    );
    let uo = access_log_lines(mesh, "green", &["\" 503 UO "]);
    rep.check(
        "green's access log shows the refusals with flag UO",
        !uo.is_empty(),
        mesh.pod("green").logs("proxy"),
    );
    if let Some(l) = uo.first() {
        rep.notes.push(format!("green access log: {l}"));
    }
    if let Some(p) = peak.or(samples.last()) {
        for n in [
            "http.inbound.downstream_cx_active".to_string(),
            format!("{c}.upstream_cx_active"),
            format!("{c}.upstream_rq_pending_active"),
            format!("{c}.circuit_breakers.default.cx_open"),
            format!("{c}.circuit_breakers.default.rq_pending_open"),
        ] {
            rep.stat_under_load("green", p, &n);
        }
    }
    rep.stat(
        "green",
        &after,
        &format!("{c}.upstream_rq_pending_overflow"),
    );
    rep.stat(
        "green",
        &after,
        &format!("{c}.circuit_breakers.default.cx_open"),
    );
    Ok(rep)
}

/// Istio's walkthrough: the client allows each destination 3 connections, 1 pending request and 1
/// request per connection; 20 concurrent, 50 requests to red -> most are 503, refused by the
/// client's own sidecar before they reach red.
pub fn outbound_pool(mesh: &Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "outbound pool",
        "client: outbound max-connections 3, max-pending-requests 1, max-requests-per-connection \
         1; 20 concurrent, 50 requests of 200 ms to red -> most 503 UO from the client's sidecar",
    );
    let red = mesh.pod("red");
    let c = format!("cluster.{}:8080", red.ip);
    let c_before = stats(mesh, "client")?;
    let r_before = stats(mesh, "red")?;
    let url = format!("http://{}:8080/?delay_ms=200", red.ip);
    let run = load::start(mesh.pod("client"), &url, 20, 50)?;
    let (r, samples) = sample_during(mesh, "client", run)?;
    let c_after = stats(mesh, "client")?;
    let r_after = stats(mesh, "red")?;
    rep.count(&r);
    rep.check(
        "most of the 50 are 503 with x-envoy-overloaded, the rest 200 \"red\"",
        r.code(503) > 25
            && r.code(200) > 0
            && r.overloaded == r.code(503)
            && r.code(200) + r.code(503) == 50,
        summary(&r),
    );
    let delta = |s1: &Stats, s0: &Stats, n: &str| s1.num(n) - s0.num(n);
    let overflow = delta(
        &c_after,
        &c_before,
        &format!("{c}.upstream_rq_pending_overflow"),
    );
    rep.check(
        format!("the client's sidecar counted each 503: {c}.upstream_rq_pending_overflow"),
        overflow == r.code(503),
        format!("grew by {overflow}, clients saw {} x 503", r.code(503)),
    );
    let at_red = delta(
        &r_after,
        &r_before,
        "cluster.inbound_8080.upstream_rq_total",
    );
    rep.check(
        "only the admitted requests reached red (cluster.inbound_8080.upstream_rq_total)",
        at_red == r.code(200),
        format!("red forwarded {at_red}, clients saw {} x 200", r.code(200)),
    );
    let max_cx = Stats::highest(&samples, &format!("{c}.upstream_cx_active"));
    rep.check(
        format!("{c}.upstream_cx_active never above 3"),
        max_cx <= 3 && c_after.num(&format!("{c}.upstream_cx_active")) <= 3,
        format!("highest of {} samples: {max_cx}", samples.len()),
    );
    let cx_total = delta(&c_after, &c_before, &format!("{c}.upstream_cx_total"));
    rep.check(
        "one request per connection: a new upstream connection for every admitted request",
        cx_total >= r.code(200),
        format!("{c}.upstream_cx_total grew by {cx_total}"),
    );
    let uo = access_log_lines(mesh, "client", &["\" 503 UO ", &format!("{}:8080", red.ip)]);
    rep.check(
        "the client's access log shows the refusals with flag UO",
        !uo.is_empty(),
        mesh.pod("client").logs("proxy"),
    );
    if let Some(l) = uo.first() {
        rep.notes.push(format!("client access log: {l}"));
    }
    if let Some(p) = peak(&samples, &c, "http.outbound") {
        rep.stat_under_load("client", p, "http.outbound.downstream_cx_active");
        rep.stat_under_load("client", p, &format!("{c}.upstream_cx_active"));
        rep.stat_under_load(
            "client",
            p,
            &format!("{c}.circuit_breakers.default.cx_open"),
        );
    }
    rep.stat(
        "client",
        &c_after,
        &format!("{c}.upstream_rq_pending_overflow"),
    );
    rep.stat("client", &c_after, &format!("{c}.upstream_cx_total"));
    Ok(rep)
}

/// blue is opted out (`trellis.dev/inject: disabled`): admitted unchanged, no sidecar, still
/// reachable; a bad annotation value is refused with a message naming it.
pub fn opt_out_and_bad_annotation(mesh: &Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "opt-out and validation",
        "blue (trellis.dev/inject: disabled) runs without a sidecar; \
         trellis.dev/max-connections: \"ten\" is refused with a message",
    );
    let blue = mesh.pod("blue");
    rep.check(
        "blue was admitted without a patch: containers [app], no init containers, no trellis.dev/status",
        blue.admitted.patch.is_none()
            && !blue.admitted.injected()
            && blue.container_names("containers") == ["app"]
            && blue.container_names("initContainers").is_empty(),
        format!(
            "containers {:?}, init {:?}",
            blue.container_names("containers"),
            blue.container_names("initContainers")
        ),
    );
    let nat = blue.exec(0, &["iptables-save", "-t", "nat"])?;
    let nat = String::from_utf8_lossy(&nat.stdout).into_owned();
    rep.check(
        "blue's network namespace has no TRELLIS_ rules",
        !nat.contains("TRELLIS_"),
        nat.clone(),
    );
    let r = load::run(
        mesh.pod("client"),
        &format!("http://{}:8080/", blue.ip),
        1,
        1,
    )?;
    rep.count(&r);
    rep.check(
        "client -> blue answers 200 \"blue\" (only the client's sidecar on the way)",
        r.code(200) == 1 && r.bodies.contains_key("blue"),
        summary(&r),
    );
    let admin = crate::get(&mesh.node, blue.addr(ADMIN_PORT), "/ready");
    rep.check(
        "blue has no proxy admin port",
        admin.is_err(),
        match &admin {
            Ok(r) => format!("answered {}", r.status),
            Err(e) => format!("{:#}", e.root_cause()),
        },
    );

    let (ns, mut pod) = manifests::pod_from(&manifests::deployment("green")?)?;
    pod["metadata"]["annotations"]["trellis.dev/max-connections"] = json!("ten");
    let a = mesh.admit(&ns, &pod)?;
    let msg = a.message.clone().unwrap_or_default();
    rep.check(
        "green with trellis.dev/max-connections: \"ten\" is refused, naming the annotation and the value",
        !a.allowed && msg.contains("trellis.dev/max-connections") && msg.contains("ten"),
        format!("allowed {}, message {msg:?}", a.allowed),
    );
    rep.notes.push(format!("webhook: {msg}"));
    Ok(rep)
}

/// Requests no HTTP client should send, from blue (not meshed) straight to green's sidecar: each
/// gets its status and a body naming the problem, and is counted and logged as `DPE`.
pub fn hostile_input(mesh: &Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "hostile input",
        "blue sends green malformed requests: each is refused with its status and reason",
    );
    let green = mesh.pod("green").addr(8080);
    let before = stats(mesh, "green")?;
    let cases: [(&str, &[u8], &str, &str); 3] = [
        (
            "a lower-case method",
            b"get / HTTP/1.1\r\nhost: green\r\n\r\n",
            "HTTP/1.1 400 ",
            "the method has lower-case letters",
        ),
        (
            "codings besides chunked",
            b"POST / HTTP/1.1\r\nhost: green\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 501 ",
            "transfer-encoding other than a single `chunked`",
        ),
        (
            "a malformed chunk size",
            b"POST / HTTP/1.1\r\nhost: green\r\ntransfer-encoding: chunked\r\n\r\n-5\r\n",
            "HTTP/1.1 400 ",
            "malformed chunked request body: ",
        ),
    ];
    for (what, bytes, status, reason) in cases {
        let answer = crate::raw(&mesh.pod("blue").ns, green, bytes)?;
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string();
        rep.check(
            format!("{what}: {}", status.trim()),
            answer.starts_with(status) && body.contains(reason),
            format!("{:?}", answer.lines().next().unwrap_or("")),
        );
        rep.notes.push(format!("{what}: {body}"));
        rep.other += 1;
    }
    let after = stats(mesh, "green")?;
    let errors = "http.inbound.downstream_cx_protocol_error";
    rep.check(
        format!("green counted the 3 in {errors}"),
        after.num(errors) == before.num(errors) + 3,
        after.line(errors),
    );
    rep.stat("green", &after, errors);
    let logged = access_log_lines(mesh, "green", &[" DPE "]);
    rep.check(
        "green's access log shows them with flag DPE",
        logged.len() >= 3,
        format!("{} lines", logged.len()),
    );
    for l in logged.iter().take(3) {
        rep.notes.push(format!("green access log: {l}"));
    }
    Ok(rep)
}

/// `POST /quitquitquit` on red's sidecar while a request is in flight: refused from another pod
/// (403), accepted from red's own loopback; the request finishes, new work is refused, `/ready`
/// turns 503, and the proxy exits 0.
pub fn shutdown(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "shutdown",
        "POST /quitquitquit on red's sidecar with a 1.5 s request in flight: 403 from another pod; from red itself it drains and exits 0",
    );
    let red_ip = mesh.pod("red").ip;
    let run = load::start(
        mesh.pod("client"),
        &format!("http://{red_ip}:8080/?delay_ms=1500"),
        1,
        1,
    )?;
    // Quit only once the request is in red's sidecar.
    let waited = kit::block_on(
        mesh.stats_of("red")
            .within(Duration::from_secs(10))
            .metric("cluster.inbound_8080.upstream_rq_active")
            .wait_until("> 0", |v| v > 0),
    );
    let inflight = waited.unwrap_or_else(|m| m.last.unwrap_or(0));
    rep.check(
        "a request is in flight through red's sidecar",
        inflight == 1,
        format!("cluster.inbound_8080.upstream_rq_active: {inflight}"),
    );
    let admin = mesh.pod("red").addr(ADMIN_PORT);
    // Another pod may read red's stats, never stop its proxy.
    let client = &mesh.pod("client").ns;
    let stranger = crate::call(client, None, "POST", admin, "/quitquitquit", Vec::new())?;
    rep.check(
        "POST /quitquitquit from the client pod is refused with 403",
        stranger.status == 403,
        format!("{} {}", stranger.status, stranger.body.trim()),
    );
    let dump = crate::get(client, admin, "/config_dump")?;
    let stats = crate::get(client, admin, "/stats/prometheus")?;
    rep.check(
        "from the client pod, /config_dump is 403 and /stats/prometheus 200",
        dump.status == 403 && stats.status == 200,
        format!("{} and {}", dump.status, stats.status),
    );
    rep.notes
        .push(format!("red admin to a stranger: {}", stranger.body.trim()));
    // In the pod (kubectl exec, a preStop hook), loopback may.
    let local = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
    let q = crate::call(
        &mesh.pod("red").ns,
        None,
        "POST",
        local,
        "/quitquitquit",
        Vec::new(),
    )?;
    rep.check(
        "POST /quitquitquit from inside red's pod (127.0.0.1) answers 200",
        q.status == 200,
        format!("{} {}", q.status, q.body.trim()),
    );
    let ready = crate::get(&mesh.node, admin, "/ready");
    rep.check(
        "/ready answers 503 while draining (or the admin port is already closed)",
        ready.as_ref().map_or(true, |r| r.status == 503),
        match &ready {
            Ok(r) => format!("{} {}", r.status, r.body.trim()),
            Err(e) => format!("{:#}", e.root_cause()),
        },
    );
    let r = run.finish()?;
    rep.count(&r);
    rep.check(
        "the request in flight completes: 200 \"red\"",
        r.code(200) == 1 && r.bodies.contains_key("red"),
        summary(&r),
    );
    let red = mesh.pod_mut("red");
    let proxy = red.container_mut("proxy").context("red has no proxy")?;
    let status = proxy.wait(Duration::from_secs(15));
    rep.check(
        "the proxy exits with status 0",
        status.is_some_and(|s| s.success()),
        match status {
            Some(s) => format!("{s}"),
            None => format!("still running after 15 s\n{}", proxy.logs()),
        },
    );
    rep.notes.push(format!(
        "red proxy exited: {}",
        status.map_or("still running".into(), |s| s.to_string())
    ));
    Ok(rep)
}

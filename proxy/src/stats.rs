//! Envoy-named statistics: lock-free counters, gauges and the `upstream_rq_time` histogram, and
//! their two renderings (`/stats` text `name: value`, `/stats/prometheus` exposition format).
//!
//! A stats struct is declared with `stats!`, which writes each stat's Envoy name once, beside its
//! field, and lets the renderers reach every field; a `Scope` (cluster, HTTP connection manager,
//! TCP proxy) says where those names live in each rendering.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);
impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);
impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Envoy's default histogram bucket bounds, in milliseconds.
pub const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (non-cumulative) counts; the last slot is +Inf.
    buckets: [AtomicU64; 20],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record_ms(&self, ms: f64) {
        let i = BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add((ms * 1000.0) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
    fn snapshot(&self) -> ([u64; 20], f64, u64) {
        let mut b = [0; 20];
        for (o, a) in b.iter_mut().zip(&self.buckets) {
            *o = a.load(Relaxed);
        }
        (
            b,
            self.sum_us.load(Relaxed) as f64 / 1000.0,
            self.count.load(Relaxed),
        )
    }
    /// Envoy-like quantile summary from bucket upper bounds.
    fn quantiles(&self) -> String {
        let (b, _, count) = self.snapshot();
        if count == 0 {
            return "No recorded values".into();
        }
        let mut out = String::new();
        for (name, q) in [
            ("P0", 0.0),
            ("P25", 0.25),
            ("P50", 0.5),
            ("P75", 0.75),
            ("P90", 0.9),
            ("P95", 0.95),
            ("P99", 0.99),
            ("P99.5", 0.995),
            ("P99.9", 0.999),
            ("P100", 1.0),
        ] {
            let want = ((q * count as f64).ceil() as u64).max(1);
            let mut acc = 0;
            let mut v = f64::INFINITY;
            for (i, n) in b.iter().enumerate() {
                acc += n;
                if acc >= want {
                    v = BUCKETS_MS.get(i).copied().unwrap_or(f64::INFINITY);
                    break;
                }
            }
            let _ = write!(
                out,
                "{}{name}(nan,{v})",
                if out.is_empty() { "" } else { " " }
            );
        }
        out
    }
}

/// A stat as a stats struct holds it: how it reads out under its Envoy name.
trait Stat {
    fn visit(&self, name: &str, f: &mut dyn FnMut(&str, Value));
}

impl Stat for Counter {
    fn visit(&self, name: &str, f: &mut dyn FnMut(&str, Value)) {
        f(name, Value::Counter(self.get()));
    }
}

impl Stat for Gauge {
    fn visit(&self, name: &str, f: &mut dyn FnMut(&str, Value)) {
        f(name, Value::Gauge(self.get()));
    }
}

impl Stat for Histogram {
    fn visit(&self, name: &str, f: &mut dyn FnMut(&str, Value)) {
        f(name, Value::Histogram(self));
    }
}

/// A gauge that may have no value: `-1` when unset, and then not shown (Envoy's remaining-capacity
/// gauges of a limit that is not set, as without `track_remaining`).
#[derive(Debug, Default)]
pub struct OptionalGauge(Gauge);
impl OptionalGauge {
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

impl Stat for OptionalGauge {
    fn visit(&self, name: &str, f: &mut dyn FnMut(&str, Value)) {
        let v = self.get();
        if v >= 0 {
            f(name, Value::Gauge(v));
        }
    }
}

/// Declares a stats struct with each stat's Envoy name written once, beside its field: the
/// field's own name, or the literal after `=` where Envoy's has dots. The generated `visit` hands
/// every field to the renderers under that name, so no stat can be left out of `/stats`.
macro_rules! stats {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $vis:vis $field:ident : $ty:ty $(= $stat:literal)? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[$fmeta])* $vis $field: $ty, )*
        }

        impl $name {
            /// Every stat, under its Envoy name (relative to its scope).
            fn visit(&self, f: &mut dyn FnMut(&str, Value)) {
                $( Stat::visit(&self.$field, stats!(@name $field $($stat)?), f); )*
            }
        }
    };
    (@name $field:ident $stat:literal) => { $stat };
    (@name $field:ident) => { stringify!($field) };
}

stats! {
    /// Stats of one cluster (`cluster.<name>.*`).
    pub struct ClusterStats {
        pub upstream_cx_total: Counter,
        pub upstream_cx_http1_total: Counter,
        pub upstream_cx_http2_total: Counter,
        pub upstream_cx_active: Gauge,
        pub upstream_cx_overflow: Counter,
        pub upstream_cx_connect_fail: Counter,
        pub upstream_cx_connect_timeout: Counter,
        pub upstream_cx_destroy: Counter,
        pub upstream_cx_idle_timeout: Counter,
        pub upstream_cx_rx_bytes_total: Counter,
        pub upstream_cx_tx_bytes_total: Counter,
        pub upstream_rq_total: Counter,
        pub upstream_rq_active: Gauge,
        pub upstream_rq_pending_total: Counter,
        pub upstream_rq_pending_active: Gauge,
        pub upstream_rq_pending_overflow: Counter,
        pub upstream_rq_cancelled: Counter,
        pub upstream_rq_timeout: Counter,
        /// Requests sent again: a route's retry, or a silent reset of a reused connection.
        pub upstream_rq_retry: Counter,
        /// Retried requests that ended with a response the route does not retry.
        pub upstream_rq_retry_success: Counter,
        /// Retries not made because `maxRetries` retries were in flight already.
        pub upstream_rq_retry_overflow: Counter,
        /// Requests whose retries ran out (`URX`).
        pub upstream_rq_retry_limit_exceeded: Counter,
        pub upstream_rq_rx_reset: Counter,
        pub upstream_rq_tx_reset: Counter,
        /// Requests that found no endpoint to go to (`UH`).
        pub upstream_cx_none_healthy: Counter,
        pub outlier_ejections_active: Gauge = "outlier_detection.ejections_active",
        pub outlier_ejections_enforced_total: Counter = "outlier_detection.ejections_enforced_total",
        pub outlier_ejections_enforced_5xx: Counter = "outlier_detection.ejections_enforced_consecutive_5xx",
        pub outlier_ejections_enforced_gateway: Counter = "outlier_detection.ejections_enforced_consecutive_gateway_failure",
        pub outlier_ejections_overflow: Counter = "outlier_detection.ejections_overflow",
        /// Endpoints of the cluster (`membership_total`) and those not ejected (`membership_healthy`).
        pub membership_total: Gauge,
        pub membership_healthy: Gauge,
        pub cb_cx_open: Gauge = "circuit_breakers.default.cx_open",
        pub cb_rq_pending_open: Gauge = "circuit_breakers.default.rq_pending_open",
        pub cb_rq_open: Gauge = "circuit_breakers.default.rq_open",
        pub cb_remaining_cx: OptionalGauge = "circuit_breakers.default.remaining_cx",
        pub cb_remaining_pending: OptionalGauge = "circuit_breakers.default.remaining_pending",
        pub cb_remaining_rq: OptionalGauge = "circuit_breakers.default.remaining_rq",
        /// `upstream_rq_<code>` and `upstream_rq_<N>xx`, through [`ClusterStats::count_code`].
        codes: CodeCounters = "upstream_rq",
        pub upstream_rq_time: Histogram,
    }
}

/// A counter per response code: `<name>_<code>` for each code seen, and `<name>_<N>xx` per class.
#[derive(Debug)]
struct CodeCounters(Box<[AtomicU64; 600]>);
impl Default for CodeCounters {
    fn default() -> Self {
        CodeCounters(Box::new(std::array::from_fn(|_| AtomicU64::new(0))))
    }
}

impl Stat for CodeCounters {
    fn visit(&self, name: &str, f: &mut dyn FnMut(&str, Value)) {
        let mut class = [0u64; 6];
        for (code, c) in self.0.iter().enumerate() {
            let v = c.load(Relaxed);
            if v > 0 {
                class[code / 100] += v;
                f(&format!("{name}_{code}"), Value::Code(code as u16, v));
            }
        }
        for (k, v) in class.iter().enumerate().skip(1) {
            if *v > 0 {
                f(&format!("{name}_{k}xx"), Value::Class(k as u8, *v));
            }
        }
    }
}

impl ClusterStats {
    /// `(cx_open, rq_pending_open, rq_open)`.
    pub fn circuit_breakers_snapshot(&self) -> (i64, i64, i64) {
        (
            self.cb_cx_open.get(),
            self.cb_rq_pending_open.get(),
            self.cb_rq_open.get(),
        )
    }

    /// Counts a response code from upstream (`upstream_rq_<code>` and `upstream_rq_<N>xx`).
    pub fn count_code(&self, code: u16) {
        if let Some(c) = self.codes.0.get(code as usize) {
            c.fetch_add(1, Relaxed);
        }
    }
}

/// Stats of one listener, in Envoy's two scopes: its HTTP connection manager's and, for the
/// connections it proxies as opaque TCP, its TCP proxy's.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub http: HttpStats,
    pub tcp: TcpStats,
}

stats! {
    /// A listener's HTTP connection manager (`http.<listener>.*`).
    pub struct HttpStats {
        pub downstream_cx_total: Counter,
        pub downstream_cx_active: Gauge,
        pub downstream_rq_total: Counter,
        pub downstream_rq_active: Gauge,
        /// Connections refused because their original destination was the proxy itself.
        pub downstream_cx_loop_refused: Counter,
        /// Requests refused as malformed (a bad head or chunked body): 400, 431, 501 (`DPE`).
        pub downstream_cx_protocol_error: Counter,
        /// Streams ended because no byte moved for `--idle-timeout` (`SI`).
        pub downstream_rq_idle_timeout: Counter,
        /// Requests no route matched: 404 (`NR`).
        pub no_route: Counter,
        /// Requests answered with a route's redirect.
        pub rq_redirect: Counter,
        /// Requests aborted by an `HTTPFault` (`FI`).
        pub fault_aborts_injected: Counter = "fault.aborts_injected",
        /// Requests delayed by an `HTTPFault` (`DI`).
        pub fault_delays_injected: Counter = "fault.delays_injected",
        /// Requests copied to a mirror, and copies dropped (a body the proxy could not copy, or
        /// the mirror's pool was past its limits).
        pub rq_mirrored: Counter,
        pub rq_mirror_dropped: Counter,
    }
}

stats! {
    /// A listener's opaque TCP proxy (`tcp.<listener>.*`).
    pub struct TcpStats {
        pub downstream_cx_total: Counter,
        pub downstream_cx_active: Gauge,
        pub upstream_cx_overflow: Counter,
        /// Connections closed because no byte moved for `--idle-timeout`.
        pub idle_timeout: Counter,
    }
}

/// Where a stats struct's names live: its `/stats` prefix, and its Prometheus family prefix and
/// the tag that carries the cluster's or listener's name.
struct Scope {
    text: &'static str,
    family: &'static str,
    tag: &'static str,
}

const CLUSTER: Scope = Scope {
    text: "cluster",
    family: "envoy_cluster_",
    tag: "envoy_cluster_name",
};
const HTTP: Scope = Scope {
    text: "http",
    family: "envoy_http_",
    tag: "envoy_http_conn_manager_prefix",
};
const TCP: Scope = Scope {
    text: "tcp",
    family: "envoy_tcp_",
    tag: "envoy_tcp_prefix",
};

pub enum Value<'a> {
    Counter(u64),
    Gauge(i64),
    Code(u16, u64),
    Class(u8, u64),
    Histogram(&'a Histogram),
}

/// The process-wide registry. Clusters are added rarely (a write lock then); the hot path holds an
/// `Arc<ClusterStats>` and never touches the registry.
pub struct Registry {
    started: Instant,
    pub live: Gauge,
    pub concurrency: Gauge,
    /// `control_plane.connected` (0/1), present only with `--control-plane`.
    pub control_plane_connected: std::sync::OnceLock<Gauge>,
    clusters: RwLock<BTreeMap<String, Arc<ClusterStats>>>,
    listeners: RwLock<BTreeMap<String, Arc<ListenerStats>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            started: Instant::now(),
            live: Gauge::default(),
            concurrency: Gauge::default(),
            control_plane_connected: std::sync::OnceLock::new(),
            clusters: RwLock::default(),
            listeners: RwLock::default(),
        }
    }
}

impl Registry {
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        if let Some(s) = self.clusters.read().expect("stats lock").get(name) {
            return s.clone();
        }
        self.clusters
            .write()
            .expect("stats lock")
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub fn remove_cluster(&self, name: &str) {
        self.clusters.write().expect("stats lock").remove(name);
    }

    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        self.listeners
            .write()
            .expect("stats lock")
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Every cluster's and listener's stats: `(scope, cluster or listener name, stat name, value)`.
    fn visit_scoped(&self, f: &mut dyn FnMut(&Scope, &str, &str, Value)) {
        for (name, c) in self.clusters.read().expect("stats lock").iter() {
            c.visit(&mut |n, v| f(&CLUSTER, name, n, v));
        }
        for (name, l) in self.listeners.read().expect("stats lock").iter() {
            l.http.visit(&mut |n, v| f(&HTTP, name, n, v));
            l.tcp.visit(&mut |n, v| f(&TCP, name, n, v));
        }
    }

    fn server(&self, f: &mut dyn FnMut(&str, Value)) {
        f("live", Value::Gauge(self.live.get()));
        f("concurrency", Value::Gauge(self.concurrency.get()));
        f(
            "uptime",
            Value::Gauge(self.started.elapsed().as_secs() as i64),
        );
        f(
            "state",
            Value::Gauge(if self.live.get() == 1 { 0 } else { 1 }),
        );
    }

    /// Envoy's `/stats` text: `name: value`, sorted by name.
    pub fn render_text(&self) -> String {
        let mut lines: Vec<String> = Vec::new();
        let mut push = |prefix: &str, n: &str, v: Value| {
            let value = match v {
                Value::Counter(c) | Value::Code(_, c) | Value::Class(_, c) => c.to_string(),
                Value::Gauge(g) => g.to_string(),
                Value::Histogram(h) => h.quantiles(),
            };
            lines.push(format!("{prefix}{n}: {value}"));
        };
        self.visit_scoped(&mut |scope, name, n, v| push(&format!("{}.{name}.", scope.text), n, v));
        self.server(&mut |n, v| push("server.", n, v));
        if let Some(g) = self.control_plane_connected.get() {
            push("control_plane.", "connected", Value::Gauge(g.get()));
        }
        lines.sort();
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }

    /// Prometheus text exposition format, with Envoy's metric names and tags.
    pub fn render_prometheus(&self) -> String {
        // family -> (type, lines)
        let mut fams: BTreeMap<String, (&'static str, Vec<String>)> = BTreeMap::new();
        fn add(
            fams: &mut BTreeMap<String, (&'static str, Vec<String>)>,
            base: &str,
            labels: &str,
            v: Value,
        ) {
            let base = base.replace(['.', '-'], "_");
            match v {
                Value::Counter(c) => fams
                    .entry(base.clone())
                    .or_insert(("counter", vec![]))
                    .1
                    .push(format!("{base}{{{labels}}} {c}")),
                Value::Gauge(g) => fams
                    .entry(base.clone())
                    .or_insert(("gauge", vec![]))
                    .1
                    .push(format!("{base}{{{labels}}} {g}")),
                Value::Code(code, c) => {
                    let fam = base.trim_end_matches(|ch: char| ch.is_ascii_digit());
                    let fam = fam.trim_end_matches('_').to_string();
                    fams.entry(fam.clone())
                        .or_insert(("counter", vec![]))
                        .1
                        .push(format!(
                            "{fam}{{envoy_response_code=\"{code}\",{labels}}} {c}"
                        ));
                }
                Value::Class(k, c) => {
                    let fam = base.replace(&format!("_{k}xx"), "_xx");
                    fams.entry(fam.clone())
                        .or_insert(("counter", vec![]))
                        .1
                        .push(format!(
                            "{fam}{{envoy_response_code_class=\"{k}\",{labels}}} {c}"
                        ));
                }
                Value::Histogram(h) => {
                    let (b, sum, count) = h.snapshot();
                    let e = fams.entry(base.clone()).or_insert(("histogram", vec![]));
                    let mut acc = 0;
                    for (i, n) in b.iter().enumerate() {
                        acc += n;
                        let le = BUCKETS_MS
                            .get(i)
                            .map(|x| x.to_string())
                            .unwrap_or_else(|| "+Inf".into());
                        e.1.push(format!("{base}_bucket{{{labels},le=\"{le}\"}} {acc}"));
                    }
                    e.1.push(format!("{base}_sum{{{labels}}} {sum}"));
                    e.1.push(format!("{base}_count{{{labels}}} {count}"));
                }
            }
        }
        self.visit_scoped(&mut |scope, name, n, v| {
            let labels = format!("{}=\"{}\"", scope.tag, escape_label(name));
            add(&mut fams, &format!("{}{n}", scope.family), &labels, v)
        });
        let mut server = Vec::new();
        self.server(&mut |n, v| {
            if let Value::Gauge(g) = v {
                server.push((n.to_string(), g))
            }
        });
        let mut out = String::new();
        for (n, g) in server {
            let _ = writeln!(out, "# TYPE envoy_server_{n} gauge\nenvoy_server_{n} {g}");
        }
        if let Some(g) = self.control_plane_connected.get() {
            let g = g.get();
            let _ = writeln!(
                out,
                "# TYPE envoy_control_plane_connected gauge\nenvoy_control_plane_connected {g}"
            );
        }
        for (fam, (ty, lines)) in fams {
            let _ = writeln!(out, "# TYPE {fam} {ty}");
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }

    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters
            .read()
            .expect("stats lock")
            .keys()
            .cloned()
            .collect()
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_prometheus_names() {
        let r = Registry::default();
        r.live.set(1);
        let c = r.cluster("inbound_8080");
        c.upstream_cx_active.set(3);
        c.cb_remaining_cx.set(-1);
        c.cb_remaining_pending.set(4);
        c.count_code(200);
        c.count_code(503);
        c.upstream_rq_time.record_ms(3.0);
        r.listener("gateway").http.downstream_cx_active.inc();
        let t = r.render_text();
        for want in [
            "cluster.inbound_8080.upstream_cx_active: 3\n",
            "cluster.inbound_8080.upstream_rq_200: 1\n",
            "cluster.inbound_8080.upstream_rq_5xx: 1\n",
            "cluster.inbound_8080.circuit_breakers.default.cx_open: 0\n",
            "cluster.inbound_8080.circuit_breakers.default.remaining_pending: 4\n",
            "http.gateway.downstream_cx_active: 1\n",
            "tcp.gateway.downstream_cx_total: 0\n",
            "server.live: 1\n",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        assert!(!t.contains("remaining_cx"));
        let p = r.render_prometheus();
        for want in [
            "envoy_cluster_upstream_cx_active{envoy_cluster_name=\"inbound_8080\"} 3\n",
            "envoy_cluster_circuit_breakers_default_cx_open{envoy_cluster_name=\"inbound_8080\"} 0\n",
            "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"inbound_8080\"} 1\n",
            "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"inbound_8080\"} 1\n",
            "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"inbound_8080\",le=\"5\"} 1\n",
            "envoy_http_downstream_cx_active{envoy_http_conn_manager_prefix=\"gateway\"} 1\n",
            "envoy_server_live 1\n",
            "# TYPE envoy_cluster_upstream_rq_time histogram\n",
        ] {
            assert!(p.contains(want), "missing {want:?} in\n{p}");
        }
        // Each family is declared once.
        let types: Vec<&str> = p.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut dedup = types.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(types.len(), dedup.len());
    }

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantiles(), "No recorded values");
        for ms in [0.2, 3.0, 3.0, 700.0] {
            h.record_ms(ms);
        }
        let q = h.quantiles();
        assert!(q.starts_with("P0(nan,0.5) P25(nan,0.5) P50(nan,5)"), "{q}");
        assert!(q.ends_with("P100(nan,1000)"), "{q}");
    }
}

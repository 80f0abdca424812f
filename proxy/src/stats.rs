//! Envoy-named statistics: lock-free counters, gauges and the `upstream_rq_time` histogram, and
//! their two renderings (`/stats` text `name: value`, `/stats/prometheus` exposition format).

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

/// Stats of one cluster (`cluster.<name>.*`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub upstream_cx_total: Counter,
    pub upstream_cx_http1_total: Counter,
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
    pub upstream_rq_retry: Counter,
    pub upstream_rq_rx_reset: Counter,
    pub upstream_rq_tx_reset: Counter,
    pub cb_cx_open: Gauge,
    pub cb_rq_pending_open: Gauge,
    pub cb_rq_open: Gauge,
    /// `-1` when the limit is unset (then the gauge is not shown, like Envoy without `track_remaining`).
    pub cb_remaining_cx: Gauge,
    pub cb_remaining_pending: Gauge,
    pub cb_remaining_rq: Gauge,
    codes: CodeCounters,
    pub upstream_rq_time: Histogram,
}

#[derive(Debug)]
struct CodeCounters(Box<[AtomicU64; 600]>);
impl Default for CodeCounters {
    fn default() -> Self {
        CodeCounters(Box::new(std::array::from_fn(|_| AtomicU64::new(0))))
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

    fn visit(&self, f: &mut dyn FnMut(&str, Value)) {
        use Value::{Counter as C, Gauge as G};
        let counters = [
            ("upstream_cx_total", &self.upstream_cx_total),
            ("upstream_cx_http1_total", &self.upstream_cx_http1_total),
            ("upstream_cx_overflow", &self.upstream_cx_overflow),
            ("upstream_cx_connect_fail", &self.upstream_cx_connect_fail),
            (
                "upstream_cx_connect_timeout",
                &self.upstream_cx_connect_timeout,
            ),
            ("upstream_cx_destroy", &self.upstream_cx_destroy),
            ("upstream_cx_idle_timeout", &self.upstream_cx_idle_timeout),
            (
                "upstream_cx_rx_bytes_total",
                &self.upstream_cx_rx_bytes_total,
            ),
            (
                "upstream_cx_tx_bytes_total",
                &self.upstream_cx_tx_bytes_total,
            ),
            ("upstream_rq_total", &self.upstream_rq_total),
            ("upstream_rq_pending_total", &self.upstream_rq_pending_total),
            (
                "upstream_rq_pending_overflow",
                &self.upstream_rq_pending_overflow,
            ),
            ("upstream_rq_cancelled", &self.upstream_rq_cancelled),
            ("upstream_rq_timeout", &self.upstream_rq_timeout),
            ("upstream_rq_retry", &self.upstream_rq_retry),
            ("upstream_rq_rx_reset", &self.upstream_rq_rx_reset),
            ("upstream_rq_tx_reset", &self.upstream_rq_tx_reset),
        ];
        for (n, c) in counters {
            f(n, C(c.get()));
        }
        for (n, g) in [
            ("upstream_cx_active", &self.upstream_cx_active),
            ("upstream_rq_active", &self.upstream_rq_active),
            (
                "upstream_rq_pending_active",
                &self.upstream_rq_pending_active,
            ),
            ("circuit_breakers.default.cx_open", &self.cb_cx_open),
            (
                "circuit_breakers.default.rq_pending_open",
                &self.cb_rq_pending_open,
            ),
            ("circuit_breakers.default.rq_open", &self.cb_rq_open),
        ] {
            f(n, G(g.get()));
        }
        for (n, g) in [
            (
                "circuit_breakers.default.remaining_cx",
                &self.cb_remaining_cx,
            ),
            (
                "circuit_breakers.default.remaining_pending",
                &self.cb_remaining_pending,
            ),
            (
                "circuit_breakers.default.remaining_rq",
                &self.cb_remaining_rq,
            ),
        ] {
            let v = g.get();
            if v >= 0 {
                f(n, G(v));
            }
        }
        let mut class = [0u64; 6];
        for (code, c) in self.codes.0.iter().enumerate() {
            let v = c.load(Relaxed);
            if v > 0 {
                class[code / 100] += v;
                f(&format!("upstream_rq_{code}"), Value::Code(code as u16, v));
            }
        }
        for (k, v) in class.iter().enumerate().skip(1) {
            if *v > 0 {
                f(&format!("upstream_rq_{k}xx"), Value::Class(k as u8, *v));
            }
        }
        f("upstream_rq_time", Value::Histogram(&self.upstream_rq_time));
    }
}

/// Stats of one listener (`http.<name>.*` for HTTP, `tcp.<name>.*` for opaque TCP).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    /// Connections refused because their original destination was the proxy itself.
    pub downstream_cx_loop_refused: Counter,
    pub tcp_downstream_cx_total: Counter,
    pub tcp_downstream_cx_active: Gauge,
    pub tcp_upstream_cx_overflow: Counter,
}

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
    clusters: RwLock<BTreeMap<String, Arc<ClusterStats>>>,
    listeners: RwLock<BTreeMap<String, Arc<ListenerStats>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            started: Instant::now(),
            live: Gauge::default(),
            concurrency: Gauge::default(),
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
        for (name, c) in self.clusters.read().expect("stats lock").iter() {
            let prefix = format!("cluster.{name}.");
            c.visit(&mut |n, v| push(&prefix, n, v));
        }
        for (name, l) in self.listeners.read().expect("stats lock").iter() {
            for (n, v) in listener_values(l) {
                let kind = if n.starts_with("tcp.") { "" } else { "http." };
                let (n, prefix) = match n.strip_prefix("tcp.") {
                    Some(rest) => (rest, format!("tcp.{name}.")),
                    None => (n, format!("{kind}{name}.")),
                };
                push(&prefix, n, v);
            }
        }
        self.server(&mut |n, v| push("server.", n, v));
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
        for (name, c) in self.clusters.read().expect("stats lock").iter() {
            let labels = format!("envoy_cluster_name=\"{}\"", escape_label(name));
            c.visit(&mut |n, v| add(&mut fams, &format!("envoy_cluster_{n}"), &labels, v));
        }
        for (name, l) in self.listeners.read().expect("stats lock").iter() {
            for (n, v) in listener_values(l) {
                match n.strip_prefix("tcp.") {
                    Some(rest) => add(
                        &mut fams,
                        &format!("envoy_tcp_{rest}"),
                        &format!("envoy_tcp_prefix=\"{}\"", escape_label(name)),
                        v,
                    ),
                    None => add(
                        &mut fams,
                        &format!("envoy_http_{n}"),
                        &format!("envoy_http_conn_manager_prefix=\"{}\"", escape_label(name)),
                        v,
                    ),
                }
            }
        }
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

fn listener_values(l: &ListenerStats) -> Vec<(&'static str, Value<'static>)> {
    vec![
        (
            "downstream_cx_total",
            Value::Counter(l.downstream_cx_total.get()),
        ),
        (
            "downstream_cx_active",
            Value::Gauge(l.downstream_cx_active.get()),
        ),
        (
            "downstream_rq_total",
            Value::Counter(l.downstream_rq_total.get()),
        ),
        (
            "downstream_rq_active",
            Value::Gauge(l.downstream_rq_active.get()),
        ),
        (
            "downstream_cx_loop_refused",
            Value::Counter(l.downstream_cx_loop_refused.get()),
        ),
        (
            "tcp.downstream_cx_total",
            Value::Counter(l.tcp_downstream_cx_total.get()),
        ),
        (
            "tcp.downstream_cx_active",
            Value::Gauge(l.tcp_downstream_cx_active.get()),
        ),
        (
            "tcp.upstream_cx_overflow",
            Value::Counter(l.tcp_upstream_cx_overflow.get()),
        ),
    ]
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
        r.listener("gateway").downstream_cx_active.inc();
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

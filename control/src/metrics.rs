//! The control plane's own Prometheus metrics, served on `--metrics-listen` at `/metrics`: how
//! many proxies watch, how often answers are pushed and compiled, and whether policies are bad.
//! Named `control_*` so dashboards can tell them from the proxies' Envoy-style stats.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every metric, registered once; clones share the values.
pub struct Metrics {
    registry: Registry,
    /// Streams open now.
    pub streams_active: Gauge,
    /// Streams ever opened (`control_streams_total`).
    pub streams: Counter,
    /// Update lines written to streams, the first answer of each stream included
    /// (`control_pushes_total`).
    pub pushes: Counter,
    /// Time to compile one destination.
    pub compile_seconds: Histogram,
    pub model_version: Gauge<u64, AtomicU64>,
    /// TrafficPolicies refused right now.
    pub policy_errors: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("control");
        let m = Metrics {
            streams_active: Gauge::default(),
            streams: Counter::default(),
            pushes: Counter::default(),
            // 1 µs .. ~16 ms
            compile_seconds: Histogram::new(exponential_buckets(0.000_001, 2.0, 15)),
            model_version: Gauge::default(),
            policy_errors: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "streams_active",
            "Destination streams open now",
            m.streams_active.clone(),
        );
        // prometheus-client adds `_total` to counters.
        registry.register("streams", "Destination streams opened", m.streams.clone());
        registry.register(
            "pushes",
            "Update lines written to destination streams (first answers included)",
            m.pushes.clone(),
        );
        registry.register(
            "compile_seconds",
            "Time to compile one destination answer",
            m.compile_seconds.clone(),
        );
        registry.register(
            "model_version",
            "The model's version (bumped on every change)",
            m.model_version.clone(),
        );
        registry.register(
            "policy_errors",
            "TrafficPolicies refused right now (their Services use the default policy)",
            m.policy_errors.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        let m = Metrics::default();
        m.streams.inc();
        let text = m.encode();
        for name in [
            "control_streams_active ",
            "control_streams_total 1",
            "control_pushes_total ",
            "control_compile_seconds_bucket",
            "control_model_version ",
            "control_policy_errors ",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}

//! The webhook's own Prometheus metrics: reviews by result (and skip or denial reason), and review
//! latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// injected, skipped, denied or error.
    pub result: &'static str,
    /// Why a pod was skipped; for a denial, `pod_security` where the namespace's Pod Security
    /// level forbids proxyinit, empty for an invalid pod (a bad annotation); empty otherwise.
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    pub duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("trellis_webhook");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "reviews",
            "AdmissionReviews answered, by result and skip reason",
            reviews.clone(),
        );
        // 50 µs .. ~0.8 s
        let duration = Histogram::new(exponential_buckets(0.00005, 2.0, 15));
        registry.register(
            "review_duration_seconds",
            "Time to answer one AdmissionReview",
            duration.clone(),
        );
        Metrics {
            registry,
            reviews,
            duration,
        }
    }
}

impl Metrics {
    pub fn record(&self, result: &'static str, reason: &'static str, seconds: f64) {
        self.reviews
            .get_or_create(&ReviewLabels { result, reason })
            .inc();
        self.duration.observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

//! The control-plane API: what `control` tells a proxy about one destination address, and the one
//! schema both sides (de)serialize, so they cannot drift.
//!
//! A proxy subscribes to an address it has seen the app connect to (`ip:port`, usually a Service's
//! ClusterIP). The control plane answers with a stream of [`Update`]s, one JSON object per line:
//! first the full answer, then every change, each with a higher `version`. An update is always
//! whole (never a diff), so a proxy that missed one loses nothing by taking the next.
//!
//! Wire: `GET /v1/destinations/<ip>:<port>` on the control plane's `--listen` port (HTTP/1.1 or
//! HTTP/2 prior knowledge), answered `200` with `content-type: application/x-ndjson` and a body
//! that stays open while the destination is watched. `[v6]:port` for IPv6.
//!
//! Durations are whole milliseconds (`*_ms`), so the JSON reads without a decoder ring.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::Limits;

/// The path prefix of a destination watch.
pub const WATCH_PATH: &str = "/v1/destinations/";

/// The default port of `control serve --listen`, and of the webhook's `--control-plane`.
pub const CONTROL_PORT: u16 = 15012;

/// The default port of the control plane's `/metrics`.
pub const CONTROL_METRICS_PORT: u16 = 15014;

/// The Kubernetes cluster domain, unless `--cluster-domain` says otherwise.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// One line of a destination's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Grows with every change the control plane has seen; a proxy ignores an older one.
    pub version: u64,
    /// The address asked about, as the proxy asked it.
    pub address: SocketAddr,
    /// `None`: no Service port has this address; forward to it as it is.
    pub destination: Option<Destination>,
}

/// A Service port: where its traffic may go and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub service: ServiceRef,
    /// The Service port (not the target port).
    pub port: u16,
    /// The ready endpoints, sorted by address. May be empty (no pod ready): the proxy answers 503.
    pub endpoints: Vec<Endpoint>,
    pub policy: Policy,
}

impl Destination {
    /// Istio's outbound cluster name: `outbound|<port>||<name>.<namespace>.svc.<domain>`.
    pub fn cluster_name(&self, cluster_domain: &str) -> String {
        format!(
            "outbound|{}||{}.{}.svc.{}",
            self.port, self.service.name, self.service.namespace, cluster_domain
        )
    }
}

/// A Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One ready pod behind a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// Pod IP and target port.
    pub address: SocketAddr,
    /// The pod's name, when the EndpointSlice names it (for `/clusters` and logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// How traffic to a Service is pooled, balanced and checked: a `TrafficPolicy`, compiled.
/// Everything absent keeps the proxy's own default (its `outbound-max-*` flags and annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The policy object this came from (`namespace/name`), for describe and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Pool limits set by the policy; a `None` field keeps the proxy's default.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pool: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub balancer: Balancer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<Outlier>,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// How each request (HTTP) or connection (TCP) picks an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Balancer {
    /// The less loaded of two endpoints picked at random (Envoy's default, P2C).
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    /// The same key goes to the same endpoint while the endpoint set holds.
    ConsistentHash {
        on: HashOn,
    },
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// A request header (lower-case name); requests without it are balanced at random.
    Header(String),
    /// A cookie; Istio's `httpCookie` (`ttl` is carried, the proxy does not set the cookie).
    Cookie { name: String, ttl_ms: Option<u64> },
    /// The client's IP address.
    SourceIp,
}

/// Outlier detection (Envoy's consecutive-error detectors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outlier {
    /// Eject after this many 5xx in a row (`None`: this detector is off).
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many 502/503/504 or connect failures in a row.
    pub consecutive_gateway_errors: Option<u32>,
    /// How often ejections are reviewed (and the ejection multiplier decays).
    pub interval_ms: u64,
    /// An ejection lasts this long times the number of times the endpoint was ejected.
    pub base_ejection_time_ms: u64,
    /// At most this share of the endpoints is ejected at once (at least one may be).
    pub max_ejection_percent: u32,
}

impl Default for Outlier {
    /// Envoy's and Istio's defaults: 5 consecutive 5xx, 10 s, 30 s, 10%.
    fn default() -> Self {
        Outlier {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_reads_back_as_written_and_omits_what_is_unset() {
        let u = Update {
            version: 7,
            address: "10.96.0.10:80".parse().unwrap(),
            destination: Some(Destination {
                service: ServiceRef {
                    namespace: "default".into(),
                    name: "reviews".into(),
                },
                port: 80,
                endpoints: vec![Endpoint {
                    address: "10.0.0.5:9080".parse().unwrap(),
                    pod: Some("reviews-1".into()),
                }],
                policy: Policy::default(),
            }),
        };
        let text = serde_json::to_string(&u).unwrap();
        assert_eq!(
            text,
            r#"{"version":7,"address":"10.96.0.10:80","destination":{"service":{"namespace":"default","name":"reviews"},"port":80,"endpoints":[{"address":"10.0.0.5:9080","pod":"reviews-1"}],"policy":{"balancer":{"kind":"least_request"}}}}"#
        );
        assert_eq!(serde_json::from_str::<Update>(&text).unwrap(), u);
        assert_eq!(
            u.destination.unwrap().cluster_name("cluster.local"),
            "outbound|80||reviews.default.svc.cluster.local"
        );
    }

    #[test]
    fn a_hash_balancer_and_a_pool_round_trip() {
        let p = Policy {
            pool: Limits {
                max_connections: Some(3),
                ..Limits::default()
            },
            balancer: Balancer::ConsistentHash {
                on: HashOn::Header("x-user".into()),
            },
            outlier: Some(Outlier::default()),
            ..Policy::default()
        };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Policy>(&text).unwrap(), p);
    }
}

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
    /// The HTTP routes whose parent is this Service port (GAMMA `HTTPRoute`s), compiled. `None`:
    /// no route; every request goes to this Service's own endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Routes>,
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

/// The path prefix of a gateway watch: `GET /v1/gateways/<namespace>/<name>` streams
/// [`GatewayUpdate`]s, as a destination watch streams [`Update`]s.
pub const GATEWAY_WATCH_PATH: &str = "/v1/gateways/";

/// One line of a gateway's stream: the HTTPRoutes attached to a `Gateway` of class `trellis`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayUpdate {
    pub version: u64,
    /// The Gateway asked about.
    pub gateway: ServiceRef,
    /// `None`: no such Gateway, or it is not of class `trellis` (the proxy answers 404 `NR`).
    pub routes: Option<Routes>,
}

/// HTTP routes, compiled for one parent (a Service port, or a Gateway).
///
/// The proxy tries [`Routes::matches`] in order and takes the first that matches: the control
/// plane has already sorted them by Gateway API precedence. A request that matches none gets 404
/// with flag `NR`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    /// Every match of every rule, most specific first.
    pub matches: Vec<RouteMatch>,
    pub rules: Vec<Rule>,
    /// Every Service a rule sends or mirrors to, with what the proxy needs to reach it (a
    /// backend that names no existing Service port has no endpoints: 503 `UH`).
    pub backends: Vec<Destination>,
}

/// One match of a rule: all of its conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMatch {
    /// Index into [`Routes::rules`].
    pub rule: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Upper-case method (`GET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header names lower-case; every one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Query parameter names exact (case-sensitive); every one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatch>,
}

/// How a request path is matched (the path only, without the query).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Element-wise: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    /// A regular expression (Rust `regex` syntax, RE2-like) matched against the whole path.
    Regex(String),
}

/// A named value (a header or a query parameter) and how it must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMatch {
    pub name: String,
    #[serde(flatten)]
    pub value: StringMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum StringMatch {
    Exact(String),
    /// Matched against the whole value.
    Regex(String),
}

/// What happens to a request once a match picked its rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Where the rule came from (`namespace/name`, then `#<index>` of the rule), for logs and
    /// describe.
    pub source: String,
    /// Weighted choice among the backends; empty with no redirect: 500 (Gateway API's answer to
    /// a rule with nothing to send to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<WeightedBackend>,
    /// The weight of the rule's `backendRefs` that cannot be used (another kind than Service,
    /// another namespace, a Service or port that does not exist): their share of requests is
    /// answered 500, as Gateway API requires, instead of going to the other backends.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub invalid_weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// An `HTTPFault` referenced by an `ExtensionRef` filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// `timeouts.request`: from the start of the request to the end of the response head,
    /// retries included (504 `UT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `timeouts.backendRequest`: each try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedBackend {
    /// Index into [`Routes::backends`].
    pub backend: usize,
    pub weight: u32,
}

/// Gateway API's `RequestHeaderModifier` / `ResponseHeaderModifier`; names lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    /// Replace (or add) the header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    /// Add a value, keeping those already there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `RequestRedirect`: each `None` keeps the request's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301 or 302 (the default).
    pub status: u16,
}

/// `URLRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the part the rule's `PathPrefix` match matched.
    ReplacePrefixMatch(String),
}

/// `RequestMirror`: a copy of the request goes to `backend`; its answer is thrown away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// Index into [`Routes::backends`].
    pub backend: usize,
    /// Share of requests mirrored, in millionths (1,000,000: all).
    pub per_million: u32,
}

/// An `HTTPFault` (`trellis.dev/v1alpha1`): Istio's fault injection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delay {
    pub delay_ms: u64,
    /// Share of requests delayed, in millionths.
    pub per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    pub status: u16,
    /// Share of requests aborted, in millionths.
    pub per_million: u32,
}

/// Gateway API's `retry`: try again on these codes (and on a connection failure or reset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Response codes that are retried (Gateway API's default when unset: none; Trellis
    /// compiles an unset list to 500, 502, 503, 504).
    pub codes: Vec<u16>,
    /// Retries after the first try (Gateway API's `attempts`).
    pub attempts: u32,
    /// Wait before each retry (Envoy's default base interval: 25 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
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

/// For `skip_serializing_if`: a zero weight is left out.
fn is_zero(n: &u32) -> bool {
    *n == 0
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
                routes: None,
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
    fn routes_round_trip_and_read_as_written() {
        let routes = Routes {
            matches: vec![RouteMatch {
                rule: 0,
                path: Some(PathMatch::Prefix("/api".into())),
                method: Some("GET".into()),
                headers: vec![ValueMatch {
                    name: "end-user".into(),
                    value: StringMatch::Exact("jason".into()),
                }],
                query: vec![],
            }],
            rules: vec![Rule {
                source: "default/reviews#0".into(),
                backends: vec![WeightedBackend {
                    backend: 0,
                    weight: 90,
                }],
                fault: Some(Fault {
                    abort: Some(Abort {
                        status: 503,
                        per_million: 500_000,
                    }),
                    delay: None,
                }),
                retry: Some(Retry {
                    codes: vec![503],
                    attempts: 2,
                    backoff_ms: None,
                }),
                ..Rule::default()
            }],
            backends: vec![],
        };
        let text = serde_json::to_string(&routes).unwrap();
        assert_eq!(
            text,
            r#"{"matches":[{"rule":0,"path":{"kind":"prefix","value":"/api"},"method":"GET","headers":[{"name":"end-user","kind":"exact","value":"jason"}]}],"rules":[{"source":"default/reviews#0","backends":[{"backend":0,"weight":90}],"fault":{"abort":{"status":503,"per_million":500000}},"retry":{"codes":[503],"attempts":2}}],"backends":[]}"#
        );
        assert_eq!(serde_json::from_str::<Routes>(&text).unwrap(), routes);
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

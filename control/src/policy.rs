//! `TrafficPolicy` (`trellis.dev/v1alpha1`): the one Trellis resource that says how traffic to a
//! Service is pooled, balanced and checked. Its `spec` uses Istio's DestinationRule
//! `trafficPolicy` field names, so an Istio user's YAML carries over field by field.
//!
//! This module owns reading and validating one object into an [`api::Policy`]; it exists apart
//! from the model so that the directory source and (later) the Kubernetes source share one set of
//! error messages. Every error names the object (`namespace/name`), the field path and what was
//! expected. Unknown `spec` fields are refused by name; `metadata` and `status` stay lenient, as
//! the API server adds fields there that we do not care about.

use std::time::Duration;

use config::api::{self, Balancer, HashOn, Outlier};
use config::Limits;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// The API group and version of [`TrafficPolicy`].
pub const API_VERSION: &str = "trellis.dev/v1alpha1";
/// The kind of [`TrafficPolicy`].
pub const KIND: &str = "TrafficPolicy";

/// The `simple` balancers we accept, in the order error messages list them.
pub const SIMPLE_BALANCERS: [&str; 3] = ["LEAST_REQUEST", "ROUND_ROBIN", "RANDOM"];

/// A whole `TrafficPolicy` object as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Spec,
    /// Written by the control plane (conditions); never read.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    pub connection_pool: Option<ConnectionPool>,
    pub load_balancer: Option<LoadBalancer>,
    pub outlier_detection: Option<OutlierDetection>,
}

/// Gateway API's `LocalPolicyTargetReference`: a Service in the policy's namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    pub max_connections: Option<i64>,
    pub connect_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<i64>,
    pub http2_max_requests: Option<i64>,
    pub max_requests_per_connection: Option<i64>,
    pub max_retries: Option<i64>,
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    pub simple: Option<String>,
    pub consistent_hash: Option<ConsistentHash>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHash {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCookie {
    pub name: String,
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<i64>,
    pub consecutive_gateway_errors: Option<i64>,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<i64>,
}

/// A `TrafficPolicy` that could not be used. Displays as `namespace/name: field.path: problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {problem}")]
pub struct PolicyError {
    /// `namespace/name` (or `<unnamed>` when metadata.name is missing).
    pub object: String,
    /// The field path, like `spec.loadBalancer.simple` (`.` for the object itself).
    pub field: String,
    pub problem: Problem,
}

/// What was wrong with one field, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{value:?} is not one of {expected}")]
    NotOneOf { value: String, expected: String },
    #[error("{value} is out of range: expected {expected}")]
    OutOfRange { value: i64, expected: &'static str },
    #[error("{value:?} is not a duration: expected a whole number with a unit (ms, s, m, h), like 500ms, 10s or 1m30s, greater than zero")]
    Duration { value: String },
    #[error(
        "{value:?} is not a valid HTTP header name: expected letters, digits and -_.!#$%&'*+^`|~"
    )]
    HeaderName { value: String },
    #[error("set both: expected either `simple` or `consistentHash`")]
    BothBalancers,
    #[error("expected exactly one of httpHeaderName, httpCookie, useSourceIp: true")]
    HashKey,
    #[error("is empty: expected at least one {{group: \"\", kind: Service, name}}")]
    NoTargets,
    #[error("is missing: expected a name")]
    MissingName,
    #[error("{value:?} is not {expected:?}")]
    Wrong {
        value: String,
        expected: &'static str,
    },
    /// A field the schema does not have, or a value of the wrong type (serde's own words).
    #[error("{0}")]
    Shape(String),
}

/// One policy object as the model holds it: who it is, what it targets, and either its compiled
/// [`api::Policy`] or why it was refused. A refused policy keeps its (leniently read) targets, so
/// that `describe` can show the error next to the Service it was meant for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` as RFC 3339, when present (the oldest policy wins a conflict).
    pub created: Option<String>,
    /// The names of the Services (in `namespace`) this policy targets.
    pub targets: Vec<String>,
    pub result: Result<api::Policy, PolicyError>,
}

impl Parsed {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The order in which policies for one Service win: oldest first, then by name; a policy
    /// without a creationTimestamp (a file) comes after those that have one.
    pub fn precedence(&self) -> (bool, Option<&str>, &str) {
        (self.created.is_none(), self.created.as_deref(), &self.name)
    }
}

/// Reads one `TrafficPolicy` document (already parsed from YAML or JSON). Never fails: a bad
/// object comes back with its error in [`Parsed::result`].
pub fn parse(doc: &serde_json::Value) -> Parsed {
    let meta = doc.get("metadata");
    let text = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let namespace = text("namespace").unwrap_or_else(|| "default".to_string());
    let name = text("name").unwrap_or_default();
    let created = text("creationTimestamp");
    let targets = lenient_targets(doc);
    let object = if name.is_empty() {
        format!("{namespace}/<unnamed>")
    } else {
        format!("{namespace}/{name}")
    };
    let result = if name.is_empty() {
        Err(PolicyError {
            object: object.clone(),
            field: "metadata.name".into(),
            problem: Problem::MissingName,
        })
    } else {
        read(doc, &object)
    };
    Parsed {
        namespace,
        name,
        created,
        targets,
        result,
    }
}

/// The Service names in `spec.targetRefs`, read without judging the rest of the object.
fn lenient_targets(doc: &serde_json::Value) -> Vec<String> {
    let refs = doc
        .pointer("/spec/targetRefs")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut names: Vec<String> = refs
        .iter()
        .filter(|r| r.get("kind").and_then(|k| k.as_str()) == Some("Service"))
        .filter(|r| {
            r.get("group")
                .and_then(|g| g.as_str())
                .unwrap_or("")
                .is_empty()
        })
        .filter_map(|r| r.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn read(doc: &serde_json::Value, object: &str) -> Result<api::Policy, PolicyError> {
    let err = |field: &str, problem: Problem| PolicyError {
        object: object.to_string(),
        field: field.to_string(),
        problem,
    };
    let tp: TrafficPolicy = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        err(&path, Problem::Shape(e.into_inner().to_string()))
    })?;
    if tp.api_version != API_VERSION {
        return Err(err(
            "apiVersion",
            Problem::Wrong {
                value: tp.api_version,
                expected: API_VERSION,
            },
        ));
    }
    if tp.kind != KIND {
        return Err(err(
            "kind",
            Problem::Wrong {
                value: tp.kind,
                expected: KIND,
            },
        ));
    }
    compile_spec(&tp.spec).map_err(|(field, problem)| err(&field, problem))
}

type FieldError = (String, Problem);

/// The spec, validated and turned into the wire [`api::Policy`] (without its `source`).
fn compile_spec(spec: &Spec) -> Result<api::Policy, FieldError> {
    if spec.target_refs.is_empty() {
        return Err(("spec.targetRefs".into(), Problem::NoTargets));
    }
    for (i, r) in spec.target_refs.iter().enumerate() {
        if !r.group.is_empty() {
            return Err((
                format!("spec.targetRefs[{i}].group"),
                Problem::Wrong {
                    value: r.group.clone(),
                    expected: "",
                },
            ));
        }
        if r.kind != "Service" {
            return Err((
                format!("spec.targetRefs[{i}].kind"),
                Problem::Wrong {
                    value: r.kind.clone(),
                    expected: "Service",
                },
            ));
        }
        if r.name.is_empty() {
            return Err((format!("spec.targetRefs[{i}].name"), Problem::MissingName));
        }
    }
    let mut policy = api::Policy::default();
    if let Some(pool) = &spec.connection_pool {
        let mut limits = Limits::default();
        if let Some(tcp) = &pool.tcp {
            limits.max_connections = count(
                tcp.max_connections,
                "spec.connectionPool.tcp.maxConnections",
                1,
            )?;
            policy.connect_timeout_ms = millis(
                &tcp.connect_timeout,
                "spec.connectionPool.tcp.connectTimeout",
            )?;
        }
        if let Some(http) = &pool.http {
            let p = "spec.connectionPool.http";
            limits.max_pending_requests = count(
                http.http1_max_pending_requests,
                &format!("{p}.http1MaxPendingRequests"),
                1,
            )?;
            limits.max_requests =
                count(http.http2_max_requests, &format!("{p}.http2MaxRequests"), 1)?;
            limits.max_requests_per_connection = count(
                http.max_requests_per_connection,
                &format!("{p}.maxRequestsPerConnection"),
                1,
            )?;
            policy.max_retries = count(http.max_retries, &format!("{p}.maxRetries"), 0)?;
            policy.idle_timeout_ms = millis(&http.idle_timeout, &format!("{p}.idleTimeout"))?;
        }
        policy.pool = limits;
    }
    if let Some(lb) = &spec.load_balancer {
        policy.balancer = balancer(lb)?;
    }
    if let Some(od) = &spec.outlier_detection {
        policy.outlier = Some(outlier(od)?);
    }
    Ok(policy)
}

fn balancer(lb: &LoadBalancer) -> Result<Balancer, FieldError> {
    match (&lb.simple, &lb.consistent_hash) {
        (Some(_), Some(_)) => Err(("spec.loadBalancer".into(), Problem::BothBalancers)),
        (Some(simple), None) => match simple.as_str() {
            "LEAST_REQUEST" => Ok(Balancer::LeastRequest),
            "ROUND_ROBIN" => Ok(Balancer::RoundRobin),
            "RANDOM" => Ok(Balancer::Random),
            other => Err((
                "spec.loadBalancer.simple".into(),
                Problem::NotOneOf {
                    value: other.to_string(),
                    expected: SIMPLE_BALANCERS.join(", "),
                },
            )),
        },
        (None, Some(h)) => {
            let p = "spec.loadBalancer.consistentHash";
            let on = match (&h.http_header_name, &h.http_cookie, h.use_source_ip) {
                (Some(name), None, None | Some(false)) => {
                    if !is_token(name) {
                        return Err((
                            format!("{p}.httpHeaderName"),
                            Problem::HeaderName {
                                value: name.clone(),
                            },
                        ));
                    }
                    HashOn::Header(name.to_ascii_lowercase())
                }
                (None, Some(c), None | Some(false)) => {
                    if c.name.is_empty() {
                        return Err((format!("{p}.httpCookie.name"), Problem::MissingName));
                    }
                    HashOn::Cookie {
                        name: c.name.clone(),
                        ttl_ms: millis(&c.ttl, &format!("{p}.httpCookie.ttl"))?,
                    }
                }
                (None, None, Some(true)) => HashOn::SourceIp,
                _ => return Err((p.into(), Problem::HashKey)),
            };
            Ok(Balancer::ConsistentHash { on })
        }
        (None, None) => Ok(Balancer::default()),
    }
}

fn outlier(od: &OutlierDetection) -> Result<Outlier, FieldError> {
    let p = "spec.outlierDetection";
    let d = Outlier::default();
    // Istio: 0 turns a detector off; absent keeps the default (5 for 5xx, off for gateway).
    let detector = |v: Option<i64>, field: &str, default: Option<u32>| match v {
        None => Ok(default),
        Some(0) => Ok(None),
        v => count(v, field, 1),
    };
    let percent = match od.max_ejection_percent {
        None => d.max_ejection_percent,
        Some(v @ 0..=100) => v as u32,
        Some(v) => {
            return Err((
                format!("{p}.maxEjectionPercent"),
                Problem::OutOfRange {
                    value: v,
                    expected: "a percentage from 0 to 100",
                },
            ))
        }
    };
    Ok(Outlier {
        consecutive_5xx: detector(
            od.consecutive_5xx_errors,
            &format!("{p}.consecutive5xxErrors"),
            d.consecutive_5xx,
        )?,
        consecutive_gateway_errors: detector(
            od.consecutive_gateway_errors,
            &format!("{p}.consecutiveGatewayErrors"),
            d.consecutive_gateway_errors,
        )?,
        interval_ms: millis(&od.interval, &format!("{p}.interval"))?.unwrap_or(d.interval_ms),
        base_ejection_time_ms: millis(&od.base_ejection_time, &format!("{p}.baseEjectionTime"))?
            .unwrap_or(d.base_ejection_time_ms),
        max_ejection_percent: percent,
    })
}

/// A count that must be at least `min` and fit a u32.
fn count(v: Option<i64>, field: &str, min: i64) -> Result<Option<u32>, FieldError> {
    match v {
        None => Ok(None),
        Some(n) if n >= min && n <= i64::from(u32::MAX) => Ok(Some(n as u32)),
        Some(n) => Err((
            field.to_string(),
            Problem::OutOfRange {
                value: n,
                expected: if min == 0 {
                    "a whole number from 0 to 4294967295"
                } else {
                    "a whole number from 1 to 4294967295"
                },
            },
        )),
    }
}

fn millis(v: &Option<String>, field: &str) -> Result<Option<u64>, FieldError> {
    let Some(text) = v else { return Ok(None) };
    let ms = parse_duration(text).ok_or_else(|| {
        (
            field.to_string(),
            Problem::Duration {
                value: text.clone(),
            },
        )
    })?;
    Ok(Some(u64::try_from(ms.as_millis()).unwrap_or(u64::MAX)))
}

/// Istio's (Go's) duration strings, restricted to whole numbers: one or more `<n><unit>` with
/// units `ms`, `s`, `m`, `h` (`500ms`, `10s`, `1m30s`), greater than zero. Each piece is read by
/// [`config::parse::parse_duration`]; a bare number (seconds there) is refused here, as Istio
/// refuses it.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        if digits == 0 || unit_len == 0 {
            return None;
        }
        let (piece, tail) = rest.split_at(digits + unit_len);
        total = total.checked_add(config::parse::parse_duration(piece).ok()?)?;
        rest = tail;
    }
    if total.is_zero() {
        return None;
    }
    Some(total)
}

/// An HTTP header name (RFC 9110 token).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(spec: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "trellis.dev/v1alpha1",
            "kind": "TrafficPolicy",
            "metadata": {"name": "reviews", "namespace": "default", "labels": {"any": "thing"}},
            "spec": spec,
        })
    }

    fn target() -> serde_json::Value {
        json!([{"group": "", "kind": "Service", "name": "reviews"}])
    }

    fn error(spec: serde_json::Value) -> String {
        parse(&doc(spec)).result.unwrap_err().to_string()
    }

    #[test]
    fn istio_course_policy_compiles_to_the_pool_limits() {
        let p = parse(&doc(json!({
            "targetRefs": target(),
            "connectionPool": {
                "tcp": {"maxConnections": 1, "connectTimeout": "30ms"},
                "http": {"http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1,
                          "http2MaxRequests": 7, "maxRetries": 0, "idleTimeout": "1m30s"}
            },
            "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s",
                                  "baseEjectionTime": "3m", "maxEjectionPercent": 100}
        })));
        assert_eq!(p.targets, vec!["reviews".to_string()]);
        let policy = p.result.unwrap();
        assert_eq!(
            policy.pool,
            Limits {
                max_connections: Some(1),
                max_pending_requests: Some(1),
                max_requests: Some(7),
                max_requests_per_connection: Some(1),
            }
        );
        assert_eq!(policy.connect_timeout_ms, Some(30));
        assert_eq!(policy.idle_timeout_ms, Some(90_000));
        assert_eq!(policy.max_retries, Some(0));
        assert_eq!(
            policy.outlier,
            Some(Outlier {
                consecutive_5xx: Some(1),
                consecutive_gateway_errors: None,
                interval_ms: 1000,
                base_ejection_time_ms: 180_000,
                max_ejection_percent: 100,
            })
        );
    }

    #[test]
    fn an_unknown_balancer_names_object_field_and_choices() {
        assert_eq!(
            error(json!({"targetRefs": target(), "loadBalancer": {"simple": "FASTEST"}})),
            r#"default/reviews: spec.loadBalancer.simple: "FASTEST" is not one of LEAST_REQUEST, ROUND_ROBIN, RANDOM"#
        );
    }

    #[test]
    fn an_unknown_field_is_refused_by_its_path() {
        let e = error(json!({"targetRefs": target(),
            "connectionPool": {"tcp": {"maxConnection": 3}}}));
        assert!(
            e == "default/reviews: spec.connectionPool.tcp.maxConnection: unknown field `maxConnection`, expected `maxConnections` or `connectTimeout`",
            "{e}"
        );
        let e = error(json!({"targetRefs": target(), "trafficPolicy": {}}));
        assert!(
            e.starts_with("default/reviews: spec.trafficPolicy: unknown field `trafficPolicy`"),
            "{e}"
        );
    }

    #[test]
    fn metadata_and_status_stay_lenient() {
        let mut d = doc(json!({"targetRefs": target()}));
        d["metadata"]["managedFields"] = json!([{"manager": "kubectl"}]);
        d["metadata"]["someFutureField"] = json!(1);
        d["status"] = json!({"conditions": [{"type": "Accepted", "status": "True"}]});
        assert_eq!(parse(&d).result, Ok(api::Policy::default()));
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let e = error(json!({"targetRefs": target(),
            "connectionPool": {"http": {"http2MaxRequests": "lots"}}}));
        assert!(
            e.starts_with("default/reviews: spec.connectionPool.http.http2MaxRequests: invalid type: string \"lots\""),
            "{e}"
        );
    }

    #[test]
    fn numbers_out_of_range_say_the_range() {
        assert_eq!(
            error(json!({"targetRefs": target(), "connectionPool": {"tcp": {"maxConnections": 0}}})),
            "default/reviews: spec.connectionPool.tcp.maxConnections: 0 is out of range: expected a whole number from 1 to 4294967295"
        );
        assert_eq!(
            error(json!({"targetRefs": target(), "outlierDetection": {"maxEjectionPercent": 101}})),
            "default/reviews: spec.outlierDetection.maxEjectionPercent: 101 is out of range: expected a percentage from 0 to 100"
        );
    }

    #[test]
    fn durations_are_istio_style() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        for bad in ["", "10", "1.5s", "0s", "s", "5d", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let e = error(json!({"targetRefs": target(), "outlierDetection": {"interval": "10"}}));
        assert!(
            e.starts_with(r#"default/reviews: spec.outlierDetection.interval: "10" is not a duration: expected"#),
            "{e}"
        );
    }

    #[test]
    fn consistent_hash_needs_exactly_one_key() {
        let on = |h: serde_json::Value| {
            parse(&doc(
                json!({"targetRefs": target(), "loadBalancer": {"consistentHash": h}}),
            ))
            .result
        };
        assert_eq!(
            on(json!({"httpHeaderName": "X-User"})).unwrap().balancer,
            Balancer::ConsistentHash {
                on: HashOn::Header("x-user".into())
            }
        );
        assert_eq!(
            on(json!({"httpCookie": {"name": "session", "ttl": "1h"}}))
                .unwrap()
                .balancer,
            Balancer::ConsistentHash {
                on: HashOn::Cookie {
                    name: "session".into(),
                    ttl_ms: Some(3_600_000)
                }
            }
        );
        assert_eq!(
            on(json!({"useSourceIp": true})).unwrap().balancer,
            Balancer::ConsistentHash {
                on: HashOn::SourceIp
            }
        );
        assert_eq!(
            on(json!({"httpHeaderName": "x", "useSourceIp": true}))
                .unwrap_err()
                .to_string(),
            "default/reviews: spec.loadBalancer.consistentHash: expected exactly one of httpHeaderName, httpCookie, useSourceIp: true"
        );
        assert_eq!(
            on(json!({"httpHeaderName": "x user"})).unwrap_err().field,
            "spec.loadBalancer.consistentHash.httpHeaderName"
        );
        assert_eq!(
            error(json!({"targetRefs": target(),
                "loadBalancer": {"simple": "RANDOM", "consistentHash": {"useSourceIp": true}}})),
            "default/reviews: spec.loadBalancer: set both: expected either `simple` or `consistentHash`"
        );
    }

    #[test]
    fn targets_must_be_services_and_are_kept_even_when_the_policy_is_bad() {
        assert_eq!(
            error(json!({})),
            r#"default/reviews: spec.targetRefs: is empty: expected at least one {group: "", kind: Service, name}"#
        );
        assert_eq!(
            error(json!({"targetRefs": [{"group": "apps", "kind": "Deployment", "name": "x"}]})),
            r#"default/reviews: spec.targetRefs[0].group: "apps" is not """#
        );
        let p = parse(&doc(
            json!({"targetRefs": target(), "loadBalancer": {"simple": "FASTEST"}}),
        ));
        assert!(p.result.is_err());
        assert_eq!(p.targets, vec!["reviews".to_string()]);
    }

    #[test]
    fn a_missing_name_or_wrong_kind_is_named() {
        let mut d = doc(json!({"targetRefs": target()}));
        d["metadata"] = json!({"namespace": "shop"});
        assert_eq!(
            parse(&d).result.unwrap_err().to_string(),
            "shop/<unnamed>: metadata.name: is missing: expected a name"
        );
        let mut d = doc(json!({"targetRefs": target()}));
        d["apiVersion"] = json!("trellis.dev/v1");
        assert_eq!(
            parse(&d).result.unwrap_err().to_string(),
            r#"default/reviews: apiVersion: "trellis.dev/v1" is not "trellis.dev/v1alpha1""#
        );
    }
}

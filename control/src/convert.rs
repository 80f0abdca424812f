//! `control convert`: Istio `DestinationRule` and `VirtualService` YAML in, Trellis objects out.
//!
//! It exists so that a team leaving Istio does not rewrite its traffic configuration by hand:
//! Trellis's `TrafficPolicy` takes a DestinationRule's `trafficPolicy` field by field, a subset
//! becomes a Service of its own (Gateway API routes to Services, not to label subsets), and a
//! VirtualService's HTTP routes become GAMMA `HTTPRoute`s (with `HTTPFault` objects for fault
//! injection). What cannot be carried over is never dropped silently: each such field gives a
//! [`Warning`] naming the document and the field path. Input that is not valid Istio (not YAML, a
//! field of the wrong type or unknown to Istio, a VirtualService without hosts, a subset no
//! DestinationRule defines) is a [`ConvertError`] naming the document and what was expected.
//!
//! [`convert`] is pure (text in, objects and warnings out); [`run`] renders what the command
//! prints, so that the command and the golden tests share one rendering.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesFilters, HttpRouteRulesFiltersExtensionRef,
    HttpRouteRulesFiltersRequestHeaderModifier, HttpRouteRulesFiltersRequestHeaderModifierAdd,
    HttpRouteRulesFiltersRequestHeaderModifierSet, HttpRouteRulesFiltersRequestMirror,
    HttpRouteRulesFiltersRequestMirrorBackendRef, HttpRouteRulesFiltersRequestMirrorFraction,
    HttpRouteRulesFiltersRequestRedirect, HttpRouteRulesFiltersRequestRedirectPath,
    HttpRouteRulesFiltersRequestRedirectPathType, HttpRouteRulesFiltersRequestRedirectScheme,
    HttpRouteRulesFiltersResponseHeaderModifier, HttpRouteRulesFiltersResponseHeaderModifierAdd,
    HttpRouteRulesFiltersResponseHeaderModifierSet, HttpRouteRulesFiltersType,
    HttpRouteRulesFiltersUrlRewrite, HttpRouteRulesFiltersUrlRewritePath,
    HttpRouteRulesFiltersUrlRewritePathType, HttpRouteRulesMatches, HttpRouteRulesMatchesHeaders,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesMethod, HttpRouteRulesMatchesPath,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParams,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteRulesRetry, HttpRouteRulesTimeouts,
    HttpRouteSpec,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::policy;

/// The Istio API group read here.
pub const ISTIO_GROUP: &str = "networking.istio.io";
/// The Istio versions read here (their DestinationRule and VirtualService schemas are the same).
pub const ISTIO_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
/// The kind of Trellis's fault injection object, referenced from a rule by an `ExtensionRef`.
pub const HTTP_FAULT_KIND: &str = "HTTPFault";
/// The API group of [`HTTP_FAULT_KIND`] (its apiVersion is [`policy::API_VERSION`]).
pub const TRELLIS_GROUP: &str = "trellis.dev";

/// What a conversion made: the objects, in the order of the documents they came from, and a
/// warning for every field that was not carried over or was assumed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    pub objects: Vec<Value>,
    pub warnings: Vec<Warning>,
}

impl Converted {
    /// The objects as multi-document YAML (`---` between documents; empty when there are none).
    pub fn to_yaml(&self) -> String {
        self.objects
            .iter()
            .map(|o| serde_yaml::to_string(o).expect("a JSON value renders as YAML"))
            .collect::<Vec<_>>()
            .join("---\n")
    }
}

/// A field that was not carried over (or a value that was assumed), named by its document.
/// Displays as `VirtualService default/reviews: spec.http[0].corsPolicy is not carried over (...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// `Kind namespace/name`.
    pub object: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// Input that is not what Istio accepts. Displays as
/// `document 2 (VirtualService default/reviews): spec.hosts: is missing: expected ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConvertError {
    /// 1-based index of the document in the stream (`2`, or `2.items[0]` inside a List).
    pub index: String,
    /// `Kind namespace/name`, when the document got that far.
    pub object: Option<String>,
    /// The field path and what was expected there.
    pub message: String,
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(o) => write!(f, "document {} ({o}): {}", self.index, self.message),
            None => write!(f, "document {}: {}", self.index, self.message),
        }
    }
}

/// What `control convert` prints: stdout, stderr and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

/// Converts `input` and renders the result as the command prints it: the YAML on stdout and one
/// `warning: ...` line per warning on stderr (exit 0), or nothing on stdout and the error on
/// stderr (exit 2).
pub fn run(input: &str) -> Outcome {
    match convert(input) {
        Ok(c) => Outcome {
            stdout: c.to_yaml(),
            stderr: c
                .warnings
                .iter()
                .map(|w| format!("warning: {w}\n"))
                .collect(),
            code: 0,
        },
        Err(e) => Outcome {
            stdout: String::new(),
            stderr: format!("control convert: {e}\n"),
            code: 2,
        },
    }
}

/// Converts a stream of Istio `DestinationRule`s and `VirtualService`s (and the Kubernetes
/// `Service`s they refer to) into `TrafficPolicy`s, subset `Service`s, `HTTPRoute`s and
/// `HTTPFault`s.
pub fn convert(input: &str) -> Result<Converted, ConvertError> {
    let docs = documents(input)?;
    let mut parsed = Vec::with_capacity(docs.len());
    for doc in docs {
        let body = classify(&doc)?;
        parsed.push((doc, body));
    }
    let index = Index::build(&parsed);
    let mut out = Converted::default();
    for (doc, body) in &parsed {
        let mut cx = Cx {
            doc,
            warnings: &mut out.warnings,
        };
        match body {
            Body::Service(_) => {}
            Body::Skip(reason) => cx.warn(reason.clone()),
            Body::Dr(dr) => convert_dr(&mut cx, dr, &index, &mut out.objects)?,
            Body::Vs(vs) => convert_vs(&mut cx, vs, &index, &mut out.objects)?,
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Documents

/// One document of the stream, with what names it.
struct Doc {
    index: String,
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
    value: Value,
}

impl Doc {
    fn object(&self) -> String {
        let name = if self.name.is_empty() {
            "<unnamed>"
        } else {
            &self.name
        };
        format!("{} {}/{name}", self.kind, self.namespace)
    }

    fn error(&self, message: impl Into<String>) -> ConvertError {
        ConvertError {
            index: self.index.clone(),
            object: Some(self.object()),
            message: message.into(),
        }
    }
}

fn documents(input: &str) -> Result<Vec<Doc>, ConvertError> {
    let mut docs = Vec::new();
    for (i, text) in crate::source::dir::split_documents(input)
        .into_iter()
        .enumerate()
    {
        let index = (i + 1).to_string();
        let value: Value = serde_yaml::from_str(text).map_err(|e| ConvertError {
            index: index.clone(),
            object: None,
            message: format!("not valid YAML: {e}"),
        })?;
        if !value.is_null() {
            push_document(index, value, &mut docs)?;
        }
    }
    Ok(docs)
}

fn push_document(index: String, value: Value, docs: &mut Vec<Doc>) -> Result<(), ConvertError> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let api_version = text(&value, "apiVersion").unwrap_or_default();
    let kind = text(&value, "kind").unwrap_or_default();
    if !value.is_object() || api_version.is_empty() || kind.is_empty() {
        return Err(ConvertError {
            index,
            object: None,
            message: "not a Kubernetes object: expected a mapping with apiVersion and kind \
                      (networking.istio.io DestinationRule or VirtualService, or v1 Service)"
                .into(),
        });
    }
    if kind.ends_with("List") {
        if let Some(items) = value.get("items").and_then(Value::as_array) {
            for (j, item) in items.iter().enumerate() {
                push_document(format!("{index}.items[{j}]"), item.clone(), docs)?;
            }
            return Ok(());
        }
    }
    let meta = value.get("metadata").cloned().unwrap_or(Value::Null);
    docs.push(Doc {
        index,
        api_version,
        kind,
        namespace: text(&meta, "namespace").unwrap_or_else(|| "default".into()),
        name: text(&meta, "name").unwrap_or_default(),
        value,
    });
    Ok(())
}

enum Body {
    Service(Box<Service>),
    Dr(Box<DrSpec>),
    Vs(Box<VsSpec>),
    /// Not a kind convert reads: a warning, and nothing made.
    Skip(String),
}

fn classify(doc: &Doc) -> Result<Body, ConvertError> {
    let (group, version) = doc
        .api_version
        .split_once('/')
        .unwrap_or(("", doc.api_version.as_str()));
    let istio =
        group == ISTIO_GROUP && matches!(doc.kind.as_str(), "DestinationRule" | "VirtualService");
    if doc.api_version == "v1" && doc.kind == "Service" {
        let svc: Service = typed(&doc.value, "").map_err(|m| doc.error(m))?;
        return Ok(Body::Service(Box::new(svc)));
    }
    if !istio {
        return Ok(Body::Skip(format!(
            "{} {} is not converted (control convert reads networking.istio.io DestinationRule \
             and VirtualService, and v1 Service); skipped",
            doc.api_version, doc.kind
        )));
    }
    if !ISTIO_VERSIONS.contains(&version) {
        return Err(doc.error(format!(
            "apiVersion: {:?} is not one of {}",
            doc.api_version,
            ISTIO_VERSIONS
                .map(|v| format!("{ISTIO_GROUP}/{v}"))
                .join(", ")
        )));
    }
    if doc.name.is_empty() {
        return Err(doc.error("metadata.name: is missing: expected a name"));
    }
    let spec = doc.value.get("spec").cloned().unwrap_or_else(|| json!({}));
    if doc.kind == "DestinationRule" {
        let dr: DrSpec = typed(&spec, "spec").map_err(|m| doc.error(m))?;
        if dr.host.is_empty() {
            return Err(doc.error("spec.host: is missing: expected the Service's host name"));
        }
        let mut seen = BTreeSet::new();
        for (i, s) in dr.subsets.iter().enumerate() {
            if s.name.is_empty() {
                return Err(doc.error(format!(
                    "spec.subsets[{i}].name: is missing: expected a name"
                )));
            }
            if !seen.insert(&s.name) {
                return Err(doc.error(format!(
                    "spec.subsets[{i}].name: {:?} is defined twice: expected unique subset names",
                    s.name
                )));
            }
        }
        Ok(Body::Dr(Box::new(dr)))
    } else {
        let vs: VsSpec = typed(&spec, "spec").map_err(|m| doc.error(m))?;
        if vs.hosts.is_empty() {
            return Err(doc.error(
                "spec.hosts: is missing: expected at least one host (a Service name, like reviews \
                 or reviews.default.svc.cluster.local)",
            ));
        }
        Ok(Body::Vs(Box::new(vs)))
    }
}

/// A typed read naming the path of a bad field (`prefix` is the path of `v` itself).
fn typed<T: DeserializeOwned>(v: &Value, prefix: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner.as_str()) {
            (true, ".") => ".".to_string(),
            (true, _) => inner,
            (false, ".") => prefix.to_string(),
            (false, _) => format!("{prefix}.{inner}"),
        };
        format!("{path}: {}", e.into_inner())
    })
}

// ---------------------------------------------------------------------------------------------
// Istio's schema (every field of DestinationRule and VirtualService; the ones Trellis has no
// equivalent for are read as raw values, only to warn about them)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DrSpec {
    #[serde(default)]
    host: String,
    traffic_policy: Option<Value>,
    #[serde(default)]
    subsets: Vec<Subset>,
    export_to: Option<Value>,
    workload_selector: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Subset {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    traffic_policy: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IstioTrafficPolicy {
    load_balancer: Option<IstioLoadBalancer>,
    connection_pool: Option<IstioPool>,
    outlier_detection: Option<IstioOutlier>,
    tls: Option<Value>,
    port_level_settings: Option<Value>,
    tunnel: Option<Value>,
    proxy_protocol: Option<Value>,
    retry_budget: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IstioLoadBalancer {
    simple: Option<String>,
    consistent_hash: Option<IstioHash>,
    locality_lb_setting: Option<Value>,
    warmup_duration_secs: Option<Value>,
    warmup: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IstioHash {
    http_header_name: Option<String>,
    http_cookie: Option<IstioCookie>,
    use_source_ip: Option<bool>,
    http_query_parameter_name: Option<String>,
    ring_hash: Option<Value>,
    maglev: Option<Value>,
    minimum_ring_size: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IstioCookie {
    #[serde(default)]
    name: String,
    path: Option<String>,
    ttl: Option<String>,
    attributes: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IstioPool {
    tcp: Option<IstioTcp>,
    http: Option<IstioHttpPool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IstioTcp {
    max_connections: Option<i64>,
    connect_timeout: Option<String>,
    tcp_keepalive: Option<Value>,
    max_connection_duration: Option<Value>,
    idle_timeout: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IstioHttpPool {
    http1_max_pending_requests: Option<i64>,
    http2_max_requests: Option<i64>,
    max_requests_per_connection: Option<i64>,
    max_retries: Option<i64>,
    idle_timeout: Option<String>,
    h2_upgrade_policy: Option<Value>,
    use_client_protocol: Option<Value>,
    max_concurrent_streams: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IstioOutlier {
    #[serde(rename = "consecutive5xxErrors")]
    consecutive_5xx_errors: Option<i64>,
    consecutive_gateway_errors: Option<i64>,
    interval: Option<String>,
    base_ejection_time: Option<String>,
    max_ejection_percent: Option<i64>,
    min_health_percent: Option<Value>,
    split_external_local_origin_errors: Option<Value>,
    consecutive_local_origin_failures: Option<Value>,
    consecutive_errors: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VsSpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    gateways: Vec<String>,
    #[serde(default)]
    http: Vec<IstioHttp>,
    tls: Option<Value>,
    tcp: Option<Value>,
    export_to: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IstioHttp {
    name: Option<String>,
    #[serde(rename = "match", default)]
    matches: Vec<MatchRequest>,
    #[serde(default)]
    route: Vec<RouteDestination>,
    redirect: Option<Redirect>,
    direct_response: Option<Value>,
    delegate: Option<Value>,
    rewrite: Option<Rewrite>,
    timeout: Option<String>,
    retries: Option<Retries>,
    fault: Option<FaultInjection>,
    mirror: Option<Destination>,
    mirrors: Option<Vec<MirrorPolicy>>,
    mirror_percentage: Option<Percent>,
    mirror_percent: Option<i64>,
    cors_policy: Option<Value>,
    headers: Option<Headers>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MatchRequest {
    /// A label for humans; Gateway API matches have none, so it is read and dropped quietly.
    #[allow(dead_code)]
    name: Option<String>,
    uri: Option<StringMatch>,
    scheme: Option<Value>,
    method: Option<StringMatch>,
    authority: Option<Value>,
    #[serde(default)]
    headers: BTreeMap<String, StringMatch>,
    port: Option<Value>,
    source_labels: Option<Value>,
    gateways: Option<Vec<String>>,
    #[serde(default)]
    query_params: BTreeMap<String, StringMatch>,
    ignore_uri_case: Option<bool>,
    without_headers: Option<Value>,
    source_namespace: Option<Value>,
    stat_prefix: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RouteDestination {
    destination: Destination,
    weight: Option<i64>,
    headers: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Destination {
    #[serde(default)]
    host: String,
    subset: Option<String>,
    port: Option<PortSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortSelector {
    number: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Headers {
    request: Option<HeaderOperations>,
    response: Option<HeaderOperations>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HeaderOperations {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Redirect {
    uri: Option<String>,
    authority: Option<String>,
    port: Option<i64>,
    derive_port: Option<Value>,
    scheme: Option<String>,
    redirect_code: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rewrite {
    uri: Option<String>,
    authority: Option<String>,
    uri_regex_rewrite: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Retries {
    attempts: Option<i64>,
    per_try_timeout: Option<String>,
    retry_on: Option<String>,
    retry_remote_localities: Option<Value>,
    retry_ignore_previous_hosts: Option<Value>,
    backoff: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FaultInjection {
    delay: Option<Delay>,
    abort: Option<Abort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Delay {
    fixed_delay: Option<String>,
    exponential_delay: Option<Value>,
    percentage: Option<Percent>,
    percent: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Abort {
    http_status: Option<i64>,
    grpc_status: Option<Value>,
    http2_error: Option<Value>,
    percentage: Option<Percent>,
    percent: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Percent {
    #[serde(default)]
    value: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MirrorPolicy {
    destination: Destination,
    percentage: Option<Percent>,
}

// ---------------------------------------------------------------------------------------------
// What the whole stream says about each Service

type Key = (String, String);

struct Index<'a> {
    /// Service documents by (namespace, name).
    services: HashMap<Key, &'a Service>,
    /// Subset names defined by the DestinationRules for (namespace, Service).
    subsets: HashMap<Key, BTreeSet<String>>,
    /// Port numbers VirtualService destinations name for (namespace, Service): the ports a
    /// subset Service gets when the input has no Service document to copy them from.
    ports: HashMap<Key, BTreeSet<i32>>,
}

impl<'a> Index<'a> {
    fn build(parsed: &'a [(Doc, Body)]) -> Index<'a> {
        let mut index = Index {
            services: HashMap::new(),
            subsets: HashMap::new(),
            ports: HashMap::new(),
        };
        for (doc, body) in parsed {
            match body {
                Body::Service(s) => {
                    index
                        .services
                        .insert((doc.namespace.clone(), doc.name.clone()), s);
                }
                Body::Dr(dr) => {
                    if let Some(key) = resolve_host(&dr.host, &doc.namespace) {
                        if key.0 == doc.namespace {
                            index
                                .subsets
                                .entry(key)
                                .or_default()
                                .extend(dr.subsets.iter().map(|s| s.name.clone()));
                        }
                    }
                }
                Body::Vs(vs) => {
                    let mirrors = vs.http.iter().flat_map(|h| {
                        h.mirror
                            .iter()
                            .chain(h.mirrors.iter().flatten().map(|m| &m.destination))
                    });
                    let routes = vs
                        .http
                        .iter()
                        .flat_map(|h| h.route.iter().map(|r| &r.destination));
                    for d in routes.chain(mirrors) {
                        let number = d.port.as_ref().and_then(|p| p.number);
                        let number = number.and_then(|n| i32::try_from(n).ok());
                        if let (Some(key), Some(n)) =
                            (resolve_host(&d.host, &doc.namespace), number)
                        {
                            index.ports.entry(key).or_default().insert(n);
                        }
                    }
                }
                Body::Skip(_) => {}
            }
        }
        index
    }
}

/// A Kubernetes Service host: `name` (in `namespace`), or `name.ns.svc[.cluster.domain]`.
/// Anything else (wildcards, external names, `name.ns`) is not a Service we can name.
fn resolve_host(host: &str, namespace: &str) -> Option<Key> {
    if host.contains('*') || host.is_empty() {
        return None;
    }
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [name] => Some((namespace.to_string(), name.to_string())),
        [name, ns, "svc", ..] if !name.is_empty() && !ns.is_empty() => {
            Some((ns.to_string(), name.to_string()))
        }
        _ => None,
    }
}

/// Where warnings about one document go.
struct Cx<'a> {
    doc: &'a Doc,
    warnings: &'a mut Vec<Warning>,
}

impl Cx<'_> {
    fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(Warning {
            object: self.doc.object(),
            message: message.into(),
        });
    }

    /// `<path> is not carried over (<why>)`.
    fn dropped(&mut self, path: &str, why: &str) {
        self.warn(format!("{path} is not carried over ({why})"));
    }

    fn error(&self, message: impl Into<String>) -> ConvertError {
        self.doc.error(message)
    }
}

// ---------------------------------------------------------------------------------------------
// Durations and numbers

/// Istio's (protobuf's and Go's) durations: decimal numbers with units `h`, `m`, `s`, `ms`,
/// `us`, `ns` (`7s`, `1.5s`, `100ms`, `1m30s`), in nanoseconds.
fn parse_istio_duration(text: &str) -> Option<u128> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() {
            return None;
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut nanos = whole.checked_mul(scale)?;
        let mut unit_scale = scale;
        for c in frac.chars() {
            unit_scale /= 10;
            nanos = nanos.checked_add(u128::from(c.to_digit(10)?) * unit_scale)?;
        }
        total = total.checked_add(nanos)?;
        rest = tail;
    }
    Some(total)
}

/// Milliseconds as a Gateway API (GEP-2257) duration, which Trellis's TrafficPolicy also reads:
/// `7s`, `1500ms`, `0s`; split into `h`/`m`/`s`/`ms` pieces only beyond 99999 of one unit.
fn format_millis(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms.is_multiple_of(1000) && ms / 1000 <= 99_999 {
        return format!("{}s", ms / 1000);
    }
    if !ms.is_multiple_of(1000) && ms <= 99_999 {
        return format!("{ms}ms");
    }
    let (h, m, s, r) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (r, "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// An Istio duration field as a Gateway API duration; sub-millisecond parts are rounded up (with
/// a warning), as neither Gateway API nor Trellis can say them.
fn duration(cx: &mut Cx<'_>, text: &str, path: &str) -> Result<String, ConvertError> {
    let nanos = parse_istio_duration(text).ok_or_else(|| {
        cx.error(format!(
            "{path}: {text:?} is not a duration: expected a number with a unit (h, m, s, ms), \
             like 7s, 1.5s or 100ms"
        ))
    })?;
    let ms = nanos.div_ceil(1_000_000);
    if !nanos.is_multiple_of(1_000_000) {
        cx.warn(format!(
            "{path}: {text:?} is rounded up to {ms}ms (durations are whole milliseconds)"
        ));
    }
    // GEP-2257's largest duration is 99999h59m59s999ms.
    let ms = u64::try_from(ms)
        .ok()
        .filter(|ms| *ms < 100_000 * 3_600_000)
        .ok_or_else(|| {
            cx.error(format!(
                "{path}: {text:?} is too long: expected less than 100000h"
            ))
        })?;
    Ok(format_millis(ms))
}

/// A percentage as a JSON number: whole ones as integers.
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// Istio's `percentage: {value}` (or the deprecated integer `percent`), 100 when neither is set.
fn percentage(
    cx: &Cx<'_>,
    pct: &Option<Percent>,
    percent: Option<i64>,
    path: &str,
) -> Result<f64, ConvertError> {
    let (value, field) = match (pct, percent) {
        (Some(p), _) => (p.value, format!("{path}.percentage.value")),
        (None, Some(n)) => (n as f64, format!("{path}.percent")),
        (None, None) => return Ok(100.0),
    };
    if !(0.0..=100.0).contains(&value) {
        return Err(cx.error(format!(
            "{field}: {value} is out of range: expected a percentage from 0 to 100"
        )));
    }
    Ok(value)
}

/// A DNS label (a Service or object name) made from `text`: lower case, `-` for anything else.
fn dns_label(text: &str) -> String {
    let mut s: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(63);
    s.trim_matches('-').to_string()
}

// ---------------------------------------------------------------------------------------------
// DestinationRule -> TrafficPolicy + subset Services

fn convert_dr(
    cx: &mut Cx<'_>,
    dr: &DrSpec,
    index: &Index<'_>,
    out: &mut Vec<Value>,
) -> Result<(), ConvertError> {
    let ns = cx.doc.namespace.clone();
    let Some((svc_ns, svc)) = resolve_host(&dr.host, &ns) else {
        cx.dropped(
            "spec.host",
            &format!(
                "{:?} is not a Kubernetes Service name (like reviews or \
                 reviews.{ns}.svc.cluster.local); TrafficPolicy targets Services only",
                dr.host
            ),
        );
        return Ok(());
    };
    if svc_ns != ns {
        cx.dropped(
            "spec.host",
            &format!(
                "{:?} is a Service in namespace {svc_ns}, and a TrafficPolicy targets Services in \
                 its own namespace; convert it there",
                dr.host
            ),
        );
        return Ok(());
    }
    if dr.export_to.is_some() {
        cx.dropped(
            "spec.exportTo",
            "a TrafficPolicy applies to every client of its Service",
        );
    }
    if dr.workload_selector.is_some() {
        cx.dropped(
            "spec.workloadSelector",
            "a TrafficPolicy applies to every client of its Service",
        );
    }

    // The subset Services.
    let host_service = index.services.get(&(ns.clone(), svc.clone())).copied();
    let host_spec = host_service.and_then(|s| s.spec.as_ref());
    let mut subset_services = Vec::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let name = subset_service_name(&svc, &subset.name);
        if name != format!("{svc}-{}", subset.name) {
            cx.warn(format!(
                "spec.subsets[{i}].name: {:?} makes the Service name {name:?} (a Service name is a \
                 lower-case DNS label of at most 63 characters)",
                subset.name
            ));
        }
        let mut selector: BTreeMap<String, String> = match host_spec {
            Some(spec) => spec.selector.clone().unwrap_or_default(),
            None => BTreeMap::from([("app".to_string(), svc.clone())]),
        };
        selector.extend(subset.labels.clone());
        let ports: Vec<ServicePort> = match host_spec {
            Some(spec) => spec
                .ports
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|p| ServicePort {
                    node_port: None,
                    ..p
                })
                .collect(),
            None => index
                .ports
                .get(&(ns.clone(), svc.clone()))
                .into_iter()
                .flatten()
                .map(|&n| ServicePort {
                    name: Some(format!("http-{n}")),
                    port: n,
                    target_port: Some(IntOrString::Int(n)),
                    ..ServicePort::default()
                })
                .collect(),
        };
        let service = Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(selector),
                ports: (!ports.is_empty()).then_some(ports),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        out.push(serde_json::to_value(&service).expect("a Service serializes"));
        subset_services.push(name);
    }
    if !dr.subsets.is_empty() {
        match host_spec {
            Some(spec) if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) => {
                cx.warn(format!(
                "spec.subsets: Service {svc} has no selector, so the subset Services select on \
                 the subset labels only"
            ))
            }
            Some(_) => {}
            None => {
                let ports = index
                    .ports
                    .get(&(ns.clone(), svc.clone()))
                    .map(|p| {
                        p.iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let ports = if ports.is_empty() {
                    "no ports (no VirtualService destination names one: add them)".to_string()
                } else {
                    format!(
                        "port {ports} (targetPort the same) from the VirtualService destinations"
                    )
                };
                cx.warn(format!(
                    "spec.subsets: no Service {svc} in the input, so the subset Services ({}) \
                     assume the selector app: {svc} plus the subset labels, and {ports}; check \
                     them against Service {svc}",
                    subset_services.join(", ")
                ));
            }
        }
    }

    // The policies: the top-level one for the Service and the subsets without their own, one
    // per subset that has its own (merged over the top-level one field by field, as Istio does).
    let top = match &dr.traffic_policy {
        Some(tp) => traffic_policy(cx, tp, "spec.trafficPolicy")?,
        None => Map::new(),
    };
    let mut targets = vec![svc.clone()];
    let mut own = Vec::new();
    for (i, (subset, service)) in dr.subsets.iter().zip(&subset_services).enumerate() {
        match &subset.traffic_policy {
            Some(tp) => {
                let mine = traffic_policy(cx, tp, &format!("spec.subsets[{i}].trafficPolicy"))?;
                let mut merged = top.clone();
                merged.extend(mine);
                own.push((subset, service, merged));
            }
            None => targets.push(service.clone()),
        }
    }
    if !top.is_empty() {
        out.push(policy_object(cx, &cx.doc.name.clone(), &targets, top)?);
    }
    for (subset, service, spec) in own {
        if !spec.is_empty() {
            let name = dns_label(&format!("{}-{}", cx.doc.name, subset.name));
            out.push(policy_object(
                cx,
                &name,
                std::slice::from_ref(service),
                spec,
            )?);
        }
    }
    Ok(())
}

fn subset_service_name(service: &str, subset: &str) -> String {
    dns_label(&format!("{service}-{subset}"))
}

/// A TrafficPolicy object, checked by the control plane's own policy parser.
fn policy_object(
    cx: &Cx<'_>,
    name: &str,
    targets: &[String],
    mut spec: Map<String, Value>,
) -> Result<Value, ConvertError> {
    let refs: Vec<Value> = targets
        .iter()
        .map(|t| json!({"group": "", "kind": "Service", "name": t}))
        .collect();
    spec.insert("targetRefs".into(), Value::Array(refs));
    let object = json!({
        "apiVersion": policy::API_VERSION,
        "kind": policy::KIND,
        "metadata": {"name": name, "namespace": cx.doc.namespace},
        "spec": spec,
    });
    if let Err(e) = policy::parse(&object).result {
        return Err(cx.error(format!(
            "the TrafficPolicy made from it is refused: {}: {}",
            e.field, e.problem
        )));
    }
    Ok(object)
}

/// An Istio `trafficPolicy` as a TrafficPolicy `spec` (without targetRefs). Keys are the
/// top-level fields, so that merging a subset's over the DestinationRule's is a map extend.
fn traffic_policy(
    cx: &mut Cx<'_>,
    raw: &Value,
    path: &str,
) -> Result<Map<String, Value>, ConvertError> {
    let tp: IstioTrafficPolicy = typed(raw, path).map_err(|m| cx.error(m))?;
    let mut spec = Map::new();
    if let Some(lb) = &tp.load_balancer {
        let p = format!("{path}.loadBalancer");
        let mut out = Map::new();
        match lb.simple.as_deref() {
            None | Some("UNSPECIFIED") => {}
            // Istio has read LEAST_CONN as LEAST_REQUEST since 1.x.
            Some("LEAST_CONN") => {
                out.insert("simple".into(), json!("LEAST_REQUEST"));
            }
            Some("PASSTHROUGH") => cx.dropped(
                &format!("{p}.simple"),
                "PASSTHROUGH: Trellis always balances across the Service's endpoints",
            ),
            Some(other) => {
                out.insert("simple".into(), json!(other));
            }
        }
        if let Some(h) = &lb.consistent_hash {
            let hp = format!("{p}.consistentHash");
            let mut hash = Map::new();
            if let Some(name) = &h.http_header_name {
                hash.insert("httpHeaderName".into(), json!(name));
            }
            if let Some(c) = &h.http_cookie {
                let mut cookie = Map::new();
                cookie.insert("name".into(), json!(c.name));
                if let Some(ttl) = &c.ttl {
                    let d = duration(cx, ttl, &format!("{hp}.httpCookie.ttl"))?;
                    if d == "0s" {
                        cx.dropped(
                            &format!("{hp}.httpCookie.ttl"),
                            "0s, a session cookie: Trellis's cookie ttl is greater than zero",
                        );
                    } else {
                        cookie.insert("ttl".into(), json!(d));
                    }
                }
                if c.path.is_some() {
                    cx.dropped(
                        &format!("{hp}.httpCookie.path"),
                        "Trellis sets no cookie path",
                    );
                }
                if c.attributes.is_some() {
                    cx.dropped(
                        &format!("{hp}.httpCookie.attributes"),
                        "Trellis sets no cookie attributes",
                    );
                }
                hash.insert("httpCookie".into(), Value::Object(cookie));
            }
            if let Some(on) = h.use_source_ip {
                hash.insert("useSourceIp".into(), json!(on));
            }
            if h.http_query_parameter_name.is_some() {
                cx.dropped(
                    &format!("{hp}.httpQueryParameterName"),
                    "Trellis hashes on a header, a cookie or the source IP",
                );
            }
            for (field, v) in [
                ("ringHash", &h.ring_hash),
                ("maglev", &h.maglev),
                ("minimumRingSize", &h.minimum_ring_size),
            ] {
                if v.is_some() {
                    cx.dropped(
                        &format!("{hp}.{field}"),
                        "Trellis chooses its own hash table; the key is kept",
                    );
                }
            }
            out.insert("consistentHash".into(), Value::Object(hash));
        }
        for (field, v) in [
            ("localityLbSetting", &lb.locality_lb_setting),
            ("warmupDurationSecs", &lb.warmup_duration_secs),
            ("warmup", &lb.warmup),
        ] {
            if v.is_some() {
                let why = if field == "localityLbSetting" {
                    "Trellis does not balance by locality"
                } else {
                    "Trellis has no slow start"
                };
                cx.dropped(&format!("{p}.{field}"), why);
            }
        }
        if !out.is_empty() {
            spec.insert("loadBalancer".into(), Value::Object(out));
        }
    }
    if let Some(pool) = &tp.connection_pool {
        let p = format!("{path}.connectionPool");
        let mut out = Map::new();
        if let Some(tcp) = &pool.tcp {
            let mut t = Map::new();
            count(&mut t, "maxConnections", tcp.max_connections);
            if let Some(d) = &tcp.connect_timeout {
                let d = duration(cx, d, &format!("{p}.tcp.connectTimeout"))?;
                t.insert("connectTimeout".into(), json!(d));
            }
            for (field, v) in [
                ("tcpKeepalive", &tcp.tcp_keepalive),
                ("maxConnectionDuration", &tcp.max_connection_duration),
                ("idleTimeout", &tcp.idle_timeout),
            ] {
                if v.is_some() {
                    cx.dropped(
                        &format!("{p}.tcp.{field}"),
                        "Trellis has no such TCP setting; connectionPool.http.idleTimeout closes idle connections",
                    );
                }
            }
            if !t.is_empty() {
                out.insert("tcp".into(), Value::Object(t));
            }
        }
        if let Some(http) = &pool.http {
            let mut h = Map::new();
            count(
                &mut h,
                "http1MaxPendingRequests",
                http.http1_max_pending_requests,
            );
            count(&mut h, "http2MaxRequests", http.http2_max_requests);
            count(
                &mut h,
                "maxRequestsPerConnection",
                http.max_requests_per_connection,
            );
            count(&mut h, "maxRetries", http.max_retries);
            if let Some(d) = &http.idle_timeout {
                let d = duration(cx, d, &format!("{p}.http.idleTimeout"))?;
                h.insert("idleTimeout".into(), json!(d));
            }
            for (field, v) in [
                ("h2UpgradePolicy", &http.h2_upgrade_policy),
                ("useClientProtocol", &http.use_client_protocol),
                ("maxConcurrentStreams", &http.max_concurrent_streams),
            ] {
                if v.is_some() {
                    cx.dropped(
                        &format!("{p}.http.{field}"),
                        "Trellis chooses the upstream protocol itself: HTTP/2 when the client spoke it",
                    );
                }
            }
            if !h.is_empty() {
                out.insert("http".into(), Value::Object(h));
            }
        }
        if !out.is_empty() {
            spec.insert("connectionPool".into(), Value::Object(out));
        }
    }
    if let Some(od) = &tp.outlier_detection {
        let p = format!("{path}.outlierDetection");
        let mut out = Map::new();
        // Here 0 means "off", as in Istio: carried as written.
        if let Some(n) = od.consecutive_5xx_errors {
            out.insert("consecutive5xxErrors".into(), json!(n));
        }
        if let Some(n) = od.consecutive_gateway_errors {
            out.insert("consecutiveGatewayErrors".into(), json!(n));
        }
        if let Some(d) = &od.interval {
            out.insert(
                "interval".into(),
                json!(duration(cx, d, &format!("{p}.interval"))?),
            );
        }
        if let Some(d) = &od.base_ejection_time {
            let d = duration(cx, d, &format!("{p}.baseEjectionTime"))?;
            out.insert("baseEjectionTime".into(), json!(d));
        }
        count(&mut out, "maxEjectionPercent", od.max_ejection_percent);
        for (field, v, why) in [
            (
                "minHealthPercent",
                &od.min_health_percent,
                "Trellis ejects regardless of how many hosts are healthy, up to maxEjectionPercent",
            ),
            (
                "splitExternalLocalOriginErrors",
                &od.split_external_local_origin_errors,
                "Trellis counts responses only",
            ),
            (
                "consecutiveLocalOriginFailures",
                &od.consecutive_local_origin_failures,
                "Trellis counts responses only",
            ),
            (
                "consecutiveErrors",
                &od.consecutive_errors,
                "deprecated in Istio: use consecutive5xxErrors or consecutiveGatewayErrors",
            ),
        ] {
            if v.is_some() {
                cx.dropped(&format!("{p}.{field}"), why);
            }
        }
        spec.insert("outlierDetection".into(), Value::Object(out));
    }
    for (field, v, why) in [
        ("tls", &tp.tls, "Trellis does not originate TLS; TLS stays opaque TCP"),
        ("portLevelSettings", &tp.port_level_settings, "a TrafficPolicy applies to every port of its Service; move the settings to the top level if they hold for all ports"),
        ("tunnel", &tp.tunnel, "Trellis does not tunnel"),
        ("proxyProtocol", &tp.proxy_protocol, "Trellis sends no PROXY protocol header"),
        ("retryBudget", &tp.retry_budget, "Trellis limits retries with connectionPool.http.maxRetries"),
    ] {
        if v.is_some() {
            cx.dropped(&format!("{path}.{field}"), why);
        }
    }
    Ok(spec)
}

/// A connection pool count: Istio reads 0 (the protobuf default) as "not set", and so do we.
fn count(out: &mut Map<String, Value>, field: &str, v: Option<i64>) {
    if let Some(n) = v.filter(|n| *n != 0) {
        out.insert(field.into(), json!(n));
    }
}

// ---------------------------------------------------------------------------------------------
// VirtualService -> HTTPRoutes + HTTPFaults

fn convert_vs(
    cx: &mut Cx<'_>,
    vs: &VsSpec,
    index: &Index<'_>,
    out: &mut Vec<Value>,
) -> Result<(), ConvertError> {
    let ns = cx.doc.namespace.clone();
    if !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == "mesh") {
        cx.dropped(
            "spec.gateways",
            &format!(
                "{}: this VirtualService binds gateways only, not sidecars, so no mesh HTTPRoute \
                 is made; attach an HTTPRoute to a Gateway of class trellis instead",
                vs.gateways.join(", ")
            ),
        );
        return Ok(());
    }
    for (i, g) in vs.gateways.iter().enumerate() {
        if g != "mesh" {
            cx.dropped(
                &format!("spec.gateways[{i}]"),
                &format!("{g}: the HTTPRoutes made are for the mesh only"),
            );
        }
    }
    if vs.export_to.is_some() {
        cx.dropped(
            "spec.exportTo",
            "an HTTPRoute in the Service's namespace applies to every client",
        );
    }
    if vs.tls.is_some() {
        cx.dropped(
            "spec.tls",
            "Trellis routes HTTP only; TLS is proxied as opaque TCP",
        );
    }
    if vs.tcp.is_some() {
        cx.dropped(
            "spec.tcp",
            "Trellis routes HTTP only; TCP goes to the Service it was sent to",
        );
    }
    let mut hosts = Vec::new();
    for (i, host) in vs.hosts.iter().enumerate() {
        match resolve_host(host, &ns) {
            Some((host_ns, svc)) if host_ns == ns => {
                if !hosts.contains(&svc) {
                    hosts.push(svc);
                }
            }
            Some((host_ns, _)) => cx.dropped(
                &format!("spec.hosts[{i}]"),
                &format!(
                    "{host:?} is a Service in namespace {host_ns}: convert a VirtualService for \
                     it in that namespace"
                ),
            ),
            None => cx.dropped(
                &format!("spec.hosts[{i}]"),
                &format!(
                    "{host:?} is not a Kubernetes Service name (like reviews or \
                     reviews.{ns}.svc.cluster.local); a mesh HTTPRoute's parent is a Service"
                ),
            ),
        }
    }
    if hosts.is_empty() || vs.http.is_empty() {
        return Ok(());
    }
    let mut rules = Vec::new();
    let mut faults = Vec::new();
    for (i, http) in vs.http.iter().enumerate() {
        if let Some(rule) = convert_http(cx, http, i, index, &mut faults)? {
            rules.push(rule);
        }
    }
    out.extend(faults);
    if rules.is_empty() {
        return Ok(());
    }
    for svc in &hosts {
        let name = if hosts.len() == 1 {
            cx.doc.name.clone()
        } else {
            dns_label(&format!("{}-{svc}", cx.doc.name))
        };
        let mut route = HttpRoute::new(
            &name,
            HttpRouteSpec {
                parent_refs: Some(vec![HttpRouteParentRefs {
                    group: Some(String::new()),
                    kind: Some("Service".into()),
                    name: svc.clone(),
                    ..HttpRouteParentRefs::default()
                }]),
                rules: Some(rules.clone()),
                ..HttpRouteSpec::default()
            },
        );
        route.metadata.namespace = Some(ns.clone());
        out.push(serde_json::to_value(&route).expect("an HTTPRoute serializes"));
    }
    Ok(())
}

/// One Istio `http` route as an HTTPRoute rule; `None` when it cannot apply to the mesh.
fn convert_http(
    cx: &mut Cx<'_>,
    http: &IstioHttp,
    i: usize,
    index: &Index<'_>,
    faults: &mut Vec<Value>,
) -> Result<Option<HttpRouteRules>, ConvertError> {
    let p = format!("spec.http[{i}]");
    let mut rule = HttpRouteRules::default();
    if let Some(name) = &http.name {
        if is_section_name(name) {
            rule.name = Some(name.clone());
        } else {
            cx.dropped(
                &format!("{p}.name"),
                &format!("{name:?} is not a valid rule name (lower-case DNS labels)"),
            );
        }
    }

    // Matches (any one of them; all conditions of one).
    let mut matches = Vec::new();
    let mut prefix_matches = 0;
    for (j, m) in http.matches.iter().enumerate() {
        let mp = format!("{p}.match[{j}]");
        if let Some(gw) = &m.gateways {
            if !gw.iter().any(|g| g == "mesh") {
                cx.dropped(
                    &mp,
                    &format!(
                        "it applies to gateways {} only, not to the mesh",
                        gw.join(", ")
                    ),
                );
                continue;
            }
        }
        let converted = convert_match(cx, m, &mp)?;
        if matches!(
            converted.path.as_ref().and_then(|p| p.r#type.as_ref()),
            Some(HttpRouteRulesMatchesPathType::PathPrefix)
        ) {
            prefix_matches += 1;
        }
        matches.push(converted);
    }
    if !http.matches.is_empty() && matches.is_empty() {
        cx.warn(format!(
            "{p} is not carried over: none of its matches applies to the mesh"
        ));
        return Ok(None);
    }

    // Where requests go.
    let has_route = !http.route.is_empty();
    let others = [
        ("redirect", http.redirect.is_some()),
        ("directResponse", http.direct_response.is_some()),
        ("delegate", http.delegate.is_some()),
    ];
    let kinds: Vec<&str> = std::iter::once(("route", has_route))
        .chain(others)
        .filter(|(_, set)| *set)
        .map(|(n, _)| n)
        .collect();
    match kinds.as_slice() {
        [] => {
            return Err(cx.error(format!(
                "{p}: has no route: expected one of route, redirect, directResponse, delegate"
            )))
        }
        [_] => {}
        [first, second, ..] => {
            return Err(cx.error(format!(
                "{p}: sets both {first} and {second}: expected only one of route, redirect, \
                 directResponse, delegate"
            )))
        }
    }
    if http.direct_response.is_some() {
        cx.dropped(
            &format!("{p}.directResponse"),
            "Gateway API has no direct response; the rule has no backend, so its requests are answered 500",
        );
    }
    if http.delegate.is_some() {
        cx.dropped(
            &format!("{p}.delegate"),
            "HTTPRoutes do not delegate; convert the delegate VirtualService's routes into this one; \
             until then the rule has no backend, so its requests are answered 500",
        );
    }
    if http.redirect.is_some() && http.rewrite.is_some() {
        return Err(cx.error(format!(
            "{p}: sets both redirect and rewrite: expected only one"
        )));
    }
    // Weights are said when some are: among several destinations an unset one is then 0, as in
    // Istio. When none is, every destination gets an equal share (Gateway API's default weight).
    let weighted = http.route.len() > 1 && http.route.iter().any(|r| r.weight.is_some());
    let mut backends = Vec::new();
    for (k, rd) in http.route.iter().enumerate() {
        let dp = format!("{p}.route[{k}]");
        if rd.headers.is_some() {
            cx.dropped(
                &format!("{dp}.headers"),
                "Trellis modifies headers per rule, not per backend; move them to spec.http[].headers if they hold for every destination",
            );
        }
        let weight = match rd.weight {
            Some(w) if !(0..=1_000_000).contains(&w) => {
                return Err(cx.error(format!(
                    "{dp}.weight: {w} is out of range: expected 0 to 100"
                )))
            }
            // A lone destination takes everything, whatever its weight.
            w if weighted => Some(w.unwrap_or(0) as i32),
            _ => None,
        };
        if let Some(b) = backend(cx, &rd.destination, &format!("{dp}.destination"), index)? {
            backends.push(HttpRouteRulesBackendRefs {
                name: b.name,
                namespace: b.namespace,
                port: b.port,
                weight,
                ..HttpRouteRulesBackendRefs::default()
            });
        }
    }
    if has_route {
        rule.backend_refs = Some(backends);
    }

    // Filters, in the order a request meets them.
    let mut filters = Vec::new();
    if let Some(h) = &http.headers {
        if let Some(req) = &h.request {
            filters.push(HttpRouteRulesFilters {
                r#type: HttpRouteRulesFiltersType::RequestHeaderModifier,
                request_header_modifier: Some(HttpRouteRulesFiltersRequestHeaderModifier {
                    set: nonempty(
                        req.set
                            .iter()
                            .map(|(n, v)| HttpRouteRulesFiltersRequestHeaderModifierSet {
                                name: n.clone(),
                                value: v.clone(),
                            })
                            .collect(),
                    ),
                    add: nonempty(
                        req.add
                            .iter()
                            .map(|(n, v)| HttpRouteRulesFiltersRequestHeaderModifierAdd {
                                name: n.clone(),
                                value: v.clone(),
                            })
                            .collect(),
                    ),
                    remove: nonempty(req.remove.clone()),
                }),
                ..HttpRouteRulesFilters::default()
            });
        }
        if let Some(resp) = &h.response {
            filters.push(HttpRouteRulesFilters {
                r#type: HttpRouteRulesFiltersType::ResponseHeaderModifier,
                response_header_modifier: Some(HttpRouteRulesFiltersResponseHeaderModifier {
                    set: nonempty(
                        resp.set
                            .iter()
                            .map(|(n, v)| HttpRouteRulesFiltersResponseHeaderModifierSet {
                                name: n.clone(),
                                value: v.clone(),
                            })
                            .collect(),
                    ),
                    add: nonempty(
                        resp.add
                            .iter()
                            .map(|(n, v)| HttpRouteRulesFiltersResponseHeaderModifierAdd {
                                name: n.clone(),
                                value: v.clone(),
                            })
                            .collect(),
                    ),
                    remove: nonempty(resp.remove.clone()),
                }),
                ..HttpRouteRulesFilters::default()
            });
        }
    }
    if let Some(r) = &http.redirect {
        filters.push(redirect(cx, r, &format!("{p}.redirect"))?);
    }
    if let Some(rw) = &http.rewrite {
        let rp = format!("{p}.rewrite");
        let mut rewrite = HttpRouteRulesFiltersUrlRewrite::default();
        if let Some(uri) = &rw.uri {
            if matches.is_empty() {
                // Istio's match-all is a prefix match on `/`; said explicitly, as Gateway API
                // wants exactly one PathPrefix match beside ReplacePrefixMatch.
                matches.push(HttpRouteRulesMatches {
                    path: Some(HttpRouteRulesMatchesPath {
                        r#type: Some(HttpRouteRulesMatchesPathType::PathPrefix),
                        value: Some("/".into()),
                    }),
                    ..HttpRouteRulesMatches::default()
                });
                prefix_matches = 1;
            }
            if prefix_matches == matches.len() && matches.len() == 1 {
                rewrite.path = Some(HttpRouteRulesFiltersUrlRewritePath {
                    r#type: HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch,
                    replace_prefix_match: Some(uri.clone()),
                    replace_full_path: None,
                });
            } else if prefix_matches == 0 {
                rewrite.path = Some(HttpRouteRulesFiltersUrlRewritePath {
                    r#type: HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath,
                    replace_full_path: Some(uri.clone()),
                    replace_prefix_match: None,
                });
            } else {
                cx.dropped(
                    &format!("{rp}.uri"),
                    "Gateway API replaces a prefix only beside exactly one prefix match; split the \
                     route into one per uri prefix",
                );
            }
        }
        if let Some(a) = &rw.authority {
            rewrite.hostname = Some(a.clone());
        }
        if rw.uri_regex_rewrite.is_some() {
            cx.dropped(
                &format!("{rp}.uriRegexRewrite"),
                "Gateway API rewrites a full path or a prefix, not by regex",
            );
        }
        if rewrite.path.is_some() || rewrite.hostname.is_some() {
            filters.push(HttpRouteRulesFilters {
                r#type: HttpRouteRulesFiltersType::UrlRewrite,
                url_rewrite: Some(rewrite),
                ..HttpRouteRulesFilters::default()
            });
        }
    }
    // Mirrors: `mirror` with `mirrorPercentage` (or the older `mirrorPercent`), and `mirrors`.
    let mut mirrors: Vec<(String, &Destination, Option<f64>)> = Vec::new();
    if let Some(m) = &http.mirror {
        let pct = match (&http.mirror_percentage, http.mirror_percent) {
            (Some(_), _) | (None, Some(_)) => Some(percentage(
                cx,
                &http.mirror_percentage,
                http.mirror_percent,
                &format!("{p}.mirror"),
            )?),
            (None, None) => None,
        };
        mirrors.push((format!("{p}.mirror"), m, pct));
    } else if http.mirror_percentage.is_some() || http.mirror_percent.is_some() {
        cx.dropped(
            &format!("{p}.mirrorPercentage"),
            "there is no mirror to apply it to",
        );
    }
    for (k, m) in http.mirrors.iter().flatten().enumerate() {
        let mp = format!("{p}.mirrors[{k}]");
        let pct = match &m.percentage {
            Some(_) => Some(percentage(cx, &m.percentage, None, &mp)?),
            None => None,
        };
        mirrors.push((format!("{mp}.destination"), &m.destination, pct));
    }
    for (mp, dest, pct) in mirrors {
        let Some(b) = backend(cx, dest, &mp, index)? else {
            continue;
        };
        let (percent, fraction) = match pct {
            None => (None, None),
            Some(v) if v.fract() == 0.0 => (Some(v as i32), None),
            Some(v) => {
                // In millionths, as Trellis keeps it, reduced.
                let mut num = (v * 10_000.0).round() as i64;
                let mut den = 1_000_000_i64;
                let g = gcd(num, den);
                num /= g;
                den /= g;
                (
                    None,
                    Some(HttpRouteRulesFiltersRequestMirrorFraction {
                        numerator: num as i32,
                        denominator: Some(den as i32),
                    }),
                )
            }
        };
        filters.push(HttpRouteRulesFilters {
            r#type: HttpRouteRulesFiltersType::RequestMirror,
            request_mirror: Some(HttpRouteRulesFiltersRequestMirror {
                backend_ref: HttpRouteRulesFiltersRequestMirrorBackendRef {
                    name: b.name,
                    namespace: b.namespace,
                    port: b.port,
                    ..HttpRouteRulesFiltersRequestMirrorBackendRef::default()
                },
                percent,
                fraction,
            }),
            ..HttpRouteRulesFilters::default()
        });
    }
    if let Some(f) = &http.fault {
        if let Some(fault) = fault(cx, f, &format!("{p}.fault"), i)? {
            let name = fault["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            faults.push(fault);
            filters.push(HttpRouteRulesFilters {
                r#type: HttpRouteRulesFiltersType::ExtensionRef,
                extension_ref: Some(HttpRouteRulesFiltersExtensionRef {
                    group: TRELLIS_GROUP.into(),
                    kind: HTTP_FAULT_KIND.into(),
                    name,
                }),
                ..HttpRouteRulesFilters::default()
            });
        }
    }
    if !filters.is_empty() {
        rule.filters = Some(filters);
    }
    if !matches.is_empty() {
        rule.matches = Some(matches);
    }

    // Timeouts and retries.
    let mut timeouts = HttpRouteRulesTimeouts::default();
    let mut request_ms = None;
    if let Some(t) = &http.timeout {
        let d = duration(cx, t, &format!("{p}.timeout"))?;
        request_ms = parse_istio_duration(&d).map(|n| n / 1_000_000);
        timeouts.request = Some(d);
    }
    if let Some(r) = &http.retries {
        rule.retry = retry(cx, r, &format!("{p}.retries"), request_ms, &mut timeouts)?;
    }
    if timeouts.request.is_some() || timeouts.backend_request.is_some() {
        rule.timeouts = Some(timeouts);
    }
    if http.cors_policy.is_some() {
        cx.dropped(&format!("{p}.corsPolicy"), "Trellis has no CORS filter");
    }
    Ok(Some(rule))
}

fn nonempty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// Gateway API's SectionName: lower-case DNS labels, dot-separated, at most 253 characters.
fn is_section_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// How an Istio `StringMatch` matches.
enum Sm {
    Exact(String),
    Prefix(String),
    Regex(String),
    /// `{}`: the header or parameter is present.
    Present,
}

fn string_match(cx: &Cx<'_>, m: &StringMatch, path: &str) -> Result<Sm, ConvertError> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => Ok(Sm::Exact(e.clone())),
        (None, Some(p), None) => Ok(Sm::Prefix(p.clone())),
        (None, None, Some(r)) => Ok(Sm::Regex(r.clone())),
        (None, None, None) => Ok(Sm::Present),
        _ => Err(cx.error(format!(
            "{path}: sets more than one of exact, prefix, regex: expected one"
        ))),
    }
}

/// A header or query value match as (type, value): prefixes become anchored regexes.
fn value_match(
    cx: &mut Cx<'_>,
    m: &StringMatch,
    path: &str,
) -> Result<(bool, String), ConvertError> {
    Ok(match string_match(cx, m, path)? {
        Sm::Exact(v) => (false, v),
        Sm::Regex(r) => (true, r),
        Sm::Present => (true, ".*".into()),
        Sm::Prefix(p) => {
            let r = format!("^{}.*", regex::escape(&p));
            cx.warn(format!(
                "{path}.prefix: {p:?} becomes the regular expression {r:?} (Gateway API matches \
                 values exactly or by regular expression)"
            ));
            (true, r)
        }
    })
}

fn convert_match(
    cx: &mut Cx<'_>,
    m: &MatchRequest,
    mp: &str,
) -> Result<HttpRouteRulesMatches, ConvertError> {
    let mut out = HttpRouteRulesMatches::default();
    if let Some(uri) = &m.uri {
        let (t, v) = match string_match(cx, uri, &format!("{mp}.uri"))? {
            Sm::Exact(v) => (HttpRouteRulesMatchesPathType::Exact, v),
            Sm::Prefix(v) => (HttpRouteRulesMatchesPathType::PathPrefix, v),
            Sm::Regex(v) => (HttpRouteRulesMatchesPathType::RegularExpression, v),
            Sm::Present => (HttpRouteRulesMatchesPathType::PathPrefix, "/".into()),
        };
        out.path = Some(HttpRouteRulesMatchesPath {
            r#type: Some(t),
            value: Some(v),
        });
    }
    if m.ignore_uri_case == Some(true) {
        cx.dropped(
            &format!("{mp}.ignoreUriCase"),
            "Gateway API path matches are case-sensitive; use a RegularExpression match with (?i)",
        );
    }
    if let Some(method) = &m.method {
        let mpath = format!("{mp}.method");
        match string_match(cx, method, &mpath)? {
            Sm::Exact(v) => match method_of(&v) {
                Some(me) => out.method = Some(me),
                None => cx.dropped(
                    &mpath,
                    &format!("{v:?} is not a method Gateway API matches on"),
                ),
            },
            _ => cx.dropped(&mpath, "Gateway API matches one exact method"),
        }
    }
    let mut headers = Vec::new();
    for (name, sm) in &m.headers {
        let (regex, value) = value_match(cx, sm, &format!("{mp}.headers.{name}"))?;
        headers.push(HttpRouteRulesMatchesHeaders {
            name: name.clone(),
            r#type: Some(if regex {
                HttpRouteRulesMatchesHeadersType::RegularExpression
            } else {
                HttpRouteRulesMatchesHeadersType::Exact
            }),
            value,
        });
    }
    out.headers = nonempty(headers);
    let mut query = Vec::new();
    for (name, sm) in &m.query_params {
        let (regex, value) = value_match(cx, sm, &format!("{mp}.queryParams.{name}"))?;
        query.push(HttpRouteRulesMatchesQueryParams {
            name: name.clone(),
            r#type: Some(if regex {
                HttpRouteRulesMatchesQueryParamsType::RegularExpression
            } else {
                HttpRouteRulesMatchesQueryParamsType::Exact
            }),
            value,
        });
    }
    out.query_params = nonempty(query);
    for (field, set, why) in [
        ("scheme", m.scheme.is_some(), "Gateway API does not match on the scheme"),
        ("authority", m.authority.is_some(), "a mesh HTTPRoute applies to its Service whatever the authority"),
        ("port", m.port.is_some(), "the HTTPRoute applies to every port of its Service"),
        ("sourceLabels", m.source_labels.is_some(), "Gateway API does not match on the client"),
        ("sourceNamespace", m.source_namespace.is_some(), "Gateway API does not match on the client; an HTTPRoute in the client's namespace (a consumer route) comes closest"),
        ("withoutHeaders", m.without_headers.is_some(), "Gateway API has no negative match"),
        ("statPrefix", m.stat_prefix.is_some(), "Trellis's stats are per cluster"),
    ] {
        if set {
            cx.dropped(&format!("{mp}.{field}"), why);
        }
    }
    Ok(out)
}

fn method_of(m: &str) -> Option<HttpRouteRulesMatchesMethod> {
    use HttpRouteRulesMatchesMethod as M;
    Some(match m.to_ascii_uppercase().as_str() {
        "GET" => M::Get,
        "HEAD" => M::Head,
        "POST" => M::Post,
        "PUT" => M::Put,
        "DELETE" => M::Delete,
        "CONNECT" => M::Connect,
        "OPTIONS" => M::Options,
        "TRACE" => M::Trace,
        "PATCH" => M::Patch,
        _ => return None,
    })
}

/// A backend reference: the subset Service (or the host Service), its namespace when it is not
/// the route's, and its port.
struct Backend {
    name: String,
    namespace: Option<String>,
    port: Option<i32>,
}

fn backend(
    cx: &mut Cx<'_>,
    d: &Destination,
    path: &str,
    index: &Index<'_>,
) -> Result<Option<Backend>, ConvertError> {
    let ns = cx.doc.namespace.clone();
    let Some((dns, svc)) = resolve_host(&d.host, &ns) else {
        if d.host.is_empty() {
            return Err(cx.error(format!("{path}.host: is missing: expected a Service name")));
        }
        cx.dropped(
            path,
            &format!(
                "{:?} is not a Kubernetes Service name (like reviews or \
                 reviews.{ns}.svc.cluster.local); backendRefs name Services",
                d.host
            ),
        );
        return Ok(None);
    };
    let name = match &d.subset {
        None => svc.clone(),
        Some(subset) => {
            let defined = index.subsets.get(&(dns.clone(), svc.clone()));
            if !defined.is_some_and(|s| s.contains(subset)) {
                let known = defined
                    .filter(|s| !s.is_empty())
                    .map(|s| s.iter().cloned().collect::<Vec<_>>().join(", "));
                return Err(cx.error(match known {
                    Some(known) => format!(
                        "{path}.subset: {subset:?} is not a subset of host {}: expected one of \
                         {known} (the subsets its DestinationRule defines)",
                        d.host
                    ),
                    None => format!(
                        "{path}.subset: {subset:?}: no DestinationRule in the input defines \
                         subsets for host {} (namespace {dns}): expected the DestinationRule in \
                         the same input",
                        d.host
                    ),
                }));
            }
            subset_service_name(&svc, subset)
        }
    };
    let port = match d.port.as_ref().and_then(|p| p.number) {
        Some(n) => Some(
            i32::try_from(n)
                .ok()
                .filter(|n| (1..=65535).contains(n))
                .ok_or_else(|| {
                    cx.error(format!(
                        "{path}.port.number: {n} is out of range: expected 1 to 65535"
                    ))
                })?,
        ),
        None => {
            let ports = index
                .services
                .get(&(dns.clone(), svc.clone()))
                .and_then(|s| s.spec.as_ref())
                .and_then(|s| s.ports.as_ref());
            match ports.map(Vec::as_slice) {
                Some([only]) => Some(only.port),
                _ => {
                    cx.warn(format!(
                        "{path}.port: not set, and no single-port Service {svc} in the input says \
                         it; a backendRef to a Service needs a port: add it"
                    ));
                    None
                }
            }
        }
    };
    let namespace = if dns == ns {
        None
    } else {
        cx.warn(format!(
            "{path}: Service {svc} is in namespace {dns}: the backendRef needs a ReferenceGrant \
             there (from HTTPRoutes in namespace {ns})"
        ));
        Some(dns)
    };
    Ok(Some(Backend {
        name,
        namespace,
        port,
    }))
}

fn redirect(
    cx: &mut Cx<'_>,
    r: &Redirect,
    rp: &str,
) -> Result<HttpRouteRulesFilters, ConvertError> {
    let mut out = HttpRouteRulesFiltersRequestRedirect::default();
    if let Some(uri) = &r.uri {
        out.path = Some(HttpRouteRulesFiltersRequestRedirectPath {
            r#type: HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath,
            replace_full_path: Some(uri.clone()),
            replace_prefix_match: None,
        });
    }
    out.hostname = r.authority.clone();
    if let Some(port) = r.port {
        out.port = Some(
            i32::try_from(port)
                .ok()
                .filter(|n| (1..=65535).contains(n))
                .ok_or_else(|| {
                    cx.error(format!(
                        "{rp}.port: {port} is out of range: expected 1 to 65535"
                    ))
                })?,
        );
    }
    if r.derive_port.is_some() {
        cx.dropped(
            &format!("{rp}.derivePort"),
            "Gateway API keeps the request's port unless port is set",
        );
    }
    match r.scheme.as_deref() {
        None => {}
        Some("http") => out.scheme = Some(HttpRouteRulesFiltersRequestRedirectScheme::Http),
        Some("https") => out.scheme = Some(HttpRouteRulesFiltersRequestRedirectScheme::Https),
        Some(other) => {
            return Err(cx.error(format!("{rp}.scheme: {other:?} is not one of http, https")))
        }
    }
    // Istio redirects with 301 unless told otherwise; Gateway API's default is 302.
    let code = r.redirect_code.unwrap_or(301);
    out.status_code = Some(match code {
        301 | 302 => code,
        303 | 307 => {
            cx.warn(format!(
                "{rp}.redirectCode: {code} becomes 302 (Trellis redirects with 301 or 302)"
            ));
            302
        }
        308 => {
            cx.warn(format!(
                "{rp}.redirectCode: 308 becomes 301 (Trellis redirects with 301 or 302)"
            ));
            301
        }
        other => {
            return Err(cx.error(format!(
                "{rp}.redirectCode: {other} is not a redirect: expected 301, 302, 303, 307 or 308"
            )))
        }
    });
    Ok(HttpRouteRulesFilters {
        r#type: HttpRouteRulesFiltersType::RequestRedirect,
        request_redirect: Some(out),
        ..HttpRouteRulesFilters::default()
    })
}

/// Istio's `retries` as Gateway API's `retry` (and `timeouts.backendRequest`). `None` when
/// Istio would not retry (attempts unset or 0).
fn retry(
    cx: &mut Cx<'_>,
    r: &Retries,
    rp: &str,
    request_ms: Option<u128>,
    timeouts: &mut HttpRouteRulesTimeouts,
) -> Result<Option<HttpRouteRulesRetry>, ConvertError> {
    for (field, set) in [
        ("retryRemoteLocalities", r.retry_remote_localities.is_some()),
        (
            "retryIgnorePreviousHosts",
            r.retry_ignore_previous_hosts.is_some(),
        ),
    ] {
        if set {
            cx.dropped(
                &format!("{rp}.{field}"),
                "Trellis picks each retry's endpoint by its balancer",
            );
        }
    }
    let attempts = match r.attempts {
        None | Some(0) => {
            if r.per_try_timeout.is_some() || r.retry_on.is_some() {
                cx.warn(format!(
                    "{rp}: attempts is 0 or unset, so Istio does not retry; no retry is made"
                ));
            }
            return Ok(None);
        }
        Some(n) if n < 0 => {
            return Err(cx.error(format!(
                "{rp}.attempts: {n} is out of range: expected 0 or more"
            )))
        }
        Some(n) => n,
    };
    let mut codes = BTreeSet::new();
    let mut unsupported = Vec::new();
    match &r.retry_on {
        // Istio's default retryOn retries 503s (and connection failures, which Trellis retries).
        None => {
            codes.insert(503);
        }
        Some(on) => {
            for token in on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                match token {
                    "5xx" => codes.extend([500, 502, 503, 504]),
                    "gateway-error" => codes.extend([502, 503, 504]),
                    "retriable-4xx" => {
                        codes.insert(409);
                    }
                    "connect-failure" | "reset" | "refused-stream" | "retriable-status-codes" => {}
                    t => match t.parse::<i64>() {
                        Ok(code) if (400..=599).contains(&code) => {
                            codes.insert(code);
                        }
                        _ => unsupported.push(t.to_string()),
                    },
                }
            }
        }
    }
    if !unsupported.is_empty() {
        cx.dropped(
            &format!("{rp}.retryOn: {}", unsupported.join(",")),
            "Trellis retries on response codes 400-599, connection failures and resets",
        );
    }
    if let Some(t) = &r.per_try_timeout {
        let d = duration(cx, t, &format!("{rp}.perTryTimeout"))?;
        let per_try = parse_istio_duration(&d).map(|n| n / 1_000_000);
        match (per_try, request_ms) {
            (Some(p), Some(q)) if q > 0 && p > q => {
                cx.warn(format!(
                    "{rp}.perTryTimeout: {t} is longer than the route's timeout, so it becomes the \
                     timeout (Gateway API wants timeouts.backendRequest <= timeouts.request)"
                ));
                timeouts.backend_request = timeouts.request.clone();
            }
            _ => timeouts.backend_request = Some(d),
        }
    }
    let backoff = match &r.backoff {
        Some(b) => Some(duration(cx, b, &format!("{rp}.backoff"))?),
        None => None,
    };
    Ok(Some(HttpRouteRulesRetry {
        attempts: Some(attempts),
        codes: Some(codes.into_iter().collect()),
        backoff,
    }))
}

/// Istio's `fault` as an `HTTPFault` object (`None` when nothing of it can be carried).
fn fault(
    cx: &mut Cx<'_>,
    f: &FaultInjection,
    fp: &str,
    i: usize,
) -> Result<Option<Value>, ConvertError> {
    let mut spec = Map::new();
    if let Some(a) = &f.abort {
        let ap = format!("{fp}.abort");
        if a.grpc_status.is_some() {
            cx.dropped(
                &format!("{ap}.grpcStatus"),
                "Trellis aborts with an HTTP status only",
            );
        }
        if a.http2_error.is_some() {
            cx.dropped(
                &format!("{ap}.http2Error"),
                "Trellis aborts with an HTTP status only",
            );
        }
        match a.http_status {
            Some(s) if (200..=599).contains(&s) => {
                let pct = percentage(cx, &a.percentage, a.percent, &ap)?;
                spec.insert(
                    "abort".into(),
                    json!({"httpStatus": s, "percentage": number(pct)}),
                );
            }
            Some(s) => {
                return Err(cx.error(format!(
                    "{ap}.httpStatus: {s} is out of range: expected 200 to 599"
                )))
            }
            None if a.grpc_status.is_some() || a.http2_error.is_some() => {}
            None => {
                return Err(cx.error(format!(
                    "{ap}: has no httpStatus: expected the status to answer with"
                )))
            }
        }
    }
    if let Some(d) = &f.delay {
        let dp = format!("{fp}.delay");
        if d.exponential_delay.is_some() {
            cx.dropped(
                &format!("{dp}.exponentialDelay"),
                "Trellis delays by a fixed time only",
            );
        }
        match &d.fixed_delay {
            Some(t) => {
                let fixed = duration(cx, t, &format!("{dp}.fixedDelay"))?;
                let pct = percentage(cx, &d.percentage, d.percent, &dp)?;
                spec.insert(
                    "delay".into(),
                    json!({"fixedDelay": fixed, "percentage": number(pct)}),
                );
            }
            None if d.exponential_delay.is_some() => {}
            None => {
                return Err(cx.error(format!(
                    "{dp}: has no fixedDelay: expected a duration, like 7s"
                )))
            }
        }
    }
    if spec.is_empty() {
        return Ok(None);
    }
    let name = dns_label(&format!("{}-fault-{i}", cx.doc.name));
    Ok(Some(json!({
        "apiVersion": policy::API_VERSION,
        "kind": HTTP_FAULT_KIND,
        "metadata": {"name": name, "namespace": cx.doc.namespace},
        "spec": spec,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_gateway_api_durations() {
        let ms = |t: &str| parse_istio_duration(t).map(|n| format_millis((n / 1_000_000) as u64));
        assert_eq!(ms("7s").as_deref(), Some("7s"));
        assert_eq!(ms("1.5s").as_deref(), Some("1500ms"));
        assert_eq!(ms("100ms").as_deref(), Some("100ms"));
        assert_eq!(ms("1m30s").as_deref(), Some("90s"));
        assert_eq!(ms("0.25s").as_deref(), Some("250ms"));
        assert_eq!(ms("1h").as_deref(), Some("3600s"));
        assert_eq!(ms("0s").as_deref(), Some("0s"));
        assert_eq!(ms("200000.5s").as_deref(), Some("55h33m20s500ms"));
        for bad in ["", "10", "s", "1d", "-1s", "1.2.3s", "."] {
            assert_eq!(parse_istio_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn hosts_resolve_to_services_in_the_namespace_named() {
        let r = |h: &str| resolve_host(h, "default");
        let key = |ns: &str, n: &str| Some((ns.to_string(), n.to_string()));
        assert_eq!(r("reviews"), key("default", "reviews"));
        assert_eq!(
            r("reviews.default.svc.cluster.local"),
            key("default", "reviews")
        );
        assert_eq!(r("reviews.shop.svc"), key("shop", "reviews"));
        assert_eq!(r("httpbin.org"), None);
        assert_eq!(r("*.example.com"), None);
        assert_eq!(r("reviews.default"), None);
    }

    fn error(input: &str) -> String {
        convert(input).unwrap_err().to_string()
    }

    #[test]
    fn bad_input_names_the_document_and_what_was_expected() {
        assert!(
            error("a: [1, 2\n").starts_with("document 1: not valid YAML: "),
            "{}",
            error("a: [1, 2\n")
        );
        assert!(error("just words\n").starts_with("document 1: not a Kubernetes object"));
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n";
        assert_eq!(
            error(&format!("---\n{vs}  http: []\n")),
            "document 1 (VirtualService default/reviews): spec.hosts: is missing: expected at \
             least one host (a Service name, like reviews or reviews.default.svc.cluster.local)"
        );
        let e = error(&format!(
            "{vs}  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n      weight: lots\n"
        ));
        assert!(
            e.starts_with("document 1 (VirtualService default/reviews): spec.http[0].route[0].weight: invalid type: string \"lots\""),
            "{e}"
        );
        let e = error(&format!(
            "{vs}  hosts: [reviews]\n  http:\n  - retrys: {{attempts: 3}}\n"
        ));
        assert!(
            e.starts_with("document 1 (VirtualService default/reviews): spec.http[0].retrys: unknown field `retrys`"),
            "{e}"
        );
        assert_eq!(
            error(&format!(
                "kind: Namespace\napiVersion: v1\nmetadata: {{name: x}}\n---\n{vs}  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v9}}\n"
            )),
            "document 2 (VirtualService default/reviews): spec.http[0].route[0].destination.subset: \
             \"v9\": no DestinationRule in the input defines subsets for host reviews (namespace \
             default): expected the DestinationRule in the same input"
        );
        assert_eq!(
            error("apiVersion: networking.istio.io/v2\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r}\n"),
            "document 1 (DestinationRule default/r): apiVersion: \"networking.istio.io/v2\" is not \
             one of networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3"
        );
    }

    #[test]
    fn the_outcome_is_yaml_and_warnings_or_an_error_alone() {
        let ok = run("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n");
        assert_eq!(ok.code, 0);
        assert_eq!(ok.stdout, "");
        assert_eq!(
            ok.stderr,
            "warning: ConfigMap default/c: v1 ConfigMap is not converted (control convert reads \
             networking.istio.io DestinationRule and VirtualService, and v1 Service); skipped\n"
        );
        let bad = run("a: [\n");
        assert_eq!((bad.code, bad.stdout.as_str()), (2, ""));
        assert!(bad
            .stderr
            .starts_with("control convert: document 1: not valid YAML"));
    }
}

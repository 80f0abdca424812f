//! Gateway API objects read and validated one by one: `HTTPRoute` and `GRPCRoute`
//! (`gateway.networking.k8s.io/v1`), `Gateway` (only its class and listeners matter here) and
//! Trellis's `HTTPFault` (`trellis.dev/v1alpha1`).
//!
//! This module exists so that everything about a route that does not depend on the rest of the
//! cluster (shapes, regexes, durations, percentages, which references are allowed) is decided
//! once, when the object enters the model, by the same code for the directory and the Kubernetes
//! sources. What does depend on the cluster (does a backend Service exist, does an `HTTPFault`
//! exist, which routes a parent has and in which order) is [`crate::compile`]'s job.
//!
//! A GRPCRoute becomes the same [`ParsedRule`]s an HTTPRoute does, as Envoy and Istio compile it:
//! a gRPC call is an HTTP/2 POST to `/<service>/<method>`, so its method match is a path match
//! (see [`grpc_path`]); its headers, backendRefs and filters (RequestHeaderModifier,
//! ResponseHeaderModifier, RequestMirror, ExtensionRef) are read by the HTTPRoute code itself.
//!
//! Every problem names the object (`namespace/name`, `GRPCRoute namespace/name` for a GRPCRoute),
//! the field path (`spec.rules[0].matches[1].path.value`) and what was expected, as
//! [`crate::policy`]'s do. A route with an error is refused as a whole (its parents answer as if it
//! did not exist); a field Trellis does not support is a warning, and the rest of the route still
//! applies.

use std::time::Duration;

use config::api::{self, PathMatch, StringMatch, ValueMatch};
use gateway_api::experimental::grpcroutes::{
    GrpcRouteRules, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethodType, GrpcRouteSpec,
};
use gateway_api::experimental::httproutes::{
    HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersType,
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteSpec,
};
use serde::Deserialize;

use config::api::ServiceRef;

/// The API version of `HTTPRoute`, `GRPCRoute` and `Gateway`.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const ROUTE_KIND: &str = "HTTPRoute";
pub const GRPC_ROUTE_KIND: &str = "GRPCRoute";
pub const GATEWAY_KIND: &str = "Gateway";
/// The API version of `HTTPFault`.
pub const FAULT_API_VERSION: &str = "trellis.dev/v1alpha1";
pub const FAULT_GROUP: &str = "trellis.dev";
pub const FAULT_KIND: &str = "HTTPFault";
/// The `gatewayClassName` of the Gateways Trellis serves.
pub const GATEWAY_CLASS: &str = "trellis";

/// At most this many matches (every match of every rule, a rule without matches counting one)
/// in one route, and in all the routes of one parent: past that a route is refused, so that
/// neither the control plane nor a proxy holds an unbounded table.
pub const MAX_MATCHES: usize = 1000;

/// Response codes retried when a `retry` leaves `codes` unset.
pub const DEFAULT_RETRY_CODES: [u16; 4] = [500, 502, 503, 504];

/// The kind of a route: both compile to the same tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    /// `HTTPRoute` or `GRPCRoute`.
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => ROUTE_KIND,
            RouteKind::Grpc => GRPC_ROUTE_KIND,
        }
    }
}

/// A problem with one field of one object. Displays as `namespace/name: field.path: problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {problem}")]
pub struct RouteError {
    /// `Kind namespace/name`'s `namespace/name`.
    pub object: String,
    pub field: String,
    pub problem: RouteProblem,
}

/// What was wrong, what was expected, and what Trellis does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteProblem {
    /// A field that is not in the schema, or a value of the wrong type (serde's own words).
    #[error("{0}")]
    Shape(String),
    #[error("is missing: expected a name")]
    MissingName,
    #[error("{value:?} is not a valid regular expression: {error}")]
    Regex { value: String, error: String },
    #[error("{value:?} is not a path: expected it to start with /")]
    Path { value: String },
    #[error(
        "{value:?} is not a valid HTTP header name: expected letters, digits and -_.!#$%&'*+^`|~"
    )]
    HeaderName { value: String },
    #[error("{value:?} is not a duration: expected Gateway API's form, like 500ms, 10s or 1h2m")]
    Duration { value: String },
    #[error("{value} is out of range: expected {expected}")]
    OutOfRange {
        value: String,
        expected: &'static str,
    },
    #[error("is missing: expected `{field}` with type {kind}")]
    FilterMissing {
        field: &'static str,
        kind: &'static str,
    },
    #[error("is missing: expected the Service port (Gateway API requires it for a Service)")]
    NoPort,
    #[error("expected at least one of abort, delay")]
    EmptyFault,
    #[error("{value:?} is not {expected:?}")]
    Wrong {
        value: String,
        expected: &'static str,
    },
    #[error("has {count} matches: expected at most {MAX_MATCHES} (the route is refused)")]
    TooManyMatches { count: usize },
    #[error("{value:?} is not a gRPC {what} name: expected {expected}")]
    GrpcName {
        value: String,
        what: &'static str,
        expected: &'static str,
    },
    #[error(
        "has neither service nor method: expected at least one of them (or no method match, \
         which matches every call)"
    )]
    NoServiceOrMethod,
    // Warnings: the rest of the route still applies.
    #[error("is not supported by Trellis; ignored")]
    Unsupported,
    #[error("{what} is not supported by Trellis; ignored")]
    UnsupportedValue { what: String },
    #[error(
        "RefNotPermitted: {kind} {namespace}/{name} is in another namespace, and ReferenceGrants \
         are not supported yet; this reference is ignored (a backend's share of requests is \
         answered 500)"
    )]
    RefNotPermitted {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error(
        "InvalidKind: {group:?}/{kind} is not a Service (expected group \"\" and kind \
         Service); its share of requests is answered 500"
    )]
    InvalidKind { group: String, kind: String },
    #[error("only one HTTPFault applies per rule; this one is ignored")]
    SecondFault,
    #[error(
        "names Service {namespace}/{name} in another namespace (a consumer route), which is not \
         supported; this parentRef is ignored"
    )]
    ConsumerRoute { namespace: String, name: String },
    // Found while compiling (they depend on other objects).
    #[error(
        "BackendNotFound: Service {service} does not exist; its share of requests is answered 500"
    )]
    BackendNotFound { service: ServiceRef },
    #[error("BackendNotFound: Service {service} has no port {port}; its share of requests is answered 500")]
    BackendPortNotFound { service: ServiceRef, port: u16 },
    #[error(
        "HTTPFault {namespace}/{name} does not exist; the rule answers 500 to every request until \
         it does"
    )]
    FaultNotFound { namespace: String, name: String },
    #[error(
        "HTTPFault {namespace}/{name} is refused ({error}); the rule answers 500 to every request \
         until it is fixed"
    )]
    FaultInvalid {
        namespace: String,
        name: String,
        error: String,
    },
    #[error(
        "the routes of {parent} would have more than {MAX_MATCHES} matches; this route (and any \
         newer one) is left out for it"
    )]
    ParentFull { parent: String },
    #[error("{reason}: {why}; the route is not attached to it")]
    NotAttached { reason: &'static str, why: String },
    /// An HTTPRoute and a GRPCRoute on one parent: one kind is applied there (see
    /// [`crate::compile::compile_routes`]).
    #[error("Conflicted: {why}; this route is not applied there")]
    Conflicted { why: String },
}

impl RouteProblem {
    /// True for problems that leave the rest of the route in use.
    pub fn is_warning(&self) -> bool {
        !matches!(
            self,
            RouteProblem::Shape(_)
                | RouteProblem::MissingName
                | RouteProblem::Regex { .. }
                | RouteProblem::Path { .. }
                | RouteProblem::HeaderName { .. }
                | RouteProblem::Duration { .. }
                | RouteProblem::OutOfRange { .. }
                | RouteProblem::FilterMissing { .. }
                | RouteProblem::NoPort
                | RouteProblem::EmptyFault
                | RouteProblem::Wrong { .. }
                | RouteProblem::TooManyMatches { .. }
                | RouteProblem::GrpcName { .. }
                | RouteProblem::NoServiceOrMethod
        )
    }
}

type FieldError = (String, RouteProblem);

/// What a route is attached to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Parent {
    /// A Service (GAMMA); the port (or port name, `sectionName`) limits it to one Service port.
    Service(ServiceRef),
    Gateway(ServiceRef),
}

impl std::fmt::Display for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Parent::Service(s) => write!(f, "Service {s}"),
            Parent::Gateway(g) => write!(f, "Gateway {g}"),
        }
    }
}

/// One usable `parentRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub parent: Parent,
    /// `port`: only this Service port.
    pub port: Option<u16>,
    /// `sectionName`: only the Service port of this name (or the Gateway listener of this name).
    pub section: Option<String>,
}

impl ParentRef {
    /// Does this reference apply to the Service port `port` named `port_name`?
    pub fn applies_to_port(&self, port: u16, port_name: Option<&str>) -> bool {
        self.port.is_none_or(|p| p == port)
            && self.section.as_deref().is_none_or(|s| Some(s) == port_name)
    }
}

/// A Service port a rule sends or mirrors to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendRef {
    pub service: ServiceRef,
    pub port: u16,
}

/// One rule, validated: everything but what depends on other objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRule {
    /// Its matches (`rule` left 0; set when the parent's table is built).
    pub matches: Vec<api::RouteMatch>,
    /// A GRPCRoute's only, one per match: the characters of the service and of the method it
    /// names exactly, which Gateway API's GRPCRoute precedence ranks by (a RegularExpression
    /// counts none). Empty for an HTTPRoute.
    pub grpc_precedence: Vec<(usize, usize)>,
    /// `(backend, weight, field path)`; weight 0 is kept out (it gets no traffic).
    pub backends: Vec<(BackendRef, u32, String)>,
    /// `(backend, per_million, field path)`.
    pub mirrors: Vec<(BackendRef, u32, String)>,
    /// The `HTTPFault` (same namespace) named by an `ExtensionRef`, with its field path.
    pub fault: Option<(String, String)>,
    /// Headers, redirect, rewrite, timeouts and retry; `source`, `backends`, `mirrors` and
    /// `fault` are filled in when compiled.
    pub rule: api::Rule,
}

/// One `HTTPRoute` or `GRPCRoute` as the model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRoute {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339) when present: the older route wins ties.
    pub created: Option<String>,
    /// The parents it attaches to, read even when the route is refused (so the refusal shows
    /// next to them).
    pub parents: Vec<ParentRef>,
    pub result: Result<Vec<ParsedRule>, RouteError>,
    /// Unsupported fields and ignored references; the rest of the route applies.
    pub warnings: Vec<RouteError>,
}

impl ParsedRoute {
    /// `namespace/name` for an HTTPRoute, `GRPCRoute namespace/name` for a GRPCRoute (so the two
    /// kinds' problems and rule sources never read alike).
    pub fn id(&self) -> String {
        route_id(self.kind, &self.namespace, &self.name)
    }

    /// `HTTPRoute namespace/name` or `GRPCRoute namespace/name`.
    pub fn named(&self) -> String {
        format!(
            "{} {}",
            self.kind.name(),
            object_id(&self.namespace, &self.name)
        )
    }

    /// Gateway API's tie-break among routes: oldest first, then `namespace/name`; a route without
    /// a creationTimestamp (a file) after those with one; an HTTPRoute before a GRPCRoute of the
    /// same name.
    pub fn precedence(&self) -> (bool, Option<&str>, &str, &str, RouteKind) {
        (
            self.created.is_none(),
            self.created.as_deref(),
            &self.namespace,
            &self.name,
            self.kind,
        )
    }

    /// Every Service a valid route sends or mirrors to.
    pub fn backend_services(&self) -> Vec<ServiceRef> {
        let mut out: Vec<ServiceRef> = self
            .result
            .iter()
            .flatten()
            .flat_map(|r| r.backends.iter().chain(&r.mirrors))
            .map(|(b, ..)| b.service.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every `HTTPFault` a valid route references (as namespace/name).
    pub fn fault_refs(&self) -> Vec<ServiceRef> {
        let mut out: Vec<ServiceRef> = self
            .result
            .iter()
            .flatten()
            .filter_map(|r| r.fault.as_ref())
            .map(|(name, _)| ServiceRef {
                namespace: self.namespace.clone(),
                name: name.clone(),
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// `metadata.namespace` (default `default`), `metadata.name`, `metadata.creationTimestamp`.
fn meta(doc: &serde_json::Value) -> (String, String, Option<String>) {
    let text = |key: &str| {
        doc.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    (
        text("namespace").unwrap_or_else(|| "default".into()),
        text("name").unwrap_or_default(),
        text("creationTimestamp"),
    )
}

fn object_id(namespace: &str, name: &str) -> String {
    if name.is_empty() {
        format!("{namespace}/<unnamed>")
    } else {
        format!("{namespace}/{name}")
    }
}

fn route_id(kind: RouteKind, namespace: &str, name: &str) -> String {
    match kind {
        RouteKind::Http => object_id(namespace, name),
        RouteKind::Grpc => format!("{GRPC_ROUTE_KIND} {}", object_id(namespace, name)),
    }
}

/// Reads one `HTTPRoute` document. Never fails: a refused route carries its error.
pub fn parse_route(doc: &serde_json::Value) -> ParsedRoute {
    parse_any_route(RouteKind::Http, doc)
}

/// Reads one `GRPCRoute` document into the same rules an HTTPRoute gives (see the module's
/// documentation). Never fails: a refused route carries its error.
pub fn parse_grpc_route(doc: &serde_json::Value) -> ParsedRoute {
    parse_any_route(RouteKind::Grpc, doc)
}

fn parse_any_route(kind: RouteKind, doc: &serde_json::Value) -> ParsedRoute {
    let (namespace, name, created) = meta(doc);
    let object = route_id(kind, &namespace, &name);
    let mut warnings = Vec::new();
    let mut warn = |field: String, problem: RouteProblem| {
        warnings.push(RouteError {
            object: object.clone(),
            field,
            problem,
        })
    };
    let parents = lenient_parents(doc, &namespace, &mut warn);
    let result = if name.is_empty() {
        Err(("metadata.name".to_string(), RouteProblem::MissingName))
    } else {
        read_route(kind, doc, &namespace, &mut warn)
    };
    ParsedRoute {
        kind,
        result: result.map_err(|(field, problem)| RouteError {
            object: object.clone(),
            field,
            problem,
        }),
        namespace,
        name,
        created,
        parents,
        warnings,
    }
}

/// The parentRefs that name a Service (group `""` or `core`, kind `Service`) or a Gateway
/// (the defaults), read without judging the rest of the route.
fn lenient_parents(
    doc: &serde_json::Value,
    namespace: &str,
    warn: &mut impl FnMut(String, RouteProblem),
) -> Vec<ParentRef> {
    let refs: Vec<HttpRouteParentRefs> = doc
        .pointer("/spec/parentRefs")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| serde_json::from_value(r.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for (i, r) in refs.into_iter().enumerate() {
        let group = r.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = r.kind.as_deref().unwrap_or(GATEWAY_KIND);
        let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_string());
        let target = ServiceRef {
            namespace: ns.clone(),
            name: r.name.clone(),
        };
        let parent = match (group, kind) {
            ("" | "core", "Service") => {
                if ns != namespace {
                    warn(
                        format!("spec.parentRefs[{i}]"),
                        RouteProblem::ConsumerRoute {
                            namespace: ns,
                            name: r.name,
                        },
                    );
                    continue;
                }
                Parent::Service(target)
            }
            (GATEWAY_GROUP, GATEWAY_KIND) => Parent::Gateway(target),
            _ => {
                warn(
                    format!("spec.parentRefs[{i}]"),
                    RouteProblem::UnsupportedValue {
                        what: format!("a parent of group {group:?} and kind {kind}"),
                    },
                );
                continue;
            }
        };
        let port = match r.port.map(u16::try_from) {
            None => None,
            Some(Ok(p)) if p > 0 => Some(p),
            // Refused with the route below; this parent is not attached meanwhile.
            Some(_) => continue,
        };
        out.push(ParentRef {
            parent,
            port,
            section: r.section_name.filter(|s| !s.is_empty()),
        });
    }
    out.sort_by(|a, b| (&a.parent, a.port, &a.section).cmp(&(&b.parent, b.port, &b.section)));
    out.dedup();
    out
}

/// The whole route, as written (only `spec` is read; `metadata` and `status` stay lenient).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RouteDoc {
    api_version: String,
    kind: String,
    spec: serde_json::Value,
}

fn read_route(
    kind: RouteKind,
    doc: &serde_json::Value,
    namespace: &str,
    warn: &mut impl FnMut(String, RouteProblem),
) -> Result<Vec<ParsedRule>, FieldError> {
    let d: RouteDoc = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        (path, RouteProblem::Shape(e.into_inner().to_string()))
    })?;
    if d.api_version != GATEWAY_API_VERSION {
        return Err((
            "apiVersion".into(),
            RouteProblem::Wrong {
                value: d.api_version,
                expected: GATEWAY_API_VERSION,
            },
        ));
    }
    if d.kind != kind.name() {
        return Err((
            "kind".into(),
            RouteProblem::Wrong {
                value: d.kind,
                expected: kind.name(),
            },
        ));
    }
    // The two kinds' specs differ in their matches only: the rest is read once, below.
    match kind {
        RouteKind::Http => {
            let spec: HttpRouteSpec = spec_of(&d.spec)?;
            let rules = spec.rules.unwrap_or_default();
            read_common(
                spec.parent_refs.iter().flatten().map(|p| p.port),
                spec.hostnames.as_deref(),
                rules.iter().map(|r| r.matches.as_ref().map_or(0, Vec::len)),
                warn,
            )?;
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| read_rule(r, &format!("spec.rules[{i}]"), namespace, warn))
                .collect()
        }
        RouteKind::Grpc => {
            let spec: GrpcRouteSpec = spec_of(&d.spec)?;
            let rules = spec.rules.unwrap_or_default();
            read_common(
                spec.parent_refs.iter().flatten().map(|p| p.port),
                spec.hostnames.as_deref(),
                rules.iter().map(|r| r.matches.as_ref().map_or(0, Vec::len)),
                warn,
            )?;
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| read_grpc_rule(r, &format!("spec.rules[{i}]"), namespace, warn))
                .collect()
        }
    }
}

/// A route's `spec` as the Gateway API crate's type, a bad field named by its path.
fn spec_of<T: serde::de::DeserializeOwned>(spec: &serde_json::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        (
            format!("spec.{path}"),
            RouteProblem::Shape(e.into_inner().to_string()),
        )
    })
}

/// What both kinds check alike: the parentRefs' ports, hostnames (unsupported), and the number of
/// matches (`matches`: each rule's count; a rule without matches counts one).
fn read_common(
    parent_ports: impl Iterator<Item = Option<i32>>,
    hostnames: Option<&[String]>,
    matches: impl Iterator<Item = usize>,
    warn: &mut impl FnMut(String, RouteProblem),
) -> Result<(), FieldError> {
    for (i, port) in parent_ports.enumerate() {
        if let Some(port) = port {
            if !(1..=65535).contains(&port) {
                return Err((
                    format!("spec.parentRefs[{i}].port"),
                    RouteProblem::OutOfRange {
                        value: port.to_string(),
                        expected: "a port from 1 to 65535",
                    },
                ));
            }
        }
    }
    if hostnames.is_some_and(|h| !h.is_empty()) {
        warn("spec.hostnames".into(), RouteProblem::Unsupported);
    }
    let count: usize = matches.map(|n| n.max(1)).sum();
    if count > MAX_MATCHES {
        return Err(("spec.rules".into(), RouteProblem::TooManyMatches { count }));
    }
    Ok(())
}

/// The match of a rule without matches: every request.
fn match_all() -> api::RouteMatch {
    api::RouteMatch {
        path: Some(PathMatch::Prefix("/".into())),
        ..api::RouteMatch::default()
    }
}

fn read_rule(
    r: &HttpRouteRules,
    p: &str,
    namespace: &str,
    warn: &mut impl FnMut(String, RouteProblem),
) -> Result<ParsedRule, FieldError> {
    let matches = match r.matches.as_deref() {
        None | Some([]) => vec![match_all()],
        Some(ms) => ms
            .iter()
            .enumerate()
            .map(|(j, m)| read_match(m, &format!("{p}.matches[{j}]")))
            .collect::<Result<_, _>>()?,
    };
    read_actions(r, matches, Vec::new(), p, namespace, warn)
}

/// A GRPCRoute rule: its matches as path and header matches, and the rest (backendRefs, filters,
/// sessionPersistence, all of the HTTPRoute's shape) read as an HTTPRoute rule's.
fn read_grpc_rule(
    r: &GrpcRouteRules,
    p: &str,
    namespace: &str,
    warn: &mut impl FnMut(String, RouteProblem),
) -> Result<ParsedRule, FieldError> {
    let (matches, grpc_precedence) = match r.matches.as_deref() {
        None | Some([]) => (vec![match_all()], vec![(0, 0)]),
        Some(ms) => ms
            .iter()
            .enumerate()
            .map(|(j, m)| read_grpc_match(m, &format!("{p}.matches[{j}]")))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip(),
    };
    // GRPCRoute's backendRefs, filters and sessionPersistence are HTTPRoute's fields with fewer
    // filter types, so they read as an HTTPRoute rule without matches (what GRPCRoute lacks,
    // timeouts and retry, stays unset).
    let mut as_http = serde_json::to_value(r).map_err(|e| (p.to_string(), shape(e)))?;
    if let Some(o) = as_http.as_object_mut() {
        o.remove("matches");
    }
    let as_http: HttpRouteRules =
        serde_json::from_value(as_http).map_err(|e| (p.to_string(), shape(e)))?;
    read_actions(&as_http, matches, grpc_precedence, p, namespace, warn)
}

fn shape(e: serde_json::Error) -> RouteProblem {
    RouteProblem::Shape(e.to_string())
}

/// Everything of a rule but its matches: backendRefs, filters, timeouts, retry.
fn read_actions(
    r: &HttpRouteRules,
    matches: Vec<api::RouteMatch>,
    grpc_precedence: Vec<(usize, usize)>,
    p: &str,
    namespace: &str,
    warn: &mut impl FnMut(String, RouteProblem),
) -> Result<ParsedRule, FieldError> {
    let mut rule = ParsedRule {
        matches,
        grpc_precedence,
        backends: Vec::new(),
        mirrors: Vec::new(),
        fault: None,
        rule: api::Rule::default(),
    };
    for (j, b) in r.backend_refs.iter().flatten().enumerate() {
        let f = format!("{p}.backendRefs[{j}]");
        if b.filters.as_ref().is_some_and(|f| !f.is_empty()) {
            warn(format!("{f}.filters"), RouteProblem::Unsupported);
        }
        let weight = match b.weight {
            None => 1,
            Some(w @ 0..=1_000_000) => w as u32,
            Some(w) => {
                return Err((
                    format!("{f}.weight"),
                    RouteProblem::OutOfRange {
                        value: w.to_string(),
                        expected: "a weight from 0 to 1000000",
                    },
                ))
            }
        };
        let target = BackendTarget {
            group: b.group.as_deref(),
            kind: b.kind.as_deref(),
            name: &b.name,
            namespace: b.namespace.as_deref(),
            port: b.port,
        };
        match backend_ref(&target, &f, namespace, warn)? {
            Some(backend) if weight > 0 => rule.backends.push((backend, weight, f)),
            Some(_) => {}
            // Its share is answered 500 (Gateway API: an invalid backendRef's requests).
            None => rule.rule.invalid_weight += weight,
        }
    }
    for (j, filter) in r.filters.iter().flatten().enumerate() {
        read_filter(
            filter,
            &format!("{p}.filters[{j}]"),
            namespace,
            &mut rule,
            warn,
        )?;
    }
    if let Some(t) = &r.timeouts {
        rule.rule.timeout_ms =
            gateway_millis(t.request.as_deref(), &format!("{p}.timeouts.request"))?;
        rule.rule.backend_timeout_ms = gateway_millis(
            t.backend_request.as_deref(),
            &format!("{p}.timeouts.backendRequest"),
        )?;
    }
    if let Some(retry) = &r.retry {
        let mut codes = Vec::new();
        for (k, c) in retry.codes.iter().flatten().enumerate() {
            match u16::try_from(*c) {
                Ok(c @ 400..=599) => codes.push(c),
                _ => {
                    return Err((
                        format!("{p}.retry.codes[{k}]"),
                        RouteProblem::OutOfRange {
                            value: c.to_string(),
                            expected: "an HTTP status code from 400 to 599",
                        },
                    ))
                }
            }
        }
        if codes.is_empty() {
            codes = DEFAULT_RETRY_CODES.to_vec();
        }
        let attempts = match retry.attempts {
            None => 1,
            Some(a @ 0..=1000) => a as u32,
            Some(a) => {
                return Err((
                    format!("{p}.retry.attempts"),
                    RouteProblem::OutOfRange {
                        value: a.to_string(),
                        expected: "a number of retries from 0 to 1000",
                    },
                ))
            }
        };
        rule.rule.retry = Some(api::Retry {
            codes,
            attempts,
            backoff_ms: gateway_millis(retry.backoff.as_deref(), &format!("{p}.retry.backoff"))?,
        });
    }
    if r.session_persistence.is_some() {
        warn(format!("{p}.sessionPersistence"), RouteProblem::Unsupported);
    }
    Ok(rule)
}

fn read_match(m: &HttpRouteRulesMatches, p: &str) -> Result<api::RouteMatch, FieldError> {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(path) => {
            let value = path.value.clone().unwrap_or_else(|| "/".into());
            let field = format!("{p}.path.value");
            match path
                .r#type
                .clone()
                .unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix)
            {
                HttpRouteRulesMatchesPathType::Exact => {
                    absolute(&value, &field)?;
                    PathMatch::Exact(value)
                }
                HttpRouteRulesMatchesPathType::PathPrefix => {
                    absolute(&value, &field)?;
                    PathMatch::Prefix(value)
                }
                HttpRouteRulesMatchesPathType::RegularExpression => {
                    regex(&value, &field)?;
                    PathMatch::Regex(value)
                }
            }
        }
    };
    let headers = m
        .headers
        .iter()
        .flatten()
        .enumerate()
        .map(|(k, h)| {
            let regex = matches!(
                h.r#type,
                Some(HttpRouteRulesMatchesHeadersType::RegularExpression)
            );
            header_match(&h.name, &h.value, regex, &format!("{p}.headers[{k}]"))
        })
        .collect::<Result<_, _>>()?;
    let mut query = Vec::new();
    for (k, q) in m.query_params.iter().flatten().enumerate() {
        let f = format!("{p}.queryParams[{k}]");
        if q.name.is_empty() {
            return Err((format!("{f}.name"), RouteProblem::MissingName));
        }
        let value = match q.r#type {
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                regex(&q.value, &format!("{f}.value"))?;
                StringMatch::Regex(q.value.clone())
            }
            _ => StringMatch::Exact(q.value.clone()),
        };
        query.push(ValueMatch {
            name: q.name.clone(),
            value,
        });
    }
    let method = m.method.as_ref().map(|m| {
        serde_json::to_value(m)
            .ok()
            .and_then(|v| v.as_str().map(str::to_ascii_uppercase))
            .unwrap_or_default()
    });
    Ok(api::RouteMatch {
        rule: 0,
        path: Some(path),
        method,
        headers,
        query,
    })
}

/// One header match of either kind (`f` is its field path).
fn header_match(
    name: &str,
    value: &str,
    is_regex: bool,
    f: &str,
) -> Result<ValueMatch, FieldError> {
    if !is_token(name) {
        return Err((
            format!("{f}.name"),
            RouteProblem::HeaderName {
                value: name.to_string(),
            },
        ));
    }
    let value = if is_regex {
        regex(value, &format!("{f}.value"))?;
        StringMatch::Regex(value.to_string())
    } else {
        StringMatch::Exact(value.to_string())
    };
    Ok(ValueMatch {
        name: name.to_ascii_lowercase(),
        value,
    })
}

/// The longest service or method name (or regex) a GRPCMethodMatch takes, as Gateway API's
/// schema says.
pub const MAX_GRPC_NAME: usize = 1024;

/// One GRPCRoute match as a path and header match, with its precedence (see
/// [`ParsedRule::grpc_precedence`]).
fn read_grpc_match(
    m: &GrpcRouteRulesMatches,
    p: &str,
) -> Result<(api::RouteMatch, (usize, usize)), FieldError> {
    let (path, precedence) = match &m.method {
        None => (PathMatch::Prefix("/".into()), (0, 0)),
        Some(mm) => {
            let f = format!("{p}.method");
            // Gateway API: empty is the same as omitted (any service, any method).
            let service = mm.service.as_deref().filter(|s| !s.is_empty());
            let method = mm.method.as_deref().filter(|s| !s.is_empty());
            if service.is_none() && method.is_none() {
                return Err((f, RouteProblem::NoServiceOrMethod));
            }
            for (value, field) in [(service, "service"), (method, "method")] {
                if let Some(v) = value.filter(|v| v.len() > MAX_GRPC_NAME) {
                    return Err((
                        format!("{f}.{field}"),
                        RouteProblem::OutOfRange {
                            value: format!("a {field} of {} characters", v.len()),
                            expected: "at most 1024 characters",
                        },
                    ));
                }
            }
            let regex_type = matches!(
                mm.r#type,
                Some(GrpcRouteRulesMatchesMethodType::RegularExpression)
            );
            if regex_type {
                if let Some(s) = service {
                    regex(s, &format!("{f}.service"))?;
                }
                if let Some(m) = method {
                    regex(m, &format!("{f}.method"))?;
                }
            } else {
                if let Some(s) = service.filter(|s| !is_grpc_service(s)) {
                    return Err((
                        format!("{f}.service"),
                        RouteProblem::GrpcName {
                            value: s.to_string(),
                            what: "service",
                            expected: "dot-separated parts of letters, digits and _, each \
                                       starting with a letter or _, like helloworld.Greeter (or \
                                       type: RegularExpression)",
                        },
                    ));
                }
                if let Some(m) = method.filter(|m| !is_grpc_identifier(m)) {
                    return Err((
                        format!("{f}.method"),
                        RouteProblem::GrpcName {
                            value: m.to_string(),
                            what: "method",
                            expected: "letters, digits and _, starting with a letter or _, \
                                       like SayHello (or type: RegularExpression)",
                        },
                    ));
                }
            }
            let path = grpc_path(regex_type, service, method);
            if let PathMatch::Regex(re) = &path {
                regex(re, &f)?;
            }
            let precedence = if regex_type {
                (0, 0)
            } else {
                (service.map_or(0, str::len), method.map_or(0, str::len))
            };
            (path, precedence)
        }
    };
    let headers = m
        .headers
        .iter()
        .flatten()
        .enumerate()
        .map(|(k, h)| {
            let regex = matches!(
                h.r#type,
                Some(GrpcRouteRulesMatchesHeadersType::RegularExpression)
            );
            header_match(&h.name, &h.value, regex, &format!("{p}.headers[{k}]"))
        })
        .collect::<Result<_, _>>()?;
    let m = api::RouteMatch {
        rule: 0,
        path: Some(path),
        method: None,
        headers,
        query: Vec::new(),
    };
    Ok((m, precedence))
}

/// The path match of a GRPCMethodMatch (at least one of `service` and `method` given), as Envoy
/// and Istio compile it, a gRPC call's path being `/<service>/<method>`:
/// - `Exact` with both: the exact path `/<service>/<method>`;
/// - `Exact` with a service only: the path prefix `/<service>/` (every method of it);
/// - `Exact` with a method only: the regex `/[^/]+/<method>` (that method of any service);
/// - `RegularExpression`: the regex `/(?:<service>)/(?:<method>)`, an absent one `[^/]+`;
/// - neither (which [`parse_grpc_route`] refuses): every path.
///
/// Regexes match the whole path, as every route regex does.
pub fn grpc_path(regex_type: bool, service: Option<&str>, method: Option<&str>) -> PathMatch {
    const ANY: &str = "[^/]+";
    if regex_type {
        return PathMatch::Regex(format!(
            "/(?:{})/(?:{})",
            service.unwrap_or(ANY),
            method.unwrap_or(ANY)
        ));
    }
    match (service, method) {
        (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
        (Some(s), None) => PathMatch::Prefix(format!("/{s}/")),
        (None, Some(m)) => PathMatch::Regex(format!("/{ANY}/{}", regex::escape(m))),
        (None, None) => PathMatch::Prefix("/".into()),
    }
}

/// A gRPC identifier: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_grpc_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A fully-qualified gRPC service name as Gateway API accepts it: identifiers joined by `.`, with
/// an optional leading `.`.
fn is_grpc_service(s: &str) -> bool {
    s.strip_prefix('.')
        .unwrap_or(s)
        .split('.')
        .all(is_grpc_identifier)
}

/// A backendRef or a mirror's backendRef, as written.
struct BackendTarget<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
}

/// A Service port in the route's namespace; `None` (with a warning) for a reference Trellis
/// ignores; an error for one Gateway API itself refuses.
fn backend_ref(
    b: &BackendTarget<'_>,
    f: &str,
    namespace: &str,
    warn: &mut impl FnMut(String, RouteProblem),
) -> Result<Option<BackendRef>, FieldError> {
    let group = b.group.unwrap_or("");
    let kind = b.kind.unwrap_or("Service");
    if b.name.is_empty() {
        return Err((format!("{f}.name"), RouteProblem::MissingName));
    }
    if !matches!(group, "" | "core") || kind != "Service" {
        warn(
            f.to_string(),
            RouteProblem::InvalidKind {
                group: group.to_string(),
                kind: kind.to_string(),
            },
        );
        return Ok(None);
    }
    let port = match b.port {
        None => return Err((format!("{f}.port"), RouteProblem::NoPort)),
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => p,
            _ => {
                return Err((
                    format!("{f}.port"),
                    RouteProblem::OutOfRange {
                        value: p.to_string(),
                        expected: "a port from 1 to 65535",
                    },
                ))
            }
        },
    };
    if let Some(ns) = b.namespace.filter(|ns| *ns != namespace) {
        warn(
            f.to_string(),
            RouteProblem::RefNotPermitted {
                kind: "Service",
                namespace: ns.to_string(),
                name: b.name.to_string(),
            },
        );
        return Ok(None);
    }
    Ok(Some(BackendRef {
        service: ServiceRef {
            namespace: namespace.to_string(),
            name: b.name.to_string(),
        },
        port,
    }))
}

/// The `set` or `add` list of either header modifier (two generated types of one shape), as
/// `(name, value)` pairs.
macro_rules! named_values {
    ($list:expr) => {
        $list
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect::<Vec<(String, String)>>()
    };
}

fn read_filter(
    filter: &HttpRouteRulesFilters,
    f: &str,
    namespace: &str,
    rule: &mut ParsedRule,
    warn: &mut impl FnMut(String, RouteProblem),
) -> Result<(), FieldError> {
    fn need<'a, T>(
        v: &'a Option<T>,
        f: &str,
        field: &'static str,
        kind: &'static str,
    ) -> Result<&'a T, FieldError> {
        v.as_ref().ok_or_else(|| {
            (
                format!("{f}.{field}"),
                RouteProblem::FilterMissing { field, kind },
            )
        })
    }
    match filter.r#type {
        HttpRouteRulesFiltersType::RequestHeaderModifier => {
            let m = need(
                &filter.request_header_modifier,
                f,
                "requestHeaderModifier",
                "RequestHeaderModifier",
            )?;
            rule.rule.request_headers = Some(header_modifier(
                &named_values!(m.set),
                &named_values!(m.add),
                m.remove.as_deref().unwrap_or_default(),
                &format!("{f}.requestHeaderModifier"),
            )?);
        }
        HttpRouteRulesFiltersType::ResponseHeaderModifier => {
            let m = need(
                &filter.response_header_modifier,
                f,
                "responseHeaderModifier",
                "ResponseHeaderModifier",
            )?;
            rule.rule.response_headers = Some(header_modifier(
                &named_values!(m.set),
                &named_values!(m.add),
                m.remove.as_deref().unwrap_or_default(),
                &format!("{f}.responseHeaderModifier"),
            )?);
        }
        HttpRouteRulesFiltersType::RequestRedirect => {
            let r = need(
                &filter.request_redirect,
                f,
                "requestRedirect",
                "RequestRedirect",
            )?;
            let status = match r.status_code {
                None => 302,
                Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
                Some(c) => {
                    return Err((
                        format!("{f}.requestRedirect.statusCode"),
                        RouteProblem::OutOfRange {
                            value: c.to_string(),
                            expected: "one of 301, 302, 303, 307, 308",
                        },
                    ))
                }
            };
            let port = match r.port {
                None => None,
                Some(p) => match u16::try_from(p) {
                    Ok(p) if p > 0 => Some(p),
                    _ => {
                        return Err((
                            format!("{f}.requestRedirect.port"),
                            RouteProblem::OutOfRange {
                                value: p.to_string(),
                                expected: "a port from 1 to 65535",
                            },
                        ))
                    }
                },
            };
            let path = match &r.path {
                None => None,
                Some(path) => Some(path_modifier(
                    matches!(
                        path.r#type,
                        gateway_api::experimental::httproutes::HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath
                    ),
                    path.replace_full_path.as_deref(),
                    path.replace_prefix_match.as_deref(),
                    &format!("{f}.requestRedirect.path"),
                )?),
            };
            rule.rule.redirect = Some(api::Redirect {
                scheme: r.scheme.as_ref().and_then(|s| {
                    serde_json::to_value(s)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                }),
                hostname: r.hostname.clone(),
                path,
                port,
                status,
            });
        }
        HttpRouteRulesFiltersType::UrlRewrite => {
            let r = need(&filter.url_rewrite, f, "urlRewrite", "URLRewrite")?;
            let path = match &r.path {
                None => None,
                Some(path) => Some(path_modifier(
                    matches!(
                        path.r#type,
                        gateway_api::experimental::httproutes::HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath
                    ),
                    path.replace_full_path.as_deref(),
                    path.replace_prefix_match.as_deref(),
                    &format!("{f}.urlRewrite.path"),
                )?),
            };
            rule.rule.rewrite = Some(api::Rewrite {
                hostname: r.hostname.clone(),
                path,
            });
        }
        HttpRouteRulesFiltersType::RequestMirror => {
            let m = need(&filter.request_mirror, f, "requestMirror", "RequestMirror")?;
            let mf = format!("{f}.requestMirror");
            let per_million = match (m.percent, &m.fraction) {
                (Some(_), Some(_)) => {
                    return Err((
                        mf,
                        RouteProblem::Shape("set both percent and fraction: expected one".into()),
                    ))
                }
                (Some(p @ 0..=100), None) => p as u32 * 10_000,
                (Some(p), None) => {
                    return Err((
                        format!("{mf}.percent"),
                        RouteProblem::OutOfRange {
                            value: p.to_string(),
                            expected: "a percentage from 0 to 100",
                        },
                    ))
                }
                (None, Some(fr)) => {
                    let den = fr.denominator.unwrap_or(100);
                    if den <= 0 || fr.numerator < 0 || fr.numerator > den {
                        return Err((
                            format!("{mf}.fraction"),
                            RouteProblem::OutOfRange {
                                value: format!("{}/{den}", fr.numerator),
                                expected: "0 <= numerator <= denominator, denominator > 0",
                            },
                        ));
                    }
                    (i64::from(fr.numerator) * 1_000_000 / i64::from(den)) as u32
                }
                (None, None) => 1_000_000,
            };
            let b = &m.backend_ref;
            let target = BackendTarget {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
            };
            let bf = format!("{mf}.backendRef");
            if let Some(backend) = backend_ref(&target, &bf, namespace, warn)? {
                rule.mirrors.push((backend, per_million, bf));
            }
        }
        HttpRouteRulesFiltersType::ExtensionRef => {
            let e = need(&filter.extension_ref, f, "extensionRef", "ExtensionRef")?;
            let ef = format!("{f}.extensionRef");
            if e.group != FAULT_GROUP || e.kind != FAULT_KIND {
                return Err((
                    ef,
                    RouteProblem::Wrong {
                        value: format!("{}/{}", e.group, e.kind),
                        expected: "trellis.dev/HTTPFault",
                    },
                ));
            }
            if e.name.is_empty() {
                return Err((format!("{ef}.name"), RouteProblem::MissingName));
            }
            if rule.fault.is_some() {
                warn(ef, RouteProblem::SecondFault);
            } else {
                rule.fault = Some((e.name.clone(), ef));
            }
        }
        HttpRouteRulesFiltersType::Cors | HttpRouteRulesFiltersType::ExternalAuth => {
            warn(f.to_string(), RouteProblem::Unsupported);
        }
    }
    Ok(())
}

fn header_modifier(
    set: &[(String, String)],
    add: &[(String, String)],
    remove: &[String],
    f: &str,
) -> Result<api::HeaderModifier, FieldError> {
    let check = |name: &str, field: String| {
        if is_token(name) {
            Ok(name.to_ascii_lowercase())
        } else {
            Err((
                field,
                RouteProblem::HeaderName {
                    value: name.to_string(),
                },
            ))
        }
    };
    let mut out = api::HeaderModifier::default();
    for (i, (n, v)) in set.iter().enumerate() {
        out.set
            .push((check(n, format!("{f}.set[{i}].name"))?, v.clone()));
    }
    for (i, (n, v)) in add.iter().enumerate() {
        out.add
            .push((check(n, format!("{f}.add[{i}].name"))?, v.clone()));
    }
    for (i, n) in remove.iter().enumerate() {
        out.remove.push(check(n, format!("{f}.remove[{i}]"))?);
    }
    Ok(out)
}

fn path_modifier(
    full: bool,
    full_path: Option<&str>,
    prefix: Option<&str>,
    f: &str,
) -> Result<api::PathModifier, FieldError> {
    if full {
        let v = full_path.ok_or_else(|| {
            (
                format!("{f}.replaceFullPath"),
                RouteProblem::FilterMissing {
                    field: "replaceFullPath",
                    kind: "ReplaceFullPath",
                },
            )
        })?;
        absolute(v, &format!("{f}.replaceFullPath"))?;
        Ok(api::PathModifier::ReplaceFullPath(v.to_string()))
    } else {
        let v = prefix.ok_or_else(|| {
            (
                format!("{f}.replacePrefixMatch"),
                RouteProblem::FilterMissing {
                    field: "replacePrefixMatch",
                    kind: "ReplacePrefixMatch",
                },
            )
        })?;
        absolute(v, &format!("{f}.replacePrefixMatch"))?;
        Ok(api::PathModifier::ReplacePrefixMatch(v.to_string()))
    }
}

fn absolute(value: &str, field: &str) -> Result<(), FieldError> {
    if value.starts_with('/') {
        Ok(())
    } else {
        Err((
            field.to_string(),
            RouteProblem::Path {
                value: value.to_string(),
            },
        ))
    }
}

/// The largest compiled regex accepted (the `regex` crate's default is 10 MiB per regex; a
/// route table may hold a thousand).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn regex(value: &str, field: &str) -> Result<(), FieldError> {
    regex::RegexBuilder::new(value)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(|_| ())
        .map_err(|e| {
            (
                field.to_string(),
                RouteProblem::Regex {
                    value: value.to_string(),
                    // The crate's message spans lines (the pattern with a caret); one line here.
                    error: e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                },
            )
        })
}

/// A Gateway API duration (GEP-2257: `500ms`, `10s`, `1h2m`) in milliseconds; `0s` is no
/// timeout (`None`).
fn gateway_millis(v: Option<&str>, field: &str) -> Result<Option<u64>, FieldError> {
    let Some(text) = v else { return Ok(None) };
    let d = parse_gateway_duration(text).ok_or_else(|| {
        (
            field.to_string(),
            RouteProblem::Duration {
                value: text.to_string(),
            },
        )
    })?;
    Ok(Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).filter(|ms| *ms > 0))
}

/// GEP-2257's duration form, through the `gateway-api` crate's own parser.
pub fn parse_gateway_duration(text: &str) -> Option<Duration> {
    let d: gateway_api::Duration = text.parse().ok()?;
    Some(Duration::from_millis(u64::try_from(d.as_millis()).ok()?))
}

/// An HTTP header name (RFC 9110 token).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One `HTTPFault` as the model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFault {
    pub namespace: String,
    pub name: String,
    pub result: Result<api::Fault, RouteError>,
}

impl ParsedFault {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FaultDoc {
    api_version: String,
    kind: String,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: serde_json::Value,
    spec: FaultSpec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FaultSpec {
    abort: Option<AbortSpec>,
    delay: Option<DelaySpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AbortSpec {
    http_status: i64,
    percentage: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DelaySpec {
    fixed_delay: String,
    percentage: Option<f64>,
}

/// Reads one `HTTPFault` document. Never fails: a refused fault carries its error.
pub fn parse_fault(doc: &serde_json::Value) -> ParsedFault {
    let (namespace, name, _) = meta(doc);
    let object = object_id(&namespace, &name);
    let result = if name.is_empty() {
        Err(("metadata.name".to_string(), RouteProblem::MissingName))
    } else {
        read_fault(doc)
    };
    ParsedFault {
        namespace,
        name,
        result: result.map_err(|(field, problem)| RouteError {
            object,
            field,
            problem,
        }),
    }
}

fn read_fault(doc: &serde_json::Value) -> Result<api::Fault, FieldError> {
    let d: FaultDoc = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        (path, RouteProblem::Shape(e.into_inner().to_string()))
    })?;
    if d.api_version != FAULT_API_VERSION {
        return Err((
            "apiVersion".into(),
            RouteProblem::Wrong {
                value: d.api_version,
                expected: FAULT_API_VERSION,
            },
        ));
    }
    if d.kind != FAULT_KIND {
        return Err((
            "kind".into(),
            RouteProblem::Wrong {
                value: d.kind,
                expected: FAULT_KIND,
            },
        ));
    }
    let mut fault = api::Fault::default();
    if let Some(a) = &d.spec.abort {
        let status = match u16::try_from(a.http_status) {
            Ok(s @ 200..=599) => s,
            _ => {
                return Err((
                    "spec.abort.httpStatus".into(),
                    RouteProblem::OutOfRange {
                        value: a.http_status.to_string(),
                        expected: "an HTTP status code from 200 to 599",
                    },
                ))
            }
        };
        fault.abort = Some(api::Abort {
            status,
            per_million: per_million(a.percentage, "spec.abort.percentage")?,
        });
    }
    if let Some(dl) = &d.spec.delay {
        let delay = parse_gateway_duration(&dl.fixed_delay)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                (
                    "spec.delay.fixedDelay".to_string(),
                    RouteProblem::Duration {
                        value: dl.fixed_delay.clone(),
                    },
                )
            })?;
        fault.delay = Some(api::Delay {
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            per_million: per_million(dl.percentage, "spec.delay.percentage")?,
        });
    }
    if fault.abort.is_none() && fault.delay.is_none() {
        return Err(("spec".into(), RouteProblem::EmptyFault));
    }
    Ok(fault)
}

/// A percentage (0 to 100, fractions allowed; absent: 100) in millionths.
fn per_million(p: Option<f64>, field: &str) -> Result<u32, FieldError> {
    match p {
        None => Ok(1_000_000),
        Some(p) if (0.0..=100.0).contains(&p) => Ok((p * 10_000.0).round() as u32),
        Some(p) => Err((
            field.to_string(),
            RouteProblem::OutOfRange {
                value: p.to_string(),
                expected: "a percentage from 0 to 100",
            },
        )),
    }
}

/// One `Gateway` as the model holds it: whether it is Trellis's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedGateway {
    pub namespace: String,
    pub name: String,
    /// `spec.gatewayClassName`, or why the spec could not be read.
    pub class: Result<String, RouteError>,
    /// `spec.listeners`, as far as attaching routes goes (empty when the spec is unreadable).
    pub listeners: Vec<Listener>,
}

/// One Gateway listener, as far as attaching routes goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub port: i32,
    /// The route kinds it takes: with `protocol: HTTP` (the gateway proxy serves cleartext
    /// HTTP only), HTTPRoute and GRPCRoute, or those of them `allowedRoutes.kinds` names when
    /// given; none with another protocol.
    pub takes: Vec<RouteKind>,
    /// `allowedRoutes.namespaces.from` (`Same` when absent, as Gateway API defaults).
    pub from: RoutesFrom,
}

/// Which namespaces' routes a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutesFrom {
    Same,
    All,
    /// By Namespace labels: Trellis does not watch Namespaces, so no route attaches (reported).
    Selector,
}

impl ParsedGateway {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Served by Trellis (class `trellis`).
    pub fn is_ours(&self) -> bool {
        self.class.as_deref() == Ok(GATEWAY_CLASS)
    }
}

/// Reads one `Gateway` document (its spec as Gateway API's `GatewaySpec`).
pub fn parse_gateway(doc: &serde_json::Value) -> ParsedGateway {
    let (namespace, name, _) = meta(doc);
    let object = object_id(&namespace, &name);
    let spec = doc.get("spec").cloned().unwrap_or(serde_json::Value::Null);
    let spec = serde_path_to_error::deserialize::<
        _,
        gateway_api::experimental::gateways::GatewaySpec,
    >(&spec)
    .map_err(|e| RouteError {
        object,
        field: format!("spec.{}", e.path()),
        problem: RouteProblem::Shape(e.into_inner().to_string()),
    });
    let listeners = match &spec {
        Ok(s) => s.listeners.iter().map(listener).collect(),
        Err(_) => Vec::new(),
    };
    ParsedGateway {
        namespace,
        name,
        class: spec.map(|s| s.gateway_class_name),
        listeners,
    }
}

fn listener(l: &gateway_api::experimental::gateways::GatewayListeners) -> Listener {
    use gateway_api::experimental::gateways::GatewayListenersAllowedRoutesNamespacesFrom as From;
    let allowed = l.allowed_routes.as_ref();
    let kind_ok = |kind: RouteKind| {
        allowed.and_then(|a| a.kinds.as_ref()).is_none_or(|kinds| {
            kinds.iter().any(|k| {
                k.kind == kind.name()
                    && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
            })
        })
    };
    Listener {
        name: l.name.clone(),
        port: l.port,
        takes: [RouteKind::Http, RouteKind::Grpc]
            .into_iter()
            .filter(|k| l.protocol == "HTTP" && kind_ok(*k))
            .collect(),
        from: match allowed
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.as_ref())
        {
            None | Some(From::Same) => RoutesFrom::Same,
            Some(From::All) => RoutesFrom::All,
            Some(From::Selector) => RoutesFrom::Selector,
        },
    }
}

impl ParsedGateway {
    /// Whether the listeners a parentRef names (by `sectionName` and `port`; all when neither is
    /// given) take a route of kind `kind` from `route_namespace`; if not, Gateway API's reason
    /// and why.
    pub fn admits(
        &self,
        kind: RouteKind,
        route_namespace: &str,
        p: &ParentRef,
    ) -> Result<(), (&'static str, String)> {
        let gateway = self.id();
        let named: Vec<&Listener> = self
            .listeners
            .iter()
            .filter(|l| p.section.as_deref().is_none_or(|s| s == l.name))
            .filter(|l| p.port.is_none_or(|port| i32::from(port) == l.port))
            .collect();
        if named.is_empty() {
            let which = match (&p.section, p.port) {
                (Some(s), Some(port)) => format!("named {s:?} on port {port}"),
                (Some(s), None) => format!("named {s:?}"),
                (None, Some(port)) => format!("on port {port}"),
                (None, None) => "at all".into(),
            };
            return Err((
                "NoMatchingParent",
                format!("Gateway {gateway} has no listener {which}"),
            ));
        }
        let http: Vec<&&Listener> = named.iter().filter(|l| l.takes.contains(&kind)).collect();
        if http.is_empty() {
            let kind = kind.name();
            return Err((
                "NotAllowedByListeners",
                format!(
                    "no listener of Gateway {gateway} it names takes {kind}s (expected \
                     protocol HTTP, and {kind} among allowedRoutes.kinds when given)"
                ),
            ));
        }
        let allowed = http.iter().any(|l| match l.from {
            RoutesFrom::All => true,
            RoutesFrom::Same => route_namespace == self.namespace,
            RoutesFrom::Selector => false,
        });
        if allowed {
            return Ok(());
        }
        let selector = http.iter().any(|l| l.from == RoutesFrom::Selector);
        Err((
            "NotAllowedByListeners",
            if selector {
                format!(
                    "the listeners of Gateway {gateway} take routes by Namespace selector, \
                     which Trellis does not support (it does not watch Namespaces); use \
                     allowedRoutes.namespaces.from: All or Same"
                )
            } else {
                format!(
                    "the listeners of Gateway {gateway} take routes from namespace {} only \
                     (allowedRoutes.namespaces.from: Same, the default); set it to All to take \
                     this one from {route_namespace}",
                    self.namespace
                )
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(spec: serde_json::Value) -> ParsedRoute {
        parse_route(&json!({
            "apiVersion": GATEWAY_API_VERSION, "kind": ROUTE_KIND,
            "metadata": {"name": "r", "namespace": "default"},
            "spec": spec,
        }))
    }

    #[test]
    fn a_bad_regex_names_the_field_and_refuses_the_route() {
        let r = route(json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}},
                                   {"path": {"type": "RegularExpression", "value": "/(a"}}]}],
        }));
        let e = r.result.unwrap_err();
        assert_eq!(e.field, "spec.rules[0].matches[1].path.value");
        assert!(e.to_string().starts_with("default/r: spec.rules[0].matches[1].path.value: \"/(a\" is not a valid regular expression"), "{e}");
        assert_eq!(r.parents.len(), 1, "parents are read even when refused");
    }

    #[test]
    fn parent_refs_default_to_gateways_and_services_need_the_core_group() {
        let r = route(json!({
            "parentRefs": [
                {"name": "gw"},
                {"group": "", "kind": "Service", "name": "a", "port": 80},
                {"group": "", "kind": "Service", "name": "b", "namespace": "other"},
                {"group": "example.com", "kind": "Mesh", "name": "m"},
            ],
        }));
        let parents: Vec<&Parent> = r.parents.iter().map(|p| &p.parent).collect();
        assert_eq!(parents.len(), 2, "{parents:?}");
        assert!(matches!(parents[0], Parent::Service(s) if s.name == "a"));
        assert!(matches!(parents[1], Parent::Gateway(g) if g.name == "gw"));
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.result.unwrap().is_empty());
    }

    #[test]
    fn faults_read_fractional_percentages_and_check_ranges() {
        let f = parse_fault(&json!({
            "apiVersion": FAULT_API_VERSION, "kind": FAULT_KIND,
            "metadata": {"name": "f"},
            "spec": {"abort": {"httpStatus": 503, "percentage": 0.5},
                     "delay": {"fixedDelay": "7s"}},
        }));
        let fault = f.result.unwrap();
        assert_eq!(fault.abort.unwrap().per_million, 5_000);
        assert_eq!(fault.delay.clone().unwrap().delay_ms, 7_000);
        assert_eq!(fault.delay.unwrap().per_million, 1_000_000);
        let bad = parse_fault(&json!({
            "apiVersion": FAULT_API_VERSION, "kind": FAULT_KIND,
            "metadata": {"name": "f", "namespace": "x"},
            "spec": {"abort": {"httpStatus": 700, "percentage": 10}},
        }));
        assert_eq!(
            bad.result.unwrap_err().to_string(),
            "x/f: spec.abort.httpStatus: 700 is out of range: expected an HTTP status code from 200 to 599"
        );
    }

    #[test]
    fn durations_are_gateway_api_style() {
        assert_eq!(
            parse_gateway_duration("1h2m"),
            Some(Duration::from_secs(3720))
        );
        assert_eq!(
            parse_gateway_duration("500ms"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_gateway_duration("1.5s"), None);
        assert_eq!(parse_gateway_duration("10"), None);
    }

    fn grpc_route(spec: serde_json::Value) -> ParsedRoute {
        parse_grpc_route(&json!({
            "apiVersion": GATEWAY_API_VERSION, "kind": GRPC_ROUTE_KIND,
            "metadata": {"name": "g", "namespace": "default"},
            "spec": spec,
        }))
    }

    /// The single match of a GRPCRoute whose only rule has `matches: [m]`, with its precedence.
    fn grpc_match(m: serde_json::Value) -> (api::RouteMatch, (usize, usize)) {
        let r = grpc_route(json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "greeter"}],
            "rules": [{"matches": [m], "backendRefs": [{"name": "greeter", "port": 50051}]}],
        }));
        let mut rules = r.result.unwrap();
        let rule = rules.remove(0);
        assert_eq!(rule.matches.len(), 1);
        (rule.matches[0].clone(), rule.grpc_precedence[0])
    }

    /// Whether `path` is what `m` matches, as the proxy matches paths (a regex is anchored at
    /// both ends; a prefix ends at a segment boundary).
    fn matches_path(m: &api::RouteMatch, path: &str) -> bool {
        match m.path.as_ref().unwrap() {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => {
                let p = p.strip_suffix('/').unwrap_or(p);
                path.starts_with(p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(re) => regex::Regex::new(&format!("^(?:{re})$"))
                .unwrap()
                .is_match(path),
        }
    }

    #[test]
    fn grpc_method_matches_become_path_matches() {
        let say = "/helloworld.Greeter/SayHello";
        let other_method = "/helloworld.Greeter/SayGoodbye";
        let other_service = "/routeguide.RouteGuide/SayHello";

        // Exact, service and method: the exact path.
        let (m, rank) = grpc_match(json!({"method":
            {"type": "Exact", "service": "helloworld.Greeter", "method": "SayHello"}}));
        assert_eq!(m.path, Some(PathMatch::Exact(say.into())));
        assert_eq!(m.method, None, "gRPC is always POST: no method condition");
        assert_eq!(rank, (18, 8));
        assert!(matches_path(&m, say) && !matches_path(&m, other_method));

        // The type defaults to Exact. A service only: every method of it.
        let (m, rank) = grpc_match(json!({"method": {"service": "helloworld.Greeter"}}));
        assert_eq!(
            m.path,
            Some(PathMatch::Prefix("/helloworld.Greeter/".into()))
        );
        assert_eq!(rank, (18, 0));
        assert!(matches_path(&m, say) && matches_path(&m, other_method));
        assert!(!matches_path(&m, other_service));
        assert!(!matches_path(&m, "/helloworld.GreeterV2/SayHello"));

        // A method only: that method of any service.
        let (m, rank) = grpc_match(json!({"method": {"method": "SayHello"}}));
        assert_eq!(m.path, Some(PathMatch::Regex("/[^/]+/SayHello".into())));
        assert_eq!(rank, (0, 8));
        assert!(matches_path(&m, say) && matches_path(&m, other_service));
        assert!(!matches_path(&m, other_method));
        assert!(!matches_path(&m, "/a/b/SayHello"));

        // RegularExpression: the path regex built from both (an absent one: any name).
        let (m, rank) = grpc_match(json!({"method": {"type": "RegularExpression",
            "service": "helloworld\\.[A-Z].*", "method": "Say.*"}}));
        assert_eq!(
            m.path,
            Some(PathMatch::Regex(
                "/(?:helloworld\\.[A-Z].*)/(?:Say.*)".into()
            ))
        );
        assert_eq!(rank, (0, 0), "a regex counts no characters");
        assert!(matches_path(&m, say) && matches_path(&m, other_method));
        assert!(!matches_path(&m, other_service));
        let (m, _) =
            grpc_match(json!({"method": {"type": "RegularExpression", "method": "Say(Hello|Hi)"}}));
        assert_eq!(
            m.path,
            Some(PathMatch::Regex("/(?:[^/]+)/(?:Say(Hello|Hi))".into()))
        );
        assert!(matches_path(&m, other_service) && !matches_path(&m, other_method));

        // No method: every call; headers as HTTPRoute's (names lowercased).
        let (m, rank) = grpc_match(json!({"headers": [
            {"name": "X-Version", "value": "2"},
            {"name": "user-agent", "type": "RegularExpression", "value": "grpc-go/.*"}]}));
        assert_eq!(m.path, Some(PathMatch::Prefix("/".into())));
        assert_eq!(rank, (0, 0));
        assert_eq!(
            m.headers,
            [
                ValueMatch {
                    name: "x-version".into(),
                    value: StringMatch::Exact("2".into())
                },
                ValueMatch {
                    name: "user-agent".into(),
                    value: StringMatch::Regex("grpc-go/.*".into())
                },
            ]
        );

        // A rule without matches: every call.
        let r =
            grpc_route(json!({"rules": [{"backendRefs": [{"name": "greeter", "port": 50051}]}]}));
        let rules = r.result.as_ref().unwrap();
        assert_eq!(
            rules[0].matches[0].path,
            Some(PathMatch::Prefix("/".into()))
        );
        assert_eq!(r.kind, RouteKind::Grpc);
        assert_eq!(r.id(), "GRPCRoute default/g");
    }

    #[test]
    fn grpc_backends_weights_and_filters_read_as_an_http_routes() {
        let r = grpc_route(json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "greeter", "port": 50051}],
            "rules": [{
                "matches": [{"method": {"service": "helloworld.Greeter", "method": "SayHello"}}],
                "filters": [
                    {"type": "RequestHeaderModifier",
                     "requestHeaderModifier": {"set": [{"name": "X-Canary", "value": "1"}]}},
                    {"type": "ResponseHeaderModifier",
                     "responseHeaderModifier": {"remove": ["x-internal"]}},
                    {"type": "RequestMirror", "requestMirror":
                        {"backendRef": {"name": "greeter-shadow", "port": 50051}, "percent": 25}},
                ],
                "backendRefs": [
                    {"name": "greeter-v1", "port": 50051, "weight": 90},
                    {"name": "greeter-v2", "port": 50051, "weight": 10},
                ],
            }],
        }));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let rule = &r.result.as_ref().unwrap()[0];
        let weights: Vec<(&str, u32)> = rule
            .backends
            .iter()
            .map(|(b, w, _)| (b.service.name.as_str(), *w))
            .collect();
        assert_eq!(weights, [("greeter-v1", 90), ("greeter-v2", 10)]);
        assert_eq!(rule.backends[1].2, "spec.rules[0].backendRefs[1]");
        assert_eq!(
            rule.rule.request_headers.as_ref().unwrap().set,
            [("x-canary".to_string(), "1".to_string())]
        );
        assert_eq!(
            rule.rule.response_headers.as_ref().unwrap().remove,
            ["x-internal"]
        );
        assert_eq!(rule.mirrors[0].0.service.name, "greeter-shadow");
        assert_eq!(rule.mirrors[0].1, 250_000);
        assert_eq!(
            r.parents[0].parent,
            Parent::Service(ServiceRef {
                namespace: "default".into(),
                name: "greeter".into()
            })
        );
    }

    #[test]
    fn bad_grpc_matches_name_the_field_and_refuse_the_route() {
        let error = |m: serde_json::Value| {
            let r = grpc_route(json!({"rules": [{"matches": [{"headers": []}, m]}]}));
            r.result.unwrap_err().to_string()
        };
        assert_eq!(
            error(json!({"method": {"type": "Exact"}})),
            "GRPCRoute default/g: spec.rules[0].matches[1].method: has neither service nor \
             method: expected at least one of them (or no method match, which matches every \
             call)"
        );
        assert_eq!(
            error(json!({"method": {"service": "", "method": ""}})),
            error(json!({"method": {}})),
            "empty is absent"
        );
        assert!(
            error(json!({"method": {"service": "hello world"}})).starts_with(
                "GRPCRoute default/g: spec.rules[0].matches[1].method.service: \"hello world\" is \
             not a gRPC service name: expected dot-separated parts"
            )
        );
        assert!(error(json!({"method": {"service": "a..b"}})).contains("method.service"));
        assert!(
            error(json!({"method": {"service": "helloworld.Greeter", "method": "Say/Hello"}}))
                .starts_with(
                "GRPCRoute default/g: spec.rules[0].matches[1].method.method: \"Say/Hello\" is \
                 not a gRPC method name"
            )
        );
        let e = error(json!({"method": {"type": "RegularExpression", "service": "(unclosed"}}));
        assert!(
            e.starts_with(
                "GRPCRoute default/g: spec.rules[0].matches[1].method.service: \"(unclosed\" is \
                 not a valid regular expression"
            ),
            "{e}"
        );
        let e = error(json!({"method": {"type": "Prefix", "service": "a"}}));
        assert!(
            e.starts_with("GRPCRoute default/g: spec.rules[0].matches[1].method.type: unknown variant `Prefix`"),
            "{e}"
        );
        let e = error(json!({"headers": [{"name": "bad name", "value": "x"}]}));
        assert!(
            e.starts_with("GRPCRoute default/g: spec.rules[0].matches[1].headers[0].name:"),
            "{e}"
        );
        // A filter GRPCRoute does not have.
        let r = grpc_route(json!({"rules": [{"filters": [{"type": "URLRewrite",
            "urlRewrite": {"hostname": "x"}}]}]}));
        let e = r.result.unwrap_err().to_string();
        assert!(
            e.starts_with(
                "GRPCRoute default/g: spec.rules[0].filters[0].type: unknown variant `URLRewrite`"
            ),
            "{e}"
        );
        // The kind must be the one parsed.
        let r = parse_grpc_route(&json!({
            "apiVersion": GATEWAY_API_VERSION, "kind": "HTTPRoute",
            "metadata": {"name": "g"}, "spec": {},
        }));
        assert_eq!(
            r.result.unwrap_err().to_string(),
            "GRPCRoute default/g: kind: \"HTTPRoute\" is not \"GRPCRoute\""
        );
    }

    #[test]
    fn http_listeners_take_grpc_routes_unless_their_kinds_say_otherwise() {
        let gw = |listener: serde_json::Value| {
            parse_gateway(&json!({
                "apiVersion": GATEWAY_API_VERSION, "kind": GATEWAY_KIND,
                "metadata": {"name": "gw"},
                "spec": {"gatewayClassName": "trellis", "listeners": [listener]},
            }))
            .listeners
            .remove(0)
            .takes
        };
        let both = vec![RouteKind::Http, RouteKind::Grpc];
        assert_eq!(
            gw(json!({"name": "a", "port": 80, "protocol": "HTTP"})),
            both
        );
        assert_eq!(
            gw(json!({"name": "a", "port": 80, "protocol": "HTTP",
                      "allowedRoutes": {"kinds": [{"kind": "GRPCRoute"}]}})),
            [RouteKind::Grpc]
        );
        assert!(gw(json!({"name": "a", "port": 443, "protocol": "HTTPS"})).is_empty());
    }
}

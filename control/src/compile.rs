//! Model + address -> what a proxy is told. Pure (no I/O, no clock), so every answer the control
//! plane can give is a golden file under `testdata/compile/`, and `describe` prints exactly what
//! the server streams.
//!
//! Routes: a Service port's answer carries the HTTPRoutes or GRPCRoutes attached to it (and a
//! Gateway's answer those attached to the Gateway), flattened into one table of matches sorted by
//! Gateway API precedence, the rules they pick, and every backend those rules send or mirror to,
//! each compiled as a destination of its own (endpoints and policy, no routes). A GRPCRoute's
//! rules are an HTTPRoute's by then ([`crate::route`]), so the proxy needs nothing of its own.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use config::api::{
    self, Destination, Endpoint, Mirror, PathMatch, Policy, Routes, ServiceRef, WeightedBackend,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{Model, PortRef};
use crate::route::{
    BackendRef, Parent, ParsedRoute, RouteError, RouteKind, RouteProblem, MAX_MATCHES,
};

/// The Service port at `address` with its ready endpoints and policy; `None` when no Service
/// port has that ClusterIP:port (the proxy then forwards to the address as it is).
///
/// Endpoints: every address of every EndpointSlice endpoint labelled for the Service whose
/// `conditions.ready` is not `false`, on the slice port named like the Service port, of the same
/// IP family as `address` (as kube-proxy does); sorted, one entry per address.
///
/// `routes`: see [`compile_routes`]; `None` when no route is attached to this Service port.
pub fn compile(model: &Model, address: SocketAddr) -> Option<Destination> {
    compile_with_reports(model, address, &mut Vec::new())
}

/// [`compile`], and the problems found resolving the routes' references (missing backends and
/// HTTPFaults, a full table) into `reports`.
pub fn compile_with_reports(
    model: &Model,
    address: SocketAddr,
    reports: &mut Vec<RouteError>,
) -> Option<Destination> {
    let port = model.port(address)?;
    let v4 = model_ip_is_v4(address.ip());
    let mut d = destination(model, port, v4);
    d.routes = compile_routes(
        model,
        &Parent::Service(port.service.clone()),
        Some((port.port, port.port_name.as_deref())),
        Some(v4),
        reports,
    );
    Some(d)
}

/// What a gateway proxy is told about Gateway `gateway`: `None` unless it exists and is of class
/// `trellis`; else its routes (an empty table when none is attached: every request is 404 `NR`).
pub fn compile_gateway(model: &Model, gateway: &ServiceRef) -> Option<Routes> {
    compile_gateway_with_reports(model, gateway, &mut Vec::new())
}

/// [`compile_gateway`], with the resolution problems (see [`compile_with_reports`]).
pub fn compile_gateway_with_reports(
    model: &Model,
    gateway: &ServiceRef,
    reports: &mut Vec<RouteError>,
) -> Option<Routes> {
    if !model.gateway(gateway)?.is_ours() {
        return None;
    }
    Some(
        compile_routes(
            model,
            &Parent::Gateway(gateway.clone()),
            None,
            None,
            reports,
        )
        .unwrap_or_default(),
    )
}

/// A Service port's endpoints (of one IP family) and policy, without routes.
fn destination(model: &Model, port: &PortRef, v4: bool) -> Destination {
    let mut endpoints = BTreeSet::new();
    for slice in model.slices(&port.service) {
        collect(slice, port, v4, &mut endpoints);
    }
    let mut endpoints: Vec<Endpoint> = endpoints.into_iter().collect();
    // One entry per address (the BTreeSet kept the one with the smallest pod name).
    endpoints.dedup_by(|b, a| a.address == b.address);
    Destination {
        service: port.service.clone(),
        port: port.port,
        endpoints,
        policy: policy(model, &port.service),
        routes: None,
    }
}

fn policy(model: &Model, service: &ServiceRef) -> Policy {
    match model.winning_policy(service) {
        Some(p) => Policy {
            source: Some(p.id()),
            ..p.result.clone().unwrap_or_default()
        },
        None => Policy::default(),
    }
}

/// Does this route apply to `parent` (for a Service, to its port `port`)?
fn attached(route: &ParsedRoute, parent: &Parent, port: Option<(u16, Option<&str>)>) -> bool {
    route
        .parents
        .iter()
        .any(|p| p.parent == *parent && port.is_none_or(|(n, name)| p.applies_to_port(n, name)))
}

/// For a Gateway parent: whether one of the route's parentRefs to it is taken by its listeners
/// (the first refusal otherwise). A Service takes every route that names it.
pub fn gateway_admits(
    model: &Model,
    route: &ParsedRoute,
    parent: &Parent,
) -> Result<(), (&'static str, String)> {
    let Parent::Gateway(g) = parent else {
        return Ok(());
    };
    let Some(gateway) = model.gateway(g) else {
        return Ok(()); // not served at all (compile_gateway answers None)
    };
    let mut first = None;
    for p in route.parents.iter().filter(|p| p.parent == *parent) {
        match gateway.admits(route.kind, &route.namespace, p) {
            Ok(()) => return Ok(()),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// The routes attached to `parent` (for a Service: the ones whose parentRef applies to Service
/// port `port`), compiled into one table; `None` when no valid route is attached.
///
/// Precedence (Gateway API's, with RegularExpression placed between Exact and PathPrefix): an
/// Exact path first, then a RegularExpression path, then PathPrefix by longest prefix; then a
/// match with a method before one without; then the most header matches; then the most query
/// matches; ties go to the oldest route (`creationTimestamp`), then `namespace/name`, then the
/// rule's index, then the match's.
///
/// A GRPCRoute's matches are ranked by Gateway API's GRPCRoute precedence instead (the most
/// characters of exactly matched service, then of method, then the most header matches; then
/// the order above), as they never share a table with an HTTPRoute's: Gateway API forbids
/// merging the two kinds, so when both are attached here one kind is applied and every route of
/// the other is reported `Conflicted` and left out (see [`winning_kind`]).
///
/// Refused routes are left out (the model reports them); so is any route that would take the
/// table past [`MAX_MATCHES`] (reported here). A backend is `family`'s endpoints of that Service
/// port (`None`: the backend Service's own primary family, for a Gateway).
pub fn compile_routes(
    model: &Model,
    parent: &Parent,
    port: Option<(u16, Option<&str>)>,
    family: Option<bool>,
    reports: &mut Vec<RouteError>,
) -> Option<Routes> {
    let mut routes: Vec<&ParsedRoute> = model
        .routes_for(parent)
        .filter(|r| r.result.is_ok() && attached(r, parent, port))
        .filter(|r| match gateway_admits(model, r, parent) {
            Ok(()) => true,
            Err((reason, why)) => {
                reports.push(RouteError {
                    object: r.id(),
                    field: "spec.parentRefs".into(),
                    problem: RouteProblem::NotAttached { reason, why },
                });
                false
            }
        })
        .collect();
    if routes.is_empty() {
        return None;
    }
    routes.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
    if let Some((winner, why)) = winning_kind(&routes, parent, port) {
        routes.retain(|r| {
            if r.kind == winner {
                return true;
            }
            reports.push(RouteError {
                object: r.id(),
                field: "spec.parentRefs".into(),
                problem: RouteProblem::Conflicted { why: why.clone() },
            });
            false
        });
    }
    let mut table = Routes::default();
    let mut backends: BTreeMap<BackendRef, usize> = BTreeMap::new();
    let mut backend_list: Vec<Destination> = Vec::new();
    let mut keyed = Vec::new();
    let mut total = 0;
    for (ri, route) in routes.iter().enumerate() {
        let Ok(rules) = &route.result else { continue };
        let n: usize = rules.iter().map(|r| r.matches.len()).sum();
        if total + n > MAX_MATCHES {
            reports.push(RouteError {
                object: route.id(),
                field: "spec.rules".into(),
                problem: RouteProblem::ParentFull {
                    parent: match port {
                        Some((p, _)) => format!("{parent} port {p}"),
                        None => parent.to_string(),
                    },
                },
            });
            continue;
        }
        total += n;
        let mut backend = |b: &BackendRef, field: &str, reports: &mut Vec<RouteError>| {
            if let Some(i) = backends.get(b) {
                // Each reference to a missing backend is reported, with its own field.
                if let Some(problem) = backend_problem(model, b) {
                    reports.push(RouteError {
                        object: route.id(),
                        field: field.to_string(),
                        problem,
                    });
                }
                return *i;
            }
            let (d, problem) = backend_destination(model, b, family);
            if let Some(problem) = problem {
                reports.push(RouteError {
                    object: route.id(),
                    field: field.to_string(),
                    problem,
                });
            }
            let i = backend_list.len();
            backend_list.push(d);
            backends.insert(b.clone(), i);
            i
        };
        for (i, rule) in rules.iter().enumerate() {
            let index = table.rules.len();
            let mut r = rule.rule.clone();
            r.source = format!("{}#{i}", route.id());
            for (b, weight, field) in &rule.backends {
                // A missing Service or port: its share is answered 500 (Gateway API), not sent
                // to the other backends and not to a backend without endpoints (503).
                if let Some(problem) = backend_problem(model, b) {
                    reports.push(RouteError {
                        object: route.id(),
                        field: field.clone(),
                        problem,
                    });
                    r.invalid_weight += weight;
                    continue;
                }
                r.backends.push(WeightedBackend {
                    backend: backend(b, field, reports),
                    weight: *weight,
                });
            }
            for (b, per_million, field) in &rule.mirrors {
                r.mirrors.push(Mirror {
                    backend: backend(b, field, reports),
                    per_million: *per_million,
                });
            }
            if let Some((name, field)) = &rule.fault {
                r.fault = Some(fault(model, route, name, field, reports));
            }
            table.rules.push(r);
            for (j, m) in rule.matches.iter().enumerate() {
                let mut m = m.clone();
                m.rule = index;
                let grpc = rule.grpc_precedence.get(j).copied();
                keyed.push(((precedence(&m, grpc), ri, i, j), m));
            }
        }
    }
    keyed.sort_by_key(|(key, _)| *key);
    table.backends = backend_list;
    table.matches = keyed.into_iter().map(|(_, m)| m).collect();
    Some(table)
}

/// When routes of both kinds are attached to one parent (for a Service, to one port): the kind
/// applied there, and why the other is not. `routes` is in [`ParsedRoute::precedence`] order.
///
/// - A Service port: GRPCRoutes (GAMMA, GEP-1426: "GRPCRoute, then HTTPRoute" by route type
///   specificity).
/// - A Gateway: the kind of the oldest route (then by `namespace/name`), as GRPCRoute's spec
///   says of an HTTPRoute and a GRPCRoute on one listener whose hostnames intersect: Trellis
///   serves a Gateway's routes as one table and does not read `hostnames`, so every two routes
///   of it intersect.
///
/// `None` when the routes are all of one kind; also for a Service without a port (the status
/// writer's look at a whole Service, which asks again per port).
pub fn winning_kind(
    routes: &[&ParsedRoute],
    parent: &Parent,
    port: Option<(u16, Option<&str>)>,
) -> Option<(RouteKind, String)> {
    let first = routes.first()?;
    let other = routes.iter().find(|r| r.kind != first.kind)?;
    match parent {
        Parent::Service(s) => {
            let (port, _) = port?;
            let grpc = if first.kind == RouteKind::Grpc {
                first
            } else {
                other
            };
            Some((
                RouteKind::Grpc,
                format!(
                    "{} is attached to Service {s} port {port} too, and a GRPCRoute wins over \
                     an HTTPRoute on a Service port (Gateway API GEP-1426)",
                    grpc.named()
                ),
            ))
        }
        Parent::Gateway(g) => Some((
            first.kind,
            format!(
                "{} is attached to Gateway {g} too, and is older (or first by namespace/name): \
                 a Gateway listener takes either HTTPRoutes or GRPCRoutes for a hostname, and \
                 Trellis does not read hostnames",
                first.named()
            ),
        )),
    }
}

/// The sort key of one match (smaller first); see [`compile_routes`]. `grpc`: a GRPCRoute
/// match's [`crate::route::ParsedRule::grpc_precedence`] (`None` for an HTTPRoute's).
#[allow(clippy::type_complexity)]
fn precedence(
    m: &api::RouteMatch,
    grpc: Option<(usize, usize)>,
) -> (
    (Reverse<usize>, Reverse<usize>, Reverse<usize>),
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
) {
    let (rank, len) = match &m.path {
        Some(PathMatch::Exact(p)) => (0, p.len()),
        Some(PathMatch::Regex(_)) => (1, 0),
        Some(PathMatch::Prefix(p)) => (2, p.len()),
        None => (2, 1),
    };
    // GRPCRoute's own order first; it is all zeros for every HTTPRoute match (no GRPCRoute
    // shares their table), which leaves HTTPRoute's order as it was.
    let grpc = grpc.map_or((0, 0, 0), |(service, method)| {
        (service, method, m.headers.len())
    });
    (
        (Reverse(grpc.0), Reverse(grpc.1), Reverse(grpc.2)),
        rank,
        Reverse(len),
        m.method.is_none(),
        Reverse(m.headers.len()),
        Reverse(m.query.len()),
    )
}

/// The rule's HTTPFault; a missing or refused one is a 500 abort for every request, as Gateway
/// API says of a filter that cannot be resolved, so the misconfiguration is loud.
fn fault(
    model: &Model,
    route: &ParsedRoute,
    name: &str,
    field: &str,
    reports: &mut Vec<RouteError>,
) -> api::Fault {
    let key = ServiceRef {
        namespace: route.namespace.clone(),
        name: name.to_string(),
    };
    let problem = match model.fault(&key).map(|f| &f.result) {
        Some(Ok(f)) => return f.clone(),
        Some(Err(e)) => RouteProblem::FaultInvalid {
            namespace: key.namespace,
            name: key.name,
            error: e.to_string(),
        },
        None => RouteProblem::FaultNotFound {
            namespace: key.namespace,
            name: key.name,
        },
    };
    reports.push(RouteError {
        object: route.id(),
        field: field.to_string(),
        problem,
    });
    api::Fault {
        delay: None,
        abort: Some(api::Abort {
            status: 500,
            per_million: 1_000_000,
        }),
    }
}

/// Why a backend has no endpoints by construction: its Service or port does not exist.
fn backend_problem(model: &Model, b: &BackendRef) -> Option<RouteProblem> {
    match model.service(&b.service) {
        None => Some(RouteProblem::BackendNotFound {
            service: b.service.clone(),
        }),
        Some(svc) if service_port(svc, b.port).is_none() => {
            Some(RouteProblem::BackendPortNotFound {
                service: b.service.clone(),
                port: b.port,
            })
        }
        Some(_) => None,
    }
}

/// A backend as a destination of its own; with no endpoints when its Service or port does not
/// exist (a mirror to it sends nothing), and then the problem.
fn backend_destination(
    model: &Model,
    b: &BackendRef,
    family: Option<bool>,
) -> (Destination, Option<RouteProblem>) {
    if let Some(svc) = model.service(&b.service) {
        if let Some(port_name) = service_port(svc, b.port) {
            let port = PortRef {
                service: b.service.clone(),
                port: b.port,
                port_name,
            };
            let v4 = family.unwrap_or_else(|| primary_is_v4(svc));
            return (destination(model, &port, v4), None);
        }
    }
    (
        Destination {
            service: b.service.clone(),
            port: b.port,
            endpoints: Vec::new(),
            policy: policy(model, &b.service),
            routes: None,
        },
        backend_problem(model, b),
    )
}

/// The name (`None` when unnamed) of the Service's TCP port `port`, if it has one.
fn service_port(svc: &Service, port: u16) -> Option<Option<String>> {
    svc.spec
        .as_ref()?
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == i32::from(port) && p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| p.name.clone().filter(|n| !n.is_empty()))
}

/// A Service's first IP family (`ipFamilies[0]`, else the family of its ClusterIP) is IPv4.
fn primary_is_v4(svc: &Service) -> bool {
    let Some(spec) = &svc.spec else { return true };
    if let Some(f) = spec.ip_families.as_ref().and_then(|f| f.first()) {
        return f != "IPv6";
    }
    spec.cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .is_none_or(|ip| ip.is_ipv4())
}

/// The problems of the routes attached to one parent (for a Service, to its port `port`): the
/// refusals and warnings of each route, then what compiling them found.
pub fn parent_reports(
    model: &Model,
    parent: &Parent,
    port: Option<(u16, Option<&str>)>,
) -> Vec<RouteError> {
    let mut out = Vec::new();
    let mut routes: Vec<&ParsedRoute> = model
        .routes_for(parent)
        .filter(|r| attached(r, parent, port))
        .collect();
    routes.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
    for r in routes {
        out.extend(r.result.as_ref().err().cloned());
        out.extend(r.warnings.iter().cloned());
    }
    compile_routes(model, parent, port, None, &mut out);
    dedup(out)
}

/// Every route, HTTPFault and Gateway problem: each refused or warned object once (by key), then
/// what compiling each parent found (missing backends and faults, full tables).
pub fn route_reports(model: &Model) -> Vec<RouteError> {
    let mut out = Vec::new();
    for r in model.routes() {
        out.extend(r.result.as_ref().err().cloned());
        out.extend(r.warnings.iter().cloned());
    }
    out.extend(
        model
            .faults()
            .filter_map(|f| f.result.as_ref().err().cloned()),
    );
    out.extend(
        model
            .gateways()
            .filter_map(|g| g.class.as_ref().err().cloned()),
    );
    for parent in model.parents() {
        match parent {
            Parent::Service(s) => {
                let Some(svc) = model.service(s) else {
                    continue;
                };
                let ports = svc.spec.iter().flat_map(|s| s.ports.iter().flatten());
                for p in ports {
                    let Ok(n) = u16::try_from(p.port) else {
                        continue;
                    };
                    let name = p.name.as_deref().filter(|n| !n.is_empty());
                    compile_routes(model, parent, Some((n, name)), None, &mut out);
                }
            }
            Parent::Gateway(_) => {
                compile_routes(model, parent, None, None, &mut out);
            }
        }
    }
    dedup(out)
}

/// Each problem once, in first-seen order.
fn dedup(reports: Vec<RouteError>) -> Vec<RouteError> {
    let mut seen = BTreeSet::new();
    reports
        .into_iter()
        .filter(|r| seen.insert(r.to_string()))
        .collect()
}

fn model_ip_is_v4(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    }
}

fn collect(slice: &EndpointSlice, port: &PortRef, v4: bool, out: &mut BTreeSet<Endpoint>) {
    let Some(target) = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().filter(|n| !n.is_empty()) == port.port_name.as_deref())
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
    else {
        return;
    };
    for ep in &slice.endpoints {
        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.clone());
        for a in &ep.addresses {
            let Ok(ip) = a.parse::<IpAddr>() else {
                continue;
            };
            if ip.is_ipv4() != v4 {
                continue;
            }
            out.insert(Endpoint {
                address: SocketAddr::new(ip, target),
                pod: pod.clone(),
            });
        }
    }
}

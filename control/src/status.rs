//! What each HTTPRoute's and GRPCRoute's `status.parents` should say, as Gateway API asks of the
//! controller of each parent: per parentRef an `Accepted` and a `ResolvedRefs` condition.
//!
//! This module exists so that the answer is a pure function of the model (tested here without a
//! cluster), and so that writing it ([`crate::source::kube`]) only compares and patches. The
//! conditions say what the proxies are really told:
//! - `Accepted` is `False` when the route is refused (`UnsupportedValue`, the field and the
//!   problem as the message), when its parent Service does not exist (`NoMatchingParent`), when
//!   a Gateway's listeners do not take it (`NoMatchingParent`: no listener of that sectionName or
//!   port; `NotAllowedByListeners`: not HTTP, or another namespace than `allowedRoutes` allows),
//!   when routes of the other kind win the parent (`Conflicted`: an HTTPRoute on a Service port
//!   a GRPCRoute is attached to too, or on a Gateway whose oldest route is a GRPCRoute, and the
//!   other way round; see [`crate::compile::winning_kind`]; on a Service, only when that is so
//!   on every port the parentRef applies to, the others being named in the message), or when the
//!   parent's table is full ([`crate::route::MAX_MATCHES`]); otherwise `True`, with the fields
//!   Trellis ignores in the message;
//! - `ResolvedRefs` is `False` when a backendRef, a mirror or an `HTTPFault` cannot be resolved
//!   (`BackendNotFound`, `RefNotPermitted`, `InvalidKind`), every such reference in the message.
//!
//! Gateways of another class are left alone: their controller writes their parents' entries.
//! Entries of other controllers (another `controllerName`) are kept as they are.

use serde_json::{json, Value};

use crate::compile::compile_routes;
use crate::model::Model;
use crate::route::{
    Parent, ParentRef, ParsedRoute, RouteError, RouteProblem, GATEWAY_GROUP, GATEWAY_KIND,
};

/// The `controllerName` of Trellis's entries in `status.parents`.
pub const CONTROLLER_NAME: &str = "trellis.dev/control";

/// One condition, as compared (its transition time aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What one parentRef's entry should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentStatus {
    pub parent: ParentRef,
    pub accepted: Condition,
    pub resolved_refs: Condition,
}

/// The entries Trellis owns in a route's `status.parents`, one per distinct parentRef it
/// serves, in the route's order.
pub fn route_status(model: &Model, route: &ParsedRoute) -> Vec<ParentStatus> {
    let mut out: Vec<ParentStatus> = Vec::new();
    for p in &route.parents {
        if out.iter().any(|s| s.parent == *p) {
            continue;
        }
        let mut refused_by_gateway = None;
        let missing = match &p.parent {
            Parent::Gateway(g) => {
                let Some(gateway) = model.gateway(g).filter(|g| g.is_ours()) else {
                    continue;
                };
                refused_by_gateway = gateway.admits(route.kind, &route.namespace, p).err();
                None
            }
            Parent::Service(s) => model
                .service(s)
                .is_none()
                .then(|| format!("Service {s} does not exist")),
        };
        // What compiling this parent's table found about this route (missing backends and
        // faults, a full table).
        let mut found = Vec::new();
        if route.result.is_ok() && missing.is_none() {
            compile_routes(model, &p.parent, None, None, &mut found);
        }
        found.retain(|e| e.object == route.id());
        let full = found
            .iter()
            .find(|e| matches!(e.problem, RouteProblem::ParentFull { .. }));
        // Routes of the other kind win a Gateway as a whole, and a Service port by port.
        let (conflicts, ports) = match &p.parent {
            Parent::Gateway(_) => (
                found
                    .iter()
                    .filter(|e| matches!(e.problem, RouteProblem::Conflicted { .. }))
                    .cloned()
                    .collect(),
                1,
            ),
            Parent::Service(_) if route.result.is_ok() && missing.is_none() => {
                service_conflicts(model, route, p)
            }
            Parent::Service(_) => (Vec::new(), 0),
        };
        let conflicted = (!conflicts.is_empty() && conflicts.len() == ports).then(|| {
            conflicts
                .iter()
                .map(RouteError::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        });
        let accepted = match (&route.result, missing, refused_by_gateway, full, conflicted) {
            (Err(e), ..) => refused("UnsupportedValue", e.to_string()),
            (_, Some(m), ..) => refused("NoMatchingParent", m),
            (_, _, Some((reason, why)), ..) => refused(reason, why),
            (_, _, _, Some(e), _) => refused("UnsupportedValue", e.to_string()),
            (.., Some(why)) => refused("Conflicted", why),
            _ => {
                // Left out on some of the Service's ports only: said, but accepted.
                let ignored: Vec<String> = route
                    .warnings
                    .iter()
                    .chain(&conflicts)
                    .filter(|w| ref_reason(&w.problem).is_none())
                    .map(RouteError::to_string)
                    .collect();
                Condition {
                    kind: "Accepted",
                    ok: true,
                    reason: "Accepted",
                    message: if ignored.is_empty() {
                        "the route applies".into()
                    } else {
                        format!("the route applies; {}", ignored.join("; "))
                    },
                }
            }
        };
        let unresolved: Vec<&RouteError> = route
            .warnings
            .iter()
            .chain(&found)
            .filter(|e| ref_reason(&e.problem).is_some())
            .collect();
        let resolved_refs = match unresolved.first() {
            None => Condition {
                kind: "ResolvedRefs",
                ok: true,
                reason: "ResolvedRefs",
                message: "every reference resolves".into(),
            },
            Some(first) => Condition {
                kind: "ResolvedRefs",
                ok: false,
                reason: ref_reason(&first.problem).unwrap_or("BackendNotFound"),
                message: unresolved
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        };
        out.push(ParentStatus {
            parent: p.clone(),
            accepted,
            resolved_refs,
        });
    }
    out
}

/// A route's `Conflicted` problems on the ports of Service parent `p` it applies to (one per
/// port where routes of the other kind win), and the number of those ports.
fn service_conflicts(
    model: &Model,
    route: &ParsedRoute,
    p: &ParentRef,
) -> (Vec<RouteError>, usize) {
    let Parent::Service(s) = &p.parent else {
        return (Vec::new(), 0);
    };
    let ports = model
        .service(s)
        .and_then(|svc| svc.spec.as_ref())
        .and_then(|spec| spec.ports.as_ref());
    let mut conflicts = Vec::new();
    let mut n = 0;
    for sp in ports.into_iter().flatten() {
        let Ok(port) = u16::try_from(sp.port) else {
            continue;
        };
        let name = sp.name.as_deref().filter(|n| !n.is_empty());
        if !p.applies_to_port(port, name) {
            continue;
        }
        n += 1;
        let mut found = Vec::new();
        compile_routes(model, &p.parent, Some((port, name)), None, &mut found);
        conflicts.extend(found.into_iter().find(|e| {
            e.object == route.id() && matches!(e.problem, RouteProblem::Conflicted { .. })
        }));
    }
    (conflicts, n)
}

fn refused(reason: &'static str, message: String) -> Condition {
    Condition {
        kind: "Accepted",
        ok: false,
        reason,
        message,
    }
}

/// The `ResolvedRefs` reason of a reference that does not resolve (`None`: not a reference
/// problem).
fn ref_reason(p: &RouteProblem) -> Option<&'static str> {
    match p {
        RouteProblem::BackendNotFound { .. }
        | RouteProblem::BackendPortNotFound { .. }
        | RouteProblem::FaultNotFound { .. }
        | RouteProblem::FaultInvalid { .. } => Some("BackendNotFound"),
        RouteProblem::RefNotPermitted { .. } => Some("RefNotPermitted"),
        RouteProblem::InvalidKind { .. } => Some("InvalidKind"),
        _ => None,
    }
}

/// A parentRef as Gateway API writes it in `status.parents[].parentRef`.
pub fn parent_ref_json(route_namespace: &str, p: &ParentRef) -> Value {
    let (group, kind, target) = match &p.parent {
        Parent::Service(s) => ("", "Service", s),
        Parent::Gateway(g) => (GATEWAY_GROUP, GATEWAY_KIND, g),
    };
    let mut r = json!({"group": group, "kind": kind, "name": target.name});
    if target.namespace != route_namespace {
        r["namespace"] = json!(target.namespace);
    }
    if let Some(port) = p.port {
        r["port"] = json!(port);
    }
    if let Some(section) = &p.section {
        r["sectionName"] = json!(section);
    }
    r
}

/// The whole `status.parents` to write: the entries of other controllers as `current` has them,
/// then Trellis's. A condition keeps its `lastTransitionTime` while its status is unchanged;
/// otherwise it is `now`.
pub fn parents_json(
    route: &ParsedRoute,
    want: &[ParentStatus],
    generation: Option<i64>,
    current: &[Value],
    now: &Value,
) -> Vec<Value> {
    let mut out: Vec<Value> = current
        .iter()
        .filter(|e| e.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME))
        .cloned()
        .collect();
    for s in want {
        let parent_ref = parent_ref_json(&route.namespace, &s.parent);
        let before = current.iter().find(|e| {
            e.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                && e.get("parentRef") == Some(&parent_ref)
        });
        let conditions: Vec<Value> = [&s.accepted, &s.resolved_refs]
            .into_iter()
            .map(|c| {
                let status = if c.ok { "True" } else { "False" };
                let since = before
                    .and_then(|b| b.get("conditions")?.as_array())
                    .and_then(|cs| cs.iter().find(|x| x["type"] == c.kind))
                    .filter(|x| x["status"] == status)
                    .and_then(|x| x.get("lastTransitionTime").cloned())
                    .unwrap_or_else(|| now.clone());
                json!({
                    "type": c.kind,
                    "status": status,
                    "reason": c.reason,
                    "message": c.message,
                    "observedGeneration": generation,
                    "lastTransitionTime": since,
                })
            })
            .collect();
        out.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions,
        }));
    }
    out
}

/// Whether `current` already says what `desired` does (transition times aside).
pub fn says(current: &[Value], desired: &[Value]) -> bool {
    fn strip(v: &[Value]) -> Vec<Value> {
        v.iter()
            .map(|e| {
                let mut e = e.clone();
                if let Some(cs) = e.get_mut("conditions").and_then(Value::as_array_mut) {
                    for c in cs {
                        if let Some(c) = c.as_object_mut() {
                            c.remove("lastTransitionTime");
                        }
                    }
                }
                e
            })
            .collect()
    }
    strip(current) == strip(desired)
}

#[cfg(test)]
mod tests;

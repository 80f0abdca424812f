use serde_json::{json, Value};

use super::*;
use crate::model::{Model, Object};
use crate::route::{parse_gateway, parse_route};

fn service(name: &str, ip: &str) -> Object {
    Object::Service(Box::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap(),
    ))
}

fn route(spec: Value) -> ParsedRoute {
    parse_route(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": spec,
    }))
}

fn gateway(name: &str, class: &str) -> Object {
    Object::Gateway(Box::new(parse_gateway(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"gatewayClassName": class, "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
    }))))
}

/// The model with `objects` and the route, and the route's status.
fn status(objects: Vec<Object>, r: &ParsedRoute) -> Vec<ParentStatus> {
    let mut m = Model::new();
    let mut all = objects;
    all.push(Object::Route(Box::new(r.clone())));
    m.sync(all);
    route_status(&m, r)
}

fn to_reviews(backends: Value) -> Value {
    json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
        "rules": [{"backendRefs": backends}],
    })
}

#[test]
fn a_route_whose_references_resolve_is_accepted_and_resolved() {
    let r = route(to_reviews(json!([{"name": "reviews-v1", "port": 80}])));
    let s = status(
        vec![
            service("reviews", "10.96.0.10"),
            service("reviews-v1", "10.96.0.11"),
        ],
        &r,
    );
    assert_eq!(s.len(), 1);
    assert!(s[0].accepted.ok, "{s:?}");
    assert_eq!(s[0].accepted.reason, "Accepted");
    assert!(s[0].resolved_refs.ok, "{s:?}");
    assert_eq!(
        parent_ref_json("default", &s[0].parent),
        json!({"group": "", "kind": "Service", "name": "reviews", "port": 80})
    );
}

#[test]
fn missing_other_namespace_and_other_kind_backends_are_unresolved_refs() {
    let r = route(to_reviews(json!([
        {"name": "reviews-v1", "port": 80},
        {"name": "reviews-v3", "port": 80},
        {"name": "reviews-v2", "namespace": "other", "port": 80},
        {"group": "example.com", "kind": "Bucket", "name": "b", "port": 80},
    ])));
    let s = status(
        vec![
            service("reviews", "10.96.0.10"),
            service("reviews-v1", "10.96.0.11"),
        ],
        &r,
    );
    assert!(s[0].accepted.ok, "the rest of the route applies: {s:?}");
    let rr = &s[0].resolved_refs;
    assert!(!rr.ok);
    // The first problem names the reason; the message has every one, with its field.
    assert_eq!(rr.reason, "RefNotPermitted", "{rr:?}");
    for part in [
        "spec.rules[0].backendRefs[1]: BackendNotFound: Service default/reviews-v3",
        "spec.rules[0].backendRefs[2]: RefNotPermitted",
        "spec.rules[0].backendRefs[3]: InvalidKind",
    ] {
        assert!(rr.message.contains(part), "{part} in {}", rr.message);
    }
}

#[test]
fn a_refused_route_and_a_missing_parent_are_not_accepted() {
    let mut spec = to_reviews(json!([{"name": "reviews", "port": 80}]));
    spec["rules"][0]["matches"] =
        json!([{"path": {"type": "RegularExpression", "value": "/(unclosed"}}]);
    let s = status(vec![service("reviews", "10.96.0.10")], &route(spec));
    assert!(!s[0].accepted.ok);
    assert_eq!(s[0].accepted.reason, "UnsupportedValue");
    assert!(
        s[0].accepted
            .message
            .contains("spec.rules[0].matches[0].path.value"),
        "{}",
        s[0].accepted.message
    );

    let r = route(to_reviews(json!([{"name": "reviews", "port": 80}])));
    let s = status(vec![], &r);
    assert!(!s[0].accepted.ok);
    assert_eq!(s[0].accepted.reason, "NoMatchingParent");
    assert_eq!(
        s[0].accepted.message,
        "Service default/reviews does not exist"
    );
}

#[test]
fn gateways_of_another_class_are_left_to_their_controller() {
    let r = route(json!({
        "parentRefs": [{"name": "ours"}, {"name": "theirs"}, {"name": "nowhere"}],
        "rules": [{"backendRefs": [{"name": "reviews", "port": 80}]}],
    }));
    let s = status(
        vec![
            service("reviews", "10.96.0.10"),
            gateway("ours", "trellis"),
            gateway("theirs", "istio"),
        ],
        &r,
    );
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        parent_ref_json("default", &s[0].parent),
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ours"})
    );
    assert!(s[0].accepted.ok && s[0].resolved_refs.ok, "{s:?}");
}

#[test]
fn the_written_list_keeps_other_controllers_and_unchanged_transition_times() {
    let r = route(to_reviews(json!([{"name": "reviews-v3", "port": 80}])));
    let want = status(vec![service("reviews", "10.96.0.10")], &r);
    let theirs = json!({"parentRef": {"name": "mesh"}, "controllerName": "istio.io/gateway-controller",
                        "conditions": []});
    let t0 = json!("2026-01-01T00:00:00Z");
    let first = parents_json(&r, &want, Some(1), std::slice::from_ref(&theirs), &t0);
    assert_eq!(first.len(), 2);
    assert_eq!(first[0], theirs);
    assert_eq!(first[1]["controllerName"], CONTROLLER_NAME);
    assert_eq!(first[1]["conditions"][1]["reason"], "BackendNotFound");
    assert_eq!(first[1]["conditions"][1]["observedGeneration"], 1);
    assert!(says(&first, &first));

    // Later, same answer: nothing to write, and the times stay.
    let t1 = json!("2026-01-02T00:00:00Z");
    let again = parents_json(&r, &want, Some(1), &first, &t1);
    assert_eq!(again, first);

    // The backend appears: ResolvedRefs turns True with a new time; Accepted keeps its time.
    let fixed = status(
        vec![
            service("reviews", "10.96.0.10"),
            service("reviews-v3", "10.96.0.13"),
        ],
        &r,
    );
    let next = parents_json(&r, &fixed, Some(1), &first, &t1);
    assert!(!says(&first, &next));
    assert_eq!(next[1]["conditions"][0]["lastTransitionTime"], t0);
    assert_eq!(next[1]["conditions"][1]["status"], "True");
    assert_eq!(next[1]["conditions"][1]["lastTransitionTime"], t1);
}

#[test]
fn a_gateway_takes_routes_by_listener_name_port_protocol_and_namespace() {
    let gw = |listeners: Value| {
        Object::Gateway(Box::new(parse_gateway(&json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "infra"},
            "spec": {"gatewayClassName": "trellis", "listeners": listeners},
        }))))
    };
    let from_default = |parent: Value| {
        parse_route(&json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {"parentRefs": [parent],
                     "rules": [{"backendRefs": [{"name": "reviews", "port": 80}]}]},
        }))
    };
    let reviews = || service("reviews", "10.96.0.10");
    let accepted = |listeners: Value, parent: Value| {
        let s = status(vec![reviews(), gw(listeners)], &from_default(parent));
        let a = &s[0].accepted;
        (a.ok, a.reason, a.message.clone())
    };
    let http_all = json!([{"name": "http", "port": 8088, "protocol": "HTTP",
                           "allowedRoutes": {"namespaces": {"from": "All"}}}]);
    let to_gw = json!({"name": "gw", "namespace": "infra"});

    assert!(accepted(http_all.clone(), to_gw.clone()).0);
    // The default is Same: a route from another namespace is not taken.
    let (ok, reason, why) = accepted(
        json!([{"name": "http", "port": 8088, "protocol": "HTTP"}]),
        to_gw.clone(),
    );
    assert_eq!((ok, reason), (false, "NotAllowedByListeners"));
    assert!(why.contains("from namespace infra only"), "{why}");
    // sectionName and port pick listeners.
    let (ok, reason, why) = accepted(
        http_all.clone(),
        json!({"name": "gw", "namespace": "infra", "sectionName": "https"}),
    );
    assert_eq!((ok, reason), (false, "NoMatchingParent"));
    assert!(why.contains(r#"no listener named "https""#), "{why}");
    assert!(
        accepted(
            http_all.clone(),
            json!({"name": "gw", "namespace": "infra", "port": 8088})
        )
        .0
    );
    // Not HTTP, or by Namespace selector: not taken, and said why.
    let (ok, reason, _) = accepted(
        json!([{"name": "tls", "port": 443, "protocol": "TLS",
                "allowedRoutes": {"namespaces": {"from": "All"}}}]),
        to_gw.clone(),
    );
    assert_eq!((ok, reason), (false, "NotAllowedByListeners"));
    let (ok, _, why) = accepted(
        json!([{"name": "http", "port": 80, "protocol": "HTTP",
                "allowedRoutes": {"namespaces": {"from": "Selector",
                                                 "selector": {"matchLabels": {"a": "b"}}}}}]),
        to_gw,
    );
    assert!(!ok);
    assert!(why.contains("Namespace selector"), "{why}");

    // A route the listeners do not take is not in the Gateway's table.
    let mut m = Model::new();
    let r = from_default(json!({"name": "gw", "namespace": "infra"}));
    m.sync([
        reviews(),
        gw(json!([{"name": "http", "port": 80, "protocol": "HTTP"}])),
        Object::Route(Box::new(r)),
    ]);
    let g = config::api::ServiceRef {
        namespace: "infra".into(),
        name: "gw".into(),
    };
    let mut reports = Vec::new();
    let routes = crate::compile::compile_gateway_with_reports(&m, &g, &mut reports).unwrap();
    assert!(routes.rules.is_empty(), "{routes:?}");
    assert!(
        reports[0].to_string().contains("NotAllowedByListeners"),
        "{reports:?}"
    );
}

fn grpc_route(name: &str, created: &str, parent: Value) -> ParsedRoute {
    crate::route::parse_grpc_route(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": {"parentRefs": [parent],
                 "rules": [{"matches": [{"method": {"service": "helloworld.Greeter"}}],
                            "backendRefs": [{"name": "reviews", "port": 80}]}]},
    }))
}

fn http_route(name: &str, created: &str, parent: Value) -> ParsedRoute {
    parse_route(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": {"parentRefs": [parent],
                 "rules": [{"backendRefs": [{"name": "reviews", "port": 80}]}]},
    }))
}

/// Every route's status in a model of `objects` and `routes`.
fn statuses(objects: Vec<Object>, routes: &[&ParsedRoute]) -> Vec<Vec<ParentStatus>> {
    let mut m = Model::new();
    let mut all = objects;
    all.extend(routes.iter().map(|r| Object::Route(Box::new((*r).clone()))));
    m.sync(all);
    routes.iter().map(|r| route_status(&m, r)).collect()
}

#[test]
fn a_grpc_route_is_accepted_and_resolved_as_an_http_route_is() {
    let g = grpc_route(
        "g",
        "2026-01-01T00:00:00Z",
        json!({"group": "", "kind": "Service", "name": "reviews", "port": 80}),
    );
    let s = status(vec![service("reviews", "10.96.0.10")], &g);
    assert_eq!(s.len(), 1);
    assert!(s[0].accepted.ok && s[0].resolved_refs.ok, "{s:?}");
    // Its missing backend is said as an HTTPRoute's, named as a GRPCRoute.
    let s = status(vec![], &g);
    assert_eq!(s[0].accepted.reason, "NoMatchingParent");
}

#[test]
fn on_a_service_port_grpc_routes_win_and_http_routes_are_conflicted() {
    let svc = || {
        Object::Service(Box::new(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "reviews", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.10",
                         "ports": [{"name": "http", "port": 80}, {"name": "grpc", "port": 9090}]}
            }))
            .unwrap(),
        ))
    };
    let on = |port: Option<u16>| match port {
        Some(p) => json!({"group": "", "kind": "Service", "name": "reviews", "port": p}),
        None => json!({"group": "", "kind": "Service", "name": "reviews"}),
    };
    // Both on port 80: the GRPCRoute wins, though it is newer.
    let h = http_route("h", "2026-01-01T00:00:00Z", on(Some(80)));
    let g = grpc_route("g", "2026-02-01T00:00:00Z", on(Some(80)));
    let s = statuses(vec![svc()], &[&h, &g]);
    let (hs, gs) = (&s[0][0], &s[1][0]);
    assert!(gs.accepted.ok, "{gs:?}");
    assert!(!hs.accepted.ok);
    assert_eq!(hs.accepted.reason, "Conflicted");
    assert_eq!(
        hs.accepted.message,
        "default/h: spec.parentRefs: Conflicted: GRPCRoute default/g is attached to Service \
         default/reviews port 80 too, and a GRPCRoute wins over an HTTPRoute on a Service port \
         (Gateway API GEP-1426); this route is not applied there"
    );

    // The HTTPRoute on every port, the GRPCRoute on 9090 only: the HTTPRoute still applies on
    // port 80 (accepted, the other port named).
    let h = http_route("h", "2026-01-01T00:00:00Z", on(None));
    let g = grpc_route("g", "2026-02-01T00:00:00Z", on(Some(9090)));
    let s = statuses(vec![svc()], &[&h, &g]);
    let hs = &s[0][0];
    assert!(hs.accepted.ok, "{hs:?}");
    assert!(
        hs.accepted.message.contains("port 9090"),
        "{}",
        hs.accepted.message
    );
    assert!(s[1][0].accepted.ok);

    // Different ports: no conflict at all.
    let h = http_route("h", "2026-01-01T00:00:00Z", on(Some(80)));
    let s = statuses(vec![svc()], &[&h, &g]);
    assert_eq!(s[0][0].accepted.message, "the route applies");
}

#[test]
fn on_a_gateway_the_oldest_route_decides_the_kind() {
    let h = http_route("h", "2026-01-01T00:00:00Z", json!({"name": "ours"}));
    let g = grpc_route("g", "2026-02-01T00:00:00Z", json!({"name": "ours"}));
    let objects = || vec![service("reviews", "10.96.0.10"), gateway("ours", "trellis")];
    let s = statuses(objects(), &[&h, &g]);
    assert!(s[0][0].accepted.ok, "{:?}", s[0]);
    assert_eq!(s[1][0].accepted.reason, "Conflicted", "{:?}", s[1]);
    assert!(
        s[1][0]
            .accepted
            .message
            .contains("HTTPRoute default/h is attached to Gateway"),
        "{}",
        s[1][0].accepted.message
    );
    // The GRPCRoute older: it wins.
    let g = grpc_route("g", "2025-12-01T00:00:00Z", json!({"name": "ours"}));
    let s = statuses(objects(), &[&h, &g]);
    assert_eq!(s[0][0].accepted.reason, "Conflicted");
    assert!(s[1][0].accepted.ok);
}

//! The Kubernetes source against the kit's API server double: the same source and servers
//! `control serve` runs (in process, and once as the binary with `--kubeconfig`), real kube
//! watchers, real HTTP streams.

mod support;

use std::sync::Arc;
use std::time::Duration;

use control::metrics::Metrics;
use control::serve;
use control::source::kube::KubeSource;
use control::store::Store;
use kit::apiserver::{
    ApiServer, Options, ENDPOINTSLICES, NAMESPACES, PODS, SERVICES, TRAFFICPOLICIES,
};
use serde_json::{json, Value};
use support::{addresses, get, service, slice};
use tokio::net::TcpListener;

struct Running {
    addr: std::net::SocketAddr,
    store: Arc<Store>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The Kubernetes source and the discovery server, as `control serve` wires them.
async fn start(server: &ApiServer) -> Running {
    let store = Store::new(Arc::new(Metrics::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let source = KubeSource::new(server.client());
    let discovery = serve::router(store.clone(), 100);
    let s = store.clone();
    let tasks = vec![
        tokio::spawn(async move { source.run(s).await.unwrap() }),
        tokio::spawn(async move { serve::serve(listener, discovery).await.unwrap() }),
    ];
    for _ in 0..500 {
        if store.is_ready() {
            return Running { addr, store, tasks };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not ready within 10s");
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

fn policy(name: &str, target: &str, simple: &str) -> Value {
    json!({
        "apiVersion": "trellis.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": target}],
            "loadBalancer": {"simple": simple},
        },
    })
}

/// The entry of object `name`'s status list at `list` (a JSON pointer) that `which` picks, once
/// there is one and it satisfies `done` (waiting up to `secs`).
async fn status_entry(
    server: &ApiServer,
    gvr: &kit::apiserver::Gvr,
    name: &str,
    list: &str,
    which: impl Fn(&Value) -> bool,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..secs * 50 {
        let entry = server.object(gvr, "default", name).and_then(|o| {
            o.pointer(list)?
                .as_array()?
                .iter()
                .find(|e| which(e))
                .cloned()
        });
        if let Some(e) = entry.filter(|e| done(e)) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{name}: no such {list} entry within {secs}s: {:?}",
        server.object(gvr, "default", name)
    );
}

/// The policy's `Accepted` condition, once it has one (waiting up to `secs`) and it satisfies
/// `done`.
async fn accepted(
    server: &ApiServer,
    name: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let gvr = &TRAFFICPOLICIES.gvr;
    let accepted = |c: &Value| c["type"] == "Accepted";
    status_entry(
        server,
        gvr,
        name,
        "/status/conditions",
        accepted,
        secs,
        done,
    )
    .await
}

fn status_patches(server: &ApiServer, plural: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("PATCH ") && r.contains(&format!("/{plural}/")) && r.contains("/status")
        })
        .count()
}

#[tokio::test]
async fn services_and_slices_are_streamed_and_their_changes_followed() {
    let server = ApiServer::start().unwrap();
    server
        .create(yaml(&service("reviews", "10.96.0.10")))
        .unwrap();
    server
        .create(yaml(&slice("reviews", &["10.0.0.1", "10.0.0.2"])))
        .unwrap();
    let control = start(&server).await;

    let mut s = get(control.addr, "/v1/destinations/10.96.0.10:80").await;
    assert!(s.head.starts_with("HTTP/1.1 200"), "{}", s.head);
    let first = s.update().await;
    assert_eq!(addresses(&first), ["10.0.0.1:8080", "10.0.0.2:8080"]);

    server
        .patch(
            &ENDPOINTSLICES.gvr,
            "default",
            "reviews-1",
            json!({"endpoints": [{"addresses": ["10.0.0.3"], "conditions": {"ready": true}}]}),
        )
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), s.update())
        .await
        .expect("an update after the slice changed");
    assert!(next.version > first.version);
    assert_eq!(addresses(&next), ["10.0.0.3:8080"]);

    server.delete(&SERVICES.gvr, "default", "reviews").unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(10), s.update())
        .await
        .expect("an update after the Service went");
    assert_eq!(gone.destination, None);
}

#[tokio::test]
async fn policy_conditions_say_accepted_invalid_or_conflicted_and_are_written_once() {
    let server = ApiServer::start().unwrap();
    server
        .create(yaml(&service("reviews", "10.96.0.10")))
        .unwrap();
    // Created in this order: `bad` is the oldest, `good` wins over `late`.
    server.create(policy("bad", "reviews", "FASTEST")).unwrap();
    server
        .create(policy("good", "reviews", "ROUND_ROBIN"))
        .unwrap();
    server.create(policy("late", "reviews", "RANDOM")).unwrap();
    let control = start(&server).await;

    let bad = accepted(&server, "bad", 10, |_| true).await;
    assert_eq!(bad["status"], "False");
    assert_eq!(bad["reason"], "Invalid");
    assert_eq!(
        bad["message"],
        "default/bad: spec.loadBalancer.simple: \"FASTEST\" is not one of LEAST_REQUEST, ROUND_ROBIN, RANDOM"
    );
    assert_eq!(bad["observedGeneration"], 1);
    let good = accepted(&server, "good", 10, |_| true).await;
    assert_eq!(
        (&good["status"], &good["reason"]),
        (&json!("True"), &json!("Accepted"))
    );
    let late = accepted(&server, "late", 10, |_| true).await;
    assert_eq!(
        (&late["status"], &late["reason"]),
        (&json!("False"), &json!("Conflicted"))
    );
    let message = late["message"].as_str().unwrap();
    assert!(message.contains("default/good"), "{message}");

    let mut s = get(control.addr, "/v1/destinations/10.96.0.10:80").await;
    let u = s.update().await;
    let policy = &u.destination.unwrap().policy;
    assert_eq!(policy.source.as_deref(), Some("default/good"), "{policy:?}");

    // Written once each, and our own writes do not cause more.
    assert_eq!(
        status_patches(&server, "trafficpolicies"),
        3,
        "{:?}",
        server.requests()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status_patches(&server, "trafficpolicies"),
        3,
        "{:?}",
        server.requests()
    );

    // `bad` is fixed: now valid and the oldest, it wins; `good` becomes a conflict.
    server
        .patch(
            &TRAFFICPOLICIES.gvr,
            "default",
            "bad",
            json!({"spec": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}),
        )
        .unwrap();
    let bad = accepted(&server, "bad", 10, |c| c["status"] == "True").await;
    assert_eq!(bad["observedGeneration"], 2);
    let good = accepted(&server, "good", 10, |c| c["status"] == "False").await;
    assert_eq!(good["reason"], "Conflicted");
    let u = tokio::time::timeout(Duration::from_secs(10), s.update())
        .await
        .expect("an update after the winning policy changed");
    assert_eq!(
        u.destination.unwrap().policy.source.as_deref(),
        Some("default/bad")
    );
    // `late` still conflicts, now with `bad`: its message changes, so it is written again.
    let late = accepted(&server, "late", 10, |c| {
        c["message"].as_str().unwrap().contains("default/bad")
    })
    .await;
    assert_eq!(late["reason"], "Conflicted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_patches(&server, "trafficpolicies"),
        6,
        "{:?}",
        server.requests()
    );
}

#[tokio::test]
async fn changes_while_disconnected_or_expired_are_picked_up() {
    let server = ApiServer::start().unwrap();
    server
        .create(yaml(&service("reviews", "10.96.0.10")))
        .unwrap();
    server
        .create(yaml(&slice("reviews", &["10.0.0.1"])))
        .unwrap();
    let control = start(&server).await;
    let mut s = get(control.addr, "/v1/destinations/10.96.0.10:80").await;
    assert_eq!(addresses(&s.update().await), ["10.0.0.1:8080"]);
    let lists = |server: &ApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| {
                r.starts_with("GET /apis/discovery.k8s.io/v1/endpointslices")
                    && !r.contains("watch=")
            })
            .count()
    };
    assert_eq!(lists(&server), 1);

    // Disconnected: the change is made before the watchers can reconnect; they resume and see
    // it as an event.
    server.disconnect_watches();
    server
        .patch(
            &ENDPOINTSLICES.gvr,
            "default",
            "reviews-1",
            json!({"endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": true}}]}),
        )
        .unwrap();
    let u = tokio::time::timeout(Duration::from_secs(10), s.update())
        .await
        .expect("the change made while disconnected");
    assert_eq!(addresses(&u), ["10.0.0.2:8080"]);
    assert_eq!(lists(&server), 1, "a resumed watch needs no relist");

    // Expired: the slice is deleted and another one made where no watch sees it; the 410 makes
    // the watchers relist, and the relist must both add the new slice and drop the old one.
    server.expire_watches();
    server
        .delete(&ENDPOINTSLICES.gvr, "default", "reviews-1")
        .unwrap();
    let mut other = yaml(&slice("reviews", &["10.0.0.9"]));
    other["metadata"]["name"] = json!("reviews-2");
    server.create(other).unwrap();
    let mut last = Vec::new();
    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_secs(10), s.update()).await {
            Ok(u) => {
                last = addresses(&u);
                if last == ["10.0.0.9:8080"] {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    assert_eq!(last, ["10.0.0.9:8080"]);
    assert!(
        lists(&server) >= 2,
        "a relist after 410: {:?}",
        server.requests()
    );
    assert_eq!(
        addresses(&control.store.answer("10.96.0.10:80".parse().unwrap())),
        ["10.0.0.9:8080"]
    );
}

#[tokio::test]
async fn without_the_crd_services_are_served_and_policies_come_when_it_is_installed() {
    let server = ApiServer::with_options(Options {
        resources: vec![SERVICES, NAMESPACES, PODS, ENDPOINTSLICES],
        ..Options::default()
    })
    .unwrap();
    server
        .create(yaml(&service("reviews", "10.96.0.10")))
        .unwrap();
    server
        .create(yaml(&slice("reviews", &["10.0.0.1"])))
        .unwrap();
    let control = start(&server).await;
    let mut s = get(control.addr, "/v1/destinations/10.96.0.10:80").await;
    let u = s.update().await;
    assert_eq!(addresses(&u), ["10.0.0.1:8080"]);
    assert_eq!(
        u.destination.unwrap().policy.source,
        None,
        "the default policy"
    );

    // The CRD arrives later: the policy watch, retried with backoff, finds it.
    server.install(TRAFFICPOLICIES);
    server
        .create(policy("p", "reviews", "ROUND_ROBIN"))
        .unwrap();
    let c = accepted(&server, "p", 60, |_| true).await;
    assert_eq!(c["status"], "True");
    let u = tokio::time::timeout(Duration::from_secs(10), s.update())
        .await
        .expect("an update with the policy");
    assert_eq!(
        u.destination.unwrap().policy.source.as_deref(),
        Some("default/p")
    );
}

/// A free loopback port (bound, then released for the binary to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_serves_from_a_kubeconfig() {
    let server = ApiServer::start().unwrap();
    server
        .create(yaml(&service("reviews", "10.96.0.10")))
        .unwrap();
    server
        .create(yaml(&slice("reviews", &["10.0.0.1"])))
        .unwrap();
    let dir = support::Scratch::new("kube");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let _child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_control"))
            .args(["serve", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .spawn()
            .expect("control runs"),
    );
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let mut ready = false;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(metrics).await.is_ok()
            && get(metrics, "/ready")
                .await
                .head
                .starts_with("HTTP/1.1 200")
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "control serve --kubeconfig never became ready");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = get(addr, "/v1/destinations/10.96.0.10:80").await;
    assert_eq!(addresses(&s.update().await), ["10.0.0.1:8080"]);
}

fn route(name: &str, parent: Value, backend: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "parentRefs": [parent],
            "rules": [{
                "filters": [{"type": "ExtensionRef", "extensionRef":
                    {"group": "trellis.dev", "kind": "HTTPFault", "name": "slow"}}],
                "backendRefs": [{"name": backend, "port": 80}],
            }],
        },
    })
}

/// The double with the Gateway API and HTTPFault resources installed.
fn with_route_crds() -> ApiServer {
    let mut resources = kit::apiserver::DEFAULT_RESOURCES.to_vec();
    resources.extend(kit::apiserver::ROUTE_RESOURCES);
    ApiServer::with_options(Options {
        resources,
        ..Options::default()
    })
    .unwrap()
}

fn gateway_update(line: &str) -> config::api::GatewayUpdate {
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn routes_arrive_compiled_and_follow_their_backends_and_faults() {
    let server = with_route_crds();
    server
        .create(yaml(&service("reviews", "10.96.0.10")))
        .unwrap();
    server
        .create(yaml(&service("reviews-v2", "10.96.0.12")))
        .unwrap();
    server
        .create(yaml(&slice("reviews-v2", &["10.0.0.2"])))
        .unwrap();
    server
        .create(route(
            "to-v2",
            json!({"group": "", "kind": "Service", "name": "reviews"}),
            "reviews-v2",
        ))
        .unwrap();
    let control = start(&server).await;

    let mut s = get(control.addr, "/v1/destinations/10.96.0.10:80").await;
    let first = s.update().await;
    let routes = first.destination.unwrap().routes.expect("the route");
    assert_eq!(routes.backends.len(), 1);
    assert_eq!(
        routes.backends[0].endpoints[0].address.to_string(),
        "10.0.0.2:8080"
    );
    let fault = routes.rules[0].fault.clone().unwrap();
    assert_eq!(
        fault.abort.unwrap().status,
        500,
        "no HTTPFault yet: a loud 500"
    );

    // The backend's slice changes: the parent's answer follows.
    server
        .patch(
            &ENDPOINTSLICES.gvr,
            "default",
            "reviews-v2-1",
            json!({"endpoints": [{"addresses": ["10.0.0.3"], "conditions": {"ready": true}}]}),
        )
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), s.update())
        .await
        .expect("an update after the backend's slice changed");
    let routes = next.destination.unwrap().routes.unwrap();
    assert_eq!(
        routes.backends[0].endpoints[0].address.to_string(),
        "10.0.0.3:8080"
    );

    // The HTTPFault appears: the parent's answer follows.
    server
        .create(json!({
            "apiVersion": "trellis.dev/v1alpha1", "kind": "HTTPFault",
            "metadata": {"name": "slow", "namespace": "default"},
            "spec": {"delay": {"fixedDelay": "2s", "percentage": 50}},
        }))
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), s.update())
        .await
        .expect("an update after the HTTPFault appeared");
    let fault = next.destination.unwrap().routes.unwrap().rules[0]
        .fault
        .clone()
        .unwrap();
    assert_eq!(fault.abort, None);
    assert_eq!(fault.delay.unwrap().delay_ms, 2000);

    // A Gateway of class trellis, and a route attached to it.
    let mut g = get(control.addr, "/v1/gateways/default/ingress").await;
    assert!(g.head.starts_with("HTTP/1.1 200"), "{}", g.head);
    assert_eq!(
        gateway_update(&g.line().await).routes,
        None,
        "no Gateway yet"
    );
    server
        .create(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "ingress", "namespace": "default"},
            "spec": {"gatewayClassName": "trellis",
                     "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
        }))
        .unwrap();
    server
        .create(route("ingress", json!({"name": "ingress"}), "reviews"))
        .unwrap();
    let mut routes = None;
    for _ in 0..2 {
        let u = tokio::time::timeout(Duration::from_secs(10), g.line())
            .await
            .expect("an update after the Gateway and its route appeared");
        routes = gateway_update(&u).routes;
        if routes.as_ref().is_some_and(|r| !r.rules.is_empty()) {
            break;
        }
    }
    let routes = routes.expect("the Gateway's routes");
    assert_eq!(routes.rules[0].source, "default/ingress#0");
    assert_eq!(routes.backends[0].service.name, "reviews");
}

/// The route's Trellis entry in `status.parents`, once it satisfies `done` (within 10 s).
async fn route_parent_status(
    server: &ApiServer,
    name: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let gvr = &kit::apiserver::HTTPROUTES.gvr;
    let ours = |e: &Value| e["controllerName"] == "trellis.dev/control";
    status_entry(server, gvr, name, "/status/parents", ours, 10, done).await
}

#[tokio::test]
async fn route_status_says_accepted_and_resolved_refs_and_follows_the_backends() {
    let server = with_route_crds();
    server
        .create(yaml(&service("reviews", "10.96.0.10")))
        .unwrap();
    let mut to_v2 = route(
        "to-v2",
        json!({"group": "", "kind": "Service", "name": "reviews", "port": 80}),
        "reviews-v2",
    );
    to_v2["spec"]["rules"][0]
        .as_object_mut()
        .unwrap()
        .remove("filters");
    // Another controller's entry, which Trellis keeps.
    server.create(to_v2).unwrap();
    let theirs = json!({"parentRef": {"name": "mesh"}, "controllerName": "example.com/other",
                        "conditions": []});
    server
        .patch_status(
            &kit::apiserver::HTTPROUTES.gvr,
            "default",
            "to-v2",
            json!({"status": {"parents": [theirs]}}),
        )
        .unwrap();
    let control = start(&server).await;

    // The backend Service does not exist: accepted, but a reference does not resolve.
    let e = route_parent_status(&server, "to-v2", |e| e["conditions"].is_array()).await;
    assert_eq!(
        e["parentRef"],
        json!({"group": "", "kind": "Service", "name": "reviews", "port": 80})
    );
    let c = &e["conditions"];
    assert_eq!(
        (&c[0]["type"], &c[0]["status"]),
        (&json!("Accepted"), &json!("True"))
    );
    assert_eq!(
        (&c[1]["type"], &c[1]["status"], &c[1]["reason"]),
        (
            &json!("ResolvedRefs"),
            &json!("False"),
            &json!("BackendNotFound")
        )
    );
    assert!(
        c[1]["message"]
            .as_str()
            .unwrap()
            .contains("spec.rules[0].backendRefs[0]: BackendNotFound: Service default/reviews-v2"),
        "{c}"
    );
    let r = server
        .object(&kit::apiserver::HTTPROUTES.gvr, "default", "to-v2")
        .unwrap();
    assert_eq!(
        r["status"]["parents"][0], theirs,
        "the other controller's entry stays"
    );

    // The Service appears: the reference resolves.
    server
        .create(yaml(&service("reviews-v2", "10.96.0.12")))
        .unwrap();
    route_parent_status(&server, "to-v2", |e| e["conditions"][1]["status"] == "True").await;
    // Settled: our own writes cause no more writes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let n = status_patches(&server, "httproutes");
    assert_eq!(n, 2, "{:?}", server.requests());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status_patches(&server, "httproutes"), n);
    drop(control);
}

#[tokio::test]
async fn grpc_routes_arrive_compiled_and_their_status_is_written() {
    let server = with_route_crds();
    server
        .create(yaml(&service("greeter", "10.96.0.20")))
        .unwrap();
    server
        .create(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "greeter", "namespace": "default"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "greeter", "port": 80}],
                "rules": [{
                    "matches": [{"method": {"service": "helloworld.Greeter", "method": "SayHello"}}],
                    "backendRefs": [{"name": "greeter-v1", "port": 80, "weight": 90},
                                    {"name": "greeter", "port": 80, "weight": 10}],
                }],
            },
        }))
        .unwrap();
    let control = start(&server).await;

    // The proxy's table: the method as an exact path, 90 of 100 answered 500 while greeter-v1
    // does not exist.
    let mut s = get(control.addr, "/v1/destinations/10.96.0.20:80").await;
    let routes = s
        .update()
        .await
        .destination
        .unwrap()
        .routes
        .expect("the route");
    assert_eq!(
        routes.matches[0].path,
        Some(config::api::PathMatch::Exact(
            "/helloworld.Greeter/SayHello".into()
        ))
    );
    assert_eq!(routes.rules[0].source, "GRPCRoute default/greeter#0");
    assert_eq!(routes.rules[0].invalid_weight, 90);

    // Its status, as an HTTPRoute's: accepted, a reference that does not resolve.
    let gvr = &kit::apiserver::GRPCROUTES.gvr;
    let ours = |e: &Value| e["controllerName"] == "trellis.dev/control";
    let e = status_entry(&server, gvr, "greeter", "/status/parents", ours, 10, |e| {
        e["conditions"].is_array()
    })
    .await;
    let c = &e["conditions"];
    assert_eq!(
        (&c[0]["type"], &c[0]["status"]),
        (&json!("Accepted"), &json!("True"))
    );
    assert_eq!(
        (&c[1]["type"], &c[1]["status"], &c[1]["reason"]),
        (
            &json!("ResolvedRefs"),
            &json!("False"),
            &json!("BackendNotFound")
        )
    );
    assert!(
        c[1]["message"].as_str().unwrap().contains(
            "GRPCRoute default/greeter: spec.rules[0].backendRefs[0]: BackendNotFound: Service \
             default/greeter-v1"
        ),
        "{c}"
    );

    // The backend appears: the reference resolves, and the table sends to it.
    server
        .create(yaml(&service("greeter-v1", "10.96.0.21")))
        .unwrap();
    status_entry(&server, gvr, "greeter", "/status/parents", ours, 10, |e| {
        e["conditions"][1]["status"] == "True"
    })
    .await;
    let routes = tokio::time::timeout(Duration::from_secs(10), s.update())
        .await
        .expect("an update after the backend appeared")
        .destination
        .unwrap()
        .routes
        .unwrap();
    assert_eq!(routes.rules[0].invalid_weight, 0);
    assert_eq!(routes.rules[0].backends.len(), 2);
    assert_eq!(status_patches(&server, "httproutes"), 0);
    drop(control);
}

#[tokio::test]
async fn without_the_gateway_api_crds_services_are_served_without_routes() {
    // The default double has no HTTPRoute, Gateway or HTTPFault resource: their lists are 404.
    let server = ApiServer::start().unwrap();
    server
        .create(yaml(&service("reviews", "10.96.0.10")))
        .unwrap();
    server
        .create(yaml(&slice("reviews", &["10.0.0.1"])))
        .unwrap();
    let control = start(&server).await;
    let mut s = get(control.addr, "/v1/destinations/10.96.0.10:80").await;
    let u = s.update().await;
    assert_eq!(addresses(&u), ["10.0.0.1:8080"]);
    assert_eq!(u.destination.unwrap().routes, None);
    let mut g = get(control.addr, "/v1/gateways/default/ingress").await;
    assert_eq!(gateway_update(&g.line().await).routes, None);

    // The CRDs arrive later: the watches, retried with backoff, find them.
    server.install(kit::apiserver::HTTPROUTES);
    server
        .create(route(
            "r",
            json!({"group": "", "kind": "Service", "name": "reviews"}),
            "reviews",
        ))
        .unwrap();
    let u = tokio::time::timeout(Duration::from_secs(60), s.update())
        .await
        .expect("an update with the route");
    assert!(u.destination.unwrap().routes.is_some());
}

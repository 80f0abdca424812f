//! Issue 15's must-shows for probe rewriting, in the pod sandbox (root): the "kubelet" (the node
//! namespace) calls exactly what the rewritten spec says, on the pod IP.
//!
//! - green (max-connections 10, max-pending-requests 10) gets an `httpGet` liveness probe and a
//!   `tcpSocket` readiness probe on its pooled port 8080; with 30 clients saturating the pool, both
//!   rewritten probes answer 200 while the clients see 503 UO;
//! - with the app stopped, the rewritten `tcpSocket` probe fails (before, the capture listener
//!   accepted the connection and it always passed).

use std::time::{Duration, Instant};

use sandbox::load;
use sandbox::mesh::Mesh;
use serde_json::{json, Value};

/// The rewritten probe of `kind` on green's app container, as admitted.
fn rewritten(pod: &Value, field: &str) -> (String, u16) {
    let app = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .expect("app container");
    let get = &app[field]["httpGet"];
    (
        get["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {app}"))
            .to_string(),
        get["port"].as_u64().unwrap() as u16,
    )
}

#[test]
fn rewritten_probes_pass_a_saturated_pool_and_fail_a_stopped_app() {
    kit::root::require_root();
    let mut mesh = Mesh::start(&Mesh::unique_prefix("probes")).unwrap_or_else(|e| panic!("{e:#}"));
    mesh.deploy("blue").unwrap_or_else(|e| panic!("{e:#}"));
    mesh.deploy_with("green", |pod| {
        let app = &mut pod["spec"]["containers"][0];
        app["livenessProbe"] = json!({ "httpGet": { "path": "/", "port": "http" }, "periodSeconds": 5, "timeoutSeconds": 2 });
        app["readinessProbe"] = json!({ "tcpSocket": { "port": 8080 }, "periodSeconds": 2 });
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    let green = mesh.pod("green");
    let spec = &green.admitted.pod;
    let live = rewritten(spec, "livenessProbe");
    let ready = rewritten(spec, "readinessProbe");
    assert_eq!(live, ("/app-health/app/livez".to_string(), 15020));
    assert_eq!(ready, ("/app-health/app/readyz".to_string(), 15020));
    let probe = |(path, port): &(String, u16)| {
        sandbox::get(&mesh.node, green.addr(*port), path)
            .map(|r| r.status)
            .unwrap_or_else(|e| panic!("{path}: {e:#}"))
    };
    assert_eq!(probe(&live), 200);
    assert_eq!(probe(&ready), 200);

    // (a) 30 clients of 500 ms requests against max-connections 10 + max-pending 10.
    let url = format!("http://{}:8080/?delay_ms=500", green.ip);
    let mut run = load::start(mesh.pod("blue"), &url, 30, 300).unwrap();
    let mut seen = Vec::new();
    std::thread::sleep(Duration::from_millis(300));
    while !run.is_done() {
        seen.push((probe(&live), probe(&ready)));
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = run.finish().unwrap();
    eprintln!(
        "load: {} x 200, {} x 503; probes during it: {} pairs",
        r.code(200),
        r.code(503),
        seen.len()
    );
    assert!(
        r.code(503) > 0,
        "the pool was not saturated: {} x 503",
        r.code(503)
    );
    assert!(
        seen.len() >= 5,
        "too few probes during the load: {}",
        seen.len()
    );
    assert!(
        seen.iter().all(|s| *s == (200, 200)),
        "a probe failed under a saturated pool: {seen:?}"
    );

    // (b) The app stops: the rewritten tcpSocket probe fails, within its timeout.
    let green = mesh.pod_mut("green");
    let app = green.container_mut("app").expect("app process");
    app.child.kill().unwrap();
    app.wait(Duration::from_secs(5));
    let green = mesh.pod("green");
    let started = Instant::now();
    let status = sandbox::get(&mesh.node, green.addr(ready.1), &ready.0)
        .unwrap()
        .status;
    assert_eq!(status, 503, "tcpSocket readiness with the app stopped");
    assert!(started.elapsed() < Duration::from_secs(3));
    let status = sandbox::get(&mesh.node, green.addr(live.1), &live.0)
        .unwrap()
        .status;
    assert_eq!(status, 503, "httpGet liveness with the app stopped");
}

/// The demo's scenario, on green as `manifests/demo/` ships it (readiness on its health port).
#[test]
fn demo_scenario_probes_under_overload() {
    kit::root::require_root();
    let mut mesh =
        Mesh::start(&Mesh::unique_prefix("probedemo")).unwrap_or_else(|e| panic!("{e:#}"));
    for app in sandbox::scenarios::INBOUND_POOL {
        mesh.deploy(app).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let r = sandbox::scenarios::probes_under_overload(&mesh).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(r.passed(), "{r}");
    eprintln!("{r}");
}

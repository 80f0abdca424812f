//! The pod sandbox scenarios (root; iproute2, iptables and openssl installed): each test makes its
//! own node, webhook and pods from `manifests/demo/`, so they run in parallel; everything is removed
//! on drop, also when a test fails (its logs are kept and their directory printed).

use sandbox::mesh::Mesh;
use sandbox::scenarios::{self, Report};

fn mesh(tag: &str, pods: &[&str]) -> Mesh {
    kit::root::require_root();
    let mut mesh = Mesh::start(&Mesh::unique_prefix(tag)).unwrap_or_else(|e| panic!("{e:#}"));
    for app in pods {
        mesh.deploy(app).unwrap_or_else(|e| panic!("{e:#}"));
    }
    mesh
}

fn assert_passed(r: anyhow::Result<Report>) {
    let r = r.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(r.passed(), "{r}");
    eprintln!("{r}");
}

#[test]
fn injected_pods_run_as_the_kubelet_would_run_them() {
    let m = mesh("inject", &["green", "client"]);
    for app in ["green", "client"] {
        let pod = m.pod(app);
        assert!(pod.admitted.injected(), "{app} not injected");
        assert_eq!(pod.container_names("initContainers"), ["proxyinit"]);
        assert_eq!(pod.container_names("containers")[0], "proxy");
        // proxyinit left its rules in the pod's namespace.
        let nat = pod.exec(0, &["iptables-save", "-t", "nat"]).unwrap();
        let nat = String::from_utf8_lossy(&nat.stdout).into_owned()
            + &String::from_utf8_lossy(
                &pod.exec(0, &["iptables-legacy-save", "-t", "nat"])
                    .unwrap()
                    .stdout,
            );
        assert!(nat.contains("TRELLIS_OUTPUT"), "{app}: {nat}");
        // The proxy runs as 1337 with the env the kubelet filled in.
        let proxy = pod.container("proxy").unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains("1337")),
            "{status}"
        );
        let environ = std::fs::read(format!("/proc/{}/environ", proxy.child.id())).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(environ.contains(&format!("POD_IP={}", pod.ip)), "{environ}");
        assert!(
            environ.contains(&format!("POD_NAME={}", pod.name)),
            "{environ}"
        );
        assert!(environ.contains("POD_NAMESPACE=demo"), "{environ}");
    }
    // green's annotations arrived as the proxy's flags.
    let args = m.pod("green").admitted.pod["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--max-connections=10"), "{args}");
    assert!(args.contains("--max-pending-requests=10"), "{args}");
}

#[test]
fn transparency() {
    let m = mesh("transp", scenarios::TRANSPARENCY);
    assert_passed(scenarios::transparency(&m));
}

#[test]
fn inbound_pool() {
    let m = mesh("inpool", scenarios::INBOUND_POOL);
    assert_passed(scenarios::inbound_pool(&m));
}

#[test]
fn outbound_pool() {
    let m = mesh("outpool", scenarios::OUTBOUND_POOL);
    assert_passed(scenarios::outbound_pool(&m));
}

#[test]
fn opt_out_and_bad_annotation() {
    let m = mesh("optout", scenarios::OPT_OUT);
    assert_passed(scenarios::opt_out_and_bad_annotation(&m));
}

#[test]
fn hostile_input_is_refused_with_its_reason() {
    let m = mesh("hostile", scenarios::HOSTILE);
    assert_passed(scenarios::hostile_input(&m));
}

#[test]
fn shutdown_drains_and_exits_0() {
    let mut m = mesh("quit", scenarios::SHUTDOWN);
    assert_passed(scenarios::shutdown(&mut m));
}

#[test]
fn native_sidecar_starts_before_the_app_and_carries_traffic() {
    let mut m = mesh("native", &["client"]);
    m.deploy_with("green", |pod| {
        pod["metadata"]["annotations"]["trellis.dev/native-sidecar"] = "enabled".into();
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let green = m.pod("green");
    assert_eq!(
        green.container_names("initContainers"),
        ["proxyinit", "proxy"]
    );
    assert_eq!(green.container_names("containers"), ["app"]);
    let r = sandbox::load::run(m.pod("client"), &format!("http://{}:8080/", green.ip), 1, 1)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.code(200), 1, "{r:?}");
    let stats = m.stats("green").unwrap();
    assert_eq!(
        stats.num("cluster.inbound_8080.upstream_rq_total"),
        1,
        "{}",
        stats.line("cluster.inbound_8080.upstream_rq_total")
    );
}

#[test]
fn a_meshed_client_balances_a_service_per_request_and_a_traffic_policy_sets_its_pool() {
    let mut m = mesh("lb", scenarios::SERVICES);
    assert_passed(scenarios::load_balancing(&mut m));
    assert_passed(scenarios::traffic_policy_pool(&mut m));
}

#[test]
fn a_failing_pod_is_ejected_and_a_pod_scaled_away_loses_no_request() {
    let mut m = mesh("outlier", scenarios::SERVICES);
    assert_passed(scenarios::outlier_detection(&mut m));
    assert_passed(scenarios::scale_down(&mut m));
}

#[test]
fn the_control_plane_going_away_fails_no_request() {
    let mut m = mesh("cpdown", scenarios::SERVICES);
    assert_passed(scenarios::control_plane_down(&mut m));
}

#[test]
fn routes_split_match_and_switch_live() {
    let mut m = mesh("routes", scenarios::ROUTES);
    assert_passed(scenarios::weights(&mut m));
    assert_passed(scenarios::live_switch(&mut m));
    assert_passed(scenarios::header_match(&mut m));
    assert_passed(scenarios::user_agent(&mut m));
}

#[test]
fn route_faults_timeouts_retries_mirrors_and_a_gateway() {
    let mut m = mesh("faults", scenarios::ROUTES);
    assert_passed(scenarios::fault_abort(&mut m));
    assert_passed(scenarios::fault_delay(&mut m));
    assert_passed(scenarios::timeout(&mut m));
    assert_passed(scenarios::retries(&mut m));
    assert_passed(scenarios::mirror(&mut m));
    assert_passed(scenarios::gateway(&mut m));
}

#[test]
fn grpc_calls_streams_deadlines_and_the_pool_walkthrough() {
    let mut m = mesh("grpc", scenarios::GRPC);
    assert_passed(scenarios::grpc_calls(&mut m));
    assert_passed(scenarios::grpc_many_streams(&mut m));
    assert_passed(scenarios::grpc_route_fault(&mut m));
    assert_passed(scenarios::grpc_route_mirror(&mut m));
    assert_passed(scenarios::grpc_pool(&mut m));
}

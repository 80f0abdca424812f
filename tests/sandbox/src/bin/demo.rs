//! `make demo`: the whole mesh on this machine. Network namespaces play the pods of
//! `manifests/demo/`, a real `webhook serve` injects them, and the scenarios of the tests run with
//! a short narration, a table of what the clients saw, and the sidecars' key stat lines. Everything
//! made is removed at the end, on failure and on Ctrl-C. Exit status 0 only if every check passed.

use std::process::ExitCode;

use sandbox::cleanup;
use sandbox::mesh::Mesh;
use sandbox::scenarios::{self, Report};

const PREFIX: &str = "trellis-demo";

fn main() -> ExitCode {
    let _lock = match sandbox::session::begin("make demo", PREFIX) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let result = run();
    let left = kit::netns::remove_stale(PREFIX);
    cleanup::all(); // staged binaries, temporary files
    match result {
        Ok(true) if left > 0 => {
            println!("\nAll checks passed, but namespaces were left behind (now removed).");
            ExitCode::from(1)
        }
        Ok(true) => {
            println!("\nAll checks passed. Every namespace and process the demo made is gone.");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nSOME CHECKS FAILED (see FAIL above). Namespaces and processes removed.");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("\ndemo: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    println!("Trellis demo: the mesh on one machine");
    println!("=====================================");
    println!(
        "A node (network namespace with a bridge, 10.214.0.0/24) runs `webhook serve` with a \
         certificate from certs/make-certs.sh.\nEach Deployment of manifests/demo/ becomes a pod: \
         its template goes to the webhook as an AdmissionReview over HTTPS,\nthe JSON patch is \
         applied, and the pod runs as the kubelet would run it: proxyinit (root), proxy (uid 1337,\n\
         postStart `proxy wait-ready`), then the app.\n\
         The node also runs an API server (a test double, over HTTP) and kube-proxy (real iptables DNAT \
         for each Service's ClusterIP);\n`control serve` watches Services, EndpointSlices and \
         TrafficPolicies through it, and every sidecar asks it what the addresses its app calls are.\n"
    );
    let mut mesh = Mesh::start(PREFIX)?;
    let result = scenarios_on(&mut mesh);
    if !matches!(result, Ok(true)) {
        mesh.keep_logs = true;
    }
    drop(mesh);
    result
}

fn scenarios_on(mesh: &mut Mesh) -> anyhow::Result<bool> {
    for app in scenarios::ALL_PODS.iter().chain(scenarios::GRPC) {
        let pod = mesh.deploy(app)?;
        println!(
            "pod {:<26} {:<12} init [{}]  containers [{}]",
            pod.name,
            pod.ip.to_string(),
            pod.container_names("initContainers").join(", "),
            pod.container_names("containers").join(", "),
        );
    }
    let green = &mesh.pod("green").admitted.pod["spec"];
    let show = |c: &serde_json::Value| {
        let mut argv: Vec<String> = c["command"]
            .as_array()
            .into_iter()
            .chain(c["args"].as_array())
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        if argv.len() > 6 {
            argv.truncate(6);
            argv.push("...".into());
        }
        argv.join(" ")
    };
    println!("\ngreen as injected:");
    for c in green["initContainers"].as_array().into_iter().flatten() {
        println!(
            "  init container {:<10} {}",
            c["name"].as_str().unwrap_or(""),
            show(c)
        );
    }
    for c in green["containers"].as_array().into_iter().flatten() {
        println!(
            "  container      {:<10} {}",
            c["name"].as_str().unwrap_or(""),
            show(c)
        );
    }

    let mut reports: Vec<Report> = Vec::new();
    type Scenario = fn(&mut Mesh) -> anyhow::Result<Report>;
    let all: [(&str, Scenario); 28] = [
        ("transparency", |m| scenarios::transparency(m)),
        ("inbound pool", |m| scenarios::inbound_pool(m)),
        ("probes under overload", |m| {
            scenarios::probes_under_overload(m)
        }),
        ("outbound pool", |m| scenarios::outbound_pool(m)),
        ("opt-out and validation", |m| {
            scenarios::opt_out_and_bad_annotation(m)
        }),
        ("hostile input", |m| scenarios::hostile_input(m)),
        ("load balancing", scenarios::load_balancing),
        ("TrafficPolicy pool", scenarios::traffic_policy_pool),
        ("outlier detection", scenarios::outlier_detection),
        ("control plane down", scenarios::control_plane_down),
        ("scale down under load", scenarios::scale_down),
        ("route weights 90/10", scenarios::weights),
        ("route switched live", scenarios::live_switch),
        ("header match", scenarios::header_match),
        ("user-agent regex", scenarios::user_agent),
        ("fault abort 50%", scenarios::fault_abort),
        ("fault delay 2s", scenarios::fault_delay),
        ("route timeout 1s", scenarios::timeout),
        ("retries", scenarios::retries),
        ("mirror", scenarios::mirror),
        ("ingress gateway", scenarios::gateway),
        ("gRPC calls", scenarios::grpc_calls),
        ("1,000 gRPC streams", scenarios::grpc_many_streams),
        ("GRPCRoute fault", scenarios::grpc_route_fault),
        ("GRPCRoute mirror", scenarios::grpc_route_mirror),
        ("gRPC pool", scenarios::grpc_pool),
        ("shutdown", scenarios::shutdown),
        ("SIGTERM", |m| scenarios::sigterm_drain(m, false)),
    ];
    for (name, f) in all {
        println!();
        match f(mesh) {
            Ok(r) => {
                println!("{r}");
                reports.push(r);
            }
            Err(e) => {
                println!("== {name}: could not run: {e:#}");
                let mut r = Report {
                    name: "",
                    ..Report::default()
                };
                r.notes.push(format!("{name}: error"));
                reports.push(r);
            }
        }
    }

    println!("\nWhat the clients saw");
    println!(
        "  {:<24} {:>5} {:>5} {:>6}  result",
        "scenario", "200", "503", "other"
    );
    let mut all_ok = true;
    for (r, (name, _)) in reports.iter().zip(all.iter()) {
        let ok = r.passed();
        all_ok &= ok;
        println!(
            "  {:<24} {:>5} {:>5} {:>6}  {}",
            name,
            r.ok_200,
            r.overflow_503,
            r.other,
            if ok { "ok" } else { "FAILED" }
        );
    }
    Ok(all_ok)
}

use super::*;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

fn pod(v: Value) -> PodView {
    serde_json::from_value(v).expect("test pod")
}

fn basic() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "green-1", "namespace": "demo", "labels": { "app": "green" } },
        "spec": { "containers": [ { "name": "app", "image": "color", "ports": [ { "containerPort": 8080 } ] } ] }
    })
}

fn with_annotations(mut v: Value, a: Value) -> Value {
    v["metadata"]["annotations"] = a;
    v
}

/// Applies the outcome's patch to the pod, as the API server would.
fn injected(v: &Value, cfg: &InjectorConfig) -> Value {
    match inject(&pod(v.clone()), cfg) {
        Outcome::Inject { patch, .. } => {
            let mut out = v.clone();
            json_patch::patch(&mut out, &patch).expect("patch applies");
            // The result must still be a valid Pod.
            let _: Pod = serde_json::from_value(out.clone()).expect("patched pod parses");
            out
        }
        other => panic!("expected injection, got {other:?}"),
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|a| a.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn decision_table() {
    let cfg = InjectorConfig::default();
    let skip = |v: Value| match inject(&pod(v), &cfg) {
        Outcome::Skip { reason, .. } => Some(reason),
        _ => None,
    };
    assert_eq!(skip(basic()), None, "a plain pod is injected");
    let mut host = basic();
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(skip(host), Some(SkipReason::HostNetwork));
    assert_eq!(
        skip(with_annotations(
            basic(),
            json!({ "trellis.dev/status": "{}" })
        )),
        Some(SkipReason::AlreadyInjected)
    );
    assert_eq!(
        skip(with_annotations(
            basic(),
            json!({ "trellis.dev/inject": "disabled" })
        )),
        Some(SkipReason::OptedOut)
    );
    assert_eq!(
        skip(with_annotations(
            basic(),
            json!({ "trellis.dev/inject": "enabled" })
        )),
        None
    );
    let mut own = basic();
    own["metadata"]["labels"]["app.kubernetes.io/name"] = json!("trellis-webhook");
    assert_eq!(skip(own), Some(SkipReason::OwnPod));
    let mut clash = basic();
    clash["spec"]["containers"][0]["name"] = json!("proxy");
    match inject(&pod(clash), &cfg) {
        Outcome::Skip {
            reason: SkipReason::NameConflict,
            warning: Some(w),
        } => {
            assert!(
                w.contains("\"proxy\"") && w.contains("trellis.dev/inject"),
                "{w}"
            )
        }
        other => panic!("{other:?}"),
    }
    let mut clash_init = basic();
    clash_init["spec"]["initContainers"] = json!([{ "name": "proxyinit", "image": "x" }]);
    assert_eq!(skip(clash_init), Some(SkipReason::NameConflict));
    // A bad annotation is refused even when the pod opts out: a typo must never pass silently.
    match inject(
        &pod(with_annotations(
            basic(),
            json!({ "trellis.dev/inject": "disabled", "trellis.dev/max-connections": "many" }),
        )),
        &cfg,
    ) {
        Outcome::Deny(e) => assert!(
            e.to_string().contains("trellis.dev/max-connections")
                && e.to_string().contains("\"many\"")
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_app_port_the_sidecar_listens_on_is_refused() {
    let cfg = InjectorConfig::default();
    for port in [9901, 15001, 15006] {
        let mut v = basic();
        v["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(port);
        match inject(&pod(v), &cfg) {
            Outcome::Deny(e) => {
                let msg = e.to_string();
                assert!(msg.contains(&port.to_string()), "{msg}");
            }
            other => panic!("port {port}: expected a refusal, got {other:?}"),
        }
    }
    let v = with_annotations(basic(), json!({ "trellis.dev/inbound-ports": "8080,9901" }));
    assert!(matches!(inject(&pod(v), &cfg), Outcome::Deny(_)));
}

#[test]
fn plain_pod_gets_proxyinit_proxy_volume_and_annotations() {
    let out = injected(&basic(), &InjectorConfig::default());
    let spec = &out["spec"];
    assert_eq!(names(&spec["initContainers"]), ["proxyinit"]);
    assert_eq!(names(&spec["containers"]), ["proxy", "app"]);
    assert_eq!(names(&spec["volumes"]), ["trellis-run"]);

    let init = &spec["initContainers"][0];
    assert_eq!(init["command"], json!(["proxyinit"]));
    let a = args(init);
    assert!(a.contains(&"--inbound-ports=8080".to_string()), "{a:?}");
    assert!(a.contains(&"--proxy-admin-port=9901".to_string()), "{a:?}");
    assert!(
        a.contains(&"--exclude-outbound-cidrs=169.254.169.254/32".to_string()),
        "{a:?}"
    );
    let sc = &init["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(init["volumeMounts"][0]["mountPath"], "/run");

    let proxy = &spec["containers"][0];
    assert_eq!(proxy["command"], json!(["proxy"]));
    // Every other flag is at its default; the control plane is the webhook's, not the proxy's.
    assert_eq!(
        proxy["args"],
        json!(["--control-plane=trellis-control.trellis-system.svc:15012"]),
        "defaults render no other args: {proxy}"
    );
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        json!(["proxy", "wait-ready"])
    );
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 9901);
    let sc = &proxy["securityContext"];
    assert_eq!(
        (sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64()),
        (Some(1337), Some(1337))
    );
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let env: Vec<(&str, &str)> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP")
        ]
    );
    assert_eq!(
        proxy["resources"],
        json!({ "requests": { "cpu": "10m", "memory": "32Mi" } })
    );

    let ann = &out["metadata"]["annotations"];
    let status: Status = serde_json::from_str(ann["trellis.dev/status"].as_str().unwrap()).unwrap();
    assert_eq!(status.containers, ["proxy"]);
    assert_eq!(status.init_containers, ["proxyinit"]);
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9901");
    assert_eq!(ann["prometheus.io/path"], "/stats/prometheus");
}

#[test]
fn existing_arrays_and_maps_are_extended_not_replaced() {
    let mut v = with_annotations(
        basic(),
        json!({ "team/owner": "colors", "prometheus.io/scrape": "false" }),
    );
    v["spec"]["initContainers"] = json!([{ "name": "migrate", "image": "m" }]);
    v["spec"]["volumes"] = json!([{ "name": "data", "emptyDir": {} }]);
    v["spec"]["containers"] = json!([
        { "name": "app", "image": "a", "ports": [ { "containerPort": 8080 }, { "containerPort": 53, "protocol": "UDP" } ] },
        { "name": "metrics", "image": "b", "ports": [ { "containerPort": 9090 }, { "containerPort": 8080 } ] }
    ]);
    let out = injected(&v, &InjectorConfig::default());
    assert_eq!(
        names(&out["spec"]["initContainers"]),
        ["migrate", "proxyinit"],
        "proxyinit after the user's"
    );
    assert_eq!(
        names(&out["spec"]["containers"]),
        ["proxy", "app", "metrics"]
    );
    assert_eq!(names(&out["spec"]["volumes"]), ["data", "trellis-run"]);
    let ann = out["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(ann["team/owner"], "colors");
    assert_eq!(
        ann["prometheus.io/scrape"], "false",
        "the pod's own scrape settings win"
    );
    assert!(!ann.contains_key("prometheus.io/path"));
    assert!(ann.contains_key("trellis.dev/status"));
    assert!(
        args(&out["spec"]["initContainers"][1]).contains(&"--inbound-ports=8080,9090".to_string()),
        "TCP ports of every app container, once each"
    );
}

#[test]
fn generate_name_only_pod_is_injected() {
    let mut v = basic();
    v["metadata"] = json!({ "generateName": "green-7d9f-", "labels": { "app": "green" } });
    let out = injected(&v, &InjectorConfig::default());
    assert_eq!(names(&out["spec"]["containers"]), ["proxy", "app"]);
    assert!(out["metadata"].get("name").is_none());
}

#[test]
fn annotations_drive_both_containers() {
    let v = with_annotations(
        basic(),
        json!({
            "trellis.dev/max-connections": "10",
            "trellis.dev/max-pending-requests": "10",
            "trellis.dev/outbound-max-connections": "3",
            "trellis.dev/inbound-ports": "*",
            "trellis.dev/exclude-inbound-ports": "22",
            "trellis.dev/exclude-outbound-ports": "5432",
            "trellis.dev/exclude-outbound-ip-ranges": "10.96.0.0/12",
            "trellis.dev/opaque-ports": "6379",
            "trellis.dev/access-log": "enabled",
            "trellis.dev/log-level": "debug",
            "trellis.dev/proxy-cpu-limit": "500m",
            "trellis.dev/proxy-memory-request": "64Mi",
        }),
    );
    let out = injected(&v, &InjectorConfig::default());
    let init = args(&out["spec"]["initContainers"][0]);
    for a in [
        "--inbound-ports=*",
        "--exclude-inbound-ports=22",
        "--exclude-outbound-ports=5432",
        "--exclude-outbound-cidrs=10.96.0.0/12",
    ] {
        assert!(init.contains(&a.to_string()), "{a} in {init:?}");
    }
    let proxy = &out["spec"]["containers"][0];
    let pa = args(proxy);
    for a in [
        "--max-connections=10",
        "--max-pending-requests=10",
        "--outbound-max-connections=3",
        "--opaque-ports=6379",
        "--log-level=debug",
        "--access-log",
    ] {
        assert!(pa.contains(&a.to_string()), "{a} in {pa:?}");
    }
    assert_eq!(
        proxy["resources"],
        json!({ "requests": { "cpu": "10m", "memory": "64Mi" }, "limits": { "cpu": "500m" } })
    );
}

#[test]
fn rendered_args_parse_back_into_the_same_configs() {
    use clap::Parser;
    #[derive(Parser)]
    struct InitCli {
        #[command(flatten)]
        c: config::proxyinit::Config,
    }
    #[derive(Parser)]
    struct ProxyCli {
        #[command(flatten)]
        c: config::proxy::Config,
    }
    let v = with_annotations(
        basic(),
        json!({ "trellis.dev/max-requests": "7", "trellis.dev/exclude-outbound-ip-ranges": "" }),
    );
    let p = pod(v.clone());
    let cfg = InjectorConfig::default();
    let settings = PodSettings::parse(&p.annotations().unwrap().trellis).unwrap();
    let out = injected(&v, &cfg);
    let init_args = args(&out["spec"]["initContainers"][0]);
    let parsed = InitCli::try_parse_from(std::iter::once("proxyinit".to_string()).chain(init_args))
        .unwrap()
        .c;
    assert_eq!(parsed, proxyinit_config(&p, &cfg, &settings));
    assert!(
        parsed.exclude_outbound_cidrs.0.is_empty(),
        "an empty annotation excludes nothing"
    );
    let proxy_args = args(&out["spec"]["containers"][0]);
    let parsed = ProxyCli::try_parse_from(std::iter::once("proxy".to_string()).chain(proxy_args))
        .unwrap()
        .c;
    assert_eq!(parsed, proxy_config(&cfg, &settings, &p));
    assert_eq!(parsed.pools.inbound.max_requests, Some(7));
}

#[test]
fn the_proxy_stays_for_the_pods_grace_period_after_sigterm() {
    let cfg = InjectorConfig::default();
    let drain_max = |grace: Option<i64>| {
        let mut v = basic();
        if let Some(g) = grace {
            v["spec"]["terminationGracePeriodSeconds"] = json!(g);
        }
        let out = injected(&v, &cfg);
        let mut containers = out["spec"]["containers"].as_array().unwrap().iter();
        args(containers.find(|c| c["name"] == "proxy").unwrap())
            .into_iter()
            .find(|a| a.starts_with("--drain-max"))
    };
    assert_eq!(drain_max(Some(120)), Some("--drain-max=120s".to_string()));
    assert_eq!(drain_max(Some(5)), Some("--drain-max=5s".to_string()));
    // The kubelet's default is the proxy's: nothing to render.
    assert_eq!(drain_max(Some(30)), None);
    assert_eq!(drain_max(None), None);
}

#[test]
fn native_sidecar_puts_proxy_in_init_containers() {
    let mut v = with_annotations(basic(), json!({ "trellis.dev/native-sidecar": "enabled" }));
    v["spec"]["initContainers"] = json!([{ "name": "migrate", "image": "m" }]);
    let out = injected(&v, &InjectorConfig::default());
    assert_eq!(
        names(&out["spec"]["initContainers"]),
        ["proxyinit", "proxy", "migrate"]
    );
    assert_eq!(names(&out["spec"]["containers"]), ["app"]);
    let proxy = &out["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert!(proxy.get("lifecycle").is_none());
    // Without user init containers the array is created.
    let out = injected(
        &with_annotations(basic(), json!({ "trellis.dev/native-sidecar": "enabled" })),
        &InjectorConfig::default(),
    );
    assert_eq!(
        names(&out["spec"]["initContainers"]),
        ["proxyinit", "proxy"]
    );
}

#[test]
fn idempotent_and_deterministic() {
    let cfg = InjectorConfig::default();
    let v = with_annotations(basic(), json!({ "a": "b" }));
    let first = match inject(&pod(v.clone()), &cfg) {
        Outcome::Inject { patch: p, .. } => serde_json::to_vec(&p).unwrap(),
        o => panic!("{o:?}"),
    };
    let second = match inject(&pod(v.clone()), &cfg) {
        Outcome::Inject { patch: p, .. } => serde_json::to_vec(&p).unwrap(),
        o => panic!("{o:?}"),
    };
    assert_eq!(first, second, "same pod, byte-identical patch");
    let once = injected(&v, &cfg);
    assert_eq!(
        inject(&pod(once), &cfg),
        Outcome::Skip {
            reason: SkipReason::AlreadyInjected,
            warning: None
        },
        "an injected pod is left unchanged"
    );
}

#[test]
fn escapes_keys_in_paths() {
    assert_eq!(escape("trellis.dev/status"), "trellis.dev~1status");
    assert_eq!(escape("a~b/c"), "a~0b~1c");
    let out = injected(
        &with_annotations(basic(), json!({})),
        &InjectorConfig::default(),
    );
    assert!(out["metadata"]["annotations"]["trellis.dev/status"].is_string());
}

#[test]
fn custom_ports_and_identity_flow_into_the_patch() {
    let cfg = InjectorConfig {
        proxy_uid: 2000,
        proxy_gid: 2001,
        proxy_admin_port: 15000,
        inbound_capture_port: 16006,
        outbound_capture_port: 16001,
        proxy_image: "example/proxy:1".into(),
        ..InjectorConfig::default()
    };
    let out = injected(&basic(), &cfg);
    let proxy = &out["spec"]["containers"][0];
    assert_eq!(proxy["image"], "example/proxy:1");
    assert_eq!(proxy["securityContext"]["runAsUser"], 2000);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15000);
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        json!(["proxy", "wait-ready", "--admin-listen=[::]:15000"])
    );
    let pa = args(proxy);
    assert!(
        pa.contains(&"--inbound-capture-port=16006".to_string())
            && pa.contains(&"--admin-listen=[::]:15000".to_string())
    );
    let ia = args(&out["spec"]["initContainers"][0]);
    assert!(
        ia.contains(&"--proxy-uid=2000".to_string())
            && ia.contains(&"--proxy-admin-port=15000".to_string())
    );
    assert_eq!(
        out["metadata"]["annotations"]["prometheus.io/port"],
        "15000"
    );
}

#[test]
fn kubectl_lands_in_the_app_and_an_existing_default_is_kept() {
    let mut v = basic();
    v["spec"]["containers"] = json!([
        { "name": "web", "image": "a" },
        { "name": "worker", "image": "b" }
    ]);
    let out = injected(&v, &InjectorConfig::default());
    assert_eq!(
        names(&out["spec"]["containers"]),
        ["proxy", "web", "worker"]
    );
    let ann = &out["metadata"]["annotations"];
    assert_eq!(ann[DEFAULT_CONTAINER], "web", "the app's first, not proxy");
    assert_eq!(ann[DEFAULT_LOGS_CONTAINER], "web");

    let v = with_annotations(v, json!({ DEFAULT_CONTAINER: "worker" }));
    let out = injected(&v, &InjectorConfig::default());
    let ann = &out["metadata"]["annotations"];
    assert_eq!(ann[DEFAULT_CONTAINER], "worker", "never overwritten");
    assert_eq!(ann[DEFAULT_LOGS_CONTAINER], "web", "set where missing");
}

#[test]
fn timeout_annotations_reach_the_proxy_flags() {
    let v = with_annotations(
        basic(),
        json!({ "trellis.dev/request-timeout": "30s", "trellis.dev/drain-time": "20s" }),
    );
    let out = injected(&v, &InjectorConfig::default());
    let proxy = args(&out["spec"]["containers"][0]);
    assert!(
        proxy.contains(&"--request-timeout=30s".to_string()),
        "{proxy:?}"
    );
    assert!(proxy.contains(&"--drain-time=20s".to_string()), "{proxy:?}");
    assert!(
        !proxy.iter().any(|a| a.starts_with("--idle-timeout")),
        "{proxy:?}"
    );
}

#[test]
fn probes_move_to_the_app_health_port_and_exec_stays() {
    let mut v = basic();
    v["spec"]["containers"][0]["ports"] = json!([{ "name": "http", "containerPort": 8080 }]);
    v["spec"]["containers"][0]["livenessProbe"] =
        json!({ "tcpSocket": { "port": "http" }, "periodSeconds": 7, "timeoutSeconds": 4 });
    v["spec"]["containers"][0]["readinessProbe"] = json!({ "exec": { "command": ["true"] } });
    v["spec"]["containers"][0]["startupProbe"] = json!({ "httpGet": { "port": "nope" } });
    let out = injected(&v, &InjectorConfig::default());
    let app = &out["spec"]["containers"][1];
    assert_eq!(
        app["livenessProbe"],
        json!({ "httpGet": { "path": "/app-health/app/livez", "port": 15020, "scheme": "HTTP" },
                "periodSeconds": 7, "timeoutSeconds": 4 })
    );
    assert_eq!(
        app["readinessProbe"],
        json!({ "exec": { "command": ["true"] } })
    );
    assert_eq!(
        app["startupProbe"],
        json!({ "httpGet": { "port": "nope" } })
    );
    let env = out["spec"]["containers"][0]["env"].as_array().unwrap();
    let probes = env
        .iter()
        .find(|e| e["name"] == config::probes::ENV)
        .expect("probes handed to the proxy");
    let parsed: AppProbes = probes["value"].as_str().unwrap().parse().unwrap();
    let live = parsed.get("app", ProbeKind::Livez).unwrap();
    assert_eq!(live.tcp_socket.as_ref().unwrap().port, 8080);
    assert_eq!(live.timeout_seconds, 4);
    assert!(parsed.get("app", ProbeKind::Readyz).is_none());
    match inject(&pod(v.clone()), &InjectorConfig::default()) {
        Outcome::Inject { warnings, .. } => {
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].contains("\"nope\"") && warnings[0].contains("startupProbe"));
        }
        other => panic!("{other:?}"),
    }

    let opted = injected(
        &with_annotations(
            v.clone(),
            json!({ "trellis.dev/rewrite-probes": "disabled" }),
        ),
        &InjectorConfig::default(),
    );
    assert_eq!(
        opted["spec"]["containers"][1]["livenessProbe"],
        v["spec"]["containers"][0]["livenessProbe"]
    );
    assert!(!opted["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == config::probes::ENV));
}

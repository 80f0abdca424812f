//! The Pod Security check end to end: the real `webhook serve` binary, its namespace cache
//! watching the API server double (`KUBECONFIG` pointing at it, as a kubeconfig does in a
//! cluster-less run), and AdmissionReviews for pods in namespaces that enforce `baseline`,
//! `restricted`, `privileged` or nothing. Pods that Pod Security would reject after injection are
//! refused with the message an SRE then reads in the ReplicaSet's `FailedCreate` event; the rest
//! are injected as before; a namespace relabelled while the webhook runs is seen through the watch.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kit::apiserver::{ApiServer, NAMESPACES};
use kit::golden;
use serde_json::{json, Value};
use support::{connect, free_port, serve_binary, testdata, Binary as Serving};

const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// The binary on a loopback port, its `KUBECONFIG` set to `kubeconfig`, with `args`.
async fn serve(tag: &str, kubeconfig: &str, args: &[&str]) -> Serving {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut all = vec![format!("--listen={addr}")];
    all.extend(args.iter().map(|a| a.to_string()));
    serve_binary(tag, Some(kubeconfig), &all, addr).await
}

fn namespace(name: &str, labels: Value) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/metadata.name"] = json!(name);
    labels["sidecarInjectorWebhook"] = json!("enabled");
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A ReplicaSet's pod (generateName, no metadata.namespace) created in `namespace`, as the API
/// server sends it; `annotations` added to the pod.
fn review(uid: &str, namespace: &str, annotations: Option<Value>) -> Vec<u8> {
    let mut r: Value = serde_json::from_slice(
        &std::fs::read(testdata("reviews/replicaset-pod-generate-name.json")).unwrap(),
    )
    .unwrap();
    r["request"]["uid"] = json!(uid);
    r["request"]["namespace"] = json!(namespace);
    if let Some(a) = annotations {
        r["request"]["object"]["metadata"]["annotations"] = a;
    }
    serde_json::to_vec(&r).unwrap()
}

/// The response of one review.
async fn send(s: &Serving, body: Vec<u8>) -> Value {
    let mut c = connect(s.addr, &s.bundle.ca_pem).await.unwrap();
    let started = Instant::now();
    let r = c.request("POST", "/mutate", body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a review took {:?}",
        started.elapsed()
    );
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["response"].clone()
}

fn injected(r: &Value) -> bool {
    r["allowed"] == true && r["patch"].is_string()
}

fn message(r: &Value) -> &str {
    r["status"]["message"].as_str().unwrap_or("")
}

/// Sends reviews for `namespace` until `want` holds of the answer (the watch delivers changes
/// asynchronously), for at most 10 s.
async fn eventually(s: &Serving, namespace: &str, what: &str, want: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(s, review("probe", namespace, None)).await;
        if want(&r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{namespace}: never {what}; last answer {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn double_with_namespaces() -> ApiServer {
    let api = ApiServer::start().unwrap();
    for ns in [
        namespace(
            "shop-baseline",
            json!({ENFORCE: "baseline", "pod-security.kubernetes.io/enforce-version": "latest"}),
        ),
        namespace(
            "shop-restricted",
            json!({ENFORCE: "restricted", "pod-security.kubernetes.io/enforce-version": "v1.33"}),
        ),
        namespace("shop-privileged", json!({ENFORCE: "privileged"})),
        namespace(
            "shop-plain",
            json!({"pod-security.kubernetes.io/warn": "restricted"}),
        ),
    ] {
        api.create(ns).unwrap();
    }
    api
}

#[tokio::test]
async fn the_webhook_refuses_injection_where_pod_security_enforces_baseline_or_restricted() {
    let api = double_with_namespaces();
    let s = serve("psa", &api.kubeconfig(), &[]).await;
    // The first list reaches the cache within moments of start.
    eventually(&s, "shop-baseline", "refused", |r| r["allowed"] == false).await;

    let r = send(&s, review("b1", "shop-baseline", None)).await;
    assert_eq!(r["uid"], "b1");
    assert_eq!(r["allowed"], false, "{r}");
    assert!(r["patch"].is_null(), "{r}");
    assert_eq!(r["status"]["code"], 403, "{r}");
    assert_eq!(r["status"]["reason"], "Forbidden", "{r}");
    let msg = message(&r);
    for part in [
        "trellis: pod refused: namespace \"shop-baseline\" enforces Pod Security level \"baseline\"",
        "(label pod-security.kubernetes.io/enforce=baseline)",
        "NET_ADMIN and NET_RAW",
        "proxyinit",
        "Pod Security admission runs after this webhook and would reject the injected pod",
        "kubectl label namespace shop-baseline pod-security.kubernetes.io/enforce=privileged --overwrite",
        "remove sidecarInjectorWebhook=enabled from the namespace",
        "trellis.dev/inject: disabled",
    ] {
        assert!(msg.contains(part), "missing {part:?} in {msg}");
    }
    let pretty = serde_json::to_string_pretty(&r).unwrap() + "\n";
    golden::assert_golden(&testdata("pod-security/baseline.out.json"), &pretty);

    let r = send(&s, review("r1", "shop-restricted", None)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        message(&r).contains("enforces Pod Security level \"restricted\""),
        "{r}"
    );
    let pretty = serde_json::to_string_pretty(&r).unwrap() + "\n";
    golden::assert_golden(&testdata("pod-security/restricted.out.json"), &pretty);

    // privileged, and no enforce label (a `warn` label does not refuse anything): injected.
    for ns in ["shop-privileged", "shop-plain"] {
        let r = send(&s, review("p1", ns, None)).await;
        assert!(injected(&r), "{ns}: {r}");
    }
    // A namespace the cluster does not have (so the cache cannot know): injected as before.
    assert!(injected(&send(&s, review("u1", "nowhere", None)).await));

    // Pods that would not be injected are not refused: the opt-out works in a baseline namespace.
    let r = send(
        &s,
        review(
            "o1",
            "shop-baseline",
            Some(json!({"trellis.dev/inject": "disabled"})),
        ),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r["patch"].is_null(), "{r}");

    // Counted apart from invalid pods.
    let mut c = connect(s.addr, &s.bundle.ca_pem).await.unwrap();
    let metrics = c.get("/metrics").await.unwrap().body;
    let line = r#"trellis_webhook_reviews_total{result="denied",reason="pod_security"} "#;
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .unwrap_or_else(|| panic!("{line} missing from\n{metrics}"))
        .parse()
        .unwrap();
    // The probes until the first list, then b1 and r1.
    assert!(count >= 3, "{count}");
    assert!(
        !metrics.contains(r#"result="denied",reason="""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_namespace_relabelled_while_running_is_seen_through_the_watch() {
    let api = double_with_namespaces();
    let s = serve("psa-watch", &api.kubeconfig(), &[]).await;
    eventually(&s, "shop-baseline", "refused", |r| r["allowed"] == false).await;
    assert!(injected(&send(&s, review("1", "shop-plain", None)).await));

    // kubectl label namespace shop-plain pod-security.kubernetes.io/enforce=restricted
    api.patch(
        &NAMESPACES.gvr,
        "",
        "shop-plain",
        json!({"metadata": {"labels": {ENFORCE: "restricted"}}}),
    )
    .unwrap();
    eventually(&s, "shop-plain", "refused after the label", |r| {
        r["allowed"] == false && message(r).contains("\"restricted\"")
    })
    .await;

    // The fix the message suggests: kubectl label ... enforce=privileged --overwrite
    api.patch(
        &NAMESPACES.gvr,
        "",
        "shop-baseline",
        json!({"metadata": {"labels": {ENFORCE: "privileged"}}}),
    )
    .unwrap();
    eventually(&s, "shop-baseline", "injected after the fix", injected).await;

    // A namespace created now, enforcing baseline, after the watch has started.
    api.create(namespace("late", json!({ENFORCE: "baseline"})))
        .unwrap();
    eventually(&s, "late", "refused", |r| r["allowed"] == false).await;

    // Deleting the label (kubectl label namespace shop-plain pod-security.kubernetes.io/enforce-).
    api.patch(
        &NAMESPACES.gvr,
        "",
        "shop-plain",
        json!({"metadata": {"labels": {ENFORCE: null}}}),
    )
    .unwrap();
    eventually(&s, "shop-plain", "injected without the label", injected).await;

    // The watch survives a dropped connection (kube-runtime reconnects) and a relist.
    api.disconnect_watches();
    api.patch(
        &NAMESPACES.gvr,
        "",
        "shop-privileged",
        json!({"metadata": {"labels": {ENFORCE: "baseline"}}}),
    )
    .unwrap();
    eventually(&s, "shop-privileged", "refused after a reconnect", |r| {
        r["allowed"] == false
    })
    .await;
}

#[tokio::test]
async fn without_a_reachable_api_server_pods_are_injected_and_reviews_stay_bounded() {
    // A kubeconfig naming a port nothing listens on: the namespace list never completes.
    let port = free_port();
    let kubeconfig = ApiServer::start().unwrap().kubeconfig();
    let kubeconfig = kubeconfig
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("server:") {
                format!("    server: http://127.0.0.1:{port}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let s = serve("psa-down", &kubeconfig, &[]).await;
    for uid in ["1", "2"] {
        let started = Instant::now();
        let r = send(&s, review(uid, "shop-baseline", None)).await;
        // As before the check existed; each review waits at most SYNC_WAIT (1 s) for the list.
        assert!(injected(&r), "{r}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn the_check_can_be_turned_off_and_a_cluster_default_level_given() {
    let api = double_with_namespaces();
    let off = serve(
        "psa-off",
        &api.kubeconfig(),
        &["--pod-security-check=false"],
    )
    .await;
    assert!(injected(
        &send(&off, review("1", "shop-baseline", None)).await
    ));
    drop(off);

    // The API server's AdmissionConfiguration enforces baseline where no label says otherwise.
    let s = serve(
        "psa-default",
        &api.kubeconfig(),
        &["--pod-security-default-enforce=baseline"],
    )
    .await;
    eventually(&s, "shop-plain", "refused by the default", |r| {
        r["allowed"] == false && message(r).contains("cluster default is \"baseline\"")
    })
    .await;
    assert!(injected(
        &send(&s, review("2", "shop-privileged", None)).await
    ));
}

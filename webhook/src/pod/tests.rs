use super::*;
use serde_json::json;

fn view(v: serde_json::Value) -> PodView {
    serde_json::from_value(v).expect("a pod view")
}

/// A pod whose `spec.containers` are `n` minimal containers, as JSON text.
fn with_containers(n: usize) -> String {
    let list: Vec<String> = (0..n).map(|i| format!(r#"{{"name":"c{i}"}}"#)).collect();
    format!(r#"{{"spec":{{"containers":[{}]}}}}"#, list.join(","))
}

#[test]
fn reads_what_injection_needs_and_skips_the_rest() {
    let pod = view(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "p",
            "labels": { "app.kubernetes.io/name": "trellis-webhook", "app": "x" },
            "annotations": { "trellis.dev/max-connections": "10", "prometheus.io/scrape": "true", "other": "y" }
        },
        "spec": {
            "hostNetwork": true,
            "containers": [
                { "name": "app", "image": "i", "env": [{ "name": "A", "value": "b" }],
                  "ports": [ { "containerPort": 8080 }, { "containerPort": 53, "protocol": "UDP" },
                             { "containerPort": 9090, "protocol": null }, { "containerPort": 70000 } ] }
            ],
            "initContainers": [ { "name": "init" } ],
            "volumes": [ { "name": "v", "emptyDir": {} } ],
            "unknownField": [[[{}]]]
        },
        "status": { "phase": "Pending" }
    }));
    assert_eq!(pod.check(), Ok(()));
    let a = pod.annotations().unwrap();
    assert_eq!(a.trellis.len(), 1, "only trellis.dev/ annotations are kept");
    assert!(a.prometheus);
    assert!(pod.is_own_pod());
    let spec = pod.spec().unwrap();
    assert!(spec.host_network() && spec.has_init_containers() && spec.has_volumes());
    assert_eq!(spec.containers()[0].name(), "app");
    assert_eq!(
        spec.containers()[0].tcp_ports().collect::<Vec<_>>(),
        [8080, 9090]
    );
    assert_eq!(spec.init_containers()[0].name(), "init");

    // Absent, null and empty are told apart where injection cares.
    let bare = view(
        json!({ "metadata": { "annotations": null }, "spec": { "initContainers": [], "volumes": null } }),
    );
    assert!(bare.annotations().is_none() && !bare.is_own_pod());
    let spec = bare.spec().unwrap();
    assert!(!spec.has_init_containers() && !spec.has_volumes() && spec.containers().is_empty());
    assert!(view(json!({ "metadata": { "annotations": {} } }))
        .annotations()
        .is_some());
    assert!(view(json!({})).spec().is_none());
}

#[test]
fn wrong_types_are_still_errors() {
    for bad in [
        json!({ "spec": { "containers": "nope" } }),
        json!({ "spec": { "hostNetwork": "yes" } }),
        json!({ "metadata": { "annotations": { "a": 1 } } }),
        json!({ "metadata": { "labels": { "a": null } } }),
        json!({ "spec": { "containers": [ { "ports": [ { "containerPort": "80" } ] } ] } }),
    ] {
        assert!(
            serde_json::from_value::<PodView>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn containers_past_the_cap_are_counted_not_kept() {
    let pod: PodView = serde_json::from_str(&with_containers(200_000)).unwrap();
    // Structural: only the first MAX_CONTAINERS were materialised.
    let spec = pod.spec().unwrap();
    assert_eq!(spec.containers().len(), MAX_CONTAINERS);
    let err = pod.check().unwrap_err();
    assert_eq!(err, LimitError::Containers { count: 200_000 });
    let msg = err.to_string();
    assert!(
        msg.contains("200000 containers") && msg.contains(&format!("at most {MAX_CONTAINERS}")),
        "{msg}"
    );

    let at_cap: PodView = serde_json::from_str(&with_containers(MAX_CONTAINERS)).unwrap();
    assert_eq!(at_cap.check(), Ok(()));
}

#[test]
fn every_cap_is_enforced_with_count_and_cap() {
    let n_init = MAX_INIT_CONTAINERS + 1;
    let init = view(json!({ "spec": { "initContainers": vec![json!({ "name": "i" }); n_init] } }));
    assert_eq!(
        init.check(),
        Err(LimitError::InitContainers { count: n_init })
    );

    let n_ports = MAX_PORTS_PER_CONTAINER + 5;
    let ports = view(json!({ "spec": { "containers": [
        { "name": "media", "ports": vec![json!({ "containerPort": 1 }); n_ports] }
    ] } }));
    let err = ports.check().unwrap_err();
    assert_eq!(
        err,
        LimitError::Ports {
            container: "media".into(),
            count: n_ports
        }
    );
    assert!(err.to_string().contains(&format!(
        "\"media\" declares {n_ports} ports; Trellis admits at most {MAX_PORTS_PER_CONTAINER}"
    )));

    let many: serde_json::Map<String, serde_json::Value> = (0..MAX_ANNOTATIONS + 1)
        .map(|i| (format!("a{i}"), json!("")))
        .collect();
    let pod = view(json!({ "metadata": { "annotations": many } }));
    assert_eq!(
        pod.check(),
        Err(LimitError::Annotations {
            count: MAX_ANNOTATIONS + 1
        })
    );

    let big = "v".repeat(MAX_ANNOTATIONS_BYTES);
    let pod =
        view(json!({ "metadata": { "annotations": { "trellis.dev/max-connections": big } } }));
    assert!(matches!(
        pod.check(),
        Err(LimitError::AnnotationsBytes { bytes }) if bytes > MAX_ANNOTATIONS_BYTES
    ));

    let key = format!("trellis.dev/{}", "k".repeat(1 << 20));
    let pod = view(json!({ "metadata": { "annotations": { key.clone(): "1" } } }));
    let err = pod.check().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("is {} bytes long", key.len()))
            && msg.contains(&format!("at most {MAX_ANNOTATION_KEY}"))
            && msg.contains(&format!("…({} bytes)", key.len()))
            && msg.len() < 1024,
        "{msg}"
    );
    assert!(
        pod.annotations().unwrap().trellis.is_empty(),
        "an over-long key is not kept"
    );

    // Keys of the longest length Kubernetes allows are fine.
    let longest = format!("{}/{}", "p".repeat(253), "n".repeat(63));
    assert_eq!(
        view(json!({ "metadata": { "annotations": { longest: "" } } })).check(),
        Ok(())
    );
}

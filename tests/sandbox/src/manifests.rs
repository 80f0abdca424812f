//! The demo's workloads, read from `manifests/demo/*.yaml`, and the pods their controllers would make.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde::Deserialize as _;
use serde_json::{json, Value};

/// `manifests/demo/` in this checkout (or `$TRELLIS_DEMO_MANIFESTS`).
pub fn demo_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRELLIS_DEMO_MANIFESTS") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/demo")
}

/// Every object in every `*.yaml` of `manifests/demo/`.
pub fn demo_objects() -> anyhow::Result<Vec<Value>> {
    let dir = demo_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).with_context(|| format!("parsing {}", f.display()))?;
            if !v.is_null() {
                objects.push(v);
            }
        }
    }
    Ok(objects)
}

/// The Deployment `name` of the demo.
pub fn deployment(name: &str) -> anyhow::Result<Value> {
    for o in demo_objects()? {
        if o["kind"] == "Deployment" && o["metadata"]["name"] == name {
            return Ok(o);
        }
    }
    bail!("no Deployment {name:?} in {}", demo_dir().display())
}

/// The pod a ReplicaSet of `deployment` would create, as the API server hands it to admission:
/// `generateName` and no `name`, no `metadata.namespace` (it travels in `request.namespace`).
pub fn pod_from(deployment: &Value) -> anyhow::Result<(String, Value)> {
    let name = deployment["metadata"]["name"]
        .as_str()
        .context("Deployment without a name")?;
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let template = &deployment["spec"]["template"];
    if template.is_null() {
        bail!("Deployment {name} has no pod template");
    }
    let mut meta = template["metadata"].clone();
    if meta.is_null() {
        meta = json!({});
    }
    meta["generateName"] = json!(format!("{name}-7f9c6d5b8-"));
    meta["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-7f9c6d5b8"),
        "uid": "00000000-0000-0000-0000-000000000001", "controller": true, "blockOwnerDeletion": true
    }]);
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template["spec"].clone(),
    });
    Ok((namespace, pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_pods_arrive_as_a_replicaset_makes_them() {
        for app in ["green", "red", "blue", "client"] {
            let (ns, pod) = pod_from(&deployment(app).unwrap()).unwrap();
            assert_eq!(ns, "demo");
            assert!(pod["metadata"]["name"].is_null(), "{app}");
            assert!(pod["metadata"]["namespace"].is_null(), "{app}");
            assert!(pod["metadata"]["generateName"]
                .as_str()
                .unwrap()
                .starts_with(app));
            assert!(pod["spec"]["containers"].is_array(), "{app}");
        }
    }

    #[test]
    fn the_demo_annotations_are_the_walkthroughs() {
        let a = |app: &str, k: &str| {
            deployment(app).unwrap()["spec"]["template"]["metadata"]["annotations"][k].clone()
        };
        assert_eq!(a("green", "trellis.dev/max-connections"), "10");
        assert_eq!(a("green", "trellis.dev/max-pending-requests"), "10");
        assert_eq!(a("client", "trellis.dev/outbound-max-connections"), "3");
        assert_eq!(
            a("client", "trellis.dev/outbound-max-pending-requests"),
            "1"
        );
        assert_eq!(
            a("client", "trellis.dev/outbound-max-requests-per-connection"),
            "1"
        );
        assert_eq!(a("blue", "trellis.dev/inject"), "disabled");
        let ns = demo_objects()
            .unwrap()
            .into_iter()
            .find(|o| o["kind"] == "Namespace")
            .unwrap();
        assert_eq!(
            ns["metadata"]["labels"]["sidecarInjectorWebhook"],
            "enabled"
        );
    }

    /// The API server's label selector semantics (matchLabels and matchExpressions ANDed).
    fn selects(selector: &Value, labels: &Value) -> bool {
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let by_label = selector["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| label(k) == v.as_str());
        let by_expr = selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| {
                let key = e["key"].as_str().unwrap();
                let values: Vec<&str> = e["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                match e["operator"].as_str().unwrap() {
                    "In" => label(key).is_some_and(|v| values.contains(&v)),
                    "NotIn" => !label(key).is_some_and(|v| values.contains(&v)),
                    "Exists" => label(key).is_some(),
                    "DoesNotExist" => label(key).is_none(),
                    op => panic!("operator {op}"),
                }
            });
        by_label && by_expr
    }

    #[test]
    fn the_webhook_selects_labelled_namespaces_but_never_kube_system() {
        let path = demo_dir().join("../mutatingwebhookconfiguration.yaml");
        let config: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let webhooks = config["webhooks"].as_array().unwrap();
        assert!(!webhooks.is_empty());
        // Every namespace carries kubernetes.io/metadata.name (set by the API server).
        let ns = |name: &str, enabled: bool| {
            let mut l = json!({"kubernetes.io/metadata.name": name});
            if enabled {
                l["sidecarInjectorWebhook"] = json!("enabled");
            }
            l
        };
        for w in webhooks {
            let sel = &w["namespaceSelector"];
            assert!(selects(sel, &ns("demo", true)), "{sel}");
            assert!(!selects(sel, &ns("demo", false)), "{sel}");
            assert!(!selects(sel, &ns("kube-system", true)), "{sel}");
            assert!(!selects(sel, &ns("kube-system", false)), "{sel}");
            assert!(!selects(sel, &ns("default", false)), "{sel}");
        }
        // The demo namespace as shipped, with the label the API server adds.
        let demo = demo_objects()
            .unwrap()
            .into_iter()
            .find(|o| o["kind"] == "Namespace")
            .unwrap();
        let mut labels = demo["metadata"]["labels"].clone();
        labels["kubernetes.io/metadata.name"] = demo["metadata"]["name"].clone();
        assert!(selects(&webhooks[0]["namespaceSelector"], &labels));
    }
}

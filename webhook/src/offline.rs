//! `webhook inject -f FILE|-`: offline injection of workload YAML, like `istioctl kube-inject`.
//!
//! Each document (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, or a List of
//! them) has its pod (template) run through the same [`crate::inject::inject`] as the webhook, and
//! the patch applied to it. Other documents pass through unchanged.

use serde::Deserialize;
use serde_json::Value;

use crate::inject::{self, Outcome};
use crate::injector::InjectorConfig;
use crate::pod::PodView;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{source_name}: document {doc}: not valid YAML: {error}")]
    Yaml {
        source_name: String,
        doc: usize,
        error: String,
    },
    #[error("{source_name}: document {doc} ({kind} {name}): {error}")]
    Refused {
        source_name: String,
        doc: usize,
        kind: String,
        name: String,
        error: String,
    },
}

/// Injects every workload in `input` (YAML, possibly several documents) and returns the YAML out.
/// Notes about skipped pods go to `notes`, one line each.
pub fn inject_yaml(
    input: &str,
    source_name: &str,
    cfg: &InjectorConfig,
    notes: &mut Vec<String>,
) -> Result<String, OfflineError> {
    let mut out = String::new();
    for (i, de) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let doc = i + 1;
        let yaml_err = |error: String| OfflineError::Yaml {
            source_name: source_name.into(),
            doc,
            error,
        };
        let mut value = Value::deserialize(de).map_err(|e| yaml_err(e.to_string()))?;
        if value.is_null() {
            continue; // an empty document (a stray `---`)
        }
        inject_object(&mut value, cfg, notes).map_err(|(kind, name, error)| {
            OfflineError::Refused {
                source_name: source_name.into(),
                doc,
                kind,
                name,
                error,
            }
        })?;
        out.push_str("---\n");
        out.push_str(&crate::yaml::to_string(&value));
    }
    Ok(out)
}

type Refusal = (String, String, String);

fn inject_object(
    obj: &mut Value,
    cfg: &InjectorConfig,
    notes: &mut Vec<String>,
) -> Result<(), Refusal> {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let template_path = match kind.as_str() {
        "List" => {
            if let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    inject_object(item, cfg, notes)?;
                }
            }
            return Ok(());
        }
        "Pod" => "",
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return Ok(()),
    };
    let Some(template) = obj.pointer_mut(template_path) else {
        return Ok(());
    };
    let refuse = |e: String| (kind.clone(), name.clone(), e);
    // A pod template has the same metadata/spec shape as a Pod.
    let pod_value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata").cloned().unwrap_or_else(|| serde_json::json!({})),
        "spec": template.get("spec").cloned().unwrap_or(Value::Null),
    });
    // Checked against the full Pod schema, as the API server would; injection reads only its view.
    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod_value.clone())
        .map_err(|e| refuse(format!("not a valid pod template: {e}")))?;
    let pod = PodView::deserialize(&pod_value)
        .map_err(|e| refuse(format!("not a valid pod template: {e}")))?;
    match inject::inject(&pod, cfg) {
        Outcome::Inject { patch, warnings } => {
            notes.extend(warnings.into_iter().map(|w| format!("{kind} {name}: {w}")));
            let mut patched = pod_value;
            json_patch::patch(&mut patched, &patch)
                .map_err(|e| refuse(format!("patch failed: {e}")))?;
            let t = template.as_object_mut().expect("a template is an object");
            t.insert("metadata".into(), patched["metadata"].take());
            t.insert("spec".into(), patched["spec"].take());
        }
        Outcome::Skip { reason, warning } => {
            notes.push(format!(
                "{kind} {name}: not injected ({})",
                warning.unwrap_or_else(|| reason.as_str().into())
            ));
        }
        Outcome::Deny(e) => return Err(refuse(e.to_string())),
    }
    Ok(())
}

//! The API server's side of admission: an AdmissionReview (`admission.k8s.io/v1`) for a pod
//! CREATE, sent to the webhook over HTTPS, and its answer applied (a base64 JSON patch).

use anyhow::{bail, Context as _};
use base64::Engine as _;
use serde_json::{json, Value};

/// What the webhook answered for one pod.
#[derive(Debug, Clone)]
pub struct Admission {
    pub allowed: bool,
    /// `response.status.message` of a refusal.
    pub message: Option<String>,
    pub warnings: Vec<String>,
    /// The JSON patch, when there was one.
    pub patch: Option<Value>,
    /// The pod after the patch (the pod as sent when there was none).
    pub pod: Value,
}

impl Admission {
    pub fn injected(&self) -> bool {
        self.pod["metadata"]["annotations"]["trellis.dev/status"].is_string()
    }
}

/// The AdmissionReview the API server sends for `pod` created in `namespace`.
pub fn review(uid: &str, namespace: &str, pod: &Value) -> Value {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// Reads the webhook's AdmissionReview answer to `uid` and applies its patch to `pod`.
pub fn apply_response(uid: &str, pod: &Value, body: &str) -> anyhow::Result<Admission> {
    let v: Value = serde_json::from_str(body)
        .with_context(|| format!("the webhook's answer is not JSON: {body}"))?;
    let resp = &v["response"];
    if v["kind"] != "AdmissionReview" || resp.is_null() {
        bail!("the webhook's answer is not an AdmissionReview response: {body}");
    }
    if resp["uid"] != uid {
        bail!("the webhook answered uid {} for review {uid}", resp["uid"]);
    }
    let allowed = resp["allowed"].as_bool().unwrap_or(false);
    let message = resp["status"]["message"].as_str().map(str::to_string);
    let warnings = resp["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut out = pod.clone();
    let mut patch = None;
    if let Some(b64) = resp["patch"].as_str() {
        if resp["patchType"] != "JSONPatch" {
            bail!("patchType {} (only JSONPatch exists)", resp["patchType"]);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("patch is not base64")?;
        let p: Value = serde_json::from_slice(&bytes).context("patch is not JSON")?;
        let ops: json_patch::Patch =
            serde_json::from_value(p.clone()).context("patch is not an RFC 6902 JSON patch")?;
        json_patch::patch(&mut out, &ops).context("applying the webhook's patch")?;
        patch = Some(p);
    }
    Ok(Admission {
        allowed,
        message,
        warnings,
        patch,
        pod: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(uid: &str, response: Value) -> String {
        let mut r = response;
        r["uid"] = json!(uid);
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r})
            .to_string()
    }

    #[test]
    fn a_patch_is_decoded_and_applied() {
        let pod =
            json!({"metadata": {"generateName": "g-"}, "spec": {"containers": [{"name": "app"}]}});
        let patch = json!([
            {"op": "add", "path": "/spec/containers/0", "value": {"name": "proxy"}},
            {"op": "add", "path": "/metadata/annotations", "value": {"trellis.dev/status": "{}"}}
        ]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
        let body = answer(
            "u1",
            json!({"allowed": true, "patchType": "JSONPatch", "patch": b64}),
        );
        let a = apply_response("u1", &pod, &body).unwrap();
        assert!(a.allowed && a.injected());
        assert_eq!(a.pod["spec"]["containers"][0]["name"], "proxy");
        assert_eq!(a.pod["spec"]["containers"][1]["name"], "app");
    }

    #[test]
    fn a_refusal_keeps_its_message_and_the_pod() {
        let pod = json!({"spec": {}});
        let body = answer(
            "u2",
            json!({"allowed": false, "status": {"code": 400, "message": "bad value"}}),
        );
        let a = apply_response("u2", &pod, &body).unwrap();
        assert!(!a.allowed && a.patch.is_none());
        assert_eq!(a.message.as_deref(), Some("bad value"));
        assert_eq!(a.pod, pod);
    }

    #[test]
    fn a_wrong_uid_or_body_is_an_error() {
        let pod = json!({});
        assert!(apply_response("u3", &pod, &answer("other", json!({"allowed": true}))).is_err());
        assert!(apply_response("u3", &pod, "not json").is_err());
    }

    #[test]
    fn the_review_carries_the_namespace_outside_the_object() {
        let r = review("u4", "demo", &json!({"metadata": {"generateName": "g-"}}));
        assert_eq!(r["request"]["namespace"], "demo");
        assert_eq!(r["request"]["operation"], "CREATE");
        assert!(r["request"]["object"]["metadata"]["namespace"].is_null());
    }
}

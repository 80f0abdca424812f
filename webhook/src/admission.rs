//! AdmissionReview in, AdmissionReview out: decode the API server's request, ask [`crate::inject`]
//! and encode the answer (uid echoed, base64 JSONPatch when anything changes).
//!
//! Only `admission.k8s.io/v1` is spoken. Anything that is not a pod CREATE is allowed unchanged.
//! The review is decoded from the body's bytes into the few fields read here; the object stays raw
//! until it is known to be a pod, and is then decoded as a [`PodView`] (bounded memory whatever the
//! body). Parse errors quote the input cut short ([`crate::echo`]).
//!
//! A pod that would be injected is refused instead where its namespace enforces a Pod Security
//! level that forbids `proxyinit` ([`crate::namespaces`]); the namespace is the request's
//! `namespace` (a ReplicaSet's pods often carry none in their metadata).

use base64::Engine as _;
use kube::core::admission::Operation;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::echo;
use crate::inject::{self, Outcome, Refusal};
use crate::injector::InjectorConfig;
use crate::namespaces::{self, Enforcement};
use crate::pod::PodView;

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// How a review ended, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Injected,
    Skipped(&'static str),
    /// Refused: `""` for an invalid pod (a bad annotation, too large), [`POD_SECURITY`] where the
    /// namespace's Pod Security level forbids `proxyinit`.
    Denied(&'static str),
}

/// The reason of a pod refused for its namespace's Pod Security level (metric label).
pub const POD_SECURITY: &str = "pod_security";

impl Verdict {
    pub fn result(&self) -> &'static str {
        match self {
            Verdict::Injected => "injected",
            Verdict::Skipped(_) => "skipped",
            Verdict::Denied(_) => "denied",
        }
    }
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Skipped(r) | Verdict::Denied(r) => r,
            Verdict::Injected => "",
        }
    }
}

/// A body that is not a usable AdmissionReview; answered with HTTP 400 and this message.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not an AdmissionReview: {}", echo::shown_max(&.0.to_string(), MAX_ERROR))]
    Parse(#[from] serde_json::Error),
    #[error("AdmissionReview apiVersion {} is not supported: expected {API_VERSION} (set admissionReviewVersions: [v1])", echo::quoted(.0))]
    Version(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request.object is not a valid Pod: {}", echo::shown_max(&.0.to_string(), MAX_ERROR))]
    Pod(serde_json::Error),
}

/// Longest parse error text passed on (serde_json's quote the offending string whole).
const MAX_ERROR: usize = 512;

/// What is read of an AdmissionReview; every other field is skipped unread.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    api_version: String,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default, borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    uid: String,
    kind: KindIn,
    #[serde(rename = "resource")]
    _resource: IgnoredAny,
    #[serde(default)]
    sub_resource: Option<String>,
    operation: Operation,
    /// Where the pod is created; absent for cluster-scoped kinds.
    #[serde(default)]
    namespace: Option<String>,
    #[serde(rename = "userInfo")]
    _user_info: IgnoredAny,
    /// Left as text until the request is known to be a pod CREATE.
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct KindIn {
    group: String,
    #[serde(rename = "version")]
    _version: IgnoredAny,
    kind: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub response: ResponseOut,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseOut {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// The JSON patch, base64-encoded as the API requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct StatusOut {
    pub code: u16,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// Handles one review body, without the Pod Security check (as `webhook inject` does). `Err`
/// means the body itself was unusable (HTTP 400).
pub fn review(body: &[u8], cfg: &InjectorConfig) -> Result<(ReviewOut, Verdict), ReviewError> {
    review_in(body, cfg, &|_| Enforcement::Unchecked)
}

/// [`review`], where `pod_security` tells what Pod Security enforces in a namespace: asked only
/// for a pod that would be injected, which is refused (403) if that level forbids `proxyinit`.
pub fn review_in(
    body: &[u8],
    cfg: &InjectorConfig,
    pod_security: &dyn Fn(&str) -> Enforcement,
) -> Result<(ReviewOut, Verdict), ReviewError> {
    let review: ReviewIn = serde_json::from_slice(body)?;
    if review.api_version != API_VERSION {
        return Err(ReviewError::Version(review.api_version));
    }
    let req = review.request.ok_or(ReviewError::NoRequest)?;
    let mut out = ResponseOut {
        uid: req.uid,
        allowed: true,
        status: None,
        patch_type: None,
        patch: None,
        warnings: Vec::new(),
    };
    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod" && req.sub_resource.is_none();
    let verdict = if !is_pod {
        Verdict::Skipped("not_a_pod")
    } else if !matches!(req.operation, Operation::Create) {
        Verdict::Skipped("not_create")
    } else if let Some(object) = req.object.filter(|o| o.get() != "null") {
        let pod: PodView = serde_json::from_str(object.get()).map_err(ReviewError::Pod)?;
        let namespace = req.namespace.as_deref();
        let veto = || namespace.and_then(|ns| namespaces::refusal(ns, &pod_security(ns)));
        match inject::inject_unless(&pod, cfg, &veto) {
            Outcome::Inject { patch, warnings } => {
                out.warnings.extend(warnings);
                let bytes = serde_json::to_vec(&patch).expect("patch serializes");
                out.patch_type = Some("JSONPatch");
                out.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                Verdict::Injected
            }
            Outcome::Skip { reason, warning } => {
                out.warnings.extend(warning);
                Verdict::Skipped(reason.as_str())
            }
            Outcome::Deny(e) => {
                let (code, reason, verdict) = match e {
                    Refusal::Forbidden(_) => (403, "Forbidden", POD_SECURITY),
                    _ => (400, "BadRequest", ""),
                };
                out.allowed = false;
                out.status = Some(StatusOut {
                    code,
                    status: "Failure",
                    reason,
                    message: format!("trellis: pod refused: {e}"),
                });
                Verdict::Denied(verdict)
            }
        }
    } else {
        Verdict::Skipped("no_object")
    };
    Ok((
        ReviewOut {
            api_version: API_VERSION,
            kind: "AdmissionReview",
            response: out,
        },
        verdict,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::{enforce_level, Level, ENFORCE_LABEL};

    fn body(namespace: &str, annotations: &str) -> Vec<u8> {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{
            "uid":"u","kind":{{"group":"","version":"v1","kind":"Pod"}},
            "resource":{{"group":"","version":"v1","resource":"pods"}},"namespace":"{namespace}",
            "operation":"CREATE","userInfo":{{}},"object":{{"metadata":{{"generateName":"a-",
            "annotations":{{{annotations}}}}},"spec":{{"containers":[{{"name":"app","image":"i"}}]}}}}}}}}"#
        )
        .into_bytes()
    }

    /// `baseline` for namespace `strict`, nothing for any other; records what was asked.
    fn levels(asked: &std::cell::RefCell<Vec<String>>) -> impl Fn(&str) -> Enforcement + '_ {
        move |ns| {
            asked.borrow_mut().push(ns.to_string());
            let labels = (ns == "strict")
                .then(|| [(ENFORCE_LABEL.to_string(), "baseline".to_string())].into());
            Enforcement::Known(enforce_level(labels.as_ref(), Level::Privileged))
        }
    }

    #[test]
    fn a_pod_that_would_be_injected_is_refused_where_its_namespace_enforces_baseline() {
        let asked = std::cell::RefCell::new(Vec::new());
        let cfg = InjectorConfig::default();
        let (out, verdict) = review_in(&body("strict", ""), &cfg, &levels(&asked)).unwrap();
        assert_eq!(verdict, Verdict::Denied(POD_SECURITY));
        assert!(!out.response.allowed && out.response.patch.is_none());
        let status = out.response.status.unwrap();
        assert_eq!((status.code, status.reason), (403, "Forbidden"));
        assert!(
            status.message.starts_with(
                "trellis: pod refused: namespace \"strict\" enforces Pod Security level \"baseline\""
            ),
            "{}",
            status.message
        );
        assert_eq!(
            asked.borrow().as_slice(),
            ["strict"],
            "request.namespace asked"
        );

        let (out, verdict) = review_in(&body("open", ""), &cfg, &levels(&asked)).unwrap();
        assert_eq!(verdict, Verdict::Injected);
        assert!(out.response.allowed && out.response.patch.is_some());
    }

    #[test]
    fn pods_not_injected_or_invalid_are_decided_as_before_without_asking() {
        let asked = std::cell::RefCell::new(Vec::new());
        let cfg = InjectorConfig::default();
        let (_, verdict) = review_in(
            &body("strict", r#""trellis.dev/inject":"disabled""#),
            &cfg,
            &levels(&asked),
        )
        .unwrap();
        assert_eq!(verdict, Verdict::Skipped("opted_out"));
        let (out, verdict) = review_in(
            &body("strict", r#""trellis.dev/max-connections":"ten""#),
            &cfg,
            &levels(&asked),
        )
        .unwrap();
        assert_eq!(verdict, Verdict::Denied(""));
        assert!(out
            .response
            .status
            .unwrap()
            .message
            .contains("max-connections"));
        assert!(asked.borrow().is_empty(), "{:?}", asked.borrow());
        // Without a check (`webhook inject`, no cache), the same pod is injected.
        let (_, verdict) = review(&body("strict", ""), &cfg).unwrap();
        assert_eq!(verdict, Verdict::Injected);
    }
}

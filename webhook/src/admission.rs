//! AdmissionReview in, AdmissionReview out: decode the API server's request, ask [`crate::inject`]
//! and encode the answer (uid echoed, base64 JSONPatch when anything changes).
//!
//! Only `admission.k8s.io/v1` is spoken. Anything that is not a pod CREATE is allowed unchanged.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde::Serialize;

use crate::inject::{self, Outcome};
use crate::injector::InjectorConfig;

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// How a review ended, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Injected,
    Skipped(&'static str),
    Denied,
}

impl Verdict {
    pub fn result(&self) -> &'static str {
        match self {
            Verdict::Injected => "injected",
            Verdict::Skipped(_) => "skipped",
            Verdict::Denied => "denied",
        }
    }
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Skipped(r) => r,
            _ => "",
        }
    }
}

/// A body that is not a usable AdmissionReview; answered with HTTP 400 and this message.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not an AdmissionReview: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("AdmissionReview apiVersion {0:?} is not supported: expected {API_VERSION} (set admissionReviewVersions: [v1])")]
    Version(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request.object is not a valid Pod: {0}")]
    Pod(serde_json::Error),
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

/// Handles one review body. `Err` means the body itself was unusable (HTTP 400).
pub fn review(body: &[u8], cfg: &InjectorConfig) -> Result<(ReviewOut, Verdict), ReviewError> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    if review.types.api_version != API_VERSION {
        return Err(ReviewError::Version(review.types.api_version));
    }
    let req: AdmissionRequest<DynamicObject> = review.request.ok_or(ReviewError::NoRequest)?;
    let mut out = ResponseOut {
        uid: req.uid.clone(),
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
    } else if let Some(object) = req.object {
        let pod: Pod = serde_json::to_value(object)
            .and_then(serde_json::from_value)
            .map_err(ReviewError::Pod)?;
        match inject::inject(&pod, cfg) {
            Outcome::Inject(patch) => {
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
                out.allowed = false;
                out.status = Some(StatusOut {
                    code: 400,
                    status: "Failure",
                    reason: "BadRequest",
                    message: format!("trellis: pod refused: {e}"),
                });
                Verdict::Denied
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

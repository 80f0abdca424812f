//! `webhook`: Trellis's sidecar injector.
//!
//! A mutating admission webhook that adds the `proxyinit` init container and the `proxy` sidecar to
//! pods created in namespaces labelled `sidecarInjectorWebhook=enabled`. The decision and the patch
//! are a pure function ([`inject`]) of the few fields of a pod it reads ([`pod`]); [`admission`]
//! speaks AdmissionReview; [`server`] is the HTTPS shell and its limits; [`offline`] is
//! `webhook inject -f`; [`bootstrap`] makes and publishes its certificate; [`namespaces`] knows each
//! namespace's Pod Security level, so pods that level would reject are refused with a reason.
#![forbid(unsafe_code)]

pub mod admission;
pub mod annotations;
pub mod bootstrap;
pub mod echo;
pub mod inject;
pub mod injector;
pub mod metrics;
pub mod namespaces;
pub mod offline;
pub mod pod;
pub mod server;
pub mod tls;
pub mod yaml;

pub use injector::InjectorConfig;

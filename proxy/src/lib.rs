//! `proxy`: the Trellis sidecar, an Envoy-equivalent data plane.
//!
//! Sidecar mode accepts connections redirected by `proxyinit` (outbound on 15001, inbound on 15006),
//! reads their original destination, and forwards them through per-destination clusters whose
//! connection pools enforce Envoy's circuit-breaker limits. [`Config`] is shared with the webhook,
//! which renders the sidecar's args from it.

pub mod config;

pub use config::{Config, Limits};

//! The one test kit every Trellis suite uses (proxyinit's, proxy's and webhook's tests, and the
//! pod sandbox behind `make demo`). Each suite used to carry its own network-namespace helper,
//! `sh`, `/stats` parser, HTTP client, golden-update switch and root check, and they had drifted
//! apart; here there is one of each.
//!
//! - [`netns`]: named network namespaces and veth pairs, deleted (with their processes) on drop;
//! - [`process`]: a program run as a uid/gid inside a namespace, the way a container runtime would;
//! - [`http`]: one HTTP/1.1 client (plain or TLS, from any namespace);
//! - [`stats`]: Envoy's `/stats` text parsed once, and a matcher that retries until a deadline;
//! - [`golden`]: compare-or-update of golden files behind one switch, `UPDATE_GOLDEN=1`;
//! - [`root`]: the one root check, which fails and never skips;
//! - [`apiserver`]: a Kubernetes API server double (list, watch, writes, status) for kube clients.

pub mod apiserver;
mod error;
pub mod golden;
pub mod http;
pub mod netns;
pub mod process;
pub mod root;
pub mod stats;

pub use error::Error;

use std::future::Future;

/// Runs `fut` to completion on a fresh current-thread runtime: for synchronous callers (the
/// sandbox, `#[test]` functions) of the async [`http`] client and [`stats`] matcher.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
        .block_on(fut)
}

//! Traffic from inside a pod: the `loadgen` client (fortio-like: `-c` connections, `-n` requests,
//! keep-alive) run with `kubectl exec` semantics, as the app's user, so the pod's iptables rules
//! treat it as the app's own traffic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Context as _};

use kit::process::{wait_timeout, Spec};

use crate::mesh::Pod;
use crate::{bins, IMAGE_USER};

/// What `loadgen` reports (its last stdout line, JSON).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct LoadResult {
    pub requests: u64,
    /// Status code → count.
    pub codes: BTreeMap<u16, u64>,
    /// Responses carrying `x-envoy-overloaded: true`.
    pub overloaded: u64,
    /// Requests that got no response (connection errors, timeouts).
    pub errors: u64,
    /// Response body (trimmed, first 100 bytes) → count.
    pub bodies: BTreeMap<String, u64>,
    /// Answers by the value of the header named with `--count-header` (`x-pod`).
    #[serde(default)]
    pub by_header: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// The median and the slowest answered request, in milliseconds.
    #[serde(default)]
    pub p50_ms: u64,
    #[serde(default)]
    pub max_ms: u64,
}

impl LoadResult {
    pub fn code(&self, code: u16) -> u64 {
        self.codes.get(&code).copied().unwrap_or(0)
    }

    /// Everything that was neither 200 nor 503.
    pub fn other(&self) -> u64 {
        self.requests - self.code(200) - self.code(503)
    }
}

/// A load run in progress.
pub struct Running {
    child: Child,
    out: PathBuf,
}

impl Running {
    pub fn is_done(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn finish(mut self) -> anyhow::Result<LoadResult> {
        let status = wait_timeout(&mut self.child, Duration::from_secs(120));
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let _ = std::fs::remove_file(&self.out);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            bail!("loadgen did not finish within 120s: {text}");
        }
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("loadgen printed no result: {text}"))?;
        serde_json::from_str(line).with_context(|| format!("loadgen's result {line:?}"))
    }
}

/// Starts `loadgen URL -c C -n N` in `pod` as the image's user.
pub fn start(pod: &Pod, url: &str, c: u32, n: u32) -> anyhow::Result<Running> {
    start_with(pod, url, c, n, &[])
}

/// [`start`] with more `loadgen` flags (`--new-connections`).
pub fn start_with(pod: &Pod, url: &str, c: u32, n: u32, flags: &[&str]) -> anyhow::Result<Running> {
    start_in(&pod.ns, url, c, n, flags)
}

/// [`start_with`] from any namespace (the node: a client outside the mesh).
pub fn start_in(
    ns: &kit::netns::Netns,
    url: &str,
    c: u32,
    n: u32,
    flags: &[&str],
) -> anyhow::Result<Running> {
    let mut argv = vec![
        bins::path("loadgen")?.display().to_string(),
        url.to_string(),
        format!("-c={c}"),
        format!("-n={n}"),
    ];
    argv.extend(flags.iter().map(|f| f.to_string()));
    let out = kit::process::temp_file("loadgen")?;
    let child = Spec::new(argv, IMAGE_USER, IMAGE_USER).spawn_to(ns, &out)?;
    Ok(Running { child, out })
}

/// Runs `loadgen` to the end.
pub fn run(pod: &Pod, url: &str, c: u32, n: u32) -> anyhow::Result<LoadResult> {
    start(pod, url, c, n)?.finish()
}

/// [`run`] with more `loadgen` flags.
pub fn run_with(
    pod: &Pod,
    url: &str,
    c: u32,
    n: u32,
    flags: &[&str],
) -> anyhow::Result<LoadResult> {
    start_with(pod, url, c, n, flags)?.finish()
}

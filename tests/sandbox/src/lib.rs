//! The pod sandbox: Trellis end to end on one machine, with network namespaces playing the pods and
//! this crate playing the API server and the kubelet.
//!
//! A [`Mesh`](mesh::Mesh) is one "node": a network namespace holding a bridge, a real `webhook
//! serve` in its own namespace with a certificate from `certs/make-certs.sh`, and pods made from the
//! Deployments in `manifests/demo/`. Each pod template is sent to the webhook as an AdmissionReview
//! over HTTPS, the returned JSON patch is applied, and [`kubelet`] runs the result: `proxyinit` with
//! exactly the injected command and args as root, then `proxy` with the injected args and env as uid
//! 1337, its postStart hook (`proxy wait-ready`), and the app. [`scenarios`] drive real traffic
//! through it and check what a user would check; the tests and `make demo` run the same scenarios.
//!
//! Everything made (namespaces, processes, temporary files) is removed on drop, so also when a test
//! panics, and by [`cleanup::all`] when the demo is interrupted.

pub mod admission;
pub mod bins;
pub mod cleanup;
pub mod http;
pub mod kubelet;
pub mod load;
pub mod manifests;
pub mod mesh;
pub mod netns;
pub mod process;
pub mod scenarios;
pub mod stats;

/// The uid/gid the Trellis image runs as when a container sets none (the Dockerfile's `USER`).
pub const IMAGE_USER: u32 = 65532;

/// Fails (never skips) when not root: namespaces, veths and iptables need it.
pub fn require_root() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!(
            "the pod sandbox needs root (it creates network namespaces, veth pairs and iptables \
             rules, and runs the proxy as uid 1337): run it as root, e.g. `sudo make demo` or \
             `sudo -E cargo test --release -p sandbox`"
        )
    }
}

//! Issue 15's shutdown must-shows in the pod sandbox (root): the "kubelet" deletes pods by sending
//! SIGTERM to their containers, as it does (see `sandbox::scenarios::sigterm_drain`).
//!
//! - an app that makes an outbound call 3 s after its SIGTERM succeeds (its proxy's outbound
//!   listener keeps serving), and the proxy exits 0 after the app, at its drain time;
//! - inbound requests in flight at SIGTERM finish, and new and pooled callers are told
//!   `connection: close`;
//! - with `trellis.dev/native-sidecar: enabled` (the kubelet stops the proxy after the app) the
//!   call succeeds too and the proxy exits right after its drain time.

use sandbox::mesh::Mesh;

fn run(tag: &str, native: bool) {
    kit::root::require_root();
    let mut mesh = Mesh::start(&Mesh::unique_prefix(tag)).unwrap_or_else(|e| panic!("{e:#}"));
    let r =
        sandbox::scenarios::sigterm_drain(&mut mesh, native).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(r.passed(), "{r}");
    eprintln!("{r}");
}

#[test]
fn shutdown_outbound_call_after_sigterm_succeeds_and_inbound_drains_with_connection_close() {
    run("sigterm", false);
}

#[test]
fn shutdown_native_sidecar_outbound_call_after_sigterm_succeeds_and_proxy_exits_after_drain() {
    run("sigtermnative", true);
}

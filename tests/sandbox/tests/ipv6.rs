//! Issue 16, item 5, in the pod sandbox (root): IPv6 between network namespaces. The sandbox's
//! node bridge is dual-stack (10.214.0.0/24 and fd00:214::/64), so every pod has an IPv6 address
//! too, and over IPv6 only:
//!
//! - the webhook, listening on its default `[::]:8443`, answers `/readyz` and an admission
//!   review from the node (the API server's namespace);
//! - a meshed pod's proxy admin (`[::]:9901`) answers `/ready` and `/stats` from other
//!   namespaces, and refuses their `POST /quitquitquit`;
//! - the meshed client's app calls green at `http://[fd00:214::N]:8080/` and gets 200 through
//!   both sidecars (each pod's ip6tables rules written by `proxyinit`), as both proxies' stats
//!   and access logs show.
//!
//! `flock /tmp/trellis-netns.lock cargo test --release -p sandbox --test ipv6 -- --nocapture`

use sandbox::mesh::Mesh;
use sandbox::scenarios::ipv6;

#[test]
fn ipv6_webhook_admin_and_meshed_call_between_namespaces() {
    kit::root::require_root();
    let mut mesh = Mesh::start(&Mesh::unique_prefix("ipv6")).unwrap_or_else(|e| panic!("{e:#}"));
    ipv6::deploy(&mut mesh).unwrap_or_else(|e| panic!("{e:#}"));
    let r = ipv6::ipv6(&mesh).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{r}");
    assert!(r.passed(), "{r}");
}

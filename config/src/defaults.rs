//! The defaults every component assumes, typed once: the clap attributes, the webhook, the pod
//! sandbox and the docs all read them from here (PRODUCT.md, "Ports and identity").

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The proxy's inbound capture listener (Istio's 15006).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// The proxy's outbound capture listener (Istio's 15001).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// The proxy's admin API (Envoy's 9901).
pub const ADMIN_PORT: u16 = 9901;
/// The proxy's app-health port (Istio's 15020): the kubelet's rewritten probes land here.
pub const APP_HEALTH_PORT: u16 = 15020;
/// The uid the proxy runs as; `proxyinit` exempts its traffic from redirection.
pub const PROXY_UID: u32 = 1337;
/// The gid the proxy runs as.
pub const PROXY_GID: u32 = 1337;
/// Outbound CIDRs never redirected: the cloud metadata endpoint.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "169.254.169.254/32";

/// The admin API's listen address: every interface of both families (`[::]`, one dual-stack
/// socket; IPv4 only in a pod without IPv6), so Prometheus can scrape the pod IP on IPv4-only,
/// dual-stack and IPv6-only clusters alike.
pub const fn admin_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), ADMIN_PORT)
}

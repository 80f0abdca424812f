//! The injector's settings: which images to inject, the proxy's identity and ports, default resources.
//!
//! Shared by `webhook serve` and `webhook inject`; every flag is also read from `TRELLIS_<FLAG>`.
//! Defaults and parsers come from the `config` crate, as the injected binaries' own do.

use std::sync::OnceLock;

use config::args::clap_defaults;
use config::defaults;
use config::parse::{parse_port, parse_proxy_id};

/// The image holding all three Trellis binaries, tagged with this release.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/trellis-mesh/trellis:", env!("CARGO_PKG_VERSION"));

/// Label carried by the webhook's own pods; they are never injected.
pub const OWN_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "trellis-webhook");

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct InjectorConfig {
    /// Image of the injected `proxy` sidecar.
    #[arg(long, env = "TRELLIS_PROXY_IMAGE", default_value = DEFAULT_IMAGE)]
    pub proxy_image: String,

    /// Image of the injected `proxyinit` init container.
    #[arg(long, env = "TRELLIS_PROXYINIT_IMAGE", default_value = DEFAULT_IMAGE)]
    pub proxyinit_image: String,

    /// imagePullPolicy of both injected containers.
    #[arg(long, env = "TRELLIS_IMAGE_PULL_POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,

    /// uid the proxy runs as (its traffic is never redirected).
    #[arg(long, env = "TRELLIS_PROXY_UID", default_value_t = defaults::PROXY_UID, value_parser = parse_proxy_id)]
    pub proxy_uid: u32,

    /// gid the proxy runs as.
    #[arg(long, env = "TRELLIS_PROXY_GID", default_value_t = defaults::PROXY_GID, value_parser = parse_proxy_id)]
    pub proxy_gid: u32,

    /// Port of the proxy's inbound capture listener.
    #[arg(long, env = "TRELLIS_INBOUND_CAPTURE_PORT", default_value_t = defaults::INBOUND_CAPTURE_PORT, value_parser = parse_port)]
    pub inbound_capture_port: u16,

    /// Port of the proxy's outbound capture listener.
    #[arg(long, env = "TRELLIS_OUTBOUND_CAPTURE_PORT", default_value_t = defaults::OUTBOUND_CAPTURE_PORT, value_parser = parse_port)]
    pub outbound_capture_port: u16,

    /// Port of the proxy's admin API (readiness probe, stats, Prometheus scrape).
    #[arg(long, env = "TRELLIS_PROXY_ADMIN_PORT", default_value_t = defaults::ADMIN_PORT, value_parser = parse_port)]
    pub proxy_admin_port: u16,

    /// Default CPU request of the sidecar (`trellis.dev/proxy-cpu-request` overrides).
    #[arg(long, env = "TRELLIS_PROXY_CPU_REQUEST", default_value = "10m", value_parser = parse_quantity_flag)]
    pub proxy_cpu_request: String,

    /// Default memory request of the sidecar.
    #[arg(long, env = "TRELLIS_PROXY_MEMORY_REQUEST", default_value = "32Mi", value_parser = parse_quantity_flag)]
    pub proxy_memory_request: String,

    /// Default CPU limit of the sidecar (none unless set).
    #[arg(long, env = "TRELLIS_PROXY_CPU_LIMIT", value_parser = parse_quantity_flag)]
    pub proxy_cpu_limit: Option<String>,

    /// Default memory limit of the sidecar (none unless set).
    #[arg(long, env = "TRELLIS_PROXY_MEMORY_LIMIT", value_parser = parse_quantity_flag)]
    pub proxy_memory_limit: Option<String>,

    /// The control plane the sidecars ask what each outbound address is (`HOST:PORT`, rendered
    /// as the proxy's `--control-plane`). Empty: none; every destination is forwarded as asked.
    #[arg(long, env = "TRELLIS_CONTROL_PLANE", default_value = DEFAULT_CONTROL_PLANE)]
    pub control_plane: String,

    /// The cluster's DNS domain, rendered as the proxy's `--cluster-domain`.
    #[arg(long, env = "TRELLIS_CLUSTER_DOMAIN", default_value = config::api::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
}

/// `trellis-control`'s Service, as `manifests/` installs it.
pub const DEFAULT_CONTROL_PLANE: &str = "trellis-control.trellis-system.svc:15012";

impl Default for InjectorConfig {
    fn default() -> Self {
        static DEFAULT: OnceLock<InjectorConfig> = OnceLock::new();
        DEFAULT.get_or_init(clap_defaults).clone()
    }
}

impl InjectorConfig {
    /// Cross-flag checks: the proxy's three ports must differ (as `proxyinit` itself insists).
    pub fn validate(&self) -> Result<(), config::ConfigError> {
        config::distinct_ports(&[
            ("--inbound-capture-port", self.inbound_capture_port),
            ("--outbound-capture-port", self.outbound_capture_port),
            ("--proxy-admin-port", self.proxy_admin_port),
        ])
    }
}

fn parse_quantity_flag(s: &str) -> Result<String, String> {
    crate::annotations::parse_quantity(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        c: InjectorConfig,
    }

    #[test]
    fn defaults_match_default_impl() {
        assert_eq!(
            Cli::try_parse_from(["webhook"]).unwrap().c,
            InjectorConfig::default()
        );
    }

    #[test]
    fn clashing_ports_are_refused() {
        let c = Cli::try_parse_from(["webhook", "--proxy-admin-port=15001"])
            .unwrap()
            .c;
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("--outbound-capture-port")
                && msg.contains("--proxy-admin-port")
                && msg.contains("15001"),
            "{msg}"
        );
        assert!(InjectorConfig::default().validate().is_ok());
    }

    #[test]
    fn bad_quantity_is_refused_with_flag_and_value() {
        let err = Cli::try_parse_from(["webhook", "--proxy-memory-request=lots"])
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("--proxy-memory-request") && msg.contains("lots"),
            "{msg}"
        );
    }
}

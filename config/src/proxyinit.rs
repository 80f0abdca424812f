//! The `proxyinit` command line: parsed by the binary, rendered back into args by the webhook.

use std::sync::OnceLock;

use crate::args::{clap_defaults, Flag, Render};
use crate::defaults;
use crate::parse::{join, parse_port, parse_port_list, parse_proxy_id, CidrList, PortSpec};
use crate::{distinct_ports, ConfigError};

/// Everything `proxyinit` needs to compute its rules. Every flag is also read from `TRELLIS_<FLAG>`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// uid the proxy runs as; its own traffic is never redirected.
    #[arg(long, env = "TRELLIS_PROXY_UID", default_value_t = defaults::PROXY_UID, value_parser = parse_proxy_id)]
    pub proxy_uid: u32,

    /// gid the proxy runs as; its own traffic is never redirected.
    #[arg(long, env = "TRELLIS_PROXY_GID", default_value_t = defaults::PROXY_GID, value_parser = parse_proxy_id)]
    pub proxy_gid: u32,

    /// Port of the proxy's inbound capture listener.
    #[arg(long, env = "TRELLIS_INBOUND_CAPTURE_PORT", default_value_t = defaults::INBOUND_CAPTURE_PORT, value_parser = parse_port)]
    pub inbound_capture_port: u16,

    /// Port of the proxy's outbound capture listener.
    #[arg(long, env = "TRELLIS_OUTBOUND_CAPTURE_PORT", default_value_t = defaults::OUTBOUND_CAPTURE_PORT, value_parser = parse_port)]
    pub outbound_capture_port: u16,

    /// Port of the proxy's admin listener; always excluded from inbound capture.
    #[arg(long, env = "TRELLIS_PROXY_ADMIN_PORT", default_value_t = defaults::ADMIN_PORT, value_parser = parse_port)]
    pub proxy_admin_port: u16,

    /// Port of the proxy's app-health listener (the rewritten probes); always excluded from
    /// inbound capture, so the kubelet reaches it directly.
    #[arg(long, env = "TRELLIS_PROXY_APP_HEALTH_PORT", default_value_t = defaults::APP_HEALTH_PORT, value_parser = parse_port)]
    pub proxy_app_health_port: u16,

    /// Inbound ports to capture: a comma-separated list, or `*` for every port.
    #[arg(long, env = "TRELLIS_INBOUND_PORTS", default_value = "*")]
    pub inbound_ports: PortSpec,

    // The lists below are one value each (`std::vec::Vec` tells clap so): an empty value is the
    // empty list, as for `--inbound-ports` and `--exclude-outbound-cidrs`.
    /// Inbound ports never redirected (comma-separated; empty: none).
    #[arg(long, env = "TRELLIS_EXCLUDE_INBOUND_PORTS", default_value = "", value_parser = parse_port_list)]
    pub exclude_inbound_ports: std::vec::Vec<u16>,

    /// Outbound destination ports never redirected (comma-separated; empty: none).
    #[arg(long, env = "TRELLIS_EXCLUDE_OUTBOUND_PORTS", default_value = "", value_parser = parse_port_list)]
    pub exclude_outbound_ports: std::vec::Vec<u16>,

    /// Outbound destination CIDRs never redirected (comma-separated).
    /// An empty value excludes nothing (the metadata endpoint default is dropped too).
    #[arg(long, env = "TRELLIS_EXCLUDE_OUTBOUND_CIDRS", default_value = defaults::EXCLUDE_OUTBOUND_CIDRS)]
    pub exclude_outbound_cidrs: CidrList,

    /// Write ip6tables rules too: `auto` when the pod has a global IPv6 address.
    #[arg(long, env = "TRELLIS_IPV6", value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,

    /// iptables backend: `auto` picks the one that already holds the node's rules.
    #[arg(long, env = "TRELLIS_IPTABLES_MODE", value_enum, default_value_t = IpTablesMode::Auto)]
    pub iptables_mode: IpTablesMode,
}

impl Default for Config {
    fn default() -> Self {
        static DEFAULT: OnceLock<Config> = OnceLock::new();
        DEFAULT.get_or_init(clap_defaults).clone()
    }
}

impl Render for Config {
    fn flags(&self) -> Vec<Flag> {
        // Every flag is a rule input, so every flag is pinned: written even at its default.
        let list = |ports: &[u16]| (!ports.is_empty()).then(|| join(ports));
        [
            Flag::text("proxy-uid", self.proxy_uid),
            Flag::text("proxy-gid", self.proxy_gid),
            Flag::text("inbound-capture-port", self.inbound_capture_port),
            Flag::text("outbound-capture-port", self.outbound_capture_port),
            Flag::text("proxy-admin-port", self.proxy_admin_port),
            Flag::text("proxy-app-health-port", self.proxy_app_health_port),
            Flag::text("inbound-ports", &self.inbound_ports),
            Flag::optional("exclude-inbound-ports", list(&self.exclude_inbound_ports)),
            Flag::optional("exclude-outbound-ports", list(&self.exclude_outbound_ports)),
            // An empty list is written as `--exclude-outbound-cidrs=`, so the metadata endpoint
            // default does not come back.
            Flag::text("exclude-outbound-cidrs", &self.exclude_outbound_cidrs),
            Flag::text("ipv6", self.ipv6.as_str()),
            Flag::text("iptables-mode", self.iptables_mode.as_str()),
        ]
        .into_iter()
        .map(Flag::pinned)
        .collect()
    }
}

impl Config {
    /// Cross-field checks that clap cannot express on one flag; the binary exits 2 on them before
    /// touching anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let own = [
            ("--inbound-capture-port", self.inbound_capture_port),
            ("--outbound-capture-port", self.outbound_capture_port),
            ("--proxy-admin-port", self.proxy_admin_port),
            ("--proxy-app-health-port", self.proxy_app_health_port),
        ];
        distinct_ports(&own)?;
        // An app port the proxy also listens on could not be served: one of the two would fail
        // to bind, and the admin port is never captured.
        if let PortSpec::List(ports) = &self.inbound_ports {
            if let Some((flag, port)) = own.iter().find(|(_, p)| ports.contains(p)) {
                return Err(ConfigError::AppPortIsProxyPort { flag, port: *port });
            }
        }
        Ok(())
    }
}

/// When to write ip6tables rules as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Mode {
    Auto,
    On,
    Off,
}

impl Ipv6Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Ipv6Mode::Auto => "auto",
            Ipv6Mode::On => "on",
            Ipv6Mode::Off => "off",
        }
    }
}

/// Which iptables backend to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IpTablesMode {
    Auto,
    Legacy,
    Nft,
}

impl IpTablesMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IpTablesMode::Auto => "auto",
            IpTablesMode::Legacy => "legacy",
            IpTablesMode::Nft => "nft",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Cli::try_parse_from(std::iter::once("proxyinit").chain(args.iter().copied()))
            .map(|c| c.config)
    }

    fn round_trip(c: &Config) -> Config {
        let args = c.to_args();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        parse(&argv).unwrap()
    }

    #[test]
    fn defaults_match_default_impl() {
        assert_eq!(parse(&[]).unwrap(), Config::default());
        assert!(
            Config::default()
                .to_args()
                .contains(&"--proxy-uid=1337".to_string()),
            "the rule inputs are written even at their defaults"
        );
        assert_eq!(Config::default().proxy_uid, 1337);
        assert_eq!(
            Config::default().exclude_outbound_cidrs.to_string(),
            "169.254.169.254/32"
        );
    }

    #[test]
    fn to_args_round_trips() {
        let mut c = Config {
            proxy_uid: 2000,
            inbound_ports: PortSpec::List(vec![8080, 9090]),
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![3306, 5432],
            exclude_outbound_cidrs: "10.0.0.0/8,fd00::/8".parse().unwrap(),
            ipv6: Ipv6Mode::Off,
            iptables_mode: IpTablesMode::Nft,
            ..Config::default()
        };
        assert_eq!(round_trip(&c), c);
        c.exclude_outbound_cidrs.0.clear();
        assert_eq!(
            round_trip(&c),
            c,
            "an empty CIDR list must not bring the default back"
        );
        c.inbound_ports = PortSpec::List(vec![]);
        assert_eq!(round_trip(&c), c, "an empty port list captures nothing");
        assert_eq!(round_trip(&Config::default()), Config::default());
    }

    #[test]
    fn bad_values_name_the_flag_and_the_value() {
        for (args, flag, value) in [
            (vec!["--inbound-ports=80,http"], "--inbound-ports", "http"),
            (
                vec!["--exclude-outbound-ports=70000"],
                "--exclude-outbound-ports",
                "70000",
            ),
            (
                vec!["--exclude-outbound-cidrs=10.0.0.0/33"],
                "--exclude-outbound-cidrs",
                "10.0.0.0/33",
            ),
            (vec!["--proxy-uid=-1"], "--proxy-uid", "-1"),
            (vec!["--proxy-gid=istio"], "expected a number", "istio"),
            (
                vec!["--inbound-capture-port=0"],
                "--inbound-capture-port",
                "0",
            ),
        ] {
            let err = parse(&args).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(flag) && msg.contains(value), "{args:?}: {msg}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn validate_refuses_shared_ports() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            outbound_capture_port: 15006,
            ..Config::default()
        };
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("--inbound-capture-port")
                && msg.contains("--outbound-capture-port")
                && msg.contains("15006"),
            "{msg}"
        );
        let c = Config {
            proxy_admin_port: 15001,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--proxy-admin-port"));
    }

    #[test]
    fn validate_refuses_an_app_port_the_proxy_listens_on() {
        for port in [9901, 15006, 15001] {
            let c = Config {
                inbound_ports: PortSpec::List(vec![8080, port]),
                ..Config::default()
            };
            let msg = c.validate().unwrap_err().to_string();
            assert!(
                msg.contains("--inbound-ports") && msg.contains(&port.to_string()),
                "{msg}"
            );
        }
    }

    #[test]
    fn empty_lists_are_empty_for_every_list_flag() {
        let c = parse(&[
            "--exclude-inbound-ports=",
            "--exclude-outbound-ports=",
            "--inbound-ports=",
            "--exclude-outbound-cidrs=",
        ])
        .unwrap();
        assert!(c.exclude_inbound_ports.is_empty() && c.exclude_outbound_ports.is_empty());
        assert_eq!(c.inbound_ports, PortSpec::List(vec![]));
        assert!(c.exclude_outbound_cidrs.0.is_empty());
        let c = parse(&["--exclude-outbound-ports=5432,5432,3306"]).unwrap();
        assert_eq!(c.exclude_outbound_ports, vec![5432, 3306]);
    }

    #[test]
    fn root_is_not_the_proxy_id() {
        for flag in ["--proxy-uid=0", "--proxy-gid=0"] {
            let msg = parse(&[flag]).unwrap_err().to_string();
            assert!(msg.contains("root"), "{flag}: {msg}");
        }
    }
}

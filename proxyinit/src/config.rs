//! The `proxyinit` command line: parsed by the binary, rendered back into args by the webhook.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

/// Default outbound CIDRs never redirected: the cloud metadata endpoint.
pub const DEFAULT_EXCLUDE_OUTBOUND_CIDRS: &str = "169.254.169.254/32";

/// Everything `proxyinit` needs to compute its rules. Every flag is also read from `TRELLIS_<FLAG>`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// uid the proxy runs as; its own traffic is never redirected.
    #[arg(long, env = "TRELLIS_PROXY_UID", default_value_t = 1337, value_parser = parse_id)]
    pub proxy_uid: u32,

    /// gid the proxy runs as; its own traffic is never redirected.
    #[arg(long, env = "TRELLIS_PROXY_GID", default_value_t = 1337, value_parser = parse_id)]
    pub proxy_gid: u32,

    /// Port of the proxy's inbound capture listener.
    #[arg(long, env = "TRELLIS_INBOUND_CAPTURE_PORT", default_value = "15006", value_parser = parse_port)]
    pub inbound_capture_port: u16,

    /// Port of the proxy's outbound capture listener.
    #[arg(long, env = "TRELLIS_OUTBOUND_CAPTURE_PORT", default_value = "15001", value_parser = parse_port)]
    pub outbound_capture_port: u16,

    /// Port of the proxy's admin listener; always excluded from inbound capture.
    #[arg(long, env = "TRELLIS_PROXY_ADMIN_PORT", default_value = "9901", value_parser = parse_port)]
    pub proxy_admin_port: u16,

    /// Inbound ports to capture: a comma-separated list, or `*` for every port.
    #[arg(long, env = "TRELLIS_INBOUND_PORTS", default_value = "*")]
    pub inbound_ports: PortSpec,

    /// Inbound ports never redirected (comma-separated).
    #[arg(long, env = "TRELLIS_EXCLUDE_INBOUND_PORTS", value_delimiter = ',', value_parser = parse_port)]
    pub exclude_inbound_ports: Vec<u16>,

    /// Outbound destination ports never redirected (comma-separated).
    #[arg(long, env = "TRELLIS_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',', value_parser = parse_port)]
    pub exclude_outbound_ports: Vec<u16>,

    /// Outbound destination CIDRs never redirected (comma-separated).
    /// An empty value excludes nothing (the metadata endpoint default is dropped too).
    #[arg(long, env = "TRELLIS_EXCLUDE_OUTBOUND_CIDRS", default_value = DEFAULT_EXCLUDE_OUTBOUND_CIDRS)]
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
        Config {
            proxy_uid: 1337,
            proxy_gid: 1337,
            inbound_capture_port: 15006,
            outbound_capture_port: 15001,
            proxy_admin_port: 9901,
            inbound_ports: PortSpec::All,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: DEFAULT_EXCLUDE_OUTBOUND_CIDRS.parse().expect("valid"),
            ipv6: Ipv6Mode::Auto,
            iptables_mode: IpTablesMode::Auto,
        }
    }
}

impl Config {
    /// The command-line flags that reproduce this config exactly (every flag, explicit), as the
    /// webhook writes them into the init container's `args`.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--proxy-uid={}", self.proxy_uid),
            format!("--proxy-gid={}", self.proxy_gid),
            format!("--inbound-capture-port={}", self.inbound_capture_port),
            format!("--outbound-capture-port={}", self.outbound_capture_port),
            format!("--proxy-admin-port={}", self.proxy_admin_port),
            format!("--inbound-ports={}", self.inbound_ports),
        ];
        if !self.exclude_inbound_ports.is_empty() {
            args.push(format!(
                "--exclude-inbound-ports={}",
                join(&self.exclude_inbound_ports)
            ));
        }
        if !self.exclude_outbound_ports.is_empty() {
            args.push(format!(
                "--exclude-outbound-ports={}",
                join(&self.exclude_outbound_ports)
            ));
        }
        // An empty list must still be rendered, or the default CIDR would come back.
        args.push(format!(
            "--exclude-outbound-cidrs={}",
            self.exclude_outbound_cidrs
        ));
        args.push(format!("--ipv6={}", self.ipv6.as_str()));
        args.push(format!("--iptables-mode={}", self.iptables_mode.as_str()));
        args
    }
}

impl Config {
    /// Cross-field checks that clap cannot express on one flag. The message names the flags, the
    /// values and what is expected; the binary exits 2 on it before touching anything.
    pub fn validate(&self) -> Result<(), String> {
        let ports = [
            ("--inbound-capture-port", self.inbound_capture_port),
            ("--outbound-capture-port", self.outbound_capture_port),
            ("--proxy-admin-port", self.proxy_admin_port),
        ];
        for (i, (flag_a, a)) in ports.iter().enumerate() {
            for (flag_b, b) in &ports[i + 1..] {
                if a == b {
                    return Err(format!(
                        "{flag_a} and {flag_b} are both {a}: the proxy listens on each of them, \
                         so they must be three different ports"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Which inbound ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// Every port (`*`).
    All,
    /// Only these ports (an empty list captures nothing inbound).
    List(Vec<u16>),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::All => f.write_str("*"),
            PortSpec::List(ports) => f.write_str(&join(ports)),
        }
    }
}

impl FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "*" {
            return Ok(PortSpec::All);
        }
        if s.is_empty() {
            return Ok(PortSpec::List(Vec::new()));
        }
        let mut ports = Vec::new();
        for part in s.split(',') {
            let port = parse_port(part)?;
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        Ok(PortSpec::List(ports))
    }
}

/// A TCP port, 1-65535, with an error that says what was expected.
pub fn parse_port(s: &str) -> Result<u16, String> {
    let t = s.trim();
    match t.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!(
            "`{t}` is not a port: expected a number from 1 to 65535"
        )),
    }
}

/// A numeric uid or gid (names cannot be resolved: the init container has no user database).
pub fn parse_id(s: &str) -> Result<u32, String> {
    let t = s.trim();
    t.parse::<u32>().map_err(|_| {
        format!("`{t}` is not a numeric uid/gid: expected a number from 0 to 4294967295, like 1337")
    })
}

/// A comma-separated port list, as written in an annotation.
pub fn parse_port_list(s: &str) -> Result<Vec<u16>, String> {
    match s.parse::<PortSpec>()? {
        PortSpec::All => {
            Err("`*` is not allowed here: expected a comma-separated list of ports".into())
        }
        PortSpec::List(p) => Ok(p),
    }
}

/// An IPv4 or IPv6 CIDR such as `10.0.0.0/8`; a bare address means a single host.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(addr) = t.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    Err(format!("`{t}` is not a CIDR: expected an address with a prefix length, like 10.0.0.0/8 or fd00::/8"))
}

/// A comma-separated list of CIDRs; the empty string is the empty list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join(&self.0))
    }
}

impl FromStr for CidrList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(CidrList(Vec::new()));
        }
        s.split(',')
            .map(parse_cidr)
            .collect::<Result<_, _>>()
            .map(CidrList)
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

    #[test]
    fn defaults_match_default_impl() {
        assert_eq!(parse(&[]).unwrap(), Config::default());
    }

    #[test]
    fn to_args_round_trips() {
        let mut c = Config {
            inbound_ports: PortSpec::List(vec![8080, 9090]),
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![3306, 5432],
            exclude_outbound_cidrs: "10.0.0.0/8,fd00::/8".parse().unwrap(),
            ipv6: Ipv6Mode::Off,
            iptables_mode: IpTablesMode::Nft,
            ..Config::default()
        };
        let args = c.to_args();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(parse(&argv).unwrap(), c);
        c.exclude_outbound_cidrs.0.clear();
        let args = c.to_args();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(
            parse(&argv).unwrap(),
            c,
            "an empty CIDR list must not bring the default back"
        );
        assert_eq!(
            parse(
                &Config::default()
                    .to_args()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
            )
            .unwrap(),
            Config::default()
        );
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
        let msg = c.validate().unwrap_err();
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
        assert!(c.validate().unwrap_err().contains("--proxy-admin-port"));
    }

    #[test]
    fn port_spec_parses_star_and_lists() {
        assert_eq!("*".parse::<PortSpec>().unwrap(), PortSpec::All);
        assert_eq!(
            " 80, 443 ,80".parse::<PortSpec>().unwrap(),
            PortSpec::List(vec![80, 443])
        );
        assert_eq!("".parse::<PortSpec>().unwrap(), PortSpec::List(vec![]));
        assert!(parse_port_list("*").is_err());
        assert_eq!(parse_cidr("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
    }
}

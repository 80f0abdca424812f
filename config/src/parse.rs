//! The small parsers behind the flags and annotations, each with an error that names the input and
//! says what was expected, and the renderers that write values back the way the parsers read them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

/// A value that did not parse. The text is what a user reads after the flag or annotation name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("`{0}` is not a duration: expected a number with a unit, like 500ms, 10s or 2m")]
    Duration(String),
    #[error("`{0}` is not a port: expected a number from 1 to 65535")]
    Port(String),
    #[error("`*` is not allowed here: expected a comma-separated list of ports")]
    AllPorts,
    #[error("`{0}` is not a numeric uid/gid: expected a number from 0 to 4294967295, like 1337")]
    Id(String),
    #[error(
        "`{0}` is not a CIDR: expected an address with a prefix length, like 10.0.0.0/8 or \
         fd00::/8, or a single address such as 10.0.0.7 (taken as /32 or /128)"
    )]
    Cidr(String),
    #[error(
        "`0` is root's uid/gid: the proxy must run as its own id (like 1337), or every process \
         running as root would bypass the capture"
    )]
    RootId,
    #[error("`{0}` is not a log level: expected one of {levels}", levels = LOG_LEVELS.join(", "))]
    LogLevel(String),
    #[error("`{0}` is not HOST:PORT: expected e.g. backend:8080 or 10.0.0.7:80")]
    HostPort(String),
    #[error(
        "`{0}` is not NAMESPACE/NAME: expected e.g. default/ingress-gw (lower-case DNS names)"
    )]
    NamespacedName(String),
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let t = s.trim();
    let err = || ParseError::Duration(t.to_string());
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
        _ => return Err(err()),
    };
    Ok(d)
}

/// Renders a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// The log levels the proxy accepts.
pub const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Accepts one of [`LOG_LEVELS`] (any case) and returns it in lower case.
pub fn parse_log_level(s: &str) -> Result<String, ParseError> {
    let l = s.trim().to_ascii_lowercase();
    if LOG_LEVELS.contains(&l.as_str()) {
        Ok(l)
    } else {
        Err(ParseError::LogLevel(s.to_string()))
    }
}

/// A TCP port, 1-65535.
pub fn parse_port(s: &str) -> Result<u16, ParseError> {
    let t = s.trim();
    match t.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ParseError::Port(t.to_string())),
    }
}

/// A numeric uid or gid (names cannot be resolved: the init container has no user database).
pub fn parse_id(s: &str) -> Result<u32, ParseError> {
    let t = s.trim();
    t.parse::<u32>().map_err(|_| ParseError::Id(t.to_string()))
}

/// The proxy's uid or gid: numeric, and not root's (traffic from that id is never captured, so 0
/// would exempt every root process of the pod).
pub fn parse_proxy_id(s: &str) -> Result<u32, ParseError> {
    match parse_id(s)? {
        0 => Err(ParseError::RootId),
        id => Ok(id),
    }
}

/// `HOST:PORT` with a non-empty host and a port from 1 to 65535 (the host is resolved later).
/// `NAMESPACE/NAME` of a Kubernetes object (a `Gateway`).
pub fn parse_namespaced_name(s: &str) -> Result<crate::api::ServiceRef, ParseError> {
    let dns_label = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    match s.split_once('/') {
        Some((ns, name)) if dns_label(ns) && dns_label(name) => Ok(crate::api::ServiceRef {
            namespace: ns.to_string(),
            name: name.to_string(),
        }),
        _ => Err(ParseError::NamespacedName(s.to_string())),
    }
}

pub fn parse_host_port(s: &str) -> Result<String, ParseError> {
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => Ok(s.to_string()),
        _ => Err(ParseError::HostPort(s.to_string())),
    }
}

/// A comma-separated port list, duplicates dropped; the empty string is the empty list (`*` is
/// refused).
pub fn parse_port_list(s: &str) -> Result<Vec<u16>, ParseError> {
    match s.parse::<PortSpec>()? {
        PortSpec::All => Err(ParseError::AllPorts),
        PortSpec::List(p) => Ok(p),
    }
}

/// An IPv4 or IPv6 CIDR such as `10.0.0.0/8`; a bare address means a single host. Host bits are
/// cleared (`10.1.2.3/8` is `10.0.0.0/8`), as iptables would.
pub fn parse_cidr(s: &str) -> Result<IpNet, ParseError> {
    let t = s.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(addr) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    Err(ParseError::Cidr(t.to_string()))
}

/// Items joined by commas, the list syntax of every flag and annotation.
pub fn join<T: fmt::Display>(items: &[T]) -> String {
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
    type Err = ParseError;
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

/// A comma-separated list of CIDRs, duplicates dropped; the empty string is the empty list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

impl CidrList {
    /// The list with host bits cleared and duplicates dropped, in the given order.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> CidrList {
        let mut out: Vec<IpNet> = Vec::new();
        for n in nets.into_iter().map(|n| n.trunc()) {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        CidrList(out)
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join(&self.0))
    }
}

impl FromStr for CidrList {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(CidrList(Vec::new()));
        }
        s.split(',')
            .map(parse_cidr)
            .collect::<Result<Vec<_>, _>>()
            .map(CidrList::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("1.5s").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(15)), "15s");
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
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_port_list("").unwrap(), Vec::<u16>::new());
        assert_eq!(parse_port_list("22,22, 80").unwrap(), vec![22, 80]);
    }

    #[test]
    fn cidr_lists_drop_duplicates() {
        let l: CidrList = "10.0.0.0/8, 10.9.9.9/8,1.2.3.4,1.2.3.4/32,fd00::/8,fd00::1/8"
            .parse()
            .unwrap();
        assert_eq!(l.to_string(), "10.0.0.0/8,1.2.3.4/32,fd00::/8");
        assert_eq!("".parse::<CidrList>().unwrap(), CidrList::default());
    }

    #[test]
    fn the_proxy_id_is_not_root() {
        assert_eq!(parse_proxy_id("1337"), Ok(1337));
        let msg = parse_proxy_id("0").unwrap_err().to_string();
        assert!(msg.contains("root") && msg.contains("1337"), "{msg}");
        assert!(parse_proxy_id("x").is_err());
    }

    #[test]
    fn errors_name_the_value_and_what_was_expected() {
        let msg = parse_port("70000").unwrap_err().to_string();
        assert!(msg.contains("70000") && msg.contains("1 to 65535"), "{msg}");
        let msg = parse_log_level("loud").unwrap_err().to_string();
        assert!(
            msg.contains("loud") && msg.contains("trace, debug"),
            "{msg}"
        );
        assert!(parse_host_port("backend").is_err());
        assert!(parse_host_port(":80").is_err());
        assert_eq!(parse_host_port("backend:80").unwrap(), "backend:80");
    }
}

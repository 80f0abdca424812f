//! The `trellis.dev/*` pod annotations: every one is parsed and validated here, before anything is
//! injected, so a bad value is refused at admission with its name, its value and what was expected.

use std::collections::BTreeMap;
use std::time::Duration;

use config::limits::{LimitField, Side};
use config::parse::{parse_cidr, parse_log_level, parse_port_list, LOG_LEVELS};
use config::{Limits, PoolLimits, PortSpec};
use ipnet::IpNet;

use crate::echo;

pub const PREFIX: &str = "trellis.dev/";
pub const INJECT: &str = "trellis.dev/inject";
pub const STATUS: &str = "trellis.dev/status";
pub const INBOUND_PORTS: &str = "trellis.dev/inbound-ports";
pub const EXCLUDE_INBOUND_PORTS: &str = "trellis.dev/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "trellis.dev/exclude-outbound-ports";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "trellis.dev/exclude-outbound-ip-ranges";
pub const OPAQUE_PORTS: &str = "trellis.dev/opaque-ports";
pub const PROXY_CPU_REQUEST: &str = "trellis.dev/proxy-cpu-request";
pub const PROXY_MEMORY_REQUEST: &str = "trellis.dev/proxy-memory-request";
pub const PROXY_CPU_LIMIT: &str = "trellis.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "trellis.dev/proxy-memory-limit";
pub const LOG_LEVEL: &str = "trellis.dev/log-level";
pub const ACCESS_LOG: &str = "trellis.dev/access-log";
pub const NATIVE_SIDECAR: &str = "trellis.dev/native-sidecar";
pub const REQUEST_TIMEOUT: &str = "trellis.dev/request-timeout";
pub const IDLE_TIMEOUT: &str = "trellis.dev/idle-timeout";
pub const DRAIN_TIME: &str = "trellis.dev/drain-time";
pub const REWRITE_PROBES: &str = "trellis.dev/rewrite-probes";

/// The pool-limit annotations (`trellis.dev/max-connections`, `trellis.dev/outbound-max-requests`,
/// ...) are named after the proxy's flags, from the `config` crate's one table of limits.
fn limit_annotations() -> impl Iterator<Item = (String, Side, &'static LimitField)> {
    Side::ALL.into_iter().flat_map(|side| {
        Limits::FIELDS
            .iter()
            .map(move |f| (format!("{PREFIX}{}", side.name(f)), side, f))
    })
}

/// Every annotation Trellis understands; any other `trellis.dev/` key is a typo and is refused.
pub fn known() -> impl Iterator<Item = String> {
    let (first, rest) = OTHERS.split_at(2);
    first
        .iter()
        .map(|s| s.to_string())
        .chain(limit_annotations().map(|(name, _, _)| name))
        .chain(rest.iter().map(|s| s.to_string()))
}

/// The annotations that are not pool limits, in the order [`known`] lists them (the limits go
/// after the first two).
const OTHERS: &[&str] = &[
    INJECT,
    STATUS,
    INBOUND_PORTS,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_IP_RANGES,
    OPAQUE_PORTS,
    PROXY_CPU_REQUEST,
    PROXY_MEMORY_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    LOG_LEVEL,
    ACCESS_LOG,
    NATIVE_SIDECAR,
    REQUEST_TIMEOUT,
    IDLE_TIMEOUT,
    DRAIN_TIME,
    REWRITE_PROBES,
];

/// A refused annotation: the message names the annotation, the value, and what is expected. Both
/// are quoted cut to a few hundred bytes ([`crate::echo`]): the denial is sent back and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {}: invalid value {}: {expected}", echo::shown(.name), echo::quoted(.value))]
pub struct AnnotationError {
    pub name: String,
    pub value: String,
    pub expected: String,
}

/// What a pod asked for through its annotations. `None` means "not set, use the default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSettings {
    pub inject: Option<bool>,
    /// `trellis.dev/max-*` (inbound) and `trellis.dev/outbound-max-*`.
    pub pools: PoolLimits,
    pub inbound_ports: Option<PortSpec>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_ip_ranges: Option<Vec<IpNet>>,
    pub opaque_ports: Vec<u16>,
    pub proxy_cpu_request: Option<String>,
    pub proxy_memory_request: Option<String>,
    pub proxy_cpu_limit: Option<String>,
    pub proxy_memory_limit: Option<String>,
    pub log_level: Option<String>,
    pub access_log: bool,
    pub native_sidecar: bool,
    /// The proxy's `--request-timeout`, `--idle-timeout` and `--drain-time`.
    pub request_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub drain_time: Option<Duration>,
    /// `trellis.dev/rewrite-probes`: `Some(false)` keeps the app's probes as written.
    pub rewrite_probes: Option<bool>,
}

impl PodSettings {
    /// Parses every `trellis.dev/*` annotation; the first bad one (in name order) is returned.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<PodSettings, AnnotationError> {
        let mut s = PodSettings::default();
        for (name, value) in annotations.range(PREFIX.to_string()..) {
            if !name.starts_with(PREFIX) {
                break;
            }
            let err = |expected: &str| AnnotationError {
                name: name.clone(),
                value: value.clone(),
                expected: expected.to_string(),
            };
            let v = value.trim();
            if let Some((_, side, field)) = limit_annotations().find(|(n, _, _)| n == name) {
                *(field.slot)(s.pools.side_mut(side)) =
                    Some(parse_limit(v).ok_or_else(|| err(LIMIT))?);
                continue;
            }
            match name.as_str() {
                INJECT => s.inject = Some(parse_switch(v).ok_or_else(|| err(SWITCH))?),
                // Written by the injector; its presence alone marks the pod as injected.
                STATUS => {}
                INBOUND_PORTS => {
                    s.inbound_ports = Some(
                        v.parse::<PortSpec>()
                            .map_err(|e| err(&format!("{PORTS_OR_STAR} ({e})")))?,
                    )
                }
                EXCLUDE_INBOUND_PORTS => {
                    s.exclude_inbound_ports = parse_ports(v).map_err(|e| err(&e))?
                }
                EXCLUDE_OUTBOUND_PORTS => {
                    s.exclude_outbound_ports = parse_ports(v).map_err(|e| err(&e))?
                }
                OPAQUE_PORTS => s.opaque_ports = parse_ports(v).map_err(|e| err(&e))?,
                EXCLUDE_OUTBOUND_IP_RANGES => {
                    let cidrs = if v.is_empty() {
                        Vec::new()
                    } else {
                        v.split(',').map(parse_cidr).collect::<Result<Vec<_>, _>>().map_err(|e| {
                            err(&format!("a comma-separated list of CIDRs like 10.0.0.0/8,fd00::/8 ({e})"))
                        })?
                    };
                    s.exclude_outbound_ip_ranges = Some(cidrs);
                }
                PROXY_CPU_REQUEST => {
                    s.proxy_cpu_request = Some(parse_quantity(v).map_err(|e| err(&e))?)
                }
                PROXY_MEMORY_REQUEST => {
                    s.proxy_memory_request = Some(parse_quantity(v).map_err(|e| err(&e))?)
                }
                PROXY_CPU_LIMIT => {
                    s.proxy_cpu_limit = Some(parse_quantity(v).map_err(|e| err(&e))?)
                }
                PROXY_MEMORY_LIMIT => {
                    s.proxy_memory_limit = Some(parse_quantity(v).map_err(|e| err(&e))?)
                }
                LOG_LEVEL => {
                    s.log_level = Some(
                        parse_log_level(v)
                            .map_err(|_| err(&format!("one of {}", LOG_LEVELS.join(", "))))?,
                    )
                }
                ACCESS_LOG => s.access_log = parse_switch(v).ok_or_else(|| err(SWITCH))?,
                NATIVE_SIDECAR => s.native_sidecar = parse_switch(v).ok_or_else(|| err(SWITCH))?,
                REQUEST_TIMEOUT => {
                    s.request_timeout = Some(parse_timeout(v).ok_or_else(|| err(DURATION))?)
                }
                IDLE_TIMEOUT => {
                    s.idle_timeout = Some(parse_timeout(v).ok_or_else(|| err(DURATION))?)
                }
                REWRITE_PROBES => {
                    s.rewrite_probes = Some(parse_switch(v).ok_or_else(|| err(SWITCH))?)
                }
                DRAIN_TIME => s.drain_time = Some(parse_timeout(v).ok_or_else(|| err(DURATION))?),
                _ => {
                    let hint = match closest(name) {
                        Some(known) => format!("no such Trellis annotation; did you mean {known}?"),
                        None => format!(
                            "no such Trellis annotation; known annotations: {}",
                            known().collect::<Vec<_>>().join(", ")
                        ),
                    };
                    return Err(err(&hint));
                }
            }
        }
        Ok(s)
    }
}

const SWITCH: &str = "`enabled` or `disabled`";
const DURATION: &str = "a duration from 1ms to 24h, like 500ms, 15s, 2m or 1h";

/// A timeout the proxy can use: more than zero, at most a day.
fn parse_timeout(v: &str) -> Option<Duration> {
    config::parse::parse_duration(v)
        .ok()
        .filter(|d| !d.is_zero() && *d <= Duration::from_secs(24 * 3600))
}
const LIMIT: &str = "a whole number from 1 to 4294967295";
const PORTS_OR_STAR: &str =
    "`*` or a comma-separated list of ports from 1 to 65535, like 8080,9090";

/// Most edits between a misspelt key and a known one for it to be called a typo.
const MAX_TYPO: usize = 3;

/// Longest key compared with the known ones: the longest known key and [`MAX_TYPO`] more. A longer
/// key cannot be within [`MAX_TYPO`] edits of any, and comparing costs its length times theirs.
fn max_compared() -> usize {
    known().map(|k| k.chars().count()).max().unwrap_or(0) + MAX_TYPO
}

/// The known annotation nearest to a misspelt one, if it is close enough to be a typo.
fn closest(name: &str) -> Option<String> {
    let max = max_compared();
    known()
        .filter_map(|k| Some((edit_distance(name, &k, max)?, k)))
        .filter(|(d, _)| *d <= MAX_TYPO)
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance between `a` and `b`, or `None` (nothing computed) when either is over
/// `max` characters or their lengths differ by more than [`MAX_TYPO`].
fn edit_distance(a: &str, b: &str, max: usize) -> Option<usize> {
    let (la, lb) = (
        a.chars().take(max + 1).count(),
        b.chars().take(max + 1).count(),
    );
    if la > max || lb > max || la.abs_diff(lb) > MAX_TYPO {
        return None;
    }
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    Some(prev[b.len()])
}

fn parse_switch(v: &str) -> Option<bool> {
    match v {
        "enabled" => Some(true),
        "disabled" => Some(false),
        _ => None,
    }
}

fn parse_limit(v: &str) -> Option<u32> {
    v.parse::<u32>().ok().filter(|n| *n >= 1)
}

fn parse_ports(v: &str) -> Result<Vec<u16>, String> {
    parse_port_list(v).map_err(|e| {
        format!("a comma-separated list of ports from 1 to 65535, like 8080,9090 ({e})")
    })
}

/// Validates a Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`) and returns it trimmed.
pub fn parse_quantity(v: &str) -> Result<String, String> {
    let t = v.trim();
    let expected = || "a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi".to_string();
    let suffixes = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let (number, suffix) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let number = number.strip_prefix('+').unwrap_or(number);
    let valid_number = {
        let mut parts = number.splitn(2, '.');
        let int = parts.next().unwrap_or("");
        let frac = parts.next();
        let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        !number.is_empty() && digits(int) && frac.is_none_or(digits) && number != "."
    };
    let valid_suffix = suffixes.contains(&suffix) || is_exponent(suffix);
    if valid_number && valid_suffix {
        Ok(t.to_string())
    } else {
        Err(expected())
    }
}

fn is_exponent(s: &str) -> bool {
    let Some(rest) = s.strip_prefix(['e', 'E']) else {
        return false;
    };
    let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests;

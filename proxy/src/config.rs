//! The `proxy` command line: parsed by the binary, rendered back into args by the webhook.

use std::net::SocketAddr;
use std::time::Duration;

/// Data-plane settings shared by sidecar and gateway mode. Every flag is also read from
/// `TRELLIS_<FLAG>`; a limit left unset is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// Admin API listen address (`/ready`, `/stats`, ...).
    #[arg(long, env = "TRELLIS_ADMIN_LISTEN", default_value = "0.0.0.0:9901")]
    pub admin_listen: SocketAddr,

    /// Port of the inbound capture listener (traffic redirected to the app).
    #[arg(long, env = "TRELLIS_INBOUND_CAPTURE_PORT", default_value_t = 15006)]
    pub inbound_capture_port: u16,

    /// Port of the outbound capture listener (traffic the app sends out).
    #[arg(long, env = "TRELLIS_OUTBOUND_CAPTURE_PORT", default_value_t = 15001)]
    pub outbound_capture_port: u16,

    /// Inbound (or gateway upstream) pool: most connections to the app.
    #[arg(long, env = "TRELLIS_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Inbound pool: most requests waiting for a connection.
    #[arg(long, env = "TRELLIS_MAX_PENDING_REQUESTS")]
    pub max_pending_requests: Option<u32>,
    /// Inbound pool: most requests in flight.
    #[arg(long, env = "TRELLIS_MAX_REQUESTS")]
    pub max_requests: Option<u32>,
    /// Inbound pool: close an upstream connection after this many requests.
    #[arg(long, env = "TRELLIS_MAX_REQUESTS_PER_CONNECTION")]
    pub max_requests_per_connection: Option<u32>,

    /// Outbound pools (one per destination): most connections.
    #[arg(long, env = "TRELLIS_OUTBOUND_MAX_CONNECTIONS")]
    pub outbound_max_connections: Option<u32>,
    /// Outbound pools: most requests waiting for a connection.
    #[arg(long, env = "TRELLIS_OUTBOUND_MAX_PENDING_REQUESTS")]
    pub outbound_max_pending_requests: Option<u32>,
    /// Outbound pools: most requests in flight.
    #[arg(long, env = "TRELLIS_OUTBOUND_MAX_REQUESTS")]
    pub outbound_max_requests: Option<u32>,
    /// Outbound pools: close an upstream connection after this many requests.
    #[arg(long, env = "TRELLIS_OUTBOUND_MAX_REQUESTS_PER_CONNECTION")]
    pub outbound_max_requests_per_connection: Option<u32>,

    /// Upstream connect timeout (e.g. `10s`, `500ms`).
    #[arg(long, env = "TRELLIS_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time allowed for a whole upstream request/response (e.g. `15s`); 504 UT after it.
    #[arg(long, env = "TRELLIS_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// An idle pooled upstream connection, or a client connection waiting this long for (the rest
    /// of) a request head, is closed.
    #[arg(long, env = "TRELLIS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM or `/quitquitquit`, how long in-flight requests may take to finish.
    #[arg(long, env = "TRELLIS_DRAIN_TIME", default_value = "5s", value_parser = parse_duration)]
    pub drain_time: Duration,

    /// Destination ports proxied as opaque TCP, without protocol detection (comma-separated).
    #[arg(long, env = "TRELLIS_OPAQUE_PORTS", value_delimiter = ',')]
    pub opaque_ports: Vec<u16>,

    /// Write the Envoy-format access log to stdout.
    #[arg(long, env = "TRELLIS_ACCESS_LOG")]
    pub access_log: bool,

    /// Worker threads; defaults to the CPUs this process may use (cgroup quota aware).
    #[arg(long, env = "TRELLIS_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Log level: trace, debug, info, warn, error (changeable live with `POST /logging?level=`).
    #[arg(long, env = "TRELLIS_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: "0.0.0.0:9901".parse().expect("valid"),
            inbound_capture_port: 15006,
            outbound_capture_port: 15001,
            max_connections: None,
            max_pending_requests: None,
            max_requests: None,
            max_requests_per_connection: None,
            outbound_max_connections: None,
            outbound_max_pending_requests: None,
            outbound_max_requests: None,
            outbound_max_requests_per_connection: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            drain_time: Duration::from_secs(5),
            opaque_ports: Vec::new(),
            access_log: false,
            concurrency: None,
            log_level: "info".into(),
        }
    }
}

/// The circuit-breaker thresholds of one cluster; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
}

impl Config {
    /// Limits of each inbound cluster (and of the gateway's upstream).
    pub fn inbound_limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_pending_requests: self.max_pending_requests,
            max_requests: self.max_requests,
            max_requests_per_connection: self.max_requests_per_connection,
        }
    }

    /// Limits applied to each outbound destination's cluster.
    pub fn outbound_limits(&self) -> Limits {
        Limits {
            max_connections: self.outbound_max_connections,
            max_pending_requests: self.outbound_max_pending_requests,
            max_requests: self.outbound_max_requests,
            max_requests_per_connection: self.outbound_max_requests_per_connection,
        }
    }

    /// The flags that reproduce this config, as the webhook writes them into the sidecar's `args`:
    /// settings that differ from the defaults only, so a pod spec shows what was chosen for it.
    pub fn to_args(&self) -> Vec<String> {
        let d = Config::default();
        let mut args = Vec::new();
        let mut push = |flag: &str, value: String| args.push(format!("--{flag}={value}"));
        if self.admin_listen != d.admin_listen {
            push("admin-listen", self.admin_listen.to_string());
        }
        if self.inbound_capture_port != d.inbound_capture_port {
            push(
                "inbound-capture-port",
                self.inbound_capture_port.to_string(),
            );
        }
        if self.outbound_capture_port != d.outbound_capture_port {
            push(
                "outbound-capture-port",
                self.outbound_capture_port.to_string(),
            );
        }
        for (flag, v) in [
            ("max-connections", self.max_connections),
            ("max-pending-requests", self.max_pending_requests),
            ("max-requests", self.max_requests),
            (
                "max-requests-per-connection",
                self.max_requests_per_connection,
            ),
            ("outbound-max-connections", self.outbound_max_connections),
            (
                "outbound-max-pending-requests",
                self.outbound_max_pending_requests,
            ),
            ("outbound-max-requests", self.outbound_max_requests),
            (
                "outbound-max-requests-per-connection",
                self.outbound_max_requests_per_connection,
            ),
        ] {
            if let Some(v) = v {
                push(flag, v.to_string());
            }
        }
        for (flag, v, dv) in [
            ("connect-timeout", self.connect_timeout, d.connect_timeout),
            ("request-timeout", self.request_timeout, d.request_timeout),
            ("idle-timeout", self.idle_timeout, d.idle_timeout),
            ("drain-time", self.drain_time, d.drain_time),
        ] {
            if v != dv {
                push(flag, format_duration(v));
            }
        }
        if !self.opaque_ports.is_empty() {
            let ports: Vec<String> = self.opaque_ports.iter().map(u16::to_string).collect();
            push("opaque-ports", ports.join(","));
        }
        if let Some(c) = self.concurrency {
            push("concurrency", c.to_string());
        }
        if self.log_level != d.log_level {
            push("log-level", self.log_level.clone());
        }
        if self.access_log {
            args.push("--access-log".into());
        }
        args
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let err =
        || format!("`{t}` is not a duration: expected a number with a unit, like 500ms, 10s or 2m");
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

/// Accepts one of [`LOG_LEVELS`] (any case).
pub fn parse_log_level(s: &str) -> Result<String, String> {
    let l = s.trim().to_ascii_lowercase();
    if LOG_LEVELS.contains(&l.as_str()) {
        Ok(l)
    } else {
        Err(format!(
            "`{s}` is not a log level: expected one of {}",
            LOG_LEVELS.join(", ")
        ))
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

    fn parse(args: &[String]) -> Result<Config, clap::Error> {
        Cli::try_parse_from(std::iter::once("proxy".to_string()).chain(args.iter().cloned()))
            .map(|c| c.config)
    }

    #[test]
    fn defaults_match_default_impl() {
        assert_eq!(parse(&[]).unwrap(), Config::default());
        assert!(Config::default().to_args().is_empty());
    }

    #[test]
    fn to_args_round_trips() {
        let c = Config {
            max_connections: Some(10),
            max_pending_requests: Some(10),
            outbound_max_connections: Some(3),
            outbound_max_requests_per_connection: Some(1),
            connect_timeout: Duration::from_millis(250),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(2),
            opaque_ports: vec![3306, 6379],
            access_log: true,
            concurrency: Some(2),
            log_level: "debug".into(),
            ..Config::default()
        };
        assert_eq!(parse(&c.to_args()).unwrap(), c);
    }

    #[test]
    fn bad_values_name_flag_and_value() {
        for (arg, flag, value) in [
            ("--max-connections=-3", "--max-connections", "-3"),
            ("--connect-timeout=soon", "--connect-timeout", "soon"),
            ("--log-level=loud", "--log-level", "loud"),
            ("--admin-listen=nowhere", "--admin-listen", "nowhere"),
        ] {
            let err = parse(&[arg.to_string()]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(flag) && msg.contains(value), "{arg}: {msg}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("1.5s").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(15)), "15s");
    }
}

//! The `proxy` command line: parsed by the binary, rendered back into args by the webhook.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use crate::args::{clap_defaults, Flag, Render};
use crate::defaults;
use crate::limits::PoolLimits;
use crate::parse::{format_duration, parse_duration, parse_log_level, parse_port};
use crate::probes::AppProbes;

/// Data-plane settings shared by sidecar and gateway mode. Every flag is also read from
/// `TRELLIS_<FLAG>`; a limit left unset is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// Admin API listen address (`/ready`, `/stats`, ...).
    #[arg(long, env = "TRELLIS_ADMIN_LISTEN", default_value_t = defaults::admin_listen())]
    pub admin_listen: SocketAddr,

    /// Port of the inbound capture listener (traffic redirected to the app).
    #[arg(long, env = "TRELLIS_INBOUND_CAPTURE_PORT", default_value_t = defaults::INBOUND_CAPTURE_PORT, value_parser = parse_port)]
    pub inbound_capture_port: u16,

    /// Port of the outbound capture listener (traffic the app sends out).
    #[arg(long, env = "TRELLIS_OUTBOUND_CAPTURE_PORT", default_value_t = defaults::OUTBOUND_CAPTURE_PORT, value_parser = parse_port)]
    pub outbound_capture_port: u16,

    /// The inbound (`--max-*`) and outbound (`--outbound-max-*`) pool limits.
    #[command(flatten)]
    pub pools: PoolLimits,

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
    /// On SIGTERM, how long inbound listeners keep serving (answering with `connection: close`
    /// on HTTP/1 and GOAWAY on HTTP/2) while endpoints stop sending; after it the proxy exits as
    /// soon as no connection is left, within max(drain time, 30s). Outbound serves the app
    /// throughout. `/quitquitquit` and SIGINT stop every listener at once.
    #[arg(long, env = "TRELLIS_DRAIN_TIME", default_value = "5s", value_parser = parse_duration)]
    pub drain_time: Duration,
    /// After SIGTERM the proxy exits by this, or by the drain time if longer, whatever is left
    /// open. The webhook sets it to the pod's `terminationGracePeriodSeconds`, after which the
    /// kubelet kills the pod anyway: an app with a longer grace period keeps its outbound calls.
    #[arg(long, env = "TRELLIS_DRAIN_MAX", default_value = "30s", value_parser = parse_duration)]
    pub drain_max: Duration,

    /// Destination ports proxied as opaque TCP, without protocol detection (comma-separated).
    #[arg(long, env = "TRELLIS_OPAQUE_PORTS", value_delimiter = ',', value_parser = parse_port)]
    pub opaque_ports: Vec<u16>,

    /// Write the Envoy-format access log to stdout.
    #[arg(long, env = "TRELLIS_ACCESS_LOG")]
    pub access_log: bool,

    /// Worker threads; defaults to the CPUs this process may use (cgroup quota aware).
    #[arg(long, env = "TRELLIS_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// The control plane (`HOST:PORT`) to ask what each outbound address is. Without it every
    /// destination is forwarded to its original address, as it was asked.
    #[arg(long, env = "TRELLIS_CONTROL_PLANE", value_name = "HOST:PORT")]
    pub control_plane: Option<String>,

    /// The cluster's DNS domain, in the names of Service clusters
    /// (`outbound|<port>||<svc>.<ns>.svc.<domain>`).
    #[arg(long, env = "TRELLIS_CLUSTER_DOMAIN", default_value = crate::api::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,

    /// Port of the app-health listener, where the kubelet's rewritten probes land
    /// (`/app-health/<container>/livez|readyz|startupz`); it listens only with `--app-probes`.
    #[arg(long, env = "TRELLIS_APP_HEALTH_PORT", default_value_t = defaults::APP_HEALTH_PORT, value_parser = parse_port)]
    pub app_health_port: u16,

    /// The app's original probes, as JSON (see `config::probes`); the webhook sets them in the
    /// `TRELLIS_APP_PROBES` environment variable. Without them the app-health port is not served.
    #[arg(long, env = crate::probes::ENV, value_name = "JSON")]
    pub app_probes: Option<AppProbes>,

    /// Log level: trace, debug, info, warn, error (changeable live with `POST /logging?level=`).
    #[arg(long, env = "TRELLIS_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        static DEFAULT: OnceLock<Config> = OnceLock::new();
        DEFAULT.get_or_init(clap_defaults).clone()
    }
}

impl Render for Config {
    fn flags(&self) -> Vec<Flag> {
        let mut flags = vec![
            Flag::text("admin-listen", self.admin_listen),
            Flag::text("inbound-capture-port", self.inbound_capture_port),
            Flag::text("outbound-capture-port", self.outbound_capture_port),
        ];
        flags.extend(
            self.pools
                .entries()
                .map(|(name, v)| Flag::optional(name, v)),
        );
        for (name, d) in [
            ("connect-timeout", self.connect_timeout),
            ("request-timeout", self.request_timeout),
            ("idle-timeout", self.idle_timeout),
            ("drain-time", self.drain_time),
            ("drain-max", self.drain_max),
        ] {
            flags.push(Flag::text(name, format_duration(d)));
        }
        let opaque =
            (!self.opaque_ports.is_empty()).then(|| crate::parse::join(&self.opaque_ports));
        flags.extend([
            Flag::optional("opaque-ports", opaque),
            Flag::optional("concurrency", self.concurrency),
            Flag::optional("control-plane", self.control_plane.as_ref()),
            Flag::text("cluster-domain", &self.cluster_domain),
            Flag::text("log-level", &self.log_level),
            Flag::switch("access-log", self.access_log),
            Flag::text("app-health-port", self.app_health_port),
        ]);
        // `app_probes` is not rendered: the webhook puts its JSON in `TRELLIS_APP_PROBES`, so the
        // args stay readable in `kubectl describe`.
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
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
        assert_eq!(Config::default().admin_listen.to_string(), "[::]:9901");
        assert_eq!(Config::default().request_timeout, Duration::from_secs(15));
    }

    #[test]
    fn to_args_round_trips() {
        let c = Config {
            pools: PoolLimits {
                inbound: Limits {
                    max_connections: Some(10),
                    max_pending_requests: Some(10),
                    ..Limits::default()
                },
                outbound: Limits {
                    max_connections: Some(3),
                    max_requests_per_connection: Some(1),
                    ..Limits::default()
                },
            },
            connect_timeout: Duration::from_millis(250),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(2),
            opaque_ports: vec![3306, 6379],
            access_log: true,
            concurrency: Some(2),
            log_level: "debug".into(),
            control_plane: Some("trellis-control.trellis-system.svc:15012".into()),
            cluster_domain: "example.org".into(),
            app_health_port: 15021,
            drain_max: Duration::from_secs(120),
            ..Config::default()
        };
        assert_eq!(parse(&c.to_args()).unwrap(), c);
        assert!(c
            .to_args()
            .contains(&"--outbound-max-requests-per-connection=1".to_string()));
    }

    #[test]
    fn every_limit_flag_lands_in_its_own_field() {
        let args: Vec<String> = PoolLimits::default()
            .entries()
            .enumerate()
            .map(|(i, (name, _))| format!("--{name}={}", i + 1))
            .collect();
        let c = parse(&args).unwrap();
        let values: Vec<Option<u32>> = c.pools.entries().map(|(_, v)| v).collect();
        assert_eq!(values, (1..=8).map(Some).collect::<Vec<_>>());
        assert_eq!(c.pools.outbound.max_requests, Some(7));
    }

    #[test]
    fn bad_values_name_flag_and_value() {
        for (arg, flag, value) in [
            ("--max-connections=-3", "--max-connections", "-3"),
            ("--connect-timeout=soon", "--connect-timeout", "soon"),
            ("--log-level=loud", "--log-level", "loud"),
            ("--admin-listen=nowhere", "--admin-listen", "nowhere"),
            ("--inbound-capture-port=0", "--inbound-capture-port", "0"),
            ("--app-probes=nope", "--app-probes", "nope"),
            (
                r#"--app-probes={"app":{"livez":{"tcpSocket":{"port":0}}}}"#,
                "--app-probes",
                "app/livez: port must be from 1",
            ),
        ] {
            let err = parse(&[arg.to_string()]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(flag) && msg.contains(value), "{arg}: {msg}");
            assert_eq!(err.exit_code(), 2);
        }
    }
}

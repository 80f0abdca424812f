//! `proxy` binary: sidecar (default), `gateway`, or `wait-ready`.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter};

#[derive(Parser)]
#[command(name = "proxy", version, about = "Trellis sidecar proxy")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: proxy::Config,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start
enum Command {
    /// An explicit listener in front of one upstream, or of a Gateway's HTTPRoutes (App Mesh's
    /// VirtualGateway and its GatewayRoutes, Istio's ingress gateway).
    Gateway {
        /// Address to accept clients on.
        #[arg(long, env = "TRELLIS_LISTEN")]
        listen: SocketAddr,
        /// The upstream service, `HOST:PORT` (resolved once at start). With `--control-plane`, a
        /// Service address is balanced over its ready pods, with the `--outbound-max-*` limits,
        /// its TrafficPolicy and its HTTPRoutes.
        #[arg(long, env = "TRELLIS_UPSTREAM", value_parser = config::parse::parse_host_port,
              required_unless_present = "gateway", conflicts_with = "gateway")]
        upstream: Option<String>,
        /// Serve the HTTPRoutes attached to this `Gateway` (`NAMESPACE/NAME`, gatewayClassName
        /// `trellis`), as the control plane compiles them; needs `--control-plane`.
        #[arg(long, env = "TRELLIS_GATEWAY", value_parser = config::parse::parse_namespaced_name,
              requires = "control_plane")]
        gateway: Option<config::api::ServiceRef>,
        #[command(flatten)]
        config: proxy::Config,
    },
    /// Exit 0 once the local admin API answers `/ready` with 200 (the postStart hook).
    WaitReady {
        #[arg(long, env = "TRELLIS_ADMIN_LISTEN", default_value_t = config::defaults::admin_listen())]
        admin_listen: SocketAddr,
        /// Give up after this long (e.g. `60s`).
        #[arg(long, default_value = "60s", value_parser = config::parse::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, mode) = match cli.command {
        Some(Command::WaitReady {
            admin_listen,
            timeout,
        }) => return wait_ready(admin_listen, timeout),
        Some(Command::Gateway {
            listen,
            upstream,
            gateway,
            config,
        }) => {
            let to = match (upstream, gateway) {
                (Some(u), _) => proxy::GatewayTo::Upstream(u),
                (None, Some(g)) => proxy::GatewayTo::Routes(g),
                (None, None) => unreachable!("clap requires one of --upstream and --gateway"),
            };
            (config, proxy::Mode::Gateway { listen, to })
        }
        None => (cli.config, proxy::Mode::Sidecar),
    };

    let (filter, handle) = reload::Layer::new(EnvFilter::new(filter_for(&config.log_level)));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let control: proxy::LogControl = Box::new(move |level: &str| {
        handle
            .reload(EnvFilter::new(filter_for(level)))
            .map_err(|e| e.to_string())
    });

    let threads = proxy::worker_threads(&config);
    // One worker means one thread, like the peers' single worker: a current-thread runtime has
    // no cross-thread hand-offs (no worker thread beside the main one, no atomics in the scheduler).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(proxy::run(config, mode, Some(control))) {
        Ok(()) => {
            rt.shutdown_timeout(Duration::from_millis(100));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Our own crates at `level`; dependencies no chattier than `warn`.
fn filter_for(level: &str) -> String {
    match level {
        "trace" | "debug" => format!("warn,proxy={level}"),
        l => l.to_string(),
    }
}

fn wait_ready(admin: SocketAddr, timeout: Duration) -> ExitCode {
    // `[::]` is dual-stack, or IPv4 only where the pod has no IPv6: try ::1, then 127.0.0.1.
    let targets: Vec<SocketAddr> = match admin.ip() {
        IpAddr::V4(a) if a.is_unspecified() => vec![(Ipv4Addr::LOCALHOST, admin.port()).into()],
        IpAddr::V6(a) if a.is_unspecified() => vec![
            (Ipv6Addr::LOCALHOST, admin.port()).into(),
            (Ipv4Addr::LOCALHOST, admin.port()).into(),
        ],
        _ => vec![admin],
    };
    let deadline = Instant::now() + timeout;
    loop {
        let mut last = String::new();
        for t in &targets {
            last = match probe(*t) {
                Ok(200) => return ExitCode::SUCCESS,
                Ok(code) => format!("http://{t}/ready answered {code}"),
                Err(e) => format!("http://{t}/ready: {e}"),
            };
        }
        if Instant::now() >= deadline {
            eprintln!(
                "proxy wait-ready: not ready after {} (last: {last})",
                config::format_duration(timeout)
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn probe(target: SocketAddr) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = s.read(&mut buf[n..])?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let head = std::str::from_utf8(&buf[..n]).unwrap_or("");
    head.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad answer {head:?}")))
}

//! `control` binary: `serve` (the discovery and metrics servers), `describe` (what a proxy is
//! told about one address) and `convert` (Istio YAML as Trellis objects).
#![forbid(unsafe_code)]

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use control::metrics::Metrics;
use control::serve;
use control::source::{dir::DirSource, kube::KubeSource, Source};
use control::store::Store;

#[derive(Parser)]
#[command(name = "control", version, about = "Trellis control plane")]
struct Cli {
    /// Log level (trace, debug, info, warn, error).
    #[arg(long, env = "TRELLIS_LOG_LEVEL", default_value = "info", global = true, value_parser = config::parse::parse_log_level)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ServeArgs {
    /// Read Services, EndpointSlices and TrafficPolicies from the YAML/JSON files in DIR and follow
    /// their changes, instead of watching the Kubernetes API.
    #[arg(long, env = "TRELLIS_FROM_DIR", conflicts_with = "kubeconfig")]
    from_dir: Option<PathBuf>,
    /// Watch the API server of this kubeconfig's current context. Without it (and without
    /// --from-dir): KUBECONFIG, ~/.kube/config, or the pod's service account.
    #[arg(long, env = "TRELLIS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Discovery address (HTTP/1.1 and HTTP/2 prior knowledge).
    #[arg(long, env = "TRELLIS_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Metrics and health address (`/metrics`, `/ready`).
    #[arg(long, env = "TRELLIS_METRICS_LISTEN", default_value = "0.0.0.0:15014")]
    metrics_listen: SocketAddr,
    /// The Kubernetes cluster domain (for cluster names in logs).
    #[arg(long, env = "TRELLIS_CLUSTER_DOMAIN", default_value = config::api::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// At most this many destination streams at once; more are answered 503.
    #[arg(long, env = "TRELLIS_MAX_STREAMS", default_value_t = serve::DEFAULT_MAX_STREAMS)]
    max_streams: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Serve destination streams to proxies.
    Serve(ServeArgs),
    /// Print, as JSON, exactly what a proxy is told about destination ADDR (ip:port), or with
    /// --gateway NS/NAME what a gateway proxy is told about that Gateway.
    Describe {
        /// The destination address: ip:port, or [v6]:port.
        #[arg(required_unless_present = "gateway", conflicts_with = "gateway")]
        address: Option<String>,
        /// Describe the Gateway NAMESPACE/NAME (its HTTPRoutes and GRPCRoutes) instead of an
        /// address.
        #[arg(long, value_name = "NS/NAME")]
        gateway: Option<String>,
        /// Compute the answer from the files in DIR.
        #[arg(
            long,
            conflicts_with = "control_plane",
            required_unless_present = "control_plane"
        )]
        from_dir: Option<PathBuf>,
        /// Read the answer from a running control plane (HOST:PORT).
        #[arg(long, value_parser = config::parse::parse_host_port)]
        control_plane: Option<String>,
    },
    /// Convert Istio DestinationRules and VirtualServices into TrafficPolicies, subset Services,
    /// HTTPRoutes and HTTPFaults, printed as YAML; a warning on stderr for every field not
    /// carried over.
    Convert {
        /// The Istio YAML to read (multi-document); `-` reads stdin.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Pure and offline: no logging, no runtime.
    if let Command::Convert { file } = &cli.command {
        return convert(file);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{},hyper=warn",
            cli.log_level
        )))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(run_serve(args)),
        Command::Describe {
            address,
            gateway: Some(gateway),
            from_dir,
            control_plane,
        } => {
            let _ = address;
            runtime.block_on(describe_gateway(&gateway, from_dir, control_plane))
        }
        Command::Describe {
            address,
            gateway: None,
            from_dir,
            control_plane,
        } => runtime.block_on(describe(
            address.as_deref().unwrap_or_default(),
            from_dir,
            control_plane,
        )),
        Command::Convert { .. } => unreachable!("handled before the runtime starts"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("control: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (source, from) = match args.from_dir {
        Some(dir) => {
            // Fail early and clearly on a directory that cannot be read.
            control::source::dir::load(&dir)?;
            let from = format!("directory {}", dir.display());
            (Source::Dir(DirSource::new(dir)), from)
        }
        None => {
            let kube = KubeSource::connect(args.kubeconfig.as_deref()).await?;
            (Source::Kube(kube), "the Kubernetes API".to_string())
        }
    };
    let store = Store::new(Arc::new(Metrics::default()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}: cannot bind", args.metrics_listen))?;
    tracing::info!(
        listen = %args.listen,
        metrics = %args.metrics_listen,
        from = %from,
        cluster_domain = %args.cluster_domain,
        "control plane serving"
    );
    let discovery = serve::serve(listener, serve::router(store.clone(), args.max_streams));
    let metrics = serve::serve(metrics_listener, serve::metrics_router(store.clone()));
    tokio::select! {
        r = source.run(store) => r.context("source")?,
        r = discovery => r.context("discovery server")?,
        r = metrics => r.context("metrics server")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn describe(
    address: &str,
    from_dir: Option<PathBuf>,
    control_plane: Option<String>,
) -> anyhow::Result<ExitCode> {
    let address: SocketAddr = address.parse().map_err(|_| {
        anyhow::anyhow!(
            "`{address}` is not a destination address: expected ip:port, like 10.96.0.10:80 or [fd00::10]:80"
        )
    })?;
    let update = match (from_dir, control_plane) {
        (Some(dir), _) => {
            let (update, problems) = control::describe::from_dir(&dir, address)?;
            for p in problems {
                eprintln!("problem: {p}");
            }
            update
        }
        (None, Some(server)) => control::describe::from_server(&server, address).await?,
        (None, None) => anyhow::bail!("describe needs --from-dir DIR or --control-plane HOST:PORT"),
    };
    print_json(&update)
}

async fn describe_gateway(
    gateway: &str,
    from_dir: Option<PathBuf>,
    control_plane: Option<String>,
) -> anyhow::Result<ExitCode> {
    let gateway = match gateway.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            config::api::ServiceRef {
                namespace: ns.to_string(),
                name: name.to_string(),
            }
        }
        _ => anyhow::bail!(
            "--gateway `{gateway}` is not NAMESPACE/NAME: expected e.g. default/ingress"
        ),
    };
    let update = match (from_dir, control_plane) {
        (Some(dir), _) => {
            let (update, problems) = control::describe::gateway_from_dir(&dir, &gateway)?;
            for p in problems {
                eprintln!("gateway: {p}");
            }
            update
        }
        (None, Some(server)) => control::describe::gateway_from_server(&server, &gateway).await?,
        (None, None) => anyhow::bail!("describe needs --from-dir DIR or --control-plane HOST:PORT"),
    };
    print_json(&update)
}

fn print_json(update: &impl serde::Serialize) -> anyhow::Result<ExitCode> {
    let text = serde_json::to_string_pretty(update)?;
    // A closed pipe (`| head`) is not an error worth a panic.
    match writeln!(std::io::stdout(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn convert(file: &std::path::Path) -> ExitCode {
    let input = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(file)
    };
    let input = match input {
        Ok(text) => text,
        Err(e) => {
            eprintln!("control convert: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let outcome = control::convert::run(&input);
    eprint!("{}", outcome.stderr);
    // A closed pipe (`| head`) is not an error worth a panic.
    match std::io::stdout().write_all(outcome.stdout.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("control convert: writing stdout: {e}");
            ExitCode::from(2)
        }
        _ => ExitCode::from(outcome.code),
    }
}

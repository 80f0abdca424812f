//! `webhook` binary: `serve` (the admission server) and `inject` (offline, like `istioctl kube-inject`).
#![forbid(unsafe_code)]

use std::io::{IsTerminal as _, Read as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use webhook::bootstrap::BootstrapConfig;
use webhook::InjectorConfig;

#[derive(Parser)]
#[command(name = "webhook", version, about = "Trellis sidecar injector")]
struct Cli {
    /// Log level (trace, debug, info, warn, error).
    #[arg(long, env = "TRELLIS_LOG_LEVEL", default_value = "info", global = true, value_parser = config::parse::parse_log_level)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TRELLIS_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain (re-read when it changes).
    #[arg(
        long,
        env = "TRELLIS_TLS_CERT",
        default_value = "/var/run/trellis/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// PEM private key (re-read when it changes).
    #[arg(
        long,
        env = "TRELLIS_TLS_KEY",
        default_value = "/var/run/trellis/tls/tls.key"
    )]
    tls_key: PathBuf,
    /// How often the certificate files are checked for changes.
    #[arg(long, env = "TRELLIS_CERT_RELOAD_INTERVAL", default_value = "2s", value_parser = config::parse::parse_duration)]
    cert_reload_interval: Duration,
    #[command(flatten)]
    limits: webhook::server::ServeLimits,
    #[command(flatten)]
    injector: InjectorConfig,
    #[command(flatten)]
    bootstrap: BootstrapConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the mutating admission webhook over HTTPS.
    Serve(Box<ServeArgs>),
    /// Inject workload YAML offline and print it (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, List).
    Inject {
        /// File to read, or `-` for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
        #[command(flatten)]
        injector: Box<InjectorConfig>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{},kube=warn,hyper=warn,rustls=error",
            cli.log_level
        )))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let injector = match &cli.command {
        Command::Inject { injector, .. } => injector,
        Command::Serve(args) => &args.injector,
    };
    if let Err(e) = injector.validate() {
        eprintln!("webhook: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Inject { file, injector } => inject(&file, &injector),
        Command::Serve(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(serve(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("webhook: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn inject(file: &str, injector: &InjectorConfig) -> ExitCode {
    let mut input = String::new();
    let read = if file == "-" {
        std::io::stdin().read_to_string(&mut input).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|s| input = s)
    };
    if let Err(e) = read {
        eprintln!("webhook inject: cannot read {file}: {e}");
        return ExitCode::from(2);
    }
    let name = if file == "-" { "<stdin>" } else { file };
    let mut notes = Vec::new();
    match webhook::offline::inject_yaml(&input, name, injector, &mut notes) {
        Ok(out) => {
            for n in notes {
                eprintln!("webhook inject: {n}");
            }
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("webhook inject: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        listen,
        tls_cert,
        tls_key,
        cert_reload_interval,
        limits,
        injector,
        bootstrap,
    } = args;
    if bootstrap.bootstrap_certs {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API for certificate bootstrap")?;
        webhook::bootstrap::run_until_first_success(
            client,
            bootstrap,
            tls_cert.clone(),
            tls_key.clone(),
        )
        .await;
    }
    let cert = webhook::tls::ReloadingCert::load(&tls_cert, &tls_key)?;
    cert.watch(cert_reload_interval);
    let state = webhook::server::AppState::with_limits(injector, &limits);
    let listener = webhook::server::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "trellis webhook serving");
    webhook::server::serve(
        listener,
        cert,
        webhook::server::router(state),
        &limits,
        shutdown_signal(),
    )
    .await?;
    tracing::info!("trellis webhook stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

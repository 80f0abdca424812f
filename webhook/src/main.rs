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
    /// Address to listen on; `[::]` is both IPv6 and IPv4 (IPv4 only on a node without IPv6).
    #[arg(long, env = "TRELLIS_LISTEN", default_value = webhook::server::DEFAULT_LISTEN)]
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
    /// After SIGTERM: how long `/readyz` answers 503 while reviews are still served (endpoints
    /// take this long to drop the pod), before the listener closes. A second signal cuts it short.
    #[arg(long, env = "TRELLIS_SHUTDOWN_GRACE", default_value = "10s", value_parser = config::parse::parse_duration)]
    shutdown_grace: Duration,
    #[command(flatten)]
    limits: webhook::server::ServeLimits,
    #[command(flatten)]
    injector: InjectorConfig,
    #[command(flatten)]
    bootstrap: BootstrapConfig,
    #[command(flatten)]
    pod_security: webhook::namespaces::PodSecurityConfig,
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
        shutdown_grace,
        limits,
        injector,
        bootstrap,
        pod_security,
    } = args;
    let bootstrap_client = if bootstrap.bootstrap_certs {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API for certificate bootstrap")?;
        webhook::bootstrap::run_until_first_success(&client, &bootstrap, &tls_cert, &tls_key).await;
        Some(client)
    } else {
        None
    };
    let cert = webhook::tls::ReloadingCert::load(&tls_cert, &tls_key)?;
    cert.watch(cert_reload_interval);
    if let Some(client) = bootstrap_client {
        // Rounds from now on report the certificate the server really serves (CA rotation).
        webhook::bootstrap::Replica {
            client,
            cfg: bootstrap,
            cert: tls_cert.clone(),
            key: tls_key.clone(),
            served: Some(std::sync::Arc::clone(&cert)),
        }
        .spawn();
    }
    let namespaces = pod_security_cache(&pod_security).await;
    let state = webhook::server::AppState::with_namespaces(injector, &limits, namespaces);
    let listener = webhook::server::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "trellis webhook serving");
    let mut signals = Signals::new()?;
    let draining = std::sync::Arc::clone(&state);
    let shutdown = async move {
        signals.recv().await;
        webhook::server::drain(&draining, shutdown_grace, signals.recv()).await;
    };
    webhook::server::serve(
        listener,
        cert,
        webhook::server::router(state),
        &limits,
        shutdown,
    )
    .await?;
    tracing::info!("trellis webhook stopped");
    Ok(())
}

/// The namespace cache behind the Pod Security check, unless it is turned off. Without a
/// Kubernetes API to reach (a local run), the check is off and the webhook says so.
async fn pod_security_cache(
    config: &webhook::namespaces::PodSecurityConfig,
) -> Option<webhook::namespaces::NamespaceCache> {
    if !config.pod_security_check {
        tracing::info!("Pod Security check off (--pod-security-check=false)");
        return None;
    }
    match kube::Client::try_default().await {
        Ok(client) => Some(webhook::namespaces::NamespaceCache::spawn(
            client,
            config.pod_security_default_enforce,
        )),
        Err(e) => {
            tracing::warn!(
                "Pod Security check off: no Kubernetes API ({e}); pods are injected without it"
            );
            None
        }
    }
}

/// SIGTERM and SIGINT, installed once (so a second signal is seen too).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

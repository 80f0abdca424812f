//! `proxyinit` binary: parse and check the config, pick the backend and families, compute the
//! rules from the nat table as it is, then apply them (or print them with `--dry-run`, or remove
//! them with `--cleanup`). Exit 2 on bad flags before touching anything, 1 when iptables fails.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser};
use proxyinit::rules::{self, Family, NatState};
use proxyinit::{apply, Backend, Config, Ipv6Mode};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "proxyinit",
    version,
    about = "Writes the iptables rules that send a pod's TCP through the Trellis proxy"
)]
struct Cli {
    #[command(flatten)]
    config: Config,

    /// Print the iptables-restore input(s) that would be applied, and change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Remove Trellis's chains and jumps (and nothing else) instead of installing them.
    #[arg(long)]
    cleanup: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(msg) = cli.config.validate() {
        // Same form and exit code (2) as clap's own errors.
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, msg)
            .exit();
    }
    init_logging();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("proxyinit: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRELLIS_LOG_LEVEL")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = &cli.config;
    info!(args = %config.to_args().join(" "), "proxyinit starting");

    let backend = apply::detect_backend(config.iptables_mode);
    info!("iptables backend {}: {}", backend.value, backend.reason);
    let backend = backend.value;

    if cli.cleanup {
        return cleanup(backend, config.ipv6, cli.dry_run);
    }

    let families = apply::detect_families(config.ipv6);
    info!("rules for {}", families.reason);

    let mut inputs = Vec::new();
    for family in families.value {
        let current = match apply::read_nat(backend, family) {
            Ok(state) => state,
            Err(err) if cli.dry_run => {
                warn!(
                    "cannot read the {} nat table ({err}); showing the rules for an empty table",
                    family.name()
                );
                NatState::empty()
            }
            Err(err) => {
                return Err(err).with_context(|| format!("reading the {} nat table", family.name()))
            }
        };
        if !current.is_clean() {
            info!(
                chains = ?current.chains, jumps = ?current.jumps,
                "{} nat table already has Trellis rules: replacing them", family.name()
            );
        }
        inputs.push((family, rules::apply_input(config, family, &current)));
    }

    if cli.dry_run {
        for (_, input) in &inputs {
            print!("{input}");
        }
        info!("dry run: nothing was changed");
        return Ok(());
    }
    for (family, input) in &inputs {
        apply::restore(backend, *family, input)
            .with_context(|| format!("applying the {} rules", family.name()))?;
        info!(
            command = %backend.restore_command(*family),
            rules = rules::trellis_rules(input).len(),
            "{} rules applied", family.name()
        );
    }
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "done: the pod's TCP now goes through the proxy"
    );
    Ok(())
}

/// Removes Trellis's chains and jumps. IPv6 is cleaned too unless `--ipv6=off`; in auto mode a
/// missing ip6tables (or kernel IPv6) just means there is nothing to clean there.
fn cleanup(backend: Backend, ipv6: Ipv6Mode, dry_run: bool) -> anyhow::Result<()> {
    let families: &[Family] = match ipv6 {
        Ipv6Mode::Off => &[Family::V4],
        _ => &[Family::V4, Family::V6],
    };
    for &family in families {
        let current = match apply::read_nat(backend, family) {
            Ok(state) => state,
            Err(err) if family == Family::V6 && ipv6 == Ipv6Mode::Auto => {
                info!("skipping IPv6 cleanup: {err}");
                continue;
            }
            Err(err) => {
                return Err(err).with_context(|| format!("reading the {} nat table", family.name()))
            }
        };
        let Some(input) = rules::cleanup_input(family, &current) else {
            info!("{}: no Trellis rules to remove", family.name());
            continue;
        };
        if dry_run {
            print!("{input}");
            continue;
        }
        apply::restore(backend, family, &input)
            .with_context(|| format!("removing the {} rules", family.name()))?;
        info!(chains = ?current.chains, jumps = current.jumps.len(), "{}: Trellis rules removed", family.name());
    }
    Ok(())
}

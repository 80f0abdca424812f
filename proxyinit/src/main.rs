//! `proxyinit` binary: parse and check the config, pick the backend and families, compute the
//! rules from the nat table as it is, then apply them (or print them with `--dry-run`, or remove
//! them with `--cleanup`). Exit 2 on bad flags before touching anything, 1 when iptables fails.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser};
use proxyinit::apply::{self, Saves};
use proxyinit::detect::Choice;
use proxyinit::rules::{self, Family, NatState};
use proxyinit::{Backend, Config, Ipv6Mode, Render as _};
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

    let families = if cli.cleanup {
        // Clean IPv6 too unless told not to; in auto mode an unreadable ip6tables is skipped.
        let families = match config.ipv6 {
            Ipv6Mode::Off => vec![Family::V4],
            _ => vec![Family::V4, Family::V6],
        };
        Choice {
            value: families,
            reason: String::new(),
        }
    } else {
        apply::detect_families(config.ipv6)
    };

    // One parallel round of `*-save`: it decides the backend and gives the current nat table.
    let mut saves = Saves::read(
        apply::candidate_backends(config.iptables_mode),
        &families.value,
    );
    let backend = apply::choose_backend(config.iptables_mode, &saves);
    info!("iptables backend {}: {}", backend.value, backend.reason);
    let backend = backend.value;

    if cli.cleanup {
        return cleanup(
            backend,
            config.ipv6,
            &families.value,
            &mut saves,
            cli.dry_run,
        );
    }
    info!("rules for {}", families.reason);

    let mut inputs = Vec::new();
    for family in families.value {
        let current = match saves.take_nat(backend, family) {
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
    let mut failed = None;
    for (family, result) in apply::restore_all(backend, &inputs) {
        match result {
            Ok(()) => info!(
                command = %backend.restore_command(family),
                "{} rules applied", family.name()
            ),
            Err(err) => {
                let err = anyhow::Error::new(err)
                    .context(format!("applying the {} rules", family.name()));
                if let Some(first) = failed.replace(err) {
                    eprintln!("proxyinit: error: {first:#}");
                }
            }
        }
    }
    if let Some(err) = failed {
        return Err(err);
    }
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "done: the pod's TCP now goes through the proxy"
    );
    Ok(())
}

/// Removes Trellis's chains and jumps, and nothing else.
fn cleanup(
    backend: Backend,
    ipv6: Ipv6Mode,
    families: &[Family],
    saves: &mut Saves,
    dry_run: bool,
) -> anyhow::Result<()> {
    for &family in families {
        let current = match saves.take_nat(backend, family) {
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

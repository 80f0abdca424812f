//! `proxyinit` binary: parse the config, compute the rules, apply them (or print them with `--dry-run`).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "proxyinit",
    version,
    about = "Writes the iptables rules that send a pod's TCP through the Trellis proxy"
)]
struct Cli {
    #[command(flatten)]
    config: proxyinit::Config,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = cli.config;
    anyhow::bail!("proxyinit: rule application is not implemented yet (issue 3)")
}

//! `proxy` binary: sidecar (default), `gateway`, or `wait-ready`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "proxy", version, about = "Trellis sidecar proxy")]
struct Cli {
    #[command(flatten)]
    config: proxy::Config,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = cli.config;
    anyhow::bail!("proxy: the data plane is not implemented yet (issue 4)")
}

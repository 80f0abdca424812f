//! `proxyinit`'s command line: arbitrary arguments (NUL-separated). What parses and validates
//! must give rules for both families without panicking, and render back to the same config.
#![no_main]

use clap::Parser;
use config::Render;
use proxyinit::rules::{self, NatState};
use proxyinit::{Config, Family};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

fn parse<I: IntoIterator<Item = String>>(args: I) -> Option<Config> {
    Cli::try_parse_from(std::iter::once("proxyinit".to_string()).chain(args))
        .ok()
        .map(|c| c.config)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let args = text.split('\0').filter(|a| !a.is_empty()).map(str::to_string);
    let Some(c) = parse(args) else { return };
    if c.validate().is_err() {
        return;
    }
    for family in [Family::V4, Family::V6] {
        let _ = rules::apply_input(&c, family, &NatState::empty());
    }
    let again = parse(c.to_args()).expect("rendered args parse");
    assert_eq!(again, c, "render then parse changed the config");
});

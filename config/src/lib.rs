//! `config`: the vocabulary every Trellis program shares, with no runtime attached.
//!
//! The webhook renders the `proxy` and `proxyinit` command lines from the same types the binaries
//! parse, so the two sides cannot drift; this crate holds those types and nothing heavier (no
//! tokio, no networking), so the webhook does not link the data plane to write a flag.
//!
//! - [`defaults`]: the ports, uid and CIDRs every component assumes, typed once;
//! - [`parse`]: the small parsers (durations, ports, ids, CIDRs, log levels) and their errors;
//! - [`limits`]: one [`Limits`] type for every pool, and its flags and annotations table;
//! - [`args`]: the one rule that turns a config back into flags (non-default values only), and
//!   defaults read from the clap attributes themselves;
//! - [`proxy`] and [`proxyinit`]: the two command lines;
//! - [`probes`]: the app's original probes, handed by the webhook to the proxy's app-health port.
//!
//! - [`api`]: the control-plane API (`Update`, `Destination`, `Endpoint`, `Policy`) that `control`
//!   sends and `proxy` receives, one schema for both.
#![forbid(unsafe_code)]

pub mod api;
pub mod args;
pub mod defaults;
pub mod limits;
pub mod parse;
pub mod probes;
pub mod proxy;
pub mod proxyinit;

pub use args::{Flag, Render};
pub use limits::{Limits, PoolLimits, Side};
pub use parse::{format_duration, CidrList, ParseError, PortSpec};

/// A combination of flags that is refused although each flag parsed: the message names the flags,
/// the values and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{first} and {second} are both {port}: the proxy listens on each of them, \
         so they must be different ports"
    )]
    SharedPort {
        first: &'static str,
        second: &'static str,
        port: u16,
    },
    #[error(
        "--inbound-ports lists {port}, which is {flag}: the proxy listens there, so an app \
         cannot be served on it; move the app or the proxy's port"
    )]
    AppPortIsProxyPort { flag: &'static str, port: u16 },
}

/// The proxy's listening ports must differ; `proxyinit` and the webhook both insist on it.
/// Each entry is `(flag, port)`, so the error names the flags as the user wrote them.
pub fn distinct_ports(ports: &[(&'static str, u16)]) -> Result<(), ConfigError> {
    for (i, (first, a)) in ports.iter().enumerate() {
        if let Some((second, _)) = ports[i + 1..].iter().find(|(_, b)| a == b) {
            return Err(ConfigError::SharedPort {
                first,
                second,
                port: *a,
            });
        }
    }
    Ok(())
}

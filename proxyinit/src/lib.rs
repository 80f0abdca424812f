//! `proxyinit`: the init container that makes the Trellis proxy transparent.
//!
//! It runs once in the pod's network namespace and writes `TRELLIS_*` chains in the nat table
//! so that the pod's inbound TCP lands on the proxy's inbound capture port and its outbound TCP on
//! the outbound capture port. [`Config`] is shared with the webhook, which renders the init
//! container's args from it, so the two sides cannot drift apart.
//!
//! - [`config`]: the flags (shared with the webhook) and their checks;
//! - [`rules`]: the pure core, config + current nat table → `iptables-restore` text;
//! - [`detect`]: pure decisions about the environment (legacy or nft, IPv6 or not);
//! - [`apply`]: the thin shell that runs `*-save` / `*-restore`.

pub mod apply;
pub mod config;
pub mod detect;
pub mod rules;

pub use config::{CidrList, Config, IpTablesMode, Ipv6Mode, PortSpec};
pub use detect::Backend;
pub use rules::Family;

//! `proxyinit`: the init container that makes the Trellis proxy transparent.
//!
//! It runs once in the pod's network namespace and writes `TRELLIS_*` chains in the nat table
//! so that the pod's inbound TCP lands on the proxy's inbound capture port and its outbound TCP on
//! the outbound capture port. [`Config`] lives in the `config` crate, shared with the webhook,
//! which renders the init container's args from it, so the two sides cannot drift apart.
//!
//! - [`rules`]: the pure core, config + current nat table → `iptables-restore` text;
//! - [`detect`]: pure decisions about the environment (legacy or nft, IPv6 or not);
//! - [`apply`]: the thin shell that runs `*-save` / `*-restore`.
#![forbid(unsafe_code)]

pub mod apply;
pub mod detect;
pub mod rules;

pub use config::proxyinit::{Config, IpTablesMode, Ipv6Mode};
pub use config::{CidrList, PortSpec, Render};
pub use detect::Backend;
pub use rules::Family;

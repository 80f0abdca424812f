//! The rules as data: a pure function from [`Config`] (and the nat table as it is now) to the exact
//! `iptables-restore --noflush` input, and the input that removes Trellis's rules again.
//!
//! No I/O here: [`crate::apply`] reads the current table and feeds the text to iptables.
//!
//! Rule lines are written in the canonical form `iptables-save` prints (`-p tcp -m tcp --dport N`,
//! `! -d` before `-o`), so what `--dry-run` shows is line for line what `iptables-save` shows after.
//!
//! Idempotence: every `TRELLIS_*` chain is declared with `:TRELLIS_X - [0:0]`, which in `--noflush`
//! mode creates the chain or flushes it, and the jumps from PREROUTING/OUTPUT are only added when
//! they are not already there (stale or duplicate Trellis jumps are deleted in the same
//! transaction). Applying twice therefore gives the same rule set, and a restarted init container
//! never fails with "Chain already exists".

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::{Config, PortSpec};

/// Every Trellis chain starts with this prefix; `--cleanup` removes exactly these chains.
pub const CHAIN_PREFIX: &str = "TRELLIS_";
/// Inbound decision: jumped to from PREROUTING (and from TRELLIS_OUTPUT for the pod calling itself).
pub const INBOUND: &str = "TRELLIS_INBOUND";
/// Redirects to the proxy's inbound capture port.
pub const IN_REDIRECT: &str = "TRELLIS_IN_REDIRECT";
/// Outbound decision: jumped to from OUTPUT.
pub const OUTPUT: &str = "TRELLIS_OUTPUT";
/// Redirects to the proxy's outbound capture port.
pub const REDIRECT: &str = "TRELLIS_REDIRECT";

/// The chains in the order they are declared.
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];

/// Which table family a rule set is for: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// `IPv4` / `IPv6`, for logs and comments.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The command prefix: `iptables` or `ip6tables`.
    pub fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// Loopback destinations that are never captured (the app calling localhost).
    fn loopback(self) -> &'static str {
        match self {
            // The whole of 127/8 is loopback; `-d 127.0.0.1/32` alone would capture 127.0.0.2.
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

/// The jumps that hook the Trellis chains into the built-in chains, as `iptables-save` prints them.
pub fn jumps() -> [(&'static str, String); 2] {
    [
        ("PREROUTING", format!("-A PREROUTING -p tcp -j {INBOUND}")),
        ("OUTPUT", format!("-A OUTPUT -p tcp -j {OUTPUT}")),
    ]
}

/// What the nat table holds now, as far as Trellis cares: read from `iptables-save -t nat`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    /// Names of the existing `TRELLIS_*` chains.
    pub chains: Vec<String>,
    /// Rules in other chains whose target is a `TRELLIS_*` chain (normalised `-A ...` lines).
    pub jumps: Vec<String>,
}

impl NatState {
    /// An empty nat table (a fresh pod): what the golden files are rendered against.
    pub fn empty() -> Self {
        NatState::default()
    }

    /// Parses `iptables-save` output; only the `*nat` table is looked at.
    pub fn parse(save: &str) -> Self {
        let mut state = NatState::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if line == "COMMIT" {
                in_nat = false;
            } else if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name.starts_with(CHAIN_PREFIX) {
                    state.chains.push(name.to_string());
                }
            } else if line.starts_with("-A ") {
                let words: Vec<&str> = line.split_whitespace().collect();
                let chain = words.get(1).copied().unwrap_or_default();
                let target = words
                    .windows(2)
                    .find(|w| w[0] == "-j" || w[0] == "-g")
                    .map(|w| w[1])
                    .unwrap_or_default();
                if !chain.starts_with(CHAIN_PREFIX) && target.starts_with(CHAIN_PREFIX) {
                    state.jumps.push(words.join(" "));
                }
            }
        }
        state
    }

    /// True when there is nothing of Trellis's in the table.
    pub fn is_clean(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }
}

/// The `iptables-restore --noflush` input that installs the Trellis rules for `family`, given the
/// nat table as it is now (`NatState::empty()` for a fresh pod).
pub fn apply_input(config: &Config, family: Family, current: &NatState) -> String {
    let mut out = String::new();
    let w = &mut out;
    line(
        w,
        format_args!(
            "# Trellis proxyinit: {} nat rules ({}-restore --noflush input)",
            family.name(),
            family.command()
        ),
    );
    line(w, format_args!("*nat"));
    // Declaring a chain creates it, or flushes it if it exists (--noflush keeps everything else).
    for chain in CHAINS {
        line(w, format_args!(":{chain} - [0:0]"));
    }

    line(
        w,
        format_args!(
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            config.inbound_capture_port
        ),
    );
    line(
        w,
        format_args!(
            "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            config.outbound_capture_port
        ),
    );

    // Inbound: the admin and app-health ports and excluded ports pass, captured ports go to the proxy.
    for port in inbound_excluded(config) {
        line(
            w,
            format_args!("-A {INBOUND} -p tcp -m tcp --dport {port} -j RETURN"),
        );
    }
    match &config.inbound_ports {
        PortSpec::All => line(w, format_args!("-A {INBOUND} -p tcp -j {IN_REDIRECT}")),
        PortSpec::List(ports) => {
            for port in ports {
                line(
                    w,
                    format_args!("-A {INBOUND} -p tcp -m tcp --dport {port} -j {IN_REDIRECT}"),
                );
            }
        }
    }

    // Outbound. The proxy's own connections are never captured: that is what prevents loops, and
    // it is how the proxy reaches the app on the pod IP once it has accepted an inbound connection.
    line(
        w,
        format_args!(
            "-A {OUTPUT} -m owner --uid-owner {} -j RETURN",
            config.proxy_uid
        ),
    );
    line(
        w,
        format_args!(
            "-A {OUTPUT} -m owner --gid-owner {} -j RETURN",
            config.proxy_gid
        ),
    );
    // The app calling localhost talks to itself directly.
    line(
        w,
        format_args!("-A {OUTPUT} -d {} -j RETURN", family.loopback()),
    );
    // The app calling its own pod IP leaves through lo: treat it as inbound traffic (as if it came
    // from another pod), so inbound capture and exclusions apply; what inbound leaves alone stays
    // local rather than going to the outbound listener.
    line(w, format_args!("-A {OUTPUT} -o lo -j {INBOUND}"));
    line(w, format_args!("-A {OUTPUT} -o lo -j RETURN"));
    for port in &config.exclude_outbound_ports {
        line(
            w,
            format_args!("-A {OUTPUT} -p tcp -m tcp --dport {port} -j RETURN"),
        );
    }
    for net in config
        .exclude_outbound_cidrs
        .0
        .iter()
        .filter(|n| family.contains(n))
    {
        // iptables stores the network address (10.1.2.3/8 reads back as 10.0.0.0/8).
        line(w, format_args!("-A {OUTPUT} -d {} -j RETURN", net.trunc()));
    }
    line(w, format_args!("-A {OUTPUT} -p tcp -j {REDIRECT}"));

    // Hook the chains in, once: keep an exact existing jump, delete stale or duplicate ones.
    let wanted = jumps();
    for existing in dedup(&current.jumps) {
        let have = current.jumps.iter().filter(|j| **j == existing).count();
        let keep = usize::from(wanted.iter().any(|(_, j)| *j == existing));
        for _ in keep..have {
            line(w, format_args!("-D{}", &existing[2..]));
        }
    }
    for (_, jump) in &wanted {
        if !current.jumps.contains(jump) {
            line(w, format_args!("{jump}"));
        }
    }
    line(w, format_args!("COMMIT"));
    out
}

/// The `iptables-restore --noflush` input that removes every Trellis jump and chain for `family`
/// and touches nothing else; `None` when there is nothing to remove.
pub fn cleanup_input(family: Family, current: &NatState) -> Option<String> {
    if current.is_clean() {
        return None;
    }
    let mut out = String::new();
    let w = &mut out;
    line(
        w,
        format_args!(
            "# Trellis proxyinit: remove the {} nat rules ({}-restore --noflush input)",
            family.name(),
            family.command()
        ),
    );
    line(w, format_args!("*nat"));
    for jump in &current.jumps {
        line(w, format_args!("-D{}", &jump[2..]));
    }
    // Flush every chain before deleting any: they refer to each other.
    for chain in &current.chains {
        line(w, format_args!(":{chain} - [0:0]"));
    }
    for chain in &current.chains {
        line(w, format_args!("-X {chain}"));
    }
    line(w, format_args!("COMMIT"));
    Some(out)
}

/// The Trellis rules of an `iptables-save` (or restore input) text: every rule in a `TRELLIS_*`
/// chain and every jump to one, in order. Used to compare what was applied with what was read back.
pub fn trellis_rules(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("-A ") && l.contains(CHAIN_PREFIX))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Inbound ports that are never captured: the admin and app-health ports first, then the user's
/// exclusions.
fn inbound_excluded(config: &Config) -> Vec<u16> {
    let mut ports = vec![config.proxy_admin_port];
    if config.proxy_app_health_port != config.proxy_admin_port {
        ports.push(config.proxy_app_health_port);
    }
    for &p in &config.exclude_inbound_ports {
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

fn dedup(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

fn line(out: &mut String, args: std::fmt::Arguments<'_>) {
    // Writing to a String cannot fail.
    let _ = out.write_fmt(args);
    out.push('\n');
}

#[cfg(test)]
mod tests;

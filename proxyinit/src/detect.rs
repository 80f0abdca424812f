//! Pure decisions about the pod's environment: which iptables backend to drive, and whether the
//! pod has IPv6. [`crate::apply`] gathers the facts (save output, `/proc/net/if_inet6`); the
//! decisions and the reasons logged for them live here, unit-tested.

use std::fmt;

use crate::rules::Family;
use crate::{IpTablesMode, Ipv6Mode};

/// An iptables backend: the kernel's legacy x_tables or nf_tables. Both speak the same rule
/// language, but rules written through one are invisible to the other, so a pod must use the one
/// the node uses (or its rules silently do nothing next to the node's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }

    /// The restore command for `family`, e.g. `ip6tables-nft-restore`.
    pub fn restore_command(self, family: Family) -> String {
        format!("{}-{}-restore", family.command(), self.name())
    }

    /// The save command for `family`, e.g. `iptables-legacy-save`.
    pub fn save_command(self, family: Family) -> String {
        format!("{}-{}-save", family.command(), self.name())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decision and why it was taken, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice<T> {
    pub value: T,
    pub reason: String,
}

/// Rules (`-A` lines) in `iptables-save` output.
pub fn count_rules(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Picks the backend, as Calico and Linkerd (via the Kubernetes iptables-wrapper) do: in auto mode
/// use the one that already holds rules, the one with more if both do, and nft when neither does
/// (the default of current distributions and of kube-proxy). `legacy` / `nft` are the number of
/// rules each backend's save commands reported, `None` when they could not be run at all.
pub fn choose_backend(
    mode: IpTablesMode,
    legacy: Option<usize>,
    nft: Option<usize>,
) -> Choice<Backend> {
    let (value, reason) = match (mode, legacy, nft) {
        (IpTablesMode::Legacy, ..) => (Backend::Legacy, "set by --iptables-mode=legacy".into()),
        (IpTablesMode::Nft, ..) => (Backend::Nft, "set by --iptables-mode=nft".into()),
        (IpTablesMode::Auto, None, None) => (
            Backend::Nft,
            "neither iptables-legacy-save nor iptables-nft-save could be run; trying nft, the default"
                .into(),
        ),
        (IpTablesMode::Auto, Some(l), None) => (
            Backend::Legacy,
            format!("iptables-nft-save could not be run; legacy holds {l} rules"),
        ),
        (IpTablesMode::Auto, None, Some(n)) => (
            Backend::Nft,
            format!("iptables-legacy-save could not be run; nft holds {n} rules"),
        ),
        (IpTablesMode::Auto, Some(l), Some(n)) if l > n => (
            Backend::Legacy,
            format!("legacy already holds {l} rules and nft {n}: using the backend in use"),
        ),
        (IpTablesMode::Auto, Some(0), Some(0)) => (
            Backend::Nft,
            "no rules in either backend yet: nft, the default".into(),
        ),
        (IpTablesMode::Auto, Some(l), Some(n)) => (
            Backend::Nft,
            format!("nft already holds {n} rules and legacy {l}: using the backend in use"),
        ),
    };
    Choice { value, reason }
}

/// True when `/proc/net/if_inet6` lists an address that is neither link-local nor loopback, i.e.
/// the pod has IPv6 connectivity worth capturing.
pub fn has_routable_ipv6(if_inet6: &str) -> bool {
    // Columns: address, ifindex, prefix length, scope, flags, name. Scope 0x10 is host (::1),
    // 0x20 is link (fe80::/10); global (0x00) and site (0x40) count.
    if_inet6.lines().any(|l| {
        let scope = l.split_whitespace().nth(3).unwrap_or("20");
        !matches!(scope, "10" | "20")
    })
}

/// Which families get rules: `if_inet6` is the content of `/proc/net/if_inet6` (`None` when the
/// kernel has no IPv6), only consulted in auto mode.
pub fn choose_families(mode: Ipv6Mode, if_inet6: Option<&str>) -> Choice<Vec<Family>> {
    let (v6, reason) = match (mode, if_inet6) {
        (Ipv6Mode::On, _) => (true, "IPv4 and IPv6 (--ipv6=on)"),
        (Ipv6Mode::Off, _) => (false, "IPv4 only (--ipv6=off)"),
        (Ipv6Mode::Auto, None) => (false, "IPv4 only: the kernel has no IPv6"),
        (Ipv6Mode::Auto, Some(t)) if has_routable_ipv6(t) => (
            true,
            "IPv4 and IPv6: the pod has a routable IPv6 address (--ipv6=auto)",
        ),
        (Ipv6Mode::Auto, Some(_)) => (
            false,
            "IPv4 only: the pod has no routable IPv6 address (--ipv6=auto)",
        ),
    };
    let value = if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    };
    Choice {
        value,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_mode_wins() {
        assert_eq!(
            choose_backend(IpTablesMode::Legacy, Some(0), Some(100)).value,
            Backend::Legacy
        );
        assert_eq!(
            choose_backend(IpTablesMode::Nft, Some(100), None).value,
            Backend::Nft
        );
    }

    #[test]
    fn auto_follows_the_backend_holding_rules() {
        use IpTablesMode::Auto;
        for (legacy, nft, want) in [
            (Some(0), Some(0), Backend::Nft),
            (None, None, Backend::Nft),
            (Some(12), Some(0), Backend::Legacy),
            (Some(0), Some(12), Backend::Nft),
            (Some(5), Some(5), Backend::Nft),
            (Some(3), None, Backend::Legacy),
            (None, Some(0), Backend::Nft),
        ] {
            let c = choose_backend(Auto, legacy, nft);
            assert_eq!(c.value, want, "{legacy:?} {nft:?}: {}", c.reason);
            assert!(!c.reason.is_empty());
        }
    }

    #[test]
    fn counts_rules_not_comments_or_chains() {
        let save = "# Warning: iptables-legacy tables present\n*nat\n:PREROUTING ACCEPT [0:0]\n\
                    -A PREROUTING -j X\n-A OUTPUT -j Y\nCOMMIT\n*filter\n-A INPUT -j Z\nCOMMIT\n";
        assert_eq!(count_rules(save), 3);
    }

    #[test]
    fn ipv6_auto_needs_a_routable_address() {
        let link_only = "00000000000000000000000000000001 01 80 10 80       lo\n\
                         fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n";
        let global = "fd000000000000000000000000000002 04 40 00 82     eth0\n";
        assert!(!has_routable_ipv6(link_only));
        assert!(has_routable_ipv6(&format!("{link_only}{global}")));
        assert_eq!(
            choose_families(Ipv6Mode::Auto, Some(link_only)).value,
            [Family::V4]
        );
        assert_eq!(
            choose_families(Ipv6Mode::Auto, Some(global)).value,
            [Family::V4, Family::V6]
        );
        assert_eq!(choose_families(Ipv6Mode::Auto, None).value, [Family::V4]);
        assert_eq!(
            choose_families(Ipv6Mode::On, None).value,
            [Family::V4, Family::V6]
        );
        assert_eq!(
            choose_families(Ipv6Mode::Off, Some(global)).value,
            [Family::V4]
        );
    }
}

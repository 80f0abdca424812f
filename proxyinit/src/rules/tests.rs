//! Golden files (`testdata/*.rules`) and the properties of the rule text.
//!
//! `UPDATE_GOLDEN=1 cargo test --release -p proxyinit golden` rewrites the golden files from the
//! code ([`kit::golden`]); review the diff before committing it.

use std::path::PathBuf;

use super::*;
use crate::{CidrList, Config, PortSpec};

fn golden_cases() -> Vec<(&'static str, Config, Family)> {
    let every_exclusion = Config {
        inbound_ports: PortSpec::All,
        exclude_inbound_ports: vec![22, 8081],
        exclude_outbound_ports: vec![3306, 5432],
        exclude_outbound_cidrs: "169.254.169.254/32,10.96.0.0/12,192.168.1.7/16,fd00::/8"
            .parse()
            .unwrap(),
        ..Config::default()
    };
    vec![
        ("defaults", Config::default(), Family::V4),
        (
            "all-ports",
            Config {
                inbound_ports: PortSpec::All,
                exclude_outbound_cidrs: CidrList::default(),
                ..Config::default()
            },
            Family::V4,
        ),
        (
            "explicit-ports",
            Config {
                inbound_ports: PortSpec::List(vec![8080, 9090]),
                ..Config::default()
            },
            Family::V4,
        ),
        (
            "no-inbound-ports",
            Config {
                inbound_ports: PortSpec::List(vec![]),
                ..Config::default()
            },
            Family::V4,
        ),
        ("every-exclusion", every_exclusion.clone(), Family::V4),
        (
            "custom-identity",
            Config {
                proxy_uid: 2102,
                proxy_gid: 2103,
                inbound_capture_port: 4143,
                outbound_capture_port: 4140,
                proxy_admin_port: 4191,
                ..Config::default()
            },
            Family::V4,
        ),
        ("ipv6-defaults", Config::default(), Family::V6),
        ("ipv6-every-exclusion", every_exclusion, Family::V6),
    ]
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(format!("{name}.rules"))
}

#[test]
fn golden_files_match() {
    let mismatches: Vec<String> = golden_cases()
        .into_iter()
        .filter_map(|(name, config, family)| {
            let got = apply_input(&config, family, &NatState::empty());
            kit::golden::compare(&golden_path(name), &got).err()
        })
        .map(|m| m.to_string())
        .collect();
    assert!(
        mismatches.is_empty(),
        "rule text differs from the golden files:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn chains_are_declared_before_use_and_prefixed() {
    let text = apply_input(&Config::default(), Family::V4, &NatState::empty());
    let declared: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(declared, CHAINS);
    for rule in trellis_rules(&text) {
        let chain = rule.split_whitespace().nth(1).unwrap();
        assert!(
            chain.starts_with(CHAIN_PREFIX) || chain == "PREROUTING" || chain == "OUTPUT",
            "{rule}"
        );
    }
    assert!(text.starts_with('#') && text.contains("\n*nat\n") && text.ends_with("COMMIT\n"));
}

#[test]
fn admin_port_is_always_excluded_before_capture() {
    for inbound_ports in [PortSpec::All, PortSpec::List(vec![9901, 8080])] {
        let config = Config {
            inbound_ports,
            ..Config::default()
        };
        let rules = trellis_rules(&apply_input(&config, Family::V4, &NatState::empty()));
        let ret = rules
            .iter()
            .position(|r| r == "-A TRELLIS_INBOUND -p tcp -m tcp --dport 9901 -j RETURN")
            .expect("admin port RETURN");
        let capture = rules
            .iter()
            .position(|r| {
                r.starts_with("-A TRELLIS_INBOUND") && r.ends_with("-j TRELLIS_IN_REDIRECT")
            })
            .unwrap();
        assert!(ret < capture);
    }
}

#[test]
fn proxy_identity_returns_before_anything_is_redirected() {
    let rules = trellis_rules(&apply_input(
        &Config::default(),
        Family::V4,
        &NatState::empty(),
    ));
    let output: Vec<&String> = rules
        .iter()
        .filter(|r| r.starts_with("-A TRELLIS_OUTPUT"))
        .collect();
    assert_eq!(
        output[0],
        "-A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN"
    );
    assert_eq!(
        output[1],
        "-A TRELLIS_OUTPUT -m owner --gid-owner 1337 -j RETURN"
    );
    assert_eq!(
        output.last().unwrap().as_str(),
        "-A TRELLIS_OUTPUT -p tcp -j TRELLIS_REDIRECT"
    );
}

#[test]
fn cidrs_go_to_their_own_family_only() {
    let config = Config {
        exclude_outbound_cidrs: "10.0.0.0/8,fd00::/8".parse().unwrap(),
        ..Config::default()
    };
    let v4 = apply_input(&config, Family::V4, &NatState::empty());
    let v6 = apply_input(&config, Family::V6, &NatState::empty());
    assert!(v4.contains("-d 10.0.0.0/8 -j RETURN") && !v4.contains("fd00::"));
    assert!(v6.contains("-d fd00::/8 -j RETURN") && !v6.contains("10.0.0.0"));
    assert!(v4.contains("-d 127.0.0.0/8 -j RETURN") && v6.contains("-d ::1/128 -j RETURN"));
}

#[test]
fn jumps_are_added_once() {
    let config = Config::default();
    let fresh = apply_input(&config, Family::V4, &NatState::empty());
    assert!(fresh.contains("\n-A PREROUTING -p tcp -j TRELLIS_INBOUND\n"));
    assert!(fresh.contains("\n-A OUTPUT -p tcp -j TRELLIS_OUTPUT\n"));

    // After one apply, the same input minus the jumps: nothing to add, nothing to delete.
    let applied = NatState::parse(&format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{}",
        fresh
            .lines()
            .filter(|l| !l.starts_with('#') && *l != "*nat")
            .collect::<Vec<_>>()
            .join("\n")
    ));
    assert_eq!(applied.chains, CHAINS);
    assert_eq!(applied.jumps.len(), 2);
    let again = apply_input(&config, Family::V4, &applied);
    assert!(
        !again.contains("PREROUTING") && !again.contains("-A OUTPUT ") && !again.contains("-D ")
    );
    assert_eq!(
        trellis_rules(&again),
        trellis_rules(&fresh)
            .into_iter()
            .filter(|r| !r.starts_with("-A PREROUTING") && !r.starts_with("-A OUTPUT "))
            .collect::<Vec<_>>()
    );
}

#[test]
fn stale_and_duplicate_jumps_are_deleted() {
    let current = NatState::parse(
        "*filter\n-A FORWARD -j TRELLIS_NOT_NAT\nCOMMIT\n\
         *nat\n:PREROUTING ACCEPT [0:0]\n:TRELLIS_INBOUND - [0:0]\n:TRELLIS_OLD - [0:0]\n\
         -A PREROUTING -p tcp -j TRELLIS_INBOUND\n-A PREROUTING  -p tcp  -j TRELLIS_INBOUND\n\
         -A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -p tcp -j TRELLIS_OLD\nCOMMIT\n",
    );
    assert_eq!(current.chains, ["TRELLIS_INBOUND", "TRELLIS_OLD"]);
    assert_eq!(
        current.jumps,
        [
            "-A PREROUTING -p tcp -j TRELLIS_INBOUND",
            "-A PREROUTING -p tcp -j TRELLIS_INBOUND",
            "-A OUTPUT -p tcp -j TRELLIS_OLD"
        ]
    );
    let text = apply_input(&Config::default(), Family::V4, &current);
    let tail: Vec<&str> = text
        .lines()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(
        tail,
        [
            "-D PREROUTING -p tcp -j TRELLIS_INBOUND",
            "-D OUTPUT -p tcp -j TRELLIS_OLD",
            "-A OUTPUT -p tcp -j TRELLIS_OUTPUT",
            "COMMIT"
        ]
    );
}

#[test]
fn cleanup_removes_only_trellis() {
    assert_eq!(cleanup_input(Family::V4, &NatState::empty()), None);
    let current = NatState::parse(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-X - [0:0]\n:TRELLIS_INBOUND - [0:0]\n:TRELLIS_OUTPUT - [0:0]\n\
         -A PREROUTING -j KUBE-X\n-A PREROUTING -p tcp -j TRELLIS_INBOUND\n\
         -A TRELLIS_OUTPUT -o lo -j TRELLIS_INBOUND\nCOMMIT\n",
    );
    let text = cleanup_input(Family::V6, &current).unwrap();
    let body: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        body,
        [
            "*nat",
            "-D PREROUTING -p tcp -j TRELLIS_INBOUND",
            ":TRELLIS_INBOUND - [0:0]",
            ":TRELLIS_OUTPUT - [0:0]",
            "-X TRELLIS_INBOUND",
            "-X TRELLIS_OUTPUT",
            "COMMIT"
        ]
    );
    assert!(!text.contains("KUBE"));
}

//! proxyinit in real network namespaces (root; iproute2 and iptables installed): the rules are
//! applied, read back, applied again, cleaned up, and real connections are redirected (or not)
//! exactly as the README says. Each test has its own namespaces, so they can run in parallel.

mod support;

use std::net::SocketAddr;

use kit::netns::Pair;
use kit::root::require_root;
use proxyinit::rules::{self, Family, NatState};
use proxyinit::Config;
use support::{dial, serve, PodExt as _};

/// Trellis's rules grouped by chain (iptables-save lists chain by chain; order within a chain kept).
fn by_chain(text: &str) -> Vec<String> {
    let mut rules = rules::trellis_rules(text);
    rules.sort_by_key(|r| r.split_whitespace().nth(1).unwrap_or_default().to_string());
    rules
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn applies_reads_back_reapplies_and_cleans_up_on_both_backends() {
    require_root();
    for backend in ["nft", "legacy"] {
        let sb = Pair::new(true).unwrap();
        let pod = &sb.pod;
        let before: Vec<String> = ["iptables", "ip6tables"]
            .iter()
            .map(|c| pod.nat(c, backend))
            .collect();
        let mode = format!("--iptables-mode={backend}");
        let args = [
            mode.as_str(),
            "--exclude-inbound-ports=22",
            "--exclude-outbound-ports=5432",
            "--exclude-outbound-cidrs=10.96.0.0/12,fd00:96::/64",
        ];

        let out = pod.proxyinit(&args);
        assert!(out.status.success(), "{backend}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("IPv4 and IPv6: the pod has a routable IPv6 address"),
            "{}",
            stderr(&out)
        );
        let config = Config {
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: "10.96.0.0/12,fd00:96::/64".parse().unwrap(),
            ..Config::default()
        };
        let first: Vec<String> = ["iptables", "ip6tables"]
            .iter()
            .map(|c| pod.nat(c, backend))
            .collect();
        for (family, saved) in [Family::V4, Family::V6].into_iter().zip(&first) {
            let wanted = rules::apply_input(&config, family, &NatState::empty());
            assert_eq!(
                by_chain(saved),
                by_chain(&wanted),
                "{backend} {family:?}: iptables-save must show exactly the rules we computed"
            );
        }

        let out = pod.proxyinit(&args);
        assert!(
            out.status.success(),
            "second run, {backend}: {}",
            stderr(&out)
        );
        let second: Vec<String> = ["iptables", "ip6tables"]
            .iter()
            .map(|c| pod.nat(c, backend))
            .collect();
        assert_eq!(
            first, second,
            "{backend}: applying twice must change nothing"
        );

        let out = pod.proxyinit(&[&mode, "--cleanup"]);
        assert!(out.status.success(), "cleanup, {backend}: {}", stderr(&out));
        let after: Vec<String> = ["iptables", "ip6tables"]
            .iter()
            .map(|c| pod.nat(c, backend))
            .collect();
        assert_eq!(
            before, after,
            "{backend}: cleanup must restore the nat table"
        );

        let out = pod.proxyinit(&[&mode, "--cleanup"]);
        assert!(
            out.status.success(),
            "cleanup of nothing, {backend}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn cleanup_leaves_other_rules_alone() {
    require_root();
    let sb = Pair::new(false).unwrap();
    let pod = &sb.pod;
    pod.run(&["iptables-nft", "-t", "nat", "-N", "CNI-HOSTPORT"])
        .unwrap();
    pod.run(&[
        "iptables-nft",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-j",
        "CNI-HOSTPORT",
    ])
    .unwrap();
    pod.run(&[
        "iptables-nft",
        "-t",
        "nat",
        "-A",
        "CNI-HOSTPORT",
        "-p",
        "tcp",
        "--dport",
        "7",
        "-j",
        "DNAT",
        "--to-destination",
        "10.213.0.9:7",
    ])
    .unwrap();
    let before = pod.nat("iptables", "nft");
    let out = pod.proxyinit(&["--ipv6=off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let applied = pod.nat("iptables", "nft");
    assert!(applied.contains("-A OUTPUT -j CNI-HOSTPORT"), "{applied}");
    // Auto-detection sees nft holding the CNI rules.
    assert!(
        stderr(&out).contains("iptables backend nft: nft already holds"),
        "{}",
        stderr(&out)
    );
    let out = pod.proxyinit(&["--cleanup", "--ipv6=off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pod.nat("iptables", "nft"), before);
}

#[test]
fn auto_mode_follows_the_backend_that_holds_rules() {
    require_root();
    // A fresh pod: no rules anywhere, nft is the default.
    let fresh = Pair::new(false).unwrap();
    let out = fresh.pod.proxyinit(&["--ipv6=off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("iptables backend nft: no rules in either backend"),
        "{}",
        stderr(&out)
    );
    assert!(fresh.pod.nat("iptables", "nft").contains("TRELLIS_OUTPUT"));

    // A pod whose namespace already has legacy rules: Trellis writes there, not to nft.
    let legacy = Pair::new(false).unwrap();
    legacy
        .pod
        .run(&[
            "iptables-legacy",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "1",
            "-j",
            "ACCEPT",
        ])
        .unwrap();
    let out = legacy.pod.proxyinit(&["--ipv6=off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("iptables backend legacy: legacy already holds 1 rules"),
        "{}",
        stderr(&out)
    );
    assert!(legacy
        .pod
        .nat("iptables", "legacy")
        .contains("TRELLIS_OUTPUT"));
    assert!(!legacy.pod.nat("iptables", "nft").contains("TRELLIS"));
}

#[test]
fn dry_run_prints_the_golden_input_and_touches_nothing() {
    require_root();
    let sb = Pair::new(false).unwrap();
    let before = sb.pod.nat("iptables", "nft");
    let out = sb.pod.proxyinit(&["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let golden = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/defaults.rules"
    ))
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), golden);
    assert_eq!(sb.pod.nat("iptables", "nft"), before);

    // With IPv6, both inputs, one after the other.
    let sb6 = Pair::new(true).unwrap();
    let out = sb6.pod.proxyinit(&["--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let golden6 = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/ipv6-defaults.rules"
    ))
    .unwrap();
    assert_eq!(stdout, format!("{golden}{golden6}"));
    assert!(!sb6.pod.nat("ip6tables", "nft").contains("TRELLIS"));
}

#[test]
fn bad_flags_exit_2_before_touching_anything() {
    require_root();
    let sb = Pair::new(false).unwrap();
    let before = sb.pod.nat("iptables", "nft");
    for (arg, named) in [
        ("--inbound-ports=80,http", "http"),
        ("--exclude-outbound-cidrs=10.0.0.0/33", "10.0.0.0/33"),
        ("--proxy-uid=-1", "--proxy-uid"),
        ("--outbound-capture-port=15006", "--outbound-capture-port"),
        ("--proxy-admin-port=15001", "--proxy-admin-port"),
    ] {
        let out = sb.pod.proxyinit(&[arg]);
        assert_eq!(out.status.code(), Some(2), "{arg}: {}", stderr(&out));
        assert!(stderr(&out).contains(named), "{arg}: {}", stderr(&out));
    }
    assert_eq!(sb.pod.nat("iptables", "nft"), before);
}

#[test]
fn a_refused_rule_is_quoted_with_iptables_own_error() {
    require_root();
    let sb = Pair::new(false).unwrap();
    for command in ["iptables-nft-restore", "iptables-legacy-restore"] {
        let bad = "*nat\n:TRELLIS_T - [0:0]\n-A TRELLIS_T -p tcp -j NO_SUCH_CHAIN\nCOMMIT\n";
        let err = sb
            .pod
            .enter(move || proxyinit::apply::restore_with(command, bad))
            .unwrap()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(command) && msg.contains("NO_SUCH_CHAIN"),
            "{msg}"
        );
        assert!(
            msg.contains("Error occurred at line"),
            "iptables' own words: {msg}"
        );
        assert!(
            msg.contains("-A TRELLIS_T -p tcp -j NO_SUCH_CHAIN"),
            "{msg}"
        );
        // Atomic: the chain declared in the refused transaction does not exist.
        assert!(!sb
            .pod
            .nat("iptables", command.split('-').nth(1).unwrap())
            .contains("TRELLIS_T"));
    }
}

#[test]
fn missing_iptables_fails_with_a_readable_error() {
    require_root();
    let sb = Pair::new(false).unwrap();
    let out = sb
        .pod
        .exec(&["env", "PATH=/nonexistent", support::PROXYINIT])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("could not run `iptables-nft-save`") && err.contains("is iptables installed"),
        "{err}"
    );
}

#[test]
fn connections_are_redirected_as_documented() {
    require_root();
    let sb = Pair::new(false).unwrap();
    let (pod, peer) = (&sb.pod, &sb.peer);
    let cidr = format!("--exclude-outbound-cidrs={}/25", sb.peer_ip2());
    let out = pod.proxyinit(&[
        "--exclude-inbound-ports=8081",
        "--exclude-outbound-ports=5432",
        &cidr,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    for (port, label) in [
        (15006, "inbound-capture"),
        (15001, "outbound-capture"),
        (8080, "app"),
        (8081, "app-8081"),
        (9901, "admin"),
    ] {
        serve(pod, port, label);
    }
    serve(peer, 80, "outside");
    serve(peer, 5432, "outside-db");

    let at = |ip: std::net::Ipv4Addr, port: u16| SocketAddr::from((ip, port));
    let (pod_ip, peer_ip, peer_ip2) = (sb.pod_ip(), sb.peer_ip(), sb.peer_ip2());
    let cases = [
        // Inbound from another pod.
        (
            "peer -> app port",
            peer,
            0,
            0,
            at(pod_ip, 8080),
            format!("inbound-capture {pod_ip}:8080"),
        ),
        (
            "peer -> excluded inbound port",
            peer,
            0,
            0,
            at(pod_ip, 8081),
            format!("app-8081 {pod_ip}:8081"),
        ),
        (
            "peer -> admin port",
            peer,
            0,
            0,
            at(pod_ip, 9901),
            format!("admin {pod_ip}:9901"),
        ),
        // Outbound from the app (any uid but the proxy's).
        (
            "app -> outside",
            pod,
            1000,
            1000,
            at(peer_ip, 80),
            format!("outbound-capture {peer_ip}:80"),
        ),
        (
            "root app -> outside",
            pod,
            0,
            0,
            at(peer_ip, 80),
            format!("outbound-capture {peer_ip}:80"),
        ),
        (
            "proxy uid -> outside",
            pod,
            1337,
            1337,
            at(peer_ip, 80),
            format!("outside {peer_ip}:80"),
        ),
        (
            "proxy gid only -> outside",
            pod,
            4242,
            1337,
            at(peer_ip, 80),
            format!("outside {peer_ip}:80"),
        ),
        (
            "app -> excluded port",
            pod,
            1000,
            1000,
            at(peer_ip, 5432),
            format!("outside-db {peer_ip}:5432"),
        ),
        (
            "app -> excluded CIDR",
            pod,
            1000,
            1000,
            at(peer_ip2, 80),
            format!("outside {peer_ip2}:80"),
        ),
        // Loopback and the pod's own IP.
        (
            "app -> localhost",
            pod,
            1000,
            1000,
            at([127, 0, 0, 1].into(), 8080),
            "app 127.0.0.1:8080".into(),
        ),
        (
            "app -> own pod IP",
            pod,
            1000,
            1000,
            at(pod_ip, 8080),
            format!("inbound-capture {pod_ip}:8080"),
        ),
        (
            "app -> own IP, excluded port",
            pod,
            1000,
            1000,
            at(pod_ip, 8081),
            format!("app-8081 {pod_ip}:8081"),
        ),
        (
            "proxy -> own pod IP (to the app)",
            pod,
            1337,
            1337,
            at(pod_ip, 8080),
            format!("app {pod_ip}:8080"),
        ),
    ];
    let mut failures = Vec::new();
    for (what, ns, uid, gid, addr, want) in &cases {
        let got = dial(ns, *uid, *gid, *addr);
        if &got != want {
            failures.push(format!(
                "{what} (uid {uid} gid {gid} -> {addr}): want `{want}`, got `{got}`"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn ipv6_connections_are_redirected_too() {
    require_root();
    let sb = Pair::new(true).unwrap();
    let (pod, peer) = (&sb.pod, &sb.peer);
    // --ipv6=auto: the pod has a routable IPv6 address, so ip6tables rules are written.
    let out = pod.proxyinit(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let any = |port: u16| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    for (port, label) in [
        (15006, "inbound-capture"),
        (15001, "outbound-capture"),
        (8080, "app"),
    ] {
        support::serve_on(pod, any(port), label);
    }
    support::serve_on(peer, any(80), "outside");

    let (pod_ip, peer_ip) = (sb.pod_ip6(), sb.peer_ip6());
    let at = |ip: std::net::Ipv6Addr, port: u16| SocketAddr::from((ip, port));
    let cases = [
        (
            "peer -> app port",
            peer,
            0,
            at(pod_ip, 8080),
            format!("inbound-capture [{pod_ip}]:8080"),
        ),
        (
            "app -> outside",
            pod,
            1000,
            at(peer_ip, 80),
            format!("outbound-capture [{peer_ip}]:80"),
        ),
        (
            "proxy -> outside",
            pod,
            1337,
            at(peer_ip, 80),
            format!("outside [{peer_ip}]:80"),
        ),
        (
            "app -> ::1",
            pod,
            1000,
            at(std::net::Ipv6Addr::LOCALHOST, 8080),
            "app [::1]:8080".into(),
        ),
        (
            "app -> own pod IP",
            pod,
            1000,
            at(pod_ip, 8080),
            format!("inbound-capture [{pod_ip}]:8080"),
        ),
    ];
    let mut failures = Vec::new();
    for (what, ns, uid, addr, want) in &cases {
        let got = dial(ns, *uid, *uid, *addr);
        if &got != want {
            failures.push(format!(
                "{what} (uid {uid} -> {addr}): want `{want}`, got `{got}`"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

use super::*;

fn parse(pairs: &[(&str, &str)]) -> Result<PodSettings, AnnotationError> {
    PodSettings::parse(
        &pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn no_annotations_is_all_defaults() {
    assert_eq!(parse(&[]).unwrap(), PodSettings::default());
    // Other prefixes are not ours to judge.
    assert_eq!(
        parse(&[("sidecar.istio.io/inject", "x"), ("trellis.devx", "y")]).unwrap(),
        PodSettings::default()
    );
}

#[test]
fn every_annotation_parses() {
    let s = parse(&[
        (INJECT, "enabled"),
        ("trellis.dev/max-connections", "10"),
        ("trellis.dev/max-pending-requests", " 10 "),
        ("trellis.dev/max-requests", "100"),
        ("trellis.dev/max-requests-per-connection", "1"),
        ("trellis.dev/outbound-max-connections", "3"),
        ("trellis.dev/outbound-max-pending-requests", "1"),
        ("trellis.dev/outbound-max-requests", "4294967295"),
        ("trellis.dev/outbound-max-requests-per-connection", "1"),
        (INBOUND_PORTS, "8080,9090"),
        (EXCLUDE_INBOUND_PORTS, "22"),
        (EXCLUDE_OUTBOUND_PORTS, "3306,5432"),
        (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8, fd00::/8"),
        (OPAQUE_PORTS, "6379"),
        (PROXY_CPU_REQUEST, "100m"),
        (PROXY_MEMORY_REQUEST, "64Mi"),
        (PROXY_CPU_LIMIT, "1"),
        (PROXY_MEMORY_LIMIT, "1Gi"),
        (LOG_LEVEL, "DEBUG"),
        (ACCESS_LOG, "enabled"),
        (NATIVE_SIDECAR, "enabled"),
        (STATUS, "{}"),
    ])
    .unwrap();
    assert_eq!(s.inject, Some(true));
    assert_eq!(s.pools.inbound.max_connections, Some(10));
    assert_eq!(s.pools.inbound.max_pending_requests, Some(10));
    assert_eq!(s.pools.inbound.max_requests, Some(100));
    assert_eq!(s.pools.inbound.max_requests_per_connection, Some(1));
    assert_eq!(s.pools.outbound.max_connections, Some(3));
    assert_eq!(s.pools.outbound.max_pending_requests, Some(1));
    assert_eq!(s.pools.outbound.max_requests_per_connection, Some(1));
    assert_eq!(s.pools.outbound.max_requests, Some(u32::MAX));
    assert_eq!(s.inbound_ports, Some(PortSpec::List(vec![8080, 9090])));
    assert_eq!(s.exclude_outbound_ports, vec![3306, 5432]);
    assert_eq!(s.exclude_outbound_ip_ranges.as_ref().unwrap().len(), 2);
    assert_eq!(s.log_level.as_deref(), Some("debug"));
    assert!(s.access_log && s.native_sidecar);
    assert_eq!(
        parse(&[(INBOUND_PORTS, "*")]).unwrap().inbound_ports,
        Some(PortSpec::All)
    );
    assert_eq!(
        parse(&[(EXCLUDE_OUTBOUND_IP_RANGES, "")])
            .unwrap()
            .exclude_outbound_ip_ranges,
        Some(vec![])
    );
}

#[test]
fn bad_values_are_refused_naming_annotation_value_and_expectation() {
    let cases = [
        (INJECT, "false", "enabled"),
        ("trellis.dev/max-connections", "ten", "whole number"),
        ("trellis.dev/max-connections", "0", "whole number"),
        ("trellis.dev/max-pending-requests", "-1", "whole number"),
        (
            "trellis.dev/outbound-max-requests",
            "4294967296",
            "whole number",
        ),
        (INBOUND_PORTS, "8080,http", "comma-separated list of ports"),
        (EXCLUDE_INBOUND_PORTS, "*", "comma-separated list of ports"),
        (
            EXCLUDE_OUTBOUND_PORTS,
            "70000",
            "comma-separated list of ports",
        ),
        (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33", "CIDR"),
        (OPAQUE_PORTS, "0", "ports"),
        (PROXY_CPU_REQUEST, "lots", "quantity"),
        (PROXY_MEMORY_LIMIT, "1GB", "quantity"),
        (LOG_LEVEL, "verbose", "one of trace"),
        (ACCESS_LOG, "on", "enabled"),
        (NATIVE_SIDECAR, "yes", "enabled"),
        (
            "trellis.dev/max-conections",
            "10",
            "no such Trellis annotation",
        ),
    ];
    for (name, value, expected) in cases {
        let err = parse(&[(name, value)]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains(&format!("{value:?}")), "{msg}");
        assert!(msg.contains(expected), "{name}={value}: {msg}");
    }
}

#[test]
fn quantities() {
    for ok in [
        "10m", "0.5", "1", "64Mi", "1Gi", "2e3", "1E+2", "+1", ".5", "1.", "100k",
    ] {
        assert_eq!(parse_quantity(ok), Ok(ok.to_string()), "{ok}");
    }
    for bad in ["", "m", "1GB", "-1", "1.2.3", "ten", "1e", "1 Mi", "."] {
        assert!(parse_quantity(bad).is_err(), "{bad}");
    }
}

#[test]
fn typos_get_a_suggestion() {
    assert_eq!(
        closest("trellis.dev/max-conections").as_deref(),
        Some("trellis.dev/max-connections")
    );
    assert_eq!(closest("trellis.dev/something-else"), None);
}

#[test]
fn edit_distance_is_not_computed_on_implausibly_long_keys() {
    let max = max_compared();
    assert!((30..80).contains(&max), "{max}");
    assert_eq!(edit_distance("trellis.dev/injet", INJECT, max), Some(1));
    // Over the cap, or too different in length to be a typo: nothing is computed.
    let long = format!("trellis.dev/max-connection{}", "s".repeat(1 << 20));
    assert_eq!(
        edit_distance(&long, "trellis.dev/max-connections", max),
        None
    );
    assert_eq!(edit_distance(&long[..max + 1], &long[..max - 1], max), None);
    assert_eq!(edit_distance("trellis.dev/x", INBOUND_PORTS, max), None);
    assert_eq!(closest(&long), None);
}

#[test]
fn a_megabyte_key_or_value_is_echoed_cut_short() {
    let mib = 1 << 20;
    let key = format!("trellis.dev/max-connection{}", "s".repeat(mib));
    let msg = parse(&[(&key, "10")]).unwrap_err().to_string();
    assert!(msg.len() < 2048, "{} bytes", msg.len());
    assert!(
        msg.contains(&format!("…({} bytes)", key.len())),
        "{}",
        &msg[..200]
    );
    let value = "9".repeat(mib);
    let msg = parse(&[("trellis.dev/max-connections", &value)])
        .unwrap_err()
        .to_string();
    assert!(msg.len() < 2048, "{} bytes", msg.len());
    assert!(
        msg.contains("\"…(1048576 bytes)") && msg.contains("whole number"),
        "{msg}"
    );
}

#[test]
fn timeouts_parse_and_bad_ones_say_what_is_expected() {
    let s = parse(&[
        (REQUEST_TIMEOUT, "30s"),
        (IDLE_TIMEOUT, "5m"),
        (DRAIN_TIME, "500ms"),
    ])
    .unwrap();
    assert_eq!(s.request_timeout, Some(Duration::from_secs(30)));
    assert_eq!(s.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(s.drain_time, Some(Duration::from_millis(500)));
    for bad in ["0s", "25h", "ten", "-1s", "1.5s"] {
        let e = parse(&[(REQUEST_TIMEOUT, bad)]).unwrap_err();
        assert_eq!(e.name, REQUEST_TIMEOUT);
        assert!(e.to_string().contains("like 500ms, 15s"), "{e}");
    }
}

//! The admin API, `wait-ready`, configuration errors, and draining.

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use kit::http::{get, post, Client};
use support::{free_addr, start_app, ProxyProc};

/// Checks the text exposition format strictly enough to catch what Prometheus rejects: metric
/// and label names, quoting, numeric values, one `# TYPE` per family before its samples, and
/// no family split in two.
fn check_exposition(text: &str) -> usize {
    fn name_ok(n: &str) -> bool {
        let mut cs = n.chars();
        cs.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut declared: HashSet<String> = HashSet::new();
    let mut current: Option<(String, String)> = None;
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (fam, ty) = rest.split_once(' ').expect("TYPE line");
            assert!(name_ok(fam), "bad family name {fam}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{line}"
            );
            assert!(
                declared.insert(fam.to_string()),
                "family {fam} declared twice"
            );
            current = Some((fam.to_string(), ty.to_string()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line}"
        );
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.strip_suffix('}').expect("closing brace"))),
            None => (series, None),
        };
        assert!(name_ok(name), "bad metric name in {line}");
        let (fam, ty) = current.as_ref().expect("sample before any TYPE");
        let base = if ty == "histogram" {
            name.strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .unwrap_or(name)
        } else {
            name
        };
        assert_eq!(base, fam, "sample {line} outside its family");
        if let Some(labels) = labels {
            // name="value" pairs, values escaped.
            let mut rest = labels;
            while !rest.is_empty() {
                let (k, v) = rest.split_once("=\"").expect("label =\"");
                assert!(name_ok(k), "bad label name {k} in {line}");
                let mut end = None;
                let mut esc = false;
                for (i, c) in v.char_indices() {
                    match (esc, c) {
                        (true, _) => esc = false,
                        (false, '\\') => esc = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.expect("closing quote");
                rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
            }
        }
        samples += 1;
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &["--max-connections=4", "--max-pending-requests=2"]).await;
    let mut c = Client::connect(px.listen).await.unwrap();
    assert_eq!(c.get("/").await.unwrap().status, 200);

    let ready = get(px.admin, "/ready").await.unwrap();
    assert_eq!((ready.status, ready.body.as_str()), (200, "LIVE\n"));
    let info = get(px.admin, "/server_info").await.unwrap();
    assert_eq!(info.status, 200);
    let info: serde_json::Value = serde_json::from_str(&info.body).unwrap();
    assert_eq!(info["state"], "LIVE");

    let stats = px.stats().snapshot().await;
    for k in [
        "upstream_cx_active",
        "upstream_cx_total",
        "upstream_cx_http1_total",
        "upstream_cx_overflow",
        "upstream_cx_connect_fail",
        "upstream_rq_total",
        "upstream_rq_active",
        "upstream_rq_pending_active",
        "upstream_rq_pending_overflow",
        "upstream_rq_timeout",
        "upstream_rq_200",
        "upstream_rq_2xx",
        "circuit_breakers.default.cx_open",
        "circuit_breakers.default.rq_pending_open",
        "circuit_breakers.default.rq_open",
        "circuit_breakers.default.remaining_cx",
        "circuit_breakers.default.remaining_pending",
    ] {
        assert!(stats.has(&format!("cluster.{app}.{k}")), "no {k}");
    }
    assert_eq!(stats.get("server.live"), Some("1"));
    assert_eq!(stats.get("http.gateway.downstream_cx_active"), Some("1"));
    assert_eq!(
        stats.get(&format!(
            "cluster.{app}.circuit_breakers.default.remaining_cx"
        )),
        Some("3")
    );

    let prom = get(px.admin, "/stats/prometheus").await.unwrap();
    assert_eq!(prom.status, 200);
    let prom = prom.body;
    assert!(check_exposition(&prom) > 20);
    for want in [
        format!("envoy_cluster_upstream_cx_active{{envoy_cluster_name=\"{app}\"}} 1\n"),
        format!(
            "envoy_cluster_circuit_breakers_default_cx_open{{envoy_cluster_name=\"{app}\"}} 0\n"
        ),
        "envoy_server_live 1\n".to_string(),
        "# TYPE envoy_cluster_upstream_rq_time histogram\n".to_string(),
    ] {
        assert!(prom.contains(&want), "missing {want} in\n{prom}");
    }

    let clusters = get(px.admin, "/clusters").await.unwrap().body;
    for want in [
        format!("{app}::default_priority::max_connections::4\n"),
        format!("{app}::default_priority::max_pending_requests::2\n"),
        format!("{app}::default_priority::max_requests::unlimited\n"),
        format!("{app}::max_requests_per_connection::unlimited\n"),
        format!("{app}::{app}::cx_active::1\n"),
        format!("{app}::{app}::rq_timeout::0\n"),
    ] {
        assert!(clusters.contains(&want), "missing {want} in\n{clusters}");
    }
    let dump = get(px.admin, "/config_dump").await.unwrap().body;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["inbound_limits"]["max_connections"], 4);
    assert_eq!(dump["gateway"]["upstream"], app.to_string());

    assert_eq!(
        post(px.admin, "/logging?level=debug").await.unwrap().status,
        200
    );
    assert_eq!(
        post(px.admin, "/logging?level=loud").await.unwrap().status,
        400
    );
    assert_eq!(get(px.admin, "/nope").await.unwrap().status, 404);
}

#[test]
fn prometheus_checker_rejects_bad_text() {
    for bad in [
        "x 1\n",                                 // no TYPE
        "# TYPE a gauge\na{b=\"c} 1\n",          // unterminated label
        "# TYPE a gauge\na 1\n# TYPE a gauge\n", // family twice
        "# TYPE a gauge\nb 1\n",                 // outside family
        "# TYPE a gauge\na one\n",               // bad value
    ] {
        assert!(
            std::panic::catch_unwind(|| check_exposition(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_drains_in_flight_then_exits_0() {
    let app = start_app().await;
    let mut px = ProxyProc::gateway(app, &["--drain-time=10s"]).await;
    let listen = px.listen;
    let slow = tokio::spawn(async move {
        let mut c = Client::connect(listen).await.unwrap();
        c.get("/?delay_ms=1500").await.unwrap().status
    });
    px.stats()
        .metric(format!("cluster.{app}.upstream_rq_active"))
        .eventually_eq(1)
        .await;
    assert_eq!(post(px.admin, "/quitquitquit").await.unwrap().status, 200);
    // Draining: not ready, not live, no new connections.
    let ready = get(px.admin, "/ready").await.unwrap();
    assert_eq!((ready.status, ready.body.as_str()), (503, "DRAINING\n"));
    px.stats().metric("server.live").now_eq(0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(listen).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting while draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(slow.await.unwrap(), 200, "in-flight request finished");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = px.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0() {
    let app = start_app().await;
    let mut px = ProxyProc::gateway(app, &[]).await;
    nix_kill(px.child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = px.child.try_wait().unwrap() {
            assert!(s.success(), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn nix_kill(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_succeeds_when_ready_and_times_out_otherwise() {
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &[]).await;
    let ok = Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args(["wait-ready", &format!("--admin-listen={}", px.admin)])
        .status()
        .unwrap();
    assert!(ok.success());
    let nobody = free_addr();
    let out = Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args([
            "wait-ready",
            &format!("--admin-listen={nobody}"),
            "--timeout=300ms",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not ready after 300ms"), "{err}");
}

#[test]
fn invalid_configuration_exits_2_naming_flag_and_value() {
    for (args, flag, value) in [
        (vec!["--max-connections=lots"], "--max-connections", "lots"),
        (
            vec!["gateway", "--listen=127.0.0.1:0", "--upstream=nohost"],
            "--upstream",
            "nohost",
        ),
        (vec!["--request-timeout=soon"], "--request-timeout", "soon"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains(value), "{err}");
    }
}

/// Cross-check with the reference parser (Python's `prometheus_client`): `$TRELLIS_TEST_PYTHON`,
/// the repo's `target/venv` (which `make test` sets up), or `python3`. Fails if none has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_output_parses_with_prometheus_client() {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/venv/bin/python");
    let candidates = [
        std::env::var("TRELLIS_TEST_PYTHON").unwrap_or_default(),
        venv.to_string(),
        "python3".to_string(),
    ];
    let Some(py) = candidates.into_iter().filter(|p| !p.is_empty()).find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client.parser"])
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        panic!(
            "no python with prometheus_client: run `make test` (it creates target/venv from \
             scripts/requirements.txt) or `pip install prometheus-client`"
        );
    };
    let app = start_app().await;
    let px = ProxyProc::gateway(app, &["--max-connections=2"]).await;
    let mut c = Client::connect(px.listen).await.unwrap();
    assert_eq!(c.get("/").await.unwrap().status, 200);
    let prom = get(px.admin, "/stats/prometheus").await.unwrap().body;
    let mut child = Command::new(py)
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
             fams = list(p(sys.stdin.read()))\nprint(len(fams), sum(len(f.samples) for f in fams))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), prom.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the output: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = String::from_utf8_lossy(&out.stdout);
    let samples: usize = counts.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(samples > 20, "{counts}");
}

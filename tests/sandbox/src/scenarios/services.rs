//! The scenarios of a mesh that knows Services: per-request balancing across a Service's pods, a
//! `TrafficPolicy` pool, outlier detection, the control plane going away, and a pod scaled away
//! under load. Clients call the Service's ClusterIP, as apps do; kube-proxy's DNAT is real.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;

use super::{access_log_lines, stats, summary, Report};
use crate::load::{self, LoadResult};
use crate::mesh::{Mesh, ADMIN_PORT};

/// The demo pods the Service scenarios start from (they add green's replicas themselves).
pub const SERVICES: &[&str] = &["green", "red", "blue", "client"];

/// Envoy's (and Istio's) cluster name of a demo Service's port 8080.
pub fn service_cluster(name: &str) -> String {
    format!("outbound|8080||{name}.demo.svc.cluster.local")
}

pub(super) fn service_url(mesh: &Mesh, name: &str, query: &str) -> anyhow::Result<String> {
    let svc = mesh
        .services
        .get("demo", name)
        .with_context(|| format!("no Service demo/{name}"))?;
    Ok(format!("http://{}/{query}", svc.addr()))
}

/// Waits until `app`'s stat `name` reads `want`.
fn wait_stat(mesh: &Mesh, app: &str, name: &str, want: i64, secs: u64) -> anyhow::Result<()> {
    let m = mesh.stats_of(app).within(Duration::from_secs(secs));
    kit::block_on(m.metric(name).wait_until(&want.to_string(), |v| v == want))
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `/clusters` of `app`'s sidecar.
fn clusters(mesh: &Mesh, app: &str) -> anyhow::Result<String> {
    let r = crate::get(&mesh.node, mesh.pod(app).addr(ADMIN_PORT), "/clusters")?;
    Ok(r.body)
}

/// The `/clusters` lines of one cluster's hosts with their health flags.
fn host_lines(text: &str, cluster: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{cluster}::")) && l.contains("::health_flags::"))
        .map(str::to_string)
        .collect()
}

/// Waits until `/clusters` of `app` satisfies `ok`; returns the last text.
fn wait_clusters(
    mesh: &Mesh,
    app: &str,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = clusters(mesh, app)?;
        if ok(&text) {
            return Ok(text);
        }
        if Instant::now() >= deadline {
            bail!("{app}'s /clusters never showed {what} within 15s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One request from the client, so that its sidecar asks the control plane about the Service;
/// then waits until it knows `n` hosts.
pub(super) fn learn(mesh: &Mesh, svc: &str, n: usize) -> anyhow::Result<String> {
    let url = service_url(mesh, svc, "")?;
    let r = load::run(mesh.pod("client"), &url, 1, 1)?;
    if r.code(200) != 1 {
        bail!("the first request to {url} failed: {}", summary(&r));
    }
    let c = service_cluster(svc);
    wait_clusters(mesh, "client", &format!("{n} hosts of {c}"), |t| {
        host_lines(t, &c).len() == n
    })
}

/// Requests per pod of `app`, by the `x-pod` header, in the order of the replicas.
fn per_pod(mesh: &Mesh, app: &str, r: &LoadResult) -> Vec<(String, u64)> {
    mesh.replicas(app)
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                r.by_header.get(&p.name).copied().unwrap_or(0),
            )
        })
        .collect()
}

fn show(counts: &[(String, u64)]) -> String {
    counts
        .iter()
        .map(|(p, n)| format!("{p}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// 300 sequential requests to green's Service from the client, spread over 3 pods by its sidecar,
/// whether each opens a new connection or all share one; and the same from blue (no sidecar)
/// through kube-proxy, for comparison.
pub fn load_balancing(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "load balancing",
        "green scaled to 3 pods; 300 sequential requests to its ClusterIP from the meshed client, \
         with a new connection each and over one kept-alive connection -> about 100 per pod",
    );
    mesh.scale("green", 3)?;
    let mesh = &*mesh;
    let url = service_url(mesh, "green", "")?;
    let c = service_cluster("green");
    let text = learn(mesh, "green", 3)?;
    let before = stats(mesh, "client")?;

    let bare = load::run_with(
        mesh.pod("blue"),
        &url,
        1,
        300,
        &["--new-connections", "--count-header=x-pod"],
    )?;
    rep.count(&bare);
    rep.notes.push(format!(
        "blue (no sidecar) through kube-proxy's DNAT: {}",
        show(&per_pod(mesh, "green", &bare))
    ));
    for (how, flags) in [
        (
            "a new connection per request",
            &["--new-connections", "--count-header=x-pod"][..],
        ),
        ("one kept-alive connection", &["--count-header=x-pod"][..]),
    ] {
        let r = load::run_with(mesh.pod("client"), &url, 1, 300, flags)?;
        rep.count(&r);
        let counts = per_pod(mesh, "green", &r);
        rep.notes
            .push(format!("client (sidecar), {how}: {}", show(&counts)));
        rep.check(
            format!("{how}: all 300 answered 200, each of the 3 pods got 100 ± 35"),
            r.code(200) == 300
                && counts.len() == 3
                && counts.iter().all(|(_, n)| (65..=135).contains(n)),
            format!("{} ({})", show(&counts), summary(&r)),
        );
    }
    let after = stats(mesh, "client")?;
    let total = after.num(&format!("cluster.{c}.upstream_rq_total"))
        - before.num(&format!("cluster.{c}.upstream_rq_total"));
    rep.check(
        format!("the client's sidecar counted them under Istio's name, cluster.{c}"),
        total == 600,
        format!("upstream_rq_total grew by {total}"),
    );
    rep.check(
        "its /clusters lists the 3 pods, healthy",
        host_lines(&text, &c)
            .iter()
            .filter(|l| l.ends_with("::healthy"))
            .count()
            == 3,
        text.clone(),
    );
    rep.stat("client", &after, &format!("cluster.{c}.upstream_rq_total"));
    rep.stat("client", &after, &format!("cluster.{c}.membership_total"));
    for l in host_lines(&text, &c) {
        rep.notes.push(format!("client /clusters: {l}"));
    }
    Ok(rep)
}

/// The Istio course's DestinationRule as a `TrafficPolicy` on red's Service: 3 connections,
/// 1 pending request, 1 request per connection.
pub fn traffic_policy_pool(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "TrafficPolicy pool",
        "a TrafficPolicy on Service red (Istio DestinationRule connectionPool: maxConnections 3, \
         http1MaxPendingRequests 1, maxRequestsPerConnection 1); -c 2 -n 20 all 200, \
         -c 20 -n 50 mostly 503 UO",
    );
    let mesh = &*mesh;
    mesh.apply(&json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {"name": "red-pool", "namespace": "demo"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "red"}],
            "connectionPool": {
                "tcp": {"maxConnections": 3},
                "http": {"http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1},
            },
        },
    }))?;
    let c = service_cluster("red");
    learn(mesh, "red", 1)?;
    let text = wait_clusters(mesh, "client", "the policy's limits", |t| {
        t.contains(&format!("{c}::default_priority::max_connections::3"))
            && t.contains(&format!("{c}::default_priority::max_pending_requests::1"))
    })?;
    rep.notes.extend(
        text.lines()
            .filter(|l| l.starts_with(&format!("{c}::default_priority")))
            .map(|l| format!("client /clusters: {l}")),
    );
    let url = service_url(mesh, "red", "?delay_ms=50")?;
    let calm = load::run(mesh.pod("client"), &url, 2, 20)?;
    rep.count(&calm);
    rep.check("-c 2 -n 20: all 200", calm.code(200) == 20, summary(&calm));
    let before = stats(mesh, "client")?;
    let url = service_url(mesh, "red", "?delay_ms=200")?;
    let busy = load::run(mesh.pod("client"), &url, 20, 50)?;
    rep.count(&busy);
    let after = stats(mesh, "client")?;
    rep.check(
        "-c 20 -n 50: most are 503 with x-envoy-overloaded, the rest 200",
        busy.code(503) > 25
            && busy.code(200) > 0
            && busy.overloaded == busy.code(503)
            && busy.code(200) + busy.code(503) == 50,
        summary(&busy),
    );
    let name = format!("cluster.{c}.upstream_rq_pending_overflow");
    let overflow = after.num(&name) - before.num(&name);
    rep.check(
        format!("each 503 counted in {name}"),
        overflow == busy.code(503),
        format!("grew by {overflow}"),
    );
    let uo = access_log_lines(mesh, "client", &["\" 503 UO "]);
    rep.check(
        "the client's access log flags them UO",
        !uo.is_empty(),
        format!("{} such lines", uo.len()),
    );
    if let Some(l) = uo.last() {
        rep.notes.push(format!("client access log: {l}"));
    }
    rep.stat("client", &after, &name);
    mesh.delete_object("TrafficPolicy", "demo", "red-pool")?;
    Ok(rep)
}

/// One of green's pods starts failing; outlier detection ejects it after 3 errors in a row and
/// lets it back after the ejection time.
pub fn outlier_detection(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "outlier detection",
        "a TrafficPolicy on green (outlierDetection: consecutive5xxErrors 3, baseEjectionTime 3s, \
         maxEjectionPercent 50); one pod answers 500 -> ejected after 3, back after 3 s",
    );
    mesh.scale("green", 3)?;
    let mesh = &*mesh;
    let c = service_cluster("green");
    mesh.apply(&json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {"name": "green-outliers", "namespace": "demo"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "green"}],
            "outlierDetection": {
                "consecutive5xxErrors": 3,
                "interval": "1s",
                "baseEjectionTime": "3s",
                "maxEjectionPercent": 50,
            },
        },
    }))?;
    learn(mesh, "green", 3)?;
    wait_clusters(mesh, "client", "outlier detection on", |t| {
        t.contains(&format!("{c}::outlier_detection::consecutive_5xx=3"))
    })?;
    let bad = mesh.replicas("green")[1];
    let (bad_name, bad_ip) = (bad.name.clone(), bad.ip);
    let fail = |on: u8| {
        crate::call(
            &mesh.node,
            None,
            "POST",
            bad.addr(8081),
            &format!("/fail?on={on}"),
            Vec::new(),
        )
    };
    fail(1)?;
    let before = stats(mesh, "client")?;
    let url = service_url(mesh, "green", "")?;
    let r = load::run_with(mesh.pod("client"), &url, 1, 100, &["--count-header=x-pod"])?;
    rep.count(&r);
    let after = stats(mesh, "client")?;
    let ejected = format!("cluster.{c}.outlier_detection.ejections_enforced_total");
    let grew = after.num(&ejected) - before.num(&ejected);
    rep.check(
        format!("{bad_name} answered exactly 3 x 500 before it was ejected; the rest were 200"),
        r.code(500) == 3 && r.code(200) == 97,
        format!("{} ({})", show(&per_pod(mesh, "green", &r)), summary(&r)),
    );
    rep.check(
        format!("counted: {ejected} +1, ejections_active 1"),
        grew == 1 && after.num(&format!("cluster.{c}.outlier_detection.ejections_active")) == 1,
        format!("grew by {grew}"),
    );
    let text = clusters(mesh, "client")?;
    let flagged = host_lines(&text, &c)
        .into_iter()
        .find(|l| l.contains(&format!("::{bad_ip}:")));
    rep.check(
        "its /clusters line says failed_outlier_check",
        flagged
            .as_ref()
            .is_some_and(|l| l.ends_with("/failed_outlier_check")),
        text.clone(),
    );
    if let Some(l) = flagged {
        rep.notes.push(format!("client /clusters: {l}"));
    }
    rep.stat("client", &after, &ejected);
    rep.stat(
        "client",
        &after,
        &format!("cluster.{c}.outlier_detection.ejections_active"),
    );
    fail(0)?;
    wait_stat(
        mesh,
        "client",
        &format!("cluster.{c}.outlier_detection.ejections_active"),
        0,
        10,
    )
    .context("the pod never came back")?;
    let r = load::run_with(mesh.pod("client"), &url, 1, 60, &["--count-header=x-pod"])?;
    rep.count(&r);
    let back = r.by_header.get(&bad_name).copied().unwrap_or(0);
    rep.check(
        format!("healed and its ejection over, {bad_name} takes requests again"),
        r.code(200) == 60 && back > 0,
        show(&per_pod(mesh, "green", &r)),
    );
    mesh.delete_object("TrafficPolicy", "demo", "green-outliers")?;
    Ok(rep)
}

/// The control plane is killed mid-traffic: known Services keep their endpoints, a new
/// destination goes to its original address, and nothing fails; then it comes back.
pub fn control_plane_down(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "control plane down",
        "trellis-control killed while the client calls green's Service -> no request fails, \
         control_plane.connected 0, a new destination goes to its original address; restarted -> 1",
    );
    mesh.scale("green", 3)?;
    learn(mesh, "green", 3)?;
    let url = service_url(mesh, "green", "?delay_ms=5")?;
    let run = load::start_with(mesh.pod("client"), &url, 2, 400, &["--count-header=x-pod"])?;
    std::thread::sleep(Duration::from_millis(300));
    mesh.stop_control();
    let connected = wait_stat(mesh, "client", "control_plane.connected", 0, 10);
    let r = run.finish()?;
    rep.count(&r);
    rep.check(
        "control_plane.connected went to 0",
        connected.is_ok(),
        format!("{connected:?}"),
    );
    rep.check(
        "all 400 requests answered 200, still spread over the 3 pods (the last answer kept)",
        r.code(200) == 400 && per_pod(mesh, "green", &r).iter().all(|(_, n)| *n > 0),
        format!("{} ({})", show(&per_pod(mesh, "green", &r)), summary(&r)),
    );
    let blue_url = service_url(mesh, "blue", "")?;
    let t = Instant::now();
    let b = load::run(mesh.pod("client"), &blue_url, 1, 1)?;
    let took = t.elapsed();
    rep.count(&b);
    let blue_ip = mesh
        .services
        .get("demo", "blue")
        .map(|s| s.addr())
        .context("blue")?;
    let s = stats(mesh, "client")?;
    rep.check(
        "a Service never asked about (blue) goes to its ClusterIP through kube-proxy",
        b.code(200) == 1 && s.has(&format!("cluster.{blue_ip}.upstream_rq_total")),
        format!("{} in {took:?}", summary(&b)),
    );
    rep.stat("client", &s, "control_plane.connected");
    mesh.start_control()?;
    let back = wait_stat(mesh, "client", "control_plane.connected", 1, 15);
    rep.check(
        "restarted: control_plane.connected back to 1",
        back.is_ok(),
        format!("{back:?}"),
    );
    Ok(rep)
}

/// A pod of green's Service is deleted while the client calls it: it leaves the endpoints first,
/// its requests drain, and no request fails.
pub fn scale_down(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "scale down under load",
        "one of green's 3 pods deleted while the client sends 3 x 200 requests of 10 ms to the \
         Service -> the pod leaves the endpoints, then stops; no 5xx",
    );
    mesh.scale("green", 3)?;
    learn(mesh, "green", 3)?;
    let url = service_url(mesh, "green", "?delay_ms=10")?;
    // 3 connections: the client's outbound pool allows 3 (its annotations).
    let run = load::start_with(mesh.pod("client"), &url, 3, 600, &["--count-header=x-pod"])?;
    std::thread::sleep(Duration::from_millis(500));
    let leaving = mesh.replicas("green")[2].name.clone();
    mesh.delete_pod_gracefully(&leaving, Duration::from_secs(2))?;
    let r = run.finish()?;
    rep.count(&r);
    let mut counts: BTreeMap<String, u64> = r.by_header.clone();
    let served_leaving = counts.remove(&leaving).unwrap_or(0);
    rep.check(
        "all 600 answered 200",
        r.code(200) == 600,
        format!("{:?} ({})", r.by_header, summary(&r)),
    );
    rep.check(
        format!("{leaving} served until it left, the other two the rest"),
        served_leaving > 0 && counts.values().all(|n| *n > 0),
        format!("{:?}", r.by_header),
    );
    let c = service_cluster("green");
    let text = wait_clusters(mesh, "client", "2 hosts", |t| host_lines(t, &c).len() == 2)?;
    rep.notes.extend(
        host_lines(&text, &c)
            .into_iter()
            .map(|l| format!("client /clusters: {l}")),
    );
    Ok(rep)
}

//! The scenarios of the Istio traffic-management tasks and the App Mesh walkthroughs, written as
//! Gateway API mesh routes (GAMMA `HTTPRoute`s whose parent is a Service) and `HTTPFault`s:
//! weights, a live switch, header and user-agent matches, aborts, delays, timeouts, retries,
//! mirroring, and an ingress gateway. Green plays `reviews-v1` and blue `reviews-v2`; the client
//! calls green's ClusterIP, as the app calls `reviews`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::services::{learn, service_url};
use super::{access_log_lines, poll_until, stats, summary, Report};
use crate::load::{self, LoadResult};
use crate::mesh::{Mesh, ADMIN_PORT};

/// The demo pods the route scenarios use.
pub const ROUTES: &[&str] = &["green", "red", "blue", "client"];

/// An `HTTPRoute` named `name` whose parent is Service green (port 8080), with `rules`.
fn route(name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "green", "port": 8080}],
            "rules": rules,
        },
    })
}

fn backend(name: &str, weight: u32) -> Value {
    json!({"name": name, "port": 8080, "weight": weight})
}

/// Sends `n` requests from the client to green's Service; the answers by body (the colour).
fn call(mesh: &Mesh, query: &str, c: u32, n: u32, headers: &[&str]) -> anyhow::Result<LoadResult> {
    let url = service_url(mesh, "green", query)?;
    let mut flags: Vec<String> = headers.iter().map(|h| format!("-H={h}")).collect();
    flags.push("--timeout-s=10".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    load::run_with(mesh.pod("client"), &url, c, n, &flags)
}

/// The body of the retry and mirror scenarios' POSTs.
const BODY_BYTES: usize = 4096;

/// `n` POSTs of a `bytes`-byte body (`Content-Length`) from the client to green's Service.
fn post(mesh: &Mesh, c: u32, n: u32, bytes: usize) -> anyhow::Result<LoadResult> {
    let url = service_url(mesh, "green", "")?;
    let body = format!("--body-bytes={bytes}");
    load::run_with(mesh.pod("client"), &url, c, n, &["--timeout-s=10", &body])
}

fn body_count(r: &LoadResult, body: &str) -> u64 {
    r.bodies.get(body).copied().unwrap_or(0)
}

/// Sends batches until `ok` holds for one (the route reached the client's sidecar), up to 15 s.
fn until(
    mesh: &Mesh,
    what: &str,
    query: &str,
    headers: &[&str],
    ok: impl Fn(&LoadResult) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = call(mesh, query, 2, 20, headers)?;
        if ok(&r) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: not seen within 15 s; last batch: {}", summary(&r));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn delete_route(mesh: &Mesh, name: &str) -> anyhow::Result<()> {
    mesh.delete_object("HTTPRoute", "demo", name)
}

/// Istio's "weight-based routing": 90% to v1, 10% to v2.
pub fn weights(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "route weights 90/10",
        "HTTPRoute on green: backendRefs green 90, blue 10; 1000 requests -> blue gets 57..143",
    );
    let mesh = &*mesh;
    // As many hosts as green has pods now (the demo's earlier scenarios scale it).
    learn(mesh, "green", mesh.replicas("green").len())?;
    mesh.apply(&route(
        "reviews-90-10",
        json!([{"backendRefs": [backend("green", 90), backend("blue", 10)]}]),
    ))?;
    until(mesh, "a first answer from blue", "", &[], |r| {
        body_count(r, "blue") > 0
    })?;
    let r = call(mesh, "", 4, 1000, &[])?;
    rep.count(&r);
    let blue = body_count(&r, "blue");
    rep.check(
        "1000 requests, all 200; blue (v2) answered between 57 and 143 (binomial, ±4.5 sd)",
        r.code(200) == 1000 && (57..=143).contains(&blue),
        summary(&r),
    );
    rep.notes
        .push(format!("green {} / blue {blue}", body_count(&r, "green")));
    delete_route(mesh, "reviews-90-10")?;
    Ok(rep)
}

/// All to v1, then 50/50, switched while requests flow.
pub fn live_switch(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "route switched live",
        "HTTPRoute all to green (v1), then 50/50 green/blue applied under load: no request fails",
    );
    let mesh = &*mesh;
    // First all to blue, so that the route is seen to apply; then all to v1.
    mesh.apply(&route(
        "reviews-switch",
        json!([{"backendRefs": [backend("blue", 1)]}]),
    ))?;
    until(mesh, "all to blue", "", &[], |r| {
        body_count(r, "blue") == 20
    })?;
    mesh.apply(&route(
        "reviews-switch",
        json!([{"backendRefs": [backend("green", 1)]}]),
    ))?;
    until(mesh, "all to green (v1)", "", &[], |r| {
        body_count(r, "green") == 20
    })?;
    let url = service_url(mesh, "green", "?delay_ms=2")?;
    let run = load::start(mesh.pod("client"), &url, 4, 2000)?;
    std::thread::sleep(Duration::from_millis(700));
    mesh.apply(&route(
        "reviews-switch",
        json!([{"backendRefs": [backend("green", 50), backend("blue", 50)]}]),
    ))?;
    let r = run.finish()?;
    rep.count(&r);
    rep.check(
        "2000 requests across the switch: every one 200, none lost",
        r.code(200) == 2000 && r.errors == 0,
        summary(&r),
    );
    let after = call(mesh, "", 4, 400, &[])?;
    rep.count(&after);
    let blue = body_count(&after, "blue");
    // Binomial(400, 0.5): sd 10.
    rep.check(
        "after the switch, 400 requests split about 50/50 (blue 150..250)",
        after.code(200) == 400 && (150..=250).contains(&blue),
        summary(&after),
    );
    delete_route(mesh, "reviews-switch")?;
    Ok(rep)
}

/// Istio's "request routing": `end-user: jason` to v2.
pub fn header_match(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "header match",
        "HTTPRoute: headers end-user: jason -> blue (v2); everyone else -> green (v1)",
    );
    let mesh = &*mesh;
    mesh.apply(&route(
        "reviews-jason",
        json!([
            {"matches": [{"headers": [{"name": "end-user", "value": "jason"}]}],
             "backendRefs": [backend("blue", 1)]},
            {"backendRefs": [backend("green", 1)]},
        ]),
    ))?;
    until(
        mesh,
        "jason routed to blue",
        "",
        &["end-user: jason"],
        |r| body_count(r, "blue") == 20,
    )?;
    let jason = call(mesh, "", 2, 100, &["end-user: jason"])?;
    let bob = call(mesh, "", 2, 100, &["end-user: bob"])?;
    let nobody = call(mesh, "", 2, 100, &[])?;
    for r in [&jason, &bob, &nobody] {
        rep.count(r);
    }
    rep.check(
        "end-user: jason -> 100 of 100 to blue",
        body_count(&jason, "blue") == 100,
        summary(&jason),
    );
    rep.check(
        "end-user: bob and no header -> 0 to blue",
        body_count(&bob, "green") == 100 && body_count(&nobody, "green") == 100,
        format!("{} | {}", summary(&bob), summary(&nobody)),
    );
    delete_route(mesh, "reviews-jason")?;
    Ok(rep)
}

/// A user-agent regex match, as the Istio tutorial's Chrome example.
pub fn user_agent(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "user-agent regex",
        "HTTPRoute: header user-agent RegularExpression .*Chrome.* -> blue; other agents -> green",
    );
    let mesh = &*mesh;
    let chrome =
        "user-agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
    let firefox =
        "user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
    mesh.apply(&route(
        "reviews-chrome",
        json!([
            {"matches": [{"headers": [{"type": "RegularExpression", "name": "user-agent", "value": ".*Chrome.*"}]}],
             "backendRefs": [backend("blue", 1)]},
            {"backendRefs": [backend("green", 1)]},
        ]),
    ))?;
    until(mesh, "Chrome routed to blue", "", &[chrome], |r| {
        body_count(r, "blue") == 20
    })?;
    let c = call(mesh, "", 2, 50, &[chrome])?;
    let f = call(mesh, "", 2, 50, &[firefox])?;
    rep.count(&c);
    rep.count(&f);
    rep.check(
        "Chrome -> 50 of 50 to blue; Firefox -> 50 of 50 to green",
        body_count(&c, "blue") == 50 && body_count(&f, "green") == 50,
        format!("{} | {}", summary(&c), summary(&f)),
    );
    delete_route(mesh, "reviews-chrome")?;
    Ok(rep)
}

fn fault(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "kind": "HTTPFault",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": spec,
    })
}

fn with_fault(name: &str) -> Value {
    json!([{
        "filters": [{"type": "ExtensionRef",
                     "extensionRef": {"group": "trellis.dev", "kind": "HTTPFault", "name": name}}],
        "backendRefs": [backend("green", 1)],
    }])
}

/// The sum of `name` over every replica of `app`.
fn sum_over(mesh: &Mesh, app: &str, name: &str) -> anyhow::Result<u64> {
    let mut n = 0;
    for p in mesh.replicas(app) {
        let s = kit::block_on(
            kit::stats::Matcher::new(p.addr(ADMIN_PORT))
                .from_netns(&mesh.node)
                .fetch(),
        )
        .with_context(|| format!("{}: /stats", p.name))?;
        n += s.num(name);
    }
    Ok(n)
}

/// Istio's "fault injection": abort half the requests with 503.
pub fn fault_abort(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "fault abort 50%",
        "HTTPFault abort httpStatus 503 percentage 50 on green's route; 1000 requests -> 429..571 \
         get 503 `fault filter abort` (FI), none of them reaches a pod",
    );
    let mesh = &*mesh;
    mesh.apply(&fault(
        "half-503",
        json!({"abort": {"httpStatus": 503, "percentage": 50}}),
    ))?;
    mesh.apply(&route("reviews-abort", with_fault("half-503")))?;
    until(mesh, "a fault abort", "", &[], |r| r.code(503) > 0)?;
    let inbound = "http.inbound.downstream_rq_total";
    let reached_before = sum_over(mesh, "green", inbound)?;
    let before = stats(mesh, "client")?;
    let r = call(mesh, "", 4, 1000, &[])?;
    let after = stats(mesh, "client")?;
    rep.count(&r);
    let aborted = r.code(503);
    rep.check(
        "503s between 429 and 571 of 1000 (binomial, ±4.5 sd), the rest 200",
        (429..=571).contains(&aborted) && r.code(200) + aborted == 1000,
        summary(&r),
    );
    rep.check(
        "each 503's body is `fault filter abort`",
        body_count(&r, "fault filter abort") == aborted,
        format!("{:?}", r.bodies),
    );
    // The inbound count includes only what passed the fault.
    let deadline = Instant::now() + Duration::from_secs(5);
    let reached = loop {
        let n = sum_over(mesh, "green", inbound)? - reached_before;
        if n >= r.code(200) || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    rep.check(
        "no aborted request reached a pod: green's inbound counted exactly the 200s",
        reached == r.code(200),
        format!("green's {inbound} grew by {reached}"),
    );
    let name = "http.outbound.fault.aborts_injected";
    rep.check(
        format!("{name} counts each abort"),
        after.num(name) - before.num(name) == aborted,
        format!("grew by {}", after.num(name) - before.num(name)),
    );
    rep.stat("client", &after, name);
    let fi = access_log_lines(mesh, "client", &["\" 503 FI "]);
    rep.check(
        "the client's access log flags them FI",
        !fi.is_empty(),
        format!("{} lines", fi.len()),
    );
    if let Some(l) = fi.last() {
        rep.notes.push(format!("client access log: {l}"));
    }
    delete_route(mesh, "reviews-abort")?;
    mesh.delete_object("HTTPFault", "demo", "half-503")?;
    Ok(rep)
}

/// Istio's delay fault: a fixed 2 s delay for every request.
pub fn fault_delay(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "fault delay 2s",
        "HTTPFault delay fixedDelay 2s percentage 100: every answer takes at least 2 s (DI)",
    );
    let mesh = &*mesh;
    mesh.apply(&fault(
        "two-seconds",
        json!({"delay": {"fixedDelay": "2s", "percentage": 100}}),
    ))?;
    mesh.apply(&route("reviews-delay", with_fault("two-seconds")))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = loop {
        // Three at once: the client's outbound pool (3 connections, 1 pending) takes them all.
        // A batch sent while the sidecar still had the previous scenario's abort route is not
        // this route's: wait for one wholly under it.
        let r = call(mesh, "", 3, 6, &[])?;
        if (r.code(200) == 6 && r.p50_ms >= 2000) || Instant::now() >= deadline {
            break r;
        }
    };
    rep.count(&r);
    rep.check(
        "6 requests, all 200, median at least 2 s",
        r.code(200) == 6 && r.p50_ms >= 2000,
        format!("p50 {} ms, max {} ms; {}", r.p50_ms, r.max_ms, summary(&r)),
    );
    let di = access_log_lines(mesh, "client", &["\" 200 DI "]);
    rep.check(
        "the access log flags them DI",
        !di.is_empty(),
        format!("{} lines", di.len()),
    );
    if let Some(l) = di.last() {
        rep.notes.push(format!("client access log: {l}"));
    }
    delete_route(mesh, "reviews-delay")?;
    mesh.delete_object("HTTPFault", "demo", "two-seconds")?;
    Ok(rep)
}

/// Istio's "request timeouts": 1 s against a backend that takes 3 s.
pub fn timeout(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "route timeout 1s",
        "HTTPRoute timeouts.request 1s; green takes 3 s -> 504 UT after about 1 s",
    );
    let mesh = &*mesh;
    mesh.apply(&route(
        "reviews-timeout",
        json!([{"timeouts": {"request": "1s"}, "backendRefs": [backend("green", 1)]}]),
    ))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        let r = call(mesh, "?delay_ms=3000", 3, 3, &[])?;
        if r.code(504) == 3 || Instant::now() >= deadline {
            break r;
        }
    };
    rep.count(&r);
    rep.check(
        "3 requests of 3 s: each 504 after 1 to 2 s",
        r.code(504) == 3 && (1000..2000).contains(&r.p50_ms),
        format!("p50 {} ms; {}", r.p50_ms, summary(&r)),
    );
    let ut = access_log_lines(mesh, "client", &["\" 504 UT "]);
    rep.check(
        "the access log flags them UT",
        !ut.is_empty(),
        format!("{} lines", ut.len()),
    );
    if let Some(l) = ut.last() {
        rep.notes.push(format!("client access log: {l}"));
    }
    delete_route(mesh, "reviews-timeout")?;
    Ok(rep)
}

/// POSTs `/fail?on=<mode>` to every replica of `app`.
fn fail_all(mesh: &Mesh, app: &str, mode: &str) -> anyhow::Result<()> {
    for p in mesh.replicas(app) {
        crate::call(
            &mesh.node,
            None,
            "POST",
            p.addr(8081),
            &format!("/fail?on={mode}"),
            Vec::new(),
        )?;
    }
    Ok(())
}

/// Retries: a flaky backend hidden by them; an always-failing one ends in URX.
pub fn retries(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "retries",
        "HTTPRoute retry codes [500] attempts 2: green failing every other request -> all 200 \
         through retries, POSTs with a 4 KiB body too (each try carries it whole); green always \
         failing -> 500 URX after 3 tries",
    );
    let mesh = &*mesh;
    mesh.apply(&route(
        "reviews-retry",
        json!([{"retry": {"codes": [500], "attempts": 2, "backoff": "10ms"},
                "backendRefs": [backend("green", 1)]}]),
    ))?;
    let c = super::service_cluster("green");
    let retry = format!("cluster.{c}.upstream_rq_retry");
    // The route is in place once a retry is counted.
    fail_all(mesh, "green", "alternate")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = stats(mesh, "client")?.num(&retry);
        call(mesh, "", 1, 10, &[])?;
        if stats(mesh, "client")?.num(&retry) > before {
            break;
        }
        if Instant::now() >= deadline {
            bail!("no retry counted within 15 s");
        }
    }
    let before = stats(mesh, "client")?;
    let r = call(mesh, "", 1, 100, &[])?;
    let after = stats(mesh, "client")?;
    rep.count(&r);
    let retried = after.num(&retry) - before.num(&retry);
    rep.check(
        "green fails every other request: 100 of 100 are 200",
        r.code(200) == 100,
        summary(&r),
    );
    rep.check(
        format!("{retry} counted the retries"),
        retried > 0,
        format!("grew by {retried}"),
    );
    rep.stat("client", &after, &retry);
    let success = format!("cluster.{c}.upstream_rq_retry_success");
    rep.stat("client", &after, &success);

    // POSTs with a body: it is read whole before the first try, and sent again on the retry.
    let (total, tx) = (
        format!("cluster.{c}.upstream_rq_total"),
        format!("cluster.{c}.upstream_cx_tx_bytes_total"),
    );
    let before = stats(mesh, "client")?;
    let r = post(mesh, 1, 50, BODY_BYTES)?;
    let after = stats(mesh, "client")?;
    rep.count(&r);
    let tries = after.num(&total) - before.num(&total);
    let sent = after.num(&tx) - before.num(&tx);
    rep.check(
        format!(
            "50 POSTs of {BODY_BYTES} bytes: all 200, some retried, every try sent the whole body \
             (upstream_cx_tx_bytes_total grew by at least tries x {BODY_BYTES})"
        ),
        r.code(200) == 50 && tries > 50 && sent >= tries * BODY_BYTES as u64,
        format!("{}; {tries} tries, {sent} bytes sent upstream", summary(&r)),
    );

    fail_all(mesh, "green", "1")?;
    let before = stats(mesh, "client")?;
    let r = call(mesh, "", 1, 10, &[])?;
    let after = stats(mesh, "client")?;
    rep.count(&r);
    let exceeded = format!("cluster.{c}.upstream_rq_retry_limit_exceeded");
    let tries = after.num(&format!("cluster.{c}.upstream_rq_total"))
        - before.num(&format!("cluster.{c}.upstream_rq_total"));
    rep.check(
        "green always fails: 10 of 10 are 500, each after 3 tries (30 upstream requests)",
        r.code(500) == 10 && tries == 30,
        format!("{}; upstream_rq_total grew by {tries}", summary(&r)),
    );
    rep.check(
        format!("{exceeded} counts each"),
        after.num(&exceeded) - before.num(&exceeded) == 10,
        format!("grew by {}", after.num(&exceeded) - before.num(&exceeded)),
    );
    rep.stat("client", &after, &exceeded);
    let urx = access_log_lines(mesh, "client", &["\" 500 URX "]);
    rep.check(
        "the access log flags them URX",
        !urx.is_empty(),
        format!("{} lines", urx.len()),
    );
    if let Some(l) = urx.last() {
        rep.notes.push(format!("client access log: {l}"));
    }
    fail_all(mesh, "green", "0")?;
    delete_route(mesh, "reviews-retry")?;
    Ok(rep)
}

/// Istio's "mirroring": every request copied to red, which is slow; the client does not wait.
pub fn mirror(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "mirror",
        "HTTPRoute RequestMirror to red (100%), a TrafficPolicy giving red's pool room; red answers after 500 ms: red sees every request, \
         the client's answers come from green at green's speed; 50 POSTs of 4 KiB: red gets each body whole",
    );
    let mesh = &*mesh;
    let red = mesh.pod("red");
    crate::call(
        &mesh.node,
        None,
        "POST",
        red.addr(8081),
        "/slow?ms=500",
        Vec::new(),
    )?;
    // The copies go through the client's pool for red, which its annotations keep at 3
    // connections and 1 pending (a full pool drops a copy): a policy gives the mirror room.
    mesh.apply(&json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {"name": "red-mirror-room", "namespace": "demo"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "red"}],
            "connectionPool": {"tcp": {"maxConnections": 200}, "http": {"http1MaxPendingRequests": 200}},
        },
    }))?;
    mesh.apply(&route(
        "reviews-mirror",
        json!([{"filters": [{"type": "RequestMirror",
                              "requestMirror": {"backendRef": {"name": "red", "port": 8080}, "percent": 100}}],
                "backendRefs": [backend("green", 1)]}]),
    ))?;
    let inbound = "http.inbound.downstream_rq_total";
    let mirrored = "http.outbound.rq_mirrored";
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = stats(mesh, "client")?.num(mirrored);
        call(mesh, "", 1, 5, &[])?;
        if stats(mesh, "client")?.num(mirrored) > before {
            break;
        }
        if Instant::now() >= deadline {
            bail!("no request mirrored within 15 s");
        }
    }
    std::thread::sleep(Duration::from_millis(700));
    let red_before = stats(mesh, "red")?.num(inbound);
    let r = call(mesh, "", 1, 100, &[])?;
    rep.count(&r);
    rep.check(
        "100 requests, all 200 from green, median under 100 ms (the mirror takes 500 ms)",
        body_count(&r, "green") == 100 && r.p50_ms < 100,
        format!("p50 {} ms, max {} ms; {}", r.p50_ms, r.max_ms, summary(&r)),
    );
    let seen = poll_until(
        10,
        100,
        || Ok(stats(mesh, "red")?.num(inbound) - red_before),
    )?;
    rep.check(
        "red (the mirror) saw every one of them",
        seen == 100,
        format!("red's {inbound} grew by {seen}"),
    );
    rep.stat("client", &stats(mesh, "client")?, mirrored);

    // POSTs with a body: each copy carries it whole (it is read before the first try).
    let dropped = "http.outbound.rq_mirror_dropped";
    let before = stats(mesh, "client")?;
    let r = post(mesh, 1, 50, BODY_BYTES)?;
    rep.count(&r);
    let after = stats(mesh, "client")?;
    let (m, d) = (
        after.num(mirrored) - before.num(mirrored),
        after.num(dropped) - before.num(dropped),
    );
    rep.check(
        format!("50 POSTs of {BODY_BYTES} bytes: all 200 from green, each copied ({mirrored} +50, {dropped} +0)"),
        body_count(&r, "green") == 50 && m == 50 && d == 0,
        format!("{}; mirrored +{m}, dropped +{d}", summary(&r)),
    );
    // Red's sidecar logs each copy it passed with the bytes it received.
    let whole = format!("\" 200 - {BODY_BYTES} ");
    let posts = || access_log_lines(mesh, "red", &["\"POST ", &whole]);
    let logged = poll_until(10, 50, || Ok(posts().len() as u64))?;
    rep.check(
        format!("red's access log shows 50 POSTs, each with its {BODY_BYTES} bytes"),
        logged == 50,
        format!("{logged} lines"),
    );
    if let Some(l) = posts().last() {
        rep.notes.push(format!("red access log: {l}"));
    }
    rep.stat("client", &after, dropped);
    crate::call(
        &mesh.node,
        None,
        "POST",
        red.addr(8081),
        "/slow?ms=0",
        Vec::new(),
    )?;
    mesh.delete_object("TrafficPolicy", "demo", "red-mirror-room")?;
    delete_route(mesh, "reviews-mirror")?;
    Ok(rep)
}

/// App Mesh's VirtualGateway walkthrough: `ingress-gw` on :8088 routes `/paths/red` to red,
/// with pools of 5 connections and 5 pending requests.
pub fn gateway(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "ingress gateway",
        "proxy gateway --gateway demo/ingress-gw (:8088, --outbound-max-connections 5, \
         --outbound-max-pending-requests 5); HTTPRoute /paths/red -> red; 10 clients -> \
         downstream_cx_active 10, upstream_cx_active <= 5, cx_open 1",
    );
    let mesh = &*mesh;
    mesh.apply(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "ingress-gw", "namespace": "demo"},
        "spec": {"gatewayClassName": "trellis",
                 "listeners": [{"name": "http", "port": 8088, "protocol": "HTTP"}]},
    }))?;
    mesh.apply(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "color-routes", "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ingress-gw"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/paths/red"}}],
                       "backendRefs": [{"name": "red", "port": 8080}]}],
        },
    }))?;
    let gw = mesh.start_gateway(
        "demo/ingress-gw",
        8088,
        &[
            "--outbound-max-connections=5",
            "--outbound-max-pending-requests=5",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = crate::get(&mesh.node, gw.listen, "/paths/red");
        if r.as_ref().is_ok_and(|r| r.status == 200) {
            rep.notes.push(format!(
                "GET /paths/red through the gateway: {}",
                r.map(|r| r.body.trim().to_string()).unwrap_or_default()
            ));
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "the gateway never routed /paths/red: {r:?}\n{}",
                gw.proc.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r404 = crate::get(&mesh.node, gw.listen, "/paths/blue")?;
    rep.check(
        "/paths/blue matches no route: 404",
        r404.status == 404,
        format!("{}", r404.status),
    );
    let url = format!("http://{}/paths/red?delay_ms=1000", gw.listen);
    let run = load::start_in(&mesh.node, &url, 10, 30, &[])?;
    let mut samples = Vec::new();
    let mut run = run;
    let m = gw.stats_of(&mesh.node);
    while !run.is_done() {
        samples.push(kit::block_on(m.fetch()).context("the gateway's /stats")?);
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = run.finish()?;
    rep.count(&r);
    let c = super::service_cluster("red");
    let cx_open = format!("cluster.{c}.circuit_breakers.default.cx_open");
    let up = format!("cluster.{c}.upstream_cx_active");
    let down = "http.gateway.downstream_cx_active";
    let best = samples
        .iter()
        .filter(|s| s.num(&cx_open) == 1)
        .max_by_key(|s| s.num(down));
    let max_up = samples.iter().map(|s| s.num(&up)).max().unwrap_or(0);
    match best {
        Some(s) => {
            rep.check(
                "while the 10 clients wait: downstream_cx_active 10 and cx_open 1",
                s.num(down) == 10,
                format!("{} / {}", s.line(down), s.line(&cx_open)),
            );
            rep.stats.push(format!("gateway {}", s.line(down)));
            rep.stats.push(format!("gateway {}", s.line(&up)));
            rep.stats.push(format!("gateway {}", s.line(&cx_open)));
        }
        None => {
            rep.check(
                "cx_open reached 1 during the load",
                false,
                format!("{} samples", samples.len()),
            );
        }
    }
    rep.check(
        "never more than 5 connections to red",
        max_up <= 5,
        format!("peak upstream_cx_active {max_up}"),
    );
    rep.check(
        "the 30 requests are 200 or 503 UO (the 5 + 5 pool), nothing else",
        r.code(200) + r.code(503) == 30 && r.code(503) == r.overloaded,
        summary(&r),
    );
    drop(gw);
    mesh.delete_object("HTTPRoute", "demo", "color-routes")?;
    mesh.delete_object("Gateway", "demo", "ingress-gw")?;
    Ok(rep)
}

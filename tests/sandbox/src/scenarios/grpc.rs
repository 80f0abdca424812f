//! gRPC through the sidecars, with a real gRPC client and server (`grpc-echo`, tonic): unary and
//! streaming calls, metadata and trailers, a deadline, 16 MiB messages, 1,000 calls at once on one
//! connection, and App Mesh's connection-pool walkthrough as gRPC (`max-requests` 10, 30 callers).
//! The caller dials the Service's ClusterIP, as apps do; both sidecars detect HTTP/2 and forward
//! per call (stream).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kit::process::{wait_timeout, Spec};

use super::{access_log_lines, poll_until, Report};
use crate::mesh::{Mesh, Pod, ADMIN_PORT};
use crate::{bins, IMAGE_USER};

/// The demo pods the gRPC scenarios start from.
pub const GRPC: &[&str] = &["echo", "grpc-client"];

/// The inbound cluster of echo's gRPC port, as its sidecar names it.
const INBOUND: &str = "cluster.inbound_9090";

/// What `grpc-echo call` reports (its JSON line).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Calls {
    pub calls: u32,
    /// gRPC code name (`Ok`, `Unavailable`, ...) → calls.
    pub codes: BTreeMap<String, u32>,
    pub overloaded: u32,
    pub by_pod: BTreeMap<String, u32>,
    pub messages: u64,
    pub metadata_echoed: u32,
    pub trailers_seen: u32,
    pub payload_intact: u32,
    pub peak_in_flight: u32,
    pub p50_ms: u64,
    pub max_ms: u64,
    pub failed_max_ms: u64,
    pub first_error: Option<String>,
}

impl Calls {
    pub fn code(&self, name: &str) -> u32 {
        self.codes.get(name).copied().unwrap_or(0)
    }

    fn show(&self) -> String {
        format!(
            "{} calls: {:?}; {} overloaded; {} messages; metadata {}, trailers {}, payload intact \
             {}; app's peak in flight {}; p50 {} ms, max {} ms{}",
            self.calls,
            self.codes,
            self.overloaded,
            self.messages,
            self.metadata_echoed,
            self.trailers_seen,
            self.payload_intact,
            self.peak_in_flight,
            self.p50_ms,
            self.max_ms,
            self.first_error
                .as_deref()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default(),
        )
    }
}

/// `kubectl exec deploy/grpc-client -- grpc-echo call --target=... ARGS`, as the image's user.
pub fn call(pod: &Pod, target: &str, args: &[&str]) -> anyhow::Result<Calls> {
    let mut argv = vec![
        bins::path("grpc-echo")?.display().to_string(),
        "call".into(),
        format!("--target={target}"),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = kit::process::temp_file("grpc-echo")?;
    let mut child = Spec::new(argv.clone(), IMAGE_USER, IMAGE_USER).spawn_to(&pod.ns, &out)?;
    let status = wait_timeout(&mut child, Duration::from_secs(120));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{} did not finish within 120s: {text}", argv.join(" "));
    }
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{} printed no result: {text}", argv.join(" ")))?;
    serde_json::from_str(line).with_context(|| format!("grpc-echo's result {line:?}"))
}

fn echo_target(mesh: &Mesh) -> anyhow::Result<String> {
    let svc = mesh
        .services
        .get("demo", "echo")
        .context("no Service demo/echo")?;
    Ok(format!("http://{}", svc.addr()))
}

/// Waits until `app`'s stat `name` reads `want`.
fn wait_stat(mesh: &Mesh, app: &str, name: &str, want: i64) -> anyhow::Result<()> {
    let m = mesh.stats_of(app).within(Duration::from_secs(10));
    kit::block_on(m.metric(name).wait_until(&want.to_string(), |v| v == want))
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A run of calls: what it shows, `grpc-echo call`'s flags, and its check.
type Run = (&'static str, &'static [&'static str], fn(&Calls) -> bool);

/// Unary, server-streaming and bidi calls with metadata and trailers, 16 MiB messages, and a
/// deadline, from grpc-client to echo's Service.
pub fn grpc_calls(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "gRPC calls",
        "tonic client -> sidecar -> sidecar -> tonic server, to echo's ClusterIP: unary, \
         server-streaming and bidi calls with metadata and trailers, 16 MiB messages, a deadline",
    );
    let mesh = &*mesh;
    let target = echo_target(mesh)?;
    let client = mesh.pod("grpc-client");
    let runs: [Run; 4] = [
        (
            "20 unary calls from 4 callers: all OK, metadata echoed, payload intact",
            &[
                "--rpc=unary",
                "--callers=4",
                "--calls=20",
                "--payload-bytes=1024",
            ],
            |c| c.code("Ok") == 20 && c.metadata_echoed == 20 && c.payload_intact == 20,
        ),
        (
            "5 server-streaming calls of 10 replies: 50 messages, each call's trailers arrive",
            &[
                "--rpc=server-stream",
                "--callers=5",
                "--calls=5",
                "--messages=10",
            ],
            |c| c.code("Ok") == 5 && c.messages == 50 && c.trailers_seen == 5,
        ),
        (
            "5 bidi calls of 10 messages each way: all echoed intact, trailers arrive",
            &[
                "--rpc=bidi",
                "--callers=5",
                "--calls=5",
                "--messages=10",
                "--payload-bytes=4096",
            ],
            |c| c.code("Ok") == 5 && c.payload_intact == 5 && c.trailers_seen == 5,
        ),
        (
            "2 unary calls of 16 MiB each way: OK and intact",
            &[
                "--rpc=unary",
                "--callers=2",
                "--calls=2",
                "--payload-bytes=16777216",
            ],
            |c| c.code("Ok") == 2 && c.payload_intact == 2,
        ),
    ];
    for (what, args, ok) in runs {
        let c = call(client, &target, args)?;
        rep.ok_200 += u64::from(c.code("Ok"));
        rep.other += u64::from(c.calls - c.code("Ok"));
        rep.check(what, ok(&c), c.show());
    }

    // A deadline of 300 ms on a call the app answers after 3 s: the caller gets its deadline
    // error near 300 ms (tonic reports its own expiry as CANCELLED "Timeout expired"; grpc-go as
    // DEADLINE_EXCEEDED), and the abandoned stream is let go on both sidecars.
    let c = call(
        client,
        &target,
        &["--rpc=unary", "--delay-ms=3000", "--deadline-ms=300"],
    )?;
    rep.other += u64::from(c.calls - c.code("Ok"));
    let expired = c.code("Cancelled") + c.code("DeadlineExceeded") == 1;
    rep.check(
        "a 300 ms deadline on a 3 s call ends the call before 1.5 s with a deadline error",
        expired && c.failed_max_ms < 1500,
        c.show(),
    );
    let c_out = "cluster.outbound|9090||echo.demo.svc.cluster.local";
    let released =
        wait_stat(mesh, "echo", &format!("{INBOUND}.upstream_rq_active"), 0).and_then(|()| {
            wait_stat(
                mesh,
                "grpc-client",
                &format!("{c_out}.upstream_rq_active"),
                0,
            )
        });
    rep.check(
        "after it, no stream is left active on either sidecar (upstream_rq_active 0)",
        released.is_ok(),
        released.err().map(|e| e.to_string()).unwrap_or_default(),
    );

    let client_stats = mesh.stats("grpc-client")?;
    let echo_stats = mesh.stats("echo")?;
    let h2 = client_stats.num(&format!("{c_out}.upstream_cx_http2_total"));
    rep.check(
        "the client's sidecar pooled the calls onto few upstream HTTP/2 connections",
        (1..=3).contains(&h2),
        client_stats.line(&format!("{c_out}.upstream_cx_http2_total")),
    );
    let logs = access_log_lines(mesh, "echo", &["HTTP/2"]);
    let h2_lines = logs.iter().filter(|l| l.contains("HTTP/2")).count();
    rep.check(
        "echo's access log reads HTTP/2 for the calls",
        h2_lines >= 30,
        format!(
            "{h2_lines} HTTP/2 lines; last: {}",
            logs.last().cloned().unwrap_or_default()
        ),
    );
    if let Some(l) = logs
        .iter()
        .rev()
        .find(|l| l.contains("/trellis.demo.Echo/"))
    {
        rep.notes.push(format!("echo access log: {l}"));
    }
    rep.stat(
        "grpc-client",
        &client_stats,
        &format!("{c_out}.upstream_cx_http2_total"),
    );
    rep.stat(
        "grpc-client",
        &client_stats,
        &format!("{c_out}.upstream_rq_total"),
    );
    rep.stat("echo", &echo_stats, &format!("{INBOUND}.upstream_rq_total"));
    Ok(rep)
}

/// 1,000 calls at once from one caller on one HTTP/2 connection.
pub fn grpc_many_streams(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "1,000 gRPC streams",
        "1,000 unary calls at once on one client connection (each held 1 s by the app): all OK, \
         all 1,000 in flight in the app together",
    );
    let mesh = &*mesh;
    let target = echo_target(mesh)?;
    let c = call(
        mesh.pod("grpc-client"),
        &target,
        &[
            "--rpc=unary",
            "--callers=1000",
            "--calls=1000",
            "--delay-ms=1000",
        ],
    )?;
    rep.ok_200 += u64::from(c.code("Ok"));
    rep.other += u64::from(c.calls - c.code("Ok"));
    rep.check(
        "all 1,000 OK, and the app had all 1,000 in flight at once",
        c.code("Ok") == 1000 && c.peak_in_flight == 1000,
        c.show(),
    );
    Ok(rep)
}

/// App Mesh's connection-pool walkthrough as gRPC: an echo pod whose sidecar allows 10 calls in
/// flight (`trellis.dev/max-requests: "10"`, 1 waiting), 30 callers.
pub fn grpc_pool(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "gRPC pool",
        "an echo pod annotated max-requests 10 (max-pending-requests 1); 30 concurrent callers, \
         90 calls of 300 ms -> the overflow gets UNAVAILABLE with x-envoy-overloaded, never more \
         than 10 calls reach the app at once",
    );
    let pod = mesh.deploy_with("echo", |pod| {
        let a = &mut pod["metadata"]["annotations"];
        a["trellis.dev/max-requests"] = "10".into();
        a["trellis.dev/max-pending-requests"] = "1".into();
    })?;
    let (name, target) = (pod.name.clone(), format!("http://{}:9090", pod.ip));
    let result = pool_calls(mesh, &name, &target, &mut rep);
    // The pool pod goes, whatever happened: echo's Service is left as the scenario found it.
    let cleanup = mesh.delete_pod(&name);
    result?;
    cleanup?;
    Ok(rep)
}

/// The calls and checks of [`grpc_pool`], with its pool pod `name` at `target`.
fn pool_calls(mesh: &Mesh, name: &str, target: &str, rep: &mut Report) -> anyhow::Result<()> {
    let stats_of = |m: &Mesh| -> anyhow::Result<kit::stats::Stats> {
        let p = m
            .replicas("echo")
            .into_iter()
            .find(|p| p.name == name)
            .context("the pool pod is gone")?;
        kit::block_on(
            kit::stats::Matcher::new(p.addr(ADMIN_PORT))
                .from_netns(&m.node)
                .fetch(),
        )
        .with_context(|| format!("{name}: reading /stats"))
    };
    let before = stats_of(mesh)?;
    let c = call(
        mesh.pod("grpc-client"),
        target,
        &[
            "--rpc=unary",
            "--callers=30",
            "--calls=90",
            "--delay-ms=300",
        ],
    )?;
    let after = stats_of(mesh)?;
    rep.ok_200 += u64::from(c.code("Ok"));
    rep.overflow_503 += u64::from(c.code("Unavailable"));
    rep.other += u64::from(c.calls - c.code("Ok") - c.code("Unavailable"));
    let overflow = after
        .num(&format!("{INBOUND}.upstream_rq_pending_overflow"))
        .saturating_sub(before.num(&format!("{INBOUND}.upstream_rq_pending_overflow")));
    rep.check(
        "some calls OK, the rest UNAVAILABLE, each of those with x-envoy-overloaded: true",
        c.code("Ok") >= 10
            && c.code("Unavailable") > 0
            && c.code("Ok") + c.code("Unavailable") == 90
            && c.overloaded == c.code("Unavailable"),
        c.show(),
    );
    rep.check(
        "the sidecar counted each UNAVAILABLE in upstream_rq_pending_overflow",
        overflow == u64::from(c.code("Unavailable")),
        format!("upstream_rq_pending_overflow grew by {overflow}"),
    );
    rep.check(
        "the app never had more than 10 calls in flight",
        (1..=10).contains(&c.peak_in_flight),
        format!("peak in flight: {}", c.peak_in_flight),
    );
    rep.stat(
        "echo",
        &after,
        &format!("{INBOUND}.upstream_rq_pending_overflow"),
    );
    rep.stat("echo", &after, &format!("{INBOUND}.upstream_rq_total"));
    Ok(())
}

/// A GRPCRoute on echo's Service whose rule for `trellis.demo.Echo/Unary` carries an HTTPFault
/// aborting half the calls with 503: those calls get UNAVAILABLE from the client's sidecar and
/// never reach echo; the other methods (a second rule) pass untouched.
pub fn grpc_route_fault(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "GRPCRoute fault",
        "GRPCRoute on echo: method trellis.demo.Echo/Unary with an HTTPFault abort httpStatus 503 \
         percentage 50, every other method plain; 200 unary calls -> 68..132 UNAVAILABLE (FI), \
         none of them reaches echo; server-streaming calls all OK",
    );
    let mesh = &*mesh;
    let target = echo_target(mesh)?;
    let client = mesh.pod("grpc-client");
    let echo = serde_json::json!({"name": "echo", "port": 9090});
    mesh.apply(&serde_json::json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "kind": "HTTPFault",
        "metadata": {"name": "half-unavailable", "namespace": "demo"},
        "spec": {"abort": {"httpStatus": 503, "percentage": 50}},
    }))?;
    mesh.apply(&serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "echo-unary-fault", "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 9090}],
            "rules": [
                {
                    "matches": [{"method": {"service": "trellis.demo.Echo", "method": "Unary"}}],
                    "filters": [{"type": "ExtensionRef", "extensionRef":
                        {"group": "trellis.dev", "kind": "HTTPFault", "name": "half-unavailable"}}],
                    "backendRefs": [echo],
                },
                {"backendRefs": [echo]},
            ],
        },
    }))?;
    // Until the route reaches the client's sidecar.
    until_route_reaches_client("the GRPCRoute's fault", || {
        let c = call(
            client,
            &target,
            &["--rpc=unary", "--callers=2", "--calls=20"],
        )?;
        Ok((c.code("Unavailable") > 0, c.show()))
    })?;
    let reached = |m: &Mesh| -> anyhow::Result<u64> {
        Ok(m.stats("echo")?
            .num(&format!("{INBOUND}.upstream_rq_total")))
    };
    let before = reached(mesh)?;
    let c = call(
        client,
        &target,
        &["--rpc=unary", "--callers=4", "--calls=200"],
    )?;
    rep.ok_200 += u64::from(c.code("Ok"));
    rep.other += u64::from(c.calls - c.code("Ok"));
    let aborted = c.code("Unavailable");
    // Binomial(200, 0.5): sd 7.1; 68..=132 is ±4.5 sd.
    rep.check(
        "UNAVAILABLE for 68..132 of 200 unary calls (binomial, ±4.5 sd), OK for the rest",
        (68..=132).contains(&aborted) && c.code("Ok") + aborted == 200,
        c.show(),
    );
    let ok = u64::from(c.code("Ok"));
    let passed = {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let n = reached(mesh)? - before;
            if n >= ok || std::time::Instant::now() >= deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    rep.check(
        "echo's sidecar saw only the calls that passed the fault",
        passed == ok,
        format!("echo's inbound upstream_rq_total grew by {passed}; {ok} calls OK"),
    );
    let s = call(
        client,
        &target,
        &[
            "--rpc=server-stream",
            "--callers=5",
            "--calls=5",
            "--messages=10",
        ],
    )?;
    rep.ok_200 += u64::from(s.code("Ok"));
    rep.other += u64::from(s.calls - s.code("Ok"));
    rep.check(
        "server-streaming calls (the second rule) are all OK: 50 messages, trailers",
        s.code("Ok") == 5 && s.messages == 50 && s.trailers_seen == 5,
        s.show(),
    );
    let logs = access_log_lines(mesh, "grpc-client", &["/trellis.demo.Echo/Unary", " FI "]);
    let fi = logs.iter().filter(|l| l.contains(" FI ")).count();
    rep.check(
        "the client's sidecar logged the aborted calls with FI",
        fi >= aborted as usize,
        format!(
            "{fi} FI lines; last: {}",
            logs.last().cloned().unwrap_or_default()
        ),
    );
    if let Some(l) = logs.last() {
        rep.notes.push(format!("grpc-client access log: {l}"));
    }
    mesh.delete_object("GRPCRoute", "demo", "echo-unary-fault")?;
    mesh.delete_object("HTTPFault", "demo", "half-unavailable")?;
    Ok(rep)
}

/// Unary calls in the mirror scenario, after the route is seen.
const MIRRORED_CALLS: u32 = 50;
/// How late the mirror's app answers each call.
const MIRROR_DELAY_MS: u32 = 500;

/// Runs `batch` (calls that show whether a route just applied has reached the client's sidecar:
/// its effect seen, and what the calls got) every 200 ms until it shows so, for 15 s at most.
fn until_route_reaches_client(
    what: &str,
    mut batch: impl FnMut() -> anyhow::Result<(bool, String)>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (seen, got) = batch()?;
        if seen {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("{what} was not seen within 15 s of the GRPCRoute; last batch: {got}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Istio's "mirroring" as gRPC: a GRPCRoute on echo's Service whose rule sends every call to
/// echo and a copy of it (`RequestMirror`) to echo-mirror, a second grpc-echo pod behind its own
/// Service that answers 500 ms late. Each call is answered by echo at echo's speed; the copy goes
/// from the client's sidecar on its own, `-shadow` appended to its `:authority`, and its answer
/// is thrown away. The mirror pod and its Service are made here and deleted at the end.
pub fn grpc_route_mirror(mesh: &mut Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "GRPCRoute mirror",
        "GRPCRoute on echo: RequestMirror to echo-mirror (a second grpc-echo pod behind its own \
         Service, answering 500 ms late); 50 unary calls -> all OK from echo, median under \
         100 ms; echo-mirror gets every copy, :authority <host>-shadow; the client's sidecar \
         counts rq_mirrored 50",
    );
    mesh.create_service(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo-mirror", "namespace": "demo", "labels": {"app": "echo-mirror"}},
        "spec": {
            "selector": {"app": "echo-mirror"},
            "ports": [{"name": "grpc", "port": 9090, "targetPort": "grpc", "protocol": "TCP",
                       "appProtocol": "kubernetes.io/h2c"}],
        },
    }))?;
    let shadow_pod = mesh
        .deploy_as("echo-mirror", "echo", |pod| {
            pod["metadata"]["labels"]["app"] = "echo-mirror".into();
            for c in pod["spec"]["containers"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if c["name"] == "app" {
                    if let Some(argv) = c["command"].as_array_mut() {
                        argv.push(format!("--delay-ms={MIRROR_DELAY_MS}").into());
                    }
                }
            }
        })?
        .name
        .clone();
    let result = mirror_calls(mesh, &mut rep);
    // Everything made here goes, whatever happened above; the route is deleted by the calls
    // (to show it), so only a failure midway leaves it.
    if result.is_err() {
        let _ = mesh.delete_object("GRPCRoute", "demo", "echo-mirror");
    }
    let cleanup = mesh
        .delete_pod(&shadow_pod)
        .and_then(|()| mesh.delete_service("demo", "echo-mirror"));
    result?;
    cleanup?;
    Ok(rep)
}

/// The calls and checks of [`grpc_route_mirror`], with its mirror pod and Service in place.
fn mirror_calls(mesh: &Mesh, rep: &mut Report) -> anyhow::Result<()> {
    let target = echo_target(mesh)?;
    let client = mesh.pod("grpc-client");
    let echo_pod = mesh.pod("echo").name.clone();
    let (mirrored, dropped) = (
        "http.outbound.rq_mirrored",
        "http.outbound.rq_mirror_dropped",
    );
    let at_mirror = format!("{INBOUND}.upstream_rq_total");
    let client_now =
        |name: &str| -> anyhow::Result<u64> { Ok(mesh.stats("grpc-client")?.num(name)) };
    let mirror_now = || -> anyhow::Result<u64> { Ok(mesh.stats("echo-mirror")?.num(&at_mirror)) };
    let start = client_now(mirrored)?;
    let echo = serde_json::json!({"name": "echo", "port": 9090});
    mesh.apply(&serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "echo-mirror", "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 9090}],
            "rules": [{
                "filters": [{"type": "RequestMirror", "requestMirror":
                    {"backendRef": {"name": "echo-mirror", "port": 9090}}}],
                "backendRefs": [echo],
            }],
        },
    }))?;
    // Until the route reaches the client's sidecar: a batch of calls of which one was copied.
    until_route_reaches_client("a mirrored call", || {
        let before = client_now(mirrored)?;
        let c = call(client, &target, &["--rpc=unary", "--calls=5"])?;
        Ok((client_now(mirrored)? > before, c.show()))
    })?;
    // The copies made so far reach the mirror within its delay (else the counts below would
    // mix them in); then the baselines.
    let warmup = client_now(mirrored)? - start;
    poll_until(10, warmup, mirror_now)?;
    let (m0, d0, at0) = (client_now(mirrored)?, client_now(dropped)?, mirror_now()?);

    let n = MIRRORED_CALLS;
    let calls = format!("--calls={n}");
    let c = call(
        client,
        &target,
        &["--rpc=unary", &calls, "--payload-bytes=512"],
    )?;
    rep.ok_200 += u64::from(c.code("Ok"));
    rep.other += u64::from(c.calls - c.code("Ok"));
    let from_echo = c.by_pod.get(&echo_pod).copied().unwrap_or(0);
    let ok = c.code("Ok") == n && from_echo == n && c.payload_intact == n && c.p50_ms < 100;
    rep.check(
        format!(
            "{n} unary calls, all OK from echo ({echo_pod}), payload intact, median under 100 ms \
             (the mirror takes {MIRROR_DELAY_MS} ms)"
        ),
        ok,
        if ok {
            format!("p50 {} ms, max {} ms", c.p50_ms, c.max_ms)
        } else {
            format!("{}; answered by {:?}", c.show(), c.by_pod)
        },
    );
    let (m1, d1) = (client_now(mirrored)?, client_now(dropped)?);
    rep.check(
        format!("the client's sidecar copied each call: {mirrored} grew by {n}, none dropped"),
        m1 - m0 == u64::from(n) && d1 == d0,
        format!("{mirrored} grew by {}, {dropped} by {}", m1 - m0, d1 - d0),
    );
    let seen = poll_until(10, at0 + u64::from(n), mirror_now)? - at0;
    rep.check(
        format!("echo-mirror's sidecar passed every copy to its app: {at_mirror} grew by {n}"),
        seen == u64::from(n),
        format!("grew by {seen}"),
    );

    // The access logs: every call echo-mirror got carries the `-shadow` authority (written once
    // its app answers, 500 ms late), and none of echo's does.
    let host = mesh
        .services
        .get("demo", "echo")
        .context("no Service demo/echo")?
        .cluster_ip;
    let shadow = format!("\"{host}-shadow:9090\"");
    let unary = "/trellis.demo.Echo/Unary";
    let total = at0 + u64::from(n);
    let logged = poll_until(10, total, || {
        Ok(access_log_lines(mesh, "echo-mirror", &[unary]).len() as u64)
    })?;
    let lines = access_log_lines(mesh, "echo-mirror", &[unary]);
    let marked = lines.iter().filter(|l| l.contains(&shadow)).count() as u64;
    let answered = lines.iter().filter(|l| l.contains("\" 200 ")).count() as u64;
    let ok = logged == total && marked == total && answered == total;
    let counts = format!("{logged} lines, {marked} with {shadow}, {answered} answered 200");
    rep.check(
        format!(
            "echo-mirror's access log: each of its {total} calls with :authority {shadow}, \
             answered 200"
        ),
        ok,
        if ok {
            counts
        } else {
            format!(
                "{counts}; last: {}",
                lines.last().cloned().unwrap_or_default()
            )
        },
    );
    let echo_lines = access_log_lines(mesh, "echo", &[unary]);
    let echo_shadow = echo_lines.iter().filter(|l| l.contains("-shadow")).count();
    rep.check(
        "echo's access log has no -shadow call: the primary gets the call as sent",
        !echo_lines.is_empty() && echo_shadow == 0,
        format!("{} lines, {echo_shadow} with -shadow", echo_lines.len()),
    );
    if let Some(l) = lines.last() {
        rep.notes.push(format!("echo-mirror access log: {l}"));
    }
    if let Some(l) = echo_lines.last() {
        rep.notes.push(format!("echo        access log: {l}"));
    }

    let client_stats = mesh.stats("grpc-client")?;
    let to_mirror = "cluster.outbound|9090||echo-mirror.demo.svc.cluster.local";
    rep.stat("grpc-client", &client_stats, mirrored);
    rep.stat("grpc-client", &client_stats, dropped);
    rep.stat(
        "grpc-client",
        &client_stats,
        &format!("{to_mirror}.upstream_rq_total"),
    );
    rep.stat(
        "grpc-client",
        &client_stats,
        &format!("{to_mirror}.upstream_rq_200"),
    );
    rep.stat("echo-mirror", &mesh.stats("echo-mirror")?, &at_mirror);
    rep.stat("echo", &mesh.stats("echo")?, &at_mirror);

    // Deleted, the route copies nothing more: a batch of calls leaves rq_mirrored as it was.
    mesh.delete_object("GRPCRoute", "demo", "echo-mirror")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let unmirrored = loop {
        let before = client_now(mirrored)?;
        let c = call(client, &target, &["--rpc=unary", "--calls=5"])?;
        let grew = client_now(mirrored)? - before;
        if grew == 0 && c.code("Ok") == 5 {
            break Ok(c);
        }
        if std::time::Instant::now() >= deadline {
            break Err(format!("still {grew} of 5 copied 15 s after; {}", c.show()));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    rep.check(
        "the GRPCRoute deleted, calls are OK and no longer copied",
        unmirrored.is_ok(),
        match unmirrored {
            Ok(c) => c.show(),
            Err(e) => e,
        },
    );
    Ok(())
}

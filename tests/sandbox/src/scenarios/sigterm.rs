//! Issue 15's shutdown must-shows: the kubelet deletes a pod and sends SIGTERM to its containers.
//!
//! - An app that calls out 3 s after its SIGTERM (a shell that traps TERM, sleeps 3 s and runs
//!   `loadgen` against green): the call succeeds, because the proxy's outbound listener keeps
//!   serving after SIGTERM; the proxy exits 0 once the app is gone and its drain time is over.
//! - green, whose app keeps serving 4 s after its SIGTERM (a wrapper that forwards TERM late, as a
//!   `preStop` sleep would): a request in flight at SIGTERM finishes, and callers, new and pooled,
//!   are answered with `connection: close`.
//!
//! With `trellis.dev/native-sidecar: enabled` the kubelet signals the app containers first and
//! the proxy (a restartable init container) only once they have exited: the call still succeeds,
//! and the proxy, with nothing left to serve, exits right after its drain time.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use kit::http::Client;
use kit::stats::Matcher;

use super::{summary, Report};
use crate::bins;
use crate::load::LoadResult;
use crate::mesh::{Mesh, Pod, ADMIN_PORT};

/// The proxy's default `--drain-time` (the pods here set none).
const DRAIN_TIME: Duration = Duration::from_secs(5);

fn by_name<'a>(mesh: &'a Mesh, name: &str) -> &'a Pod {
    mesh.pods
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no pod {name}"))
}

fn by_name_mut<'a>(mesh: &'a mut Mesh, name: &str) -> &'a mut Pod {
    mesh.pods
        .iter_mut()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no pod {name}"))
}

fn term(pod: &Pod, container: &str) -> anyhow::Result<()> {
    let p = pod
        .container(container)
        .with_context(|| format!("{}: no container {container}", pod.name))?;
    kill(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM)
        .with_context(|| format!("SIGTERM to {}/{container}", pod.name))
}

/// Waits for `container` of pod `name` to exit; its status and how long it took from `since`.
fn wait_exit(
    mesh: &mut Mesh,
    name: &str,
    container: &str,
    within: Duration,
) -> (Option<std::process::ExitStatus>, Instant) {
    let p = by_name_mut(mesh, name)
        .container_mut(container)
        .expect("container");
    let status = p.wait(within);
    (status, Instant::now())
}

/// `loadgen`'s summary line in a container log.
fn loadgen_result(log: &str) -> Option<LoadResult> {
    let line = log.lines().rev().find(|l| l.starts_with('{'))?;
    serde_json::from_str(line).ok()
}

/// The client app: on SIGTERM it stops idling, waits 3 s, then calls `url` once with `loadgen`
/// (its summary goes to the container log) and exits 0.
fn calls_after_sigterm(pod: &mut Value, loadgen: &str, url: &str, native: bool) {
    let script = format!(
        "trap 'kill $! 2>/dev/null; sleep 3; {loadgen} {url} -n 1 --timeout-s 5; exit 0' TERM; \
         sleep infinity & wait"
    );
    pod["spec"]["containers"][0]["command"] = json!(["sh", "-c", script]);
    if native {
        pod["metadata"]["annotations"]["trellis.dev/native-sidecar"] = json!("enabled");
    }
}

/// green's app behind a wrapper that passes SIGTERM on 4 s late: it keeps serving meanwhile.
fn serves_4s_after_sigterm(pod: &mut Value, color: &str) {
    let app = &mut pod["spec"]["containers"][0];
    let args: Vec<String> = app["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let script = format!(
        "{color} {} & app=$!; trap 'sleep 4; kill $app; wait $app; exit 0' TERM; wait $app",
        args.join(" ")
    );
    app["command"] = json!(["sh", "-c", script]);
    if let Some(o) = app.as_object_mut() {
        o.remove("args");
    }
}

/// What callers of green saw around its SIGTERM.
#[derive(Debug, Default)]
struct Inbound {
    in_flight: Option<(u16, Option<String>)>,
    ready_after: Option<u16>,
    fresh: Option<(u16, Option<String>)>,
    fresh_again_refused: bool,
    pooled_before: Option<(u16, Option<String>)>,
    pooled_after: Option<(u16, Option<String>)>,
    errors: Vec<String>,
}

fn seen(r: &kit::http::Response) -> (u16, Option<String>) {
    (r.status, r.header("connection").map(str::to_string))
}

/// The kubelet deletes green's pod (SIGTERM to every container at once) while callers use it.
fn green_during_drain(mesh: &Mesh, green: &Pod) -> Inbound {
    let node = &mesh.node;
    let addr = green.addr(8080);
    let admin = green.addr(ADMIN_PORT);
    let mut out = Inbound::default();
    kit::block_on(async {
        let mut pooled = match Client::to(addr).netns(node).connect().await {
            Ok(c) => c,
            Err(e) => {
                out.errors.push(format!("pooled connection: {e}"));
                return;
            }
        };
        out.pooled_before = pooled.get("/").await.ok().as_ref().map(seen);
        let slow = async {
            let mut c = Client::to(addr).netns(node).connect().await?;
            c.get("/?delay_ms=2000").await
        };
        let rest = async {
            let waited = Matcher::new(admin)
                .from_netns(node)
                .within(Duration::from_secs(10))
                .metric("cluster.inbound_8080.upstream_rq_active")
                .wait_until("> 0", |v| v > 0)
                .await;
            if waited.is_err() {
                out.errors
                    .push("the slow request never reached green's proxy".into());
            }
            for c in ["proxy", "app"] {
                if let Err(e) = term(green, c) {
                    out.errors.push(format!("{e:#}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Ok(mut c) = Client::to(admin).netns(node).connect().await {
                out.ready_after = c.get("/ready").await.ok().map(|r| r.status);
            }
            match Client::to(addr).netns(node).connect().await {
                Ok(mut c) => {
                    out.fresh = c.get("/").await.ok().as_ref().map(seen);
                    out.fresh_again_refused = c.get("/").await.is_err();
                }
                Err(e) => out.errors.push(format!("a new caller after SIGTERM: {e}")),
            }
            out.pooled_after = pooled.get("/").await.ok().as_ref().map(seen);
        };
        let (slow, ()) = tokio::join!(slow, rest);
        match slow {
            Ok(r) => out.in_flight = Some(seen(&r)),
            Err(e) => out.errors.push(format!("the request in flight: {e}")),
        }
    });
    out
}

/// The scenario: see the module doc. `native` runs the client as a native sidecar pod.
pub fn sigterm_drain(mesh: &mut Mesh, native: bool) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        if native {
            "SIGTERM, native sidecar"
        } else {
            "SIGTERM"
        },
        if native {
            "the kubelet stops an app that calls green 3 s after its SIGTERM, then its native-sidecar proxy: the call succeeds, the proxy exits right after its drain time"
        } else {
            "the kubelet deletes an app that calls green 3 s after its SIGTERM: the call succeeds; then green is deleted with a request in flight: it finishes, and callers are told connection: close"
        },
    );
    let color = bins::path("color")?.display().to_string();
    let loadgen = bins::path("loadgen")?.display().to_string();
    let green = mesh
        .deploy_with("green", |pod| serves_4s_after_sigterm(pod, &color))?
        .name
        .clone();
    let green_ip = by_name(mesh, &green).ip;
    let url = format!("http://{green_ip}:8080/");
    let client = mesh
        .deploy_with("client", |pod| {
            calls_after_sigterm(pod, &loadgen, &url, native)
        })?
        .name
        .clone();
    let app = by_name(mesh, &client)
        .container_names("containers")
        .into_iter()
        .find(|c| c != "proxy")
        .context("the client pod has no app container")?;

    // 1. The calling app's pod is deleted.
    let t0 = Instant::now();
    if native {
        // Native sidecars: the app first; the proxy once the app has exited.
        term(by_name(mesh, &client), &app)?;
    } else {
        // Every container at once, as the kubelet does.
        term(by_name(mesh, &client), "proxy")?;
        term(by_name(mesh, &client), &app)?;
    }
    let (app_status, app_done) = wait_exit(mesh, &client, &app, Duration::from_secs(15));
    let log = by_name(mesh, &client).logs(&app);
    let call = loadgen_result(&log);
    rep.check(
        "the app's call 3 s after its SIGTERM answered 200",
        call.as_ref().is_some_and(|r| r.code(200) == 1),
        match &call {
            Some(r) => summary(r),
            None => format!("no loadgen result in the app's log:\n{log}"),
        },
    );
    if let Some(r) = &call {
        rep.count(r);
    }
    rep.check(
        "the app exited 0 after its call",
        app_status.is_some_and(|s| s.success()) && app_done - t0 >= Duration::from_secs(3),
        format!(
            "{app_status:?} {:.1} s after SIGTERM",
            (app_done - t0).as_secs_f64()
        ),
    );
    let proxy_term = if native {
        term(by_name(mesh, &client), "proxy")?;
        Instant::now()
    } else {
        t0
    };
    let (proxy_status, proxy_done) =
        wait_exit(mesh, &client, "proxy", DRAIN_TIME + Duration::from_secs(5));
    let took = proxy_done - proxy_term;
    rep.check(
        "the client's proxy exited 0 once the app was gone and its drain time (5 s) was over",
        proxy_status.is_some_and(|s| s.success())
            && took >= DRAIN_TIME - Duration::from_millis(100)
            && took < DRAIN_TIME + Duration::from_secs(3),
        format!(
            "{proxy_status:?} {:.1} s after its SIGTERM\n{}",
            took.as_secs_f64(),
            by_name(mesh, &client).logs("proxy")
        ),
    );
    let proxy_log = by_name(mesh, &client).logs("proxy");
    if let Some(l) = proxy_log
        .lines()
        .find(|l| l.contains(&format!("{green_ip}:8080")))
    {
        rep.notes.push(format!("client access log: {l}"));
    }
    if let Some(l) = proxy_log.lines().find(|l| l.contains("SIGTERM")) {
        rep.notes.push(format!("client proxy: {}", l.trim()));
    }
    mesh.delete_pod(&client)?;
    if native {
        mesh.delete_pod(&green)?;
        return Ok(rep);
    }

    // 2. green's pod is deleted while callers use it.
    let seen = green_during_drain(mesh, by_name(mesh, &green));
    rep.check(
        "green answered before its SIGTERM, keep-alive",
        seen.pooled_before == Some((200, None)),
        format!("{:?}", seen.pooled_before),
    );
    rep.check(
        "the request in flight at SIGTERM finished: 200",
        seen.in_flight.as_ref().is_some_and(|(s, _)| *s == 200),
        format!("{:?} {:?}", seen.in_flight, seen.errors),
    );
    rep.check(
        "green's /ready answers 503 after SIGTERM",
        seen.ready_after == Some(503),
        format!("{:?}", seen.ready_after),
    );
    let close = Some((200, Some("close".to_string())));
    rep.check(
        "a new caller after SIGTERM is served and told connection: close (the connection then closes)",
        seen.fresh == close && seen.fresh_again_refused,
        format!("{:?}, next request refused: {}", seen.fresh, seen.fresh_again_refused),
    );
    rep.check(
        "a pooled caller's next request is served and told connection: close",
        seen.pooled_after == close,
        format!("{:?} {:?}", seen.pooled_after, seen.errors),
    );
    let (status, _) = wait_exit(mesh, &green, "proxy", DRAIN_TIME + Duration::from_secs(10));
    rep.check(
        "green's proxy exits 0 after the drain",
        status.is_some_and(|s| s.success()),
        format!("{status:?}\n{}", by_name(mesh, &green).logs("proxy")),
    );
    mesh.delete_pod(&green)?;
    Ok(rep)
}

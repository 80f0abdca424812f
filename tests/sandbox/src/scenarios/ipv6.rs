//! Issue 16, item 5: IPv6 between network namespaces. The sandbox's pod network is dual-stack
//! (10.214.0.0/24 and fd00:214::/64, see [`crate::mesh`]), so every pod has an IPv6 address and
//! `proxyinit` (`--ipv6=auto`) writes ip6tables rules next to its iptables ones. Over IPv6 only:
//!
//! - the webhook (`--listen [::]:8443`, the Deployment's default) answers `/readyz` and an
//!   admission review from the node, i.e. from the API server's namespace;
//! - a meshed pod's proxy admin (`[::]:9901`, the default) answers `/ready` and `/stats` from
//!   another namespace, and still refuses a non-loopback `POST /quitquitquit` (403);
//! - the meshed client's app calls green at `http://[fd00:214::N]:8080/`: 200 "green", through
//!   the client's sidecar (outbound cluster `[fd00:214::N]:8080`, access log) and green's
//!   (inbound cluster `inbound_8080`, access log), both captured by ip6tables rules.

use std::net::SocketAddr;

use serde_json::json;

use super::{access_log_lines, stats, summary, Report};
use crate::admission;
use crate::load;
use crate::manifests;
use crate::mesh::{Mesh, Pod, ADMIN_PORT, WEBHOOK_HOST, WEBHOOK_IP6, WEBHOOK_PORT};

/// The pods the scenario needs: green, its app listening on `[::]:8080` (see [`deploy`]), and
/// the client.
pub const IPV6: &[&str] = &["green", "client"];

/// Deploys [`IPV6`]'s pods: green's app told to listen on `[::]:8080` (one dual-stack socket, as
/// an app in an IPv6 or dual-stack cluster does; the demo manifest's default is `0.0.0.0:8080`),
/// its health port staying on IPv4 for the kubelet's probe.
pub fn deploy(mesh: &mut Mesh) -> anyhow::Result<()> {
    mesh.deploy_with("green", |pod| {
        if let Some(app) = pod["spec"]["containers"]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["name"] == "app"))
        {
            let env = app["env"].as_array_mut();
            let listen = json!({"name": "LISTEN", "value": "[::]:8080"});
            match env {
                Some(env) => env.push(listen),
                None => app["env"] = json!([listen]),
            }
        }
    })?;
    mesh.deploy("client")?;
    Ok(())
}

/// The `TRELLIS_*` chains of `pod`'s IPv6 nat table, read with whichever of the nft and legacy
/// backends holds them (the one `proxyinit` chose).
fn ip6_chains(pod: &Pod) -> String {
    ["ip6tables-nft-save", "ip6tables-legacy-save"]
        .iter()
        .filter_map(|cmd| pod.ns.run(&[cmd, "-t", "nat"]).ok())
        .flat_map(|out| {
            out.lines()
                .filter(|l| l.contains("TRELLIS"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn ipv6(mesh: &Mesh) -> anyhow::Result<Report> {
    let mut rep = Report::new(
        "IPv6",
        "over IPv6 between namespaces: the webhook and a sidecar's admin answer, and client -> \
         http://[green's IPv6]:8080/ passes both sidecars, captured by ip6tables",
    );
    let (client, green) = (mesh.pod("client"), mesh.pod("green"));

    // ip6tables: proxyinit saw the pods' IPv6 addresses and wrote rules for both families.
    for pod in [client, green] {
        let init = pod.logs("proxyinit");
        let chains = ip6_chains(pod);
        rep.check(
            format!(
                "{}'s proxyinit wrote ip6tables rules (--ipv6=auto found {})",
                pod.app, pod.ip6
            ),
            init.contains("IPv4 and IPv6")
                && chains.contains("TRELLIS_INBOUND")
                && chains.contains("TRELLIS_OUTPUT"),
            format!("proxyinit log:\n{init}\nip6tables nat, TRELLIS lines:\n{chains}"),
        );
    }

    // (a) The webhook, from the node (the API server's namespace), over IPv6 only.
    let webhook = SocketAddr::from((WEBHOOK_IP6, WEBHOOK_PORT));
    let tls = Some((WEBHOOK_HOST, mesh.ca.as_slice()));
    let r = crate::call(&mesh.node, tls, "GET", webhook, "/readyz", Vec::new());
    rep.check(
        format!("the webhook answers GET https://{webhook}/readyz from the node: 200"),
        matches!(&r, Ok(r) if r.status == 200),
        format!("{r:?}"),
    );
    let (namespace, pod) = manifests::pod_from(&manifests::deployment("red")?)?;
    let uid = "7e1115a0-0000-4000-8000-0000000ff006";
    let review = admission::review(uid, &namespace, &pod);
    let r = crate::call(
        &mesh.node,
        tls,
        "POST",
        webhook,
        "/mutate",
        serde_json::to_vec(&review)?,
    );
    let admitted = match &r {
        Ok(resp) if resp.status == 200 => admission::apply_response(uid, &pod, &resp.body).ok(),
        _ => None,
    };
    rep.check(
        format!("the webhook reviews red's pod over POST https://{webhook}/mutate: injected"),
        admitted.as_ref().is_some_and(|a| a.allowed && a.injected()),
        format!("{r:?}"),
    );

    // (b) green's sidecar admin, from the node and from the client pod, over IPv6 only.
    let admin = green.addr6(ADMIN_PORT);
    let r = crate::get(&mesh.node, admin, "/ready");
    rep.check(
        format!("green's proxy answers GET http://{admin}/ready from the node: 200 LIVE"),
        matches!(&r, Ok(r) if r.status == 200 && r.body.contains("LIVE")),
        format!("{r:?}"),
    );
    let r = crate::get(&client.ns, admin, "/stats");
    rep.check(
        format!("green's proxy answers GET http://{admin}/stats from the client pod: 200"),
        matches!(&r, Ok(r) if r.status == 200 && r.body.contains("server.live: 1")),
        format!("{:?}", r.as_ref().map(|r| r.status)),
    );
    let r = crate::call(&mesh.node, None, "POST", admin, "/quitquitquit", Vec::new());
    rep.check(
        "green's proxy refuses POST /quitquitquit from the node over IPv6 (not loopback): 403",
        matches!(&r, Ok(r) if r.status == 403),
        format!("{r:?}"),
    );

    // (c) client app -> green's IPv6 address: both sidecars, both captured by ip6tables.
    let target = green.addr6(8080);
    let out_cluster = format!("cluster.{target}");
    let in_cluster = "cluster.inbound_8080";
    let c0 = stats(mesh, "client")?;
    let g0 = stats(mesh, "green")?;
    let r = load::run(client, &format!("http://{target}/"), 1, 1)?;
    rep.count(&r);
    rep.check(
        format!("client -> http://{target}/ answers 200 \"green\""),
        r.code(200) == 1 && r.bodies.contains_key("green"),
        summary(&r),
    );
    let c1 = stats(mesh, "client")?;
    let g1 = stats(mesh, "green")?;
    let grew = |before: &kit::stats::Stats, after: &kit::stats::Stats, name: &str| {
        after.num(name) == before.num(name) + 1
    };
    let out_total = format!("{out_cluster}.upstream_rq_total");
    rep.check(
        format!("the client's sidecar forwarded it: {out_total} grew by 1"),
        grew(&c0, &c1, &out_total),
        c1.line(&out_total),
    );
    let in_total = format!("{in_cluster}.upstream_rq_total");
    rep.check(
        format!("green's sidecar forwarded it: {in_total} grew by 1"),
        grew(&g0, &g1, &in_total),
        format!("before {}, {}", g0.num(&in_total), g1.line(&in_total)),
    );
    rep.stat("client", &c1, "http.outbound.downstream_rq_total");
    rep.stat("client", &c1, &out_total);
    rep.stat("green", &g1, "http.inbound.downstream_rq_total");
    rep.stat("green", &g1, &in_total);

    let upstream = format!("\"{target}\"");
    let c_log = access_log_lines(mesh, "client", &["\"GET / HTTP/1.1\" 200 - ", &upstream]);
    rep.check(
        format!("the client's sidecar logged it: \"GET / HTTP/1.1\" 200 - ... {upstream}"),
        !c_log.is_empty(),
        client.logs("proxy"),
    );
    let g_log = access_log_lines(mesh, "green", &["\"GET / HTTP/1.1\" 200 - ", &upstream]);
    rep.check(
        format!("green's sidecar logged it: \"GET / HTTP/1.1\" 200 - ... {upstream}"),
        !g_log.is_empty(),
        green.logs("proxy"),
    );
    for l in c_log.iter().take(1) {
        rep.notes.push(format!("client access log: {l}"));
    }
    for l in g_log.iter().take(1) {
        rep.notes.push(format!("green  access log: {l}"));
    }
    Ok(rep)
}

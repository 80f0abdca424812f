//! The kubelet's part: run an admitted pod in its network namespace, in the kubelet's order.
//!
//! 1. init containers one by one, each to a zero exit (`proxyinit`, as root); a native sidecar
//!    (`restartPolicy: Always`) is started and waited for with its startup probe instead;
//! 2. containers in order, each one's `postStart` exec hook finishing before the next starts
//!    (that is how the injected `proxy wait-ready` holds the app back until the proxy listens);
//! 3. readiness probes (`httpGet`), sent from the node like the kubelet's.
//!
//! Container environment: `value`s and the `fieldRef`s the kubelet fills in (`metadata.name`,
//! `metadata.namespace`, `status.podIP`, ...). User: the container's `runAsUser`/`runAsGroup`,
//! else the pod's, else the image's ([`IMAGE_USER`](crate::IMAGE_USER)).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use kit::netns::Netns;
use kit::process::{Proc, Spec};

use crate::{bins, IMAGE_USER};

/// What the kubelet knows about the pod besides its spec.
pub struct PodInfo<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub ip: Ipv4Addr,
    pub node_ip: Ipv4Addr,
}

/// The argv a container runs (`command` + `args`, no image entrypoint here).
pub fn argv(c: &Value) -> anyhow::Result<Vec<String>> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut argv = strings(&c["command"]);
    if argv.is_empty() {
        bail!(
            "container {} has no command: the sandbox runs only explicit commands",
            c["name"]
        );
    }
    argv.extend(strings(&c["args"]));
    argv[0] = bins::resolve(&argv[0])?;
    Ok(argv)
}

pub fn env(c: &Value, pod: &PodInfo) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = vec![("HOSTNAME".to_string(), pod.name.to_string())];
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"]
            .as_str()
            .context("env without a name")?
            .to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => pod.name.to_string(),
                "metadata.namespace" => pod.namespace.to_string(),
                "status.podIP" | "status.podIPs" => pod.ip.to_string(),
                "status.hostIP" | "status.hostIPs" => pod.node_ip.to_string(),
                "spec.nodeName" => "sandbox-node".to_string(),
                "spec.serviceAccountName" => "default".to_string(),
                other => bail!("env {name}: fieldRef {other} is not filled in by the sandbox"),
            }
        } else if e["valueFrom"].is_null() {
            String::new()
        } else {
            bail!("env {name}: only value and fieldRef are supported by the sandbox")
        };
        out.push((name, value));
    }
    Ok(out)
}

/// (uid, gid) the container runs as.
pub fn user(c: &Value, pod_spec: &Value) -> (u32, u32) {
    let pick = |key: &str| {
        c["securityContext"][key]
            .as_u64()
            .or_else(|| pod_spec["securityContext"][key].as_u64())
            .map(|v| v as u32)
    };
    (
        pick("runAsUser").unwrap_or(IMAGE_USER),
        pick("runAsGroup").unwrap_or(IMAGE_USER),
    )
}

fn container_spec(c: &Value, spec: &Value, pod: &PodInfo) -> anyhow::Result<Spec> {
    let (uid, gid) = user(c, spec);
    let mut s = Spec::new(argv(c)?, uid, gid);
    s.env = env(c, pod)?;
    Ok(s)
}

/// Starts every container of `pod_obj` in `ns`; logs go to `logs/<container>.log`.
pub fn run_pod(
    pod_obj: &Value,
    info: &PodInfo,
    ns: &Netns,
    node: &Netns,
    logs: &Path,
) -> anyhow::Result<Vec<Proc>> {
    std::fs::create_dir_all(logs)?;
    let spec = &pod_obj["spec"];
    let mut procs = Vec::new();
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("init");
        let s = container_spec(c, spec, info)?;
        let log = logs.join(format!("{name}.log"));
        if c["restartPolicy"] == "Always" {
            procs.push(Proc::spawn(name, &s, ns, log)?);
            if let Some(probe) = c.get("startupProbe").or(c.get("readinessProbe")) {
                wait_probe(probe, c, info, node, Duration::from_secs(60))
                    .with_context(|| format!("native sidecar {name}: startup probe"))?;
            }
            continue;
        }
        let (status, out) = s.run(ns, Duration::from_secs(60))?;
        std::fs::write(&log, &out)?;
        if !status.success() {
            bail!(
                "init container {name} (`{}`) failed ({status}): {out}",
                s.argv.join(" ")
            );
        }
    }
    for c in spec["containers"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("app");
        let s = container_spec(c, spec, info)?;
        let log = logs.join(format!("{name}.log"));
        procs.push(Proc::spawn(name, &s, ns, log)?);
        if let Some(cmd) = c["lifecycle"]["postStart"]["exec"]["command"].as_array() {
            let mut hook = s.clone();
            hook.argv = cmd
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            hook.argv[0] = bins::resolve(&hook.argv[0])?;
            let (status, out) = hook.run(ns, Duration::from_secs(70))?;
            if !status.success() {
                bail!(
                    "container {name}: postStart hook `{}` failed ({status}): {out}\n{name}'s log: {}",
                    hook.argv.join(" "),
                    std::fs::read_to_string(&procs.last().unwrap().log).unwrap_or_default()
                );
            }
        }
    }
    let all: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten())
        .collect();
    for c in all {
        if let Some(probe) = c.get("readinessProbe") {
            wait_probe(probe, c, info, node, Duration::from_secs(30)).with_context(|| {
                format!(
                    "container {}: readiness probe",
                    c["name"].as_str().unwrap_or("")
                )
            })?;
        }
    }
    for p in procs.iter_mut() {
        if let Some(status) = p.try_status() {
            bail!("container {} exited ({status}): {}", p.name, p.logs());
        }
    }
    Ok(procs)
}

/// Polls an `httpGet` probe from the node until it answers 2xx/3xx.
fn wait_probe(
    probe: &Value,
    c: &Value,
    info: &PodInfo,
    node: &Netns,
    timeout: Duration,
) -> anyhow::Result<()> {
    let get = &probe["httpGet"];
    if get.is_null() {
        return Ok(()); // only httpGet probes are played
    }
    let port = match &get["port"] {
        Value::Number(n) => n.as_u64().context("bad probe port")? as u16,
        Value::String(name) => c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64())
            .with_context(|| format!("probe port {name:?} is not a named port"))?
            as u16,
        other => bail!("bad probe port {other}"),
    };
    let path = get["path"].as_str().unwrap_or("/");
    let addr = SocketAddr::from((info.ip, port));
    let deadline = Instant::now() + timeout;
    loop {
        let last = match crate::get(node, addr, path) {
            Ok(r) if (200..400).contains(&r.status) => return Ok(()),
            Ok(r) => format!("{} {}", r.status, r.body.trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("GET http://{addr}{path} not ready after {timeout:?}: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

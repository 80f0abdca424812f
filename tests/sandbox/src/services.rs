//! Services in the sandbox: what the API server, the EndpointSlice controller and kube-proxy do
//! for them in a real cluster.
//!
//! - ClusterIPs are allocated from 10.96.0.0/16, as the API server would;
//! - each Service and its EndpointSlice (the ready pods its selector matches, target ports
//!   resolved by name) are written to the API server double ([`kit::apiserver`]), where the
//!   control plane's watchers see them, exactly as on a cluster;
//! - kube-proxy's iptables mode is real iptables in the node namespace: a DNAT per endpoint with
//!   `statistic --mode random`, and masquerade for the DNAT'd traffic (the pods share one bridge,
//!   so without it a reply would bypass the node's conntrack). A pod without a sidecar, or a
//!   sidecar forwarding to a ClusterIP, goes through these rules exactly as on a node.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use kit::apiserver::ApiServer;
use kit::netns::Netns;

/// The sandbox's kube-proxy chain in the node's nat table.
const CHAIN: &str = "TRELLIS-SANDBOX-SERVICES";

/// One Service as the API server holds it.
#[derive(Debug, Clone)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    /// The Service object, with its `spec.clusterIP` filled in.
    pub object: Value,
}

impl Service {
    /// The first port's `ClusterIP:port`.
    pub fn addr(&self) -> std::net::SocketAddr {
        let port = self.object["spec"]["ports"][0]["port"]
            .as_u64()
            .unwrap_or(80) as u16;
        (self.cluster_ip, port).into()
    }
}

/// A pod as the EndpointSlice controller sees it.
pub struct PodRef<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub ip: Ipv4Addr,
    /// The admitted pod object (labels, container ports).
    pub object: &'a Value,
}

pub struct Services {
    by_key: BTreeMap<(String, String), Service>,
    next: u16,
    /// The rules file handed to `iptables-restore`.
    rules: PathBuf,
}

impl Services {
    /// `work`: a private directory for the rules file.
    pub fn new(work: &Path) -> Services {
        Services {
            by_key: BTreeMap::new(),
            next: 0,
            rules: work.join("kube-proxy.rules"),
        }
    }

    /// Creates a Service (`kubectl apply`): a ClusterIP is allocated unless the object has one.
    pub fn create(&mut self, mut object: Value) -> anyhow::Result<&Service> {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .context("a Service without metadata.name")?
            .to_string();
        let key = (namespace.clone(), name.clone());
        let cluster_ip = match object["spec"]["clusterIP"].as_str() {
            Some(ip) => ip
                .parse()
                .with_context(|| format!("Service {namespace}/{name}: spec.clusterIP {ip:?}"))?,
            None => match self.by_key.get(&key) {
                Some(s) => s.cluster_ip,
                None => {
                    self.next += 1;
                    if self.next > 250 {
                        bail!("the sandbox allocates at most 250 ClusterIPs");
                    }
                    Ipv4Addr::new(10, 96, 0, 9 + self.next as u8)
                }
            },
        };
        object["metadata"]["namespace"] = json!(namespace);
        object["spec"]["clusterIP"] = json!(cluster_ip.to_string());
        object["spec"]["clusterIPs"] = json!([cluster_ip.to_string()]);
        self.by_key.insert(
            key.clone(),
            Service {
                namespace,
                name,
                cluster_ip,
                object,
            },
        );
        Ok(&self.by_key[&key])
    }

    /// Deletes a Service (`kubectl delete service`): it and its EndpointSlice leave the API
    /// server; the next [`sync`](Self::sync) leaves out its DNAT rules.
    pub fn delete(&mut self, namespace: &str, name: &str, api: &ApiServer) -> anyhow::Result<()> {
        let key = (namespace.to_string(), name.to_string());
        if self.by_key.remove(&key).is_none() {
            bail!("no Service {namespace}/{name} to delete");
        }
        let slice = slice_name(name);
        api.delete(&kit::apiserver::ENDPOINTSLICES.gvr, namespace, &slice)
            .map_err(|e| anyhow::anyhow!("deleting EndpointSlice {namespace}/{slice}: {e:?}"))?;
        api.delete(&kit::apiserver::SERVICES.gvr, namespace, name)
            .map_err(|e| anyhow::anyhow!("deleting Service {namespace}/{name}: {e:?}"))?;
        Ok(())
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.by_key.get(&(namespace.to_string(), name.to_string()))
    }

    /// The EndpointSlice controller and kube-proxy, run once over the current pods: writes every
    /// Service and its slice to the API server (unchanged objects make no event) and replaces the
    /// node's DNAT rules.
    pub fn sync(&self, pods: &[PodRef], api: &ApiServer, node: &Netns) -> anyhow::Result<()> {
        let mut rules = String::new();
        for svc in self.by_key.values() {
            let members: Vec<&PodRef> = pods.iter().filter(|p| selects(svc, p)).collect();
            let slice = endpoint_slice(svc, &members);
            let name = format!("{}/{}", svc.namespace, svc.name);
            api.apply(&svc.object)
                .map_err(|e| anyhow::anyhow!("writing Service {name}: {e:?}"))?;
            api.apply(&slice)
                .map_err(|e| anyhow::anyhow!("writing the EndpointSlice of {name}: {e:?}"))?;
            rules.push_str(&dnat_rules(svc, &slice));
        }
        let script = format!("*nat\n:{CHAIN} - [0:0]\n{rules}COMMIT\n");
        restore(node, &self.rules, &script)
            .context("kube-proxy: iptables-restore in the node namespace")
    }

    /// kube-proxy's one-time set-up in the node: forwarding, the jump into its chain, and
    /// masquerade for DNAT'd traffic.
    pub fn install(&self, node: &Netns) -> anyhow::Result<()> {
        node.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let script = format!(
            "*nat\n:{CHAIN} - [0:0]\n-A PREROUTING -j {CHAIN}\n-A OUTPUT -j {CHAIN}\n\
             -A POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE\nCOMMIT\n"
        );
        restore(node, &self.rules, &script)
            .context("kube-proxy: installing the nat chain in the node namespace")
    }
}

/// Does the Service's selector match the pod's labels (same namespace)?
fn selects(svc: &Service, pod: &PodRef) -> bool {
    let Some(selector) = svc.object["spec"]["selector"].as_object() else {
        return false;
    };
    let labels = &pod.object["metadata"]["labels"];
    pod.namespace == svc.namespace
        && !selector.is_empty()
        && selector.iter().all(|(k, v)| labels[k] == *v)
}

/// A named target port resolved against the pod's container ports.
fn target_port(port: &Value, pod: &Value) -> Option<u64> {
    match &port["targetPort"] {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64()),
        _ => port["port"].as_u64(),
    }
}

/// The name of the one EndpointSlice the sandbox writes for Service `service`.
fn slice_name(service: &str) -> String {
    format!("{service}-sandbox")
}

/// The Service's EndpointSlice (`discovery.k8s.io/v1`), as the controller writes it.
fn endpoint_slice(svc: &Service, pods: &[&PodRef]) -> Value {
    let ports: Vec<Value> = svc.object["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let resolved = pods
                .first()
                .and_then(|pod| target_port(p, pod.object))
                .or_else(|| p["port"].as_u64());
            json!({"name": p["name"].as_str().unwrap_or(""), "port": resolved, "protocol": "TCP"})
        })
        .collect();
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({
                "addresses": [p.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": p.name, "namespace": p.namespace},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(&svc.name),
            "namespace": svc.namespace,
            "labels": {"kubernetes.io/service-name": svc.name},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// kube-proxy's rules for one Service: each endpoint chosen with equal probability.
fn dnat_rules(svc: &Service, slice: &Value) -> String {
    let mut out = String::new();
    let ips: Vec<&str> = slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["addresses"][0].as_str())
        .collect();
    let ports = svc.object["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, p) in ports.iter().enumerate() {
        let (Some(port), Some(target)) = (p["port"].as_u64(), slice["ports"][i]["port"].as_u64())
        else {
            continue;
        };
        let n = ips.len();
        for (k, ip) in ips.iter().enumerate() {
            let stat = if k + 1 < n {
                format!(
                    "-m statistic --mode random --probability {:.5} ",
                    1.0 / (n - k) as f64
                )
            } else {
                String::new()
            };
            out.push_str(&format!(
                "-A {CHAIN} -d {}/32 -p tcp --dport {port} {stat}-j DNAT --to-destination {ip}:{target}\n",
                svc.cluster_ip
            ));
        }
    }
    out
}

/// `iptables-restore --noflush` of `script` in `node`, through `file`.
fn restore(node: &Netns, file: &Path, script: &str) -> anyhow::Result<()> {
    std::fs::write(file, script)?;
    node.run(&["iptables-restore", "--noflush", &file.display().to_string()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_gets_an_equal_share_of_the_dnat() {
        let mut s = Services::new(Path::new("/nonexistent"));
        let svc = s
            .create(json!({"metadata": {"name": "green", "namespace": "demo"},
                "spec": {"selector": {"app": "green"},
                         "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}}))
            .unwrap()
            .clone();
        assert_eq!(svc.cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
        let pod = json!({"metadata": {"labels": {"app": "green"}},
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 9000}]}]}});
        let other = json!({"metadata": {"labels": {"app": "red"}}, "spec": {}});
        let refs = [
            PodRef {
                name: "g1",
                namespace: "demo",
                ip: Ipv4Addr::new(10, 214, 0, 10),
                object: &pod,
            },
            PodRef {
                name: "r1",
                namespace: "demo",
                ip: Ipv4Addr::new(10, 214, 0, 11),
                object: &other,
            },
            PodRef {
                name: "g2",
                namespace: "demo",
                ip: Ipv4Addr::new(10, 214, 0, 12),
                object: &pod,
            },
            PodRef {
                name: "g3",
                namespace: "demo",
                ip: Ipv4Addr::new(10, 214, 0, 13),
                object: &pod,
            },
        ];
        let members: Vec<&PodRef> = refs.iter().filter(|p| selects(&svc, p)).collect();
        let slice = endpoint_slice(&svc, &members);
        assert_eq!(slice["endpoints"].as_array().unwrap().len(), 3);
        assert_eq!(slice["ports"][0]["port"], 9000);
        let rules = dnat_rules(&svc, &slice);
        let lines: Vec<&str> = rules.lines().collect();
        assert_eq!(lines.len(), 3, "{rules}");
        assert!(
            lines[0].contains("--probability 0.33333") && lines[0].ends_with("10.214.0.10:9000")
        );
        assert!(lines[1].contains("--probability 0.50000"));
        assert!(!lines[2].contains("statistic") && lines[2].ends_with("10.214.0.13:9000"));
    }
}

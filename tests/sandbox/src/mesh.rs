//! One "node": a network namespace with a bridge (the pod network, dual-stack: 10.214.0.0/24 and
//! fd00:214::/64, owned by the sandbox), the webhook running in its own pod, and the demo's pods.
//! Every namespace wired to the bridge gets both families, its IPv6 address derived from its IPv4
//! host part (10.214.0.N and fd00:214::N, N in hex), as a dual-stack cluster gives a pod one
//! address of each family. Each mesh has its own namespaces, so tests make one each and run in
//! parallel; the address ranges repeat safely.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use kit::netns::{sh, Netns};
use kit::process::{Proc, Spec};
use kit::stats::{Matcher, Stats};

use crate::admission::{self, Admission};
use crate::kubelet::{self, PodInfo};
use crate::services::{PodRef, Services};
use crate::{bins, cleanup, manifests, IMAGE_USER};

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 1);
pub const WEBHOOK_IP: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 2);
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 3);
/// An ingress gateway's address (App Mesh's VirtualGateway, Istio's ingress gateway).
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 4);
/// The bridge's IPv6 address: fd00:214::1, [`NODE_IP`]'s twin.
pub const NODE_IP6: Ipv6Addr = ip6_of(NODE_IP);
/// The webhook pod's IPv6 address, [`WEBHOOK_IP`]'s twin.
pub const WEBHOOK_IP6: Ipv6Addr = ip6_of(WEBHOOK_IP);
/// The API server double listens on the node's bridge address.
pub const API_PORT: u16 = 6443;
pub const WEBHOOK_HOST: &str = "trellis-webhook.trellis-system.svc";
pub const WEBHOOK_PORT: u16 = 8443;
/// The proxy's admin port (the injector's default).
pub const ADMIN_PORT: u16 = config::defaults::ADMIN_PORT;

/// The IPv6 address of the namespace whose IPv4 address is `ip`: fd00:214::N for 10.214.0.N.
pub const fn ip6_of(ip: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x214, 0, 0, 0, 0, 0, ip.octets()[3] as u16)
}

/// A running pod. Fields drop in order: its processes, then its namespace.
pub struct Pod {
    /// The Deployment it belongs to (`green`).
    pub app: String,
    /// Its name (`green-7f9c6d5b8-x2k4q`).
    pub name: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address (`status.podIPs[1]` of a dual-stack pod), [`ip6_of`]`(ip)`.
    pub ip6: Ipv6Addr,
    /// The pod as admitted (patched by the webhook when injected).
    pub admitted: Admission,
    pub procs: Vec<Proc>,
    pub logs: PathBuf,
    /// Being deleted: no longer an endpoint of its Services, still running.
    pub terminating: bool,
    pub ns: Netns,
}

impl Pod {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// `[ip6]:port`.
    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip6, port))
    }

    pub fn container(&self, name: &str) -> Option<&Proc> {
        self.procs.iter().find(|p| p.name == name)
    }

    pub fn container_mut(&mut self, name: &str) -> Option<&mut Proc> {
        self.procs.iter_mut().find(|p| p.name == name)
    }

    /// `kubectl logs POD -c NAME`.
    pub fn logs(&self, container: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{container}.log"))).unwrap_or_default()
    }

    /// Names of the init containers and containers, as `kubectl get pod -o yaml` would list them.
    pub fn container_names(&self, key: &str) -> Vec<String> {
        self.admitted.pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    }

    /// `kubectl exec` into the pod as `uid` (the app's user unless told otherwise).
    pub fn exec(&self, uid: u32, argv: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        argv[0] = bins::resolve(&argv[0])?;
        Ok(Spec::new(argv, uid, uid).output(&self.ns)?)
    }
}

pub struct Mesh {
    pub prefix: String,
    pub dir: PathBuf,
    pub pods: Vec<Pod>,
    /// Services: ClusterIPs, EndpointSlices for the control plane, kube-proxy's DNAT.
    pub services: Services,
    /// The API server (a double, `kit::apiserver`), in the node namespace.
    pub api: kit::apiserver::ApiServer,
    webhook: Option<Proc>,
    webhook_ns: Option<Netns>,
    control: Option<Proc>,
    control_ns: Option<Netns>,
    pub ca: Vec<u8>,
    next_ip: u8,
    reviews: AtomicU64,
    /// Keep the logs directory when dropped (the demo, after a failure).
    pub keep_logs: bool,
    pub node: Netns,
}

impl Mesh {
    /// A name prefix unique to this process and call (tests run in parallel).
    pub fn unique_prefix(tag: &str) -> String {
        kit::netns::unique_name(tag)
    }

    /// The node, its bridge, and a running webhook.
    pub fn start(prefix: &str) -> anyhow::Result<Mesh> {
        kit::root::check()?;
        let dir = std::env::temp_dir().join(prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs"))?;
        cleanup::add_dir(dir.clone());
        let node = Netns::new(format!("{prefix}-node"))?;
        node.ip(&["link", "add", "br0", "type", "bridge"])?;
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"])?;
        node.ip(&["link", "set", "br0", "up"])?;
        node.add_addr("br0", &format!("{NODE_IP6}/64"))?;
        // Started from inside the node, so that it listens there, on the bridge.
        let api = node
            .enter(|| {
                kit::apiserver::ApiServer::with_options(kit::apiserver::Options {
                    addr: SocketAddr::from((NODE_IP, API_PORT)),
                    // The Gateway API CRDs installed, as the README asks.
                    resources: kit::apiserver::DEFAULT_RESOURCES
                        .into_iter()
                        .chain(kit::apiserver::ROUTE_RESOURCES)
                        .collect(),
                    ..kit::apiserver::Options::default()
                })
            })?
            .context("starting the API server double in the node")?;
        let mut mesh = Mesh {
            prefix: prefix.to_string(),
            services: Services::new(&dir),
            api,
            dir,
            pods: Vec::new(),
            webhook: None,
            webhook_ns: None,
            control: None,
            control_ns: None,
            ca: Vec::new(),
            next_ip: 10,
            reviews: AtomicU64::new(0),
            keep_logs: false,
            node,
        };
        mesh.services.install(&mesh.node)?;
        for o in manifests::demo_objects()? {
            if o["kind"] == "Service" {
                mesh.services.create(o)?;
            }
        }
        mesh.sync_services()?;
        mesh.control_ns = Some(mesh.wire("control", CONTROL_IP)?);
        mesh.start_control()?;
        mesh.start_webhook()?;
        Ok(mesh)
    }

    /// The EndpointSlice controller and kube-proxy, after pods came or went.
    pub fn sync_services(&self) -> anyhow::Result<()> {
        let pods: Vec<PodRef> = self
            .pods
            .iter()
            .filter(|p| !p.terminating)
            .map(|p| PodRef {
                name: &p.name,
                namespace: p.admitted.pod["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default"),
                ip: p.ip,
                object: &p.admitted.pod,
            })
            .collect();
        self.services.sync(&pods, &self.api, &self.node)
    }

    /// `kubectl apply -f` of one object (a `TrafficPolicy`).
    pub fn apply(&self, object: &Value) -> anyhow::Result<()> {
        self.api
            .apply(object)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("kubectl apply: {e:?}"))
    }

    /// `kubectl delete` of an object [`apply`](Self::apply) made.
    pub fn delete_object(&self, kind: &str, namespace: &str, name: &str) -> anyhow::Result<()> {
        let def = kit::apiserver::DEFAULT_RESOURCES
            .iter()
            .chain(&kit::apiserver::ROUTE_RESOURCES)
            .find(|d| d.kind == kind)
            .with_context(|| format!("the API server double does not serve {kind}"))?;
        self.api
            .delete(&def.gvr, namespace, name)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("kubectl delete {kind} {namespace}/{name}: {e:?}"))
    }

    /// `control serve` as the image's user, in its own pod namespace, watching the API server
    /// through a kubeconfig (as with its ServiceAccount in a cluster); waits for `/ready`.
    pub fn start_control(&mut self) -> anyhow::Result<()> {
        let ns = self
            .control_ns
            .as_ref()
            .context("the control plane's namespace")?;
        let kubeconfig = self.dir.join("control.kubeconfig");
        self.api.write_kubeconfig(&kubeconfig)?;
        nix::unistd::chown(
            &kubeconfig,
            Some(nix::unistd::Uid::from_raw(IMAGE_USER)),
            Some(nix::unistd::Gid::from_raw(IMAGE_USER)),
        )?;
        let argv = vec![
            bins::path("control")?.display().to_string(),
            "serve".into(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--listen=0.0.0.0:{}", config::api::CONTROL_PORT),
            format!(
                "--metrics-listen=0.0.0.0:{}",
                config::api::CONTROL_METRICS_PORT
            ),
        ];
        let log = self.dir.join("logs").join("control.log");
        let mut proc = Proc::spawn("control", &Spec::new(argv, IMAGE_USER, IMAGE_USER), ns, log)?;
        let addr = SocketAddr::from((CONTROL_IP, config::api::CONTROL_PORT));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = proc.try_status() {
                bail!("control serve exited ({s}): {}", proc.logs());
            }
            match crate::get(&self.node, addr, "/ready") {
                Ok(r) if r.status == 200 => break,
                other if Instant::now() >= deadline => {
                    bail!(
                        "control plane not ready after 30s: {other:?}\n{}",
                        proc.logs()
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        self.control = Some(proc);
        Ok(())
    }

    /// Kills the control plane (`kubectl delete pod` of both replicas).
    pub fn stop_control(&mut self) {
        self.control = None;
    }

    pub fn control_logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs").join("control.log")).unwrap_or_default()
    }

    /// `proxy gateway --gateway NAMESPACE/NAME` in its own namespace at [`GATEWAY_IP`] (a
    /// Deployment of the image, not injected), told its routes by the control plane; `flags` are
    /// added (its pools). Waits for `/ready`. Stops when dropped.
    pub fn start_gateway(
        &self,
        gateway: &str,
        listen_port: u16,
        flags: &[&str],
    ) -> anyhow::Result<Gateway> {
        let ns = self.wire("gateway", GATEWAY_IP)?;
        let mut argv = vec![
            bins::path("proxy")?.display().to_string(),
            "gateway".into(),
            format!("--listen=0.0.0.0:{listen_port}"),
            format!("--gateway={gateway}"),
            format!("--control-plane={CONTROL_IP}:{}", config::api::CONTROL_PORT),
            format!("--admin-listen=0.0.0.0:{ADMIN_PORT}"),
            "--access-log".into(),
        ];
        argv.extend(flags.iter().map(|f| f.to_string()));
        let log = self.dir.join("logs").join("gateway.log");
        let mut proc = Proc::spawn(
            "gateway",
            &Spec::new(argv, IMAGE_USER, IMAGE_USER),
            &ns,
            log,
        )?;
        let admin = SocketAddr::from((GATEWAY_IP, ADMIN_PORT));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = proc.try_status() {
                bail!("proxy gateway exited ({s}): {}", proc.logs());
            }
            match crate::get(&self.node, admin, "/ready") {
                Ok(r) if r.status == 200 => break,
                other if Instant::now() >= deadline => {
                    bail!("gateway not ready after 30s: {other:?}\n{}", proc.logs())
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(Gateway {
            proc,
            listen: SocketAddr::from((GATEWAY_IP, listen_port)),
            admin,
            _ns: ns,
        })
    }

    /// A namespace wired to the bridge with `ip`/24 and [`ip6_of`]`(ip)`/64 on its `eth0`, each
    /// family's default route via the node; returns once both addresses are usable.
    fn wire(&self, role: &str, ip: Ipv4Addr) -> anyhow::Result<Netns> {
        let ns = Netns::new(format!("{}-{role}", self.prefix))?;
        let veth = format!("veth{}", ip.octets()[3]);
        self.node.veth(&veth, &ns, "eth0")?;
        self.node
            .ip(&["link", "set", &veth, "master", "br0", "up"])?;
        ns.add_addr("eth0", &format!("{ip}/24"))?;
        ns.link_up("eth0")?;
        ns.ip(&["route", "add", "default", "via", &NODE_IP.to_string()])?;
        // After `up`: an interface going down drops its IPv6 addresses. `add_addr` skips
        // duplicate address detection (`nodad`), else the address stays `tentative` (unusable:
        // bind fails, connects leave from another address) for about a second.
        let ip6 = ip6_of(ip);
        ns.add_addr("eth0", &format!("{ip6}/64"))?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &NODE_IP6.to_string(),
        ])?;
        wait_ipv6_usable(&ns, "eth0", ip6)?;
        Ok(ns)
    }

    /// `certs/make-certs.sh`, then `webhook serve` as the image's user, in its own namespace.
    fn start_webhook(&mut self) -> anyhow::Result<()> {
        let certs = self.dir.join("certs");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../certs/make-certs.sh");
        sh(&[
            script.to_str().context("path")?,
            certs.to_str().context("path")?,
        ])
        .context("making the webhook's certificate with certs/make-certs.sh (needs openssl)")?;
        for f in ["tls.crt", "tls.key"] {
            nix::unistd::chown(
                &certs.join(f),
                Some(nix::unistd::Uid::from_raw(IMAGE_USER)),
                Some(nix::unistd::Gid::from_raw(IMAGE_USER)),
            )?;
        }
        self.ca = std::fs::read(certs.join("ca.crt"))?;
        let ns = self.wire("webhook", WEBHOOK_IP)?;
        let argv = vec![
            bins::path("webhook")?.display().to_string(),
            "serve".into(),
            // The default, as the Deployment runs it: one dual-stack socket.
            format!("--listen=[::]:{WEBHOOK_PORT}"),
            format!("--tls-cert={}", certs.join("tls.crt").display()),
            format!("--tls-key={}", certs.join("tls.key").display()),
            format!("--control-plane={CONTROL_IP}:{}", config::api::CONTROL_PORT),
        ];
        let log = self.dir.join("logs").join("webhook.log");
        let mut proc = Proc::spawn(
            "webhook",
            &Spec::new(argv, IMAGE_USER, IMAGE_USER),
            &ns,
            log,
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = proc.try_status() {
                bail!("webhook serve exited ({s}): {}", proc.logs());
            }
            match crate::call(
                &self.node,
                Some((WEBHOOK_HOST, &self.ca)),
                "GET",
                SocketAddr::from((WEBHOOK_IP, WEBHOOK_PORT)),
                "/readyz",
                Vec::new(),
            ) {
                Ok(r) if r.status == 200 => break,
                other if Instant::now() >= deadline => {
                    bail!("webhook not ready after 30s: {other:?}\n{}", proc.logs())
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        self.webhook = Some(proc);
        self.webhook_ns = Some(ns);
        Ok(())
    }

    /// Sends `pod` (created in `namespace`) to the webhook, as the API server does.
    pub fn admit(&self, namespace: &str, pod: &Value) -> anyhow::Result<Admission> {
        let uid = format!(
            "7e1115a0-0000-4000-8000-{:012}",
            self.reviews.fetch_add(1, Ordering::SeqCst)
        );
        let review = admission::review(&uid, namespace, pod);
        let resp = crate::call(
            &self.node,
            Some((WEBHOOK_HOST, &self.ca)),
            "POST",
            SocketAddr::from((WEBHOOK_IP, WEBHOOK_PORT)),
            "/mutate",
            serde_json::to_vec(&review)?,
        )?;
        if resp.status != 200 {
            bail!("POST /mutate answered {}: {}", resp.status, resp.body);
        }
        admission::apply_response(&uid, pod, &resp.body)
    }

    /// Creates one pod of the demo Deployment `app`: admission, then the kubelet.
    pub fn deploy(&mut self, app: &str) -> anyhow::Result<&Pod> {
        self.deploy_with(app, |_| {})
    }

    /// [`deploy`](Self::deploy) with the pod changed by `edit` before admission (e.g. an annotation).
    pub fn deploy_with(
        &mut self,
        app: &str,
        edit: impl FnOnce(&mut Value),
    ) -> anyhow::Result<&Pod> {
        self.deploy_as(app, app, edit)
    }

    /// A pod of a Deployment `app` that the demo does not ship, made from the template of its
    /// Deployment `from` (as a copy of its manifest renamed would), changed by `edit` before
    /// admission: its pod name, [`Pod::app`], namespace and logs directory are `app`'s, so that
    /// [`pod`](Self::pod) and [`stats`](Self::stats) find it by that name. Its labels are
    /// `from`'s until `edit` changes them (and with them the Services that select it).
    pub fn deploy_as(
        &mut self,
        app: &str,
        from: &str,
        edit: impl FnOnce(&mut Value),
    ) -> anyhow::Result<&Pod> {
        let mut deployment = manifests::deployment(from)?;
        deployment["metadata"]["name"] = json!(app);
        let (namespace, mut pod) = manifests::pod_from(&deployment)?;
        edit(&mut pod);
        let admitted = self.admit(&namespace, &pod)?;
        if !admitted.allowed {
            bail!(
                "the webhook refused pod {app}: {}",
                admitted.message.clone().unwrap_or_default()
            );
        }
        let mut obj = admitted.pod.clone();
        let name = format!(
            "{}{}",
            obj["metadata"]["generateName"].as_str().unwrap_or("pod-"),
            suffix()
        );
        obj["metadata"]["name"] = json!(name);
        obj["metadata"]["namespace"] = json!(namespace);
        let ip = Ipv4Addr::new(10, 214, 0, self.next_ip);
        self.next_ip += 1;
        // Replicas of one app each get a namespace and a log directory of their own.
        let role = if self.pods.iter().any(|p| p.app == app) {
            format!("{app}-{}", ip.octets()[3])
        } else {
            app.to_string()
        };
        let ns = self.wire(&role, ip)?;
        let logs = self.dir.join("logs").join(&role);
        let info = PodInfo {
            name: &name,
            namespace: &namespace,
            ip,
            node_ip: NODE_IP,
        };
        let procs = kubelet::run_pod(&obj, &info, &ns, &self.node, &logs)
            .with_context(|| format!("starting pod {name} (logs in {})", logs.display()))?;
        self.pods.push(Pod {
            app: app.to_string(),
            name,
            ip,
            ip6: ip6_of(ip),
            admitted: Admission {
                pod: obj,
                ..admitted
            },
            procs,
            logs,
            terminating: false,
            ns,
        });
        self.sync_services()?;
        Ok(self.pods.last().unwrap())
    }

    /// `kubectl apply` of a Service the demo does not ship (a ClusterIP allocated), its
    /// EndpointSlice and DNAT rules made from the current pods.
    pub fn create_service(&mut self, object: Value) -> anyhow::Result<()> {
        self.services.create(object)?;
        self.sync_services()
    }

    /// `kubectl delete service`: it and its EndpointSlice leave the API server, its DNAT rules
    /// the node.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> anyhow::Result<()> {
        self.services.delete(namespace, name, &self.api)?;
        self.sync_services()
    }

    /// Deletes one pod by name (its processes killed, its namespace removed); its Services'
    /// endpoints and DNAT rules are updated, as the EndpointSlice controller and kube-proxy would.
    pub fn delete_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let before = self.pods.len();
        self.pods.retain(|p| p.name != name);
        if self.pods.len() == before {
            bail!("no pod {name} in this mesh");
        }
        self.sync_services()
    }

    /// Deletes one pod as the API server, the EndpointSlice controller and the kubelet do
    /// together: it leaves its Services' endpoints at once, and its containers are stopped after
    /// `grace` (a preStop hook's wait).
    pub fn delete_pod_gracefully(&mut self, name: &str, grace: Duration) -> anyhow::Result<()> {
        let pod = self
            .pods
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name} in this mesh"))?;
        pod.terminating = true;
        self.sync_services()?;
        std::thread::sleep(grace);
        self.delete_pod(name)
    }

    /// Makes `app` have `n` pods (new ones through the webhook, extra ones deleted).
    pub fn scale(&mut self, app: &str, n: usize) -> anyhow::Result<()> {
        while self.replicas(app).len() < n {
            self.deploy(app)?;
        }
        while self.replicas(app).len() > n {
            let name = self
                .replicas(app)
                .last()
                .map(|p| p.name.clone())
                .unwrap_or_default();
            self.delete_pod(&name)?;
        }
        Ok(())
    }

    /// The pods of `app`.
    pub fn replicas(&self, app: &str) -> Vec<&Pod> {
        self.pods.iter().filter(|p| p.app == app).collect()
    }

    /// Deletes `app`'s pod (its processes killed, its namespace removed) and creates it again,
    /// as a Deployment replaces a pod: a new name and a new IP, through the webhook again.
    pub fn restart(&mut self, app: &str) -> anyhow::Result<&Pod> {
        self.pods.retain(|p| p.app != app);
        self.sync_services()?;
        self.deploy(app)
    }

    pub fn pod(&self, app: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.app == app)
            .unwrap_or_else(|| panic!("no pod {app} in this mesh"))
    }

    pub fn pod_mut(&mut self, app: &str) -> &mut Pod {
        self.pods
            .iter_mut()
            .find(|p| p.app == app)
            .unwrap_or_else(|| panic!("no pod {app} in this mesh"))
    }

    /// `app`'s sidecar `/stats`, read from the node (`kubectl exec POD -c proxy -- curl -s
    /// localhost:9901/stats` as an operator would).
    pub fn stats_of(&self, app: &str) -> Matcher<'_> {
        Matcher::new(self.pod(app).addr(ADMIN_PORT)).from_netns(&self.node)
    }

    /// One read of `app`'s sidecar `/stats`.
    pub fn stats(&self, app: &str) -> anyhow::Result<Stats> {
        let pod = self.pod(app);
        kit::block_on(self.stats_of(app).fetch())
            .with_context(|| format!("{}: reading /stats", pod.name))
    }

    pub fn webhook_logs(&self) -> String {
        self.webhook.as_ref().map(Proc::logs).unwrap_or_default()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.pods.clear();
        self.webhook = None;
        self.webhook_ns = None;
        self.control = None;
        self.control_ns = None;
        if self.keep_logs || std::thread::panicking() {
            eprintln!("sandbox: logs kept in {}", self.dir.display());
            cleanup::forget_dir(&self.dir);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
            cleanup::forget_dir(&self.dir);
        }
    }
}

/// Waits (up to 5 s) until `ip6` on `dev` in `ns` is usable: present, neither `tentative`
/// (duplicate address detection still running: bind fails, connects leave from another address)
/// nor `dadfailed`. With `nodad` that is at once; the check keeps a kernel that ignores it honest.
fn wait_ipv6_usable(ns: &Netns, dev: &str, ip6: Ipv6Addr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = format!("inet6 {ip6}/");
    loop {
        let addrs = ns.run(&["ip", "-6", "addr", "show", "dev", dev])?;
        let usable = addrs
            .lines()
            .find(|l| l.contains(&want))
            .is_some_and(|l| !l.contains("tentative") && !l.contains("dadfailed"));
        if usable {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{dev} in {}: {ip6} not usable after 5s:\n{addrs}", ns.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The 5 random characters a ReplicaSet's pods get after `generateName`.
fn suffix() -> String {
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ (u64::from(std::process::id()) << 32);
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % alphabet.len() as u64) as usize] as char
        })
        .collect()
}

/// A running `proxy gateway` (see [`Mesh::start_gateway`]).
pub struct Gateway {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    _ns: Netns,
}

impl Gateway {
    /// Its `/stats`, read from the node.
    pub fn stats_of<'a>(&self, node: &'a Netns) -> Matcher<'a> {
        Matcher::new(self.admin).from_netns(node)
    }
}

//! The load driver of `make bench-control` (bench/control.sh), in two modes:
//!
//! - `control`: a large cluster (Services with ClusterIPs spread over 10.96.0.0/12, one
//!   EndpointSlice each) in the kit's API server double; the real `control serve --kubeconfig`
//!   watching it; many destination streams over a few HTTP/2 connections, first all at once (a
//!   resubscribe storm, then closed), then at a steady rate as proxies open them and kept open;
//!   then EndpointSlice changes written to the double at a steady rate and in a burst, each timed
//!   until every stream of its Service has the new endpoint. The changes travel the real path:
//!   API server watch -> control's model -> recompile -> every subscribed stream.
//! - `proxy`: run inside a network namespace whose outbound TCP is redirected to the proxy (the
//!   script sets that up): the double and `control serve` on loopback, a real `proxy
//!   --control-plane` as another uid, and one connection to each of many ClusterIPs, so that the
//!   proxy learns each destination as it would in a pod; its RSS is read before and after.
//!
//! It prints table lines; the script prints nothing else. Figures, not verdicts: the only failure
//! is a measurement that could not be made (a stream that never saw a change, a destination the
//! proxy never learned), reported after the table.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::{Buf as _, Bytes, BytesMut};
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kit::apiserver::{ApiServer, Options, ENDPOINTSLICES};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "load driver of bench/control.sh")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The control plane at scale: time to ready, first answers, changes to every stream, RSS, CPU.
    Control(ControlArgs),
    /// One proxy's RSS with many known destinations (run inside the prepared namespace).
    Proxy(ProxyArgs),
}

#[derive(Args)]
struct ControlArgs {
    /// The `control` binary.
    #[arg(long)]
    control: PathBuf,
    /// A scratch directory (kubeconfig, control's log).
    #[arg(long)]
    work: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints in all (spread evenly over the Services).
    #[arg(long, default_value_t = 100_000)]
    endpoints: usize,
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// New streams per second (the storm opens them all at once).
    #[arg(long, default_value_t = 1_000.0)]
    open_rate: f64,
    /// Destination streams in all.
    #[arg(long, default_value_t = 5_000)]
    subscriptions: usize,
    /// HTTP/2 connections the streams are spread over (one per simulated proxy).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// How many distinct Services the streams watch (each by subscriptions / this many streams).
    #[arg(long, default_value_t = 1_000)]
    subscribed_services: usize,
    /// EndpointSlice changes at `--rate`, each timed to every stream of its Service.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Changes per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Changes written as fast as possible.
    #[arg(long, default_value_t = 1_000)]
    burst: usize,
    /// How long to wait for streams before counting an update as missed.
    #[arg(long, default_value_t = 60)]
    patience_secs: u64,
}

#[derive(Args)]
struct ProxyArgs {
    #[arg(long)]
    control: PathBuf,
    /// The `proxy` binary.
    #[arg(long)]
    proxy: PathBuf,
    #[arg(long)]
    work: PathBuf,
    /// Distinct ClusterIPs the app connects to.
    #[arg(long, default_value_t = 1_000)]
    destinations: usize,
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: usize,
    /// The proxy's uid and gid (exempt from the capture).
    #[arg(long, default_value_t = 1337)]
    uid: u32,
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    #[arg(long, default_value_t = 30)]
    patience_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    match cli.mode {
        Mode::Control(a) => runtime.block_on(control_bench(a)),
        Mode::Proxy(a) => runtime.block_on(proxy_bench(a)),
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated cluster

/// Services `svc-NNNNN` in namespaces `ns-NNN`, port 80 (`http`) -> 8080, one EndpointSlice each.
#[derive(Clone, Copy)]
struct Shape {
    services: usize,
    namespaces: usize,
    per_service: usize,
}

impl Shape {
    fn namespace(&self, i: usize) -> String {
        format!("ns-{:03}", i % self.namespaces.max(1))
    }

    fn name(i: usize) -> String {
        format!("svc-{i:05}")
    }

    fn slice_name(i: usize) -> String {
        format!("{}-x7k2p", Shape::name(i))
    }

    /// Distinct addresses spread over 10.96.0.0/12 (97 is odd, so i -> 97 i is one-to-one mod 2^20).
    fn cluster_ip(i: usize) -> Ipv4Addr {
        let offset = (u32::try_from(i).unwrap_or(u32::MAX).wrapping_mul(97) + 10) % (1 << 20);
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + offset)
    }

    fn address(i: usize) -> SocketAddr {
        SocketAddr::from((Shape::cluster_ip(i), 80))
    }

    /// Pod IPs from 10.244.0.1 up (100,000 of them end in 10.245.x.y).
    fn endpoint_ip(&self, i: usize, j: usize) -> Ipv4Addr {
        let k = u32::try_from(i * self.per_service + j + 1).unwrap_or(u32::MAX);
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + k)
    }

    fn service(&self, i: usize) -> Value {
        let ip = Shape::cluster_ip(i).to_string();
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": Shape::name(i), "namespace": self.namespace(i),
                         "labels": {"app": Shape::name(i)}},
            "spec": {
                "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                "selector": {"app": Shape::name(i)},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        })
    }

    fn endpoints(&self, i: usize, ips: &[Ipv4Addr]) -> Value {
        let ns = self.namespace(i);
        let eps: Vec<Value> = ips
            .iter()
            .enumerate()
            .map(|(j, ip)| {
                json!({
                    "addresses": [ip.to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": format!("node-{}", (i + j) % 50),
                    "targetRef": {"kind": "Pod", "namespace": ns,
                                  "name": format!("{}-{j}", Shape::name(i))},
                })
            })
            .collect();
        Value::Array(eps)
    }

    fn ips(&self, i: usize) -> Vec<Ipv4Addr> {
        (0..self.per_service)
            .map(|j| self.endpoint_ip(i, j))
            .collect()
    }

    fn slice(&self, i: usize) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": Shape::slice_name(i), "namespace": self.namespace(i),
                         "labels": {"kubernetes.io/service-name": Shape::name(i),
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": self.endpoints(i, &self.ips(i)),
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
    }

    /// A double holding the whole cluster.
    fn load(&self) -> anyhow::Result<ApiServer> {
        let server = ApiServer::with_options(Options::default())?;
        for i in 0..self.services {
            server.create(self.service(i))?;
            server.create(self.slice(i))?;
        }
        Ok(server)
    }
}

// ---------------------------------------------------------------------------------------------
// Processes and /proc

/// A child process, killed when dropped.
struct Proc {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let file = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        // For the script's clean-up, should this driver be killed before it can kill its children.
        if let Some(dir) = log.parent() {
            let mut pids = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("pids"))?;
            std::io::Write::write_all(&mut pids, format!("{}\n", child.id()).as_bytes())?;
        }
        Ok(Proc { child, name, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of its log, if the process has exited.
    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory now and at its peak, in KiB (`VmRSS`, `VmHWM`).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU seconds so far (`utime` + `stime` of /proc/PID/stat, in USER_HZ = 100 ticks,
/// fixed by the kernel ABI whatever CONFIG_HZ is).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `GET path` on `addr` until it answers 200; fails if `proc` exits or `patience` passes.
async fn wait_ok(
    proc: &mut Proc,
    addr: SocketAddr,
    path: &str,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        proc.alive()?;
        if let Ok(r) = kit::http::get(addr, path).await {
            if r.status == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer 200 on {addr}{path} within {patience:?}",
                proc.name
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `control serve` watching `server`, its discovery and metrics addresses.
fn start_control(
    bin: &Path,
    server: &ApiServer,
    work: &Path,
) -> anyhow::Result<(Proc, SocketAddr, SocketAddr)> {
    let kubeconfig = work.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--listen", &listen.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        .args(["--log-level", "warn"]);
    let proc = Proc::spawn("control", cmd, work.join("control.log"))?;
    Ok((proc, listen, metrics))
}

// ---------------------------------------------------------------------------------------------
// Destination streams

/// One NDJSON response body, read line by line.
struct Lines {
    body: Incoming,
    buf: BytesMut,
}

impl Lines {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                return Some(self.buf.split_to(nl + 1).freeze());
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(mut data) = frame.into_data() {
                while data.has_remaining() {
                    let chunk = data.chunk();
                    self.buf.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
        }
    }
}

async fn h2_connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn connect_all(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<SendRequest<Empty<Bytes>>>> {
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        senders.push(h2_connect(addr).await?);
    }
    Ok(senders)
}

/// `control_streams_active` from control's metrics.
async fn active_streams(metrics: SocketAddr) -> anyhow::Result<u64> {
    let r = kit::http::get(metrics, "/metrics").await?;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("control_streams_active "))
        .and_then(|v| v.trim().parse().ok())
        .context("no control_streams_active in /metrics")
}

/// Opens one stream; returns it once its first whole line is in, with that line.
async fn subscribe(
    send: &mut SendRequest<Empty<Bytes>>,
    control: SocketAddr,
    address: SocketAddr,
) -> anyhow::Result<(Lines, Bytes)> {
    send.ready().await?;
    let req = hyper::Request::get(format!("http://{control}/v1/destinations/{address}"))
        .body(Empty::new())?;
    let resp = send.send_request(req).await?;
    if resp.status() != 200 {
        bail!("{address}: control answered {}", resp.status());
    }
    let mut lines = Lines {
        body: resp.into_body(),
        buf: BytesMut::new(),
    };
    let first = lines
        .next()
        .await
        .with_context(|| format!("{address}: the stream ended before its first answer"))?;
    Ok((lines, first))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A change being timed: when it was written, and when each stream of its Service saw it.
struct Wait {
    marker: Vec<u8>,
    t0: Instant,
    got: Vec<Option<Duration>>,
}

/// The streams of one subscribed Service and the changes they are being timed on.
struct Slot {
    streams: usize,
    waits: Mutex<Vec<Wait>>,
}

impl Slot {
    fn seen(&self, stream: usize, line: &[u8], at: Instant) {
        let mut waits = self.waits.lock().expect("waits lock");
        for w in waits.iter_mut() {
            if w.got[stream].is_none() && contains(line, &w.marker) {
                w.got[stream] = Some(at.duration_since(w.t0));
            }
        }
    }

    fn expect(&self, marker: &str, t0: Instant) {
        self.waits.lock().expect("waits lock").push(Wait {
            marker: format!("\"{marker}\"").into_bytes(),
            t0,
            got: vec![None; self.streams],
        });
    }

    fn pending(&self) -> usize {
        self.waits
            .lock()
            .expect("waits lock")
            .iter()
            .map(|w| w.got.iter().filter(|g| g.is_none()).count())
            .sum()
    }

    /// Takes the finished and unfinished waits: (latencies seen, streams that missed).
    fn harvest(&self) -> (Vec<Duration>, usize) {
        let waits = std::mem::take(&mut *self.waits.lock().expect("waits lock"));
        let mut seen = Vec::new();
        let mut missed = 0;
        for w in waits {
            for g in w.got {
                match g {
                    Some(d) => seen.push(d),
                    None => missed += 1,
                }
            }
        }
        (seen, missed)
    }
}

/// Waits until no slot has a pending stream, or `patience` passes.
async fn settle(slots: &[Arc<Slot>], patience: Duration) {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline && slots.iter().any(|s| s.pending() > 0) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn harvest(slots: &[Arc<Slot>]) -> (Vec<Duration>, usize) {
    let mut all = Vec::new();
    let mut missed = 0;
    for s in slots {
        let (seen, m) = s.harvest();
        all.extend(seen);
        missed += m;
    }
    all.sort();
    (all, missed)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

/// `p50 X ms  p99 Y ms  max Z ms`, or `-` for each without samples.
fn spread(sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return "p50 - ms  p99 - ms  max - ms".into();
    }
    format!(
        "p50 {} ms  p99 {} ms  max {} ms",
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.99)),
        ms(*sorted.last().expect("not empty"))
    )
}

/// The current endpoints of each subscribed Service, and fresh addresses to change them to.
struct Churn {
    shape: Shape,
    ips: HashMap<usize, Vec<Ipv4Addr>>,
    next: u32,
}

impl Churn {
    /// The endpoint the `ahead`-th next change (1: the next one) brings in, as the streams will
    /// show it: a never-used address from 10.250.0.0 up.
    fn marker(&self, ahead: u32) -> String {
        format!("{}:8080", Churn::fresh(self.next + ahead))
    }

    fn fresh(n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + n)
    }

    /// Replaces one endpoint of Service `i` by the next fresh address and writes the slice.
    fn change(&mut self, server: &ApiServer, i: usize) -> anyhow::Result<()> {
        self.next += 1;
        let fresh = Churn::fresh(self.next);
        let ips = self.ips.entry(i).or_insert_with(|| self.shape.ips(i));
        let j = self.next as usize % ips.len();
        ips[j] = fresh;
        server.patch(
            &ENDPOINTSLICES.gvr,
            &self.shape.namespace(i),
            &Shape::slice_name(i),
            json!({"endpoints": self.shape.endpoints(i, ips)}),
        )?;
        Ok(())
    }
}

async fn control_bench(a: ControlArgs) -> anyhow::Result<()> {
    let shape = Shape {
        services: a.services,
        namespaces: a.namespaces,
        per_service: (a.endpoints / a.services.max(1)).max(1),
    };
    let subscribed = a.subscribed_services.clamp(1, a.services);
    let per_conn = a.subscriptions.div_ceil(a.connections.max(1));
    let mut problems = Vec::new();
    println!(
        "control plane at scale ({} Services in {} namespaces, {} endpoints, {} subscriptions to {} \
         Services over {} HTTP/2 connections)",
        a.services,
        a.namespaces,
        a.services * shape.per_service,
        a.subscriptions,
        subscribed,
        a.connections
    );

    let server = shape.load()?;
    let (mut control, listen, metrics) = start_control(&a.control, &server, &a.work)?;
    let started = Instant::now();
    let pid = control.pid();
    wait_ok(
        &mut control,
        metrics,
        "/ready",
        Duration::from_secs(a.patience_secs * 5),
    )
    .await?;
    let ready = started.elapsed();
    let cpu_loaded = cpu_seconds(pid);
    let (rss_loaded, _) = rss_kib(pid);
    println!(
        "  ready after initial list        {:.2} s",
        ready.as_secs_f64()
    );

    // Stream g watches subscribed Service g % subscribed (every services/subscribed-th Service)
    // on connection g / per_conn, so each Service's streams are on different connections.
    let stride = a.services / subscribed;
    let address_of = move |g: usize| Shape::address((g % subscribed) * stride);

    // The resubscribe storm: every stream at once on fresh connections, as when every proxy
    // comes back to a restarted control plane; then all of them closed again.
    let storm_start = Instant::now();
    let senders = connect_all(listen, a.connections).await?;
    let mut storm = tokio::task::JoinSet::new();
    for g in 0..a.subscriptions {
        let mut send = senders[g / per_conn].clone();
        storm.spawn(async move {
            let t0 = Instant::now();
            let (lines, _) = subscribe(&mut send, listen, address_of(g)).await?;
            anyhow::Ok((t0.elapsed(), lines))
        });
    }
    let mut storm_firsts = Vec::new();
    let mut storm_streams = Vec::new();
    while let Some(r) = storm.join_next().await {
        let (first, lines) = r??;
        storm_firsts.push(first);
        storm_streams.push(lines);
    }
    let storm_all = storm_start.elapsed();
    storm_firsts.sort();
    drop(storm_streams);
    drop(senders);
    let deadline = Instant::now() + Duration::from_secs(a.patience_secs);
    while active_streams(metrics).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The streams that stay: opened at --open-rate, each on its own schedule (a slow answer
    // does not delay the next request), and followed for the changes below.
    let slots: Vec<Arc<Slot>> = (0..subscribed)
        .map(|k| {
            Arc::new(Slot {
                streams: (0..a.subscriptions).filter(|g| g % subscribed == k).count(),
                waits: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let senders = connect_all(listen, a.connections).await?;
    let mut opens = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.open_rate.max(0.001)));
    for g in 0..a.subscriptions {
        tick.tick().await;
        let mut send = senders[g / per_conn].clone();
        let slot = slots[g % subscribed].clone();
        opens.spawn(async move {
            let t0 = Instant::now();
            let (mut lines, first) = subscribe(&mut send, listen, address_of(g)).await?;
            let took = t0.elapsed();
            let right = contains(&first, b"\"destination\":{");
            let index = g / subscribed;
            tokio::spawn(async move {
                while let Some(line) = lines.next().await {
                    slot.seen(index, &line, Instant::now());
                }
            });
            anyhow::Ok((took, right))
        });
    }
    // The connections live on in their streams' tasks.
    drop(senders);
    let mut firsts = Vec::new();
    let mut wrong = 0;
    while let Some(r) = opens.join_next().await {
        let (took, right) = r??;
        firsts.push(took);
        wrong += usize::from(!right);
    }
    firsts.sort();
    let cpu_subscribed = cpu_seconds(pid);
    let (rss_subscribed, _) = rss_kib(pid);
    println!(
        "  first answer                    {}   (goal p99 <= 5 ms; {} streams opened at {}/s)",
        spread(&firsts),
        firsts.len(),
        a.open_rate
    );
    println!(
        "  resubscribe storm               all {} answered after {:.3} s (every stream opened at \
         once on {} new connections; per stream {})",
        storm_firsts.len(),
        storm_all.as_secs_f64(),
        a.connections,
        spread(&storm_firsts)
    );
    if wrong > 0 {
        problems.push(format!(
            "{wrong} first answers had no destination (expected a Service)"
        ));
    }

    // Steady churn: change r goes to subscribed Service r % subscribed.
    let mut churn = Churn {
        shape,
        ips: HashMap::new(),
        next: 0,
    };
    let patience = Duration::from_secs(a.patience_secs);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate.max(0.001)));
    for r in 0..a.changes {
        tick.tick().await;
        let k = r % subscribed;
        let t0 = Instant::now();
        // Expected before it is written, so that no stream can see it first.
        slots[k].expect(&churn.marker(1), t0);
        churn.change(&server, k * stride)?;
    }
    settle(&slots, patience).await;
    let (steady, missed) = harvest(&slots);
    println!(
        "  endpoint change to every stream {}   (goal p99 <= 100 ms; {} changes at {}/s, {} stream \
         updates timed)",
        spread(&steady),
        a.changes,
        a.rate,
        steady.len()
    );
    if missed > 0 {
        problems.push(format!(
            "{missed} stream updates of the steady churn never arrived within {patience:?}"
        ));
    }

    // Burst: every change written at once; each Service's streams are timed on its last change.
    let burst_start = Instant::now();
    let mut last: HashMap<usize, String> = HashMap::new();
    let planned: Vec<usize> = (0..a.burst).map(|b| b % subscribed).collect();
    // Each Service's last change is expected before anything is written.
    for (ahead, k) in (1..).zip(&planned) {
        last.insert(*k, churn.marker(ahead));
    }
    for (k, marker) in &last {
        slots[*k].expect(marker, burst_start);
    }
    for k in &planned {
        churn.change(&server, k * stride)?;
    }
    let written = burst_start.elapsed();
    settle(&slots, patience).await;
    let (burst, missed) = harvest(&slots);
    let caught_up = burst.last().copied().unwrap_or_default();
    println!(
        "  burst of {} changes           all streams caught up after {:.3} s (changes written in \
         {:.3} s; {} streams, median {:.3} s)",
        a.burst,
        caught_up.as_secs_f64(),
        written.as_secs_f64(),
        burst.len(),
        percentile(&burst, 0.5).as_secs_f64()
    );
    if missed > 0 {
        problems.push(format!(
            "{missed} streams never saw the last change of the burst within {patience:?}"
        ));
    }
    let (rss_churned, peak) = rss_kib(pid);
    let cpu_end = cpu_seconds(pid);
    control.alive()?;
    println!(
        "  control RSS                     peak {} MiB, now {} MiB (after the list {}, after \
         subscribing {}; goal <= 300 MB)",
        mib(peak),
        mib(rss_churned),
        mib(rss_loaded),
        mib(rss_subscribed)
    );
    println!(
        "  control CPU                     {:.2} s (initial list {:.2} s, subscriptions {:.2} s, \
         changes {:.2} s)",
        cpu_end,
        cpu_loaded,
        cpu_subscribed - cpu_loaded,
        cpu_end - cpu_subscribed
    );
    println!(
        "  anchor: istiod is documented at about 1 vCPU and 1.5 GB for 1,000 Services and 2,000 \
         sidecars"
    );
    if !problems.is_empty() {
        bail!("incomplete measurement: {}", problems.join("; "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The proxy

/// The Service clusters the proxy has, with their host counts (from `/clusters`).
async fn clusters(admin: SocketAddr) -> anyhow::Result<HashMap<String, usize>> {
    let r = kit::http::get(admin, "/clusters").await?;
    let mut hosts: HashMap<String, usize> = HashMap::new();
    for line in r.body.lines().filter(|l| l.starts_with("outbound|")) {
        let mut parts = line.split("::");
        let (Some(name), Some(_host), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if key == "pod" {
            *hosts.entry(name.to_string()).or_default() += 1;
        }
    }
    Ok(hosts)
}

/// One connection through the capture, as the app would make it: a GET, read to the end; the
/// status line (the endpoints are unreachable, so the proxy answers 503).
async fn call(address: SocketAddr) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(address).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    Ok(text
        .split_whitespace()
        .nth(1)
        .unwrap_or("no-answer")
        .to_string())
}

async fn proxy_bench(a: ProxyArgs) -> anyhow::Result<()> {
    let shape = Shape {
        services: a.destinations,
        namespaces: 10,
        per_service: a.endpoints_per_service,
    };
    let server = shape.load()?;
    let (mut control, listen, metrics) = start_control(&a.control, &server, &a.work)?;
    let patience = Duration::from_secs(a.patience_secs);
    wait_ok(&mut control, metrics, "/ready", patience).await?;

    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={}", a.uid),
        format!("--regid={}", a.uid),
        "--clear-groups".into(),
    ])
    .arg(&a.proxy)
    .args(["--control-plane", &listen.to_string()])
    .args(["--admin-listen", &a.admin.to_string()])
    .args(["--log-level", "warn"]);
    let mut proxy = Proc::spawn("proxy", cmd, a.work.join("proxy.log"))?;
    wait_ok(&mut proxy, a.admin, "/ready", patience).await?;
    // Whatever start-up allocates lazily, once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (idle, _) = rss_kib(proxy.pid());

    let gate = Arc::new(tokio::sync::Semaphore::new(20));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..a.destinations {
        let gate = gate.clone();
        calls.spawn(async move {
            let _permit = gate.acquire().await;
            tokio::time::timeout(Duration::from_secs(15), call(Shape::address(i)))
                .await
                .unwrap_or_else(|_| Ok("timeout".into()))
                .unwrap_or_else(|e| format!("error ({e})"))
        });
    }
    let mut statuses: HashMap<String, usize> = HashMap::new();
    while let Some(s) = calls.join_next().await {
        *statuses.entry(s?).or_default() += 1;
    }

    let deadline = Instant::now() + patience;
    let full = loop {
        proxy.alive()?;
        let c = clusters(a.admin).await?;
        let full = c
            .values()
            .filter(|h| **h == a.endpoints_per_service)
            .count();
        if full >= a.destinations || Instant::now() > deadline {
            break full;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (now, peak) = rss_kib(proxy.pid());
    let mut answers: Vec<_> = statuses.into_iter().collect();
    answers.sort();
    let mut said = String::new();
    for (s, n) in &answers {
        let _ = write!(said, "{}{n}x {s}", if said.is_empty() { "" } else { ", " });
    }
    println!(
        "  proxy RSS, {} destinations x {} endpoints  {} MiB (0 destinations: {} MiB; goal <= 20 \
         MB; peak {} MiB; {full} Service clusters with {} hosts; the app's calls: {said})",
        a.destinations,
        a.endpoints_per_service,
        mib(now),
        mib(idle),
        mib(peak),
        a.endpoints_per_service
    );
    if full < a.destinations {
        bail!(
            "incomplete measurement: the proxy learned {full} of {} destinations within {patience:?}",
            a.destinations
        );
    }
    Ok(())
}

//! `proxy`: the Trellis sidecar, an Envoy-equivalent data plane.
//!
//! Sidecar mode accepts connections redirected by `proxyinit` (outbound on 15001, inbound on 15006),
//! reads their original destination, and forwards them through per-destination clusters whose
//! connection pools enforce Envoy's circuit-breaker limits. [`Config`] lives in the `config` crate,
//! from which the webhook renders the sidecar's args.
//!
//! Layers, one module each: [`listener`] (accept, destination, loops) → [`detect`] →
//! [`http`] (over [`h1`], [`iobuf`]; per request [`router`]) / [`http2`] (per stream, over h2 and [`gather`]) / [`tcp`] (both bounded by [`idle`]) → [`cluster`] (a [`pool`] + stats + connector) ; [`stats`], [`admin`],
//! [`access_log`], [`drain`], [`request_id`] beside them.
#![forbid(unsafe_code)]

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod app_health;
pub(crate) mod balancer;
pub(crate) mod cluster;
pub(crate) mod detect;
pub(crate) mod discovery;
pub(crate) mod drain;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod gather;
pub(crate) mod h1;
pub(crate) mod host;
pub(crate) mod http;
pub(crate) mod http2;
pub(crate) mod idle;
pub(crate) mod iobuf;
pub(crate) mod listener;
pub(crate) mod orig_dst;
pub(crate) mod outlier;
pub(crate) mod pool;
pub(crate) mod prevent_loop;
pub(crate) mod request_id;
pub(crate) mod router;
pub(crate) mod stats;
pub(crate) mod tcp;

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use config::proxy::Config;
pub use config::Limits;

use crate::access_log::AccessLog;
use crate::cluster::{Cluster, Clusters};
use crate::drain::Drain;
use crate::listener::{bind, Direction, Listener};
use crate::stats::Registry;

/// What this process serves.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Transparent inbound + outbound capture listeners.
    Sidecar,
    /// One explicit listener in front of one upstream, or of a Gateway's routes.
    Gateway { listen: SocketAddr, to: GatewayTo },
}

/// What a gateway serves.
#[derive(Debug, Clone)]
pub enum GatewayTo {
    /// `--upstream HOST:PORT` (a Service's routes and policy apply when the control plane knows
    /// the address).
    Upstream(String),
    /// `--gateway NAMESPACE/NAME`: the HTTPRoutes attached to that Gateway.
    Routes(config::api::ServiceRef),
}

impl std::fmt::Display for GatewayTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatewayTo::Upstream(u) => write!(f, "{u}"),
            GatewayTo::Routes(g) => write!(f, "gateway {g}"),
        }
    }
}

/// Changes the log filter at run time (`POST /logging`).
pub type LogControl = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The state shared by every listener and the admin API.
pub struct Proxy {
    pub config: Config,
    pub mode: &'static str,
    pub gateway: Option<(SocketAddr, String)>,
    pub registry: Registry,
    pub clusters: Clusters,
    /// The control-plane client, with `--control-plane`.
    pub discovery: Option<Arc<discovery::Discovery>>,
    pub drain: Drain,
    pub access_log: Option<AccessLog>,
    pub started: Instant,
    log_control: Option<LogControl>,
    log_level: Mutex<String>,
}

impl Proxy {
    pub fn log_level(&self) -> String {
        self.log_level.lock().expect("log level lock").clone()
    }

    pub fn set_log_level(&self, level: &str) -> Result<(), String> {
        let level = config::parse::parse_log_level(level).map_err(|e| e.to_string())?;
        if let Some(f) = &self.log_control {
            f(&level)?;
        }
        *self.log_level.lock().expect("log level lock") = level;
        Ok(())
    }

    pub fn timeouts(&self) -> cluster::Timeouts {
        cluster::Timeouts {
            connect: self.config.connect_timeout,
            idle: self.config.idle_timeout,
        }
    }

    /// `/quitquitquit`: every listener stops accepting at once (see [`drain`]).
    pub fn begin_drain(&self) {
        self.registry.live.set(0);
        self.drain.quit();
    }

    /// SIGTERM: not ready; inbound tells callers to leave, outbound serves on (see [`drain`]).
    pub fn begin_terminate(&self) {
        self.registry.live.set(0);
        self.drain.terminate();
    }
}

/// Worker threads: `--concurrency`, else the CPUs this process may use (cgroup quota aware).
pub fn worker_threads(config: &Config) -> usize {
    config
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Runs until drained; returns when [`drain`]'s plan says so: after SIGTERM, once no connection
/// is left after `--drain-time` (the outbound listener serving the app all along), at the latest
/// after `max(--drain-time, 30 s)`; after `/quitquitquit` or SIGINT, once in-flight work finished,
/// at the latest after `--drain-time`.
pub async fn run(
    config: Config,
    mode: Mode,
    log_control: Option<LogControl>,
) -> anyhow::Result<()> {
    let gateway = match &mode {
        Mode::Gateway { listen, to } => Some((*listen, to.to_string())),
        Mode::Sidecar => None,
    };
    let proxy = Arc::new(Proxy {
        mode: if gateway.is_some() {
            "gateway"
        } else {
            "sidecar"
        },
        gateway,
        registry: Registry::default(),
        clusters: Clusters::default(),
        discovery: config.control_plane.as_ref().map(|cp| {
            Arc::new(discovery::Discovery::new(
                cp.clone(),
                config.cluster_domain.clone(),
            ))
        }),
        drain: Drain::default(),
        access_log: config.access_log.then(AccessLog::spawn),
        started: Instant::now(),
        log_level: Mutex::new(config.log_level.clone()),
        log_control,
        config,
    });
    proxy
        .registry
        .concurrency
        .set(worker_threads(&proxy.config) as i64);
    if let Some(cp) = &proxy.config.control_plane {
        proxy
            .registry
            .control_plane_connected
            .get_or_init(Default::default);
        tracing::info!(control_plane = %cp, "outbound destinations are asked of the control plane");
    }

    let mut listeners = Vec::new();
    match &mode {
        Mode::Gateway {
            listen,
            to: GatewayTo::Routes(gw),
        } => {
            let Some(d) = &proxy.discovery else {
                anyhow::bail!("--gateway {gw} needs --control-plane: the routes come from it");
            };
            let routes = d.watch_gateway(&proxy, gw.clone());
            let tcp = bind(*listen).with_context(|| format!("binding --listen {listen}"))?;
            tracing::info!(listen = %tcp.local_addr()?, gateway = %gw, "gateway listener");
            listeners.push(Listener {
                proxy: proxy.clone(),
                dir: Direction::Gateway,
                tcp,
                fixed: Some(router::Upstream::Routed {
                    default: None,
                    routes,
                }),
            });
        }
        Mode::Gateway {
            listen,
            to: GatewayTo::Upstream(upstream),
        } => {
            let addr = tokio::net::lookup_host(upstream.as_str())
                .await
                .with_context(|| format!("resolving --upstream {upstream}"))?
                .next()
                .with_context(|| format!("--upstream {upstream} resolved to no address"))?;
            // A Service address known to the control plane is balanced over its pods.
            let service = match &proxy.discovery {
                Some(d) => {
                    d.resolve_within(&proxy, addr, std::time::Duration::from_secs(10))
                        .await
                }
                None => None,
            };
            let up = match service {
                Some(up) => up,
                None => {
                    let cluster = Cluster::new(
                        upstream.clone(),
                        addr,
                        proxy.config.pools.inbound,
                        proxy.timeouts(),
                        &proxy.registry,
                    );
                    router::Upstream::Cluster(proxy.clusters.get_or_create(
                        upstream,
                        &proxy.registry,
                        || cluster.clone(),
                    ))
                }
            };
            let tcp = bind(*listen).with_context(|| format!("binding --listen {listen}"))?;
            tracing::info!(listen = %tcp.local_addr()?, %upstream, "gateway listener");
            listeners.push(Listener {
                proxy: proxy.clone(),
                dir: Direction::Gateway,
                tcp,
                fixed: Some(up),
            });
        }
        Mode::Sidecar => {
            for (dir, port) in [
                (Direction::Inbound, proxy.config.inbound_capture_port),
                (Direction::Outbound, proxy.config.outbound_capture_port),
            ] {
                let v4: SocketAddr = ([0, 0, 0, 0], port).into();
                let tcp = bind(v4)
                    .with_context(|| format!("binding the {} listener {v4}", dir.name()))?;
                tracing::info!(listen = %v4, "{} capture listener", dir.name());
                listeners.push(Listener {
                    proxy: proxy.clone(),
                    dir,
                    tcp,
                    fixed: None,
                });
                // IPv6 when the pod has it; fine without.
                let v6: SocketAddr = (Ipv6Addr::UNSPECIFIED, port).into();
                match bind(v6) {
                    Ok(tcp) => listeners.push(Listener {
                        proxy: proxy.clone(),
                        dir,
                        tcp,
                        fixed: None,
                    }),
                    Err(e) => tracing::debug!(error = %e, "no IPv6 {} listener", dir.name()),
                }
            }
        }
    }
    let admin_addr = proxy.config.admin_listen;
    let admin = listener::bind_admin(admin_addr)
        .with_context(|| format!("binding --admin-listen {admin_addr}"))?;
    tracing::info!(listen = %admin.local_addr()?, "admin listener");
    for l in listeners {
        tokio::spawn(l.run());
    }
    // The kubelet's rewritten probes (issue 15), served beside the data path, never through it.
    if let Some(probes) = proxy.config.app_probes.clone().filter(|p| !p.is_empty()) {
        let probes = Arc::new(probes);
        let port = proxy.config.app_health_port;
        let v4: SocketAddr = ([0, 0, 0, 0], port).into();
        let l = bind(v4).with_context(|| format!("binding the app-health listener {v4}"))?;
        tracing::info!(listen = %v4, "app-health listener");
        tokio::spawn(app_health::serve(probes.clone(), l));
        match bind((Ipv6Addr::UNSPECIFIED, port).into()) {
            Ok(l) => drop(tokio::spawn(app_health::serve(probes, l))),
            Err(e) => tracing::debug!(error = %e, "no IPv6 app-health listener"),
        }
    }
    tokio::spawn(admin::serve(proxy.clone(), admin));
    proxy.registry.live.set(1);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let sigterm = tokio::select! {
        _ = term.recv() => true,
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT: stopping every listener");
            proxy.begin_drain();
            false
        }
        _ = proxy.drain.quitting() => false,
    };
    shutdown(&proxy, sigterm).await;
    Ok(())
}

/// The shell around [`drain::Plan`]: moves the listeners through their phases, then waits for the
/// connections, never past the plan's bound.
async fn shutdown(proxy: &Proxy, sigterm: bool) {
    use tokio::time::{sleep_until, Instant};
    let drain_time = proxy.config.drain_time;
    let start = Instant::now();
    let mut quit = !sigterm;
    let plan = if sigterm {
        drain::Plan::after_sigterm(drain_time, proxy.config.drain_max)
    } else {
        drain::Plan::after_quit(drain_time)
    };
    let mut last = later(start, plan.at_most);
    if sigterm {
        proxy.begin_terminate();
        tracing::info!(
            "SIGTERM: /ready 503; outbound keeps serving the app; inbound answers with \
             `connection: close` for {}, then stops accepting; exit once no connection is \
             left, at the latest {} after SIGTERM",
            config::format_duration(plan.inbound_open_for),
            config::format_duration(plan.at_most)
        );
        tokio::select! {
            () = tokio::time::sleep(plan.inbound_open_for) => {}
            () = proxy.drain.quitting() => {
                quit = true;
                last = last.min(later(Instant::now(), drain_time));
            }
        }
        proxy.drain.close_inbound();
    }
    loop {
        tokio::select! {
            () = proxy.drain.idle() => {
                tracing::info!(
                    after = %config::format_duration(start.elapsed()),
                    "drained: no connection left"
                );
                return;
            }
            () = sleep_until(last) => break,
            () = proxy.drain.quitting(), if !quit => {
                quit = true;
                last = last.min(later(Instant::now(), drain_time));
            }
        }
    }
    tracing::warn!(
        inbound = proxy.drain.active(drain::Side::Inbound),
        outbound = proxy.drain.active(drain::Side::Outbound),
        "drain bound ({}) reached: closing the connections left",
        config::format_duration(last - start)
    );
}

/// `t + d`, or for a duration past any clock (a pod's `terminationGracePeriodSeconds` is an
/// i64, rendered as `--drain-max`) a time a century on: no bound of ours, rather than a panic.
fn later(t: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 24 * 3600))
}

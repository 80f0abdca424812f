//! The injection decision and the patch: a pure function from a pod (and the injector's settings)
//! to "skip, and why", "deny, and why", or a JSON patch adding `proxyinit` and `proxy`.
//!
//! The patch is computed against the pod exactly as received, so it works whatever the pod has or
//! lacks (missing arrays and maps are created, `/` in keys is escaped as `~1`), and the same pod
//! always gives a byte-identical patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe, ResourceRequirements, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use config::probes::{self, AppProbe, AppProbes, ProbeKind};
use config::{proxy, proxyinit, CidrList, PortSpec, Render as _};

use crate::annotations::{self, AnnotationError, PodSettings};
use crate::echo;
use crate::injector::InjectorConfig;
use crate::pod::{LimitError, PodView, SpecView, DEFAULT_CONTAINER, DEFAULT_LOGS_CONTAINER};

pub const PROXY: &str = "proxy";
pub const PROXYINIT: &str = "proxyinit";
/// emptyDir mounted at `/run` in `proxyinit`, whose root filesystem is read-only, for the xtables lock.
pub const RUN_VOLUME: &str = "trellis-run";
pub const ADMIN_PORT_NAME: &str = "trellis-admin";

/// Why a pod was left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    HostNetwork,
    AlreadyInjected,
    OptedOut,
    OwnPod,
    NameConflict,
}

impl SkipReason {
    /// The label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::HostNetwork => "host_network",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::OptedOut => "opted_out",
            SkipReason::OwnPod => "own_pod",
            SkipReason::NameConflict => "name_conflict",
        }
    }
}

/// What the injector decided for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Add the sidecar with this JSON patch (RFC 6902 operations); the warnings (probes left as
    /// written, and why) are shown to the user.
    Inject {
        patch: json_patch::Patch,
        warnings: Vec<String>,
    },
    /// Leave the pod unchanged; a warning is shown to the user when there is one.
    Skip {
        reason: SkipReason,
        warning: Option<String>,
    },
    /// Refuse the pod: one of its Trellis annotations is invalid, or it is over a cap.
    Deny(Refusal),
}

/// Why a pod was refused; the message is shown to whoever created it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// An app port the sidecar itself listens on (its admin or capture ports).
    #[error("trellis: the pod's ports clash with the sidecar's: {0}")]
    Ports(#[from] config::ConfigError),
    /// The namespace forbids what injection adds (its Pod Security level and `proxyinit`'s
    /// capabilities): the veto's message, answered with 403 rather than 400.
    #[error("{0}")]
    Forbidden(String),
}

/// What `trellis.dev/status` records: what was injected, for idempotency and removal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    pub init_containers: Vec<String>,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    pub native_sidecar: bool,
}

/// Decides for `pod` and, when injecting, builds the patch.
pub fn inject(pod: &PodView, cfg: &InjectorConfig) -> Outcome {
    inject_unless(pod, cfg, &|| None)
}

/// [`inject`], where `veto` is asked once the pod would be injected, before the patch is built:
/// a message refuses the pod ([`Refusal::Forbidden`]) and no patch is built for nothing.
pub fn inject_unless(
    pod: &PodView,
    cfg: &InjectorConfig,
    veto: &dyn Fn() -> Option<String>,
) -> Outcome {
    let empty = BTreeMap::new();
    let pod_annotations = pod.annotations().map_or(&empty, |a| &a.trellis);
    let skip = |reason| Outcome::Skip {
        reason,
        warning: None,
    };

    // Over a cap, part of the pod was not read: no decision can be made on it.
    if let Err(e) = pod.check() {
        return Outcome::Deny(e.into());
    }
    if pod_annotations.contains_key(annotations::STATUS) {
        return skip(SkipReason::AlreadyInjected);
    }
    if pod.is_own_pod() {
        return skip(SkipReason::OwnPod);
    }
    // Validate before anything else that could skip, so a typo never passes silently.
    let settings = match PodSettings::parse(pod_annotations) {
        Ok(s) => s,
        Err(e) => return Outcome::Deny(e.into()),
    };
    if settings.inject == Some(false) {
        return skip(SkipReason::OptedOut);
    }
    let Some(spec) = pod.spec() else {
        return skip(SkipReason::OptedOut);
    };
    if spec.host_network() {
        return skip(SkipReason::HostNetwork);
    }
    let taken = spec
        .containers()
        .iter()
        .chain(spec.init_containers())
        .map(|c| c.name())
        .find(|n| *n == PROXY || *n == PROXYINIT);
    if let Some(name) = taken {
        return Outcome::Skip {
            reason: SkipReason::NameConflict,
            warning: Some(format!(
                "trellis: sidecar not injected: the pod already has a container named {name:?}; \
                 rename it, or set trellis.dev/inject: disabled to silence this warning"
            )),
        };
    }
    if let Err(e) = proxyinit_config(pod, cfg, &settings).validate() {
        return Outcome::Deny(e.into());
    }
    if let Some(message) = veto() {
        return Outcome::Deny(Refusal::Forbidden(message));
    }
    let probes = if settings.rewrite_probes == Some(false) {
        ProbeRewrite::default()
    } else {
        rewrite_probes(spec, config::defaults::APP_HEALTH_PORT)
    };
    Outcome::Inject {
        patch: build_patch(pod, cfg, &settings, &probes),
        warnings: probes.warnings,
    }
}

/// The app containers' probes moved to the proxy's app-health port: what the proxy is told
/// (`TRELLIS_APP_PROBES`), the probes that replace them, and why any was left as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeRewrite {
    pub probes: AppProbes,
    /// `(container index, kind, the probe that replaces the original)`.
    pub replaced: Vec<(usize, ProbeKind, Probe)>,
    pub warnings: Vec<String>,
}

/// Rewrites every `httpGet`, `tcpSocket` and `grpc` probe of the app containers to an `httpGet` on
/// `health_port` at `/app-health/<container>/<kind>`, keeping its timing fields. `exec` probes
/// stay as they are; a named port the container does not declare leaves its probe as written,
/// with a warning.
pub fn rewrite_probes(spec: &SpecView, health_port: u16) -> ProbeRewrite {
    let mut out = ProbeRewrite::default();
    for (i, c) in spec.containers().iter().enumerate() {
        for kind in ProbeKind::ALL {
            let Some(p) = c.probe(kind) else { continue };
            let name = c.name();
            let warn = |why: String| {
                format!(
                    "trellis: container {:?} {}: left as written: {why}",
                    echo::shown(name),
                    kind.field()
                )
            };
            let resolve = |port: &IntOrString| -> Result<u16, String> {
                match port {
                    IntOrString::Int(n) => u16::try_from(*n)
                        .ok()
                        .filter(|n| *n != 0)
                        .ok_or_else(|| format!("port {n} is not from 1 to 65535")),
                    IntOrString::String(s) => match s.parse::<i32>() {
                        Ok(n) => u16::try_from(n)
                            .ok()
                            .filter(|n| *n != 0)
                            .ok_or_else(|| format!("port {n} is not from 1 to 65535")),
                        Err(_) => c.named_port(s).ok_or_else(|| {
                            format!(
                                "the named port {:?} is not among the container's ports",
                                echo::shown(s)
                            )
                        }),
                    },
                }
            };
            let action = if let Some(h) = &p.http_get {
                resolve(&h.port).map(|port| AppProbe {
                    http_get: Some(probes::HttpGet {
                        port,
                        path: h
                            .path
                            .clone()
                            .filter(|p| !p.is_empty())
                            .unwrap_or("/".into()),
                        scheme: if h.scheme.as_deref() == Some("HTTPS") {
                            probes::Scheme::Https
                        } else {
                            probes::Scheme::Http
                        },
                        host: h.host.clone().filter(|h| !h.is_empty()),
                        http_headers: h
                            .http_headers
                            .iter()
                            .flatten()
                            .map(|hd| probes::Header {
                                name: hd.name.clone(),
                                value: hd.value.clone(),
                            })
                            .collect(),
                    }),
                    tcp_socket: None,
                    grpc: None,
                    timeout_seconds: 1,
                })
            } else if let Some(t) = &p.tcp_socket {
                resolve(&t.port).map(|port| AppProbe {
                    http_get: None,
                    tcp_socket: Some(probes::TcpSocket {
                        port,
                        host: t.host.clone().filter(|h| !h.is_empty()),
                    }),
                    grpc: None,
                    timeout_seconds: 1,
                })
            } else if let Some(g) = &p.grpc {
                resolve(&IntOrString::Int(g.port)).map(|port| AppProbe {
                    http_get: None,
                    tcp_socket: None,
                    grpc: Some(probes::Grpc {
                        port,
                        service: g.service.clone().filter(|s| !s.is_empty()),
                    }),
                    timeout_seconds: 1,
                })
            } else {
                // `exec` (or nothing): the kubelet runs it in the container, no network involved.
                continue;
            };
            let mut probe = match action {
                Ok(a) => a,
                Err(why) => {
                    out.warnings.push(warn(why));
                    continue;
                }
            };
            if !probes::is_dns_label(name) {
                out.warnings
                    .push(warn("the container name is not a DNS label".into()));
                continue;
            }
            probe.timeout_seconds = p
                .timeout_seconds
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t >= 1)
                .unwrap_or(1);
            let single = AppProbes(BTreeMap::from([(
                name.to_string(),
                BTreeMap::from([(kind, probe.clone())]),
            )]));
            if let Err(e) = single.validate() {
                out.warnings.push(warn(e.to_string()));
                continue;
            }
            out.probes.insert(name, kind, probe);
            out.replaced.push((
                i,
                kind,
                Probe {
                    http_get: Some(HTTPGetAction {
                        path: Some(probes::path(name, kind)),
                        port: IntOrString::Int(health_port.into()),
                        scheme: Some("HTTP".into()),
                        ..Default::default()
                    }),
                    initial_delay_seconds: p.initial_delay_seconds,
                    period_seconds: p.period_seconds,
                    timeout_seconds: p.timeout_seconds,
                    success_threshold: p.success_threshold,
                    failure_threshold: p.failure_threshold,
                    termination_grace_period_seconds: p.termination_grace_period_seconds,
                    ..Default::default()
                },
            ));
        }
    }
    out
}

/// The `proxyinit` configuration for this pod, the same type the init container parses.
pub fn proxyinit_config(pod: &PodView, cfg: &InjectorConfig, s: &PodSettings) -> proxyinit::Config {
    let inbound_ports = s.inbound_ports.clone().unwrap_or_else(|| {
        let mut ports: Vec<u16> = app_container_ports(pod).collect();
        ports.sort_unstable();
        ports.dedup();
        PortSpec::List(ports)
    });
    let mut c = proxyinit::Config {
        proxy_uid: cfg.proxy_uid,
        proxy_gid: cfg.proxy_gid,
        inbound_capture_port: cfg.inbound_capture_port,
        outbound_capture_port: cfg.outbound_capture_port,
        proxy_admin_port: cfg.proxy_admin_port,
        inbound_ports,
        exclude_inbound_ports: s.exclude_inbound_ports.clone(),
        exclude_outbound_ports: s.exclude_outbound_ports.clone(),
        ..proxyinit::Config::default()
    };
    if let Some(cidrs) = &s.exclude_outbound_ip_ranges {
        c.exclude_outbound_cidrs = CidrList::new(cidrs.iter().copied());
    }
    c
}

/// The `proxy` configuration for this pod, the same type the sidecar parses.
pub fn proxy_config(cfg: &InjectorConfig, s: &PodSettings, pod: &PodView) -> proxy::Config {
    let d = proxy::Config::default();
    // The proxy stays for the app's outbound calls as long as the kubelet lets the pod live.
    let grace = pod.spec().and_then(|s| s.termination_grace_period());
    proxy::Config {
        admin_listen: std::net::SocketAddr::new(d.admin_listen.ip(), cfg.proxy_admin_port),
        inbound_capture_port: cfg.inbound_capture_port,
        outbound_capture_port: cfg.outbound_capture_port,
        pools: s.pools,
        opaque_ports: s.opaque_ports.clone(),
        access_log: s.access_log,
        log_level: s.log_level.clone().unwrap_or(d.log_level.clone()),
        control_plane: (!cfg.control_plane.is_empty()).then(|| cfg.control_plane.clone()),
        cluster_domain: cfg.cluster_domain.clone(),
        request_timeout: s.request_timeout.unwrap_or(d.request_timeout),
        idle_timeout: s.idle_timeout.unwrap_or(d.idle_timeout),
        drain_time: s.drain_time.unwrap_or(d.drain_time),
        drain_max: grace.unwrap_or(d.drain_max),
        ..d
    }
}

/// TCP containerPorts of the app containers (the pod as received, before injection).
fn app_container_ports(pod: &PodView) -> impl Iterator<Item = u16> + '_ {
    pod.spec()
        .into_iter()
        .flat_map(|s| s.containers())
        .flat_map(|c| c.tcp_ports())
}

fn build_patch(
    pod: &PodView,
    cfg: &InjectorConfig,
    s: &PodSettings,
    probes: &ProbeRewrite,
) -> json_patch::Patch {
    let spec = pod.spec().expect("checked by inject");
    let mut ops: Vec<Value> = Vec::new();

    // First, while the containers' indices are still those of the pod as received.
    for (i, kind, probe) in &probes.replaced {
        ops.push(json!({
            "op": "replace",
            "path": format!("/spec/containers/{i}/{}", kind.field()),
            "value": to_value(probe),
        }));
    }

    let init = proxyinit_container(pod, cfg, s);
    let mut proxy = proxy_container(cfg, s, pod);
    if !probes.probes.is_empty() {
        proxy.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: config::probes::ENV.into(),
            value: Some(probes.probes.to_string()),
            ..Default::default()
        });
    }
    let has_init = spec.has_init_containers();
    if s.native_sidecar {
        // proxyinit, then the proxy as a restartable init container, before the user's init
        // containers: the kubelet waits for its startup probe before starting anything else.
        if has_init {
            ops.push(add("/spec/initContainers/0", to_value(&proxy)));
            ops.push(add("/spec/initContainers/0", to_value(&init)));
        } else {
            ops.push(add(
                "/spec/initContainers",
                json!([to_value(&init), to_value(&proxy)]),
            ));
        }
    } else {
        // After the user's init containers, so they keep a working network.
        if has_init {
            ops.push(add("/spec/initContainers/-", to_value(&init)));
        } else {
            ops.push(add("/spec/initContainers", json!([to_value(&init)])));
        }
        // First among containers: with its postStart hook the app starts only once it is ready.
        ops.push(add("/spec/containers/0", to_value(&proxy)));
    }

    let volume = Volume {
        name: RUN_VOLUME.into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    };
    if spec.has_volumes() {
        ops.push(add("/spec/volumes/-", to_value(&volume)));
    } else {
        ops.push(add("/spec/volumes", json!([to_value(&volume)])));
    }

    let status = Status {
        version: env!("CARGO_PKG_VERSION").into(),
        init_containers: if s.native_sidecar {
            vec![PROXYINIT.into(), PROXY.into()]
        } else {
            vec![PROXYINIT.into()]
        },
        containers: if s.native_sidecar {
            vec![]
        } else {
            vec![PROXY.into()]
        },
        volumes: vec![RUN_VOLUME.into()],
        native_sidecar: s.native_sidecar,
    };
    let mut added: BTreeMap<String, String> = BTreeMap::new();
    added.insert(
        annotations::STATUS.into(),
        serde_json::to_string(&status).expect("serializable"),
    );
    let existing = pod.annotations();
    if !existing.is_some_and(|a| a.prometheus) {
        added.insert("prometheus.io/scrape".into(), "true".into());
        added.insert(
            "prometheus.io/port".into(),
            cfg.proxy_admin_port.to_string(),
        );
        added.insert("prometheus.io/path".into(), "/stats/prometheus".into());
    }
    // `kubectl exec`, `attach` and `logs` land in the app's first container, not in `proxy`
    // (which injection puts first); a value the pod already has is never overwritten.
    if let Some(app) = spec.containers().first().filter(|c| !c.name().is_empty()) {
        if !existing.is_some_and(|a| a.default_container) {
            added.insert(DEFAULT_CONTAINER.into(), app.name().into());
        }
        if !existing.is_some_and(|a| a.default_logs_container) {
            added.insert(DEFAULT_LOGS_CONTAINER.into(), app.name().into());
        }
    }
    if existing.is_some() {
        for (k, v) in added {
            ops.push(add(
                &format!("/metadata/annotations/{}", escape(&k)),
                Value::String(v),
            ));
        }
    } else {
        ops.push(add("/metadata/annotations", json!(added)));
    }

    serde_json::from_value(Value::Array(ops)).expect("well-formed patch operations")
}

fn add(path: &str, value: Value) -> Value {
    json!({ "op": "add", "path": path, "value": value })
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("k8s-openapi types serialize")
}

/// JSON Pointer escaping (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn proxyinit_container(pod: &PodView, cfg: &InjectorConfig, s: &PodSettings) -> Container {
    Container {
        name: PROXYINIT.into(),
        image: Some(cfg.proxyinit_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(vec![PROXYINIT.into()]),
        args: Some(proxyinit_config(pod, cfg, s).to_args()),
        resources: Some(resources(
            &[("cpu", "10m"), ("memory", "10Mi")],
            &[("cpu", "100m"), ("memory", "50Mi")],
        )),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: RUN_VOLUME.into(),
            mount_path: "/run".into(),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn proxy_container(cfg: &InjectorConfig, s: &PodSettings, pod: &PodView) -> Container {
    let pcfg = proxy_config(cfg, s, pod);
    let args = pcfg.to_args();
    let ready_probe = |period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ready".into()),
            port: IntOrString::Int(cfg.proxy_admin_port.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut wait_ready = vec![PROXY.to_string(), "wait-ready".to_string()];
    if pcfg.admin_listen != config::defaults::admin_listen() {
        wait_ready.push(format!("--admin-listen={}", pcfg.admin_listen));
    }
    let cpu_req = s
        .proxy_cpu_request
        .as_deref()
        .unwrap_or(&cfg.proxy_cpu_request);
    let mem_req = s
        .proxy_memory_request
        .as_deref()
        .unwrap_or(&cfg.proxy_memory_request);
    let mut limits = Vec::new();
    if let Some(cpu) = s
        .proxy_cpu_limit
        .as_deref()
        .or(cfg.proxy_cpu_limit.as_deref())
    {
        limits.push(("cpu", cpu));
    }
    if let Some(mem) = s
        .proxy_memory_limit
        .as_deref()
        .or(cfg.proxy_memory_limit.as_deref())
    {
        limits.push(("memory", mem));
    }
    let mut c = Container {
        name: PROXY.into(),
        image: Some(cfg.proxy_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(vec![PROXY.into()]),
        args: (!args.is_empty()).then_some(args),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.into()),
            container_port: cfg.proxy_admin_port.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
        ]),
        readiness_probe: Some(ready_probe(2, 3)),
        resources: Some(resources(&[("cpu", cpu_req), ("memory", mem_req)], &limits)),
        security_context: Some(SecurityContext {
            run_as_user: Some(cfg.proxy_uid.into()),
            run_as_group: Some(cfg.proxy_gid.into()),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    if s.native_sidecar {
        c.restart_policy = Some("Always".into());
        c.startup_probe = Some(ready_probe(1, 60));
    } else {
        c.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(wait_ready),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    c
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
    let map = |kv: &[(&str, &str)]| -> Option<BTreeMap<String, Quantity>> {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect()
        })
    };
    ResourceRequirements {
        requests: map(requests),
        limits: map(limits),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;

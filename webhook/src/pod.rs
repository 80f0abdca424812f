//! The pod as injection reads it, and nothing more, in memory bounded whatever the body.
//!
//! An AdmissionReview may carry 3 MiB of pod. Decoded into a `serde_json::Value` and then
//! k8s-openapi's `Pod`, 200,000 minimal containers took over 700 MB: one hostile review could get
//! the webhook OOM-killed, and with `failurePolicy: Fail` that blocks pod creation everywhere.
//! [`PodView`] is decoded straight from the request's bytes and keeps only what [`crate::inject`]
//! reads: the `trellis.dev/` annotations (and whether any `prometheus.io/` one exists), whether the
//! pod is the webhook's own, `hostNetwork`, the containers' names, TCP ports and probes, and whether init
//! containers and volumes exist. Everything else is skipped unread.
//!
//! Lists and maps are read up to caps no real pod reaches ([`MAX_CONTAINERS`],
//! [`MAX_INIT_CONTAINERS`], [`MAX_PORTS_PER_CONTAINER`], [`MAX_ANNOTATIONS`]); past a cap the rest
//! is only counted, and [`PodView::check`] refuses the pod with a message naming the count and
//! the cap. Annotations are also held to Kubernetes' own limits (keys of at most
//! [`MAX_ANNOTATION_KEY`] bytes, [`MAX_ANNOTATIONS_BYTES`] in all), which the API server would
//! enforce anyway once admission is done.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use config::probes::ProbeKind;
use k8s_openapi::api::core::v1::Probe;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::annotations::PREFIX;
use crate::echo;
use crate::injector::OWN_POD_LABEL;

/// Most `spec.containers` admitted (real pods have a handful; a few dozen is already rare).
pub const MAX_CONTAINERS: usize = 256;
/// Most `spec.initContainers` admitted.
pub const MAX_INIT_CONTAINERS: usize = 256;
/// Most `ports` one container may declare.
pub const MAX_PORTS_PER_CONTAINER: usize = 1024;
/// Most annotations a pod may carry.
pub const MAX_ANNOTATIONS: usize = 1024;
/// Longest annotation key: Kubernetes allows a DNS-subdomain prefix of up to 253 bytes, `/`, and a
/// name of up to 63.
pub const MAX_ANNOTATION_KEY: usize = 253 + 1 + 63;
/// Most bytes of annotations (keys and values) in all: Kubernetes' own limit, 256 KiB.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// A pod over one of the caps: refused at admission, with the count and the cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("annotation key {key} is {len} bytes long; Kubernetes allows at most {MAX_ANNOTATION_KEY} (a prefix of up to 253, `/`, a name of up to 63)")]
    AnnotationKey { key: String, len: usize },
    #[error("the pod has {count} annotations; Trellis admits at most {MAX_ANNOTATIONS}")]
    Annotations { count: usize },
    #[error("the pod's annotations are {bytes} bytes in all; Kubernetes allows at most {MAX_ANNOTATIONS_BYTES} (256 KiB)")]
    AnnotationsBytes { bytes: usize },
    #[error("the pod has {count} containers; Trellis admits at most {MAX_CONTAINERS}")]
    Containers { count: usize },
    #[error("the pod has {count} initContainers; Trellis admits at most {MAX_INIT_CONTAINERS}")]
    InitContainers { count: usize },
    #[error("container {container:?} declares {count} ports; Trellis admits at most {MAX_PORTS_PER_CONTAINER} per container")]
    Ports { container: String, count: usize },
}

/// What injection reads of a pod (or of a pod template's `metadata` and `spec`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodView {
    #[serde(default)]
    metadata: Option<MetaView>,
    #[serde(default)]
    spec: Option<SpecView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct MetaView {
    #[serde(default)]
    annotations: Option<Annotations>,
    #[serde(default)]
    labels: Option<Labels>,
}

/// The pod's `spec`, as far as injection reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecView {
    #[serde(default)]
    containers: Option<Capped<ContainerView, MAX_CONTAINERS>>,
    #[serde(default)]
    init_containers: Option<Capped<ContainerView, MAX_INIT_CONTAINERS>>,
    #[serde(default)]
    host_network: Option<bool>,
    #[serde(default)]
    termination_grace_period_seconds: Option<i64>,
    /// Only counted: injection needs to know whether the list exists and is empty.
    #[serde(default)]
    volumes: Option<Capped<IgnoredAny, 0>>,
}

/// One container: its name, its ports and its probes (rewritten to the proxy's app-health port).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ports: Option<Capped<PortView, MAX_PORTS_PER_CONTAINER>>,
    #[serde(default)]
    liveness_probe: Option<Probe>,
    #[serde(default)]
    readiness_probe: Option<Probe>,
    #[serde(default)]
    startup_probe: Option<Probe>,
}

/// One `containerPort`, its name, and whether its protocol is TCP (the default).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    #[serde(default)]
    container_port: Option<i32>,
    /// Kept for the named ports of probes (`port: http`); at most 15 characters in a valid pod.
    #[serde(default)]
    name: Option<String>,
    #[serde(
        default = "tcp_default",
        rename = "protocol",
        deserialize_with = "is_tcp"
    )]
    tcp: bool,
}

/// The pod's annotations: the `trellis.dev/` ones kept, the others only measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    /// The `trellis.dev/*` entries.
    pub trellis: BTreeMap<String, String>,
    /// Whether any key starts with `prometheus.io/`.
    pub prometheus: bool,
    /// Whether `kubectl.kubernetes.io/default-container` is set (it is never overwritten).
    pub default_container: bool,
    /// Whether `kubectl.kubernetes.io/default-logs-container` is set.
    pub default_logs_container: bool,
    count: usize,
    bytes: usize,
    /// The first key over [`MAX_ANNOTATION_KEY`]: as shown in a message, and its length.
    long_key: Option<(String, usize)>,
}

/// The pod's labels, reduced to the one injection reads.
#[derive(Debug, Clone, Copy, Default)]
struct Labels {
    own_pod: bool,
}

impl PodView {
    /// Refuses a pod over one of the caps; see the module's documentation.
    pub fn check(&self) -> Result<(), LimitError> {
        if let Some(a) = self.annotations() {
            if let Some((key, len)) = &a.long_key {
                return Err(LimitError::AnnotationKey {
                    key: key.clone(),
                    len: *len,
                });
            }
            if a.count > MAX_ANNOTATIONS {
                return Err(LimitError::Annotations { count: a.count });
            }
            if a.bytes > MAX_ANNOTATIONS_BYTES {
                return Err(LimitError::AnnotationsBytes { bytes: a.bytes });
            }
        }
        let Some(spec) = &self.spec else {
            return Ok(());
        };
        if let Some(c) = &spec.containers {
            if c.len > MAX_CONTAINERS {
                return Err(LimitError::Containers { count: c.len });
            }
        }
        if let Some(c) = &spec.init_containers {
            if c.len > MAX_INIT_CONTAINERS {
                return Err(LimitError::InitContainers { count: c.len });
            }
        }
        for c in spec.containers().iter().chain(spec.init_containers()) {
            if let Some(ports) = &c.ports {
                if ports.len > MAX_PORTS_PER_CONTAINER {
                    return Err(LimitError::Ports {
                        container: echo::shown(c.name()).into_owned(),
                        count: ports.len,
                    });
                }
            }
        }
        Ok(())
    }

    /// `metadata.annotations`, `None` when absent or null.
    pub fn annotations(&self) -> Option<&Annotations> {
        self.metadata.as_ref()?.annotations.as_ref()
    }

    /// Whether the pod carries the webhook's own label ([`OWN_POD_LABEL`]).
    pub fn is_own_pod(&self) -> bool {
        self.metadata
            .as_ref()
            .and_then(|m| m.labels)
            .is_some_and(|l| l.own_pod)
    }

    /// `spec`, `None` when absent or null.
    pub fn spec(&self) -> Option<&SpecView> {
        self.spec.as_ref()
    }
}

impl SpecView {
    /// `containers` (empty when absent or null).
    pub fn containers(&self) -> &[ContainerView] {
        self.containers.as_ref().map_or(&[], |c| &c.items)
    }

    /// `initContainers` (empty when absent or null).
    pub fn init_containers(&self) -> &[ContainerView] {
        self.init_containers.as_ref().map_or(&[], |c| &c.items)
    }

    pub fn has_init_containers(&self) -> bool {
        self.init_containers.as_ref().is_some_and(|c| c.len > 0)
    }

    pub fn has_volumes(&self) -> bool {
        self.volumes.as_ref().is_some_and(|v| v.len > 0)
    }

    pub fn host_network(&self) -> bool {
        self.host_network == Some(true)
    }

    /// `terminationGracePeriodSeconds` (the API server defaults it to 30 before admission).
    pub fn termination_grace_period(&self) -> Option<std::time::Duration> {
        let s = self.termination_grace_period_seconds?;
        Some(std::time::Duration::from_secs(s.max(0).unsigned_abs()))
    }
}

impl ContainerView {
    /// `name` (empty when absent).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The container's probe of this kind, as written.
    pub fn probe(&self, kind: ProbeKind) -> Option<&Probe> {
        match kind {
            ProbeKind::Livez => self.liveness_probe.as_ref(),
            ProbeKind::Readyz => self.readiness_probe.as_ref(),
            ProbeKind::Startupz => self.startup_probe.as_ref(),
        }
    }

    /// The number of the port named `name` in this container's `ports`.
    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.ports
            .iter()
            .flat_map(|p| &p.items)
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port?).ok())
            .filter(|p| *p != 0)
    }

    /// The declared TCP `containerPort`s that are valid port numbers.
    pub fn tcp_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports
            .iter()
            .flat_map(|p| &p.items)
            .filter(|p| p.tcp)
            .filter_map(|p| u16::try_from(p.container_port?).ok().filter(|p| *p != 0))
    }
}

/// A list read up to `CAP` elements; the rest are skipped unread and only counted in `len`.
#[derive(Debug, Clone)]
struct Capped<T, const CAP: usize> {
    items: Vec<T>,
    len: usize,
}

impl<'de, T: Deserialize<'de>, const CAP: usize> Deserialize<'de> for Capped<T, CAP> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const CAP: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const CAP: usize> Visitor<'de> for V<T, CAP> {
            type Value = Capped<T, CAP>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while items.len() < CAP {
                    match seq.next_element::<T>()? {
                        Some(item) => items.push(item),
                        None => {
                            let len = items.len();
                            return Ok(Capped { items, len });
                        }
                    }
                }
                let mut len = items.len();
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    len += 1;
                }
                Ok(Capped { items, len })
            }
        }
        d.deserialize_seq(V::<T, CAP>(PhantomData))
    }
}

fn tcp_default() -> bool {
    true
}

/// `protocol`: `TCP`, absent or null are TCP; any other string is not.
fn is_tcp<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a protocol name")
        }
        fn visit_none<E: de::Error>(self) -> Result<bool, E> {
            Ok(true)
        }
        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(true)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(V)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<bool, E> {
            Ok(s == "TCP")
        }
    }
    d.deserialize_option(V)
}

/// A map key or value seen without being kept: only its length, and for keys what injection
/// needs to know of it.
enum Key {
    /// A `trellis.dev/` key, kept.
    Trellis(String),
    /// Any other key of a plausible length, and which of the others injection reads it is.
    Other { len: usize, kind: OtherKey },
    /// A key over [`MAX_ANNOTATION_KEY`]: as shown in a message.
    TooLong { shown: String, len: usize },
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'a> Visitor<'a> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(if s.len() > MAX_ANNOTATION_KEY {
                    Key::TooLong {
                        shown: echo::shown(s).into_owned(),
                        len: s.len(),
                    }
                } else if s.starts_with(PREFIX) {
                    Key::Trellis(s.to_string())
                } else {
                    let kind = if s.starts_with("prometheus.io/") {
                        OtherKey::Prometheus
                    } else if s == DEFAULT_CONTAINER {
                        OtherKey::DefaultContainer
                    } else if s == DEFAULT_LOGS_CONTAINER {
                        OtherKey::DefaultLogsContainer
                    } else {
                        OtherKey::Unread
                    };
                    Key::Other { len: s.len(), kind }
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// The annotations other than Trellis's that injection must know are there.
#[derive(Clone, Copy)]
enum OtherKey {
    Prometheus,
    DefaultContainer,
    DefaultLogsContainer,
    Unread,
}

/// The container `kubectl exec` and `kubectl attach` pick when none is named.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// The container `kubectl logs` picks when none is named.
pub const DEFAULT_LOGS_CONTAINER: &str = "kubectl.kubernetes.io/default-logs-container";

/// A string value measured, not kept.
struct StrLen(usize);

impl<'de> Deserialize<'de> for StrLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'a> Visitor<'a> for V {
            type Value = StrLen;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StrLen, E> {
                Ok(StrLen(s.len()))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Annotations;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Annotations, A::Error> {
                let mut a = Annotations::default();
                while let Some(key) = map.next_key::<Key>()? {
                    a.count += 1;
                    // Past a cap nothing more is kept: the pod is refused anyway.
                    let keep = a.count <= MAX_ANNOTATIONS
                        && a.bytes <= MAX_ANNOTATIONS_BYTES
                        && a.long_key.is_none();
                    match key {
                        Key::Trellis(k) if keep => {
                            let v: String = map.next_value()?;
                            a.bytes += k.len() + v.len();
                            a.trellis.insert(k, v);
                        }
                        Key::Trellis(k) => {
                            a.bytes += k.len() + map.next_value::<StrLen>()?.0;
                        }
                        Key::Other { len, kind } => {
                            match kind {
                                OtherKey::Prometheus => a.prometheus = true,
                                OtherKey::DefaultContainer => a.default_container = true,
                                OtherKey::DefaultLogsContainer => a.default_logs_container = true,
                                OtherKey::Unread => {}
                            }
                            a.bytes += len + map.next_value::<StrLen>()?.0;
                        }
                        Key::TooLong { shown, len } => {
                            a.bytes += len + map.next_value::<StrLen>()?.0;
                            a.long_key.get_or_insert((shown, len));
                        }
                    }
                }
                Ok(a)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut own_pod = false;
                while let Some(key) = map.next_key::<Label>()? {
                    let value = map.next_value::<Label>()?;
                    if key.0 == Some(OWN_POD_LABEL.0) {
                        own_pod = value.0 == Some(OWN_POD_LABEL.1);
                    }
                }
                Ok(Labels { own_pod })
            }
        }
        d.deserialize_map(V)
    }
}

/// A label key or value: which of the two strings injection looks for it is, if either.
struct Label(Option<&'static str>);

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'a> Visitor<'a> for V {
            type Value = Label;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Label, E> {
                Ok(Label(
                    [OWN_POD_LABEL.0, OWN_POD_LABEL.1]
                        .into_iter()
                        .find(|known| *known == s),
                ))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests;

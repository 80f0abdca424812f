//! Pod Security admission, seen ahead of time: the `pod-security.kubernetes.io/enforce` level of
//! each namespace, from a cached watch of Namespaces, and the refusal the webhook answers with
//! where that level forbids what it would inject.
//!
//! Why this exists: `proxyinit` runs as root with `NET_ADMIN` and `NET_RAW`. Pod Security levels
//! `baseline` and `restricted` forbid both, and Pod Security admission runs *after* mutating
//! webhooks. Without this check, in a namespace that enforces `baseline` the webhook injects, Pod
//! Security rejects the injected pod, and the ReplicaSet's `FailedCreate` event names a capability
//! the user never asked for. With it, the webhook itself refuses the pod (`allowed: false`) with a
//! message saying why and what to do; the event the SRE reads is that message. Injecting nothing
//! instead would start the pod without its proxy: the silent failure `failurePolicy: Fail` is there
//! to prevent.
//!
//! The decision is pure ([`enforce_level`], [`refusal`]); [`NamespaceCache`] is the thin shell: a
//! kube-runtime reflector over `Namespace`s (read-only `get/list/watch`), each stripped to its
//! Pod Security labels. Where the cache cannot answer (not yet listed, or a namespace it has not
//! seen yet) the pod is injected as before and the gap is logged: the check never blocks a review
//! for more than [`SYNC_WAIT`], and Pod Security admission itself still stands behind it.
//!
//! What it cannot see: a cluster-wide default level set in the API server's `AdmissionConfiguration`
//! (given to the webhook as `--pod-security-default-enforce`), and that configuration's exemptions
//! (usernames, runtime classes, namespaces; `--pod-security-check=false` turns the check off).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt as _;
use tokio::sync::watch;

/// The namespace label Pod Security admission enforces.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// Every Pod Security label starts with this; the cache keeps only those.
const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
/// The namespace label that selects a namespace for injection (the webhook's namespaceSelector).
pub const SELECTOR_LABEL: &str = "sidecarInjectorWebhook=enabled";
/// The pod annotation that opts one pod out.
pub const OPT_OUT_ANNOTATION: &str = "trellis.dev/inject: disabled";

/// Longest a review waits for the first list of Namespaces, while the cache has none.
pub const SYNC_WAIT: Duration = Duration::from_secs(1);

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }

    /// Whether a pod with `proxyinit` (root, `NET_ADMIN`, `NET_RAW`) passes this level. It does
    /// not pass `baseline` or `restricted` at any `enforce-version`: both have forbidden added
    /// capabilities other than `NET_BIND_SERVICE` (and a few harmless ones, never these two) since
    /// the first version of the standards.
    pub fn admits_proxyinit(self) -> bool {
        self == Level::Privileged
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a level as Pod Security admission does: exactly `privileged`, `baseline` or
/// `restricted`; anything else is evaluated as `restricted` (`Err` carries that fallback).
pub fn parse_level(value: &str) -> Result<Level, Level> {
    match value {
        "privileged" => Ok(Level::Privileged),
        "baseline" => Ok(Level::Baseline),
        "restricted" => Ok(Level::Restricted),
        _ => Err(Level::Restricted),
    }
}

/// A namespace's enforced level as Pod Security admission will evaluate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforced {
    pub level: Level,
    /// The label's value when it is not a valid level (evaluated as `restricted`).
    pub invalid: Option<String>,
    /// No label: the level is the cluster default (`--pod-security-default-enforce`).
    pub defaulted: bool,
}

/// The level a namespace with `labels` enforces; `default` where it has no enforce label.
/// `pod-security.kubernetes.io/enforce-version` does not change the answer (see
/// [`Level::admits_proxyinit`]).
pub fn enforce_level(labels: Option<&BTreeMap<String, String>>, default: Level) -> Enforced {
    match labels.and_then(|l| l.get(ENFORCE_LABEL)) {
        None => Enforced {
            level: default,
            invalid: None,
            defaulted: true,
        },
        Some(v) => match parse_level(v) {
            Ok(level) => Enforced {
                level,
                invalid: None,
                defaulted: false,
            },
            Err(level) => Enforced {
                level,
                invalid: Some(v.clone()),
                defaulted: false,
            },
        },
    }
}

/// What the webhook knows of a review's namespace when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// No check: `webhook inject` (offline), `--pod-security-check=false`, or no API server.
    Unchecked,
    /// The first list of Namespaces has not completed: unknown, injected as before.
    NotSynced,
    /// The cache has no such namespace (created a moment ago, not yet seen): injected as before.
    UnknownNamespace,
    Known(Enforced),
}

/// The message a pod is refused with, if `enforcement` forbids `proxyinit` in `namespace`.
pub fn refusal(namespace: &str, enforcement: &Enforcement) -> Option<String> {
    let Enforcement::Known(e) = enforcement else {
        return None;
    };
    if e.level.admits_proxyinit() {
        return None;
    }
    let source = match (&e.invalid, e.defaulted) {
        (Some(v), _) => format!(
            "label {ENFORCE_LABEL}={v:?}, not a valid level, which Pod Security evaluates as \"restricted\""
        ),
        (None, true) => format!(
            "no {ENFORCE_LABEL} label, and the cluster default is {:?}",
            e.level.as_str()
        ),
        (None, false) => format!("label {ENFORCE_LABEL}={}", e.level),
    };
    Some(format!(
        "namespace {namespace:?} enforces Pod Security level {level:?} ({source}), which forbids \
         the capabilities NET_ADMIN and NET_RAW that the injected init container proxyinit needs \
         (as root) to redirect the pod's traffic; Pod Security admission runs after this webhook \
         and would reject the injected pod. To mesh this namespace: kubectl label namespace \
         {namespace} {ENFORCE_LABEL}=privileged --overwrite. To keep {level:?}: remove \
         {SELECTOR_LABEL} from the namespace (kubectl label namespace {namespace} \
         sidecarInjectorWebhook-), or annotate the pod template {OPT_OUT_ANNOTATION} to run this \
         workload without the mesh",
        level = e.level.as_str(),
    ))
}

/// The check's flags on `webhook serve`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PodSecurityConfig {
    /// Refuse injection in namespaces whose Pod Security `enforce` level forbids proxyinit
    /// (baseline, restricted); needs get/list/watch on namespaces.
    #[arg(long, env = "TRELLIS_POD_SECURITY_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    pub pod_security_check: bool,

    /// The level Pod Security enforces on namespaces without the label: the `defaults.enforce` of
    /// the API server's PodSecurity AdmissionConfiguration (`privileged` unless set there).
    #[arg(long, env = "TRELLIS_POD_SECURITY_DEFAULT_ENFORCE", default_value = "privileged", value_parser = parse_level_flag)]
    pub pod_security_default_enforce: Level,
}

impl Default for PodSecurityConfig {
    fn default() -> Self {
        config::args::clap_defaults()
    }
}

fn parse_level_flag(s: &str) -> Result<Level, String> {
    parse_level(s).map_err(|_| {
        format!("`{s}` is not a Pod Security level: expected privileged, baseline or restricted")
    })
}

/// A cached watch of Namespaces (their Pod Security labels only), kept by a kube-runtime
/// reflector on a task of its own. Cloning shares the cache.
#[derive(Clone)]
pub struct NamespaceCache {
    store: Store<Namespace>,
    synced: watch::Receiver<bool>,
    default: Level,
}

impl NamespaceCache {
    /// Starts watching every Namespace through `client` (list, then watch; relists and retries
    /// with backoff on errors, logging each). Must be called inside a tokio runtime.
    pub fn spawn(client: kube::Client, default: Level) -> NamespaceCache {
        let (store, writer) = reflector::store();
        let (tx, synced) = watch::channel(false);
        let api = Api::<Namespace>::all(client);
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(strip)
            .reflect(writer);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(Event::InitDone) => {
                        if !tx.send_replace(true) {
                            tracing::info!("namespaces listed: Pod Security check active");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(
                        "namespace watch: {e}; retrying with backoff (the webhook's ClusterRole \
                         needs get/list/watch on namespaces); meanwhile pods are injected \
                         without the Pod Security check"
                    ),
                }
            }
        });
        NamespaceCache {
            store,
            synced,
            default,
        }
    }

    /// Whether the first list has completed.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first list has completed, for at most `within`; whether it has.
    pub async fn wait_synced(&self, within: Duration) -> bool {
        let mut rx = self.synced.clone();
        tokio::time::timeout(within, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// What the cache knows of `namespace` now.
    pub fn lookup(&self, namespace: &str) -> Enforcement {
        if !self.is_synced() {
            return Enforcement::NotSynced;
        }
        match self.store.get(&ObjectRef::new(namespace)) {
            None => Enforcement::UnknownNamespace,
            Some(ns) => {
                Enforcement::Known(enforce_level(ns.metadata.labels.as_ref(), self.default))
            }
        }
    }
}

/// Keeps of a Namespace only its name and Pod Security labels (a cluster may have thousands; the
/// webhook runs in 128 MiB).
fn strip(ns: &mut Namespace) {
    let m = &mut ns.metadata;
    m.annotations = None;
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    if let Some(labels) = &mut m.labels {
        labels.retain(|k, _| k.starts_with(LABEL_PREFIX));
    }
    ns.spec = None;
    ns.status = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn known(pairs: &[(&str, &str)]) -> Enforcement {
        Enforcement::Known(enforce_level(Some(&labels(pairs)), Level::Privileged))
    }

    #[test]
    fn baseline_and_restricted_refuse_with_why_and_what_to_do() {
        for level in ["baseline", "restricted"] {
            let msg = refusal("shop", &known(&[(ENFORCE_LABEL, level)])).expect(level);
            for part in [
                &format!("namespace \"shop\" enforces Pod Security level \"{level}\""),
                "NET_ADMIN and NET_RAW",
                "proxyinit",
                "would reject the injected pod",
                "kubectl label namespace shop pod-security.kubernetes.io/enforce=privileged",
                "sidecarInjectorWebhook=enabled",
                "trellis.dev/inject: disabled",
            ] {
                assert!(msg.contains(part), "{level}: missing {part:?} in {msg}");
            }
        }
    }

    #[test]
    fn privileged_or_no_label_or_other_modes_inject() {
        for pairs in [
            &[][..],
            &[(ENFORCE_LABEL, "privileged")][..],
            &[
                ("pod-security.kubernetes.io/warn", "restricted"),
                ("pod-security.kubernetes.io/audit", "baseline"),
            ][..],
            &[("kubernetes.io/metadata.name", "shop")][..],
        ] {
            assert_eq!(refusal("shop", &known(pairs)), None, "{pairs:?}");
        }
        assert_eq!(refusal("shop", &Enforcement::Unchecked), None);
        assert_eq!(refusal("shop", &Enforcement::NotSynced), None);
        assert_eq!(refusal("shop", &Enforcement::UnknownNamespace), None);
    }

    #[test]
    fn enforce_version_does_not_change_the_decision() {
        for version in ["latest", "v1.23", "v1.33", "nonsense"] {
            let v = ("pod-security.kubernetes.io/enforce-version", version);
            assert!(refusal("a", &known(&[(ENFORCE_LABEL, "baseline"), v])).is_some());
            assert!(refusal("a", &known(&[(ENFORCE_LABEL, "privileged"), v])).is_none());
        }
    }

    #[test]
    fn an_invalid_level_is_evaluated_as_restricted_as_pod_security_does() {
        let e = enforce_level(
            Some(&labels(&[(ENFORCE_LABEL, "Baseline")])),
            Level::Privileged,
        );
        assert_eq!(e.level, Level::Restricted);
        let msg = refusal("a", &Enforcement::Known(e)).unwrap();
        assert!(msg.contains("\"Baseline\", not a valid level"), "{msg}");
    }

    #[test]
    fn the_cluster_default_applies_without_a_label() {
        let e = enforce_level(None, Level::Baseline);
        assert!(e.defaulted);
        let msg = refusal("a", &Enforcement::Known(e)).unwrap();
        assert!(msg.contains("cluster default is \"baseline\""), "{msg}");
        // An explicit label wins over the default.
        let e = enforce_level(
            Some(&labels(&[(ENFORCE_LABEL, "privileged")])),
            Level::Restricted,
        );
        assert_eq!(refusal("a", &Enforcement::Known(e)), None);
    }

    #[test]
    fn strip_keeps_only_pod_security_labels() {
        let mut ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "shop",
                "labels": {ENFORCE_LABEL: "baseline", "team": "a", "sidecarInjectorWebhook": "enabled"},
                "annotations": {"big": "x"},
            },
            "spec": {"finalizers": ["kubernetes"]},
        }))
        .unwrap();
        strip(&mut ns);
        assert_eq!(
            ns.metadata.labels,
            Some(labels(&[(ENFORCE_LABEL, "baseline")]))
        );
        assert!(ns.metadata.annotations.is_none() && ns.spec.is_none());
    }

    #[test]
    fn flags_default_to_checking_with_privileged_default() {
        let c = PodSecurityConfig::default();
        assert!(c.pod_security_check);
        assert_eq!(c.pod_security_default_enforce, Level::Privileged);
        assert!(parse_level_flag("Restricted").is_err());
    }
}

//! The Kubernetes source: Services, EndpointSlices, TrafficPolicies, HTTPRoutes, GRPCRoutes,
//! Gateways and HTTPFaults watched in every namespace through kube-runtime watchers, fed to the [`Store`] as they change. It is how the control
//! plane runs in a cluster (in-cluster config, or `--kubeconfig PATH` from outside).
//!
//! Guarantees:
//! - each kind is watched on its own; a (re)list (the watcher's `Init` .. `InitDone`, after a
//!   start, a `410 Gone` or an error) ends with the store holding exactly the listed objects of
//!   that kind ([`Store::sync_kind`]), so whatever vanished meanwhile is deleted; every other
//!   watch event is one [`Store::apply`];
//! - the store is ready ([`Store::set_ready`]) once every kind's first list is in;
//! - watch errors are logged and retried with kube-runtime's default backoff; nothing here stops
//!   for good;
//! - without the TrafficPolicy CRD (its list is 404) one warning names the CRD and how to install
//!   it, Services are served with the default policy, and the policy watch is retried with
//!   backoff (so installing the CRD later is picked up); the same holds for the Gateway API
//!   CRDs (HTTPRoute, GRPCRoute, Gateway: Services are served without those routes) and the
//!   HTTPFault CRD, each on its own, through
//!   one helper ([`follow_optional`]);
//! - each TrafficPolicy's `status.conditions` holds one `Accepted` condition saying whether it is
//!   used (`True`/`Accepted`) or not (`False`, reason `Invalid` or `Conflicted`, the error as the
//!   message), written with a merge patch on the status subresource only when it differs from
//!   what the object already says, so our own writes never cause more writes;
//! - each HTTPRoute's and GRPCRoute's `status.parents` holds, per parentRef Trellis serves, the
//!   `Accepted` and
//!   `ResolvedRefs` conditions [`crate::status`] computes, written (merge patch on the status
//!   subresource, other controllers' entries kept) after any change of the model that alters
//!   them (a backend Service appearing resolves a reference), again only when they differ.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt as _;
use serde_json::{json, Value};

use config::api::ServiceRef;

use crate::model::{Change, Key, Kind, Object, Report};
use crate::policy;
use crate::route::{self, RouteKind};
use crate::status;
use crate::store::Store;

/// The CRD that defines TrafficPolicy, as `kubectl get crd` names it.
pub const POLICY_CRD: &str = "trafficpolicies.trellis.dev";
/// The condition type written to each TrafficPolicy's status.
pub const ACCEPTED: &str = "Accepted";

/// The CRDs of the Gateway API kinds and of HTTPFault.
pub const ROUTE_CRD: &str = "httproutes.gateway.networking.k8s.io";
pub const GRPC_ROUTE_CRD: &str = "grpcroutes.gateway.networking.k8s.io";
pub const GATEWAY_CRD: &str = "gateways.gateway.networking.k8s.io";
pub const FAULT_CRD: &str = "httpfaults.trellis.dev";

/// Gateway API's HTTPRoute, read untyped (the `gateway-api` crate's own type is built on another
/// kube version) and its spec deserialized with serde.
pub fn route_resource() -> ApiResource {
    route_resource_of(RouteKind::Http)
}

/// Gateway API's GRPCRoute, read as HTTPRoute is.
pub fn grpc_route_resource() -> ApiResource {
    route_resource_of(RouteKind::Grpc)
}

fn route_resource_of(kind: RouteKind) -> ApiResource {
    ApiResource {
        group: route::GATEWAY_GROUP.into(),
        version: "v1".into(),
        api_version: route::GATEWAY_API_VERSION.into(),
        kind: kind.name().into(),
        plural: route_plural(kind).into(),
    }
}

fn route_plural(kind: RouteKind) -> &'static str {
    match kind {
        RouteKind::Http => "httproutes",
        RouteKind::Grpc => "grpcroutes",
    }
}

pub fn gateway_resource() -> ApiResource {
    ApiResource {
        group: route::GATEWAY_GROUP.into(),
        version: "v1".into(),
        api_version: route::GATEWAY_API_VERSION.into(),
        kind: route::GATEWAY_KIND.into(),
        plural: "gateways".into(),
    }
}

pub fn fault_resource() -> ApiResource {
    ApiResource {
        group: route::FAULT_GROUP.into(),
        version: "v1alpha1".into(),
        api_version: route::FAULT_API_VERSION.into(),
        kind: route::FAULT_KIND.into(),
        plural: "httpfaults".into(),
    }
}

/// The TrafficPolicy resource, for dynamic (untyped) watches and status patches.
pub fn policy_resource() -> ApiResource {
    ApiResource {
        group: "trellis.dev".into(),
        version: "v1alpha1".into(),
        api_version: policy::API_VERSION.into(),
        kind: policy::KIND.into(),
        plural: "trafficpolicies".into(),
    }
}

/// The source could not be set up.
// Errors carry their cause in the message (not as a `#[source]`), as the directory source's do,
// so that a plain `{e}` in a log line says everything and `{e:#}` does not say it twice.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("--kubeconfig {path}: {error}")]
    Kubeconfig {
        path: PathBuf,
        error: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration (pass --kubeconfig PATH, set KUBECONFIG, run in a pod, \
         or use --from-dir DIR): {0}"
    )]
    Infer(kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(kube::Error),
    /// A watch stream ended, which kube-runtime watchers never do.
    #[error("the {0} watch ended unexpectedly")]
    Ended(&'static str),
}

/// Watches the API server `client` talks to.
#[derive(Clone)]
pub struct KubeSource {
    client: kube::Client,
}

impl fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeSource").finish_non_exhaustive()
    }
}

impl KubeSource {
    pub fn new(client: kube::Client) -> KubeSource {
        KubeSource { client }
    }

    /// A source from a kubeconfig file, or (without one) from `KUBECONFIG`, `~/.kube/config`
    /// or the pod's service account, as `kubectl` and `kube::Client::try_default` look.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<KubeSource, KubeError> {
        let config = match kubeconfig {
            Some(path) => {
                let err = |error| KubeError::Kubeconfig {
                    path: path.to_path_buf(),
                    error,
                };
                let file = kube::config::Kubeconfig::read_from(path).map_err(err)?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(err)?
            }
            None => kube::Config::infer().await.map_err(KubeError::Infer)?,
        };
        tracing::info!(api_server = %config.cluster_url, "watching the Kubernetes API");
        let client = kube::Client::try_from(config).map_err(KubeError::Client)?;
        Ok(KubeSource::new(client))
    }

    /// Watches every kind until the task is dropped.
    pub async fn run(self, store: Arc<Store>) -> Result<(), KubeError> {
        let ready = Readiness::new(store.clone());
        let services = follow(
            Api::<Service>::all(self.client.clone()),
            Kind::Service,
            &store,
            &ready,
            |s| Object::Service(Box::new(s)),
        );
        let slices = follow(
            Api::<EndpointSlice>::all(self.client.clone()),
            Kind::EndpointSlice,
            &store,
            &ready,
            |e| Object::EndpointSlice(Box::new(e)),
        );
        let policies = follow_policies(self.client.clone(), &store, &ready);
        let routes = routes_and_status(self.client.clone(), &store, &ready, RouteKind::Http);
        let grpc_routes = routes_and_status(self.client.clone(), &store, &ready, RouteKind::Grpc);
        let gateways = follow_gateways(self.client.clone(), &store, &ready);
        let faults = follow_faults(self.client.clone(), &store, &ready);
        tokio::select! {
            () = services => Err(KubeError::Ended("Service")),
            () = slices => Err(KubeError::Ended("EndpointSlice")),
            () = policies => Err(KubeError::Ended("TrafficPolicy")),
            e = routes => Err(e),
            e = grpc_routes => Err(e),
            () = gateways => Err(KubeError::Ended("Gateway")),
            () = faults => Err(KubeError::Ended("HTTPFault")),
        }
    }
}

/// Marks the store ready once every kind has been listed once.
struct Readiness {
    store: Arc<Store>,
    pending: Mutex<BTreeSet<Kind>>,
}

impl Readiness {
    fn new(store: Arc<Store>) -> Readiness {
        Readiness {
            store,
            pending: Mutex::new(
                [
                    Kind::Service,
                    Kind::EndpointSlice,
                    Kind::TrafficPolicy,
                    Kind::HttpRoute,
                    Kind::GrpcRoute,
                    Kind::Gateway,
                    Kind::HttpFault,
                ]
                .into_iter()
                .collect(),
            ),
        }
    }

    fn listed(&self, kind: Kind) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.remove(&kind) && pending.is_empty() {
            self.store.set_ready();
            tracing::info!(
                version = self.store.version(),
                "the first lists of every kind are in (or their CRDs are missing); ready"
            );
        }
    }
}

/// One kind's watch events turned into store changes: a relist is collected whole and synced at
/// its end; the other events are applied one by one.
struct Feed {
    kind: Kind,
    relist: Option<Vec<Object>>,
}

impl Feed {
    fn new(kind: Kind) -> Feed {
        Feed { kind, relist: None }
    }

    /// Applies one event; true when it completed a (re)list.
    fn event(&mut self, store: &Store, event: Event<Object>) -> bool {
        match event {
            Event::Init => self.relist = Some(Vec::new()),
            Event::InitApply(o) => self.relist.get_or_insert_with(Vec::new).push(o),
            Event::InitDone => {
                let objects = self.relist.take().unwrap_or_default();
                let n = objects.len();
                let touched = store.sync_kind(self.kind, objects);
                tracing::info!(
                    kind = ?self.kind,
                    objects = n,
                    touched = touched.services.len(),
                    version = store.version(),
                    "listed"
                );
                return true;
            }
            Event::Apply(o) => {
                store.apply(Change::Apply(o));
            }
            Event::Delete(o) => {
                store.apply(Change::Delete(o.key()));
            }
        }
        false
    }
}

fn map_event<K>(event: Event<K>, f: impl Fn(K) -> Object) -> Event<Object> {
    match event {
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(f(k)),
        Event::InitDone => Event::InitDone,
        Event::Apply(k) => Event::Apply(f(k)),
        Event::Delete(k) => Event::Delete(f(k)),
    }
}

async fn follow<K>(
    api: Api<K>,
    kind: Kind,
    store: &Store,
    ready: &Readiness,
    convert: impl Fn(K) -> Object,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + fmt::Debug + Send + 'static,
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut feed = Feed::new(kind);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if feed.event(store, map_event(event, &convert)) {
                    ready.listed(kind);
                }
            }
            Err(e) => tracing::warn!(kind = ?kind, "watch: {e}; retrying with backoff"),
        }
    }
}

/// A TrafficPolicy as the model reads it.
fn policy_object(o: &DynamicObject) -> Object {
    Object::TrafficPolicy(Box::new(policy::parse(&with_type(
        o,
        policy::API_VERSION,
        policy::KIND,
    ))))
}

/// An object as JSON, with apiVersion and kind filled in when a list left them out.
fn with_type(o: &DynamicObject, api_version: &str, kind: &str) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| json!(api_version));
        map.entry("kind").or_insert_with(|| json!(kind));
    }
    v
}

fn is_not_found(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            if s.code == 404
    )
}

/// A kind defined by a CRD that may not be installed, and what to say when it is not.
struct Optional {
    resource: ApiResource,
    kind: Kind,
    /// The CRD's name, as `kubectl get crd` names it.
    crd: &'static str,
    /// What the control plane does without it.
    meanwhile: &'static str,
    /// How to install it.
    install: &'static str,
}

/// How to install the Gateway API CRDs (HTTPRoute, GRPCRoute, Gateway), experimental channel.
pub const GATEWAY_API_INSTALL: &str = "kubectl apply --server-side -f \
    https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.3.0/experimental-install.yaml";

/// Watches a kind whose CRD may be missing: while its list is 404, one warning names the CRD and
/// how to install it, the kind counts as listed (empty), so everything else is served, and the
/// watch is retried with backoff, so installing the CRD later is picked up. `status`, when
/// given, sees every object as listed and watched, and is told when the store has settled
/// (TrafficPolicy, HTTPRoute and GRPCRoute status).
async fn follow_optional<S: Observer>(
    client: &kube::Client,
    optional: Optional,
    store: &Store,
    ready: &Readiness,
    convert: impl Fn(&DynamicObject) -> Object,
    mut status: Option<S>,
) {
    let kind = optional.kind;
    let api = Api::<DynamicObject>::all_with(client.clone(), &optional.resource);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut feed = Feed::new(kind);
    let mut missing = false;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(e) if is_not_found(&e) => {
                if !missing {
                    tracing::warn!(
                        "the {} CRD ({}) is not installed: {} and retrying; install it with `{}`",
                        optional.resource.kind,
                        optional.crd,
                        optional.meanwhile,
                        optional.install,
                    );
                    missing = true;
                }
                // No CRD, no objects: a complete (empty) list.
                store.sync_kind(kind, Vec::new());
                if let Some(status) = &mut status {
                    status.relisted(BTreeSet::new());
                }
                ready.listed(kind);
                continue;
            }
            Err(e) => {
                tracing::warn!(kind = ?kind, "watch: {e}; retrying with backoff");
                continue;
            }
        };
        if std::mem::take(&mut missing) {
            tracing::info!(
                "the {} CRD ({}) is installed; watching",
                optional.resource.kind,
                optional.crd
            );
        }
        let mut settled = true;
        if let Some(status) = &mut status {
            match &event {
                Event::Init => {
                    status.relisting();
                    settled = false;
                }
                Event::InitApply(o) => {
                    status.seen(o);
                    settled = false;
                }
                Event::Apply(o) => status.seen(o),
                Event::Delete(o) => status.forget(o),
                Event::InitDone => {}
            }
        }
        let listed = feed.event(store, map_event(event, |o| convert(&o)));
        if listed {
            if let Some(status) = &mut status {
                status.relisted_done();
            }
            ready.listed(kind);
        }
        if let Some(status) = &mut status {
            if settled {
                status.settled(store).await;
            }
        }
    }
}

async fn follow_policies(client: kube::Client, store: &Store, ready: &Readiness) {
    let resource = policy_resource();
    let status = StatusWriter::new(client.clone(), resource.clone());
    let optional = Optional {
        resource,
        kind: Kind::TrafficPolicy,
        crd: POLICY_CRD,
        meanwhile: "serving Services with the default policy",
        install: "kubectl apply -k manifests/",
    };
    follow_optional(&client, optional, store, ready, policy_object, Some(status)).await;
}

/// The watch of one route kind and the writer of its routes' status, until either ends (which
/// they never do): what ended, as the error.
async fn routes_and_status(
    client: kube::Client,
    store: &Store,
    ready: &Readiness,
    kind: RouteKind,
) -> KubeError {
    let seen = Arc::new(Mutex::new(RoutesSeen::default()));
    let wake = Arc::new(tokio::sync::Notify::new());
    let watch = RouteWatch {
        seen: seen.clone(),
        wake: wake.clone(),
    };
    let (ended, status_ended) = match kind {
        RouteKind::Http => ("HTTPRoute", "HTTPRoute status"),
        RouteKind::Grpc => ("GRPCRoute", "GRPCRoute status"),
    };
    tokio::select! {
        () = follow_routes(client.clone(), store, ready, watch, kind) => KubeError::Ended(ended),
        () = write_route_status(client, store, &seen, &wake, kind) => KubeError::Ended(status_ended),
    }
}

async fn follow_routes(
    client: kube::Client,
    store: &Store,
    ready: &Readiness,
    watch: RouteWatch,
    kind: RouteKind,
) {
    let optional = Optional {
        resource: route_resource_of(kind),
        kind: Kind::of_route(kind),
        crd: match kind {
            RouteKind::Http => ROUTE_CRD,
            RouteKind::Grpc => GRPC_ROUTE_CRD,
        },
        meanwhile: match kind {
            RouteKind::Http => "serving Services without HTTPRoutes",
            RouteKind::Grpc => "serving Services without GRPCRoutes",
        },
        install: GATEWAY_API_INSTALL,
    };
    let convert = |o: &DynamicObject| {
        let doc = with_type(o, route::GATEWAY_API_VERSION, kind.name());
        Object::Route(Box::new(match kind {
            RouteKind::Http => route::parse_route(&doc),
            RouteKind::Grpc => route::parse_grpc_route(&doc),
        }))
    };
    follow_optional(&client, optional, store, ready, convert, Some(watch)).await;
}

async fn follow_gateways(client: kube::Client, store: &Store, ready: &Readiness) {
    let optional = Optional {
        resource: gateway_resource(),
        kind: Kind::Gateway,
        crd: GATEWAY_CRD,
        meanwhile: "answering every Gateway watch with no routes",
        install: GATEWAY_API_INSTALL,
    };
    let convert = |o: &DynamicObject| {
        Object::Gateway(Box::new(route::parse_gateway(&with_type(
            o,
            route::GATEWAY_API_VERSION,
            route::GATEWAY_KIND,
        ))))
    };
    follow_optional(&client, optional, store, ready, convert, NO_STATUS).await;
}

async fn follow_faults(client: kube::Client, store: &Store, ready: &Readiness) {
    let optional = Optional {
        resource: fault_resource(),
        kind: Kind::HttpFault,
        crd: FAULT_CRD,
        meanwhile: "a route rule naming an HTTPFault answers 500",
        install: "kubectl apply -k manifests/",
    };
    let convert = |o: &DynamicObject| {
        Object::HttpFault(Box::new(route::parse_fault(&with_type(
            o,
            route::FAULT_API_VERSION,
            route::FAULT_KIND,
        ))))
    };
    follow_optional(&client, optional, store, ready, convert, NO_STATUS).await;
}

/// For kinds whose status Trellis does not write.
const NO_STATUS: Option<StatusWriter> = None;

/// The `Accepted` condition as we compare it (the transition time aside).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    status: &'static str,
    reason: &'static str,
    message: String,
    observed_generation: Option<i64>,
}

/// What the object says now.
#[derive(Debug, Clone)]
struct Seen {
    generation: Option<i64>,
    /// Its `Accepted` condition as (status, reason, message, observedGeneration).
    accepted: Option<(String, String, String, Option<i64>)>,
    /// `lastTransitionTime` of that condition.
    since: Option<Value>,
    /// Every other condition, kept as is.
    others: Vec<Value>,
}

impl Seen {
    fn says(&self, c: &Condition) -> bool {
        self.accepted.as_ref().is_some_and(|(s, r, m, g)| {
            s == c.status && r == c.reason && *m == c.message && *g == c.observed_generation
        })
    }
}

/// Writes each policy's `Accepted` condition when it differs from what the policy says.
struct StatusWriter {
    client: kube::Client,
    resource: ApiResource,
    seen: BTreeMap<Key, Seen>,
    /// During a relist: the keys listed so far.
    relist: Option<BTreeSet<Key>>,
    /// What we last wrote, so that a second look before our write's own event comes back does
    /// not write it again.
    written: BTreeMap<Key, Condition>,
}

fn key_of(o: &DynamicObject) -> Key {
    let ServiceRef { namespace, name } = object_ref(o);
    Key {
        kind: Kind::TrafficPolicy,
        namespace,
        name,
    }
}

/// What a watch tells a status writer: each object seen or gone, relists, and when the store
/// has taken an event in (so a write can follow).
trait Observer {
    fn seen(&mut self, o: &DynamicObject);
    fn forget(&mut self, o: &DynamicObject);
    fn relisting(&mut self);
    fn relisted_done(&mut self);
    /// Forgets every object not in `listed`.
    fn relisted(&mut self, listed: BTreeSet<Key>);
    async fn settled(&mut self, store: &Store);
}

impl StatusWriter {
    fn new(client: kube::Client, resource: ApiResource) -> StatusWriter {
        StatusWriter {
            client,
            resource,
            seen: BTreeMap::new(),
            relist: None,
            written: BTreeMap::new(),
        }
    }
}

impl Observer for StatusWriter {
    fn seen(&mut self, o: &DynamicObject) {
        let key = key_of(o);
        let conditions: Vec<Value> = o
            .data
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let (accepted, others): (Vec<Value>, Vec<Value>) = conditions
            .into_iter()
            .partition(|c| c.get("type").and_then(Value::as_str) == Some(ACCEPTED));
        let text = |c: &Value, f: &str| c.get(f).and_then(Value::as_str).unwrap_or("").to_string();
        let seen = Seen {
            generation: o.metadata.generation,
            accepted: accepted.first().map(|c| {
                (
                    text(c, "status"),
                    text(c, "reason"),
                    text(c, "message"),
                    c.get("observedGeneration").and_then(Value::as_i64),
                )
            }),
            since: accepted
                .first()
                .and_then(|c| c.get("lastTransitionTime").cloned()),
            others,
        };
        // Someone else changed the condition: what we wrote no longer stands.
        if let Some(w) = self.written.get(&key) {
            if !seen.says(w) {
                self.written.remove(&key);
            }
        }
        if let Some(r) = &mut self.relist {
            r.insert(key.clone());
        }
        self.seen.insert(key, seen);
    }

    fn forget(&mut self, o: &DynamicObject) {
        let key = key_of(o);
        self.seen.remove(&key);
        self.written.remove(&key);
    }

    fn relisting(&mut self) {
        self.relist = Some(BTreeSet::new());
    }

    fn relisted_done(&mut self) {
        let listed = self.relist.take().unwrap_or_default();
        self.relisted(listed);
    }

    /// Forgets every policy not in `listed`.
    fn relisted(&mut self, listed: BTreeSet<Key>) {
        self.seen.retain(|k, _| listed.contains(k));
        self.written.retain(|k, _| listed.contains(k));
    }

    async fn settled(&mut self, store: &Store) {
        self.reconcile(store).await;
    }
}

impl StatusWriter {
    /// The condition each known policy should carry, from the model's reports.
    fn desired(&self, reports: &[Report]) -> BTreeMap<Key, Condition> {
        let mut problems: BTreeMap<String, (&'static str, Vec<String>)> = BTreeMap::new();
        for r in reports {
            let (id, reason, message) = match r {
                Report::Invalid(e) => (e.object.clone(), "Invalid", e.to_string()),
                Report::Conflict { loser, .. } => (loser.clone(), "Conflicted", r.to_string()),
                Report::Route(_) => continue,
            };
            let entry = problems.entry(id).or_insert((reason, Vec::new()));
            if entry.0 == "Conflicted" && reason == "Invalid" {
                entry.0 = reason;
            }
            entry.1.push(message);
        }
        self.seen
            .iter()
            .map(|(key, seen)| {
                let id = format!("{}/{}", key.namespace, key.name);
                let c = match problems.get(&id) {
                    Some((reason, messages)) => Condition {
                        status: "False",
                        reason,
                        message: messages.join("; "),
                        observed_generation: seen.generation,
                    },
                    None => Condition {
                        status: "True",
                        reason: "Accepted",
                        message: "the policy is valid and applies to the Services it targets"
                            .into(),
                        observed_generation: seen.generation,
                    },
                };
                (key.clone(), c)
            })
            .collect()
    }

    /// Patches the status of every policy whose condition is not what it should be.
    async fn reconcile(&mut self, store: &Store) {
        let desired = self.desired(&store.policy_reports());
        for (key, want) in desired {
            let Some(seen) = self.seen.get(&key) else {
                continue;
            };
            if seen.says(&want) || self.written.get(&key) == Some(&want) {
                continue;
            }
            let same_status = seen
                .accepted
                .as_ref()
                .is_some_and(|(s, ..)| s == want.status);
            let since = match (&seen.since, same_status) {
                (Some(t), true) => t.clone(),
                _ => serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ))
                .unwrap_or(Value::Null),
            };
            let mut conditions = seen.others.clone();
            conditions.push(json!({
                "type": ACCEPTED,
                "status": want.status,
                "reason": want.reason,
                "message": want.message,
                "observedGeneration": want.observed_generation,
                "lastTransitionTime": since,
            }));
            let patch = json!({"status": {"conditions": conditions}});
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.namespace, &self.resource);
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        policy = %format!("{}/{}", key.namespace, key.name),
                        accepted = want.status,
                        reason = want.reason,
                        "wrote the policy's status"
                    );
                    self.written.insert(key, want);
                }
                // Tried again at the next policy event.
                Err(e) => tracing::warn!(
                    policy = %format!("{}/{}", key.namespace, key.name),
                    "cannot write the policy's status: {e}"
                ),
            }
        }
    }
}

/// The routes of one kind as last seen (generation and `status.parents`), and what we last wrote
/// to each: shared by the route watch ([`RouteWatch`]) and the writer ([`write_route_status`]).
#[derive(Default)]
struct RoutesSeen {
    routes: BTreeMap<ServiceRef, SeenRoute>,
    relist: Option<BTreeSet<ServiceRef>>,
    written: BTreeMap<ServiceRef, Vec<Value>>,
}

struct SeenRoute {
    generation: Option<i64>,
    parents: Vec<Value>,
}

impl RoutesSeen {
    /// Forgets every route not in `listed`.
    fn keep_only(&mut self, listed: &BTreeSet<ServiceRef>) {
        self.routes.retain(|k, _| listed.contains(k));
        self.written.retain(|k, _| listed.contains(k));
    }
}

/// An object's namespace (`default` when a list left it out) and name.
fn object_ref(o: &DynamicObject) -> ServiceRef {
    ServiceRef {
        namespace: o
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: o.metadata.name.clone().unwrap_or_default(),
    }
}

/// The route watch's side: records what each route says and wakes the writer.
struct RouteWatch {
    seen: Arc<Mutex<RoutesSeen>>,
    wake: Arc<tokio::sync::Notify>,
}

impl RouteWatch {
    fn state(&self) -> std::sync::MutexGuard<'_, RoutesSeen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Observer for RouteWatch {
    fn seen(&mut self, o: &DynamicObject) {
        let key = object_ref(o);
        let parents = o
            .data
            .pointer("/status/parents")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut seen = self.state();
        // Someone else changed our entries: what we wrote no longer stands.
        if seen
            .written
            .get(&key)
            .is_some_and(|w| !status::says(&parents, w))
        {
            seen.written.remove(&key);
        }
        if let Some(r) = &mut seen.relist {
            r.insert(key.clone());
        }
        seen.routes.insert(
            key,
            SeenRoute {
                generation: o.metadata.generation,
                parents,
            },
        );
    }
    fn forget(&mut self, o: &DynamicObject) {
        let key = object_ref(o);
        let mut seen = self.state();
        seen.routes.remove(&key);
        seen.written.remove(&key);
    }
    fn relisting(&mut self) {
        self.state().relist = Some(BTreeSet::new());
    }
    fn relisted_done(&mut self) {
        let mut seen = self.state();
        let listed = seen.relist.take().unwrap_or_default();
        seen.keep_only(&listed);
    }
    fn relisted(&mut self, listed: BTreeSet<Key>) {
        let listed: BTreeSet<ServiceRef> = listed
            .into_iter()
            .map(|k| ServiceRef {
                namespace: k.namespace,
                name: k.name,
            })
            .collect();
        self.state().keep_only(&listed);
    }
    async fn settled(&mut self, _store: &Store) {
        self.wake.notify_one();
    }
}

/// How long the writer lets a burst of changes settle before it compares.
const ROUTE_STATUS_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes each seen route's (of kind `kind`) `status.parents` when what [`status::route_status`]
/// says differs from what the route says (and from what we last wrote): after every change of
/// the model, and after every route event. Runs until the task is dropped.
async fn write_route_status(
    client: kube::Client,
    store: &Store,
    seen: &Mutex<RoutesSeen>,
    wake: &tokio::sync::Notify,
    kind: RouteKind,
) {
    let mut changes = store.changes();
    let resource = route_resource_of(kind);
    // Routes whose last write failed: warned once, until a write succeeds.
    let mut failing = BTreeSet::new();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = wake.notified() => {}
        }
        tokio::time::sleep(ROUTE_STATUS_SETTLE).await;
        changes.mark_unchanged();
        // Before every kind's first list is in, a route's backends or parent may only seem
        // missing: nothing is written until the picture is whole.
        if !store.is_ready() {
            continue;
        }
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap_or(Value::Null);
        let plan: Vec<(ServiceRef, Vec<Value>)> = {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            store.with_model(|model| {
                seen.routes
                    .iter()
                    .filter_map(|(key, s)| {
                        let route = model.route(kind, key)?;
                        let want = status::route_status(model, route);
                        let parents =
                            status::parents_json(route, &want, s.generation, &s.parents, &now);
                        let done = status::says(&s.parents, &parents)
                            || seen
                                .written
                                .get(key)
                                .is_some_and(|w| status::says(w, &parents));
                        (!done).then(|| (key.clone(), parents))
                    })
                    .collect()
            })
        };
        for (key, parents) in plan {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &key.namespace, &resource);
            let patch = json!({"status": {"parents": parents}});
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(kind = kind.name(), route = %key, "wrote the route's status.parents");
                    failing.remove(&key);
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .written
                        .insert(key, parents);
                }
                // Tried again at the next change.
                Err(e) if failing.insert(key.clone()) => tracing::warn!(
                    kind = kind.name(),
                    route = %key,
                    "cannot write the route's status (needs RBAC patch on {}/status): {e}",
                    route_plural(kind)
                ),
                Err(e) => tracing::debug!(
                    kind = kind.name(),
                    route = %key,
                    "cannot write the route's status: {e}"
                ),
            }
        }
    }
}

//! A Kubernetes API server double, in process, over plain HTTP: enough of the API that the real
//! kube client and kube-runtime watchers run against it unmodified, so that the control plane's
//! Kubernetes source (and the pod sandbox) are tested without a cluster.
//!
//! What it keeps: objects as JSON, per resource (group, version, plural), with one global
//! resourceVersion that grows with every write, and a bounded history of watch events. What it
//! serves: discovery (`/version`, `/api`, `/apis`, resource lists), list (label and simple field
//! selectors), watch (ordered ADDED/MODIFIED/DELETED from a resourceVersion, BOOKMARKs every
//! [`Options::bookmark_interval`] and at the end, an in-stream `410 Expired` when the history no
//! longer reaches back that far), get, create, replace, delete, and merge/JSON/apply patches, on
//! objects and on their `/status` subresource. What it leaves out: authentication, admission,
//! defaulting, validation against schemas, finalizers, pagination (`limit` is ignored, which the
//! API allows), and server-side apply's field ownership (an apply patch is merged).
//!
//! Tests also drive it directly, without HTTP: [`ApiServer::create`], [`ApiServer::patch`],
//! [`ApiServer::delete`], [`ApiServer::object`], and the failure hooks
//! [`ApiServer::disconnect_watches`] (every open watch ends; clients reconnect) and
//! [`ApiServer::expire_watches`] (the history is compacted too, so reconnecting clients get 410
//! and relist). Everything is bounded: the history ([`Options::history`]), request bodies
//! ([`Options::max_body`]) and the request log.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use crate::Error;

/// The default number of watch events kept for watches that resume.
pub const DEFAULT_HISTORY: usize = 10_000;
/// The default largest request body, as the real API server's (3 MiB).
pub const DEFAULT_MAX_BODY: usize = 3 * 1024 * 1024;
/// The default interval between BOOKMARK events on a watch that asked for them.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// A watch without `timeoutSeconds` ends after this long (the real server picks 30-60 minutes).
const MAX_WATCH: Duration = Duration::from_secs(1800);
/// How many requests [`ApiServer::requests`] remembers.
const REQUEST_LOG: usize = 1000;
/// How many events one watch sends per look at the history (keeps the lock short).
const WATCH_BATCH: usize = 256;

/// A resource by API group, version and plural name: what a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
}

impl Gvr {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// A kind the double serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDef {
    pub gvr: Gvr,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `/status` subresource: writes to the object keep its status, writes to `/status`
    /// change only the status (as for Services, Pods and CRDs that declare it).
    pub status: bool,
}

pub const SERVICES: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "",
        version: "v1",
        plural: "services",
    },
    kind: "Service",
    namespaced: true,
    status: true,
};
pub const NAMESPACES: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "",
        version: "v1",
        plural: "namespaces",
    },
    kind: "Namespace",
    namespaced: false,
    status: true,
};
pub const PODS: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "",
        version: "v1",
        plural: "pods",
    },
    kind: "Pod",
    namespaced: true,
    status: true,
};
pub const ENDPOINTSLICES: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
    },
    kind: "EndpointSlice",
    namespaced: true,
    status: false,
};
pub const TRAFFICPOLICIES: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "trellis.dev",
        version: "v1alpha1",
        plural: "trafficpolicies",
    },
    kind: "TrafficPolicy",
    namespaced: true,
    status: true,
};

pub const HTTPROUTES: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "httproutes",
    },
    kind: "HTTPRoute",
    namespaced: true,
    status: true,
};
pub const GRPCROUTES: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "grpcroutes",
    },
    kind: "GRPCRoute",
    namespaced: true,
    status: true,
};
pub const GATEWAYS: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "gateways",
    },
    kind: "Gateway",
    namespaced: true,
    status: true,
};
pub const HTTPFAULTS: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "trellis.dev",
        version: "v1alpha1",
        plural: "httpfaults",
    },
    kind: "HTTPFault",
    namespaced: true,
    status: false,
};

/// The Gateway API's CRDs (installed by the user, as in a cluster) and Trellis's HTTPFault:
/// served only when a test adds them, so the default double has no Gateway API.
pub const ROUTE_RESOURCES: [ResourceDef; 4] = [HTTPROUTES, GRPCROUTES, GATEWAYS, HTTPFAULTS];

/// The kinds served unless told otherwise.
pub const DEFAULT_RESOURCES: [ResourceDef; 5] =
    [SERVICES, NAMESPACES, PODS, ENDPOINTSLICES, TRAFFICPOLICIES];

/// How to start a double.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub addr: SocketAddr,
    pub resources: Vec<ResourceDef>,
    /// Watch events kept; a watch resuming from before them gets 410 Expired.
    pub history: usize,
    pub bookmark_interval: Duration,
    /// Larger request bodies are answered 413.
    pub max_body: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            resources: DEFAULT_RESOURCES.to_vec(),
            history: DEFAULT_HISTORY,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// An API error: what the HTTP API answers as a `Status` object, and what the test hooks return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    fn not_found(plural: &str, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{plural} \"{name}\" not found"))
    }

    fn no_resource() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// The `Status` object the API server would send.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    gvr: Gvr,
    kind: EventType,
    /// The object before (for MODIFIED), so that a watch with a selector sees objects leave it.
    old: Option<Arc<Value>>,
    new: Arc<Value>,
}

struct Table {
    def: ResourceDef,
    /// (namespace or "", name) -> object.
    objects: BTreeMap<(String, String), Value>,
}

struct State {
    rv: u64,
    /// The oldest resourceVersion a watch may resume from.
    floor: u64,
    tables: BTreeMap<Gvr, Table>,
    history: VecDeque<Event>,
    history_limit: usize,
    uids: u64,
    requests: VecDeque<String>,
}

struct Shared {
    state: Mutex<State>,
    /// The latest resourceVersion: watches wake on it.
    written: watch::Sender<u64>,
    /// Bumped by [`ApiServer::disconnect_watches`]: watches end on it.
    disconnects: watch::Sender<u64>,
    open_watches: AtomicUsize,
    bookmark_interval: Duration,
    max_body: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running double; stops (closing every connection) on drop.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Starts a double with the default kinds on a free loopback port.
    pub fn start() -> Result<ApiServer, Error> {
        ApiServer::with_options(Options::default())
    }

    /// Starts a double on its own thread and runtime, so that sync and async callers alike can
    /// use it and its hooks.
    pub fn with_options(options: Options) -> Result<ApiServer, Error> {
        let io = |what: String| move |source| Error::Io { what, source };
        let listener = std::net::TcpListener::bind(options.addr)
            .map_err(io(format!("API server double: bind {}", options.addr)))?;
        listener
            .set_nonblocking(true)
            .map_err(io("API server double: nonblocking".into()))?;
        let addr = listener
            .local_addr()
            .map_err(io("API server double: local address".into()))?;
        let tables = options
            .resources
            .iter()
            .map(|def| {
                (
                    def.gvr,
                    Table {
                        def: *def,
                        objects: BTreeMap::new(),
                    },
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                floor: 1,
                tables,
                history: VecDeque::new(),
                history_limit: options.history.max(1),
                uids: 0,
                requests: VecDeque::new(),
            }),
            written: watch::Sender::new(1),
            disconnects: watch::Sender::new(0),
            open_watches: AtomicUsize::new(0),
            bookmark_interval: options.bookmark_interval,
            max_body: options.max_body,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("API server double: runtime".into()))?;
        let (shutdown, stop) = oneshot::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("apiserver-double".into())
            .spawn(move || runtime.block_on(accept(listener, s, stop)))
            .map_err(io("API server double: thread".into()))?;
        Ok(ApiServer {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context points at this double (no credentials needed).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\n\
             contexts:\n- name: double\n  context:\n    cluster: double\n    user: double\n    \
             namespace: default\ncurrent-context: double\nusers:\n- name: double\n  user: {{}}\n",
            self.url()
        )
    }

    /// Writes [`ApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> Result<(), Error> {
        std::fs::write(path, self.kubeconfig()).map_err(|source| Error::Io {
            what: format!("write {}", path.display()),
            source,
        })
    }

    /// A kube client for this double.
    pub fn client(&self) -> kube::Client {
        let url = self.url().parse().expect("a valid URL");
        kube::Client::try_from(kube::Config::new(url)).expect("a kube client for the double")
    }

    /// Serves another kind from now on (like installing a CRD).
    pub fn install(&self, def: ResourceDef) {
        self.shared.lock().tables.entry(def.gvr).or_insert(Table {
            def,
            objects: BTreeMap::new(),
        });
    }

    /// Stops serving a kind and forgets its objects (like deleting a CRD; no events are sent).
    pub fn uninstall(&self, gvr: &Gvr) {
        self.shared.lock().tables.remove(gvr);
        self.disconnect_watches();
    }

    /// Creates an object (kind from its apiVersion and kind; namespace `default` when unset).
    pub fn create(&self, object: impl serde::Serialize) -> Result<Value, ApiError> {
        let object = serde_json::to_value(object).map_err(|e| ApiError::bad(e.to_string()))?;
        let (gvr, ns) = self.locate(&object)?;
        let r = self.shared.lock().create(gvr, ns.as_deref(), object);
        self.notify();
        r
    }

    /// Creates the object, or replaces it if it exists (ignoring its resourceVersion).
    pub fn apply(&self, object: impl serde::Serialize) -> Result<Value, ApiError> {
        let mut object = serde_json::to_value(object).map_err(|e| ApiError::bad(e.to_string()))?;
        if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let (gvr, ns) = self.locate(&object)?;
        let name = name_of(&object).to_string();
        let r = {
            let mut state = self.shared.lock();
            if state.get(gvr, ns.as_deref(), &name).is_ok() {
                state.replace(gvr, ns.as_deref(), &name, object, false)
            } else {
                state.create(gvr, ns.as_deref(), object)
            }
        };
        self.notify();
        r
    }

    /// Applies a JSON merge patch to an object (`namespace` is ignored for cluster-scoped kinds).
    pub fn patch(
        &self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        merge_patch: Value,
    ) -> Result<Value, ApiError> {
        self.patch_as(gvr, namespace, name, merge_patch, false)
    }

    /// Applies a JSON merge patch to an object's status.
    pub fn patch_status(
        &self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        merge_patch: Value,
    ) -> Result<Value, ApiError> {
        self.patch_as(gvr, namespace, name, merge_patch, true)
    }

    fn patch_as(
        &self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        merge_patch: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let body = serde_json::to_vec(&merge_patch).expect("a JSON value serializes");
        let r = {
            let mut state = self.shared.lock();
            let ns = state.scope(gvr, namespace)?;
            state.patch(*gvr, ns.as_deref(), name, PatchKind::Merge, &body, status)
        };
        self.notify();
        r
    }

    pub fn delete(&self, gvr: &Gvr, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let r = {
            let mut state = self.shared.lock();
            let ns = state.scope(gvr, namespace)?;
            state.delete(*gvr, ns.as_deref(), name)
        };
        self.notify();
        r
    }

    /// The object as stored now.
    pub fn object(&self, gvr: &Gvr, namespace: &str, name: &str) -> Option<Value> {
        let state = self.shared.lock();
        let ns = state.scope(gvr, namespace).ok()?;
        state.get(*gvr, ns.as_deref(), name).ok()
    }

    /// Every object of a kind, by namespace and name.
    pub fn objects(&self, gvr: &Gvr) -> Vec<Value> {
        let state = self.shared.lock();
        state
            .tables
            .get(gvr)
            .map(|t| t.objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Ends every open watch now (clients see the stream end and resume from their last
    /// resourceVersion).
    pub fn disconnect_watches(&self) {
        self.shared.disconnects.send_modify(|g| *g += 1);
    }

    /// Forgets the whole history (as an etcd compaction does) and ends every watch: clients
    /// resuming from any resourceVersion they saw get 410 Expired and must relist.
    pub fn expire_watches(&self) {
        {
            let mut state = self.shared.lock();
            state.rv += 1;
            state.floor = state.rv;
            state.history.clear();
        }
        self.notify();
        self.disconnect_watches();
    }

    /// How many watches are open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// The last requests received, as `METHOD /path?query` (at most 1000).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    fn locate(&self, object: &Value) -> Result<(Gvr, Option<String>), ApiError> {
        let state = self.shared.lock();
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let def = state
            .tables
            .values()
            .map(|t| t.def)
            .find(|d| d.gvr.api_version() == api_version && d.kind == kind)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("no kind {kind:?} in {api_version:?} is served"),
                )
            })?;
        let ns = def.namespaced.then(|| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string()
        });
        Ok((def.gvr, ns))
    }

    fn notify(&self) {
        let rv = self.shared.lock().rv;
        self.shared.written.send_replace(rv);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("a static response head")
}

fn failure(e: &ApiError) -> Response<Body> {
    respond(e.code, &e.status())
}

/// What a URL names.
enum Route {
    Version,
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
    Collection {
        gvr: Gvr,
        ns: Option<String>,
    },
    Item {
        gvr: Gvr,
        ns: Option<String>,
        name: String,
        status: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchKind {
    Merge,
    Json,
    Apply,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    {
        let mut state = shared.lock();
        if state.requests.len() >= REQUEST_LOG {
            state.requests.pop_front();
        }
        let q = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        state
            .requests
            .push_back(format!("{} {path}{q}", req.method()));
    }
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let body = match Limited::new(req.into_body(), shared.max_body)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return failure(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!(
                    "the request body is larger than {} bytes or broken",
                    shared.max_body
                ),
            ))
        }
    };
    let route = match route(&shared.lock(), &path) {
        Ok(r) => r,
        Err(e) => return failure(&e),
    };
    let mut created = false;
    let result = match (route, &method) {
        (Route::Version, &Method::GET) => Ok(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-trellis-double",
            "platform": "linux/amd64",
        })),
        (Route::CoreVersions, &Method::GET) => Ok(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })),
        (Route::Groups, &Method::GET) => Ok(shared.lock().groups()),
        (Route::Group(g), &Method::GET) => shared.lock().group(&g),
        (Route::Resources(g, v), &Method::GET) => shared.lock().resources(&g, &v),
        (Route::Collection { gvr, ns }, &Method::GET) => {
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                return watch(shared, gvr, ns, &query);
            }
            let selector = Selector::from_query(&query);
            selector.and_then(|s| shared.lock().list(gvr, ns.as_deref(), &s))
        }
        (Route::Collection { gvr, ns }, &Method::POST) => parse_body(&body).and_then(|object| {
            let r = shared.lock().create(gvr, ns.as_deref(), object);
            notify(&shared);
            created = true;
            r
        }),
        (Route::Item { gvr, ns, name, .. }, &Method::GET) => {
            shared.lock().get(gvr, ns.as_deref(), &name)
        }
        (
            Route::Item {
                gvr,
                ns,
                name,
                status,
            },
            &Method::PUT,
        ) => parse_body(&body).and_then(|object| {
            let r = shared
                .lock()
                .replace(gvr, ns.as_deref(), &name, object, status);
            notify(&shared);
            r
        }),
        (
            Route::Item {
                gvr,
                ns,
                name,
                status,
            },
            &Method::PATCH,
        ) => {
            let kind = match content_type.as_str() {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    Ok(PatchKind::Merge)
                }
                "application/json-patch+json" => Ok(PatchKind::Json),
                "application/apply-patch+yaml" => Ok(PatchKind::Apply),
                other => Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"),
                )),
            };
            kind.and_then(|kind| {
                let r = shared
                    .lock()
                    .patch(gvr, ns.as_deref(), &name, kind, &body, status);
                notify(&shared);
                r
            })
        }
        (
            Route::Item {
                gvr,
                ns,
                name,
                status: false,
            },
            &Method::DELETE,
        ) => {
            let r = shared.lock().delete(gvr, ns.as_deref(), &name);
            notify(&shared);
            r
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource: {method} {path}"
            ),
        )),
    };
    match result {
        Ok(v) => respond(if created { 201 } else { 200 }, &v),
        Err(e) => failure(&e),
    }
}

fn notify(shared: &Shared) {
    let rv = shared.lock().rv;
    shared.written.send_replace(rv);
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml::from_slice(body))
        .map_err(|e| {
            ApiError::bad(format!(
                "the request body is not a JSON or YAML object: {e}"
            ))
        })
}

fn route(state: &State, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(ApiError::no_resource()),
    };
    let find = |plural: &str| {
        state
            .tables
            .values()
            .map(|t| t.def)
            .find(|d| d.gvr.group == group && d.gvr.version == version && d.gvr.plural == plural)
            .ok_or_else(ApiError::no_resource)
    };
    let (ns, rest) = match rest {
        [] => return Ok(Route::Resources(group.into(), version.into())),
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => (
            Some(ns.to_string()),
            std::iter::once(*plural).chain(tail.iter().copied()),
        ),
        _ => (
            None,
            std::iter::once(rest[0]).chain(rest[1..].iter().copied()),
        ),
    };
    let rest: Vec<&str> = rest.collect();
    let def = find(rest[0])?;
    if ns.is_some() && !def.namespaced {
        return Err(ApiError::no_resource());
    }
    match rest.as_slice() {
        [_] => Ok(Route::Collection { gvr: def.gvr, ns }),
        [_, name] | [_, name, "status"] => {
            if def.namespaced && ns.is_none() {
                return Err(ApiError::no_resource());
            }
            Ok(Route::Item {
                gvr: def.gvr,
                ns,
                name: name.to_string(),
                status: rest.len() == 3,
            })
        }
        _ => Err(ApiError::no_resource()),
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Labels and fields a list or watch asked for.
struct Selector {
    labels: Vec<Requirement>,
    /// (dotted path, value, equal?)
    fields: Vec<(String, String, bool)>,
}

enum Requirement {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    fn from_query(query: &BTreeMap<String, String>) -> Result<Selector, ApiError> {
        let mut labels = Vec::new();
        for part in split_outside_parens(query.get("labelSelector").map_or("", |s| s)) {
            labels.push(Requirement::parse(part)?);
        }
        let mut fields = Vec::new();
        for part in query
            .get("fieldSelector")
            .map_or("", |s| s)
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (path, value, eq) = if let Some((k, v)) = part.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, v, true)
            } else {
                return Err(ApiError::bad(format!("invalid field selector {part:?}")));
            };
            fields.push((path.trim().to_string(), value.trim().to_string(), eq));
        }
        Ok(Selector { labels, fields })
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            Requirement::Eq(k, v) => label(k) == Some(v),
            Requirement::Ne(k, v) => label(k) != Some(v),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|(path, value, eq)| {
                let pointer = format!("/{}", path.replace('.', "/"));
                let found = match object.pointer(&pointer) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                (found == *value) == *eq
            })
    }
}

fn split_outside_parens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.retain(|p| !p.is_empty());
    out
}

impl Requirement {
    fn parse(part: &str) -> Result<Requirement, ApiError> {
        let set = |rest: &str| -> Option<Vec<String>> {
            let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
            Some(inner.split(',').map(|v| v.trim().to_string()).collect())
        };
        let bad = || ApiError::bad(format!("unable to parse requirement {part:?}"));
        if let Some(k) = part.strip_prefix('!') {
            return Ok(Requirement::NotExists(k.trim().to_string()));
        }
        if let Some((k, v)) = part.split_once("!=") {
            return Ok(Requirement::Ne(k.trim().into(), v.trim().into()));
        }
        if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            return Ok(Requirement::Eq(k.trim().into(), v.trim().into()));
        }
        if let Some((k, rest)) = part.split_once(" notin ") {
            return Ok(Requirement::NotIn(
                k.trim().into(),
                set(rest).ok_or_else(bad)?,
            ));
        }
        if let Some((k, rest)) = part.split_once(" in ") {
            return Ok(Requirement::In(k.trim().into(), set(rest).ok_or_else(bad)?));
        }
        if part.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Requirement::Exists(part.to_string()))
    }
}

impl State {
    fn table(&self, gvr: Gvr) -> Result<&Table, ApiError> {
        self.tables.get(&gvr).ok_or_else(ApiError::no_resource)
    }

    /// The namespace key for a hook's `namespace` argument.
    fn scope(&self, gvr: &Gvr, namespace: &str) -> Result<Option<String>, ApiError> {
        let def = self.table(*gvr)?.def;
        Ok(def.namespaced.then(|| namespace.to_string()))
    }

    fn groups(&self) -> Value {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for gvr in self.tables.keys().filter(|g| !g.group.is_empty()) {
            let versions = groups.entry(gvr.group).or_default();
            if !versions.contains(&gvr.version) {
                versions.push(gvr.version);
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(g, vs)| group_json(g, &vs))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    fn group(&self, group: &str) -> Result<Value, ApiError> {
        let mut versions: Vec<&str> = Vec::new();
        for gvr in self.tables.keys().filter(|g| g.group == group) {
            if !versions.contains(&gvr.version) {
                versions.push(gvr.version);
            }
        }
        if versions.is_empty() {
            return Err(ApiError::no_resource());
        }
        let mut g = group_json(group, &versions);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        Ok(g)
    }

    fn resources(&self, group: &str, version: &str) -> Result<Value, ApiError> {
        let mut resources = Vec::new();
        for def in self
            .tables
            .values()
            .map(|t| t.def)
            .filter(|d| d.gvr.group == group && d.gvr.version == version)
        {
            resources.push(json!({
                "name": def.gvr.plural, "singularName": def.kind.to_lowercase(),
                "namespaced": def.namespaced, "kind": def.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }));
            if def.status {
                resources.push(json!({
                    "name": format!("{}/status", def.gvr.plural), "singularName": "",
                    "namespaced": def.namespaced, "kind": def.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        if resources.is_empty() {
            return Err(ApiError::no_resource());
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Ok(json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources,
        }))
    }

    fn list(&self, gvr: Gvr, ns: Option<&str>, selector: &Selector) -> Result<Value, ApiError> {
        let table = self.table(gvr)?;
        let items: Vec<&Value> = table
            .objects
            .iter()
            .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, o)| o)
            .filter(|o| selector.matches(o))
            .collect();
        Ok(json!({
            "kind": format!("{}List", table.def.kind),
            "apiVersion": gvr.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        }))
    }

    fn get(&self, gvr: Gvr, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.table(gvr)?
            .objects
            .get(&(ns.unwrap_or("").to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(gvr.plural, name))
    }

    /// Checks apiVersion, kind and namespace against the URL, filling in what is missing.
    fn conform(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        let Some(map) = object.as_object_mut() else {
            return Err(ApiError::bad("the object is not a JSON object"));
        };
        let api_version = def.gvr.api_version();
        for (field, want) in [("apiVersion", api_version.as_str()), ("kind", def.kind)] {
            match map.get(field).and_then(Value::as_str) {
                None | Some("") => {
                    map.insert(field.into(), json!(want));
                }
                Some(got) if got != want => {
                    return Err(ApiError::bad(format!(
                        "the {field} of the object ({got:?}) does not match the URL's ({want:?})"
                    )))
                }
                Some(_) => {}
            }
        }
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else {
            return Err(ApiError::bad("metadata is not an object"));
        };
        match (ns, meta.get("namespace").and_then(Value::as_str)) {
            (Some(ns), Some(got)) if got != ns && !got.is_empty() => {
                return Err(ApiError::bad(format!(
                    "the namespace of the provided object ({got}) does not match the namespace sent on the request ({ns})"
                )))
            }
            (Some(ns), _) => {
                meta.insert("namespace".into(), json!(ns));
            }
            (None, _) => {
                meta.remove("namespace");
            }
        }
        Ok(())
    }

    fn create(&mut self, gvr: Gvr, ns: Option<&str>, mut object: Value) -> Result<Value, ApiError> {
        let def = self.table(gvr)?.def;
        self.conform(&def, ns, &mut object)?;
        let meta = object["metadata"].as_object_mut().expect("conformed");
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if prefix.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("{} is invalid: metadata.name: Required value", def.kind),
                ));
            }
            name = format!("{prefix}{:05x}", self.uids + 1);
            meta.insert("name".into(), json!(name));
        }
        let key = (ns.unwrap_or("").to_string(), name.clone());
        if self.tables[&gvr].objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", gvr.plural),
            ));
        }
        self.uids += 1;
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            self.uids
        );
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .expect("a timestamp serializes");
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), now);
        meta.insert("generation".into(), json!(1));
        if def.status {
            object.as_object_mut().expect("an object").remove("status");
        }
        Ok(self.commit(gvr, key, None, Some(object)))
    }

    fn replace(
        &mut self,
        gvr: Gvr,
        ns: Option<&str>,
        name: &str,
        mut object: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let def = self.table(gvr)?.def;
        if status_only && !def.status {
            return Err(ApiError::no_resource());
        }
        self.conform(&def, ns, &mut object)?;
        let old = self.get(gvr, ns, name)?;
        if name_of(&object) != name {
            return Err(ApiError::bad(format!(
                "the name of the object ({:?}) does not match the name on the URL ({name:?})",
                name_of(&object)
            )));
        }
        let wanted_rv = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let old_rv = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if wanted_rv.is_some() && wanted_rv != old_rv {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    gvr.plural
                ),
            ));
        }
        let mut new = if status_only {
            let mut new = old.clone();
            match object.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("an object").remove("status");
                }
            }
            new
        } else {
            // Identity and bookkeeping stay the server's.
            for field in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                match old["metadata"].get(field) {
                    Some(v) => object["metadata"][field] = v.clone(),
                    None => {
                        object["metadata"]
                            .as_object_mut()
                            .expect("an object")
                            .remove(field);
                    }
                }
            }
            if def.status {
                match old.get("status") {
                    Some(s) => object["status"] = s.clone(),
                    None => {
                        object.as_object_mut().expect("an object").remove("status");
                    }
                }
            }
            object
        };
        if new == old {
            return Ok(old);
        }
        if spec_of(&new) != spec_of(&old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        let key = (ns.unwrap_or("").to_string(), name.to_string());
        Ok(self.commit(gvr, key, Some(old), Some(new)))
    }

    fn patch(
        &mut self,
        gvr: Gvr,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let old = match self.get(gvr, ns, name) {
            Ok(o) => o,
            Err(e) if kind == PatchKind::Apply && !status_only && e.code == 404 => {
                let mut object = parse_body(body)?;
                object["metadata"]["name"] = json!(name);
                return self.create(gvr, ns, object);
            }
            Err(e) => return Err(e),
        };
        let mut new = old.clone();
        match kind {
            PatchKind::Merge | PatchKind::Apply => json_patch::merge(&mut new, &parse_body(body)?),
            PatchKind::Json => {
                let patch: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad(format!("not a JSON patch: {e}")))?;
                json_patch::patch(&mut new, &patch).map_err(|e| {
                    ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"))
                })?;
            }
        }
        self.replace(gvr, ns, name, new, status_only)
    }

    fn delete(&mut self, gvr: Gvr, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let old = self.get(gvr, ns, name)?;
        let key = (ns.unwrap_or("").to_string(), name.to_string());
        Ok(self.commit(gvr, key, Some(old), None))
    }

    /// Stores the write with a new resourceVersion, records its event, and returns the object as
    /// stored (for a delete: the last state, with the delete's resourceVersion).
    fn commit(
        &mut self,
        gvr: Gvr,
        key: (String, String),
        old: Option<Value>,
        new: Option<Value>,
    ) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let table = self.tables.get_mut(&gvr).expect("checked by the caller");
        let (kind, mut object) = match (new, &old) {
            (Some(n), None) => (EventType::Added, n),
            (Some(n), Some(_)) => (EventType::Modified, n),
            (None, Some(o)) => (EventType::Deleted, o.clone()),
            (None, None) => unreachable!("a write changes something"),
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if kind == EventType::Deleted {
            table.objects.remove(&key);
        } else {
            table.objects.insert(key, object.clone());
        }
        if self.history.len() >= self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.floor = e.rv;
            }
        }
        self.history.push_back(Event {
            rv,
            gvr,
            kind,
            old: old.map(Arc::new),
            new: Arc::new(object.clone()),
        });
        object
    }
}

/// Everything but metadata and status: what `metadata.generation` counts changes of.
fn spec_of(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn group_json(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions.clone(), "preferredVersion": versions[0]})
}

/// Starts a watch: validates the request at once (so an unknown resource is a plain 404), then
/// streams from a task.
fn watch(
    shared: Arc<Shared>,
    gvr: Gvr,
    ns: Option<String>,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let selector = match Selector::from_query(query) {
        Ok(s) => s,
        Err(e) => return failure(&e),
    };
    let def = match shared.lock().table(gvr) {
        Ok(t) => t.def,
        Err(e) => return failure(&e),
    };
    let from: Option<u64> = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse() {
            Ok(n) => Some(n),
            Err(_) => return failure(&ApiError::bad(format!("invalid resourceVersion {rv:?}"))),
        },
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(MAX_WATCH)
        .min(MAX_WATCH);
    let w = Watch {
        def,
        ns,
        selector,
        bookmarks: matches!(
            query.get("allowWatchBookmarks").map(String::as_str),
            Some("true" | "1")
        ),
        initial_events: matches!(
            query.get("sendInitialEvents").map(String::as_str),
            Some("true" | "1")
        ),
        from,
        timeout,
    };
    let (tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(16);
    tokio::spawn(w.run(shared, tx));
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(body.boxed())
        .expect("a static response head")
}

struct Watch {
    def: ResourceDef,
    ns: Option<String>,
    selector: Selector,
    bookmarks: bool,
    initial_events: bool,
    /// None: send the current objects as ADDED first (resourceVersion absent or 0).
    from: Option<u64>,
    timeout: Duration,
}

/// Counts a watch as open while it lives.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

type Tx = http_body_util::channel::Sender<Bytes, Infallible>;

/// A watch's side of its response body.
struct Out {
    tx: Tx,
    /// [`ApiServer::disconnect_watches`] ends a watch even while it waits on a slow reader.
    disconnects: watch::Receiver<u64>,
}

impl Out {
    /// Sends one event line; false when the watch must end (reader gone, or disconnected).
    async fn send(&mut self, kind: &str, object: &Value) -> bool {
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
            .expect("an event serializes");
        line.push(b'\n');
        tokio::select! {
            r = self.tx.send(Frame::data(Bytes::from(line))) => r.is_ok(),
            _ = self.disconnects.changed() => false,
        }
    }
}

impl Watch {
    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let mut b = json!({
            "kind": self.def.kind, "apiVersion": self.def.gvr.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
        });
        if initial_end {
            b["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        b
    }

    fn wanted(&self, object: &Value) -> bool {
        let ns_ok = self.ns.as_deref().is_none_or(|ns| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                == Some(ns)
        });
        ns_ok && self.selector.matches(object)
    }

    async fn run(self, shared: Arc<Shared>, tx: Tx) {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        let _open = Open(shared.clone());
        let mut written = shared.written.subscribe();
        let mut disconnects = shared.disconnects.subscribe();
        disconnects.borrow_and_update();
        let mut out = Out { tx, disconnects };
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(shared.bookmark_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.reset();

        // Where to start: the current objects, or the history after `from`.
        let mut cursor = match self.from {
            Some(from) => from,
            None => {
                let (objects, rv) = {
                    let state = shared.lock();
                    let objects: Vec<Value> = state
                        .tables
                        .get(&self.def.gvr)
                        .map(|t| {
                            t.objects
                                .values()
                                .filter(|o| self.wanted(o))
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    (objects, state.rv)
                };
                for o in &objects {
                    if !out.send("ADDED", o).await {
                        return;
                    }
                }
                if self.initial_events && !out.send("BOOKMARK", &self.bookmark(rv, true)).await {
                    return;
                }
                rv
            }
        };
        loop {
            written.borrow_and_update();
            let batch = {
                let state = shared.lock();
                if !state.tables.contains_key(&self.def.gvr) {
                    return;
                }
                if cursor < state.floor {
                    Err(ApiError::new(
                        410,
                        "Expired",
                        format!("too old resource version: {cursor} ({})", state.floor),
                    ))
                } else {
                    let start = state.history.partition_point(|e| e.rv <= cursor);
                    let events: Vec<Event> = state
                        .history
                        .range(start..)
                        .take(WATCH_BATCH)
                        .cloned()
                        .collect();
                    let end = events.last().map_or(state.rv.max(cursor), |e| e.rv);
                    Ok((events, end))
                }
            };
            let (events, end) = match batch {
                Ok(b) => b,
                Err(e) => {
                    let _ = out.send("ERROR", &e.status()).await;
                    return;
                }
            };
            let had_events = !events.is_empty();
            for e in events.iter().filter(|e| e.gvr == self.def.gvr) {
                let was = e.old.as_deref().is_some_and(|o| self.wanted(o));
                let is = self.wanted(&e.new);
                let kind = match (e.kind, was, is) {
                    (EventType::Added, _, true) => "ADDED",
                    (EventType::Modified, true, true) => "MODIFIED",
                    (EventType::Modified, false, true) => "ADDED",
                    (EventType::Modified, true, false) => "DELETED",
                    (EventType::Deleted, true, _) => "DELETED",
                    _ => continue,
                };
                if !out.send(kind, &e.new).await {
                    return;
                }
            }
            cursor = end;
            if had_events {
                continue;
            }
            tokio::select! {
                r = written.changed() => if r.is_err() { return },
                _ = out.disconnects.changed() => return,
                _ = ticks.tick() => {
                    if self.bookmarks && !out.send("BOOKMARK", &self.bookmark(cursor, false)).await {
                        return;
                    }
                }
                _ = &mut deadline => {
                    if self.bookmarks {
                        let _ = out.send("BOOKMARK", &self.bookmark(cursor, false)).await;
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(labels: &str, fields: &str) -> Selector {
        let q = BTreeMap::from([
            ("labelSelector".to_string(), labels.to_string()),
            ("fieldSelector".to_string(), fields.to_string()),
        ]);
        Selector::from_query(&q).unwrap()
    }

    #[test]
    fn selectors_match_labels_and_fields() {
        let o = json!({"metadata": {"name": "a", "namespace": "x", "labels": {"app": "web", "tier": "front"}}});
        assert!(selector("", "").matches(&o));
        assert!(selector("app=web,tier==front", "").matches(&o));
        assert!(!selector("app=web,tier!=front", "").matches(&o));
        assert!(selector("app in (db, web),!missing,tier", "").matches(&o));
        assert!(!selector("app notin (web)", "").matches(&o));
        assert!(selector("", "metadata.name=a,metadata.namespace!=y").matches(&o));
        assert!(!selector("", "metadata.name=b").matches(&o));
        let bad = BTreeMap::from([("labelSelector".to_string(), "a b".to_string())]);
        assert_eq!(Selector::from_query(&bad).err().map(|e| e.code), Some(400));
    }

    #[test]
    fn query_components_are_percent_decoded() {
        let q = parse_query("&labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=true&x=%zz");
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "%zz");
    }

    #[test]
    fn urls_name_collections_items_and_status() {
        let state = State {
            rv: 1,
            floor: 1,
            tables: DEFAULT_RESOURCES
                .iter()
                .map(|d| {
                    (
                        d.gvr,
                        Table {
                            def: *d,
                            objects: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            history: VecDeque::new(),
            history_limit: 1,
            uids: 0,
            requests: VecDeque::new(),
        };
        let show = |path: &str| match route(&state, path) {
            Ok(Route::Collection { gvr, ns }) => format!("list {} {ns:?}", gvr.plural),
            Ok(Route::Item {
                gvr,
                ns,
                name,
                status,
            }) => format!("item {} {ns:?} {name} {status}", gvr.plural),
            Ok(Route::Resources(g, v)) => format!("resources {g}/{v}"),
            Ok(_) => "other".into(),
            Err(e) => format!("{}", e.code),
        };
        assert_eq!(show("/api/v1/services"), "list services None");
        assert_eq!(
            show("/api/v1/namespaces/a/services"),
            "list services Some(\"a\")"
        );
        assert_eq!(
            show("/api/v1/namespaces/a/services/web/status"),
            "item services Some(\"a\") web true"
        );
        assert_eq!(show("/api/v1/namespaces/a"), "item namespaces None a false");
        assert_eq!(
            show("/api/v1/namespaces/a/status"),
            "item namespaces None a true"
        );
        assert_eq!(
            show("/api/v1/services/web"),
            "404",
            "namespaced needs a namespace"
        );
        assert_eq!(
            show("/apis/trellis.dev/v1alpha1/namespaces/d/trafficpolicies/p"),
            "item trafficpolicies Some(\"d\") p false"
        );
        assert_eq!(
            show("/apis/trellis.dev/v1alpha1"),
            "resources trellis.dev/v1alpha1"
        );
        assert_eq!(show("/apis/trellis.dev/v2/trafficpolicies"), "404");
        assert_eq!(show("/api/v1/namespaces/a/services/web/exec"), "404");
    }
}

//! The control plane's picture of the cluster: Services, EndpointSlices, TrafficPolicies, and the
//! Gateway API objects (HTTPRoutes, GRPCRoutes, Gateways, HTTPFaults), indexed by ClusterIP:port,
//! with one global `version`.
//!
//! It exists so that the sources (a directory, the Kubernetes watchers) and the compiler
//! never meet: sources feed [`Change`]s or whole snapshots in, [`crate::compile`] reads out. Every
//! mutation returns the set of Services (and Gateways) it [`Touched`], so the server recompiles and
//! pushes only the destinations that could have changed.
//!
//! Routes make answers depend on other objects: a Service's answer holds, for each of its routes'
//! backends, that backend's endpoints and policy, and the `HTTPFault`s its rules name. So the model
//! keeps reverse indexes (backend Service -> routes, HTTPFault -> routes, parent -> routes), and a
//! change to a backend, its EndpointSlices or its TrafficPolicy, or to an HTTPFault, touches the
//! parents of every route that references it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use config::api::ServiceRef;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::policy::{self, Parsed};
use crate::route::{Parent, ParsedFault, ParsedGateway, ParsedRoute, RouteError, RouteKind};

/// The label that joins an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One object of a kind the model holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    TrafficPolicy(Box<Parsed>),
    /// An HTTPRoute or a GRPCRoute (its [`ParsedRoute::kind`] says which).
    Route(Box<ParsedRoute>),
    HttpFault(Box<ParsedFault>),
    Gateway(Box<ParsedGateway>),
}

/// Which kind of object, for keys and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    TrafficPolicy,
    HttpRoute,
    GrpcRoute,
    HttpFault,
    Gateway,
}

impl Kind {
    /// The key kind of a route of kind `kind`.
    pub fn of_route(kind: RouteKind) -> Kind {
        match kind {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
        }
    }

    pub fn is_route(self) -> bool {
        matches!(self, Kind::HttpRoute | Kind::GrpcRoute)
    }
}

/// A kind, namespace and name: the identity of an object across changes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Object {
    /// The object's key (namespace `default` when metadata leaves it out, as kubectl does).
    pub fn key(&self) -> Key {
        let (kind, ns, name) = match self {
            Object::Service(s) => (Kind::Service, &s.metadata.namespace, &s.metadata.name),
            Object::EndpointSlice(e) => {
                (Kind::EndpointSlice, &e.metadata.namespace, &e.metadata.name)
            }
            Object::TrafficPolicy(p) => return named(Kind::TrafficPolicy, &p.namespace, &p.name),
            Object::Route(r) => return named(Kind::of_route(r.kind), &r.namespace, &r.name),
            Object::HttpFault(f) => return named(Kind::HttpFault, &f.namespace, &f.name),
            Object::Gateway(g) => return named(Kind::Gateway, &g.namespace, &g.name),
        };
        Key {
            kind,
            namespace: ns.clone().unwrap_or_else(|| "default".into()),
            name: name.clone().unwrap_or_default(),
        }
    }

    /// The Services whose answers depend on this object directly (routes: their parent
    /// Services; see [`Object::parents`]).
    fn services(&self) -> Vec<ServiceRef> {
        let key = self.key();
        let names = match self {
            Object::Route(r) => {
                return r
                    .parents
                    .iter()
                    .filter_map(|p| match &p.parent {
                        Parent::Service(s) => Some(s.clone()),
                        Parent::Gateway(_) => None,
                    })
                    .collect()
            }
            Object::HttpFault(_) | Object::Gateway(_) => Vec::new(),
            Object::Service(_) => vec![key.name.clone()],
            Object::EndpointSlice(e) => e
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned()
                .into_iter()
                .collect(),
            Object::TrafficPolicy(p) => p.targets.clone(),
        };
        names
            .into_iter()
            .map(|name| ServiceRef {
                namespace: key.namespace.clone(),
                name,
            })
            .collect()
    }

    /// The Gateways whose answers depend on this object directly.
    fn gateways(&self) -> Vec<ServiceRef> {
        match self {
            Object::Gateway(g) => vec![ServiceRef {
                namespace: g.namespace.clone(),
                name: g.name.clone(),
            }],
            Object::Route(r) => r
                .parents
                .iter()
                .filter_map(|p| match &p.parent {
                    Parent::Gateway(g) => Some(g.clone()),
                    Parent::Service(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A route's parents, backend Services and HTTPFaults (nothing for another object).
type RouteRefs = (Vec<Parent>, Vec<ServiceRef>, Vec<ServiceRef>);

fn route_refs(o: Option<&Object>) -> RouteRefs {
    match o {
        Some(Object::Route(r)) => (
            r.parents.iter().map(|p| p.parent.clone()).collect(),
            r.backend_services(),
            r.fault_refs(),
        ),
        _ => Default::default(),
    }
}

fn named(kind: Kind, namespace: &str, name: &str) -> Key {
    Key {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// One event from a source.
#[derive(Debug, Clone)]
pub enum Change {
    /// Added or modified.
    Apply(Object),
    Delete(Key),
}

/// What a change may have altered: the Services and Gateways whose compiled answers must be
/// looked at again (a route's parents included when one of its backends or faults changed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<ServiceRef>,
    pub gateways: BTreeSet<ServiceRef>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.gateways.is_empty()
    }

    /// Was this parent touched?
    pub fn has(&self, parent: &Parent) -> bool {
        match parent {
            Parent::Service(s) => self.services.contains(s),
            Parent::Gateway(g) => self.gateways.contains(g),
        }
    }
}

/// A Service port found by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRef {
    pub service: ServiceRef,
    pub port: u16,
    /// The Service port's name (`None` when unnamed): the EndpointSlice port it maps to.
    pub port_name: Option<String>,
}

/// A policy problem worth telling an operator about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The policy was refused; the Services it targets get the default policy.
    Invalid(policy::PolicyError),
    /// A valid policy lost to an older one targeting the same Service.
    Conflict {
        loser: String,
        winner: String,
        service: ServiceRef,
    },
    /// A route, HTTPFault or Gateway problem: refused (the object is ignored) or a warning (the
    /// rest applies); the message says which.
    Route(RouteError),
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Report::Invalid(e) => write!(f, "{e} (the policy is ignored)"),
            Report::Conflict {
                loser,
                winner,
                service,
            } => write!(
                f,
                "{loser}: spec.targetRefs: Service {service} is already targeted by the older \
                 policy {winner}, which wins; this policy is ignored for it"
            ),
            Report::Route(e) if e.problem.is_warning() => write!(f, "{e}"),
            Report::Route(e) => write!(f, "{e} (the object is ignored)"),
        }
    }
}

/// The model. Cheap to clone for tests; the server keeps one behind a lock.
#[derive(Debug, Clone, Default)]
pub struct Model {
    version: u64,
    objects: BTreeMap<Key, Object>,
    /// ClusterIP:port -> Service port, rebuilt from `objects` on every Service change.
    by_address: BTreeMap<SocketAddr, PortRef>,
    index_dirty: bool,
    /// Service -> the names of the EndpointSlices labelled for it (same namespace), kept with
    /// every change: compiling an answer must not filter every slice of a large namespace.
    slices_by_service: BTreeMap<ServiceRef, BTreeSet<String>>,
    /// Parent (Service or Gateway) -> the routes attached to it.
    routes_by_parent: BTreeMap<Parent, BTreeSet<Key>>,
    /// Backend Service -> the routes that send or mirror to it.
    routes_by_backend: BTreeMap<ServiceRef, BTreeSet<Key>>,
    /// HTTPFault (namespace/name) -> the routes that name it.
    routes_by_fault: BTreeMap<ServiceRef, BTreeSet<Key>>,
}

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    /// Bumped on every change that altered the model.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Applies one event; returns what it touched (nothing, and no version bump, if the object
    /// was already as given).
    pub fn apply(&mut self, change: Change) -> Touched {
        let mut touched = Touched::default();
        let changed = self.apply_one(change, &mut touched);
        self.finish(changed, touched)
    }

    /// Replaces everything by `objects` (a source that re-reads all, like the directory),
    /// applying only the differences. Later duplicates of one key win.
    pub fn sync(&mut self, objects: impl IntoIterator<Item = Object>) -> Touched {
        self.sync_where(objects, |_| true)
    }

    /// Replaces every object of one kind by `objects` (a watcher's relist: each kind is listed
    /// on its own), applying only the differences; other kinds are left alone. Objects of
    /// another kind in `objects` are applied too, but never deleted by this call.
    pub fn sync_kind(&mut self, kind: Kind, objects: impl IntoIterator<Item = Object>) -> Touched {
        self.sync_where(objects, |k| k.kind == kind)
    }

    fn sync_where(
        &mut self,
        objects: impl IntoIterator<Item = Object>,
        scope: impl Fn(&Key) -> bool,
    ) -> Touched {
        let wanted: BTreeMap<Key, Object> = objects.into_iter().map(|o| (o.key(), o)).collect();
        let mut touched = Touched::default();
        let mut changed = false;
        let gone: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| scope(k) && !wanted.contains_key(k))
            .cloned()
            .collect();
        for key in gone {
            changed |= self.apply_one(Change::Delete(key), &mut touched);
        }
        for (_, object) in wanted {
            changed |= self.apply_one(Change::Apply(object), &mut touched);
        }
        self.finish(changed, touched)
    }

    /// True if the model changed (even when no Service is touched, e.g. an unlabelled slice).
    fn apply_one(&mut self, change: Change, touched: &mut Touched) -> bool {
        let (key, old, new_services) = match change {
            Change::Apply(object) => {
                let key = object.key();
                if self.objects.get(&key) == Some(&object) {
                    return false;
                }
                let services = object.services();
                let old = self.objects.insert(key.clone(), object);
                (key, old, services)
            }
            Change::Delete(key) => match self.objects.remove(&key) {
                None => return false,
                Some(old) => (key, Some(old), Vec::new()),
            },
        };
        if key.kind == Kind::EndpointSlice {
            for service in old.iter().flat_map(Object::services) {
                if let Some(names) = self.slices_by_service.get_mut(&service) {
                    names.remove(&key.name);
                    if names.is_empty() {
                        self.slices_by_service.remove(&service);
                    }
                }
            }
            for service in &new_services {
                self.slices_by_service
                    .entry(service.clone())
                    .or_default()
                    .insert(key.name.clone());
            }
        }
        if key.kind.is_route() {
            let (was, is) = (route_refs(old.as_ref()), route_refs(self.objects.get(&key)));
            self.index_route(&key, was, is);
        }
        for o in old.iter().chain(self.objects.get(&key)) {
            touched.gateways.extend(o.gateways());
        }
        touched
            .services
            .extend(old.iter().flat_map(Object::services));
        touched.services.extend(new_services);
        // The parents of the routes that depend on what changed: a backend Service (itself, its
        // slices, its policy) or an HTTPFault.
        let mut dependents: BTreeSet<Key> = BTreeSet::new();
        if matches!(
            key.kind,
            Kind::Service | Kind::EndpointSlice | Kind::TrafficPolicy
        ) {
            for s in old
                .iter()
                .chain(self.objects.get(&key))
                .flat_map(Object::services)
            {
                dependents.extend(
                    self.routes_by_backend
                        .get(&s)
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
            }
        }
        if key.kind == Kind::HttpFault {
            let f = ServiceRef {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            };
            dependents.extend(self.routes_by_fault.get(&f).into_iter().flatten().cloned());
        }
        for route in dependents {
            if let Some(o) = self.objects.get(&route) {
                touched.services.extend(o.services());
                touched.gateways.extend(o.gateways());
            }
        }
        // Reindexed once per apply/sync, not per Service (a snapshot holds many).
        self.index_dirty |= key.kind == Kind::Service;
        true
    }

    /// Keeps the route indexes in step with one route's change.
    fn index_route(&mut self, key: &Key, old: RouteRefs, new: RouteRefs) {
        fn update<K: Ord + Clone>(
            index: &mut BTreeMap<K, BTreeSet<Key>>,
            old: &[K],
            new: &[K],
            key: &Key,
        ) {
            for k in old {
                if let Some(set) = index.get_mut(k) {
                    set.remove(key);
                    if set.is_empty() {
                        index.remove(k);
                    }
                }
            }
            for k in new {
                index.entry(k.clone()).or_default().insert(key.clone());
            }
        }
        let ((op, ob, of), (np, nb, nf)) = (old, new);
        update(&mut self.routes_by_parent, &op, &np, key);
        update(&mut self.routes_by_backend, &ob, &nb, key);
        update(&mut self.routes_by_fault, &of, &nf, key);
    }

    fn finish(&mut self, changed: bool, touched: Touched) -> Touched {
        if changed {
            self.version += 1;
        }
        if std::mem::take(&mut self.index_dirty) {
            self.reindex();
        }
        touched
    }

    fn reindex(&mut self) {
        self.by_address.clear();
        for object in self.objects.values() {
            let Object::Service(svc) = object else {
                continue;
            };
            let key = object.key();
            for (addr, port) in service_ports(svc, &key) {
                // Two Services claiming one address: the first by namespace/name keeps it.
                self.by_address.entry(addr).or_insert(port);
            }
        }
    }

    /// The Service port with this ClusterIP:port.
    pub fn port(&self, address: SocketAddr) -> Option<&PortRef> {
        self.by_address.get(&normalize(address))
    }

    pub fn service(&self, service: &ServiceRef) -> Option<&Service> {
        match self.objects.get(&key(Kind::Service, service)) {
            Some(Object::Service(s)) => Some(s),
            _ => None,
        }
    }

    /// The EndpointSlices labelled for this Service, by name.
    pub fn slices<'a>(
        &'a self,
        service: &'a ServiceRef,
    ) -> impl Iterator<Item = &'a EndpointSlice> {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(move |name| {
                let key = Key {
                    kind: Kind::EndpointSlice,
                    namespace: service.namespace.clone(),
                    name: name.clone(),
                };
                match self.objects.get(&key) {
                    Some(Object::EndpointSlice(e)) => Some(&**e),
                    _ => None,
                }
            })
    }

    /// Every policy (valid or not) in a namespace that targets this Service, winner first.
    pub fn policies_for<'a>(&'a self, service: &ServiceRef) -> Vec<&'a Parsed> {
        let mut found: Vec<&Parsed> = self
            .objects
            .range(range(Kind::TrafficPolicy, &service.namespace))
            .filter_map(|(_, o)| match o {
                Object::TrafficPolicy(p) if p.targets.contains(&service.name) => Some(&**p),
                _ => None,
            })
            .collect();
        found.sort_by(|a, b| {
            (a.result.is_err(), a.precedence()).cmp(&(b.result.is_err(), b.precedence()))
        });
        found
    }

    /// The policy that applies to this Service, if any valid one targets it.
    pub fn winning_policy(&self, service: &ServiceRef) -> Option<&Parsed> {
        self.policies_for(service)
            .into_iter()
            .next()
            .filter(|p| p.result.is_ok())
    }

    /// Problems with the policies that target this Service: refused ones and conflicts.
    pub fn reports_for(&self, service: &ServiceRef) -> Vec<Report> {
        let policies = self.policies_for(service);
        let winner = policies.first().filter(|p| p.result.is_ok());
        let mut out = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            match (&p.result, winner) {
                (Err(e), _) => out.push(Report::Invalid(e.clone())),
                (Ok(_), Some(w)) if i > 0 => out.push(Report::Conflict {
                    loser: p.id(),
                    winner: w.id(),
                    service: service.clone(),
                }),
                _ => {}
            }
        }
        out
    }

    /// Every problem: each policy's (see [`Model::policy_reports`]), then every route's, HTTPFault's
    /// and Gateway's (see [`crate::compile::route_reports`]).
    pub fn reports(&self) -> Vec<Report> {
        let mut out = self.policy_reports();
        out.extend(
            crate::compile::route_reports(self)
                .into_iter()
                .map(Report::Route),
        );
        out
    }

    /// Every problem with every policy: each refused policy once, then each conflict.
    pub fn policy_reports(&self) -> Vec<Report> {
        let mut out: Vec<Report> = self
            .policies()
            .filter_map(|p| p.result.as_ref().err())
            .map(|e| Report::Invalid(e.clone()))
            .collect();
        let targeted: BTreeSet<ServiceRef> = self
            .policies()
            .filter(|p| p.result.is_ok())
            .flat_map(|p| {
                p.targets.iter().map(|t| ServiceRef {
                    namespace: p.namespace.clone(),
                    name: t.clone(),
                })
            })
            .collect();
        for service in targeted {
            out.extend(
                self.reports_for(&service)
                    .into_iter()
                    .filter(|r| matches!(r, Report::Conflict { .. })),
            );
        }
        out
    }

    /// How many policies are refused right now.
    pub fn invalid_policies(&self) -> usize {
        self.policies().filter(|p| p.result.is_err()).count()
    }

    /// Every policy. Keys sort by kind first, so the policies are one range of the map: store
    /// changes look at them on every event, and walking every Service and slice instead made each
    /// event cost O(cluster size) (about 2 ms at 10,000 Services and their slices).
    fn policies(&self) -> impl Iterator<Item = &Parsed> {
        self.of_kind(Kind::TrafficPolicy).filter_map(|o| match o {
            Object::TrafficPolicy(p) => Some(&**p),
            _ => None,
        })
    }

    /// Every object of one kind (one range of the map).
    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        let first = Key {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.objects
            .range(first..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, o)| o)
    }

    /// Every HTTPRoute, then every GRPCRoute, valid or not.
    pub fn routes(&self) -> impl Iterator<Item = &ParsedRoute> {
        self.of_kind(Kind::HttpRoute)
            .chain(self.of_kind(Kind::GrpcRoute))
            .filter_map(|o| match o {
                Object::Route(r) => Some(&**r),
                _ => None,
            })
    }

    /// Every HTTPFault, valid or not.
    pub fn faults(&self) -> impl Iterator<Item = &ParsedFault> {
        self.of_kind(Kind::HttpFault).filter_map(|o| match o {
            Object::HttpFault(f) => Some(&**f),
            _ => None,
        })
    }

    /// Every Gateway.
    pub fn gateways(&self) -> impl Iterator<Item = &ParsedGateway> {
        self.of_kind(Kind::Gateway).filter_map(|o| match o {
            Object::Gateway(g) => Some(&**g),
            _ => None,
        })
    }

    /// The routes (valid or not) with a parentRef naming this parent, by key.
    pub fn routes_for<'a>(&'a self, parent: &Parent) -> impl Iterator<Item = &'a ParsedRoute> {
        self.routes_by_parent
            .get(parent)
            .into_iter()
            .flatten()
            .filter_map(|k| match self.objects.get(k) {
                Some(Object::Route(r)) => Some(&**r),
                _ => None,
            })
    }

    /// Every parent some route names.
    pub fn parents(&self) -> impl Iterator<Item = &Parent> {
        self.routes_by_parent.keys()
    }

    pub fn fault(&self, fault: &ServiceRef) -> Option<&ParsedFault> {
        match self.objects.get(&key(Kind::HttpFault, fault)) {
            Some(Object::HttpFault(f)) => Some(f),
            _ => None,
        }
    }

    /// The route of kind `kind` named `route`.
    pub fn route(&self, kind: RouteKind, route: &ServiceRef) -> Option<&ParsedRoute> {
        match self.objects.get(&key(Kind::of_route(kind), route)) {
            Some(Object::Route(r)) => Some(r),
            _ => None,
        }
    }

    pub fn gateway(&self, gateway: &ServiceRef) -> Option<&ParsedGateway> {
        match self.objects.get(&key(Kind::Gateway, gateway)) {
            Some(Object::Gateway(g)) => Some(g),
            _ => None,
        }
    }
}

fn key(kind: Kind, s: &ServiceRef) -> Key {
    Key {
        kind,
        namespace: s.namespace.clone(),
        name: s.name.clone(),
    }
}

/// The keys of one kind in one namespace.
fn range(kind: Kind, namespace: &str) -> std::ops::RangeInclusive<Key> {
    let lo = Key {
        kind,
        namespace: namespace.to_string(),
        name: String::new(),
    };
    let hi = Key {
        kind,
        namespace: format!("{namespace}\0"),
        name: String::new(),
    };
    lo..=hi
}

/// IPv4-mapped IPv6 addresses are looked up as the IPv4 address they carry.
fn normalize(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// Every ClusterIP:port of a Service (all of `clusterIPs`, else `clusterIP`), TCP ports only;
/// none for headless (`None`) and ExternalName Services.
fn service_ports(svc: &Service, key: &Key) -> Vec<(SocketAddr, PortRef)> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let mut ips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.iter());
    }
    let ips: Vec<IpAddr> = ips.into_iter().filter_map(|ip| ip.parse().ok()).collect();
    let service = ServiceRef {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    };
    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
            continue;
        }
        let Ok(number) = u16::try_from(port.port) else {
            continue;
        };
        for ip in &ips {
            out.push((
                SocketAddr::new(*ip, number),
                PortRef {
                    service: service.clone(),
                    port: number,
                    port_name: port.name.clone().filter(|n| !n.is_empty()),
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str, ips: &[&str]) -> Object {
        Object::Service(Box::new(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ips[0], "clusterIPs": ips,
                         "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}
            }))
            .unwrap(),
        ))
    }

    fn slice(name: &str, service: &str, ip: &str) -> Object {
        Object::EndpointSlice(Box::new(
            serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": "default",
                             "labels": {SERVICE_NAME_LABEL: service}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip]}],
                "ports": [{"name": "http", "port": 8080}]
            }))
            .unwrap(),
        ))
    }

    fn refs(names: &[&str]) -> BTreeSet<ServiceRef> {
        names
            .iter()
            .map(|n| ServiceRef {
                namespace: "default".into(),
                name: n.to_string(),
            })
            .collect()
    }

    #[test]
    fn changes_say_which_services_they_touched() {
        let mut m = Model::new();
        let t = m.sync([
            service("a", &["10.96.0.1", "fd00::1"]),
            service("b", &["10.96.0.2"]),
            slice("a-1", "a", "10.0.0.1"),
        ]);
        assert_eq!(t.services, refs(&["a", "b"]));
        assert_eq!(m.version(), 1);
        // The same snapshot again changes nothing.
        assert!(m
            .sync([
                service("a", &["10.96.0.1", "fd00::1"]),
                service("b", &["10.96.0.2"]),
                slice("a-1", "a", "10.0.0.1"),
            ])
            .is_empty());
        assert_eq!(m.version(), 1);
        // A slice moved from a to b touches both.
        let t = m.apply(Change::Apply(slice("a-1", "b", "10.0.0.1")));
        assert_eq!(t.services, refs(&["a", "b"]));
        assert_eq!(m.version(), 2);
        // Deleting what is not there is no change.
        let t = m.apply(Change::Delete(Key {
            kind: Kind::Service,
            namespace: "default".into(),
            name: "zzz".into(),
        }));
        assert!(t.is_empty());
        assert_eq!(m.version(), 2);
    }

    #[test]
    fn a_kind_is_synced_without_touching_the_others() {
        let mut m = Model::new();
        m.sync([
            service("a", &["10.96.0.1"]),
            slice("a-1", "a", "10.0.0.1"),
            slice("a-2", "a", "10.0.0.2"),
        ]);
        // A relist of slices that no longer has a-2: a-2 goes, the Service stays.
        let t = m.sync_kind(Kind::EndpointSlice, [slice("a-1", "a", "10.0.0.1")]);
        assert_eq!(t.services, refs(&["a"]));
        let a = ServiceRef {
            namespace: "default".into(),
            name: "a".into(),
        };
        assert_eq!(m.slices(&a).count(), 1);
        assert!(m.service(&a).is_some());
        // An empty relist of Services leaves the slices.
        m.sync_kind(Kind::Service, []);
        assert!(m.service(&a).is_none());
        assert_eq!(m.slices(&a).count(), 1);
    }

    #[test]
    fn slices_follow_their_service_label() {
        let mut m = Model::new();
        m.sync([
            service("a", &["10.96.0.1"]),
            slice("a-2", "a", "10.0.0.2"),
            slice("a-1", "a", "10.0.0.1"),
            slice("b-1", "b", "10.0.0.3"),
        ]);
        let of = |m: &Model, name: &str| -> Vec<String> {
            let s = ServiceRef {
                namespace: "default".into(),
                name: name.into(),
            };
            m.slices(&s)
                .map(|e| e.metadata.name.clone().unwrap_or_default())
                .collect()
        };
        assert_eq!(of(&m, "a"), ["a-1", "a-2"], "by name");
        assert_eq!(of(&m, "b"), ["b-1"]);
        // Relabelled from a to b, then deleted.
        m.apply(Change::Apply(slice("a-2", "b", "10.0.0.2")));
        assert_eq!(of(&m, "a"), ["a-1"]);
        assert_eq!(of(&m, "b"), ["a-2", "b-1"]);
        m.apply(Change::Delete(Key {
            kind: Kind::EndpointSlice,
            namespace: "default".into(),
            name: "a-2".into(),
        }));
        assert_eq!(of(&m, "b"), ["b-1"]);
        m.sync_kind(Kind::EndpointSlice, []);
        assert!(of(&m, "a").is_empty() && of(&m, "b").is_empty());
        assert!(m.slices_by_service.is_empty());
    }

    #[test]
    fn policies_are_found_among_services_and_slices() {
        let policy = |name: &str, simple: &str| {
            Object::TrafficPolicy(Box::new(policy::parse(&json!({
                "apiVersion": "trellis.dev/v1alpha1", "kind": "TrafficPolicy",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "a"}],
                         "loadBalancer": {"simple": simple}},
            }))))
        };
        let mut m = Model::new();
        m.sync([
            service("a", &["10.96.0.1"]),
            slice("a-1", "a", "10.0.0.1"),
            policy("bad", "FASTEST"),
            service("z", &["10.96.0.2"]),
            policy("good", "RANDOM"),
            slice("z-1", "z", "10.0.0.2"),
        ]);
        assert_eq!(m.policies().count(), 2);
        assert_eq!(m.invalid_policies(), 1);
        assert_eq!(m.reports().len(), 1, "{:?}", m.reports());
        let a = ServiceRef {
            namespace: "default".into(),
            name: "a".into(),
        };
        assert_eq!(m.winning_policy(&a).map(|p| p.name.as_str()), Some("good"));
    }

    fn route(name: &str, parent: &str, backend: &str, fault: &str) -> Object {
        Object::Route(Box::new(crate::route::parse_route(&json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": parent}],
                "rules": [{
                    "filters": [{"type": "ExtensionRef", "extensionRef":
                        {"group": "trellis.dev", "kind": "HTTPFault", "name": fault}}],
                    "backendRefs": [{"name": backend, "port": 80}],
                }],
            },
        }))))
    }

    fn fault(name: &str, status: u16) -> Object {
        Object::HttpFault(Box::new(crate::route::parse_fault(&json!({
            "apiVersion": "trellis.dev/v1alpha1", "kind": "HTTPFault",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"abort": {"httpStatus": status}},
        }))))
    }

    #[test]
    fn a_backend_or_fault_change_touches_the_parents_of_the_routes_that_use_it() {
        let mut m = Model::new();
        m.sync([
            service("a", &["10.96.0.1"]),
            service("b", &["10.96.0.2"]),
            service("c", &["10.96.0.3"]),
            route("a-to-b", "a", "b", "f"),
        ]);
        // The backend's slice: b itself, and a, whose route sends to b.
        let t = m.apply(Change::Apply(slice("b-1", "b", "10.0.0.2")));
        assert_eq!(t.services, refs(&["a", "b"]));
        // An unrelated Service's slice touches only it.
        let t = m.apply(Change::Apply(slice("c-1", "c", "10.0.0.3")));
        assert_eq!(t.services, refs(&["c"]));
        // The fault the route names.
        let t = m.apply(Change::Apply(fault("f", 503)));
        assert_eq!(t.services, refs(&["a"]));
        let t = m.apply(Change::Apply(fault("other", 503)));
        assert!(t.is_empty());
        // The route moved to backend c: a is touched (its own route changed); later b is not.
        let t = m.apply(Change::Apply(route("a-to-b", "a", "c", "f")));
        assert_eq!(t.services, refs(&["a"]));
        let t = m.apply(Change::Apply(slice("b-1", "b", "10.0.0.9")));
        assert_eq!(t.services, refs(&["b"]));
        let t = m.apply(Change::Delete(Key {
            kind: Kind::Service,
            namespace: "default".into(),
            name: "c".into(),
        }));
        assert_eq!(t.services, refs(&["a", "c"]));
        // The route goes: its parent is touched, and the indexes are empty again.
        let t = m.apply(Change::Delete(Key {
            kind: Kind::HttpRoute,
            namespace: "default".into(),
            name: "a-to-b".into(),
        }));
        assert_eq!(t.services, refs(&["a"]));
        assert!(m.routes_by_parent.is_empty());
        assert!(m.routes_by_backend.is_empty());
        assert!(m.routes_by_fault.is_empty());
    }

    #[test]
    fn an_http_route_and_a_grpc_route_of_one_name_are_two_objects() {
        let doc = |kind: &str| {
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
                "metadata": {"name": "r", "namespace": "default"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "a"}]},
            })
        };
        let http = Object::Route(Box::new(crate::route::parse_route(&doc("HTTPRoute"))));
        let grpc = Object::Route(Box::new(crate::route::parse_grpc_route(&doc("GRPCRoute"))));
        assert_eq!(grpc.key().kind, Kind::GrpcRoute);
        let mut m = Model::new();
        m.sync([service("a", &["10.96.0.1"]), http, grpc]);
        let a = Parent::Service(ServiceRef {
            namespace: "default".into(),
            name: "a".into(),
        });
        assert_eq!(m.routes_for(&a).count(), 2);
        assert_eq!(m.routes().count(), 2);
        let r = ServiceRef {
            namespace: "default".into(),
            name: "r".into(),
        };
        assert_eq!(m.route(RouteKind::Grpc, &r).unwrap().kind, RouteKind::Grpc);
        // A relist of GRPCRoutes without it deletes the GRPCRoute only.
        m.sync_kind(Kind::GrpcRoute, []);
        assert!(m.route(RouteKind::Grpc, &r).is_none());
        assert!(m.route(RouteKind::Http, &r).is_some());
    }

    #[test]
    fn indexes_every_cluster_ip_and_tcp_port_but_not_headless() {
        let mut m = Model::new();
        m.sync([
            service("a", &["10.96.0.1", "fd00::1"]),
            service("h", &["None"]),
        ]);
        for addr in ["10.96.0.1:80", "[fd00::1]:80", "[::ffff:10.96.0.1]:80"] {
            assert_eq!(
                m.port(addr.parse().unwrap())
                    .map(|p| p.service.name.as_str()),
                Some("a"),
                "{addr}"
            );
        }
        assert!(m.port("10.96.0.1:53".parse().unwrap()).is_none(), "UDP");
        assert_eq!(m.by_address.len(), 2);
    }
}

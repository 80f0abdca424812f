//! The live model and its subscribers: sources write here, streams read here.
//!
//! One topic per watched address, holding only its latest [`Update`] (a `tokio::sync::watch`), so
//! a slow proxy never makes memory grow: it simply gets the newest answer when it reads again;
//! and likewise one per watched Gateway ([`GatewayUpdate`]). After every change only the topics
//! whose Service (or Gateway) was touched are recompiled, and a topic is pushed only if its
//! compiled answer really differs. "Touched" includes the parents of every route that sends to
//! a changed Service or names a changed HTTPFault (see [`crate::model`]), so an answer is
//! recomputed whenever anything it holds could have changed.
//!
//! Lock order (the one rule that keeps it deadlock-free and consistent): the model first, then
//! the topics. A change holds the model's write lock while it pushes, and a subscription holds
//! its read lock while it creates a topic, so no subscriber can start from a stale answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use config::api::{Destination, GatewayUpdate, Routes, ServiceRef, Update};
use tokio::sync::watch;

use crate::compile::{compile, compile_gateway, parent_reports};
use crate::metrics::Metrics;
use crate::model::{Change, Kind, Model, Object, Report, Touched};
use crate::route::Parent;

type Topics<K, T> = Mutex<HashMap<K, watch::Sender<Arc<T>>>>;

/// What a stream can watch: a destination's [`Update`]s by address, or a Gateway's
/// [`GatewayUpdate`]s by namespace/name.
pub trait Topic: Sized + Send + Sync + 'static {
    type Key: Clone + Eq + Hash + Send + Sync + 'static;
    fn topics(store: &Store) -> &Topics<Self::Key, Self>;
}

impl Topic for Update {
    type Key = SocketAddr;
    fn topics(store: &Store) -> &Topics<SocketAddr, Update> {
        &store.topics
    }
}

impl Topic for GatewayUpdate {
    type Key = ServiceRef;
    fn topics(store: &Store) -> &Topics<ServiceRef, GatewayUpdate> {
        &store.gateway_topics
    }
}

/// The shared state of a running control plane.
pub struct Store {
    model: RwLock<Model>,
    topics: Topics<SocketAddr, Update>,
    gateway_topics: Topics<ServiceRef, GatewayUpdate>,
    /// The route problems last logged per parent, so each new one is logged once.
    route_problems: Mutex<BTreeMap<Parent, BTreeSet<String>>>,
    ready: AtomicBool,
    /// The model's version after each change that touched something: for writers that follow
    /// the whole model (route status).
    changed: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
}

impl Store {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Store> {
        Arc::new(Store {
            model: RwLock::new(Model::new()),
            topics: Mutex::new(HashMap::new()),
            gateway_topics: Mutex::new(HashMap::new()),
            route_problems: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            changed: watch::Sender::new(0),
            metrics,
        })
    }

    /// Replaces the model's objects by a snapshot; see [`Model::sync`].
    pub fn sync(&self, objects: Vec<Object>) -> Touched {
        self.change(|m| m.sync(objects))
    }

    /// Replaces every object of one kind; see [`Model::sync_kind`].
    pub fn sync_kind(&self, kind: Kind, objects: Vec<Object>) -> Touched {
        self.change(|m| m.sync_kind(kind, objects))
    }

    /// Every policy problem now (refused policies, then conflicts); see
    /// [`Model::policy_reports`].
    pub fn policy_reports(&self) -> Vec<Report> {
        self.model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .policy_reports()
    }

    /// Every problem now, policies' and routes'; see [`Model::reports`].
    pub fn reports(&self) -> Vec<Report> {
        self.model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .reports()
    }

    /// Wakes after each change that touched something (the value: the model's version).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Reads the model (under its read lock: keep `f` short).
    pub fn with_model<T>(&self, f: impl FnOnce(&Model) -> T) -> T {
        f(&self.model.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Applies one event; see [`Model::apply`].
    pub fn apply(&self, change: Change) -> Touched {
        self.change(|m| m.apply(change))
    }

    fn change(&self, f: impl FnOnce(&mut Model) -> Touched) -> Touched {
        let mut model = self.model.write().unwrap_or_else(|e| e.into_inner());
        let before: BTreeSet<String> = conflicts(&model);
        let touched = f(&mut model);
        for c in conflicts(&model).difference(&before) {
            tracing::warn!("{c}");
        }
        self.metrics.model_version.set(model.version());
        self.metrics
            .policy_errors
            .set(i64::try_from(model.invalid_policies()).unwrap_or(i64::MAX));
        if !touched.is_empty() {
            self.log_route_problems(&model, &touched);
            self.push(&model, &touched);
            self.changed.send_replace(model.version());
        }
        touched
    }

    /// Logs, once each, the new problems of the routes attached to touched parents (a refused
    /// route, an unsupported field, a missing backend or HTTPFault).
    fn log_route_problems(&self, model: &Model, touched: &Touched) {
        let parents = touched
            .services
            .iter()
            .map(|s| Parent::Service(s.clone()))
            .chain(touched.gateways.iter().map(|g| Parent::Gateway(g.clone())));
        let mut logged = self
            .route_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for parent in parents {
            if model.routes_for(&parent).next().is_none() {
                logged.remove(&parent);
                continue;
            }
            let now: BTreeSet<String> = parent_reports(model, &parent, None)
                .iter()
                .map(|r| Report::Route(r.clone()).to_string())
                .collect();
            let before = logged.get(&parent);
            for p in now
                .iter()
                .filter(|p| before.is_none_or(|b| !b.contains(*p)))
            {
                tracing::warn!(parent = %parent, "route: {p}");
            }
            logged.insert(parent, now);
        }
    }

    /// Recompiles the topics whose Service (before or after) was touched; pushes those that
    /// changed.
    fn push(&self, model: &Model, touched: &Touched) {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        for (addr, tx) in topics.iter() {
            let was = tx
                .borrow()
                .destination
                .as_ref()
                .is_some_and(|d| touched.services.contains(&d.service));
            let is = model
                .port(*addr)
                .is_some_and(|p| touched.services.contains(&p.service));
            if !(was || is) {
                continue;
            }
            let destination = self.compile(model, *addr);
            tx.send_if_modified(|current| {
                if current.destination == destination {
                    return false;
                }
                *current = Arc::new(Update {
                    version: model.version(),
                    address: *addr,
                    destination,
                });
                true
            });
        }
        drop(topics);
        let gateways = self
            .gateway_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (gateway, tx) in gateways.iter() {
            if !touched.gateways.contains(gateway) {
                continue;
            }
            let routes = self.compile_gateway(model, gateway);
            tx.send_if_modified(|current| {
                if current.routes == routes {
                    return false;
                }
                *current = Arc::new(GatewayUpdate {
                    version: model.version(),
                    gateway: gateway.clone(),
                    routes,
                });
                true
            });
        }
    }

    fn compile_gateway(&self, model: &Model, gateway: &ServiceRef) -> Option<Routes> {
        let start = Instant::now();
        let r = compile_gateway(model, gateway);
        self.metrics
            .compile_seconds
            .observe(start.elapsed().as_secs_f64());
        r
    }

    fn compile(&self, model: &Model, addr: SocketAddr) -> Option<Destination> {
        let start = Instant::now();
        let d = compile(model, addr);
        self.metrics
            .compile_seconds
            .observe(start.elapsed().as_secs_f64());
        d
    }

    /// Starts watching `address`: the receiver holds the current answer at once.
    pub fn subscribe(self: &Arc<Self>, address: SocketAddr) -> Subscription {
        self.subscribe_to(address, |store, model| Update {
            version: model.version(),
            address,
            destination: store.compile(model, address),
        })
    }

    /// Starts watching Gateway `gateway`: the receiver holds the current answer at once.
    pub fn subscribe_gateway(self: &Arc<Self>, gateway: ServiceRef) -> Subscription<GatewayUpdate> {
        let key = gateway.clone();
        self.subscribe_to(key, |store, model| GatewayUpdate {
            version: model.version(),
            routes: store.compile_gateway(model, &gateway),
            gateway,
        })
    }

    fn subscribe_to<T: Topic>(
        self: &Arc<Self>,
        key: T::Key,
        first: impl FnOnce(&Store, &Model) -> T,
    ) -> Subscription<T> {
        let model = self.model.read().unwrap_or_else(|e| e.into_inner());
        let mut topics = T::topics(self).lock().unwrap_or_else(|e| e.into_inner());
        let rx = match topics.get(&key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(Arc::new(first(self, &model)));
                topics.insert(key.clone(), tx);
                rx
            }
        };
        self.metrics.streams.inc();
        self.metrics.streams_active.inc();
        Subscription {
            rx,
            store: self.clone(),
            key,
        }
    }

    /// The answer a new subscriber would get now (for describe and tests).
    pub fn answer(&self, address: SocketAddr) -> Update {
        let model = self.model.read().unwrap_or_else(|e| e.into_inner());
        Update {
            version: model.version(),
            address,
            destination: self.compile(&model, address),
        }
    }

    /// The answer a new subscriber to Gateway `gateway` would get now.
    pub fn gateway_answer(&self, gateway: &ServiceRef) -> GatewayUpdate {
        let model = self.model.read().unwrap_or_else(|e| e.into_inner());
        GatewayUpdate {
            version: model.version(),
            gateway: gateway.clone(),
            routes: self.compile_gateway(&model, gateway),
        }
    }

    pub fn version(&self) -> u64 {
        self.model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .version()
    }

    /// How many addresses are watched now.
    pub fn topics(&self) -> usize {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Called by the source once its first load is in the model.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
        // Writers that wait for the whole first picture (route status) look now.
        self.changed.send_modify(|_| {});
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

fn conflicts(model: &Model) -> BTreeSet<String> {
    model
        .policy_reports()
        .into_iter()
        .filter(|r| matches!(r, Report::Conflict { .. }))
        .map(|r| r.to_string())
        .collect()
}

/// One stream's view of a topic. Dropping the last one for a key removes the topic.
pub struct Subscription<T: Topic = Update> {
    pub rx: watch::Receiver<Arc<T>>,
    store: Arc<Store>,
    key: T::Key,
}

impl<T: Topic> Subscription<T> {
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl<T: Topic> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.store.metrics.streams_active.dec();
        let mut topics = T::topics(&self.store)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Our own receiver is still alive here: 1 means nobody else watches.
        if topics
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            topics.remove(&self.key);
        }
    }
}

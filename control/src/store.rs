//! The live model and its subscribers: sources write here, streams read here.
//!
//! One topic per watched address, holding only its latest [`Update`] (a `tokio::sync::watch`), so
//! a slow proxy never makes memory grow: it simply gets the newest answer when it reads again.
//! After every change only the topics whose Service was touched are recompiled, and a topic is
//! pushed only if its compiled answer really differs.
//!
//! Lock order (the one rule that keeps it deadlock-free and consistent): the model first, then
//! the topics. A change holds the model's write lock while it pushes, and a subscription holds
//! its read lock while it creates a topic, so no subscriber can start from a stale answer.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use config::api::{Destination, Update};
use tokio::sync::watch;

use crate::compile::compile;
use crate::metrics::Metrics;
use crate::model::{Change, Kind, Model, Object, Report, Touched};

/// The shared state of a running control plane.
pub struct Store {
    model: RwLock<Model>,
    topics: Mutex<HashMap<SocketAddr, watch::Sender<Arc<Update>>>>,
    ready: AtomicBool,
    pub metrics: Arc<Metrics>,
}

impl Store {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Store> {
        Arc::new(Store {
            model: RwLock::new(Model::new()),
            topics: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
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

    /// Every policy problem now (refused policies, then conflicts); see [`Model::reports`].
    pub fn reports(&self) -> Vec<Report> {
        self.model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .reports()
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
            self.push(&model, &touched);
        }
        touched
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
        let model = self.model.read().unwrap_or_else(|e| e.into_inner());
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let rx = match topics.get(&address) {
            Some(tx) => tx.subscribe(),
            None => {
                let update = Update {
                    version: model.version(),
                    address,
                    destination: self.compile(&model, address),
                };
                let (tx, rx) = watch::channel(Arc::new(update));
                topics.insert(address, tx);
                rx
            }
        };
        self.metrics.streams.inc();
        self.metrics.streams_active.inc();
        Subscription {
            rx,
            store: self.clone(),
            address,
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
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

fn conflicts(model: &Model) -> BTreeSet<String> {
    model
        .reports()
        .into_iter()
        .filter(|r| matches!(r, Report::Conflict { .. }))
        .map(|r| r.to_string())
        .collect()
}

/// One stream's view of a topic. Dropping the last one for an address removes the topic.
pub struct Subscription {
    pub rx: watch::Receiver<Arc<Update>>,
    store: Arc<Store>,
    address: SocketAddr,
}

impl Subscription {
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.store.metrics.streams_active.dec();
        let mut topics = self.store.topics.lock().unwrap_or_else(|e| e.into_inner());
        // Our own receiver is still alive here: 1 means nobody else watches.
        if topics
            .get(&self.address)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            topics.remove(&self.address);
        }
    }
}

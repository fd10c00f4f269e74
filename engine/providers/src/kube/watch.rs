//! Shared watches: one kube-runtime `watcher` per (API server, resource type), started lazily
//! and serving every concurrent wait of the provider (docs/design.md "Targets": one shared watch per
//! resource type per management cluster, no per-run polling).
//!
//! A [`SharedWatch`] watches its resource type in **all namespaces** through
//! `kube::runtime::watcher` with the watcher's built-in backoff
//! (`WatchStreamExt::default_backoff`, client-go's 0.8 s … 30 s) and applies its events to an
//! [`Index`] of the objects **by cluster**: the key of an object is its namespace and its
//! `cluster.x-k8s.io/cluster-name` label, or its own name when it has none (a Cluster, a
//! ClusterBootstrap `<cluster>`, a workload cluster's PackageInstall). Each object is kept
//! reduced to what the waits read ([`tkgops_domain::wait::watched`]: no `managedFields`,
//! annotations, templates or topology variables), as its JSON text (a parsed `Value` takes
//! several times the memory, and a management cluster of a thousand clusters holds thousands of
//! Machines), and parsed when a wait reads it: a wait reads only its own cluster's objects.
//!
//! A change notifies only the waits subscribed to its keys (the object's cluster key and its own
//! `namespace/name`), through a `tokio::sync::watch` channel per key created on first
//! subscription: with a thousand clusters rolling on one management cluster, a change of one
//! Machine wakes the waits of its cluster only, and a wait reads only its own cluster's
//! objects (O(own objects) per own change, where the reflector store was scanned whole at every
//! change of any cluster). The index follows the watcher's relist semantics: between `Init` and
//! `InitDone` the events are buffered, and at `InitDone` the index is replaced by the listed
//! objects (objects that vanished meanwhile are removed, and their keys notified).
//!
//! Waits also subscribe to the watch's health channel, bumped after every watch error, when the
//! watch recovers, and when it (re)lists. Watch errors are classified like single requests
//! ([`super::classify`]); waiters apply the rules of the old polling loops
//! ([`SharedWatch::check`]): a permanent error (401, 403, unknown type) fails the wait at once,
//! [`super::MAX_CONSECUTIVE_POLL_ERRORS`] consecutive transient errors fail it transiently,
//! fewer are reported as progress while the watcher backs off and retries by itself.
//!
//! The watch task ends when the [`SharedWatch`] is dropped (with the provider, or when evicted
//! after a permanent error so that the next attempt builds a fresh client).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::Value;
use tkgops_domain::executor::StepError;
use tkgops_domain::wait::cluster::CLUSTER_NAME_LABEL;
use tkgops_domain::wait::{label, name_of, namespace_of, str_at, watched};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{classify, KubeProvider, MAX_CONSECUTIVE_POLL_ERRORS};
use crate::wait::Reporter;
use crate::WorkloadTarget;

pub use tkgops_domain::wait::WaitOptions;

/// `timeoutSeconds` of every watch request: below the client's read timeout (120 s), so an idle
/// watch is ended by the server and re-opened by the watcher instead of failing.
const WATCH_TIMEOUT_SECS: u32 = 100;

/// A key of the index: (namespace, cluster name or object name); "" for cluster-scoped objects.
pub(crate) type Key = (String, String);

/// The health of a watch, as seen by waiters.
#[derive(Clone, Debug, Default)]
pub(crate) struct WatchHealth {
    /// Watch errors since the last successfully applied event.
    pub consecutive_errors: u32,
    /// The latest of them, classified.
    pub last_error: Option<StepError>,
}

/// One stored object: its JSON text, and what the index needs of it. The text takes a fraction
/// of the memory of a parsed `serde_json::Value` (a fleet's Machines are held by the
/// thousand); a wait parses only its own cluster's objects when it reads them.
#[derive(Clone, Debug)]
struct Stored {
    json: Arc<str>,
    group: String,
    resource_version: String,
}

impl Stored {
    /// `v`'s key and its stored form.
    fn of(v: &Value) -> (Key, Stored) {
        (
            object_key(v),
            Stored {
                json: Arc::from(v.to_string()),
                group: group_of(v),
                resource_version: str_at(v, "/metadata/resourceVersion").to_string(),
            },
        )
    }

    /// The object, parsed again (`None` only if the stored text were not JSON, which `of`
    /// never writes).
    fn value(&self) -> Option<Arc<Value>> {
        serde_json::from_str(&self.json).ok().map(Arc::new)
    }
}

/// The cluster key of `v`: its `cluster.x-k8s.io/cluster-name` label, else its own name.
fn group_of(v: &Value) -> String {
    match label(v, CLUSTER_NAME_LABEL) {
        "" => name_of(v).to_string(),
        cluster => cluster.to_string(),
    }
}

fn object_key(v: &Value) -> Key {
    (namespace_of(v).to_string(), name_of(v).to_string())
}

/// The objects of one watch, by `namespace/name` and by cluster key, with the watcher's relist
/// semantics. Plain data: the watch task applies events, waiters read.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// The kind of the watched objects: what of them is kept ([`watched::retain_read`]).
    kind: String,
    objects: HashMap<Key, Stored>,
    /// (namespace, cluster key) → the names of its objects.
    groups: HashMap<Key, BTreeSet<String>>,
    /// The objects of a relist in progress (between `Init` and `InitDone`).
    relist: Option<HashMap<Key, Stored>>,
    /// Whether a first list has completed.
    ready: bool,
}

impl Index {
    /// An empty index of objects of kind `kind`.
    pub(crate) fn of_kind(kind: &str) -> Self {
        Index {
            kind: kind.to_string(),
            ..Index::default()
        }
    }

    /// The stored form of `o`: what the waits read of it ([`watched::retain_read`]), as JSON
    /// text, and its keys. The object is taken apart rather than serialized whole, so its
    /// `spec` and `status` are moved, not copied, and its `managedFields` never converted.
    fn stored(&self, o: DynamicObject) -> Option<(Key, Stored)> {
        let mut v = match o.data {
            Value::Object(m) => Value::Object(m),
            _ => Value::Object(serde_json::Map::new()),
        };
        let mut meta = o.metadata;
        meta.managed_fields = None;
        meta.annotations = None;
        let meta = match serde_json::to_value(&meta) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "watch event metadata not representable as JSON; skipped");
                return None;
            }
        };
        if let Value::Object(m) = &mut v {
            if let Some(t) = o.types {
                m.insert("apiVersion".into(), Value::String(t.api_version));
                m.insert("kind".into(), Value::String(t.kind));
            }
            m.insert("metadata".into(), meta);
        }
        watched::retain_read(&self.kind, &mut v);
        Some(Stored::of(&v))
    }

    /// The keys a change of the object `key` (indexed under `group`) notifies: its cluster
    /// key and its own.
    fn touch(touched: &mut Vec<Key>, key: &Key, group: &str) {
        touched.push((key.0.clone(), group.to_string()));
        if key.1 != group {
            touched.push(key.clone());
        }
    }

    fn insert(&mut self, key: Key, stored: Stored, touched: &mut Vec<Key>) {
        self.remove(&key, touched);
        Self::touch(touched, &key, &stored.group);
        self.groups
            .entry((key.0.clone(), stored.group.clone()))
            .or_default()
            .insert(key.1.clone());
        self.objects.insert(key, stored);
    }

    fn remove(&mut self, key: &Key, touched: &mut Vec<Key>) {
        let Some(old) = self.objects.remove(key) else {
            return;
        };
        Self::touch(touched, key, &old.group);
        let gk = (key.0.clone(), old.group);
        if let Some(g) = self.groups.get_mut(&gk) {
            g.remove(&key.1);
            if g.is_empty() {
                self.groups.remove(&gk);
            }
        }
    }

    /// Applies one watcher event; pushes the keys whose objects changed to `touched`.
    pub(crate) fn apply(&mut self, event: watcher::Event<DynamicObject>, touched: &mut Vec<Key>) {
        match event {
            watcher::Event::Apply(o) => {
                if let Some((k, s)) = self.stored(o) {
                    self.insert(k, s, touched);
                }
            }
            watcher::Event::Delete(o) => {
                let key = (
                    o.metadata.namespace.unwrap_or_default(),
                    o.metadata.name.unwrap_or_default(),
                );
                self.remove(&key, touched);
            }
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                if let Some((k, s)) = self.stored(o) {
                    self.relist.get_or_insert_with(HashMap::new).insert(k, s);
                }
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                // Vanished or changed objects are removed (their keys notified)…
                let stale: Vec<Key> = self
                    .objects
                    .iter()
                    .filter(|(k, s)| {
                        listed.get(*k).map(|l| l.resource_version.as_str())
                            != Some(s.resource_version.as_str())
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &stale {
                    self.remove(k, touched);
                }
                // …and new or changed ones inserted.
                for (k, s) in listed {
                    if !self.objects.contains_key(&k) {
                        self.insert(k, s, touched);
                    }
                }
                self.ready = true;
            }
        }
    }

    /// The object `namespace/name`.
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&(namespace.to_string(), name.to_string()))
            .and_then(Stored::value)
    }

    /// The objects in `namespace` labelled `cluster.x-k8s.io/cluster-name=<cluster>`, by name.
    pub(crate) fn of_cluster(&self, namespace: &str, cluster: &str) -> Vec<Arc<Value>> {
        let ns = namespace.to_string();
        self.groups
            .get(&(ns.clone(), cluster.to_string()))
            .map(|g| {
                g.iter()
                    .filter_map(|name| self.objects.get(&(ns.clone(), name.clone())))
                    .filter_map(Stored::value)
                    .filter(|v| label(v, CLUSTER_NAME_LABEL) == cluster)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of objects.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }
}

/// The change notifications of one watch: a channel per subscribed key, and the health channel.
#[derive(Debug)]
struct Notifier {
    keys: Mutex<HashMap<Key, watch::Sender<u64>>>,
    health: watch::Sender<u64>,
    any: watch::Sender<u64>,
}

impl Notifier {
    fn new() -> Self {
        Notifier {
            keys: Mutex::new(HashMap::new()),
            health: watch::channel(0).0,
            any: watch::channel(0).0,
        }
    }

    fn subscribe(&self, key: Key) -> watch::Receiver<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        // Keys whose waits ended are dropped from time to time (amortized O(1)).
        if keys.len() >= 64 && keys.len().is_power_of_two() {
            keys.retain(|_, tx| tx.receiver_count() > 0);
        }
        keys.entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the subscribers of `touched` (and of every change).
    fn notify(&self, touched: &[Key]) {
        if touched.is_empty() {
            return;
        }
        {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            for k in touched {
                if let Some(tx) = keys.get(k) {
                    if tx.receiver_count() == 0 {
                        keys.remove(k);
                    } else {
                        tx.send_modify(|n| *n += 1);
                    }
                }
            }
        }
        self.any.send_modify(|n| *n += 1);
    }
}

/// One shared watch of one resource type on one API server. Cheap to share behind an [`Arc`].
pub(crate) struct SharedWatch {
    index: Arc<RwLock<Index>>,
    notifier: Arc<Notifier>,
    health: Arc<Mutex<WatchHealth>>,
    task: tokio::task::AbortHandle,
}

impl Drop for SharedWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn watch_error(what: &str, e: &watcher::Error) -> StepError {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => classify(what, e),
        watcher::Error::WatchError(s) => {
            // 410 Gone (resourceVersion too old): the watcher relists by itself.
            let e = kube::Error::Api(s.clone());
            classify(what, &e)
        }
        watcher::Error::NoResourceVersion => {
            StepError::Transient(format!("{what}: watch event without a resourceVersion"))
        }
    }
}

impl SharedWatch {
    /// Starts watching `resource` in all namespaces through `client`. `what` names the watch in
    /// errors. Must be called inside a Tokio runtime.
    fn start(client: kube::Client, resource: ApiResource, what: String) -> Self {
        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        let index = Arc::new(RwLock::new(Index::of_kind(&resource.kind)));
        let notifier = Arc::new(Notifier::new());
        let health = Arc::new(Mutex::new(WatchHealth::default()));
        let (task_index, task_notifier, task_health) =
            (index.clone(), notifier.clone(), health.clone());
        let stream =
            watcher(api, watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)).default_backoff();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut touched = Vec::new();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        let listing =
                            matches!(event, watcher::Event::Init | watcher::Event::InitApply(_));
                        let listed = matches!(event, watcher::Event::InitDone);
                        touched.clear();
                        task_index
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .apply(event, &mut touched);
                        touched.sort_unstable();
                        touched.dedup();
                        task_notifier.notify(&touched);
                        let mut recovered = false;
                        if !listing {
                            let mut h = task_health.lock().unwrap_or_else(|p| p.into_inner());
                            recovered = h.last_error.is_some();
                            *h = WatchHealth::default();
                        }
                        if recovered || listed {
                            task_notifier.health.send_modify(|n| *n += 1);
                        }
                    }
                    Err(e) => {
                        let err = watch_error(&what, &e);
                        tracing::debug!(watch = %what, error = %err, "watch error; the watcher backs off and retries");
                        {
                            let mut h = task_health.lock().unwrap_or_else(|p| p.into_inner());
                            h.consecutive_errors += 1;
                            h.last_error = Some(err);
                        }
                        task_notifier.health.send_modify(|n| *n += 1);
                    }
                }
            }
        })
        .abort_handle();
        SharedWatch {
            index,
            notifier,
            health,
            task,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver notified after every change of an object under `namespace/key` (the objects
    /// of cluster `key`, or the object named `key`).
    pub(crate) fn subscribe_key(&self, namespace: &str, key: &str) -> watch::Receiver<u64> {
        self.notifier
            .subscribe((namespace.to_string(), key.to_string()))
    }

    /// A receiver notified after every change of any object (for a watch whose objects all
    /// belong to one cluster: a workload cluster's).
    pub(crate) fn subscribe_all(&self) -> watch::Receiver<u64> {
        self.notifier.any.subscribe()
    }

    /// A receiver notified after every watch error, recovery and (re)list.
    pub(crate) fn subscribe_health(&self) -> watch::Receiver<u64> {
        self.notifier.health.subscribe()
    }

    /// Whether the initial list has been received (the index reflects the server).
    pub(crate) fn ready(&self) -> bool {
        self.read().ready
    }

    /// The object `namespace/name`, if the index has it.
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.read().get(namespace, name)
    }

    /// Objects in `namespace` labelled `cluster.x-k8s.io/cluster-name=<cluster>`.
    pub(crate) fn of_cluster(&self, namespace: &str, cluster: &str) -> Vec<Arc<Value>> {
        self.read().of_cluster(namespace, cluster)
    }

    /// The PollErrors rules applied to the watch's health: `Err` for a permanent error or for
    /// [`MAX_CONSECUTIVE_POLL_ERRORS`] consecutive transient ones; `Ok(Some(line))` with a
    /// progress line while fewer transient errors happened; `Ok(None)` when healthy.
    pub(crate) fn check(&self) -> Result<Option<String>, StepError> {
        let h = self.health.lock().map(|h| h.clone()).unwrap_or_default();
        match h.last_error {
            None => Ok(None),
            Some(StepError::Permanent(m)) => Err(StepError::Permanent(m)),
            Some(StepError::Transient(m))
                if h.consecutive_errors >= MAX_CONSECUTIVE_POLL_ERRORS =>
            {
                Err(StepError::Transient(m))
            }
            Some(StepError::Transient(m)) => Ok(Some(format!("transient error, retrying: {m}"))),
        }
    }
}

/// How long a shared watch lives ([`SharedWatches::get`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// As long as the provider: a management cluster's watches, shared by every wait of a
    /// fleet (relisting a fleet's Machines for each wave would cost more than keeping them).
    Provider,
    /// While some wait holds it: a workload cluster's watches end with the last wait on that
    /// cluster, so a fleet's upgrades do not leave one watch (a connection, a task and an
    /// index) per workload cluster behind.
    WhileUsed,
}

/// One entry of [`SharedWatches`]: always a weak handle, and a strong one for
/// [`Lifetime::Provider`].
struct Held {
    /// Never read: holding it keeps a [`Lifetime::Provider`] watch running.
    _strong: Option<Arc<SharedWatch>>,
    weak: std::sync::Weak<SharedWatch>,
}

/// The shared watches of one provider, by (client key, resource plural.group).
#[derive(Default)]
pub(crate) struct SharedWatches {
    watches: Mutex<HashMap<(String, String), Held>>,
}

fn type_key(r: &ApiResource) -> String {
    if r.group.is_empty() {
        r.plural.clone()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}

impl SharedWatches {
    /// The shared watch of `resource` through the API server `client_key` names (management
    /// cluster name and kubeconfig source, or a workload cluster and its kubeconfig Secret's
    /// resourceVersion), started with `client` when none is running. `server` names the API
    /// server in messages; `lifetime` says how long the watch is kept.
    pub(crate) fn get(
        &self,
        client_key: &str,
        server: &str,
        client: &kube::Client,
        resource: &ApiResource,
        lifetime: Lifetime,
    ) -> Arc<SharedWatch> {
        let key = (client_key.to_string(), type_key(resource));
        let mut map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get(&key).and_then(|h| h.weak.upgrade()) {
            return w;
        }
        // Entries whose watch ended are dropped from time to time (amortized O(1)).
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, h| h.weak.strong_count() > 0);
        }
        tracing::debug!(server, resource = %type_key(resource), "starting a shared watch");
        let w = Arc::new(SharedWatch::start(
            client.clone(),
            resource.clone(),
            format!("watch of {} on {server}", type_key(resource)),
        ));
        map.insert(
            key,
            Held {
                _strong: (lifetime == Lifetime::Provider).then(|| w.clone()),
                weak: Arc::downgrade(&w),
            },
        );
        w
    }

    /// Drops the shared watch `w` (after a permanent error), so the next use starts a new one.
    pub(crate) fn evict(&self, w: &Arc<SharedWatch>) {
        let mut map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, h| !std::ptr::eq(h.weak.as_ptr(), Arc::as_ptr(w)));
    }

    /// Drops every watch whose client key starts with `prefix` except `keep` (a workload
    /// cluster's watches built from an older kubeconfig).
    pub(crate) fn evict_prefix_except(&self, prefix: &str, keep: &str) {
        let mut map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(k, _), _| !k.starts_with(prefix) || k == keep);
    }

    /// Number of running shared watches.
    pub(crate) fn count(&self) -> usize {
        self.watches
            .lock()
            .map(|m| m.values().filter(|h| h.weak.strong_count() > 0).count())
            .unwrap_or(0)
    }
}

/// What one wait listens to: per watch, the keys of its own objects (or every change) and the
/// watch's health. Subscriptions can be added while the wait runs (a workload cluster's watch,
/// a core package learnt from the ClusterBootstrap); subscribe before reading, so no change
/// between the read and the wait is lost.
#[derive(Default)]
pub(crate) struct Subscription {
    watches: Vec<WatchSub>,
}

struct WatchSub {
    watch: Arc<SharedWatch>,
    health: watch::Receiver<u64>,
    keys: Vec<(Option<Key>, watch::Receiver<u64>)>,
}

impl Subscription {
    fn entry(&mut self, w: &Arc<SharedWatch>) -> &mut WatchSub {
        let i = match self.watches.iter().position(|s| Arc::ptr_eq(&s.watch, w)) {
            Some(i) => i,
            None => {
                self.watches.push(WatchSub {
                    watch: w.clone(),
                    health: w.subscribe_health(),
                    keys: Vec::new(),
                });
                self.watches.len() - 1
            }
        };
        &mut self.watches[i]
    }

    /// Listens to the objects of `w` under `namespace/key` (a cluster's, or one object's), once.
    pub(crate) fn key(&mut self, w: &Arc<SharedWatch>, namespace: &str, key: &str) {
        let k = Some((namespace.to_string(), key.to_string()));
        let e = self.entry(w);
        if !e.keys.iter().any(|(x, _)| *x == k) {
            let rx = w.subscribe_key(namespace, key);
            e.keys.push((k, rx));
        }
    }

    /// Listens to every change of `w`, once.
    pub(crate) fn all(&mut self, w: &Arc<SharedWatch>) {
        let e = self.entry(w);
        if !e.keys.iter().any(|(x, _)| x.is_none()) {
            e.keys.push((None, w.subscribe_all()));
        }
    }

    /// Marks every notification so far as seen (before reading the watches).
    pub(crate) fn mark_seen(&mut self) {
        for s in &mut self.watches {
            s.health.borrow_and_update();
            for (_, rx) in &mut s.keys {
                rx.borrow_and_update();
            }
        }
    }

    /// Applies the watches' health rules ([`KubeProvider::watch_health`]) for `target`,
    /// reporting tolerated errors to `progress`; returns whether every watch has listed.
    ///
    /// Errors: a watch's permanent error, or too many transient ones in a row.
    pub(crate) fn check(
        &self,
        provider: &KubeProvider,
        target: &WorkloadTarget,
        progress: &mut Reporter,
    ) -> Result<bool, StepError> {
        for s in &self.watches {
            if let Some(line) = provider.watch_health(target, &s.watch)? {
                progress.report(line);
            }
        }
        Ok(self.watches.iter().all(|s| s.watch.ready()))
    }

    /// Waits until a subscribed key or a watch's health changed since [`Self::mark_seen`], or
    /// `until` (when given). A closed channel (its watch ended with the provider) never wakes.
    pub(crate) async fn changed(&mut self, until: Option<Instant>) {
        let mut rxs: Vec<&mut watch::Receiver<u64>> = Vec::new();
        for s in &mut self.watches {
            rxs.push(&mut s.health);
            for (_, rx) in &mut s.keys {
                rxs.push(rx);
            }
        }
        let changes = async {
            if rxs.is_empty() {
                return std::future::pending::<()>().await;
            }
            futures::future::select_all(rxs.into_iter().map(|r| {
                Box::pin(async move {
                    if r.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
            }))
            .await;
        };
        match until {
            Some(d) => {
                tokio::select! {
                    _ = changes => {}
                    _ = tokio::time::sleep_until(d) => {}
                }
            }
            None => changes.await,
        }
    }
}

impl KubeProvider {
    /// The shared watch of `resource` on the management cluster of `target` (all namespaces).
    ///
    /// Errors: as [`KubeProvider::management_client_with`].
    pub(crate) async fn management_watch(
        &self,
        target: &WorkloadTarget,
        resource: &ApiResource,
    ) -> Result<Arc<SharedWatch>, StepError> {
        let mc = &target.management_cluster;
        let client = self
            .management_client_with(mc, target.kubeconfig.as_ref())
            .await?;
        let key = match &target.kubeconfig {
            Some(s) => format!("mgmt/{mc}#{s:?}"),
            None => format!("mgmt/{mc}"),
        };
        Ok(self.inner.watches.get(
            &key,
            &format!("management cluster '{mc}'"),
            &client,
            resource,
            Lifetime::Provider,
        ))
    }

    /// The shared watch of `resource` on the workload cluster `target` (all namespaces), through
    /// the client of [`KubeProvider::workload`]; watches built for another API server URL of the
    /// same cluster are dropped.
    ///
    /// Errors: as [`KubeProvider::workload`].
    pub(crate) async fn workload_watch(
        &self,
        target: &WorkloadTarget,
        resource: &ApiResource,
    ) -> Result<Arc<SharedWatch>, StepError> {
        let wl = self.workload(target).await?;
        let prefix = format!(
            "workload/{}/{}/{}@",
            target.management_cluster, target.namespace, target.cluster_name
        );
        let key = format!("{prefix}{}", wl.server);
        self.inner.watches.evict_prefix_except(&prefix, &key);
        Ok(self.inner.watches.get(
            &key,
            &format!("workload cluster '{}' ({})", target.cluster_name, wl.server),
            &wl.client,
            resource,
            Lifetime::WhileUsed,
        ))
    }

    /// Applies the polling-error rules to `w`'s health: `Ok(Some(line))` for a progress line
    /// about a transient error, `Err` for a permanent one or too many transient ones. A watch
    /// that failed permanently is dropped (and after a 401 the management client too), so the
    /// next attempt starts afresh.
    pub(crate) fn watch_health(
        &self,
        target: &WorkloadTarget,
        w: &Arc<SharedWatch>,
    ) -> Result<Option<String>, StepError> {
        match w.check() {
            Err(StepError::Permanent(m)) => {
                self.inner.watches.evict(w);
                if m.contains("credentials were rejected") {
                    self.forget_management(&target.management_cluster);
                }
                Err(StepError::Permanent(m))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::GroupVersionKind;

    fn machine(name: &str, cluster: Option<&str>, rv: &str) -> DynamicObject {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "Machine"),
            "machines",
        );
        let mut o = DynamicObject::new(name, &ar).within("default");
        o.metadata.resource_version = Some(rv.into());
        if let Some(c) = cluster {
            o.metadata.labels = Some([(CLUSTER_NAME_LABEL.to_string(), c.to_string())].into());
        }
        o
    }

    fn key(ns: &str, k: &str) -> Key {
        (ns.to_string(), k.to_string())
    }

    fn names(objs: &[Arc<Value>]) -> Vec<&str> {
        objs.iter().map(|o| name_of(o)).collect()
    }

    fn listed(index: &mut Index, objs: Vec<DynamicObject>) -> Vec<Key> {
        let mut touched = Vec::new();
        index.apply(watcher::Event::Init, &mut touched);
        for o in objs {
            index.apply(watcher::Event::InitApply(o), &mut touched);
        }
        index.apply(watcher::Event::InitDone, &mut touched);
        touched.sort();
        touched.dedup();
        touched
    }

    #[test]
    fn objects_are_indexed_by_their_cluster_and_a_change_touches_only_its_keys() {
        let mut index = Index::default();
        assert!(!index.ready);
        listed(
            &mut index,
            vec![
                machine("wc1-a", Some("wc1"), "1"),
                machine("wc1-b", Some("wc1"), "2"),
                machine("wc2-a", Some("wc2"), "3"),
                // Unlabelled (a Cluster, a ClusterBootstrap): its own name is its key.
                machine("wc1", None, "4"),
            ],
        );
        assert!(index.ready);
        assert_eq!(
            names(&index.of_cluster("default", "wc1")),
            ["wc1-a", "wc1-b"]
        );
        assert_eq!(names(&index.of_cluster("default", "wc2")), ["wc2-a"]);
        assert!(index.of_cluster("other", "wc1").is_empty());
        assert!(index.get("default", "wc1").is_some());
        let mut touched = Vec::new();
        index.apply(
            watcher::Event::Apply(machine("wc2-b", Some("wc2"), "5")),
            &mut touched,
        );
        assert_eq!(touched, [key("default", "wc2"), key("default", "wc2-b")]);
        touched.clear();
        index.apply(
            watcher::Event::Delete(machine("wc1-a", Some("wc1"), "6")),
            &mut touched,
        );
        assert_eq!(touched, [key("default", "wc1"), key("default", "wc1-a")]);
        assert_eq!(names(&index.of_cluster("default", "wc1")), ["wc1-b"]);
        // A relabelled object moves: both clusters are touched.
        touched.clear();
        index.apply(
            watcher::Event::Apply(machine("wc1-b", Some("wc2"), "7")),
            &mut touched,
        );
        touched.sort();
        touched.dedup();
        assert_eq!(
            touched,
            [
                key("default", "wc1"),
                key("default", "wc1-b"),
                key("default", "wc2")
            ]
        );
        assert!(index.of_cluster("default", "wc1").is_empty());
        assert_eq!(
            names(&index.of_cluster("default", "wc2")),
            ["wc1-b", "wc2-a", "wc2-b"]
        );
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn a_relist_replaces_the_index_and_touches_what_changed_or_vanished() {
        let mut index = Index::default();
        listed(
            &mut index,
            vec![
                machine("wc1-a", Some("wc1"), "1"),
                machine("wc2-a", Some("wc2"), "2"),
                machine("wc3-a", Some("wc3"), "3"),
            ],
        );
        // While a relist is buffered, the old state stays visible.
        let mut touched = Vec::new();
        index.apply(watcher::Event::Init, &mut touched);
        index.apply(
            watcher::Event::InitApply(machine("wc1-a", Some("wc1"), "1")),
            &mut touched,
        );
        index.apply(
            watcher::Event::InitApply(machine("wc2-a", Some("wc2"), "9")),
            &mut touched,
        );
        assert!(touched.is_empty());
        assert_eq!(index.len(), 3);
        index.apply(watcher::Event::InitDone, &mut touched);
        touched.sort();
        touched.dedup();
        // wc1 unchanged: not touched; wc2 changed, wc3 vanished.
        assert_eq!(
            touched,
            [
                key("default", "wc2"),
                key("default", "wc2-a"),
                key("default", "wc3"),
                key("default", "wc3-a")
            ]
        );
        assert_eq!(index.len(), 2);
        assert!(index.of_cluster("default", "wc3").is_empty());
        assert_eq!(
            str_at(
                &index.get("default", "wc2-a").unwrap(),
                "/metadata/resourceVersion"
            ),
            "9"
        );
    }

    #[test]
    fn objects_are_stored_as_the_waits_read_them() {
        let mut index = Index::of_kind("Machine");
        let mut o = machine("wc1-a", Some("wc1"), "1");
        o.metadata.managed_fields = Some(vec![Default::default()]);
        o.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
        o.data = serde_json::json!({
            "spec": {"version": "v1.25.7+vmware.2", "bootstrap": {"dataSecretName": "s"}},
            "status": {"nodeRef": {"name": "n"}, "nodeInfo": {"kubeletVersion": "v1.25.7"}}});
        listed(&mut index, vec![o]);
        let v = index.get("default", "wc1-a").unwrap();
        assert_eq!(
            *v,
            serde_json::json!({
                "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Machine",
                "metadata": {"name": "wc1-a", "namespace": "default", "resourceVersion": "1",
                             "labels": {CLUSTER_NAME_LABEL: "wc1"}},
                "spec": {"version": "v1.25.7+vmware.2"},
                "status": {"nodeRef": {"name": "n"}}})
        );
        assert_eq!(names(&index.of_cluster("default", "wc1")), ["wc1-a"]);
    }

    #[test]
    fn a_notification_wakes_only_the_subscribers_of_its_keys() {
        let n = Notifier::new();
        let mut wc1 = n.subscribe(key("default", "wc1"));
        let wc2 = n.subscribe(key("default", "wc2"));
        let mut any = n.any.subscribe();
        n.notify(&[key("default", "wc1"), key("default", "wc1-a")]);
        assert!(wc1.has_changed().unwrap());
        assert!(!wc2.has_changed().unwrap());
        assert!(any.has_changed().unwrap());
        wc1.borrow_and_update();
        any.borrow_and_update();
        // A key whose waits ended is dropped at its next change.
        drop(wc2);
        n.notify(&[key("default", "wc2")]);
        assert!(!n.keys.lock().unwrap().contains_key(&key("default", "wc2")));
        assert!(!wc1.has_changed().unwrap());
    }
}

//! Shared watches: one kube-runtime `watcher` + `reflector` store per (API server, resource
//! type), started lazily and serving every concurrent wait of the provider (DESIGN.md "Targets":
//! one shared watch per resource type per management cluster, no per-run polling).
//!
//! A [`SharedWatch`] watches its resource type in **all namespaces** through
//! `kube::runtime::watcher` with the watcher's built-in backoff
//! (`WatchStreamExt::default_backoff`, client-go's 0.8 s … 30 s), mirrors it into a
//! `kube::runtime::reflector` store, and bumps a `tokio::sync::watch` counter after every applied
//! event (and after every watch error), so waiters `await` a change and then evaluate the store
//! snapshot. Watch errors are classified like single requests ([`super::classify`]); waiters
//! apply the same rules as the old polling loops ([`super::PollErrors`]): a permanent error (401,
//! 403, unknown type) fails the wait at once, [`super::MAX_CONSECUTIVE_POLL_ERRORS`] consecutive
//! transient errors fail it transiently, fewer are reported as progress while the watcher backs
//! off and retries by itself.
//!
//! The watch task ends when the [`SharedWatch`] is dropped (with the provider, or when evicted
//! after a permanent error so that the next attempt builds a fresh client).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use kube::runtime::reflector::{store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tkgops_domain::executor::StepError;
use tokio::sync::watch;

use super::{classify, KubeProvider, MAX_CONSECUTIVE_POLL_ERRORS};
use crate::WorkloadTarget;

/// `timeoutSeconds` of every watch request: below the client's read timeout (120 s), so an idle
/// watch is ended by the server and re-opened by the watcher instead of failing.
const WATCH_TIMEOUT_SECS: u32 = 100;

/// The health of a watch, as seen by waiters.
#[derive(Clone, Debug, Default)]
pub(crate) struct WatchHealth {
    /// Watch errors since the last successfully applied event.
    pub consecutive_errors: u32,
    /// The latest of them, classified.
    pub last_error: Option<StepError>,
}

/// One shared watch of one resource type on one API server. Cheap to share behind an [`Arc`].
pub(crate) struct SharedWatch {
    resource: ApiResource,
    store: Store<DynamicObject>,
    changes: watch::Receiver<u64>,
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
        let writer: Writer<DynamicObject> = Writer::new(resource.clone());
        let store = writer.as_reader();
        let (tx, rx) = watch::channel(0u64);
        let health = Arc::new(Mutex::new(WatchHealth::default()));
        let task_health = health.clone();
        let task_what = what.clone();
        let stream = watcher(api, watcher::Config::default().timeout(WATCH_TIMEOUT_SECS))
            .default_backoff()
            .reflect(writer);
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(watcher::Event::Init) | Ok(watcher::Event::InitApply(_)) => continue,
                    Ok(_) => {
                        if let Ok(mut h) = task_health.lock() {
                            *h = WatchHealth::default();
                        }
                    }
                    Err(e) => {
                        let err = watch_error(&task_what, &e);
                        tracing::debug!(watch = %task_what, error = %err, "watch error; the watcher backs off and retries");
                        if let Ok(mut h) = task_health.lock() {
                            h.consecutive_errors += 1;
                            h.last_error = Some(err);
                        }
                    }
                }
                tx.send_modify(|n| *n += 1);
            }
        })
        .abort_handle();
        SharedWatch {
            resource,
            store,
            changes: rx,
            health,
            task,
        }
    }

    /// A receiver notified after every change of the store (and every watch error).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Whether the initial list has been received (the store reflects the server).
    pub(crate) fn ready(&self) -> bool {
        matches!(
            futures::FutureExt::now_or_never(self.store.wait_until_ready()),
            Some(Ok(()))
        )
    }

    /// The object `namespace/name`, if the store has it.
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.store
            .get(&ObjectRef::new_with(name, self.resource.clone()).within(namespace))
    }

    /// Objects in `namespace` whose label `key` is `value`.
    pub(crate) fn labelled(
        &self,
        namespace: &str,
        key: &str,
        value: &str,
    ) -> Vec<Arc<DynamicObject>> {
        self.store.state_filter(|o| {
            o.metadata.namespace.as_deref() == Some(namespace)
                && o.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .map(String::as_str)
                    == Some(value)
        })
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

/// The shared watches of one provider, by (client key, resource plural.group).
#[derive(Default)]
pub(crate) struct SharedWatches {
    watches: Mutex<HashMap<(String, String), Arc<SharedWatch>>>,
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
    /// resourceVersion), started with `client` on first use. `server` names the API server in
    /// messages.
    pub(crate) fn get(
        &self,
        client_key: &str,
        server: &str,
        client: &kube::Client,
        resource: &ApiResource,
    ) -> Arc<SharedWatch> {
        let key = (client_key.to_string(), type_key(resource));
        let mut map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| {
                tracing::debug!(server, resource = %type_key(resource), "starting a shared watch");
                Arc::new(SharedWatch::start(
                    client.clone(),
                    resource.clone(),
                    format!("watch of {} on {server}", type_key(resource)),
                ))
            })
            .clone()
    }

    /// Drops the shared watch `w` (after a permanent error), so the next use starts a new one.
    pub(crate) fn evict(&self, w: &Arc<SharedWatch>) {
        let mut map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, v| !Arc::ptr_eq(v, w));
    }

    /// Drops every watch whose client key starts with `prefix` except `keep` (a workload
    /// cluster's watches built from an older kubeconfig).
    pub(crate) fn evict_prefix_except(&self, prefix: &str, keep: &str) {
        let mut map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(k, _), _| !k.starts_with(prefix) || k == keep);
    }

    /// Number of running shared watches.
    pub(crate) fn count(&self) -> usize {
        self.watches.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Waits until any of `receivers` reports a change, `deadline` passes (when given), whichever
/// comes first. Returns at once when a change happened since the receiver last looked.
pub(crate) async fn changed_or(
    receivers: &mut [watch::Receiver<u64>],
    deadline: Option<tokio::time::Instant>,
) {
    let changes = async {
        if receivers.is_empty() {
            return std::future::pending::<()>().await;
        }
        futures::future::select_all(receivers.iter_mut().map(|r| {
            Box::pin(async move {
                if r.changed().await.is_err() {
                    // The watch task ended (aborted with its provider): never spin on it.
                    std::future::pending::<()>().await;
                }
            })
        }))
        .await;
    };
    match deadline {
        Some(d) => {
            tokio::select! {
                _ = changes => {}
                _ = tokio::time::sleep_until(d) => {}
            }
        }
        None => changes.await,
    }
}

/// How the waits of [`super::KubeProvider`] tolerate failures and how long they wait, as
/// `tanzu cluster create` does (tkg2-aws-class-based.md §6). Every field is a duration of
/// observed (Tokio) time, so tests can shorten them or drive them with `tokio::time::pause`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitOptions {
    /// `kube.wait-cluster` fails with "cluster creation failed, reason: …" once the Cluster has
    /// shown `Ready=False` with severity `Error` continuously for this long (messages containing
    /// "context deadline exceeded" or "context canceled" do not count). TKG: 20 consecutive 15 s
    /// polls, so the default is 5 min (§6 step 2).
    pub error_persistence: std::time::Duration,
    /// `kube.wait-cluster` fails with "timed out waiting for cluster creation to complete" when
    /// nothing changed for this long: Ready's `lastTransitionTime`, or any MachineDeployment's
    /// `replicas`, `readyReplicas` or `updatedReplicas`. TKG's `operationTimeout`: 30 min (§6
    /// step 2).
    pub unchanged_timeout: std::time::Duration,
    /// How long `kube.wait-cluster` waits for the ClusterBootstrap `<cluster>` to exist once the
    /// machines are ready. TKG: 10 min (§6 step 5).
    pub bootstrap_timeout: std::time::Duration,
    /// How long a PackageInstall may keep failing (`ReconcileFailed`; kapp-controller retries)
    /// before the wait fails with its `usefulErrorMessage`: core packages in
    /// `kube.wait-cluster` (TKG `PACKAGE_INSTALL_TIMEOUT`, default 10 min, §6 step 5) and
    /// packages of `packages.rollout`. Also bounded by the step deadline minus
    /// [`Self::deadline_margin`].
    pub package_timeout: std::time::Duration,
    /// How long `packages.rollout` waits for its PackageRepository to reconcile before the
    /// attempt fails transiently (the old 20 polls × 15 s: 5 min).
    pub repository_timeout: std::time::Duration,
    /// A wait that has a failure to report (a failing PackageInstall) ends this long before the
    /// step deadline (`timeout_secs`), so the failure, not "timed out", reaches the PR. Capped at
    /// a tenth of the step timeout. Default 5 s.
    pub deadline_margin: std::time::Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        use std::time::Duration;
        WaitOptions {
            error_persistence: Duration::from_secs(5 * 60),
            unchanged_timeout: Duration::from_secs(30 * 60),
            bootstrap_timeout: Duration::from_secs(10 * 60),
            package_timeout: Duration::from_secs(10 * 60),
            repository_timeout: Duration::from_secs(5 * 60),
            deadline_margin: Duration::from_secs(5),
        }
    }
}

impl WaitOptions {
    /// The instant a wait with a failure to report must return by, for a step started at
    /// `start` with `timeout_secs` (0: no step deadline): the step deadline minus
    /// [`Self::deadline_margin`] (at most a tenth of the timeout).
    pub fn report_deadline(
        &self,
        start: tokio::time::Instant,
        timeout_secs: u64,
    ) -> Option<tokio::time::Instant> {
        if timeout_secs == 0 {
            return None;
        }
        let timeout = std::time::Duration::from_secs(timeout_secs);
        let margin = self.deadline_margin.min(timeout / 10);
        Some(start + timeout - margin)
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

//! The drift scan's wake-up: between two scans on `driftScanInterval`, a change of a deployed
//! cluster's Cluster on its management cluster (a hand scale, a `kubectl edit`) starts a scan of
//! that cluster within [`DEBOUNCE`], instead of up to one interval later (docs/drift.md).
//!
//! - **One watch per management cluster, the shared one.** The listener subscribes to the
//!   Kubernetes provider's shared watch of Clusters (the one every wait reads:
//!   [`tkgops_providers::kube::KubeProvider::cluster_changes`]), once per management cluster
//!   of the deployed clusters; it opens no watch of its own.
//! - **Spec changes only.** It compares each deployed Cluster's `metadata.generation` with the
//!   one it saw last: the API server bumps it on a change of the `spec` and not on a status
//!   update, so the status churn of a fleet's rollouts wakes nothing.
//! - **tkgops's own changes are not drift.** A change seen while a run of the cluster is queued
//!   or running (its apply, its upgrade, a revert) only moves the baseline.
//! - **Debounced.** After a change the listener waits [`DEBOUNCE`], so a burst of edits is one
//!   scan; the scan of the woken clusters then runs as the drift reconciler's key
//!   ([`crate::reconcile::drift`]), with the same revert rules as a scan on the interval (at
//!   most one revert per interval per cluster).
//!
//! TMC and the workload clusters' PackageInstalls have no watch here: their drift is found by the
//! scans on the interval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tkgops_engine::store::Store;
use tkgops_providers::kube::drift::ClusterChanges;
use tkgops_providers::WorkloadTarget;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::executors::Executors;

/// How long the listener waits after a Cluster change before it looks at the generations: a
/// burst of hand edits is one scan.
pub const DEBOUNCE: Duration = Duration::from_secs(3);

/// How long the listener waits before subscribing again to a management cluster it could not
/// watch (unknown, unreachable, credentials refused).
pub const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(30);

/// The deployed clusters the listener watches: cluster name → where its Cluster is. Written by
/// the drift reconciler, read by the listener.
pub type Targets = BTreeMap<String, WorkloadTarget>;

/// The clusters a change woke, taken by the drift reconciler's next run.
#[derive(Debug, Default)]
pub struct Woken(Mutex<BTreeSet<String>>);

impl Woken {
    /// Adds `clusters`.
    pub fn add(&self, clusters: impl IntoIterator<Item = String>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(clusters);
    }

    /// Takes every woken cluster (empty when none).
    pub fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The clusters whose Cluster changed by someone else than tkgops since `baseline`, given the
/// `current` generations (`None`: the Cluster is not there) and the clusters with a run queued
/// or running (`busy`). Moves `baseline` to `current` for every cluster in `current`:
///
/// - a generation that differs from the baseline's (or a Cluster that vanished) wakes its
///   cluster, unless the cluster is busy (the change is its run's);
/// - a cluster without a baseline yet (just deployed, or the watch had not listed) only gets
///   one;
/// - clusters no longer in `current` are dropped from `baseline`.
pub fn changed_by_hand(
    baseline: &mut BTreeMap<String, Option<i64>>,
    current: &BTreeMap<String, Option<i64>>,
    busy: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut woken = BTreeSet::new();
    baseline.retain(|name, _| current.contains_key(name));
    for (name, now) in current {
        match baseline.insert(name.clone(), *now) {
            Some(before) if before != *now && before.is_some() && !busy.contains(name) => {
                woken.insert(name.clone());
            }
            _ => {}
        }
    }
    woken
}

/// The listener (module docs): what it reads and whom it wakes.
pub struct DriftWatch {
    /// The current Kubernetes provider's watches.
    pub executors: Arc<Executors>,
    /// The engine's runs: which clusters have a run queued or running.
    pub store: Arc<dyn Store>,
    /// The deployed clusters to watch, kept up to date by the drift reconciler.
    pub targets: watch::Receiver<Targets>,
    /// Where woken clusters go.
    pub woken: Arc<Woken>,
    /// Notified when clusters were woken: the bot's loop enqueues the drift key.
    pub notify: Arc<Notify>,
    /// The clusters whose Cluster generation the listener knows (a change of theirs wakes a
    /// scan from now on): [`crate::Bot::drift_watching`].
    pub watching: Arc<watch::Sender<BTreeSet<String>>>,
}

/// The watched management clusters' change feeds, keyed by management cluster and kubeconfig
/// source.
type Feeds = Vec<(String, ClusterChanges)>;

impl DriftWatch {
    /// Runs until the task is aborted: subscribes to the management clusters of the targets,
    /// and after each Cluster change (debounced) wakes the clusters [`changed_by_hand`]
    /// finds. Subscribes again when the targets change, when a watch ended or failed, and
    /// [`RESUBSCRIBE_AFTER`] after a management cluster could not be watched. Never returns an
    /// error: failures are logged and retried.
    pub async fn run(mut self) {
        let mut baseline: BTreeMap<String, Option<i64>> = BTreeMap::new();
        loop {
            let targets = self.targets.borrow_and_update().clone();
            let (mut feeds, missing) = self.subscribe(&targets).await;
            // The generations now, before any change is waited for.
            self.evaluate(&targets, &feeds, &mut baseline).await;
            let retry = async {
                if missing {
                    tokio::time::sleep(RESUBSCRIBE_AFTER).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    changed = self.targets.changed() => {
                        if changed.is_err() {
                            return; // the bot is gone
                        }
                        break;
                    }
                    _ = &mut retry => break,
                    alive = any_changed(&mut feeds) => {
                        if !alive {
                            break;
                        }
                        tokio::time::sleep(DEBOUNCE).await;
                        self.evaluate(&targets, &feeds, &mut baseline).await;
                    }
                }
            }
        }
    }

    /// Subscribes to the management cluster of every target, once per management cluster.
    /// Returns the feeds, and whether some management cluster could not be watched.
    async fn subscribe(&self, targets: &Targets) -> (Feeds, bool) {
        let mut feeds: Feeds = Vec::new();
        let mut missing = false;
        for t in targets.values() {
            let key = feed_key(t);
            if feeds.iter().any(|(k, _)| *k == key) {
                continue;
            }
            match self.executors.cluster_changes(t).await {
                Ok(f) => feeds.push((key, f)),
                Err(e) => {
                    missing = true;
                    warn!(management_cluster = %t.management_cluster, error = %e,
                        "drift wake-up: cannot watch the management cluster's Clusters; the scans on the interval still run");
                }
            }
        }
        (feeds, missing)
    }

    /// Reads every target's Cluster generation from its feed and wakes the clusters
    /// [`changed_by_hand`] finds. A cluster whose feed has not listed yet keeps its baseline.
    async fn evaluate(
        &self,
        targets: &Targets,
        feeds: &Feeds,
        baseline: &mut BTreeMap<String, Option<i64>>,
    ) {
        let mut current = BTreeMap::new();
        for (name, t) in targets {
            let key = feed_key(t);
            match feeds.iter().find(|(k, _)| *k == key) {
                Some((_, f)) if f.ready() => {
                    current.insert(name.clone(), f.generation(&t.namespace, &t.cluster_name));
                }
                // Not listed yet (or not watched): keep what is known.
                _ => {
                    if let Some(g) = baseline.get(name) {
                        current.insert(name.clone(), *g);
                    }
                }
            }
        }
        let busy = match self.store.list_active().await {
            Ok(runs) => runs.into_iter().map(|r| r.cluster).collect(),
            Err(e) => {
                // Unknown which runs are active: a change cannot be told from a run's own.
                // Keep the baseline, so the change is judged at the next look.
                warn!(error = %e, "drift wake-up: reading the active runs failed");
                return;
            }
        };
        let woken = changed_by_hand(baseline, &current, &busy);
        let known: BTreeSet<String> = baseline
            .iter()
            .filter(|(_, g)| g.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        self.watching.send_if_modified(|w| {
            let changed = *w != known;
            *w = known;
            changed
        });
        if woken.is_empty() {
            debug!("drift wake-up: no Cluster changed by hand");
            return;
        }
        info!(clusters = ?woken, "a deployed cluster's Cluster changed outside tkgops: scanning it for drift");
        self.woken.add(woken);
        self.notify.notify_one();
    }
}

/// The feed key of a target: its management cluster and how it is reached.
fn feed_key(t: &WorkloadTarget) -> String {
    match &t.kubeconfig {
        Some(s) => format!("{}#{s:?}", t.management_cluster),
        None => t.management_cluster.clone(),
    }
}

/// Waits until one of `feeds` changed; `false` when one ended (a replaced provider's watch).
/// Without feeds, never returns.
async fn any_changed(feeds: &mut Feeds) -> bool {
    if feeds.is_empty() {
        return std::future::pending().await;
    }
    let (alive, _, _) =
        futures::future::select_all(feeds.iter_mut().map(|(_, f)| Box::pin(f.changed()))).await;
    alive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gens(v: &[(&str, Option<i64>)]) -> BTreeMap<String, Option<i64>> {
        v.iter().map(|(n, g)| (n.to_string(), *g)).collect()
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_generation_change_outside_a_run_wakes_its_cluster_only() {
        let mut base = gens(&[("a", Some(3)), ("b", Some(5))]);
        let woken = changed_by_hand(
            &mut base,
            &gens(&[("a", Some(4)), ("b", Some(5))]),
            &names(&[]),
        );
        assert_eq!(woken, names(&["a"]));
        assert_eq!(base, gens(&[("a", Some(4)), ("b", Some(5))]));
        // Seen once: the same generation does not wake again.
        let again = changed_by_hand(
            &mut base,
            &gens(&[("a", Some(4)), ("b", Some(5))]),
            &names(&[]),
        );
        assert!(again.is_empty());
    }

    #[test]
    fn a_change_while_a_run_of_the_cluster_is_active_only_moves_the_baseline() {
        let mut base = gens(&[("a", Some(3))]);
        let woken = changed_by_hand(&mut base, &gens(&[("a", Some(4))]), &names(&["a"]));
        assert!(woken.is_empty(), "the run's own apply is not drift");
        assert_eq!(base, gens(&[("a", Some(4))]));
        // After the run, nothing more changed: nothing wakes.
        assert!(changed_by_hand(&mut base, &gens(&[("a", Some(4))]), &names(&[])).is_empty());
    }

    #[test]
    fn a_deleted_cluster_wakes_and_a_new_one_only_gets_a_baseline() {
        let mut base = gens(&[("a", Some(3))]);
        let woken = changed_by_hand(
            &mut base,
            &gens(&[("a", None), ("new", Some(1))]),
            &names(&[]),
        );
        assert_eq!(
            woken,
            names(&["a"]),
            "a Cluster deleted by hand is drift to report"
        );
        assert_eq!(base, gens(&[("a", None), ("new", Some(1))]));
        // A Cluster that appears (a create's apply) wakes nothing; a cluster no longer
        // deployed is forgotten.
        let woken = changed_by_hand(&mut base, &gens(&[("a", Some(1))]), &names(&[]));
        assert!(woken.is_empty());
        assert_eq!(base, gens(&[("a", Some(1))]));
    }
}

//! The drift scan ([`Key::Drift`]): on the bot configuration's `driftScanInterval`, every
//! cluster tkgops deployed (a cluster of the default branch with a deployed commit) is compared
//! with what Git says at that deployed commit:
//!
//! - the Cluster's topology: the Cluster the last run applied (the create workflow's
//!   `kube.apply` manifests rendered at the deployed commit) is sent as a server-side dry run
//!   under tkgops's field manager, and the answer compared with the live Cluster
//!   ([`tkgops_domain::drift::topology_drift`]): only a field tkgops's apply would change counts;
//! - the TMC cluster's group, description and labels against the request's `tmc` settings
//!   ([`tkgops_domain::drift::tmc_drift`]);
//! - each PackageInstall the request declares, on the workload cluster: present, its version,
//!   and the digest of the values Secret tkgops renders
//!   ([`tkgops_domain::drift::package_drift`]; only shortened digests are kept and shown).
//!
//! A Cluster or TMC cluster that is gone (or not tkgops's) is reported as drift tkgops cannot
//! revert, never "fixed" by a create. What a scan finds is kept in the journal per cluster
//! ([`DriftRecord`], each field with the scan that first saw it), shown on the fleet dashboard
//! issue ([`drift_section`]) and counted in `tkgops_drift_clusters`.
//!
//! Plans use no credentials: a pull request's plan reads the last scan's records
//! ([`drift_note`]).
//!
//! Under `driftPolicy: revert` (the cluster's `tkgops.yaml` on the default branch), a scan that
//! finds revertible drift starts a *revert run* ([`REVERT_WORKFLOW`]): a normal engine run
//! (journaled, resumable) pinned to the cluster's deployed commit, whose steps are the create
//! workflow's steps rendered there that re-apply what drifted: `apply-cluster` (the Cluster,
//! forced and never a create: [`tkgops_domain::step::KubeApplyInputs::revert`]), `tmc-attach`
//! (the TMC cluster's converge PUT) and `read-kubeconfig` + `packages` (PackageInstalls, forced).
//! No preflight (it would repeat AWS tagging), no wait. Its id is [`revert_run_id`] (cluster,
//! deployed commit, the scan that found the drift), journaled ([`RevertRecord`]) before it is
//! submitted, so a restart submits the same id again and the engine dedupes it. It needs no
//! approval (Git is the approved state); its step table and outcome are on the fleet dashboard
//! issue. A revert is not started while another run of the cluster is queued or running, nor
//! sooner than one `driftScanInterval` after the cluster's last revert ended.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use tkgops_domain::drift::{
    package_drift, tmc_drift, topology_drift, DriftField, PackageWanted, TmcLive, TmcWanted,
};
use tkgops_domain::files::TreeReader;
use tkgops_domain::request::{cluster_spec, DriftPolicy};
use tkgops_domain::step::{
    KubeApplyInputs, PackagesInputs, StepInputs, StepSpec, TmcClusterInputs,
};
use tkgops_domain::workflow::plan::{
    load_cluster, load_repo_config, render_context, render_workflow, workload_target, OWNER_LABEL,
};
use tkgops_domain::workflow::Catalog;
use tkgops_engine::store::{RunRecord, RunState};
use tkgops_engine::RunRequest;
use tkgops_providers::kube::drift::ClusterProbe;
use tracing::{info, warn};

use super::{Key, Outcome};
use crate::gitops::ConfigRepo;
use crate::journal::{DriftEntry, DriftObject, DriftRecord, DriftScan, RevertRecord};
use crate::scheduler::Action;
use crate::{blocking, BotError};

on_context!(
    /// The drift scan's reconciler ([`Key::Drift`]).
    DriftReconciler
);

/// The workflow name of a drift revert run (module docs).
pub const REVERT_WORKFLOW: &str = "revert-drift";

/// How often a running revert run's step table on the dashboard is refreshed.
const REVERT_POLL: std::time::Duration = std::time::Duration::from_secs(3);

/// The id of the revert run of `cluster` at its deployed `commit` started by the scan at
/// `scan_at`: the same inputs always give the same id, so a resubmission after a restart is
/// deduped by the engine ([`tkgops_engine::Engine::submit`]).
pub fn revert_run_id(cluster: &str, commit: &str, scan_at: DateTime<Utc>) -> String {
    format!(
        "{cluster}@{}#{REVERT_WORKFLOW}/{}",
        &commit[..commit.len().min(12)],
        scan_at.format("%Y%m%dT%H%M%SZ")
    )
}

/// What Git says a deployed cluster is, at its deployed commit: the inputs the create
/// workflow's steps would have there.
#[derive(Debug, Default)]
struct Wanted {
    /// The `kube.apply` step whose manifests hold the Cluster.
    cluster: Option<KubeApplyInputs>,
    /// The `tmc.attach` step, when the request attaches the cluster to TMC.
    tmc: Option<TmcClusterInputs>,
    /// The `packages.rollout` step, when the request declares packages.
    packages: Option<PackagesInputs>,
    /// Every step of the create workflow rendered there (the revert run's steps come from them).
    steps: Vec<StepSpec>,
}

/// The steps of a revert run re-applying what drifted (`objects`) from the create workflow's
/// rendered `steps` (module docs): the Cluster's `kube.apply` (forced, never a create), the
/// TMC cluster's `tmc.attach`, the workload kubeconfig read and the packages (forced). Empty
/// when nothing revertible drifted.
fn revert_steps(steps: &[StepSpec], objects: &BTreeSet<DriftObject>) -> Vec<StepSpec> {
    steps
        .iter()
        .filter_map(|s| {
            let mut s = s.clone();
            let keep = match &mut s.inputs {
                StepInputs::KubeApply(i)
                    if i.manifests.lines().any(|l| l.trim() == "kind: Cluster") =>
                {
                    i.revert = true;
                    objects.contains(&DriftObject::Cluster)
                }
                StepInputs::TmcAttach(_) => objects.contains(&DriftObject::TmcCluster),
                StepInputs::KubeReadKubeconfig(_) => objects.contains(&DriftObject::PackageInstall),
                StepInputs::PackagesRollout(i) => {
                    i.revert = true;
                    objects.contains(&DriftObject::PackageInstall)
                }
                _ => false,
            };
            keep.then_some(s)
        })
        .collect()
}

/// The `driftPolicy` of cluster `name` in the tree `commit` (the default branch's tip):
/// [`DriftPolicy::Report`] when the request does not load there.
///
/// Errors: [`crate::gitops::GitError`] when the commit cannot be read.
fn policy_at(
    git: &ConfigRepo,
    commit: &str,
    name: &str,
) -> Result<DriftPolicy, crate::gitops::GitError> {
    let tree = git.tree(commit)?;
    let tree: &dyn TreeReader = &tree;
    let (rc, _) = load_repo_config(tree);
    Ok(load_cluster(tree, name, rc.as_ref())
        .and_then(|l| l.request)
        .map(|r| r.settings.drift_policy)
        .unwrap_or_default())
}

/// Reads `clusters/<name>/` and `tkgops.yaml` at `commit` and renders the create workflow's
/// steps for it. `None` when the request does not load or render there (nothing to compare).
///
/// Errors: [`crate::gitops::GitError`] when the commit cannot be read.
fn wanted_at(
    git: &ConfigRepo,
    catalog: &Catalog,
    repository: &str,
    commit: &str,
    name: &str,
) -> Result<Option<Wanted>, crate::gitops::GitError> {
    let tree = git.tree(commit)?;
    let tree: &dyn TreeReader = &tree;
    let (Some(rc), _) = load_repo_config(tree) else {
        return Ok(None);
    };
    let Some(req) = load_cluster(tree, name, Some(&rc)).and_then(|l| l.request) else {
        return Ok(None);
    };
    let Ok(spec) = cluster_spec(&req, &rc) else {
        return Ok(None);
    };
    let Some(workflow) = catalog.workflow_for_intent("create") else {
        return Ok(None);
    };
    let context = render_context(&spec, repository);
    let Ok((steps, _)) = render_workflow(workflow, &spec, None, Some(&rc), &context, catalog)
    else {
        return Ok(None);
    };
    let mut wanted = Wanted::default();
    for s in &steps {
        match &s.inputs {
            StepInputs::KubeApply(i)
                if i.manifests.lines().any(|l| l.trim() == "kind: Cluster") =>
            {
                wanted.cluster = Some(i.clone())
            }
            StepInputs::TmcAttach(i) => wanted.tmc = Some(i.clone()),
            StepInputs::PackagesRollout(i) => wanted.packages = Some(i.clone()),
            _ => {}
        }
    }
    wanted.steps = steps;
    Ok(Some(wanted))
}

/// Where the Cluster of cluster `name` is, from its request and policy at `commit` (no
/// workflow is rendered: a fleet's targets are read in milliseconds), reached through the
/// management cluster's kubeconfig source as the runs' steps are (so the wake-up reads the
/// waits' shared watch, not one of its own). `None` when the request does not load there.
///
/// Errors: [`crate::gitops::GitError`] when the commit cannot be read.
fn target_at(
    git: &ConfigRepo,
    commit: &str,
    name: &str,
) -> Result<Option<tkgops_providers::WorkloadTarget>, crate::gitops::GitError> {
    let tree = git.tree(commit)?;
    let tree: &dyn TreeReader = &tree;
    let (Some(rc), _) = load_repo_config(tree) else {
        return Ok(None);
    };
    Ok(load_cluster(tree, name, Some(&rc))
        .and_then(|l| l.request)
        .and_then(|req| cluster_spec(&req, &rc).ok())
        // As the runs' steps reach it, so that the wake-up reads their shared watch.
        .map(|spec| workload_target(&spec, Some(&rc))))
}

/// What one cluster's comparison found: drifted fields and drift tkgops cannot revert.
type Found = (Vec<(DriftObject, DriftField)>, Vec<String>);

impl DriftReconciler<'_> {
    /// Runs a scan when one is due (one `driftScanInterval` after the last, or after the
    /// bot's start), and asks to be run again when the next is due. Disabled (no interval):
    /// nothing. A scan enqueues the dashboard.
    ///
    /// Errors: [`BotError`] when the journal or the default branch cannot be read; a cluster
    /// that cannot be compared is recorded in the scan ([`DriftScan::failed`]), not an error.
    pub(crate) async fn reconcile(&self) -> Result<Outcome, BotError> {
        let Some(interval) = self.drift_interval() else {
            return Ok(Action::AwaitChange.into());
        };
        self.refresh_targets().await?;
        let woken = self.drift_woken.take();
        let now = tokio::time::Instant::now();
        let last = *self.drift_last.lock().unwrap_or_else(|e| e.into_inner());
        let (next, scanned) = match last {
            Some(last) if now < last + interval => {
                // Woken by a Cluster change (crate::drift_watch): those clusters only.
                if !woken.is_empty() {
                    info!(clusters = ?woken, "drift scan woken by a Cluster change");
                    if let Err(e) = self.scan(interval, Some(&woken)).await {
                        self.drift_woken.add(woken);
                        return Err(e);
                    }
                }
                (last + interval - now, !woken.is_empty())
            }
            _ => {
                if let Err(e) = self.scan(interval, None).await {
                    self.drift_woken.add(woken);
                    return Err(e);
                }
                *self.drift_last.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(tokio::time::Instant::now());
                (interval, true)
            }
        };
        // While a revert runs, its step table on the dashboard is refreshed.
        if self.reverts_running().await? {
            return Ok(Outcome {
                action: Action::requeue(next.min(REVERT_POLL)),
                enqueue: vec![Key::Dashboard],
            });
        }
        Ok(Outcome {
            action: Action::requeue(next),
            enqueue: if scanned {
                vec![Key::Dashboard]
            } else {
                Vec::new()
            },
        })
    }

    /// Keeps the drift wake-up's targets ([`crate::drift_watch`]) to the deployed clusters of
    /// the default branch's tip: where each one's Cluster is ([`target_at`]), read once per
    /// cluster at its deployed commit (a cluster's management cluster, namespace and name never
    /// change after its creation). The listener is told only when the
    /// targets changed.
    ///
    /// Errors: [`BotError`] when the tip, a deployed commit or the engine's store cannot be read.
    async fn refresh_targets(&self) -> Result<(), BotError> {
        let tip = self.observed().tip.clone();
        if tip.is_empty() {
            return Ok(());
        }
        let known = self.drift_targets.borrow().clone();
        let mut targets = crate::drift_watch::Targets::new();
        for (name, commit) in self.deployed_clusters(&tip).await? {
            let target = match known.get(&name) {
                Some(t) => Some(t.clone()),
                None => {
                    let (git, n, c) = (self.git.clone(), name.clone(), commit);
                    blocking(move || target_at(&git, &c, &n)).await?
                }
            };
            if let Some(t) = target {
                targets.insert(name, t);
            }
        }
        self.drift_targets.send_if_modified(|t| {
            let changed = *t != targets;
            if changed {
                *t = targets;
            }
            changed
        });
        Ok(())
    }

    /// Whether a revert run the journal knows is not finished yet.
    ///
    /// Errors: [`BotError::Store`], [`BotError::Engine`].
    async fn reverts_running(&self) -> Result<bool, BotError> {
        Ok(reverts_with_runs(self.cx)
            .await?
            .iter()
            .any(|(_, run)| run.as_ref().is_some_and(|run| !run.state.is_terminal())))
    }

    /// Starts (or resubmits after a restart) the revert run of `cluster` deployed at `commit`
    /// for the drifted `fields` found by the scan at `at` (module docs), unless a revert of it
    /// is running, ended less than `interval` ago, or another run of the cluster is queued or
    /// running. `steps` are the create workflow's steps rendered at `commit`.
    ///
    /// Errors: [`BotError::Store`], [`BotError::Engine`].
    async fn revert(
        &self,
        cluster: &str,
        commit: &str,
        fields: &[(DriftObject, DriftField)],
        steps: &[StepSpec],
        at: DateTime<Utc>,
        interval: std::time::Duration,
    ) -> Result<(), BotError> {
        let engine_err = |e: tkgops_engine::EngineError| BotError::Engine(e.to_string());
        let objects: BTreeSet<DriftObject> = fields.iter().map(|(o, _)| *o).collect();
        let steps = revert_steps(steps, &objects);
        if steps.is_empty() {
            return Ok(());
        }
        let last = self.journal.revert(cluster).await?;
        let resubmit = match &last {
            Some(r) => match self.engine.get(&r.run_id).await.map_err(engine_err)? {
                // Journaled, never submitted (a restart in between): the same run.
                None => r.commit == commit,
                Some(run) if !run.state.is_terminal() => return Ok(()),
                Some(run) => {
                    let ended = run.finished_at.unwrap_or(run.updated_at);
                    let wait = chrono::Duration::from_std(interval).unwrap_or_default();
                    if at < ended + wait {
                        return Ok(());
                    }
                    false
                }
            },
            None => false,
        };
        let busy = self
            .store
            .list_active()
            .await
            .map_err(|e| BotError::Store(e.to_string()))?
            .iter()
            .any(|r| r.cluster == cluster);
        if busy {
            info!(
                cluster,
                "drift revert deferred: another run of the cluster is queued or running"
            );
            return Ok(());
        }
        let record = match (resubmit, last) {
            (true, Some(r)) => r,
            _ => RevertRecord {
                cluster: cluster.to_string(),
                commit: commit.to_string(),
                run_id: revert_run_id(cluster, commit, at),
                scan_at: at,
                fields: fields
                    .iter()
                    .map(|(o, f)| format!("{o} {}", f.field))
                    .collect(),
            },
        };
        // Journaled (flushed) before the run exists: a restart submits this same id again.
        self.journal.put_revert(&record).await?;
        info!(cluster, run = %record.run_id, steps = steps.len(), "drift revert run submitted");
        self.engine
            .submit(RunRequest {
                id: record.run_id.clone(),
                cluster: cluster.to_string(),
                workflow: REVERT_WORKFLOW.into(),
                commit_sha: commit.to_string(),
                origin: None,
                steps,
            })
            .await
            .map_err(engine_err)?;
        Ok(())
    }

    /// One scan of every deployed cluster of the default branch's tip (module docs), or of
    /// the deployed clusters among `only` (a scan woken by a Cluster change,
    /// [`crate::drift_watch`]); a cluster under `driftPolicy: revert` gets a revert run
    /// ([`Self::revert`], `interval` apart). A scan of `only` keeps the other clusters' records
    /// and the last full scan's count.
    ///
    /// Errors: [`BotError`] when the tip, the journal or the engine's store cannot be read.
    pub(crate) async fn scan(
        &self,
        interval: std::time::Duration,
        only: Option<&BTreeSet<String>>,
    ) -> Result<(), BotError> {
        let tip = self.observed().tip.clone();
        if tip.is_empty() {
            return Ok(());
        }
        let at = self.now();
        let mut compared = 0usize;
        let mut failed = Vec::new();
        let mut seen = BTreeSet::new();
        for (name, commit) in self.deployed_clusters(&tip).await? {
            if only.is_some_and(|o| !o.contains(&name)) {
                continue;
            }
            let (git, catalog, repository) = (
                self.git.clone(),
                self.catalog.clone(),
                self.full_name.clone(),
            );
            let (n, c) = (name.clone(), commit.clone());
            let Some(wanted) =
                blocking(move || wanted_at(&git, &catalog, &repository, &c, &n)).await?
            else {
                continue;
            };
            seen.insert(name.clone());
            match self.compare(&wanted).await {
                Ok(found) => {
                    compared += 1;
                    let (git, t, n) = (self.git.clone(), tip.clone(), name.clone());
                    let policy = blocking(move || policy_at(&git, &t, &n)).await?;
                    if policy == DriftPolicy::Revert && !found.0.is_empty() {
                        let c = &commit;
                        self.revert(&name, c, &found.0, &wanted.steps, at, interval)
                            .await?;
                    }
                    self.record(&name, &commit, found, at).await?;
                }
                Err(why) => {
                    warn!(cluster = %name, error = %why, "drift scan: the cluster could not be compared");
                    failed.push((name, why));
                }
            }
        }
        // Clusters no longer deployed (or no longer in Git) have no drift to show.
        for r in self.journal.drifts().await? {
            if !seen.contains(&r.cluster) && only.is_none_or(|o| o.contains(&r.cluster)) {
                self.journal.clear_drift(&r.cluster).await?;
            }
        }
        let drifted = self.journal.drifts().await?.len();
        self.metrics.set_drift_clusters(drifted as i64);
        info!(clusters = compared, drifted, "drift scan done");
        let scan = match (only, self.journal.drift_scan().await?) {
            // A woken scan: the last full scan's count; the woken clusters' failures replaced.
            (Some(o), Some(prev)) => DriftScan {
                at,
                clusters: prev.clusters,
                failed: prev
                    .failed
                    .into_iter()
                    .filter(|(c, _)| !o.contains(c))
                    .chain(failed)
                    .collect(),
            },
            _ => DriftScan {
                at,
                clusters: compared,
                failed,
            },
        };
        self.journal.set_drift_scan(&scan).await?;
        Ok(())
    }

    /// Compares one cluster's live state with `wanted`.
    ///
    /// Errors: the message of a provider error (management cluster or TMC unreachable, …).
    async fn compare(&self, wanted: &Wanted) -> Result<Found, String> {
        let mut fields = Vec::new();
        let mut unrevertible = Vec::new();
        let mut cluster_found = wanted.cluster.is_none();
        if let Some(k) = &wanted.cluster {
            let mc = &k.target.management_cluster;
            match self.executors.probe_cluster(k).await.map_err(|e| e.to_string())? {
                ClusterProbe::Found { live, desired, .. } => {
                    cluster_found = true;
                    fields.extend(
                        topology_drift(&desired, &live)
                            .into_iter()
                            .map(|f| (DriftObject::Cluster, f)),
                    )
                }
                ClusterProbe::Missing { label } => unrevertible.push(format!(
                    "{label} does not exist on management cluster '{mc}' (tkgops does not create it again outside a change)"
                )),
                ClusterProbe::NotOwned { label } => unrevertible.push(format!(
                    "{label} on management cluster '{mc}' does not carry this request's {OWNER_LABEL} label"
                )),
                ClusterProbe::NoCluster => {}
            }
        }
        if let Some(t) = &wanted.tmc {
            let shown = &t.full_name.name;
            match self
                .executors
                .read_tmc_cluster(t)
                .await
                .map_err(|e| e.to_string())?
            {
                (None, _, _) => unrevertible.push(format!(
                    "the TMC cluster {shown} does not exist (tkgops does not attach it again outside a change)"
                )),
                (Some(c), _, _)
                    if c.meta.labels.get(OWNER_LABEL) != Some(&t.owner.label) =>
                {
                    unrevertible.push(format!(
                        "the TMC cluster {shown} does not carry this request's {OWNER_LABEL} label"
                    ))
                }
                (Some(c), group, labels) => fields.extend(
                    tmc_drift(
                        &TmcWanted {
                            cluster_group: &group,
                            description: &t.description,
                            labels: &labels,
                        },
                        &TmcLive {
                            cluster_group: c.spec.cluster_group_name.as_deref(),
                            description: c.meta.description.as_deref(),
                            labels: &c.meta.labels,
                        },
                    )
                    .into_iter()
                    .map(|f| (DriftObject::TmcCluster, f)),
                ),
            }
        }
        // The PackageInstalls, on the workload cluster of a Cluster that is there and tkgops's.
        if let Some(p) = wanted.packages.as_ref().filter(|_| cluster_found) {
            let live = self
                .executors
                .probe_packages(p)
                .await
                .map_err(|e| e.to_string())?;
            for (pkg, live) in p.packages.iter().zip(&live) {
                let want = PackageWanted {
                    name: &pkg.name,
                    namespace: &pkg.namespace,
                    version: &pkg.version,
                    values_yaml: &pkg.values_yaml,
                };
                fields.extend(
                    package_drift(&want, live)
                        .into_iter()
                        .map(|f| (DriftObject::PackageInstall, f)),
                );
            }
        }
        Ok((fields, unrevertible))
    }

    /// Records what one scan found for `cluster` (deployed at `commit`): a field keeps the
    /// time it was first seen while its live value stays the same.
    ///
    /// Errors: [`BotError::Store`].
    async fn record(
        &self,
        cluster: &str,
        commit: &str,
        (fields, unrevertible): Found,
        at: DateTime<Utc>,
    ) -> Result<(), BotError> {
        if fields.is_empty() && unrevertible.is_empty() {
            return Ok(self.journal.clear_drift(cluster).await?);
        }
        let before = self.journal.drift(cluster).await?;
        let since = |object: DriftObject, f: &DriftField| {
            before
                .as_ref()
                .filter(|b| b.commit == commit)
                .and_then(|b| {
                    b.fields
                        .iter()
                        .find(|e| e.object == object && e.field == *f)
                        .map(|e| e.since)
                })
                .unwrap_or(at)
        };
        let record = DriftRecord {
            cluster: cluster.to_string(),
            commit: commit.to_string(),
            fields: fields
                .into_iter()
                .map(|(object, field)| DriftEntry {
                    since: since(object, &field),
                    object,
                    field,
                })
                .collect(),
            unrevertible: unrevertible
                .into_iter()
                .map(|s| {
                    let t = before
                        .as_ref()
                        .and_then(|b| b.unrevertible.iter().find(|(u, _)| *u == s))
                        .map(|(_, t)| *t)
                        .unwrap_or(at);
                    (s, t)
                })
                .collect(),
            scanned_at: at,
        };
        Ok(self.journal.put_drift(&record).await?)
    }
}

/// Each cluster's last revert the journal knows, with its engine run (`None` while it is
/// journaled but not submitted yet): what the dashboard shows and what tells the scan a revert
/// is running.
///
/// Errors: [`BotError::Store`], [`BotError::Engine`].
pub(crate) async fn reverts_with_runs(
    cx: &crate::context::Context,
) -> Result<Vec<(RevertRecord, Option<RunRecord>)>, BotError> {
    let mut out = Vec::new();
    for r in cx.journal.reverts().await? {
        let run = cx
            .engine
            .get(&r.run_id)
            .await
            .map_err(|e| BotError::Engine(e.to_string()))?;
        out.push((r, run));
    }
    Ok(out)
}

/// A table cell: `|` escaped, line breaks flattened.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The dashboard's lines for a revert run: its state, what it reverts, its step table, and
/// its outcome once it ended. `run` is `None` while it is journaled but not submitted yet.
fn revert_lines(r: &RevertRecord, run: Option<&RunRecord>) -> String {
    let short = &r.commit[..r.commit.len().min(7)];
    let state = match run.map(|run| run.state) {
        None | Some(RunState::Queued) => "🕒 queued",
        Some(RunState::Running) => "⏳ running",
        Some(RunState::Succeeded) => "✅ succeeded",
        Some(RunState::Failed) => "❌ failed",
        Some(RunState::Cancelled) => "🚫 cancelled",
    };
    let mut out = format!(
        "\n#### Revert of `{}` to `{short}`: {state}\n\nRun `{}`, started by the scan of {}, re-applies Git at the deployed commit for: {}.\n",
        r.cluster,
        r.run_id,
        r.scan_at.format("%Y-%m-%d %H:%M UTC"),
        r.fields.iter().map(|f| format!("`{}`", cell(f))).collect::<Vec<_>>().join(", "),
    );
    let Some(run) = run else {
        return out;
    };
    out.push_str("\n| # | Step | State | Attempts | Detail |\n|---|---|---|---|---|\n");
    for (i, s) in run.steps.iter().enumerate() {
        let detail = match s.state {
            tkgops_engine::store::StepState::Failed => s.error.clone().unwrap_or_default(),
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {:?} | {} | {} |\n",
            i + 1,
            cell(&s.spec.title),
            s.state,
            s.attempts.len(),
            cell(&detail),
        ));
    }
    match run.state {
        RunState::Failed | RunState::Cancelled => out.push_str(&format!(
            "\nThe revert did not finish: {}. The drift stays reported; the next revert starts no sooner than one `driftScanInterval` after this one ended.\n",
            cell(run.error.as_deref().unwrap_or("no reason recorded"))
        )),
        RunState::Succeeded => out.push_str(
            "\nThe revert re-applied Git; the next scan compares the cluster again.\n",
        ),
        _ => {}
    }
    out
}

/// The dashboard's drift section for the last scan `scan` and the drift `records` it left:
/// "no drift", or a table of every drifted field (cluster, object, field, Git's value, the
/// live value, since when), then the drift tkgops cannot revert and the clusters the scan
/// could not compare; then each cluster's last revert run (`reverts`, with the engine's record
/// of the run when it was submitted).
pub fn drift_section(
    scan: &DriftScan,
    records: &[DriftRecord],
    reverts: &[(RevertRecord, Option<RunRecord>)],
) -> String {
    let mut out = String::from("\n### Drift\n\n");
    if records.is_empty() {
        out.push_str(&format!(
            "No drift: {} deployed cluster(s) compared, each live as Git says at its deployed commit.\n",
            scan.clusters
        ));
    } else {
        out.push_str(
            "| Cluster | Object | Field | Git | Live | Since |\n|---|---|---|---|---|---|\n",
        );
        for r in records {
            let short = &r.commit[..r.commit.len().min(7)];
            for e in &r.fields {
                out.push_str(&format!(
                    "| `{}` (`{short}`) | {} | `{}` | `{}` | `{}` | {} |\n",
                    r.cluster,
                    e.object,
                    cell(&e.field.field),
                    cell(&e.field.git),
                    cell(&e.field.live),
                    e.since.format("%Y-%m-%d %H:%M UTC"),
                ));
            }
            for (u, since) in &r.unrevertible {
                out.push_str(&format!(
                    "| `{}` (`{short}`) | — | — | — | {} (cannot be reverted) | {} |\n",
                    r.cluster,
                    cell(u),
                    since.format("%Y-%m-%d %H:%M UTC"),
                ));
            }
        }
    }
    for (cluster, why) in &scan.failed {
        out.push_str(&format!("\nNot compared: `{cluster}`: {}\n", cell(why)));
    }
    for (r, run) in reverts {
        out.push_str(&revert_lines(r, run.as_ref()));
    }
    out
}

/// The plan comment's note for the drifted clusters among `clusters` (from the last scan's
/// `records`): one line per cluster naming its drifted fields; empty when none drifted.
pub fn drift_note(records: &[DriftRecord], clusters: &BTreeSet<String>) -> String {
    let lines: Vec<String> = records
        .iter()
        .filter(|r| clusters.contains(&r.cluster))
        .map(|r| {
            let mut what: Vec<String> = r
                .fields
                .iter()
                .map(|e| {
                    format!(
                        "`{}` (Git `{}`, live `{}`)",
                        e.field.field,
                        cell(&e.field.git),
                        cell(&e.field.live)
                    )
                })
                .collect();
            what.extend(r.unrevertible.iter().map(|(u, _)| cell(u)));
            format!("- `{}`: {}", r.cluster, what.join("; "))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\n### Drift\n\nThe last drift scan found live changes not in Git on clusters this pull request touches (the fleet dashboard issue has the details):\n\n{}\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cluster: &str) -> DriftRecord {
        let t = chrono::DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        DriftRecord {
            cluster: cluster.into(),
            commit: "0123456789abcdef".into(),
            fields: vec![DriftEntry {
                object: DriftObject::Cluster,
                field: DriftField {
                    field: "spec.topology.workers.machineDeployments[md-0].replicas".into(),
                    git: "3".into(),
                    live: "5".into(),
                },
                since: t,
            }],
            unrevertible: vec![("the TMC cluster x does not exist".into(), t)],
            scanned_at: t,
        }
    }

    #[test]
    fn the_revert_run_id_is_deterministic_per_cluster_commit_and_scan() {
        let t = record("a").scanned_at;
        let id = revert_run_id("a", "0123456789abcdef", t);
        assert_eq!(id, "a@0123456789ab#revert-drift/20250102T030405Z");
        assert_eq!(id, revert_run_id("a", "0123456789abcdef", t));
        assert_ne!(id, revert_run_id("a", "fedcba9876543210", t));
        assert_ne!(
            id,
            revert_run_id("a", "0123456789abcdef", t + chrono::Duration::seconds(1))
        );
    }

    #[tokio::test]
    async fn a_resubmitted_revert_run_is_the_same_run() {
        let store = std::sync::Arc::new(tkgops_engine::store::SledStore::temporary().unwrap());
        let engine = tkgops_engine::Engine::new(
            store,
            std::sync::Arc::new(crate::testing::Succeeds),
            std::sync::Arc::new(tkgops_engine::NoopObserver),
        );
        let id = revert_run_id("a", "0123456789abcdef", record("a").scanned_at);
        let req = RunRequest {
            id: id.clone(),
            cluster: "a".into(),
            workflow: REVERT_WORKFLOW.into(),
            commit_sha: "0123456789abcdef".into(),
            origin: None,
            steps: Vec::new(),
        };
        let first = engine.submit(req.clone()).await.unwrap();
        let again = engine.submit(req).await.unwrap();
        assert_eq!(first.seq, again.seq, "one run, not two");
    }

    #[test]
    fn a_revert_runs_only_the_steps_of_what_drifted_and_forces_them() {
        use tkgops_domain::request::PackageRepositoryRef;
        use tkgops_domain::step::{KubeApplyInputs, PackagesInputs, RetryPolicy, WorkloadTarget};
        let target = WorkloadTarget {
            management_cluster: "mc".into(),
            namespace: "default".into(),
            cluster_name: "a".into(),
            kubeconfig: None,
        };
        let step = |id: &str, inputs: StepInputs| StepSpec {
            id: id.into(),
            title: id.into(),
            timeout_secs: 60,
            retry: RetryPolicy {
                max_attempts: 1,
                initial_backoff_secs: 1.0,
                max_backoff_secs: 1.0,
            },
            inputs,
        };
        let steps = vec![
            step(
                "apply-cluster",
                StepInputs::KubeApply(KubeApplyInputs {
                    target: target.clone(),
                    manifests: "apiVersion: cluster.x-k8s.io/v1beta1\nkind: Cluster\n".into(),
                    revert: false,
                }),
            ),
            step("wait-cluster", StepInputs::KubeWaitCluster(target.clone())),
            step(
                "read-kubeconfig",
                StepInputs::KubeReadKubeconfig(target.clone()),
            ),
            step(
                "packages",
                StepInputs::PackagesRollout(PackagesInputs {
                    target: target.clone(),
                    repository: PackageRepositoryRef::default(),
                    packages: Vec::new(),
                    revert: false,
                }),
            ),
        ];
        let ids = |objects: &[DriftObject]| -> Vec<String> {
            revert_steps(&steps, &objects.iter().copied().collect())
                .into_iter()
                .map(|s| s.id)
                .collect()
        };
        assert_eq!(ids(&[DriftObject::Cluster]), vec!["apply-cluster"]);
        assert_eq!(
            ids(&[DriftObject::PackageInstall]),
            vec!["read-kubeconfig", "packages"]
        );
        assert!(ids(&[DriftObject::TmcCluster]).is_empty());
        let all = revert_steps(
            &steps,
            &[DriftObject::Cluster, DriftObject::PackageInstall]
                .into_iter()
                .collect(),
        );
        assert!(all.iter().all(|s| match &s.inputs {
            StepInputs::KubeApply(i) => i.revert,
            StepInputs::PackagesRollout(i) => i.revert,
            _ => true,
        }));
    }

    #[test]
    fn the_plan_note_names_only_touched_drifted_clusters() {
        let records = [record("a"), record("b")];
        let note = drift_note(
            &records,
            &BTreeSet::from(["b".to_string(), "c".to_string()]),
        );
        assert!(note.contains("### Drift"), "{note}");
        assert!(note.contains("- `b`: `spec.topology.workers.machineDeployments[md-0].replicas` (Git `3`, live `5`); the TMC cluster x does not exist"), "{note}");
        assert!(!note.contains("`a`"), "{note}");
        assert_eq!(drift_note(&records, &BTreeSet::from(["c".to_string()])), "");
    }

    #[test]
    fn the_dashboard_section_is_a_table_or_no_drift() {
        let t = record("a").scanned_at;
        let scan = DriftScan {
            at: t,
            clusters: 2,
            failed: vec![("z".into(), "unreachable".into())],
        };
        let clean = drift_section(&scan, &[], &[]);
        assert!(
            clean.contains("No drift: 2 deployed cluster(s) compared"),
            "{clean}"
        );
        assert!(clean.contains("Not compared: `z`: unreachable"), "{clean}");
        let table = drift_section(&scan, &[record("a")], &[]);
        assert!(table.contains("| `a` (`0123456`) | Cluster | `spec.topology.workers.machineDeployments[md-0].replicas` | `3` | `5` | 2025-01-02 03:04 UTC |"), "{table}");
        assert!(
            table.contains("the TMC cluster x does not exist (cannot be reverted)"),
            "{table}"
        );
    }
}

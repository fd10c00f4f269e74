//! The drift scan ([`Key::Drift`]): on the bot configuration's `driftScanInterval`, every
//! cluster tkgops deployed (a cluster of the default branch with a deployed commit) is compared
//! with what Git says at that deployed commit:
//!
//! - the Cluster's topology: the Cluster the last run applied (the create workflow's
//!   `kube.apply` manifests rendered at the deployed commit) is sent as a server-side dry run
//!   under tkgops's field manager, and the answer compared with the live Cluster
//!   ([`tkgops_domain::drift::topology_drift`]): only a field tkgops's apply would change counts;
//! - the TMC cluster's group, description and labels against the request's `tmc` settings
//!   ([`tkgops_domain::drift::tmc_drift`]).
//!
//! A Cluster or TMC cluster that is gone (or not tkgops's) is reported as drift tkgops cannot
//! revert, never "fixed" by a create. What a scan finds is kept in the journal per cluster
//! ([`DriftRecord`], each field with the scan that first saw it), shown on the fleet dashboard
//! issue ([`drift_section`]) and counted in `tkgops_drift_clusters`.
//!
//! Plans use no credentials: a pull request's plan reads the last scan's records
//! ([`drift_note`]).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use tkgops_domain::drift::{tmc_drift, topology_drift, DriftField, TmcLive, TmcWanted};
use tkgops_domain::files::TreeReader;
use tkgops_domain::request::cluster_spec;
use tkgops_domain::step::{KubeApplyInputs, StepInputs, TmcClusterInputs};
use tkgops_domain::workflow::plan::{
    load_cluster, load_repo_config, render_context, render_workflow, OWNER_LABEL,
};
use tkgops_domain::workflow::Catalog;
use tkgops_providers::kube::drift::ClusterProbe;
use tracing::{info, warn};

use super::{Key, Outcome};
use crate::gitops::ConfigRepo;
use crate::journal::{DriftEntry, DriftObject, DriftRecord, DriftScan};
use crate::scheduler::Action;
use crate::{blocking, BotError};

on_context!(
    /// The drift scan's reconciler ([`Key::Drift`]).
    DriftReconciler
);

/// What Git says a deployed cluster is, at its deployed commit: the inputs the create
/// workflow's steps would have there.
#[derive(Debug, Default)]
struct Wanted {
    /// The `kube.apply` step whose manifests hold the Cluster.
    cluster: Option<KubeApplyInputs>,
    /// The `tmc.attach` step, when the request attaches the cluster to TMC.
    tmc: Option<TmcClusterInputs>,
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
    for s in steps {
        match s.inputs {
            StepInputs::KubeApply(i)
                if i.manifests.lines().any(|l| l.trim() == "kind: Cluster") =>
            {
                wanted.cluster = Some(i)
            }
            StepInputs::TmcAttach(i) => wanted.tmc = Some(i),
            _ => {}
        }
    }
    Ok(Some(wanted))
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
        let now = tokio::time::Instant::now();
        let last = *self.drift_last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = last {
            if now < last + interval {
                return Ok(Action::requeue(last + interval - now).into());
            }
        }
        self.scan().await?;
        *self.drift_last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(tokio::time::Instant::now());
        Ok(Outcome {
            action: Action::requeue(interval),
            enqueue: vec![Key::Dashboard],
        })
    }

    /// One scan of every deployed cluster of the default branch's tip (module docs).
    ///
    /// Errors: [`BotError`] when the tip, the journal or the engine's store cannot be read.
    pub(crate) async fn scan(&self) -> Result<(), BotError> {
        let tip = self.observed().tip.clone();
        if tip.is_empty() {
            return Ok(());
        }
        let at = self.now();
        let git = self.git.clone();
        let t = tip.clone();
        let names = blocking(move || git.list_dirs(&t, "clusters")).await?;
        let mut compared = 0usize;
        let mut failed = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            let Some(deployed) = self
                .store
                .deployed(&name)
                .await
                .map_err(|e| BotError::Store(e.to_string()))?
            else {
                continue;
            };
            let (git, catalog, repository) = (
                self.git.clone(),
                self.catalog.clone(),
                self.full_name.clone(),
            );
            let (n, c) = (name.clone(), deployed.commit_sha.clone());
            let Some(wanted) =
                blocking(move || wanted_at(&git, &catalog, &repository, &c, &n)).await?
            else {
                continue;
            };
            seen.insert(name.clone());
            match self.compare(&wanted).await {
                Ok(found) => {
                    compared += 1;
                    self.record(&name, &deployed.commit_sha, found, at).await?;
                }
                Err(why) => {
                    warn!(cluster = %name, error = %why, "drift scan: the cluster could not be compared");
                    failed.push((name, why));
                }
            }
        }
        // Clusters no longer deployed (or no longer in Git) have no drift to show.
        for r in self.journal.drifts().await? {
            if !seen.contains(&r.cluster) {
                self.journal.clear_drift(&r.cluster).await?;
            }
        }
        let drifted = self.journal.drifts().await?.len();
        self.metrics.set_drift_clusters(drifted as i64);
        info!(clusters = compared, drifted, "drift scan done");
        self.journal
            .set_drift_scan(&DriftScan {
                at,
                clusters: compared,
                failed,
            })
            .await?;
        Ok(())
    }

    /// Compares one cluster's live state with `wanted`.
    ///
    /// Errors: the message of a provider error (management cluster or TMC unreachable, …).
    async fn compare(&self, wanted: &Wanted) -> Result<Found, String> {
        let mut fields = Vec::new();
        let mut unrevertible = Vec::new();
        if let Some(k) = &wanted.cluster {
            let mc = &k.target.management_cluster;
            match self.executors.probe_cluster(k).await.map_err(|e| e.to_string())? {
                ClusterProbe::Found { live, desired, .. } => fields.extend(
                    topology_drift(&desired, &live)
                        .into_iter()
                        .map(|f| (DriftObject::Cluster, f)),
                ),
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

/// A table cell: `|` escaped, line breaks flattened.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The dashboard's drift section for the last scan `scan` and the drift `records` it left:
/// "no drift", or a table of every drifted field (cluster, object, field, Git's value, the
/// live value, since when), then the drift tkgops cannot revert and the clusters the scan
/// could not compare.
pub fn drift_section(scan: &DriftScan, records: &[DriftRecord]) -> String {
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
        let clean = drift_section(&scan, &[]);
        assert!(
            clean.contains("No drift: 2 deployed cluster(s) compared"),
            "{clean}"
        );
        assert!(clean.contains("Not compared: `z`: unreachable"), "{clean}");
        let table = drift_section(&scan, &[record("a")]);
        assert!(table.contains("| `a` (`0123456`) | Cluster | `spec.topology.workers.machineDeployments[md-0].replicas` | `3` | `5` | 2025-01-02 03:04 UTC |"), "{table}");
        assert!(
            table.contains("the TMC cluster x does not exist (cannot be reverted)"),
            "{table}"
        );
    }
}

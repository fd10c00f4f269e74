//! The per-cluster queue's re-plan (issue 8 item 7): a run that waited behind another run of
//! its cluster is planned again, when its turn comes, against the cluster's state as the runs
//! ahead of it left it.
//!
//! "The cluster's state" is the commit of the cluster's last succeeded run
//! ([`DEPLOYED_PREFIX`], written by the publisher). When that commit is the merge commit's first
//! parent, the runs ahead did what the merge assumed and the run starts as approved. Otherwise
//! (a run ahead failed or was cancelled, so the cluster still runs an older commit) the cluster
//! is planned from that commit to the merge commit, under the policy of the merge commit's
//! first parent (security rule 1), and:
//! - the same steps: the run starts as approved;
//! - other steps: the run starts with them, and says so ([`GateDecision::Replace`]);
//! - nothing to do, or the change is now blocked: the run is cancelled with the reason.
//!
//! Everything the re-plan can add was merged to the default branch through approved pull
//! requests (it is the part of them that did not run).

use async_trait::async_trait;
use tkgops_domain::workflow::plan::PlanStatus;
use tkgops_domain::workflow::RolloutHistory;
use tkgops_engine::store::{RunRecord, Store};
use tkgops_engine::{GateDecision, StartGate};

use crate::Planner;

/// Journal key prefix of the commit each cluster last ran successfully from:
/// `cluster/deployed/<cluster>` → merge commit SHA (written when a run succeeds).
pub const DEPLOYED_PREFIX: &str = "cluster/deployed/";

/// Journal key prefix of the latest run submitted for each cluster:
/// `cluster/last-run/<cluster>` → run id (a retry only resumes a cluster's latest run).
pub const LAST_RUN_PREFIX: &str = "cluster/last-run/";

/// The bot's [`StartGate`].
pub struct Replanner {
    /// Plans changes.
    pub planner: Planner,
    /// The journal ([`DEPLOYED_PREFIX`], the run ahead).
    pub store: std::sync::Arc<dyn Store>,
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

#[async_trait]
impl StartGate for Replanner {
    async fn before_start(&self, run: &RunRecord, waited_behind: &str) -> GateDecision {
        match self.decide(run, waited_behind).await {
            Ok(d) => d,
            Err(e) => GateDecision::Fail(format!(
                "re-planning against the cluster's state after run {waited_behind} failed: {e}; `/tkgops retry` tries again"
            )),
        }
    }
}

impl Replanner {
    async fn decide(
        &self,
        run: &RunRecord,
        waited_behind: &str,
    ) -> Result<GateDecision, crate::BotError> {
        let store_err = |e: tkgops_engine::StoreError| crate::BotError::Store(e.to_string());
        let deployed = self
            .store
            .get_meta(&format!("{DEPLOYED_PREFIX}{}", run.cluster))
            .await
            .map_err(store_err)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let git = self.planner.git.clone();
        let commit = run.commit_sha.clone();
        let (parent, base) = crate::blocking(move || {
            let parent = git.first_parent(&commit)?.unwrap_or_else(|| commit.clone());
            let base = deployed.filter(|d| d != &commit && git.is_ancestor(d, &commit));
            Ok((parent, base))
        })
        .await?;
        let Some(base) = base.filter(|b| *b != parent) else {
            // The runs ahead left the cluster as the merge assumed (or nothing is known).
            return Ok(GateDecision::Start);
        };
        let ahead = self
            .store
            .get_run(waited_behind)
            .await
            .map_err(store_err)?
            .map(|r| format!("{:?}", r.state).to_lowercase())
            .unwrap_or_else(|| "unknown".into());
        let plan = self
            .planner
            .plan(
                base.clone(),
                run.commit_sha.clone(),
                parent,
                RolloutHistory::default(),
            )
            .await?;
        let why = format!(
            "re-planned when its turn came: the cluster runs commit {} (run {waited_behind} ahead of it ended {ahead})",
            short(&base)
        );
        // The plan of the same workflow (a change of several kinds plans one run per
        // workflow, each gated on its own), else the cluster's only other plan.
        let mine: Vec<_> = plan
            .clusters
            .iter()
            .filter(|c| c.cluster == run.cluster)
            .collect();
        let same = mine
            .iter()
            .find(|c| c.workflow.as_deref() == Some(run.workflow.as_str()));
        let Some(cp) = same.or(if mine.len() == 1 { mine.first() } else { None }) else {
            return Ok(GateDecision::Cancel(format!(
                "{why}, and from there nothing is left to change"
            )));
        };
        match cp.status {
            PlanStatus::Ready => {}
            PlanStatus::Blocked => {
                let findings: Vec<String> = cp
                    .findings
                    .iter()
                    .filter(|f| f.severity == tkgops_domain::request::Severity::Error)
                    .map(|f| format!("{} {}", f.rule, f.message))
                    .collect();
                return Ok(GateDecision::Cancel(format!(
                    "{why}, and from there the change is blocked: {}",
                    findings.join("; ")
                )));
            }
            _ => {
                return Ok(GateDecision::Cancel(format!(
                    "{why}, and from there nothing is left to run ({})",
                    cp.note.clone().unwrap_or_else(|| cp.intent.label())
                )))
            }
        }
        let workflow = cp.workflow.clone().unwrap_or_default();
        let current: Vec<_> = run.steps.iter().map(|s| s.spec.clone()).collect();
        if workflow == run.workflow && cp.steps == current {
            return Ok(GateDecision::Start);
        }
        Ok(GateDecision::Replace {
            note: format!(
                "{why}: it now runs `{workflow}` for the change {}..{}",
                short(&base),
                short(&run.commit_sha)
            ),
            workflow,
            steps: cp.steps.clone(),
        })
    }
}

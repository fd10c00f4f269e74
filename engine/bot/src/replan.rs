//! The per-cluster queue's re-plan (issue 8 item 7): a run that waited behind another run of
//! its cluster is planned again, when its turn comes, against the cluster's state as the runs
//! ahead of it left it.
//!
//! "The cluster's state" is the commit of the cluster's last succeeded run, a fact the engine
//! records with that run's terminal write ([`Store::deployed`]). When that commit is the merge
//! commit's first
//! parent, the runs ahead did what the merge assumed and the run starts as approved. Otherwise
//! (a run ahead failed or was cancelled, so the cluster still runs an older commit) the cluster
//! is planned from that commit to the merge commit, under the trusted policy, and:
//! - the same steps: the run starts as approved;
//! - other steps: the run starts with them, and says so ([`GateDecision::Replace`]);
//! - nothing to do, or the change is now blocked: the run is cancelled with the reason.
//!
//! The re-plan runs only what reached the default branch through approved merges (the ledger
//! of [`crate::trust`]): a change of the cluster's files in the range that came through a merge
//! tkgops refused, or a direct push, is taken back out of the head (`git revert`, in memory)
//! and named in the run's note; when it cannot be taken out without a conflict, the run is
//! cancelled and says why. The policy is the trusted policy commit's (security rule 1), and
//! only the cluster's own files are planned.

use async_trait::async_trait;
use tkgops_domain::workflow::plan::PlanStatus;
use tkgops_engine::store::{RunRecord, Store};
use tkgops_engine::{GateDecision, StartGate};

use crate::journal::BotJournal;
use crate::{short_sha, Planner};

/// The bot's [`StartGate`].
pub struct Replanner {
    /// Plans changes.
    pub planner: Planner,
    /// The journal (the ledger, the trusted policy) and, through it, the engine's store (the
    /// deployed commit, the run ahead).
    pub journal: BotJournal,
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
        // A drift revert that waited behind another run (which just changed the cluster) is
        // not re-planned: the next drift scan compares the cluster again.
        if run.workflow == crate::reconcile::drift::REVERT_WORKFLOW {
            return Ok(GateDecision::Cancel(format!(
                "run {waited_behind} of the cluster ran first; the next drift scan compares the cluster again"
            )));
        }
        let store_err = |e: tkgops_engine::StoreError| crate::BotError::Store(e.to_string());
        let store: std::sync::Arc<dyn Store> = self.journal.store();
        let deployed = store
            .deployed(&run.cluster)
            .await
            .map_err(store_err)?
            .map(|d| d.commit_sha);
        // The default branch's tip before this run's merge (a rebase merge's first commits
        // are part of the merge, not of what came before it).
        let own_base = self
            .journal
            .ledger_entry(&run.commit_sha)
            .await?
            .and_then(|e| e.base);
        let git = self.planner.git.clone();
        let commit = run.commit_sha.clone();
        let (merge_base, base) = crate::blocking(move || {
            let merge_base = match own_base {
                Some(b) => b,
                None => git.first_parent(&commit)?.unwrap_or_else(|| commit.clone()),
            };
            let base = deployed.filter(|d| d != &commit && git.is_ancestor(d, &commit));
            Ok((merge_base, base))
        })
        .await?;
        let Some(base) = base.filter(|b| *b != merge_base) else {
            // The runs ahead left the cluster as the merge assumed (or nothing is known).
            return Ok(GateDecision::Start);
        };
        let Some(trusted) = self.journal.trusted_policy().await? else {
            return Ok(GateDecision::Fail(
                "the trusted policy commit is not journalled, so the re-plan has no policy".into(),
            ));
        };
        let ahead = store
            .get_run(waited_behind)
            .await
            .map_err(store_err)?
            .map(|r| format!("{:?}", r.state).to_lowercase())
            .unwrap_or_else(|| "unknown".into());
        let why = format!(
            "re-planned when its turn came: the cluster runs commit {} (run {waited_behind} ahead of it ended {ahead})",
            short_sha(&base)
        );
        // Security rule 2: only changes that reached the default branch through approved
        // merges run. Changes of this cluster between the deployed commit and this run's merge
        // that did not (a refused merge, a direct push) are taken back out of the head.
        let left_out = self
            .unapproved_changes(&run.cluster, &base, &merge_base)
            .await?;
        let head = if left_out.is_empty() {
            run.commit_sha.clone()
        } else {
            let git = self.planner.git.clone();
            let commit = run.commit_sha.clone();
            let reverts: Vec<String> = left_out.iter().map(|(c, _)| c.clone()).collect();
            match crate::blocking(move || git.revert_onto(&commit, &reverts)).await? {
                Some(h) => h,
                None => {
                    return Ok(GateDecision::Cancel(format!(
                        "{why}, and the range holds changes to `{}` that did not reach the default branch through an approved merge ({}); they cannot be left out without a conflict, so nothing runs. Open a pull request that makes the cluster's files what they should be",
                        run.cluster,
                        describe(&left_out)
                    )))
                }
            }
        };
        let left_note = if left_out.is_empty() {
            String::new()
        } else {
            format!(
                "; left out, as they did not reach the default branch through an approved merge: {}",
                describe(&left_out)
            )
        };
        let plan = self
            .planner
            .plan_cluster(base.clone(), head, &trusted.commit, &run.cluster)
            .await?;
        Ok(judge(
            run,
            &plan,
            &base,
            &why,
            &left_note,
            left_out.is_empty(),
        ))
    }

    /// The first-parent commits of `(from, to]` (newest first) that changed cluster
    /// `cluster`'s files without reaching the default branch through an approved merge, each
    /// with why: the ledger ([`BotJournal::ledger_entry`]) names the merges tkgops handled;
    /// anything else was pushed without one.
    ///
    /// Errors: [`crate::BotError`] when git or the journal fail.
    async fn unapproved_changes(
        &self,
        cluster: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, String)>, crate::BotError> {
        let git = self.planner.git.clone();
        let (from_c, to_c, prefix) = (
            from.to_string(),
            to.to_string(),
            format!("clusters/{cluster}/"),
        );
        let touching: Vec<String> = crate::blocking(move || {
            let chain = git.first_parent_chain(&to_c, Some(&from_c), REPLAN_HISTORY_LIMIT)?;
            let mut out = Vec::new();
            for c in chain {
                let parent = git.first_parent(&c)?;
                let changed = match &parent {
                    Some(p) => git.changed_paths(p, &c)?,
                    None => Vec::new(),
                };
                if changed.iter().any(|p| p.starts_with(&prefix)) {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .await?;
        let mut out = Vec::new();
        for c in touching {
            match self.journal.ledger_entry(&c).await? {
                Some(e) if e.approved => {}
                Some(e) => out.push((
                    c,
                    format!(
                        "merged by pull request #{} without approval ({})",
                        e.pr,
                        e.refused.unwrap_or_default()
                    ),
                )),
                None => out.push((c, "pushed without a pull request tkgops planned".into())),
            }
        }
        Ok(out)
    }
}

/// How far back a re-plan looks for changes that did not reach the default branch through an
/// approved merge (commits of the first-parent history).
const REPLAN_HISTORY_LIMIT: usize = 10_000;

/// "`abc1234` (why), …" for the run's note.
fn describe(left_out: &[(String, String)]) -> String {
    left_out
        .iter()
        .map(|(c, why)| format!("`{}` ({why})", short_sha(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The gate's decision for `run` from its re-plan `plan` (from the deployed commit `base`):
/// start it as it is, replace its steps with the plan's, or cancel it (nothing left to change,
/// blocked, or nothing to run). `why` says why it was re-planned, `left_note` what was left
/// out; `nothing_left_out` is whether the head is the run's own commit.
fn judge(
    run: &RunRecord,
    plan: &tkgops_domain::workflow::Plan,
    base: &str,
    why: &str,
    left_note: &str,
    nothing_left_out: bool,
) -> GateDecision {
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
        return GateDecision::Cancel(format!(
            "{why}, and from there nothing is left to change{left_note}"
        ));
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
            return GateDecision::Cancel(format!(
                "{why}, and from there the change is blocked: {}{left_note}",
                findings.join("; ")
            ));
        }
        _ => {
            return GateDecision::Cancel(format!(
                "{why}, and from there nothing is left to run ({}){left_note}",
                cp.note.clone().unwrap_or_else(|| cp.intent.label())
            ))
        }
    }
    let workflow = cp.workflow.clone().unwrap_or_default();
    let current: Vec<_> = run.steps.iter().map(|s| s.spec.clone()).collect();
    if workflow == run.workflow && cp.steps == current && nothing_left_out {
        return GateDecision::Start;
    }
    GateDecision::Replace {
        note: format!(
            "{why}: it now runs `{workflow}` for the change {}..{}{left_note}",
            short_sha(base),
            short_sha(&run.commit_sha)
        ),
        workflow,
        steps: cp.steps.clone(),
    }
}

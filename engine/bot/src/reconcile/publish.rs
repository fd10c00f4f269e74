//! The engine's observer: turns run transitions into the sticky PR comment (live step table,
//! then final summary) and the `tkgops/apply` commit status on the merge commit.
//!
//! The publish reconciler is keyed by merge commit, in its own [`crate::scheduler::Scheduler`].
//! Updates are coalesced: at most one comment edit per merge commit every `min_interval`
//! (GitHub allows about 80 content-creating requests a minute), and an edit is skipped when the
//! body did not change (the GitHub client compares before writing).
//!
//! A publish that GitHub refuses (after the client's own retries) is retried with exponential
//! backoff (from `2 × min_interval` up to [`MAX_REPUBLISH_DELAY`]) until GitHub accepts it. A
//! merge commit stays listed as unpublished in the journal
//! ([`crate::BotJournal::unpublished`]) until its final comment and `tkgops/apply` status were
//! accepted, so a restarted bot publishes what its predecessor could not ([`crate::Bot::run`]).
//!
//! The publisher records nothing the engine relies on: the engine records each cluster's
//! deployed commit itself, with the run's terminal write
//! ([`tkgops_engine::store::Store::deployed`]). It only keeps
//! the rollout measurements of succeeded runs for the plan's estimates.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use crate::journal::{BotJournal, RolloutSample};
use crate::scheduler::Scheduler;
use crate::{not_run_views, BotError, MergeRecord, MergeSha, APPLY_CONTEXT};
use tkgops_domain::workflow::markdown::{
    self, cell, format_duration, RunView, StepRow, STICKY_MARKER,
};
use tkgops_domain::workflow::Catalog;
use tkgops_engine::store::{RunRecord, RunState, StepState};
use tkgops_engine::{backoff_delay, RetryPolicy, RunObserver, StepKind};
use tkgops_github::{CommitState, GitHub};

/// Upper bound of the delay between two tries of a refused publish: 5 min.
pub const MAX_REPUBLISH_DELAY: Duration = Duration::from_secs(300);

/// The observer handed to the engine. Cheap to clone.
#[derive(Clone)]
pub struct CommentPublisher {
    tx: mpsc::UnboundedSender<MergeSha>,
    progress: Arc<Mutex<BTreeMap<String, String>>>,
    journal: BotJournal,
    /// Notified when a run finishes: the bot's poll loop wakes (a scheduled apply's next
    /// step follows its runs without waiting for the poll interval).
    wake: Arc<tokio::sync::Notify>,
}

/// The rollout measurement of a succeeded run: total seconds of its machine waits and the
/// machines those waits saw roll (their output's `rolledNodes`); `None` when it rolled none.
pub fn rollout_measurement(run: &RunRecord) -> Option<(f64, u32)> {
    let mut secs = 0.0;
    let mut nodes = 0u32;
    for s in &run.steps {
        if !matches!(
            s.spec.kind(),
            StepKind::KubeWaitControlPlane | StepKind::KubeWaitMachineDeployments
        ) || s.state != StepState::Succeeded
        {
            continue;
        }
        let n = s
            .output
            .as_ref()
            .map_or(0, |o| rolled_nodes(s.spec.kind(), o));
        if let (Some(a), Some(b)) = (s.started_at, s.finished_at) {
            if n > 0 {
                secs += (b - a).num_milliseconds().max(0) as f64 / 1000.0;
                nodes += n;
            }
        }
    }
    (nodes > 0).then_some((secs, nodes))
}

/// The `rolledNodes` of a journalled output of `kind` (`kube.wait-control-plane` or
/// `kube.wait-machine-deployments`, the two output types carrying it); 0 for another kind or an
/// output of another shape.
fn rolled_nodes(kind: StepKind, output: &serde_json::Value) -> u32 {
    use serde::Deserialize as _;
    use tkgops_domain::output::{KubeWaitControlPlaneOutput, KubeWaitMachineDeploymentsOutput};
    let n = match kind {
        StepKind::KubeWaitControlPlane => {
            KubeWaitControlPlaneOutput::deserialize(output).map(|o| o.rolled_nodes)
        }
        StepKind::KubeWaitMachineDeployments => {
            KubeWaitMachineDeploymentsOutput::deserialize(output).map(|o| o.rolled_nodes)
        }
        _ => return 0,
    };
    n.unwrap_or(0) as u32
}

/// The mean seconds per rolled machine over the rollout measurements in the journal
/// ([`BotJournal::rollout_samples`]), for the plan's estimates.
///
/// Errors: [`BotError::Store`] when the journal cannot be read.
pub async fn rollout_history(
    journal: &BotJournal,
) -> Result<tkgops_domain::workflow::RolloutHistory, BotError> {
    let (mut secs, mut nodes) = (0.0f64, 0u32);
    for m in journal.rollout_samples().await? {
        secs += m.secs;
        nodes += m.nodes;
    }
    Ok(tkgops_domain::workflow::RolloutHistory {
        node_seconds: (nodes > 0).then(|| secs / nodes as f64),
        samples: nodes,
    })
}

impl CommentPublisher {
    /// Starts the publishing task, rendering from `journal` (merge records) and its store
    /// (runs). Returns the observer to give to the engine.
    pub fn start(
        github: Arc<dyn GitHub>,
        journal: BotJournal,
        catalog: Arc<Catalog>,
        min_interval: Duration,
    ) -> CommentPublisher {
        let (tx, mut rx) = mpsc::unbounded_channel::<MergeSha>();
        let journal_for_task = journal.clone();
        let progress: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let progress2 = progress.clone();
        let backoff = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff_secs: (min_interval * 2).as_secs_f64(),
            max_backoff_secs: MAX_REPUBLISH_DELAY.as_secs_f64(),
        };
        // The publish reconciler: one key per merge commit in a scheduler (a commit notified
        // again before its turn is one publish), due `min_interval` after its notification; a
        // refused publish is requeued after its backoff. Ends when every publisher is dropped.
        tokio::spawn(async move {
            let mut queue: Scheduler<MergeSha> = Scheduler::new();
            let mut failures: BTreeMap<MergeSha, u32> = BTreeMap::new();
            loop {
                let next = queue.next_due();
                tokio::select! {
                    notified = rx.recv() => match notified {
                        Some(commit) => queue.schedule(commit, Instant::now() + min_interval),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                        while let Some(commit) = queue.pop_due(Instant::now()) {
                            let snapshot = progress2.lock().map(|p| p.clone()).unwrap_or_default();
                            match publish_commit(&*github, &journal_for_task, &catalog, &commit, &snapshot).await {
                                Ok(()) => {
                                    failures.remove(&commit);
                                }
                                Err(e) => {
                                    let n = failures.entry(commit.clone()).or_insert(0);
                                    let delay = backoff_delay(&backoff, *n);
                                    *n = n.saturating_add(1);
                                    warn!(commit = %commit, error = %e, retry_in = ?delay, "updating the PR comment failed; retrying");
                                    queue.schedule(commit, Instant::now() + delay + min_interval);
                                }
                            }
                        }
                    }
                }
            }
        });
        CommentPublisher {
            tx,
            progress,
            journal,
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

impl CommentPublisher {
    /// Asks for the comment and status of merge commit `commit` to be (re)published from the
    /// journal. Coalesced with other requests; never blocks.
    pub fn notify(&self, commit: &MergeSha) {
        let _ = self.tx.send(commit.clone());
    }

    /// What wakes the bot's poll loop: notified by every finished run (and by accepted
    /// webhook deliveries, which share it).
    pub fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }
}

#[async_trait::async_trait]
impl RunObserver for CommentPublisher {
    async fn run_changed(&self, run: &RunRecord, progress: Option<&str>) {
        if let Ok(mut p) = self.progress.lock() {
            match progress {
                Some(line) => {
                    p.insert(run.id.clone(), line.to_string());
                }
                None if run.state.is_terminal() => {
                    p.remove(&run.id);
                }
                None => {}
            }
        }
        if run.state == RunState::Succeeded {
            // (The engine recorded the cluster's deployed commit with this very write.)
            if let Some((secs, nodes)) = rollout_measurement(run) {
                let sample = RolloutSample { secs, nodes };
                if let Err(e) = self.journal.add_rollout_sample(&run.id, sample).await {
                    warn!(run = %run.id, error = %e, "recording the rollout time failed");
                }
            }
        }
        if run.origin.is_some() {
            let _ = self.tx.send(MergeSha::new(run.commit_sha.clone()));
        }
        if run.state.is_terminal() && progress.is_none() {
            self.wake.notify_one();
        }
    }
}

async fn publish_commit(
    github: &dyn GitHub,
    journal: &BotJournal,
    catalog: &Catalog,
    commit: &MergeSha,
    progress: &BTreeMap<String, String>,
) -> Result<(), BotError> {
    let Some(record) = journal.merge_record(commit).await? else {
        return Ok(());
    };
    publish_record(github, journal, catalog, &record, progress).await
}

/// Renders the run comment of `record` from the store and upserts it, then sets the
/// `tkgops/apply` status of the merge commit; once that status is final (not pending), removes
/// the commit from the journal's unpublished list ([`BotJournal::mark_published`]).
///
/// Errors: [`BotError::GitHub`] after the client's retries, [`BotError::Store`], [`BotError::Render`].
pub async fn publish_record(
    github: &dyn GitHub,
    journal: &BotJournal,
    catalog: &Catalog,
    record: &MergeRecord,
    progress: &BTreeMap<String, String>,
) -> Result<(), BotError> {
    let store = journal.store();
    let mut runs = Vec::new();
    for id in &record.run_ids {
        if let Some(r) = store
            .get_run(id)
            .await
            .map_err(|e| BotError::Store(e.to_string()))?
        {
            runs.push(r);
        }
    }
    // Who each queued run waits for (issue 8 item 7).
    let mut ahead: BTreeMap<String, String> = BTreeMap::new();
    if runs.iter().any(|r| r.state == RunState::Queued) {
        let active = store
            .list_active()
            .await
            .map_err(|e| BotError::Store(e.to_string()))?;
        for r in runs.iter().filter(|r| r.state == RunState::Queued) {
            if let Some(a) = run_ahead(r, &active) {
                ahead.insert(r.id.clone(), a);
            }
        }
    }
    let views: Vec<RunView> = runs
        .iter()
        .map(|r| {
            run_view(
                r,
                progress.get(&r.id).map(String::as_str),
                ahead.get(&r.id).map(String::as_str),
            )
        })
        .collect();
    let (overall, state, desc) = overall(record, &runs, &ahead);
    // A run comment of its own (a scheduled apply's wave) carries its marker instead of the
    // pull request's sticky one.
    let marker = record.marker.as_deref().unwrap_or(STICKY_MARKER);
    let body = markdown::render_runs(
        &markdown::RunHeader {
            marker,
            commit_sha: record.commit.as_str(),
            overall: &overall,
            notes: &record.notes,
        },
        &views,
        &not_run_views(record),
        Some(&record.plan_markdown),
        catalog,
    )
    .map_err(BotError::Render)?;
    github
        .upsert_comment(record.pr, marker, &body)
        .await
        .map_err(|e| BotError::GitHub(e.to_string()))?;
    github
        .set_status(record.commit.as_str(), APPLY_CONTEXT, state, &desc, None)
        .await
        .map_err(|e| BotError::GitHub(e.to_string()))?;
    if state != CommitState::Pending {
        // The final comment and status are on GitHub: nothing left to republish.
        journal.mark_published(&record.commit).await?;
    }
    Ok(())
}

/// "run `R` from PR #N" for the run `queued` waits behind: the running run of its cluster, else
/// the queued one just ahead of it (by `seq`); `None` when nothing is ahead.
pub fn run_ahead(queued: &RunRecord, active: &[RunRecord]) -> Option<String> {
    let same: Vec<&RunRecord> = active
        .iter()
        .filter(|r| r.cluster == queued.cluster && r.id != queued.id && r.seq < queued.seq)
        .collect();
    let ahead = same
        .iter()
        .find(|r| r.state == RunState::Running)
        .or_else(|| same.iter().max_by_key(|r| r.seq))?;
    let from = match ahead.origin.as_deref() {
        Some(o) => match o.strip_prefix("github:pr/") {
            Some(n) => format!(" from PR #{n}"),
            None => format!(" from {o}"),
        },
        None => String::new(),
    };
    Some(format!("run `{}`{from}", ahead.id))
}

fn overall(
    record: &MergeRecord,
    runs: &[RunRecord],
    ahead: &BTreeMap<String, String>,
) -> (String, CommitState, String) {
    if let Some(reason) = &record.refused {
        return (
            format!("⛔ not executed: {reason}"),
            CommitState::Failure,
            format!("not executed: {reason}"),
        );
    }
    let changed = record.changed_since_approval.len();
    if runs.is_empty() && changed > 0 {
        return (
            "⛔ not run: the plan changed after approval".into(),
            CommitState::Failure,
            format!("{changed} cluster(s) not run: their plan changed after approval"),
        );
    }
    if runs.is_empty() {
        return (
            "➖ nothing to run".into(),
            CommitState::Success,
            "nothing to run for this merge".into(),
        );
    }
    let failed = runs
        .iter()
        .filter(|r| r.state == RunState::Failed || r.state == RunState::Cancelled)
        .count();
    let active = runs.iter().filter(|r| !r.state.is_terminal()).count();
    let queued: Vec<&String> = runs
        .iter()
        .filter(|r| r.state == RunState::Queued)
        .filter_map(|r| ahead.get(&r.id))
        .collect();
    if active > 0 && queued.len() == active {
        // Waiting is not failing: pending, with who it waits for.
        let behind = queued[0];
        (
            format!("🕒 queued behind {behind}"),
            CommitState::Pending,
            format!("queued behind {}", behind.replace('`', "")),
        )
    } else if active > 0 {
        (
            "⏳ running".into(),
            CommitState::Pending,
            format!("{active} of {} run(s) in progress", runs.len()),
        )
    } else if failed > 0 {
        (
            "❌ failed".into(),
            CommitState::Failure,
            format!("{failed} of {} run(s) failed", runs.len()),
        )
    } else if changed > 0 {
        (
            "⚠️ partly run: some plans changed after approval".into(),
            CommitState::Failure,
            format!(
                "{} run(s) succeeded; {changed} cluster(s) not run: their plan changed after approval",
                runs.len()
            ),
        )
    } else {
        (
            "✅ succeeded".into(),
            CommitState::Success,
            format!("{} run(s) succeeded", runs.len()),
        )
    }
}

fn run_state_label(s: RunState) -> &'static str {
    match s {
        RunState::Queued => "🕒 queued (another run of this cluster is in progress)",
        RunState::Running => "⏳ running",
        RunState::Succeeded => "✅ succeeded",
        RunState::Failed => "❌ failed",
        RunState::Cancelled => "🚫 cancelled",
    }
}

fn step_state_label(s: StepState) -> &'static str {
    match s {
        StepState::Pending => "⏸️ pending",
        StepState::Running => "⏳ running",
        StepState::Succeeded => "✅ succeeded",
        StepState::Failed => "❌ failed",
        StepState::Cancelled => "🚫 not run",
    }
}

/// The view of one run for the comment; `progress` is the latest progress line of its running
/// step, `ahead` the run a queued run waits behind ([`run_ahead`]).
pub fn run_view(run: &RunRecord, progress: Option<&str>, ahead: Option<&str>) -> RunView {
    let now = Utc::now();
    let steps = run
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let duration = s
                .started_at
                .map(|start| {
                    let end = s.finished_at.unwrap_or(now);
                    format_duration((end - start).num_seconds().max(0) as u64)
                })
                .unwrap_or_default();
            let detail = match s.state {
                StepState::Failed => s.error.clone().unwrap_or_default(),
                // An output of another shape (a test double's, or an older tkgops's) shows
                // nothing, as a step without output does.
                StepState::Succeeded => s
                    .output
                    .as_ref()
                    .and_then(|o| s.spec.kind().output_summary(o).ok())
                    .unwrap_or_default(),
                StepState::Running => {
                    let retrying = s
                        .attempts
                        .iter()
                        .next_back()
                        .and_then(|a| a.error.clone())
                        .filter(|_| s.attempts.len() > 1);
                    progress
                        .map(str::to_string)
                        .or(retrying.map(|e| format!("retrying after: {e}")))
                        .unwrap_or_default()
                }
                _ => String::new(),
            };
            StepRow {
                number: i + 1,
                title: s.spec.title.clone(),
                state: step_state_label(s.state).to_string(),
                duration,
                attempts: s.attempts.len() as u32,
                detail: cell(&detail, 300),
            }
        })
        .collect();
    let summary = match run.state {
        RunState::Succeeded => {
            let secs = run.finished_at.map(|f| (f - run.created_at).num_seconds().max(0) as u64).unwrap_or(0);
            format!("✅ All steps succeeded in {}.", format_duration(secs))
        }
        RunState::Failed => format!("❌ The run failed: {}. Fix the cause and comment `/tkgops retry` to resume it from the failed step, or push a new change.", run.error.clone().unwrap_or_default()),
        RunState::Cancelled => format!("🚫 The run was cancelled: {}.", run.error.clone().unwrap_or_default()),
        _ => String::new(),
    };
    let summary = match &run.note {
        Some(note) if summary.is_empty() => format!("ℹ️ {note}."),
        Some(note) => format!("ℹ️ {note}.\n\n{summary}"),
        None => summary,
    };
    let state = match (run.state, ahead) {
        (RunState::Queued, Some(a)) => format!("🕒 queued behind {a}"),
        (s, _) => run_state_label(s).to_string(),
    };
    RunView {
        cluster: run.cluster.clone(),
        workflow: run.workflow.clone(),
        state,
        steps,
        summary,
        succeeded: run.state == RunState::Succeeded,
        failed: matches!(run.state, RunState::Failed | RunState::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeGitHub;
    use tkgops_domain::step::{RetryPolicy as Retry, StepInputs, StepSpec, WorkloadTarget};
    use tkgops_engine::store::{SledStore, StepRecord};

    /// A refused final status is retried with backoff until GitHub accepts it; then the merge
    /// commit leaves the unpublished list.
    #[tokio::test]
    async fn a_refused_final_status_is_retried_until_github_accepts_it() {
        let (journal, _) = BotJournal::open(Arc::new(SledStore::temporary().unwrap()))
            .await
            .unwrap();
        let store = journal.store();
        let commit = MergeSha::new("c".repeat(40));
        let now = Utc::now();
        let mut step = StepRecord::pending(StepSpec {
            id: "wait-cluster".into(),
            title: "Wait".into(),
            timeout_secs: 60,
            retry: Retry::default(),
            inputs: StepInputs::KubeWaitCluster(WorkloadTarget {
                management_cluster: "mc".into(),
                kubeconfig: None,
                namespace: "default".into(),
                cluster_name: "c1".into(),
            }),
        });
        step.state = StepState::Succeeded;
        store
            .put_run(&RunRecord {
                id: "run-1".into(),
                cluster: "c1".into(),
                workflow: "create-cluster".into(),
                commit_sha: commit.to_string(),
                origin: Some("github:pr/7".into()),
                state: RunState::Succeeded,
                seq: 1,
                created_at: now,
                updated_at: now,
                finished_at: Some(now),
                steps: vec![step],
                error: None,
                note: None,
            })
            .await
            .unwrap();
        let record = MergeRecord {
            pr: 7,
            commit: commit.clone(),
            run_ids: vec!["run-1".into()],
            not_run: Vec::new(),
            plan_markdown: String::new(),
            refused: None,
            changed_since_approval: Vec::new(),
            marker: None,
            notes: Vec::new(),
        };
        journal.put_merge_record(&record).await.unwrap();
        assert_eq!(journal.unpublished().await.unwrap(), vec![commit.clone()]);

        let github = Arc::new(FakeGitHub::default());
        *github.fail_statuses.lock().unwrap() = 3;
        let catalog = Arc::new(Catalog::builtin().unwrap());
        let publisher = CommentPublisher::start(
            github.clone(),
            journal.clone(),
            catalog,
            Duration::from_millis(10),
        );
        let started = tokio::time::Instant::now();
        publisher.notify(&commit);
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let written = github.written.notified();
                if !github.statuses.lock().unwrap().is_empty() {
                    break;
                }
                written.await;
            }
        })
        .await
        .expect("the status was never accepted");
        assert_eq!(*github.refused.lock().unwrap(), 3);
        let statuses = github.statuses.lock().unwrap().clone();
        assert_eq!(
            statuses,
            [(
                commit.to_string(),
                APPLY_CONTEXT.to_string(),
                CommitState::Success,
                "1 run(s) succeeded".to_string()
            )]
        );
        // Backoff 20, 40, 80 ms (2 × min_interval, doubling) plus the 10 ms coalescing delay of
        // each of the 4 tries: retried with backoff, not hammered, not given up.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(180), "{waited:?}");
        // Once accepted, the commit leaves the unpublished list.
        tokio::time::timeout(Duration::from_secs(60), async {
            while journal.is_unpublished(&commit).await.unwrap() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the pending marker was not removed");
    }
}

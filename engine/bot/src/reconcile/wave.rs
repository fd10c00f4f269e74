//! `action: apply` of a schedule (issue 8 item 6), the bot's part: it drives a fire's
//! [`ApplyProgress`] (the pure state machine of `tkgops_domain::waves`) on every poll.
//!
//! - **At the fire** the wave plan is frozen into the fire record: a restart never re-plans it.
//! - **Git stays in step.** Before a wave's first run, the wave's `tkr` bumps are committed on top
//!   of the previous wave's commit (the first on the default branch's commit at the fire),
//!   authored by tkgops at the fire time, so a restart recreates the same SHA. The commit is
//!   pushed to `tkgops/schedule/<name>/apply-<fire>`. One *record pull request* from that
//!   branch is opened. Its runs' step tables are posted on it; merging it puts the upgraded
//!   TKRs on the default branch.
//! - **The runs.** Each cluster's run is the `upgrade-cluster` plan of the wave commit against
//!   its parent, under the policy of the default branch at the fire (the schedule's own policy:
//!   approving an apply schedule approves its upgrades). Run ids are deterministic
//!   (`<cluster>@<commit>#upgrade-cluster`), and the fire record says "started" before the run
//!   is submitted.
//! - **Inside the window**, at most `maxConcurrent` at a time.
//! - **The soak.** When every run of a wave succeeded, the wave soaks: each poll reads every
//!   cluster's health (the Kubernetes provider's `cluster_health`). It is compared with the
//!   health before its upgrade. After the soak time the next wave may start.
//! - **Halts.** A failed run, a cluster unhealthy before its upgrade, or a regression halts the
//!   fire. The halt is reported in a comment on the fleet dashboard issue and stays until an
//!   approver comments `/tkgops resume <schedule>` there ([`crate::reconcile::command`]). Failed runs are
//!   then retried from their failed step.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::reconcile::schedule::{local, FireRecord, FireState, BUMP_AUTHOR};

use crate::{blocking, pr_origin, BotError, MergeRecord, MergeSha, PolicySha};
use tkgops_domain::schedule::{bump_tkr_line, plan_waves, FleetCluster, Schedule};
use tkgops_domain::step::{StepInputs, WorkloadTarget};
use tkgops_domain::waves::{ApplyProgress, ClusterHealth, ClusterStage, Next, WaveState};
use tkgops_domain::workflow::Plan;
use tkgops_engine::{RunRequest, RunState};
use tkgops_github::PullRequest;

/// The workflow a scheduled apply runs for each cluster.
pub const UPGRADE_WORKFLOW: &str = "upgrade-cluster";

/// Clusters listed one per row in a record pull request's body; more are counted per wave.
const RECORD_BODY_ROWS: usize = 200;

/// Health probes of one soak round running at the same time.
const PROBE_CONCURRENCY: usize = 16;

/// The branch holding the bump commits of an apply fire: `tkgops/schedule/<name>/apply-<UTC
/// fire time as YYYYMMDDTHHMMSSZ>`.
pub fn record_branch(schedule: &str, fire: DateTime<Utc>) -> String {
    format!(
        "tkgops/schedule/{schedule}/apply-{}",
        fire.format("%Y%m%dT%H%M%SZ")
    )
}

/// The schedule and fire time of a [`record_branch`] name; `None` for any other branch.
pub fn parse_record_branch(branch: &str) -> Option<(String, DateTime<Utc>)> {
    let (name, stamp) = branch
        .strip_prefix("tkgops/schedule/")?
        .rsplit_once("/apply-")?;
    let fire = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    (!name.is_empty()).then(|| (name.to_string(), fire.and_utc()))
}

/// The hidden marker of the run comment of wave commit `commit` on the record pull request
/// (one comment per wave, apart from the pull request's plan comment).
pub fn wave_marker(commit: &str) -> String {
    format!("<!-- tkgops:scheduled-run:{commit} -->")
}

/// The hidden marker of the dashboard comment reporting a halt of `schedule`'s fire `fire`
/// (after `resumes` earlier resumes).
pub fn halt_marker(schedule: &str, fire: DateTime<Utc>, resumes: usize) -> String {
    format!(
        "<!-- tkgops:halt:{schedule}/{}/{resumes} -->",
        fire.format("%Y%m%dT%H%M%SZ")
    )
}

/// The run id of `cluster`'s upgrade at wave commit `commit` (as merge runs are named).
fn run_id(cluster: &str, commit: &str) -> String {
    format!(
        "{cluster}@{}#{UPGRADE_WORKFLOW}",
        &commit[..commit.len().min(12)]
    )
}

/// The target of an upgrade plan's `kube.upgrade-cluster` step.
fn upgrade_target(steps: &[tkgops_domain::step::StepSpec]) -> Option<WorkloadTarget> {
    steps.iter().find_map(|s| match &s.inputs {
        StepInputs::KubeUpgradeCluster(i) => Some(i.target.clone()),
        _ => None,
    })
}

/// What starting one cluster of a wave came to ([`Waves::start_cluster`]).
enum Start {
    /// A new run to submit.
    Submit(Box<RunRequest>),
    /// Its failed run, to retry.
    Retry(String),
    /// Its run is already under way.
    Running,
    /// Refused its start (recorded in the progress); `stop` ends the wave's starts for now.
    Refused { stop: bool },
    /// Its baseline health read failed transiently (a 5xx, a timeout, a 410 Gone): nothing is
    /// recorded, the wave's starts end for now and the next poll tries again inside the window.
    Later,
}

/// Why cluster `name` of `plan` has no executable upgrade: its plan's errors, its status, or
/// that the bump changed nothing to plan.
fn not_upgradable(plan: &Plan, name: &str) -> String {
    plan.clusters
        .iter()
        .find(|cp| cp.cluster == name)
        .map(|cp| {
            let errors: Vec<String> = cp
                .findings
                .iter()
                .filter(|f| f.severity == tkgops_domain::request::Severity::Error)
                .map(|f| format!("{} {}", f.rule, f.message))
                .collect();
            if errors.is_empty() {
                format!("its plan is {:?}, not an executable upgrade", cp.status)
            } else {
                format!("its plan is blocked: {}", errors.join("; "))
            }
        })
        .unwrap_or_else(|| "the bump changes nothing to plan".into())
}

/// One line saying where a fire is, for the dashboard's result column.
pub fn apply_summary(s: &Schedule, p: &ApplyProgress) -> String {
    let total: usize = p.waves.iter().map(|w| w.clusters.len()).sum();
    let done = p.upgraded().len();
    if let Some(h) = &p.halt {
        return format!(
            "⛔ halted in wave `{}`: {} ({done}/{total} upgraded)",
            h.wave, h.reason
        );
    }
    match p.current() {
        None => format!(
            "{done}/{total} cluster(s) upgraded in {} wave(s)",
            p.waves.len()
        ),
        Some(i) => {
            let w = &p.waves[i];
            let what = match w.state {
                WaveState::Soaking => format!(
                    "soaking until {}",
                    w.soak_until.map(|t| local(s, t)).unwrap_or_default()
                ),
                WaveState::Pending => "waiting to start".into(),
                _ => "upgrading".into(),
            };
            format!(
                "applying: wave `{}` {what} ({done}/{total} upgraded)",
                w.name
            )
        }
    }
}

on_context!(
    /// The scheduled applies' operations on the bot's [`crate::context::Context`] (`cx.waves()`): starting a fire,
    /// advancing it wave by wave, reporting and resuming its halts.
    Waves
);

impl Waves<'_> {
    /// The plan of the wave commit `commit` (its `tkr` bumps on top of `parent`) under the
    /// policy of commit `settings`: like every plan, but without the `plan.maxClusters` cap
    /// ([`tkgops_domain::workflow::plan_unbounded`]). The commit is tkgops's own, for a
    /// schedule of the trusted policy, and posts no comment per cluster; a wave of a fleet
    /// bumps hundreds of clusters at once.
    ///
    /// Errors: [`BotError::Git`] when a commit cannot be read, [`BotError::Store`].
    async fn wave_plan(
        &self,
        parent: String,
        commit: String,
        settings: &PolicySha,
    ) -> Result<tkgops_domain::workflow::Plan, BotError> {
        let history = crate::reconcile::publish::rollout_history(&self.journal).await?;
        let settings = settings.to_string();
        let (git, catalog) = (self.git.clone(), self.catalog.clone());
        let (executable, repository) =
            (crate::executors::executable_kinds(), self.full_name.clone());
        blocking(move || {
            let changed = git.changed_paths(&parent, &commit)?;
            let (bt, ht, st) = (git.tree(&parent)?, git.tree(&commit)?, git.tree(&settings)?);
            Ok(tkgops_domain::workflow::plan_unbounded(
                &tkgops_domain::workflow::PlanInput {
                    base: &bt,
                    head: &ht,
                    settings: &st,
                    base_sha: &parent,
                    head_sha: &commit,
                    changed_paths: &changed,
                    catalog: &catalog,
                    executable: &executable,
                    repository: &repository,
                    history,
                },
            ))
        })
        .await
    }

    /// Writes `rec` with progress `p` (the record keeps `apply` empty while `p` is worked on).
    async fn persist_progress(&self, rec: &FireRecord, p: &ApplyProgress) -> Result<(), BotError> {
        self.put_fire(FireRecord {
            apply: Some(p.clone()),
            ..rec.clone()
        })
        .await
    }

    /// The record of a new `apply` fire of `s` at `fire`: the waves of the fleet at `tip`,
    /// frozen (`Applying`), or `Applied` at once when nothing needs an upgrade.
    pub(crate) fn start_apply(
        &self,
        s: &Schedule,
        fire: DateTime<Utc>,
        tip: &str,
        fleet: &[FleetCluster],
        now: DateTime<Utc>,
    ) -> FireRecord {
        let plan = plan_waves(s, fleet);
        let progress = ApplyProgress::new(tip, &plan);
        let n: usize = plan.waves.iter().map(|w| w.bumps.len()).sum();
        let (state, detail) = if n == 0 {
            (
                FireState::Applied,
                "nothing to apply: every selected cluster runs the target TKR".to_string(),
            )
        } else {
            (FireState::Applying, apply_summary(s, &progress))
        };
        info!(schedule = %s.name, fire = %fire, clusters = n, waves = plan.waves.len(), "apply fire planned");
        FireRecord {
            apply: Some(progress),
            ..FireRecord::new(&s.name, fire, state, detail, now)
        }
    }

    /// Advances the `Applying` fire `rec` of `s` as far as it can go at `now` (see the module
    /// docs), persisting every transition; returns the record as persisted. `open` are the
    /// open pull requests (to find the record pull request after a restart).
    ///
    /// Errors: [`BotError`] when the journal, git or GitHub fail; the fire is picked up again
    /// at the next poll from its last persisted state.
    pub(crate) async fn advance_apply(
        &self,
        s: &Schedule,
        mut rec: FireRecord,
        open: &[PullRequest],
        now: DateTime<Utc>,
    ) -> Result<FireRecord, BotError> {
        let original = rec.clone();
        let Some(mut p) = rec.apply.take() else {
            rec.state = FireState::NotRun;
            rec.detail = "not run: the fire record has no apply progress".into();
            self.put_fire(rec.clone()).await?;
            return Ok(rec);
        };
        let before = p.clone();
        // Bounded: every iteration makes progress or stops.
        for _ in 0..16 {
            match p.next(s.window_open(rec.fire, now)) {
                Next::Halted => break,
                Next::Done => {
                    rec.state = FireState::Applied;
                    break;
                }
                Next::WindowClosed { left } => {
                    rec.state = FireState::Incomplete;
                    rec.detail = format!(
                        "the window closed with {} cluster(s) not upgraded ({}): left for a later fire; {} upgraded",
                        left.len(),
                        left.join(", "),
                        p.upgraded().len()
                    );
                    break;
                }
                Next::Start { wave, clusters } => {
                    self.start_clusters(s, &mut rec, &mut p, wave, &clusters, open, now)
                        .await?;
                }
                Next::Watch { wave } => {
                    if !self.watch_runs(&mut p, wave, now).await? {
                        break;
                    }
                }
                Next::Soak { wave } => {
                    self.soak(&mut p, wave, now).await;
                    if p.waves[wave].state == WaveState::Soaking {
                        break;
                    }
                }
            }
        }
        if rec.state != FireState::Incomplete {
            rec.detail = apply_summary(s, &p);
        }
        if let Some(h) = p.halt.as_ref().filter(|_| before.halt.is_none()) {
            warn!(schedule = %s.name, fire = %rec.fire, wave = %h.wave, reason = %h.reason, "scheduled apply halted");
            self.metrics.wave_halted();
        }
        rec.apply = Some(p);
        if rec == original {
            // Nothing moved (a soak not over yet, runs in flight): no write.
            return Ok(rec);
        }
        rec.updated_at = now;
        self.put_fire(rec.clone()).await?;
        Ok(rec)
    }

    /// Starts clusters `clusters` of wave `w`: the wave commit and the record pull request
    /// first, then each cluster's baseline health and run (or the retry of its failed run).
    #[allow(clippy::too_many_arguments)]
    async fn start_clusters(
        &self,
        s: &Schedule,
        rec: &mut FireRecord,
        p: &mut ApplyProgress,
        w: usize,
        clusters: &[usize],
        open: &[PullRequest],
        now: DateTime<Utc>,
    ) -> Result<(), BotError> {
        let parent = match w {
            0 => p.base.clone(),
            _ => p.waves[w - 1]
                .commit
                .clone()
                .unwrap_or_else(|| p.base.clone()),
        };
        let branch = record_branch(&s.name, rec.fire);
        // 1. The wave commit (deterministic), pushed to the record branch.
        let commit = match p.waves[w].commit.clone() {
            Some(c) => c,
            None => self.wave_commit(s, rec, p, w, &parent, now).await?,
        };
        let git = self.git.clone();
        let (c2, b2) = (commit.clone(), branch.clone());
        blocking(move || git.push_branch(&c2, &b2)).await?;
        // 2. The record pull request.
        if p.pull.is_none() {
            p.pull = Some(self.record_pull(s, rec, p, &branch, open).await?);
        }
        self.persist_progress(rec, p).await?;
        if p.halt.is_some() {
            return Ok(());
        }
        // 3. The plan of the wave commit, under the trusted policy (once per wave).
        let plan = self.wave_plan_once(&parent, &commit).await?;
        // 4. Each cluster's baseline health, then its run.
        let mut submit = Vec::new();
        let mut retried = Vec::new();
        for &c in clusters {
            if p.halt.is_some() {
                break;
            }
            match self.start_cluster(p, w, c, &plan, &commit, now).await? {
                Start::Submit(req) => submit.push(*req),
                Start::Retry(id) => retried.push(id),
                Start::Running => {}
                Start::Later => break,
                Start::Refused { stop } => {
                    if stop {
                        break;
                    }
                }
            }
        }
        // Persisted before any run is submitted or retried.
        self.persist_progress(rec, p).await?;
        let commit = MergeSha::new(commit);
        if !submit.is_empty() || !retried.is_empty() {
            self.record_wave_runs(s, rec, p, w, &commit, &submit)
                .await?;
        }
        self.submit_wave(p, w, retried, submit, now).await?;
        self.publisher.notify(&commit);
        Ok(())
    }

    /// Makes the commit of wave `w` on top of `parent`: each cluster's `tkr` line bumped
    /// (a cluster whose line cannot be bumped is refused its start); records it in `p` and
    /// returns its SHA. Nothing is pushed.
    ///
    /// Errors: [`BotError::Git`] when `parent` cannot be read or the commit written.
    async fn wave_commit(
        &self,
        s: &Schedule,
        rec: &FireRecord,
        p: &mut ApplyProgress,
        w: usize,
        parent: &str,
        now: DateTime<Utc>,
    ) -> Result<String, BotError> {
        let bumps: Vec<(String, String)> = p.waves[w]
            .clusters
            .iter()
            .map(|c| (c.cluster.clone(), c.to.clone()))
            .collect();
        let message = format!(
            "Scheduled upgrade {}, wave {}: {} cluster(s)\n\nApplied by tkgops for the fire of {}.\n",
            s.name,
            p.waves[w].name,
            bumps.len(),
            local(s, rec.fire)
        );
        let git = self.git.clone();
        let (par, when) = (parent.to_string(), rec.fire.timestamp());
        let (made, failed) = blocking(move || {
            use tkgops_domain::files::TreeReader;
            let tree = git.tree(&par)?;
            let mut files = Vec::new();
            let mut failed = Vec::new();
            for (cluster, to) in &bumps {
                let path = format!("clusters/{cluster}/tkgops.yaml");
                let text = tree
                    .read(&path)
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                match bump_tkr_line(&text, to) {
                    Ok(new) => files.push((path, new.into_bytes())),
                    Err(e) => failed.push((cluster.clone(), e.to_string())),
                }
            }
            let commit = git.commit_files_at(&par, &files, &message, BUMP_AUTHOR, Some(when))?;
            Ok((commit, failed))
        })
        .await?;
        for (cluster, why) in failed {
            if let Some(c) = p.waves[w]
                .clusters
                .iter()
                .position(|c| c.cluster == cluster)
            {
                p.refuse_start(w, c, format!("its `tkr` line cannot be bumped: {why}"), now);
            }
        }
        p.waves[w].commit = Some(made.clone());
        Ok(made)
    }

    /// The plan of the wave commit `parent..commit` under the trusted policy, planned once and
    /// remembered ([`Waves::wave_plan`]): a wave of hundreds of clusters starts a few at a time.
    ///
    /// Errors: as [`Waves::wave_plan`], and [`BotError::Store`] when no trusted policy is known.
    async fn wave_plan_once(&self, parent: &str, commit: &str) -> Result<Arc<Plan>, BotError> {
        let policy = self.trust().policy_commit().await?;
        let key = format!("{parent}..{commit}@{policy}");
        if let Some(plan) = self.wave_plan.get(&key) {
            return Ok(plan);
        }
        let plan = Arc::new(
            self.wave_plan(parent.to_string(), commit.to_string(), &policy)
                .await?,
        );
        self.wave_plan.put(key, plan.clone());
        Ok(plan)
    }

    /// Starts cluster `c` of wave `w` from `plan` (the wave commit `commit`'s): its run is
    /// already known (running, or failed and to be retried), or its baseline health is read
    /// and its run request made; a cluster with no executable upgrade or an unhealthy one is
    /// refused its start (recorded in `p`).
    ///
    /// Errors: [`BotError::Engine`] when the engine cannot be read.
    async fn start_cluster(
        &self,
        p: &mut ApplyProgress,
        w: usize,
        c: usize,
        plan: &Plan,
        commit: &str,
        now: DateTime<Utc>,
    ) -> Result<Start, BotError> {
        let name = p.waves[w].clusters[c].cluster.clone();
        let Some(cp) = plan
            .executable()
            .find(|cp| cp.cluster == name && cp.workflow.as_deref() == Some(UPGRADE_WORKFLOW))
        else {
            p.refuse_start(w, c, not_upgradable(plan, &name), now);
            return Ok(Start::Refused { stop: true });
        };
        let id = run_id(&name, commit);
        let known = self
            .engine
            .get(&id)
            .await
            .map_err(|e| BotError::Engine(e.to_string()))?;
        if let Some(r) = known {
            let base = p.waves[w].clusters[c].baseline.clone().unwrap_or_default();
            p.started(w, c, &id, base);
            return Ok(match r.state {
                RunState::Failed | RunState::Cancelled => Start::Retry(id),
                _ => Start::Running,
            });
        }
        let target = upgrade_target(&cp.steps);
        let baseline = match &target {
            None => Err("its upgrade plan names no cluster to probe".to_string()),
            Some(t) => match self.executors.cluster_health(t).await {
                // A transient failure says nothing of the cluster's health: read it again at
                // the next poll rather than halt the fire (found by the chaos harness).
                Err(e) if e.is_transient() => {
                    warn!(cluster = %name, error = %e, "baseline health read failed; retrying at the next poll");
                    return Ok(Start::Later);
                }
                r => r.map_err(|e| e.to_string()),
            },
        };
        let health = match baseline {
            Err(e) => {
                let why = format!("its health could not be read before the upgrade: {e}");
                p.refuse_start(w, c, why, now);
                return Ok(Start::Refused { stop: false });
            }
            Ok(h) => h,
        };
        if let Some(problem) = health.problem() {
            let why = format!("unhealthy before its upgrade: {problem}");
            p.refuse_start(w, c, why, now);
            return Ok(Start::Refused { stop: false });
        }
        p.waves[w].clusters[c].target = target;
        p.started(w, c, &id, health);
        Ok(Start::Submit(Box::new(RunRequest {
            id,
            cluster: name,
            workflow: UPGRADE_WORKFLOW.into(),
            commit_sha: commit.to_string(),
            origin: p.pull.map(pr_origin),
            steps: cp.steps.clone(),
        })))
    }

    /// Adds the runs of `submit` to the merge record of the wave commit `commit` (created on
    /// the wave's first start), so its run comment lists them.
    ///
    /// Errors: [`BotError::Store`] when the journal cannot be read or written.
    async fn record_wave_runs(
        &self,
        s: &Schedule,
        rec: &FireRecord,
        p: &ApplyProgress,
        w: usize,
        commit: &MergeSha,
        submit: &[RunRequest],
    ) -> Result<(), BotError> {
        let mut record = match self.journal.merge_record(commit).await? {
            Some(r) => r,
            None => MergeRecord {
                pr: p.pull.unwrap_or_default(),
                commit: commit.clone(),
                run_ids: Vec::new(),
                not_run: Vec::new(),
                plan_markdown: format!(
                    "Wave `{}` of the scheduled upgrade `{}` (fire {}): {} cluster(s) upgraded to the TKR of this commit. The plan comment of this pull request shows each upgrade.",
                    p.waves[w].name,
                    s.name,
                    local(s, rec.fire),
                    p.waves[w].clusters.len()
                ),
                refused: None,
                changed_since_approval: Vec::new(),
                marker: Some(wave_marker(commit.as_str())),
                notes: Vec::new(),
            },
        };
        for r in submit {
            if !record.run_ids.contains(&r.id) {
                record.run_ids.push(r.id.clone());
            }
        }
        Ok(self.journal.put_merge_record(&record).await?)
    }

    /// Retries the failed runs `retried` (a run that cannot be retried refuses its cluster's
    /// start) and submits `submit` to the engine, each cluster's last run journalled first.
    ///
    /// Errors: [`BotError::Store`], [`BotError::Engine`] when a submission fails.
    async fn submit_wave(
        &self,
        p: &mut ApplyProgress,
        w: usize,
        retried: Vec<String>,
        submit: Vec<RunRequest>,
        now: DateTime<Utc>,
    ) -> Result<(), BotError> {
        for id in retried {
            let note = "retried: its scheduled apply was resumed on the fleet dashboard issue";
            if let Err(e) = self.engine.retry(&id, note).await {
                warn!(run = %id, error = %e, "retrying a scheduled upgrade failed");
                if let Some(c) = p.waves[w]
                    .clusters
                    .iter()
                    .position(|c| c.run.as_deref() == Some(id.as_str()))
                {
                    p.refuse_start(w, c, format!("its failed run cannot be retried: {e}"), now);
                }
            }
        }
        for req in submit {
            self.journal.set_last_run(&req.cluster, &req.id).await?;
            self.engine
                .submit(req)
                .await
                .map_err(|e| BotError::Engine(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether pull request `pr` is the record pull request of a scheduled apply whose head is
    /// a wave commit the bot pushed itself (recorded in the fire's progress, from this
    /// repository, not a fork). Returns `(schedule, fire)`. Such a head is not planned again: its
    /// upgrades already ran wave by wave, and a plan of a whole fleet would cost one details
    /// comment per cluster. Any other head of the branch (a commit someone pushed) is planned
    /// and runs on merge like every pull request.
    ///
    /// Errors: [`BotError::Store`] when the journal cannot be read.
    pub(crate) async fn applied_record(
        &self,
        pr: &PullRequest,
    ) -> Result<Option<(String, DateTime<Utc>)>, BotError> {
        let Some((schedule, fire)) = parse_record_branch(&pr.head_ref) else {
            return Ok(None);
        };
        if self.is_fork(pr) {
            return Ok(None);
        }
        // A record that does not decode is not one the bot can vouch for.
        let pushed = self
            .journal
            .fire(&schedule, fire)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.apply)
            .is_some_and(|p| {
                p.waves
                    .iter()
                    .any(|w| w.commit.as_deref() == Some(pr.head_sha.as_str()))
            });
        Ok(pushed.then_some((schedule, fire)))
    }

    /// The record pull request of the fire: the open one from `branch`, else a new one.
    async fn record_pull(
        &self,
        s: &Schedule,
        rec: &FireRecord,
        p: &ApplyProgress,
        branch: &str,
        open: &[PullRequest],
    ) -> Result<u64, BotError> {
        if let Some(pr) = open.iter().find(|pr| pr.head_ref == branch) {
            return Ok(pr.number);
        }
        let rows: Vec<String> = p
            .waves
            .iter()
            .flat_map(|w| {
                w.clusters.iter().map(move |c| {
                    format!(
                        "| {} | `{}` | `{}` | `{}` |",
                        w.name, c.cluster, c.from, c.to
                    )
                })
            })
            .collect();
        let title = format!(
            "Record scheduled upgrade {} of {}",
            s.name,
            local(s, rec.fire)
        );
        // A pull request body holds at most 65,536 characters: a fleet is listed per wave.
        let table = if rows.len() <= RECORD_BODY_ROWS {
            format!(
                "| Wave | Cluster | From | To |\n|---|---|---|---|\n{}",
                rows.join("\n")
            )
        } else {
            let waves: Vec<String> = p
                .waves
                .iter()
                .map(|w| format!("| {} | {} |", w.name, w.clusters.len()))
                .collect();
            format!(
                "| Wave | Clusters |\n|---|---|\n{}\n\nThe fleet dashboard issue lists every cluster.",
                waves.join("\n")
            )
        };
        let body = format!(
            "tkgops is upgrading these clusters under the `action: apply` schedule **{}** (fire {}), wave by wave. Each wave's `tkr` bumps are a commit on this branch, added when the wave starts; the step tables of its runs follow below.\n\n{table}\n\nMerge this pull request once the waves are done, so the default branch says what the clusters run: merging it changes no cluster (its commits were applied by the schedule). Progress and halts are on the fleet dashboard issue.\n",
            s.name,
            local(s, rec.fire),
        );
        match self
            .github
            .create_pull(&title, branch, &self.default_branch, &body)
            .await
        {
            Ok(n) => {
                info!(schedule = %s.name, pr = n, branch = %branch, "record pull request opened");
                Ok(n)
            }
            // Opened by an earlier attempt that stopped before recording it.
            Err(e) => {
                let open = self
                    .github
                    .list_open_pulls(&self.default_branch)
                    .await
                    .map_err(|e| BotError::GitHub(e.to_string()))?;
                open.iter()
                    .find(|pr| pr.head_ref == branch)
                    .map(|pr| pr.number)
                    .ok_or_else(|| BotError::GitHub(e.to_string()))
            }
        }
    }

    /// Reads the runs of wave `w` in flight; returns whether any finished (or was lost).
    async fn watch_runs(
        &self,
        p: &mut ApplyProgress,
        w: usize,
        now: DateTime<Utc>,
    ) -> Result<bool, BotError> {
        let mut changed = false;
        for c in 0..p.waves[w].clusters.len() {
            let cp = &p.waves[w].clusters[c];
            if cp.stage != ClusterStage::Running {
                continue;
            }
            let Some(id) = cp.run.clone() else { continue };
            match self
                .engine
                .get(&id)
                .await
                .map_err(|e| BotError::Engine(e.to_string()))?
            {
                // Recorded as started but never submitted (a restart in between): start again.
                None => {
                    p.waves[w].clusters[c].stage = ClusterStage::Pending;
                    changed = true;
                }
                Some(r) if r.state == RunState::Succeeded => {
                    p.run_finished(w, c, Ok(()), now);
                    changed = true;
                }
                Some(r) if r.state.is_terminal() => {
                    let why = r
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("run {id} {:?}", r.state));
                    p.run_finished(w, c, Err(why), now);
                    changed = true;
                }
                Some(_) => {}
            }
        }
        Ok(changed)
    }

    /// One soak round of wave `w`: every cluster's health against its baseline; the wave
    /// succeeds when all are healthy and the soak time is over. A health that cannot be read
    /// for a permanent reason counts as a regression (fail closed); a transient read failure
    /// (a 5xx, a timeout, a 410 Gone) says nothing of the cluster, so the round ends without
    /// a verdict and the soak cannot complete until a later round reads every cluster.
    async fn soak(&self, p: &mut ApplyProgress, w: usize, now: DateTime<Utc>) {
        let targets: Vec<Option<WorkloadTarget>> = p.waves[w]
            .clusters
            .iter()
            .map(|c| c.target.clone())
            .collect();
        // Probed PROBE_CONCURRENCY at a time, judged in wave order.
        let mut unread = false;
        for (chunk_no, chunk) in targets.chunks(PROBE_CONCURRENCY).enumerate() {
            let mut probes = tokio::task::JoinSet::new();
            for (i, t) in chunk.iter().enumerate() {
                let (executors, t) = (self.executors.clone(), t.clone());
                probes.spawn(async move {
                    let h = match t {
                        None => Some(ClusterHealth {
                            not_ready: Some("no cluster to probe is recorded".into()),
                            ..Default::default()
                        }),
                        Some(t) => match executors.cluster_health(&t).await {
                            Ok(h) => Some(h),
                            Err(e) if e.is_transient() => {
                                warn!(error = %e, "a soak health read failed transiently; read again at the next round");
                                None
                            }
                            Err(e) => Some(ClusterHealth {
                                not_ready: Some(format!("its health could not be read: {e}")),
                                ..Default::default()
                            }),
                        },
                    };
                    (i, h)
                });
            }
            let mut seen: Vec<(usize, Option<ClusterHealth>)> = Vec::new();
            while let Some(r) = probes.join_next().await {
                match r {
                    Ok(x) => seen.push(x),
                    // A probe task that panicked: judged unhealthy (fail closed).
                    Err(e) => warn!(error = %e, "a health probe failed"),
                }
            }
            seen.sort_by_key(|(i, _)| *i);
            if seen.len() < chunk.len() {
                let c = chunk_no * PROBE_CONCURRENCY;
                let h = ClusterHealth {
                    not_ready: Some("its health probe failed".into()),
                    ..Default::default()
                };
                p.observed(w, c, &h, now);
                return;
            }
            for (i, h) in seen {
                let Some(h) = h else {
                    unread = true;
                    continue;
                };
                if p.observed(w, chunk_no * PROBE_CONCURRENCY + i, &h, now)
                    .is_some()
                {
                    return;
                }
            }
        }
        if !unread {
            p.soak_done(w, now);
        }
    }

    /// Reports every halted fire of `schedules` once (per halt) in a comment on the dashboard
    /// issue `issue`, with the command that resumes it.
    ///
    /// Errors: [`BotError`] when the journal or GitHub fail (retried at the next poll).
    pub(crate) async fn report_halts(
        &self,
        schedules: &[Schedule],
        issue: u64,
    ) -> Result<(), BotError> {
        for s in schedules {
            for rec in self.journal.fires(&s.name).await? {
                let Some(p) = rec
                    .apply
                    .as_ref()
                    .filter(|_| rec.state == FireState::Applying)
                else {
                    continue;
                };
                let Some(h) = &p.halt else { continue };
                if self
                    .journal
                    .halt_reported(&s.name, rec.fire, p.resumes.len())
                    .await?
                {
                    continue;
                }
                let marker = halt_marker(&s.name, rec.fire, p.resumes.len());
                let pr = p
                    .pull
                    .map(|n| format!(" (record pull request #{n})"))
                    .unwrap_or_default();
                let body = format!(
                    "{marker}\n⛔ **Scheduled upgrade `{}` halted** in wave `{}` (fire {}){pr}:\n\n{}\n\nThe remaining waves wait. When the cause is fixed, an approver comments `/tkgops resume {}` on this issue: failed runs are retried from their failed step and the wave soaks again.\n",
                    s.name,
                    h.wave,
                    local(s, rec.fire),
                    h.reason,
                    s.name
                );
                self.github
                    .upsert_comment(issue, &marker, &body)
                    .await
                    .map_err(|e| BotError::GitHub(e.to_string()))?;
                self.journal
                    .set_halt_reported(&s.name, rec.fire, p.resumes.len())
                    .await?;
            }
        }
        Ok(())
    }

    /// `/tkgops resume [schedule]` by `who` at `now`: lifts the halt of every halted fire (of
    /// `schedule` when given; `schedules` are the policy's); returns one line per fire resumed (empty when none was halted).
    ///
    /// Errors: [`BotError::Store`] when the journal fails.
    pub(crate) async fn resume_applies(
        &self,
        schedules: &[Schedule],
        schedule: Option<&str>,
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, BotError> {
        let mut out = Vec::new();
        for mut rec in self.journal.all_fires().await? {
            if rec.state != FireState::Applying || schedule.is_some_and(|s| s != rec.schedule) {
                continue;
            }
            let Some(p) = rec.apply.as_mut() else {
                continue;
            };
            let Some(h) = p.resume(who, now) else {
                continue;
            };
            if let Some(s) = schedules.iter().find(|s| s.name == rec.schedule) {
                rec.detail = apply_summary(s, p);
            }
            rec.updated_at = now;
            out.push(format!(
                "`{}` (fire {}): wave `{}` continues (it halted because {})",
                rec.schedule,
                rec.fire.format("%Y-%m-%d %H:%M UTC"),
                h.wave,
                h.reason
            ));
            info!(schedule = %rec.schedule, fire = %rec.fire, by = %who, "scheduled apply resumed");
            self.put_fire(rec).await?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_record_branch_names_its_schedule_and_fire() {
        let fire = Utc.with_ymd_and_hms(2026, 12, 5, 1, 0, 0).unwrap();
        let branch = record_branch("weekly-apply", fire);
        assert_eq!(
            branch,
            "tkgops/schedule/weekly-apply/apply-20261205T010000Z"
        );
        assert_eq!(
            parse_record_branch(&branch),
            Some(("weekly-apply".to_string(), fire))
        );
        for other in [
            "tkgops/schedule/weekly/propose-20261205T010000Z",
            "tkgops/schedule//apply-20261205T010000Z",
            "tkgops/schedule/weekly/apply-2026",
            "feature/apply-20261205T010000Z",
        ] {
            assert_eq!(parse_record_branch(other), None, "{other}");
        }
    }
}

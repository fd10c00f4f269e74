//! The run engine: schedules runs (one at a time per cluster, FIFO by `seq`), drives each run's
//! steps through their state machines, persists every transition (flushed) before the side
//! effect it guards, retries with exponential backoff, and resumes after a crash.
//!
//! Durable writes on the happy path: one per step plus one per run. Each write happens before a
//! side effect starts: "step N succeeded (+ output)" and "step N+1 running, attempt 1 started"
//! are one write, made before step N+1's executor is called; the last step's success and the
//! run's `Succeeded` are one write. The run's `Queued → Running` is folded into step 1's start,
//! and a run submitted to a free cluster is written by its submission already started (the
//! submission is step 1's start write): a 5-step run is 6 writes.
//! If the engine stops between steps, the pending success is written before stopping.
//!
//! A write on the happy path carries only what changed ([`Store::put_run_steps`]): the one or
//! two steps it concerns, and the run's own fields when they changed (its start, its end), not
//! the whole run. Rare transitions (a failure, a cancellation, a retry, a re-plan) write the
//! whole run ([`Store::put_run`]).

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::fsm::{run_transition, step_transition, InvalidTransition, RunEvent, StepEvent};
use crate::step::{ProgressSink, RetryPolicy, StepContext, StepError, StepExecutor, StepSpec};
use crate::store::{
    truncate_error, AttemptRecord, RunRecord, RunState, StepRecord, StepState, Store, StoreError,
    MAX_INTERRUPTED_ATTEMPTS, OUTCOME_INTERRUPTED, OUTCOME_PERMANENT, OUTCOME_SHUTDOWN,
    OUTCOME_SUCCEEDED, OUTCOME_TIMEOUT, OUTCOME_TRANSIENT,
};

/// What to run: a rendered plan pinned to a commit.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRequest {
    /// Deterministic run id chosen by the caller (e.g. from PR number, merge SHA and cluster);
    /// submitting the same id twice yields one run.
    pub id: String,
    /// Workload cluster; runs of one cluster execute one at a time, in submission order.
    pub cluster: String,
    /// Workflow name.
    pub workflow: String,
    /// The commit the run is pinned to.
    pub commit_sha: String,
    /// What caused the run, as opaque text (e.g. `github:pr/12`); indexed by the store, never
    /// interpreted by the engine. Must not contain NUL.
    pub origin: Option<String>,
    /// The rendered steps, in order.
    pub steps: Vec<StepSpec>,
}

/// Told about every persisted transition of every run, and about progress lines.
#[async_trait]
pub trait RunObserver: Send + Sync {
    /// Called after each transition of `run` was persisted (with `progress` = the latest progress
    /// line of the running step, if any), and on each new progress line of a running step (with
    /// the run as last persisted). Must return quickly: the run waits for it.
    async fn run_changed(&self, run: &RunRecord, progress: Option<&str>);
}

/// A [`RunObserver`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

#[async_trait]
impl RunObserver for NoopObserver {
    async fn run_changed(&self, _run: &RunRecord, _progress: Option<&str>) {}
}

/// What a [`StartGate`] decides for a run whose turn came after it waited behind another run
/// of its cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum GateDecision {
    /// Start the run as submitted.
    Start,
    /// Start the run with these steps instead (the steps it had were planned against a cluster
    /// state that no longer holds). `workflow` replaces the run's workflow name; `note` is
    /// shown to people watching the run ([`RunRecord::note`]). Persisted before the first step.
    Replace {
        /// The workflow the new steps come from.
        workflow: String,
        /// The new steps, in order (all `Pending`).
        steps: Vec<StepSpec>,
        /// Why, for people.
        note: String,
    },
    /// Do not run it: nothing is left to do, or the change is no longer valid (the reason is
    /// the run's error). The run ends `Cancelled`.
    Cancel(String),
    /// Re-planning failed (e.g. the repository could not be read): the run ends `Failed` with
    /// this reason on its first step, and can be retried ([`Engine::retry`]).
    Fail(String),
}

/// Consulted once before a run that waited behind another run of its cluster starts (also after
/// a restart), so that it can be re-planned against the cluster's state as the runs ahead of it
/// left it (issue 8 item 7). Not consulted for a run that found its cluster free.
#[async_trait]
pub trait StartGate: Send + Sync {
    /// The decision for `run` (state `Queued`, as persisted), which was queued behind run
    /// `waited_behind`. Must not fail: errors are [`GateDecision::Fail`].
    async fn before_start(&self, run: &RunRecord, waited_behind: &str) -> GateDecision;
}

/// What [`Engine::cancel`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The run was queued and is now `Cancelled`; none of its steps ran.
    Cancelled,
    /// The run is running: it stops before its next step starts (the request is durable, so a
    /// restart honours it too). A step in progress finishes first.
    AtNextStep,
    /// The run had already finished in this state; nothing changed.
    AlreadyFinished(RunState),
}

/// Journal key prefix of durable cancellation requests of running runs: `cancel/<run id>` →
/// the reason (UTF-8). Removed when the run ends.
pub const CANCEL_PREFIX: &str = "cancel/";

/// Errors of the [`Engine`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A persisted record is in a state the transition tables do not allow to continue from.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    /// No run with this id exists.
    #[error("run {0} not found")]
    NotFound(String),
    /// The request is malformed (empty id or cluster, NUL in the id or the origin, duplicate step ids).
    #[error("invalid run request: {0}")]
    InvalidRequest(String),
    /// [`Engine::shutdown`] was called; no new work is accepted.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// [`Engine::retry`] of a run that is not `Failed`.
    #[error("run {id} is {state:?}: only a failed run can be retried")]
    NotRetryable {
        /// The run id.
        id: String,
        /// Its state.
        state: RunState,
    },
    /// The run stopped in this process without reaching a terminal state (shutdown, or a store
    /// failure while persisting); it resumes on the next [`Engine::resume_all`].
    #[error("run {id} stopped before finishing: {reason}")]
    Stopped {
        /// The run id.
        id: String,
        /// Why it stopped.
        reason: String,
    },
}

/// Number of shards of the per-id submit lock.
const SUBMIT_LOCK_SHARDS: usize = 64;

/// What a waiter sees.
#[derive(Clone, Debug)]
enum WaitState {
    Pending,
    Done(Box<RunRecord>),
    Stopped(String),
}

/// A run scheduled in this process and not finished.
struct Live {
    cluster: String,
    seq: u64,
    progress: Option<String>,
    /// The run that was ahead of this one when it was queued (the cluster was busy).
    waited_behind: Option<String>,
    /// A cancellation requested while it runs: honoured at the next step boundary.
    cancel: Option<String>,
}

/// Per-cluster mutual exclusion and FIFO queue.
#[derive(Default)]
struct ClusterSlot {
    running: Option<String>,
    queue: BTreeMap<u64, String>,
}

#[derive(Default)]
struct Sched {
    clusters: HashMap<String, ClusterSlot>,
    live: HashMap<String, Live>,
    waiters: HashMap<String, watch::Sender<WaitState>>,
    tasks: HashMap<String, JoinHandle<()>>,
    shutting_down: bool,
}

struct Inner {
    store: Arc<dyn Store>,
    executor: Arc<dyn StepExecutor>,
    observer: Arc<dyn RunObserver>,
    gate: Mutex<Option<Arc<dyn StartGate>>>,
    sched: Mutex<Sched>,
    shutdown: watch::Sender<bool>,
    /// Serialize the check-then-create of `submit` per id (sharded by hash) so that concurrent
    /// submits of one id create one run, while different ids proceed in parallel.
    submit_locks: Vec<tokio::sync::Mutex<()>>,
}

/// The durable step engine. Cheap to clone (an `Arc` inside); clones share all state.
///
/// Must be used inside a tokio runtime. Call [`Engine::resume_all`] once at start, before
/// submitting new runs, so that interrupted runs keep their place in their cluster's queue.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// What one drive of a run has changed in memory and not written yet: each is folded into
/// the drive's next write.
struct Unwritten {
    /// The run's own transition (`Start` or `Resume`), until the drive's first write.
    run_event: Option<RunEvent>,
    /// The index of a step whose success is not written yet.
    success: Option<usize>,
}

/// How one step ended within one drive of a run.
enum StepEnd {
    Succeeded,
    Failed,
    Stopped,
}

/// Delay before retry number `retry` (0 = before the second attempt): `initial_backoff_secs`
/// doubled per retry, capped at `max_backoff_secs`, no jitter. Computed with backon's
/// [`ExponentialBuilder`]. Non-finite or negative settings count as 0.
pub fn backoff_delay(policy: &RetryPolicy, retry: u32) -> Duration {
    fn secs(x: f64) -> Duration {
        if x.is_finite() && x > 0.0 {
            Duration::from_secs_f64(x.min(1.0e9))
        } else {
            Duration::ZERO
        }
    }
    let max = secs(policy.max_backoff_secs);
    let initial = secs(policy.initial_backoff_secs).min(max);
    ExponentialBuilder::new()
        .with_min_delay(initial)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(retry as usize)
        .unwrap_or(max)
        .min(max)
}

impl Engine {
    /// An engine persisting through `store`, executing every step with `executor` (the bot's
    /// executor table, which routes each kind to its provider), and reporting to `observer`.
    /// Schedules nothing until [`Engine::submit`] or [`Engine::resume_all`].
    pub fn new(
        store: Arc<dyn Store>,
        executor: Arc<dyn StepExecutor>,
        observer: Arc<dyn RunObserver>,
    ) -> Self {
        let (shutdown, _) = watch::channel(false);
        Engine {
            inner: Arc::new(Inner {
                store,
                executor,
                observer,
                gate: Mutex::new(None),
                sched: Mutex::new(Sched::default()),
                shutdown,
                submit_locks: (0..SUBMIT_LOCK_SHARDS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        }
    }

    /// Submits a run. Idempotent by `req.id`: if a run with this id exists it is returned
    /// unchanged (and scheduled if it is non-terminal and not yet scheduled here); otherwise it is
    /// persisted with a new `seq` (flushed), scheduled, and returned as persisted: `Queued` when
    /// its cluster is busy, else `Running` with the first attempt of its first step begun (the
    /// submission is that step's start write, durable before its executor is called).
    ///
    /// Errors: [`EngineError::InvalidRequest`], [`EngineError::ShuttingDown`],
    /// [`EngineError::Store`].
    pub async fn submit(&self, req: RunRequest) -> Result<RunRecord, EngineError> {
        if self.inner.lock().shutting_down {
            return Err(EngineError::ShuttingDown);
        }
        validate(&req)?;
        let shard = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            req.id.hash(&mut h);
            (h.finish() % SUBMIT_LOCK_SHARDS as u64) as usize
        };
        let _creating = self.inner.submit_locks[shard].lock().await;
        if let Some(existing) = self.inner.store.get_run(&req.id).await? {
            if !existing.state.is_terminal() {
                self.inner.enqueue(vec![existing.clone()]);
            }
            return Ok(existing);
        }
        let seq = self.inner.store.next_seq().await?;
        let now = Utc::now();
        let mut run = RunRecord {
            id: req.id,
            cluster: req.cluster,
            workflow: req.workflow,
            commit_sha: req.commit_sha,
            origin: req.origin,
            state: RunState::Queued,
            seq,
            created_at: now,
            updated_at: now,
            finished_at: None,
            steps: req.steps.into_iter().map(StepRecord::pending).collect(),
            error: None,
            note: None,
        };
        // A run that finds its cluster free starts at once: its submission is also step 1's
        // start (one flush instead of two; no start gate applies to it).
        let started = !run.steps.is_empty() && self.inner.reserve_if_free(&run);
        if started {
            run.state = run_transition(run.state, RunEvent::Start)?;
            let step = &mut run.steps[0];
            step.state = step_transition(step.state, StepEvent::Start)?;
            begin_attempt(step, now);
        }
        if let Err(e) = self.inner.store.put_run(&run).await {
            if started {
                self.inner.release(&run.id);
            }
            return Err(e.into());
        }
        self.inner.observer.run_changed(&run, None).await;
        if started {
            self.inner.launch(run.clone()).await;
        } else {
            self.inner.enqueue(vec![run.clone()]);
        }
        Ok(run)
    }

    /// Schedules every non-terminal run found in the store (in `seq` order per cluster) that is
    /// not already scheduled in this engine, and returns how many were newly scheduled. Returns
    /// without waiting for any step: the runs execute in background tasks.
    ///
    /// Errors: [`EngineError::ShuttingDown`], [`EngineError::Store`].
    pub async fn resume_all(&self) -> Result<usize, EngineError> {
        if self.inner.lock().shutting_down {
            return Err(EngineError::ShuttingDown);
        }
        let runs = self.inner.store.list_active().await?;
        Ok(self.inner.enqueue(runs))
    }

    /// Waits until run `run_id` is terminal and returns its final record. A run that exists but
    /// is not scheduled yet is waited for until some call schedules it.
    ///
    /// Errors: [`EngineError::NotFound`]; [`EngineError::Stopped`] if the run stopped in this
    /// process without finishing (shutdown, store failure); [`EngineError::Store`].
    pub async fn wait(&self, run_id: &str) -> Result<RunRecord, EngineError> {
        let (mut rx, scheduled) = {
            let mut s = self.inner.lock();
            // A run scheduled here is not terminal yet: its end reaches this waiter, which is
            // registered under the same lock `finish` takes (no store read needed).
            let scheduled = s.live.contains_key(run_id);
            let rx = s
                .waiters
                .entry(run_id.to_string())
                .or_insert_with(|| watch::channel(WaitState::Pending).0)
                .subscribe();
            (rx, scheduled)
        };
        if !scheduled {
            match self.inner.store.get_run(run_id).await? {
                None => {
                    self.inner.drop_idle_waiter(run_id);
                    return Err(EngineError::NotFound(run_id.to_string()));
                }
                Some(run) if run.state.is_terminal() => {
                    self.inner.drop_idle_waiter(run_id);
                    return Ok(run);
                }
                Some(_) => {}
            }
        }
        let outcome = rx
            .wait_for(|s| !matches!(s, WaitState::Pending))
            .await
            .map(|s| s.clone());
        match outcome {
            Ok(WaitState::Done(run)) => Ok(*run),
            Ok(WaitState::Stopped(reason)) => Err(EngineError::Stopped {
                id: run_id.to_string(),
                reason,
            }),
            // The sender went away without a final value: report what the store has.
            Ok(WaitState::Pending) | Err(_) => match self.inner.store.get_run(run_id).await? {
                Some(run) if run.state.is_terminal() => Ok(run),
                Some(_) => Err(EngineError::Stopped {
                    id: run_id.to_string(),
                    reason: "no longer scheduled".to_string(),
                }),
                None => Err(EngineError::NotFound(run_id.to_string())),
            },
        }
    }

    /// The run as last persisted, or `None`. Errors: [`EngineError::Store`].
    pub async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, EngineError> {
        Ok(self.inner.store.get_run(run_id).await?)
    }

    /// Position of a run in its cluster's line: `Some(0)` if it currently holds the cluster,
    /// `Some(n)` if `n` runs (the running one included) are ahead of it, `None` if it is not
    /// scheduled in this engine (unknown, finished, or not resumed yet).
    pub fn queue_position(&self, run_id: &str) -> Option<usize> {
        let s = self.inner.lock();
        let live = s.live.get(run_id)?;
        let slot = s.clusters.get(&live.cluster)?;
        if slot.running.as_deref() == Some(run_id) {
            return Some(0);
        }
        let ahead = slot.queue.range(..live.seq).count();
        slot.queue.get(&live.seq)?;
        Some(ahead + usize::from(slot.running.is_some()))
    }

    /// The latest progress line of the running step of `run_id` (kept in memory only).
    pub fn progress(&self, run_id: &str) -> Option<String> {
        self.inner.lock().live.get(run_id)?.progress.clone()
    }

    /// Sets the [`StartGate`] consulted before a run that waited behind another one starts
    /// (replacing any earlier gate). Without a gate such runs start as submitted.
    pub fn set_start_gate(&self, gate: Arc<dyn StartGate>) {
        *self.inner.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate);
    }

    /// Cancels run `run_id` with `reason` (shown as the run's error and on its steps): a queued
    /// run ends `Cancelled` at once; a running one at its next step boundary, never inside a
    /// step (the request is written to the journal first, under [`CANCEL_PREFIX`], so a
    /// restart honours it). A finished run is left as it is.
    ///
    /// Errors: [`EngineError::NotFound`], [`EngineError::Store`], [`EngineError::Transition`].
    pub async fn cancel(&self, run_id: &str, reason: &str) -> Result<CancelOutcome, EngineError> {
        let Some(run) = self.inner.store.get_run(run_id).await? else {
            return Err(EngineError::NotFound(run_id.to_string()));
        };
        if run.state.is_terminal() {
            return Ok(CancelOutcome::AlreadyFinished(run.state));
        }
        let reason = truncate_error(reason);
        // Durable first: if the run is (or becomes) the running one, the drive reads it at its
        // next boundary, in this process or after a restart.
        self.inner
            .store
            .put_meta(&format!("{CANCEL_PREFIX}{run_id}"), reason.as_bytes())
            .await?;
        let dequeued = {
            let mut s = self.inner.lock();
            let Sched { live, clusters, .. } = &mut *s;
            match live.get_mut(run_id) {
                Some(l) => match clusters.get_mut(&l.cluster) {
                    Some(slot) if slot.running.as_deref() == Some(run_id) => {
                        l.cancel = Some(reason.clone());
                        false
                    }
                    Some(slot) => {
                        slot.queue.remove(&l.seq);
                        live.remove(run_id);
                        true
                    }
                    None => {
                        live.remove(run_id);
                        true
                    }
                },
                None => true,
            }
        };
        if !dequeued {
            return Ok(CancelOutcome::AtNextStep);
        }
        let Some(mut run) = self.inner.store.get_run(run_id).await? else {
            return Err(EngineError::NotFound(run_id.to_string()));
        };
        if run.state.is_terminal() {
            return Ok(CancelOutcome::AlreadyFinished(run.state));
        }
        // Queued, or persisted Running but not scheduled here (before `resume_all`): cancelled
        // from its first unfinished step.
        let idx = run
            .steps
            .iter()
            .position(|st| !st.state.is_terminal())
            .unwrap_or(run.steps.len());
        cancel_from(&mut run, idx, &reason)?;
        self.inner.persist(&mut run, None).await?;
        self.inner
            .store
            .delete_meta(&format!("{CANCEL_PREFIX}{run_id}"))
            .await?;
        let mut s = self.inner.lock();
        if let Some(w) = s.waiters.remove(run_id) {
            w.send_replace(WaitState::Done(Box::new(run)));
        }
        Ok(CancelOutcome::Cancelled)
    }

    /// Retries failed run `run_id` from its failed step: the run goes back to `Queued` in its
    /// cluster's line (keeping its place by `seq`), its failed step and the steps cancelled
    /// after it go back to `Pending` with a fresh retry budget (their earlier attempts stay in
    /// the record), and succeeded steps keep their output and are not run again. Returns the
    /// run as persisted.
    ///
    /// Errors: [`EngineError::NotFound`]; [`EngineError::NotRetryable`] when the run is not
    /// `Failed`; [`EngineError::ShuttingDown`]; [`EngineError::Store`].
    pub async fn retry(&self, run_id: &str, note: &str) -> Result<RunRecord, EngineError> {
        if self.inner.lock().shutting_down {
            return Err(EngineError::ShuttingDown);
        }
        let Some(mut run) = self.inner.store.get_run(run_id).await? else {
            return Err(EngineError::NotFound(run_id.to_string()));
        };
        if run.state != RunState::Failed {
            return Err(EngineError::NotRetryable {
                id: run.id,
                state: run.state,
            });
        }
        run.state = run_transition(run.state, RunEvent::Retry)?;
        for step in run
            .steps
            .iter_mut()
            .filter(|st| matches!(st.state, StepState::Failed | StepState::Cancelled))
        {
            step.state = step_transition(step.state, StepEvent::Retry)?;
            step.attempts_before_retry = step.attempts.len() as u32;
            step.error = None;
            step.finished_at = None;
        }
        run.error = None;
        run.finished_at = None;
        run.note = Some(note.to_string());
        self.inner.persist(&mut run, None).await?;
        self.inner.enqueue(vec![run.clone()]);
        Ok(run)
    }

    /// Graceful drain: starts no new attempt or run from now on, lets in-flight attempts finish
    /// and persist their outcome for up to `grace`, then aborts whatever is still running and
    /// records those attempts as cut short by the shutdown ([`OUTCOME_SHUTDOWN`], which does not
    /// count against the retry budget); the steps stay `Running` and resume on the next start.
    /// Pending [`Engine::wait`] calls on unfinished runs return [`EngineError::Stopped`].
    /// Later `submit`/`resume_all` calls fail with [`EngineError::ShuttingDown`].
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.send_replace(true);
        let (ids, handles): (Vec<String>, Vec<JoinHandle<()>>) = {
            let mut s = self.inner.lock();
            s.shutting_down = true;
            s.tasks.drain().unzip()
        };
        let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
        let mut all = futures::future::join_all(handles);
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            for a in &aborts {
                a.abort();
            }
            all.await;
            for id in &ids {
                if let Err(e) = self.inner.record_shutdown(id).await {
                    tracing::warn!(run = %id, error = %e, "recording the shutdown failed; the attempt will count as interrupted");
                }
            }
        }
        let mut s = self.inner.lock();
        for (_, w) in s.waiters.drain() {
            w.send_if_modified(|st| {
                if matches!(st, WaitState::Pending) {
                    *st = WaitState::Stopped("engine shut down".to_string());
                    true
                } else {
                    false
                }
            });
        }
        s.live.clear();
        s.clusters.clear();
    }
}

/// Opens attempt number `attempts + 1` of `step` at `now` (and its `started_at`, on the first).
/// Does not persist.
fn begin_attempt(step: &mut StepRecord, now: chrono::DateTime<Utc>) {
    if step.started_at.is_none() {
        step.started_at = Some(now);
    }
    step.attempts.push(AttemptRecord {
        number: step.attempts.len() as u32 + 1,
        started_at: now,
        finished_at: None,
        error: None,
        outcome: None,
    });
}

/// Cancels every unfinished step of `run` from `idx` on and the run itself with `reason`
/// (the run's error; the steps say `cancelled: <reason>`). Does not persist.
fn cancel_from(run: &mut RunRecord, idx: usize, reason: &str) -> Result<(), EngineError> {
    let now = Utc::now();
    for step in run.steps.iter_mut().skip(idx) {
        if !step.state.is_terminal() {
            step.state = step_transition(step.state, StepEvent::Cancel)?;
            step.error = Some(truncate_error(&format!("cancelled: {reason}")));
            step.finished_at = Some(now);
        }
    }
    run.state = run_transition(run.state, RunEvent::Cancel)?;
    run.error = Some(truncate_error(reason));
    run.finished_at = Some(now);
    Ok(())
}

fn validate(req: &RunRequest) -> Result<(), EngineError> {
    if req.id.is_empty() {
        return Err(EngineError::InvalidRequest("empty run id".to_string()));
    }
    if req.id.contains('\0') {
        return Err(EngineError::InvalidRequest(
            "run id contains NUL".to_string(),
        ));
    }
    if req.cluster.is_empty() {
        return Err(EngineError::InvalidRequest("empty cluster".to_string()));
    }
    if req.origin.as_deref().is_some_and(|o| o.contains('\0')) {
        return Err(EngineError::InvalidRequest(
            "origin contains NUL".to_string(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for s in &req.steps {
        if !seen.insert(s.id.as_str()) {
            return Err(EngineError::InvalidRequest(format!(
                "duplicate step id {}",
                s.id
            )));
        }
    }
    Ok(())
}

impl Inner {
    /// Marks the in-flight attempt of run `id` (if any) as cut short by the shutdown.
    async fn record_shutdown(&self, id: &str) -> Result<(), EngineError> {
        let Some(mut run) = self.store.get_run(id).await? else {
            return Ok(());
        };
        let now = Utc::now();
        let mut changed = false;
        for step in run
            .steps
            .iter_mut()
            .filter(|s| s.state == StepState::Running)
        {
            if let Some(last) = step.attempts.last_mut().filter(|a| a.outcome.is_none()) {
                last.outcome = Some(OUTCOME_SHUTDOWN.to_string());
                last.error = Some("cut short by a graceful shutdown of the bot".to_string());
                last.finished_at = Some(now);
                changed = true;
            }
        }
        if changed {
            run.updated_at = now;
            self.store.put_run(&run).await?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Sched> {
        // A poisoned lock only means a panic elsewhere while holding it; the maps stay usable.
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drop_idle_waiter(&self, id: &str) {
        let mut s = self.lock();
        if !s.live.contains_key(id) {
            if let Some(w) = s.waiters.get(id) {
                if w.receiver_count() <= 1 {
                    s.waiters.remove(id);
                }
            }
        }
    }

    /// Registers `runs` (skipping ones already scheduled or terminal) in their clusters' queues
    /// and starts every cluster's head run whose cluster is free. Returns how many were added.
    fn enqueue(self: &Arc<Self>, runs: Vec<RunRecord>) -> usize {
        let mut s = self.lock();
        if s.shutting_down {
            return 0;
        }
        let mut added = 0;
        let mut records: HashMap<String, RunRecord> = HashMap::new();
        let mut touched: Vec<String> = Vec::new();
        for run in runs {
            if run.state.is_terminal() || s.live.contains_key(&run.id) {
                continue;
            }
            added += 1;
            let ahead = s.clusters.get(&run.cluster).and_then(|slot| {
                slot.queue
                    .range(..run.seq)
                    .next_back()
                    .map(|(_, id)| id.clone())
                    .or_else(|| slot.running.clone())
            });
            s.live.insert(
                run.id.clone(),
                Live {
                    cluster: run.cluster.clone(),
                    seq: run.seq,
                    progress: None,
                    waited_behind: ahead,
                    cancel: None,
                },
            );
            let slot = s.clusters.entry(run.cluster.clone()).or_default();
            slot.queue.insert(run.seq, run.id.clone());
            if slot.running.is_none() {
                touched.push(run.cluster.clone());
            }
            records.insert(run.id.clone(), run);
        }
        for cluster in touched {
            self.pump(&mut s, &cluster, &mut records);
        }
        added
    }

    /// Starts the head of `cluster`'s queue if the cluster is free. Must hold the lock.
    fn pump(
        self: &Arc<Self>,
        s: &mut Sched,
        cluster: &str,
        records: &mut HashMap<String, RunRecord>,
    ) {
        if s.shutting_down {
            return;
        }
        let Some(slot) = s.clusters.get_mut(cluster) else {
            return;
        };
        if slot.running.is_some() {
            return;
        }
        let Some((_, id)) = slot.queue.pop_first() else {
            s.clusters.remove(cluster);
            return;
        };
        slot.running = Some(id.clone());
        let record = records.remove(&id);
        self.spawn_drive(s, id, record, false);
    }

    /// Holds `run`'s cluster for it when the cluster is free (no run holds it, none is queued)
    /// and the engine is not shutting down; returns whether it did. The run is then scheduled
    /// here (no waited-behind run, so no start gate) and must be [`Inner::launch`]ed or
    /// [`Inner::release`]d.
    fn reserve_if_free(&self, run: &RunRecord) -> bool {
        let mut s = self.lock();
        if s.shutting_down || s.live.contains_key(&run.id) || s.clusters.contains_key(&run.cluster)
        {
            return false;
        }
        s.live.insert(
            run.id.clone(),
            Live {
                cluster: run.cluster.clone(),
                seq: run.seq,
                progress: None,
                waited_behind: None,
                cancel: None,
            },
        );
        s.clusters.insert(
            run.cluster.clone(),
            ClusterSlot {
                running: Some(run.id.clone()),
                queue: BTreeMap::new(),
            },
        );
        true
    }

    /// Gives up the hold [`Inner::reserve_if_free`] took for run `id` (its write failed) and
    /// starts the cluster's next run, if any.
    fn release(self: &Arc<Self>, id: &str) {
        let mut s = self.lock();
        if let Some(w) = s.waiters.remove(id) {
            w.send_replace(WaitState::Stopped("its submission failed".to_string()));
        }
        let Some(live) = s.live.remove(id) else {
            return;
        };
        if let Some(slot) = s.clusters.get_mut(&live.cluster) {
            if slot.running.as_deref() == Some(id) {
                slot.running = None;
            }
        }
        self.pump(&mut s, &live.cluster, &mut HashMap::new());
    }

    /// Starts the drive of `run`, persisted with its first attempt begun, on the cluster
    /// [`Inner::reserve_if_free`] held for it. If the engine began shutting down meanwhile, the
    /// attempt is recorded as cut short by the shutdown instead (it never ran).
    async fn launch(self: &Arc<Self>, run: RunRecord) {
        let id = run.id.clone();
        {
            let mut s = self.lock();
            if !s.shutting_down {
                self.spawn_drive(&mut s, id, Some(run), true);
                return;
            }
        }
        if let Err(e) = self.record_shutdown(&id).await {
            tracing::warn!(run = %id, error = %e, "recording the shutdown failed; the attempt will count as interrupted");
        }
    }

    /// Spawns the task that drives run `id` (`record`: the run as persisted, if at hand;
    /// `prestarted`: its first step's attempt is begun and persisted). Must hold the lock, and
    /// the run must hold its cluster.
    fn spawn_drive(
        self: &Arc<Self>,
        s: &mut Sched,
        id: String,
        record: Option<RunRecord>,
        prestarted: bool,
    ) {
        let inner = self.clone();
        let task_id = id.clone();
        // Every event of the run's task names the run (`drive` records its cluster). No parent:
        // a run started when another one finished is not part of that one.
        let span = tracing::info_span!(
            parent: None,
            "run",
            run_id = %id,
            cluster = tracing::field::Empty,
            origin = tracing::field::Empty
        );
        if let Some(r) = &record {
            span.record("cluster", r.cluster.as_str());
            if let Some(o) = &r.origin {
                span.record("origin", o.as_str());
            }
        }
        // The task cannot observe `tasks` before we insert its handle: it needs this lock.
        let handle = tokio::spawn(tracing::Instrument::instrument(
            async move {
                // A panic (e.g. in the observer) must not leave the cluster locked.
                let result = AssertUnwindSafe(inner.drive(&task_id, record, prestarted))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        Err(EngineError::Stopped {
                            id: task_id.clone(),
                            reason: "run task panicked".to_string(),
                        })
                    });
                // A cancellation asked for during the last step, which then finished the run.
                let asked = inner
                    .lock()
                    .live
                    .get(&task_id)
                    .is_some_and(|l| l.cancel.is_some());
                if asked && result.as_ref().is_ok_and(|r| r.state.is_terminal()) {
                    if let Err(e) = inner
                        .store
                        .delete_meta(&format!("{CANCEL_PREFIX}{task_id}"))
                        .await
                    {
                        tracing::warn!(run = %task_id, error = %e, "removing a cancellation request failed");
                    }
                }
                inner.finish(&task_id, result);
            },
            span,
        ));
        s.tasks.insert(id, handle);
    }

    /// Bookkeeping after a run task ends: frees the cluster, wakes waiters, starts the next run.
    fn finish(self: &Arc<Self>, id: &str, result: Result<RunRecord, EngineError>) {
        let state = match result {
            Ok(run) if run.state.is_terminal() => WaitState::Done(Box::new(run)),
            Ok(_) => WaitState::Stopped("engine shutting down".to_string()),
            Err(e) => {
                tracing::error!(run = %id, error = %e, "run stopped");
                WaitState::Stopped(e.to_string())
            }
        };
        let mut s = self.lock();
        s.tasks.remove(id);
        let cluster = s.live.remove(id).map(|l| l.cluster);
        if let Some(w) = s.waiters.remove(id) {
            w.send_replace(state);
        }
        if let Some(cluster) = cluster {
            if let Some(slot) = s.clusters.get_mut(&cluster) {
                if slot.running.as_deref() == Some(id) {
                    slot.running = None;
                }
            }
            self.pump(&mut s, &cluster, &mut HashMap::new());
        }
    }

    fn set_progress(&self, id: &str, line: Option<String>) {
        if let Some(l) = self.lock().live.get_mut(id) {
            l.progress = line;
        }
    }

    async fn forward_progress(&self, run: &RunRecord, line: &str) {
        self.set_progress(&run.id, Some(line.to_string()));
        self.observer.run_changed(run, Some(line)).await;
    }

    /// Writes the whole `run` (flushed), then tells the observer.
    async fn persist(
        &self,
        run: &mut RunRecord,
        progress: Option<&str>,
    ) -> Result<(), EngineError> {
        run.updated_at = Utc::now();
        self.store.put_run(run).await?;
        self.observer.run_changed(run, progress).await;
        Ok(())
    }

    /// Writes the steps `steps` of `run` and, when `header`, its own fields (flushed; see
    /// [`Store::put_run_steps`]), then tells the observer. Every other part of `run` must be
    /// as last written.
    async fn persist_steps(
        &self,
        run: &mut RunRecord,
        steps: &[usize],
        header: bool,
        progress: Option<&str>,
    ) -> Result<(), EngineError> {
        if header {
            run.updated_at = Utc::now();
        } else {
            // The header is not written: the time read back is the latest one on the steps.
            for t in steps
                .iter()
                .filter_map(|i| run.steps.get(*i)?.last_change())
            {
                run.updated_at = run.updated_at.max(t);
            }
        }
        self.store.put_run_steps(run, steps, header).await?;
        self.observer.run_changed(run, progress).await;
        Ok(())
    }

    /// Drives run `id` until it is terminal (returns the final record) or must stop (returns the
    /// record as last persisted, non-terminal). `prestarted`: `record` was persisted by
    /// [`Engine::submit`] already `Running`, with its first step's first attempt begun, so that
    /// attempt executes without another write.
    async fn drive(
        &self,
        id: &str,
        record: Option<RunRecord>,
        prestarted: bool,
    ) -> Result<RunRecord, EngineError> {
        let mut run = match record {
            Some(r) => r,
            None => self
                .store
                .get_run(id)
                .await?
                .ok_or_else(|| EngineError::NotFound(id.to_string()))?,
        };
        let span = tracing::Span::current();
        span.record("cluster", run.cluster.as_str());
        if let Some(o) = &run.origin {
            span.record("origin", o.as_str());
        }
        if run.state.is_terminal() {
            return Ok(run);
        }
        let mut shutdown = self.shutdown.subscribe();
        // A cancellation requested before a restart (a run started by its submission is new:
        // a cancellation of it can only have come through `Engine::cancel`, which marks it live).
        if prestarted {
        } else if let Some(reason) = self.store.get_meta(&format!("{CANCEL_PREFIX}{id}")).await? {
            if let Some(l) = self.lock().live.get_mut(id) {
                l.cancel = Some(String::from_utf8_lossy(&reason).into_owned());
            }
        }
        if run.state == RunState::Queued {
            let waited = self
                .lock()
                .live
                .get(id)
                .and_then(|l| l.waited_behind.clone());
            let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let (Some(ahead), Some(gate)) = (waited, gate) {
                match gate.before_start(&run, &ahead).await {
                    GateDecision::Start => {}
                    GateDecision::Replace {
                        workflow,
                        steps,
                        note,
                    } => {
                        run.workflow = workflow;
                        run.steps = steps.into_iter().map(StepRecord::pending).collect();
                        run.note = Some(note);
                        // Durable before any of the new steps runs.
                        self.persist(&mut run, None).await?;
                    }
                    GateDecision::Cancel(reason) => {
                        cancel_from(&mut run, 0, &reason)?;
                        self.persist(&mut run, None).await?;
                        return Ok(run);
                    }
                    GateDecision::Fail(reason) => {
                        let mut start = Some(RunEvent::Start);
                        self.fail_run(&mut run, 0, &reason, &mut start)?;
                        self.persist(&mut run, None).await?;
                        return Ok(run);
                    }
                }
            }
        }
        // Applied with the first persisted write of this drive (already applied when
        // `prestarted`).
        let mut w = Unwritten {
            run_event: (!prestarted).then_some(match run.state {
                RunState::Queued => RunEvent::Start,
                _ => RunEvent::Resume,
            }),
            success: None,
        };
        // The step whose attempt is begun and persisted (only ever the first one).
        let mut begun = prestarted.then_some(0);
        let mut outputs = BTreeMap::new();
        for idx in 0..run.steps.len() {
            match run.steps[idx].state {
                StepState::Succeeded => {
                    let step = &run.steps[idx];
                    outputs.insert(
                        step.spec.id.clone(),
                        step.output.clone().unwrap_or(serde_json::Value::Null),
                    );
                    continue;
                }
                StepState::Failed | StepState::Cancelled => {
                    // Not reachable: failures and cancellations are written whole (one header
                    // switch), never step by step. Finish the run consistently.
                    let msg = run.steps[idx]
                        .error
                        .clone()
                        .unwrap_or_else(|| "step did not finish".into());
                    self.fail_run(&mut run, idx, &msg, &mut w.run_event)?;
                    self.persist(&mut run, None).await?;
                    return Ok(run);
                }
                StepState::Pending => {
                    // A step boundary: a requested cancellation takes effect here.
                    let cancel = self.lock().live.get(id).and_then(|l| l.cancel.clone());
                    if let Some(reason) = cancel {
                        if let Some(RunEvent::Resume) = w.run_event.take() {
                            run.state = run_transition(run.state, RunEvent::Resume)?;
                        }
                        cancel_from(&mut run, idx, &reason)?;
                        self.persist(&mut run, None).await?;
                        self.store
                            .delete_meta(&format!("{CANCEL_PREFIX}{id}"))
                            .await?;
                        return Ok(run);
                    }
                }
                StepState::Running => {}
            }
            let step_span = tracing::info_span!(
                "step",
                step = %run.steps[idx].spec.id,
                step_index = idx
            );
            let begun_here = begun.take() == Some(idx);
            match tracing::Instrument::instrument(
                self.drive_step(&mut run, idx, &mut w, &outputs, &mut shutdown, begun_here),
                step_span,
            )
            .await?
            {
                StepEnd::Succeeded => {
                    let step = &run.steps[idx];
                    outputs.insert(
                        step.spec.id.clone(),
                        step.output.clone().unwrap_or(serde_json::Value::Null),
                    );
                }
                StepEnd::Failed => return Ok(run),
                StepEnd::Stopped => return Ok(run),
            }
        }
        if !run.state.is_terminal() {
            // No steps left to run (empty plan, or all succeeded before a crash).
            if let Some(ev) = w.run_event.take() {
                run.state = run_transition(run.state, ev)?;
            }
            run.state = run_transition(run.state, RunEvent::Succeed)?;
            run.finished_at = Some(Utc::now());
            self.persist(&mut run, None).await?;
        }
        Ok(run)
    }

    /// Marks step `idx` failed with `msg` (unless already terminal), cancels the later steps, and
    /// fails the run with `"<step id>: <msg>"`. Does not persist.
    fn fail_run(
        &self,
        run: &mut RunRecord,
        idx: usize,
        msg: &str,
        run_event: &mut Option<RunEvent>,
    ) -> Result<(), EngineError> {
        let now = Utc::now();
        let msg = truncate_error(msg);
        let failed_id = run.steps[idx].spec.id.clone();
        {
            let step = &mut run.steps[idx];
            if !step.state.is_terminal() {
                step.state = step_transition(step.state, StepEvent::Fail)?;
                step.error = Some(msg.clone());
                step.finished_at = Some(now);
            }
        }
        for later in run.steps.iter_mut().skip(idx + 1) {
            if !later.state.is_terminal() {
                later.state = step_transition(later.state, StepEvent::Cancel)?;
                later.error = Some(format!("cancelled: step {failed_id} failed"));
                later.finished_at = Some(now);
            }
        }
        if let Some(ev) = run_event.take() {
            run.state = run_transition(run.state, ev)?;
        }
        run.state = run_transition(run.state, RunEvent::Fail)?;
        run.error = Some(truncate_error(&format!("{failed_id}: {msg}")));
        run.finished_at = Some(now);
        Ok(())
    }

    /// Runs attempts of step `idx` until it succeeds, fails, or the engine shuts down.
    async fn drive_step(
        &self,
        run: &mut RunRecord,
        idx: usize,
        unwritten: &mut Unwritten,
        outputs: &BTreeMap<String, serde_json::Value>,
        shutdown: &mut watch::Receiver<bool>,
        mut begun: bool,
    ) -> Result<StepEnd, EngineError> {
        let Unwritten {
            run_event,
            success: unsaved,
        } = unwritten;
        // A step found Running was interrupted (crash/shutdown) or was between attempts, unless
        // its attempt was `begun` (persisted by the submission, not executed yet).
        let mut resumed = !begun && run.steps[idx].state == StepState::Running;
        loop {
            if *shutdown.borrow() {
                if let Some(done) = unsaved.take() {
                    self.persist_steps(run, &[done], false, None).await?;
                }
                if begun {
                    // The begun attempt never ran: it must not count as interrupted.
                    if let Some(last) = run.steps[idx].attempts.last_mut() {
                        last.outcome = Some(OUTCOME_SHUTDOWN.to_string());
                        last.error = Some("cut short by a graceful shutdown of the bot".into());
                        last.finished_at = Some(Utc::now());
                    }
                    self.persist_steps(run, &[idx], false, None).await?;
                }
                return Ok(StepEnd::Stopped);
            }
            if begun {
                begun = false;
            } else {
                self.begin_step_attempt(run, idx, run_event, &mut resumed, unsaved)
                    .await?;
                if run.state.is_terminal() {
                    return Ok(StepEnd::Failed);
                }
            }
            // --- Execute.
            let (result, latest) = self.execute(run, idx, outputs, shutdown).await;
            let now = Utc::now();
            let step = &mut run.steps[idx];
            let (outcome, error) = match &result {
                Ok(_) => (OUTCOME_SUCCEEDED, None),
                Err((outcome, msg)) => (*outcome, Some(truncate_error(msg))),
            };
            if let Some(attempt) = step.attempts.last_mut() {
                attempt.finished_at = Some(now);
                attempt.outcome = Some(outcome.to_string());
                attempt.error = error;
            }
            match result {
                Ok(output) => {
                    step.state = step_transition(step.state, StepEvent::Succeed)?;
                    step.output = Some(output);
                    step.finished_at = Some(now);
                    step.error = None;
                    self.set_progress(&run.id, None);
                    if run.steps.iter().all(|s| s.state == StepState::Succeeded) {
                        run.state = run_transition(run.state, RunEvent::Succeed)?;
                        run.finished_at = Some(now);
                        self.persist_steps(run, &[idx], true, None).await?;
                    } else {
                        // Written together with the next step's first attempt, which follows at
                        // once (or on the shutdown path): still durable before the next side
                        // effect, one flush per step instead of two.
                        *unsaved = Some(idx);
                    }
                    return Ok(StepEnd::Succeeded);
                }
                Err((outcome, msg)) => {
                    let retryable = outcome != OUTCOME_PERMANENT;
                    let used = step.budget_used();
                    if retryable && used < step.spec.retry.max_attempts.max(1) {
                        step.state = step_transition(step.state, StepEvent::AttemptFailedRetrying)?;
                        let delay = backoff_delay(&step.spec.retry, used.saturating_sub(1));
                        self.persist_steps(run, &[idx], false, latest.as_deref())
                            .await?;
                        tracing::debug!(run = %run.id, step = idx, ?delay, "attempt failed, retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.wait_for(|v| *v) => {
                                return Ok(StepEnd::Stopped);
                            }
                        }
                    } else {
                        self.fail_run(run, idx, &msg, run_event)?;
                        self.set_progress(&run.id, None);
                        self.persist(run, None).await?;
                        return Ok(StepEnd::Failed);
                    }
                }
            }
        }
    }

    /// Begins the next attempt of step `idx` and persists it (with the previous step's success
    /// in `unsaved` and, on the drive's first write, the run's `run_event`): durable before the
    /// side effect. A step found `resumed` has its interrupted attempt closed first. When the
    /// step's retry budget is spent, or the bot died [`MAX_INTERRUPTED_ATTEMPTS`] times during
    /// it, fails the run instead (persisted; the run is then terminal).
    async fn begin_step_attempt(
        &self,
        run: &mut RunRecord,
        idx: usize,
        run_event: &mut Option<RunEvent>,
        resumed: &mut bool,
        unsaved: &mut Option<usize>,
    ) -> Result<(), EngineError> {
        let now = Utc::now();
        // --- Begin the attempt: durable before the side effect.
        // The run's own fields are written with the first write of this drive (its start
        // or resume), else only the steps that changed.
        let header = run_event.is_some();
        {
            if let Some(ev) = run_event.take() {
                run.state = run_transition(run.state, ev)?;
            }
            let step = &mut run.steps[idx];
            if *resumed {
                step.state = step_transition(step.state, StepEvent::Resume)?;
                if let Some(last) = step.attempts.last_mut() {
                    if last.outcome.is_none() {
                        last.outcome = Some(OUTCOME_INTERRUPTED.to_string());
                        last.error = Some(format!(
                            "attempt {} was interrupted: the bot stopped while it ran",
                            last.number
                        ));
                        last.finished_at = Some(now);
                    }
                }
                *resumed = false;
            } else if step.state == StepState::Pending {
                step.state = step_transition(step.state, StepEvent::Start)?;
            }
            let max = step.spec.retry.max_attempts.max(1);
            let deaths = step.interrupted_attempts();
            let spent = if step.budget_used() >= max {
                // Defensive: the retry path below fails the run itself when the last allowed
                // attempt fails, so a resumed step should never get here.
                Some(format!("retry budget of {max} attempt(s) exhausted"))
            } else if deaths >= MAX_INTERRUPTED_ATTEMPTS {
                // The bot died during this step again and again: a step that crashes the bot
                // must not run forever.
                Some(format!(
                    "the bot stopped {deaths} times while this step ran; \
                     the step is failed so that it cannot crash the bot in a loop"
                ))
            } else {
                None
            };
            if let Some(why) = spent {
                let last = step
                    .attempts
                    .iter()
                    .rev()
                    .find_map(|a| a.error.clone())
                    .unwrap_or_else(|| "no error recorded".to_string());
                let msg = format!("{last} ({why})");
                self.fail_run(run, idx, &msg, run_event)?;
                self.persist(run, None).await?;
                return Ok(());
            }
            begin_attempt(step, now);
        }
        self.set_progress(&run.id, None);
        // Also persists the previous step's success, if not yet written.
        match unsaved.take() {
            Some(done) => self.persist_steps(run, &[done, idx], header, None).await?,
            None => self.persist_steps(run, &[idx], header, None).await?,
        }
        Ok(())
    }

    /// Runs the current attempt of step `idx` under its timeout, forwarding progress lines to the
    /// observer. Returns the output or `(outcome, message)`, and the latest progress line.
    async fn execute(
        &self,
        run: &RunRecord,
        idx: usize,
        outputs: &BTreeMap<String, serde_json::Value>,
        shutdown: &watch::Receiver<bool>,
    ) -> (
        Result<serde_json::Value, (&'static str, String)>,
        Option<String>,
    ) {
        let step = &run.steps[idx];
        let spec = &step.spec;
        // A step that only reads and waits has no side effect to finish: a graceful shutdown
        // cuts it at once (OUTCOME_SHUTDOWN, no budget spent) instead of after the grace.
        let mut stop = shutdown.clone();
        let cut_at_shutdown = spec.kind().only_reads();
        let stopped = async move {
            if !cut_at_shutdown || stop.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(stopped);
        let (ptx, mut prx) = watch::channel::<Option<String>>(None);
        let ctx = StepContext {
            run_id: run.id.clone(),
            cluster: run.cluster.clone(),
            commit_sha: run.commit_sha.clone(),
            step: spec.clone(),
            attempt: step.attempts.last().map(|a| a.number).unwrap_or(1),
            outputs: outputs.clone(),
            progress: ProgressSink::new(move |line| {
                ptx.send_replace(Some(line.to_string()));
            }),
        };
        let timeout_secs = spec.timeout_secs;
        let attempt = AssertUnwindSafe(self.executor.execute(&ctx)).catch_unwind();
        let attempt = async move {
            if timeout_secs == 0 {
                Ok(attempt.await)
            } else {
                tokio::time::timeout(Duration::from_secs(timeout_secs), attempt).await
            }
        };
        tokio::pin!(attempt);
        let mut latest: Option<String> = None;
        let raw = loop {
            tokio::select! {
                biased;
                Ok(()) = prx.changed() => {
                    let line = prx.borrow_and_update().clone();
                    if let Some(line) = line {
                        self.forward_progress(run, &line).await;
                        latest = Some(line);
                    }
                }
                r = &mut attempt => break Some(r),
                _ = &mut stopped => break None,
            }
        };
        // A line reported in the attempt's last poll.
        if prx.has_changed().unwrap_or(false) {
            let line = prx.borrow_and_update().clone();
            if let Some(line) = line {
                self.forward_progress(run, &line).await;
                latest = Some(line);
            }
        }
        let Some(raw) = raw else {
            let why = "cut short by a graceful shutdown of the bot (a step that only reads and waits gets no grace)";
            return (Err((OUTCOME_SHUTDOWN, why.to_string())), latest);
        };
        let result = match raw {
            Ok(Ok(Ok(output))) => Ok(output),
            Ok(Ok(Err(StepError::Transient(m)))) => Err((OUTCOME_TRANSIENT, m)),
            Ok(Ok(Err(StepError::Permanent(m)))) => Err((OUTCOME_PERMANENT, m)),
            Ok(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err((OUTCOME_PERMANENT, format!("executor panicked: {what}")))
            }
            Err(_) => Err((OUTCOME_TIMEOUT, format!("timed out after {timeout_secs} s"))),
        };
        (result, latest)
    }
}

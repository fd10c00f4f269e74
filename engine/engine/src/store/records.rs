//! The persisted records: one [`RunRecord`] per run, holding its [`StepRecord`]s and their
//! [`AttemptRecord`]s. Serialized as camelCase JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::step::StepSpec;

/// Maximum length, in bytes, of any error string persisted in the store (2 KiB).
pub const MAX_ERROR_BYTES: usize = 2048;

/// Truncates `s` to at most [`MAX_ERROR_BYTES`] bytes on a UTF-8 character boundary, appending
/// `…` when something was cut (the result may then be up to 3 bytes longer than the limit).
pub fn truncate_error(s: &str) -> String {
    if s.len() <= MAX_ERROR_BYTES {
        return s.to_string();
    }
    let mut end = MAX_ERROR_BYTES;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 3);
    out.push_str(&s[..end]);
    out.push('…');
    out
}

/// Lifecycle of a run. Transitions are defined in [`crate::fsm::run_transition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunState {
    /// Persisted, waiting for its cluster to be free (or for the engine to schedule it).
    Queued,
    /// Executing its steps.
    Running,
    /// Every step succeeded. Terminal.
    Succeeded,
    /// A step failed; the remaining steps were cancelled. Terminal.
    Failed,
    /// Cancelled before completion. Terminal.
    Cancelled,
}

impl RunState {
    /// Whether the run is finished for good (`Succeeded`, `Failed` or `Cancelled`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
}

/// Lifecycle of a step. Transitions are defined in [`crate::fsm::step_transition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepState {
    /// Not started yet.
    Pending,
    /// Attempts in progress (retries are attempts within `Running`).
    Running,
    /// The last attempt succeeded. Terminal.
    Succeeded,
    /// A permanent error, or attempts exhausted. Terminal.
    Failed,
    /// Never finished because an earlier step failed or the run was cancelled. Terminal.
    Cancelled,
}

impl StepState {
    /// Whether the step is finished for good (`Succeeded`, `Failed` or `Cancelled`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Succeeded | StepState::Failed | StepState::Cancelled
        )
    }
}

/// Attempt outcome: the executor returned `Ok`.
pub const OUTCOME_SUCCEEDED: &str = "succeeded";
/// Attempt outcome: a [`crate::step::StepError::Transient`] error.
pub const OUTCOME_TRANSIENT: &str = "transient";
/// Attempt outcome: a [`crate::step::StepError::Permanent`] error.
pub const OUTCOME_PERMANENT: &str = "permanent";
/// Attempt outcome: the attempt exceeded the step's `timeout_secs` (retried like a transient error).
pub const OUTCOME_TIMEOUT: &str = "timeout";
/// Attempt outcome: the bot died (crash, `kill -9`, power loss) while the attempt was in flight;
/// found on resume. Does not count against the step's `max_attempts` (the step did not fail:
/// the process running it did, often for a reason elsewhere, such as another run's step or a
/// redeploy), but against its own cap, [`MAX_INTERRUPTED_ATTEMPTS`], so a step that crashes the
/// bot cannot run forever.
pub const OUTCOME_INTERRUPTED: &str = "interrupted";

/// How many attempts of one step may be [`OUTCOME_INTERRUPTED`] (since its last
/// `/tkgops retry`) before the engine fails the run instead of starting another attempt: a
/// crash-loop guard, separate from the step's `max_attempts` so that deaths of the process
/// during an innocent step do not spend the retries its own errors need.
pub const MAX_INTERRUPTED_ATTEMPTS: u32 = 10;
/// Attempt outcome: a graceful engine shutdown (SIGTERM, redeploy) cut the attempt short after
/// its grace period. Does not count against the retry budget.
pub const OUTCOME_SHUTDOWN: &str = "shutdown";

/// One try of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// Attempt number, starting at 1; continues across restarts.
    pub number: u32,
    /// When the attempt was persisted as started (before the executor was called).
    pub started_at: DateTime<Utc>,
    /// When the outcome was persisted; `None` while in flight.
    pub finished_at: Option<DateTime<Utc>>,
    /// Error message of a failed attempt (at most [`MAX_ERROR_BYTES`]).
    pub error: Option<String>,
    /// One of `"succeeded"`, `"transient"`, `"permanent"`, `"timeout"`, `"interrupted"`,
    /// `"shutdown"` (the `OUTCOME_*` constants); `None` while in flight.
    pub outcome: Option<String>,
}

impl AttemptRecord {
    /// Whether this attempt counts towards the step's `max_attempts`: every attempt, finished
    /// or in flight, except one cut short by a graceful shutdown ([`OUTCOME_SHUTDOWN`]) or by
    /// the bot's death ([`OUTCOME_INTERRUPTED`], capped by [`MAX_INTERRUPTED_ATTEMPTS`]).
    pub fn consumes_budget(&self) -> bool {
        !matches!(
            self.outcome.as_deref(),
            Some(OUTCOME_SHUTDOWN | OUTCOME_INTERRUPTED)
        )
    }
}

/// One step of a run with its state and attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// The rendered step (secret-free).
    pub spec: StepSpec,
    /// Current state.
    pub state: StepState,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// When the first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the step reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why the step failed or was cancelled (at most [`MAX_ERROR_BYTES`]).
    pub error: Option<String>,
    /// Output of the succeeded attempt (secret-free JSON).
    pub output: Option<serde_json::Value>,
    /// How many of `attempts` were made before the last `/tkgops retry` of the run
    /// ([`crate::Engine::retry`]): they stay in the record but no longer count against
    /// `spec.retry.max_attempts`. 0 for a step never retried.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts_before_retry: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl StepRecord {
    /// Whether any persisted error string of the step is longer than [`MAX_ERROR_BYTES`].
    pub(crate) fn has_oversized_error(&self) -> bool {
        let long = |e: &Option<String>| e.as_ref().is_some_and(|e| e.len() > MAX_ERROR_BYTES);
        long(&self.error) || self.attempts.iter().any(|a| long(&a.error))
    }

    /// Truncates every error string of the step to [`MAX_ERROR_BYTES`] in place.
    pub(crate) fn truncate_errors(&mut self) {
        fix_error(&mut self.error);
        for a in &mut self.attempts {
            fix_error(&mut a.error);
        }
    }

    /// The latest time the engine recorded on this step (its start, its end, an attempt's
    /// start or end), if any.
    pub(crate) fn last_change(&self) -> Option<DateTime<Utc>> {
        let attempts = self
            .attempts
            .iter()
            .flat_map(|a| [Some(a.started_at), a.finished_at]);
        [self.started_at, self.finished_at]
            .into_iter()
            .chain(attempts)
            .flatten()
            .max()
    }

    /// A `Pending` step for `spec`, with no attempts.
    pub fn pending(spec: StepSpec) -> Self {
        StepRecord {
            spec,
            state: StepState::Pending,
            attempts: Vec::new(),
            started_at: None,
            finished_at: None,
            error: None,
            output: None,
            attempts_before_retry: 0,
        }
    }

    /// Number of attempts since the last `/tkgops retry` that count towards
    /// `spec.retry.max_attempts` (all but those cut short by a graceful shutdown or by the
    /// bot's death; see [`AttemptRecord::consumes_budget`]).
    pub fn budget_used(&self) -> u32 {
        self.attempts_since_retry()
            .filter(|a| a.consumes_budget())
            .count() as u32
    }

    /// Number of attempts since the last `/tkgops retry` that the bot's death interrupted
    /// ([`OUTCOME_INTERRUPTED`]); compared with [`MAX_INTERRUPTED_ATTEMPTS`].
    pub fn interrupted_attempts(&self) -> u32 {
        self.attempts_since_retry()
            .filter(|a| a.outcome.as_deref() == Some(OUTCOME_INTERRUPTED))
            .count() as u32
    }

    fn attempts_since_retry(&self) -> impl Iterator<Item = &AttemptRecord> {
        self.attempts
            .iter()
            .skip(self.attempts_before_retry as usize)
    }
}

/// One execution of a plan, pinned to a commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// Deterministic id given by the caller (immutable).
    pub id: String,
    /// Workload cluster name; at most one run per cluster is `Running` at a time.
    pub cluster: String,
    /// Workflow name (e.g. `create-cluster`).
    pub workflow: String,
    /// The commit the run is pinned to.
    pub commit_sha: String,
    /// What caused the run, as opaque text chosen by the submitter (e.g. `github:pr/12` or
    /// `schedule:weekly`; immutable, no NUL). The engine only indexes it
    /// ([`crate::store::Store::list_runs_by_origin`]).
    #[serde(default)]
    pub origin: Option<String>,
    /// Current state.
    pub state: RunState,
    /// Submission order (from [`crate::store::Store::next_seq`]; immutable). Queued runs of a
    /// cluster start in increasing `seq`.
    pub seq: u64,
    /// When the run was first persisted.
    pub created_at: DateTime<Utc>,
    /// When the run last changed: the time its own fields were last written, or the latest
    /// time recorded on its steps (starts, ends, attempts) when a step changed after that.
    /// The store keeps each step in its own record and derives this on reading.
    pub updated_at: DateTime<Utc>,
    /// When the run reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The steps, in execution order.
    pub steps: Vec<StepRecord>,
    /// `"<step id>: <message>"` of the failing step, or the cancellation reason.
    pub error: Option<String>,
    /// What changed the run after it was submitted, for the people watching it: a re-plan when
    /// its turn came ([`crate::runner::StartGate`]), a retry, a cancellation request. Plain
    /// text, secret-free; `None` when nothing did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Truncates `e` to [`MAX_ERROR_BYTES`] when it is longer.
fn fix_error(e: &mut Option<String>) {
    if let Some(s) = e.as_mut() {
        if s.len() > MAX_ERROR_BYTES {
            *s = truncate_error(s);
        }
    }
}

/// The commit a cluster last ran successfully from: the `commit_sha` of its latest run that
/// ended `Succeeded`. The store records it in the same flush as that run's terminal write
/// ([`crate::store::Store::deployed`]), so it is never behind the run records, also after a
/// crash. A queued run of the cluster re-plans against it (the bot's start gate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployedCommit {
    /// The commit the run was pinned to ([`RunRecord::commit_sha`]).
    pub commit_sha: String,
    /// The run that succeeded; `None` for a fact imported from an earlier journal
    /// ([`crate::store::Store::import_deployed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// When that run finished ([`RunRecord::finished_at`]); `None` when imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

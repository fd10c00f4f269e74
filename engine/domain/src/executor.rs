//! The executor contract between the engine and the providers: one [`StepExecutor`] per
//! provider, called once per attempt with a [`StepContext`], answering with an output or a
//! [`StepError`], and reporting progress through a [`ProgressSink`].
//!
//! A workflow step (`workflows/*.yaml`) is rendered into a [`StepSpec`] at plan time (no I/O, no
//! credentials). The engine (`tkgops-engine`) executes it by calling the executor registered for
//! its `kind`. Executors must be idempotent: an attempt can be repeated after a crash
//! (at-least-once execution; deterministic names, client tokens and server-side apply make the
//! effect exactly-once).
//!
//! The contract lives in the domain (not in the engine) so that the providers depend on it
//! without depending on the engine and its storage: it is plain data, one closure type and one
//! `async_trait` (a macro that boxes futures; no runtime), so the domain stays free of async
//! runtime, network and storage crates.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::step::{RetryPolicy, StepInputs, StepKind, StepSpec};

/// Receives free-text progress of a running step (e.g. "control plane 1/3 ready"); the bot
/// shows the latest line in the live step table. Cheap to clone.
#[derive(Clone)]
pub struct ProgressSink(Arc<dyn Fn(&str) + Send + Sync>);

impl ProgressSink {
    /// A sink calling `f` with each progress line.
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        ProgressSink(Arc::new(f))
    }
    /// A sink that discards everything.
    pub fn noop() -> Self {
        ProgressSink(Arc::new(|_| {}))
    }
    /// Reports one progress line. Must never contain secrets.
    pub fn report(&self, line: &str) {
        (self.0)(line)
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// Everything an executor gets for one attempt.
#[derive(Clone, Debug)]
pub struct StepContext {
    /// The run's id (deterministic; usable as an idempotency key prefix).
    pub run_id: String,
    /// The workload cluster the run is for.
    pub cluster: String,
    /// The commit the run is pinned to (the merge commit).
    pub commit_sha: String,
    /// The step being executed.
    pub step: StepSpec,
    /// Attempt number, starting at 1.
    pub attempt: u32,
    /// Outputs of the run's earlier, succeeded steps, by step id.
    pub outputs: BTreeMap<String, serde_json::Value>,
    /// Where to report progress.
    pub progress: ProgressSink,
}

impl StepContext {
    /// An idempotency key for this step of this run, stable across attempts and restarts
    /// (e.g. for AWS client tokens): `<run_id>/<step id>`.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.run_id, self.step.id)
    }
}

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StepError {
    /// Worth retrying (5xx, throttling, connection errors, conflicts that resolve).
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (invalid input, resource in a failed state, 4xx other than
    /// throttling); the step fails at once with this message shown on the PR.
    #[error("{0}")]
    Permanent(String),
}

impl StepError {
    /// Whether the engine should retry after this error.
    pub fn is_transient(&self) -> bool {
        matches!(self, StepError::Transient(_))
    }
}

/// Executes the steps of the kinds it declares. Implemented once per provider.
#[async_trait::async_trait]
pub trait StepExecutor: Send + Sync {
    /// The step kinds this executor handles (e.g. `[KubeApply, KubeWaitCluster]`). The engine
    /// routes each step to the first registered executor declaring its kind, and the set of
    /// executable kinds the planner uses is the union over the registered executors.
    fn kinds(&self) -> &'static [StepKind];

    /// Runs one attempt of `ctx.step` and returns its output (secret-free JSON, persisted and
    /// passed to later steps as `ctx.outputs[step id]`).
    ///
    /// Errors: [`StepError::Transient`] to be retried within the step's [`RetryPolicy`],
    /// [`StepError::Permanent`] to fail the step at once. The engine enforces the timeout.
    async fn execute(&self, ctx: &StepContext) -> Result<serde_json::Value, StepError>;
}

//! The executor contract between the engine and the providers: one [`ExecutorTable`] routing
//! every step kind to the provider method that executes it (typed inputs in, typed output out),
//! run by the engine through the object-safe [`StepExecutor`] once per attempt with a
//! [`StepContext`], answering with the output as JSON or a [`StepError`], and reporting progress
//! through a [`ProgressSink`].
//!
//! A workflow step (`workflows/*.yaml`) is rendered into a [`StepSpec`] at plan time (no I/O, no
//! credentials). The engine (`tkgops-engine`) executes it by calling its one executor, which
//! [`dispatch`]es on the step's kind. Executors must be idempotent: an attempt can be repeated
//! after a crash (at-least-once execution; deterministic names, client tokens and server-side
//! apply make the effect exactly-once).
//!
//! The contract lives in the domain (not in the engine) so that the providers depend on it
//! without depending on the engine and its storage: it is plain data, one closure type and one
//! `async_trait` (a macro that boxes futures; no runtime), so the domain stays free of async
//! runtime, network and storage crates.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::output::{OutputMismatch, StepOutput};
pub use crate::step::{dispatch, ExecutorTable, RetryPolicy, StepInputs, StepKind, StepSpec};

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

/// What the engine runs steps through: one attempt of `ctx.step`, answered with its output as
/// JSON. Object-safe, so the engine holds one `Arc<dyn StepExecutor>`.
///
/// Every [`ExecutorTable`] is a `StepExecutor` (it [`dispatch`]es on the step's kind), which is
/// how the bot's executors reach the engine. Implement it directly only for test doubles that
/// script raw outputs for any kind.
#[async_trait::async_trait]
pub trait StepExecutor: Send + Sync {
    /// Runs one attempt of `ctx.step` and returns its output (secret-free JSON, persisted and
    /// passed to later steps as `ctx.outputs[step id]`).
    ///
    /// Errors: [`StepError::Transient`] to be retried within the step's [`RetryPolicy`],
    /// [`StepError::Permanent`] to fail the step at once. The engine enforces the timeout.
    async fn execute(&self, ctx: &StepContext) -> Result<serde_json::Value, StepError>;
}

#[async_trait::async_trait]
impl<T: ExecutorTable + ?Sized> StepExecutor for T {
    /// [`dispatch`]: the table's method for the step's kind, its output as JSON.
    async fn execute(&self, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        dispatch(self, ctx).await
    }
}

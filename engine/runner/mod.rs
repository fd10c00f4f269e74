//! The step engine: one explicit state machine per step, retries with backoff, resume after a crash.

pub mod step;

pub use step::{ProgressSink, RetryPolicy, StepContext, StepError, StepExecutor, StepSpec};

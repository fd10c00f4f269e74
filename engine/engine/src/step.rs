//! The executor contract, re-exported from the domain ([`tkgops_domain::executor`]) where it
//! lives, so that the providers implement it without depending on the engine: one
//! [`ExecutorTable`] routing every kind to its provider, which the engine runs as its one
//! [`StepExecutor`], called with a [`StepContext`] once per attempt.

pub use tkgops_domain::executor::{
    dispatch, ExecutorTable, ProgressSink, RetryPolicy, StepContext, StepError, StepExecutor,
    StepInputs, StepKind, StepSpec,
};

//! The executor contract, re-exported from the domain ([`tkgops_domain::executor`]) where it
//! lives, so that the providers implement it without depending on the engine: one
//! [`StepExecutor`] per provider, called with a [`StepContext`] once per attempt.

pub use tkgops_domain::executor::{
    ProgressSink, RetryPolicy, StepContext, StepError, StepExecutor, StepInputs, StepKind, StepSpec,
};

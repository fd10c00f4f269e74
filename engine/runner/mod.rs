//! The step engine: one explicit state machine per step, retries with backoff, resume after a crash.
//!
//! - [`step`]: the fixed executor contract ([`StepSpec`], [`StepExecutor`], …).
//! - [`fsm`]: the run and step transition tables.
//! - [`engine`]: the [`Engine`] (scheduling, per-cluster queues, durable execution, resume).

#![warn(missing_docs)]

pub mod engine;
pub mod fsm;
pub mod step;

pub use engine::{backoff_delay, Engine, EngineError, NoopObserver, RunObserver, RunRequest};
pub use fsm::{run_transition, step_transition, InvalidTransition, RunEvent, StepEvent};
pub use step::{ProgressSink, RetryPolicy, StepContext, StepError, StepExecutor, StepSpec};

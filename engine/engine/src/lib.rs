//! tkgops-engine: the durable step engine and its journal.
//!
//! - [`step`]: the executor contract ([`ExecutorTable`], [`StepExecutor`], [`StepContext`],
//!   [`StepError`]),
//!   re-exported from the domain ([`tkgops_domain::executor`]), where it lives so that the
//!   providers need not depend on the engine; the step itself ([`StepSpec`]) is the domain's.
//! - [`fsm`]: the run and step transition tables.
//! - [`runner`]: the [`Engine`] (scheduling, per-cluster queues, durable execution, resume).
//! - [`store`]: the [`Store`] seam and its sled implementation.
//!
//! The engine knows runs and their origin as opaque data: it never knows about pull requests.

#![warn(missing_docs)]

pub mod fsm;
pub mod runner;
pub mod step;
pub mod store;

pub use fsm::{run_transition, step_transition, InvalidTransition, RunEvent, StepEvent};
pub use runner::{
    backoff_delay, CancelOutcome, Engine, EngineError, GateDecision, NoopObserver, RunObserver,
    RunRequest, StartGate, CANCEL_PREFIX,
};
pub use step::{
    dispatch, ExecutorTable, ProgressSink, RetryPolicy, StepContext, StepError, StepExecutor,
    StepInputs, StepKind, StepSpec,
};
pub use store::{
    AttemptRecord, RunRecord, RunState, SledStore, StepRecord, StepState, Store, StoreError,
};

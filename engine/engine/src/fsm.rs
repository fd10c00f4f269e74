//! Explicit transition tables of the run and step lifecycles.
//!
//! Every state change the engine persists goes through [`step_transition`] or
//! [`run_transition`]; anything not in the table is an [`InvalidTransition`].
//!
//! Step table (retries and resumes are events within `Running`):
//!
//! | from      | event                   | to        |
//! |-----------|-------------------------|-----------|
//! | Pending   | Start                   | Running   |
//! | Running   | AttemptFailedRetrying   | Running   |
//! | Running   | Resume                  | Running   |
//! | Running   | Succeed                 | Succeeded |
//! | Running   | Fail                    | Failed    |
//! | Pending   | Cancel                  | Cancelled |
//! | Running   | Cancel                  | Cancelled |
//! | Failed    | Retry                   | Pending   |
//! | Cancelled | Retry                   | Pending   |
//!
//! `Retry` is a person's `/tkgops retry` of a failed run: its failed step and the steps
//! cancelled after it start over (succeeded steps keep their output); their earlier attempts
//! stay in the record but no longer count against the retry budget.
//!
//! Run table:
//!
//! | from    | event   | to        |
//! |---------|---------|-----------|
//! | Queued  | Start   | Running   |
//! | Running | Resume  | Running   |
//! | Running | Succeed | Succeeded |
//! | Running | Fail    | Failed    |
//! | Queued  | Cancel  | Cancelled |
//! | Running | Cancel  | Cancelled |
//! | Failed  | Retry   | Queued    |
//!
//! A `Running` run is cancelled only at a step boundary (before its next step starts), never
//! in the middle of a step's side effect.

use crate::store::{RunState, StepState};

/// What happened to a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepEvent {
    /// The first attempt is about to start.
    Start,
    /// An attempt failed transiently (or timed out) and another attempt will follow.
    AttemptFailedRetrying,
    /// The bot restarted and found the step `Running`: its in-flight attempt (if any) is marked
    /// interrupted and a new attempt follows.
    Resume,
    /// An attempt succeeded.
    Succeed,
    /// A permanent error, or the retry budget is exhausted.
    Fail,
    /// An earlier step failed or the run was cancelled.
    Cancel,
    /// The run is retried after it failed: the step runs again from its first attempt budget.
    Retry,
}

/// What happened to a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunEvent {
    /// The run's cluster is free; its first unfinished step is about to start.
    Start,
    /// The bot restarted and found the run `Running`.
    Resume,
    /// Every step succeeded.
    Succeed,
    /// A step failed.
    Fail,
    /// The run was cancelled (while queued, or at a step boundary while running).
    Cancel,
    /// A person asked to retry the failed run from its failed step.
    Retry,
}

/// A transition missing from the table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {machine} transition: {from} + {event}")]
pub struct InvalidTransition {
    /// `"step"` or `"run"`.
    pub machine: &'static str,
    /// The current state, as `Debug` text.
    pub from: String,
    /// The rejected event, as `Debug` text.
    pub event: String,
}

/// The step state after `event` in state `from`.
///
/// Errors: [`InvalidTransition`] if the table has no such transition (e.g. any event on a
/// terminal state, `Succeed` on `Pending`).
pub fn step_transition(from: StepState, event: StepEvent) -> Result<StepState, InvalidTransition> {
    use StepEvent as E;
    use StepState as S;
    match (from, event) {
        (S::Pending, E::Start) => Ok(S::Running),
        (S::Running, E::AttemptFailedRetrying) => Ok(S::Running),
        (S::Running, E::Resume) => Ok(S::Running),
        (S::Running, E::Succeed) => Ok(S::Succeeded),
        (S::Running, E::Fail) => Ok(S::Failed),
        (S::Pending | S::Running, E::Cancel) => Ok(S::Cancelled),
        (S::Failed | S::Cancelled, E::Retry) => Ok(S::Pending),
        _ => Err(InvalidTransition {
            machine: "step",
            from: format!("{from:?}"),
            event: format!("{event:?}"),
        }),
    }
}

/// The run state after `event` in state `from`.
///
/// Errors: [`InvalidTransition`] if the table has no such transition (e.g. any event on a
/// terminal state, `Succeed` on `Queued`).
pub fn run_transition(from: RunState, event: RunEvent) -> Result<RunState, InvalidTransition> {
    use RunEvent as E;
    use RunState as S;
    match (from, event) {
        (S::Queued, E::Start) => Ok(S::Running),
        (S::Running, E::Resume) => Ok(S::Running),
        (S::Running, E::Succeed) => Ok(S::Succeeded),
        (S::Running, E::Fail) => Ok(S::Failed),
        (S::Queued | S::Running, E::Cancel) => Ok(S::Cancelled),
        (S::Failed, E::Retry) => Ok(S::Queued),
        _ => Err(InvalidTransition {
            machine: "run",
            from: format!("{from:?}"),
            event: format!("{event:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP_STATES: [StepState; 5] = [
        StepState::Pending,
        StepState::Running,
        StepState::Succeeded,
        StepState::Failed,
        StepState::Cancelled,
    ];
    const STEP_EVENTS: [StepEvent; 7] = [
        StepEvent::Start,
        StepEvent::AttemptFailedRetrying,
        StepEvent::Resume,
        StepEvent::Succeed,
        StepEvent::Fail,
        StepEvent::Cancel,
        StepEvent::Retry,
    ];

    #[test]
    fn terminal_step_states_accept_only_a_retry_of_an_unfinished_step() {
        for s in STEP_STATES.iter().filter(|s| s.is_terminal()) {
            for e in STEP_EVENTS {
                let expected_ok =
                    e == StepEvent::Retry && matches!(s, StepState::Failed | StepState::Cancelled);
                assert_eq!(step_transition(*s, e).is_ok(), expected_ok, "{s:?} + {e:?}");
            }
        }
        assert_eq!(
            step_transition(StepState::Failed, StepEvent::Retry),
            Ok(StepState::Pending)
        );
    }

    #[test]
    fn step_table_is_exact() {
        let valid = STEP_STATES
            .iter()
            .flat_map(|s| STEP_EVENTS.iter().map(move |e| (*s, *e)))
            .filter(|(s, e)| step_transition(*s, *e).is_ok())
            .count();
        assert_eq!(valid, 9);
        assert!(step_transition(StepState::Pending, StepEvent::Succeed).is_err());
        assert!(step_transition(StepState::Pending, StepEvent::Resume).is_err());
        assert!(step_transition(StepState::Running, StepEvent::Start).is_err());
    }

    #[test]
    fn run_table() {
        assert_eq!(
            run_transition(RunState::Queued, RunEvent::Start),
            Ok(RunState::Running)
        );
        assert!(run_transition(RunState::Queued, RunEvent::Succeed).is_err());
        assert!(run_transition(RunState::Succeeded, RunEvent::Start).is_err());
        assert!(run_transition(RunState::Failed, RunEvent::Resume).is_err());
        assert_eq!(
            run_transition(RunState::Failed, RunEvent::Retry),
            Ok(RunState::Queued)
        );
        assert!(run_transition(RunState::Cancelled, RunEvent::Retry).is_err());
        assert!(run_transition(RunState::Succeeded, RunEvent::Retry).is_err());
        assert!(run_transition(RunState::Running, RunEvent::Retry).is_err());
    }
}

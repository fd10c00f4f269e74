//! The step contract: what the planner renders for each workflow step ([`StepSpec`]) and how
//! often it may be tried ([`RetryPolicy`]). The engine persists it; the providers execute it.

use serde::{Deserialize, Serialize};

/// Retry policy of a step: attempts with exponential backoff on transient errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total attempts including the first (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt, in seconds; doubled after each failed attempt.
    pub initial_backoff_secs: f64,
    /// Upper bound of the delay between attempts, in seconds.
    pub max_backoff_secs: f64,
}

impl Default for RetryPolicy {
    /// 5 attempts, 2 s initial backoff, 60 s cap.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff_secs: 2.0,
            max_backoff_secs: 60.0,
        }
    }
}

/// One step of a plan, fully rendered: what the engine persists and executes.
///
/// `inputs` is secret-free by construction (it is shown on the PR and stored in sled); secrets
/// such as workload kubeconfigs and API tokens are read by the executor at run time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSpec {
    /// Step id, unique within the workflow (e.g. `apply-cluster`).
    pub id: String,
    /// Executor kind (e.g. `aws.preflight`, `kube.apply`, `tmc.attach`, `packages.rollout`).
    pub kind: String,
    /// Human-readable title shown in the PR comment.
    pub title: String,
    /// Deadline of one attempt, in seconds.
    pub timeout_secs: u64,
    /// Retry policy on transient errors.
    pub retry: RetryPolicy,
    /// Kind-specific inputs rendered from the workflow's templates.
    pub inputs: serde_json::Value,
}

//! tkgops-domain: what tkgops knows about TKG cluster requests, without any I/O.
//!
//! - [`request`]: the config repository format (cluster requests, `tkgops.yaml`) and the
//!   reference-design rules.
//! - [`workflow`]: the workflow catalog, intents, plans and the PR comment Markdown.
//! - [`tkg`]: TKG 2.x releases, ClusterClasses, TKRs and the CLI's flat-variable mapping.
//! - [`schedule`]: scheduled upgrade runs: `schedules` of `tkgops.yaml`, fire times in a time
//!   zone, maintenance windows, upgrade targets, waves and bump pull requests.
//! - [`waves`]: `action: apply` of a schedule: a fire's progress wave by wave (an explicit
//!   state machine) and the soak's health judgement.
//! - [`wait`]: the verdicts of every wait (Cluster ready, control plane and MachineDeployments
//!   rolled, PackageInstalls reconciled or deleted, TMC cluster ready or gone), pure functions of
//!   what was observed and when.
//! - [`step`]: the step contract the engine persists and the providers execute: each kind's
//!   typed inputs and output, and the executor routing table ([`step::ExecutorTable`]).
//! - [`output`]: the typed output of every step kind and its one-line run-comment summary.
//! - [`executor`]: the executor contract ([`executor::ExecutorTable`],
//!   [`executor::StepExecutor`], [`executor::StepContext`], [`executor::StepError`],
//!   [`executor::ProgressSink`]) the engine calls and the providers implement.
//! - [`drift`]: where a deployed cluster's live state differs from Git (the drift scan's pure
//!   comparisons).
//! - [`files`]: how files reach the domain (a git tree, a directory): the [`files::TreeReader`]
//!   trait its callers implement.
//!
//! This crate depends on no async runtime, network, git or storage crate (see the workspace
//! `Cargo.toml`); everything here is a function of its inputs.

pub mod drift;
pub mod executor;
pub mod files;
pub mod output;
pub mod request;
pub mod schedule;
pub mod serde_duration;
pub mod step;
pub mod tkg;
pub mod wait;
pub mod waves;
pub mod workflow;

//! The bot's reconcilers, one per kind of [`Key`] (the kube-runtime controller shape): each
//! reads the object its key names from the last observation ([`crate::context::Observed`])
//! and the journal, does its work idempotently, and answers an [`Action`].
//!
//! | key | reconciler | does |
//! |---|---|---|
//! | [`Key::Sync`] | [`sync`] | reads the default branch and GitHub's lists; only enqueues the keys below |
//! | [`Key::Merge`] (merge commit) | [`merge`] | judges a merge under the trusted policy and submits its runs |
//! | [`Key::PolicyChain`] | [`sync`] | the trusted policy after the merges; enqueues the schedules |
//! | [`Key::PullPlan`] (number, head SHA) | [`pull_plan`] | plans a pull request's head, posts the sticky comment and status |
//! | [`Key::Schedule`] (schedule) | [`schedule`] | fires a schedule (propose, or apply wave by wave: [`wave`]) |
//! | [`Key::Drift`] | [`drift`] | compares every deployed cluster with Git (on `driftScanInterval`) |
//! | [`Key::Dashboard`] | [`schedule`] | the fleet dashboard issue and the halts reported on it |
//! | [`Key::Command`] (comment id) | [`command`] | answers a `/tkgops` command |
//! | merge commit (its own queue) | [`publish`] | the run comment and `tkgops/apply` status of a merge commit |
//!
//! Keys due at the same time run in key order (the variant order above): merges in the order
//! they entered the default branch, then the policy chain they leave, then the plans that read
//! it. Merges and commands are ordered families: one that fails holds the later ones of its
//! family back until it succeeds (a merge is never judged under a policy an earlier merge has
//! not left yet; the comment cursor never passes an unanswered command).

pub mod command;
pub mod drift;
pub mod merge;
pub mod publish;
pub mod pull_plan;
pub mod schedule;
pub mod sync;
pub mod wave;

use std::time::Duration;

use crate::context::Context;
use crate::scheduler::Action;
use crate::{BotError, HeadSha, MergeSha};

/// How long a failed key waits before it is reconciled again (a poll enqueues it sooner).
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The shortest requeue delay: a reconciler asking for "again now" waits this long, so one
/// pass always ends.
pub const MIN_REQUEUE: Duration = Duration::from_secs(1);

/// A piece of the bot's work. The variant order is the order keys due at the same instant run
/// in (module docs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// Read the default branch and GitHub's pull request and comment lists.
    Sync,
    /// Execute the merge of pull request `pr` as merge commit `commit`, the `position`-th
    /// merge (oldest first) of the observation that found it.
    Merge {
        /// Position in the order the merges entered the default branch.
        position: usize,
        /// The pull request's number.
        pr: u64,
        /// The merge commit.
        commit: MergeSha,
    },
    /// Check the trusted policy chain at the observed tip, after the merges.
    PolicyChain,
    /// Plan head `head` of open pull request `number`.
    PullPlan {
        /// The pull request's number.
        number: u64,
        /// The head SHA to plan.
        head: HeadSha,
    },
    /// Fire (or advance the fires of) the trusted policy's schedule `name`, the
    /// `position`-th in `tkgops.yaml` (schedules tick in the order the policy lists them).
    Schedule {
        /// Position in the policy's `schedules`.
        position: usize,
        /// The schedule's name in `tkgops.yaml`.
        name: String,
    },
    /// Scan the deployed clusters for drift when a scan is due ([`drift`]).
    Drift,
    /// Update the fleet dashboard issue and report halts on it.
    Dashboard,
    /// Answer the `/tkgops` command in comment `comment_id` (GitHub's comment ids grow with
    /// creation time, so commands are answered in the order they were posted).
    Command {
        /// The comment's id.
        comment_id: u64,
    },
}

/// An ordered family of keys ([`Key::family`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// [`Key::Merge`].
    Merges,
    /// [`Key::Command`].
    Commands,
}

impl Key {
    /// The ordered family of the key, if any: a failure holds back the later keys of its
    /// family.
    pub fn family(&self) -> Option<Family> {
        match self {
            Key::Merge { .. } => Some(Family::Merges),
            Key::Command { .. } => Some(Family::Commands),
            _ => None,
        }
    }

    /// Whether a failure of the key fails the poll ([`crate::Bot::poll_once`]): the sync and
    /// the policy chain, which every other key reads.
    pub fn fails_poll(&self) -> bool {
        matches!(self, Key::Sync | Key::PolicyChain)
    }

    /// What the log says when the key failed.
    pub fn failure_hint(&self) -> &'static str {
        match self {
            Key::Sync | Key::PolicyChain => "reading GitHub or the policy chain failed",
            Key::Merge { .. } => {
                "handling the merge failed; it and the merges after it are tried again"
            }
            Key::PullPlan { .. } => "planning failed; will retry",
            Key::Schedule { .. } => "schedule tick failed; will retry",
            Key::Drift => "the drift scan failed; will retry",
            Key::Dashboard => "updating the dashboard failed; will retry",
            Key::Command { .. } => {
                "handling a command failed; it and the commands after it are tried again"
            }
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Sync => f.write_str("sync"),
            Key::Merge { pr, commit, .. } => write!(f, "merge/{pr}@{}", commit.short()),
            Key::PolicyChain => f.write_str("policy-chain"),
            Key::PullPlan { number, head } => write!(f, "plan/{number}@{}", head.short()),
            Key::Schedule { name, .. } => write!(f, "schedule/{name}"),
            Key::Drift => f.write_str("drift"),
            Key::Dashboard => f.write_str("dashboard"),
            Key::Command { comment_id } => write!(f, "command/{comment_id}"),
        }
    }
}

/// What a reconciler answered: its [`Action`], and the keys it found work for (only the sync
/// and policy-chain reconcilers find any).
#[derive(Debug)]
pub struct Outcome {
    /// Requeue the key, or wait for the next change.
    pub action: Action,
    /// Keys to reconcile now.
    pub enqueue: Vec<Key>,
}

impl From<Action> for Outcome {
    fn from(action: Action) -> Outcome {
        Outcome {
            action,
            enqueue: Vec::new(),
        }
    }
}

/// Reconciles `key` with its reconciler (the table in the module docs).
///
/// Errors: the reconciler's [`BotError`]; the caller requeues the key.
pub async fn reconcile(cx: &Context, key: &Key) -> Result<Outcome, BotError> {
    match key {
        Key::Sync => sync::Sync { cx }.reconcile().await,
        Key::Merge {
            position,
            pr,
            commit,
        } => {
            // Every event of the merge's handling (and of its runs' submission) names it.
            let span = tracing::info_span!("merge", pr = *pr, merge_commit = %commit.as_str());
            tracing::Instrument::instrument(
                merge::MergeReconciler { cx }.reconcile(*position, *pr),
                span,
            )
            .await
            .map(Outcome::from)
        }
        Key::PolicyChain => sync::Sync { cx }.policy_chain().await,
        Key::PullPlan { number, head } => {
            let span = tracing::info_span!("pull_plan", pr = *number, head = %head.as_str());
            tracing::Instrument::instrument(
                pull_plan::PullPlanReconciler { cx }.reconcile(*number, head),
                span,
            )
            .await
            .map(Outcome::from)
        }
        Key::Schedule { name, .. } => schedule::ScheduleReconciler { cx }
            .reconcile(name)
            .await
            .map(Outcome::from),
        Key::Drift => drift::DriftReconciler { cx }.reconcile().await,
        Key::Dashboard => schedule::ScheduleReconciler { cx }
            .dashboard()
            .await
            .map(Outcome::from),
        Key::Command { comment_id } => command::CommandReconciler { cx }
            .reconcile(*comment_id)
            .await
            .map(Outcome::from),
    }
}

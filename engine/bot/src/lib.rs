//! tkgops: the bot. The pull-request loop (poll GitHub, plan each new head SHA, run on merge,
//! report back), its configuration, the git mirror ([`gitops`]) and `tkgops serve`.
//!
//! This is the only crate that knows about pull requests. It is built like a kube-runtime
//! controller: work is keys in a [`scheduler::Scheduler`] (deduped, delayed, run in key order),
//! and each kind of key has its reconciler in [`reconcile`], which answers an
//! [`scheduler::Action`]. A poll, an accepted webhook or a finished run only enqueues the sync
//! key; the sync reconciler reads the default branch and GitHub's lists and enqueues:
//! 1. every merge since the cursor, in the order it entered the default branch: re-judged under
//!    the trusted policy (security rule 1), its approved cluster plans submitted as runs pinned
//!    to the merge commit (rule 2); fork PRs are never executed (rule 3), destructive intents
//!    need `approval.destructiveApprovals` (rule 6);
//! 2. the policy chain after those merges, then each schedule of the trusted policy and the
//!    fleet dashboard;
//! 3. every open pull request's head SHA: planned once without credentials, with its sticky
//!    comment and commit status `tkgops/plan`;
//! 4. every comment since the comment cursor: `/tkgops` commands.
//!
//! Run progress comes back through [`reconcile::publish::CommentPublisher`], the engine's
//! observer, itself a reconciler keyed by merge commit.

/// A type that works on the bot's [`context::Context`] (a reconciler, or a group of shared
/// operations): a borrowed context it dereferences to.
macro_rules! on_context {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        pub(crate) struct $name<'a> {
            pub(crate) cx: &'a crate::context::Context,
        }

        impl std::ops::Deref for $name<'_> {
            type Target = crate::context::Context;
            fn deref(&self) -> &crate::context::Context {
                self.cx
            }
        }
    };
}

pub mod approval;
pub mod cli;
pub mod config;
pub mod context;
pub mod drift_watch;
pub mod executors;
pub mod gitops;
pub mod history;
pub mod journal;
pub mod lease;
pub mod local;
pub mod logs;
pub mod memo;
pub mod metrics;
pub mod reconcile;
pub mod redact;
pub mod replan;
pub mod scheduler;
pub mod schemas;
pub mod secrets;
pub mod serve;
pub mod sha;
#[cfg(test)]
mod testing;
pub mod trust;
pub mod validate_format;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::context::Context;
use crate::gitops::{ConfigRepo, GitError};
pub use journal::{BotJournal, MergeRecord, NotRun};
pub use sha::{HeadSha, MergeSha, PolicySha};
use tkgops_domain::request::{Finding, Severity, ALLOW_DELETE_LABEL};
use tkgops_domain::workflow::markdown::NotRunView;
use tkgops_domain::workflow::plan::{ClusterPlan, PlanStatus};
use tkgops_domain::workflow::{plan, Catalog, IntentKind, Plan, PlanInput};
use tkgops_engine::store::Store;
use tkgops_engine::Engine;
use tkgops_github::{GitHub, PullRequest, RepoInfo};

pub use config::BotConfig;

/// Commit status context of plans.
pub const PLAN_CONTEXT: &str = "tkgops/plan";
/// Commit status context of runs (set on the merge commit).
pub const APPLY_CONTEXT: &str = "tkgops/apply";

/// Errors of one poll.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// A GitHub call failed after its retries.
    #[error("github: {0}")]
    GitHub(String),
    /// A git operation failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// The engine refused a run.
    #[error("engine: {0}")]
    Engine(String),
    /// Rendering a comment failed.
    #[error("render: {0}")]
    Render(String),
}

/// The parts a [`Bot`] is assembled from (see [`serve::build`]).
pub struct BotParts {
    /// GitHub client.
    pub github: Arc<dyn GitHub>,
    /// The bare mirror of the config repository.
    pub git: ConfigRepo,
    /// The bot's journal (and, through it, the engine's store of the same database).
    pub journal: BotJournal,
    /// The step engine.
    pub engine: Engine,
    /// Workflows and templates.
    pub catalog: Arc<Catalog>,
    /// The GitHub repository: its default branch is the desired state, its full name tells
    /// fork PRs apart.
    pub repo: RepoInfo,
    /// The executors, updated with the management clusters of every default-branch commit.
    pub executors: Arc<executors::Executors>,
    /// The single writer of run comments and `tkgops/apply` statuses.
    pub publisher: reconcile::publish::CommentPublisher,
    /// The bot configuration's `trustedPolicyCommit`: the trusted policy commit at the first
    /// start (or when the pin changes) instead of the default branch's tip.
    pub pinned_policy: Option<String>,
    /// The bot's metrics (`GET /metrics`); the engine's observer reports to the same
    /// ([`metrics::MetricsObserver`]).
    pub metrics: Arc<metrics::Metrics>,
}

/// The bot: one config repository, one GitHub repository, one engine. Its work is keys in a
/// [`scheduler::Scheduler`], each reconciled by its reconciler ([`reconcile`]); a poll (or a
/// webhook, or a finished run) only enqueues the sync key.
pub struct Bot {
    cx: Context,
    queue: std::sync::Mutex<scheduler::Scheduler<reconcile::Key>>,
}

/// Aborts a background task when dropped (the drift wake-up ends with [`Bot::run`]).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Bot {
    /// Assembles a bot from its parts.
    pub fn new(parts: BotParts) -> Bot {
        let BotParts {
            github,
            git,
            journal,
            engine,
            catalog,
            repo,
            executors,
            publisher,
            pinned_policy,
            metrics,
        } = parts;
        let cx = Context {
            github,
            git,
            store: journal.store(),
            journal,
            engine,
            catalog,
            default_branch: repo.default_branch,
            full_name: repo.full_name,
            executors,
            wake: publisher.wake(),
            publisher,
            ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            clock: std::sync::Mutex::new(reconcile::schedule::system_clock()),
            wave_plan: memo::Memo::new(),
            pinned_policy,
            policy_cache: memo::Memo::new(),
            fleet_cache: memo::Memo::new(),
            policy_health: Arc::new(trust::PolicyHealth::default()),
            observed: Default::default(),
            metrics,
            tkr_of_deployed: Default::default(),
            drift_interval: Default::default(),
            drift_last: Default::default(),
            drift_targets: tokio::sync::watch::channel(Default::default()).0,
            drift_woken: Default::default(),
            drift_wake: Default::default(),
            drift_watching: Arc::new(tokio::sync::watch::channel(Default::default()).0),
        };
        Bot {
            cx,
            queue: Default::default(),
        }
    }

    /// Replaces the clock schedules fire by (the system clock by default): a simulated clock
    /// makes scheduled stories and tests finish in seconds.
    pub fn set_clock(&self, clock: reconcile::schedule::Clock) {
        *self.cx.clock.lock().unwrap_or_else(|e| e.into_inner()) = clock;
    }

    /// Turns the drift scan on every `interval` (`None` or zero: off), the first one interval
    /// from now ([`reconcile::drift`]).
    pub fn set_drift_interval(&self, interval: Option<Duration>) {
        let interval = interval.filter(|d| !d.is_zero());
        *self
            .cx
            .drift_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = interval;
        *self.cx.drift_last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(tokio::time::Instant::now());
    }

    /// The deployed clusters whose Cluster the drift wake-up watches ([`drift_watch`]): a
    /// change of one of them outside tkgops wakes a drift scan of it. Empty while drift scans
    /// are off or [`Bot::run`] is not running.
    pub fn drift_watching(
        &self,
    ) -> tokio::sync::watch::Receiver<std::collections::BTreeSet<String>> {
        self.cx.drift_watching.subscribe()
    }

    /// The state of the bot's HTTP server: webhooks verified with `webhook_secret` (`None`
    /// refuses every delivery), recorded in the bot's journal, waking its poll loop; `/readyz`
    /// answers 200 once a poll completed.
    pub fn webhook_state(&self, webhook_secret: Option<String>) -> webhook::WebhookState {
        self.webhook_state_with(secrets::RotatingSecret::fixed(webhook_secret))
    }

    /// As [`Bot::webhook_state`], with deliveries verified against `webhook_secret` as it is now
    /// (a secret file is read again when it changes: [`secrets::RotatingSecret`]).
    pub fn webhook_state_with(
        &self,
        webhook_secret: secrets::RotatingSecret,
    ) -> webhook::WebhookState {
        webhook::WebhookState::with_secret(
            webhook_secret,
            self.cx.journal.clone(),
            self.cx.wake.clone(),
            self.cx.ready.clone(),
        )
        .with_policy(self.cx.policy_health.clone())
        .with_metrics(self.cx.metrics.clone(), self.cx.store.clone())
    }

    /// The bot's metrics (what `GET /metrics` shows).
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.cx.metrics.clone()
    }

    /// The state of the trusted policy chain (what `/readyz` reports).
    pub fn policy_health(&self) -> Arc<trust::PolicyHealth> {
        self.cx.policy_health.clone()
    }

    /// The engine runs are submitted to.
    pub fn engine(&self) -> &Engine {
        &self.cx.engine
    }

    /// The engine's store: the runs (and each cluster's deployed commit).
    pub fn store(&self) -> Arc<dyn Store> {
        self.cx.store.clone()
    }

    /// The bot's journal (merge records, plans, cursors, the policy chain, schedule fires).
    pub fn journal(&self) -> &BotJournal {
        &self.cx.journal
    }

    /// The context the bot's reconcilers share.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Runs one poll: enqueues the sync key ([`reconcile::Key::Sync`]) and reconciles every
    /// key due, in key order, until none is due (the merges the sync found, the policy chain,
    /// the plans of open pull requests, the schedules, the dashboard, the commands). Errors of
    /// single keys are logged and the keys requeued; they do not stop the others.
    ///
    /// Errors: [`BotError`] when the default branch, the pull request lists or the policy
    /// chain cannot be read (the sync or policy-chain key failed).
    pub async fn poll_once(&self) -> Result<(), BotError> {
        self.enqueue(reconcile::Key::Sync, tokio::time::Instant::now());
        self.measured_poll().await
    }

    /// [`Bot::drain`] after the sync key was enqueued, measured as a poll: its duration, its
    /// result and, when it succeeded, the time of the last successful poll, the policy chain's
    /// state and the deployed clusters by TKR ([`metrics::Metrics`]).
    async fn measured_poll(&self) -> Result<(), BotError> {
        let began = std::time::Instant::now();
        let result = self.drain().await;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.cx.metrics.poll(began.elapsed(), result.is_ok(), unix);
        if result.is_ok() {
            self.cx.metrics.policy(&self.cx.policy_health);
            if let Err(e) = self.refresh_clusters_by_tkr().await {
                warn!(error = %e, "counting the deployed clusters by TKR failed");
            }
        }
        result
    }

    /// Counts the clusters of the default branch's tip that have a deployed commit (a run of
    /// theirs succeeded) by the `tkr` of their `tkgops.yaml` at that commit, into the
    /// clusters-by-TKR gauge. The TKR of each (cluster, deployed commit) is read once.
    ///
    /// Errors: [`BotError::Git`] when a commit cannot be read, [`BotError::Store`].
    async fn refresh_clusters_by_tkr(&self) -> Result<(), BotError> {
        let tip = self.cx.observed().tip.clone();
        if tip.is_empty() {
            return Ok(());
        }
        let deployed = self.cx.deployed_clusters(&tip).await?;
        let known = self
            .cx
            .tkr_of_deployed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let git = self.cx.git.clone();
        let tkrs = blocking(move || {
            use tkgops_domain::files::TreeReader;
            let mut tkrs = std::collections::BTreeMap::new();
            for key in deployed {
                if let Some(tkr) = known.get(&key) {
                    tkrs.insert(key, tkr.clone());
                    continue;
                }
                let path = format!("clusters/{}/tkgops.yaml", key.0);
                let tkr = git.tree(&key.1)?.read(&path).and_then(|bytes| {
                    tkgops_domain::request::parse_cluster_settings(&path, &bytes)
                        .ok()
                        .map(|s| s.tkr)
                });
                tkrs.insert(key, tkr);
            }
            Ok(tkrs)
        })
        .await?;
        let mut by_tkr = std::collections::BTreeMap::<String, i64>::new();
        for tkr in tkrs.values().flatten() {
            *by_tkr.entry(tkr.clone()).or_default() += 1;
        }
        self.cx.metrics.set_clusters_by_tkr(&by_tkr);
        *self
            .cx
            .tkr_of_deployed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = tkrs;
        Ok(())
    }

    /// Polls forever every `interval`, and at once after each accepted webhook delivery or
    /// finished run, until `shutdown` resolves; between polls, reconciles the keys requeued
    /// for later when they fall due. Once `shutdown` resolved no poll or key starts (a poll in
    /// progress finishes first), and the engine drains for up to `grace`
    /// ([`tkgops_engine::Engine::shutdown`]: no new step starts, a step still running after
    /// `grace` is cut and resumes at the next start).
    pub async fn run(
        &self,
        interval: Duration,
        grace: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        match self.republish_pending().await {
            Ok(0) => {}
            Ok(n) => info!(
                commits = n,
                "republishing run results GitHub had not accepted"
            ),
            Err(e) => warn!(error = %e, "reading unpublished run results failed"),
        }
        // The drift scan's wake-up from the shared Cluster watches, while drift scans are on.
        let drift_watch = self.cx.drift_interval().map(|_| {
            let task = tokio::spawn(
                drift_watch::DriftWatch {
                    executors: self.cx.executors.clone(),
                    store: self.cx.store.clone(),
                    targets: self.cx.drift_targets.subscribe(),
                    woken: self.cx.drift_woken.clone(),
                    notify: self.cx.drift_wake.clone(),
                    watching: self.cx.drift_watching.clone(),
                }
                .run(),
            );
            AbortOnDrop(task)
        });
        let mut next_sync = tokio::time::Instant::now();
        loop {
            // A stop requested while the last poll ran: take no new work.
            let stopping = tokio::select! {
                biased;
                _ = &mut shutdown => true,
                _ = std::future::ready(()) => false,
            };
            if stopping {
                break;
            }
            let now = tokio::time::Instant::now();
            let syncing = now >= next_sync;
            if syncing {
                self.enqueue(reconcile::Key::Sync, now);
                next_sync = now + interval;
            }
            let drained = if syncing {
                self.measured_poll().await
            } else {
                self.drain().await
            };
            match drained {
                Ok(()) if syncing => self
                    .cx
                    .ready
                    .store(true, std::sync::atomic::Ordering::Release),
                Ok(()) => {}
                Err(e) => warn!(error = %e, "poll failed; retrying at the next interval"),
            }
            let wake_at = self
                .lock_queue()
                .next_due()
                .map_or(next_sync, |t| t.min(next_sync));
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep_until(wake_at) => {}
                // A webhook is a hint: sync at once (state is re-read through the API).
                _ = self.cx.wake.notified() => next_sync = tokio::time::Instant::now(),
                // A deployed cluster's Cluster changed outside tkgops: scan it now.
                _ = self.cx.drift_wake.notified() => {
                    self.enqueue(reconcile::Key::Drift, tokio::time::Instant::now());
                }
            }
        }
        drop(drift_watch);
        info!("shutting down: draining in-flight steps");
        self.cx.engine.shutdown(grace).await;
    }

    /// Asks the publisher to (re)publish every merge commit whose final comment and status
    /// GitHub has not accepted yet ([`BotJournal::unpublished`]), e.g. because the previous
    /// bot process stopped while GitHub refused them. Returns how many.
    ///
    /// Errors: [`BotError::Store`] when the journal cannot be read.
    pub async fn republish_pending(&self) -> Result<usize, BotError> {
        let pending = self.cx.journal.unpublished().await?;
        for commit in &pending {
            self.cx.publisher.notify(commit);
        }
        Ok(pending.len())
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, scheduler::Scheduler<reconcile::Key>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, key: reconcile::Key, at: tokio::time::Instant) {
        self.lock_queue().schedule(key, at);
    }

    /// Reconciles every key due now, smallest first, until none is due. A failed key is
    /// requeued after [`reconcile::RETRY_AFTER`] (the sync and policy-chain keys are not: the
    /// next poll enqueues them), and holds back the keys after it of an ordered family
    /// (merges, commands) until it succeeds.
    ///
    /// Errors: the first error of the sync or policy-chain key.
    async fn drain(&self) -> Result<(), BotError> {
        let mut failed = None;
        let mut held: std::collections::BTreeSet<reconcile::Family> = Default::default();
        loop {
            let now = tokio::time::Instant::now();
            let Some(key) = self.lock_queue().pop_due(now) else {
                break;
            };
            if key.family().is_some_and(|f| held.contains(&f)) {
                self.enqueue(key, now + reconcile::RETRY_AFTER);
                continue;
            }
            match reconcile::reconcile(&self.cx, &key).await {
                Ok(out) => {
                    for k in out.enqueue {
                        self.enqueue(k, now);
                    }
                    if let scheduler::Action::Requeue(after) = out.action {
                        self.enqueue(key, now + after.max(reconcile::MIN_REQUEUE));
                    }
                }
                Err(e) => {
                    warn!(key = %key, error = %e, "{}", key.failure_hint());
                    if let Some(f) = key.family() {
                        held.insert(f);
                    }
                    if key.fails_poll() {
                        failed.get_or_insert(e);
                    } else {
                        self.enqueue(key, now + reconcile::RETRY_AFTER);
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// What plans a change: the git mirror, the workflows and templates, the step kinds the engine
/// can execute and the repository's full name. Cheap to clone.
#[derive(Clone)]
pub struct Planner {
    /// The bare mirror of the config repository.
    pub git: ConfigRepo,
    /// Workflows and templates (the bot's install).
    pub catalog: Arc<Catalog>,
    /// The step kinds the bot executes: every kind ([`executors::executable_kinds`]).
    pub executable: std::collections::BTreeSet<tkgops_engine::StepKind>,
    /// `owner/name` of the config repository.
    pub repository: String,
}

impl Planner {
    /// Plans `base..head` (commit SHAs) under the policy (`tkgops.yaml`) of commit `settings`,
    /// without credentials, with `history` for the rollout estimates (domain [`plan()`]).
    ///
    /// Errors: [`BotError::Git`] when a commit cannot be read.
    pub async fn plan(
        &self,
        base: String,
        head: String,
        settings: &PolicySha,
        history: tkgops_domain::workflow::RolloutHistory,
    ) -> Result<Plan, BotError> {
        self.plan_paths(base, head, settings.to_string(), history, None)
            .await
    }

    /// Plans only cluster `cluster`'s part of `base..head` (its `clusters/<cluster>/` files)
    /// under the policy of commit `settings`: what a queued run of that cluster re-plans.
    ///
    /// Errors: [`BotError::Git`] when a commit cannot be read.
    pub async fn plan_cluster(
        &self,
        base: String,
        head: String,
        settings: &PolicySha,
        cluster: &str,
    ) -> Result<Plan, BotError> {
        let prefix = format!("clusters/{cluster}/");
        self.plan_paths(
            base,
            head,
            settings.to_string(),
            Default::default(),
            Some(prefix),
        )
        .await
    }

    async fn plan_paths(
        &self,
        base: String,
        head: String,
        settings: String,
        history: tkgops_domain::workflow::RolloutHistory,
        only: Option<String>,
    ) -> Result<Plan, BotError> {
        let this = self.clone();
        blocking(move || {
            let git = &this.git;
            let mut changed = git.changed_paths(&base, &head)?;
            if let Some(prefix) = &only {
                changed.retain(|p| p.starts_with(prefix.as_str()));
            }
            let (bt, ht, st) = (git.tree(&base)?, git.tree(&head)?, git.tree(&settings)?);
            Ok(plan(&PlanInput {
                base: &bt,
                head: &ht,
                settings: &st,
                base_sha: &base,
                head_sha: &head,
                changed_paths: &changed,
                catalog: &this.catalog,
                executable: &this.executable,
                repository: &this.repository,
                history,
            }))
        })
        .await
    }
}

/// The first 7 characters of a commit SHA.
pub(crate) fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// Whether `pr` carries the label [`ALLOW_DELETE_LABEL`].
fn has_allow_delete(pr: &PullRequest) -> bool {
    pr.labels.iter().any(|l| l == ALLOW_DELETE_LABEL)
}

/// Blocks every delete of `p` with a `TKGOPS-DELETE` finding: the pull request lacks the label
/// [`ALLOW_DELETE_LABEL`] (a delete never runs without it).
fn refuse_deletes_without_label(p: &mut Plan) {
    for c in p
        .clusters
        .iter_mut()
        .filter(|c| c.intent == IntentKind::Delete)
    {
        c.findings.push(Finding {
            path: format!("clusters/{}", c.cluster),
            line: None,
            rule: tkgops_domain::workflow::plan::DELETE_RULE.into(),
            severity: Severity::Error,
            message: format!(
                "deleting cluster {} needs the label {ALLOW_DELETE_LABEL} on the pull request; add it to confirm the delete (the plan is made again)",
                c.cluster
            ),
        });
        c.status = PlanStatus::Blocked;
    }
}

/// SHA-256 (hex) of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The engine origin of runs caused by pull request `number`: `github:pr/<number>`.
pub fn pr_origin(number: u64) -> String {
    format!("github:pr/{number}")
}

/// The clusters of `p` that are not run (blocked, or nothing to do), and why.
fn not_run(p: &Plan) -> Vec<NotRun> {
    p.clusters
        .iter()
        .filter(|c| c.status != PlanStatus::Ready)
        .map(|c: &ClusterPlan| {
            let reason = match c.status {
                PlanStatus::Blocked => "blocked by validation errors".to_string(),
                _ => c.note.clone().unwrap_or_else(|| "no action".into()),
            };
            NotRun {
                cluster: c.cluster.clone(),
                intent: c.intent.label(),
                reason,
            }
        })
        .collect()
}

/// The not-run entries of a merge record as view rows.
pub fn not_run_views(record: &MergeRecord) -> Vec<NotRunView> {
    record
        .not_run
        .iter()
        .map(|n| NotRunView {
            cluster: n.cluster.clone(),
            intent: n.intent.clone(),
            reason: n.reason.clone(),
        })
        .collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GitError> + Send + 'static,
) -> Result<T, BotError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BotError::Store(format!("blocking task failed: {e}")))?
        .map_err(BotError::Git)
}

#[cfg(test)]
mod tests {
    use crate::journal::Cursor;
    use crate::testing::{example_request, Harness, EXAMPLE_POLICY};
    use std::sync::atomic::Ordering;

    /// One poll plans every open pull request; a merge that fails holds back the merges after
    /// it (none is judged under a policy an earlier merge has not left yet), the closed-pulls
    /// cursor stays, and the poll itself succeeds; the next poll handles both, in order.
    #[tokio::test]
    async fn a_failing_merge_holds_back_the_merges_after_it_until_it_succeeds() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        let first = h.open_pull(1, "dev", &example_request());
        // A fork's merge is refused without reading reviews: only the hold keeps it back.
        let mut second = h.open_pull(2, "dev", &[("clusters/other/README.md", "x")]);
        second.head_repo_full_name = Some("someone/fork".into());
        h.github.open.lock().unwrap()[1] = second.clone();
        h.bot.poll_once().await.unwrap();
        assert!(h.bot.journal().planned(1).await.unwrap().is_some());
        assert!(h.bot.journal().planned(2).await.unwrap().is_some());

        h.merge(&first);
        h.merge(&second);
        h.github.fail_reviews.store(true, Ordering::SeqCst);
        h.bot.poll_once().await.unwrap();
        assert_eq!(h.bot.journal().merged(1).await.unwrap(), None);
        assert_eq!(
            h.bot.journal().merged(2).await.unwrap(),
            None,
            "the second merge waits for the first"
        );
        assert_eq!(
            h.bot.journal().cursor(Cursor::ClosedPulls).await.unwrap(),
            None
        );
        assert_eq!(h.bot.lock_queue().len(), 2, "both merges are requeued");

        h.github.fail_reviews.store(false, Ordering::SeqCst);
        h.bot.poll_once().await.unwrap();
        assert!(h.bot.journal().merged(1).await.unwrap().is_some());
        assert!(h.bot.journal().merged(2).await.unwrap().is_some());
        assert!(h
            .bot
            .journal()
            .cursor(Cursor::ClosedPulls)
            .await
            .unwrap()
            .is_some());
    }

    /// A poll whose sync cannot read GitHub fails (so `/readyz` stays unready) and enqueues
    /// nothing.
    #[tokio::test]
    async fn a_poll_that_cannot_read_the_default_branch_fails_and_enqueues_nothing() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        h.open_pull(1, "dev", &example_request());
        h.origin
            .find_reference("refs/heads/main")
            .unwrap()
            .delete()
            .unwrap();
        assert!(h.bot.poll_once().await.is_err());
        assert!(h.bot.lock_queue().is_empty());
        assert!(h.github.upserts.lock().unwrap().is_empty());
    }
}

//! tkgops: the bot. The pull-request loop (poll GitHub, plan each new head SHA, run on merge,
//! report back), its configuration, the git mirror ([`gitops`]) and `tkgops serve`.
//!
//! This is the only crate that knows about pull requests. Each poll:
//! 1. fetches the default branch (its `tkgops.yaml` is the trusted policy: approvers, management
//!    clusters, rule severities; security rule 1);
//! 2. for every open PR into the default branch whose head SHA was not planned yet: fetches
//!    `refs/pull/N/head`, plans `merge-base..head` without credentials, upserts the sticky
//!    comment and sets commit status `tkgops/plan`;
//! 3. for every recently merged PR it planned and has not handled yet: re-checks the approval
//!    policy, plans the merge commit (first parent..merge commit) and submits one run per
//!    executable cluster plan, pinned to the merge commit (security rule 2). Fork PRs are never
//!    executed (rule 3), destructive intents need `approval.destructiveApprovals` (rule 6).
//!
//! Run progress comes back through [`publisher::CommentPublisher`], the engine's observer.

pub mod approval;
pub mod commands;
pub mod config;
pub mod executors;
pub mod gitops;
pub mod journal;
pub mod local;
pub mod memo;
pub mod publisher;
pub mod redact;
pub mod replan;
pub mod schedule_apply;
pub mod schedules;
pub mod serve;
pub mod sha;
#[cfg(test)]
mod testing;
pub mod trust;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tkgops_domain::files::TreeReader;
use tracing::{info, warn};

use crate::gitops::{ConfigRepo, GitError};
pub use journal::{BotJournal, MergeRecord, NotRun};
use journal::{Cursor, PlanDigests, PlannedAs, StickyComment};
pub use sha::{HeadSha, MergeSha, PolicySha};
use tkgops_domain::request::{Finding, RepoConfig, Severity, ALLOW_DELETE_LABEL};
use tkgops_domain::workflow::markdown::{self, NotRunView, STICKY_MARKER};
use tkgops_domain::workflow::plan::{load_repo_config, ClusterPlan, PlanStatus};
use tkgops_domain::workflow::{plan, Catalog, IntentKind, Plan, PlanInput};
use tkgops_engine::store::Store;
use tkgops_engine::{Engine, RunRequest};
use tkgops_github::{CommitState, GitHub, PullRequest, RepoInfo};

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
    Github(String),
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
    pub publisher: publisher::CommentPublisher,
    /// The bot configuration's `trustedPolicyCommit`: the trusted policy commit at the first
    /// start (or when the pin changes) instead of the default branch's tip.
    pub pinned_policy: Option<String>,
}

/// The bot: one config repository, one GitHub repository, one engine.
pub struct Bot {
    github: Arc<dyn GitHub>,
    git: ConfigRepo,
    /// The engine's runs (read only: the engine writes them).
    store: Arc<dyn Store>,
    journal: BotJournal,
    engine: Engine,
    catalog: Arc<Catalog>,
    default_branch: String,
    full_name: String,
    executors: Arc<executors::Executors>,
    publisher: publisher::CommentPublisher,
    /// Woken by an accepted webhook delivery: poll now instead of at the next interval.
    wake: Arc<tokio::sync::Notify>,
    /// Set once a poll of GitHub completed (`/readyz`).
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// What "now" is for schedules.
    clock: std::sync::Mutex<schedules::Clock>,
    /// The plan of the scheduled-apply wave commit last started (`parent..commit@policy`):
    /// a wave of hundreds of clusters starts a few at a time, and is planned once.
    wave_plan: memo::Memo<String, Arc<Plan>>,
    /// `trustedPolicyCommit` of the bot configuration ([`trust`]).
    pinned_policy: Option<String>,
    /// The untrusted policy change found for (tip, trusted commit), remembered per pair.
    policy_cache: memo::Memo<(String, String), Option<trust::UntrustedChange>>,
    /// The fleet (every cluster's `tkgops.yaml`) at (tip, trusted policy commit): read once
    /// per new tip, not at every poll.
    fleet_cache: memo::Memo<(String, String), Arc<Vec<tkgops_domain::schedule::FleetCluster>>>,
    /// The policy chain as `/readyz` shows it.
    policy_health: Arc<trust::PolicyHealth>,
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
        } = parts;
        Bot {
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
            clock: std::sync::Mutex::new(schedules::system_clock()),
            wave_plan: memo::Memo::new(),
            pinned_policy,
            policy_cache: memo::Memo::new(),
            fleet_cache: memo::Memo::new(),
            policy_health: Arc::new(trust::PolicyHealth::default()),
        }
    }

    /// Replaces the clock schedules fire by (the system clock by default): a simulated clock
    /// makes scheduled stories and tests finish in seconds.
    pub fn set_clock(&self, clock: schedules::Clock) {
        *self.clock.lock().unwrap_or_else(|e| e.into_inner()) = clock;
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let clock = self.clock.lock().unwrap_or_else(|e| e.into_inner()).clone();
        clock()
    }

    /// The state of the bot's HTTP server: webhooks verified with `webhook_secret` (`None`
    /// refuses every delivery), recorded in the bot's journal, waking its poll loop; `/readyz`
    /// answers 200 once a poll completed.
    pub fn webhook_state(&self, webhook_secret: Option<String>) -> webhook::WebhookState {
        webhook::WebhookState::new(
            webhook_secret,
            self.journal.clone(),
            self.wake.clone(),
            self.ready.clone(),
        )
        .with_policy(self.policy_health.clone())
    }

    /// The state of the trusted policy chain (what `/readyz` reports).
    pub fn policy_health(&self) -> Arc<trust::PolicyHealth> {
        self.policy_health.clone()
    }

    /// The engine runs are submitted to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine's store: the runs (and each cluster's deployed commit).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The bot's journal (merge records, plans, cursors, the policy chain, schedule fires).
    pub fn journal(&self) -> &BotJournal {
        &self.journal
    }

    /// Runs one poll (see the module docs). Errors of single PRs are logged and do not stop the
    /// others; the next poll retries them.
    ///
    /// Errors: [`BotError`] when the default branch or the PR lists cannot be read.
    pub async fn poll_once(&self) -> Result<(), BotError> {
        self.refresh_git_token().await?;
        let git = self.git.clone();
        let branch = self.default_branch.clone();
        let tip = blocking(move || git.fetch_branch(&branch)).await?;
        // Security rule 1: the policy is the trusted policy commit's, never the tip's.
        let trusted = self.trusted_policy(&tip).await?;
        if let Some(rc) = self.load_settings(trusted.commit.as_str()).await? {
            self.executors.update_management_clusters(&rc);
        }
        // Every PR closed since the cursor (GitHub's own `updated_at` clock, with an overlap),
        // however many there are: merges missed while the bot was down are found too. They
        // are handled in the order they entered the default branch, each judged under the
        // trusted policy as the merges before it left it.
        let cursor = self.closed_cursor().await?;
        let since = match cursor {
            Some(c) => c - chrono::Duration::minutes(5),
            None => chrono::Utc::now() - chrono::Duration::days(1),
        };
        let closed = self
            .github
            .list_closed_pulls_since(&self.default_branch, Some(since))
            .await
            .map_err(|e| BotError::Github(e.to_string()))?;
        let mut all_handled = true;
        for pr in self.in_merge_order(&tip, &closed).await? {
            if let Err(e) = self.handle_merged(pr).await {
                all_handled = false;
                warn!(pr = pr.number, error = %e, "handling the merge failed; it and the merges after it are tried again next poll");
                break;
            }
        }
        // The policy chain after those merges: an untrusted change is reported, never obeyed.
        let (trusted, _) = self.check_policy_chain(&tip).await?;
        let repo_config = self.load_settings(trusted.commit.as_str()).await?;
        if let Some(rc) = &repo_config {
            self.executors.update_management_clusters(rc);
        }
        let open = self
            .github
            .list_open_pulls(&self.default_branch)
            .await
            .map_err(|e| BotError::Github(e.to_string()))?;
        for pr in &open {
            if let Err(e) = self.plan_pull(pr, &tip).await {
                warn!(pr = pr.number, error = %e, "planning failed; will retry next poll");
            }
        }
        // Scheduled upgrade runs of the trusted policy.
        if let Some(rc) = &repo_config {
            if let Err(e) = self.tick_schedules(&tip, rc, &open, self.now()).await {
                warn!(error = %e, "running the schedules failed; will retry next poll");
            }
        }
        // `/tkgops` commands (plan, retry, cancel) in comments since the last poll.
        if let Err(e) = self.handle_commands(&tip).await {
            warn!(error = %e, "reading commands failed; will retry next poll");
        }
        let newest = closed.iter().filter_map(|p| p.updated_at).max();
        if let Some(n) = newest.filter(|n| all_handled && cursor.is_none_or(|c| *n > c)) {
            self.journal.set_cursor(Cursor::ClosedPulls, n).await?;
        }
        Ok(())
    }

    /// The merged pull requests of `closed` in the order their merges entered the default
    /// branch at `tip` (oldest first, by first-parent ancestry), whatever order GitHub lists
    /// them in; merges not found in the first-parent history (not fetched yet, or rewritten
    /// away) come last, in listing order, and fail when handled.
    ///
    /// Errors: [`BotError::Git`] when the history cannot be read.
    async fn in_merge_order<'a>(
        &self,
        tip: &str,
        closed: &'a [PullRequest],
    ) -> Result<Vec<&'a PullRequest>, BotError> {
        let merged: Vec<&PullRequest> = closed.iter().filter(|p| p.merged).collect();
        let wanted: std::collections::BTreeSet<String> = merged
            .iter()
            .filter_map(|p| p.merge_commit_sha.clone())
            .collect();
        if wanted.is_empty() {
            return Ok(merged);
        }
        let git = self.git.clone();
        let tip = tip.to_string();
        let depth: BTreeMap<String, usize> = blocking(move || {
            // Walk until every wanted merge is found (or the history ends).
            let mut found = BTreeMap::new();
            let mut limit = 256;
            loop {
                let chain = git.first_parent_chain(&tip, None, limit)?;
                for (i, c) in chain.iter().enumerate() {
                    if wanted.contains(c) {
                        found.insert(c.clone(), i);
                    }
                }
                if found.len() == wanted.len() || chain.len() < limit || limit >= 1 << 20 {
                    return Ok(found);
                }
                limit *= 4;
            }
        })
        .await?;
        let mut ordered = merged;
        // Deeper in the history is older; unknown merges last (stable sort keeps their order).
        ordered.sort_by_key(
            |p| match p.merge_commit_sha.as_ref().and_then(|m| depth.get(m)) {
                Some(d) => (0, usize::MAX - d),
                None => (1, 0),
            },
        );
        Ok(ordered)
    }

    /// Polls forever every `interval`, and at once after each accepted webhook delivery, until
    /// `shutdown` resolves; then drains the engine for up to `grace`.
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
        loop {
            match self.poll_once().await {
                Ok(()) => self.ready.store(true, std::sync::atomic::Ordering::Release),
                Err(e) => warn!(error = %e, "poll failed; retrying at the next interval"),
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(interval) => {}
                // A webhook is a hint: poll at once (state is re-read through the API).
                _ = self.wake.notified() => {}
            }
        }
        info!("shutting down: draining in-flight steps");
        self.engine.shutdown(grace).await;
    }

    /// The `updated_at` of the newest closed PR whose merge was handled
    /// ([`Cursor::ClosedPulls`]).
    async fn closed_cursor(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, BotError> {
        Ok(self.journal.cursor(Cursor::ClosedPulls).await?)
    }

    /// Gives the git mirror a token valid for a while (GitHub App installation tokens are
    /// refreshed before they expire); nothing to do for local remotes.
    async fn refresh_git_token(&self) -> Result<(), BotError> {
        if self.git.is_https() {
            let token = self
                .github
                .git_token()
                .await
                .map_err(|e| BotError::Github(e.to_string()))?;
            self.git.set_token(token);
        }
        Ok(())
    }

    async fn load_settings(&self, sha: &str) -> Result<Option<RepoConfig>, BotError> {
        let git = self.git.clone();
        let sha = sha.to_string();
        blocking(move || {
            let tree = git.tree(&sha)?;
            Ok(load_repo_config(&tree).0)
        })
        .await
    }

    /// Plans `base..head` under the policy of `settings` (see [`Planner::plan`]), with the
    /// journal's rollout history for the estimates.
    ///
    /// Errors: [`BotError::Git`], [`BotError::Store`].
    pub(crate) async fn compute_plan(
        &self,
        base: String,
        head: String,
        settings: &PolicySha,
    ) -> Result<Plan, BotError> {
        let history = publisher::rollout_history(&self.journal).await?;
        let planner = Planner {
            git: self.git.clone(),
            catalog: self.catalog.clone(),
            executable: executors::executable_kinds(),
            repository: self.full_name.clone(),
        };
        planner.plan(base, head, settings, history).await
    }

    async fn plan_pull(&self, pr: &PullRequest, tip: &str) -> Result<(), BotError> {
        let planned = self.journal.planned(pr.number).await?;
        let allow_delete = has_allow_delete(pr);
        let trusted = self
            .policy_health
            .trusted()
            .ok_or_else(|| BotError::Store("the trusted policy commit is not known yet".into()))?;
        let untrusted = self.policy_health.untrusted();
        // The plan depends on the head SHA, the allow-delete label and the policy chain (the
        // trusted policy commit and an untrusted change the plan warns of).
        let planned_as = |head: &HeadSha| PlannedAs {
            head: head.clone(),
            allow_delete,
            policy: trusted.clone(),
            untrusted: untrusted.as_ref().map(|u| u.commit.clone()),
        };
        let pr_head = HeadSha::new(pr.head_sha.clone());
        if planned.as_ref() == Some(&planned_as(&pr_head)) {
            return Ok(());
        }
        if let Some((schedule, fire)) = self.applied_record(pr).await? {
            let body = format!(
                "{STICKY_MARKER}\n### tkgops: record of the scheduled upgrade `{schedule}` (fire {})\n\nHead `{}` is a wave commit tkgops pushed and applied itself: it is not planned again, and merging this pull request changes no cluster. The step tables of each wave's runs follow; progress and halts are on the fleet dashboard issue. A commit pushed on top of it is planned like any change.\n",
                fire.format("%Y-%m-%d %H:%M UTC"),
                &pr.head_sha[..pr.head_sha.len().min(7)]
            );
            let gh = |e: tkgops_github::GithubError| BotError::Github(e.to_string());
            self.github
                .upsert_comment(pr.number, STICKY_MARKER, &body)
                .await
                .map_err(gh)?;
            self.github
                .set_status(
                    &pr.head_sha,
                    PLAN_CONTEXT,
                    CommitState::Success,
                    "applied by the schedule; merging changes no cluster",
                    None,
                )
                .await
                .map_err(gh)?;
            self.journal
                .set_planned(pr.number, &planned_as(&pr_head))
                .await?;
            return Ok(());
        }
        let git = self.git.clone();
        let number = pr.number;
        let head = HeadSha::new(blocking(move || git.fetch_pull_head(number)).await?);
        let git = self.git.clone();
        let (t, h) = (tip.to_string(), head.to_string());
        let base = blocking(move || git.merge_base(&t, &h)).await?;
        let base_sha = base.clone();
        let mut p = self.compute_plan(base, head.to_string(), &trusted).await?;
        self.policy_notes(&mut p, &base_sha, &head, &trusted, untrusted.as_ref())
            .await?;
        if self.is_fork(pr) {
            p.notes.push("This pull request comes from a fork: it is planned, but never executed (security rule 3).".into());
        }
        if !allow_delete {
            refuse_deletes_without_label(&mut p);
        }
        // Approvals bind to the plan they were given under: a re-plan of the same head whose
        // digest changed makes the approvals given before it stale (security rule 8).
        let digests = PlanDigests(p.digests());
        if let Some(old) = self
            .journal
            .approved_digests(pr.number, &head)
            .await?
            .filter(|old| *old != digests)
        {
            let stale = self.stamp_approvals(pr.number, &head, &old).await?;
            if stale > 0 {
                p.notes.push(format!(
                    "⚠️ The plan for head `{}` changed since it was last posted: the {stale} approval(s) given for the earlier plan no longer count. Approve this plan again.",
                    head.short()
                ));
            }
        }
        self.post_plan(pr.number, &p).await?;
        let errors = p
            .all_findings()
            .iter()
            .filter(|f| f.severity == tkgops_domain::request::Severity::Error)
            .count();
        let (state, desc) = if errors > 0 {
            (
                CommitState::Failure,
                format!("{errors} validation error(s): see the tkgops comment"),
            )
        } else {
            let ready = p.executable().count();
            (
                CommitState::Success,
                format!(
                    "{} cluster change(s) planned, {ready} will run after merge",
                    p.clusters.len()
                ),
            )
        };
        // What this head SHA will run, so that the merge runs exactly what was approved;
        // journalled before the status says the plan is there (a bot stopped right after the
        // status still knows the plan when the pull request is merged).
        self.journal
            .set_approved_digests(pr.number, &head, &digests)
            .await?;
        self.github
            .set_status(head.as_str(), PLAN_CONTEXT, state, &desc, None)
            .await
            .map_err(|e| BotError::Github(e.to_string()))?;
        self.journal
            .set_planned(pr.number, &planned_as(&head))
            .await?;
        info!(pr = pr.number, head = %head, errors, "planned");
        Ok(())
    }

    /// Posts the plan of PR `number`: one sticky comment when it fits
    /// ([`markdown::INLINE_PLAN_LIMIT`]); else the summary in the sticky comment, linking one
    /// details comment per cluster, each upserted by its own marker. Details comments of an
    /// earlier head that this plan no longer has are marked superseded (never left stale).
    ///
    /// Errors: [`BotError::Render`], [`BotError::Github`], [`BotError::Store`].
    async fn post_plan(&self, number: u64, p: &Plan) -> Result<(), BotError> {
        let gh = |e: tkgops_github::GithubError| BotError::Github(e.to_string());
        let before = self.journal.plan_details(number).await?;
        let inline = markdown::render_plan(p, &self.catalog, true).map_err(BotError::Render)?;
        let mut posted = Vec::new();
        let written;
        let sticky_id = if inline.chars().count() <= markdown::INLINE_PLAN_LIMIT {
            written = inline.clone();
            self.github
                .upsert_comment(number, STICKY_MARKER, &inline)
                .await
                .map_err(gh)?
        } else {
            let details =
                markdown::render_plan_details(p, &self.catalog).map_err(BotError::Render)?;
            // The summary first, so that it stays above its details on a new pull request.
            let mut anchors = BTreeMap::new();
            let summary = markdown::render_plan_summary(p, &self.catalog, &anchors)
                .map_err(BotError::Render)?;
            self.github
                .upsert_comment(number, STICKY_MARKER, &summary)
                .await
                .map_err(gh)?;
            for d in &details {
                let id = self
                    .github
                    .upsert_comment(number, &d.marker, &d.body)
                    .await
                    .map_err(gh)?;
                anchors.insert(d.cluster.clone(), format!("#issuecomment-{id}"));
                posted.push(d.cluster.clone());
            }
            let summary = markdown::render_plan_summary(p, &self.catalog, &anchors)
                .map_err(BotError::Render)?;
            written = summary.clone();
            self.github
                .upsert_comment(number, STICKY_MARKER, &summary)
                .await
                .map_err(gh)?
        };
        // Which comment is the sticky one, so an edit that removed its marker is still seen
        // (`commands::rerender_sticky`), and what it says.
        self.journal
            .set_sticky(
                number,
                &StickyComment {
                    comment_id: sticky_id,
                    body_sha256: Some(sha256_hex(written.as_bytes())),
                },
            )
            .await?;
        for gone in before.iter().filter(|c| !posted.contains(c)) {
            let marker = markdown::detail_marker(gone);
            let body = format!(
                "{marker}\n_Superseded: the plan for head `{}` has no details for `{gone}`; see the plan comment._\n",
                &p.head_sha[..p.head_sha.len().min(7)]
            );
            self.github
                .upsert_comment(number, &marker, &body)
                .await
                .map_err(gh)?;
        }
        if before != posted {
            self.journal.set_plan_details(number, &posted).await?;
        }
        Ok(())
    }

    /// Whether `pr` must be treated as a fork PR (security rule 3): its head repository is
    /// missing (deleted fork) or differs from the base repository. Fails closed.
    fn is_fork(&self, pr: &PullRequest) -> bool {
        pr.head_repo_full_name
            .as_deref()
            .is_none_or(|n| !n.eq_ignore_ascii_case(&self.full_name))
    }

    /// Handles merged pull request `pr` once (the journal remembers it): a pull request this
    /// bot never planned is left alone; the record pull request of a scheduled apply is only
    /// ledgered ([`Bot::record_applied_merge`]); any other merge is planned again as
    /// base..merge under the trusted policy, judged (base branch, fork, approvals), ledgered,
    /// and its approved cluster plans submitted ([`Bot::submit_merge_runs`]). The publisher
    /// then reports on the merge commit.
    ///
    /// Errors: [`BotError::Github`] when the merge commit is not on the default branch yet or
    /// GitHub fails, [`BotError::Git`], [`BotError::Store`], [`BotError::Render`],
    /// [`BotError::Engine`]; the merge is tried again at the next poll.
    async fn handle_merged(&self, pr: &PullRequest) -> Result<(), BotError> {
        let Some(merge_sha) = pr.merge_commit_sha.clone().map(MergeSha::new) else {
            return Ok(());
        };
        if self.journal.merged(pr.number).await?.is_some() {
            return Ok(());
        }
        let head = HeadSha::new(pr.head_sha.clone());
        // Only PRs this bot planned are executed: a bot started on an old repository must not
        // replay history. A plan of the head journalled its digests before its status.
        let approved = self.journal.approved_digests(pr.number, &head).await?;
        if approved.is_none() && self.journal.planned(pr.number).await?.is_none() {
            return Ok(());
        }
        // The record pull request of a scheduled apply, merged at a wave commit: its upgrades
        // already ran (`applied_record`).
        if self.applied_record(pr).await?.is_some() {
            return self.record_applied_merge(pr, &merge_sha).await;
        }
        let shape = self.merge_shape(pr, &merge_sha, &head).await?;
        // Security rule 1: the base of a merge is the default branch's tip just before it,
        // never a commit of the pull request (a rebase merge's first commits are judged with
        // the rest), and the policy is the trusted policy commit's, never the merged change's.
        let base = shape.base.clone().unwrap_or_else(|| merge_sha.to_string());
        let trusted = self.trusted_policy(merge_sha.as_str()).await?;
        let policy = self.load_settings(trusted.commit.as_str()).await?;
        let p = self
            .plan_merge(pr, &base, &merge_sha, &trusted.commit)
            .await?;
        let plan_md = markdown::render_plan(&p, &self.catalog, false).map_err(BotError::Render)?;

        let refused = if pr.base_ref != self.default_branch {
            Some(format!(
                "the pull request targets {}, not the default branch {}",
                pr.base_ref, self.default_branch
            ))
        } else if self.is_fork(pr) {
            Some("the pull request comes from a fork (or its head repository was deleted); fork PRs are never executed".to_string())
        } else {
            self.check_approvals(pr, &p, policy.as_ref(), &trusted.commit, &base, &merge_sha)
                .await?
        };
        let mut notes = Vec::new();
        if shape.method == gitops::MergeMethod::Rebase {
            notes.push(format!(
                "Rebase merge of {} commits, `{}..{}`: judged and run as one change under the policy before it.",
                shape.commits.len(),
                short_sha(&base),
                merge_sha.short()
            ));
        }
        if self
            .record_merge(pr, &merge_sha, &shape, refused.as_deref(), p.changes_policy)
            .await?
        {
            notes.push(format!(
                "This merge changed the policy with the approvals the trusted policy requires: its `tkgops.yaml` and `CODEOWNERS` are now the trusted policy (commit `{}`).",
                merge_sha.short()
            ));
            if let Some(rc) = self.load_settings(merge_sha.as_str()).await? {
                self.executors.update_management_clusters(&rc);
            }
        }
        let mut record = MergeRecord {
            pr: pr.number,
            commit: merge_sha.clone(),
            run_ids: Vec::new(),
            not_run: not_run(&p),
            plan_markdown: plan_md,
            refused: refused.clone(),
            changed_since_approval: Vec::new(),
            marker: None,
            notes,
        };
        if refused.is_none() {
            let approved = approved.unwrap_or_default();
            self.submit_merge_runs(pr, &head, &p, &approved, &mut record)
                .await?;
        }
        self.journal.put_merge_record(&record).await?;
        self.journal.set_merged(pr.number, &merge_sha).await?;
        info!(pr = pr.number, merge = %merge_sha, runs = record.run_ids.len(), refused = ?record.refused, "merge handled");
        // The publisher is the only writer of run comments: a write retried here could land
        // after a newer one and show a stale state.
        self.publisher.notify(&merge_sha);
        Ok(())
    }

    /// Handles the merge `merge` of the record pull request `pr` of a scheduled apply: its
    /// wave commits already ran under a schedule of the trusted policy, so the merge is
    /// ledgered as approved content for later re-plans (never a policy change: the policy chain
    /// judges the tip) and marked handled; nothing runs.
    ///
    /// Errors: [`BotError::Git`] when the merge's first parent cannot be read,
    /// [`BotError::Store`].
    async fn record_applied_merge(
        &self,
        pr: &PullRequest,
        merge: &MergeSha,
    ) -> Result<(), BotError> {
        info!(
            pr = pr.number,
            "record pull request merged: its upgrades already ran"
        );
        let git = self.git.clone();
        let m = merge.to_string();
        let base = blocking(move || git.first_parent(&m)).await?;
        self.journal
            .put_ledger(
                &trust::LedgerEntry {
                    pr: pr.number,
                    merge: merge.clone(),
                    base,
                    method: gitops::MergeMethod::Merge,
                    approved: true,
                    refused: None,
                },
                &[merge.to_string()],
            )
            .await?;
        Ok(self.journal.set_merged(pr.number, merge).await?)
    }

    /// How `pr` was merged as `merge` ([`ConfigRepo::merge_shape`]), after fetching the default
    /// branch (and the pull request's head `head` when the mirror lacks it: its own commits
    /// tell a rebase from a squash).
    ///
    /// Errors: [`BotError::Github`] when `merge` is not on the default branch yet (the next
    /// poll tries again), [`BotError::Git`].
    async fn merge_shape(
        &self,
        pr: &PullRequest,
        merge: &MergeSha,
        head: &HeadSha,
    ) -> Result<gitops::MergeShape, BotError> {
        let git = self.git.clone();
        let branch = self.default_branch.clone();
        let (m, number, h) = (merge.clone(), pr.number, head.clone());
        let shape = blocking(move || {
            let tip = git.fetch_branch(&branch)?;
            if !git.is_ancestor(m.as_str(), &tip) {
                return Ok(None);
            }
            if !git.has_commit(h.as_str()) {
                git.fetch_pull_head(number)?;
            }
            git.merge_shape(&m, &h).map(Some)
        })
        .await?;
        shape.ok_or_else(|| {
            BotError::Github(format!(
                "merge commit {merge} is not on {} yet",
                self.default_branch
            ))
        })
    }

    /// The plan of merged `pr`: `base..merge` under the trusted policy commit `policy`, marked
    /// as a policy change when a policy file (`tkgops.yaml`, `CODEOWNERS`) differs between
    /// `base` and `merge` (it then needs `approval.destructiveApprovals`), with its deletes
    /// blocked when `pr` lacks the label [`ALLOW_DELETE_LABEL`].
    ///
    /// Errors: [`BotError::Git`], [`BotError::Store`].
    async fn plan_merge(
        &self,
        pr: &PullRequest,
        base: &str,
        merge: &MergeSha,
        policy: &PolicySha,
    ) -> Result<Plan, BotError> {
        let mut p = self
            .compute_plan(base.to_string(), merge.to_string(), policy)
            .await?;
        if self.fingerprint(base).await? != self.fingerprint(merge.as_str()).await? {
            p.changes_policy = true;
        }
        if !has_allow_delete(pr) {
            refuse_deletes_without_label(&mut p);
        }
        Ok(p)
    }

    /// Submits one run per executable cluster plan of `p` (the plan of an accepted merge of
    /// `pr`, head `head`), pinned to the merge commit, adding the run ids to `record`.
    /// Security rule 2: a cluster plan whose digest is not the one `approved` for the head
    /// does not run; it is listed in `record` as changed since the approval, with why.
    ///
    /// Errors: [`BotError::Store`] when the journal cannot be written,
    /// [`BotError::Engine`] when the engine refuses a run.
    async fn submit_merge_runs(
        &self,
        pr: &PullRequest,
        head: &HeadSha,
        p: &Plan,
        approved: &PlanDigests,
        record: &mut MergeRecord,
    ) -> Result<(), BotError> {
        let merge_sha = record.commit.clone();
        for cp in p.executable() {
            let workflow = cp.workflow.as_deref();
            if approved.get(&cp.cluster, workflow) != Some(cp.digest().as_str()) {
                record.changed_since_approval.push(cp.cluster.clone());
                let why = if approved.contains(&cp.cluster, workflow) {
                    "its plan at the merge commit differs from the plan approved for head"
                } else {
                    "no plan of it was posted and approved for head"
                };
                record.not_run.push(NotRun {
                    cluster: cp.cluster.clone(),
                    intent: cp.intent.label(),
                    reason: format!(
                        "not run: {why} {} (the default branch moved, or the change was pushed after the plan). Open a new pull request with the change to plan and approve it again.",
                        head.short()
                    ),
                });
                continue;
            }
            let id = format!(
                "{}@{}#{}",
                cp.cluster,
                &merge_sha.as_str()[..merge_sha.as_str().len().min(12)],
                cp.workflow.clone().unwrap_or_default()
            );
            let req = RunRequest {
                id: id.clone(),
                cluster: cp.cluster.clone(),
                workflow: cp.workflow.clone().unwrap_or_default(),
                commit_sha: merge_sha.to_string(),
                origin: Some(pr_origin(pr.number)),
                steps: cp.steps.clone(),
            };
            record.run_ids.push(id.clone());
            // Persist the merge record before the run exists so the publisher can render it.
            self.journal.put_merge_record(record).await?;
            self.journal.set_last_run(&cp.cluster, &id).await?;
            self.engine
                .submit(req)
                .await
                .map_err(|e| BotError::Engine(e.to_string()))?;
        }
        Ok(())
    }

    /// Asks the publisher to (re)publish every merge commit whose final comment and status
    /// GitHub has not accepted yet ([`BotJournal::unpublished`]), e.g. because the previous
    /// bot process stopped while GitHub refused them. Returns how many.
    ///
    /// Errors: [`BotError::Store`] when the journal cannot be read.
    pub async fn republish_pending(&self) -> Result<usize, BotError> {
        let pending = self.journal.unpublished().await?;
        for commit in &pending {
            self.publisher.notify(commit);
        }
        Ok(pending.len())
    }

    /// `None` when the approval policy is met, else why not ([`approval`]). The policy is the
    /// trusted policy commit's (`policy`): `tkgops.yaml`'s approvers and counts (`repo`), and
    /// its `CODEOWNERS` when present, over the paths `base..merge` changed. Reads the reviews,
    /// their stamps and the members of the teams named, then asks the pure rules.
    ///
    /// Errors: [`BotError::Github`] when the reviews or a team cannot be read,
    /// [`BotError::Store`], [`BotError::Git`].
    async fn check_approvals(
        &self,
        pr: &PullRequest,
        p: &Plan,
        repo: Option<&RepoConfig>,
        policy: &PolicySha,
        base: &str,
        merge: &MergeSha,
    ) -> Result<Option<String>, BotError> {
        let Some(repo) = repo else {
            return Ok(Some(approval::NO_POLICY.into()));
        };
        let reviews = self
            .github
            .list_reviews(pr.number)
            .await
            .map_err(|e| BotError::Github(e.to_string()))?;
        // The plan the merge runs is the one of the head's current digests: an approval stamped
        // under another digest was given for an earlier plan of the same head.
        let current = self
            .journal
            .approved_digests(pr.number, &HeadSha::new(pr.head_sha.clone()))
            .await?
            .map(|d| d.hash());
        let mut stamped = Vec::new();
        for r in approval::approval_candidates(&reviews, &pr.author, &pr.head_sha) {
            let stamp = self.journal.review_stamp(pr.number, r.review_id).await?;
            stamped.push((r, stamp));
        }
        let approved = approval::counted_approvals(&stamped, current.as_deref());
        let mut teams = approval::TeamMembers::default();
        self.fetch_teams(&repo.approval.approvers, &mut teams)
            .await?;
        let approvers = approval::expand_principals(&repo.approval.approvers, &teams);
        let weight = approval::ChangeWeight::of(p);
        if let Some(why) =
            approval::approvers_refusal(&approved, &approvers, &repo.approval, weight)
        {
            return Ok(Some(why));
        }
        // CODEOWNERS of the trusted policy: every changed path with owners needs one of them.
        let git = self.git.clone();
        let (policy, base, merge) = (policy.to_string(), base.to_string(), merge.to_string());
        let (codeowners, changed) = blocking(move || {
            let tree = git.tree(&policy)?;
            let text = tkgops_domain::request::codeowners::CODEOWNERS_PATHS
                .iter()
                .find_map(|path| tree.read(path));
            let changed = match &text {
                Some(_) => git.changed_paths_all(&base, &merge)?,
                None => Vec::new(),
            };
            Ok((text, changed))
        })
        .await?;
        let Some(text) = codeowners else {
            return Ok(None);
        };
        let owned = approval::OwnedPaths::of(&String::from_utf8_lossy(&text), &changed);
        self.fetch_teams(owned.principals(), &mut teams).await?;
        Ok(owned.refusal(&approved, &teams))
    }

    /// Stamps every `APPROVED` review of PR `number` on `head` that has no stamp yet with the
    /// hash of `digests`, the plan it was given under (the plan posted before a re-plan); returns
    /// how many approvals on `head` carry a stamp (all of them are stale for the new plan).
    /// Which reviews: [`approval::stamp_targets`].
    ///
    /// Errors: [`BotError::Github`] when the reviews cannot be listed, [`BotError::Store`].
    async fn stamp_approvals(
        &self,
        number: u64,
        head: &HeadSha,
        digests: &PlanDigests,
    ) -> Result<usize, BotError> {
        let reviews = self
            .github
            .list_reviews(number)
            .await
            .map_err(|e| BotError::Github(e.to_string()))?;
        let hash = digests.hash();
        let targets = approval::stamp_targets(&reviews, head.as_str());
        for &id in &targets {
            if self.journal.review_stamp(number, id).await?.is_none() {
                self.journal.set_review_stamp(number, id, &hash).await?;
            }
        }
        Ok(targets.len())
    }

    /// The lowercase logins `principals` name ([`approval::expand_principals`]): `login` or
    /// `@login` as is, `org/team` or `@org/team` expanded to the team's members (GitHub API,
    /// each team once); e-mail addresses are ignored (they name no GitHub login the bot can
    /// check).
    ///
    /// Errors: [`BotError::Github`] when a team's members cannot be read.
    async fn expand_principals(
        &self,
        principals: &[String],
    ) -> Result<std::collections::BTreeSet<String>, BotError> {
        let mut teams = approval::TeamMembers::default();
        self.fetch_teams(principals, &mut teams).await?;
        Ok(approval::expand_principals(principals, &teams))
    }

    /// Reads the members of every team `principals` name ([`approval::teams_named`]) that
    /// `teams` does not hold yet into `teams`, in the order first named.
    ///
    /// Errors: [`BotError::Github`] naming the team whose members cannot be read.
    async fn fetch_teams<'a>(
        &self,
        principals: impl IntoIterator<Item = &'a String>,
        teams: &mut approval::TeamMembers,
    ) -> Result<(), BotError> {
        for (org, team) in approval::teams_named(principals) {
            if teams.contains(&org, &team) {
                continue;
            }
            let members = self
                .github
                .team_members(&org, &team)
                .await
                .map_err(|e| BotError::Github(format!("resolving team {org}/{team}: {e}")))?;
            teams.insert(&org, &team, members);
        }
        Ok(())
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

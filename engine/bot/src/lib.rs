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

pub mod commands;
pub mod config;
pub mod executors;
pub mod gitops;
pub mod local;
pub mod publisher;
pub mod redact;
pub mod replan;
pub mod schedule_apply;
pub mod schedules;
pub mod serve;
#[cfg(test)]
mod testing;
pub mod trust;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tkgops_domain::files::TreeReader;
use tracing::{info, warn};

use crate::gitops::{ConfigRepo, GitError};
use tkgops_domain::request::{Finding, RepoConfig, Severity, ALLOW_DELETE_LABEL};
use tkgops_domain::workflow::markdown::{self, NotRunView, STICKY_MARKER};
use tkgops_domain::workflow::plan::{load_repo_config, ClusterPlan, PlanStatus};
use tkgops_domain::workflow::{plan, Catalog, IntentKind, Plan, PlanInput};
use tkgops_engine::store::Store;
use tkgops_engine::{Engine, RunRequest};
use tkgops_providers::github::{CommitState, PullRequest, RepoInfo, VcsClient};

pub use config::BotConfig;

/// Journal key of the closed-PR cursor: the `updated_at` (GitHub's clock, RFC 3339) of the
/// newest closed pull request whose merge has been handled. Each poll lists the PRs closed
/// since (with a 5 min overlap); on the very first start the last 24 h are scanned.
pub const CLOSED_CURSOR_KEY: &str = "poll/closed-cursor";

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

/// What the bot remembers about a merge commit it handled (stored under `merge/<sha>`): the
/// PR, the clusters not run and the plan Markdown shown collapsed in the run comment.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeRecord {
    /// Pull request number.
    pub pr: u64,
    /// Merge commit SHA.
    pub commit: String,
    /// Run ids submitted for it.
    pub run_ids: Vec<String>,
    /// Clusters of the plan that are not run, with the reason.
    pub not_run: Vec<(String, String, String)>,
    /// The plan Markdown (without the marker), secret-free.
    pub plan_markdown: String,
    /// Why nothing was executed (approval missing, fork), if so.
    pub refused: Option<String>,
    /// Clusters not run because their plan at the merge commit differs from the plan approved
    /// for the head SHA (or none was approved): the merge did not do everything it says.
    #[serde(default)]
    pub changed_since_approval: Vec<String>,
    /// The hidden marker of the run comment, when it is not the pull request's sticky comment
    /// (the waves of a scheduled apply each have their own comment on the record pull request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// Notes shown under the run comment's header: how the merge entered the default branch
    /// (a rebase merge's range), the policy chain, changes a re-plan left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The parts a [`Bot`] is assembled from (see [`serve::build`]).
pub struct BotParts {
    /// GitHub client.
    pub vcs: Arc<dyn VcsClient>,
    /// The bare mirror of the config repository.
    pub git: ConfigRepo,
    /// The journal.
    pub store: Arc<dyn Store>,
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
    vcs: Arc<dyn VcsClient>,
    git: ConfigRepo,
    store: Arc<dyn Store>,
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
    wave_plan: std::sync::Mutex<Option<(String, Arc<Plan>)>>,
    /// `trustedPolicyCommit` of the bot configuration ([`trust`]).
    pinned_policy: Option<String>,
    /// The untrusted policy change found for (tip, trusted commit), remembered per pair.
    #[allow(clippy::type_complexity)]
    policy_cache: std::sync::Mutex<Option<((String, String), Option<trust::UntrustedChange>)>>,
    /// The policy chain as `/readyz` shows it.
    policy_health: Arc<trust::PolicyHealth>,
}

impl Bot {
    /// Assembles a bot from its parts.
    pub fn new(parts: BotParts) -> Bot {
        let BotParts {
            vcs,
            git,
            store,
            engine,
            catalog,
            repo,
            executors,
            publisher,
            pinned_policy,
        } = parts;
        Bot {
            vcs,
            git,
            store,
            engine,
            catalog,
            default_branch: repo.default_branch,
            full_name: repo.full_name,
            executors,
            wake: publisher.wake(),
            publisher,
            ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            clock: std::sync::Mutex::new(schedules::system_clock()),
            wave_plan: std::sync::Mutex::new(None),
            pinned_policy,
            policy_cache: std::sync::Mutex::new(None),
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
            self.store.clone(),
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

    /// The bot's journal (runs, merge records, cursors).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
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
        if let Some(rc) = self.load_settings(&trusted.commit).await? {
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
            .vcs
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
        let repo_config = self.load_settings(&trusted.commit).await?;
        if let Some(rc) = &repo_config {
            self.executors.update_management_clusters(rc);
        }
        let open = self
            .vcs
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
            self.store
                .put_meta(CLOSED_CURSOR_KEY, n.to_rfc3339().as_bytes())
                .await
                .map_err(|e| BotError::Store(e.to_string()))?;
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

    /// The `updated_at` of the newest closed PR whose merge was handled ([`CLOSED_CURSOR_KEY`]).
    async fn closed_cursor(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, BotError> {
        meta_time(&*self.store, CLOSED_CURSOR_KEY).await
    }

    /// Gives the git mirror a token valid for a while (GitHub App installation tokens are
    /// refreshed before they expire); nothing to do for local remotes.
    async fn refresh_git_token(&self) -> Result<(), BotError> {
        if self.git.is_https() {
            let token = self
                .vcs
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

    pub(crate) async fn compute_plan(
        &self,
        base: String,
        head: String,
        settings: String,
    ) -> Result<Plan, BotError> {
        let history = publisher::rollout_history(&*self.store).await?;
        let planner = Planner {
            git: self.git.clone(),
            catalog: self.catalog.clone(),
            executable: self.engine.executable_kinds(),
            repository: self.full_name.clone(),
        };
        planner.plan(base, head, settings, history).await
    }

    async fn plan_pull(&self, pr: &PullRequest, tip: &str) -> Result<(), BotError> {
        let key = format!("pr/{}/planned", pr.number);
        let planned = self
            .store
            .get_meta(&key)
            .await
            .map_err(|e| BotError::Store(e.to_string()))?;
        let allow_delete = has_allow_delete(pr);
        let trusted = self
            .policy_health
            .trusted()
            .ok_or_else(|| BotError::Store("the trusted policy commit is not known yet".into()))?;
        let untrusted = self.policy_health.untrusted();
        // The plan depends on the head SHA, the allow-delete label and the policy chain (the
        // trusted policy commit and an untrusted change the plan warns of).
        let policy_state = match &untrusted {
            Some(u) => format!("@{trusted}!{}", u.commit),
            None => format!("@{trusted}"),
        };
        let planned_as = |head: &str| {
            if allow_delete {
                format!("{head}+{ALLOW_DELETE_LABEL}{policy_state}")
            } else {
                format!("{head}{policy_state}")
            }
        };
        if planned.as_deref() == Some(planned_as(&pr.head_sha).as_bytes()) {
            return Ok(());
        }
        if let Some((schedule, fire)) = self.applied_record(pr).await? {
            let body = format!(
                "{STICKY_MARKER}\n### tkgops: record of the scheduled upgrade `{schedule}` (fire {})\n\nHead `{}` is a wave commit tkgops pushed and applied itself: it is not planned again, and merging this pull request changes no cluster. The step tables of each wave's runs follow; progress and halts are on the fleet dashboard issue. A commit pushed on top of it is planned like any change.\n",
                fire.format("%Y-%m-%d %H:%M UTC"),
                &pr.head_sha[..pr.head_sha.len().min(7)]
            );
            let gh = |e: tkgops_providers::github::GithubError| BotError::Github(e.to_string());
            self.vcs
                .upsert_comment(pr.number, STICKY_MARKER, &body)
                .await
                .map_err(gh)?;
            self.vcs
                .set_status(
                    &pr.head_sha,
                    PLAN_CONTEXT,
                    CommitState::Success,
                    "applied by the schedule; merging changes no cluster",
                    None,
                )
                .await
                .map_err(gh)?;
            self.store
                .put_meta(&key, planned_as(&pr.head_sha).as_bytes())
                .await
                .map_err(|e| BotError::Store(e.to_string()))?;
            return Ok(());
        }
        let git = self.git.clone();
        let number = pr.number;
        let head = blocking(move || git.fetch_pull_head(number)).await?;
        let git = self.git.clone();
        let (t, h) = (tip.to_string(), head.clone());
        let base = blocking(move || git.merge_base(&t, &h)).await?;
        let base_sha = base.clone();
        let mut p = self
            .compute_plan(base, head.clone(), trusted.clone())
            .await?;
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
        let digests =
            serde_json::to_vec(&p.digests()).map_err(|e| BotError::Store(e.to_string()))?;
        if let Some(old) = self
            .store
            .get_meta(&digests_key(pr.number, &head))
            .await
            .map_err(|e| BotError::Store(e.to_string()))?
            .filter(|old| *old != digests)
        {
            let stale = self.stamp_approvals(pr.number, &head, &old).await?;
            if stale > 0 {
                p.notes.push(format!(
                    "⚠️ The plan for head `{}` changed since it was last posted: the {stale} approval(s) given for the earlier plan no longer count. Approve this plan again.",
                    short_sha(&head)
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
        self.store
            .put_meta(&digests_key(pr.number, &head), &digests)
            .await
            .map_err(|e| BotError::Store(e.to_string()))?;
        self.vcs
            .set_status(&head, PLAN_CONTEXT, state, &desc, None)
            .await
            .map_err(|e| BotError::Github(e.to_string()))?;
        self.store
            .put_meta(&key, planned_as(&head).as_bytes())
            .await
            .map_err(|e| BotError::Store(e.to_string()))?;
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
        let gh = |e: tkgops_providers::github::GithubError| BotError::Github(e.to_string());
        let key = format!("pr/{number}/plan-details");
        let before: Vec<String> = self
            .store
            .get_meta(&key)
            .await
            .map_err(|e| BotError::Store(e.to_string()))?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let inline = markdown::render_plan(p, &self.catalog, true).map_err(BotError::Render)?;
        let mut posted = Vec::new();
        let written;
        let sticky_id = if inline.chars().count() <= markdown::INLINE_PLAN_LIMIT {
            written = inline.clone();
            self.vcs
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
            self.vcs
                .upsert_comment(number, STICKY_MARKER, &summary)
                .await
                .map_err(gh)?;
            for d in &details {
                let id = self
                    .vcs
                    .upsert_comment(number, &d.marker, &d.body)
                    .await
                    .map_err(gh)?;
                anchors.insert(d.cluster.clone(), format!("#issuecomment-{id}"));
                posted.push(d.cluster.clone());
            }
            let summary = markdown::render_plan_summary(p, &self.catalog, &anchors)
                .map_err(BotError::Render)?;
            written = summary.clone();
            self.vcs
                .upsert_comment(number, STICKY_MARKER, &summary)
                .await
                .map_err(gh)?
        };
        // Which comment is the sticky one, so an edit that removed its marker is still seen
        // (`commands::rerender_sticky`).
        self.store
            .put_meta(&sticky_id_key(number), sticky_id.to_string().as_bytes())
            .await
            .map_err(|e| BotError::Store(e.to_string()))?;
        self.store
            .put_meta(
                &sticky_digest_key(number),
                digest_hash(written.as_bytes()).as_bytes(),
            )
            .await
            .map_err(|e| BotError::Store(e.to_string()))?;
        for gone in before.iter().filter(|c| !posted.contains(c)) {
            let marker = markdown::detail_marker(gone);
            let body = format!(
                "{marker}\n_Superseded: the plan for head `{}` has no details for `{gone}`; see the plan comment._\n",
                &p.head_sha[..p.head_sha.len().min(7)]
            );
            self.vcs
                .upsert_comment(number, &marker, &body)
                .await
                .map_err(gh)?;
        }
        if before != posted {
            let bytes = serde_json::to_vec(&posted).map_err(|e| BotError::Store(e.to_string()))?;
            self.store
                .put_meta(&key, &bytes)
                .await
                .map_err(|e| BotError::Store(e.to_string()))?;
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

    async fn handle_merged(&self, pr: &PullRequest) -> Result<(), BotError> {
        let Some(merge_sha) = pr.merge_commit_sha.clone() else {
            return Ok(());
        };
        let done_key = format!("pr/{}/merged", pr.number);
        if self
            .store
            .get_meta(&done_key)
            .await
            .map_err(|e| BotError::Store(e.to_string()))?
            .is_some()
        {
            return Ok(());
        }
        // Only PRs this bot planned are executed: a bot started on an old repository must not
        // replay history. A plan of the head journalled its digests before its status.
        let planned = self
            .store
            .get_meta(&format!("pr/{}/planned", pr.number))
            .await
            .map_err(|e| BotError::Store(e.to_string()))?
            .is_some()
            || self
                .store
                .get_meta(&digests_key(pr.number, &pr.head_sha))
                .await
                .map_err(|e| BotError::Store(e.to_string()))?
                .is_some();
        if !planned {
            return Ok(());
        }
        // The record pull request of a scheduled apply, merged at a wave commit: its upgrades
        // already ran (`applied_record`).
        if self.applied_record(pr).await?.is_some() {
            info!(
                pr = pr.number,
                "record pull request merged: its upgrades already ran"
            );
            // Its wave commits ran under a schedule of the trusted policy: approved content
            // for later re-plans, never a policy change (the policy chain judges the tip).
            let git = self.git.clone();
            let m = merge_sha.clone();
            let base = blocking(move || git.first_parent(&m)).await?;
            self.write_ledger(
                &trust::LedgerEntry {
                    pr: pr.number,
                    merge: merge_sha.clone(),
                    base,
                    method: gitops::MergeMethod::Merge,
                    approved: true,
                    refused: None,
                },
                std::slice::from_ref(&merge_sha),
            )
            .await?;
            return self
                .store
                .put_meta(&done_key, merge_sha.as_bytes())
                .await
                .map_err(|e| BotError::Store(e.to_string()));
        }
        let git = self.git.clone();
        let branch = self.default_branch.clone();
        let (m, number, head) = (merge_sha.clone(), pr.number, pr.head_sha.clone());
        let shape = blocking(move || {
            let tip = git.fetch_branch(&branch)?;
            if !git.is_ancestor(&m, &tip) {
                return Ok(None);
            }
            // The pull request's own commits tell a rebase from a squash.
            if !git.has_commit(&head) {
                git.fetch_pull_head(number)?;
            }
            git.merge_shape(&m, &head).map(Some)
        })
        .await?;
        let Some(shape) = shape else {
            return Err(BotError::Github(format!(
                "merge commit {merge_sha} is not on {} yet",
                self.default_branch
            )));
        };
        // Security rule 1: the base of a merge is the default branch's tip just before it,
        // never a commit of the pull request (a rebase merge's first commits are judged with
        // the rest), and the policy is the trusted policy commit's, never the merged change's.
        let base = shape.base.clone().unwrap_or_else(|| merge_sha.clone());
        let trusted = self.trusted_policy(&merge_sha).await?;
        let policy = self.load_settings(&trusted.commit).await?;
        let mut p = self
            .compute_plan(base.clone(), merge_sha.clone(), trusted.commit.clone())
            .await?;
        // A merge that changes a policy file (CODEOWNERS too) needs
        // approval.destructiveApprovals.
        if self.fingerprint(&base).await? != self.fingerprint(&merge_sha).await? {
            p.changes_policy = true;
        }
        if !has_allow_delete(pr) {
            refuse_deletes_without_label(&mut p);
        }
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
                short_sha(&merge_sha)
            ));
        }
        if self
            .record_merge(pr, &merge_sha, &shape, refused.as_deref(), p.changes_policy)
            .await?
        {
            notes.push(format!(
                "This merge changed the policy with the approvals the trusted policy requires: its `tkgops.yaml` and `CODEOWNERS` are now the trusted policy (commit `{}`).",
                short_sha(&merge_sha)
            ));
            if let Some(rc) = self.load_settings(&merge_sha).await? {
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
        // Security rule 2: only what was planned and approved for the approved head SHA runs.
        let approved: BTreeMap<String, String> = match self
            .store
            .get_meta(&digests_key(pr.number, &pr.head_sha))
            .await
            .map_err(|e| BotError::Store(e.to_string()))?
        {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        if refused.is_none() {
            for cp in p.executable() {
                let key = format!("{}#{}", cp.cluster, cp.workflow.as_deref().unwrap_or("-"));
                if approved.get(&key) != Some(&cp.digest()) {
                    record.changed_since_approval.push(cp.cluster.clone());
                    let why = if approved.contains_key(&key) {
                        "its plan at the merge commit differs from the plan approved for head"
                    } else {
                        "no plan of it was posted and approved for head"
                    };
                    record.not_run.push((
                        cp.cluster.clone(),
                        cp.intent.label(),
                        format!(
                            "not run: {why} {} (the default branch moved, or the change was pushed after the plan). Open a new pull request with the change to plan and approve it again.",
                            &pr.head_sha[..pr.head_sha.len().min(7)]
                        ),
                    ));
                    continue;
                }
                let id = format!(
                    "{}@{}#{}",
                    cp.cluster,
                    &merge_sha[..merge_sha.len().min(12)],
                    cp.workflow.clone().unwrap_or_default()
                );
                let req = RunRequest {
                    id: id.clone(),
                    cluster: cp.cluster.clone(),
                    workflow: cp.workflow.clone().unwrap_or_default(),
                    commit_sha: merge_sha.clone(),
                    origin: Some(pr_origin(pr.number)),
                    steps: cp.steps.clone(),
                };
                record.run_ids.push(id.clone());
                // Persist the merge record before the run exists so the publisher can render it.
                self.put_merge_record(&record).await?;
                self.store
                    .put_meta(
                        &format!("{}{}", replan::LAST_RUN_PREFIX, cp.cluster),
                        id.as_bytes(),
                    )
                    .await
                    .map_err(|e| BotError::Store(e.to_string()))?;
                self.engine
                    .submit(req)
                    .await
                    .map_err(|e| BotError::Engine(e.to_string()))?;
            }
        }
        self.put_merge_record(&record).await?;
        self.store
            .put_meta(&done_key, merge_sha.as_bytes())
            .await
            .map_err(|e| BotError::Store(e.to_string()))?;
        info!(pr = pr.number, merge = %merge_sha, runs = record.run_ids.len(), refused = ?record.refused, "merge handled");
        // The publisher is the only writer of run comments: a write retried here could land
        // after a newer one and show a stale state.
        self.publisher.notify(&merge_sha);
        Ok(())
    }

    pub(crate) async fn put_merge_record(&self, record: &MergeRecord) -> Result<(), BotError> {
        let bytes = serde_json::to_vec(record).map_err(|e| BotError::Store(e.to_string()))?;
        // Listed as unpublished first: a crash after the record is written still republishes.
        self.store
            .put_meta(
                &format!("{}{}", publisher::PENDING_PREFIX, record.commit),
                b"",
            )
            .await
            .map_err(|e| BotError::Store(e.to_string()))?;
        self.store
            .put_meta(&format!("merge/{}", record.commit), &bytes)
            .await
            .map_err(|e| BotError::Store(e.to_string()))
    }

    /// Asks the publisher to (re)publish every merge commit whose final comment and status
    /// GitHub has not accepted yet (listed under [`publisher::PENDING_PREFIX`]), e.g. because
    /// the previous bot process stopped while GitHub refused them.
    ///
    /// Errors: [`BotError::Store`] when the journal cannot be read.
    pub async fn republish_pending(&self) -> Result<usize, BotError> {
        let pending = self
            .store
            .scan_meta(publisher::PENDING_PREFIX)
            .await
            .map_err(|e| BotError::Store(e.to_string()))?;
        for (key, _) in &pending {
            if let Some(commit) = key.strip_prefix(publisher::PENDING_PREFIX) {
                self.publisher.notify(commit);
            }
        }
        Ok(pending.len())
    }

    /// `None` when the approval policy is met, else why not. The policy is the default
    /// branch's before the merge (`parent`): `tkgops.yaml`'s approvers and counts, and its
    /// `CODEOWNERS` when present. An approval counts only when it is the reviewer's latest
    /// review, `APPROVED`, on the PR's head SHA, and not by the PR's author. Approvers and code
    /// owners may be teams (`org/team`, `@org/team`), resolved through the API.
    async fn check_approvals(
        &self,
        pr: &PullRequest,
        p: &Plan,
        repo: Option<&RepoConfig>,
        policy: &str,
        base: &str,
        merge: &str,
    ) -> Result<Option<String>, BotError> {
        let Some(repo) = repo else {
            return Ok(Some(
                "the default branch has no valid tkgops.yaml, so the approval policy is unknown"
                    .into(),
            ));
        };
        let destructive = p.changes_policy || p.clusters.iter().any(|c| c.intent.is_destructive());
        let required = if destructive {
            repo.approval.destructive_approvals
        } else {
            repo.approval.required_approvals
        } as usize;
        let reviews = self
            .vcs
            .list_reviews(pr.number)
            .await
            .map_err(|e| BotError::Github(e.to_string()))?;
        // The latest review of each reviewer counts; it must be on the head SHA.
        let mut latest: BTreeMap<String, (String, Option<String>, u64)> = BTreeMap::new();
        for r in reviews {
            if r.state == "COMMENTED" || r.state == "PENDING" {
                continue;
            }
            latest.insert(r.user.to_lowercase(), (r.state, r.commit_id, r.id));
        }
        let author = pr.author.to_lowercase();
        // The plan the merge runs is the one of the head's current digests: an approval stamped
        // under another digest was given for an earlier plan of the same head.
        let current = self
            .store
            .get_meta(&digests_key(pr.number, &pr.head_sha))
            .await
            .map_err(|e| BotError::Store(e.to_string()))?
            .map(|d| digest_hash(&d));
        let mut approved = std::collections::BTreeSet::new();
        for (u, (state, commit, id)) in latest {
            if u == author || state != "APPROVED" || commit.as_deref() != Some(pr.head_sha.as_str())
            {
                continue;
            }
            let stamp = self
                .store
                .get_meta(&review_stamp_key(pr.number, id))
                .await
                .map_err(|e| BotError::Store(e.to_string()))?;
            if stamp.is_some_and(|s| Some(String::from_utf8_lossy(&s).into_owned()) != current) {
                continue;
            }
            approved.insert(u);
        }
        let approvers = self.expand_principals(&repo.approval.approvers).await?;
        let count = approved.intersection(&approvers).count();
        if count < required {
            return Ok(Some(format!(
                "merged with {count} of the {required} required approval(s) from approvers ({}){}",
                repo.approval.approvers.join(", "),
                if p.changes_policy {
                    "; a change to tkgops.yaml needs approval.destructiveApprovals under the current policy"
                } else if destructive {
                    "; destructive changes need approval.destructiveApprovals"
                } else {
                    ""
                }
            )));
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
        let (owners, _) =
            tkgops_domain::request::codeowners::CodeOwners::parse(&String::from_utf8_lossy(&text));
        let mut missing = Vec::new();
        for path in &changed {
            let owned_by = owners.owners_of(path);
            if owned_by.is_empty() {
                continue;
            }
            let allowed = self.expand_principals(owned_by).await?;
            if approved.is_disjoint(&allowed) {
                missing.push(format!("{path} ({})", owned_by.join(" ")));
            }
        }
        if missing.is_empty() {
            Ok(None)
        } else {
            let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
            Ok(Some(format!(
                "CODEOWNERS of the default branch requires an approval from a code owner of {}{}",
                shown.join(", "),
                if missing.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            )))
        }
    }

    /// Stamps every `APPROVED` review of PR `number` on `head` that has no stamp yet with the
    /// hash of `digests`, the plan it was given under (the plan posted before a re-plan); returns
    /// how many approvals on `head` carry a stamp (all of them are stale for the new plan).
    ///
    /// Errors: [`BotError::Github`] when the reviews cannot be listed, [`BotError::Store`].
    async fn stamp_approvals(
        &self,
        number: u64,
        head: &str,
        digests: &[u8],
    ) -> Result<usize, BotError> {
        let reviews = self
            .vcs
            .list_reviews(number)
            .await
            .map_err(|e| BotError::Github(e.to_string()))?;
        let hash = digest_hash(digests);
        let mut stamped = 0;
        for r in reviews
            .iter()
            .filter(|r| r.state == "APPROVED" && r.commit_id.as_deref() == Some(head))
        {
            let key = review_stamp_key(number, r.id);
            let existing = self
                .store
                .get_meta(&key)
                .await
                .map_err(|e| BotError::Store(e.to_string()))?;
            if existing.is_none() {
                self.store
                    .put_meta(&key, hash.as_bytes())
                    .await
                    .map_err(|e| BotError::Store(e.to_string()))?;
            }
            stamped += 1;
        }
        Ok(stamped)
    }

    /// The lowercase logins `principals` name: `login` or `@login` as is, `org/team` or
    /// `@org/team` expanded to the team's members (GitHub API); e-mail addresses are ignored
    /// (they name no GitHub login the bot can check).
    async fn expand_principals(
        &self,
        principals: &[String],
    ) -> Result<std::collections::BTreeSet<String>, BotError> {
        let mut out = std::collections::BTreeSet::new();
        for p in principals {
            let p = p.trim().trim_start_matches('@');
            if p.contains('@') || p.is_empty() {
                continue;
            }
            match p.split_once('/') {
                Some((org, team)) => {
                    let members = self.vcs.team_members(org, team).await.map_err(|e| {
                        BotError::Github(format!("resolving team {org}/{team}: {e}"))
                    })?;
                    out.extend(members.into_iter().map(|m| m.to_lowercase()));
                }
                None => {
                    out.insert(p.to_lowercase());
                }
            }
        }
        Ok(out)
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
    /// The step kinds some executor handles.
    pub executable: std::collections::BTreeSet<tkgops_engine::StepKind>,
    /// `owner/name` of the config repository.
    pub repository: String,
}

impl Planner {
    /// Plans `base..head` (commit SHAs) under the policy (`tkgops.yaml`) of commit `settings`,
    /// without credentials, with `history` for the rollout estimates (domain [`plan`]).
    ///
    /// Errors: [`BotError::Git`] when a commit cannot be read.
    pub async fn plan(
        &self,
        base: String,
        head: String,
        settings: String,
        history: tkgops_domain::workflow::RolloutHistory,
    ) -> Result<Plan, BotError> {
        self.plan_paths(base, head, settings, history, None).await
    }

    /// Plans only cluster `cluster`'s part of `base..head` (its `clusters/<cluster>/` files)
    /// under the policy of commit `settings`: what a queued run of that cluster re-plans.
    ///
    /// Errors: [`BotError::Git`] when a commit cannot be read.
    pub async fn plan_cluster(
        &self,
        base: String,
        head: String,
        settings: String,
        cluster: &str,
    ) -> Result<Plan, BotError> {
        let prefix = format!("clusters/{cluster}/");
        self.plan_paths(base, head, settings, Default::default(), Some(prefix))
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

/// A time the journal keeps under `key` as RFC 3339 text (cursors, schedule fires); `None`
/// when absent or unreadable.
///
/// Errors: [`BotError::Store`] when the journal cannot be read.
pub(crate) async fn meta_time(
    store: &dyn Store,
    key: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, BotError> {
    Ok(store
        .get_meta(key)
        .await
        .map_err(|e| BotError::Store(e.to_string()))?
        .and_then(|b| schedules::parse_time(&b)))
}

/// The record of merge commit `sha` (`merge/<sha>`), if the bot handled that merge.
///
/// Errors: [`BotError::Store`] when the journal cannot be read or the record does not decode.
pub(crate) async fn merge_record(
    store: &dyn Store,
    sha: &str,
) -> Result<Option<MergeRecord>, BotError> {
    let store_err = |e: String| BotError::Store(e);
    match store
        .get_meta(&format!("merge/{sha}"))
        .await
        .map_err(|e| store_err(e.to_string()))?
    {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| store_err(e.to_string())),
        None => Ok(None),
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

/// The journal key of the digests of what the plan of PR `number` at `head_sha` executes
/// (`pr/<number>/digests/<head SHA>`: JSON object `<cluster>#<workflow>` → digest).
fn digests_key(number: u64, head_sha: &str) -> String {
    format!("pr/{number}/digests/{head_sha}")
}

/// The journal key of the id of PR `number`'s sticky comment: `pr/<number>/sticky-id`.
pub(crate) fn sticky_id_key(number: u64) -> String {
    format!("pr/{number}/sticky-id")
}

/// The journal key of the SHA-256 of the plan comment tkgops last wrote on PR `number`:
/// `pr/<number>/sticky-digest` (an edit by someone else shows as another body).
pub(crate) fn sticky_digest_key(number: u64) -> String {
    format!("pr/{number}/sticky-digest")
}

/// The journal key of the plan an approval was given under: `pr/<number>/review/<review id>`
/// → the [`digest_hash`] of the plan's digests when the plan changed after it.
fn review_stamp_key(number: u64, review: u64) -> String {
    format!("pr/{number}/review/{review}")
}

/// SHA-256 (hex) of a plan's digests as journalled under [`digests_key`].
pub(crate) fn digest_hash(digests: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(digests))
}

/// The engine origin of runs caused by pull request `number`: `github:pr/<number>`.
pub fn pr_origin(number: u64) -> String {
    format!("github:pr/{number}")
}

fn not_run(p: &Plan) -> Vec<(String, String, String)> {
    p.clusters
        .iter()
        .filter(|c| c.status != PlanStatus::Ready)
        .map(|c: &ClusterPlan| {
            let reason = match c.status {
                PlanStatus::Blocked => "blocked by validation errors".to_string(),
                _ => c.note.clone().unwrap_or_else(|| "no action".into()),
            };
            (c.cluster.clone(), c.intent.label(), reason)
        })
        .collect()
}

/// The not-run entries of a merge record as view rows.
pub fn not_run_views(record: &MergeRecord) -> Vec<NotRunView> {
    record
        .not_run
        .iter()
        .map(|(cluster, intent, reason)| NotRunView {
            cluster: cluster.clone(),
            intent: intent.clone(),
            reason: reason.clone(),
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

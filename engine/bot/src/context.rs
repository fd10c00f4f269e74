//! What every reconciler shares: the bot's parts ([`Context`]) and the last observation of
//! GitHub ([`Observed`], kept like a kube-runtime reflector's store: the sync reconciler
//! writes it, the others read the object their key names from it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tkgops_domain::request::RepoConfig;
use tkgops_domain::workflow::plan::load_repo_config;
use tkgops_domain::workflow::{Catalog, Plan};
use tkgops_engine::store::Store;
use tkgops_engine::Engine;
use tkgops_github::{GitHub, IssueComment, PullRequest};

use crate::gitops::ConfigRepo;
use crate::reconcile::publish::{self, CommentPublisher};
use crate::reconcile::schedule::{self, FireRecord};
use crate::reconcile::wave::Waves;
use crate::trust::{PolicyHealth, Trust, UntrustedChange};
use crate::{approval, blocking, executors, memo, BotError, BotJournal, PolicySha};

/// The parts of the bot every reconciler reads: GitHub, the git mirror, the journal, the
/// engine, the catalog, the clock and the caches.
pub struct Context {
    pub(crate) github: Arc<dyn GitHub>,
    pub(crate) git: ConfigRepo,
    /// The engine's runs (read only: the engine writes them).
    pub(crate) store: Arc<dyn Store>,
    pub(crate) journal: BotJournal,
    pub(crate) engine: Engine,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) default_branch: String,
    pub(crate) full_name: String,
    pub(crate) executors: Arc<executors::Executors>,
    pub(crate) publisher: CommentPublisher,
    /// Woken by an accepted webhook delivery and by every finished run: sync now instead of
    /// at the next interval.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// Set once a sync of GitHub completed (`/readyz`).
    pub(crate) ready: Arc<std::sync::atomic::AtomicBool>,
    /// What "now" is for schedules.
    pub(crate) clock: std::sync::Mutex<schedule::Clock>,
    /// The plan of the scheduled-apply wave commit last started (`parent..commit@policy`):
    /// a wave of hundreds of clusters starts a few at a time, and is planned once.
    pub(crate) wave_plan: memo::Memo<String, Arc<Plan>>,
    /// `trustedPolicyCommit` of the bot configuration ([`crate::trust`]).
    pub(crate) pinned_policy: Option<String>,
    /// The untrusted policy change found for (tip, trusted commit), remembered per pair.
    pub(crate) policy_cache: memo::Memo<(String, String), Option<UntrustedChange>>,
    /// The fleet (every cluster's `tkgops.yaml`) at (tip, trusted policy commit): read once
    /// per new tip, not at every sync.
    pub(crate) fleet_cache:
        memo::Memo<(String, String), Arc<Vec<tkgops_domain::schedule::FleetCluster>>>,
    /// The policy chain as `/readyz` shows it.
    pub(crate) policy_health: Arc<PolicyHealth>,
    /// The last observation of GitHub and the default branch.
    pub(crate) observed: std::sync::Mutex<Arc<Observed>>,
    /// The bot's metrics.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// The `tkr` of each (cluster, deployed commit) of the last count of clusters by TKR
    /// (`None`: its settings do not parse there).
    pub(crate) tkr_of_deployed: std::sync::Mutex<BTreeMap<(String, String), Option<String>>>,
    /// The bot configuration's `driftScanInterval`; `None`: no drift scans.
    pub(crate) drift_interval: std::sync::Mutex<Option<std::time::Duration>>,
    /// When the last drift scan ended (or the scans were turned on): the next is due one
    /// interval later.
    pub(crate) drift_last: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// The deployed clusters the drift wake-up watches ([`crate::drift_watch`]), kept up to
    /// date by the drift reconciler.
    pub(crate) drift_targets: tokio::sync::watch::Sender<crate::drift_watch::Targets>,
    /// The clusters a Cluster change woke, for the drift reconciler's next run.
    pub(crate) drift_woken: Arc<crate::drift_watch::Woken>,
    /// Notified by the drift wake-up: the bot's loop enqueues the drift key.
    pub(crate) drift_wake: Arc<tokio::sync::Notify>,
    /// The clusters the drift wake-up watches ([`crate::Bot::drift_watching`]).
    pub(crate) drift_watching: Arc<tokio::sync::watch::Sender<BTreeSet<String>>>,
}

/// One observation of GitHub and the default branch, made by the sync reconciler: what the
/// other reconcilers' keys are looked up in. Replaced whole at each sync.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The default branch's tip.
    pub tip: String,
    /// The bot's clock at the sync (one "now" for every schedule of a pass).
    pub now: DateTime<Utc>,
    /// Open pull requests into the default branch, in GitHub's listing order.
    pub open: Vec<PullRequest>,
    /// Merged pull requests closed since the cursor, in the order their merges entered the
    /// default branch (oldest first).
    pub merged: Vec<PullRequest>,
    /// The newest `updated_at` of the pull requests closed since the cursor: the closed-pulls
    /// cursor once every merge of this observation is handled.
    pub closed_newest: Option<DateTime<Utc>>,
    /// Comments since the comment cursor, by id (the order they were posted in).
    pub comments: BTreeMap<u64, IssueComment>,
    /// The trusted policy after this observation's merges (set by the policy-chain
    /// reconciler).
    pub repo_config: Option<RepoConfig>,
}

impl Context {
    /// The bot's clock ([`crate::Bot::set_clock`]).
    pub(crate) fn now(&self) -> DateTime<Utc> {
        let clock = self.clock.lock().unwrap_or_else(|e| e.into_inner()).clone();
        clock()
    }

    /// The clusters of `tip` (`clusters/<name>/`) that have a deployed commit (a run of theirs
    /// succeeded), with that commit, in name order: what the drift scan, its wake-up and the
    /// clusters-by-TKR gauge look at.
    ///
    /// Errors: [`BotError::Git`] when `tip` cannot be read, [`BotError::Store`].
    pub(crate) async fn deployed_clusters(
        &self,
        tip: &str,
    ) -> Result<Vec<(String, String)>, BotError> {
        let (git, tip) = (self.git.clone(), tip.to_string());
        let names = blocking(move || git.list_dirs(&tip, "clusters")).await?;
        let mut deployed = Vec::with_capacity(names.len());
        for name in names {
            if let Some(d) = self
                .store
                .deployed(&name)
                .await
                .map_err(|e| BotError::Store(e.to_string()))?
            {
                deployed.push((name, d.commit_sha));
            }
        }
        Ok(deployed)
    }

    /// The drift scan interval ([`crate::Bot::set_drift_interval`]), `None` when scans are off.
    pub(crate) fn drift_interval(&self) -> Option<std::time::Duration> {
        *self
            .drift_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The last observation of GitHub (empty before the first sync).
    pub(crate) fn observed(&self) -> Arc<Observed> {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the observation in place (copy on write: readers keep the one they hold).
    pub(crate) fn update_observed(&self, f: impl FnOnce(&mut Observed)) {
        let mut guard = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Observed::clone(&guard);
        f(&mut next);
        *guard = Arc::new(next);
    }

    /// The trusted policy chain's operations ([`crate::trust`]).
    pub(crate) fn trust(&self) -> Trust<'_> {
        Trust { cx: self }
    }

    /// The scheduled applies' operations ([`crate::reconcile::wave`]).
    pub(crate) fn waves(&self) -> Waves<'_> {
        Waves { cx: self }
    }

    /// The repository policy (`tkgops.yaml`) of commit `sha`; `None` when it has none or it
    /// does not parse.
    ///
    /// Errors: [`BotError::Git`] when the commit cannot be read.
    pub(crate) async fn load_settings(&self, sha: &str) -> Result<Option<RepoConfig>, BotError> {
        let git = self.git.clone();
        let sha = sha.to_string();
        blocking(move || {
            let tree = git.tree(&sha)?;
            Ok(load_repo_config(&tree).0)
        })
        .await
    }

    /// Plans `base..head` under the policy of `settings` (see [`crate::Planner::plan`]), with
    /// the journal's rollout history for the estimates.
    ///
    /// Errors: [`BotError::Git`], [`BotError::Store`].
    pub(crate) async fn compute_plan(
        &self,
        base: String,
        head: String,
        settings: &PolicySha,
    ) -> Result<Plan, BotError> {
        let history = publish::rollout_history(&self.journal).await?;
        let planner = crate::Planner {
            git: self.git.clone(),
            catalog: self.catalog.clone(),
            executable: executors::executable_kinds(),
            repository: self.full_name.clone(),
        };
        planner.plan(base, head, settings, history).await
    }

    /// Whether `pr` must be treated as a fork PR (security rule 3): its head repository is
    /// missing (deleted fork) or differs from the base repository. Fails closed.
    pub(crate) fn is_fork(&self, pr: &PullRequest) -> bool {
        pr.head_repo_full_name
            .as_deref()
            .is_none_or(|n| !n.eq_ignore_ascii_case(&self.full_name))
    }

    /// Gives the git mirror a token valid for a while (GitHub App installation tokens are
    /// refreshed before they expire); nothing to do for local remotes.
    ///
    /// Errors: [`BotError::GitHub`] when no token can be had.
    pub(crate) async fn refresh_git_token(&self) -> Result<(), BotError> {
        if self.git.is_https() {
            let token = self
                .github
                .git_token()
                .await
                .map_err(|e| BotError::GitHub(e.to_string()))?;
            self.git.set_token(token);
        }
        Ok(())
    }

    /// The lowercase logins `principals` name ([`approval::expand_principals`]): `login` or
    /// `@login` as is, `org/team` or `@org/team` expanded to the team's members (GitHub API,
    /// each team once); e-mail addresses are ignored (they name no GitHub login the bot can
    /// check).
    ///
    /// Errors: [`BotError::GitHub`] when a team's members cannot be read.
    pub(crate) async fn expand_principals(
        &self,
        principals: &[String],
    ) -> Result<BTreeSet<String>, BotError> {
        let mut teams = approval::TeamMembers::default();
        self.fetch_teams(principals, &mut teams).await?;
        Ok(approval::expand_principals(principals, &teams))
    }

    /// Reads the members of every team `principals` name ([`approval::teams_named`]) that
    /// `teams` does not hold yet into `teams`, in the order first named.
    ///
    /// Errors: [`BotError::GitHub`] naming the team whose members cannot be read.
    pub(crate) async fn fetch_teams<'a>(
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
                .map_err(|e| BotError::GitHub(format!("resolving team {org}/{team}: {e}")))?;
            teams.insert(&org, &team, members);
        }
        Ok(())
    }

    /// The number of the fleet dashboard issue, once the bot opened it.
    ///
    /// Errors: [`BotError::Store`].
    pub(crate) async fn dashboard_issue(&self) -> Result<Option<u64>, BotError> {
        Ok(self.journal.dashboard().await?.map(|d| d.number))
    }

    /// Journals the fire record `rec` (replacing the earlier record of its fire).
    ///
    /// Errors: [`BotError::Store`].
    pub(crate) async fn put_fire(&self, rec: FireRecord) -> Result<(), BotError> {
        self.journal.put_fire(&rec).await?;
        self.metrics.schedule_fire(&rec);
        Ok(())
    }
}

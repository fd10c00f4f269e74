//! tkgops's GitHub client: the pull-request, comment, review, issue and commit-status calls
//! of the bot, on one configured repository.
//!
//! The [`GitHub`] trait is the seam between the bot and GitHub, in the style of Atlantis'
//! `vcs.Client`: the bot (`tkgops`) talks to GitHub only through it, so its tests put a fake
//! behind it and its redaction layer wraps it. [`OctocrabClient`] implements it with octocrab
//! against GitHub, GitHub Enterprise or the emulator (`tkgops-emulators`). Only the bot and
//! the sandbox's tests depend on this crate; the step providers (`tkgops-providers`) never
//! talk to GitHub.
//!
//! octocrab connects through rustls: in a process that links more than one rustls crypto
//! backend (the bot does), install the process default first, as the bot does with
//! `tkgops_providers::install_crypto_provider`.
//!
//! Resilience: GitHub 5xx answers, connection errors and rate limits are waited out, not fatal.
//! octocrab's own retry middleware is disabled ([`octocrab::service::middleware::retry::RetryConfig::None`])
//! and requests go through octocrab's raw `_get`/`_post`/`_patch` methods, which return the
//! `http::Response`, so the `retry-after` and `x-ratelimit-*` headers can be read. Retries use
//! `backon` exponential backoff ([`RetrySettings`]); on HTTP 429, or 403 with `retry-after` or
//! `x-ratelimit-remaining: 0`, the wait is `retry-after` seconds or until `x-ratelimit-reset`,
//! capped by [`RetrySettings::max_wait`]. The bodies are parsed into octocrab's models.
//!
//! Writes that are not idempotent (creating a comment or a status) are retried as a whole
//! operation (list, find, then write), so a request whose answer was lost is found on the next
//! attempt instead of being duplicated.
//!
//! Tokens are never logged, never put into errors and never shown by `Debug`.

#![warn(missing_docs)]

pub mod comment;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, StatusCode};
use octocrab::Octocrab;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

pub use comment::{
    fit_comment, fit_status_description, MAX_COMMENT_CHARS, MAX_STATUS_DESCRIPTION_CHARS,
};

/// A pull request as the bot sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    /// PR number.
    pub number: u64,
    /// Title (empty when GitHub sent none).
    pub title: String,
    /// Login of the PR author (empty when unknown, e.g. a deleted user).
    pub author: String,
    /// SHA of the head commit.
    pub head_sha: String,
    /// Head branch name.
    pub head_ref: String,
    /// `owner/name` of the head repository; differs from the base repository for forks, `None`
    /// when the fork was deleted.
    pub head_repo_full_name: Option<String>,
    /// Base branch name.
    pub base_ref: String,
    /// Whether the PR is open.
    pub open: bool,
    /// Whether the PR was merged (`merged_at` is set).
    pub merged: bool,
    /// The merge commit on the base branch, only when `merged` (GitHub's test-merge SHA of an
    /// open PR is deliberately not exposed).
    pub merge_commit_sha: Option<String>,
    /// Last update of the PR (pushes, comments, reviews, labels, state changes).
    pub updated_at: Option<DateTime<Utc>>,
    /// Names of the PR's labels (e.g. `tkgops/allow-delete`).
    pub labels: Vec<String>,
}

/// A pull request review (`GET /repos/{o}/{r}/pulls/{n}/reviews`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    /// GitHub's review id (what `PUT …/reviews/{id}/dismissals` names).
    pub id: u64,
    /// Reviewer login (empty when unknown).
    pub user: String,
    /// `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`, `DISMISSED` (dismissed by someone with
    /// write access: it no longer counts) or `PENDING` (only the token's own pending reviews
    /// are listed by GitHub).
    pub state: String,
    /// The head commit the review was submitted on.
    pub commit_id: Option<String>,
    /// When it was submitted (GitHub's clock); `None` for a pending review.
    pub submitted_at: Option<DateTime<Utc>>,
}

/// TCP connect timeout of the GitHub API client (through a proxy: to the proxy): 10 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Read timeout of the GitHub API client (no byte for this long ends the request): 60 s.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// GitHub's cap on `GET /repos/{o}/{r}/pulls/{n}/commits`: "This endpoint lists a maximum of
/// 250 commits for a pull request" (REST docs, "List commits on a pull request"). Past it the
/// list is incomplete, so [`GitHub::list_pull_commits`] refuses instead.
pub const MAX_PULL_COMMITS: usize = 250;

/// One commit of a pull request, as `GET /repos/{o}/{r}/pulls/{n}/commits` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullCommit {
    /// Commit SHA.
    pub sha: String,
    /// Full commit message (`commit.message`).
    pub message: String,
    /// Git author name (`commit.author.name`; empty when absent).
    pub author_name: String,
    /// Git author e-mail (`commit.author.email`; empty when absent).
    pub author_email: String,
    /// Git author date (`commit.author.date`), when given.
    pub author_date: Option<DateTime<Utc>>,
}

/// A commit status as listed by `GET /repos/{o}/{r}/commits/{ref}/statuses`, newest first
/// ([`GitHub::list_own_statuses`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitStatus {
    /// Context, e.g. `tkgops/plan`.
    pub context: String,
    /// State.
    pub state: CommitState,
    /// Description (empty when none).
    pub description: String,
    /// Login of the account whose token created it (`creator.login`; empty when absent).
    pub creator: String,
}

/// An issue or pull-request comment, as listed repository-wide
/// ([`GitHub::list_comments_since`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueComment {
    /// Comment id.
    pub id: u64,
    /// Number of the issue or pull request it is on (from its `issue_url`).
    pub issue_number: u64,
    /// Author login (empty when unknown, e.g. a deleted user).
    pub user: String,
    /// Body (Markdown).
    pub body: String,
    /// When it was created (GitHub's clock).
    pub created_at: DateTime<Utc>,
    /// When it was last edited, else its creation time (GitHub's clock).
    pub updated_at: DateTime<Utc>,
}

/// The configured repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoInfo {
    /// `owner/name`.
    pub full_name: String,
    /// Default branch, e.g. `main`.
    pub default_branch: String,
    /// HTTPS (or, against the emulator, `file://`) clone URL.
    pub clone_url: String,
}

/// State of a commit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommitState {
    /// `pending`.
    Pending,
    /// `success`.
    Success,
    /// `failure`.
    Failure,
    /// `error`.
    Error,
}

impl CommitState {
    /// GitHub's wire name: `pending`, `success`, `failure` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Pending => "pending",
            CommitState::Success => "success",
            CommitState::Failure => "failure",
            CommitState::Error => "error",
        }
    }
}

/// Errors of the GitHub client. `method` and `path` name the request (path with query, never
/// a token).
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// Invalid client configuration (API URL, token characters, no Tokio runtime).
    #[error("invalid GitHub client configuration: {0}")]
    Config(String),
    /// HTTP 401: the token is missing, wrong or expired. Not retried.
    #[error("GitHub rejected the credentials (HTTP 401 on {method} {path}): {message}")]
    Unauthorized {
        /// HTTP method.
        method: String,
        /// Request path and query.
        path: String,
        /// GitHub's `message`.
        message: String,
    },
    /// HTTP 404.
    #[error("GitHub resource not found (HTTP 404 on {method} {path})")]
    NotFound {
        /// HTTP method.
        method: String,
        /// Request path and query.
        path: String,
    },
    /// HTTP 429, or 403 with `retry-after` or `x-ratelimit-remaining: 0`. Transient.
    #[error("GitHub rate limit (HTTP {status} on {method} {path}); retry in {wait:?}")]
    RateLimited {
        /// 429 or 403.
        status: u16,
        /// HTTP method.
        method: String,
        /// Request path and query.
        path: String,
        /// How long GitHub asks to wait (`retry-after`, or until `x-ratelimit-reset`, or 60 s).
        wait: Duration,
    },
    /// HTTP 5xx. Transient.
    #[error("GitHub server error (HTTP {status} on {method} {path}): {message}")]
    Server {
        /// HTTP status code.
        status: u16,
        /// HTTP method.
        method: String,
        /// Request path and query.
        path: String,
        /// GitHub's `message` or the body text.
        message: String,
    },
    /// Any other non-success answer (400, 403, 405, 409, 422, …). Not retried.
    #[error("GitHub API error (HTTP {status} on {method} {path}): {message}{}", details(.errors))]
    Api {
        /// HTTP status code.
        status: u16,
        /// HTTP method.
        method: String,
        /// Request path and query.
        path: String,
        /// GitHub's `message`.
        message: String,
        /// GitHub's `errors` entries, as compact JSON.
        errors: Vec<String>,
    },
    /// The request could not be sent or the answer not read (connection refused/reset,
    /// timeout). Transient.
    #[error("cannot reach GitHub ({method} {path}): {message}")]
    Transport {
        /// HTTP method.
        method: String,
        /// Request path and query.
        path: String,
        /// The underlying error.
        message: String,
    },
    /// A pull request has more commits than GitHub lists ([`MAX_PULL_COMMITS`]): its commit
    /// list would be incomplete, so callers must fail closed. Not retried.
    #[error("pull request #{number} has {count} commits; GitHub lists at most {MAX_PULL_COMMITS}")]
    TooManyCommits {
        /// The pull request.
        number: u64,
        /// Its commit count (`commits` of `GET /pulls/{n}`), or the number listed when
        /// GitHub did not say.
        count: u64,
    },
    /// A success answer whose body does not match GitHub's schema. Not retried.
    #[error("unexpected GitHub response to {method} {path}: {message}")]
    Decode {
        /// HTTP method.
        method: String,
        /// Request path and query.
        path: String,
        /// The parse error.
        message: String,
    },
}

fn details(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(" ({})", errors.join("; "))
    }
}

impl GitHubError {
    /// Whether retrying later can succeed: rate limits, 5xx and connection errors.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitHubError::RateLimited { .. }
                | GitHubError::Server { .. }
                | GitHubError::Transport { .. }
        )
    }

    /// The wait GitHub asked for (rate limits only).
    pub fn rate_limit_wait(&self) -> Option<Duration> {
        match self {
            GitHubError::RateLimited { wait, .. } => Some(*wait),
            _ => None,
        }
    }

    /// The HTTP status, when GitHub answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GitHubError::Unauthorized { .. } => Some(401),
            GitHubError::NotFound { .. } => Some(404),
            GitHubError::RateLimited { status, .. }
            | GitHubError::Server { status, .. }
            | GitHubError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A GitHub App's private key (PEM).
///
/// A GitHub App may have several keys at once (up to 25), so a key is rotated without downtime
/// by adding a new one, deploying it, and then deleting the old one (`docs/github.md`). A
/// [`AppPrivateKey::Source`] is read again before each use, so the bot picks up a replaced key
/// file without a restart.
#[derive(Clone)]
pub enum AppPrivateKey {
    /// A key given once.
    Pem(String),
    /// A key read before each use; `None` when no key can be read, and requests that need the
    /// App's JWT then fail (closed) with [`GitHubError::Config`].
    Source(std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>),
}

impl AppPrivateKey {
    /// The key to sign with now (PEM), or `None` when it cannot be read.
    pub fn current(&self) -> Option<String> {
        match self {
            AppPrivateKey::Pem(pem) => Some(pem.clone()),
            AppPrivateKey::Source(read) => read(),
        }
    }
}

impl From<String> for AppPrivateKey {
    fn from(pem: String) -> Self {
        AppPrivateKey::Pem(pem)
    }
}

impl From<&str> for AppPrivateKey {
    fn from(pem: &str) -> Self {
        AppPrivateKey::Pem(pem.to_string())
    }
}

/// How the bot authenticates to GitHub.
#[derive(Clone)]
pub enum GitHubAuth {
    /// A personal access token (or any token used as is).
    Token(String),
    /// A GitHub App: its id and RSA private key (PEM). The client mints installation tokens
    /// for the repository's installation (looked up with `GET /repos/{o}/{r}/installation`
    /// unless `installation_id` is given) and refreshes them before they expire (octocrab).
    /// When the key changes (a rotation), the next request signs with the new key and mints a
    /// new installation token with it.
    App {
        /// The App id.
        app_id: u64,
        /// The App's private key.
        private_key: AppPrivateKey,
        /// The installation on the config repository's owner, when known.
        installation_id: Option<u64>,
    },
}

impl std::fmt::Debug for GitHubAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitHubAuth::Token(_) => f.write_str("Token(<redacted>)"),
            GitHubAuth::App {
                app_id,
                installation_id,
                ..
            } => f
                .debug_struct("App")
                .field("app_id", app_id)
                .field("installation_id", installation_id)
                .finish_non_exhaustive(),
        }
    }
}

/// GitHub's limit of content-creating requests (comments, statuses, PR edits): 80 a minute
/// across the whole process (`docs/github.md` (d), secondary rate limits).
pub const CONTENT_WRITES_PER_MINUTE: u32 = 80;

/// The process-wide budget of content-creating requests ([`CONTENT_WRITES_PER_MINUTE`]) to
/// the GitHub instance at `api_url`, shared by every client of this process talking to it
/// (GitHub counts the limit per account on one instance).
fn write_budget(api_url: &str) -> std::sync::Arc<governor::DefaultDirectRateLimiter> {
    type Budgets =
        std::collections::HashMap<String, std::sync::Arc<governor::DefaultDirectRateLimiter>>;
    static BUDGETS: std::sync::OnceLock<std::sync::Mutex<Budgets>> = std::sync::OnceLock::new();
    let origin = url::Url::parse(api_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| api_url.to_string());
    let mut budgets = BUDGETS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    budgets
        .entry(origin)
        .or_insert_with(|| {
            std::sync::Arc::new(governor::RateLimiter::direct(governor::Quota::per_minute(
                std::num::NonZeroU32::new(CONTENT_WRITES_PER_MINUTE)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )))
        })
        .clone()
}

/// What an [`OctocrabClient`] saw of its use of the GitHub API, for the bot's metrics: the
/// last `x-ratelimit-remaining` GitHub answered and how many content-creating requests
/// (every method but GET: comments, statuses, PR edits) were sent. Shared (`Arc`) and
/// lock-free; no secret is kept.
#[derive(Debug)]
pub struct ApiUsage {
    /// The last `x-ratelimit-remaining`; `u64::MAX` while no answer carried it.
    rate_limit_remaining: std::sync::atomic::AtomicU64,
    /// Content-creating requests sent.
    content_writes: std::sync::atomic::AtomicU64,
}

impl Default for ApiUsage {
    fn default() -> Self {
        ApiUsage {
            rate_limit_remaining: std::sync::atomic::AtomicU64::new(u64::MAX),
            content_writes: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl ApiUsage {
    /// The requests left in GitHub's primary rate-limit window, as its last answer said
    /// (`x-ratelimit-remaining`); `None` before any answer carried the header.
    pub fn rate_limit_remaining(&self) -> Option<u64> {
        match self
            .rate_limit_remaining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            u64::MAX => None,
            n => Some(n),
        }
    }

    /// How many content-creating requests (not GET) were sent since the client was built;
    /// they share the budget of [`CONTENT_WRITES_PER_MINUTE`].
    pub fn content_writes(&self) -> u64 {
        self.content_writes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn saw_headers(&self, h: &HeaderMap) {
        if let Some(n) = header_u64(h, "x-ratelimit-remaining") {
            self.rate_limit_remaining
                .store(n.min(u64::MAX - 1), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// How [`OctocrabClient`] retries transient failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySettings {
    /// Total attempts per operation, including the first (default 6; 0 is treated as 1).
    pub max_attempts: u32,
    /// First backoff delay for 5xx/connection errors, doubled per attempt up to 60 s (default 1 s).
    pub initial_backoff: Duration,
    /// Cap for one rate-limit wait (`retry-after` / `x-ratelimit-reset`) (default 15 min).
    pub max_wait: Duration,
    /// Wait after a rate limit that names no time (a secondary limit without `retry-after`):
    /// GitHub asks for at least a minute (default 60 s). Consecutive rate limits double the
    /// wait, up to `max_wait`.
    pub min_rate_limit_wait: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_wait: Duration::from_secs(15 * 60),
            min_rate_limit_wait: Duration::from_secs(60),
        }
    }
}

/// The GitHub operations the bot needs, on one repository.
#[async_trait]
pub trait GitHub: Send + Sync {
    /// The repository's full name, default branch and clone URL (`GET /repos/{o}/{r}`).
    async fn repository(&self) -> Result<RepoInfo, GitHubError>;

    /// All open PRs into branch `base`, oldest first, across all pages.
    async fn list_open_pulls(&self, base: &str) -> Result<Vec<PullRequest>, GitHubError>;

    /// Up to `max` closed PRs into `base`, most recently updated first (to notice merges while
    /// polling).
    async fn list_recently_closed_pulls(
        &self,
        base: &str,
        max: usize,
    ) -> Result<Vec<PullRequest>, GitHubError>;

    /// Every closed PR into `base` updated at or after `since` (all closed PRs when `None`),
    /// most recently updated first, across as many pages as it takes: how a restarted bot
    /// finds every merge it missed while it was down.
    async fn list_closed_pulls_since(
        &self,
        base: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<PullRequest>, GitHubError>;

    /// The logins of the members of team `team` (its slug) of organisation `org`, across all
    /// pages (`GET /orgs/{org}/teams/{team}/members`). Errors: [`GitHubError::NotFound`] when
    /// the team does not exist or the token may not read it.
    async fn team_members(&self, org: &str, team: &str) -> Result<Vec<String>, GitHubError>;

    /// One PR by number. Errors: [`GitHubError::NotFound`] when it does not exist.
    async fn get_pull(&self, number: u64) -> Result<PullRequest, GitHubError>;

    /// All reviews of PR `number`, in submission order, across all pages, with their ids,
    /// submission times and states (`DISMISSED` ones included: callers must not count them).
    async fn list_reviews(&self, number: u64) -> Result<Vec<Review>, GitHubError>;

    /// The commits of PR `number`, oldest first, across all pages
    /// (`GET /repos/{o}/{r}/pulls/{n}/commits`): the pull request's own commits as pushed,
    /// also after a squash or rebase merge rewrote them on the base branch. Reads the pull
    /// request's `commits` count first (`GET /pulls/{n}`) to know whether GitHub's list is
    /// whole.
    ///
    /// Errors: [`GitHubError::TooManyCommits`] when the pull request has more than
    /// [`MAX_PULL_COMMITS`] commits (GitHub lists no more than 250, so the list would be
    /// incomplete: fail closed); [`GitHubError::NotFound`]; the API errors.
    async fn list_pull_commits(&self, number: u64) -> Result<Vec<PullCommit>, GitHubError>;

    /// The commit statuses of `sha` that the client's own identity created (`creator.login`
    /// is the token's user, or the App's `<slug>[bot]`), newest first, across all pages of
    /// `GET /repos/{o}/{r}/commits/{sha}/statuses`. Anyone with write access can post any
    /// context, so only these may count where tkgops reads a status back.
    ///
    /// Errors: [`GitHubError::Config`] when the client cannot tell its own login; the API
    /// errors.
    async fn list_own_statuses(&self, sha: &str) -> Result<Vec<CommitStatus>, GitHubError>;

    /// Creates or edits the sticky comment identified by `marker` (a hidden HTML comment such
    /// as `<!-- tkgops:plan -->`) on PR `number`, with `body` passed through [`fit_comment`]
    /// (marker kept, truncated to 65,536 characters with a visible note). Searches all pages of
    /// comments for one written by the token's own user that carries the marker (a marker in
    /// anyone else's comment is ignored); does not write when the body is unchanged. Returns the
    /// comment id. Errors: [`GitHubError::Config`] when the token's user cannot be read.
    async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, GitHubError>;

    /// Every issue and pull-request comment of the repository updated at or after `since`,
    /// oldest update first, across all pages
    /// (`GET /repos/{o}/{r}/issues/comments?sort=updated&direction=asc&since=…`): how the bot
    /// reads `/tkgops` commands without depending on webhook delivery.
    async fn list_comments_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<IssueComment>, GitHubError>;

    /// Opens a pull request from branch `head` of this repository into `base` with `title` and
    /// `body` (through [`fit_comment`]'s 65,536-character cut) (`POST /repos/{o}/{r}/pulls`);
    /// returns its number. Not retried after the request may have been received (GitHub
    /// refuses a second open pull request for the same branch with a 422 anyway).
    ///
    /// Errors: [`GitHubError::Api`] 422 when the branch has no commits over `base` or already
    /// has an open pull request; the transient errors after the client's retries.
    async fn create_pull(
        &self,
        title: &str,
        head: &str,
        base: &str,
        body: &str,
    ) -> Result<u64, GitHubError>;

    /// Creates or edits the open issue whose body carries `marker` and that the token's own
    /// user opened (searched over every page of `GET /repos/{o}/{r}/issues?state=open&creator=…`,
    /// pull requests skipped), with `title` and `body` (through [`fit_comment`]); does not write
    /// when both are unchanged. Returns the issue number: how the bot keeps one dashboard issue.
    ///
    /// Errors: [`GitHubError::Config`] when the token's user cannot be read; the API errors.
    async fn upsert_issue(&self, marker: &str, title: &str, body: &str)
        -> Result<u64, GitHubError>;

    /// The token git uses over HTTPS (`x-access-token`): the token itself, or a GitHub App
    /// installation token valid for at least another 30 s (minted or refreshed as needed).
    /// `None` when the client has no token for git.
    async fn git_token(&self) -> Result<Option<String>, GitHubError> {
        Ok(None)
    }

    /// Sets commit status `context` on `sha` (description cut to 140 characters). Skips the
    /// write when the latest status of this context *created by the client's own identity*
    /// already has the same state and description (Flux-style dedupe; a status someone else
    /// posted under the same context never stands in for tkgops's own).
    async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: CommitState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), GitHubError>;
}

/// How an [`OctocrabClient`] authenticates its requests.
enum Auth {
    /// A token used as is.
    Token {
        octo: std::sync::Arc<Octocrab>,
        token: String,
    },
    /// A GitHub App: `app` authenticates as the App (JWT), `installation` (built on first
    /// use) as its installation on the repository, minting and refreshing installation tokens.
    App(Box<AppAuth>),
}

/// The state of [`Auth::App`].
struct AppAuth {
    app_id: u64,
    key: AppPrivateKey,
    /// What a new App client is built from when the key changes.
    base_uri: http::Uri,
    http: reqwest::Client,
    /// The App client and the key it signs with. Locked before `installation`.
    app: tokio::sync::Mutex<AppClient>,
    installation_id: Option<u64>,
    /// Dropped when GitHub refuses its token (revoked early) or the key changes, so the
    /// next request mints a new one. Shared, never cloned: an `Octocrab` clone copies the
    /// token cache, and tokens minted through a copy would not be reused.
    installation: tokio::sync::Mutex<Option<std::sync::Arc<Octocrab>>>,
}

/// An App client and the private key (PEM) it signs its JWTs with.
struct AppClient {
    pem: String,
    octo: std::sync::Arc<Octocrab>,
}

/// An octocrab client authenticating as App `app_id` with the RSA key `pem`, at `base_uri`
/// over `http`, without octocrab's retries.
///
/// Errors: [`GitHubError::Config`] for a key that is not an RSA private key in PEM form.
fn app_octocrab(
    base_uri: &http::Uri,
    http: &reqwest::Client,
    app_id: u64,
    pem: &str,
) -> Result<std::sync::Arc<Octocrab>, GitHubError> {
    let key = octocrab::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
        GitHubError::Config(
            "the GitHub App private key is not an RSA private key in PEM form".into(),
        )
    })?;
    let octo = Octocrab::builder()
        .base_uri(base_uri.clone())
        .map_err(|e| GitHubError::Config(format!("invalid GitHub API URL: {e}")))?
        .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
        .app(octocrab::models::AppId(app_id), key)
        .build_with_reqwest(http.clone())
        .map_err(|e| GitHubError::Config(format!("cannot build the GitHub client: {e}")))?;
    Ok(std::sync::Arc::new(octo))
}

/// The error of an App whose private key cannot be read (fail closed).
fn no_app_key() -> GitHubError {
    GitHubError::Config("the GitHub App private key cannot be read".into())
}

/// [`GitHub`] implemented with octocrab against GitHub, GitHub Enterprise or the emulator
/// (named for the library it is built on, as the bot's fake and redacting wrapper of the trait
/// are named for what they do).
pub struct OctocrabClient {
    auth: Auth,
    /// Consecutive rate-limited answers (reset by any success): each doubles the next wait.
    rate_limited: std::sync::atomic::AtomicU32,
    /// What the client saw of its API use ([`OctocrabClient::usage`]).
    usage: std::sync::Arc<ApiUsage>,
    owner: String,
    repo: String,
    api_url: String,
    retry: RetrySettings,
    bot_login: tokio::sync::OnceCell<Option<String>>,
}

impl std::fmt::Debug for OctocrabClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OctocrabClient")
            .field("api_url", &self.api_url)
            .field("owner", &self.owner)
            .field("repo", &self.repo)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// A raw success answer.
struct Raw {
    headers: HeaderMap,
    body: String,
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The rate-limit wait of a 403/429 answer (GitHub's REST rate-limit rules), or `None` when
/// it is not a rate limit: `retry-after` seconds; else until `x-ratelimit-reset` when
/// `x-ratelimit-remaining` is 0; else `Duration::ZERO`, meaning "no time given" (a secondary
/// limit: the caller waits at least a minute). A 403 is a rate limit when it carries one of
/// those headers or GitHub's message names a rate limit.
fn rate_limit_wait(status: StatusCode, h: &HeaderMap, message: &str) -> Option<Duration> {
    let retry_after = header_u64(h, "retry-after");
    let exhausted = header_u64(h, "x-ratelimit-remaining") == Some(0);
    let says_so = message.to_ascii_lowercase().contains("rate limit");
    if status != StatusCode::TOO_MANY_REQUESTS
        && !(status == StatusCode::FORBIDDEN && (retry_after.is_some() || exhausted || says_so))
    {
        return None;
    }
    if let Some(s) = retry_after {
        return Some(Duration::from_secs(s));
    }
    if exhausted {
        if let Some(reset) = header_u64(h, "x-ratelimit-reset") {
            let now = Utc::now().timestamp().max(0) as u64;
            return Some(Duration::from_secs(reset.saturating_sub(now).max(1)));
        }
    }
    Some(Duration::ZERO)
}

/// The `rel="next"` target of a `Link` header, as the absolute URL GitHub gave (GitHub
/// Enterprise's `/api/v3` prefix included), when it points to the configured API origin
/// `api_url` (scheme, host and port); `None` otherwise, so the token is only ever sent there.
fn next_link(h: &HeaderMap, api_url: &str) -> Option<String> {
    let link = h.get(http::header::LINK)?.to_str().ok()?;
    for part in link.split(',') {
        let mut pieces = part.split(';');
        let target = pieces
            .next()?
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        if pieces.any(|p| p.trim() == "rel=\"next\"") {
            let url = url::Url::parse(target).ok()?;
            let api = url::Url::parse(api_url).ok()?;
            if url.origin() != api.origin() {
                tracing::warn!(link = %url.origin().ascii_serialization(), "GitHub pagination points to another host; not followed");
                return None;
            }
            return Some(url.to_string());
        }
    }
    None
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl OctocrabClient {
    /// What this client saw of its API use (rate limit left, content writes sent): a shared
    /// handle that the bot's metrics read.
    pub fn usage(&self) -> std::sync::Arc<ApiUsage> {
        self.usage.clone()
    }

    /// A client for repository `owner/repo` at `api_url` (`https://api.github.com`, a GitHub
    /// Enterprise `https://host/api/v3`, or the emulator's URL), authenticating with `token`
    /// (sent as `Authorization: Bearer`).
    ///
    /// Must be called inside a Tokio runtime (octocrab spawns its request buffer).
    /// Errors: [`GitHubError::Config`] for an unparsable URL, a token that is not a valid
    /// header value, or no Tokio runtime.
    pub fn new(
        api_url: &str,
        token: &str,
        owner: &str,
        repo: &str,
        retry: RetrySettings,
    ) -> Result<Self, GitHubError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(GitHubError::Config(
                "OctocrabClient::new must run inside a Tokio runtime".into(),
            ));
        }
        Self::with_auth(
            api_url,
            GitHubAuth::Token(token.to_string()),
            owner,
            repo,
            retry,
        )
    }

    /// A client for `owner/repo` at `api_url` authenticating with `auth`: a token, or a GitHub
    /// App (installation tokens minted and refreshed by octocrab; the installation is looked up
    /// on first use when not given). Makes no request.
    ///
    /// Errors: [`GitHubError::Config`] for an invalid API URL, an empty token or one that is not
    /// a valid header value, a private key that is not an RSA PEM, or no Tokio runtime.
    pub fn with_auth(
        api_url: &str,
        auth: GitHubAuth,
        owner: &str,
        repo: &str,
        retry: RetrySettings,
    ) -> Result<Self, GitHubError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(GitHubError::Config(
                "OctocrabClient::new must run inside a Tokio runtime".into(),
            ));
        }
        let api_url = api_url.trim_end_matches('/').to_string();
        let uri: http::Uri = api_url
            .parse()
            .map_err(|_| GitHubError::Config(format!("invalid GitHub API URL {api_url:?}")))?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(GitHubError::Config(format!(
                "GitHub API URL {api_url:?} needs a scheme and a host"
            )));
        }
        let builder = Octocrab::builder()
            .base_uri(uri.clone())
            .map_err(|_| GitHubError::Config(format!("invalid GitHub API URL {api_url:?}")))?
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None);
        let build_err = |e: octocrab::Error| {
            GitHubError::Config(format!("cannot build the GitHub client: {e}"))
        };
        // octocrab over reqwest rather than its own hyper client: reqwest takes HTTPS_PROXY,
        // HTTP_PROXY, ALL_PROXY and NO_PROXY from the environment (curl's rules).
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| {
                GitHubError::Config(format!(
                    "cannot build the GitHub HTTP client: {}",
                    e.without_url()
                ))
            })?;
        let auth = match auth {
            GitHubAuth::Token(token) => {
                if token.is_empty()
                    || http::HeaderValue::from_str(&format!("Bearer {token}")).is_err()
                {
                    return Err(GitHubError::Config(
                        "the GitHub token is empty or contains invalid characters".into(),
                    ));
                }
                Auth::Token {
                    octo: std::sync::Arc::new(
                        builder
                            .personal_token(token.clone())
                            .build_with_reqwest(http)
                            .map_err(build_err)?,
                    ),
                    token,
                }
            }
            GitHubAuth::App {
                app_id,
                private_key,
                installation_id,
            } => {
                let pem = private_key.current().ok_or_else(no_app_key)?;
                let base_uri = uri.clone();
                let octo = app_octocrab(&base_uri, &http, app_id, &pem)?;
                Auth::App(Box::new(AppAuth {
                    app_id,
                    key: private_key,
                    base_uri,
                    http,
                    app: tokio::sync::Mutex::new(AppClient { pem, octo }),
                    installation_id,
                    installation: tokio::sync::Mutex::new(None),
                }))
            }
        };
        Ok(OctocrabClient {
            auth,
            rate_limited: std::sync::atomic::AtomicU32::new(0),
            usage: Default::default(),
            owner: owner.to_string(),
            repo: repo.to_string(),
            api_url,
            retry,
            bot_login: tokio::sync::OnceCell::new(),
        })
    }

    fn repo_path(&self, rest: &str) -> String {
        format!("/repos/{}/{}{}", enc(&self.owner), enc(&self.repo), rest)
    }

    /// The App client, built again with the current key when the key changed since the last
    /// call (a rotation; the cached installation client is then dropped, so the next request
    /// mints an installation token with the new key). `None` for a token client.
    ///
    /// Errors: [`GitHubError::Config`] when the key cannot be read or is not an RSA PEM key
    /// (fail closed: the replaced key is not used any more).
    async fn app_client(&self) -> Result<Option<std::sync::Arc<Octocrab>>, GitHubError> {
        let Auth::App(auth) = &self.auth else {
            return Ok(None);
        };
        let AppAuth {
            app_id,
            key,
            base_uri,
            http,
            app,
            installation,
            ..
        } = auth.as_ref();
        let pem = key.current().ok_or_else(no_app_key)?;
        let mut app = app.lock().await;
        if app.pem != pem {
            let octo = app_octocrab(base_uri, http, *app_id, &pem)?;
            *app = AppClient { pem, octo };
            installation.lock().await.take();
            tracing::info!(
                "the GitHub App private key changed: installation tokens are minted with the new key"
            );
        }
        Ok(Some(app.octo.clone()))
    }

    /// The octocrab client requests go through: the token client, or the App installation's
    /// (looked up with the App's JWT on first use, and again after [`Self::forget_installation`]
    /// or a key rotation).
    async fn octo(&self) -> Result<std::sync::Arc<Octocrab>, GitHubError> {
        let app = self.app_client().await?;
        match (&self.auth, app) {
            (Auth::Token { octo, .. }, _) => Ok(octo.clone()),
            (Auth::App(auth), app) => {
                let AppAuth {
                    installation_id,
                    installation,
                    ..
                } = auth.as_ref();
                let app = app.ok_or_else(no_app_key)?;
                let mut cached = installation.lock().await;
                if let Some(octo) = cached.as_ref() {
                    return Ok(octo.clone());
                }
                let id = match installation_id {
                    Some(id) => *id,
                    None => {
                        let path = self.repo_path("/installation");
                        let resp =
                            app._get(path.as_str())
                                .await
                                .map_err(|e| GitHubError::Transport {
                                    method: "GET".into(),
                                    path: path.clone(),
                                    message: e.to_string(),
                                })?;
                        let status = resp.status();
                        let body = app.body_to_string(resp).await.unwrap_or_default();
                        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                        match v.get("id").and_then(Value::as_u64) {
                            Some(id) if status.is_success() => id,
                            _ => {
                                return Err(GitHubError::Config(format!(
                                    "the GitHub App is not installed on {}/{} (GET {path}: HTTP {status})",
                                    self.owner, self.repo
                                )))
                            }
                        }
                    }
                };
                let octo = std::sync::Arc::new(
                    app.installation(octocrab::models::InstallationId(id))
                        .map_err(|e| {
                            GitHubError::Config(format!("GitHub App installation {id}: {e}"))
                        })?,
                );
                *cached = Some(octo.clone());
                Ok(octo)
            }
        }
    }

    /// Drops the cached installation client (and its token); returns whether there was one.
    async fn forget_installation(&self) -> bool {
        match &self.auth {
            Auth::App(auth) => auth.installation.lock().await.take().is_some(),
            Auth::Token { .. } => false,
        }
    }

    /// [`Self::send_raw`], minting a new installation token once when GitHub refuses the cached
    /// one (a token revoked or expired early): 401 then means the App itself is refused.
    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Raw, GitHubError> {
        match self.send_raw(method, path, body).await {
            Err(GitHubError::Unauthorized { .. }) if self.forget_installation().await => {
                tracing::info!("GitHub refused the installation token; minting a new one");
                self.send_raw(method, path, body).await
            }
            other => other,
        }
    }

    /// Sends one request (no retry) and classifies the answer.
    async fn send_raw(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Raw, GitHubError> {
        let m = method.as_str().to_string();
        let transport = |e: octocrab::Error| GitHubError::Transport {
            method: m.clone(),
            path: path.to_string(),
            message: e.to_string(),
        };
        let octo = self.octo().await?;
        let octo = &octo;
        if *method != Method::GET {
            // Content-creating requests share one process-wide budget (GitHub's secondary
            // limit of 80 a minute), so a burst of updates is paced instead of refused.
            write_budget(&self.api_url).until_ready().await;
            self.usage
                .content_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let res = match *method {
            Method::GET => octo._get(path).await,
            Method::POST => octo._post(path, body).await,
            Method::PATCH => octo._patch(path, body).await,
            Method::PUT => octo._put(path, body).await,
            Method::DELETE => octo._delete(path, body).await,
            _ => return Err(GitHubError::Config(format!("unsupported method {method}"))),
        };
        let resp = match res {
            Ok(r) => r,
            Err(
                e @ (octocrab::Error::Uri { .. }
                | octocrab::Error::UriParse { .. }
                | octocrab::Error::Serde { .. }),
            ) => return Err(GitHubError::Config(e.to_string())),
            Err(e) => return Err(transport(e)),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        self.usage.saw_headers(&headers);
        if status.is_success() {
            self.rate_limited
                .store(0, std::sync::atomic::Ordering::Relaxed);
            let body = octo.body_to_string(resp).await.map_err(transport)?;
            return Ok(Raw { headers, body });
        }
        let (message, errors) = match octocrab::map_github_error(resp).await {
            Err(octocrab::Error::GitHub { source, .. }) => (
                source.message.clone(),
                source
                    .errors
                    .unwrap_or_default()
                    .iter()
                    .map(|e| e.to_string())
                    .collect(),
            ),
            Err(e) if status.is_server_error() => (e.to_string(), Vec::new()),
            Err(e) => return Err(transport(e)),
            Ok(_) => (status.to_string(), Vec::new()),
        };
        let path = path.to_string();
        Err(
            if let Some(wait) = rate_limit_wait(status, &headers, &message) {
                // At least the configured minimum, doubled for every consecutive rate limit.
                let hits = self
                    .rate_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let base = if wait.is_zero() {
                    self.retry.min_rate_limit_wait
                } else {
                    wait
                };
                let wait = base
                    .saturating_mul(1u32 << hits.min(10))
                    .min(self.retry.max_wait);
                GitHubError::RateLimited {
                    status: status.as_u16(),
                    method: m,
                    path,
                    wait,
                }
            } else if status.is_server_error() {
                GitHubError::Server {
                    status: status.as_u16(),
                    method: m,
                    path,
                    message,
                }
            } else if status == StatusCode::UNAUTHORIZED {
                GitHubError::Unauthorized {
                    method: m,
                    path,
                    message,
                }
            } else if status == StatusCode::NOT_FOUND {
                GitHubError::NotFound { method: m, path }
            } else {
                GitHubError::Api {
                    status: status.as_u16(),
                    method: m,
                    path,
                    message,
                    errors,
                }
            },
        )
    }

    /// Runs `op` with the retry policy: transient errors are retried with exponential backoff,
    /// rate limits after the wait GitHub asked for (capped by `max_wait`).
    async fn retrying<T, F, Fut>(&self, what: &str, op: F) -> Result<T, GitHubError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GitHubError>>,
    {
        let r = self.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(r.initial_backoff)
            .with_max_delay(r.initial_backoff.max(Duration::from_secs(60)))
            .with_max_times(r.max_attempts.max(1) as usize - 1)
            .with_jitter();
        op.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(GitHubError::is_transient)
            .adjust(move |e: &GitHubError, d| d.map(|d| e.rate_limit_wait().map(|w| w.min(r.max_wait)).unwrap_or(d)))
            .notify(|e: &GitHubError, d| tracing::warn!(operation = what, error = %e, retry_in = ?d, "GitHub call failed; retrying"))
            .await
    }

    /// One request with retries.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Raw, GitHubError> {
        self.retrying(path, || self.send_once(&method, path, body.as_ref()))
            .await
    }

    fn decode<T: DeserializeOwned>(
        method: &Method,
        path: &str,
        raw: &Raw,
    ) -> Result<T, GitHubError> {
        serde_json::from_str(&raw.body).map_err(|e| GitHubError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    /// GETs `first` and every `rel="next"` page, each page with retries, until `limit` items.
    async fn get_pages<T: DeserializeOwned>(
        &self,
        first: String,
        limit: Option<usize>,
    ) -> Result<Vec<T>, GitHubError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0usize;
        while let Some(path) = next.take() {
            let raw = self.call(Method::GET, &path, None).await?;
            let mut items: Vec<T> = Self::decode(&Method::GET, &path, &raw)?;
            out.append(&mut items);
            pages += 1;
            if limit.is_some_and(|l| out.len() >= l) || pages >= 1000 {
                break;
            }
            next = next_link(&raw.headers, &self.api_url);
        }
        if let Some(l) = limit {
            out.truncate(l);
        }
        Ok(out)
    }

    /// Same as [`Self::get_pages`] without per-page retries (used inside a retried operation).
    async fn get_pages_once<T: DeserializeOwned>(
        &self,
        first: String,
    ) -> Result<Vec<T>, GitHubError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0usize;
        while let Some(path) = next.take() {
            let raw = self.send_once(&Method::GET, &path, None).await?;
            let mut items: Vec<T> = Self::decode(&Method::GET, &path, &raw)?;
            out.append(&mut items);
            pages += 1;
            if pages >= 1000 {
                break;
            }
            next = next_link(&raw.headers, &self.api_url);
        }
        Ok(out)
    }

    /// The login the bot's comments are authored by, cached: for a token `GET /user`'s
    /// `login` (`None` when the token cannot read it); for a GitHub App `<slug>[bot]`, the
    /// slug read with the App's JWT (`GET /app`).
    async fn bot_login(&self) -> Result<Option<String>, GitHubError> {
        if let Some(app) = self.app_client().await? {
            return self
                .bot_login
                .get_or_try_init(|| async {
                    let resp = app._get("/app").await.map_err(|e| GitHubError::Transport {
                        method: "GET".into(),
                        path: "/app".into(),
                        message: e.to_string(),
                    })?;
                    let body = app.body_to_string(resp).await.unwrap_or_default();
                    Ok(serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v.get("slug").and_then(Value::as_str).map(str::to_string))
                        .map(|slug| format!("{slug}[bot]")))
                })
                .await
                .cloned();
        }
        self.bot_login
            .get_or_try_init(|| async {
                match self.send_once(&Method::GET, "/user", None).await {
                    Ok(raw) => Ok(serde_json::from_str::<Value>(&raw.body)
                        .ok()
                        .and_then(|v| v.get("login").and_then(Value::as_str).map(str::to_string))),
                    Err(e) if e.is_transient() || matches!(e, GitHubError::Unauthorized { .. }) => {
                        Err(e)
                    }
                    Err(_) => Ok(None),
                }
            })
            .await
            .cloned()
    }

    async fn upsert_issue_once(
        &self,
        marker: &str,
        title: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        let login = self.bot_login().await?.ok_or_else(|| {
            GitHubError::Config(
                "cannot tell the bot's own issues apart: GET /user returned no login for this token"
                    .into(),
            )
        })?;
        let issues: Vec<Value> = self
            .get_pages_once(self.repo_path(&format!(
                "/issues?state=open&per_page=100&creator={}",
                enc(&login)
            )))
            .await?;
        let existing = issues.iter().find(|i| {
            i.get("pull_request").is_none()
                && i.pointer("/user/login")
                    .and_then(Value::as_str)
                    .is_some_and(|l| l.eq_ignore_ascii_case(&login))
                && i.get("body")
                    .and_then(Value::as_str)
                    .is_some_and(|b| b.contains(marker))
        });
        match existing {
            Some(i) => {
                let n = i.get("number").and_then(Value::as_u64).unwrap_or(0);
                let same = i.get("body").and_then(Value::as_str) == Some(body)
                    && i.get("title").and_then(Value::as_str) == Some(title);
                if !same {
                    let path = self.repo_path(&format!("/issues/{n}"));
                    self.send_once(
                        &Method::PATCH,
                        &path,
                        Some(&json!({ "title": title, "body": body })),
                    )
                    .await?;
                }
                Ok(n)
            }
            None => {
                let path = self.repo_path("/issues");
                let raw = self
                    .send_once(
                        &Method::POST,
                        &path,
                        Some(&json!({ "title": title, "body": body })),
                    )
                    .await?;
                let v: Value = Self::decode(&Method::POST, &path, &raw)?;
                Ok(v.get("number").and_then(Value::as_u64).unwrap_or(0))
            }
        }
    }

    async fn upsert_once(&self, number: u64, marker: &str, body: &str) -> Result<u64, GitHubError> {
        let comments: Vec<octocrab::models::issues::Comment> = self
            .get_pages_once(self.repo_path(&format!("/issues/{number}/comments?per_page=100")))
            .await?;
        // Found by marker *and* author: a marker someone else planted in their own comment is
        // ignored (security rule 3, fail closed).
        let login = self.bot_login().await?.ok_or_else(|| {
            GitHubError::Config(
                "cannot tell the bot's own comments apart: GET /user returned no login for this token"
                    .into(),
            )
        })?;
        let existing = comments.iter().find(|c| {
            c.user.login.eq_ignore_ascii_case(&login)
                && c.body.as_deref().is_some_and(|b| b.contains(marker))
        });
        match existing {
            Some(c) if c.body.as_deref() == Some(body) => Ok(c.id.0),
            Some(c) => {
                let path = self.repo_path(&format!("/issues/comments/{}", c.id.0));
                self.send_once(&Method::PATCH, &path, Some(&json!({ "body": body })))
                    .await?;
                tracing::debug!(pr = number, comment = c.id.0, "updated sticky comment");
                Ok(c.id.0)
            }
            None => {
                let path = self.repo_path(&format!("/issues/{number}/comments"));
                let raw = self
                    .send_once(&Method::POST, &path, Some(&json!({ "body": body })))
                    .await?;
                let c: octocrab::models::issues::Comment =
                    Self::decode(&Method::POST, &path, &raw)?;
                tracing::debug!(pr = number, comment = c.id.0, "created sticky comment");
                Ok(c.id.0)
            }
        }
    }

    /// The statuses of `sha` created by the client's own login, newest first (all pages, no
    /// per-page retry: used inside retried operations).
    async fn own_statuses_once(&self, sha: &str) -> Result<Vec<CommitStatus>, GitHubError> {
        let login = self.bot_login().await?.ok_or_else(|| {
            GitHubError::Config(
                "cannot tell the bot's own statuses apart: GET /user returned no login for this token"
                    .into(),
            )
        })?;
        let statuses: Vec<octocrab::models::Status> = self
            .get_pages_once(self.repo_path(&format!("/commits/{}/statuses?per_page=100", enc(sha))))
            .await?;
        Ok(statuses
            .into_iter()
            .filter_map(|s| {
                let creator = s.creator.map(|c| c.login).unwrap_or_default();
                if !creator.eq_ignore_ascii_case(&login) {
                    return None;
                }
                let state = match serde_json::to_value(s.state).ok()?.as_str()? {
                    "pending" => CommitState::Pending,
                    "success" => CommitState::Success,
                    "failure" => CommitState::Failure,
                    "error" => CommitState::Error,
                    _ => return None,
                };
                Some(CommitStatus {
                    context: s.context.unwrap_or_default(),
                    state,
                    description: s.description.unwrap_or_default(),
                    creator,
                })
            })
            .collect())
    }

    async fn set_status_once(
        &self,
        sha: &str,
        context: &str,
        state: CommitState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), GitHubError> {
        let own = self.own_statuses_once(sha).await?;
        if let Some(latest) = own.iter().find(|s| s.context == context) {
            if latest.state == state && latest.description == description {
                tracing::debug!(sha, context, "commit status unchanged; not posting");
                return Ok(());
            }
        }
        let mut body =
            json!({ "state": state.as_str(), "context": context, "description": description });
        if let Some(u) = target_url {
            body["target_url"] = json!(u);
        }
        self.send_once(
            &Method::POST,
            &self.repo_path(&format!("/statuses/{}", enc(sha))),
            Some(&body),
        )
        .await?;
        Ok(())
    }
}

fn convert_pull(p: octocrab::models::pulls::PullRequest) -> PullRequest {
    let merged = p.merged_at.is_some() || p.merged == Some(true);
    PullRequest {
        number: p.number,
        title: p.title.unwrap_or_default(),
        author: p.user.map(|u| u.login).unwrap_or_default(),
        head_sha: p.head.sha.clone(),
        head_ref: p.head.ref_field.clone(),
        head_repo_full_name: p.head.repo.as_ref().and_then(|r| r.full_name.clone()),
        base_ref: p.base.ref_field.clone(),
        open: matches!(p.state, Some(octocrab::models::IssueState::Open)),
        merged,
        merge_commit_sha: if merged { p.merge_commit_sha } else { None },
        updated_at: p.updated_at,
        labels: p
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.name)
            .collect(),
    }
}

fn review_state(s: Option<octocrab::models::pulls::ReviewState>) -> String {
    use octocrab::models::pulls::ReviewState as S;
    match s {
        Some(S::Approved) => "APPROVED",
        Some(S::ChangesRequested) => "CHANGES_REQUESTED",
        Some(S::Commented) => "COMMENTED",
        Some(S::Dismissed) => "DISMISSED",
        Some(S::Pending) => "PENDING",
        Some(S::Open) => "OPEN",
        Some(_) | None => "UNKNOWN",
    }
    .to_string()
}

#[async_trait]
impl GitHub for OctocrabClient {
    async fn git_token(&self) -> Result<Option<String>, GitHubError> {
        match &self.auth {
            Auth::Token { token, .. } => Ok(Some(token.clone())),
            Auth::App(_) => {
                use octocrab::secrecy::ExposeSecret;
                let octo = self.octo().await?;
                let octo = &octo;
                let token = octo.installation_token().await.map_err(|e| {
                    GitHubError::Config(format!("minting a GitHub App installation token: {e}"))
                })?;
                Ok(Some(token.expose_secret().to_string()))
            }
        }
    }

    async fn repository(&self) -> Result<RepoInfo, GitHubError> {
        let path = self.repo_path("");
        let raw = self.call(Method::GET, &path, None).await?;
        let r: octocrab::models::Repository = Self::decode(&Method::GET, &path, &raw)?;
        Ok(RepoInfo {
            full_name: r
                .full_name
                .unwrap_or_else(|| format!("{}/{}", self.owner, self.repo)),
            default_branch: r.default_branch.unwrap_or_else(|| "main".to_string()),
            clone_url: r.clone_url.map(|u| u.to_string()).unwrap_or_default(),
        })
    }

    async fn list_open_pulls(&self, base: &str) -> Result<Vec<PullRequest>, GitHubError> {
        let path = self.repo_path(&format!(
            "/pulls?state=open&base={}&sort=created&direction=asc&per_page=100",
            enc(base)
        ));
        let pulls: Vec<octocrab::models::pulls::PullRequest> = self.get_pages(path, None).await?;
        Ok(pulls.into_iter().map(convert_pull).collect())
    }

    async fn list_recently_closed_pulls(
        &self,
        base: &str,
        max: usize,
    ) -> Result<Vec<PullRequest>, GitHubError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let path = self.repo_path(&format!(
            "/pulls?state=closed&base={}&sort=updated&direction=desc&per_page={}",
            enc(base),
            max.min(100)
        ));
        let pulls: Vec<octocrab::models::pulls::PullRequest> =
            self.get_pages(path, Some(max)).await?;
        Ok(pulls.into_iter().map(convert_pull).collect())
    }

    async fn list_closed_pulls_since(
        &self,
        base: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<PullRequest>, GitHubError> {
        let mut next = Some(self.repo_path(&format!(
            "/pulls?state=closed&base={}&sort=updated&direction=desc&per_page=100",
            enc(base)
        )));
        let mut out = Vec::new();
        let mut pages = 0usize;
        while let Some(path) = next.take() {
            let raw = self.call(Method::GET, &path, None).await?;
            let items: Vec<octocrab::models::pulls::PullRequest> =
                Self::decode(&Method::GET, &path, &raw)?;
            let mut older = false;
            for p in items.into_iter().map(convert_pull) {
                match (since, p.updated_at) {
                    (Some(s), Some(u)) if u < s => older = true,
                    _ => out.push(p),
                }
            }
            pages += 1;
            if older || pages >= 10_000 {
                break;
            }
            next = next_link(&raw.headers, &self.api_url);
        }
        Ok(out)
    }

    async fn team_members(&self, org: &str, team: &str) -> Result<Vec<String>, GitHubError> {
        let path = format!(
            "/orgs/{}/teams/{}/members?per_page=100",
            enc(org),
            enc(team)
        );
        let members: Vec<octocrab::models::Author> = self.get_pages(path, None).await?;
        Ok(members.into_iter().map(|m| m.login).collect())
    }

    async fn get_pull(&self, number: u64) -> Result<PullRequest, GitHubError> {
        let path = self.repo_path(&format!("/pulls/{number}"));
        let raw = self.call(Method::GET, &path, None).await?;
        let p: octocrab::models::pulls::PullRequest = Self::decode(&Method::GET, &path, &raw)?;
        Ok(convert_pull(p))
    }

    async fn list_reviews(&self, number: u64) -> Result<Vec<Review>, GitHubError> {
        let path = self.repo_path(&format!("/pulls/{number}/reviews?per_page=100"));
        let reviews: Vec<octocrab::models::pulls::Review> = self.get_pages(path, None).await?;
        Ok(reviews
            .into_iter()
            .map(|r| Review {
                id: r.id.0,
                user: r.user.map(|u| u.login).unwrap_or_default(),
                state: review_state(r.state),
                commit_id: r.commit_id,
                submitted_at: r.submitted_at,
            })
            .collect())
    }

    async fn list_pull_commits(&self, number: u64) -> Result<Vec<PullCommit>, GitHubError> {
        // GitHub lists at most 250 commits; the pull request's own `commits` count tells
        // whether the list is whole.
        let path = self.repo_path(&format!("/pulls/{number}"));
        let raw = self.call(Method::GET, &path, None).await?;
        let pr: octocrab::models::pulls::PullRequest = Self::decode(&Method::GET, &path, &raw)?;
        let too_many = |count: u64| GitHubError::TooManyCommits { number, count };
        if let Some(c) = pr.commits.filter(|c| *c > MAX_PULL_COMMITS as u64) {
            return Err(too_many(c));
        }
        let path = self.repo_path(&format!("/pulls/{number}/commits?per_page=100"));
        let commits: Vec<octocrab::models::repos::RepoCommit> = self.get_pages(path, None).await?;
        let listed = commits.len() as u64;
        if commits.len() > MAX_PULL_COMMITS
            || (commits.len() == MAX_PULL_COMMITS && pr.commits.is_none_or(|c| c > listed))
        {
            return Err(too_many(pr.commits.unwrap_or(listed).max(listed)));
        }
        Ok(commits
            .into_iter()
            .map(|c| {
                let author = c.commit.author;
                PullCommit {
                    sha: c.sha,
                    message: c.commit.message,
                    author_name: author.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
                    author_email: author
                        .as_ref()
                        .and_then(|a| a.email.clone())
                        .unwrap_or_default(),
                    author_date: author.and_then(|a| a.date),
                }
            })
            .collect())
    }

    async fn list_own_statuses(&self, sha: &str) -> Result<Vec<CommitStatus>, GitHubError> {
        self.retrying("list_own_statuses", || self.own_statuses_once(sha))
            .await
    }

    async fn list_comments_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<IssueComment>, GitHubError> {
        let path = self.repo_path(&format!(
            "/issues/comments?sort=updated&direction=asc&per_page=100&since={}",
            enc(&since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        ));
        let comments: Vec<octocrab::models::issues::Comment> = self.get_pages(path, None).await?;
        Ok(comments
            .into_iter()
            .filter_map(|c| {
                let issue_number = c
                    .issue_url
                    .as_ref()
                    .and_then(|u| u.path_segments()?.next_back()?.parse().ok())?;
                Some(IssueComment {
                    id: c.id.0,
                    issue_number,
                    user: c.user.login,
                    body: c.body.unwrap_or_default(),
                    created_at: c.created_at,
                    updated_at: c.updated_at.unwrap_or(c.created_at),
                })
            })
            .collect())
    }

    async fn create_pull(
        &self,
        title: &str,
        head: &str,
        base: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        let path = self.repo_path("/pulls");
        let body = fit_comment(body, "");
        let payload = json!({ "title": title, "head": head, "base": base, "body": body });
        let raw = self
            .retrying("create_pull", || {
                self.send_once(&Method::POST, &path, Some(&payload))
            })
            .await?;
        let v: Value = Self::decode(&Method::POST, &path, &raw)?;
        v.get("number")
            .and_then(Value::as_u64)
            .ok_or_else(|| GitHubError::Decode {
                method: "POST".into(),
                path: path.clone(),
                message: "the created pull request has no number".into(),
            })
    }

    async fn upsert_issue(
        &self,
        marker: &str,
        title: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        let body = fit_comment(body, marker);
        self.retrying("upsert_issue", || {
            self.upsert_issue_once(marker, title, &body)
        })
        .await
    }

    async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        let body = fit_comment(body, marker);
        self.retrying("upsert_comment", || self.upsert_once(number, marker, &body))
            .await
    }

    async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: CommitState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), GitHubError> {
        let description = fit_status_description(description);
        self.retrying("set_status", || {
            self.set_status_once(sha, context, state, &description, target_url)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn rate_limit_classification() {
        let now = Utc::now().timestamp();
        let wait = |status, h: &HeaderMap| rate_limit_wait(status, h, "");
        assert_eq!(
            wait(
                StatusCode::TOO_MANY_REQUESTS,
                &headers(&[("retry-after", "7".into())])
            ),
            Some(Duration::from_secs(7))
        );
        // No time given: the caller waits at least its minimum (a minute).
        assert_eq!(
            wait(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()),
            Some(Duration::ZERO)
        );
        let exhausted = headers(&[
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", (now + 30).to_string()),
        ]);
        let w = wait(StatusCode::FORBIDDEN, &exhausted).unwrap();
        assert!(
            w >= Duration::from_secs(28) && w <= Duration::from_secs(30),
            "{w:?}"
        );
        assert_eq!(
            wait(
                StatusCode::FORBIDDEN,
                &headers(&[("x-ratelimit-remaining", "10".into())])
            ),
            None
        );
        assert_eq!(wait(StatusCode::FORBIDDEN, &HeaderMap::new()), None);
        // A secondary rate limit without headers, recognised by GitHub's message.
        assert_eq!(
            rate_limit_wait(
                StatusCode::FORBIDDEN,
                &HeaderMap::new(),
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(
            wait(
                StatusCode::BAD_GATEWAY,
                &headers(&[("retry-after", "7".into())])
            ),
            None
        );
    }

    #[test]
    fn next_link_follows_absolute_urls_on_the_api_origin_only() {
        let h = headers(&[(
            "link",
            "<https://api.github.com/repos/o/r/pulls?state=open&page=2>; rel=\"next\", <https://api.github.com/repos/o/r/pulls?page=5>; rel=\"last\"".into(),
        )]);
        assert_eq!(
            next_link(&h, "https://api.github.com").as_deref(),
            Some("https://api.github.com/repos/o/r/pulls?state=open&page=2")
        );
        // GitHub Enterprise: the /api/v3 prefix is kept.
        let ghe = headers(&[(
            "link",
            "<https://ghe.corp.example/api/v3/repositories/42/pulls?page=2>; rel=\"next\"".into(),
        )]);
        assert_eq!(
            next_link(&ghe, "https://ghe.corp.example/api/v3").as_deref(),
            Some("https://ghe.corp.example/api/v3/repositories/42/pulls?page=2")
        );
        // Another host never gets the token.
        assert_eq!(next_link(&ghe, "https://api.github.com"), None);
        let last_only = headers(&[(
            "link",
            "<https://api.github.com/x?page=1>; rel=\"first\"".into(),
        )]);
        assert_eq!(next_link(&last_only, "https://api.github.com"), None);
    }
}

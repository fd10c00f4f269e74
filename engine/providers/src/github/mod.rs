//! GitHub provider: the pull-request, comment, review and commit-status calls of the bot.
//!
//! The bot talks to GitHub only through the [`VcsClient`] trait (in the style of Atlantis'
//! `vcs.Client`), implemented by [`OctocrabClient`]. Every call targets one configured
//! repository.
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
    /// Last update of the PR (pushes, comments, reviews, state changes).
    pub updated_at: Option<DateTime<Utc>>,
}

/// A pull request review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    /// Reviewer login (empty when unknown).
    pub user: String,
    /// `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`, `DISMISSED` or `PENDING`.
    pub state: String,
    /// The head commit the review was submitted on.
    pub commit_id: Option<String>,
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

/// Errors of the GitHub provider. `method` and `path` name the request (path with query, never
/// a token).
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
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

impl GithubError {
    /// Whether retrying later can succeed: rate limits, 5xx and connection errors.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GithubError::RateLimited { .. }
                | GithubError::Server { .. }
                | GithubError::Transport { .. }
        )
    }

    /// The wait GitHub asked for (rate limits only).
    pub fn rate_limit_wait(&self) -> Option<Duration> {
        match self {
            GithubError::RateLimited { wait, .. } => Some(*wait),
            _ => None,
        }
    }

    /// The HTTP status, when GitHub answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GithubError::Unauthorized { .. } => Some(401),
            GithubError::NotFound { .. } => Some(404),
            GithubError::RateLimited { status, .. }
            | GithubError::Server { status, .. }
            | GithubError::Api { status, .. } => Some(*status),
            _ => None,
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
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_wait: Duration::from_secs(15 * 60),
        }
    }
}

/// The GitHub operations the bot needs, on one repository.
#[async_trait]
pub trait VcsClient: Send + Sync {
    /// The repository's full name, default branch and clone URL (`GET /repos/{o}/{r}`).
    async fn repository(&self) -> Result<RepoInfo, GithubError>;

    /// All open PRs into branch `base`, oldest first, across all pages.
    async fn list_open_pulls(&self, base: &str) -> Result<Vec<PullRequest>, GithubError>;

    /// Up to `max` closed PRs into `base`, most recently updated first (to notice merges while
    /// polling).
    async fn list_recently_closed_pulls(
        &self,
        base: &str,
        max: usize,
    ) -> Result<Vec<PullRequest>, GithubError>;

    /// One PR by number. Errors: [`GithubError::NotFound`] when it does not exist.
    async fn get_pull(&self, number: u64) -> Result<PullRequest, GithubError>;

    /// All reviews of PR `number`, in submission order.
    async fn list_reviews(&self, number: u64) -> Result<Vec<Review>, GithubError>;

    /// Creates or edits the sticky comment identified by `marker` (a hidden HTML comment such
    /// as `<!-- tkgops:plan -->`) on PR `number`, with `body` passed through [`fit_comment`]
    /// (marker kept, truncated to 65,536 characters with a visible note). Searches all pages of
    /// comments for one written by the token's own user that carries the marker (a marker in
    /// anyone else's comment is ignored); does not write when the body is unchanged. Returns the
    /// comment id. Errors: [`GithubError::Config`] when the token's user cannot be read.
    async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, GithubError>;

    /// Sets commit status `context` on `sha` (description cut to 140 characters). Skips the
    /// write when the latest status of this context already has the same state and
    /// description (Flux-style dedupe).
    async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: CommitState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), GithubError>;
}

/// [`VcsClient`] implemented with octocrab against GitHub, GitHub Enterprise or the emulator.
pub struct OctocrabClient {
    octo: Octocrab,
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

/// The rate-limit wait of a 403/429 answer, or `None` when it is not a rate limit.
fn rate_limit_wait(status: StatusCode, h: &HeaderMap) -> Option<Duration> {
    let retry_after = header_u64(h, "retry-after");
    let exhausted = header_u64(h, "x-ratelimit-remaining") == Some(0);
    if status != StatusCode::TOO_MANY_REQUESTS
        && !(status == StatusCode::FORBIDDEN && (retry_after.is_some() || exhausted))
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
    Some(Duration::from_secs(60))
}

/// The `rel="next"` target of a `Link` header, reduced to path and query (the token is only
/// ever sent to the configured API host).
fn next_link(h: &HeaderMap) -> Option<String> {
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
            return Some(match url.query() {
                Some(q) => format!("{}?{}", url.path(), q),
                None => url.path().to_string(),
            });
        }
    }
    None
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl OctocrabClient {
    /// A client for repository `owner/repo` at `api_url` (`https://api.github.com`, a GitHub
    /// Enterprise `https://host/api/v3`, or the emulator's URL), authenticating with `token`
    /// (sent as `Authorization: Bearer`).
    ///
    /// Must be called inside a Tokio runtime (octocrab spawns its request buffer).
    /// Errors: [`GithubError::Config`] for an unparsable URL, a token that is not a valid
    /// header value, or no Tokio runtime.
    pub fn new(
        api_url: &str,
        token: &str,
        owner: &str,
        repo: &str,
        retry: RetrySettings,
    ) -> Result<Self, GithubError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(GithubError::Config(
                "OctocrabClient::new must run inside a Tokio runtime".into(),
            ));
        }
        if token.is_empty() || http::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err(GithubError::Config(
                "the GitHub token is empty or contains invalid characters".into(),
            ));
        }
        let api_url = api_url.trim_end_matches('/').to_string();
        let uri: http::Uri = api_url
            .parse()
            .map_err(|_| GithubError::Config(format!("invalid GitHub API URL {api_url:?}")))?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(GithubError::Config(format!(
                "GitHub API URL {api_url:?} needs a scheme and a host"
            )));
        }
        let octo = Octocrab::builder()
            .base_uri(uri)
            .map_err(|_| GithubError::Config(format!("invalid GitHub API URL {api_url:?}")))?
            .personal_token(token.to_string())
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(60)))
            .build()
            .map_err(|e| GithubError::Config(format!("cannot build the GitHub client: {e}")))?;
        Ok(OctocrabClient {
            octo,
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

    /// Sends one request (no retry) and classifies the answer.
    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Raw, GithubError> {
        let m = method.as_str().to_string();
        let transport = |e: octocrab::Error| GithubError::Transport {
            method: m.clone(),
            path: path.to_string(),
            message: e.to_string(),
        };
        let res = match *method {
            Method::GET => self.octo._get(path).await,
            Method::POST => self.octo._post(path, body).await,
            Method::PATCH => self.octo._patch(path, body).await,
            Method::PUT => self.octo._put(path, body).await,
            Method::DELETE => self.octo._delete(path, body).await,
            _ => return Err(GithubError::Config(format!("unsupported method {method}"))),
        };
        let resp = match res {
            Ok(r) => r,
            Err(
                e @ (octocrab::Error::Uri { .. }
                | octocrab::Error::UriParse { .. }
                | octocrab::Error::Serde { .. }),
            ) => return Err(GithubError::Config(e.to_string())),
            Err(e) => return Err(transport(e)),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        if status.is_success() {
            let body = self.octo.body_to_string(resp).await.map_err(transport)?;
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
        Err(if let Some(wait) = rate_limit_wait(status, &headers) {
            GithubError::RateLimited {
                status: status.as_u16(),
                method: m,
                path,
                wait,
            }
        } else if status.is_server_error() {
            GithubError::Server {
                status: status.as_u16(),
                method: m,
                path,
                message,
            }
        } else if status == StatusCode::UNAUTHORIZED {
            GithubError::Unauthorized {
                method: m,
                path,
                message,
            }
        } else if status == StatusCode::NOT_FOUND {
            GithubError::NotFound { method: m, path }
        } else {
            GithubError::Api {
                status: status.as_u16(),
                method: m,
                path,
                message,
                errors,
            }
        })
    }

    /// Runs `op` with the retry policy: transient errors are retried with exponential backoff,
    /// rate limits after the wait GitHub asked for (capped by `max_wait`).
    async fn retrying<T, F, Fut>(&self, what: &str, op: F) -> Result<T, GithubError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GithubError>>,
    {
        let r = self.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(r.initial_backoff)
            .with_max_delay(r.initial_backoff.max(Duration::from_secs(60)))
            .with_max_times(r.max_attempts.max(1) as usize - 1)
            .with_jitter();
        op.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(GithubError::is_transient)
            .adjust(move |e: &GithubError, d| d.map(|d| e.rate_limit_wait().map(|w| w.min(r.max_wait)).unwrap_or(d)))
            .notify(|e: &GithubError, d| tracing::warn!(operation = what, error = %e, retry_in = ?d, "GitHub call failed; retrying"))
            .await
    }

    /// One request with retries.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Raw, GithubError> {
        self.retrying(path, || self.send_once(&method, path, body.as_ref()))
            .await
    }

    fn decode<T: DeserializeOwned>(
        method: &Method,
        path: &str,
        raw: &Raw,
    ) -> Result<T, GithubError> {
        serde_json::from_str(&raw.body).map_err(|e| GithubError::Decode {
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
    ) -> Result<Vec<T>, GithubError> {
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
            next = next_link(&raw.headers);
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
    ) -> Result<Vec<T>, GithubError> {
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
            next = next_link(&raw.headers);
        }
        Ok(out)
    }

    /// The login of the token's user (`GET /user`), cached; `None` when the token cannot read
    /// it (e.g. a GitHub App installation token).
    async fn bot_login(&self) -> Result<Option<String>, GithubError> {
        self.bot_login
            .get_or_try_init(|| async {
                match self.send_once(&Method::GET, "/user", None).await {
                    Ok(raw) => Ok(serde_json::from_str::<Value>(&raw.body)
                        .ok()
                        .and_then(|v| v.get("login").and_then(Value::as_str).map(str::to_string))),
                    Err(e) if e.is_transient() || matches!(e, GithubError::Unauthorized { .. }) => {
                        Err(e)
                    }
                    Err(_) => Ok(None),
                }
            })
            .await
            .cloned()
    }

    async fn upsert_once(&self, number: u64, marker: &str, body: &str) -> Result<u64, GithubError> {
        let comments: Vec<octocrab::models::issues::Comment> = self
            .get_pages_once(self.repo_path(&format!("/issues/{number}/comments?per_page=100")))
            .await?;
        // Found by marker *and* author: a marker someone else planted in their own comment is
        // ignored (security rule 3, fail closed).
        let login = self.bot_login().await?.ok_or_else(|| {
            GithubError::Config(
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

    async fn set_status_once(
        &self,
        sha: &str,
        context: &str,
        state: CommitState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), GithubError> {
        let list_path = self.repo_path(&format!("/commits/{}/statuses?per_page=100", enc(sha)));
        let raw = self.send_once(&Method::GET, &list_path, None).await?;
        let statuses: Vec<octocrab::models::Status> = Self::decode(&Method::GET, &list_path, &raw)?;
        if let Some(latest) = statuses
            .iter()
            .find(|s| s.context.as_deref() == Some(context))
        {
            let same_state = serde_json::to_value(latest.state).ok() == Some(json!(state.as_str()));
            if same_state && latest.description.as_deref().unwrap_or("") == description {
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
impl VcsClient for OctocrabClient {
    async fn repository(&self) -> Result<RepoInfo, GithubError> {
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

    async fn list_open_pulls(&self, base: &str) -> Result<Vec<PullRequest>, GithubError> {
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
    ) -> Result<Vec<PullRequest>, GithubError> {
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

    async fn get_pull(&self, number: u64) -> Result<PullRequest, GithubError> {
        let path = self.repo_path(&format!("/pulls/{number}"));
        let raw = self.call(Method::GET, &path, None).await?;
        let p: octocrab::models::pulls::PullRequest = Self::decode(&Method::GET, &path, &raw)?;
        Ok(convert_pull(p))
    }

    async fn list_reviews(&self, number: u64) -> Result<Vec<Review>, GithubError> {
        let path = self.repo_path(&format!("/pulls/{number}/reviews?per_page=100"));
        let reviews: Vec<octocrab::models::pulls::Review> = self.get_pages(path, None).await?;
        Ok(reviews
            .into_iter()
            .map(|r| Review {
                user: r.user.map(|u| u.login).unwrap_or_default(),
                state: review_state(r.state),
                commit_id: r.commit_id,
            })
            .collect())
    }

    async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, GithubError> {
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
    ) -> Result<(), GithubError> {
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
        assert_eq!(
            rate_limit_wait(
                StatusCode::TOO_MANY_REQUESTS,
                &headers(&[("retry-after", "7".into())])
            ),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            rate_limit_wait(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()),
            Some(Duration::from_secs(60))
        );
        let exhausted = headers(&[
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", (now + 30).to_string()),
        ]);
        let w = rate_limit_wait(StatusCode::FORBIDDEN, &exhausted).unwrap();
        assert!(
            w >= Duration::from_secs(28) && w <= Duration::from_secs(30),
            "{w:?}"
        );
        assert_eq!(
            rate_limit_wait(
                StatusCode::FORBIDDEN,
                &headers(&[("x-ratelimit-remaining", "10".into())])
            ),
            None
        );
        assert_eq!(
            rate_limit_wait(StatusCode::FORBIDDEN, &HeaderMap::new()),
            None
        );
        assert_eq!(
            rate_limit_wait(
                StatusCode::BAD_GATEWAY,
                &headers(&[("retry-after", "7".into())])
            ),
            None
        );
    }

    #[test]
    fn next_link_keeps_path_and_query_only() {
        let h = headers(&[(
            "link",
            "<https://api.github.com/repos/o/r/pulls?state=open&page=2>; rel=\"next\", <https://api.github.com/repos/o/r/pulls?page=5>; rel=\"last\"".into(),
        )]);
        assert_eq!(
            next_link(&h).as_deref(),
            Some("/repos/o/r/pulls?state=open&page=2")
        );
        let last_only = headers(&[(
            "link",
            "<https://api.github.com/x?page=1>; rel=\"first\"".into(),
        )]);
        assert_eq!(next_link(&last_only), None);
    }
}

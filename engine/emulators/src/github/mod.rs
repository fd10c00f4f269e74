//! Emulated GitHub REST API (the subset tkgops uses) backed by a local bare git repository.
//!
//! [`GithubEmulator::start`] serves, on `127.0.0.1:<random port>`, the REST endpoints the bot and
//! octocrab call: repository info, pull requests (list with `Link` pagination, get, files,
//! reviews, merge), issue comments (list/create/edit/delete, the 65,536-character limit), commit
//! statuses (create, list, combined). State lives in memory; git data lives in a real bare
//! repository, so a merge is a real two-parent merge commit made with git2, and a PR's head SHA
//! is always the current tip of its head branch (tests push new commits like a contributor
//! would; `refs/pull/N/head` is refreshed whenever the PR is read).
//!
//! Response bodies are GitHub's official OpenAPI examples with real values substituted (see
//! `tests/fixtures/github/README.md`), so octocrab's strict models parse them. Requests need
//! `Authorization: Bearer <token>` or `token <token>`; every response carries
//! `x-ratelimit-*` headers. Failures are injected through [`GithubEmulator::faults`].
//!
//! The control API ([`GithubEmulator::open_pull_request`], [`GithubEmulator::submit_review`], …)
//! acts as human GitHub users in tests and in the sandbox.

mod api;
mod git;
mod shapes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use crate::faults::Faults;

/// Default login of the token owner (the bot), see [`GithubEmulator::set_bot_login`].
pub const DEFAULT_BOT_LOGIN: &str = "tkgops[bot]";

/// Maximum length of an issue comment body, in characters (GitHub's limit).
pub const MAX_COMMENT_CHARS: usize = 65_536;

/// Configuration of a [`GithubEmulator`].
#[derive(Clone)]
pub struct GithubEmulatorOptions {
    /// Owner login of the emulated repository (`owner` in `/repos/{owner}/{repo}`).
    pub owner: String,
    /// Name of the emulated repository.
    pub repo: String,
    /// Default branch; pull requests opened through the control API target it (normally `main`).
    pub default_branch: String,
    /// The only accepted API token, sent as `Bearer <token>` or `token <token>`. Never logged.
    pub token: String,
    /// Path of an existing bare git repository: the config repository's remote.
    pub bare_repo: PathBuf,
}

impl std::fmt::Debug for GithubEmulatorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubEmulatorOptions")
            .field("owner", &self.owner)
            .field("repo", &self.repo)
            .field("default_branch", &self.default_branch)
            .field("token", &"<redacted>")
            .field("bare_repo", &self.bare_repo)
            .finish()
    }
}

/// Errors of the emulator's start-up and control API.
#[derive(Debug, thiserror::Error)]
pub enum GithubEmulatorError {
    /// Binding or reading the local listener failed.
    #[error("cannot start the GitHub emulator listener: {0}")]
    Bind(#[source] std::io::Error),
    /// A git operation on the bare repository failed.
    #[error("git error on the emulated repository: {0}")]
    Git(#[from] git2::Error),
    /// The named branch does not exist in the bare repository.
    #[error("branch {0:?} does not exist in the emulated repository")]
    NoSuchBranch(String),
    /// No pull request has this number.
    #[error("pull request #{0} does not exist")]
    NoSuchPull(u64),
    /// The pull request is closed (or merged) but the operation needs an open one.
    #[error("pull request #{0} is not open")]
    NotOpen(u64),
    /// The pull request was merged already.
    #[error("pull request #{0} is already merged")]
    AlreadyMerged(u64),
    /// The head does not merge cleanly into the base.
    #[error("pull request #{0} is not mergeable (merge conflict)")]
    Conflict(u64),
    /// The review state is not `APPROVED`, `CHANGES_REQUESTED` or `COMMENTED`.
    #[error("invalid review state {0:?} (expected APPROVED, CHANGES_REQUESTED or COMMENTED)")]
    InvalidReviewState(String),
}

/// An issue comment as stored by the emulator (what a test asserts on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatedComment {
    /// Comment id (GitHub's `id`).
    pub id: u64,
    /// Author login.
    pub user: String,
    /// Markdown body.
    pub body: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last edit time (equals `created_at` until edited).
    pub updated_at: DateTime<Utc>,
}

/// A commit status as stored by the emulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatedStatus {
    /// Status id.
    pub id: u64,
    /// Status context, e.g. `tkgops/plan`.
    pub context: String,
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    /// Short description, if any.
    pub description: Option<String>,
    /// Link shown next to the status, if any.
    pub target_url: Option<String>,
    /// Login that created the status.
    pub creator: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
struct Pull {
    number: u64,
    title: String,
    body: String,
    author: String,
    head_ref: String,
    base_ref: String,
    open: bool,
    merged: bool,
    merged_at: Option<DateTime<Utc>>,
    merged_by: Option<String>,
    merge_commit_sha: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
    /// Head SHA last seen (frozen once closed).
    head_sha: String,
    /// Base SHA at merge/close time (frozen once closed).
    base_sha_closed: Option<String>,
}

#[derive(Clone, Debug)]
struct Comment {
    id: u64,
    issue: u64,
    user: String,
    body: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
struct Review {
    id: u64,
    pull: u64,
    user: String,
    body: String,
    state: String,
    commit_id: String,
    submitted_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
struct Status {
    id: u64,
    sha: String,
    state: String,
    description: Option<String>,
    target_url: Option<String>,
    context: String,
    creator: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug)]
struct State {
    bot_login: String,
    next_pull: u64,
    pulls: BTreeMap<u64, Pull>,
    next_comment: u64,
    comments: Vec<Comment>,
    next_review: u64,
    reviews: Vec<Review>,
    next_status: u64,
    /// Append order (oldest first).
    statuses: Vec<Status>,
    rate_used: u64,
    rate_reset: i64,
}

/// Rate limit reported in `x-ratelimit-limit` (GitHub's primary limit for a user token).
const RATE_LIMIT: u64 = 5000;

struct Shared {
    opts: GithubEmulatorOptions,
    api_url: String,
    clone_url: String,
    faults: Faults,
    state: Mutex<State>,
    /// Microseconds since the Unix epoch of the last timestamp handed out by [`Shared::now`].
    last_stamp_micros: AtomicI64,
    /// Bumped after every access to the state (see [`StateGuard`]): what
    /// [`GithubEmulator::wait_until`] waits on.
    changes: tokio::sync::watch::Sender<u64>,
}

/// The locked state; when dropped, announces a possible change to
/// [`GithubEmulator::wait_until`] waiters. The announcement happens before the lock is
/// released, so a waiter that re-reads the state sees the change.
struct StateGuard<'a> {
    guard: MutexGuard<'a, State>,
    changes: &'a tokio::sync::watch::Sender<u64>,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl Shared {
    /// The timestamp of a change the emulator records now (`created_at`, `updated_at`,
    /// `closed_at`, `merged_at`, `submitted_at`): the wall clock, but strictly later than every
    /// timestamp handed out before (bumped by 1 µs on a tie or when the clock steps back), so
    /// ordering by time (e.g. `sort=updated`) always follows the order of the changes, however
    /// close together they happen.
    fn now(&self) -> DateTime<Utc> {
        let wall = Utc::now().timestamp_micros();
        let prev = self
            .last_stamp_micros
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(wall.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        DateTime::from_timestamp_micros(wall.max(prev.saturating_add(1))).unwrap_or_else(Utc::now)
    }

    fn lock(&self) -> StateGuard<'_> {
        // A panicking handler cannot leave the state half-updated in a way that matters more
        // than losing the emulator, so poisoned locks are recovered.
        StateGuard {
            guard: self.state.lock().unwrap_or_else(|p| p.into_inner()),
            changes: &self.changes,
        }
    }

    fn ctx(&self) -> shapes::Ctx<'_> {
        shapes::Ctx {
            api: &self.api_url,
            owner: &self.opts.owner,
            repo: &self.opts.repo,
            clone_url: &self.clone_url,
            default_branch: &self.opts.default_branch,
        }
    }

    fn repo(&self) -> Result<git2::Repository, git2::Error> {
        git::open(&self.opts.bare_repo)
    }

    /// Re-reads the head branch of an open PR: updates `head_sha` (bumping `updated_at` on a
    /// new push) and `refs/pull/N/head`. Closed PRs keep their frozen head.
    fn refresh(&self, repo: &git2::Repository, pull: &mut Pull) -> Result<(), git2::Error> {
        if pull.open {
            if let Some(tip) = git::branch_tip(repo, &pull.head_ref)? {
                let tip = tip.to_string();
                if tip != pull.head_sha {
                    pull.head_sha = tip;
                    pull.updated_at = self.now();
                }
            }
        }
        if let Ok(oid) = git2::Oid::from_str(&pull.head_sha) {
            git::set_pull_ref(repo, pull.number, oid)?;
        }
        Ok(())
    }

    fn merge(
        &self,
        number: u64,
        merger: &str,
        expected_sha: Option<&str>,
    ) -> Result<String, MergeError> {
        let repo = self.repo()?;
        let mut st = self.lock();
        let pull = st
            .pulls
            .get_mut(&number)
            .ok_or(GithubEmulatorError::NoSuchPull(number))?;
        self.refresh(&repo, pull)?;
        if pull.merged {
            return Err(GithubEmulatorError::AlreadyMerged(number).into());
        }
        if !pull.open {
            return Err(GithubEmulatorError::NotOpen(number).into());
        }
        if let Some(sha) = expected_sha {
            if sha != pull.head_sha {
                return Err(MergeError::HeadModified);
            }
        }
        let head = git2::Oid::from_str(&pull.head_sha)?;
        let base_before = git::branch_tip(&repo, &pull.base_ref)?.map(|o| o.to_string());
        let message = format!(
            "Merge pull request #{number} from {}/{}\n\n{}",
            self.opts.owner, pull.head_ref, pull.title
        );
        match git::merge_into(&repo, &pull.base_ref, head, &message, merger)? {
            git::MergeOutcome::Conflict => Err(GithubEmulatorError::Conflict(number).into()),
            git::MergeOutcome::Merged(oid) => {
                let now = self.now();
                pull.open = false;
                pull.merged = true;
                pull.merged_at = Some(now);
                pull.closed_at = Some(now);
                pull.updated_at = now;
                pull.merged_by = Some(merger.to_string());
                pull.merge_commit_sha = Some(oid.to_string());
                pull.base_sha_closed = base_before;
                tracing::debug!(number, merge_commit = %oid, "github emulator: pull request merged");
                Ok(oid.to_string())
            }
        }
    }
}

/// Why a merge failed (the REST handler maps these to GitHub's answers).
enum MergeError {
    Emu(GithubEmulatorError),
    HeadModified,
}

impl From<GithubEmulatorError> for MergeError {
    fn from(e: GithubEmulatorError) -> Self {
        MergeError::Emu(e)
    }
}

impl From<git2::Error> for MergeError {
    fn from(e: git2::Error) -> Self {
        MergeError::Emu(e.into())
    }
}

struct ServerGuard(tokio::task::JoinHandle<()>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running GitHub REST emulator. Cheap to clone; all clones share one state and one server,
/// which stops when the last clone is dropped.
#[derive(Clone)]
pub struct GithubEmulator {
    shared: Arc<Shared>,
    _server: Arc<ServerGuard>,
}

impl std::fmt::Debug for GithubEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubEmulator")
            .field("api_url", &self.shared.api_url)
            .finish_non_exhaustive()
    }
}

impl GithubEmulator {
    /// Starts the emulator on `127.0.0.1:0` (a free port) for the bare repository in `opts`.
    ///
    /// Errors: [`GithubEmulatorError::Bind`] when the listener cannot be opened,
    /// [`GithubEmulatorError::Git`] when `opts.bare_repo` is not a git repository.
    pub async fn start(opts: GithubEmulatorOptions) -> Result<Self, GithubEmulatorError> {
        git::open(&opts.bare_repo)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(GithubEmulatorError::Bind)?;
        let addr = listener.local_addr().map_err(GithubEmulatorError::Bind)?;
        let abs = std::fs::canonicalize(&opts.bare_repo).unwrap_or_else(|_| opts.bare_repo.clone());
        let clone_url = url::Url::from_directory_path(&abs)
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .unwrap_or_else(|_| format!("file://{}", abs.display()));
        let shared = Arc::new(Shared {
            opts,
            api_url: format!("http://{addr}"),
            clone_url,
            faults: Faults::new(),
            last_stamp_micros: AtomicI64::new(i64::MIN),
            changes: tokio::sync::watch::channel(0).0,
            state: Mutex::new(State {
                bot_login: DEFAULT_BOT_LOGIN.to_string(),
                next_pull: 1,
                pulls: BTreeMap::new(),
                next_comment: 1,
                comments: Vec::new(),
                next_review: 1,
                reviews: Vec::new(),
                next_status: 1,
                statuses: Vec::new(),
                rate_used: 0,
                rate_reset: Utc::now().timestamp() + 3600,
            }),
        });
        let router = shared.faults.layer(api::router(shared.clone()));
        let handle = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "github emulator server stopped");
            }
        });
        Ok(GithubEmulator {
            shared,
            _server: Arc::new(ServerGuard(handle)),
        })
    }

    /// Base URL of the REST API, e.g. `http://127.0.0.1:41234` (no trailing slash); pass it to
    /// `Octocrab::builder().base_uri(..)`.
    pub fn api_url(&self) -> String {
        self.shared.api_url.clone()
    }

    /// The fault table and request log of this emulator.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Calls `check` now and again after every change of the emulator's state (a request that
    /// touched it, or a call of this API), until it returns `Some` (returned) or `timeout`
    /// passes (`None`). The way tests wait for what the bot writes to a pull request without
    /// sleeping.
    pub async fn wait_until<T>(
        &self,
        timeout: std::time::Duration,
        mut check: impl FnMut(&GithubEmulator) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.shared.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(v) = check(self) {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return check(self),
            }
        }
    }

    /// `file://` URL of the bare repository (also served as the repository's `clone_url`).
    pub fn clone_url(&self) -> String {
        self.shared.clone_url.clone()
    }

    /// Sets the login of the token owner (author of comments, statuses and merges made through
    /// the API). Default: [`DEFAULT_BOT_LOGIN`].
    pub fn set_bot_login(&self, login: &str) {
        self.shared.lock().bot_login = login.to_string();
    }

    /// Opens a pull request from `head_branch` into the default branch, as user `author`.
    /// Writes `refs/pull/N/head`. Returns the new PR number (1, 2, …).
    ///
    /// Errors: [`GithubEmulatorError::NoSuchBranch`] if `head_branch` (or the default branch)
    /// does not exist in the bare repository; [`GithubEmulatorError::Git`].
    pub fn open_pull_request(
        &self,
        head_branch: &str,
        title: &str,
        body: &str,
        author: &str,
    ) -> Result<u64, GithubEmulatorError> {
        let repo = self.shared.repo()?;
        let head = git::branch_tip(&repo, head_branch)?
            .ok_or_else(|| GithubEmulatorError::NoSuchBranch(head_branch.to_string()))?;
        let base = &self.shared.opts.default_branch;
        git::branch_tip(&repo, base)?
            .ok_or_else(|| GithubEmulatorError::NoSuchBranch(base.clone()))?;
        let mut st = self.shared.lock();
        let number = st.next_pull;
        st.next_pull += 1;
        git::set_pull_ref(&repo, number, head)?;
        let now = self.shared.now();
        st.pulls.insert(
            number,
            Pull {
                number,
                title: title.to_string(),
                body: body.to_string(),
                author: author.to_string(),
                head_ref: head_branch.to_string(),
                base_ref: base.clone(),
                open: true,
                merged: false,
                merged_at: None,
                merged_by: None,
                merge_commit_sha: None,
                created_at: now,
                updated_at: now,
                closed_at: None,
                head_sha: head.to_string(),
                base_sha_closed: None,
            },
        );
        Ok(number)
    }

    /// Records a review of PR `number` by `reviewer` on its current head commit.
    /// `state`: `APPROVED`, `CHANGES_REQUESTED` or `COMMENTED`.
    ///
    /// Errors: [`GithubEmulatorError::InvalidReviewState`], [`GithubEmulatorError::NoSuchPull`],
    /// [`GithubEmulatorError::Git`].
    pub fn submit_review(
        &self,
        number: u64,
        reviewer: &str,
        state: &str,
    ) -> Result<(), GithubEmulatorError> {
        if !matches!(state, "APPROVED" | "CHANGES_REQUESTED" | "COMMENTED") {
            return Err(GithubEmulatorError::InvalidReviewState(state.to_string()));
        }
        let repo = self.shared.repo()?;
        let mut st = self.shared.lock();
        let pull = st
            .pulls
            .get_mut(&number)
            .ok_or(GithubEmulatorError::NoSuchPull(number))?;
        self.shared.refresh(&repo, pull)?;
        let commit_id = pull.head_sha.clone();
        let now = self.shared.now();
        pull.updated_at = now;
        let id = st.next_review;
        st.next_review += 1;
        st.reviews.push(Review {
            id,
            pull: number,
            user: reviewer.to_string(),
            body: String::new(),
            state: state.to_string(),
            commit_id,
            submitted_at: now,
        });
        Ok(())
    }

    /// Merges PR `number` as `merger`, exactly like `PUT /pulls/{n}/merge`: a real merge commit
    /// (parents: base tip, head tip) on the base branch. Returns the merge commit SHA.
    ///
    /// Errors: [`GithubEmulatorError::NoSuchPull`], [`GithubEmulatorError::AlreadyMerged`],
    /// [`GithubEmulatorError::NotOpen`], [`GithubEmulatorError::Conflict`], [`GithubEmulatorError::Git`].
    pub fn merge_pull_request(
        &self,
        number: u64,
        merger: &str,
    ) -> Result<String, GithubEmulatorError> {
        self.shared
            .merge(number, merger, None)
            .map_err(|e| match e {
                MergeError::Emu(e) => e,
                MergeError::HeadModified => GithubEmulatorError::NotOpen(number),
            })
    }

    /// Closes PR `number` without merging (its head SHA is frozen).
    ///
    /// Errors: [`GithubEmulatorError::NoSuchPull`], [`GithubEmulatorError::Git`].
    pub fn close_pull_request(&self, number: u64) -> Result<(), GithubEmulatorError> {
        let repo = self.shared.repo()?;
        let mut st = self.shared.lock();
        let pull = st
            .pulls
            .get_mut(&number)
            .ok_or(GithubEmulatorError::NoSuchPull(number))?;
        self.shared.refresh(&repo, pull)?;
        if pull.open {
            let now = self.shared.now();
            pull.base_sha_closed = git::branch_tip(&repo, &pull.base_ref)?.map(|o| o.to_string());
            pull.open = false;
            pull.closed_at = Some(now);
            pull.updated_at = now;
        }
        Ok(())
    }

    /// The comments on PR/issue `number`, oldest first (empty when there are none).
    pub fn comments(&self, number: u64) -> Vec<EmulatedComment> {
        self.shared
            .lock()
            .comments
            .iter()
            .filter(|c| c.issue == number)
            .map(|c| EmulatedComment {
                id: c.id,
                user: c.user.clone(),
                body: c.body.clone(),
                created_at: c.created_at,
                updated_at: c.updated_at,
            })
            .collect()
    }

    /// The statuses posted for commit `sha` (full 40-hex SHA), newest first.
    pub fn statuses(&self, sha: &str) -> Vec<EmulatedStatus> {
        self.shared
            .lock()
            .statuses
            .iter()
            .rev()
            .filter(|s| s.sha == sha)
            .map(|s| EmulatedStatus {
                id: s.id,
                context: s.context.clone(),
                state: s.state.clone(),
                description: s.description.clone(),
                target_url: s.target_url.clone(),
                creator: s.creator.clone(),
                created_at: s.created_at,
            })
            .collect()
    }
}

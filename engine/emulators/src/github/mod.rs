//! Emulated GitHub REST API (the subset tkgops and the people around it use) backed by a local
//! bare git repository.
//!
//! [`GitHubEmulator::start`] serves, on `127.0.0.1:<random port>`, the REST endpoints the bot,
//! octocrab, curl and a person's scripts call: repository info, pull requests (create with
//! GitHub's validation errors, list with `Link` pagination and `head=owner:branch`, get, files,
//! commits, reviews with dismissal, merge with GitHub's three merge methods), issue comments
//! (list/create/edit/delete, the 65,536-character limit), commit statuses (create, list,
//! combined), `GET /user`, and a GitHub App's endpoints (`GET /app`,
//! `GET /repos/{o}/{r}/installation`, `POST /app/installations/{id}/access_tokens`). State lives
//! in memory; git data lives in a real bare repository, so merges are real commits made with
//! git2 exactly as GitHub makes them ([`MergeMethod`]: a two-parent merge commit, a squash
//! commit on the base tip, or the pull request's commits re-applied one by one), and a PR's
//! head SHA is always the current tip of its head branch (tests and people push new commits
//! like a contributor would; `refs/pull/N/head` is refreshed whenever the PR is read).
//!
//! Repository roles ([`Role`], [`GitHubEmulator::set_role`]) are enforced as on GitHub:
//! anyone comments and reviews; labels need triage; merging, commit statuses, dismissing
//! reviews and editing other people's comments need write (403 otherwise). Pushes go straight
//! to the bare repository and cannot be refused (a leniency listed in the README).
//!
//! Every request is authenticated (`Authorization: Bearer <token>` or `token <token>`; GitHub's
//! 401 `Bad credentials` otherwise) and acts as the token's owner: the bot
//! ([`GitHubEmulatorOptions::token`], [`GitHubEmulator::set_bot_login`]), a user
//! ([`GitHubEmulatorOptions::users`]), or the App's installation (`<slug>[bot]`, with tokens
//! that expire). Pull requests, comments, reviews, statuses and merges are authored by that
//! login, and GitHub's rules hold (no approving one's own pull request, no review of a closed
//! one, pending reviews shown to their author only, statuses carrying their `creator`).
//!
//! With a webhook ([`GitHubEmulator::set_webhook`]) every change is delivered, signed, by a
//! background task, as GitHub does ([`WebhookDelivery`]).
//!
//! Response bodies are GitHub's official OpenAPI and webhook examples with real values
//! substituted (see `tests/fixtures/github/README.md`), so octocrab's strict models parse them;
//! every response carries `x-ratelimit-*` headers. Failures are injected through
//! [`GitHubEmulator::faults`].
//!
//! The control API ([`GitHubEmulator::open_pull_request`], [`GitHubEmulator::submit_review`],
//! [`GitHubEmulator::add_comment`], …) acts as any GitHub user in tests and in the sandbox.

mod api;
mod app;
mod git;
mod hooks;
mod shapes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use crate::faults::Faults;

pub use app::{GitHubAppOptions, DEFAULT_INSTALLATION_ID, DEFAULT_INSTALLATION_TOKEN_TTL};
pub use hooks::{sign as webhook_signature, WebhookDelivery, WebhookTarget};

/// GitHub's limit on the commits `GET /repos/{o}/{r}/pulls/{n}/commits` lists: "This endpoint
/// lists a maximum of 250 commits for a pull request" (REST docs, "List commits on a pull
/// request"). The emulator lists the oldest 250.
pub const MAX_PULL_COMMITS: usize = 250;

/// A repository role, GitHub's permission levels for a repository ("Repository roles for an
/// organization"), ordered from least to most powerful: `Read < Triage < Write < Maintain <
/// Admin`.
///
/// What the emulator enforces (GitHub's role table): everyone (`Read`) opens issues, comments,
/// submits reviews and edits or deletes their own comments; `Triage` also applies labels and
/// closes issues; `Write` also pushes, merges pull requests, creates commit statuses, dismisses
/// reviews and edits or deletes anyone's comments and issues. `Maintain` and `Admin` add
/// nothing the emulator models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `read`: clone, open issues and pull requests from forks, comment, review.
    Read,
    /// `triage`: `read` plus labels and closing issues and pull requests.
    Triage,
    /// `write`: `triage` plus push, merge, statuses, review dismissal, editing anyone's comments.
    Write,
    /// `maintain`: `write` plus repository settings the emulator does not model.
    Maintain,
    /// `admin`: everything (the repository owner's role unless set otherwise).
    Admin,
}

impl Role {
    /// GitHub's wire name: `read`, `triage`, `write`, `maintain` or `admin` (the `role_name`
    /// of `GET /repos/{o}/{r}/collaborators/{u}/permission`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Triage => "triage",
            Role::Write => "write",
            Role::Maintain => "maintain",
            Role::Admin => "admin",
        }
    }

    /// Parses a wire name (see [`Role::as_str`]; `pull` and `push` are GitHub's older names of
    /// `read` and `write`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "read" | "pull" => Role::Read,
            "triage" => Role::Triage,
            "write" | "push" => Role::Write,
            "maintain" => Role::Maintain,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// How a pull request is merged (`merge_method` of `PUT /repos/{o}/{r}/pulls/{n}/merge`;
/// GitHub's "About pull request merges").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MergeMethod {
    /// `merge` (GitHub's default): a merge commit whose parents are the base branch's tip, then
    /// the pull request's head (`--no-ff`).
    #[default]
    Merge,
    /// `squash`: one new commit whose only parent is the base branch's tip and whose tree is
    /// the merge result.
    Squash,
    /// `rebase`: every commit of the pull request re-applied, in order, onto the base branch's
    /// tip as a new commit (same author, message and author date; committer GitHub; one
    /// parent). `merge_commit_sha` is the last of them.
    Rebase,
}

impl MergeMethod {
    /// The wire name: `merge`, `squash` or `rebase`.
    pub fn as_str(self) -> &'static str {
        match self {
            MergeMethod::Merge => "merge",
            MergeMethod::Squash => "squash",
            MergeMethod::Rebase => "rebase",
        }
    }

    /// Parses a wire name (see [`MergeMethod::as_str`]); `None` for anything else.
    pub fn parse(s: &str) -> Option<MergeMethod> {
        Some(match s {
            "merge" => MergeMethod::Merge,
            "squash" => MergeMethod::Squash,
            "rebase" => MergeMethod::Rebase,
            _ => return None,
        })
    }
}

/// Default login of the token owner (the bot), see [`GitHubEmulator::set_bot_login`].
pub const DEFAULT_BOT_LOGIN: &str = "tkgops[bot]";

/// Maximum length of an issue comment body, in characters (GitHub's limit).
pub const MAX_COMMENT_CHARS: usize = 65_536;

/// Configuration of a [`GitHubEmulator`]. `Default` gives empty names and tokens (nothing is
/// accepted), no users, no webhook and no App: set at least `owner`, `repo`,
/// `default_branch`, `token` and `bare_repo`.
#[derive(Clone, Default)]
pub struct GitHubEmulatorOptions {
    /// Owner login of the emulated repository (`owner` in `/repos/{owner}/{repo}`).
    pub owner: String,
    /// Name of the emulated repository.
    pub repo: String,
    /// Default branch; pull requests opened through the control API target it (normally `main`).
    pub default_branch: String,
    /// The bot's API token, sent as `Bearer <token>` or `token <token>`; requests made with it
    /// act as the bot login ([`GitHubEmulator::set_bot_login`]). Never logged.
    pub token: String,
    /// Personal access tokens of human users: login → token. Requests made with a user's token
    /// act as that user (author of the pull requests, comments, reviews, statuses and merges it
    /// makes; `GET /user`), within the user's role ([`GitHubEmulatorOptions::roles`]; write
    /// unless set). Never logged.
    pub users: BTreeMap<String, String>,
    /// Repository roles: login → [`Role`] (logins compare case-insensitively). A login with no
    /// role here (or set later with [`GitHubEmulator::set_role`]) has [`Role::Write`], except
    /// the repository owner ([`Role::Admin`]); see [`GitHubEmulator::role`].
    pub roles: BTreeMap<String, Role>,
    /// Path of an existing bare git repository: the config repository's remote.
    pub bare_repo: PathBuf,
    /// Where to deliver webhook events (see [`GitHubEmulator::set_webhook`]); `None`: none.
    pub webhook: Option<WebhookTarget>,
    /// A GitHub App installed on the repository (JWT and installation-token authentication).
    pub app: Option<GitHubAppOptions>,
}

impl std::fmt::Debug for GitHubEmulatorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubEmulatorOptions")
            .field("owner", &self.owner)
            .field("repo", &self.repo)
            .field("default_branch", &self.default_branch)
            .field("token", &"<redacted>")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("roles", &self.roles)
            .field("bare_repo", &self.bare_repo)
            .field("webhook", &self.webhook)
            .field("app", &self.app)
            .finish()
    }
}

/// Errors of the emulator's start-up and control API.
#[derive(Debug, thiserror::Error)]
pub enum GitHubEmulatorError {
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
    /// GitHub refuses this review: the author approving or requesting changes on their own
    /// pull request (the message is GitHub's).
    #[error("pull request #{number}: {message}")]
    OwnPullRequest {
        /// The pull request.
        number: u64,
        /// GitHub's message, e.g. `Can not approve your own pull request`.
        message: String,
    },
    /// The comment body is longer than [`MAX_COMMENT_CHARS`] characters.
    #[error("comment body is too long ({0} characters, maximum is {MAX_COMMENT_CHARS})")]
    CommentTooLong(usize),
    /// A fork repository name is not `owner/name`.
    #[error("invalid repository name {0:?} (expected owner/name)")]
    InvalidRepository(String),
    /// No webhook delivery has this GUID.
    #[error("no webhook delivery {0:?}")]
    NoSuchDelivery(String),
    /// The GitHub App's public key is not an RSA public key in PEM.
    #[error("invalid GitHub App public key: {0}")]
    AppKey(String),
    /// The user's repository role does not allow the action (GitHub answers 403).
    #[error("{login} (role {}) may not {action}: it needs the {} role or more", .role.as_str(), .needed.as_str())]
    Forbidden {
        /// Who tried.
        login: String,
        /// Their role.
        role: Role,
        /// The least role the action needs.
        needed: Role,
        /// What they tried, e.g. `merge pull request #3`.
        action: String,
    },
    /// No issue comment has this id.
    #[error("issue comment {0} does not exist")]
    NoSuchComment(u64),
    /// No review of this pull request has this id (or it is someone else's pending review,
    /// which GitHub does not show).
    #[error("pull request #{number} has no review {id}")]
    NoSuchReview {
        /// The pull request.
        number: u64,
        /// The review id.
        id: u64,
    },
    /// GitHub refuses the review operation with a 422 (its message), e.g. a review on a closed
    /// pull request, a second pending review, dismissing a pending review.
    #[error("pull request #{number}: {message}")]
    ReviewRefused {
        /// The pull request.
        number: u64,
        /// GitHub's message.
        message: String,
    },
    /// A rebase merge cannot be made: a commit does not re-apply cleanly onto the base, or the
    /// rebased result differs from what a merge would give (GitHub's "This branch can't be
    /// rebased").
    #[error("pull request #{0} cannot be rebased onto its base")]
    CannotRebase(u64),
}

/// A pull request as stored by the emulator (what a test asserts on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatedPull {
    /// Number.
    pub number: u64,
    /// Title.
    pub title: String,
    /// Markdown body.
    pub body: String,
    /// Head branch.
    pub head_ref: String,
    /// Author login.
    pub author: String,
    /// Whether it is open.
    pub open: bool,
}

/// A plain issue as stored by the emulator (what a test asserts on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatedIssue {
    /// Issue number (shared sequence with pull requests).
    pub number: u64,
    /// Title.
    pub title: String,
    /// Markdown body.
    pub body: String,
    /// Author login.
    pub author: String,
    /// Whether it is open.
    pub open: bool,
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

/// A pull request review as stored by the emulator (what a test asserts on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatedReview {
    /// Review id (GitHub's `id`).
    pub id: u64,
    /// Reviewer login.
    pub user: String,
    /// `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`, `DISMISSED` or `PENDING`.
    pub state: String,
    /// The commit reviewed.
    pub commit_id: String,
    /// When it was submitted; `None` while pending.
    pub submitted_at: Option<DateTime<Utc>>,
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

/// Where a pull request's head branch lives.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HeadRepo {
    /// The emulated repository itself.
    Base,
    /// A fork `owner/name`; its commits are in the bare repository (GitHub keeps a fork
    /// network's objects together), its branch is `head_ref` there.
    Fork { owner: String, name: String },
    /// The head repository was deleted: `head.repo` is `null` and the head is frozen.
    Deleted,
}

#[derive(Clone, Debug)]
struct Pull {
    number: u64,
    title: String,
    body: String,
    author: String,
    head_ref: String,
    head_repo: HeadRepo,
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
    /// Label names, in the order they were added.
    labels: Vec<String>,
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
    /// `None` while the review is `PENDING` (GitHub sends no `submitted_at` then).
    submitted_at: Option<DateTime<Utc>>,
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

/// An installation access token handed out by `POST /app/installations/{id}/access_tokens`.
#[derive(Clone, Debug)]
struct InstallationToken {
    token: String,
    expires_at: DateTime<Utc>,
    /// The id of the App key whose JWT minted it.
    key: u64,
}

#[derive(Debug)]
struct State {
    bot_login: String,
    /// Personal access tokens: (login, token).
    users: Vec<(String, String)>,
    next_pull: u64,
    pulls: BTreeMap<u64, Pull>,
    /// Plain issues (not pull requests); numbered from `next_pull` as on GitHub, where issues
    /// and pull requests share one sequence. Only the issue fields of [`Pull`] are used.
    issues: BTreeMap<u64, Pull>,
    next_comment: u64,
    comments: Vec<Comment>,
    next_review: u64,
    reviews: Vec<Review>,
    next_status: u64,
    /// Append order (oldest first).
    statuses: Vec<Status>,
    installation_tokens: Vec<InstallationToken>,
    /// Webhook deliveries attempted, oldest first.
    deliveries: Vec<WebhookDelivery>,
    /// Who moved a branch through the API (a merge): the `sender` of its `push` event.
    pushers: BTreeMap<String, String>,
    /// Organisation teams: `org/team-slug` (lowercase) → member logins.
    teams: BTreeMap<String, Vec<String>>,
    /// Repository roles set explicitly: lowercase login → role.
    roles: BTreeMap<String, Role>,
    rate_used: u64,
    rate_reset: i64,
}

/// Rate limit reported in `x-ratelimit-limit` (GitHub's primary limit for a user token).
const RATE_LIMIT: u64 = 5000;

/// Who a request acts as (from its token).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Principal {
    /// The bot's token ([`GitHubEmulatorOptions::token`]): the current bot login.
    Bot,
    /// A user's personal access token.
    User(String),
    /// An installation token of the App: `<slug>[bot]`.
    Installation,
    /// A verified App JWT (only the `/app` endpoints and the repository's installation),
    /// signed with the App key of this id.
    App(u64),
}

struct Shared {
    opts: GitHubEmulatorOptions,
    api_url: String,
    clone_url: String,
    faults: Faults,
    state: Mutex<State>,
    app: Option<app::App>,
    /// Where webhook events go; `None`: nowhere. Locked after `state` when both are needed.
    webhook: Mutex<Option<WebhookTarget>>,
    /// Events waiting for the delivery task.
    hooks: tokio::sync::mpsc::UnboundedSender<hooks::Hook>,
    /// Whether the branch watcher (push and synchronize events) runs.
    watching: AtomicBool,
    /// Microseconds since the Unix epoch of the last timestamp handed out by [`Shared::now`].
    last_stamp_micros: AtomicI64,
    /// Bumped after every access to the state (see [`StateGuard`]): what
    /// [`GitHubEmulator::wait_until`] waits on.
    changes: tokio::sync::watch::Sender<u64>,
    /// The routes the bot called (its token, its App's installation tokens or its App's JWT):
    /// `METHOD /route/{template}` ([`GitHubEmulator::bot_routes`]).
    bot_routes: Mutex<std::collections::BTreeSet<String>>,
}

/// The locked state; when dropped, announces a possible change to
/// [`GitHubEmulator::wait_until`] waiters. The announcement happens before the lock is
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

    /// The state for reading only: unlike [`Shared::lock`], releasing it announces no change,
    /// so a waiter that reads the state on every change ([`GitHubEmulator::wait_until`]) does
    /// not wake itself forever.
    fn read(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> StateGuard<'_> {
        // A panicking handler cannot leave the state half-updated in a way that matters more
        // than losing the emulator, so poisoned locks are recovered.
        StateGuard {
            guard: self.state.lock().unwrap_or_else(|p| p.into_inner()),
            changes: &self.changes,
        }
    }

    /// The members of team `org/slug`, when it exists.
    fn team_members(&self, org: &str, slug: &str) -> Option<Vec<String>> {
        self.lock()
            .teams
            .get(&format!("{org}/{slug}").to_ascii_lowercase())
            .cloned()
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

    /// The login a principal acts as.
    fn login_of(&self, st: &State, p: &Principal) -> String {
        match p {
            Principal::Bot => st.bot_login.clone(),
            Principal::User(login) => login.clone(),
            Principal::Installation | Principal::App(_) => self
                .app
                .as_ref()
                .map(app::App::bot_login)
                .unwrap_or_else(|| st.bot_login.clone()),
        }
    }

    /// The repository role of `login`: the one set ([`GitHubEmulatorOptions::roles`],
    /// [`GitHubEmulator::set_role`]), else [`Role::Admin`] for the repository owner and
    /// [`Role::Write`] for everyone else (the emulator's default: see the README's leniencies).
    fn role_of(&self, st: &State, login: &str) -> Role {
        let key = login.to_ascii_lowercase();
        match st.roles.get(&key) {
            Some(r) => *r,
            None if key == self.opts.owner.to_ascii_lowercase() => Role::Admin,
            None => Role::Write,
        }
    }

    /// `Ok` when `login` has at least role `needed`, else [`GitHubEmulatorError::Forbidden`]
    /// naming `action`.
    fn require(
        &self,
        st: &State,
        login: &str,
        needed: Role,
        action: impl FnOnce() -> String,
    ) -> Result<(), GitHubEmulatorError> {
        let role = self.role_of(st, login);
        if role >= needed {
            Ok(())
        } else {
            Err(GitHubEmulatorError::Forbidden {
                login: login.to_string(),
                role,
                needed,
                action: action(),
            })
        }
    }

    /// Edits comment `id` as `editor` (GitHub's rule: its author, or anyone with
    /// [`Role::Write`]): sets the body, moves `updated_at` (and the PR's), announces
    /// `issue_comment` `edited` for a pull request's comment. Returns the edited comment.
    fn edit_comment(
        &self,
        id: u64,
        editor: &str,
        body: String,
    ) -> Result<Comment, GitHubEmulatorError> {
        let (c, old, pull) = {
            let mut st = self.lock();
            let author = st
                .comments
                .iter()
                .find(|c| c.id == id)
                .map(|c| c.user.clone())
                .ok_or(GitHubEmulatorError::NoSuchComment(id))?;
            if !author.eq_ignore_ascii_case(editor) {
                self.require(&st, editor, Role::Write, || {
                    format!("edit comment {id} of {author}")
                })?;
            }
            let now = self.now();
            let c = st
                .comments
                .iter_mut()
                .find(|c| c.id == id)
                .ok_or(GitHubEmulatorError::NoSuchComment(id))?;
            let old = std::mem::replace(&mut c.body, body);
            c.updated_at = now;
            let c = c.clone();
            let pull = match st.pulls.get_mut(&c.issue) {
                Some(p) => {
                    p.updated_at = now;
                    Some(p.clone())
                }
                None => {
                    if let Some(i) = st.issues.get_mut(&c.issue) {
                        i.updated_at = now;
                    }
                    None
                }
            };
            (c, old, pull)
        };
        if let Some(pull) = pull {
            self.emit(hooks::Hook::Comment {
                action: "edited",
                pull,
                comment: c.clone(),
                sender: editor.to_string(),
                old_body: Some(old),
            });
        }
        Ok(c)
    }

    /// Dismisses review `id` of PR `number` as `dismisser` (needs [`Role::Write`]): its state
    /// becomes `DISMISSED`; announces `pull_request_review` `dismissed`. A pending or a
    /// commented review cannot be dismissed (422 on GitHub); dismissing a dismissed review
    /// again changes nothing. Returns the review.
    fn dismiss_review(
        &self,
        number: u64,
        id: u64,
        dismisser: &str,
    ) -> Result<Review, GitHubEmulatorError> {
        let (review, pull, changed) = {
            let mut st = self.lock();
            if !st.pulls.contains_key(&number) {
                return Err(GitHubEmulatorError::NoSuchPull(number));
            }
            let visible = |r: &Review| {
                r.pull == number
                    && r.id == id
                    && (r.state != "PENDING" || r.user.eq_ignore_ascii_case(dismisser))
            };
            if !st.reviews.iter().any(visible) {
                return Err(GitHubEmulatorError::NoSuchReview { number, id });
            }
            self.require(&st, dismisser, Role::Write, || {
                format!("dismiss review {id} of pull request #{number}")
            })?;
            let now = self.now();
            let review = st
                .reviews
                .iter_mut()
                .find(|r| visible(r))
                .ok_or(GitHubEmulatorError::NoSuchReview { number, id })?;
            let refused = match review.state.as_str() {
                "PENDING" => Some("Can not dismiss a pending review"),
                "COMMENTED" => Some("Can not dismiss a commented pull request review"),
                _ => None,
            };
            if let Some(message) = refused {
                return Err(GitHubEmulatorError::ReviewRefused {
                    number,
                    message: message.to_string(),
                });
            }
            let changed = review.state != "DISMISSED";
            review.state = "DISMISSED".to_string();
            let review = review.clone();
            let pull = st.pulls.get_mut(&number).map(|p| {
                if changed {
                    p.updated_at = now;
                }
                p.clone()
            });
            (review, pull, changed)
        };
        if let (Some(pull), true) = (pull, changed) {
            self.emit(hooks::Hook::Review {
                action: "dismissed",
                pull,
                review: review.clone(),
                sender: dismisser.to_string(),
            });
        }
        Ok(review)
    }

    /// Queues a webhook event when a webhook is configured (delivered by the background task).
    fn emit(&self, hook: hooks::Hook) {
        let configured = self
            .webhook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if configured {
            let _ = self.hooks.send(hook);
        }
    }

    /// Queues a `pull_request` event for PR `number` (its current state) sent by `sender`.
    /// Adds (`add`) or removes label `name` on PR `number` as `user`: bumps `updated_at` and
    /// announces `pull_request` `labeled`/`unlabeled` when the set changed. Returns the labels.
    fn set_label(
        &self,
        number: u64,
        user: &str,
        name: &str,
        add: bool,
    ) -> Result<Vec<String>, GitHubEmulatorError> {
        let now = self.now();
        let (changed, labels) = {
            let mut st = self.lock();
            if !st.pulls.contains_key(&number) {
                return Err(GitHubEmulatorError::NoSuchPull(number));
            }
            self.require(&st, user, Role::Triage, || {
                format!("label pull request #{number}")
            })?;
            let pull = st
                .pulls
                .get_mut(&number)
                .ok_or(GitHubEmulatorError::NoSuchPull(number))?;
            let has = pull.labels.iter().any(|l| l == name);
            let changed = has != add;
            if changed {
                if add {
                    pull.labels.push(name.to_string());
                } else {
                    pull.labels.retain(|l| l != name);
                }
                pull.updated_at = now;
            }
            (changed, pull.labels.clone())
        };
        if changed {
            self.emit_pull(number, if add { "labeled" } else { "unlabeled" }, user);
        }
        Ok(labels)
    }

    fn emit_pull(&self, number: u64, action: &'static str, sender: &str) {
        let pull = self.lock().pulls.get(&number).cloned();
        if let Some(pull) = pull {
            self.emit(hooks::Hook::Pull {
                action,
                pull,
                sender: sender.to_string(),
                before: None,
            });
        }
    }

    /// Re-reads the head branch of an open PR: updates `head_sha` (bumping `updated_at` and
    /// announcing `synchronize` on a new push) and `refs/pull/N/head`. Closed PRs and PRs whose
    /// head repository was deleted keep their frozen head.
    fn refresh(&self, repo: &git2::Repository, pull: &mut Pull) -> Result<(), git2::Error> {
        if pull.open && pull.head_repo != HeadRepo::Deleted {
            if let Some(tip) = git::branch_tip(repo, &pull.head_ref)? {
                let tip = tip.to_string();
                if tip != pull.head_sha {
                    let before = std::mem::replace(&mut pull.head_sha, tip);
                    pull.updated_at = self.now();
                    self.emit(hooks::Hook::Pull {
                        action: "synchronize",
                        pull: pull.clone(),
                        sender: pull.author.clone(),
                        before: Some(before),
                    });
                }
            }
        }
        if let Ok(oid) = git2::Oid::from_str(&pull.head_sha) {
            git::set_pull_ref(repo, pull.number, oid)?;
        }
        Ok(())
    }

    /// Records a new open pull request (no validation: the REST handler validates first).
    /// Announces `opened`. Returns its number.
    fn create_pull(
        &self,
        repo: &git2::Repository,
        new: NewPull<'_>,
    ) -> Result<u64, GitHubEmulatorError> {
        let head = git::branch_tip(repo, new.head_ref)?
            .ok_or_else(|| GitHubEmulatorError::NoSuchBranch(new.head_ref.to_string()))?;
        git::branch_tip(repo, new.base_ref)?
            .ok_or_else(|| GitHubEmulatorError::NoSuchBranch(new.base_ref.to_string()))?;
        let number = {
            let mut st = self.lock();
            let number = st.next_pull;
            st.next_pull += 1;
            git::set_pull_ref(repo, number, head)?;
            let now = self.now();
            st.pulls.insert(
                number,
                Pull {
                    number,
                    title: new.title.to_string(),
                    body: new.body.to_string(),
                    author: new.author.to_string(),
                    head_ref: new.head_ref.to_string(),
                    head_repo: new.head_repo,
                    base_ref: new.base_ref.to_string(),
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
                    labels: Vec::new(),
                },
            );
            number
        };
        self.emit_pull(number, "opened", new.author);
        Ok(number)
    }

    /// Records a review by `user` (`state` already validated), on `commit_id` or the current
    /// head. Refuses GitHub's forbidden self-reviews. Announces `submitted` unless pending.
    fn add_review(
        &self,
        number: u64,
        user: &str,
        state: &str,
        body: &str,
        commit_id: Option<String>,
    ) -> Result<Review, GitHubEmulatorError> {
        let repo = self.repo()?;
        let (review, pull) = {
            let mut st = self.lock();
            let pull = st
                .pulls
                .get_mut(&number)
                .ok_or(GitHubEmulatorError::NoSuchPull(number))?;
            self.refresh(&repo, pull)?;
            if !pull.open {
                // GitHub: no review on a closed (or merged) pull request.
                return Err(GitHubEmulatorError::ReviewRefused {
                    number,
                    message: "Can not review a closed pull request".to_string(),
                });
            }
            if pull.author == user {
                let refused = match state {
                    "APPROVED" => Some("Can not approve your own pull request"),
                    "CHANGES_REQUESTED" => Some("Can not request changes on your own pull request"),
                    _ => None,
                };
                if let Some(message) = refused {
                    return Err(GitHubEmulatorError::OwnPullRequest {
                        number,
                        message: message.to_string(),
                    });
                }
            }
            let commit_id = commit_id.unwrap_or_else(|| pull.head_sha.clone());
            let now = self.now();
            if state != "PENDING" {
                pull.updated_at = now;
            }
            let pull = pull.clone();
            if state == "PENDING"
                && st.reviews.iter().any(|r| {
                    r.pull == number && r.state == "PENDING" && r.user.eq_ignore_ascii_case(user)
                })
            {
                // GitHub keeps one pending review per user and pull request.
                return Err(GitHubEmulatorError::ReviewRefused {
                    number,
                    message: "User can only have one pending review per pull request".to_string(),
                });
            }
            let id = st.next_review;
            st.next_review += 1;
            let review = Review {
                id,
                pull: number,
                user: user.to_string(),
                body: body.to_string(),
                state: state.to_string(),
                commit_id,
                submitted_at: (state != "PENDING").then_some(now),
            };
            st.reviews.push(review.clone());
            (review, pull)
        };
        if state != "PENDING" {
            self.emit(hooks::Hook::Review {
                action: "submitted",
                pull,
                review: review.clone(),
                sender: user.to_string(),
            });
        }
        Ok(review)
    }

    /// Records a new open plain issue by `author` (no validation: the REST handler validates
    /// first). Returns it.
    fn create_issue(&self, title: &str, body: &str, author: &str) -> Pull {
        let mut st = self.lock();
        let number = st.next_pull;
        st.next_pull += 1;
        let now = self.now();
        let issue = Pull {
            number,
            title: title.to_string(),
            body: body.to_string(),
            author: author.to_string(),
            head_ref: String::new(),
            head_repo: HeadRepo::Base,
            base_ref: String::new(),
            open: true,
            merged: false,
            merged_at: None,
            merged_by: None,
            merge_commit_sha: None,
            created_at: now,
            updated_at: now,
            closed_at: None,
            head_sha: String::new(),
            base_sha_closed: None,
            labels: Vec::new(),
        };
        st.issues.insert(number, issue.clone());
        issue
    }

    /// Records a comment by `user` on PR/issue `number` (body length already checked).
    /// Announces `created`.
    fn add_comment(
        &self,
        number: u64,
        user: &str,
        body: String,
    ) -> Result<Comment, GitHubEmulatorError> {
        // One record for pull requests and plain issues; only a pull request's comment is
        // announced (a plain issue's is not: README leniency).
        let (comment, pull) = {
            let mut st = self.lock();
            let now = self.now();
            let pull = match st.pulls.get_mut(&number) {
                Some(p) => {
                    p.updated_at = now;
                    Some(p.clone())
                }
                None => {
                    st.issues
                        .get_mut(&number)
                        .ok_or(GitHubEmulatorError::NoSuchPull(number))?
                        .updated_at = now;
                    None
                }
            };
            let id = st.next_comment;
            st.next_comment += 1;
            let c = Comment {
                id,
                issue: number,
                user: user.to_string(),
                body,
                created_at: now,
                updated_at: now,
            };
            st.comments.push(c.clone());
            (c, pull)
        };
        let Some(pull) = pull else {
            return Ok(comment);
        };
        self.emit(hooks::Hook::Comment {
            action: "created",
            pull,
            comment: comment.clone(),
            sender: user.to_string(),
            old_body: None,
        });
        Ok(comment)
    }

    /// Merges PR `number` as `merger` with `method` (see [`MergeMethod`]), as
    /// `PUT /pulls/{n}/merge` does: needs [`Role::Write`]; `expected_sha` must be the head when
    /// given; `title`/`message` replace GitHub's default commit title and message (merge and
    /// squash; a rebase keeps each commit's message). Records `merge_commit_sha` (the merge
    /// commit, the squash commit, or the last rebased commit), the base tip before the merge,
    /// and announces `pull_request` `closed`. Returns `merge_commit_sha`.
    fn merge(
        &self,
        number: u64,
        merger: &str,
        req: MergeRequest<'_>,
    ) -> Result<String, MergeError> {
        let repo = self.repo()?;
        let mut st = self.lock();
        if !st.pulls.contains_key(&number) {
            return Err(GitHubEmulatorError::NoSuchPull(number).into());
        }
        self.require(&st, merger, Role::Write, || {
            format!("merge pull request #{number}")
        })?;
        let pull = st
            .pulls
            .get_mut(&number)
            .ok_or(GitHubEmulatorError::NoSuchPull(number))?;
        self.refresh(&repo, pull)?;
        if pull.merged {
            return Err(GitHubEmulatorError::AlreadyMerged(number).into());
        }
        if !pull.open {
            return Err(GitHubEmulatorError::NotOpen(number).into());
        }
        if let Some(sha) = req.expected_sha {
            if sha != pull.head_sha {
                return Err(MergeError::HeadModified);
            }
        }
        let head = git2::Oid::from_str(&pull.head_sha)?;
        let base_tip = git::branch_tip(&repo, &pull.base_ref)?
            .ok_or_else(|| GitHubEmulatorError::NoSuchBranch(pull.base_ref.clone()))?;
        let commits = git::pull_commits(&repo, base_tip, head)?;
        let outcome = match req.method {
            MergeMethod::Merge => {
                let head_owner = match &pull.head_repo {
                    HeadRepo::Base => self.opts.owner.clone(),
                    HeadRepo::Fork { owner, .. } => owner.clone(),
                    HeadRepo::Deleted => pull.author.clone(),
                };
                let title = req.title.map(str::to_string).unwrap_or_else(|| {
                    format!(
                        "Merge pull request #{number} from {head_owner}/{}",
                        pull.head_ref
                    )
                });
                let body = req.message.unwrap_or(&pull.title);
                let message = join_message(&title, body);
                git::merge_into(&repo, &pull.base_ref, head, &message, merger)?
            }
            MergeMethod::Squash => {
                let message = squash_message(&repo, pull, &commits, req.title, req.message)?;
                git::squash_into(&repo, &pull.base_ref, head, &message, &pull.author)?
            }
            MergeMethod::Rebase => match git::rebase_onto(&repo, &pull.base_ref, head, &commits)? {
                git::MergeOutcome::Conflict => {
                    return Err(GitHubEmulatorError::CannotRebase(number).into())
                }
                merged => merged,
            },
        };
        match outcome {
            git::MergeOutcome::Conflict => Err(GitHubEmulatorError::Conflict(number).into()),
            git::MergeOutcome::Merged(oid) => {
                let now = self.now();
                pull.open = false;
                pull.merged = true;
                pull.merged_at = Some(now);
                pull.closed_at = Some(now);
                pull.updated_at = now;
                pull.merged_by = Some(merger.to_string());
                pull.merge_commit_sha = Some(oid.to_string());
                pull.base_sha_closed = Some(base_tip.to_string());
                let base_ref = pull.base_ref.clone();
                let snapshot = pull.clone();
                st.pushers.insert(base_ref, merger.to_string());
                drop(st);
                tracing::debug!(number, method = req.method.as_str(), merge_commit = %oid, "github emulator: pull request merged");
                self.emit(hooks::Hook::Pull {
                    action: "closed",
                    pull: snapshot,
                    sender: merger.to_string(),
                    before: None,
                });
                Ok(oid.to_string())
            }
        }
    }
}

/// `title`, a blank line and `body` (just `title` when `body` is empty): a commit message.
fn join_message(title: &str, body: &str) -> String {
    if body.trim().is_empty() {
        title.to_string()
    } else {
        format!("{title}\n\n{body}")
    }
}

/// GitHub's default squash commit message ("About pull request merges", squash merge
/// messages): for one commit, its title with ` (#N)` and its body; for more, the pull
/// request's title with ` (#N)` and the list of the commits' messages. `title`/`message`
/// replace either part.
fn squash_message(
    repo: &git2::Repository,
    pull: &Pull,
    commits: &[git2::Oid],
    title: Option<&str>,
    message: Option<&str>,
) -> Result<String, git2::Error> {
    let mut messages = Vec::new();
    for oid in commits {
        let c = repo.find_commit(*oid)?;
        if c.parent_count() <= 1 {
            messages.push(
                String::from_utf8_lossy(c.message_bytes())
                    .trim()
                    .to_string(),
            );
        }
    }
    let number = pull.number;
    let (default_title, default_body) = match messages.as_slice() {
        [one] => {
            let (first, rest) = one.split_once('\n').unwrap_or((one.as_str(), ""));
            (
                format!("{} (#{number})", first.trim()),
                rest.trim().to_string(),
            )
        }
        many => (
            format!("{} (#{number})", pull.title),
            many.iter()
                .map(|m| format!("* {m}"))
                .collect::<Vec<_>>()
                .join("\n\n"),
        ),
    };
    Ok(join_message(
        title.unwrap_or(&default_title),
        message.unwrap_or(&default_body),
    ))
}

/// What [`Shared::merge`] is asked to do.
#[derive(Clone, Copy, Debug, Default)]
struct MergeRequest<'a> {
    method: MergeMethod,
    /// `sha`: the head the merge must find.
    expected_sha: Option<&'a str>,
    /// `commit_title`.
    title: Option<&'a str>,
    /// `commit_message`.
    message: Option<&'a str>,
}

/// A pull request to record with [`Shared::create_pull`].
struct NewPull<'a> {
    head_ref: &'a str,
    head_repo: HeadRepo,
    base_ref: &'a str,
    title: &'a str,
    body: &'a str,
    author: &'a str,
}

/// Why a merge failed (the REST handler maps these to GitHub's answers).
enum MergeError {
    Emu(GitHubEmulatorError),
    HeadModified,
}

impl From<GitHubEmulatorError> for MergeError {
    fn from(e: GitHubEmulatorError) -> Self {
        MergeError::Emu(e)
    }
}

impl From<git2::Error> for MergeError {
    fn from(e: git2::Error) -> Self {
        MergeError::Emu(e.into())
    }
}

/// The background tasks of one emulator (HTTP server, webhook delivery, branch watcher):
/// aborted when the last [`GitHubEmulator`] clone is dropped.
struct Tasks(Mutex<Vec<tokio::task::JoinHandle<()>>>);

impl Tasks {
    fn push(&self, handle: tokio::task::JoinHandle<()>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for h in self.0.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            h.abort();
        }
    }
}

/// A running GitHub REST emulator. Cheap to clone; all clones share one state and one server,
/// which stops when the last clone is dropped.
#[derive(Clone)]
pub struct GitHubEmulator {
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
}

impl std::fmt::Debug for GitHubEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubEmulator")
            .field("api_url", &self.shared.api_url)
            .finish_non_exhaustive()
    }
}

fn is_valid_review_state(state: &str) -> bool {
    matches!(state, "APPROVED" | "CHANGES_REQUESTED" | "COMMENTED")
}

impl GitHubEmulator {
    /// Starts the emulator on `127.0.0.1:0` (a free port) for the bare repository in `opts`,
    /// with its webhook delivery task (and branch watcher when `opts.webhook` is set).
    ///
    /// Errors: [`GitHubEmulatorError::Bind`] when the listener cannot be opened,
    /// [`GitHubEmulatorError::Git`] when `opts.bare_repo` is not a git repository,
    /// [`GitHubEmulatorError::AppKey`] when `opts.app` has an unusable public key.
    pub async fn start(opts: GitHubEmulatorOptions) -> Result<Self, GitHubEmulatorError> {
        git::open(&opts.bare_repo)?;
        let app = match &opts.app {
            Some(a) => Some(app::App::new(a.clone())?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(GitHubEmulatorError::Bind)?;
        let addr = listener.local_addr().map_err(GitHubEmulatorError::Bind)?;
        let abs = std::fs::canonicalize(&opts.bare_repo).unwrap_or_else(|_| opts.bare_repo.clone());
        let clone_url = url::Url::from_directory_path(&abs)
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .unwrap_or_else(|_| format!("file://{}", abs.display()));
        let (hooks_tx, hooks_rx) = tokio::sync::mpsc::unbounded_channel();
        let users = opts
            .users
            .iter()
            .map(|(l, t)| (l.clone(), t.clone()))
            .collect();
        let roles = opts
            .roles
            .iter()
            .map(|(l, r)| (l.to_ascii_lowercase(), *r))
            .collect();
        let webhook = opts.webhook.clone();
        let shared = Arc::new(Shared {
            opts,
            api_url: format!("http://{addr}"),
            clone_url,
            faults: Faults::new(),
            app,
            webhook: Mutex::new(None),
            hooks: hooks_tx,
            watching: AtomicBool::new(false),
            last_stamp_micros: AtomicI64::new(i64::MIN),
            changes: tokio::sync::watch::channel(0).0,
            bot_routes: Mutex::default(),
            state: Mutex::new(State {
                bot_login: DEFAULT_BOT_LOGIN.to_string(),
                users,
                next_pull: 1,
                pulls: BTreeMap::new(),
                issues: BTreeMap::new(),
                next_comment: 1,
                comments: Vec::new(),
                next_review: 1,
                reviews: Vec::new(),
                next_status: 1,
                statuses: Vec::new(),
                installation_tokens: Vec::new(),
                deliveries: Vec::new(),
                pushers: BTreeMap::new(),
                teams: BTreeMap::new(),
                roles,
                rate_used: 0,
                rate_reset: Utc::now().timestamp() + 3600,
            }),
        });
        let router = shared.faults.layer(api::router(shared.clone()));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "github emulator server stopped");
            }
        });
        let tasks = Arc::new(Tasks(Mutex::new(vec![server])));
        tasks.push(tokio::spawn(hooks::deliver(shared.clone(), hooks_rx)));
        let emu = GitHubEmulator { shared, tasks };
        if webhook.is_some() {
            emu.set_webhook(webhook);
        }
        Ok(emu)
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
    /// touched it, a webhook delivery, or a call of this API), until it returns `Some`
    /// (returned) or `timeout` passes (`None`). The way tests wait for what the bot writes to a
    /// pull request without sleeping.
    pub async fn wait_until<T>(
        &self,
        timeout: std::time::Duration,
        mut check: impl FnMut(&GitHubEmulator) -> Option<T>,
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

    /// `file://` URL of the bare repository (also served as the repository's `clone_url`);
    /// plain `git clone` and `git push` work with it.
    pub fn clone_url(&self) -> String {
        self.shared.clone_url.clone()
    }

    /// Sets the login of the bot token's owner (author of comments, statuses and merges made
    /// with [`GitHubEmulatorOptions::token`]). Default: [`DEFAULT_BOT_LOGIN`].
    pub fn set_bot_login(&self, login: &str) {
        self.shared.lock().bot_login = login.to_string();
    }

    /// Creates or replaces team `slug` of organisation `org` with `members` (logins), served
    /// at `GET /orgs/{org}/teams/{slug}/members`; an unknown team answers 404 as on GitHub.
    pub fn set_team(&self, org: &str, slug: &str, members: &[&str]) {
        self.shared.lock().teams.insert(
            format!("{org}/{slug}").to_ascii_lowercase(),
            members.iter().map(|m| m.to_string()).collect(),
        );
    }

    /// Adds (or replaces) the personal access token of user `login`; requests made with it act
    /// as `login`. A token already used by someone else is taken from them.
    pub fn add_user(&self, login: &str, token: &str) {
        let mut st = self.shared.lock();
        st.users.retain(|(l, t)| l != login && t != token);
        st.users.push((login.to_string(), token.to_string()));
    }

    /// Sets (or with `None` removes) the webhook. From then on every change is delivered to
    /// `target.url` by a background task, never blocking the API: `pull_request` (`opened`,
    /// `synchronize`, `closed`), `pull_request_review` (`submitted`), `issue_comment`
    /// (`created`, `edited`, `deleted`) and `push`. Pushes to the bare repository made outside
    /// the API (`git push`) are noticed by a branch watcher that checks the branch tips every
    /// 50 ms. Each attempt is recorded ([`GitHubEmulator::deliveries`]); failures are not
    /// retried (as GitHub).
    pub fn set_webhook(&self, target: Option<WebhookTarget>) {
        let on = target.is_some();
        *self
            .shared
            .webhook
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = target;
        if on && !self.shared.watching.swap(true, Ordering::SeqCst) {
            self.tasks
                .push(tokio::spawn(hooks::watch_branches(self.shared.clone())));
        }
    }

    /// The distinct API routes the bot called so far, authenticated as the bot (its token, an
    /// installation token of its App or the App's JWT), as `METHOD /route/{template}` with
    /// axum's matched route template (e.g. `POST /repos/{o}/{r}/statuses/{sha}`), sorted; a
    /// request no route matched is `METHOD <unmatched> /path`. What the GitHub App's
    /// permissions must cover.
    pub fn bot_routes(&self) -> Vec<String> {
        self.shared
            .bot_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Every webhook delivery attempted so far, oldest first.
    pub fn deliveries(&self) -> Vec<WebhookDelivery> {
        self.shared.read().deliveries.clone()
    }

    /// Delivers delivery `guid` again with the same `X-GitHub-Delivery` and body (GitHub's
    /// manual "Redeliver"), in the background; the attempt is recorded as a new delivery.
    ///
    /// Errors: [`GitHubEmulatorError::NoSuchDelivery`].
    pub fn redeliver(&self, guid: &str) -> Result<(), GitHubEmulatorError> {
        let d = self
            .shared
            .lock()
            .deliveries
            .iter()
            .find(|d| d.guid == guid)
            .cloned()
            .ok_or_else(|| GitHubEmulatorError::NoSuchDelivery(guid.to_string()))?;
        self.shared.emit(hooks::Hook::Redeliver(Box::new(d)));
        Ok(())
    }

    /// Makes every installation token handed out so far expire now: from then on they get
    /// `401 Bad credentials`, as GitHub answers after an hour. New tokens can be created.
    pub fn expire_installation_tokens(&self) {
        let past = Utc::now() - chrono::Duration::seconds(1);
        for t in self.shared.lock().installation_tokens.iter_mut() {
            t.expires_at = t.expires_at.min(past);
        }
    }

    /// How many installation tokens were created (`POST /app/installations/{id}/access_tokens`).
    pub fn installation_tokens_issued(&self) -> usize {
        self.shared.read().installation_tokens.len()
    }

    /// How many installation tokens were created with a JWT signed by App key `key_id` (1 is
    /// the key of [`GitHubAppOptions::public_key_pem`]; [`GitHubEmulator::add_app_key`] returns
    /// the others' ids).
    pub fn installation_tokens_issued_with_key(&self, key_id: u64) -> usize {
        self.shared
            .read()
            .installation_tokens
            .iter()
            .filter(|t| t.key == key_id)
            .count()
    }

    /// Adds a public key (PEM) to the App, as generating a new private key in the App's
    /// settings does; returns its id. Both keys are accepted until one is deleted.
    ///
    /// Errors: [`GitHubEmulatorError::AppKey`] when there is no App, the key does not parse,
    /// or the App has 25 keys already.
    pub fn add_app_key(&self, public_key_pem: &str) -> Result<u64, GitHubEmulatorError> {
        let app =
            self.shared.app.as_ref().ok_or_else(|| {
                GitHubEmulatorError::AppKey("the emulator has no GitHub App".into())
            })?;
        app.add_key(public_key_pem)
    }

    /// Deletes App key `key_id`: JWTs it signs are refused from then on, and the installation
    /// tokens it minted are revoked (`401 Bad credentials`). GitHub's documentation does not say
    /// whether deleting a key revokes the tokens minted with it; the emulator takes the
    /// stricter reading, so a client that keeps a token of a deleted key fails here first.
    /// Returns whether the key existed.
    pub fn delete_app_key(&self, key_id: u64) -> bool {
        let Some(app) = self.shared.app.as_ref() else {
            return false;
        };
        let existed = app.delete_key(key_id);
        if existed {
            let past = Utc::now() - chrono::Duration::seconds(1);
            for t in self.shared.lock().installation_tokens.iter_mut() {
                if t.key == key_id {
                    t.expires_at = t.expires_at.min(past);
                }
            }
        }
        existed
    }

    /// Opens a pull request from `head_branch` into the default branch, as user `author`.
    /// Writes `refs/pull/N/head`; announces `pull_request` `opened`. Returns the new PR number
    /// (1, 2, …). Unlike `POST /pulls` it does not refuse a second PR for the same branch.
    ///
    /// Errors: [`GitHubEmulatorError::NoSuchBranch`] if `head_branch` (or the default branch)
    /// does not exist in the bare repository; [`GitHubEmulatorError::Git`].
    pub fn open_pull_request(
        &self,
        head_branch: &str,
        title: &str,
        body: &str,
        author: &str,
    ) -> Result<u64, GitHubEmulatorError> {
        let repo = self.shared.repo()?;
        self.shared.create_pull(
            &repo,
            NewPull {
                head_ref: head_branch,
                head_repo: HeadRepo::Base,
                base_ref: &self.shared.opts.default_branch,
                title,
                body,
                author,
            },
        )
    }

    /// Opens a pull request from a fork, as user `author`, into the default branch.
    /// `head_repo` is the fork's `owner/name` (e.g. `mallory/tkg-clusters`; rendered as
    /// `head.repo` with `fork: true`), or `None` for a head repository that was deleted
    /// (`head.repo: null`, and the head no longer follows pushes). The fork's commits are
    /// branch `head_branch` of the bare repository (GitHub keeps a fork network's objects
    /// together); the head follows that branch while the fork exists. Returns the PR number.
    ///
    /// Errors: [`GitHubEmulatorError::InvalidRepository`], [`GitHubEmulatorError::NoSuchBranch`],
    /// [`GitHubEmulatorError::Git`].
    pub fn open_fork_pull_request(
        &self,
        head_repo: Option<&str>,
        head_branch: &str,
        title: &str,
        body: &str,
        author: &str,
    ) -> Result<u64, GitHubEmulatorError> {
        let head_repo = match head_repo {
            None => HeadRepo::Deleted,
            Some(full) => {
                let ours = |o: &str, n: &str| {
                    o.eq_ignore_ascii_case(&self.shared.opts.owner)
                        && n.eq_ignore_ascii_case(&self.shared.opts.repo)
                };
                match full.split_once('/') {
                    Some((o, n))
                        if !o.is_empty() && !n.is_empty() && !n.contains('/') && !ours(o, n) =>
                    {
                        HeadRepo::Fork {
                            owner: o.to_string(),
                            name: n.to_string(),
                        }
                    }
                    _ => return Err(GitHubEmulatorError::InvalidRepository(full.to_string())),
                }
            }
        };
        let repo = self.shared.repo()?;
        self.shared.create_pull(
            &repo,
            NewPull {
                head_ref: head_branch,
                head_repo,
                base_ref: &self.shared.opts.default_branch,
                title,
                body,
                author,
            },
        )
    }

    /// Records a review of PR `number` by `reviewer` on its current head commit (its
    /// `commit_id`) and announces `pull_request_review` `submitted`; any role may review.
    /// `state`: `APPROVED`, `CHANGES_REQUESTED` or `COMMENTED`. Use
    /// [`GitHubEmulator::submit_review_id`] for the new review's id.
    ///
    /// Errors: [`GitHubEmulatorError::InvalidReviewState`], [`GitHubEmulatorError::NoSuchPull`],
    /// [`GitHubEmulatorError::OwnPullRequest`] (the author approving or requesting changes on
    /// their own PR, which GitHub refuses), [`GitHubEmulatorError::ReviewRefused`] (a closed
    /// pull request: GitHub's 422), [`GitHubEmulatorError::Git`].
    pub fn submit_review(
        &self,
        number: u64,
        reviewer: &str,
        state: &str,
    ) -> Result<(), GitHubEmulatorError> {
        self.submit_review_id(number, reviewer, state).map(|_| ())
    }

    /// As [`GitHubEmulator::submit_review`], returning the new review's id (GitHub's `id`).
    /// `state` may also be `PENDING` (a review started, not submitted: no webhook, visible to
    /// its author only, one per reviewer and pull request).
    ///
    /// Errors: as [`GitHubEmulator::submit_review`].
    pub fn submit_review_id(
        &self,
        number: u64,
        reviewer: &str,
        state: &str,
    ) -> Result<u64, GitHubEmulatorError> {
        if !is_valid_review_state(state) && state != "PENDING" {
            return Err(GitHubEmulatorError::InvalidReviewState(state.to_string()));
        }
        self.shared
            .add_review(number, reviewer, state, "", None)
            .map(|r| r.id)
    }

    /// Adds the label `name` to PR `number` as `user`, as `POST /issues/{n}/labels` does;
    /// announces `pull_request` `labeled` when it was not there yet.
    ///
    /// Errors: [`GitHubEmulatorError::NoSuchPull`], [`GitHubEmulatorError::Forbidden`] (labels
    /// need [`Role::Triage`]).
    pub fn add_label(
        &self,
        number: u64,
        user: &str,
        name: &str,
    ) -> Result<(), GitHubEmulatorError> {
        self.shared.set_label(number, user, name, true).map(|_| ())
    }

    /// Removes the label `name` from PR `number` as `user`; announces `unlabeled` when it was
    /// there.
    ///
    /// Errors: [`GitHubEmulatorError::NoSuchPull`], [`GitHubEmulatorError::Forbidden`] (labels
    /// need [`Role::Triage`]).
    pub fn remove_label(
        &self,
        number: u64,
        user: &str,
        name: &str,
    ) -> Result<(), GitHubEmulatorError> {
        self.shared.set_label(number, user, name, false).map(|_| ())
    }

    /// Adds an issue comment by `user` (any login) to PR `number` and announces
    /// `issue_comment` `created`. Returns the comment id.
    ///
    /// Errors: [`GitHubEmulatorError::NoSuchPull`], [`GitHubEmulatorError::CommentTooLong`]
    /// (more than [`MAX_COMMENT_CHARS`] characters).
    pub fn add_comment(
        &self,
        number: u64,
        user: &str,
        body: &str,
    ) -> Result<u64, GitHubEmulatorError> {
        let chars = body.chars().count();
        if chars > MAX_COMMENT_CHARS {
            return Err(GitHubEmulatorError::CommentTooLong(chars));
        }
        self.shared
            .add_comment(number, user, body.to_string())
            .map(|c| c.id)
    }

    /// Merges PR `number` as `merger`, exactly like `PUT /pulls/{n}/merge`: a real merge commit
    /// (parents: base tip, head tip) on the base branch; announces `pull_request` `closed`.
    /// Returns the merge commit SHA.
    ///
    /// Errors: [`GitHubEmulatorError::NoSuchPull`], [`GitHubEmulatorError::AlreadyMerged`],
    /// [`GitHubEmulatorError::NotOpen`], [`GitHubEmulatorError::Conflict`], [`GitHubEmulatorError::Git`].
    pub fn merge_pull_request(
        &self,
        number: u64,
        merger: &str,
    ) -> Result<String, GitHubEmulatorError> {
        self.merge_pull_request_with(number, merger, MergeMethod::Merge)
    }

    /// Merges PR `number` as `merger` with `method`, exactly like `PUT /pulls/{n}/merge` with
    /// `merge_method` and GitHub's default commit messages; announces `pull_request` `closed`.
    /// Returns the PR's `merge_commit_sha` as GitHub sets it: the merge commit (parents: base
    /// tip, head), the squash commit (parent: base tip; tree: the merge result), or the last
    /// commit re-applied by a rebase (see [`MergeMethod`]).
    ///
    /// Errors: [`GitHubEmulatorError::NoSuchPull`], [`GitHubEmulatorError::Forbidden`] (a
    /// `merger` with less than [`Role::Write`]: GitHub answers 403),
    /// [`GitHubEmulatorError::AlreadyMerged`], [`GitHubEmulatorError::NotOpen`],
    /// [`GitHubEmulatorError::Conflict`], [`GitHubEmulatorError::CannotRebase`],
    /// [`GitHubEmulatorError::Git`].
    pub fn merge_pull_request_with(
        &self,
        number: u64,
        merger: &str,
        method: MergeMethod,
    ) -> Result<String, GitHubEmulatorError> {
        let req = MergeRequest {
            method,
            ..MergeRequest::default()
        };
        self.shared.merge(number, merger, req).map_err(|e| match e {
            MergeError::Emu(e) => e,
            MergeError::HeadModified => GitHubEmulatorError::NotOpen(number),
        })
    }

    /// Sets the repository role of `login` (compared case-insensitively) from now on, for the
    /// REST API and this control API alike (see [`Role`] for what each allows).
    pub fn set_role(&self, login: &str, role: Role) {
        self.shared
            .lock()
            .roles
            .insert(login.to_ascii_lowercase(), role);
    }

    /// The repository role of `login`: the one set ([`GitHubEmulatorOptions::roles`],
    /// [`GitHubEmulator::set_role`]); else [`Role::Admin`] for the repository owner and
    /// [`Role::Write`] for any other login (the bot's and the App's included, which need to
    /// comment, post statuses, open issues and push their own branches).
    pub fn role(&self, login: &str) -> Role {
        let st = self.shared.read();
        self.shared.role_of(&st, login)
    }

    /// Edits issue comment `id` as `editor`, like `PATCH /repos/{o}/{r}/issues/comments/{id}`:
    /// allowed for the comment's author and for anyone with [`Role::Write`] or more (GitHub lets
    /// writers edit other people's comments; the comment keeps its author and its
    /// `updated_at` moves). Announces `issue_comment` `edited` for a pull request's comment.
    ///
    /// Errors: [`GitHubEmulatorError::NoSuchComment`], [`GitHubEmulatorError::Forbidden`],
    /// [`GitHubEmulatorError::CommentTooLong`].
    pub fn edit_comment(
        &self,
        id: u64,
        editor: &str,
        body: &str,
    ) -> Result<(), GitHubEmulatorError> {
        let chars = body.chars().count();
        if chars > MAX_COMMENT_CHARS {
            return Err(GitHubEmulatorError::CommentTooLong(chars));
        }
        self.shared
            .edit_comment(id, editor, body.to_string())
            .map(|_| ())
    }

    /// Dismisses review `review_id` of PR `number` as `dismisser`, like
    /// `PUT /repos/{o}/{r}/pulls/{n}/reviews/{id}/dismissals`: its state becomes `DISMISSED`
    /// and `pull_request_review` `dismissed` is announced.
    ///
    /// Errors: [`GitHubEmulatorError::NoSuchPull`], [`GitHubEmulatorError::NoSuchReview`],
    /// [`GitHubEmulatorError::Forbidden`] (less than [`Role::Write`]),
    /// [`GitHubEmulatorError::ReviewRefused`] (a pending or commented review).
    pub fn dismiss_review(
        &self,
        number: u64,
        review_id: u64,
        dismisser: &str,
    ) -> Result<(), GitHubEmulatorError> {
        self.shared
            .dismiss_review(number, review_id, dismisser)
            .map(|_| ())
    }

    /// The reviews of PR `number` in submission order, pending ones included (what a test
    /// asserts on; the REST API shows a pending review to its author only).
    pub fn reviews(&self, number: u64) -> Vec<EmulatedReview> {
        self.shared
            .read()
            .reviews
            .iter()
            .filter(|r| r.pull == number)
            .map(|r| EmulatedReview {
                id: r.id,
                user: r.user.clone(),
                state: r.state.clone(),
                commit_id: r.commit_id.clone(),
                submitted_at: r.submitted_at,
            })
            .collect()
    }

    /// Closes PR `number` without merging (its head SHA is frozen); announces `pull_request`
    /// `closed` (sent by the PR author).
    ///
    /// Errors: [`GitHubEmulatorError::NoSuchPull`], [`GitHubEmulatorError::Git`].
    pub fn close_pull_request(&self, number: u64) -> Result<(), GitHubEmulatorError> {
        let repo = self.shared.repo()?;
        let closed = {
            let mut st = self.shared.lock();
            let pull = st
                .pulls
                .get_mut(&number)
                .ok_or(GitHubEmulatorError::NoSuchPull(number))?;
            self.shared.refresh(&repo, pull)?;
            if pull.open {
                let now = self.shared.now();
                pull.base_sha_closed =
                    git::branch_tip(&repo, &pull.base_ref)?.map(|o| o.to_string());
                pull.open = false;
                pull.closed_at = Some(now);
                pull.updated_at = now;
                Some(pull.clone())
            } else {
                None
            }
        };
        if let Some(pull) = closed {
            let sender = pull.author.clone();
            self.shared.emit(hooks::Hook::Pull {
                action: "closed",
                pull,
                sender,
                before: None,
            });
        }
        Ok(())
    }

    /// The pull requests, by number.
    pub fn pull_requests(&self) -> Vec<EmulatedPull> {
        self.shared
            .read()
            .pulls
            .values()
            .map(|p| EmulatedPull {
                number: p.number,
                title: p.title.clone(),
                body: p.body.clone(),
                head_ref: p.head_ref.clone(),
                author: p.author.clone(),
                open: p.open,
            })
            .collect()
    }

    /// The plain issues (not pull requests), by number: (number, title, body, author, open).
    pub fn issues(&self) -> Vec<EmulatedIssue> {
        self.shared
            .read()
            .issues
            .values()
            .map(|i| EmulatedIssue {
                number: i.number,
                title: i.title.clone(),
                body: i.body.clone(),
                author: i.author.clone(),
                open: i.open,
            })
            .collect()
    }

    /// The comments on PR/issue `number`, oldest first (empty when there are none).
    pub fn comments(&self, number: u64) -> Vec<EmulatedComment> {
        self.shared
            .read()
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
            .read()
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

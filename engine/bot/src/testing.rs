//! Test doubles shared by the bot's unit tests.

use std::sync::Mutex;

use async_trait::async_trait;
use tkgops_github::{
    CommitState, CommitStatus, GitHub, GitHubError, IssueComment, PullCommit, PullRequest,
    RepoInfo, Review,
};

/// A [`GitHub`] client that records comment bodies and statuses, can refuse the first
/// `fail_statuses` status writes with a 502, and wakes waiters on every accepted write.
#[derive(Default)]
pub(crate) struct FakeGitHub {
    /// Accepted comment bodies, in order.
    pub comments: Mutex<Vec<String>>,
    /// Accepted statuses: (sha, context, state, description), in order.
    pub statuses: Mutex<Vec<(String, String, CommitState, String)>>,
    /// Status writes still to refuse.
    pub fail_statuses: Mutex<u32>,
    /// Status writes refused so far.
    pub refused: Mutex<u32>,
    /// Notified after every accepted write.
    pub written: tokio::sync::Notify,
    /// What [`GitHub::list_pull_commits`] answers: PR number → its commits, oldest first
    /// (a PR not listed has none).
    pub pull_commits: Mutex<std::collections::BTreeMap<u64, Vec<PullCommit>>>,
    /// What [`GitHub::list_open_pulls`] and [`GitHub::get_pull`] answer.
    pub open: Mutex<Vec<PullRequest>>,
    /// What [`GitHub::list_closed_pulls_since`] answers (every one, whatever the cursor).
    pub closed: Mutex<Vec<PullRequest>>,
    /// What [`GitHub::list_reviews`] answers: PR number → its reviews.
    pub reviews: Mutex<std::collections::BTreeMap<u64, Vec<Review>>>,
    /// What [`GitHub::list_comments_since`] answers (every one, whatever `since`).
    pub issue_comments: Mutex<Vec<IssueComment>>,
    /// Accepted comment upserts: (issue or PR number, marker, body), in order.
    pub upserts: Mutex<Vec<(u64, String, String)>>,
    /// Accepted issue upserts: (marker, title, body), in order.
    pub issues: Mutex<Vec<(String, String, String)>>,
    /// Answer every comment upsert with a 502 while set.
    pub fail_comments: std::sync::atomic::AtomicBool,
    /// Answer every review listing with a 502 while set.
    pub fail_reviews: std::sync::atomic::AtomicBool,
}

impl FakeGitHub {
    /// The bodies upserted on issue or pull request `number` under `marker`, in order.
    pub fn upserted(&self, number: u64, marker: &str) -> Vec<String> {
        self.upserts
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, m, _)| *n == number && m == marker)
            .map(|(_, _, b)| b.clone())
            .collect()
    }

    /// The statuses set on `sha` under `context`: (state, description), in order.
    pub fn statuses_of(&self, sha: &str, context: &str) -> Vec<(CommitState, String)> {
        self.statuses
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, c, ..)| s == sha && c == context)
            .map(|(_, _, st, d)| (*st, d.clone()))
            .collect()
    }
}

/// The login the fake's own statuses are created by.
pub(crate) const FAKE_BOT_LOGIN: &str = "tkgops[bot]";

#[async_trait]
impl GitHub for FakeGitHub {
    async fn repository(&self) -> Result<RepoInfo, GitHubError> {
        Err(GitHubError::Config("not used in this test".into()))
    }
    async fn list_open_pulls(&self, _: &str) -> Result<Vec<PullRequest>, GitHubError> {
        Ok(self.open.lock().unwrap().clone())
    }
    async fn list_recently_closed_pulls(
        &self,
        _: &str,
        _: usize,
    ) -> Result<Vec<PullRequest>, GitHubError> {
        Ok(Vec::new())
    }
    async fn list_closed_pulls_since(
        &self,
        _: &str,
        _: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<PullRequest>, GitHubError> {
        Ok(self.closed.lock().unwrap().clone())
    }
    async fn team_members(&self, _: &str, _: &str) -> Result<Vec<String>, GitHubError> {
        Ok(Vec::new())
    }
    async fn get_pull(&self, number: u64) -> Result<PullRequest, GitHubError> {
        let open = self.open.lock().unwrap().clone();
        let closed = self.closed.lock().unwrap().clone();
        open.into_iter()
            .chain(closed)
            .find(|p| p.number == number)
            .ok_or_else(|| GitHubError::Config(format!("no pull request {number}")))
    }
    async fn list_reviews(&self, number: u64) -> Result<Vec<Review>, GitHubError> {
        if self.fail_reviews.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(GitHubError::Config("HTTP 502 from the fake".into()));
        }
        Ok(self
            .reviews
            .lock()
            .unwrap()
            .get(&number)
            .cloned()
            .unwrap_or_default())
    }
    /// The commits set in [`FakeGitHub::pull_commits`]; more than
    /// [`tkgops_github::MAX_PULL_COMMITS`] fail as GitHub's cap does.
    async fn list_pull_commits(&self, number: u64) -> Result<Vec<PullCommit>, GitHubError> {
        let commits = self
            .pull_commits
            .lock()
            .unwrap()
            .get(&number)
            .cloned()
            .unwrap_or_default();
        if commits.len() > tkgops_github::MAX_PULL_COMMITS {
            return Err(GitHubError::TooManyCommits {
                number,
                count: commits.len() as u64,
            });
        }
        Ok(commits)
    }
    /// The accepted statuses of `sha`, newest first, all created by [`FAKE_BOT_LOGIN`].
    async fn list_own_statuses(&self, sha: &str) -> Result<Vec<CommitStatus>, GitHubError> {
        Ok(self
            .statuses
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|(s, ..)| s == sha)
            .map(|(_, context, state, description)| CommitStatus {
                context: context.clone(),
                state: *state,
                description: description.clone(),
                creator: FAKE_BOT_LOGIN.to_string(),
            })
            .collect())
    }
    async fn create_pull(&self, _: &str, _: &str, _: &str, _: &str) -> Result<u64, GitHubError> {
        Err(GitHubError::Config("not used in this test".into()))
    }
    async fn upsert_issue(
        &self,
        marker: &str,
        title: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        self.issues
            .lock()
            .unwrap()
            .push((marker.into(), title.into(), body.into()));
        Ok(1000)
    }
    async fn list_comments_since(
        &self,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<tkgops_github::IssueComment>, GitHubError> {
        Ok(self.issue_comments.lock().unwrap().clone())
    }
    async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        if self.fail_comments.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(GitHubError::Config("HTTP 502 from the fake".into()));
        }
        self.comments.lock().unwrap().push(body.to_string());
        let mut upserts = self.upserts.lock().unwrap();
        upserts.push((number, marker.into(), body.into()));
        let id = upserts.len() as u64;
        drop(upserts);
        self.written.notify_waiters();
        Ok(id)
    }
    async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: CommitState,
        description: &str,
        _: Option<&str>,
    ) -> Result<(), GitHubError> {
        {
            let mut fail = self.fail_statuses.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                *self.refused.lock().unwrap() += 1;
                return Err(GitHubError::Config("HTTP 502 from the fake".into()));
            }
        }
        self.statuses
            .lock()
            .unwrap()
            .push((sha.into(), context.into(), state, description.into()));
        self.written.notify_waiters();
        Ok(())
    }
}

/// The example repository policy (`examples/config-repo/tkgops.yaml`): approvers alice and bob,
/// one approval, two for destructive changes.
pub(crate) const EXAMPLE_POLICY: &str = include_str!("../../../examples/config-repo/tkgops.yaml");
/// The example cluster request's `tkgops.yaml`.
pub(crate) const EXAMPLE_SETTINGS: &str =
    include_str!("../../../examples/requests/team-a-prod/tkgops.yaml");
/// The example cluster request's TKG cluster configuration file.
pub(crate) const EXAMPLE_CLUSTER: &str =
    include_str!("../../../examples/requests/team-a-prod/cluster-config.yaml");

/// The repository's full name in the harness.
pub(crate) const REPO: &str = "acme/fleet";

/// A step executor that succeeds at once with an empty output.
pub(crate) struct Succeeds;

#[async_trait]
impl tkgops_engine::StepExecutor for Succeeds {
    async fn execute(
        &self,
        _: &tkgops_engine::StepContext,
    ) -> Result<serde_json::Value, tkgops_engine::StepError> {
        Ok(serde_json::json!({}))
    }
}

/// A bot over a real git repository (a temporary origin with `main`, mirrored by the bot), a
/// [`FakeGitHub`], a temporary journal and an engine whose steps succeed at once: what the
/// reconcilers' unit tests drive.
pub(crate) struct Harness {
    /// The bot.
    pub bot: crate::Bot,
    /// Its GitHub.
    pub github: std::sync::Arc<FakeGitHub>,
    /// The origin repository (`main` and `refs/pull/N/head` live here).
    pub origin: git2::Repository,
    pushes: std::sync::atomic::AtomicU64,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A harness whose `main` holds `tkgops.yaml` = `policy` (one commit).
    pub async fn new(policy: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("origin.git");
        tkgops_emulators::git_remote::init_remote(&remote, &[("tkgops.yaml", policy)]).unwrap();
        let origin = git2::Repository::open_bare(&remote).unwrap();
        let url = remote.display().to_string();
        let git =
            crate::gitops::ConfigRepo::open(&dir.path().join("mirror.git"), &url, None).unwrap();
        let (journal, _) = crate::BotJournal::open(std::sync::Arc::new(
            tkgops_engine::store::SledStore::temporary().unwrap(),
        ))
        .await
        .unwrap();
        let github = std::sync::Arc::new(FakeGitHub::default());
        let catalog = std::sync::Arc::new(tkgops_domain::workflow::Catalog::builtin().unwrap());
        let publisher = crate::reconcile::publish::CommentPublisher::start(
            github.clone(),
            journal.clone(),
            catalog.clone(),
            std::time::Duration::from_millis(1),
        );
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let engine = tkgops_engine::Engine::new(
            journal.store(),
            std::sync::Arc::new(Succeeds),
            std::sync::Arc::new(crate::metrics::MetricsObserver {
                metrics: metrics.clone(),
                inner: std::sync::Arc::new(publisher.clone()),
            }),
        );
        let bot = crate::Bot::new(crate::BotParts {
            github: github.clone(),
            git,
            journal,
            engine,
            catalog,
            repo: RepoInfo {
                full_name: REPO.into(),
                default_branch: "main".into(),
                clone_url: url,
            },
            executors: crate::executors::Executors::new(std::time::Duration::from_secs(1)),
            publisher,
            pinned_policy: None,
            metrics,
        });
        Harness {
            bot,
            github,
            origin,
            pushes: Default::default(),
            _dir: dir,
        }
    }

    /// Commits `files` on `main` in the origin (a push to the default branch).
    pub fn commit_main(&self, files: &[(&str, &str)]) {
        tkgops_emulators::git_remote::commit_on_branch(
            self.origin.path(),
            "main",
            "main",
            "push",
            files,
        )
        .unwrap();
    }

    /// The tip of `main` in the origin.
    pub fn main(&self) -> git2::Oid {
        self.origin.refname_to_id("refs/heads/main").unwrap()
    }

    /// Pushes `files` as pull request `number`'s head (on top of `main`); returns the pull
    /// request as GitHub lists it, open, by `author`, from this repository.
    pub fn open_pull(&self, number: u64, author: &str, files: &[(&str, &str)]) -> PullRequest {
        // A branch per push, so a pull request can be pushed again.
        let pushes = self
            .pushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let branch = format!("change-{number}-{pushes}");
        let head = tkgops_emulators::git_remote::commit_on_branch(
            self.origin.path(),
            "main",
            &branch,
            "change",
            files,
        )
        .unwrap();
        let head = git2::Oid::from_str(&head).unwrap();
        self.origin
            .reference(&format!("refs/pull/{number}/head"), head, true, "pr")
            .unwrap();
        let pr = PullRequest {
            number,
            title: format!("change {number}"),
            author: author.into(),
            head_sha: head.to_string(),
            head_ref: format!("change-{number}"),
            head_repo_full_name: Some(REPO.into()),
            base_ref: "main".into(),
            open: true,
            merged: false,
            merge_commit_sha: None,
            updated_at: Some(chrono::Utc::now()),
            labels: Vec::new(),
        };
        self.github.open.lock().unwrap().push(pr.clone());
        pr
    }

    /// Merges open pull request `pr` into `main` with a merge commit; moves it from the open
    /// list to the closed one and returns it as GitHub lists it then.
    pub fn merge(&self, pr: &PullRequest) -> PullRequest {
        let main = self.origin.find_commit(self.main()).unwrap();
        let head = self
            .origin
            .find_commit(git2::Oid::from_str(&pr.head_sha).unwrap())
            .unwrap();
        let sig =
            git2::Signature::new("dev", "dev@example.com", &git2::Time::new(1_700_000_100, 0))
                .unwrap();
        let merge = self
            .origin
            .commit(
                Some("refs/heads/main"),
                &sig,
                &sig,
                &format!("Merge pull request #{}", pr.number),
                &head.tree().unwrap(),
                &[&main, &head],
            )
            .unwrap();
        let merged = PullRequest {
            open: false,
            merged: true,
            merge_commit_sha: Some(merge.to_string()),
            updated_at: Some(chrono::Utc::now()),
            ..pr.clone()
        };
        self.github
            .open
            .lock()
            .unwrap()
            .retain(|p| p.number != pr.number);
        self.github.closed.lock().unwrap().push(merged.clone());
        merged
    }

    /// An `APPROVED` review of `pr`'s head by `user`.
    pub fn approve(&self, pr: &PullRequest, user: &str) {
        let mut reviews = self.github.reviews.lock().unwrap();
        let list = reviews.entry(pr.number).or_default();
        list.push(Review {
            id: 500 + list.len() as u64,
            user: user.into(),
            state: "APPROVED".into(),
            commit_id: Some(pr.head_sha.clone()),
            submitted_at: Some(chrono::Utc::now()),
        });
    }

    /// A comment by `user` on issue or pull request `number`, as GitHub lists it.
    pub fn comment(&self, id: u64, number: u64, user: &str, body: &str) -> IssueComment {
        let at = chrono::Utc::now();
        let c = IssueComment {
            id,
            issue_number: number,
            user: user.into(),
            body: body.into(),
            created_at: at,
            updated_at: at,
        };
        self.github.issue_comments.lock().unwrap().push(c.clone());
        c
    }

    /// The shared context of the bot's reconcilers.
    pub fn cx(&self) -> &crate::context::Context {
        self.bot.context()
    }

    /// Reconciles `key` once, as the queue would.
    pub async fn reconcile(
        &self,
        key: &crate::reconcile::Key,
    ) -> Result<crate::reconcile::Outcome, crate::BotError> {
        crate::reconcile::reconcile(self.cx(), key).await
    }

    /// Runs the sync and the policy-chain reconcilers (the observation the others read);
    /// returns the keys they enqueued.
    pub async fn observe(&self) -> Vec<crate::reconcile::Key> {
        let mut keys = self
            .reconcile(&crate::reconcile::Key::Sync)
            .await
            .unwrap()
            .enqueue;
        keys.extend(
            self.reconcile(&crate::reconcile::Key::PolicyChain)
                .await
                .unwrap()
                .enqueue,
        );
        keys
    }
}

/// The example cluster request `team-a-prod`'s files, under `clusters/team-a-prod/`.
pub(crate) fn example_request() -> Vec<(&'static str, &'static str)> {
    vec![
        ("clusters/team-a-prod/tkgops.yaml", EXAMPLE_SETTINGS),
        ("clusters/team-a-prod/cluster-config.yaml", EXAMPLE_CLUSTER),
    ]
}

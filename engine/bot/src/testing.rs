//! Test doubles shared by the bot's unit tests.

use std::sync::Mutex;

use async_trait::async_trait;
use tkgops_github::{
    CommitState, CommitStatus, GitHub, GithubError, PullCommit, PullRequest, RepoInfo, Review,
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
}

/// The login the fake's own statuses are created by.
pub(crate) const FAKE_BOT_LOGIN: &str = "tkgops[bot]";

#[async_trait]
impl GitHub for FakeGitHub {
    async fn repository(&self) -> Result<RepoInfo, GithubError> {
        Err(GithubError::Config("not used in this test".into()))
    }
    async fn list_open_pulls(&self, _: &str) -> Result<Vec<PullRequest>, GithubError> {
        Ok(Vec::new())
    }
    async fn list_recently_closed_pulls(
        &self,
        _: &str,
        _: usize,
    ) -> Result<Vec<PullRequest>, GithubError> {
        Ok(Vec::new())
    }
    async fn list_closed_pulls_since(
        &self,
        _: &str,
        _: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<PullRequest>, GithubError> {
        Ok(Vec::new())
    }
    async fn team_members(&self, _: &str, _: &str) -> Result<Vec<String>, GithubError> {
        Ok(Vec::new())
    }
    async fn get_pull(&self, _: u64) -> Result<PullRequest, GithubError> {
        Err(GithubError::Config("not used in this test".into()))
    }
    async fn list_reviews(&self, _: u64) -> Result<Vec<Review>, GithubError> {
        Ok(Vec::new())
    }
    /// The commits set in [`FakeGitHub::pull_commits`]; more than
    /// [`tkgops_github::MAX_PULL_COMMITS`] fail as GitHub's cap does.
    async fn list_pull_commits(&self, number: u64) -> Result<Vec<PullCommit>, GithubError> {
        let commits = self
            .pull_commits
            .lock()
            .unwrap()
            .get(&number)
            .cloned()
            .unwrap_or_default();
        if commits.len() > tkgops_github::MAX_PULL_COMMITS {
            return Err(GithubError::TooManyCommits {
                number,
                count: commits.len() as u64,
            });
        }
        Ok(commits)
    }
    /// The accepted statuses of `sha`, newest first, all created by [`FAKE_BOT_LOGIN`].
    async fn list_own_statuses(&self, sha: &str) -> Result<Vec<CommitStatus>, GithubError> {
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
    async fn create_pull(&self, _: &str, _: &str, _: &str, _: &str) -> Result<u64, GithubError> {
        Err(GithubError::Config("not used in this test".into()))
    }
    async fn upsert_issue(&self, _: &str, _: &str, _: &str) -> Result<u64, GithubError> {
        Err(GithubError::Config("not used in this test".into()))
    }
    async fn list_comments_since(
        &self,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<tkgops_github::IssueComment>, GithubError> {
        Ok(Vec::new())
    }
    async fn upsert_comment(&self, _: u64, _: &str, body: &str) -> Result<u64, GithubError> {
        self.comments.lock().unwrap().push(body.to_string());
        self.written.notify_waiters();
        Ok(1)
    }
    async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: CommitState,
        description: &str,
        _: Option<&str>,
    ) -> Result<(), GithubError> {
        {
            let mut fail = self.fail_statuses.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                *self.refused.lock().unwrap() += 1;
                return Err(GithubError::Config("HTTP 502 from the fake".into()));
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

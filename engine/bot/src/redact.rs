//! The last line of defence of security rule 5: the secret values this process holds (GitHub
//! token or App key, TMC API token, AWS secret keys from the environment) never reach a pull
//! request comment, a commit status or a log line, even if some code path formats one by
//! mistake.
//!
//! Secrets are registered once, when the bot reads them ([`register`]); every comment body and
//! status description goes through [`RedactingVcs`], and every log line through the writer
//! [`stderr`] hands to `tracing_subscriber`. Matching is exact text replacement
//! ([`tkgops_domain::workflow::markdown::redact`]); values shorter than
//! [`MIN_SECRET_LEN`] characters are not registered (they would mask ordinary words).

use std::io::Write;
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;
use tkgops_domain::workflow::markdown;
use tkgops_providers::github::{
    CommitState, GithubError, PullRequest, RepoInfo, Review, VcsClient,
};

/// Shortest value [`register`] accepts, in characters: 8.
pub const MIN_SECRET_LEN: usize = 8;

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Registers `value` as a secret of this process: from now on it is replaced by `<redacted>`
/// in every comment, status and log line. Values shorter than [`MIN_SECRET_LEN`] characters
/// (after trimming) are ignored; registering a value twice is harmless.
pub fn register(value: &str) {
    let value = value.trim();
    if value.chars().count() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = registry().write().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == value) {
        secrets.push(value.to_string());
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers the AWS credentials of the environment (`AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`) as secrets; see [`register`].
pub fn register_aws_environment() {
    for var in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        if let Ok(v) = std::env::var(var) {
            register(&v);
        }
    }
}

/// `text` with every registered secret replaced by `<redacted>`.
pub fn redact(text: &str) -> String {
    let secrets = registry().read().unwrap_or_else(|e| e.into_inner());
    if secrets.is_empty() {
        return text.to_string();
    }
    markdown::redact(text, &secrets)
}

/// A writer that redacts what it is given before passing it on. `tracing_subscriber`'s fmt
/// layer writes each formatted event with one `write_all`, so whole log lines are redacted.
pub struct Redacting<W: Write> {
    inner: W,
}

impl<W: Write> Redacting<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Redacting { inner }
    }
}

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Standard error through [`Redacting`]: the writer of the binaries' log subscriber
/// (`tracing_subscriber::fmt().with_writer(tkgops::redact::stderr)`).
pub fn stderr() -> Redacting<std::io::Stderr> {
    Redacting::new(std::io::stderr())
}

/// A [`VcsClient`] that redacts every comment body and status description before the inner
/// client sends it. Reads pass through unchanged.
pub struct RedactingVcs {
    inner: Arc<dyn VcsClient>,
}

impl RedactingVcs {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn VcsClient>) -> Self {
        RedactingVcs { inner }
    }
}

#[async_trait]
impl VcsClient for RedactingVcs {
    async fn repository(&self) -> Result<RepoInfo, GithubError> {
        self.inner.repository().await
    }

    async fn list_open_pulls(&self, base: &str) -> Result<Vec<PullRequest>, GithubError> {
        self.inner.list_open_pulls(base).await
    }

    async fn list_recently_closed_pulls(
        &self,
        base: &str,
        max: usize,
    ) -> Result<Vec<PullRequest>, GithubError> {
        self.inner.list_recently_closed_pulls(base, max).await
    }

    async fn list_closed_pulls_since(
        &self,
        base: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<PullRequest>, GithubError> {
        self.inner.list_closed_pulls_since(base, since).await
    }

    async fn team_members(&self, org: &str, team: &str) -> Result<Vec<String>, GithubError> {
        self.inner.team_members(org, team).await
    }

    async fn get_pull(&self, number: u64) -> Result<PullRequest, GithubError> {
        self.inner.get_pull(number).await
    }

    async fn create_pull(
        &self,
        title: &str,
        head: &str,
        base: &str,
        body: &str,
    ) -> Result<u64, GithubError> {
        self.inner
            .create_pull(&redact(title), head, base, &redact(body))
            .await
    }

    async fn upsert_issue(
        &self,
        marker: &str,
        title: &str,
        body: &str,
    ) -> Result<u64, GithubError> {
        self.inner
            .upsert_issue(marker, &redact(title), &redact(body))
            .await
    }

    async fn list_comments_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<tkgops_providers::github::IssueComment>, GithubError> {
        self.inner.list_comments_since(since).await
    }

    async fn list_reviews(&self, number: u64) -> Result<Vec<Review>, GithubError> {
        self.inner.list_reviews(number).await
    }

    async fn list_pull_commits(
        &self,
        number: u64,
    ) -> Result<Vec<tkgops_providers::github::PullCommit>, GithubError> {
        self.inner.list_pull_commits(number).await
    }

    async fn list_own_statuses(
        &self,
        sha: &str,
    ) -> Result<Vec<tkgops_providers::github::CommitStatus>, GithubError> {
        self.inner.list_own_statuses(sha).await
    }

    async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, GithubError> {
        self.inner
            .upsert_comment(number, marker, &redact(body))
            .await
    }

    /// The inner client's git token, registered as a secret first (App installation tokens
    /// change every hour).
    async fn git_token(&self) -> Result<Option<String>, GithubError> {
        let token = self.inner.git_token().await?;
        if let Some(t) = &token {
            register(t);
        }
        Ok(token)
    }

    async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: CommitState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), GithubError> {
        self.inner
            .set_status(sha, context, state, &redact(description), target_url)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeVcs;
    use std::sync::Mutex;

    #[tokio::test]
    async fn registered_secrets_never_reach_comments_statuses_or_logs() {
        register("ghs_unit-test-secret-0123456789");
        register("short"); // too short to register: ordinary text stays readable
        let recorded = Arc::new(FakeVcs::default());
        let vcs = RedactingVcs::new(recorded.clone());
        vcs.upsert_comment(
            1,
            "<!-- m -->",
            "token ghs_unit-test-secret-0123456789 leaked, short",
        )
        .await
        .unwrap();
        vcs.set_status(
            "sha",
            "ctx",
            CommitState::Failure,
            "bad ghs_unit-test-secret-0123456789",
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            *recorded.comments.lock().unwrap(),
            ["token <redacted> leaked, short"]
        );
        assert_eq!(recorded.statuses.lock().unwrap()[0].3, "bad <redacted>");

        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Redacting::new(Shared(sink.clone())))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                error = "401 for ghs_unit-test-secret-0123456789",
                "request failed"
            );
        });
        let logged = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("401 for <redacted>"), "{logged}");
        assert!(!logged.contains("0123456789"), "{logged}");
    }
}

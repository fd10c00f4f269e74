//! The last line of defence of security rule 5: the secret values this process holds (GitHub
//! token or App key, TMC API token, AWS secret keys from the environment) never reach a pull
//! request comment, a commit status or a log line, even if some code path formats one by
//! mistake.
//!
//! Secrets are registered once, when the bot reads them ([`register`]); tokens that rotate (a
//! GitHub App installation token an hour) as they are minted, keeping only those that can
//! still be valid ([`register_rotating`]). Every comment body and
//! status description goes through [`RedactingGitHub`], and every log line through the writer
//! [`stderr`] hands to `tracing_subscriber`. Matching is exact text replacement
//! ([`tkgops_domain::workflow::markdown::redact`]); values shorter than
//! [`MIN_SECRET_LEN`] characters are not registered (they would mask ordinary words).

use std::io::Write;
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;
use tkgops_domain::workflow::markdown;
use tkgops_github::{CommitState, GitHub, GitHubError, PullRequest, RepoInfo, Review};

/// Shortest value [`register`] accepts, in characters: 8.
pub const MIN_SECRET_LEN: usize = 8;

/// The secrets of this process: fixed ones ([`register`]: the GitHub token or App key, TMC and
/// AWS secrets) and rotating tokens ([`register_rotating`]: GitHub App installation tokens,
/// one an hour), of which only the last [`ROTATING_KEPT`] are kept: an older one has expired
/// and can no longer be used, so the registry stays bounded however long the bot runs.
#[derive(Default)]
pub struct SecretRegistry {
    fixed: Vec<String>,
    /// Newest first, at most [`ROTATING_KEPT`].
    rotating: std::collections::VecDeque<String>,
    /// `fixed` and `rotating`, longest first (a secret containing another is replaced whole).
    all: Vec<String>,
}

/// Rotating tokens kept by [`SecretRegistry`]: the current one and the one before it (still
/// valid for the minutes a refresh ahead of its expiry leaves it, and possibly in an error
/// message of a request made with it).
pub const ROTATING_KEPT: usize = 2;

impl SecretRegistry {
    fn accept(value: &str) -> Option<&str> {
        let value = value.trim();
        (value.chars().count() >= MIN_SECRET_LEN).then_some(value)
    }

    fn rebuild(&mut self) {
        let mut all: Vec<String> = self
            .fixed
            .iter()
            .chain(self.rotating.iter())
            .cloned()
            .collect();
        // A log line may hold a secret escaped: by `Debug` (`{:?}`: a PEM key's newlines as
        // `\n`, quotes as `\"`), by JSON (`--log-format json`), or by both. Those forms are
        // redacted too.
        let mut escaped = Vec::new();
        for s in &all {
            let debug = format!("{s:?}");
            let debug = debug[1..debug.len() - 1].to_string();
            for form in [s.clone(), debug] {
                if let Ok(json) = serde_json::to_string(&form) {
                    escaped.push(json[1..json.len() - 1].to_string());
                }
                escaped.push(form);
            }
        }
        all.extend(escaped);
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        self.all = all;
    }

    /// Registers `value` for good (see [`register`]).
    pub fn register(&mut self, value: &str) {
        let Some(value) = Self::accept(value) else {
            return;
        };
        if !self.fixed.iter().any(|s| s == value) {
            self.fixed.push(value.to_string());
            self.rotating.retain(|s| s != value);
            self.rebuild();
        }
    }

    /// Registers `value` as the newest rotating token (see [`register_rotating`]): the oldest
    /// beyond [`ROTATING_KEPT`] is forgotten. A value registered for good stays so.
    pub fn register_rotating(&mut self, value: &str) {
        let Some(value) = Self::accept(value) else {
            return;
        };
        if self.fixed.iter().any(|s| s == value)
            || self.rotating.front().is_some_and(|s| s == value)
        {
            return;
        }
        self.rotating.retain(|s| s != value);
        self.rotating.push_front(value.to_string());
        self.rotating.truncate(ROTATING_KEPT);
        self.rebuild();
    }

    /// Every secret registered now and its escaped forms (`Debug`, JSON, JSON of `Debug`),
    /// longest first.
    pub fn secrets(&self) -> &[String] {
        &self.all
    }

    /// `text` with every registered secret replaced by `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        if self.all.is_empty() {
            return text.to_string();
        }
        markdown::redact(text, &self.all)
    }
}

fn registry() -> &'static RwLock<SecretRegistry> {
    static SECRETS: OnceLock<RwLock<SecretRegistry>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(SecretRegistry::default()))
}

/// Registers `value` as a secret of this process: from now on it is replaced by `<redacted>`
/// in every comment, status and log line. Values shorter than [`MIN_SECRET_LEN`] characters
/// (after trimming) are ignored; registering a value twice is harmless.
pub fn register(value: &str) {
    registry()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .register(value);
}

/// Registers `value` as the current token of a rotating credential (a GitHub App installation
/// token, valid one hour): redacted like [`register`]'s, but only the current and the previous
/// token are kept ([`ROTATING_KEPT`]), so a bot running for months holds two, not thousands.
pub fn register_rotating(value: &str) {
    registry()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .register_rotating(value);
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
    registry()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .redact(text)
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

/// A [`GitHub`] client that redacts every comment body and status description before the inner
/// client sends it. Reads pass through unchanged.
pub struct RedactingGitHub {
    inner: Arc<dyn GitHub>,
}

impl RedactingGitHub {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn GitHub>) -> Self {
        RedactingGitHub { inner }
    }
}

#[async_trait]
impl GitHub for RedactingGitHub {
    async fn repository(&self) -> Result<RepoInfo, GitHubError> {
        self.inner.repository().await
    }

    async fn list_open_pulls(&self, base: &str) -> Result<Vec<PullRequest>, GitHubError> {
        self.inner.list_open_pulls(base).await
    }

    async fn list_recently_closed_pulls(
        &self,
        base: &str,
        max: usize,
    ) -> Result<Vec<PullRequest>, GitHubError> {
        self.inner.list_recently_closed_pulls(base, max).await
    }

    async fn list_closed_pulls_since(
        &self,
        base: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<PullRequest>, GitHubError> {
        self.inner.list_closed_pulls_since(base, since).await
    }

    async fn team_members(&self, org: &str, team: &str) -> Result<Vec<String>, GitHubError> {
        self.inner.team_members(org, team).await
    }

    async fn get_pull(&self, number: u64) -> Result<PullRequest, GitHubError> {
        self.inner.get_pull(number).await
    }

    async fn create_pull(
        &self,
        title: &str,
        head: &str,
        base: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        self.inner
            .create_pull(&redact(title), head, base, &redact(body))
            .await
    }

    async fn upsert_issue(
        &self,
        marker: &str,
        title: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        self.inner
            .upsert_issue(marker, &redact(title), &redact(body))
            .await
    }

    async fn list_comments_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<tkgops_github::IssueComment>, GitHubError> {
        self.inner.list_comments_since(since).await
    }

    async fn list_reviews(&self, number: u64) -> Result<Vec<Review>, GitHubError> {
        self.inner.list_reviews(number).await
    }

    async fn list_pull_commits(
        &self,
        number: u64,
    ) -> Result<Vec<tkgops_github::PullCommit>, GitHubError> {
        self.inner.list_pull_commits(number).await
    }

    async fn list_own_statuses(
        &self,
        sha: &str,
    ) -> Result<Vec<tkgops_github::CommitStatus>, GitHubError> {
        self.inner.list_own_statuses(sha).await
    }

    async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        self.inner
            .upsert_comment(number, marker, &redact(body))
            .await
    }

    /// The inner client's git token, registered as a secret first: as a rotating one
    /// ([`register_rotating`]), since App installation tokens change every hour.
    async fn git_token(&self) -> Result<Option<String>, GitHubError> {
        let token = self.inner.git_token().await?;
        if let Some(t) = &token {
            register_rotating(t);
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
    ) -> Result<(), GitHubError> {
        self.inner
            .set_status(sha, context, state, &redact(description), target_url)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeGitHub;
    use std::sync::Mutex;

    /// A bot that ran for a month saw 720 App installation tokens: the registry holds the
    /// current and the previous one (both redacted) and the fixed secrets, not 720 tokens.
    #[test]
    fn the_registry_keeps_only_the_tokens_that_can_still_be_valid() {
        let mut r = SecretRegistry::default();
        r.register("pem-private-key-of-the-app-0123456789");
        for hour in 0..720 {
            r.register_rotating(&format!("ghs_installation-token-{hour:04}"));
            // The same token handed out again (a cached one) changes nothing.
            r.register_rotating(&format!("ghs_installation-token-{hour:04}"));
        }
        assert_eq!(r.secrets().len(), 1 + ROTATING_KEPT, "{:?}", r.secrets());
        assert_eq!(
            r.redact("ghs_installation-token-0719 ghs_installation-token-0718 pem-private-key-of-the-app-0123456789"),
            "<redacted> <redacted> <redacted>"
        );
        // Expired an hour ago and more: no longer held.
        assert_eq!(
            r.redact("ghs_installation-token-0717"),
            "ghs_installation-token-0717"
        );
        // A fixed secret handed out as a token (a personal access token) stays registered.
        r.register_rotating("pem-private-key-of-the-app-0123456789");
        r.register_rotating("ghs_installation-token-0720");
        r.register_rotating("ghs_installation-token-0721");
        assert!(r
            .secrets()
            .contains(&"pem-private-key-of-the-app-0123456789".to_string()));
        assert_eq!(r.secrets().len(), 3);
    }

    #[tokio::test]
    async fn registered_secrets_never_reach_comments_statuses_or_logs() {
        register("ghs_unit-test-secret-0123456789");
        register("short"); // too short to register: ordinary text stays readable
        let recorded = Arc::new(FakeGitHub::default());
        let github = RedactingGitHub::new(recorded.clone());
        github
            .upsert_comment(
                1,
                "<!-- m -->",
                "token ghs_unit-test-secret-0123456789 leaked, short",
            )
            .await
            .unwrap();
        github
            .set_status(
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

    /// Every string of `v` (object keys and values, at any depth).
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    out.push(k.clone());
                    strings(v, out);
                }
            }
            _ => {}
        }
    }

    /// `tkgops --log-format json`: a secret never appears in a JSON log line, neither in the
    /// message nor in an event's or a span's fields, also when JSON escapes it (a PEM key's
    /// newlines and quotes), and every line stays one valid JSON object.
    #[test]
    fn registered_secrets_never_reach_json_logs_even_inside_fields() {
        let pem = "-----BEGIN KEY-----\nMIIEjsonlog\"quoted\"0123\n-----END KEY-----";
        let token = "ghs_json-log-secret-9876543210";
        register(pem);
        register(token);
        let out = crate::logs::Captured::default();
        let sink = out.clone();
        let sub = crate::logs::subscriber(
            crate::logs::LogFormat::Json,
            tracing_subscriber::EnvFilter::new("debug"),
            move || Redacting::new(sink.clone()),
        );
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("run", run_id = "r-1", merge_commit = token);
            let _g = span.enter();
            tracing::warn!(error = %format!("401 for {token}"), key = pem, "request with {token} failed");
            tracing::error!(debug = ?pem, "key {pem:?} refused");
        });
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for secret in [pem, token, "MIIEjsonlog", "9876543210"] {
            assert!(!text.contains(secret), "{secret:?} in {text}");
        }
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
            let mut all = Vec::new();
            strings(&v, &mut all);
            for s in &all {
                assert!(
                    !s.contains("MIIEjsonlog") && !s.contains("9876543210"),
                    "a decoded field holds a secret: {s:?} in {line}"
                );
            }
            assert!(all.iter().any(|s| s.contains("<redacted>")), "{line}");
            assert_eq!(v["span"]["run_id"], "r-1", "{line}");
        }
    }
}

//! Commands (issue 8 items 6 and 8): a comment whose first line is `/tkgops plan`,
//! `/tkgops retry` or `/tkgops cancel` on a pull request, or `/tkgops resume [schedule]` on the
//! fleet dashboard issue.
//!
//! Comments are read by polling the repository's comment list (`since` a cursor kept in the
//! journal, [`Cursor::Comments`]), like pull requests: a webhook only wakes the poll. Each
//! command is answered once, in a reply keyed by the command's comment id
//! ([`reply_marker`]), and recorded as handled ([`crate::BotJournal::command_answered`]) after
//! the reply.
//!
//! A command is its author's own words (docs/design.md security rule 8): GitHub lets anyone with
//! write access edit other people's comments, and the API names only the comment's author, so
//! a comment edited after it was created (`updated_at` later than `created_at`) is never a
//! command, on a pull request or on the dashboard issue. It gets one reply saying so
//! ([`edited_reply`]), so its author knows to post the command as a new comment.
//!
//! Who may use them is the policy of the default branch (security rule 1): its `tkgops.yaml`
//! approvers (logins or `org/team`) may use every command; the pull request's author may also
//! use `plan` and `cancel` on their own pull request (re-planning needs no credentials, and
//! stopping one's own change is always safe). Anyone else gets a refusal that says why.
//!
//! - `plan`: plans the open pull request's head again and posts the plan.
//! - `retry`: resumes the merged pull request's failed runs from their failed step. A run is
//!   not resumed when a later run of its cluster has started: resuming the older run would
//!   apply an older desired state over a newer one.
//! - `cancel`: cancels the merged pull request's queued runs at once, and its running runs at
//!   their next step boundary.
//! - `resume [schedule]` (approvers only, on the fleet dashboard issue): lifts the halt of the
//!   scheduled applies (of `schedule` when named); their failed runs are retried from the failed
//!   step and the halted wave soaks again ([`tkgops_domain::waves::ApplyProgress::resume`]).

use tracing::{info, warn};

use crate::journal::Cursor;
use crate::scheduler::Action;
use crate::{BotError, MergeRecord, MergeSha};
use tkgops_domain::workflow::markdown::STICKY_MARKER;
use tkgops_engine::{CancelOutcome, RunState};
use tkgops_github::{IssueComment, PullRequest};

/// A `/tkgops` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `/tkgops plan`.
    Plan,
    /// `/tkgops retry`.
    Retry,
    /// `/tkgops cancel`.
    Cancel,
    /// `/tkgops resume [schedule]`.
    Resume(Option<String>),
}

impl Command {
    /// The command's word (`plan`, `retry`, `cancel`, `resume`).
    pub fn word(&self) -> &'static str {
        match self {
            Command::Plan => "plan",
            Command::Retry => "retry",
            Command::Cancel => "cancel",
            Command::Resume(_) => "resume",
        }
    }
}

/// The command in a comment `body`: `None` when its first non-empty line does not start with
/// `/tkgops`; `Some(Err(reply))` for an unknown or malformed command (the reply says what is
/// accepted).
pub fn parse(body: &str) -> Option<Result<Command, String>> {
    let line = body.lines().map(str::trim).find(|l| !l.is_empty())?;
    let rest = line.strip_prefix("/tkgops")?;
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    let usage = "the commands are `/tkgops plan`, `/tkgops retry` and `/tkgops cancel` on a pull request, and `/tkgops resume [schedule]` on the fleet dashboard issue";
    match words.as_slice() {
        ["plan"] => Some(Ok(Command::Plan)),
        ["retry"] => Some(Ok(Command::Retry)),
        ["cancel"] => Some(Ok(Command::Cancel)),
        ["resume"] => Some(Ok(Command::Resume(None))),
        ["resume", name] => Some(Ok(Command::Resume(Some(name.to_string())))),
        ["resume", ..] => Some(Err(format!(
            "`/tkgops resume` takes at most one schedule name: {usage}."
        ))),
        [] => Some(Err(format!("a command word is missing: {usage}."))),
        [w, ..] if ["plan", "retry", "cancel"].contains(w) => {
            Some(Err(format!("`/tkgops {w}` takes no arguments: {usage}.")))
        }
        [w, ..] => Some(Err(format!("`{w}` is not a tkgops command: {usage}."))),
    }
}

/// Whether comment `c` was edited after it was created (GitHub's `updated_at` is later than its
/// `created_at`): such a comment is never a command (module docs).
pub fn is_edited(c: &IssueComment) -> bool {
    c.updated_at > c.created_at
}

/// The reply to the edited comment `c` whose text now reads as the command `word` (`retry`,
/// …; `None` for a malformed command): it is not run, and why.
pub fn edited_reply(c: &IssueComment, word: Option<&str>) -> String {
    let what = word
        .map(|w| format!("`/tkgops {w}`"))
        .unwrap_or_else(|| "a `/tkgops` command".into());
    format!(
        "@{}: this comment was edited after it was posted ({} → {}), so it is not a command and nothing was done. Anyone with write access can edit another person's comment, and tkgops acts only on a command as its author wrote it: to run {what}, post it as a new comment.",
        c.user,
        c.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        c.updated_at.format("%Y-%m-%d %H:%M:%S UTC"),
    )
}

/// The hidden marker of the bot's reply to comment `comment_id`.
pub fn reply_marker(comment_id: u64) -> String {
    format!("<!-- tkgops:command:{comment_id} -->")
}

fn store_err(e: impl std::fmt::Display) -> BotError {
    BotError::Store(e.to_string())
}

on_context!(
    /// The command reconciler ([`super::Key::Command`], keyed by comment id; module docs).
    CommandReconciler
);

impl CommandReconciler<'_> {
    /// Answers the comment `comment_id` of the observation if it is a `/tkgops` command not
    /// answered yet (or re-renders the sticky comment someone edited), then moves the comment
    /// cursor up to it. The queue answers comments in id order and holds the later ones back
    /// while one fails, so the cursor never passes an unanswered command.
    ///
    /// Errors: [`BotError`] when GitHub, git or the journal fail; the command and the ones
    /// after it are tried again.
    pub(crate) async fn reconcile(&self, comment_id: u64) -> Result<Action, BotError> {
        let o = self.observed();
        let Some(c) = o.comments.get(&comment_id) else {
            return Ok(Action::AwaitChange);
        };
        self.handle_comment(c, &o.tip).await?;
        let cursor = self.journal.cursor(Cursor::Comments).await?;
        if cursor.is_none_or(|n| c.updated_at > n) {
            self.journal
                .set_cursor(Cursor::Comments, c.updated_at)
                .await?;
        }
        Ok(Action::AwaitChange)
    }

    async fn handle_comment(&self, c: &IssueComment, tip: &str) -> Result<(), BotError> {
        if c.body.contains(STICKY_MARKER) || self.is_sticky(c).await? {
            return self.rerender_sticky(c).await;
        }
        let Some(parsed) = parse(&c.body) else {
            return Ok(());
        };
        if self.journal.command_answered(c.id).await? {
            return Ok(());
        }
        // Security rule 8: an edited comment is not a command, whoever edited it.
        let reply = match parsed {
            parsed if is_edited(c) => {
                warn!(comment = c.id, issue = c.issue_number, user = %c.user, "an edited comment reads as a command: not run");
                edited_reply(c, parsed.ok().as_ref().map(Command::word))
            }
            Err(usage) => format!("@{}: {usage}", c.user),
            Ok(cmd) => self.run_command(c, cmd, tip).await?,
        };
        let body = format!("{}\n{reply}\n", reply_marker(c.id));
        self.github
            .upsert_comment(c.issue_number, &reply_marker(c.id), &body)
            .await
            .map_err(|e| BotError::GitHub(e.to_string()))?;
        self.journal.set_command_answered(c.id).await?;
        info!(comment = c.id, issue = c.issue_number, user = %c.user, "command answered");
        Ok(())
    }

    /// Whether `c` is the comment tkgops last posted its plan in (its marker may have been
    /// edited away).
    async fn is_sticky(&self, c: &IssueComment) -> Result<bool, BotError> {
        Ok(self
            .journal
            .sticky(c.issue_number)
            .await?
            .is_some_and(|s| s.comment_id == c.id))
    }

    /// Renders the sticky comment `c` of its pull request again when someone else edited it
    /// (anyone with write access can edit the bot's comment, and the plan or run it shows must
    /// stay what tkgops wrote): on an open pull request, when its body is not the plan comment
    /// tkgops last wrote (its SHA-256 is journalled), the pull request is planned again at the
    /// next poll and the comment rewritten; on a merged one, once per `updated_at`, the run
    /// comment is republished. Writing the same body again is a no-op
    /// ([`tkgops_github::GitHub::upsert_comment`]), so this never loops.
    ///
    /// Errors: [`BotError::Store`].
    async fn rerender_sticky(&self, c: &IssueComment) -> Result<(), BotError> {
        if let Some(sha) = self.journal.merged(c.issue_number).await? {
            if self.journal.sticky_seen(c.id).await? == Some(c.updated_at) {
                return Ok(());
            }
            self.publisher.notify(&sha);
            return Ok(self.journal.set_sticky_seen(c.id, c.updated_at).await?);
        }
        let written = self
            .journal
            .sticky(c.issue_number)
            .await?
            .and_then(|s| s.body_sha256);
        let Some(written) = written else {
            return Ok(());
        };
        if written == crate::sha256_hex(c.body.as_bytes()) {
            return Ok(());
        }
        if c.body.contains(STICKY_MARKER) && !self.is_sticky(c).await? {
            // Someone else's comment carrying the marker: not ours, ignored (security rule 3).
            return Ok(());
        }
        warn!(comment = c.id, pr = c.issue_number, user = %c.user, "the plan comment was edited by someone else: writing it again");
        Ok(self.journal.forget_planned(c.issue_number).await?)
    }

    /// Checks who may run `cmd` and runs it; returns the reply.
    async fn run_command(
        &self,
        c: &IssueComment,
        cmd: Command,
        tip: &str,
    ) -> Result<String, BotError> {
        let who = &c.user;
        let dashboard = self.dashboard_issue().await?;
        if let Command::Resume(schedule) = &cmd {
            if dashboard != Some(c.issue_number) {
                return Ok(format!(
                    "@{who}: `/tkgops resume` works on the fleet dashboard issue only{}.",
                    dashboard.map(|n| format!(" (#{n})")).unwrap_or_default()
                ));
            }
            return self.command_resume(schedule.as_deref(), who).await;
        }
        let pr = match self.github.get_pull(c.issue_number).await {
            Ok(pr) => pr,
            Err(tkgops_github::GitHubError::NotFound { .. }) => {
                return Ok(format!(
                    "@{who}: `/tkgops {}` works on pull requests only.",
                    cmd.word()
                ))
            }
            Err(e) => return Err(BotError::GitHub(e.to_string())),
        };
        // Security rule 1: the policy is the default branch's.
        let Some(policy) = self.trust().load_policy().await? else {
            return Ok(format!(
                "@{who}: refused: the default branch `{}` has no valid tkgops.yaml, so nobody may run commands (fail closed).",
                self.default_branch
            ));
        };
        let approvers = self.expand_principals(&policy.approval.approvers).await?;
        let lower = who.to_lowercase();
        let is_author = !pr.author.is_empty() && pr.author.eq_ignore_ascii_case(who);
        let allowed = approvers.contains(&lower)
            || (is_author && matches!(cmd, Command::Plan | Command::Cancel));
        if !allowed {
            let authors = if matches!(cmd, Command::Plan | Command::Cancel) {
                " and the pull request's author"
            } else {
                ""
            };
            return Ok(format!(
                "@{who}: refused: only the approvers in `tkgops.yaml` on `{}` ({}){authors} may run `/tkgops {}`.",
                self.default_branch,
                policy.approval.approvers.join(", "),
                cmd.word()
            ));
        }
        match cmd {
            Command::Plan => self.command_plan(&pr, who, tip).await,
            Command::Retry => self.command_retry(&pr, who).await,
            Command::Cancel => self.command_cancel(&pr, who).await,
            Command::Resume(_) => Ok(String::new()),
        }
    }

    /// `/tkgops resume [schedule]` on the dashboard issue: approvers only.
    async fn command_resume(&self, schedule: Option<&str>, who: &str) -> Result<String, BotError> {
        let Some(policy) = self.trust().load_policy().await? else {
            return Ok(format!(
                "@{who}: refused: the default branch `{}` has no valid tkgops.yaml, so nobody may run commands (fail closed).",
                self.default_branch
            ));
        };
        let approvers = self.expand_principals(&policy.approval.approvers).await?;
        if !approvers.contains(&who.to_lowercase()) {
            return Ok(format!(
                "@{who}: refused: only the approvers in `tkgops.yaml` on `{}` ({}) may run `/tkgops resume`.",
                self.default_branch,
                policy.approval.approvers.join(", ")
            ));
        }
        if let Some(name) = schedule {
            if !policy.schedules.iter().any(|s| s.name == name) {
                return Ok(format!(
                    "@{who}: there is no schedule `{name}` in `tkgops.yaml` on `{}`.",
                    self.default_branch
                ));
            }
        }
        let lines = self
            .waves()
            .resume_applies(&policy.schedules, schedule, who, self.now())
            .await?;
        if lines.is_empty() {
            return Ok(format!(
                "@{who}: nothing to resume: no scheduled upgrade{} is halted.",
                schedule.map(|n| format!(" of `{n}`")).unwrap_or_default()
            ));
        }
        // The resumed waves continue at the next poll.
        self.wake.notify_one();
        Ok(format!(
            "@{who}: `/tkgops resume`\n\n{}",
            lines
                .iter()
                .map(|l| format!("- {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    }

    async fn command_plan(
        &self,
        pr: &PullRequest,
        who: &str,
        tip: &str,
    ) -> Result<String, BotError> {
        if !pr.open {
            return Ok(format!(
                "@{who}: this pull request is {}; only an open pull request is planned.",
                if pr.merged { "merged" } else { "closed" }
            ));
        }
        self.journal.forget_planned(pr.number).await?;
        super::pull_plan::PullPlanReconciler { cx: self.cx }
            .plan_pull(pr, tip)
            .await?;
        Ok(format!(
            "@{who}: planned again at {}: the plan comment is up to date.",
            &pr.head_sha[..pr.head_sha.len().min(7)]
        ))
    }

    /// The merge record of merged PR `pr`, if the bot handled its merge.
    async fn merge_record_of(&self, pr: &PullRequest) -> Result<Option<MergeRecord>, BotError> {
        match pr.merge_commit_sha.as_deref().filter(|_| pr.merged) {
            Some(sha) => Ok(self.journal.merge_record(&MergeSha::new(sha)).await?),
            None => Ok(None),
        }
    }

    async fn command_retry(&self, pr: &PullRequest, who: &str) -> Result<String, BotError> {
        let Some(record) = self.merge_record_of(pr).await? else {
            return Ok(format!(
                "@{who}: nothing to retry: this pull request has no runs (it is not merged, or its merge was not run)."
            ));
        };
        let mut lines = Vec::new();
        for id in &record.run_ids {
            let Some(run) = self.engine.get(id).await.map_err(store_err)? else {
                continue;
            };
            if run.state != RunState::Failed {
                continue;
            }
            let latest = self.journal.last_run(&run.cluster).await?;
            // A later run that started a step applied newer desired state: resuming this
            // older one would apply its older state over it.
            let mut later_started = false;
            if let Some(l) = latest.as_deref().filter(|l| *l != run.id) {
                later_started = self
                    .engine
                    .get(l)
                    .await
                    .map_err(store_err)?
                    .is_some_and(|r| r.steps.iter().any(|s| !s.attempts.is_empty()));
            }
            if later_started {
                lines.push(format!(
                    "- `{}` ({}): not retried: run `{}` of this cluster came after it; resuming the older run would apply an older desired state over it. Push a new change instead.",
                    run.id,
                    run.cluster,
                    latest.unwrap_or_default()
                ));
                continue;
            }
            let failed_step = run
                .steps
                .iter()
                .find(|s| s.state == tkgops_engine::StepState::Failed)
                .map(|s| s.spec.title.clone())
                .unwrap_or_default();
            // Listed as unpublished again: the final comment and status will change.
            self.journal.mark_unpublished(&record.commit).await?;
            match self
                .engine
                .retry(&run.id, &format!("retried by @{who} with `/tkgops retry`"))
                .await
            {
                Ok(_) => lines.push(format!(
                    "- `{}` ({}): retrying from step “{failed_step}”; the steps that succeeded are not run again.",
                    run.id, run.cluster
                )),
                Err(e) => lines.push(format!("- `{}` ({}): not retried: {e}", run.id, run.cluster)),
            }
        }
        self.publisher.notify(&record.commit);
        if lines.is_empty() {
            return Ok(format!(
                "@{who}: nothing to retry: no run of this pull request failed."
            ));
        }
        Ok(format!("@{who}: `/tkgops retry`\n\n{}", lines.join("\n")))
    }

    async fn command_cancel(&self, pr: &PullRequest, who: &str) -> Result<String, BotError> {
        let Some(record) = self.merge_record_of(pr).await? else {
            return Ok(format!(
                "@{who}: nothing to cancel: this pull request has no runs (it is not merged, or its merge was not run)."
            ));
        };
        let reason = format!("cancelled by @{who} with `/tkgops cancel`");
        let mut lines = Vec::new();
        for id in &record.run_ids {
            let outcome = match self.engine.cancel(id, &reason).await {
                Ok(o) => o,
                Err(tkgops_engine::EngineError::NotFound(_)) => continue,
                Err(e) => return Err(BotError::Engine(e.to_string())),
            };
            let cluster = id.split('@').next().unwrap_or(id);
            lines.push(match outcome {
                CancelOutcome::Cancelled => {
                    format!("- `{id}` ({cluster}): cancelled before it started.")
                }
                CancelOutcome::AtNextStep => format!(
                    "- `{id}` ({cluster}): stops before its next step; the step in progress finishes first."
                ),
                CancelOutcome::AlreadyFinished(s) => {
                    format!("- `{id}` ({cluster}): already {}.", format!("{s:?}").to_lowercase())
                }
            });
        }
        self.publisher.notify(&record.commit);
        if lines.is_empty() {
            return Ok(format!(
                "@{who}: nothing to cancel: this pull request has no runs."
            ));
        }
        Ok(format!("@{who}: `/tkgops cancel`\n\n{}", lines.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edited_comment_is_told_it_is_not_a_command() {
        use chrono::TimeZone;
        let created = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
        let mut c = IssueComment {
            id: 7,
            issue_number: 3,
            user: "alice".into(),
            body: "/tkgops retry".into(),
            created_at: created,
            updated_at: created,
        };
        assert!(!is_edited(&c));
        c.updated_at = created + chrono::Duration::days(2);
        assert!(is_edited(&c));
        let reply = edited_reply(&c, Some("retry"));
        assert!(reply.starts_with("@alice: this comment was edited after it was posted (2026-12-01 09:00:00 UTC → 2026-12-03 09:00:00 UTC), so it is not a command and nothing was done."), "{reply}");
        assert!(
            reply.ends_with("to run `/tkgops retry`, post it as a new comment."),
            "{reply}"
        );
    }

    #[test]
    fn commands_are_the_first_line_only() {
        assert_eq!(parse("/tkgops plan"), Some(Ok(Command::Plan)));
        assert_eq!(
            parse("\n  /tkgops retry  \nplease"),
            Some(Ok(Command::Retry))
        );
        assert_eq!(parse("/tkgops cancel"), Some(Ok(Command::Cancel)));
        assert_eq!(parse("please /tkgops plan"), None);
        assert_eq!(parse("/tkgopsplan"), None);
        assert_eq!(parse(""), None);
        assert!(parse("/tkgops apply")
            .unwrap()
            .unwrap_err()
            .contains("`apply` is not a tkgops command"));
        assert!(parse("/tkgops").unwrap().unwrap_err().contains("missing"));
        assert_eq!(parse("/tkgops resume"), Some(Ok(Command::Resume(None))));
        assert_eq!(
            parse("/tkgops resume weekly"),
            Some(Ok(Command::Resume(Some("weekly".into()))))
        );
        assert!(parse("/tkgops resume a b")
            .unwrap()
            .unwrap_err()
            .contains("at most one schedule name"));
        assert!(parse("/tkgops plan now")
            .unwrap()
            .unwrap_err()
            .contains("takes no arguments"));
    }
}

#[cfg(test)]
mod reconciler_tests {
    use super::*;
    use crate::reconcile::Key;
    use crate::testing::{example_request, Harness, EXAMPLE_POLICY};

    /// A command by someone the policy does not allow is refused in one reply keyed by the
    /// comment; the comment cursor moves up to it, and reconciling it again replies nothing.
    #[tokio::test]
    async fn a_refused_command_is_answered_once_and_moves_the_cursor() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        h.open_pull(1, "dev", &example_request());
        let c = h.comment(41, 1, "carol", "/tkgops retry");
        h.observe().await;
        h.reconcile(&Key::Command { comment_id: 41 }).await.unwrap();
        let replies = h.github.upserted(1, &reply_marker(41));
        assert_eq!(replies.len(), 1);
        assert!(
            replies[0].contains("@carol: refused: only the approvers"),
            "{}",
            replies[0]
        );
        assert!(h.cx().journal.command_answered(41).await.unwrap());
        assert_eq!(
            h.cx().journal.cursor(Cursor::Comments).await.unwrap(),
            Some(c.updated_at)
        );
        h.reconcile(&Key::Command { comment_id: 41 }).await.unwrap();
        assert_eq!(h.github.upserted(1, &reply_marker(41)).len(), 1);
    }

    /// `/tkgops plan` by an approver plans the open pull request's head again and says so.
    #[tokio::test]
    async fn plan_by_an_approver_plans_the_head_again() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        let pr = h.open_pull(1, "dev", &example_request());
        h.comment(42, 1, "alice", "/tkgops plan");
        h.observe().await;
        h.reconcile(&Key::Command { comment_id: 42 }).await.unwrap();
        assert_eq!(h.github.upserted(1, STICKY_MARKER).len(), 1);
        let reply = h.github.upserted(1, &reply_marker(42)).concat();
        assert!(
            reply.contains(&format!("@alice: planned again at {}", &pr.head_sha[..7])),
            "{reply}"
        );
    }

    /// A comment that is no command gets no reply, but the cursor moves past it; a reply GitHub
    /// refuses fails the key and leaves the command unanswered and the cursor where it was.
    #[tokio::test]
    async fn a_failed_reply_leaves_the_command_unanswered_and_the_cursor_behind() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        h.open_pull(1, "dev", &example_request());
        let chat = h.comment(50, 1, "carol", "looks good to me");
        h.comment(51, 1, "carol", "/tkgops frobnicate");
        h.observe().await;
        h.reconcile(&Key::Command { comment_id: 50 }).await.unwrap();
        assert!(h.github.upserts.lock().unwrap().is_empty());
        h.github
            .fail_comments
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(h.reconcile(&Key::Command { comment_id: 51 }).await.is_err());
        assert!(!h.cx().journal.command_answered(51).await.unwrap());
        assert_eq!(
            h.cx().journal.cursor(Cursor::Comments).await.unwrap(),
            Some(chat.updated_at)
        );
    }
}

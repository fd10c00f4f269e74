//! The sync reconciler ([`Key::Sync`]): one read of the default branch and of GitHub's pull
//! request and comment lists, kept as the observation ([`Observed`]) the other reconcilers look
//! their keys up in. It only enqueues keys; and the policy-chain reconciler
//! ([`Key::PolicyChain`]), which judges the tip after the merges and enqueues the schedules.
//!
//! Each sync:
//! 1. fetches the default branch (its trusted policy commit's `tkgops.yaml` is the policy:
//!    approvers, management clusters, rule severities; security rule 1);
//! 2. lists every pull request closed since the cursor (GitHub's own `updated_at` clock, with
//!    an overlap), however many: merges missed while the bot was down are found too. The merged
//!    ones become [`Key::Merge`] keys in the order they entered the default branch;
//! 3. lists the open pull requests into the default branch ([`Key::PullPlan`] per head SHA) and
//!    the comments since the comment cursor ([`Key::Command`]).

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use tkgops_github::PullRequest;

use super::{Key, Outcome};
use crate::context::Observed;
use crate::journal::Cursor;
use crate::scheduler::Action;
use crate::{blocking, BotError, MergeSha};

/// How far before a cursor a listing starts: GitHub's `updated_at` and `since` are second
/// granular and its lists are eventually consistent.
const CURSOR_OVERLAP_MINUTES: i64 = 5;

on_context!(
    /// The sync and policy-chain reconciler (module docs).
    Sync
);

impl Sync<'_> {
    /// Reads the default branch and GitHub's lists into a new observation and returns the keys
    /// they call for: every merge since the cursor (oldest first), the policy chain, every open
    /// pull request's head SHA and every comment since the comment cursor. Advances the
    /// closed-pulls cursor when no merge is pending, and starts the comment cursor.
    ///
    /// Errors: [`BotError`] when the default branch, the trusted policy or a list cannot be
    /// read: nothing is enqueued, and the next poll tries again.
    pub(crate) async fn reconcile(&self) -> Result<Outcome, BotError> {
        self.refresh_git_token().await?;
        let git = self.git.clone();
        let branch = self.default_branch.clone();
        let tip = blocking(move || git.fetch_branch(&branch)).await?;
        // Security rule 1: the policy is the trusted policy commit's, never the tip's.
        let trusted = self.trust().trusted_policy(&tip).await?;
        if let Some(rc) = self.load_settings(trusted.commit.as_str()).await? {
            self.executors.update_management_clusters(&rc);
        }
        let closed_cursor = self.journal.cursor(Cursor::ClosedPulls).await?;
        let since = match closed_cursor {
            Some(c) => c - Duration::minutes(CURSOR_OVERLAP_MINUTES),
            None => Utc::now() - Duration::days(1),
        };
        let closed = self
            .github
            .list_closed_pulls_since(&self.default_branch, Some(since))
            .await
            .map_err(|e| BotError::GitHub(e.to_string()))?;
        let merged: Vec<PullRequest> = self
            .in_merge_order(&tip, &closed)
            .await?
            .into_iter()
            .cloned()
            .collect();
        let open = self
            .github
            .list_open_pulls(&self.default_branch)
            .await
            .map_err(|e| BotError::GitHub(e.to_string()))?;
        let comments_cursor = self.journal.cursor(Cursor::Comments).await?;
        let comments_since =
            comments_cursor.unwrap_or_else(Utc::now) - Duration::minutes(CURSOR_OVERLAP_MINUTES);
        let comments = self
            .github
            .list_comments_since(comments_since)
            .await
            .map_err(|e| BotError::GitHub(e.to_string()))?;

        let mut keys = Vec::new();
        for (position, pr) in merged.iter().enumerate() {
            if let Some(commit) = &pr.merge_commit_sha {
                keys.push(Key::Merge {
                    position,
                    pr: pr.number,
                    commit: MergeSha::new(commit.clone()),
                });
            }
        }
        keys.push(Key::PolicyChain);
        keys.extend(open.iter().map(|pr| Key::PullPlan {
            number: pr.number,
            head: crate::HeadSha::new(pr.head_sha.clone()),
        }));
        keys.extend(comments.iter().map(|c| Key::Command { comment_id: c.id }));
        let observed = Observed {
            tip,
            now: self.now(),
            open,
            merged,
            closed_newest: closed.iter().filter_map(|p| p.updated_at).max(),
            comments: comments
                .into_iter()
                .map(|c| (c.id, c))
                .collect::<BTreeMap<_, _>>(),
            repo_config: None,
        };
        let no_merges = !keys.iter().any(|k| matches!(k, Key::Merge { .. }));
        let no_comments = observed.comments.is_empty();
        *self.observed.lock().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(observed);
        if no_merges {
            self.advance_closed_cursor().await?;
        }
        if no_comments && comments_cursor.is_none() {
            self.journal
                .set_cursor(
                    Cursor::Comments,
                    Utc::now() - Duration::minutes(CURSOR_OVERLAP_MINUTES),
                )
                .await?;
        }
        Ok(Outcome {
            action: Action::AwaitChange,
            enqueue: keys,
        })
    }

    /// Moves the closed-pulls cursor to the newest `updated_at` of the observation's closed
    /// pull requests (never back): called when every merge of the observation is handled.
    ///
    /// Errors: [`BotError::Store`].
    pub(crate) async fn advance_closed_cursor(&self) -> Result<(), BotError> {
        let cursor = self.journal.cursor(Cursor::ClosedPulls).await?;
        if let Some(n) = self
            .observed()
            .closed_newest
            .filter(|n| cursor.is_none_or(|c| *n > c))
        {
            self.journal.set_cursor(Cursor::ClosedPulls, n).await?;
        }
        Ok(())
    }

    /// The policy chain after the observation's merges ([`crate::trust`]): an untrusted change is
    /// reported, never obeyed. Keeps the trusted policy in the observation, gives the executors
    /// its management clusters, and enqueues its schedules and the dashboard.
    ///
    /// Errors: [`BotError`] when the chain or the policy cannot be read.
    pub(crate) async fn policy_chain(&self) -> Result<Outcome, BotError> {
        let tip = self.observed().tip.clone();
        let (trusted, _) = self.trust().check_policy_chain(&tip).await?;
        let repo_config = self.load_settings(trusted.commit.as_str()).await?;
        let mut keys = Vec::new();
        if let Some(rc) = &repo_config {
            self.executors.update_management_clusters(rc);
            keys.extend(
                rc.schedules
                    .iter()
                    .enumerate()
                    .map(|(position, s)| Key::Schedule {
                        position,
                        name: s.name.clone(),
                    }),
            );
            if self.drift_interval().is_some() {
                keys.push(Key::Drift);
            }
            keys.push(Key::Dashboard);
        }
        self.update_observed(|o| o.repo_config = repo_config);
        Ok(Outcome {
            action: Action::AwaitChange,
            enqueue: keys,
        })
    }

    /// The merged pull requests of `closed` in the order their merges entered the default
    /// branch at `tip` (oldest first, by first-parent ancestry), whatever order GitHub lists
    /// them in; merges not found in the first-parent history (not fetched yet, or rewritten
    /// away) come last, in listing order, and fail when handled.
    ///
    /// Errors: [`BotError::Git`] when the history cannot be read.
    async fn in_merge_order<'a>(
        &self,
        tip: &str,
        closed: &'a [PullRequest],
    ) -> Result<Vec<&'a PullRequest>, BotError> {
        let merged: Vec<&PullRequest> = closed.iter().filter(|p| p.merged).collect();
        let wanted: std::collections::BTreeSet<String> = merged
            .iter()
            .filter_map(|p| p.merge_commit_sha.clone())
            .collect();
        if wanted.is_empty() {
            return Ok(merged);
        }
        let git = self.git.clone();
        let tip = tip.to_string();
        let depth: BTreeMap<String, usize> = blocking(move || {
            // Walk until every wanted merge is found (or the history ends).
            let mut found = BTreeMap::new();
            let mut limit = 256;
            loop {
                let chain = git.first_parent_chain(&tip, None, limit)?;
                for (i, c) in chain.iter().enumerate() {
                    if wanted.contains(c) {
                        found.insert(c.clone(), i);
                    }
                }
                if found.len() == wanted.len() || chain.len() < limit || limit >= 1 << 20 {
                    return Ok(found);
                }
                limit *= 4;
            }
        })
        .await?;
        let mut ordered = merged;
        // Deeper in the history is older; unknown merges last (stable sort keeps their order).
        ordered.sort_by_key(
            |p| match p.merge_commit_sha.as_ref().and_then(|m| depth.get(m)) {
                Some(d) => (0, usize::MAX - d),
                None => (1, 0),
            },
        );
        Ok(ordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{example_request, Harness, EXAMPLE_POLICY};
    use crate::HeadSha;

    /// The sync lists and enqueues only: merges in the order they entered `main` (whatever
    /// order GitHub lists them in), the policy chain, one plan key per open head SHA, one key
    /// per comment; the policy chain then enqueues the trusted policy's schedules.
    #[tokio::test]
    async fn a_sync_enqueues_merges_in_merge_order_then_plans_and_commands() {
        let h = Harness::new(&format!(
            "{EXAMPLE_POLICY}schedules:\n  - name: weekly-patch\n    cron: \"0 2 * * SAT\"\n    window: 4h\n    selector: {{matchLabels: {{env: prod}}}}\n    target: latest-patch\n    action: propose\n"
        ))
        .await;
        let first = h.open_pull(1, "dev", &example_request());
        let second = h.open_pull(2, "dev", &[("clusters/other/README.md", "x")]);
        let third = h.open_pull(3, "dev", &[("clusters/third/README.md", "y")]);
        // #2 enters main first, then #1; GitHub lists #1 first.
        let m2 = h.merge(&second);
        let m1 = h.merge(&first);
        h.github.closed.lock().unwrap().reverse();
        h.comment(9, 3, "carol", "/tkgops plan");
        h.comment(7, 3, "carol", "looks good");

        let keys = h.observe().await;
        assert_eq!(
            keys,
            vec![
                Key::Merge {
                    position: 0,
                    pr: 2,
                    commit: MergeSha::new(m2.merge_commit_sha.clone().unwrap())
                },
                Key::Merge {
                    position: 1,
                    pr: 1,
                    commit: MergeSha::new(m1.merge_commit_sha.clone().unwrap())
                },
                Key::PolicyChain,
                Key::PullPlan {
                    number: 3,
                    head: HeadSha::new(third.head_sha.clone())
                },
                Key::Command { comment_id: 9 },
                Key::Command { comment_id: 7 },
                Key::Schedule {
                    position: 0,
                    name: "weekly-patch".into()
                },
                Key::Dashboard,
            ]
        );
        let o = h.cx().observed();
        assert_eq!(o.tip, h.main().to_string());
        assert_eq!(o.open.iter().map(|p| p.number).collect::<Vec<_>>(), [3]);
        assert!(
            o.repo_config.is_some(),
            "the policy chain keeps the trusted policy"
        );
        // Nothing was done yet: no comment, no status, no merge handled.
        assert!(h.github.upserts.lock().unwrap().is_empty());
        assert!(h.github.statuses.lock().unwrap().is_empty());
        assert_eq!(h.cx().journal.merged(1).await.unwrap(), None);
        // Merges are pending: the closed-pulls cursor stays where it was.
        assert_eq!(
            h.cx().journal.cursor(Cursor::ClosedPulls).await.unwrap(),
            None
        );
    }

    /// With no merge in the listing, the closed-pulls cursor moves to the newest closed pull
    /// request at once; a listing without comments starts the comment cursor.
    #[tokio::test]
    async fn without_merges_the_cursors_move_at_the_sync() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        let pr = h.open_pull(1, "dev", &example_request());
        let closed = tkgops_github::PullRequest {
            open: false,
            updated_at: Some(Utc::now()),
            ..pr
        };
        h.github.open.lock().unwrap().clear();
        h.github.closed.lock().unwrap().push(closed.clone());
        h.observe().await;
        assert_eq!(
            h.cx().journal.cursor(Cursor::ClosedPulls).await.unwrap(),
            closed.updated_at
        );
        assert!(h
            .cx()
            .journal
            .cursor(Cursor::Comments)
            .await
            .unwrap()
            .is_some());
    }
}

//! The trusted policy chain (security rule 1).
//!
//! The policy is `tkgops.yaml` (approvers and approval counts, rule severities, management
//! clusters and their kubeconfigs, TMC endpoints, schedules) and `CODEOWNERS`. The policy in
//! force is not the default branch's tip: it is the policy of the **trusted policy commit**,
//! the last commit whose policy files reached the default branch through a merge that met the
//! policy before it. tkgops journals it ([`crate::BotJournal::trusted_policy`]) and every
//! reader takes the policy
//! from it: plans, merges, re-plans, schedules, commands and management-cluster access.
//!
//! - At the first start the trusted policy commit is the default branch's tip, or the commit
//!   the operator pins with `trustedPolicyCommit` in the bot configuration (a new pin replaces
//!   the journalled commit once; the same pin on later starts changes nothing).
//! - A merge approved under the trusted policy (with `approval.destructiveApprovals`, since
//!   its head's policy differs from the trusted one) makes its merge commit the trusted policy
//!   commit, when the policy at the merge commit is the one its approvers saw at the head.
//! - Anything else that changes the policy on the default branch (a merge tkgops refused, a
//!   merge it never planned, a direct push, a rewritten history) is an **untrusted policy
//!   change**: tkgops keeps enforcing the trusted policy and says so, naming the commit, with a
//!   failure status `tkgops/policy` on it, a comment on its pull request when it has one, a
//!   section on the fleet dashboard issue and in `/readyz`. An approved pull request whose
//!   head carries the policy wanted repairs the chain.
//!
//! Every first-parent commit a handled merge added to the default branch is recorded in the
//! ledger ([`crate::BotJournal::ledger_entry`]): which pull request, whether it was approved.
//! The ledger names
//! the cause of an untrusted policy change and tells a re-plan which changes reached the
//! default branch through approved merges (issue 16 item 3).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tkgops_github::{CommitState, PullRequest};
use tracing::{error, info};

use crate::gitops::{MergeMethod, MergeShape, PolicyFingerprint};

use crate::{blocking, short_sha, BotError, HeadSha, MergeSha, PolicySha};

/// Commit status context of the policy chain: `failure` on a commit that changed the policy
/// without approval, `success` on a merge commit that became the trusted policy.
pub const POLICY_CONTEXT: &str = "tkgops/policy";

/// The hidden marker of the comment on a pull request whose merge changed the policy without
/// approval.
pub const UNTRUSTED_MARKER: &str = "<!-- tkgops:untrusted-policy -->";

/// How far back the default branch's first-parent history is walked to find the commit that
/// changed the policy (commits).
const HISTORY_LIMIT: usize = 10_000;

/// The trusted policy commit, as journalled ([`crate::BotJournal::trusted_policy`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustedPolicy {
    /// The commit whose `tkgops.yaml` and `CODEOWNERS` are the policy in force.
    pub commit: PolicySha,
    /// How it became trusted (first start, the operator's pin, an approved pull request).
    pub source: String,
    /// When tkgops recorded it.
    pub since: DateTime<Utc>,
    /// The `trustedPolicyCommit` of the bot configuration this record follows, if any: a
    /// different pin replaces the record once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
}

/// What tkgops knows of one first-parent commit of the default branch that a merge added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// The pull request whose merge added it.
    pub pr: u64,
    /// That merge's `merge_commit_sha`.
    pub merge: MergeSha,
    /// The default branch's tip before the merge.
    pub base: Option<String>,
    /// How it was merged.
    pub method: MergeMethod,
    /// Whether the merge met the trusted policy (tkgops executed it).
    pub approved: bool,
    /// Why it was not executed, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A policy on the default branch that tkgops does not enforce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UntrustedChange {
    /// The first commit (oldest) whose policy differs from the trusted one.
    pub commit: String,
    /// The policy files that differ from the trusted policy commit's.
    pub files: Vec<String>,
    /// How it reached the default branch, in words.
    pub how: String,
    /// The pull request whose merge brought it, if any.
    pub pr: Option<u64>,
    /// The trusted policy commit tkgops enforces instead.
    pub trusted: PolicySha,
}

impl UntrustedChange {
    /// One sentence for comments, statuses and the dashboard.
    pub fn sentence(&self) -> String {
        format!(
            "the default branch carries a policy change tkgops does not trust: commit `{}` ({}) changed {}. tkgops keeps enforcing the policy of trusted commit `{}`; a pull request approved under it repairs the chain",
            short_sha(&self.commit),
            self.how,
            self.files.join(", "),
            self.trusted.short()
        )
    }
}

/// The state of the policy chain shared with `/readyz`.
#[derive(Debug, Default)]
pub struct PolicyHealth {
    trusted: RwLock<Option<PolicySha>>,
    untrusted: RwLock<Option<UntrustedChange>>,
    untrusted_total: AtomicU64,
}

impl PolicyHealth {
    /// The trusted policy commit, once known.
    pub fn trusted(&self) -> Option<PolicySha> {
        self.trusted.read().map(|g| g.clone()).unwrap_or(None)
    }

    /// The untrusted policy change on the default branch's tip, if any.
    pub fn untrusted(&self) -> Option<UntrustedChange> {
        self.untrusted.read().map(|g| g.clone()).unwrap_or(None)
    }

    /// How many distinct untrusted policy changes this process reported (a counter: it only
    /// grows, for a metric).
    pub fn untrusted_total(&self) -> u64 {
        self.untrusted_total.load(Ordering::Relaxed)
    }

    fn set(&self, trusted: &PolicySha, untrusted: Option<UntrustedChange>) {
        if let Ok(mut g) = self.trusted.write() {
            *g = Some(trusted.clone());
        }
        if let Ok(mut g) = self.untrusted.write() {
            *g = untrusted;
        }
    }

    /// The `/readyz` detail lines: the trusted policy commit, the untrusted change (or none)
    /// and the counter.
    pub fn detail(&self) -> String {
        let trusted = self
            .trusted()
            .map_or_else(|| "not known yet".to_string(), PolicySha::into_string);
        let untrusted = match self.untrusted() {
            Some(u) => format!("commit {} ({})", u.commit, u.how),
            None => "none".into(),
        };
        format!(
            "trusted policy commit: {trusted}\nuntrusted policy change: {untrusted}\nuntrusted policy changes reported: {}\n",
            self.untrusted_total()
        )
    }
}

/// In words, how first-parent commit `sha` reached the default branch `branch`, from its
/// ledger entry: `(words, pull request)`.
fn how(entry: Option<&LedgerEntry>, branch: &str) -> (String, Option<u64>) {
    match entry {
        Some(e) if !e.approved => (
            format!(
                "merged by pull request #{}, which tkgops did not execute: {}",
                e.pr,
                e.refused.as_deref().unwrap_or("not approved")
            ),
            Some(e.pr),
        ),
        Some(e) => (
            format!(
                "merged by pull request #{} with a policy that differs from the one its approvers saw at its head",
                e.pr
            ),
            Some(e.pr),
        ),
        None => (
            format!("pushed to {branch} without a pull request tkgops planned and saw approved"),
            None,
        ),
    }
}

on_context!(
    /// The trusted policy chain's operations on the bot's [`crate::context::Context`] (`cx.trust()`): which commit's
    /// policy is trusted, and what a merge or a push does to it.
    Trust
);

impl Trust<'_> {
    /// The trusted policy commit, creating it at the first start: the bot configuration's
    /// `trustedPolicyCommit` when set (it must be a commit of the default branch's history),
    /// else `tip`. A pin different from the one the journalled record follows replaces it.
    ///
    /// Errors: [`BotError::Git`] when a pinned commit is not in the mirror, [`BotError::Store`].
    pub(crate) async fn trusted_policy(&self, tip: &str) -> Result<TrustedPolicy, BotError> {
        let current = self.journal.trusted_policy().await?;
        let pin = self.pinned_policy.clone();
        let fresh = match (&current, &pin) {
            (Some(c), Some(p)) if c.pinned.as_deref() != Some(p.as_str()) => true,
            (Some(_), _) => false,
            (None, _) => true,
        };
        let record = match (current, fresh) {
            (Some(c), false) => c,
            _ => {
                let (commit, source) = match &pin {
                    Some(p) => {
                        let git = self.git.clone();
                        let p2 = p.clone();
                        let tip2 = tip.to_string();
                        let commit = blocking(move || {
                            let c = git.resolve(&p2)?;
                            if !git.is_ancestor(&c, &tip2) {
                                return Err(crate::gitops::GitError::NotFound(format!(
                                    "trustedPolicyCommit {p2} in the default branch's history"
                                )));
                            }
                            Ok(c)
                        })
                        .await?;
                        (commit, format!("pinned by trustedPolicyCommit {p}"))
                    }
                    None => (
                        tip.to_string(),
                        "the default branch's tip at the first start".to_string(),
                    ),
                };
                let record = TrustedPolicy {
                    commit: PolicySha::new(commit),
                    source,
                    since: Utc::now(),
                    pinned: pin,
                };
                self.put_trusted(&record).await?;
                info!(commit = %record.commit, source = %record.source, "trusted policy commit set");
                record
            }
        };
        Ok(record)
    }

    /// The trusted policy commit every reader of the policy uses (the journalled one).
    ///
    /// Errors: [`BotError::Store`] when it is not journalled yet (no poll completed) or the
    /// journal cannot be read.
    pub(crate) async fn policy_commit(&self) -> Result<PolicySha, BotError> {
        self.journal
            .trusted_policy()
            .await?
            .map(|t| t.commit)
            .ok_or_else(|| BotError::Store("the trusted policy commit is not known yet".into()))
    }

    /// The trusted policy (`tkgops.yaml` of the trusted policy commit), `None` when it has
    /// none or it does not load.
    ///
    /// Errors: as [`Bot::policy_commit`], and [`BotError::Git`].
    pub(crate) async fn load_policy(
        &self,
    ) -> Result<Option<tkgops_domain::request::RepoConfig>, BotError> {
        let commit = self.policy_commit().await?;
        self.load_settings(commit.as_str()).await
    }

    async fn put_trusted(&self, record: &TrustedPolicy) -> Result<(), BotError> {
        let git = self.git.clone();
        let c = record.commit.to_string();
        blocking(move || git.pin("trusted-policy", &c)).await?;
        Ok(self.journal.set_trusted_policy(record).await?)
    }

    /// The policy fingerprint of commit `sha`.
    pub(crate) async fn fingerprint(&self, sha: &str) -> Result<PolicyFingerprint, BotError> {
        let git = self.git.clone();
        let sha = sha.to_string();
        blocking(move || git.policy_fingerprint(&sha)).await
    }

    /// Compares the default branch's `tip` with the trusted policy commit: `None` when their
    /// policies are the same, else the untrusted change, found by walking the first-parent
    /// history from the trusted commit to `tip` (the first commit whose policy differs) and
    /// named from the ledger. Remembered per (tip, trusted commit).
    ///
    /// Errors: [`BotError::Git`], [`BotError::Store`].
    pub(crate) async fn untrusted_change(
        &self,
        tip: &str,
        trusted: &TrustedPolicy,
    ) -> Result<Option<UntrustedChange>, BotError> {
        let key = (tip.to_string(), trusted.commit.to_string());
        if let Some(v) = self.policy_cache.get(&key) {
            return Ok(v);
        }
        let git = self.git.clone();
        let (t, tr) = key.clone();
        let found = blocking(move || {
            let want = git.policy_fingerprint(&tr)?;
            let at_tip = git.policy_fingerprint(&t)?;
            if want == at_tip {
                return Ok(None);
            }
            if !git.is_ancestor(&tr, &t) {
                return Ok(Some((t.clone(), want.differing(&at_tip), true)));
            }
            let chain = git.first_parent_chain(&t, Some(&tr), HISTORY_LIMIT)?;
            for c in chain.iter().rev() {
                let fp = git.policy_fingerprint(c)?;
                if fp != want {
                    return Ok(Some((c.clone(), want.differing(&fp), false)));
                }
            }
            Ok(Some((t.clone(), want.differing(&at_tip), false)))
        })
        .await?;
        let change = match found {
            None => None,
            Some((commit, files, rewritten)) => {
                let (how, pr) = if rewritten {
                    (
                        format!(
                            "the history of {} was rewritten: it no longer contains the trusted policy commit",
                            self.default_branch
                        ),
                        None,
                    )
                } else {
                    how(
                        self.journal.ledger_entry(&commit).await?.as_ref(),
                        &self.default_branch,
                    )
                };
                Some(UntrustedChange {
                    commit,
                    files,
                    how,
                    pr,
                    trusted: trusted.commit.clone(),
                })
            }
        };
        self.policy_cache.put(key, change.clone());
        Ok(change)
    }

    /// Brings the policy chain up to date at the default branch's `tip`: reads (or creates)
    /// the trusted policy commit, finds an untrusted change, publishes both to `/readyz`, and
    /// reports a new untrusted change once (failure status `tkgops/policy` on its commit, a
    /// comment on its pull request). Returns the trusted record and the untrusted change.
    ///
    /// Errors: [`BotError`] when git, the journal or GitHub fail (the report is retried at the
    /// next poll: it is recorded as reported only once GitHub accepted it).
    pub(crate) async fn check_policy_chain(
        &self,
        tip: &str,
    ) -> Result<(TrustedPolicy, Option<UntrustedChange>), BotError> {
        let trusted = self.trusted_policy(tip).await?;
        let change = self.untrusted_change(tip, &trusted).await?;
        self.policy_health.set(&trusted.commit, change.clone());
        if let Some(c) = &change {
            if let Err(e) = self.report_untrusted(c).await {
                tracing::warn!(commit = %c.commit, error = %e, "reporting the untrusted policy change failed; will retry next poll");
            }
        }
        Ok((trusted, change))
    }

    async fn report_untrusted(&self, c: &UntrustedChange) -> Result<(), BotError> {
        if self.journal.untrusted_reported(&c.commit).await? {
            return Ok(());
        }
        error!(commit = %c.commit, trusted = %c.trusted, how = %c.how, "untrusted policy change on the default branch: the trusted policy stays in force");
        let gh = |e: tkgops_github::GitHubError| BotError::GitHub(e.to_string());
        self.github
            .set_status(
                &c.commit,
                POLICY_CONTEXT,
                CommitState::Failure,
                &format!(
                    "untrusted policy change: tkgops enforces the policy of {}",
                    c.trusted.short()
                ),
                None,
            )
            .await
            .map_err(gh)?;
        if let Some(pr) = c.pr {
            let body = format!(
                "{UNTRUSTED_MARKER}\n### ⛔ tkgops: this merge changed the policy without approval\n\n{}.\n\nUntil then every plan, run, schedule and command of tkgops is judged under the trusted policy. To make a policy change take effect, open a pull request with it and have it approved with `approval.destructiveApprovals` under the trusted policy.\n",
                capitalise(&c.sentence())
            );
            self.github
                .upsert_comment(pr, UNTRUSTED_MARKER, &body)
                .await
                .map_err(gh)?;
        }
        self.policy_health
            .untrusted_total
            .fetch_add(1, Ordering::Relaxed);
        Ok(self.journal.set_untrusted_reported(&c.commit).await?)
    }

    /// Records what merge `merge` of `pr` added to the default branch in the ledger and, when
    /// it was approved as a policy change (`changes_policy`: it changed a policy file, so it
    /// needed approval.destructiveApprovals) and leaves a policy different from the trusted
    /// one, makes the merge commit the trusted policy commit, provided the policy at the merge
    /// commit is the one at the head its approvers saw (else the chain stays as it was and the
    /// next poll reports the untrusted change). Returns whether the trusted policy moved.
    ///
    /// Errors: [`BotError::Git`], [`BotError::Store`], [`BotError::GitHub`] (the status).
    pub(crate) async fn record_merge(
        &self,
        pr: &PullRequest,
        merge: &MergeSha,
        shape: &MergeShape,
        refused: Option<&str>,
        changes_policy: bool,
    ) -> Result<bool, BotError> {
        let entry = LedgerEntry {
            pr: pr.number,
            merge: merge.clone(),
            base: shape.base.clone(),
            method: shape.method,
            approved: refused.is_none(),
            refused: refused.map(str::to_string),
        };
        self.journal.put_ledger(&entry, &shape.commits).await?;
        if refused.is_some() || !changes_policy {
            return Ok(false);
        }
        let trusted =
            self.journal.trusted_policy().await?.ok_or_else(|| {
                BotError::Store("the trusted policy commit is not journalled".into())
            })?;
        let (want, at_merge, at_head) = (
            self.fingerprint(trusted.commit.as_str()).await?,
            self.fingerprint(merge.as_str()).await?,
            self.fingerprint(&pr.head_sha).await?,
        );
        if at_merge == want || at_merge != at_head {
            return Ok(false);
        }
        let record = TrustedPolicy {
            commit: PolicySha::new(merge.as_str()),
            source: format!(
                "pull request #{} approved under the policy before it",
                pr.number
            ),
            since: Utc::now(),
            pinned: trusted.pinned,
        };
        self.put_trusted(&record).await?;
        info!(pr = pr.number, commit = %merge, "trusted policy commit moved");
        self.github
            .set_status(
                merge.as_str(),
                POLICY_CONTEXT,
                CommitState::Success,
                "trusted policy: approved under the policy before it",
                None,
            )
            .await
            .map_err(|e| BotError::GitHub(e.to_string()))?;
        Ok(true)
    }

    /// The policy notes of the plan `p` of a pull request `base..head` (`base` the merge
    /// base with the default branch) under the trusted policy commit `trusted`, given the
    /// untrusted change on the default branch, if any: a change of a policy file the domain
    /// does not see (`CODEOWNERS`) sets `changes_policy`; a policy change while the chain is
    /// broken is told what its merge does to the chain.
    ///
    /// Errors: [`BotError::Git`] when a commit cannot be read.
    pub(crate) async fn policy_notes(
        &self,
        p: &mut tkgops_domain::workflow::Plan,
        base: &str,
        head: &HeadSha,
        trusted: &PolicySha,
        untrusted: Option<&UntrustedChange>,
    ) -> Result<(), BotError> {
        if let Some(u) = untrusted {
            p.notes.push(format!("⛔ {}.", capitalise(&u.sentence())));
        }
        let at_head = self.fingerprint(head.as_str()).await?;
        let changed = self.fingerprint(base).await?.differing(&at_head);
        if changed.is_empty() {
            return Ok(());
        }
        p.changes_policy = true;
        if changed.iter().any(|f| f != "tkgops.yaml") {
            p.notes.push(format!(
                "This change edits {}, part of the policy: it is judged under the trusted policy and needs approval.destructiveApprovals.",
                changed.join(", ")
            ));
        }
        if untrusted.is_some() {
            let differing = self
                .fingerprint(trusted.as_str())
                .await?
                .differing(&at_head);
            p.notes.push(if differing.is_empty() {
                format!(
                    "Merged with approval.destructiveApprovals, this change puts back the policy of trusted commit `{}` and repairs the chain.",
                    trusted.short()
                )
            } else {
                format!(
                    "Merged with approval.destructiveApprovals, this head's policy ({} differing from trusted commit `{}`) becomes the trusted policy.",
                    differing.join(", "),
                    trusted.short()
                )
            });
        }
        Ok(())
    }
}

/// `s` with its first letter in upper case.
pub(crate) fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

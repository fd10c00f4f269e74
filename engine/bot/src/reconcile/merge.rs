//! The merge reconciler ([`super::Key::Merge`], keyed by merge commit): a merged pull request
//! the bot planned is planned again as base..merge under the trusted policy, judged (base
//! branch, fork, approvals, CODEOWNERS: [`crate::approval`]), ledgered, and its approved cluster
//! plans submitted to the engine, each pinned to the merge commit (security rule 2). Fork PRs are
//! never executed (rule 3), destructive intents need `approval.destructiveApprovals` (rule 6).
//! The publisher then reports on the merge commit.

use tkgops_domain::files::TreeReader;
use tracing::info;

use crate::journal::PlanDigests;
use crate::scheduler::Action;
use crate::{
    approval, blocking, gitops, has_allow_delete, not_run, pr_origin, refuse_deletes_without_label,
    short_sha, trust, BotError, HeadSha, MergeRecord, MergeSha, NotRun, PolicySha,
};
use tkgops_domain::request::RepoConfig;
use tkgops_domain::workflow::markdown;
use tkgops_domain::workflow::Plan;
use tkgops_engine::RunRequest;
use tkgops_github::PullRequest;

on_context!(
    /// The merge reconciler (module docs).
    MergeReconciler
);

impl MergeReconciler<'_> {
    /// Reconciles the `position`-th merge of the observation, pull request `pr`: handled once
    /// ([`Self::handle_merged`]). The queue runs merges in position order and holds the later
    /// ones back while one fails, so the last merge of the observation succeeding means all
    /// did: the closed-pulls cursor then moves past the observation.
    ///
    /// Errors: as [`Self::handle_merged`]; the merge and the merges after it are tried again.
    pub(crate) async fn reconcile(&self, position: usize, pr: u64) -> Result<Action, BotError> {
        let o = self.observed();
        let Some(pull) = o.merged.get(position).filter(|p| p.number == pr) else {
            // From an older observation: the current one has its own key for it.
            return Ok(Action::AwaitChange);
        };
        self.handle_merged(pull).await?;
        let last = o.merged.iter().rposition(|p| p.merge_commit_sha.is_some());
        if last == Some(position) {
            super::sync::Sync { cx: self.cx }
                .advance_closed_cursor()
                .await?;
        }
        Ok(Action::AwaitChange)
    }

    /// Handles merged pull request `pr` once (the journal remembers it): a pull request this
    /// bot never planned is left alone; the record pull request of a scheduled apply is only
    /// ledgered ([`Self::record_applied_merge`]); any other merge is planned again as
    /// base..merge under the trusted policy, judged (base branch, fork, approvals), ledgered,
    /// and its approved cluster plans submitted ([`Self::submit_merge_runs`]). The publisher
    /// then reports on the merge commit.
    ///
    /// Errors: [`BotError::GitHub`] when the merge commit is not on the default branch yet or
    /// GitHub fails, [`BotError::Git`], [`BotError::Store`], [`BotError::Render`],
    /// [`BotError::Engine`]; the merge is tried again at the next poll.
    async fn handle_merged(&self, pr: &PullRequest) -> Result<(), BotError> {
        let Some(merge_sha) = pr.merge_commit_sha.clone().map(MergeSha::new) else {
            return Ok(());
        };
        if self.journal.merged(pr.number).await?.is_some() {
            return Ok(());
        }
        let head = HeadSha::new(pr.head_sha.clone());
        // Only PRs this bot planned are executed: a bot started on an old repository must not
        // replay history. A plan of the head journalled its digests before its status.
        let approved = self.journal.approved_digests(pr.number, &head).await?;
        if approved.is_none() && self.journal.planned(pr.number).await?.is_none() {
            return Ok(());
        }
        // The record pull request of a scheduled apply, merged at a wave commit: its upgrades
        // already ran (`applied_record`).
        if self.waves().applied_record(pr).await?.is_some() {
            return self.record_applied_merge(pr, &merge_sha).await;
        }
        let shape = self.merge_shape(pr, &merge_sha, &head).await?;
        // Security rule 1: the base of a merge is the default branch's tip just before it,
        // never a commit of the pull request (a rebase merge's first commits are judged with
        // the rest), and the policy is the trusted policy commit's, never the merged change's.
        let base = shape.base.clone().unwrap_or_else(|| merge_sha.to_string());
        let trusted = self.trust().trusted_policy(merge_sha.as_str()).await?;
        let policy = self.load_settings(trusted.commit.as_str()).await?;
        let p = self
            .plan_merge(pr, &base, &merge_sha, &trusted.commit)
            .await?;
        let plan_md = markdown::render_plan(&p, &self.catalog, false).map_err(BotError::Render)?;

        let refused = if pr.base_ref != self.default_branch {
            Some(format!(
                "the pull request targets {}, not the default branch {}",
                pr.base_ref, self.default_branch
            ))
        } else if self.is_fork(pr) {
            Some("the pull request comes from a fork (or its head repository was deleted); fork PRs are never executed".to_string())
        } else {
            self.check_approvals(pr, &p, policy.as_ref(), &trusted.commit, &base, &merge_sha)
                .await?
        };
        let mut notes = Vec::new();
        if shape.method == gitops::MergeMethod::Rebase {
            notes.push(format!(
                "Rebase merge of {} commits, `{}..{}`: judged and run as one change under the policy before it.",
                shape.commits.len(),
                short_sha(&base),
                merge_sha.short()
            ));
        }
        if self
            .trust()
            .record_merge(pr, &merge_sha, &shape, refused.as_deref(), p.changes_policy)
            .await?
        {
            notes.push(format!(
                "This merge changed the policy with the approvals the trusted policy requires: its `tkgops.yaml` and `CODEOWNERS` are now the trusted policy (commit `{}`).",
                merge_sha.short()
            ));
            if let Some(rc) = self.load_settings(merge_sha.as_str()).await? {
                self.executors.update_management_clusters(&rc);
            }
        }
        let mut record = MergeRecord {
            pr: pr.number,
            commit: merge_sha.clone(),
            run_ids: Vec::new(),
            not_run: not_run(&p),
            plan_markdown: plan_md,
            refused: refused.clone(),
            changed_since_approval: Vec::new(),
            marker: None,
            notes,
        };
        if refused.is_none() {
            let approved = approved.unwrap_or_default();
            self.submit_merge_runs(pr, &head, &p, &approved, &mut record)
                .await?;
        }
        self.journal.put_merge_record(&record).await?;
        self.journal.set_merged(pr.number, &merge_sha).await?;
        info!(pr = pr.number, merge = %merge_sha, runs = record.run_ids.len(), refused = ?record.refused, "merge handled");
        // The publisher is the only writer of run comments: a write retried here could land
        // after a newer one and show a stale state.
        self.publisher.notify(&merge_sha);
        Ok(())
    }

    /// Handles the merge `merge` of the record pull request `pr` of a scheduled apply: its
    /// wave commits already ran under a schedule of the trusted policy, so the merge is
    /// ledgered as approved content for later re-plans (never a policy change: the policy chain
    /// judges the tip) and marked handled; nothing runs.
    ///
    /// Errors: [`BotError::Git`] when the merge's first parent cannot be read,
    /// [`BotError::Store`].
    async fn record_applied_merge(
        &self,
        pr: &PullRequest,
        merge: &MergeSha,
    ) -> Result<(), BotError> {
        info!(
            pr = pr.number,
            "record pull request merged: its upgrades already ran"
        );
        let git = self.git.clone();
        let m = merge.to_string();
        let base = blocking(move || git.first_parent(&m)).await?;
        self.journal
            .put_ledger(
                &trust::LedgerEntry {
                    pr: pr.number,
                    merge: merge.clone(),
                    base,
                    method: gitops::MergeMethod::Merge,
                    approved: true,
                    refused: None,
                },
                &[merge.to_string()],
            )
            .await?;
        Ok(self.journal.set_merged(pr.number, merge).await?)
    }

    /// How `pr` was merged as `merge` ([`ConfigRepo::merge_shape`]), after fetching the default
    /// branch (and the pull request's head `head` when the mirror lacks it: its own commits
    /// tell a rebase from a squash).
    ///
    /// Errors: [`BotError::GitHub`] when `merge` is not on the default branch yet (the next
    /// poll tries again), [`BotError::Git`].
    async fn merge_shape(
        &self,
        pr: &PullRequest,
        merge: &MergeSha,
        head: &HeadSha,
    ) -> Result<gitops::MergeShape, BotError> {
        let git = self.git.clone();
        let branch = self.default_branch.clone();
        let (m, number, h) = (merge.clone(), pr.number, head.clone());
        let shape = blocking(move || {
            let tip = git.fetch_branch(&branch)?;
            if !git.is_ancestor(m.as_str(), &tip) {
                return Ok(None);
            }
            if !git.has_commit(h.as_str()) {
                git.fetch_pull_head(number)?;
            }
            git.merge_shape(&m, &h).map(Some)
        })
        .await?;
        shape.ok_or_else(|| {
            BotError::GitHub(format!(
                "merge commit {merge} is not on {} yet",
                self.default_branch
            ))
        })
    }

    /// The plan of merged `pr`: `base..merge` under the trusted policy commit `policy`, marked
    /// as a policy change when a policy file (`tkgops.yaml`, `CODEOWNERS`) differs between
    /// `base` and `merge` (it then needs `approval.destructiveApprovals`), with its deletes
    /// blocked when `pr` lacks the label [`ALLOW_DELETE_LABEL`].
    ///
    /// Errors: [`BotError::Git`], [`BotError::Store`].
    async fn plan_merge(
        &self,
        pr: &PullRequest,
        base: &str,
        merge: &MergeSha,
        policy: &PolicySha,
    ) -> Result<Plan, BotError> {
        let mut p = self
            .compute_plan(base.to_string(), merge.to_string(), policy)
            .await?;
        if self.trust().fingerprint(base).await? != self.trust().fingerprint(merge.as_str()).await?
        {
            p.changes_policy = true;
        }
        if !has_allow_delete(pr) {
            refuse_deletes_without_label(&mut p);
        }
        Ok(p)
    }

    /// Submits one run per executable cluster plan of `p` (the plan of an accepted merge of
    /// `pr`, head `head`), pinned to the merge commit, adding the run ids to `record`.
    /// Security rule 2: a cluster plan whose digest is not the one `approved` for the head
    /// does not run; it is listed in `record` as changed since the approval, with why.
    ///
    /// Errors: [`BotError::Store`] when the journal cannot be written,
    /// [`BotError::Engine`] when the engine refuses a run.
    async fn submit_merge_runs(
        &self,
        pr: &PullRequest,
        head: &HeadSha,
        p: &Plan,
        approved: &PlanDigests,
        record: &mut MergeRecord,
    ) -> Result<(), BotError> {
        let merge_sha = record.commit.clone();
        for cp in p.executable() {
            let workflow = cp.workflow.as_deref();
            if approved.get(&cp.cluster, workflow) != Some(cp.digest().as_str()) {
                record.changed_since_approval.push(cp.cluster.clone());
                let why = if approved.contains(&cp.cluster, workflow) {
                    "its plan at the merge commit differs from the plan approved for head"
                } else {
                    "no plan of it was posted and approved for head"
                };
                record.not_run.push(NotRun {
                    cluster: cp.cluster.clone(),
                    intent: cp.intent.label(),
                    reason: format!(
                        "not run: {why} {} (the default branch moved, or the change was pushed after the plan). Open a new pull request with the change to plan and approve it again.",
                        head.short()
                    ),
                });
                continue;
            }
            let id = format!(
                "{}@{}#{}",
                cp.cluster,
                &merge_sha.as_str()[..merge_sha.as_str().len().min(12)],
                cp.workflow.clone().unwrap_or_default()
            );
            let req = RunRequest {
                id: id.clone(),
                cluster: cp.cluster.clone(),
                workflow: cp.workflow.clone().unwrap_or_default(),
                commit_sha: merge_sha.to_string(),
                origin: Some(pr_origin(pr.number)),
                steps: cp.steps.clone(),
            };
            record.run_ids.push(id.clone());
            let span = tracing::info_span!("submit", run_id = %id, cluster = %cp.cluster);
            let submit = async {
                // Persist the merge record before the run exists so the publisher can render it.
                self.journal.put_merge_record(record).await?;
                self.journal.set_last_run(&cp.cluster, &id).await?;
                self.engine
                    .submit(req)
                    .await
                    .map_err(|e| BotError::Engine(e.to_string()))?;
                info!("run submitted");
                Ok::<(), BotError>(())
            };
            tracing::Instrument::instrument(submit, span).await?;
        }
        Ok(())
    }

    /// `None` when the approval policy is met, else why not ([`approval`]). The policy is the
    /// trusted policy commit's (`policy`): `tkgops.yaml`'s approvers and counts (`repo`), and
    /// its `CODEOWNERS` when present, over the paths `base..merge` changed. Reads the reviews,
    /// their stamps and the members of the teams named, then asks the pure rules.
    ///
    /// Errors: [`BotError::GitHub`] when the reviews or a team cannot be read,
    /// [`BotError::Store`], [`BotError::Git`].
    async fn check_approvals(
        &self,
        pr: &PullRequest,
        p: &Plan,
        repo: Option<&RepoConfig>,
        policy: &PolicySha,
        base: &str,
        merge: &MergeSha,
    ) -> Result<Option<String>, BotError> {
        let Some(repo) = repo else {
            return Ok(Some(approval::NO_POLICY.into()));
        };
        let reviews = self
            .github
            .list_reviews(pr.number)
            .await
            .map_err(|e| BotError::GitHub(e.to_string()))?;
        // The plan the merge runs is the one of the head's current digests: an approval stamped
        // under another digest was given for an earlier plan of the same head.
        let current = self
            .journal
            .approved_digests(pr.number, &HeadSha::new(pr.head_sha.clone()))
            .await?
            .map(|d| d.hash());
        let mut stamped = Vec::new();
        for r in approval::approval_candidates(&reviews, &pr.author, &pr.head_sha) {
            let stamp = self.journal.review_stamp(pr.number, r.review_id).await?;
            stamped.push((r, stamp));
        }
        let approved = approval::counted_approvals(&stamped, current.as_deref());
        let mut teams = approval::TeamMembers::default();
        self.fetch_teams(&repo.approval.approvers, &mut teams)
            .await?;
        let approvers = approval::expand_principals(&repo.approval.approvers, &teams);
        let weight = approval::ChangeWeight::of(p);
        if let Some(why) =
            approval::approvers_refusal(&approved, &approvers, &repo.approval, weight)
        {
            return Ok(Some(why));
        }
        // CODEOWNERS of the trusted policy: every changed path with owners needs one of them.
        let git = self.git.clone();
        let (policy, base, merge) = (policy.to_string(), base.to_string(), merge.to_string());
        let (codeowners, changed) = blocking(move || {
            let tree = git.tree(&policy)?;
            let text = tkgops_domain::request::codeowners::CODEOWNERS_PATHS
                .iter()
                .find_map(|path| tree.read(path));
            let changed = match &text {
                Some(_) => git.changed_paths_all(&base, &merge)?,
                None => Vec::new(),
            };
            Ok((text, changed))
        })
        .await?;
        let Some(text) = codeowners else {
            return Ok(None);
        };
        let owned = approval::OwnedPaths::of(&String::from_utf8_lossy(&text), &changed);
        self.fetch_teams(owned.principals(), &mut teams).await?;
        Ok(owned.refusal(&approved, &teams))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::Key;
    use crate::testing::{example_request, Harness, EXAMPLE_POLICY};

    fn merge_key(position: usize, pr: &PullRequest) -> Key {
        Key::Merge {
            position,
            pr: pr.number,
            commit: MergeSha::new(pr.merge_commit_sha.clone().unwrap()),
        }
    }

    /// The runs pull request #1 caused.
    async fn runs(h: &Harness) -> Vec<tkgops_engine::store::RunRecord> {
        h.cx()
            .store
            .list_runs_by_origin(&pr_origin(1))
            .await
            .unwrap()
    }

    async fn plan(h: &Harness, pr: &PullRequest) {
        h.observe().await;
        h.reconcile(&Key::PullPlan {
            number: pr.number,
            head: HeadSha::new(pr.head_sha.clone()),
        })
        .await
        .unwrap();
    }

    /// A merge of a pull request the bot never planned is left alone: no record, no run (a
    /// bot started on an old repository never replays its history).
    #[tokio::test]
    async fn a_merge_the_bot_never_planned_is_left_alone() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        let pr = h.open_pull(1, "dev", &example_request());
        let merged = h.merge(&pr);
        h.observe().await;
        h.reconcile(&merge_key(0, &merged)).await.unwrap();
        assert_eq!(h.cx().journal.merged(1).await.unwrap(), None);
        assert!(runs(&h).await.is_empty());
    }

    /// A planned merge without the approvals the trusted policy requires is refused: it is
    /// recorded as handled with the reason, runs nothing, and the closed-pulls cursor moves.
    #[tokio::test]
    async fn an_unapproved_merge_is_refused_and_runs_nothing() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        let pr = h.open_pull(1, "dev", &example_request());
        plan(&h, &pr).await;
        let merged = h.merge(&pr);
        h.observe().await;
        h.reconcile(&merge_key(0, &merged)).await.unwrap();
        let sha = MergeSha::new(merged.merge_commit_sha.clone().unwrap());
        assert_eq!(h.cx().journal.merged(1).await.unwrap(), Some(sha.clone()));
        let record = h.cx().journal.merge_record(&sha).await.unwrap().unwrap();
        let why = record.refused.expect("refused");
        assert!(why.contains("approv"), "{why}");
        assert!(record.run_ids.is_empty());
        assert!(runs(&h).await.is_empty());
        assert!(h
            .cx()
            .journal
            .cursor(crate::journal::Cursor::ClosedPulls)
            .await
            .unwrap()
            .is_some());
    }

    /// An approved merge submits its cluster's run, pinned to the merge commit, under a
    /// deterministic id; reconciling the key again submits nothing more.
    #[tokio::test]
    async fn an_approved_merge_runs_its_cluster_pinned_to_the_merge_commit() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        let pr = h.open_pull(1, "dev", &example_request());
        plan(&h, &pr).await;
        h.approve(&pr, "alice");
        let merged = h.merge(&pr);
        h.observe().await;
        h.reconcile(&merge_key(0, &merged)).await.unwrap();
        let sha = merged.merge_commit_sha.clone().unwrap();
        let record = h
            .cx()
            .journal
            .merge_record(&MergeSha::new(sha.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.refused, None, "{:?}", record.not_run);
        assert_eq!(
            record.run_ids,
            vec![format!("team-a-prod@{}#create-cluster", &sha[..12])]
        );
        let submitted = runs(&h).await;
        assert_eq!(submitted.len(), 1);
        assert_eq!(submitted[0].commit_sha, sha);
        assert_eq!(submitted[0].origin.as_deref(), Some("github:pr/1"));
        h.reconcile(&merge_key(0, &merged)).await.unwrap();
        assert_eq!(runs(&h).await.len(), 1);
    }

    /// A key from an older observation (its position now names another pull request) is
    /// done without handling anything.
    #[tokio::test]
    async fn a_key_whose_position_names_another_merge_is_done() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        let pr = h.open_pull(1, "dev", &example_request());
        plan(&h, &pr).await;
        let merged = h.merge(&pr);
        h.observe().await;
        h.reconcile(&merge_key(1, &merged)).await.unwrap();
        assert_eq!(h.cx().journal.merged(1).await.unwrap(), None);
    }
}

//! The pull request plan reconciler ([`super::Key::PullPlan`], keyed by number and head SHA):
//! plans `merge-base..head` of an open pull request without credentials, under the trusted
//! policy, upserts the sticky comment (or a summary and one details comment per cluster) and
//! sets commit status `tkgops/plan`. Approvals given under an earlier plan of the same head are
//! stamped stale (security rule 8).

use std::collections::BTreeMap;

use tracing::info;

use crate::journal::{PlanDigests, PlannedAs, StickyComment};
use crate::scheduler::Action;
use crate::{
    approval, blocking, has_allow_delete, refuse_deletes_without_label, sha256_hex, BotError,
    HeadSha, PLAN_CONTEXT,
};
use tkgops_domain::workflow::markdown::{self, STICKY_MARKER};
use tkgops_domain::workflow::Plan;
use tkgops_github::{CommitState, PullRequest};

on_context!(
    /// The pull request plan reconciler (module docs).
    PullPlanReconciler
);

impl PullPlanReconciler<'_> {
    /// Plans head `head` of open pull request `number` as the observation has it
    /// ([`Self::plan_pull`]); a key whose pull request is closed or has moved on to another
    /// head is done (the observation has the key of the new head).
    ///
    /// Errors: as [`Self::plan_pull`]; the key is tried again.
    pub(crate) async fn reconcile(&self, number: u64, head: &HeadSha) -> Result<Action, BotError> {
        let o = self.observed();
        let Some(pr) = o
            .open
            .iter()
            .find(|p| p.number == number && p.head_sha == head.as_str())
        else {
            return Ok(Action::AwaitChange);
        };
        self.plan_pull(pr, &o.tip).await?;
        Ok(Action::AwaitChange)
    }

    pub(crate) async fn plan_pull(&self, pr: &PullRequest, tip: &str) -> Result<(), BotError> {
        let planned = self.journal.planned(pr.number).await?;
        let allow_delete = has_allow_delete(pr);
        let trusted = self
            .policy_health
            .trusted()
            .ok_or_else(|| BotError::Store("the trusted policy commit is not known yet".into()))?;
        let untrusted = self.policy_health.untrusted();
        // The plan depends on the head SHA, the allow-delete label and the policy chain (the
        // trusted policy commit and an untrusted change the plan warns of).
        let planned_as = |head: &HeadSha| PlannedAs {
            head: head.clone(),
            allow_delete,
            policy: trusted.clone(),
            untrusted: untrusted.as_ref().map(|u| u.commit.clone()),
        };
        let pr_head = HeadSha::new(pr.head_sha.clone());
        if planned.as_ref() == Some(&planned_as(&pr_head)) {
            return Ok(());
        }
        if let Some((schedule, fire)) = self.waves().applied_record(pr).await? {
            let body = format!(
                "{STICKY_MARKER}\n### tkgops: record of the scheduled upgrade `{schedule}` (fire {})\n\nHead `{}` is a wave commit tkgops pushed and applied itself: it is not planned again, and merging this pull request changes no cluster. The step tables of each wave's runs follow; progress and halts are on the fleet dashboard issue. A commit pushed on top of it is planned like any change.\n",
                fire.format("%Y-%m-%d %H:%M UTC"),
                &pr.head_sha[..pr.head_sha.len().min(7)]
            );
            let gh = |e: tkgops_github::GitHubError| BotError::GitHub(e.to_string());
            self.github
                .upsert_comment(pr.number, STICKY_MARKER, &body)
                .await
                .map_err(gh)?;
            self.github
                .set_status(
                    &pr.head_sha,
                    PLAN_CONTEXT,
                    CommitState::Success,
                    "applied by the schedule; merging changes no cluster",
                    None,
                )
                .await
                .map_err(gh)?;
            self.journal
                .set_planned(pr.number, &planned_as(&pr_head))
                .await?;
            return Ok(());
        }
        let git = self.git.clone();
        let number = pr.number;
        let head = HeadSha::new(blocking(move || git.fetch_pull_head(number)).await?);
        let git = self.git.clone();
        let (t, h) = (tip.to_string(), head.to_string());
        let base = blocking(move || git.merge_base(&t, &h)).await?;
        let base_sha = base.clone();
        let mut p = self.compute_plan(base, head.to_string(), &trusted).await?;
        self.trust()
            .policy_notes(&mut p, &base_sha, &head, &trusted, untrusted.as_ref())
            .await?;
        if self.is_fork(pr) {
            p.notes.push("This pull request comes from a fork: it is planned, but never executed (security rule 3).".into());
        }
        if !allow_delete {
            refuse_deletes_without_label(&mut p);
        }
        // Approvals bind to the plan they were given under: a re-plan of the same head whose
        // digest changed makes the approvals given before it stale (security rule 8).
        let digests = PlanDigests(p.digests());
        if let Some(old) = self
            .journal
            .approved_digests(pr.number, &head)
            .await?
            .filter(|old| *old != digests)
        {
            let stale = self.stamp_approvals(pr.number, &head, &old).await?;
            if stale > 0 {
                p.notes.push(format!(
                    "⚠️ The plan for head `{}` changed since it was last posted: the {stale} approval(s) given for the earlier plan no longer count. Approve this plan again.",
                    head.short()
                ));
            }
        }
        self.post_plan(pr.number, &p).await?;
        let errors = p
            .all_findings()
            .iter()
            .filter(|f| f.severity == tkgops_domain::request::Severity::Error)
            .count();
        let (state, desc) = if errors > 0 {
            (
                CommitState::Failure,
                format!("{errors} validation error(s): see the tkgops comment"),
            )
        } else {
            let ready = p.executable().count();
            (
                CommitState::Success,
                format!(
                    "{} cluster change(s) planned, {ready} will run after merge",
                    p.clusters.len()
                ),
            )
        };
        // What this head SHA will run, so that the merge runs exactly what was approved;
        // journalled before the status says the plan is there (a bot stopped right after the
        // status still knows the plan when the pull request is merged).
        self.journal
            .set_approved_digests(pr.number, &head, &digests)
            .await?;
        self.github
            .set_status(head.as_str(), PLAN_CONTEXT, state, &desc, None)
            .await
            .map_err(|e| BotError::GitHub(e.to_string()))?;
        self.journal
            .set_planned(pr.number, &planned_as(&head))
            .await?;
        info!(pr = pr.number, head = %head, errors, "planned");
        Ok(())
    }

    /// Posts the plan of PR `number`: one sticky comment when it fits
    /// ([`markdown::INLINE_PLAN_LIMIT`]); else the summary in the sticky comment, linking one
    /// details comment per cluster, each upserted by its own marker. Details comments of an
    /// earlier head that this plan no longer has are marked superseded (never left stale).
    ///
    /// Errors: [`BotError::Render`], [`BotError::GitHub`], [`BotError::Store`].
    async fn post_plan(&self, number: u64, p: &Plan) -> Result<(), BotError> {
        let gh = |e: tkgops_github::GitHubError| BotError::GitHub(e.to_string());
        let before = self.journal.plan_details(number).await?;
        // The last drift scan's note on the clusters this plan touches (plans read no live
        // state themselves: no credentials).
        let touched: std::collections::BTreeSet<String> =
            p.clusters.iter().map(|c| c.cluster.clone()).collect();
        let note = super::drift::drift_note(&self.journal.drifts().await?, &touched);
        let inline =
            markdown::render_plan(p, &self.catalog, true).map_err(BotError::Render)? + &note;
        let mut posted = Vec::new();
        let written;
        let sticky_id = if inline.chars().count() <= markdown::INLINE_PLAN_LIMIT {
            written = inline.clone();
            self.github
                .upsert_comment(number, STICKY_MARKER, &inline)
                .await
                .map_err(gh)?
        } else {
            let details =
                markdown::render_plan_details(p, &self.catalog).map_err(BotError::Render)?;
            // The summary first, so that it stays above its details on a new pull request.
            let mut anchors = BTreeMap::new();
            let summary = markdown::render_plan_summary(p, &self.catalog, &anchors)
                .map_err(BotError::Render)?;
            self.github
                .upsert_comment(number, STICKY_MARKER, &summary)
                .await
                .map_err(gh)?;
            for d in &details {
                let id = self
                    .github
                    .upsert_comment(number, &d.marker, &d.body)
                    .await
                    .map_err(gh)?;
                anchors.insert(d.cluster.clone(), format!("#issuecomment-{id}"));
                posted.push(d.cluster.clone());
            }
            let summary = markdown::render_plan_summary(p, &self.catalog, &anchors)
                .map_err(BotError::Render)?
                + &note;
            written = summary.clone();
            self.github
                .upsert_comment(number, STICKY_MARKER, &summary)
                .await
                .map_err(gh)?
        };
        // Which comment is the sticky one, so an edit that removed its marker is still seen
        // (`commands::rerender_sticky`), and what it says.
        self.journal
            .set_sticky(
                number,
                &StickyComment {
                    comment_id: sticky_id,
                    body_sha256: Some(sha256_hex(written.as_bytes())),
                },
            )
            .await?;
        for gone in before.iter().filter(|c| !posted.contains(c)) {
            let marker = markdown::detail_marker(gone);
            let body = format!(
                "{marker}\n_Superseded: the plan for head `{}` has no details for `{gone}`; see the plan comment._\n",
                &p.head_sha[..p.head_sha.len().min(7)]
            );
            self.github
                .upsert_comment(number, &marker, &body)
                .await
                .map_err(gh)?;
        }
        if before != posted {
            self.journal.set_plan_details(number, &posted).await?;
        }
        Ok(())
    }

    /// Stamps every `APPROVED` review of PR `number` on `head` that has no stamp yet with the
    /// hash of `digests`, the plan it was given under (the plan posted before a re-plan); returns
    /// how many approvals on `head` carry a stamp (all of them are stale for the new plan).
    /// Which reviews: [`approval::stamp_targets`].
    ///
    /// Errors: [`BotError::GitHub`] when the reviews cannot be listed, [`BotError::Store`].
    async fn stamp_approvals(
        &self,
        number: u64,
        head: &HeadSha,
        digests: &PlanDigests,
    ) -> Result<usize, BotError> {
        let reviews = self
            .github
            .list_reviews(number)
            .await
            .map_err(|e| BotError::GitHub(e.to_string()))?;
        let hash = digests.hash();
        let targets = approval::stamp_targets(&reviews, head.as_str());
        for &id in &targets {
            if self.journal.review_stamp(number, id).await?.is_none() {
                self.journal.set_review_stamp(number, id, &hash).await?;
            }
        }
        Ok(targets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::Key;
    use crate::testing::{example_request, Harness, EXAMPLE_POLICY};

    fn key(pr: &PullRequest) -> Key {
        Key::PullPlan {
            number: pr.number,
            head: HeadSha::new(pr.head_sha.clone()),
        }
    }

    /// A head SHA is planned once: the sticky comment names the cluster, the `tkgops/plan`
    /// status is set on the head, and reconciling the same key again writes nothing.
    #[tokio::test]
    async fn a_head_is_planned_once_with_its_sticky_comment_and_status() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        let pr = h.open_pull(1, "dev", &example_request());
        h.observe().await;
        h.reconcile(&key(&pr)).await.unwrap();
        let sticky = h.github.upserted(1, STICKY_MARKER);
        assert_eq!(sticky.len(), 1);
        assert!(sticky[0].contains("team-a-prod"), "{}", sticky[0]);
        let statuses = h.github.statuses_of(&pr.head_sha, PLAN_CONTEXT);
        assert_eq!(statuses.len(), 1, "{statuses:?}");
        assert!(
            h.cx().journal.planned(1).await.unwrap().is_some(),
            "the plan is journalled"
        );

        h.reconcile(&key(&pr)).await.unwrap();
        assert_eq!(h.github.upserted(1, STICKY_MARKER).len(), 1);
        assert_eq!(h.github.statuses_of(&pr.head_sha, PLAN_CONTEXT).len(), 1);
    }

    /// A key naming a head the pull request has moved on from (or a pull request no longer
    /// open) is done without writing: the key of the new head plans it.
    #[tokio::test]
    async fn a_key_of_an_older_head_or_a_closed_pull_request_writes_nothing() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        let old = h.open_pull(1, "dev", &example_request());
        h.github.open.lock().unwrap().clear();
        let new = h.open_pull(
            1,
            "dev",
            &[("clusters/team-a-prod/tkgops.yaml", "tkr: x\n")],
        );
        h.observe().await;
        h.reconcile(&key(&old)).await.unwrap();
        assert!(h.github.upserts.lock().unwrap().is_empty());
        assert!(h.github.statuses.lock().unwrap().is_empty());
        let gone = Key::PullPlan {
            number: 2,
            head: HeadSha::new(new.head_sha.clone()),
        };
        h.reconcile(&gone).await.unwrap();
        assert!(h.github.upserts.lock().unwrap().is_empty());
    }

    /// A plan that cannot be posted (GitHub answers 502) fails the key and journals no plan:
    /// the retry posts it.
    #[tokio::test]
    async fn a_plan_github_refused_is_posted_by_the_retry() {
        let h = Harness::new(EXAMPLE_POLICY).await;
        let pr = h.open_pull(1, "dev", &example_request());
        h.observe().await;
        h.github
            .fail_comments
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(h.reconcile(&key(&pr)).await.is_err());
        assert_eq!(h.cx().journal.planned(1).await.unwrap(), None);
        h.github
            .fail_comments
            .store(false, std::sync::atomic::Ordering::SeqCst);
        h.reconcile(&key(&pr)).await.unwrap();
        assert_eq!(h.github.upserted(1, STICKY_MARKER).len(), 1);
        assert_eq!(h.github.statuses_of(&pr.head_sha, PLAN_CONTEXT).len(), 1);
    }
}

//! The approval policy a merge is judged by, as pure functions: no GitHub, journal or git call
//! is made here. [`crate::Bot`] fetches the reviews, the review stamps, the members of the teams
//! named, the `CODEOWNERS` text and the changed paths, then asks these functions.
//!
//! Where each rule comes from:
//! - **Reviews** follow GitHub's review semantics: a reviewer's latest review is their verdict,
//!   a later review replaces an earlier one, and a `COMMENTED` (or the token's own `PENDING`)
//!   review gives no verdict, so it replaces nothing ([`latest_reviews`]). `DISMISSED` is a
//!   verdict that no longer approves. Logins are case-insensitive on GitHub: they are compared
//!   lowercased.
//! - **Which approvals count** is tkgops' security policy (docs/design.md security rules 2 and 8): an
//!   `APPROVED` latest review on the pull request's head SHA, not by its author, and given under
//!   the plan the merge runs: a review stamped with another plan's digests hash (the plan
//!   changed after it, [`stamp_targets`]) is stale ([`approval_candidates`],
//!   [`counted_approvals`]).
//! - **How many** comes from the trusted `tkgops.yaml`: `approval.requiredApprovals`, or
//!   `approval.destructiveApprovals` for a destructive intent or a change of the policy itself
//!   (security rule 6, [`required_approvals`]); only logins of `approval.approvers` count
//!   ([`approvers_refusal`]).
//! - **Principals** (`approval.approvers` and `CODEOWNERS` owners) use GitHub's `CODEOWNERS`
//!   spelling: `login`, `@login`, `org/team`, `@org/team`; e-mail addresses name no login the
//!   bot can check and are ignored ([`principal`], [`expand_principals`]).
//! - **`CODEOWNERS`** follows GitHub's semantics: the last matching pattern of the file wins
//!   ([`tkgops_domain::request::codeowners::CodeOwners::owners_of`]), a path whose last matching
//!   rule lists no owner is unowned, and every owned changed path needs an approval from one of
//!   its owners ([`OwnedPaths`]).
//!
//! The refusal messages are shown on the pull request and recorded in the merge record: keep
//! them stable.

use std::collections::{BTreeMap, BTreeSet};

use tkgops_domain::request::codeowners::CodeOwners;
use tkgops_domain::request::ApprovalPolicy;
use tkgops_domain::workflow::Plan;
use tkgops_github::Review;

/// The refusal when the trusted policy commit has no valid `tkgops.yaml` (fail closed).
pub const NO_POLICY: &str =
    "the default branch has no valid tkgops.yaml, so the approval policy is unknown";

/// How many `CODEOWNERS` paths a refusal names before it ends with `, …`.
pub const CODEOWNERS_SHOWN: usize = 5;

/// A reviewer's latest verdict on a pull request (see [`latest_reviews`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatestReview {
    /// The reviewer's login, lowercased.
    pub reviewer: String,
    /// GitHub's review state: `APPROVED`, `CHANGES_REQUESTED`, `DISMISSED`, …
    pub state: String,
    /// The head commit the review was submitted on.
    pub commit_id: Option<String>,
    /// GitHub's review id (what the journal's review stamps are keyed by).
    pub review_id: u64,
}

/// The latest verdict of each reviewer among `reviews` (in submission order, as
/// [`tkgops_github::GitHub::list_reviews`] returns them), sorted by lowercased login.
/// `COMMENTED` and `PENDING` reviews are skipped: they neither give nor replace a verdict.
pub fn latest_reviews(reviews: &[Review]) -> Vec<LatestReview> {
    let mut latest: BTreeMap<String, LatestReview> = BTreeMap::new();
    for r in reviews {
        if r.state == "COMMENTED" || r.state == "PENDING" {
            continue;
        }
        let reviewer = r.user.to_lowercase();
        latest.insert(
            reviewer.clone(),
            LatestReview {
                reviewer,
                state: r.state.clone(),
                commit_id: r.commit_id.clone(),
                review_id: r.id,
            },
        );
    }
    latest.into_values().collect()
}

/// The latest reviews of `reviews` that approve head `head` of a pull request by `author`:
/// state `APPROVED`, submitted on `head`, not by the author (compared case-insensitively).
/// Sorted by reviewer; whether each still counts depends on its stamp ([`counted_approvals`]).
pub fn approval_candidates(reviews: &[Review], author: &str, head: &str) -> Vec<LatestReview> {
    let author = author.to_lowercase();
    latest_reviews(reviews)
        .into_iter()
        .filter(|r| {
            r.reviewer != author && r.state == "APPROVED" && r.commit_id.as_deref() == Some(head)
        })
        .collect()
}

/// The lowercased logins whose approval counts, from `candidates` (of [`approval_candidates`])
/// each with its review stamp (the digests hash it was stamped with, `None` when unstamped).
/// `current` is the hash of the digests the merge runs (`None` when the head has no plan
/// journalled): a stamped approval counts only when its stamp equals it.
pub fn counted_approvals(
    candidates: &[(LatestReview, Option<String>)],
    current: Option<&str>,
) -> BTreeSet<String> {
    candidates
        .iter()
        .filter(|(_, stamp)| stamp.as_deref().is_none_or(|s| Some(s) == current))
        .map(|(r, _)| r.reviewer.clone())
        .collect()
}

/// The ids of the reviews in `reviews` a re-plan of head `head` stamps with the earlier plan's
/// digests hash: every `APPROVED` review submitted on `head` (not only the latest per
/// reviewer), in listing order. Those already stamped keep their stamp.
pub fn stamp_targets(reviews: &[Review], head: &str) -> Vec<u64> {
    reviews
        .iter()
        .filter(|r| r.state == "APPROVED" && r.commit_id.as_deref() == Some(head))
        .map(|r| r.id)
        .collect()
}

/// What about a change raises the approvals it needs (security rule 6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeWeight {
    /// The change edits a policy file (`tkgops.yaml`, `CODEOWNERS`).
    pub changes_policy: bool,
    /// Some cluster's intent is destructive (a delete).
    pub destructive_intent: bool,
}

impl ChangeWeight {
    /// The weight of plan `p`: its `changes_policy` flag and whether any of its cluster intents
    /// is destructive.
    pub fn of(p: &Plan) -> ChangeWeight {
        ChangeWeight {
            changes_policy: p.changes_policy,
            destructive_intent: p.clusters.iter().any(|c| c.intent.is_destructive()),
        }
    }

    /// Whether the change needs `approval.destructiveApprovals`: a policy change or a
    /// destructive intent.
    pub fn destructive(self) -> bool {
        self.changes_policy || self.destructive_intent
    }
}

/// The number of approvals `policy` requires of a change weighing `weight`:
/// `destructiveApprovals` when [`ChangeWeight::destructive`], else `requiredApprovals`.
pub fn required_approvals(policy: &ApprovalPolicy, weight: ChangeWeight) -> usize {
    if weight.destructive() {
        policy.destructive_approvals as usize
    } else {
        policy.required_approvals as usize
    }
}

/// `None` when the logins in `approved` (of [`counted_approvals`]) include enough of
/// `approvers` (`policy.approvers` expanded by [`expand_principals`]) for a change weighing
/// `weight`; else the refusal: how many of how many, from whom, and why more were needed.
pub fn approvers_refusal(
    approved: &BTreeSet<String>,
    approvers: &BTreeSet<String>,
    policy: &ApprovalPolicy,
    weight: ChangeWeight,
) -> Option<String> {
    let required = required_approvals(policy, weight);
    let count = approved.intersection(approvers).count();
    if count >= required {
        return None;
    }
    Some(format!(
        "merged with {count} of the {required} required approval(s) from approvers ({}){}",
        policy.approvers.join(", "),
        if weight.changes_policy {
            "; a change to tkgops.yaml needs approval.destructiveApprovals under the current policy"
        } else if weight.destructive() {
            "; destructive changes need approval.destructiveApprovals"
        } else {
            ""
        }
    ))
}

/// One entry of a principal list (`approval.approvers`, a `CODEOWNERS` rule's owners).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Principal {
    /// A user, by lowercased login.
    Login(String),
    /// A team: organisation and team slug, as written (GitHub resolves them).
    Team {
        /// The organisation's login.
        org: String,
        /// The team's slug (everything after the first `/`).
        team: String,
    },
}

/// The principal `entry` names: `login` and `@login` a user, `org/team` and `@org/team` a team;
/// `None` for an e-mail address or an empty entry. Surrounding whitespace is ignored.
pub fn principal(entry: &str) -> Option<Principal> {
    let p = entry.trim().trim_start_matches('@');
    if p.contains('@') || p.is_empty() {
        return None;
    }
    Some(match p.split_once('/') {
        Some((org, team)) => Principal::Team {
            org: org.to_string(),
            team: team.to_string(),
        },
        None => Principal::Login(p.to_lowercase()),
    })
}

/// The teams `principals` name, as (organisation, team slug), each once, in the order first
/// named: the teams whose members [`expand_principals`] needs.
pub fn teams_named<'a>(principals: impl IntoIterator<Item = &'a String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for p in principals {
        if let Some(Principal::Team { org, team }) = principal(p) {
            if !out.iter().any(|(o, t)| *o == org && *t == team) {
                out.push((org, team));
            }
        }
    }
    out
}

/// The members of the teams fetched so far, by (organisation, team slug), lowercased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeamMembers(BTreeMap<(String, String), BTreeSet<String>>);

impl TeamMembers {
    /// Records `members` (logins, any case) as team `org/team`'s.
    pub fn insert(&mut self, org: &str, team: &str, members: Vec<String>) {
        self.0.insert(
            (org.to_string(), team.to_string()),
            members.into_iter().map(|m| m.to_lowercase()).collect(),
        );
    }

    /// Whether team `org/team`'s members were recorded.
    pub fn contains(&self, org: &str, team: &str) -> bool {
        self.0.contains_key(&(org.to_string(), team.to_string()))
    }

    /// The lowercased members of team `org/team`; `None` when they were not recorded.
    pub fn members(&self, org: &str, team: &str) -> Option<&BTreeSet<String>> {
        self.0.get(&(org.to_string(), team.to_string()))
    }
}

/// The lowercased logins `principals` name ([`principal`]): users as is, teams expanded to
/// their members in `teams`. A team missing from `teams` contributes nobody, so the caller
/// records every team [`teams_named`] returns first.
pub fn expand_principals(principals: &[String], teams: &TeamMembers) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in principals {
        match principal(p) {
            Some(Principal::Login(login)) => {
                out.insert(login);
            }
            Some(Principal::Team { org, team }) => {
                if let Some(members) = teams.members(&org, &team) {
                    out.extend(members.iter().cloned());
                }
            }
            None => {}
        }
    }
    out
}

/// The changed paths that `CODEOWNERS` gives owners, each with its owners as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedPaths(Vec<(String, Vec<String>)>);

impl OwnedPaths {
    /// The paths of `changed` (in their order) owned under the `CODEOWNERS` file `text`: the
    /// owners of the last matching rule ([`CodeOwners::owners_of`]); paths with no owner are
    /// left out. Lines GitHub would ignore (a negated pattern, an invalid glob) are ignored.
    pub fn of(text: &str, changed: &[String]) -> OwnedPaths {
        let (owners, _) = CodeOwners::parse(text);
        OwnedPaths(
            changed
                .iter()
                .filter_map(|path| {
                    let owned_by = owners.owners_of(path);
                    (!owned_by.is_empty()).then(|| (path.clone(), owned_by.to_vec()))
                })
                .collect(),
        )
    }

    /// Every owner named, path by path (repeats included): what [`teams_named`] reads.
    pub fn principals(&self) -> impl Iterator<Item = &String> {
        self.0.iter().flat_map(|(_, owners)| owners)
    }

    /// `None` when every owned path has an approval in `approved` (of [`counted_approvals`])
    /// from one of its owners (teams expanded through `teams`); else the refusal naming the
    /// first [`CODEOWNERS_SHOWN`] paths missing one, with their owners, then `, …` if more.
    pub fn refusal(&self, approved: &BTreeSet<String>, teams: &TeamMembers) -> Option<String> {
        let missing: Vec<String> = self
            .0
            .iter()
            .filter(|(_, owned_by)| approved.is_disjoint(&expand_principals(owned_by, teams)))
            .map(|(path, owned_by)| format!("{path} ({})", owned_by.join(" ")))
            .collect();
        if missing.is_empty() {
            return None;
        }
        let shown: Vec<&str> = missing
            .iter()
            .take(CODEOWNERS_SHOWN)
            .map(String::as_str)
            .collect();
        Some(format!(
            "CODEOWNERS of the default branch requires an approval from a code owner of {}{}",
            shown.join(", "),
            if missing.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "1111111111111111111111111111111111111111";
    const OLD: &str = "0000000000000000000000000000000000000000";

    fn review(id: u64, user: &str, state: &str, commit: &str) -> Review {
        Review {
            id,
            user: user.into(),
            state: state.into(),
            commit_id: Some(commit.into()),
            submitted_at: None,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn policy(approvers: &[&str], required: u32, destructive: u32) -> ApprovalPolicy {
        ApprovalPolicy {
            approvers: strings(approvers),
            required_approvals: required,
            destructive_approvals: destructive,
            ..ApprovalPolicy::default()
        }
    }

    /// The logins counted for `reviews` of a PR by `author` at [`HEAD`], none stamped.
    fn approved(reviews: &[Review], author: &str) -> BTreeSet<String> {
        let unstamped: Vec<_> = approval_candidates(reviews, author, HEAD)
            .into_iter()
            .map(|r| (r, None))
            .collect();
        counted_approvals(&unstamped, None)
    }

    #[test]
    fn the_authors_own_approval_is_ignored() {
        let reviews = [
            review(1, "Alice", "APPROVED", HEAD),
            review(2, "bob", "APPROVED", HEAD),
        ];
        assert_eq!(approved(&reviews, "alice"), set(&["bob"]));
        assert_eq!(approved(&reviews, "BOB"), set(&["alice"]));
    }

    #[test]
    fn an_approval_of_an_older_head_is_ignored() {
        let reviews = [
            review(1, "alice", "APPROVED", OLD),
            review(2, "bob", "APPROVED", HEAD),
        ];
        assert_eq!(approved(&reviews, "author"), set(&["bob"]));
        let no_commit = Review {
            commit_id: None,
            ..review(3, "carol", "APPROVED", HEAD)
        };
        assert!(approved(&[no_commit], "author").is_empty());
    }

    #[test]
    fn a_later_review_replaces_an_earlier_one_and_logins_are_lowercased() {
        let reviews = [
            review(1, "Alice", "APPROVED", HEAD),
            review(2, "alice", "CHANGES_REQUESTED", HEAD),
        ];
        assert!(approved(&reviews, "author").is_empty());
        let latest = latest_reviews(&reviews);
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].reviewer, "alice");
        assert_eq!(latest[0].review_id, 2);
        // And the other way round: a later approval replaces changes requested.
        let reviews = [
            review(1, "alice", "CHANGES_REQUESTED", HEAD),
            review(2, "ALICE", "APPROVED", HEAD),
        ];
        assert_eq!(approved(&reviews, "author"), set(&["alice"]));
        // A dismissed approval no longer approves.
        let reviews = [
            review(1, "alice", "APPROVED", HEAD),
            review(2, "alice", "DISMISSED", HEAD),
        ];
        assert!(approved(&reviews, "author").is_empty());
    }

    #[test]
    fn a_comment_or_a_pending_review_replaces_nothing() {
        let reviews = [
            review(1, "alice", "APPROVED", HEAD),
            review(2, "alice", "COMMENTED", HEAD),
            review(3, "alice", "PENDING", HEAD),
        ];
        assert_eq!(approved(&reviews, "author"), set(&["alice"]));
        assert_eq!(latest_reviews(&reviews)[0].review_id, 1);
        assert!(latest_reviews(&[review(1, "bob", "COMMENTED", HEAD)]).is_empty());
    }

    #[test]
    fn an_approval_stamped_under_another_plan_is_ignored() {
        let reviews = [
            review(1, "alice", "APPROVED", HEAD),
            review(2, "bob", "APPROVED", HEAD),
            review(3, "carol", "APPROVED", HEAD),
        ];
        let candidates = approval_candidates(&reviews, "author", HEAD);
        let stamps = [Some("old".to_string()), Some("now".to_string()), None];
        let stamped: Vec<_> = candidates.into_iter().zip(stamps).collect();
        assert_eq!(
            counted_approvals(&stamped, Some("now")),
            set(&["bob", "carol"])
        );
        // No plan journalled for the head: only unstamped approvals count.
        assert_eq!(counted_approvals(&stamped, None), set(&["carol"]));
    }

    #[test]
    fn a_replan_stamps_every_approval_of_the_head() {
        let reviews = [
            review(1, "alice", "APPROVED", HEAD),
            review(2, "alice", "APPROVED", HEAD),
            review(3, "bob", "APPROVED", OLD),
            review(4, "carol", "CHANGES_REQUESTED", HEAD),
            review(5, "dave", "COMMENTED", HEAD),
        ];
        assert_eq!(stamp_targets(&reviews, HEAD), vec![1, 2]);
    }

    #[test]
    fn principals_are_logins_and_teams_and_emails_are_ignored() {
        assert_eq!(principal("Alice"), Some(Principal::Login("alice".into())));
        assert_eq!(principal(" @Bob "), Some(Principal::Login("bob".into())));
        assert_eq!(
            principal("@acme/Platform"),
            Some(Principal::Team {
                org: "acme".into(),
                team: "Platform".into()
            })
        );
        assert_eq!(principal("ops@example.com"), None);
        assert_eq!(principal("@"), None);
        assert_eq!(principal(""), None);
    }

    #[test]
    fn teams_are_expanded_to_their_members() {
        let list = strings(&[
            "alice",
            "@acme/platform",
            "acme/platform",
            "@acme/admins",
            "ops@example.com",
        ]);
        assert_eq!(
            teams_named(&list),
            vec![
                ("acme".to_string(), "platform".to_string()),
                ("acme".to_string(), "admins".to_string())
            ]
        );
        let mut teams = TeamMembers::default();
        teams.insert("acme", "platform", strings(&["Carol", "dave"]));
        assert!(teams.contains("acme", "platform"));
        assert!(!teams.contains("acme", "admins"));
        // A team not fetched contributes nobody; the e-mail address nobody either.
        assert_eq!(
            expand_principals(&list, &teams),
            set(&["alice", "carol", "dave"])
        );
        teams.insert("acme", "admins", strings(&["Erin"]));
        assert_eq!(
            expand_principals(&list, &teams),
            set(&["alice", "carol", "dave", "erin"])
        );
    }

    #[test]
    fn e_mail_principals_approve_nothing() {
        let policy = policy(&["ops@example.com"], 1, 2);
        let approvers = expand_principals(&policy.approvers, &TeamMembers::default());
        assert!(approvers.is_empty());
        assert_eq!(
            approvers_refusal(&set(&["ops"]), &approvers, &policy, ChangeWeight::default())
                .as_deref(),
            Some("merged with 0 of the 1 required approval(s) from approvers (ops@example.com)")
        );
    }

    #[test]
    fn only_approvers_count_and_enough_of_them_is_no_refusal() {
        let policy = policy(&["alice", "bob"], 1, 2);
        let approvers = set(&["alice", "bob"]);
        let plain = ChangeWeight::default();
        assert_eq!(
            approvers_refusal(&set(&["mallory"]), &approvers, &policy, plain).as_deref(),
            Some("merged with 0 of the 1 required approval(s) from approvers (alice, bob)")
        );
        assert_eq!(
            approvers_refusal(&set(&["alice", "mallory"]), &approvers, &policy, plain),
            None
        );
    }

    #[test]
    fn a_destructive_change_needs_destructive_approvals() {
        let policy = policy(&["alice", "bob"], 1, 2);
        let delete = ChangeWeight {
            changes_policy: false,
            destructive_intent: true,
        };
        assert_eq!(required_approvals(&policy, ChangeWeight::default()), 1);
        assert_eq!(required_approvals(&policy, delete), 2);
        assert_eq!(
            approvers_refusal(&set(&["alice"]), &set(&["alice", "bob"]), &policy, delete)
                .as_deref(),
            Some("merged with 1 of the 2 required approval(s) from approvers (alice, bob); destructive changes need approval.destructiveApprovals")
        );
        assert_eq!(
            approvers_refusal(
                &set(&["alice", "bob"]),
                &set(&["alice", "bob"]),
                &policy,
                delete
            ),
            None
        );
    }

    #[test]
    fn a_policy_change_needs_destructive_approvals_and_says_so() {
        let policy = policy(&["alice", "@acme/platform"], 1, 2);
        for destructive_intent in [false, true] {
            let weight = ChangeWeight {
                changes_policy: true,
                destructive_intent,
            };
            assert_eq!(required_approvals(&policy, weight), 2);
            assert_eq!(
                approvers_refusal(&set(&["alice"]), &set(&["alice"]), &policy, weight).as_deref(),
                Some("merged with 1 of the 2 required approval(s) from approvers (alice, @acme/platform); a change to tkgops.yaml needs approval.destructiveApprovals under the current policy")
            );
        }
    }

    const CODEOWNERS: &str = "\
# Later rules win.
clusters/ @acme/cluster-admins
clusters/team-a-*/ alice
clusters/team-a-prod/ops/
docs/*.md bob ops@example.com
";

    #[test]
    fn codeowners_leaves_unowned_paths_alone() {
        let changed = strings(&[
            "README.md",
            "clusters/team-a-prod/ops/runbook.md",
            "tkgops.yaml",
        ]);
        let owned = OwnedPaths::of(CODEOWNERS, &changed);
        assert_eq!(owned, OwnedPaths::default());
        assert_eq!(
            owned.refusal(&BTreeSet::new(), &TeamMembers::default()),
            None
        );
    }

    #[test]
    fn codeowners_needs_an_owner_of_every_owned_path() {
        let changed = strings(&[
            "clusters/team-a-prod/cluster-config.yaml",
            "clusters/team-b/cluster-config.yaml",
            "docs/upgrades.md",
            "README.md",
        ]);
        let owned = OwnedPaths::of(CODEOWNERS, &changed);
        assert_eq!(
            teams_named(owned.principals()),
            vec![("acme".to_string(), "cluster-admins".to_string())]
        );
        let mut teams = TeamMembers::default();
        teams.insert("acme", "cluster-admins", strings(&["Dave"]));
        assert_eq!(
            owned.refusal(&set(&["alice"]), &teams).as_deref(),
            Some("CODEOWNERS of the default branch requires an approval from a code owner of clusters/team-b/cluster-config.yaml (@acme/cluster-admins), docs/upgrades.md (bob ops@example.com)")
        );
        // Satisfied: a team member and the docs owner (the e-mail owner cannot approve).
        assert_eq!(owned.refusal(&set(&["alice", "dave", "bob"]), &teams), None);
    }

    #[test]
    fn codeowners_lists_five_missing_paths_at_most() {
        let changed: Vec<String> = (1..=7)
            .map(|i| format!("clusters/c{i}/cluster-config.yaml"))
            .collect();
        let owned = OwnedPaths::of("clusters/ carol\n", &changed);
        let why = owned
            .refusal(&set(&["alice"]), &TeamMembers::default())
            .unwrap();
        assert_eq!(
            why,
            "CODEOWNERS of the default branch requires an approval from a code owner of clusters/c1/cluster-config.yaml (carol), clusters/c2/cluster-config.yaml (carol), clusters/c3/cluster-config.yaml (carol), clusters/c4/cluster-config.yaml (carol), clusters/c5/cluster-config.yaml (carol), …"
        );
        // Exactly five: no ellipsis.
        let owned = OwnedPaths::of("clusters/ carol\n", &changed[..5]);
        assert!(!owned
            .refusal(&BTreeSet::new(), &TeamMembers::default())
            .unwrap()
            .ends_with('…'));
        assert_eq!(
            owned.refusal(&set(&["carol"]), &TeamMembers::default()),
            None
        );
    }

    #[test]
    fn the_no_policy_refusal_is_stable() {
        assert_eq!(
            NO_POLICY,
            "the default branch has no valid tkgops.yaml, so the approval policy is unknown"
        );
    }
}

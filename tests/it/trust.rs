//! End-to-end tests of the trust boundary (security rules 1–3, 5–6): every attack a pull
//! request's author or another repository user can try changes nothing on the management
//! cluster, TMC or AWS, and the pull request says why.
//!
//! Each test runs the emulated world with the bot in process, as `e2e` does.

use std::time::Duration;

use tkgops_emulators::git_remote::commit_on_branch;
use tkgops_emulators::kube::Gvr;
use tkgops_sandbox::{request_files, Environment, Timings, APPROVER, AUTHOR, MANAGEMENT_CLUSTER};

use crate::e2e::{head_of, start_env, InProcessBot};

const CLUSTER: &str = "team-a-prod";
const OUTSIDER: &str = "outsider";
const MARKER: &str = "<!-- tkgops:sticky -->";
const WAIT: Duration = Duration::from_secs(90);

/// The bot's own sticky comment on `pr` (authored by its login), if any.
pub(crate) fn sticky(env: &Environment, pr: u64) -> Option<String> {
    env.github
        .comments(pr)
        .into_iter()
        .find(|c| c.body.contains(MARKER) && c.user.ends_with("[bot]"))
        .map(|c| c.body)
}

/// Nothing was created: no Cluster on the management cluster, no TMC cluster, no subnet tag
/// write in moto (the preflight never ran).
pub(crate) fn assert_nothing_ran(env: &Environment) {
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    assert!(
        mgmt.get(
            &Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters"),
            Some("default"),
            CLUSTER
        )
        .is_none(),
        "a Cluster was created"
    );
    assert!(env.tmc.cluster(CLUSTER).is_none(), "TMC saw the cluster");
}

/// Opens the example request as a PR by `author` (with `extra` files too), waits for the plan
/// status, and returns (PR number, head SHA, plan state).
pub(crate) async fn open_and_plan(
    env: &Environment,
    author: &str,
    extra: &[(&str, String)],
) -> (u64, String, String) {
    let (_, mut files) = request_files(None, &env.vpc);
    files.extend(extra.iter().map(|(p, c)| (p.to_string(), c.clone())));
    let owned: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    commit_on_branch(&env.remote, "main", "change", "Add team-a-prod", &owned).unwrap();
    let pr = env
        .github
        .open_pull_request("change", "Add cluster team-a-prod", "", author)
        .unwrap();
    let head = head_of(env, "change");
    let plan = env.wait_status(&head, "tkgops/plan", WAIT).await.unwrap();
    (pr, head, plan)
}

/// Merges `pr` as `merger` and returns the final `tkgops/apply` state and the sticky comment.
pub(crate) async fn merge(env: &Environment, pr: u64, merger: &str) -> (String, String) {
    let merge = env.github.merge_pull_request(pr, merger).unwrap();
    let apply = env.wait_status(&merge, "tkgops/apply", WAIT).await.unwrap();
    (apply, sticky(env, pr).expect("the bot's comment"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_request_that_adds_its_author_to_the_approvers_does_not_approve_itself() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;
    let policy = with_approvers(&main_policy(&env), &["alice", "bob", "outsider"]);
    assert!(
        policy.contains("outsider"),
        "the example policy changed shape"
    );
    let (pr, _, plan) = open_and_plan(&env, AUTHOR, &[("tkgops.yaml", policy)]).await;
    assert_eq!(plan, "success");
    let planned = sticky(&env, pr).unwrap();
    assert!(
        planned.contains("judged under the default branch's current policy"),
        "{planned}"
    );
    // The outsider the change makes an approver approves it and merges it.
    env.github.submit_review(pr, OUTSIDER, "APPROVED").unwrap();
    let (apply, comment) = merge(&env, pr, OUTSIDER).await;
    assert_eq!(apply, "failure", "{comment}");
    assert!(
        comment.contains("not executed")
            && comment.contains("a change to tkgops.yaml needs approval.destructiveApprovals"),
        "{comment}"
    );
    assert_nothing_ran(&env);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approvals_by_non_approvers_by_the_author_or_on_an_older_head_do_not_count() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;

    // 1. A non-approver approves.
    let (pr, head, _) = open_and_plan(&env, AUTHOR, &[]).await;
    env.github.submit_review(pr, OUTSIDER, "APPROVED").unwrap();
    // 2. An approver approves, then the author pushes again: the approval is stale.
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let (_, files) = request_files(None, &env.vpc);
    let settings = files
        .iter()
        .find(|(p, _)| p.ends_with("tkgops.yaml"))
        .unwrap()
        .1
        .replace("env: prod", "env: production");
    let new_head = commit_on_branch(
        &env.remote,
        "change",
        "change",
        "Relabel",
        &[("clusters/team-a-prod/tkgops.yaml", settings.as_str())],
    )
    .unwrap();
    assert_ne!(new_head, head);
    env.wait_status(&new_head, "tkgops/plan", WAIT)
        .await
        .unwrap();
    let (apply, comment) = merge(&env, pr, APPROVER).await;
    assert_eq!(apply, "failure", "{comment}");
    assert!(
        comment.contains("merged with 0 of the 1 required approval(s)"),
        "{comment}"
    );
    assert_nothing_ran(&env);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_authors_own_approval_does_not_count() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;
    // An approver opens the PR: GitHub refuses the author's own approval, and the bot counts
    // reviews by the author out anyway; the approver's own merge then runs nothing.
    let (pr, _, _) = open_and_plan(&env, APPROVER, &[]).await;
    assert!(env.github.submit_review(pr, APPROVER, "APPROVED").is_err());
    env.github.submit_review(pr, OUTSIDER, "APPROVED").unwrap();
    let (apply, comment) = merge(&env, pr, APPROVER).await;
    assert_eq!(apply, "failure", "{comment}");
    assert!(
        comment.contains("merged with 0 of the 1 required approval(s)"),
        "{comment}"
    );
    assert_nothing_ran(&env);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fork_pull_requests_are_planned_but_never_executed() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;
    let (_, files) = request_files(None, &env.vpc);
    let owned: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    commit_on_branch(&env.remote, "main", "fork-a", "Add", &owned).unwrap();
    let from_fork = env
        .github
        .open_fork_pull_request(Some("mallory/tkg-clusters"), "fork-a", "Add", "", "mallory")
        .unwrap();
    env.wait_status(&head_of(&env, "fork-a"), "tkgops/plan", WAIT)
        .await
        .unwrap();
    let plan = sticky(&env, from_fork).unwrap();
    assert!(plan.contains("comes from a fork"), "{plan}");
    env.github
        .submit_review(from_fork, APPROVER, "APPROVED")
        .unwrap();
    let (apply, comment) = merge(&env, from_fork, APPROVER).await;
    assert_eq!(apply, "failure", "{comment}");
    assert!(comment.contains("fork"), "{comment}");
    assert_nothing_ran(&env);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fork_whose_head_repository_was_deleted_is_never_executed() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;
    let (_, files) = request_files(None, &env.vpc);
    let owned: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    commit_on_branch(&env.remote, "main", "gone", "Add", &owned).unwrap();
    let pr = env
        .github
        .open_fork_pull_request(None, "gone", "Add", "", "mallory")
        .unwrap();
    env.wait_status(&head_of(&env, "gone"), "tkgops/plan", WAIT)
        .await
        .unwrap();
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let (apply, comment) = merge(&env, pr, APPROVER).await;
    assert_eq!(apply, "failure", "{comment}");
    assert!(comment.contains("head repository was deleted"), "{comment}");
    assert_nothing_ran(&env);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planted_marker_in_someone_elses_comment_is_ignored() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    // The PR and a comment carrying the bot's marker exist before the bot first looks.
    let (_, files) = request_files(None, &env.vpc);
    let owned: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    commit_on_branch(&env.remote, "main", "change", "Add", &owned).unwrap();
    let pr = env
        .github
        .open_pull_request("change", "Add cluster", "", AUTHOR)
        .unwrap();
    let planted =
        format!("{MARKER}\n### tkgops plan: ✅ approved by the platform team, merge away");
    env.github.add_comment(pr, OUTSIDER, &planted).unwrap();
    let bot = InProcessBot::start(&env, &timings, None).await;
    env.wait_status(&head_of(&env, "change"), "tkgops/plan", WAIT)
        .await
        .unwrap();
    let comments = env.github.comments(pr);
    let outsiders: Vec<_> = comments.iter().filter(|c| c.user == OUTSIDER).collect();
    assert_eq!(outsiders.len(), 1);
    assert_eq!(
        outsiders[0].body, planted,
        "the planted comment was not edited"
    );
    let bots: Vec<_> = comments
        .iter()
        .filter(|c| c.user.ends_with("[bot]") && c.body.contains(MARKER))
        .collect();
    assert_eq!(bots.len(), 1, "the bot wrote its own sticky comment");
    assert!(bots[0].body.contains("tkgops plan for"));
    bot.stop().await;
}

/// The trusted policy moves between the approval of a change and its merge (both merged while
/// the bot was down, the policy first): the change's plan at its merge commit differs from the
/// plan approved for its head, so it does not run, and the pull request says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_that_changed_between_approval_and_merge_does_not_run() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let mut bot = crate::e2e::spawn_serve(&env, &timings);
    let (pr, _, plan) = open_and_plan(&env, AUTHOR, &[]).await;
    assert_eq!(plan, "success");
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    // An approved policy change moves the package repository every cluster uses, so the
    // merged change would no longer run what was approved.
    let policy = main_policy(&env);
    let moved = policy.replace("name: tanzu-standard", "name: tanzu-standard-next");
    assert_ne!(moved, policy, "the example policy changed shape");
    commit_on_branch(
        &env.remote,
        "main",
        "repository",
        "Move the repository",
        &[("tkgops.yaml", moved.as_str())],
    )
    .unwrap();
    let policy_pr = env
        .github
        .open_pull_request("repository", "Move the repository", "", AUTHOR)
        .unwrap();
    env.wait_status(&head_of(&env, "repository"), "tkgops/plan", WAIT)
        .await
        .unwrap();
    env.github
        .submit_review(policy_pr, APPROVER, "APPROVED")
        .unwrap();
    env.github
        .submit_review(policy_pr, "bob", "APPROVED")
        .unwrap();
    bot.kill().await.expect("stop the bot");
    let _ = bot.wait().await;
    let policy_merge = env.github.merge_pull_request(policy_pr, APPROVER).unwrap();
    let merge_sha = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let mut bot = crate::e2e::spawn_serve(&env, &timings);
    let policy_apply = env
        .wait_status(&policy_merge, "tkgops/apply", WAIT)
        .await
        .unwrap();
    assert_eq!(policy_apply, "success", "{}", env.conversation(policy_pr));
    let apply = env
        .wait_status(&merge_sha, "tkgops/apply", WAIT)
        .await
        .unwrap();
    let comment = sticky(&env, pr).expect("the bot's comment");
    assert_eq!(apply, "failure", "{comment}");
    assert!(
        comment.contains("plan changed after approval")
            && comment
                .contains("its plan at the merge commit differs from the plan approved for head"),
        "{comment}"
    );
    assert_nothing_ran(&env);
    bot.kill().await.expect("stop the bot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_secret_blocks_the_plan_without_showing_the_value() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;
    const VALUE: &str = "Sup3r-S3cret-Bind-Pw";
    let (_, files) = request_files(None, &env.vpc);
    let config = files
        .iter()
        .find(|(p, _)| p.ends_with("cluster-config.yaml"))
        .unwrap()
        .1
        .clone()
        + &format!("LDAP_BIND_PASSWORD: {VALUE}\n");
    let (pr, _, plan) = open_and_plan(
        &env,
        AUTHOR,
        &[("clusters/team-a-prod/cluster-config.yaml", config)],
    )
    .await;
    assert_eq!(plan, "failure");
    let comment = sticky(&env, pr).unwrap();
    assert!(
        comment.contains("TKGOPS-SECRET") && comment.contains("LDAP_BIND_PASSWORD"),
        "{comment}"
    );
    assert!(!comment.contains(VALUE), "the secret reached the PR");
    bot.stop().await;
}

/// A merge missed while the bot was down is found after the restart, however many pull
/// requests were closed since (more than a page of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_missed_while_the_bot_was_down_runs_after_the_restart() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    let (pr, _, plan) = open_and_plan(&env, AUTHOR, &[]).await;
    assert_eq!(plan, "success");
    bot.stop().await;

    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    commit_on_branch(
        &env.remote,
        "main",
        "noise",
        "Docs",
        &[("docs/notes.md", "notes\n")],
    )
    .unwrap();
    for i in 0..105 {
        let n = env
            .github
            .open_pull_request("noise", &format!("Noise {i}"), "", AUTHOR)
            .unwrap();
        env.github.close_pull_request(n).unwrap();
    }

    let bot = InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr));
    assert!(env
        .kube
        .cluster(MANAGEMENT_CLUSTER)
        .unwrap()
        .get(
            &Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters"),
            Some("default"),
            CLUSTER
        )
        .is_some());
    bot.stop().await;
}

/// The repository settings on the default branch of the sandbox's config repository.
pub(crate) fn main_policy(env: &Environment) -> String {
    let repo = git2::Repository::open_bare(&env.remote).unwrap();
    let tree = repo
        .revparse_single("refs/heads/main")
        .unwrap()
        .peel_to_tree()
        .unwrap();
    let blob = tree
        .get_path(std::path::Path::new("tkgops.yaml"))
        .unwrap()
        .to_object(&repo)
        .unwrap()
        .peel_to_blob()
        .unwrap();
    String::from_utf8(blob.content().to_vec()).unwrap()
}

/// `policy` (a `tkgops.yaml`) with `approval.approvers` replaced by `approvers`.
pub(crate) fn with_approvers(policy: &str, approvers: &[&str]) -> String {
    let mut v: serde_yaml::Value = serde_yaml::from_str(policy).unwrap();
    v["approval"]["approvers"] = serde_yaml::to_value(approvers).unwrap();
    serde_yaml::to_string(&v).unwrap()
}

/// Puts `files` on `main` directly (an administrator's push), before any pull request.
pub(crate) fn push_to_main(env: &Environment, files: &[(&str, &str)]) {
    commit_on_branch(&env.remote, "main", "main", "Policy", files).unwrap();
}

pub(crate) fn policy_with_team_and_codeowners(env: &Environment) {
    let policy = with_approvers(&main_policy(env), &["acme/platform"]);
    assert!(
        policy.contains("acme/platform"),
        "the example policy changed shape"
    );
    push_to_main(
        env,
        &[
            ("tkgops.yaml", policy.as_str()),
            (
                ".github/CODEOWNERS",
                "* @acme/platform\n/clusters/ @acme/cluster-admins\n",
            ),
        ],
    );
    env.github.set_team("acme", "platform", &["carol"]);
    env.github.set_team("acme", "cluster-admins", &["dave"]);
}

/// Approvers may be a team, resolved through the API; the default branch's CODEOWNERS is
/// honoured: a team member's approval is not enough when the changed files' owners did not
/// approve.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn codeowners_of_the_default_branch_must_approve_their_paths() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    policy_with_team_and_codeowners(&env);
    let bot = InProcessBot::start(&env, &timings, None).await;
    let (pr, _, plan) = open_and_plan(&env, AUTHOR, &[]).await;
    assert_eq!(plan, "success");
    env.github.submit_review(pr, "carol", "APPROVED").unwrap();
    let (apply, comment) = merge(&env, pr, "carol").await;
    assert_eq!(apply, "failure", "{comment}");
    assert!(
        comment.contains("CODEOWNERS of the default branch requires an approval from a code owner of clusters/team-a-prod/cluster-config.yaml (@acme/cluster-admins)"),
        "{comment}"
    );
    assert_nothing_ran(&env);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_team_approver_and_a_code_owner_make_the_change_run() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    policy_with_team_and_codeowners(&env);
    let bot = InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    let (pr, _, _) = open_and_plan(&env, AUTHOR, &[]).await;
    env.github.submit_review(pr, "carol", "APPROVED").unwrap();
    env.github.submit_review(pr, "dave", "APPROVED").unwrap();
    let (apply, comment) = merge(&env, pr, "carol").await;
    assert_eq!(apply, "success", "{comment}");
    bot.stop().await;
}

/// The bot authenticated as a GitHub App: installation tokens are minted, and one that GitHub
/// stops accepting mid-run is replaced without losing the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn as_a_github_app_an_expired_installation_token_is_refreshed() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    crate::e2e::set_aws_env(&env);
    let cfg = env.bot_config(&timings);
    let auth = tkgops_github::GitHubAuth::App {
        app_id: tkgops_sandbox::GITHUB_APP_ID,
        private_key: tkgops_sandbox::GITHUB_APP_PRIVATE_KEY.into(),
        installation_id: None,
    };
    let bot = std::sync::Arc::new(
        tkgops::serve::build_with_auth(&cfg, auth, Some(tkgops_sandbox::TMC_TOKEN.into()))
            .await
            .expect("bot"),
    );
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let b = bot.clone();
    let task = tokio::spawn(async move {
        b.run(timings.poll, Duration::from_secs(2), async move {
            let _ = stop_rx.await;
        })
        .await
    });
    let (pr, _, plan) = open_and_plan(&env, AUTHOR, &[]).await;
    assert_eq!(plan, "success");
    assert_eq!(env.github.installation_tokens_issued(), 1);
    // GitHub stops accepting the token (expiry or revocation) before the merge.
    env.github.expire_installation_tokens();
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let (apply, comment) = merge(&env, pr, APPROVER).await;
    assert_eq!(apply, "success", "{comment}");
    assert!(env.github.installation_tokens_issued() >= 2);
    let authors: Vec<String> = env
        .github
        .comments(pr)
        .into_iter()
        .filter(|c| c.body.contains(MARKER))
        .map(|c| c.user)
        .collect();
    assert_eq!(authors, ["tkgops[bot]"], "one sticky comment, by the App");
    let _ = stop.send(());
    let _ = task.await;
}

/// A change to the management cluster's access in `tkgops.yaml`, approved as policy changes
/// must be, applies to later pull requests only: this merge's own run reaches the management
/// cluster the way the policy before it said.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_run_reaches_the_management_cluster_as_the_old_policy_says() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    let mut v: serde_yaml::Value = serde_yaml::from_str(&main_policy(&env)).unwrap();
    v["managementClusters"][0]["kubeconfig"] =
        serde_yaml::from_str("{file: /nonexistent/attacker.kubeconfig}").unwrap();
    let policy = serde_yaml::to_string(&v).unwrap();
    let (pr, _, plan) = open_and_plan(&env, AUTHOR, &[("tkgops.yaml", policy)]).await;
    assert_eq!(plan, "success");
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    env.github
        .submit_review(pr, tkgops_sandbox::SECOND_APPROVER, "APPROVED")
        .unwrap();
    let (apply, comment) = merge(&env, pr, APPROVER).await;
    assert_eq!(apply, "success", "{comment}");
    assert!(!comment.contains("attacker.kubeconfig"), "{comment}");
    bot.stop().await;
}

/// A management cluster that does not match what the default branch's `tkgops.yaml` declares
/// (here: a ClusterClass it does not have) stops the run at `kube.preflight`, before anything is
/// written, and the PR shows the management cluster's answer and what to correct
/// (docs/tkg2-class-based.md §1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_management_cluster_that_differs_from_the_policy_stops_the_run_on_the_pr() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let mut v: serde_yaml::Value = serde_yaml::from_str(&main_policy(&env)).unwrap();
    v["managementClusters"][0]["clusterClass"] = "tkg-aws-default-v9.9.9".into();
    push_to_main(
        &env,
        &[("tkgops.yaml", &serde_yaml::to_string(&v).unwrap())],
    );
    let bot = InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    let (pr, _, plan) = open_and_plan(&env, AUTHOR, &[]).await;
    assert_eq!(plan, "success");
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let (apply, comment) = merge(&env, pr, APPROVER).await;
    assert_eq!(apply, "failure", "{comment}");
    assert!(
        comment.contains(
            "ClusterClass tkg-aws-default-v9.9.9 does not exist in namespace default of management cluster"
        ),
        "{comment}"
    );
    assert!(comment.contains("tkg-aws-default-v1.0.0"), "{comment}");
    let mgmt = env
        .kube
        .cluster(tkgops_sandbox::MANAGEMENT_CLUSTER)
        .unwrap();
    assert!(
        mgmt.writes().iter().all(|w| w.gvr.plural != "clusters"),
        "nothing reached the Clusters: {:?}",
        mgmt.writes()
    );
    bot.stop().await;
}

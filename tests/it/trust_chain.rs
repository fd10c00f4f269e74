//! End-to-end tests of the trusted policy chain and of merges as GitHub makes them (issue 16,
//! items 1–3; security rule 1): an unapproved merge or a direct push of `tkgops.yaml` never
//! becomes the policy, an approved pull request repairs the chain, a rebase merge is judged on
//! its whole range, and merges handled together run in the order they entered the default
//! branch.

use std::time::Duration;

use tkgops_emulators::git_remote::commit_on_branch;
use tkgops_emulators::github::MergeMethod;
use tkgops_emulators::kube::Gvr;
use tkgops_sandbox::{request_files, Environment, Timings, APPROVER, AUTHOR, MANAGEMENT_CLUSTER};

use crate::e2e::{head_of, spawn_serve, start_env, InProcessBot};
use crate::trust::{assert_nothing_ran, main_policy, push_to_main, sticky, with_approvers};

const OUTSIDER: &str = "outsider";
/// The example policy's second approver (`approval.approvers: [alice, bob]`).
const SECOND_APPROVER: &str = "bob";
const WAIT: Duration = Duration::from_secs(90);
const UNTRUSTED: &str = "policy change tkgops does not trust";

/// Commits `files` on a new branch `branch` from `main` and opens a pull request by `author`;
/// waits for its plan and returns (number, head SHA, plan state).
async fn open_pr(
    env: &Environment,
    branch: &str,
    author: &str,
    files: &[(&str, &str)],
) -> (u64, String, String) {
    commit_on_branch(&env.remote, "main", branch, branch, files).unwrap();
    let pr = env
        .github
        .open_pull_request(branch, branch, "", author)
        .unwrap();
    let head = head_of(env, branch);
    let plan = env.wait_status(&head, "tkgops/plan", WAIT).await.unwrap();
    (pr, head, plan)
}

/// The example cluster request's files.
fn cluster_files(env: &Environment) -> Vec<(String, String)> {
    request_files(None, &env.vpc).1
}

fn borrowed(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect()
}

/// The fleet dashboard issue's body (empty when there is none).
fn dashboard(env: &Environment) -> String {
    env.github
        .issues()
        .into_iter()
        .find(|i| i.body.contains("<!-- tkgops:fleet-dashboard -->"))
        .map(|i| i.body)
        .unwrap_or_default()
}

/// Waits until `f` holds for the emulated GitHub.
async fn wait_for(env: &Environment, what: &str, f: impl Fn(&Environment) -> bool) {
    let ok = env.github.wait_until(WAIT, |_| f(env).then_some(())).await;
    assert!(ok.is_some(), "timed out waiting for {what}");
}

/// The issue's attack: a pull request that only adds `outsider` to the approvers, approved and
/// merged by `outsider`, is refused, and from then on the policy in force is still the trusted
/// one: the next pull request, approved and merged only by `outsider`, runs nothing. The
/// untrusted change is said on its commit, its pull request, the dashboard and the next plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unapproved_merge_of_the_policy_never_becomes_the_policy() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;
    let policy = with_approvers(&main_policy(&env), &["alice", "bob", OUTSIDER]);
    let (pr1, _, _) = open_pr(&env, "policy", AUTHOR, &[("tkgops.yaml", &policy)]).await;
    env.github.submit_review(pr1, OUTSIDER, "APPROVED").unwrap();
    let merge1 = env.github.merge_pull_request(pr1, OUTSIDER).unwrap();
    let apply = env
        .wait_status(&merge1, "tkgops/apply", WAIT)
        .await
        .unwrap();
    assert_eq!(apply, "failure", "{}", env.conversation(pr1));
    // Said on the commit, on the pull request and on the dashboard.
    let policy_status = env
        .wait_status(&merge1, "tkgops/policy", WAIT)
        .await
        .unwrap();
    assert_eq!(policy_status, "failure");
    wait_for(&env, "the untrusted-policy comment", |env| {
        env.github
            .comments(pr1)
            .iter()
            .any(|c| c.body.contains("<!-- tkgops:untrusted-policy -->"))
    })
    .await;
    let said = env.conversation(pr1);
    assert!(
        said.contains(&format!("commit `{}`", &merge1[..7])) && said.contains("did not execute"),
        "{said}"
    );

    // The next pull request, approved and merged by the outsider only, runs nothing.
    let files = cluster_files(&env);
    let (pr2, _, _) = open_pr(&env, "add-cluster", AUTHOR, &borrowed(&files)).await;
    let plan = sticky(&env, pr2).unwrap();
    assert!(plan.contains(UNTRUSTED), "{plan}");
    env.github.submit_review(pr2, OUTSIDER, "APPROVED").unwrap();
    let merge2 = env.github.merge_pull_request(pr2, OUTSIDER).unwrap();
    let apply = env
        .wait_status(&merge2, "tkgops/apply", WAIT)
        .await
        .unwrap();
    let comment = sticky(&env, pr2).unwrap();
    assert_eq!(apply, "failure", "{comment}");
    assert!(
        comment.contains("merged with 0 of the 1 required approval(s) from approvers (alice, bob)"),
        "{comment}"
    );
    assert_nothing_ran(&env);
    wait_for(&env, "the dashboard's untrusted-policy section", |env| {
        dashboard(env).contains("Untrusted policy change")
    })
    .await;
    assert!(
        dashboard(&env).contains(&merge1[..7]),
        "{}",
        dashboard(&env)
    );
    bot.stop().await;
}

/// A direct push of `tkgops.yaml` to the default branch (here: the outsider as the only
/// approver, and the management cluster's kubeconfig pointed elsewhere) is never obeyed: the
/// pushed commit gets a failure status, an approval by the outsider does not count, nothing
/// reaches the management cluster. A pull request approved under the trusted policy that puts
/// the policy back repairs the chain: later plans no longer warn.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_direct_push_of_the_policy_is_reported_never_obeyed_and_repaired_by_an_approved_pull_request(
) {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;
    let trusted_policy = main_policy(&env);
    let files = cluster_files(&env);
    // Planned under the trusted policy (the bot has polled: the trusted commit is set).
    let (pr1, _, plan) = open_pr(&env, "add-cluster", AUTHOR, &borrowed(&files)).await;
    assert_eq!(plan, "success");

    let mut v: serde_yaml::Value =
        serde_yaml::from_str(&with_approvers(&trusted_policy, &[OUTSIDER])).unwrap();
    v["approval"]["destructiveApprovals"] = 1.into();
    v["managementClusters"][0]["kubeconfig"] =
        serde_yaml::from_str("{file: /tmp/attacker.kubeconfig}").unwrap();
    let pushed_policy = serde_yaml::to_string(&v).unwrap();
    push_to_main(&env, &[("tkgops.yaml", &pushed_policy)]);
    let pushed = head_of(&env, "main");
    let state = env
        .wait_status(&pushed, "tkgops/policy", WAIT)
        .await
        .unwrap();
    assert_eq!(state, "failure");

    env.github.submit_review(pr1, OUTSIDER, "APPROVED").unwrap();
    let merge1 = env.github.merge_pull_request(pr1, OUTSIDER).unwrap();
    let apply = env
        .wait_status(&merge1, "tkgops/apply", WAIT)
        .await
        .unwrap();
    let comment = sticky(&env, pr1).unwrap();
    assert_eq!(apply, "failure", "{comment}");
    assert!(
        comment.contains("merged with 0 of the 1 required approval(s) from approvers (alice, bob)"),
        "{comment}"
    );
    assert!(!comment.contains("attacker.kubeconfig"), "{comment}");
    assert_nothing_ran(&env);

    // The approvers of the trusted policy put it back.
    let (pr2, _, _) = open_pr(
        &env,
        "restore-policy",
        AUTHOR,
        &[("tkgops.yaml", &trusted_policy)],
    )
    .await;
    let plan = sticky(&env, pr2).unwrap();
    assert!(plan.contains(UNTRUSTED), "{plan}");
    env.github.submit_review(pr2, APPROVER, "APPROVED").unwrap();
    env.github
        .submit_review(pr2, SECOND_APPROVER, "APPROVED")
        .unwrap();
    let merge2 = env.github.merge_pull_request(pr2, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge2, "tkgops/apply", WAIT)
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr2));
    // A later plan is judged under an intact chain.
    let (pr3, _, _) = open_pr(
        &env,
        "relabel",
        AUTHOR,
        &[("README.md", "a change that touches no cluster\n")],
    )
    .await;
    let plan = sticky(&env, pr3).unwrap();
    assert!(!plan.contains(UNTRUSTED), "{plan}");
    bot.stop().await;
}

/// "Rebase and merge" of a pull request whose first commit makes the outsider an approver and
/// whose second adds a cluster: the base is the default branch's tip before the merge, never
/// the pull request's first commit, so the outsider's approval does not count and nothing
/// runs; the run comment names the rebased range.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebase_merge_is_judged_on_its_whole_range_under_the_policy_before_it() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;
    let before = head_of(&env, "main");
    let policy = with_approvers(&main_policy(&env), &["alice", "bob", OUTSIDER]);
    commit_on_branch(
        &env.remote,
        "main",
        "two-steps",
        "Policy",
        &[("tkgops.yaml", &policy)],
    )
    .unwrap();
    let files = cluster_files(&env);
    commit_on_branch(
        &env.remote,
        "two-steps",
        "two-steps",
        "Cluster",
        &borrowed(&files),
    )
    .unwrap();
    let pr = env
        .github
        .open_pull_request("two-steps", "Two steps", "", AUTHOR)
        .unwrap();
    let head = head_of(&env, "two-steps");
    env.wait_status(&head, "tkgops/plan", WAIT).await.unwrap();
    env.github.submit_review(pr, OUTSIDER, "APPROVED").unwrap();
    let merged = env
        .github
        .merge_pull_request_with(pr, OUTSIDER, MergeMethod::Rebase)
        .unwrap();
    // GitHub's shape: two new commits on top of the old tip.
    let repo = git2::Repository::open_bare(&env.remote).unwrap();
    let last = repo
        .find_commit(git2::Oid::from_str(&merged).unwrap())
        .unwrap();
    let first = last.parent(0).unwrap();
    assert_eq!(first.parent_id(0).unwrap().to_string(), before);
    let apply = env
        .wait_status(&merged, "tkgops/apply", WAIT)
        .await
        .unwrap();
    let comment = sticky(&env, pr).unwrap();
    assert_eq!(apply, "failure", "{comment}");
    assert!(
        comment.contains("merged with 0 of the 2 required approval(s)"),
        "{comment}"
    );
    assert!(
        comment.contains(&format!(
            "Rebase merge of 2 commits, `{}..{}`",
            &before[..7],
            &merged[..7]
        )),
        "{comment}"
    );
    assert_nothing_ran(&env);
    // The first rebased commit is the one that changed the policy without approval.
    let state = env
        .wait_status(&first.id().to_string(), "tkgops/policy", WAIT)
        .await
        .unwrap();
    assert_eq!(state, "failure");
    bot.stop().await;
}

/// Total workers of `cluster`'s MachineDeployments on the management cluster.
fn workers(env: &Environment, cluster: &str) -> i64 {
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    mgmt.list(
        &Gvr::new("cluster.x-k8s.io", "v1beta1", "machinedeployments"),
        Some("default"),
    )
    .into_iter()
    .filter(|m| m["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"] == cluster)
    .map(|m| m["spec"]["replicas"].as_i64().unwrap_or(0))
    .sum()
}

/// Two merges of one cluster handled together, while the bot was down: A scales 3 → 6, then B
/// scales 6 → 9. They run in the order they entered the default branch (B waits behind A), so
/// the cluster ends with 9 workers as Git says, whatever order GitHub lists them in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merges_handled_together_run_in_the_order_they_entered_the_default_branch() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let mut bot = spawn_serve(&env, &timings);
    let files = cluster_files(&env);
    crate::day2::create_through_a_pull_request(&env, &files).await;
    assert_eq!(workers(&env, "team-a-prod"), 3);
    let config = files
        .iter()
        .find(|(p, _)| p.ends_with("cluster-config.yaml"))
        .unwrap();
    assert!(config.1.contains("WORKER_MACHINE_COUNT: 3"));
    let six = config
        .1
        .replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 6");
    let nine = config
        .1
        .replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 9");
    // A, planned and approved.
    let (a, _, _) = open_pr(
        &env,
        "scale-6",
        AUTHOR,
        &[(config.0.as_str(), six.as_str())],
    )
    .await;
    env.github.submit_review(a, APPROVER, "APPROVED").unwrap();
    // B builds on A and is planned with A's change in its diff.
    commit_on_branch(
        &env.remote,
        "scale-6",
        "scale-9",
        "scale-9",
        &[(config.0.as_str(), nine.as_str())],
    )
    .unwrap();
    let b = env
        .github
        .open_pull_request("scale-9", "scale-9", "", AUTHOR)
        .unwrap();
    let head_b = head_of(&env, "scale-9");
    env.wait_status(&head_b, "tkgops/plan", WAIT).await.unwrap();
    env.github.submit_review(b, APPROVER, "APPROVED").unwrap();
    // The bot is down while both merge.
    bot.kill().await.expect("stop the bot");
    let _ = bot.wait().await;
    let merge_a = env.github.merge_pull_request(a, APPROVER).unwrap();
    let merge_b = env.github.merge_pull_request(b, APPROVER).unwrap();
    let mut bot = spawn_serve(&env, &timings);
    let apply_a = env
        .wait_status(&merge_a, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(apply_a, "success", "{}", env.conversation(a));
    let apply_b = env
        .wait_status(&merge_b, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(apply_b, "success", "{}", env.conversation(b));
    assert_eq!(workers(&env, "team-a-prod"), 9, "{}", env.conversation(b));
    bot.kill().await.expect("stop the bot");
}

/// An approval counts for the plan it was given under: when the trusted policy changes (an
/// approved merge moves the TMC endpoint), the open pull request is planned again on the same
/// head with another digest, its sticky comment says the earlier approval no longer counts,
/// and merging on that approval runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_given_for_an_earlier_plan_of_the_same_head_does_not_count() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;
    let files = cluster_files(&env);
    let (pr, _, plan) = open_pr(&env, "add-cluster", AUTHOR, &borrowed(&files)).await;
    assert_eq!(plan, "success");
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();

    // The approvers change the policy: the cluster's TMC steps now name another endpoint.
    let mut v: serde_yaml::Value = serde_yaml::from_str(&main_policy(&env)).unwrap();
    assert!(
        v["tmc"]["endpoint"].is_string(),
        "the example policy changed shape"
    );
    v["tmc"]["endpoint"] = "https://myorg-2.tmc.cloud.vmware.com".into();
    let moved = serde_yaml::to_string(&v).unwrap();
    let (policy_pr, _, _) = open_pr(&env, "tmc-endpoint", AUTHOR, &[("tkgops.yaml", &moved)]).await;
    env.github
        .submit_review(policy_pr, APPROVER, "APPROVED")
        .unwrap();
    env.github
        .submit_review(policy_pr, SECOND_APPROVER, "APPROVED")
        .unwrap();
    let merged = env.github.merge_pull_request(policy_pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merged, "tkgops/apply", WAIT)
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(policy_pr));

    wait_for(&env, "the re-plan saying the approval is stale", |env| {
        sticky(env, pr).is_some_and(|s| s.contains("no longer count"))
    })
    .await;
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env.wait_status(&merge, "tkgops/apply", WAIT).await.unwrap();
    let comment = sticky(&env, pr).unwrap();
    assert_eq!(apply, "failure", "{comment}");
    assert!(
        comment.contains("merged with 0 of the 1 required approval(s)"),
        "{comment}"
    );
    assert_nothing_ran(&env);
    bot.stop().await;
}

/// Anyone with write access can edit the bot's plan comment. tkgops writes it again: an edit
/// that keeps the marker is overwritten, and one that removes it gets a fresh plan comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edited_plan_comment_is_written_again() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;
    let files = cluster_files(&env);
    let (pr, _, _) = open_pr(&env, "add-cluster", AUTHOR, &borrowed(&files)).await;
    let original = sticky(&env, pr).unwrap();
    assert!(original.contains("tkgops plan for"), "{original}");
    let id = env
        .github
        .comments(pr)
        .into_iter()
        .find(|c| c.body == original)
        .unwrap()
        .id;
    let forged = "<!-- tkgops:sticky -->\n### tkgops plan: ✅ nothing to review, merge freely\n";
    env.github.edit_comment(id, OUTSIDER, forged).unwrap();
    wait_for(&env, "the plan comment written again", |env| {
        sticky(env, pr).is_some_and(|s| s.contains("tkgops plan for"))
    })
    .await;
    assert_eq!(sticky(&env, pr).unwrap(), original);
    // The marker edited away: a fresh plan comment is posted.
    env.github
        .edit_comment(id, OUTSIDER, "LGTM, nothing to see here")
        .unwrap();
    wait_for(&env, "a fresh plan comment", |env| {
        env.github
            .comments(pr)
            .iter()
            .any(|c| c.id != id && c.body == original)
    })
    .await;
    bot.stop().await;
}

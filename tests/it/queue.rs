//! Day 2, the per-cluster queue and PR commands (issue 8 items 7 and 8), through the bot on the
//! emulators: a change merged while its cluster has a run in flight waits with a pending status
//! that says behind which run; `/tkgops cancel` and `/tkgops retry` obey the default branch's
//! policy and do what they say.

use std::time::Duration;

use tkgops_emulators::faults::{Fault, FaultAction};
use tkgops_engine::store::RunState;
use tkgops_sandbox::{request_files, Timings, APPROVER};

use crate::e2e::{head_of, start_env};

const SETTINGS: &str = "clusters/team-a-prod/tkgops.yaml";

/// The replies of the bot to `/tkgops` commands on `pr` (comments carrying a command marker).
fn replies(env: &tkgops_sandbox::Environment, pr: u64) -> Vec<String> {
    env.github
        .comments(pr)
        .into_iter()
        .filter(|c| c.body.contains("<!-- tkgops:command:"))
        .map(|c| c.body)
        .collect()
}

async fn wait_reply(env: &tkgops_sandbox::Environment, pr: u64, n: usize) -> String {
    env.github
        .wait_until(Duration::from_secs(60), |_| {
            let r = replies(env, pr);
            (r.len() >= n).then(|| r[n - 1].clone())
        })
        .await
        .unwrap_or_else(|| panic!("no reply #{n} on PR #{pr}: {}", env.conversation(pr)))
}

/// Opens a PR changing the cluster's `tkgops.yaml` to `settings`, approves it, merges it;
/// returns (PR number, merge commit SHA).
async fn merge_settings_change(
    env: &tkgops_sandbox::Environment,
    branch: &str,
    settings: &str,
) -> (u64, String) {
    let pr = env
        .open_pull_request(
            branch,
            branch,
            &[(SETTINGS.to_string(), settings.to_string())],
        )
        .unwrap();
    let head = head_of(env, branch);
    let plan = env
        .wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(plan, "success", "{}", env.conversation(pr));
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    (pr, merge)
}

/// What [`queue_behind_a_slow_group_move`] set up.
struct Queued {
    env: tkgops_sandbox::Environment,
    bot: crate::e2e::InProcessBot,
    pr2: u64,
    merge2: String,
    pr3: u64,
    merge3: String,
}

/// Creates the example cluster (TMC group `team-a`), then:
/// 1. PR #2 moves it to TMC cluster group `team-b`, which TMC does not know yet; its PUT is held
///    20 s (a slow TMC), then answered 404.
/// 2. PR #3 (a new TMC description, on top of PR #2), merged meanwhile, waits: "queued behind run … from PR #2", status
///    pending, on its merge commit and in its run comment.
async fn queue_behind_a_slow_group_move() -> Queued {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot =
        crate::e2e::InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    let (_, files) = request_files(None, &env.vpc);
    crate::day2::create_through_a_pull_request(&env, &files).await;
    let settings = files.iter().find(|(p, _)| p == SETTINGS).unwrap().1.clone();
    env.tmc.set_cluster_groups(&["team-a"]);
    // 1. The group move, with TMC slow to answer the PUT.
    env.tmc.faults().inject(Fault::new(
        Some(axum::http::Method::PUT),
        "/v1alpha1/clusters/",
        FaultAction::Delay(Duration::from_secs(20)),
        Some(1),
    ));
    let (pr2, merge2) = merge_settings_change(
        &env,
        "move-to-team-b",
        &settings.replace("clusterGroup: team-a", "clusterGroup: team-b"),
    )
    .await;
    env.github
        .wait_until(Duration::from_secs(60), |_| {
            (env.tmc
                .faults()
                .log()
                .count_prefix(&axum::http::Method::PUT, "/v1alpha1/clusters/")
                > 0)
            .then_some(())
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "the PUT reached TMC: {:?}\n{}",
                env.tmc.faults().log().all(),
                env.conversation(pr2)
            )
        });

    // 2. A second change to the same cluster waits behind it.
    let (pr3, merge3) = merge_settings_change(
        &env,
        "describe-team-a",
        &settings
            .replace("clusterGroup: team-a", "clusterGroup: team-b")
            .replace(
                "description: Team A production cluster",
                "description: Team A production cluster (payments)",
            ),
    )
    .await;
    let queued = env
        .github
        .wait_until(Duration::from_secs(60), |gh| {
            gh.statuses(&merge3).into_iter().find(|s| {
                s.context == "tkgops/apply"
                    && s.description
                        .as_deref()
                        .is_some_and(|d| d.contains("queued behind"))
            })
        })
        .await
        .expect("PR #3 shows it is queued");
    assert_eq!(queued.state, "pending");
    let run2 = format!("team-a-prod@{}#attach-tmc", &merge2[..12]);
    assert_eq!(
        queued.description,
        Some(format!("queued behind run {run2} from PR #{pr2}"))
    );
    let comment3 = env
        .github
        .wait_until(Duration::from_secs(30), |gh| {
            gh.comments(pr3)
                .into_iter()
                .map(|c| c.body)
                .find(|b| b.contains("🕒 queued behind"))
        })
        .await
        .expect("the run comment says it is queued");
    assert!(
        comment3.contains(&format!("🕒 queued behind run `{run2}` from PR #{pr2}")),
        "{comment3}"
    );

    Queued {
        env,
        bot,
        pr2,
        merge2,
        pr3,
        merge3,
    }
}

/// The queue and both commands, after [`queue_behind_a_slow_group_move`]:
/// 3. A stranger's `/tkgops cancel` is refused; the approver's cancels PR #3's queued run.
/// 4. PR #2's run fails on the unknown group. A stranger's `/tkgops retry` is refused; once the
///    group exists, the approver's retry resumes the run from the failed step and it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_run_says_behind_which_run_and_commands_cancel_and_retry_it() {
    let Queued {
        env,
        bot,
        pr2,
        merge2,
        pr3,
        merge3,
    } = queue_behind_a_slow_group_move().await;
    // 3. Cancel: refused for a stranger, done for the approver.
    env.github
        .add_comment(pr3, "mallory", "/tkgops cancel")
        .unwrap();
    let refusal = wait_reply(&env, pr3, 1).await;
    assert!(
        refusal.contains("@mallory: refused: only the approvers in `tkgops.yaml` on `main`"),
        "{refusal}"
    );
    env.github
        .add_comment(pr3, APPROVER, "/tkgops cancel")
        .unwrap();
    let cancelled = wait_reply(&env, pr3, 2).await;
    assert!(
        cancelled.contains("cancelled before it started"),
        "{cancelled}"
    );
    let apply3 = env
        .wait_status(&merge3, "tkgops/apply", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(apply3, "failure", "{}", env.conversation(pr3));

    // 4. The group move fails on the unknown group.
    let apply2 = env
        .wait_status(&merge2, "tkgops/apply", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(apply2, "failure", "{}", env.conversation(pr2));
    assert!(
        env.conversation(pr2).contains("team-b"),
        "{}",
        env.conversation(pr2)
    );
    env.github
        .add_comment(pr2, "mallory", "/tkgops retry")
        .unwrap();
    let refusal = wait_reply(&env, pr2, 1).await;
    assert!(refusal.contains("may run `/tkgops retry`"), "{refusal}");
    assert!(
        !refusal.contains("author"),
        "the author may not retry: {refusal}"
    );
    env.tmc.set_cluster_groups(&["team-a", "team-b"]);
    env.github
        .add_comment(pr2, APPROVER, "/tkgops retry")
        .unwrap();
    let retried = wait_reply(&env, pr2, 2).await;
    assert!(
        retried.contains("retrying from step “Attach the cluster to Tanzu Mission Control”"),
        "{retried}"
    );
    env.github
        .wait_until(Duration::from_secs(120), |gh| {
            gh.statuses(&merge2)
                .into_iter()
                .find(|s| s.context == "tkgops/apply" && s.state == "success")
        })
        .await
        .unwrap_or_else(|| panic!("the retried run succeeds: {}", env.conversation(pr2)));
    let store = bot.store.clone();

    let cluster = env.tmc.cluster("team-a-prod").expect("attached");
    assert_eq!(
        cluster
            .pointer("/spec/clusterGroupName")
            .and_then(|v| v.as_str()),
        Some("team-b")
    );
    // The journal: one run, its TMC attach step attempted twice (once before, once after the retry);
    // PR #3's run never started a step.
    let runs = store
        .list_runs_by_origin(&tkgops::pr_origin(pr2))
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state, RunState::Succeeded);
    let attach = runs[0]
        .steps
        .iter()
        .find(|s| s.spec.id == "tmc-attach")
        .expect("the attach step");
    assert_eq!(attach.attempts.len(), 2, "{:#?}", runs[0]);
    assert_eq!(
        runs[0].note.as_deref(),
        Some("retried by @alice with `/tkgops retry`")
    );
    let runs3 = store
        .list_runs_by_origin(&tkgops::pr_origin(pr3))
        .await
        .unwrap();
    assert_eq!(runs3[0].state, RunState::Cancelled);
    assert!(runs3[0].steps.iter().all(|s| s.attempts.is_empty()));
    drop(store);
    bot.stop().await;
}

/// The turn of a queued run, after [`queue_behind_a_slow_group_move`]: PR #2's run fails on the
/// unknown group, so the cluster still runs the create commit when PR #3's turn comes. PR #3 is
/// planned again from there; its TMC change carries the whole desired TMC state (group `team-b`
/// and the new description), so it runs as approved, and fails on the same unknown group.
/// `/tkgops retry` of PR #2 is then refused (a later run of the cluster started); once the group
/// exists, PR #3's retry moves the cluster and describes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_run_starts_after_a_failure_and_an_older_run_is_not_retried_over_it() {
    let Queued {
        env,
        bot,
        pr2,
        merge2,
        pr3,
        merge3,
    } = queue_behind_a_slow_group_move().await;
    let apply2 = env
        .wait_status(&merge2, "tkgops/apply", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(apply2, "failure", "{}", env.conversation(pr2));
    let apply3 = env
        .wait_status(&merge3, "tkgops/apply", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(apply3, "failure", "{}", env.conversation(pr3));
    let comment3 = crate::e2e::bot_comments(&env, pr3).remove(0);
    assert!(
        comment3.contains("team-b") && !comment3.contains("re-planned"),
        "{comment3}"
    );
    // Both runs sent a PUT into team-b, PR #3's after PR #2's run ended.
    let puts = env
        .tmc
        .faults()
        .log()
        .count_prefix(&axum::http::Method::PUT, "/v1alpha1/clusters/team-a-prod");
    assert_eq!(puts, 2, "{:?}", env.tmc.faults().log().all());

    env.tmc.set_cluster_groups(&["team-a", "team-b"]);
    env.github
        .add_comment(pr2, APPROVER, "/tkgops retry")
        .unwrap();
    let refused = wait_reply(&env, pr2, 1).await;
    assert!(
        refused.contains("not retried") && refused.contains("came after it"),
        "{refused}"
    );
    env.github
        .add_comment(pr3, APPROVER, "/tkgops retry")
        .unwrap();
    wait_reply(&env, pr3, 1).await;
    env.github
        .wait_until(Duration::from_secs(120), |gh| {
            gh.statuses(&merge3)
                .into_iter()
                .find(|s| s.context == "tkgops/apply" && s.state == "success")
        })
        .await
        .unwrap_or_else(|| panic!("the retried run succeeds: {}", env.conversation(pr3)));
    let cluster = env.tmc.cluster("team-a-prod").expect("attached");
    assert_eq!(
        cluster
            .pointer("/spec/clusterGroupName")
            .and_then(|v| v.as_str()),
        Some("team-b")
    );
    assert_eq!(
        cluster
            .pointer("/meta/description")
            .and_then(|v| v.as_str()),
        Some("Team A production cluster (payments)"),
        "{cluster}"
    );
    bot.stop().await;
}

/// `/tkgops plan` plans an open pull request again: refused for a stranger, done for its author
/// (and the plan comment then says so, with the head SHA); on a merged pull request it says
/// there is nothing to plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_command_replans_for_the_author_and_refuses_a_stranger() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = crate::e2e::InProcessBot::start(&env, &timings, None).await;
    let (_, files) = request_files(None, &env.vpc);
    let pr = env
        .open_pull_request("add-team-a-prod", "Add cluster team-a-prod", &files)
        .unwrap();
    let head = head_of(&env, "add-team-a-prod");
    env.wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();

    env.github
        .add_comment(pr, "mallory", "/tkgops plan")
        .unwrap();
    let refused = wait_reply(&env, pr, 1).await;
    assert!(
        refused.contains("@mallory: refused: only the approvers in `tkgops.yaml` on `main` (alice, bob) and the pull request's author may run `/tkgops plan`."),
        "{refused}"
    );
    env.github
        .add_comment(pr, tkgops_sandbox::AUTHOR, "/tkgops plan")
        .unwrap();
    let planned = wait_reply(&env, pr, 2).await;
    assert!(
        planned.contains(&format!("planned again at {}", &head[..7])),
        "{planned}"
    );
    env.github
        .add_comment(pr, tkgops_sandbox::AUTHOR, "/tkgops apply")
        .unwrap();
    let unknown = wait_reply(&env, pr, 3).await;
    assert!(
        unknown.contains("`apply` is not a tkgops command"),
        "{unknown}"
    );
    // One reply per command, however many polls see it.
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    env.wait_status(&merge, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    env.github
        .add_comment(pr, APPROVER, "/tkgops plan")
        .unwrap();
    let merged = wait_reply(&env, pr, 4).await;
    assert!(merged.contains("this pull request is merged"), "{merged}");
    assert_eq!(replies(&env, pr).len(), 4);
    bot.stop().await;
}

/// `PATCH /repos/{repo}/issues/comments/{id}` as `editor` (through the emulator's REST API,
/// as a person with write access would edit someone else's comment): sets its body to `body`.
/// Returns the comment as GitHub answers it (`created_at`, `updated_at`, `user.login`).
pub(crate) async fn edit_comment_as(
    env: &tkgops_sandbox::Environment,
    editor: &str,
    id: u64,
    body: &str,
) -> serde_json::Value {
    let token = env.token_of(editor).expect("a sandbox user");
    let url = format!(
        "{}/repos/{}/issues/comments/{id}",
        env.github.api_url(),
        tkgops_sandbox::REPOSITORY
    );
    let r = reqwest::Client::new()
        .patch(url)
        .header("authorization", format!("token {token}"))
        .header("user-agent", "tkgops-tests")
        .json(&serde_json::json!({ "body": body }))
        .send()
        .await
        .expect("PATCH the comment");
    assert!(r.status().is_success(), "{}", r.status());
    let c: serde_json::Value = r.json().await.expect("the comment");
    assert_ne!(
        c["created_at"], c["updated_at"],
        "GitHub shows the edit (the comment is older than a second): {c}"
    );
    c
}

/// A command is its author's own words (issue 16 item 6): `outsider` (write access, no approver)
/// edits alice's old "LGTM" on a pull request whose run failed into `/tkgops retry`. The bot
/// answers once that an edited comment is not a command, and nothing is retried: the run stays
/// failed though a retry would now succeed. The same words posted by alice as a new comment
/// retry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edited_comment_is_not_a_command() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot =
        crate::e2e::InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    // TMC does not know the example's cluster group yet: the create fails at the attach.
    env.tmc.set_cluster_groups(&["default"]);
    let (_, files) = request_files(None, &env.vpc);
    let pr = env
        .open_pull_request("add-team-a-prod", "Add cluster team-a-prod", &files)
        .unwrap();
    let head = head_of(&env, "add-team-a-prod");
    env.wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    let lgtm = env.github.add_comment(pr, APPROVER, "LGTM").unwrap();
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(apply, "failure", "{}", env.conversation(pr));
    let attempts = |runs: &[tkgops_engine::store::RunRecord]| -> usize {
        runs.iter()
            .flat_map(|r| r.steps.iter())
            .map(|s| s.attempts.len())
            .sum()
    };
    let runs = bot
        .store
        .list_runs_by_origin(&tkgops::pr_origin(pr))
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state, RunState::Failed);
    let before = attempts(&runs);

    // The group exists now: a retry would succeed. outsider edits alice's LGTM into a retry.
    env.tmc.set_cluster_groups(&["default", "team-a"]);
    let edited = edit_comment_as(&env, tkgops_sandbox::OUTSIDER, lgtm, "/tkgops retry").await;
    assert_eq!(
        edited["user"]["login"], APPROVER,
        "GitHub names the author only"
    );
    let reply = wait_reply(&env, pr, 1).await;
    assert!(
        reply.contains("@alice: this comment was edited after it was posted")
            && reply.contains("so it is not a command and nothing was done")
            && reply.contains("to run `/tkgops retry`, post it as a new comment"),
        "{reply}"
    );
    // The reply is written after the decision: nothing was retried.
    let runs = bot
        .store
        .list_runs_by_origin(&tkgops::pr_origin(pr))
        .await
        .unwrap();
    assert_eq!(runs[0].state, RunState::Failed, "{:#?}", runs[0]);
    assert_eq!(attempts(&runs), before);
    assert_eq!(
        env.github
            .statuses(&merge)
            .into_iter()
            .find(|s| s.context == "tkgops/apply")
            .map(|s| s.state),
        Some("failure".to_string())
    );
    // Edited again: still not a command, and answered once only.
    edit_comment_as(
        &env,
        tkgops_sandbox::OUTSIDER,
        lgtm,
        "/tkgops retry\nplease",
    )
    .await;
    // alice's own new comment is a command: the run is retried and succeeds.
    env.github
        .add_comment(pr, APPROVER, "/tkgops retry")
        .unwrap();
    let retried = wait_reply(&env, pr, 2).await;
    assert!(retried.contains("retrying from step"), "{retried}");
    env.github
        .wait_until(Duration::from_secs(180), |gh| {
            gh.statuses(&merge)
                .into_iter()
                .find(|s| s.context == "tkgops/apply" && s.state == "success")
        })
        .await
        .unwrap_or_else(|| panic!("the retried run succeeds: {}", env.conversation(pr)));
    assert_eq!(replies(&env, pr).len(), 2, "{:#?}", replies(&env, pr));
    bot.stop().await;
}

/// The queue's re-plan runs only approved content. While PR #2's group move is in flight, a
/// direct push (no pull request) relabels the cluster `team: mallory`, and PR #3, approved,
/// changes its description on top of it and waits. When PR #2's run fails, PR #3's run is
/// re-planned from the cluster's deployed commit: the direct push is left out and named on the
/// run, and once the run is retried and succeeds TMC shows the approved description with the
/// approved labels only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_runs_replan_leaves_out_changes_no_approved_merge_brought() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot =
        crate::e2e::InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    let (_, files) = request_files(None, &env.vpc);
    crate::day2::create_through_a_pull_request(&env, &files).await;
    let settings = files.iter().find(|(p, _)| p == SETTINGS).unwrap().1.clone();
    assert!(
        settings.contains("  team: team-a\n"),
        "the example changed shape"
    );
    env.tmc.set_cluster_groups(&["team-a"]);
    env.tmc.faults().inject(Fault::new(
        Some(axum::http::Method::PUT),
        "/v1alpha1/clusters/",
        FaultAction::Delay(Duration::from_secs(20)),
        Some(1),
    ));
    let moved = settings.replace("clusterGroup: team-a", "clusterGroup: team-b");
    let (pr2, merge2) = merge_settings_change(&env, "move-to-team-b", &moved).await;
    env.github
        .wait_until(Duration::from_secs(60), |_| {
            (env.tmc
                .faults()
                .log()
                .count_prefix(&axum::http::Method::PUT, "/v1alpha1/clusters/")
                > 0)
            .then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("the PUT reached TMC: {}", env.conversation(pr2)));
    // A direct push relabels the cluster: no pull request, no approval.
    let relabelled = moved.replace("  team: team-a\n", "  team: mallory\n");
    let pushed = tkgops_emulators::git_remote::commit_on_branch(
        &env.remote,
        "main",
        "main",
        "relabel",
        &[(SETTINGS, relabelled.as_str())],
    )
    .unwrap();
    // PR #3, approved, changes the description on top of it and waits behind PR #2's run.
    let (pr3, merge3) = merge_settings_change(
        &env,
        "describe-team-a",
        &relabelled.replace(
            "description: Team A production cluster",
            "description: Team A production cluster (payments)",
        ),
    )
    .await;
    let apply2 = env
        .wait_status(&merge2, "tkgops/apply", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(apply2, "failure", "{}", env.conversation(pr2));
    let apply3 = env
        .wait_status(&merge3, "tkgops/apply", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        apply3,
        "failure",
        "team-b does not exist yet: {}",
        env.conversation(pr3)
    );
    let runs3 = bot
        .store
        .list_runs_by_origin(&tkgops::pr_origin(pr3))
        .await
        .unwrap();
    let note = runs3[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("left out")
            && note.contains(&pushed[..7])
            && note.contains("pushed without a pull request"),
        "{note}"
    );
    // Retried once the group exists: the approved description, never the pushed label.
    env.tmc.set_cluster_groups(&["team-a", "team-b"]);
    env.github
        .add_comment(pr3, APPROVER, "/tkgops retry")
        .unwrap();
    wait_reply(&env, pr3, 1).await;
    env.github
        .wait_until(Duration::from_secs(120), |gh| {
            gh.statuses(&merge3)
                .into_iter()
                .find(|s| s.context == "tkgops/apply" && s.state == "success")
        })
        .await
        .unwrap_or_else(|| panic!("the retried run succeeds: {}", env.conversation(pr3)));
    let cluster = env.tmc.cluster("team-a-prod").expect("attached");
    assert_eq!(
        cluster
            .pointer("/meta/description")
            .and_then(|v| v.as_str()),
        Some("Team A production cluster (payments)"),
        "{cluster}"
    );
    assert_eq!(
        cluster
            .pointer("/meta/labels/team")
            .and_then(|v| v.as_str()),
        Some("team-a"),
        "{cluster}"
    );
    bot.stop().await;
}

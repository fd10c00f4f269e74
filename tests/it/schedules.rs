//! Scheduled upgrade runs through the bot (issue 8 item 6), on a simulated clock: `propose`
//! schedules fire once per cron time in their time zone, inside their window; bump pull
//! requests are grouped per target TKR and capped; a restart never fires twice; a fire missed
//! while the bot was down is recorded as missed; the fleet dashboard issue says it all.

use std::sync::{Arc, Mutex};

use std::time::Duration;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use tkgops_emulators::kube::Gvr;
use tkgops_engine::store::RunState;
use tkgops_sandbox::{request_files, Timings, APPROVER, AUTHOR, MANAGEMENT_CLUSTER};

const OLD: &str = "v1.24.11+vmware.1-tkg.1";
const NEW: &str = "v1.25.7+vmware.2-tkg.1";

use crate::e2e::start_env;

/// A file of `main` of the config repository.
fn main_file(env: &tkgops_sandbox::Environment, path: &str) -> String {
    branch_file(env, "main", path)
}

/// A file of branch `branch` of the config repository.
fn branch_file(env: &tkgops_sandbox::Environment, branch: &str, path: &str) -> String {
    let repo = git2::Repository::open_bare(&env.remote).unwrap();
    let tree = repo
        .find_reference(&format!("refs/heads/{branch}"))
        .unwrap()
        .peel_to_commit()
        .unwrap()
        .tree()
        .unwrap();
    let blob = tree
        .get_path(std::path::Path::new(path))
        .unwrap()
        .to_object(&repo)
        .unwrap()
        .peel_to_blob()
        .unwrap();
    String::from_utf8(blob.content().to_vec()).unwrap()
}

const SCHEDULES: &str = r#"schedules:
  - name: weekly-patch
    cron: "0 2 * * SAT"
    timezone: Europe/Berlin
    window: 4h
    selector: {matchLabels: {env: prod}}
    target: latest-patch
    action: propose
  - name: minor-bumps
    cron: "0 2 * * SAT"
    timezone: Europe/Berlin
    window: 4h
    selector: {matchLabels: {env: prod}}
    target: latest-minor
    action: propose
    propose: {maxOpenPRs: 5, maxPRsPerHour: 1}
"#;

/// Builds a bot on `env` whose clock reads `clock`; polled by hand.
async fn bot_at(
    env: &tkgops_sandbox::Environment,
    clock: &Arc<Mutex<DateTime<Utc>>>,
) -> tkgops::Bot {
    crate::e2e::set_aws_env(env);
    let cfg = env.bot_config(&Timings::default());
    let creds = tkgops::serve::Credentials {
        github_token: tkgops_sandbox::GITHUB_TOKEN.into(),
        tmc_token: Some(tkgops_sandbox::TMC_TOKEN.into()),
    };
    let bot = tkgops::serve::build_with(&cfg, creds).await.expect("bot");
    let c = clock.clone();
    bot.set_clock(Arc::new(move || *c.lock().unwrap()));
    bot
}

fn dashboard(env: &tkgops_sandbox::Environment) -> String {
    let issues = env.github.issues();
    assert_eq!(issues.len(), 1, "one dashboard issue: {issues:?}");
    assert_eq!(issues[0].title, "tkgops fleet dashboard");
    issues[0].body.clone()
}

fn bump_pulls(env: &tkgops_sandbox::Environment) -> Vec<(u64, String, String)> {
    env.github
        .pull_requests()
        .into_iter()
        .filter(|p| p.head_ref.starts_with("tkgops/schedule/"))
        .map(|p| (p.number, p.head_ref, p.title))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn propose_schedules_fire_once_in_their_window_capped_and_survive_restarts() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    // The fleet on main: team-a-prod at v1.24.9 (a newer patch and minor are offered),
    // team-b-prod at v1.24.11 (only a newer minor), team-c-dev (not selected), team-d-prod at
    // v1.23.17 (the next minor is v1.24.11).
    let repo = main_file(&env, "tkgops.yaml");
    let repo = repo.replace(
        "  tkgVersion: '2.2'\n",
        "  tkgVersion: '2.2'\n  tkrs: [v1.24.9+vmware.1-tkg.1]\n",
    );
    assert!(repo.contains("tkrs: [v1.24.9"), "{repo}");
    let repo = format!("{repo}{SCHEDULES}");
    let (_, files) = request_files(None, &env.vpc);
    let mut all: Vec<(String, String)> = vec![("tkgops.yaml".into(), repo)];
    for (name, tkr, env_label) in [
        ("team-a-prod", "v1.24.9+vmware.1-tkg.1", "prod"),
        ("team-b-prod", "v1.24.11+vmware.1-tkg.1", "prod"),
        ("team-c-dev", "v1.24.9+vmware.1-tkg.1", "dev"),
        ("team-d-prod", "v1.23.17+vmware.1-tkg.1", "prod"),
    ] {
        for (path, text) in &files {
            let text = text
                .replace("team-a-prod", name)
                .replace("v1.25.7+vmware.2-tkg.1", tkr)
                .replace("env: prod", &format!("env: {env_label}"));
            let text = if path.ends_with("tkgops.yaml") {
                format!("# owned by team {name}\n{text}")
            } else {
                text
            };
            all.push((path.replace("team-a-prod", name), text));
        }
    }
    let owned: Vec<(&str, &str)> = all.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    tkgops_emulators::git_remote::commit_on_branch(&env.remote, "main", "main", "fleet", &owned)
        .unwrap();

    // Saturday 5 December 2026, 01:30 in Berlin (00:30Z): before the 02:00 fire.
    let clock = Arc::new(Mutex::new(
        Utc.with_ymd_and_hms(2026, 12, 5, 0, 30, 0).unwrap(),
    ));
    let bot = bot_at(&env, &clock).await;
    bot.poll_once().await.unwrap();
    assert!(bump_pulls(&env).is_empty());
    let d = dashboard(&env);
    assert!(
        d.contains("| `team-a-prod` | `v1.24.9+vmware.1-tkg.1` | → `v1.24.11+vmware.1-tkg.1` by weekly-patch<br>→ `v1.25.7+vmware.2-tkg.1` by minor-bumps |"),
        "{d}"
    );
    assert!(
        d.contains("| `team-c-dev` | `v1.24.9+vmware.1-tkg.1` | up to date |"),
        "{d}"
    );
    assert!(
        d.contains("| `weekly-patch` | propose | latest-patch | never |  | 2026-12-05 02:00 Europe/Berlin |"),
        "{d}"
    );

    // 02:05 in Berlin (01:05Z): both fire. weekly-patch proposes team-a → v1.24.11;
    // minor-bumps has two groups (v1.24.11 for team-d; v1.25.7 for team-a and team-b) and may
    // open one pull request an hour: the lower target first, the other waits.
    *clock.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 5, 1, 5, 0).unwrap();
    bot.poll_once().await.unwrap();
    let pulls = bump_pulls(&env);
    let branches: Vec<&str> = pulls.iter().map(|(_, b, _)| b.as_str()).collect();
    assert_eq!(
        branches,
        [
            "tkgops/schedule/weekly-patch/v1.24.11-vmware.1-tkg.1",
            "tkgops/schedule/minor-bumps/v1.24.11-vmware.1-tkg.1",
        ],
        "{pulls:?}"
    );
    assert_eq!(
        pulls[0].2,
        "Upgrade 1 cluster(s) to TKR v1.24.11+vmware.1-tkg.1 (schedule weekly-patch)"
    );
    // The bump changed the tkr line only, comments kept.
    let bumped = branch_file(
        &env,
        "tkgops/schedule/weekly-patch/v1.24.11-vmware.1-tkg.1",
        "clusters/team-a-prod/tkgops.yaml",
    );
    let before = main_file(&env, "clusters/team-a-prod/tkgops.yaml");
    assert_eq!(
        bumped,
        before.replace("v1.24.9+vmware.1-tkg.1", "v1.24.11+vmware.1-tkg.1")
    );
    assert!(bumped.starts_with("# owned by team team-a-prod\n"));
    let d = dashboard(&env);
    assert!(
        d.contains(&format!(
            "| `weekly-patch` | propose | latest-patch | 2026-12-05 02:00 Europe/Berlin | 1 bump(s) proposed (#{}) | 2026-12-12 02:00 Europe/Berlin |",
            pulls[0].0
        )),
        "{d}"
    );

    // Polling again, and after a restart at the same time: no second fire.
    bot.poll_once().await.unwrap();
    drop(bot);
    let bot = bot_at(&env, &clock).await;
    bot.poll_once().await.unwrap();
    assert_eq!(bump_pulls(&env).len(), 2);
    let d = dashboard(&env);
    assert!(
        d.contains(&format!(
            "| `minor-bumps` | propose | latest-minor | 2026-12-05 02:00 Europe/Berlin | 1 bump(s) proposed, 2 waiting for the caps (maxOpenPRs 5, maxPRsPerHour 1) (#{}) |",
            pulls[1].0
        )),
        "{d}"
    );

    // The bot is down through the next window (12 December, 01:00Z–05:00Z) and back at 06:30Z:
    // the fire is recorded as missed, nothing runs late.
    drop(bot);
    *clock.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 12, 6, 30, 0).unwrap();
    let bot = bot_at(&env, &clock).await;
    bot.poll_once().await.unwrap();
    assert_eq!(bump_pulls(&env).len(), 2);
    let d = dashboard(&env);
    assert!(
        d.contains("### Missed fires")
            && d.contains("- `weekly-patch`: 2026-12-12 02:00 Europe/Berlin (missed: its window closed while the bot was down)"),
        "{d}"
    );
    assert!(d.contains("| 2026-12-19 02:00 Europe/Berlin |"), "{d}");

    // The next window: the capped group is proposed now; the open pull requests are kept.
    *clock.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 19, 1, 30, 0).unwrap();
    bot.poll_once().await.unwrap();
    let pulls = bump_pulls(&env);
    assert_eq!(pulls.len(), 3, "{pulls:?}");
    assert_eq!(
        pulls[2].1,
        "tkgops/schedule/minor-bumps/v1.25.7-vmware.2-tkg.1"
    );
    assert_eq!(
        pulls[2].2,
        "Upgrade 2 cluster(s) to TKR v1.25.7+vmware.2-tkg.1 (schedule minor-bumps)"
    );
    assert_eq!(env.github.issues().len(), 1, "one dashboard, edited");
}

/// A Node of workload cluster `cluster` turns `Ready` `status`; waits until the cluster's
/// MachineHealthChecks count `unhealthy` unhealthy Machines.
async fn set_node_ready(
    env: &tkgops_sandbox::Environment,
    cluster: &str,
    status: &str,
    unhealthy: i64,
) {
    let wl = env.kube.cluster(cluster).expect("workload cluster");
    let nodes = Gvr::new("", "v1", "nodes");
    let node = wl.list(&nodes, None).into_iter().next().expect("a node");
    let name = node["metadata"]["name"].as_str().unwrap().to_string();
    let mut st = node["status"].clone();
    for c in st["conditions"].as_array_mut().unwrap() {
        if c["type"] == "Ready" {
            c["status"] = serde_json::json!(status);
        }
    }
    wl.update_status(&nodes, None, &name, st).unwrap();
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let mhcs = Gvr::new("cluster.x-k8s.io", "v1beta1", "machinehealthchecks");
    let count = || -> i64 {
        mgmt.list(&mhcs, Some("default"))
            .iter()
            .filter(|m| m["spec"]["clusterName"] == cluster)
            .map(|m| {
                m["status"]["expectedMachines"].as_i64().unwrap_or(0)
                    - m["status"]["currentHealthy"].as_i64().unwrap_or(0)
            })
            .sum()
    };
    let mut events = mgmt.subscribe();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while count() != unhealthy {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "the MachineHealthChecks of {cluster} never counted {unhealthy} unhealthy"
        );
        let _ = tokio::time::timeout(left, events.recv()).await;
    }
}

/// The run of `cluster` in the runs of PR `pr`.
async fn run_of(
    bot: &tkgops::Bot,
    pr: u64,
    cluster: &str,
) -> Option<tkgops_engine::store::RunRecord> {
    bot.store()
        .list_runs_by_origin(&tkgops::pr_origin(pr))
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.cluster == cluster)
}

/// The request files of team-a-prod (label `tier: canary`) and team-b-prod at TKR v1.24.11.
fn canary_and_rest(env: &tkgops_sandbox::Environment) -> Vec<(String, String)> {
    let (_, files) = request_files(None, &env.vpc);
    let mut all = Vec::new();
    for (name, extra) in [("team-a-prod", "\n  tier: canary"), ("team-b-prod", "")] {
        for (path, text) in &files {
            let text = text
                .replace("team-a-prod", name)
                .replace(NEW, OLD)
                .replace("  team: team-a", &format!("  team: team-a{extra}"));
            all.push((path.replace("team-a-prod", name), text));
        }
    }
    all
}

/// Commits `schedules` (YAML) at the end of `tkgops.yaml` on main.
/// Adds `schedules` to the policy through a pull request approved with
/// `approval.destructiveApprovals` (alice and bob), so that it becomes the trusted policy (a
/// direct push to the default branch never does). `bot` is polled by hand when given; else a
/// running bot is waited for.
pub(crate) async fn add_schedule(
    env: &tkgops_sandbox::Environment,
    schedules: &str,
    bot: Option<&tkgops::Bot>,
) {
    let repo = format!("{}{schedules}", main_file(env, "tkgops.yaml"));
    tkgops_emulators::git_remote::commit_on_branch(
        &env.remote,
        "main",
        "add-schedule",
        "weekly apply",
        &[("tkgops.yaml", repo.as_str())],
    )
    .unwrap();
    let pr = env
        .github
        .open_pull_request("add-schedule", "Add a schedule", "", tkgops_sandbox::AUTHOR)
        .unwrap();
    let head = crate::e2e::head_of(env, "add-schedule");
    if let Some(bot) = bot {
        bot.poll_once().await.unwrap();
    }
    let plan = env
        .wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(plan, "success", "{}", env.conversation(pr));
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    env.github.submit_review(pr, "bob", "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    if let Some(bot) = bot {
        bot.poll_once().await.unwrap();
    }
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr));
}

pub(crate) const APPLY_SCHEDULE: &str = r#"schedules:
  - name: weekly-apply
    cron: "0 2 * * SAT"
    timezone: Europe/Berlin
    window: 4h
    selector: {matchLabels: {env: prod}}
    target: latest-minor
    action: apply
    waves:
      - {name: canary, selector: {matchLabels: {tier: canary}}, soak: 30m, maxConcurrent: 1}
      - {name: rest, selector: {}, maxConcurrent: 5}
"#;

/// `action: apply` with two waves, on a simulated clock: the canary wave upgrades first and
/// soaks; a health regression (an unhealthy Node, seen by its MachineHealthCheck) halts it and
/// the halt is reported on the dashboard issue; the halt survives the soak's end and a restart;
/// a stranger cannot resume it, an approver can; the rest wave then upgrades; the bump commits
/// are on the record pull request, and the fire is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_apply_schedule_upgrades_wave_by_wave_halts_on_a_regression_and_resumes() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    // Friday 4 December 2026: the bot creates team-a-prod (canary) and team-b-prod at v1.24.11.
    let clock = Arc::new(Mutex::new(
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap(),
    ));
    let bot = bot_at(&env, &clock).await;
    let all = canary_and_rest(&env);
    let pr = env
        .open_pull_request("add-clusters", "Add two clusters", &all)
        .unwrap();
    bot.poll_once().await.unwrap();
    let head = crate::e2e::head_of(&env, "add-clusters");
    assert_eq!(
        env.wait_status(&head, "tkgops/plan", Duration::from_secs(60))
            .await
            .unwrap(),
        "success",
        "{}",
        env.conversation(pr)
    );
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    bot.poll_once().await.unwrap();
    assert_eq!(
        env.wait_status(&merge, "tkgops/apply", Duration::from_secs(240))
            .await
            .unwrap(),
        "success",
        "{}",
        env.conversation(pr)
    );
    assert_eq!(
        crate::e2e::kcp_version(&env, "team-a-prod"),
        "v1.24.11+vmware.1"
    );
    add_schedule(&env, APPLY_SCHEDULE, Some(&bot)).await;
    let main_before = crate::e2e::head_of(&env, "main");

    // Saturday 02:05 in Berlin (01:05Z): the fire starts the canary wave only.
    *clock.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 5, 1, 5, 0).unwrap();
    bot.poll_once().await.unwrap();
    let branch = "tkgops/schedule/weekly-apply/apply-20261205T010000Z";
    let record = env
        .github
        .pull_requests()
        .into_iter()
        .find(|p| p.head_ref == branch)
        .expect("the record pull request");
    assert_eq!(
        record.title,
        "Record scheduled upgrade weekly-apply of 2026-12-05 02:00 Europe/Berlin"
    );
    assert!(
        branch_file(&env, branch, "clusters/team-a-prod/tkgops.yaml")
            .contains(&format!("tkr: {NEW}"))
    );
    assert!(
        branch_file(&env, branch, "clusters/team-b-prod/tkgops.yaml")
            .contains(&format!("tkr: {OLD}"))
    );
    let wave1 = crate::e2e::head_of(&env, branch);
    {
        let repo = git2::Repository::open_bare(&env.remote).unwrap();
        let c = repo
            .find_commit(git2::Oid::from_str(&wave1).unwrap())
            .unwrap();
        assert_eq!(c.parent_id(0).unwrap().to_string(), main_before);
        assert_eq!(
            c.time().seconds(),
            Utc.with_ymd_and_hms(2026, 12, 5, 1, 0, 0)
                .unwrap()
                .timestamp(),
            "authored at the fire time: a restart recreates the same commit"
        );
    }
    // alice says she watches the canary, on the dashboard issue the fire opened.
    let dash = env.github.issues()[0].number;
    let watching = env
        .github
        .add_comment(dash, APPROVER, "Watching the canary.")
        .unwrap();
    let run_a = run_of(&bot, record.number, "team-a-prod")
        .await
        .expect("the canary's run");
    assert_eq!(run_a.commit_sha, wave1);
    assert!(
        run_of(&bot, record.number, "team-b-prod").await.is_none(),
        "the rest wave waits"
    );
    let run_a = bot.engine().wait(&run_a.id).await.unwrap();
    assert_eq!(run_a.state, RunState::Succeeded, "{run_a:#?}");
    assert_eq!(
        crate::e2e::kcp_version(&env, "team-a-prod"),
        "v1.25.7+vmware.2"
    );

    // The run is seen: the canary soaks for 30 minutes; the rest wave still waits.
    bot.poll_once().await.unwrap();
    let d = dashboard(&env);
    assert!(d.contains("| canary | soaking until 2026-12-05 02:35 Europe/Berlin | ✅ `team-a-prod` → `v1.25.7+vmware.2-tkg.1` |"), "{d}");
    assert!(
        d.contains("| rest | pending | ⏸️ `team-b-prod` → `v1.25.7+vmware.2-tkg.1` |"),
        "{d}"
    );
    assert!(run_of(&bot, record.number, "team-b-prod").await.is_none());

    // A Node of the canary turns NotReady: its MachineHealthCheck counts it; the soak halts.
    set_node_ready(&env, "team-a-prod", "False", 1).await;
    *clock.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 5, 1, 20, 0).unwrap();
    bot.poll_once().await.unwrap();
    let d = dashboard(&env);
    assert!(d.contains("⛔ **Halted** in wave `canary`: `team-a-prod` regressed while soaking: MachineHealthCheck unhealthy Machines rose from 0 to 1"), "{d}");
    let dash_no = env.github.issues()[0].number;
    let halt_comments: Vec<String> = env
        .github
        .comments(dash_no)
        .into_iter()
        .map(|c| c.body)
        .filter(|b| b.contains("<!-- tkgops:halt:weekly-apply/"))
        .collect();
    assert_eq!(halt_comments.len(), 1, "{halt_comments:?}");
    assert!(
        halt_comments[0].contains("`/tkgops resume weekly-apply`"),
        "{}",
        halt_comments[0]
    );

    // The soak time passes, poll after poll: still halted (the halt is in the journal), the
    // rest wave never starts, and the halt is not reported twice.
    for minute in [45, 50] {
        *clock.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 5, 1, minute, 0).unwrap();
        bot.poll_once().await.unwrap();
    }
    let journal = bot
        .journal()
        .fire(
            "weekly-apply",
            Utc.with_ymd_and_hms(2026, 12, 5, 1, 0, 0).unwrap(),
        )
        .await
        .unwrap()
        .expect("the fire record");
    let journal = serde_json::to_value(journal).unwrap();
    assert_eq!(journal["state"], "applying");
    assert_eq!(journal["apply"]["halt"]["wave"], "canary");
    assert!(run_of(&bot, record.number, "team-b-prod").await.is_none());
    assert!(dashboard(&env).contains("⛔ **Halted**"));
    assert_eq!(
        env.github
            .comments(dash_no)
            .iter()
            .filter(|c| c.body.contains("<!-- tkgops:halt:"))
            .count(),
        1
    );

    // outsider (write access) edits alice's comment into a resume: an edited comment is not
    // a command (issue 16 item 6); the halt stays.
    assert_eq!(dash, dash_no);
    crate::queue::edit_comment_as(
        &env,
        tkgops_sandbox::OUTSIDER,
        watching,
        "/tkgops resume weekly-apply",
    )
    .await;
    bot.poll_once().await.unwrap();
    let edited_reply = env
        .github
        .comments(dash_no)
        .into_iter()
        .find(|c| {
            c.body
                .contains(&format!("<!-- tkgops:command:{watching} -->"))
        })
        .map(|c| c.body)
        .unwrap_or_default();
    assert!(
        edited_reply.contains("@alice: this comment was edited after it was posted")
            && edited_reply.contains("to run `/tkgops resume`, post it as a new comment"),
        "{edited_reply}"
    );
    assert!(dashboard(&env).contains("⛔ **Halted**"));
    assert!(run_of(&bot, record.number, "team-b-prod").await.is_none());

    // A stranger cannot resume; on a pull request the command is refused too.
    let c1 = env
        .github
        .add_comment(dash_no, AUTHOR, "/tkgops resume weekly-apply")
        .unwrap();
    let c2 = env
        .github
        .add_comment(record.number, APPROVER, "/tkgops resume")
        .unwrap();
    bot.poll_once().await.unwrap();
    let reply = |n: u64, id: u64| {
        env.github
            .comments(n)
            .into_iter()
            .find(|c| c.body.contains(&format!("<!-- tkgops:command:{id} -->")))
            .map(|c| c.body)
            .unwrap_or_default()
    };
    assert!(
        reply(dash_no, c1).contains("refused: only the approvers"),
        "{}",
        reply(dash_no, c1)
    );
    assert!(
        reply(record.number, c2).contains("works on the fleet dashboard issue only"),
        "{}",
        reply(record.number, c2)
    );
    assert!(dashboard(&env).contains("⛔ **Halted**"));

    // The Node recovers; an approver resumes: the canary soaks again from now (01:50Z).
    set_node_ready(&env, "team-a-prod", "True", 0).await;
    let c3 = env
        .github
        .add_comment(dash_no, APPROVER, "/tkgops resume weekly-apply")
        .unwrap();
    bot.poll_once().await.unwrap();
    assert!(
        reply(dash_no, c3)
            .contains("`weekly-apply` (fire 2026-12-05 01:00 UTC): wave `canary` continues"),
        "{}",
        reply(dash_no, c3)
    );
    bot.poll_once().await.unwrap();
    let d = dashboard(&env);
    assert!(!d.contains("⛔"), "{d}");
    assert!(
        d.contains("| canary | soaking until 2026-12-05 03:20 Europe/Berlin |"),
        "{d}"
    );
    assert!(run_of(&bot, record.number, "team-b-prod").await.is_none());

    // The soak passes healthy: the rest wave starts on its own bump commit.
    *clock.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 5, 2, 21, 0).unwrap();
    bot.poll_once().await.unwrap();
    let run_b = run_of(&bot, record.number, "team-b-prod")
        .await
        .expect("the rest wave's run");
    let wave2 = crate::e2e::head_of(&env, branch);
    assert_eq!(run_b.commit_sha, wave2);
    {
        let repo = git2::Repository::open_bare(&env.remote).unwrap();
        let c = repo
            .find_commit(git2::Oid::from_str(&wave2).unwrap())
            .unwrap();
        assert_eq!(c.parent_id(0).unwrap().to_string(), wave1);
    }
    let run_b = bot.engine().wait(&run_b.id).await.unwrap();
    assert_eq!(run_b.state, RunState::Succeeded, "{run_b:#?}");
    bot.poll_once().await.unwrap();
    let d = dashboard(&env);
    assert!(d.contains("| `weekly-apply` | apply | latest-minor | 2026-12-05 02:00 Europe/Berlin | 2/2 cluster(s) upgraded in 2 wave(s) |"), "{d}");
    assert_eq!(
        crate::e2e::kcp_version(&env, "team-b-prod"),
        "v1.25.7+vmware.2"
    );
    // Each wave's runs have their own comment on the record pull request, beside its plan.
    for commit in [&wave1, &wave2] {
        let marker = format!("<!-- tkgops:scheduled-run:{commit} -->");
        let comment = env
            .github
            .wait_until(Duration::from_secs(30), |gh| {
                gh.comments(record.number)
                    .into_iter()
                    .find(|c| c.body.contains(&marker) && c.body.contains("succeeded"))
            })
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no run comment for {commit}: {}",
                    env.conversation(record.number)
                )
            });
        assert!(
            !comment.body.contains("<!-- tkgops:sticky -->"),
            "{}",
            comment.body
        );
    }
    // The record pull request's heads are the bot's own wave commits: not planned again (a
    // fleet's plan would be one details comment per cluster), a short note instead, and a
    // success status so that it can be merged.
    let sticky = crate::e2e::bot_comments(&env, record.number);
    assert_eq!(sticky.len(), 1, "one sticky comment: {sticky:#?}");
    assert!(
        sticky[0].contains("record of the scheduled upgrade `weekly-apply`")
            && sticky[0].contains(&format!("Head `{}`", &wave2[..7]))
            && !sticky[0].contains("tkgops plan for"),
        "{}",
        sticky[0]
    );
    assert!(
        !env.conversation(record.number)
            .contains("tkgops:plan-details"),
        "{}",
        env.conversation(record.number)
    );
    let status = env
        .github
        .statuses(&wave2)
        .into_iter()
        .find(|s| s.context == "tkgops/plan")
        .expect("a plan status on the last wave commit");
    assert_eq!(status.state, "success");
    // Merging it runs nothing again.
    let merge = env
        .github
        .merge_pull_request(record.number, APPROVER)
        .unwrap();
    bot.poll_once().await.unwrap();
    assert!(
        env.github.statuses(&merge).is_empty(),
        "{:?}",
        env.github.statuses(&merge)
    );
    // Exactly one run per cluster: nothing was started twice.
    assert_eq!(
        bot.store()
            .list_runs_by_origin(&tkgops::pr_origin(record.number))
            .await
            .unwrap()
            .len(),
        2
    );
}

/// A scheduled apply survives `kill -9` of the real `tkgops serve` binary (on its real clock:
/// the schedule fires at the next minute): the fire is not fired again, no run is submitted
/// twice, the interrupted wave finishes and the next wave starts after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_bot_resumes_a_scheduled_apply_without_firing_or_patching_twice() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let spawn_bot = || crate::e2e::spawn_serve(&env, &timings);
    let mut bot = spawn_bot();
    let all = canary_and_rest(&env);
    let pr = env
        .open_pull_request("add-clusters", "Add two clusters", &all)
        .unwrap();
    let head = crate::e2e::head_of(&env, "add-clusters");
    env.wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    assert_eq!(
        env.wait_status(&merge, "tkgops/apply", Duration::from_secs(240))
            .await
            .unwrap(),
        "success",
        "{}",
        env.conversation(pr)
    );
    // The schedule fires at the next minute boundary at least 10 s away (UTC).
    let fire = (Utc::now() + chrono::Duration::seconds(70))
        .with_second(0)
        .unwrap()
        .with_nanosecond(0)
        .unwrap();
    let schedule = APPLY_SCHEDULE
        .replace(
            "0 2 * * SAT",
            &format!("{} {} * * *", fire.minute(), fire.hour()),
        )
        .replace("    timezone: Europe/Berlin\n", "")
        .replace("soak: 30m, ", "");
    add_schedule(&env, &schedule, None).await;

    // Kill the bot once the canary's control plane runs the new version.
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let mut events = mgmt.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    while crate::e2e::kcp_version(&env, "team-a-prod") != "v1.25.7+vmware.2" {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "the canary was never upgraded");
        let _ = tokio::time::timeout(left, events.recv()).await;
    }
    assert_ne!(
        crate::e2e::kcp_version(&env, "team-b-prod"),
        "v1.25.7+vmware.2"
    );
    bot.kill().await.expect("SIGKILL");
    let _ = bot.wait().await;
    let mut bot = spawn_bot();
    let done = env
        .github
        .wait_until(Duration::from_secs(180), |gh| {
            gh.issues().into_iter().find(|i| {
                i.body.contains("2/2 cluster(s) upgraded in 2 wave(s)") || i.body.contains('⛔')
            })
        })
        .await
        .unwrap_or_else(|| panic!("the apply never finished: {:?}", env.github.issues()));
    bot.kill().await.ok();
    let _ = bot.wait().await;
    assert!(!done.body.contains('⛔'), "{}", done.body);
    assert_eq!(
        crate::e2e::kcp_version(&env, "team-b-prod"),
        "v1.25.7+vmware.2"
    );
    // One record pull request; one upgrade write per cluster (after its creation's apply); one
    // run per cluster, whose upgrade phase ran once.
    let records: Vec<_> = env
        .github
        .pull_requests()
        .into_iter()
        .filter(|p| {
            p.head_ref
                .starts_with("tkgops/schedule/weekly-apply/apply-")
        })
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    for cluster in ["team-a-prod", "team-b-prod"] {
        let writes: Vec<String> = mgmt
            .writes()
            .into_iter()
            .filter(|w| w.gvr.plural == "clusters" && w.name == cluster && !w.dry_run)
            .map(|w| w.verb)
            .collect();
        assert_eq!(
            writes,
            ["apply", "apply"],
            "{cluster}: the creation and one upgrade of spec.topology.version"
        );
    }
    let store = Arc::new(
        tkgops_engine::store::SledStore::open(&env.workdir.join("bot-state").join("journal"))
            .unwrap(),
    );
    use tkgops_engine::store::Store;
    let runs = store
        .list_runs_by_origin(&tkgops::pr_origin(records[0].number))
        .await
        .unwrap();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    for r in &runs {
        assert_eq!(r.state, RunState::Succeeded);
        let patch = r
            .steps
            .iter()
            .find(|s| s.spec.id == "upgrade-cluster")
            .unwrap();
        assert_eq!(patch.attempts.len(), 1, "{r:#?}");
    }
    let (journal, _) = tkgops::BotJournal::open(store).await.unwrap();
    let fires = journal.fires("weekly-apply").await.unwrap();
    assert_eq!(fires.len(), 1, "fired once");
}

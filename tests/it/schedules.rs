//! Scheduled upgrade runs through the bot (issue 8 item 6), on a simulated clock: `propose`
//! schedules fire once per cron time in their time zone, inside their window; bump pull
//! requests are grouped per target TKR and capped; a restart never fires twice; a fire missed
//! while the bot was down is recorded as missed; the fleet dashboard issue says it all.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use tkgops_sandbox::{request_files, Timings};

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

/// `action: apply` is not run by this version: its fire is recorded (once) as not run, with
/// the reason, on the dashboard; nothing else happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_apply_schedule_fire_is_recorded_as_not_run_on_the_dashboard() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let repo = format!(
        "{}schedules:\n  - name: nightly\n    cron: \"30 1 * * *\"\n    timezone: America/New_York\n    window: 2h\n    target: latest-patch\n    action: apply\n",
        main_file(&env, "tkgops.yaml")
    );
    tkgops_emulators::git_remote::commit_on_branch(
        &env.remote,
        "main",
        "main",
        "nightly apply",
        &[("tkgops.yaml", repo.as_str())],
    )
    .unwrap();
    // 01:45 in New York on 1 December 2026 (EST, UTC-5): inside the 01:30 window.
    let clock = Arc::new(Mutex::new(
        Utc.with_ymd_and_hms(2026, 12, 1, 6, 45, 0).unwrap(),
    ));
    let bot = bot_at(&env, &clock).await;
    bot.poll_once().await.unwrap();
    let d = dashboard(&env);
    assert!(
        d.contains("| `nightly` | apply | latest-patch | 2026-12-01 01:30 America/New_York | not run: `action: apply` is not supported by this version of tkgops"),
        "{d}"
    );
    assert!(d.contains("| 2026-12-02 01:30 America/New_York |"), "{d}");
    assert!(bump_pulls(&env).is_empty());
}

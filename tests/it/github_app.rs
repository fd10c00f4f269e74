//! Issue 19 point 4, GitHub: `deploy/github-app.yml` grants exactly what tkgops uses. The bot
//! runs as the sandbox's GitHub App through the create story, the `propose` schedule story
//! (which pushes a bump branch and opens a pull request and the fleet dashboard issue) and a
//! team-approval flow; the emulated GitHub records every route the bot called (axum's matched
//! route template and the method) and the sandbox adds `GIT fetch` / `GIT push` from the bot's
//! mirror. Each route maps to the permission GitHub's "Permissions required for GitHub Apps"
//! names for it; the manifest must grant each, and lowering any granted permission by one level
//! must leave some route uncovered.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tkgops_sandbox::{request_files, Timings};

use crate::support::root;

/// A permission level, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    None,
    Read,
    Write,
}

fn level(s: &str) -> Level {
    match s {
        "read" => Level::Read,
        "write" => Level::Write,
        other => panic!("unknown permission level {other:?}"),
    }
}

/// What each route the bot may call needs, from GitHub's "Permissions required for GitHub
/// Apps" (REST reference): any one of the alternatives is enough; an empty list needs no
/// permission (the App's JWT endpoints).
const ROUTE_PERMISSIONS: &[(&str, &[(&str, Level)])] = &[
    // Authenticated with the App's JWT, not an installation: no permission.
    ("GET /app", &[]),
    ("GET /repos/{o}/{r}/installation", &[]),
    ("POST /app/installations/{id}/access_tokens", &[]),
    ("GET /app/installations/{id}", &[]),
    // Repositories: "Metadata" (read).
    ("GET /repos/{o}/{r}", &[("metadata", Level::Read)]),
    // Pulls.
    (
        "GET /repos/{o}/{r}/pulls",
        &[("pull_requests", Level::Read)],
    ),
    (
        "GET /repos/{o}/{r}/pulls/{n}",
        &[("pull_requests", Level::Read)],
    ),
    (
        "GET /repos/{o}/{r}/pulls/{n}/files",
        &[("pull_requests", Level::Read)],
    ),
    (
        "GET /repos/{o}/{r}/pulls/{n}/commits",
        &[("pull_requests", Level::Read)],
    ),
    (
        "GET /repos/{o}/{r}/pulls/{n}/reviews",
        &[("pull_requests", Level::Read)],
    ),
    (
        "POST /repos/{o}/{r}/pulls",
        &[("pull_requests", Level::Write)],
    ),
    // Issue comments (on pull requests too): "Issues" or "Pull requests".
    (
        "GET /repos/{o}/{r}/issues/comments",
        &[("issues", Level::Read), ("pull_requests", Level::Read)],
    ),
    (
        "GET /repos/{o}/{r}/issues/{n}/comments",
        &[("issues", Level::Read), ("pull_requests", Level::Read)],
    ),
    (
        "POST /repos/{o}/{r}/issues/{n}/comments",
        &[("issues", Level::Write), ("pull_requests", Level::Write)],
    ),
    (
        "PATCH /repos/{o}/{r}/issues/comments/{id}",
        &[("issues", Level::Write), ("pull_requests", Level::Write)],
    ),
    (
        "POST /repos/{o}/{r}/issues/comments/{id}",
        &[("issues", Level::Write), ("pull_requests", Level::Write)],
    ),
    // Issues (the fleet dashboard).
    ("GET /repos/{o}/{r}/issues", &[("issues", Level::Read)]),
    ("POST /repos/{o}/{r}/issues", &[("issues", Level::Write)]),
    (
        "PATCH /repos/{o}/{r}/issues/{n}",
        &[("issues", Level::Write)],
    ),
    (
        "POST /repos/{o}/{r}/issues/{n}",
        &[("issues", Level::Write)],
    ),
    // Commit statuses.
    (
        "POST /repos/{o}/{r}/statuses/{sha}",
        &[("statuses", Level::Write)],
    ),
    (
        "GET /repos/{o}/{r}/commits/{ref}/statuses",
        &[("statuses", Level::Read)],
    ),
    (
        "GET /repos/{o}/{r}/commits/{ref}/status",
        &[("statuses", Level::Read)],
    ),
    // Teams: "Members" (organization, read).
    (
        "GET /orgs/{org}/teams/{team}/members",
        &[("members", Level::Read)],
    ),
    // git over HTTPS: "Contents".
    ("GIT fetch", &[("contents", Level::Read)]),
    ("GIT push", &[("contents", Level::Write)]),
];

/// The manifest's `default_permissions`.
fn manifest_permissions() -> BTreeMap<String, Level> {
    let text = std::fs::read_to_string(root().join("deploy/github-app.yml")).expect("manifest");
    let v: Value = serde_yaml::from_str(&text).expect("manifest YAML");
    for key in ["name", "url", "hook_attributes", "redirect_url", "public"] {
        assert!(v.get(key).is_some(), "the manifest has no {key}");
    }
    v["default_permissions"]
        .as_object()
        .expect("default_permissions")
        .iter()
        .map(|(k, l)| (k.clone(), level(l.as_str().expect("level"))))
        .collect()
}

/// Whether `granted` covers `route`; panics on a route the table does not know.
fn covered(granted: &BTreeMap<String, Level>, route: &str) -> bool {
    let (_, needs) = ROUTE_PERMISSIONS
        .iter()
        .find(|(r, _)| *r == route)
        .unwrap_or_else(|| {
            panic!("tkgops called {route}, which the permission table does not know: add it")
        });
    needs.is_empty()
        || needs
            .iter()
            .any(|(p, l)| granted.get(*p).copied().unwrap_or(Level::None) >= *l)
}

/// What the manifest grants that no route needs: each permission lowered by one level still
/// covering every route.
fn unneeded(granted: &BTreeMap<String, Level>, routes: &BTreeSet<String>) -> Vec<String> {
    granted
        .iter()
        .filter(|(p, l)| {
            let mut lowered = granted.clone();
            lowered.insert(
                p.to_string(),
                match l {
                    Level::Write => Level::Read,
                    _ => Level::None,
                },
            );
            routes.iter().all(|r| covered(&lowered, r))
        })
        .map(|(p, l)| format!("{p}: {l:?}"))
        .collect()
}

/// Runs `tkgops-sandbox --story NAME --exit --github-app`; returns its routes line's routes.
fn story_routes(name: &str) -> BTreeSet<String> {
    let o = Command::new(env!("CARGO_BIN_EXE_tkgops-sandbox"))
        .args(["--story", name, "--exit", "--github-app"])
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running tkgops-sandbox");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "story {name} failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("==> github routes by tkgops: "))
        .unwrap_or_else(|| panic!("no GitHub routes line:\n{out}"));
    line.split(", ")
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

/// The routes of a plan under a policy whose approvers and code owners are teams, with the bot
/// as the App.
async fn team_approval_routes() -> BTreeSet<String> {
    let timings = Timings::default();
    let env = crate::e2e::start_env(&timings).await;
    crate::e2e::set_aws_env(&env);
    crate::trust::policy_with_team_and_codeowners(&env);
    let bot = env.start_bot_as(&timings, true).await.expect("bot");
    let (_, files) = request_files(None, &env.vpc);
    env.open_pull_request("change", "Add cluster team-a-prod", &files)
        .expect("PR");
    let head = git2::Repository::open_bare(&env.remote)
        .and_then(|r| r.revparse_single("refs/heads/change").map(|o| o.id()))
        .expect("head")
        .to_string();
    let plan = env
        .wait_status(&head, "tkgops/plan", Duration::from_secs(120))
        .await
        .expect("plan");
    assert_eq!(plan, "success");
    // The team members approve and merge: the bot resolves the teams to judge the merge.
    let pr = env
        .github
        .pull_requests()
        .last()
        .map(|p| p.number)
        .expect("PR");
    env.github.submit_review(pr, "carol", "APPROVED").unwrap();
    env.github.submit_review(pr, "dave", "APPROVED").unwrap();
    env.github.merge_pull_request(pr, "carol").expect("merge");
    let team_route = "GET /orgs/{org}/teams/{team}/members";
    env.github
        .wait_until(Duration::from_secs(120), |gh| {
            gh.bot_routes()
                .iter()
                .any(|r| r == team_route)
                .then_some(())
        })
        .await
        .expect("the bot read the team's members");
    let routes = env.github_routes_summary(&bot);
    bot.stop().await;
    env.shutdown().await;
    routes
        .strip_prefix("github routes by tkgops: ")
        .expect("routes line")
        .split(", ")
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_app_manifest_grants_exactly_what_tkgops_calls() {
    let mut routes = team_approval_routes().await;
    assert!(
        routes.contains("GET /orgs/{org}/teams/{team}/members"),
        "team approvers are resolved through the API: {routes:?}"
    );
    for story in ["create", "scheduled-propose"] {
        let r = tokio::task::spawn_blocking(move || story_routes(story))
            .await
            .unwrap();
        assert!(r.contains("GIT fetch"), "{story}: {r:?}");
        routes.extend(r);
    }
    assert!(
        routes.contains("GIT push") && routes.contains("POST /repos/{o}/{r}/pulls"),
        "the propose schedule pushes its branch and opens the pull request: {routes:?}"
    );
    let granted = manifest_permissions();
    let missing: Vec<&String> = routes.iter().filter(|r| !covered(&granted, r)).collect();
    assert!(
        missing.is_empty(),
        "deploy/github-app.yml does not grant what these routes need: {missing:?}"
    );
    assert_eq!(
        unneeded(&granted, &routes),
        Vec::<String>::new(),
        "deploy/github-app.yml grants more than the routes tkgops called need: {routes:?}"
    );
}

/// The table's checks themselves: a missing or too-low permission leaves a route uncovered,
/// and a permission no route needs is reported.
#[test]
fn the_permission_checks_can_fail() {
    let routes: BTreeSet<String> = ["GIT push", "POST /repos/{o}/{r}/issues/{n}/comments"]
        .map(str::to_string)
        .into();
    let mut granted: BTreeMap<String, Level> = [
        ("contents".to_string(), Level::Read),
        ("issues".to_string(), Level::Write),
    ]
    .into();
    assert!(!covered(&granted, "GIT push"));
    granted.insert("contents".into(), Level::Write);
    assert!(routes.iter().all(|r| covered(&granted, r)));
    assert_eq!(unneeded(&granted, &routes), Vec::<String>::new());
    granted.insert("checks".into(), Level::Write);
    assert_eq!(
        unneeded(&granted, &routes),
        vec!["checks: Write".to_string()]
    );
}

/// The manifest's events are the ones the bot's webhook handler acts on.
#[test]
fn the_app_manifest_subscribes_to_the_events_the_bot_handles() {
    let text = std::fs::read_to_string(root().join("deploy/github-app.yml")).expect("manifest");
    let v: Value = serde_yaml::from_str(&text).expect("manifest YAML");
    let events: BTreeSet<&str> = v["default_events"]
        .as_array()
        .expect("default_events")
        .iter()
        .map(|e| e.as_str().expect("event"))
        .collect();
    let handled: BTreeSet<&str> = tkgops::webhook::HINT_EVENTS.iter().copied().collect();
    assert_eq!(events, handled);
}

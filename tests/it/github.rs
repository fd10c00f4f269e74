//! Integration tests: the GitHub emulator (wire level, against octocrab's typed API) and the
//! GitHub client (`tkgops_github::OctocrabClient`) against the emulator, including injected faults.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use git2::{Oid, Repository, Signature};
use serde_json::{json, Value};
use tkgops_emulators::faults::{Fault, FaultAction};
use tkgops_emulators::github::{
    GitHubAppOptions, GitHubEmulator, GitHubEmulatorError, GitHubEmulatorOptions, MergeMethod,
    Role, WebhookTarget, DEFAULT_INSTALLATION_ID,
};
use tkgops_github::{CommitState, GitHub, GitHubError, OctocrabClient, RetrySettings};

const TOKEN: &str = "test-token-0123456789";
const OWNER: &str = "acme";
const REPO: &str = "clusters";
const MARKER: &str = "<!-- tkgops:plan -->";

/// Commits `files` (path → content, nested paths allowed) on top of `parent` and moves
/// `refs/heads/<branch>` to the new commit.
fn commit(
    repo: &Repository,
    branch: &str,
    parent: Option<Oid>,
    files: &[(&str, &str)],
    msg: &str,
) -> Oid {
    let mut index = git2::Index::new().unwrap();
    let parent_commit = parent.map(|p| repo.find_commit(p).unwrap());
    if let Some(pc) = &parent_commit {
        index.read_tree(&pc.tree().unwrap()).unwrap();
    }
    for (path, content) in files {
        let blob = repo.blob(content.as_bytes()).unwrap();
        let entry = git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: content.len() as u32,
            id: blob,
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        };
        index.add(&entry).unwrap();
    }
    let tree_id = index.write_tree_to(repo).unwrap();
    let tree = repo.find_tree(tree_id).unwrap();
    let sig = Signature::now("Dev", "dev@example.com").unwrap();
    let parents: Vec<&git2::Commit<'_>> = parent_commit.iter().collect();
    let oid = repo.commit(None, &sig, &sig, msg, &tree, &parents).unwrap();
    repo.reference(&format!("refs/heads/{branch}"), oid, true, "test push")
        .unwrap();
    oid
}

struct Setup {
    _dir: tempfile::TempDir,
    bare: std::path::PathBuf,
    emu: GitHubEmulator,
    main_tip: Oid,
    feature_tip: Oid,
}

/// A bare repo with `main` (one commit) and `feature` (one more commit), plus the emulator
/// (with the users of [`users`]).
async fn setup() -> Setup {
    setup_with(|_| {}).await
}

/// As [`setup`], with the emulator options adjusted by `adjust`.
async fn setup_with(adjust: impl FnOnce(&mut GitHubEmulatorOptions)) -> Setup {
    tkgops_providers::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("config.git");
    let repo = Repository::init_bare(&bare).unwrap();
    let main_tip = commit(
        &repo,
        "main",
        None,
        &[
            ("README.md", "config\n"),
            ("clusters/a.yaml", "name: a\nsize: 1\n"),
        ],
        "init",
    );
    let feature_tip = commit(
        &repo,
        "feature",
        Some(main_tip),
        &[("clusters/b.yaml", "name: b\nsize: 3\n")],
        "add b",
    );
    repo.set_head("refs/heads/main").unwrap();
    let mut opts = GitHubEmulatorOptions {
        owner: OWNER.into(),
        repo: REPO.into(),
        default_branch: "main".into(),
        token: TOKEN.into(),
        bare_repo: bare.clone(),
        users: users(),
        roles: [("reader".to_string(), Role::Read)].into_iter().collect(),
        ..GitHubEmulatorOptions::default()
    };
    adjust(&mut opts);
    let emu = GitHubEmulator::start(opts).await.unwrap();
    Setup {
        _dir: dir,
        bare,
        emu,
        main_tip,
        feature_tip,
    }
}

fn fast_retry() -> RetrySettings {
    RetrySettings {
        max_attempts: 6,
        initial_backoff: Duration::from_millis(20),
        max_wait: Duration::from_secs(5),
        min_rate_limit_wait: Duration::from_millis(50),
    }
}

fn client(emu: &GitHubEmulator) -> OctocrabClient {
    OctocrabClient::new(&emu.api_url(), TOKEN, OWNER, REPO, fast_retry()).unwrap()
}

fn octo(emu: &GitHubEmulator) -> octocrab::Octocrab {
    octocrab::Octocrab::builder()
        .base_uri(emu.api_url())
        .unwrap()
        .personal_token(TOKEN.to_string())
        .build()
        .unwrap()
}

#[tokio::test]
async fn repository_info() {
    let s = setup().await;
    let info = client(&s.emu).repository().await.unwrap();
    assert_eq!(info.full_name, "acme/clusters");
    assert_eq!(info.default_branch, "main");
    assert_eq!(info.clone_url, s.emu.clone_url());
    assert!(info.clone_url.starts_with("file://"));
    // The clone URL really is the bare repository.
    let url = url::Url::parse(&info.clone_url).unwrap();
    let repo = Repository::open_bare(url.to_file_path().unwrap()).unwrap();
    assert_eq!(repo.refname_to_id("refs/heads/main").unwrap(), s.main_tip);
}

#[tokio::test]
async fn open_pull_request_head_follows_pushes() {
    let s = setup().await;
    let c = client(&s.emu);
    let n = s
        .emu
        .open_pull_request("feature", "Add cluster b", "please", "alice")
        .unwrap();
    assert_eq!(n, 1);

    let open = c.list_open_pulls("main").await.unwrap();
    assert_eq!(open.len(), 1);
    let pr = &open[0];
    assert_eq!(
        (pr.number, pr.title.as_str(), pr.author.as_str()),
        (1, "Add cluster b", "alice")
    );
    assert_eq!(pr.head_sha, s.feature_tip.to_string());
    assert_eq!(pr.head_ref, "feature");
    assert_eq!(pr.base_ref, "main");
    assert_eq!(pr.head_repo_full_name.as_deref(), Some("acme/clusters"));
    assert!(pr.open && !pr.merged && pr.merge_commit_sha.is_none());
    assert!(c.list_open_pulls("release").await.unwrap().is_empty());

    // Push a new commit to the head branch: the PR head follows, refs/pull/1/head too.
    let repo = Repository::open_bare(&s.bare).unwrap();
    let new_tip = commit(
        &repo,
        "feature",
        Some(s.feature_tip),
        &[("clusters/b.yaml", "name: b\nsize: 5\n")],
        "resize b",
    );
    let pr = c.get_pull(1).await.unwrap();
    assert_eq!(pr.head_sha, new_tip.to_string());
    assert_eq!(repo.refname_to_id("refs/pull/1/head").unwrap(), new_tip);

    // The typed octocrab API parses the emulator's shapes (full PR, files from a real diff).
    let o = octo(&s.emu);
    let full = o.pulls(OWNER, REPO).get(1).await.unwrap();
    assert_eq!(full.mergeable, Some(true));
    assert_eq!(full.head.sha, new_tip.to_string());
    let files = o.pulls(OWNER, REPO).list_files(1).await.unwrap();
    let names: Vec<_> = files.items.iter().map(|f| f.filename.clone()).collect();
    assert_eq!(names, vec!["clusters/b.yaml".to_string()]);
    assert_eq!(files.items[0].additions, 2);

    assert!(matches!(
        c.get_pull(99).await,
        Err(GitHubError::NotFound { .. })
    ));
}

#[tokio::test]
async fn reviews_are_listed() {
    let s = setup().await;
    let c = client(&s.emu);
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "alice")
        .unwrap();
    s.emu.submit_review(n, "bob", "CHANGES_REQUESTED").unwrap();
    s.emu.submit_review(n, "carol", "APPROVED").unwrap();
    assert!(s.emu.submit_review(n, "carol", "LGTM").is_err());
    let reviews = c.list_reviews(n).await.unwrap();
    assert_eq!(reviews.len(), 2);
    assert_eq!(
        (reviews[0].user.as_str(), reviews[0].state.as_str()),
        ("bob", "CHANGES_REQUESTED")
    );
    assert_eq!(
        (reviews[1].user.as_str(), reviews[1].state.as_str()),
        ("carol", "APPROVED")
    );
    assert_eq!(
        reviews[1].commit_id.as_deref(),
        Some(s.feature_tip.to_string().as_str())
    );
}

#[tokio::test]
async fn upsert_comment_edits_one_comment_and_skips_identical_bodies() {
    let s = setup().await;
    let c = client(&s.emu);
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "alice")
        .unwrap();
    let path_edit = "/repos/acme/clusters/issues/comments/";

    let id1 = c.upsert_comment(n, MARKER, "plan v1").await.unwrap();
    let id2 = c.upsert_comment(n, MARKER, "plan v2").await.unwrap();
    assert_eq!(id1, id2);
    let comments = s.emu.comments(n);
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].body, format!("{MARKER}\nplan v2"));
    assert_eq!(comments[0].user, "tkgops[bot]");
    assert_eq!(
        s.emu.faults().log().count_prefix(&Method::PATCH, path_edit),
        1
    );

    // Identical body: no write at all.
    let id3 = c.upsert_comment(n, MARKER, "plan v2").await.unwrap();
    assert_eq!(id3, id1);
    assert_eq!(
        s.emu.faults().log().count_prefix(&Method::PATCH, path_edit),
        1
    );
    assert_eq!(
        s.emu
            .faults()
            .log()
            .count(&Method::POST, "/repos/acme/clusters/issues/1/comments"),
        1
    );

    // A different marker is a different sticky comment.
    c.upsert_comment(n, "<!-- tkgops:run -->", "run")
        .await
        .unwrap();
    assert_eq!(s.emu.comments(n).len(), 2);
}

#[tokio::test]
async fn upsert_comment_finds_the_marker_on_a_later_page() {
    let s = setup().await;
    let c = client(&s.emu);
    let o = octo(&s.emu);
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "alice")
        .unwrap();
    // More than one page of other comments (the provider asks for 100 per page).
    for i in 0..105 {
        o.issues(OWNER, REPO)
            .create_comment(n, format!("chatter {i}"))
            .await
            .unwrap();
    }
    let id = c.upsert_comment(n, MARKER, "plan v1").await.unwrap();
    let again = c.upsert_comment(n, MARKER, "plan v2").await.unwrap();
    assert_eq!(id, again);
    let comments = s.emu.comments(n);
    assert_eq!(comments.len(), 106);
    assert_eq!(comments.last().unwrap().body, format!("{MARKER}\nplan v2"));
    let log = s.emu.faults().log().all();
    assert!(log
        .iter()
        .any(|r| r.path.ends_with("/issues/1/comments") && r.query.contains("page=2")));

    // octocrab's own pagination follows the emulator's Link header (default 30 per page).
    let page = o.issues(OWNER, REPO).list_comments(n).send().await.unwrap();
    assert_eq!(page.items.len(), 30);
    assert!(page.next.is_some());
    let all = o.all_pages(page).await.unwrap();
    assert_eq!(all.len(), 106);
}

#[tokio::test]
async fn long_comment_bodies_are_truncated_with_a_note() {
    let s = setup().await;
    let c = client(&s.emu);
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "alice")
        .unwrap();
    let body = format!("{MARKER}\n{}", "0123456789\n".repeat(70_000 / 11 + 1));
    assert!(body.chars().count() > 70_000);
    c.upsert_comment(n, MARKER, &body).await.unwrap();
    let stored = &s.emu.comments(n)[0].body;
    assert!(
        stored.chars().count() <= 65_536,
        "{}",
        stored.chars().count()
    );
    assert!(stored.starts_with(MARKER));
    assert!(stored.contains("> **Note:** this comment was truncated ("));
    assert!(stored.ends_with("characters omitted).\n"));
    // Upserting the same long body again is a no-op (compares the truncated body).
    c.upsert_comment(n, MARKER, &body).await.unwrap();
    assert_eq!(
        s.emu
            .faults()
            .log()
            .count_prefix(&Method::PATCH, "/repos/acme/clusters/issues/comments/"),
        0
    );
}

#[tokio::test]
async fn emulator_rejects_too_long_comments_with_githubs_422() {
    let s = setup().await;
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "alice")
        .unwrap();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!(
            "{}/repos/acme/clusters/issues/{n}/comments",
            s.emu.api_url()
        ))
        .header("authorization", format!("token {TOKEN}"))
        .json(&serde_json::json!({ "body": "x".repeat(65_537) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["message"], "Validation Failed");
    assert_eq!(
        v["errors"][0],
        serde_json::json!({"resource": "IssueComment", "code": "custom", "field": "body",
            "message": "body is too long (maximum is 65536 characters)"})
    );
    assert!(v["documentation_url"].is_string());
    // Exactly 65,536 characters is accepted.
    let ok = http
        .post(format!(
            "{}/repos/acme/clusters/issues/{n}/comments",
            s.emu.api_url()
        ))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "body": "x".repeat(65_536) }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 201);
    assert_eq!(ok.headers()["x-ratelimit-limit"], "5000");
}

#[tokio::test]
async fn set_status_posts_and_dedupes() {
    let s = setup().await;
    let c = client(&s.emu);
    let sha = s.feature_tip.to_string();
    let posts = |emu: &GitHubEmulator| {
        emu.faults().log().count(
            &Method::POST,
            &format!("/repos/acme/clusters/statuses/{sha}"),
        )
    };

    c.set_status(&sha, "tkgops/plan", CommitState::Pending, "planning", None)
        .await
        .unwrap();
    c.set_status(&sha, "tkgops/plan", CommitState::Pending, "planning", None)
        .await
        .unwrap();
    assert_eq!(posts(&s.emu), 1);
    let long = "d".repeat(300);
    c.set_status(
        &sha,
        "tkgops/plan",
        CommitState::Success,
        &long,
        Some("https://tkgops.example/runs/1"),
    )
    .await
    .unwrap();
    c.set_status(
        &sha,
        "tkgops/plan",
        CommitState::Success,
        &long,
        Some("https://tkgops.example/runs/1"),
    )
    .await
    .unwrap();
    assert_eq!(posts(&s.emu), 2);
    c.set_status(&sha, "tkgops/apply", CommitState::Failure, "boom", None)
        .await
        .unwrap();

    let st = s.emu.statuses(&sha);
    assert_eq!(st.len(), 3);
    assert_eq!(
        (st[0].context.as_str(), st[0].state.as_str()),
        ("tkgops/apply", "failure")
    );
    assert_eq!(st[1].state, "success");
    assert_eq!(st[1].description.as_ref().unwrap().chars().count(), 140);
    assert_eq!(
        st[1].target_url.as_deref(),
        Some("https://tkgops.example/runs/1")
    );
    assert_eq!(st[1].creator, "tkgops[bot]");

    // Typed octocrab parses the combined status.
    let combined = octo(&s.emu)
        .repos(OWNER, REPO)
        .combined_status_for_ref(&octocrab::params::repos::Reference::Branch(
            "feature".into(),
        ))
        .await
        .unwrap();
    assert_eq!(combined.total_count, 2);
    assert_eq!(combined.state, octocrab::models::StatusState::Failure);

    // Unknown commit: GitHub's 422, not retried.
    let err = c
        .set_status(
            &"0".repeat(40),
            "tkgops/plan",
            CommitState::Pending,
            "x",
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn merge_creates_a_real_merge_commit() {
    let s = setup().await;
    let c = client(&s.emu);
    let repo = Repository::open_bare(&s.bare).unwrap();
    // Advance main so the merge is a true merge.
    let main2 = commit(
        &repo,
        "main",
        Some(s.main_tip),
        &[("clusters/c.yaml", "name: c\n")],
        "add c",
    );
    let n = s
        .emu
        .open_pull_request("feature", "Add b", "", "alice")
        .unwrap();

    let sha = s.emu.merge_pull_request(n, "carol").unwrap();
    let merge = repo.find_commit(Oid::from_str(&sha).unwrap()).unwrap();
    assert_eq!(
        merge.parent_ids().collect::<Vec<_>>(),
        vec![main2, s.feature_tip]
    );
    assert_eq!(repo.refname_to_id("refs/heads/main").unwrap(), merge.id());
    let tree = merge.tree().unwrap();
    for f in ["clusters/a.yaml", "clusters/b.yaml", "clusters/c.yaml"] {
        assert!(
            tree.get_path(Path::new(f)).is_ok(),
            "{f} missing from the merge tree"
        );
    }

    let pr = c.get_pull(n).await.unwrap();
    assert!(pr.merged && !pr.open);
    assert_eq!(pr.merge_commit_sha.as_deref(), Some(sha.as_str()));
    assert!(c.list_open_pulls("main").await.unwrap().is_empty());
    let closed = c.list_recently_closed_pulls("main", 10).await.unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].merge_commit_sha.as_deref(), Some(sha.as_str()));

    // Merging again: GitHub's 405, via REST and via the control API.
    assert!(s.emu.merge_pull_request(n, "carol").is_err());
    let err = octo(&s.emu)
        .pulls(OWNER, REPO)
        .merge(n)
        .send()
        .await
        .unwrap_err();
    match err {
        octocrab::Error::GitHub { source, .. } => {
            assert_eq!(source.status_code.as_u16(), 405);
            assert_eq!(source.message, "Pull Request is not mergeable");
        }
        other => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn rest_merge_and_conflicts() {
    let s = setup().await;
    let repo = Repository::open_bare(&s.bare).unwrap();
    let o = octo(&s.emu);
    // Two branches that edit the same file differently.
    commit(
        &repo,
        "left",
        Some(s.main_tip),
        &[("clusters/a.yaml", "name: a\nsize: 2\n")],
        "left",
    );
    commit(
        &repo,
        "right",
        Some(s.main_tip),
        &[("clusters/a.yaml", "name: a\nsize: 9\n")],
        "right",
    );
    let left = s
        .emu
        .open_pull_request("left", "left", "", "alice")
        .unwrap();
    let right = s
        .emu
        .open_pull_request("right", "right", "", "bob")
        .unwrap();

    let merged = o.pulls(OWNER, REPO).merge(left).send().await.unwrap();
    assert!(merged.merged);
    let merge_sha = merged.sha.unwrap();
    assert_eq!(
        repo.find_commit(Oid::from_str(&merge_sha).unwrap())
            .unwrap()
            .parent_count(),
        2
    );
    assert_eq!(
        repo.find_commit(Oid::from_str(&merge_sha).unwrap())
            .unwrap()
            .author()
            .name()
            .ok(),
        Some("tkgops[bot]")
    );

    let pr = o.pulls(OWNER, REPO).get(right).await.unwrap();
    assert_eq!(pr.mergeable, Some(false));
    let err = o.pulls(OWNER, REPO).merge(right).send().await.unwrap_err();
    assert!(
        matches!(err, octocrab::Error::GitHub { ref source, .. } if source.status_code.as_u16() == 405)
    );
    assert!(s.emu.merge_pull_request(right, "bob").is_err());

    // Closing without merge.
    s.emu.close_pull_request(right).unwrap();
    let c = client(&s.emu);
    let closed = c.list_recently_closed_pulls("main", 1).await.unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].number, right);
    assert!(!closed[0].merged && closed[0].merge_commit_sha.is_none());
}

#[tokio::test]
async fn server_errors_are_retried() {
    let s = setup().await;
    let c = client(&s.emu);
    s.emu.faults().inject(Fault::new(
        Some(Method::GET),
        "/repos/acme/clusters",
        FaultAction::Status {
            code: 502,
            body: r#"{"message":"Server Error"}"#.into(),
        },
        Some(2),
    ));
    let info = c.repository().await.unwrap();
    assert_eq!(info.default_branch, "main");
    let log = s.emu.faults().log().all();
    assert_eq!(log.iter().filter(|r| r.faulted).count(), 2);
    assert_eq!(log.len(), 3);

    // A dropped connection is retried too.
    s.emu.faults().inject(Fault::new(
        Some(Method::GET),
        "/repos/acme/clusters",
        FaultAction::Drop,
        Some(1),
    ));
    c.repository().await.unwrap();

    // Persistent 5xx gives up after max_attempts with a transient error.
    s.emu.faults().inject(Fault::new(
        None,
        "/repos/",
        FaultAction::Status {
            code: 500,
            body: "{}".into(),
        },
        None,
    ));
    let err = c.repository().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    s.emu.faults().clear();
}

#[tokio::test]
async fn rate_limits_are_waited_out() {
    let s = setup().await;
    let c = client(&s.emu);
    s.emu.faults().inject(Fault::new(
        None,
        "/repos/acme/clusters",
        FaultAction::RetryAfter { code: 429, secs: 1 },
        Some(1),
    ));
    let start = Instant::now();
    c.repository().await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // Secondary rate limit: 403 with Retry-After.
    s.emu.faults().inject(Fault::new(
        None,
        "/repos/acme/clusters",
        FaultAction::RetryAfter { code: 403, secs: 1 },
        Some(1),
    ));
    let start = Instant::now();
    c.repository().await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1));

    // A 403 without rate-limit headers is an authorization failure: not retried.
    s.emu.faults().inject(Fault::new(
        None,
        "/repos/acme/clusters",
        FaultAction::Status {
            code: 403,
            body: r#"{"message":"Resource not accessible by integration"}"#.into(),
        },
        Some(1),
    ));
    let err = c.repository().await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn wrong_token_fails_fast() {
    let s = setup().await;
    let c = OctocrabClient::new(
        &s.emu.api_url(),
        "wrong-token",
        OWNER,
        REPO,
        RetrySettings::default(),
    )
    .unwrap();
    let start = Instant::now();
    let err = c.repository().await.unwrap_err();
    assert!(matches!(err, GitHubError::Unauthorized { .. }), "{err}");
    assert!(!err.is_transient());
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(s.emu.faults().log().all().len(), 1);
    // The token never shows up in errors or Debug output.
    assert!(!format!("{err} {err:?} {c:?}").contains("wrong-token"));
    assert!(!format!("{:?}", client(&s.emu)).contains(TOKEN));

    // Raw: GitHub's exact 401 body.
    let resp = reqwest::Client::new()
        .get(format!("{}/repos/acme/clusters", s.emu.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
    );
}

#[tokio::test]
async fn pull_list_paginates_and_sorts() {
    let s = setup().await;
    let c = client(&s.emu);
    let o = octo(&s.emu);
    for i in 0..5 {
        s.emu
            .open_pull_request("feature", &format!("pr {i}"), "", "alice")
            .unwrap();
    }
    let page = o
        .pulls(OWNER, REPO)
        .list()
        .per_page(2)
        .send()
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].number, 5); // created desc by default
    let all = o.all_pages(page).await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![5, 4, 3, 2, 1]
    );
    let open = c.list_open_pulls("main").await.unwrap();
    assert_eq!(
        open.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );

    // Closing bumps updated_at: sort=updated desc lists the most recently closed first. The
    // emulator's timestamps strictly increase, so back-to-back closes are ordered without
    // waiting; closing the higher number first makes the expected order differ from the
    // number order (the tie-breaker), so a wrong sort key fails here.
    s.emu.close_pull_request(4).unwrap();
    s.emu.close_pull_request(2).unwrap();
    let closed = c.list_recently_closed_pulls("main", 10).await.unwrap();
    assert_eq!(
        closed.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![2, 4]
    );
    let latest = c.list_recently_closed_pulls("main", 1).await.unwrap();
    assert_eq!(latest.iter().map(|p| p.number).collect::<Vec<_>>(), vec![2]);
}

#[tokio::test]
async fn writes_are_retried_as_whole_operations() {
    let s = setup().await;
    let c = client(&s.emu);
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "alice")
        .unwrap();
    let comments = format!("/repos/acme/clusters/issues/{n}/comments");
    s.emu.faults().inject(Fault::new(
        Some(Method::POST),
        &comments,
        FaultAction::Status {
            code: 502,
            body: "{}".into(),
        },
        Some(1),
    ));
    s.emu.faults().inject(Fault::new(
        Some(Method::GET),
        &comments,
        FaultAction::Drop,
        Some(1),
    ));
    c.upsert_comment(n, MARKER, "plan").await.unwrap();
    assert_eq!(s.emu.comments(n).len(), 1);

    let sha = s.feature_tip.to_string();
    s.emu.faults().inject(Fault::new(
        Some(Method::POST),
        "/repos/acme/clusters/statuses/",
        FaultAction::Status {
            code: 503,
            body: "{}".into(),
        },
        Some(2),
    ));
    c.set_status(&sha, "tkgops/plan", CommitState::Pending, "planning", None)
        .await
        .unwrap();
    assert_eq!(s.emu.statuses(&sha).len(), 1);
}

#[tokio::test]
async fn rate_limit_waits_are_capped_by_max_wait() {
    let s = setup().await;
    let settings = RetrySettings {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_wait: Duration::from_millis(300),
        min_rate_limit_wait: Duration::from_millis(50),
    };
    let c = OctocrabClient::new(&s.emu.api_url(), TOKEN, OWNER, REPO, settings).unwrap();
    s.emu.faults().inject(Fault::new(
        None,
        "/repos/acme/clusters",
        FaultAction::RetryAfter {
            code: 429,
            secs: 3600,
        },
        Some(1),
    ));
    let start = Instant::now();
    c.repository().await.unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

// ----- users, tokens and the REST calls a person makes -----

/// The human users of these tests and their personal access tokens.
const USERS: [(&str, &str); 5] = [
    ("platform-dev", "ghp_platformdev000000000000000000000001"),
    ("alice", "ghp_alice00000000000000000000000000000002"),
    ("bob", "ghp_bob0000000000000000000000000000000003"),
    ("outsider", "ghp_outsider000000000000000000000000004"),
    // Role `read` (see `setup_with`): comments and reviews only.
    ("reader", "ghp_reader00000000000000000000000000005"),
];

fn users() -> BTreeMap<String, String> {
    USERS
        .iter()
        .map(|(l, t)| (l.to_string(), t.to_string()))
        .collect()
}

fn token_of(login: &str) -> &'static str {
    USERS
        .iter()
        .find(|(l, _)| *l == login)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no test user {login}"))
}

/// octocrab authenticated as user `login`.
fn octo_as(emu: &GitHubEmulator, login: &str) -> octocrab::Octocrab {
    octocrab::Octocrab::builder()
        .base_uri(emu.api_url())
        .unwrap()
        .personal_token(token_of(login).to_string())
        .build()
        .unwrap()
}

/// One raw REST call with `Authorization: <auth>` (none when `None`); returns status and JSON.
async fn call(
    emu: &GitHubEmulator,
    auth: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", emu.api_url()));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A REST call as user `login` (`token <pat>`, as curl users write it).
async fn call_as(
    emu: &GitHubEmulator,
    login: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("token {}", token_of(login));
    call(emu, Some(&auth), method, path, body).await
}

fn pulls_path() -> String {
    format!("/repos/{OWNER}/{REPO}/pulls")
}

#[tokio::test]
async fn every_call_acts_as_the_user_of_its_token() {
    let s = setup().await;
    // GET /user answers the token's user; the bot token answers the bot login.
    for (login, _) in USERS {
        let me = octo_as(&s.emu, login).current().user().await.unwrap();
        assert_eq!(me.login, login);
    }
    assert_eq!(
        octo(&s.emu).current().user().await.unwrap().login,
        "tkgops[bot]"
    );
    s.emu.set_bot_login("gitops-bot");
    assert_eq!(
        octo(&s.emu).current().user().await.unwrap().login,
        "gitops-bot"
    );

    // platform-dev opens a PR through the API: authored by them.
    let pr = octo_as(&s.emu, "platform-dev")
        .pulls(OWNER, REPO)
        .create("Add cluster b", "feature", "main")
        .body("please review")
        .send()
        .await
        .unwrap();
    let n = pr.number;
    assert_eq!(pr.user.as_ref().unwrap().login, "platform-dev");
    assert_eq!(pr.head.sha, s.feature_tip.to_string());
    assert_eq!(pr.body.as_deref(), Some("please review"));

    // alice comments and approves.
    let c = octo_as(&s.emu, "alice")
        .issues(OWNER, REPO)
        .create_comment(n, "looks good")
        .await
        .unwrap();
    assert_eq!(c.user.login, "alice");
    let (code, review) = call_as(
        &s.emu,
        "alice",
        Method::POST,
        &format!("{}/{n}/reviews", pulls_path()),
        Some(json!({"event": "APPROVE"})),
    )
    .await;
    assert_eq!(code, 200, "{review}");
    assert_eq!(review["user"]["login"], "alice");
    assert_eq!(review["state"], "APPROVED");
    assert_eq!(review["commit_id"], s.feature_tip.to_string());

    // bob posts a commit status; it is his.
    let sha = s.feature_tip.to_string();
    let (code, status) = call_as(
        &s.emu,
        "bob",
        Method::POST,
        &format!("/repos/{OWNER}/{REPO}/statuses/{sha}"),
        Some(json!({"state": "success", "context": "ci/lint"})),
    )
    .await;
    assert_eq!(code, 201, "{status}");
    assert_eq!(status["creator"]["login"], "bob");
    assert_eq!(s.emu.statuses(&sha)[0].creator, "bob");

    // outsider (write access, not an approver) comments in a review and merges.
    let (code, review) = call_as(
        &s.emu,
        "outsider",
        Method::POST,
        &format!("{}/{n}/reviews", pulls_path()),
        Some(json!({"event": "COMMENT", "body": "nit: spacing"})),
    )
    .await;
    assert_eq!(code, 200, "{review}");
    assert_eq!(review["user"]["login"], "outsider");
    let merge = octo_as(&s.emu, "outsider")
        .pulls(OWNER, REPO)
        .merge(n)
        .send()
        .await
        .unwrap();
    assert!(merge.merged);
    let merge_sha = merge.sha.unwrap();
    let pr = octo(&s.emu).pulls(OWNER, REPO).get(n).await.unwrap();
    assert_eq!(pr.merged_by.unwrap().login, "outsider");
    let repo = Repository::open_bare(&s.bare).unwrap();
    let commit = repo
        .find_commit(Oid::from_str(&merge_sha).unwrap())
        .unwrap();
    assert_eq!(commit.author().name().unwrap(), "outsider");
    assert_eq!(commit.parent_count(), 2);

    // What the emulator recorded, read back through the provider.
    let comments = s.emu.comments(n);
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].user, "alice");
    let reviews = client(&s.emu).list_reviews(n).await.unwrap();
    let who: Vec<_> = reviews
        .iter()
        .map(|r| (r.user.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(who, vec![("alice", "APPROVED"), ("outsider", "COMMENTED")]);
}

#[tokio::test]
async fn unknown_or_missing_tokens_get_githubs_401() {
    let s = setup().await;
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "platform-dev")
        .unwrap();
    let bad =
        json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"});
    let comments = format!("/repos/{OWNER}/{REPO}/issues/{n}/comments");
    for auth in [
        Some("token ghp_unknown0000000000000000000000000000"),
        Some("Bearer ghp_unknown0000000000000000000000000000"),
        Some("Bearer "),
        Some(&*format!("Basic {}", token_of("alice"))),
        None,
    ] {
        let (code, body) = call(
            &s.emu,
            auth,
            Method::POST,
            &comments,
            Some(json!({"body": "hi"})),
        )
        .await;
        assert_eq!((code, &body), (401, &bad), "{auth:?}");
        let (code, body) = call(&s.emu, auth, Method::GET, "/user", None).await;
        assert_eq!((code, &body), (401, &bad), "{auth:?}");
    }
    assert!(s.emu.comments(n).is_empty());
    // A user added at run time is accepted from then on.
    let (code, _) = call(&s.emu, Some("token ghp_carol"), Method::GET, "/user", None).await;
    assert_eq!(code, 401);
    s.emu.add_user("carol", "ghp_carol");
    let (code, me) = call(&s.emu, Some("token ghp_carol"), Method::GET, "/user", None).await;
    assert_eq!((code, me["login"].as_str()), (200, Some("carol")));
}

#[tokio::test]
async fn authors_cannot_approve_their_own_pull_requests() {
    let s = setup().await;
    let (code, pr) = call_as(
        &s.emu,
        "platform-dev",
        Method::POST,
        &pulls_path(),
        Some(json!({"title": "Add b", "head": "feature", "base": "main"})),
    )
    .await;
    assert_eq!(code, 201, "{pr}");
    let n = pr["number"].as_u64().unwrap();
    let reviews = format!("{}/{n}/reviews", pulls_path());
    for (event, message) in [
        ("APPROVE", "Can not approve your own pull request"),
        (
            "REQUEST_CHANGES",
            "Can not request changes on your own pull request",
        ),
    ] {
        let (code, body) = call_as(
            &s.emu,
            "platform-dev",
            Method::POST,
            &reviews,
            Some(json!({"event": event, "body": "mine"})),
        )
        .await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(body["message"], "Unprocessable Entity");
        assert_eq!(body["errors"], json!([message]));
        assert!(body["documentation_url"].is_string());
    }
    // Commenting on one's own PR is allowed.
    let (code, _) = call_as(
        &s.emu,
        "platform-dev",
        Method::POST,
        &reviews,
        Some(json!({"event": "COMMENT", "body": "context for reviewers"})),
    )
    .await;
    assert_eq!(code, 200);
    // The control API refuses it the same way.
    let err = s
        .emu
        .submit_review(n, "platform-dev", "APPROVED")
        .unwrap_err();
    assert!(
        matches!(&err, GitHubEmulatorError::OwnPullRequest { message, .. } if message == "Can not approve your own pull request"),
        "{err}"
    );
    let states: Vec<_> = client(&s.emu)
        .list_reviews(n)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, vec!["COMMENTED"]);
    // Someone else may approve.
    s.emu.submit_review(n, "alice", "APPROVED").unwrap();
}

#[tokio::test]
async fn pull_request_creation_is_validated_like_github() {
    let s = setup().await;
    let create = |body: Value| {
        let emu = s.emu.clone();
        async move {
            call_as(
                &emu,
                "platform-dev",
                Method::POST,
                &pulls_path(),
                Some(body),
            )
            .await
        }
    };
    let (code, body) = create(json!({"head": "feature", "base": "main"})).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["message"], "Validation Failed");
    assert_eq!(
        body["errors"][0],
        json!({"resource": "PullRequest", "code": "missing_field", "field": "title"})
    );
    let (code, body) = create(json!({"title": "t", "head": "main", "base": "main"})).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["errors"][0],
        json!({"resource": "PullRequest", "code": "custom", "message": "No commits between main and main"})
    );
    for (head, base, field) in [("nope", "main", "head"), ("feature", "nope", "base")] {
        let (code, body) = create(json!({"title": "t", "head": head, "base": base})).await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(
            body["errors"][0],
            json!({"resource": "PullRequest", "code": "invalid", "field": field})
        );
    }
    // `owner:branch` works; the answer is the full pull request with a Location.
    let resp = reqwest::Client::new()
        .post(format!("{}{}", s.emu.api_url(), pulls_path()))
        .header(
            "authorization",
            format!("Bearer {}", token_of("platform-dev")),
        )
        .json(&json!({"title": "Add b", "head": "acme:feature", "base": "main", "body": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let pr: octocrab::models::pulls::PullRequest = resp.json().await.unwrap();
    assert_eq!(pr.number, 1);
    assert!(
        location.ends_with("/repos/acme/clusters/pulls/1"),
        "{location}"
    );
    assert_eq!(pr.head.ref_field, "feature");
    assert_eq!(pr.base.ref_field, "main");
    // A second open PR for the same head and base is refused …
    let (code, body) = create(json!({"title": "again", "head": "feature", "base": "main"})).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["errors"][0]["message"],
        "A pull request already exists for acme:feature."
    );
    // … and octocrab reports it as GitHub's error.
    let err = octo_as(&s.emu, "platform-dev")
        .pulls(OWNER, REPO)
        .create("again", "feature", "main")
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, octocrab::Error::GitHub { source, .. } if source.status_code.as_u16() == 422),
        "{err:?}"
    );
    // Once the first is closed, a new one may be opened.
    s.emu.close_pull_request(1).unwrap();
    let (code, body) = create(json!({"title": "again", "head": "feature", "base": "main"})).await;
    assert_eq!((code, body["number"].as_u64()), (201, Some(2)), "{body}");
    // A head whose commits are all on the base has nothing to merge.
    let (code, body) = create(json!({"title": "t", "head": "main", "base": "feature"})).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["errors"][0]["message"],
        "No commits between feature and main"
    );
}

#[tokio::test]
async fn reviews_record_the_head_at_review_time_or_the_given_commit() {
    let s = setup().await;
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "platform-dev")
        .unwrap();
    let reviews = format!("{}/{n}/reviews", pulls_path());
    let (_, r1) = call_as(
        &s.emu,
        "alice",
        Method::POST,
        &reviews,
        Some(json!({"event": "APPROVE"})),
    )
    .await;
    assert_eq!(r1["commit_id"], s.feature_tip.to_string());
    // The author pushes again: later reviews are on the new head.
    let repo = Repository::open_bare(&s.bare).unwrap();
    let new_tip = commit(
        &repo,
        "feature",
        Some(s.feature_tip),
        &[("clusters/b.yaml", "name: b\nsize: 4\n")],
        "resize b",
    );
    let (_, r2) = call_as(
        &s.emu,
        "bob",
        Method::POST,
        &reviews,
        Some(json!({"event": "APPROVE"})),
    )
    .await;
    assert_eq!(r2["commit_id"], new_tip.to_string());
    s.emu.submit_review(n, "outsider", "COMMENTED").unwrap();
    // An older commit of the PR may be named explicitly.
    let (code, r3) = call_as(
        &s.emu,
        "bob",
        Method::POST,
        &reviews,
        Some(json!({"event": "APPROVE", "commit_id": s.feature_tip.to_string()})),
    )
    .await;
    assert_eq!(code, 200, "{r3}");
    assert_eq!(r3["commit_id"], s.feature_tip.to_string());
    // A commit that is not part of the PR (on the base, or unknown) is refused.
    for sha in [s.main_tip.to_string(), "0123456789".repeat(4)] {
        let (code, body) = call_as(
            &s.emu,
            "bob",
            Method::POST,
            &reviews,
            Some(json!({"event": "APPROVE", "commit_id": sha})),
        )
        .await;
        assert_eq!(code, 422, "{body}");
    }
    let got: Vec<_> = client(&s.emu)
        .list_reviews(n)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.user, r.commit_id.unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("alice".to_string(), s.feature_tip.to_string()),
            ("bob".to_string(), new_tip.to_string()),
            ("outsider".to_string(), new_tip.to_string()),
            ("bob".to_string(), s.feature_tip.to_string()),
        ]
    );
}

#[tokio::test]
async fn fork_pull_requests_have_githubs_head_shapes() {
    let s = setup().await;
    let repo = Repository::open_bare(&s.bare).unwrap();
    let fork_tip = commit(
        &repo,
        "mallory-patch",
        Some(s.main_tip),
        &[("clusters/m.yaml", "name: m\n")],
        "add m",
    );
    let fork = s
        .emu
        .open_fork_pull_request(
            Some("mallory/clusters"),
            "mallory-patch",
            "Fork",
            "",
            "mallory",
        )
        .unwrap();
    let orphan = s
        .emu
        .open_fork_pull_request(None, "feature", "Orphan", "", "mallory")
        .unwrap();

    // octocrab's model parses both; head.repo is the fork, or null.
    let o = octo(&s.emu);
    let pr = o.pulls(OWNER, REPO).get(fork).await.unwrap();
    let head_repo = pr.head.repo.as_ref().expect("fork head repo");
    assert_eq!(head_repo.full_name.as_deref(), Some("mallory/clusters"));
    assert_eq!(head_repo.fork, Some(true));
    assert_eq!(head_repo.owner.as_ref().unwrap().login, "mallory");
    assert_eq!(pr.head.label.as_deref(), Some("mallory:mallory-patch"));
    assert_eq!(pr.head.sha, fork_tip.to_string());
    assert_eq!(
        pr.base.repo.as_ref().unwrap().full_name.as_deref(),
        Some("acme/clusters")
    );
    let pr = o.pulls(OWNER, REPO).get(orphan).await.unwrap();
    assert!(pr.head.repo.is_none());
    let (_, raw) = call(
        &s.emu,
        Some(&format!("token {TOKEN}")),
        Method::GET,
        &format!("{}/{orphan}", pulls_path()),
        None,
    )
    .await;
    assert!(raw["head"]["repo"].is_null(), "{}", raw["head"]);
    let listed = o.pulls(OWNER, REPO).list().send().await.unwrap();
    assert_eq!(listed.items.len(), 2);

    // The provider sees the head repository, or none.
    let c = client(&s.emu);
    assert_eq!(
        c.get_pull(fork)
            .await
            .unwrap()
            .head_repo_full_name
            .as_deref(),
        Some("mallory/clusters")
    );
    assert_eq!(c.get_pull(orphan).await.unwrap().head_repo_full_name, None);

    // `head=owner:branch` filters by the head's owner.
    let by_head = |h: &'static str| {
        let o = o.clone();
        async move {
            o.pulls(OWNER, REPO)
                .list()
                .head(h)
                .send()
                .await
                .unwrap()
                .items
                .iter()
                .map(|p| p.number)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(by_head("mallory:mallory-patch").await, vec![fork]);
    assert!(by_head("acme:mallory-patch").await.is_empty());

    // The fork's branch follows pushes; a deleted fork's head is frozen.
    let fork_next = commit(
        &repo,
        "mallory-patch",
        Some(fork_tip),
        &[("clusters/m.yaml", "name: m2\n")],
        "change m",
    );
    commit(
        &repo,
        "feature",
        Some(s.feature_tip),
        &[("clusters/b.yaml", "name: b\nsize: 9\n")],
        "resize b",
    );
    assert_eq!(
        c.get_pull(fork).await.unwrap().head_sha,
        fork_next.to_string()
    );
    assert_eq!(
        c.get_pull(orphan).await.unwrap().head_sha,
        s.feature_tip.to_string()
    );

    for bad in ["acme/clusters", "nobody", "a/b/c"] {
        assert!(matches!(
            s.emu
                .open_fork_pull_request(Some(bad), "feature", "t", "", "mallory"),
            Err(GitHubEmulatorError::InvalidRepository(_))
        ));
    }
}

#[tokio::test]
async fn add_comment_is_a_comment_by_any_user() {
    let s = setup().await;
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "platform-dev")
        .unwrap();
    let id = s.emu.add_comment(n, "mallory", "/tkgops apply").unwrap();
    let listed = octo(&s.emu)
        .issues(OWNER, REPO)
        .list_comments(n)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].id.0, id);
    assert_eq!(listed.items[0].user.login, "mallory");
    assert!(matches!(
        s.emu.add_comment(n, "mallory", &"x".repeat(65_537)),
        Err(GitHubEmulatorError::CommentTooLong(65_537))
    ));
    assert!(matches!(
        s.emu.add_comment(99, "mallory", "hi"),
        Err(GitHubEmulatorError::NoSuchPull(99))
    ));
}

// ----- webhooks -----

const WEBHOOK_SECRET: &str = "a-webhook-secret-of-more-than-24-chars";

/// One delivery as a receiver saw it.
#[derive(Debug)]
struct Received {
    event: String,
    delivery: String,
    signature: Option<String>,
    content_type: String,
    body: bytes::Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver on a free loopback port: every delivery is sent to `rx`, then answered
/// with `status` (after `gate` is notified, when given).
struct Receiver {
    url: String,
    rx: tokio::sync::mpsc::UnboundedReceiver<Received>,
    _server: tokio::task::JoinHandle<()>,
}

async fn receiver(status: u16, gate: Option<Arc<tokio::sync::Notify>>) -> Receiver {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let tx = tx.clone();
            let gate = gate.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let _ = tx.send(Received {
                    event: h("x-github-event").unwrap_or_default(),
                    delivery: h("x-github-delivery").unwrap_or_default(),
                    signature: h("x-hub-signature-256"),
                    content_type: h("content-type").unwrap_or_default(),
                    body,
                });
                if let Some(g) = gate {
                    g.notified().await;
                }
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Receiver {
        url,
        rx,
        _server: server,
    }
}

impl Receiver {
    /// The next delivery (fails the test after 10 s without one).
    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("a webhook delivery arrives")
            .expect("receiver running")
    }

    /// The next `n` deliveries, sorted by event name (their order is not specified).
    async fn next_n(&mut self, n: usize) -> Vec<Received> {
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(self.next().await);
        }
        got.sort_by(|a, b| a.event.cmp(&b.event));
        got
    }
}

/// Checks GitHub's delivery headers and the signature, and that octocrab's webhook model
/// parses the payload; returns the payload.
fn check_delivery(r: &Received, event: &str, guids: &mut Vec<String>) -> Value {
    assert_eq!(r.event, event);
    assert_eq!(r.content_type, "application/json");
    let sig = r.signature.as_deref().expect("X-Hub-Signature-256");
    assert!(
        tkgops::webhook::signature_valid(WEBHOOK_SECRET.as_bytes(), &r.body, sig),
        "{event}: signature {sig} does not verify"
    );
    assert_eq!(
        sig,
        tkgops::webhook::sign(WEBHOOK_SECRET.as_bytes(), &r.body)
    );
    assert!(!tkgops::webhook::signature_valid(
        b"another-secret-entirely-0123456789",
        &r.body,
        sig
    ));
    uuid::Uuid::parse_str(&r.delivery).expect("X-GitHub-Delivery is a GUID");
    assert!(!guids.contains(&r.delivery), "a fresh GUID per delivery");
    guids.push(r.delivery.clone());
    octocrab::models::webhook_events::WebhookEvent::try_from_header_and_body(&r.event, &r.body)
        .unwrap_or_else(|e| panic!("octocrab cannot parse the {event} payload: {e}"));
    let v = r.json();
    assert_eq!(v["repository"]["full_name"], "acme/clusters", "{event}");
    v
}

#[tokio::test]
async fn webhooks_deliver_signed_events_for_every_change() {
    let s = setup().await;
    let mut rcv = receiver(202, None).await;
    s.emu
        .set_webhook(Some(WebhookTarget::new(&rcv.url, WEBHOOK_SECRET)));
    let mut guids = Vec::new();

    // platform-dev opens a PR.
    let (code, _) = call_as(
        &s.emu,
        "platform-dev",
        Method::POST,
        &pulls_path(),
        Some(json!({"title": "Add b", "head": "feature", "base": "main"})),
    )
    .await;
    assert_eq!(code, 201);
    let v = check_delivery(&rcv.next().await, "pull_request", &mut guids);
    assert_eq!(v["action"], "opened");
    assert_eq!(v["number"], 1);
    assert_eq!(v["pull_request"]["head"]["sha"], s.feature_tip.to_string());
    assert_eq!(v["sender"]["login"], "platform-dev");

    // A push to the head branch (straight into the bare repository, as git push does):
    // `push` and `pull_request` `synchronize`.
    let repo = Repository::open_bare(&s.bare).unwrap();
    let new_tip = commit(
        &repo,
        "feature",
        Some(s.feature_tip),
        &[("clusters/b.yaml", "name: b\nsize: 4\n")],
        "resize b",
    );
    let got = rcv.next_n(2).await;
    let sync = check_delivery(&got[0], "pull_request", &mut guids);
    assert_eq!(sync["action"], "synchronize");
    assert_eq!(sync["before"], s.feature_tip.to_string());
    assert_eq!(sync["after"], new_tip.to_string());
    assert_eq!(sync["pull_request"]["head"]["sha"], new_tip.to_string());
    let push = check_delivery(&got[1], "push", &mut guids);
    assert_eq!(push["ref"], "refs/heads/feature");
    assert_eq!(push["before"], s.feature_tip.to_string());
    assert_eq!(push["after"], new_tip.to_string());
    assert_eq!(push["commits"][0]["id"], new_tip.to_string());
    assert_eq!(push["commits"][0]["modified"], json!(["clusters/b.yaml"]));
    assert_eq!(push["forced"], false);

    // alice approves, bob comments.
    s.emu.submit_review(1, "alice", "APPROVED").unwrap();
    let v = check_delivery(&rcv.next().await, "pull_request_review", &mut guids);
    assert_eq!(v["action"], "submitted");
    // Webhook payloads spell review states in lowercase (GitHub's examples).
    assert_eq!(v["review"]["state"], "approved");
    assert_eq!(v["review"]["user"]["login"], "alice");
    assert_eq!(v["review"]["commit_id"], new_tip.to_string());
    assert_eq!(v["sender"]["login"], "alice");
    octo_as(&s.emu, "bob")
        .issues(OWNER, REPO)
        .create_comment(1, "/lgtm")
        .await
        .unwrap();
    let v = check_delivery(&rcv.next().await, "issue_comment", &mut guids);
    assert_eq!(v["action"], "created");
    assert_eq!(v["issue"]["number"], 1);
    assert!(v["issue"]["pull_request"]["url"].is_string());
    assert_eq!(v["comment"]["body"], "/lgtm");
    assert_eq!(v["sender"]["login"], "bob");

    // outsider merges: `pull_request` `closed` (merged) and a `push` to main.
    let merge = octo_as(&s.emu, "outsider")
        .pulls(OWNER, REPO)
        .merge(1)
        .send()
        .await
        .unwrap()
        .sha
        .unwrap();
    let got = rcv.next_n(2).await;
    let closed = check_delivery(&got[0], "pull_request", &mut guids);
    assert_eq!(closed["action"], "closed");
    assert_eq!(closed["pull_request"]["merged"], true);
    assert_eq!(closed["pull_request"]["merge_commit_sha"], merge);
    assert_eq!(closed["sender"]["login"], "outsider");
    let push = check_delivery(&got[1], "push", &mut guids);
    assert_eq!(push["ref"], "refs/heads/main");
    assert_eq!(push["after"], merge);
    assert_eq!(push["sender"]["login"], "outsider");

    // Every delivery is logged as GitHub lists them.
    let log = s
        .emu
        .wait_until(Duration::from_secs(10), |e| {
            let d = e.deliveries();
            (d.len() == guids.len()).then_some(d)
        })
        .await
        .expect("every delivery recorded");
    assert!(log.iter().all(|d| d.succeeded() && d.status == Some(202)));
    assert_eq!(
        log.iter().map(|d| d.guid.clone()).collect::<Vec<_>>().len(),
        guids.len()
    );
    for g in &guids {
        assert!(log.iter().any(|d| &d.guid == g));
    }
}

#[tokio::test]
async fn webhook_failures_are_recorded_and_not_retried() {
    let s = setup().await;
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "platform-dev")
        .unwrap();
    // Nothing listens there: the delivery fails without an answer.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    s.emu
        .set_webhook(Some(WebhookTarget::new(&dead, WEBHOOK_SECRET)));
    s.emu.add_comment(n, "alice", "first").unwrap();
    let failed = s
        .emu
        .wait_until(Duration::from_secs(10), |e| e.deliveries().pop())
        .await
        .expect("the failed delivery is recorded");
    assert_eq!(failed.url, dead);
    assert_eq!(failed.status, None);
    assert!(failed.error.is_some() && !failed.succeeded());
    assert_eq!(failed.event, "issue_comment");

    // A receiver answering 500: recorded as failed with its status.
    let mut broken = receiver(500, None).await;
    s.emu
        .set_webhook(Some(WebhookTarget::new(&broken.url, WEBHOOK_SECRET)));
    s.emu.add_comment(n, "alice", "second").unwrap();
    let got = broken.next().await;
    let d = s
        .emu
        .wait_until(Duration::from_secs(10), |e| {
            e.deliveries().into_iter().find(|d| d.guid == got.delivery)
        })
        .await
        .unwrap();
    assert_eq!(
        (d.status, d.error.as_deref()),
        (Some(500), Some("HTTP 500"))
    );

    // Then a working receiver: only the new event arrives (nothing was retried), and a manual
    // redelivery keeps its GUID and body.
    let mut rcv = receiver(200, None).await;
    s.emu
        .set_webhook(Some(WebhookTarget::new(&rcv.url, WEBHOOK_SECRET)));
    s.emu.add_comment(n, "alice", "third").unwrap();
    let third = rcv.next().await;
    assert_eq!(third.json()["comment"]["body"], "third");
    s.emu.redeliver(&failed.guid).unwrap();
    let again = rcv.next().await;
    assert_eq!(again.delivery, failed.guid);
    assert_eq!(again.body, failed.body.as_bytes());
    let log = s
        .emu
        .wait_until(Duration::from_secs(10), |e| {
            let d = e.deliveries();
            (d.len() == 4).then_some(d)
        })
        .await
        .unwrap();
    assert_eq!(log.iter().filter(|d| d.url == dead).count(), 1);
    assert_eq!(log.iter().filter(|d| d.url == broken.url).count(), 1);
    assert!(log[3].redelivery && log[3].succeeded());
    assert!(broken.rx.try_recv().is_err(), "the 500 was not retried");

    // Without a secret, deliveries are unsigned (as GitHub sends them).
    s.emu.set_webhook(Some(WebhookTarget::new(&rcv.url, "")));
    s.emu.add_comment(n, "alice", "fourth").unwrap();
    let unsigned = rcv.next().await;
    assert_eq!(unsigned.signature, None);
    assert!(rcv.rx.try_recv().is_err(), "nothing else was delivered");
}

#[tokio::test]
async fn webhook_deliveries_never_block_the_api() {
    let s = setup().await;
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "platform-dev")
        .unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut rcv = receiver(200, Some(gate.clone())).await;
    s.emu
        .set_webhook(Some(WebhookTarget::new(&rcv.url, WEBHOOK_SECRET)));
    s.emu.add_comment(n, "alice", "first").unwrap();
    // The receiver holds the first delivery …
    let first = rcv.next().await;
    assert_eq!(first.json()["comment"]["body"], "first");
    // … and the API still answers at once.
    let comment = tokio::time::timeout(
        Duration::from_secs(5),
        octo_as(&s.emu, "bob")
            .issues(OWNER, REPO)
            .create_comment(n, "second"),
    )
    .await
    .expect("the API answers while a delivery is pending")
    .unwrap();
    assert_eq!(comment.user.login, "bob");
    assert!(s.emu.deliveries().is_empty(), "the first is still pending");
    gate.notify_one();
    let second = rcv.next().await;
    assert_eq!(second.json()["comment"]["body"], "second");
    gate.notify_one();
    let log = s
        .emu
        .wait_until(Duration::from_secs(10), |e| {
            let d = e.deliveries();
            (d.len() == 2).then_some(d)
        })
        .await
        .expect("both deliveries recorded");
    assert!(log.iter().all(|d| d.succeeded()));
}

// ----- GitHub App: JWT and installation tokens -----

const APP_ID: u64 = 4711;
const APP_SLUG: &str = "tkgops-test";
const APP_PRIVATE_KEY: &str = include_str!("../fixtures/github/test-only-app-private-key.pem");
const APP_PUBLIC_KEY: &str = include_str!("../fixtures/github/test-only-app-public-key.pem");

async fn setup_app(ttl: Duration) -> Setup {
    setup_with(|o| {
        let mut app = GitHubAppOptions::new(APP_ID, APP_SLUG, APP_PUBLIC_KEY);
        app.token_ttl = ttl;
        o.app = Some(app);
    })
    .await
}

fn app_key() -> octocrab::EncodingKey {
    octocrab::EncodingKey::from_rsa_pem(APP_PRIVATE_KEY.as_bytes()).unwrap()
}

/// A JWT with these claims, signed RS256 with the test App's key.
fn jwt(claims: Value) -> String {
    octocrab::jsonwebtoken::encode(
        &octocrab::jsonwebtoken::Header::new(octocrab::jsonwebtoken::Algorithm::RS256),
        &claims,
        &app_key(),
    )
    .unwrap()
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn app_installation_tokens_act_as_the_app_and_expire() {
    let s = setup_app(Duration::from_secs(7200)).await;
    let n = s
        .emu
        .open_pull_request("feature", "t", "", "platform-dev")
        .unwrap();
    // octocrab authenticated as the App (its own JWTs).
    let app = octocrab::Octocrab::builder()
        .base_uri(s.emu.api_url())
        .unwrap()
        .app(octocrab::models::AppId(APP_ID), app_key())
        .build()
        .unwrap();
    let me = app.current().app().await.unwrap();
    assert_eq!((me.id.0, me.slug.as_deref()), (APP_ID, Some(APP_SLUG)));
    let installation = app
        .apps()
        .get_repository_installation(OWNER, REPO)
        .await
        .unwrap();
    assert_eq!(installation.id.0, DEFAULT_INSTALLATION_ID);
    assert_eq!(installation.account.login, OWNER);

    // Minting a token by hand: GitHub's shape, valid for the configured TTL.
    let jwt = octocrab::auth::create_jwt(octocrab::models::AppId(APP_ID), &app_key()).unwrap();
    let tokens = format!("/app/installations/{DEFAULT_INSTALLATION_ID}/access_tokens");
    let (code, minted) = call(
        &s.emu,
        Some(&format!("Bearer {jwt}")),
        Method::POST,
        &tokens,
        None,
    )
    .await;
    assert_eq!(code, 201, "{minted}");
    let token = minted["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("ghs_") && token.len() == 40, "{token}");
    let expires: chrono::DateTime<chrono::Utc> =
        minted["expires_at"].as_str().unwrap().parse().unwrap();
    let left = (expires - chrono::Utc::now()).num_seconds();
    assert!((7100..=7200).contains(&left), "{left}");
    assert_eq!(minted["permissions"]["issues"], "write");

    // The installation acts as <slug>[bot]; it is no user.
    let inst = app.installation(installation.id).unwrap();
    let c = inst
        .issues(OWNER, REPO)
        .create_comment(n, "from the App")
        .await
        .unwrap();
    assert_eq!(c.user.login, "tkgops-test[bot]");
    assert_eq!(c.user.r#type, "Bot");
    let auth = format!("token {token}");
    let (code, body) = call(&s.emu, Some(&auth), Method::GET, "/user", None).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["message"], "Resource not accessible by integration");
    let (code, _) = call(
        &s.emu,
        Some(&auth),
        Method::GET,
        &format!("/repos/{OWNER}/{REPO}"),
        None,
    )
    .await;
    assert_eq!(code, 200);

    // Expired tokens are refused like unknown ones: 401 Bad credentials.
    s.emu.expire_installation_tokens();
    let (code, body) = call(
        &s.emu,
        Some(&auth),
        Method::GET,
        &format!("/repos/{OWNER}/{REPO}"),
        None,
    )
    .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (401, Some("Bad credentials"))
    );
    // octocrab still holds its (now expired) token: on the 401 it drops it, mints a new one and
    // retries once, so the call succeeds with a fresh token.
    let issued = s.emu.installation_tokens_issued();
    let c = inst
        .issues(OWNER, REPO)
        .create_comment(n, "after expiry")
        .await
        .unwrap();
    assert_eq!(c.user.login, "tkgops-test[bot]");
    assert_eq!(s.emu.installation_tokens_issued(), issued + 1);
    let comment_posts = format!("/repos/{OWNER}/{REPO}/issues/{n}/comments");
    assert_eq!(
        s.emu.faults().log().count(&Method::POST, &comment_posts),
        3,
        "the first, the refused stale one, the retried one"
    );
    // A new token works again.
    let issued = s.emu.installation_tokens_issued();
    let (code, minted) = call(
        &s.emu,
        Some(&format!("Bearer {jwt}")),
        Method::POST,
        &tokens,
        Some(json!({"repositories": [REPO]})),
    )
    .await;
    assert_eq!(code, 201, "{minted}");
    assert_eq!(s.emu.installation_tokens_issued(), issued + 1);
    let fresh = format!("Bearer {}", minted["token"].as_str().unwrap());
    let (code, _) = call(
        &s.emu,
        Some(&fresh),
        Method::GET,
        &format!("/repos/{OWNER}/{REPO}"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(s.emu.comments(n).len(), 2);
}

#[tokio::test]
async fn app_jwts_are_checked_like_github() {
    let s = setup_app(Duration::from_secs(3600)).await;
    let now = now_secs();
    let message = |v: &Value| v["message"].as_str().unwrap_or("").to_string();
    let get_app = |token: String| {
        let emu = s.emu.clone();
        async move {
            call(
                &emu,
                Some(&format!("Bearer {token}")),
                Method::GET,
                "/app",
                None,
            )
            .await
        }
    };

    let (code, body) = get_app(jwt(
        json!({"iss": APP_ID, "iat": now - 60, "exp": now + 540}),
    ))
    .await;
    assert_eq!(
        (code, body["slug"].as_str()),
        (200, Some(APP_SLUG)),
        "{body}"
    );
    // The App id may also be sent as a string.
    let (code, _) = get_app(jwt(
        json!({"iss": APP_ID.to_string(), "iat": now, "exp": now + 300}),
    ))
    .await;
    assert_eq!(code, 200);

    for (claims, expected) in [
        (
            json!({"iss": APP_ID, "iat": now - 60, "exp": now + 3600}),
            "'Expiration time' claim ('exp') is too far in the future",
        ),
        (
            json!({"iss": APP_ID, "iat": now - 600, "exp": now - 10}),
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        ),
        (
            json!({"iss": APP_ID, "iat": now + 300, "exp": now + 500}),
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
        ),
        (
            json!({"iss": APP_ID + 1, "iat": now - 60, "exp": now + 540}),
            "A JSON web token could not be decoded",
        ),
        (
            json!({"iss": "an-app", "iat": now - 60, "exp": now + 540}),
            "'Issuer' claim ('iss') must be an Integer",
        ),
    ] {
        let (code, body) = get_app(jwt(claims.clone())).await;
        assert_eq!((code, message(&body)), (401, expected.to_string()), "{claims}");
    }
    // A tampered signature, or another algorithm, does not verify.
    let good = jwt(json!({"iss": APP_ID, "iat": now - 60, "exp": now + 540}));
    let (head, sig) = good.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let (code, body) = get_app(format!("{head}.{flipped}{}", &sig[1..])).await;
    assert_eq!(
        (code, message(&body).as_str()),
        (401, "A JSON web token could not be decoded")
    );
    let hs256 = octocrab::jsonwebtoken::encode(
        &octocrab::jsonwebtoken::Header::new(octocrab::jsonwebtoken::Algorithm::HS256),
        &json!({"iss": APP_ID, "iat": now - 60, "exp": now + 540}),
        &octocrab::EncodingKey::from_secret(APP_PUBLIC_KEY.as_bytes()),
    )
    .unwrap();
    let (code, _) = get_app(hs256).await;
    assert_eq!(code, 401);

    // App endpoints take only the JWT; the JWT opens nothing else.
    let installation = format!("/repos/{OWNER}/{REPO}/installation");
    for path in ["/app", installation.as_str()] {
        let (code, body) = call_as(&s.emu, "alice", Method::GET, path, None).await;
        assert_eq!(
            (code, message(&body).as_str()),
            (401, "A JSON web token could not be decoded"),
            "{path}"
        );
    }
    let (code, body) = call(
        &s.emu,
        Some(&format!("Bearer {good}")),
        Method::GET,
        &pulls_path(),
        None,
    )
    .await;
    assert_eq!(
        (code, message(&body).as_str()),
        (403, "Resource not accessible by integration")
    );
    // Unknown installations and repositories outside the installation.
    let (code, _) = call(
        &s.emu,
        Some(&format!("Bearer {good}")),
        Method::POST,
        "/app/installations/1/access_tokens",
        None,
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = call(
        &s.emu,
        Some(&format!("Bearer {good}")),
        Method::POST,
        &format!("/app/installations/{DEFAULT_INSTALLATION_ID}/access_tokens"),
        Some(json!({"repositories": ["another-repo"]})),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(s.emu.installation_tokens_issued(), 0);
}

/// A secondary rate limit without `retry-after` (a 403 whose message says so) is waited out:
/// at least the minimum wait, doubled for every further limit in a row; then the call succeeds.
#[tokio::test]
async fn secondary_rate_limits_are_waited_out_growing() {
    let s = setup().await;
    let settings = RetrySettings {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(5),
        max_wait: Duration::from_secs(5),
        min_rate_limit_wait: Duration::from_millis(200),
    };
    let c = OctocrabClient::new(&s.emu.api_url(), TOKEN, OWNER, REPO, settings).unwrap();
    s.emu.faults().inject(Fault::new(
        None,
        "/repos/acme/clusters",
        FaultAction::Status {
            code: 403,
            body: r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"}"#.into(),
        },
        Some(2),
    ));
    let start = Instant::now();
    c.repository().await.expect("waited out");
    let took = start.elapsed();
    // 200 ms, then 400 ms: not the 5 ms backoff of server errors.
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let faulted = s
        .emu
        .faults()
        .log()
        .all()
        .iter()
        .filter(|r| r.faulted)
        .count();
    assert_eq!(faulted, 2);
}

/// Content-creating requests share one budget of 80 a minute per GitHub instance: the 81st
/// write in a burst waits for the budget instead of being sent.
#[tokio::test]
async fn content_writes_are_paced_to_eighty_a_minute() {
    let s = setup().await;
    let c = client(&s.emu);
    let sha = s.main_tip.to_string();
    let start = Instant::now();
    for i in 0..82 {
        c.set_status(&sha, &format!("ctx-{i}"), CommitState::Success, "ok", None)
            .await
            .unwrap();
    }
    let took = start.elapsed();
    // 80 at once, then one every 750 ms.
    assert!(took >= Duration::from_millis(1400), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// GitHub's rules (issue 16 item 10): roles, merge methods, pull commits, review dismissal,
// pending reviews, closed pull requests, status creators.
// ---------------------------------------------------------------------------------------------

/// The HTTP status of an octocrab error (GitHub's answer).
fn status_of(err: octocrab::Error) -> u16 {
    match err {
        octocrab::Error::GitHub { source, .. } => source.status_code.as_u16(),
        other => panic!("not a GitHub answer: {other}"),
    }
}

/// Opens a pull request from `feature` as platform-dev through the API; returns its number.
async fn open_feature_pr(s: &Setup) -> u64 {
    octo_as(&s.emu, "platform-dev")
        .pulls(OWNER, REPO)
        .create("Add cluster b", "feature", "main")
        .send()
        .await
        .unwrap()
        .number
}

#[tokio::test]
async fn roles_decide_who_merges_posts_statuses_and_edits_comments() {
    let s = setup().await;
    let n = open_feature_pr(&s).await;
    assert_eq!(s.emu.role("reader"), Role::Read);
    assert_eq!(s.emu.role("outsider"), Role::Write);
    assert_eq!(s.emu.role(OWNER), Role::Admin);
    assert_eq!(s.emu.role("tkgops[bot]"), Role::Write);

    // `read` comments and reviews (an approval included: approval is not authorisation).
    let mine = octo_as(&s.emu, "reader")
        .issues(OWNER, REPO)
        .create_comment(n, "lgtm from a reader")
        .await
        .unwrap();
    assert_eq!(mine.user.login, "reader");
    let (code, review) = call_as(
        &s.emu,
        "reader",
        Method::POST,
        &format!("{}/{n}/reviews", pulls_path()),
        Some(json!({"event": "APPROVE"})),
    )
    .await;
    assert_eq!((code, review["state"].as_str()), (200, Some("APPROVED")));

    // ... but does not merge: 403 through the API, an error through the control API.
    let err = octo_as(&s.emu, "reader")
        .pulls(OWNER, REPO)
        .merge(n)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_of(err), 403);
    let err = s.emu.merge_pull_request(n, "reader").unwrap_err();
    assert!(
        matches!(&err, GitHubEmulatorError::Forbidden { login, role: Role::Read, needed: Role::Write, .. } if login == "reader"),
        "{err}"
    );
    // ... nor posts commit statuses (push access is needed).
    let sha = s.feature_tip.to_string();
    let (code, body) = call_as(
        &s.emu,
        "reader",
        Method::POST,
        &format!("/repos/{OWNER}/{REPO}/statuses/{sha}"),
        Some(json!({"state": "success", "context": "tkgops/plan"})),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(s.emu.statuses(&sha).is_empty());
    // ... nor labels (triage).
    let (code, _) = call_as(
        &s.emu,
        "reader",
        Method::POST,
        &format!("/repos/{OWNER}/{REPO}/issues/{n}/labels"),
        Some(json!({"labels": ["tkgops/allow-delete"]})),
    )
    .await;
    assert_eq!(code, 403);
    let pr = octo(&s.emu).pulls(OWNER, REPO).get(n).await.unwrap();
    assert_eq!(pr.state, Some(octocrab::models::IssueState::Open));
    assert!(pr.labels.unwrap_or_default().is_empty());

    // alice comments; the reader may edit only their own comment.
    let alices = octo_as(&s.emu, "alice")
        .issues(OWNER, REPO)
        .create_comment(n, "LGTM")
        .await
        .unwrap();
    let edited = octo_as(&s.emu, "reader")
        .issues(OWNER, REPO)
        .update_comment(mine.id, "lgtm (edited)")
        .await
        .unwrap();
    assert_eq!(edited.body.as_deref(), Some("lgtm (edited)"));
    let err = octo_as(&s.emu, "reader")
        .issues(OWNER, REPO)
        .update_comment(alices.id, "/tkgops retry")
        .await
        .unwrap_err();
    assert_eq!(status_of(err), 403);
    let err = octo_as(&s.emu, "reader")
        .issues(OWNER, REPO)
        .delete_comment(alices.id)
        .await
        .unwrap_err();
    assert_eq!(status_of(err), 403);
    assert!(matches!(
        s.emu.edit_comment(alices.id.0, "reader", "/tkgops retry"),
        Err(GitHubEmulatorError::Forbidden { .. })
    ));
    let stored = s.emu.comments(n);
    let alice_now = stored.iter().find(|c| c.id == alices.id.0).unwrap();
    assert_eq!(alice_now.body, "LGTM");
    assert_eq!(alice_now.updated_at, alice_now.created_at);

    // A writer edits alice's comment: the author stays, `updated_at` moves.
    let rewritten = octo_as(&s.emu, "outsider")
        .issues(OWNER, REPO)
        .update_comment(alices.id, "/tkgops retry")
        .await
        .unwrap();
    assert_eq!(rewritten.user.login, "alice");
    assert_eq!(rewritten.body.as_deref(), Some("/tkgops retry"));
    assert!(rewritten.updated_at.unwrap() >= rewritten.created_at);
    let alice_now = s
        .emu
        .comments(n)
        .into_iter()
        .find(|c| c.id == alices.id.0)
        .unwrap();
    assert!(alice_now.updated_at > alice_now.created_at, "{alice_now:?}");
    // Read back through the provider: the edit shows in `updated_at`.
    let listed = client(&s.emu)
        .list_comments_since(alice_now.created_at - chrono::Duration::seconds(5))
        .await
        .unwrap();
    let c = listed.iter().find(|c| c.id == alices.id.0).unwrap();
    assert_eq!(
        (c.user.as_str(), c.body.as_str()),
        ("alice", "/tkgops retry")
    );
    // The control API follows the same rule.
    s.emu
        .edit_comment(alices.id.0, "bob", "edited by bob")
        .unwrap();
    let again = s
        .emu
        .comments(n)
        .into_iter()
        .find(|c| c.id == alices.id.0)
        .unwrap();
    assert_eq!(again.user, "alice");
    assert!(again.updated_at > alice_now.updated_at);

    // Roles change at run time: outsider demoted to triage labels but cannot merge.
    s.emu.set_role("Outsider", Role::Triage);
    let (code, _) = call_as(
        &s.emu,
        "outsider",
        Method::POST,
        &format!("/repos/{OWNER}/{REPO}/issues/{n}/labels"),
        Some(json!({"labels": ["needs-review"]})),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = call_as(
        &s.emu,
        "outsider",
        Method::PUT,
        &format!("{}/{n}/merge", pulls_path()),
        Some(json!({})),
    )
    .await;
    assert_eq!(code, 403);
    s.emu.set_role("outsider", Role::Write);
    let merged = octo_as(&s.emu, "outsider")
        .pulls(OWNER, REPO)
        .merge(n)
        .send()
        .await
        .unwrap();
    assert!(merged.merged);
}

/// A repository where `main` moved on after three branches forked from it: `squash-me` and
/// `rebase-me` carry two commits each (by "Dev"), `merge-me` one. Returns
/// (repo, main tip, branch → its commits oldest first).
fn fork_three_branches(s: &Setup) -> (Repository, Oid, BTreeMap<&'static str, Vec<Oid>>) {
    let repo = Repository::open_bare(&s.bare).unwrap();
    let mut branches = BTreeMap::new();
    for (branch, files) in [
        ("merge-me", vec![("clusters/m.yaml", "name: m\n")]),
        (
            "squash-me",
            vec![
                ("clusters/s.yaml", "name: s\n"),
                ("clusters/s2.yaml", "n: 2\n"),
            ],
        ),
        (
            "rebase-me",
            vec![
                ("clusters/r.yaml", "name: r\n"),
                ("clusters/r2.yaml", "n: 2\n"),
            ],
        ),
    ] {
        let mut tip = s.main_tip;
        let mut commits = Vec::new();
        for (i, (path, content)) in files.into_iter().enumerate() {
            tip = commit(
                &repo,
                branch,
                Some(tip),
                &[(path, content)],
                &format!("{branch}: commit {}\n\nbody {i}\n", i + 1),
            );
            commits.push(tip);
        }
        branches.insert(branch, commits);
    }
    let main2 = commit(
        &repo,
        "main",
        Some(s.main_tip),
        &[("clusters/c.yaml", "name: c\n")],
        "add c",
    );
    (repo, main2, branches)
}

/// The tree git makes when merging `head` into `base`.
fn merged_tree(repo: &Repository, base: Oid, head: Oid) -> Oid {
    let mut idx = repo
        .merge_commits(
            &repo.find_commit(base).unwrap(),
            &repo.find_commit(head).unwrap(),
            None,
        )
        .unwrap();
    assert!(!idx.has_conflicts());
    idx.write_tree_to(repo).unwrap()
}

/// The payload of the next `pull_request` `closed` delivery (others are skipped).
async fn next_closed(rcv: &mut Receiver) -> Value {
    loop {
        let r = rcv.next().await;
        let v = r.json();
        if r.event == "pull_request" && v["action"] == "closed" {
            return v;
        }
    }
}

#[tokio::test]
async fn merge_methods_make_the_commits_github_makes() {
    let s = setup().await;
    let (repo, main2, branches) = fork_three_branches(&s);
    let mut rcv = receiver(202, None).await;
    let o = octo_as(&s.emu, "alice");
    let mut numbers = BTreeMap::new();
    for branch in ["merge-me", "squash-me", "rebase-me"] {
        let pr = octo_as(&s.emu, "platform-dev")
            .pulls(OWNER, REPO)
            .create(format!("PR {branch}"), branch, "main")
            .send()
            .await
            .unwrap();
        numbers.insert(branch, pr.number);
    }
    s.emu
        .set_webhook(Some(WebhookTarget::new(&rcv.url, WEBHOOK_SECRET)));
    let tip = |repo: &Repository| repo.refname_to_id("refs/heads/main").unwrap();

    // merge (the default): parents [base tip, head].
    let n = numbers["merge-me"];
    let head = branches["merge-me"][0];
    let merged = o.pulls(OWNER, REPO).merge(n).send().await.unwrap();
    let sha = merged.sha.unwrap();
    let c = repo.find_commit(Oid::from_str(&sha).unwrap()).unwrap();
    assert_eq!(c.parent_ids().collect::<Vec<_>>(), vec![main2, head]);
    assert_eq!(tip(&repo), c.id());
    assert_eq!(c.author().name().ok(), Some("alice"));
    assert_eq!(c.committer().name().ok(), Some("GitHub"));
    assert!(c
        .message()
        .unwrap()
        .starts_with(&format!("Merge pull request #{n} from {OWNER}/merge-me")));
    let pr = o.pulls(OWNER, REPO).get(n).await.unwrap();
    assert_eq!(pr.merge_commit_sha.as_deref(), Some(sha.as_str()));
    let v = next_closed(&mut rcv).await;
    assert_eq!(v["pull_request"]["merge_commit_sha"], sha.as_str());
    assert_eq!(v["pull_request"]["merged"], true);

    // squash: one commit on the base tip with the merge result's tree.
    let n = numbers["squash-me"];
    let base_before = tip(&repo);
    let head = *branches["squash-me"].last().unwrap();
    let merged = o
        .pulls(OWNER, REPO)
        .merge(n)
        .method(octocrab::params::pulls::MergeMethod::Squash)
        .send()
        .await
        .unwrap();
    let sha = merged.sha.unwrap();
    let c = repo.find_commit(Oid::from_str(&sha).unwrap()).unwrap();
    assert_eq!(c.parent_ids().collect::<Vec<_>>(), vec![base_before]);
    assert_eq!(c.tree_id(), merged_tree(&repo, base_before, head));
    assert_eq!(tip(&repo), c.id());
    assert_eq!(c.committer().name().ok(), Some("GitHub"));
    // GitHub's default for several commits: the PR title with its number, then the list.
    let msg = c.message().unwrap();
    assert!(
        msg.starts_with(&format!("PR squash-me (#{n})\n\n* squash-me: commit 1")),
        "{msg}"
    );
    assert!(msg.contains("* squash-me: commit 2"), "{msg}");
    let pr = o.pulls(OWNER, REPO).get(n).await.unwrap();
    assert_eq!(pr.merge_commit_sha.as_deref(), Some(sha.as_str()));
    let v = next_closed(&mut rcv).await;
    assert_eq!(v["pull_request"]["merge_commit_sha"], sha.as_str());

    // rebase (control API): each commit re-applied, same author and message, new committer.
    let n = numbers["rebase-me"];
    let base_before = tip(&repo);
    let originals = branches["rebase-me"].clone();
    let sha = s
        .emu
        .merge_pull_request_with(n, "bob", MergeMethod::Rebase)
        .unwrap();
    let last = repo.find_commit(Oid::from_str(&sha).unwrap()).unwrap();
    assert_eq!(tip(&repo), last.id());
    let first = last.parent(0).unwrap();
    assert_eq!(last.parent_count(), 1);
    assert_eq!(first.parent_count(), 1);
    assert_eq!(first.parent_id(0).unwrap(), base_before);
    for (new, old) in [&first, &last].into_iter().zip(&originals) {
        let old = repo.find_commit(*old).unwrap();
        assert_ne!(new.id(), old.id(), "a rebase makes new commits");
        assert_eq!(new.message(), old.message());
        assert_eq!(new.author().name(), old.author().name());
        assert_eq!(new.author().email(), old.author().email());
        assert_eq!(new.author().when(), old.author().when());
        assert_eq!(new.committer().name().ok(), Some("GitHub"));
        assert_eq!(new.committer().email().ok(), Some("noreply@github.com"));
    }
    assert_eq!(
        last.tree_id(),
        merged_tree(&repo, base_before, *originals.last().unwrap())
    );
    // The merge commit's first parent is the PR's own previous commit, not the base tip.
    assert_ne!(last.parent_id(0).unwrap(), base_before);
    let pr = o.pulls(OWNER, REPO).get(n).await.unwrap();
    assert_eq!(pr.merge_commit_sha.as_deref(), Some(sha.as_str()));
    assert_eq!(pr.merged_by.unwrap().login, "bob");
    let v = next_closed(&mut rcv).await;
    assert_eq!(v["pull_request"]["merge_commit_sha"], sha.as_str());
    let closed = client(&s.emu).get_pull(n).await.unwrap();
    assert_eq!(closed.merge_commit_sha.as_deref(), Some(sha.as_str()));
}

#[tokio::test]
async fn merge_methods_are_validated_and_unsafe_rebases_refused() {
    let s = setup().await;
    let n = open_feature_pr(&s).await;
    let merge = format!("{}/{n}/merge", pulls_path());
    let (code, body) = call_as(
        &s.emu,
        "alice",
        Method::PUT,
        &merge,
        Some(json!({"merge_method": "fast-forward"})),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "merge_method");

    // A rebase whose commits do not re-apply onto the moved base: 405, nothing written.
    let repo = Repository::open_bare(&s.bare).unwrap();
    let main2 = commit(
        &repo,
        "main",
        Some(s.main_tip),
        &[("clusters/b.yaml", "name: b\nsize: 9\n")],
        "b on main",
    );
    let (code, body) = call_as(
        &s.emu,
        "alice",
        Method::PUT,
        &merge,
        Some(json!({"merge_method": "rebase"})),
    )
    .await;
    assert_eq!(code, 405, "{body}");
    assert_eq!(repo.refname_to_id("refs/heads/main").unwrap(), main2);
    assert!(matches!(
        s.emu
            .merge_pull_request_with(n, "alice", MergeMethod::Rebase),
        Err(GitHubEmulatorError::CannotRebase(_))
    ));
    let pr = octo(&s.emu).pulls(OWNER, REPO).get(n).await.unwrap();
    assert_eq!(pr.merged_at, None);
}

#[tokio::test]
async fn pull_commits_are_listed_oldest_first_and_paginated() {
    let s = setup().await;
    let repo = Repository::open_bare(&s.bare).unwrap();
    // feature: "add b" (from setup) plus two more.
    let c2 = commit(
        &repo,
        "feature",
        Some(s.feature_tip),
        &[("clusters/b.yaml", "name: b\nsize: 4\n")],
        "resize b\n\nto four\n",
    );
    let c3 = commit(
        &repo,
        "feature",
        Some(c2),
        &[("clusters/d.yaml", "name: d\n")],
        "add d",
    );
    let n = open_feature_pr(&s).await;
    let expected = [s.feature_tip, c2, c3];

    // Raw, two a page: GitHub's shape and Link header.
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/repos/{OWNER}/{REPO}/pulls/{n}/commits?per_page=2",
            s.emu.api_url()
        ))
        .header("authorization", format!("token {}", token_of("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let link = resp.headers()["link"].to_str().unwrap().to_string();
    assert!(
        link.contains("rel=\"next\"") && link.contains("page=2"),
        "{link}"
    );
    let page1: Value = resp.json().await.unwrap();
    assert_eq!(page1.as_array().unwrap().len(), 2);
    let first = &page1[0];
    assert_eq!(first["sha"], s.feature_tip.to_string());
    assert_eq!(first["commit"]["message"], "add b");
    assert_eq!(first["commit"]["author"]["name"], "Dev");
    assert_eq!(first["commit"]["author"]["email"], "dev@example.com");
    assert!(first["commit"]["author"]["date"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(first["parents"][0]["sha"], s.main_tip.to_string());
    assert_eq!(page1[1]["commit"]["message"], "resize b\n\nto four");

    // Typed octocrab, page 2.
    let page2 = octo(&s.emu)
        .pulls(OWNER, REPO)
        .pr_commits(n)
        .per_page(2u8)
        .page(2u32)
        .send()
        .await
        .unwrap();
    assert_eq!(page2.items.len(), 1);
    assert_eq!(page2.items[0].sha, c3.to_string());
    assert_eq!(
        page2.items[0].parents[0].sha.as_deref(),
        Some(c2.to_string().as_str())
    );

    // The provider: every page, oldest first.
    let listed = client(&s.emu).list_pull_commits(n).await.unwrap();
    let shas: Vec<String> = listed.iter().map(|c| c.sha.clone()).collect();
    assert_eq!(
        shas,
        expected.iter().map(|o| o.to_string()).collect::<Vec<_>>()
    );
    let when = repo.find_commit(c2).unwrap().author().when().seconds();
    assert_eq!(listed[1].message, "resize b\n\nto four");
    assert_eq!(listed[1].author_name, "Dev");
    assert_eq!(listed[1].author_email, "dev@example.com");
    assert_eq!(listed[1].author_date.map(|d| d.timestamp()), Some(when));

    // After a squash merge the pull request still lists its own commits.
    s.emu
        .merge_pull_request_with(n, "alice", MergeMethod::Squash)
        .unwrap();
    let after: Vec<String> = client(&s.emu)
        .list_pull_commits(n)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.sha)
        .collect();
    assert_eq!(after, shas);
}

#[tokio::test]
async fn pull_commits_past_githubs_250_fail_closed() {
    let s = setup().await;
    let repo = Repository::open_bare(&s.bare).unwrap();
    let mut tip = s.feature_tip;
    // 251 commits in all.
    for i in 0..250 {
        tip = commit(
            &repo,
            "feature",
            Some(tip),
            &[("clusters/b.yaml", &format!("name: b\nsize: {i}\n"))],
            &format!("step {i}"),
        );
    }
    let n = open_feature_pr(&s).await;
    let pr = octo(&s.emu).pulls(OWNER, REPO).get(n).await.unwrap();
    assert_eq!(pr.commits, Some(251));
    // GitHub lists the first 250 only.
    let mut listed = 0;
    for page in 1..=4u32 {
        listed += octo(&s.emu)
            .pulls(OWNER, REPO)
            .pr_commits(n)
            .per_page(100u8)
            .page(page)
            .send()
            .await
            .unwrap()
            .items
            .len();
    }
    assert_eq!(listed, 250);
    let err = client(&s.emu).list_pull_commits(n).await.unwrap_err();
    assert!(
        matches!(err, GitHubError::TooManyCommits { number, count: 251 } if number == n),
        "{err}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn reviews_can_be_dismissed_by_writers_only() {
    let s = setup().await;
    let n = open_feature_pr(&s).await;
    let (code, review) = call_as(
        &s.emu,
        "alice",
        Method::POST,
        &format!("{}/{n}/reviews", pulls_path()),
        Some(json!({"event": "APPROVE", "body": "ok"})),
    )
    .await;
    assert_eq!(code, 200);
    let id = review["id"].as_u64().unwrap();
    assert!(review["submitted_at"].is_string());
    let dismissals = format!("{}/{n}/reviews/{id}/dismissals", pulls_path());

    // A reader may not dismiss; a message is required.
    let (code, _) = call_as(
        &s.emu,
        "reader",
        Method::PUT,
        &dismissals,
        Some(json!({"message": "no", "event": "DISMISS"})),
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = call_as(
        &s.emu,
        "outsider",
        Method::PUT,
        &dismissals,
        Some(json!({})),
    )
    .await;
    assert_eq!(code, 422);
    let (code, _) = call_as(
        &s.emu,
        "outsider",
        Method::PUT,
        &format!("{}/{n}/reviews/9999/dismissals", pulls_path()),
        Some(json!({"message": "x"})),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(s.emu.reviews(n)[0].state, "APPROVED");

    // outsider (write) dismisses through octocrab: DISMISSED.
    let dismissed = octo_as(&s.emu, "outsider")
        .pulls(OWNER, REPO)
        .pr_review_actions(n, id)
        .dismiss("stale: the plan changed")
        .await
        .unwrap();
    assert_eq!(dismissed.id.0, id);
    assert_eq!(
        dismissed.state,
        Some(octocrab::models::pulls::ReviewState::Dismissed)
    );
    let reviews = client(&s.emu).list_reviews(n).await.unwrap();
    assert_eq!(reviews.len(), 1);
    assert_eq!(
        (
            reviews[0].id,
            reviews[0].user.as_str(),
            reviews[0].state.as_str()
        ),
        (id, "alice", "DISMISSED")
    );
    assert!(reviews[0].submitted_at.is_some());

    // A commented review cannot be dismissed; the control API enforces the role too.
    let commented = s.emu.submit_review_id(n, "bob", "COMMENTED").unwrap();
    assert!(matches!(
        s.emu.dismiss_review(n, commented, "alice"),
        Err(GitHubEmulatorError::ReviewRefused { .. })
    ));
    let approved = s.emu.submit_review_id(n, "bob", "APPROVED").unwrap();
    assert!(matches!(
        s.emu.dismiss_review(n, approved, "reader"),
        Err(GitHubEmulatorError::Forbidden { .. })
    ));
    s.emu.dismiss_review(n, approved, "alice").unwrap();
    let states: Vec<String> = client(&s.emu)
        .list_reviews(n)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, vec!["DISMISSED", "COMMENTED", "DISMISSED"]);
}

#[tokio::test]
async fn pending_reviews_are_visible_to_their_author_only() {
    let s = setup().await;
    let n = open_feature_pr(&s).await;
    let reviews = format!("{}/{n}/reviews", pulls_path());
    // A review without `event` is pending: no `submitted_at`.
    let (code, pending) = call_as(
        &s.emu,
        "bob",
        Method::POST,
        &reviews,
        Some(json!({"body": "draft"})),
    )
    .await;
    assert_eq!(code, 200, "{pending}");
    assert_eq!(pending["state"], "PENDING");
    assert!(pending.get("submitted_at").is_none_or(Value::is_null));
    let id = pending["id"].as_u64().unwrap();
    // One pending review per user.
    let (code, _) = call_as(&s.emu, "bob", Method::POST, &reviews, Some(json!({}))).await;
    assert_eq!(code, 422);
    s.emu.submit_review(n, "alice", "APPROVED").unwrap();

    // bob sees his pending review; alice and the bot do not.
    let (_, as_bob) = call_as(&s.emu, "bob", Method::GET, &reviews, None).await;
    let bob_states: Vec<&str> = as_bob
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(bob_states, vec!["PENDING", "APPROVED"]);
    let (_, as_alice) = call_as(&s.emu, "alice", Method::GET, &reviews, None).await;
    assert_eq!(as_alice.as_array().unwrap().len(), 1);
    let bot: Vec<(String, String)> = client(&s.emu)
        .list_reviews(n)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.user, r.state))
        .collect();
    assert_eq!(bot, vec![("alice".to_string(), "APPROVED".to_string())]);
    let one = format!("{reviews}/{id}");
    assert_eq!(
        call_as(&s.emu, "alice", Method::GET, &one, None).await.0,
        404
    );
    assert_eq!(call_as(&s.emu, "bob", Method::GET, &one, None).await.0, 200);
    // Not dismissable, and invisible to other dismissers.
    let (code, _) = call_as(
        &s.emu,
        "bob",
        Method::PUT,
        &format!("{one}/dismissals"),
        Some(json!({"message": "x"})),
    )
    .await;
    assert_eq!(code, 422);
    let (code, _) = call_as(
        &s.emu,
        "alice",
        Method::PUT,
        &format!("{one}/dismissals"),
        Some(json!({"message": "x"})),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(s.emu.reviews(n).len(), 2);
}

#[tokio::test]
async fn no_review_on_a_closed_pull_request() {
    let s = setup().await;
    let n = open_feature_pr(&s).await;
    s.emu.close_pull_request(n).unwrap();
    let (code, body) = call_as(
        &s.emu,
        "alice",
        Method::POST,
        &format!("{}/{n}/reviews", pulls_path()),
        Some(json!({"event": "APPROVE"})),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["message"], "Unprocessable Entity");
    assert!(matches!(
        s.emu.submit_review(n, "alice", "APPROVED"),
        Err(GitHubEmulatorError::ReviewRefused { .. })
    ));
    assert!(s.emu.reviews(n).is_empty());

    // Merged is closed too.
    let repo = Repository::open_bare(&s.bare).unwrap();
    commit(
        &repo,
        "feature2",
        Some(s.main_tip),
        &[("clusters/e.yaml", "name: e\n")],
        "add e",
    );
    let m = s
        .emu
        .open_pull_request("feature2", "Add e", "", "platform-dev")
        .unwrap();
    s.emu.merge_pull_request(m, "alice").unwrap();
    assert!(matches!(
        s.emu.submit_review(m, "bob", "APPROVED"),
        Err(GitHubEmulatorError::ReviewRefused { .. })
    ));
}

#[tokio::test]
async fn statuses_carry_their_creator_and_only_the_bots_own_count() {
    let s = setup().await;
    let c = client(&s.emu);
    let sha = s.feature_tip.to_string();
    let posts = |emu: &GitHubEmulator| {
        emu.faults().log().count(
            &Method::POST,
            &format!("/repos/acme/clusters/statuses/{sha}"),
        )
    };
    // bob (write) plants tkgops's context with the exact state and description.
    let (code, planted) = call_as(
        &s.emu,
        "bob",
        Method::POST,
        &format!("/repos/{OWNER}/{REPO}/statuses/{sha}"),
        Some(json!({"state": "success", "context": "tkgops/plan", "description": "1 cluster change(s) planned"})),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(planted["creator"]["login"], "bob");
    assert!(c.list_own_statuses(&sha).await.unwrap().is_empty());

    // The bot still posts its own: bob's status does not stand in for it.
    c.set_status(
        &sha,
        "tkgops/plan",
        CommitState::Success,
        "1 cluster change(s) planned",
        None,
    )
    .await
    .unwrap();
    assert_eq!(posts(&s.emu), 2);
    // ... and its own one dedupes the next identical write.
    c.set_status(
        &sha,
        "tkgops/plan",
        CommitState::Success,
        "1 cluster change(s) planned",
        None,
    )
    .await
    .unwrap();
    assert_eq!(posts(&s.emu), 2);
    let own = c.list_own_statuses(&sha).await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(
        (
            own[0].context.as_str(),
            own[0].state,
            own[0].creator.as_str()
        ),
        ("tkgops/plan", CommitState::Success, "tkgops[bot]")
    );

    // `GET /commits/{ref}/statuses` names each creator (typed octocrab parses it).
    let listed = octo(&s.emu)
        .repos(OWNER, REPO)
        .list_statuses(sha.clone())
        .send()
        .await
        .unwrap();
    let creators: Vec<String> = listed
        .items
        .iter()
        .map(|s| s.creator.as_ref().unwrap().login.clone())
        .collect();
    assert_eq!(creators, vec!["tkgops[bot]", "bob"]);
    // The combined status has GitHub's simple items: no creator, so it cannot be trusted.
    let (code, combined) = call_as(
        &s.emu,
        "alice",
        Method::GET,
        &format!("/repos/{OWNER}/{REPO}/commits/{sha}/status"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(combined["statuses"].as_array().unwrap().len(), 1);
    assert!(combined["statuses"][0].get("creator").is_none());
}

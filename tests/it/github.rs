//! Integration tests: the GitHub emulator (wire level, against octocrab's typed API) and the
//! GitHub provider (`OctocrabClient`) against the emulator, including injected faults.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::Method;
use git2::{Oid, Repository, Signature};
use tkgops_emulators::faults::{Fault, FaultAction};
use tkgops_emulators::github::{GithubEmulator, GithubEmulatorOptions};
use tkgops_providers::github::{
    CommitState, GithubError, OctocrabClient, RetrySettings, VcsClient,
};

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
    emu: GithubEmulator,
    main_tip: Oid,
    feature_tip: Oid,
}

/// A bare repo with `main` (one commit) and `feature` (one more commit), plus the emulator.
async fn setup() -> Setup {
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
    let emu = GithubEmulator::start(GithubEmulatorOptions {
        owner: OWNER.into(),
        repo: REPO.into(),
        default_branch: "main".into(),
        token: TOKEN.into(),
        bare_repo: bare.clone(),
    })
    .await
    .unwrap();
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
    }
}

fn client(emu: &GithubEmulator) -> OctocrabClient {
    OctocrabClient::new(&emu.api_url(), TOKEN, OWNER, REPO, fast_retry()).unwrap()
}

fn octo(emu: &GithubEmulator) -> octocrab::Octocrab {
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
        Err(GithubError::NotFound { .. })
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
    let posts = |emu: &GithubEmulator| {
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
    assert!(matches!(err, GithubError::Unauthorized { .. }), "{err}");
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

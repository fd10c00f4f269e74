//! A journal written by an earlier version opens, is migrated in place and its unfinished runs
//! resume to the end.
//!
//! The fixture `tests/fixtures/journal-v1/db` is a sled database as tkgops wrote it before the
//! store recorded a schema version (version 1: no `schema` tree, run headers in the split
//! form, and one run as a whole JSON record as versions before the split form wrote it). It
//! was written by [`generate_journal_v1_fixture`] (ignored; run it with
//! `cargo test -p tkgops-engine --test journal_v1 -- --ignored generate` to write it again)
//! with the store of that time; written with a later store, the generator removes the
//! `schema` tree at the end, which is exactly what version 1 lacks. sled 0.34's files of a
//! journal this small are one 512 KiB log segment, mostly zeros (git stores it in about
//! 2 KiB), and a few small files: small enough to commit, and sled's on-disk format does not change within 0.34.x (the workspace
//! pins 0.34.7), so the committed bytes stay readable.
//!
//! Every time in the fixture is fixed (2025), so tests of retention can reason about it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use tkgops_domain::step::WorkloadTarget;
use tkgops_engine::store::{
    AttemptRecord, RunRecord, RunState, SledStore, StepRecord, StepState, Store,
    OUTCOME_INTERRUPTED, OUTCOME_PERMANENT, OUTCOME_SUCCEEDED, OUTCOME_TRANSIENT,
};
use tkgops_engine::{
    Engine, NoopObserver, RetryPolicy, StepContext, StepError, StepExecutor, StepInputs, StepSpec,
};

/// The committed fixture.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/journal-v1/db")
}

/// A copy of the fixture in a temporary directory (opening migrates in place: the committed
/// files are never opened).
fn copy_fixture() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&fixture(), &dir.path().join("db"));
    dir
}

fn at(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, month, day, 12, 0, 0).unwrap()
}

fn spec(id: &str) -> StepSpec {
    StepSpec {
        id: id.to_string(),
        title: format!("step {id}"),
        timeout_secs: 30,
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff_secs: 0.001,
            max_backoff_secs: 0.005,
        },
        inputs: StepInputs::KubeWaitCluster(WorkloadTarget {
            management_cluster: "mc".to_string(),
            kubeconfig: None,
            namespace: "default".to_string(),
            cluster_name: id.to_string(),
        }),
    }
}

fn attempt(
    number: u32,
    t: DateTime<Utc>,
    outcome: Option<&str>,
    error: Option<&str>,
) -> AttemptRecord {
    AttemptRecord {
        number,
        started_at: t,
        finished_at: outcome.map(|_| t + chrono::Duration::seconds(30)),
        error: error.map(str::to_string),
        outcome: outcome.map(str::to_string),
    }
}

fn done(id: &str, t: DateTime<Utc>) -> StepRecord {
    StepRecord {
        state: StepState::Succeeded,
        attempts: vec![attempt(1, t, Some(OUTCOME_SUCCEEDED), None)],
        started_at: Some(t),
        finished_at: Some(t + chrono::Duration::seconds(30)),
        output: Some(json!({ "ready": id })),
        ..StepRecord::pending(spec(id))
    }
}

fn run(id: &str, cluster: &str, seq: u64, t: DateTime<Utc>, state: RunState) -> RunRecord {
    RunRecord {
        id: id.to_string(),
        cluster: cluster.to_string(),
        workflow: "upgrade-cluster".to_string(),
        commit_sha: format!("{:0<40}", &id[..4]),
        origin: Some(format!("github:pr/{seq}")),
        state,
        seq,
        created_at: t,
        updated_at: t,
        finished_at: state
            .is_terminal()
            .then(|| t + chrono::Duration::minutes(5)),
        steps: Vec::new(),
        error: None,
        note: None,
    }
}

/// The runs of the fixture, as the store gives them back (before any resume).
fn fixture_runs() -> Vec<RunRecord> {
    let mut old = run("a111-old", "team-a", 1, at(1, 1), RunState::Succeeded);
    old.steps = vec![done("apply", at(1, 1))];
    let mut new = run("a222-new", "team-a", 2, at(3, 1), RunState::Succeeded);
    new.steps = vec![done("apply", at(3, 1))];
    let mut failed = run("b333-failed", "team-b", 3, at(1, 10), RunState::Failed);
    failed.steps = vec![
        StepRecord {
            state: StepState::Failed,
            attempts: vec![
                attempt(1, at(1, 10), Some(OUTCOME_TRANSIENT), Some("EC2 throttled")),
                attempt(
                    2,
                    at(1, 10),
                    Some(OUTCOME_PERMANENT),
                    Some("subnet not found"),
                ),
            ],
            started_at: Some(at(1, 10)),
            finished_at: Some(at(1, 10) + chrono::Duration::minutes(1)),
            error: Some("subnet not found".to_string()),
            ..StepRecord::pending(spec("preflight"))
        },
        StepRecord {
            state: StepState::Cancelled,
            error: Some("an earlier step failed".to_string()),
            ..StepRecord::pending(spec("apply"))
        },
    ];
    failed.error = Some("preflight: subnet not found".to_string());
    // Killed in the middle of its second step: attempt 1 of `apply` in flight.
    let mut running = run("c444-running", "team-c", 4, at(4, 1), RunState::Running);
    running.steps = vec![
        done("preflight", at(4, 1)),
        StepRecord {
            state: StepState::Running,
            attempts: vec![attempt(1, at(4, 1), None, None)],
            started_at: Some(at(4, 1)),
            ..StepRecord::pending(spec("apply"))
        },
        StepRecord::pending(spec("wait")),
    ];
    let mut legacy = run("d555-legacy", "team-d", 5, at(4, 2), RunState::Queued);
    legacy.steps = vec![StepRecord::pending(spec("apply"))];
    vec![old, new, failed, running, legacy]
}

/// Writes `tests/fixtures/journal-v1/db` (see the module docs). Not a test: run it by hand.
#[tokio::test]
#[ignore = "writes the committed fixture"]
async fn generate_journal_v1_fixture() {
    let path = fixture();
    let _ = std::fs::remove_dir_all(&path);
    let runs = fixture_runs();
    {
        let store = SledStore::open(&path).unwrap();
        // Every run but the last through the store, in the split form.
        for r in &runs[..runs.len() - 1] {
            store.put_run(r).await.unwrap();
        }
        store
            .put_meta("engine/cancel/none", b"kept as is")
            .await
            .unwrap();
    }
    // The last one as versions before the split form wrote it: one JSON record, indexed.
    let db = sled::open(&path).unwrap();
    let legacy = runs.last().unwrap();
    let mut active = legacy.seq.to_be_bytes().to_vec();
    active.extend_from_slice(legacy.id.as_bytes());
    db.open_tree("active")
        .unwrap()
        .insert(active, &[][..])
        .unwrap();
    let mut origin = legacy.origin.clone().unwrap().into_bytes();
    origin.push(0);
    origin.extend_from_slice(&legacy.seq.to_be_bytes());
    origin.extend_from_slice(legacy.id.as_bytes());
    db.open_tree("by_origin")
        .unwrap()
        .insert(origin, &[][..])
        .unwrap();
    db.open_tree("runs")
        .unwrap()
        .insert(legacy.id.as_bytes(), serde_json::to_vec(legacy).unwrap())
        .unwrap();
    // Version 1 has no schema record.
    db.drop_tree("schema").unwrap();
    db.flush().unwrap();
}

/// Succeeds every step.
struct Ok_;

#[async_trait]
impl StepExecutor for Ok_ {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        Ok(json!({ "step": ctx.step.id, "attempt": ctx.attempt }))
    }
}

/// `r` as read back: `updated_at` is derived by the store.
fn same(a: &RunRecord, b: &RunRecord) {
    let mut b = b.clone();
    b.updated_at = a.updated_at;
    assert_eq!(a, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_journal_is_read_and_its_unfinished_runs_resume_to_the_end() {
    let dir = copy_fixture();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
    // Every run reads back as it was written, the whole record of the earliest form too.
    for expected in fixture_runs() {
        let got = store.get_run(&expected.id).await.unwrap().unwrap();
        same(&got, &expected);
    }
    assert_eq!(
        store
            .deployed("team-a")
            .await
            .unwrap()
            .unwrap()
            .run_id
            .as_deref(),
        Some("a222-new")
    );
    let engine = Engine::new(store.clone(), Arc::new(Ok_), Arc::new(NoopObserver));
    assert_eq!(engine.resume_all().await.unwrap(), 2);
    let c = engine.wait("c444-running").await.unwrap();
    assert_eq!(c.state, RunState::Succeeded, "{c:#?}");
    let apply = &c.steps[1];
    assert_eq!(
        apply
            .attempts
            .iter()
            .map(|a| a.outcome.as_deref())
            .collect::<Vec<_>>(),
        [Some(OUTCOME_INTERRUPTED), Some(OUTCOME_SUCCEEDED)],
        "the attempt in flight when the journal was written counts as interrupted"
    );
    assert_eq!(c.steps[2].state, StepState::Succeeded);
    let d = engine.wait("d555-legacy").await.unwrap();
    assert_eq!(d.state, RunState::Succeeded, "{d:#?}");
    assert!(store.list_active().await.unwrap().is_empty());
    assert_eq!(
        store.deployed("team-c").await.unwrap().unwrap().commit_sha,
        c.commit_sha
    );
}

/// The first byte of the `runs` record of `id` in the database at `path` (closed).
fn raw_header_byte(path: &Path, id: &str) -> u8 {
    let db = sled::open(path).unwrap();
    let bytes = db.open_tree("runs").unwrap().get(id).unwrap().unwrap();
    bytes[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_migrates_version_1_in_place_and_a_repeated_migration_changes_nothing() {
    use tkgops_engine::store::{RunFilter, SCHEMA_VERSION, SCHEMA_VERSION_UNRECORDED};
    let dir = copy_fixture();
    let path = dir.path().join("db");
    assert_eq!(SCHEMA_VERSION_UNRECORDED, 1);
    assert_eq!(
        raw_header_byte(&path, "d555-legacy"),
        b'{',
        "the fixture's whole record"
    );
    let all = {
        let store = SledStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        store.list_runs(&RunFilter::default()).await.unwrap()
    };
    assert_eq!(
        all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [
            "a111-old",
            "a222-new",
            "b333-failed",
            "c444-running",
            "d555-legacy"
        ]
    );
    for (got, expected) in all.iter().zip(fixture_runs()) {
        same(got, &expected);
    }
    assert_eq!(
        raw_header_byte(&path, "d555-legacy"),
        1,
        "rewritten in the split form"
    );

    // A kill before the version record: the journal is still version 1, the run already in
    // the new form. Opening again migrates again, to the same journal.
    {
        let db = sled::open(&path).unwrap();
        db.open_tree("schema").unwrap().remove("version").unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let again = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(again, all);
    // Filters.
    let team_a = store
        .list_runs(&RunFilter {
            cluster: Some("team-a".into()),
            state: None,
        })
        .await
        .unwrap();
    assert_eq!(team_a.len(), 2);
    let failed = store
        .list_runs(&RunFilter {
            cluster: None,
            state: Some(RunState::Failed),
        })
        .await
        .unwrap();
    assert_eq!(
        failed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["b333-failed"]
    );
}

#[tokio::test]
async fn a_journal_of_a_newer_schema_version_is_refused_untouched() {
    use tkgops_engine::store::{StoreError, SCHEMA_VERSION};
    let dir = copy_fixture();
    let path = dir.path().join("db");
    {
        let db = sled::open(&path).unwrap();
        db.open_tree("schema")
            .unwrap()
            .insert("version", &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("version {}", SCHEMA_VERSION + 1))
            && msg.contains(&format!("up to {SCHEMA_VERSION}")),
        "{msg}"
    );
    assert_eq!(
        raw_header_byte(&path, "d555-legacy"),
        b'{',
        "nothing migrated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_old_terminal_runs_but_each_clusters_latest_success() {
    use tkgops_engine::store::StoreError;
    let dir = copy_fixture();
    let path = dir.path().join("db");
    let store = SledStore::open(&path).unwrap();
    let retention = std::time::Duration::from_secs(90 * 24 * 3600);
    // 2025-06-01 minus 90 days is 2025-03-03: a222-new (2025-03-01) is older, but the latest
    // success of team-a.
    let now = at(6, 1);

    // Under a stale fencing token nothing is deleted.
    store.fence(3).await.unwrap();
    store.fencing().observe(4);
    assert!(matches!(
        store.prune(now, retention).await,
        Err(StoreError::StaleFencingToken {
            token: 3,
            highest: 4
        })
    ));
    assert!(store.get_run("a111-old").await.unwrap().is_some());
    drop(store);

    let store = SledStore::open(&path).unwrap();
    store.fence(5).await.unwrap();
    let report = store.prune(now, retention).await.unwrap();
    assert_eq!(report.removed, ["a111-old", "b333-failed"]);
    assert_eq!(report.kept, ["a222-new"]);
    assert_eq!(report.orphan_steps, 0);
    for gone in ["a111-old", "b333-failed"] {
        assert!(store.get_run(gone).await.unwrap().is_none());
    }
    assert!(store
        .list_runs_by_origin("github:pr/1")
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_runs_by_origin("github:pr/3")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .deployed("team-a")
            .await
            .unwrap()
            .unwrap()
            .run_id
            .as_deref(),
        Some("a222-new")
    );
    for kept in ["a222-new", "c444-running", "d555-legacy"] {
        assert!(store.get_run(kept).await.unwrap().is_some(), "{kept}");
    }
    // A year later, a222-new is still team-a's latest success; a retention that covers
    // everything deletes nothing more.
    let again = store.prune(at(12, 31), retention).await.unwrap();
    assert!(again.removed.is_empty(), "{again:?}");
    drop(store);
    // Nothing of the deleted runs is left in the steps tree.
    let db = sled::open(&path).unwrap();
    let steps = db.open_tree("steps").unwrap();
    for gone in ["a111-old", "b333-failed"] {
        assert_eq!(steps.scan_prefix(format!("{gone}\0")).count(), 0, "{gone}");
    }
    assert!(steps.scan_prefix("a222-new\0").count() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_the_steps_a_crash_in_an_earlier_prune_left() {
    let dir = copy_fixture();
    let path = dir.path().join("db");
    drop(SledStore::open(&path).unwrap());
    {
        // A prune killed after removing b333-failed's header, before its steps.
        let db = sled::open(&path).unwrap();
        db.open_tree("runs").unwrap().remove("b333-failed").unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(&path).unwrap();
    let report = store
        .prune(at(6, 1), std::time::Duration::from_secs(365 * 24 * 3600))
        .await
        .unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert!(report.orphan_steps >= 1, "{report:?}");
    drop(store);
    let db = sled::open(&path).unwrap();
    assert_eq!(
        db.open_tree("steps")
            .unwrap()
            .scan_prefix("b333-failed\0")
            .count(),
        0
    );
}

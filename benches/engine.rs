//! Engine benchmarks (`cargo bench --bench engine`; harness = false, prints figures).
//!
//! Sections (each a function, so more can be added, e.g. plan latency):
//! (a) bare sled insert + `flush_async` per op (a run-sized value under a new key), the floor of
//!     one durable write;
//! (b) engine overhead per durable step: runs × 5 no-op steps, sequential (latency), compared
//!     with (a). Each has one database, fresh at the start, and they interleave at the finest
//!     grain that still measures a whole run: 5 writes of (a), then one run of (b), and again
//!     (400 times). The ratio is of the two totals; the per-round ratios
//!     (`TKGOPS_BENCH_ROUNDS`, default 5) show the spread. On a shared machine the disk's
//!     fsync time changes from second to second, and a ratio of two figures measured seconds
//!     apart says more about the disk than about the engine (the earlier alternation of 400
//!     writes with 80 runs gave per-round ratios from 0.5× to 4×);
//! (b') engine throughput: runs × 5 no-op steps concurrent on distinct clusters;
//! (c) `resume_all` of 10,000 active runs after a simulated `kill -9`, plus resident memory with
//!     1,000 runs in flight.
//!
//! The database lives in `$TKGOPS_BENCH_DIR` (default: the system temp dir), on disk, so flushes
//! are real fsyncs. Sizes can be scaled with `TKGOPS_BENCH_SCALE` (default 1.0).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};

use tkgops_domain::step::WorkloadTarget;
use tkgops_engine::store::{
    AttemptRecord, RunRecord, RunState, SledStore, StepRecord, StepState, Store,
};
use tkgops_engine::{
    Engine, NoopObserver, RetryPolicy, RunObserver, RunRequest, StepContext, StepError,
    StepExecutor, StepInputs, StepSpec,
};

/// Returns `{}` at once.
struct Noop;

#[async_trait]
impl StepExecutor for Noop {
    async fn execute(&self, _ctx: &StepContext) -> Result<Value, StepError> {
        Ok(json!({}))
    }
}

/// Never returns (keeps runs in flight).
struct Hang;

#[async_trait]
impl StepExecutor for Hang {
    async fn execute(&self, _ctx: &StepContext) -> Result<Value, StepError> {
        std::future::pending().await
    }
}

/// Counts runs whose first post-resume write happened.
#[derive(Default)]
struct Counter(AtomicUsize);

#[async_trait]
impl RunObserver for Counter {
    async fn run_changed(&self, _run: &RunRecord, progress: Option<&str>) {
        if progress.is_none() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("TKGOPS_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * s).round() as usize).max(1)
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("TKGOPS_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("temp dir in TKGOPS_BENCH_DIR"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

fn steps(n: usize) -> Vec<StepSpec> {
    (0..n)
        .map(|i| StepSpec {
            id: format!("step-{i}"),
            title: format!("Step {i}"),
            timeout_secs: 60,
            retry: RetryPolicy::default(),
            inputs: StepInputs::KubeWaitCluster(WorkloadTarget {
                management_cluster: "bench".into(),
                kubeconfig: None,
                namespace: "us-west-2".into(),
                cluster_name: format!("cluster-{i}"),
            }),
        })
        .collect()
}

fn request(id: String, cluster: String) -> RunRequest {
    RunRequest {
        id,
        cluster,
        workflow: "create-cluster".to_string(),
        commit_sha: "0123456789abcdef0123456789abcdef01234567".to_string(),
        origin: Some("github:pr/42".into()),
        steps: steps(5),
    }
}

/// A run as it looks after a crash during its first step.
fn interrupted_run(i: usize, seq: u64, clusters: usize) -> RunRecord {
    let now = Utc::now();
    let mut steps: Vec<StepRecord> = steps(5).into_iter().map(StepRecord::pending).collect();
    steps[0].state = StepState::Running;
    steps[0].started_at = Some(now);
    steps[0].attempts.push(AttemptRecord {
        number: 1,
        started_at: now,
        finished_at: None,
        error: None,
        outcome: None,
    });
    RunRecord {
        id: format!("resume-{i}"),
        cluster: format!("cluster-{}", i % clusters),
        workflow: "create-cluster".to_string(),
        commit_sha: "0123456789abcdef0123456789abcdef01234567".to_string(),
        origin: Some(format!("github:pr/{i}")),
        state: RunState::Running,
        seq,
        created_at: now,
        updated_at: now,
        finished_at: None,
        steps,
        error: None,
        note: None,
    }
}

fn rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The value (a) writes: a whole run of 5 steps as JSON, as the engine wrote runs before it
/// kept each step in its own record.
fn bare_value() -> Vec<u8> {
    serde_json::to_vec(&interrupted_run(0, 1, 1)).expect("json")
}

/// (a) Bare sled: one database (fresh, warmed up with 20 writes), measured in chunks.
struct BareSled {
    _dir: tempfile::TempDir,
    db: sled::Db,
    tree: sled::Tree,
    value: Vec<u8>,
    next: u64,
}

impl BareSled {
    async fn new() -> BareSled {
        let dir = bench_dir();
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(64 << 20)
            .open()
            .expect("sled");
        let tree = db.open_tree("runs").expect("tree");
        let mut bare = BareSled {
            _dir: dir,
            db,
            tree,
            value: bare_value(),
            next: 0,
        };
        bare.measure(20).await;
        bare
    }

    /// `ops` inserts of a run-sized value under new keys, each followed by `flush_async`.
    /// Returns ms per op.
    async fn measure(&mut self, ops: usize) -> f64 {
        let start = Instant::now();
        for _ in 0..ops {
            self.tree
                .insert(self.next.to_be_bytes(), self.value.as_slice())
                .expect("insert");
            self.db.flush_async().await.expect("flush");
            self.next += 1;
        }
        start.elapsed().as_secs_f64() * 1000.0 / ops as f64
    }
}

/// (b) Engine: one engine on one database (fresh, warmed up with 5 runs), measured in chunks.
struct SequentialRuns {
    _dir: tempfile::TempDir,
    engine: Engine,
    next: usize,
}

impl SequentialRuns {
    async fn new() -> SequentialRuns {
        let dir = bench_dir();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let engine = Engine::new(store, Arc::new(Noop), Arc::new(NoopObserver));
        let mut runs = SequentialRuns {
            _dir: dir,
            engine,
            next: 0,
        };
        runs.measure(5).await;
        runs
    }

    /// `runs` runs × 5 no-op steps, one after the other (submit, wait). Returns ms per step
    /// (the submit write is included, amortized over the 5 steps).
    async fn measure(&mut self, runs: usize) -> f64 {
        let start = Instant::now();
        for _ in 0..runs {
            let id = format!("seq-{}", self.next);
            self.next += 1;
            self.engine
                .submit(request(id.clone(), "c".into()))
                .await
                .expect("submit");
            self.engine.wait(&id).await.expect("wait");
        }
        start.elapsed().as_secs_f64() * 1000.0 / (runs * 5) as f64
    }
}

/// (b') Engine throughput: `runs` runs × 5 no-op steps on distinct clusters, all at once.
/// Returns ms per step (wall time / steps).
async fn bench_engine_concurrent(runs: usize) -> f64 {
    let dir = bench_dir();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
    let engine = Engine::new(store, Arc::new(Noop), Arc::new(NoopObserver));
    let start = Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..runs)
        .map(|i| {
            let engine = engine.clone();
            async move {
                let id = format!("conc-{i}");
                engine
                    .submit(request(id.clone(), format!("cluster-{i}")))
                    .await
                    .expect("submit");
                id
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for id in &ids {
        engine.wait(id).await.expect("wait");
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0 / (runs * 5) as f64;
    engine.shutdown(Duration::from_secs(1)).await;
    ms
}

/// (c) Resume: writes `runs` interrupted runs over `clusters` clusters, reopens the database
/// (as after `kill -9`), and times `resume_all`. Then, with the runs' executors hanging, waits
/// until every cluster's head run has persisted its resumed attempt and reports RSS with
/// `clusters` runs in flight.
async fn bench_resume(runs: usize, clusters: usize) {
    let dir = bench_dir();
    {
        let store = Arc::new(SledStore::open(dir.path()).expect("store"));
        let start = Instant::now();
        futures::stream::iter(0..runs)
            .map(|i| {
                let store = store.clone();
                async move {
                    let seq = store.next_seq().await.expect("seq");
                    store
                        .put_run(&interrupted_run(i, seq, clusters))
                        .await
                        .expect("put");
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
        println!(
            "setup: {runs} active runs written in {:.1} s (concurrent put_run, 64 in flight)",
            start.elapsed().as_secs_f64()
        );
    }
    let rss_before = rss_mb();
    let open_start = Instant::now();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("reopen"));
    let open_ms = open_start.elapsed().as_secs_f64() * 1000.0;
    let counter = Arc::new(Counter::default());
    let engine = Engine::new(store, Arc::new(Hang), counter.clone());
    let start = Instant::now();
    let n = engine.resume_all().await.expect("resume");
    let resume_ms = start.elapsed().as_secs_f64() * 1000.0;
    println!(
        "resume_all: {resume_ms:.0} ms to schedule {n} active runs on {clusters} clusters \
         (target < 1000 ms; reopening the database took {open_ms:.0} ms)"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter.0.load(Ordering::Relaxed) < clusters && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "resumed attempts durable: {}/{clusters} head runs in {:.0} ms after resume_all started",
        counter.0.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64() * 1000.0
    );
    if let (Some(before), Some(after)) = (rss_before, rss_mb()) {
        println!(
            "memory: {after:.0} MB resident with {clusters} runs in flight and {} queued \
             (target < 200 MB; {before:.0} MB before reopening)",
            n.saturating_sub(clusters)
        );
    }
    engine.shutdown(Duration::ZERO).await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let total = Instant::now();
        let dir = std::env::var_os("TKGOPS_BENCH_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        println!("== engine benchmarks (database dir: {}) ==", dir.display());
        let rounds: usize = std::env::var("TKGOPS_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5)
            .max(1);
        let seq_runs = scale(400);
        let (mut bare_db, mut engine_runs) = (BareSled::new().await, SequentialRuns::new().await);
        // Interleaved at the finest grain that still measures a whole run: 5 bare writes, then
        // one run of 5 steps, and again; the load of a shared machine then weighs on both alike.
        let (mut bare_total, mut seq_total) = (0.0, 0.0);
        let mut ratios = Vec::new();
        let per_round = (seq_runs / rounds).max(1);
        for _ in 0..rounds {
            let (mut b, mut e) = (0.0, 0.0);
            for _ in 0..per_round {
                b += bare_db.measure(5).await;
                e += engine_runs.measure(1).await;
            }
            bare_total += b;
            seq_total += e;
            ratios.push(e / b);
        }
        engine_runs.engine.shutdown(Duration::from_secs(1)).await;
        drop((bare_db, engine_runs));
        let n = (per_round * rounds) as f64;
        let (bare, seq) = (bare_total / n, seq_total / n);
        println!(
            "bare sled insert+flush: {bare:.3} ms/op (mean of {} ops, {} B values)",
            per_round * rounds * 5,
            bare_value().len()
        );
        println!(
            "engine step overhead: {seq:.3} ms/step (bare sled insert+flush {bare:.3} ms; ratio \
             {:.2}x of the totals; the rounds' ratios {:?}; {} runs x 5 steps, each after 5 bare \
             writes; target <= 1.3x)",
            seq / bare,
            ratios
                .iter()
                .map(|r| (r * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            per_round * rounds
        );
        let conc_runs = scale(400);
        let conc = bench_engine_concurrent(conc_runs).await;
        println!(
            "engine throughput: {conc:.3} ms/step wall ({conc_runs} runs x 5 steps on distinct \
             clusters at once; ratio {:.1}x bare)",
            conc / bare
        );
        bench_resume(scale(10_000), scale(1000)).await;
        println!("total: {:.1} s", total.elapsed().as_secs_f64());
    });
}

//! The engine through its public API: the step and run transition tables, backoff, the sled
//! journal (indexes, metadata, truncation), the runner (order, outputs, retries, timeouts,
//! permanent failures, one run at a time per cluster, cancel, retry, start gates, observers,
//! shutdown) and resume after a shutdown or a killed runtime. A scripted executor stands in for
//! the providers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use tkgops_domain::step::{KubeDeleteInputs, WorkloadTarget};
use tkgops_engine::store::{
    RunRecord, RunState, SledStore, StepState, Store, MAX_ERROR_BYTES, MAX_INTERRUPTED_ATTEMPTS,
    OUTCOME_INTERRUPTED, OUTCOME_PERMANENT, OUTCOME_SHUTDOWN, OUTCOME_SUCCEEDED, OUTCOME_TIMEOUT,
    OUTCOME_TRANSIENT,
};
use tkgops_engine::{
    backoff_delay, run_transition, step_transition, Engine, EngineError, NoopObserver, RetryPolicy,
    RunEvent, RunObserver, RunRequest, StepContext, StepError, StepEvent, StepExecutor, StepInputs,
    StepSpec,
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// What the scripted executor does on one attempt.
#[derive(Clone, Debug)]
enum Act {
    Ok,
    Transient(&'static str),
    Permanent(&'static str),
    /// Never returns.
    Hang,
    /// Waits for the named gate to be opened, then succeeds.
    Gate(&'static str),
}

#[derive(Clone, Debug)]
struct Call {
    run_id: String,
    step: String,
    attempt: u32,
    outputs: Vec<String>,
    at: tokio::time::Instant,
}

/// Executes kind `test.step`: looks up the script of `(run id, step id)` (or `step id`) and plays
/// the act for the attempt number (the last act repeats). Records every call.
#[derive(Default)]
struct Scripted {
    scripts: Mutex<HashMap<String, Vec<Act>>>,
    calls: Mutex<Vec<Call>>,
    gates: Mutex<HashMap<&'static str, Arc<Notify>>>,
    started: Mutex<Option<mpsc::UnboundedSender<(String, u32)>>>,
    store: Mutex<Option<Arc<dyn Store>>>,
    durable_before_side_effect: Mutex<Vec<bool>>,
}

impl Scripted {
    fn new() -> Arc<Self> {
        Arc::new(Scripted::default())
    }
    fn script(&self, key: &str, acts: Vec<Act>) {
        self.scripts.lock().unwrap().insert(key.to_string(), acts);
    }
    fn gate(&self, name: &'static str) -> Arc<Notify> {
        self.gates
            .lock()
            .unwrap()
            .entry(name)
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn calls_for(&self, run: &str) -> Vec<(String, u32)> {
        self.calls()
            .into_iter()
            .filter(|c| c.run_id == run)
            .map(|c| (c.step, c.attempt))
            .collect()
    }
    fn notify_started(&self) -> mpsc::UnboundedReceiver<(String, u32)> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.started.lock().unwrap() = Some(tx);
        rx
    }
    fn check_durability_with(&self, store: Arc<dyn Store>) {
        *self.store.lock().unwrap() = Some(store);
    }
}

#[async_trait]
impl StepExecutor for Scripted {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        self.calls.lock().unwrap().push(Call {
            run_id: ctx.run_id.clone(),
            step: ctx.step.id.clone(),
            attempt: ctx.attempt,
            outputs: ctx.outputs.keys().cloned().collect(),
            at: tokio::time::Instant::now(),
        });
        if let Some(tx) = self.started.lock().unwrap().as_ref() {
            let _ = tx.send((ctx.step.id.clone(), ctx.attempt));
        }
        let store = self.store.lock().unwrap().clone();
        if let Some(store) = store {
            // The attempt must be durable before the side effect starts.
            let run = store.get_run(&ctx.run_id).await.unwrap().unwrap();
            let step = run.steps.iter().find(|s| s.spec.id == ctx.step.id).unwrap();
            let last = step.attempts.last().unwrap();
            self.durable_before_side_effect.lock().unwrap().push(
                step.state == StepState::Running
                    && last.number == ctx.attempt
                    && last.outcome.is_none(),
            );
        }
        ctx.progress
            .report(&format!("{} attempt {}", ctx.step.id, ctx.attempt));
        let acts = {
            let scripts = self.scripts.lock().unwrap();
            scripts
                .get(&format!("{}/{}", ctx.run_id, ctx.step.id))
                .or_else(|| scripts.get(&ctx.step.id))
                .cloned()
                .unwrap_or_else(|| vec![Act::Ok])
        };
        let act = acts
            .get(ctx.attempt as usize - 1)
            .or_else(|| acts.last())
            .cloned()
            .unwrap_or(Act::Ok);
        match act {
            Act::Ok => {
                Ok(json!({ "step": ctx.step.id, "attempt": ctx.attempt, "saw": ctx.outputs }))
            }
            Act::Transient(m) => Err(StepError::Transient(m.to_string())),
            Act::Permanent(m) => Err(StepError::Permanent(m.to_string())),
            Act::Hang => std::future::pending().await,
            Act::Gate(name) => {
                self.gate(name).notified().await;
                Ok(json!({ "step": ctx.step.id }))
            }
        }
    }
}

/// One observer call: (run id, run state, step states, progress line).
type ObservedEvent = (String, RunState, Vec<StepState>, Option<String>);

/// Records every observer call: (state, step states, progress), and checks that each notified
/// transition was already persisted.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<ObservedEvent>>,
    store: Mutex<Option<Arc<dyn Store>>>,
    persisted_mismatch: Mutex<u32>,
}

#[async_trait]
impl RunObserver for Recorder {
    async fn run_changed(&self, run: &RunRecord, progress: Option<&str>) {
        self.events.lock().unwrap().push((
            run.id.clone(),
            run.state,
            run.steps.iter().map(|s| s.state).collect(),
            progress.map(str::to_string),
        ));
        let store = self.store.lock().unwrap().clone();
        if let Some(store) = store {
            if store.get_run(&run.id).await.unwrap().as_ref() != Some(run) {
                *self.persisted_mismatch.lock().unwrap() += 1;
            }
        }
    }
}

/// A step the [`Scripted`] executor runs (kind `kube.delete-cluster`, one with a side effect, so
/// a graceful shutdown gives it the grace; cluster named `id`).
fn target(id: &str) -> WorkloadTarget {
    WorkloadTarget {
        management_cluster: "mc".to_string(),
        kubeconfig: None,
        namespace: "default".to_string(),
        cluster_name: id.to_string(),
    }
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
        inputs: StepInputs::KubeDeleteCluster(KubeDeleteInputs {
            target: target(id),
            owner_label: "owner".into(),
        }),
    }
}

fn request(id: &str, cluster: &str, steps: Vec<StepSpec>) -> RunRequest {
    RunRequest {
        id: id.to_string(),
        cluster: cluster.to_string(),
        workflow: "create-cluster".to_string(),
        commit_sha: "0123456789abcdef0123456789abcdef01234567".to_string(),
        origin: Some("github:pr/7".into()),
        steps,
    }
}

fn open_store(path: &Path) -> Arc<dyn Store> {
    Arc::new(SledStore::open(path).expect("open sled"))
}

fn engine_with(store: Arc<dyn Store>, ex: Arc<Scripted>, obs: Arc<dyn RunObserver>) -> Engine {
    Engine::new(store, ex, obs)
}

fn states(run: &RunRecord) -> Vec<StepState> {
    run.steps.iter().map(|s| s.state).collect()
}

/// The outcomes of the finished attempts of step `idx` of `run`, oldest first.
fn outcomes(run: &RunRecord, idx: usize) -> Vec<String> {
    run.steps[idx]
        .attempts
        .iter()
        .map(|a| a.outcome.clone().expect("a finished attempt"))
        .collect()
}

async fn wait_for_call(rx: &mut mpsc::UnboundedReceiver<(String, u32)>, step: &str) -> u32 {
    loop {
        let (s, attempt) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("step never started")
            .expect("channel closed");
        if s == step {
            return attempt;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Transition tables and backoff

#[test]
fn engine_transition_tables_reject_invalid_transitions() {
    use StepEvent as E;
    use StepState as S;
    assert_eq!(step_transition(S::Pending, E::Start), Ok(S::Running));
    assert_eq!(
        step_transition(S::Running, E::AttemptFailedRetrying),
        Ok(S::Running)
    );
    assert_eq!(step_transition(S::Running, E::Resume), Ok(S::Running));
    assert_eq!(step_transition(S::Running, E::Succeed), Ok(S::Succeeded));
    assert_eq!(step_transition(S::Running, E::Fail), Ok(S::Failed));
    assert_eq!(step_transition(S::Pending, E::Cancel), Ok(S::Cancelled));
    for (from, ev) in [
        (S::Pending, E::Succeed),
        (S::Pending, E::Fail),
        (S::Pending, E::Resume),
        (S::Running, E::Start),
        (S::Succeeded, E::Start),
        (S::Succeeded, E::Fail),
        (S::Failed, E::Resume),
        (S::Cancelled, E::Start),
    ] {
        let err = step_transition(from, ev).unwrap_err();
        assert_eq!(err.machine, "step");
        assert!(err.to_string().contains("invalid step transition"), "{err}");
    }
    assert_eq!(
        run_transition(RunState::Queued, RunEvent::Start),
        Ok(RunState::Running)
    );
    assert_eq!(
        run_transition(RunState::Running, RunEvent::Fail),
        Ok(RunState::Failed)
    );
    for (from, ev) in [
        (RunState::Queued, RunEvent::Succeed),
        (RunState::Queued, RunEvent::Resume),
        (RunState::Running, RunEvent::Start),
        (RunState::Succeeded, RunEvent::Cancel),
        (RunState::Failed, RunEvent::Start),
        (RunState::Cancelled, RunEvent::Resume),
    ] {
        assert!(run_transition(from, ev).is_err(), "{from:?} + {ev:?}");
    }
}

#[test]
fn engine_backoff_doubles_up_to_the_cap() {
    let p = RetryPolicy {
        max_attempts: 10,
        initial_backoff_secs: 2.0,
        max_backoff_secs: 60.0,
    };
    let delays: Vec<f64> = (0..7).map(|i| backoff_delay(&p, i).as_secs_f64()).collect();
    let expected = [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0];
    for (d, e) in delays.iter().zip(expected) {
        assert!((d - e).abs() < 0.01, "{delays:?}");
    }
    let capped = RetryPolicy {
        max_attempts: 3,
        initial_backoff_secs: 10.0,
        max_backoff_secs: 3.0,
    };
    assert!((backoff_delay(&capped, 0).as_secs_f64() - 3.0).abs() < 0.01);
    let zero = RetryPolicy {
        max_attempts: 3,
        initial_backoff_secs: -1.0,
        max_backoff_secs: f64::NAN,
    };
    assert_eq!(backoff_delay(&zero, 3), Duration::ZERO);
}

// ---------------------------------------------------------------------------------------------
// Store

#[tokio::test]
async fn engine_store_indexes_meta_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let s1 = store.next_seq().await.unwrap();
    let s2 = store.next_seq().await.unwrap();
    assert!(s2 > s1);

    let now = chrono::Utc::now();
    let mk = |id: &str, seq: u64, pr: Option<u64>, state: RunState| RunRecord {
        id: id.to_string(),
        cluster: "c".to_string(),
        workflow: "w".to_string(),
        commit_sha: "sha".to_string(),
        origin: pr.map(|n| format!("github:pr/{n}")),
        state,
        seq,
        created_at: now,
        updated_at: now,
        finished_at: None,
        steps: vec![tkgops_engine::store::StepRecord::pending(spec("a"))],
        error: None,
        note: None,
    };
    store
        .put_run(&mk("r3", 30, Some(1), RunState::Queued))
        .await
        .unwrap();
    store
        .put_run(&mk("r1", 10, Some(1), RunState::Running))
        .await
        .unwrap();
    store
        .put_run(&mk("r2", 20, Some(2), RunState::Queued))
        .await
        .unwrap();
    let mut done = mk("r4", 5, Some(1), RunState::Queued);
    store.put_run(&done).await.unwrap();
    done.state = RunState::Succeeded;
    done.error = Some("x".repeat(10 * MAX_ERROR_BYTES));
    store.put_run(&done).await.unwrap();

    let active: Vec<String> = store
        .list_active()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(active, ["r1", "r2", "r3"]);
    let pr1: Vec<String> = store
        .list_runs_by_origin("github:pr/1")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(pr1, ["r4", "r1", "r3"]);
    assert!(store
        .list_runs_by_origin("github:pr/99")
        .await
        .unwrap()
        .is_empty());
    let stored = store.get_run("r4").await.unwrap().unwrap();
    assert!(stored.error.unwrap().len() <= MAX_ERROR_BYTES + 3);
    assert!(store.get_run("nope").await.unwrap().is_none());

    // JSON is camelCase.
    let json = serde_json::to_value(&stored.steps[0]).unwrap();
    assert!(json.get("startedAt").is_some() && json["spec"].get("timeoutSecs").is_some());

    store.put_meta("delivery/a", b"1").await.unwrap();
    store.put_meta("delivery/b", b"2").await.unwrap();
    store.put_meta("other", b"3").await.unwrap();
    assert_eq!(
        store.get_meta("delivery/b").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    let scanned = store.scan_meta("delivery/").await.unwrap();
    assert_eq!(
        scanned,
        vec![
            ("delivery/a".to_string(), b"1".to_vec()),
            ("delivery/b".to_string(), b"2".to_vec())
        ]
    );
    store.delete_meta("delivery/a").await.unwrap();
    assert!(store.get_meta("delivery/a").await.unwrap().is_none());

    // Everything survives a reopen; the sequence keeps increasing.
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.list_active().await.unwrap().len(), 3);
    assert_eq!(
        store.get_meta("other").await.unwrap().as_deref(),
        Some(&b"3"[..])
    );
    assert!(store.next_seq().await.unwrap() > s2);
    // A second open of the same path while the first is alive fails (sled file lock).
    assert!(SledStore::open(dir.path()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Engine

#[tokio::test]
async fn engine_happy_path_runs_in_order_and_passes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ex = Scripted::new();
    ex.check_durability_with(store.clone());
    let obs = Arc::new(Recorder::default());
    *obs.store.lock().unwrap() = Some(store.clone());
    let engine = engine_with(store.clone(), ex.clone(), obs.clone());

    // The cluster is free: the submission is already the first step's start (one write).
    let started = engine
        .submit(request(
            "run-1",
            "c1",
            vec![spec("preflight"), spec("apply"), spec("attach")],
        ))
        .await
        .unwrap();
    assert_eq!(started.state, RunState::Running);
    assert_eq!(
        states(&started),
        [StepState::Running, StepState::Pending, StepState::Pending]
    );
    assert_eq!(started.steps[0].attempts.len(), 1);
    assert_eq!(
        store.get_run("run-1").await.unwrap().as_ref(),
        Some(&started),
        "the submission is durable as returned"
    );

    let run = engine.wait("run-1").await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    assert!(run.finished_at.is_some() && run.error.is_none());
    assert_eq!(states(&run), [StepState::Succeeded; 3]);
    for s in &run.steps {
        assert_eq!(s.attempts.len(), 1);
        assert_eq!(s.attempts[0].outcome.as_deref(), Some(OUTCOME_SUCCEEDED));
        assert_eq!(s.output.as_ref().unwrap()["step"], json!(s.spec.id));
    }
    let calls = ex.calls();
    let order: Vec<&str> = calls.iter().map(|c| c.step.as_str()).collect();
    assert_eq!(order, ["preflight", "apply", "attach"]);
    assert!(calls[0].outputs.is_empty());
    assert_eq!(calls[1].outputs, ["preflight"]);
    assert_eq!(calls[2].outputs, ["apply", "preflight"]);
    assert_eq!(
        run.steps[2].output.as_ref().unwrap()["saw"]["preflight"]["step"],
        json!("preflight")
    );
    assert_eq!(
        *ex.durable_before_side_effect.lock().unwrap(),
        [true, true, true]
    );
    assert_eq!(*obs.persisted_mismatch.lock().unwrap(), 0);
    assert_eq!(store.get_run("run-1").await.unwrap().unwrap(), run);
    assert!(store.list_active().await.unwrap().is_empty());
    assert_eq!(
        store
            .list_runs_by_origin("github:pr/7")
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(engine.queue_position("run-1"), None);
}

#[tokio::test]
async fn engine_transient_errors_retry_with_backoff_then_succeed() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let ex = Scripted::new();
    ex.script(
        "flaky",
        vec![
            Act::Transient("503"),
            Act::Transient("429"),
            Act::Transient("reset"),
            Act::Ok,
        ],
    );
    let engine = engine_with(store, ex.clone(), Arc::new(NoopObserver));
    let mut flaky = spec("flaky");
    // Real time (tokio's test-util clock is not enabled): 50 ms, 100 ms, then capped at 120 ms.
    flaky.retry = RetryPolicy {
        max_attempts: 4,
        initial_backoff_secs: 0.05,
        max_backoff_secs: 0.12,
    };
    engine
        .submit(request("r", "c", vec![flaky, spec("after")]))
        .await
        .unwrap();
    let run = engine.wait("r").await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let attempts = &run.steps[0].attempts;
    assert_eq!(
        outcomes(&run, 0),
        [
            OUTCOME_TRANSIENT,
            OUTCOME_TRANSIENT,
            OUTCOME_TRANSIENT,
            OUTCOME_SUCCEEDED
        ]
    );
    assert_eq!(
        attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(attempts[1].error.as_deref(), Some("429"));
    assert!(run.steps[0].error.is_none());

    let at: Vec<_> = ex
        .calls()
        .iter()
        .filter(|c| c.step == "flaky")
        .map(|c| c.at)
        .collect();
    let gaps: Vec<f64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    assert_eq!(gaps.len(), 3);
    for (gap, want) in gaps.iter().zip([0.05, 0.1, 0.12]) {
        assert!(*gap >= want - 0.002 && *gap < want + 1.0, "gaps {gaps:?}");
    }
}

#[tokio::test]
async fn engine_permanent_failure_stops_run_and_cancels_later_steps() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let ex = Scripted::new();
    ex.script("apply", vec![Act::Permanent("invalid VPC id")]);
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    engine
        .submit(request(
            "r",
            "c",
            vec![
                spec("preflight"),
                spec("apply"),
                spec("attach"),
                spec("packages"),
            ],
        ))
        .await
        .unwrap();
    let run = engine.wait("r").await.unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.error.as_deref(), Some("apply: invalid VPC id"));
    assert_eq!(
        states(&run),
        [
            StepState::Succeeded,
            StepState::Failed,
            StepState::Cancelled,
            StepState::Cancelled
        ]
    );
    assert_eq!(run.steps[1].attempts.len(), 1);
    assert_eq!(
        run.steps[1].attempts[0].outcome.as_deref(),
        Some(OUTCOME_PERMANENT)
    );
    assert!(run.steps[2].attempts.is_empty());
    assert_eq!(
        ex.calls_for("r"),
        [("preflight".to_string(), 1), ("apply".to_string(), 1)]
    );
    assert!(store.list_active().await.unwrap().is_empty());
}

#[tokio::test]
async fn engine_timeout_is_retried_then_fails() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let ex = Scripted::new();
    ex.script("wait", vec![Act::Hang]);
    let engine = engine_with(store, ex.clone(), Arc::new(NoopObserver));
    let mut wait = spec("wait");
    wait.timeout_secs = 1;
    wait.retry = RetryPolicy {
        max_attempts: 2,
        initial_backoff_secs: 0.01,
        max_backoff_secs: 0.01,
    };
    engine
        .submit(request("r", "c", vec![wait, spec("next")]))
        .await
        .unwrap();
    let run = engine.wait("r").await.unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.error.as_deref(), Some("wait: timed out after 1 s"));
    assert_eq!(outcomes(&run, 0), [OUTCOME_TIMEOUT, OUTCOME_TIMEOUT]);
    assert_eq!(states(&run), [StepState::Failed, StepState::Cancelled]);
    assert_eq!(ex.calls_for("r").len(), 2);
}

#[tokio::test]
async fn engine_transient_errors_exhaust_the_budget() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let ex = Scripted::new();
    ex.script("s", vec![Act::Transient("still 503")]);
    let engine = engine_with(store, ex.clone(), Arc::new(NoopObserver));
    engine
        .submit(request("r", "c", vec![spec("s")]))
        .await
        .unwrap();
    let run = engine.wait("r").await.unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.error.as_deref(), Some("s: still 503"));
    assert_eq!(run.steps[0].attempts.len(), 3);
}

#[tokio::test]
async fn engine_submit_is_idempotent_by_id() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let ex = Scripted::new();
    ex.script("s", vec![Act::Gate("g")]);
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    let mut started = ex.notify_started();
    let first = engine
        .submit(request("same", "c", vec![spec("s")]))
        .await
        .unwrap();
    wait_for_call(&mut started, "s").await;
    let again = engine
        .submit(request("same", "c", vec![spec("s"), spec("other")]))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.seq, first.seq);
    assert_eq!(again.steps.len(), 1, "existing run returned unchanged");
    ex.gate("g").notify_one();
    let done = engine.wait("same").await.unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    let after = engine
        .submit(request("same", "c", vec![spec("s")]))
        .await
        .unwrap();
    assert_eq!(after, done);
    // Resubmitting a finished run schedules nothing...
    assert_eq!(engine.queue_position("same"), None, "not rescheduled");
    // ...and runs of a cluster execute one at a time in submission order, so once a later run
    // of the same cluster has finished, a re-execution of "same" would have happened already.
    engine
        .submit(request("barrier", "c", vec![spec("b")]))
        .await
        .unwrap();
    assert_eq!(
        engine.wait("barrier").await.unwrap().state,
        RunState::Succeeded
    );
    assert_eq!(ex.calls_for("same").len(), 1, "executed once");
    let order: Vec<String> = ex.calls().into_iter().map(|c| c.run_id).collect();
    assert_eq!(order, ["same", "barrier"]);
    assert!(store.list_active().await.unwrap().is_empty());
}

#[tokio::test]
async fn engine_runs_one_at_a_time_per_cluster() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let ex = Scripted::new();
    ex.script("a/s", vec![Act::Gate("a")]);
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    let mut started = ex.notify_started();

    engine
        .submit(request("a", "c1", vec![spec("s")]))
        .await
        .unwrap();
    wait_for_call(&mut started, "s").await;
    engine
        .submit(request("b", "c1", vec![spec("s")]))
        .await
        .unwrap();
    engine
        .submit(request("b2", "c1", vec![spec("s")]))
        .await
        .unwrap();
    engine
        .submit(request("c", "c2", vec![spec("s")]))
        .await
        .unwrap();

    // The other cluster is not blocked.
    let c = engine.wait("c").await.unwrap();
    assert_eq!(c.state, RunState::Succeeded);
    // Same cluster: queued, in order.
    assert_eq!(
        engine.get("b").await.unwrap().unwrap().state,
        RunState::Queued
    );
    assert_eq!(engine.queue_position("a"), Some(0));
    assert_eq!(engine.queue_position("b"), Some(1));
    assert_eq!(engine.queue_position("b2"), Some(2));
    assert_eq!(engine.queue_position("c"), None);
    assert!(ex.calls_for("b").is_empty());

    ex.gate("a").notify_one();
    let a = engine.wait("a").await.unwrap();
    let b = engine.wait("b").await.unwrap();
    let b2 = engine.wait("b2").await.unwrap();
    assert_eq!([a.state, b.state, b2.state], [RunState::Succeeded; 3]);
    assert!(b.steps[0].attempts[0].started_at >= a.finished_at.unwrap());
    assert!(b2.steps[0].attempts[0].started_at >= b.finished_at.unwrap());
    let order: Vec<String> = ex.calls().into_iter().map(|c| c.run_id).collect();
    assert_eq!(order, ["a", "c", "b", "b2"]);
}

/// Three steps; s2 may make `max_attempts` attempts.
fn crash_steps(max_attempts: u32) -> Vec<StepSpec> {
    let mut s2 = spec("s2");
    s2.retry.max_attempts = max_attempts;
    vec![spec("s1"), s2, spec("s3")]
}

/// The run finished after s2's first attempt ended with `first_outcome` and its second
/// succeeded; s1 ran once.
fn assert_resumed(run: &RunRecord, second: &Scripted, first_outcome: &str) {
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(states(run), [StepState::Succeeded; 3]);
    assert_eq!(run.steps[0].attempts.len(), 1, "s1 not re-executed");
    let s2: Vec<_> = run.steps[1]
        .attempts
        .iter()
        .map(|a| (a.number, a.outcome.clone().unwrap()))
        .collect();
    assert_eq!(
        s2,
        [
            (1, first_outcome.to_string()),
            (2, OUTCOME_SUCCEEDED.to_string())
        ]
    );
    assert_eq!(
        second.calls_for("crash"),
        [("s2".to_string(), 2), ("s3".to_string(), 1)]
    );
    // s2's second attempt still saw s1's output.
    assert_eq!(second.calls()[0].outputs, ["s1"]);
}

#[tokio::test]
async fn engine_resumes_after_shutdown_without_repeating_succeeded_steps() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path());
        let ex = Scripted::new();
        ex.script("s2", vec![Act::Hang, Act::Ok]);
        let mut started = ex.notify_started();
        let engine = engine_with(store, ex.clone(), Arc::new(NoopObserver));
        // A graceful shutdown does not consume the budget: one attempt allowed, yet the
        // resumed attempt 2 still runs.
        engine
            .submit(request("crash", "c", crash_steps(1)))
            .await
            .unwrap();
        assert_eq!(wait_for_call(&mut started, "s2").await, 1);
        let waiter = {
            let e = engine.clone();
            tokio::spawn(async move { e.wait("crash").await })
        };
        engine.shutdown(Duration::ZERO).await;
        assert!(matches!(
            waiter.await.unwrap(),
            Err(EngineError::Stopped { .. })
        ));
        assert!(matches!(
            engine.submit(request("late", "c", vec![spec("x")])).await,
            Err(EngineError::ShuttingDown)
        ));
    }
    // Every handle of the first database is gone: it can be reopened.
    let store = open_store(dir.path());
    let before = store.get_run("crash").await.unwrap().unwrap();
    assert_eq!(before.state, RunState::Running);
    assert_eq!(
        states(&before),
        [StepState::Succeeded, StepState::Running, StepState::Pending]
    );
    assert_eq!(
        before.steps[1].attempts[0].outcome.as_deref(),
        Some(OUTCOME_SHUTDOWN)
    );

    let ex = Scripted::new();
    // The resumed attempt waits at a gate: the run is still live when resume_all is called
    // again (a run that ended in between is the race the note on issue 21 describes).
    ex.script("s2", vec![Act::Hang, Act::Gate("s2")]);
    let engine = engine_with(store, ex.clone(), Arc::new(NoopObserver));
    assert_eq!(engine.resume_all().await.unwrap(), 1);
    assert_eq!(engine.resume_all().await.unwrap(), 0, "already scheduled");
    ex.gate("s2").notify_one();
    let run = engine.wait("crash").await.unwrap();
    assert_resumed(&run, &ex, OUTCOME_SHUTDOWN);
}

/// A run submitted to a free cluster is written already started (its first attempt begun).
/// If the engine shuts down before that attempt runs, the attempt is recorded as cut short
/// by the shutdown: it never ran, so it spends no budget, and the resumed run's attempt 2
/// runs although one attempt is allowed.
#[tokio::test]
async fn engine_a_started_submission_cut_short_before_it_ran_keeps_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut one = spec("s1");
    one.retry.max_attempts = 1;
    {
        let store = open_store(dir.path());
        let ex = Scripted::new();
        let engine = engine_with(store, ex.clone(), Arc::new(NoopObserver));
        let started = engine
            .submit(request("early", "c", vec![one.clone(), spec("s2")]))
            .await
            .unwrap();
        assert_eq!(started.state, RunState::Running);
        // No await point between the submission and the shutdown (current-thread runtime):
        // the run's task has not been polled yet.
        engine.shutdown(Duration::from_secs(5)).await;
        assert!(ex.calls().is_empty(), "the attempt never ran");
    }
    let store = open_store(dir.path());
    let before = store.get_run("early").await.unwrap().unwrap();
    assert_eq!(
        before.steps[0].attempts[0].outcome.as_deref(),
        Some(OUTCOME_SHUTDOWN)
    );
    let ex = Scripted::new();
    let engine = engine_with(store, ex.clone(), Arc::new(NoopObserver));
    assert_eq!(engine.resume_all().await.unwrap(), 1);
    let run = engine.wait("early").await.unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(
        ex.calls_for("early"),
        [("s1".to_string(), 2), ("s2".to_string(), 1)]
    );
}

#[test]
fn engine_resumes_after_the_runtime_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // First life: a runtime that is dropped mid-step (no shutdown code runs), like `kill -9`
    // as far as this process's state is concerned.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = open_store(&path);
            let ex = Scripted::new();
            ex.script("s2", vec![Act::Hang, Act::Ok]);
            let mut started = ex.notify_started();
            let engine = engine_with(store, ex.clone(), Arc::new(NoopObserver));
            engine
                .submit(request("crash", "c", crash_steps(2)))
                .await
                .unwrap();
            wait_for_call(&mut started, "s2").await;
        });
        drop(rt);
    })
    .join()
    .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = open_store(dir.path());
        let ex = Scripted::new();
        ex.script("s2", vec![Act::Hang, Act::Ok]);
        let obs = Arc::new(Recorder::default());
        let engine = engine_with(store, ex.clone(), obs.clone());
        assert_eq!(engine.resume_all().await.unwrap(), 1);
        let run = engine.wait("crash").await.unwrap();
        assert_resumed(&run, &ex, OUTCOME_INTERRUPTED);
        // The first persisted transition after resume marks the interrupted attempt.
        let events = obs.events.lock().unwrap();
        assert_eq!(events[0].1, RunState::Running);
    });
}

/// Runs one life of the bot on `path` in its own runtime, dropped (like `kill -9`) once step
/// `s2` of run `crash` has started, or when the run ends. Returns the run as the life left it.
fn one_life_killed_in_s2(path: &Path) -> RunRecord {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let run = rt.block_on(async {
            let store = open_store(&path);
            let ex = Scripted::new();
            ex.script("s2", vec![Act::Hang]);
            let mut started = ex.notify_started();
            let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
            if engine.resume_all().await.unwrap() == 0 {
                engine
                    .submit(request("crash", "c", crash_steps(2)))
                    .await
                    .unwrap();
            }
            let waiter = engine.clone();
            tokio::select! {
                _ = wait_for_call(&mut started, "s2") => {}
                r = waiter.wait("crash") => { r.unwrap(); }
            }
            store.get_run("crash").await.unwrap().unwrap()
        });
        drop(rt);
        run
    })
    .join()
    .unwrap()
}

/// A step that kills the bot on every attempt stops once the bot died
/// [`MAX_INTERRUPTED_ATTEMPTS`] times during it: the run fails with the reason, and its record
/// stops growing. The deaths do not spend the step's own `max_attempts` (2 here).
#[test]
fn a_step_that_kills_the_bot_every_time_fails_at_the_interrupted_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap = MAX_INTERRUPTED_ATTEMPTS as usize;
    for life in 1..=cap {
        let run = one_life_killed_in_s2(dir.path());
        assert_eq!(run.state, RunState::Running, "life {life}");
        assert_eq!(run.steps[1].attempts.len(), life);
    }
    // The next life closes the last attempt as interrupted: the cap is reached, s2 is not
    // called again.
    let last = one_life_killed_in_s2(dir.path());
    assert_eq!(last.state, RunState::Failed);
    assert_eq!(
        states(&last),
        [
            StepState::Succeeded,
            StepState::Failed,
            StepState::Cancelled
        ]
    );
    assert_eq!(outcomes(&last, 1), vec![OUTCOME_INTERRUPTED; cap]);
    assert_eq!(
        last.error.as_deref(),
        Some(
            format!(
                "s2: attempt {cap} was interrupted: the bot stopped while it ran (the bot stopped \
                 {cap} times while this step ran; the step is failed so that it cannot crash \
                 the bot in a loop)"
            )
            .as_str()
        )
    );
    let again = one_life_killed_in_s2(dir.path());
    assert_eq!(again, last, "a finished run does not change on restart");
}

/// Deaths of the bot during a step (for a reason elsewhere: another run's step, a redeploy) do
/// not spend the step's retry budget: after 3 interrupted attempts a step with
/// `max_attempts: 2` still retries a transient error and succeeds.
#[test]
fn interrupted_attempts_do_not_spend_the_retry_budget() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        one_life_killed_in_s2(dir.path());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run = rt.block_on(async {
        let store = open_store(dir.path());
        let ex = Scripted::new();
        // Acts are indexed by attempt number: attempt 4 fails, attempt 5 succeeds.
        let hang = Act::Hang;
        ex.script(
            "s2",
            vec![
                hang.clone(),
                hang.clone(),
                hang,
                Act::Transient("flaky"),
                Act::Ok,
            ],
        );
        let engine = engine_with(store, ex.clone(), Arc::new(NoopObserver));
        assert_eq!(engine.resume_all().await.unwrap(), 1);
        engine.wait("crash").await.unwrap()
    });
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(
        outcomes(&run, 1),
        [
            OUTCOME_INTERRUPTED,
            OUTCOME_INTERRUPTED,
            OUTCOME_INTERRUPTED,
            OUTCOME_TRANSIENT,
            OUTCOME_SUCCEEDED
        ]
    );
}

#[tokio::test]
async fn engine_observer_sees_every_transition_and_progress() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let ex = Scripted::new();
    ex.script("b", vec![Act::Transient("flaky"), Act::Ok]);
    let obs = Arc::new(Recorder::default());
    *obs.store.lock().unwrap() = Some(store.clone());
    let engine = engine_with(store, ex.clone(), obs.clone());
    engine
        .submit(request("r", "c", vec![spec("a"), spec("b")]))
        .await
        .unwrap();
    engine.wait("r").await.unwrap();

    use RunState::*;
    use StepState::{Pending as P, Running as R, Succeeded as S};
    let events: Vec<(RunState, Vec<StepState>, Option<String>)> = obs
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.1, e.2.clone(), e.3.clone()))
        .collect();
    let line = |s: &str| Some(s.to_string());
    assert_eq!(
        events,
        [
            (Running, vec![R, P], None), // submitted to a free cluster: a attempt 1 started
            (Running, vec![R, P], line("a attempt 1")), // progress line
            (Running, vec![S, R], None), // a succeeded + b attempt 1 started (one write)
            (Running, vec![S, R], line("b attempt 1")), // progress line
            (Running, vec![S, R], line("b attempt 1")), // b attempt 1 failed, retrying
            (Running, vec![S, R], None), // b attempt 2 started
            (Running, vec![S, R], line("b attempt 2")), // progress line
            (Succeeded, vec![S, S], None), // b succeeded, run succeeded (one write)
        ]
    );
    let progress: Vec<String> = events.iter().filter_map(|e| e.2.clone()).collect();
    assert!(progress.contains(&"a attempt 1".to_string()));
    assert!(progress.contains(&"b attempt 2".to_string()));
    assert_eq!(*obs.persisted_mismatch.lock().unwrap(), 0);
}

#[tokio::test]
async fn engine_shutdown_lets_in_flight_attempts_finish_within_grace() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ex = Scripted::new();
    ex.script("slow", vec![Act::Gate("slow")]);
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    let mut started = ex.notify_started();
    engine
        .submit(request("r", "c", vec![spec("slow"), spec("next")]))
        .await
        .unwrap();
    wait_for_call(&mut started, "slow").await;
    // Begin the shutdown: the first poll stops new work, then waits for the in-flight attempt,
    // which is still parked at its gate.
    let shutdown = engine.shutdown(Duration::from_secs(10));
    tokio::pin!(shutdown);
    assert!(
        futures::poll!(shutdown.as_mut()).is_pending(),
        "shutdown waits for the in-flight attempt"
    );
    assert!(matches!(
        engine.submit(request("late", "c", vec![spec("x")])).await,
        Err(EngineError::ShuttingDown)
    ));
    // The attempt finishes within the grace period; the shutdown then completes.
    ex.gate("slow").notify_one();
    tokio::time::timeout(Duration::from_secs(20), shutdown)
        .await
        .expect("shutdown finished once the attempt did");
    let run = store.get_run("r").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Running);
    assert_eq!(
        states(&run),
        [StepState::Succeeded, StepState::Pending],
        "no new attempt started"
    );
    assert_eq!(ex.calls_for("r").len(), 1);
    assert_eq!(store.list_active().await.unwrap().len(), 1);
}

/// A step that only reads and waits (`kube.wait-cluster`) has no side effect to finish: a
/// graceful shutdown cuts it at once, not after the grace, and records it as cut short by the
/// shutdown (no retry budget spent); the next start runs it again.
#[tokio::test]
async fn engine_shutdown_cuts_a_step_that_only_waits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ex = Scripted::new();
    ex.script("wait", vec![Act::Hang, Act::Ok]);
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    let mut started = ex.notify_started();
    let mut wait = spec("wait");
    wait.inputs = StepInputs::KubeWaitCluster(target("wait"));
    wait.retry.max_attempts = 1;
    engine
        .submit(request("r", "c", vec![wait, spec("next")]))
        .await
        .unwrap();
    wait_for_call(&mut started, "wait").await;
    // A grace far longer than the test's timeout: only the cut ends the shutdown in time.
    tokio::time::timeout(
        Duration::from_secs(20),
        engine.shutdown(Duration::from_secs(600)),
    )
    .await
    .expect("the shutdown did not wait for the grace");
    let run = store.get_run("r").await.unwrap().unwrap();
    assert_eq!(states(&run), [StepState::Running, StepState::Pending]);
    let attempt = &run.steps[0].attempts[0];
    assert_eq!(attempt.outcome.as_deref(), Some(OUTCOME_SHUTDOWN));
    assert!(
        attempt
            .error
            .as_deref()
            .unwrap()
            .contains("only reads and waits"),
        "{attempt:?}"
    );
    drop(engine);

    // The next start runs it again although one attempt is allowed: the cut spent none.
    let ex = Scripted::new();
    ex.script("wait", vec![Act::Hang, Act::Ok]);
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    assert_eq!(engine.resume_all().await.unwrap(), 1);
    let run = engine.wait("r").await.unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(run.steps[0].attempts.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_many_concurrent_runs_complete() {
    // Regression: sled 0.34.7 deadlocked with many concurrent flushes/transactions.
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ex = Scripted::new();
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    let n = 64;
    let submits = (0..n).map(|i| {
        let engine = engine.clone();
        async move {
            engine
                .submit(request(
                    &format!("r{i}"),
                    &format!("c{}", i % 48),
                    vec![spec("a"), spec("b"), spec("c")],
                ))
                .await
                .unwrap()
        }
    });
    futures::future::join_all(submits).await;
    let all = async {
        for i in 0..n {
            let run = engine.wait(&format!("r{i}")).await.unwrap();
            assert_eq!(run.state, RunState::Succeeded);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("runs did not finish (deadlock?)");
    assert_eq!(ex.calls().len(), n * 3);
    assert!(store.list_active().await.unwrap().is_empty());
}

#[tokio::test]
async fn engine_long_errors_are_truncated_and_empty_plans_succeed() {
    struct Verbose;
    #[async_trait]
    impl StepExecutor for Verbose {
        async fn execute(&self, _ctx: &StepContext) -> Result<Value, StepError> {
            Err(StepError::Permanent("é".repeat(5000)))
        }
    }
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let engine = Engine::new(store.clone(), Arc::new(Verbose), Arc::new(NoopObserver));
    let mut s = spec("v");
    s.inputs = StepInputs::KubeReadKubeconfig(target("v"));
    engine.submit(request("long", "c", vec![s])).await.unwrap();
    let run = engine.wait("long").await.unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert!(run.error.as_ref().unwrap().len() <= MAX_ERROR_BYTES + 3);
    assert!(run.steps[0].attempts[0].error.as_ref().unwrap().len() <= MAX_ERROR_BYTES + 3);
    assert_eq!(store.get_run("long").await.unwrap().unwrap(), run);

    engine.submit(request("empty", "c", vec![])).await.unwrap();
    assert_eq!(
        engine.wait("empty").await.unwrap().state,
        RunState::Succeeded
    );
    assert!(matches!(
        engine.wait("missing").await,
        Err(EngineError::NotFound(_))
    ));
    assert!(matches!(
        engine
            .submit(request("dup", "c", vec![spec("x"), spec("x")]))
            .await,
        Err(EngineError::InvalidRequest(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Cancel, retry and the start gate (issue 8 items 7 and 8)

#[tokio::test]
async fn engine_cancel_removes_a_queued_run_and_stops_a_running_one_at_its_next_step() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let ex = Scripted::new();
    ex.script("a/s1", vec![Act::Gate("a")]);
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    let mut started = ex.notify_started();
    engine
        .submit(request("a", "c1", vec![spec("s1"), spec("s2")]))
        .await
        .unwrap();
    wait_for_call(&mut started, "s1").await;
    engine
        .submit(request("b", "c1", vec![spec("s1")]))
        .await
        .unwrap();

    // Queued: cancelled at once, nothing ran, its waiter sees the end.
    let waiter = {
        let e = engine.clone();
        tokio::spawn(async move { e.wait("b").await })
    };
    assert_eq!(
        engine.cancel("b", "cancelled by @alice").await.unwrap(),
        tkgops_engine::CancelOutcome::Cancelled
    );
    let b = waiter.await.unwrap().unwrap();
    assert_eq!(b.state, RunState::Cancelled);
    assert_eq!(b.error.as_deref(), Some("cancelled by @alice"));
    assert_eq!(states(&b), [StepState::Cancelled]);
    assert_eq!(engine.queue_position("b"), None);

    // Running: the step in progress finishes, the next one never starts.
    assert_eq!(
        engine.cancel("a", "cancelled by @alice").await.unwrap(),
        tkgops_engine::CancelOutcome::AtNextStep
    );
    assert!(store.get_meta("cancel/a").await.unwrap().is_some());
    ex.gate("a").notify_one();
    let a = engine.wait("a").await.unwrap();
    assert_eq!(a.state, RunState::Cancelled);
    assert_eq!(states(&a), [StepState::Succeeded, StepState::Cancelled]);
    assert_eq!(ex.calls_for("a"), [("s1".to_string(), 1)]);
    assert!(ex.calls_for("b").is_empty());
    assert!(
        store.get_meta("cancel/a").await.unwrap().is_none(),
        "the request is removed once honoured"
    );
    assert_eq!(
        engine.cancel("a", "again").await.unwrap(),
        tkgops_engine::CancelOutcome::AlreadyFinished(RunState::Cancelled)
    );
    assert!(matches!(
        engine.cancel("nope", "x").await,
        Err(EngineError::NotFound(_))
    ));
}

#[tokio::test]
async fn engine_cancel_requested_before_a_restart_is_honoured_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path());
        let ex = Scripted::new();
        ex.script("s1", vec![Act::Hang]);
        let mut started = ex.notify_started();
        let engine = engine_with(store, ex.clone(), Arc::new(NoopObserver));
        engine
            .submit(request("r", "c", vec![spec("s1"), spec("s2")]))
            .await
            .unwrap();
        wait_for_call(&mut started, "s1").await;
        assert_eq!(
            engine.cancel("r", "cancelled by @bob").await.unwrap(),
            tkgops_engine::CancelOutcome::AtNextStep
        );
        engine.shutdown(Duration::ZERO).await;
    }
    let store = open_store(dir.path());
    let ex = Scripted::new();
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    engine.resume_all().await.unwrap();
    let run = engine.wait("r").await.unwrap();
    // The interrupted step resumes and finishes (never cut in the middle); s2 never starts.
    assert_eq!(run.state, RunState::Cancelled);
    assert_eq!(states(&run), [StepState::Succeeded, StepState::Cancelled]);
    assert_eq!(ex.calls_for("r"), [("s1".to_string(), 2)]);
    assert_eq!(run.error.as_deref(), Some("cancelled by @bob"));
}

#[tokio::test]
async fn engine_retry_resumes_a_failed_run_from_its_failed_step_with_a_fresh_budget() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let ex = Scripted::new();
    // Three attempts fail (the whole budget), the retried attempt succeeds.
    ex.script(
        "s2",
        vec![
            Act::Transient("throttled"),
            Act::Transient("throttled"),
            Act::Permanent("quota exceeded"),
            Act::Ok,
        ],
    );
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    engine
        .submit(request("r", "c", vec![spec("s1"), spec("s2"), spec("s3")]))
        .await
        .unwrap();
    let failed = engine.wait("r").await.unwrap();
    assert_eq!(failed.state, RunState::Failed);
    assert!(matches!(
        engine.retry("nope", "x").await,
        Err(EngineError::NotFound(_))
    ));

    let queued = engine.retry("r", "retried by @alice").await.unwrap();
    assert_eq!(queued.note.as_deref(), Some("retried by @alice"));
    let run = engine.wait("r").await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(states(&run), [StepState::Succeeded; 3]);
    // s1 ran once; s2 kept its three failed attempts and made a fourth; s3 ran after it and
    // saw s1's output from the first drive.
    let calls = ex.calls_for("r");
    assert_eq!(
        calls,
        [
            ("s1".to_string(), 1),
            ("s2".to_string(), 1),
            ("s2".to_string(), 2),
            ("s2".to_string(), 3),
            ("s2".to_string(), 4),
            ("s3".to_string(), 1),
        ]
    );
    assert_eq!(run.steps[1].attempts.len(), 4);
    assert_eq!(run.steps[1].budget_used(), 1);
    let s3 = ex.calls().into_iter().find(|c| c.step == "s3").unwrap();
    assert_eq!(s3.outputs, ["s1", "s2"]);
    assert!(matches!(
        engine.retry("r", "again").await,
        Err(EngineError::NotRetryable {
            state: RunState::Succeeded,
            ..
        })
    ));
}

/// A gate that records what it was asked and answers from a script.
struct ScriptedGate {
    asked: Mutex<Vec<(String, String)>>,
    decision: tkgops_engine::GateDecision,
}

#[async_trait]
impl tkgops_engine::StartGate for ScriptedGate {
    async fn before_start(
        &self,
        run: &RunRecord,
        waited_behind: &str,
    ) -> tkgops_engine::GateDecision {
        self.asked
            .lock()
            .unwrap()
            .push((run.id.clone(), waited_behind.to_string()));
        self.decision.clone()
    }
}

#[tokio::test]
async fn engine_start_gate_replans_only_runs_that_waited_behind_another() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let ex = Scripted::new();
    ex.script("a/s", vec![Act::Gate("a")]);
    let engine = engine_with(store.clone(), ex.clone(), Arc::new(NoopObserver));
    let gate = Arc::new(ScriptedGate {
        asked: Mutex::default(),
        decision: tkgops_engine::GateDecision::Replace {
            workflow: "upgrade-cluster".into(),
            steps: vec![spec("new1"), spec("new2")],
            note: "re-planned after run a".into(),
        },
    });
    engine.set_start_gate(gate.clone());
    let mut started = ex.notify_started();
    engine
        .submit(request("a", "c1", vec![spec("s")]))
        .await
        .unwrap();
    wait_for_call(&mut started, "s").await;
    engine
        .submit(request("b", "c1", vec![spec("old")]))
        .await
        .unwrap();
    ex.gate("a").notify_one();
    engine.wait("a").await.unwrap();
    let b = engine.wait("b").await.unwrap();
    assert_eq!(b.state, RunState::Succeeded);
    assert_eq!(b.workflow, "upgrade-cluster");
    assert_eq!(b.note.as_deref(), Some("re-planned after run a"));
    assert_eq!(
        ex.calls_for("b"),
        [("new1".to_string(), 1), ("new2".to_string(), 1)]
    );
    // Only b waited; a found its cluster free.
    assert_eq!(
        *gate.asked.lock().unwrap(),
        [("b".to_string(), "a".to_string())]
    );

    // A gate that cancels: the run ends Cancelled with its reason, nothing runs.
    let gate = Arc::new(ScriptedGate {
        asked: Mutex::default(),
        decision: tkgops_engine::GateDecision::Cancel("nothing left to do".into()),
    });
    engine.set_start_gate(gate);
    ex.script("c/s", vec![Act::Gate("c")]);
    engine
        .submit(request("c", "c2", vec![spec("s")]))
        .await
        .unwrap();
    wait_for_call(&mut started, "s").await;
    engine
        .submit(request("d", "c2", vec![spec("s")]))
        .await
        .unwrap();
    ex.gate("c").notify_one();
    let d = engine.wait("d").await.unwrap();
    assert_eq!(d.state, RunState::Cancelled);
    assert_eq!(d.error.as_deref(), Some("nothing left to do"));
    assert!(ex.calls_for("d").is_empty());
}

//! The deployed commit (issue 17 item 2): the engine records a cluster's last succeeded commit
//! in the same flush as the run's terminal write, whoever observes the runs, and after a crash.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use tkgops_domain::step::WorkloadTarget;
use tkgops_engine::store::{RunState, SledStore, Store};
use tkgops_engine::{
    Engine, NoopObserver, RetryPolicy, RunRequest, StepContext, StepError, StepExecutor,
    StepInputs, StepSpec,
};

/// Succeeds every step, except that step `hang` never returns when set; tells `started` the
/// id of every step it starts.
struct Steps {
    hang: Option<&'static str>,
    started: Mutex<mpsc::UnboundedSender<String>>,
}

impl Steps {
    fn new(hang: Option<&'static str>) -> (Arc<Self>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Steps {
                hang,
                started: Mutex::new(tx),
            }),
            rx,
        )
    }
}

#[async_trait]
impl StepExecutor for Steps {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let _ = self.started.lock().unwrap().send(ctx.step.id.clone());
        if self.hang == Some(ctx.step.id.as_str()) {
            std::future::pending::<()>().await;
        }
        Ok(json!({"step": ctx.step.id}))
    }
}

fn request(id: &str, commit: &str) -> RunRequest {
    let step = |id: &str| StepSpec {
        id: id.into(),
        title: id.into(),
        timeout_secs: 0,
        retry: RetryPolicy::default(),
        inputs: StepInputs::KubeWaitCluster(WorkloadTarget {
            management_cluster: "mc".into(),
            kubeconfig: None,
            namespace: "ns".into(),
            cluster_name: "team-a-prod".into(),
        }),
    };
    RunRequest {
        id: id.into(),
        cluster: "team-a-prod".into(),
        workflow: "upgrade-cluster".into(),
        commit_sha: commit.into(),
        origin: None,
        steps: vec![step("s1"), step("s2")],
    }
}

fn open(path: &Path) -> Arc<dyn Store> {
    Arc::new(SledStore::open(path).unwrap())
}

#[tokio::test]
async fn a_succeeded_run_records_the_deployed_commit_with_no_observer_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (steps, _started) = Steps::new(None);
    let engine = Engine::new(store.clone(), steps, Arc::new(NoopObserver));
    assert_eq!(store.deployed("team-a-prod").await.unwrap(), None);
    engine.submit(request("r1", "aaaa")).await.unwrap();
    let run = engine.wait("r1").await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let fact = store.deployed("team-a-prod").await.unwrap().unwrap();
    assert_eq!(fact.commit_sha, "aaaa");
    assert_eq!(fact.run_id.as_deref(), Some("r1"));
    assert_eq!(fact.finished_at, run.finished_at);
    // What the store gives back is what the engine finished with.
    assert_eq!(store.get_run("r1").await.unwrap().unwrap(), run);
    // The next succeeded run of the cluster replaces it.
    engine.submit(request("r2", "bbbb")).await.unwrap();
    engine.wait("r2").await.unwrap();
    assert_eq!(
        store
            .deployed("team-a-prod")
            .await
            .unwrap()
            .unwrap()
            .commit_sha,
        "bbbb"
    );
}

/// The bot dies (its runtime is dropped, no shutdown code runs) while the run's last step is in
/// flight; the next life resumes the run, and its success records the deployed commit.
#[test]
fn the_deployed_commit_is_recorded_when_a_run_resumed_after_a_crash_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = open(&path);
            let (steps, mut started) = Steps::new(Some("s2"));
            let engine = Engine::new(store.clone(), steps, Arc::new(NoopObserver));
            engine.submit(request("r1", "aaaa")).await.unwrap();
            while started.recv().await.as_deref() != Some("s2") {}
            assert_eq!(store.deployed("team-a-prod").await.unwrap(), None);
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
        let store = open(dir.path());
        assert_eq!(store.deployed("team-a-prod").await.unwrap(), None);
        let (steps, _started) = Steps::new(None);
        let engine = Engine::new(store.clone(), steps, Arc::new(NoopObserver));
        assert_eq!(engine.resume_all().await.unwrap(), 1);
        let run = engine.wait("r1").await.unwrap();
        assert_eq!(run.state, RunState::Succeeded);
        let fact = store.deployed("team-a-prod").await.unwrap().unwrap();
        assert_eq!(fact.commit_sha, "aaaa");
        assert_eq!(fact.run_id.as_deref(), Some("r1"));
    });
    drop(rt);
    // And it is on disk: a third life reads it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = open(dir.path());
        assert_eq!(
            store
                .deployed("team-a-prod")
                .await
                .unwrap()
                .unwrap()
                .commit_sha,
            "aaaa"
        );
        assert!(store.list_active().await.unwrap().is_empty());
    });
}

//! Wait benchmark (`cargo bench -p tkgops-sandbox --bench wait`; harness = false, prints figures).
//!
//! What a create-run's `kube.wait-cluster` costs against the emulated management cluster, with
//! the provider's shared watches (docs/design.md "Targets": reaction p99 < 1 s, one shared watch per
//! resource type per management cluster, no per-run polling):
//! - **API requests** to the management cluster during the waits (the emulator's fault-layer
//!   request log), for `CLUSTERS` concurrent waits and `STEPS` status changes each;
//! - **reaction latency**: from a status write on the emulator (a MachineDeployment's
//!   `readyReplicas`) to the waiter's progress line showing it, p50 / p99 / max.
//!
//! The objects are written with the emulator's direct API (no simulated controllers), so every
//! change is the benchmark's own and timed exactly. Sizes: `TKGOPS_BENCH_CLUSTERS` (default 20)
//! and `TKGOPS_BENCH_STEPS` (default 25). Runs in a few seconds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tkgops_emulators::kube::{EmulatedCluster, Gvr, KubeEmulator};
use tkgops_engine::{ProgressSink, RetryPolicy, StepContext, StepInputs, StepSpec};
use tkgops_providers::kube::KubeProvider;
use tkgops_providers::{KubeconfigSource, WorkloadTarget};

const MC: &str = "mc-bench";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn gvr(group: &str, plural: &str) -> Gvr {
    let version = if group == "packaging.carvel.dev" {
        "v1alpha1"
    } else if group == "run.tanzu.vmware.com" {
        "v1alpha3"
    } else {
        "v1beta1"
    };
    Gvr::new(group, version, plural)
}

/// A plan-based Cluster (no ClusterBootstrap wait) with one KCP and one MachineDeployment of
/// `replicas` replicas, control plane ready, MD at 0.
fn create_cluster(mgmt: &EmulatedCluster, name: &str, replicas: i64) {
    let labels = json!({"cluster.x-k8s.io/cluster-name": name});
    mgmt.create(
        &gvr("cluster.x-k8s.io", "clusters"),
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {}}),
    )
    .expect("Cluster");
    mgmt.update_status(
        &gvr("cluster.x-k8s.io", "clusters"),
        Some("default"),
        name,
        json!({"phase": "Provisioned", "conditions": [
            {"type": "ControlPlaneReady", "status": "True"},
            {"type": "InfrastructureReady", "status": "True"},
            {"type": "Ready", "status": "False", "severity": "Info", "reason": "WaitingForAvailableMachines"}]}),
    )
    .expect("Cluster status");
    let kcp = format!("{name}-control-plane");
    mgmt.create(
        &gvr("controlplane.cluster.x-k8s.io", "kubeadmcontrolplanes"),
        json!({"metadata": {"name": kcp, "namespace": "default", "labels": labels}, "spec": {"replicas": 1}}),
    )
    .expect("KCP");
    mgmt.update_status(
        &gvr("controlplane.cluster.x-k8s.io", "kubeadmcontrolplanes"),
        Some("default"),
        &kcp,
        json!({"readyReplicas": 1}),
    )
    .expect("KCP status");
    mgmt.create(
        &gvr("cluster.x-k8s.io", "machinedeployments"),
        json!({"metadata": {"name": format!("{name}-md-0"), "namespace": "default", "labels": labels},
               "spec": {"replicas": replicas}}),
    )
    .expect("MD");
}

fn set_md_ready(mgmt: &EmulatedCluster, name: &str, ready: i64) {
    mgmt.update_status(
        &gvr("cluster.x-k8s.io", "machinedeployments"),
        Some("default"),
        &format!("{name}-md-0"),
        json!({"replicas": ready, "readyReplicas": ready, "updatedReplicas": ready}),
    )
    .expect("MD status");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tkgops_providers::install_crypto_provider();
    let clusters = env_usize("TKGOPS_BENCH_CLUSTERS", 20);
    let steps = env_usize("TKGOPS_BENCH_STEPS", 25) as i64;

    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster(MC).await.expect("management cluster");
    mgmt.register_capi_types();
    mgmt.register_kapp_types();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mc.kubeconfig");
    std::fs::write(&path, mgmt.kubeconfig_yaml()).expect("kubeconfig");
    let mut mcs = BTreeMap::new();
    mcs.insert(
        MC.to_string(),
        KubeconfigSource::File(path.to_string_lossy().into_owned()),
    );
    let provider = KubeProvider::new(mcs, Duration::from_secs(15));

    let names: Vec<String> = (0..clusters).map(|i| format!("bench-{i}")).collect();
    for n in &names {
        create_cluster(&mgmt, n, steps + 1);
    }

    // Each waiter's latest progress line, with a change notification.
    let mut lines = Vec::new();
    let mut handles = Vec::new();
    let requests_before = mgmt.faults().log().all().len();
    let started = Instant::now();
    for n in &names {
        let (tx, rx) = tokio::sync::watch::channel(String::new());
        lines.push(rx);
        let target = WorkloadTarget {
            management_cluster: MC.to_string(),
            namespace: "default".to_string(),
            cluster_name: n.clone(),
            kubeconfig: None,
        };
        let tx = Arc::new(Mutex::new(tx));
        let ctx = StepContext {
            run_id: format!("run-{n}"),
            cluster: n.clone(),
            commit_sha: "0".repeat(40),
            step: StepSpec {
                id: "wait-cluster".into(),
                title: "wait".into(),
                timeout_secs: 0,
                retry: RetryPolicy::default(),
                inputs: StepInputs::KubeWaitCluster(target.clone()),
            },
            attempt: 1,
            outputs: BTreeMap::new(),
            progress: ProgressSink::new(move |l| {
                let _ = tx.lock().map(|t| t.send_replace(l.to_string()));
            }),
        };
        let p = provider.clone();
        handles.push(tokio::spawn(
            async move { p.wait_cluster(&ctx, &target).await },
        ));
    }
    // Every waiter has evaluated once (its first progress line).
    for rx in lines.iter_mut() {
        rx.wait_for(|l| l.contains("md-0 0/"))
            .await
            .expect("first line");
    }
    let setup = started.elapsed();

    let mut latencies = Vec::new();
    for step in 1..=steps + 1 {
        for (i, n) in names.iter().enumerate() {
            let t0 = Instant::now();
            set_md_ready(&mgmt, n, step);
            if step <= steps {
                let want = format!("md-0 {step}/{}", steps + 1);
                lines[i]
                    .wait_for(|l| l.contains(&want))
                    .await
                    .expect("progress");
                latencies.push(t0.elapsed());
            }
        }
    }
    for h in handles {
        h.await.expect("task").expect("wait-cluster succeeds");
    }
    let total = started.elapsed();
    let requests: Vec<_> = mgmt.faults().log().all()[requests_before..].to_vec();
    latencies.sort();

    let changes = clusters as i64 * (steps + 1);
    println!(
        "wait benchmark: {clusters} concurrent kube.wait-cluster runs, {changes} status changes"
    );
    println!(
        "  management-cluster API requests during the waits: {} ({} watch requests, {} other), shared watches: {}",
        requests.len(),
        requests.iter().filter(|r| r.query.contains("watch=")).count(),
        requests.iter().filter(|r| !r.query.contains("watch=")).count(),
        provider.shared_watches()
    );
    println!(
        "  for comparison, TKG's polling (4 requests per 15 s poll per run) makes {} requests per minute for these runs",
        clusters * 16
    );
    println!(
        "  reaction (status write → progress line): p50 {:?}, p99 {:?}, max {:?} over {} changes",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        latencies.len()
    );
    println!("  setup (watches synced, first evaluation of every run): {setup:?}; total {total:?}");
}

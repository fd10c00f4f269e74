//! Integration tests: kube_provider. The Kubernetes provider against the Kubernetes API emulator
//! with the simulated Cluster API, kapp-controller and TMC agent controllers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tkgops_emulators::faults::{Fault, FaultAction};
use tkgops_emulators::kube::controllers::{
    seed_management_cluster, start_controllers_with, ControllerOptions, Controllers, TopologyFaults,
};
use tkgops_emulators::kube::{EmulatedCluster, Gvr, KubeEmulator};
use tkgops_engine::{ProgressSink, RetryPolicy, StepContext, StepError, StepSpec};

use crate::support::ExecuteStep;
use tkgops_providers::kube::{KubeProvider, WaitOptions};
use tkgops_providers::{KubeconfigSource, ManifestApplier, WorkloadTarget};

const MC: &str = "mc-aws-1";
const TICK: Duration = Duration::from_millis(20);
const POLL: Duration = Duration::from_millis(20);
/// Upper bound for any wait in these tests (the emulator needs well under a second per cluster).
const WAIT: Duration = Duration::from_secs(60);

struct Env {
    emu: KubeEmulator,
    mgmt: EmulatedCluster,
    provider: KubeProvider,
    controllers: Controllers,
    dir: tempfile::TempDir,
}

/// Wait options for tests: TKG's rules with short windows (no test sleeps for them).
fn test_wait_options() -> WaitOptions {
    WaitOptions {
        error_persistence: Duration::from_millis(300),
        unchanged_timeout: Duration::from_secs(60),
        bootstrap_timeout: Duration::from_secs(30),
        package_timeout: Duration::from_secs(2),
        repository_timeout: Duration::from_millis(500),
        ..WaitOptions::default()
    }
}

async fn env() -> Env {
    env_with(test_wait_options(), TopologyFaults::default()).await
}

async fn env_with(wait: WaitOptions, faults: TopologyFaults) -> Env {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster(MC).await.expect("management cluster");
    seed_management_cluster(&mgmt).expect("seed");
    let controllers = start_controllers_with(
        &emu,
        MC,
        ControllerOptions {
            tick: TICK,
            standard_packages: true,
        },
        faults,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mc.kubeconfig");
    std::fs::write(&path, mgmt.kubeconfig_yaml()).expect("write kubeconfig");
    let mut mcs = BTreeMap::new();
    mcs.insert(
        MC.to_string(),
        KubeconfigSource::File(path.to_string_lossy().into_owned()),
    );
    let provider = KubeProvider::with_wait_options(mcs, POLL, wait);
    Env {
        emu,
        mgmt,
        provider,
        controllers,
        dir,
    }
}

impl Env {
    /// A second provider on the same management cluster with other wait options.
    fn provider_with(&self, wait: WaitOptions) -> KubeProvider {
        let mut mcs = BTreeMap::new();
        mcs.insert(
            MC.to_string(),
            KubeconfigSource::File(
                self.dir
                    .path()
                    .join("mc.kubeconfig")
                    .to_string_lossy()
                    .into_owned(),
            ),
        );
        KubeProvider::with_wait_options(mcs, POLL, wait)
    }
}

/// A step context for `kind` with `inputs` (a `kube.apply` without a Cluster named applies to
/// `default/team-a-prod`), and the progress lines it receives.
fn ctx(kind: &str, mut inputs: Value) -> (StepContext, Arc<Mutex<Vec<String>>>) {
    if kind == "kube.apply" {
        if let Some(o) = inputs.as_object_mut() {
            o.entry("namespace").or_insert_with(|| json!("default"));
            o.entry("clusterName")
                .or_insert_with(|| json!("team-a-prod"));
        }
    }
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let ctx = StepContext {
        run_id: "run-1".into(),
        cluster: "team-a-prod".into(),
        commit_sha: "0".repeat(40),
        step: StepSpec {
            id: kind.replace('.', "-"),
            title: kind.into(),
            timeout_secs: 60,
            retry: RetryPolicy::default(),
            inputs: crate::support::step_inputs(kind, inputs),
        },
        attempt: 1,
        outputs: BTreeMap::new(),
        progress: ProgressSink::new(move |l| sink.lock().unwrap().push(l.to_string())),
    };
    (ctx, lines)
}

async fn run(
    p: &KubeProvider,
    kind: &str,
    inputs: Value,
) -> (Result<Value, StepError>, Vec<String>) {
    let (c, lines) = ctx(kind, inputs);
    let r = tokio::time::timeout(WAIT, p.execute(&c))
        .await
        .expect("step did not finish in time");
    let l = lines.lock().unwrap().clone();
    (r, l)
}

/// The ownership label value of the Clusters the tests apply.
const OWNER: &str = "0123456789abcdef0123456789abcdef";

/// A ClusterClass Cluster (TKG 2.2's `tkg-aws-default-v1.0.0`, 3 control plane nodes, md-0..2,
/// as `tanzu cluster create` renders it, docs/tkg2-class-based.md §3) and the two TKG
/// MachineHealthChecks (samples/04 shape).
fn cluster_manifest(name: &str, fail: Option<&str>) -> String {
    let ann = fail
        .map(|m| format!("    emulator.tkgops.dev/fail: \"{m}\"\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: cluster.x-k8s.io/v1beta1
kind: Cluster
metadata:
  name: {name}
  namespace: default
  annotations:
    osInfo: ubuntu,20.04,amd64
    run.tanzu.vmware.com/resolve-tkr: ""
    tkg/plan: prod
{ann}  labels:
    tkg.tanzu.vmware.com/cluster-name: {name}
    tkgops.dev/owner: {OWNER}
spec:
  clusterNetwork:
    pods: {{cidrBlocks: [100.96.0.0/11]}}
    services: {{cidrBlocks: [100.64.0.0/13]}}
  topology:
    class: tkg-aws-default-v1.0.0
    version: v1.25.7+vmware.2-tkg.1
    controlPlane:
      replicas: 3
      metadata: {{annotations: {{run.tanzu.vmware.com/resolve-os-image: "ami-region=us-east-1,os-name=ubuntu,os-arch=amd64"}}}}
    workers:
      machineDeployments:
      - {{class: tkg-worker, name: md-0, replicas: 1, failureDomain: us-east-1a, metadata: {{annotations: {{run.tanzu.vmware.com/resolve-os-image: "ami-region=us-east-1,os-name=ubuntu,os-arch=amd64"}}}}}}
      - {{class: tkg-worker, name: md-1, replicas: 1, failureDomain: us-east-1b, metadata: {{annotations: {{run.tanzu.vmware.com/resolve-os-image: "ami-region=us-east-1,os-name=ubuntu,os-arch=amd64"}}}}}}
      - {{class: tkg-worker, name: md-2, replicas: 1, failureDomain: us-east-1c, metadata: {{annotations: {{run.tanzu.vmware.com/resolve-os-image: "ami-region=us-east-1,os-name=ubuntu,os-arch=amd64"}}}}}}
    variables:
    - {{name: cni, value: antrea}}
    - {{name: region, value: us-east-1}}
    - {{name: sshKeyName, value: tkg-kp}}
    - {{name: loadBalancerSchemeInternal, value: true}}
    - {{name: bastion, value: {{enabled: false}}}}
    - name: network
      value:
        vpc: {{existingID: vpc-0abc}}
        subnets:
        - {{az: us-east-1a, private: {{id: subnet-a}}}}
        - {{az: us-east-1b, private: {{id: subnet-b}}}}
        - {{az: us-east-1c, private: {{id: subnet-c}}}}
    - {{name: identityRef, value: {{}}}}
    - {{name: controlPlane, value: {{instanceType: m5.xlarge}}}}
    - {{name: worker, value: {{instanceType: m5.xlarge}}}}
---
apiVersion: cluster.x-k8s.io/v1beta1
kind: MachineHealthCheck
metadata:
  name: {name}
  namespace: default
spec:
  clusterName: {name}
  nodeStartupTimeout: 20m
  selector:
    matchLabels:
      node-pool: {name}-worker-pool
  unhealthyConditions:
  - type: Ready
    status: Unknown
    timeout: 5m
  - type: Ready
    status: "False"
    timeout: 12m
---
apiVersion: cluster.x-k8s.io/v1beta1
kind: MachineHealthCheck
metadata:
  name: {name}-control-plane
  namespace: default
spec:
  clusterName: {name}
  nodeStartupTimeout: 20m
  selector:
    matchLabels:
      cluster.x-k8s.io/control-plane: ""
  unhealthyConditions:
  - type: Ready
    status: Unknown
    timeout: 5m
  - type: Ready
    status: "False"
    timeout: 12m
"#
    )
}

fn cluster_inputs(name: &str) -> Value {
    json!({"managementCluster": MC, "namespace": "default", "clusterName": name})
}

fn cluster_gvr() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters")
}

/// Applies and waits for cluster `name`; returns the wait output and progress lines.
async fn provision(env: &Env, name: &str) -> (Value, Vec<String>) {
    let (r, _) = run(
        &env.provider,
        "kube.apply",
        json!({"managementCluster": MC, "manifests": cluster_manifest(name, None)}),
    )
    .await;
    r.expect("kube.apply");
    let (r, lines) = run(&env.provider, "kube.wait-cluster", cluster_inputs(name)).await;
    (r.expect("kube.wait-cluster"), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apply_outputs_objects_and_is_idempotent() {
    let env = env().await;
    let manifests = cluster_manifest("team-a-prod", None);
    let (r, lines) = run(
        &env.provider,
        "kube.apply",
        json!({"managementCluster": MC, "manifests": manifests}),
    )
    .await;
    let out = r.expect("apply");
    assert_eq!(
        out,
        json!({"applied": [
            "Cluster/default/team-a-prod",
            "MachineHealthCheck/default/team-a-prod",
            "MachineHealthCheck/default/team-a-prod-control-plane"
        ]})
    );
    assert!(
        lines.iter().any(|l| l.contains("applied 3 objects")),
        "{lines:?}"
    );
    let stored = env
        .mgmt
        .get(&cluster_gvr(), Some("default"), "team-a-prod")
        .expect("Cluster stored");
    assert_eq!(stored["spec"]["topology"]["controlPlane"]["replicas"], 3);
    let mhc_gvr = Gvr::new("cluster.x-k8s.io", "v1beta1", "machinehealthchecks");
    let mhc_rv = env
        .mgmt
        .get(&mhc_gvr, Some("default"), "team-a-prod-control-plane")
        .unwrap()["metadata"]["resourceVersion"]
        .clone();

    // Re-apply: every write by tkgops is a no-op.
    let before = env.mgmt.writes().len();
    let (r, _) = run(
        &env.provider,
        "kube.apply",
        json!({"managementCluster": MC, "manifests": manifests}),
    )
    .await;
    assert_eq!(r.expect("re-apply"), out);
    let ours: Vec<_> = env.mgmt.writes()[before..]
        .iter()
        .filter(|w| w.field_manager.as_deref() == Some("tkgops") && !w.dry_run)
        .cloned()
        .collect();
    assert_eq!(ours.len(), 3, "{ours:?}");
    assert!(
        ours.iter().all(|w| w.verb == "apply" && !w.changed),
        "{ours:?}"
    );
    let mhc_rv2 = env
        .mgmt
        .get(&mhc_gvr, Some("default"), "team-a-prod-control-plane")
        .unwrap()["metadata"]["resourceVersion"]
        .clone();
    assert_eq!(mhc_rv, mhc_rv2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_wait_cluster_follows_tkg_readiness_and_reports_progress() {
    let env = env().await;
    let (out, lines) = provision(&env, "team-a-prod").await;
    assert_eq!(out["phase"], "Provisioned");
    assert_eq!(out["controlPlane"], "3/3");
    let mds = out["machineDeployments"]
        .as_object()
        .expect("machineDeployments");
    assert_eq!(mds.len(), 3, "{out}");
    assert!(
        mds.keys().all(|k| k.starts_with("team-a-prod-md-")),
        "{out}"
    );
    assert!(mds.values().all(|v| v == "1/1"), "{out}");
    // Progress went through intermediate states.
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("control plane") && !l.contains("3/3 ready")),
        "{lines:?}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("control plane 3/3 ready; md-0 1/1; md-1 1/1; md-2 1/1"),
        "{lines:?}"
    );
    // Then the Machines' nodeRefs and the core packages of the ClusterBootstrap (§6 steps 3, 5).
    assert_eq!(out["nodeRefs"], "6/6", "{out}");
    assert_eq!(
        out["packages"],
        json!({"team-a-prod-kapp-controller": "Reconcile succeeded",
               "team-a-prod-antrea": "Reconcile succeeded",
               "team-a-prod-aws-ebs-csi-driver": "Reconcile succeeded"}),
        "{out}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .ends_with("; nodeRefs 6/6; packages 3/3 reconciled"),
        "{lines:?}"
    );
    // Progress lines are deduplicated.
    assert!(lines.windows(2).all(|w| w[0] != w[1]), "{lines:?}");
    // Every KCP and MD in the emulator really is ready.
    let kcps = env.mgmt.list(
        &Gvr::new(
            "controlplane.cluster.x-k8s.io",
            "v1beta1",
            "kubeadmcontrolplanes",
        ),
        Some("default"),
    );
    assert!(kcps
        .iter()
        .all(|k| k["status"]["readyReplicas"] == k["spec"]["replicas"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_wait_cluster_fails_permanently_on_error_condition() {
    let env = env().await;
    let manifests = cluster_manifest("team-b", Some("insufficient vCPU quota in us-east-1"));
    run(
        &env.provider,
        "kube.apply",
        json!({"managementCluster": MC, "manifests": manifests}),
    )
    .await
    .0
    .expect("apply");
    let (r, _) = run(&env.provider, "kube.wait-cluster", cluster_inputs("team-b")).await;
    let e = r.expect_err("must fail");
    assert!(!e.is_transient(), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("Cluster/default/team-b"), "{msg}");
    assert!(msg.contains("cluster creation failed"), "{msg}");
    assert!(
        msg.contains("insufficient vCPU quota in us-east-1"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_wait_cluster_missing_cluster_is_permanent() {
    let env = env().await;
    let (r, _) = run(&env.provider, "kube.wait-cluster", cluster_inputs("nope")).await;
    let e = r.expect_err("missing");
    assert!(
        !e.is_transient() && e.to_string().contains("Cluster/default/nope"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_read_kubeconfig_connects_without_leaking_the_secret() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let (r, lines) = run(
        &env.provider,
        "kube.read-kubeconfig",
        cluster_inputs("team-a-prod"),
    )
    .await;
    let out = r.expect("read-kubeconfig");
    let wl = env
        .emu
        .cluster("team-a-prod")
        .expect("workload cluster created by CAPI");
    assert_eq!(out["secret"], "default/team-a-prod-kubeconfig");
    assert_eq!(out["server"], wl.url());
    assert!(
        out["kubernetesVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with('v')),
        "{out}"
    );
    let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["kubernetesVersion", "secret", "server"]);
    let everything = format!("{out} {lines:?}");
    assert!(!everything.contains(&wl.token()), "workload token leaked");
    assert!(!everything.contains("current-context"), "kubeconfig leaked");
    // The workload client really authenticates with the workload cluster's token.
    assert!(wl.faults().log().count(&http::Method::GET, "/version") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_client_missing_secret_is_transient() {
    let env = env().await;
    let target = WorkloadTarget {
        management_cluster: MC.into(),
        kubeconfig: None,
        namespace: "default".into(),
        cluster_name: "ghost".into(),
    };
    let e = env
        .provider
        .workload_client(&target)
        .await
        .err()
        .expect("no secret");
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("ghost-kubeconfig"), "{e}");
}

fn rollout_inputs(name: &str, packages: Value) -> Value {
    json!({
        "managementCluster": MC, "namespace": "default", "clusterName": name,
        "repository": {"name": "tanzu-standard", "namespace": "tanzu-package-repo-global"},
        "packages": packages,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_rollout_installs_in_order_like_tanzu_package_install() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let contour_values =
        "infrastructure_provider: aws\nenvoy:\n  service:\n    type: LoadBalancer\n";
    let inputs = rollout_inputs(
        "team-a-prod",
        json!([
            {"name": "cert-manager", "refName": "cert-manager.tanzu.vmware.com", "version": "1.7.2+vmware.1-tkg.1",
             "namespace": "cert-manager", "valuesYaml": ""},
            {"name": "contour", "refName": "contour.tanzu.vmware.com", "version": "1.20.2+vmware.1-tkg.1",
             "namespace": "tanzu-system-ingress", "valuesYaml": contour_values},
        ]),
    );
    let (r, lines) = run(&env.provider, "packages.rollout", inputs.clone()).await;
    let out = r.expect("rollout");
    assert_eq!(
        out,
        json!({"packages": [
            {"name": "cert-manager", "namespace": "cert-manager", "version": "1.7.2+vmware.1-tkg.1", "status": "Reconcile succeeded"},
            {"name": "contour", "namespace": "tanzu-system-ingress", "version": "1.20.2+vmware.1-tkg.1", "status": "Reconcile succeeded"},
        ]})
    );
    assert!(
        lines.iter().any(|l| l.starts_with("cert-manager")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("contour") && l.contains("Reconcile succeeded")),
        "{lines:?}"
    );

    let wl = env.emu.cluster("team-a-prod").expect("workload");
    let pkgi_gvr = Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls");
    for (name, ns) in [
        ("cert-manager", "cert-manager"),
        ("contour", "tanzu-system-ingress"),
    ] {
        let pkgi = wl.get(&pkgi_gvr, Some(ns), name).expect("PackageInstall");
        assert_eq!(
            pkgi["status"]["conditions"][0]["type"], "ReconcileSucceeded",
            "{pkgi}"
        );
        assert_eq!(
            pkgi["spec"]["serviceAccountName"],
            format!("{name}-{ns}-sa")
        );
        assert_eq!(
            pkgi["spec"]["packageRef"]["versionSelection"]["prereleases"],
            json!({})
        );
        let owner = json!(format!("{name}-{ns}"));
        let ann = "tkg.tanzu.vmware.com/tanzu-package";
        let sa = wl
            .get(
                &Gvr::new("", "v1", "serviceaccounts"),
                Some(ns),
                &format!("{name}-{ns}-sa"),
            )
            .expect("SA");
        assert_eq!(sa["metadata"]["annotations"][ann], owner);
        let cr = wl
            .get(
                &Gvr::new("rbac.authorization.k8s.io", "v1", "clusterroles"),
                None,
                &format!("{name}-{ns}-cluster-role"),
            )
            .expect("ClusterRole");
        assert_eq!(cr["metadata"]["annotations"][ann], owner);
        assert_eq!(
            cr["rules"],
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
        );
        let crb = wl
            .get(
                &Gvr::new("rbac.authorization.k8s.io", "v1", "clusterrolebindings"),
                None,
                &format!("{name}-{ns}-cluster-rolebinding"),
            )
            .expect("ClusterRoleBinding");
        assert_eq!(crb["metadata"]["annotations"][ann], owner);
        assert_eq!(crb["subjects"][0]["name"], format!("{name}-{ns}-sa"));
        let secret = wl.get(
            &Gvr::new("", "v1", "secrets"),
            Some(ns),
            &format!("{name}-{ns}-values"),
        );
        if name == "contour" {
            let secret = secret.expect("values Secret");
            assert_eq!(secret["metadata"]["annotations"][ann], owner);
            assert_eq!(
                pkgi["spec"]["values"][0]["secretRef"]["name"],
                format!("{name}-{ns}-values")
            );
        } else {
            assert!(secret.is_none(), "no values Secret without values");
            assert!(pkgi["spec"].get("values").is_none());
        }
    }
    // cert-manager was reconciled before anything of contour was written.
    let cm_done = lines
        .iter()
        .position(|l| l.starts_with("cert-manager") && l.contains("Reconcile succeeded"))
        .expect("cm done");
    let contour_start = lines
        .iter()
        .position(|l| l.starts_with("contour"))
        .expect("contour start");
    assert!(cm_done < contour_start, "{lines:?}");
    let writes = wl.writes();
    let last_cm = writes
        .iter()
        .rposition(|w| w.name.starts_with("cert-manager"))
        .expect("cert-manager writes");
    let first_contour = writes
        .iter()
        .position(|w| w.name.starts_with("contour"))
        .expect("contour writes");
    assert!(last_cm < first_contour);
    // Secret values never reach the progress lines or the output.
    assert!(!format!("{out} {lines:?}").contains("LoadBalancer"));

    // Running the step again converges without changes to the objects tkgops owns.
    let before = wl.writes().len();
    let (r, _) = run(&env.provider, "packages.rollout", inputs).await;
    r.expect("second rollout");
    assert!(wl.writes()[before..]
        .iter()
        .filter(|w| w.field_manager.as_deref() == Some("tkgops"))
        .all(|w| !w.changed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_rollout_unknown_version_is_permanent() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let inputs = rollout_inputs(
        "team-a-prod",
        json!([{"name": "cert-manager", "refName": "cert-manager.tanzu.vmware.com", "version": "9.9.9+vmware.1-tkg.1",
                "namespace": "cert-manager", "valuesYaml": ""}]),
    );
    let (r, _) = run(&env.provider, "packages.rollout", inputs).await;
    let e = r.expect_err("unknown version");
    assert!(!e.is_transient(), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("PackageInstall cert-manager/cert-manager"),
        "{msg}"
    );
    assert!(msg.contains("Could not find package"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_to_workload_applies_namespace_first() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let target = WorkloadTarget {
        management_cluster: MC.into(),
        kubeconfig: None,
        namespace: "default".into(),
        cluster_name: "team-a-prod".into(),
    };
    // ConfigMap first in the file: the Namespace must still be applied before it.
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tmc-settings\n  namespace: vmware-system-tmc\ndata:\n  a: b\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: vmware-system-tmc\n";
    let applied = env
        .provider
        .apply_to_workload(&target, yaml, "tmc-installer")
        .await
        .expect("apply_to_workload");
    assert_eq!(
        applied,
        [
            "Namespace/vmware-system-tmc",
            "ConfigMap/vmware-system-tmc/tmc-settings"
        ]
    );
    let wl = env.emu.cluster("team-a-prod").unwrap();
    let cm = wl
        .get(
            &Gvr::new("", "v1", "configmaps"),
            Some("vmware-system-tmc"),
            "tmc-settings",
        )
        .expect("ConfigMap");
    assert_eq!(cm["data"]["a"], "b");
    assert!(wl
        .writes()
        .iter()
        .any(|w| w.name == "tmc-settings" && w.field_manager.as_deref() == Some("tmc-installer")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_errors_are_classified() {
    let env = env().await;
    // Unknown kind: permanent, names the document.
    let (r, _) = run(
        &env.provider,
        "kube.apply",
        json!({"managementCluster": MC, "manifests": "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"}),
    )
    .await;
    let e = r.expect_err("unknown kind");
    assert!(
        !e.is_transient() && e.to_string().contains("Widget/w"),
        "{e:?}"
    );
    // Unparsable YAML: permanent.
    let (r, _) = run(
        &env.provider,
        "kube.apply",
        json!({"managementCluster": MC, "manifests": "a: [b\n"}),
    )
    .await;
    assert!(!r.expect_err("bad yaml").is_transient());
    // Unknown management cluster: permanent.
    let (r, _) = run(
        &env.provider,
        "kube.apply",
        json!({"managementCluster": "mc-nope", "manifests": ""}),
    )
    .await;
    let e = r.expect_err("unknown mc");
    assert!(
        !e.is_transient() && e.to_string().contains("mc-nope"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_once_is_transient_then_succeeds() {
    let env = env().await;
    env.mgmt.faults().inject(Fault::new(
        Some(http::Method::PATCH),
        "/apis/cluster.x-k8s.io/v1beta1/namespaces/default/clusters",
        FaultAction::Status { code: 500, body: r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcdserver: leader changed","reason":"InternalError","code":500}"#.into() },
        Some(1),
    ));
    let inputs =
        json!({"managementCluster": MC, "manifests": cluster_manifest("team-a-prod", None)});
    let (r, _) = run(&env.provider, "kube.apply", inputs.clone()).await;
    let e = r.expect_err("injected 500");
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("Cluster/default/team-a-prod"), "{e}");
    let (r, _) = run(&env.provider, "kube.apply", inputs).await;
    r.expect("second attempt succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_and_plain_text_5xx_are_transient() {
    let env = env().await;
    env.mgmt.faults().inject(Fault::new(
        Some(http::Method::PATCH),
        "/apis/cluster.x-k8s.io/v1beta1/namespaces/default/machinehealthchecks",
        FaultAction::Status { code: 409, body: r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"conflict","reason":"Conflict","code":409}"#.into() },
        Some(1),
    ));
    let inputs =
        json!({"managementCluster": MC, "manifests": cluster_manifest("team-a-prod", None)});
    let e = run(&env.provider, "kube.apply", inputs.clone())
        .await
        .0
        .expect_err("409");
    assert!(
        e.is_transient()
            && e.to_string()
                .contains("MachineHealthCheck/default/team-a-prod"),
        "{e:?}"
    );
    env.mgmt.faults().inject(Fault::new(
        None,
        "/apis/cluster.x-k8s.io/v1beta1",
        FaultAction::Status {
            code: 502,
            body: "bad gateway".into(),
        },
        Some(1),
    ));
    let e = run(&env.provider, "kube.apply", inputs)
        .await
        .0
        .expect_err("502");
    assert!(e.is_transient(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_a_clear_permanent_error() {
    let env = env().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.kubeconfig");
    let bad = env
        .mgmt
        .kubeconfig_yaml()
        .replace(&env.mgmt.token(), "not-the-token");
    std::fs::write(&path, bad).unwrap();
    let mut mcs = BTreeMap::new();
    mcs.insert(
        MC.to_string(),
        KubeconfigSource::File(path.to_string_lossy().into_owned()),
    );
    let provider = KubeProvider::new(mcs, POLL);
    let (r, _) = run(
        &provider,
        "kube.apply",
        json!({"managementCluster": MC, "manifests": cluster_manifest("team-a-prod", None)}),
    )
    .await;
    let e = r.expect_err("401");
    assert!(!e.is_transient(), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("401") && msg.contains("credentials"), "{msg}");
    assert!(!msg.contains("not-the-token"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_sources_errors_are_permanent_and_secret_free() {
    let env = env().await;
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.kubeconfig");
    std::fs::write(&garbage, "token: s3cr3t-value\n: : [").unwrap();
    let mut mcs = BTreeMap::new();
    mcs.insert(
        "missing-env".to_string(),
        KubeconfigSource::Env("TKGOPS_TEST_KUBE_PROVIDER_UNSET_VARIABLE".into()),
    );
    mcs.insert(
        "missing-file".to_string(),
        KubeconfigSource::File("/nonexistent/kubeconfig".into()),
    );
    mcs.insert(
        "garbage".to_string(),
        KubeconfigSource::File(garbage.to_string_lossy().into_owned()),
    );
    let provider = KubeProvider::new(mcs, POLL);
    let e = provider
        .management_client("missing-env")
        .await
        .err()
        .expect("unset variable");
    assert!(
        !e.is_transient()
            && e.to_string()
                .contains("TKGOPS_TEST_KUBE_PROVIDER_UNSET_VARIABLE"),
        "{e:?}"
    );
    let e = provider
        .management_client("missing-file")
        .await
        .err()
        .expect("missing file");
    assert!(
        !e.is_transient() && e.to_string().contains("/nonexistent/kubeconfig"),
        "{e:?}"
    );
    let e = provider
        .management_client("garbage")
        .await
        .err()
        .expect("garbage");
    assert!(
        !e.is_transient() && !e.to_string().contains("s3cr3t"),
        "{e:?}"
    );
    // The public apply_yaml with a client from the (cached) management client.
    let client = env.provider.management_client(MC).await.expect("client");
    let applied = env
        .provider
        .apply_yaml(
            &client,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\ndata: {k: v}\n",
            "tkgops",
        )
        .await
        .expect("apply");
    assert_eq!(applied, ["ConfigMap/default/c1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_server_is_transient() {
    tkgops_providers::install_crypto_provider();
    // A port that nothing listens on: bind, take the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("down.kubeconfig");
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: down\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: down\n  context: {{cluster: down, user: down}}\ncurrent-context: down\nusers:\n- name: down\n  user: {{token: t}}\n"
    );
    std::fs::write(&path, kc).unwrap();
    let mut mcs = BTreeMap::new();
    mcs.insert(
        MC.to_string(),
        KubeconfigSource::File(path.to_string_lossy().into_owned()),
    );
    let provider = KubeProvider::new(mcs, POLL);
    let (r, _) = run(&provider, "kube.apply", json!({"managementCluster": MC, "manifests": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"})).await;
    let e = r.expect_err("connection refused");

    assert!(e.is_transient(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_rollout_waits_for_the_repository_then_is_transient() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let mut inputs = rollout_inputs(
        "team-a-prod",
        json!([{"name": "cert-manager", "refName": "cert-manager.tanzu.vmware.com", "version": "1.7.2+vmware.1-tkg.1",
                "namespace": "cert-manager", "valuesYaml": ""}]),
    );
    inputs["repository"]["name"] = json!("tanzu-extra");
    let (r, lines) = run(&env.provider, "packages.rollout", inputs).await;
    let e = r.expect_err("no such repository");
    assert!(e.is_transient(), "{e:?}");
    assert!(
        e.to_string()
            .contains("waiting for PackageRepository tanzu-extra"),
        "{e}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("waiting for PackageRepository tanzu-extra")),
        "{lines:?}"
    );
    // Nothing was installed.
    let wl = env.emu.cluster("team-a-prod").unwrap();
    assert!(wl
        .get(
            &Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls"),
            Some("cert-manager"),
            "cert-manager"
        )
        .is_none());
}

/// Security rule 7: an existing Cluster that tkgops did not create for this config repository
/// and cluster path is never changed; the step fails naming the label it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_cluster_of_someone_else_is_never_changed() {
    let env = env().await;
    let gvr = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let manifest = cluster_manifest("team-a-prod", None);
    let first = manifest.split("\n---\n").next().unwrap();
    let mut theirs: Value = serde_yaml::from_str(first).unwrap();
    theirs["metadata"]["labels"]["tkgops.dev/owner"] = json!("ffffffffffffffffffffffffffffffff");
    theirs["spec"]["topology"]["controlPlane"]["replicas"] = json!(1);
    env.mgmt.apply(&gvr, theirs, "someone-else", false).unwrap();
    let (r, _) = run(
        &env.provider,
        "kube.apply",
        json!({"managementCluster": MC, "manifests": cluster_manifest("team-a-prod", None)}),
    )
    .await;
    let e = r.expect_err("an unowned Cluster must be refused");
    assert!(!e.is_transient(), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("Cluster/default/team-a-prod already exists")
            && msg.contains("ffffffffffffffffffffffffffffffff")
            && msg.contains(OWNER),
        "{msg}"
    );
    let by_tkgops: Vec<_> = env
        .mgmt
        .writes()
        .into_iter()
        .filter(|w| w.field_manager.as_deref() == Some("tkgops"))
        .collect();
    assert!(by_tkgops.is_empty(), "tkgops wrote {by_tkgops:?}");
    let stored = env.mgmt.get(&gvr, Some("default"), "team-a-prod").unwrap();
    assert_eq!(stored["spec"]["topology"]["controlPlane"]["replicas"], 1);
}

/// Security rule 7: tkgops never forces server-side apply over a field another manager owns;
/// the conflict fails the step naming the field and the manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_conflict_fails_naming_the_field_and_its_manager() {
    let env = env().await;
    let inputs =
        json!({"managementCluster": MC, "manifests": cluster_manifest("team-a-prod", None)});
    run(&env.provider, "kube.apply", inputs.clone())
        .await
        .0
        .expect("first apply");
    // `tanzu cluster scale` (or an autoscaler) takes over the control plane replicas.
    let gvr = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let scale = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
        "metadata": {"name": "team-a-prod", "namespace": "default"},
        "spec": {"topology": {"controlPlane": {"replicas": 5}}}
    });
    env.mgmt.apply(&gvr, scale, "tanzu-cli", true).unwrap();
    let e = run(&env.provider, "kube.apply", inputs)
        .await
        .0
        .expect_err("the conflict must fail the step");
    assert!(!e.is_transient(), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("Cluster/default/team-a-prod: server-side apply conflict")
            && msg.contains("\"tanzu-cli\"")
            && msg.contains(".spec.topology.controlPlane.replicas"),
        "{msg}"
    );
    let stored = env.mgmt.get(&gvr, Some("default"), "team-a-prod").unwrap();
    assert_eq!(stored["spec"]["topology"]["controlPlane"]["replicas"], 5);
}

/// TKG aborts only on a *persistent* `Ready=False` with severity Error (§6 step 2): with a long
/// persistence window the wait keeps going although the emulator shows the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_error_is_tolerated_until_it_persists() {
    let env = env().await;
    let manifests = cluster_manifest("team-c", Some("insufficient vCPU quota in us-east-1"));
    run(
        &env.provider,
        "kube.apply",
        json!({"managementCluster": MC, "manifests": manifests}),
    )
    .await
    .0
    .expect("apply");
    let patient = env.provider_with(WaitOptions {
        error_persistence: Duration::from_secs(3600),
        ..test_wait_options()
    });
    let (c, lines) = ctx("kube.wait-cluster", cluster_inputs("team-c"));
    let task = tokio::spawn(async move { patient.execute(&c).await });
    // The waiter has seen the failed Cluster …
    let seen = env
        .controllers
        .wait_until(WAIT, || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("Cluster phase Failed"))
                .then_some(())
        })
        .await;
    assert!(seen.is_some(), "{:?}", lines.lock().unwrap());
    let cluster = env
        .mgmt
        .get(&cluster_gvr(), Some("default"), "team-c")
        .unwrap();
    assert!(
        cluster["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["severity"] == "Error"),
        "{cluster}"
    );
    // … and, several controller passes later, is still waiting.
    assert!(env.controllers.wait_ticks(5, WAIT).await);
    assert!(!task.is_finished(), "{:?}", lines.lock().unwrap());
    task.abort();
}

/// `TopologyReconciled=False` with severity Error is transient in CAPI and never checked by TKG:
/// a wait through many of them succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_topology_errors_never_fail_the_wait() {
    let env = env_with(
        test_wait_options(),
        TopologyFaults {
            transient_every: 2,
            ..TopologyFaults::default()
        },
    )
    .await;
    let mut events = env.mgmt.subscribe();
    let (out, _) = provision(&env, "team-d").await;
    assert_eq!(out["controlPlane"], "3/3", "{out}");
    let mut topology_errors = 0;
    while let Ok(ev) = events.try_recv() {
        let errored = ev.object["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == "TopologyReconciled"
                    && c["status"] == "False"
                    && c["severity"] == "Error"
            });
        if ev.object["metadata"]["name"] == "team-d" && errored {
            topology_errors += 1;
        }
    }
    assert!(
        topology_errors > 0,
        "the emulator injected no topology error"
    );
}

/// One shared watch per resource type serves concurrent waits: no per-run polling of the
/// management cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waits_share_one_watch_per_resource_type() {
    let env = env().await;
    for name in ["team-e", "team-f"] {
        run(
            &env.provider,
            "kube.apply",
            json!({"managementCluster": MC, "manifests": cluster_manifest(name, None)}),
        )
        .await
        .0
        .expect("apply");
    }
    let before = env.mgmt.faults().log().all().len();
    let (a, b) = tokio::join!(
        run(&env.provider, "kube.wait-cluster", cluster_inputs("team-e")),
        run(&env.provider, "kube.wait-cluster", cluster_inputs("team-f")),
    );
    a.0.expect("team-e");
    b.0.expect("team-f");
    // Six management-cluster types, shared by both waits (kept for the provider's life); the
    // PackageInstall watch of each workload cluster ended with the last wait on it.
    assert_eq!(env.provider.shared_watches(), 6);
    let during: Vec<_> = env.mgmt.faults().log().all()[before..].to_vec();
    let cluster_reads: Vec<_> = during
        .iter()
        .filter(|r| {
            r.path.starts_with("/apis/cluster.x-k8s.io/v1beta1") && r.path.contains("/clusters")
        })
        .collect();
    // One list and one watch (a re-opened watch at most), whatever the number of changes.
    assert!((1..=3).contains(&cluster_reads.len()), "{cluster_reads:?}");
    assert!(
        cluster_reads
            .iter()
            .all(|r| r.path == "/apis/cluster.x-k8s.io/v1beta1/clusters"),
        "{cluster_reads:?}"
    );
    assert!(during.len() < 40, "{} requests: {during:?}", during.len());
}

/// The kapp-controller emulator's fault knob: `<namespace>.<name>: "<N>:<message>"`.
fn inject_kapp_failures(wl: &EmulatedCluster, key: &str, value: &str) {
    wl.create(
        &Gvr::new("", "v1", "configmaps"),
        json!({"metadata": {"name": "emulator-kapp-faults", "namespace": "kube-system"},
               "data": {key: value}}),
    )
    .expect("fault ConfigMap");
}

fn cert_manager() -> Value {
    json!([{"name": "cert-manager", "refName": "cert-manager.tanzu.vmware.com", "version": "1.7.2+vmware.1-tkg.1",
            "namespace": "cert-manager", "valuesYaml": ""}])
}

/// kapp-controller retries a failing PackageInstall and TKG tolerates it (§6 step 5): two
/// failed reconciles are reported as progress, then the package succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transiently_failing_package_is_retried_until_it_succeeds() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let wl = env.emu.cluster("team-a-prod").expect("workload");
    let msg = "kapp: Error: waiting on reconcile deployment/cert-manager: Finished unsuccessfully (emulated)";
    inject_kapp_failures(&wl, "cert-manager.cert-manager", &format!("2:{msg}"));
    let provider = env.provider_with(WaitOptions {
        package_timeout: Duration::from_secs(50),
        ..test_wait_options()
    });
    let (r, lines) = run(
        &provider,
        "packages.rollout",
        rollout_inputs("team-a-prod", cert_manager()),
    )
    .await;
    let out = r.expect("rollout tolerates the transient failures");
    assert_eq!(out["packages"][0]["status"], "Reconcile succeeded", "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("reconcile failed, kapp-controller retries") && l.contains(msg)),
        "{lines:?}"
    );
}

/// A PackageInstall that keeps failing fails the step at the package deadline, with its
/// `usefulErrorMessage`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_failing_package_surfaces_its_message_at_the_deadline() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let wl = env.emu.cluster("team-a-prod").expect("workload");
    let msg =
        "kapp: Error: Applying create deployment/cert-manager: admission webhook denied (emulated)";
    inject_kapp_failures(&wl, "cert-manager.cert-manager", &format!("*:{msg}"));
    let (r, lines) = run(
        &env.provider,
        "packages.rollout",
        rollout_inputs("team-a-prod", cert_manager()),
    )
    .await;
    let e = r.expect_err("keeps failing");
    assert!(!e.is_transient(), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("PackageInstall cert-manager/cert-manager: {msg}")
    );
    assert!(
        lines.iter().any(|l| l.contains("kapp-controller retries")),
        "{lines:?}"
    );
}

/// Core packages (§6 step 5): a failing `<cluster>-antrea` in the workload's `tkg-system` is
/// tolerated while kapp-controller retries (its message is shown), succeeds once the failure
/// clears, and fails the wait with its `usefulErrorMessage` when it outlasts the package
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_core_packages_are_tolerated_then_reported() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let wl = env.emu.cluster("team-a-prod").expect("workload");
    let msg = "kapp: Error: waiting on reconcile daemonset/antrea-agent: Finished unsuccessfully (emulated)";
    inject_kapp_failures(&wl, "tkg-system.team-a-prod-antrea", &format!("*:{msg}"));
    let pkgi = Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls");
    // A new generation makes kapp-controller reconcile it again, now failing.
    wl.patch_merge(
        &pkgi,
        Some("tkg-system"),
        "team-a-prod-antrea",
        json!({"spec": {"syncPeriod": "5m"}}),
    )
    .expect("patch");
    let failing = env
        .controllers
        .wait_until(WAIT, || {
            wl.get(&pkgi, Some("tkg-system"), "team-a-prod-antrea")
                .filter(|p| p["status"]["usefulErrorMessage"] == msg)
        })
        .await;
    assert!(failing.is_some());

    // Still failing at the package timeout: the message is the error. (A provider of its own:
    // its watches list the current state.)
    let fresh = env.provider_with(test_wait_options());
    let (r, lines) = run(&fresh, "kube.wait-cluster", cluster_inputs("team-a-prod")).await;
    let e = r.expect_err("antrea keeps failing");
    assert!(!e.is_transient(), "{e:?}");
    assert!(
        e.to_string().contains(&format!(
            "PackageInstall tkg-system/team-a-prod-antrea: {msg}"
        )),
        "{e}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("retrying: PackageInstall tkg-system/team-a-prod-antrea")),
        "{lines:?}"
    );

    // With time left, the wait rides out the failure until kapp-controller succeeds.
    let patient = env.provider_with(WaitOptions {
        package_timeout: Duration::from_secs(50),
        ..test_wait_options()
    });
    let (c, lines) = ctx("kube.wait-cluster", cluster_inputs("team-a-prod"));
    let task = tokio::spawn(async move { patient.execute(&c).await });
    let seen = env
        .controllers
        .wait_until(WAIT, || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(msg))
                .then_some(())
        })
        .await;
    assert!(seen.is_some(), "{:?}", lines.lock().unwrap());
    wl.patch_merge(
        &Gvr::new("", "v1", "configmaps"),
        Some("kube-system"),
        "emulator-kapp-faults",
        json!({"data": {"tkg-system.team-a-prod-antrea": null}}),
    )
    .expect("clear the fault");
    let out = tokio::time::timeout(WAIT, task)
        .await
        .expect("wait finishes")
        .expect("task")
        .expect("the wait succeeds once antrea reconciles");
    assert_eq!(
        out["packages"]["team-a-prod-antrea"], "Reconcile succeeded",
        "{out}"
    );
}

// ---- packages.update and packages.verify ----------------------------------------------------

fn pkgi_gvr() -> Gvr {
    Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls")
}

fn secret_gvr() -> Gvr {
    Gvr::new("", "v1", "secrets")
}

/// One package of a `packages.*` step.
fn package(name: &str, version: &str, namespace: &str, values: &str) -> Value {
    json!({"name": name, "refName": format!("{name}.tanzu.vmware.com"), "version": version,
           "namespace": namespace, "valuesYaml": values})
}

const CERT_MANAGER: &str = "1.7.2+vmware.1-tkg.1";
const CONTOUR: &str = "1.20.2+vmware.1-tkg.1";
const CONTOUR_NEXT: &str = "1.21.0+vmware.1-tkg.1";
const HARBOR: &str = "2.5.3+vmware.1-tkg.1";
const INGRESS: &str = "tanzu-system-ingress";

fn update_inputs(name: &str, packages: Value, remove: Value) -> Value {
    json!({
        "managementCluster": MC, "namespace": "default", "clusterName": name,
        "repository": {"name": "tanzu-standard", "namespace": "tanzu-package-repo-global"},
        "packages": packages,
        "remove": remove,
    })
}

/// A newer Contour in the standard repository, as a new repository release would bring.
fn publish_contour_next(wl: &EmulatedCluster) {
    wl.create(
        &Gvr::new("data.packaging.carvel.dev", "v1alpha1", "packages"),
        json!({"apiVersion": "data.packaging.carvel.dev/v1alpha1", "kind": "Package",
               "metadata": {"name": format!("contour.tanzu.vmware.com.{CONTOUR_NEXT}"),
                            "namespace": "tanzu-package-repo-global"},
               "spec": {"refName": "contour.tanzu.vmware.com", "version": CONTOUR_NEXT}}),
    )
    .expect("Package");
}

/// The text of a values Secret's `values.yaml`.
fn values_of(wl: &EmulatedCluster, ns: &str, secret: &str) -> Option<String> {
    use base64::Engine as _;
    let s = wl.get(&secret_gvr(), Some(ns), secret)?;
    let b64 = s["data"]["values.yaml"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    Some(String::from_utf8(bytes).expect("utf-8"))
}

/// Every change event received so far on `rx`, as (kind, resource plural, namespace/name,
/// single condition type, whether deletionTimestamp is set).
fn drain(
    rx: &mut tokio::sync::broadcast::Receiver<tkgops_emulators::kube::ChangeEvent>,
) -> Vec<(String, String, String, String, bool)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        let o = &e.object;
        out.push((
            e.kind.clone(),
            e.gvr.plural.clone(),
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            ),
            o["status"]["conditions"][0]["type"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            o["metadata"]["deletionTimestamp"].is_string(),
        ));
    }
    out
}

/// Writes by tkgops that changed something since write number `since`.
fn tkgops_changes(wl: &EmulatedCluster, since: usize) -> Vec<String> {
    wl.writes()[since..]
        .iter()
        .filter(|w| w.field_manager.as_deref() == Some("tkgops") && w.changed)
        .map(|w| format!("{:?}", w))
        .collect()
}

/// Adds a package, moves one to a new version, leaves one alone; then changes only the values
/// of one (its Secret changes and kapp-controller reconciles it again); a second run changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_update_installs_updates_and_changes_values() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let wl = env.emu.cluster("team-a-prod").expect("workload");
    let values_a = "infrastructure_provider: aws\n";
    let values_b = "infrastructure_provider: aws\nenvoy:\n  service:\n    type: LoadBalancer\n";
    let (r, _) = run(
        &env.provider,
        "packages.rollout",
        rollout_inputs(
            "team-a-prod",
            json!([
                package("cert-manager", CERT_MANAGER, "cert-manager", ""),
                package("contour", CONTOUR, INGRESS, values_a)
            ]),
        ),
    )
    .await;
    r.expect("rollout");
    publish_contour_next(&wl);

    // A new version of contour, a new package, an unchanged one.
    let inputs = update_inputs(
        "team-a-prod",
        json!([
            package("cert-manager", CERT_MANAGER, "cert-manager", ""),
            package("contour", CONTOUR_NEXT, INGRESS, values_a),
            package(
                "fluent-bit",
                "1.8.15+vmware.1-tkg.1",
                "tanzu-system-logging",
                ""
            )
        ]),
        json!([]),
    );
    let (r, lines) = run(&env.provider, "packages.update", inputs).await;
    let out = r.expect("update");
    assert_eq!(
        out,
        json!({
            "installed": [{"name": "fluent-bit", "namespace": "tanzu-system-logging", "version": "1.8.15+vmware.1-tkg.1"}],
            "updated": [{"name": "contour", "namespace": INGRESS, "from": CONTOUR, "to": CONTOUR_NEXT, "valuesChanged": false}],
            "unchanged": [{"name": "cert-manager", "namespace": "cert-manager", "version": CERT_MANAGER}],
            "removed": [],
        })
    );
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("contour {CONTOUR} → {CONTOUR_NEXT} reconciled")),
        "{lines:?}"
    );
    let contour = wl
        .get(&pkgi_gvr(), Some(INGRESS), "contour")
        .expect("contour");
    assert_eq!(contour["status"]["version"], CONTOUR_NEXT, "{contour}");
    assert_eq!(
        contour["status"]["conditions"][0]["type"],
        "ReconcileSucceeded"
    );
    assert_eq!(
        contour["status"]["observedGeneration"],
        contour["metadata"]["generation"]
    );
    let fluent = wl
        .get(&pkgi_gvr(), Some("tanzu-system-logging"), "fluent-bit")
        .expect("fluent-bit");
    assert_eq!(
        fluent["status"]["conditions"][0]["type"],
        "ReconcileSucceeded"
    );

    // Only the values change: the Secret's content changes and kapp-controller reconciles the
    // PackageInstall again (same generation).
    let generation = contour["metadata"]["generation"].clone();
    let mut events = wl.subscribe();
    let inputs = update_inputs(
        "team-a-prod",
        json!([
            package("cert-manager", CERT_MANAGER, "cert-manager", ""),
            package("contour", CONTOUR_NEXT, INGRESS, values_b),
            package(
                "fluent-bit",
                "1.8.15+vmware.1-tkg.1",
                "tanzu-system-logging",
                ""
            )
        ]),
        json!([]),
    );
    let (r, lines) = run(&env.provider, "packages.update", inputs.clone()).await;
    let out = r.expect("values update");
    assert_eq!(
        out["updated"],
        json!([{"name": "contour", "namespace": INGRESS, "from": CONTOUR_NEXT, "to": CONTOUR_NEXT, "valuesChanged": true}]),
        "{out}"
    );
    assert_eq!(out["unchanged"].as_array().map(Vec::len), Some(2), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("contour {CONTOUR_NEXT} values updated, reconciled")),
        "{lines:?}"
    );
    assert_eq!(
        values_of(&wl, INGRESS, "contour-tanzu-system-ingress-values").as_deref(),
        Some(values_b)
    );
    let seen = drain(&mut events);
    let secret_at = seen
        .iter()
        .position(|e| {
            e.1 == "secrets" && e.2 == "tanzu-system-ingress/contour-tanzu-system-ingress-values"
        })
        .expect("the values Secret changed");
    let contour_events: Vec<&str> = seen[secret_at..]
        .iter()
        .filter(|e| e.1 == "packageinstalls" && e.2 == "tanzu-system-ingress/contour")
        .map(|e| e.3.as_str())
        .collect();
    assert_eq!(
        contour_events,
        ["Reconciling", "ReconcileSucceeded"],
        "{seen:?}"
    );
    let contour = wl
        .get(&pkgi_gvr(), Some(INGRESS), "contour")
        .expect("contour");
    assert_eq!(contour["metadata"]["generation"], generation);
    // Secret values never reach the progress lines or the output.
    assert!(!format!("{out} {lines:?}").contains("LoadBalancer"));

    // Idempotent: the same inputs again change nothing.
    let before = wl.writes().len();
    let (r, lines) = run(&env.provider, "packages.update", inputs).await;
    let out = r.expect("second run");
    assert_eq!(out["unchanged"].as_array().map(Vec::len), Some(3), "{out}");
    assert_eq!(out["updated"], json!([]));
    assert_eq!(out["installed"], json!([]));
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("contour {CONTOUR_NEXT} unchanged, reconcile succeeded")),
        "{lines:?}"
    );
    assert_eq!(tkgops_changes(&wl, before), Vec::<String>::new());
}

/// Removal goes dependents first (harbor before contour), each PackageInstall is deleted and
/// waited for while kapp-controller holds its finalizer (`Deleting`), and only then its values
/// Secret, ServiceAccount and RBAC are deleted. A second run finds them gone and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_update_removes_dependents_first_after_the_finalizer() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let wl = env.emu.cluster("team-a-prod").expect("workload");
    let registry = "tanzu-system-registry";
    let (r, _) = run(
        &env.provider,
        "packages.rollout",
        rollout_inputs(
            "team-a-prod",
            json!([
                package("cert-manager", CERT_MANAGER, "cert-manager", ""),
                package(
                    "contour",
                    CONTOUR,
                    INGRESS,
                    "infrastructure_provider: aws\n"
                ),
                package("harbor", HARBOR, registry, "hostname: harbor.example.com\n")
            ]),
        ),
    )
    .await;
    r.expect("rollout");
    let harbor = wl
        .get(&pkgi_gvr(), Some(registry), "harbor")
        .expect("harbor");
    assert_eq!(
        harbor["metadata"]["finalizers"],
        json!(["finalizers.packageinstall.packaging.carvel.dev/delete"]),
        "kapp-controller holds every PackageInstall with its delete finalizer: {harbor}"
    );

    let mut events = wl.subscribe();
    let inputs = update_inputs(
        "team-a-prod",
        json!([package("cert-manager", CERT_MANAGER, "cert-manager", "")]),
        json!([
            package("harbor", HARBOR, registry, "hostname: harbor.example.com\n"),
            package(
                "contour",
                CONTOUR,
                INGRESS,
                "infrastructure_provider: aws\n"
            )
        ]),
    );
    let (r, lines) = run(&env.provider, "packages.update", inputs.clone()).await;
    let out = r.expect("removal");
    assert_eq!(
        out["removed"],
        json!([{"name": "harbor", "namespace": registry, "status": "removed"},
               {"name": "contour", "namespace": INGRESS, "status": "removed"}])
    );
    assert!(lines.iter().any(|l| l == "removed harbor"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "removed contour"), "{lines:?}");
    let h = lines.iter().position(|l| l == "removed harbor").unwrap();
    let c = lines.iter().position(|l| l == "removed contour").unwrap();
    assert!(h < c, "{lines:?}");

    for (name, ns) in [("harbor", registry), ("contour", INGRESS)] {
        assert!(wl.get(&pkgi_gvr(), Some(ns), name).is_none(), "{name}");
        let owner = format!("{name}-{ns}");
        assert!(wl
            .get(&secret_gvr(), Some(ns), &format!("{owner}-values"))
            .is_none());
        assert!(wl
            .get(
                &Gvr::new("", "v1", "serviceaccounts"),
                Some(ns),
                &format!("{owner}-sa")
            )
            .is_none());
        assert!(wl
            .get(
                &Gvr::new("rbac.authorization.k8s.io", "v1", "clusterroles"),
                None,
                &format!("{owner}-cluster-role")
            )
            .is_none());
    }
    assert!(wl
        .get(&pkgi_gvr(), Some("cert-manager"), "cert-manager")
        .is_some());

    // The event order on the cluster: harbor marked, Deleting, gone, then its Secret; only then
    // contour.
    let seen = drain(&mut events);
    let at = |pred: &dyn Fn(&SeenEvent) -> bool| {
        seen.iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{seen:?}"))
    };
    let harbor_key = format!("{registry}/harbor");
    let harbor_deleting =
        at(&|e| e.1 == "packageinstalls" && e.2 == harbor_key && e.3 == "Deleting");
    let harbor_gone = at(&|e| e.0 == "DELETED" && e.1 == "packageinstalls" && e.2 == harbor_key);
    let harbor_secret_gone = at(&|e| {
        e.0 == "DELETED"
            && e.1 == "secrets"
            && e.2 == format!("{registry}/harbor-{registry}-values")
    });
    let contour_marked =
        at(&|e| e.1 == "packageinstalls" && e.2 == "tanzu-system-ingress/contour" && e.4);
    assert!(harbor_deleting < harbor_gone, "{seen:?}");
    assert!(harbor_gone < harbor_secret_gone, "{seen:?}");
    assert!(harbor_secret_gone < contour_marked, "{seen:?}");

    // Idempotent: already gone is success, and nothing changes.
    let before = wl.writes().len();
    let (r, lines) = run(&env.provider, "packages.update", inputs).await;
    let out = r.expect("second removal");
    assert_eq!(
        out["removed"],
        json!([{"name": "harbor", "namespace": registry, "status": "already absent"},
               {"name": "contour", "namespace": INGRESS, "status": "already absent"}])
    );
    assert!(
        lines.iter().any(|l| l == "harbor already absent"),
        "{lines:?}"
    );
    assert!(wl.writes()[before..]
        .iter()
        .all(|w| w.verb != "delete" || !w.changed));
    assert_eq!(tkgops_changes(&wl, before), Vec::<String>::new());
}

/// kapp-controller failing to uninstall (`DeleteFailed`, retried) fails the step at the package
/// deadline with its message; once the failure clears, a retry removes the package.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_delete_failure_is_a_clear_error() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let wl = env.emu.cluster("team-a-prod").expect("workload");
    let (r, _) = run(
        &env.provider,
        "packages.rollout",
        rollout_inputs("team-a-prod", cert_manager()),
    )
    .await;
    r.expect("rollout");
    let msg = "kapp: Error: deleting deployment/cert-manager-webhook: timed out (emulated)";
    inject_kapp_failures(&wl, "delete.cert-manager.cert-manager", &format!("*:{msg}"));
    let inputs = update_inputs("team-a-prod", json!([]), cert_manager());
    let (r, lines) = run(&env.provider, "packages.update", inputs.clone()).await;
    let e = r.expect_err("delete keeps failing");
    assert!(!e.is_transient(), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("PackageInstall cert-manager/cert-manager: delete failed: {msg}")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("delete failed, kapp-controller retries") && l.contains(msg)),
        "{lines:?}"
    );
    let pkgi = wl
        .get(&pkgi_gvr(), Some("cert-manager"), "cert-manager")
        .expect("still held by its finalizer");
    assert!(pkgi["metadata"]["deletionTimestamp"].is_string());

    wl.patch_merge(
        &Gvr::new("", "v1", "configmaps"),
        Some("kube-system"),
        "emulator-kapp-faults",
        json!({"data": {"delete.cert-manager.cert-manager": null}}),
    )
    .expect("clear the fault");
    let (r, _) = run(&env.provider, "packages.update", inputs).await;
    let out = r.expect("removed after the failure cleared");
    // kapp-controller retries the uninstall by itself once the fault is gone, so the package
    // is either removed by this run or already gone when it looks.
    let status = out["removed"][0]["status"].as_str().unwrap_or_default();
    assert!(status == "removed" || status == "already absent", "{out}");
    assert!(wl
        .get(&pkgi_gvr(), Some("cert-manager"), "cert-manager")
        .is_none());
}

/// One observed change: (kind, namespace, name, event type, deleting).
type SeenEvent = (String, String, String, String, bool);

fn verify_inputs(name: &str) -> Value {
    json!({"managementCluster": MC, "namespace": "default", "clusterName": name})
}

/// `packages.verify` lists every PackageInstall (core packages in `tkg-system` and user
/// packages) with its version; a package failing for its current generation fails it with the
/// package's name and message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_verify_checks_every_package_install() {
    let env = env().await;
    provision(&env, "team-a-prod").await;
    let wl = env.emu.cluster("team-a-prod").expect("workload");
    let (r, _) = run(
        &env.provider,
        "packages.rollout",
        rollout_inputs("team-a-prod", cert_manager()),
    )
    .await;
    r.expect("rollout");

    let (r, lines) = run(
        &env.provider,
        "packages.verify",
        verify_inputs("team-a-prod"),
    )
    .await;
    let out = r.expect("verify");
    let listed = out["packageInstalls"]
        .as_object()
        .expect("packageInstalls")
        .clone();
    let all = wl.list(&pkgi_gvr(), None);
    assert_eq!(listed.len(), all.len(), "{out}");
    assert!(listed.keys().any(|k| k.starts_with("tkg-system/")), "{out}");
    assert_eq!(listed["cert-manager/cert-manager"], CERT_MANAGER, "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("{} PackageInstalls reconciled", all.len())),
        "{lines:?}"
    );

    // cert-manager's next generation keeps failing: verify names it with kapp's message.
    let msg = "kapp: Error: waiting on reconcile deployment/cert-manager: Finished unsuccessfully (emulated)";
    inject_kapp_failures(&wl, "cert-manager.cert-manager", &format!("*:{msg}"));
    wl.patch_merge(
        &pkgi_gvr(),
        Some("cert-manager"),
        "cert-manager",
        json!({"spec": {"syncPeriod": "5m"}}),
    )
    .expect("patch");
    let (r, lines) = run(
        &env.provider,
        "packages.verify",
        verify_inputs("team-a-prod"),
    )
    .await;
    let e = r.expect_err("cert-manager fails");
    assert!(!e.is_transient(), "{e:?}");
    assert!(
        e.to_string()
            .contains(&format!("PackageInstall cert-manager/cert-manager: {msg}")),
        "{e}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failing") && l.contains(msg)),
        "{lines:?}"
    );
}

/// A management cluster without controllers (no finalizers, nothing reconciles) and a provider
/// for it: objects deleted directly are gone at once.
async fn bare_env() -> (
    KubeEmulator,
    EmulatedCluster,
    KubeProvider,
    tempfile::TempDir,
) {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster(MC).await.expect("management cluster");
    seed_management_cluster(&mgmt).expect("seed");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mc.kubeconfig");
    std::fs::write(&path, mgmt.kubeconfig_yaml()).expect("write kubeconfig");
    let provider = KubeProvider::with_wait_options(
        BTreeMap::from([(
            MC.to_string(),
            KubeconfigSource::File(path.to_string_lossy().into_owned()),
        )]),
        POLL,
        test_wait_options(),
    );
    (emu, mgmt, provider, dir)
}

/// The Cluster of [`cluster_manifest`] with the ownership label `owner`.
fn cluster_object(name: &str, owner: &str) -> Value {
    let manifest = cluster_manifest(name, None);
    let mut v: Value = serde_yaml::from_str(manifest.split("\n---\n").next().unwrap()).unwrap();
    v["metadata"]["labels"]["tkgops.dev/owner"] = json!(owner);
    v
}

/// `kube.delete-cluster` sends a `uid` precondition with the uid it read: a same-named Cluster
/// recreated between its read and its DELETE is not deleted (the API server answers 409), the
/// attempt fails transiently, and the retry reads the new Cluster, checks its owner and
/// deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_recreated_between_read_and_delete_is_not_deleted() {
    let (_emu, mgmt, provider, _dir) = bare_env().await;
    let gvr = cluster_gvr();
    let first = mgmt
        .apply(&gvr, cluster_object("team-a-prod", OWNER), "earlier", false)
        .unwrap();
    let path = "/apis/cluster.x-k8s.io/v1beta1/namespaces/default/clusters/team-a-prod";
    // Hold tkgops's DELETE long enough for the Cluster to be replaced meanwhile.
    mgmt.faults().inject(Fault::new(
        Some(axum::http::Method::DELETE),
        path,
        FaultAction::Delay(Duration::from_secs(5)),
        Some(1),
    ));
    let inputs = json!({"managementCluster": MC, "namespace": "default",
                        "clusterName": "team-a-prod", "ownerLabel": OWNER});
    let (c, _) = ctx("kube.delete-cluster", inputs.clone());
    let p = provider.clone();
    let step = tokio::spawn(async move { p.execute(&c).await });
    mgmt.faults()
        .log()
        .wait_for(WAIT, |r| {
            r.method == axum::http::Method::DELETE && r.path == path
        })
        .await
        .expect("tkgops sent its DELETE");
    mgmt.delete(&gvr, Some("default"), "team-a-prod")
        .expect("gone at once");
    let second = mgmt
        .apply(&gvr, cluster_object("team-a-prod", OWNER), "earlier", false)
        .unwrap();
    assert_ne!(first["metadata"]["uid"], second["metadata"]["uid"]);

    let e = tokio::time::timeout(WAIT, step)
        .await
        .expect("step ends")
        .unwrap()
        .expect_err("the recreated Cluster must not be deleted");
    assert!(e.is_transient(), "{e:?}");
    assert!(
        e.to_string().contains("was replaced after tkgops read it"),
        "{e}"
    );
    let stored = mgmt
        .get(&gvr, Some("default"), "team-a-prod")
        .expect("still there");
    assert_eq!(stored["metadata"]["uid"], second["metadata"]["uid"]);
    assert!(
        stored["metadata"]["deletionTimestamp"].is_null(),
        "{stored}"
    );

    // The retry reads the new Cluster (owned) and deletes it with its own uid.
    let (r, _) = run(&provider, "kube.delete-cluster", inputs).await;
    assert_eq!(r.expect("retry deletes"), json!({"deleted": true}));
    assert!(mgmt.get(&gvr, Some("default"), "team-a-prod").is_none());
}

/// `kube.check-owner` passes for this request's Cluster and for a missing one, and fails
/// permanently, naming both labels, for a Cluster of another repository or path; it writes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_owner_passes_ours_and_missing_and_refuses_others() {
    let (_emu, mgmt, provider, _dir) = bare_env().await;
    let gvr = cluster_gvr();
    let inputs = |name: &str| {
        json!({"managementCluster": MC, "namespace": "default", "clusterName": name,
               "ownerLabel": OWNER})
    };
    let ours = mgmt
        .apply(&gvr, cluster_object("ours", OWNER), "earlier", false)
        .unwrap();
    let theirs = "ffffffffffffffffffffffffffffffff";
    mgmt.apply(
        &gvr,
        cluster_object("theirs", theirs),
        "someone-else",
        false,
    )
    .unwrap();
    let writes = mgmt.writes().len();

    let (r, _) = run(&provider, "kube.check-owner", inputs("ours")).await;
    assert_eq!(
        r.expect("ours"),
        json!({"exists": true, "uid": ours["metadata"]["uid"], "deleting": false})
    );
    let (r, lines) = run(&provider, "kube.check-owner", inputs("gone")).await;
    assert_eq!(r.expect("missing passes"), json!({"exists": false}));
    assert!(
        lines.iter().any(|l| l.contains("does not exist")),
        "{lines:?}"
    );
    let (r, _) = run(&provider, "kube.check-owner", inputs("theirs")).await;
    let e = r.expect_err("another request's Cluster");
    assert!(!e.is_transient(), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("Cluster/default/theirs on management cluster 'mc-aws-1' is not owned by this cluster request")
            && msg.contains(theirs)
            && msg.contains(OWNER),
        "{msg}"
    );
    // An empty owner label proves nothing, even against a Cluster labelled "".
    mgmt.apply(&gvr, cluster_object("blank", ""), "someone-else", false)
        .unwrap();
    let mut blank = inputs("blank");
    blank["ownerLabel"] = json!("");
    let (r, _) = run(&provider, "kube.check-owner", blank).await;
    assert!(!r.expect_err("no owner label").is_transient());
    assert_eq!(mgmt.writes().len(), writes, "check-owner writes nothing");
}

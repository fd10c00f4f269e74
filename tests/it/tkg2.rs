//! Integration tests: tkg2. What tkgops renders for the example request, judged by the emulated
//! TKG 2.2 management cluster's admission (CAPI defaulting and validation, the TKR resolver,
//! docs/tkg2-class-based.md §4) through the real provider: the server-side dry run refuses a
//! request with the webhook's own message before anything is written, and `kube.preflight`
//! checks the `tkgops.yaml` declaration against the management cluster (§1, §7, §8).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tkgops_domain::files::MemoryTree;
use tkgops_domain::workflow::{plan, Catalog, PlanInput};
use tkgops_emulators::kube::controllers::{
    seed_management_cluster_with, start_controllers, ControllerOptions, Controllers,
    ManagementSeed, TkgVersion,
};
use tkgops_emulators::kube::{EmulatedCluster, Gvr, KubeEmulator};
use tkgops_engine::{ProgressSink, RetryPolicy, StepContext, StepError, StepSpec};

use crate::support::ExecuteStep;
use tkgops_providers::kube::KubeProvider;
use tkgops_providers::KubeconfigSource;

use crate::support::{example_repo_config, example_request, step_inputs};

const MC: &str = "mc-aws-1";
const WAIT: Duration = Duration::from_secs(60);

struct Env {
    mgmt: EmulatedCluster,
    provider: KubeProvider,
    _controllers: Controllers,
    _dir: tempfile::TempDir,
}

async fn env(seed: ManagementSeed) -> Env {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster(MC).await.expect("management cluster");
    seed_management_cluster_with(&mgmt, &seed).expect("seed");
    let controllers = start_controllers(
        &emu,
        MC,
        ControllerOptions {
            tick: Duration::from_millis(20),
            standard_packages: false,
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mc.kubeconfig");
    std::fs::write(&path, mgmt.kubeconfig_yaml()).expect("write kubeconfig");
    let mut mcs = BTreeMap::new();
    mcs.insert(
        MC.to_string(),
        KubeconfigSource::File(path.to_string_lossy().into_owned()),
    );
    Env {
        mgmt,
        provider: KubeProvider::new(mcs, Duration::from_millis(20)),
        _controllers: controllers,
        _dir: dir,
    }
}

fn pinniped() -> ManagementSeed {
    ManagementSeed {
        pinniped_issuer: Some("https://pinniped.example:31234".into()),
        ..ManagementSeed::default()
    }
}

/// The example request's plan: (the `kube.preflight` inputs, the `kube.apply` inputs).
fn example_steps() -> (Value, Value) {
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let tree = |files: &[(&str, &str)]| {
        MemoryTree(
            files
                .iter()
                .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    let base = tree(&[("tkgops.yaml", &repo)]);
    let head = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-a-prod/cluster-config.yaml", &cfg),
        ("clusters/team-a-prod/tkgops.yaml", &settings),
    ]);
    let catalog = Catalog::builtin().expect("catalog");
    let changed = vec!["clusters/team-a-prod/cluster-config.yaml".to_string()];
    let p = plan(&PlanInput {
        base: &base,
        head: &head,
        settings: &base,
        base_sha: "1111111111111111111111111111111111111111",
        head_sha: "2222222222222222222222222222222222222222",
        changed_paths: &changed,
        catalog: &catalog,
        executable: &tkgops::executors::executable_kinds(),
        repository: "acme/tkg-clusters",
        history: Default::default(),
    });
    let steps = &p.clusters[0].steps;
    let find = |kind: &str| {
        let mut v = steps
            .iter()
            .find(|s| s.inputs.kind().as_str() == kind)
            .unwrap_or_else(|| panic!("no {kind} step"))
            .inputs
            .inputs_json();
        // The provider reaches the emulated management cluster through its own kubeconfig.
        v.as_object_mut().unwrap().remove("kubeconfig");
        v
    };
    (find("kube.preflight"), find("kube.apply"))
}

async fn run(p: &KubeProvider, kind: &str, inputs: Value) -> Result<Value, StepError> {
    let ctx = StepContext {
        run_id: "run-1".into(),
        cluster: "team-a-prod".into(),
        commit_sha: "0".repeat(40),
        step: StepSpec {
            id: kind.replace('.', "-"),
            title: kind.into(),
            timeout_secs: 60,
            retry: RetryPolicy::default(),
            inputs: step_inputs(kind, inputs),
        },
        attempt: 1,
        outputs: BTreeMap::new(),
        progress: ProgressSink::new(|_| {}),
    };
    tokio::time::timeout(WAIT, p.execute(&ctx))
        .await
        .expect("step did not finish in time")
}

fn clusters() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters")
}

/// Edits the rendered Cluster manifest of `apply` with `f`.
fn edit_cluster(mut apply: Value, f: impl FnOnce(&mut Value)) -> Value {
    let mut cluster: Value = serde_yaml::from_str(apply["manifests"].as_str().unwrap()).unwrap();
    f(&mut cluster);
    apply["manifests"] = json!(serde_yaml::to_string(&cluster).unwrap());
    apply
}

fn permanent(r: Result<Value, StepError>) -> String {
    match r {
        Err(StepError::Permanent(m)) => m,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_cluster_passes_preflight_and_is_admitted_resolved_and_defaulted() {
    let env = env(pinniped()).await;
    let (pre, apply) = example_steps();
    let out = run(&env.provider, "kube.preflight", pre)
        .await
        .expect("preflight");
    assert_eq!(out["tkgVersion"], "v2.2.0");
    assert_eq!(out["identity"], "pinniped-info");
    run(&env.provider, "kube.apply", apply)
        .await
        .expect("apply");
    let c = env
        .mgmt
        .get(&clusters(), Some("default"), "team-a-prod")
        .expect("stored");
    // The TKR resolver rewrote the version and labelled the Cluster (§4).
    assert_eq!(c["spec"]["topology"]["version"], "v1.25.7+vmware.2");
    assert_eq!(
        c["metadata"]["labels"]["run.tanzu.vmware.com/tkr"],
        "v1.25.7---vmware.2-tkg.1"
    );
    let vars = c["spec"]["topology"]["variables"].as_array().unwrap();
    let var = |n: &str| {
        vars.iter()
            .find(|v| v["name"] == n)
            .map(|v| v["value"].clone())
    };
    assert!(var("TKR_DATA").unwrap()["v1.25.7+vmware.2"]["osImageRef"]["id"].is_string());
    // CAPI's defaulting filled the class defaults the CLI does not send (§4 "Defaulting").
    assert_eq!(
        var("identityRef").unwrap()["kind"],
        "AWSClusterRoleIdentity"
    );
    assert!(var("tlsCipherSuites").is_some(), "{vars:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_required_variable_is_refused_by_the_dry_run_with_capis_message() {
    let env = env(pinniped()).await;
    let (_, apply) = example_steps();
    let apply = edit_cluster(apply, |c| {
        let vars = c["spec"]["topology"]["variables"].as_array_mut().unwrap();
        vars.retain(|v| v["name"] != "network");
    });
    let m = permanent(run(&env.provider, "kube.apply", apply).await);
    assert!(m.contains("refused the server-side dry run"), "{m}");
    assert!(
        m.contains("admission webhook \"")
            && m.contains("required variable with name \"network\" must be defined"),
        "{m}"
    );
    assert!(m.contains("(422)"), "{m}");
    // Nothing was written.
    assert!(env
        .mgmt
        .get(&clusters(), Some("default"), "team-a-prod")
        .is_none());
    assert!(env
        .mgmt
        .writes()
        .iter()
        .all(|w| w.dry_run || w.gvr.plural != "clusters"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tkr_the_management_cluster_does_not_offer_is_refused_by_the_tkr_resolver_and_preflight()
{
    let env = env(pinniped()).await;
    let (pre, apply) = example_steps();
    let tkr = "v1.26.5+vmware.2-tkg.1"; // TKG 2.3's, not on this TKG 2.2 management cluster
    let apply = edit_cluster(apply, |c| c["spec"]["topology"]["version"] = json!(tkr));
    let m = permanent(run(&env.provider, "kube.apply", apply).await);
    assert!(m.contains("could not resolve TKR/OSImage"), "{m}");
    assert!(m.contains("(403)"), "{m}");
    assert!(
        !m.contains("not allowed to do this"),
        "not an RBAC denial: {m}"
    );
    let mut pre = pre;
    pre["tkr"] = json!(tkr);
    let m = permanent(run(&env.provider, "kube.preflight", pre.clone()).await);
    assert!(
        m.contains("TKR v1.26.5+vmware.2-tkg.1") && m.contains("does not exist"),
        "{m}"
    );
    // Present but incompatible (TKG 1.6's TKR on a 2.2 management cluster, §8).
    pre["tkr"] = json!("v1.23.8+vmware.2-tkg.1");
    let m = permanent(run(&env.provider, "kube.preflight", pre).await);
    assert!(m.contains("is not Compatible"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_class_is_refused_with_the_defaulting_webhooks_message() {
    let env = env(pinniped()).await;
    let (mut pre, apply) = example_steps();
    let class = "tkg-aws-default-v1.1.0";
    let apply = edit_cluster(apply, |c| c["spec"]["topology"]["class"] = json!(class));
    let m = permanent(run(&env.provider, "kube.apply", apply).await);
    assert!(
        m.contains("ClusterClass tkg-aws-default-v1.1.0 can not be retrieved")
            && m.contains("(500)"),
        "{m}"
    );
    pre["clusterClass"] = json!(class);
    let m = permanent(run(&env.provider, "kube.preflight", pre).await);
    assert!(
        m.contains("ClusterClass tkg-aws-default-v1.1.0 does not exist in namespace default"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_a_wrong_tkg_version_and_missing_pinniped_info() {
    let env = env(ManagementSeed {
        tkg_version: TkgVersion::V2_1,
        ..ManagementSeed::default()
    })
    .await;
    let (pre, _) = example_steps();
    let m = permanent(run(&env.provider, "kube.preflight", pre.clone()).await);
    assert!(
        m.contains("version mismatch")
            && m.contains("runs TKG v2.1")
            && m.contains("declares tkgVersion 2.2"),
        "{m}"
    );
    let env = env_22_without_pinniped().await;
    let m = permanent(run(&env.provider, "kube.preflight", pre).await);
    assert!(m.contains("kube-public/pinniped-info"), "{m}");
}

async fn env_22_without_pinniped() -> Env {
    env(ManagementSeed::default()).await
}

/// The real `kubectl` reads, dry-runs, applies and waits on the Cluster tkgops renders and
/// creates (issue "Done when"): a server-side dry run of the rendered manifest stores nothing,
/// tkgops's `kube.apply` creates it, `kubectl get -l` finds it by the ownership label with the
/// TKR the resolver chose, `kubectl wait --for=condition=Ready` returns once the simulated
/// controllers make it Ready, and another field manager's apply of a tkgops-owned field is a
/// conflict naming `tkgops`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_dry_runs_applies_and_waits_on_the_tkgops_cluster() {
    let Some(bin) = crate::kubectl::kubectl() else {
        return;
    };
    let env = env(pinniped()).await;
    let k = crate::kubectl::Kubectl::new(bin, &env.mgmt.kubeconfig_yaml());
    let (_, apply) = example_steps();
    let manifest = apply["manifests"].as_str().unwrap().to_string();
    let file = k.write("cluster.yaml", &manifest);
    let file = file.to_str().unwrap();
    let out = k
        .ok(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=tkgops",
            "-f",
            file,
        ])
        .await;
    assert!(
        out.contains("cluster.cluster.x-k8s.io/team-a-prod serverside-applied (server dry run)"),
        "{out}"
    );
    assert!(env
        .mgmt
        .get(&clusters(), Some("default"), "team-a-prod")
        .is_none());

    run(&env.provider, "kube.apply", apply)
        .await
        .expect("apply");
    let cluster: Value = serde_yaml::from_str(&manifest).unwrap();
    let owner = cluster["metadata"]["labels"]["tkgops.dev/owner"]
        .as_str()
        .unwrap();
    let list = k
        .json(&[
            "get",
            "clusters",
            "-n",
            "default",
            "-l",
            &format!("tkgops.dev/owner={owner}"),
            "-o",
            "json",
        ])
        .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list:#}");
    assert_eq!(
        items[0]["metadata"]["labels"]["run.tanzu.vmware.com/tkr"],
        "v1.25.7---vmware.2-tkg.1"
    );

    let out = k
        .ok(&[
            "wait",
            "--for=condition=Ready",
            "cluster/team-a-prod",
            "-n",
            "default",
            "--timeout=60s",
        ])
        .await;
    assert!(out.contains("condition met"), "{out}");

    let mut changed = cluster.clone();
    changed["spec"]["topology"]["controlPlane"]["replicas"] = json!(5);
    let changed_file = k.write("changed.yaml", &serde_yaml::to_string(&changed).unwrap());
    let out = k
        .run(&[
            "apply",
            "--server-side",
            "--field-manager=platform-admin",
            "-f",
            changed_file.to_str().unwrap(),
        ])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict") && err.contains("\"tkgops\""),
        "{err}"
    );
    assert!(
        err.contains(".spec.topology.controlPlane.replicas"),
        "{err}"
    );
}

/// Issue 18 ("waits check what was asked"): once the MachineDeployments have rolled,
/// `kube.wait-machine-deployments` reads each one's AWSMachineTemplate and fails, naming the
/// template, when its instance type or root volume is not what the plan asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_wait_fails_when_a_machine_deployment_runs_other_machines_than_planned() {
    let env = env(pinniped()).await;
    let (pre, apply) = example_steps();
    run(&env.provider, "kube.apply", apply.clone())
        .await
        .expect("apply");
    let manifest: Value = serde_yaml::from_str(apply["manifests"].as_str().unwrap()).unwrap();
    let var = |name: &str| {
        manifest["spec"]["topology"]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()["value"]
            .clone()
    };
    let worker = var("worker");
    let mds: Vec<String> = manifest["spec"]["topology"]["workers"]["machineDeployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|md| md["name"].as_str().unwrap().to_string())
        .collect();
    let live = env
        .mgmt
        .get(&clusters(), Some("default"), "team-a-prod")
        .expect("the Cluster");
    let k8s = live["spec"]["topology"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let inputs = |md0_type: &str| {
        let machines: Vec<Value> = mds
            .iter()
            .map(|md| {
                json!({
                    "topology": md,
                    "instanceType": if md == "md-0" { md0_type.to_string() } else { worker["instanceType"].as_str().unwrap().to_string() },
                    "rootVolumeGib": worker["rootVolume"]["sizeGiB"],
                })
            })
            .collect();
        json!({
            "managementCluster": MC,
            "namespace": "default",
            "clusterName": "team-a-prod",
            "tkr": pre["tkr"],
            "kubernetesVersion": k8s,
            "machines": machines,
        })
    };
    let asked = worker["instanceType"].as_str().unwrap();
    let out = run(
        &env.provider,
        "kube.wait-machine-deployments",
        inputs(asked),
    )
    .await
    .expect("the planned machines");
    assert_eq!(out["version"], json!(k8s), "{out}");

    let m = permanent(
        run(
            &env.provider,
            "kube.wait-machine-deployments",
            inputs("m5.4xlarge"),
        )
        .await,
    );
    assert!(
        m.contains("rolled, but not to the machines the plan asked for")
            && m.contains("MachineDeployment md-0 runs AWSMachineTemplate team-a-prod-md-0-")
            && m.contains(&format!("instanceType {asked} (asked m5.4xlarge)")),
        "{m}"
    );
    assert!(!m.contains("md-1 runs"), "only md-0 differs: {m}");
}

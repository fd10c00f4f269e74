//! Integration tests: the simulated controllers (Cluster API, kapp-controller, TMC agent) running
//! on the Kubernetes API emulator.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use tkgops_emulators::kube::controllers::{
    seed_management_cluster, seed_management_cluster_with, start_controllers,
    start_controllers_with, tkr_name, ControllerOptions, Controllers, ManagementSeed, TkgVersion,
    TopologyFaults, FAIL_ANNOTATION, INCOMPATIBLE_TKR, PAUSED_ANNOTATION, STANDARD_PACKAGES,
    TKR_LABEL, TMC_CONNECTED_ANNOTATION,
};
use tkgops_emulators::kube::{EmulatedCluster, Gvr, KubeEmulator};

const TICK: Duration = Duration::from_millis(20);
const WAIT: Duration = Duration::from_secs(15);

fn gvr_cluster() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters")
}
fn gvr_md() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "machinedeployments")
}
fn gvr_mhc() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "machinehealthchecks")
}
fn gvr_kcp() -> Gvr {
    Gvr::new(
        "controlplane.cluster.x-k8s.io",
        "v1beta1",
        "kubeadmcontrolplanes",
    )
}
fn gvr_aws() -> Gvr {
    Gvr::new("infrastructure.cluster.x-k8s.io", "v1beta1", "awsclusters")
}
fn gvr_secret() -> Gvr {
    Gvr::new("", "v1", "secrets")
}
fn gvr_sa() -> Gvr {
    Gvr::new("", "v1", "serviceaccounts")
}
fn gvr_cm() -> Gvr {
    Gvr::new("", "v1", "configmaps")
}
fn gvr_ns() -> Gvr {
    Gvr::new("", "v1", "namespaces")
}
fn gvr_pkgr() -> Gvr {
    Gvr::new("packaging.carvel.dev", "v1alpha1", "packagerepositories")
}
fn gvr_pkgi() -> Gvr {
    Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls")
}
fn gvr_pkg() -> Gvr {
    Gvr::new("data.packaging.carvel.dev", "v1alpha1", "packages")
}

struct Env {
    emu: KubeEmulator,
    mgmt: EmulatedCluster,
    ctrl: Controllers,
}

async fn env() -> Env {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster("mgmt").await.expect("management cluster");
    seed_management_cluster(&mgmt).expect("seed");
    let ctrl = start_controllers_with(
        &emu,
        "mgmt",
        ControllerOptions {
            tick: TICK,
            standard_packages: true,
        },
        NO_FAULTS,
    );
    Env { emu, mgmt, ctrl }
}

/// Transient topology faults off: tests that assert on `TopologyReconciled` stay deterministic.
const NO_FAULTS: TopologyFaults = TopologyFaults {
    transient_every: 0,
    message: String::new(),
};

/// The TKG 2.2 AWS ClusterClass.
const CLASS: &str = "tkg-aws-default-v1.0.0";
/// The newest TKR compatible with TKG 2.2, and its Kubernetes version.
const TKR: &str = "v1.25.7+vmware.2-tkg.1";
const K8S: &str = "v1.25.7+vmware.2";
const OS_SELECTOR: &str = "ami-region=us-east-1,os-name=ubuntu,os-arch=amd64";

/// A Cluster shaped as tkgops renders it for TKG 2.x (docs/tkg2-class-based.md §3.3), in us-east-1.
fn cluster_obj(name: &str, class: &str, cp: i64, workers: i64) -> Value {
    cluster_obj_at(name, class, TKR, cp, workers)
}

fn cluster_obj_at(name: &str, class: &str, version: &str, cp: i64, workers: i64) -> Value {
    let os = json!({"annotations": {"run.tanzu.vmware.com/resolve-os-image": OS_SELECTOR}});
    json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1",
        "kind": "Cluster",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"tkg.tanzu.vmware.com/cluster-name": name},
                     "annotations": {"osInfo": "ubuntu,20.04,amd64", "run.tanzu.vmware.com/resolve-tkr": "", "tkg/plan": "dev"}},
        "spec": {
            "clusterNetwork": {"pods": {"cidrBlocks": ["100.96.0.0/11"]}, "services": {"cidrBlocks": ["100.64.0.0/13"]}},
            "topology": {
                "class": class,
                "version": version,
                "controlPlane": {"replicas": cp, "metadata": os},
                "workers": {"machineDeployments": [
                    {"class": "tkg-worker", "name": "md-0", "replicas": workers, "failureDomain": "us-east-1a", "metadata": os}
                ]},
                "variables": [
                    {"name": "cni", "value": "antrea"},
                    {"name": "controlPlaneCertificateRotation", "value": {"activate": true, "daysBefore": 90}},
                    {"name": "auditLogging", "value": {"enabled": false}},
                    {"name": "podSecurityStandard", "value": {"deactivated": false, "audit": "baseline", "warn": "baseline"}},
                    {"name": "region", "value": "us-east-1"},
                    {"name": "sshKeyName", "value": "my-key"},
                    {"name": "loadBalancerSchemeInternal", "value": true},
                    {"name": "bastion", "value": {"enabled": true}},
                    {"name": "network", "value": {"vpc": {"existingID": "vpc-0abc"},
                        "securityGroupOverrides": {"controlPlane": "sg-cp"},
                        "subnets": [{"az": "us-east-1a", "private": {"id": "subnet-a"}}]}},
                    {"name": "identityRef", "value": {}},
                    {"name": "worker", "value": {"instanceType": "m5.large", "rootVolume": {"sizeGiB": 80}}},
                    {"name": "controlPlane", "value": {"instanceType": "t3.large", "rootVolume": {"sizeGiB": 80}}},
                ],
            },
        },
    })
}

fn cond<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn cond_status(obj: &Value, type_: &str) -> Option<String> {
    cond(obj, type_)
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

/// Evaluates `f` now and after every reconcile pass of `ctrl` until it returns `Some`; panics
/// with `what` when that takes longer than `WAIT`.
async fn wait_for<T>(ctrl: &Controllers, what: &str, f: impl FnMut() -> Option<T>) -> T {
    ctrl.wait_until(WAIT, f)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Waits until every controller task of `ctrl` has completed `n` full reconcile ticks that
/// started after the call: afterwards a test asserts that something did not happen (or did not
/// change), knowing the controllers had `n` chances to do it.
async fn settle(ctrl: &Controllers, n: u64) {
    assert!(
        ctrl.wait_ticks(n, WAIT).await,
        "the controllers did not complete {n} ticks within {WAIT:?}"
    );
}

async fn wait_ready(env: &Env, name: &str) -> Value {
    let mgmt = env.mgmt.clone();
    wait_for(&env.ctrl, &format!("Cluster {name} Ready"), || {
        mgmt.get(&gvr_cluster(), Some("default"), name)
            .filter(|c| cond_status(c, "Ready").as_deref() == Some("True"))
    })
    .await
}

/// Creates a 1+1 cluster and waits for it to be Ready; returns the workload cluster.
async fn ready_workload(env: &Env, name: &str) -> EmulatedCluster {
    env.mgmt
        .create(&gvr_cluster(), cluster_obj(name, CLASS, 1, 1))
        .expect("create cluster");
    wait_ready(env, name).await;
    env.emu.cluster(name).expect("workload cluster")
}

fn owned_by<'a>(list: &'a [Value], cluster: &str) -> Vec<&'a Value> {
    list.iter()
        .filter(|o| o["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"] == cluster)
        .collect()
}

#[tokio::test]
async fn ctrl_cluster_topology_progresses_to_ready() {
    let env = env().await;
    let mut events = env.mgmt.subscribe();
    env.mgmt
        .create(&gvr_cluster(), cluster_obj("team-a", CLASS, 3, 2))
        .expect("create");
    let cluster = wait_ready(&env, "team-a").await;

    // Owned topology objects with deterministic `<name>-<xxxxx>` names and the topology labels.
    let kcps = env.mgmt.list(&gvr_kcp(), Some("default"));
    let kcps = owned_by(&kcps, "team-a");
    assert_eq!(kcps.len(), 1);
    let kcp = kcps[0];
    let kcp_name = kcp["metadata"]["name"].as_str().unwrap();
    assert!(
        kcp_name.starts_with("team-a-") && kcp_name.len() == "team-a-".len() + 5,
        "{kcp_name}"
    );
    assert_eq!(
        kcp["metadata"]["labels"]["topology.cluster.x-k8s.io/owned"],
        ""
    );
    assert_eq!(kcp["spec"]["replicas"], 3);
    assert_eq!(kcp["spec"]["version"], K8S);
    assert_eq!(kcp["status"]["readyReplicas"], 3);
    assert_eq!(kcp["status"]["updatedReplicas"], 3);
    assert_eq!(kcp["status"]["version"], K8S);
    assert_eq!(kcp["status"]["initialized"], true);
    assert_eq!(kcp["status"]["ready"], true);
    assert_eq!(cond_status(kcp, "Available").as_deref(), Some("True"));
    assert_eq!(cond_status(kcp, "MachinesReady").as_deref(), Some("True"));

    let mds = env.mgmt.list(&gvr_md(), Some("default"));
    let mds = owned_by(&mds, "team-a");
    assert_eq!(mds.len(), 1);
    let md = mds[0];
    assert!(md["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("team-a-md-0-"));
    assert_eq!(
        md["metadata"]["labels"]["topology.cluster.x-k8s.io/deployment-name"],
        "md-0"
    );
    assert_eq!(
        md["metadata"]["labels"]["topology.cluster.x-k8s.io/owned"],
        ""
    );
    assert_eq!(md["spec"]["clusterName"], "team-a");
    assert_eq!(md["spec"]["replicas"], 2);
    assert_eq!(md["spec"]["template"]["spec"]["version"], K8S);
    assert_eq!(
        md["spec"]["template"]["spec"]["failureDomain"],
        "us-east-1a"
    );
    assert_eq!(md["status"]["readyReplicas"], 2);
    assert_eq!(md["status"]["availableReplicas"], 2);
    assert_eq!(md["status"]["phase"], "Running");
    assert_eq!(
        md["status"]["observedGeneration"],
        md["metadata"]["generation"]
    );

    let aws = env.mgmt.list(&gvr_aws(), Some("default"));
    let aws = owned_by(&aws, "team-a");
    assert_eq!(aws.len(), 1);
    assert_eq!(aws[0]["spec"]["region"], "us-east-1");
    assert_eq!(
        aws[0]["spec"]["controlPlaneLoadBalancer"]["scheme"],
        "internal"
    );
    assert_eq!(aws[0]["spec"]["network"]["vpc"]["id"], "vpc-0abc");
    assert_eq!(aws[0]["status"]["ready"], true);

    // Cluster refs and status.
    assert_eq!(
        cluster["spec"]["controlPlaneRef"]["kind"],
        "KubeadmControlPlane"
    );
    assert_eq!(cluster["spec"]["controlPlaneRef"]["name"], kcp_name);
    assert_eq!(cluster["spec"]["infrastructureRef"]["kind"], "AWSCluster");
    assert_eq!(cluster["spec"]["controlPlaneEndpoint"]["port"], 6443);
    assert!(cluster["spec"]["controlPlaneEndpoint"]["host"]
        .as_str()
        .unwrap()
        .contains(".elb.us-east-1.amazonaws.com"));
    assert_eq!(cluster["status"]["phase"], "Provisioned");
    assert_eq!(cluster["status"]["infrastructureReady"], true);
    assert_eq!(cluster["status"]["controlPlaneReady"], true);
    assert_eq!(
        cluster["status"]["observedGeneration"],
        cluster["metadata"]["generation"]
    );
    for t in [
        "TopologyReconciled",
        "InfrastructureReady",
        "ControlPlaneInitialized",
        "ControlPlaneReady",
        "Ready",
    ] {
        assert_eq!(cond_status(&cluster, t).as_deref(), Some("True"), "{t}");
        assert!(cond(&cluster, t).unwrap()["lastTransitionTime"].is_string());
    }

    // The order the statuses went through, from the change events.
    let mut phases: Vec<String> = Vec::new();
    let mut milestones: Vec<&str> = Vec::new();
    let mut kcp_ready_seen: Vec<i64> = Vec::new();
    while let Ok(ev) = events.try_recv() {
        let o = &ev.object;
        if ev.gvr.plural == "clusters" && o["metadata"]["name"] == "team-a" {
            if let Some(p) = o.pointer("/status/phase").and_then(Value::as_str) {
                if phases.last().map(String::as_str) != Some(p) {
                    phases.push(p.to_string());
                }
            }
            for m in ["ControlPlaneInitialized", "ControlPlaneReady", "Ready"] {
                if cond_status(o, m).as_deref() == Some("True") && !milestones.contains(&m) {
                    milestones.push(m);
                }
            }
        }
        if ev.gvr.plural == "kubeadmcontrolplanes" {
            if let Some(r) = o.pointer("/status/readyReplicas").and_then(Value::as_i64) {
                if kcp_ready_seen.last() != Some(&r) {
                    kcp_ready_seen.push(r);
                }
            }
        }
    }
    assert_eq!(phases, ["Pending", "Provisioning", "Provisioned"]);
    assert_eq!(
        milestones,
        ["ControlPlaneInitialized", "ControlPlaneReady", "Ready"]
    );
    assert_eq!(kcp_ready_seen, [0, 1, 2, 3]);

    // Kubeconfig Secret.
    let secret = env
        .mgmt
        .get(&gvr_secret(), Some("default"), "team-a-kubeconfig")
        .expect("kubeconfig secret");
    assert_eq!(secret["type"], "cluster.x-k8s.io/secret");
    assert_eq!(
        secret["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"],
        "team-a"
    );
    let kubeconfig = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["value"].as_str().unwrap())
        .expect("base64");
    let workload = env.emu.cluster("team-a").expect("workload cluster");
    assert_eq!(
        String::from_utf8(kubeconfig).unwrap(),
        workload.kubeconfig_yaml()
    );

    // Machines (management cluster) with nodeRefs to Nodes of the workload cluster.
    let machines = env.mgmt.list(
        &Gvr::new("cluster.x-k8s.io", "v1beta1", "machines"),
        Some("default"),
    );
    let machines = owned_by(&machines, "team-a");
    assert_eq!(machines.len(), 5);
    let cp_machines = machines
        .iter()
        .filter(|m| {
            m["metadata"]["labels"]
                .get("cluster.x-k8s.io/control-plane")
                .is_some()
        })
        .count();
    assert_eq!(cp_machines, 3);
    let nodes = workload.list(&Gvr::new("", "v1", "nodes"), None);
    assert_eq!(nodes.len(), 5);
    for m in &machines {
        assert_eq!(m["status"]["phase"], "Running");
        let node = m["status"]["nodeRef"]["name"].as_str().expect("nodeRef");
        assert!(
            nodes.iter().any(|n| n["metadata"]["name"] == node),
            "{node}"
        );
    }

    // Workload cluster: the standard repository and catalog.
    let repo = workload
        .get(
            &gvr_pkgr(),
            Some("tanzu-package-repo-global"),
            "tanzu-standard",
        )
        .expect("tanzu-standard");
    assert_eq!(
        repo["spec"]["fetch"]["imgpkgBundle"]["image"],
        "projects.registry.vmware.com/tkg/packages/standard/repo:v1.6.0"
    );
    assert_eq!(
        repo["metadata"]["annotations"]["tanzu.vmware.com/owner"],
        "tkg"
    );
    assert_eq!(
        repo["status"]["conditions"],
        json!([{"type": "ReconcileSucceeded", "status": "True"}])
    );
    assert_eq!(
        repo["status"]["observedGeneration"],
        repo["metadata"]["generation"]
    );
    let pkgs = workload.list(&gvr_pkg(), Some("tanzu-package-repo-global"));
    assert_eq!(pkgs.len(), STANDARD_PACKAGES.len());
    let cm = workload
        .get(
            &gvr_pkg(),
            Some("tanzu-package-repo-global"),
            "cert-manager.tanzu.vmware.com.1.7.2+vmware.1-tkg.1",
        )
        .expect("cert-manager package");
    assert_eq!(cm["spec"]["refName"], "cert-manager.tanzu.vmware.com");
    assert_eq!(cm["spec"]["version"], "1.7.2+vmware.1-tkg.1");
}

#[tokio::test]
async fn ctrl_kubeconfig_secret_reaches_workload_api() {
    let env = env().await;
    let workload = ready_workload(&env, "kc").await;
    let secret = env
        .mgmt
        .get(&gvr_secret(), Some("default"), "kc-kubeconfig")
        .expect("secret");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["value"].as_str().unwrap())
        .unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(std::str::from_utf8(&raw).unwrap())
        .expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        workload.url().trim_end_matches('/')
    );
    let client = kube::Client::try_from(config).expect("client");
    let version = client
        .apiserver_version()
        .await
        .expect("GET /version on the workload cluster");
    assert!(!version.git_version.is_empty());
}

#[tokio::test]
async fn ctrl_cluster_applied_over_http_progresses() {
    let env = env().await;
    let client = env.mgmt.client().await.expect("client");
    let ar = kube::core::ApiResource {
        group: "cluster.x-k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "cluster.x-k8s.io/v1beta1".into(),
        kind: "Cluster".into(),
        plural: "clusters".into(),
    };
    let api: kube::Api<kube::core::DynamicObject> =
        kube::Api::namespaced_with(client, "default", &ar);
    let obj: kube::core::DynamicObject =
        serde_json::from_value(cluster_obj("http-a", CLASS, 1, 1)).unwrap();
    api.patch(
        "http-a",
        &kube::api::PatchParams::apply("tkgops").force(),
        &kube::api::Patch::Apply(&obj),
    )
    .await
    .expect("server-side apply");
    wait_ready(&env, "http-a").await;
    let got = api.get_status("http-a").await.expect("get");
    let status = got.data["status"].clone();
    assert_eq!(status["phase"], "Provisioned");
    assert_eq!(status["controlPlaneReady"], true);
}

fn cluster_api(client: kube::Client, ns: &str) -> kube::Api<kube::core::DynamicObject> {
    let ar = kube::core::ApiResource {
        group: "cluster.x-k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "cluster.x-k8s.io/v1beta1".into(),
        kind: "Cluster".into(),
        plural: "clusters".into(),
    };
    kube::Api::namespaced_with(client, ns, &ar)
}

fn dynamic(v: Value) -> kube::core::DynamicObject {
    serde_json::from_value(v).expect("DynamicObject")
}

/// Creates `obj` through the real client and returns the API error it must fail with.
async fn create_err(
    api: &kube::Api<kube::core::DynamicObject>,
    obj: Value,
) -> Box<kube::core::Status> {
    match api
        .create(&kube::api::PostParams::default(), &dynamic(obj))
        .await
    {
        Err(kube::Error::Api(e)) => e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn gvr_cb() -> Gvr {
    Gvr::new("run.tanzu.vmware.com", "v1alpha3", "clusterbootstraps")
}
fn gvr_cc() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "clusterclasses")
}

#[tokio::test]
async fn ctrl_missing_cluster_class_is_denied_by_the_defaulting_webhook() {
    let env = env().await;
    let api = cluster_api(env.mgmt.client().await.expect("client"), "default");
    let e = create_err(&api, cluster_obj("orphan", "no-such-class", 1, 1)).await;
    assert_eq!(e.code, 500);
    assert_eq!(e.reason, "InternalError");
    assert_eq!(
        e.message,
        "admission webhook \"default.cluster.cluster.x-k8s.io\" denied the request: Internal error occurred: Cluster orphan can't be validated. \
         ClusterClass no-such-class can not be retrieved.: ClusterClass.cluster.x-k8s.io \"no-such-class\" not found"
    );
    // The class exists in tkg-system, but CAPI 1.2 looks in the Cluster's namespace: a namespace
    // the class is not propagated into (provider namespaces) cannot host Clusters.
    env.mgmt
        .create(&gvr_ns(), json!({"metadata": {"name": "capa-system", "labels": {"cluster.x-k8s.io/provider": "infrastructure-aws"}}}))
        .unwrap();
    let mut obj = cluster_obj("in-provider-ns", CLASS, 1, 1);
    obj["metadata"]["namespace"] = json!("capa-system");
    let api = cluster_api(env.mgmt.client().await.expect("client"), "capa-system");
    let e = create_err(&api, obj).await;
    assert_eq!(e.code, 500);
    assert!(
        e.message
            .contains(&format!("ClusterClass {CLASS} can not be retrieved")),
        "{}",
        e.message
    );
    assert!(env
        .mgmt
        .get(&gvr_cluster(), Some("default"), "orphan")
        .is_none());
}

#[tokio::test]
async fn ctrl_class_is_propagated_into_new_namespaces_only() {
    let env = env().await;
    assert!(env.mgmt.get(&gvr_cc(), Some("default"), CLASS).is_some());
    assert!(env.mgmt.get(&gvr_cc(), Some("tkg-system"), CLASS).is_some());
    env.mgmt
        .create(&gvr_ns(), json!({"metadata": {"name": "team-b"}}))
        .unwrap();
    env.mgmt
        .create(&gvr_ns(), json!({"metadata": {"name": "kube-node-lease"}}))
        .unwrap();
    let mgmt = env.mgmt.clone();
    let copy = wait_for(&env.ctrl, "class copied into team-b", || {
        mgmt.get(&gvr_cc(), Some("team-b"), CLASS)
    })
    .await;
    assert_eq!(
        copy["metadata"]["annotations"]["run.tanzu.vmware.com/resolve-tkr"],
        ""
    );
    settle(&env.ctrl, 2).await;
    assert!(env
        .mgmt
        .get(&gvr_cc(), Some("kube-node-lease"), CLASS)
        .is_none());
    assert!(env
        .mgmt
        .get(&gvr_cc(), Some("kube-system"), CLASS)
        .is_none());
}

#[tokio::test]
async fn ctrl_fail_annotation_fails_cluster_with_error_severity() {
    let env = env().await;
    let mut obj = cluster_obj("doomed", CLASS, 1, 1);
    obj["metadata"]["annotations"] = json!({FAIL_ANNOTATION: "AMI ami-123 not found in us-east-1"});
    env.mgmt.create(&gvr_cluster(), obj).expect("create");
    let mgmt = env.mgmt.clone();
    let c = wait_for(&env.ctrl, "phase Failed", || {
        mgmt.get(&gvr_cluster(), Some("default"), "doomed")
            .filter(|c| c["status"]["phase"] == "Failed")
    })
    .await;
    let ready = cond(&c, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["severity"], "Error");
    assert_eq!(ready["reason"], "ProvisioningFailed");
    assert_eq!(ready["message"], "AMI ami-123 not found in us-east-1");
    assert_eq!(
        c["status"]["failureMessage"],
        "AMI ami-123 not found in us-east-1"
    );
    assert!(c["status"]["failureReason"].is_string());
    // It stays failed and never initializes.
    settle(&env.ctrl, 5).await;
    let c = env
        .mgmt
        .get(&gvr_cluster(), Some("default"), "doomed")
        .unwrap();
    assert_eq!(c["status"]["phase"], "Failed");
    assert_ne!(
        cond_status(&c, "ControlPlaneInitialized").as_deref(),
        Some("True")
    );
}

fn pkgi(name: &str, ns: &str, version: &str, sa: &str, values_secret: Option<&str>) -> Value {
    let mut o = json!({
        "apiVersion": "packaging.carvel.dev/v1alpha1",
        "kind": "PackageInstall",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "serviceAccountName": sa,
            "packageRef": {"refName": "cert-manager.tanzu.vmware.com",
                           "versionSelection": {"constraints": version, "prereleases": {}}},
        },
    });
    if let Some(s) = values_secret {
        o["spec"]["values"] = json!([{"secretRef": {"name": s}}]);
    }
    o
}

fn sa(name: &str, ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}})
}

async fn wait_pkgi(
    ctrl: &Controllers,
    w: &EmulatedCluster,
    ns: &str,
    name: &str,
    cond_type: &str,
) -> Value {
    let w = w.clone();
    wait_for(ctrl, &format!("PackageInstall {name} {cond_type}"), || {
        w.get(&gvr_pkgi(), Some(ns), name).filter(|p| {
            p.pointer("/status/conditions/0/type")
                .and_then(Value::as_str)
                == Some(cond_type)
                && p["status"]["observedGeneration"] == p["metadata"]["generation"]
        })
    })
    .await
}

#[tokio::test]
async fn ctrl_package_install_succeeds_and_fails_like_kapp_controller() {
    let env = env().await;
    let w = ready_workload(&env, "pk").await;
    let ns = "cert-manager";
    w.create(
        &gvr_ns(),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .expect("ns");
    w.create(&gvr_sa(), sa("cert-manager-cert-manager-sa", ns))
        .expect("sa");

    // Success.
    w.create(
        &gvr_pkgi(),
        pkgi(
            "cert-manager",
            ns,
            "1.7.2+vmware.1-tkg.1",
            "cert-manager-cert-manager-sa",
            None,
        ),
    )
    .expect("pkgi");
    let ok = wait_pkgi(&env.ctrl, &w, ns, "cert-manager", "ReconcileSucceeded").await;
    assert_eq!(
        ok["status"]["conditions"],
        json!([{"type": "ReconcileSucceeded", "status": "True"}])
    );
    assert_eq!(ok["status"]["friendlyDescription"], "Reconcile succeeded");
    assert_eq!(ok["status"]["version"], "1.7.2+vmware.1-tkg.1");
    assert_eq!(ok["status"]["lastAttemptedVersion"], "1.7.2+vmware.1-tkg.1");
    assert!(ok["status"].get("usefulErrorMessage").is_none());

    // A spec change restarts the reconcile: exactly one condition, observedGeneration bumped.
    let mut events = w.subscribe();
    let patched = w
        .patch_merge(
            &gvr_pkgi(),
            Some(ns),
            "cert-manager",
            json!({"spec": {"packageRef": {"versionSelection": {"constraints": "9.9.9"}}}}),
        )
        .expect("patch");
    let generation = patched["metadata"]["generation"].as_i64().unwrap();
    let failed = wait_pkgi(&env.ctrl, &w, ns, "cert-manager", "ReconcileFailed").await;
    assert_eq!(failed["status"]["observedGeneration"], generation);
    assert_eq!(failed["status"]["conditions"].as_array().unwrap().len(), 1);
    assert_eq!(
        failed["status"]["conditions"][0]["message"],
        "Error (see .status.usefulErrorMessage for details)"
    );
    let msg =
        "Could not find package with name 'cert-manager.tanzu.vmware.com' and version '9.9.9'";
    assert_eq!(failed["status"]["usefulErrorMessage"], msg);
    assert_eq!(
        failed["status"]["friendlyDescription"],
        format!("Reconcile failed: {msg}")
    );
    let mut saw_reconciling = false;
    while let Ok(ev) = events.try_recv() {
        if ev.gvr.plural == "packageinstalls" {
            let conds = ev
                .object
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            assert!(conds.len() <= 1, "more than one condition: {conds:?}");
            if conds
                .first()
                .map(|c| c["type"] == "Reconciling")
                .unwrap_or(false)
            {
                assert_eq!(ev.object["status"]["observedGeneration"], generation);
                assert_eq!(ev.object["status"]["friendlyDescription"], "Reconciling");
                saw_reconciling = true;
            }
        }
    }
    assert!(saw_reconciling, "Reconciling was never reported");

    // Missing ServiceAccount.
    w.create(
        &gvr_pkgi(),
        pkgi("no-sa", ns, "1.7.2+vmware.1-tkg.1", "missing-sa", None),
    )
    .expect("pkgi");
    let f = wait_pkgi(&env.ctrl, &w, ns, "no-sa", "ReconcileFailed").await;
    assert_eq!(
        f["status"]["usefulErrorMessage"],
        "Getting service account: serviceaccounts \"missing-sa\" not found"
    );
    // ... which recovers once the ServiceAccount exists (kapp-controller retries).
    w.create(&gvr_sa(), sa("missing-sa", ns)).expect("sa");
    wait_pkgi(&env.ctrl, &w, ns, "no-sa", "ReconcileSucceeded").await;

    // Missing values Secret.
    w.create(
        &gvr_pkgi(),
        pkgi(
            "no-values",
            ns,
            "1.7.2+vmware.1-tkg.1",
            "missing-sa",
            Some("cm-values"),
        ),
    )
    .expect("pkgi");
    let f = wait_pkgi(&env.ctrl, &w, ns, "no-values", "ReconcileFailed").await;
    assert!(f["status"]["usefulErrorMessage"]
        .as_str()
        .unwrap()
        .contains("\"cm-values\""));
}

#[tokio::test]
async fn ctrl_upgrade_pauses_then_rolls_control_plane_then_workers() {
    let env = env().await;
    env.mgmt
        .create(
            &gvr_cluster(),
            cluster_obj_at("up", CLASS, "v1.24.11+vmware.1-tkg.1", 1, 1),
        )
        .expect("create");
    wait_ready(&env, "up").await;
    let mut events = env.mgmt.subscribe();
    // `tanzu cluster upgrade`: a merge patch of the TKR version (§8).
    let patched = env
        .mgmt
        .patch_merge(
            &gvr_cluster(),
            Some("default"),
            "up",
            json!({"spec": {"topology": {"version": TKR}}}),
        )
        .expect("patch version");
    // The resolver relabels and the cluster-pause webhook pauses the Cluster.
    assert_eq!(patched["spec"]["topology"]["version"], K8S);
    assert_eq!(patched["metadata"]["labels"][TKR_LABEL], tkr_name(TKR));
    assert_eq!(patched["spec"]["paused"], true);
    assert_eq!(
        patched["metadata"]["annotations"][PAUSED_ANNOTATION],
        tkr_name(TKR)
    );
    let mgmt = env.mgmt.clone();
    let kcp = wait_for(&env.ctrl, "KCP upgraded", || {
        owned_by(&mgmt.list(&gvr_kcp(), Some("default")), "up")
            .first()
            .filter(|k| k["status"]["version"] == K8S)
            .map(|k| (*k).clone())
    })
    .await;
    assert_eq!(kcp["spec"]["version"], K8S);
    assert_eq!(kcp["status"]["updatedReplicas"], 1);
    let md = wait_for(&env.ctrl, "MD upgraded", || {
        owned_by(&mgmt.list(&gvr_md(), Some("default")), "up")
            .first()
            .filter(|m| {
                m["spec"]["template"]["spec"]["version"] == K8S
                    && m["status"]["updatedReplicas"] == 1
                    && m["status"]["observedGeneration"] == m["metadata"]["generation"]
            })
            .map(|m| (*m).clone())
    })
    .await;
    assert_eq!(md["status"]["readyReplicas"], 1);
    let c = mgmt.get(&gvr_cluster(), Some("default"), "up").unwrap();
    assert!(c["spec"].get("paused").is_none(), "unpaused: {}", c["spec"]);
    assert!(c["metadata"]["annotations"]
        .get(PAUSED_ANNOTATION)
        .is_none());
    let cb = mgmt
        .get(&gvr_cb(), Some("default"), "up")
        .expect("ClusterBootstrap");
    assert_eq!(cb["status"]["resolvedTKR"], tkr_name(TKR));
    // The KCP only moved after the ClusterBootstrap unpaused the Cluster.
    let mut unpaused_before_kcp = None;
    while let Ok(ev) = events.try_recv() {
        if ev.gvr.plural == "clusters"
            && ev.object["spec"].get("paused").is_none()
            && unpaused_before_kcp.is_none()
        {
            unpaused_before_kcp = Some(true);
        }
        if ev.gvr.plural == "kubeadmcontrolplanes"
            && ev.object["spec"]["version"] == K8S
            && unpaused_before_kcp.is_none()
        {
            unpaused_before_kcp = Some(false);
        }
    }
    assert_eq!(unpaused_before_kcp, Some(true));
    let c = mgmt.get(&gvr_cluster(), Some("default"), "up").unwrap();
    assert_eq!(
        cond_status(&c, "ControlPlaneReady").as_deref(),
        Some("True")
    );
}

#[tokio::test]
async fn ctrl_machine_health_check_and_deletion() {
    let env = env().await;
    let workload = ready_workload(&env, "mh").await;
    env.mgmt
        .create(&gvr_mhc(), json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineHealthCheck",
            "metadata": {"name": "mh", "namespace": "default"},
            "spec": {"clusterName": "mh", "selector": {"matchLabels": {"node-pool": "mh-worker-pool"}},
                     "unhealthyConditions": [{"type": "Ready", "status": "Unknown", "timeout": "5m"}]},
        }))
        .expect("mhc");
    let mgmt = env.mgmt.clone();
    let mhc = wait_for(&env.ctrl, "MHC status", || {
        mgmt.get(&gvr_mhc(), Some("default"), "mh")
            .filter(|m| cond_status(m, "RemediationAllowed").as_deref() == Some("True"))
    })
    .await;
    assert_eq!(mhc["status"]["expectedMachines"], 1);
    assert_eq!(mhc["status"]["targets"].as_array().unwrap().len(), 1);
    assert_eq!(mhc["status"]["currentHealthy"], 1);
    assert_eq!(mhc["status"]["remediationsAllowed"], 1);

    // The worker's Node goes `Ready=Unknown` and back, on the workload cluster only (no change
    // of the management cluster's objects): the MachineHealthCheck follows both ways, as the
    // real controller, which watches the workload cluster's Nodes, does.
    let nodes = Gvr::new("", "v1", "nodes");
    let worker = mhc["status"]["targets"][0].as_str().unwrap().to_string();
    let machine = mgmt
        .get(
            &Gvr::new("cluster.x-k8s.io", "v1beta1", "machines"),
            Some("default"),
            &worker,
        )
        .expect("target Machine");
    let node = machine["status"]["nodeRef"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let set_ready = |status: &str| {
        let mut st = workload.get(&nodes, None, &node).expect("Node")["status"].clone();
        for c in st["conditions"].as_array_mut().expect("Node conditions") {
            if c["type"] == "Ready" {
                c["status"] = json!(status);
            }
        }
        workload
            .update_status(&nodes, None, &node, st)
            .expect("Node status");
    };
    set_ready("Unknown");
    wait_for(&env.ctrl, "MHC counts the unhealthy Node", || {
        mgmt.get(&gvr_mhc(), Some("default"), "mh")
            .filter(|m| m["status"]["currentHealthy"] == 0)
    })
    .await;
    set_ready("True");
    wait_for(&env.ctrl, "MHC healthy again", || {
        mgmt.get(&gvr_mhc(), Some("default"), "mh")
            .filter(|m| m["status"]["currentHealthy"] == 1)
    })
    .await;

    // Deletion: the Cluster controller's finalizer keeps the Cluster in phase Deleting until its
    // descendants are gone, then the Cluster disappears.
    let c = mgmt.get(&gvr_cluster(), Some("default"), "mh").unwrap();
    assert!(c["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "cluster.cluster.x-k8s.io"));
    env.mgmt
        .delete(&gvr_cluster(), Some("default"), "mh")
        .expect("delete");
    let deleting = mgmt
        .get(&gvr_cluster(), Some("default"), "mh")
        .expect("still there while deleting");
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    wait_for(&env.ctrl, "phase Deleting", || {
        mgmt.get(&gvr_cluster(), Some("default"), "mh")
            .filter(|c| c["status"]["phase"] == "Deleting")
            .map(|_| ())
    })
    .await;
    wait_for(&env.ctrl, "owned objects deleted", || {
        let gone = owned_by(&mgmt.list(&gvr_kcp(), Some("default")), "mh").is_empty()
            && owned_by(&mgmt.list(&gvr_md(), Some("default")), "mh").is_empty()
            && owned_by(&mgmt.list(&gvr_aws(), Some("default")), "mh").is_empty()
            && mgmt.get(&gvr_mhc(), Some("default"), "mh").is_none()
            && mgmt
                .get(&gvr_secret(), Some("default"), "mh-kubeconfig")
                .is_none()
            && mgmt.get(&gvr_cluster(), Some("default"), "mh").is_none();
        gone.then_some(())
    })
    .await;
}

#[tokio::test]
async fn ctrl_plan_based_cluster_progresses_from_its_refs() {
    let env = env().await;
    let ns = "default";
    // Objects of TKG 1.6's legacy plan-based template (docs/tanzu-apis.md §2.1), created out of order.
    env.mgmt
        .create(&gvr_cluster(), json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
            "metadata": {"name": "legacy", "namespace": ns, "labels": {"tanzuKubernetesRelease": "v1.23.8---vmware.2-tkg.1"}},
            "spec": {
                "clusterNetwork": {"pods": {"cidrBlocks": ["100.96.0.0/11"]}},
                "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "AWSCluster", "name": "legacy"},
                "controlPlaneRef": {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
                                    "name": "legacy-control-plane"},
            },
        }))
        .expect("cluster");
    settle(&env.ctrl, 4).await;
    let c = env.mgmt.get(&gvr_cluster(), Some(ns), "legacy").unwrap();
    assert_eq!(
        c["status"]["phase"], "Pending",
        "waits for its referenced objects"
    );
    env.mgmt
        .create(&gvr_aws(), json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "AWSCluster",
            "metadata": {"name": "legacy", "namespace": ns},
            "spec": {"region": "us-west-2", "sshKeyName": "tkg-kp", "controlPlaneLoadBalancer": {"scheme": "internet-facing"}},
        }))
        .expect("aws");
    env.mgmt
        .create(&gvr_kcp(), json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
            "metadata": {"name": "legacy-control-plane", "namespace": ns},
            "spec": {"replicas": 1, "version": "v1.23.8+vmware.2"},
        }))
        .expect("kcp");
    env.mgmt
        .create(&gvr_md(), json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineDeployment",
            "metadata": {"name": "legacy-md-0", "namespace": ns, "labels": {"cluster.x-k8s.io/cluster-name": "legacy"}},
            "spec": {"clusterName": "legacy", "replicas": 2,
                     "template": {"spec": {"clusterName": "legacy", "version": "v1.23.8+vmware.2", "failureDomain": "us-west-2a"}}},
        }))
        .expect("md");
    let c = wait_ready(&env, "legacy").await;
    assert_eq!(c["status"]["phase"], "Provisioned");
    assert!(cond(&c, "TopologyReconciled").is_none());
    assert!(c["spec"]["controlPlaneEndpoint"]["host"]
        .as_str()
        .unwrap()
        .contains("us-west-2"));
    let md = env.mgmt.get(&gvr_md(), Some(ns), "legacy-md-0").unwrap();
    assert_eq!(md["status"]["readyReplicas"], 2);
    assert_eq!(md["status"]["updatedReplicas"], 2);
    assert!(env
        .mgmt
        .get(&gvr_secret(), Some(ns), "legacy-kubeconfig")
        .is_some());

    // Legacy upgrade (TKG `DoLegacyClusterUpgrade`): patch the KCP, then the MD.
    env.mgmt
        .patch_merge(
            &gvr_kcp(),
            Some(ns),
            "legacy-control-plane",
            json!({"spec": {"version": "v1.23.10+vmware.1"}}),
        )
        .unwrap();
    let mgmt = env.mgmt.clone();
    wait_for(&env.ctrl, "legacy KCP upgraded", || {
        mgmt.get(&gvr_kcp(), Some(ns), "legacy-control-plane")
            .filter(|k| {
                k["status"]["version"] == "v1.23.10+vmware.1" && k["status"]["updatedReplicas"] == 1
            })
    })
    .await;
}

#[tokio::test]
async fn ctrl_tmc_agent_connects_outward() {
    use axum::body::Bytes;
    use axum::http::Uri;
    let env = env().await;
    let w = ready_workload(&env, "tm").await;

    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let fail_first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let app = {
        let seen = seen.clone();
        let fail_first = fail_first.clone();
        axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
            let seen = seen.clone();
            let fail_first = fail_first.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                seen.lock().unwrap().push((uri.path().to_string(), v));
                if fail_first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "{}")
                } else {
                    (axum::http::StatusCode::OK, "{}")
                }
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    w.create(
        &gvr_ns(),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "vmware-system-tmc"}}),
    )
    .expect("ns");
    w.create(
        &gvr_cm(),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "stack-config", "namespace": "vmware-system-tmc"},
            "data": {
                "tmc_url": format!("http://{addr}"),
                "cluster_name": "tm",
                "management_cluster_name": "attached",
                "provisioner_name": "attached",
                "registration_token": "tok-123",
            },
        }),
    )
    .expect("stack-config");

    let cm = {
        let w = w.clone();
        wait_for(&env.ctrl, "connected annotation", move || {
            w.get(&gvr_cm(), Some("vmware-system-tmc"), "stack-config")
                .filter(|c| {
                    c.pointer("/metadata/annotations")
                        .and_then(|a| a.get(TMC_CONNECTED_ANNOTATION))
                        .is_some()
                })
        })
        .await
    };
    assert!(cm["metadata"]["annotations"][TMC_CONNECTED_ANNOTATION].is_string());
    let calls = seen.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        2,
        "one failed attempt, then one success: {calls:?}"
    );
    let (path, body) = &calls[1];
    assert_eq!(path, "/v1alpha1/clusters/tm:agentconnect");
    assert_eq!(
        body,
        &json!({
            "fullName": {"managementClusterName": "attached", "provisionerName": "attached", "name": "tm"},
            "registrationToken": "tok-123",
            "kubeServerVersion": K8S,
            "nodeCount": "2",
        })
    );
    // Connected once: no further calls.
    settle(&env.ctrl, 5).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn ctrl_restarted_controllers_resume_from_object_state() {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster("mgmt").await.unwrap();
    seed_management_cluster(&mgmt).unwrap();
    let ctrl = start_controllers(
        &emu,
        "mgmt",
        ControllerOptions {
            tick: TICK,
            standard_packages: true,
        },
    );
    mgmt.create(&gvr_cluster(), cluster_obj("rs", CLASS, 3, 1))
        .unwrap();
    {
        let mgmt = mgmt.clone();
        wait_for(&ctrl, "initialized", move || {
            mgmt.get(&gvr_cluster(), Some("default"), "rs")
                .filter(|c| cond_status(c, "ControlPlaneInitialized").as_deref() == Some("True"))
        })
        .await;
    }
    drop(ctrl);
    let kcp_before = owned_by(&mgmt.list(&gvr_kcp(), Some("default")), "rs")[0].clone();
    let ctrl = start_controllers(
        &emu,
        "mgmt",
        ControllerOptions {
            tick: TICK,
            standard_packages: true,
        },
    );
    let env = Env {
        emu: emu.clone(),
        mgmt: mgmt.clone(),
        ctrl,
    };
    wait_ready(&env, "rs").await;
    let kcps = mgmt.list(&gvr_kcp(), Some("default"));
    let kcps = owned_by(&kcps, "rs");
    assert_eq!(kcps.len(), 1, "no duplicate topology objects after restart");
    assert_eq!(kcps[0]["metadata"]["name"], kcp_before["metadata"]["name"]);
    assert_eq!(emu.cluster_names().iter().filter(|n| *n == "rs").count(), 1);
    // kapp-controller runs on the pre-existing workload cluster after the restart.
    let w = emu.cluster("rs").unwrap();
    w.create(&gvr_sa(), sa("s", "default")).unwrap();
    w.create(
        &gvr_pkgi(),
        pkgi("p", "default", "1.7.2+vmware.1-tkg.1", "s", None),
    )
    .unwrap();
    wait_pkgi(&env.ctrl, &w, "default", "p", "ReconcileSucceeded").await;
}

fn variable<'a>(cluster: &'a Value, name: &str) -> Option<&'a Value> {
    cluster["spec"]["topology"]["variables"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
        .map(|v| &v["value"])
}

#[tokio::test]
async fn ctrl_tkg2_cluster_is_admitted_resolved_and_bootstrapped() {
    let env = env().await;
    let api = cluster_api(env.mgmt.client().await.expect("client"), "default");
    let applied = api
        .patch(
            "wc1",
            &kube::api::PatchParams::apply("tkgops").force(),
            &kube::api::Patch::Apply(&dynamic(cluster_obj("wc1", CLASS, 1, 2))),
        )
        .await
        .expect("server-side apply");
    let c = serde_json::to_value(&applied).unwrap();
    // TKR resolver: label, version rewrite, TKR_DATA for the us-east-1 ubuntu image.
    assert_eq!(c["metadata"]["labels"][TKR_LABEL], tkr_name(TKR));
    assert_eq!(c["spec"]["topology"]["version"], K8S);
    let data = &variable(&c, "TKR_DATA").expect("TKR_DATA")[K8S];
    assert_eq!(data["kubernetesSpec"]["version"], K8S);
    assert_eq!(data["osImageRef"]["region"], "us-east-1");
    assert!(data["osImageRef"]["id"]
        .as_str()
        .unwrap()
        .starts_with("ami-"));
    assert_eq!(data["labels"]["os-name"], "ubuntu");
    // Same image for md-0: no override.
    assert!(c["spec"]["topology"]["workers"]["machineDeployments"][0]
        .get("variables")
        .is_none());
    // CAPI defaulting: nested defaults and appended class defaults (after the sent variables).
    assert_eq!(
        variable(&c, "identityRef").unwrap(),
        &json!({"kind": "AWSClusterRoleIdentity"})
    );
    assert_eq!(
        variable(&c, "network").unwrap()["vpc"]["cidr"],
        "10.0.0.0/16"
    );
    let names: Vec<&str> = c["spec"]["topology"]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[..12],
        [
            "cni",
            "controlPlaneCertificateRotation",
            "auditLogging",
            "podSecurityStandard",
            "region",
            "sshKeyName",
            "loadBalancerSchemeInternal",
            "bastion",
            "network",
            "identityRef",
            "worker",
            "controlPlane"
        ]
    );
    assert!(names.contains(&"tlsCipherSuites") && names.contains(&"etcdExtraArgs"));

    let cluster = wait_ready(&env, "wc1").await;
    for t in [
        "TopologyReconciled",
        "InfrastructureReady",
        "ControlPlaneReady",
        "Ready",
    ] {
        assert_eq!(cond_status(&cluster, t).as_deref(), Some("True"), "{t}");
    }
    // Re-applying the same manifest is a no-op (same resourceVersion), once the controllers
    // have settled the Cluster.
    settle(&env.ctrl, 2).await;
    let before = env
        .mgmt
        .get(&gvr_cluster(), Some("default"), "wc1")
        .unwrap();
    let again = api
        .patch(
            "wc1",
            &kube::api::PatchParams::apply("tkgops").force(),
            &kube::api::Patch::Apply(&dynamic(cluster_obj("wc1", CLASS, 1, 2))),
        )
        .await
        .expect("re-apply");
    assert_eq!(
        again.metadata.resource_version.as_deref(),
        before["metadata"]["resourceVersion"].as_str()
    );
    // AWSCluster patches read securityGroupOverrides.controlPlane; identityRef has no name.
    let aws = env.mgmt.list(&gvr_aws(), Some("default"));
    let aws = owned_by(&aws, "wc1");
    assert_eq!(
        aws[0]["spec"]["network"]["securityGroupOverrides"]["controlplane"],
        "sg-cp"
    );
    assert!(aws[0]["spec"].get("identityRef").is_none());
    // MachineHealthChecks from the class, named after the KCP and the MD.
    let kcp = owned_by(&env.mgmt.list(&gvr_kcp(), Some("default")), "wc1")[0].clone();
    let md = owned_by(&env.mgmt.list(&gvr_md(), Some("default")), "wc1")[0].clone();
    for owner in [&kcp, &md] {
        let name = owner["metadata"]["name"].as_str().unwrap();
        let mhc = env
            .mgmt
            .get(&gvr_mhc(), Some("default"), name)
            .expect("class MHC");
        assert_eq!(mhc["spec"]["maxUnhealthy"], "100%");
        assert_eq!(mhc["spec"]["nodeStartupTimeout"], "20m0s");
        assert_eq!(mhc["spec"]["clusterName"], "wc1");
    }
    // Machines have nodeRefs.
    let machines = env.mgmt.list(
        &Gvr::new("cluster.x-k8s.io", "v1beta1", "machines"),
        Some("default"),
    );
    let machines = owned_by(&machines, "wc1");
    assert_eq!(machines.len(), 3);
    assert!(machines
        .iter()
        .all(|m| m["status"]["nodeRef"]["name"].is_string()));
    // ClusterBootstrap and the core PackageInstalls (§6 step 5).
    let cb = env
        .mgmt
        .get(&gvr_cb(), Some("default"), "wc1")
        .expect("ClusterBootstrap");
    assert!(cb["spec"]["cni"]["refName"]
        .as_str()
        .unwrap()
        .starts_with("antrea.tanzu.vmware.com."));
    assert!(cb["spec"]["csi"]["refName"]
        .as_str()
        .unwrap()
        .starts_with("aws-ebs-csi-driver.tanzu.vmware.com."));
    assert!(cb["spec"]["kapp"]["valuesFrom"]["providerRef"]["kind"].is_string());
    assert!(cb["spec"].get("cpi").is_none());
    let kapp = env
        .mgmt
        .get(&gvr_pkgi(), Some("default"), "wc1-kapp-controller")
        .expect("kapp-controller pkgi");
    assert_eq!(
        kapp["status"]["conditions"][0]["type"],
        "ReconcileSucceeded"
    );
    let w = env.emu.cluster("wc1").unwrap();
    for n in ["wc1-antrea", "wc1-aws-ebs-csi-driver"] {
        wait_pkgi(&env.ctrl, &w, "tkg-system", n, "ReconcileSucceeded").await;
    }
    let mgmt = env.mgmt.clone();
    wait_for(&env.ctrl, "ClusterBootstrap Ready", || {
        mgmt.get(&gvr_cb(), Some("default"), "wc1")
            .filter(|cb| cond_status(cb, "Ready").as_deref() == Some("True"))
    })
    .await;
}

#[tokio::test]
async fn ctrl_admission_denies_invalid_clusters_with_real_codes() {
    let env = env().await;
    let api = cluster_api(env.mgmt.client().await.expect("client"), "default");
    let rv = env.mgmt.resource_version();

    // Required variable missing after defaulting → 422 from the validating webhook.
    let mut obj = cluster_obj("no-worker", CLASS, 1, 1);
    obj["spec"]["topology"]["variables"]
        .as_array_mut()
        .unwrap()
        .retain(|v| v["name"] != "worker");
    let e = create_err(&api, obj).await;
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        "admission webhook \"validation.cluster.cluster.x-k8s.io\" denied the request: Cluster.cluster.x-k8s.io \"no-worker\" is invalid: \
         spec.topology.variables: Required value: required variable with name \"worker\" must be defined"
    );

    // Schema violations: nested required, enum-free type, minimum.
    let mut obj = cluster_obj("bad-schema", CLASS, 1, 1);
    for v in obj["spec"]["topology"]["variables"].as_array_mut().unwrap() {
        if v["name"] == "network" {
            v["value"].as_object_mut().unwrap().remove("vpc");
        }
        if v["name"] == "controlPlaneCertificateRotation" {
            v["value"]["daysBefore"] = json!(3);
        }
        if v["name"] == "loadBalancerSchemeInternal" {
            v["value"] = json!("yes");
        }
    }
    let e = create_err(&api, obj).await;
    assert_eq!(e.code, 422);
    assert!(
        e.message
            .contains("spec.topology.variables[8].value.vpc: Required value"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("spec.topology.variables[1].value.daysBefore: Invalid value: \"{\\\"activate\\\":true,\\\"daysBefore\\\":3}\": daysBefore in body should be greater than or equal to 7"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("spec.topology.variables[6].value: Invalid value: \"\\\"yes\\\"\": must be of type boolean: \"string\""),
        "{}",
        e.message
    );

    // Undeclared variable → 422 from the defaulting webhook.
    let mut obj = cluster_obj("undeclared", CLASS, 1, 1);
    obj["spec"]["topology"]["variables"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "clusterRole", "value": "workload"}));
    let e = create_err(&api, obj).await;
    assert_eq!(e.code, 422);
    assert!(
        e.message.starts_with(
            "admission webhook \"default.cluster.cluster.x-k8s.io\" denied the request:"
        ),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("variable with name \"clusterRole\" is not defined in the ClusterClass"),
        "{}",
        e.message
    );

    // Unknown MD class and duplicate MD names.
    let mut obj = cluster_obj("bad-md", CLASS, 1, 1);
    let md = obj["spec"]["topology"]["workers"]["machineDeployments"][0].clone();
    let mut other = md.clone();
    other["class"] = json!("tkg-gpu");
    obj["spec"]["topology"]["workers"]["machineDeployments"] = json!([md, other]);
    let e = create_err(&api, obj).await;
    assert_eq!(e.code, 422);
    assert!(e.message.contains("MachineDeploymentClass with name \"tkg-gpu\" does not exist in ClusterClass \"tkg-aws-default-v1.0.0\""), "{}", e.message);
    assert!(
        e.message
            .contains("machineDeployments[1].name: Invalid value: \"md-0\""),
        "{}",
        e.message
    );

    // TKR resolver denials → 403: unknown version, incompatible TKR, region without an OSImage.
    for (name, version, selector) in [
        ("unknown-tkr", "v1.99.1+vmware.1-tkg.1", OS_SELECTOR),
        ("old-tkr", INCOMPATIBLE_TKR, OS_SELECTOR),
        (
            "no-image",
            TKR,
            "ami-region=sa-east-1,os-name=ubuntu,os-arch=amd64",
        ),
    ] {
        let mut obj = cluster_obj_at(name, CLASS, version, 1, 1);
        obj["spec"]["topology"]["controlPlane"]["metadata"]["annotations"]
            ["run.tanzu.vmware.com/resolve-os-image"] = json!(selector);
        obj["spec"]["topology"]["workers"]["machineDeployments"][0]["metadata"]["annotations"]
            ["run.tanzu.vmware.com/resolve-os-image"] = json!(selector);
        let e = create_err(&api, obj).await;
        assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"), "{name}");
        assert!(
            e.message.starts_with("admission webhook \"tkr-resolver-cluster-webhook.tanzu.vmware.com\" denied the request: could not resolve TKR/OSImage for controlPlane, machineDeployments: [md-0], query: "),
            "{name}: {}", e.message
        );
    }
    // Nothing was stored by any of the denials.
    assert_eq!(env.mgmt.resource_version(), rv);
}

#[tokio::test]
async fn ctrl_dry_run_persists_nothing_and_version_cannot_decrease() {
    let env = env().await;
    let api = cluster_api(env.mgmt.client().await.expect("client"), "default");
    let rv = env.mgmt.resource_version();
    let mut events = env.mgmt.subscribe();
    let dry = api
        .create(
            &kube::api::PostParams {
                dry_run: true,
                field_manager: Some("tkgops".into()),
            },
            &dynamic(cluster_obj("dry", CLASS, 1, 1)),
        )
        .await
        .expect("dry-run create");
    let dry = serde_json::to_value(&dry).unwrap();
    assert_eq!(dry["metadata"]["labels"][TKR_LABEL], tkr_name(TKR));
    assert_eq!(dry["spec"]["topology"]["version"], K8S);
    assert!(variable(&dry, "TKR_DATA").is_some());
    assert_eq!(env.mgmt.resource_version(), rv);
    assert!(env
        .mgmt
        .get(&gvr_cluster(), Some("default"), "dry")
        .is_none());
    assert!(events.try_recv().is_err(), "no watch event for a dry run");
    // Dry-run denials carry the same codes.
    let e = match api
        .create(
            &kube::api::PostParams {
                dry_run: true,
                field_manager: None,
            },
            &dynamic(cluster_obj("dry", "nope", 1, 1)),
        )
        .await
    {
        Err(kube::Error::Api(e)) => e,
        other => panic!("expected denial, got {other:?}"),
    };
    assert_eq!(e.code, 500);

    // Version decrease on update → 422.
    api.create(
        &kube::api::PostParams::default(),
        &dynamic(cluster_obj("dec", CLASS, 1, 1)),
    )
    .await
    .expect("create");
    let e = match api
        .patch(
            "dec",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"spec": {"topology": {"version": "v1.24.11+vmware.1-tkg.1"}}}),
            ),
        )
        .await
    {
        Err(kube::Error::Api(e)) => e,
        other => panic!("expected denial, got {other:?}"),
    };
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("spec.topology.version: Invalid value: \"v1.24.11+vmware.1\": version cannot be decreased from \"1.25.7+vmware.2\" to \"1.24.11+vmware.1\""),
        "{}", e.message
    );

    // A jump of two minors on update → 422 Forbidden field error.
    api.create(
        &kube::api::PostParams::default(),
        &dynamic(cluster_obj_at(
            "jump",
            CLASS,
            "v1.23.17+vmware.1-tkg.1",
            1,
            1,
        )),
    )
    .await
    .expect("create");
    let e = match api
        .patch(
            "jump",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"topology": {"version": TKR}}})),
        )
        .await
    {
        Err(kube::Error::Api(e)) => e,
        other => panic!("expected denial, got {other:?}"),
    };
    assert_eq!(e.code, 422);
    let want = "spec.topology.version: Forbidden: version cannot be increased from \"1.23.17+vmware.1\" to \"1.25.7+vmware.2\"";
    assert!(e.message.contains(want), "{}", e.message);

    // An MD whose OSImage differs from the control plane's gets its own TKR_DATA override.
    let mut obj = cluster_obj("mixed", CLASS, 1, 1);
    obj["spec"]["topology"]["workers"]["machineDeployments"][0]["metadata"]["annotations"]
        ["run.tanzu.vmware.com/resolve-os-image"] =
        json!("ami-region=us-east-1,os-name=amazon,os-arch=amd64");
    let mixed = api
        .create(
            &kube::api::PostParams {
                dry_run: true,
                field_manager: None,
            },
            &dynamic(obj),
        )
        .await
        .expect("dry-run create");
    let mixed = serde_json::to_value(&mixed).unwrap();
    let md = &mixed["spec"]["topology"]["workers"]["machineDeployments"][0];
    let ov = md["variables"]["overrides"]
        .as_array()
        .expect("overrides")
        .iter()
        .find(|v| v["name"] == "TKR_DATA")
        .expect("TKR_DATA override");
    assert_eq!(ov["value"][K8S]["labels"]["os-name"], "amazon");
    assert_eq!(
        variable(&mixed, "TKR_DATA").unwrap()[K8S]["labels"]["os-name"],
        "ubuntu"
    );
}

/// Patches Cluster `name` with a merge patch through the real client; returns the API error it
/// must fail with.
async fn patch_err(
    api: &kube::Api<kube::core::DynamicObject>,
    name: &str,
    patch: Value,
) -> Box<kube::core::Status> {
    match api
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
    {
        Err(kube::Error::Api(e)) => e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Replaces the value of variable `name` in a rendered Cluster.
fn set_var(obj: &mut Value, name: &str, value: Value) {
    for v in obj["spec"]["topology"]["variables"].as_array_mut().unwrap() {
        if v["name"] == name {
            v["value"] = value.clone();
        }
    }
}

const VALIDATING: &str =
    "admission webhook \"validation.cluster.cluster.x-k8s.io\" denied the request: ";

/// Issue 18 item 6: names, topology/class removal, build-metadata downgrades, required fields of
/// `bastion`/`auditLogging`/`trust` and `format: cidr`, each refused as CAPI 1.2.8 refuses it.
#[tokio::test]
async fn ctrl_admission_refuses_names_removals_downgrades_and_schema_formats() {
    let env = env().await;
    let api = cluster_api(env.mgmt.client().await.expect("client"), "default");

    // A 64-character name is a valid DNS subdomain but not a label value: CAPI refuses it.
    let long = format!("c{}", "x".repeat(63));
    let e = create_err(&api, cluster_obj(&long, CLASS, 1, 1)).await;
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        format!("{VALIDATING}Cluster.cluster.x-k8s.io \"{long}\" is invalid: metadata.name: Invalid value: \"{long}\": must be a valid label value must be no more than 63 characters")
    );
    // Not a DNS-1123 subdomain: the API server itself refuses it, without a webhook prefix.
    let e = create_err(&api, cluster_obj("Bad_Name", CLASS, 1, 1)).await;
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message.starts_with("Cluster.cluster.x-k8s.io \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of"),
        "{}", e.message
    );

    // Required fields of bastion, auditLogging and trust; malformed CIDRs.
    let mut obj = cluster_obj("bad-values", CLASS, 1, 1);
    set_var(&mut obj, "bastion", json!({}));
    set_var(&mut obj, "auditLogging", json!({}));
    obj["spec"]["topology"]["variables"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "trust", "value": {"additionalTrustedCAs": [{"name": "proxy"}]}}));
    set_var(
        &mut obj,
        "network",
        json!({"vpc": {"cidr": "10.0.0.0"}, "subnets": [{"az": "", "private": {"cidr": "10.0.300.0/24"}}]}),
    );
    let e = create_err(&api, obj).await;
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    for want in [
        "spec.topology.variables[7].value.enabled: Required value",
        "spec.topology.variables[12].value.additionalTrustedCAs[0].data: Required value",
        "spec.topology.variables[8].value.vpc.cidr: Invalid value: \"{\\\"subnets\\\":[{\\\"az\\\":\\\"\\\",\\\"private\\\":{\\\"cidr\\\":\\\"10.0.300.0/24\\\"}}],\\\"vpc\\\":{\\\"cidr\\\":\\\"10.0.0.0\\\"}}\": vpc.cidr in body must be of type cidr: \"10.0.0.0\"",
        "spec.topology.variables[8].value.subnets[0].private.cidr: Invalid value:",
    ] {
        assert!(e.message.contains(want), "missing {want}\nin {}", e.message);
    }
    // auditLogging's required `enabled` has a nested default, which the defaulting webhook fills.
    assert!(!e.message.contains("variables[2]"), "{}", e.message);
    let causes = &e.details.as_ref().expect("details").causes;
    assert!(
        causes.iter().any(|c| c.reason == "FieldValueTypeInvalid"
            && c.field == "spec.topology.variables[8].value.subnets[0].private.cidr"
            && c.message.ends_with(
                "subnets[0].private.cidr in body must be of type cidr: \"10.0.300.0/24\""
            )),
        "{causes:?}"
    );
    assert!(
        causes.iter().any(|c| c.reason == "FieldValueRequired"
            && c.field == "spec.topology.variables[7].value.enabled"),
        "{causes:?}"
    );

    // An existing Cluster: its topology, its class and its version's build metadata.
    api.create(
        &kube::api::PostParams::default(),
        &dynamic(cluster_obj("keep", CLASS, 1, 1)),
    )
    .await
    .expect("create");
    let e = patch_err(&api, "keep", json!({"spec": {"topology": null}})).await;
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        format!("{VALIDATING}Cluster.cluster.x-k8s.io \"keep\" is invalid: spec.topology: Forbidden: cannot be removed from an existing Cluster")
    );
    let e = patch_err(&api, "keep", json!({"spec": {"topology": {"class": null}}})).await;
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    assert_eq!(
        e.message,
        "admission webhook \"default.cluster.cluster.x-k8s.io\" denied the request: Internal error occurred: Cluster keep can't be validated. \
         ClusterClass  can not be retrieved.: ClusterClass.cluster.x-k8s.io \"\" not found"
    );
    let e = patch_err(
        &api,
        "keep",
        json!({"spec": {"topology": {"class": "tkg-aws-default-v1.1.0"}}}),
    )
    .await;
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    assert!(
        e.message
            .contains("ClusterClass tkg-aws-default-v1.1.0 can not be retrieved."),
        "{}",
        e.message
    );
    // vmware.2 → vmware.1 of the same patch release is a downgrade (the resolver is skipped for a
    // paused Cluster, so the version reaches the validator as sent).
    let e = patch_err(
        &api,
        "keep",
        json!({"spec": {"paused": true, "topology": {"version": "v1.25.7+vmware.1"}}}),
    )
    .await;
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        format!("{VALIDATING}Cluster.cluster.x-k8s.io \"keep\" is invalid: spec.topology.version: Invalid value: \"v1.25.7+vmware.1\": version cannot be decreased from \"1.25.7+vmware.2\" to \"1.25.7+vmware.1\"")
    );
    // Nothing of it was stored: the Cluster keeps its topology, class and version.
    let kept = env
        .mgmt
        .get(&gvr_cluster(), Some("default"), "keep")
        .expect("kept");
    assert_eq!(kept["spec"]["topology"]["class"], CLASS);
    assert_eq!(kept["spec"]["topology"]["version"], K8S);
}

#[tokio::test]
async fn ctrl_unknown_nested_fields_depend_on_the_tkg_version() {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    for v in [TkgVersion::V2_2, TkgVersion::V2_4] {
        let mgmt = emu
            .add_cluster(&format!("mgmt-{}", v.as_str()))
            .await
            .unwrap();
        seed_management_cluster_with(
            &mgmt,
            &ManagementSeed {
                tkg_version: v,
                ..Default::default()
            },
        )
        .unwrap();
        let tkr = v.compatible_tkrs()[0];
        let mut obj = cluster_obj_at("sg", v.cluster_class(), tkr, 1, 1);
        for var in obj["spec"]["topology"]["variables"].as_array_mut().unwrap() {
            if var["name"] == "proxy" || var["name"] == "network" {
                var["value"]["securityGroupOverrides"] =
                    json!({"controlPlane": "sg-1", "ipv6Primary": true});
            }
        }
        let api = cluster_api(mgmt.client().await.unwrap(), "default");
        let r = api
            .create(&kube::api::PostParams::default(), &dynamic(obj))
            .await;
        match v {
            TkgVersion::V2_2 => {
                r.expect("CAPI 1.2 ignores undeclared nested fields");
            }
            _ => match r {
                Err(kube::Error::Api(e)) => {
                    assert_eq!(e.code, 422);
                    assert!(e.message.contains("\"securityGroupOverrides.ipv6Primary\" fields are not specified in the variable schema of variable \"network\""), "{}", e.message);
                }
                other => panic!("expected 422, got {other:?}"),
            },
        }
    }
}

#[tokio::test]
async fn ctrl_transient_topology_errors_come_and_go() {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster("mgmt").await.unwrap();
    seed_management_cluster(&mgmt).unwrap();
    let ctrl = start_controllers_with(
        &emu,
        "mgmt",
        ControllerOptions {
            tick: TICK,
            standard_packages: false,
        },
        TopologyFaults {
            transient_every: 3,
            ..Default::default()
        },
    );
    let mut events = mgmt.subscribe();
    mgmt.create(&gvr_cluster(), cluster_obj("flaky", CLASS, 1, 1))
        .unwrap();
    let env = Env {
        emu,
        mgmt: mgmt.clone(),
        ctrl,
    };
    wait_ready(&env, "flaky").await;
    let mut seen_error = None;
    while let Ok(ev) = events.try_recv() {
        if ev.gvr.plural == "clusters"
            && cond_status(&ev.object, "TopologyReconciled").as_deref() == Some("False")
        {
            seen_error = cond(&ev.object, "TopologyReconciled").cloned();
        }
    }
    let c = seen_error.expect("a transient TopologyReconciled=False");
    assert_eq!(c["severity"], "Error");
    assert_eq!(c["reason"], "TopologyReconcileFailed");
    assert!(c["message"].as_str().unwrap().contains("(transient)"));
    // It recovers: TopologyReconciled turns True again.
    wait_for(&env.ctrl, "TopologyReconciled=True again", || {
        mgmt.get(&gvr_cluster(), Some("default"), "flaky")
            .filter(|c| cond_status(c, "TopologyReconciled").as_deref() == Some("True"))
    })
    .await;
}

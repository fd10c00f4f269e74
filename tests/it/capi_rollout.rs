//! Integration tests: rolling updates, scaling and deletion of the simulated Cluster API
//! controllers (KubeadmControlPlane, MachineDeployments, Machines, topology-rotated
//! AWSMachineTemplates), observed through the management cluster's change stream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast::Receiver;

use tkgops_emulators::kube::controllers::{
    seed_management_cluster, start_controllers_with, ControllerOptions, Controllers, TopologyFaults,
};
use tkgops_emulators::kube::{ChangeEvent, EmulatedCluster, Gvr, KubeEmulator};

const TICK: Duration = Duration::from_millis(20);
const WAIT: Duration = Duration::from_secs(30);
const NS: &str = "default";
const CLASS: &str = "tkg-aws-default-v1.0.0";
const OLD_TKR: &str = "v1.24.11+vmware.1-tkg.1";
const OLD_K8S: &str = "v1.24.11+vmware.1";
const TKR: &str = "v1.25.7+vmware.2-tkg.1";
const K8S: &str = "v1.25.7+vmware.2";
const OS_SELECTOR: &str = "ami-region=us-east-1,os-name=ubuntu,os-arch=amd64";

fn gvr_cluster() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters")
}
fn gvr_md() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "machinedeployments")
}
fn gvr_machine() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "machines")
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
fn gvr_amt() -> Gvr {
    Gvr::new(
        "infrastructure.cluster.x-k8s.io",
        "v1beta1",
        "awsmachinetemplates",
    )
}
fn gvr_secret() -> Gvr {
    Gvr::new("", "v1", "secrets")
}
fn gvr_node() -> Gvr {
    Gvr::new("", "v1", "nodes")
}
fn gvr_cb() -> Gvr {
    Gvr::new("run.tanzu.vmware.com", "v1alpha3", "clusterbootstraps")
}
fn gvr_pkgi() -> Gvr {
    Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls")
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
            standard_packages: false,
        },
        TopologyFaults {
            transient_every: 0,
            message: String::new(),
        },
    );
    Env { emu, mgmt, ctrl }
}

/// A TKG 2.2 class-based Cluster in us-east-1 with `cp` control plane replicas and one
/// MachineDeployment `md-<i>` per entry of `workers` (its replicas).
fn cluster_obj(name: &str, tkr: &str, cp: i64, workers: &[i64]) -> Value {
    let os = json!({"annotations": {"run.tanzu.vmware.com/resolve-os-image": OS_SELECTOR}});
    let mds: Vec<Value> = workers
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({"class": "tkg-worker", "name": format!("md-{i}"), "replicas": r,
                             "failureDomain": "us-east-1a", "metadata": os})
        })
        .collect();
    json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1",
        "kind": "Cluster",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"tkg.tanzu.vmware.com/cluster-name": name},
                     "annotations": {"osInfo": "ubuntu,20.04,amd64", "run.tanzu.vmware.com/resolve-tkr": "", "tkg/plan": "dev"}},
        "spec": {
            "clusterNetwork": {"pods": {"cidrBlocks": ["100.96.0.0/11"]}, "services": {"cidrBlocks": ["100.64.0.0/13"]}},
            "topology": {
                "class": CLASS,
                "version": tkr,
                "controlPlane": {"replicas": cp, "metadata": os},
                "workers": {"machineDeployments": mds},
                "variables": [
                    {"name": "cni", "value": "antrea"},
                    {"name": "region", "value": "us-east-1"},
                    {"name": "sshKeyName", "value": "my-key"},
                    {"name": "bastion", "value": {"enabled": true}},
                    {"name": "network", "value": {"vpc": {"existingID": "vpc-0abc"},
                        "subnets": [{"az": "us-east-1a", "private": {"id": "subnet-a"}}]}},
                    {"name": "identityRef", "value": {}},
                    {"name": "worker", "value": {"instanceType": "m5.large", "rootVolume": {"sizeGiB": 80}}},
                    {"name": "controlPlane", "value": {"instanceType": "t3.large", "rootVolume": {"sizeGiB": 80}}},
                ],
            },
        },
    })
}

fn cond_status(obj: &Value, type_: &str) -> Option<String> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

fn name(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap_or("").to_string()
}

fn of_cluster(list: Vec<Value>, cluster: &str) -> Vec<Value> {
    list.into_iter()
        .filter(|o| o["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"] == cluster)
        .collect()
}

/// Collects every management-cluster event while waiting: the broadcast channel is drained
/// after every reconcile pass, so long rollouts never lag it.
struct Recorder {
    rx: Receiver<ChangeEvent>,
    events: Vec<ChangeEvent>,
}

impl Recorder {
    fn new(mgmt: &EmulatedCluster) -> Self {
        Recorder {
            rx: mgmt.subscribe(),
            events: Vec::new(),
        }
    }

    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(ev) => self.events.push(ev),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                    panic!("change stream lagged by {n} events")
                }
                Err(_) => break,
            }
        }
    }

    /// Waits (re-checking after every reconcile pass) until `f` returns `Some`, recording events.
    async fn wait<T>(
        &mut self,
        ctrl: &Controllers,
        what: &str,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let events = std::cell::RefCell::new(self);
        let out = ctrl
            .wait_until(WAIT, || {
                events.borrow_mut().drain();
                f()
            })
            .await;
        events.borrow_mut().drain();
        out.unwrap_or_else(|| panic!("timed out waiting for {what}"))
    }

    /// The recorded objects of `plural`, in event order, with the event kind.
    fn of(&self, plural: &str) -> Vec<(&str, &Value)> {
        self.events
            .iter()
            .filter(|e| e.gvr.plural == plural)
            .map(|e| (e.kind.as_str(), e.object.as_ref()))
            .collect()
    }
}

async fn wait_ready(env: &Env, rec: &mut Recorder, cluster: &str) {
    let mgmt = env.mgmt.clone();
    rec.wait(&env.ctrl, &format!("Cluster {cluster} Ready"), || {
        mgmt.get(&gvr_cluster(), Some(NS), cluster)
            .filter(|c| cond_status(c, "Ready").as_deref() == Some("True"))
    })
    .await;
}

/// The MachineDeployment of topology name `md` of `cluster`.
fn md_of(mgmt: &EmulatedCluster, cluster: &str, md: &str) -> Value {
    of_cluster(mgmt.list(&gvr_md(), Some(NS)), cluster)
        .into_iter()
        .find(|m| m["metadata"]["labels"]["topology.cluster.x-k8s.io/deployment-name"] == md)
        .unwrap_or_else(|| panic!("MachineDeployment {md} of {cluster}"))
}

fn kcp_of(mgmt: &EmulatedCluster, cluster: &str) -> Value {
    of_cluster(mgmt.list(&gvr_kcp(), Some(NS)), cluster)
        .into_iter()
        .next()
        .expect("KubeadmControlPlane")
}

/// Whether an MD or KCP status shows every replica ready and up to date.
fn settled(o: &Value) -> bool {
    let want = o["spec"]["replicas"].as_i64().unwrap_or(1);
    ["replicas", "updatedReplicas", "readyReplicas"]
        .iter()
        .all(|f| o["status"][f].as_i64() == Some(want))
        && o["status"]["observedGeneration"] == o["metadata"]["generation"]
}

/// Machine names owned by the object named `owner`, sorted.
fn machines_of(mgmt: &EmulatedCluster, owner: &str) -> BTreeSet<String> {
    mgmt.list(&gvr_machine(), Some(NS))
        .iter()
        .filter(|m| m["metadata"]["ownerReferences"][0]["name"] == owner)
        .map(name)
        .collect()
}

/// Status observations `(replicas, updatedReplicas, readyReplicas)` of the object named `obj`
/// from the recorded events, deduplicated.
fn observed(rec: &Recorder, plural: &str, obj: &str) -> Vec<(i64, i64, i64)> {
    let mut out: Vec<(i64, i64, i64)> = Vec::new();
    for (_, o) in rec.of(plural) {
        if name(o) != obj {
            continue;
        }
        let s = &o["status"];
        let t = (
            s["replicas"].as_i64().unwrap_or(0),
            s["updatedReplicas"].as_i64().unwrap_or(0),
            s["readyReplicas"].as_i64().unwrap_or(0),
        );
        if out.last() != Some(&t) {
            out.push(t);
        }
    }
    out
}

/// Asserts the rolling-update invariants over a sequence of status observations.
fn assert_rolling(what: &str, obs: &[(i64, i64, i64)], spec: i64, surge: i64, unavailable: i64) {
    assert!(obs.len() > 2, "{what}: no rollout observed: {obs:?}");
    for w in obs.windows(2) {
        let ((_, u0, _), (_, u1, _)) = (w[0], w[1]);
        assert!(
            u1 - u0 <= surge,
            "{what}: updatedReplicas jumped {u0}→{u1}: {obs:?}"
        );
    }
    for &(r, _, ready) in obs {
        assert!(
            r <= spec + surge,
            "{what}: replicas {r} > {spec}+{surge}: {obs:?}"
        );
        assert!(
            ready >= spec - unavailable,
            "{what}: readyReplicas {ready} < {spec}-{unavailable}: {obs:?}"
        );
    }
    assert!(
        obs.iter().any(|&(r, _, _)| r > spec) || surge == 0,
        "{what}: never surged: {obs:?}"
    );
    assert_eq!(obs.last(), Some(&(spec, spec, spec)), "{what}: {obs:?}");
}

#[tokio::test]
async fn rollout_upgrade_rolls_control_plane_first_then_one_md_at_a_time_within_surge() {
    let env = env().await;
    let mgmt = env.mgmt.clone();
    let mut rec = Recorder::new(&mgmt);
    mgmt.create(&gvr_cluster(), cluster_obj("roll", OLD_TKR, 3, &[3, 2]))
        .expect("create");
    wait_ready(&env, &mut rec, "roll").await;
    let md0 = name(&md_of(&mgmt, "roll", "md-0"));
    let md1 = name(&md_of(&mgmt, "roll", "md-1"));
    let kcp = name(&kcp_of(&mgmt, "roll"));
    // Rollout strategies on the MachineDeployments: an integer and a percentage (rounded up).
    mgmt.patch_merge(
        &gvr_md(),
        Some(NS),
        &md0,
        json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}}}),
    )
    .unwrap();
    mgmt.patch_merge(
        &gvr_md(),
        Some(NS),
        &md1,
        json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%"}}}}),
    )
    .unwrap();
    rec.wait(&env.ctrl, "strategies observed", || {
        (settled(&mgmt.get(&gvr_md(), Some(NS), &md0)?)
            && settled(&mgmt.get(&gvr_md(), Some(NS), &md1)?))
        .then_some(())
    })
    .await;
    let before: BTreeSet<String> = of_cluster(mgmt.list(&gvr_machine(), Some(NS)), "roll")
        .iter()
        .map(name)
        .collect();
    assert_eq!(before.len(), 8);
    let workload = env.emu.cluster("roll").expect("workload");
    assert_eq!(workload.kubernetes_version(), OLD_K8S);

    rec.events.clear();
    mgmt.patch_merge(
        &gvr_cluster(),
        Some(NS),
        "roll",
        json!({"spec": {"topology": {"version": TKR}}}),
    )
    .expect("upgrade");
    rec.wait(&env.ctrl, "every MachineDeployment upgraded", || {
        let done = |n: &str| {
            mgmt.get(&gvr_md(), Some(NS), n)
                .is_some_and(|m| m["spec"]["template"]["spec"]["version"] == K8S && settled(&m))
        };
        (done(&md0) && done(&md1)).then_some(())
    })
    .await;

    // Every machine was replaced: new names, new version, one Node each.
    let after = of_cluster(mgmt.list(&gvr_machine(), Some(NS)), "roll");
    assert_eq!(after.len(), 8);
    for m in &after {
        assert!(
            !before.contains(&name(m)),
            "{} survived the upgrade",
            name(m)
        );
        assert_eq!(m["spec"]["version"], K8S);
        assert_eq!(m["status"]["phase"], "Running");
    }
    let nodes = workload.list(&gvr_node(), None);
    assert_eq!(nodes.len(), 8);
    assert!(nodes
        .iter()
        .all(|n| n["status"]["nodeInfo"]["kubeletVersion"] == K8S));
    assert_eq!(workload.kubernetes_version(), K8S);
    let deleted: BTreeSet<String> = rec
        .of("machines")
        .into_iter()
        .filter(|(k, _)| *k == "DELETED")
        .map(|(_, m)| name(m))
        .collect();
    assert_eq!(deleted, before, "the old machines were deleted");
    // MD machines are named after a machine set per template and version.
    for m in after
        .iter()
        .filter(|m| m["metadata"]["ownerReferences"][0]["name"] == md0)
    {
        let set = m["metadata"]["labels"]["cluster.x-k8s.io/set-name"]
            .as_str()
            .unwrap();
        assert!(set.starts_with(&format!("{md0}-")), "{set}");
        assert!(name(m).starts_with(&format!("{set}-")));
    }

    // Rolling-update invariants.
    assert_rolling(
        "KCP",
        &observed(&rec, "kubeadmcontrolplanes", &kcp),
        3,
        1,
        0,
    );
    assert_rolling("md-0", &observed(&rec, "machinedeployments", &md0), 3, 2, 0);
    assert_rolling("md-1", &observed(&rec, "machinedeployments", &md1), 2, 1, 0);
    let kcp_events = rec.of("kubeadmcontrolplanes");
    assert!(
        kcp_events.iter().any(|(_, k)| {
            k["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "MachinesSpecUpToDate"
                        && c["status"] == "False"
                        && c["reason"] == "RollingUpdateInProgress"
                })
            })
        }),
        "MachinesSpecUpToDate=False during the KCP roll"
    );
    // The KCP rolled one machine at a time: at most one control plane machine was provisioning.
    let mut provisioning: BTreeSet<String> = BTreeSet::new();
    for (kind, m) in rec.of("machines") {
        if m["metadata"]["labels"]
            .get("cluster.x-k8s.io/control-plane")
            .is_none()
        {
            continue;
        }
        if kind != "DELETED" && m["status"]["phase"] == "Provisioning" {
            provisioning.insert(name(m));
        } else {
            provisioning.remove(&name(m));
        }
        assert!(provisioning.len() <= 1, "{provisioning:?}");
    }

    // Order: the KCP finished before any MD picked up the version; then one MD at a time.
    let idx = |pred: &dyn Fn(&ChangeEvent) -> bool| rec.events.iter().position(pred);
    let kcp_done = idx(&|e| {
        e.gvr.plural == "kubeadmcontrolplanes"
            && name(&e.object) == kcp
            && e.object["status"]["version"] == K8S
            && settled(&e.object)
    })
    .expect("KCP done");
    let md_started = |md: &str| {
        let md = md.to_string();
        idx(&move |e: &ChangeEvent| {
            e.gvr.plural == "machinedeployments"
                && name(&e.object) == md
                && e.object["spec"]["template"]["spec"]["version"] == K8S
        })
        .expect("MD version changed")
    };
    let md_done = |md: &str| {
        let md = md.to_string();
        idx(&move |e: &ChangeEvent| {
            e.gvr.plural == "machinedeployments"
                && name(&e.object) == md
                && e.object["spec"]["template"]["spec"]["version"] == K8S
                && settled(&e.object)
        })
        .expect("MD done")
    };
    let (s0, s1) = (md_started(&md0), md_started(&md1));
    assert!(
        kcp_done < s0 && kcp_done < s1,
        "KCP first: {kcp_done} {s0} {s1}"
    );
    let (first, second, first_name) = if s0 < s1 {
        (s0, s1, &md0)
    } else {
        (s1, s0, &md1)
    };
    assert!(first < second);
    assert!(
        md_done(first_name) < second,
        "the second MD started only after the first finished"
    );
    // No MD machine at the new version existed before the KCP finished.
    let first_new_worker = idx(&|e| {
        e.gvr.plural == "machines"
            && e.object["metadata"]["labels"]
                .get("cluster.x-k8s.io/control-plane")
                .is_none()
            && e.object["spec"]["version"] == K8S
    })
    .expect("new worker machine");
    assert!(kcp_done < first_new_worker);
    let c = mgmt.get(&gvr_cluster(), Some(NS), "roll").unwrap();
    assert_eq!(cond_status(&c, "Ready").as_deref(), Some("True"));
}

/// The `spec.topology` of a Cluster with `f` applied, written back as a merge patch.
fn patch_topology(mgmt: &EmulatedCluster, cluster: &str, f: impl FnOnce(&mut Value)) {
    let c = mgmt.get(&gvr_cluster(), Some(NS), cluster).unwrap();
    let mut topology = c["spec"]["topology"].clone();
    f(&mut topology);
    mgmt.patch_merge(
        &gvr_cluster(),
        Some(NS),
        cluster,
        json!({"spec": {"topology": topology}}),
    )
    .expect("patch topology");
}

#[tokio::test]
async fn rollout_instance_type_change_rotates_the_template_and_replaces_only_those_machines() {
    let env = env().await;
    let mgmt = env.mgmt.clone();
    let mut rec = Recorder::new(&mgmt);
    mgmt.create(&gvr_cluster(), cluster_obj("it", TKR, 1, &[2, 2]))
        .expect("create");
    wait_ready(&env, &mut rec, "it").await;
    let md0 = md_of(&mgmt, "it", "md-0");
    let md1 = md_of(&mgmt, "it", "md-1");
    let kcp = kcp_of(&mgmt, "it");
    let tpl = |o: &Value, ptr: &str| o.pointer(ptr).and_then(Value::as_str).unwrap().to_string();
    const MD_TPL: &str = "/spec/template/spec/infrastructureRef/name";
    const CP_TPL: &str = "/spec/machineTemplate/infrastructureRef/name";
    let md1_tpl = tpl(&md1, MD_TPL);
    // The topology's AWSMachineTemplates exist with the variables' instance types.
    let t = mgmt
        .get(&gvr_amt(), Some(NS), &md1_tpl)
        .expect("MD template");
    assert_eq!(t["spec"]["template"]["spec"]["instanceType"], "m5.large");
    assert_eq!(t["spec"]["template"]["spec"]["rootVolume"]["size"], 80);
    let cp_tpl = tpl(&kcp, CP_TPL);
    let t = mgmt
        .get(&gvr_amt(), Some(NS), &cp_tpl)
        .expect("CP template");
    assert_eq!(t["spec"]["template"]["spec"]["instanceType"], "t3.large");
    let (m0, m1, mcp) = (
        machines_of(&mgmt, &name(&md0)),
        machines_of(&mgmt, &name(&md1)),
        machines_of(&mgmt, &name(&kcp)),
    );
    assert_eq!((m0.len(), m1.len(), mcp.len()), (2, 2, 1));

    // md-1 gets a larger instance type through its variable overrides.
    rec.events.clear();
    patch_topology(&mgmt, "it", |t| {
        t["workers"]["machineDeployments"][1]["variables"] = json!({"overrides": [
            {"name": "worker", "value": {"instanceType": "m5.xlarge", "rootVolume": {"sizeGiB": 80}}}]});
    });
    let md1_name = name(&md1);
    let done = rec
        .wait(&env.ctrl, "md-1 rolled to the new template", || {
            mgmt.get(&gvr_md(), Some(NS), &md1_name)
                .filter(|m| tpl(m, MD_TPL) != md1_tpl && settled(m))
        })
        .await;
    let new_tpl = tpl(&done, MD_TPL);
    assert!(new_tpl.starts_with("it-md-1-infra-"), "{new_tpl}");
    let t = mgmt
        .get(&gvr_amt(), Some(NS), &new_tpl)
        .expect("rotated template");
    assert_eq!(t["spec"]["template"]["spec"]["instanceType"], "m5.xlarge");
    assert!(
        mgmt.get(&gvr_amt(), Some(NS), &md1_tpl).is_none(),
        "old template deleted"
    );
    let m1_after = machines_of(&mgmt, &md1_name);
    assert_eq!(m1_after.len(), 2);
    assert!(
        m1_after.is_disjoint(&m1),
        "md-1 machines replaced: {m1:?} {m1_after:?}"
    );
    assert_eq!(machines_of(&mgmt, &name(&md0)), m0, "md-0 untouched");
    assert_eq!(
        machines_of(&mgmt, &name(&kcp)),
        mcp,
        "control plane untouched"
    );
    assert_eq!(tpl(&md_of(&mgmt, "it", "md-0"), MD_TPL), tpl(&md0, MD_TPL));
    assert_rolling(
        "md-1",
        &observed(&rec, "machinedeployments", &md1_name),
        2,
        1,
        0,
    );
    assert!(
        observed(&rec, "machinedeployments", &name(&md0)).len() <= 1,
        "md-0 status unchanged"
    );

    // The control plane instance type: a new KCP template and a one-by-one replacement.
    rec.events.clear();
    patch_topology(&mgmt, "it", |t| {
        for v in t["variables"].as_array_mut().unwrap() {
            if v["name"] == "controlPlane" {
                v["value"]["instanceType"] = json!("t3.xlarge");
            }
        }
    });
    let kcp_name = name(&kcp);
    let done = rec
        .wait(&env.ctrl, "KCP rolled to the new template", || {
            mgmt.get(&gvr_kcp(), Some(NS), &kcp_name)
                .filter(|k| tpl(k, CP_TPL) != cp_tpl && settled(k))
        })
        .await;
    let t = mgmt
        .get(&gvr_amt(), Some(NS), &tpl(&done, CP_TPL))
        .expect("rotated CP template");
    assert_eq!(t["spec"]["template"]["spec"]["instanceType"], "t3.xlarge");
    assert!(tpl(&done, CP_TPL).starts_with("it-control-plane-"));
    let mcp_after = machines_of(&mgmt, &kcp_name);
    assert_eq!(mcp_after.len(), 1);
    assert!(mcp_after.is_disjoint(&mcp));
    assert_eq!(machines_of(&mgmt, &name(&md0)), m0);
    assert_eq!(machines_of(&mgmt, &md1_name), m1_after);
    assert_rolling(
        "KCP",
        &observed(&rec, "kubeadmcontrolplanes", &kcp_name),
        1,
        1,
        0,
    );
    assert!(rec.of("kubeadmcontrolplanes").iter().any(|(_, k)| {
        k["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "MachinesSpecUpToDate" && c["status"] == "False")
        })
    }));
    assert_eq!(done["status"]["version"], K8S);
}

#[tokio::test]
async fn rollout_replicas_change_scales_without_replacing_machines() {
    let env = env().await;
    let mgmt = env.mgmt.clone();
    let mut rec = Recorder::new(&mgmt);
    mgmt.create(&gvr_cluster(), cluster_obj("sc", TKR, 1, &[1]))
        .expect("create");
    wait_ready(&env, &mut rec, "sc").await;
    let md = name(&md_of(&mgmt, "sc", "md-0"));
    let kcp = name(&kcp_of(&mgmt, "sc"));
    let (m0, mcp) = (machines_of(&mgmt, &md), machines_of(&mgmt, &kcp));
    let workload = env.emu.cluster("sc").unwrap();

    patch_topology(&mgmt, "sc", |t| {
        t["controlPlane"]["replicas"] = json!(3);
        t["workers"]["machineDeployments"][0]["replicas"] = json!(3);
    });
    rec.wait(&env.ctrl, "scaled up", || {
        let m = mgmt.get(&gvr_md(), Some(NS), &md)?;
        let k = mgmt.get(&gvr_kcp(), Some(NS), &kcp)?;
        (m["spec"]["replicas"] == 3 && settled(&m) && k["spec"]["replicas"] == 3 && settled(&k))
            .then_some(())
    })
    .await;
    let m_up = machines_of(&mgmt, &md);
    let cp_up = machines_of(&mgmt, &kcp);
    assert_eq!((m_up.len(), cp_up.len()), (3, 3));
    assert!(m0.is_subset(&m_up), "existing worker kept");
    assert!(mcp.is_subset(&cp_up), "existing control plane machine kept");
    assert_eq!(workload.list(&gvr_node(), None).len(), 6);
    let deleted = rec
        .of("machines")
        .iter()
        .filter(|(k, _)| *k == "DELETED")
        .count();
    assert_eq!(deleted, 0, "scaling up deletes nothing");
    // The KCP scaled up one machine at a time; the MD had both new machines at once.
    let kcp_obs = observed(&rec, "kubeadmcontrolplanes", &kcp);
    for w in kcp_obs.windows(2) {
        assert!(w[1].0 - w[0].0 <= 1, "{kcp_obs:?}");
    }
    let md_obs = observed(&rec, "machinedeployments", &md);
    assert!(
        md_obs.iter().all(|&(r, u, _)| r == u && r <= 3),
        "{md_obs:?}"
    );
    let md_events = rec.of("machinedeployments");
    assert!(md_events
        .iter()
        .any(|(_, m)| m["status"]["phase"] == "ScalingUp" && m["spec"]["replicas"] == 3));

    rec.events.clear();
    patch_topology(&mgmt, "sc", |t| {
        t["workers"]["machineDeployments"][0]["replicas"] = json!(1);
    });
    rec.wait(&env.ctrl, "scaled down", || {
        let m = mgmt.get(&gvr_md(), Some(NS), &md)?;
        (m["spec"]["replicas"] == 1 && settled(&m)).then_some(())
    })
    .await;
    assert_eq!(machines_of(&mgmt, &md), m0, "the newest machines go first");
    assert_eq!(machines_of(&mgmt, &kcp), cp_up);
    assert_eq!(workload.list(&gvr_node(), None).len(), 4);
    let created = rec
        .of("machines")
        .iter()
        .filter(|(k, _)| *k == "ADDED")
        .count();
    assert_eq!(created, 0, "scaling down creates nothing");
}

#[tokio::test]
async fn rollout_cluster_deletion_removes_everything_and_stops_the_workload_cluster() {
    let env = env().await;
    let mgmt = env.mgmt.clone();
    let mut rec = Recorder::new(&mgmt);
    mgmt.create(&gvr_cluster(), cluster_obj("gone", TKR, 1, &[2]))
        .expect("create");
    wait_ready(&env, &mut rec, "gone").await;
    let workload = env.emu.cluster("gone").unwrap();
    let client = workload.client().await.expect("workload client");
    let version = client
        .apiserver_version()
        .await
        .expect("workload API answers");
    assert_eq!(version.git_version, K8S);
    assert!(mgmt.get(&gvr_cb(), Some(NS), "gone").is_some());
    assert!(!of_cluster(mgmt.list(&gvr_amt(), Some(NS)), "gone").is_empty());

    rec.events.clear();
    mgmt.delete(&gvr_cluster(), Some(NS), "gone")
        .expect("delete");
    rec.wait(&env.ctrl, "Cluster gone", || {
        mgmt.get(&gvr_cluster(), Some(NS), "gone")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(of_cluster(mgmt.list(&gvr_md(), Some(NS)), "gone").is_empty());
    assert!(of_cluster(mgmt.list(&gvr_kcp(), Some(NS)), "gone").is_empty());
    assert!(of_cluster(mgmt.list(&gvr_machine(), Some(NS)), "gone").is_empty());
    assert!(of_cluster(mgmt.list(&gvr_aws(), Some(NS)), "gone").is_empty());
    assert!(of_cluster(mgmt.list(&gvr_amt(), Some(NS)), "gone").is_empty());
    assert!(mgmt
        .list(&gvr_mhc(), Some(NS))
        .iter()
        .all(|m| m["spec"]["clusterName"] != "gone"));
    assert!(mgmt.get(&gvr_cb(), Some(NS), "gone").is_none());
    assert!(mgmt
        .get(&gvr_pkgi(), Some(NS), "gone-kapp-controller")
        .is_none());
    assert!(mgmt
        .get(&gvr_secret(), Some(NS), "gone-kubeconfig")
        .is_none());
    assert!(workload.list(&gvr_node(), None).is_empty(), "nodes drained");
    assert!(
        client.apiserver_version().await.is_err(),
        "the workload API server no longer answers"
    );

    // The order of the deletion, from the change stream.
    let cluster_events = rec.of("clusters");
    let deleting_at = rec
        .events
        .iter()
        .position(|e| e.gvr.plural == "clusters" && e.object["status"]["phase"] == "Deleting")
        .expect("phase Deleting");
    assert!(cluster_events
        .iter()
        .any(
            |(_, c)| c["metadata"]["finalizers"][0] == "cluster.cluster.x-k8s.io"
                && c["status"]["phase"] == "Deleting"
        ));
    let deleted_at = |plural: &str| {
        rec.events
            .iter()
            .position(|e| e.gvr.plural == plural && e.kind == "DELETED")
            .unwrap_or_else(|| panic!("{plural} deleted"))
    };
    let (md_at, kcp_at, aws_at, secret_at, cluster_at) = (
        deleted_at("machinedeployments"),
        deleted_at("kubeadmcontrolplanes"),
        deleted_at("awsclusters"),
        deleted_at("secrets"),
        deleted_at("clusters"),
    );
    assert!(deleting_at < md_at, "Deleting before anything goes");
    assert!(md_at < kcp_at, "workers before the control plane");
    assert!(kcp_at < aws_at, "control plane before the infrastructure");
    assert!(aws_at <= secret_at && secret_at < cluster_at);
    // The Cluster disappeared only once its finalizer was removed.
    let last: BTreeMap<&str, &Value> = cluster_events
        .iter()
        .filter(|(k, _)| *k == "DELETED")
        .map(|(k, c)| (*k, *c))
        .collect();
    assert!(last["DELETED"]["metadata"].get("finalizers").is_none());

    // A new Cluster of the same name gets a serving workload cluster again.
    mgmt.create(&gvr_cluster(), cluster_obj("gone", TKR, 1, &[1]))
        .expect("re-create");
    wait_ready(&env, &mut rec, "gone").await;
    let client = env.emu.cluster("gone").unwrap().client().await.unwrap();
    assert!(client.apiserver_version().await.is_ok());
}

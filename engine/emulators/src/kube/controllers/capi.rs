//! Simulated Cluster API controllers on the management cluster: the topology controller
//! (ClusterClass-based Clusters), the Cluster, KubeadmControlPlane, MachineDeployment and
//! MachineHealthCheck controllers, and CAPA's AWSCluster controller.
//!
//! Progress per Cluster, one step per tick (docs/tanzu-apis.md §2.2, §6; docs/tkg2-class-based.md §5, §6):
//! 1. topology objects created (KubeadmControlPlane, MachineDeployments named
//!    `<cluster>-<md name>-xxxxx`, AWSCluster, and the ClusterClass's MachineHealthChecks named
//!    after the KCP and each MD), `TopologyReconciled=True`, phase `Pending`;
//! 2. phase `Provisioning`, `InfrastructureReady=False` (`WaitingForInfrastructure`);
//! 3. AWSCluster ready, `spec.controlPlaneEndpoint` set, `infrastructureReady: true`, phase `Provisioned`
//!    (or phase `Failed` when the Cluster carries [`FAIL_ANNOTATION`]);
//! 4. `ControlPlaneInitialized=True`: the workload cluster is created and seeded, the
//!    `<cluster>-kubeconfig` Secret is written; from then on the addons manager keeps the
//!    ClusterBootstrap `<cluster>` (kapp, cni per the `cni` variable, csi; no cpi), the
//!    management-side PackageInstall `<cluster>-kapp-controller` and the workload PackageInstalls
//!    `<cluster>-antrea|calico` and `<cluster>-aws-ebs-csi-driver` in `tkg-system`;
//! 5. KubeadmControlPlane `readyReplicas` 1..N: its Machines are created one at a time, each
//!    the tick after the previous one came up, then `ControlPlaneReady=True`;
//! 6. each MachineDeployment creates all its Machines at once; they come up the next tick
//!    (`ScalingUp` → `Running`), then `Ready=True`.
//!
//! Paused Clusters are left alone, except that one paused by the cluster-pause webhook for a new
//! TKR gets `status.resolvedTKR` in its ClusterBootstrap (one tick) and is then unpaused. With
//! [`super::TopologyFaults`], every Nth topology reconcile of a Cluster skips the sync and shows
//! `TopologyReconciled=False` (severity Error, reason `TopologyReconcileFailed`) for one tick.
//! The management cluster's own Cluster (label `cluster-role.tkg.tanzu.vmware.com/management`)
//! is not reconciled.
//!
//! A tick reconciles only the Clusters something happened to since their last reconcile, as
//! Cluster API reconciles on watch events: a change of the Cluster or of an object carrying its
//! cluster-name label (Cluster API's or TKG's) or owned by it, a change of its workload cluster,
//! or a reconcile of its own that wrote or failed. A change attributed to no Cluster (a
//! ClusterClass, a TKR, a Namespace) or lost change events make the next tick reconcile every
//! Cluster. MachineHealthChecks are reconciled with their Cluster, garbage collection runs after
//! creations and deletions, and ClusterClass propagation after a ClusterClass or Namespace
//! change. Objects are read shared from the store, never copied for a pass. So a fleet of idle
//! Clusters costs one resourceVersion lookup per workload cluster per tick.
//!
//! # Machines and rollouts
//! Machines are the source of truth: KCP and MD status is computed from the Machines they own
//! (controller ownerReference) every tick. A Machine is created `Provisioning` (no `nodeRef`) and
//! comes up the next tick (`Running`, `providerID`, `nodeRef` to a new Node of the workload
//! cluster at the Machine's `spec.version`). A Machine is *up to date* when its `spec.version` is
//! the owner's version (KCP `spec.version`, MD `spec.template.spec.version`) and it was created
//! from the owner's current infrastructure template (KCP `spec.machineTemplate.infrastructureRef`,
//! MD `spec.template.spec.infrastructureRef`; recorded in the Machine annotation
//! `emulator.tkgops.dev/infra-template`). Machines get new names (`<kcp>-xxxxx`,
//! `<md>-<set>-xxxxx` where `<set>` follows version and template as a new MachineSet would, label
//! `cluster.x-k8s.io/set-name`), so `kubectl get machines` shows a roll.
//!
//! Each tick, per owner, as CAPI's `rolloutRolling` (scale up the new set, then scale down old):
//! 1. Machines created last tick come up;
//! 2. MD: up to `min(spec + maxSurge - machines, spec - upToDate)` new Machines are created;
//!    KCP: one, only when no Machine is still provisioning;
//! 3. outdated Machines that are not up are deleted; outdated ready ones are deleted while
//!    `ready - 1 >= spec - maxUnavailable` (KCP: at most one per tick, and with maxSurge 1 only
//!    while there are more Machines than `spec.replicas`); once nothing is outdated, the excess
//!    over `spec.replicas` goes (not-yet-up first, then the newest). Deleting a Machine deletes its
//!    Node.
//!
//! MD strategy: `spec.strategy.rollingUpdate.maxSurge` (default 1) and `maxUnavailable` (default
//! 0), integers or percentages of `spec.replicas` (surge rounded up, unavailable down; both 0 is
//! treated as unavailable 1). KCP: `spec.rolloutStrategy.rollingUpdate.maxSurge` 0 or 1 (default
//! 1; with 0 an old Machine goes first). Hence during a roll `status.replicas <= spec + maxSurge`,
//! `updatedReplicas` rises by at most maxSurge per tick (maxSurge + maxUnavailable when that is
//! set, as in CAPI) and `readyReplicas >= spec - maxUnavailable`.
//!
//! Status: `replicas` (all Machines), `updatedReplicas` (up to date), `readyReplicas` (up);
//! MD `availableReplicas = readyReplicas`, `unavailableReplicas = max(spec - available, 0)`, phase
//! `ScalingUp` (ready < spec), `ScalingDown` (more Machines than spec, also while surging) or
//! `Running`, conditions `Available` (ready >= spec - maxUnavailable), `MachinesReady`, `Ready`;
//! KCP `version` = the lowest Machine version, `unavailableReplicas = replicas - ready`,
//! `MachinesSpecUpToDate=False` (Warning, `RollingUpdateInProgress`, "Rolling N replicas with
//! outdated spec (M replicas up to date)") while outdated Machines exist, `Resized=False`
//! (`ScalingUp`/`ScalingDown`) while the count differs from spec outside a roll, `Ready`. The
//! workload API server's `/version` follows the KCP `status.version`.
//!
//! Topology controller (what starts a rollout):
//! - `spec.topology.version` goes to the KCP at once; an MD gets it only when the KCP runs it and
//!   is neither rolling nor scaling (`status.version`, `replicas`, `updatedReplicas`,
//!   `readyReplicas` all at spec, generation observed) and no other MD of the Cluster is rolling
//!   out (CAPI's `IsRollingOut`), so MDs upgrade one at a time (docs/tkg2-class-based.md §8).
//! - The AWSMachineTemplates of the control plane (`<cluster>-control-plane-xxxxx`, from the
//!   `controlPlane` variable) and of each MD (`<cluster>-<md>-infra-xxxxx`, from the MD's
//!   `variables.overrides` entry `worker` or else the `worker` variable): `instanceType`,
//!   `rootVolume.size` (`sizeGiB`), `sshKeyName`, TKG's instance profiles. When the desired spec
//!   differs, a new template with a new name is written, the KCP/MD is pointed at it and the old
//!   one deleted: a rolling replacement as for a version. Template changes apply at once, to
//!   every affected owner (as CAPI; only versions are sequenced).
//! - `controlPlane.replicas` / `machineDeployments[].replicas` only scale.
//!
//! Deletion (Cluster with `deletionTimestamp`), one step per tick, see `reconcile_deletion`:
//! phase `Deleting`; MDs, worker Machines and Nodes, MHCs; KCP and control plane Machines;
//! AWSCluster, templates, ClusterBootstrap, `<cluster>-kapp-controller`, kubeconfig Secret, and
//! the workload API server stops answering (dropped connections, until a Cluster of that name
//! initializes again); then the finalizer `cluster.cluster.x-k8s.io` is removed.
//!
//! Leniencies: no MachineSet objects (only their names), no AWSMachine or KubeadmConfig objects,
//! no drain or `nodeDeletionTimeout`, `strategy.type: OnDelete` and `minReadySeconds` ignored, no
//! AMI in the AWSMachineTemplates (TKR_DATA is not read), the ClusterClass's own templates are not
//! created; plan-based (legacy) Clusters roll on KCP/MD version or template-ref changes but their
//! MDs are not sequenced; MHCs do not remediate (an unhealthy Node only lowers
//! `currentHealthy`, at once, without waiting for the condition's `timeout`); the machine-creation order (serials in the
//! annotation `emulator.tkgops.dev/machine-serial`) is kept on the owner.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use crate::faults::{Fault, FaultAction};

use super::super::{ChangeEvent, EmulatedCluster, KubeEmulator};
use super::admission::PAUSED_ANNOTATION;
use super::bootstrap::{shipped_package, ANTREA_PKG, EBS_CSI_PKG, KAPP_CONTROLLER_PKG};
use super::catalog::{self, TKR_LABEL};
use super::util::*;
use super::{ControllerError, ControllerOptions, Reconciler, Shared, TopologyFaults};

/// Annotation that makes a Cluster fail after `Provisioning`; its value becomes the failure message.
pub const FAIL_ANNOTATION: &str = "emulator.tkgops.dev/fail";
/// Annotation on KubeadmControlPlanes and MachineDeployments the topology controller creates: the
/// Kubernetes version they were created at (informational; rollouts follow the Machines).
pub const MACHINES_VERSION_ANNOTATION: &str = "emulator.tkgops.dev/machines-version";

const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
const TOPOLOGY_OWNED_LABEL: &str = "topology.cluster.x-k8s.io/owned";
const DEPLOYMENT_NAME_LABEL: &str = "topology.cluster.x-k8s.io/deployment-name";
const KUBECONFIG_SECRET_TYPE: &str = "cluster.x-k8s.io/secret";
const API_SERVER_PORT: i64 = 6443;
/// Label of the management cluster's own Cluster object.
const MANAGEMENT_ROLE_LABEL: &str = "cluster-role.tkg.tanzu.vmware.com/management";
/// Namespace of the core PackageInstalls in a workload cluster (§6 step 5).
const CORE_PACKAGES_NAMESPACE: &str = "tkg-system";
/// ServiceAccount the emulated core PackageInstalls of a workload cluster run as (not verified).
const CORE_PACKAGES_SA: &str = "tkg-core-packages-sa";
/// A ClusterBootstrap package entry `{refName: "<pkg>.<version>", valuesFrom.providerRef}`.
fn bootstrap_entry(cluster: &str, pkg: (&str, &str, &str, &str)) -> Value {
    let short = pkg.0.split('.').next().unwrap_or(pkg.0);
    json!({"refName": format!("{}.{}", pkg.0, pkg.1),
           "valuesFrom": {"providerRef": {"apiGroup": pkg.2, "kind": pkg.3, "name": format!("{cluster}-{short}-package")}}})
}

/// A PackageInstall `<cluster>-<first dot-segment of refName>` (§6 step 5).
fn core_package_install(
    cluster: &str,
    ns: &str,
    pkg: (&str, &str, &str, &str),
    target: Value,
) -> Value {
    let short = pkg.0.split('.').next().unwrap_or(pkg.0);
    let mut spec = json!({
        "packageRef": {"refName": pkg.0, "versionSelection": {"constraints": pkg.1}},
        "noopDelete": true,
    });
    if let Some(m) = target.as_object() {
        for (k, v) in m {
            spec[k] = v.clone();
        }
    }
    json!({
        "apiVersion": "packaging.carvel.dev/v1alpha1",
        "kind": "PackageInstall",
        "metadata": {"name": format!("{cluster}-{short}"), "namespace": ns,
                     "labels": {"tkg.tanzu.vmware.com/cluster-name": cluster},
                     "annotations": {"tkg.tanzu.vmware.com/tanzu-package-ClusterBootstrap": cluster}},
        "spec": spec,
    })
}

/// The Cluster controller's finalizer (CAPI `ClusterFinalizer`).
const CLUSTER_FINALIZER: &str = "cluster.cluster.x-k8s.io";

/// The value of annotation `key` in the annotations map at `ptr`.
fn annotation_at<'a>(obj: &'a Value, ptr: &str, key: &str) -> Option<&'a str> {
    obj.pointer(ptr)?.get(key)?.as_str()
}

/// Whether a MachineDeployment belongs to the Cluster `name` (`spec.clusterName` or the cluster-name label).
fn belongs_to(md: &Value, name: &str) -> bool {
    str_at(md, "/spec/clusterName") == Some(name) || label(md, CLUSTER_NAME_LABEL) == Some(name)
}

/// The MachineDeployments of cluster `name` ([`belongs_to`]): looked up by the cluster-name
/// label (topology MachineDeployments carry it), else by scanning for `spec.clusterName`.
fn cluster_mds(mgmt: &EmulatedCluster, ns: Option<&str>, name: &str) -> Vec<Value> {
    let labeled = mgmt.list_labeled(&gvr_machine_deployment(), ns, CLUSTER_NAME_LABEL, name);
    if !labeled.is_empty() {
        return labeled;
    }
    mgmt.list(&gvr_machine_deployment(), ns)
        .into_iter()
        .filter(|md| belongs_to(md, name))
        .collect()
}

/// The Cluster API controller set for one management cluster.
pub(crate) struct CapiController {
    emu: KubeEmulator,
    mgmt: EmulatedCluster,
    opts: ControllerOptions,
    shared: Weak<Shared>,
    faults: TopologyFaults,
    /// Topology reconciles per Cluster uid (drives [`TopologyFaults`]).
    reconciles: Mutex<HashMap<String, u64>>,
    /// Workload clusters whose API server was stopped by a Cluster deletion.
    stopped: Mutex<HashSet<String>>,
    /// Clusters `(namespace, name)` to reconcile at the next tick: a change event named them
    /// (the Cluster, or an object carrying its cluster-name label or owned by it), or their
    /// last reconcile wrote or failed.
    dirty: HashSet<(String, String)>,
    /// Every Cluster is reconciled at the next tick: a change the controller cannot attribute to
    /// one Cluster (a ClusterClass, a TKR, …), lost events, or the first tick.
    all_dirty: bool,
    /// The workload clusters' resourceVersion counters at their Cluster's last reconcile (the
    /// reconcile reads the workload cluster too).
    workload_revisions: HashMap<String, u64>,
    /// The namespace of each Cluster with a workload cluster, by name (workload clusters are
    /// named after their Cluster): which Cluster a workload change concerns.
    workload_namespaces: HashMap<String, String>,
    /// A ClusterClass or Namespace changed: the object-propagation controller runs at the next
    /// tick.
    classes_dirty: bool,
    /// Something was created or deleted since the last garbage collection (a Cluster gone, or
    /// an object naming a Cluster that may not exist).
    deletions: bool,
}

/// Owned objects of one Cluster's topology, as stored after this tick's sync.
struct Topology {
    kcp: Value,
    mds: Vec<Value>,
    aws: Value,
    cluster: Value,
}

/// What one tick did to a KubeadmControlPlane or MachineDeployment.
#[derive(PartialEq, Eq)]
enum Rollout {
    /// Still scaling or rolling.
    InProgress,
    /// All replicas ready and up to date.
    Done,
}

fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        namespace_of(obj).unwrap_or(""),
        name_of(obj).unwrap_or("")
    )
}

fn owner_ref(api_version: &str, kind: &str, name: &str, uid: &str, controller: bool) -> Value {
    let mut r = json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid});
    if controller {
        r["controller"] = json!(true);
        r["blockOwnerDeletion"] = json!(true);
    }
    r
}

fn topology_variable<'a>(topology: &'a Value, name: &str) -> Option<&'a Value> {
    topology
        .pointer("/variables")
        .and_then(Value::as_array)?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|v| v.get("value"))
}

/// Kubernetes version and node count (control plane plus worker replicas) of a Cluster, as the TMC
/// agent reports them: from `spec.topology`, or for plan-based Clusters from the KubeadmControlPlane
/// and MachineDeployments.
pub(crate) fn cluster_version_and_nodes(
    mgmt: &EmulatedCluster,
    cluster: &Value,
) -> (Option<String>, i64) {
    if cluster.pointer("/spec/topology").is_some() {
        return (
            str_at(cluster, "/spec/topology/version").map(str::to_string),
            topology_node_count(cluster),
        );
    }
    let name = name_of(cluster).unwrap_or_default();
    let ns = namespace_of(cluster);
    let kcp =
        str_at(cluster, "/spec/controlPlaneRef/name").and_then(|k| mgmt.get(&gvr_kcp(), ns, k));
    let version = kcp
        .as_ref()
        .and_then(|k| str_at(k, "/spec/version"))
        .map(str::to_string);
    let cp = kcp
        .as_ref()
        .map(|k| i64_at(k, "/spec/replicas").unwrap_or(1))
        .unwrap_or(0);
    let workers: i64 = cluster_mds(mgmt, ns, name)
        .iter()
        .map(|md| i64_at(md, "/spec/replicas").unwrap_or(1))
        .sum();
    (version, cp + workers)
}

/// Control plane plus worker replicas declared by a Cluster's topology.
fn topology_node_count(cluster: &Value) -> i64 {
    let cp = i64_at(cluster, "/spec/topology/controlPlane/replicas").unwrap_or(1);
    let workers: i64 = cluster
        .pointer("/spec/topology/workers/machineDeployments")
        .and_then(Value::as_array)
        .map(|mds| {
            mds.iter()
                .map(|md| i64_at(md, "/replicas").unwrap_or(1))
                .sum()
        })
        .unwrap_or(0);
    cp + workers
}

impl CapiController {
    pub(crate) fn new(
        emu: KubeEmulator,
        mgmt: EmulatedCluster,
        opts: ControllerOptions,
        shared: Weak<Shared>,
        faults: TopologyFaults,
    ) -> Self {
        CapiController {
            emu,
            mgmt,
            opts,
            shared,
            faults,
            reconciles: Mutex::new(HashMap::new()),
            stopped: Mutex::new(HashSet::new()),
            dirty: HashSet::new(),
            all_dirty: true,
            workload_revisions: HashMap::new(),
            workload_namespaces: HashMap::new(),
            classes_dirty: true,
            deletions: true,
        }
    }

    /// Marks the Cluster a management-cluster change concerns for the next tick: the Cluster
    /// itself, an object with Cluster API's or TKG's cluster-name label, or one a Cluster owns.
    /// A change attributed to no Cluster (a ClusterClass, a TKR, a Namespace…) marks them all.
    fn mark_dirty(&mut self, event: &ChangeEvent) {
        let obj = &event.object;
        if event.kind != "MODIFIED" {
            // Garbage collection looks at created objects (orphans) and deleted Clusters.
            self.deletions = true;
        }
        if same_gvr(&event.gvr, &gvr_cluster_class()) || same_gvr(&event.gvr, &gvr_namespace()) {
            self.classes_dirty = true;
        }
        let ns = namespace_of(obj).unwrap_or("default").to_string();
        let owner = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter()
                    .find(|r| r.get("kind").and_then(Value::as_str) == Some("Cluster"))
                    .and_then(|r| r.get("name").and_then(Value::as_str))
            });
        let cluster = if same_gvr(&event.gvr, &gvr_cluster()) {
            name_of(obj)
        } else {
            // The core PackageInstalls of a ClusterBootstrap carry TKG's cluster-name label.
            label(obj, CLUSTER_NAME_LABEL)
                .or_else(|| label(obj, "tkg.tanzu.vmware.com/cluster-name"))
                .or(owner)
        };
        match cluster {
            Some(c) => {
                self.dirty.insert((ns, c.to_string()));
            }
            None => self.all_dirty = true,
        }
    }

    /// Whether the tick must reconcile `cluster`: marked dirty, all dirty, or its workload
    /// cluster changed since its last reconcile (records the workload cluster's revision). An
    /// idle Cluster is not reconciled, as Cluster API reconciles on changes; [`TopologyFaults`]
    /// count the reconciles that do run.
    fn needs_reconcile(
        &mut self,
        all: bool,
        dirty: &HashSet<(String, String)>,
        cluster: &Value,
    ) -> bool {
        let name = name_of(cluster).unwrap_or_default();
        let ns = namespace_of(cluster).unwrap_or("default");
        let workload = self.emu.cluster(name).map(|w| w.resource_version());
        let workload_changed = match workload {
            Some(rv) => {
                self.workload_namespaces
                    .insert(name.to_string(), ns.to_string());
                self.workload_revisions.insert(name.to_string(), rv) != Some(rv)
            }
            None => false,
        };
        all || workload_changed || dirty.contains(&(ns.to_string(), name.to_string()))
    }

    /// The Clusters a tick considers: every Cluster after an unattributed change (`all`), else
    /// the `dirty` ones and those whose workload cluster changed since their last reconcile, in
    /// namespace/name order. Shared, not copied: a fleet of idle Clusters costs a few lookups.
    fn candidates(&mut self, all: bool, dirty: &HashSet<(String, String)>) -> Vec<Arc<Value>> {
        if all {
            return self.mgmt.list_shared(&gvr_cluster(), None);
        }
        let mut keys: BTreeSet<(String, String)> = dirty.iter().cloned().collect();
        for (name, ns) in &self.workload_namespaces {
            let rv = self.emu.cluster(name).map(|w| w.resource_version());
            if rv.is_some() && rv != self.workload_revisions.get(name).copied() {
                keys.insert((ns.clone(), name.clone()));
            }
        }
        keys.iter()
            .filter_map(|(ns, name)| self.mgmt.get_shared(&gvr_cluster(), Some(ns), name))
            .collect()
    }

    /// Whether this topology reconcile of `cluster` hits the transient fault (every
    /// `faults.transient_every`-th reconcile of each Cluster).
    fn transient_fault(&self, cluster: &Value) -> bool {
        if self.faults.transient_every == 0 {
            return false;
        }
        let Ok(mut counts) = self.reconciles.lock() else {
            return false;
        };
        let n = counts.entry(uid_of(cluster).to_string()).or_insert(0);
        *n += 1;
        *n % self.faults.transient_every == 0
    }

    fn start_workload(&self, workload: &EmulatedCluster) {
        if let Some(shared) = self.shared.upgrade() {
            shared.start_workload(workload, &self.mgmt, &self.opts);
        }
    }

    async fn reconcile_cluster(&self, cluster: &Value) -> Result<(), ControllerError> {
        let Some(name) = name_of(cluster).map(str::to_string) else {
            warn!("Cluster without metadata.name; skipped");
            return Ok(());
        };
        let ns = namespace_of(cluster).unwrap_or("default").to_string();
        if label(cluster, MANAGEMENT_ROLE_LABEL).is_some() {
            // The management cluster's own Cluster: provisioned before the emulator starts.
            return Ok(());
        }
        if cluster.pointer("/metadata/deletionTimestamp").is_some() {
            return self.reconcile_deletion(cluster, &name, &ns);
        }
        if cluster.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
            return self.reconcile_paused(cluster, &name, &ns);
        }
        let cluster = &self.ensure_finalizer(cluster, &ns, &name)?;
        let mut status = status_of(cluster);
        status.insert("observedGeneration".into(), json!(generation_of(cluster)));

        let topology = cluster.pointer("/spec/topology").cloned();
        let topo = match &topology {
            Some(topology) => {
                // Topology controller: the ClusterClass must exist.
                let class = str_at(topology, "/class").unwrap_or("");
                if class.is_empty()
                    || self
                        .mgmt
                        .get(&gvr_cluster_class(), Some(&ns), class)
                        .is_none()
                {
                    let msg = format!(
                        "error reading the ClusterClass: failed to retrieve ClusterClass {ns}/{class}: clusterclasses.cluster.x-k8s.io \"{class}\" not found"
                    );
                    set_condition(
                        &mut status,
                        cond_false(
                            "TopologyReconciled",
                            "Error",
                            "TopologyReconcileFailed",
                            &msg,
                        ),
                    );
                    status.entry("phase").or_insert(json!("Pending"));
                    write_status(&self.mgmt, &gvr_cluster(), cluster, status)?;
                    return Ok(());
                }
                if self.transient_fault(cluster) {
                    let msg = format!(
                        "error reconciling the Cluster topology: failed to patch KubeadmControlPlane {ns}/{name}: {}",
                        self.faults.message
                    );
                    set_condition(
                        &mut status,
                        cond_false(
                            "TopologyReconciled",
                            "Error",
                            "TopologyReconcileFailed",
                            &msg,
                        ),
                    );
                    status.entry("phase").or_insert(json!("Pending"));
                    return self.write_cluster(cluster, status);
                }
                let topo = self.ensure_topology(cluster, &name, &ns, topology)?;
                self.ensure_health_checks(
                    &topo,
                    &name,
                    &ns,
                    str_at(topology, "/class").unwrap_or(""),
                )?;
                set_condition(&mut status, cond_true("TopologyReconciled"));
                if let Some(c) = self.updates_available(cluster) {
                    set_condition(&mut status, c);
                }
                topo
            }
            None => match self.legacy_parts(cluster, &name, &ns) {
                Some(parts) => parts,
                None => {
                    // Plan-based Cluster whose referenced objects do not exist (yet).
                    status.entry("phase").or_insert(json!("Pending"));
                    return self.write_cluster(cluster, status);
                }
            },
        };
        let cluster = &topo.cluster;
        status.insert("observedGeneration".into(), json!(generation_of(cluster)));

        let phase = status
            .get("phase")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match phase.as_str() {
            "" => {
                status.insert("phase".into(), json!("Pending"));
                return self.write_cluster(cluster, status);
            }
            "Failed" => return self.write_cluster(cluster, status),
            "Pending" => {
                status.insert("phase".into(), json!("Provisioning"));
                status.insert("infrastructureReady".into(), json!(false));
                status.insert("controlPlaneReady".into(), json!(false));
                set_condition(
                    &mut status,
                    cond_false(
                        "InfrastructureReady",
                        "Info",
                        "WaitingForInfrastructure",
                        "",
                    ),
                );
                set_condition(
                    &mut status,
                    cond_false(
                        "ControlPlaneInitialized",
                        "Info",
                        "WaitingForControlPlaneProviderInitialized",
                        "",
                    ),
                );
                set_condition(
                    &mut status,
                    cond_false("ControlPlaneReady", "Info", "WaitingForControlPlane", ""),
                );
                set_condition(
                    &mut status,
                    cond_false("Ready", "Info", "WaitingForInfrastructure", ""),
                );
                return self.write_cluster(cluster, status);
            }
            _ => {}
        }

        if let Some(msg) = annotation(cluster, FAIL_ANNOTATION) {
            status.insert("phase".into(), json!("Failed"));
            status.insert("failureReason".into(), json!("CreateError"));
            status.insert("failureMessage".into(), json!(msg));
            set_condition(
                &mut status,
                cond_false("Ready", "Error", "ProvisioningFailed", msg),
            );
            return self.write_cluster(cluster, status);
        }

        if !status
            .get("infrastructureReady")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            let cluster = self.provision_infrastructure(cluster, &topo.aws)?;
            status.insert("observedGeneration".into(), json!(generation_of(&cluster)));
            status.insert("infrastructureReady".into(), json!(true));
            status.insert("phase".into(), json!("Provisioned"));
            set_condition(&mut status, cond_true("InfrastructureReady"));
            set_condition(
                &mut status,
                cond_false("Ready", "Info", "WaitingForControlPlane", ""),
            );
            return self.write_cluster(&cluster, status);
        }

        let region = str_at(&topo.aws, "/spec/region")
            .filter(|r| !r.is_empty())
            .unwrap_or("us-east-1")
            .to_string();
        if !condition_true(cluster, "ControlPlaneInitialized") {
            self.initialize_control_plane(&name, &ns, &topo.kcp, &region)
                .await?;
            set_condition(&mut status, cond_true("ControlPlaneInitialized"));
            return self.write_cluster(cluster, status);
        }

        // Control plane initialized: the workload cluster must exist with its controllers and kubeconfig.
        let workload = match self.emu.cluster(&name) {
            Some(w) => w,
            None => self.create_workload(&name).await?,
        };
        self.start_workload(&workload);
        self.ensure_kubeconfig_secret(&workload, &name, &ns, &topo.kcp)?;
        if cluster.pointer("/spec/topology").is_some() {
            self.ensure_bootstrap(cluster, &workload, &name, &ns)?;
        }

        let kcp_state = self.reconcile_machines(&workload, &topo.kcp, true, &region)?;
        let kcp_now = self.mgmt.get(
            &gvr_kcp(),
            Some(&ns),
            name_of(&topo.kcp).unwrap_or_default(),
        );
        // The workload API server reports the control plane's (lowest) version.
        if let Some(v) = kcp_now
            .as_ref()
            .and_then(|k| str_at(k, "/status/version").map(str::to_string))
            .filter(|v| !v.is_empty())
        {
            if workload.kubernetes_version() != v {
                workload.set_kubernetes_version(&v);
            }
        }
        // Once ready, the Cluster's ControlPlaneReady mirrors the KCP's Ready condition while it
        // rolls (and so does the Cluster's Ready summary); it comes back when the roll is done.
        if status.get("controlPlaneReady").and_then(Value::as_bool) == Some(true) {
            let rolling = kcp_now
                .as_ref()
                .and_then(|k| condition(k, "Ready"))
                .filter(|c| c["status"] == "False" && c["reason"] == "RollingUpdateInProgress");
            if let Some(c) = rolling {
                let msg = str_at(c, "/message").unwrap_or("");
                let mirrored = cond_false(
                    "ControlPlaneReady",
                    "Warning",
                    "RollingUpdateInProgress",
                    msg,
                );
                set_condition(&mut status, mirrored);
                set_condition(
                    &mut status,
                    cond_false("Ready", "Warning", "RollingUpdateInProgress", msg),
                );
            } else if kcp_state == Rollout::Done {
                set_condition(&mut status, cond_true("ControlPlaneReady"));
            }
        }
        if !status
            .get("controlPlaneReady")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            if kcp_state == Rollout::Done {
                status.insert("controlPlaneReady".into(), json!(true));
                set_condition(&mut status, cond_true("ControlPlaneReady"));
                set_condition(
                    &mut status,
                    cond_false("Ready", "Info", "WaitingForAvailableMachines", ""),
                );
            }
            return self.write_cluster(cluster, status);
        }

        let mut all_running = true;
        for md in &topo.mds {
            let state = self.reconcile_machines(&workload, md, false, &region)?;
            all_running &= state == Rollout::Done
                || i64_at(md, "/status/readyReplicas") == i64_at(md, "/spec/replicas");
        }
        let cp_ready = condition_true(
            &json!({"status": Value::Object(status.clone())}),
            "ControlPlaneReady",
        );
        if all_running && cp_ready && !condition_true(cluster, "Ready") {
            set_condition(&mut status, cond_true("Ready"));
        }
        self.write_cluster(cluster, status)
    }

    /// A paused Cluster (spec.paused): CAPI leaves it alone. When the cluster-pause webhook paused
    /// it for a new TKR, the ClusterBootstrap controller first records that TKR in the
    /// ClusterBootstrap (one tick), then unpauses the Cluster (§4 "Cluster pause on update").
    fn reconcile_paused(
        &self,
        cluster: &Value,
        name: &str,
        ns: &str,
    ) -> Result<(), ControllerError> {
        let Some(tkr) = annotation(cluster, PAUSED_ANNOTATION).map(str::to_string) else {
            return Ok(());
        };
        if let Some(cb) = self.mgmt.get(&gvr_cluster_bootstrap(), Some(ns), name) {
            if str_at(&cb, "/status/resolvedTKR") != Some(tkr.as_str()) {
                let mut st = status_of(&cb);
                st.insert("resolvedTKR".into(), json!(tkr));
                write_status(&self.mgmt, &gvr_cluster_bootstrap(), &cb, st)?;
                return Ok(());
            }
        }
        self.mgmt.patch_merge(
            &gvr_cluster(),
            Some(ns),
            name,
            json!({"spec": {"paused": null}, "metadata": {"annotations": {PAUSED_ANNOTATION: null}}}),
        )?;
        Ok(())
    }

    /// Topology controller: the MachineHealthChecks the ClusterClass defines, named after the
    /// KubeadmControlPlane and each MachineDeployment (§5).
    fn ensure_health_checks(
        &self,
        topo: &Topology,
        name: &str,
        ns: &str,
        class_name: &str,
    ) -> Result<(), ControllerError> {
        let Some(class) = self.mgmt.get(&gvr_cluster_class(), Some(ns), class_name) else {
            return Ok(());
        };
        let owner = owner_ref(
            "cluster.x-k8s.io/v1beta1",
            "Cluster",
            name,
            uid_of(&topo.cluster),
            false,
        );
        let labels = json!({CLUSTER_NAME_LABEL: name, TOPOLOGY_OWNED_LABEL: ""});
        let mhc = |mhc_name: &str, selector: Value, spec: &Value| {
            let mut s = spec.clone();
            s["clusterName"] = json!(name);
            s["selector"] = json!({"matchLabels": selector});
            json!({"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineHealthCheck",
                   "metadata": {"name": mhc_name, "namespace": ns, "labels": labels, "ownerReferences": [owner]},
                   "spec": s})
        };
        if let (Some(spec), Some(kcp_name)) = (
            class.pointer("/spec/controlPlane/machineHealthCheck"),
            name_of(&topo.kcp),
        ) {
            let sel = json!({"cluster.x-k8s.io/control-plane": "", CLUSTER_NAME_LABEL: name});
            create_if_absent(
                &self.mgmt,
                &gvr_machine_health_check(),
                mhc(kcp_name, sel, spec),
            )?;
        }
        for md in &topo.mds {
            let md_class = annotation_at(
                md,
                "/spec/template/metadata/annotations",
                "topology.cluster.x-k8s.io/deployment-class",
            )
            .unwrap_or("tkg-worker");
            let spec = class
                .pointer("/spec/workers/machineDeployments")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|m| m.get("class").and_then(Value::as_str) == Some(md_class))
                .and_then(|m| m.get("machineHealthCheck"));
            if let (Some(spec), Some(md_name)) = (spec, name_of(md)) {
                let sel =
                    json!({"cluster.x-k8s.io/deployment-name": md_name, CLUSTER_NAME_LABEL: name});
                create_if_absent(
                    &self.mgmt,
                    &gvr_machine_health_check(),
                    mhc(md_name, sel, spec),
                )?;
            }
        }
        Ok(())
    }

    /// The tkr-status controller's `UpdatesAvailable` condition of a class-based Cluster
    /// (tanzu-framework `tkr/controller/tkr-status/clusterstatus/clusterstatus.go`): the
    /// active, compatible TKRs of the Cluster's minor or the next one that are newer than the
    /// TKR of its `run.tanzu.vmware.com/tkr` label, ascending, as `True` with the message
    /// `[v1 v2 …]`; `False` (severity Info, reason `AlreadyUpToDate`) when there is none;
    /// `None` before the TKR resolver labelled the Cluster. OSImage resolution per update is
    /// not modelled: every compatible TKR resolves.
    fn updates_available(&self, cluster: &Value) -> Option<Value> {
        use super::admission::GoSemver;
        let parse_semver = |v: &str| GoSemver::parse_tolerant(v).map(|g| g.triple());
        let current = label(cluster, TKR_LABEL)?.replace("---", "+");
        let (major, minor, patch) = parse_semver(&current)?;
        let mut updates: Vec<((u64, u64, u64), String)> = self
            .mgmt
            .list(&gvr_tkr(), None)
            .iter()
            .filter(|t| {
                let labels = t.pointer("/metadata/labels");
                ["incompatible", "deactivated"]
                    .iter()
                    .all(|l| labels.and_then(|m| m.get(*l)).is_none())
            })
            .filter_map(|t| {
                let v = t.pointer("/spec/version")?.as_str()?.to_string();
                let parsed = parse_semver(&v)?;
                let same_or_next =
                    parsed.0 == major && (parsed.1 == minor || parsed.1 == minor + 1);
                (same_or_next && parsed > (major, minor, patch)).then_some((parsed, v))
            })
            .collect();
        updates.sort();
        Some(if updates.is_empty() {
            cond_false("UpdatesAvailable", "Info", "AlreadyUpToDate", "")
        } else {
            let mut c = cond_true("UpdatesAvailable");
            let list: Vec<String> = updates.into_iter().map(|(_, v)| v).collect();
            c["message"] = json!(format!("[{}]", list.join(" ")));
            c
        })
    }

    /// The addons manager: ClusterBootstrap `<cluster>` (the one the client created, adopted, else
    /// the TKR's template: Antrea, aws-ebs-csi-driver, kapp-controller; no CPI on AWS), installing
    /// the CNI and CSI it names, the management-side PackageInstall
    /// `<cluster>-kapp-controller` (reconciled here) and the workload-side core PackageInstalls in
    /// `tkg-system` (reconciled by the workload's kapp-controller) (§3.2, §6).
    fn ensure_bootstrap(
        &self,
        cluster: &Value,
        workload: &EmulatedCluster,
        name: &str,
        ns: &str,
    ) -> Result<(), ControllerError> {
        let tkr = label(cluster, TKR_LABEL).unwrap_or("").to_string();
        let owner = owner_ref(
            "cluster.x-k8s.io/v1beta1",
            "Cluster",
            name,
            uid_of(cluster),
            false,
        );
        // A ClusterBootstrap the client created (the Tanzu CLI renders one for calico,
        // customised Antrea or a proxy) is adopted as it is; otherwise the TKR's template
        // (Antrea, the EBS CSI driver, kapp-controller) is cloned
        // (addons/controllers/clusterbootstrap_controller.go).
        let cb = match self.mgmt.get(&gvr_cluster_bootstrap(), Some(ns), name) {
            Some(existing) if existing.pointer("/metadata/ownerReferences").is_none() => {
                self.mgmt.patch_merge(
                    &gvr_cluster_bootstrap(),
                    Some(ns),
                    name,
                    json!({"metadata": {"ownerReferences": [owner]}}),
                )?
            }
            Some(existing) => existing,
            None => create_if_absent(
                &self.mgmt,
                &gvr_cluster_bootstrap(),
                json!({
                    "apiVersion": "run.tanzu.vmware.com/v1alpha3", "kind": "ClusterBootstrap",
                    "metadata": {"name": name, "namespace": ns, "ownerReferences": [owner],
                                 "annotations": {"tkg.tanzu.vmware.com/add-missing-fields-from-tkr": tkr}},
                    "spec": {
                        "cni": bootstrap_entry(name, ANTREA_PKG),
                        "kapp": bootstrap_entry(name, KAPP_CONTROLLER_PKG),
                        "csi": bootstrap_entry(name, EBS_CSI_PKG),
                        "additionalPackages": [],
                    },
                }),
            )?,
        };
        let named = |field: &str| {
            cb.pointer(&format!("/spec/{field}/refName"))
                .and_then(Value::as_str)
                .and_then(shipped_package)
        };
        let cni_pkg = named("cni");
        let csi_pkg = named("csi");
        // Management side: kapp-controller into the workload cluster.
        let kapp = create_if_absent(
            &self.mgmt,
            &gvr_package_install(),
            core_package_install(
                name,
                ns,
                KAPP_CONTROLLER_PKG,
                json!({
                "cluster": {"kubeconfigSecretRef": {"name": format!("{name}-kubeconfig"), "key": "value"}}}),
            ),
        )?;
        if kapp.get("status").is_none() {
            let mut st = Map::new();
            st.insert(
                "conditions".into(),
                json!([{"type": "ReconcileSucceeded", "status": "True"}]),
            );
            st.insert("friendlyDescription".into(), json!("Reconcile succeeded"));
            st.insert("observedGeneration".into(), json!(generation_of(&kapp)));
            st.insert("version".into(), json!(KAPP_CONTROLLER_PKG.1));
            write_status(&self.mgmt, &gvr_package_install(), &kapp, st)?;
        }
        // Workload side: the CNI and CSI packages, installed by the workload's kapp-controller.
        ensure_namespace(workload, CORE_PACKAGES_NAMESPACE)?;
        create_if_absent(
            workload,
            &gvr_service_account(),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": CORE_PACKAGES_SA, "namespace": CORE_PACKAGES_NAMESPACE}}),
        )?;
        let mut all_ok = true;
        for pkg in cni_pkg.into_iter().chain(csi_pkg) {
            create_if_absent(
                workload,
                &gvr_package(),
                json!({"apiVersion": "data.packaging.carvel.dev/v1alpha1", "kind": "Package",
                       "metadata": {"name": format!("{}.{}", pkg.0, pkg.1), "namespace": CORE_PACKAGES_NAMESPACE},
                       "spec": {"refName": pkg.0, "version": pkg.1,
                                "template": {"spec": {"fetch": [{"imgpkgBundle": {"image": format!("projects.registry.vmware.com/tkg/packages/core/{}:v{}", pkg.0.split('.').next().unwrap_or(""), pkg.1.replace('+', "_"))}}],
                                                      "template": [{"ytt": {"paths": ["config/"]}}], "deploy": [{"kapp": {}}]}}}}),
            )?;
            let pi = create_if_absent(
                workload,
                &gvr_package_install(),
                core_package_install(
                    name,
                    CORE_PACKAGES_NAMESPACE,
                    pkg,
                    json!({"serviceAccountName": CORE_PACKAGES_SA}),
                ),
            )?;
            all_ok &= pi
                .pointer("/status/conditions/0/type")
                .and_then(Value::as_str)
                == Some("ReconcileSucceeded");
        }
        let mut st = status_of(&cb);
        if st.get("resolvedTKR").is_none() {
            st.insert("resolvedTKR".into(), json!(tkr));
        }
        set_condition(
            &mut st,
            if all_ok {
                cond_true("Ready")
            } else {
                cond_false(
                    "Ready",
                    "Info",
                    "ReconcilingPackages",
                    "waiting for core packages",
                )
            },
        );
        write_status(&self.mgmt, &gvr_cluster_bootstrap(), &cb, st)?;
        Ok(())
    }

    /// Adds the Cluster controller's finalizer, so a deleted Cluster goes through phase `Deleting`
    /// while its descendants are removed (as with real Cluster API).
    fn ensure_finalizer(
        &self,
        cluster: &Value,
        ns: &str,
        name: &str,
    ) -> Result<Value, ControllerError> {
        let mut finalizers: Vec<Value> = cluster
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if finalizers.iter().any(|f| f == CLUSTER_FINALIZER) {
            return Ok(cluster.clone());
        }
        finalizers.push(json!(CLUSTER_FINALIZER));
        Ok(self.mgmt.patch_merge(
            &gvr_cluster(),
            Some(ns),
            name,
            json!({"metadata": {"finalizers": finalizers}}),
        )?)
    }

    /// Deletion, one step per tick, as CAPI's Cluster controller deletes descendants:
    /// 1. phase `Deleting`, `Ready=False` (reason `Deleting`);
    /// 2. the MachineDeployments, their Machines (and workload Nodes) and the MachineHealthChecks;
    /// 3. the KubeadmControlPlane and the control plane Machines;
    /// 4. the AWSCluster, the topology's AWSMachineTemplates, the ClusterBootstrap, the
    ///    `<cluster>-kapp-controller` PackageInstall and the kubeconfig Secret; the workload
    ///    cluster's API server stops answering (every request gets a dropped connection);
    /// 5. the finalizer is removed, which lets the API server drop the Cluster.
    fn reconcile_deletion(
        &self,
        cluster: &Value,
        name: &str,
        ns: &str,
    ) -> Result<(), ControllerError> {
        if str_at(cluster, "/status/phase") != Some("Deleting") {
            let mut status = status_of(cluster);
            status.insert("phase".into(), json!("Deleting"));
            set_condition(&mut status, cond_false("Ready", "Info", "Deleting", ""));
            return self.write_cluster(cluster, status);
        }
        let workload = self.emu.cluster(name);
        let delete_machines = |pred: &dyn Fn(&Value) -> bool| {
            for m in self
                .mgmt
                .list_labeled(&gvr_machine(), Some(ns), CLUSTER_NAME_LABEL, name)
            {
                if pred(&m) {
                    match &workload {
                        Some(w) => self.delete_machine(w, &m),
                        None => {
                            if let Some(n) = name_of(&m) {
                                let _ = self.mgmt.delete(&gvr_machine(), Some(ns), n);
                            }
                        }
                    }
                }
            }
        };
        // Step 2: workers.
        let mds: Vec<Value> = self
            .mgmt
            .list(&gvr_machine_deployment(), Some(ns))
            .into_iter()
            .filter(|md| belongs_to(md, name))
            .collect();
        let worker_machines = |m: &Value| label(m, "cluster.x-k8s.io/control-plane").is_none();
        let mhcs: Vec<Value> = self
            .mgmt
            .list(&gvr_machine_health_check(), Some(ns))
            .into_iter()
            .filter(|m| str_at(m, "/spec/clusterName") == Some(name))
            .collect();
        let any_worker_machine = self
            .mgmt
            .list_labeled(&gvr_machine(), Some(ns), CLUSTER_NAME_LABEL, name)
            .iter()
            .any(worker_machines);
        if !mds.is_empty() || !mhcs.is_empty() || any_worker_machine {
            for md in &mds {
                if let Some(n) = name_of(md) {
                    let _ = self.mgmt.delete(&gvr_machine_deployment(), Some(ns), n);
                }
            }
            for mhc in &mhcs {
                if let Some(n) = name_of(mhc) {
                    let _ = self.mgmt.delete(&gvr_machine_health_check(), Some(ns), n);
                }
            }
            delete_machines(&worker_machines);
            return Ok(());
        }
        // Step 3: control plane.
        let kcp_name = str_at(cluster, "/spec/controlPlaneRef/name");
        let kcp = kcp_name.and_then(|k| self.mgmt.get(&gvr_kcp(), Some(ns), k));
        let any_machine = !self
            .mgmt
            .list_labeled(&gvr_machine(), Some(ns), CLUSTER_NAME_LABEL, name)
            .is_empty();
        if kcp.is_some() || any_machine {
            if let Some(k) = kcp_name {
                let _ = self.mgmt.delete(&gvr_kcp(), Some(ns), k);
            }
            delete_machines(&|_| true);
            return Ok(());
        }
        // Step 4: infrastructure, add-ons, kubeconfig; the workload API server goes away.
        let aws_name = str_at(cluster, "/spec/infrastructureRef/name");
        let rest_exists = aws_name
            .and_then(|a| self.mgmt.get(&gvr_aws_cluster(), Some(ns), a))
            .is_some()
            || self
                .mgmt
                .get(&gvr_cluster_bootstrap(), Some(ns), name)
                .is_some()
            || self
                .mgmt
                .get(&gvr_secret(), Some(ns), &format!("{name}-kubeconfig"))
                .is_some_and(|s| {
                    s.get("type").and_then(Value::as_str) == Some(KUBECONFIG_SECRET_TYPE)
                })
            || self
                .mgmt
                .list(&gvr_aws_machine_template(), Some(ns))
                .iter()
                .any(|t| {
                    label(t, CLUSTER_NAME_LABEL) == Some(name)
                        && label(t, TOPOLOGY_OWNED_LABEL).is_some()
                });
        if rest_exists {
            if let Some(a) = aws_name {
                let _ = self.mgmt.delete(&gvr_aws_cluster(), Some(ns), a);
            }
            self.delete_owned(ns, name, None);
            let _ = self.mgmt.delete(&gvr_cluster_bootstrap(), Some(ns), name);
            let _ = self.mgmt.delete(
                &gvr_package_install(),
                Some(ns),
                &format!("{name}-kapp-controller"),
            );
            if let Some(w) = &workload {
                self.stop_workload(w);
            }
            return Ok(());
        }
        if let Some(w) = &workload {
            self.stop_workload(w);
        }
        // Step 5: the finalizer goes.
        let finalizers: Vec<Value> = cluster
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter(|f| *f != CLUSTER_FINALIZER)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let value = if finalizers.is_empty() {
            Value::Null
        } else {
            Value::Array(finalizers)
        };
        self.mgmt.patch_merge(
            &gvr_cluster(),
            Some(ns),
            name,
            json!({"metadata": {"finalizers": value}}),
        )?;
        Ok(())
    }

    /// The workload cluster's API server stops answering (its load balancer and machines are
    /// gone): every request gets a dropped connection, until a Cluster of that name initializes
    /// its control plane again.
    fn stop_workload(&self, workload: &EmulatedCluster) {
        let Ok(mut stopped) = self.stopped.lock() else {
            return;
        };
        if stopped.insert(workload.name().to_string()) {
            workload
                .faults()
                .inject(Fault::new(None, "/", FaultAction::Drop, None));
        }
    }

    /// A plan-based (legacy) Cluster: the objects its `controlPlaneRef` and `infrastructureRef` name,
    /// and the MachineDeployments of the cluster. `None` until both referenced objects exist.
    fn legacy_parts(&self, cluster: &Value, name: &str, ns: &str) -> Option<Topology> {
        let kcp_name = str_at(cluster, "/spec/controlPlaneRef/name")?;
        let aws_name = str_at(cluster, "/spec/infrastructureRef/name")?;
        if str_at(cluster, "/spec/controlPlaneRef/kind") != Some("KubeadmControlPlane")
            || str_at(cluster, "/spec/infrastructureRef/kind") != Some("AWSCluster")
        {
            debug!(cluster = %key(cluster), "refs to kinds other than KubeadmControlPlane/AWSCluster are not simulated");
            return None;
        }
        let kcp = self.mgmt.get(&gvr_kcp(), Some(ns), kcp_name)?;
        let aws = self.mgmt.get(&gvr_aws_cluster(), Some(ns), aws_name)?;
        let mds = cluster_mds(&self.mgmt, Some(ns), name);
        Some(Topology {
            kcp,
            mds,
            aws,
            cluster: cluster.clone(),
        })
    }

    fn write_cluster(
        &self,
        cluster: &Value,
        status: Map<String, Value>,
    ) -> Result<(), ControllerError> {
        write_status(&self.mgmt, &gvr_cluster(), cluster, status)?;
        Ok(())
    }

    /// Topology controller: creates or updates the KubeadmControlPlane, MachineDeployments and
    /// AWSCluster of a Cluster, and points the Cluster's refs at them.
    fn ensure_topology(
        &self,
        cluster: &Value,
        name: &str,
        ns: &str,
        topology: &Value,
    ) -> Result<Topology, ControllerError> {
        let uid = uid_of(cluster).to_string();
        let seed = if uid.is_empty() {
            format!("{ns}/{name}")
        } else {
            uid.clone()
        };
        let version = str_at(topology, "/version").unwrap_or("").to_string();
        let cp_replicas = i64_at(topology, "/controlPlane/replicas").unwrap_or(1);
        let owner = owner_ref("cluster.x-k8s.io/v1beta1", "Cluster", name, &uid, false);
        let labels = json!({CLUSTER_NAME_LABEL: name, TOPOLOGY_OWNED_LABEL: ""});
        let infra_api = "infrastructure.cluster.x-k8s.io/v1beta1";

        // AWSCluster (CAPA) from the ClusterClass variables.
        let aws_name = format!("{name}-{}", suffix5(&format!("{seed}/infrastructure")));
        let aws = create_if_absent(
            &self.mgmt,
            &gvr_aws_cluster(),
            json!({
                "apiVersion": infra_api,
                "kind": "AWSCluster",
                "metadata": {"name": aws_name, "namespace": ns, "labels": labels, "ownerReferences": [owner]},
                "spec": aws_cluster_spec(name, topology),
            }),
        )?;

        // KubeadmControlPlane.
        let kcp_name = format!("{name}-{}", suffix5(&format!("{seed}/controlplane")));
        let mut kcp = create_if_absent(
            &self.mgmt,
            &gvr_kcp(),
            json!({
                "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1",
                "kind": "KubeadmControlPlane",
                "metadata": {
                    "name": kcp_name, "namespace": ns, "labels": labels, "ownerReferences": [owner],
                    "annotations": {MACHINES_VERSION_ANNOTATION: version},
                },
                "spec": {
                    "replicas": cp_replicas,
                    "version": version,
                    "machineTemplate": {"infrastructureRef": {
                        "apiVersion": infra_api, "kind": "AWSMachineTemplate", "namespace": ns,
                        "name": format!("{name}-control-plane-{}", suffix5(&format!("{seed}/controlplane-template"))),
                    }},
                    "kubeadmConfigSpec": {
                        "clusterConfiguration": {"imageRepository": "projects.registry.vmware.com/tkg"},
                        "initConfiguration": {"nodeRegistration": {"name": "{{ ds.meta_data.local_hostname }}"}},
                        "joinConfiguration": {"nodeRegistration": {"name": "{{ ds.meta_data.local_hostname }}"}},
                    },
                },
            }),
        )?;
        let ssh_key = topology_variable(topology, "sshKeyName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let cp_template = self.ensure_machine_template(
            ns,
            &owner,
            &labels,
            str_at(&kcp, "/spec/machineTemplate/infrastructureRef/name").unwrap_or(""),
            &format!("{name}-control-plane"),
            machine_template_spec(topology_variable(topology, "controlPlane"), ssh_key, true),
        )?;
        let mut kcp_patch = Map::new();
        if i64_at(&kcp, "/spec/replicas") != Some(cp_replicas) {
            kcp_patch.insert("replicas".into(), json!(cp_replicas));
        }
        if str_at(&kcp, "/spec/version") != Some(version.as_str()) && !version.is_empty() {
            kcp_patch.insert("version".into(), json!(version));
        }
        if str_at(&kcp, "/spec/machineTemplate/infrastructureRef/name")
            != Some(cp_template.as_str())
        {
            kcp_patch.insert(
                "machineTemplate".into(),
                json!({"infrastructureRef": {"name": cp_template}}),
            );
        }
        if !kcp_patch.is_empty() {
            kcp = self.mgmt.patch_merge(
                &gvr_kcp(),
                Some(ns),
                &kcp_name,
                json!({"spec": kcp_patch}),
            )?;
        }
        // Workers move to a new version only once the control plane runs it and is neither
        // upgrading nor scaling (CP first), and one MachineDeployment at a time.
        let kcp_replicas = i64_at(&kcp, "/spec/replicas").unwrap_or(1);
        let cp_stable = str_at(&kcp, "/spec/version") == Some(version.as_str())
            && str_at(&kcp, "/status/version") == Some(version.as_str())
            && observed_generation_of(&kcp) == Some(generation_of(&kcp))
            && ["replicas", "updatedReplicas", "readyReplicas"]
                .iter()
                .all(|f| i64_at(&kcp, &format!("/status/{f}")) == Some(kcp_replicas));
        let mut md_rolling = self
            .mgmt
            .list_labeled(
                &gvr_machine_deployment(),
                Some(ns),
                CLUSTER_NAME_LABEL,
                name,
            )
            .iter()
            .filter(|md| {
                label(md, TOPOLOGY_OWNED_LABEL).is_some()
                    && label(md, CLUSTER_NAME_LABEL) == Some(name)
            })
            .any(md_rolling_out);
        let worker_var = topology_variable(topology, "worker");

        // MachineDeployments, one per topology.workers.machineDeployments[].
        let mut mds = Vec::new();
        let mut wanted = Vec::new();
        let md_topologies = topology
            .pointer("/workers/machineDeployments")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for md_topo in &md_topologies {
            let Some(md_short) = md_topo.get("name").and_then(Value::as_str) else {
                warn!(cluster = %key(cluster), "machineDeployment topology without name; skipped");
                continue;
            };
            let class = md_topo
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("tkg-worker");
            let replicas = i64_at(md_topo, "/replicas").unwrap_or(1);
            let failure_domain = md_topo.get("failureDomain").and_then(Value::as_str);
            let md_name = format!(
                "{name}-{md_short}-{}",
                suffix5(&format!("{seed}/md/{md_short}"))
            );
            wanted.push(md_name.clone());
            let md_labels = json!({CLUSTER_NAME_LABEL: name, TOPOLOGY_OWNED_LABEL: "", DEPLOYMENT_NAME_LABEL: md_short});
            let mut template_labels = md_labels.clone();
            template_labels["node-pool"] = json!(format!("{name}-worker-pool"));
            let mut template_spec = json!({
                "clusterName": name,
                "version": version,
                "bootstrap": {"configRef": {
                    "apiVersion": "bootstrap.cluster.x-k8s.io/v1beta1", "kind": "KubeadmConfigTemplate", "namespace": ns,
                    "name": format!("{name}-{md_short}-bootstrap-{}", suffix5(&format!("{seed}/md/{md_short}/bootstrap"))),
                }},
                "infrastructureRef": {
                    "apiVersion": infra_api, "kind": "AWSMachineTemplate", "namespace": ns,
                    "name": format!("{name}-{md_short}-infra-{}", suffix5(&format!("{seed}/md/{md_short}/infra"))),
                },
            });
            if let Some(fd) = failure_domain {
                template_spec["failureDomain"] = json!(fd);
            }
            let mut md = create_if_absent(
                &self.mgmt,
                &gvr_machine_deployment(),
                json!({
                    "apiVersion": "cluster.x-k8s.io/v1beta1",
                    "kind": "MachineDeployment",
                    "metadata": {
                        "name": md_name, "namespace": ns, "labels": md_labels, "ownerReferences": [owner],
                        "annotations": {MACHINES_VERSION_ANNOTATION: version},
                    },
                    "spec": {
                        "clusterName": name,
                        "replicas": replicas,
                        "selector": {"matchLabels": md_labels},
                        "template": {
                            "metadata": {"labels": template_labels, "annotations": {"topology.cluster.x-k8s.io/deployment-class": class}},
                            "spec": template_spec,
                        },
                    },
                }),
            )?;
            // Per-MD `variables.overrides` replace the cluster-level `worker` variable.
            let md_worker = md_topo
                .pointer("/variables/overrides")
                .and_then(Value::as_array)
                .and_then(|o| {
                    o.iter()
                        .find(|v| v.get("name").and_then(Value::as_str) == Some("worker"))
                })
                .and_then(|v| v.get("value"))
                .or(worker_var);
            let md_template = self.ensure_machine_template(
                ns,
                &owner,
                &labels,
                str_at(&md, "/spec/template/spec/infrastructureRef/name").unwrap_or(""),
                &format!("{name}-{md_short}-infra"),
                machine_template_spec(md_worker, ssh_key, false),
            )?;
            let mut spec_patch = Map::new();
            if i64_at(&md, "/spec/replicas") != Some(replicas) {
                spec_patch.insert("replicas".into(), json!(replicas));
            }
            let mut tpl_patch = Map::new();
            if str_at(&md, "/spec/template/spec/infrastructureRef/name")
                != Some(md_template.as_str())
            {
                tpl_patch.insert("infrastructureRef".into(), json!({"name": md_template}));
            }
            if let Some(fd) = failure_domain {
                if str_at(&md, "/spec/template/spec/failureDomain") != Some(fd) {
                    tpl_patch.insert("failureDomain".into(), json!(fd));
                }
            }
            if !version.is_empty()
                && str_at(&md, "/spec/template/spec/version") != Some(version.as_str())
                && cp_stable
                && !md_rolling
            {
                tpl_patch.insert("version".into(), json!(version));
                md_rolling = true;
            }
            if !tpl_patch.is_empty() {
                spec_patch.insert("template".into(), json!({"spec": tpl_patch}));
            }
            if !spec_patch.is_empty() {
                md = self.mgmt.patch_merge(
                    &gvr_machine_deployment(),
                    Some(ns),
                    &md_name,
                    json!({"spec": spec_patch}),
                )?;
            }
            mds.push(md);
        }
        // MachineDeployments removed from the topology are deleted.
        for md in self.mgmt.list_labeled(
            &gvr_machine_deployment(),
            Some(ns),
            CLUSTER_NAME_LABEL,
            name,
        ) {
            let owned = label(&md, TOPOLOGY_OWNED_LABEL).is_some()
                && label(&md, CLUSTER_NAME_LABEL) == Some(name);
            if let Some(md_name) = name_of(&md) {
                if owned && !wanted.iter().any(|w| w == md_name) {
                    if let Err(err) = self
                        .mgmt
                        .delete(&gvr_machine_deployment(), Some(ns), md_name)
                    {
                        warn!(md = md_name, error = %err, "could not delete MachineDeployment removed from topology");
                    }
                }
            }
        }

        // Cluster refs, as the topology controller sets them.
        let infra_ref = json!({"apiVersion": infra_api, "kind": "AWSCluster", "name": aws_name, "namespace": ns});
        let cp_ref = json!({"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
                            "name": kcp_name, "namespace": ns});
        let mut cluster = cluster.clone();
        if cluster.pointer("/spec/infrastructureRef") != Some(&infra_ref)
            || cluster.pointer("/spec/controlPlaneRef") != Some(&cp_ref)
        {
            cluster = self.mgmt.patch_merge(
                &gvr_cluster(),
                Some(ns),
                name,
                json!({"spec": {"infrastructureRef": infra_ref, "controlPlaneRef": cp_ref}}),
            )?;
        }
        Ok(Topology {
            kcp,
            mds,
            aws,
            cluster,
        })
    }

    /// Topology controller: the AWSMachineTemplate of the control plane or of one
    /// MachineDeployment. Created under `current` when missing; when its spec differs from
    /// `desired`, a new template `<prefix>-xxxxx` is written (templates are immutable, CAPI rotates
    /// them) and the old one deleted. Returns the name the owner must reference.
    fn ensure_machine_template(
        &self,
        ns: &str,
        owner: &Value,
        labels: &Value,
        current: &str,
        prefix: &str,
        desired: Value,
    ) -> Result<String, ControllerError> {
        let gvr = gvr_aws_machine_template();
        let object = |n: &str| {
            json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
                "kind": "AWSMachineTemplate",
                "metadata": {"name": n, "namespace": ns, "labels": labels, "ownerReferences": [owner],
                             "annotations": {"topology.cluster.x-k8s.io/template-prefix": prefix}},
                "spec": desired,
            })
        };
        if current.is_empty() {
            return Ok(String::new());
        }
        match self.mgmt.get(&gvr, Some(ns), current) {
            None => {
                create_if_absent(&self.mgmt, &gvr, object(current))?;
                Ok(current.to_string())
            }
            Some(t) if t.get("spec") == Some(&desired) => Ok(current.to_string()),
            Some(_) => {
                let new_name = format!("{prefix}-{}", suffix5(&format!("{current}/{desired}")));
                create_if_absent(&self.mgmt, &gvr, object(&new_name))?;
                if let Err(err) = self.mgmt.delete(&gvr, Some(ns), current) {
                    debug!(template = current, error = %err, "could not delete rotated template");
                }
                Ok(new_name)
            }
        }
    }

    /// CAPA: the AWSCluster becomes ready with a load balancer endpoint; CAPI copies it to the Cluster.
    fn provision_infrastructure(
        &self,
        cluster: &Value,
        aws: &Value,
    ) -> Result<Value, ControllerError> {
        let name = name_of(cluster).unwrap_or_default();
        let ns = namespace_of(cluster).unwrap_or("default");
        let region = str_at(aws, "/spec/region")
            .filter(|r| !r.is_empty())
            .unwrap_or("us-east-1");
        let internal = str_at(aws, "/spec/controlPlaneLoadBalancer/scheme") == Some("internal");
        let host = format!(
            "{}{name}-apiserver-{}.elb.{region}.amazonaws.com",
            if internal { "internal-" } else { "" },
            digits(&format!("{}/elb", uid_of(cluster)), 10)
        );
        let endpoint = json!({"host": host, "port": API_SERVER_PORT});
        let aws_name = name_of(aws).unwrap_or_default();
        let aws = if aws.pointer("/spec/controlPlaneEndpoint") != Some(&endpoint) {
            self.mgmt.patch_merge(
                &gvr_aws_cluster(),
                Some(ns),
                aws_name,
                json!({"spec": {"controlPlaneEndpoint": endpoint}}),
            )?
        } else {
            aws.clone()
        };
        let seed = uid_of(cluster);
        let mut aws_status = status_of(&aws);
        aws_status.insert("ready".into(), json!(true));
        aws_status.insert("networkStatus".into(), json!({
            "securityGroups": {
                "bastion": {"id": format!("sg-{}", digits(&format!("{seed}/sg-bastion"), 17)), "name": format!("{name}-bastion")},
                "controlplane": {"id": format!("sg-{}", digits(&format!("{seed}/sg-cp"), 17)), "name": format!("{name}-controlplane")},
                "node": {"id": format!("sg-{}", digits(&format!("{seed}/sg-node"), 17)), "name": format!("{name}-node")},
                "lb": {"id": format!("sg-{}", digits(&format!("{seed}/sg-lb"), 17)), "name": format!("{name}-lb")},
                "apiserver-lb": {"id": format!("sg-{}", digits(&format!("{seed}/sg-apilb"), 17)), "name": format!("{name}-apiserver-lb")},
            },
            "apiServerElb": {"name": format!("{name}-apiserver"), "dnsName": host,
                              "scheme": if internal { "internal" } else { "internet-facing" }},
        }));
        for t in [
            "Ready",
            "VpcReady",
            "SubnetsReady",
            "ClusterSecurityGroupsReady",
            "LoadBalancerReady",
        ] {
            set_condition(&mut aws_status, cond_true(t));
        }
        write_status(&self.mgmt, &gvr_aws_cluster(), &aws, aws_status)?;
        if cluster.pointer("/spec/controlPlaneEndpoint") != Some(&endpoint) {
            return Ok(self.mgmt.patch_merge(
                &gvr_cluster(),
                Some(ns),
                name,
                json!({"spec": {"controlPlaneEndpoint": endpoint}}),
            )?);
        }
        Ok(cluster.clone())
    }

    async fn create_workload(&self, name: &str) -> Result<EmulatedCluster, ControllerError> {
        let workload = match self.emu.cluster(name) {
            Some(w) => w,
            None => self.emu.add_cluster(name).await?,
        };
        if self.stopped.lock().is_ok_and(|mut s| s.remove(name)) {
            // A Cluster of that name was deleted earlier: its API server answers again.
            workload.faults().clear();
        }
        catalog::seed_workload(&workload, self.opts.standard_packages)?;
        Ok(workload)
    }

    /// The first control plane machine is being created: create and seed the workload cluster,
    /// write the kubeconfig Secret, mark the KubeadmControlPlane initialized and create its first
    /// Machine.
    async fn initialize_control_plane(
        &self,
        name: &str,
        ns: &str,
        kcp: &Value,
        region: &str,
    ) -> Result<(), ControllerError> {
        let workload = self.create_workload(name).await?;
        if let Some(v) = str_at(kcp, "/spec/version") {
            workload.set_kubernetes_version(v);
        }
        self.ensure_kubeconfig_secret(&workload, name, ns, kcp)?;
        self.start_workload(&workload);
        let mut st = status_of(kcp);
        st.insert(
            "selector".into(),
            json!(format!(
                "{CLUSTER_NAME_LABEL}={name},cluster.x-k8s.io/control-plane"
            )),
        );
        st.insert("initialized".into(), json!(true));
        let kcp = write_status(&self.mgmt, &gvr_kcp(), kcp, st)?;
        self.reconcile_machines(&workload, &kcp, true, region)?;
        Ok(())
    }

    /// The `<cluster>-kubeconfig` Secret (CAPI `util/secret`), recreated if it disappears.
    fn ensure_kubeconfig_secret(
        &self,
        workload: &EmulatedCluster,
        name: &str,
        ns: &str,
        kcp: &Value,
    ) -> Result<(), ControllerError> {
        let secret_name = format!("{name}-kubeconfig");
        if self
            .mgmt
            .get(&gvr_secret(), Some(ns), &secret_name)
            .is_some()
        {
            return Ok(());
        }
        let value = base64::engine::general_purpose::STANDARD.encode(workload.kubeconfig_yaml());
        let owner = owner_ref(
            "controlplane.cluster.x-k8s.io/v1beta1",
            "KubeadmControlPlane",
            name_of(kcp).unwrap_or_default(),
            uid_of(kcp),
            true,
        );
        create_if_absent(
            &self.mgmt,
            &gvr_secret(),
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": secret_name, "namespace": ns,
                    "labels": {CLUSTER_NAME_LABEL: name},
                    "ownerReferences": [owner],
                },
                "type": KUBECONFIG_SECRET_TYPE,
                "data": {"value": value},
            }),
        )?;
        Ok(())
    }

    /// One tick of the machine controllers of a KubeadmControlPlane (`control_plane`) or
    /// MachineDeployment: promotes the Machines created last tick to `Running` (Node in the
    /// workload cluster, `nodeRef`), creates new Machines per the rollout strategy, deletes
    /// outdated or excess ones, then writes the owner's status from its Machines (see the module
    /// docs, "Machines and rollouts").
    fn reconcile_machines(
        &self,
        workload: &EmulatedCluster,
        owner: &Value,
        control_plane: bool,
        region: &str,
    ) -> Result<Rollout, ControllerError> {
        let gvr = if control_plane {
            gvr_kcp()
        } else {
            gvr_machine_deployment()
        };
        let Some(owner_name) = name_of(owner).map(str::to_string) else {
            return Ok(Rollout::InProgress);
        };
        let ns = namespace_of(owner).unwrap_or("default").to_string();
        let owner = self
            .mgmt
            .get(&gvr, Some(&ns), &owner_name)
            .unwrap_or_else(|| owner.clone());
        let owner_uid = uid_of(&owner).to_string();
        let replicas = i64_at(&owner, "/spec/replicas").unwrap_or(1).max(0);
        let version = desired_version(&owner, control_plane);
        let template = desired_template(&owner, control_plane);
        let (surge, unavailable) = rollout_strategy(&owner, control_plane, replicas);
        let up_to_date =
            |m: &Value| machine_version(m) == version && machine_template(m) == template;

        let mut machines = self.owned_machines(&ns, workload.name(), &owner_uid);
        // 1. Machines created last tick come up.
        for m in machines.iter_mut() {
            if !machine_ready(m) {
                if let Some(up) = self.promote_machine(workload, m, control_plane, region) {
                    *m = up;
                }
            }
        }
        // 2. Scale up the new machine set (before scaling down old ones, as CAPI's rolloutRolling).
        let total = machines.len() as i64;
        let new = machines.iter().filter(|m| up_to_date(m)).count() as i64;
        let in_flight = machines.iter().any(|m| !machine_ready(m));
        let to_create = if control_plane {
            // KCP: one machine at a time, the next only once the previous one is up.
            i64::from(!in_flight && new < replicas && total < replicas + surge)
        } else {
            (replicas + surge - total).min(replicas - new).max(0)
        };
        if to_create > 0 {
            let mut serial = annotation(&owner, MACHINE_SERIAL_ANNOTATION)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            for _ in 0..to_create {
                serial += 1;
                match self.create_machine(
                    workload.name(),
                    &owner,
                    control_plane,
                    serial,
                    &version,
                    &template,
                    region,
                ) {
                    Ok(m) => machines.push(m),
                    Err(err) => {
                        debug!(owner = %owner_name, error = %err, "could not create Machine")
                    }
                }
            }
            self.mgmt.patch_merge(
                &gvr,
                Some(&ns),
                &owner_name,
                json!({"metadata": {"annotations": {MACHINE_SERIAL_ANNOTATION: serial.to_string()}}}),
            )?;
        }
        // 3. Scale down: outdated machines that are not up first, then outdated ready ones while
        //    availability allows, then (no outdated machine left) the excess over spec.replicas.
        let max_deletions = if control_plane { 1 } else { usize::MAX };
        let mut victims: Vec<String> = Vec::new();
        let mut ready = machines.iter().filter(|m| machine_ready(m)).count() as i64;
        let mut remaining = machines.len() as i64;
        let mut order: Vec<&Value> = machines.iter().collect();
        order.sort_by_key(|m| machine_serial(m));
        for m in order.iter().filter(|m| !up_to_date(m) && !machine_ready(m)) {
            victims.push(name_of(m).unwrap_or_default().to_string());
            remaining -= 1;
        }
        for m in order.iter().filter(|m| !up_to_date(m) && machine_ready(m)) {
            let needed = if control_plane && surge > 0 {
                remaining > replicas
            } else {
                true
            };
            if needed && ready > replicas - unavailable {
                victims.push(name_of(m).unwrap_or_default().to_string());
                ready -= 1;
                remaining -= 1;
            }
        }
        if !order.iter().any(|m| !up_to_date(m)) && remaining > replicas {
            // Scale down: machines not yet up first, then the newest.
            let mut excess: Vec<&&Value> = order.iter().collect();
            excess.sort_by_key(|m| (machine_ready(m), std::cmp::Reverse(machine_serial(m))));
            for m in excess {
                if remaining <= replicas {
                    break;
                }
                victims.push(name_of(m).unwrap_or_default().to_string());
                remaining -= 1;
            }
        }
        for victim in victims.into_iter().take(max_deletions) {
            if let Some(pos) = machines
                .iter()
                .position(|m| name_of(m) == Some(victim.as_str()))
            {
                let m = machines.remove(pos);
                self.delete_machine(workload, &m);
            }
        }

        // 4. Status from the machines.
        let total = machines.len() as i64;
        let updated = machines.iter().filter(|m| up_to_date(m)).count() as i64;
        let ready = machines.iter().filter(|m| machine_ready(m)).count() as i64;
        let done = total == replicas && updated == replicas && ready == replicas;
        let outdated = total - updated;
        let mut st = status_of(&owner);
        st.insert("observedGeneration".into(), json!(generation_of(&owner)));
        st.insert("replicas".into(), json!(total));
        st.insert("updatedReplicas".into(), json!(updated));
        st.insert("readyReplicas".into(), json!(ready));
        if control_plane {
            self.kcp_status(&mut st, &owner, &machines, replicas, outdated, ready, total);
        } else {
            let cluster_name = str_at(&owner, "/spec/clusterName")
                .unwrap_or("")
                .to_string();
            let deployment = label(&owner, DEPLOYMENT_NAME_LABEL)
                .unwrap_or("")
                .to_string();
            st.insert("availableReplicas".into(), json!(ready));
            st.insert(
                "unavailableReplicas".into(),
                json!((replicas - ready).max(0)),
            );
            st.insert("selector".into(), json!(format!(
                "{CLUSTER_NAME_LABEL}={cluster_name},{DEPLOYMENT_NAME_LABEL}={deployment},{TOPOLOGY_OWNED_LABEL}="
            )));
            let phase = if ready < replicas {
                "ScalingUp"
            } else if total > replicas {
                "ScalingDown"
            } else {
                "Running"
            };
            st.insert("phase".into(), json!(phase));
            let msg = format!(
                "Minimum availability requires {replicas} replicas, current {ready} available"
            );
            if ready >= replicas - unavailable {
                set_condition(&mut st, cond_true("Available"));
            } else {
                set_condition(
                    &mut st,
                    cond_false("Available", "Warning", "WaitingForAvailableMachines", &msg),
                );
            }
            if ready == total {
                set_condition(&mut st, cond_true("MachinesReady"));
            } else {
                set_condition(
                    &mut st,
                    cond_false("MachinesReady", "Info", "WaitingForMachines", ""),
                );
            }
            if ready >= replicas && ready == total {
                set_condition(&mut st, cond_true("Ready"));
            } else {
                set_condition(
                    &mut st,
                    cond_false("Ready", "Warning", "WaitingForAvailableMachines", &msg),
                );
            }
        }
        write_status(&self.mgmt, &gvr, &owner, st)?;
        Ok(if done {
            Rollout::Done
        } else {
            Rollout::InProgress
        })
    }

    /// KubeadmControlPlane status: `version` is the lowest version of its machines, conditions as
    /// KCP's (`MachinesSpecUpToDate=False RollingUpdateInProgress` while outdated machines exist,
    /// `Resized=False ScalingUp|ScalingDown` while the machine count differs from spec).
    #[allow(clippy::too_many_arguments)]
    fn kcp_status(
        &self,
        st: &mut Map<String, Value>,
        owner: &Value,
        machines: &[Value],
        replicas: i64,
        outdated: i64,
        ready: i64,
        total: i64,
    ) {
        let spec_version = str_at(owner, "/spec/version").unwrap_or("").to_string();
        let version = machines
            .iter()
            .map(machine_version)
            .min_by_key(|v| semver_key(v))
            .unwrap_or(spec_version);
        st.insert("version".into(), json!(version));
        st.insert("unavailableReplicas".into(), json!((total - ready).max(0)));
        st.insert("initialized".into(), json!(true));
        st.insert("ready".into(), json!(ready > 0));
        set_condition(st, cond_true("Available"));
        set_condition(st, cond_true("CertificatesAvailable"));
        if ready == total && total > 0 {
            set_condition(st, cond_true("MachinesReady"));
            set_condition(st, cond_true("ControlPlaneComponentsHealthy"));
            set_condition(st, cond_true("EtcdClusterHealthy"));
        } else {
            set_condition(
                st,
                cond_false("MachinesReady", "Info", "WaitingForMachines", ""),
            );
        }
        if outdated > 0 {
            let msg = format!(
                "Rolling {total} replicas with outdated spec ({outdated} replicas up to date)",
                outdated = total - outdated
            );
            set_condition(
                st,
                cond_false(
                    "MachinesSpecUpToDate",
                    "Warning",
                    "RollingUpdateInProgress",
                    &msg,
                ),
            );
        } else {
            set_condition(st, cond_true("MachinesSpecUpToDate"));
        }
        if total < replicas {
            let msg = format!("Scaling up control plane to {replicas} replicas (actual {total})");
            set_condition(st, cond_false("Resized", "Warning", "ScalingUp", &msg));
        } else if total > replicas && outdated == 0 {
            let msg = format!("Scaling down control plane to {replicas} replicas (actual {total})");
            set_condition(st, cond_false("Resized", "Warning", "ScalingDown", &msg));
        } else {
            set_condition(st, cond_true("Resized"));
        }
        if ready == replicas && total == replicas && outdated == 0 {
            set_condition(st, cond_true("Ready"));
        } else if outdated > 0 {
            set_condition(
                st,
                cond_false("Ready", "Warning", "RollingUpdateInProgress", ""),
            );
        } else {
            set_condition(st, cond_false("Ready", "Info", "WaitingForMachines", ""));
        }
    }

    /// The Machines of cluster `cluster` whose controller ownerReference is `owner_uid`.
    fn owned_machines(&self, ns: &str, cluster: &str, owner_uid: &str) -> Vec<Value> {
        self.mgmt
            .list_labeled(&gvr_machine(), Some(ns), CLUSTER_NAME_LABEL, cluster)
            .into_iter()
            .filter(|m| {
                m.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(owner_uid))
                    })
            })
            .collect()
    }

    /// A new Machine (phase `Provisioning`, no Node yet) of a KubeadmControlPlane or
    /// MachineDeployment: KCP machines are `<kcp>-xxxxx`, MD machines `<md>-<set>-xxxxx` where the
    /// set suffix follows the machine template and version (as a new MachineSet would).
    #[allow(clippy::too_many_arguments)]
    fn create_machine(
        &self,
        cluster_name: &str,
        owner: &Value,
        control_plane: bool,
        serial: u64,
        version: &str,
        template: &str,
        region: &str,
    ) -> Result<Value, ControllerError> {
        let owner_name = name_of(owner).unwrap_or_default();
        let owner_uid = uid_of(owner);
        let ns = namespace_of(owner).unwrap_or("default");
        let m_suffix = suffix5(&format!("{owner_uid}/machine/{serial}"));
        let (machine_name, set_name) = if control_plane {
            (format!("{owner_name}-{m_suffix}"), None)
        } else {
            let set = format!(
                "{owner_name}-{}",
                suffix5(&format!("{owner_uid}/set/{version}/{template}"))
            );
            (format!("{set}-{m_suffix}"), Some(set))
        };
        let failure_domain = str_at(owner, "/spec/template/spec/failureDomain")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{region}a"));
        let owner_ref = owner_ref(
            if control_plane {
                "controlplane.cluster.x-k8s.io/v1beta1"
            } else {
                "cluster.x-k8s.io/v1beta1"
            },
            if control_plane {
                "KubeadmControlPlane"
            } else {
                "MachineDeployment"
            },
            owner_name,
            owner_uid,
            true,
        );
        let mut m_labels = if control_plane {
            json!({"cluster.x-k8s.io/control-plane": ""})
        } else {
            let mut l = owner
                .pointer("/spec/template/metadata/labels")
                .cloned()
                .unwrap_or_else(|| json!({}));
            l["cluster.x-k8s.io/deployment-name"] = json!(owner_name);
            if let Some(set) = &set_name {
                l["cluster.x-k8s.io/set-name"] = json!(set);
            }
            l
        };
        m_labels[CLUSTER_NAME_LABEL] = json!(cluster_name);
        let machine = json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Machine",
            "metadata": {"name": machine_name, "namespace": ns, "labels": m_labels,
                         "annotations": {INFRA_TEMPLATE_ANNOTATION: template, MACHINE_SERIAL_ANNOTATION: serial.to_string()},
                         "ownerReferences": [owner_ref]},
            "spec": {
                "clusterName": cluster_name,
                "version": version,
                "bootstrap": {"dataSecretName": machine_name},
                "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "AWSMachine",
                                      "name": machine_name, "namespace": ns},
                "failureDomain": failure_domain,
            },
        });
        let stored = create_if_absent(&self.mgmt, &gvr_machine(), machine)?;
        let mut st = status_of(&stored);
        st.insert("phase".into(), json!("Provisioning"));
        st.insert("bootstrapReady".into(), json!(true));
        st.insert("infrastructureReady".into(), json!(false));
        st.insert("lastUpdated".into(), json!(now_rfc3339()));
        st.insert("observedGeneration".into(), json!(generation_of(&stored)));
        set_condition(&mut st, cond_true("BootstrapReady"));
        set_condition(
            &mut st,
            cond_false(
                "InfrastructureReady",
                "Info",
                "WaitingForInfrastructure",
                "",
            ),
        );
        set_condition(
            &mut st,
            cond_false("Ready", "Info", "WaitingForInfrastructure", ""),
        );
        Ok(write_status(&self.mgmt, &gvr_machine(), &stored, st)?)
    }

    /// A Machine's instance is up: its Node joins the workload cluster and the Machine gets
    /// `providerID`, `nodeRef` and phase `Running`. `None` when a write failed (retried next tick).
    fn promote_machine(
        &self,
        workload: &EmulatedCluster,
        machine: &Value,
        control_plane: bool,
        region: &str,
    ) -> Option<Value> {
        let machine_name = name_of(machine)?.to_string();
        let ns = namespace_of(machine).unwrap_or("default").to_string();
        let version = machine_version(machine);
        let failure_domain = str_at(machine, "/spec/failureDomain")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{region}a"));
        let owner_name = str_at(machine, "/metadata/ownerReferences/0/name")
            .unwrap_or_default()
            .to_string();
        let cluster_name = workload.name().to_string();
        let seed = format!("{}/{machine_name}", uid_of(machine));
        // A private IP (and so a Node name) is unique among the running instances of a VPC:
        // an address another Machine's Node holds is skipped. (Without this, two Machines of
        // one cluster could share a Node, and deleting the old one removed the new one's Node:
        // about one cluster in a thousand counted an unhealthy Machine after an upgrade.)
        let address = |attempt: u32| {
            let d = match attempt {
                0 => digits(&seed, 6),
                n => digits(&format!("{seed}#{n}"), 6),
            };
            let ip = (
                d[0..3].parse::<u32>().unwrap_or(0) % 256,
                d[3..6].parse::<u32>().unwrap_or(0) % 254 + 1,
            );
            (
                ip,
                format!("ip-10-0-{}-{}.{region}.compute.internal", ip.0, ip.1),
            )
        };
        let (ip, node_name) = (0..64)
            .map(address)
            .find(|(_, name)| {
                workload.get(&gvr_node(), None, name).is_none_or(|n| {
                    n.pointer("/metadata/annotations/cluster.x-k8s.io~1machine")
                        .and_then(Value::as_str)
                        == Some(machine_name.as_str())
                })
            })
            .unwrap_or_else(|| address(64));
        let provider_id = format!("aws:///{failure_domain}/i-{}", &digits(&seed, 17));
        let mut labels = json!({
            "kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": failure_domain,
            "emulator.tkgops.dev/machine-owner": owner_name,
        });
        if control_plane {
            labels["node-role.kubernetes.io/control-plane"] = json!("");
            labels["node-role.kubernetes.io/master"] = json!("");
        } else {
            labels["node-pool"] = json!(format!("{cluster_name}-worker-pool"));
        }
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node_name, "labels": labels,
                         "annotations": {"cluster.x-k8s.io/machine": machine_name, "cluster.x-k8s.io/cluster-namespace": ns}},
            "spec": {"providerID": provider_id},
        });
        let node_info = json!({"kubeletVersion": version, "kubeProxyVersion": version,
            "containerRuntimeVersion": "containerd://1.6.6", "operatingSystem": "linux",
            "architecture": "amd64", "osImage": "Ubuntu 20.04.4 LTS"});
        let node = match create_if_absent(workload, &gvr_node(), node) {
            Ok(stored) if stored.get("status").is_none() => {
                let st = json!({
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                    "message": "kubelet is posting ready status",
                                    "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}],
                    "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", ip.0, ip.1)},
                                  {"type": "Hostname", "address": node_name}],
                    "nodeInfo": node_info,
                });
                workload
                    .update_status(&gvr_node(), None, &node_name, st)
                    .unwrap_or(stored)
            }
            Ok(stored) => stored,
            Err(err) => {
                debug!(node = %node_name, error = %err, "could not create Node");
                return None;
            }
        };
        let stored = if str_at(machine, "/spec/providerID") != Some(provider_id.as_str()) {
            match self.mgmt.patch_merge(
                &gvr_machine(),
                Some(&ns),
                &machine_name,
                json!({"spec": {"providerID": provider_id}}),
            ) {
                Ok(m) => m,
                Err(err) => {
                    debug!(machine = %machine_name, error = %err, "could not patch Machine");
                    return None;
                }
            }
        } else {
            machine.clone()
        };
        let mut st = status_of(&stored);
        st.insert("phase".into(), json!("Running"));
        st.insert("bootstrapReady".into(), json!(true));
        st.insert("infrastructureReady".into(), json!(true));
        st.insert(
            "nodeRef".into(),
            json!({"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": uid_of(&node)}),
        );
        st.insert(
            "addresses".into(),
            json!([
                {"type": "InternalIP", "address": format!("10.0.{}.{}", ip.0, ip.1)},
                {"type": "InternalDNS", "address": node_name}]),
        );
        st.insert("nodeInfo".into(), node_info);
        st.insert("lastUpdated".into(), json!(now_rfc3339()));
        st.insert("observedGeneration".into(), json!(generation_of(&stored)));
        for t in [
            "Ready",
            "BootstrapReady",
            "InfrastructureReady",
            "NodeHealthy",
        ] {
            set_condition(&mut st, cond_true(t));
        }
        match write_status(&self.mgmt, &gvr_machine(), &stored, st) {
            Ok(m) => Some(m),
            Err(err) => {
                debug!(machine = %machine_name, error = %err, "could not write Machine status");
                None
            }
        }
    }

    /// Deletes a Machine and its Node (the instance is terminated, the node drained and removed).
    fn delete_machine(&self, workload: &EmulatedCluster, machine: &Value) {
        if let Some(node) = str_at(machine, "/status/nodeRef/name") {
            let _ = workload.delete(&gvr_node(), None, node);
        }
        if let Some(n) = name_of(machine) {
            if let Err(err) = self.mgmt.delete(&gvr_machine(), namespace_of(machine), n) {
                debug!(machine = n, error = %err, "could not delete Machine");
            }
        }
    }

    /// MachineHealthCheck controller: once the Cluster is Ready, `expectedMachines` (its
    /// Machines matching `spec.selector`) and `currentHealthy` (those whose workload Node
    /// matches none of `spec.unhealthyConditions`).
    fn reconcile_mhc(
        &self,
        mhc: &Value,
        machines_by_cluster: &HashMap<(String, String), Vec<Arc<Value>>>,
    ) -> Result<(), ControllerError> {
        let ns = namespace_of(mhc).unwrap_or("default");
        let Some(cluster_name) = str_at(mhc, "/spec/clusterName") else {
            debug!(mhc = %key(mhc), "MachineHealthCheck without spec.clusterName; skipped");
            return Ok(());
        };
        let Some(cluster) = self.mgmt.get(&gvr_cluster(), Some(ns), cluster_name) else {
            return Ok(());
        };
        if !condition_true(&cluster, "Ready") {
            return Ok(());
        }
        // Targets: the cluster's Machines matching spec.selector.matchLabels.
        let match_labels = mhc
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let machines: Vec<&Value> = machines_by_cluster
            .get(&(ns.to_string(), cluster_name.to_string()))
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|m| m.as_ref())
            .filter(|m| {
                match_labels
                    .iter()
                    .all(|(k, v)| m.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
            })
            .collect();
        let targets: Vec<String> = machines
            .iter()
            .filter_map(|m| name_of(m).map(str::to_string))
            .collect();
        let expected = targets.len() as i64;
        // A target is unhealthy when its Node has a condition matching one of
        // spec.unhealthyConditions (type and status), or when its nodeRef points at a Node
        // that is gone (CAPI `machinehealthcheck_targets.go` `needsRemediation`). Leniency:
        // the condition's `timeout` is not waited for (stricter: unhealthy at once), and
        // unhealthy Machines are not remediated.
        let unhealthy_conditions: Vec<(String, String)> = mhc
            .pointer("/spec/unhealthyConditions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| {
                        Some((
                            c.get("type")?.as_str()?.to_string(),
                            c.get("status")?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let workload = self.emu.cluster(cluster_name);
        let unhealthy = machines
            .iter()
            .filter(|m| {
                let Some(node) = str_at(m, "/status/nodeRef/name") else {
                    return false;
                };
                let Some(node) = workload
                    .as_ref()
                    .and_then(|w| w.get(&gvr_node(), None, node))
                else {
                    return true;
                };
                node.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|conds| {
                        conds.iter().any(|c| {
                            unhealthy_conditions.iter().any(|(t, s)| {
                                c.get("type").and_then(Value::as_str) == Some(t)
                                    && c.get("status").and_then(Value::as_str) == Some(s)
                            })
                        })
                    })
            })
            .count() as i64;
        let max_unhealthy = match mhc.pointer("/spec/maxUnhealthy") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(expected),
            Some(Value::String(s)) if s.ends_with('%') => s
                .trim_end_matches('%')
                .parse::<i64>()
                .map(|p| expected * p / 100)
                .unwrap_or(expected),
            Some(Value::String(s)) => s.parse().unwrap_or(expected),
            _ => expected,
        };
        let mut st = status_of(mhc);
        st.insert("expectedMachines".into(), json!(expected));
        st.insert("currentHealthy".into(), json!(expected - unhealthy));
        st.insert("remediationsAllowed".into(), json!(max_unhealthy.max(0)));
        st.insert("observedGeneration".into(), json!(generation_of(mhc)));
        st.insert("targets".into(), json!(targets));
        set_condition(&mut st, cond_true("RemediationAllowed"));
        write_status(&self.mgmt, &gvr_machine_health_check(), mhc, st)?;
        Ok(())
    }

    /// Deletes the topology objects and kubeconfig Secret of a Cluster (`uid` = only objects owned by
    /// that Cluster uid; `None` = all objects labelled with the cluster name).
    fn delete_owned(&self, ns: &str, cluster_name: &str, uid: Option<&str>) {
        for gvr in [
            gvr_kcp(),
            gvr_machine_deployment(),
            gvr_aws_cluster(),
            gvr_aws_machine_template(),
        ] {
            for obj in self.mgmt.list(&gvr, Some(ns)) {
                if label(&obj, CLUSTER_NAME_LABEL) != Some(cluster_name)
                    || label(&obj, TOPOLOGY_OWNED_LABEL).is_none()
                {
                    continue;
                }
                if let Some(uid) = uid {
                    if !owner_uids(&obj).iter().any(|u| u == uid) {
                        continue;
                    }
                }
                if let Some(n) = name_of(&obj) {
                    if let Err(err) = self.mgmt.delete(&gvr, Some(ns), n) {
                        debug!(object = n, error = %err, "could not delete owned object");
                    }
                }
            }
        }
        let secret = format!("{cluster_name}-kubeconfig");
        if let Some(s) = self.mgmt.get(&gvr_secret(), Some(ns), &secret) {
            if s.get("type").and_then(Value::as_str) == Some(KUBECONFIG_SECRET_TYPE) {
                let _ = self.mgmt.delete(&gvr_secret(), Some(ns), &secret);
            }
        }
    }

    /// Garbage collection: owned objects and kubeconfig Secrets whose Cluster is gone.
    fn collect_garbage(&self) {
        // The uid of every Cluster, read once (not one GET per owned object of the fleet).
        let clusters: HashMap<(String, String), String> = self
            .mgmt
            .list(&gvr_cluster(), None)
            .iter()
            .filter_map(|c| {
                let ns = namespace_of(c).unwrap_or("default").to_string();
                Some(((ns, name_of(c)?.to_string()), uid_of(c).to_string()))
            })
            .collect();
        let exists =
            |ns: &str, name: &str| clusters.contains_key(&(ns.to_string(), name.to_string()));
        let alive = |ns: &str, name: &str, uids: &[String]| -> bool {
            match clusters.get(&(ns.to_string(), name.to_string())) {
                Some(uid) => uids.is_empty() || uids.iter().any(|u| u == uid),
                None => false,
            }
        };
        for gvr in [
            gvr_kcp(),
            gvr_machine_deployment(),
            gvr_aws_cluster(),
            gvr_aws_machine_template(),
        ] {
            for obj in self.mgmt.list(&gvr, None) {
                let (Some(cn), Some(n)) = (label(&obj, CLUSTER_NAME_LABEL), name_of(&obj)) else {
                    continue;
                };
                if label(&obj, TOPOLOGY_OWNED_LABEL).is_none() {
                    continue;
                }
                let ns = namespace_of(&obj).unwrap_or("default");
                if !alive(ns, cn, &owner_uids(&obj)) {
                    let _ = self.mgmt.delete(&gvr, Some(ns), n);
                }
            }
        }
        for m in self.mgmt.list(&gvr_machine(), None) {
            let (Some(cn), Some(n)) = (label(&m, CLUSTER_NAME_LABEL), name_of(&m)) else {
                continue;
            };
            let ns = namespace_of(&m).unwrap_or("default");
            let simulated = label(&m, "cluster.x-k8s.io/control-plane").is_some()
                || label(&m, "cluster.x-k8s.io/deployment-name").is_some();
            if simulated
                && str_at(&m, "/spec/bootstrap/dataSecretName") == Some(n)
                && !exists(ns, cn)
            {
                let _ = self.mgmt.delete(&gvr_machine(), Some(ns), n);
            }
        }
        for s in self.mgmt.list(&gvr_secret(), None) {
            if s.get("type").and_then(Value::as_str) != Some(KUBECONFIG_SECRET_TYPE) {
                continue;
            }
            let (Some(cn), Some(n)) = (label(&s, CLUSTER_NAME_LABEL), name_of(&s)) else {
                continue;
            };
            let ns = namespace_of(&s).unwrap_or("default");
            if n == format!("{cn}-kubeconfig") && !exists(ns, cn) {
                let _ = self.mgmt.delete(&gvr_secret(), Some(ns), n);
            }
        }
    }
}

/// Annotation on Machines: the infrastructure machine template their owner pointed at when they
/// were created (with `spec.version`, what makes a Machine up to date or outdated).
const INFRA_TEMPLATE_ANNOTATION: &str = "emulator.tkgops.dev/infra-template";
/// Annotation on KubeadmControlPlanes and MachineDeployments (the number of Machines created so
/// far, so new Machines get new names) and on Machines (their creation order).
const MACHINE_SERIAL_ANNOTATION: &str = "emulator.tkgops.dev/machine-serial";

/// The Kubernetes version an owner's machines should run.
fn desired_version(owner: &Value, control_plane: bool) -> String {
    let ptr = if control_plane {
        "/spec/version"
    } else {
        "/spec/template/spec/version"
    };
    str_at(owner, ptr).unwrap_or("").to_string()
}

/// The infrastructure machine template an owner's machines should be created from (empty when
/// the owner has no `infrastructureRef`).
fn desired_template(owner: &Value, control_plane: bool) -> String {
    let ptr = if control_plane {
        "/spec/machineTemplate/infrastructureRef/name"
    } else {
        "/spec/template/spec/infrastructureRef/name"
    };
    str_at(owner, ptr).unwrap_or("").to_string()
}

/// `(maxSurge, maxUnavailable)` of a MachineDeployment (`spec.strategy.rollingUpdate`, defaults 1
/// and 0, percentages of `spec.replicas`, surge rounded up, unavailable down; both 0 is invalid in
/// CAPI and treated as unavailable 1) or a KubeadmControlPlane
/// (`spec.rolloutStrategy.rollingUpdate.maxSurge`, 0 or 1, default 1; unavailable `1 - surge`).
fn rollout_strategy(owner: &Value, control_plane: bool, replicas: i64) -> (i64, i64) {
    if control_plane {
        let surge = int_or_percent(
            owner.pointer("/spec/rolloutStrategy/rollingUpdate/maxSurge"),
            replicas,
            1,
            true,
        )
        .clamp(0, 1);
        return (surge, 1 - surge);
    }
    let ru = owner.pointer("/spec/strategy/rollingUpdate");
    let surge = int_or_percent(ru.and_then(|r| r.get("maxSurge")), replicas, 1, true).max(0);
    let mut unavailable =
        int_or_percent(ru.and_then(|r| r.get("maxUnavailable")), replicas, 0, false).max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

fn machine_version(m: &Value) -> String {
    str_at(m, "/spec/version").unwrap_or("").to_string()
}

fn machine_template(m: &Value) -> String {
    annotation(m, INFRA_TEMPLATE_ANNOTATION)
        .unwrap_or("")
        .to_string()
}

/// Whether a Machine is up (has a `nodeRef`).
fn machine_ready(m: &Value) -> bool {
    m.pointer("/status/nodeRef/name").is_some()
}

fn machine_serial(m: &Value) -> u64 {
    annotation(m, MACHINE_SERIAL_ANNOTATION)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sort key of a `vMAJOR.MINOR.PATCH[+build]` version (numeric parts, missing ones 0).
fn semver_key(v: &str) -> (u64, u64, u64) {
    let core = v.trim_start_matches('v');
    let core = core.split(['+', '-']).next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Whether a MachineDeployment is rolling out (CAPI's `IsRollingOut`): spec not observed yet, or
/// `replicas`/`updatedReplicas`/`availableReplicas` differ from `spec.replicas`.
fn md_rolling_out(md: &Value) -> bool {
    let want = i64_at(md, "/spec/replicas").unwrap_or(1);
    observed_generation_of(md) != Some(generation_of(md))
        || ["replicas", "updatedReplicas", "availableReplicas"]
            .iter()
            .any(|f| i64_at(md, &format!("/status/{f}")) != Some(want))
}

/// AWSMachineTemplate spec from the `controlPlane` or `worker` variable (instance type, root
/// volume; defaults t3.large / m5.large and 80 GiB as the class's), the SSH key and TKG's
/// instance profiles (docs/tkg2-class-based.md §2).
fn machine_template_spec(var: Option<&Value>, ssh_key: &str, control_plane: bool) -> Value {
    let instance_type = var
        .and_then(|v| v.get("instanceType"))
        .and_then(Value::as_str)
        .unwrap_or(if control_plane {
            "t3.large"
        } else {
            "m5.large"
        });
    let size = var
        .and_then(|v| i64_at(v, "/rootVolume/sizeGiB"))
        .unwrap_or(80);
    json!({"template": {"spec": {
        "instanceType": instance_type,
        "rootVolume": {"size": size},
        "sshKeyName": ssh_key,
        "iamInstanceProfile": if control_plane { "control-plane.tkg.cloud.vmware.com" } else { "nodes.tkg.cloud.vmware.com" },
    }}})
}

/// `metadata.ownerReferences[kind=Cluster].uid` values.
fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter(|r| r.get("kind").and_then(Value::as_str) == Some("Cluster"))
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// AWSCluster spec from the ClusterClass variables (the `tkg-aws-default-v1.0.0` patches,
/// docs/tkg2-class-based.md §2): `identityRef` only when `name` is set; the control plane security
/// group from `securityGroupOverrides.controlPlane` (what the patch reads) or `controlplane`.
fn aws_cluster_spec(name: &str, topology: &Value) -> Value {
    let var = |n: &str| topology_variable(topology, n);
    let region = var("region").and_then(Value::as_str).unwrap_or("");
    let mut spec = json!({
        "region": region,
        "sshKeyName": var("sshKeyName").and_then(Value::as_str).unwrap_or(""),
        "bastion": {"enabled": var("bastion").and_then(|b| b.get("enabled")).and_then(Value::as_bool).unwrap_or(true)},
        "controlPlaneLoadBalancer": {
            "scheme": if var("loadBalancerSchemeInternal").and_then(Value::as_bool).unwrap_or(false) { "internal" } else { "internet-facing" },
        },
        "network": {"vpc": {}, "subnets": []},
    });
    if let Some(id) = var("identityRef")
        .and_then(|i| i.get("name"))
        .and_then(Value::as_str)
    {
        let kind = var("identityRef")
            .and_then(|i| i.get("kind"))
            .and_then(Value::as_str)
            .unwrap_or("AWSClusterRoleIdentity");
        spec["identityRef"] = json!({"kind": kind, "name": id});
    }
    if let Some(net) = var("network") {
        if let Some(id) = net
            .pointer("/vpc/existingID")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            spec["network"]["vpc"]["id"] = json!(id);
        }
        if let Some(cidr) = net
            .pointer("/vpc/cidr")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            spec["network"]["vpc"]["cidrBlock"] = json!(cidr);
        }
        let mut subnets = Vec::new();
        for s in net
            .get("subnets")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let az = s.get("az").and_then(Value::as_str).unwrap_or("");
            for (kind, public) in [("private", false), ("public", true)] {
                let Some(sub) = s.get(kind) else { continue };
                let mut o = json!({"availabilityZone": az, "isPublic": public});
                if let Some(id) = sub
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|x| !x.is_empty())
                {
                    o["id"] = json!(id);
                }
                if let Some(c) = sub
                    .get("cidr")
                    .and_then(Value::as_str)
                    .filter(|x| !x.is_empty())
                {
                    o["cidrBlock"] = json!(c);
                }
                subnets.push(o);
            }
        }
        spec["network"]["subnets"] = json!(subnets);
        if let Some(sg) = net.get("securityGroupOverrides").and_then(Value::as_object) {
            let map = [
                ("bastion", "bastion"),
                ("apiServerLB", "apiserver-lb"),
                ("lb", "lb"),
                ("controlplane", "controlplane"),
                ("controlPlane", "controlplane"),
                ("node", "node"),
            ];
            let mut o = Map::new();
            for (k, v) in map {
                if let Some(id) = sg.get(k).and_then(Value::as_str).filter(|x| !x.is_empty()) {
                    o.insert(v.into(), json!(id));
                }
            }
            if !o.is_empty() {
                spec["network"]["securityGroupOverrides"] = Value::Object(o);
            }
        }
    }
    let _ = name;
    spec
}

#[async_trait::async_trait]
impl Reconciler for CapiController {
    async fn on_tick(&mut self) {
        let all = std::mem::take(&mut self.all_dirty);
        if all || std::mem::take(&mut self.classes_dirty) {
            if let Err(err) = catalog::propagate_classes(&self.mgmt) {
                warn!(error = %err, "ClusterClass propagation failed");
            }
        }
        let dirty = std::mem::take(&mut self.dirty);
        let candidates = self.candidates(all, &dirty);
        // The Clusters this tick considered: their MachineHealthChecks are reconciled below.
        let mut touched: HashSet<(String, String)> = HashSet::new();
        for cluster in candidates {
            if !self.needs_reconcile(all, &dirty, &cluster) {
                continue;
            }
            let ns = namespace_of(&cluster).unwrap_or("default").to_string();
            let name = name_of(&cluster).unwrap_or_default().to_string();
            let before = self.mgmt.resource_version();
            let result = self.reconcile_cluster(&cluster).await;
            if let Err(err) = &result {
                warn!(cluster = %key(&cluster), error = %err, "Cluster reconcile failed");
            }
            if result.is_err() || self.mgmt.resource_version() != before {
                // Its next step waits for the next tick (and a failed one is retried there).
                self.dirty.insert((ns.clone(), name.clone()));
            }
            touched.insert((ns, name));
        }
        // MachineHealthChecks read their Cluster, its Machines and its workload's Nodes: those
        // of the Clusters considered (all of them after an unattributed change), and every one
        // that counts an unhealthy Machine. The real controller also watches each workload
        // cluster's Nodes; a Node that became healthy without a change of its management
        // cluster's objects must not leave a stale unhealthy count behind (a soak would halt).
        let mut mhc_clusters: HashSet<(String, String)> = HashSet::new();
        let mhcs: Vec<Arc<Value>> = self
            .mgmt
            .list_shared(&gvr_machine_health_check(), None)
            .into_iter()
            .filter(|m| {
                let Some(c) = str_at(m, "/spec/clusterName") else {
                    return all;
                };
                let key = (
                    namespace_of(m).unwrap_or("default").to_string(),
                    c.to_string(),
                );
                let unhealthy = m.pointer("/status/currentHealthy").and_then(Value::as_i64)
                    < m.pointer("/status/expectedMachines")
                        .and_then(Value::as_i64);
                let due = all || unhealthy || touched.contains(&key);
                if due {
                    mhc_clusters.insert(key);
                }
                due
            })
            .collect();
        if !mhcs.is_empty() {
            let mut machines: HashMap<(String, String), Vec<Arc<Value>>> = HashMap::new();
            for m in self.mgmt.list_shared(&gvr_machine(), None) {
                if let Some(c) = label(&m, CLUSTER_NAME_LABEL) {
                    let key = (
                        namespace_of(&m).unwrap_or("default").to_string(),
                        c.to_string(),
                    );
                    if all || mhc_clusters.contains(&key) {
                        machines.entry(key).or_default().push(m);
                    }
                }
            }
            for mhc in &mhcs {
                if let Err(err) = self.reconcile_mhc(mhc, &machines) {
                    warn!(mhc = %key(mhc), error = %err, "MachineHealthCheck reconcile failed");
                }
            }
        }
        if all || std::mem::take(&mut self.deletions) {
            self.collect_garbage();
        }
    }

    fn on_lagged(&mut self) {
        self.all_dirty = true;
    }

    async fn on_event(&mut self, event: ChangeEvent) {
        self.mark_dirty(&event);
        if same_gvr(&event.gvr, &gvr_namespace()) && event.kind == "ADDED" {
            // The object-propagation controller copies the ClusterClass into new namespaces.
            if let Err(err) = catalog::propagate_classes(&self.mgmt) {
                warn!(error = %err, "ClusterClass propagation failed");
            }
            return;
        }
        if !same_gvr(&event.gvr, &gvr_cluster()) {
            return;
        }
        match event.kind.as_str() {
            "DELETED" => {
                if let Some(name) = name_of(&event.object) {
                    let ns = namespace_of(&event.object).unwrap_or("default");
                    self.delete_owned(
                        ns,
                        name,
                        Some(uid_of(&event.object)).filter(|u| !u.is_empty()),
                    );
                }
            }
            "ADDED" => {
                // Entry step only (topology objects + Pending): it does not cascade, since the
                // status it writes makes the next step wait for a tick.
                let (Some(name), ns) = (name_of(&event.object), namespace_of(&event.object)) else {
                    return;
                };
                if let Some(current) = self.mgmt.get(&gvr_cluster(), ns, name) {
                    if current.pointer("/status/phase").is_none() {
                        if let Err(err) = self.reconcile_cluster(&current).await {
                            warn!(cluster = %key(&current), error = %err, "Cluster reconcile failed");
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

//! `kube.wait-cluster`: TKG's cluster readiness algorithm, as `tanzu cluster create` waits
//! (docs/tkg2-class-based.md §6; TF `pkg/v1/tkg/clusterclient/clusterclient.go`, `resource.go`,
//! `tkg/client/package_helper.go`; tanzu-apis §2.2):
//!
//! 1. *Initialized*: the Cluster's conditions `ControlPlaneReady` and `InfrastructureReady` are
//!    `True` (the boolean status fields when the conditions are absent).
//! 2. *Ready*: every KubeadmControlPlane of the cluster has `status.readyReplicas ==
//!    spec.replicas` (default 1), and so has every MachineDeployment (and, for ClusterClass
//!    clusters, every topology MachineDeployment exists).
//! 3. Every Machine of the cluster has `status.nodeRef`.
//! 4. *Core packages* (ClusterClass clusters only): the ClusterBootstrap `<cluster>` (waited for
//!    up to [`WaitOptions::bootstrap_timeout`]) lists them ([`core_packages`]). A package passes
//!    on `ReconcileSucceeded`; `ReconcileFailed` is tolerated (kapp-controller retries) and its
//!    `usefulErrorMessage` reported as progress until [`WaitOptions::package_timeout`] (or
//!    shortly before the step deadline), when it becomes the wait's failure.
//!
//! Aborts, as TKG does, only when ([`CreationTracker`])
//! - `Ready` is `False` with severity `Error` continuously for [`WaitOptions::error_persistence`]
//!   (messages containing "context deadline exceeded" or "context canceled" do not count):
//!   "cluster creation failed, reason: …";
//! - nothing changed for [`WaitOptions::unchanged_timeout`] before the machines are ready
//!   (Ready's `lastTransitionTime`, or any MachineDeployment's `replicas`, `readyReplicas`,
//!   `updatedReplicas`): "timed out waiting for cluster creation to complete".
//!
//! `TopologyReconciled` is never checked (CAPI sets severity `Error` for transient topology
//! errors too), nor `failureReason` or phase `Failed`.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::packages::{reconcile_state, ReconcileState};
use super::{
    condition, condition_true, int_at, values, Failure, Judge, Progress, Verdict, WaitOptions,
};
use crate::output::KubeWaitClusterOutput;

/// Label Cluster API puts on every object of a cluster (its Cluster's name).
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// Label the topology controller puts on the MachineDeployments of a ClusterClass cluster.
pub const TOPOLOGY_MD_LABEL: &str = "topology.cluster.x-k8s.io/deployment-name";
/// Namespace of the core PackageInstalls in a workload cluster (§6 step 5).
pub const CORE_PACKAGES_NAMESPACE: &str = "tkg-system";

/// One observation of a cluster's state.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterState {
    /// `status.phase` of the Cluster (`Pending`, `Provisioning`, `Provisioned`, …; `Unknown` when unset).
    pub phase: String,
    /// Step 1 of the algorithm: `ControlPlaneReady` and `InfrastructureReady` are `True`.
    pub initialized: bool,
    /// Sum of `readyReplicas` over the KubeadmControlPlanes.
    pub cp_ready: i64,
    /// Sum of `spec.replicas` (default 1) over the KubeadmControlPlanes.
    pub cp_desired: i64,
    /// Number of KubeadmControlPlanes found.
    pub kcp_count: usize,
    /// Every KubeadmControlPlane is ready.
    pub cp_all_ready: bool,
    /// MachineDeployment name → (readyReplicas, spec.replicas).
    pub machine_deployments: BTreeMap<String, (i64, i64)>,
    /// Short MachineDeployment names (topology `md-0` or the full name) in the same order.
    pub md_short_names: BTreeMap<String, String>,
    /// Number of MachineDeployments the Cluster's topology asks for (0 for legacy clusters).
    pub topology_mds: usize,
}

impl ClusterState {
    /// Step 2 of the algorithm: initialized, at least one control plane, all replica counts ready,
    /// and (for ClusterClass clusters) every topology MachineDeployment created.
    pub fn ready(&self) -> bool {
        self.initialized
            && self.kcp_count > 0
            && self.cp_all_ready
            && self.machine_deployments.len() >= self.topology_mds
            && self.machine_deployments.values().all(|(r, d)| r == d)
    }

    /// A progress line, e.g. "Cluster phase Provisioned; control plane 2/3 ready; md-0 0/1".
    pub fn progress_line(&self) -> String {
        let mut s = format!("Cluster phase {}", self.phase);
        if !self.initialized {
            s.push_str("; waiting for infrastructure and control plane to be initialized");
        }
        if self.kcp_count == 0 {
            s.push_str("; control plane not created yet");
        } else {
            s.push_str(&format!(
                "; control plane {}/{} ready",
                self.cp_ready, self.cp_desired
            ));
        }
        for (name, (r, d)) in &self.machine_deployments {
            let short = self.md_short_names.get(name).unwrap_or(name);
            s.push_str(&format!("; {short} {r}/{d}"));
        }
        if self.machine_deployments.len() < self.topology_mds {
            s.push_str(&format!(
                "; {} of {} machine deployments created",
                self.machine_deployments.len(),
                self.topology_mds
            ));
        }
        s
    }

    /// The step output with `node_refs` (`<with nodeRef>/<Machines>`) and no core packages.
    pub fn output(&self, node_refs: String) -> KubeWaitClusterOutput {
        KubeWaitClusterOutput {
            phase: self.phase.clone(),
            control_plane: format!("{}/{}", self.cp_ready, self.cp_desired),
            machine_deployments: self
                .machine_deployments
                .iter()
                .map(|(n, (r, d))| (n.clone(), format!("{r}/{d}")))
                .collect(),
            node_refs,
            packages: None,
        }
    }
}

fn cond_str<'a>(c: &'a Value, field: &str) -> &'a str {
    c.get(field).and_then(Value::as_str).unwrap_or("")
}

/// Checks the Cluster for TKG's error condition: `Ready` is `False` with severity `Error` and
/// its message contains neither "context deadline exceeded" nor "context canceled" (TF
/// `clusterclient.go`, docs/tkg2-class-based.md §6 step 2). Returns the message TKG aborts with
/// once the condition has persisted ([`CreationTracker`]). `TopologyReconciled`,
/// `failureReason` and phase `Failed` are not checked.
pub fn cluster_failure(cluster: &Value) -> Option<String> {
    let c = condition(cluster, "Ready")?;
    if cond_str(c, "status") != "False" || cond_str(c, "severity") != "Error" {
        return None;
    }
    let message = cond_str(c, "message");
    if message.contains("context deadline exceeded") || message.contains("context canceled") {
        return None;
    }
    Some(format!(
        "cluster creation failed, reason: '{}', message: '{message}'",
        cond_str(c, "reason")
    ))
}

/// TKG's abort rules over observed time (docs/tkg2-class-based.md §6 step 2, §8 "Wait"): a
/// persistent `Ready=False`/`Error` and the unchanged-state timeout. Pure: the caller passes the
/// observed times (a [`Duration`] since the wait's origin).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreationTracker {
    /// Since when the error condition has been seen without interruption.
    error_since: Option<Duration>,
    /// What "changed" compares: Ready's lastTransitionTime and the MachineDeployments' replica
    /// counts.
    fingerprint: Option<String>,
    /// When the fingerprint last changed (or the tracker started).
    last_change: Duration,
}

impl CreationTracker {
    /// A tracker whose unchanged-state clock starts at `at`.
    pub fn new(at: Duration) -> Self {
        CreationTracker {
            error_since: None,
            fingerprint: None,
            last_change: at,
        }
    }

    /// Records one observation at `at` of the Cluster and its MachineDeployments (or, for a
    /// control plane rollout, its KubeadmControlPlanes: the same replica fields).
    ///
    /// Errors (the message of the abort, without the Cluster's name): "cluster creation failed,
    /// reason: …" once [`cluster_failure`] has held for `opts.error_persistence`; "timed out
    /// waiting for cluster creation to complete" once nothing changed for
    /// `opts.unchanged_timeout`.
    pub fn observe<V: Borrow<Value>>(
        &mut self,
        cluster: &Value,
        mds: &[V],
        at: Duration,
        opts: &WaitOptions,
    ) -> Result<(), String> {
        let mut fp = condition(cluster, "Ready")
            .map(|c| cond_str(c, "lastTransitionTime").to_string())
            .unwrap_or_default();
        let mut md_parts: Vec<String> = values(mds)
            .map(|m| {
                format!(
                    "{}={:?}/{:?}/{:?}",
                    m.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    int_at(m, "/status/replicas"),
                    int_at(m, "/status/readyReplicas"),
                    int_at(m, "/status/updatedReplicas")
                )
            })
            .collect();
        md_parts.sort();
        for p in md_parts {
            fp.push(';');
            fp.push_str(&p);
        }
        if self.fingerprint.as_deref() != Some(fp.as_str()) {
            self.fingerprint = Some(fp);
            self.last_change = at;
        }
        match cluster_failure(cluster) {
            Some(msg) => {
                let since = *self.error_since.get_or_insert(at);
                if at.saturating_sub(since) >= opts.error_persistence {
                    return Err(msg);
                }
            }
            None => self.error_since = None,
        }
        if at.saturating_sub(self.last_change) >= opts.unchanged_timeout {
            return Err("timed out waiting for cluster creation to complete".into());
        }
        Ok(())
    }

    /// The next observed time at which [`Self::observe`] could fail without any change being
    /// observed (the wait judges again then).
    pub fn next_deadline(&self, opts: &WaitOptions) -> Duration {
        let unchanged = self.last_change + opts.unchanged_timeout;
        match self.error_since {
            Some(since) => unchanged.min(since + opts.error_persistence),
            None => unchanged,
        }
    }
}

/// Whether a condition is `True`, falling back to the boolean status field when the condition is
/// absent (older or minimal controllers only set the booleans).
fn ready_flag(cluster: &Value, cond: &str, field: &str) -> bool {
    match condition(cluster, cond) {
        Some(_) => condition_true(cluster, cond),
        None => cluster
            .pointer(&format!("/status/{field}"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// Computes the state from the Cluster and its KubeadmControlPlanes and MachineDeployments.
pub fn cluster_state<K: Borrow<Value>, M: Borrow<Value>>(
    cluster: &Value,
    kcps: &[K],
    mds: &[M],
) -> ClusterState {
    let phase = cluster
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Unknown")
        .to_string();
    let initialized = ready_flag(cluster, "ControlPlaneReady", "controlPlaneReady")
        && ready_flag(cluster, "InfrastructureReady", "infrastructureReady");
    let mut cp_ready = 0;
    let mut cp_desired = 0;
    let mut cp_all_ready = true;
    for k in values(kcps) {
        let desired = int_at(k, "/spec/replicas").unwrap_or(1);
        let ready = int_at(k, "/status/readyReplicas").unwrap_or(0);
        cp_ready += ready;
        cp_desired += desired;
        cp_all_ready &= ready == desired;
    }
    let mut machine_deployments = BTreeMap::new();
    let mut md_short_names = BTreeMap::new();
    for m in values(mds) {
        let name = m
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let desired = int_at(m, "/spec/replicas").unwrap_or(1);
        let ready = int_at(m, "/status/readyReplicas").unwrap_or(0);
        let short = m
            .pointer("/metadata/labels")
            .and_then(|l| l.get(TOPOLOGY_MD_LABEL))
            .and_then(Value::as_str)
            .unwrap_or(&name)
            .to_string();
        md_short_names.insert(name.clone(), short);
        machine_deployments.insert(name, (ready, desired));
    }
    let topology_mds = cluster
        .pointer("/spec/topology/workers/machineDeployments")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    ClusterState {
        phase,
        initialized,
        cp_ready,
        cp_desired,
        kcp_count: kcps.len(),
        cp_all_ready,
        machine_deployments,
        md_short_names,
        topology_mds,
    }
}

/// One core package of a cluster: a ClusterBootstrap entry and the PackageInstall it becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorePackage {
    /// The ClusterBootstrap key: `kapp`, `cni`, `csi` or `cpi`.
    pub role: String,
    /// `<cluster>-<first dot-segment of refName>`, e.g. `wc1-antrea`.
    pub install_name: String,
    /// Whether the PackageInstall is in the management cluster (kapp-controller, in the
    /// Cluster's namespace) rather than in the workload cluster's `tkg-system`.
    pub management: bool,
}

/// The core packages TKG waits for, from ClusterBootstrap `bootstrap` of cluster `cluster`:
/// its `kapp`, `cni`, `csi` and `cpi` entries that have `valuesFrom.providerRef`, in that order
/// (§6 step 5; TF `tkg/client/package_helper.go`). Additional packages are not waited for.
pub fn core_packages(bootstrap: &Value, cluster: &str) -> Vec<CorePackage> {
    ["kapp", "cni", "csi", "cpi"]
        .iter()
        .filter_map(|role| {
            let entry = bootstrap.pointer(&format!("/spec/{role}"))?;
            entry.pointer("/valuesFrom/providerRef")?;
            let ref_name = entry.get("refName").and_then(Value::as_str)?;
            let short = ref_name.split('.').next().unwrap_or(ref_name);
            Some(CorePackage {
                role: role.to_string(),
                install_name: format!("{cluster}-{short}"),
                management: *role == "kapp",
            })
        })
        .collect()
}

/// What `kube.wait-cluster` observes of one cluster: the objects as the shared watches hold
/// them (JSON as the API server returns them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterSnapshot {
    /// The Cluster; `None` when the API server confirmed it does not exist.
    pub cluster: Option<Arc<Value>>,
    /// Its KubeadmControlPlanes (label [`CLUSTER_NAME_LABEL`]).
    pub control_planes: Vec<Arc<Value>>,
    /// Its MachineDeployments (label [`CLUSTER_NAME_LABEL`]).
    pub machine_deployments: Vec<Arc<Value>>,
    /// Its Machines (label [`CLUSTER_NAME_LABEL`]).
    pub machines: Vec<Arc<Value>>,
    /// The ClusterBootstrap `<cluster>` in the Cluster's namespace, when it exists.
    pub bootstrap: Option<Arc<Value>>,
    /// The core PackageInstalls ([`core_packages`] of the bootstrap) found, by install name;
    /// a missing one is "not created yet".
    pub packages: BTreeMap<String, Arc<Value>>,
}

impl ClusterSnapshot {
    /// Steps 1–3 of the algorithm: the Cluster is initialized and ready
    /// ([`ClusterState::ready`]) and every Machine has a `nodeRef`. The package phase (and the
    /// workload cluster's PackageInstall watch) starts only then.
    pub fn machines_ready(&self) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        cluster_state(cluster, &self.control_planes, &self.machine_deployments).ready()
            && self
                .machines
                .iter()
                .all(|m| m.pointer("/status/nodeRef").is_some())
    }
}

/// The judge of `kube.wait-cluster` (module docs) for the Cluster `namespace/name` on
/// management cluster `management_cluster`.
///
/// Output `{"phase":"Provisioned","controlPlane":"3/3","machineDeployments":{"<md>":"1/1",…},
/// "nodeRefs":"6/6","packages":{"<pkgi>":"Reconcile succeeded",…}}` (no `packages` for a
/// plan-based cluster). Failures are all [`super::Retry::Never`]: "Cluster/\<ns\>/\<name\> not
/// found on management cluster '\<mc\>' (was it applied?)", "Cluster/\<ns\>/\<name\>: cluster
/// creation failed, reason: …", "…: timed out waiting for cluster creation to complete",
/// "…: ClusterBootstrap \<ns\>/\<name\> not found after \<n\> s", "…: core packages did not reconcile
/// within \<n\> s: PackageInstall \<ns\>/\<name\>: \<usefulErrorMessage\>".
#[derive(Clone, Debug)]
pub struct ClusterReady {
    management_cluster: String,
    namespace: String,
    name: String,
    opts: WaitOptions,
    report_deadline: Option<Duration>,
    tracker: CreationTracker,
    /// When the machines were first seen ready (the package phase's start).
    packages_since: Option<Duration>,
    /// Latest failure per core package: kapp-controller alternates ReconcileFailed and
    /// Reconciling while it retries, so a retry in progress still counts as failing.
    last_failures: BTreeMap<String, String>,
    closing: Option<String>,
}

impl ClusterReady {
    /// The judge for the Cluster `namespace/name` on `management_cluster`, with the tolerances
    /// `opts`, started at `at` (the unchanged-state clock's start), ending a package failure by
    /// `report_deadline` (observed time; [`WaitOptions::report_after`]) at the latest.
    pub fn new(
        management_cluster: &str,
        namespace: &str,
        name: &str,
        opts: WaitOptions,
        report_deadline: Option<Duration>,
        at: Duration,
    ) -> Self {
        ClusterReady {
            management_cluster: management_cluster.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            opts,
            report_deadline,
            tracker: CreationTracker::new(at),
            packages_since: None,
            last_failures: BTreeMap::new(),
            closing: None,
        }
    }

    fn what(&self) -> String {
        format!("Cluster/{}/{}", self.namespace, self.name)
    }
}

impl Judge for ClusterReady {
    type Snapshot = ClusterSnapshot;
    type Output = KubeWaitClusterOutput;

    fn judge(&mut self, s: &ClusterSnapshot, at: Duration) -> Verdict<KubeWaitClusterOutput> {
        let what = self.what();
        let (ns, name) = (self.namespace.clone(), self.name.clone());
        let Some(cluster) = &s.cluster else {
            return Verdict::Failed(Failure::permanent(format!(
                "{what} not found on management cluster '{}' (was it applied?)",
                self.management_cluster
            )));
        };
        let state = cluster_state(cluster, &s.control_planes, &s.machine_deployments);
        let with_node = s
            .machines
            .iter()
            .filter(|m| m.pointer("/status/nodeRef").is_some())
            .count();
        let nodes_ready = with_node == s.machines.len();
        let mut line = state.progress_line();
        if state.ready() {
            line.push_str(&format!("; nodeRefs {with_node}/{}", s.machines.len()));
        }
        let machines_ready = state.ready() && nodes_ready;
        let mut wake = None;
        if !machines_ready || self.packages_since.is_none() {
            if let Err(m) = self
                .tracker
                .observe(cluster, &s.machine_deployments, at, &self.opts)
            {
                return Verdict::Failed(Failure::permanent(format!("{what}: {m}")));
            }
            wake = Some(self.tracker.next_deadline(&self.opts));
        }
        if !machines_ready {
            return Verdict::Waiting(Progress::line(line).recheck_at_opt(wake));
        }
        let mut out = state.output(format!("{with_node}/{}", s.machines.len()));
        if cluster.pointer("/spec/topology").is_none() {
            // Plan-based clusters have no ClusterBootstrap (§6 step 5: class-based only).
            self.closing = Some(line);
            return Verdict::Done(out);
        }
        let since = *self.packages_since.get_or_insert(at);
        let Some(cb) = &s.bootstrap else {
            let until = since + self.opts.bootstrap_timeout;
            if at >= until {
                return Verdict::Failed(Failure::permanent(format!(
                    "{what}: ClusterBootstrap {ns}/{name} not found after {} s",
                    self.opts.bootstrap_timeout.as_secs()
                )));
            }
            line.push_str("; waiting for ClusterBootstrap");
            return Verdict::Waiting(Progress::line(line).recheck_at(until));
        };
        let core = core_packages(cb, &name);
        let mut done = BTreeMap::new();
        let mut pending: Vec<String> = Vec::new();
        let mut failed: Vec<String> = Vec::new();
        for p in &core {
            let pns = if p.management {
                ns.as_str()
            } else {
                CORE_PACKAGES_NAMESPACE
            };
            let st = match s.packages.get(&p.install_name) {
                Some(o) => reconcile_state(o),
                None => ReconcileState::Pending("not created yet".into()),
            };
            match st {
                ReconcileState::Succeeded => {
                    self.last_failures.remove(&p.install_name);
                    done.insert(p.install_name.clone(), "Reconcile succeeded".into());
                }
                ReconcileState::Failed(m) => {
                    self.last_failures.insert(p.install_name.clone(), m.clone());
                    failed.push(format!("PackageInstall {pns}/{}: {m}", p.install_name))
                }
                ReconcileState::Pending(d) => match self.last_failures.get(&p.install_name) {
                    Some(m) => failed.push(format!("PackageInstall {pns}/{}: {m}", p.install_name)),
                    None => pending.push(format!("{} ({d})", p.install_name)),
                },
            }
        }
        line.push_str(&format!(
            "; packages {}/{} reconciled",
            done.len(),
            core.len()
        ));
        if !failed.is_empty() {
            line.push_str(&format!("; retrying: {}", failed.join("; ")));
        }
        if failed.is_empty() && pending.is_empty() {
            self.closing = Some(line);
            out.packages = Some(done);
            return Verdict::Done(out);
        }
        let mut until = since + self.opts.package_timeout;
        if !failed.is_empty() {
            if let Some(d) = self.report_deadline {
                until = until.min(d);
            }
        }
        if at >= until {
            let detail = if failed.is_empty() {
                format!("not reconciled: {}", pending.join(", "))
            } else {
                failed.join("; ")
            };
            return Verdict::Failed(Failure::permanent(format!(
                "{what}: core packages did not reconcile within {} s: {detail}",
                at.saturating_sub(since).as_secs()
            )));
        }
        Verdict::Waiting(Progress::line(line).recheck_at(until).recheck_at_opt(wake))
    }

    fn closing_line(&self, _output: &KubeWaitClusterOutput) -> Option<String> {
        self.closing.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn cluster(conds: Value) -> Value {
        json!({"status": {"phase": "Provisioned", "conditions": conds},
               "spec": {"topology": {"workers": {"machineDeployments": [{"name": "md-0"}]}}}})
    }

    #[test]
    fn only_ready_false_with_severity_error_counts() {
        let c = cluster(
            json!([{"type": "Ready", "status": "False", "severity": "Error", "reason": "R", "message": "boom"}]),
        );
        assert_eq!(
            cluster_failure(&c).unwrap(),
            "cluster creation failed, reason: 'R', message: 'boom'"
        );
        let c = cluster(
            json!([{"type": "Ready", "status": "False", "severity": "Warning", "reason": "R"}]),
        );
        assert!(cluster_failure(&c).is_none());
        // TKG never checks TopologyReconciled, failureReason or the phase.
        let mut c = cluster(
            json!([{"type": "TopologyReconciled", "status": "False", "severity": "Error", "message": "no class"}]),
        );
        c["status"]["failureReason"] = json!("CreateError");
        c["status"]["phase"] = json!("Failed");
        assert!(cluster_failure(&c).is_none());
        for m in [
            "Get \"https://x\": context deadline exceeded",
            "context canceled",
        ] {
            let c = cluster(
                json!([{"type": "Ready", "status": "False", "severity": "Error", "message": m}]),
            );
            assert!(cluster_failure(&c).is_none(), "{m}");
        }
    }

    fn md(ready: i64) -> Value {
        json!({"metadata": {"name": "c-md-0"}, "spec": {"replicas": 2},
               "status": {"replicas": 2, "readyReplicas": ready, "updatedReplicas": 2}})
    }

    #[test]
    fn a_persistent_error_aborts_after_the_persistence_window_only() {
        let opts = WaitOptions::default();
        let t0 = secs(7);
        let mut t = CreationTracker::new(t0);
        let failing = cluster(
            json!([{"type": "Ready", "status": "False", "severity": "Error", "reason": "R", "message": "quota", "lastTransitionTime": "t1"}]),
        );
        let fine = cluster(
            json!([{"type": "Ready", "status": "False", "severity": "Info", "reason": "Waiting", "lastTransitionTime": "t2"}]),
        );
        let mds = [md(0)];
        t.observe(&failing, &mds, t0, &opts).unwrap();
        assert_eq!(t.next_deadline(&opts), t0 + opts.error_persistence);
        // 4 min 59 s later: still tolerated.
        let almost = t0 + opts.error_persistence - secs(1);
        t.observe(&failing, &mds, almost, &opts).unwrap();
        // Interrupted: the window starts again.
        t.observe(&fine, &mds, almost, &opts).unwrap();
        let t1 = almost + secs(1);
        t.observe(&failing, &mds, t1, &opts).unwrap();
        t.observe(&failing, &mds, t1 + opts.error_persistence - secs(1), &opts)
            .unwrap();
        let e = t
            .observe(&failing, &mds, t1 + opts.error_persistence, &opts)
            .unwrap_err();
        assert_eq!(e, "cluster creation failed, reason: 'R', message: 'quota'");
    }

    #[test]
    fn nothing_changed_for_the_operation_timeout_aborts() {
        let opts = WaitOptions::default();
        let t0 = Duration::ZERO;
        let mut t = CreationTracker::new(t0);
        let c = cluster(
            json!([{"type": "Ready", "status": "False", "severity": "Info", "lastTransitionTime": "t1"}]),
        );
        t.observe(&c, &[md(0)], t0, &opts).unwrap();
        // An MD's readyReplicas moving counts as a change and restarts the clock.
        let t1 = t0 + secs(20 * 60);
        t.observe(&c, &[md(1)], t1, &opts).unwrap();
        assert_eq!(t.next_deadline(&opts), t1 + opts.unchanged_timeout);
        t.observe(&c, &[md(1)], t1 + opts.unchanged_timeout - secs(1), &opts)
            .unwrap();
        let e = t
            .observe(&c, &[md(1)], t1 + opts.unchanged_timeout, &opts)
            .unwrap_err();
        assert_eq!(e, "timed out waiting for cluster creation to complete");
        // Ready's lastTransitionTime moving is a change too.
        let mut t = CreationTracker::new(t0);
        t.observe::<Value>(&c, &[], t0, &opts).unwrap();
        let c2 = cluster(
            json!([{"type": "Ready", "status": "False", "severity": "Info", "lastTransitionTime": "t9"}]),
        );
        t.observe::<Value>(&c2, &[], t0 + opts.unchanged_timeout, &opts)
            .unwrap();
    }

    #[test]
    fn core_packages_follow_the_cluster_bootstrap() {
        let cb = json!({"spec": {
            "kapp": {"refName": "kapp-controller.tanzu.vmware.com.0.41.7+vmware.1-tkg.1",
                     "valuesFrom": {"providerRef": {"kind": "KappControllerConfig"}}},
            "cni": {"refName": "antrea.tanzu.vmware.com.1.9.0+vmware.2-tkg.1-advanced",
                    "valuesFrom": {"providerRef": {"kind": "AntreaConfig"}}},
            "csi": {"refName": "aws-ebs-csi-driver.tanzu.vmware.com.1.8.0+vmware.2-tkg.1",
                    "valuesFrom": {"providerRef": {"kind": "AwsEbsCSIConfig"}}},
            "cpi": {"refName": "no-provider-ref.tanzu.vmware.com.1.0.0"},
            "additionalPackages": [{"refName": "metrics-server.tanzu.vmware.com.0.6.2",
                                    "valuesFrom": {"providerRef": {"kind": "X"}}}]}});
        let names: Vec<(String, bool)> = core_packages(&cb, "wc1")
            .into_iter()
            .map(|p| (p.install_name, p.management))
            .collect();
        assert_eq!(
            names,
            [
                ("wc1-kapp-controller".to_string(), true),
                ("wc1-antrea".to_string(), false),
                ("wc1-aws-ebs-csi-driver".to_string(), false)
            ]
        );
    }

    #[test]
    fn readiness_counts_replicas() {
        let c = cluster(
            json!([{"type": "ControlPlaneReady", "status": "True"}, {"type": "InfrastructureReady", "status": "True"}]),
        );
        let kcp = json!({"spec": {"replicas": 3}, "status": {"readyReplicas": 2}});
        let md = json!({"metadata": {"name": "c-md-0-abc", "labels": {TOPOLOGY_MD_LABEL: "md-0"}}, "spec": {"replicas": 1}, "status": {"readyReplicas": 0}});
        let s = cluster_state(&c, std::slice::from_ref(&kcp), std::slice::from_ref(&md));
        assert!(!s.ready());
        assert_eq!(
            s.progress_line(),
            "Cluster phase Provisioned; control plane 2/3 ready; md-0 0/1"
        );
        let kcp = json!({"spec": {"replicas": 3}, "status": {"readyReplicas": 3}});
        let md = json!({"metadata": {"name": "c-md-0-abc"}, "spec": {"replicas": 1}, "status": {"readyReplicas": 1}});
        let s = cluster_state(&c, &[kcp], &[md]);
        assert!(s.ready());
        let out = s.output("1/1".into());
        assert_eq!(out.machine_deployments["c-md-0-abc"], "1/1");
        assert_eq!(out.control_plane, "3/3");
        // No MachineDeployment yet although the topology asks for one.
        let s = cluster_state::<Value, Value>(&c, &[json!({"status": {"readyReplicas": 1}})], &[]);
        assert!(!s.ready());
    }

    // ---- the judge, on fixtures shaped like Cluster API's and kapp-controller's objects ----

    const OK: &str = "True";

    fn a(v: Value) -> Arc<Value> {
        Arc::new(v)
    }

    /// A class-based Cluster `wc1` (one topology MD), initialized, Ready=False/Info.
    fn wc1(phase: &str) -> Value {
        json!({"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
               "metadata": {"name": "wc1", "namespace": "default"},
               "spec": {"topology": {"class": "tkg-aws-default-v1.0.0", "version": "v1.24.9+vmware.1-tkg.1",
                        "workers": {"machineDeployments": [{"class": "tkg-worker", "name": "md-0", "replicas": 1}]}}},
               "status": {"phase": phase, "conditions": [
                   {"type": "ControlPlaneReady", "status": OK},
                   {"type": "InfrastructureReady", "status": OK},
                   {"type": "Ready", "status": "False", "severity": "Info", "reason": "WaitingForAvailableMachines", "lastTransitionTime": "2023-01-01T00:00:00Z"}]}})
    }

    fn kcp(ready: i64) -> Value {
        json!({"kind": "KubeadmControlPlane", "metadata": {"name": "wc1-x7k2p", "namespace": "default",
               "labels": {CLUSTER_NAME_LABEL: "wc1"}}, "spec": {"replicas": 1, "version": "v1.24.9+vmware.1"},
               "status": {"replicas": 1, "readyReplicas": ready, "updatedReplicas": 1}})
    }

    fn md0(ready: i64) -> Value {
        json!({"kind": "MachineDeployment", "metadata": {"name": "wc1-md-0-4tq8w", "namespace": "default",
               "labels": {CLUSTER_NAME_LABEL: "wc1", TOPOLOGY_MD_LABEL: "md-0"}},
               "spec": {"replicas": 1}, "status": {"replicas": 1, "readyReplicas": ready, "updatedReplicas": 1}})
    }

    fn machine(name: &str, node: bool) -> Value {
        let mut m = json!({"kind": "Machine", "metadata": {"name": name, "namespace": "default",
                           "labels": {CLUSTER_NAME_LABEL: "wc1"}}, "status": {"phase": "Running"}});
        if node {
            m["status"]["nodeRef"] =
                json!({"kind": "Node", "name": format!("ip-10-0-0-{}", name.len())});
        }
        m
    }

    fn bootstrap() -> Value {
        json!({"kind": "ClusterBootstrap", "metadata": {"name": "wc1", "namespace": "default"}, "spec": {
            "kapp": {"refName": "kapp-controller.tanzu.vmware.com.0.41.7+vmware.1-tkg.1",
                     "valuesFrom": {"providerRef": {"kind": "KappControllerConfig"}}},
            "cni": {"refName": "antrea.tanzu.vmware.com.1.9.0+vmware.2-tkg.1-advanced",
                    "valuesFrom": {"providerRef": {"kind": "AntreaConfig"}}}}})
    }

    fn pkgi(name: &str, ns: &str, cond: &str, useful: &str) -> Value {
        json!({"kind": "PackageInstall", "metadata": {"name": name, "namespace": ns, "generation": 1},
               "status": {"observedGeneration": 1, "conditions": [{"type": cond, "status": OK}],
                          "usefulErrorMessage": useful, "friendlyDescription": cond}})
    }

    fn ready_snapshot() -> ClusterSnapshot {
        ClusterSnapshot {
            cluster: Some(a(wc1("Provisioned"))),
            control_planes: vec![a(kcp(1))],
            machine_deployments: vec![a(md0(1))],
            machines: vec![a(machine("wc1-cp", true)), a(machine("wc1-md-0-a", true))],
            bootstrap: None,
            packages: BTreeMap::new(),
        }
    }

    fn judge() -> ClusterReady {
        ClusterReady::new(
            "mc1",
            "default",
            "wc1",
            WaitOptions::default(),
            Some(secs(3595)),
            Duration::ZERO,
        )
    }

    fn line<O: std::fmt::Debug>(v: &Verdict<O>) -> &str {
        match v {
            Verdict::Waiting(p) => p.line.as_deref().unwrap_or(""),
            other => panic!("not waiting: {other:?}"),
        }
    }

    #[test]
    fn a_missing_cluster_fails_at_once() {
        let v = judge().judge(&ClusterSnapshot::default(), Duration::ZERO);
        assert_eq!(
            v,
            Verdict::Failed(Failure::permanent(
                "Cluster/default/wc1 not found on management cluster 'mc1' (was it applied?)"
            ))
        );
    }

    #[test]
    fn machines_then_bootstrap_then_core_packages() {
        let mut j = judge();
        let mut s = ready_snapshot();
        s.machine_deployments = vec![a(md0(0))];
        let v = j.judge(&s, secs(1));
        assert_eq!(
            line(&v),
            "Cluster phase Provisioned; control plane 1/1 ready; md-0 0/1"
        );
        // The unchanged-state clock is armed.
        let Verdict::Waiting(p) = v else {
            unreachable!()
        };
        assert_eq!(p.recheck_at, Some(secs(1) + secs(30 * 60)));
        assert!(!s.machines_ready());
        s.machine_deployments = vec![a(md0(1))];
        s.machines[1] = a(machine("wc1-md-0-a", false));
        assert_eq!(
            line(&j.judge(&s, secs(2))),
            "Cluster phase Provisioned; control plane 1/1 ready; md-0 1/1; nodeRefs 1/2"
        );
        let s = ready_snapshot();
        assert!(s.machines_ready());
        let v = j.judge(&s, secs(3));
        assert_eq!(
            line(&v),
            "Cluster phase Provisioned; control plane 1/1 ready; md-0 1/1; nodeRefs 2/2; waiting for ClusterBootstrap"
        );
        let Verdict::Waiting(p) = v else {
            unreachable!()
        };
        assert_eq!(p.recheck_at, Some(secs(3) + secs(600)));
        let mut s = ready_snapshot();
        s.bootstrap = Some(a(bootstrap()));
        s.packages.insert(
            "wc1-kapp-controller".into(),
            a(pkgi(
                "wc1-kapp-controller",
                "default",
                "ReconcileSucceeded",
                "",
            )),
        );
        assert_eq!(
            line(&j.judge(&s, secs(4))),
            "Cluster phase Provisioned; control plane 1/1 ready; md-0 1/1; nodeRefs 2/2; packages 1/2 reconciled"
        );
        s.packages.insert(
            "wc1-antrea".into(),
            a(pkgi(
                "wc1-antrea",
                CORE_PACKAGES_NAMESPACE,
                "ReconcileSucceeded",
                "",
            )),
        );
        let v = j.judge(&s, secs(5));
        let Verdict::Done(out) = v else {
            panic!("{v:?}")
        };
        let journalled = serde_json::to_value(&out).unwrap();
        assert_eq!(journalled["nodeRefs"], "2/2");
        assert_eq!(journalled["controlPlane"], "1/1");
        assert_eq!(journalled["packages"]["wc1-antrea"], "Reconcile succeeded");
        assert!(j
            .closing_line(&out)
            .unwrap()
            .ends_with("; nodeRefs 2/2; packages 2/2 reconciled"));
    }

    #[test]
    fn a_plan_based_cluster_is_done_with_its_machines() {
        let mut s = ready_snapshot();
        let mut c = wc1("Provisioned");
        c["spec"] = json!({});
        s.cluster = Some(a(c));
        let mut j = judge();
        let Verdict::Done(out) = j.judge(&s, secs(1)) else {
            panic!()
        };
        assert!(serde_json::to_value(&out)
            .unwrap()
            .get("packages")
            .is_none());
        assert_eq!(
            j.closing_line(&out).unwrap(),
            "Cluster phase Provisioned; control plane 1/1 ready; md-0 1/1; nodeRefs 2/2"
        );
    }

    #[test]
    fn a_missing_bootstrap_fails_after_the_bootstrap_timeout() {
        let mut j = judge();
        let s = ready_snapshot();
        assert!(matches!(j.judge(&s, secs(10)), Verdict::Waiting(_)));
        assert!(matches!(j.judge(&s, secs(609)), Verdict::Waiting(_)));
        assert_eq!(
            j.judge(&s, secs(610)),
            Verdict::Failed(Failure::permanent(
                "Cluster/default/wc1: ClusterBootstrap default/wc1 not found after 600 s"
            ))
        );
    }

    #[test]
    fn a_failing_core_package_is_retried_then_reported_by_the_report_deadline() {
        let mut j = ClusterReady::new(
            "mc1",
            "default",
            "wc1",
            WaitOptions::default(),
            Some(secs(100)),
            Duration::ZERO,
        );
        let mut s = ready_snapshot();
        s.bootstrap = Some(a(bootstrap()));
        s.packages.insert(
            "wc1-kapp-controller".into(),
            a(pkgi(
                "wc1-kapp-controller",
                "default",
                "ReconcileSucceeded",
                "",
            )),
        );
        s.packages.insert(
            "wc1-antrea".into(),
            a(pkgi(
                "wc1-antrea",
                CORE_PACKAGES_NAMESPACE,
                "ReconcileFailed",
                "antrea: image pull failed",
            )),
        );
        let v = j.judge(&s, secs(10));
        assert!(line(&v).ends_with(
            "; packages 1/2 reconciled; retrying: PackageInstall tkg-system/wc1-antrea: antrea: image pull failed"
        ));
        let Verdict::Waiting(p) = v else {
            unreachable!()
        };
        assert_eq!(p.recheck_at, Some(secs(100)));
        // kapp-controller retries: Reconciling still counts as the last failure.
        s.packages.insert(
            "wc1-antrea".into(),
            a(pkgi(
                "wc1-antrea",
                CORE_PACKAGES_NAMESPACE,
                "Reconciling",
                "",
            )),
        );
        assert!(
            line(&j.judge(&s, secs(50))).contains("retrying: PackageInstall tkg-system/wc1-antrea")
        );
        assert_eq!(
            j.judge(&s, secs(100)),
            Verdict::Failed(Failure::permanent(
                "Cluster/default/wc1: core packages did not reconcile within 90 s: PackageInstall tkg-system/wc1-antrea: antrea: image pull failed"
            ))
        );
    }

    #[test]
    fn a_persistent_error_condition_fails_the_wait() {
        let mut j = judge();
        let mut s = ready_snapshot();
        let mut c = wc1("Provisioning");
        c["status"]["conditions"][2] = json!({"type": "Ready", "status": "False", "severity": "Error",
            "reason": "InstanceProvisionFailed", "message": "VcpuLimitExceeded"});
        s.cluster = Some(a(c));
        s.machine_deployments = vec![a(md0(0))];
        assert!(matches!(j.judge(&s, secs(0)), Verdict::Waiting(_)));
        assert_eq!(
            j.judge(&s, secs(300)),
            Verdict::Failed(Failure::permanent(
                "Cluster/default/wc1: cluster creation failed, reason: 'InstanceProvisionFailed', message: 'VcpuLimitExceeded'"
            ))
        );
    }
}

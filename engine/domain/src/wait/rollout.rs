//! Day-2 waits of an existing Cluster (docs/tkg2-class-based.md §8 "Wait", what `tanzu cluster
//! upgrade` waits for), with TKG's abort rules of §6 ([`CreationTracker`]: a persistent
//! `Ready=False`/`Error`, nothing changed for the operation timeout):
//!
//! - [`ControlPlaneRolled`] (`kube.wait-control-plane`): the KubeadmControlPlane runs the version
//!   on every replica (`spec.version` and `status.version`, `replicas == updatedReplicas ==
//!   readyReplicas == spec.replicas` for its current generation), `ControlPlaneReady=True`,
//!   every control-plane Machine has the version and a `nodeRef`, and the workload API server
//!   reports the version.
//! - [`MachineDeploymentsRolled`] (`kube.wait-machine-deployments`): every MachineDeployment of
//!   the topology exists and has `readyReplicas == updatedReplicas == replicas == spec.replicas`
//!   for its current generation, and every worker Machine's `spec.version` is the new version.
//! - [`ClusterDeleted`] (`kube.delete-cluster`): the Cluster is gone.
//!
//! The rollout outputs carry `rolledNodes`, the Machines created during the wait (not present
//! at its first observation), from which the bot estimates later rollouts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::output::{KubeWaitControlPlaneOutput, KubeWaitMachineDeploymentsOutput};

use super::cluster::CreationTracker;
use super::{
    condition, int_at, label, name_of, str_at, Failure, Judge, Progress, Verdict, WaitOptions,
};

/// Label Cluster API puts on control-plane Machines.
pub const CONTROL_PLANE_LABEL: &str = "cluster.x-k8s.io/control-plane";
/// Label Cluster API puts on the Machines of a MachineDeployment (its name).
pub const DEPLOYMENT_NAME_LABEL: &str = "cluster.x-k8s.io/deployment-name";
/// Label the topology controller puts on a ClusterClass cluster's MachineDeployments.
pub const TOPOLOGY_DEPLOYMENT_LABEL: &str = "topology.cluster.x-k8s.io/deployment-name";
/// How often the workload API server's version is asked again while it still reports the old
/// one (TKG polls every 15 s, §8 "Wait").
pub const APISERVER_RECHECK: Duration = Duration::from_secs(15);

/// What a rollout wait observes of one cluster: the Cluster, the objects that roll (its
/// KubeadmControlPlanes or its MachineDeployments, label `cluster.x-k8s.io/cluster-name`), its
/// Machines, and, for the control plane, the version the workload API server reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutSnapshot {
    /// The Cluster (`None`: not on the management cluster).
    pub cluster: Option<Arc<Value>>,
    /// Its KubeadmControlPlanes or MachineDeployments.
    pub owned: Vec<Arc<Value>>,
    /// Its Machines.
    pub machines: Vec<Arc<Value>>,
    /// `gitVersion` of the workload API server's `/version`, when asked (only once the control
    /// plane's objects are rolled: [`ControlPlaneRolled::machines_rolled`]).
    pub api_server_version: Option<String>,
}

/// The replica counts of a KubeadmControlPlane or MachineDeployment:
/// (`spec.replicas`, `status.replicas`, `updatedReplicas`, `readyReplicas`).
fn replicas(obj: &Value) -> (i64, i64, i64, i64) {
    (
        int_at(obj, "/spec/replicas").unwrap_or(1),
        int_at(obj, "/status/replicas").unwrap_or(0),
        int_at(obj, "/status/updatedReplicas").unwrap_or(0),
        int_at(obj, "/status/readyReplicas").unwrap_or(0),
    )
}

/// Whether the controller has observed the object's current generation.
fn generation_observed(obj: &Value) -> bool {
    match (
        int_at(obj, "/metadata/generation"),
        int_at(obj, "/status/observedGeneration"),
    ) {
        (Some(g), Some(o)) => o >= g,
        (Some(_), None) => false,
        _ => true,
    }
}

/// Whether Cluster API's topology controller has carried the Cluster's current spec to the
/// objects it owns: the Cluster's `status.observedGeneration` is its `metadata.generation`, and
/// its `TopologyReconciled` condition (classy Clusters, docs/tanzu-apis.md §"Cluster status") is not
/// `False`. Until then the KubeadmControlPlane and the MachineDeployments still have the spec
/// before the change, and a steady old state must not pass for the rolled new one. `None`
/// when they are carried, else what is still missing (for the progress line).
fn topology_pending(cluster: &Value) -> Option<&'static str> {
    if !generation_observed(cluster) {
        return Some("the topology controller has not observed the Cluster's change yet");
    }
    match condition(cluster, "TopologyReconciled") {
        Some(c) if c["status"] == "False" => Some("TopologyReconciled is False"),
        _ => None,
    }
}

/// Whether `version` (a Machine's or KCP's) is the target: equal, or a prefix of it as TKG
/// compares (§8 "every worker Machine's spec.version is a prefix of the new version").
pub fn at_version(version: &str, target: &str) -> bool {
    !version.is_empty() && target.starts_with(version)
}

/// What both rollout judges share: the names, the target, TKG's abort rules, the Machines of
/// the first observation.
#[derive(Clone, Debug)]
struct Rollout {
    management_cluster: String,
    what: String,
    target: String,
    opts: WaitOptions,
    tracker: CreationTracker,
    initial_machines: Option<BTreeSet<String>>,
}

impl Rollout {
    fn new(
        management_cluster: &str,
        namespace: &str,
        name: &str,
        target: &str,
        opts: WaitOptions,
        at: Duration,
    ) -> Self {
        Rollout {
            management_cluster: management_cluster.to_string(),
            what: format!("Cluster/{namespace}/{name}"),
            target: target.to_string(),
            opts,
            tracker: CreationTracker::new(at),
            initial_machines: None,
        }
    }

    /// The Cluster of `s`, recording the first observation's Machines.
    fn cluster<'s>(&mut self, s: &'s RolloutSnapshot) -> Result<&'s Value, Failure> {
        let Some(cluster) = &s.cluster else {
            return Err(Failure::permanent(format!(
                "{} not found on management cluster '{}'",
                self.what, self.management_cluster
            )));
        };
        if self.initial_machines.is_none() {
            self.initial_machines =
                Some(s.machines.iter().map(|m| name_of(m).to_string()).collect());
        }
        Ok(cluster)
    }

    /// Applies TKG's abort rules to one observation; returns when to judge again.
    fn track(
        &mut self,
        cluster: &Value,
        owned: &[Arc<Value>],
        at: Duration,
    ) -> Result<Duration, Failure> {
        self.tracker
            .observe(cluster, owned, at, &self.opts)
            .map_err(|m| {
                Failure::permanent(format!(
                    "{}: {}",
                    self.what,
                    m.replace("cluster creation", "the rollout")
                ))
            })?;
        Ok(self.tracker.next_deadline(&self.opts))
    }

    /// Machines created since the wait started, among `machines`.
    fn rolled(&self, machines: &[&Value]) -> usize {
        let empty = BTreeSet::new();
        let initial = self.initial_machines.as_ref().unwrap_or(&empty);
        machines
            .iter()
            .filter(|m| !initial.contains(name_of(m)))
            .count()
    }
}

/// The control plane's state in one snapshot.
struct ControlPlaneState<'s> {
    done: bool,
    line: String,
    desired: i64,
    ready: i64,
    machines: Vec<&'s Value>,
}

fn control_plane_state<'s>(
    cluster: &Value,
    kcp: &Value,
    machines: &'s [Arc<Value>],
    target: &str,
) -> ControlPlaneState<'s> {
    let (desired, current, updated, ready) = replicas(kcp);
    let cp_machines: Vec<&Value> = machines
        .iter()
        .map(|m| m.as_ref())
        .filter(|m| {
            m.pointer("/metadata/labels")
                .and_then(|l| l.get(CONTROL_PLANE_LABEL))
                .is_some()
        })
        .collect();
    let machines_done = cp_machines.len() as i64 == desired
        && cp_machines.iter().all(|m| {
            at_version(str_at(m, "/spec/version"), target) && m.pointer("/status/nodeRef").is_some()
        });
    let cp_ready = condition(cluster, "ControlPlaneReady")
        .map(|c| c["status"] == "True")
        .unwrap_or(false);
    let status_version = str_at(kcp, "/status/version");
    // The replicas the Cluster's topology asks for (what a resize set).
    let wanted = int_at(cluster, "/spec/topology/controlPlane/replicas");
    let pending = topology_pending(cluster);
    let done = pending.is_none()
        && wanted.is_none_or(|w| w == desired)
        && generation_observed(kcp)
        && at_version(str_at(kcp, "/spec/version"), target)
        && at_version(status_version, target)
        && desired == current
        && current == updated
        && updated == ready
        && cp_ready
        && machines_done;
    let line = format!(
        "control plane {} → {target}: {updated}/{desired} up to date, {ready}/{desired} ready{}{}",
        if status_version.is_empty() {
            "?"
        } else {
            status_version
        },
        if cp_ready {
            ""
        } else {
            ", ControlPlaneReady not True"
        },
        match (pending, wanted) {
            (Some(p), _) => format!(", {p}"),
            (None, Some(w)) if w != desired => format!(", {w} replica(s) asked"),
            _ => String::new(),
        }
    );
    ControlPlaneState {
        done,
        line,
        desired,
        ready,
        machines: cp_machines,
    }
}

/// Whether everything of the control plane but the workload API server's version is rolled to
/// `target` in `s` (the KubeadmControlPlane, `ControlPlaneReady`, the control-plane Machines):
/// the source asks the API server for its version only then.
pub fn control_plane_objects_rolled(s: &RolloutSnapshot, target: &str) -> bool {
    match (&s.cluster, s.owned.first()) {
        (Some(c), Some(kcp)) => control_plane_state(c, kcp, &s.machines, target).done,
        _ => false,
    }
}

/// The judge of `kube.wait-control-plane` (module docs) for the Cluster `namespace/name` on
/// `management_cluster`, rolling to Kubernetes `target` (e.g. `v1.25.7+vmware.2`).
///
/// Output `{"version", "replicas", "rolledNodes", "apiServerVersion"}`. Failures (permanent):
/// "Cluster/`<ns>`/`<name>` not found on management cluster '`<mc>`'", "… has no
/// KubeadmControlPlane on management cluster '`<mc>`'", "…: the rollout failed, reason: …",
/// "…: timed out waiting for the rollout to complete".
#[derive(Clone, Debug)]
pub struct ControlPlaneRolled {
    rollout: Rollout,
    closing: Option<String>,
}

impl ControlPlaneRolled {
    /// The judge, its abort clocks started at `at`.
    pub fn new(
        management_cluster: &str,
        namespace: &str,
        name: &str,
        target: &str,
        opts: WaitOptions,
        at: Duration,
    ) -> Self {
        ControlPlaneRolled {
            rollout: Rollout::new(management_cluster, namespace, name, target, opts, at),
            closing: None,
        }
    }

    /// Whether everything but the workload API server's version is rolled in `s`: the source
    /// asks the API server only then.
    pub fn machines_rolled(&self, s: &RolloutSnapshot) -> bool {
        match (&s.cluster, s.owned.first()) {
            (Some(c), Some(kcp)) => {
                control_plane_state(c, kcp, &s.machines, &self.rollout.target).done
            }
            _ => false,
        }
    }
}

impl Judge for ControlPlaneRolled {
    type Snapshot = RolloutSnapshot;
    type Output = KubeWaitControlPlaneOutput;

    fn judge(&mut self, s: &RolloutSnapshot, at: Duration) -> Verdict<KubeWaitControlPlaneOutput> {
        let r = &mut self.rollout;
        let cluster = match r.cluster(s) {
            Ok(c) => c,
            Err(f) => return Verdict::Failed(f),
        };
        let Some(kcp) = s.owned.first() else {
            return Verdict::Failed(Failure::permanent(format!(
                "{} has no KubeadmControlPlane on management cluster '{}'",
                r.what, r.management_cluster
            )));
        };
        let wake = match r.track(cluster, &s.owned, at) {
            Ok(w) => w,
            Err(f) => return Verdict::Failed(f),
        };
        let target = r.target.clone();
        let st = control_plane_state(cluster, kcp, &s.machines, &target);
        if !st.done {
            return Verdict::Waiting(Progress::line(st.line).recheck_at(wake));
        }
        let recheck = wake.min(at + APISERVER_RECHECK);
        let Some(reported) = &s.api_server_version else {
            return Verdict::Waiting(Progress::line(st.line).recheck_at(recheck));
        };
        if !at_version(reported, &target)
            && !target.starts_with(reported.split('+').next().unwrap_or(""))
        {
            return Verdict::Waiting(
                Progress::line(format!(
                    "{}; the workload API server still reports {reported}",
                    st.line
                ))
                .recheck_at(recheck),
            );
        }
        let rolled = r.rolled(&st.machines);
        self.closing = Some(format!(
            "control plane at {target}: {}/{} ready; API server reports {reported}",
            st.ready, st.desired
        ));
        Verdict::Done(KubeWaitControlPlaneOutput {
            version: target,
            replicas: st.desired,
            rolled_nodes: rolled as u64,
            api_server_version: reported.clone(),
        })
    }

    fn closing_line(&self, _output: &KubeWaitControlPlaneOutput) -> Option<String> {
        self.closing.clone()
    }
}

/// The judge of `kube.wait-machine-deployments` (module docs) for the Cluster
/// `namespace/name` on `management_cluster`, rolling to Kubernetes `target`.
///
/// Output `{"version", "machineDeployments": {"md-0": "3/3", …}, "rolledNodes"}`. Progress
/// "workers: md-0 1/3 up to date, 1/3 ready; md-1 2/2 at v1.25.7+vmware.2". Failures
/// (permanent): as [`ControlPlaneRolled`], and "… has no spec.topology.workers: only
/// class-based Clusters are rolled by tkgops".
#[derive(Clone, Debug)]
pub struct MachineDeploymentsRolled {
    rollout: Rollout,
    closing: Option<String>,
}

impl MachineDeploymentsRolled {
    /// The judge, its abort clocks started at `at`.
    pub fn new(
        management_cluster: &str,
        namespace: &str,
        name: &str,
        target: &str,
        opts: WaitOptions,
        at: Duration,
    ) -> Self {
        MachineDeploymentsRolled {
            rollout: Rollout::new(management_cluster, namespace, name, target, opts, at),
            closing: None,
        }
    }
}

impl Judge for MachineDeploymentsRolled {
    type Snapshot = RolloutSnapshot;
    type Output = KubeWaitMachineDeploymentsOutput;

    fn judge(
        &mut self,
        s: &RolloutSnapshot,
        at: Duration,
    ) -> Verdict<KubeWaitMachineDeploymentsOutput> {
        let r = &mut self.rollout;
        let cluster = match r.cluster(s) {
            Ok(c) => c,
            Err(f) => return Verdict::Failed(f),
        };
        let Some(topology) = cluster
            .pointer("/spec/topology/workers/machineDeployments")
            .and_then(Value::as_array)
        else {
            return Verdict::Failed(Failure::permanent(format!(
                "{} has no spec.topology.workers: only class-based Clusters are rolled by tkgops",
                r.what
            )));
        };
        let wake = match r.track(cluster, &s.owned, at) {
            Ok(w) => w,
            Err(f) => return Verdict::Failed(f),
        };
        let target = r.target.as_str();
        let mut parts = Vec::new();
        let mut all_done = true;
        if let Some(p) = topology_pending(cluster) {
            all_done = false;
            parts.push(p.to_string());
        }
        let mut out = BTreeMap::new();
        let mut worker_machines: Vec<&Value> = Vec::new();
        for td in topology {
            let short = str_at(td, "/name");
            let want = int_at(td, "/replicas");
            let Some(md) = s
                .owned
                .iter()
                .find(|m| label(m, TOPOLOGY_DEPLOYMENT_LABEL) == short)
            else {
                all_done = false;
                parts.push(format!("{short}: not created yet"));
                continue;
            };
            let md_name = name_of(md);
            let (desired, current, updated, ready) = replicas(md);
            let own: Vec<&Value> = s
                .machines
                .iter()
                .map(|m| m.as_ref())
                .filter(|m| label(m, DEPLOYMENT_NAME_LABEL) == md_name)
                .collect();
            let machines_at = own
                .iter()
                .filter(|m| at_version(str_at(m, "/spec/version"), target))
                .count() as i64;
            worker_machines.extend(own.iter().copied());
            let done = generation_observed(md)
                && want.is_none_or(|r| r == desired)
                && at_version(str_at(md, "/spec/template/spec/version"), target)
                && desired == current
                && current == updated
                && updated == ready
                && machines_at == own.len() as i64
                && own.len() as i64 == desired;
            all_done &= done;
            out.insert(short.to_string(), format!("{ready}/{desired}"));
            parts.push(if done {
                format!("{short} {ready}/{desired} at {target}")
            } else {
                format!("{short} {updated}/{desired} up to date, {ready}/{desired} ready")
            });
        }
        let line = format!("workers: {}", parts.join("; "));
        if all_done {
            let rolled = r.rolled(&worker_machines);
            self.closing = Some(line);
            return Verdict::Done(KubeWaitMachineDeploymentsOutput {
                version: target.to_string(),
                machine_deployments: out,
                rolled_nodes: rolled as u64,
            });
        }
        Verdict::Waiting(Progress::line(line).recheck_at(wake))
    }

    fn closing_line(&self, _output: &KubeWaitMachineDeploymentsOutput) -> Option<String> {
        self.closing.clone()
    }
}

/// The judge of the wait of `kube.delete-cluster`: the Cluster `namespace/name` (the one with
/// the uid tkgops deleted) is gone. Snapshot: the Cluster while it is still there (`None`: gone,
/// confirmed by the API server). Output `()`. Progress "Cluster/`<ns>`/`<name>`: phase
/// `<phase>`", judged again every 30 s; closing line "Cluster/`<ns>`/`<name>` deleted".
#[derive(Clone, Debug)]
pub struct ClusterDeleted {
    what: String,
}

impl ClusterDeleted {
    /// How often the wait looks again without a change (a lost watch event must not hang it).
    pub const RECHECK: Duration = Duration::from_secs(30);

    /// The judge for the Cluster `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        ClusterDeleted {
            what: format!("Cluster/{namespace}/{name}"),
        }
    }
}

impl Judge for ClusterDeleted {
    type Snapshot = Option<Arc<Value>>;
    type Output = ();

    fn judge(&mut self, cluster: &Option<Arc<Value>>, at: Duration) -> Verdict<()> {
        match cluster {
            None => Verdict::Done(()),
            Some(c) => Verdict::Waiting(
                Progress::line(format!(
                    "{}: phase {}",
                    self.what,
                    str_at(c, "/status/phase")
                ))
                .recheck_at(at + Self::RECHECK),
            ),
        }
    }

    fn closing_line(&self, _output: &()) -> Option<String> {
        Some(format!("{} deleted", self.what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::cluster::CLUSTER_NAME_LABEL;
    use serde_json::json;

    const OLD: &str = "v1.24.9+vmware.1";
    const NEW: &str = "v1.25.7+vmware.2";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn a(v: Value) -> Arc<Value> {
        Arc::new(v)
    }

    fn cluster(cp_ready: bool) -> Value {
        json!({"kind": "Cluster", "metadata": {"name": "wc1", "namespace": "default"},
               "spec": {"topology": {"version": "v1.25.7---vmware.2-tkg.1",
                        "workers": {"machineDeployments": [{"class": "tkg-worker", "name": "md-0", "replicas": 2}]}}},
               "status": {"phase": "Provisioned", "conditions": [
                   {"type": "ControlPlaneReady", "status": if cp_ready {"True"} else {"False"}},
                   {"type": "Ready", "status": "True", "lastTransitionTime": "2023-01-01T00:00:00Z"}]}})
    }

    fn kcp(version: &str, updated: i64) -> Value {
        json!({"kind": "KubeadmControlPlane", "metadata": {"name": "wc1-cp", "namespace": "default",
               "generation": 2, "labels": {CLUSTER_NAME_LABEL: "wc1"}},
               "spec": {"replicas": 1, "version": NEW},
               "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": updated, "readyReplicas": 1, "version": version}})
    }

    fn cp_machine(name: &str, version: &str) -> Value {
        json!({"kind": "Machine", "metadata": {"name": name, "namespace": "default",
               "labels": {CLUSTER_NAME_LABEL: "wc1", CONTROL_PLANE_LABEL: ""}},
               "spec": {"version": version}, "status": {"nodeRef": {"name": name}}})
    }

    fn md(updated: i64, ready: i64, version: &str) -> Value {
        json!({"kind": "MachineDeployment", "metadata": {"name": "wc1-md-0-x", "namespace": "default", "generation": 3,
               "labels": {CLUSTER_NAME_LABEL: "wc1", TOPOLOGY_DEPLOYMENT_LABEL: "md-0"}},
               "spec": {"replicas": 2, "template": {"spec": {"version": version}}},
               "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": updated, "readyReplicas": ready}})
    }

    fn worker(name: &str, version: &str) -> Value {
        json!({"kind": "Machine", "metadata": {"name": name, "namespace": "default",
               "labels": {CLUSTER_NAME_LABEL: "wc1", DEPLOYMENT_NAME_LABEL: "wc1-md-0-x"}},
               "spec": {"version": version}, "status": {"nodeRef": {"name": name}}})
    }

    fn line<O: std::fmt::Debug>(v: &Verdict<O>) -> &str {
        match v {
            Verdict::Waiting(p) => p.line.as_deref().unwrap_or(""),
            other => panic!("not waiting: {other:?}"),
        }
    }

    /// A resize: the steady state before the change must not pass for the state it asks for.
    /// Both judges wait until the topology controller observed the Cluster's generation (and
    /// `TopologyReconciled` is not False), and the control plane until the KubeadmControlPlane
    /// has the replicas the topology asks for.
    #[test]
    fn a_steady_old_state_does_not_pass_for_the_change() {
        let judges = || {
            (
                ControlPlaneRolled::new(
                    "mc1",
                    "default",
                    "wc1",
                    NEW,
                    WaitOptions::default(),
                    Duration::ZERO,
                ),
                MachineDeploymentsRolled::new(
                    "mc1",
                    "default",
                    "wc1",
                    NEW,
                    WaitOptions::default(),
                    Duration::ZERO,
                ),
            )
        };
        let with = |generation: i64, observed: i64, cp_replicas: i64, reconciled: &str| {
            let mut c = cluster(true);
            c["metadata"]["generation"] = json!(generation);
            c["status"]["observedGeneration"] = json!(observed);
            c["spec"]["topology"]["controlPlane"] = json!({"replicas": cp_replicas});
            c["status"]["conditions"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "TopologyReconciled", "status": reconciled}));
            a(c)
        };
        let cp = |c: Arc<Value>| RolloutSnapshot {
            cluster: Some(c),
            owned: vec![a(kcp(NEW, 1))],
            machines: vec![a(cp_machine("cp", NEW))],
            api_server_version: Some(NEW.into()),
        };
        let workers = |c: Arc<Value>| RolloutSnapshot {
            cluster: Some(c),
            owned: vec![a(md(2, 2, NEW))],
            machines: vec![a(worker("w1", NEW)), a(worker("w2", NEW))],
            api_server_version: None,
        };
        // The Cluster's change is not observed yet.
        let (mut c, mut w) = judges();
        let v = c.judge(&cp(with(4, 3, 1, "True")), secs(1));
        assert!(
            line(&v)
                .ends_with(", the topology controller has not observed the Cluster's change yet"),
            "{}",
            line(&v)
        );
        let v = w.judge(&workers(with(4, 3, 1, "True")), secs(1));
        assert!(
            line(&v).contains("the topology controller has not observed"),
            "{}",
            line(&v)
        );
        // Observed, but the topology could not be reconciled.
        let v = w.judge(&workers(with(4, 4, 1, "False")), secs(2));
        assert!(
            line(&v).contains("TopologyReconciled is False"),
            "{}",
            line(&v)
        );
        // The topology asks for 3 control-plane replicas; the KubeadmControlPlane has 1.
        let v = c.judge(&cp(with(4, 4, 3, "True")), secs(3));
        assert!(line(&v).ends_with(", 3 replica(s) asked"), "{}", line(&v));
        // Carried through: both are done.
        assert!(matches!(
            c.judge(&cp(with(4, 4, 1, "True")), secs(4)),
            Verdict::Done(_)
        ));
        assert!(matches!(
            w.judge(&workers(with(4, 4, 1, "True")), secs(4)),
            Verdict::Done(_)
        ));
    }

    #[test]
    fn the_control_plane_is_rolled_when_the_api_server_reports_the_version() {
        let mut j = ControlPlaneRolled::new(
            "mc1",
            "default",
            "wc1",
            NEW,
            WaitOptions::default(),
            Duration::ZERO,
        );
        let mut s = RolloutSnapshot {
            cluster: Some(a(cluster(true))),
            owned: vec![a(kcp(OLD, 0))],
            machines: vec![a(cp_machine("cp-old", OLD))],
            api_server_version: None,
        };
        assert!(!j.machines_rolled(&s));
        assert_eq!(
            line(&j.judge(&s, secs(1))),
            format!("control plane {OLD} → {NEW}: 0/1 up to date, 1/1 ready")
        );
        s.owned = vec![a(kcp(NEW, 1))];
        s.machines = vec![a(cp_machine("cp-new", NEW))];
        s.cluster = Some(a(cluster(false)));
        assert_eq!(
            line(&j.judge(&s, secs(2))),
            format!("control plane {NEW} → {NEW}: 1/1 up to date, 1/1 ready, ControlPlaneReady not True")
        );
        s.cluster = Some(a(cluster(true)));
        assert!(j.machines_rolled(&s));
        s.api_server_version = Some("v1.24.9+vmware.1".into());
        let v = j.judge(&s, secs(3));
        assert!(line(&v).ends_with("; the workload API server still reports v1.24.9+vmware.1"));
        let Verdict::Waiting(p) = v else {
            unreachable!()
        };
        assert_eq!(p.recheck_at, Some(secs(3) + APISERVER_RECHECK));
        s.api_server_version = Some("v1.25.7+vmware.2".into());
        let Verdict::Done(out) = j.judge(&s, secs(4)) else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"version": NEW, "replicas": 1, "rolledNodes": 1, "apiServerVersion": NEW})
        );
        assert_eq!(
            j.closing_line(&out).unwrap(),
            format!("control plane at {NEW}: 1/1 ready; API server reports {NEW}")
        );
    }

    #[test]
    fn a_missing_cluster_or_control_plane_fails() {
        let mut j = ControlPlaneRolled::new(
            "mc1",
            "default",
            "wc1",
            NEW,
            WaitOptions::default(),
            Duration::ZERO,
        );
        assert_eq!(
            j.judge(&RolloutSnapshot::default(), Duration::ZERO),
            Verdict::Failed(Failure::permanent(
                "Cluster/default/wc1 not found on management cluster 'mc1'"
            ))
        );
        let s = RolloutSnapshot {
            cluster: Some(a(cluster(true))),
            ..Default::default()
        };
        assert_eq!(
            j.judge(&s, Duration::ZERO),
            Verdict::Failed(Failure::permanent(
                "Cluster/default/wc1 has no KubeadmControlPlane on management cluster 'mc1'"
            ))
        );
    }

    #[test]
    fn nothing_changing_times_the_rollout_out() {
        let opts = WaitOptions::default();
        let mut j = MachineDeploymentsRolled::new(
            "mc1",
            "default",
            "wc1",
            NEW,
            opts.clone(),
            Duration::ZERO,
        );
        let s = RolloutSnapshot {
            cluster: Some(a(cluster(true))),
            owned: vec![a(md(0, 2, OLD))],
            machines: vec![a(worker("w1", OLD)), a(worker("w2", OLD))],
            api_server_version: None,
        };
        let v = j.judge(&s, Duration::ZERO);
        assert_eq!(line(&v), "workers: md-0 0/2 up to date, 2/2 ready");
        let Verdict::Waiting(p) = v else {
            unreachable!()
        };
        assert_eq!(p.recheck_at, Some(opts.unchanged_timeout));
        assert_eq!(
            j.judge(&s, opts.unchanged_timeout),
            Verdict::Failed(Failure::permanent(
                "Cluster/default/wc1: timed out waiting for the rollout to complete"
            ))
        );
    }

    #[test]
    fn workers_are_rolled_when_every_machine_runs_the_version() {
        let mut j = MachineDeploymentsRolled::new(
            "mc1",
            "default",
            "wc1",
            NEW,
            WaitOptions::default(),
            Duration::ZERO,
        );
        let mut s = RolloutSnapshot {
            cluster: Some(a(cluster(true))),
            owned: vec![],
            machines: vec![a(worker("w1", OLD)), a(worker("w2", OLD))],
            api_server_version: None,
        };
        assert_eq!(
            line(&j.judge(&s, secs(1))),
            "workers: md-0: not created yet"
        );
        s.owned = vec![a(md(1, 2, NEW))];
        s.machines = vec![a(worker("w1", OLD)), a(worker("w3", NEW))];
        assert_eq!(
            line(&j.judge(&s, secs(2))),
            "workers: md-0 1/2 up to date, 2/2 ready"
        );
        s.owned = vec![a(md(2, 2, NEW))];
        s.machines = vec![a(worker("w3", NEW)), a(worker("w4", NEW))];
        let Verdict::Done(out) = j.judge(&s, secs(3)) else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"version": NEW, "machineDeployments": {"md-0": "2/2"}, "rolledNodes": 2})
        );
        assert_eq!(
            j.closing_line(&out).unwrap(),
            format!("workers: md-0 2/2 at {NEW}")
        );
        let mut legacy = cluster(true);
        legacy["spec"] = json!({});
        let mut j = MachineDeploymentsRolled::new(
            "mc1",
            "default",
            "wc1",
            NEW,
            WaitOptions::default(),
            Duration::ZERO,
        );
        s.cluster = Some(a(legacy));
        assert_eq!(
            j.judge(&s, secs(1)),
            Verdict::Failed(Failure::permanent(
                "Cluster/default/wc1 has no spec.topology.workers: only class-based Clusters are rolled by tkgops"
            ))
        );
    }

    #[test]
    fn a_deleted_cluster_is_waited_for_with_a_periodic_look() {
        let mut j = ClusterDeleted::new("default", "wc1");
        let mut c = cluster(true);
        c["status"]["phase"] = json!("Deleting");
        let v = j.judge(&Some(a(c)), secs(5));
        assert_eq!(
            v,
            Verdict::Waiting(Progress {
                line: Some("Cluster/default/wc1: phase Deleting".into()),
                recheck_at: Some(secs(35))
            })
        );
        assert_eq!(j.judge(&None, secs(6)), Verdict::Done(()));
        assert_eq!(j.closing_line(&()).unwrap(), "Cluster/default/wc1 deleted");
    }
}

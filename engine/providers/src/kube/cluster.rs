//! `kube.wait-cluster`: waits for a workload cluster exactly as TKG does (TF
//! `pkg/v1/tkg/clusterclient/clusterclient.go` + `resource.go`, tanzu-apis §2.2):
//!
//! 1. *Initialized*: the Cluster's conditions `ControlPlaneReady` and `InfrastructureReady` are
//!    `True`. Abort at once when `Ready` is `False` with severity `Error` ("cluster creation
//!    failed, reason: …"), when `TopologyReconciled` is `False` with a severity other than
//!    `Info`/`Warning`, or when `status.failureReason`/`failureMessage` is set.
//! 2. *Ready*: every KubeadmControlPlane labelled `cluster.x-k8s.io/cluster-name=<name>` has
//!    `status.readyReplicas == spec.replicas` (default 1), and every MachineDeployment with that
//!    label has `status.readyReplicas == spec.replicas` (default 1).
//!
//! Polls every `poll_interval` until ready; the engine enforces the step timeout.

use std::collections::BTreeMap;

use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use super::{classify, custom_resource, KubeProvider, PollErrors, ProgressDedup};
use crate::WorkloadTarget;
use tkgops_engine::{StepContext, StepError};

/// Label Cluster API puts on every object of a cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// Label the topology controller puts on the MachineDeployments of a ClusterClass cluster.
const TOPOLOGY_MD_LABEL: &str = "topology.cluster.x-k8s.io/deployment-name";

/// `cluster.x-k8s.io/v1beta1` Cluster.
pub fn cluster_resource() -> kube::discovery::ApiResource {
    custom_resource("cluster.x-k8s.io", "v1beta1", "Cluster", "clusters")
}
/// `controlplane.cluster.x-k8s.io/v1beta1` KubeadmControlPlane.
pub fn kcp_resource() -> kube::discovery::ApiResource {
    custom_resource(
        "controlplane.cluster.x-k8s.io",
        "v1beta1",
        "KubeadmControlPlane",
        "kubeadmcontrolplanes",
    )
}
/// `cluster.x-k8s.io/v1beta1` MachineDeployment.
pub fn md_resource() -> kube::discovery::ApiResource {
    custom_resource(
        "cluster.x-k8s.io",
        "v1beta1",
        "MachineDeployment",
        "machinedeployments",
    )
}

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

    /// The step output: `{"phase", "controlPlane": "3/3", "machineDeployments": {name: "1/1"}}`.
    pub fn output(&self) -> Value {
        let mds: serde_json::Map<String, Value> = self
            .machine_deployments
            .iter()
            .map(|(n, (r, d))| (n.clone(), Value::String(format!("{r}/{d}"))))
            .collect();
        serde_json::json!({
            "phase": self.phase,
            "controlPlane": format!("{}/{}", self.cp_ready, self.cp_desired),
            "machineDeployments": mds,
        })
    }
}

/// The condition of `type` in `status.conditions` of `obj`.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn cond_str<'a>(c: &'a Value, field: &str) -> &'a str {
    c.get(field).and_then(Value::as_str).unwrap_or("")
}

fn cond_true(obj: &Value, type_: &str) -> bool {
    condition(obj, type_)
        .map(|c| cond_str(c, "status") == "True")
        .unwrap_or(false)
}

fn int_at(obj: &Value, ptr: &str) -> Option<i64> {
    obj.pointer(ptr).and_then(Value::as_i64)
}

/// Checks the Cluster for a terminal failure. Returns the Permanent error message, if any.
///
/// Source: TF `clusterclient.go` (abort when `Ready` is `False` with severity `Error`); CAPI
/// `TopologyReconciled` (severity `Error` on reconcile failure, `Info` while an upgrade is
/// pending); CAPI `status.failureReason/failureMessage` (phase `Failed`).
pub fn cluster_failure(cluster: &Value) -> Option<String> {
    if let Some(c) = condition(cluster, "Ready") {
        if cond_str(c, "status") == "False" && cond_str(c, "severity") == "Error" {
            return Some(format!(
                "cluster creation failed, reason: '{}', message: '{}'",
                cond_str(c, "reason"),
                cond_str(c, "message")
            ));
        }
    }
    if let Some(c) = condition(cluster, "TopologyReconciled") {
        let sev = cond_str(c, "severity");
        if cond_str(c, "status") == "False" && sev != "Info" && sev != "Warning" {
            return Some(format!(
                "cluster topology could not be reconciled, reason: '{}', message: '{}'",
                cond_str(c, "reason"),
                cond_str(c, "message")
            ));
        }
    }
    let fr = cluster
        .pointer("/status/failureReason")
        .and_then(Value::as_str)
        .unwrap_or("");
    let fm = cluster
        .pointer("/status/failureMessage")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !fr.is_empty() || !fm.is_empty() {
        return Some(format!(
            "cluster creation failed, reason: '{fr}', message: '{fm}'"
        ));
    }
    None
}

/// Whether a condition is `True`, falling back to the boolean status field when the condition is
/// absent (older or minimal controllers only set the booleans).
fn ready_flag(cluster: &Value, cond: &str, field: &str) -> bool {
    match condition(cluster, cond) {
        Some(_) => cond_true(cluster, cond),
        None => cluster
            .pointer(&format!("/status/{field}"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// Computes the state from the Cluster and its KubeadmControlPlanes and MachineDeployments.
pub fn cluster_state(cluster: &Value, kcps: &[Value], mds: &[Value]) -> ClusterState {
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
    for k in kcps {
        let desired = int_at(k, "/spec/replicas").unwrap_or(1);
        let ready = int_at(k, "/status/readyReplicas").unwrap_or(0);
        cp_ready += ready;
        cp_desired += desired;
        cp_all_ready &= ready == desired;
    }
    let mut machine_deployments = BTreeMap::new();
    let mut md_short_names = BTreeMap::new();
    for m in mds {
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

async fn observe(
    provider: &KubeProvider,
    inputs: &WorkloadTarget,
) -> Result<ClusterState, StepError> {
    let mc = &inputs.management_cluster;
    let ns = &inputs.namespace;
    let name = &inputs.cluster_name;
    let client = provider
        .management_client_with(mc, inputs.kubeconfig.as_ref())
        .await?;
    let what = format!("Cluster/{ns}/{name}");
    let clusters: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &cluster_resource());
    let cluster = match clusters.get_opt(name).await {
        Ok(Some(c)) => serde_json::to_value(c).unwrap_or(Value::Null),
        Ok(None) => {
            return Err(StepError::Permanent(format!(
                "{what} not found on management cluster '{mc}' (was it applied?)"
            )))
        }
        Err(e) => return Err(provider.classify_mgmt(mc, &what, e)),
    };
    if let Some(msg) = cluster_failure(&cluster) {
        return Err(StepError::Permanent(format!("{what}: {msg}")));
    }
    let lp = ListParams::default().labels(&format!("{CLUSTER_NAME_LABEL}={name}"));
    let (kcps, mds) = if ready_flag(&cluster, "ControlPlaneReady", "controlPlaneReady")
        && ready_flag(&cluster, "InfrastructureReady", "infrastructureReady")
    {
        let kcp_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &kcp_resource());
        let md_api: Api<DynamicObject> = Api::namespaced_with(client, ns, &md_resource());
        let kcps = kcp_api
            .list(&lp)
            .await
            .map_err(|e| classify(&format!("{what}: KubeadmControlPlanes"), &e))?;
        let mds = md_api
            .list(&lp)
            .await
            .map_err(|e| classify(&format!("{what}: MachineDeployments"), &e))?;
        let to_values = |items: Vec<DynamicObject>| -> Vec<Value> {
            items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect()
        };
        (to_values(kcps.items), to_values(mds.items))
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(cluster_state(&cluster, &kcps, &mds))
}

/// Runs `kube.wait-cluster` for the Cluster `inputs`; output
/// `{"phase":"Provisioned","controlPlane":"3/3","machineDeployments":{"<md>":"1/1",…}}`.
///
/// Errors: [`StepError::Permanent`] when the Cluster is missing or failed (see the module docs)
/// [`StepError::Transient`] after
/// [`super::MAX_CONSECUTIVE_POLL_ERRORS`] consecutive transient errors.
pub async fn wait_cluster(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &WorkloadTarget,
) -> Result<Value, StepError> {
    let mut progress = ProgressDedup::new();
    let mut errors = PollErrors::new();
    loop {
        match observe(provider, inputs).await {
            Ok(state) => {
                errors.ok();
                progress.report(ctx, state.progress_line());
                if state.ready() {
                    tracing::info!(step = %ctx.step.id, cluster = %inputs.cluster_name, "cluster ready");
                    return Ok(state.output());
                }
            }
            Err(e) => errors.failed(ctx, e)?,
        }
        tokio::time::sleep(provider.poll_interval()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(conds: Value) -> Value {
        json!({"status": {"phase": "Provisioned", "conditions": conds},
               "spec": {"topology": {"workers": {"machineDeployments": [{"name": "md-0"}]}}}})
    }

    #[test]
    fn ready_error_severity_is_failure() {
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
        let c = cluster(
            json!([{"type": "TopologyReconciled", "status": "False", "severity": "Info", "reason": "UpgradePending"}]),
        );
        assert!(cluster_failure(&c).is_none());
        let c = cluster(
            json!([{"type": "TopologyReconciled", "status": "False", "severity": "Error", "message": "no class"}]),
        );
        assert!(cluster_failure(&c).unwrap().contains("no class"));
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
        assert_eq!(s.output()["machineDeployments"]["c-md-0-abc"], "1/1");
        assert_eq!(s.output()["controlPlane"], "3/3");
        // No MachineDeployment yet although the topology asks for one.
        let s = cluster_state(&c, &[json!({"status": {"readyReplicas": 1}})], &[]);
        assert!(!s.ready());
    }
}

//! `kube.wait-cluster`: waits for a workload cluster as `tanzu cluster create` does
//! (tkg2-aws-class-based.md §6; TF `pkg/v1/tkg/clusterclient/clusterclient.go`, `resource.go`,
//! `tkg/client/package_helper.go`; tanzu-apis §2.2):
//!
//! 1. *Initialized*: the Cluster's conditions `ControlPlaneReady` and `InfrastructureReady` are
//!    `True` (the boolean status fields when the conditions are absent).
//! 2. *Ready*: every KubeadmControlPlane labelled `cluster.x-k8s.io/cluster-name=<name>` has
//!    `status.readyReplicas == spec.replicas` (default 1), and so has every MachineDeployment
//!    (and, for ClusterClass clusters, every topology MachineDeployment exists).
//! 3. Every Machine of the cluster has `status.nodeRef`.
//! 4. *Core packages* (ClusterClass clusters only): the ClusterBootstrap `<cluster>` (waited for
//!    up to [`WaitOptions::bootstrap_timeout`]) lists them: its `kapp`, `cni`, `csi` and `cpi`
//!    entries with `valuesFrom.providerRef`; each is the PackageInstall
//!    `<cluster>-<first dot-segment of refName>`, kapp-controller's in the **management**
//!    cluster in the Cluster's namespace, the others in the **workload** cluster, namespace
//!    `tkg-system`. A package passes on `ReconcileSucceeded`; `ReconcileFailed` is tolerated
//!    (kapp-controller retries) and its `usefulErrorMessage` reported as progress until
//!    [`WaitOptions::package_timeout`] (or shortly before the step deadline), when it becomes
//!    the step's error.
//!
//! Aborts, as TKG does, only when
//! - `Ready` is `False` with severity `Error` continuously for [`WaitOptions::error_persistence`]
//!   (messages containing "context deadline exceeded" or "context canceled" do not count):
//!   "cluster creation failed, reason: …";
//! - nothing changed for [`WaitOptions::unchanged_timeout`] before the machines are ready
//!   (Ready's `lastTransitionTime`, or any MachineDeployment's `replicas`, `readyReplicas`,
//!   `updatedReplicas`): "timed out waiting for cluster creation to complete".
//!
//! `TopologyReconciled` is never checked (CAPI sets severity `Error` for transient topology
//! errors too), nor `failureReason` or phase `Failed`.
//!
//! The wait reads the provider's shared watches (Cluster, KubeadmControlPlane,
//! MachineDeployment, Machine, ClusterBootstrap, PackageInstall on the management cluster,
//! PackageInstall on the workload cluster) and re-evaluates on every change; timers only fire
//! for the deadlines above. Progress lines (phase, control plane n/m, md-i n/m, nodeRefs,
//! packages) are deduplicated.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Api, DynamicObject};
use serde_json::Value;
use tokio::time::Instant;

use super::packages::{package_install_resource, reconcile_state, ReconcileState};
use super::watch::{changed_or, SharedWatch};
use super::{custom_resource, KubeProvider, PollErrors, ProgressDedup, WaitOptions};
use crate::WorkloadTarget;
use tkgops_domain::executor::{StepContext, StepError};

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
/// `cluster.x-k8s.io/v1beta1` Machine.
pub fn machine_resource() -> kube::discovery::ApiResource {
    custom_resource("cluster.x-k8s.io", "v1beta1", "Machine", "machines")
}
/// `run.tanzu.vmware.com/v1alpha3` ClusterBootstrap (tkg2-aws-class-based.md §3.2).
pub fn cluster_bootstrap_resource() -> kube::discovery::ApiResource {
    custom_resource(
        "run.tanzu.vmware.com",
        "v1alpha3",
        "ClusterBootstrap",
        "clusterbootstraps",
    )
}
/// Namespace of the core PackageInstalls in a workload cluster (§6 step 5).
pub const CORE_PACKAGES_NAMESPACE: &str = "tkg-system";
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

/// Checks the Cluster for TKG's error condition: `Ready` is `False` with severity `Error` and
/// its message contains neither "context deadline exceeded" nor "context canceled" (TF
/// `clusterclient.go`, tkg2-aws-class-based.md §6 step 2). Returns the message TKG aborts with
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

/// TKG's abort rules over observed time (tkg2-aws-class-based.md §6 step 2): a persistent
/// `Ready=False`/`Error` and the unchanged-state timeout. Pure: the caller passes the instants.
#[derive(Clone, Debug)]
pub struct CreationTracker {
    /// Since when the error condition has been seen without interruption.
    error_since: Option<Instant>,
    /// What "changed" compares: Ready's lastTransitionTime and the MachineDeployments' replica
    /// counts.
    fingerprint: Option<String>,
    /// When the fingerprint last changed (or the tracker started).
    last_change: Instant,
}

impl CreationTracker {
    /// A tracker whose unchanged-state clock starts at `now`.
    pub fn new(now: Instant) -> Self {
        CreationTracker {
            error_since: None,
            fingerprint: None,
            last_change: now,
        }
    }

    /// Records one observation at `now` of the Cluster and its MachineDeployments.
    ///
    /// Errors (the message of the abort, without the Cluster's name): "cluster creation failed,
    /// reason: …" once [`cluster_failure`] has held for `opts.error_persistence`; "timed out
    /// waiting for cluster creation to complete" once nothing changed for
    /// `opts.unchanged_timeout`.
    pub fn observe(
        &mut self,
        cluster: &Value,
        mds: &[Value],
        now: Instant,
        opts: &WaitOptions,
    ) -> Result<(), String> {
        let mut fp = condition(cluster, "Ready")
            .map(|c| cond_str(c, "lastTransitionTime").to_string())
            .unwrap_or_default();
        let mut md_parts: Vec<String> = mds
            .iter()
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
            self.last_change = now;
        }
        match cluster_failure(cluster) {
            Some(msg) => {
                let since = *self.error_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= opts.error_persistence {
                    return Err(msg);
                }
            }
            None => self.error_since = None,
        }
        if now.saturating_duration_since(self.last_change) >= opts.unchanged_timeout {
            return Err("timed out waiting for cluster creation to complete".into());
        }
        Ok(())
    }

    /// The next instant at which [`Self::observe`] could fail without any change being observed
    /// (the wait arms a timer for it).
    pub fn next_deadline(&self, opts: &WaitOptions) -> Instant {
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

fn to_values(objs: Vec<Arc<DynamicObject>>) -> Vec<Value> {
    objs.iter()
        .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
        .collect()
}

/// The shared watches one wait reads.
struct Watches {
    cluster: Arc<SharedWatch>,
    kcp: Arc<SharedWatch>,
    md: Arc<SharedWatch>,
    machine: Arc<SharedWatch>,
    bootstrap: Arc<SharedWatch>,
    mgmt_pkgi: Arc<SharedWatch>,
    /// The workload cluster's PackageInstall watch, once needed.
    workload_pkgi: Option<Arc<SharedWatch>>,
}

impl Watches {
    fn all(&self) -> Vec<&Arc<SharedWatch>> {
        let mut v = vec![
            &self.cluster,
            &self.kcp,
            &self.md,
            &self.machine,
            &self.bootstrap,
            &self.mgmt_pkgi,
        ];
        v.extend(self.workload_pkgi.iter());
        v
    }
}

/// Where the package phase stands.
struct PackagePhase {
    /// When the machines were first seen ready (the package wait's start).
    since: Instant,
}

/// Runs `kube.wait-cluster` for the Cluster `inputs`; output
/// `{"phase":"Provisioned","controlPlane":"3/3","machineDeployments":{"<md>":"1/1",…},
/// "nodeRefs":"6/6","packages":{"<pkgi>":"Reconcile succeeded",…}}`.
///
/// Errors: [`StepError::Permanent`] when the Cluster does not exist, for the aborts in the
/// module docs ("Cluster/<ns>/<name>: cluster creation failed, reason: …", "… timed out waiting
/// for cluster creation to complete"), a ClusterBootstrap missing after
/// [`WaitOptions::bootstrap_timeout`], a core package still failing or not reconciled after
/// [`WaitOptions::package_timeout`] ("PackageInstall <ns>/<name>: <usefulErrorMessage>"), and
/// permanent watch errors (401, 403); [`StepError::Transient`] after
/// [`super::MAX_CONSECUTIVE_POLL_ERRORS`] consecutive transient watch errors.
pub async fn wait_cluster(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &WorkloadTarget,
) -> Result<Value, StepError> {
    let opts = provider.wait_options().clone();
    let start = Instant::now();
    let report_deadline = opts.report_deadline(start, ctx.step.timeout_secs);
    let (mc, ns, name) = (
        &inputs.management_cluster,
        &inputs.namespace,
        &inputs.cluster_name,
    );
    let what = format!("Cluster/{ns}/{name}");
    let mut w = Watches {
        cluster: provider
            .management_watch(inputs, &cluster_resource())
            .await?,
        kcp: provider.management_watch(inputs, &kcp_resource()).await?,
        md: provider.management_watch(inputs, &md_resource()).await?,
        machine: provider
            .management_watch(inputs, &machine_resource())
            .await?,
        bootstrap: provider
            .management_watch(inputs, &cluster_bootstrap_resource())
            .await?,
        mgmt_pkgi: provider
            .management_watch(inputs, &package_install_resource())
            .await?,
        workload_pkgi: None,
    };
    let mut rxs: Vec<_> = w.all().iter().map(|x| x.subscribe()).collect();
    let mut tracker = CreationTracker::new(start);
    let mut progress = ProgressDedup::new();
    let mut workload_errors = PollErrors::new();
    let mut packages: Option<PackagePhase> = None;
    let mut confirmed_exists = false;
    // Latest failure per core package: kapp-controller alternates ReconcileFailed and
    // Reconciling while it retries, so a retry in progress still counts as failing.
    let mut last_failures: BTreeMap<String, String> = BTreeMap::new();
    loop {
        for r in rxs.iter_mut() {
            r.borrow_and_update();
        }
        let mut wake: Option<Instant> = None;
        for x in w.all() {
            if let Some(line) = provider.watch_health(inputs, x)? {
                progress.report(ctx, line);
            }
        }
        if !w.all().iter().all(|x| x.ready()) {
            changed_or(&mut rxs, None).await;
            continue;
        }
        let Some(cluster) = w.cluster.get(ns, name) else {
            // Not in the store: confirm with one GET (the store may lag behind a fresh apply).
            if confirmed_exists {
                changed_or(&mut rxs, None).await;
                continue;
            }
            let client = provider
                .management_client_with(mc, inputs.kubeconfig.as_ref())
                .await?;
            let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &cluster_resource());
            match api.get_opt(name).await {
                Ok(Some(_)) => confirmed_exists = true,
                Ok(None) => {
                    return Err(StepError::Permanent(format!(
                        "{what} not found on management cluster '{mc}' (was it applied?)"
                    )))
                }
                Err(e) => return Err(provider.classify_mgmt(mc, &what, e)),
            }
            continue;
        };
        let cluster = serde_json::to_value(cluster.as_ref()).unwrap_or(Value::Null);
        let kcps = to_values(w.kcp.labelled(ns, CLUSTER_NAME_LABEL, name));
        let mds = to_values(w.md.labelled(ns, CLUSTER_NAME_LABEL, name));
        let machines = to_values(w.machine.labelled(ns, CLUSTER_NAME_LABEL, name));
        let now = Instant::now();
        let state = cluster_state(&cluster, &kcps, &mds);
        let with_node = machines
            .iter()
            .filter(|m| m.pointer("/status/nodeRef").is_some())
            .count();
        let nodes_ready = with_node == machines.len();
        let mut line = state.progress_line();
        if state.ready() {
            line.push_str(&format!("; nodeRefs {with_node}/{}", machines.len()));
        }
        let machines_ready = state.ready() && nodes_ready;
        if !machines_ready || packages.is_none() {
            tracker
                .observe(&cluster, &mds, now, &opts)
                .map_err(|m| StepError::Permanent(format!("{what}: {m}")))?;
            wake = Some(tracker.next_deadline(&opts));
        }
        if machines_ready {
            let mut out = state.output();
            out["nodeRefs"] = Value::String(format!("{with_node}/{}", machines.len()));
            if cluster.pointer("/spec/topology").is_none() {
                // Plan-based clusters have no ClusterBootstrap (§6 step 5: class-based only).
                progress.report(ctx, line);
                return Ok(out);
            }
            let phase = packages.get_or_insert(PackagePhase { since: now });
            let Some(cb) = w.bootstrap.get(ns, name) else {
                let until = phase.since + opts.bootstrap_timeout;
                if now >= until {
                    return Err(StepError::Permanent(format!(
                        "{what}: ClusterBootstrap {ns}/{name} not found after {} s",
                        opts.bootstrap_timeout.as_secs()
                    )));
                }
                line.push_str("; waiting for ClusterBootstrap");
                progress.report(ctx, line);
                changed_or(&mut rxs, Some(until)).await;
                continue;
            };
            let cb = serde_json::to_value(cb.as_ref()).unwrap_or(Value::Null);
            let core = core_packages(&cb, name);
            if w.workload_pkgi.is_none() && core.iter().any(|p| !p.management) {
                match provider
                    .workload_watch(inputs, &package_install_resource())
                    .await
                {
                    Ok(x) => {
                        workload_errors.ok();
                        rxs.push(x.subscribe());
                        w.workload_pkgi = Some(x);
                        continue;
                    }
                    Err(e) => {
                        workload_errors.failed(ctx, e)?;
                        wake = Some(now + std::time::Duration::from_secs(1));
                    }
                }
            }
            let mut done = serde_json::Map::new();
            let mut pending: Vec<String> = Vec::new();
            let mut failed: Vec<String> = Vec::new();
            for p in &core {
                let (obj, pns) = if p.management {
                    (w.mgmt_pkgi.get(ns, &p.install_name), ns.as_str())
                } else {
                    (
                        w.workload_pkgi
                            .as_ref()
                            .and_then(|x| x.get(CORE_PACKAGES_NAMESPACE, &p.install_name)),
                        CORE_PACKAGES_NAMESPACE,
                    )
                };
                let st = match obj {
                    Some(o) => {
                        reconcile_state(&serde_json::to_value(o.as_ref()).unwrap_or(Value::Null))
                    }
                    None => ReconcileState::Pending("not created yet".into()),
                };
                match st {
                    ReconcileState::Succeeded => {
                        last_failures.remove(&p.install_name);
                        done.insert(p.install_name.clone(), "Reconcile succeeded".into());
                    }
                    ReconcileState::Failed(m) => {
                        last_failures.insert(p.install_name.clone(), m.clone());
                        failed.push(format!("PackageInstall {pns}/{}: {m}", p.install_name))
                    }
                    ReconcileState::Pending(d) => match last_failures.get(&p.install_name) {
                        Some(m) => {
                            failed.push(format!("PackageInstall {pns}/{}: {m}", p.install_name))
                        }
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
                progress.report(ctx, line);
                out["packages"] = Value::Object(done);
                tracing::info!(step = %ctx.step.id, cluster = %name, "cluster ready");
                return Ok(out);
            }
            progress.report(ctx, line);
            let mut until = phase.since + opts.package_timeout;
            if !failed.is_empty() {
                if let Some(d) = report_deadline {
                    until = until.min(d);
                }
            }
            if now >= until {
                let detail = if failed.is_empty() {
                    format!("not reconciled: {}", pending.join(", "))
                } else {
                    failed.join("; ")
                };
                return Err(StepError::Permanent(format!(
                    "{what}: core packages did not reconcile within {} s: {detail}",
                    now.saturating_duration_since(phase.since).as_secs()
                )));
            }
            wake = Some(wake.map_or(until, |x| x.min(until)));
        } else {
            progress.report(ctx, line);
        }
        changed_or(&mut rxs, wake).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

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
        let t0 = Instant::now();
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
        let almost = t0 + opts.error_persistence - Duration::from_secs(1);
        t.observe(&failing, &mds, almost, &opts).unwrap();
        // Interrupted: the window starts again.
        t.observe(&fine, &mds, almost, &opts).unwrap();
        let t1 = almost + Duration::from_secs(1);
        t.observe(&failing, &mds, t1, &opts).unwrap();
        t.observe(
            &failing,
            &mds,
            t1 + opts.error_persistence - Duration::from_secs(1),
            &opts,
        )
        .unwrap();
        let e = t
            .observe(&failing, &mds, t1 + opts.error_persistence, &opts)
            .unwrap_err();
        assert_eq!(e, "cluster creation failed, reason: 'R', message: 'quota'");
    }

    #[test]
    fn nothing_changed_for_the_operation_timeout_aborts() {
        let opts = WaitOptions::default();
        let t0 = Instant::now();
        let mut t = CreationTracker::new(t0);
        let c = cluster(
            json!([{"type": "Ready", "status": "False", "severity": "Info", "lastTransitionTime": "t1"}]),
        );
        t.observe(&c, &[md(0)], t0, &opts).unwrap();
        // An MD's readyReplicas moving counts as a change and restarts the clock.
        let t1 = t0 + Duration::from_secs(20 * 60);
        t.observe(&c, &[md(1)], t1, &opts).unwrap();
        assert_eq!(t.next_deadline(&opts), t1 + opts.unchanged_timeout);
        t.observe(
            &c,
            &[md(1)],
            t1 + opts.unchanged_timeout - Duration::from_secs(1),
            &opts,
        )
        .unwrap();
        let e = t
            .observe(&c, &[md(1)], t1 + opts.unchanged_timeout, &opts)
            .unwrap_err();
        assert_eq!(e, "timed out waiting for cluster creation to complete");
        // Ready's lastTransitionTime moving is a change too.
        let mut t = CreationTracker::new(t0);
        t.observe(&c, &[], t0, &opts).unwrap();
        let c2 = cluster(
            json!([{"type": "Ready", "status": "False", "severity": "Info", "lastTransitionTime": "t9"}]),
        );
        t.observe(&c2, &[], t0 + opts.unchanged_timeout, &opts)
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
        assert_eq!(s.output()["machineDeployments"]["c-md-0-abc"], "1/1");
        assert_eq!(s.output()["controlPlane"], "3/3");
        // No MachineDeployment yet although the topology asks for one.
        let s = cluster_state(&c, &[json!({"status": {"readyReplicas": 1}})], &[]);
        assert!(!s.ready());
    }
}

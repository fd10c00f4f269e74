//! Day-2 changes of an existing Cluster on its management cluster: the upgrade patch, the waits
//! for the control plane and the MachineDeployments to roll, and the delete.
//!
//! - `kube.upgrade-cluster` ([`upgrade_cluster`]): what `tanzu cluster upgrade` sends for a
//!   class-based Cluster, a JSON merge patch `{"spec":{"topology":{"version":"<TKR version>"}}}`
//!   and nothing else (tkg2-aws-class-based.md §8 "Patch"); skipped when the Cluster already
//!   asks for that TKR (the TKR resolver rewrites the field to the Kubernetes version, §10.3).
//! - `kube.wait-control-plane` ([`wait_control_plane`]): §8 "Wait", CP: the KubeadmControlPlane
//!   runs the version on every replica (`spec.version` and `status.version`,
//!   `replicas == updatedReplicas == readyReplicas == spec.replicas`), `ControlPlaneReady=True`,
//!   every control-plane Machine has the version and a `nodeRef`, and the workload API server
//!   reports the version.
//! - `kube.wait-machine-deployments` ([`wait_machine_deployments`]): §8 "Wait", workers: every
//!   MachineDeployment of the topology exists and has `readyReplicas == updatedReplicas ==
//!   replicas == spec.replicas` for its current generation, and every worker Machine's
//!   `spec.version` is the new version.
//! - `kube.delete-cluster` ([`delete_cluster`]): deletes the Cluster (Cluster API deletes the
//!   rest, CAPA the AWS resources) and waits until it is gone. The DELETE carries a `uid`
//!   precondition with the uid of the owned Cluster read in the same attempt, so a same-named
//!   Cluster created meanwhile is never deleted.
//! - `kube.check-owner` ([`check_owner`]): the delete workflow's first step: the Cluster, when
//!   it exists, must carry this request's ownership label before TMC or AWS is touched.
//!
//! The waits read the provider's shared watches and apply TKG's abort rules
//! ([`super::cluster::CreationTracker`]: a persistent `Ready=False`/`Error`, nothing changed for
//! the operation timeout). Their outputs carry `rolledNodes`, the Machines created during the
//! wait, from which the bot estimates later rollouts.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::cluster::{
    cluster_resource, condition, kcp_resource, machine_resource, md_resource, CreationTracker,
    CLUSTER_NAME_LABEL,
};
use super::watch::{changed_or, SharedWatch};
use super::{classify, KubeProvider, ProgressDedup, FIELD_MANAGER};
use crate::WorkloadTarget;
use tkgops_domain::executor::{StepContext, StepError};
use tkgops_domain::step::{KubeDeleteInputs, KubeRolloutInputs, UpgradeClusterInputs};
use tkgops_domain::workflow::plan::OWNER_LABEL;

/// Label Cluster API puts on control-plane Machines.
const CONTROL_PLANE_LABEL: &str = "cluster.x-k8s.io/control-plane";
/// Label Cluster API puts on the Machines of a MachineDeployment (its name).
const DEPLOYMENT_NAME_LABEL: &str = "cluster.x-k8s.io/deployment-name";
/// How often the workload API server's version is asked again while it still reports the old
/// one (TKG polls every 15 s).
const APISERVER_RECHECK: Duration = Duration::from_secs(15);

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn int_at(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn label<'a>(v: &'a Value, key: &str) -> &'a str {
    v.pointer("/metadata/labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn name_of(v: &Value) -> &str {
    str_at(v, "/metadata/name")
}

fn to_value(o: &DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// The Cluster `namespace/name` from the management cluster (one GET), checked to carry the
/// owner label `owner` (security rule 7). `Ok(None)` when it does not exist.
///
/// Errors: [`StepError::Permanent`] when `owner` is empty (inputs without an ownership mark
/// prove nothing) or the Cluster carries no or another [`OWNER_LABEL`]; request errors as
/// [`classify`].
async fn owned_cluster(
    provider: &KubeProvider,
    target: &WorkloadTarget,
    owner: &str,
) -> Result<Option<(Api<DynamicObject>, DynamicObject)>, StepError> {
    let (mc, ns, name) = (
        &target.management_cluster,
        &target.namespace,
        &target.cluster_name,
    );
    let client = provider
        .management_client_with(mc, target.kubeconfig.as_ref())
        .await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &cluster_resource());
    let what = format!("Cluster/{ns}/{name}");
    if owner.trim().is_empty() {
        return Err(StepError::Permanent(format!(
            "{what}: the step has no {OWNER_LABEL} value to check (planned by an older tkgops?); tkgops changes and deletes only Clusters it can prove it owns: plan the change again"
        )));
    }
    let Some(cluster) = api
        .get_opt(name)
        .await
        .map_err(|e| provider.classify_mgmt(mc, &what, e))?
    else {
        return Ok(None);
    };
    let found = cluster
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OWNER_LABEL))
        .cloned();
    if found.as_deref() != Some(owner) {
        return Err(StepError::Permanent(format!(
            "{what} on management cluster '{mc}' is not owned by this cluster request ({}; expected {owner}); tkgops changes and deletes only Clusters it created for the same config repository and cluster path",
            match found {
                Some(f) => format!("its {OWNER_LABEL} label is {f}"),
                None => format!("it has no {OWNER_LABEL} label"),
            }
        )));
    }
    Ok(Some((api, cluster)))
}

/// Runs `kube.upgrade-cluster`: merge-patches `spec.topology.version` of the Cluster to
/// `inputs.tkr` (field manager [`FIELD_MANAGER`]) unless it already asks for that TKR or its
/// Kubernetes version. Output `{"from": "<version before>", "to": "<tkr>", "patched": bool}`.
///
/// Errors: [`StepError::Permanent`] when the Cluster does not exist or is not owned
/// ([`OWNER_LABEL`]), or when admission refuses the patch (a downgrade, a jump of two minors,
/// a TKR that does not resolve: the webhook's message); others as [`classify`].
pub async fn upgrade_cluster(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &UpgradeClusterInputs,
) -> Result<Value, StepError> {
    let t = &inputs.target;
    let what = format!("Cluster/{}/{}", t.namespace, t.cluster_name);
    let Some((api, cluster)) = owned_cluster(provider, t, &inputs.owner_label).await? else {
        return Err(StepError::Permanent(format!(
            "{what} not found on management cluster '{}': there is nothing to upgrade",
            t.management_cluster
        )));
    };
    let current = to_value(&cluster);
    let from = str_at(&current, "/spec/topology/version").to_string();
    if from == inputs.tkr || from == inputs.kubernetes_version {
        ctx.progress
            .report(&format!("{what} already asks for {}", inputs.tkr));
        return Ok(json!({"from": from, "to": inputs.tkr, "patched": false}));
    }
    let patch = json!({"spec": {"topology": {"version": inputs.tkr}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(&t.cluster_name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| match classify(&what, &e) {
            StepError::Permanent(m) => StepError::Permanent(format!(
                "management cluster '{}' refused the upgrade of {what} from {from} to {}: {m}",
                t.management_cluster, inputs.tkr
            )),
            other => other,
        })?;
    ctx.progress.report(&format!(
        "spec.topology.version {from} → {}; Cluster API rolls the control plane first",
        inputs.tkr
    ));
    tracing::info!(step = %ctx.step.id, cluster = %t.cluster_name, from = %from, to = %inputs.tkr, "upgrade patched");
    Ok(json!({"from": from, "to": inputs.tkr, "patched": true}))
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

/// Whether `version` (a Machine's or KCP's) is the target: equal, or a prefix of it as TKG
/// compares (§8 "every worker Machine's spec.version is a prefix of the new version").
fn at_version(version: &str, target: &str) -> bool {
    !version.is_empty() && target.starts_with(version)
}

/// One read of a cluster's objects from the shared watches: the Cluster, the owned objects
/// (KubeadmControlPlanes or MachineDeployments), the Machines.
type Snapshot = (
    Option<std::sync::Arc<DynamicObject>>,
    Vec<std::sync::Arc<DynamicObject>>,
    Vec<std::sync::Arc<DynamicObject>>,
);

/// `(kind/name, resourceVersion)` of a [`Snapshot`]'s objects: what a wait compares to know
/// whether its cluster changed.
fn fingerprint(
    cluster: Option<&DynamicObject>,
    owned: &[std::sync::Arc<DynamicObject>],
    machines: &[std::sync::Arc<DynamicObject>],
) -> Vec<(String, String)> {
    let key = |kind: &str, o: &DynamicObject| {
        (
            format!("{kind}/{}", o.metadata.name.as_deref().unwrap_or("")),
            o.metadata.resource_version.clone().unwrap_or_default(),
        )
    };
    let mut fp: Vec<(String, String)> = cluster.map(|c| key("Cluster", c)).into_iter().collect();
    fp.extend(owned.iter().map(|o| key("owned", o)));
    fp.extend(machines.iter().map(|o| key("Machine", o)));
    fp
}

/// One wait's common state: the watches, the tracker, the Machines present at the start.
struct RolloutWait<'a> {
    provider: &'a KubeProvider,
    ctx: &'a StepContext,
    inputs: &'a KubeRolloutInputs,
    cluster: std::sync::Arc<SharedWatch>,
    owned: std::sync::Arc<SharedWatch>,
    machines: std::sync::Arc<SharedWatch>,
    tracker: CreationTracker,
    initial_machines: Option<BTreeSet<String>>,
    progress: ProgressDedup,
    /// `(kind/name, resourceVersion)` of the objects the last observation returned: a change
    /// of another cluster's objects in the shared watches does not wake this wait.
    seen: Vec<(String, String)>,
}

impl<'a> RolloutWait<'a> {
    async fn start(
        provider: &'a KubeProvider,
        ctx: &'a StepContext,
        inputs: &'a KubeRolloutInputs,
        owned: kube::discovery::ApiResource,
    ) -> Result<RolloutWait<'a>, StepError> {
        let t = &inputs.target;
        Ok(RolloutWait {
            provider,
            ctx,
            inputs,
            cluster: provider.management_watch(t, &cluster_resource()).await?,
            owned: provider.management_watch(t, &owned).await?,
            machines: provider.management_watch(t, &machine_resource()).await?,
            tracker: CreationTracker::new(Instant::now()),
            initial_machines: None,
            progress: ProgressDedup::new(),
            seen: Vec::new(),
        })
    }

    /// One change receiver per watch (the Cluster, the owned objects, the Machines).
    fn subscribe(&self) -> Vec<tokio::sync::watch::Receiver<u64>> {
        vec![
            self.cluster.subscribe(),
            self.owned.subscribe(),
            self.machines.subscribe(),
        ]
    }

    fn what(&self) -> String {
        let t = &self.inputs.target;
        format!("Cluster/{}/{}", t.namespace, t.cluster_name)
    }

    /// Waits for the watches to be listed and healthy, then returns the Cluster, the owned
    /// objects (KCPs or MDs) and the Machines of the cluster.
    async fn observe(
        &mut self,
        rxs: &mut [tokio::sync::watch::Receiver<u64>],
    ) -> Result<(Value, Vec<Value>, Vec<Value>), StepError> {
        let t = &self.inputs.target;
        loop {
            for r in rxs.iter_mut() {
                r.borrow_and_update();
            }
            for x in [&self.cluster, &self.owned, &self.machines] {
                if let Some(line) = self.provider.watch_health(t, x)? {
                    self.progress.report(self.ctx, line);
                }
            }
            if ![&self.cluster, &self.owned, &self.machines]
                .iter()
                .all(|x| x.ready())
            {
                changed_or(rxs, None).await;
                continue;
            }
            let (cluster, owned, machines) = self.snapshot();
            let Some(cluster) = cluster else {
                return Err(StepError::Permanent(format!(
                    "{} not found on management cluster '{}'",
                    self.what(),
                    t.management_cluster
                )));
            };
            // What this observation judges is what a later change is compared with: the watch
            // tasks update the stores concurrently, so a fingerprint read again here could
            // already include a change the judgement did not see, and the wait would sleep
            // through it.
            self.seen = fingerprint(Some(&cluster), &owned, &machines);
            let machines: Vec<Value> = machines.iter().map(|o| to_value(o)).collect();
            if self.initial_machines.is_none() {
                self.initial_machines =
                    Some(machines.iter().map(|m| name_of(m).to_string()).collect());
            }
            let owned = owned.iter().map(|o| to_value(o)).collect();
            return Ok((to_value(&cluster), owned, machines));
        }
    }

    /// This cluster's objects in the three watches, read once: the Cluster, the owned objects
    /// (KCPs or MDs) and the Machines.
    fn snapshot(&self) -> Snapshot {
        let t = &self.inputs.target;
        let labelled =
            |w: &SharedWatch| w.labelled(&t.namespace, CLUSTER_NAME_LABEL, &t.cluster_name);
        (
            self.cluster.get(&t.namespace, &t.cluster_name),
            labelled(&self.owned),
            labelled(&self.machines),
        )
    }

    /// Waits until one of this cluster's objects changed since the last observation, a watch
    /// needs attention (not listed, unhealthy), or `until`. Changes of other clusters' objects
    /// in the shared watches are skipped without converting anything: with many rollouts in
    /// flight on one management cluster, every change would otherwise wake every wait.
    async fn wait_change(&mut self, rxs: &mut [tokio::sync::watch::Receiver<u64>], until: Instant) {
        loop {
            changed_or(rxs, Some(until)).await;
            if Instant::now() >= until {
                return;
            }
            for r in rxs.iter_mut() {
                r.borrow_and_update();
            }
            let t = &self.inputs.target;
            let attention = [&self.cluster, &self.owned, &self.machines]
                .iter()
                .any(|x| !x.ready() || !matches!(self.provider.watch_health(t, x), Ok(None)));
            let (cluster, owned, machines) = self.snapshot();
            if attention || fingerprint(cluster.as_deref(), &owned, &machines) != self.seen {
                return;
            }
        }
    }

    /// Applies TKG's abort rules to one observation; returns the instant to wake at.
    fn track(&mut self, cluster: &Value, owned: &[Value]) -> Result<Instant, StepError> {
        let opts = self.provider.wait_options().clone();
        let what = self.what();
        self.tracker
            .observe(cluster, owned, Instant::now(), &opts)
            .map_err(|m| {
                StepError::Permanent(format!(
                    "{what}: {}",
                    m.replace("cluster creation", "the rollout")
                ))
            })?;
        Ok(self.tracker.next_deadline(&opts))
    }

    /// Machines created since the wait started, among `machines`.
    fn rolled(&self, machines: &[&Value]) -> usize {
        let initial = self.initial_machines.clone().unwrap_or_default();
        machines
            .iter()
            .filter(|m| !initial.contains(name_of(m)))
            .count()
    }
}

/// Runs `kube.wait-control-plane` (module docs). Output `{"version", "replicas",
/// "rolledNodes", "apiServerVersion"}`.
///
/// Errors: [`StepError::Permanent`] when the Cluster or its KubeadmControlPlane is missing, for
/// TKG's aborts ("…: the rollout failed, reason: …", "…: timed out waiting for the rollout to
/// complete") and permanent watch errors; [`StepError::Transient`] after repeated transient
/// watch errors or when the workload API server cannot be reached.
pub async fn wait_control_plane(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &KubeRolloutInputs,
) -> Result<Value, StepError> {
    let mut w = RolloutWait::start(provider, ctx, inputs, kcp_resource()).await?;
    let mut rxs = w.subscribe();
    let target = &inputs.kubernetes_version;
    let what = w.what();
    loop {
        let (cluster, kcps, machines) = w.observe(&mut rxs).await?;
        let Some(kcp) = kcps.first() else {
            return Err(StepError::Permanent(format!(
                "{what} has no KubeadmControlPlane on management cluster '{}'",
                inputs.target.management_cluster
            )));
        };
        let wake = w.track(&cluster, &kcps)?;
        let (desired, current, updated, ready) = replicas(kcp);
        let cp_machines: Vec<&Value> = machines
            .iter()
            .filter(|m| {
                m.pointer("/metadata/labels")
                    .and_then(|l| l.get(CONTROL_PLANE_LABEL))
                    .is_some()
            })
            .collect();
        let machines_done = cp_machines.len() as i64 == desired
            && cp_machines.iter().all(|m| {
                at_version(str_at(m, "/spec/version"), target)
                    && m.pointer("/status/nodeRef").is_some()
            });
        let cp_ready = condition(&cluster, "ControlPlaneReady")
            .map(|c| c["status"] == "True")
            .unwrap_or(false);
        let status_version = str_at(kcp, "/status/version");
        let done = generation_observed(kcp)
            && at_version(str_at(kcp, "/spec/version"), target)
            && at_version(status_version, target)
            && desired == current
            && current == updated
            && updated == ready
            && cp_ready
            && machines_done;
        let line = format!(
            "control plane {} → {target}: {updated}/{desired} up to date, {ready}/{desired} ready{}",
            if status_version.is_empty() { "?" } else { status_version },
            if cp_ready { "" } else { ", ControlPlaneReady not True" }
        );
        if !done {
            w.progress.report(ctx, line);
            w.wait_change(&mut rxs, wake).await;
            continue;
        }
        // The workload API server must report the version too.
        let wl = provider.workload(&inputs.target).await?;
        let reported = wl
            .client
            .apiserver_version()
            .await
            .map_err(|e| {
                classify(
                    &format!(
                        "workload cluster {} ({})",
                        inputs.target.cluster_name, wl.server
                    ),
                    &e,
                )
            })?
            .git_version;
        if !at_version(&reported, target)
            && !target.starts_with(reported.split('+').next().unwrap_or(""))
        {
            w.progress.report(
                ctx,
                format!("{line}; the workload API server still reports {reported}"),
            );
            w.wait_change(&mut rxs, wake.min(Instant::now() + APISERVER_RECHECK))
                .await;
            continue;
        }
        let rolled = w.rolled(&cp_machines);
        w.progress.report(
            ctx,
            format!(
                "control plane at {target}: {ready}/{desired} ready; API server reports {reported}"
            ),
        );
        return Ok(json!({
            "version": target,
            "replicas": desired,
            "rolledNodes": rolled,
            "apiServerVersion": reported,
        }));
    }
}

/// Runs `kube.wait-machine-deployments` (module docs). Output `{"version",
/// "machineDeployments": {"md-0": "3/3", …}, "rolledNodes"}`.
///
/// Errors: as [`wait_control_plane`]; also [`StepError::Permanent`] when the Cluster has no
/// topology.
pub async fn wait_machine_deployments(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &KubeRolloutInputs,
) -> Result<Value, StepError> {
    let mut w = RolloutWait::start(provider, ctx, inputs, md_resource()).await?;
    let mut rxs = w.subscribe();
    let target = &inputs.kubernetes_version;
    let what = w.what();
    loop {
        let (cluster, mds, machines) = w.observe(&mut rxs).await?;
        let Some(topology) = cluster
            .pointer("/spec/topology/workers/machineDeployments")
            .and_then(Value::as_array)
        else {
            return Err(StepError::Permanent(format!(
                "{what} has no spec.topology.workers: only class-based Clusters are rolled by tkgops"
            )));
        };
        let wake = w.track(&cluster, &mds)?;
        let mut parts = Vec::new();
        let mut all_done = true;
        let mut out = serde_json::Map::new();
        let mut worker_machines: Vec<&Value> = Vec::new();
        for td in topology {
            let short = str_at(td, "/name");
            let want = int_at(td, "/replicas");
            let md = mds
                .iter()
                .find(|m| label(m, "topology.cluster.x-k8s.io/deployment-name") == short);
            let Some(md) = md else {
                all_done = false;
                parts.push(format!("{short}: not created yet"));
                continue;
            };
            let md_name = name_of(md);
            let (desired, current, updated, ready) = replicas(md);
            let own: Vec<&Value> = machines
                .iter()
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
            out.insert(short.to_string(), json!(format!("{ready}/{desired}")));
            parts.push(if done {
                format!("{short} {ready}/{desired} at {target}")
            } else {
                format!("{short} {updated}/{desired} up to date, {ready}/{desired} ready")
            });
        }
        let line = format!("workers: {}", parts.join("; "));
        w.progress.report(ctx, line);
        if all_done {
            return Ok(json!({
                "version": target,
                "machineDeployments": out,
                "rolledNodes": w.rolled(&worker_machines),
            }));
        }
        w.wait_change(&mut rxs, wake).await;
    }
}

/// Runs `kube.check-owner`: reads the Cluster `inputs.target` once and checks that it carries
/// `inputs.owner_label` ([`OWNER_LABEL`], security rule 7). The delete workflow runs it before
/// it detaches the cluster from TMC or untags its subnets, so a Cluster of another config
/// repository or cluster path stops the run before anything is touched. A Cluster that does
/// not exist passes (`{"exists": false}`): the later steps check their own marks (the TMC
/// cluster's owner label; the delete finds nothing). Output `{"exists": true, "uid": "…",
/// "deleting": bool}` for an owned Cluster. Changes nothing.
///
/// Errors: [`StepError::Permanent`] naming the label found and the one expected when the
/// Cluster is not owned, or when the inputs carry no owner label; request errors as
/// [`classify`].
pub async fn check_owner(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &KubeDeleteInputs,
) -> Result<Value, StepError> {
    let t = &inputs.target;
    let what = format!("Cluster/{}/{}", t.namespace, t.cluster_name);
    match owned_cluster(provider, t, &inputs.owner_label).await? {
        None => {
            ctx.progress.report(&format!(
                "{what} does not exist on management cluster '{}'",
                t.management_cluster
            ));
            Ok(json!({"exists": false}))
        }
        Some((_, cluster)) => {
            let uid = cluster.metadata.uid.clone().unwrap_or_default();
            ctx.progress.report(&format!(
                "{what} carries this request's {OWNER_LABEL} label (uid {uid})"
            ));
            Ok(json!({
                "exists": true,
                "uid": uid,
                "deleting": cluster.metadata.deletion_timestamp.is_some(),
            }))
        }
    }
}

/// Runs `kube.delete-cluster`: deletes the Cluster (once: a Cluster already being deleted is
/// not deleted again) and waits until Cluster API has removed it (its finalizer goes when the
/// machines and AWS resources are gone). The DELETE carries the precondition
/// `preconditions.uid` = the uid of the owned Cluster read by this attempt, so the API server
/// refuses it (409 Conflict) when the Cluster was replaced by a same-named one in between. A
/// Cluster that does not exist is success. Output `{"deleted": bool}` (`false`: it was already
/// gone).
///
/// Errors: [`StepError::Permanent`] when the Cluster is not owned ([`OWNER_LABEL`]) and for
/// permanent watch errors; [`StepError::Transient`] when the uid precondition failed (the next
/// attempt reads the new Cluster and checks its owner again); others as [`classify`].
pub async fn delete_cluster(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &KubeDeleteInputs,
) -> Result<Value, StepError> {
    let t = &inputs.target;
    let what = format!("Cluster/{}/{}", t.namespace, t.cluster_name);
    let Some((api, cluster)) = owned_cluster(provider, t, &inputs.owner_label).await? else {
        ctx.progress.report(&format!("{what} is already gone"));
        return Ok(json!({"deleted": false}));
    };
    let Some(uid) = cluster.metadata.uid.clone().filter(|u| !u.is_empty()) else {
        return Err(StepError::Transient(format!(
            "{what} has no metadata.uid; tkgops deletes only with a uid precondition"
        )));
    };
    let watch = provider.management_watch(t, &cluster_resource()).await?;
    let mut rxs = vec![watch.subscribe()];
    if cluster.metadata.deletion_timestamp.is_none() {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        api.delete(&t.cluster_name, &params)
            .await
            .map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 409 && s.message.contains("Precondition failed") => {
                    StepError::Transient(format!(
                        "{what} was replaced after tkgops read it (uid {uid} is gone); not deleted: the next attempt reads it again and checks its owner"
                    ))
                }
                _ => provider.classify_mgmt(&t.management_cluster, &what, e),
            })?;
        ctx.progress.report(&format!(
            "deleting {what}: Cluster API removes its machines, then CAPA its AWS resources"
        ));
    }
    let mut progress = ProgressDedup::new();
    loop {
        for r in rxs.iter_mut() {
            r.borrow_and_update();
        }
        if let Some(line) = provider.watch_health(t, &watch)? {
            progress.report(ctx, line);
        }
        if watch.ready() {
            match watch.get(&t.namespace, &t.cluster_name) {
                Some(o) if o.metadata.uid.as_deref() == Some(uid.as_str()) => {
                    let v = to_value(&o);
                    progress.report(
                        ctx,
                        format!("{what}: phase {}", str_at(&v, "/status/phase")),
                    );
                }
                _ => {
                    // Gone from the store: confirm with one GET.
                    match api.get_opt(&t.cluster_name).await {
                        Ok(Some(o)) if o.metadata.uid.as_deref() == Some(uid.as_str()) => {}
                        Ok(_) => {
                            progress.report(ctx, format!("{what} deleted"));
                            return Ok(json!({"deleted": true}));
                        }
                        Err(e) => {
                            return Err(provider.classify_mgmt(&t.management_cluster, &what, e))
                        }
                    }
                }
            }
        }
        changed_or(&mut rxs, Some(Instant::now() + Duration::from_secs(30))).await;
    }
}

/// Runs `packages.verify`: every PackageInstall of the workload cluster `target` (every
/// namespace: the core packages in `tkg-system` and the user packages) must be
/// `ReconcileSucceeded` for its current generation (tanzu-apis.md §4.3). Waits on the shared
/// watch while some still reconcile; a package failing (`ReconcileFailed`) for
/// [`super::WaitOptions::package_timeout`] or until the step's report deadline fails the step.
/// Output `{"packageInstalls": {"<ns>/<name>": "<version>", …}}`.
///
/// Errors: [`StepError::Permanent`] naming every failing PackageInstall with kapp-controller's
/// `usefulErrorMessage`; errors of [`KubeProvider::workload`] and of the watch.
pub async fn verify_packages(
    provider: &KubeProvider,
    ctx: &StepContext,
    target: &WorkloadTarget,
) -> Result<Value, StepError> {
    use super::packages::{package_install_resource, reconcile_state, ReconcileState};
    let opts = provider.wait_options().clone();
    let start = Instant::now();
    let mut until = start + opts.package_timeout;
    if let Some(d) = opts.report_deadline(start, ctx.step.timeout_secs) {
        until = until.min(d);
    }
    let watch = provider
        .workload_watch(target, &package_install_resource())
        .await?;
    let mut rxs = vec![watch.subscribe()];
    let wl = provider.workload(target).await?;
    let listed: Vec<(String, i64)> =
        Api::<DynamicObject>::all_with(wl.client.clone(), &package_install_resource())
            .list(&Default::default())
            .await
            .map_err(|e| {
                classify(
                    &format!(
                        "PackageInstalls of workload cluster '{}'",
                        target.cluster_name
                    ),
                    &e,
                )
            })?
            .items
            .into_iter()
            .map(|o| {
                (
                    format!(
                        "{}/{}",
                        o.metadata.namespace.clone().unwrap_or_default(),
                        o.metadata.name.clone().unwrap_or_default()
                    ),
                    o.metadata.generation.unwrap_or(0),
                )
            })
            .collect();
    let mut progress = ProgressDedup::new();
    // kapp-controller alternates ReconcileFailed and Reconciling while it retries: a retry in
    // progress still counts as failing, with the last message.
    let mut last_failures: std::collections::BTreeMap<String, String> = Default::default();
    loop {
        for r in rxs.iter_mut() {
            r.borrow_and_update();
        }
        if let Some(line) = provider.watch_health(target, &watch)? {
            progress.report(ctx, line);
        }
        if !watch.ready() {
            changed_or(&mut rxs, Some(until)).await;
            continue;
        }
        // The store may lag behind a change made just before the step: judge every
        // PackageInstall at (at least) the generation one LIST saw.
        let mut all: Vec<Value> = Vec::new();
        let mut behind = Vec::new();
        for (id, generation) in &listed {
            let (ns, name) = id.split_once('/').unwrap_or(("", id));
            match watch.get(ns, name) {
                // Deleted meanwhile: no longer part of the cluster.
                None => {}
                Some(o) if o.metadata.generation.unwrap_or(0) < *generation => {
                    behind.push(format!("{id} (waiting for generation {generation})"))
                }
                Some(o) => all.push(to_value(&o)),
            }
        }
        let mut ok = serde_json::Map::new();
        let mut pending = behind;
        let mut failed = Vec::new();
        for p in &all {
            let id = format!("{}/{}", str_at(p, "/metadata/namespace"), name_of(p));
            match reconcile_state(p) {
                ReconcileState::Succeeded => {
                    last_failures.remove(&id);
                    let version = match str_at(p, "/status/version") {
                        "" => str_at(p, "/spec/packageRef/versionSelection/constraints"),
                        v => v,
                    };
                    ok.insert(id, json!(version));
                }
                ReconcileState::Failed(m) => {
                    failed.push(format!("PackageInstall {id}: {m}"));
                    last_failures.insert(id, m);
                }
                ReconcileState::Pending(d) => match last_failures.get(&id) {
                    Some(m) => failed.push(format!("PackageInstall {id}: {m}")),
                    None => pending.push(format!("{id} ({d})")),
                },
            }
        }
        if failed.is_empty() && pending.is_empty() {
            progress.report(ctx, format!("{} PackageInstalls reconciled", ok.len()));
            return Ok(json!({"packageInstalls": ok}));
        }
        progress.report(
            ctx,
            format!(
                "{}/{} PackageInstalls reconciled{}{}",
                ok.len(),
                listed.len(),
                if pending.is_empty() {
                    String::new()
                } else {
                    format!("; waiting: {}", pending.join(", "))
                },
                if failed.is_empty() {
                    String::new()
                } else {
                    format!("; failing: {}", failed.join("; "))
                }
            ),
        );
        if Instant::now() >= until {
            let detail = if failed.is_empty() {
                format!("not reconciled: {}", pending.join(", "))
            } else {
                failed.join("; ")
            };
            return Err(StepError::Permanent(format!(
                "workload cluster '{}': PackageInstalls did not reconcile within {} s: {detail}",
                target.cluster_name,
                Instant::now().saturating_duration_since(start).as_secs()
            )));
        }
        changed_or(&mut rxs, Some(until)).await;
    }
}

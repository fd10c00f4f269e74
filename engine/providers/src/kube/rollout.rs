//! Day-2 changes of an existing Cluster on its management cluster: the upgrade patch, the waits
//! for the control plane and the MachineDeployments to roll, and the delete.
//!
//! - `kube.upgrade-cluster` ([`upgrade_cluster`]): the change `tanzu cluster upgrade` makes to a
//!   class-based Cluster, `spec.topology.version` set to the TKR version and nothing else
//!   (docs/tkg2-class-based.md §8 "Patch"), checked first by a server-side dry run that must
//!   change nothing but what the upgrade's webhooks change (the version, `spec.paused`,
//!   `TKR_DATA`), and written the way tkgops always writes the Cluster:
//!   a server-side apply (field manager `tkgops`) of what tkgops applied before
//!   ([`super::extract::applied_by`]) with the new version. The CLI's merge patch would make
//!   tkgops an `Update` manager of the version beside its `Apply` entry, and every later resize
//!   (an apply) would then conflict with it on a real API server. Skipped when the Cluster
//!   already asks for that TKR (the TKR resolver rewrites the field to the Kubernetes version,
//!   §10.3).
//! - `kube.resize-cluster` ([`resize_cluster`]): sets the planned machine fields (replicas,
//!   instance types, root volumes) and nothing else, after checking the live Cluster and a
//!   server-side dry run against the plan.
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
//! The waits are the pure judges of `tkgops_domain::wait::rollout` ([`ControlPlaneRolled`],
//! [`MachineDeploymentsRolled`], [`ClusterDeleted`]; TKG's abort rules of §6: a persistent
//! `Ready=False`/`Error`, nothing changed for the operation timeout), run by the one wait
//! driver ([`crate::wait`]) over the provider's shared watches, subscribed to their own
//! cluster's objects only. Their outputs carry `rolledNodes`, the Machines created during the
//! wait, from which the bot estimates later rollouts.

use std::sync::Arc;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::apply::apply_error;
use super::cluster::{cluster_resource, kcp_resource, machine_resource, md_resource};
use super::extract::applied_by;
use super::watch::{SharedWatch, Subscription};
use super::{classify, KubeProvider, FIELD_MANAGER};
use crate::wait::{drive, DriveOptions, Observed, Reporter, Source};
use crate::WorkloadTarget;
use tkgops_domain::executor::{ProgressSink, StepContext, StepError};
use tkgops_domain::output::{
    KubeCheckOwnerOutput, KubeDeleteClusterOutput, KubeResizeClusterOutput,
    KubeUpgradeClusterOutput, KubeWaitControlPlaneOutput, KubeWaitMachineDeploymentsOutput,
    PackagesVerifyOutput,
};
use tkgops_domain::step::{
    KubeDeleteInputs, KubeRolloutInputs, MachineShape, ResizeClusterInputs, UpgradeClusterInputs,
};
use tkgops_domain::tkg::TkgVersion;
use tkgops_domain::wait::packages::{ListedPackage, PackagesVerified};
use tkgops_domain::wait::rollout::{
    control_plane_objects_rolled, ClusterDeleted, ControlPlaneRolled, MachineDeploymentsRolled,
    RolloutSnapshot, TOPOLOGY_DEPLOYMENT_LABEL,
};
use tkgops_domain::wait::str_at;
use tkgops_domain::workflow::change::{
    changed_by_upgrade, get, set, spec_changes, unexpected_live, unplanned, ClusterFieldChange,
};
use tkgops_domain::workflow::plan::OWNER_LABEL;

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

/// Runs `kube.upgrade-cluster`: sets `spec.topology.version` of the Cluster to `inputs.tkr`
/// unless it already asks for that TKR or its Kubernetes version, by a server-side apply
/// (field manager [`FIELD_MANAGER`], never forced) of the fields tkgops applied before with the
/// new version. Output [`KubeUpgradeClusterOutput`] (`{"from": "<version before>", "to":
/// "<tkr>", "patched": bool}`; `patched`: whether it wrote).
///
/// Errors: [`StepError::Permanent`] when the Cluster does not exist, is not owned
/// ([`OWNER_LABEL`]) or holds no fields applied by [`FIELD_MANAGER`]; when its
/// `UpdatesAvailable` condition does not list `inputs.tkr`; when another field manager
/// owns `spec.topology.version` (a 409 conflict: someone changed it outside tkgops); when the
/// server-side dry run changes other fields than the version, `spec.paused` and `TKR_DATA`
/// (the Cluster drifted, or the plan was wrong; nothing is written); or when
/// admission refuses the change (a downgrade, a jump of two minors, a TKR that does not
/// resolve: the webhook's message). Others as [`classify`].
pub async fn upgrade_cluster(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &UpgradeClusterInputs,
) -> Result<KubeUpgradeClusterOutput, StepError> {
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
        return Ok(KubeUpgradeClusterOutput {
            from,
            to: inputs.tkr.clone(),
            patched: false,
        });
    }
    if let Some(refusal) = not_an_available_update(&current, &inputs.tkr) {
        return Err(StepError::Permanent(format!("{what}: {refusal}")));
    }
    let mut config = applied_config(&current, t, &what)?;
    config["spec"]["topology"]["version"] = json!(inputs.tkr);
    let refused = |e: kube::Error| match apply_error(&what, &e) {
        StepError::Permanent(m) => StepError::Permanent(format!(
            "management cluster '{}' refused the upgrade of {what} from {from} to {}: {m}",
            t.management_cluster, inputs.tkr
        )),
        other => other,
    };
    // The dry run must change nothing but what the upgrade itself changes. While the TKR
    // resolver cannot resolve the TKR yet (TKR discovery lags), it is tried again as the CLI
    // tries its patch: every `resolver_retry_interval`, for the release's number of tries.
    let tries = inputs
        .tkg_version
        .unwrap_or(TkgVersion::V2_2)
        .upgrade_patch_tries();
    let interval = provider.wait_options().resolver_retry_interval;
    let dry = retry_unresolved_tkr(interval, tries, &ctx.progress, || {
        apply_cluster(&api, &t.cluster_name, &config, true)
    })
    .await
    .map_err(|(e, tried)| match refused(e) {
        StepError::Permanent(m) if tried > 1 => StepError::Permanent(format!(
            "{m} (tried {tried} times, {} s apart, as TKG {} does)",
            interval.as_secs_f64(),
            inputs.tkg_version.unwrap_or(TkgVersion::V2_2)
        )),
        other => other,
    })?;
    let extra: Vec<String> = spec_changes(&current, &dry)
        .into_iter()
        .filter(|c| !changed_by_upgrade(&c.path))
        .map(|c| format!("- {c}"))
        .collect();
    if !extra.is_empty() {
        return Err(StepError::Permanent(format!(
            "the server-side dry run of the upgrade of {what} from {from} to {} changes more than the version, so nothing was written. It also changes:\n{}\nEither the Cluster drifted from what tkgops applied, or the plan was wrong: plan the change again",
            inputs.tkr,
            extra.join("\n")
        )));
    }
    apply_cluster(&api, &t.cluster_name, &config, false)
        .await
        .map_err(refused)?;
    ctx.progress.report(&format!(
        "spec.topology.version {from} → {}; Cluster API rolls the control plane first",
        inputs.tkr
    ));
    tracing::info!(step = %ctx.step.id, cluster = %t.cluster_name, from = %from, to = %inputs.tkr, "upgrade patched");
    Ok(KubeUpgradeClusterOutput {
        from,
        to: inputs.tkr.clone(),
        patched: true,
    })
}

/// Why `tkr` may not be applied to the Cluster `live` per its `UpdatesAvailable` condition
/// (what `tanzu cluster upgrade` checks first: docs/tkg2-class-based.md §8 "Choosing the target
/// TKR"), or `None` when it may: the condition is `True` and its message `[v1 v2 …]` lists
/// `tkr`, or the Cluster has no such condition (or it is `Unknown`: the CLI then uses the TKR
/// list, which `kube.preflight` checked).
fn not_an_available_update(live: &Value, tkr: &str) -> Option<String> {
    let cond = live
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("UpdatesAvailable"))?;
    let listed = str_at(cond, "/message");
    let updates: Vec<&str> = listed
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split_whitespace()
        .collect();
    match str_at(cond, "/status") {
        "True" if updates.contains(&tkr) => None,
        "True" => Some(format!(
            "TKR {tkr} is not among the Cluster's available updates (UpdatesAvailable: {listed}); TKG offers only newer TKRs of the same or the next Kubernetes minor that resolve for the Cluster"
        )),
        "False" => Some(format!(
            "the Cluster has no available updates (UpdatesAvailable False, reason {}), so TKR {tkr} cannot be applied",
            str_at(cond, "/reason")
        )),
        _ => None,
    }
}

/// Whether `e` is the TKR resolver's refusal of a TKR it cannot resolve (yet): a 403 whose
/// message says "could not resolve TKR/OSImage" (docs/tkg2-class-based.md §4).
fn unresolved_tkr(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("could not resolve TKR"))
}

/// Runs `op` up to `tries` times, `interval` apart, while it fails with the TKR resolver's
/// refusal ([`unresolved_tkr`]); any other outcome ends at once. Each retry is reported on
/// `progress`. Returns `op`'s value, or its last error with the number of tries made.
async fn retry_unresolved_tkr<T, F, Fut>(
    interval: std::time::Duration,
    tries: u32,
    progress: &ProgressSink,
    op: F,
) -> Result<T, (kube::Error, u32)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    use backon::{ConstantBuilder, Retryable};
    let tried = std::sync::atomic::AtomicU32::new(1);
    let policy = ConstantBuilder::default()
        .with_delay(interval)
        .with_max_times(tries.saturating_sub(1) as usize);
    op.retry(policy)
        .sleep(tokio::time::sleep)
        .when(unresolved_tkr)
        .notify(|_, d| {
            let n = tried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            progress.report(&format!(
                "the TKR resolver cannot resolve the TKR yet (try {n} of {tries}); trying again in {} s",
                d.as_secs_f64()
            ));
        })
        .await
        .map_err(|e| (e, tried.load(std::sync::atomic::Ordering::Relaxed)))
}

/// Server-side applies `config` to the Cluster `name` as [`FIELD_MANAGER`], never forced; a
/// server-side dry run when `dry_run`. Returns the Cluster as the API server stored it (or
/// would store it). Errors: the request's, for the caller to word ([`apply_error`]).
async fn apply_cluster(
    api: &Api<DynamicObject>,
    name: &str,
    config: &Value,
    dry_run: bool,
) -> Result<Value, kube::Error> {
    let mut params = PatchParams::apply(FIELD_MANAGER);
    if dry_run {
        params = params.dry_run();
    }
    let stored = api.patch(name, &params, &Patch::Apply(config)).await?;
    Ok(to_value(&stored))
}

/// The apply configuration of a day-2 change of the Cluster `t`: what [`FIELD_MANAGER`] applied
/// before (from the live object's `managedFields`) with `apiVersion`, `kind`, name and
/// namespace. Errors: [`StepError::Permanent`] when tkgops owns no field of it.
fn applied_config(live: &Value, t: &WorkloadTarget, what: &str) -> Result<Value, StepError> {
    let Some(mut config) = applied_by(live, FIELD_MANAGER) else {
        return Err(StepError::Permanent(format!(
            "{what} holds no fields applied by field manager '{FIELD_MANAGER}' (other managers took them, or it was not created by server-side apply): tkgops will not take the Cluster over; apply its configuration with '{FIELD_MANAGER}' first"
        )));
    };
    config["apiVersion"] = json!(cluster_resource().api_version);
    config["kind"] = json!("Cluster");
    config["metadata"]["name"] = json!(t.cluster_name);
    config["metadata"]["namespace"] = json!(t.namespace);
    Ok(config)
}

/// Runs `kube.resize-cluster`: sets the planned machine fields of the Cluster and nothing else.
///
/// 1. The live Cluster must be owned ([`OWNER_LABEL`]) and have, in every planned field, the
///    value the plan was made against or the one it sets (a restart after the write).
/// 2. The apply configuration is what tkgops applied before ([`applied_by`]) with every planned
///    field set; a server-side dry run of it must change exactly the planned fields under
///    `spec`, to the planned values.
/// 3. Only then the same configuration is applied (field manager [`FIELD_MANAGER`], never
///    forced). Nothing is written when the dry run changes nothing (already applied).
///
/// Output [`KubeResizeClusterOutput`]. Errors: [`StepError::Permanent`] when the Cluster is
/// missing or not owned, when a check of 1 or 2 fails (the message lists the fields as the
/// plan has them and as the management cluster has them, and says nothing was written), on a
/// field-manager conflict (another manager changed a machine field), and on admission
/// refusals; others as [`classify`].
pub async fn resize_cluster(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &ResizeClusterInputs,
) -> Result<KubeResizeClusterOutput, StepError> {
    let t = &inputs.target;
    let what = format!("Cluster/{}/{}", t.namespace, t.cluster_name);
    let Some((api, cluster)) = owned_cluster(provider, t, &inputs.owner_label).await? else {
        return Err(StepError::Permanent(format!(
            "{what} not found on management cluster '{}': there is nothing to resize",
            t.management_cluster
        )));
    };
    let live = to_value(&cluster);
    let list = |fs: &[ClusterFieldChange]| -> String {
        fs.iter()
            .map(|f| format!("- {f}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let planned: Vec<ClusterFieldChange> = inputs
        .fields
        .iter()
        .filter(|f| f.changes())
        .cloned()
        .collect();
    let drifted = unexpected_live(&inputs.fields, &live);
    if !drifted.is_empty() {
        return Err(StepError::Permanent(format!(
            "{what} does not have the machine fields this resize was planned against, so nothing was written. On the management cluster (live → planned against):\n{}\nThe plan changes:\n{}\nEither the Cluster was changed outside tkgops, or the plan was made against another state: bring the Cluster back, or plan the change again",
            list(&drifted),
            list(&planned)
        )));
    }
    let mut config = applied_config(&live, t, &what)?;
    for f in &inputs.fields {
        set(&mut config, &f.path, f.to.as_ref(), &live);
    }
    let refused = |e: kube::Error, how: &str| match apply_error(&what, &e) {
        StepError::Permanent(m) => StepError::Permanent(format!(
            "management cluster '{}' refused the {how} of the resize of {what}: {m}",
            t.management_cluster
        )),
        other => other,
    };
    let dry = apply_cluster(&api, &t.cluster_name, &config, true)
        .await
        .map_err(|e| refused(e, "server-side dry run"))?;
    let extra = unplanned(&inputs.fields, &live, &dry);
    if !extra.is_empty() {
        return Err(StepError::Permanent(format!(
            "the server-side dry run of the resize of {what} changes more than the plan, so nothing was written. The dry run also changes:\n{}\nThe plan changes only:\n{}\nEither the Cluster drifted from what tkgops applied, or the plan was wrong: plan the change again",
            list(&extra),
            list(&planned)
        )));
    }
    let pending: Vec<&ClusterFieldChange> = planned
        .iter()
        .filter(|f| get(&live, &f.path) != f.to.as_ref())
        .collect();
    if pending.is_empty() {
        ctx.progress
            .report(&format!("{what} already has every planned machine field"));
        return Ok(KubeResizeClusterOutput {
            applied: false,
            changed: Vec::new(),
        });
    }
    apply_cluster(&api, &t.cluster_name, &config, false)
        .await
        .map_err(|e| refused(e, "server-side apply"))?;
    let changed: Vec<String> = pending.iter().map(|f| f.to_string()).collect();
    ctx.progress.report(&format!(
        "{} machine field(s) applied; Cluster API scales or replaces the machines",
        changed.len()
    ));
    tracing::info!(step = %ctx.step.id, cluster = %t.cluster_name, fields = changed.len(), "resize applied");
    Ok(KubeResizeClusterOutput {
        applied: true,
        changed,
    })
}

/// Where a rollout wait reads its snapshots: the Cluster, the rolling objects
/// (KubeadmControlPlanes or MachineDeployments) and the Machines of one cluster, from the shared
/// watches; for the control plane, also the workload API server's version once everything else
/// is rolled.
struct RolloutSource<'a> {
    provider: &'a KubeProvider,
    target: &'a WorkloadTarget,
    sub: Subscription,
    cluster: Arc<SharedWatch>,
    owned: Arc<SharedWatch>,
    machines: Arc<SharedWatch>,
    /// The Kubernetes version whose rollout is checked against the workload API server
    /// (`kube.wait-control-plane` only).
    api_server_target: Option<String>,
}

impl<'a> RolloutSource<'a> {
    async fn start(
        provider: &'a KubeProvider,
        target: &'a WorkloadTarget,
        owned: kube::discovery::ApiResource,
        api_server_target: Option<String>,
    ) -> Result<RolloutSource<'a>, StepError> {
        let mut s = RolloutSource {
            provider,
            target,
            sub: Subscription::default(),
            cluster: provider
                .management_watch(target, &cluster_resource())
                .await?,
            owned: provider.management_watch(target, &owned).await?,
            machines: provider
                .management_watch(target, &machine_resource())
                .await?,
            api_server_target,
        };
        let (ns, name) = (&target.namespace, &target.cluster_name);
        for w in [s.cluster.clone(), s.owned.clone(), s.machines.clone()] {
            s.sub.key(&w, ns, name);
        }
        Ok(s)
    }

    /// `gitVersion` of the workload API server's `/version`.
    ///
    /// Errors: as [`KubeProvider::workload`]; the request classified as [`classify`].
    async fn api_server_version(&self) -> Result<String, StepError> {
        let t = self.target;
        let wl = self.provider.workload(t).await?;
        let v = wl.client.apiserver_version().await.map_err(|e| {
            classify(
                &format!("workload cluster {} ({})", t.cluster_name, wl.server),
                &e,
            )
        })?;
        Ok(v.git_version)
    }
}

#[async_trait::async_trait]
impl Source for RolloutSource<'_> {
    type Snapshot = RolloutSnapshot;

    async fn observe(
        &mut self,
        progress: &mut Reporter,
    ) -> Result<Observed<RolloutSnapshot>, StepError> {
        let t = self.target;
        let (ns, name) = (&t.namespace, &t.cluster_name);
        self.sub.mark_seen();
        if !self.sub.check(self.provider, t, progress)? {
            return Ok(Observed::NotYet);
        }
        let mut s = RolloutSnapshot {
            cluster: self.cluster.get(ns, name),
            owned: self.owned.of_cluster(ns, name),
            machines: self.machines.of_cluster(ns, name),
            api_server_version: None,
        };
        if let Some(target) = &self.api_server_target {
            if control_plane_objects_rolled(&s, target) {
                s.api_server_version = Some(self.api_server_version().await?);
            }
        }
        Ok(Observed::Snapshot(s))
    }

    async fn changed(&mut self, until: Option<Instant>) {
        self.sub.changed(until).await
    }
}

/// Runs `kube.wait-control-plane` (module docs; judge [`ControlPlaneRolled`]). Output
/// [`KubeWaitControlPlaneOutput`] (`{"version", "replicas", "rolledNodes", "apiServerVersion"}`).
///
/// Errors: [`StepError::Permanent`] when the Cluster or its KubeadmControlPlane is missing, for
/// TKG's aborts ("…: the rollout failed, reason: …", "…: timed out waiting for the rollout to
/// complete") and permanent watch errors; [`StepError::Transient`] after repeated transient
/// watch errors or when the workload API server cannot be reached.
pub async fn wait_control_plane(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &KubeRolloutInputs,
) -> Result<KubeWaitControlPlaneOutput, StepError> {
    let t = &inputs.target;
    let target = &inputs.kubernetes_version;
    let mut source =
        RolloutSource::start(provider, t, kcp_resource(), Some(target.clone())).await?;
    let mut judge = ControlPlaneRolled::new(
        &t.management_cluster,
        &t.namespace,
        &t.cluster_name,
        target,
        provider.wait_options().clone(),
        std::time::Duration::ZERO,
    );
    let out = drive(
        &mut source,
        &mut judge,
        &ctx.progress,
        &DriveOptions::kube(Instant::now()),
    )
    .await?;
    check_shapes(provider, &source, inputs, true).await?;
    Ok(out)
}

/// Runs `kube.wait-machine-deployments` (module docs; judge [`MachineDeploymentsRolled`]).
/// Output [`KubeWaitMachineDeploymentsOutput`] (`{"version", "machineDeployments": {"md-0":
/// "3/3", …}, "rolledNodes"}`).
///
/// Errors: as [`wait_control_plane`]; also [`StepError::Permanent`] when the Cluster has no
/// topology.
pub async fn wait_machine_deployments(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &KubeRolloutInputs,
) -> Result<KubeWaitMachineDeploymentsOutput, StepError> {
    let t = &inputs.target;
    let mut source = RolloutSource::start(provider, t, md_resource(), None).await?;
    let mut judge = MachineDeploymentsRolled::new(
        &t.management_cluster,
        &t.namespace,
        &t.cluster_name,
        &inputs.kubernetes_version,
        provider.wait_options().clone(),
        std::time::Duration::ZERO,
    );
    let out = drive(
        &mut source,
        &mut judge,
        &ctx.progress,
        &DriveOptions::kube(Instant::now()),
    )
    .await?;
    check_shapes(provider, &source, inputs, false).await?;
    Ok(out)
}

/// After a rollout wait: the AWSMachineTemplate of the KubeadmControlPlane (`control_plane`)
/// or of every MachineDeployment has the instance type and root volume the plan asked for
/// (`inputs.machines`; [`tkgops_domain::step::MachineShape`]). The rolled objects come from
/// the wait's shared watch; each template is read once.
///
/// Errors: [`StepError::Permanent`] listing every object whose template differs, or when an
/// object the plan names is missing or has no `infrastructureRef`; request errors as
/// [`classify`].
async fn check_shapes(
    provider: &KubeProvider,
    source: &RolloutSource<'_>,
    inputs: &KubeRolloutInputs,
    control_plane: bool,
) -> Result<(), StepError> {
    let t = &inputs.target;
    let asked: Vec<_> = inputs
        .machines
        .iter()
        .filter(|m| (m.topology == MachineShape::CONTROL_PLANE) == control_plane)
        .collect();
    if asked.is_empty() {
        return Ok(());
    }
    let owned = source.owned.of_cluster(&t.namespace, &t.cluster_name);
    let client = provider
        .management_client_with(&t.management_cluster, t.kubeconfig.as_ref())
        .await?;
    let templates: Api<DynamicObject> =
        Api::namespaced_with(client, &t.namespace, &aws_machine_template_resource());
    let mut wrong = Vec::new();
    for shape in asked {
        let (who, obj) = if control_plane {
            ("KubeadmControlPlane".to_string(), owned.first())
        } else {
            (
                format!("MachineDeployment {}", shape.topology),
                owned.iter().find(|md| {
                    tkgops_domain::wait::label(md, TOPOLOGY_DEPLOYMENT_LABEL) == shape.topology
                }),
            )
        };
        let Some(obj) = obj else {
            wrong.push(format!("{who} is missing"));
            continue;
        };
        let ptr = if control_plane {
            "/spec/machineTemplate/infrastructureRef/name"
        } else {
            "/spec/template/spec/infrastructureRef/name"
        };
        let name = str_at(obj, ptr);
        if name.is_empty() {
            wrong.push(format!("{who} has no infrastructureRef"));
            continue;
        }
        let what = format!("AWSMachineTemplate/{}/{name}", t.namespace);
        let template = templates
            .get(name)
            .await
            .map_err(|e| provider.classify_mgmt(&t.management_cluster, &what, e))?;
        if let Some(m) = shape.mismatch(&who, name, &to_value(&template)) {
            wrong.push(m);
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(StepError::Permanent(format!(
        "Cluster/{}/{} rolled, but not to the machines the plan asked for:\n- {}\nSomething changed the Cluster's topology or its templates outside tkgops: compare the Cluster with the request and plan the change again",
        t.namespace,
        t.cluster_name,
        wrong.join("\n- ")
    )))
}

/// `infrastructure.cluster.x-k8s.io/v1beta1` AWSMachineTemplate: CAPA 2.x stores v1beta2 (the
/// ClusterClass's templates, docs/tkg2-class-based.md §1) and still serves v1beta1, with the
/// same `instanceType` and `rootVolume.size`.
fn aws_machine_template_resource() -> kube::discovery::ApiResource {
    super::custom_resource(
        "infrastructure.cluster.x-k8s.io",
        "v1beta1",
        "AWSMachineTemplate",
        "awsmachinetemplates",
    )
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
) -> Result<KubeCheckOwnerOutput, StepError> {
    let t = &inputs.target;
    let what = format!("Cluster/{}/{}", t.namespace, t.cluster_name);
    match owned_cluster(provider, t, &inputs.owner_label).await? {
        None => {
            ctx.progress.report(&format!(
                "{what} does not exist on management cluster '{}'",
                t.management_cluster
            ));
            Ok(KubeCheckOwnerOutput {
                exists: false,
                uid: None,
                deleting: None,
            })
        }
        Some((_, cluster)) => {
            let uid = cluster.metadata.uid.clone().unwrap_or_default();
            ctx.progress.report(&format!(
                "{what} carries this request's {OWNER_LABEL} label (uid {uid})"
            ));
            Ok(KubeCheckOwnerOutput {
                exists: true,
                uid: Some(uid),
                deleting: Some(cluster.metadata.deletion_timestamp.is_some()),
            })
        }
    }
}

/// Runs `kube.delete-cluster`: deletes the Cluster (once: a Cluster already being deleted is
/// not deleted again) and waits until Cluster API has removed it (its finalizer goes when the
/// machines and AWS resources are gone). The DELETE carries the precondition
/// `preconditions.uid` = the uid of the owned Cluster read by this attempt, so the API server
/// refuses it (409 Conflict) when the Cluster was replaced by a same-named one in between. A
/// Cluster that does not exist is success. Output [`KubeDeleteClusterOutput`]
/// (`{"deleted": bool}`; `false`: it was already gone).
///
/// Errors: [`StepError::Permanent`] when the Cluster is not owned ([`OWNER_LABEL`]) and for
/// permanent watch errors; [`StepError::Transient`] when the uid precondition failed (the next
/// attempt reads the new Cluster and checks its owner again); others as [`classify`].
pub async fn delete_cluster(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &KubeDeleteInputs,
) -> Result<KubeDeleteClusterOutput, StepError> {
    let t = &inputs.target;
    let what = format!("Cluster/{}/{}", t.namespace, t.cluster_name);
    let Some((api, cluster)) = owned_cluster(provider, t, &inputs.owner_label).await? else {
        ctx.progress.report(&format!("{what} is already gone"));
        return Ok(KubeDeleteClusterOutput { deleted: false });
    };
    let Some(uid) = cluster.metadata.uid.clone().filter(|u| !u.is_empty()) else {
        return Err(StepError::Transient(format!(
            "{what} has no metadata.uid; tkgops deletes only with a uid precondition"
        )));
    };
    // Subscribed before the DELETE, so no event of the deletion is missed.
    let mut source = ClusterGoneSource::start(provider, t, api.clone(), uid.clone()).await?;
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
    let mut judge = ClusterDeleted::new(&t.namespace, &t.cluster_name);
    drive(
        &mut source,
        &mut judge,
        &ctx.progress,
        &DriveOptions::kube(Instant::now()),
    )
    .await?;
    Ok(KubeDeleteClusterOutput { deleted: true })
}

/// Where the wait of `kube.delete-cluster` reads its snapshots: the Cluster with the deleted
/// uid in the shared watch; when the watch no longer has it, one GET confirms it is gone.
struct ClusterGoneSource<'a> {
    provider: &'a KubeProvider,
    target: &'a WorkloadTarget,
    api: Api<DynamicObject>,
    uid: String,
    sub: Subscription,
    watch: Arc<SharedWatch>,
}

impl<'a> ClusterGoneSource<'a> {
    async fn start(
        provider: &'a KubeProvider,
        target: &'a WorkloadTarget,
        api: Api<DynamicObject>,
        uid: String,
    ) -> Result<ClusterGoneSource<'a>, StepError> {
        let watch = provider
            .management_watch(target, &cluster_resource())
            .await?;
        let mut sub = Subscription::default();
        sub.key(&watch, &target.namespace, &target.cluster_name);
        Ok(ClusterGoneSource {
            provider,
            target,
            api,
            uid,
            sub,
            watch,
        })
    }
}

#[async_trait::async_trait]
impl Source for ClusterGoneSource<'_> {
    type Snapshot = Option<Arc<Value>>;

    async fn observe(
        &mut self,
        progress: &mut Reporter,
    ) -> Result<Observed<Option<Arc<Value>>>, StepError> {
        let t = self.target;
        self.sub.mark_seen();
        if !self.sub.check(self.provider, t, progress)? {
            return Ok(Observed::NotYet);
        }
        let ours = |v: &Value| str_at(v, "/metadata/uid") == self.uid;
        if let Some(o) = self.watch.get(&t.namespace, &t.cluster_name) {
            if ours(&o) {
                return Ok(Observed::Snapshot(Some(o)));
            }
        }
        // Gone from the store: confirm with one GET.
        match self.api.get_opt(&t.cluster_name).await {
            Ok(Some(o)) if o.metadata.uid.as_deref() == Some(self.uid.as_str()) => {
                Ok(Observed::Snapshot(Some(Arc::new(to_value(&o)))))
            }
            Ok(_) => Ok(Observed::Snapshot(None)),
            Err(e) => Err(self.provider.classify_mgmt(
                &t.management_cluster,
                &format!("Cluster/{}/{}", t.namespace, t.cluster_name),
                e,
            )),
        }
    }

    async fn changed(&mut self, until: Option<Instant>) {
        self.sub.changed(until).await
    }
}

/// Runs `packages.verify`: every PackageInstall of the workload cluster `target` (every
/// namespace: the core packages in `tkg-system` and the user packages) must be
/// `ReconcileSucceeded` for its current generation (docs/tanzu-apis.md §4.3; judge
/// [`PackagesVerified`]). Waits on the shared watch while some still reconcile; a package
/// failing (`ReconcileFailed`) for [`super::WaitOptions::package_timeout`] or until the step's
/// report deadline fails the step. Output [`PackagesVerifyOutput`] (`{"packageInstalls":
/// {"<ns>/<name>": "<version>", …}}`).
///
/// Errors: [`StepError::Permanent`] naming every failing PackageInstall with kapp-controller's
/// `usefulErrorMessage`; errors of [`KubeProvider::workload`] and of the watch.
pub async fn verify_packages(
    provider: &KubeProvider,
    ctx: &StepContext,
    target: &WorkloadTarget,
) -> Result<PackagesVerifyOutput, StepError> {
    use super::packages::package_install_resource;
    let opts = provider.wait_options().clone();
    let start = Instant::now();
    let mut until = opts.package_timeout;
    if let Some(d) = opts.report_after(ctx.step.timeout_secs) {
        until = until.min(d);
    }
    let watch = provider
        .workload_watch(target, &package_install_resource())
        .await?;
    let mut sub = Subscription::default();
    sub.all(&watch);
    let wl = provider.workload(target).await?;
    // The store may lag behind a change made just before the step: judge every PackageInstall
    // at (at least) the generation one LIST saw.
    let listed: Vec<(String, String, i64)> =
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
                    o.metadata.namespace.clone().unwrap_or_default(),
                    o.metadata.name.clone().unwrap_or_default(),
                    o.metadata.generation.unwrap_or(0),
                )
            })
            .collect();
    let mut source = VerifySource {
        provider,
        target,
        sub,
        watch,
        listed,
    };
    let mut judge = PackagesVerified::new(&target.cluster_name, until);
    drive(
        &mut source,
        &mut judge,
        &ctx.progress,
        &DriveOptions::kube(start),
    )
    .await
}

/// Where `packages.verify` reads its snapshots: the listed PackageInstalls in the workload
/// cluster's shared watch.
struct VerifySource<'a> {
    provider: &'a KubeProvider,
    target: &'a WorkloadTarget,
    sub: Subscription,
    watch: Arc<SharedWatch>,
    /// (namespace, name, generation) of each PackageInstall one LIST saw at the start.
    listed: Vec<(String, String, i64)>,
}

#[async_trait::async_trait]
impl Source for VerifySource<'_> {
    type Snapshot = Vec<ListedPackage>;

    async fn observe(
        &mut self,
        progress: &mut Reporter,
    ) -> Result<Observed<Vec<ListedPackage>>, StepError> {
        self.sub.mark_seen();
        if !self.sub.check(self.provider, self.target, progress)? {
            return Ok(Observed::NotYet);
        }
        Ok(Observed::Snapshot(
            self.listed
                .iter()
                .map(|(ns, name, generation)| ListedPackage {
                    id: format!("{ns}/{name}"),
                    generation: *generation,
                    object: self.watch.get(ns, name),
                })
                .collect(),
        ))
    }

    async fn changed(&mut self, until: Option<Instant>) {
        self.sub.changed(until).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(status: &str, reason: &str, message: &str) -> Value {
        json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "UpdatesAvailable", "status": status, "reason": reason, "message": message}
        ]}})
    }

    /// docs/tkg2-class-based.md §8 "Choosing the target TKR": the TKR must be one of the
    /// Cluster's available updates when the Cluster says which they are.
    #[test]
    fn the_target_must_be_an_available_update() {
        let tkr = "v1.25.7+vmware.2-tkg.1";
        let listed = with(
            "True",
            "",
            "[v1.24.11+vmware.1-tkg.1 v1.25.7+vmware.2-tkg.1]",
        );
        assert_eq!(not_an_available_update(&listed, tkr), None);
        let other = with("True", "", "[v1.24.11+vmware.1-tkg.1]");
        let refusal = not_an_available_update(&other, tkr).unwrap();
        assert!(refusal.contains("not among the Cluster's available updates (UpdatesAvailable: [v1.24.11+vmware.1-tkg.1])"), "{refusal}");
        let none = with("False", "AlreadyUpToDate", "");
        assert!(not_an_available_update(&none, tkr)
            .unwrap()
            .contains("reason AlreadyUpToDate"));
        assert_eq!(
            not_an_available_update(&with("Unknown", "CannotParseTKR", ""), tkr),
            None
        );
        assert_eq!(not_an_available_update(&json!({"status": {}}), tkr), None);
    }

    fn denial(message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(403)
                .boxed(),
        )
    }

    fn recorder() -> (ProgressSink, Arc<std::sync::Mutex<Vec<String>>>) {
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = {
            let lines = lines.clone();
            ProgressSink::new(move |l| lines.lock().unwrap().push(l.to_string()))
        };
        (sink, lines)
    }

    const UNRESOLVED: &str = "admission webhook \"tkr-resolver-cluster-webhook.tanzu.vmware.com\" denied the request: could not resolve TKR/OSImage for controlPlane, machineDeployments: []";

    #[tokio::test(start_paused = true)]
    async fn an_unresolved_tkr_is_tried_again_until_it_resolves() {
        let (sink, lines) = recorder();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let started = Instant::now();
        let out = retry_unresolved_tkr(std::time::Duration::from_secs(30), 10, &sink, || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Err(denial(UNRESOLVED)),
                _ => Ok("applied"),
            }
        })
        .await
        .map_err(|(e, n)| format!("{e} after {n}"))
        .unwrap();
        assert_eq!(out, "applied");
        assert_eq!(calls.into_inner(), 3);
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(60));
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("try 1 of 10"), "{lines:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_release_budget_ends_the_tries_and_other_refusals_end_them_at_once() {
        let (sink, _) = recorder();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let tries = TkgVersion::V2_1.upgrade_patch_tries();
        let (e, tried) =
            retry_unresolved_tkr(std::time::Duration::from_secs(30), tries, &sink, || async {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err::<(), _>(denial(UNRESOLVED))
            })
            .await
            .unwrap_err();
        assert!(unresolved_tkr(&e));
        assert_eq!((tried, calls.into_inner()), (10, 10), "2.1: 5 min at 30 s");
        assert_eq!(
            TkgVersion::V2_2.upgrade_patch_tries(),
            60,
            "2.2: 30 min at 30 s"
        );

        let calls = std::sync::atomic::AtomicU32::new(0);
        let (_, tried) = retry_unresolved_tkr(std::time::Duration::from_secs(30), tries, &sink, || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>(denial("admission webhook \"validation.cluster.cluster.x-k8s.io\" denied the request: version cannot be decreased"))
        })
        .await
        .unwrap_err();
        assert_eq!(
            (tried, calls.into_inner()),
            (1, 1),
            "a downgrade is refused for good"
        );
    }
}

//! The typed outputs of every step kind, declared beside each kind's inputs in `step_kinds!`
//! (`crate::step`), and their one-line summaries for the run comment ([`StepOutput::summary`]).
//!
//! An executor returns its kind's output type; the engine journals it as JSON (object keys
//! sorted) and passes it to later steps as `StepContext::outputs`; the bot reads it back with
//! [`StepKind::output_summary`](crate::step::StepKind::output_summary) for the Details column of
//! the run comment's step table. Every output is secret-free: it is stored in the journal and
//! shown on the pull request.
//!
//! The JSON shapes are part of the journal's format: field names are camelCase, optional fields
//! are absent or `null` exactly as documented on each field, and they must not change without a
//! migration of stored runs.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::step::StepKind;

/// The output of one step kind: what its executor returns, the journal stores as JSON and the
/// run comment summarises.
pub trait StepOutput: Serialize + DeserializeOwned + Send {
    /// A one-line, secret-free summary for the Details column of the run comment's step table
    /// (Markdown-escaped by the caller), e.g. `3 object(s) applied`.
    fn summary(&self) -> String;
}

/// A journalled output that does not deserialize into its kind's output type: written by a
/// test double scripting raw JSON, or by a tkgops whose output of that kind had another shape.
#[derive(Debug, thiserror::Error)]
#[error("the output of step kind {kind} does not have its type's shape: {source}")]
pub struct OutputMismatch {
    /// The step kind whose output type was expected.
    pub kind: StepKind,
    /// serde_json's error, naming the missing or mistyped field.
    #[source]
    pub source: serde_json::Error,
}

/// Output of `aws.preflight`, from the EC2 calls of the checks (`DescribeRegions`,
/// `DescribeAvailabilityZones`, `DescribeInstanceTypeOfferings`, `DescribeVpcs`,
/// `DescribeSubnets`, `CreateTags`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsPreflightOutput {
    /// The checked region (the inputs' TKG `AWS_REGION`), e.g. `us-west-2`.
    pub region: String,
    /// The existing VPC's id (TKG `AWS_VPC_ID`), or `None` (`null`) for a new VPC Cluster API
    /// creates.
    pub vpc_id: Option<String>,
    /// The checked availability zones, as requested (TKG `AWS_NODE_AZ*`).
    pub azs: Vec<String>,
    /// The checked instance types, deduplicated, in request order.
    pub instance_types: Vec<String>,
    /// Subnet ids of the existing VPC that received at least one tag in this attempt.
    pub tagged_subnets: Vec<String>,
    /// Subnet ids of the existing VPC that already carried every required tag.
    pub already_tagged: Vec<String>,
}

impl StepOutput for AwsPreflightOutput {
    /// `VPC vpc-0abc; 3 subnet(s) tagged, 0 already tagged` (`new VPC; …` without one).
    fn summary(&self) -> String {
        let vpc = match self.vpc_id.as_deref() {
            None | Some("") => "new VPC".to_string(),
            Some(id) => format!("VPC {id}"),
        };
        format!(
            "{vpc}; {} subnet(s) tagged, {} already tagged",
            self.tagged_subnets.len(),
            self.already_tagged.len()
        )
    }
}

/// Output of `kube.preflight`, read from the management cluster (docs/tkg2-class-based.md §1,
/// §7, §8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubePreflightOutput {
    /// The TKG release the management cluster runs: its `TKGVERSION` annotation, e.g. `v2.2.0`.
    pub tkg_version: String,
    /// The ClusterClass found in the Cluster's namespace, e.g. `tkg-aws-default-v1.0.0`.
    pub cluster_class: String,
    /// The TKR version found `Compatible=True`, e.g. `v1.25.7+vmware.2-tkg.1`.
    pub tkr: String,
    /// What the identity check found: `pinniped-info` (the `kube-public/pinniped-info`
    /// ConfigMap, for `oidc` and `ldap`) or `none`.
    pub identity: String,
}

impl StepOutput for KubePreflightOutput {
    /// `TKG v2.2.0, ClusterClass tkg-aws-default-v1.0.0, TKR v1.25.7+vmware.2-tkg.1 compatible`.
    fn summary(&self) -> String {
        format!(
            "TKG {}, ClusterClass {}, TKR {} compatible",
            self.tkg_version, self.cluster_class, self.tkr
        )
    }
}

/// Output of `kube.apply`: what the management cluster's API server accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeApplyOutput {
    /// `Kind/namespace/name` (cluster-scoped: `Kind/name`) of each server-side applied object,
    /// in apply order.
    pub applied: Vec<String>,
}

impl StepOutput for KubeApplyOutput {
    /// `1 object(s) applied`.
    fn summary(&self) -> String {
        format!("{} object(s) applied", self.applied.len())
    }
}

/// Output of `kube.wait-cluster`: the Cluster as TKG's readiness wait last saw it (§6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeWaitClusterOutput {
    /// The Cluster's `status.phase`, e.g. `Provisioned` (`Unknown` when unset).
    pub phase: String,
    /// `<readyReplicas>/<spec.replicas>` summed over the KubeadmControlPlanes, e.g. `3/3`.
    pub control_plane: String,
    /// MachineDeployment name → `<readyReplicas>/<spec.replicas>`, e.g. `"wc1-md-0-4tq8w":
    /// "1/1"`.
    pub machine_deployments: BTreeMap<String, String>,
    /// `<Machines with status.nodeRef>/<Machines>` of the cluster, e.g. `6/6`.
    pub node_refs: String,
    /// Core PackageInstall name → `Reconcile succeeded` (from the ClusterBootstrap); absent for
    /// a plan-based Cluster (no ClusterBootstrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<BTreeMap<String, String>>,
}

impl StepOutput for KubeWaitClusterOutput {
    /// `phase Provisioned, control plane 3/3`.
    fn summary(&self) -> String {
        format!("phase {}, control plane {}", self.phase, self.control_plane)
    }
}

/// Output of `kube.read-kubeconfig`: where the workload kubeconfig came from and what the
/// workload API server answered (no secret material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeReadKubeconfigOutput {
    /// The management-cluster Secret the kubeconfig came from, `<namespace>/<cluster>-kubeconfig`.
    pub secret: String,
    /// The workload API server URL (the kubeconfig's current context).
    pub server: String,
    /// The workload API server's `/version` `gitVersion`, e.g. `v1.25.7+vmware.2`.
    pub kubernetes_version: String,
}

impl StepOutput for KubeReadKubeconfigOutput {
    /// `workload API server answers (Kubernetes v1.25.7+vmware.2)`.
    fn summary(&self) -> String {
        format!(
            "workload API server answers (Kubernetes {})",
            self.kubernetes_version
        )
    }
}

/// Output of `tmc.attach`: the TMC cluster once attached (docs/tanzu-apis.md §3.5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TmcAttachOutput {
    /// The TMC cluster's `meta.uid`, or `None` (`null`) when TMC gave none.
    pub uid: Option<String>,
    /// `status.phase`, e.g. `READY` (`PHASE_UNSPECIFIED` when absent).
    pub phase: String,
    /// `status.health`, e.g. `HEALTHY` (`HEALTH_UNSPECIFIED` when absent).
    pub health: String,
    /// `spec.clusterGroupName` (the requested group, else `default`, when TMC answers none).
    pub cluster_group: String,
    /// Whether this attempt applied the agent installer manifest to the workload cluster.
    pub installer_applied: bool,
    /// What this attempt converged on an existing TMC cluster, in order: `clusterGroup`,
    /// `description`, `labels`.
    pub updated: Vec<String>,
}

impl StepOutput for TmcAttachOutput {
    /// `TMC phase READY, health HEALTHY`.
    fn summary(&self) -> String {
        format!("TMC phase {}, health {}", self.phase, self.health)
    }
}

/// One package of `packages.rollout`, reconciled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconciledPackage {
    /// The PackageInstall's name (the request's package name), e.g. `contour`.
    pub name: String,
    /// The PackageInstall's namespace, e.g. `tanzu-system-ingress`.
    pub namespace: String,
    /// The version asked for (`spec.packageRef.versionSelection.constraints`), e.g.
    /// `1.20.2+vmware.1-tkg.1`.
    pub version: String,
    /// kapp-controller's `status.friendlyDescription` at the end, e.g. `Reconcile succeeded`.
    pub status: String,
}

/// Output of `packages.rollout`: the packages installed, in install (dependency) order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackagesRolloutOutput {
    /// Every package of the inputs, reconciled.
    pub packages: Vec<ReconciledPackage>,
}

impl StepOutput for PackagesRolloutOutput {
    /// `cert-manager 1.7.2+vmware.1-tkg.1, contour 1.20.2+vmware.1-tkg.1: Reconcile succeeded`.
    fn summary(&self) -> String {
        self.packages
            .iter()
            .map(|p| format!("{} {}", p.name, p.version))
            .collect::<Vec<_>>()
            .join(", ")
            + ": Reconcile succeeded"
    }
}

/// Output of `kube.upgrade-cluster`: the Cluster's `spec.topology.version` change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeUpgradeClusterOutput {
    /// `spec.topology.version` before the step, e.g. `v1.24.11+vmware.1`.
    pub from: String,
    /// The TKR version asked for (the inputs' `tkr`), e.g. `v1.25.7+vmware.2-tkg.1`.
    pub to: String,
    /// Whether this attempt applied the new version to the Cluster (`false`: it already asked
    /// for `to`).
    pub patched: bool,
}

impl StepOutput for KubeUpgradeClusterOutput {
    /// `spec.topology.version v1.24.11+vmware.1 → v1.25.7+vmware.2-tkg.1`, or
    /// `already at v1.25.7+vmware.2-tkg.1 (not patched again)`.
    fn summary(&self) -> String {
        if self.patched {
            format!("spec.topology.version {} → {}", self.from, self.to)
        } else {
            format!("already at {} (not patched again)", self.to)
        }
    }
}

/// Output of `kube.resize-cluster`: the machine fields the resize changed on the Cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeResizeClusterOutput {
    /// Whether this attempt wrote the Cluster (`false`: the live Cluster already had every
    /// planned value, e.g. after a restart that followed the write).
    pub applied: bool,
    /// The fields changed, `path: from → to`
    /// (e.g. `spec.topology.workers.machineDeployments[md-0].replicas: 1 → 2`).
    pub changed: Vec<String>,
}

impl StepOutput for KubeResizeClusterOutput {
    /// `2 field(s) applied: spec.topology.workers.machineDeployments[md-0].replicas: 1 → 2; …`
    /// or `already applied (not written again)`.
    fn summary(&self) -> String {
        if self.applied {
            format!(
                "{} field(s) applied: {}",
                self.changed.len(),
                self.changed.join("; ")
            )
        } else {
            "already applied (not written again)".into()
        }
    }
}

/// Output of `kube.wait-control-plane`: the KubeadmControlPlane rolled (§8 "Wait").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeWaitControlPlaneOutput {
    /// The Kubernetes version every replica runs (the inputs' `kubernetesVersion`).
    pub version: String,
    /// The KubeadmControlPlane's `spec.replicas`.
    pub replicas: i64,
    /// Control-plane Machines at `version` that were not there when the wait started: the
    /// machines this rollout replaced (what the plan's time estimate learns from).
    pub rolled_nodes: u64,
    /// The workload API server's `/version` `gitVersion` at the end.
    pub api_server_version: String,
}

impl StepOutput for KubeWaitControlPlaneOutput {
    /// `v1.25.7+vmware.2 on 3 replica(s), API server reports v1.25.7+vmware.2; 3 node(s) rolled`.
    fn summary(&self) -> String {
        format!(
            "{} on {} replica(s), API server reports {}; {} node(s) rolled",
            self.version, self.replicas, self.api_server_version, self.rolled_nodes
        )
    }
}

/// Output of `kube.wait-machine-deployments`: every MachineDeployment rolled (§8 "Wait").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeWaitMachineDeploymentsOutput {
    /// The Kubernetes version every worker runs (the inputs' `kubernetesVersion`).
    pub version: String,
    /// Topology MachineDeployment name (`spec.topology.workers.machineDeployments[].name`,
    /// e.g. `md-0`) → `<readyReplicas>/<spec.replicas>`.
    pub machine_deployments: BTreeMap<String, String>,
    /// Worker Machines at `version` that were not there when the wait started.
    pub rolled_nodes: u64,
}

impl StepOutput for KubeWaitMachineDeploymentsOutput {
    /// `md-0 2/2, md-1 2/2 at v1.25.7+vmware.2; 4 node(s) rolled`.
    fn summary(&self) -> String {
        let mds: Vec<String> = self
            .machine_deployments
            .iter()
            .map(|(name, replicas)| format!("{name} {replicas}"))
            .collect();
        format!(
            "{} at {}; {} node(s) rolled",
            mds.join(", "),
            self.version,
            self.rolled_nodes
        )
    }
}

/// A package of `packages.update` installed or left unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageVersion {
    /// The PackageInstall's name.
    pub name: String,
    /// The PackageInstall's namespace.
    pub namespace: String,
    /// The version asked for (`spec.packageRef.versionSelection.constraints`).
    pub version: String,
}

/// A package of `packages.update` whose version or values changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdatedPackage {
    /// The PackageInstall's name.
    pub name: String,
    /// The PackageInstall's namespace.
    pub namespace: String,
    /// The version the PackageInstall asked for before the step.
    pub from: String,
    /// The version asked for now (equal to `from` for a values-only change).
    pub to: String,
    /// Whether the values Secret changed.
    pub values_changed: bool,
}

/// A package `packages.update` removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovedPackage {
    /// The PackageInstall's name.
    pub name: String,
    /// The PackageInstall's namespace.
    pub namespace: String,
    /// `removed` (uninstalled by kapp-controller in this attempt) or `already absent`.
    pub status: String,
}

/// Output of `packages.update`: what changed, package by package (docs/tanzu-apis.md §4.2, §4.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackagesUpdateOutput {
    /// Packages installed by this step, in install order.
    pub installed: Vec<PackageVersion>,
    /// Packages whose version or values changed, in install order.
    pub updated: Vec<UpdatedPackage>,
    /// Packages already as asked (the apply was a no-op), in install order.
    pub unchanged: Vec<PackageVersion>,
    /// Packages removed, in removal order (dependents first).
    pub removed: Vec<RemovedPackage>,
}

impl StepOutput for PackagesUpdateOutput {
    /// `installed fluent-bit; updated contour; removed harbor` (the parts that apply), or
    /// `nothing to change`.
    fn summary(&self) -> String {
        let parts: Vec<String> = [
            (
                "installed",
                self.installed
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>(),
            ),
            (
                "updated",
                self.updated.iter().map(|p| p.name.as_str()).collect(),
            ),
            (
                "removed",
                self.removed.iter().map(|p| p.name.as_str()).collect(),
            ),
        ]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| format!("{what} {}", names.join(", ")))
        .collect();
        if parts.is_empty() {
            "nothing to change".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Output of `packages.verify`: every PackageInstall of the workload cluster reconciled
/// (docs/tanzu-apis.md §4.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackagesVerifyOutput {
    /// `<namespace>/<name>` → version: `status.version`, else the version constraint
    /// (`spec.packageRef.versionSelection.constraints`).
    pub package_installs: BTreeMap<String, String>,
}

impl StepOutput for PackagesVerifyOutput {
    /// `4 PackageInstall(s) reconciled`.
    fn summary(&self) -> String {
        format!(
            "{} PackageInstall(s) reconciled",
            self.package_installs.len()
        )
    }
}

/// Output of `tmc.detach` (docs/tanzu-apis.md §3.5 step 5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TmcDetachOutput {
    /// The TMC full name, `<managementClusterName>/<provisionerName>/<name>`, e.g.
    /// `attached/attached/team-a-prod`.
    pub cluster: String,
    /// `false` when the TMC cluster was already gone (nothing was detached).
    pub was_attached: bool,
    /// Whether the `force=true` delete was needed after the detach timeout.
    pub forced: bool,
}

impl StepOutput for TmcDetachOutput {
    /// `detached`, `detached (forced after the timeout)` or `was not attached`.
    fn summary(&self) -> String {
        if !self.was_attached {
            "was not attached".into()
        } else if self.forced {
            "detached (forced after the timeout)".into()
        } else {
            "detached".into()
        }
    }
}

/// Output of `kube.check-owner` (security rule 7): `{"exists": false}` when there is no
/// Cluster, `{"exists": true, "uid": "…", "deleting": bool}` for an owned one (an unowned one
/// fails the step).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeCheckOwnerOutput {
    /// Whether the Cluster exists on the management cluster.
    pub exists: bool,
    /// The owned Cluster's `metadata.uid` (empty when the API server gave none); absent when
    /// it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Whether the owned Cluster has a `metadata.deletionTimestamp`; absent when it does not
    /// exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleting: Option<bool>,
}

impl StepOutput for KubeCheckOwnerOutput {
    /// `the Cluster is this request's`, or `no such Cluster (already gone)`.
    fn summary(&self) -> String {
        if self.exists {
            "the Cluster is this request's".into()
        } else {
            "no such Cluster (already gone)".into()
        }
    }
}

/// Output of `kube.delete-cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeDeleteClusterOutput {
    /// `true` when the Cluster existed and Cluster API has removed it; `false` when it was
    /// already gone.
    pub deleted: bool,
}

impl StepOutput for KubeDeleteClusterOutput {
    /// `Cluster deleted and gone`, or `no such Cluster (already gone)`.
    fn summary(&self) -> String {
        if self.deleted {
            "Cluster deleted and gone".into()
        } else {
            "no such Cluster (already gone)".into()
        }
    }
}

/// Output of `aws.remove-subnet-tags` (reference R7), from EC2 `DescribeSubnets` and
/// `DeleteTags`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsRemoveSubnetTagsOutput {
    /// The region (the inputs' TKG `AWS_REGION`).
    pub region: String,
    /// The existing VPC's id, or `None` (`null`) for a VPC Cluster API created (nothing to do).
    pub vpc_id: Option<String>,
    /// The removed tag key, `kubernetes.io/cluster/<cluster_name>`.
    pub tag_key: String,
    /// Subnet ids the key was removed from in this attempt.
    pub untagged_subnets: Vec<String>,
    /// Subnet ids of the inputs that did not carry the key.
    pub already_untagged: Vec<String>,
    /// Subnet ids of the inputs that no longer exist, or are not in the VPC: left alone.
    pub missing_subnets: Vec<String>,
    /// One sentence on what happened, for the PR comment.
    pub note: String,
}

impl StepOutput for AwsRemoveSubnetTagsOutput {
    /// The [`Self::note`].
    fn summary(&self) -> String {
        self.note.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// One fixture per step kind, shaped as the executors' `json!` calls wrote it before the
    /// outputs were typed (and as journals hold it), with the summary the run comment shows.
    fn fixtures() -> Vec<(StepKind, Value, &'static str)> {
        vec![
            (
                StepKind::AwsPreflight,
                json!({"region": "us-west-2", "vpcId": "vpc-0abc", "azs": ["us-west-2a", "us-west-2b", "us-west-2c"],
                       "instanceTypes": ["m5.xlarge", "t3.large"],
                       "taggedSubnets": ["subnet-1", "subnet-2", "subnet-3"], "alreadyTagged": []}),
                "VPC vpc-0abc; 3 subnet(s) tagged, 0 already tagged",
            ),
            (
                StepKind::AwsPreflight,
                json!({"region": "us-west-2", "vpcId": null, "azs": ["us-west-2a"],
                       "instanceTypes": ["t3.large"], "taggedSubnets": [], "alreadyTagged": []}),
                "new VPC; 0 subnet(s) tagged, 0 already tagged",
            ),
            (
                StepKind::KubePreflight,
                json!({"tkgVersion": "v2.2.0", "clusterClass": "tkg-aws-default-v1.0.0",
                       "tkr": "v1.25.7+vmware.2-tkg.1", "identity": "none"}),
                "TKG v2.2.0, ClusterClass tkg-aws-default-v1.0.0, TKR v1.25.7+vmware.2-tkg.1 compatible",
            ),
            (
                StepKind::KubeApply,
                json!({"applied": ["Cluster/default/team-a-prod"]}),
                "1 object(s) applied",
            ),
            (
                StepKind::KubeWaitCluster,
                json!({"phase": "Provisioned", "controlPlane": "3/3",
                       "machineDeployments": {"wc1-md-0-4tq8w": "1/1", "wc1-md-1-x": "1/1"},
                       "nodeRefs": "5/5",
                       "packages": {"wc1-antrea": "Reconcile succeeded", "wc1-kapp-controller": "Reconcile succeeded"}}),
                "phase Provisioned, control plane 3/3",
            ),
            (
                StepKind::KubeWaitCluster,
                json!({"phase": "Provisioned", "controlPlane": "1/1",
                       "machineDeployments": {"legacy-md-0": "2/2"}, "nodeRefs": "3/3"}),
                "phase Provisioned, control plane 1/1",
            ),
            (
                StepKind::KubeReadKubeconfig,
                json!({"secret": "default/wc1-kubeconfig", "server": "https://10.0.0.1:6443",
                       "kubernetesVersion": "v1.25.7+vmware.2"}),
                "workload API server answers (Kubernetes v1.25.7+vmware.2)",
            ),
            (
                StepKind::TmcAttach,
                json!({"uid": "c:01H", "phase": "READY", "health": "HEALTHY", "clusterGroup": "team-a",
                       "installerApplied": true, "updated": []}),
                "TMC phase READY, health HEALTHY",
            ),
            (
                StepKind::TmcAttach,
                json!({"uid": null, "phase": "READY", "health": "HEALTHY", "clusterGroup": "default",
                       "installerApplied": false, "updated": ["clusterGroup", "labels"]}),
                "TMC phase READY, health HEALTHY",
            ),
            (
                StepKind::PackagesRollout,
                json!({"packages": [
                    {"name": "cert-manager", "namespace": "cert-manager", "version": "1.7.2+vmware.1-tkg.1", "status": "Reconcile succeeded"},
                    {"name": "contour", "namespace": "tanzu-system-ingress", "version": "1.20.2+vmware.1-tkg.1", "status": "Reconcile succeeded"}]}),
                "cert-manager 1.7.2+vmware.1-tkg.1, contour 1.20.2+vmware.1-tkg.1: Reconcile succeeded",
            ),
            (
                StepKind::KubeUpgradeCluster,
                json!({"from": "v1.24.11+vmware.1", "to": "v1.25.7+vmware.2-tkg.1", "patched": true}),
                "spec.topology.version v1.24.11+vmware.1 → v1.25.7+vmware.2-tkg.1",
            ),
            (
                StepKind::KubeUpgradeCluster,
                json!({"from": "v1.25.7+vmware.2-tkg.1", "to": "v1.25.7+vmware.2-tkg.1", "patched": false}),
                "already at v1.25.7+vmware.2-tkg.1 (not patched again)",
            ),
            (
                StepKind::KubeWaitControlPlane,
                json!({"version": "v1.25.7+vmware.2", "replicas": 3, "rolledNodes": 3,
                       "apiServerVersion": "v1.25.7+vmware.2"}),
                "v1.25.7+vmware.2 on 3 replica(s), API server reports v1.25.7+vmware.2; 3 node(s) rolled",
            ),
            (
                StepKind::KubeWaitMachineDeployments,
                json!({"version": "v1.25.7+vmware.2",
                       "machineDeployments": {"md-1": "2/2", "md-0": "2/2", "md-2": "2/2"}, "rolledNodes": 6}),
                "md-0 2/2, md-1 2/2, md-2 2/2 at v1.25.7+vmware.2; 6 node(s) rolled",
            ),
            (
                StepKind::PackagesUpdate,
                json!({"installed": [{"name": "fluent-bit", "namespace": "tanzu-system-logging", "version": "1.8.15+vmware.1-tkg.1"}],
                       "updated": [], "unchanged": [{"name": "contour", "namespace": "tanzu-system-ingress", "version": "1.20.2+vmware.1-tkg.1"}],
                       "removed": []}),
                "installed fluent-bit",
            ),
            (
                StepKind::PackagesUpdate,
                json!({"installed": [{"name": "fluent-bit", "namespace": "l", "version": "1"}],
                       "updated": [{"name": "contour", "namespace": "i", "from": "1.20", "to": "1.21", "valuesChanged": false},
                                   {"name": "grafana", "namespace": "g", "from": "7", "to": "7", "valuesChanged": true}],
                       "unchanged": [],
                       "removed": [{"name": "harbor", "namespace": "h", "status": "removed"},
                                   {"name": "prometheus", "namespace": "p", "status": "already absent"}]}),
                "installed fluent-bit; updated contour, grafana; removed harbor, prometheus",
            ),
            (
                StepKind::PackagesUpdate,
                json!({"installed": [], "updated": [], "unchanged": [], "removed": []}),
                "nothing to change",
            ),
            (
                StepKind::PackagesVerify,
                json!({"packageInstalls": {"tkg-system/wc1-antrea": "1.7.2+vmware.1-tkg.1",
                                           "tanzu-system-ingress/contour": "1.20.2+vmware.1-tkg.1"}}),
                "2 PackageInstall(s) reconciled",
            ),
            (
                StepKind::TmcDetach,
                json!({"cluster": "attached/attached/wl", "wasAttached": true, "forced": false}),
                "detached",
            ),
            (
                StepKind::TmcDetach,
                json!({"cluster": "attached/attached/wl", "wasAttached": true, "forced": true}),
                "detached (forced after the timeout)",
            ),
            (
                StepKind::TmcDetach,
                json!({"cluster": "attached/attached/wl", "wasAttached": false, "forced": false}),
                "was not attached",
            ),
            (
                StepKind::KubeResizeCluster,
                json!({"applied": true, "changed": ["spec.topology.workers.machineDeployments[md-0].replicas: 1 → 2"]}),
                "1 field(s) applied: spec.topology.workers.machineDeployments[md-0].replicas: 1 → 2",
            ),
            (
                StepKind::KubeResizeCluster,
                json!({"applied": false, "changed": []}),
                "already applied (not written again)",
            ),
            (
                StepKind::KubeCheckOwner,
                json!({"exists": true, "uid": "4f7c", "deleting": false}),
                "the Cluster is this request's",
            ),
            (
                StepKind::KubeCheckOwner,
                json!({"exists": false}),
                "no such Cluster (already gone)",
            ),
            (
                StepKind::KubeDeleteCluster,
                json!({"deleted": true}),
                "Cluster deleted and gone",
            ),
            (
                StepKind::KubeDeleteCluster,
                json!({"deleted": false}),
                "no such Cluster (already gone)",
            ),
            (
                StepKind::AwsRemoveSubnetTags,
                json!({"region": "us-west-2", "vpcId": "vpc-0abc", "tagKey": "kubernetes.io/cluster/team-a-prod",
                       "untaggedSubnets": ["subnet-1", "subnet-2", "subnet-3"], "alreadyUntagged": [], "missingSubnets": [],
                       "note": "removed kubernetes.io/cluster/team-a-prod from 3 subnet(s), 0 already without it, 0 missing; the kubernetes.io/role/* tags stay for the other clusters of VPC vpc-0abc"}),
                "removed kubernetes.io/cluster/team-a-prod from 3 subnet(s), 0 already without it, 0 missing; the kubernetes.io/role/* tags stay for the other clusters of VPC vpc-0abc",
            ),
            (
                StepKind::AwsRemoveSubnetTags,
                json!({"region": "us-west-2", "vpcId": null, "tagKey": "kubernetes.io/cluster/c",
                       "untaggedSubnets": [], "alreadyUntagged": [], "missingSubnets": [], "note": "new VPC"}),
                "new VPC",
            ),
        ]
    }

    #[test]
    fn every_kind_has_a_fixture() {
        let covered: std::collections::BTreeSet<StepKind> =
            fixtures().into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(covered.len(), StepKind::ALL.len());
    }

    #[test]
    fn journalled_outputs_read_back_with_the_same_summary() {
        for (kind, json, summary) in fixtures() {
            assert_eq!(
                kind.output_summary(&json).unwrap_or_else(|e| panic!("{e}")),
                summary,
                "{kind}"
            );
        }
    }

    #[test]
    fn typed_outputs_write_the_journalled_json_exactly() {
        for (kind, json, _) in fixtures() {
            assert_eq!(
                kind.output_round_trip(&json)
                    .unwrap_or_else(|e| panic!("{e}")),
                json,
                "{kind}"
            );
        }
    }

    #[test]
    fn an_output_of_another_shape_is_an_error_naming_the_kind() {
        let err = StepKind::KubeApply
            .output_summary(&json!({"step": "s1"}))
            .unwrap_err();
        assert_eq!(err.kind, StepKind::KubeApply);
        assert!(err.to_string().contains("kube.apply"), "{err}");
    }
}

//! The step contract: every step kind ([`StepKind`], defined once in `step_kinds!`), the typed
//! inputs of each kind ([`StepInputs`]), built at plan time from the validated request, its typed
//! output ([`crate::output`]), the routing table of its executors ([`ExecutorTable`],
//! [`dispatch`]), and the step as the engine persists and the providers execute it
//! ([`StepSpec`], [`RetryPolicy`]).
//!
//! Inputs are secret-free by construction: they are shown on the pull request and stored in the
//! journal. Secrets (workload kubeconfigs, API tokens) are read by the executors at run time.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::executor::{StepContext, StepError};
use crate::output::*;
use crate::request::{PackageRepositoryRef, PackageSpec, SubnetSpec, VpcSpec};

/// Defines, from one list, [`StepKind`], [`StepInputs`], each kind's output type
/// ([`StepKind::output_summary`]) and the executor routing table ([`ExecutorTable`] and
/// [`dispatch`]). One line per kind: variant, wire name (the `kind:` of the workflow files), the
/// [`ExecutorTable`] method that executes it, its inputs type and its output type
/// ([`crate::output`]), with its documentation. Adding a step kind is adding one line here, and
/// an executor method to every table (a table without it does not compile).
macro_rules! step_kinds {
    ($( $(#[doc = $doc:literal])*
        $variant:ident = $name:literal => fn $method:ident($inputs:ty) -> $output:ty, )+) => {
        /// A kind of step: what its inputs and its output are, and which method of the
        /// [`ExecutorTable`] executes it. Written in the workflow files as its wire name (e.g.
        /// `kube.apply`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum StepKind {
            $( $(#[doc = $doc])* #[serde(rename = $name)] $variant, )+
        }

        impl StepKind {
            /// Every step kind, in definition order.
            pub const ALL: &'static [StepKind] = &[$(StepKind::$variant),+];

            /// The wire name (e.g. `kube.apply`), as in the workflow files and the journal.
            pub fn as_str(self) -> &'static str {
                match self { $(StepKind::$variant => $name,)+ }
            }

            /// The run comment's one-line summary of `output`, a journalled output of this
            /// kind: `output` read as the kind's output type, then [`StepOutput::summary`].
            ///
            /// Errors: [`OutputMismatch`] when `output` does not have the type's shape.
            pub fn output_summary(
                self,
                output: &serde_json::Value,
            ) -> Result<String, OutputMismatch> {
                match self {
                    $(StepKind::$variant => {
                        read_output::<$output>(self, output).map(|o| o.summary())
                    })+
                }
            }

            /// `output` read as this kind's output type and written back as JSON (tests: the
            /// typed outputs keep the journal's format).
            #[cfg(test)]
            pub(crate) fn output_round_trip(
                self,
                output: &serde_json::Value,
            ) -> Result<serde_json::Value, OutputMismatch> {
                match self {
                    $(StepKind::$variant => read_output::<$output>(self, output)
                        .map(|o| serde_json::to_value(o).unwrap_or_default()),)+
                }
            }
        }

        impl FromStr for StepKind {
            type Err = UnknownStepKind;

            /// Parses a wire name. Errors: [`UnknownStepKind`] naming the text and the known kinds.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(StepKind::$variant),)+
                    other => Err(UnknownStepKind(other.to_string())),
                }
            }
        }

        /// The typed inputs of one step, one variant per [`StepKind`]. Serialized adjacently
        /// tagged (`{"kind": "kube.apply", "inputs": {…}}`), which is also how a [`StepSpec`]
        /// is stored.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", content = "inputs")]
        pub enum StepInputs {
            $( $(#[doc = $doc])* #[serde(rename = $name)] $variant($inputs), )+
        }

        impl StepInputs {
            /// The kind these inputs belong to.
            pub fn kind(&self) -> StepKind {
                match self { $(StepInputs::$variant(_) => StepKind::$variant,)+ }
            }
        }

        /// The executor routing table: one method per [`StepKind`], taking the kind's typed
        /// inputs and returning its typed output. A table must implement every method, so a
        /// kind without an executor does not compile. The bot's table routes each method to
        /// its provider; the engine runs a table through [`dispatch`] (every table is a
        /// [`StepExecutor`](crate::executor::StepExecutor)).
        ///
        /// Each method runs one attempt of `ctx.step` (whose inputs are `inputs`) and must be
        /// idempotent (an attempt can be repeated after a crash). Errors:
        /// [`StepError::Transient`] to be retried within the step's [`RetryPolicy`],
        /// [`StepError::Permanent`] to fail the step at once; the engine enforces the timeout.
        #[async_trait::async_trait]
        pub trait ExecutorTable: Send + Sync {
            $(
                $(#[doc = $doc])*
                #[doc = ""]
                #[doc = concat!("Executes one attempt of `", $name, "`.")]
                async fn $method(
                    &self,
                    ctx: &StepContext,
                    inputs: &$inputs,
                ) -> Result<$output, StepError>;
            )+
        }

        /// Runs one attempt of `ctx.step` on `table`: the method of its kind with its typed
        /// inputs, and returns the typed output as JSON (object keys sorted), as the engine
        /// journals it and passes it to later steps.
        ///
        /// Errors: the method's [`StepError`]; [`StepError::Permanent`] if the output cannot be
        /// written as JSON.
        pub async fn dispatch<T: ExecutorTable + ?Sized>(
            table: &T,
            ctx: &StepContext,
        ) -> Result<serde_json::Value, StepError> {
            match &ctx.step.inputs {
                $(StepInputs::$variant(inputs) => {
                    write_output(StepKind::$variant, &table.$method(ctx, inputs).await?)
                })+
            }
        }
    };
}

step_kinds! {
    /// AWS preflight: region, AZs, instance types, VPC, subnets, CIDRs and subnet tags (EC2).
    AwsPreflight = "aws.preflight"
        => fn aws_preflight(AwsPreflightInputs) -> AwsPreflightOutput,
    /// Management-cluster preflight: the declared TKG release, ClusterClass, TKR and identity
    /// against the management cluster itself (docs/tkg2-class-based.md §1, §7, §8).
    KubePreflight = "kube.preflight"
        => fn kube_preflight(KubePreflightInputs) -> KubePreflightOutput,
    /// Server-side dry run, then server-side apply of the Cluster API objects to the management
    /// cluster.
    KubeApply = "kube.apply"
        => fn kube_apply(KubeApplyInputs) -> KubeApplyOutput,
    /// TKG's cluster readiness wait on the management cluster.
    KubeWaitCluster = "kube.wait-cluster"
        => fn kube_wait_cluster(WorkloadTarget) -> KubeWaitClusterOutput,
    /// Read the workload kubeconfig Secret and reach the workload API server.
    KubeReadKubeconfig = "kube.read-kubeconfig"
        => fn kube_read_kubeconfig(WorkloadTarget) -> KubeReadKubeconfigOutput,
    /// Attach the workload cluster to Tanzu Mission Control.
    TmcAttach = "tmc.attach"
        => fn tmc_attach(TmcClusterInputs) -> TmcAttachOutput,
    /// Install the cluster's Tanzu packages (PackageInstalls in dependency order).
    PackagesRollout = "packages.rollout"
        => fn packages_rollout(PackagesInputs) -> PackagesRolloutOutput,
    /// Upgrade the cluster to a newer TKR (`spec.topology.version`).
    KubeUpgradeCluster = "kube.upgrade-cluster"
        => fn kube_upgrade_cluster(UpgradeClusterInputs) -> KubeUpgradeClusterOutput,
    /// Set the planned machine fields of the Cluster (counts, instance types, root volumes),
    /// after checking the live Cluster and a server-side dry run against the plan.
    KubeResizeCluster = "kube.resize-cluster"
        => fn kube_resize_cluster(ResizeClusterInputs) -> KubeResizeClusterOutput,
    /// Wait until the KubeadmControlPlane runs the target Kubernetes version with every replica
    /// ready and the workload API server reports it (docs/tkg2-class-based.md §8 "Wait").
    KubeWaitControlPlane = "kube.wait-control-plane"
        => fn kube_wait_control_plane(KubeRolloutInputs) -> KubeWaitControlPlaneOutput,
    /// Wait until every MachineDeployment has `replicas == updatedReplicas == readyReplicas` at
    /// the target Kubernetes version (docs/tkg2-class-based.md §8 "Wait").
    KubeWaitMachineDeployments = "kube.wait-machine-deployments"
        => fn kube_wait_machine_deployments(KubeRolloutInputs) -> KubeWaitMachineDeploymentsOutput,
    /// Update, add and remove PackageInstalls of an existing cluster.
    PackagesUpdate = "packages.update"
        => fn packages_update(PackagesUpdateInputs) -> PackagesUpdateOutput,
    /// Re-verify every PackageInstall of the workload cluster (core and user packages):
    /// `ReconcileSucceeded` for its current generation (docs/tanzu-apis.md §4.3).
    PackagesVerify = "packages.verify"
        => fn packages_verify(WorkloadTarget) -> PackagesVerifyOutput,
    /// Detach the workload cluster from Tanzu Mission Control.
    TmcDetach = "tmc.detach"
        => fn tmc_detach(TmcClusterInputs) -> TmcDetachOutput,
    /// Check that the Cluster on the management cluster, when it exists, carries tkgops's
    /// ownership label for this config repository and cluster path (security rule 7), before a
    /// workflow touches TMC or AWS on its behalf.
    KubeCheckOwner = "kube.check-owner"
        => fn kube_check_owner(KubeDeleteInputs) -> KubeCheckOwnerOutput,
    /// Delete the Cluster and wait until Cluster API has removed it.
    KubeDeleteCluster = "kube.delete-cluster"
        => fn kube_delete_cluster(KubeDeleteInputs) -> KubeDeleteClusterOutput,
    /// Remove the `kubernetes.io/cluster/<name>` tag `aws.preflight` added to the subnets of
    /// an existing VPC (reference R7).
    AwsRemoveSubnetTags = "aws.remove-subnet-tags"
        => fn aws_remove_subnet_tags(AwsPreflightInputs) -> AwsRemoveSubnetTagsOutput,
}

impl StepKind {
    /// Whether an attempt of this kind only reads and waits, with no side effect to protect:
    /// the management-cluster preflight, the readiness and rollout waits, the kubeconfig read,
    /// the packages' re-verification and the ownership check. A graceful shutdown cuts such an
    /// attempt at once (the next start runs it again) instead of letting it run out
    /// `shutdownGrace`; every other kind gets the grace to reach its end.
    pub fn only_reads(self) -> bool {
        matches!(
            self,
            StepKind::KubePreflight
                | StepKind::KubeWaitCluster
                | StepKind::KubeReadKubeconfig
                | StepKind::KubeWaitControlPlane
                | StepKind::KubeWaitMachineDeployments
                | StepKind::PackagesVerify
                | StepKind::KubeCheckOwner
        )
    }
}

/// `output` read as the output type `O` of `kind`. Errors: [`OutputMismatch`].
fn read_output<O: StepOutput>(
    kind: StepKind,
    output: &serde_json::Value,
) -> Result<O, OutputMismatch> {
    O::deserialize(output).map_err(|source| OutputMismatch { kind, source })
}

/// `output` of `kind` as JSON. Errors: [`StepError::Permanent`] naming the kind (serde_json
/// refuses only maps with non-string keys, which no output type has).
fn write_output<O: StepOutput>(kind: StepKind, output: &O) -> Result<serde_json::Value, StepError> {
    serde_json::to_value(output).map_err(|e| {
        StepError::Permanent(format!(
            "{kind}: cannot write the step's output as JSON: {e}"
        ))
    })
}

impl StepInputs {
    /// The inputs alone as JSON (object keys sorted), for display in the plan.
    pub fn inputs_json(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut o)) => {
                o.remove("inputs").unwrap_or(serde_json::Value::Null)
            }
            _ => serde_json::Value::Null,
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step kind name that is not one of [`StepKind::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown step kind {0:?} (known: {known})", known = StepKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "))]
pub struct UnknownStepKind(pub String);

/// A workload cluster as seen from its management cluster: its Cluster object is
/// `namespace/cluster_name` on `management_cluster`, its kubeconfig the Cluster API Secret
/// `<cluster_name>-kubeconfig` (key `value`) beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadTarget {
    /// Name of the management cluster (a key of the repository's `managementClusters`).
    pub management_cluster: String,
    /// How to reach the management cluster, from the policy the plan was made under (the
    /// default branch before the change; security rule 1): part of what is approved. `None`
    /// in runs planned before tkgops recorded it: the bot's current setting is used then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<crate::request::KubeconfigSource>,
    /// Namespace of the Cluster object on the management cluster (TKG `NAMESPACE`).
    pub namespace: String,
    /// The workload cluster's name (TKG `CLUSTER_NAME`).
    pub cluster_name: String,
}

/// Inputs of `aws.preflight`: the network and machines of the request (TKG variables, with the
/// defaults of `request::cluster_spec` applied).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsPreflightInputs {
    /// TKG `CLUSTER_NAME`.
    pub cluster_name: String,
    /// TKG `AWS_REGION`, e.g. `us-west-2`.
    pub region: String,
    /// TKG `AWS_NODE_AZ`, `_1`, `_2` (1 for dev, 3 for prod), e.g. `us-west-2a`.
    pub azs: Vec<String>,
    /// The VPC: existing (`AWS_VPC_ID`) or new (`AWS_VPC_CIDR`).
    pub vpc: VpcSpec,
    /// One entry per AZ with its subnet ids (existing VPC) or CIDRs (new VPC).
    pub subnets: Vec<SubnetSpec>,
    /// `CONTROL_PLANE_MACHINE_TYPE`, `NODE_MACHINE_TYPE*`, sorted and deduplicated.
    pub instance_types: Vec<String>,
    /// TKG `CLUSTER_CIDR` (pods).
    pub cluster_cidr: String,
    /// TKG `SERVICE_CIDR`.
    pub service_cidr: String,
    /// The role to assume for these calls: the management cluster's `aws` setting, from the
    /// policy the plan was made under (part of what is approved). `None`: the bot's own
    /// identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::request::AwsIdentity>,
}

/// Inputs of `kube.apply`: where to apply, and the multi-document YAML rendered from the
/// workflow's manifest templates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeApplyInputs {
    /// The Cluster the manifests belong to.
    #[serde(flatten)]
    pub target: WorkloadTarget,
    /// The manifests, one YAML document each, separated by `---`.
    pub manifests: String,
    /// A drift revert (README "Drift"), set only by the bot's drift scan, never by a workflow:
    /// every `cluster.x-k8s.io` Cluster of the manifests must already exist (a revert never
    /// creates one), and the apply is forced over the fields the manifests set, taking them
    /// back from the field manager of a hand change. `false` (every other run): unforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revert: bool,
}

/// Inputs of `kube.preflight`: what the plan assumed about the management cluster, from
/// `tkgops.yaml` (`managementClusters[]`) and the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubePreflightInputs {
    /// The Cluster to be created.
    #[serde(flatten)]
    pub target: WorkloadTarget,
    /// Declared TKG release (`tkgVersion`), e.g. `2.2`; the management cluster's `TKGVERSION`
    /// annotation must match it in major.minor (§1 "Version check").
    pub tkg_version: String,
    /// The ClusterClass the Cluster names; it must exist in the Cluster's namespace (§1, §4).
    pub cluster_class: String,
    /// The TKR version the Cluster asks for; its `TanzuKubernetesRelease` must exist and be
    /// `Compatible=True` (§8).
    pub tkr: String,
    /// Declared identity management (`oidc`, `ldap`, `none`), when declared; `oidc`/`ldap`
    /// require the `kube-public/pinniped-info` ConfigMap the management cluster publishes (§7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_management_type: Option<String>,
}

/// TMC's full name of an attached cluster (`fullName` of the TMC cluster API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TmcFullName {
    /// `attached` for attached clusters.
    pub management_cluster_name: String,
    /// `attached` for attached clusters.
    pub provisioner_name: String,
    /// The cluster's name in TMC (its `CLUSTER_NAME`).
    pub name: String,
}

impl TmcFullName {
    /// The full name TMC gives a cluster attached under `name`: management cluster and
    /// provisioner `attached` (docs/tanzu-apis.md §4).
    pub fn attached(name: &str) -> Self {
        TmcFullName {
            management_cluster_name: "attached".into(),
            provisioner_name: "attached".into(),
            name: name.into(),
        }
    }
}

/// The ownership mark of one cluster request (security rule 7): tkgops puts it on what it
/// creates for the request and changes or deletes only what carries it. On the Cluster it is
/// the `tkgops.dev/owner` label plus the `tkgops.dev/config-repository` and
/// `tkgops.dev/cluster-path` annotations; on the TMC cluster it is the same label in
/// `meta.labels`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerMark {
    /// The `tkgops.dev/owner` label value, `crate::workflow::plan::owner_label` of the
    /// repository and cluster (32 hexadecimal digits). Empty only in inputs planned before
    /// tkgops recorded the mark: the executors then refuse to act (fail closed).
    pub label: String,
    /// The config repository, GitHub `owner/name`.
    pub repository: String,
    /// The cluster request's folder in it, `clusters/<name>`.
    pub path: String,
}

impl OwnerMark {
    /// `<repository>/<path>`, e.g. `acme/tkg-clusters/clusters/payments`: how errors name
    /// the owner.
    pub fn display(&self) -> String {
        format!("{}/{}", self.repository, self.path)
    }
}

/// Inputs of `tmc.attach` and `tmc.detach`: the TMC organisation (from the default branch's
/// `tkgops.yaml`), the cluster as TMC knows it, and the ownership mark tkgops sets on it and
/// requires before it converges or detaches it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TmcClusterInputs {
    /// TMC endpoint, `https://<org>.tmc.cloud.vmware.com`.
    pub endpoint: String,
    /// CSP endpoint of the API-token exchange.
    pub csp_endpoint: String,
    /// The workload cluster the TMC agent runs on.
    pub target: WorkloadTarget,
    /// The cluster's TMC full name.
    pub full_name: TmcFullName,
    /// `spec.clusterGroupName`.
    pub cluster_group: String,
    /// `meta.description`.
    pub description: String,
    /// `meta.labels` the request asks for (the request's `labels`); tkgops adds the
    /// ownership label to them.
    pub labels: BTreeMap<String, String>,
    /// The ownership mark: set in `meta.labels` on create, required on an existing TMC
    /// cluster before any update or detach. Defaults to empty for steps journalled before the
    /// field existed, which the executor refuses.
    #[serde(default)]
    pub owner: OwnerMark,
}

/// Inputs of `packages.rollout` and `packages.update`: the PackageRepository and the packages
/// in install (dependency) order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackagesInputs {
    /// The workload cluster the packages are installed on.
    #[serde(flatten)]
    pub target: WorkloadTarget,
    /// The PackageRepository that must be reconciled first.
    pub repository: PackageRepositoryRef,
    /// Packages in install order.
    pub packages: Vec<PackageSpec>,
    /// A drift revert (README "Drift"), set only by the bot's drift scan: the PackageInstalls
    /// and values Secrets are applied forced, taking back the fields a hand change (`kubectl
    /// edit` of the version) took over. `false` (every other run): unforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revert: bool,
}

/// Inputs of `kube.upgrade-cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeClusterInputs {
    /// The Cluster to upgrade.
    #[serde(flatten)]
    pub target: WorkloadTarget,
    /// The TKR version to upgrade to, e.g. `v1.23.8+vmware.2-tkg.1`.
    pub tkr: String,
    /// The Kubernetes version of that TKR, e.g. `v1.23.8+vmware.2`.
    pub kubernetes_version: String,
    /// The `tkgops.dev/owner` label value the Cluster must carry (security rule 7: tkgops
    /// changes only Clusters it created for the same config repository and cluster path).
    pub owner_label: String,
    /// The management cluster's TKG release, which sets how long the write is retried while
    /// the TKR resolver cannot resolve the TKR yet ([`crate::tkg::TkgVersion::upgrade_patch_tries`]).
    /// `None` in runs planned before tkgops recorded it: 2.2's budget is used then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tkg_version: Option<crate::tkg::TkgVersion>,
}

/// Inputs of `kube.resize-cluster`: the Cluster and its machine fields before and after the
/// change ([`crate::workflow::change::machine_fields`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResizeClusterInputs {
    /// The Cluster to resize.
    #[serde(flatten)]
    pub target: WorkloadTarget,
    /// The `tkgops.dev/owner` label value the Cluster must carry (security rule 7).
    pub owner_label: String,
    /// Every machine field of the Cluster with the value the plan expects live (`from`) and the
    /// one it sets (`to`); fields the change keeps are listed with `from == to`.
    pub fields: Vec<crate::workflow::change::ClusterFieldChange>,
}

/// Inputs of `kube.delete-cluster` and `kube.check-owner`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeDeleteInputs {
    /// The Cluster to delete or check.
    #[serde(flatten)]
    pub target: WorkloadTarget,
    /// The `tkgops.dev/owner` label value the Cluster must carry (security rule 7); a Cluster
    /// without it is never deleted, and `kube.check-owner` fails on it.
    pub owner_label: String,
}

/// Inputs of `kube.wait-control-plane` and `kube.wait-machine-deployments`: the Cluster and
/// the version its machines must reach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeRolloutInputs {
    /// The Cluster whose machines roll.
    #[serde(flatten)]
    pub target: WorkloadTarget,
    /// The TKR version of the Cluster, e.g. `v1.25.7+vmware.2-tkg.1`.
    pub tkr: String,
    /// The Kubernetes version of that TKR, e.g. `v1.25.7+vmware.2`: the KubeadmControlPlane's
    /// `status.version` and every MachineDeployment's `spec.template.spec.version` must equal
    /// it.
    pub kubernetes_version: String,
    /// The machine shapes the plan asks for: once rolled, the AWSMachineTemplate of the
    /// KubeadmControlPlane (`controlPlane`) or of each MachineDeployment must have them. Empty
    /// in runs planned before tkgops recorded them: the templates are not checked then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<MachineShape>,
}

/// The instance type and root volume one KubeadmControlPlane or MachineDeployment of a Cluster
/// must run, as the ClusterClass's patches write them into its AWSMachineTemplate
/// (`spec.template.spec.instanceType`, `rootVolume.size`; docs/tkg2-class-based.md §2
/// `controlPlane` and `worker` rows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineShape {
    /// `controlPlane`, or the MachineDeployment's topology name (`md-0`, `md-1`, `md-2`).
    pub topology: String,
    /// The EC2 instance type, e.g. `m5.xlarge` (`CONTROL_PLANE_MACHINE_TYPE`,
    /// `NODE_MACHINE_TYPE[_1|_2]`).
    pub instance_type: String,
    /// The root volume size in GiB (`AWS_CONTROL_PLANE_OS_DISK_SIZE_GIB`,
    /// `AWS_NODE_OS_DISK_SIZE_GIB`).
    pub root_volume_gib: u32,
}

impl MachineShape {
    /// The topology name of the control plane in [`MachineShape::topology`].
    pub const CONTROL_PLANE: &'static str = "controlPlane";

    /// Why the AWSMachineTemplate `template` (named `template_name`, used by `who`, e.g.
    /// `MachineDeployment md-1`) does not have this shape, or `None` when it does.
    pub fn mismatch(
        &self,
        who: &str,
        template_name: &str,
        template: &serde_json::Value,
    ) -> Option<String> {
        let spec = template.pointer("/spec/template/spec");
        let instance_type = spec
            .and_then(|s| s.get("instanceType"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let size = spec
            .and_then(|s| s.pointer("/rootVolume/size"))
            .and_then(serde_json::Value::as_u64);
        let mut wrong = Vec::new();
        if instance_type != self.instance_type {
            wrong.push(format!(
                "instanceType {} (asked {})",
                if instance_type.is_empty() {
                    "unset"
                } else {
                    instance_type
                },
                self.instance_type
            ));
        }
        if size != Some(u64::from(self.root_volume_gib)) {
            wrong.push(format!(
                "rootVolume.size {} (asked {} GiB)",
                size.map_or("unset".to_string(), |s| format!("{s} GiB")),
                self.root_volume_gib
            ));
        }
        (!wrong.is_empty()).then(|| {
            format!(
                "{who} runs AWSMachineTemplate {template_name} with {}",
                wrong.join(" and ")
            )
        })
    }
}

/// Inputs of `packages.update`: the packages wanted after the change (install order) and the
/// ones the change removes (removal order: dependents first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackagesUpdateInputs {
    /// The workload cluster the packages are installed on.
    #[serde(flatten)]
    pub target: WorkloadTarget,
    /// The PackageRepository that must be reconciled first.
    pub repository: PackageRepositoryRef,
    /// Packages to install or update, in install (dependency) order; applying an unchanged one
    /// is a no-op (server-side apply).
    pub packages: Vec<PackageSpec>,
    /// Packages to remove (PackageInstall and its values Secret), dependents before their
    /// dependencies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<PackageSpec>,
}

/// Retry policy of a step: attempts with exponential backoff on transient errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total attempts including the first (at least 1). An attempt cut short by the bot's death
    /// or a graceful shutdown does not count (the engine caps deaths during one step separately).
    pub max_attempts: u32,
    /// Delay before the second attempt, in seconds; doubled after each failed attempt.
    pub initial_backoff_secs: f64,
    /// Upper bound of the delay between attempts, in seconds.
    pub max_backoff_secs: f64,
}

impl Default for RetryPolicy {
    /// 5 attempts, 2 s initial backoff, 60 s cap.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff_secs: 2.0,
            max_backoff_secs: 60.0,
        }
    }
}

/// One step of a plan, fully built: what the engine persists and executes. Serialized as
/// `{"id", "kind", "title", "timeoutSecs", "retry", "inputs"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSpec {
    /// Step id, unique within the workflow (e.g. `apply-cluster`).
    pub id: String,
    /// Human-readable title shown in the PR comment.
    pub title: String,
    /// Deadline of one attempt, in seconds.
    pub timeout_secs: u64,
    /// Retry policy on transient errors.
    pub retry: RetryPolicy,
    /// The kind and its typed inputs (secret-free).
    #[serde(flatten)]
    pub inputs: StepInputs,
}

impl StepSpec {
    /// The step's kind (from its inputs).
    pub fn kind(&self) -> StepKind {
        self.inputs.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_wire_names() {
        for k in StepKind::ALL {
            assert_eq!(k.as_str().parse::<StepKind>(), Ok(*k));
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        let err = "kube.explode".parse::<StepKind>().unwrap_err().to_string();
        assert!(
            err.contains("kube.explode") && err.contains("kube.apply"),
            "{err}"
        );
    }

    #[test]
    fn a_step_spec_is_stored_with_its_kind_beside_its_inputs() {
        let target = WorkloadTarget {
            management_cluster: "mc".into(),
            kubeconfig: None,
            namespace: "default".into(),
            cluster_name: "c1".into(),
        };
        let spec = StepSpec {
            id: "wait".into(),
            title: "Wait".into(),
            timeout_secs: 60,
            retry: RetryPolicy::default(),
            inputs: StepInputs::KubeWaitCluster(target),
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["kind"], "kube.wait-cluster");
        assert_eq!(v["inputs"]["clusterName"], "c1");
        assert_eq!(serde_json::from_value::<StepSpec>(v).unwrap(), spec);
    }
}

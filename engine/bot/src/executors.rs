//! The step executors of a running bot, wired to the providers: [`StepTable`], the one routing
//! table from every step kind to the provider method that executes it.
//!
//! The management clusters come from `tkgops.yaml` on the default branch, which changes over
//! time; [`Executors`] rebuilds the Kubernetes provider whenever that list changes, and the
//! table (and the TMC provider's [`ManifestApplier`]) call the current provider.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tkgops_domain::output::{
    AwsPreflightOutput, AwsRemoveSubnetTagsOutput, KubeApplyOutput, KubeCheckOwnerOutput,
    KubeDeleteClusterOutput, KubePreflightOutput, KubeReadKubeconfigOutput,
    KubeResizeClusterOutput, KubeUpgradeClusterOutput, KubeWaitClusterOutput,
    KubeWaitControlPlaneOutput, KubeWaitMachineDeploymentsOutput, PackagesRolloutOutput,
    PackagesUpdateOutput, PackagesVerifyOutput, TmcAttachOutput, TmcDetachOutput,
};
use tkgops_domain::request::RepoConfig;
use tkgops_domain::step::{
    AwsPreflightInputs, KubeApplyInputs, KubeDeleteInputs, KubePreflightInputs, KubeRolloutInputs,
    PackagesInputs, PackagesUpdateInputs, ResizeClusterInputs, TmcClusterInputs,
    UpgradeClusterInputs,
};
use tkgops_engine::{ExecutorTable, StepContext, StepError, StepExecutor, StepKind};
use tkgops_providers::aws::AwsExecutor;
use tkgops_providers::kube::KubeProvider;
use tkgops_providers::tmc::{SecretToken, TmcExecutor};
use tkgops_providers::{KubeconfigSource, ManifestApplier, WorkloadTarget};

/// The bot's executors: the Kubernetes provider (swappable), AWS and TMC.
pub struct Executors {
    kube: RwLock<(BTreeMap<String, KubeconfigSource>, KubeProvider)>,
    kube_poll: Duration,
    /// The TMC executor the drift scan reads clusters with (the engine's table has its own,
    /// with the same token source); set by [`Executors::table_with`].
    tmc: RwLock<Option<Arc<TmcExecutor>>>,
}

impl Executors {
    /// An executor set with no management clusters yet; `kube_poll` is the readiness poll
    /// interval (seconds granularity; TKG uses 15 s).
    pub fn new(kube_poll: Duration) -> Arc<Executors> {
        Arc::new(Executors {
            kube: RwLock::new((
                BTreeMap::new(),
                KubeProvider::new(BTreeMap::new(), kube_poll),
            )),
            kube_poll,
            tmc: RwLock::new(None),
        })
    }

    /// Rebuilds the Kubernetes provider when the management clusters of `repo` differ from the
    /// current ones.
    pub fn update_management_clusters(&self, repo: &RepoConfig) {
        let wanted: BTreeMap<String, KubeconfigSource> = repo
            .management_clusters
            .iter()
            .map(|m| (m.name.clone(), m.kubeconfig.clone()))
            .collect();
        if let Ok(mut guard) = self.kube.write() {
            if guard.0 != wanted {
                *guard = (wanted.clone(), KubeProvider::new(wanted, self.kube_poll));
            }
        }
    }

    fn current(&self) -> KubeProvider {
        match self.kube.read() {
            Ok(g) => g.1.clone(),
            Err(p) => p.into_inner().1.clone(),
        }
    }

    /// The engine's executor: the [`StepTable`] over the current Kubernetes provider, AWS
    /// (`aws_endpoint` overrides the EC2 endpoint, e.g. moto) and TMC (`tmc_token` from the
    /// bot's environment; `tmc_poll` between status checks).
    pub fn table(
        self: &Arc<Self>,
        aws_endpoint: Option<String>,
        tmc_token: Option<String>,
        tmc_poll: Duration,
    ) -> Arc<dyn StepExecutor> {
        let token = tmc_token.map(SecretToken::new);
        self.table_with(aws_endpoint, Arc::new(move || token.clone()), tmc_poll)
    }

    /// As [`Executors::table`], with the TMC API token read from `tmc_token` at each TMC step
    /// (a rotated token file is used by the next step: `tkgops_providers::tmc::TokenSource`).
    pub fn table_with(
        self: &Arc<Self>,
        aws_endpoint: Option<String>,
        tmc_token: tkgops_providers::tmc::TokenSource,
        tmc_poll: Duration,
    ) -> Arc<dyn StepExecutor> {
        let applier: Arc<dyn ManifestApplier> = Arc::new(KubeHandle(self.clone()));
        let reader = TmcExecutor::with_token_source(tmc_token.clone(), applier.clone(), tmc_poll);
        *self.tmc.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(reader));
        Arc::new(StepTable {
            kube: self.clone(),
            aws: AwsExecutor::new(aws_endpoint),
            tmc: TmcExecutor::with_token_source(tmc_token, applier, tmc_poll),
        })
    }
}

impl Executors {
    /// The health of workload cluster `target` now, through the current Kubernetes provider
    /// (`tkgops_providers::kube::health`): what a scheduled apply's soak judges.
    ///
    /// Errors: the provider's [`StepError`]s (unknown management cluster, API errors).
    pub async fn cluster_health(
        &self,
        target: &WorkloadTarget,
    ) -> Result<tkgops_domain::waves::ClusterHealth, StepError> {
        self.current().cluster_health(target).await
    }

    /// The drift scan's read of the Cluster of a `kube.apply` step's `inputs`: live, and as a
    /// server-side dry run of tkgops's apply answers it
    /// ([`tkgops_providers::kube::KubeProvider::probe_cluster`]).
    ///
    /// Errors: the provider's [`StepError`]s.
    pub async fn probe_cluster(
        &self,
        inputs: &KubeApplyInputs,
    ) -> Result<tkgops_providers::kube::drift::ClusterProbe, StepError> {
        self.current().probe_cluster(inputs).await
    }

    /// The Cluster changes on the management cluster of `target`, from the current Kubernetes
    /// provider's shared Cluster watch ([`tkgops_providers::kube::KubeProvider::cluster_changes`]):
    /// what wakes the drift scan.
    ///
    /// Errors: the provider's [`StepError`]s (unknown management cluster, bad kubeconfig).
    pub async fn cluster_changes(
        &self,
        target: &WorkloadTarget,
    ) -> Result<tkgops_providers::kube::drift::ClusterChanges, StepError> {
        self.current().cluster_changes(target).await
    }

    /// The drift scan's read of the packages of a `packages.rollout` step's `inputs` on the
    /// workload cluster ([`tkgops_providers::kube::KubeProvider::probe_packages`]).
    ///
    /// Errors: the provider's [`StepError`]s.
    pub async fn probe_packages(
        &self,
        inputs: &tkgops_domain::step::PackagesInputs,
    ) -> Result<Vec<tkgops_domain::drift::PackageLive>, StepError> {
        self.current().probe_packages(inputs).await
    }

    /// The drift scan's read of the TMC cluster of a `tmc.attach` step's `inputs`
    /// ([`TmcExecutor::read_cluster`]): the cluster (`None`: TMC has none by that name), the
    /// group and labels tkgops wants.
    ///
    /// Errors: Permanent before [`Executors::table_with`] built the TMC executor; otherwise
    /// [`TmcExecutor::read_cluster`]'s.
    pub async fn read_tmc_cluster(
        &self,
        inputs: &TmcClusterInputs,
    ) -> Result<
        (
            Option<tkgops_providers::tmc::models::Cluster>,
            String,
            BTreeMap<String, String>,
        ),
        StepError,
    > {
        let tmc = self
            .tmc
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StepError::Permanent("the TMC executor is not set up".into()))?;
        tmc.read_cluster(inputs).await
    }
}

/// The step kinds the bot executes: every kind, since [`StepTable`] has a method for each
/// (checked at compile time). The planner marks a cluster's plan executable with it (`tkgops
/// plan` shows what a running bot would execute).
pub fn executable_kinds() -> BTreeSet<StepKind> {
    StepKind::ALL.iter().copied().collect()
}

/// The bot's executor routing table: every step kind to the provider method that executes it,
/// the Kubernetes kinds on the provider current when the attempt starts. Built by
/// [`Executors::table`]; the engine runs it through [`tkgops_engine::dispatch`].
pub struct StepTable {
    kube: Arc<Executors>,
    aws: AwsExecutor,
    tmc: TmcExecutor,
}

#[async_trait::async_trait]
impl ExecutorTable for StepTable {
    async fn aws_preflight(
        &self,
        ctx: &StepContext,
        inputs: &AwsPreflightInputs,
    ) -> Result<AwsPreflightOutput, StepError> {
        self.aws.preflight(ctx, inputs).await
    }

    async fn kube_preflight(
        &self,
        ctx: &StepContext,
        inputs: &KubePreflightInputs,
    ) -> Result<KubePreflightOutput, StepError> {
        self.kube.current().preflight(ctx, inputs).await
    }

    async fn kube_apply(
        &self,
        ctx: &StepContext,
        inputs: &KubeApplyInputs,
    ) -> Result<KubeApplyOutput, StepError> {
        self.kube.current().apply(ctx, inputs).await
    }

    async fn kube_wait_cluster(
        &self,
        ctx: &StepContext,
        inputs: &WorkloadTarget,
    ) -> Result<KubeWaitClusterOutput, StepError> {
        self.kube.current().wait_cluster(ctx, inputs).await
    }

    async fn kube_read_kubeconfig(
        &self,
        ctx: &StepContext,
        inputs: &WorkloadTarget,
    ) -> Result<KubeReadKubeconfigOutput, StepError> {
        self.kube.current().read_kubeconfig(ctx, inputs).await
    }

    async fn tmc_attach(
        &self,
        ctx: &StepContext,
        inputs: &TmcClusterInputs,
    ) -> Result<TmcAttachOutput, StepError> {
        self.tmc.attach(ctx, inputs).await
    }

    async fn packages_rollout(
        &self,
        ctx: &StepContext,
        inputs: &PackagesInputs,
    ) -> Result<PackagesRolloutOutput, StepError> {
        self.kube.current().packages_rollout(ctx, inputs).await
    }

    async fn kube_upgrade_cluster(
        &self,
        ctx: &StepContext,
        inputs: &UpgradeClusterInputs,
    ) -> Result<KubeUpgradeClusterOutput, StepError> {
        self.kube.current().upgrade_cluster(ctx, inputs).await
    }

    async fn kube_resize_cluster(
        &self,
        ctx: &StepContext,
        inputs: &ResizeClusterInputs,
    ) -> Result<KubeResizeClusterOutput, StepError> {
        self.kube.current().resize_cluster(ctx, inputs).await
    }

    async fn kube_wait_control_plane(
        &self,
        ctx: &StepContext,
        inputs: &KubeRolloutInputs,
    ) -> Result<KubeWaitControlPlaneOutput, StepError> {
        self.kube.current().wait_control_plane(ctx, inputs).await
    }

    async fn kube_wait_machine_deployments(
        &self,
        ctx: &StepContext,
        inputs: &KubeRolloutInputs,
    ) -> Result<KubeWaitMachineDeploymentsOutput, StepError> {
        self.kube
            .current()
            .wait_machine_deployments(ctx, inputs)
            .await
    }

    async fn packages_update(
        &self,
        ctx: &StepContext,
        inputs: &PackagesUpdateInputs,
    ) -> Result<PackagesUpdateOutput, StepError> {
        self.kube.current().packages_update(ctx, inputs).await
    }

    async fn packages_verify(
        &self,
        ctx: &StepContext,
        inputs: &WorkloadTarget,
    ) -> Result<PackagesVerifyOutput, StepError> {
        self.kube.current().packages_verify(ctx, inputs).await
    }

    async fn tmc_detach(
        &self,
        ctx: &StepContext,
        inputs: &TmcClusterInputs,
    ) -> Result<TmcDetachOutput, StepError> {
        self.tmc.detach(ctx, inputs).await
    }

    async fn kube_check_owner(
        &self,
        ctx: &StepContext,
        inputs: &KubeDeleteInputs,
    ) -> Result<KubeCheckOwnerOutput, StepError> {
        self.kube.current().check_owner(ctx, inputs).await
    }

    async fn kube_delete_cluster(
        &self,
        ctx: &StepContext,
        inputs: &KubeDeleteInputs,
    ) -> Result<KubeDeleteClusterOutput, StepError> {
        self.kube.current().delete_cluster(ctx, inputs).await
    }

    async fn aws_remove_subnet_tags(
        &self,
        ctx: &StepContext,
        inputs: &AwsPreflightInputs,
    ) -> Result<AwsRemoveSubnetTagsOutput, StepError> {
        self.aws.remove_subnet_tags(ctx, inputs).await
    }
}

/// Stable [`ManifestApplier`] for the TMC provider, delegating to the current Kubernetes
/// provider.
pub struct KubeHandle(Arc<Executors>);

#[async_trait::async_trait]
impl ManifestApplier for KubeHandle {
    async fn apply_to_workload(
        &self,
        target: &WorkloadTarget,
        yaml: &str,
        field_manager: &str,
    ) -> Result<Vec<String>, StepError> {
        self.0
            .current()
            .apply_to_workload(target, yaml, field_manager)
            .await
    }
}

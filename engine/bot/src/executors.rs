//! The step executors of a running bot, wired to the providers.
//!
//! The management clusters come from `tkgops.yaml` on the default branch, which changes over
//! time; [`Executors`] rebuilds the Kubernetes provider whenever that list changes, and hands
//! the engine stable wrappers that delegate to the current provider.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tkgops_domain::request::RepoConfig;
use tkgops_engine::{StepContext, StepError, StepExecutor, StepKind};
use tkgops_providers::aws::AwsExecutor;
use tkgops_providers::kube::KubeProvider;
use tkgops_providers::tmc::{SecretToken, TmcExecutor};
use tkgops_providers::{KubeconfigSource, ManifestApplier, WorkloadTarget};

/// The bot's executors: the Kubernetes provider (swappable), AWS and TMC.
pub struct Executors {
    kube: RwLock<(BTreeMap<String, KubeconfigSource>, KubeProvider)>,
    kube_poll: Duration,
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

    /// All executors for the engine: Kubernetes (through a stable handle), AWS preflight
    /// (`aws_endpoint` overrides the EC2 endpoint, e.g. moto) and TMC attach (`tmc_token` from
    /// the bot's environment; `tmc_poll` between status checks).
    pub fn all(
        self: &Arc<Self>,
        aws_endpoint: Option<String>,
        tmc_token: Option<String>,
        tmc_poll: Duration,
    ) -> Vec<Arc<dyn StepExecutor>> {
        let handle = Arc::new(KubeHandle(self.clone()));
        let applier: Arc<dyn ManifestApplier> = handle.clone();
        vec![
            handle,
            Arc::new(AwsExecutor::new(aws_endpoint)),
            Arc::new(TmcExecutor::new(
                tmc_token.map(SecretToken::new),
                applier,
                tmc_poll,
            )),
        ]
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
}

/// The step kinds the bot's executors handle (those [`Executors::all`] registers), derived
/// from the executors themselves; `tkgops plan` uses it to mark what a running bot would execute.
pub fn executable_kinds() -> BTreeSet<StepKind> {
    let executors = Executors::new(Duration::from_secs(15));
    tkgops_engine::executable_kinds(&executors.all(None, None, Duration::from_secs(5)))
}

/// Stable handle delegating to the current Kubernetes provider.
pub struct KubeHandle(Arc<Executors>);

#[async_trait::async_trait]
impl StepExecutor for KubeHandle {
    fn kinds(&self) -> &'static [StepKind] {
        tkgops_providers::kube::KINDS
    }

    async fn execute(&self, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        self.0.current().execute(ctx).await
    }
}

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

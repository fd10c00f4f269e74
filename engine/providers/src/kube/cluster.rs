//! `kube.wait-cluster`: waits for a workload cluster as `tanzu cluster create` does
//! (docs/tkg2-class-based.md §6). The rules (initialized, ready, nodeRefs, core packages, TKG's
//! aborts) are the pure judge [`ClusterReady`] of `tkgops_domain::wait::cluster`; this module
//! feeds it snapshots from the provider's shared watches (Cluster, KubeadmControlPlane,
//! MachineDeployment, Machine, ClusterBootstrap, PackageInstall on the management cluster, and
//! once the machines are ready and the ClusterBootstrap names workload-side core packages,
//! PackageInstall on the workload cluster) through the one wait driver ([`crate::wait`]).
//!
//! The wait subscribes to its own cluster's objects only (the watches' per-cluster keys), so
//! changes of other clusters never wake it; timers only fire for the judge's deadlines.
//! Progress lines (phase, control plane n/m, md-i n/m, nodeRefs, packages) are deduplicated.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Api, DynamicObject};
use tokio::time::Instant;

use super::packages::package_install_resource;
use super::watch::{SharedWatch, Subscription};
use super::{custom_resource, KubeProvider};
use crate::wait::{drive, DriveOptions, Observed, Reporter, Source};
use crate::WorkloadTarget;
use tkgops_domain::executor::{StepContext, StepError};
use tkgops_domain::output::KubeWaitClusterOutput;

pub use tkgops_domain::wait::cluster::{
    cluster_failure, cluster_state, core_packages, ClusterReady, ClusterSnapshot, ClusterState,
    CorePackage, CreationTracker, CLUSTER_NAME_LABEL, CORE_PACKAGES_NAMESPACE, TOPOLOGY_MD_LABEL,
};
pub use tkgops_domain::wait::condition;

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
/// `run.tanzu.vmware.com/v1alpha3` ClusterBootstrap (docs/tkg2-class-based.md §3.2).
pub fn cluster_bootstrap_resource() -> kube::discovery::ApiResource {
    custom_resource(
        "run.tanzu.vmware.com",
        "v1alpha3",
        "ClusterBootstrap",
        "clusterbootstraps",
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

/// Where `kube.wait-cluster` reads its snapshots: the shared watches of one cluster's objects.
struct ClusterSource<'a> {
    provider: &'a KubeProvider,
    target: &'a WorkloadTarget,
    sub: Subscription,
    cluster: Arc<SharedWatch>,
    kcp: Arc<SharedWatch>,
    md: Arc<SharedWatch>,
    machine: Arc<SharedWatch>,
    bootstrap: Arc<SharedWatch>,
    mgmt_pkgi: Arc<SharedWatch>,
    /// The workload cluster's PackageInstall watch, once needed.
    workload_pkgi: Option<Arc<SharedWatch>>,
    /// The Cluster is known to exist (one GET confirmed it while the store lagged behind).
    confirmed_exists: bool,
}

impl<'a> ClusterSource<'a> {
    async fn start(
        provider: &'a KubeProvider,
        target: &'a WorkloadTarget,
    ) -> Result<ClusterSource<'a>, StepError> {
        let (ns, name) = (&target.namespace, &target.cluster_name);
        let w = |r| provider.management_watch(target, r);
        let mut s = ClusterSource {
            provider,
            target,
            sub: Subscription::default(),
            cluster: w(&cluster_resource()).await?,
            kcp: w(&kcp_resource()).await?,
            md: w(&md_resource()).await?,
            machine: w(&machine_resource()).await?,
            bootstrap: w(&cluster_bootstrap_resource()).await?,
            mgmt_pkgi: w(&package_install_resource()).await?,
            workload_pkgi: None,
            confirmed_exists: false,
        };
        for x in [
            &s.cluster,
            &s.kcp,
            &s.md,
            &s.machine,
            &s.bootstrap,
            &s.mgmt_pkgi,
        ] {
            s.sub.key(x, ns, name);
        }
        Ok(s)
    }
}

#[async_trait::async_trait]
impl Source for ClusterSource<'_> {
    type Snapshot = ClusterSnapshot;

    async fn observe(
        &mut self,
        progress: &mut Reporter,
    ) -> Result<Observed<ClusterSnapshot>, StepError> {
        let t = self.target;
        let (mc, ns, name) = (&t.management_cluster, &t.namespace, &t.cluster_name);
        self.sub.mark_seen();
        if !self.sub.check(self.provider, t, progress)? {
            return Ok(Observed::NotYet);
        }
        let Some(cluster) = self.cluster.get(ns, name) else {
            // Not in the store: confirm with one GET (the store may lag behind a fresh apply).
            if self.confirmed_exists {
                return Ok(Observed::NotYet);
            }
            let client = self
                .provider
                .management_client_with(mc, t.kubeconfig.as_ref())
                .await?;
            let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &cluster_resource());
            return match api.get_opt(name).await {
                Ok(Some(_)) => {
                    self.confirmed_exists = true;
                    Ok(Observed::NotYet)
                }
                Ok(None) => Ok(Observed::Snapshot(ClusterSnapshot::default())),
                Err(e) => Err(self
                    .provider
                    .classify_mgmt(mc, &format!("Cluster/{ns}/{name}"), e)),
            };
        };
        let mut s = ClusterSnapshot {
            control_planes: self.kcp.of_cluster(ns, name),
            machine_deployments: self.md.of_cluster(ns, name),
            machines: self.machine.of_cluster(ns, name),
            bootstrap: self.bootstrap.get(ns, name),
            cluster: Some(cluster),
            packages: BTreeMap::new(),
        };
        // The package phase (class-based clusters only) starts once the machines are ready.
        let class_based = s
            .cluster
            .as_ref()
            .is_some_and(|c| c.pointer("/spec/topology").is_some());
        let Some(cb) = s.bootstrap.clone() else {
            return Ok(Observed::Snapshot(s));
        };
        if !class_based || !s.machines_ready() {
            return Ok(Observed::Snapshot(s));
        }
        let core = core_packages(&cb, name);
        if self.workload_pkgi.is_none() && core.iter().any(|p| !p.management) {
            match self
                .provider
                .workload_watch(t, &package_install_resource())
                .await
            {
                Ok(w) => {
                    self.sub.all(&w);
                    self.workload_pkgi = Some(w);
                    if !self.sub.check(self.provider, t, progress)? {
                        return Ok(Observed::NotYet);
                    }
                }
                Err(e) => return Ok(Observed::Trouble(e)),
            }
        }
        for p in &core {
            let obj = if p.management {
                self.sub.key(&self.mgmt_pkgi, ns, &p.install_name);
                self.mgmt_pkgi.get(ns, &p.install_name)
            } else {
                self.workload_pkgi
                    .as_ref()
                    .and_then(|x| x.get(CORE_PACKAGES_NAMESPACE, &p.install_name))
            };
            if let Some(o) = obj {
                s.packages.insert(p.install_name.clone(), o);
            }
        }
        Ok(Observed::Snapshot(s))
    }

    async fn changed(&mut self, until: Option<Instant>) {
        self.sub.changed(until).await
    }
}

/// Runs `kube.wait-cluster` for the Cluster `inputs` (judge [`ClusterReady`]); output
/// [`KubeWaitClusterOutput`], journalled as
/// `{"phase":"Provisioned","controlPlane":"3/3","machineDeployments":{"<md>":"1/1",…},
/// "nodeRefs":"6/6","packages":{"<pkgi>":"Reconcile succeeded",…}}`.
///
/// Errors: [`StepError::Permanent`] when the Cluster does not exist, for TKG's aborts
/// ("Cluster/\<ns\>/\<name\>: cluster creation failed, reason: …", "… timed out waiting for cluster
/// creation to complete"), a ClusterBootstrap missing after
/// [`super::WaitOptions::bootstrap_timeout`], a core package still failing or not reconciled
/// after [`super::WaitOptions::package_timeout`] ("PackageInstall \<ns\>/\<name\>:
/// \<usefulErrorMessage\>"), and permanent watch errors (401, 403); [`StepError::Transient`]
/// after `MAX_CONSECUTIVE_POLL_ERRORS` consecutive transient watch errors (or failures
/// to open the workload cluster's watch).
pub async fn wait_cluster(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &WorkloadTarget,
) -> Result<KubeWaitClusterOutput, StepError> {
    let opts = provider.wait_options().clone();
    let start = Instant::now();
    let mut judge = ClusterReady::new(
        &inputs.management_cluster,
        &inputs.namespace,
        &inputs.cluster_name,
        opts.clone(),
        opts.report_after(ctx.step.timeout_secs),
        std::time::Duration::ZERO,
    );
    let mut source = ClusterSource::start(provider, inputs).await?;
    let out = drive(
        &mut source,
        &mut judge,
        &ctx.progress,
        &DriveOptions::kube(start),
    )
    .await?;
    tracing::info!(step = %ctx.step.id, cluster = %inputs.cluster_name, "cluster ready");
    Ok(out)
}

//! The health probe of a scheduled apply's soak (issue 8 item 6): one point-in-time reading of
//! a workload cluster, judged by [`tkgops_domain::waves::ClusterHealth`]:
//! - the Cluster's `Ready` condition on the management cluster (Cluster API v1beta1);
//! - its MachineHealthChecks (label `cluster.x-k8s.io/cluster-name`, which the MHC webhook
//!   adds, docs/tanzu-apis.md "MachineHealthCheck"): `expectedMachines - currentHealthy`;
//! - every PackageInstall of the workload cluster: `ReconcileFailed` ones (docs/tanzu-apis.md §4.3).
//!
//! A soak samples health at every poll rather than waiting for a condition, so this is a GET
//! and two LISTs, not a watch.

use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;
use tkgops_domain::executor::StepError;
use tkgops_domain::waves::ClusterHealth;

use super::cluster::{cluster_resource, condition, CLUSTER_NAME_LABEL};
use super::packages::{package_install_resource, reconcile_state, ReconcileState};
use super::{classify, custom_resource, KubeProvider};
use crate::WorkloadTarget;

/// `cluster.x-k8s.io/v1beta1` MachineHealthCheck.
pub fn machine_health_check_resource() -> kube::discovery::ApiResource {
    custom_resource(
        "cluster.x-k8s.io",
        "v1beta1",
        "MachineHealthCheck",
        "machinehealthchecks",
    )
}

fn to_value(o: &DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// Reads the health of workload cluster `target` now (see the module docs).
///
/// Errors: [`StepError::Permanent`] when the Cluster does not exist; the classified errors of
/// the management and workload API calls ([`classify`]); the errors of
/// [`KubeProvider::workload`]. The caller treats an error as "not healthy".
pub async fn cluster_health(
    provider: &KubeProvider,
    target: &WorkloadTarget,
) -> Result<ClusterHealth, StepError> {
    let mgmt = provider
        .management_client_with(&target.management_cluster, target.kubeconfig.as_ref())
        .await?;
    let what = format!("Cluster {}/{}", target.namespace, target.cluster_name);
    let cluster =
        Api::<DynamicObject>::namespaced_with(mgmt.clone(), &target.namespace, &cluster_resource())
            .get_opt(&target.cluster_name)
            .await
            .map_err(|e| classify(&what, &e))?
            .ok_or_else(|| {
                StepError::Permanent(format!(
                    "{what} not found on management cluster '{}'",
                    target.management_cluster
                ))
            })?;
    let cluster = to_value(&cluster);
    let ready_cond = condition(&cluster, "Ready");
    let ready = ready_cond
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True");
    let not_ready = (!ready).then(|| {
        ready_cond
            .map(|c| {
                let get = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or("").to_string();
                match (get("reason"), get("message")) {
                    (r, m) if m.is_empty() => r,
                    (r, m) if r.is_empty() => m,
                    (r, m) => format!("{r}: {m}"),
                }
            })
            .unwrap_or_else(|| "no Ready condition".into())
    });
    let mhcs = Api::<DynamicObject>::namespaced_with(
        mgmt,
        &target.namespace,
        &machine_health_check_resource(),
    )
    .list(&ListParams::default().labels(&format!("{CLUSTER_NAME_LABEL}={}", target.cluster_name)))
    .await
    .map_err(|e| classify(&format!("MachineHealthChecks of {what}"), &e))?;
    let unhealthy_machines = mhcs
        .items
        .iter()
        .map(|m| {
            let v = to_value(m);
            let n = |p: &str| v.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            (n("/status/expectedMachines") - n("/status/currentHealthy")).max(0) as u32
        })
        .sum();
    let wl = provider.workload(target).await?;
    let pkgis = Api::<DynamicObject>::all_with(wl.client, &package_install_resource())
        .list(&ListParams::default())
        .await
        .map_err(|e| {
            classify(
                &format!(
                    "PackageInstalls of workload cluster '{}'",
                    target.cluster_name
                ),
                &e,
            )
        })?;
    let mut failing_packages = Vec::new();
    for p in &pkgis.items {
        if let ReconcileState::Failed(m) = reconcile_state(&to_value(p)) {
            failing_packages.push(format!(
                "{}/{}: {m}",
                p.metadata.namespace.as_deref().unwrap_or(""),
                p.metadata.name.as_deref().unwrap_or("")
            ));
        }
    }
    Ok(ClusterHealth {
        ready,
        not_ready,
        unhealthy_machines,
        packages: pkgis.items.len() as u32,
        failing_packages,
    })
}

impl KubeProvider {
    /// [`cluster_health`] through this provider.
    ///
    /// Errors: as [`cluster_health`].
    pub async fn cluster_health(
        &self,
        target: &WorkloadTarget,
    ) -> Result<ClusterHealth, StepError> {
        cluster_health(self, target).await
    }
}

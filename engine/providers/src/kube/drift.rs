//! The drift scan's reads: a Cluster (the live object and what tkgops's server-side apply
//! would leave, from a `dryRun=All` apply under tkgops's field manager: nothing is stored), and
//! the PackageInstalls of a workload cluster with the digests of their values Secrets.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::Deserialize;
use serde_json::Value;

use super::{apply::apply_error, classify, cluster, KubeProvider, FIELD_MANAGER, OWNER_LABEL};
use k8s_openapi::api::core::v1::Secret;
use tkgops_domain::drift::{values_digest, PackageLive};
use tkgops_domain::executor::StepError;
use tkgops_domain::step::{KubeApplyInputs, PackagesInputs};

/// What the drift scan found for the Cluster of a `kube.apply` step's manifests.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterProbe {
    /// The manifests hold no `cluster.x-k8s.io` Cluster.
    NoCluster,
    /// The Cluster does not exist: drift tkgops reports and never "fixes" by a create.
    Missing {
        /// `Cluster/namespace/name`.
        label: String,
    },
    /// The Cluster exists without this request's ownership label (not tkgops's).
    NotOwned {
        /// `Cluster/namespace/name`.
        label: String,
    },
    /// The Cluster exists: `live` as stored, `desired` as the dry run answered.
    Found {
        /// `Cluster/namespace/name`.
        label: String,
        /// The Cluster as stored.
        live: Value,
        /// The Cluster as tkgops's apply would leave it (the dry run's answer).
        desired: Value,
        /// The field managers the dry run without force conflicted with (their fields were
        /// changed by hand or by another controller; the dry run was repeated with force to
        /// see tkgops's values). Empty when there was no conflict.
        conflicts: Vec<String>,
    },
}

impl KubeProvider {
    /// Reads the Cluster of `inputs.manifests` (a `kube.apply` step's, as the last run
    /// rendered it) on its management cluster and sends it as a server-side dry run
    /// (`dryRun=All`) under tkgops's field manager without force; on an apply conflict (a
    /// field another manager took over, e.g. `kubectl edit`) the dry run is repeated with
    /// force, which stores nothing either, so the answer shows tkgops's values.
    ///
    /// Errors: the management client's and the API's [`StepError`]s ([`classify`]); a dry run
    /// refused other than by a conflict (a webhook denial) is its [`StepError`].
    pub async fn probe_cluster(&self, inputs: &KubeApplyInputs) -> Result<ClusterProbe, StepError> {
        let Some(doc) = serde_yaml::Deserializer::from_str(&inputs.manifests)
            .filter_map(|d| Value::deserialize(d).ok())
            .find(|v| {
                v["kind"] == "Cluster"
                    && v["apiVersion"]
                        .as_str()
                        .is_some_and(|a| a.starts_with("cluster.x-k8s.io/"))
            })
        else {
            return Ok(ClusterProbe::NoCluster);
        };
        let mc = &inputs.target.management_cluster;
        let client = self
            .management_client_with(mc, inputs.target.kubeconfig.as_ref())
            .await?;
        let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let label = format!("Cluster/{ns}/{name}");
        let api: Api<DynamicObject> =
            Api::namespaced_with(client, &ns, &cluster::cluster_resource());
        let Some(live) = api
            .get_opt(&name)
            .await
            .map_err(|e| classify(&format!("{label} on management cluster '{mc}'"), &e))?
        else {
            return Ok(ClusterProbe::Missing { label });
        };
        let live = serde_json::to_value(live).unwrap_or(Value::Null);
        let owner = doc["metadata"]["labels"][OWNER_LABEL].as_str();
        if owner.is_none() || live["metadata"]["labels"][OWNER_LABEL].as_str() != owner {
            return Ok(ClusterProbe::NotOwned { label });
        }
        let mut conflicts = Vec::new();
        let mut force = false;
        let desired = loop {
            let mut params = PatchParams::apply(FIELD_MANAGER).dry_run();
            if force {
                params = params.force();
            }
            match api.patch(&name, &params, &Patch::Apply(&doc)).await {
                Ok(o) => break serde_json::to_value(o).unwrap_or(Value::Null),
                Err(kube::Error::Api(s))
                    if !force && s.code == 409 && s.message.starts_with("Apply failed") =>
                {
                    conflicts.push(s.message.clone());
                    force = true;
                }
                Err(e) => return Err(apply_error(&label, &e)),
            }
        };
        Ok(ClusterProbe::Found {
            label,
            live,
            desired,
            conflicts,
        })
    }
}

impl KubeProvider {
    /// Reads each package of `inputs` (a `packages.rollout` step's, as the last run rendered
    /// it) on its workload cluster: whether its PackageInstall exists, the version it asks for,
    /// and the [`values_digest`] of the `values.yaml` of the `<name>-<namespace>-values` Secret
    /// tkgops renders (the values themselves are never kept). Returns one [`PackageLive`] per
    /// package, in `inputs.packages` order.
    ///
    /// Errors: [`KubeProvider::workload_client`]'s; the reads as [`classify`].
    pub async fn probe_packages(
        &self,
        inputs: &PackagesInputs,
    ) -> Result<Vec<PackageLive>, StepError> {
        let client = self.workload_client(&inputs.target).await?;
        let mut out = Vec::with_capacity(inputs.packages.len());
        for pkg in &inputs.packages {
            let what = format!(
                "PackageInstall {}/{} on workload cluster {}",
                pkg.namespace, pkg.name, inputs.target.cluster_name
            );
            let pkgis: Api<DynamicObject> = Api::namespaced_with(
                client.clone(),
                &pkg.namespace,
                &super::packages::package_install_resource(),
            );
            let Some(pkgi) = pkgis
                .get_opt(&pkg.name)
                .await
                .map_err(|e| classify(&what, &e))?
            else {
                out.push(PackageLive::default());
                continue;
            };
            let version = pkgi
                .data
                .pointer("/spec/packageRef/versionSelection/constraints")
                .and_then(Value::as_str)
                .map(str::to_string);
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &pkg.namespace);
            let secret = format!("{}-{}-values", pkg.name, pkg.namespace);
            let values_digest = secrets
                .get_opt(&secret)
                .await
                .map_err(|e| classify(&format!("the values Secret of {what}"), &e))?
                .and_then(|s| s.data)
                .and_then(|d| d.get("values.yaml").map(|b| values_digest(&b.0)));
            out.push(PackageLive {
                version,
                present: true,
                values_digest,
            });
        }
        Ok(out)
    }
}

/// The changes of the Clusters on one management cluster, for the drift scan's wake-up: read
/// from the provider's shared watch of `cluster.x-k8s.io` Clusters (the one the waits read, so
/// no second watch; docs/drift.md), with each Cluster's `metadata.generation`, which the API
/// server bumps on a change of its `spec` (a hand scale, a `kubectl edit`) and not on a status
/// update. Holding it keeps the watch running.
pub struct ClusterChanges {
    watch: std::sync::Arc<super::watch::SharedWatch>,
    any: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for ClusterChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterChanges")
            .field("ready", &self.watch.ready())
            .finish()
    }
}

impl ClusterChanges {
    /// Waits for the next change of any Cluster on the management cluster (status updates
    /// included: the caller compares generations). Returns `false` when the watch ended (its
    /// provider was replaced and nothing else holds it), `true` otherwise.
    pub async fn changed(&mut self) -> bool {
        self.any.changed().await.is_ok()
    }

    /// Whether the watch has listed the Clusters once (before, [`Self::generation`] knows
    /// none).
    pub fn ready(&self) -> bool {
        self.watch.ready()
    }

    /// The `metadata.generation` of Cluster `namespace/name` as the watch last saw it: `None`
    /// when the watch does not have it (not listed yet, or no such Cluster), `Some(0)` for a
    /// Cluster without a generation.
    pub fn generation(&self, namespace: &str, name: &str) -> Option<i64> {
        self.watch
            .get(namespace, name)
            .map(|v| v["metadata"]["generation"].as_i64().unwrap_or(0))
    }
}

impl KubeProvider {
    /// The changes of the Clusters on the management cluster of `target` (all namespaces),
    /// from the provider's shared Cluster watch, started if no wait started it yet.
    ///
    /// Errors: as [`KubeProvider::management_client_with`] (unknown management cluster,
    /// unreadable kubeconfig).
    pub async fn cluster_changes(
        &self,
        target: &crate::WorkloadTarget,
    ) -> Result<ClusterChanges, StepError> {
        let watch = self
            .management_watch(target, &cluster::cluster_resource())
            .await?;
        let any = watch.subscribe_all();
        Ok(ClusterChanges { watch, any })
    }
}

//! `kube.preflight`: checks what the plan assumed about the management cluster (its
//! `tkgops.yaml` declaration) against the management cluster itself, before anything is written
//! (docs/tkg2-class-based.md §1, §7, §8):
//!
//! 1. **TKG release.** The management cluster's own Cluster (namespace `tkg-system`, label
//!    `cluster-role.tkg.tanzu.vmware.com/management`) carries the annotation `TKGVERSION`
//!    (`v2.2.0`); its major.minor must equal the declared `tkgVersion`, as the Tanzu CLI checks
//!    ("version mismatch between management cluster and cli version", §1 "Version check").
//! 2. **ClusterClass.** The class the Cluster names must exist in the Cluster's namespace: CAPI
//!    1.2 looks it up there, and the object-propagation controller copies it from `tkg-system`
//!    (§1 "Namespace").
//! 3. **TKR.** The `TanzuKubernetesRelease` named after the TKR version must exist and be
//!    `Compatible=True`; incompatible TKRs cannot be resolved (§8).
//! 4. **Identity.** A declared `oidc`/`ldap` identity needs the `kube-public/pinniped-info`
//!    ConfigMap the management cluster publishes; without it workload clusters get `none` (§7).
//!
//! Every mismatch is permanent and names both sides.

use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use super::cluster::condition;
use super::{classify, custom_resource, KubeProvider};
use tkgops_domain::executor::{ProgressSink, StepError};
use tkgops_domain::output::KubePreflightOutput;
use tkgops_domain::step::KubePreflightInputs;
use tkgops_domain::tkg::{tkr_name, TkgVersion};

/// Label of a TKG management cluster's own `Cluster` (docs/tkg2-class-based.md §3.1).
pub const MANAGEMENT_ROLE_LABEL: &str = "cluster-role.tkg.tanzu.vmware.com/management";
/// Annotation on the management cluster's `Cluster` holding its TKG version (`v2.2.0`, §1).
pub const TKG_VERSION_ANNOTATION: &str = "TKGVERSION";

/// `run.tanzu.vmware.com/v1alpha3` TanzuKubernetesRelease (cluster-scoped, §8).
pub fn tkr_resource() -> kube::discovery::ApiResource {
    custom_resource(
        "run.tanzu.vmware.com",
        "v1alpha3",
        "TanzuKubernetesRelease",
        "tanzukubernetesreleases",
    )
}

/// `cluster.x-k8s.io/v1beta1` ClusterClass.
pub fn cluster_class_resource() -> kube::discovery::ApiResource {
    custom_resource(
        "cluster.x-k8s.io",
        "v1beta1",
        "ClusterClass",
        "clusterclasses",
    )
}

fn to_value(o: DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// Runs `kube.preflight` (module docs). Output [`KubePreflightOutput`]:
/// `{"tkgVersion": "v2.2.0", "clusterClass": "...", "tkr": "...", "identity": "pinniped-info"|"none"}`.
///
/// Errors: [`StepError::Permanent`] naming the declared and the actual value for a release
/// mismatch, a missing ClusterClass, a missing or incompatible TKR, a missing `pinniped-info`;
/// API errors as [`classify`] maps them.
pub async fn preflight(
    provider: &KubeProvider,
    progress: &ProgressSink,
    inputs: &KubePreflightInputs,
) -> Result<KubePreflightOutput, StepError> {
    let t = &inputs.target;
    let mc = &t.management_cluster;
    let client = provider
        .management_client_with(mc, t.kubeconfig.as_ref())
        .await?;
    let declared: TkgVersion = inputs
        .tkg_version
        .parse()
        .map_err(|e| StepError::Permanent(format!("management cluster '{mc}': {e}")))?;

    // 1. TKG release.
    let clusters: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "tkg-system",
        &super::cluster::cluster_resource(),
    );
    let mgmt = clusters
        .list(&ListParams::default().labels(MANAGEMENT_ROLE_LABEL))
        .await
        .map_err(|e| {
            provider.classify_mgmt(
                mc,
                &format!("management cluster '{mc}': Clusters in tkg-system"),
                e,
            )
        })?;
    let actual = mgmt
        .items
        .iter()
        .find_map(|c| c.metadata.annotations.as_ref()?.get(TKG_VERSION_ANNOTATION).cloned())
        .ok_or_else(|| {
            StepError::Permanent(format!(
                "management cluster '{mc}' shows no TKG management cluster (no Cluster labelled {MANAGEMENT_ROLE_LABEL} with a {TKG_VERSION_ANNOTATION} annotation in tkg-system); tkgops.yaml declares TKG {declared}"
            ))
        })?;
    match actual.parse::<TkgVersion>() {
        Ok(v) if v == declared => {}
        _ => {
            return Err(StepError::Permanent(format!(
                "version mismatch: management cluster '{mc}' runs TKG {actual}, but tkgops.yaml declares tkgVersion {declared}; correct managementClusters[].tkgVersion on the default branch"
            )))
        }
    }
    progress.report(&format!("management cluster runs TKG {actual}"));

    // 2. ClusterClass in the Cluster's namespace.
    let classes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &t.namespace, &cluster_class_resource());
    let class = &inputs.cluster_class;
    let found = classes
        .get_opt(class)
        .await
        .map_err(|e| classify(&format!("ClusterClass/{}/{class}", t.namespace), &e))?;
    if found.is_none() {
        return Err(StepError::Permanent(format!(
            "ClusterClass {class} does not exist in namespace {} of management cluster '{mc}' (TKG {declared} installs {} in tkg-system and copies it into workload namespaces); check managementClusters[].clusterClass and the namespace",
            t.namespace,
            declared.cluster_class()
        )));
    }

    // 3. TKR exists and is Compatible=True.
    let tkrs: Api<DynamicObject> = Api::all_with(client.clone(), &tkr_resource());
    let name = tkr_name(&inputs.tkr);
    let tkr = tkrs
        .get_opt(&name)
        .await
        .map_err(|e| classify(&format!("TanzuKubernetesRelease/{name}"), &e))?
        .map(to_value);
    let Some(tkr) = tkr else {
        return Err(StepError::Permanent(format!(
            "TKR {} (TanzuKubernetesRelease {name}) does not exist on management cluster '{mc}' (TKG {actual}); pick one it offers (kubectl get tkr)",
            inputs.tkr
        )));
    };
    let compatible = condition(&tkr, "Compatible")
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True");
    if !compatible {
        return Err(StepError::Permanent(format!(
            "TKR {} is not Compatible with management cluster '{mc}' (TKG {actual}); the TKR resolver cannot use it: pick a compatible TKR (kubectl get tkr)",
            inputs.tkr
        )));
    }

    // 4. Identity published by the management cluster.
    let identity = match inputs.identity_management_type.as_deref() {
        Some("oidc") | Some("ldap") => {
            let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(client.clone(), "kube-public");
            let info = cms
                .get_opt("pinniped-info")
                .await
                .map_err(|e| classify("ConfigMap/kube-public/pinniped-info", &e))?;
            if info.is_none() {
                return Err(StepError::Permanent(format!(
                    "tkgops.yaml declares identityManagementType {} for management cluster '{mc}', but it publishes no kube-public/pinniped-info ConfigMap: workload clusters would get identity management none",
                    inputs.identity_management_type.as_deref().unwrap_or("")
                )));
            }
            "pinniped-info"
        }
        _ => "none",
    };
    Ok(KubePreflightOutput {
        tkg_version: actual,
        cluster_class: class.clone(),
        tkr: inputs.tkr.clone(),
        identity: identity.to_string(),
    })
}

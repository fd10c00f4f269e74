//! Seed data: the TKG 1.6 ClusterClass `tkg-aws-default`, the TanzuKubernetesReleases of the
//! management cluster, and the `tanzu-standard` package repository with its package catalog.

use serde_json::{json, Map, Value};
use tracing::warn;

use super::super::EmulatedCluster;
use super::util::*;
use super::ControllerError;

/// One package of the TKG 1.6 `tanzu-standard` repository (tanzu-apis.md §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandardPackage {
    /// The package `refName`, e.g. `cert-manager.tanzu.vmware.com`.
    pub ref_name: &'static str,
    /// The package version shipped with TKG 1.6, e.g. `1.7.2+vmware.1-tkg.1`.
    pub version: &'static str,
    /// Human-readable name (`PackageMetadata.spec.displayName`).
    pub display_name: &'static str,
}

/// The TKG 1.6 standard package catalog (repository `v1.6.0`).
pub const STANDARD_PACKAGES: &[StandardPackage] = &[
    StandardPackage {
        ref_name: "cert-manager.tanzu.vmware.com",
        version: "1.7.2+vmware.1-tkg.1",
        display_name: "cert-manager",
    },
    StandardPackage {
        ref_name: "contour.tanzu.vmware.com",
        version: "1.20.2+vmware.1-tkg.1",
        display_name: "contour",
    },
    StandardPackage {
        ref_name: "fluent-bit.tanzu.vmware.com",
        version: "1.8.15+vmware.1-tkg.1",
        display_name: "fluent-bit",
    },
    StandardPackage {
        ref_name: "prometheus.tanzu.vmware.com",
        version: "2.36.2+vmware.1-tkg.1",
        display_name: "prometheus",
    },
    StandardPackage {
        ref_name: "grafana.tanzu.vmware.com",
        version: "7.5.16+vmware.1-tkg.1",
        display_name: "grafana",
    },
    StandardPackage {
        ref_name: "harbor.tanzu.vmware.com",
        version: "2.5.3+vmware.1-tkg.1",
        display_name: "harbor",
    },
    StandardPackage {
        ref_name: "external-dns.tanzu.vmware.com",
        version: "0.11.0+vmware.1-tkg.2",
        display_name: "external-dns",
    },
    StandardPackage {
        ref_name: "multus-cni.tanzu.vmware.com",
        version: "3.8.0+vmware.1-tkg.1",
        display_name: "multus-cni",
    },
    StandardPackage {
        ref_name: "whereabouts.tanzu.vmware.com",
        version: "0.5.1+vmware.2-tkg.1",
        display_name: "whereabouts",
    },
];

/// kapp-controller's global packaging namespace: packages here are visible in every namespace.
pub const PACKAGING_GLOBAL_NAMESPACE: &str = "tanzu-package-repo-global";
/// Name of the standard package repository on every TKG 1.6 cluster.
pub const STANDARD_REPO_NAME: &str = "tanzu-standard";
/// Image of the TKG 1.6 standard package repository bundle.
pub const STANDARD_REPO_IMAGE: &str =
    "projects.registry.vmware.com/tkg/packages/standard/repo:v1.6.0";
/// Name of the TKG 1.6 ClusterClass for AWS.
pub const CLUSTER_CLASS_NAME: &str = "tkg-aws-default";
/// The TanzuKubernetesReleases seeded on the management cluster: (TKR name, TKR version, Kubernetes version).
pub const TANZU_KUBERNETES_RELEASES: &[(&str, &str, &str)] = &[
    (
        "v1.23.8---vmware.2-tkg.1",
        "v1.23.8+vmware.2-tkg.1",
        "v1.23.8+vmware.2",
    ),
    (
        "v1.22.11---vmware.2-tkg.1",
        "v1.22.11+vmware.2-tkg.1",
        "v1.22.11+vmware.2",
    ),
];

fn variable(name: &str, required: bool, schema: Value) -> Value {
    json!({"name": name, "required": required, "schema": {"openAPIV3Schema": schema}})
}

/// The ClusterClass `tkg-aws-default` as TKG 1.6 installs it (cconly plans, tanzu-apis.md §2.5).
pub(crate) fn cluster_class(namespace: &str) -> Value {
    let cc = CLUSTER_CLASS_NAME;
    let infra = "infrastructure.cluster.x-k8s.io/v1beta1";
    let subnet = json!({"type": "object", "properties": {"id": {"type": "string"}, "cidr": {"type": "string"}}});
    let root_volume =
        json!({"type": "object", "properties": {"sizeGiB": {"type": "integer", "default": 80}}});
    let variables = vec![
        variable("region", true, json!({"type": "string"})),
        variable("sshKeyName", true, json!({"type": "string", "default": ""})),
        variable(
            "identityRef",
            false,
            json!({"type": "object", "properties": {
            "kind": {"type": "string", "default": "AWSClusterRoleIdentity"}, "name": {"type": "string"}}}),
        ),
        variable(
            "bastion",
            false,
            json!({"type": "object", "properties": {"enabled": {"type": "boolean", "default": true}}}),
        ),
        variable(
            "loadBalancerSchemeInternal",
            false,
            json!({"type": "boolean", "default": false}),
        ),
        variable(
            "cni",
            false,
            json!({"type": "string", "default": "antrea", "enum": ["antrea", "calico", "none"]}),
        ),
        variable(
            "network",
            false,
            json!({"type": "object", "properties": {
            "vpc": {"type": "object", "properties": {"existingID": {"type": "string"}, "cidr": {"type": "string", "default": "10.0.0.0/16"}}},
            "subnets": {"type": "array", "items": {"type": "object", "properties": {
                "az": {"type": "string"}, "private": subnet, "public": subnet}}},
            "securityGroupOverrides": {"type": "object", "properties": {
                "bastion": {"type": "string"}, "apiServerLB": {"type": "string"}, "lb": {"type": "string"},
                "controlplane": {"type": "string"}, "node": {"type": "string"}}}}}),
        ),
        variable(
            "controlPlane",
            false,
            json!({"type": "object", "properties": {
            "instanceType": {"type": "string", "default": "t3.large"}, "rootVolume": root_volume,
            "nodeLabels": {"type": "array", "items": {"type": "object"}}}}),
        ),
        variable(
            "worker",
            false,
            json!({"type": "object", "properties": {
            "instanceType": {"type": "string", "default": "m5.large"}, "rootVolume": root_volume}}),
        ),
        variable(
            "imageRepository",
            false,
            json!({"type": "object", "properties": {
            "host": {"type": "string"}, "tlsCertificateValidation": {"type": "boolean", "default": true}}}),
        ),
        variable(
            "trust",
            false,
            json!({"type": "object", "properties": {"additionalTrustedCAs": {"type": "array", "items": {"type": "object"}}}}),
        ),
        variable(
            "auditLogging",
            false,
            json!({"type": "object", "properties": {"enabled": {"type": "boolean", "default": false}}}),
        ),
        variable(
            "nodePoolLabels",
            false,
            json!({"type": "array", "items": {"type": "object"}}),
        ),
        variable(
            "TKR_DATA",
            false,
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        ),
    ];
    json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1",
        "kind": "ClusterClass",
        "metadata": {"name": cc, "namespace": namespace},
        "spec": {
            "controlPlane": {
                "ref": {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlaneTemplate",
                        "name": format!("{cc}-kcp"), "namespace": namespace},
                "machineInfrastructure": {"ref": {"apiVersion": infra, "kind": "AWSMachineTemplate",
                        "name": format!("{cc}-control-plane"), "namespace": namespace}},
            },
            "infrastructure": {"ref": {"apiVersion": infra, "kind": "AWSClusterTemplate",
                        "name": format!("{cc}-cluster"), "namespace": namespace}},
            "workers": {"machineDeployments": [{
                "class": "tkg-worker",
                "template": {
                    "bootstrap": {"ref": {"apiVersion": "bootstrap.cluster.x-k8s.io/v1beta1", "kind": "KubeadmConfigTemplate",
                        "name": format!("{cc}-md-0"), "namespace": namespace}},
                    "infrastructure": {"ref": {"apiVersion": infra, "kind": "AWSMachineTemplate",
                        "name": format!("{cc}-worker"), "namespace": namespace}},
                },
            }]},
            "variables": variables,
        }
    })
}

/// Registers the Cluster API types and creates the ClusterClass and TanzuKubernetesReleases.
pub(crate) fn seed_management(cluster: &EmulatedCluster) -> Result<(), ControllerError> {
    cluster.register_capi_types();
    ensure_namespace(cluster, "default")?;
    create_if_absent(cluster, &gvr_cluster_class(), cluster_class("default"))?;
    for (name, version, k8s) in TANZU_KUBERNETES_RELEASES {
        let tkr = json!({
            "apiVersion": "run.tanzu.vmware.com/v1alpha3",
            "kind": "TanzuKubernetesRelease",
            "metadata": {"name": name, "labels": {"os-name": "ubuntu", "os-type": "linux"}},
            "spec": {
                "version": version,
                "kubernetes": {"version": k8s, "imageRepository": "projects.registry.vmware.com/tkg"},
                "osImages": [], "bootstrapPackages": [],
            }
        });
        let stored = create_if_absent(cluster, &gvr_tkr(), tkr)?;
        let mut status = Map::new();
        status.insert(
            "conditions".into(),
            json!([cond_true("Ready"), cond_true("Compatible")]),
        );
        if stored.pointer("/status/conditions").is_none() {
            write_status(cluster, &gvr_tkr(), &stored, status)?;
        }
    }
    Ok(())
}

/// The successful PackageRepository status kapp-controller writes (tanzu-apis.md §4.1, §4.3).
pub(crate) fn repo_succeeded_status(generation: i64, successes: i64) -> Map<String, Value> {
    let now = now_rfc3339();
    let mut st = Map::new();
    st.insert(
        "fetch".into(),
        json!({"exitCode": 0, "startedAt": now, "updatedAt": now}),
    );
    st.insert("template".into(), json!({"exitCode": 0, "updatedAt": now}));
    st.insert(
        "deploy".into(),
        json!({"exitCode": 0, "startedAt": now, "updatedAt": now, "finished": true}),
    );
    st.insert(
        "conditions".into(),
        json!([{"type": "ReconcileSucceeded", "status": "True"}]),
    );
    st.insert("consecutiveReconcileSuccesses".into(), json!(successes));
    st.insert("consecutiveReconcileFailures".into(), json!(0));
    st.insert("friendlyDescription".into(), json!("Reconcile succeeded"));
    st.insert("observedGeneration".into(), json!(generation));
    st
}

/// Seeds a new workload cluster: kapp types, the `tanzu-standard` PackageRepository (reconciled) and,
/// when `standard_packages` is set, one `Package` (plus `PackageMetadata`) per TKG 1.6 standard package.
pub(crate) fn seed_workload(
    cluster: &EmulatedCluster,
    standard_packages: bool,
) -> Result<(), ControllerError> {
    cluster.register_kapp_types();
    ensure_namespace(cluster, PACKAGING_GLOBAL_NAMESPACE)?;
    let repo = json!({
        "apiVersion": "packaging.carvel.dev/v1alpha1",
        "kind": "PackageRepository",
        "metadata": {
            "name": STANDARD_REPO_NAME,
            "namespace": PACKAGING_GLOBAL_NAMESPACE,
            "annotations": {
                "tkg.tanzu.vmware.com/addon-type": "addons-management/standard-package-repo",
                "tanzu.vmware.com/owner": "tkg",
            },
        },
        "spec": {"fetch": {"imgpkgBundle": {"image": STANDARD_REPO_IMAGE}}},
    });
    let stored = create_if_absent(cluster, &gvr_package_repository(), repo)?;
    if standard_packages {
        for p in STANDARD_PACKAGES {
            create_if_absent(cluster, &gvr_package(), package_object(p))?;
            // PackageMetadata is a convenience for `tanzu package available list`-style readers; best effort.
            if let Err(err) =
                create_if_absent(cluster, &gvr_package_metadata(), package_metadata_object(p))
            {
                warn!(cluster = cluster.name(), package = p.ref_name, error = %err, "could not create PackageMetadata");
            }
        }
    }
    if stored.get("status").is_none() {
        write_status(
            cluster,
            &gvr_package_repository(),
            &stored,
            repo_succeeded_status(generation_of(&stored), 1),
        )?;
    }
    Ok(())
}

fn repo_ref_annotation() -> Value {
    json!({"packaging.carvel.dev/package-repository-ref": format!("{PACKAGING_GLOBAL_NAMESPACE}/{STANDARD_REPO_NAME}")})
}

fn package_object(p: &StandardPackage) -> Value {
    let (image_repo, tag) = (
        format!(
            "projects.registry.vmware.com/tkg/packages/standard/{}",
            p.display_name
        ),
        format!("v{}", p.version.replace('+', "_")),
    );
    json!({
        "apiVersion": "data.packaging.carvel.dev/v1alpha1",
        "kind": "Package",
        "metadata": {
            "name": format!("{}.{}", p.ref_name, p.version),
            "namespace": PACKAGING_GLOBAL_NAMESPACE,
            "annotations": repo_ref_annotation(),
        },
        "spec": {
            "refName": p.ref_name,
            "version": p.version,
            "releasedAt": "2022-08-31T00:00:00Z",
            "licenses": ["VMware’s End User License Agreement (Underlying OSS license: Apache License 2.0)"],
            "template": {"spec": {
                "fetch": [{"imgpkgBundle": {"image": format!("{image_repo}:{tag}")}}],
                "template": [{"ytt": {"paths": ["config/"]}}, {"kbld": {"paths": ["-", ".imgpkg/images.yml"]}}],
                "deploy": [{"kapp": {}}],
            }},
        },
    })
}

fn package_metadata_object(p: &StandardPackage) -> Value {
    json!({
        "apiVersion": "data.packaging.carvel.dev/v1alpha1",
        "kind": "PackageMetadata",
        "metadata": {"name": p.ref_name, "namespace": PACKAGING_GLOBAL_NAMESPACE, "annotations": repo_ref_annotation()},
        "spec": {"displayName": p.display_name, "shortDescription": format!("{} packaged for TKG", p.display_name),
                 "providerName": "VMware"},
    })
}

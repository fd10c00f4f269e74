//! Seed data of the emulated TKG 2.x management cluster (docs/tkg2-class-based.md): the AWS
//! ClusterClass per TKG version (in `tkg-system`, propagated into the other namespaces), the
//! TanzuKubernetesReleases and OSImages, the management cluster's own Cluster and
//! `kube-public/pinniped-info`; and the workload clusters' `tanzu-standard` package repository.

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use super::super::EmulatedCluster;
use super::util::*;
use super::ControllerError;

/// One package of the TKG 1.6 `tanzu-standard` repository (docs/tanzu-apis.md §4.4).
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
/// A TKG 2.x release of the emulated management cluster; it decides the ClusterClass, the
/// compatible TanzuKubernetesReleases and the Cluster API admission behaviour
/// (docs/tkg2-class-based.md §1, §4, §9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TkgVersion {
    /// TKG 2.1 (CAPI 1.2.8, class `tkg-aws-default-v1.0.0`).
    V2_1,
    /// TKG 2.2 (CAPI 1.2.8, class `tkg-aws-default-v1.0.0` plus `additionalImageRegistries`).
    #[default]
    V2_2,
    /// TKG 2.3. **Unverified** (§1 "[≥2.3 unverified]"): class `tkg-aws-default-v1.1.0`, the 2.2
    /// schema declaring `securityGroupOverrides.controlPlane`, CAPI ≥1.3 unknown-field rejection.
    V2_3,
    /// TKG 2.4. **Unverified**, as 2.3 with class `tkg-aws-default-v1.1.1`.
    V2_4,
}

impl TkgVersion {
    /// Every supported version, oldest first.
    pub const ALL: [TkgVersion; 4] = [Self::V2_1, Self::V2_2, Self::V2_3, Self::V2_4];

    /// Parses `"2.2"`, `"v2.2"` or `"v2.2.0"`; `None` for anything else (e.g. 1.6 or 2.5, which
    /// has no AWS support, §9).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().trim_start_matches('v');
        let mm: Vec<&str> = s.split('.').take(2).collect();
        match mm.as_slice() {
            ["2", "1"] => Some(Self::V2_1),
            ["2", "2"] => Some(Self::V2_2),
            ["2", "3"] => Some(Self::V2_3),
            ["2", "4"] => Some(Self::V2_4),
            _ => None,
        }
    }

    /// `"2.1"` … `"2.4"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2_1 => "2.1",
            Self::V2_2 => "2.2",
            Self::V2_3 => "2.3",
            Self::V2_4 => "2.4",
        }
    }

    /// The management cluster's `TKGVERSION` annotation, e.g. `v2.2.0`.
    pub fn tkg_version_annotation(self) -> String {
        format!("v{}.0", self.as_str())
    }

    /// The default AWS ClusterClass: `tkg-aws-default-v1.0.0` for 2.1/2.2 (§1), assumed
    /// `tkg-aws-default-v1.1.0` for 2.3 and `tkg-aws-default-v1.1.1` for 2.4 (unverified).
    pub fn cluster_class(self) -> &'static str {
        match self {
            Self::V2_1 | Self::V2_2 => "tkg-aws-default-v1.0.0",
            Self::V2_3 => "tkg-aws-default-v1.1.0",
            Self::V2_4 => "tkg-aws-default-v1.1.1",
        }
    }

    /// The compatible TKR versions (newest first), identical to tkgops' plan-time table.
    pub fn compatible_tkrs(self) -> &'static [&'static str] {
        match self {
            Self::V2_1 => &[
                "v1.24.9+vmware.1-tkg.1",
                "v1.23.15+vmware.1-tkg.1",
                "v1.22.17+vmware.1-tkg.1",
            ],
            Self::V2_2 => &[
                "v1.25.7+vmware.2-tkg.1",
                "v1.24.11+vmware.1-tkg.1",
                "v1.23.17+vmware.1-tkg.1",
            ],
            Self::V2_3 => &[
                "v1.26.5+vmware.2-tkg.1",
                "v1.25.10+vmware.2-tkg.1",
                "v1.24.14+vmware.1-tkg.1",
            ],
            Self::V2_4 => &[
                "v1.27.5+vmware.1-tkg.1",
                "v1.26.8+vmware.1-tkg.1",
                "v1.25.13+vmware.1-tkg.1",
            ],
        }
    }

    /// Whether Cluster API rejects variable fields the schema does not declare (CAPI ≥1.3, §4 row
    /// "unknown nested field"): false for 2.1/2.2 (CAPI 1.2.8), assumed true for 2.3/2.4.
    pub fn rejects_unknown_fields(self) -> bool {
        matches!(self, Self::V2_3 | Self::V2_4)
    }

    /// The casing of the control plane key the class schema declares under
    /// `network.securityGroupOverrides`: `controlplane` in v1.0.0 (the casing trap, §2 network
    /// notes), assumed `controlPlane` in the 2.3/2.4 classes.
    pub fn control_plane_sg_key(self) -> &'static str {
        match self {
            Self::V2_1 | Self::V2_2 => "controlplane",
            Self::V2_3 | Self::V2_4 => "controlPlane",
        }
    }
}

/// A TKR present on every emulated management cluster but `Compatible=False` (labelled
/// `incompatible`, so the resolver never picks it): TKG 1.6's default TKR (§8).
pub const INCOMPATIBLE_TKR: &str = "v1.23.8+vmware.2-tkg.1";

/// The AWS regions every seeded TKR has OSImages for (ubuntu 20.04 and amazon 2, amd64).
pub const OSIMAGE_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-1",
    "ap-northeast-1",
];

/// OS images per TKR: (os-name, os-version, short form used in object names).
const OS_IMAGES: &[(&str, &str, &str)] = &[
    ("ubuntu", "20.04", "ubuntu-2004"),
    ("amazon", "2", "amazon-2"),
];

/// Namespace of the ClusterClass source and the management cluster's own Cluster (§1).
pub const TKG_SYSTEM_NAMESPACE: &str = "tkg-system";
/// Annotation naming the TKR selector (`""` selects any TKR), on Clusters and ClusterClasses (§4).
pub const RESOLVE_TKR_ANNOTATION: &str = "run.tanzu.vmware.com/resolve-tkr";
/// Annotation on the topology control plane / MD metadata (or the class) selecting the OSImage (§3.2).
pub const RESOLVE_OS_IMAGE_ANNOTATION: &str = "run.tanzu.vmware.com/resolve-os-image";
/// Label the TKR resolver sets on a Cluster: the resolved TKR name (§4).
pub const TKR_LABEL: &str = "run.tanzu.vmware.com/tkr";
/// Namespaces the object-propagation controller never copies the ClusterClass into (§1), besides
/// namespaces labelled `cluster.x-k8s.io/provider` and `tkg-system` itself (the source).
pub const PROPAGATION_EXCLUDED_NAMESPACES: &[&str] = &[
    "cert-manager",
    "kube-node-lease",
    "kube-public",
    "kube-system",
    "tanzu-auth",
    "tkg-system-public",
    "tkg-system-telemetry",
    "tkr-system",
    "avi-system",
    "tkg-system-networking",
    "secretgen-controller",
];

/// The values of the management cluster's configuration the emulated one is seeded from.
#[derive(Clone, Debug)]
pub struct ManagementSeed {
    /// The TKG release (class, TKRs, admission behaviour). Default 2.2.
    pub tkg_version: TkgVersion,
    /// Name of the management cluster's own Cluster object in `tkg-system`. Default `tkg-mgmt`.
    pub name: String,
    /// `AWS_REGION`: default of the class variable `region`. Default `us-west-2`.
    pub region: String,
    /// `AWS_SSH_KEY_NAME`: default of `sshKeyName`. Default `tkg-mgmt-key`.
    pub ssh_key_name: String,
    /// `CNI`: default of `cni`. Default `antrea`.
    pub cni: String,
    /// `BASTION_HOST_ENABLED`: default of `bastion.enabled`. Default `true`.
    pub bastion_enabled: bool,
    /// Pinniped supervisor issuer URL: when set, ConfigMap `kube-public/pinniped-info` exists
    /// (identity management via Pinniped, §7). Default `None`.
    pub pinniped_issuer: Option<String>,
}

impl Default for ManagementSeed {
    fn default() -> Self {
        ManagementSeed {
            tkg_version: TkgVersion::default(),
            name: "tkg-mgmt".into(),
            region: "us-west-2".into(),
            ssh_key_name: "tkg-mgmt-key".into(),
            cni: "antrea".into(),
            bastion_enabled: true,
            pinniped_issuer: None,
        }
    }
}

/// The name of a TKR, or the label form of a version: `v1.25.7+vmware.2-tkg.1` →
/// `v1.25.7---vmware.2-tkg.1` (`+` becomes `---`, §1).
pub fn tkr_name(version: &str) -> String {
    version.replace('+', "---")
}

/// The Kubernetes version of a TKR version: `v1.25.7+vmware.2-tkg.1` → `v1.25.7+vmware.2`.
pub fn tkr_kubernetes_version(tkr_version: &str) -> String {
    match tkr_version.rfind("-tkg.") {
        Some(i) => tkr_version[..i].to_string(),
        None => tkr_version.to_string(),
    }
}

/// The version-prefix labels of a version (§8): for `v1.25.7+vmware.2-tkg.1` these are `v1`,
/// `v1.25`, `v1.25.7`, `v1.25.7---vmware.2` and `v1.25.7---vmware.2-tkg.1`.
pub fn version_prefix_labels(version: &str) -> Vec<String> {
    let (core, build) = version.split_once('+').unwrap_or((version, ""));
    let mut out = Vec::new();
    let parts: Vec<&str> = core.split('.').collect();
    for i in 1..=parts.len() {
        out.push(parts[..i].join("."));
    }
    if !build.is_empty() {
        let mut acc = String::new();
        for (i, seg) in build.split('-').enumerate() {
            if i > 0 {
                acc.push('-');
            }
            acc.push_str(seg);
            out.push(format!("{core}---{acc}"));
        }
    }
    out
}

/// The AMI id (`ami-0` + 16 digits, deterministic in the TKR version, OS name and region) of one
/// seeded OSImage; it is also the OSImage's `ami-id` label (the `ami-<ref key>` rule, §4).
pub fn ami_id(tkr_version: &str, os_name: &str, region: &str) -> String {
    format!(
        "ami-0{}",
        &digits(&format!("{tkr_version}/{os_name}/{region}"), 16)
    )
}

/// The real variable schemas of `tkg-aws-default-v1.0.0` (fixture restated from tanzu-framework
/// `packages/tkg-clusterclass-aws/bundle/config/upstream/base.yaml` and
/// `overlay-kube-apiserver-admission.yaml`; the fixture names its sources).
const CLASS_VARIABLES_FIXTURE: &str =
    include_str!("fixtures/tkg-aws-default-v1.0.0-variables.yaml");

/// The `spec.variables` of the AWS ClusterClass (docs/tkg2-class-based.md §2): the fixture
/// [`CLASS_VARIABLES_FIXTURE`] with the management cluster's defaults from `seed` (`region`,
/// `sshKeyName`, `cni`, `bastion`), TKG 2.2's `additionalImageRegistries`
/// (`TF22:CCAWS/base.yaml:301-317`) and the assumed 2.3/2.4 casing of the control plane
/// security group key. An unparsable fixture (a build defect, covered by the unit tests) gives
/// no variables.
pub(crate) fn class_variables(seed: &ManagementSeed) -> Vec<Value> {
    let v = seed.tkg_version;
    let mut vars: Vec<Value> = serde_yaml::from_str(CLASS_VARIABLES_FIXTURE).unwrap_or_default();
    for var in vars.iter_mut() {
        let name = var
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some(schema) = var.pointer_mut("/schema/openAPIV3Schema") else {
            continue;
        };
        match name.as_str() {
            "region" => schema["default"] = json!(seed.region),
            "sshKeyName" => schema["default"] = json!(seed.ssh_key_name),
            "cni" => schema["default"] = json!(seed.cni),
            "bastion" => schema["default"] = json!({"enabled": seed.bastion_enabled}),
            "network" => {
                let key = v.control_plane_sg_key();
                if let Some(sg) = schema
                    .pointer_mut("/properties/securityGroupOverrides/properties")
                    .and_then(Value::as_object_mut)
                {
                    if let Some(s) = sg.remove("controlplane") {
                        sg.insert(key.to_string(), s);
                    }
                }
            }
            _ => {}
        }
    }
    if v != TkgVersion::V2_1 {
        vars.push(json!({"name": "additionalImageRegistries", "required": false, "schema": {"openAPIV3Schema": {
            "type": "array", "items": {
            "type": "object", "required": ["host"], "properties": {
                "host": {"type": "string"}, "skipTlsVerify": {"type": "boolean", "default": false},
                "caCert": {"type": "string"}}}}}}));
    }
    vars
}

/// The class-level MachineHealthCheck (§5): management defaults `MHC_*` and `NODE_STARTUP_TIMEOUT`.
fn class_mhc() -> Value {
    json!({
        "maxUnhealthy": "100%",
        "nodeStartupTimeout": "20m0s",
        "unhealthyConditions": [
            {"type": "Ready", "status": "Unknown", "timeout": "5m0s"},
            {"type": "Ready", "status": "False", "timeout": "12m0s"},
        ],
    })
}

/// The AWS ClusterClass of `seed.tkg_version` in `namespace` (§1, §2, §5); templates are named but
/// not created.
pub(crate) fn cluster_class(seed: &ManagementSeed, namespace: &str) -> Value {
    let cc = seed.tkg_version.cluster_class();
    let infra = "infrastructure.cluster.x-k8s.io/v1beta2";
    json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1",
        "kind": "ClusterClass",
        "metadata": {"name": cc, "namespace": namespace, "annotations": {RESOLVE_TKR_ANNOTATION: ""}},
        "spec": {
            "controlPlane": {
                "ref": {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlaneTemplate",
                        "name": format!("{cc}-kcp"), "namespace": namespace},
                "machineInfrastructure": {"ref": {"apiVersion": infra, "kind": "AWSMachineTemplate",
                        "name": format!("{cc}-control-plane"), "namespace": namespace}},
                "machineHealthCheck": class_mhc(),
            },
            "infrastructure": {"ref": {"apiVersion": infra, "kind": "AWSClusterTemplate",
                        "name": format!("{cc}-cluster"), "namespace": namespace}},
            "workers": {"machineDeployments": [{
                "class": "tkg-worker",
                "template": {
                    "bootstrap": {"ref": {"apiVersion": "bootstrap.cluster.x-k8s.io/v1beta1", "kind": "KubeadmConfigTemplate",
                        "name": format!("{cc}-md-config"), "namespace": namespace}},
                    "infrastructure": {"ref": {"apiVersion": infra, "kind": "AWSMachineTemplate",
                        "name": format!("{cc}-worker"), "namespace": namespace}},
                },
                "machineHealthCheck": class_mhc(),
            }]},
            "variables": class_variables(seed),
        }
    })
}

/// Whether the object-propagation controller copies ClusterClasses into this namespace (§1).
pub(crate) fn propagates_into(ns: &Value) -> bool {
    let name = name_of(ns).unwrap_or("");
    name != TKG_SYSTEM_NAMESPACE
        && !PROPAGATION_EXCLUDED_NAMESPACES.contains(&name)
        && label(ns, "cluster.x-k8s.io/provider").is_none()
        && ns.pointer("/metadata/deletionTimestamp").is_none()
}

/// The object-propagation controller: copies every ClusterClass of `tkg-system` into every
/// namespace it propagates into (§1), keeping the copies equal to the source.
pub(crate) fn propagate_classes(cluster: &EmulatedCluster) -> Result<(), ControllerError> {
    let sources = cluster.list(&gvr_cluster_class(), Some(TKG_SYSTEM_NAMESPACE));
    if sources.is_empty() {
        return Ok(());
    }
    for ns in cluster.list(&gvr_namespace(), None) {
        if !propagates_into(&ns) {
            continue;
        }
        let target = name_of(&ns).unwrap_or_default();
        for src in &sources {
            let name = name_of(src).unwrap_or_default();
            let mut copy = json!({
                "apiVersion": "cluster.x-k8s.io/v1beta1",
                "kind": "ClusterClass",
                "metadata": {"name": name, "namespace": target,
                             "annotations": src.pointer("/metadata/annotations").cloned().unwrap_or(json!({}))},
                "spec": src.get("spec").cloned().unwrap_or(json!({})),
            });
            for r in [
                "/spec/controlPlane/ref",
                "/spec/controlPlane/machineInfrastructure/ref",
                "/spec/infrastructure/ref",
            ] {
                if let Some(m) = copy.pointer_mut(r).and_then(Value::as_object_mut) {
                    m.insert("namespace".into(), json!(target));
                }
            }
            match cluster.get(&gvr_cluster_class(), Some(target), name) {
                None => {
                    if let Err(err) = cluster.create(&gvr_cluster_class(), copy) {
                        debug!(namespace = target, error = %err, "ClusterClass not propagated");
                    }
                }
                Some(existing) if existing.get("spec") != copy.get("spec") => {
                    cluster.patch_merge(
                        &gvr_cluster_class(),
                        Some(target),
                        name,
                        json!({"spec": copy["spec"]}),
                    )?;
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn tkr_object(version: &str, compatible: bool) -> Value {
    let k8s = tkr_kubernetes_version(version);
    let name = tkr_name(version);
    let mut labels = Map::new();
    for l in version_prefix_labels(version) {
        labels.insert(tkr_name(&l), json!(""));
    }
    if !compatible {
        labels.insert("incompatible".into(), json!(""));
    }
    let os_images: Vec<Value> = OS_IMAGES
        .iter()
        .flat_map(|(_, _, short)| {
            OSIMAGE_REGIONS
                .iter()
                .map(move |r| json!({"name": osimage_name(version, short, r)}))
        })
        .collect();
    json!({
        "apiVersion": "run.tanzu.vmware.com/v1alpha3",
        "kind": "TanzuKubernetesRelease",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "version": version,
            "kubernetes": {
                "version": k8s,
                "imageRepository": "projects.registry.vmware.com/tkg",
                "etcd": {"imageTag": "v3.5.6_vmware.9"},
                "coredns": {"imageTag": "v1.9.3_vmware.8"},
                "pause": {"imageTag": "3.8"},
            },
            "osImages": os_images,
            "bootstrapPackages": [],
        }
    })
}

fn osimage_name(tkr_version: &str, os_short: &str, region: &str) -> String {
    format!("{}-{os_short}-amd64-{region}", tkr_name(tkr_version))
}

fn osimage_object(tkr_version: &str, os: &(&str, &str, &str), region: &str) -> Value {
    let k8s = tkr_kubernetes_version(tkr_version);
    let (os_name, os_version, short) = *os;
    let ami = ami_id(tkr_version, os_name, region);
    let mut labels = Map::new();
    for l in version_prefix_labels(&k8s) {
        labels.insert(tkr_name(&l), json!(""));
    }
    for (k, v) in [
        ("os-type", "linux"),
        ("os-name", os_name),
        ("os-version", os_version),
        ("os-arch", "amd64"),
        ("image-type", "ami"),
        ("ami-region", region),
        ("ami-id", ami.as_str()),
    ] {
        labels.insert(k.into(), json!(v));
    }
    json!({
        "apiVersion": "run.tanzu.vmware.com/v1alpha3",
        "kind": "OSImage",
        "metadata": {"name": osimage_name(tkr_version, short, region), "labels": labels},
        "spec": {
            "kubernetesVersion": k8s,
            "os": {"type": "linux", "name": os_name, "version": os_version, "arch": "amd64"},
            "image": {"type": "ami", "ref": {"id": ami, "region": region}},
        }
    })
}

fn seed_tkr(
    cluster: &EmulatedCluster,
    version: &str,
    compatible: bool,
) -> Result<(), ControllerError> {
    for os in OS_IMAGES {
        for r in OSIMAGE_REGIONS {
            create_if_absent(cluster, &gvr_osimage(), osimage_object(version, os, r))?;
        }
    }
    let stored = create_if_absent(cluster, &gvr_tkr(), tkr_object(version, compatible))?;
    if stored.pointer("/status/conditions").is_none() {
        let compat = if compatible {
            cond_true("Compatible")
        } else {
            cond_false("Compatible", "Warning", "", "")
        };
        let mut status = Map::new();
        status.insert(
            "conditions".into(),
            json!([cond_true("Ready"), compat, cond_true("Valid")]),
        );
        write_status(cluster, &gvr_tkr(), &stored, status)?;
    }
    Ok(())
}

/// Seeds a TKG 2.x management cluster (see `seed_management_cluster_with`).
pub(crate) fn seed_management(
    cluster: &EmulatedCluster,
    seed: &ManagementSeed,
) -> Result<(), ControllerError> {
    cluster.register_capi_types();
    cluster.register_kapp_types();
    cluster.set_admission(
        gvr_cluster(),
        std::sync::Arc::new(super::admission::ClusterAdmission::new(seed.tkg_version)),
    );
    cluster.set_admission(
        gvr_cluster_bootstrap(),
        std::sync::Arc::new(super::bootstrap::ClusterBootstrapAdmission),
    );
    for ns in ["default", TKG_SYSTEM_NAMESPACE, "tkr-system"] {
        ensure_namespace(cluster, ns)?;
    }
    create_if_absent(
        cluster,
        &gvr_cluster_class(),
        cluster_class(seed, TKG_SYSTEM_NAMESPACE),
    )?;
    propagate_classes(cluster)?;
    for v in seed.tkg_version.compatible_tkrs() {
        seed_tkr(cluster, v, true)?;
    }
    seed_tkr(cluster, INCOMPATIBLE_TKR, false)?;
    if let Some(issuer) = &seed.pinniped_issuer {
        create_if_absent(
            cluster,
            &gvr_config_map(),
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "pinniped-info", "namespace": "kube-public"},
                "data": {
                    "cluster_name": seed.name,
                    "issuer": issuer,
                    "issuer_ca_bundle_data": base64::engine::general_purpose::STANDARD.encode("-----BEGIN CERTIFICATE-----\nemulated\n-----END CERTIFICATE-----\n"),
                    "concierge_is_cluster_scoped": "true",
                },
            }),
        )?;
    }
    // The management cluster's own Cluster: plan-based refs keep the CAPI controllers off it.
    let own = create_if_absent(
        cluster,
        &gvr_cluster(),
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1",
            "kind": "Cluster",
            "metadata": {
                "name": seed.name, "namespace": TKG_SYSTEM_NAMESPACE,
                "labels": {"cluster-role.tkg.tanzu.vmware.com/management": "", "tkg.tanzu.vmware.com/cluster-name": seed.name},
                "annotations": {"TKGVERSION": seed.tkg_version.tkg_version_annotation()},
            },
            "spec": {"clusterNetwork": {"pods": {"cidrBlocks": ["100.96.0.0/11"]}, "services": {"cidrBlocks": ["100.64.0.0/13"]}}},
        }),
    )?;
    if own.get("status").is_none() {
        let mut st = Map::new();
        st.insert("phase".into(), json!("Provisioned"));
        st.insert("infrastructureReady".into(), json!(true));
        st.insert("controlPlaneReady".into(), json!(true));
        st.insert(
            "conditions".into(),
            json!([
                cond_true("Ready"),
                cond_true("ControlPlaneReady"),
                cond_true("InfrastructureReady")
            ]),
        );
        write_status(cluster, &gvr_cluster(), &own, st)?;
    }
    Ok(())
}

/// The successful PackageRepository status kapp-controller writes (docs/tanzu-apis.md §4.1, §4.3).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::KubeEmulator;

    #[test]
    fn version_prefixes_and_names() {
        assert_eq!(
            version_prefix_labels("v1.25.7+vmware.2-tkg.1"),
            [
                "v1",
                "v1.25",
                "v1.25.7",
                "v1.25.7---vmware.2",
                "v1.25.7---vmware.2-tkg.1"
            ]
        );
        assert_eq!(
            tkr_name("v1.24.9+vmware.1-tkg.1"),
            "v1.24.9---vmware.1-tkg.1"
        );
        assert_eq!(
            tkr_kubernetes_version("v1.24.9+vmware.1-tkg.1"),
            "v1.24.9+vmware.1"
        );
        assert_eq!(TkgVersion::parse("v2.3.0"), Some(TkgVersion::V2_3));
        assert_eq!(TkgVersion::parse("2.5"), None);
    }

    fn class_var<'a>(class: &'a Value, name: &str) -> Option<&'a Value> {
        class["spec"]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
    }

    #[tokio::test]
    async fn seeds_class_tkrs_osimages_and_management_cluster_per_version() {
        let emu = KubeEmulator::new();
        for v in TkgVersion::ALL {
            let c = emu.add_cluster(&format!("m{}", v.as_str())).await.unwrap();
            let seed = ManagementSeed {
                tkg_version: v,
                pinniped_issuer: (v == TkgVersion::V2_1).then(|| "https://1.2.3.4:31234".into()),
                ..Default::default()
            };
            seed_management(&c, &seed).unwrap();
            seed_management(&c, &seed).unwrap(); // idempotent
            for ns in ["tkg-system", "default"] {
                let class = c
                    .get(&gvr_cluster_class(), Some(ns), v.cluster_class())
                    .unwrap_or_else(|| panic!("class in {ns}"));
                assert_eq!(class["metadata"]["annotations"][RESOLVE_TKR_ANNOTATION], "");
            }
            assert!(c
                .get(&gvr_cluster_class(), Some("kube-system"), v.cluster_class())
                .is_none());
            let class = c
                .get(&gvr_cluster_class(), Some("default"), v.cluster_class())
                .unwrap();
            for (name, required) in [
                ("region", true),
                ("identityRef", true),
                ("network", true),
                ("worker", true),
                ("proxy", false),
                ("TKR_DATA", false),
            ] {
                assert_eq!(
                    class_var(&class, name).unwrap()["required"],
                    required,
                    "{name}"
                );
            }
            assert_eq!(
                class_var(&class, "region").unwrap()["schema"]["openAPIV3Schema"]["default"],
                "us-west-2"
            );
            let sg = &class_var(&class, "network").unwrap()["schema"]["openAPIV3Schema"]
                ["properties"]["securityGroupOverrides"]["properties"];
            assert!(sg.get(v.control_plane_sg_key()).is_some());
            assert_eq!(
                class_var(&class, "additionalImageRegistries").is_some(),
                v != TkgVersion::V2_1
            );
            assert_eq!(
                class["spec"]["controlPlane"]["machineHealthCheck"]["maxUnhealthy"],
                "100%"
            );
            assert_eq!(
                class["spec"]["workers"]["machineDeployments"][0]["machineHealthCheck"]
                    ["nodeStartupTimeout"],
                "20m0s"
            );

            let tkrs = c.list(&gvr_tkr(), None);
            assert_eq!(tkrs.len(), 4);
            for t in v.compatible_tkrs() {
                let tkr = c.get(&gvr_tkr(), None, &tkr_name(t)).unwrap();
                assert_eq!(tkr["spec"]["version"], *t);
                assert!(tkr["metadata"]["labels"].get("incompatible").is_none());
                assert_eq!(
                    tkr["spec"]["osImages"].as_array().unwrap().len(),
                    2 * OSIMAGE_REGIONS.len()
                );
                let types: Vec<&str> = tkr["status"]["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["type"].as_str().unwrap())
                    .collect();
                assert_eq!(types, ["Ready", "Compatible", "Valid"]);
            }
            let old = c
                .get(&gvr_tkr(), None, &tkr_name(INCOMPATIBLE_TKR))
                .unwrap();
            assert_eq!(old["metadata"]["labels"]["incompatible"], "");
            let images = c.list(&gvr_osimage(), None);
            assert_eq!(images.len(), 4 * 2 * OSIMAGE_REGIONS.len());
            let img = &images[0];
            assert_eq!(img["metadata"]["labels"]["image-type"], "ami");
            assert_eq!(
                img["metadata"]["labels"]["ami-id"],
                img["spec"]["image"]["ref"]["id"]
            );

            let own = c
                .get(&gvr_cluster(), Some("tkg-system"), "tkg-mgmt")
                .unwrap();
            assert_eq!(
                own["metadata"]["annotations"]["TKGVERSION"],
                v.tkg_version_annotation()
            );
            assert_eq!(
                own["metadata"]["labels"]["cluster-role.tkg.tanzu.vmware.com/management"],
                ""
            );
            let pinniped = c.get(&gvr_config_map(), Some("kube-public"), "pinniped-info");
            assert_eq!(pinniped.is_some(), v == TkgVersion::V2_1);
        }
    }
}

//! [`ClusterSpec`]: a cluster request's desired state as the Tanzu CLI of the management
//! cluster's TKG 2.x release renders it (docs/tkg2-class-based.md §1–§3: the class, the TKR
//! version, the ClusterClass variables, the MachineDeployments), with every default applied;
//! consumed by the workflow templates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::packages::{order_key, standard_package, DEFAULT_PACKAGE_NAMESPACE};
use super::settings::{ClusterSettings, PackageRepositoryRef, PackageRequest, RepoConfig, SCHEMA};
use super::tkgconfig::TkgConfig;
use super::{ClusterRequest, Finding, Severity};
use crate::tkg::variables::{cluster_variables, worker_value, ClusterVariable};
use crate::tkg::{kubernetes_version, tkr_name, TkgVersion};

/// Desired state of one workload cluster, derived by [`cluster_spec`]. Serialized camelCase.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// `CLUSTER_NAME`.
    pub name: String,
    /// `NAMESPACE`, else the management cluster's `namespace`, else `default`.
    pub namespace: String,
    /// `dev` or `prod` (`devcc` → `dev`, `prodcc` → `prod`); `CLUSTER_PLAN`, default `dev`.
    pub plan: String,
    /// Name of the management cluster.
    pub management_cluster: String,
    /// TKR version, e.g. `v1.23.8+vmware.2-tkg.1`.
    pub tkr: String,
    /// TKR object name: `+` replaced by `---` (`v1.23.8---vmware.2-tkg.1`).
    pub tkr_name: String,
    /// Kubernetes version of the TKR (`v1.23.8+vmware.2`), the KCP/MD `spec.version`.
    pub kubernetes_version: String,
    /// `AWS_REGION`.
    pub region: String,
    /// Availability zones: dev one, prod three (empty → `<region>a/b/c`, `get_az_from_region`).
    pub azs: Vec<String>,
    /// The VPC.
    pub vpc: VpcSpec,
    /// One subnet pair per AZ, in AZ order.
    pub subnets: Vec<SubnetSpec>,
    /// `AWS_SSH_KEY_NAME`.
    pub ssh_key_name: String,
    /// `AWS_LOAD_BALANCER_SCHEME_INTERNAL` (default false).
    pub load_balancer_scheme_internal: bool,
    /// `BASTION_HOST_ENABLED` (default true).
    pub bastion_enabled: bool,
    /// The management cluster's TKG release (`managementClusters[].tkgVersion`).
    pub tkg_version: TkgVersion,
    /// `spec.topology.class`: the release's ClusterClass (§1), e.g. `tkg-aws-default-v1.0.0`.
    pub cluster_class: String,
    /// `spec.topology.variables` in the CLI's emission order (§2, [`crate::tkg::variables`]).
    pub variables: Vec<ClusterVariable>,
    /// Annotation `run.tanzu.vmware.com/resolve-os-image` of the control plane and every
    /// MachineDeployment: `ami-region=<AWS_REGION>,os-name=<OS_NAME>,os-arch=<OS_ARCH>` (§3.2).
    pub os_image_selector: String,
    /// Annotation `osInfo`: `<OS_NAME>,<OS_VERSION>,<OS_ARCH>` (§3.1).
    pub os_info: String,
    /// `spec.clusterNetwork.apiServerPort` from `CLUSTER_API_SERVER_PORT`, only when set (§3.1).
    pub api_server_port: Option<u16>,
    /// Control plane machines.
    pub control_plane: MachineSpec,
    /// MachineDeployments `md-0` (dev) or `md-0`..`md-2` (prod).
    pub workers: Vec<WorkerSpec>,
    /// `AWS_NODE_OS_DISK_SIZE_GIB` (default 80), in GiB.
    pub worker_root_volume_gib: u32,
    /// `CNI` (default `antrea`).
    pub cni: String,
    /// The ClusterBootstrap and provider objects the CLI renders beside the Cluster, `None`
    /// when it renders none ([`crate::tkg::bootstrap::bootstrap`]).
    pub bootstrap: Option<crate::tkg::bootstrap::BootstrapSpec>,
    /// `CLUSTER_CIDR` (default `100.96.0.0/11`).
    pub cluster_cidr: String,
    /// `SERVICE_CIDR` (default `100.64.0.0/13`).
    pub service_cidr: String,
    /// Node OS.
    pub os: OsSpec,
    /// Labels from the cluster's settings.
    pub labels: BTreeMap<String, String>,
    /// TMC attach, when requested.
    pub tmc: Option<TmcSpec>,
    /// Resolved packages in install order (cert-manager, contour, fluent-bit, prometheus,
    /// grafana, harbor, then others by name).
    pub packages: Vec<PackageSpec>,
    /// The PackageRepository the packages come from.
    pub package_repository: PackageRepositoryRef,
}

/// The VPC of a [`ClusterSpec`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VpcSpec {
    /// `AWS_VPC_ID` of an existing VPC; `None` = a new VPC is created.
    pub existing_id: Option<String>,
    /// `AWS_VPC_CIDR` (default `10.0.0.0/16`).
    pub cidr: String,
}

/// The subnets of one AZ. IDs for an existing VPC; CIDRs (with §1.2 defaults) for a new VPC only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    /// Availability zone.
    pub az: String,
    /// `AWS_PRIVATE_SUBNET_ID[_1|_2]`.
    pub private_id: Option<String>,
    /// `AWS_PRIVATE_NODE_CIDR[_1|_2]` (defaults `10.0.0.0/24`, `10.0.2.0/24`, `10.0.4.0/24`).
    pub private_cidr: Option<String>,
    /// `AWS_PUBLIC_SUBNET_ID[_1|_2]`.
    pub public_id: Option<String>,
    /// `AWS_PUBLIC_NODE_CIDR[_1|_2]` (defaults `10.0.1.0/24`, `10.0.3.0/24`, `10.0.5.0/24`).
    pub public_cidr: Option<String>,
}

/// Control plane machines.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// `CONTROL_PLANE_MACHINE_TYPE` (default `t3.large`).
    pub instance_type: String,
    /// `CONTROL_PLANE_MACHINE_COUNT` (default dev 1, prod 3).
    pub replicas: u32,
    /// `AWS_CONTROL_PLANE_OS_DISK_SIZE_GIB` (default 80), in GiB.
    pub root_volume_gib: u32,
}

/// One MachineDeployment.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// `md-0`, `md-1`, `md-2`.
    pub name: String,
    /// Its AZ.
    pub az: String,
    /// `NODE_MACHINE_TYPE` (md-0; default `m5.large`), `NODE_MACHINE_TYPE_1`/`_2` overrides.
    pub instance_type: String,
    /// Replicas: `WORKER_MACHINE_COUNT_<i>`, else `WORKER_MACHINE_COUNT` (default dev 1,
    /// prod 3) split evenly over the 3 AZs with the remainder to the first ones (§3.2).
    pub replicas: u32,
    /// `variables.overrides` of the MachineDeployment: in prodcc, `worker` for `md-1` and
    /// `md-2` from `NODE_MACHINE_TYPE_1`/`_2` (`AWSOV:80-106`); empty otherwise.
    pub overrides: Vec<ClusterVariable>,
}

/// Node OS (`OS_NAME`, `OS_VERSION`, `OS_ARCH`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OsSpec {
    /// Default `ubuntu`.
    pub name: String,
    /// Default `20.04`.
    pub version: String,
    /// Default `amd64`.
    pub arch: String,
}

/// TMC attach of a cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TmcSpec {
    /// `spec.clusterGroupName`.
    pub cluster_group: String,
    /// `meta.description` (default "managed by tkgops").
    pub description: String,
}

/// A resolved package: one kapp-controller PackageInstall.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageSpec {
    /// PackageInstall `metadata.name`.
    pub name: String,
    /// `packageRef.refName`.
    pub ref_name: String,
    /// `versionSelection.constraints` (exact version).
    pub version: String,
    /// PackageInstall namespace.
    pub namespace: String,
    /// The values file (YAML text), `""` when none.
    pub values_yaml: String,
    /// Secrets (in the package's namespace) whose values the PackageInstall also reads, in
    /// order after `values_yaml` (`valuesFrom` of the request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<String>,
}

fn merge_values(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) => merge_values(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Resolves a cluster's packages: repository defaults, then the cluster's entries merged by name
/// (fields override, values deep-merged, `enabled: false` removes), then the TKG 1.6 table
/// defaults; sorted in install order. Returns the packages and, per unresolvable package, its
/// name and a message.
pub(crate) fn resolve_packages(
    settings: &ClusterSettings,
    repo: Option<&RepoConfig>,
) -> (Vec<PackageSpec>, Vec<(String, String)>) {
    let mut merged: BTreeMap<String, PackageRequest> = BTreeMap::new();
    if let Some(r) = repo {
        for d in &r.packages.defaults {
            if d.enabled != Some(false) {
                merged.insert(d.name.clone(), d.clone());
            }
        }
    }
    for p in &settings.packages {
        if p.enabled == Some(false) {
            merged.remove(&p.name);
            continue;
        }
        match merged.get_mut(&p.name) {
            Some(b) => {
                if p.ref_name.is_some() {
                    b.ref_name = p.ref_name.clone();
                }
                if p.version.is_some() {
                    b.version = p.version.clone();
                }
                if p.namespace.is_some() {
                    b.namespace = p.namespace.clone();
                }
                match (&mut b.values, &p.values) {
                    (Some(bv), Some(pv)) => merge_values(bv, pv),
                    (bv @ None, Some(pv)) => *bv = Some(pv.clone()),
                    _ => {}
                }
            }
            None => {
                merged.insert(p.name.clone(), p.clone());
            }
        }
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, p) in merged {
        let std = standard_package(&name);
        let ref_name = p
            .ref_name
            .clone()
            .or_else(|| std.map(|s| s.ref_name.to_string()));
        let version = p.version.clone().or_else(|| {
            std.filter(|s| ref_name.as_deref() == Some(s.ref_name))
                .map(|s| s.version.to_string())
        });
        let (ref_name, version) = match (ref_name, version) {
            (Some(r), Some(v)) => (r, v),
            (r, _) => {
                let missing = if r.is_none() {
                    "refName and version"
                } else {
                    "version"
                };
                errors.push((
                    name.clone(),
                    format!("package {name} is not a TKG 1.6 standard package; {missing} required"),
                ));
                continue;
            }
        };
        let namespace = p
            .namespace
            .clone()
            .or_else(|| std.and_then(|s| s.namespace).map(str::to_string))
            .unwrap_or_else(|| DEFAULT_PACKAGE_NAMESPACE.to_string());
        let values_yaml = match &p.values {
            None | Some(Value::Null) => String::new(),
            Some(v) => serde_yaml::to_string(v).unwrap_or_default(),
        };
        out.push(PackageSpec {
            name,
            ref_name,
            version,
            namespace,
            values_yaml,
            values_from: p
                .values_from
                .iter()
                .map(|v| v.secret_ref.name.clone())
                .collect(),
        });
    }
    out.sort_by_key(|p| order_key(&p.name));
    (out, errors)
}

/// `dev` or `prod` for a `CLUSTER_PLAN` value (default `dev`); `None` for an unknown plan.
pub(crate) fn normalized_plan(config: &TkgConfig) -> Option<&'static str> {
    match config
        .get("CLUSTER_PLAN")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("dev") | Some("devcc") => Some("dev"),
        Some("prod") | Some("prodcc") => Some("prod"),
        Some(_) => None,
    }
}

/// Variable `key` as a non-negative integer; `Ok(None)` when unset, `Err(())` when not an integer.
pub(crate) fn get_u32(config: &TkgConfig, key: &str) -> Result<Option<u32>, ()> {
    match config.get(key) {
        None => Ok(None),
        Some(v) => v.parse::<u32>().map(Some).map_err(|_| ()),
    }
}

/// Worker replicas per MachineDeployment, as the Tanzu CLI sets them
/// (docs/tkg2-class-based.md §3 "Replicas"; TF `CL/validate.go:1423-1484`): for the prod plan
/// (three MachineDeployments), `WORKER_MACHINE_COUNT_0`, `_1` and `_2` as given when all three
/// are set, else `WORKER_MACHINE_COUNT` (default 3) split evenly with the remainder to the
/// first MachineDeployments (4 → 2/1/1), the per-AZ counts set being ignored; for the dev plan
/// (one), `WORKER_MACHINE_COUNT_0` when set, else `WORKER_MACHINE_COUNT` (default 1).
/// `Err(variable)` for a count that is not a non-negative integer.
pub(crate) fn worker_counts(config: &TkgConfig, prod: bool) -> Result<Vec<u32>, &'static str> {
    let total = get_u32(config, "WORKER_MACHINE_COUNT").map_err(|_| "WORKER_MACHINE_COUNT")?;
    let mut per = Vec::with_capacity(PER_AZ_WORKER_COUNTS.len());
    for key in PER_AZ_WORKER_COUNTS {
        per.push(get_u32(config, key).map_err(|_| key)?);
    }
    if !prod {
        return Ok(vec![per[0].or(total).unwrap_or(1)]);
    }
    if let [Some(a), Some(b), Some(c)] = per[..] {
        return Ok(vec![a, b, c]);
    }
    let total = total.unwrap_or(3);
    Ok((0..3u32)
        .map(|i| total / 3 + u32::from(i < total % 3))
        .collect())
}

/// The per-MachineDeployment worker counts of the prod plan, in MachineDeployment order.
pub(crate) const PER_AZ_WORKER_COUNTS: [&str; 3] = [
    "WORKER_MACHINE_COUNT_0",
    "WORKER_MACHINE_COUNT_1",
    "WORKER_MACHINE_COUNT_2",
];

/// Derives the desired state of `req` as the Tanzu CLI of the management cluster's TKG release
/// renders it (see the field docs of [`ClusterSpec`]); `repo` supplies the management cluster
/// (its `tkgVersion`, class, `defaults` merged under the request's variables, namespace), package
/// defaults and the package repository.
///
/// Errors (one [`Finding`] on the request's config or settings file): management cluster not in
/// `repo` (`TKGOPS-SCHEMA`), unknown `CLUSTER_PLAN` (`TKGOPS-PLAN`), `AWS_REGION` or
/// `AWS_SSH_KEY_NAME` missing after the defaults (`TKGOPS-REQUIRED`, the CLI's "missing
/// configuration variables"), a variable the CLI refuses (`TKGOPS-TF-VALIDATE`, e.g. a malformed
/// `APISERVER_EXTRA_ARGS`), `ENABLE_AUTOSCALER: true` (`TKGOPS-UNSUPPORTED`), an unresolvable
/// package (`TKGOPS-SCHEMA`). Run [`super::validate`] first for the full list of problems.
pub fn cluster_spec(req: &ClusterRequest, repo: &RepoConfig) -> Result<ClusterSpec, Finding> {
    let s = &req.settings;
    let mc = repo
        .management_cluster(&s.management_cluster)
        .ok_or_else(|| {
            Finding::new(
                &s.path,
                s.line("managementCluster"),
                SCHEMA,
                Severity::Error,
                format!(
                    "managementCluster {} is not listed in the repository's managementClusters",
                    s.management_cluster
                ),
            )
        })?;
    let merged = req.config.with_defaults(&mc.defaults);
    let c = &merged;
    let cfg_err = |key: &str, rule: &str, msg: String| {
        Finding::new(&c.path, c.line(key), rule, Severity::Error, msg)
    };
    let plan = normalized_plan(c).ok_or_else(|| {
        cfg_err(
            "CLUSTER_PLAN",
            "TKGOPS-PLAN",
            format!(
                "unknown CLUSTER_PLAN {}",
                c.get("CLUSTER_PLAN").unwrap_or("")
            ),
        )
    })?;
    let prod = plan == "prod";
    for key in ["AWS_REGION", "AWS_SSH_KEY_NAME"] {
        if c.get(key).is_none() {
            return Err(cfg_err(
                key,
                "TKGOPS-REQUIRED",
                format!("missing configuration variables: {key} (set it in the request or in managementClusters[{}].defaults)", mc.name),
            ));
        }
    }
    if c.get_bool("ENABLE_AUTOSCALER") == Some(true) {
        return Err(cfg_err(
            "ENABLE_AUTOSCALER",
            "TKGOPS-UNSUPPORTED",
            AUTOSCALER_UNSUPPORTED.into(),
        ));
    }
    let region = c.get("AWS_REGION").unwrap_or_default().to_string();
    let ssh_key_name = c.get("AWS_SSH_KEY_NAME").unwrap_or_default().to_string();
    let num = |key: &str, default: u32| -> Result<u32, Finding> {
        get_u32(c, key).map(|v| v.unwrap_or(default)).map_err(|_| {
            cfg_err(
                key,
                "TKGOPS-TF-VALIDATE",
                format!("{key} must be a non-negative integer"),
            )
        })
    };
    let or = |key: &str, default: &str| c.get(key).unwrap_or(default).to_string();
    let suffixes: &[&str] = if prod { &["", "_1", "_2"] } else { &[""] };
    let letters = ['a', 'b', 'c'];
    let azs: Vec<String> = suffixes
        .iter()
        .zip(letters)
        .map(|(sfx, l)| {
            c.get(&format!("AWS_NODE_AZ{sfx}"))
                .map(str::to_string)
                .unwrap_or_else(|| format!("{region}{l}"))
        })
        .collect();
    let existing_vpc = c.get("AWS_VPC_ID").map(str::to_string);
    let priv_defaults = ["10.0.0.0/24", "10.0.2.0/24", "10.0.4.0/24"];
    let pub_defaults = ["10.0.1.0/24", "10.0.3.0/24", "10.0.5.0/24"];
    let subnets = suffixes
        .iter()
        .enumerate()
        .map(|(i, sfx)| {
            let new_vpc = existing_vpc.is_none();
            SubnetSpec {
                az: azs[i].clone(),
                private_id: c
                    .get(&format!("AWS_PRIVATE_SUBNET_ID{sfx}"))
                    .map(str::to_string),
                private_cidr: new_vpc
                    .then(|| or(&format!("AWS_PRIVATE_NODE_CIDR{sfx}"), priv_defaults[i])),
                public_id: c
                    .get(&format!("AWS_PUBLIC_SUBNET_ID{sfx}"))
                    .map(str::to_string),
                public_cidr: new_vpc
                    .then(|| or(&format!("AWS_PUBLIC_NODE_CIDR{sfx}"), pub_defaults[i])),
            }
        })
        .collect();
    let counts = worker_counts(c, prod).map_err(|k| {
        cfg_err(
            k,
            "TKGOPS-TF-VALIDATE",
            format!("{k} must be a non-negative integer"),
        )
    })?;
    let var_err = |e: crate::tkg::variables::VariableError| {
        cfg_err(&e.variable, "TKGOPS-TF-VALIDATE", e.to_string())
    };
    let base_type = or("NODE_MACHINE_TYPE", "m5.large");
    let mut workers = Vec::with_capacity(counts.len());
    for (i, n) in counts.iter().enumerate() {
        // md-1 and md-2 carry the worker override only when NODE_MACHINE_TYPE_1/_2 is set
        // (tanzu-framework providers/infrastructure-aws/v2.0.2/yttcc/overlay.yaml: `if
        // data.values.NODE_MACHINE_TYPE_1`); otherwise they take the `worker` variable.
        let overrides = if prod && i > 0 && c.get(&format!("NODE_MACHINE_TYPE_{i}")).is_some() {
            vec![ClusterVariable {
                name: "worker".into(),
                value: worker_value(c, i).map_err(var_err)?,
            }]
        } else {
            Vec::new()
        };
        workers.push(WorkerSpec {
            name: format!("md-{i}"),
            az: azs[i].clone(),
            instance_type: if i == 0 {
                base_type.clone()
            } else {
                or(&format!("NODE_MACHINE_TYPE_{i}"), &base_type)
            },
            replicas: *n,
            overrides,
        });
    }
    let variables = cluster_variables(c, mc.tkg_version, prod).map_err(var_err)?;
    let cni = or("CNI", "antrea").to_ascii_lowercase();
    let bootstrap = crate::tkg::bootstrap::bootstrap(c, &cni, prod).map_err(|e| {
        let rule = if e.variable == "CNI" && cni == "none" {
            "TKGOPS-UNSUPPORTED"
        } else {
            "TKGOPS-TF-VALIDATE"
        };
        cfg_err(&e.variable, rule, e.to_string())
    })?;
    let api_server_port = match c.get("CLUSTER_API_SERVER_PORT") {
        None => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| {
            cfg_err(
                "CLUSTER_API_SERVER_PORT",
                "TKGOPS-TF-VALIDATE",
                "CLUSTER_API_SERVER_PORT must be a port number (1-65535)".into(),
            )
        })?),
    };
    let (packages, errors) = resolve_packages(s, Some(repo));
    if let Some((_name, msg)) = errors.into_iter().next() {
        return Err(Finding::new(
            &s.path,
            s.line("packages"),
            SCHEMA,
            Severity::Error,
            msg,
        ));
    }
    let os = OsSpec {
        name: or("OS_NAME", "ubuntu"),
        version: or("OS_VERSION", "20.04"),
        arch: or("OS_ARCH", "amd64"),
    };
    Ok(ClusterSpec {
        name: c.get("CLUSTER_NAME").unwrap_or(&req.name).to_string(),
        namespace: c
            .get("NAMESPACE")
            .map(str::to_string)
            .unwrap_or_else(|| mc.namespace.clone()),
        plan: plan.to_string(),
        management_cluster: mc.name.clone(),
        tkr: s.tkr.clone(),
        tkr_name: tkr_name(&s.tkr),
        kubernetes_version: kubernetes_version(&s.tkr),
        azs,
        vpc: VpcSpec {
            existing_id: existing_vpc,
            cidr: or("AWS_VPC_CIDR", "10.0.0.0/16"),
        },
        subnets,
        ssh_key_name,
        load_balancer_scheme_internal: c
            .get_bool("AWS_LOAD_BALANCER_SCHEME_INTERNAL")
            .unwrap_or(false),
        bastion_enabled: c.get_bool("BASTION_HOST_ENABLED").unwrap_or(true),
        tkg_version: mc.tkg_version,
        cluster_class: mc.cluster_class().to_string(),
        variables,
        os_image_selector: format!(
            "ami-region={region},os-name={},os-arch={}",
            os.name, os.arch
        ),
        os_info: format!("{},{},{}", os.name, os.version, os.arch),
        region,
        api_server_port,
        control_plane: MachineSpec {
            instance_type: or("CONTROL_PLANE_MACHINE_TYPE", "t3.large"),
            replicas: num("CONTROL_PLANE_MACHINE_COUNT", if prod { 3 } else { 1 })?,
            root_volume_gib: num("AWS_CONTROL_PLANE_OS_DISK_SIZE_GIB", 80)?,
        },
        workers,
        worker_root_volume_gib: num("AWS_NODE_OS_DISK_SIZE_GIB", 80)?,
        cni,
        bootstrap,
        cluster_cidr: or("CLUSTER_CIDR", "100.96.0.0/11"),
        service_cidr: or("SERVICE_CIDR", "100.64.0.0/13"),
        os,
        labels: s.labels.clone(),
        tmc: s.tmc.as_ref().map(|t| TmcSpec {
            cluster_group: t.cluster_group.clone(),
            description: t
                .description
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "managed by tkgops".into()),
        }),
        packages,
        package_repository: repo.packages.repository.clone(),
    })
}

/// Message of `TKGOPS-UNSUPPORTED` for `ENABLE_AUTOSCALER: true`: the CLI also deploys the
/// cluster-autoscaler on the management cluster (§3.2 "Autoscaler"), which tkgops does not render.
pub(crate) const AUTOSCALER_UNSUPPORTED: &str = "ENABLE_AUTOSCALER is true, but tkgops does not render the cluster-autoscaler Deployment the Tanzu CLI creates on the management cluster; set fixed worker counts (WORKER_MACHINE_COUNT) or create the cluster with the Tanzu CLI";

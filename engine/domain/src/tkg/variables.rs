//! The Tanzu CLI's mapping from flat TKG variables to the ClusterClass variables of
//! `tkg-aws-default-v1.0.0` (docs/tkg2-class-based.md §2, `CVA:345-676`), in the CLI's emission
//! order: `[proxy], cni, controlPlaneCertificateRotation, [imageRepository],
//! [additionalImageRegistries], auditLogging, [*ExtraArgs], [trust], podSecurityStandard,
//! [eventRateLimitConf], region, sshKeyName, loadBalancerSchemeInternal, bastion, network,
//! identityRef, worker, controlPlane` (brackets: only when set).

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::TkgVersion;
use crate::request::TkgConfig;

/// One entry of `spec.topology.variables` (or of an MD's `variables.overrides`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterVariable {
    /// Variable name as the ClusterClass declares it, e.g. `network`.
    pub name: String,
    /// Its value.
    pub value: Value,
}

/// A flat variable whose value the CLI refuses; `variable` names it, `message` says why (the
/// CLI's own wording where §2 quotes it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct VariableError {
    /// The flat TKG variable, e.g. `APISERVER_EXTRA_ARGS`.
    pub variable: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(variable: &str, message: impl Into<String>) -> VariableError {
    VariableError {
        variable: variable.to_string(),
        message: message.into(),
    }
}

/// The `*ExtraArgs` variables and their flat names (§2 first row, `CVA:421-438`).
pub const EXTRA_ARGS: [(&str, &str); 6] = [
    ("ETCD_EXTRA_ARGS", "etcdExtraArgs"),
    ("APISERVER_EXTRA_ARGS", "apiServerExtraArgs"),
    ("KUBE_SCHEDULER_EXTRA_ARGS", "kubeSchedulerExtraArgs"),
    (
        "KUBE_CONTROLLER_MANAGER_EXTRA_ARGS",
        "kubeControllerManagerExtraArgs",
    ),
    (
        "CONTROLPLANE_KUBELET_EXTRA_ARGS",
        "controlPlaneKubeletExtraArgs",
    ),
    ("WORKER_KUBELET_EXTRA_ARGS", "workerKubeletExtraArgs"),
];

/// Parses `k1=v1;k2=v2` as the CLI does: a part without `=` or with an empty key is refused
/// (`CL/cluster.go:752-779`).
fn extra_args(var: &str, text: &str) -> Result<Value, VariableError> {
    let mut out = Map::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(err(
                var,
                format!("{part:?} is not of the form key=value (entries are separated by ';')"),
            ));
        };
        if k.trim().is_empty() {
            return Err(err(var, format!("{part:?} has an empty key")));
        }
        out.insert(k.trim().to_string(), json!(v.trim()));
    }
    Ok(Value::Object(out))
}

/// `k=v,k2=v2` → `[{key, value}]` (`CONTROL_PLANE_NODE_LABELS`, `CVA:659-673`).
fn node_labels(var: &str, text: &str) -> Result<Value, VariableError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(err(var, format!("{part:?} is not of the form key=value")));
        };
        out.push(json!({"key": k.trim(), "value": v.trim()}));
    }
    Ok(Value::Array(out))
}

fn get_bool(c: &TkgConfig, var: &str, default: bool) -> Result<bool, VariableError> {
    match c.get(var) {
        None => Ok(default),
        Some(_) => c
            .get_bool(var)
            .ok_or_else(|| err(var, "must be true or false")),
    }
}

fn get_int(c: &TkgConfig, var: &str, default: u64) -> Result<u64, VariableError> {
    match c.get(var) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| err(var, "must be a non-negative integer")),
    }
}

/// `worker` value for MD `index` (0 = the cluster-level value): `NODE_MACHINE_TYPE[_1|_2]` (default
/// `m5.large`) and `AWS_NODE_OS_DISK_SIZE_GIB` (default 80) (§2 `worker` row, `AWSOV:80-106`).
///
/// Errors: a non-integer disk size.
pub fn worker_value(c: &TkgConfig, index: usize) -> Result<Value, VariableError> {
    let base = c.get("NODE_MACHINE_TYPE").unwrap_or("m5.large");
    let instance_type = if index == 0 {
        base
    } else {
        c.get(&format!("NODE_MACHINE_TYPE_{index}")).unwrap_or(base)
    };
    Ok(json!({
        "instanceType": instance_type,
        "rootVolume": {"sizeGiB": get_int(c, "AWS_NODE_OS_DISK_SIZE_GIB", 80)?},
    }))
}

/// The ClusterClass variables the CLI emits for the flat file `c` (after management-cluster
/// defaults are merged in) on TKG `version`; `prod` selects the prodcc subnets 1–2.
///
/// Returns the variables in the CLI's emission order (module docs). Errors
/// ([`VariableError`] naming the flat variable): a malformed `*_EXTRA_ARGS` or
/// `CONTROL_PLANE_NODE_LABELS`, a non-boolean flag, a non-integer size or day count,
/// a proxy the CLI refuses ([`super::proxy::proxy_settings`]: `TKG_HTTP_PROXY` without
/// `TKG_HTTP_PROXY_ENABLED`, a missing or malformed proxy URL, `*` in `TKG_NO_PROXY`), an
/// additional image registry without a CA and without skip-verify ("Must provide CA for host",
/// 2.2+), `AWS_REGION` or `AWS_SSH_KEY_NAME` missing ("missing configuration variables", §2
/// "Other CLI facts").
///
/// Deliberate differences from the CLI (docs/design.md): `proxy.systemWide` is not emitted (it is
/// not in the schema; CAPI ≥1.3 rejects it), and with an existing VPC the `*_CIDR` values are
/// always left out (the CLI does so whenever it has AWS credentials, §2 "Existing VPC").
pub fn cluster_variables(
    c: &TkgConfig,
    version: TkgVersion,
    prod: bool,
) -> Result<Vec<ClusterVariable>, VariableError> {
    let mut vars: Vec<ClusterVariable> = Vec::new();
    let mut push = |name: &str, value: Value| {
        vars.push(ClusterVariable {
            name: name.to_string(),
            value,
        })
    };
    let missing: Vec<&str> = ["AWS_REGION", "AWS_SSH_KEY_NAME"]
        .into_iter()
        .filter(|k| c.get(k).is_none())
        .collect();
    if let Some(first) = missing.first() {
        return Err(err(
            first,
            format!("missing configuration variables: {}", missing.join(", ")),
        ));
    }

    // [proxy] (CVA:356-365), after the CLI's proxy checks and noProxy additions (proxy.rs).
    if let Some(p) = super::proxy::proxy_settings(c)? {
        let mut proxy = json!({"httpProxy": p.http_proxy, "httpsProxy": p.https_proxy});
        if !p.no_proxy.is_empty() {
            proxy["noProxy"] = json!(p.no_proxy);
        }
        push("proxy", proxy);
    }
    // cni
    push(
        "cni",
        json!(c.get("CNI").unwrap_or("antrea").to_ascii_lowercase()),
    );
    // controlPlaneCertificateRotation (always)
    push(
        "controlPlaneCertificateRotation",
        json!({
            "activate": get_bool(c, "CONTROLPLANE_CERTIFICATE_ROTATION_ENABLED", true)?,
            "daysBefore": get_int(c, "CONTROLPLANE_CERTIFICATE_ROTATION_DAYS_BEFORE", 90)?,
        }),
    );
    // [imageRepository] (CVA:399-409): `host` when set, `tlsCertificateValidation: false` only
    // when verification is skipped (the CLI leaves the class default, true, otherwise).
    let skip_var = "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY";
    let mut repo = Map::new();
    if let Some(h) = c.get("TKG_CUSTOM_IMAGE_REPOSITORY") {
        repo.insert("host".into(), json!(h));
    }
    if get_bool(c, skip_var, false)? {
        repo.insert("tlsCertificateValidation".into(), json!(false));
    }
    if !repo.is_empty() {
        push("imageRepository", Value::Object(repo));
    }
    // [additionalImageRegistries] (2.2+, TF22:CVA:421-435)
    if version.has_additional_image_registries() {
        let mut regs = Vec::new();
        for i in 1..=3 {
            let key = format!("ADDITIONAL_IMAGE_REGISTRY_{i}");
            let Some(host) = c.get(&key) else { continue };
            let skip = get_bool(c, &format!("{key}_SKIP_TLS_VERIFY"), false)?;
            let ca = c.get(&format!("{key}_CA_CERTIFICATE"));
            if ca.is_none() && !skip {
                return Err(err(&key, format!("Must provide CA for host {host}")));
            }
            let mut r = json!({"host": host, "skipTlsVerify": skip});
            if let Some(ca) = ca {
                r["caCert"] = json!(ca);
            }
            regs.push(r);
        }
        if !regs.is_empty() {
            push("additionalImageRegistries", json!(regs));
        }
    }
    // auditLogging (always)
    push(
        "auditLogging",
        json!({"enabled": get_bool(c, "ENABLE_AUDIT_LOGGING", false)?}),
    );
    // [*ExtraArgs]
    for (var, name) in EXTRA_ARGS {
        if let Some(v) = c.get(var) {
            push(name, extra_args(var, v)?);
        }
    }
    // [trust] (CVA:440-457): the proxy CA wins over the registry CA; one entry at most.
    if let Some(ca) = c.get("TKG_PROXY_CA_CERT") {
        push(
            "trust",
            json!({"additionalTrustedCAs": [{"name": "proxy", "data": ca}]}),
        );
    } else if let Some(ca) = c.get("TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE") {
        push(
            "trust",
            json!({"additionalTrustedCAs": [{"name": "imageRepository", "data": ca}]}),
        );
    }
    // podSecurityStandard (always, CVA:467-482)
    let mut pss = Map::new();
    pss.insert(
        "deactivated".into(),
        json!(get_bool(c, "POD_SECURITY_STANDARD_DEACTIVATED", false)?),
    );
    for (var, key, default) in [
        ("POD_SECURITY_STANDARD_AUDIT", "audit", "baseline"),
        ("POD_SECURITY_STANDARD_WARN", "warn", "baseline"),
        ("POD_SECURITY_STANDARD_ENFORCE", "enforce", ""),
    ] {
        let v = c.get(var).unwrap_or(default);
        if !["", "privileged", "baseline", "restricted"].contains(&v) {
            return Err(err(
                var,
                format!("{v:?} is not one of privileged, baseline, restricted"),
            ));
        }
        if !v.is_empty() {
            pss.insert(key.into(), json!(v));
        }
    }
    push("podSecurityStandard", Value::Object(pss));
    // [eventRateLimitConf]
    if let Some(v) = c.get("APISERVER_EVENT_RATE_LIMIT_CONF_BASE64") {
        push("eventRateLimitConf", json!(v));
    }
    let region = c.get("AWS_REGION").unwrap_or_default();
    push("region", json!(region));
    push(
        "sshKeyName",
        json!(c.get("AWS_SSH_KEY_NAME").unwrap_or_default()),
    );
    push(
        "loadBalancerSchemeInternal",
        json!(get_bool(c, "AWS_LOAD_BALANCER_SCHEME_INTERNAL", false)?),
    );
    push(
        "bastion",
        json!({"enabled": get_bool(c, "BASTION_HOST_ENABLED", true)?}),
    );
    push("network", network(c, prod));
    // identityRef: always emitted, `{}` without a name (CVA:513-520).
    let identity = match c.get("AWS_IDENTITY_REF_NAME") {
        Some(name) => json!({
            "name": name,
            "kind": c.get("AWS_IDENTITY_REF_KIND").unwrap_or("AWSClusterRoleIdentity"),
        }),
        None => json!({}),
    };
    push("identityRef", identity);
    push("worker", worker_value(c, 0)?);
    let mut cp = json!({
        "instanceType": c.get("CONTROL_PLANE_MACHINE_TYPE").unwrap_or("t3.large"),
        "rootVolume": {"sizeGiB": get_int(c, "AWS_CONTROL_PLANE_OS_DISK_SIZE_GIB", 80)?},
    });
    if let Some(labels) = c.get("CONTROL_PLANE_NODE_LABELS") {
        cp["nodeLabels"] = node_labels("CONTROL_PLANE_NODE_LABELS", labels)?;
    }
    push("controlPlane", cp);
    Ok(vars)
}

/// The `network` variable (§2 `network` row and "Network notes"): `vpc`, then
/// `securityGroupOverrides` when any `AWS_SECURITY_GROUP_*` is set (key **`controlPlane`**, as
/// the CLI emits and the class patch reads), then one subnet per AZ (`CVA:522-645`): subnet 0
/// always carries `az` (`""` when `AWS_NODE_AZ` is unset, as `config_default.yaml` defaults it
/// to `""`); subnets 1–2 carry `az` only when `AWS_NODE_AZ_1`/`_2` is set, and a subnet with
/// neither an AZ, a subnet ID nor a CIDR is left out. `private`/`public` appear only when they
/// hold an ID or a CIDR (CIDRs only for a new VPC).
fn network(c: &TkgConfig, prod: bool) -> Value {
    let existing = c.get("AWS_VPC_ID");
    let mut vpc = Map::new();
    match existing {
        Some(id) => {
            vpc.insert("existingID".into(), json!(id));
        }
        None => {
            vpc.insert(
                "cidr".into(),
                json!(c.get("AWS_VPC_CIDR").unwrap_or("10.0.0.0/16")),
            );
        }
    }
    let suffixes: &[&str] = if prod { &["", "_1", "_2"] } else { &[""] };
    let priv_defaults = ["10.0.0.0/24", "10.0.2.0/24", "10.0.4.0/24"];
    let pub_defaults = ["10.0.1.0/24", "10.0.3.0/24", "10.0.5.0/24"];
    let mut subnets = Vec::new();
    for (i, sfx) in suffixes.iter().enumerate() {
        let mut private = Map::new();
        if let Some(id) = c.get(&format!("AWS_PRIVATE_SUBNET_ID{sfx}")) {
            private.insert("id".into(), json!(id));
        }
        if existing.is_none() {
            private.insert(
                "cidr".into(),
                json!(c
                    .get(&format!("AWS_PRIVATE_NODE_CIDR{sfx}"))
                    .unwrap_or(priv_defaults[i])),
            );
        }
        let mut public = Map::new();
        if let Some(id) = c.get(&format!("AWS_PUBLIC_SUBNET_ID{sfx}")) {
            public.insert("id".into(), json!(id));
        }
        if existing.is_none() {
            public.insert(
                "cidr".into(),
                json!(c
                    .get(&format!("AWS_PUBLIC_NODE_CIDR{sfx}"))
                    .unwrap_or(pub_defaults[i])),
            );
        }
        let mut subnet = Map::new();
        let az = c.get(&format!("AWS_NODE_AZ{sfx}"));
        if i == 0 || az.is_some() {
            subnet.insert("az".into(), json!(az.unwrap_or("")));
        }
        if !private.is_empty() {
            subnet.insert("private".into(), Value::Object(private));
        }
        if !public.is_empty() {
            subnet.insert("public".into(), Value::Object(public));
        }
        if subnet.is_empty() {
            continue;
        }
        subnets.push(Value::Object(subnet));
    }
    let mut sg = Map::new();
    for (var, key) in [
        ("AWS_SECURITY_GROUP_BASTION", "bastion"),
        ("AWS_SECURITY_GROUP_APISERVER_LB", "apiServerLB"),
        ("AWS_SECURITY_GROUP_LB", "lb"),
        ("AWS_SECURITY_GROUP_CONTROLPLANE", "controlPlane"),
        ("AWS_SECURITY_GROUP_NODE", "node"),
    ] {
        if let Some(v) = c.get(var) {
            sg.insert(key.into(), json!(v));
        }
    }
    let mut net = Map::new();
    net.insert("vpc".into(), Value::Object(vpc));
    if !sg.is_empty() {
        net.insert("securityGroupOverrides".into(), Value::Object(sg));
    }
    net.insert("subnets".into(), json!(subnets));
    Value::Object(net)
}

//! The validation rules (reference `docs/tanzu-apis.md` §5) and the severity policy.

use std::sync::OnceLock;

use base64::Engine as _;
use ipnet::IpNet;
use regex::Regex;

use super::settings::{
    ClusterSettings, IdentityManagementType, ManagementClusterConfig, RepoConfig, RuleLevel, SCHEMA,
};
use super::spec::AUTOSCALER_UNSUPPORTED;
use super::spec::{
    get_u32, normalized_plan, resolve_packages, worker_counts, PER_AZ_WORKER_COUNTS,
};
use super::tkgconfig::{is_credential_variable, is_known_variable, TkgConfig, PARSE};
use super::{Finding, Severity};
use crate::tkg::variables::cluster_variables;
use crate::tkg::TkgVersion;

/// Every rule tkgops reports: ID, default severity, summary with its source.
pub const RULES: &[(&str, Severity, &str)] = &[
    (
        "TKGOPS-PARSE",
        Severity::Error,
        "file unreadable: size, encoding or YAML syntax",
    ),
    (
        "TKGOPS-IO",
        Severity::Error,
        "path missing, not a regular file, or a directory without a config",
    ),
    (
        "TKGOPS-SCHEMA",
        Severity::Error,
        "tkgops.yaml shape: unknown/missing keys, unknown management cluster, packages",
    ),
    (
        "TKGOPS-SCHEDULE",
        Severity::Error,
        "tkgops.yaml schedules: cron, IANA time zone, window > 0, label selectors, DNS-label names, waves (Renovate schedules, Argo CD sync windows: docs/github.md)",
    ),
    (
        "TKGOPS-TEMPLATE",
        Severity::Error,
        "the workflow renders: templates in strict mode, step inputs buildable",
    ),
    (
        "TKGOPS-SECRET",
        Severity::Error,
        "no credential committed to Git: passwords, client secrets, tokens, AWS keys, <encoded:…> values",
    ),
    (
        "TKGOPS-NAMESPACE",
        Severity::Error,
        "the Cluster's namespace is a DNS-1123 label and not a system namespace (unless allowedNamespaces lists it)",
    ),
    (
        "TKGOPS-NAME",
        Severity::Error,
        "directory name under clusters/ equals CLUSTER_NAME",
    ),
    (
        "TKGOPS-PROVIDER",
        Severity::Error,
        "INFRASTRUCTURE_PROVIDER is aws",
    ),
    (
        "TKGOPS-PLAN",
        Severity::Error,
        "CLUSTER_PLAN is dev, prod, devcc or prodcc",
    ),
    (
        "TKGOPS-UNKNOWN-VAR",
        Severity::Warning,
        "variable not a known TKG variable",
    ),
    (
        "TKGOPS-IGNORED",
        Severity::Warning,
        "variable a TKG 2.x workload file cannot set, or that the Tanzu CLI ignores as written: identity and MachineHealthChecks are the management cluster's (docs/tkg2-class-based.md §5, §7); a partial set of WORKER_MACHINE_COUNT_0/1/2 on the prod plan (§3)",
    ),
    (
        "TKGOPS-DEPRECATED",
        Severity::Warning,
        "a setting tkgops no longer uses: upgradePolicy in a cluster's tkgops.yaml (it never scheduled anything; scheduled upgrades are the repository's schedules)",
    ),
    (
        "TKGOPS-PLACEHOLDER",
        Severity::Error,
        "a value is an unrendered template placeholder (${…}, <NAME>)",
    ),
    (
        "TKGOPS-UNSUPPORTED",
        Severity::Error,
        "a TKG feature tkgops does not render yet (ENABLE_AUTOSCALER)",
    ),
    (
        "TKO-CLS-005",
        Severity::Error,
        "R1: prod uses 3 distinct AZs, dev 1 (TVS-RA Availability)",
    ),
    (
        "TKO-CLS-004",
        Severity::Error,
        "R2: CLUSTER_PLAN prod for HA",
    ),
    (
        "TKO-CLS-002",
        Severity::Error,
        "R3: AWS_LOAD_BALANCER_SCHEME_INTERNAL true",
    ),
    (
        "TKO-CLS-003",
        Severity::Error,
        "R4: instance types large and above",
    ),
    (
        "TKGOPS-TKR",
        Severity::Error,
        "R5: TKR well-formed and offered by the management cluster's TKG release (docs/tkg2-class-based.md §8)",
    ),
    ("TKGOPS-DOWNGRADE", Severity::Error, "R5: no TKR downgrade"),
    (
        "TKGOPS-DOCKER-BRIDGE",
        Severity::Error,
        "R6: CIDRs do not overlap 172.17.0.0/16",
    ),
    ("TKGOPS-CIDR", Severity::Error, "CIDR variables parse"),
    (
        "TKO-CLS-007",
        Severity::Error,
        "R8: MachineHealthChecks enabled on the management cluster's ClusterClass (docs/tkg2-class-based.md §5)",
    ),
    (
        "TKO-CLS-006",
        Severity::Error,
        "R9: the management cluster's identity management is oidc or ldap (workload clusters inherit it, docs/tkg2-class-based.md §7)",
    ),
    (
        "TKG-CLS-001",
        Severity::Error,
        "R10: air-gapped registry verified with its CA",
    ),
    (
        "TKGOPS-AIRGAP-IDM",
        Severity::Error,
        "R12: air-gapped clusters use ldap",
    ),
    (
        "TKO-AWS-002",
        Severity::Warning,
        "R14: harbor on the shared-services cluster",
    ),
    (
        "TKGOPS-REQUIRED",
        Severity::Error,
        "R15: TF validate.star / validate.go required variables",
    ),
    (
        "TKGOPS-TF-VALIDATE",
        Severity::Error,
        "R16: TF validate.go checks",
    ),
    (
        "TKGOPS-PKG-ORDER",
        Severity::Error,
        "R17: package dependencies present",
    ),
    (
        "TKGOPS-PKG-SECRET",
        Severity::Error,
        "package values hold no inline secrets (passwords, tokens, keys)",
    ),
    (
        "TKGOPS-DELETE",
        Severity::Error,
        "a delete carries the tkgops/allow-delete label; at most approval.maxDeletesPerChange deletes per change",
    ),
    (
        "TKGOPS-PLACEMENT",
        Severity::Error,
        "an existing cluster keeps its managementCluster, NAMESPACE and CLUSTER_NAME (docs/design.md security rule 7)",
    ),
    (
        "TKGOPS-PLAN-SIZE",
        Severity::Error,
        "one plan covers at most plan.maxClusters clusters (default 200): GitHub's write budget",
    ),
];

/// The security rules (docs/design.md security rules 5, 6, 7, 8): always errors, whatever the
/// policy's `rules.severities` or label-scoped `rules.overrides` say. A policy entry lowering
/// one is ignored and named in every plan ([`super::RulesConfig::ignored`]).
pub const LOCKED_RULES: &[&str] = &[
    "TKGOPS-SECRET",
    "TKGOPS-PKG-SECRET",
    "TKGOPS-NAMESPACE",
    "TKGOPS-NAME",
    "TKGOPS-DELETE",
    "TKGOPS-PLACEMENT",
];

/// Default severity of rule `id`; `None` for an unknown rule ID.
pub(crate) fn rule_default(id: &str) -> Option<Severity> {
    RULES.iter().find(|(r, _, _)| *r == id).map(|(_, s, _)| *s)
}

/// The label marking the shared-services cluster (TVS-RA; reference §4.4).
const SHARED_SERVICES_LABEL: &str = "cluster-role.tkg.tanzu.vmware.com/tanzu-services";

struct Ctx<'a> {
    c: &'a TkgConfig,
    /// The request's management cluster, when the repository policy is known.
    mc: Option<&'a ManagementClusterConfig>,
    out: Vec<Finding>,
}

impl Ctx<'_> {
    /// A finding on the config file at the line of `var` (None when absent).
    fn var(&mut self, var: &str, rule: &str, msg: impl Into<String>) {
        let line = self.c.line(var);
        self.at(line, rule, msg);
    }
    fn at(&mut self, line: Option<u32>, rule: &str, msg: impl Into<String>) {
        let sev = rule_default(rule).unwrap_or(Severity::Error);
        self.out
            .push(Finding::new(&self.c.path, line, rule, sev, msg));
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.c.get(k)
    }
    /// Checks a boolean variable parses; returns its value (None when unset or invalid).
    fn bool_var(&mut self, k: &str, rule: &str) -> Option<bool> {
        let b = self.c.get_bool(k);
        if b.is_none() {
            if let Some(v) = self.c.get(k) {
                let v = v.to_string();
                self.var(
                    k,
                    rule,
                    format!("{k}: {v:?} is not a boolean (true or false)"),
                );
            }
        }
        b
    }
}

fn re(cell: &'static OnceLock<Option<Regex>>, pat: &str) -> Option<&'static Regex> {
    cell.get_or_init(|| Regex::new(pat).ok()).as_ref()
}

/// A parsed TKR version `vMAJ.MIN.PATCH+vmware.N-tkg.M` as comparable numbers
/// `[major, minor, patch, vmware, tkg]` (array order is upgrade order); `None` when `tkr`
/// (surrounding whitespace ignored) is not of that form.
pub(crate) fn parse_tkr(tkr: &str) -> Option<[u64; 5]> {
    static R: OnceLock<Option<Regex>> = OnceLock::new();
    let caps = re(
        &R,
        r"^v(\d{1,9})\.(\d{1,9})\.(\d{1,9})\+vmware\.(\d{1,9})-tkg\.(\d{1,9})$",
    )?
    .captures(tkr.trim())?;
    let mut out = [0u64; 5];
    for (i, o) in out.iter_mut().enumerate() {
        *o = caps.get(i + 1)?.as_str().parse().ok()?;
    }
    Some(out)
}

/// Checks a TKR change from `old_tkr` to `new_tkr` (rule R5, TKG semantics): a finding
/// `TKGOPS-DOWNGRADE` (error) when `new_tkr` is older than `old_tkr`, `TKGOPS-TKR` when either
/// is not of the form `vMAJ.MIN.PATCH+vmware.N-tkg.M`, else `None`. `path`/`line` locate the
/// finding (the settings file and its `tkr:` line).
pub fn check_upgrade(
    path: &str,
    line: Option<u32>,
    old_tkr: &str,
    new_tkr: &str,
) -> Option<Finding> {
    let (old, new) = match (parse_tkr(old_tkr), parse_tkr(new_tkr)) {
        (Some(o), Some(n)) => (o, n),
        _ => {
            let bad = if parse_tkr(old_tkr).is_none() {
                old_tkr
            } else {
                new_tkr
            };
            return Some(Finding::new(
                path,
                line,
                "TKGOPS-TKR",
                Severity::Error,
                format!("tkr {bad:?} is not of the form vMAJOR.MINOR.PATCH+vmware.N-tkg.M"),
            ));
        }
    };
    if new[0] == old[0] && new[1] > old[1] + 1 {
        return Some(Finding::new(
            path,
            line,
            "TKGOPS-DOWNGRADE",
            Severity::Error,
            format!(
                "tkr {new_tkr} jumps more than one Kubernetes minor version from {old_tkr}; Cluster API refuses it (version cannot be increased from v{}.{} to v{}.{}): upgrade one minor at a time",
                old[0], old[1], new[0], new[1]
            ),
        ));
    }
    (new < old).then(|| {
        Finding::new(
            path,
            line,
            "TKGOPS-DOWNGRADE",
            Severity::Error,
            format!(
                "tkr {new_tkr} is older than the current {old_tkr}; downgrades are not supported"
            ),
        )
    })
}

fn docker_bridge() -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(172, 17, 0, 0), 16).unwrap_or_default())
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses a (possibly comma-separated dual-stack) CIDR variable; reports `TKGOPS-CIDR`.
fn cidrs(ctx: &mut Ctx<'_>, k: &str) -> Vec<IpNet> {
    let Some(v) = ctx.get(k).map(str::to_string) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for part in v.split(',') {
        match part.trim().parse::<IpNet>() {
            Ok(n) if n.trunc() != n => {
                ctx.var(
                    k,
                    "TKGOPS-CIDR",
                    format!("{k}: {n} has host bits set; the network is {} (Kubernetes refuses such a CIDR)", n.trunc()),
                );
                out.push(n);
            }
            Ok(n) => out.push(n),
            Err(_) => ctx.var(
                k,
                "TKGOPS-CIDR",
                format!("{k}: {:?} is not a CIDR (e.g. 10.0.0.0/16)", part.trim()),
            ),
        }
    }
    out
}

fn config_rules(ctx: &mut Ctx<'_>) {
    let c = ctx.c;
    secret_rule(ctx);
    // TKGOPS-PLACEHOLDER: envsubst/Terraform/ytt templates committed unrendered
    // (real-configs 10, 14, 16, 23).
    let placeholders: Vec<String> = c
        .vars
        .iter()
        .filter(|(_, v)| is_placeholder(&v.value))
        .map(|(k, _)| k.clone())
        .collect();
    for k in placeholders {
        let v = c.get(&k).unwrap_or("").to_string();
        let msg = if super::tkgconfig::is_secret_variable(&k) {
            format!("{k} holds a template placeholder that was never filled in")
        } else {
            format!("{k} is {v:?}, a template placeholder that was never filled in; commit the rendered value")
        };
        ctx.var(&k, "TKGOPS-PLACEHOLDER", msg);
    }
    // TKGOPS-PROVIDER
    let aws = match ctx
        .get("INFRASTRUCTURE_PROVIDER")
        .map(str::to_ascii_lowercase)
    {
        Some(p) if p == "aws" => true,
        Some(p) => {
            ctx.var(
                "INFRASTRUCTURE_PROVIDER",
                "TKGOPS-PROVIDER",
                format!("INFRASTRUCTURE_PROVIDER: {p} is not supported: tkgops manages TKG clusters on AWS only"),
            );
            false
        }
        // TKG 2.x workload files inherit the provider from their management cluster
        // (docs/tkg2-class-based.md §1; real-configs 06, 12, 20), and tkgops's management
        // clusters are AWS ones.
        None => true,
    };

    // R2 TKO-CLS-004 / TKGOPS-PLAN
    let plan = normalized_plan(c);
    let prod = plan == Some("prod");
    match plan {
        None => {
            let v = ctx.get("CLUSTER_PLAN").unwrap_or("").to_string();
            ctx.var(
                "CLUSTER_PLAN",
                "TKGOPS-PLAN",
                format!("CLUSTER_PLAN: {v:?} is not one of dev, prod, devcc, prodcc"),
            );
        }
        Some("dev") => {
            let msg = match ctx.get("CLUSTER_PLAN") {
                Some(p) => format!("CLUSTER_PLAN is {p}; the reference design requires prod (3 control plane nodes) for HA"),
                None => "CLUSTER_PLAN is not set (TKG default dev); the reference design requires prod (3 control plane nodes) for HA".to_string(),
            };
            ctx.var("CLUSTER_PLAN", "TKO-CLS-004", msg);
        }
        Some(_) => {}
    }

    // R16 TKGOPS-TF-VALIDATE: CLUSTER_NAME
    static NAME: OnceLock<Option<Regex>> = OnceLock::new();
    match ctx.get("CLUSTER_NAME").map(str::to_string) {
        None => ctx.var(
            "CLUSTER_NAME",
            "TKGOPS-TF-VALIDATE",
            "CLUSTER_NAME is required for workload clusters",
        ),
        Some(n) => {
            if !re(&NAME, r"^[a-z0-9][a-z0-9.-]{0,61}[a-z0-9]$").is_some_and(|r| r.is_match(&n)) {
                ctx.var(
                    "CLUSTER_NAME",
                    "TKGOPS-TF-VALIDATE",
                    format!("CLUSTER_NAME {n:?} must match ^[a-z0-9][a-z0-9-.]{{0,61}}[a-z0-9]$ (TF CheckClusterNameFormat)"),
                );
            }
        }
    }
    // CNI
    if let Some(cni) = ctx.get("CNI").map(str::to_string) {
        if !["antrea", "calico", "none"].contains(&cni.as_str()) {
            ctx.var(
                "CNI",
                "TKGOPS-TF-VALIDATE",
                format!("provided CNI type '{cni}' is not in the available options: antrea, calico, none"),
            );
        }
    }
    // Machine counts
    match get_u32(c, "CONTROL_PLANE_MACHINE_COUNT") {
        Ok(Some(n)) if n % 2 == 1 => {}
        Ok(None) => {}
        _ => ctx.var(
            "CONTROL_PLANE_MACHINE_COUNT",
            "TKGOPS-TF-VALIDATE",
            "CONTROL_PLANE_MACHINE_COUNT must be an odd positive integer",
        ),
    }
    if plan.is_some() {
        match worker_counts(c, prod) {
            Err(k) => ctx.var(
                k,
                "TKGOPS-TF-VALIDATE",
                format!("{k} must be a non-negative integer"),
            ),
            Ok(counts) => {
                let set: Vec<&str> = PER_AZ_WORKER_COUNTS
                    .into_iter()
                    .filter(|k| c.get(k).is_some())
                    .collect();
                if prod && !set.is_empty() && set.len() < PER_AZ_WORKER_COUNTS.len() {
                    let shown: Vec<String> = counts.iter().map(u32::to_string).collect();
                    for k in &set {
                        ctx.var(
                            k,
                            "TKGOPS-IGNORED",
                            format!(
                                "{k} is ignored: the Tanzu CLI uses WORKER_MACHINE_COUNT_0, _1 and _2 only when all three are set, and otherwise splits WORKER_MACHINE_COUNT evenly over the three MachineDeployments ({}); set all three, or none",
                                shown.join("/")
                            ),
                        );
                    }
                }
                let total: u64 = counts.iter().map(|n| u64::from(*n)).sum();
                if prod && total < 3 {
                    let k = if c.line("WORKER_MACHINE_COUNT").is_some() {
                        "WORKER_MACHINE_COUNT"
                    } else {
                        "CLUSTER_PLAN"
                    };
                    ctx.var(
                        k,
                        "TKGOPS-TF-VALIDATE",
                        format!("prod plan requires at least 3 workers (got {total})"),
                    );
                }
            }
        }
    }

    // R6 TKGOPS-DOCKER-BRIDGE + TKGOPS-CIDR, R16 SERVICE_CIDR netmask
    let bridge = docker_bridge();
    for k in ["AWS_VPC_CIDR", "CLUSTER_CIDR", "SERVICE_CIDR"] {
        let nets = cidrs(ctx, k);
        for n in &nets {
            if overlaps(n, &bridge) {
                ctx.var(
                    k,
                    "TKGOPS-DOCKER-BRIDGE",
                    format!("{k} {n} overlaps 172.17.0.0/16, the default docker0 bridge network (TVS-RA)"),
                );
            }
            if k == "SERVICE_CIDR" && n.max_prefix_len() - n.prefix_len() > 20 {
                let want = if n.max_prefix_len() == 32 {
                    "/12"
                } else {
                    "/108"
                };
                ctx.var(
                    k,
                    "TKGOPS-TF-VALIDATE",
                    format!("SERVICE_CIDR {n} is too large: it must be {want} or narrower (TF validateServiceCIDRNetmask)"),
                );
            }
        }
    }
    for k in [
        "AWS_PRIVATE_NODE_CIDR",
        "AWS_PRIVATE_NODE_CIDR_1",
        "AWS_PRIVATE_NODE_CIDR_2",
        "AWS_PUBLIC_NODE_CIDR",
        "AWS_PUBLIC_NODE_CIDR_1",
        "AWS_PUBLIC_NODE_CIDR_2",
    ] {
        cidrs(ctx, k);
    }

    // TKGOPS-IGNORED: identity and MachineHealthChecks belong to the management cluster in
    // TKG 2.x (§5: ENABLE_MHC*/MHC_* are not mapped; §7: identity variables are ignored).
    let ignored: Vec<(String, u32)> = c
        .vars
        .iter()
        .filter(|(k, v)| v.line > 0 && !v.value.trim().is_empty() && is_management_only(k))
        .map(|(k, v)| (k.clone(), v.line))
        .collect();
    if let Some(first) = ignored.iter().map(|(_, l)| *l).min() {
        let names: Vec<&str> = ignored.iter().map(|(k, _)| k.as_str()).collect();
        ctx.at(
            Some(first),
            "TKGOPS-IGNORED",
            format!(
                "{} {} ignored in a TKG 2.x workload cluster file: workload clusters inherit identity management and MachineHealthChecks from their management cluster; remove {}",
                names.join(", "),
                if names.len() == 1 { "is" } else { "are" },
                if names.len() == 1 { "it" } else { "them" },
            ),
        );
    }

    // R8 TKO-CLS-007: the ClusterClass's MachineHealthChecks follow the management cluster's
    // ENABLE_MHC* (§5); only inherited values (managementClusters[].defaults) count.
    for k in [
        "ENABLE_MHC",
        "ENABLE_MHC_WORKER_NODE",
        "ENABLE_MHC_CONTROL_PLANE",
    ] {
        if !c.is_own(k) && c.get_bool(k) == Some(false) {
            let mc = ctx.mc.map(|m| m.name.as_str()).unwrap_or("?");
            ctx.at(
                None,
                "TKO-CLS-007",
                format!("{k} is false on management cluster {mc} (managementClusters[].defaults); the reference design requires MachineHealthChecks"),
            );
        }
    }

    // R9 TKO-CLS-006: the management cluster's identity management (§7).
    let idm = ctx.mc.map(|m| m.identity_management_type);
    if let Some(mc) = ctx.mc {
        match mc.identity_management_type {
            Some(IdentityManagementType::Oidc) | Some(IdentityManagementType::Ldap) => {}
            Some(IdentityManagementType::None) => ctx.at(
                None,
                "TKO-CLS-006",
                format!("management cluster {} runs identity management none, and workload clusters inherit it; the reference design requires oidc or ldap", mc.name),
            ),
            None => ctx.at(
                None,
                "TKO-CLS-006",
                format!("management cluster {} declares no identityManagementType in tkgops.yaml; workload clusters inherit the management cluster's identity management, and the reference design requires oidc or ldap", mc.name),
            ),
        }
    }
    if c.get_bool("ENABLE_AUTOSCALER") == Some(true) {
        ctx.var(
            "ENABLE_AUTOSCALER",
            "TKGOPS-UNSUPPORTED",
            AUTOSCALER_UNSUPPORTED,
        );
    }
    // The ClusterBootstrap the CLI renders (CNI none, malformed ANTREA_* flags).
    let cni = c.get("CNI").unwrap_or("antrea").to_ascii_lowercase();
    if ["antrea", "calico", "none"].contains(&cni.as_str()) {
        if let Err(e) = crate::tkg::bootstrap::bootstrap(c, &cni, prod) {
            let rule = if cni == "none" && e.variable == "CNI" {
                "TKGOPS-UNSUPPORTED"
            } else {
                "TKGOPS-TF-VALIDATE"
            };
            ctx.var(&e.variable, rule, e.to_string());
        }
    }
    // R16: what the CLI refuses while mapping variables (§2), e.g. malformed *_EXTRA_ARGS.
    let version = ctx.mc.map(|m| m.tkg_version).unwrap_or(TkgVersion::V2_2);
    if let Err(e) = cluster_variables(c, version, prod) {
        if !["AWS_REGION", "AWS_SSH_KEY_NAME"].contains(&e.variable.as_str()) {
            let msg = e.to_string();
            ctx.var(&e.variable, "TKGOPS-TF-VALIDATE", msg);
        }
    }

    // R10 TKG-CLS-001, R12 TKGOPS-AIRGAP-IDM
    if ctx.get("TKG_CUSTOM_IMAGE_REPOSITORY").is_some() {
        if ctx.bool_var("TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY", "TKG-CLS-001") == Some(true)
        {
            ctx.var(
                "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY",
                "TKG-CLS-001",
                "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY is true; the private registry must be verified with its CA certificate",
            );
        }
        let ca_key = "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE";
        match ctx.get(ca_key) {
            None => ctx.var(
                if c.line(ca_key).is_some() { ca_key } else { "TKG_CUSTOM_IMAGE_REPOSITORY" },
                "TKG-CLS-001",
                format!("{ca_key} is required for an air-gapped registry (base64 of the PEM CA certificate)"),
            ),
            Some(v) => {
                let compact: String = v.chars().filter(|ch| !ch.is_whitespace()).collect();
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(compact.as_bytes())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .is_some_and(|s| s.contains("-----BEGIN CERTIFICATE-----"));
                if !pem {
                    ctx.var(
                        ca_key,
                        "TKG-CLS-001",
                        format!("{ca_key} does not base64-decode to a PEM certificate (-----BEGIN CERTIFICATE-----); build it with base64 -w 0 ca.crt"),
                    );
                }
            }
        }
        if let Some(Some(t)) = idm {
            if t != IdentityManagementType::Ldap {
                let mc = ctx.mc.map(|m| m.name.clone()).unwrap_or_default();
                ctx.var(
                    "TKG_CUSTOM_IMAGE_REPOSITORY",
                    "TKGOPS-AIRGAP-IDM",
                    format!("air-gapped clusters (TKG_CUSTOM_IMAGE_REPOSITORY set) support only ldap identity management (SIVT Federal Airgap guide), but management cluster {mc} runs {t:?}"),
                );
            }
        }
    }

    // TKGOPS-UNKNOWN-VAR
    let unknown: Vec<String> = c
        .vars
        .keys()
        .filter(|k| !is_known_variable(k))
        .cloned()
        .collect();
    for k in unknown {
        ctx.var(
            &k,
            "TKGOPS-UNKNOWN-VAR",
            format!("{k} is not a known TKG configuration variable (typo?)"),
        );
    }

    if aws {
        aws_rules(ctx, prod, plan.is_some());
    }
}

fn aws_rules(ctx: &mut Ctx<'_>, prod: bool, plan_known: bool) {
    let c = ctx.c;
    // R15 TKGOPS-REQUIRED
    for k in ["AWS_REGION", "AWS_SSH_KEY_NAME"] {
        if ctx.get(k).is_none() {
            ctx.var(
                k,
                "TKGOPS-REQUIRED",
                format!("{k} is required (TF validate.star required_variable_list_aws)"),
            );
        }
    }
    let region = ctx.get("AWS_REGION").map(str::to_string);
    static REGION: OnceLock<Option<Regex>> = OnceLock::new();
    if let Some(r) = region.as_deref() {
        let valid = re(&REGION, r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$")
            .is_some_and(|re| re.is_match(r));
        if !valid && !is_placeholder(r) {
            ctx.var(
                "AWS_REGION",
                "TKGOPS-TF-VALIDATE",
                format!("AWS_REGION {r:?} is not an AWS region name (e.g. us-east-1)"),
            );
        }
    }
    for k in ["AWS_NODE_AZ", "AWS_NODE_AZ_1", "AWS_NODE_AZ_2"] {
        if let (Some(az), Some(r)) = (ctx.get(k).map(str::to_string), region.as_deref()) {
            if !az.starts_with(r) {
                ctx.var(
                    k,
                    "TKGOPS-REQUIRED",
                    format!("{k} {az} is not in AWS_REGION {r}"),
                );
            }
        }
    }
    if ctx.get("AWS_VPC_ID").is_some() {
        let needed: &[&str] = if prod {
            &[
                "AWS_PRIVATE_SUBNET_ID",
                "AWS_PRIVATE_SUBNET_ID_1",
                "AWS_PRIVATE_SUBNET_ID_2",
            ]
        } else {
            &["AWS_PRIVATE_SUBNET_ID"]
        };
        for k in needed {
            if ctx.get(k).is_none() {
                let at = if c.line(k).is_some() {
                    *k
                } else {
                    "AWS_VPC_ID"
                };
                let plan = if prod { "prod" } else { "dev" };
                ctx.var(
                    at,
                    "TKGOPS-REQUIRED",
                    format!("{k} is required with an existing VPC (AWS_VPC_ID) on the {plan} plan"),
                );
            }
        }
    }
    if ctx.get("AWS_PUBLIC_SUBNET_ID").is_none() {
        for k in ["AWS_PUBLIC_SUBNET_ID_1", "AWS_PUBLIC_SUBNET_ID_2"] {
            if ctx.get(k).is_some() {
                ctx.var(
                    k,
                    "TKGOPS-REQUIRED",
                    format!("{k} cannot be used without AWS_PUBLIC_SUBNET_ID"),
                );
            }
        }
    }

    // R1 TKO-CLS-005
    if plan_known {
        if prod {
            let keys = ["AWS_NODE_AZ", "AWS_NODE_AZ_1", "AWS_NODE_AZ_2"];
            let missing: Vec<&str> = keys
                .iter()
                .copied()
                .filter(|k| ctx.get(k).is_none())
                .collect();
            if !missing.is_empty() {
                let at = missing
                    .iter()
                    .copied()
                    .find(|k| c.line(k).is_some())
                    .unwrap_or("CLUSTER_PLAN");
                ctx.var(
                    at,
                    "TKO-CLS-005",
                    format!(
                        "prod clusters need 3 availability zones: set {}",
                        missing.join(", ")
                    ),
                );
            } else {
                let azs: Vec<String> = keys
                    .iter()
                    .filter_map(|k| ctx.get(k).map(str::to_string))
                    .collect();
                for (i, k) in keys.iter().enumerate().skip(1) {
                    if azs[..i].contains(&azs[i]) {
                        ctx.var(
                            k,
                            "TKO-CLS-005",
                            format!(
                                "{k} {} repeats an earlier AZ; the 3 AZs must be distinct",
                                azs[i]
                            ),
                        );
                    }
                }
            }
        } else {
            for k in ["AWS_NODE_AZ_1", "AWS_NODE_AZ_2"] {
                if ctx.get(k).is_some() {
                    ctx.var(
                        k,
                        "TKO-CLS-005",
                        format!("{k} is set but the dev plan uses 1 AZ (AWS_NODE_AZ only)"),
                    );
                }
            }
        }
    }

    // R3 TKO-CLS-002
    let lb = "AWS_LOAD_BALANCER_SCHEME_INTERNAL";
    match ctx.bool_var(lb, "TKO-CLS-002") {
        Some(true) => {}
        Some(false) => ctx.var(
            lb,
            "TKO-CLS-002",
            format!("{lb} is false; the reference design requires an internal load balancer"),
        ),
        None if ctx.get(lb).is_none() => ctx.var(
            lb,
            "TKO-CLS-002",
            format!("{lb} is not set (TKG default false); the reference design requires true"),
        ),
        None => {}
    }

    // R4 TKO-CLS-003
    for k in [
        "CONTROL_PLANE_MACHINE_TYPE",
        "NODE_MACHINE_TYPE",
        "NODE_MACHINE_TYPE_1",
        "NODE_MACHINE_TYPE_2",
    ] {
        if let Some(t) = ctx.get(k).map(str::to_string) {
            let size = t.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
            if !t.contains('.') {
                ctx.var(
                    k,
                    "TKO-CLS-003",
                    format!("{k} {t:?} is not an EC2 instance type (family.size)"),
                );
            } else if ["nano", "micro", "small", "medium"].contains(&size.as_str()) {
                ctx.var(
                    k,
                    "TKO-CLS-003",
                    format!("{k} {t} is too small; the reference design requires large and above"),
                );
            }
        }
    }
}

fn settings_rules(s: &ClusterSettings, repo: Option<&RepoConfig>, out: &mut Vec<Finding>) {
    let mk = |line: Option<u32>, rule: &str, msg: String| {
        Finding::new(
            &s.path,
            line,
            rule,
            rule_default(rule).unwrap_or(Severity::Error),
            msg,
        )
    };
    // TKGOPS-PKG-SECRET: inline values end up in the PR comment, the plan and the journal
    // (security rule 5); secrets belong in a Kubernetes Secret referenced by the package.
    for p in &s.packages {
        if let Some(values) = &p.values {
            let mut keys = Vec::new();
            secret_keys(values, "", &mut keys);
            for key in keys {
                out.push(mk(
                    s.line("packages"),
                    "TKGOPS-PKG-SECRET",
                    format!(
                        "package {} values set {key}, which looks like a secret; keep secrets out of the config repository (create them as a Kubernetes Secret on the cluster)",
                        p.name
                    ),
                ));
            }
        }
    }
    // TKGOPS-DEPRECATED: upgradePolicy was parsed but never used.
    if s.upgrade_policy.is_some() {
        out.push(mk(
            s.line("upgradePolicy"),
            "TKGOPS-DEPRECATED",
            "upgradePolicy is no longer used and has no effect: tkgops never scheduled upgrades from it. Schedule upgrades with `schedules` in the repository's tkgops.yaml (README \"Schedules\"), then remove upgradePolicy from this file".to_string(),
        ));
    }
    // R5 TKGOPS-TKR
    match parse_tkr(&s.tkr) {
        None => out.push(mk(
            s.line("tkr"),
            "TKGOPS-TKR",
            format!("tkr {:?} is not of the form vMAJOR.MINOR.PATCH+vmware.N-tkg.M (e.g. v1.23.8+vmware.2-tkg.1)", s.tkr),
        )),
        Some(_) => {
            if let Some(mc) = repo.and_then(|r| r.management_cluster(&s.management_cluster)) {
                if !mc.offers_tkr(&s.tkr) {
                    out.push(mk(
                        s.line("tkr"),
                        "TKGOPS-TKR",
                        format!(
                            "tkr {} is not offered by management cluster {} (TKG {}); it offers {}",
                            s.tkr,
                            mc.name,
                            mc.tkg_version,
                            mc.offered_tkrs().join(", ")
                        ),
                    ));
                }
            }
        }
    }
    if let Some(r) = repo {
        if r.management_cluster(&s.management_cluster).is_none() {
            out.push(mk(
                s.line("managementCluster"),
                SCHEMA,
                format!(
                    "managementCluster {} is not listed in the repository's managementClusters",
                    s.management_cluster
                ),
            ));
        }
        if s.tmc.is_some() && r.tmc.is_none() {
            out.push(mk(
                s.line("tmc"),
                SCHEMA,
                "tmc is set but the repository's tkgops.yaml configures no tmc endpoint".into(),
            ));
        }
    }
    // Packages
    let (pkgs, errors) = resolve_packages(s, repo);
    for (_name, msg) in errors {
        out.push(mk(s.line("packages"), SCHEMA, msg));
    }
    let names: Vec<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
    let has = |n: &str| names.contains(&n);
    for dependent in ["prometheus", "grafana", "harbor"] {
        if has(dependent) && !has("contour") {
            out.push(mk(
                s.line("packages"),
                "TKGOPS-PKG-ORDER",
                format!("package {dependent} requires contour (deploying Contour is a prerequisite for Prometheus, Grafana and Harbor)"),
            ));
        }
    }
    if has("contour") && !has("cert-manager") {
        out.push(mk(
            s.line("packages"),
            "TKGOPS-PKG-ORDER",
            "package contour requires cert-manager (install cert-manager first)".into(),
        ));
    }
    if has("harbor") && !s.labels.contains_key(SHARED_SERVICES_LABEL) {
        out.push(mk(
            s.line("packages"),
            "TKO-AWS-002",
            format!("harbor belongs on a dedicated shared-services cluster; label it {SHARED_SERVICES_LABEL}"),
        ));
    }
}

/// `clusters/<name>/cluster-config.yaml` → `<name>` (pure string handling of `path`).
fn cluster_dir_name(path: &str) -> Option<&str> {
    let p = path.replace('\\', "/");
    let mut parts = p.rsplit('/');
    let file = parts.next()?;
    if file != "cluster-config.yaml" {
        return None;
    }
    let dir = parts.next()?;
    let parent = parts.next()?;
    if parent != "clusters" || dir.is_empty() {
        return None;
    }
    let start = path.len() - file.len() - 1 - dir.len();
    path.get(start..start + dir.len())
}

/// Applies the repository's severity policy to findings of the cluster labelled `labels`.
fn apply_policy(
    findings: Vec<Finding>,
    settings: Option<&ClusterSettings>,
    repo: Option<&RepoConfig>,
) -> Vec<Finding> {
    let Some(r) = repo else { return findings };
    let empty = std::collections::BTreeMap::new();
    let labels = settings.map(|s| &s.labels).unwrap_or(&empty);
    findings
        .into_iter()
        .filter_map(|mut f| {
            if f.rule == PARSE || f.rule == SCHEMA {
                return Some(f);
            }
            // Security rules cannot be lowered (the policy entry is named in the plan).
            if LOCKED_RULES.contains(&f.rule.as_str()) {
                f.severity = Severity::Error;
                return Some(f);
            }
            let mut level = None;
            if let Some(l) = r.rules.severities.get(&f.rule) {
                level = Some(*l);
            }
            for o in &r.rules.overrides {
                if o.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    if let Some(l) = o.severities.get(&f.rule) {
                        level = Some(*l);
                    }
                }
            }
            match level {
                None => Some(f),
                Some(RuleLevel::Off) => None,
                Some(RuleLevel::Error) => {
                    f.severity = Severity::Error;
                    Some(f)
                }
                Some(RuleLevel::Warning) => {
                    f.severity = Severity::Warning;
                    Some(f)
                }
            }
        })
        .collect()
}

/// Validates one cluster request against every rule of reference `docs/tanzu-apis.md` §5 (R1–R6,
/// R8–R10, R12, R14–R17) plus `TKGOPS-PROVIDER`, `TKGOPS-PLAN`, `TKGOPS-CIDR`,
/// `TKGOPS-UNKNOWN-VAR`, `TKGOPS-NAME` (when `config.path` is `…/clusters/<dir>/cluster-config.yaml`)
/// and, with `settings`, `TKGOPS-TKR`, package and management-cluster checks (`TKGOPS-SCHEMA`,
/// the latter only with `repo`). See [`RULES`] for IDs and default severities.
///
/// AWS-only rules (R1, R3, R4, R15) are skipped when `INFRASTRUCTURE_PROVIDER` names another
/// provider. Severities are then resolved by `repo`'s policy (`rules.severities`, then every
/// `rules.overrides` entry whose `matchLabels` the settings' labels contain, in order; `off`
/// drops the finding; `TKGOPS-PARSE`/`TKGOPS-SCHEMA` and the security rules [`LOCKED_RULES`]
/// cannot be changed: they stay errors); without `repo` the
/// defaults apply. Returns the findings sorted by (path, line, rule). Never includes a secret
/// variable's value.
pub fn validate(
    config: &TkgConfig,
    settings: Option<&ClusterSettings>,
    repo: Option<&RepoConfig>,
) -> Vec<Finding> {
    let mc = match (settings, repo) {
        (Some(s), Some(r)) => r.management_cluster(&s.management_cluster),
        _ => None,
    };
    let merged = mc.map(|m| config.with_defaults(&m.defaults));
    let config = merged.as_ref().unwrap_or(config);
    let mut ctx = Ctx {
        c: config,
        mc,
        out: Vec::new(),
    };
    config_rules(&mut ctx);
    if let (Some(dir), Some(name)) = (cluster_dir_name(&config.path), config.get("CLUSTER_NAME")) {
        if dir != name {
            let name = name.to_string();
            ctx.var(
                "CLUSTER_NAME",
                "TKGOPS-NAME",
                format!("CLUSTER_NAME {name} differs from its directory clusters/{dir}/; they must be equal"),
            );
        }
    }
    namespace_rule(&mut ctx, settings, repo);
    let mut out = ctx.out;
    if let Some(s) = settings {
        settings_rules(s, repo, &mut out);
    }
    let mut out = apply_policy(out, settings, repo);
    out.sort_by(|a, b| (&a.path, a.line, &a.rule).cmp(&(&b.path, b.line, &b.rule)));
    out.dedup();
    out
}

/// `TKGOPS-SECRET` (security rule 5): a credential committed in the cluster configuration file
/// (a non-empty [`is_credential_variable`], or any `<encoded:…>` value) is an error on its line
/// that names the variable and never prints the value.
fn secret_rule(ctx: &mut Ctx<'_>) {
    let committed: Vec<(String, bool)> = ctx
        .c
        .vars
        .iter()
        .filter_map(|(k, v)| {
            let value = v.value.trim();
            let encoded = value.starts_with("<encoded:");
            (!value.is_empty() && (encoded || is_credential_variable(k)))
                .then(|| (k.clone(), encoded))
        })
        .collect();
    // A proxy URL with userinfo (`http://user:pass@host:3128`) carries a password too.
    let proxies: Vec<String> = ctx
        .c
        .vars
        .iter()
        .filter(|(k, v)| is_proxy_variable(k) && proxy_has_userinfo(&v.value))
        .map(|(k, _)| k.clone())
        .collect();
    for k in proxies {
        ctx.var(
            &k,
            "TKGOPS-SECRET",
            format!("{k} holds a proxy URL with a user name and password (user:password@host), committed to Git where every reader of the repository, the pull request and the journal sees it, and TKG writes it into the Cluster; remove them: give the proxy an allow-list for the cluster's subnets, or authenticate it outside the URL. Rotate the password if it was real."),
        );
    }
    for (k, encoded) in committed {
        let upper = k.to_ascii_uppercase();
        let instead = if upper.starts_with("LDAP_") || upper.starts_with("OIDC_") {
            "workload clusters inherit identity management from their management cluster (TKG 2.x), so the request needs no identity secret"
        } else if upper.starts_with("AWS_") {
            "tkgops and Cluster API use the AWS credentials of the bot and of the management cluster, never credentials from the request"
        } else if upper.contains("REGISTRY") || upper.contains("IMAGE_REPOSITORY") {
            "registry credentials belong on the management cluster (a Secret there), not in Git"
        } else {
            "keep it in a Secret on the management cluster and out of Git"
        };
        let what = if encoded {
            "an <encoded:…> value"
        } else {
            "a credential"
        };
        ctx.var(
            &k,
            "TKGOPS-SECRET",
            format!("{k} holds {what}, committed to Git where every reader of the repository, the pull request and the journal sees it; remove it: {instead}. Rotate it if it was real."),
        );
    }
}

/// Whether TKG variable `name` holds a proxy URL: `TKG_HTTP_PROXY`, `TKG_HTTPS_PROXY` and the
/// plain `HTTP_PROXY`/`HTTPS_PROXY` (any case, any prefix ending in `HTTP_PROXY`/`HTTPS_PROXY`).
fn is_proxy_variable(name: &str) -> bool {
    let n = name.trim().to_ascii_uppercase();
    n.ends_with("HTTP_PROXY") || n.ends_with("HTTPS_PROXY")
}

/// Whether the proxy URL `value` carries userinfo (`scheme://user[:password]@host…`), i.e. a
/// credential (rule `TKGOPS-SECRET`). Only the authority (before the first `/`, `?` or `#`
/// after the scheme) is looked at; a value without `://` is read as an authority.
pub fn proxy_has_userinfo(value: &str) -> bool {
    let v = value.trim();
    let rest = v.split_once("://").map_or(v, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.contains('@')
}

/// Whether `name` is a namespace of the platform itself, which tkgops never writes Clusters into
/// unless `allowedNamespaces` lists it: `kube-*`, `tkg-system`, `tanzu-*`, `capi-*`,
/// `cap?-system` (`capa-system`, `capv-system`, …) and `vmware-system-*`.
pub fn is_system_namespace(name: &str) -> bool {
    let b = name.as_bytes();
    name.starts_with("kube-")
        || name == "tkg-system"
        || name.starts_with("tkg-system-")
        || name.starts_with("tanzu-")
        || name.starts_with("capi-")
        || name.starts_with("vmware-system-")
        || (b.len() == 11 && name.starts_with("cap") && name.ends_with("-system"))
}

/// Whether `name` is a DNS-1123 label (RFC 1123: at most 63 characters of `a-z`, `0-9` and
/// `-`, starting and ending with an alphanumeric), as Kubernetes requires of namespaces.
pub fn is_dns1123_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `TKGOPS-NAMESPACE`: the namespace the Cluster goes to (`NAMESPACE`, else the management
/// cluster's `namespace`) is a DNS-1123 label and not a system namespace
/// ([`is_system_namespace`]) unless the repository's `allowedNamespaces` lists it (security
/// rule 7).
fn namespace_rule(
    ctx: &mut Ctx<'_>,
    settings: Option<&ClusterSettings>,
    repo: Option<&RepoConfig>,
) {
    let (ns, source) = match ctx.get("NAMESPACE").filter(|v| !v.is_empty()) {
        Some(ns) => (ns.to_string(), "NAMESPACE".to_string()),
        None => {
            let Some(mc) = settings
                .zip(repo)
                .and_then(|(s, r)| r.management_cluster(&s.management_cluster))
            else {
                return;
            };
            (
                mc.namespace.clone(),
                format!(
                    "the namespace of management cluster {} (NAMESPACE is not set)",
                    mc.name
                ),
            )
        }
    };
    if !is_dns1123_label(&ns) {
        ctx.var(
            "NAMESPACE",
            "TKGOPS-NAMESPACE",
            format!("{source} {ns:?} is not a valid namespace: at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit (DNS-1123 label)"),
        );
    } else if is_system_namespace(&ns)
        && !repo.is_some_and(|r| r.allowed_namespaces.iter().any(|a| a == &ns))
    {
        ctx.var(
            "NAMESPACE",
            "TKGOPS-NAMESPACE",
            format!("{source} {ns:?} is a system namespace of the management cluster; tkgops creates Clusters there only when tkgops.yaml lists it under allowedNamespaces"),
        );
    }
}

/// Collects the dotted paths of keys in `v` whose names look like secrets (password, secret,
/// token, private key, credentials) and hold a non-empty value. Values are never returned.
fn secret_keys(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
    const MARKERS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "privatekey",
        "private_key",
        "credential",
        "apikey",
        "api_key",
    ];
    if let serde_yaml::Value::Mapping(m) = v {
        for (k, val) in m {
            let Some(name) = k.as_str() else { continue };
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            };
            let lower = name.to_ascii_lowercase().replace('-', "_");
            let non_empty = !matches!(val, serde_yaml::Value::Null) && val.as_str() != Some("");
            if non_empty && !val.is_mapping() && MARKERS.iter().any(|m| lower.contains(m)) {
                out.push(path);
            } else {
                secret_keys(val, &path, out);
            }
        }
    }
}

/// Whether flat variable `name` belongs to the management cluster in TKG 2.x, so a workload file
/// cannot set it: identity management (`IDENTITY_MANAGEMENT_TYPE`, `LDAP_*`, `OIDC_*`, §7) and
/// MachineHealthChecks (`ENABLE_MHC*`, `MHC_*`, `NODE_STARTUP_TIMEOUT`, §5).
fn is_management_only(name: &str) -> bool {
    name == "IDENTITY_MANAGEMENT_TYPE"
        || name.starts_with("LDAP_")
        || name.starts_with("OIDC_")
        || name.starts_with("ENABLE_MHC")
        || name.starts_with("MHC_")
        || name == "NODE_STARTUP_TIMEOUT"
        || name == "MACHINE_HEALTH_CHECK_ENABLED"
}

/// Whether `value` is an unrendered template placeholder: `${name}` anywhere (envsubst,
/// Terraform) or the whole value `<NAME>` (documentation placeholders); `<encoded:…>` values are
/// credentials, reported by `TKGOPS-SECRET` instead.
fn is_placeholder(value: &str) -> bool {
    let v = value.trim();
    if v.contains("${") {
        return true;
    }
    v.len() > 2
        && v.starts_with('<')
        && v.ends_with('>')
        && !v.starts_with("<encoded:")
        && v[1..v.len() - 1]
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
}

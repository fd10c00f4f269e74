//! The config repository format (cluster requests) and the reference-design validation rules.
//!
//! Pure: no I/O. [`validate_paths`] (`tkgops validate PATH...`) reads through the caller's
//! [`crate::files::Files`].
//!
//! Layout of a config repository:
//! - `tkgops.yaml` at the root: [`RepoConfig`] (management clusters, TMC, approvals, package
//!   defaults, rule severities);
//! - `clusters/<name>/cluster-config.yaml`: the TKG cluster configuration file exactly as
//!   `tanzu cluster create --file` takes it ([`TkgConfig`], parsed by [`parse_tkg_config`]);
//! - `clusters/<name>/tkgops.yaml`: the bot's settings for that cluster ([`ClusterSettings`]).
//!
//! [`validate`] enforces the TKO reference-design rules (reference `docs/tanzu-apis.md` §5) and the
//! Tanzu Framework CLI checks; [`cluster_spec`] derives the desired state ([`ClusterSpec`]) with
//! every TKG 1.6 default applied.

pub mod codeowners;
pub mod fs;
mod packages;
mod rules;
mod settings;
mod spec;
mod tkgconfig;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use fs::{validate_paths, ValidateReport};
pub use packages::{
    standard_package, StandardPackage, PACKAGE_DEPENDENCIES, PACKAGE_INSTALL_ORDER,
    TKG16_STANDARD_PACKAGES,
};
pub(crate) use rules::parse_tkr;
pub use rules::{
    check_upgrade, is_dns1123_label, is_system_namespace, proxy_has_userinfo, validate,
    LOCKED_RULES, RULES,
};
pub(crate) use settings::cron_of;
pub use settings::{
    parse_cluster_settings, parse_repo_config, ApprovalPolicy, AwsIdentity, ClusterSettings,
    ClusterTmc, DriftPolicy, IdentityManagementType, IgnoredOverride, KubeconfigSource,
    ManagementClusterConfig, PackageDefaults, PackageRepositoryRef, PackageRequest, PlanPolicy,
    RepoConfig, RuleLevel, RuleOverride, RulesConfig, TmcConfig, ALLOW_DELETE_LABEL,
    DEFAULT_MAX_CLUSTERS, MAX_MAX_CLUSTERS,
};
pub use spec::{
    cluster_spec, ClusterSpec, MachineSpec, OsSpec, PackageSpec, SubnetSpec, TmcSpec, VpcSpec,
    WorkerSpec,
};
pub use tkgconfig::{
    is_credential_variable, is_known_variable, is_secret_variable, parse_tkg_config, TkgConfig,
    TkgVar, MAX_CONFIG_BYTES,
};

/// Severity of a [`Finding`]. An `error` blocks the pull request (exit code 1 of
/// `tkgops validate`); a `warning` is advisory. Serialized lowercase (`"error"`, `"warning"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks the request.
    Error,
    /// Advisory only.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in a file of the config repository.
///
/// `path` is the file the finding is about (as given to the parser), `line` the 1-based line of
/// the concerned variable or key when known, `rule` the rule ID (e.g. `TKO-CLS-004` from the TKO
/// reference design, or a `TKGOPS-*` ID of this bot; see [`RULES`]). Messages never contain the
/// value of a secret variable ([`is_secret_variable`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// File the finding is about.
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// Rule ID.
    pub rule: String,
    /// Severity after the repository's severity policy was applied.
    pub severity: Severity,
    /// Human-readable message.
    pub message: String,
}

impl Finding {
    /// Builds a finding with the given fields (`path`, 1-based `line`, `rule` ID, `severity`,
    /// `message`).
    pub fn new(
        path: impl Into<String>,
        line: Option<u32>,
        rule: impl Into<String>,
        severity: Severity,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            path: path.into(),
            line,
            rule: rule.into(),
            severity,
            message: message.into(),
        }
    }
}

impl fmt::Display for Finding {
    /// `{path}:{line}: {rule} {severity}: {message}`, or `{path}: {rule} {severity}: {message}`
    /// without a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(
                f,
                "{}:{}: {} {}: {}",
                self.path, l, self.rule, self.severity, self.message
            ),
            None => write!(
                f,
                "{}: {} {}: {}",
                self.path, self.rule, self.severity, self.message
            ),
        }
    }
}

/// A cluster request: one directory `clusters/<name>/` of the config repository.
///
/// `name` is the directory name (which must equal `CLUSTER_NAME`, rule `TKGOPS-NAME`), `config`
/// its `cluster-config.yaml`, `settings` its `tkgops.yaml`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterRequest {
    /// Directory name under `clusters/`.
    pub name: String,
    /// The TKG cluster configuration file.
    pub config: TkgConfig,
    /// The bot's settings for the cluster.
    pub settings: ClusterSettings,
}

//! tkgops's own files: the repository `tkgops.yaml` ([`RepoConfig`]) and the per-cluster
//! `clusters/<name>/tkgops.yaml` ([`ClusterSettings`]). camelCase keys, unknown keys rejected
//! (`TKGOPS-SCHEMA`).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml::Value;

use super::packages::standard_package;
use super::rules::rule_default;
use super::tkgconfig::{decode_text, parse_yaml_document, yaml_error};
use super::{Finding, Severity};
use crate::tkg::TkgVersion;

/// Rule ID of schema errors in tkgops's own files.
pub(crate) const SCHEMA: &str = "TKGOPS-SCHEMA";

/// The config repository's root `tkgops.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepoConfig {
    /// Management clusters the bot may create workload clusters on (at least one).
    pub management_clusters: Vec<ManagementClusterConfig>,
    /// Tanzu Mission Control organisation; absent = no TMC attach possible.
    #[serde(default)]
    pub tmc: Option<TmcConfig>,
    /// Who may approve pull requests and how many approvals are needed.
    #[serde(default)]
    pub approval: ApprovalPolicy,
    /// Package repository and packages installed on every cluster.
    #[serde(default)]
    pub packages: PackageDefaults,
    /// Severity policy for the validation rules.
    #[serde(default)]
    pub rules: RulesConfig,
    /// System namespaces (e.g. `tkg-system`) that cluster requests may nevertheless use
    /// (rule `TKGOPS-NAMESPACE`); empty by default.
    #[serde(default)]
    pub allowed_namespaces: Vec<String>,
    /// Scheduled upgrade runs (cron in a time zone, maintenance window, selector, target,
    /// waves); empty by default. Validated by [`crate::schedule::validate_schedules`]
    /// (`TKGOPS-SCHEDULE`).
    #[serde(default)]
    #[schemars(
        description = "Scheduled upgrade runs (cron in a time zone, maintenance window, selector, target, waves; README \"Schedules\"); empty by default. Checked by rule TKGOPS-SCHEDULE."
    )]
    pub schedules: Vec<crate::schedule::Schedule>,
    /// Limits of one plan (`plan.maxClusters`); the defaults when absent.
    #[serde(default)]
    pub plan: PlanPolicy,
    /// Path of the file as given to [`parse_repo_config`] (not part of the YAML).
    #[serde(skip)]
    pub path: String,
}

/// Default of [`PlanPolicy::max_clusters`]: 200 clusters per plan.
pub const DEFAULT_MAX_CLUSTERS: u32 = 200;

/// Largest [`PlanPolicy::max_clusters`] [`parse_repo_config`] accepts: 10,000.
pub const MAX_MAX_CLUSTERS: u32 = 10_000;

/// The `plan` section of [`RepoConfig`]: limits of one plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanPolicy {
    /// At most this many clusters in one plan (default [`DEFAULT_MAX_CLUSTERS`], 1 to
    /// [`MAX_MAX_CLUSTERS`]). A change touching more is blocked as a whole (rule
    /// `TKGOPS-PLAN-SIZE`): each planned cluster costs GitHub writes (a details comment on a
    /// large pull request), so a fork touching thousands of folders would spend the bot's
    /// GitHub write budget.
    #[serde(default = "default_max_clusters")]
    #[schemars(
        range(min = 1, max = 10000),
        description = "At most this many clusters in one plan (default 200, 1 to 10000). A change touching more is blocked as a whole (rule TKGOPS-PLAN-SIZE): each planned cluster costs GitHub writes."
    )]
    pub max_clusters: u32,
}

impl Default for PlanPolicy {
    fn default() -> Self {
        PlanPolicy {
            max_clusters: DEFAULT_MAX_CLUSTERS,
        }
    }
}

fn default_max_clusters() -> u32 {
    DEFAULT_MAX_CLUSTERS
}

impl RepoConfig {
    /// The management cluster named `name`, if configured.
    pub fn management_cluster(&self, name: &str) -> Option<&ManagementClusterConfig> {
        self.management_clusters.iter().find(|m| m.name == name)
    }
}

/// A management cluster entry of [`RepoConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagementClusterConfig {
    /// Name referenced by [`ClusterSettings::management_cluster`].
    #[schemars(
        description = "Name of the management cluster, as clusters' `managementCluster` names it."
    )]
    pub name: String,
    /// How the bot reaches it: `{file: PATH}`, `{env: VAR}` or
    /// `{secret: {namespace, name, key}}` (key default `value`).
    #[serde(deserialize_with = "kubeconfig_de")]
    #[schemars(schema_with = "kubeconfig_schema")]
    pub kubeconfig: KubeconfigSource,
    /// Namespace of the Cluster objects when the TKG `NAMESPACE` variable is unset
    /// (default `default`, TF `constants/defaults.go` `DefaultNamespace`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The management cluster's TKG release (`tkgVersion: 2.2`), required: from it the plan
    /// knows the ClusterClass, the TKRs and the variables without credentials; the preflight
    /// checks it against the cluster (docs/tkg2-class-based.md §1, §8, §9).
    pub tkg_version: TkgVersion,
    /// ClusterClass name when it differs from the release default
    /// ([`TkgVersion::cluster_class`]), e.g. for an unverified 2.3/2.4 class name.
    #[serde(default)]
    #[schemars(
        description = "ClusterClass name when it differs from the release's default (tkg-aws-default-v1.0.0 for 2.1 and 2.2), e.g. for an unverified 2.3/2.4 class name."
    )]
    pub cluster_class: Option<String>,
    /// TKR versions this management cluster offers beyond the release's own
    /// ([`TkgVersion::tkrs`]), e.g. from an `additional-compatible-tkrs` ConfigMap (§8).
    #[serde(default)]
    #[schemars(
        description = "TKR versions this management cluster offers beyond the ones its TKG release ships, e.g. from an `additional-compatible-tkrs` ConfigMap."
    )]
    pub tkrs: Vec<String>,
    /// Flat TKG variables (`AWS_REGION: us-west-2`) merged under every request that names this
    /// management cluster: workload files inherit them as they inherit the management cluster's
    /// configuration in TKG (the class defaults, §1). A request's own value wins.
    #[serde(default, deserialize_with = "flat_vars_de")]
    #[schemars(schema_with = "flat_vars_schema")]
    pub defaults: BTreeMap<String, String>,
    /// The identity management the management cluster runs (`oidc`, `ldap` or `none`); workload
    /// clusters inherit it (§7), so rule TKO-CLS-006 checks it here and the preflight verifies
    /// the Pinniped info the cluster publishes. Unset = not declared (TKO-CLS-006 reports it).
    #[serde(default)]
    pub identity_management_type: Option<IdentityManagementType>,
    /// The AWS identity of this management cluster's account: the role tkgops assumes (STS
    /// `AssumeRole`) for the AWS steps of its clusters. Unset: the bot's own identity.
    #[serde(default)]
    pub aws: Option<AwsIdentity>,
}

/// An AWS role tkgops assumes for one management cluster's AWS steps (TKG estates span
/// accounts: each management cluster usually lives in its own). The bot's own identity needs
/// `sts:AssumeRole` on it, and the role needs what `deploy/aws/iam-policy.json` allows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsIdentity {
    /// The role's ARN, `arn:aws:iam::<12-digit account>:role/<name>` (any AWS partition).
    pub role_arn: String,
    /// The external ID the role's trust policy requires, if any (STS `ExternalId`; 2–1224
    /// characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The region of the STS endpoint to call, e.g. `us-gov-west-1`; default: the region of the
    /// step (the cluster's `AWS_REGION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl AwsIdentity {
    /// Why `self` cannot be used, or `None`: a role ARN that is not
    /// `arn:<partition>:iam::<12 digits>:role/<path/name>`, or an external ID outside STS's
    /// 2–1224 characters of letters, digits and `_+=,.@:/-`.
    pub fn problem(&self) -> Option<String> {
        let arn = regex::Regex::new(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/([A-Za-z0-9_+=,.@/-]+)$")
            .expect("a valid regex");
        let name_ok = arn
            .captures(&self.role_arn)
            .is_some_and(|c| c[1].len() <= 512);
        if !name_ok {
            return Some(format!(
                "aws.roleArn {:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
                self.role_arn
            ));
        }
        if let Some(id) = &self.external_id {
            let chars_ok = id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
            if !(2..=1224).contains(&id.len()) || !chars_ok {
                return Some(
                    "aws.externalId must be 2 to 1224 characters of letters, digits and _+=,.@:/-"
                        .to_string(),
                );
            }
        }
        None
    }
}

impl ManagementClusterConfig {
    /// The ClusterClass Clusters on this management cluster use: `clusterClass`, else the
    /// release default ([`TkgVersion::cluster_class`]).
    pub fn cluster_class(&self) -> &str {
        self.cluster_class
            .as_deref()
            .unwrap_or_else(|| self.tkg_version.cluster_class())
    }

    /// Whether this management cluster offers TKR version `tkr`: shipped by its release or
    /// listed in `tkrs`.
    pub fn offers_tkr(&self, tkr: &str) -> bool {
        self.tkg_version.tkrs().contains(&tkr) || self.tkrs.iter().any(|t| t == tkr)
    }

    /// Every TKR version this management cluster offers: the release's, then `tkrs`.
    pub fn offered_tkrs(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .tkg_version
            .tkrs()
            .iter()
            .map(|s| s.to_string())
            .collect();
        out.extend(self.tkrs.iter().cloned());
        out
    }
}

/// Identity management of a management cluster (TKG `IDENTITY_MANAGEMENT_TYPE`, §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IdentityManagementType {
    /// Pinniped with an OIDC provider.
    Oidc,
    /// Pinniped with LDAP.
    Ldap,
    /// No identity management.
    None,
}

/// Reads a map of flat TKG variables whose YAML values may be strings, numbers or booleans.
fn flat_vars_de<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let m = BTreeMap::<String, Value>::deserialize(d)?;
    m.into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Null => String::new(),
                _ => {
                    return Err(serde::de::Error::custom(format!(
                        "defaults.{k} must be a scalar (flat TKG variable)"
                    )))
                }
            };
            Ok((k, s))
        })
        .collect()
}

/// How the bot reaches a management cluster (from the config repository's `tkgops.yaml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum KubeconfigSource {
    /// A kubeconfig file on the bot's host.
    File(String),
    /// An environment variable of the bot holding a whole kubeconfig (YAML text).
    Env(String),
    /// A Secret in the cluster the bot runs in (in-cluster config), key holding a kubeconfig.
    Secret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// Data key holding the kubeconfig; defaults to `value` (the Cluster API convention).
        #[serde(default = "default_secret_key")]
        key: String,
    },
}

/// YAML shape of [`KubeconfigSource`] (serde_yaml 0.9 reads externally tagged enums only from
/// `!tags`, so the `{file: ...}` map form is read through this mirror).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KubeconfigYaml {
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    secret: Option<SecretYaml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SecretYaml {
    namespace: String,
    name: String,
    #[serde(default = "default_secret_key")]
    key: String,
}

fn default_secret_key() -> String {
    "value".to_string()
}

fn kubeconfig_de<'de, D: Deserializer<'de>>(d: D) -> Result<KubeconfigSource, D::Error> {
    let k = KubeconfigYaml::deserialize(d)?;
    match (k.file, k.env, k.secret) {
        (Some(f), None, None) => Ok(KubeconfigSource::File(f)),
        (None, Some(e), None) => Ok(KubeconfigSource::Env(e)),
        (None, None, Some(s)) => Ok(KubeconfigSource::Secret {
            namespace: s.namespace,
            name: s.name,
            key: s.key,
        }),
        _ => Err(serde::de::Error::custom(
            "kubeconfig must have exactly one of file, env, secret",
        )),
    }
}

/// Schema of `kubeconfig` as [`kubeconfig_de`] reads it: exactly one of `file`, `env`, `secret`.
fn kubeconfig_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "How the bot reaches the management cluster: exactly one of `file` (a kubeconfig file on the bot's host), `env` (an environment variable of the bot holding a whole kubeconfig) or `secret` (a Secret in the cluster the bot runs in).",
        "type": "object",
        "oneOf": [
            {
                "required": ["file"],
                "properties": {"file": {"description": "A kubeconfig file on the bot's host.", "type": "string"}},
                "additionalProperties": false
            },
            {
                "required": ["env"],
                "properties": {"env": {"description": "An environment variable of the bot holding a whole kubeconfig (YAML text).", "type": "string"}},
                "additionalProperties": false
            },
            {
                "required": ["secret"],
                "properties": {"secret": {
                    "description": "A Secret in the cluster the bot runs in (in-cluster configuration) holding a kubeconfig.",
                    "type": "object",
                    "required": ["namespace", "name"],
                    "properties": {
                        "namespace": {"description": "Namespace of the Secret.", "type": "string"},
                        "name": {"description": "Name of the Secret.", "type": "string"},
                        "key": {"description": "Data key holding the kubeconfig (default `value`, the Cluster API convention).", "type": "string", "default": "value"}
                    },
                    "additionalProperties": false
                }},
                "additionalProperties": false
            }
        ]
    })
}

/// Schema of a map of flat TKG variables as [`flat_vars_de`] reads it: scalar values.
fn flat_vars_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Flat TKG variables (`AWS_REGION: us-west-2`) merged under every request that names this management cluster; a request's own value wins.",
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        "default": {}
    })
}

/// Schema of [`PackageRequest::values`]: a YAML map.
fn values_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Values (a YAML map) written to the `<pkgi>-<ns>-values` Secret as `values.yaml`. Never secrets (rule TKGOPS-PKG-SECRET): those come through `valuesFrom`.",
        "type": ["object", "null"]
    })
}

/// Schema of cluster labels as [`labels_de`] reads them (a null value is `""`).
fn labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Labels of the cluster, matched by `rules.overrides[].matchLabels` and schedule selectors of the repository's tkgops.yaml (a null value is \"\").",
        "type": "object",
        "additionalProperties": {"type": ["string", "null"]},
        "default": {}
    })
}

/// Schema of the deprecated `upgradePolicy`: anything, marked deprecated.
fn deprecated_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "No longer used (rule TKGOPS-DEPRECATED): scheduled upgrades are the repository's `schedules`. Still accepted so that files setting it keep parsing.",
        "deprecated": true
    })
}

fn default_namespace() -> String {
    "default".to_string()
}

/// The TMC organisation of [`RepoConfig::tmc`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TmcConfig {
    /// TMC endpoint, `https://<org>.tmc.cloud.vmware.com`.
    pub endpoint: String,
    /// VMware Cloud Services endpoint for the API-token exchange
    /// (default `https://console.tanzu.broadcom.com`, TMC-TF's default since commit 612b0fc1,
    /// 2024-09; `https://console.cloud.vmware.com` before: docs/tanzu-apis.md §3.1).
    #[serde(default = "default_csp")]
    pub csp_endpoint: String,
}

fn default_csp() -> String {
    "https://console.tanzu.broadcom.com".to_string()
}

/// Approval policy of [`RepoConfig::approval`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// GitHub logins whose `APPROVED` review counts.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Approvals needed to run a plan (default 1).
    #[serde(default = "one")]
    pub required_approvals: u32,
    /// Approvals needed for destructive intents: delete, downgrade (default 2; docs/design.md
    /// security rule 6).
    #[serde(default = "two")]
    pub destructive_approvals: u32,
    /// How many clusters one pull request may delete (default 1): a change that removes more
    /// cluster folders is refused at the plan (rule `TKGOPS-DELETE`).
    #[serde(default = "one")]
    pub max_deletes_per_change: u32,
}

/// The pull-request label without which a planned delete never runs (rule `TKGOPS-DELETE`).
pub const ALLOW_DELETE_LABEL: &str = "tkgops/allow-delete";

fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            approvers: Vec::new(),
            required_approvals: 1,
            destructive_approvals: 2,
            max_deletes_per_change: 1,
        }
    }
}

/// Package settings of [`RepoConfig::packages`].
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageDefaults {
    /// The kapp-controller PackageRepository the packages come from
    /// (default `tanzu-standard` in `tanzu-package-repo-global`, reference §4.1).
    #[serde(default)]
    pub repository: PackageRepositoryRef,
    /// Packages installed on every cluster unless the cluster disables them.
    #[serde(default)]
    pub defaults: Vec<PackageRequest>,
}

/// A kapp-controller `PackageRepository` reference (`packaging.carvel.dev/v1alpha1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageRepositoryRef {
    /// `metadata.name` (default `tanzu-standard`).
    pub name: String,
    /// `metadata.namespace` (default `tanzu-package-repo-global`, kapp-controller's global
    /// namespace in TKG 1.6).
    pub namespace: String,
}

impl Default for PackageRepositoryRef {
    fn default() -> Self {
        PackageRepositoryRef {
            name: "tanzu-standard".into(),
            namespace: "tanzu-package-repo-global".into(),
        }
    }
}

/// A package as requested in `tkgops.yaml` (repository defaults or a cluster's list).
/// Missing fields default from the TKG 1.6 standard package table ([`standard_package`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageRequest {
    /// Short name, also the PackageInstall `metadata.name` (`contour`).
    pub name: String,
    /// `packageRef.refName` (default `<name>.tanzu.vmware.com` for standard packages).
    #[serde(default)]
    pub ref_name: Option<String>,
    /// Exact version (`versionSelection.constraints`); default from the TKG 1.6 table.
    #[serde(default)]
    pub version: Option<String>,
    /// Install namespace; default from the TKG 1.6 table, else `tanzu-packages`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Values (a YAML map) written to the `<pkgi>-<ns>-values` Secret as `values.yaml`. Never
    /// secrets (rule `TKGOPS-PKG-SECRET`): those come through [`PackageRequest::values_from`].
    #[serde(default)]
    #[schemars(
        schema_with = "values_schema",
        description = "Values (a YAML map) written to the `<pkgi>-<ns>-values` Secret as `values.yaml`. Never secrets (rule TKGOPS-PKG-SECRET): those come through `valuesFrom`."
    )]
    pub values: Option<Value>,
    /// Secrets in the package's namespace on the workload cluster whose data values the
    /// PackageInstall reads after `values` (kapp-controller `spec.values[].secretRef`), e.g.
    /// `[{secretRef: {name: harbor-admin}}]`: how values that are secrets reach a package
    /// without entering Git.
    #[serde(default)]
    pub values_from: Vec<ValuesFrom>,
    /// `false` removes a repository default from this cluster.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// One entry of [`PackageRequest::values_from`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValuesFrom {
    /// The Secret holding data values (kapp-controller `secretRef`).
    pub secret_ref: SecretRef,
}

/// A Secret by name, in the namespace of the object referring to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// `metadata.name` of the Secret (a DNS-1123 subdomain).
    pub name: String,
}

/// Severity policy of [`RepoConfig::rules`].
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RulesConfig {
    /// Rule ID → level, for every cluster.
    #[serde(default)]
    pub severities: BTreeMap<String, RuleLevel>,
    /// Applied in order after `severities`, for clusters whose labels match.
    #[serde(default)]
    pub overrides: Vec<RuleOverride>,
    /// The entries of `severities` and `overrides` that try to lower a security rule
    /// ([`super::LOCKED_RULES`]) to `warning` or `off`; they are ignored (the rule stays an
    /// error) and every plan says so. Filled by [`parse_repo_config`] (not part of the YAML).
    #[serde(skip)]
    pub ignored: Vec<IgnoredOverride>,
}

/// A severity override of a security rule that cannot be lowered ([`super::LOCKED_RULES`]):
/// where it is, so the plan can name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredOverride {
    /// The rule ID (`TKGOPS-SECRET`).
    pub rule: String,
    /// The level the policy asks for (`warning` or `off`).
    pub level: RuleLevel,
    /// Where in `tkgops.yaml`: `rules.severities`, or `rules.overrides[N]` with its
    /// `matchLabels` (`rules.overrides[0] (matchLabels team=payments)`).
    pub place: String,
    /// 1-based line of the rule's key in the file, when found.
    pub line: Option<u32>,
}

impl IgnoredOverride {
    /// The plan note naming the rule, the override and the file (`path`, `line`): the rule
    /// stays an error.
    pub fn note(&self, path: &str) -> String {
        let at = match self.line {
            Some(l) => format!("{path}:{l}"),
            None => path.to_string(),
        };
        let level = match self.level {
            RuleLevel::Error => "error",
            RuleLevel::Warning => "warning",
            RuleLevel::Off => "off",
        };
        format!(
            "The policy tries to set the security rule {} to `{level}` ({}, {at}): security rules cannot be lowered, so it stays an error.",
            self.rule, self.place
        )
    }
}

/// One entry of [`RulesConfig::overrides`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleOverride {
    /// Applies when the cluster's [`ClusterSettings::labels`] contain all of these
    /// (Kubernetes `matchLabels` semantics; empty matches every cluster).
    #[serde(default)]
    #[schemars(
        description = "Applies when the cluster's `labels` (its tkgops.yaml) contain all of these (Kubernetes `matchLabels` semantics; empty matches every cluster)."
    )]
    pub match_labels: BTreeMap<String, String>,
    /// Rule ID → level.
    #[serde(default)]
    pub severities: BTreeMap<String, RuleLevel>,
}

/// Configured level of a rule: `error`, `warning`, or `off` (finding dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleLevel {
    /// Report as [`Severity::Error`].
    #[schemars(description = "Report as an error (blocks the pull request).")]
    Error,
    /// Report as [`Severity::Warning`].
    #[schemars(description = "Report as a warning (advisory).")]
    Warning,
    /// Do not report.
    Off,
}

/// A cluster's `driftPolicy` (`clusters/<name>/tkgops.yaml`): what the drift scan does with a
/// live change not in Git (README "Drift").
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// Show the drift (fleet dashboard issue, plans, `tkgops_drift_clusters`); change nothing.
    #[default]
    Report,
    /// Report it, and re-apply Git at the cluster's deployed commit through a revert run
    /// (Cluster topology, TMC cluster settings, PackageInstalls); a missing Cluster or TMC
    /// cluster stays reported, never re-created.
    Revert,
}

/// A cluster's `clusters/<name>/tkgops.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSettings {
    /// Name of a [`RepoConfig::management_clusters`] entry (required).
    #[schemars(
        description = "Name of a `managementClusters` entry of the repository's tkgops.yaml (required; never changes after the cluster was created: rule TKGOPS-PLACEMENT)."
    )]
    pub management_cluster: String,
    /// Tanzu Kubernetes release, e.g. `v1.23.8+vmware.2-tkg.1` (required; rule `TKGOPS-TKR`).
    pub tkr: String,
    /// TMC attach settings; absent = no attach.
    #[serde(default)]
    pub tmc: Option<ClusterTmc>,
    /// Packages, merged by name over the repository defaults.
    #[serde(default)]
    pub packages: Vec<PackageRequest>,
    /// Labels of the cluster (matched by [`RuleOverride::match_labels`]; a null value is `""`).
    #[serde(default, deserialize_with = "labels_de")]
    #[schemars(
        schema_with = "labels_schema",
        description = "Labels of the cluster, matched by `rules.overrides[].matchLabels` and the schedules' selectors of the repository's tkgops.yaml (a null value is \"\")."
    )]
    pub labels: BTreeMap<String, String>,
    /// `upgradePolicy`, as written: no longer used. It was parsed but never scheduled
    /// anything; scheduled upgrades are the repository's `schedules` (README "Schedules"). Still accepted, so files that set it keep parsing, and the plan warns
    /// (`TKGOPS-DEPRECATED`) naming its line.
    #[serde(default)]
    #[schemars(
        schema_with = "deprecated_schema",
        description = "No longer used: it never scheduled anything (scheduled upgrades are the repository's `schedules`). Still accepted so files that set it keep parsing; the plan warns (TKGOPS-DEPRECATED) on its line."
    )]
    pub upgrade_policy: Option<serde_yaml::Value>,
    /// `driftPolicy`: what the bot's drift scan does when the cluster's live state differs
    /// from Git at its deployed commit (README "Drift"); default [`DriftPolicy::Report`].
    #[serde(default)]
    #[schemars(
        description = "What the bot's drift scan does when the cluster's live state differs from Git at its deployed commit: `report` (default) shows it on the fleet dashboard issue, in plans and in `tkgops_drift_clusters`; `revert` also re-applies Git at the deployed commit through a revert run (forced over hand changes; a missing Cluster or TMC cluster is never re-created). README \"Drift\"."
    )]
    pub drift_policy: DriftPolicy,
    /// Path of the file as given to [`parse_cluster_settings`] (not part of the YAML).
    #[serde(skip)]
    pub path: String,
    /// 1-based lines of the top-level keys (`tkr`, `packages`, …) (not part of the YAML).
    #[serde(skip)]
    pub lines: BTreeMap<String, u32>,
}

impl ClusterSettings {
    /// Minimal settings for `management_cluster` and `tkr` (no TMC, packages, labels, policy);
    /// `path` empty.
    pub fn new(management_cluster: impl Into<String>, tkr: impl Into<String>) -> Self {
        ClusterSettings {
            management_cluster: management_cluster.into(),
            tkr: tkr.into(),
            tmc: None,
            packages: Vec::new(),
            labels: BTreeMap::new(),
            upgrade_policy: None,
            drift_policy: DriftPolicy::Report,
            path: String::new(),
            lines: BTreeMap::new(),
        }
    }

    /// 1-based line of top-level key `key` (`tkr`, `managementCluster`, `packages`, …).
    pub fn line(&self, key: &str) -> Option<u32> {
        self.lines.get(key).copied()
    }
}

fn labels_de<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let m: BTreeMap<String, Option<String>> = BTreeMap::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// TMC settings of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterTmc {
    /// TMC cluster group (`spec.clusterGroupName`).
    pub cluster_group: String,
    /// `meta.description` (default "managed by tkgops").
    #[serde(default)]
    pub description: Option<String>,
}

/// The `cron` crate schedule of a 5-field crontab expression (minute hour day-of-month month
/// day-of-week): `0 ` seconds prefixed, the day-of-week field renumbered by
/// [`crontab_dow_to_cron`]. Errors: a message naming the field count or the crate's parse error.
pub(crate) fn cron_of(schedule: &str) -> Result<cron::Schedule, String> {
    let fields = schedule.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "has {fields} fields; expected 5 (minute hour day-of-month month day-of-week)"
        ));
    }
    let mut f: Vec<&str> = schedule.split_whitespace().collect();
    let dow = crontab_dow_to_cron(f[4])?;
    f[4] = &dow;
    cron::Schedule::from_str(&format!("0 {}", f.join(" "))).map_err(|e| e.to_string())
}

/// Translates a crontab day-of-week field (0 or 7 = Sunday, 1 = Monday … 6 = Saturday) into the
/// `cron` crate's numbering (1 = Sunday … 7 = Saturday). Names (`MON-FRI`) are kept.
fn crontab_dow_to_cron(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let bad = || format!("day-of-week field {field:?} is invalid");
    let mut days = BTreeSet::new();
    let mut named = Vec::new();
    for item in field.split(',') {
        if item.chars().any(|c| c.is_ascii_alphabetic()) {
            named.push(item.to_string());
            continue;
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| bad())?),
            None => (item, 1),
        };
        if step == 0 {
            return Err(bad());
        }
        let (lo, hi) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                a.parse::<u32>().map_err(|_| bad())?,
                b.parse::<u32>().map_err(|_| bad())?,
            )
        } else {
            let a = range.parse::<u32>().map_err(|_| bad())?;
            (a, if item.contains('/') { 6 } else { a })
        };
        if lo > 7 || hi > 7 || lo > hi {
            return Err(bad());
        }
        let mut d = lo;
        while d <= hi {
            days.insert(d % 7 + 1);
            d += step;
        }
    }
    let mut parts: Vec<String> = days.into_iter().map(|d| d.to_string()).collect();
    parts.extend(named);
    Ok(parts.join(","))
}

/// Line of the first occurrence of `key:` (any indentation, also as `- key:`), 1-based.
pub(crate) fn find_key_line(text: &str, key: &str) -> Option<u32> {
    find_key_line_from(text, key, 0)
}

/// Like [`find_key_line`], only lines after the 1-based line `after`.
pub(crate) fn find_key_line_from(text: &str, key: &str, after: u32) -> Option<u32> {
    for (i, line) in text.lines().enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if n <= after {
            continue;
        }
        let t = line
            .trim_start()
            .trim_start_matches("- ")
            .trim_start()
            .trim_start_matches(['{', ' ']);
        for cand in [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ] {
            if t.starts_with(&cand) {
                return Some(n);
            }
        }
    }
    None
}

/// Line of the first mention of the map key `key:` after the 1-based line `after`, in block
/// style or inside a flow map (`{A: x, key: y}`): `key` preceded by the line start, a space,
/// `{`, `,` or a quote. 1-based.
fn find_map_key_line_from(text: &str, key: &str, after: u32) -> Option<u32> {
    for (i, line) in text.lines().enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if n <= after {
            continue;
        }
        let mut from = 0;
        while let Some(j) = line[from..].find(key) {
            let start = from + j;
            let end = start + key.len();
            let before_ok = line[..start]
                .chars()
                .next_back()
                .is_none_or(|c| matches!(c, ' ' | '{' | ',' | '"' | '\''));
            let rest = line[end..].trim_start_matches(['"', '\'']);
            if before_ok && rest.starts_with(':') {
                return Some(n);
            }
            from = end;
        }
    }
    None
}

/// Line of the first `key: value` whose value (unquoted) is `value`, 1-based.
pub(crate) fn find_value_line(text: &str, key: &str, value: &str) -> Option<u32> {
    let pat = format!("{key}:");
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(j) = rest.find(&pat) {
            let after = rest[j + pat.len()..].trim_start();
            let v = after
                .split([',', '}', '#'])
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(['"', '\'']);
            if v == value {
                return u32::try_from(i + 1).ok();
            }
            rest = &rest[j + pat.len()..];
        }
    }
    None
}

fn schema(path: &str, line: Option<u32>, msg: impl Into<String>) -> Finding {
    Finding::new(path, line, SCHEMA, Severity::Error, msg)
}

/// Parses `text` as one YAML document of type `T`, mapping errors to findings
/// (`TKGOPS-PARSE` for syntax, `TKGOPS-SCHEMA` for shape: unknown or missing key, wrong type).
fn parse_typed<'a, T: serde::de::DeserializeOwned>(
    path: &str,
    bytes: &'a [u8],
) -> Result<(T, &'a str), Vec<Finding>> {
    let text = decode_text(path, bytes).map_err(|f| vec![f])?;
    let doc = parse_yaml_document(path, text).map_err(|f| vec![f])?;
    if !doc.is_mapping() {
        return Err(vec![schema(path, Some(1), "top level must be a map")]);
    }
    match serde_yaml::from_str::<T>(text) {
        Ok(v) => Ok((v, text)),
        Err(e) => {
            let mut f = yaml_error(path, &e);
            f.rule = SCHEMA.to_string();
            f.message = f.message.trim_start_matches("invalid YAML: ").to_string();
            if f.message.starts_with("unknown field") {
                f.message = format!("{} (tkgops files reject unknown keys)", f.message);
            }
            Err(vec![f])
        }
    }
}

fn check_packages(
    path: &str,
    text: &str,
    pkgs: &[PackageRequest],
    out: &mut Vec<Finding>,
    allow_disabled: bool,
) {
    let mut seen = BTreeSet::new();
    for p in pkgs {
        let line = find_value_line(text, "name", &p.name);
        if p.name.trim().is_empty() {
            out.push(schema(path, line, "package name must not be empty"));
            continue;
        }
        if !seen.insert(p.name.clone()) {
            out.push(schema(
                path,
                line,
                format!("package {} is listed twice", p.name),
            ));
        }
        if p.enabled == Some(false) {
            if !allow_disabled {
                out.push(schema(
                    path,
                    line,
                    format!(
                        "package {}: enabled: false is only meaningful in a cluster's tkgops.yaml",
                        p.name
                    ),
                ));
            }
            continue;
        }
        for vf in &p.values_from {
            let n = &vf.secret_ref.name;
            let valid = !n.is_empty()
                && n.len() <= 253
                && n.split('.').all(crate::request::is_dns1123_label);
            if !valid {
                out.push(schema(
                    path,
                    find_value_line(text, "name", n).or(line),
                    format!(
                        "package {}: valuesFrom secretRef name {n:?} is not a valid Secret name",
                        p.name
                    ),
                ));
            }
        }
        if let Some(v) = &p.values {
            if !v.is_mapping() && !v.is_null() {
                out.push(schema(
                    path,
                    line,
                    format!("package {}: values must be a YAML map", p.name),
                ));
            }
        }
        if standard_package(&p.name).is_none() {
            let missing: Vec<&str> = [
                ("refName", p.ref_name.is_none()),
                ("version", p.version.is_none()),
            ]
            .iter()
            .filter(|(_, m)| *m)
            .map(|(k, _)| *k)
            .collect();
            // In a cluster file, refName/version may come from the repository defaults.
            if !missing.is_empty() && !allow_disabled {
                out.push(schema(
                    path,
                    line,
                    format!(
                        "package {} is not a TKG 1.6 standard package; {} required",
                        p.name,
                        missing.join(" and ")
                    ),
                ));
            }
        }
    }
}

fn check_rule_ids(
    path: &str,
    text: &str,
    sev: &BTreeMap<String, RuleLevel>,
    out: &mut Vec<Finding>,
) {
    for id in sev.keys() {
        if rule_default(id).is_none() {
            out.push(schema(
                path,
                find_key_line(text, id),
                format!("unknown rule ID {id} in rules"),
            ));
        }
    }
}

/// The overrides in `rules` that lower a security rule ([`super::LOCKED_RULES`]) below
/// `error`, in file order (`severities`, then each of `overrides`), with the line of each:
/// the occurrences of the rule's key in `text` are assigned in that order.
fn ignored_overrides(text: &str, rules: &RulesConfig) -> Vec<IgnoredOverride> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut visit = |sev: &BTreeMap<String, RuleLevel>, place: String| {
        for (id, level) in sev {
            // Each mention of the key moves the search on, so the Nth entry gets the Nth line.
            let after = seen.get(id).copied().unwrap_or(0);
            let line = find_map_key_line_from(text, id, after);
            if let Some(l) = line {
                seen.insert(id.clone(), l);
            }
            if super::LOCKED_RULES.contains(&id.as_str()) && *level != RuleLevel::Error {
                out.push(IgnoredOverride {
                    rule: id.clone(),
                    level: *level,
                    place: place.clone(),
                    line,
                });
            }
        }
    };
    visit(&rules.severities, "rules.severities".into());
    for (i, o) in rules.overrides.iter().enumerate() {
        let labels: Vec<String> = o
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let scope = if labels.is_empty() {
            "every cluster".to_string()
        } else {
            format!("matchLabels {}", labels.join(","))
        };
        visit(&o.severities, format!("rules.overrides[{i}] ({scope})"));
    }
    out
}

/// Parses the repository root `tkgops.yaml` from `bytes` (`path` for findings).
///
/// Errors: the same file guards as [`super::parse_tkg_config`] (`TKGOPS-PARSE`); unknown keys,
/// missing or mistyped fields, no management cluster, duplicate management cluster names,
/// `requiredApprovals` < 1, `destructiveApprovals` < `requiredApprovals`, a TMC endpoint not
/// `https://`, unknown rule IDs in `rules`, duplicate or incomplete package defaults (a package
/// outside the TKG 1.6 table needs `refName` and `version`), `plan.maxClusters` outside 1 to
/// [`MAX_MAX_CLUSTERS`] — all `TKGOPS-SCHEMA` with lines; invalid `schedules` (cron, time
/// zone, window, selectors, names, waves) — `TKGOPS-SCHEDULE` with lines
/// ([`crate::schedule::validate_schedules`]). Overrides that lower a security rule
/// ([`super::LOCKED_RULES`]) are no error: they are kept in [`RulesConfig::ignored`], and the
/// rule stays an error.
pub fn parse_repo_config(path: &str, bytes: &[u8]) -> Result<RepoConfig, Vec<Finding>> {
    let (mut cfg, text) = parse_typed::<RepoConfig>(path, bytes)?;
    cfg.path = path.to_string();
    let mut out = Vec::new();
    if cfg.management_clusters.is_empty() {
        out.push(schema(
            path,
            find_key_line(text, "managementClusters"),
            "managementClusters must list at least one management cluster",
        ));
    }
    let mut names = BTreeSet::new();
    for m in &cfg.management_clusters {
        let line = find_value_line(text, "name", &m.name);
        if m.name.trim().is_empty() {
            out.push(schema(
                path,
                line,
                "management cluster name must not be empty",
            ));
        } else if !names.insert(m.name.clone()) {
            out.push(schema(
                path,
                line,
                format!("management cluster {} is listed twice", m.name),
            ));
        }
        if let Some(problem) = m.aws.as_ref().and_then(AwsIdentity::problem) {
            out.push(schema(
                path,
                m.aws
                    .as_ref()
                    .and_then(|a| find_value_line(text, "roleArn", &a.role_arn))
                    .or(line),
                format!("management cluster {}: {problem}", m.name),
            ));
        }
    }
    if cfg.approval.required_approvals < 1 {
        out.push(schema(
            path,
            find_key_line(text, "requiredApprovals"),
            "requiredApprovals must be at least 1",
        ));
    }
    if cfg.approval.destructive_approvals < cfg.approval.required_approvals {
        out.push(schema(
            path,
            find_key_line(text, "destructiveApprovals"),
            "destructiveApprovals must be at least requiredApprovals",
        ));
    }
    if let Some(t) = &cfg.tmc {
        if !is_secure_endpoint(&t.endpoint) {
            out.push(schema(
                path,
                find_key_line(text, "endpoint"),
                "tmc.endpoint must be an https:// URL (plain http:// only on loopback)",
            ));
        }
        if !is_secure_endpoint(&t.csp_endpoint) {
            out.push(schema(
                path,
                find_key_line(text, "cspEndpoint"),
                "tmc.cspEndpoint must be an https:// URL (plain http:// only on loopback)",
            ));
        }
    }
    check_rule_ids(path, text, &cfg.rules.severities, &mut out);
    for o in &cfg.rules.overrides {
        check_rule_ids(path, text, &o.severities, &mut out);
    }
    cfg.rules.ignored = ignored_overrides(text, &cfg.rules);
    if !(1..=MAX_MAX_CLUSTERS).contains(&cfg.plan.max_clusters) {
        out.push(schema(
            path,
            find_key_line(text, "maxClusters"),
            format!(
                "plan.maxClusters must be between 1 and {MAX_MAX_CLUSTERS} (default {DEFAULT_MAX_CLUSTERS})"
            ),
        ));
    }
    check_packages(path, text, &cfg.packages.defaults, &mut out, false);
    out.extend(crate::schedule::validate_schedules(
        path,
        text,
        &cfg.schedules,
    ));
    if out.is_empty() {
        Ok(cfg)
    } else {
        Err(out)
    }
}

/// Parses a cluster's `clusters/<name>/tkgops.yaml` from `bytes` (`path` for findings).
///
/// Errors: the same file guards as [`super::parse_tkg_config`] (`TKGOPS-PARSE`); unknown keys,
/// missing `managementCluster`/`tkr`, mistyped fields, empty `managementCluster`, `tkr` or
/// `tmc.clusterGroup`, duplicate packages, non-map package values — all `TKGOPS-SCHEMA` with
/// lines. `upgradePolicy` is accepted as any value and left to the plan's warning. The TKR format
/// and the management cluster's existence are checked by [`super::validate`].
pub fn parse_cluster_settings(path: &str, bytes: &[u8]) -> Result<ClusterSettings, Vec<Finding>> {
    let (mut s, text) = parse_typed::<ClusterSettings>(path, bytes)?;
    s.path = path.to_string();
    s.lines = super::tkgconfig::top_level_key_lines(text)
        .into_iter()
        .fold(BTreeMap::new(), |mut m, (k, l)| {
            m.entry(k).or_insert(l);
            m
        });
    let mut out = Vec::new();
    if s.management_cluster.trim().is_empty() {
        out.push(schema(
            path,
            s.line("managementCluster"),
            "managementCluster must not be empty",
        ));
    }
    if s.tkr.trim().is_empty() {
        out.push(schema(path, s.line("tkr"), "tkr must not be empty"));
    }
    if let Some(t) = &s.tmc {
        if t.cluster_group.trim().is_empty() {
            out.push(schema(
                path,
                find_key_line(text, "clusterGroup"),
                "tmc.clusterGroup must not be empty",
            ));
        }
    }
    for k in s.labels.keys() {
        if k.trim().is_empty() {
            out.push(schema(
                path,
                s.line("labels"),
                "label keys must not be empty",
            ));
        } else if k.starts_with("tkgops.dev/") {
            // The ownership label is tkgops's own: a request setting it could claim a Cluster
            // of another config repository (security rule 7).
            out.push(schema(
                path,
                find_key_line(text, k),
                format!(
                    "label {k} is reserved for tkgops (labels under tkgops.dev/ cannot be set)"
                ),
            ));
        }
    }
    check_packages(path, text, &s.packages, &mut out, true);
    if out.is_empty() {
        Ok(s)
    } else {
        Err(out)
    }
}

/// Whether a TMC/CSP endpoint may carry the API token: `https://`, or plain `http://` to a
/// loopback address (the project's emulators and the sandbox; never leaves the host).
pub fn is_secure_endpoint(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

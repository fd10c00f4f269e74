//! Intents and plans: what a change between two commits means for each cluster, and the
//! workflow rendered for it. Pure: reads files through [`TreeReader`], never the network, and
//! never needs credentials (security rule 2).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{json, Value};

use super::catalog::{Catalog, CatalogError, Workflow};
use super::change::{machine_fields, ClusterFieldChange};
use super::impact::{impact, Impact, RolloutHistory};
use crate::files::TreeReader;
use crate::request::{self, ClusterRequest, ClusterSpec, Finding, RepoConfig, Severity};
use crate::step::{
    AwsPreflightInputs, KubeApplyInputs, KubeDeleteInputs, KubePreflightInputs, KubeRolloutInputs,
    MachineShape, OwnerMark, PackagesInputs, PackagesUpdateInputs, ResizeClusterInputs,
    RetryPolicy, StepInputs, StepKind, StepSpec, TmcClusterInputs, TmcFullName,
    UpgradeClusterInputs, WorkloadTarget,
};

/// Path of the repository settings file at the root of the config repository.
pub const REPO_CONFIG_PATH: &str = "tkgops.yaml";
/// Directory holding one sub-directory per cluster request.
pub const CLUSTERS_DIR: &str = "clusters";
/// File name of the TKG cluster configuration file inside a cluster directory.
pub const CLUSTER_CONFIG_FILE: &str = "cluster-config.yaml";
/// File name of tkgops's own per-cluster settings inside a cluster directory.
pub const CLUSTER_SETTINGS_FILE: &str = "tkgops.yaml";

/// What a change means for one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum IntentKind {
    /// The cluster request was added: create the cluster.
    Create,
    /// The TKR changed.
    Upgrade {
        /// TKR before the change.
        from: String,
        /// TKR after the change.
        to: String,
    },
    /// TMC settings were added or changed (a changed cluster group is a PUT of the TMC cluster).
    AttachTmc,
    /// TMC settings were removed: detach the cluster from TMC.
    DetachTmc,
    /// Machine variables changed (counts, instance types, root volumes): the Cluster's topology
    /// is applied again, and Cluster API scales or replaces machines.
    Resize,
    /// The packages (versions, values, set) changed.
    RolloutPackages,
    /// The cluster request was removed: delete the cluster (destructive).
    Delete,
    /// TKG cluster configuration variables changed on an existing cluster; TKG applies them only
    /// at creation, so tkgops does not act on them.
    Unsupported {
        /// Why nothing will be done.
        reason: String,
    },
}

impl IntentKind {
    /// The workflow intent name (`create`, `upgrade`, …), `None` for [`IntentKind::Unsupported`].
    pub fn workflow_intent(&self) -> Option<&'static str> {
        match self {
            IntentKind::Create => Some("create"),
            IntentKind::Upgrade { .. } => Some("upgrade"),
            IntentKind::AttachTmc => Some("attach-tmc"),
            IntentKind::DetachTmc => Some("detach-tmc"),
            IntentKind::Resize => Some("resize"),
            IntentKind::RolloutPackages => Some("rollout-packages"),
            IntentKind::Delete => Some("delete"),
            IntentKind::Unsupported { .. } => None,
        }
    }

    /// Short label shown in the PR comment.
    pub fn label(&self) -> String {
        match self {
            IntentKind::Create => "create".into(),
            IntentKind::Upgrade { from, to } => format!("upgrade {from} → {to}"),
            IntentKind::AttachTmc => "attach to TMC".into(),
            IntentKind::DetachTmc => "detach from TMC".into(),
            IntentKind::Resize => "resize / replace machines".into(),
            IntentKind::RolloutPackages => "roll out packages".into(),
            IntentKind::Delete => "delete".into(),
            IntentKind::Unsupported { .. } => "change not applied".into(),
        }
    }

    /// Whether the intent destroys or downgrades something (security rule 6: extra approval).
    pub fn is_destructive(&self) -> bool {
        matches!(self, IntentKind::Delete)
    }
}

/// Status of one cluster's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanStatus {
    /// Will run after merge.
    Ready,
    /// Validation errors: nothing will run until they are fixed.
    Blocked,
    /// Recognised and planned, but its workflow has steps without an executor yet.
    NotYetExecutable,
    /// Nothing to execute (unsupported change).
    NoAction,
}

/// A manifest rendered for a step, shown in a collapsible block of the plan comment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RenderedManifest {
    /// Step id the manifest belongs to.
    pub step: String,
    /// Template it was rendered from.
    pub template: String,
    /// The rendered YAML.
    pub yaml: String,
}

/// The plan for one intent of one cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlan {
    /// Cluster name (directory name under `clusters/`).
    pub cluster: String,
    /// What the change means.
    pub intent: IntentKind,
    /// The workflow rendered for it, if any.
    pub workflow: Option<String>,
    /// Whether it will run after merge.
    pub status: PlanStatus,
    /// Findings of the cluster's files (validation, parse errors).
    pub findings: Vec<Finding>,
    /// Rendered steps in execution order (secret-free).
    pub steps: Vec<StepSpec>,
    /// Rendered manifests, for display.
    pub manifests: Vec<RenderedManifest>,
    /// Free-text note (why not executable, why blocked).
    pub note: Option<String>,
    /// For changes to an existing cluster's machines (upgrade, resize): the machines replaced,
    /// added and removed, and the expected duration. Display only (not part of the digest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impact: Option<Impact>,
    /// The summary row of the plan comment: TKR, machines, TMC group and package changes, old
    /// → new ([`super::summary`]). Display only (not part of the digest); `None` when the
    /// request does not load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<super::summary::ClusterSummary>,
    /// For a change to an existing cluster: the Cluster's changed fields, old → new
    /// ([`super::diff`]). Display only (not part of the digest).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diffs: Vec<super::diff::ObjectDiff>,
}

impl ClusterPlan {
    /// The digest of what this plan executes: SHA-256 (lowercase hex, 64 characters) of the
    /// cluster, its intent, workflow and every step with its typed inputs and rendered manifests,
    /// serialized as JSON. Two plans with the same digest run exactly the same steps with the
    /// same inputs (security rule 2: "run exactly what was approved").
    ///
    /// A resize's `from` values (the machine fields the plan expects live before the change) are
    /// not part of it: they depend on the base the change was planned against, and the run
    /// checks them against the live Cluster before it writes. A change approved on an older
    /// base (a pull request stacked on another one) still writes exactly the approved values.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut steps = serde_json::to_value(&self.steps).unwrap_or(Value::Null);
        if let Some(list) = steps.as_array_mut() {
            for step in list {
                if step.get("kind").and_then(Value::as_str)
                    == Some(StepKind::KubeResizeCluster.as_str())
                {
                    if let Some(fields) = step
                        .pointer_mut("/inputs/fields")
                        .and_then(Value::as_array_mut)
                    {
                        for f in fields {
                            if let Some(o) = f.as_object_mut() {
                                o.remove("from");
                            }
                        }
                    }
                }
            }
        }
        let executed = serde_json::json!({
            "cluster": self.cluster,
            "intent": self.intent,
            "workflow": self.workflow,
            "steps": steps,
        });
        let bytes = serde_json::to_vec(&executed).unwrap_or_default();
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A plan: every affected cluster between two commits.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The commit the change is compared against (merge base or first parent).
    pub base_sha: String,
    /// The commit planned (PR head SHA or merge commit).
    pub head_sha: String,
    /// One entry per (cluster, intent), sorted by cluster.
    pub clusters: Vec<ClusterPlan>,
    /// Findings about the repository settings (`tkgops.yaml`).
    pub repo_findings: Vec<Finding>,
    /// Notes about the change as a whole (e.g. repository settings take effect after merge).
    pub notes: Vec<String>,
    /// Whether the change edits the repository's `tkgops.yaml` (the policy): it then needs the
    /// approvals of destructive changes (security rule 6).
    pub changes_policy: bool,
}

impl Plan {
    /// Whether any finding is an error (the commit status is then `failure`).
    pub fn has_errors(&self) -> bool {
        self.repo_findings
            .iter()
            .chain(self.clusters.iter().flat_map(|c| c.findings.iter()))
            .any(|f| f.severity == Severity::Error)
    }

    /// All findings, repository ones first.
    pub fn all_findings(&self) -> Vec<&Finding> {
        self.repo_findings
            .iter()
            .chain(self.clusters.iter().flat_map(|c| c.findings.iter()))
            .collect()
    }

    /// The digest of every cluster plan that will run after merge ([`ClusterPlan::digest`]),
    /// keyed by `<cluster>#<workflow>`.
    pub fn digests(&self) -> BTreeMap<String, String> {
        self.executable()
            .map(|c| {
                (
                    format!("{}#{}", c.cluster, c.workflow.as_deref().unwrap_or("-")),
                    c.digest(),
                )
            })
            .collect()
    }

    /// The cluster plans that will run after merge.
    pub fn executable(&self) -> impl Iterator<Item = &ClusterPlan> {
        self.clusters
            .iter()
            .filter(|c| c.status == PlanStatus::Ready)
    }
}

/// Everything the planner needs.
pub struct PlanInput<'a> {
    /// The commit compared against.
    pub base: &'a dyn TreeReader,
    /// The commit planned.
    pub head: &'a dyn TreeReader,
    /// Where the trusted repository settings come from: the default branch (the PR's base) for
    /// PR plans, the merge commit for runs. Never the PR head (security rule 1).
    pub settings: &'a dyn TreeReader,
    /// SHA of `base`.
    pub base_sha: &'a str,
    /// SHA of `head`.
    pub head_sha: &'a str,
    /// Paths changed between `base` and `head` (from the git diff).
    pub changed_paths: &'a [String],
    /// Workflows and templates.
    pub catalog: &'a Catalog,
    /// The step kinds this bot can execute (derived from its registered executors); a plan
    /// using any other kind is shown as "planned, not yet executable" and never run.
    pub executable: &'a BTreeSet<StepKind>,
    /// The config repository's identity (GitHub `owner/name`), part of the ownership label of
    /// every Cluster tkgops creates ([`owner_label`]).
    pub repository: &'a str,
    /// Rollout times measured by earlier runs, for the estimates of upgrades and resizes
    /// (default: none measured).
    pub history: RolloutHistory,
}

/// Label key marking a Cluster as created by tkgops for one config repository and cluster
/// path; tkgops changes only Clusters whose label value equals [`owner_label`] (security rule 7).
pub const OWNER_LABEL: &str = "tkgops.dev/owner";

/// The value of [`OWNER_LABEL`] for the cluster request `clusters/<cluster>` of the config
/// repository `repository` (`owner/name`): the first 32 hexadecimal digits of the SHA-256 of
/// `<repository>:clusters/<cluster>` (a valid label value; the readable pair is in the
/// `tkgops.dev/config-repository` and `tkgops.dev/cluster-path` annotations).
pub fn owner_label(repository: &str, cluster: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(format!("{repository}:{CLUSTERS_DIR}/{cluster}").as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cluster names touched by `changed_paths` (`clusters/<name>/…`), sorted.
pub fn affected_clusters(changed_paths: &[String]) -> BTreeSet<String> {
    changed_paths
        .iter()
        .filter_map(|p| {
            let rest = p.strip_prefix(CLUSTERS_DIR)?.strip_prefix('/')?;
            let (name, file) = rest.split_once('/')?;
            (!name.is_empty() && !file.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// A cluster request loaded from one commit: the request (when both files parse) and the
/// findings of loading and validating it.
pub struct LoadedCluster {
    /// The request, when both files parsed.
    pub request: Option<ClusterRequest>,
    /// Parse and validation findings.
    pub findings: Vec<Finding>,
}

/// Loads and validates `clusters/<name>/` from `tree`; `None` when the cluster configuration
/// file is absent at that commit.
pub fn load_cluster(
    tree: &dyn TreeReader,
    name: &str,
    repo: Option<&RepoConfig>,
) -> Option<LoadedCluster> {
    let config_path = format!("{CLUSTERS_DIR}/{name}/{CLUSTER_CONFIG_FILE}");
    let settings_path = format!("{CLUSTERS_DIR}/{name}/{CLUSTER_SETTINGS_FILE}");
    let config_bytes = tree.read(&config_path)?;
    let mut findings = Vec::new();
    let config = match request::parse_tkg_config(&config_path, &config_bytes) {
        Ok(c) => Some(c),
        Err(f) => {
            findings.push(f);
            None
        }
    };
    let settings = match tree.read(&settings_path) {
        None => {
            findings.push(Finding {
                path: settings_path.clone(),
                line: None,
                rule: "TKGOPS-SCHEMA".into(),
                severity: Severity::Error,
                message: format!("missing {settings_path}: every cluster request needs tkgops settings (managementCluster, tkr)"),
            });
            None
        }
        Some(bytes) => match request::parse_cluster_settings(&settings_path, &bytes) {
            Ok(s) => Some(s),
            Err(fs) => {
                findings.extend(fs);
                None
            }
        },
    };
    if let Some(cfg) = &config {
        findings.extend(request::validate(cfg, settings.as_ref(), repo));
    }
    let request = match (config, settings) {
        (Some(config), Some(settings)) => Some(ClusterRequest {
            name: name.to_string(),
            config,
            settings,
        }),
        _ => None,
    };
    Some(LoadedCluster { request, findings })
}

/// Loads the repository settings from `tree`.
///
/// Returns the settings (when present and valid) and the findings about them.
pub fn load_repo_config(tree: &dyn TreeReader) -> (Option<RepoConfig>, Vec<Finding>) {
    match tree.read(REPO_CONFIG_PATH) {
        None => (
            None,
            vec![Finding {
                path: REPO_CONFIG_PATH.into(),
                line: None,
                rule: "TKGOPS-SCHEMA".into(),
                severity: Severity::Error,
                message: "the default branch has no tkgops.yaml: management clusters and the approval policy are unknown".into(),
            }],
        ),
        Some(bytes) => match request::parse_repo_config(REPO_CONFIG_PATH, &bytes) {
            Ok(r) => (Some(r), Vec::new()),
            Err(fs) => (None, fs),
        },
    }
}

/// Rule of a change touching more clusters than the policy's `plan.maxClusters`.
pub const PLAN_SIZE_RULE: &str = "TKGOPS-PLAN-SIZE";

/// Computes the plan for the change `base..head`.
///
/// Never fails: unreadable or invalid files become findings in the plan, and a workflow that
/// cannot be rendered becomes a blocked cluster plan with the rendering error as its note.
///
/// A change touching more clusters than the trusted policy's `plan.maxClusters` (default
/// [`request::DEFAULT_MAX_CLUSTERS`]) is not planned cluster by cluster: the plan has no
/// cluster entries and one `TKGOPS-PLAN-SIZE` error, so nothing runs and the bot posts one
/// comment instead of one details comment per cluster. See [`plan_unbounded`] for the bot's
/// own scheduled wave commits.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    plan_with(input, true)
}

/// [`plan`] without the `plan.maxClusters` cap: for the commits tkgops writes itself (the
/// `tkr` bumps of a scheduled apply's wave, authorised by a schedule of the trusted policy),
/// which are planned once per wave and post no comment per cluster. Never for a pull request
/// or its merge.
pub fn plan_unbounded(input: &PlanInput<'_>) -> Plan {
    plan_with(input, false)
}

fn plan_with(input: &PlanInput<'_>, capped: bool) -> Plan {
    let (repo, mut repo_findings) = load_repo_config(input.settings);
    let mut notes = Vec::new();
    // Security rules cannot be lowered: say so for every entry of the policy that tries.
    if let Some(r) = &repo {
        notes.extend(r.rules.ignored.iter().map(|o| o.note(&r.path)));
    }
    let changes_policy = input.changed_paths.iter().any(|p| p == REPO_CONFIG_PATH);
    if changes_policy {
        let needed = repo
            .as_ref()
            .map(|r| r.approval.destructive_approvals.to_string())
            .unwrap_or_else(|| "approval.destructiveApprovals".into());
        notes.push(format!("This change edits tkgops.yaml, the policy: it is judged under the default branch's current policy, needs {needed} approval(s) from its approvers (as destructive changes do), and its new settings take effect after merge, for later pull requests only."));
        if let Some(bytes) = input.head.read(REPO_CONFIG_PATH) {
            match request::parse_repo_config(REPO_CONFIG_PATH, &bytes) {
                Err(fs) => repo_findings.extend(fs),
                // Said loudly: approving an apply schedule approves its upgrades (issue 8 item 6).
                Ok(cfg) => {
                    for o in &cfg.rules.ignored {
                        notes.push(format!("This change's tkgops.yaml: {}", o.note(&cfg.path)));
                    }
                    let apply: Vec<String> = cfg
                        .schedules
                        .iter()
                        .filter(|s| s.action == crate::schedule::ScheduleAction::Apply)
                        .map(|s| format!("`{}`", s.name))
                        .collect();
                    if !apply.is_empty() {
                        notes.push(format!(
                            "tkgops.yaml declares the `action: apply` schedule(s) {}: at each fire the bot upgrades the selected clusters itself, wave by wave inside the maintenance window, with no pull request to approve per upgrade. Approving this change approves those upgrades. Each fire's bump commits go to a record pull request to merge afterwards, and a halted fire waits for `/tkgops resume` on the fleet dashboard issue.",
                            apply.join(", ")
                        ));
                    }
                }
            }
        }
    }
    let mut clusters = Vec::new();
    let affected = affected_clusters(input.changed_paths);
    let max = repo
        .as_ref()
        .map_or(request::DEFAULT_MAX_CLUSTERS, |r| r.plan.max_clusters) as usize;
    if capped && affected.len() > max {
        repo_findings.push(plan_size_finding(&affected, max));
        return Plan {
            base_sha: input.base_sha.to_string(),
            head_sha: input.head_sha.to_string(),
            clusters,
            repo_findings,
            notes,
            changes_policy,
        };
    }
    for name in affected {
        let before = load_cluster(input.base, &name, repo.as_ref());
        let after = load_cluster(input.head, &name, repo.as_ref());
        clusters.extend(plan_cluster(
            &name,
            before,
            after,
            repo.as_ref(),
            input,
            &mut notes,
        ));
    }
    // Deletes: at most approval.maxDeletesPerChange per change (TKGOPS-DELETE).
    let deletes: Vec<String> = clusters
        .iter()
        .filter(|c| c.intent == IntentKind::Delete)
        .map(|c| c.cluster.clone())
        .collect();
    if let Some(r) = &repo {
        if !deletes.is_empty() {
            notes.push(format!(
                "This change deletes {}: it runs only when the pull request carries the label `{}` and has {} approval(s) from approvers (approval.destructiveApprovals).",
                deletes.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", "),
                request::ALLOW_DELETE_LABEL,
                r.approval.destructive_approvals
            ));
        }
        let max = r.approval.max_deletes_per_change as usize;
        if deletes.len() > max {
            for c in clusters
                .iter_mut()
                .filter(|c| c.intent == IntentKind::Delete)
            {
                c.findings.push(Finding {
                    path: format!("{CLUSTERS_DIR}/{}", c.cluster),
                    line: None,
                    rule: DELETE_RULE.into(),
                    severity: Severity::Error,
                    message: format!(
                        "this change deletes {} clusters ({}); the policy allows at most {max} per pull request (approval.maxDeletesPerChange): split it",
                        deletes.len(),
                        deletes.join(", ")
                    ),
                });
                c.status = PlanStatus::Blocked;
                c.note = Some(BLOCKED_NOTE.into());
            }
        }
    }
    Plan {
        base_sha: input.base_sha.to_string(),
        head_sha: input.head_sha.to_string(),
        clusters,
        repo_findings,
        notes,
        changes_policy,
    }
}

/// The `TKGOPS-PLAN-SIZE` finding of a change touching the clusters `affected`, more than
/// `max`: it names the count, the first clusters and the setting.
fn plan_size_finding(affected: &BTreeSet<String>, max: usize) -> Finding {
    let first: Vec<String> = affected.iter().take(5).map(|c| format!("`{c}`")).collect();
    Finding {
        path: format!("{CLUSTERS_DIR}/"),
        line: None,
        rule: PLAN_SIZE_RULE.into(),
        severity: Severity::Error,
        message: format!(
            "this change touches {} clusters ({}{}); one plan covers at most {max} (plan.maxClusters in the default branch's tkgops.yaml). Nothing is planned or run: split the change into pull requests of at most {max} clusters.",
            affected.len(),
            first.join(", "),
            if affected.len() > first.len() { ", …" } else { "" }
        ),
    }
}

/// Whether `findings` hold a committed credential (`TKGOPS-SECRET`, `TKGOPS-PKG-SECRET`): the
/// request is then not rendered at all, so the value reaches no step input, manifest or diff
/// of the plan (security rule 5).
fn holds_secret(findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|f| f.rule == "TKGOPS-SECRET" || f.rule == "TKGOPS-PKG-SECRET")
}

/// Note of a cluster plan not rendered because its request holds a credential.
const SECRET_NOTE: &str = "Not rendered: the request holds a credential (see the findings). Remove it from Git; nothing is shown or run for this cluster until then.";

/// Rule of the safety rails of deletes: `approval.maxDeletesPerChange` and the
/// [`request::ALLOW_DELETE_LABEL`] label.
pub const DELETE_RULE: &str = "TKGOPS-DELETE";
/// Rule of a package removal that another remaining package needs
/// ([`request::PACKAGE_DEPENDENCIES`]).
pub const PACKAGE_REMOVE_RULE: &str = "TKGOPS-PKG-REMOVE";

const BLOCKED_NOTE: &str =
    "Fix the errors listed in the findings; nothing runs for this cluster until the plan has no errors.";

/// The TKG configuration variables that shape machines; a change of them on an existing
/// cluster is a [`IntentKind::Resize`] (the Cluster's topology is applied again) rather than a
/// creation-only variable.
pub const MACHINE_VARIABLES: &[&str] = &[
    "CONTROL_PLANE_MACHINE_COUNT",
    "CONTROL_PLANE_MACHINE_TYPE",
    "NODE_MACHINE_TYPE",
    "NODE_MACHINE_TYPE_1",
    "NODE_MACHINE_TYPE_2",
    "WORKER_MACHINE_COUNT",
    "WORKER_MACHINE_COUNT_0",
    "WORKER_MACHINE_COUNT_1",
    "WORKER_MACHINE_COUNT_2",
    "AWS_NODE_OS_DISK_SIZE_GIB",
    "AWS_CONTROL_PLANE_OS_DISK_SIZE_GIB",
];

fn plan_cluster(
    name: &str,
    before: Option<LoadedCluster>,
    after: Option<LoadedCluster>,
    repo: Option<&RepoConfig>,
    input: &PlanInput<'_>,
    notes: &mut Vec<String>,
) -> Vec<ClusterPlan> {
    match (before, after) {
        (None, None) => Vec::new(),
        (None, Some(after)) => vec![render_intent(
            name,
            IntentKind::Create,
            after.request.as_ref(),
            None,
            after.findings,
            repo,
            input,
        )],
        (Some(before), None) => vec![render_intent(
            name,
            IntentKind::Delete,
            before.request.as_ref(),
            None,
            Vec::new(),
            repo,
            input,
        )],
        (Some(before), Some(after)) => {
            let mut findings = after.findings;
            if holds_secret(&findings) {
                let mut b = blocked(
                    name,
                    IntentKind::Unsupported {
                        reason: "the cluster request holds a credential".into(),
                    },
                    findings,
                    None,
                );
                b.note = Some(SECRET_NOTE.into());
                return vec![b];
            }
            let (Some(old), Some(new)) = (before.request.as_ref(), after.request.as_ref()) else {
                // The new version does not load: show its findings as a blocked change.
                return vec![blocked(
                    name,
                    IntentKind::Unsupported {
                        reason: "the cluster request does not load".into(),
                    },
                    findings,
                    None,
                )];
            };
            // Security rule 7: an existing cluster's placement never changes (TKGOPS-PLACEMENT).
            let moved = super::placement::placement_findings(old, new, repo);
            if !moved.is_empty() {
                findings.extend(moved);
                return vec![blocked(
                    name,
                    IntentKind::Unsupported {
                        reason: "the cluster's management cluster, namespace or name changes"
                            .into(),
                    },
                    findings,
                    None,
                )];
            }
            notes.extend(super::placement::label_notes(
                name,
                &old.settings.labels,
                &new.settings.labels,
                repo,
            ));
            let (old_spec, new_spec) = match (repo, spec_of(old, repo), spec_of(new, repo)) {
                (Some(_), Ok(a), Ok(b)) => (a, b),
                (_, _, Err(f)) => {
                    findings.push(f);
                    return vec![blocked(
                        name,
                        IntentKind::Unsupported {
                            reason: "the cluster request does not load".into(),
                        },
                        findings,
                        None,
                    )];
                }
                _ => {
                    return vec![blocked(
                        name,
                        IntentKind::Unsupported {
                            reason: "the old cluster request does not load".into(),
                        },
                        findings,
                        None,
                    )]
                }
            };
            let settings_path = format!("{CLUSTERS_DIR}/{name}/{CLUSTER_SETTINGS_FILE}");
            let mut intents = Vec::new();
            if old_spec.tkr != new_spec.tkr {
                let line = new.settings.line("tkr");
                if let Some(f) =
                    request::check_upgrade(&settings_path, line, &old_spec.tkr, &new_spec.tkr)
                {
                    findings.push(f);
                }
                intents.push(IntentKind::Upgrade {
                    from: old_spec.tkr.clone(),
                    to: new_spec.tkr.clone(),
                });
            }
            let machines_change = old_spec.control_plane != new_spec.control_plane
                || old_spec.workers != new_spec.workers
                || old_spec.worker_root_volume_gib != new_spec.worker_root_volume_gib;
            if machines_change {
                intents.push(IntentKind::Resize);
            }
            if new_spec.tmc.is_some() && old_spec.tmc != new_spec.tmc {
                intents.push(IntentKind::AttachTmc);
            } else if old_spec.tmc.is_some() && new_spec.tmc.is_none() {
                intents.push(IntentKind::DetachTmc);
            }
            if old_spec.packages != new_spec.packages
                || old_spec.package_repository != new_spec.package_repository
            {
                findings.extend(removed_package_findings(
                    &settings_path,
                    new.settings.line("packages"),
                    &old_spec,
                    &new_spec,
                ));
                intents.push(IntentKind::RolloutPackages);
            }
            let changed_vars: Vec<String> = old
                .config
                .vars
                .iter()
                .filter(|(k, v)| {
                    new.config
                        .vars
                        .get(*k)
                        .map(|n| n.value != v.value)
                        .unwrap_or(true)
                })
                .map(|(k, _)| k.clone())
                .chain(
                    new.config
                        .vars
                        .keys()
                        .filter(|k| !old.config.vars.contains_key(*k))
                        .cloned(),
                )
                .filter(|k| !MACHINE_VARIABLES.contains(&k.as_str()))
                .collect();
            if !changed_vars.is_empty() {
                let shown: Vec<String> = changed_vars.iter().take(10).cloned().collect();
                intents.push(IntentKind::Unsupported {
                    reason: format!(
                        "TKG applies cluster configuration variables only when a cluster is created; changed: {}{}",
                        shown.join(", "),
                        if changed_vars.len() > shown.len() { ", …" } else { "" }
                    ),
                });
            }
            if intents.is_empty() {
                return Vec::new();
            }
            let mut out = Vec::new();
            for (i, intent) in intents.into_iter().enumerate() {
                // Findings are shown once per cluster (on its first intent).
                let f = if i == 0 {
                    std::mem::take(&mut findings)
                } else {
                    Vec::new()
                };
                // TMC detach is rendered from the request as it was (it has the TMC settings).
                let req = if intent == IntentKind::DetachTmc {
                    old
                } else {
                    new
                };
                out.push(render_intent(
                    name,
                    intent,
                    Some(req),
                    Some(&old_spec),
                    f,
                    repo,
                    input,
                ));
            }
            out
        }
    }
}

/// `TKGOPS-PKG-REMOVE` findings: a package the change removes that a package still installed
/// after the change needs ([`request::PACKAGE_DEPENDENCIES`]).
fn removed_package_findings(
    path: &str,
    line: Option<u32>,
    before: &ClusterSpec,
    after: &ClusterSpec,
) -> Vec<Finding> {
    let kept = |n: &str| after.packages.iter().any(|p| p.name == n);
    before
        .packages
        .iter()
        .filter(|p| !kept(&p.name))
        .flat_map(|removed| {
            request::PACKAGE_DEPENDENCIES
                .iter()
                .filter(move |(_, needs)| *needs == removed.name)
                .filter(|(pkg, _)| kept(pkg))
                .map(move |(pkg, _)| Finding {
                    path: path.to_string(),
                    line,
                    rule: PACKAGE_REMOVE_RULE.into(),
                    severity: Severity::Error,
                    message: format!(
                        "removing package {} is refused: {pkg}, which stays installed, needs it; remove {pkg} first or keep {}",
                        removed.name, removed.name
                    ),
                })
        })
        .collect()
}

fn spec_of(req: &ClusterRequest, repo: Option<&RepoConfig>) -> Result<ClusterSpec, Finding> {
    match repo {
        Some(r) => request::cluster_spec(req, r),
        None => Err(Finding {
            path: REPO_CONFIG_PATH.into(),
            line: None,
            rule: "TKGOPS-SCHEMA".into(),
            severity: Severity::Error,
            message: "repository settings are invalid or missing".into(),
        }),
    }
}

fn blocked(
    name: &str,
    intent: IntentKind,
    findings: Vec<Finding>,
    workflow: Option<String>,
) -> ClusterPlan {
    ClusterPlan {
        cluster: name.to_string(),
        intent,
        workflow,
        status: PlanStatus::Blocked,
        findings,
        steps: Vec::new(),
        manifests: Vec::new(),
        note: Some(BLOCKED_NOTE.into()),
        impact: None,
        summary: None,
        diffs: Vec::new(),
    }
}

fn render_intent(
    name: &str,
    intent: IntentKind,
    req: Option<&ClusterRequest>,
    before: Option<&ClusterSpec>,
    mut findings: Vec<Finding>,
    repo: Option<&RepoConfig>,
    input: &PlanInput<'_>,
) -> ClusterPlan {
    let Some(intent_name) = intent.workflow_intent() else {
        let reason = match &intent {
            IntentKind::Unsupported { reason } => reason.clone(),
            _ => String::new(),
        };
        return ClusterPlan {
            cluster: name.to_string(),
            status: if findings.iter().any(|f| f.severity == Severity::Error) {
                PlanStatus::Blocked
            } else {
                PlanStatus::NoAction
            },
            intent,
            workflow: None,
            findings,
            steps: Vec::new(),
            manifests: Vec::new(),
            note: Some(reason),
            impact: None,
            summary: None,
            diffs: Vec::new(),
        };
    };
    if holds_secret(&findings) {
        let mut b = blocked(name, intent, findings, None);
        b.note = Some(SECRET_NOTE.into());
        return b;
    }
    let Some(workflow) = input.catalog.workflow_for_intent(intent_name) else {
        return blocked(name, intent, findings, None);
    };
    let spec = match req
        .ok_or(())
        .and_then(|r| spec_of(r, repo).map_err(|f| findings.push(f)))
    {
        Ok(s) => s,
        Err(()) => return blocked(name, intent, findings, Some(workflow.name.clone())),
    };
    if spec.tmc.is_some()
        && repo.map(|r| r.tmc.is_none()).unwrap_or(true)
        && intent_name != "delete"
        && intent_name != "detach-tmc"
    {
        findings.push(Finding {
            path: format!("{CLUSTERS_DIR}/{name}/{CLUSTER_SETTINGS_FILE}"),
            line: None,
            rule: "TKGOPS-SCHEMA".into(),
            severity: Severity::Error,
            message: "tmc.clusterGroup is set but the repository's tkgops.yaml has no tmc.endpoint"
                .into(),
        });
    }
    let impact = match (&intent, before) {
        (IntentKind::Upgrade { .. } | IntentKind::Resize, Some(b)) => {
            // An upgrade replaces machines for the new version; a resize for the new machine
            // shape only (a version change in the same pull request is the upgrade's).
            let mut from = b.clone();
            if intent == IntentKind::Resize {
                from.kubernetes_version = spec.kubernetes_version.clone();
            } else {
                from.control_plane = spec.control_plane.clone();
                from.workers = spec.workers.clone();
                from.worker_root_volume_gib = spec.worker_root_volume_gib;
            }
            Some(impact(&from, &spec, &input.history))
        }
        _ => None,
    };
    let has_errors = findings.iter().any(|f| f.severity == Severity::Error);
    let context = render_context(&spec, input.repository);
    let (steps, manifests) =
        match render_workflow(workflow, &spec, before, repo, &context, input.catalog) {
            Ok(r) => r,
            Err(_) if has_errors => {
                // The findings already say why (e.g. TMC settings without a TMC endpoint).
                return blocked(name, intent, findings, Some(workflow.name.clone()));
            }
            Err(e) => {
                findings.push(e.finding(workflow));
                return blocked(name, intent, findings, Some(workflow.name.clone()));
            }
        };
    let executable = steps.iter().all(|s| input.executable.contains(&s.kind()));
    let (status, note) = if has_errors {
        (PlanStatus::Blocked, Some(BLOCKED_NOTE.to_string()))
    } else if !executable {
        let missing: Vec<&str> = steps
            .iter()
            .map(|s| s.kind())
            .filter(|k| !input.executable.contains(k))
            .map(StepKind::as_str)
            .collect();
        (
            PlanStatus::NotYetExecutable,
            Some(format!(
                "Planned, not yet executable: this version of tkgops has no executor for {}.",
                missing.join(", ")
            )),
        )
    } else {
        (PlanStatus::Ready, None)
    };
    let summary = if intent == IntentKind::Delete {
        super::summary::summarize(Some(&spec), None)
    } else {
        super::summary::summarize(before, Some(&spec))
    };
    let diffs = match before {
        Some(b) if intent != IntentKind::Delete => {
            let mut d = super::diff::cluster_diff(b, &spec, input.repository, input.catalog);
            d.extend(super::diff::package_diffs(b, &spec));
            d
        }
        _ => Vec::new(),
    };
    ClusterPlan {
        cluster: name.to_string(),
        intent,
        workflow: Some(workflow.name.clone()),
        status,
        findings,
        steps,
        manifests,
        note,
        impact,
        summary: Some(summary),
        diffs,
    }
}

/// The handlebars context of the manifest templates and the workflows' `when` conditions for
/// one cluster: `cluster` (the [`ClusterSpec`]), `owner` (the ownership label and annotations
/// for the config repository `repository`).
pub fn render_context(spec: &ClusterSpec, repository: &str) -> Value {
    json!({
        "cluster": spec,
        "owner": {
            "labelKey": OWNER_LABEL,
            "label": owner_label(repository, &spec.name),
            "repository": repository,
            "path": format!("{CLUSTERS_DIR}/{}", spec.name),
        },
    })
}

fn lookup<'v>(ctx: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(ctx, |v, k| v.get(k))
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(_)) => true,
    }
}

/// Rule ID of a workflow that cannot be rendered for a cluster.
pub const TEMPLATE_RULE: &str = "TKGOPS-TEMPLATE";

/// Why a workflow could not be rendered for a cluster: a template failed (strict mode: a
/// missing field, a helper error; or its output is not YAML), or a step's inputs could not be
/// built.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderError {
    /// The step being rendered.
    pub step: String,
    /// The template (path below `templates/`), when a template failed.
    pub template: Option<String>,
    /// 1-based line in the template, when known.
    pub line: Option<usize>,
    /// What failed.
    pub message: String,
}

impl RenderError {
    /// The error as a plan finding (rule [`TEMPLATE_RULE`], severity error) on
    /// `templates/<template>:<line>`, or on `workflows/<workflow>.yaml` when no template failed.
    pub fn finding(&self, workflow: &Workflow) -> Finding {
        let path = match &self.template {
            Some(t) => format!("templates/{t}"),
            None => format!("workflows/{}.yaml", workflow.name),
        };
        let what = match &self.template {
            Some(t) => format!("template {t}{}", line_suffix(self.line)),
            None => format!("workflow {}", workflow.name),
        };
        Finding {
            path,
            line: self.line.map(|l| l as u32),
            rule: TEMPLATE_RULE.into(),
            severity: Severity::Error,
            message: format!("{what}, step {}: {}", self.step, self.message),
        }
    }
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.template {
            Some(t) => write!(
                f,
                "step {}: template {t}{}: {}",
                self.step,
                line_suffix(self.line),
                self.message
            ),
            None => write!(f, "step {}: {}", self.step, self.message),
        }
    }
}

/// Builds every step of `workflow` for the cluster `spec`: its typed inputs, and for
/// `kube.apply` the manifests rendered from the step's templates against `context` (checked to
/// parse as YAML). Steps whose `when` path is empty in `context` are left out. Returns the step
/// specs and the manifests for display.
///
/// Errors: [`RenderError`] naming the step and the template (with its line) when rendering
/// fails or the output does not parse, or naming the step when its inputs cannot be built (a
/// TMC step without the repository's TMC endpoint).
pub fn render_workflow(
    workflow: &Workflow,
    spec: &ClusterSpec,
    before: Option<&ClusterSpec>,
    repo: Option<&RepoConfig>,
    context: &Value,
    catalog: &Catalog,
) -> Result<(Vec<StepSpec>, Vec<RenderedManifest>), RenderError> {
    let mut steps = Vec::new();
    let mut manifests = Vec::new();
    for step in &workflow.steps {
        if let Some(when) = &step.when {
            if !truthy(lookup(context, when)) {
                continue;
            }
        }
        let mut docs = Vec::new();
        for t in &step.manifests {
            let failed = |line: Option<usize>, message: String| RenderError {
                step: step.id.clone(),
                template: Some(t.clone()),
                line,
                message,
            };
            let yaml = catalog.render(t, context).map_err(|e| match e {
                CatalogError::Render { line, message, .. } => failed(line, message),
                other => failed(None, other.to_string()),
            })?;
            let before = docs.len();
            for doc in serde_yaml::Deserializer::from_str(&yaml) {
                let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)
                    .map_err(|e| failed(None, format!("the output is not valid YAML: {e}")))?;
                if !v.is_null() {
                    docs.push(serde_yaml::to_string(&v).map_err(|e| failed(None, e.to_string()))?);
                }
            }
            if docs.len() == before {
                // Nothing to apply for this cluster (e.g. no ClusterBootstrap): not shown.
                continue;
            }
            manifests.push(RenderedManifest {
                step: step.id.clone(),
                template: t.clone(),
                yaml,
            });
        }
        let owner = lookup(context, "owner.label")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let repository = lookup(context, "owner.repository")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let fields = if step.kind == StepKind::KubeResizeCluster {
            resize_fields(before, spec, repository, &step.manifests, catalog).map_err(
                |message| RenderError {
                    step: step.id.clone(),
                    template: step.manifests.first().cloned(),
                    line: None,
                    message,
                },
            )?
        } else {
            Vec::new()
        };
        let inputs = step_inputs(
            step.kind,
            spec,
            before,
            repo,
            StepTexts {
                owner_label: owner,
                repository,
                manifests: docs.join("---\n"),
                fields,
            },
        )
        .map_err(|message| RenderError {
            step: step.id.clone(),
            template: None,
            line: None,
            message,
        })?;
        steps.push(StepSpec {
            id: step.id.clone(),
            title: step.title.clone(),
            timeout_secs: step.timeout.as_secs().max(1),
            retry: step
                .retry
                .as_ref()
                .map(RetryPolicy::from)
                .unwrap_or_default(),
            inputs,
        });
    }
    Ok((steps, manifests))
}

/// Where the Cluster of `spec` is, and how its management cluster is reached: the
/// management cluster's kubeconfig source from `repo` (the policy the plan is made under;
/// `None` without one, the bot's configured source is used then). What every step on the
/// cluster targets, and what the drift wake-up watches.
pub fn workload_target(spec: &ClusterSpec, repo: Option<&RepoConfig>) -> WorkloadTarget {
    WorkloadTarget {
        management_cluster: spec.management_cluster.clone(),
        kubeconfig: repo
            .and_then(|r| r.management_cluster(&spec.management_cluster))
            .map(|m| m.kubeconfig.clone()),
        namespace: spec.namespace.clone(),
        cluster_name: spec.name.clone(),
    }
}

/// The typed inputs of a step of kind `kind` for the cluster `spec` (as the change leaves it;
/// `before` is the cluster as it was, for changes to an existing cluster); `manifests` is the
/// rendered multi-document YAML of a `kube.apply` step (empty for other kinds); `owner_label`
/// the [`owner_label`] the Cluster of a changing step must carry, and `repository` the config
/// repository (`owner/name`) it was computed for (the TMC steps carry both as their
/// [`OwnerMark`]).
///
/// Errors: a message when the inputs need repository settings that are missing (the TMC
/// endpoint of `tmc.attach` and `tmc.detach`).
pub fn step_inputs(
    kind: StepKind,
    spec: &ClusterSpec,
    before: Option<&ClusterSpec>,
    repo: Option<&RepoConfig>,
    rendered: StepTexts<'_>,
) -> Result<StepInputs, String> {
    let StepTexts {
        owner_label,
        repository,
        manifests,
        fields,
    } = rendered;
    let target = workload_target(spec, repo);
    let tmc = || -> Result<TmcClusterInputs, String> {
        let org = repo
            .and_then(|r| r.tmc.as_ref())
            .ok_or("the repository's tkgops.yaml has no tmc.endpoint")?;
        let (cluster_group, description) = spec
            .tmc
            .as_ref()
            .map(|t| (t.cluster_group.clone(), t.description.clone()))
            .unwrap_or_default();
        Ok(TmcClusterInputs {
            endpoint: org.endpoint.clone(),
            csp_endpoint: org.csp_endpoint.clone(),
            target: target.clone(),
            full_name: TmcFullName::attached(&spec.name),
            cluster_group,
            description,
            labels: spec.labels.clone(),
            owner: OwnerMark {
                label: owner_label.to_string(),
                repository: repository.to_string(),
                path: format!("{CLUSTERS_DIR}/{}", spec.name),
            },
        })
    };
    let aws_inputs = || AwsPreflightInputs {
        cluster_name: spec.name.clone(),
        region: spec.region.clone(),
        azs: spec.azs.clone(),
        vpc: spec.vpc.clone(),
        subnets: spec.subnets.clone(),
        instance_types: instance_types(spec),
        cluster_cidr: spec.cluster_cidr.clone(),
        service_cidr: spec.service_cidr.clone(),
        identity: repo
            .and_then(|r| r.management_cluster(&spec.management_cluster))
            .and_then(|mc| mc.aws.clone()),
    };
    let rollout = || KubeRolloutInputs {
        target: target.clone(),
        tkr: spec.tkr.clone(),
        kubernetes_version: spec.kubernetes_version.clone(),
        machines: machine_shapes(spec),
    };
    let packages = || PackagesInputs {
        target: target.clone(),
        repository: spec.package_repository.clone(),
        packages: spec.packages.clone(),
        revert: false,
    };
    Ok(match kind {
        StepKind::AwsPreflight => StepInputs::AwsPreflight(aws_inputs()),
        StepKind::KubePreflight => {
            let mc = repo
                .and_then(|r| r.management_cluster(&spec.management_cluster))
                .ok_or("the management cluster is not in the repository's tkgops.yaml")?;
            StepInputs::KubePreflight(KubePreflightInputs {
                target: target.clone(),
                tkg_version: spec.tkg_version.to_string(),
                cluster_class: spec.cluster_class.clone(),
                tkr: spec.tkr.clone(),
                identity_management_type: mc.identity_management_type.map(|t| {
                    match t {
                        crate::request::IdentityManagementType::Oidc => "oidc",
                        crate::request::IdentityManagementType::Ldap => "ldap",
                        crate::request::IdentityManagementType::None => "none",
                    }
                    .to_string()
                }),
            })
        }
        StepKind::KubeApply => StepInputs::KubeApply(KubeApplyInputs {
            target: target.clone(),
            manifests,
            revert: false,
        }),
        StepKind::KubeWaitCluster => StepInputs::KubeWaitCluster(target.clone()),
        StepKind::KubeReadKubeconfig => StepInputs::KubeReadKubeconfig(target.clone()),
        StepKind::TmcAttach => StepInputs::TmcAttach(tmc()?),
        StepKind::PackagesRollout => StepInputs::PackagesRollout(packages()),
        StepKind::KubeUpgradeCluster => StepInputs::KubeUpgradeCluster(UpgradeClusterInputs {
            target: target.clone(),
            tkr: spec.tkr.clone(),
            kubernetes_version: spec.kubernetes_version.clone(),
            owner_label: owner_label.to_string(),
            tkg_version: Some(spec.tkg_version),
        }),
        StepKind::KubeResizeCluster => StepInputs::KubeResizeCluster(ResizeClusterInputs {
            target: target.clone(),
            owner_label: owner_label.to_string(),
            fields,
        }),
        StepKind::PackagesUpdate => StepInputs::PackagesUpdate(PackagesUpdateInputs {
            target: target.clone(),
            repository: spec.package_repository.clone(),
            packages: spec.packages.clone(),
            remove: before
                .map(|b| {
                    b.packages
                        .iter()
                        .rev()
                        .filter(|old| !spec.packages.iter().any(|p| p.name == old.name))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        }),
        StepKind::PackagesVerify => StepInputs::PackagesVerify(target.clone()),
        StepKind::KubeWaitControlPlane => StepInputs::KubeWaitControlPlane(rollout()),
        StepKind::KubeWaitMachineDeployments => StepInputs::KubeWaitMachineDeployments(rollout()),
        StepKind::AwsRemoveSubnetTags => StepInputs::AwsRemoveSubnetTags(aws_inputs()),
        StepKind::TmcDetach => StepInputs::TmcDetach(tmc()?),
        StepKind::KubeDeleteCluster => StepInputs::KubeDeleteCluster(KubeDeleteInputs {
            target: target.clone(),
            owner_label: owner_label.to_string(),
        }),
        StepKind::KubeCheckOwner => StepInputs::KubeCheckOwner(KubeDeleteInputs {
            target: target.clone(),
            owner_label: owner_label.to_string(),
        }),
    })
}

/// What [`step_inputs`] takes from the rendering of one step.
#[derive(Clone, Debug, Default)]
pub struct StepTexts<'a> {
    /// The `tkgops.dev/owner` label value of the cluster ([`owner_label`]).
    pub owner_label: &'a str,
    /// The config repository (`owner/name`).
    pub repository: &'a str,
    /// The step's rendered manifests, as one multi-document YAML text (`kube.apply`).
    pub manifests: String,
    /// The machine fields of a resize (`kube.resize-cluster`; [`resize_fields`]).
    pub fields: Vec<ClusterFieldChange>,
}

/// The machine fields `kube.resize-cluster` sets: the Cluster rendered by `templates` for the
/// cluster as it was (`before`) and for the same cluster with the machines of `spec` (control
/// plane, workers, worker root volume) and nothing else, compared field by field
/// ([`machine_fields`]). Other changes of the pull request (a new TKR, creation-only variables)
/// are not part of a resize: the upgrade sets the TKR, and TKG applies the rest only at
/// creation.
///
/// Errors: a message when there is no `before` (not a change of an existing cluster), or the
/// templates do not render a Cluster.
/// The machine shapes `spec` asks for: the control plane's, then each MachineDeployment's
/// (its instance type, with the workers' root volume).
pub fn machine_shapes(spec: &ClusterSpec) -> Vec<MachineShape> {
    let cp = &spec.control_plane;
    std::iter::once(MachineShape {
        topology: MachineShape::CONTROL_PLANE.to_string(),
        instance_type: cp.instance_type.clone(),
        root_volume_gib: cp.root_volume_gib,
    })
    .chain(spec.workers.iter().map(|w| MachineShape {
        topology: w.name.clone(),
        instance_type: w.instance_type.clone(),
        root_volume_gib: spec.worker_root_volume_gib,
    }))
    .collect()
}

pub fn resize_fields(
    before: Option<&ClusterSpec>,
    spec: &ClusterSpec,
    repository: &str,
    templates: &[String],
    catalog: &Catalog,
) -> Result<Vec<ClusterFieldChange>, String> {
    let before =
        before.ok_or("a resize changes an existing cluster; there is no earlier request")?;
    let mut after = before.clone();
    after.control_plane = spec.control_plane.clone();
    after.workers = spec.workers.clone();
    after.worker_root_volume_gib = spec.worker_root_volume_gib;
    let cluster_of = |s: &ClusterSpec| -> Result<Value, String> {
        for t in templates {
            let yaml = catalog
                .render(t, &render_context(s, repository))
                .map_err(|e| e.to_string())?;
            for doc in serde_yaml::Deserializer::from_str(&yaml) {
                let v: Value = serde::Deserialize::deserialize(doc)
                    .map_err(|e| format!("{t}: the output is not valid YAML: {e}"))?;
                if v.get("kind").and_then(Value::as_str) == Some("Cluster") {
                    return Ok(v);
                }
            }
        }
        Err(format!("{} render no Cluster", templates.join(", ")))
    };
    Ok(machine_fields(&cluster_of(before)?, &cluster_of(&after)?))
}

/// The instance types of the control plane and every worker pool, sorted and deduplicated.
fn instance_types(spec: &ClusterSpec) -> Vec<String> {
    let mut types: Vec<String> = std::iter::once(spec.control_plane.instance_type.clone())
        .chain(spec.workers.iter().map(|w| w.instance_type.clone()))
        .collect();
    types.sort();
    types.dedup();
    types
}

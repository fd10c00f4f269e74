//! Intents and plans: what a change between two commits means for each cluster, and the
//! workflow rendered for it. Pure: reads files through [`TreeReader`], never the network, and
//! never needs credentials (security rule 2).

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{json, Value};

use super::catalog::{Catalog, Workflow};
use crate::files::TreeReader;
use crate::request::{self, ClusterRequest, ClusterSpec, Finding, RepoConfig, Severity};
use crate::step::{RetryPolicy, StepSpec};

/// Path of the repository settings file at the root of the config repository.
pub const REPO_CONFIG_PATH: &str = "tkgops.yaml";
/// Directory holding one sub-directory per cluster request.
pub const CLUSTERS_DIR: &str = "clusters";
/// File name of the TKG cluster configuration file inside a cluster directory.
pub const CLUSTER_CONFIG_FILE: &str = "cluster-config.yaml";
/// File name of tkgops's own per-cluster settings inside a cluster directory.
pub const CLUSTER_SETTINGS_FILE: &str = "tkgops.yaml";

/// Step kinds that have an executor in this version of tkgops. A workflow using any other kind
/// is planned and shown, but marked "planned, not yet executable" and never started.
pub const EXECUTABLE_KINDS: &[&str] = &[
    "aws.preflight",
    "kube.apply",
    "kube.wait-cluster",
    "kube.read-kubeconfig",
    "tmc.attach",
    "packages.rollout",
];

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
    /// TMC settings were added or changed.
    AttachTmc,
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

/// Computes the plan for the change `base..head`.
///
/// Never fails: unreadable or invalid files become findings in the plan, and a workflow that
/// cannot be rendered becomes a blocked cluster plan with the rendering error as its note.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let (repo, mut repo_findings) = load_repo_config(input.settings);
    let mut notes = Vec::new();
    if input.changed_paths.iter().any(|p| p == REPO_CONFIG_PATH) {
        notes.push("This change edits tkgops.yaml; the new repository settings take effect after merge (plans use the default branch's settings).".to_string());
        if let Some(bytes) = input.head.read(REPO_CONFIG_PATH) {
            if let Err(fs) = request::parse_repo_config(REPO_CONFIG_PATH, &bytes) {
                repo_findings.extend(fs);
            }
        }
    }
    let mut clusters = Vec::new();
    for name in affected_clusters(input.changed_paths) {
        let before = load_cluster(input.base, &name, repo.as_ref());
        let after = load_cluster(input.head, &name, repo.as_ref());
        clusters.extend(plan_cluster(&name, before, after, repo.as_ref(), input));
    }
    Plan {
        base_sha: input.base_sha.to_string(),
        head_sha: input.head_sha.to_string(),
        clusters,
        repo_findings,
        notes,
    }
}

fn plan_cluster(
    name: &str,
    before: Option<LoadedCluster>,
    after: Option<LoadedCluster>,
    repo: Option<&RepoConfig>,
    input: &PlanInput<'_>,
) -> Vec<ClusterPlan> {
    match (before, after) {
        (None, None) => Vec::new(),
        (None, Some(after)) => vec![render_intent(
            name,
            IntentKind::Create,
            after.request.as_ref(),
            after.findings,
            repo,
            input,
        )],
        (Some(before), None) => vec![render_intent(
            name,
            IntentKind::Delete,
            before.request.as_ref(),
            Vec::new(),
            repo,
            input,
        )],
        (Some(before), Some(after)) => {
            let mut findings = after.findings;
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
            let mut intents = Vec::new();
            if old_spec.tkr != new_spec.tkr {
                let line = None;
                if let Some(f) = request::check_upgrade(
                    &format!("{CLUSTERS_DIR}/{name}/{CLUSTER_SETTINGS_FILE}"),
                    line,
                    &old_spec.tkr,
                    &new_spec.tkr,
                ) {
                    findings.push(f);
                }
                intents.push(IntentKind::Upgrade {
                    from: old_spec.tkr.clone(),
                    to: new_spec.tkr.clone(),
                });
            }
            if new_spec.tmc.is_some() && old_spec.tmc != new_spec.tmc {
                intents.push(IntentKind::AttachTmc);
            }
            if old_spec.packages != new_spec.packages
                || old_spec.package_repository != new_spec.package_repository
            {
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
                out.push(render_intent(name, intent, Some(new), f, repo, input));
            }
            out
        }
    }
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
        note: Some("Fix the errors listed in the findings; nothing runs for this cluster until the plan has no errors.".into()),
    }
}

fn render_intent(
    name: &str,
    intent: IntentKind,
    req: Option<&ClusterRequest>,
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
        };
    };
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
    let has_errors = findings.iter().any(|f| f.severity == Severity::Error);
    let context = render_context(&spec, repo, input.head_sha);
    let (steps, manifests) = match render_workflow(workflow, &context, input.catalog) {
        Ok(r) => r,
        Err(message) => {
            let mut p = blocked(name, intent, findings, Some(workflow.name.clone()));
            p.note = Some(format!(
                "The workflow {} could not be rendered: {message}",
                workflow.name
            ));
            return p;
        }
    };
    let executable = steps
        .iter()
        .all(|s| EXECUTABLE_KINDS.contains(&s.kind.as_str()));
    let (status, note) = if has_errors {
        (PlanStatus::Blocked, Some("Fix the errors listed in the findings; nothing runs for this cluster until the plan has no errors.".to_string()))
    } else if !executable {
        let missing: Vec<&str> = steps
            .iter()
            .map(|s| s.kind.as_str())
            .filter(|k| !EXECUTABLE_KINDS.contains(k))
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
    ClusterPlan {
        cluster: name.to_string(),
        intent,
        workflow: Some(workflow.name.clone()),
        status,
        findings,
        steps,
        manifests,
        note,
    }
}

/// The handlebars context for one cluster: `cluster` (the [`ClusterSpec`]), `repo.tmc`, and a
/// few derived values the templates need.
pub fn render_context(spec: &ClusterSpec, repo: Option<&RepoConfig>, commit: &str) -> Value {
    // Only the TMC endpoints of the repository settings reach the templates.
    let tmc = repo
        .and_then(|r| r.tmc.as_ref())
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or(Value::Null);
    let mut instance_types: Vec<String> = std::iter::once(spec.control_plane.instance_type.clone())
        .chain(spec.workers.iter().map(|w| w.instance_type.clone()))
        .collect();
    instance_types.sort();
    instance_types.dedup();
    let default_worker = spec
        .workers
        .first()
        .map(|w| w.instance_type.clone())
        .unwrap_or_else(|| "m5.large".into());
    json!({
        "cluster": spec,
        "repo": {"tmc": tmc},
        "instanceTypes": instance_types,
        "defaultWorkerInstanceType": default_worker,
        "workerPoolLabel": format!("{}-worker-pool", spec.name),
        "controlPlaneMhcName": format!("{}-control-plane", spec.name),
        "commit": commit,
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

/// Renders every step of `workflow` against `context`: inputs (JSON) and manifests (YAML,
/// checked to parse). Returns the step specs and the manifests for display.
///
/// Errors: a message naming the step and template when rendering fails or the output does not
/// parse.
pub fn render_workflow(
    workflow: &Workflow,
    context: &Value,
    catalog: &Catalog,
) -> Result<(Vec<StepSpec>, Vec<RenderedManifest>), String> {
    let mut steps = Vec::new();
    let mut manifests = Vec::new();
    for step in &workflow.steps {
        if let Some(when) = &step.when {
            if !truthy(lookup(context, when)) {
                continue;
            }
        }
        let text = catalog
            .render(&step.inputs, context)
            .map_err(|e| format!("step {}: {e}", step.id))?;
        let mut inputs: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "step {}: template {} did not render valid JSON: {e}",
                step.id, step.inputs
            )
        })?;
        if !step.manifests.is_empty() {
            let mut docs = Vec::new();
            for t in &step.manifests {
                let yaml = catalog
                    .render(t, context)
                    .map_err(|e| format!("step {}: {e}", step.id))?;
                for doc in serde_yaml::Deserializer::from_str(&yaml) {
                    let v: serde_yaml::Value =
                        serde::Deserialize::deserialize(doc).map_err(|e| {
                            format!(
                                "step {}: template {t} did not render valid YAML: {e}",
                                step.id
                            )
                        })?;
                    if !v.is_null() {
                        docs.push(
                            serde_yaml::to_string(&v)
                                .map_err(|e| format!("step {}: {e}", step.id))?,
                        );
                    }
                }
                manifests.push(RenderedManifest {
                    step: step.id.clone(),
                    template: t.clone(),
                    yaml,
                });
            }
            if let Some(obj) = inputs.as_object_mut() {
                obj.insert("manifests".into(), Value::String(docs.join("---\n")));
            }
        }
        steps.push(StepSpec {
            id: step.id.clone(),
            kind: step.kind.clone(),
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

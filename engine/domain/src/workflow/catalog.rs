//! Workflow definitions (`workflows/*.yaml`) and their handlebars templates (`templates/`).
//!
//! Security rule 1 (docs/design.md): workflows and templates come from the bot's own install, never
//! from a pull request. [`Catalog::builtin`] embeds the files of this repository's `workflows/`
//! and `templates/` into the binary at build time; [`Catalog::from_files`] takes an operator's
//! replacement set, read by the bot from its host (`catalogDir:`).
//!
//! A workflow names its steps, their order, kinds, timeouts, retries and conditions. Step inputs
//! are typed ([`crate::step::StepInputs`]) and built by the planner; templates are only for what
//! is sent verbatim (Cluster API manifests) and what people read (PR comments). Handlebars runs
//! in strict mode: a missing field is an error naming the template and the line, at plan time.

use std::collections::BTreeMap;
use std::time::Duration;

use handlebars::Handlebars;
use serde::{Deserialize, Serialize};

use crate::step::{RetryPolicy, StepKind};

/// Errors loading or rendering workflows and templates.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A workflow file is not valid YAML or violates the workflow schema.
    #[error("workflow {file}: {message}")]
    Workflow {
        /// File name of the workflow.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A template does not compile.
    #[error("template {name}: {message}")]
    Template {
        /// Template name (path below `templates/`).
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A workflow step references a template that does not exist.
    #[error("workflow {workflow}: step {step} references unknown template {template}")]
    MissingTemplate {
        /// Workflow name.
        workflow: String,
        /// Step id.
        step: String,
        /// Missing template name.
        template: String,
    },
    /// Rendering a template failed (e.g. a missing field in strict mode).
    #[error("template {name}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Render {
        /// Template name (path below `templates/`).
        name: String,
        /// 1-based line in the template where rendering failed, when handlebars knows it.
        line: Option<usize>,
        /// What failed.
        message: String,
    },
}

/// Retry settings of a workflow step as written in YAML (`{maxAttempts: 5, initialBackoff: 2s}`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Total attempts including the first.
    pub max_attempts: u32,
    /// Delay before the second attempt (humantime, e.g. `2s`).
    #[serde(with = "crate::serde_duration")]
    pub initial_backoff: Duration,
    /// Cap of the delay between attempts (humantime).
    #[serde(with = "crate::serde_duration")]
    pub max_backoff: Duration,
}

impl From<&RetrySpec> for RetryPolicy {
    fn from(r: &RetrySpec) -> Self {
        RetryPolicy {
            max_attempts: r.max_attempts.max(1),
            initial_backoff_secs: r.initial_backoff.as_secs_f64(),
            max_backoff_secs: r.max_backoff.as_secs_f64(),
        }
    }
}

/// One step of a workflow definition.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowStep {
    /// Step id, unique within the workflow.
    pub id: String,
    /// Step kind (e.g. `kube.apply`); an unknown kind is a load error of the workflow file.
    pub kind: StepKind,
    /// Title shown in the PR comment.
    pub title: String,
    /// Deadline of one attempt (humantime, e.g. `5m`).
    #[serde(with = "crate::serde_duration")]
    pub timeout: Duration,
    /// Retry policy; defaults to [`RetryPolicy::default`].
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Templates (below `templates/`) rendering Kubernetes manifests; joined into the input
    /// `manifests` (multi-document YAML). Required for `kube.apply`, refused for other kinds.
    #[serde(default)]
    pub manifests: Vec<String>,
    /// Render context path that must be present and non-empty for the step to be planned
    /// (e.g. `cluster.tmc`: only clusters with TMC settings get the attach step).
    #[serde(default)]
    pub when: Option<String>,
}

/// A workflow definition (`workflows/<name>.yaml`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workflow {
    /// Workflow name (e.g. `create-cluster`).
    pub name: String,
    /// The intent it serves: `create`, `upgrade`, `attach-tmc`, `rollout-packages`, `delete`.
    pub intent: String,
    /// One-line description shown in the plan.
    pub description: String,
    /// Steps in execution order.
    pub steps: Vec<WorkflowStep>,
}

/// The step kinds whose workflow steps name `manifests` templates: `kube.apply` applies them;
/// `kube.resize-cluster` renders the Cluster from them before and after the change to find the
/// machine fields it sets ([`super::plan::resize_fields`]).
pub const RENDERS_MANIFESTS: &[StepKind] = &[StepKind::KubeApply, StepKind::KubeResizeCluster];

/// The set of workflows and compiled templates the bot plans with.
pub struct Catalog {
    workflows: BTreeMap<String, Workflow>,
    hb: Handlebars<'static>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("workflows", &self.workflows.keys().collect::<Vec<_>>())
            .finish()
    }
}

macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../", $path)))),*]
    };
}

/// The workflow and template files compiled into the binary: `(path, contents)`.
const EMBEDDED: &[(&str, &str)] = embedded![
    "workflows/create-cluster.yaml",
    "workflows/upgrade-cluster.yaml",
    "workflows/attach-tmc.yaml",
    "workflows/rollout-packages.yaml",
    "workflows/delete-cluster.yaml",
    "workflows/resize-cluster.yaml",
    "workflows/detach-tmc.yaml",
    "templates/manifests/cluster.yaml.hbs",
    "templates/manifests/bootstrap-config.yaml.hbs",
    "templates/manifests/cluster-bootstrap.yaml.hbs",
    "templates/comments/plan.md.hbs",
    "templates/comments/plan-cluster.md.hbs",
    "templates/comments/run.md.hbs",
];

handlebars::handlebars_helper!(json_helper: |v: Json| serde_json::to_string(v).unwrap_or_else(|_| "null".into()));
handlebars::handlebars_helper!(yaml_helper: |v: Json, {indent: u64 = 0}| yaml_value(v, indent as usize));

/// `{{toYaml v indent=N}}`: a value after a `key:` in block YAML. Scalars and empty collections
/// come inline (` "text"`, ` {}`), as JSON, which is YAML; maps and lists come as a block on the
/// following lines, each indented by `indent` spaces.
fn yaml_value(v: &serde_json::Value, indent: usize) -> String {
    let inline = match v {
        serde_json::Value::Object(m) => m.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        _ => true,
    };
    if inline {
        return format!(
            " {}",
            serde_json::to_string(v).unwrap_or_else(|_| "null".into())
        );
    }
    let text = serde_yaml::to_string(v).unwrap_or_default();
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for line in text.lines() {
        out.push('\n');
        out.push_str(&pad);
        out.push_str(line);
    }
    out
}

impl Catalog {
    /// The catalog embedded in the binary (this repository's `workflows/` and `templates/`).
    ///
    /// Errors: only if the embedded files are inconsistent, which the test suite rules out.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        Self::from_files(
            EMBEDDED
                .iter()
                .map(|(p, c)| (p.to_string(), c.to_string()))
                .collect(),
        )
    }

    /// Builds a catalog from `(path, contents)` pairs where paths start with `workflows/` or
    /// `templates/`.
    ///
    /// Errors: [`CatalogError::Workflow`] for invalid workflow YAML (unknown keys or step kinds,
    /// duplicate step ids, manifests on a step that does not apply them, a `kube.apply` step
    /// without manifests), [`CatalogError::Template`] for templates that do not compile,
    /// [`CatalogError::MissingTemplate`] for dangling references.
    pub fn from_files(files: Vec<(String, String)>) -> Result<Catalog, CatalogError> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        hb.register_helper("json", Box::new(json_helper));
        hb.register_helper("toYaml", Box::new(yaml_helper));
        let mut workflows = BTreeMap::new();
        for (path, text) in &files {
            if let Some(name) = path.strip_prefix("templates/") {
                hb.register_template_string(name, text)
                    .map_err(|e| CatalogError::Template {
                        name: name.to_string(),
                        message: e.to_string(),
                    })?;
            } else if path.starts_with("workflows/")
                && (path.ends_with(".yaml") || path.ends_with(".yml"))
            {
                let wf: Workflow =
                    serde_yaml::from_str(text).map_err(|e| CatalogError::Workflow {
                        file: path.clone(),
                        message: e.to_string(),
                    })?;
                workflows.insert(wf.name.clone(), wf);
            }
        }
        for wf in workflows.values() {
            let mut ids = std::collections::BTreeSet::new();
            for step in &wf.steps {
                let problem = if !ids.insert(step.id.as_str()) {
                    Some(format!("duplicate step id {}", step.id))
                } else if RENDERS_MANIFESTS.contains(&step.kind) && step.manifests.is_empty() {
                    Some(format!("step {}: {} needs manifests", step.id, step.kind))
                } else if !RENDERS_MANIFESTS.contains(&step.kind) && !step.manifests.is_empty() {
                    Some(format!(
                        "step {}: {} does not apply manifests",
                        step.id, step.kind
                    ))
                } else {
                    None
                };
                if let Some(message) = problem {
                    return Err(CatalogError::Workflow {
                        file: format!("workflows/{}.yaml", wf.name),
                        message,
                    });
                }
                for t in &step.manifests {
                    if !hb.has_template(t) {
                        return Err(CatalogError::MissingTemplate {
                            workflow: wf.name.clone(),
                            step: step.id.clone(),
                            template: t.clone(),
                        });
                    }
                }
            }
        }
        Ok(Catalog { workflows, hb })
    }

    /// The workflow serving `intent` (`create`, `upgrade`, …), if the catalog has one.
    pub fn workflow_for_intent(&self, intent: &str) -> Option<&Workflow> {
        self.workflows.values().find(|w| w.intent == intent)
    }

    /// The workflow named `name`.
    pub fn workflow(&self, name: &str) -> Option<&Workflow> {
        self.workflows.get(name)
    }

    /// Every workflow, by name.
    pub fn workflows(&self) -> impl Iterator<Item = &Workflow> {
        self.workflows.values()
    }

    /// The names of every registered template (paths below `templates/`), sorted.
    pub fn template_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.hb.get_templates().keys().cloned().collect();
        names.sort();
        names
    }

    /// Renders the template `name` (path below `templates/`) with `data`, in strict mode.
    ///
    /// Errors: [`CatalogError::Render`] naming the template and, when handlebars knows it, the
    /// line: an unknown template, a field missing from `data`, a helper failure.
    pub fn render(&self, name: &str, data: &serde_json::Value) -> Result<String, CatalogError> {
        self.hb
            .render(name, data)
            .map_err(|e| CatalogError::Render {
                name: e.template_name.clone().unwrap_or_else(|| name.to_string()),
                line: e.line_no,
                message: e.reason().to_string(),
            })
    }
}

//! The sticky PR comment: the plan before merge, the live step table after merge, the final
//! summary when runs end. Pure: view models are built here, layout lives in
//! `templates/comments/*.md.hbs`.
//!
//! The comment starts with the hidden [`STICKY_MARKER`] so the bot finds and edits it instead of
//! posting a new one (Flux notification-controller style marker-keyed upsert).

use serde::Serialize;
use serde_json::{json, Value};

use super::catalog::Catalog;
use super::plan::{Plan, PlanStatus};
use crate::request::Severity;

/// Hidden HTML comment identifying tkgops's sticky comment on a pull request.
pub const STICKY_MARKER: &str = "<!-- tkgops:sticky -->";

/// Version string shown in comment footers.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn short(sha: &str) -> String {
    sha.chars().take(7).collect()
}

/// Formats a duration in seconds as `1h 2m 3s`, omitting zero parts (`5m`, `45s`, `0s`).
pub fn format_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let parts: Vec<String> = [(h, "h"), (m, "m"), (s, "s")]
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, u)| format!("{v}{u}"))
        .collect();
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}

/// Escapes text for a Markdown table cell (pipes, newlines) and caps it at `max` characters.
pub fn cell(text: &str, max: usize) -> String {
    let mut t: String = text.replace('|', "\\|").replace(['\n', '\r'], " ");
    if t.chars().count() > max {
        t = t.chars().take(max).collect::<String>() + "…";
    }
    t
}

fn status_label(s: PlanStatus) -> &'static str {
    match s {
        PlanStatus::Ready => "✅ runs after merge",
        PlanStatus::Blocked => "❌ blocked by errors",
        PlanStatus::NotYetExecutable => "⏸️ planned, not yet executable",
        PlanStatus::NoAction => "➖ no action",
    }
}

/// Renders the plan comment. `with_marker` is false when the plan is embedded in the run comment.
///
/// Errors: a rendering error message (only possible with a broken operator-supplied template).
pub fn render_plan(plan: &Plan, catalog: &Catalog, with_marker: bool) -> Result<String, String> {
    let findings: Vec<Value> = plan
        .all_findings()
        .into_iter()
        .map(|f| {
            json!({
                "icon": if f.severity == Severity::Error { "❌" } else { "⚠️" },
                "location": match f.line { Some(l) => format!("{}:{}", f.path, l), None => f.path.clone() },
                "rule": f.rule,
                "severity": f.severity.to_string(),
                "message": f.message.replace('\n', " "),
            })
        })
        .collect();
    let error_count = plan
        .all_findings()
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let clusters: Vec<Value> = plan
        .clusters
        .iter()
        .map(|c| {
            let steps: Vec<Value> = c
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut inputs = s.inputs.inputs_json();
                    if let Some(o) = inputs.as_object_mut() {
                        if o.contains_key("manifests") {
                            o.insert("manifests".into(), Value::String("(rendered below)".into()));
                        }
                    }
                    let pretty = serde_json::to_string_pretty(&inputs).unwrap_or_default();
                    json!({
                        "number": i + 1,
                        "title": s.title,
                        "kind": s.kind().as_str(),
                        "timeout": format_duration(s.timeout_secs),
                        "attempts": s.retry.max_attempts,
                        "inputs": pretty.lines().map(|l| format!("   {l}")).collect::<Vec<_>>().join("\n"),
                    })
                })
                .collect();
            json!({
                "cluster": c.cluster,
                "intent": c.intent.label(),
                "workflow": c.workflow.clone().unwrap_or_else(|| "-".into()),
                "status": status_label(c.status),
                "note": c.note,
                "steps": steps,
                "manifests": c.manifests,
                "impact": c.impact.as_ref().map(impact_view),
            })
        })
        .collect();
    let data = json!({
        "marker": if with_marker { STICKY_MARKER } else { "" },
        "headShort": short(&plan.head_sha),
        "baseShort": short(&plan.base_sha),
        "clusters": clusters,
        "notes": plan.notes,
        "findings": findings,
        "errorCount": error_count,
        "warningCount": findings.len() - error_count,
        "version": VERSION,
    });
    catalog
        .render("comments/plan.md.hbs", &data)
        .map_err(|e| e.to_string())
}

/// The machine table of an upgrade or resize: one row per group (control plane, each
/// MachineDeployment) with replicas and instance types before → after and the machines replaced,
/// plus the totals and the estimate.
fn impact_view(i: &super::impact::Impact) -> Value {
    let arrow = |from: Option<String>, to: String| match from {
        Some(f) if f != to => format!("{f} → {to}"),
        _ => to,
    };
    let rows: Vec<Value> = i
        .groups
        .iter()
        .map(|g| {
            json!({
                "name": g.name,
                "az": g.az.clone().unwrap_or_else(|| "all".into()),
                "replicas": arrow(g.replicas_from.map(|r| r.to_string()), g.replicas_to.to_string()),
                "instanceType": arrow(g.instance_type_from.clone(), g.instance_type_to.clone()),
                "replaced": if g.replaced > 0 {
                    format!("{} ({})", g.replaced, g.because.join(", "))
                } else {
                    "0".into()
                },
            })
        })
        .collect();
    json!({
        "rows": rows,
        "nodesReplaced": i.nodes_replaced,
        "estimate": format_duration(i.estimate_secs),
        "basis": i.estimate_basis,
    })
}

/// One row of the live step table.
#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    /// 1-based position.
    pub number: usize,
    /// Step title.
    pub title: String,
    /// State with its icon (e.g. `✅ succeeded`).
    pub state: String,
    /// Wall time of the step so far (`2m 3s`), empty when not started.
    pub duration: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Error of a failed step, or the latest progress line of a running one (table-cell safe).
    pub detail: String,
}

/// One run in the live comment.
#[derive(Clone, Debug, Serialize)]
pub struct RunView {
    /// Cluster name.
    pub cluster: String,
    /// Workflow name.
    pub workflow: String,
    /// Run state with its icon.
    pub state: String,
    /// Step rows.
    pub steps: Vec<StepRow>,
    /// Final summary line once the run has ended, else empty.
    pub summary: String,
}

/// A cluster of the merge commit's plan that is not run (blocked, not yet executable, no action).
#[derive(Clone, Debug, Serialize)]
pub struct NotRunView {
    /// Cluster name.
    pub cluster: String,
    /// Intent label.
    pub intent: String,
    /// Why it does not run.
    pub reason: String,
}

/// Renders the run comment for a merge commit: one step table per run, the clusters that are
/// not run, and the merge commit's plan collapsed.
///
/// Errors: a rendering error message (only possible with a broken operator-supplied template).
pub fn render_runs(
    commit_sha: &str,
    overall: &str,
    runs: &[RunView],
    not_run: &[NotRunView],
    plan_markdown: Option<&str>,
    catalog: &Catalog,
) -> Result<String, String> {
    let data = json!({
        "marker": STICKY_MARKER,
        "commitShort": short(commit_sha),
        "overall": overall,
        "runs": runs,
        "notRun": not_run,
        "plan": plan_markdown,
        "version": VERSION,
    });
    catalog
        .render("comments/run.md.hbs", &data)
        .map_err(|e| e.to_string())
}

/// Replaces every occurrence of each secret value (at least 4 characters long) by
/// `<redacted>`: the bot's last line of defence before text reaches a comment, a status or a
/// log line (security rule 5; `tkgops::redact` applies it to every one of them).
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "<redacted>");
    }
    out
}

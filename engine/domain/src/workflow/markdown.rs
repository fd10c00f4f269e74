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

/// Characters a plan comment may have with every cluster's details inline; above it the
/// details go into one comment per cluster ([`render_plan_details`]). GitHub refuses comment
/// bodies over 65,536 characters; this leaves room for the footer and a later edit.
pub const INLINE_PLAN_LIMIT: usize = 60_000;

/// At most this many findings are listed in a summary whose details are split out (errors
/// first); the rest are in the clusters' details comments.
pub const SUMMARY_FINDINGS: usize = 50;

/// The hidden marker of the details comment of `cluster` (its own marker-keyed upsert).
pub fn detail_marker(cluster: &str) -> String {
    format!("<!-- tkgops:plan-details:{cluster} -->")
}

fn finding_view(f: &crate::request::Finding) -> Value {
    json!({
        "icon": if f.severity == Severity::Error { "❌" } else { "⚠️" },
        "location": match f.line { Some(l) => format!("{}:{}", f.path, l), None => f.path.clone() },
        "rule": f.rule,
        "severity": f.severity.to_string(),
        "message": f.message.replace('\n', " "),
    })
}

/// The change word of the summary table (the TKR column says from → to).
fn change_word(i: &super::plan::IntentKind) -> String {
    use super::plan::IntentKind as I;
    match i {
        I::Upgrade { .. } => "upgrade".into(),
        I::Resize => "resize".into(),
        I::RolloutPackages => "packages".into(),
        other => other.label(),
    }
}

/// The summary row of one cluster plan.
fn summary_row(c: &super::plan::ClusterPlan) -> Value {
    let s = c.summary.clone().unwrap_or_default();
    let show = |ch: &super::summary::Change| {
        if ch.from.is_none() && ch.to.is_none() {
            "–".to_string()
        } else {
            cell(&ch.display(), 120)
        }
    };
    let replaced = c
        .impact
        .as_ref()
        .map(|i| i.nodes_replaced.to_string())
        .unwrap_or_else(|| "–".into());
    json!({
        "cluster": c.cluster,
        "intent": change_word(&c.intent),
        "tkr": show(&s.tkr),
        "controlPlane": show(&s.control_plane),
        "workers": show(&s.workers),
        "replaced": replaced,
        "tmcGroup": show(&s.tmc_group),
        "packages": if s.packages.is_empty() { "–".to_string() } else { cell(&s.packages.join(", "), 200) },
        "status": status_label(c.status),
    })
}

/// The details of one cluster plan (note, machine table, steps with inputs, manifests) through
/// `comments/plan-cluster.md.hbs`; as its own comment when `head` is given (with its marker
/// and findings), else as a section of the plan comment.
fn render_cluster_details(
    c: &super::plan::ClusterPlan,
    head: Option<&str>,
    catalog: &Catalog,
) -> Result<String, String> {
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
    let data = json!({
        "marker": head.map(|_| detail_marker(&c.cluster)),
        "headShort": head.map(short),
        "cluster": c.cluster,
        "workflow": c.workflow.clone().unwrap_or_else(|| "-".into()),
        "note": c.note,
        "findings": c.findings.iter().map(finding_view).collect::<Vec<_>>(),
        "stepCount": steps.len(),
        "steps": steps,
        "manifests": c.manifests,
        "impact": c.impact.as_ref().map(impact_view),
        "diffs": c.diffs,
    });
    catalog
        .render("comments/plan-cluster.md.hbs", &data)
        .map_err(|e| e.to_string())
}

/// Renders the plan comment with every cluster's details inline: the summary table (one row
/// per cluster: change, TKR, control plane, workers, nodes replaced, TMC group, packages,
/// status), the notes, every finding, then per cluster its machine table and, collapsed, its
/// steps, inputs and manifests. `with_marker` is false when the plan is embedded in the run
/// comment.
///
/// Errors: a rendering error message (only possible with a broken operator-supplied template).
pub fn render_plan(plan: &Plan, catalog: &Catalog, with_marker: bool) -> Result<String, String> {
    let details = plan
        .clusters
        .iter()
        .filter(|c| !c.steps.is_empty())
        .map(|c| render_cluster_details(c, None, catalog))
        .collect::<Result<Vec<_>, _>>()?;
    render_summary(plan, catalog, with_marker, details, None)
}

fn render_summary(
    plan: &Plan,
    catalog: &Catalog,
    with_marker: bool,
    details: Vec<String>,
    links: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<String, String> {
    let all = plan.all_findings();
    let error_count = all.iter().filter(|f| f.severity == Severity::Error).count();
    let mut shown: Vec<&crate::request::Finding> = all.to_vec();
    let mut more = 0;
    if links.is_some() && shown.len() > SUMMARY_FINDINGS {
        shown.sort_by_key(|f| f.severity != Severity::Error);
        more = shown.len() - SUMMARY_FINDINGS;
        shown.truncate(SUMMARY_FINDINGS);
    }
    let links: Vec<Value> = links
        .map(|l| {
            plan.clusters
                .iter()
                .filter_map(|c| {
                    l.get(&c.cluster)
                        .map(|a| json!({"cluster": c.cluster, "anchor": a}))
                })
                .collect()
        })
        .unwrap_or_default();
    let data = json!({
        "marker": if with_marker { STICKY_MARKER } else { "" },
        "headShort": short(&plan.head_sha),
        "baseShort": short(&plan.base_sha),
        "clusters": plan.clusters.iter().map(summary_row).collect::<Vec<_>>(),
        "notes": plan.notes,
        "findings": shown.into_iter().map(finding_view).collect::<Vec<_>>(),
        "findingsMore": more,
        "errorCount": error_count,
        "warningCount": all.len() - error_count,
        "links": links,
        "details": details,
        "version": VERSION,
    });
    catalog
        .render("comments/plan.md.hbs", &data)
        .map_err(|e| e.to_string())
}

/// One details comment of a split plan ([`render_plan_details`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetailComment {
    /// The cluster it details.
    pub cluster: String,
    /// Its marker ([`detail_marker`]).
    pub marker: String,
    /// Its body (marker first).
    pub body: String,
}

/// The details comments of a plan too large for one comment: one per cluster with steps, each
/// with its own marker, its findings, machine table, steps, inputs and manifests.
///
/// Errors: a rendering error message (only possible with a broken operator-supplied template).
pub fn render_plan_details(plan: &Plan, catalog: &Catalog) -> Result<Vec<DetailComment>, String> {
    plan.clusters
        .iter()
        .filter(|c| !c.steps.is_empty() || !c.findings.is_empty())
        .map(|c| {
            Ok(DetailComment {
                cluster: c.cluster.clone(),
                marker: detail_marker(&c.cluster),
                body: render_cluster_details(c, Some(&plan.head_sha), catalog)?,
            })
        })
        .collect()
}

/// The summary comment of a split plan: the summary table, the notes, at most
/// [`SUMMARY_FINDINGS`] findings (errors first) and one link per cluster to its details
/// comment (`anchors`: cluster → link, e.g. `#issuecomment-123`). Its size grows with the
/// number of clusters only (about 300 characters each), so a grouped pull request of hundreds
/// of clusters stays within GitHub's 65,536 characters.
///
/// Errors: a rendering error message (only possible with a broken operator-supplied template).
pub fn render_plan_summary(
    plan: &Plan,
    catalog: &Catalog,
    anchors: &std::collections::BTreeMap<String, String>,
) -> Result<String, String> {
    render_summary(plan, catalog, true, Vec::new(), Some(anchors))
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
    /// Whether the run succeeded: beyond [`FULL_RUN_TABLES`] runs, succeeded runs are listed by
    /// cluster name only.
    #[serde(skip)]
    pub succeeded: bool,
    /// Whether the run failed or was cancelled: failed runs get their step tables first.
    #[serde(skip)]
    pub failed: bool,
}

/// Runs of one run comment shown with their step tables. Beyond it (a scheduled apply's wave
/// over a fleet), succeeded runs are listed by cluster name only, and the runs past the first
/// `FULL_RUN_TABLES` failed or unfinished ones show their state line without the table, so the
/// comment stays inside GitHub's 65,536 characters.
pub const FULL_RUN_TABLES: usize = 20;

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

/// The head of a run comment ([`render_runs`]).
#[derive(Clone, Copy, Debug)]
pub struct RunHeader<'a> {
    /// The hidden marker the comment is keyed by: the pull request's [`STICKY_MARKER`], or a
    /// comment of its own such as a scheduled apply's wave.
    pub marker: &'a str,
    /// The merge commit the runs are pinned to.
    pub commit_sha: &'a str,
    /// The overall state line (e.g. `⏳ running`).
    pub overall: &'a str,
    /// Notes quoted under the header: how the merge entered the default branch, the policy
    /// chain, changes a re-plan left out.
    pub notes: &'a [String],
}

/// Renders the run comment for a merge commit, keyed by the hidden `marker` (the pull request's
/// [`STICKY_MARKER`], or a comment of its own such as a scheduled apply's wave): one step table
/// per run (beyond [`FULL_RUN_TABLES`] runs, succeeded ones by name only), the clusters that are
/// not run, and the merge commit's plan collapsed.
///
/// Errors: a rendering error message (only possible with a broken operator-supplied template).
pub fn render_runs(
    header: &RunHeader<'_>,
    runs: &[RunView],
    not_run: &[NotRunView],
    plan_markdown: Option<&str>,
    catalog: &Catalog,
) -> Result<String, String> {
    let (shown, succeeded): (Vec<RunView>, Vec<&str>) = if runs.len() > FULL_RUN_TABLES {
        let mut others: Vec<RunView> = runs.iter().filter(|r| !r.succeeded).cloned().collect();
        // Stable: failed runs first, each group in the order given.
        others.sort_by_key(|r| !r.failed);
        for r in others.iter_mut().skip(FULL_RUN_TABLES) {
            r.steps.clear();
        }
        let done = runs
            .iter()
            .filter(|r| r.succeeded)
            .map(|r| r.cluster.as_str())
            .collect();
        (others, done)
    } else {
        (runs.to_vec(), Vec::new())
    };
    let RunHeader {
        marker,
        commit_sha,
        overall,
        notes,
    } = *header;
    let data = json!({
        "marker": marker,
        "commitShort": short(commit_sha),
        "overall": overall,
        "notes": notes,
        "runs": shown,
        "succeeded": succeeded,
        "succeededCount": succeeded.len(),
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

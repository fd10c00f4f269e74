//! The output formats of `tkgops validate --format`: `text` (one line per finding, the
//! default), `json` (one document: the findings and a summary) and `sarif` (SARIF 2.1.0, as
//! GitHub code scanning reads it). The exit code does not depend on the format.

use std::path::Path;

use serde_json::{json, Value};
use tkgops_domain::request::{Finding, Severity, ValidateReport, RULES};

/// An output format of `tkgops validate`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `path:line: RULE severity: message`, one line per finding.
    #[default]
    Text,
    /// One JSON document: `findings` and `summary`.
    Json,
    /// A SARIF 2.1.0 log (GitHub code scanning, `github/codeql-action/upload-sarif`).
    Sarif,
}

/// The URI of the SARIF 2.1.0 schema written into `$schema`.
pub const SARIF_SCHEMA_URI: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// `report` in `format`, ending with a newline (nothing for `text` without findings).
/// `version` is the tool version SARIF names; `cwd` makes absolute paths relative in SARIF.
pub fn render(report: &ValidateReport, format: Format, version: &str, cwd: &Path) -> String {
    match format {
        Format::Text => report.findings.iter().map(|f| format!("{f}\n")).collect(),
        Format::Json => pretty(&json_report(report)),
        Format::Sarif => pretty(&sarif_report(report, version, cwd)),
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON serializes");
    s.push('\n');
    s
}

/// The summary of a rule ID from [`RULES`], if it is one of them.
pub fn rule_summary(rule: &str) -> Option<&'static str> {
    RULES.iter().find(|(id, _, _)| *id == rule).map(|r| r.2)
}

fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// The `--format json` document: `findings` (path, line, rule, severity, message, help: the
/// rule's summary) and `summary` (errors, warnings, unreadable, exitCode).
pub fn json_report(report: &ValidateReport) -> Value {
    let findings: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            json!({
                "path": f.path,
                "line": f.line,
                "rule": f.rule,
                "severity": severity_str(f.severity),
                "message": f.message,
                "help": rule_summary(&f.rule),
            })
        })
        .collect();
    json!({
        "findings": findings,
        "summary": summary(report),
    })
}

fn summary(report: &ValidateReport) -> Value {
    let count = |s: Severity| report.findings.iter().filter(|f| f.severity == s).count();
    json!({
        "errors": count(Severity::Error),
        "warnings": count(Severity::Warning),
        "unreadable": report.unreadable,
        "exitCode": report.exit_code(),
    })
}

/// The `--format sarif` log: one run whose driver is tkgops with every rule of [`RULES`] (and
/// any other rule a finding names), one result per finding with its repository-relative file
/// and line (line 1 when the finding has none).
pub fn sarif_report(report: &ValidateReport, version: &str, cwd: &Path) -> Value {
    let mut rule_ids: Vec<&str> = RULES.iter().map(|r| r.0).collect();
    for f in &report.findings {
        if !rule_ids.contains(&f.rule.as_str()) {
            rule_ids.push(&f.rule);
        }
    }
    let rules: Vec<Value> = rule_ids
        .iter()
        .map(|id| {
            let known = RULES.iter().find(|r| r.0 == *id);
            let text = known.map(|r| r.2).unwrap_or(id);
            let level = known.map(|r| severity_str(r.1)).unwrap_or("error");
            json!({
                "id": id,
                "shortDescription": {"text": text},
                "help": {"text": format!("{id}: {text}. README.md \"Rules\" lists every rule.")},
                "defaultConfiguration": {"level": level},
            })
        })
        .collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| sarif_result(f, &rule_ids, cwd))
        .collect();
    json!({
        "$schema": SARIF_SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "tkgops",
                "version": version,
                "rules": rules,
            }},
            "results": results,
            "invocations": [{
                "executionSuccessful": !report.unreadable,
                "exitCode": report.exit_code(),
            }],
        }],
    })
}

fn sarif_result(f: &Finding, rule_ids: &[&str], cwd: &Path) -> Value {
    let index = rule_ids.iter().position(|r| *r == f.rule).unwrap_or(0);
    json!({
        "ruleId": f.rule,
        "ruleIndex": index,
        "level": severity_str(f.severity),
        "message": {"text": f.message},
        "locations": [{
            "physicalLocation": {
                "artifactLocation": {"uri": artifact_uri(&f.path, cwd)},
                "region": {"startLine": f.line.unwrap_or(1).max(1)},
            }
        }],
    })
}

/// `path` as a URI reference: relative to `cwd` when absolute under it (a `file://` URI when
/// absolute elsewhere), `/` separators, no leading `./`, characters outside RFC 3986's
/// unreserved set and `/` percent-encoded.
pub fn artifact_uri(path: &str, cwd: &Path) -> String {
    let p = Path::new(path);
    let rel = if p.is_absolute() {
        p.strip_prefix(cwd).unwrap_or(p)
    } else {
        p
    };
    let mut s = rel.to_string_lossy().replace('\\', "/");
    while let Some(rest) = s.strip_prefix("./") {
        s = rest.to_string();
    }
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if rel.is_absolute() {
        format!("file://{out}")
    } else {
        out
    }
}

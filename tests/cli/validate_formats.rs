//! `tkgops validate --format text|json|sarif`, the GitHub Action (`action.yml`) and the
//! pre-commit hooks (`.pre-commit-hooks.yaml`) that run it.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::{jsonschema, root, stdout, tkgops};

const SAMPLE: &str = "tests/fixtures/samples/01-tkg16-aws-mgmt-cluster-config.yaml";

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn validate_text_is_the_default_and_json_carries_the_same_findings() {
    let default = tkgops(&["validate", SAMPLE]);
    let text = tkgops(&["validate", "--format", "text", SAMPLE]);
    assert_eq!(stdout(&default), stdout(&text));
    assert_eq!(default.status.code(), Some(1));
    assert_eq!(text.status.code(), Some(1));

    let o = tkgops(&["validate", "--format", "json", SAMPLE]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the exit code does not depend on the format"
    );
    let v = json_of(&stdout(&o));
    let findings = v["findings"].as_array().unwrap();
    let lines: Vec<String> = stdout(&text).lines().map(str::to_string).collect();
    assert_eq!(findings.len(), lines.len(), "{v:#}");
    for (f, line) in findings.iter().zip(&lines) {
        let shown = match f["line"].as_u64() {
            Some(l) => format!(
                "{}:{l}: {} {}: {}",
                f["path"].as_str().unwrap(),
                f["rule"].as_str().unwrap(),
                f["severity"].as_str().unwrap(),
                f["message"].as_str().unwrap()
            ),
            None => format!(
                "{}: {} {}: {}",
                f["path"].as_str().unwrap(),
                f["rule"].as_str().unwrap(),
                f["severity"].as_str().unwrap(),
                f["message"].as_str().unwrap()
            ),
        };
        assert_eq!(&shown, line);
    }
    let plan = findings
        .iter()
        .find(|f| f["rule"] == "TKO-CLS-004")
        .expect("TKO-CLS-004");
    assert_eq!(plan["path"], SAMPLE);
    assert!(plan["line"].as_u64().is_some_and(|l| l > 0), "{plan}");
    assert!(
        plan["help"].as_str().is_some_and(|h| h.contains("prod")),
        "the rule's summary: {plan}"
    );
    let errors = findings.iter().filter(|f| f["severity"] == "error").count();
    let warnings = findings
        .iter()
        .filter(|f| f["severity"] == "warning")
        .count();
    assert!(errors > 0 && warnings > 0, "{v:#}");
    assert_eq!(v["summary"]["errors"], errors);
    assert_eq!(v["summary"]["warnings"], warnings);
    assert_eq!(v["summary"]["exitCode"], 1);
    assert_eq!(v["summary"]["unreadable"], false);

    let o = tkgops(&[
        "validate",
        "--format",
        "json",
        "examples/requests/team-a-prod/cluster-config.yaml",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(json_of(&stdout(&o))["summary"]["exitCode"], 0);
    let o = tkgops(&["validate", "--format", "json", "does/not/exist.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let v = json_of(&stdout(&o));
    assert_eq!(v["summary"]["unreadable"], true);
    assert_eq!(v["findings"][0]["rule"], "TKGOPS-IO");
    assert_eq!(v["findings"][0]["line"], Value::Null);
}

fn sarif_schema() -> std::path::PathBuf {
    root().join("tests/fixtures/sarif/sarif-schema-2.1.0.json")
}

#[test]
fn validate_sarif_follows_the_sarif_schema_as_code_scanning_reads_it() {
    // An absolute path under the working directory becomes repository-relative.
    let abs = root().canonicalize().unwrap().join(SAMPLE);
    let o = tkgops(&[
        "validate",
        "--format",
        "sarif",
        abs.to_str().unwrap(),
        "does/not/exist.yaml",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let log = json_of(&stdout(&o));
    assert_eq!(
        jsonschema::errors(&sarif_schema(), &log),
        Vec::<String>::new()
    );
    assert_eq!(log["version"], "2.1.0");
    let run = &log["runs"][0];
    let driver = &run["tool"]["driver"];
    assert_eq!(driver["name"], "tkgops");
    assert_eq!(driver["version"], env!("CARGO_PKG_VERSION"));
    let rules = driver["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    for id in ["TKO-CLS-004", "TKGOPS-SECRET", "TKGOPS-IO"] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    for r in rules {
        assert!(
            r["shortDescription"]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty()),
            "{r}"
        );
    }
    let results = run["results"].as_array().unwrap();
    let json = json_of(&stdout(&tkgops(&["validate", "--format", "json", SAMPLE])));
    assert_eq!(
        results.len(),
        json["findings"].as_array().unwrap().len() + 1
    );
    for (r, f) in results.iter().zip(json["findings"].as_array().unwrap()) {
        assert_eq!(r["ruleId"], f["rule"]);
        assert_eq!(ids[r["ruleIndex"].as_u64().unwrap() as usize], r["ruleId"]);
        assert_eq!(r["level"], f["severity"]);
        assert_eq!(r["message"]["text"], f["message"]);
        let loc = &r["locations"][0]["physicalLocation"];
        assert_eq!(loc["artifactLocation"]["uri"], SAMPLE, "{r}");
        // A finding about the whole file is shown on its first line.
        assert_eq!(loc["region"]["startLine"], f["line"].as_u64().unwrap_or(1));
    }
    let missing = results.last().unwrap();
    assert_eq!(missing["ruleId"], "TKGOPS-IO");
    assert_eq!(
        missing["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "does/not/exist.yaml"
    );
    assert_eq!(run["invocations"][0]["exitCode"], 2);

    // A clean repository: no results, still a valid log, exit 0.
    let o = tkgops(&[
        "validate",
        "--format",
        "sarif",
        "./examples/requests/team-a-prod/",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let log = json_of(&stdout(&o));
    assert_eq!(
        jsonschema::errors(&sarif_schema(), &log),
        Vec::<String>::new()
    );
    assert_eq!(log["runs"][0]["results"], serde_json::json!([]));
}

#[test]
fn the_sarif_schema_check_refuses_a_broken_log() {
    let o = tkgops(&["validate", "--format", "sarif", SAMPLE]);
    let mut log = json_of(&stdout(&o));
    log["runs"][0]["results"][0]["level"] = "fatal".into();
    log["runs"][0]["tool"]["driver"]
        .as_object_mut()
        .unwrap()
        .remove("name");
    let errors = jsonschema::errors(&sarif_schema(), &log);
    assert!(errors.len() >= 2, "{errors:#?}");
}

#[test]
fn artifact_uris_are_relative_and_percent_encoded() {
    use tkgops::validate_format::artifact_uri;
    let cwd = Path::new("/work/repo");
    assert_eq!(
        artifact_uri("./clusters/a/tkgops.yaml", cwd),
        "clusters/a/tkgops.yaml"
    );
    assert_eq!(
        artifact_uri("/work/repo/clusters/a b/x.yaml", cwd),
        "clusters/a%20b/x.yaml"
    );
    assert_eq!(
        artifact_uri("/elsewhere/x.yaml", cwd),
        "file:///elsewhere/x.yaml"
    );
}

fn yaml(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_github_action_runs_validate_as_sarif_and_uploads_it() {
    let action = yaml("action.yml");
    assert_eq!(action["runs"]["using"], "composite");
    let steps = action["runs"]["steps"].as_sequence().unwrap();
    let validate = steps
        .iter()
        .find(|s| s["id"] == "validate")
        .expect("a step with id validate");
    let script = validate["run"].as_str().unwrap();
    assert_eq!(
        script
            .matches("validate --format sarif \"$TKGOPS_PATH\" > \"$TKGOPS_SARIF\"")
            .count(),
        2,
        "the binary and the image run the same command: {script}"
    );
    assert!(script.contains("\"$TKGOPS_BINARY\" validate"), "{script}");
    assert!(script.contains("\"$TKGOPS_IMAGE\" validate"), "{script}");
    assert!(script.contains("exit-code=$code"), "{script}");
    let upload = steps
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("github/codeql-action/upload-sarif@"))
        })
        .expect("an upload-sarif step");
    assert_eq!(upload["with"]["sarif_file"], "${{ inputs.sarif-file }}");
    assert!(upload["if"].as_str().unwrap().contains("always()"));
    for input in [
        "path",
        "image",
        "binary",
        "sarif-file",
        "category",
        "fail-on-error",
    ] {
        assert!(
            action["inputs"][input]["description"].is_string(),
            "input {input}"
        );
    }
    // The inputs reach the script through the environment, never spliced into it.
    assert!(!script.contains("${{"), "{script}");
}

/// pre-commit matches `files` with Python's `re.search`: so do we, with the venv's Python.
fn python_matches(pattern: &str, path: &str) -> bool {
    let o = Command::new(jsonschema::python())
        .args([
            "-c",
            "import re, sys; sys.exit(0 if re.search(sys.argv[1], sys.argv[2]) else 1)",
        ])
        .args([pattern, path])
        .output()
        .unwrap();
    match o.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("{}", String::from_utf8_lossy(&o.stderr)),
    }
}

#[test]
fn the_pre_commit_hooks_run_validate_on_the_repository_files() {
    let hooks = yaml(".pre-commit-hooks.yaml");
    let hooks = hooks.as_sequence().unwrap();
    let ids: Vec<&str> = hooks.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tkgops-validate", "tkgops-validate-docker"]);
    for h in hooks {
        let entry = h["entry"].as_str().unwrap();
        match h["language"].as_str().unwrap() {
            "system" => assert_eq!(entry, "tkgops validate"),
            "docker_image" => {
                assert!(
                    entry.starts_with("--entrypoint /usr/local/bin/tkgops "),
                    "{entry}"
                );
                assert!(entry.ends_with(" validate"), "{entry}");
            }
            other => panic!("language {other}"),
        }
        assert_eq!(
            h["args"],
            serde_yaml::from_str::<serde_yaml::Value>("[.]").unwrap()
        );
        assert_eq!(h["pass_filenames"], false);
        let files = h["files"].as_str().unwrap();
        for path in [
            "tkgops.yaml",
            "clusters/team-a-prod/tkgops.yaml",
            "clusters/team-a-prod/cluster-config.yaml",
        ] {
            assert!(python_matches(files, path), "{files} misses {path}");
        }
        for path in [
            "README.md",
            "clusters/team-a-prod/notes.yaml",
            "clusters/a/b/tkgops.yaml",
            "docs/tkgops.yaml",
            "tkgops.yaml.bak",
        ] {
            assert!(!python_matches(files, path), "{files} matches {path}");
        }
    }
    // What the system hook runs, in a config repository: the example one passes.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    std::fs::copy(
        root().join("examples/config-repo/tkgops.yaml"),
        repo.join("tkgops.yaml"),
    )
    .unwrap();
    let cluster = repo.join("clusters/team-a-prod");
    std::fs::create_dir_all(&cluster).unwrap();
    for f in ["cluster-config.yaml", "tkgops.yaml"] {
        std::fs::copy(
            root().join("examples/requests/team-a-prod").join(f),
            cluster.join(f),
        )
        .unwrap();
    }
    let o = Command::new(env!("CARGO_BIN_EXE_tkgops"))
        .args(["validate", "."])
        .current_dir(repo)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

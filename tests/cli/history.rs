//! `tkgops runs list|show` and `tkgops journal export` on a journal no bot has open (a copy of
//! the version-1 fixture, `tests/fixtures/journal-v1`), and the global `--log-format`.

use std::path::Path;

use super::{root, stdout, tkgops};

/// A state directory holding a copy of the fixture journal as `journal/`.
fn state_dir() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(
        &root().join("tests/fixtures/journal-v1/db"),
        &dir.path().join("journal"),
    );
    dir
}

#[test]
fn runs_list_show_and_journal_export_read_a_closed_journal() {
    let dir = state_dir();
    let sd = dir.path().to_str().unwrap();

    let o = tkgops(&["runs", "list", "--state-dir", sd]);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "a header and five runs: {out}");
    assert!(
        lines[3].starts_with("b333-failed") && lines[3].contains("failed"),
        "{out}"
    );

    let o = tkgops(&[
        "runs",
        "list",
        "--state-dir",
        sd,
        "--cluster",
        "team-a",
        "--state",
        "succeeded",
        "--output",
        "json",
    ]);
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a111-old", "a222-new"]);

    let o = tkgops(&["runs", "show", "b333-failed", "--state-dir", sd]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    for part in [
        "origin     github:pr/3",
        "attempt 1: transient",
        "attempt 2: permanent",
        "error: subnet not found",
    ] {
        assert!(out.contains(part), "{part:?} in {out}");
    }
    let o = tkgops(&["runs", "show", "nope", "--state-dir", sd]);
    assert_eq!(o.status.code(), Some(1));

    let export = dir.path().join("export.jsonl");
    let o = tkgops(&[
        "journal",
        "export",
        "--state-dir",
        sd,
        "--output",
        export.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&export).unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    for line in text.lines() {
        let run: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            run["steps"].is_array() && run["commitSha"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn an_unknown_state_and_a_missing_source_are_refused() {
    let o = tkgops(&[
        "runs",
        "list",
        "--state-dir",
        "/nonexistent",
        "--state",
        "bogus",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = tkgops(&["runs", "list"]);
    assert_eq!(o.status.code(), Some(2));
    let o = tkgops(&["runs", "list", "--state-dir", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no journal"));
}

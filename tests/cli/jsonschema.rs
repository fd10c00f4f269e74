//! JSON Schema validation through Python's `jsonschema` (in `.venv`, installed by
//! `scripts/setup-venv.sh`): the validator the tests use for the schemas of `schemas/` and the
//! vendored SARIF 2.1.0 schema, so no Rust validator is built for them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Checks the schema itself (its metaschema picks the draft), then the instance read from
/// stdin; prints one `pointer: message` line per error and exits 1 when there are any.
const VALIDATE: &str = r#"
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
errors = sorted(cls(schema).iter_errors(json.load(sys.stdin)), key=lambda e: list(map(str, e.absolute_path)))
for e in errors:
    print("/" + "/".join(map(str, e.absolute_path)) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;

/// The venv's Python: `$TKGOPS_PYTHON`, else `.venv/bin/python`. Fails (not skips) with the
/// hint to run `scripts/setup-venv.sh` when it cannot import `jsonschema`.
pub fn python() -> PathBuf {
    let python = std::env::var_os("TKGOPS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import jsonschema: run scripts/setup-venv.sh (or set TKGOPS_PYTHON)",
        python.display()
    );
    python
}

/// The errors of `instance` against the schema in the file `schema` (empty: valid). Panics
/// when the schema itself is invalid or Python fails otherwise.
pub fn errors(schema: &Path, instance: &Value) -> Vec<String> {
    let mut child = Command::new(python())
        .args(["-c", VALIDATE])
        .arg(schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(instance.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    match out.status.code() {
        Some(0) => Vec::new(),
        Some(1) if !stdout.is_empty() => stdout.lines().map(str::to_string).collect(),
        _ => panic!(
            "validating against {}: {stdout}{}",
            schema.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A YAML file as the JSON value a YAML language server checks against a schema.
pub fn yaml_file_as_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

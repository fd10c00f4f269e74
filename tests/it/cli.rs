//! Integration tests of the `tkgops-sandbox` binary as a user runs it (`scripts/sandbox.sh`).

use std::process::{Command, Output};

use crate::support::root;

fn sandbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tkgops-sandbox"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running tkgops-sandbox")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn sandbox_tells_the_whole_story() {
    let o = sandbox(&["--exit"]);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "sandbox failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("tkgops/apply: success"), "{out}");
    assert!(
        out.contains("TMC cluster team-a-prod: phase READY, health HEALTHY"),
        "{out}"
    );
    assert!(
        out.contains("PackageInstall cert-manager/cert-manager: ReconcileSucceeded"),
        "{out}"
    );
}

#[test]
fn sandbox_with_an_invalid_request_stops_at_the_plan() {
    let o = sandbox(&[
        "--exit",
        "--request",
        "tests/fixtures/samples/01-tkg16-aws-mgmt-cluster-config.yaml",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("tkgops/plan: failure"), "{out}");
    assert!(
        out.contains("TKO-CLS-004"),
        "the rule is named on the PR: {out}"
    );
    assert!(out.contains("nothing is merged or executed"), "{out}");
}

#[test]
fn sandbox_with_a_valid_prod_request_succeeds() {
    let o = sandbox(&[
        "--exit",
        "--request",
        "examples/requests/team-a-prod/cluster-config.yaml",
    ]);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("tkgops/apply: success"), "{out}");
}

//! Integration tests of the `tkgops` binary as a user runs it: `validate` and `plan`.

use std::path::PathBuf;
use std::process::{Command, Output};

use tkgops_emulators::git_remote::{commit_on_branch, init_remote};

/// The repository root.
fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn tkgops(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tkgops"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running tkgops")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn validate_sample_01_reports_dev_plan_and_missing_identity_management() {
    let o = tkgops(&[
        "validate",
        "tests/fixtures/samples/01-tkg16-aws-mgmt-cluster-config.yaml",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let plan_line = out
        .lines()
        .find(|l| l.contains("TKO-CLS-004"))
        .unwrap_or_else(|| panic!("no TKO-CLS-004 in {out}"));
    assert!(
        plan_line.starts_with("tests/fixtures/samples/01-tkg16-aws-mgmt-cluster-config.yaml:"),
        "{plan_line}"
    );
    assert!(out.contains("TKO-CLS-006"), "{out}");
}

#[test]
fn validate_sample_02_rejects_vsphere() {
    let o = tkgops(&[
        "validate",
        "tests/fixtures/samples/02-tkg16-airgap-shared-services-config-vsphere.yaml",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("TKGOPS-PROVIDER"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("vsphere") && line.contains("not supported"),
        "{line}"
    );
    assert!(!out.contains("Vk13YXJlMSE"), "a secret value leaked: {out}");
}

#[test]
fn validate_the_example_request_passes_and_unreadable_input_exits_2() {
    let o = tkgops(&[
        "validate",
        "examples/requests/team-a-prod/cluster-config.yaml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = tkgops(&["validate", "does/not/exist.yaml"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn plan_command_prints_the_comment_for_a_local_repository() {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("repo.git");
    let repo_cfg =
        std::fs::read_to_string(root().join("examples/config-repo/tkgops.yaml")).unwrap();
    init_remote(&remote, &[("tkgops.yaml", repo_cfg.as_str())]).unwrap();
    let cfg =
        std::fs::read_to_string(root().join("examples/requests/team-a-prod/cluster-config.yaml"))
            .unwrap();
    let settings =
        std::fs::read_to_string(root().join("examples/requests/team-a-prod/tkgops.yaml")).unwrap();
    commit_on_branch(
        &remote,
        "main",
        "add",
        "Add team-a-prod",
        &[
            ("clusters/team-a-prod/cluster-config.yaml", cfg.as_str()),
            ("clusters/team-a-prod/tkgops.yaml", settings.as_str()),
        ],
    )
    .unwrap();
    let o = tkgops(&[
        "plan",
        "--repo",
        remote.to_str().unwrap(),
        "--base",
        "main",
        "--head",
        "add",
    ]);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("<!-- tkgops:sticky -->"));
    assert!(
        out.contains("`team-a-prod` | create | create-cluster | ✅ runs after merge"),
        "{out}"
    );
    assert!(out.contains("kind: Cluster"));
    assert!(!out.contains("example-bind-password"));
}

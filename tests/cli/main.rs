//! Integration tests of the `tkgops` binary as a user runs it: `validate` and `plan`.

use std::path::PathBuf;
use std::process::{Command, Output};

use tkgops_emulators::git_remote::{commit_on_branch, init_remote};

mod history;
mod jsonschema;
mod schemas;
mod validate_formats;

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
fn validate_sample_01_reports_dev_plan_and_ignored_identity_settings() {
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
    // Identity settings are the management cluster's in TKG 2.x (docs/tkg2-class-based.md §7).
    assert!(out.contains("TKGOPS-IGNORED"), "{out}");
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
    let policy = std::fs::read_to_string(root().join("examples/config-repo/tkgops.yaml")).unwrap();
    let remote = example_repo(dir.path(), "repo.git", &policy);
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
        out.contains("| `team-a-prod` | create | v1.25.7+vmware.2-tkg.1 | 3 × m5.xlarge |")
            && out.contains("| ✅ runs after merge |")
            && out.contains("#### `team-a-prod`: create-cluster"),
        "{out}"
    );
    assert!(out.contains("kind: Cluster"));
    assert!(!out.contains("example-bind-password"));
}

/// A local config repository whose default branch `main` holds `policy` and whose branch `add`
/// adds the example request.
fn example_repo(dir: &std::path::Path, name: &str, policy: &str) -> PathBuf {
    let remote = dir.join(name);
    init_remote(&remote, &[("tkgops.yaml", policy)]).unwrap();
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
    remote
}

/// `tkgops plan --server-dry-run --kubeconfig FILE`: the planned Cluster is judged by a (here:
/// emulated TKG 2.2) management cluster's preflight and admission, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_server_dry_run_asks_the_management_cluster_and_writes_nothing() {
    use tkgops_emulators::kube::controllers::{seed_management_cluster_with, ManagementSeed};
    use tkgops_emulators::kube::KubeEmulator;

    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::read_to_string(root().join("examples/config-repo/tkgops.yaml")).unwrap();
    let good = example_repo(dir.path(), "good.git", &policy);
    // A policy naming a ClusterClass the management cluster does not have.
    let wrong_class = policy.replace(
        "    tkgVersion: \"2.2\"\n",
        "    tkgVersion: \"2.2\"\n    clusterClass: tkg-aws-default-v9.9.9\n",
    );
    assert_ne!(wrong_class, policy);
    let bad = example_repo(dir.path(), "bad.git", &wrong_class);
    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster("mc-aws-1").await.unwrap();
    seed_management_cluster_with(
        &mgmt,
        &ManagementSeed {
            pinniped_issuer: Some("https://pinniped.example".into()),
            ..ManagementSeed::default()
        },
    )
    .unwrap();
    let kubeconfig = dir.path().join("mc.kubeconfig");
    std::fs::write(&kubeconfig, mgmt.kubeconfig_yaml()).unwrap();
    let run = |remote: PathBuf| {
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            tkgops(&[
                "plan",
                "--repo",
                remote.to_str().unwrap(),
                "--base",
                "main",
                "--head",
                "add",
                "--server-dry-run",
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
            ])
        })
    };
    let o = run(good).await.unwrap();
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("team-a-prod: preflight passed"), "{out}");
    assert!(
        out.contains("team-a-prod: server-side dry run accepted: Cluster/default/team-a-prod"),
        "{out}"
    );
    let o = run(bad).await.unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("team-a-prod: REFUSED: ClusterClass tkg-aws-default-v9.9.9 does not exist in namespace default"),
        "{out}"
    );
    assert!(
        out.contains("ClusterClass tkg-aws-default-v9.9.9 can not be retrieved"),
        "the defaulting webhook's own message: {out}"
    );
    let clusters = tkgops_emulators::kube::Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    assert!(mgmt
        .get(&clusters, Some("default"), "team-a-prod")
        .is_none());
    assert!(mgmt.writes().iter().all(|w| w.dry_run));
}

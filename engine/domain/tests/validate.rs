//! Validation of cluster requests: the config repository format (cluster-config.yaml, the
//! cluster's and the repository's tkgops.yaml), the reference-design rules with their lines,
//! secrets kept out of findings, and `validate_paths` over files and repository layouts on
//! disk (`tests/fixtures/`). Domain only: the files are read through [`LocalFiles`] below.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use tkgops_domain::files::{FileKind, Files};
use tkgops_domain::request::*;

use common::fixture;

/// [`Files`] over the local filesystem, as the bot's `tkgops::local::LocalFiles` reads the
/// paths given to `tkgops validate` (symbolic links followed); `tests/cli` runs that one.
struct LocalFiles;

impl Files for LocalFiles {
    fn kind(&self, path: &Path) -> FileKind {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => FileKind::File { len: m.len() },
            Ok(m) if m.is_dir() => FileKind::Dir,
            Ok(_) => FileKind::Other,
            Err(_) => FileKind::Missing,
        }
    }

    fn read(&self, path: &Path, limit: usize) -> Result<Vec<u8>, String> {
        let mut buf = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(limit as u64).read_to_end(&mut buf))
            .map_err(|e| e.to_string())?;
        Ok(buf)
    }

    fn list(&self, path: &Path) -> Result<Vec<PathBuf>, String> {
        std::fs::read_dir(path)
            .map_err(|e| e.to_string())?
            .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
            .collect()
    }

    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }
}

fn read(p: &str) -> String {
    std::fs::read_to_string(fixture(p)).expect("fixture")
}

const CFG_PATH: &str = "clusters/team-a-prod/cluster-config.yaml";
const SETTINGS_PATH: &str = "clusters/team-a-prod/tkgops.yaml";

fn valid_text() -> String {
    read("valid-prod/cluster-config.yaml")
}

fn cfg(text: &str) -> TkgConfig {
    parse_tkg_config(CFG_PATH, text.as_bytes()).expect("config parses")
}

fn settings_text() -> String {
    read("valid-prod/tkgops.yaml")
}

fn settings(text: &str) -> ClusterSettings {
    parse_cluster_settings(SETTINGS_PATH, text.as_bytes()).expect("settings parse")
}

fn repo_text() -> String {
    read("valid-prod/repo-tkgops.yaml")
}

fn repo(text: &str) -> RepoConfig {
    parse_repo_config("tkgops.yaml", text.as_bytes()).expect("repo parses")
}

/// The valid prod config with variable `key` replaced by `value` (None removes it).
fn edit(text: &str, key: &str, value: Option<&str>) -> String {
    let prefix = format!("{key}:");
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    if let Some(v) = value {
        out.push(format!("{key}: {v}"));
    }
    out.join("\n") + "\n"
}

fn edits(pairs: &[(&str, Option<&str>)]) -> String {
    pairs.iter().fold(valid_text(), |t, (k, v)| edit(&t, k, *v))
}

/// Findings of the valid prod request with config `text` (settings and repo from valid-prod).
fn run(text: &str) -> Vec<Finding> {
    let s = settings(&settings_text());
    let r = repo(&repo_text());
    validate(&cfg(text), Some(&s), Some(&r))
}

fn run_settings(settings_yaml: &str) -> Vec<Finding> {
    let s = settings(settings_yaml);
    let r = repo(&repo_text());
    validate(&cfg(&valid_text()), Some(&s), Some(&r))
}

fn has(fs: &[Finding], rule: &str) -> bool {
    fs.iter().any(|f| f.rule == rule)
}

fn find<'a>(fs: &'a [Finding], rule: &str) -> &'a Finding {
    fs.iter()
        .find(|f| f.rule == rule)
        .unwrap_or_else(|| panic!("no {rule} in {fs:#?}"))
}

fn pem_b64() -> String {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUYWJj\n-----END CERTIFICATE-----\n";
    base64::engine::general_purpose::STANDARD.encode(pem)
}

// ---------------------------------------------------------------- valid request and samples

#[test]
fn valid_prod_has_no_findings() {
    let fs = run(&valid_text());
    assert!(fs.is_empty(), "{fs:#?}");
    // Also without repo/settings there is no error.
    let fs = validate(&cfg(&valid_text()), None, None);
    assert!(fs.iter().all(|f| f.severity != Severity::Error), "{fs:#?}");
    let report = validate_paths(&LocalFiles, &[fixture("valid-prod/cluster-config.yaml")]);
    assert_eq!(report.exit_code(), 0, "{report:#?}");
}

#[test]
fn sample_01_breaks_plan_and_identity_rules_with_lines() {
    let text = read("samples/01-tkg16-aws-mgmt-cluster-config.yaml");
    let c = parse_tkg_config("01.yaml", text.as_bytes()).expect("sample 01 parses");
    assert_eq!(c.get("AWS_AMI_ID"), None);
    assert_eq!(c.vars["AWS_AMI_ID"].value, "");
    assert_eq!(c.get("OS_VERSION"), Some("20.04"));
    assert_eq!(c.get_bool("BASTION_HOST_ENABLED"), Some(false));
    let fs = validate(&c, None, None);
    let plan = find(&fs, "TKO-CLS-004");
    assert_eq!(plan.line, Some(27));
    assert_eq!(plan.severity, Severity::Error);
    assert!(plan.message.contains("dev"));
    // Its identity settings are the management cluster's in TKG 2.x (§7): reported as ignored.
    let idm = find(&fs, "TKGOPS-IGNORED");
    assert!(
        idm.message.contains("IDENTITY_MANAGEMENT_TYPE"),
        "{}",
        idm.message
    );
    assert!(!has(&fs, "TKO-CLS-006"));
    assert!(has(&fs, "TKO-CLS-002"));
    assert!(!has(&fs, "TKGOPS-PARSE"));
    // sorted by (path, line, rule)
    let mut sorted = fs.clone();
    sorted.sort_by(|a, b| (&a.path, a.line, &a.rule).cmp(&(&b.path, b.line, &b.rule)));
    assert_eq!(fs, sorted);
}

#[test]
fn sample_02_is_rejected_as_vsphere() {
    let text = read("samples/02-tkg16-airgap-shared-services-config-vsphere.yaml");
    let c = parse_tkg_config("02.yaml", text.as_bytes()).expect("sample 02 parses");
    assert!(c
        .get("AVI_LABELS")
        .unwrap_or("")
        .contains("shared-services"));
    assert_eq!(c.get("VSPHERE_CONTROL_PLANE_ENDPOINT"), None);
    assert_eq!(c.get("VSPHERE_CONTROL_PLANE_NUM_CPUS"), Some("2"));
    let fs = validate(&c, None, None);
    let p = find(&fs, "TKGOPS-PROVIDER");
    assert_eq!(p.line, Some(8));
    assert!(p.message.contains("vsphere"), "{}", p.message);
    // AWS-only rules are not reported for another provider.
    assert!(!has(&fs, "TKGOPS-REQUIRED"));
    // The CA in the sample is elided ("[...]"): not a PEM.
    assert!(has(&fs, "TKG-CLS-001"));
    // The secret VSPHERE_PASSWORD value is not in any output.
    for f in &fs {
        assert!(!f.to_string().contains("Vk13YXJlMSE"));
    }
    assert!(!format!("{c:?}").contains("Vk13YXJlMSE"));
}

// ---------------------------------------------------------------- rules

#[test]
fn r1_azs() {
    let fs = run(&edits(&[("AWS_NODE_AZ_2", Some("\"\""))]));
    let f = find(&fs, "TKO-CLS-005");
    assert!(f.message.contains("AWS_NODE_AZ_2"));
    assert!(f.line.is_some());
    let fs = run(&edits(&[("AWS_NODE_AZ_2", Some("us-west-2a"))]));
    assert!(find(&fs, "TKO-CLS-005").message.contains("distinct"));
    let fs = run(&edits(&[("AWS_NODE_AZ_1", None), ("AWS_NODE_AZ_2", None)]));
    assert!(has(&fs, "TKO-CLS-005"));
    assert!(!has(&run(&valid_text()), "TKO-CLS-005"));
    // dev: one AZ only
    let dev = edits(&[
        ("CLUSTER_PLAN", Some("dev")),
        ("AWS_PRIVATE_SUBNET_ID_1", None),
        ("AWS_PRIVATE_SUBNET_ID_2", None),
    ]);
    assert!(has(&run(&dev), "TKO-CLS-005"));
    let dev1 = edit(&edit(&dev, "AWS_NODE_AZ_1", None), "AWS_NODE_AZ_2", None);
    assert!(!has(&run(&dev1), "TKO-CLS-005"));
}

#[test]
fn r2_plan() {
    let fs = run(&edits(&[("CLUSTER_PLAN", Some("dev"))]));
    assert!(has(&fs, "TKO-CLS-004"));
    let fs = run(&edits(&[("CLUSTER_PLAN", None)]));
    let f = find(&fs, "TKO-CLS-004");
    assert_eq!(f.line, None);
    let fs = run(&edits(&[("CLUSTER_PLAN", Some("staging"))]));
    assert!(has(&fs, "TKGOPS-PLAN"));
    assert!(!has(&fs, "TKO-CLS-004"));
    assert!(!has(
        &run(&edits(&[("CLUSTER_PLAN", Some("prodcc"))])),
        "TKO-CLS-004"
    ));
}

#[test]
fn r3_internal_lb() {
    let key = "AWS_LOAD_BALANCER_SCHEME_INTERNAL";
    assert!(has(&run(&edits(&[(key, Some("false"))])), "TKO-CLS-002"));
    assert!(has(&run(&edits(&[(key, None)])), "TKO-CLS-002"));
    assert!(has(&run(&edits(&[(key, Some("yes"))])), "TKO-CLS-002"));
    assert!(!has(&run(&edits(&[(key, Some("true"))])), "TKO-CLS-002"));
    assert!(!has(&run(&edits(&[(key, Some("True"))])), "TKO-CLS-002"));
}

#[test]
fn r4_instance_types() {
    let text = edits(&[("NODE_MACHINE_TYPE_1", Some("t3.medium"))]);
    let fs = run(&text);
    let f = find(&fs, "TKO-CLS-003");
    assert_eq!(f.line, cfg(&text).line("NODE_MACHINE_TYPE_1"));
    assert!(f.message.contains("t3.medium"));
    assert!(has(
        &run(&edits(&[("CONTROL_PLANE_MACHINE_TYPE", Some("t2.micro"))])),
        "TKO-CLS-003"
    ));
    assert!(!has(
        &run(&edits(&[("NODE_MACHINE_TYPE", Some("t3.large"))])),
        "TKO-CLS-003"
    ));
}

#[test]
fn r5_tkr_and_downgrade() {
    let tkr = "v1.25.7+vmware.2-tkg.1";
    let bad = settings_text().replace(tkr, "1.23.8");
    let fs = run_settings(&bad);
    let f = find(&fs, "TKGOPS-TKR");
    assert_eq!(f.path, SETTINGS_PATH);
    assert_eq!(f.line, Some(3));
    // A TKR the management cluster's TKG release (2.2) does not ship, e.g. TKG 1.6's or 2.1's.
    for other in ["v1.23.8+vmware.2-tkg.1", "v1.24.9+vmware.1-tkg.1"] {
        let fs = run_settings(&settings_text().replace(tkr, other));
        let f = find(&fs, "TKGOPS-TKR");
        assert!(
            f.message
                .contains("not offered by management cluster mc-aws-1 (TKG 2.2)"),
            "{}",
            f.message
        );
        assert!(
            f.message.contains("v1.24.11+vmware.1-tkg.1"),
            "{}",
            f.message
        );
    }
    let shipped = settings_text().replace(tkr, "v1.23.17+vmware.1-tkg.1");
    assert!(!has(&run_settings(&shipped), "TKGOPS-TKR"));
    // managementClusters[].tkrs adds TKRs (e.g. an additional-compatible-tkrs ConfigMap).
    let extra = repo(&repo_text().replace(
        "    tkgVersion: \"2.2\"\n",
        "    tkgVersion: \"2.2\"\n    tkrs: [v1.24.9+vmware.1-tkg.1]\n",
    ));
    let s = settings(&settings_text().replace(tkr, "v1.24.9+vmware.1-tkg.1"));
    assert!(!has(
        &validate(&cfg(&valid_text()), Some(&s), Some(&extra)),
        "TKGOPS-TKR"
    ));
    // Cluster API refuses a jump of two minors (§4, §8).
    let jump = check_upgrade(
        "s",
        None,
        "v1.23.17+vmware.1-tkg.1",
        "v1.25.7+vmware.2-tkg.1",
    )
    .expect("jump");
    assert!(
        jump.message.contains("more than one Kubernetes minor"),
        "{}",
        jump.message
    );

    let d = check_upgrade(
        "s.yaml",
        Some(3),
        "v1.23.8+vmware.2-tkg.1",
        "v1.22.11+vmware.2-tkg.1",
    )
    .expect("downgrade");
    assert_eq!(d.rule, "TKGOPS-DOWNGRADE");
    assert_eq!(d.line, Some(3));
    assert!(check_upgrade(
        "s",
        None,
        "v1.23.8+vmware.2-tkg.1",
        "v1.23.8+vmware.1-tkg.1"
    )
    .is_some());
    assert!(check_upgrade(
        "s",
        None,
        "v1.22.11+vmware.2-tkg.1",
        "v1.23.8+vmware.2-tkg.1"
    )
    .is_none());
    assert!(check_upgrade(
        "s",
        None,
        "v1.23.8+vmware.2-tkg.1",
        "v1.23.8+vmware.2-tkg.1"
    )
    .is_none());
    assert!(check_upgrade(
        "s",
        None,
        "v1.23.8+vmware.2-tkg.1",
        "v1.23.10+vmware.1-tkg.1"
    )
    .is_none());
    assert_eq!(
        check_upgrade("s", None, "v1.23.8+vmware.2-tkg.1", "latest").map(|f| f.rule),
        Some("TKGOPS-TKR".into())
    );
}

#[test]
fn r6_docker_bridge_and_cidr_syntax() {
    let fs = run(&edits(&[("AWS_VPC_CIDR", Some("172.16.0.0/12"))]));
    assert!(find(&fs, "TKGOPS-DOCKER-BRIDGE")
        .message
        .contains("AWS_VPC_CIDR"));
    assert!(has(
        &run(&edits(&[("CLUSTER_CIDR", Some("172.17.4.0/24"))])),
        "TKGOPS-DOCKER-BRIDGE"
    ));
    assert!(has(
        &run(&edits(&[("SERVICE_CIDR", Some("172.17.0.0/16"))])),
        "TKGOPS-DOCKER-BRIDGE"
    ));
    assert!(!has(
        &run(&edits(&[("AWS_VPC_CIDR", Some("172.18.0.0/16"))])),
        "TKGOPS-DOCKER-BRIDGE"
    ));
    let fs = run(&edits(&[("SERVICE_CIDR", Some("100.64.0.0/33"))]));
    assert!(has(&fs, "TKGOPS-CIDR"));
    assert!(has(
        &run(&edits(&[("AWS_PRIVATE_NODE_CIDR", Some("ten.0.0.0/24"))])),
        "TKGOPS-CIDR"
    ));
    assert!(!has(&run(&valid_text()), "TKGOPS-CIDR"));
}

/// Findings of the valid prod request validated under a repository policy edited by `f`.
fn run_repo(text: &str, f: impl Fn(&str) -> String) -> Vec<Finding> {
    let s = settings(&settings_text());
    let r = repo(&f(&repo_text()));
    validate(&cfg(text), Some(&s), Some(&r))
}

#[test]
fn r8_machine_health_checks() {
    // In TKG 2.x the ClusterClass's MachineHealthChecks follow the management cluster's
    // ENABLE_MHC* (§5): a workload file's value is ignored, an inherited false is TKO-CLS-007.
    let fs = run(&edits(&[("ENABLE_MHC", Some("false"))]));
    assert!(!has(&fs, "TKO-CLS-007"), "{fs:#?}");
    let f = find(&fs, "TKGOPS-IGNORED");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.message.contains("ENABLE_MHC"), "{}", f.message);
    assert!(f.line.is_some());
    let off = |t: &str| {
        t.replace(
            "    tkgVersion: \"2.2\"\n",
            "    tkgVersion: \"2.2\"\n    defaults: {ENABLE_MHC_WORKER_NODE: false}\n",
        )
    };
    let fs = run_repo(&valid_text(), off);
    let f = find(&fs, "TKO-CLS-007");
    assert!(
        f.message.contains("ENABLE_MHC_WORKER_NODE") && f.message.contains("mc-aws-1"),
        "{}",
        f.message
    );
    assert!(!has(&run(&valid_text()), "TKO-CLS-007"));
}

#[test]
fn r9_identity_management_is_the_management_clusters() {
    let set = |v: &'static str| {
        move |t: &str| {
            t.replace(
                "identityManagementType: ldap",
                &format!("identityManagementType: {v}"),
            )
        }
    };
    let f = find(&run_repo(&valid_text(), set("none")), "TKO-CLS-006").clone();
    assert!(
        f.message.contains("mc-aws-1") && f.message.contains("none"),
        "{}",
        f.message
    );
    let undeclared = |t: &str| t.replace("    identityManagementType: ldap\n", "");
    let f = find(&run_repo(&valid_text(), undeclared), "TKO-CLS-006").clone();
    assert!(
        f.message.contains("declares no identityManagementType"),
        "{}",
        f.message
    );
    assert!(!has(&run_repo(&valid_text(), set("oidc")), "TKO-CLS-006"));
    // Identity variables in a workload file are ignored (§7) and reported as such, in one
    // finding on the first of their lines; TKO-CLS-006 does not look at them.
    let tkg16 = edits(&[
        ("IDENTITY_MANAGEMENT_TYPE", Some("none")),
        ("LDAP_HOST", Some("ldaps.corp.example:636")),
    ]);
    let fs = run(&tkg16);
    assert!(!has(&fs, "TKO-CLS-006"), "{fs:#?}");
    let f = find(&fs, "TKGOPS-IGNORED");
    assert!(
        f.message.contains("IDENTITY_MANAGEMENT_TYPE, LDAP_HOST"),
        "{}",
        f.message
    );
    assert_eq!(fs.iter().filter(|f| f.rule == "TKGOPS-IGNORED").count(), 1);
    // A committed bind password is still refused as a secret.
    assert!(has(
        &run(&edits(&[("LDAP_BIND_PASSWORD", Some("hunter2"))])),
        "TKGOPS-SECRET"
    ));
}

fn airgap(pairs: &[(&str, Option<&str>)]) -> String {
    let ca = pem_b64();
    let mut all: Vec<(&str, Option<&str>)> = vec![
        (
            "TKG_CUSTOM_IMAGE_REPOSITORY",
            Some("harbor.corp.example/tkg-160"),
        ),
        ("TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY", Some("false")),
        (
            "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE",
            Some(ca.as_str()),
        ),
    ];
    all.extend_from_slice(pairs);
    edits(&all)
}

#[test]
fn r10_air_gapped_registry() {
    let fs = run(&airgap(&[]));
    assert!(!has(&fs, "TKG-CLS-001"), "{fs:#?}");
    assert!(!has(&fs, "TKGOPS-AIRGAP-IDM"));
    assert!(has(
        &run(&airgap(&[(
            "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY",
            Some("true")
        )])),
        "TKG-CLS-001"
    ));
    assert!(has(
        &run(&airgap(&[(
            "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE",
            None
        )])),
        "TKG-CLS-001"
    ));
    let notpem = base64::engine::general_purpose::STANDARD.encode("hello");
    assert!(has(
        &run(&airgap(&[(
            "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE",
            Some(notpem.as_str())
        )])),
        "TKG-CLS-001"
    ));
    assert!(has(
        &run(&airgap(&[(
            "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE",
            Some("\"%%%\"")
        )])),
        "TKG-CLS-001"
    ));
}

#[test]
fn r12_air_gapped_identity_is_ldap() {
    let oidc = |t: &str| {
        t.replace(
            "identityManagementType: ldap",
            "identityManagementType: oidc",
        )
    };
    let fs = run_repo(&airgap(&[]), oidc);
    let f = find(&fs, "TKGOPS-AIRGAP-IDM");
    assert!(f.message.contains("mc-aws-1"), "{}", f.message);
    assert!(!has(&fs, "TKO-CLS-006"));
    assert!(!has(&run(&airgap(&[])), "TKGOPS-AIRGAP-IDM"));
}

#[test]
fn r14_harbor_on_shared_services() {
    let with_harbor = settings_text().replace(
        "  - name: cert-manager\n",
        "  - name: cert-manager\n  - name: harbor\n",
    );
    let fs = run_settings(&with_harbor);
    let f = find(&fs, "TKO-AWS-002");
    assert_eq!(f.severity, Severity::Warning);
    let labelled = with_harbor.replace(
        "labels:\n",
        "labels:\n  cluster-role.tkg.tanzu.vmware.com/tanzu-services: \"\"\n",
    );
    assert!(!has(&run_settings(&labelled), "TKO-AWS-002"));
    let null_label = with_harbor.replace(
        "labels:\n",
        "labels:\n  cluster-role.tkg.tanzu.vmware.com/tanzu-services:\n",
    );
    assert!(!has(&run_settings(&null_label), "TKO-AWS-002"));
}

#[test]
fn r15_required_aws_variables() {
    let fs = run(&edits(&[("AWS_REGION", None)]));
    assert!(find(&fs, "TKGOPS-REQUIRED").message.contains("AWS_REGION"));
    assert!(has(
        &run(&edits(&[("AWS_SSH_KEY_NAME", Some("\"\""))])),
        "TKGOPS-REQUIRED"
    ));
    let fs = run(&edits(&[("AWS_NODE_AZ_1", Some("us-east-1b"))]));
    assert!(find(&fs, "TKGOPS-REQUIRED").message.contains("us-east-1b"));
    let fs = run(&edits(&[("AWS_PRIVATE_SUBNET_ID_2", Some("\"\""))]));
    assert!(find(&fs, "TKGOPS-REQUIRED")
        .message
        .contains("AWS_PRIVATE_SUBNET_ID_2"));
    let fs = run(&edits(&[("AWS_PUBLIC_SUBNET_ID_1", Some("subnet-1"))]));
    assert!(find(&fs, "TKGOPS-REQUIRED")
        .message
        .contains("cannot be used without AWS_PUBLIC_SUBNET_ID"));
    let ok = edits(&[
        ("AWS_PUBLIC_SUBNET_ID", Some("subnet-0")),
        ("AWS_PUBLIC_SUBNET_ID_1", Some("subnet-1")),
    ]);
    assert!(!has(&run(&ok), "TKGOPS-REQUIRED"));
    // New VPC: no subnet IDs needed.
    let new_vpc = edits(&[
        ("AWS_VPC_ID", None),
        ("AWS_PRIVATE_SUBNET_ID", None),
        ("AWS_PRIVATE_SUBNET_ID_1", None),
        ("AWS_PRIVATE_SUBNET_ID_2", None),
    ]);
    assert!(!has(&run(&new_vpc), "TKGOPS-REQUIRED"));
}

/// docs/tkg2-class-based.md §3 "Replicas": on the prod plan the CLI uses the per-AZ worker
/// counts only when all three are set; a partial set is ignored (and said so), and
/// `WORKER_MACHINE_COUNT` is split evenly with the remainder to the first MachineDeployments.
#[test]
fn r16_a_partial_set_of_per_az_worker_counts_is_ignored() {
    let fs = run(&edits(&[
        ("WORKER_MACHINE_COUNT", Some("4")),
        ("WORKER_MACHINE_COUNT_1", Some("5")),
    ]));
    let f = find(&fs, "TKGOPS-IGNORED");
    assert_eq!(f.severity, Severity::Warning);
    assert!(
        f.message.starts_with("WORKER_MACHINE_COUNT_1 is ignored"),
        "{}",
        f.message
    );
    assert!(f.message.contains("(2/1/1)"), "{}", f.message);
    assert!(f.line.is_some(), "points at the ignored variable");
    let all = run(&edits(&[
        ("WORKER_MACHINE_COUNT_0", Some("2")),
        ("WORKER_MACHINE_COUNT_1", Some("1")),
        ("WORKER_MACHINE_COUNT_2", Some("1")),
    ]));
    assert!(!has(&all, "TKGOPS-IGNORED"), "{all:#?}");
    // A partial set does not rescue too few workers: the split of the total is what runs.
    let fs = run(&edits(&[
        ("WORKER_MACHINE_COUNT", Some("2")),
        ("WORKER_MACHINE_COUNT_0", Some("3")),
    ]));
    assert!(find(&fs, "TKGOPS-TF-VALIDATE")
        .message
        .contains("prod plan requires at least 3 workers (got 2)"));
}

#[test]
fn r16_tanzu_framework_checks() {
    let fs = run(&edits(&[("WORKER_MACHINE_COUNT", Some("2"))]));
    assert!(find(&fs, "TKGOPS-TF-VALIDATE")
        .message
        .contains("prod plan requires at least 3 workers"));
    let fs = run(&edits(&[("CNI", Some("flannel"))]));
    assert_eq!(
        find(&fs, "TKGOPS-TF-VALIDATE").message,
        "provided CNI type 'flannel' is not in the available options: antrea, calico, none"
    );
    assert!(has(
        &run(&edits(&[("CLUSTER_NAME", Some("Team_A"))])),
        "TKGOPS-TF-VALIDATE"
    ));
    assert!(has(
        &run(&edits(&[("CLUSTER_NAME", None)])),
        "TKGOPS-TF-VALIDATE"
    ));
    assert!(has(
        &run(&edits(&[("SERVICE_CIDR", Some("100.64.0.0/11"))])),
        "TKGOPS-TF-VALIDATE"
    ));
    assert!(!has(
        &run(&edits(&[("SERVICE_CIDR", Some("100.64.0.0/12"))])),
        "TKGOPS-TF-VALIDATE"
    ));
    assert!(has(
        &run(&edits(&[("CONTROL_PLANE_MACHINE_COUNT", Some("2"))])),
        "TKGOPS-TF-VALIDATE"
    ));
    assert!(has(
        &run(&edits(&[("WORKER_MACHINE_COUNT", Some("three"))])),
        "TKGOPS-TF-VALIDATE"
    ));
    assert!(!has(
        &run(&edits(&[
            ("CNI", Some("calico")),
            ("WORKER_MACHINE_COUNT", Some("6"))
        ])),
        "TKGOPS-TF-VALIDATE"
    ));
    // default prod worker count is 3
    assert!(!has(
        &run(&edits(&[("WORKER_MACHINE_COUNT", None)])),
        "TKGOPS-TF-VALIDATE"
    ));
}

#[test]
fn provider_must_be_aws() {
    let fs = run(&edits(&[("INFRASTRUCTURE_PROVIDER", Some("azure"))]));
    assert!(find(&fs, "TKGOPS-PROVIDER")
        .message
        .starts_with("INFRASTRUCTURE_PROVIDER: azure is not supported"));
    // Unset: inherited from the (AWS) management cluster, as TKG 2.x workload files do.
    assert!(!has(
        &run(&edits(&[("INFRASTRUCTURE_PROVIDER", None)])),
        "TKGOPS-PROVIDER"
    ));
    assert!(!has(&run(&valid_text()), "TKGOPS-PROVIDER"));
}

#[test]
fn r17_package_dependencies() {
    let prom = settings_text().replace(
        "  - name: cert-manager\n",
        "  - name: cert-manager\n  - name: prometheus\n",
    );
    assert!(!has(&run_settings(&prom), "TKGOPS-PKG-ORDER"));
    let no_contour = prom.replace("  - name: contour\n", "  - name: fluent-bit\n");
    let fs = run_settings(&no_contour);
    assert!(find(&fs, "TKGOPS-PKG-ORDER")
        .message
        .contains("prometheus requires contour"));
    // contour without cert-manager (repo default disabled).
    let no_cm = settings_text().replace(
        "  - name: cert-manager\n",
        "  - {name: cert-manager, enabled: false}\n",
    );
    let fs = run_settings(&no_cm);
    assert!(find(&fs, "TKGOPS-PKG-ORDER")
        .message
        .contains("contour requires cert-manager"));
    // Unknown package without version.
    let unknown = settings_text().replace(
        "  - name: cert-manager\n",
        "  - name: cert-manager\n  - name: my-app\n",
    );
    assert!(has(&run_settings(&unknown), "TKGOPS-SCHEMA"));
}

#[test]
fn unknown_variable_is_a_warning() {
    let fs = run(&edits(&[("AWS_NODE_ZA", Some("us-west-2a"))]));
    let f = find(&fs, "TKGOPS-UNKNOWN-VAR");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.message.contains("AWS_NODE_ZA"));
    assert!(f.line.is_some());
    assert!(!has(
        &run(&edits(&[
            ("AUTOSCALER_MAX_NODES_TOTAL", Some("0")),
            ("ENABLE_AUTOSCALER", Some("false"))
        ])),
        "TKGOPS-UNKNOWN-VAR"
    ));
    assert!(is_known_variable("WORKER_MACHINE_COUNT_2"));
    assert!(!is_known_variable("AWS_NODE_ZA"));
}

#[test]
fn directory_name_must_equal_cluster_name() {
    let c = parse_tkg_config(
        "repo/clusters/team-b/cluster-config.yaml",
        valid_text().as_bytes(),
    )
    .expect("parses");
    let fs = validate(&c, None, None);
    assert!(find(&fs, "TKGOPS-NAME").message.contains("team-b"));
    let c = parse_tkg_config(
        "repo/clusters/team-a-prod/cluster-config.yaml",
        valid_text().as_bytes(),
    )
    .expect("parses");
    assert!(!has(&validate(&c, None, None), "TKGOPS-NAME"));
}

#[test]
fn management_cluster_must_exist_and_tmc_needs_repo_tmc() {
    let s = settings_text().replace("managementCluster: mc-aws-1", "managementCluster: mc-nope");
    let f = find(&run_settings(&s), "TKGOPS-SCHEMA").clone();
    assert_eq!(f.line, Some(2));
    assert!(f.message.contains("mc-nope"));
    let r =
        repo(&repo_text().replace("tmc:\n  endpoint: https://myorg.tmc.cloud.vmware.com\n", ""));
    let fs = validate(
        &cfg(&valid_text()),
        Some(&settings(&settings_text())),
        Some(&r),
    );
    assert!(has(&fs, "TKGOPS-SCHEMA"));
}

// ---------------------------------------------------------------- tkgops files: schema

#[test]
fn repo_config_parses_with_defaults() {
    let r = repo(&repo_text());
    assert_eq!(r.management_clusters[0].name, "mc-aws-1");
    assert_eq!(
        r.management_clusters[0].kubeconfig,
        KubeconfigSource::File("/etc/tkgops/mc.kubeconfig".into())
    );
    assert_eq!(
        r.tmc.as_ref().map(|t| t.csp_endpoint.as_str()),
        Some("https://console.tanzu.broadcom.com")
    );
    assert_eq!(r.approval.approvers, vec!["alice", "bob"]);
    assert_eq!(
        r.rules.severities.get("TKO-AWS-002"),
        Some(&RuleLevel::Warning)
    );
    let min = repo("managementClusters:\n  - name: mc\n    kubeconfig: {secret: {namespace: tkgops, name: mc-kubeconfig}}\n    tkgVersion: \"2.2\"\n");
    assert_eq!(min.management_clusters[0].namespace, "default");
    assert_eq!(
        min.approval,
        ApprovalPolicy {
            approvers: vec![],
            required_approvals: 1,
            destructive_approvals: 2,
            max_deletes_per_change: 1,
        }
    );
    assert_eq!(min.packages.repository.name, "tanzu-standard");
    assert_eq!(
        min.packages.repository.namespace,
        "tanzu-package-repo-global"
    );
    assert!(
        matches!(&min.management_clusters[0].kubeconfig, KubeconfigSource::Secret { key, .. } if key == "value")
    );
    let env = repo("managementClusters:\n  - name: mc\n    kubeconfig: {env: MC_KUBECONFIG}\n    tkgVersion: \"2.2\"\n");
    assert_eq!(
        env.management_clusters[0].kubeconfig,
        KubeconfigSource::Env("MC_KUBECONFIG".into())
    );
}

#[test]
fn repo_config_schema_errors() {
    let bad = repo_text().replace("approval:\n", "approvals:\n");
    let fs = parse_repo_config("tkgops.yaml", bad.as_bytes()).expect_err("unknown key");
    assert_eq!(fs[0].rule, "TKGOPS-SCHEMA");
    assert!(fs[0].message.contains("approvals"), "{}", fs[0].message);
    assert_eq!(fs[0].line, Some(10));
    let nested = repo_text().replace("    namespace: default\n", "    namespaces: default\n");
    let fs = parse_repo_config("tkgops.yaml", nested.as_bytes()).expect_err("nested unknown key");
    assert!(fs[0].message.contains("namespaces"));
    assert_eq!(fs[0].line, Some(5));
    let sev = repo_text().replace("TKO-AWS-002: warning", "TKO-AWS-002: loud");
    assert_eq!(
        parse_repo_config("t", sev.as_bytes()).expect_err("bad level")[0].rule,
        "TKGOPS-SCHEMA"
    );
    let id = repo_text().replace("TKO-AWS-002: warning", "TKO-NOPE: warning");
    assert!(
        parse_repo_config("t", id.as_bytes()).expect_err("bad id")[0]
            .message
            .contains("TKO-NOPE")
    );
    let approvals = repo_text().replace("destructiveApprovals: 2", "destructiveApprovals: 0");
    assert!(parse_repo_config("t", approvals.as_bytes()).is_err());
    // The TKG release is required and must be one tkgops creates clusters on (2.1-2.4).
    let unversioned = repo_text().replace("    tkgVersion: \"2.2\"\n", "");
    let fs = parse_repo_config("t", unversioned.as_bytes()).expect_err("no tkgVersion");
    assert!(fs[0].message.contains("tkgVersion"), "{}", fs[0].message);
    for v in ["\"1.6\"", "\"2.5\"", "latest"] {
        let old = repo_text().replace("tkgVersion: \"2.2\"", &format!("tkgVersion: {v}"));
        let fs = parse_repo_config("t", old.as_bytes()).expect_err("unsupported release");
        assert!(
            fs[0].message.contains("not a supported TKG release"),
            "{}",
            fs[0].message
        );
        assert_eq!(fs[0].line, Some(3), "{v}");
    }
    let none = "managementClusters: []\n";
    assert!(parse_repo_config("t", none.as_bytes()).is_err());
    let missing = "tmc: {endpoint: https://x}\n";
    let fs = parse_repo_config("t", missing.as_bytes()).expect_err("missing managementClusters");
    assert!(fs[0].message.contains("managementClusters"));
}

/// Issue 19: `upgradePolicy` never scheduled anything and is gone; a file that still sets it
/// (any shape, even an invalid crontab) parses, and the plan warns on its line.
#[test]
fn an_old_upgrade_policy_parses_and_is_reported_as_deprecated() {
    let text = format!(
        "{}upgradePolicy:\n  schedule: \"0 25 * * 6\"\n  maintenanceWindow: soon\n  autoPatch: true\n",
        settings_text()
    );
    let line = text.lines().position(|l| l == "upgradePolicy:").unwrap() as u32 + 1;
    let fs = run_settings(&text);
    let f = find(&fs, "TKGOPS-DEPRECATED");
    assert_eq!(f.severity, Severity::Warning, "{f:?}");
    assert_eq!(f.line, Some(line), "{f:?}");
    assert!(f.message.contains("schedules"), "{f:?}");
    assert_eq!(fs.len(), 1, "only the deprecation: {fs:#?}");
    assert!(!has(&run_settings(&settings_text()), "TKGOPS-DEPRECATED"));
}

#[test]
fn cluster_settings_parse_and_schema_errors() {
    let s = settings(&settings_text());
    assert_eq!(s.management_cluster, "mc-aws-1");
    assert_eq!(s.tkr, "v1.25.7+vmware.2-tkg.1");
    assert_eq!(s.line("tkr"), Some(3));
    assert_eq!(s.labels.get("env").map(String::as_str), Some("prod"));
    let unknown = settings_text().replace("labels:", "label:");
    let fs = parse_cluster_settings("s", unknown.as_bytes()).expect_err("unknown key");
    assert_eq!(fs[0].rule, "TKGOPS-SCHEMA");
    assert!(fs[0].message.contains("label"));
    let no_tkr = settings_text().replace("tkr: v1.25.7+vmware.2-tkg.1\n", "");
    assert!(
        parse_cluster_settings("s", no_tkr.as_bytes()).expect_err("tkr")[0]
            .message
            .contains("tkr")
    );
    let dup = settings_text().replace(
        "  - name: cert-manager\n",
        "  - name: cert-manager\n  - name: cert-manager\n",
    );
    assert!(parse_cluster_settings("s", dup.as_bytes()).is_err());
    let values = settings_text().replace(
        "  - name: cert-manager\n",
        "  - name: cert-manager\n    values: [1]\n",
    );
    assert!(parse_cluster_settings("s", values.as_bytes()).is_err());
}

// ---------------------------------------------------------------- parser

#[test]
fn parser_accepts_tkg_value_kinds() {
    let text = "# comment\nA_BOOL: true\nA_STR: \"true\"\nA_INT: 3\nA_FLOAT: 20.04\nA_NULL:\nA_EMPTY: \"\"\nA_BLOCK: |\n    'type': 'x'\n  \nA_TILDE: ~\n";
    let c = parse_tkg_config("f.yaml", text.as_bytes()).expect("parses");
    assert_eq!(c.get_bool("A_BOOL"), Some(true));
    assert_eq!(c.get_bool("A_STR"), Some(true));
    assert_eq!(c.get("A_INT"), Some("3"));
    assert_eq!(c.get("A_FLOAT"), Some("20.04"));
    assert_eq!(c.get("A_NULL"), None);
    assert_eq!(c.line("A_NULL"), Some(6));
    assert_eq!(c.get("A_EMPTY"), None);
    assert_eq!(c.get_bool("A_INT"), None);
    assert_eq!(c.get("A_BLOCK"), Some("'type': 'x'"));
    assert_eq!(c.line("A_BLOCK"), Some(8));
    assert_eq!(c.line("A_TILDE"), Some(11));
    assert_eq!(c.line("A_BOOL"), Some(2));
    assert_eq!(c.line("MISSING"), None);
}

fn parse_err(bytes: &[u8]) -> Finding {
    parse_tkg_config("bad.yaml", bytes).expect_err("must fail")
}

#[test]
fn parser_rejects_bad_input_cleanly() {
    let f = parse_err(b"A: 1\nB: 2\nA: 3\n");
    assert_eq!(f.rule, "TKGOPS-PARSE");
    assert_eq!(f.line, Some(3));
    assert!(f.message.contains("duplicate"));
    let f = parse_err(b"A: 1\nB:\n  c: d\n");
    assert!(f.message.contains("B") && f.message.contains("map"));
    assert_eq!(f.line, Some(2));
    assert!(parse_err(b"A: [1, 2]\n").message.contains("list"));
    assert!(parse_err(b"- a\n- b\n")
        .message
        .contains("top level is a list"));
    assert!(parse_err(b"just text\n").message.contains("top level"));
    assert!(parse_err(b"").message.contains("empty"));
    assert!(parse_err(b"# only\n# comments\n\n")
        .message
        .contains("empty"));
    assert!(parse_err(b"A: 1\n---\nB: 2\n")
        .message
        .contains("multiple YAML documents"));
    assert!(parse_err(b"A\0B: 1\n").message.contains("binary"));
    assert!(parse_err(&[0xff, 0xfe, 0x41]).message.contains("binary"));
    let big = vec![b'#'; MAX_CONFIG_BYTES + 1];
    assert!(parse_err(&big).message.contains("1 MiB"));
    let deep = format!("A: {}", "[".repeat(10_000));
    let f = parse_err(deep.as_bytes());
    assert_eq!(f.rule, "TKGOPS-PARSE");
    let deep_closed = format!("A: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_err(deep_closed.as_bytes())
        .message
        .contains("nesting"));
    let f = parse_err(b"A: 1\nB: \"unterminated\nC: 3\n");
    assert!(f.line.is_some());
    assert!(f.message.starts_with("invalid YAML"));
    let f = parse_err(b"A: 1\n  B: 2\n");
    assert!(f.line.is_some(), "{f:?}");
}

#[test]
fn finding_display_format() {
    let f = Finding::new("a.yaml", Some(3), "TKO-CLS-004", Severity::Error, "m");
    assert_eq!(f.to_string(), "a.yaml:3: TKO-CLS-004 error: m");
    let f = Finding::new("a.yaml", None, "TKO-AWS-002", Severity::Warning, "m");
    assert_eq!(f.to_string(), "a.yaml: TKO-AWS-002 warning: m");
    assert_eq!(
        serde_json::to_value(Severity::Warning).expect("json"),
        serde_json::json!("warning")
    );
    assert!(Severity::Error < Severity::Warning);
}

// ---------------------------------------------------------------- secrets

const SENTINEL: &str = "s3cr3t-SENTINEL";

#[test]
fn secrets_never_appear_in_output() {
    assert!(is_secret_variable("LDAP_BIND_PASSWORD"));
    assert!(is_secret_variable("OIDC_IDENTITY_PROVIDER_CLIENT_SECRET"));
    assert!(is_secret_variable(
        "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"
    ));
    assert!(is_secret_variable("LDAP_ROOT_CA_DATA_B64"));
    assert!(is_secret_variable("AWS_SECRET_ACCESS_KEY"));
    assert!(is_secret_variable("AWS_SESSION_TOKEN"));
    assert!(is_secret_variable("VSPHERE_PASSWORD"));
    assert!(is_secret_variable("AWS_B64ENCODED_CREDENTIALS"));
    assert!(is_secret_variable("TKG_PROXY_CA_CERT"));
    assert!(!is_secret_variable("AWS_SSH_KEY_NAME"));
    assert!(!is_secret_variable("CLUSTER_NAME"));

    let ca = pem_b64();
    let text = edits(&[
        ("LDAP_BIND_PASSWORD", Some(SENTINEL)),
        ("OIDC_IDENTITY_PROVIDER_CLIENT_SECRET", Some(SENTINEL)),
        ("LDAP_ROOT_CA_DATA_B64", Some(SENTINEL)),
        (
            "TKG_CUSTOM_IMAGE_REPOSITORY",
            Some("harbor.corp.example/tkg"),
        ),
        // A CA certificate is public: the Cluster carries it in `trust` (§2).
        ("TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE", Some(&ca)),
        ("TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY", Some("true")),
        ("AWS_SECRET_ACCESS_KEY", Some(SENTINEL)),
        ("AWS_SESSION_TOKEN", Some(SENTINEL)),
    ]);
    let c = cfg(&text);
    assert_eq!(c.get("LDAP_BIND_PASSWORD"), Some(SENTINEL));
    let s = settings(&settings_text());
    let r = repo(&repo_text());
    let fs = validate(&c, Some(&s), Some(&r));
    assert!(has(&fs, "TKG-CLS-001"));
    for f in &fs {
        assert!(!f.message.contains(SENTINEL), "{}", f.message);
        assert!(!f.to_string().contains(SENTINEL));
        assert!(!format!("{f:?}").contains(SENTINEL));
    }
    assert!(!format!("{c:?}").contains(SENTINEL));
    assert!(!format!("{:?}", c.vars["LDAP_BIND_PASSWORD"]).contains(SENTINEL));
    let red = c.redacted();
    assert_eq!(red["LDAP_BIND_PASSWORD"], "<redacted>");
    assert!(!format!("{red:?}").contains(SENTINEL));
    let req = ClusterRequest {
        name: "team-a-prod".into(),
        config: c.clone(),
        settings: s,
    };
    assert!(!format!("{req:?}").contains(SENTINEL));
    let spec = cluster_spec(&req, &r).expect("spec");
    assert!(!format!("{spec:?}").contains(SENTINEL));
    assert!(!serde_json::to_string(&spec)
        .expect("json")
        .contains(SENTINEL));

    // Parse errors around secret values do not echo them.
    for bad in [
        format!("LDAP_BIND_PASSWORD: [{SENTINEL}]\n"),
        format!("LDAP_BIND_PASSWORD: {{a: {SENTINEL}}}\n"),
        format!("LDAP_BIND_PASSWORD: \"{SENTINEL}\nX: 1\n"),
        format!("LDAP_BIND_PASSWORD: {SENTINEL}\nLDAP_BIND_PASSWORD: {SENTINEL}\n"),
        format!("LDAP_BIND_PASSWORD: {SENTINEL}\n  - {SENTINEL}: [\n"),
        format!("- {SENTINEL}\n"),
    ] {
        let f = parse_tkg_config("bad.yaml", bad.as_bytes()).expect_err("bad");
        assert!(!f.to_string().contains(SENTINEL), "{f}");
    }

    // Through the filesystem entry point as well.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("cluster-config.yaml");
    std::fs::write(&p, &text).expect("write");
    let report = validate_paths(&LocalFiles, &[p]);
    assert!(!format!("{report:?}").contains(SENTINEL));
}

// ---------------------------------------------------------------- policy

#[test]
fn severity_policy_global_and_by_labels() {
    let dev_cfg = edits(&[
        ("CLUSTER_PLAN", Some("dev")),
        ("AWS_NODE_AZ_1", None),
        ("AWS_NODE_AZ_2", None),
        ("AWS_PRIVATE_SUBNET_ID_1", None),
        ("AWS_PRIVATE_SUBNET_ID_2", None),
        ("AWS_NODE_ZA", Some("x")),
    ]);
    let c = cfg(&dev_cfg);
    let prod_settings = settings(&settings_text());
    let dev_settings = settings(&settings_text().replace("env: prod", "env: dev"));
    // No repo: defaults.
    let fs = validate(&c, Some(&prod_settings), None);
    assert_eq!(find(&fs, "TKO-CLS-004").severity, Severity::Error);
    assert_eq!(find(&fs, "TKGOPS-UNKNOWN-VAR").severity, Severity::Warning);
    // Global severities.
    let r = repo(&repo_text().replace(
        "TKO-AWS-002: warning",
        "TKO-CLS-004: warning, TKGOPS-UNKNOWN-VAR: off",
    ));
    let fs = validate(&c, Some(&prod_settings), Some(&r));
    assert_eq!(find(&fs, "TKO-CLS-004").severity, Severity::Warning);
    assert!(!has(&fs, "TKGOPS-UNKNOWN-VAR"));
    // Override by labels: env=dev turns TKO-CLS-004 off.
    let fs = validate(&c, Some(&dev_settings), Some(&r));
    assert!(!has(&fs, "TKO-CLS-004"));
    // Later overrides win; raising a warning to error works.
    let r2 = repo(&format!(
        "{}    - matchLabels: {{env: dev, team: team-a}}\n      severities: {{TKO-CLS-004: error, TKGOPS-UNKNOWN-VAR: error}}\n",
        repo_text()
    ));
    let fs = validate(&c, Some(&dev_settings), Some(&r2));
    assert_eq!(find(&fs, "TKO-CLS-004").severity, Severity::Error);
    assert_eq!(find(&fs, "TKGOPS-UNKNOWN-VAR").severity, Severity::Error);
    let fs = validate(&c, Some(&prod_settings), Some(&r2));
    assert_eq!(find(&fs, "TKO-CLS-004").severity, Severity::Error);
    assert_eq!(find(&fs, "TKGOPS-UNKNOWN-VAR").severity, Severity::Warning);
}

// ---------------------------------------------------------------- ClusterSpec

/// The value of ClusterClass variable `name` in `spec` (panics when absent).
fn var(spec: &tkgops_domain::request::ClusterSpec, name: &str) -> serde_json::Value {
    spec.variables
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.clone())
        .unwrap_or_else(|| panic!("variable {name} missing"))
}

fn request(cfg_text: &str, settings_yaml: &str) -> ClusterRequest {
    ClusterRequest {
        name: "team-a-prod".into(),
        config: cfg(cfg_text),
        settings: settings(settings_yaml),
    }
}

#[test]
fn cluster_spec_of_valid_prod() {
    let r = repo(&repo_text());
    let spec = cluster_spec(&request(&valid_text(), &settings_text()), &r).expect("spec");
    assert_eq!(spec.name, "team-a-prod");
    assert_eq!(spec.namespace, "default");
    assert_eq!(spec.plan, "prod");
    assert_eq!(spec.management_cluster, "mc-aws-1");
    assert_eq!(spec.tkr_name, "v1.25.7---vmware.2-tkg.1");
    assert_eq!(spec.kubernetes_version, "v1.25.7+vmware.2");
    assert_eq!(spec.cluster_class, "tkg-aws-default-v1.0.0");
    assert_eq!(
        spec.os_image_selector,
        "ami-region=us-west-2,os-name=ubuntu,os-arch=amd64"
    );
    assert_eq!(spec.azs, vec!["us-west-2a", "us-west-2b", "us-west-2c"]);
    assert_eq!(
        spec.vpc.existing_id.as_deref(),
        Some("vpc-0123456789abcdef0")
    );
    assert_eq!(spec.subnets.len(), 3);
    assert_eq!(
        spec.subnets[2].private_id.as_deref(),
        Some("subnet-0ccccccccccccccc3")
    );
    assert_eq!(spec.subnets[0].private_cidr, None);
    assert_eq!(spec.subnets[0].public_id, None);
    assert!(spec.load_balancer_scheme_internal);
    assert!(!spec.bastion_enabled);
    assert_eq!(
        spec.control_plane,
        MachineSpec {
            instance_type: "m5.xlarge".into(),
            replicas: 3,
            root_volume_gib: 80
        }
    );
    assert_eq!(
        spec.workers.iter().map(|w| w.replicas).collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
    assert_eq!(spec.workers[1].name, "md-1");
    assert_eq!(spec.workers[1].az, "us-west-2b");
    assert_eq!(spec.workers[2].instance_type, "m5.xlarge");
    assert_eq!(
        var(&spec, "auditLogging"),
        serde_json::json!({"enabled": true})
    );
    // Required and always emitted, even without AWS_IDENTITY_REF_NAME (§2, §10.2).
    assert_eq!(var(&spec, "identityRef"), serde_json::json!({}));
    assert_eq!(
        spec.tmc,
        Some(TmcSpec {
            cluster_group: "team-a".into(),
            description: "team A production cluster".into()
        })
    );
    let names: Vec<&str> = spec.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["cert-manager", "contour"]);
    let contour = &spec.packages[1];
    assert_eq!(contour.ref_name, "contour.tanzu.vmware.com");
    assert_eq!(contour.version, "1.20.2+vmware.1-tkg.1");
    assert_eq!(contour.namespace, "tanzu-system-ingress");
    assert!(contour.values_yaml.contains("type: LoadBalancer"));
    assert_eq!(spec.packages[0].values_yaml, "");
    assert_eq!(spec.package_repository.name, "tanzu-standard");
    let json = serde_json::to_value(&spec).expect("json");
    assert_eq!(json["tkrName"], "v1.25.7---vmware.2-tkg.1");
    assert_eq!(json["controlPlane"]["rootVolumeGib"], 80);
    assert_eq!(json["packages"][1]["refName"], "contour.tanzu.vmware.com");
}

#[test]
fn cluster_spec_defaults_for_minimal_dev() {
    let r = repo("managementClusters:\n  - name: mc-aws-1\n    kubeconfig: {file: /k}\n    namespace: tkg-workloads\n    tkgVersion: \"2.2\"\n");
    let text = "CLUSTER_NAME: small\nINFRASTRUCTURE_PROVIDER: aws\nAWS_REGION: eu-west-1\nAWS_SSH_KEY_NAME: k\n";
    let s = "managementCluster: mc-aws-1\ntkr: v1.23.17+vmware.1-tkg.1\n";
    let spec = cluster_spec(&request(text, s), &r).expect("spec");
    assert_eq!(spec.namespace, "tkg-workloads");
    assert_eq!(spec.plan, "dev");
    assert_eq!(spec.azs, vec!["eu-west-1a"]);
    assert_eq!(
        spec.vpc,
        VpcSpec {
            existing_id: None,
            cidr: "10.0.0.0/16".into()
        }
    );
    assert_eq!(
        spec.subnets,
        vec![SubnetSpec {
            az: "eu-west-1a".into(),
            private_id: None,
            private_cidr: Some("10.0.0.0/24".into()),
            public_id: None,
            public_cidr: Some("10.0.1.0/24".into()),
        }]
    );
    assert_eq!(
        spec.control_plane,
        MachineSpec {
            instance_type: "t3.large".into(),
            replicas: 1,
            root_volume_gib: 80
        }
    );
    assert_eq!(
        spec.workers,
        vec![WorkerSpec {
            name: "md-0".into(),
            az: "eu-west-1a".into(),
            instance_type: "m5.large".into(),
            replicas: 1,
            overrides: vec![],
        }]
    );
    assert_eq!(spec.worker_root_volume_gib, 80);
    assert_eq!(spec.cni, "antrea");
    assert_eq!(spec.cluster_cidr, "100.96.0.0/11");
    assert_eq!(spec.service_cidr, "100.64.0.0/13");
    // The CLI's defaults, in its emission order (docs/tkg2-class-based.md §2, §3.3).
    let names: Vec<&str> = spec.variables.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "cni",
            "controlPlaneCertificateRotation",
            "auditLogging",
            "podSecurityStandard",
            "region",
            "sshKeyName",
            "loadBalancerSchemeInternal",
            "bastion",
            "network",
            "identityRef",
            "worker",
            "controlPlane"
        ]
    );
    assert_eq!(
        var(&spec, "podSecurityStandard"),
        serde_json::json!({"deactivated": false, "audit": "baseline", "warn": "baseline"})
    );
    assert_eq!(
        var(&spec, "network"),
        serde_json::json!({"vpc": {"cidr": "10.0.0.0/16"}, "subnets": [{"az": "", "private": {"cidr": "10.0.0.0/24"}, "public": {"cidr": "10.0.1.0/24"}}]})
    );
    assert_eq!(
        var(&spec, "controlPlaneCertificateRotation"),
        serde_json::json!({"activate": true, "daysBefore": 90})
    );
    assert!(spec.bastion_enabled);
    assert!(!spec.load_balancer_scheme_internal);
    assert_eq!(
        spec.os,
        OsSpec {
            name: "ubuntu".into(),
            version: "20.04".into(),
            arch: "amd64".into()
        }
    );
    assert_eq!(spec.tmc, None);
    assert!(spec.packages.is_empty());
    assert_eq!(
        spec.package_repository.namespace,
        "tanzu-package-repo-global"
    );
}

#[test]
fn cluster_spec_prod_split_and_overrides() {
    let r = repo(&repo_text());
    let text = edits(&[
        ("WORKER_MACHINE_COUNT", Some("4")),
        ("NODE_MACHINE_TYPE_2", Some("m5.2xlarge")),
        ("AWS_NODE_AZ_1", None),
        ("NAMESPACE", Some("team-a")),
        ("ENABLE_MHC", Some("false")),
        ("AWS_SECURITY_GROUP_APISERVER_LB", Some("sg-1")),
        ("AWS_SECURITY_GROUP_NODE", Some("sg-2")),
        ("AWS_IDENTITY_REF_NAME", Some("tkg-role")),
        ("CLUSTER_PLAN", Some("prodcc")),
    ]);
    let spec = cluster_spec(&request(&text, &settings_text()), &r).expect("spec");
    assert_eq!(spec.plan, "prod");
    assert_eq!(
        spec.workers.iter().map(|w| w.replicas).collect::<Vec<_>>(),
        vec![2, 1, 1]
    );
    assert_eq!(spec.workers[2].instance_type, "m5.2xlarge");
    assert_eq!(spec.workers[1].instance_type, "m5.xlarge");
    assert_eq!(spec.azs, vec!["us-west-2a", "us-west-2b", "us-west-2c"]);
    assert_eq!(spec.namespace, "team-a");
    assert_eq!(
        var(&spec, "network")["securityGroupOverrides"],
        serde_json::json!({"apiServerLB": "sg-1", "node": "sg-2"})
    );
    assert_eq!(
        var(&spec, "identityRef"),
        serde_json::json!({"kind": "AWSClusterRoleIdentity", "name": "tkg-role"})
    );
    // prodcc: md-1 and md-2 carry the worker override (AWSOV:80-106).
    assert_eq!(spec.workers[0].overrides, vec![]);
    assert_eq!(
        spec.workers[2].overrides[0].value["instanceType"],
        "m5.2xlarge"
    );
    let five = edit(&text, "WORKER_MACHINE_COUNT", Some("5"));
    let spec = cluster_spec(&request(&five, &settings_text()), &r).expect("spec");
    assert_eq!(
        spec.workers.iter().map(|w| w.replicas).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    // One per-AZ count alone is ignored, as the CLI ignores it (§3 "Replicas")…
    let partial = edit(&five, "WORKER_MACHINE_COUNT_2", Some("7"));
    let spec = cluster_spec(&request(&partial, &settings_text()), &r).expect("spec");
    assert_eq!(
        spec.workers.iter().map(|w| w.replicas).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    // …and all three are used as given.
    let explicit = edit(
        &edit(&partial, "WORKER_MACHINE_COUNT_0", Some("1")),
        "WORKER_MACHINE_COUNT_1",
        Some("1"),
    );
    let spec = cluster_spec(&request(&explicit, &settings_text()), &r).expect("spec");
    assert_eq!(
        spec.workers.iter().map(|w| w.replicas).collect::<Vec<_>>(),
        vec![1, 1, 7]
    );
    // Package ordering and defaults merge.
    let pk = settings_text().replace(
        "  - name: cert-manager\n",
        "  - name: harbor\n  - name: external-dns\n  - {name: my-app, refName: my-app.corp.example, version: 1.0.0}\n  - name: fluent-bit\n    namespace: logging\n",
    );
    let spec = cluster_spec(&request(&valid_text(), &pk), &r).expect("spec");
    let names: Vec<&str> = spec.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "cert-manager",
            "contour",
            "fluent-bit",
            "harbor",
            "external-dns",
            "my-app"
        ]
    );
    assert_eq!(spec.packages[2].namespace, "logging");
    assert_eq!(spec.packages[5].namespace, "tanzu-packages");
    // Errors.
    let bad_mc = settings_text().replace("mc-aws-1", "mc-x");
    assert_eq!(
        cluster_spec(&request(&valid_text(), &bad_mc), &r)
            .expect_err("mc")
            .rule,
        "TKGOPS-SCHEMA"
    );
    let no_region = edit(&valid_text(), "AWS_REGION", None);
    assert_eq!(
        cluster_spec(&request(&no_region, &settings_text()), &r)
            .expect_err("region")
            .rule,
        "TKGOPS-REQUIRED"
    );
    assert!(standard_package("harbor").is_some_and(|p| p.version == "2.5.3+vmware.1-tkg.1"));
    assert_eq!(TKG16_STANDARD_PACKAGES[0].namespace, Some("cert-manager"));
}

// ---------------------------------------------------------------- filesystem entry point

fn write(p: &Path, text: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(p, text).expect("write");
}

fn make_repo(root: &Path) {
    write(&root.join("tkgops.yaml"), &repo_text());
    write(
        &root.join("clusters/team-a-prod/cluster-config.yaml"),
        &valid_text(),
    );
    write(
        &root.join("clusters/team-a-prod/tkgops.yaml"),
        &settings_text(),
    );
}

#[test]
fn validate_paths_repo_layouts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    make_repo(&root);
    let report = validate_paths(&LocalFiles, std::slice::from_ref(&root));
    assert_eq!(report.exit_code(), 0, "{report:#?}");
    assert!(report.findings.is_empty());
    let report = validate_paths(&LocalFiles, &[root.join("clusters/team-a-prod")]);
    assert_eq!(report.exit_code(), 0, "{report:#?}");
    let report = validate_paths(
        &LocalFiles,
        &[root.join("clusters/team-a-prod/cluster-config.yaml")],
    );
    assert_eq!(report.exit_code(), 0, "{report:#?}");

    // A second cluster whose directory does not match CLUSTER_NAME, and a dev-labelled one
    // where the repo policy turns TKO-CLS-004 off.
    write(
        &root.join("clusters/other/cluster-config.yaml"),
        &valid_text(),
    );
    write(&root.join("clusters/other/tkgops.yaml"), &settings_text());
    let dev = edits(&[
        ("CLUSTER_NAME", Some("dev-1")),
        ("CLUSTER_PLAN", Some("dev")),
        ("AWS_NODE_AZ_1", None),
        ("AWS_NODE_AZ_2", None),
        ("AWS_PRIVATE_SUBNET_ID_1", None),
        ("AWS_PRIVATE_SUBNET_ID_2", None),
    ]);
    write(&root.join("clusters/dev-1/cluster-config.yaml"), &dev);
    write(
        &root.join("clusters/dev-1/tkgops.yaml"),
        &settings_text().replace("env: prod", "env: dev"),
    );
    let report = validate_paths(&LocalFiles, std::slice::from_ref(&root));
    assert_eq!(report.exit_code(), 1, "{report:#?}");
    assert_eq!(report.findings.len(), 1, "{report:#?}");
    let f = &report.findings[0];
    assert_eq!(f.rule, "TKGOPS-NAME");
    assert_eq!(
        f.path,
        root.join("clusters/other/cluster-config.yaml")
            .display()
            .to_string()
    );
    // Single file: the repo policy is found by walking up.
    let report = validate_paths(
        &LocalFiles,
        &[root.join("clusters/dev-1/cluster-config.yaml")],
    );
    assert_eq!(report.exit_code(), 0, "{report:#?}");

    // Missing settings in a repository cluster dir.
    write(
        &root.join("clusters/nosettings/cluster-config.yaml"),
        &edit(&valid_text(), "CLUSTER_NAME", Some("nosettings")),
    );
    let report = validate_paths(&LocalFiles, &[root.join("clusters/nosettings")]);
    assert_eq!(report.exit_code(), 1);
    assert!(has(&report.findings, "TKGOPS-SCHEMA"));

    // Broken repo config: exit 2.
    write(&root.join("tkgops.yaml"), "managementClusters: [\n");
    let report = validate_paths(&LocalFiles, std::slice::from_ref(&root));
    assert_eq!(report.exit_code(), 2);
    assert!(report
        .findings
        .iter()
        .any(|f| f.path.ends_with("tkgops.yaml") && f.rule == "TKGOPS-PARSE"));
}

#[test]
fn validate_paths_unreadable_inputs_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let huge = "#".repeat(MAX_CONFIG_BYTES + 10);
    let deep = format!("A: {}\n", "[".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "binary.yaml",
            vec![0x7f, b'E', b'L', b'F', 0, 1, 2],
            "binary",
        ),
        ("empty.yaml", Vec::new(), "empty"),
        ("comments.yaml", b"# nothing\n# here\n".to_vec(), "empty"),
        ("huge.yaml", huge.into_bytes(), "1 MiB"),
        ("deep.yaml", deep.into_bytes(), "YAML"),
        (
            "multi.yaml",
            b"A: 1\n---\nB: 2\n".to_vec(),
            "multiple YAML documents",
        ),
        (
            "malformed.yaml",
            b"A: 1\nB: [unclosed\n".to_vec(),
            "invalid YAML",
        ),
        ("dup.yaml", b"A: 1\nA: 2\n".to_vec(), "duplicate"),
        ("list.yaml", b"- A\n- B\n".to_vec(), "top level is a list"),
    ];
    for (name, bytes, expect) in cases {
        let p = d.join(name);
        std::fs::write(&p, &bytes).expect("write");
        let report = validate_paths(&LocalFiles, std::slice::from_ref(&p));
        assert_eq!(report.exit_code(), 2, "{name}: {report:#?}");
        assert!(report.unreadable);
        let f = &report.findings[0];
        assert_eq!(f.path, p.display().to_string(), "{name}");
        assert!(f.to_string().contains(name));
        assert!(f.message.contains(expect), "{name}: {}", f.message);
    }
    let missing = validate_paths(&LocalFiles, &[d.join("nope.yaml")]);
    assert_eq!(missing.exit_code(), 2);
    assert!(missing.findings[0].message.contains("no such file"));
    let empty_dir = d.join("emptydir");
    std::fs::create_dir(&empty_dir).expect("mkdir");
    let report = validate_paths(&LocalFiles, &[empty_dir]);
    assert_eq!(report.exit_code(), 2);
    assert_eq!(report.findings[0].rule, "TKGOPS-IO");

    // A FIFO is not read (it would block forever).
    let fifo = d.join("fifo.yaml");
    if std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        let report = validate_paths(&LocalFiles, std::slice::from_ref(&fifo));
        assert_eq!(report.exit_code(), 2);
        assert!(report.findings[0].message.contains("not a regular file"));
    }
}

#[test]
fn alias_bomb_and_mutations_never_panic_or_hang() {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let mut prev = 'a';
    for c in 'b'..='k' {
        bomb.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = c;
    }
    let start = std::time::Instant::now();
    assert!(parse_tkg_config("bomb.yaml", bomb.as_bytes()).is_err());
    assert!(parse_cluster_settings(
        "bomb.yaml",
        format!("{bomb}managementCluster: x\ntkr: y\n").as_bytes()
    )
    .is_err());
    assert!(parse_repo_config("bomb.yaml", bomb.as_bytes()).is_err());
    assert!(start.elapsed() < std::time::Duration::from_secs(20));

    // Deterministic byte mutations of the valid inputs: every outcome is Ok or a Finding.
    let inputs = [valid_text(), settings_text(), repo_text()];
    let r = repo(&repo_text());
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b":-[]{}\"'#&*!|> \n\t0aZ\x00\xff,?%@`";
    for i in 0..1500 {
        let mut bytes = inputs[i % 3].clone().into_bytes();
        for _ in 0..(1 + next() % 4) {
            let pos = (next() as usize) % bytes.len();
            let b = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 => bytes[pos] = b,
                1 => bytes.insert(pos, b),
                _ => {
                    bytes.remove(pos);
                }
            }
        }
        match i % 3 {
            0 => {
                if let Ok(c) = parse_tkg_config("m.yaml", &bytes) {
                    let s = settings(&settings_text());
                    let _ = validate(&c, Some(&s), Some(&r));
                    let req = ClusterRequest {
                        name: "team-a-prod".into(),
                        config: c,
                        settings: s,
                    };
                    let _ = cluster_spec(&req, &r);
                }
            }
            1 => {
                if let Ok(s) = parse_cluster_settings("m.yaml", &bytes) {
                    let _ = validate(&cfg(&valid_text()), Some(&s), Some(&r));
                    let req = ClusterRequest {
                        name: "team-a-prod".into(),
                        config: cfg(&valid_text()),
                        settings: s,
                    };
                    let _ = cluster_spec(&req, &r);
                }
            }
            _ => {
                if let Ok(rc) = parse_repo_config("m.yaml", &bytes) {
                    let _ = validate(
                        &cfg(&valid_text()),
                        Some(&settings(&settings_text())),
                        Some(&rc),
                    );
                }
            }
        }
    }
}

#[test]
fn fixture_files_under_validate() {
    let report = validate_paths(&LocalFiles, &[fixture("validate/airgap-prod.yaml")]);
    assert_eq!(report.exit_code(), 0, "{report:#?}");
    assert!(report.findings.is_empty(), "{report:#?}");
    let c = parse_tkg_config(
        "dev-insecure.yaml",
        read("validate/dev-insecure.yaml").as_bytes(),
    )
    .expect("parses");
    let fs = validate(&c, None, None);
    let at = |rule: &str, line: u32| fs.iter().any(|f| f.rule == rule && f.line == Some(line));
    assert!(at("TKGOPS-TF-VALIDATE", 2), "{fs:#?}"); // CLUSTER_NAME format
    assert!(at("TKO-CLS-004", 3));
    assert!(at("TKGOPS-REQUIRED", 6)); // AZ not in region
    assert!(at("TKGOPS-REQUIRED", 7)); // VPC without subnet
    assert!(
        has(&fs, "TKGOPS-REQUIRED") && fs.iter().any(|f| f.message.contains("AWS_SSH_KEY_NAME"))
    );
    assert!(at("TKO-CLS-002", 8));
    assert!(at("TKO-CLS-003", 9));
    assert!(at("TKGOPS-DOCKER-BRIDGE", 10));
    assert!(at("TKGOPS-TF-VALIDATE", 11)); // service CIDR too large
    assert!(at("TKGOPS-TF-VALIDATE", 12)); // CNI
                                           // ENABLE_MHC and IDENTITY_MANAGEMENT_TYPE are the management cluster's in TKG 2.x.
    assert!(at("TKGOPS-IGNORED", 13));
    assert!(!has(&fs, "TKO-CLS-007") && !has(&fs, "TKO-CLS-006"));
    assert!(at("TKGOPS-UNKNOWN-VAR", 15));
    assert_eq!(
        validate_paths(&LocalFiles, &[fixture("validate/dev-insecure.yaml")]).exit_code(),
        1
    );
}

#[test]
fn package_values_with_inline_secrets_are_rejected_without_echoing_them() {
    let settings = "managementCluster: mc-aws-1\ntkr: v1.23.8+vmware.2-tkg.1\npackages:\n  - name: cert-manager\n  - name: contour\n  - name: harbor\n    values:\n      hostname: harbor.corp.example.com\n      harborAdminPassword: s3cr3t-SENTINEL\n      database: {password: s3cr3t-SENTINEL}\n";
    let s = tkgops_domain::request::parse_cluster_settings(
        "clusters/a/tkgops.yaml",
        settings.as_bytes(),
    )
    .expect("settings parse");
    let cfg = tkgops_domain::request::parse_tkg_config(
        "clusters/a/cluster-config.yaml",
        b"CLUSTER_NAME: a\n",
    )
    .expect("config parses");
    let findings = tkgops_domain::request::validate(&cfg, Some(&s), None);
    let secret: Vec<_> = findings
        .iter()
        .filter(|f| f.rule == "TKGOPS-PKG-SECRET")
        .collect();
    assert_eq!(secret.len(), 2, "{findings:#?}");
    assert!(secret
        .iter()
        .any(|f| f.message.contains("harborAdminPassword")));
    assert!(secret
        .iter()
        .any(|f| f.message.contains("database.password")));
    assert!(findings
        .iter()
        .all(|f| !f.to_string().contains("s3cr3t-SENTINEL")));
    let ok = settings.replace(
        "      harborAdminPassword: s3cr3t-SENTINEL\n      database: {password: s3cr3t-SENTINEL}\n",
        "",
    );
    let s = tkgops_domain::request::parse_cluster_settings("clusters/a/tkgops.yaml", ok.as_bytes())
        .unwrap();
    assert!(tkgops_domain::request::validate(&cfg, Some(&s), None)
        .iter()
        .all(|f| f.rule != "TKGOPS-PKG-SECRET"));
}

// ---------------------------------------------------------------- ownership (security rule 7)

#[test]
fn namespaces_are_dns_labels_and_system_namespaces_need_an_allowance() {
    // A system namespace named by NAMESPACE: refused on its line.
    let fs = run(&edit(&valid_text(), "NAMESPACE", Some("tkg-system")));
    let f = find(&fs, "TKGOPS-NAMESPACE");
    assert!(
        f.line.is_some() && f.message.contains("system namespace"),
        "{f:?}"
    );
    for ns in [
        "kube-system",
        "kube-public",
        "tanzu-package-repo-global",
        "capi-system",
        "capa-system",
    ] {
        let fs = run(&edit(&valid_text(), "NAMESPACE", Some(ns)));
        assert!(has(&fs, "TKGOPS-NAMESPACE"), "{ns} must be refused");
    }
    // Not a DNS-1123 label.
    let fs = run(&edit(&valid_text(), "NAMESPACE", Some("Team_A")));
    assert!(find(&fs, "TKGOPS-NAMESPACE").message.contains("DNS-1123"));
    // An ordinary namespace, and a system one the repository allows explicitly.
    assert!(!has(
        &run(&edit(&valid_text(), "NAMESPACE", Some("team-a"))),
        "TKGOPS-NAMESPACE"
    ));
    let allowing = repo(&format!("{}allowedNamespaces: [tkg-system]\n", repo_text()));
    let fs = validate(
        &cfg(&edit(&valid_text(), "NAMESPACE", Some("tkg-system"))),
        Some(&settings(&settings_text())),
        Some(&allowing),
    );
    assert!(!has(&fs, "TKGOPS-NAMESPACE"), "{fs:#?}");
    // Without NAMESPACE the management cluster's namespace is checked.
    let sys_default = repo(&repo_text().replace("namespace: default", "namespace: kube-system"));
    let fs = validate(
        &cfg(&edit(&valid_text(), "NAMESPACE", None)),
        Some(&settings(&settings_text())),
        Some(&sys_default),
    );
    assert!(
        find(&fs, "TKGOPS-NAMESPACE")
            .message
            .contains("management cluster mc-aws-1"),
        "{fs:#?}"
    );
}

#[test]
fn the_ownership_label_cannot_be_set_by_a_request() {
    // A request that claims another repository's Cluster by setting the ownership label.
    let text = settings_text().replace(
        "labels:",
        "labels:\n  tkgops.dev/owner: ffffffffffffffffffffffffffffffff",
    );
    let fs = parse_cluster_settings(SETTINGS_PATH, text.as_bytes()).expect_err("reserved label");
    let f = fs
        .iter()
        .find(|f| f.message.contains("tkgops.dev/owner"))
        .unwrap_or_else(|| panic!("{fs:#?}"));
    assert_eq!(f.rule, "TKGOPS-SCHEMA");
    assert!(f.line.is_some(), "{f:?}");
}

// ---------------------------------------------------------------- secrets in Git (rule 5)

#[test]
fn a_committed_credential_is_refused_naming_the_variable_never_the_value() {
    const VALUE: &str = "S3cr3t-Value-Never-Printed";
    for (var, hint) in [
        ("LDAP_BIND_PASSWORD", "inherit identity management"),
        (
            "OIDC_IDENTITY_PROVIDER_CLIENT_SECRET",
            "inherit identity management",
        ),
        ("AWS_ACCESS_KEY_ID", "AWS credentials of the bot"),
        ("AWS_SECRET_ACCESS_KEY", "AWS credentials of the bot"),
        ("AWS_B64ENCODED_CREDENTIALS", "AWS credentials of the bot"),
        (
            "TKG_CUSTOM_IMAGE_REPOSITORY_PASSWORD",
            "registry credentials",
        ),
    ] {
        let fs = run(&edit(&valid_text(), var, Some(VALUE)));
        let f = find(&fs, "TKGOPS-SECRET");
        assert!(
            f.message.starts_with(var) && f.message.contains(hint),
            "{f:?}"
        );
        assert!(f.line.is_some(), "{f:?}");
        assert!(
            fs.iter().all(|f| !f.message.contains(VALUE)),
            "the value leaked: {fs:#?}"
        );
    }
    // `<encoded:…>` values are credentials whatever the variable.
    let fs = run(&edit(
        &valid_text(),
        "SOME_SETTING",
        Some("<encoded:c2VjcmV0>"),
    ));
    assert!(find(&fs, "TKGOPS-SECRET").message.contains("<encoded:…>"));
    // Empty values and public CA certificates are fine.
    assert!(!has(
        &run(&edit(&valid_text(), "LDAP_BIND_PASSWORD", Some("\"\""))),
        "TKGOPS-SECRET"
    ));
    assert!(!has(&run(&valid_text()), "TKGOPS-SECRET"));
}

#[test]
fn package_secrets_come_from_a_secret_reference_never_inline() {
    let with_ref = settings_text().replace(
        "packages:\n",
        "packages:\n  - name: harbor\n    valuesFrom:\n      - secretRef: {name: harbor-admin}\n",
    );
    let s = settings(&with_ref);
    let harbor = s.packages.iter().find(|p| p.name == "harbor").unwrap();
    assert_eq!(harbor.values_from[0].secret_ref.name, "harbor-admin");
    let bad = settings_text().replace(
        "packages:\n",
        "packages:\n  - name: harbor\n    valuesFrom:\n      - secretRef: {name: Harbor_Admin}\n",
    );
    let fs = parse_cluster_settings(SETTINGS_PATH, bad.as_bytes()).expect_err("bad name");
    assert!(
        fs.iter()
            .any(|f| f.message.contains("valuesFrom secretRef name")),
        "{fs:#?}"
    );
}

// ---------------------------------------------------------------- real files

/// The 27 public TKG configuration files in `tests/fixtures/real-configs/` (copied byte for
/// byte, sources in its `SOURCES.md`): every one is read and validated without a crash, gets at
/// least one finding (none of them follows the reference design), and the files with known
/// quirks get exactly the findings a reviewer would give, on their lines.
#[test]
fn every_real_config_gets_its_findings_with_lines_and_never_crashes() {
    let dir = fixture("real-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("real-configs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 27);
    let mut by_file = std::collections::BTreeMap::new();
    for f in &files {
        let report = validate_paths(&LocalFiles, std::slice::from_ref(f));
        assert!(!report.findings.is_empty(), "{}: no finding", f.display());
        let name = f.file_name().unwrap().to_string_lossy()[..2].to_string();
        by_file.insert(name, report.findings);
    }
    let at = |file: &str, rule: &str, line: Option<u32>, needle: &str| {
        let fs = &by_file[file];
        assert!(
            fs.iter()
                .any(|f| f.rule == rule && f.line == line && f.message.contains(needle)),
            "{file}: no {rule} at {line:?} containing {needle:?} in {fs:#?}"
        );
    };
    // 08: a duplicate key is a parse error naming both lines.
    at(
        "08",
        "TKGOPS-PARSE",
        Some(25),
        "duplicate variable CLUSTER_CIDR (first defined on line 12)",
    );
    // 09, 13, 17: 100.97.0.0/11 has host bits set.
    at(
        "09",
        "TKGOPS-CIDR",
        Some(8),
        "has host bits set; the network is 100.96.0.0/11",
    );
    at("13", "TKGOPS-CIDR", Some(12), "100.96.0.0/11");
    // 10: an envsubst template with credential keys.
    at("10", "TKGOPS-SECRET", Some(1), "AWS_ACCESS_KEY_ID");
    at(
        "10",
        "TKGOPS-PLACEHOLDER",
        Some(14),
        "${GUEST_CLUSTER_NAME}",
    );
    // 14 (the TKO-on-AWS guide's own template) and 16 (SIVT): Terraform placeholders.
    at(
        "14",
        "TKGOPS-PLACEHOLDER",
        Some(8),
        "AWS_REGION is \"${region}\"",
    );
    at("16", "TKGOPS-PLACEHOLDER", Some(13), "AWS_SSH_KEY_NAME");
    assert!(
        !by_file["16"].iter().any(|f| f.rule == "TKO-CLS-002"),
        "16 has an internal LB"
    );
    // 17: the AZ is not in the region.
    at(
        "17",
        "TKGOPS-REQUIRED",
        Some(3),
        "AWS_NODE_AZ us-east-1a is not in AWS_REGION us-east-2",
    );
    // 19: not a region name.
    at(
        "19",
        "TKGOPS-TF-VALIDATE",
        Some(1),
        "AWS_REGION \"us-east\" is not an AWS region name",
    );
    // 22: another provider.
    at("22", "TKGOPS-PROVIDER", Some(1), "azure is not supported");
    // 20: identity and MHC settings are the management cluster's in TKG 2.x.
    at("20", "TKGOPS-IGNORED", Some(58), "ENABLE_MHC");
    // Secrets never echoed.
    for fs in by_file.values() {
        for f in fs {
            assert!(!f.message.contains("Vk13YXJlMSE"), "{f}");
        }
    }

    // 06, 12 and 20 are workload files that inherit the provider, the region and the SSH key from
    // their management cluster: with managementClusters[].defaults they are no longer missing.
    let repo = repo(&repo_text().replace(
        "    tkgVersion: \"2.2\"\n",
        "    tkgVersion: \"2.2\"\n    defaults: {AWS_REGION: us-east-1, AWS_SSH_KEY_NAME: tkg-kp}\n",
    ));
    let s = settings(&settings_text());
    for n in ["06", "12", "20"] {
        let f = files
            .iter()
            .find(|f| f.file_name().unwrap().to_string_lossy().starts_with(n))
            .unwrap();
        let text = std::fs::read_to_string(f).unwrap();
        let c = parse_tkg_config(CFG_PATH, text.as_bytes()).expect("parses");
        let fs = validate(&c, Some(&s), Some(&repo));
        assert!(
            !fs.iter()
                .any(|f| f.rule == "TKGOPS-REQUIRED" || f.rule == "TKGOPS-PROVIDER"),
            "{n}: {fs:#?}"
        );
    }
}

/// A proxy URL with userinfo carries a password (issue 16 item 9): `TKGOPS-SECRET` on its line,
/// naming the variable, never the value; a proxy without userinfo is fine.
#[test]
fn a_proxy_url_with_a_user_and_password_is_a_committed_credential() {
    const PASS: &str = "Pr0xy-Pa55word-Never-Printed";
    for var in [
        "TKG_HTTP_PROXY",
        "TKG_HTTPS_PROXY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
    ] {
        let text = edits(&[
            ("TKG_HTTP_PROXY_ENABLED", Some("\"true\"")),
            ("TKG_HTTP_PROXY", Some("http://proxy.corp:3128")),
            ("TKG_HTTPS_PROXY", Some("http://proxy.corp:3128")),
            (var, Some(&format!("http://svc-tkg:{PASS}@proxy.corp:3128"))),
        ]);
        let fs = run(&text);
        let f = find(&fs, "TKGOPS-SECRET");
        assert!(
            f.message.starts_with(&format!(
                "{var} holds a proxy URL with a user name and password"
            )),
            "{f:?}"
        );
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(f.line, cfg(&text).line(var), "{f:?}");
        assert!(
            fs.iter()
                .all(|f| !f.message.contains(PASS) && !f.message.contains("svc-tkg")),
            "the value leaked: {fs:#?}"
        );
    }
    assert!(proxy_has_userinfo("https://user@proxy:3128/"));
    assert!(proxy_has_userinfo("user:pw@proxy:3128"));
    assert!(!proxy_has_userinfo("http://proxy.corp:3128/path@x"));
    assert!(!proxy_has_userinfo("http://10.0.0.1:3128"));
    let fine = edits(&[
        ("TKG_HTTP_PROXY_ENABLED", Some("\"true\"")),
        ("TKG_HTTP_PROXY", Some("http://proxy.corp:3128")),
        ("TKG_HTTPS_PROXY", Some("http://proxy.corp:3128")),
    ]);
    assert!(!has(&run(&fine), "TKGOPS-SECRET"));
}

/// Security rules cannot be turned off (issue 16 item 8): `rules.severities` and a label-scoped
/// override (whose labels a pull request sets itself) lowering TKGOPS-SECRET, -NAMESPACE,
/// -NAME and -PKG-SECRET leave them errors; other rules still follow the policy; the parsed
/// policy names every ignored entry with its line.
#[test]
fn security_rules_stay_errors_whatever_the_policy_says() {
    let policy = repo_text()
        .replace(
            "severities: {TKO-AWS-002: warning}",
            "severities: {TKO-AWS-002: warning, TKGOPS-SECRET: off, TKGOPS-NAME: warning}",
        )
        + "    - matchLabels: {team: team-a}\n      severities: {TKGOPS-NAMESPACE: off, TKGOPS-PKG-SECRET: off, TKGOPS-PLACEMENT: warning, TKGOPS-DELETE: off, TKO-CLS-002: warning}\n";
    let r = repo(&policy);
    let text = edits(&[
        ("LDAP_BIND_PASSWORD", Some("hunter2-hunter2")),
        ("NAMESPACE", Some("kube-system")),
        ("CLUSTER_NAME", Some("someone-else")),
        ("AWS_LOAD_BALANCER_SCHEME_INTERNAL", Some("false")),
    ]);
    let s = settings(&settings_text().replace(
        "      infrastructure_provider: aws",
        "      infrastructure_provider: aws\n      adminPassword: x1",
    ));
    assert_eq!(s.labels.get("team").map(String::as_str), Some("team-a"));
    let fs = validate(&cfg(&text), Some(&s), Some(&r));
    for rule in [
        "TKGOPS-SECRET",
        "TKGOPS-NAMESPACE",
        "TKGOPS-NAME",
        "TKGOPS-PKG-SECRET",
    ] {
        assert_eq!(find(&fs, rule).severity, Severity::Error, "{rule}: {fs:#?}");
    }
    // Other rules still follow the policy.
    assert_eq!(find(&fs, "TKO-CLS-002").severity, Severity::Warning);
    let ignored: Vec<String> = r
        .rules
        .ignored
        .iter()
        .map(|o| o.note("tkgops.yaml"))
        .collect();
    assert_eq!(ignored.len(), 6, "{ignored:#?}");
    assert!(ignored.contains(&"The policy tries to set the security rule TKGOPS-SECRET to `off` (rules.severities, tkgops.yaml:19): security rules cannot be lowered, so it stays an error.".to_string()), "{ignored:#?}");
    assert!(ignored.contains(&"The policy tries to set the security rule TKGOPS-NAMESPACE to `off` (rules.overrides[1] (matchLabels team=team-a), tkgops.yaml:24): security rules cannot be lowered, so it stays an error.".to_string()), "{ignored:#?}");
    // Raising a security rule to error is no attempt to lower it.
    let r = repo(&repo_text().replace(
        "severities: {TKO-AWS-002: warning}",
        "severities: {TKO-AWS-002: warning, TKGOPS-SECRET: error}",
    ));
    assert!(r.rules.ignored.is_empty());
}

/// `plan.maxClusters` (issue 16 item 9): default 200, validated 1 to 10,000 with its line.
#[test]
fn the_plan_cap_defaults_to_200_and_is_validated() {
    assert_eq!(repo(&repo_text()).plan.max_clusters, 200);
    assert_eq!(
        repo(&format!("{}plan:\n  maxClusters: 1000\n", repo_text()))
            .plan
            .max_clusters,
        1000
    );
    for bad in ["0", "10001"] {
        let text = format!("{}plan:\n  maxClusters: {bad}\n", repo_text());
        let fs = parse_repo_config("tkgops.yaml", text.as_bytes()).unwrap_err();
        assert_eq!(fs.len(), 1, "{fs:#?}");
        assert_eq!(
            fs[0].to_string(),
            format!(
                "tkgops.yaml:{}: TKGOPS-SCHEMA error: plan.maxClusters must be between 1 and 10000 (default 200)",
                text.lines().count()
            )
        );
    }
    let fs = parse_repo_config(
        "tkgops.yaml",
        format!("{}plan:\n  maxClusterz: 5\n", repo_text()).as_bytes(),
    )
    .unwrap_err();
    assert!(
        fs[0].message.contains("unknown field `maxClusterz`"),
        "{fs:#?}"
    );
}

/// Issue 19: `managementClusters[].aws` names the role tkgops assumes for that management
/// cluster's AWS steps; a malformed role ARN or external ID is a schema error on its line.
#[test]
fn a_management_clusters_aws_role_is_checked() {
    let with = |aws: &str| {
        repo_text().replace(
            "    identityManagementType: ldap\n",
            &format!("    identityManagementType: ldap\n    aws: {aws}\n"),
        )
    };
    let ok = with("{roleArn: \"arn:aws:iam::123456789012:role/tkgops\", externalId: tkgops-ext-1, region: us-gov-west-1}");
    let r = parse_repo_config("tkgops.yaml", ok.as_bytes()).expect("valid");
    let id = r.management_clusters[0].aws.as_ref().expect("aws");
    assert_eq!(id.role_arn, "arn:aws:iam::123456789012:role/tkgops");
    assert_eq!(id.external_id.as_deref(), Some("tkgops-ext-1"));
    assert_eq!(id.region.as_deref(), Some("us-gov-west-1"));

    let bad = with("{roleArn: \"arn:aws:iam::1234:user/tkgops\"}");
    let fs = parse_repo_config("tkgops.yaml", bad.as_bytes()).expect_err("not a role ARN");
    assert_eq!(fs[0].rule, "TKGOPS-SCHEMA");
    assert!(fs[0].message.contains("not an IAM role ARN"), "{fs:?}");
    let line = bad.lines().position(|l| l.contains("roleArn")).unwrap() as u32 + 1;
    assert_eq!(fs[0].line, Some(line));
    let bad = with("{roleArn: \"arn:aws:iam::123456789012:role/t\", externalId: \"x\"}");
    let fs = parse_repo_config("tkgops.yaml", bad.as_bytes()).expect_err("short external ID");
    assert!(fs[0].message.contains("externalId"), "{fs:?}");
    let bad = with("{role: x}");
    assert!(parse_repo_config("tkgops.yaml", bad.as_bytes()).is_err());
}

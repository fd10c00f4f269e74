//! Day-2 plans: upgrades (machines replaced, estimates from history, refusals of downgrades,
//! minor jumps and TKRs the management cluster does not ship), resizes and instance-type
//! changes, package removals another package needs, deletes beyond the policy, and schedules
//! validated on the pull request that adds them. Domain only; the same changes run through the
//! bot in `tests/it/day2.rs`.

mod common;

use tkgops_domain::files::MemoryTree;
use tkgops_domain::step::StepInputs;
use tkgops_domain::workflow::markdown::render_plan;
use tkgops_domain::workflow::{plan, Catalog, IntentKind, PlanInput, PlanStatus, RolloutHistory};

use common::{assert_golden, example_repo_config, example_request, executable, tree};

const OLD_TKR: &str = "v1.24.11+vmware.1-tkg.1";
const NEW_TKR: &str = "v1.25.7+vmware.2-tkg.1";
const CFG: &str = "clusters/team-a-prod/cluster-config.yaml";
const SETTINGS: &str = "clusters/team-a-prod/tkgops.yaml";

fn plan_with(
    base: &MemoryTree,
    head: &MemoryTree,
    changed: &[&str],
    history: RolloutHistory,
) -> tkgops_domain::workflow::Plan {
    let catalog = Catalog::builtin().expect("builtin catalog");
    let changed: Vec<String> = changed.iter().map(|s| s.to_string()).collect();
    plan(&PlanInput {
        base,
        head,
        settings: base,
        base_sha: "1111111111111111111111111111111111111111",
        head_sha: "2222222222222222222222222222222222222222",
        changed_paths: &changed,
        catalog: &catalog,
        executable: &executable(),
        repository: "acme/tkg-clusters",
        history,
    })
}

/// The example request at `tkr` before, `new_settings`/`new_cfg` after.
fn change(
    old_tkr: &str,
    edit_settings: impl Fn(&str) -> String,
    edit_cfg: impl Fn(&str) -> String,
    history: RolloutHistory,
) -> tkgops_domain::workflow::Plan {
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let old = settings.replace(NEW_TKR, old_tkr);
    let base = tree(&[("tkgops.yaml", &repo), (CFG, &cfg), (SETTINGS, &old)]);
    let head = tree(&[
        ("tkgops.yaml", &repo),
        (CFG, &edit_cfg(&cfg)),
        (SETTINGS, &edit_settings(&old)),
    ]);
    plan_with(&base, &head, &[CFG, SETTINGS], history)
}

fn rules(p: &tkgops_domain::workflow::Plan) -> Vec<String> {
    p.all_findings()
        .iter()
        .filter(|f| f.severity == tkgops_domain::request::Severity::Error)
        .map(|f| format!("{} {}", f.rule, f.message))
        .collect()
}

#[test]
fn an_upgrade_plan_shows_the_machines_replaced_and_an_estimate() {
    let p = change(
        OLD_TKR,
        |s| s.replace(OLD_TKR, NEW_TKR),
        |c| c.to_string(),
        RolloutHistory::default(),
    );
    assert_eq!(p.clusters.len(), 1, "{:#?}", p.clusters);
    let c = &p.clusters[0];
    assert_eq!(
        c.intent,
        IntentKind::Upgrade {
            from: OLD_TKR.into(),
            to: NEW_TKR.into()
        }
    );
    assert_eq!(c.status, PlanStatus::Ready, "{:#?}", c);
    let kinds: Vec<&str> = c.steps.iter().map(|s| s.kind().as_str()).collect();
    assert_eq!(
        kinds,
        [
            "kube.preflight",
            "kube.upgrade-cluster",
            "kube.wait-control-plane",
            "kube.wait-machine-deployments",
            "packages.verify"
        ]
    );
    let impact = c.impact.as_ref().expect("impact");
    // prod: 3 control-plane machines, WORKER_MACHINE_COUNT 3 over three AZs.
    let replaced: Vec<(String, u32)> = impact
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.replaced))
        .collect();
    assert_eq!(
        replaced,
        [
            ("control-plane".to_string(), 3),
            ("md-0".to_string(), 1),
            ("md-1".to_string(), 1),
            ("md-2".to_string(), 1)
        ]
    );
    assert_eq!(impact.nodes_replaced, 6);
    assert_eq!(impact.estimate_secs, 6 * 300);
    let md = render_plan(&p, &Catalog::builtin().unwrap(), true).unwrap();
    assert_golden("plan-upgrade.md", &md);

    // With measured history, the estimate follows it.
    let p = change(
        OLD_TKR,
        |s| s.replace(OLD_TKR, NEW_TKR),
        |c| c.to_string(),
        RolloutHistory {
            node_seconds: Some(120.0),
            samples: 8,
        },
    );
    let impact = p.clusters[0].impact.as_ref().unwrap();
    assert_eq!(impact.estimate_secs, 6 * 120);
    assert!(
        impact.estimate_basis.contains("measured over 8 node(s)"),
        "{}",
        impact.estimate_basis
    );
}

#[test]
fn upgrade_refusals_name_their_rule() {
    // Downgrade.
    let p = change(
        NEW_TKR,
        |s| s.replace(NEW_TKR, OLD_TKR),
        |c| c.to_string(),
        RolloutHistory::default(),
    );
    let r = rules(&p);
    assert!(
        r.iter()
            .any(|f| f.starts_with("TKGOPS-DOWNGRADE") && f.contains("older than")),
        "{r:?}"
    );
    assert_eq!(p.clusters[0].status, PlanStatus::Blocked);
    // A jump of two minors.
    let p = change(
        "v1.23.17+vmware.1-tkg.1",
        |s| s.replace("v1.23.17+vmware.1-tkg.1", NEW_TKR),
        |c| c.to_string(),
        RolloutHistory::default(),
    );
    let r = rules(&p);
    assert!(
        r.iter()
            .any(|f| f.starts_with("TKGOPS-DOWNGRADE") && f.contains("more than one")),
        "{r:?}"
    );
    assert_eq!(p.clusters[0].status, PlanStatus::Blocked);
    // A TKR the management cluster's TKG release (2.2) does not ship.
    let p = change(
        NEW_TKR,
        |s| s.replace(NEW_TKR, "v1.26.5+vmware.2-tkg.1"),
        |c| c.to_string(),
        RolloutHistory::default(),
    );
    let r = rules(&p);
    assert!(
        r.iter()
            .any(|f| f.starts_with("TKGOPS-TKR") && f.contains("not offered")),
        "{r:?}"
    );
    assert_eq!(p.clusters[0].status, PlanStatus::Blocked);
}

#[test]
fn worker_counts_scale_and_instance_types_replace() {
    let p = change(
        NEW_TKR,
        |s| s.to_string(),
        |c| c.replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 6"),
        RolloutHistory::default(),
    );
    let c = &p.clusters[0];
    assert_eq!(c.intent, IntentKind::Resize, "{:#?}", p.clusters);
    assert_eq!(c.status, PlanStatus::Ready, "{c:#?}");
    let impact = c.impact.as_ref().unwrap();
    assert_eq!(impact.nodes_replaced, 0);
    // The semantic diff of the Cluster names the changed fields, MachineDeployments by name.
    let changes: Vec<(String, String, String)> = c.diffs[0]
        .changes
        .iter()
        .map(|f| (f.path.clone(), f.from.clone(), f.to.clone()))
        .collect();
    assert_eq!(c.diffs[0].object, "Cluster default/team-a-prod");
    assert_eq!(
        changes,
        ["md-0", "md-1", "md-2"]
            .iter()
            .map(|md| (
                format!("spec.topology.workers.machineDeployments[{md}].replicas"),
                "1".to_string(),
                "2".to_string()
            ))
            .collect::<Vec<_>>(),
        "{changes:?}"
    );
    let md0 = &impact.groups[1];
    assert_eq!((md0.replicas_from, md0.replicas_to), (Some(1), 2));
    // The resize sets the machine fields, the changed ones and the ones it keeps.
    let resize = c
        .steps
        .iter()
        .find(|s| s.kind().as_str() == "kube.resize-cluster")
        .unwrap();
    let StepInputs::KubeResizeCluster(inputs) = &resize.inputs else {
        panic!("{resize:?}")
    };
    let changed: Vec<String> = inputs
        .fields
        .iter()
        .filter(|f| f.changes())
        .map(|f| f.to_string())
        .collect();
    assert_eq!(
        changed,
        ["md-0", "md-1", "md-2"]
            .iter()
            .map(|md| format!("spec.topology.workers.machineDeployments[{md}].replicas: 1 → 2"))
            .collect::<Vec<_>>()
    );
    let kept: Vec<String> = inputs
        .fields
        .iter()
        .filter(|f| !f.changes())
        .map(|f| f.path.to_string())
        .collect();
    assert!(
        kept.contains(&"spec.topology.controlPlane.replicas".to_string()),
        "{kept:?}"
    );
    assert!(
        kept.iter().all(|p| p.starts_with("spec.topology.")),
        "{kept:?}"
    );

    // Creation-only variables changed in the same pull request are not part of the resize.
    let p = change(
        NEW_TKR,
        |s| s.to_string(),
        |c| {
            c.replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 6")
                .replace(
                    "ENABLE_AUDIT_LOGGING: \"true\"",
                    "ENABLE_AUDIT_LOGGING: \"false\"",
                )
        },
        RolloutHistory::default(),
    );
    let intents: Vec<&IntentKind> = p.clusters.iter().map(|c| &c.intent).collect();
    assert!(
        intents
            .iter()
            .any(|i| matches!(i, IntentKind::Unsupported { reason } if reason.contains("ENABLE_AUDIT_LOGGING"))),
        "{intents:?}"
    );
    let resize = p
        .clusters
        .iter()
        .flat_map(|c| &c.steps)
        .find(|s| s.kind().as_str() == "kube.resize-cluster")
        .unwrap();
    let StepInputs::KubeResizeCluster(inputs) = &resize.inputs else {
        panic!("{resize:?}")
    };
    assert!(
        inputs
            .fields
            .iter()
            .all(|f| !f.path.to_string().contains("auditLogging")),
        "{:?}",
        inputs.fields
    );
    assert_eq!(inputs.fields.iter().filter(|f| f.changes()).count(), 3);

    let p = change(
        NEW_TKR,
        |s| s.to_string(),
        |c| {
            c.replace(
                "NODE_MACHINE_TYPE: m5.xlarge",
                "NODE_MACHINE_TYPE: m5.2xlarge",
            )
        },
        RolloutHistory::default(),
    );
    let impact = p.clusters[0].impact.as_ref().unwrap();
    assert_eq!(impact.groups[0].replaced, 0, "control plane untouched");
    assert!(
        impact.groups[1..]
            .iter()
            .all(|g| g.replaced == 1 && g.because == ["instance type"]),
        "{impact:#?}"
    );
    assert_eq!(impact.nodes_replaced, 3);
}

#[test]
fn removing_a_package_another_one_needs_is_refused() {
    // A policy without default packages, so that the request alone decides.
    let repo = example_repo_config();
    let start = repo
        .find("  defaults:\n    - {name: cert-manager")
        .expect("package defaults");
    let end = start + repo[start..].find("rules:").unwrap();
    let repo = format!("{}{}", &repo[..start], &repo[end..]);
    let (cfg, settings) = example_request();
    let base = tree(&[("tkgops.yaml", &repo), (CFG, &cfg), (SETTINGS, &settings)]);
    let head = tree(&[
        ("tkgops.yaml", &repo),
        (CFG, &cfg),
        (SETTINGS, &settings.replace("  - name: cert-manager\n", "")),
    ]);
    let p = plan_with(&base, &head, &[SETTINGS], RolloutHistory::default());
    let r = rules(&p);
    assert!(
        r.iter().any(|f| f.starts_with("TKGOPS-PKG-REMOVE")
            && f.contains("cert-manager")
            && f.contains("contour")),
        "{r:?}"
    );
    assert!(p.clusters.iter().all(|c| c.status == PlanStatus::Blocked));
}

#[test]
fn a_change_deleting_more_clusters_than_the_policy_allows_is_refused() {
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let other_cfg = cfg.replace("CLUSTER_NAME: team-a-prod", "CLUSTER_NAME: team-b-prod");
    let base = tree(&[
        ("tkgops.yaml", &repo),
        (CFG, &cfg),
        (SETTINGS, &settings),
        ("clusters/team-b-prod/cluster-config.yaml", &other_cfg),
        ("clusters/team-b-prod/tkgops.yaml", &settings),
    ]);
    let head = tree(&[("tkgops.yaml", &repo)]);
    let changed = [
        CFG,
        SETTINGS,
        "clusters/team-b-prod/cluster-config.yaml",
        "clusters/team-b-prod/tkgops.yaml",
    ];
    let p = plan_with(&base, &head, &changed, RolloutHistory::default());
    assert_eq!(p.clusters.len(), 2);
    assert!(p.clusters.iter().all(|c| c.intent == IntentKind::Delete
        && c.status == PlanStatus::Blocked
        && c.findings
            .iter()
            .any(|f| f.rule == "TKGOPS-DELETE" && f.message.contains("at most 1"))));
    // One delete is within the policy: planned, and the notes name the label it needs.
    let head = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-b-prod/cluster-config.yaml", &other_cfg),
        ("clusters/team-b-prod/tkgops.yaml", &settings),
    ]);
    let p = plan_with(&base, &head, &changed[..2], RolloutHistory::default());
    assert_eq!(p.clusters.len(), 1);
    assert_eq!(p.clusters[0].intent, IntentKind::Delete);
    assert_ne!(p.clusters[0].status, PlanStatus::Blocked);
    assert!(
        p.notes.iter().any(|n| n.contains("tkgops/allow-delete")),
        "{:?}",
        p.notes
    );
}

/// Schedules in `tkgops.yaml` are validated on the PR that adds them (rule and line named), and
/// the plan says loudly that approving an `action: apply` schedule approves its upgrades.
#[test]
fn schedules_are_validated_with_their_line_and_apply_ones_said_to_run_unattended() {
    let repo = example_repo_config();
    let base = tree(&[("tkgops.yaml", &repo)]);
    let good = format!(
        "{repo}schedules:\n  - name: weekly-patch\n    cron: \"0 2 * * SAT\"\n    timezone: Europe/Berlin\n    window: 4h\n    selector: {{matchLabels: {{env: prod}}}}\n    target: latest-patch\n    action: apply\n"
    );
    let head = tree(&[("tkgops.yaml", &good)]);
    let p = plan_with(&base, &head, &["tkgops.yaml"], RolloutHistory::default());
    assert!(rules(&p).is_empty(), "{:?}", rules(&p));
    assert!(
        p.notes.iter().any(|n| n.contains("`weekly-patch`")
            && n.contains("Approving this change approves those upgrades")),
        "{:?}",
        p.notes
    );

    let bad = good
        .replace("0 2 * * SAT", "0 25 * * SAT")
        .replace("Europe/Berlin", "Mars/Olympus");
    let head = tree(&[("tkgops.yaml", &bad)]);
    let p = plan_with(&base, &head, &["tkgops.yaml"], RolloutHistory::default());
    let findings: Vec<(String, Option<u32>)> = p
        .all_findings()
        .iter()
        .filter(|f| f.rule == "TKGOPS-SCHEDULE")
        .map(|f| (f.message.clone(), f.line))
        .collect();
    let line_of = |needle: &str| {
        bad.lines()
            .position(|l| l.contains(needle))
            .map(|i| i as u32 + 1)
    };
    assert!(
        findings
            .iter()
            .any(|(m, l)| m.contains("cron") && *l == line_of("cron:")),
        "{findings:?}"
    );
    assert!(
        findings
            .iter()
            .any(|(m, l)| m.contains("Mars/Olympus") && *l == line_of("timezone:")),
        "{findings:?}"
    );
}

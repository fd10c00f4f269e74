//! Integration tests: plans (intents, rendered steps) and golden plan comments.

use std::collections::BTreeMap;

use tkgops_domain::files::MemoryTree;
use tkgops_domain::workflow::markdown::render_plan;
use tkgops_domain::workflow::plan::EXECUTABLE_KINDS;
use tkgops_domain::workflow::{plan, Catalog, IntentKind, PlanInput, PlanStatus};

use crate::support::{assert_golden, example_repo_config, example_request};

fn tree(files: &[(&str, &str)]) -> MemoryTree {
    MemoryTree(
        files
            .iter()
            .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn run_plan(
    base: &MemoryTree,
    head: &MemoryTree,
    changed: &[&str],
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
    })
}

#[test]
fn builtin_catalog_loads_every_workflow() {
    let c = Catalog::builtin().expect("catalog");
    for intent in [
        "create",
        "upgrade",
        "attach-tmc",
        "rollout-packages",
        "delete",
    ] {
        assert!(
            c.workflow_for_intent(intent).is_some(),
            "no workflow for {intent}"
        );
    }
    let create = c.workflow("create-cluster").unwrap();
    assert!(create
        .steps
        .iter()
        .all(|s| EXECUTABLE_KINDS.contains(&s.kind.as_str())));
}

#[test]
fn create_plan_renders_cluster_mhcs_and_steps() {
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let base = tree(&[("tkgops.yaml", &repo)]);
    let head = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-a-prod/cluster-config.yaml", &cfg),
        ("clusters/team-a-prod/tkgops.yaml", &settings),
    ]);
    let p = run_plan(
        &base,
        &head,
        &[
            "clusters/team-a-prod/cluster-config.yaml",
            "clusters/team-a-prod/tkgops.yaml",
        ],
    );
    assert!(!p.has_errors(), "findings: {:#?}", p.all_findings());
    assert_eq!(p.clusters.len(), 1);
    let c = &p.clusters[0];
    assert_eq!(c.intent, IntentKind::Create);
    assert_eq!(c.status, PlanStatus::Ready);
    let ids: Vec<&str> = c.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "aws-preflight",
            "apply-cluster",
            "wait-cluster",
            "read-kubeconfig",
            "tmc-attach",
            "packages"
        ]
    );
    let manifests = c.steps[1].inputs["manifests"].as_str().unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(manifests)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 3, "Cluster + 2 MachineHealthChecks");
    assert_eq!(docs[0]["kind"], "Cluster");
    assert_eq!(docs[0]["spec"]["topology"]["class"], "tkg-aws-default");
    assert_eq!(docs[0]["spec"]["topology"]["version"], "v1.23.8+vmware.2");
    assert_eq!(docs[0]["spec"]["topology"]["controlPlane"]["replicas"], 3);
    assert_eq!(
        docs[0]["spec"]["topology"]["workers"]["machineDeployments"]
            .as_sequence()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(docs[1]["kind"], "MachineHealthCheck");
    assert_eq!(docs[2]["metadata"]["name"], "team-a-prod-control-plane");
    let pkgs = c.steps[5].inputs["packages"].as_array().unwrap();
    assert_eq!(pkgs[0]["name"], "cert-manager");
    assert_eq!(pkgs[1]["name"], "contour");
    let md = render_plan(&p, &Catalog::builtin().unwrap(), true).unwrap();
    assert!(
        !md.contains("example-bind-password"),
        "secret leaked into the plan"
    );
    assert_golden("plan-create.md", &md);
}

#[test]
fn invalid_request_is_blocked_with_rule_ids_on_lines() {
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let cfg = cfg
        .replace("CLUSTER_PLAN: prod", "CLUSTER_PLAN: dev")
        .replace(
            "IDENTITY_MANAGEMENT_TYPE: ldap",
            "IDENTITY_MANAGEMENT_TYPE: none",
        );
    let base = tree(&[("tkgops.yaml", &repo)]);
    let head = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-a-prod/cluster-config.yaml", &cfg),
        ("clusters/team-a-prod/tkgops.yaml", &settings),
    ]);
    let p = run_plan(&base, &head, &["clusters/team-a-prod/cluster-config.yaml"]);
    assert!(p.has_errors());
    assert_eq!(p.clusters[0].status, PlanStatus::Blocked);
    let rules: Vec<&str> = p.all_findings().iter().map(|f| f.rule.as_str()).collect();
    assert!(rules.contains(&"TKO-CLS-004"), "{rules:?}");
    assert!(rules.contains(&"TKO-CLS-006"), "{rules:?}");
    let md = render_plan(&p, &Catalog::builtin().unwrap(), true).unwrap();
    assert!(
        md.contains("clusters/team-a-prod/cluster-config.yaml:"),
        "finding without a line: {md}"
    );
    assert_golden("plan-invalid.md", &md);
}

#[test]
fn upgrade_packages_and_delete_are_planned_but_not_executable() {
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let base = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-a-prod/cluster-config.yaml", &cfg),
        ("clusters/team-a-prod/tkgops.yaml", &settings),
    ]);
    let upgraded = settings
        .replace("v1.23.8+vmware.2-tkg.1", "v1.23.10+vmware.1-tkg.1")
        .replace(
            "name: contour",
            "name: contour\n    version: 1.20.2+vmware.2-tkg.1",
        );
    let head = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-a-prod/cluster-config.yaml", &cfg),
        ("clusters/team-a-prod/tkgops.yaml", &upgraded),
    ]);
    let p = run_plan(&base, &head, &["clusters/team-a-prod/tkgops.yaml"]);
    let intents: Vec<&IntentKind> = p.clusters.iter().map(|c| &c.intent).collect();
    assert!(
        matches!(intents[0], IntentKind::Upgrade { .. }),
        "{intents:?}"
    );
    assert!(
        intents.contains(&&IntentKind::RolloutPackages),
        "{intents:?}"
    );
    assert!(
        p.clusters
            .iter()
            .all(|c| c.status == PlanStatus::NotYetExecutable),
        "{:#?}",
        p.clusters
    );

    let deleted = tree(&[("tkgops.yaml", &repo)]);
    let p = run_plan(
        &base,
        &deleted,
        &[
            "clusters/team-a-prod/cluster-config.yaml",
            "clusters/team-a-prod/tkgops.yaml",
        ],
    );
    assert_eq!(p.clusters[0].intent, IntentKind::Delete);
    assert_eq!(p.clusters[0].status, PlanStatus::NotYetExecutable);
}

#[test]
fn a_pull_request_cannot_relax_the_policy_it_is_checked_against() {
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let cfg = cfg.replace("CLUSTER_PLAN: prod", "CLUSTER_PLAN: dev");
    let relaxed = format!("{repo}\n").replace(
        "severities: {}",
        "severities: {TKO-CLS-004: off, TKO-CLS-005: off}",
    );
    let base = tree(&[("tkgops.yaml", &repo)]);
    let head = tree(&[
        ("tkgops.yaml", &relaxed),
        ("clusters/team-a-prod/cluster-config.yaml", &cfg),
        ("clusters/team-a-prod/tkgops.yaml", &settings),
    ]);
    let p = run_plan(
        &base,
        &head,
        &[
            "tkgops.yaml",
            "clusters/team-a-prod/cluster-config.yaml",
            "clusters/team-a-prod/tkgops.yaml",
        ],
    );
    assert!(
        p.all_findings().iter().any(|f| f.rule == "TKO-CLS-004"),
        "the PR's own tkgops.yaml must not apply"
    );
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("take effect after merge")));
}

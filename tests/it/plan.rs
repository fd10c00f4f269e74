//! Integration tests: plans (intents, rendered steps) and golden plan comments.

use tkgops_domain::files::MemoryTree;
use tkgops_domain::workflow::markdown::render_plan;
use tkgops_domain::workflow::{plan, Catalog, IntentKind, PlanInput, PlanStatus};

use crate::support::{assert_golden, example_repo_config, example_request, tree};

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
        executable: &tkgops::executors::executable_kinds(),
        repository: "acme/tkg-clusters",
        history: Default::default(),
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
    let executable = tkgops::executors::executable_kinds();
    assert!(create.steps.iter().all(|s| executable.contains(&s.kind)));
}

#[test]
fn create_plan_renders_the_class_based_cluster_and_steps() {
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
            "mc-preflight",
            "apply-cluster",
            "wait-cluster",
            "read-kubeconfig",
            "tmc-attach",
            "packages"
        ]
    );
    let manifests = c.steps[2].inputs.inputs_json()["manifests"]
        .as_str()
        .unwrap()
        .to_string();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&manifests)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    // Only the Cluster: its MachineHealthChecks come from the ClusterClass (§5).
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["kind"], "Cluster");
    assert_eq!(
        docs[0]["spec"]["topology"]["class"],
        "tkg-aws-default-v1.0.0"
    );
    // The CLI writes the TKR version; the TKR resolver rewrites it (§1).
    assert_eq!(
        docs[0]["spec"]["topology"]["version"],
        "v1.25.7+vmware.2-tkg.1"
    );
    assert_eq!(docs[0]["spec"]["topology"]["controlPlane"]["replicas"], 3);
    assert_eq!(
        docs[0]["spec"]["topology"]["workers"]["machineDeployments"]
            .as_sequence()
            .unwrap()
            .len(),
        3
    );
    assert_golden("cluster-team-a-prod.yaml", &manifests);
    let inputs = c.steps[6].inputs.inputs_json();
    let pkgs = inputs["packages"].as_array().unwrap();
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
            "NODE_MACHINE_TYPE: m5.xlarge",
            "NODE_MACHINE_TYPE: t3.small",
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
    assert!(rules.contains(&"TKO-CLS-003"), "{rules:?}");
    let md = render_plan(&p, &Catalog::builtin().unwrap(), true).unwrap();
    assert!(
        md.contains("clusters/team-a-prod/cluster-config.yaml:"),
        "finding without a line: {md}"
    );
    assert_golden("plan-invalid.md", &md);
}

#[test]
fn upgrades_package_changes_and_deletes_are_planned_to_run() {
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let older = settings.replace("v1.25.7+vmware.2-tkg.1", "v1.24.11+vmware.1-tkg.1");
    let base = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-a-prod/cluster-config.yaml", &cfg),
        ("clusters/team-a-prod/tkgops.yaml", &older),
    ]);
    let upgraded = settings.replace(
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
        p.clusters.iter().all(|c| c.status == PlanStatus::Ready),
        "{:#?}",
        p.clusters
    );

    // A values change is shown as a semantic diff of the PackageInstall.
    let revalued = settings.replace("type: LoadBalancer", "type: NodePort");
    let head = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-a-prod/cluster-config.yaml", &cfg),
        ("clusters/team-a-prod/tkgops.yaml", &revalued),
    ]);
    let same_tkr = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-a-prod/cluster-config.yaml", &cfg),
        ("clusters/team-a-prod/tkgops.yaml", &settings),
    ]);
    let p = run_plan(&same_tkr, &head, &["clusters/team-a-prod/tkgops.yaml"]);
    assert_eq!(p.clusters[0].intent, IntentKind::RolloutPackages);
    let d = &p.clusters[0].diffs;
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].object, "PackageInstall tanzu-system-ingress/contour");
    assert_eq!(
        (
            d[0].changes[0].path.as_str(),
            d[0].changes[0].from.as_str(),
            d[0].changes[0].to.as_str()
        ),
        ("spec.values.envoy.service.type", "LoadBalancer", "NodePort")
    );
    assert_eq!(
        p.clusters[0].summary.as_ref().unwrap().packages,
        ["contour values"]
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
    assert_eq!(p.clusters[0].status, PlanStatus::Ready);
    let kinds: Vec<&str> = p.clusters[0]
        .steps
        .iter()
        .map(|s| s.kind().as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "kube.check-owner",
            "tmc.detach",
            "kube.delete-cluster",
            "aws.remove-subnet-tags"
        ]
    );
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

/// The create plan of the example request against `catalog`.
fn example_create_plan(catalog: &Catalog) -> tkgops_domain::workflow::Plan {
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let base = tree(&[("tkgops.yaml", &repo)]);
    let head = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-a-prod/cluster-config.yaml", &cfg),
        ("clusters/team-a-prod/tkgops.yaml", &settings),
    ]);
    let changed = vec![
        "clusters/team-a-prod/cluster-config.yaml".to_string(),
        "clusters/team-a-prod/tkgops.yaml".to_string(),
    ];
    plan(&PlanInput {
        base: &base,
        head: &head,
        settings: &base,
        base_sha: "1111111111111111111111111111111111111111",
        head_sha: "2222222222222222222222222222222222222222",
        changed_paths: &changed,
        catalog,
        executable: &tkgops::executors::executable_kinds(),
        repository: "acme/tkg-clusters",
        history: Default::default(),
    })
}

/// Every template of the built-in catalog renders in strict mode: the manifests through a
/// create plan, the comments through the plan and run comments. A template added without being
/// rendered here fails the test.
#[test]
fn every_builtin_template_renders_in_strict_mode() {
    use tkgops_domain::workflow::markdown::{render_runs, NotRunView, RunView, StepRow};
    let catalog = Catalog::builtin().unwrap();
    let p = example_create_plan(&catalog);
    assert_eq!(
        p.clusters[0].status,
        PlanStatus::Ready,
        "{:#?}",
        p.clusters[0]
    );
    let mut rendered: Vec<String> = p.clusters[0]
        .manifests
        .iter()
        .map(|m| m.template.clone())
        .collect();
    let plan_md = render_plan(&p, &catalog, true).unwrap();
    rendered.push("comments/plan.md.hbs".into());
    // The cluster details (inline above, and as their own comment).
    let details = tkgops_domain::workflow::markdown::render_plan_details(&p, &catalog).unwrap();
    assert!(details[0].body.contains("kube.apply") && plan_md.contains("kube.apply"));
    rendered.push("comments/plan-cluster.md.hbs".into());
    let run = RunView {
        cluster: "team-a-prod".into(),
        workflow: "create-cluster".into(),
        state: "⏳ running".into(),
        steps: vec![StepRow {
            number: 1,
            title: "AWS preflight".into(),
            state: "⏳ running".into(),
            duration: "3s".into(),
            attempts: 1,
            detail: "1/6 checking region us-west-2".into(),
        }],
        summary: String::new(),
        succeeded: false,
        failed: false,
    };
    let not_run = NotRunView {
        cluster: "team-b".into(),
        intent: "upgrade".into(),
        reason: "blocked by validation errors".into(),
    };
    let run_md = render_runs(
        tkgops_domain::workflow::markdown::STICKY_MARKER,
        &"3".repeat(40),
        "⏳ running",
        &[run],
        &[not_run],
        Some(&plan_md),
        &catalog,
    )
    .unwrap();
    assert!(run_md.contains("1/6 checking region us-west-2") && run_md.contains("team-b"));
    rendered.push("comments/run.md.hbs".into());
    rendered.sort();
    rendered.dedup();
    assert_eq!(rendered, catalog.template_names());
}

/// A run comment over a fleet (a scheduled apply's wave of 1,000 clusters) stays inside
/// GitHub's 65,536 characters: succeeded runs by name, failed runs' step tables first, the
/// runs past the first `FULL_RUN_TABLES` without their tables.
#[test]
fn a_run_comment_over_a_fleet_lists_succeeded_runs_by_name() {
    use tkgops_domain::workflow::markdown::{render_runs, RunView, StepRow, FULL_RUN_TABLES};
    let catalog = Catalog::builtin().unwrap();
    let view = |i: usize, state: &str, succeeded: bool, failed: bool| RunView {
        cluster: format!("fleet-{i:04}"),
        workflow: "upgrade-cluster".into(),
        state: state.into(),
        steps: (1..=5)
            .map(|n| StepRow {
                number: n,
                title: format!("step {n} of cluster {i}"),
                state: "✅ succeeded".into(),
                duration: "10s".into(),
                attempts: 1,
                detail: "x".repeat(200),
            })
            .collect(),
        summary: String::new(),
        succeeded,
        failed,
    };
    let mut runs: Vec<RunView> = (0..950)
        .map(|i| view(i, "✅ succeeded", true, false))
        .collect();
    runs.extend((950..999).map(|i| view(i, "⏳ running", false, false)));
    runs.push(view(999, "❌ failed", false, true));
    let md = render_runs(
        "<!-- m -->",
        &"3".repeat(40),
        "⏳ running",
        &runs,
        &[],
        None,
        &catalog,
    )
    .unwrap();
    assert!(
        md.chars().count() < 65_536,
        "{} characters",
        md.chars().count()
    );
    assert!(md.contains("✅ 950 run(s) succeeded: `fleet-0000`, `fleet-0001`,"));
    assert!(
        md.contains("`fleet-0949`."),
        "the last succeeded run is named"
    );
    assert!(!md.contains("step 1 of cluster 0\n") && !md.contains("step 1 of cluster 0 "));
    // The failed run's table comes first, then the running ones' up to the limit.
    let failed = md.find("#### `fleet-0999`").unwrap();
    let running = md.find("#### `fleet-0950`").unwrap();
    assert!(failed < running);
    assert!(md.contains("step 5 of cluster 999"));
    let tables = md.matches("| # | Step |").count();
    assert_eq!(tables, FULL_RUN_TABLES);
    assert!(md.contains("#### `fleet-0998`: upgrade-cluster ⏳ running"));
    assert!(!md.contains("step 1 of cluster 998 "));
    // A handful of runs keep every table.
    let md = render_runs(
        "<!-- m -->",
        &"3".repeat(40),
        "✅ succeeded",
        &runs[..3],
        &[],
        None,
        &catalog,
    )
    .unwrap();
    assert_eq!(md.matches("| # | Step |").count(), 3);
    assert!(!md.contains("run(s) succeeded:"));
}

/// A broken operator template is a plan-time error that names the template and its line;
/// nothing of that cluster runs.
#[test]
fn a_template_error_blocks_the_plan_naming_template_and_line() {
    let mut files: Vec<(String, String)> = ["create-cluster", "upgrade-cluster", "attach-tmc"]
        .iter()
        .map(|w| {
            let p = format!("workflows/{w}.yaml");
            (
                p.clone(),
                std::fs::read_to_string(crate::support::root().join(&p)).unwrap(),
            )
        })
        .collect();
    let p = "templates/comments/plan.md.hbs".to_string();
    let text = std::fs::read_to_string(crate::support::root().join(&p)).unwrap();
    files.push((p, text));
    files.push((
        "templates/manifests/cluster.yaml.hbs".into(),
        "apiVersion: cluster.x-k8s.io/v1beta1\nkind: Cluster\nmetadata:\n  name: {{cluster.nmae}}\n"
            .into(),
    ));
    let catalog = Catalog::from_files(files).unwrap();
    let p = example_create_plan(&catalog);
    let c = &p.clusters[0];
    assert_eq!(c.status, PlanStatus::Blocked);
    assert!(c.steps.is_empty());
    assert!(p.has_errors());
    let f = c
        .findings
        .iter()
        .find(|f| f.rule == "TKGOPS-TEMPLATE")
        .unwrap_or_else(|| panic!("{:#?}", c.findings));
    assert_eq!(
        (f.path.as_str(), f.line),
        ("templates/manifests/cluster.yaml.hbs", Some(4))
    );
    assert!(
        f.message.contains("step apply-cluster") && f.message.contains("cluster.nmae"),
        "{}",
        f.message
    );
    let md = render_plan(&p, &catalog, true).unwrap();
    assert!(
        md.contains("`templates/manifests/cluster.yaml.hbs:4` **TKGOPS-TEMPLATE** error"),
        "{md}"
    );
}

/// Workflow files are checked when the catalog loads: an unknown step kind and manifests on a
/// step that applies none are refused with the file named.
#[test]
fn workflow_files_with_unknown_kinds_or_misplaced_manifests_are_refused() {
    let wf = |kind: &str, manifests: &str| {
        vec![(
            "workflows/x.yaml".to_string(),
            format!("name: x\nintent: create\ndescription: d\nsteps:\n  - id: a\n    kind: {kind}\n    title: t\n    timeout: 1m\n{manifests}"),
        )]
    };
    let err = Catalog::from_files(wf("kube.explode", ""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("workflows/x.yaml") && err.contains("kube.explode"),
        "{err}"
    );
    let err = Catalog::from_files(wf("kube.apply", ""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("kube.apply needs manifests"), "{err}");
    let err = Catalog::from_files(wf("tmc.attach", "    manifests: [manifests/x.yaml.hbs]\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not apply manifests"), "{err}");
}

/// The Cluster of a prod, air-gapped request behind a proxy, with the 2.x-only variables:
/// registry and proxy trust, `proxy`, `imageRepository`, `*ExtraArgs`, `podSecurityStandard`,
/// an identity reference, security-group overrides (key `controlPlane`), prodcc worker
/// overrides and worker counts per AZ (tkg2-aws-class-based.md §2, §3).
#[test]
fn prod_air_gapped_cluster_renders_what_the_cli_renders() {
    let repo = example_repo_config();
    let mut cfg = std::fs::read_to_string(
        crate::support::root().join("tests/fixtures/validate/airgap-prod.yaml"),
    )
    .unwrap();
    cfg.push_str(concat!(
        "TKG_HTTP_PROXY: http://proxy.corp.example:3128\n",
        "TKG_HTTPS_PROXY: http://proxy.corp.example:3128\n",
        "TKG_NO_PROXY: .corp.example, 10.0.0.0/8\n",
        "APISERVER_EXTRA_ARGS: \"tls-min-version=VersionTLS12;audit-log-maxage=30\"\n",
        "WORKER_KUBELET_EXTRA_ARGS: max-pods=60\n",
        "POD_SECURITY_STANDARD_ENFORCE: restricted\n",
        "AWS_IDENTITY_REF_NAME: tkg-team-a\n",
        "AWS_SECURITY_GROUP_CONTROLPLANE: sg-0cp\n",
        "AWS_SECURITY_GROUP_NODE: sg-0node\n",
        "NODE_MACHINE_TYPE_1: m5.2xlarge\n",
        "WORKER_MACHINE_COUNT_0: 2\n",
        "WORKER_MACHINE_COUNT_1: 1\n",
        "WORKER_MACHINE_COUNT_2: 1\n",
        "CONTROL_PLANE_NODE_LABELS: tier=control,zone=restricted\n",
    ));
    let settings = "managementCluster: mc-aws-1\ntkr: v1.24.11+vmware.1-tkg.1\n";
    let base = tree(&[("tkgops.yaml", &repo)]);
    let head = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/airgap-prod/cluster-config.yaml", &cfg),
        ("clusters/airgap-prod/tkgops.yaml", settings),
    ]);
    let p = run_plan(&base, &head, &["clusters/airgap-prod/cluster-config.yaml"]);
    assert!(!p.has_errors(), "findings: {:#?}", p.all_findings());
    let manifests = p.clusters[0].steps[2].inputs.inputs_json()["manifests"]
        .as_str()
        .unwrap()
        .to_string();
    let cluster: serde_json::Value = serde_yaml::from_str(&manifests).unwrap();
    let vars = cluster["spec"]["topology"]["variables"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "proxy",
            "cni",
            "controlPlaneCertificateRotation",
            "imageRepository",
            "auditLogging",
            "apiServerExtraArgs",
            "workerKubeletExtraArgs",
            "trust",
            "podSecurityStandard",
            "region",
            "sshKeyName",
            "loadBalancerSchemeInternal",
            "bastion",
            "network",
            "identityRef",
            "worker",
            "controlPlane"
        ],
        "the CLI's emission order (§2)"
    );
    let var = |n: &str| vars.iter().find(|v| v["name"] == n).unwrap()["value"].clone();
    assert_eq!(
        var("proxy")["noProxy"],
        serde_json::json!([".corp.example", "10.0.0.0/8"])
    );
    assert!(var("proxy").get("systemWide").is_none());
    assert_eq!(var("imageRepository")["tlsCertificateValidation"], true);
    assert_eq!(
        var("trust")["additionalTrustedCAs"][0]["name"],
        "imageRepository"
    );
    assert_eq!(var("apiServerExtraArgs")["tls-min-version"], "VersionTLS12");
    assert_eq!(
        var("network")["securityGroupOverrides"]["controlPlane"],
        "sg-0cp"
    );
    let mds = cluster["spec"]["topology"]["workers"]["machineDeployments"]
        .as_array()
        .unwrap();
    assert_eq!(mds[0]["replicas"], 2);
    assert_eq!(
        mds[1]["variables"]["overrides"][0]["value"]["instanceType"],
        "m5.2xlarge"
    );
    assert_golden("cluster-airgap-prod.yaml", &manifests);
}

/// A grouped pull request of 50 new clusters (e.g. a schedule's bump of a fleet): the inline
/// plan would exceed GitHub's 65,536 characters, so the plan is a summary (one row per
/// cluster) linking one details comment per cluster, each under the limit and keyed by its own
/// marker.
#[test]
fn a_grouped_pull_request_of_fifty_clusters_stays_complete() {
    use tkgops_domain::workflow::markdown::{
        detail_marker, render_plan_details, render_plan_summary, INLINE_PLAN_LIMIT,
    };
    let catalog = Catalog::builtin().unwrap();
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let base = tree(&[("tkgops.yaml", &repo)]);
    let mut files: Vec<(String, String)> = vec![("tkgops.yaml".into(), repo.clone())];
    let mut changed = Vec::new();
    for i in 0..50 {
        let name = format!("team-{i:02}-prod");
        let c = format!("clusters/{name}/cluster-config.yaml");
        let s = format!("clusters/{name}/tkgops.yaml");
        files.push((c.clone(), cfg.replace("team-a-prod", &name)));
        files.push((s.clone(), settings.clone()));
        changed.push(c);
        changed.push(s);
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let head = tree(&refs);
    let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
    let p = run_plan(&base, &head, &changed);
    assert_eq!(p.clusters.len(), 50);
    assert!(
        p.clusters.iter().all(|c| c.status == PlanStatus::Ready),
        "{:?}",
        p.all_findings()
    );

    let inline = render_plan(&p, &catalog, true).unwrap();
    assert!(
        inline.chars().count() > INLINE_PLAN_LIMIT,
        "the inline plan is {} characters",
        inline.chars().count()
    );
    let details = render_plan_details(&p, &catalog).unwrap();
    assert_eq!(details.len(), 50);
    for d in &details {
        assert!(d.body.starts_with(&detail_marker(&d.cluster)), "{}", d.body);
        assert!(
            d.body.chars().count() < 65_536,
            "{} is {} characters",
            d.cluster,
            d.body.len()
        );
    }
    let anchors: std::collections::BTreeMap<String, String> = details
        .iter()
        .enumerate()
        .map(|(i, d)| (d.cluster.clone(), format!("#issuecomment-{}", 1000 + i)))
        .collect();
    let summary = render_plan_summary(&p, &catalog, &anchors).unwrap();
    assert!(summary.chars().count() < 65_536);
    assert_eq!(summary.matches("| ✅ runs after merge |").count(), 50);
    assert!(
        summary.contains("[`team-49-prod`](#issuecomment-1049)"),
        "{summary}"
    );
    assert_golden("plan-50-clusters.md", &summary);
    assert_golden("plan-50-clusters-detail.md", &details[0].body);
}

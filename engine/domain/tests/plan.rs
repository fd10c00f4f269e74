//! Plans of the example requests: intents and rendered steps (the Cluster manifests the
//! templates render), refusals with their rule and line, the plan cap, template and workflow
//! errors, and the golden plan comments and manifests (`tests/golden/`). Domain only: in-memory
//! commits, the built-in catalog, no bot.

mod common;

use tkgops_domain::files::MemoryTree;
use tkgops_domain::workflow::markdown::render_plan;
use tkgops_domain::workflow::{plan, Catalog, IntentKind, PlanInput, PlanStatus};

use common::{assert_golden, example_repo_config, example_request, executable, tree};

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
        executable: &executable(),
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
    let executable = executable();
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
    create_plan_with(catalog, |c| c)
}

/// The create plan of the example request with its configuration file changed by `edit`.
fn create_plan_with(
    catalog: &Catalog,
    edit: impl Fn(String) -> String,
) -> tkgops_domain::workflow::Plan {
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let cfg = edit(cfg);
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
        executable: &executable(),
        repository: "acme/tkg-clusters",
        history: Default::default(),
    })
}

/// The ClusterBootstrap the Tanzu CLI renders for each CNI (tanzu-framework
/// `providers/yttcb/clusterbootstrap.yaml`): none for Antrea as the TKR ships it; an
/// AntreaConfig and `antrea*` for customised Antrea; a CalicoConfig and `calico*` for calico;
/// and `CNI: none` refused, since the addons manager refuses a ClusterBootstrap without a CNI.
#[test]
fn the_cluster_bootstrap_follows_the_cni() {
    let catalog = Catalog::builtin().unwrap();
    let rendered = |edit: &dyn Fn(String) -> String| -> String {
        let p = create_plan_with(&catalog, edit);
        assert_eq!(
            p.clusters[0].status,
            PlanStatus::Ready,
            "{:#?}",
            p.clusters[0]
        );
        p.clusters[0]
            .manifests
            .iter()
            .filter(|m| m.template != "manifests/cluster.yaml.hbs")
            .map(|m| m.yaml.clone())
            .collect::<Vec<_>>()
            .join("")
    };
    assert_eq!(
        rendered(&|c| c),
        "",
        "Antrea as shipped: the TKR's template"
    );
    assert_golden(
        "bootstrap-calico.yaml",
        &rendered(&|c| c.replace("CNI: antrea", "CNI: calico")),
    );
    assert_golden(
        "bootstrap-antrea-customised.yaml",
        &rendered(&|c| format!("{c}ANTREA_NO_SNAT: true\nANTREA_TRACEFLOW: false\n")),
    );
    let none = create_plan_with(&catalog, |c| c.replace("CNI: antrea", "CNI: none"));
    assert_eq!(none.clusters[0].status, PlanStatus::Blocked);
    let f = none
        .all_findings()
        .into_iter()
        .find(|f| f.rule == "TKGOPS-UNSUPPORTED")
        .expect("CNI none refused");
    assert!(f.message.contains("package can't be nil"), "{}", f.message);
    assert!(f.line.is_some());
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
    // Calico: the CLI's ClusterBootstrap and its provider configuration.
    let calico = create_plan_with(&catalog, |c| c.replace("CNI: antrea", "CNI: calico"));
    assert_eq!(calico.clusters[0].status, PlanStatus::Ready);
    rendered.extend(
        calico.clusters[0]
            .manifests
            .iter()
            .map(|m| m.template.clone()),
    );
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
        &tkgops_domain::workflow::markdown::RunHeader {
            marker: tkgops_domain::workflow::markdown::STICKY_MARKER,
            commit_sha: &"3".repeat(40),
            overall: "⏳ running",
            notes: &[],
        },
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
        &tkgops_domain::workflow::markdown::RunHeader {
            marker: "<!-- m -->",
            commit_sha: &"3".repeat(40),
            overall: "⏳ running",
            notes: &[],
        },
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
        &tkgops_domain::workflow::markdown::RunHeader {
            marker: "<!-- m -->",
            commit_sha: &"3".repeat(40),
            overall: "✅ succeeded",
            notes: &[],
        },
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
                std::fs::read_to_string(common::root().join(&p)).unwrap(),
            )
        })
        .collect();
    for p in [
        "templates/comments/plan.md.hbs",
        "templates/manifests/bootstrap-config.yaml.hbs",
        "templates/manifests/cluster-bootstrap.yaml.hbs",
    ] {
        let text = std::fs::read_to_string(common::root().join(p)).unwrap();
        files.push((p.to_string(), text));
    }
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
/// overrides and worker counts per AZ (docs/tkg2-class-based.md §2, §3).
#[test]
fn prod_air_gapped_cluster_renders_what_the_cli_renders() {
    let repo = example_repo_config();
    let mut cfg = std::fs::read_to_string(common::fixture("validate/airgap-prod.yaml")).unwrap();
    cfg.push_str(concat!(
        "TKG_HTTP_PROXY_ENABLED: true\n",
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
    let docs_of = |id: &str| -> Vec<serde_json::Value> {
        let step = p.clusters[0].steps.iter().find(|s| s.id == id).unwrap();
        let manifests = step.inputs.inputs_json()["manifests"]
            .as_str()
            .unwrap()
            .to_string();
        serde_yaml::Deserializer::from_str(&manifests)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    };
    // The proxy reaches the AWS EBS CSI driver through the CLI's ClusterBootstrap
    // (tanzu-framework providers/yttcb/clusterbootstrap.yaml), applied before the Cluster.
    let config = docs_of("apply-bootstrap-config");
    assert_eq!(config.len(), 1, "{config:#?}");
    assert_eq!(config[0]["kind"], "AwsEbsCSIConfig");
    assert_eq!(
        config[0]["spec"]["awsEBSCSIDriver"]["httpProxy"],
        "http://proxy.corp.example:3128"
    );
    assert_eq!(
        config[0]["spec"]["awsEBSCSIDriver"]["deploymentReplicas"],
        3
    );
    let docs = docs_of("apply-cluster");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ClusterBootstrap", "Cluster"]);
    assert_eq!(docs[0]["spec"]["csi"]["refName"], "aws-ebs-csi*");
    assert!(
        docs[0]["spec"].get("cni").is_none(),
        "Antrea comes from the TKR"
    );
    assert_eq!(
        docs[0]["metadata"]["annotations"]["tkg.tanzu.vmware.com/add-missing-fields-from-tkr"],
        "v1.24.11---vmware.1-tkg.1"
    );
    let cluster = docs[1].clone();
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
        serde_json::json!([
            ".corp.example",
            "10.0.0.0/8",
            "100.64.0.0/13",
            "100.96.0.0/11",
            "10.0.0.0/16",
            "169.254.0.0/16",
            "127.0.0.1",
            "localhost",
            ".svc",
            ".svc.cluster.local"
        ]),
        "TKG_NO_PROXY with what the CLI adds: the file's service and pod CIDRs, config_default's \
         AWS_VPC_CIDR, the link-local range, localhost and the service suffixes"
    );
    assert!(var("proxy").get("systemWide").is_none());
    assert!(
        var("imageRepository")
            .get("tlsCertificateValidation")
            .is_none(),
        "emitted only when verification is skipped (CVA:399-409)"
    );
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
    // What the CLI renders with the Cluster: the ClusterBootstrap, then the Cluster.
    let step = p.clusters[0]
        .steps
        .iter()
        .find(|s| s.id == "apply-cluster")
        .unwrap();
    let manifests = step.inputs.inputs_json()["manifests"]
        .as_str()
        .unwrap()
        .to_string();
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

/// The example repository with a second management cluster and an `apply` schedule with two
/// waves, plus a label-scoped rule override.
fn repo_with_schedule() -> String {
    example_repo_config().replace(
        "tmc:\n",
        "  - name: mc-aws-2\n    kubeconfig: {file: /etc/tkgops/mc-aws-2.kubeconfig}\n    tkgVersion: \"2.2\"\n    identityManagementType: ldap\n    defaults:\n      AWS_REGION: us-west-2\n      AWS_SSH_KEY_NAME: tkg-kp\ntmc:\n",
    ) + "schedules:\n  - name: weekly-apply\n    cron: \"0 2 * * SAT\"\n    window: 4h\n    selector: {matchLabels: {env: prod}}\n    action: apply\n    waves:\n      - {name: canary, selector: {matchLabels: {tier: canary}}}\n      - {name: rest, selector: {}}\n"
}

/// The example cluster at the base; `cfg` and `settings` at the head.
fn change_existing(
    repo: &str,
    cfg: &str,
    settings: &str,
    changed: &[&str],
) -> tkgops_domain::workflow::Plan {
    let (base_cfg, base_settings) = example_request();
    let base = tree(&[
        ("tkgops.yaml", repo),
        ("clusters/team-a-prod/cluster-config.yaml", &base_cfg),
        ("clusters/team-a-prod/tkgops.yaml", &base_settings),
    ]);
    let head = tree(&[
        ("tkgops.yaml", repo),
        ("clusters/team-a-prod/cluster-config.yaml", cfg),
        ("clusters/team-a-prod/tkgops.yaml", settings),
    ]);
    run_plan(&base, &head, changed)
}

/// Immutable placement (issue 16 item 4): a change of an existing cluster's managementCluster,
/// NAMESPACE or CLUSTER_NAME is refused by TKGOPS-PLACEMENT on its file and line, and nothing
/// runs. Before, a managementCluster change planned nothing at all and a NAMESPACE change
/// "no action", and a later resize then created a second Cluster elsewhere.
#[test]
fn an_existing_clusters_management_cluster_namespace_and_name_never_change() {
    let repo = repo_with_schedule();
    let (cfg, settings) = example_request();
    let moved = settings.replace("managementCluster: mc-aws-1", "managementCluster: mc-aws-2");
    let p = change_existing(&repo, &cfg, &moved, &["clusters/team-a-prod/tkgops.yaml"]);
    assert!(p.has_errors());
    assert_eq!(p.clusters.len(), 1, "{:#?}", p.clusters);
    assert_eq!(p.clusters[0].status, PlanStatus::Blocked);
    assert!(p.digests().is_empty(), "nothing runs");
    let f = p
        .all_findings()
        .into_iter()
        .find(|f| f.rule == "TKGOPS-PLACEMENT")
        .expect("a placement finding")
        .to_string();
    assert!(
        f.starts_with("clusters/team-a-prod/tkgops.yaml:2: TKGOPS-PLACEMENT error: managementCluster of the existing cluster team-a-prod changes from mc-aws-1 to mc-aws-2: refused."),
        "{f}"
    );
    let md = render_plan(&p, &Catalog::builtin().unwrap(), true).unwrap();
    assert!(md.contains("TKGOPS-PLACEMENT"), "{md}");
    assert!(md.contains("clusters/team-a-prod/tkgops.yaml:2"), "{md}");

    // NAMESPACE (with a resize in the same change: still nothing runs) and CLUSTER_NAME.
    for (var, old_line, new_line, said) in [
        (
            "NAMESPACE",
            "NAMESPACE: default",
            "NAMESPACE: team-a",
            "the namespace of the existing cluster team-a-prod changes from default to team-a (NAMESPACE): refused.",
        ),
        (
            "CLUSTER_NAME",
            "CLUSTER_NAME: team-a-prod",
            "CLUSTER_NAME: team-a-prod-2",
            "CLUSTER_NAME of the existing cluster changes from team-a-prod to team-a-prod-2: refused.",
        ),
    ] {
        let changed_cfg = cfg
            .replace(old_line, new_line)
            .replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 6");
        let line = changed_cfg
            .lines()
            .position(|l| l == new_line)
            .map(|i| i + 1)
            .unwrap();
        let p = change_existing(
            &repo,
            &changed_cfg,
            &settings,
            &["clusters/team-a-prod/cluster-config.yaml"],
        );
        assert_eq!(p.clusters.len(), 1, "{var}: {:#?}", p.clusters);
        assert_eq!(p.clusters[0].status, PlanStatus::Blocked, "{var}");
        assert!(p.digests().is_empty(), "{var}: nothing runs");
        let f = p
            .all_findings()
            .into_iter()
            .find(|f| f.rule == "TKGOPS-PLACEMENT")
            .unwrap_or_else(|| panic!("{var}: {:#?}", p.all_findings()))
            .clone();
        assert_eq!(f.path, "clusters/team-a-prod/cluster-config.yaml");
        assert_eq!(f.line, Some(line as u32), "{var}");
        assert!(f.message.starts_with(said), "{}", f.message);
    }
    // The policy cannot lower it.
    let lowered = repo.replace("severities: {}", "severities: {TKGOPS-PLACEMENT: off}");
    let p = change_existing(
        &lowered,
        &cfg,
        &moved,
        &["clusters/team-a-prod/tkgops.yaml"],
    );
    assert!(p.has_errors());
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("TKGOPS-PLACEMENT to `off`")),
        "{:?}",
        p.notes
    );
}

/// A label change of an existing cluster is listed with what it changes (issue 16 item 4):
/// the schedules and waves that select it, and the label-scoped rule overrides that apply.
#[test]
fn a_label_change_is_listed_with_the_schedules_waves_and_overrides_it_changes() {
    let repo = repo_with_schedule();
    let (cfg, settings) = example_request();
    // team-a-prod (env: prod) is in wave `rest`; tier: canary moves it into the canary wave.
    let canary = settings.replace("  team: team-a", "  team: team-a\n  tier: canary");
    let p = change_existing(&repo, &cfg, &canary, &["clusters/team-a-prod/tkgops.yaml"]);
    assert!(!p.has_errors(), "{:#?}", p.all_findings());
    let note = p
        .notes
        .iter()
        .find(|n| n.contains("The labels of the existing cluster `team-a-prod` change"))
        .unwrap_or_else(|| panic!("{:#?}", p.notes));
    assert!(
        note.contains("(`env=prod`, `team=team-a` → `env=prod`, `team=team-a`, `tier=canary`)"),
        "{note}"
    );
    assert!(
        note.contains("schedule `weekly-apply` (`action: apply`: upgrades without a pull request) moves it from wave `rest` to wave `canary`"),
        "{note}"
    );
    let md = render_plan(&p, &Catalog::builtin().unwrap(), true).unwrap();
    assert!(
        md.contains("moves it from wave `rest` to wave `canary`"),
        "{md}"
    );
    // env: dev leaves the schedule and puts the cluster under the dev rule override.
    let dev = settings.replace("env: prod", "env: dev");
    let p = change_existing(&repo, &cfg, &dev, &["clusters/team-a-prod/tkgops.yaml"]);
    let note = p
        .notes
        .iter()
        .find(|n| n.contains("The labels of the existing cluster"))
        .unwrap_or_else(|| panic!("{:#?}", p.notes));
    assert!(note.contains("schedule `weekly-apply` (`action: apply`: upgrades without a pull request) no longer selects it (it was in wave `rest`)"), "{note}");
    assert!(note.contains("the rule override `rules.overrides[0]` (`env=dev`; TKO-CLS-004: warning, TKO-CLS-005: warning) now applies to it"), "{note}");
}

/// Security rules cannot be turned off (issue 16 item 8): the trusted policy lowering
/// TKGOPS-SECRET and a label override lowering TKGOPS-NAMESPACE leave both errors, and the plan
/// names each override and where it is.
#[test]
fn a_policy_lowering_a_security_rule_is_named_in_the_plan_and_ignored() {
    let repo = example_repo_config().replace("severities: {}", "severities: {TKGOPS-SECRET: off}")
        + "    - matchLabels: {team: team-a}\n      severities: {TKGOPS-NAMESPACE: off}\n";
    let (cfg, settings) = example_request();
    let cfg = format!("{cfg}AWS_SECRET_ACCESS_KEY: abcdefgh12345678\n")
        .replace("NAMESPACE: default", "NAMESPACE: kube-system");
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
    let errors: Vec<&str> = p
        .all_findings()
        .into_iter()
        .filter(|f| f.severity == tkgops_domain::request::Severity::Error)
        .map(|f| f.rule.as_str())
        .collect();
    assert!(errors.contains(&"TKGOPS-SECRET"), "{errors:?}");
    assert!(errors.contains(&"TKGOPS-NAMESPACE"), "{errors:?}");
    assert_eq!(p.clusters[0].status, PlanStatus::Blocked);
    let line = |key: &str| {
        repo.lines()
            .position(|l| l.contains(key))
            .map(|i| i + 1)
            .unwrap()
    };
    let md = render_plan(&p, &Catalog::builtin().unwrap(), true).unwrap();
    for expected in [
        format!("The policy tries to set the security rule TKGOPS-SECRET to `off` (rules.severities, tkgops.yaml:{}): security rules cannot be lowered, so it stays an error.", line("TKGOPS-SECRET")),
        format!("The policy tries to set the security rule TKGOPS-NAMESPACE to `off` (rules.overrides[1] (matchLabels team=team-a), tkgops.yaml:{}): security rules cannot be lowered, so it stays an error.", line("TKGOPS-NAMESPACE")),
    ] {
        assert!(p.notes.contains(&expected), "{:#?}", p.notes);
        assert!(md.contains(&expected), "{md}");
    }
    assert!(!md.contains("abcdefgh12345678"), "the secret leaked: {md}");
}

/// A proxy password never reaches the plan (issue 16 item 9): the request is blocked by
/// TKGOPS-SECRET, and neither the comment, nor the plan's JSON, nor a step input, nor a
/// manifest holds the value; before, it was rendered into the Cluster's `proxy` variable.
#[test]
fn a_proxy_password_never_reaches_the_plan() {
    const PASS: &str = "Pr0xy-Pa55word-Never-Printed";
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let proxied = format!(
        "{cfg}TKG_HTTP_PROXY_ENABLED: \"true\"\nTKG_HTTP_PROXY: http://svc-tkg:{PASS}@proxy.corp:3128\nTKG_HTTPS_PROXY: http://svc-tkg:{PASS}@proxy.corp:3128\nTKG_NO_PROXY: 10.0.0.0/16\n"
    );
    let catalog = Catalog::builtin().unwrap();
    // A new cluster, and a change of an existing one.
    let base = tree(&[("tkgops.yaml", &repo)]);
    let head = tree(&[
        ("tkgops.yaml", &repo),
        ("clusters/team-a-prod/cluster-config.yaml", &proxied),
        ("clusters/team-a-prod/tkgops.yaml", &settings),
    ]);
    let created = run_plan(
        &base,
        &head,
        &[
            "clusters/team-a-prod/cluster-config.yaml",
            "clusters/team-a-prod/tkgops.yaml",
        ],
    );
    let changed = change_existing(
        &repo,
        &proxied.replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 6"),
        &settings,
        &["clusters/team-a-prod/cluster-config.yaml"],
    );
    for p in [created, changed] {
        let secrets: Vec<String> = p
            .all_findings()
            .into_iter()
            .filter(|f| f.rule == "TKGOPS-SECRET")
            .map(|f| f.to_string())
            .collect();
        assert_eq!(secrets.len(), 2, "{secrets:#?}");
        assert!(secrets[0].contains(": TKGOPS-SECRET error: TKG_HTTP_PROXY holds a proxy URL with a user name and password"), "{secrets:#?}");
        assert!(
            p.clusters.iter().all(|c| c.status == PlanStatus::Blocked
                && c.steps.is_empty()
                && c.manifests.is_empty()),
            "{:#?}",
            p.clusters
        );
        let md = render_plan(&p, &catalog, true).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        for text in [&md, &json] {
            assert!(
                !text.contains(PASS) && !text.contains("svc-tkg"),
                "the proxy password leaked: {text}"
            );
        }
    }
}

/// A change touching more clusters than `plan.maxClusters` (default 200) is blocked as a whole
/// (issue 16 item 9): no cluster is planned, one TKGOPS-PLAN-SIZE error says why, and the plan
/// fits one comment (the bot posts no details comment per cluster). The bot's own wave commits
/// are planned without the cap.
#[test]
fn a_change_touching_more_clusters_than_the_cap_is_blocked_in_one_comment() {
    use tkgops_domain::workflow::markdown::{render_plan_details, INLINE_PLAN_LIMIT};
    let catalog = Catalog::builtin().unwrap();
    let repo = example_repo_config();
    let (cfg, settings) = example_request();
    let fleet = |n: usize| -> (Vec<(String, String)>, Vec<String>) {
        let mut files = vec![("tkgops.yaml".to_string(), repo.clone())];
        let mut changed = Vec::new();
        for i in 0..n {
            let name = format!("team-{i:03}-prod");
            let c = format!("clusters/{name}/cluster-config.yaml");
            let s = format!("clusters/{name}/tkgops.yaml");
            files.push((c.clone(), cfg.replace("team-a-prod", &name)));
            files.push((s.clone(), settings.clone()));
            changed.push(c);
            changed.push(s);
        }
        (files, changed)
    };
    let base = tree(&[("tkgops.yaml", &repo)]);
    let (files, changed) = fleet(201);
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let head = tree(&refs);
    let changed_refs: Vec<&str> = changed.iter().map(String::as_str).collect();
    let p = run_plan(&base, &head, &changed_refs);
    assert!(
        p.clusters.is_empty(),
        "{} clusters planned",
        p.clusters.len()
    );
    assert!(p.digests().is_empty());
    let f = p.all_findings();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(
        f[0].to_string(),
        "clusters/: TKGOPS-PLAN-SIZE error: this change touches 201 clusters (`team-000-prod`, `team-001-prod`, `team-002-prod`, `team-003-prod`, `team-004-prod`, …); one plan covers at most 200 (plan.maxClusters in the default branch's tkgops.yaml). Nothing is planned or run: split the change into pull requests of at most 200 clusters."
    );
    let md = render_plan(&p, &catalog, true).unwrap();
    assert!(md.chars().count() < INLINE_PLAN_LIMIT, "one comment");
    assert!(md.contains("TKGOPS-PLAN-SIZE"), "{md}");
    assert!(render_plan_details(&p, &catalog).unwrap().is_empty());

    // The cap is the policy's: 3 clusters with maxClusters 2 are blocked, 2 are planned.
    let small = format!("{repo}plan:\n  maxClusters: 2\n");
    let base = tree(&[("tkgops.yaml", &small)]);
    let (files, changed) = fleet(3);
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let head = tree(&refs);
    let changed_refs: Vec<&str> = changed.iter().map(String::as_str).collect();
    let p = run_plan(&base, &head, &changed_refs);
    assert!(p.clusters.is_empty());
    assert!(p.all_findings()[0]
        .message
        .contains("one plan covers at most 2"));
    let p = run_plan(&base, &head, &changed_refs[..4]);
    assert_eq!(p.clusters.len(), 2);
    assert!(!p.has_errors(), "{:#?}", p.all_findings());

    // The bot's own wave commits (plan_unbounded) are not capped.
    let changed: Vec<String> = changed_refs.iter().map(|s| s.to_string()).collect();
    let p = tkgops_domain::workflow::plan_unbounded(&PlanInput {
        base: &base,
        head: &head,
        settings: &base,
        base_sha: "1111111111111111111111111111111111111111",
        head_sha: "2222222222222222222222222222222222222222",
        changed_paths: &changed,
        catalog: &catalog,
        executable: &executable(),
        repository: "acme/tkg-clusters",
        history: Default::default(),
    });
    assert_eq!(p.clusters.len(), 3);
    assert!(!p.has_errors(), "{:#?}", p.all_findings());
}

//! Day 2: upgrade, resize and delete plans (refusals, machine impact, estimates), and an
//! upgrade through the bot on the emulated management cluster with a restart between phases.

use std::time::Duration;
use tkgops_domain::files::MemoryTree;

use tkgops_domain::workflow::markdown::render_plan;
use tkgops_domain::workflow::{plan, Catalog, IntentKind, PlanInput, PlanStatus, RolloutHistory};
use tkgops_emulators::kube::Gvr;
use tkgops_engine::store::{RunState, SledStore, Store};
use tkgops_sandbox::{request_files, Timings, APPROVER, MANAGEMENT_CLUSTER};

use crate::e2e::{bot_comments, head_of, spawn_serve, start_env};
use crate::support::{assert_golden, example_repo_config, example_request, tree};

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
        executable: &tkgops::executors::executable_kinds(),
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
    // The Cluster is applied again with the new replicas.
    let apply = c
        .steps
        .iter()
        .find(|s| s.kind().as_str() == "kube.apply")
        .unwrap();
    let manifests = apply.inputs.inputs_json()["manifests"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(manifests.contains("replicas: 2"), "{manifests}");

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

/// The upgrade story through the bot (the real `tkgops serve` binary): a cluster created at
/// v1.24.11 is upgraded to v1.25.7 by a second pull request. The bot is killed (SIGKILL) once
/// the control plane runs the new version and started again: the run resumes without patching
/// again, and the PR shows every phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_runs_phase_by_phase_and_resumes_after_a_kill() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let spawn_bot = || spawn_serve(&env, &timings);
    let mut bot = spawn_bot();

    let (_, files) = request_files(None, &env.vpc);
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(p, c)| (p, c.replace(NEW_TKR, OLD_TKR)))
        .collect();
    create_through_a_pull_request(&env, &files).await;
    assert_eq!(
        crate::e2e::kcp_version(&env, "team-a-prod"),
        "v1.24.11+vmware.1"
    );

    // The upgrade pull request.
    let settings = files
        .iter()
        .find(|(p, _)| p.ends_with("/tkgops.yaml") && p.starts_with("clusters/"))
        .unwrap();
    let bumped = vec![(settings.0.clone(), settings.1.replace(OLD_TKR, NEW_TKR))];
    let pr2 = env
        .open_pull_request("upgrade-team-a-prod", "Upgrade team-a-prod", &bumped)
        .unwrap();
    let head2 = head_of(&env, "upgrade-team-a-prod");
    let plan_state = env
        .wait_status(&head2, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    let plan_comment = bot_comments(&env, pr2).remove(0);
    assert_eq!(plan_state, "success", "{plan_comment}");
    assert!(
        plan_comment.contains("6 node(s) replaced one by one"),
        "{plan_comment}"
    );
    env.github.submit_review(pr2, APPROVER, "APPROVED").unwrap();
    let merge2 = env.github.merge_pull_request(pr2, APPROVER).unwrap();

    // Kill the bot once the control plane runs the new version.
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let mut events = mgmt.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while crate::e2e::kcp_version(&env, "team-a-prod") != "v1.25.7+vmware.2" {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "the control plane was never upgraded");
        let _ = tokio::time::timeout(left, events.recv()).await;
    }
    bot.kill().await.expect("SIGKILL");
    let _ = bot.wait().await;
    let mut bot = spawn_bot();
    let apply = env
        .wait_status(&merge2, "tkgops/apply", Duration::from_secs(240))
        .await
        .unwrap();
    bot.kill().await.ok();
    let _ = bot.wait().await;
    let comments = bot_comments(&env, pr2);
    assert_eq!(apply, "success", "{}", env.conversation(pr2));
    assert_eq!(comments.len(), 1, "one sticky comment");
    for phase in [
        "Merge-patch spec.topology.version",
        "Wait for the control plane",
        "Wait for every MachineDeployment",
        "Re-verify every PackageInstall",
    ] {
        assert!(comments[0].contains(phase), "{phase}: {}", comments[0]);
    }

    // Every Machine runs the new version.
    let machines = mgmt.list(
        &Gvr::new("cluster.x-k8s.io", "v1beta1", "machines"),
        Some("default"),
    );
    assert_eq!(machines.len(), 6);
    assert!(machines
        .iter()
        .all(|m| m.pointer("/spec/version").and_then(|v| v.as_str()) == Some("v1.25.7+vmware.2")));
    // The upgrade patch was sent once.
    let patches = mgmt
        .writes()
        .into_iter()
        .filter(|w| w.gvr.plural == "clusters" && w.name == "team-a-prod" && w.verb == "patch")
        .count();
    assert_eq!(patches, 1, "one merge patch of spec.topology.version");

    // The journal: the patch phase ran once; the run succeeded.
    let store = SledStore::open(&env.workdir.join("bot-state").join("journal")).unwrap();
    let runs = store
        .list_runs_by_origin(&tkgops::pr_origin(pr2))
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.state, RunState::Succeeded);
    let step = |id: &str| run.steps.iter().find(|s| s.spec.id == id).unwrap();
    assert_eq!(step("upgrade-cluster").attempts.len(), 1, "{run:#?}");
    assert_eq!(step("mc-preflight").attempts.len(), 1);
    assert_eq!(
        step("upgrade-cluster")
            .output
            .as_ref()
            .map(|o| o["patched"].clone()),
        Some(serde_json::json!(true))
    );
}

/// The delete story through the bot: removing a cluster's folder is refused at the plan until
/// the pull request carries `tkgops/allow-delete`; with the label and two approvals the merge
/// detaches the cluster from TMC, deletes the Cluster, waits until Cluster API removed it, and
/// removes the subnet tag tkgops added.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_needs_the_label_and_two_approvals_then_detaches_deletes_and_untags() {
    use tkgops_sandbox::{AUTHOR, SECOND_APPROVER};
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot =
        crate::e2e::InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;

    let (_, files) = request_files(None, &env.vpc);
    create_through_a_pull_request(&env, &files).await;
    assert!(
        tagged_subnets(&env).await > 0,
        "the preflight tagged the subnets"
    );

    // The delete pull request, first without the label.
    let paths: Vec<&str> = files
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| p.starts_with("clusters/"))
        .collect();
    tkgops_emulators::git_remote::remove_on_branch(
        &env.remote,
        "main",
        "delete-team-a-prod",
        "Delete team-a-prod",
        &paths,
    )
    .unwrap();
    let pr2 = env
        .github
        .open_pull_request("delete-team-a-prod", "Delete team-a-prod", "", AUTHOR)
        .unwrap();
    let head2 = head_of(&env, "delete-team-a-prod");
    let state = env
        .wait_status(&head2, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    let comment = bot_comments(&env, pr2).remove(0);
    assert_eq!(state, "failure", "{comment}");
    assert!(
        comment.contains("TKGOPS-DELETE") && comment.contains("tkgops/allow-delete"),
        "{comment}"
    );

    // With the label the plan is made again and succeeds.
    env.github
        .add_label(pr2, APPROVER, "tkgops/allow-delete")
        .unwrap();
    env.github
        .wait_until(Duration::from_secs(60), |gh| {
            gh.statuses(&head2)
                .into_iter()
                .find(|s| s.context == "tkgops/plan" && s.state == "success")
        })
        .await
        .expect("the labelled pull request is planned again");

    // Two approvals (approval.destructiveApprovals), then the merge runs the delete.
    env.github.submit_review(pr2, APPROVER, "APPROVED").unwrap();
    env.github
        .submit_review(pr2, SECOND_APPROVER, "APPROVED")
        .unwrap();
    let merge2 = env.github.merge_pull_request(pr2, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge2, "tkgops/apply", Duration::from_secs(240))
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr2));
    bot.stop().await;

    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    assert!(mgmt
        .get(
            &Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters"),
            Some("default"),
            "team-a-prod"
        )
        .is_none());
    assert_eq!(
        tagged_subnets(&env).await,
        0,
        "the subnet tags tkgops added are gone"
    );
    let comments = bot_comments(&env, pr2);
    for step in [
        "Detach the cluster from Tanzu Mission Control",
        "Delete the Cluster and wait",
        "Remove the kubernetes.io/cluster/<name> subnet tags",
    ] {
        assert!(comments[0].contains(step), "{step}: {}", comments[0]);
    }
}

/// Issue 16 item 5: the delete workflow checks Kubernetes ownership before it touches TMC or
/// AWS. When the Cluster `team-a-prod` on the management cluster carries another config
/// repository's ownership label, the delete run fails at its first step with the reason on
/// the pull request: the TMC cluster is not detached (no DELETE reaches TMC), the subnet tags
/// stay in AWS (moto), and the Cluster is not deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_of_a_cluster_owned_by_another_request_touches_neither_tmc_nor_aws() {
    use tkgops_sandbox::{AUTHOR, SECOND_APPROVER};
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot =
        crate::e2e::InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    let (_, files) = request_files(None, &env.vpc);
    create_through_a_pull_request(&env, &files).await;
    let tagged = tagged_subnets(&env).await;
    assert!(tagged > 0, "the preflight tagged the subnets");
    let tmc_before = env.tmc.cluster("team-a-prod").expect("attached to TMC");
    assert_eq!(tmc_before["status"]["phase"], "READY");

    // Meanwhile the Cluster of that name and namespace is another request's (another config
    // repository marked it).
    let gvr = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let theirs = tkgops_domain::workflow::plan::owner_label("other-org/clusters", "team-a-prod");
    mgmt.patch_merge(
        &gvr,
        Some("default"),
        "team-a-prod",
        serde_json::json!({"metadata": {"labels": {"tkgops.dev/owner": theirs}}}),
    )
    .unwrap();

    let paths: Vec<&str> = files
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| p.starts_with("clusters/"))
        .collect();
    tkgops_emulators::git_remote::remove_on_branch(
        &env.remote,
        "main",
        "delete-team-a-prod",
        "Delete team-a-prod",
        &paths,
    )
    .unwrap();
    let pr = env
        .github
        .open_pull_request("delete-team-a-prod", "Delete team-a-prod", "", AUTHOR)
        .unwrap();
    env.github
        .add_label(pr, APPROVER, "tkgops/allow-delete")
        .unwrap();
    let head = head_of(&env, "delete-team-a-prod");
    env.github
        .wait_until(Duration::from_secs(60), |gh| {
            gh.statuses(&head)
                .into_iter()
                .find(|s| s.context == "tkgops/plan" && s.state == "success")
        })
        .await
        .expect("the labelled delete is planned");
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    env.github
        .submit_review(pr, SECOND_APPROVER, "APPROVED")
        .unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(apply, "failure", "{}", env.conversation(pr));
    bot.stop().await;

    // The reason reaches the pull request.
    let run = bot_comments(&env, pr)
        .into_iter()
        .find(|c| c.contains("delete-cluster"))
        .expect("the run comment");
    assert!(
        run.contains("Check that the Cluster belongs to this cluster request")
            && run.contains(&format!(
                "Cluster/default/team-a-prod on management cluster '{MANAGEMENT_CLUSTER}' is not owned by this cluster request"
            ))
            && run.contains(&theirs),
        "{run}"
    );
    // TMC: not detached, no DELETE ever sent.
    assert_eq!(
        env.tmc.faults().log().count(
            &axum::http::Method::DELETE,
            "/v1alpha1/clusters/team-a-prod"
        ),
        0
    );
    let tmc_after = env.tmc.cluster("team-a-prod").expect("still attached");
    assert_eq!(tmc_after["status"]["phase"], "READY");
    assert_eq!(tmc_after["meta"]["uid"], tmc_before["meta"]["uid"]);
    // AWS: the subnet tags stay.
    assert_eq!(tagged_subnets(&env).await, tagged);
    // Kubernetes: the Cluster is not deleted.
    let cluster = mgmt
        .get(&gvr, Some("default"), "team-a-prod")
        .expect("the Cluster stays");
    assert!(cluster["metadata"]["deletionTimestamp"].is_null());
}

/// How many subnets of the sandbox region carry `kubernetes.io/cluster/team-a-prod` (moto).
async fn tagged_subnets(env: &tkgops_sandbox::Environment) -> usize {
    let (region, _, _) = tkgops_sandbox::network_of(None);
    let out = env
        .moto
        .ec2_client(&region)
        .describe_subnets()
        .send()
        .await
        .unwrap();
    out.subnets()
        .iter()
        .filter(|s| {
            s.tags()
                .iter()
                .any(|t| t.key() == Some("kubernetes.io/cluster/team-a-prod"))
        })
        .count()
}

/// Opens the pull request adding `files`, waits for its plan, approves and merges it, and
/// waits until the run succeeded (the cluster exists).
pub(crate) async fn create_through_a_pull_request(
    env: &tkgops_sandbox::Environment,
    files: &[(String, String)],
) {
    let pr = env
        .open_pull_request("add-team-a-prod", "Add cluster team-a-prod", files)
        .unwrap();
    let head = head_of(env, "add-team-a-prod");
    env.wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr));
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

/// Through the bot: a pull request adding 50 clusters gets a summary in the sticky comment
/// that links one details comment per cluster, each under GitHub's limit; a later push that
/// drops clusters marks their details comments superseded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifty_cluster_pull_request_gets_a_summary_and_one_details_comment_per_cluster() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = crate::e2e::InProcessBot::start(&env, &timings, None).await;
    let (_, files) = request_files(None, &env.vpc);
    let mut all = Vec::new();
    for i in 0..50 {
        let name = format!("team-{i:02}-prod");
        for (p, c) in &files {
            all.push((
                p.replace("team-a-prod", &name),
                c.replace("team-a-prod", &name),
            ));
        }
    }
    let pr = env
        .open_pull_request("fleet-of-50", "Add 50 clusters", &all)
        .unwrap();
    let head = head_of(&env, "fleet-of-50");
    env.wait_status(&head, "tkgops/plan", Duration::from_secs(120))
        .await
        .unwrap();
    let comments = env.github.comments(pr);
    let sticky = comments
        .iter()
        .find(|c| c.body.starts_with("<!-- tkgops:sticky -->"))
        .expect("the summary");
    let details: Vec<_> = comments
        .iter()
        .filter(|c| c.body.starts_with("<!-- tkgops:plan-details:"))
        .collect();
    assert_eq!(details.len(), 50);
    assert!(sticky.id < details[0].id, "the summary comes first");
    for d in &details {
        assert!(
            sticky.body.contains(&format!("(#issuecomment-{})", d.id)),
            "the summary links comment {}",
            d.id
        );
        assert!(d.body.chars().count() < 65_536);
    }
    assert_eq!(sticky.body.matches("| ✅ runs after merge |").count(), 50);

    // A push that keeps 2 clusters: the plan fits one comment again; 50 details are superseded.
    let keep: Vec<(String, String)> = all
        .iter()
        .filter(|(p, _)| p.contains("team-00-prod") || p.contains("team-01-prod"))
        .cloned()
        .collect();
    let owned: Vec<(&str, &str)> = keep.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    tkgops_emulators::git_remote::commit_on_branch(
        &env.remote,
        "main",
        "fleet-of-2",
        "Add 2 clusters",
        &owned,
    )
    .unwrap();
    let head2 = head_of(&env, "fleet-of-2");
    // A force push of the pull request's branch.
    let repo = git2::Repository::open_bare(&env.remote).unwrap();
    repo.reference(
        "refs/heads/fleet-of-50",
        git2::Oid::from_str(&head2).unwrap(),
        true,
        "force push",
    )
    .unwrap();
    env.wait_status(&head2, "tkgops/plan", Duration::from_secs(120))
        .await
        .unwrap();
    let comments = env.github.comments(pr);
    let superseded = comments
        .iter()
        .filter(|c| c.body.contains("_Superseded: the plan for head"))
        .count();
    assert_eq!(superseded, 50);
    let sticky = comments
        .iter()
        .find(|c| c.body.starts_with("<!-- tkgops:sticky -->"))
        .unwrap();
    assert_eq!(sticky.body.matches("| ✅ runs after merge |").count(), 2);
    bot.stop().await;
}

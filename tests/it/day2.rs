//! Day 2 through the bot on the emulated management cluster: an upgrade with a restart between
//! phases, deletes (label, approvals, ownership), and a fifty-cluster pull request. The day-2
//! plans themselves are tested in `engine/domain/tests/day2_plans.rs`.

use std::time::Duration;

use tkgops_emulators::kube::Gvr;
use tkgops_engine::store::{RunState, SledStore, Store};
use tkgops_sandbox::{request_files, Timings, APPROVER, MANAGEMENT_CLUSTER};

use crate::e2e::{bot_comments, head_of, spawn_serve, start_env};

const OLD_TKR: &str = "v1.24.11+vmware.1-tkg.1";
const NEW_TKR: &str = "v1.25.7+vmware.2-tkg.1";

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
        "Server-side apply of spec.topology.version",
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
    // The upgrade was applied once (after the creation's apply), and never merge-patched.
    let writes: Vec<String> = mgmt
        .writes()
        .into_iter()
        .filter(|w| w.gvr.plural == "clusters" && w.name == "team-a-prod" && !w.dry_run)
        .map(|w| w.verb)
        .collect();
    assert_eq!(writes, ["apply", "apply"], "the creation and the upgrade");

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

/// Opens a pull request with `files` on `branch`, waits for its plan, approves and merges it,
/// and waits for the merge's `tkgops/apply` status, which must be `success`.
pub(crate) async fn change_through_a_pull_request(
    env: &tkgops_sandbox::Environment,
    branch: &str,
    files: &[(String, String)],
) {
    let pr = env.open_pull_request(branch, branch, files).unwrap();
    let head = head_of(env, branch);
    let plan = env
        .wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(plan, "success", "{branch}: {}", env.conversation(pr));
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(240))
        .await
        .unwrap();
    assert_eq!(apply, "success", "{branch}: {}", env.conversation(pr));
}

/// kubernetes/kubernetes#107417 through pull requests: create (v1.23.17) → upgrade (v1.24.11)
/// → resize (4 workers) → upgrade to v1.25.7 and resize to 5 workers in one pull request, on a
/// management cluster that answers 409 where a real API server does. Every write of the Cluster
/// is a server-side apply by `tkgops`, so none conflicts and none is forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_upgrade_resize_then_upgrade_and_resize_never_conflict() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let _bot =
        crate::e2e::InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    const FIRST_TKR: &str = "v1.23.17+vmware.1-tkg.1";
    let (_, files) = request_files(None, &env.vpc);
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(p, c)| (p, c.replace(NEW_TKR, FIRST_TKR)))
        .collect();
    create_through_a_pull_request(&env, &files).await;
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let clusters = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let updates = || {
        let c = mgmt.get(&clusters, Some("default"), "team-a-prod").unwrap();
        let cond = c["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "UpdatesAvailable")
            .cloned()
            .unwrap_or_default();
        (
            cond["status"].as_str().unwrap_or_default().to_string(),
            cond["message"].as_str().unwrap_or_default().to_string(),
        )
    };
    // The tkr-status controller offers the next minor (docs/tkg2-class-based.md §8).
    assert_eq!(updates(), ("True".to_string(), format!("[{OLD_TKR}]")));
    let file = |suffix: &str| {
        files
            .iter()
            .find(|(p, _)| p.ends_with(suffix))
            .unwrap()
            .clone()
    };
    let (settings, settings_text) = file("team-a-prod/tkgops.yaml");
    let (config, config_text) = file("team-a-prod/cluster-config.yaml");
    assert!(config_text.contains("WORKER_MACHINE_COUNT: 3"));

    let settings_text = settings_text.replace(FIRST_TKR, OLD_TKR);
    change_through_a_pull_request(
        &env,
        "upgrade",
        &[(settings.clone(), settings_text.clone())],
    )
    .await;
    let config_text = config_text.replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 4");
    change_through_a_pull_request(&env, "resize", &[(config.clone(), config_text.clone())]).await;
    change_through_a_pull_request(
        &env,
        "upgrade-and-resize",
        &[
            (settings, settings_text.replace(OLD_TKR, NEW_TKR)),
            (
                config,
                config_text.replace("WORKER_MACHINE_COUNT: 4", "WORKER_MACHINE_COUNT: 5"),
            ),
        ],
    )
    .await;

    let cluster = mgmt.get(&clusters, Some("default"), "team-a-prod").unwrap();
    assert_eq!(cluster["spec"]["topology"]["version"], "v1.25.7+vmware.2");
    assert_eq!(
        updates().0,
        "False",
        "the newest TKR of the release: nothing to offer"
    );
    let workers: i64 = cluster["spec"]["topology"]["workers"]["machineDeployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|md| md["replicas"].as_i64().unwrap())
        .sum();
    assert_eq!(workers, 5);
    // tkgops owns its fields as one Apply manager, never as an Update manager too.
    let tkgops_slots: Vec<&str> = cluster["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["manager"] == "tkgops")
        .map(|m| m["operation"].as_str().unwrap())
        .collect();
    assert_eq!(tkgops_slots, ["Apply"]);
    // Nothing was forced, and no write of the Cluster was refused.
    let requests = mgmt.faults().log().all();
    let cluster_writes: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/clusters/team-a-prod") && r.method != http::Method::GET)
        .collect();
    assert!(cluster_writes.len() >= 4, "{cluster_writes:?}");
    assert!(
        cluster_writes
            .iter()
            .all(|r| !r.query.contains("force=true")),
        "{cluster_writes:?}"
    );
    let applies = mgmt
        .writes()
        .into_iter()
        .filter(|w| w.gvr.plural == "clusters" && w.name == "team-a-prod" && !w.dry_run)
        .map(|w| w.verb)
        .collect::<Vec<_>>();
    assert!(applies.iter().all(|v| v == "apply"), "{applies:?}");
}

/// A resize whose live Cluster is not what the plan was made against stops before writing:
/// md-1 was scaled to 3 outside tkgops, the pull request plans 1 → 2 on every
/// MachineDeployment, and the run fails on the check, naming the field as the management
/// cluster has it and as the plan expects it. Nothing is written to the Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resize_whose_live_cluster_differs_from_its_plan_stops_before_writing() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let _bot =
        crate::e2e::InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    let (_, files) = request_files(None, &env.vpc);
    create_through_a_pull_request(&env, &files).await;
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let clusters = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let live = mgmt.get(&clusters, Some("default"), "team-a-prod").unwrap();
    let mut mds = live["spec"]["topology"]["workers"]["machineDeployments"].clone();
    mds[1]["replicas"] = serde_json::json!(3);
    mgmt.patch_merge(
        &clusters,
        Some("default"),
        "team-a-prod",
        serde_json::json!({"spec": {"topology": {"workers": {"machineDeployments": mds}}}}),
    )
    .unwrap();
    let writes_before = mgmt.writes().len();

    let (config, text) = files
        .iter()
        .find(|(p, _)| p.ends_with("cluster-config.yaml"))
        .unwrap()
        .clone();
    let resized = text.replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 6");
    let pr = env
        .open_pull_request("resize", "Resize team-a-prod", &[(config, resized)])
        .unwrap();
    let head = head_of(&env, "resize");
    env.wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    let conversation = env.conversation(pr);
    assert_eq!(apply, "failure", "{conversation}");
    assert!(
        conversation.contains("does not have the machine fields this resize was planned against, so nothing was written"),
        "{conversation}"
    );
    assert!(
        conversation.contains("spec.topology.workers.machineDeployments[md-1].replicas: 3 → 1"),
        "{conversation}"
    );
    let written: Vec<_> = mgmt.writes()[writes_before..]
        .iter()
        .filter(|w| w.gvr.plural == "clusters")
        .cloned()
        .collect();
    assert!(written.is_empty(), "{written:?}");
    let after = mgmt.get(&clusters, Some("default"), "team-a-prod").unwrap();
    assert_eq!(
        after["spec"]["topology"]["workers"]["machineDeployments"][0]["replicas"],
        1
    );
}

/// `CNI: calico` through a pull request yields a calico cluster: tkgops applies the CLI's
/// CalicoConfig, then its ClusterBootstrap before the Cluster; the addons manager adopts that
/// ClusterBootstrap instead of cloning the TKR's template (Antrea), and the workload cluster
/// gets calico, not Antrea.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_calico_request_yields_a_calico_cluster() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let _bot =
        crate::e2e::InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;
    let (_, files) = request_files(None, &env.vpc);
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(p, c)| (p, c.replace("CNI: antrea", "CNI: calico")))
        .collect();
    assert!(files.iter().any(|(_, c)| c.contains("CNI: calico")));
    create_through_a_pull_request(&env, &files).await;

    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let cb = mgmt
        .get(
            &Gvr::new("run.tanzu.vmware.com", "v1alpha3", "clusterbootstraps"),
            Some("default"),
            "team-a-prod",
        )
        .expect("ClusterBootstrap");
    let cni = cb["spec"]["cni"]["refName"].as_str().unwrap_or_default();
    assert!(cni.starts_with("calico.tanzu.vmware.com."), "{cb:#}");
    assert_eq!(
        cb["spec"]["cni"]["valuesFrom"]["providerRef"]["kind"],
        "CalicoConfig"
    );
    assert!(
        mgmt.get(
            &Gvr::new("cni.tanzu.vmware.com", "v1alpha1", "calicoconfigs"),
            Some("default"),
            "team-a-prod",
        )
        .is_some(),
        "the CalicoConfig tkgops applied"
    );
    let workload = env.kube.cluster("team-a-prod").expect("workload cluster");
    let names: Vec<String> = workload
        .list(
            &Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls"),
            Some("tkg-system"),
        )
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        names.contains(&"team-a-prod-calico".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("antrea")), "{names:?}");
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
    let (pr, _, merge) = crate::e2e::merge_create_with(env, files).await;
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr));
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

//! The drift scan through the in-process bot: a cluster that matches Git reports no drift; a
//! hand change of the Cluster's topology with the real `kubectl` and a TMC cluster group
//! changed through the TMC API show up on the fleet dashboard issue and in
//! `tkgops_drift_clusters` within one scan. Under `driftPolicy: revert` a revert run restores
//! both and the next scan is clean; a deleted Cluster stays reported and is never created.

use std::sync::Arc;
use std::time::Duration;

use tkgops_emulators::kube::Gvr;
use tkgops_providers::tmc::models::FullName;
use tkgops_providers::tmc::SecretToken;
use tkgops_providers::tmc::{TmcClient, TmcSettings};
use tkgops_sandbox::{request_files, Environment, Timings, MANAGEMENT_CLUSTER};

use crate::day2::create_through_a_pull_request;
use crate::e2e::{set_aws_env, start_env};

const CLUSTER: &str = "team-a-prod";

/// The in-process bot with `driftScanInterval` set to `interval`, kept as a handle so the test
/// reads its metrics.
struct DriftBot {
    bot: Arc<tkgops::Bot>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl DriftBot {
    async fn start(env: &Environment, timings: &Timings, interval: Duration) -> DriftBot {
        set_aws_env(env);
        let mut cfg = env.bot_config(timings);
        cfg.drift_scan_interval = interval;
        let creds = tkgops::serve::Credentials {
            github_token: tkgops_sandbox::GITHUB_TOKEN.into(),
            tmc_token: Some(tkgops_sandbox::TMC_TOKEN.into()),
        };
        let bot = Arc::new(tkgops::serve::build_with(&cfg, creds).await.expect("bot"));
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (b, poll) = (bot.clone(), timings.poll);
        let task = tokio::spawn(async move {
            b.run(poll, Duration::from_secs(2), async move {
                let _ = stop_rx.await;
            })
            .await
        });
        DriftBot { bot, stop, task }
    }

    /// The value of the `tkgops_drift_clusters` gauge.
    fn drift_clusters(&self) -> String {
        let text = self.bot.metrics().encode(&[], chrono::Utc::now());
        text.lines()
            .find_map(|l| l.strip_prefix("tkgops_drift_clusters "))
            .unwrap_or_else(|| panic!("no tkgops_drift_clusters in:\n{text}"))
            .to_string()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// A hand scale of the Cluster's first MachineDeployment to `replicas` with the real `kubectl`
/// (a JSON patch, so kubectl's field manager takes the field over), as a user would.
async fn scale_by_hand(kubectl: &std::path::Path, env: &Environment, replicas: i64) {
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let k = crate::kubectl::Kubectl::new(kubectl.to_path_buf(), &mgmt.kubeconfig_yaml());
    let patch = format!(
        r#"[{{"op":"replace","path":"/spec/topology/workers/machineDeployments/0/replicas","value":{replicas}}}]"#
    );
    k.ok(&[
        "-n",
        "default",
        "patch",
        "cluster",
        CLUSTER,
        "--type=json",
        "-p",
        &patch,
    ])
    .await;
}

/// Waits until the fleet dashboard issue's body satisfies `ok`, and returns it.
async fn dashboard_until(env: &Environment, what: &str, ok: impl Fn(&str) -> bool) -> String {
    env.github
        .wait_until(Duration::from_secs(60), |gh| {
            gh.issues()
                .into_iter()
                .find(|i| i.title.contains("dashboard") && ok(&i.body))
                .map(|i| i.body)
        })
        .await
        .unwrap_or_else(|| {
            let bodies: Vec<String> = env.github.issues().into_iter().map(|i| i.body).collect();
            panic!(
                "the dashboard never showed {what}:\n{}",
                bodies.join("\n---\n")
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hand_changes_to_the_topology_and_the_tmc_group_are_reported_as_drift() {
    let Some(kubectl) = crate::kubectl::kubectl() else {
        panic!("kubectl is needed: the hand change is made with the real kubectl");
    };
    let (env, bot, files) = with_created(Duration::from_secs(1), default_files).await;

    // Live as Git says: no drift.
    let body = dashboard_until(&env, "a clean scan of the cluster", |b| {
        b.contains("No drift: 1 deployed cluster(s) compared")
    })
    .await;
    assert!(!body.contains("| Cluster | Object |"), "{body}");
    assert_eq!(bot.drift_clusters(), "0");

    // A hand scale of the first MachineDeployment of the topology, with kubectl.
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let clusters = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let live = mgmt.get(&clusters, Some("default"), CLUSTER).unwrap();
    let md = &live["spec"]["topology"]["workers"]["machineDeployments"][0];
    let (md_name, replicas) = (
        md["name"].as_str().unwrap().to_string(),
        md["replicas"].as_i64().unwrap(),
    );
    scale_by_hand(&kubectl, &env, replicas + 2).await;

    // The TMC cluster group changed through the TMC API, as a user would.
    let tmc = TmcClient::new(TmcSettings {
        endpoint: env.tmc.url(),
        csp_endpoint: env.tmc.url(),
        api_token: SecretToken::new(tkgops_sandbox::TMC_TOKEN),
    })
    .unwrap();
    let mut c = tmc
        .get_cluster(&FullName::attached(CLUSTER))
        .await
        .unwrap()
        .expect("the TMC cluster the create attached");
    let group_before = c
        .spec
        .cluster_group_name
        .clone()
        .unwrap_or_else(|| "default".into());
    c.spec.cluster_group_name = Some("moved-by-hand".into());
    tmc.update_cluster(&c).await.unwrap();

    let md_field = format!("spec.topology.workers.machineDeployments[{md_name}].replicas");
    let body = dashboard_until(&env, "both drifted fields", |b| {
        b.contains(&md_field) && b.contains("spec.clusterGroupName")
    })
    .await;
    let row = |field: &str| {
        body.lines()
            .find(|l| l.contains(field))
            .unwrap_or_else(|| panic!("no row for {field}:\n{body}"))
            .to_string()
    };
    let md_row = row(&md_field);
    assert!(
        md_row.starts_with(&format!("| `{CLUSTER}`"))
            && md_row.contains(&format!("| `{replicas}` | `{}` |", replicas + 2)),
        "{md_row}"
    );
    let group_row = row("spec.clusterGroupName");
    assert!(
        group_row.contains(&format!("| `{group_before}` | `moved-by-hand` |")),
        "{group_row}"
    );
    assert!(!body.contains("No drift"), "{body}");
    assert_eq!(bot.drift_clusters(), "1");
    // Typed in the journal, with since when.
    let records = bot.bot.journal().drifts().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].cluster, CLUSTER);
    assert_eq!(records[0].fields.len(), 2, "{:?}", records[0].fields);

    // A pull request touching the drifted cluster: its plan (no credentials) carries the last
    // scan's drift, with Git's and the live value of each field.
    let (config, text) = files
        .iter()
        .find(|(p, _)| p.ends_with("team-a-prod/cluster-config.yaml"))
        .cloned()
        .unwrap();
    assert!(text.contains("WORKER_MACHINE_COUNT: 3"), "{text}");
    let pr = env
        .open_pull_request(
            "resize-team-a-prod",
            "Resize team-a-prod",
            &[(
                config,
                text.replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 4"),
            )],
        )
        .unwrap();
    let head = crate::e2e::head_of(&env, "resize-team-a-prod");
    env.wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    let plan = env.conversation(pr);
    let note = plan
        .split("### Drift")
        .nth(1)
        .unwrap_or_else(|| panic!("no drift note in the plan:\n{plan}"));
    assert!(
        note.contains(&format!("`{CLUSTER}`"))
            && note.contains(&format!(
                "`{md_field}` (Git `{replicas}`, live `{}`)",
                replicas + 2
            ))
            && note.contains("`spec.clusterGroupName` (Git `"),
        "{note}"
    );
    bot.stop().await;
}

/// With `driftScanInterval: 1h` no scan runs during the test on the interval: a hand scale of
/// the Cluster with `kubectl` shows on the dashboard within seconds because the shared Cluster
/// watch wakes a scan of that cluster; scaling it back by hand wakes another, which finds it
/// clean again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hand_change_of_the_cluster_wakes_a_scan_long_before_the_interval() {
    let Some(kubectl) = crate::kubectl::kubectl() else {
        panic!("kubectl is needed: the hand change is made with the real kubectl");
    };
    let (env, bot, _) = with_created(Duration::from_secs(3600), default_files).await;

    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let clusters = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let live = mgmt.get(&clusters, Some("default"), CLUSTER).unwrap();
    let md = &live["spec"]["topology"]["workers"]["machineDeployments"][0];
    let (md_name, replicas) = (
        md["name"].as_str().unwrap().to_string(),
        md["replicas"].as_i64().unwrap(),
    );
    let md_field = format!("spec.topology.workers.machineDeployments[{md_name}].replicas");
    // The wake-up watches the cluster once its create is recorded as deployed.
    let mut watching = bot.bot.drift_watching();
    tokio::time::timeout(
        Duration::from_secs(60),
        watching.wait_for(|w| w.contains(CLUSTER)),
    )
    .await
    .expect("the drift wake-up watches the deployed cluster")
    .unwrap();
    assert!(
        bot.bot.journal().drift_scan().await.unwrap().is_none(),
        "no scan yet: the create's own changes woke none"
    );
    scale_by_hand(&kubectl, &env, replicas + 2).await;
    let body = dashboard_until(&env, "the hand scale, from a woken scan", |b| {
        b.contains(&md_field)
    })
    .await;
    let row = body
        .lines()
        .find(|l| l.contains(&md_field))
        .unwrap_or_else(|| panic!("no row for {md_field}:\n{body}"));
    assert!(
        row.starts_with(&format!("| `{CLUSTER}`")) && row.contains(&format!("| `{replicas}` |")),
        "{row}"
    );
    assert_eq!(bot.drift_clusters(), "1");
    let scan = bot.bot.journal().drift_scan().await.unwrap().unwrap();
    assert!(scan.failed.is_empty(), "{scan:?}");

    // Back as Git says, by hand: a second change wakes a scan that finds the cluster clean.
    scale_by_hand(&kubectl, &env, replicas).await;
    let body = dashboard_until(&env, "the drift cleared by a woken scan", |b| {
        b.contains("### Drift") && !b.contains(&md_field)
    })
    .await;
    assert!(!body.contains("| Cluster | Object |"), "{body}");
    assert_eq!(bot.drift_clusters(), "0");
    bot.stop().await;
}

/// The sandbox and the in-process bot scanning every `interval`, with team-a-prod created
/// through a pull request of the `files` of the sandbox; returns them and the files.
async fn with_created(
    interval: Duration,
    files: fn(&Environment) -> Vec<(String, String)>,
) -> (Environment, DriftBot, Vec<(String, String)>) {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = DriftBot::start(&env, &timings, interval).await;
    let files = files(&env);
    create_through_a_pull_request(&env, &files).await;
    (env, bot, files)
}

/// The example request's files.
fn default_files(env: &Environment) -> Vec<(String, String)> {
    request_files(None, &env.vpc).1
}

/// The example request's files with `driftPolicy: revert` in its `tkgops.yaml`.
fn revert_files(env: &Environment) -> Vec<(String, String)> {
    let (_, mut files) = request_files(None, &env.vpc);
    for (path, text) in &mut files {
        if path.ends_with("/tkgops.yaml") {
            text.push_str("\ndriftPolicy: revert\n");
        }
    }
    files
}

/// The sandbox and the bot (scanning every second) with team-a-prod created under
/// `driftPolicy: revert`, after a first clean scan of it.
async fn revert_sandbox() -> (Environment, DriftBot) {
    let (env, bot, _) = with_created(Duration::from_secs(1), revert_files).await;
    dashboard_until(&env, "a clean scan of the cluster", |b| {
        b.contains("No drift: 1 deployed cluster(s) compared")
    })
    .await;
    (env, bot)
}

/// A TMC client on the emulator, as a user would use it.
fn tmc_client(env: &Environment) -> TmcClient {
    TmcClient::new(TmcSettings {
        endpoint: env.tmc.url(),
        csp_endpoint: env.tmc.url(),
        api_token: SecretToken::new(tkgops_sandbox::TMC_TOKEN),
    })
    .unwrap()
}

/// Moves the TMC cluster to group `group` through the TMC API; returns the group it was in.
async fn move_tmc_group(env: &Environment, group: &str) -> String {
    let tmc = tmc_client(env);
    let mut c = tmc
        .get_cluster(&FullName::attached(CLUSTER))
        .await
        .unwrap()
        .expect("the TMC cluster the create attached");
    let before = c
        .spec
        .cluster_group_name
        .clone()
        .unwrap_or_else(|| "default".into());
    c.spec.cluster_group_name = Some(group.into());
    tmc.update_cluster(&c).await.unwrap();
    before
}

/// The TMC cluster's group as TMC answers it.
async fn tmc_group(env: &Environment) -> String {
    tmc_client(env)
        .get_cluster(&FullName::attached(CLUSTER))
        .await
        .unwrap()
        .expect("the TMC cluster")
        .spec
        .cluster_group_name
        .unwrap_or_else(|| "default".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_revert_policy_a_revert_run_restores_the_topology_and_the_tmc_group() {
    let Some(kubectl) = crate::kubectl::kubectl() else {
        panic!("kubectl is needed: the hand change is made with the real kubectl");
    };
    let (env, bot) = revert_sandbox().await;

    // A hand scale with kubectl (its field manager takes the field over) and a TMC group move.
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let clusters = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let replicas_of = || {
        mgmt.get(&clusters, Some("default"), CLUSTER).unwrap()["spec"]["topology"]["workers"]
            ["machineDeployments"][0]["replicas"]
            .as_i64()
            .unwrap()
    };
    let replicas = replicas_of();
    scale_by_hand(&kubectl, &env, replicas + 2).await;
    let group_before = move_tmc_group(&env, "moved-by-hand").await;

    // The revert run's outcome on the dashboard, then a clean scan.
    let body = dashboard_until(&env, "the revert run succeeded and a clean scan", |b| {
        b.contains(&format!("#### Revert of `{CLUSTER}`"))
            && b.contains("✅ succeeded")
            && b.contains("No drift: 1 deployed cluster(s) compared")
    })
    .await;
    assert!(body.contains("revert-drift/"), "{body}");
    assert!(body.contains("TMC cluster spec.clusterGroupName"), "{body}");
    assert_eq!(replicas_of(), replicas, "the revert restored the replicas");
    assert_eq!(
        tmc_group(&env).await,
        group_before,
        "the revert restored the group"
    );
    assert_eq!(bot.drift_clusters(), "0");
    // The Cluster was applied forced by tkgops (kubectl's field manager held the replicas).
    let applied = mgmt.writes().into_iter().any(|w| {
        w.verb == "apply"
            && w.name == CLUSTER
            && !w.dry_run
            && w.changed
            && w.field_manager.as_deref() == Some("tkgops")
    });
    assert!(applied, "no forced apply of the Cluster by tkgops");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_revert_policy_a_deleted_cluster_is_reported_and_never_created() {
    let (env, bot) = revert_sandbox().await;

    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let clusters = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let mut changes = mgmt.subscribe();
    mgmt.delete(&clusters, Some("default"), CLUSTER).unwrap();
    // The emulated controllers remove the finalizers; every change is an event.
    tokio::time::timeout(Duration::from_secs(120), async {
        while mgmt.get(&clusters, Some("default"), CLUSTER).is_some() {
            let _ = changes.recv().await;
        }
    })
    .await
    .expect("the Cluster is gone");
    let writes_before = mgmt.writes().len();
    // A revertible drift next to it: the TMC group is reverted, the Cluster is not created.
    let group_before = move_tmc_group(&env, "moved-by-hand").await;

    let body = dashboard_until(&env, "the missing Cluster and the revert", |b| {
        b.contains("does not exist on management cluster")
            && b.contains(&format!("#### Revert of `{CLUSTER}`"))
            && b.contains("✅ succeeded")
    })
    .await;
    assert!(body.contains("(cannot be reverted)"), "{body}");
    assert_eq!(tmc_group(&env).await, group_before);
    let created: Vec<_> = mgmt.writes()[writes_before..]
        .iter()
        .filter(|w| w.gvr == clusters && !w.dry_run && w.verb != "delete")
        .cloned()
        .collect();
    assert!(created.is_empty(), "a Cluster was written: {created:?}");
    assert!(mgmt.get(&clusters, Some("default"), CLUSTER).is_none());
    assert_eq!(bot.drift_clusters(), "1");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_revert_policy_a_changed_and_a_deleted_package_install_are_reported_and_reverted()
{
    let Some(kubectl) = crate::kubectl::kubectl() else {
        panic!("kubectl is needed: the hand change is made with the real kubectl");
    };
    let (env, bot) = revert_sandbox().await;

    let workload = env.kube.cluster(CLUSTER).expect("workload cluster");
    let pkgis = Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls");
    let find = |name: &str| {
        workload
            .list(&pkgis, None)
            .into_iter()
            .find(|p| p["metadata"]["name"] == name)
    };
    let cert = find("cert-manager").expect("cert-manager's PackageInstall");
    let ns = cert["metadata"]["namespace"].as_str().unwrap().to_string();
    let version = cert["spec"]["packageRef"]["versionSelection"]["constraints"]
        .as_str()
        .unwrap()
        .to_string();
    let contour_ns = find("contour").expect("contour's PackageInstall")["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    let k = crate::kubectl::Kubectl::new(kubectl, &workload.kubeconfig_yaml());
    k.ok(&[
        "-n",
        &ns,
        "patch",
        "packageinstalls.packaging.carvel.dev",
        "cert-manager",
        "--type=merge",
        "-p",
        r#"{"spec":{"packageRef":{"versionSelection":{"constraints":"1.1.0+vmware.1-tkg.2"}}}}"#,
    ])
    .await;
    let mut changes = workload.subscribe();
    workload
        .delete(&pkgis, Some(&contour_ns), "contour")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        while find("contour").is_some() {
            let _ = changes.recv().await;
        }
    })
    .await
    .expect("contour's PackageInstall is gone");

    // The scan may see the two changes in one revert or in two (the second no sooner than one
    // interval after the first ended); the last one names contour.
    let contour_field = format!("PackageInstall[{contour_ns}/contour]`");
    let body = dashboard_until(&env, "the package revert and a clean scan", |b| {
        b.lines().any(|l| {
            l.contains("re-applies Git at the deployed commit for") && l.contains(&contour_field)
        }) && b.contains("✅ succeeded")
            && b.contains("No drift: 1 deployed cluster(s) compared")
    })
    .await;
    // Values are compared by digest: their content never reaches the dashboard.
    assert!(!body.contains("infrastructure_provider"), "{body}");
    let cert = find("cert-manager").unwrap();
    assert_eq!(
        cert["spec"]["packageRef"]["versionSelection"]["constraints"],
        version.as_str()
    );
    assert!(
        find("contour").is_some(),
        "the revert installed contour again"
    );
    assert_eq!(bot.drift_clusters(), "0");
    bot.stop().await;
}

/// A bot killed in the middle of a revert run, right after the revert's forced Cluster apply
/// and before the engine journaled it (the test-only `tkgops-crashpoint`, README "Kills between a
/// side effect and its journal write"), resumes that same revert run at its next start: one
/// revert run in the journal, its `apply-cluster` attempts `interrupted` then `succeeded`, the
/// Cluster back as Git says, changed by tkgops's applies only twice (the create's and the
/// revert's: the resumed apply changed nothing), and the revert's success on the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bot_killed_in_the_middle_of_a_revert_resumes_the_same_revert_run() {
    use std::os::unix::process::ExitStatusExt;
    use tkgops_engine::store::{
        RunFilter, SledStore, Store, OUTCOME_INTERRUPTED, OUTCOME_SUCCEEDED,
    };
    use tkgops_sandbox::crashpoint::{ABORT_LINE, ENV_POINTS, ENV_STATE_DIR};

    let Some(kubectl) = crate::kubectl::kubectl() else {
        panic!("kubectl is needed: the hand change is made with the real kubectl");
    };
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bin = crate::support::crashpoint_bin();
    let mut cfg = env.bot_config(&timings);
    cfg.drift_scan_interval = Duration::from_secs(1);
    // The create's Cluster apply is the first match, the revert's the second.
    let point = "after:team-a-prod/apply-cluster:2";
    let state = env.workdir.join("crash-points");
    let crash_env = [
        (ENV_POINTS, point),
        (ENV_STATE_DIR, state.to_str().unwrap()),
    ];
    let mut bot = crate::support::spawn_serve(&bin, &env, &cfg, "0", &crash_env);
    create_through_a_pull_request(&env, &revert_files(&env)).await;

    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let clusters = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let replicas_of = || {
        mgmt.get(&clusters, Some("default"), CLUSTER).unwrap()["spec"]["topology"]["workers"]
            ["machineDeployments"][0]["replicas"]
            .as_i64()
            .unwrap()
    };
    let replicas = replicas_of();
    scale_by_hand(&kubectl, &env, replicas + 2).await;

    // The revert's forced apply ran, then the process aborted before the journal write.
    let status = tokio::time::timeout(Duration::from_secs(120), bot.wait()).await;
    let log = std::fs::read_to_string(env.workdir.join("bot-0.log")).unwrap_or_default();
    let status = status
        .unwrap_or_else(|_| panic!("the bot did not reach {point} in the revert:\n{log}"))
        .unwrap();
    assert_eq!(status.signal(), Some(6), "SIGABRT: {status}\n{log}");
    assert!(log.contains(&format!("{ABORT_LINE} {point}")), "{log}");
    assert_eq!(
        replicas_of(),
        replicas,
        "the forced apply ran before the kill"
    );

    let mut bot = crate::support::spawn_serve(&bin, &env, &cfg, "1", &crash_env);
    dashboard_until(&env, "the resumed revert run succeeded", |b| {
        b.contains(&format!("#### Revert of `{CLUSTER}`")) && b.contains("✅ succeeded")
    })
    .await;
    crate::support::stop_with_sigterm(&mut bot, Duration::from_secs(15), "the bot").await;

    assert_eq!(replicas_of(), replicas);
    let changing_applies = mgmt
        .writes()
        .into_iter()
        .filter(|w| {
            w.verb == "apply"
                && w.gvr.plural == "clusters"
                && w.name == CLUSTER
                && !w.dry_run
                && w.changed
                && w.field_manager.as_deref() == Some("tkgops")
        })
        .count();
    assert_eq!(
        changing_applies, 2,
        "the create's and the revert's, once each"
    );

    // Every process is gone: the journal can be opened.
    let store = SledStore::open(&env.workdir.join("bot-state/journal")).unwrap();
    let runs = store.list_runs(&RunFilter::default()).await.unwrap();
    let reverts: Vec<_> = runs
        .iter()
        .filter(|r| r.workflow == tkgops::reconcile::drift::REVERT_WORKFLOW)
        .collect();
    assert_eq!(reverts.len(), 1, "one revert run, resumed: {reverts:?}");
    let apply = reverts[0]
        .steps
        .iter()
        .find(|s| s.spec.id == "apply-cluster")
        .expect("the revert's apply-cluster step");
    let outcomes: Vec<_> = apply
        .attempts
        .iter()
        .map(|a| a.outcome.clone().unwrap_or_default())
        .collect();
    assert_eq!(outcomes, [OUTCOME_INTERRUPTED, OUTCOME_SUCCEEDED]);
}

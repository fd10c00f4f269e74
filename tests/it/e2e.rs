//! End-to-end tests: the sandbox story, and a bot killed with SIGKILL mid-run.
//!
//! Everything runs on 127.0.0.1: the GitHub, Kubernetes and TMC emulators in this process,
//! moto's EC2 server as a child process, and the bot either in-process or as the real
//! `tkgops serve` binary.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use tkgops_emulators::faults::{Fault, FaultAction};
use tkgops_emulators::kube::Gvr;
use tkgops_sandbox::{
    network_of, request_files, Environment, Timings, APPROVER, MANAGEMENT_CLUSTER,
};

use crate::support::assert_golden;

const CLUSTER: &str = "team-a-prod";

pub(crate) async fn start_env(timings: &Timings) -> Environment {
    tkgops_providers::install_crypto_provider();
    let (region, azs, cidr) = network_of(None);
    let azs: Vec<&str> = azs.iter().map(String::as_str).collect();
    Environment::start(None, &region, &azs, &cidr, timings)
        .await
        .expect("sandbox environment")
}

pub(crate) fn set_aws_env(env: &Environment) {
    for (k, v) in env
        .bot_env()
        .into_iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
    {
        std::env::set_var(k, v);
    }
}

/// A bot running in this process against `env`, stopped with [`InProcessBot::stop`].
pub(crate) struct InProcessBot {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// The bot's journal (open while the bot runs: sled allows one process handle).
    pub(crate) store: Arc<dyn tkgops_engine::store::Store>,
}

impl InProcessBot {
    pub(crate) async fn start(
        env: &Environment,
        timings: &Timings,
        tmc_token: Option<&str>,
    ) -> InProcessBot {
        set_aws_env(env);
        let cfg = env.bot_config(timings);
        let creds = tkgops::serve::Credentials {
            github_token: tkgops_sandbox::GITHUB_TOKEN.into(),
            tmc_token: tmc_token.map(String::from),
        };
        let bot = Arc::new(tkgops::serve::build_with(&cfg, creds).await.expect("bot"));
        let store = bot.store();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let poll = timings.poll;
        let task = tokio::spawn(async move {
            bot.run(poll, Duration::from_secs(2), async move {
                let _ = stop_rx.await;
            })
            .await
        });
        InProcessBot { stop, task, store }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts the real `tkgops serve` binary against `env` (its config written to the environment's
/// work directory), killed when the returned child is dropped.
pub(crate) fn spawn_serve(env: &Environment, timings: &Timings) -> tokio::process::Child {
    let cfg_path = env.workdir.join("bot.yaml");
    std::fs::write(
        &cfg_path,
        serde_yaml::to_string(&env.bot_config(timings)).unwrap(),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(crate::support::tkgops_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .envs(env.bot_env())
        .kill_on_drop(true);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.spawn().expect("spawning tkgops serve")
}

/// Opens the pull request that adds team-a-prod, waits for a `success` plan, approves and
/// merges it. Returns the pull request, its head commit and the merge commit.
pub(crate) async fn merge_create(env: &Environment) -> (u64, String, String) {
    let (_, files) = request_files(None, &env.vpc);
    merge_create_with(env, &files).await
}

/// As [`merge_create`], with the request's `files`.
pub(crate) async fn merge_create_with(
    env: &Environment,
    files: &[(String, String)],
) -> (u64, String, String) {
    let pr = env
        .open_pull_request("add-team-a-prod", "Add cluster team-a-prod", files)
        .unwrap();
    let head = head_of(env, "add-team-a-prod");
    assert_eq!(
        env.wait_status(&head, "tkgops/plan", Duration::from_secs(60))
            .await
            .unwrap(),
        "success"
    );
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    (pr, head, merge)
}

/// Opens the pull request that adds team-a-prod, waits for a `success` plan, approves and
/// merges it, then waits until the run's TMC attach step is in flight (its token exchange
/// reached the TMC emulator). Returns the pull request and the merge commit.
pub(crate) async fn merge_create_until_tmc_attach(env: &Environment) -> (u64, String) {
    let (pr, _, merge) = merge_create(env).await;
    env.tmc
        .faults()
        .log()
        .wait_for(Duration::from_secs(120), |r| r.path.starts_with("/csp/"))
        .await
        .expect("the run never reached the TMC attach step");
    (pr, merge)
}

pub(crate) fn head_of(env: &Environment, branch: &str) -> String {
    let repo = git2::Repository::open_bare(&env.remote).unwrap();
    let id = repo
        .revparse_single(&format!("refs/heads/{branch}"))
        .unwrap()
        .id()
        .to_string();
    id
}

pub(crate) fn bot_comments(env: &Environment, pr: u64) -> Vec<String> {
    env.github
        .comments(pr)
        .into_iter()
        .filter(|c| c.body.contains("<!-- tkgops:sticky -->"))
        .map(|c| c.body)
        .collect()
}

async fn assert_cluster_created(env: &Environment) {
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let cluster = mgmt
        .get(
            &Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters"),
            Some("default"),
            CLUSTER,
        )
        .expect("Cluster applied");
    assert_eq!(
        cluster
            .pointer("/spec/topology/class")
            .and_then(|v| v.as_str()),
        Some("tkg-aws-default-v1.0.0")
    );
    // Admission resolved the TKR (docs/tkg2-class-based.md §4): label, Kubernetes version.
    assert_eq!(
        cluster
            .pointer("/metadata/labels/run.tanzu.vmware.com~1tkr")
            .and_then(|v| v.as_str()),
        Some("v1.25.7---vmware.2-tkg.1")
    );
    assert_eq!(
        cluster
            .pointer("/spec/topology/version")
            .and_then(|v| v.as_str()),
        Some("v1.25.7+vmware.2")
    );
    assert_eq!(
        cluster.pointer("/status/phase").and_then(|v| v.as_str()),
        Some("Provisioned")
    );
    // The MachineHealthChecks come from the ClusterClass: one for the control plane and one per
    // MachineDeployment, owned by the topology controller, none applied by tkgops (§5).
    let mhcs = mgmt.list(
        &Gvr::new("cluster.x-k8s.io", "v1beta1", "machinehealthchecks"),
        Some("default"),
    );
    assert_eq!(mhcs.len(), 4, "{mhcs:#?}");
    for m in &mhcs {
        assert!(m.pointer("/metadata/ownerReferences/0").is_some(), "{m:#?}");
        let managers = m
            .pointer("/metadata/managedFields")
            .and_then(|v| v.as_array());
        assert!(
            managers
                .into_iter()
                .flatten()
                .all(|f| f.get("manager").and_then(|v| v.as_str()) != Some("tkgops")),
            "{m:#?}"
        );
    }

    let tmc = env.tmc.cluster(CLUSTER).expect("TMC cluster");
    assert_eq!(
        tmc.pointer("/status/phase").and_then(|v| v.as_str()),
        Some("READY")
    );
    assert_eq!(
        tmc.pointer("/status/health").and_then(|v| v.as_str()),
        Some("HEALTHY")
    );
    assert_eq!(
        tmc.pointer("/spec/clusterGroupName")
            .and_then(|v| v.as_str()),
        Some("team-a")
    );

    let workload = env.kube.cluster(CLUSTER).expect("workload cluster");
    let pkgis = workload.list(
        &Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls"),
        None,
    );
    let mut got: Vec<(String, String)> = pkgis
        .iter()
        .map(|p| {
            (
                p.pointer("/metadata/name")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string(),
                p.pointer("/status/conditions/0/type")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("cert-manager".to_string(), "ReconcileSucceeded".to_string()),
            ("contour".to_string(), "ReconcileSucceeded".to_string()),
            // The core packages of the ClusterBootstrap (docs/tkg2-class-based.md §6).
            (
                "team-a-prod-antrea".to_string(),
                "ReconcileSucceeded".to_string()
            ),
            (
                "team-a-prod-aws-ebs-csi-driver".to_string(),
                "ReconcileSucceeded".to_string()
            ),
        ]
    );

    let ec2 = env.moto.ec2_client(&env.region);
    let tagged = ec2
        .describe_subnets()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag-key")
                .values(format!("kubernetes.io/cluster/{CLUSTER}"))
                .build(),
        )
        .send()
        .await
        .expect("DescribeSubnets");
    let mut ids: Vec<String> = tagged
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id().map(String::from))
        .collect();
    ids.sort();
    let mut expected = env.vpc.private_subnet_ids.clone();
    expected.sort();
    assert_eq!(
        ids, expected,
        "the cluster's private subnets carry kubernetes.io/cluster/{CLUSTER}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_story_plans_merges_and_creates_the_cluster() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;

    let (_, files) = request_files(None, &env.vpc);
    let pr = env
        .open_pull_request("add-team-a-prod", "Add cluster team-a-prod", &files)
        .unwrap();
    let head = head_of(&env, "add-team-a-prod");
    let plan_state = env
        .wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(plan_state, "success", "{}", env.conversation(pr));
    let comments = bot_comments(&env, pr);
    assert_eq!(comments.len(), 1);
    assert_golden("e2e-plan-comment.md", &comments[0]);

    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    // The bot writes the final comment before the final status.
    assert_eq!(apply, "success", "{}", env.conversation(pr));
    let comments = bot_comments(&env, pr);
    assert_eq!(comments.len(), 1, "one sticky comment, edited in place");
    assert!(!comments[0].contains("example-bind-password"));
    assert_golden("e2e-final-comment.md", &comments[0]);
    assert_cluster_created(&env).await;

    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merge_without_approval_executes_nothing() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, None).await;

    let (_, files) = request_files(None, &env.vpc);
    let pr = env
        .open_pull_request("add-team-a-prod", "Add cluster team-a-prod", &files)
        .unwrap();
    let head = head_of(&env, "add-team-a-prod");
    env.wait_status(&head, "tkgops/plan", Duration::from_secs(60))
        .await
        .unwrap();
    let merge = env.github.merge_pull_request(pr, "mallory").unwrap();
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(apply, "failure");
    let comments = bot_comments(&env, pr);
    assert!(comments[0].contains("not executed"), "{}", comments[0]);
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    assert!(mgmt
        .get(
            &Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters"),
            Some("default"),
            CLUSTER
        )
        .is_none());
    bot.stop().await;
}

/// The bot is killed (SIGKILL) after the Cluster was applied and while the TMC attach step is
/// in flight, then started again: the run finishes, the Cluster was applied once, TMC saw one
/// POST, and the PR has one sticky comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_bot_resumes_without_repeating_side_effects() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let spawn_bot = || spawn_serve(&env, &timings);
    // Hold the CSP token exchange (the first TMC call of the attach step) long enough to kill the bot.
    env.tmc.faults().inject(Fault::new(
        Some(Method::POST),
        "/csp/gateway/am/api/auth/api-tokens/authorize",
        FaultAction::Delay(Duration::from_secs(600)),
        Some(1),
    ));
    let mut bot = spawn_bot();

    let (pr, merge) = merge_create_until_tmc_attach(&env).await;
    bot.kill().await.expect("SIGKILL");
    let _ = bot.wait().await;

    let mut bot = spawn_bot();
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr));
    bot.kill().await.ok();

    let applies: Vec<_> = env
        .kube
        .cluster(MANAGEMENT_CLUSTER)
        .unwrap()
        .writes()
        .into_iter()
        .filter(|w| w.gvr.plural == "clusters" && w.name == CLUSTER && w.verb == "apply")
        .collect();
    let (dry, real): (Vec<_>, Vec<_>) = applies.iter().partition(|w| w.dry_run);
    assert_eq!(real.len(), 1, "the Cluster was applied once: {applies:?}");
    assert_eq!(dry.len(), 1, "after one server-side dry run: {applies:?}");
    assert_eq!(
        env.tmc
            .faults()
            .log()
            .count(&Method::POST, "/v1alpha1/clusters"),
        1,
        "TMC saw one POST"
    );
    assert_eq!(bot_comments(&env, pr).len(), 1, "one sticky comment");
    assert_cluster_created(&env).await;
}

/// A PackageInstall that kapp-controller cannot reconcile fails the run with its
/// `usefulErrorMessage` in the PR comment; GitHub 5xx and 429 (Retry-After) answers on the way
/// are waited out, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_package_surfaces_kapp_controller_error_on_the_pr() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bot = InProcessBot::start(&env, &timings, Some(tkgops_sandbox::TMC_TOKEN)).await;

    let (_, mut files) = request_files(None, &env.vpc);
    for (path, content) in files.iter_mut() {
        if path.ends_with("tkgops.yaml") {
            *content = content.replace(
                "  - name: contour\n",
                "  - name: contour\n    version: 1.99.0+vmware.1-tkg.1\n",
            );
        }
    }
    env.github.faults().inject(Fault::new(
        Some(Method::PATCH),
        "/repos/acme/tkg-clusters/issues/comments/",
        FaultAction::Status {
            code: 502,
            body: "{\"message\":\"Server Error\"}".into(),
        },
        Some(2),
    ));
    env.github.faults().inject(Fault::new(
        Some(Method::POST),
        "/repos/acme/tkg-clusters/statuses/",
        FaultAction::RetryAfter { code: 429, secs: 1 },
        Some(1),
    ));
    let (pr, _, merge) = merge_create_with(&env, &files).await;
    // kapp-controller retries a failing PackageInstall, and so does tkgops, for TKG's
    // PACKAGE_INSTALL_TIMEOUT (10 min) before the run fails.
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(720))
        .await
        .unwrap();
    assert_eq!(apply, "failure");
    let comments = bot_comments(&env, pr);
    assert_eq!(
        comments.len(),
        1,
        "one sticky comment despite the injected 502s"
    );
    let body = &comments[0];
    assert!(body.contains("❌ failed"), "{body}");
    assert!(
        body.contains("Could not find package with name 'contour.tanzu.vmware.com' and version '1.99.0+vmware.1-tkg.1'"),
        "kapp-controller's usefulErrorMessage is shown: {body}"
    );
    let faulted = env
        .github
        .faults()
        .log()
        .all()
        .into_iter()
        .filter(|r| r.faulted)
        .count();
    assert_eq!(
        faulted, 3,
        "all injected GitHub faults were hit and waited out"
    );
    bot.stop().await;
}

/// A signed webhook makes the bot plan at once (its poll interval here is an hour); a forged
/// one is refused with 401 before anything is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_webhook_makes_the_bot_plan_at_once() {
    const SECRET: &str = "sandbox-webhook-secret-0123456789";
    let timings = Timings {
        poll: Duration::from_secs(3600),
        ..Timings::default()
    };
    let env = start_env(&timings).await;
    set_aws_env(&env);
    let cfg = env.bot_config(&timings);
    let creds = tkgops::serve::Credentials {
        github_token: tkgops_sandbox::GITHUB_TOKEN.into(),
        tmc_token: None,
    };
    let bot = Arc::new(tkgops::serve::build_with(&cfg, creds).await.expect("bot"));
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, http) = tkgops::serve::start_http(&bot, "127.0.0.1:0", Some(SECRET.into()), async {
        let _ = http_stopped.await;
    })
    .await
    .expect("http server");
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let b = bot.clone();
    let task = tokio::spawn(async move {
        b.run(
            Duration::from_secs(3600),
            Duration::from_secs(2),
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
    });
    // The first poll ends with the list of the repository's comments (commands).
    env.github
        .faults()
        .log()
        .wait_for(Duration::from_secs(60), |r| {
            r.path.ends_with("/issues/comments")
        })
        .await
        .expect("the first poll never finished");

    let (_, files) = request_files(None, &env.vpc);
    env.open_pull_request("add-team-a-prod", "Add cluster team-a-prod", &files)
        .unwrap();
    let head = head_of(&env, "add-team-a-prod");
    let http_client = reqwest::Client::new();
    let url = format!("http://{addr}/webhooks/github");
    let body = r#"{"action":"opened","number":1}"#;
    let send = |sig: String, id: &'static str| {
        http_client
            .post(&url)
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", id)
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
    };
    let forged = send(
        tkgops::webhook::sign(b"not-the-secret-at-all-0123456789", body.as_bytes()),
        "d-1",
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), 401);
    let signed = send(
        tkgops::webhook::sign(SECRET.as_bytes(), body.as_bytes()),
        "d-2",
    )
    .await
    .unwrap();
    assert_eq!(signed.status(), 202);
    assert_eq!(
        env.wait_status(&head, "tkgops/plan", Duration::from_secs(60))
            .await
            .unwrap(),
        "success"
    );
    let ready = http_client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let _ = stop.send(());
    let _ = task.await;
    let _ = stop_http.send(());
    let _ = http.await;
}

/// `status.version` of the KubeadmControlPlane of `cluster` (namespace `default`) on the
/// management cluster; empty when there is none.
pub(crate) fn kcp_version(env: &tkgops_sandbox::Environment, cluster: &str) -> String {
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    mgmt.list(
        &Gvr::new(
            "controlplane.cluster.x-k8s.io",
            "v1beta1",
            "kubeadmcontrolplanes",
        ),
        Some("default"),
    )
    .into_iter()
    .find(|k| k["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"] == cluster)
    .and_then(|k| k["status"]["version"].as_str().map(str::to_string))
    .unwrap_or_default()
}

//! Opt-in suites against real systems (README "Tests against real systems"). Each test is
//! `#[ignore]`d, with the variable it needs as the reason (`cargo test` lists it as ignored); run
//! them with `-- --ignored real_systems` and the variables set. A selected test whose variable
//! is missing fails, naming it:
//!
//! - `TKGOPS_E2E_KUBECONFIG` (+ optional `TKGOPS_E2E_TKG_VERSION`, default `2.2`, and
//!   `TKGOPS_E2E_NAMESPACE`, default `default`): a real TKG management cluster. Reads its
//!   ClusterClasses and TanzuKubernetesReleases, runs `kube.preflight` and sends every example
//!   request's Cluster as a server-side dry run (nothing is written).
//! - `TKGOPS_E2E_GITHUB_TOKEN` (+ optional `TKGOPS_E2E_GITHUB_REPO`, default
//!   `vmware-tanzu/tanzu-framework`, and `TKGOPS_E2E_GITHUB_API`, default
//!   `https://api.github.com`): read-only calls against a real repository.
//! - `TKGOPS_E2E_TMC_TOKEN` + `TKGOPS_E2E_TMC_ENDPOINT` (+ optional `TKGOPS_E2E_CSP_ENDPOINT`):
//!   the CSP token exchange and a cluster list.

use std::collections::BTreeMap;
use std::time::Duration;

use tkgops_domain::files::MemoryTree;
use tkgops_domain::step::StepInputs;
use tkgops_domain::workflow::{plan, Catalog, PlanInput};
use tkgops_github::{GitHub, OctocrabClient, RetrySettings};
use tkgops_providers::kube::KubeProvider;
use tkgops_providers::KubeconfigSource;

use crate::support::root;

/// The value of `var`, which a selected real-system test needs. Panics (the test fails, naming
/// the variable) when it is unset or empty: these tests only run when asked for.
fn required(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("set {var} to run this test against a real system (README \"Tests against real systems\")"),
    }
}

/// Every example request planned against `tkgops.yaml` pointing at `kubeconfig`; returns the
/// plans' `kube.preflight` and `kube.apply` inputs.
fn example_plans(kubeconfig: &str, tkg: &str, namespace: &str) -> Vec<(String, StepInputs)> {
    let policy = std::fs::read_to_string(root().join("examples/config-repo/tkgops.yaml"))
        .unwrap()
        .replace(
            "{file: /etc/tkgops/mc-aws-1.kubeconfig}",
            &format!("{{file: {kubeconfig}}}"),
        )
        .replace("tkgVersion: \"2.2\"", &format!("tkgVersion: \"{tkg}\""))
        .replace(
            "    namespace: default\n",
            &format!("    namespace: {namespace}\n"),
        );
    let mut head = BTreeMap::new();
    head.insert("tkgops.yaml".to_string(), policy.clone().into_bytes());
    let mut changed = Vec::new();
    for dir in std::fs::read_dir(root().join("examples/requests")).unwrap() {
        let dir = dir.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        for f in ["cluster-config.yaml", "tkgops.yaml"] {
            let path = format!("clusters/{name}/{f}");
            head.insert(path.clone(), std::fs::read(dir.join(f)).unwrap());
            changed.push(path);
        }
    }
    let base = MemoryTree(BTreeMap::from([(
        "tkgops.yaml".to_string(),
        policy.into_bytes(),
    )]));
    let head = MemoryTree(head);
    let catalog = Catalog::builtin().unwrap();
    let p = plan(&PlanInput {
        base: &base,
        head: &head,
        settings: &base,
        base_sha: "1111111111111111111111111111111111111111",
        head_sha: "2222222222222222222222222222222222222222",
        changed_paths: &changed,
        catalog: &catalog,
        executable: &tkgops::executors::executable_kinds(),
        repository: "tkgops/e2e",
        history: Default::default(),
    });
    let mut out = Vec::new();
    for c in &p.clusters {
        for s in &c.steps {
            if matches!(
                s.inputs,
                StepInputs::KubePreflight(_) | StepInputs::KubeApply(_)
            ) {
                out.push((c.cluster.clone(), s.inputs.clone()));
            }
        }
    }
    assert!(
        !out.is_empty(),
        "no cluster planned: {:#?}",
        p.all_findings()
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TKGOPS_E2E_KUBECONFIG (a real TKG management cluster)"]
async fn real_management_cluster_admits_every_example_request_in_a_server_side_dry_run() {
    let kubeconfig = required("TKGOPS_E2E_KUBECONFIG");
    tkgops_providers::install_crypto_provider();
    let tkg = std::env::var("TKGOPS_E2E_TKG_VERSION").unwrap_or_else(|_| "2.2".into());
    let ns = std::env::var("TKGOPS_E2E_NAMESPACE").unwrap_or_else(|_| "default".into());
    let provider = KubeProvider::new(
        BTreeMap::from([(
            "mc-aws-1".to_string(),
            KubeconfigSource::File(kubeconfig.clone()),
        )]),
        Duration::from_secs(5),
    );
    // What the management cluster offers, for the test log.
    let client = provider
        .management_client_with("mc-aws-1", None)
        .await
        .expect("management cluster client");
    let classes: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        client.clone(),
        &ns,
        &tkgops_providers::kube::preflight::cluster_class_resource(),
    );
    let tkrs: kube::Api<kube::api::DynamicObject> =
        kube::Api::all_with(client, &tkgops_providers::kube::preflight::tkr_resource());
    let lp = kube::api::ListParams::default();
    let class_names: Vec<String> = classes
        .list(&lp)
        .await
        .expect("list ClusterClasses")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let tkr_names: Vec<String> = tkrs
        .list(&lp)
        .await
        .expect("list TanzuKubernetesReleases")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    eprintln!("ClusterClasses in {ns}: {class_names:?}\nTKRs: {tkr_names:?}");
    assert!(!class_names.is_empty(), "no ClusterClass in namespace {ns}");
    let progress = tkgops_engine::ProgressSink::new(|_| {});
    for (cluster, inputs) in example_plans(&kubeconfig, &tkg, &ns) {
        match inputs {
            StepInputs::KubePreflight(i) => {
                let out = tkgops_providers::kube::preflight::preflight(&provider, &progress, &i)
                    .await
                    .unwrap_or_else(|e| panic!("{cluster}: preflight: {e}"));
                eprintln!("{cluster}: preflight {}", serde_json::json!(out));
            }
            StepInputs::KubeApply(i) => {
                let objs = provider
                    .server_dry_run(&i)
                    .await
                    .unwrap_or_else(|e| panic!("{cluster}: server-side dry run: {e}"));
                eprintln!("{cluster}: dry run accepted {objs:?}");
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TKGOPS_E2E_GITHUB_TOKEN (a real GitHub token)"]
async fn real_github_answers_the_read_only_calls_the_bot_makes() {
    let token = required("TKGOPS_E2E_GITHUB_TOKEN");
    tkgops_providers::install_crypto_provider();
    let repo = std::env::var("TKGOPS_E2E_GITHUB_REPO")
        .unwrap_or_else(|_| "vmware-tanzu/tanzu-framework".into());
    let api =
        std::env::var("TKGOPS_E2E_GITHUB_API").unwrap_or_else(|_| "https://api.github.com".into());
    let (owner, name) = repo.split_once('/').expect("owner/name");
    let gh =
        OctocrabClient::new(&api, &token, owner, name, RetrySettings::default()).expect("client");
    let info = gh.repository().await.expect("GET /repos/{o}/{r}");
    assert_eq!(info.full_name.to_lowercase(), repo.to_lowercase());
    assert!(!info.default_branch.is_empty());
    let open = gh
        .list_open_pulls(&info.default_branch)
        .await
        .expect("open pulls");
    let closed = gh
        .list_recently_closed_pulls(&info.default_branch, 10)
        .await
        .expect("closed pulls");
    eprintln!(
        "{repo}: default branch {}, {} open and {} recently closed pull requests",
        info.default_branch,
        open.len(),
        closed.len()
    );
    if let Some(pr) = closed.first() {
        let again = gh.get_pull(pr.number).await.expect("get pull");
        assert_eq!(again.number, pr.number);
        gh.list_reviews(pr.number).await.expect("list reviews");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TKGOPS_E2E_TMC_TOKEN and TKGOPS_E2E_TMC_ENDPOINT (a real TMC organisation)"]
async fn real_tmc_exchanges_the_api_token_and_lists_clusters() {
    let token = required("TKGOPS_E2E_TMC_TOKEN");
    let endpoint = required("TKGOPS_E2E_TMC_ENDPOINT");
    tkgops_providers::install_crypto_provider();
    let csp = std::env::var("TKGOPS_E2E_CSP_ENDPOINT")
        .unwrap_or_else(|_| "https://console.tanzu.broadcom.com".into());
    let client = tkgops_providers::tmc::TmcClient::new(tkgops_providers::tmc::TmcSettings {
        endpoint,
        csp_endpoint: csp,
        api_token: tkgops_providers::tmc::SecretToken::new(token),
    })
    .expect("client");
    let clusters = client
        .list_clusters()
        .await
        .expect("token exchange and cluster list");
    eprintln!("TMC lists {} clusters", clusters.len());
}

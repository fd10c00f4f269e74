//! Integration tests: tmc (the TMC emulator and the TMC provider against it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use tkgops_emulators::faults::{Fault, FaultAction};
use tkgops_emulators::tmc::{TmcEmulator, TmcEmulatorOptions};
use tkgops_engine::{ProgressSink, RetryPolicy, StepContext, StepError, StepSpec};

use crate::support::ExecuteStep;
use tkgops_providers::tmc::{FullName, SecretToken, TmcClient, TmcError, TmcExecutor, TmcSettings};
use tkgops_providers::{ManifestApplier, WorkloadTarget};

const TOKEN: &str = "test-api-token-s3cr3t";
/// The config repository of the tkgops under test.
const REPO: &str = "acme/tkg-clusters";
/// The ownership label key tkgops sets on what it creates.
const OWNER_KEY: &str = tkgops_domain::workflow::plan::OWNER_LABEL;

/// The ownership label value of cluster request `clusters/<name>` of [`REPO`].
fn owner(name: &str) -> String {
    tkgops_domain::workflow::plan::owner_label(REPO, name)
}

/// `base` plus this tkgops's ownership label for `name`: how tkgops marks a TMC cluster it
/// registers.
fn marked(name: &str, base: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut l = base.clone();
    l.insert(OWNER_KEY.to_string(), owner(name));
    l
}
const AUTHORIZE: &str = "/csp/gateway/am/api/auth/api-tokens/authorize";

async fn emulator_with(ttl: Duration, delay: Duration) -> TmcEmulator {
    tkgops_providers::install_crypto_provider();
    TmcEmulator::start(TmcEmulatorOptions {
        api_token: TOKEN.into(),
        org_id: "org-1".into(),
        access_token_ttl: ttl,
        agent_connect_delay: delay,
    })
    .await
    .expect("emulator starts")
}

async fn emulator() -> TmcEmulator {
    emulator_with(Duration::from_secs(1799), Duration::ZERO).await
}

fn client(emu: &TmcEmulator, token: &str) -> TmcClient {
    TmcClient::new(TmcSettings {
        endpoint: emu.url(),
        csp_endpoint: emu.url(),
        api_token: SecretToken::new(token),
    })
    .expect("client")
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("env".to_string(), "prod".to_string())])
}

async fn raw_token(emu: &TmcEmulator) -> String {
    let v: Value = reqwest::Client::new()
        .post(format!("{}{AUTHORIZE}", emu.url()))
        .form(&[("refresh_token", TOKEN)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn token_exchange_form_query_and_bad_token() {
    let emu = emulator().await;
    let http = reqwest::Client::new();
    let url = format!("{}{AUTHORIZE}", emu.url());

    // TMC-TF: form body.
    let resp = http
        .post(&url)
        .form(&[("refresh_token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    for f in [
        "id_token",
        "token_type",
        "scope",
        "access_token",
        "refresh_token",
    ] {
        assert!(v[f].is_string(), "{f} missing in {v}");
    }
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 1799);
    let form_token = v["access_token"].as_str().unwrap().to_string();

    // SIVT: query parameter, empty body.
    let resp = http
        .post(&url)
        .query(&[("refresh_token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let raw = v["access_token"].as_str().unwrap().to_string();

    // Wrong token: CSP-style 400.
    let resp = http
        .post(&url)
        .form(&[("refresh_token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({"statusCode": 400, "message": "invalid_grant: Invalid refresh token"})
    );

    // Bearer and raw tokens are both accepted; none or unknown → 401 code 16.
    let list = format!("{}/v1alpha1/clusters", emu.url());
    let resp = http
        .get(&list)
        .bearer_auth(&form_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"clusters": [], "totalCount": "0"})
    );
    let resp = http
        .get(&list)
        .header("authorization", &raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http.get(&list).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], 16);
    assert_eq!(v["details"], json!([]));
    let resp = http.get(&list).bearer_auth("bogus").send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // The client surfaces a refused exchange as a permanent TokenExchange error without the token.
    let bad = client(&emu, "wrong-token-value");
    let err = bad.list_clusters().await.unwrap_err();
    assert!(
        matches!(err, TmcError::TokenExchange { status: 400, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(!err.to_string().contains("wrong-token-value"));
}

#[tokio::test]
async fn cluster_create_get_list_delete() {
    let emu = emulator().await;
    let c = client(&emu, TOKEN);
    let fname = FullName::attached("team-a-prod");

    assert_eq!(c.get_cluster(&fname).await.unwrap(), None);

    let created = c
        .create_cluster(&fname, "team-a", "attached by tkgops", &labels())
        .await
        .unwrap();
    assert_eq!(created.full_name.org_id.as_deref(), Some("org-1"));
    assert_eq!(created.full_name.name, "team-a-prod");
    assert!(created.meta.uid.as_deref().unwrap().starts_with("c:01"));
    assert_eq!(created.meta.resource_version.as_deref(), Some("1"));
    assert_eq!(created.meta.labels, labels());
    assert_eq!(
        created.meta.description.as_deref(),
        Some("attached by tkgops")
    );
    assert_eq!(created.spec.cluster_group_name.as_deref(), Some("team-a"));
    assert_eq!(created.phase(), "PENDING");
    assert_eq!(created.status.type_.as_deref(), Some("ATTACHED"));
    let link = created
        .status
        .installer_link
        .clone()
        .expect("installerLink");
    assert!(link
        .expose()
        .starts_with(&format!("{}/installer?id=", emu.url())));
    assert!(link.expose().ends_with("&source=attach"));
    assert!(
        !format!("{created:?}").contains(link.expose()),
        "installer link must be redacted in Debug"
    );

    // Default cluster group.
    let other = c
        .create_cluster(&FullName::attached("team-b"), "", "", &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(other.spec.cluster_group_name.as_deref(), Some("default"));

    // Duplicate → 409 code 6.
    let err = c
        .create_cluster(&fname, "team-a", "", &labels())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TmcError::AlreadyExists { code: 6, .. }),
        "{err:?}"
    );
    // Invalid name → 400 code 3.
    let err = c
        .create_cluster(&FullName::attached("Bad_Name"), "", "", &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TmcError::InvalidArgument { code: 3, .. }),
        "{err:?}"
    );

    let got = c.get_cluster(&fname).await.unwrap().expect("exists");
    assert_eq!(got.meta.uid, created.meta.uid);
    // Another management cluster/provisioner: not found.
    let mut elsewhere = fname.clone();
    elsewhere.management_cluster_name = "mc1".into();
    assert_eq!(c.get_cluster(&elsewhere).await.unwrap(), None);

    let all = c.list_clusters().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(emu.clusters().len(), 2);
    assert_eq!(
        emu.cluster("team-a-prod").unwrap()["meta"]["uid"],
        json!(created.meta.uid)
    );

    // full_name. spelling on the wire.
    let tok = raw_token(&emu).await;
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v1alpha1/clusters/team-a-prod?full_name.managementClusterName=attached&full_name.provisionerName=attached",
            emu.url()
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let missing = reqwest::Client::new()
        .get(format!("{}/v1alpha1/clusters/nope", emu.url()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], 5);

    // PUT updates meta/spec and bumps resourceVersion/generation.
    let resp = reqwest::Client::new()
        .put(format!("{}/v1alpha1/clusters/team-a-prod", emu.url()))
        .bearer_auth(&tok)
        .json(&json!({"cluster": {"fullName": {"managementClusterName": "attached", "provisionerName": "attached", "name": "team-a-prod"},
            "meta": {"description": "updated", "labels": {"env": "stage"}}, "spec": {"clusterGroupName": "team-b"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let updated = c.get_cluster(&fname).await.unwrap().unwrap();
    assert_eq!(updated.meta.description.as_deref(), Some("updated"));
    assert_eq!(updated.spec.cluster_group_name.as_deref(), Some("team-b"));
    assert_eq!(updated.meta.resource_version.as_deref(), Some("2"));
    assert_eq!(updated.meta.generation.as_deref(), Some("2"));

    // Detach (force=false): DETACHING on the next GET, then gone.
    c.delete_cluster(&fname, false).await.unwrap();
    assert_eq!(
        c.get_cluster(&fname)
            .await
            .unwrap()
            .expect("still detaching")
            .phase(),
        "DETACHING"
    );
    assert_eq!(c.get_cluster(&fname).await.unwrap(), None);
    // Force: gone at once. Deleting a missing cluster is Ok.
    c.delete_cluster(&FullName::attached("team-b"), true)
        .await
        .unwrap();
    assert_eq!(
        c.get_cluster(&FullName::attached("team-b")).await.unwrap(),
        None
    );
    c.delete_cluster(&FullName::attached("team-b"), true)
        .await
        .unwrap();
    assert!(emu.clusters().is_empty());
    assert_eq!(
        emu.faults()
            .log()
            .count(&Method::DELETE, "/v1alpha1/clusters/team-a-prod"),
        1
    );
    let del = emu
        .faults()
        .log()
        .all()
        .into_iter()
        .find(|r| r.method == Method::DELETE)
        .unwrap();
    assert!(
        del.query.contains("force=false")
            && del
                .query
                .contains("fullName.managementClusterName=attached")
    );
}

#[tokio::test]
async fn installer_manifest_is_unauthenticated_yaml() {
    let emu = emulator().await;
    let c = client(&emu, TOKEN);
    let created = c
        .create_cluster(&FullName::attached("wl1"), "", "", &BTreeMap::new())
        .await
        .unwrap();
    let link = created.status.installer_link.unwrap();

    let raw = reqwest::get(link.expose()).await.unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["content-type"], "text/yaml");
    assert!(raw.text().await.unwrap().starts_with(char::is_whitespace));

    let yaml = c.installer_manifest(link.expose()).await.unwrap();
    assert!(yaml.starts_with("---"));
    let docs = parse_docs(&yaml);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in ["Namespace", "ConfigMap", "ServiceAccount", "Deployment"] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    let cm = stack_config(&docs).expect("stack-config");
    assert_eq!(cm["metadata"]["namespace"], "vmware-system-tmc");
    assert_eq!(cm["data"]["tmc_url"], json!(emu.url()));
    assert_eq!(cm["data"]["cluster_name"], "wl1");
    assert_eq!(cm["data"]["management_cluster_name"], "attached");
    assert_eq!(cm["data"]["provisioner_name"], "attached");
    assert_eq!(
        cm["data"]["registration_token"],
        json!(emu.registration_token("wl1").unwrap())
    );
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(dep["metadata"]["name"], "cluster-agent");
    assert_eq!(dep["spec"]["replicas"], 1);

    let err = c
        .installer_manifest(&format!("{}/installer?id=unknown&source=attach", emu.url()))
        .await
        .unwrap_err();
    assert!(matches!(err, TmcError::NotFound { .. }), "{err:?}");
    assert!(
        !err.to_string().contains("unknown&source"),
        "error must not echo the link: {err}"
    );
}

#[tokio::test]
async fn agentconnect_wrong_token_is_403_and_right_token_readies() {
    let emu = emulator().await;
    let c = client(&emu, TOKEN);
    c.create_cluster(&FullName::attached("wl2"), "", "", &BTreeMap::new())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/v1alpha1/clusters/wl2:agentconnect", emu.url());
    let body = |token: &str| {
        json!({"fullName": {"managementClusterName": "attached", "provisionerName": "attached", "name": "wl2"},
               "registrationToken": token, "kubeServerVersion": "v1.23.8+vmware.2", "nodeCount": "6"})
    };
    let resp = http.post(&url).json(&body("wrong")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], 7);
    assert_eq!(emu.cluster("wl2").unwrap()["status"]["phase"], "PENDING");

    let missing = http
        .post(format!("{}/v1alpha1/clusters/nope:agentconnect", emu.url()))
        .json(&body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let resp = http
        .post(&url)
        .json(&body(&emu.registration_token("wl2").unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({}));
    let got = c
        .get_cluster(&FullName::attached("wl2"))
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_ready_and_healthy());
    assert_eq!(got.status.node_count.as_deref(), Some("6"));
    assert_eq!(
        got.status.kube_server_version.as_deref(),
        Some("v1.23.8+vmware.2")
    );
    assert_eq!(
        got.status.infrastructure_provider.as_deref(),
        Some("AWS_EC2")
    );
    assert_eq!(
        got.status
            .kubernetes_provider
            .as_ref()
            .unwrap()
            .type_
            .as_deref(),
        Some("VMWARE_TANZU_KUBERNETES_GRID")
    );
    let cond = &got.status.conditions["Agent-READY"];
    assert_eq!(cond.status.as_deref(), Some("TRUE"));
    assert_eq!(
        cond.message.as_deref(),
        Some("cluster is connected to TMC and healthy")
    );
    assert!(got.status.health_details.is_some());
}

#[tokio::test]
async fn expired_access_token_is_re_exchanged() {
    let emu = emulator().await;
    let c = client(&emu, TOKEN);
    let raw = raw_token(&emu).await;
    c.list_clusters().await.unwrap();
    c.list_clusters().await.unwrap();
    assert_eq!(
        emu.faults().log().count(&Method::POST, AUTHORIZE),
        2,
        "token is cached"
    );

    // Both issued tokens (the raw one and the client's cached one) expire now.
    assert_eq!(emu.expire_access_tokens(), 2);
    // The emulator itself rejects the expired token.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1alpha1/clusters", emu.url()))
        .bearer_auth(&raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], 16);

    // The client's cached token is refused, so it re-exchanges the API token and retries.
    let seen = emu.faults().log().all().len();
    c.list_clusters().await.unwrap();
    let calls = |from: usize| -> Vec<(Method, String)> {
        emu.faults().log().all()[from..]
            .iter()
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect()
    };
    let list = || (Method::GET, "/v1alpha1/clusters".to_string());
    assert_eq!(
        calls(seen),
        [list(), (Method::POST, AUTHORIZE.to_string()), list()],
        "expired token re-exchanged, then the request retried"
    );

    // The fresh token is cached and valid: no further exchange.
    let seen = emu.faults().log().all().len();
    c.list_clusters().await.unwrap();
    c.list_clusters().await.unwrap();
    assert_eq!(calls(seen), [list(), list()], "fresh token cached");
    assert_eq!(emu.faults().log().count(&Method::POST, AUTHORIZE), 3);
}

#[tokio::test]
async fn unauthorized_once_is_retried_after_re_exchange() {
    let emu = emulator().await;
    let c = client(&emu, TOKEN);
    c.list_clusters().await.unwrap();
    let body =
        json!({"code": 16, "error": "token expired", "message": "token expired", "details": []})
            .to_string();
    emu.faults().inject(Fault::new(
        Some(Method::GET),
        "/v1alpha1/clusters",
        FaultAction::Status {
            code: 401,
            body: body.clone(),
        },
        Some(1),
    ));
    assert!(c.list_clusters().await.unwrap().is_empty());
    assert_eq!(emu.faults().log().count(&Method::POST, AUTHORIZE), 2);

    // Persistent 401: one re-exchange, then Unauthenticated.
    emu.faults().inject(Fault::new(
        Some(Method::GET),
        "/v1alpha1/clusters",
        FaultAction::Status { code: 401, body },
        None,
    ));
    let err = c.list_clusters().await.unwrap_err();
    assert!(
        matches!(err, TmcError::Unauthenticated { code: 16, .. }),
        "{err:?}"
    );
    assert_eq!(emu.faults().log().count(&Method::POST, AUTHORIZE), 3);
    emu.faults().clear();

    // 503 and a dropped connection are transient.
    emu.faults().inject(Fault::new(
        Some(Method::GET),
        "/v1alpha1/clusters",
        FaultAction::Status {
            code: 503,
            body: "{}".into(),
        },
        Some(1),
    ));
    assert!(c.list_clusters().await.unwrap_err().is_transient());
    emu.faults().inject(Fault::new(
        Some(Method::GET),
        "/v1alpha1/clusters",
        FaultAction::Drop,
        Some(1),
    ));
    let err = c.list_clusters().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// tmc.attach

fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn stack_config(docs: &[Value]) -> Option<&Value> {
    docs.iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "stack-config")
}

/// What the fake workload cluster's "agent" does after the manifest is applied.
#[derive(Clone, Copy, PartialEq)]
enum AgentMode {
    /// Connect with the registration token from `stack-config`.
    Connect,
    /// Do nothing (the agent never comes up).
    Silent,
}

/// A [`ManifestApplier`] standing in for the Kubernetes provider plus the TMC agent: parses the
/// manifest, finds the `stack-config` ConfigMap and POSTs `:agentconnect` like the agent would.
struct AgentSimApplier {
    mode: AgentMode,
    applies: AtomicUsize,
    targets: Mutex<Vec<WorkloadTarget>>,
    /// Notified after each apply (and the agent's connect, in [`AgentMode::Connect`]).
    applied: tokio::sync::Notify,
}

impl AgentSimApplier {
    fn new(mode: AgentMode) -> Arc<Self> {
        Arc::new(AgentSimApplier {
            mode,
            applies: AtomicUsize::new(0),
            targets: Mutex::new(vec![]),
            applied: tokio::sync::Notify::new(),
        })
    }
}

#[async_trait::async_trait]
impl ManifestApplier for AgentSimApplier {
    async fn apply_to_workload(
        &self,
        target: &WorkloadTarget,
        yaml: &str,
        field_manager: &str,
    ) -> Result<Vec<String>, StepError> {
        assert_eq!(field_manager, "tkgops");
        self.applies.fetch_add(1, Ordering::SeqCst);
        self.targets.lock().unwrap().push(target.clone());
        let docs = parse_docs(yaml);
        let cm =
            stack_config(&docs).ok_or_else(|| StepError::Permanent("no stack-config".into()))?;
        let d = &cm["data"];
        if self.mode == AgentMode::Connect {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            let resp = reqwest::Client::new()
                .post(format!("{}/v1alpha1/clusters/{}:agentconnect", s("tmc_url"), s("cluster_name")))
                .json(&json!({
                    "fullName": {"managementClusterName": s("management_cluster_name"),
                                 "provisionerName": s("provisioner_name"), "name": s("cluster_name")},
                    "registrationToken": s("registration_token"),
                    "kubeServerVersion": "v1.23.8+vmware.2",
                    "nodeCount": "6",
                }))
                .send()
                .await
                .map_err(|e| StepError::Transient(e.to_string()))?;
            assert_eq!(resp.status(), 200);
        }
        self.applied.notify_one();
        Ok(docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}/{}",
                    d["kind"].as_str().unwrap_or(""),
                    d["metadata"]["namespace"].as_str().unwrap_or(""),
                    d["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect())
    }
}

fn attach_ctx(emu: &TmcEmulator, name: &str, progress: ProgressSink) -> StepContext {
    tmc_ctx(emu, "tmc.attach", name, "team-a", progress)
}

fn tmc_ctx(
    emu: &TmcEmulator,
    kind: &str,
    name: &str,
    group: &str,
    progress: ProgressSink,
) -> StepContext {
    StepContext {
        run_id: "run-1".into(),
        cluster: name.into(),
        commit_sha: "0123456789abcdef0123456789abcdef01234567".into(),
        step: StepSpec {
            id: "attach-tmc".into(),
            title: "Attach to TMC".into(),
            timeout_secs: 60,
            retry: RetryPolicy::default(),
            inputs: crate::support::step_inputs(
                kind,
                json!({
                    "endpoint": emu.url(),
                    "cspEndpoint": emu.url(),
                    "target": {"managementCluster": "mgmt", "namespace": "default", "clusterName": name},
                    "fullName": {"managementClusterName": "attached", "provisionerName": "attached", "name": name},
                    "clusterGroup": group,
                    "description": "attached by tkgops",
                    "labels": {"env": "prod"},
                    "owner": {"label": owner(name), "repository": REPO, "path": format!("clusters/{name}")},
                }),
            ),
        },
        attempt: 1,
        outputs: BTreeMap::new(),
        progress,
    }
}

fn recording_sink() -> (ProgressSink, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    (
        ProgressSink::new(move |s| l.lock().unwrap().push(s.to_string())),
        lines,
    )
}

#[tokio::test]
async fn attach_creates_applies_and_waits_then_is_idempotent() {
    let emu = emulator_with(Duration::from_secs(1799), Duration::from_millis(300)).await;
    let applier = AgentSimApplier::new(AgentMode::Connect);
    let exec = TmcExecutor::new(
        Some(SecretToken::new(TOKEN)),
        applier.clone(),
        Duration::from_millis(100),
    );
    let (sink, lines) = recording_sink();

    let out = exec
        .execute(&attach_ctx(&emu, "team-a-prod", sink.clone()))
        .await
        .unwrap();
    let stored = emu.cluster("team-a-prod").unwrap();
    assert_eq!(
        out,
        json!({"uid": stored["meta"]["uid"], "phase": "READY", "health": "HEALTHY",
               "clusterGroup": "team-a", "installerApplied": true, "updated": []})
    );
    // The request's labels plus the ownership mark.
    assert_eq!(
        stored["meta"]["labels"],
        json!({"env": "prod", OWNER_KEY: owner("team-a-prod")})
    );
    assert_eq!(
        stored["status"]["conditions"]["Agent-READY"]["message"],
        "cluster is connected to TMC and healthy"
    );
    assert_eq!(applier.applies.load(Ordering::SeqCst), 1);
    assert_eq!(
        applier.targets.lock().unwrap()[0].cluster_name,
        "team-a-prod"
    );
    let progress = lines.lock().unwrap().clone();
    assert!(
        progress
            .iter()
            .any(|l| l.starts_with("TMC phase PENDING, health")),
        "{progress:?}"
    );
    assert!(
        progress
            .iter()
            .any(|l| l == "TMC phase READY, health HEALTHY"),
        "{progress:?}"
    );

    // Nothing secret in outputs or progress.
    let installer_id = stored["status"]["installerLink"]
        .as_str()
        .unwrap()
        .split("id=")
        .nth(1)
        .unwrap()
        .to_string();
    let everything = format!("{out} {progress:?} {exec:?}");
    assert!(!everything.contains(TOKEN));
    assert!(!everything.contains(&installer_id[..16]));

    // Second run: READY/HEALTHY already → no POST, no apply.
    let out2 = exec
        .execute(&attach_ctx(&emu, "team-a-prod", sink))
        .await
        .unwrap();
    assert_eq!(out2["installerApplied"], false);
    assert_eq!(out2["phase"], "READY");
    assert_eq!(
        emu.faults()
            .log()
            .count(&Method::POST, "/v1alpha1/clusters"),
        1
    );
    assert_eq!(applier.applies.load(Ordering::SeqCst), 1);
    // One client, one token exchange across both runs.
    assert_eq!(emu.faults().log().count(&Method::POST, AUTHORIZE), 1);
}

#[tokio::test]
async fn attach_after_conflict_continues_with_existing_cluster() {
    let emu = emulator().await;
    // Created by a concurrent attempt of the same request: it carries the ownership mark.
    client(&emu, TOKEN)
        .create_cluster(
            &FullName::attached("wl3"),
            "team-a",
            "",
            &marked("wl3", &BTreeMap::new()),
        )
        .await
        .unwrap();
    // The executor's first GET does not see it (a concurrent creator): its POST gets a real 409.
    emu.faults().inject(Fault::new(
        Some(Method::GET),
        "/v1alpha1/clusters/wl3",
        FaultAction::Status {
            code: 404,
            body: json!({"code": 5, "error": "nf", "message": "nf", "details": []}).to_string(),
        },
        Some(1),
    ));
    let applier = AgentSimApplier::new(AgentMode::Connect);
    let exec = TmcExecutor::new(
        Some(SecretToken::new(TOKEN)),
        applier.clone(),
        Duration::from_millis(50),
    );
    let out = exec
        .execute(&attach_ctx(&emu, "wl3", ProgressSink::noop()))
        .await
        .unwrap();
    assert_eq!(out["phase"], "READY");
    assert_eq!(out["installerApplied"], true);
    assert_eq!(
        emu.faults()
            .log()
            .count(&Method::POST, "/v1alpha1/clusters"),
        2,
        "ours and the 409"
    );
    assert_eq!(emu.clusters().len(), 1);
}

#[tokio::test]
async fn attach_transient_on_503_and_permanent_without_token() {
    let emu = emulator().await;
    let applier = AgentSimApplier::new(AgentMode::Connect);
    emu.faults().inject(Fault::new(
        Some(Method::POST),
        "/v1alpha1/clusters",
        FaultAction::Status {
            code: 503,
            body:
                json!({"code": 14, "error": "unavailable", "message": "unavailable", "details": []})
                    .to_string(),
        },
        Some(1),
    ));
    let exec = TmcExecutor::new(
        Some(SecretToken::new(TOKEN)),
        applier.clone(),
        Duration::from_millis(50),
    );
    let err = exec
        .execute(&attach_ctx(&emu, "wl4", ProgressSink::noop()))
        .await
        .unwrap_err();
    assert!(matches!(err, StepError::Transient(_)), "{err:?}");
    assert_eq!(applier.applies.load(Ordering::SeqCst), 0);
    // The retry succeeds.
    exec.execute(&attach_ctx(&emu, "wl4", ProgressSink::noop()))
        .await
        .unwrap();

    let none = TmcExecutor::new(None, applier.clone(), Duration::from_millis(50));
    let err = none
        .execute(&attach_ctx(&emu, "wl4", ProgressSink::noop()))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StepError::Permanent("TMC API token not configured (set VMW_CLOUD_API_TOKEN)".into())
    );

    let bad = TmcExecutor::new(
        Some(SecretToken::new("wrong-token")),
        applier,
        Duration::from_millis(50),
    );
    let err = bad
        .execute(&attach_ctx(&emu, "wl4", ProgressSink::noop()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Permanent(m) if m.contains("invalid_grant") && !m.contains("wrong-token")),
        "{err:?}"
    );
}

#[tokio::test]
async fn attach_fails_permanently_on_error_phase() {
    let emu = emulator().await;
    client(&emu, TOKEN)
        .create_cluster(
            &FullName::attached("wl5"),
            "",
            "",
            &marked("wl5", &BTreeMap::new()),
        )
        .await
        .unwrap();
    assert!(emu.set_phase("wl5", "ERROR", "UNHEALTHY"));
    let applier = AgentSimApplier::new(AgentMode::Connect);
    let exec = TmcExecutor::new(
        Some(SecretToken::new(TOKEN)),
        applier.clone(),
        Duration::from_millis(50),
    );
    let err = exec
        .execute(&attach_ctx(&emu, "wl5", ProgressSink::noop()))
        .await
        .unwrap_err();
    match err {
        StepError::Permanent(m) => {
            assert!(
                m.contains("phase ERROR") && m.contains("Agent-READY"),
                "{m}"
            );
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
    assert_eq!(applier.applies.load(Ordering::SeqCst), 0);

    // ERROR reached while polling after the apply.
    let silent = AgentSimApplier::new(AgentMode::Silent);
    let exec = TmcExecutor::new(
        Some(SecretToken::new(TOKEN)),
        silent.clone(),
        Duration::from_millis(50),
    );
    // Once the installer is applied (the cluster exists and the executor is polling for the
    // agent), the cluster fails.
    let emu2 = emu.clone();
    let applied = silent.clone();
    let breaker = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(20), applied.applied.notified())
            .await
            .expect("the installer was never applied");
        assert!(emu2.set_phase("wl6", "UPGRADE_FAILED", "UNHEALTHY"));
    });
    let err = exec
        .execute(&attach_ctx(&emu, "wl6", ProgressSink::noop()))
        .await
        .unwrap_err();
    breaker.await.unwrap();
    assert!(
        matches!(&err, StepError::Permanent(m) if m.contains("UPGRADE_FAILED")),
        "{err:?}"
    );
    assert_eq!(silent.applies.load(Ordering::SeqCst), 1);
}

/// READY ends the attach wait; a degraded health is reported, not required (TMC-TF waits for
/// READY only, docs/tanzu-apis.md §3.5 step 4).
#[tokio::test]
async fn attach_ends_on_ready_and_reports_a_warning_health() {
    let emu = emulator().await;
    emu.set_health_on_connect("wl-warn", "WARNING");
    let applier = AgentSimApplier::new(AgentMode::Connect);
    let exec = TmcExecutor::new(
        Some(SecretToken::new(TOKEN)),
        applier.clone(),
        Duration::from_millis(50),
    );
    let (sink, lines) = recording_sink();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        exec.execute(&attach_ctx(&emu, "wl-warn", sink)),
    )
    .await
    .expect("the attach does not wait for HEALTHY")
    .expect("attach");
    assert_eq!(out["phase"], "READY", "{out}");
    assert_eq!(out["health"], "WARNING", "{out}");
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l
            == "TMC cluster attached/attached/wl-warn is READY with health WARNING: Cluster is degraded"),
        "{lines:?}"
    );
}

/// A cluster with a TMC proxy (or image registry) gets its manifest from
/// `GET /v1alpha1/clusters:manifest/{name}`, not from the installer link (TMC-TF
/// `resource_cluster.go`, docs/tanzu-apis.md §3.5 step 3).
#[tokio::test]
async fn attach_behind_a_proxy_uses_the_manifest_endpoint() {
    let emu = emulator().await;
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}{AUTHORIZE}", emu.url()))
        .form(&[("refresh_token", TOKEN)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = token["access_token"].as_str().unwrap();
    let resp = http
        .post(format!("{}/v1alpha1/clusters", emu.url()))
        .bearer_auth(access)
        .json(&json!({"cluster": {"fullName": {"managementClusterName": "attached", "provisionerName": "attached", "name": "wl-proxy"},
                                  "meta": {"labels": marked("wl-proxy", &labels())},
                                  "spec": {"clusterGroupName": "team-a", "proxyName": "corp-proxy"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let applier = AgentSimApplier::new(AgentMode::Connect);
    let exec = TmcExecutor::new(
        Some(SecretToken::new(TOKEN)),
        applier.clone(),
        Duration::from_millis(50),
    );
    let out = exec
        .execute(&attach_ctx(&emu, "wl-proxy", ProgressSink::noop()))
        .await
        .expect("attach");
    assert_eq!(out["installerApplied"], true, "{out}");
    assert_eq!(applier.applies.load(Ordering::SeqCst), 1);
    let log = emu.faults().log();
    assert_eq!(
        log.count(&Method::GET, "/v1alpha1/clusters:manifest/wl-proxy"),
        1
    );
    assert_eq!(log.count(&Method::GET, "/installer"), 0);
}

// ---------------------------------------------------------------------------------------------
// tmc.attach converging an existing cluster (PUT)

fn executor(applier: Arc<AgentSimApplier>) -> TmcExecutor {
    TmcExecutor::new(
        Some(SecretToken::new(TOKEN)),
        applier,
        Duration::from_millis(20),
    )
}

/// An attached, READY cluster `name` in `group` that tkgops registered earlier for this
/// request (`labels` plus the ownership mark), created through the API.
async fn ready_cluster(
    emu: &TmcEmulator,
    name: &str,
    group: &str,
    labels: &BTreeMap<String, String>,
) {
    client(emu, TOKEN)
        .create_cluster(
            &FullName::attached(name),
            group,
            "attached by tkgops",
            &marked(name, labels),
        )
        .await
        .expect("create");
    assert!(emu.set_phase(name, "READY", "HEALTHY"));
}

fn group_of(emu: &TmcEmulator, name: &str) -> Value {
    emu.cluster(name).expect("cluster")["spec"]["clusterGroupName"].clone()
}

#[tokio::test]
async fn attach_moves_an_existing_cluster_to_its_group_with_a_put() {
    let emu = emulator().await;
    emu.set_cluster_groups(&["default", "team-a", "team-b"]);
    let labels = BTreeMap::from([
        ("env".to_string(), "dev".to_string()),
        (
            "tmc.cloud.vmware.com/creator".to_string(),
            "someone".to_string(),
        ),
    ]);
    ready_cluster(&emu, "wl-move", "team-b", &labels).await;
    let rv_before = emu.cluster("wl-move").unwrap()["meta"]["resourceVersion"].clone();
    let applier = AgentSimApplier::new(AgentMode::Connect);
    let exec = executor(applier.clone());
    let (sink, lines) = recording_sink();

    let out = exec
        .execute(&attach_ctx(&emu, "wl-move", sink))
        .await
        .expect("attach converges");
    assert_eq!(out["clusterGroup"], "team-a", "{out}");
    assert_eq!(out["updated"], json!(["clusterGroup", "labels"]), "{out}");
    assert_eq!(out["installerApplied"], false);
    assert_eq!(out["phase"], "READY");
    let stored = emu.cluster("wl-move").unwrap();
    assert_eq!(stored["spec"]["clusterGroupName"], "team-a");
    // The inputs' labels replace the user labels; TMC's own label stays.
    assert_eq!(
        stored["meta"]["labels"],
        json!({"env": "prod", "tmc.cloud.vmware.com/creator": "someone", OWNER_KEY: owner("wl-move")})
    );
    assert_ne!(stored["meta"]["resourceVersion"], rv_before);
    let log = emu.faults().log();
    assert_eq!(log.count(&Method::PUT, "/v1alpha1/clusters/wl-move"), 1);
    assert_eq!(
        log.count(&Method::POST, "/v1alpha1/clusters"),
        1,
        "only the setup's POST"
    );
    assert_eq!(
        applier.applies.load(Ordering::SeqCst),
        0,
        "a READY agent is not re-applied"
    );
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l == "moved to cluster group team-a (was team-b)"),
        "{lines:?}"
    );

    // Converged: a second run sends no PUT.
    let again = exec
        .execute(&attach_ctx(&emu, "wl-move", ProgressSink::noop()))
        .await
        .expect("second attach");
    assert_eq!(again["updated"], json!([]));
    assert_eq!(
        emu.faults()
            .log()
            .count(&Method::PUT, "/v1alpha1/clusters/wl-move"),
        1
    );
    assert_eq!(group_of(&emu, "wl-move"), "team-a");
}

#[tokio::test]
async fn attach_into_an_unknown_group_fails_permanently_naming_it() {
    let emu = emulator().await;
    emu.set_cluster_groups(&["default", "team-a"]);
    ready_cluster(&emu, "wl-lost", "team-a", &labels()).await;
    let applier = AgentSimApplier::new(AgentMode::Connect);
    let exec = executor(applier.clone());

    // Existing cluster: the PUT is refused, the cluster stays where it was.
    let err = exec
        .execute(&tmc_ctx(
            &emu,
            "tmc.attach",
            "wl-lost",
            "team-zz",
            ProgressSink::noop(),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Permanent(m) if m.contains("\"team-zz\"") && m.contains("not found")),
        "{err:?}"
    );
    assert_eq!(group_of(&emu, "wl-lost"), "team-a");
    assert_eq!(
        emu.faults()
            .log()
            .count(&Method::PUT, "/v1alpha1/clusters/wl-lost"),
        1
    );

    // New cluster: the POST is refused and nothing is created.
    let err = exec
        .execute(&tmc_ctx(
            &emu,
            "tmc.attach",
            "wl-new",
            "team-zz",
            ProgressSink::noop(),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Permanent(m) if m.contains("\"team-zz\"")),
        "{err:?}"
    );
    assert!(emu.cluster("wl-new").is_none());
    assert_eq!(applier.applies.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn put_with_a_stale_resource_version_is_409_and_attach_retries() {
    let emu = emulator().await;
    emu.set_cluster_groups(&["default", "team-a", "team-b"]);
    ready_cluster(&emu, "wl-rv", "team-b", &labels()).await;
    let c = client(&emu, TOKEN);
    let fname = FullName::attached("wl-rv");

    // The emulator: stale resourceVersion → 409 code 10; current → 200; unknown group → 404.
    let mut stale = c.get_cluster(&fname).await.unwrap().unwrap();
    stale.meta.resource_version = Some("0".into());
    stale.spec.cluster_group_name = Some("default".into());
    let err = c.update_cluster(&stale).await.unwrap_err();
    assert!(
        matches!(err, TmcError::Conflict { code: 10, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(group_of(&emu, "wl-rv"), "team-b");
    let mut lost = c.get_cluster(&fname).await.unwrap().unwrap();
    lost.spec.cluster_group_name = Some("nope".into());
    let err = c.update_cluster(&lost).await.unwrap_err();
    assert!(
        matches!(&err, TmcError::NotFound { code: 5, message } if message.contains("\"nope\"")),
        "{err:?}"
    );
    let mut fresh = c.get_cluster(&fname).await.unwrap().unwrap();
    fresh.spec.cluster_group_name = Some("default".into());
    let updated = c.update_cluster(&fresh).await.expect("current version");
    assert_eq!(updated.spec.cluster_group_name.as_deref(), Some("default"));
    assert_eq!(group_of(&emu, "wl-rv"), "default");

    // The executor: a conflict on its PUT makes it read the cluster again and retry.
    emu.faults().inject(Fault::new(
        Some(Method::PUT),
        "/v1alpha1/clusters/wl-rv",
        FaultAction::Status {
            code: 409,
            body: json!({"code": 10, "error": "aborted", "message": "modified meanwhile", "details": []})
                .to_string(),
        },
        Some(1),
    ));
    let (sink, lines) = recording_sink();
    let out = executor(AgentSimApplier::new(AgentMode::Connect))
        .execute(&attach_ctx(&emu, "wl-rv", sink))
        .await
        .expect("attach after a conflict");
    assert_eq!(out["updated"], json!(["clusterGroup"]), "{out}");
    assert_eq!(group_of(&emu, "wl-rv"), "team-a");
    // 3 client PUTs above (stale, unknown group, current) + the retry after the faulted one
    // (the log does not count faulted requests).
    assert_eq!(
        emu.faults()
            .log()
            .count(&Method::PUT, "/v1alpha1/clusters/wl-rv"),
        4
    );
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l == "moved to cluster group team-a (was default)"),
        "{lines:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// tmc.detach

fn detach_ctx(emu: &TmcEmulator, name: &str, progress: ProgressSink) -> StepContext {
    tmc_ctx(emu, "tmc.detach", name, "team-a", progress)
}

fn deletes(emu: &TmcEmulator, name: &str) -> Vec<String> {
    let path = format!("/v1alpha1/clusters/{name}");
    emu.faults()
        .log()
        .all()
        .into_iter()
        .filter(|r| r.method == Method::DELETE && r.path == path)
        .map(|r| r.query)
        .collect()
}

#[tokio::test]
async fn detach_deletes_waits_for_404_and_is_idempotent() {
    let emu = emulator().await;
    ready_cluster(&emu, "wl-bye", "team-a", &labels()).await;
    let exec = executor(AgentSimApplier::new(AgentMode::Connect))
        .with_detach_timeout(Duration::from_secs(60));
    let (sink, lines) = recording_sink();

    let out = exec
        .execute(&detach_ctx(&emu, "wl-bye", sink))
        .await
        .expect("detach");
    assert_eq!(
        out,
        json!({"cluster": "attached/attached/wl-bye", "wasAttached": true, "forced": false})
    );
    assert!(emu.cluster("wl-bye").is_none(), "removed from TMC");
    let dels = deletes(&emu, "wl-bye");
    assert_eq!(dels.len(), 1, "{dels:?}");
    for part in [
        "force=false",
        "fullName.managementClusterName=attached",
        "fullName.provisionerName=attached",
    ] {
        assert!(dels[0].contains(part), "{part} missing in {}", dels[0]);
    }
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l == "TMC cluster attached/attached/wl-bye: phase DETACHING"),
        "{lines:?}"
    );

    // Second run: already gone, no DELETE.
    let again = exec
        .execute(&detach_ctx(&emu, "wl-bye", ProgressSink::noop()))
        .await
        .expect("second detach");
    assert_eq!(again["wasAttached"], false);
    assert_eq!(again["forced"], false);
    assert_eq!(deletes(&emu, "wl-bye").len(), 1);
}

#[tokio::test]
async fn detach_forces_when_the_cluster_sticks_in_detaching() {
    let emu = emulator().await;
    ready_cluster(&emu, "wl-stuck", "team-a", &labels()).await;
    emu.set_stuck_detaching("wl-stuck", true);
    let exec = executor(AgentSimApplier::new(AgentMode::Connect))
        .with_detach_timeout(Duration::from_millis(200));
    let (sink, lines) = recording_sink();

    let out = exec
        .execute(&detach_ctx(&emu, "wl-stuck", sink))
        .await
        .expect("forced detach");
    assert_eq!(out["wasAttached"], true);
    assert_eq!(out["forced"], true, "{out}");
    assert!(emu.cluster("wl-stuck").is_none());
    let dels = deletes(&emu, "wl-stuck");
    assert_eq!(dels.len(), 2, "{dels:?}");
    assert!(dels[0].contains("force=false"), "{dels:?}");
    assert!(dels[1].contains("force=true"), "{dels:?}");
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("detaching with force=true")),
        "{lines:?}"
    );

    // Idempotent afterwards.
    let again = exec
        .execute(&detach_ctx(&emu, "wl-stuck", ProgressSink::noop()))
        .await
        .expect("second detach");
    assert_eq!(again["wasAttached"], false);
    assert_eq!(deletes(&emu, "wl-stuck").len(), 2);
}

#[tokio::test]
async fn detach_of_a_missing_cluster_succeeds_and_errors_are_classified() {
    let emu = emulator().await;
    let exec = executor(AgentSimApplier::new(AgentMode::Connect))
        .with_detach_timeout(Duration::from_secs(60));
    let out = exec
        .execute(&detach_ctx(&emu, "wl-never", ProgressSink::noop()))
        .await
        .expect("not attached is success");
    assert_eq!(
        out,
        json!({"cluster": "attached/attached/wl-never", "wasAttached": false, "forced": false})
    );
    assert!(deletes(&emu, "wl-never").is_empty());

    // 503 on the DELETE: transient, and the retry detaches.
    ready_cluster(&emu, "wl-flaky", "team-a", &labels()).await;
    emu.faults().inject(Fault::new(
        Some(Method::DELETE),
        "/v1alpha1/clusters/wl-flaky",
        FaultAction::Status {
            code: 503,
            body:
                json!({"code": 14, "error": "unavailable", "message": "unavailable", "details": []})
                    .to_string(),
        },
        Some(1),
    ));
    let err = exec
        .execute(&detach_ctx(&emu, "wl-flaky", ProgressSink::noop()))
        .await
        .unwrap_err();
    assert!(matches!(err, StepError::Transient(_)), "{err:?}");
    assert!(emu.cluster("wl-flaky").is_some());
    let out = exec
        .execute(&detach_ctx(&emu, "wl-flaky", ProgressSink::noop()))
        .await
        .expect("retry detaches");
    assert_eq!(out["wasAttached"], true);
    assert!(emu.cluster("wl-flaky").is_none());

    // 403 on the DELETE: permanent.
    ready_cluster(&emu, "wl-denied", "team-a", &labels()).await;
    emu.faults().inject(Fault::new(
        Some(Method::DELETE),
        "/v1alpha1/clusters/wl-denied",
        FaultAction::Status {
            code: 403,
            body:
                json!({"code": 7, "error": "denied", "message": "permission denied", "details": []})
                    .to_string(),
        },
        Some(1),
    ));
    let err = exec
        .execute(&detach_ctx(&emu, "wl-denied", ProgressSink::noop()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Permanent(m) if m.contains("permission denied")),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Ownership: TMC names are organisation-wide (issue 16 item 5)

/// Another team's TMC cluster of the same name (no ownership mark, or another config
/// repository's) is neither adopted by `tmc.attach` (no PUT of its group, description or
/// labels, no installer) nor detached by `tmc.detach` (no DELETE): both fail permanently,
/// naming the owner tkgops expected.
#[tokio::test]
async fn another_teams_tmc_cluster_of_the_same_name_is_neither_adopted_nor_detached() {
    let emu = emulator().await;
    emu.set_cluster_groups(&["default", "team-a", "payments-team"]);
    let c = client(&emu, TOKEN);
    // `payments`: attached by another team by hand, without any tkgops mark.
    c.create_cluster(
        &FullName::attached("payments"),
        "payments-team",
        "the payments team's cluster",
        &BTreeMap::from([("team".to_string(), "payments".to_string())]),
    )
    .await
    .unwrap();
    assert!(emu.set_phase("payments", "READY", "HEALTHY"));
    // `billing`: registered by a tkgops of another config repository (its mark, not ours).
    let theirs = tkgops_domain::workflow::plan::owner_label("other-org/clusters", "billing");
    c.create_cluster(
        &FullName::attached("billing"),
        "payments-team",
        "",
        &BTreeMap::from([(OWNER_KEY.to_string(), theirs.clone())]),
    )
    .await
    .unwrap();
    let before = emu.clusters();
    let applier = AgentSimApplier::new(AgentMode::Connect);
    let exec = executor(applier.clone()).with_detach_timeout(Duration::from_secs(60));

    for (name, carries) in [
        ("payments", format!("it has no {OWNER_KEY} label")),
        ("billing", format!("its {OWNER_KEY} label is {theirs:?}")),
    ] {
        let expected = format!(
            "TMC cluster attached/attached/{name} exists and is not owned by {REPO}/clusters/{name} ({carries}); tkgops will not"
        );
        let err = exec
            .execute(&attach_ctx(&emu, name, ProgressSink::noop()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StepError::Permanent(m) if m.starts_with(&format!("{expected} adopt it"))
                && m.contains(&format!("{OWNER_KEY}={}", owner(name)))),
            "{err:?}"
        );
        let err = exec
            .execute(&detach_ctx(&emu, name, ProgressSink::noop()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StepError::Permanent(m) if m.starts_with(&format!("{expected} detach it"))),
            "{err:?}"
        );
    }

    // What the other teams see in TMC is exactly what they had: group, description, labels,
    // phase and resourceVersion.
    assert_eq!(emu.clusters(), before);
    let log = emu.faults().log();
    for name in ["payments", "billing"] {
        let path = format!("/v1alpha1/clusters/{name}");
        assert_eq!(log.count(&Method::PUT, &path), 0, "{name}");
        assert_eq!(log.count(&Method::DELETE, &path), 0, "{name}");
    }
    assert_eq!(
        log.count(&Method::POST, "/v1alpha1/clusters"),
        2,
        "only the setup's"
    );
    assert_eq!(log.count(&Method::GET, "/installer"), 0);
    assert_eq!(applier.applies.load(Ordering::SeqCst), 0);
}

/// Inputs journalled before tkgops recorded the ownership mark (no `owner`) prove nothing: both
/// steps fail permanently before any TMC call, even for a cluster carrying a mark.
#[tokio::test]
async fn inputs_without_an_ownership_mark_touch_nothing() {
    let emu = emulator().await;
    ready_cluster(&emu, "wl-old", "team-a", &labels()).await;
    let exec = executor(AgentSimApplier::new(AgentMode::Connect));
    let requests = emu.faults().log().all().len();
    for kind in ["tmc.attach", "tmc.detach"] {
        let mut ctx = tmc_ctx(&emu, kind, "wl-old", "team-b", ProgressSink::noop());
        let mut v = serde_json::to_value(&ctx.step.inputs).unwrap();
        v["inputs"].as_object_mut().unwrap().remove("owner");
        ctx.step.inputs = serde_json::from_value(v).expect("old inputs still parse");
        let err = exec.execute(&ctx).await.unwrap_err();
        assert!(
            matches!(&err, StepError::Permanent(m) if m.contains("carry no tkgops.dev/owner value")),
            "{kind}: {err:?}"
        );
    }
    assert_eq!(
        emu.faults().log().all().len(),
        requests,
        "no request at all"
    );
    assert_eq!(group_of(&emu, "wl-old"), "team-a");
}

/// tkgops crashes after its POST created the TMC cluster (while it fetches the installer): the
/// cluster it created carries its mark, so the resumed attempt (a new process) converges it
/// normally: no second POST, the installer applied, READY. A later change of its group is a
/// PUT as for any owned cluster.
#[tokio::test]
async fn a_crash_after_create_resumes_and_converges_the_cluster_tkgops_created() {
    let emu = emulator().await;
    emu.set_cluster_groups(&["default", "team-a", "team-b"]);
    // The first attempt hangs on the installer link after its POST; then the process dies.
    emu.faults().inject(Fault::new(
        Some(Method::GET),
        "/installer",
        FaultAction::Delay(Duration::from_secs(3600)),
        Some(1),
    ));
    let first = executor(AgentSimApplier::new(AgentMode::Connect));
    let ctx = attach_ctx(&emu, "wl-crash", ProgressSink::noop());
    let attempt = tokio::spawn(async move { first.execute(&ctx).await });
    emu.faults()
        .log()
        .wait_for(Duration::from_secs(30), |r| {
            r.method == Method::GET && r.path == "/installer"
        })
        .await
        .expect("the first attempt created the cluster and fetches its installer");
    attempt.abort();
    assert!(attempt.await.unwrap_err().is_cancelled());
    let stored = emu
        .cluster("wl-crash")
        .expect("created by the first attempt");
    assert_eq!(stored["status"]["phase"], "PENDING");
    assert_eq!(
        stored["meta"]["labels"],
        json!({"env": "prod", OWNER_KEY: owner("wl-crash")})
    );

    // Resume: a new executor (a restarted bot), the same inputs.
    let applier = AgentSimApplier::new(AgentMode::Connect);
    let exec = executor(applier.clone());
    let out = exec
        .execute(&attach_ctx(&emu, "wl-crash", ProgressSink::noop()))
        .await
        .expect("the resumed attempt converges the cluster it created");
    assert_eq!(out["phase"], "READY", "{out}");
    assert_eq!(out["installerApplied"], true, "{out}");
    assert_eq!(out["updated"], json!([]), "{out}");
    assert_eq!(out["uid"], stored["meta"]["uid"], "the same TMC cluster");
    assert_eq!(applier.applies.load(Ordering::SeqCst), 1);
    let log = emu.faults().log();
    assert_eq!(
        log.count(&Method::POST, "/v1alpha1/clusters"),
        1,
        "one POST"
    );

    // A later change of the group moves it (PUT), the mark kept.
    let (sink, lines) = recording_sink();
    let out = exec
        .execute(&tmc_ctx(&emu, "tmc.attach", "wl-crash", "team-b", sink))
        .await
        .expect("an owned cluster converges");
    assert_eq!(out["updated"], json!(["clusterGroup"]), "{out}");
    let stored = emu.cluster("wl-crash").unwrap();
    assert_eq!(stored["spec"]["clusterGroupName"], "team-b");
    assert_eq!(
        stored["meta"]["labels"][OWNER_KEY],
        json!(owner("wl-crash"))
    );
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "moved to cluster group team-b (was team-a)"),
        "{lines:?}"
    );
}

/// A detach whose cluster is replaced by a same-named one (another uid) while tkgops waits for
/// the 404 stops there: the new cluster is neither deleted nor force-deleted.
#[tokio::test]
async fn detach_leaves_a_same_named_cluster_created_meanwhile_alone() {
    let emu = emulator().await;
    ready_cluster(&emu, "wl-swap", "team-a", &labels()).await;
    emu.set_stuck_detaching("wl-swap", true);
    let exec = executor(AgentSimApplier::new(AgentMode::Connect))
        .with_detach_timeout(Duration::from_secs(60));
    let (sink, lines) = recording_sink();
    let ctx = detach_ctx(&emu, "wl-swap", sink);
    let detach = tokio::spawn(async move { exec.execute(&ctx).await });
    emu.faults()
        .log()
        .wait_for(Duration::from_secs(30), |r| {
            r.method == Method::DELETE && r.path == "/v1alpha1/clusters/wl-swap"
        })
        .await
        .expect("the detach was sent");
    // Someone else's cluster takes the name between two GETs: the old one is gone, a new one
    // (no mark) has the name.
    let theirs = emu
        .replace_cluster("wl-swap", "default", &labels())
        .expect("replaced");
    let out = tokio::time::timeout(Duration::from_secs(30), detach)
        .await
        .expect("the detach ends")
        .unwrap()
        .expect("ours is gone");
    assert_eq!(out["wasAttached"], true);
    assert_eq!(out["forced"], false);
    let stored = emu.cluster("wl-swap").expect("the new cluster stays");
    assert_eq!(stored["meta"]["uid"], json!(theirs));
    assert_eq!(stored["status"]["phase"], "PENDING");
    let dels = deletes(&emu, "wl-swap");
    assert_eq!(dels.len(), 1, "only ours, force=false: {dels:?}");
    assert!(dels[0].contains("force=false"), "{dels:?}");
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("a new TMC cluster of that name")),
        "{lines:?}"
    );
}

/// Issue 19 (secrets that rotate): the executor reads the API token at each step from its
/// source (the bot's `tmcTokenFile`, re-read when the file changes). A step under a token CSP
/// refuses fails; once the source has the new token, the next step exchanges it (a new client)
/// and attaches, without a new executor.
#[tokio::test]
async fn a_rotated_api_token_is_used_by_the_next_step() {
    let emu = emulator_with(Duration::from_secs(1799), Duration::from_millis(300)).await;
    let applier = AgentSimApplier::new(AgentMode::Connect);
    let current = Arc::new(Mutex::new("an-expired-api-token-000".to_string()));
    let source = {
        let current = current.clone();
        Arc::new(move || Some(SecretToken::new(current.lock().unwrap().clone())))
    };
    let exec = TmcExecutor::with_token_source(source, applier.clone(), Duration::from_millis(100));
    let err = exec
        .execute(&attach_ctx(&emu, "team-a-prod", ProgressSink::noop()))
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "a refused token is permanent: {err}");
    assert!(emu.cluster("team-a-prod").is_none());
    *current.lock().unwrap() = TOKEN.to_string();
    let out = exec
        .execute(&attach_ctx(&emu, "team-a-prod", ProgressSink::noop()))
        .await
        .expect("attached with the rotated token");
    assert_eq!(out["phase"], "READY");
}

//! Leader election (issue 19 point 3): the emulated API server's Lease semantics the election
//! relies on, and two `tkgops serve` replicas sharing one state directory (a ReadWriteOnce
//! volume moving to a new pod) failing over exactly once.

use std::path::Path;
use std::time::Duration;

use axum::http::Method;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tkgops::config::LeaderElectionSettings;
use tkgops_emulators::faults::{Fault, FaultAction};
use tkgops_emulators::kube::Gvr;
use tkgops_sandbox::{Environment, Timings, MANAGEMENT_CLUSTER};

use crate::e2e::{bot_comments, merge_create_until_tmc_attach, start_env};

const LEASE: &str = "tkgops";
const CLUSTER: &str = "team-a-prod";

fn lease_gvr() -> Gvr {
    Gvr::new("coordination.k8s.io", "v1", "leases")
}

/// The holder and transition count of the Lease as the emulated API server stores it.
fn lease_state(env: &Environment) -> Option<(String, i64)> {
    let lease =
        env.kube
            .cluster(MANAGEMENT_CLUSTER)
            .unwrap()
            .get(&lease_gvr(), Some("default"), LEASE)?;
    Some((
        lease
            .pointer("/spec/holderIdentity")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
        lease
            .pointer("/spec/leaseTransitions")
            .and_then(|v| v.as_i64())
            .unwrap_or(0),
    ))
}

/// Waits (checking every 50 ms, up to `within`) until the Lease names `holder`; returns how
/// long that took.
async fn wait_holder(env: &Environment, holder: &str, within: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if lease_state(env).is_some_and(|(h, _)| h == holder) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "the lease did not name {holder} within {within:?}: {:?}",
            lease_state(env)
        );
    }
}

/// A `tkgops serve` replica named `identity` with leader election on the management cluster's
/// emulated API server (short durations), sharing the environment's state directory, serving
/// HTTP on `port`.
fn spawn_replica(
    env: &Environment,
    timings: &Timings,
    identity: &str,
    port: u16,
    kubeconfig: &Path,
) -> tokio::process::Child {
    let mut cfg = env.bot_config(timings);
    cfg.listen = Some(format!("127.0.0.1:{port}"));
    cfg.leader_election = LeaderElectionSettings {
        enabled: true,
        lease_name: LEASE.into(),
        namespace: Some("default".into()),
        identity: None,
        kubeconfig: Some(kubeconfig.to_path_buf()),
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
    };
    let path = env.workdir.join(format!("bot-{identity}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    let log = std::fs::File::create(env.workdir.join(format!("bot-{identity}.log"))).unwrap();
    let mut cmd = tokio::process::Command::new(crate::support::tkgops_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .envs(env.bot_env())
        .env("POD_NAME", identity)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    cmd.spawn().expect("spawning tkgops serve")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `/readyz` of the replica on `port`: (status, body), or `None` while nothing listens.
async fn readyz(port: u16) -> Option<(u16, String)> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

/// Waits (every 100 ms, up to 60 s) until the replica on `port` answers `/readyz` with
/// `status`; returns the body.
async fn wait_readyz(port: u16, status: u16) -> String {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if let Some((s, body)) = readyz(port).await {
            if s == status {
                return body;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "/readyz of :{port} never answered {status}"
        );
    }
}

/// What leader election relies on, as a real API server answers it: a second create of a
/// Lease is 409 AlreadyExists, and an update carrying a resourceVersion that is no longer
/// current is 409 Conflict (so two candidates writing the same version cannot both win).
#[tokio::test]
async fn the_emulated_api_server_guards_lease_writes_like_a_real_one() {
    tkgops_providers::install_crypto_provider();
    let kube = tkgops_emulators::kube::KubeEmulator::new();
    let cluster = kube.add_cluster("mgmt").await.expect("cluster");
    let api: Api<Lease> = Api::namespaced(cluster.client().await.unwrap(), "default");
    let lease = |holder: &str| Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    let pp = PostParams::default();
    let first = api.create(&pp, &lease("a")).await.unwrap();
    let err = api.create(&pp, &lease("b")).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );
    // Two candidates read the same version; the first write wins, the second is a conflict.
    let mut a = first.clone();
    a.spec.as_mut().unwrap().holder_identity = Some("a2".into());
    let mut b = first.clone();
    b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let written = api.replace(LEASE, &pp, &a).await.unwrap();
    assert_ne!(
        written.metadata.resource_version,
        first.metadata.resource_version
    );
    let err = api.replace(LEASE, &pp, &b).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );
    let now = api.get(LEASE).await.unwrap();
    assert_eq!(
        now.spec.unwrap().holder_identity.as_deref(),
        Some("a2"),
        "the conflicting write changed nothing"
    );
}

/// Two replicas share one state directory. The first holds the Lease and runs the merge; it is
/// SIGKILLed while the TMC attach step is in flight. The standby (which never opened the
/// journal) takes over within the Lease duration + 5 s, fences the journal with its token,
/// and finishes the run: the Cluster applied once, TMC saw one POST, one sticky comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_takes_over_a_killed_holder_and_finishes_the_run_exactly_once() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let kubeconfig = env.workdir.join("lease.kubeconfig");
    std::fs::write(&kubeconfig, mgmt.kubeconfig_yaml()).unwrap();
    // Hold the CSP token exchange (the first TMC call of the attach step) until the kill.
    env.tmc.faults().inject(Fault::new(
        Some(Method::POST),
        "/csp/gateway/am/api/auth/api-tokens/authorize",
        FaultAction::Delay(Duration::from_secs(600)),
        Some(1),
    ));

    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_replica(&env, &timings, "replica-a", port_a, &kubeconfig);
    wait_holder(&env, "replica-a", Duration::from_secs(60)).await;
    let mut b = spawn_replica(&env, &timings, "replica-b", port_b, &kubeconfig);
    // b is a standby: alive, not ready, and it has not touched the journal.
    let body = wait_readyz(port_b, 503).await;
    assert!(body.contains("standby"), "{body}");
    wait_readyz(port_a, 200).await;
    assert_eq!(lease_state(&env), Some(("replica-a".into(), 0)));

    let (pr, merge) = merge_create_until_tmc_attach(&env).await;
    assert!(
        matches!(readyz(port_b).await, Some((503, _))),
        "b is still a standby"
    );
    a.kill().await.expect("SIGKILL");
    let _ = a.wait().await;

    let took = wait_holder(&env, "replica-b", Duration::from_secs(3 + 5)).await;
    assert!(took <= Duration::from_secs(3 + 5), "took over in {took:?}");
    assert_eq!(
        lease_state(&env),
        Some(("replica-b".into(), 1)),
        "b holds the lease with the next token"
    );
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr));
    assert!(
        b.try_wait().unwrap().is_none(),
        "b still runs as the holder"
    );
    b.kill().await.ok();
    let _ = b.wait().await;

    let applies: Vec<_> = mgmt
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
    // The journal carries b's token: a writer under a's token (0) is refused.
    let store =
        tkgops_engine::store::SledStore::open(&env.workdir.join("bot-state/journal")).unwrap();
    let err = store.fence(0).await.unwrap_err();
    assert!(
        matches!(
            err,
            tkgops_engine::store::StoreError::StaleFencingToken {
                token: 0,
                highest: 1
            }
        ),
        "{err}"
    );
}

/// A holder whose renewals fail (the API server answers 500 to its Lease writes) stops at the
/// renew deadline (2 s) and exits with status 3, within the Lease duration (3 s) + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_that_cannot_renew_stops_and_exits_3() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    let kubeconfig = env.workdir.join("lease.kubeconfig");
    std::fs::write(&kubeconfig, mgmt.kubeconfig_yaml()).unwrap();
    let port = free_port();
    let mut a = spawn_replica(&env, &timings, "replica-a", port, &kubeconfig);
    wait_holder(&env, "replica-a", Duration::from_secs(60)).await;
    wait_readyz(port, 200).await;

    mgmt.faults().inject(Fault::new(
        Some(Method::PUT),
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/tkgops",
        FaultAction::Status {
            code: 500,
            body: "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":\"etcdserver: request timed out\",\"code\":500}".into(),
        },
        None,
    ));
    let failing_since = tokio::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(4), a.wait())
        .await
        .expect("the holder did not exit within the lease duration + 1 s")
        .unwrap();
    assert_eq!(status.code(), Some(3), "{status}");
    assert!(failing_since.elapsed() < Duration::from_secs(4));
    let log = std::fs::read_to_string(env.workdir.join("bot-replica-a.log")).unwrap();
    assert!(log.contains("lost the lease"), "{log}");
}

/// Two electors on one Lease: the second waits while the first's Lease is fresh (seeing it as
/// the holder), takes it once the first stops renewing (a paused process), with the next
/// token; the first, waking up, finds its Lease lost and its journal refuses its writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_loses_the_lease_and_its_journal_refuses_its_writes() {
    use tkgops::lease::{HeldLease, LeaderElector};
    use tkgops_engine::store::Store;
    tkgops_providers::install_crypto_provider();
    let kube = tkgops_emulators::kube::KubeEmulator::new();
    let cluster = kube.add_cluster("mgmt").await.expect("cluster");
    let client = cluster.client().await.unwrap();
    let settings = LeaderElectionSettings {
        enabled: true,
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(100),
        ..Default::default()
    };
    let mut a = LeaderElector::new(client.clone(), "default", "a", &settings);
    let la = a.acquire(|_| {}).await.unwrap();
    assert_eq!(la.token, 0);
    let store = tkgops_engine::store::SledStore::temporary().unwrap();
    store.fence(la.token).await.unwrap();
    store.put_meta("k", b"a").await.unwrap();

    // a is paused (it does not renew); b waits while the Lease is fresh, then takes it.
    let mut b = LeaderElector::new(client.clone(), "default", "b", &settings);
    let mut saw = Vec::new();
    let lb = b
        .acquire(|holder| saw.push(holder.to_string()))
        .await
        .unwrap();
    assert_eq!(lb.token, 1, "a new token");
    assert!(
        !saw.is_empty() && saw.iter().all(|h| h == "a"),
        "b was a standby behind a first: {saw:?}"
    );
    let api: Api<Lease> = Api::namespaced(client, "default");
    let spec = api.get(LEASE).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));

    // a wakes up: its hold ends at once and the journal refuses its writes.
    let held = HeldLease::spawn(a, la);
    held.set_fencing(store.fencing());
    let why = tokio::time::timeout(Duration::from_secs(5), held.lost())
        .await
        .expect("a noticed it lost the lease");
    let err = store.put_meta("k", b"a again").await.unwrap_err();
    assert!(
        matches!(
            err,
            tkgops_engine::store::StoreError::StaleFencingToken { token: 0, .. }
        ),
        "{why}: {err}"
    );
    assert_eq!(store.get_meta("k").await.unwrap(), Some(b"a".to_vec()));
    // a wrote nothing into the Lease after losing it; b releases it on a graceful stop.
    let held_b = HeldLease::spawn(b, lb);
    let spec = api.get(LEASE).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    held_b.release().await;
    let spec = api.get(LEASE).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity, None, "released on a graceful stop");
}

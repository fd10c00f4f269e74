//! Issue 19 point 4, Kubernetes: the emulated API server authorizes ServiceAccounts' requests by
//! RBAC as a real one does, and tkgops runs as the ServiceAccount of
//! `deploy/management-cluster-rbac.yaml` (the sandbox binds it; every story runs under it).

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tkgops_emulators::kube::{EmulatedCluster, Gvr, KubeEmulator};

use crate::support::root;

const SA_USER: &str = "system:serviceaccount:tkg-system:tkgops";

async fn cluster() -> EmulatedCluster {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let c = emu.add_cluster("mgmt").await.expect("cluster");
    c.create(
        &Gvr::new("", "v1", "namespaces"),
        json!({"metadata": {"name": "tkg-system"}}),
    )
    .unwrap();
    c
}

async fn client_of(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn api_err(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected kube::Error::Api, got {other:?}"),
    }
}

fn rbac(plural: &str) -> Gvr {
    Gvr::new("rbac.authorization.k8s.io", "v1", plural)
}

fn service_account(c: &EmulatedCluster) {
    c.create(
        &Gvr::new("", "v1", "serviceaccounts"),
        json!({"metadata": {"name": "tkgops", "namespace": "tkg-system"}}),
    )
    .unwrap();
}

#[tokio::test]
async fn a_service_account_is_authorized_by_the_stored_rbac() {
    let c = cluster().await;
    let kubeconfig = c.service_account_kubeconfig_yaml("tkg-system", "tkgops");
    let client = client_of(&kubeconfig).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // The token of a ServiceAccount that does not exist is refused.
    let (code, _, _) = api_err(cms.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 401);
    service_account(&c);

    // Nothing bound: the API server's 403, worded as it words it.
    let (code, reason, msg) = api_err(cms.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        msg,
        format!("configmaps is forbidden: User \"{SA_USER}\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\"")
    );
    // Discovery and /version are every authenticated user's (system:discovery).
    client.apiserver_version().await.expect("/version");
    kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");

    // A Role bound in `default` allows get of one ConfigMap by name, there only.
    c.create(
        &rbac("roles"),
        json!({"metadata": {"name": "r", "namespace": "default"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"], "resourceNames": ["one"]}]}),
    )
    .unwrap();
    c.create(
        &rbac("rolebindings"),
        json!({"metadata": {"name": "b", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "tkgops", "namespace": "tkg-system"}]}),
    )
    .unwrap();
    for name in ["one", "two"] {
        c.create(
            &Gvr::new("", "v1", "configmaps"),
            json!({"metadata": {"name": name, "namespace": "default"}}),
        )
        .unwrap();
    }
    cms.get("one").await.expect("get of the named ConfigMap");
    let (code, _, msg) = api_err(cms.get("two").await.unwrap_err());
    assert_eq!(code, 403);
    assert_eq!(
        msg,
        format!("configmaps \"two\" is forbidden: User \"{SA_USER}\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\"")
    );
    // resourceNames never allow an unnamed list, but a list naming the object does.
    assert_eq!(
        api_err(cms.list(&ListParams::default()).await.unwrap_err()).0,
        403
    );
    cms.list(&ListParams::default().fields("metadata.name=one"))
        .await
        .expect("a list by metadata.name is authorized with the name");
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    assert_eq!(api_err(other.get("one").await.unwrap_err()).0, 403);

    // A ClusterRoleBinding to a ClusterRole that does not exist: the reason says so.
    c.create(
        &rbac("clusterrolebindings"),
        json!({"metadata": {"name": "dangling"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "gone"},
            "subjects": [{"kind": "Group", "name": "system:serviceaccounts:tkg-system"}]}),
    )
    .unwrap();
    let secrets: Api<Secret> = Api::all(client.clone());
    let (_, _, msg) = api_err(secrets.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(
        msg,
        format!("secrets is forbidden: User \"{SA_USER}\" cannot list resource \"secrets\" in API group \"\" at the cluster scope: RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found")
    );

    // The admin's token stays all-powerful.
    let admin: Api<Secret> = Api::all(c.client().await.unwrap());
    admin.list(&ListParams::default()).await.expect("admin");
    let log = c.authorizations();
    assert!(
        log.iter()
            .any(|a| a.user == SA_USER && !a.allowed && a.verb == "list"),
        "{log:?}"
    );
}

#[tokio::test]
async fn server_side_apply_that_creates_needs_create_too() {
    let c = cluster().await;
    service_account(&c);
    c.create(
        &rbac("clusterroles"),
        json!({"metadata": {"name": "cm-patch"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}]}),
    )
    .unwrap();
    c.create(
        &rbac("clusterrolebindings"),
        json!({"metadata": {"name": "cm-patch"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cm-patch"},
            "subjects": [{"kind": "ServiceAccount", "name": "tkgops", "namespace": "tkg-system"}]}),
    )
    .unwrap();
    let client = client_of(&c.service_account_kubeconfig_yaml("tkg-system", "tkgops")).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
    let (code, _, msg) = api_err(
        cms.patch("x", &PatchParams::apply("tkgops"), &Patch::Apply(&obj))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert_eq!(msg, "configmaps \"x\" is forbidden: ");
    // Once it exists, patch is enough.
    c.create(
        &Gvr::new("", "v1", "configmaps"),
        json!({"metadata": {"name": "x", "namespace": "default"}}),
    )
    .unwrap();
    cms.patch("x", &PatchParams::apply("tkgops"), &Patch::Apply(&obj))
        .await
        .expect("apply of an existing object");
    let (code, _, _) = api_err(
        cms.create(&PostParams::default(), &ConfigMap::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
}

/// The shipped RBAC, applied to the sandbox's management cluster: what the bot's provider needs
/// for a Cluster's whole life is allowed, and nothing beyond the rules (another kind's write is
/// refused).
#[tokio::test]
async fn the_shipped_rbac_allows_the_cluster_reads_and_refuses_other_writes() {
    let c = cluster().await;
    let env_yaml = std::fs::read_to_string(root().join("deploy/management-cluster-rbac.yaml"))
        .expect("rbac file");
    assert_eq!(env_yaml, tkgops_sandbox::MANAGEMENT_CLUSTER_RBAC);
    c.register_capi_types();
    for doc in serde_yaml::Deserializer::from_str(&env_yaml) {
        use serde::Deserialize as _;
        let v = serde_json::Value::deserialize(doc).unwrap();
        let plural = match v["kind"].as_str().unwrap() {
            "ServiceAccount" => {
                c.create(&Gvr::new("", "v1", "serviceaccounts"), v).unwrap();
                continue;
            }
            "ClusterRole" => "clusterroles",
            "ClusterRoleBinding" => "clusterrolebindings",
            "Role" => "roles",
            "RoleBinding" => "rolebindings",
            other => panic!("unexpected kind {other}"),
        };
        c.create(&rbac(plural), v).unwrap();
    }
    let client = client_of(&c.service_account_kubeconfig_yaml("tkg-system", "tkgops")).await;
    let ar = kube::api::ApiResource {
        group: "cluster.x-k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "cluster.x-k8s.io/v1beta1".into(),
        kind: "Cluster".into(),
        plural: "clusters".into(),
    };
    let clusters: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    clusters.list(&ListParams::default()).await.expect("list");
    let machines: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource {
            kind: "Machine".into(),
            plural: "machines".into(),
            ..ar.clone()
        },
    );
    let (code, _, msg) = api_err(machines.delete("m", &Default::default()).await.unwrap_err());
    assert_eq!(code, 403, "{msg}");
    let pinniped: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    assert_eq!(
        api_err(pinniped.get("pinniped-info").await.unwrap_err()).0,
        404
    );
    assert_eq!(api_err(pinniped.get("other").await.unwrap_err()).0, 403);
}

fn sandbox(args: &[&str]) -> (bool, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tkgops-sandbox"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running tkgops-sandbox");
    (
        o.status.success(),
        format!(
            "{}\n----- stderr -----\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The `==> kubernetes access by tkgops: …` line.
fn kube_access(out: &str) -> Vec<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("==> kubernetes access by tkgops: "))
        .unwrap_or_else(|| panic!("no Kubernetes access line: {out}"))
        .split(", ")
        .map(str::to_string)
        .collect()
}

/// The upgrade story (create, then a day-2 upgrade with its rollout waits) as the
/// ServiceAccount bound to the shipped RBAC: it succeeds, its writes and watches were the
/// ServiceAccount's, and nothing was refused.
#[test]
fn the_upgrade_story_runs_as_the_service_account_of_the_shipped_rbac() {
    let (ok, out) = sandbox(&["--story", "upgrade", "--exit"]);
    assert!(ok, "{out}");
    let access = kube_access(&out);
    for needed in [
        "create clusters.cluster.x-k8s.io in default",
        "patch clusters.cluster.x-k8s.io in default",
        "watch clusters.cluster.x-k8s.io",
        "watch machines.cluster.x-k8s.io",
        "get awsmachinetemplates.infrastructure.cluster.x-k8s.io in default",
    ] {
        assert!(access.iter().any(|a| a == needed), "{needed}: {access:?}");
    }
    assert!(!access.iter().any(|a| a.ends_with("DENIED")), "{access:?}");
}

/// The shipped RBAC without `patch` on Clusters: the API server refuses the apply with a 403
/// and the run fails on the pull request with the API server's words and what it means.
#[test]
fn a_missing_verb_is_a_403_the_run_reports() {
    let shipped = tkgops_sandbox::MANAGEMENT_CLUSTER_RBAC;
    let rule = "    resources: [\"clusters\"]\n    verbs: [\"get\", \"list\", \"watch\", \"create\", \"patch\", \"delete\"]";
    assert!(shipped.contains(rule), "the clusters rule changed shape");
    let without_patch = shipped.replace(
        rule,
        "    resources: [\"clusters\"]\n    verbs: [\"get\", \"list\", \"watch\", \"create\", \"delete\"]",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rbac-without-patch.yaml");
    std::fs::write(&path, without_patch).unwrap();
    let (ok, out) = sandbox(&["--exit", "--management-rbac", path.to_str().unwrap()]);
    assert!(!ok, "the story succeeded without patch on clusters:\n{out}");
    assert!(out.contains("tkgops/apply: failure"), "{out}");
    let message = format!(
        "clusters.cluster.x-k8s.io \"team-a-prod\" is forbidden: User \"{SA_USER}\" cannot patch resource \"clusters\" in API group \"cluster.x-k8s.io\" in the namespace \"default\""
    );
    assert!(out.contains(&message), "{out}");
    assert!(
        out.contains("(the kubeconfig's user is not allowed to do this)"),
        "{out}"
    );
    assert!(
        kube_access(&out)
            .iter()
            .any(|a| a == "patch clusters.cluster.x-k8s.io in default DENIED"),
        "{out}"
    );
}

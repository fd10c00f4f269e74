//! Issue 19 point 4, Kubernetes: the emulated API server authorizes ServiceAccounts' requests by
//! RBAC as a real one does, and tkgops runs as the ServiceAccount of
//! `deploy/management-cluster-rbac.yaml` (the sandbox binds it; every story runs under it).
//! Both directions are checked: nothing is missing (a verb taken away is a 403 that fails the
//! run) and nothing is extra (the stories, run in one sandbox, use every verb of every rule: the
//! emulator records the rule that allowed each request, `EmulatedCluster::authorized_requests`).

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

// ----- Least privilege: every grant of the shipped RBAC is used ---------------------------------

/// One `(apiGroup, resource, verb)` a rule of an RBAC file grants (or `(nonResourceURL, verb)`
/// for a non-resource rule), with the role and the rule it is in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    role_kind: String,
    role_name: String,
    /// The Role's namespace; empty for a ClusterRole.
    role_namespace: String,
    rule_index: usize,
    api_group: String,
    /// As the rule names it: `clusters`, `clusters/status`, `*`.
    resource: String,
    non_resource_url: String,
    verb: String,
}

impl Grant {
    /// `cluster.x-k8s.io clusters deletecollection`, `"" secrets get`, `/metrics get`.
    fn what(&self) -> String {
        if self.non_resource_url.is_empty() {
            let group = if self.api_group.is_empty() {
                "\"\""
            } else {
                &self.api_group
            };
            format!("{group} {} {}", self.resource, self.verb)
        } else {
            format!("{} {}", self.non_resource_url, self.verb)
        }
    }

    fn role(&self) -> String {
        if self.role_namespace.is_empty() {
            format!("{} {}", self.role_kind, self.role_name)
        } else {
            format!(
                "{} {}/{}",
                self.role_kind, self.role_namespace, self.role_name
            )
        }
    }

    /// Whether `r` was allowed by this grant: by its rule, through its verb entry, for its
    /// group and resource (or URL); `*` in the rule stands for whatever the request had (a
    /// `*/subresource` entry is not expanded: it counts as unused).
    fn used_by(&self, r: &tkgops_emulators::kube::AuthorizedRequest) -> bool {
        let by = &r.allowed_by;
        let entry = |granted: &str, asked: &str| granted == "*" || granted == asked;
        by.role_kind == self.role_kind
            && by.role_name == self.role_name
            && by.role_namespace == self.role_namespace
            && by.rule_index == self.rule_index
            && by.verb == self.verb
            && if self.non_resource_url.is_empty() {
                r.non_resource_url.is_empty()
                    && entry(&self.api_group, &r.api_group)
                    && entry(&self.resource, &r.resource_with_subresource())
            } else {
                !r.non_resource_url.is_empty()
                    && (entry(&self.non_resource_url, &r.non_resource_url)
                        || self
                            .non_resource_url
                            .strip_suffix('*')
                            .is_some_and(|p| r.non_resource_url.starts_with(p)))
            }
    }
}

/// Every grant the Roles and ClusterRoles of the RBAC file `yaml` give the ServiceAccount
/// `namespace`/`name` through the file's bindings. Panics (naming it) on a role of the file no
/// binding of the file gives that ServiceAccount: it grants nothing anyone uses.
fn grants_to(yaml: &str, namespace: &str, name: &str) -> Vec<Grant> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, Subject};
    use serde::Deserialize as _;
    let is_sa = |s: &Subject, binding_ns: &str| {
        s.kind == "ServiceAccount"
            && s.name == name
            && s.namespace.as_deref().unwrap_or(binding_ns) == namespace
    };
    // (kind, name, namespace) → rules; and the roles bound to the ServiceAccount.
    let mut roles = std::collections::BTreeMap::new();
    let mut bound = std::collections::BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        match v["kind"].as_str().unwrap_or_default() {
            "ClusterRole" => {
                let r: ClusterRole = serde_json::from_value(v).unwrap();
                let key = (
                    "ClusterRole".to_string(),
                    r.metadata.name.unwrap(),
                    String::new(),
                );
                roles.insert(key, r.rules.unwrap_or_default());
            }
            "Role" => {
                let r: Role = serde_json::from_value(v).unwrap();
                let key = (
                    "Role".to_string(),
                    r.metadata.name.unwrap(),
                    r.metadata.namespace.unwrap_or_default(),
                );
                roles.insert(key, r.rules.unwrap_or_default());
            }
            "ClusterRoleBinding" => {
                let b: ClusterRoleBinding = serde_json::from_value(v).unwrap();
                if b.subjects.iter().flatten().any(|s| is_sa(s, "")) {
                    bound.insert((b.role_ref.kind, b.role_ref.name, String::new()));
                }
            }
            "RoleBinding" => {
                let b: RoleBinding = serde_json::from_value(v).unwrap();
                let ns = b.metadata.namespace.unwrap_or_default();
                if b.subjects.iter().flatten().any(|s| is_sa(s, &ns)) {
                    let role_ns = if b.role_ref.kind == "Role" {
                        ns
                    } else {
                        String::new()
                    };
                    bound.insert((b.role_ref.kind, b.role_ref.name, role_ns));
                }
            }
            _ => {}
        }
    }
    let mut grants = Vec::new();
    for ((kind, role, ns), rules) in roles {
        assert!(
            bound.contains(&(kind.clone(), role.clone(), ns.clone())),
            "{kind} {role} is bound to no binding of ServiceAccount {namespace}/{name} in the file"
        );
        for (rule_index, rule) in rules.iter().enumerate() {
            let grant = |api_group: &str, resource: &str, url: &str, verb: &str| Grant {
                role_kind: kind.clone(),
                role_name: role.clone(),
                role_namespace: ns.clone(),
                rule_index,
                api_group: api_group.into(),
                resource: resource.into(),
                non_resource_url: url.into(),
                verb: verb.into(),
            };
            for verb in &rule.verbs {
                for group in rule.api_groups.iter().flatten() {
                    for resource in rule.resources.iter().flatten() {
                        grants.push(grant(group, resource, "", verb));
                    }
                }
                for url in rule.non_resource_urls.iter().flatten() {
                    grants.push(grant("", "", url, verb));
                }
            }
        }
    }
    grants
}

/// The grants of `grants` that no request of `user` in `requests` was allowed by
/// ([`Grant::used_by`]).
fn unused_grants(
    grants: &[Grant],
    requests: &[tkgops_emulators::kube::AuthorizedRequest],
    user: &str,
) -> Vec<Grant> {
    grants
        .iter()
        .filter(|g| !requests.iter().any(|r| r.user == user && g.used_by(r)))
        .cloned()
        .collect()
}

fn describe(unused: &[Grant]) -> Vec<String> {
    unused
        .iter()
        .map(|g| {
            format!(
                "granted but unused: {} ({}, rule {})",
                g.what(),
                g.role(),
                g.rule_index
            )
        })
        .collect()
}

/// The emulator records each request RBAC allowed with the rule that allowed it, and the check
/// of [`the_stories_use_every_grant_of_the_shipped_rbac`] names each grant nothing used: an
/// extra verb, or a grant whose only use was not made.
#[tokio::test]
async fn allowed_requests_name_their_rule_and_unused_grants_are_named() {
    let c = cluster().await;
    c.register_capi_types();
    let yaml = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: tkgops, namespace: tkg-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: tkgops}
rules:
  - apiGroups: ["cluster.x-k8s.io"]
    resources: ["clusters"]
    verbs: ["get", "list", "deletecollection"]
  - apiGroups: ["cluster.x-k8s.io"]
    resources: ["clusters/status"]
    verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: tkgops}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: tkgops}
subjects: [{kind: ServiceAccount, name: tkgops, namespace: tkg-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: one-configmap, namespace: default}
rules:
  - apiGroups: [""]
    resources: ["configmaps"]
    resourceNames: ["one"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: one-configmap, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: one-configmap}
subjects: [{kind: ServiceAccount, name: tkgops, namespace: tkg-system}]
"#;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        use serde::Deserialize as _;
        let v = serde_json::Value::deserialize(doc).unwrap();
        let gvr = match v["kind"].as_str().unwrap() {
            "ServiceAccount" => Gvr::new("", "v1", "serviceaccounts"),
            "ClusterRole" => rbac("clusterroles"),
            "ClusterRoleBinding" => rbac("clusterrolebindings"),
            "Role" => rbac("roles"),
            _ => rbac("rolebindings"),
        };
        c.create(&gvr, v).unwrap();
    }
    let grants = grants_to(yaml, "tkg-system", "tkgops");
    assert_eq!(grants.len(), 5, "{grants:#?}");
    let client = client_of(&c.service_account_kubeconfig_yaml("tkg-system", "tkgops")).await;
    let ar = kube::api::ApiResource {
        group: "cluster.x-k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "cluster.x-k8s.io/v1beta1".into(),
        kind: "Cluster".into(),
        plural: "clusters".into(),
    };
    let clusters: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    // Allowed, then not found: the request counts (authorization comes first).
    assert_eq!(api_err(clusters.get("c1").await.unwrap_err()).0, 404);
    let status = json!({"status": {"phase": "Provisioned"}});
    assert_eq!(
        api_err(
            clusters
                .patch_status("c1", &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap_err()
        )
        .0,
        404
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert_eq!(api_err(cms.get("one").await.unwrap_err()).0, 404);
    assert_eq!(api_err(cms.get("two").await.unwrap_err()).0, 403);
    client.apiserver_version().await.expect("/version");

    let requests = c.authorized_requests();
    let get = requests
        .iter()
        .find(|r| r.verb == "get" && r.resource == "clusters")
        .unwrap_or_else(|| panic!("{requests:#?}"));
    assert_eq!(
        (
            get.user.as_str(),
            get.api_group.as_str(),
            get.namespace.as_str(),
            get.name.as_str(),
            get.subresource.as_str()
        ),
        (SA_USER, "cluster.x-k8s.io", "default", "c1", "")
    );
    assert_eq!(
        get.allowed_by,
        tkgops_emulators::kube::AllowingRule {
            binding_kind: "ClusterRoleBinding".into(),
            binding_name: "tkgops".into(),
            binding_namespace: String::new(),
            role_kind: "ClusterRole".into(),
            role_name: "tkgops".into(),
            role_namespace: String::new(),
            rule_index: 0,
            verb: "get".into(),
        }
    );
    let patch = requests
        .iter()
        .find(|r| r.verb == "patch")
        .unwrap_or_else(|| panic!("{requests:#?}"));
    assert_eq!(
        (
            patch.resource_with_subresource().as_str(),
            patch.allowed_by.rule_index
        ),
        ("clusters/status", 1)
    );
    let cm = requests
        .iter()
        .find(|r| r.resource == "configmaps")
        .unwrap_or_else(|| panic!("{requests:#?}"));
    assert_eq!(
        (
            cm.name.as_str(),
            cm.allowed_by.role_kind.as_str(),
            cm.allowed_by.role_namespace.as_str(),
            cm.allowed_by.binding_namespace.as_str()
        ),
        ("one", "Role", "default", "default")
    );
    assert!(
        !requests.iter().any(|r| r.name == "two"),
        "a denied request is not an allowed one: {requests:#?}"
    );
    let version = requests
        .iter()
        .find(|r| r.non_resource_url == "/version")
        .unwrap_or_else(|| panic!("{requests:#?}"));
    assert_eq!(version.allowed_by.role_name, "system:discovery");

    assert_eq!(
        describe(&unused_grants(&grants, &requests, SA_USER)),
        [
            "granted but unused: cluster.x-k8s.io clusters list (ClusterRole tkgops, rule 0)",
            "granted but unused: cluster.x-k8s.io clusters deletecollection (ClusterRole tkgops, rule 0)",
        ]
    );
    clusters.list(&ListParams::default()).await.expect("list");
    assert_eq!(
        describe(&unused_grants(
            &grants,
            &c.authorized_requests(),
            SA_USER
        )),
        ["granted but unused: cluster.x-k8s.io clusters deletecollection (ClusterRole tkgops, rule 0)"]
    );
    // Another user's requests use nothing of this ServiceAccount's grants.
    assert_eq!(
        unused_grants(
            &grants,
            &c.authorized_requests(),
            "system:serviceaccount:x:y"
        )
        .len(),
        5
    );
}

/// Grants of `deploy/management-cluster-rbac.yaml` that no story below uses, kept on purpose:
/// `(apiGroup, resource, verb, why)`. Empty: every grant is on a path the stories reach. Add one
/// only for a grant needed on a path no story can reach (say which, and why it is needed); the
/// test fails when an entry is no longer granted or is used after all.
const UNUSED_ON_PURPOSE: &[(&str, &str, &str, &str)] = &[];

/// Least privilege, "granted but unused": in one sandbox, with the bot running as the
/// ServiceAccount of the shipped RBAC, pull requests and a schedule do everything tkgops does on
/// a management cluster: create two clusters (team-a-prod with a customised Antrea, team-b-prod
/// with Calico behind a proxy, so that their ClusterBootstraps, AntreaConfig, CalicoConfig and
/// AwsEbsCSIConfig are applied too), scale team-a-prod, add a package to it, upgrade both by an
/// `apply` schedule whose canary wave soaks (the health probe), and delete team-b-prod. Nothing
/// is refused, and every (apiGroup, resource, verb) of every rule of
/// `deploy/management-cluster-rbac.yaml` allowed at least one of the bot's requests (by that
/// rule: a grant repeated in a later rule is unused), except [`UNUSED_ON_PURPOSE`].
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stories_use_every_grant_of_the_shipped_rbac() {
    use chrono::{TimeZone, Utc};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tkgops_sandbox::{request_files, Timings, APPROVER, AUTHOR, MANAGEMENT_CLUSTER};

    const OLD: &str = "v1.24.11+vmware.1-tkg.1";
    const NEW: &str = "v1.25.7+vmware.2-tkg.1";
    let timeout = Duration::from_secs(240);
    let shipped = std::fs::read_to_string(root().join("deploy/management-cluster-rbac.yaml"))
        .expect("rbac file");
    assert_eq!(shipped, tkgops_sandbox::MANAGEMENT_CLUSTER_RBAC);
    let grants = grants_to(
        &shipped,
        tkgops_sandbox::BOT_SA_NAMESPACE,
        tkgops_sandbox::BOT_SA_NAME,
    );

    let timings = Timings::default();
    let env = crate::e2e::start_env(&timings).await;
    let bot = env.start_bot(&timings).await.expect("bot");
    // The schedules' clock: Friday 4 December 2026 until the fire (Saturday 02:00 in Berlin).
    let clock = Arc::new(Mutex::new(
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap(),
    ));
    let c = clock.clone();
    bot.bot.set_clock(Arc::new(move || *c.lock().unwrap()));

    // Create: team-a-prod (the canary, Antrea customised), team-b-prod (Calico behind a proxy).
    let (_, example) = request_files(None, &env.vpc);
    let mut files = Vec::new();
    for (name, label, config) in [
        ("team-a-prod", "\n  tier: canary", "ANTREA_NO_SNAT: \"true\"\n"),
        (
            "team-b-prod",
            "",
            "TKG_HTTP_PROXY_ENABLED: \"true\"\nTKG_HTTP_PROXY: http://proxy.example.com:3128\nTKG_HTTPS_PROXY: http://proxy.example.com:3128\n",
        ),
    ] {
        for (path, text) in &example {
            let mut text = text
                .replace("team-a-prod", name)
                .replace(NEW, OLD)
                .replace("  team: team-a", &format!("  team: team-a{label}"));
            if path.ends_with("cluster-config.yaml") {
                if name == "team-b-prod" {
                    text = text.replace("CNI: antrea", "CNI: calico");
                }
                text.push_str(config);
            }
            files.push((path.replace("team-a-prod", name), text));
        }
    }
    let file = |path: &str| {
        files
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("{path}"))
            .clone()
    };
    crate::day2::change_through_a_pull_request(&env, "add-clusters", &files).await;

    // Scale team-a-prod, then add a package to it.
    let (config, text) = file("clusters/team-a-prod/cluster-config.yaml");
    assert!(text.contains("WORKER_MACHINE_COUNT: 3"));
    let scaled = text.replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 4");
    crate::day2::change_through_a_pull_request(&env, "scale-team-a-prod", &[(config, scaled)])
        .await;
    let (settings, text) = file("clusters/team-a-prod/tkgops.yaml");
    let with_package = text.replace("labels:\n", "  - name: fluent-bit\nlabels:\n");
    assert_ne!(text, with_package);
    crate::day2::change_through_a_pull_request(
        &env,
        "fluent-bit-team-a-prod",
        &[(settings, with_package)],
    )
    .await;

    // Upgrade both by an apply schedule: the canary wave upgrades team-a-prod and soaks (its
    // health read at each poll); 31 minutes later the rest wave upgrades team-b-prod.
    crate::schedules::add_schedule(&env, crate::schedules::APPLY_SCHEDULE, None).await;
    *clock.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 5, 1, 5, 0).unwrap();
    let dashboard = |needle: &'static str| {
        let env = &env;
        async move {
            env.github
                .wait_until(timeout, |gh| {
                    gh.issues()
                        .into_iter()
                        .find(|i| i.body.contains(needle) || i.body.contains('⛔'))
                        .map(|i| i.body)
                })
                .await
                .unwrap_or_else(|| panic!("the dashboard never said {needle:?}"))
        }
    };
    let soaking = dashboard("| canary | soaking until").await;
    assert!(!soaking.contains('⛔'), "{soaking}");
    *clock.lock().unwrap() += chrono::Duration::minutes(31);
    let done = dashboard("cluster(s) upgraded in 2 wave(s)").await;
    assert!(!done.contains('⛔'), "{done}");
    assert_eq!(
        crate::e2e::kcp_version(&env, "team-b-prod"),
        "v1.25.7+vmware.2"
    );

    // Delete team-b-prod: the label and two approvals.
    let paths = [
        "clusters/team-b-prod/cluster-config.yaml",
        "clusters/team-b-prod/tkgops.yaml",
    ];
    tkgops_emulators::git_remote::remove_on_branch(
        &env.remote,
        "main",
        "delete-team-b-prod",
        "Delete team-b-prod",
        &paths,
    )
    .unwrap();
    let pr = env
        .github
        .open_pull_request("delete-team-b-prod", "Delete team-b-prod", "", AUTHOR)
        .unwrap();
    env.github
        .add_label(pr, APPROVER, tkgops_domain::request::ALLOW_DELETE_LABEL)
        .unwrap();
    let head = crate::e2e::head_of(&env, "delete-team-b-prod");
    env.github
        .wait_until(timeout, |gh| {
            gh.statuses(&head)
                .into_iter()
                .find(|s| s.context == "tkgops/plan" && s.state == "success")
        })
        .await
        .unwrap_or_else(|| panic!("never planned: {}", env.conversation(pr)));
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    env.github
        .submit_review(pr, tkgops_sandbox::SECOND_APPROVER, "APPROVED")
        .unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge, "tkgops/apply", timeout)
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr));
    bot.stop().await;

    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    // Nothing missing: no request of the bot was refused.
    let denied: Vec<_> = mgmt
        .authorizations()
        .into_iter()
        .filter(|a| a.user == SA_USER && !a.allowed)
        .collect();
    assert!(denied.is_empty(), "refused: {denied:#?}");
    // Nothing extra: every grant was used, but those kept on purpose (which must still be
    // granted and unused).
    let unused = unused_grants(&grants, &mgmt.authorized_requests(), SA_USER);
    let on_purpose = |g: &Grant| {
        UNUSED_ON_PURPOSE.iter().any(|(group, resource, verb, _)| {
            g.api_group == *group && g.resource == *resource && g.verb == *verb
        })
    };
    for (group, resource, verb, why) in UNUSED_ON_PURPOSE {
        assert!(
            unused.iter().any(|g| g.api_group == *group
                && g.resource == *resource
                && g.verb == *verb),
            "UNUSED_ON_PURPOSE lists {group:?} {resource} {verb} ({why}), which is not granted or was used"
        );
    }
    let unexpected: Vec<Grant> = unused.into_iter().filter(|g| !on_purpose(g)).collect();
    assert!(
        unexpected.is_empty(),
        "{}\n(every grant of deploy/management-cluster-rbac.yaml must allow a request of the stories; remove it, or make a story use it, or list it in UNUSED_ON_PURPOSE with the reason)",
        describe(&unexpected).join("\n")
    );
}

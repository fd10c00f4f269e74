//! Authentication of bearer tokens and RBAC authorization, as the API server's RBAC authorizer
//! (`plugin/pkg/auth/authorizer/rbac`) decides, over the Roles, ClusterRoles, RoleBindings and
//! ClusterRoleBindings the cluster stores.
//!
//! - The request's attributes follow the API server's `RequestInfoFactory`: `/api/v1/...` and
//!   `/apis/{group}/{version}/...` with at least a resource are resource requests (verb from the
//!   method: `get`, `list` (no name), `watch` (no name, `watch=true`), `create`, `update`,
//!   `patch`, `delete`, `deletecollection` (no name)); a `metadata.name=` field selector names
//!   the object of a list or watch; `namespaces/{name}` is its own namespace; everything else
//!   (`/version`, `/api`, `/apis/{group}/{version}`, `/openapi/v3/...`) is a non-resource
//!   request whose verb is the lower-cased method.
//! - Rules match as `rbacv1helpers` match them: verbs and API groups by equality or `*`,
//!   resources by equality (`clusters/status` for the subresource), `*` or `*/<subresource>`,
//!   `resourceNames` only when the request names an object, non-resource URLs by equality, `*`
//!   or a trailing-`*` prefix.
//! - Subjects: a ServiceAccount subject matches `system:serviceaccount:<ns>:<name>` (its
//!   namespace defaults to the RoleBinding's), User and Group subjects by name.
//! - Members of `system:masters` (the cluster's admin token) are allowed everything before RBAC
//!   is asked, as by the API server's privileged-group authorizer.
//! - A denial is the API server's 403 `Status`.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::{json, Map, Value};

use super::store::ApiError;
use super::{EmulatedCluster, Gvr};

/// The group whose members bypass authorization (`system:masters`).
pub const MASTERS_GROUP: &str = "system:masters";

/// An authenticated user: name and groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    /// `kubernetes-admin`, `system:serviceaccount:<ns>:<name>`, …
    pub name: String,
    /// e.g. `system:serviceaccounts`, `system:serviceaccounts:<ns>`, `system:authenticated`.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The cluster's admin (the token of [`EmulatedCluster::kubeconfig_yaml`]).
    pub(crate) fn admin() -> Self {
        UserInfo {
            name: "kubernetes-admin".into(),
            groups: vec![MASTERS_GROUP.into(), "system:authenticated".into()],
        }
    }

    /// The user a ServiceAccount's token authenticates as.
    pub(crate) fn service_account(namespace: &str, name: &str) -> Self {
        UserInfo {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    fn privileged(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS_GROUP)
    }
}

/// What a request asks to do, as the authorizer sees it (the API server's `RequestInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attributes {
    pub verb: String,
    pub resource_request: bool,
    pub path: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// A valid path segment name (`path.IsValidPathSegmentName`).
fn valid_segment(s: &str) -> bool {
    s != "." && s != ".." && !s.contains('/') && !s.contains('%')
}

/// The object a `fieldSelector` requires by `metadata.name=X` (or `==`), if any.
fn field_selector_name(q: &std::collections::HashMap<String, String>) -> Option<String> {
    let sel = q.get("fieldSelector")?;
    sel.split(',').find_map(|term| {
        let term = term.trim();
        let v = term
            .strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="))?;
        Some(v.trim().to_string())
    })
}

/// The request's attributes, as `RequestInfoFactory.NewRequestInfo` derives them.
pub(crate) fn attributes(
    method: &str,
    path: &str,
    q: &std::collections::HashMap<String, String>,
) -> Attributes {
    let mut a = Attributes {
        verb: method.to_lowercase(),
        path: path.to_string(),
        ..Attributes::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return a;
    }
    let mut cur: &[&str] = &parts[1..];
    if parts[0] == "apis" {
        if cur.len() < 3 {
            return a;
        }
        a.api_group = cur[0].to_string();
        cur = &cur[1..];
    }
    a.resource_request = true;
    a.api_version = cur[0].to_string();
    cur = &cur[1..];
    a.verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
    .to_string();
    if cur.first() == Some(&"namespaces") && cur.len() > 1 {
        a.namespace = cur[1].to_string();
        if cur.len() > 2 && !matches!(cur[2], "status" | "finalize") {
            cur = &cur[2..];
        }
    }
    if !cur.is_empty() {
        a.resource = cur[0].to_string();
    }
    if cur.len() >= 2 {
        a.name = cur[1].to_string();
    }
    if cur.len() >= 3 {
        a.subresource = cur[2].to_string();
    }
    if a.name.is_empty() && a.verb == "get" {
        let watch = q
            .get("watch")
            .is_some_and(|v| v == "true" || v == "1" || v == "True");
        a.verb = if watch { "watch" } else { "list" }.to_string();
        if let Some(n) = field_selector_name(q).filter(|n| valid_segment(n)) {
            a.name = n;
        }
    }
    if a.name.is_empty() && a.verb == "delete" {
        a.verb = "deletecollection".into();
    }
    a
}

/// The entry of the rule's `verbs` that matches `verb` (`verb` itself or `*`), if any.
fn matching_verb<'r>(rule: &'r PolicyRule, verb: &str) -> Option<&'r str> {
    rule.verbs
        .iter()
        .find(|v| *v == "*" || *v == verb)
        .map(String::as_str)
}

fn group_matches(rule: &PolicyRule, group: &str) -> bool {
    rule.api_groups
        .iter()
        .flatten()
        .any(|g| g == "*" || g == group)
}

fn resource_matches(rule: &PolicyRule, combined: &str, sub: &str) -> bool {
    rule.resources.iter().flatten().any(|r| {
        r == "*"
            || r == combined
            || (!sub.is_empty()
                && r.len() == sub.len() + 2
                && r.starts_with("*/")
                && r.ends_with(sub))
    })
}

fn name_matches(rule: &PolicyRule, name: &str) -> bool {
    match &rule.resource_names {
        None => true,
        Some(names) if names.is_empty() => true,
        Some(names) => names.iter().any(|n| n == name),
    }
}

fn url_matches(rule: &PolicyRule, path: &str) -> bool {
    rule.non_resource_urls.iter().flatten().any(|u| {
        u == "*"
            || u == path
            || u.strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// `RuleAllows`: `Some` with the rule's entry of `verbs` that matched when `rule` allows `a`.
fn rule_allows<'r>(a: &Attributes, rule: &'r PolicyRule) -> Option<&'r str> {
    let verb = matching_verb(rule, &a.verb)?;
    let allows = if a.resource_request {
        let combined = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        group_matches(rule, &a.api_group)
            && resource_matches(rule, &combined, &a.subresource)
            && name_matches(rule, &a.name)
    } else {
        url_matches(rule, &a.path)
    };
    allows.then_some(verb)
}

/// The first rule of `rules` that allows `a`: its index and its entry of `verbs` that matched.
fn first_allowing(a: &Attributes, rules: &[PolicyRule]) -> Option<(usize, String)> {
    rules
        .iter()
        .enumerate()
        .find_map(|(i, r)| rule_allows(a, r).map(|v| (i, v.to_string())))
}

/// Whether `subject` (of a binding in `binding_ns`, empty for ClusterRoleBindings) is `user`.
fn applies_to(
    user: &UserInfo,
    subject: &k8s_openapi::api::rbac::v1::Subject,
    binding_ns: &str,
) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        _ => false,
    }
}

fn rbac_gvr(plural: &str) -> Gvr {
    Gvr::new("rbac.authorization.k8s.io", "v1", plural)
}

/// The rules of the ClusterRole or Role `kind`/`name` (a Role in `ns`); `Err` with the API
/// server's not-found text when it does not exist.
fn role_rules(
    c: &EmulatedCluster,
    kind: &str,
    name: &str,
    ns: &str,
) -> Result<Vec<PolicyRule>, String> {
    let (gvr, what, ns) = match kind {
        "ClusterRole" => (rbac_gvr("clusterroles"), "clusterrole", None),
        "Role" => (rbac_gvr("roles"), "role", Some(ns)),
        other => return Err(format!("unsupported role reference kind: {other:?}")),
    };
    let not_found = || format!("{what}.rbac.authorization.k8s.io {name:?} not found");
    let v = c.get_shared(&gvr, ns, name).ok_or_else(not_found)?;
    let rules = if kind == "ClusterRole" {
        serde_json::from_value::<ClusterRole>(Value::clone(&v)).map(|r| r.rules.unwrap_or_default())
    } else {
        serde_json::from_value::<Role>(Value::clone(&v)).map(|r| r.rules.unwrap_or_default())
    };
    rules.map_err(|e| format!("{what}.rbac.authorization.k8s.io {name:?} is malformed: {e}"))
}

/// The decision on `a` for `user`: `Ok` when allowed, with the stored rule that allowed it
/// (`None` for a member of `system:masters`, allowed before RBAC is asked); else the reason to
/// append to the forbidden message (empty unless a binding referred to a role that is missing).
/// Bindings are visited as the API server's RBAC authorizer visits them: ClusterRoleBindings,
/// then the RoleBindings of the request's namespace; the first rule that allows decides.
pub(crate) fn authorize(
    c: &EmulatedCluster,
    user: &UserInfo,
    a: &Attributes,
) -> Result<Option<AllowingRule>, String> {
    if user.privileged() {
        return Ok(None);
    }
    let mut errors: Vec<String> = Vec::new();
    for v in c.list_shared(&rbac_gvr("clusterrolebindings"), None) {
        let Ok(b) = serde_json::from_value::<ClusterRoleBinding>(Value::clone(&v)) else {
            continue;
        };
        if !b.subjects.iter().flatten().any(|s| applies_to(user, s, "")) {
            continue;
        }
        if b.role_ref.kind != "ClusterRole" {
            continue;
        }
        match role_rules(c, "ClusterRole", &b.role_ref.name, "") {
            Ok(rules) => {
                if let Some((rule_index, verb)) = first_allowing(a, &rules) {
                    return Ok(Some(AllowingRule {
                        binding_kind: "ClusterRoleBinding".into(),
                        binding_name: b.metadata.name.clone().unwrap_or_default(),
                        binding_namespace: String::new(),
                        role_kind: "ClusterRole".into(),
                        role_name: b.role_ref.name.clone(),
                        role_namespace: String::new(),
                        rule_index,
                        verb,
                    }));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if !a.namespace.is_empty() {
        for v in c.list_shared(&rbac_gvr("rolebindings"), Some(&a.namespace)) {
            let Ok(b) = serde_json::from_value::<RoleBinding>(Value::clone(&v)) else {
                continue;
            };
            if !b
                .subjects
                .iter()
                .flatten()
                .any(|s| applies_to(user, s, &a.namespace))
            {
                continue;
            }
            match role_rules(c, &b.role_ref.kind, &b.role_ref.name, &a.namespace) {
                Ok(rules) => {
                    if let Some((rule_index, verb)) = first_allowing(a, &rules) {
                        let role_namespace = if b.role_ref.kind == "Role" {
                            a.namespace.clone()
                        } else {
                            String::new()
                        };
                        return Ok(Some(AllowingRule {
                            binding_kind: "RoleBinding".into(),
                            binding_name: b.metadata.name.clone().unwrap_or_default(),
                            binding_namespace: a.namespace.clone(),
                            role_kind: b.role_ref.kind.clone(),
                            role_name: b.role_ref.name.clone(),
                            role_namespace,
                            rule_index,
                            verb,
                        }));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
    }
    Err(if errors.is_empty() {
        String::new()
    } else if errors.len() == 1 {
        format!("RBAC: {}", errors[0])
    } else {
        format!("RBAC: [{}]", errors.join(", "))
    })
}

/// The 403 the API server answers a denied request with (`responsewriters.Forbidden`).
pub(crate) fn forbidden(user: &UserInfo, a: &Attributes, reason: &str) -> ApiError {
    let msg = if !a.resource_request {
        format!("User {:?} cannot {} path {:?}", user.name, a.verb, a.path)
    } else {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        if a.namespace.is_empty() {
            format!(
                "User {:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
                user.name, a.verb, a.api_group
            )
        } else {
            format!(
                "User {:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
                user.name, a.verb, a.api_group, a.namespace
            )
        }
    };
    let err = if reason.is_empty() {
        msg
    } else {
        format!("{msg}: {reason}")
    };
    forbidden_error(&a.api_group, &a.resource, &a.name, &err)
}

/// `apierrors.NewForbidden(groupResource, name, err)`.
pub(crate) fn forbidden_error(group: &str, resource: &str, name: &str, err: &str) -> ApiError {
    let gr = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    let message = if gr.is_empty() {
        format!("forbidden: {err}")
    } else if name.is_empty() {
        format!("{gr} is forbidden: {err}")
    } else {
        format!("{gr} {name:?} is forbidden: {err}")
    };
    let mut details = Map::new();
    if !name.is_empty() {
        details.insert("name".into(), json!(name));
    }
    if !group.is_empty() {
        details.insert("group".into(), json!(group));
    }
    if !resource.is_empty() {
        details.insert("kind".into(), json!(resource));
    }
    ApiError {
        code: 403,
        reason: "Forbidden",
        message,
        details: Value::Object(details),
    }
}

/// One authorization decision on a ServiceAccount's request, without the object's name
/// ([`EmulatedCluster::authorizations`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Authorization {
    /// The user, `system:serviceaccount:<ns>:<name>`.
    pub user: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or
    /// the lower-cased method of a non-resource request.
    pub verb: String,
    /// The API group (empty for the core group and non-resource requests).
    pub api_group: String,
    /// The resource, with `/<subresource>` when there is one; the path of a non-resource
    /// request.
    pub resource: String,
    /// The namespace (empty at the cluster scope).
    pub namespace: String,
    /// Whether RBAC allowed it.
    pub allowed: bool,
}

impl Authorization {
    pub(crate) fn of(user: &UserInfo, a: &Attributes, allowed: bool) -> Self {
        let resource = if !a.resource_request {
            a.path.clone()
        } else if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        Authorization {
            user: user.name.clone(),
            verb: a.verb.clone(),
            api_group: a.api_group.clone(),
            resource,
            namespace: a.namespace.clone(),
            allowed,
        }
    }
}

/// The distinct decisions recorded so far (bounded: no names).
pub(crate) type AuthorizationLog = BTreeSet<Authorization>;

/// The stored rule that allowed a request: the binding that grants its role to the user, the
/// role, the rule's index in the role's `rules`, and the rule's entry of `verbs` that matched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllowingRule {
    /// `ClusterRoleBinding` or `RoleBinding`.
    pub binding_kind: String,
    /// The binding's name.
    pub binding_name: String,
    /// The RoleBinding's namespace (empty for a ClusterRoleBinding).
    pub binding_namespace: String,
    /// `ClusterRole` or `Role` (the binding's `roleRef.kind`).
    pub role_kind: String,
    /// The role's name (the binding's `roleRef.name`).
    pub role_name: String,
    /// The Role's namespace (empty for a ClusterRole, also one a RoleBinding refers to).
    pub role_namespace: String,
    /// Index of the rule in the role's `rules` (the first rule that allows the request).
    pub rule_index: usize,
    /// The rule's entry of `verbs` that matched: the request's verb, or `*`.
    pub verb: String,
}

/// A ServiceAccount's request that RBAC allowed, with the request's attributes as the API
/// server's `RequestInfo` names them and the stored rule that allowed it
/// ([`EmulatedCluster::authorized_requests`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuthorizedRequest {
    /// The user, `system:serviceaccount:<namespace>:<name>`.
    pub user: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` or `deletecollection`; the
    /// lower-cased method of a non-resource request. A server-side apply that creates its object
    /// is recorded twice: `patch`, and the `create` it needs too.
    pub verb: String,
    /// The API group (empty for the core group and non-resource requests).
    pub api_group: String,
    /// The resource (plural), without the subresource; empty for a non-resource request.
    pub resource: String,
    /// The subresource (`status`, `scale`, …), empty when there is none.
    pub subresource: String,
    /// The namespace (empty at the cluster scope).
    pub namespace: String,
    /// The object's name: from the path, or from a `metadata.name=` field selector of a list or
    /// watch; empty otherwise.
    pub name: String,
    /// The path of a non-resource request (`/api`, `/version`, …); empty for a resource request.
    pub non_resource_url: String,
    /// The rule that allowed it.
    pub allowed_by: AllowingRule,
}

impl AuthorizedRequest {
    pub(crate) fn of(user: &UserInfo, a: &Attributes, allowed_by: AllowingRule) -> Self {
        AuthorizedRequest {
            user: user.name.clone(),
            verb: a.verb.clone(),
            api_group: a.api_group.clone(),
            resource: a.resource.clone(),
            subresource: a.subresource.clone(),
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            non_resource_url: if a.resource_request {
                String::new()
            } else {
                a.path.clone()
            },
            allowed_by,
        }
    }

    /// The resource as rules name it: `resource`, or `resource/subresource` (`clusters/status`).
    pub fn resource_with_subresource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// The distinct allowed requests recorded so far (bounded by the objects named).
pub(crate) type AuthorizedRequestLog = BTreeSet<AuthorizedRequest>;

/// The default ClusterRoles and ClusterRoleBindings every cluster has from its first start
/// (the API server's bootstrap policy): `cluster-admin` for `system:masters`, and
/// `system:discovery` and `system:public-info-viewer`, which let every authenticated user read
/// discovery, `/version`, the OpenAPI documents and the health endpoints.
pub(crate) fn bootstrap_policy() -> Vec<(Gvr, Value)> {
    let meta = |name: &str| {
        json!({
            "name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        })
    };
    let role = |name: &str, rules: Value| {
        (
            rbac_gvr("clusterroles"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name), "rules": rules}),
        )
    };
    let binding = |name: &str, groups: &[&str]| {
        let subjects: Vec<Value> = groups
            .iter()
            .map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}))
            .collect();
        (
            rbac_gvr("clusterrolebindings"),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(name),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": subjects,
            }),
        )
    };
    vec![
        role(
            "cluster-admin",
            json!([
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ]),
        ),
        role(
            "system:discovery",
            json!([{"nonResourceURLs": [
                "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi",
                "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
        role(
            "system:public-info-viewer",
            json!([{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
        binding("cluster-admin", &[MASTERS_GROUP]),
        binding("system:discovery", &["system:authenticated"]),
        binding(
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn request_info_as_the_api_server_derives_it() {
        let a = attributes(
            "GET",
            "/apis/cluster.x-k8s.io/v1beta1/namespaces/default/clusters",
            &q(&[]),
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.api_group.as_str(),
                a.resource.as_str(),
                a.namespace.as_str()
            ),
            ("list", "cluster.x-k8s.io", "clusters", "default")
        );
        let a = attributes(
            "GET",
            "/apis/cluster.x-k8s.io/v1beta1/clusters",
            &q(&[("watch", "true")]),
        );
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("watch", ""));
        let a = attributes(
            "PATCH",
            "/apis/cluster.x-k8s.io/v1beta1/namespaces/ns/clusters/c1/status",
            &q(&[]),
        );
        assert_eq!(
            (a.verb.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("patch", "c1", "status")
        );
        let a = attributes("GET", "/api/v1/namespaces/kube-public", &q(&[]));
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "kube-public", "kube-public")
        );
        let a = attributes("DELETE", "/api/v1/namespaces/x/secrets", &q(&[]));
        assert_eq!(a.verb, "deletecollection");
        let a = attributes(
            "GET",
            "/api/v1/namespaces/x/secrets",
            &q(&[("fieldSelector", "metadata.name=s1")]),
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("list", "s1"));
        for p in [
            "/apis/cluster.x-k8s.io/v1beta1",
            "/api/v1",
            "/version",
            "/openapi/v3/apis/x/v1",
        ] {
            let a = attributes("GET", p, &q(&[]));
            assert!(!a.resource_request, "{p}");
            assert_eq!(a.verb, "get");
        }
    }

    fn rule(v: Value) -> PolicyRule {
        serde_json::from_value(v).unwrap()
    }

    fn allows(a: &Attributes, r: &PolicyRule) -> bool {
        rule_allows(a, r).is_some()
    }

    #[test]
    fn rules_match_as_rbacv1helpers_match_them() {
        let a = attributes(
            "PATCH",
            "/apis/cluster.x-k8s.io/v1beta1/namespaces/ns/clusters/c1/status",
            &q(&[]),
        );
        assert!(!allows(
            &a,
            &rule(
                json!({"apiGroups": ["cluster.x-k8s.io"], "resources": ["clusters"], "verbs": ["patch"]})
            )
        ));
        assert!(allows(
            &a,
            &rule(
                json!({"apiGroups": ["cluster.x-k8s.io"], "resources": ["clusters/status"], "verbs": ["patch"]})
            )
        ));
        assert!(allows(
            &a,
            &rule(json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]}))
        ));
        assert!(!allows(
            &a,
            &rule(
                json!({"apiGroups": ["cluster.x-k8s.io"], "resources": ["clusters/status"], "verbs": ["patch"], "resourceNames": ["c2"]})
            )
        ));
        let list = attributes("GET", "/api/v1/namespaces/x/secrets", &q(&[]));
        assert!(!allows(
            &list,
            &rule(
                json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"], "resourceNames": ["s1"]})
            )
        ));
        let create = attributes("POST", "/api/v1/namespaces/x/secrets", &q(&[]));
        assert!(!allows(
            &create,
            &rule(
                json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"], "resourceNames": ["s1"]})
            )
        ));
        let v = attributes("GET", "/openapi/v3/apis/x/v1", &q(&[]));
        assert!(allows(
            &v,
            &rule(json!({"nonResourceURLs": ["/openapi/*"], "verbs": ["get"]}))
        ));
        assert!(!allows(
            &v,
            &rule(json!({"nonResourceURLs": ["/openapi"], "verbs": ["get"]}))
        ));
    }

    #[test]
    fn forbidden_messages_are_the_api_servers() {
        let user = UserInfo::service_account("ns", "sa");
        let a = attributes(
            "PATCH",
            "/apis/cluster.x-k8s.io/v1beta1/namespaces/default/clusters/c1",
            &q(&[]),
        );
        assert_eq!(forbidden(&user, &a, "").message, "clusters.cluster.x-k8s.io \"c1\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot patch resource \"clusters\" in API group \"cluster.x-k8s.io\" in the namespace \"default\"");
        let a = attributes("GET", "/api/v1/secrets", &q(&[]));
        assert_eq!(forbidden(&user, &a, "").message, "secrets is forbidden: User \"system:serviceaccount:ns:sa\" cannot list resource \"secrets\" in API group \"\" at the cluster scope");
        let a = attributes("GET", "/metrics", &q(&[]));
        assert_eq!(
            forbidden(&user, &a, "").message,
            "forbidden: User \"system:serviceaccount:ns:sa\" cannot get path \"/metrics\""
        );
    }
}

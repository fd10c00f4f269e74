//! Server-side apply of multi-document YAML, resolving kinds through API discovery
//! (what `kubectl apply --server-side -f` does, without `--force-conflicts`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{ApiResource, Scope};
use serde::Deserialize;
use serde_json::Value;

use super::classify;
use tkgops_domain::executor::StepError;

/// A kind resolved through discovery: its resource and whether it is namespaced.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Group, version, kind and plural of the resource.
    pub ar: ApiResource,
    /// Whether objects of this kind live in a namespace.
    pub namespaced: bool,
}

impl Resolved {
    /// A resolved kind from a statically known resource (no discovery).
    pub fn known(ar: ApiResource, namespaced: bool) -> Self {
        Resolved { ar, namespaced }
    }
}

/// Positive discovery results by (client cache key, apiVersion, kind). Kinds never change scope,
/// so entries never go stale; misses are not cached (a CRD may be installed later).
#[derive(Default)]
pub(crate) struct DiscoveryCache {
    map: Mutex<HashMap<(String, String, String), Resolved>>,
}

impl DiscoveryCache {
    fn get(&self, key: &(String, String, String)) -> Option<Resolved> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
    fn put(&self, key: (String, String, String), r: Resolved) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, r);
    }
}

/// How a server-side apply is sent: as a dry run (`dryRun=All`, nothing stored) and/or with
/// `force=true`.
///
/// Forcing is tkgops's decision for one case only: a drift revert run (README "Drift"), whose
/// Git state is already approved, takes back the fields Git owns from the field manager that
/// changed them by hand (`kubectl scale/patch/edit` make themselves their owner, so an unforced
/// apply answers 409). Every other apply is unforced and fails on such a conflict (security
/// rule 7: TMC, the autoscaler or `tanzu cluster scale` may own fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyMode {
    /// `dryRun=All`: every webhook judges the object, nothing is stored.
    pub dry_run: bool,
    /// `force=true`: take over the fields the applied object sets from other field managers.
    pub force: bool,
}

impl ApplyMode {
    /// An unforced apply that stores.
    pub const APPLY: ApplyMode = ApplyMode {
        dry_run: false,
        force: false,
    };
    /// An unforced server-side dry run.
    pub const DRY_RUN: ApplyMode = ApplyMode {
        dry_run: true,
        force: false,
    };

    /// This mode, forced when `force`.
    pub fn forced(self, force: bool) -> ApplyMode {
        ApplyMode { force, ..self }
    }

    /// The API's patch parameters of this mode under `field_manager`.
    pub fn params(self, field_manager: &str) -> PatchParams {
        let mut params = PatchParams::apply(field_manager);
        if self.dry_run {
            params = params.dry_run();
        }
        if self.force {
            params = params.force();
        }
        params
    }
}

/// One document of a manifest, with its 1-based position in the input.
struct Doc {
    index: usize,
    obj: Value,
}

/// Splits multi-document `yaml` into JSON objects, skipping empty documents and expanding
/// `kind: List`. Errors: [`StepError::Permanent`] with the document number and the parser's
/// position (never the document text, which may hold Secret data).
pub fn parse_documents(yaml: &str) -> Result<Vec<Value>, StepError> {
    Ok(parse_docs(yaml)?.into_iter().map(|d| d.obj).collect())
}

fn parse_docs(yaml: &str) -> Result<Vec<Doc>, StepError> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let index = i + 1;
        let value = Value::deserialize(de).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or_default();
            StepError::Permanent(format!("manifest document {index}: invalid YAML{at}"))
        })?;
        match value {
            Value::Null => continue,
            Value::Object(ref m) if m.is_empty() => continue,
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = m
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for item in items {
                    out.push(Doc { index, obj: item });
                }
            }
            Value::Object(_) => out.push(Doc { index, obj: value }),
            _ => {
                return Err(StepError::Permanent(format!(
                    "manifest document {index}: not a Kubernetes object (a mapping)"
                )))
            }
        }
    }
    Ok(out)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Apply rank: Namespaces, then CRDs, then the rest (stable within a rank).
fn rank(obj: &Value) -> u8 {
    match (str_at(obj, &["apiVersion"]), str_at(obj, &["kind"])) {
        (Some("v1"), Some("Namespace")) => 0,
        (Some(av), Some("CustomResourceDefinition")) if av.starts_with("apiextensions.k8s.io/") => {
            1
        }
        _ => 2,
    }
}

fn split_api_version(api_version: &str) -> (String, String) {
    match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    }
}

/// Resolves `apiVersion`/`kind` to its resource and scope with `discovery::pinned_kind`.
/// `crd_defined`: the same manifest defines this kind through a CRD, so a miss is transient (the
/// CRD is not established yet) instead of permanent.
async fn resolve(
    client: &kube::Client,
    cache: Option<(&DiscoveryCache, &str)>,
    local: &mut HashMap<(String, String), Resolved>,
    api_version: &str,
    kind: &str,
    crd_defined: bool,
    what: &str,
) -> Result<Resolved, StepError> {
    let local_key = (api_version.to_string(), kind.to_string());
    if let Some(r) = local.get(&local_key) {
        return Ok(r.clone());
    }
    let shared_key = cache.map(|(_, k)| (k.to_string(), api_version.to_string(), kind.to_string()));
    if let (Some((c, _)), Some(k)) = (cache, shared_key.as_ref()) {
        if let Some(r) = c.get(k) {
            local.insert(local_key, r.clone());
            return Ok(r);
        }
    }
    let (group, version) = split_api_version(api_version);
    let gvk = GroupVersionKind::gvk(&group, &version, kind);
    let unknown = || {
        let msg = format!(
            "{what}: kind {kind} of apiVersion {api_version} is not served by the API server"
        );
        if crd_defined {
            StepError::Transient(format!(
                "{msg} yet (its CustomResourceDefinition is in this manifest)"
            ))
        } else {
            StepError::Permanent(msg)
        }
    };
    let (ar, caps) = match kube::discovery::pinned_kind(client, &gvk).await {
        Ok(x) => x,
        Err(kube::Error::Discovery(_)) => return Err(unknown()),
        Err(kube::Error::Api(s)) if s.code == 404 => return Err(unknown()),
        Err(e) => return Err(classify(&format!("{what}: discovery of {api_version}"), &e)),
    };
    let r = Resolved {
        ar,
        namespaced: matches!(caps.scope, Scope::Namespaced),
    };
    if let (Some((c, _)), Some(k)) = (cache, shared_key) {
        c.put(k, r.clone());
    }
    local.insert(local_key, r.clone());
    Ok(r)
}

/// Applies multi-document `yaml`; see [`super::KubeProvider::apply_yaml`]. With a dry-run
/// `mode`, every object is sent with `dryRun=All`: the API server runs admission (defaulting and
/// validating webhooks included, docs/tkg2-class-based.md §4 "Server-side dry run") and
/// persists nothing; a forced `mode` takes over conflicting fields ([`ApplyMode`]).
pub(crate) async fn apply_yaml(
    client: &kube::Client,
    cache: Option<(&DiscoveryCache, &str)>,
    yaml: &str,
    field_manager: &str,
    mode: ApplyMode,
) -> Result<Vec<String>, StepError> {
    let mut docs = parse_docs(yaml)?;
    docs.sort_by_key(|d| rank(&d.obj));
    let crd_kinds: HashSet<(String, String)> = docs
        .iter()
        .filter(|d| rank(&d.obj) == 1)
        .filter_map(|d| {
            Some((
                str_at(&d.obj, &["spec", "group"])?.to_string(),
                str_at(&d.obj, &["spec", "names", "kind"])?.to_string(),
            ))
        })
        .collect();
    let mut local = HashMap::new();
    let mut applied = Vec::with_capacity(docs.len());
    for doc in docs {
        let index = doc.index;
        let (api_version, kind) = match (
            str_at(&doc.obj, &["apiVersion"]),
            str_at(&doc.obj, &["kind"]),
        ) {
            (Some(a), Some(k)) if !a.is_empty() && !k.is_empty() => (a.to_string(), k.to_string()),
            _ => {
                return Err(StepError::Permanent(format!(
                    "manifest document {index}: apiVersion and kind are required"
                )))
            }
        };
        let name = str_at(&doc.obj, &["metadata", "name"])
            .unwrap_or("")
            .to_string();
        let what = format!("manifest document {index} ({kind}/{name})");
        let crd_defined = crd_kinds.contains(&(split_api_version(&api_version).0, kind.clone()));
        let resolved = resolve(
            client,
            cache,
            &mut local,
            &api_version,
            &kind,
            crd_defined,
            &what,
        )
        .await?;
        let (label, _) = apply_object_with(client, &resolved, doc.obj, field_manager, mode)
            .await
            .map_err(|e| match e {
                StepError::Permanent(m) if m.starts_with("manifest") => StepError::Permanent(m),
                StepError::Permanent(m) if name.is_empty() => {
                    StepError::Permanent(format!("manifest document {index}: {m}"))
                }
                other => other,
            })?;
        tracing::debug!(object = %label, "applied");
        applied.push(label);
    }
    Ok(applied)
}

/// Server-side applies one object (`obj` with `apiVersion`, `kind`, `metadata.name`) as
/// `field_manager`, never forcing over fields another field manager owns (security rule 7:
/// TMC, the autoscaler or `tanzu cluster scale` may own some). Namespaced objects without a
/// namespace go to the client's default
/// namespace; server-populated metadata (`resourceVersion`, `uid`, `managedFields`, …) is dropped.
///
/// Returns the object's label (`Kind/namespace/name` or `Kind/name`) and the object as stored.
///
/// Errors: [`StepError::Permanent`] for a missing name, 4xx answers and an apply conflict (the
/// message names each conflicting field and its manager, as the API server reports them);
/// [`StepError::Transient`] for connection errors, 5xx, other 409s and 429 (see [`classify`]).
/// Messages start with the label.
pub async fn apply_object(
    client: &kube::Client,
    resolved: &Resolved,
    obj: Value,
    field_manager: &str,
) -> Result<(String, Value), StepError> {
    apply_object_with(client, resolved, obj, field_manager, ApplyMode::APPLY).await
}

/// [`apply_object`] in `mode`: as a server-side dry run (`dryRun=All`) the answer is the
/// object as the API server would store it, after every mutating and validating webhook, and
/// nothing is persisted; forced, conflicting fields are taken over ([`ApplyMode`]). Errors as
/// [`apply_object`] (a forced apply has no conflicts); a webhook denial is [`classify`]'s.
pub async fn apply_object_with(
    client: &kube::Client,
    resolved: &Resolved,
    mut obj: Value,
    field_manager: &str,
    mode: ApplyMode,
) -> Result<(String, Value), StepError> {
    let kind = resolved.ar.kind.clone();
    let name = str_at(&obj, &["metadata", "name"])
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        return Err(StepError::Permanent(format!(
            "{kind}: metadata.name is required for server-side apply"
        )));
    }
    let namespace = if resolved.namespaced {
        Some(
            str_at(&obj, &["metadata", "namespace"])
                .filter(|s| !s.is_empty())
                .unwrap_or(client.default_namespace())
                .to_string(),
        )
    } else {
        None
    };
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "uid",
            "managedFields",
            "creationTimestamp",
            "generation",
            "selfLink",
        ] {
            meta.remove(k);
        }
        match &namespace {
            Some(ns) => {
                meta.insert("namespace".into(), Value::String(ns.clone()));
            }
            None => {
                meta.remove("namespace");
            }
        }
    }
    let label = match &namespace {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    };
    let api: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resolved.ar),
        None => Api::all_with(client.clone(), &resolved.ar),
    };
    let params = mode.params(field_manager);
    let stored = api
        .patch(&name, &params, &Patch::Apply(&obj))
        .await
        .map_err(|e| apply_error(&label, &e))?;
    let stored = serde_json::to_value(stored).unwrap_or(Value::Null);
    Ok((label, stored))
}

/// The step error of a failed server-side apply of `what`: a field-manager conflict (409,
/// `Apply failed with …`) is permanent and names the fields and their managers, as the API
/// server does; tkgops never forces. Other errors as [`classify`].
pub(crate) fn apply_error(what: &str, e: &kube::Error) -> StepError {
    match e {
        kube::Error::Api(s) if s.code == 409 && s.message.starts_with("Apply failed") => {
            StepError::Permanent(format!(
                "{what}: server-side apply conflict: {}. tkgops does not force over fields another field manager owns: change those fields through that manager, or remove them from the request",
                s.message.trim_end_matches('.')
            ))
        }
        _ => classify(what, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_doc_skips_empty_and_expands_lists() {
        let y = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: n}}\n";
        let docs = parse_documents(y).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["kind"], "Namespace");
    }

    #[test]
    fn invalid_yaml_is_permanent_without_content() {
        let e = parse_documents("a: b\n  c: topsecret: x\n").unwrap_err();
        assert!(!e.is_transient());
        assert!(!e.to_string().contains("topsecret"), "{e}");
    }

    #[test]
    fn namespaces_then_crds_first() {
        let ns = serde_json::json!({"apiVersion":"v1","kind":"Namespace"});
        let crd = serde_json::json!({"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition"});
        let cm = serde_json::json!({"apiVersion":"v1","kind":"ConfigMap"});
        assert!(rank(&ns) < rank(&crd) && rank(&crd) < rank(&cm));
        assert_eq!(split_api_version("v1"), (String::new(), "v1".to_string()));
        assert_eq!(
            split_api_version("cluster.x-k8s.io/v1beta1").0,
            "cluster.x-k8s.io"
        );
    }
}

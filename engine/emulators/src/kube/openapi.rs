//! `/openapi/v3`: the OpenAPI v3 discovery index and one document per served group-version.
//!
//! What `kubectl apply` (and `create`, `replace`) reads before writing: with the default
//! `--validate=strict` it looks up the PATCH operation of the object's kind (matched by its
//! `x-kubernetes-group-version-kind` extension) and, when that operation lists the
//! `fieldValidation` query parameter, leaves validation to the server (`?fieldValidation=Strict`)
//! instead of downloading schemas for client-side validation.
//!
//! The documents list every resource path of the group-version with its operations and query
//! parameters, and carry the types' schemas in `components.schemas` (see [`components`]), which
//! is what `kubectl explain` reads. Operations name no request or response schemas.
//! `/openapi/v2` is not served (404), as on servers with the v2 endpoint disabled.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{schema, Gvr, ResourceType};

/// `group/version` path key of a group-version in the index: `api/v1` or `apis/{g}/{v}`.
fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A stable fingerprint of the served types, used as the `?hash=` of each document URL (clients
/// cache documents by it).
fn fingerprint(types: &[&ResourceType]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for t in types {
        h.update(format!("{:?}\n", t).as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// The index served at `GET /openapi/v3`: `{"paths": {"api/v1": {"serverRelativeURL": …}, …}}`,
/// one entry per group-version with at least one registered type.
pub(super) fn index(types: &[ResourceType]) -> Value {
    let mut by_gv: BTreeMap<String, Vec<&ResourceType>> = BTreeMap::new();
    for t in types {
        by_gv
            .entry(gv_key(&t.gvr.group, &t.gvr.version))
            .or_default()
            .push(t);
    }
    let paths: Map<String, Value> = by_gv
        .into_iter()
        .map(|(key, ts)| {
            let url = format!("/openapi/v3/{key}?hash={}", fingerprint(&ts));
            (key, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(action: &str, t: &ResourceType, params: Vec<Value>) -> Value {
    json!({
        "operationId": format!("{action}{}", t.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": t.gvr.group, "version": t.gvr.version, "kind": t.kind},
    })
}

/// The name of a custom resource's schema in `components.schemas`, as the API server names it:
/// the group's domain reversed, the version, the kind (`io.x-k8s.cluster.v1beta1.Cluster`).
fn crd_schema_name(t: &ResourceType) -> String {
    let mut parts: Vec<&str> = t.gvr.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), t.gvr.version, t.kind)
}

/// `components.schemas` of a group-version's document: each type's schema (a built-in kind's
/// from k8s-openapi, a custom resource's from `crd_schemas`, its CRD version's
/// `openAPIV3Schema` with `metadata` referring to ObjectMeta) carrying
/// `x-kubernetes-group-version-kind`, plus every definition they reference. Types without a
/// schema (registered without a CRD object) have none.
fn components(mine: &[&ResourceType], crd_schemas: &BTreeMap<Gvr, Value>) -> Map<String, Value> {
    let builtins = schema::builtins();
    let mut out = Map::new();
    for t in mine {
        if let Some(name) = builtins.by_gvr.get(&t.gvr) {
            if let Some(d) = builtins.defs.get(name) {
                out.insert(name.clone(), d.clone());
            }
        } else if let Some(s) = crd_schemas.get(&t.gvr) {
            let mut s = s.clone();
            if let Some(m) = s.as_object_mut() {
                let props = m.entry("properties").or_insert_with(|| json!({}));
                if let Some(p) = props.as_object_mut() {
                    p.insert(
                        "metadata".into(),
                        json!({
                            "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
                            "allOf": [{"$ref": format!("#/components/schemas/{}", schema::OBJECT_META)}],
                        }),
                    );
                }
                m.insert(
                    "x-kubernetes-group-version-kind".into(),
                    json!([{"group": t.gvr.group, "version": t.gvr.version, "kind": t.kind}]),
                );
            }
            out.insert(crd_schema_name(t), s);
        }
    }
    let roots: Vec<&Value> = out.values().collect();
    let referenced = schema::reachable(&roots);
    for (k, v) in referenced {
        out.entry(k).or_insert(v);
    }
    out
}

/// The document served at `GET /openapi/v3/api/v1` or `/openapi/v3/apis/{g}/{v}` (`rest` is the
/// path after `/openapi/v3/`), or `None` when no registered type has that group-version.
/// `crd_schemas` holds the `openAPIV3Schema` of each custom resource type that has one.
pub(super) fn document(
    types: &[ResourceType],
    crd_schemas: &BTreeMap<Gvr, Value>,
    rest: &str,
    kubernetes_version: &str,
) -> Option<Value> {
    let mine: Vec<&ResourceType> = types
        .iter()
        .filter(|t| gv_key(&t.gvr.group, &t.gvr.version) == rest)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let write = || {
        vec![
            query_param(
                "dryRun",
                "When present, indicates that modifications should not be persisted.",
            ),
            query_param(
                "fieldManager",
                "A name associated with the actor making these changes.",
            ),
            query_param(
                "fieldValidation",
                "Ignore, Warn or Strict handling of unknown or duplicate fields.",
            ),
        ]
    };
    let schemas = components(&mine, crd_schemas);
    let mut paths = Map::new();
    for t in mine {
        let base = format!("/{rest}");
        let (collection, mut scope_params) = if t.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", t.gvr.plural),
                vec![path_param("namespace")],
            )
        } else {
            (format!("{base}/{}", t.gvr.plural), vec![])
        };
        let mut list_params = vec![
            query_param(
                "labelSelector",
                "A selector to restrict the list of returned objects by their labels.",
            ),
            query_param(
                "fieldSelector",
                "A selector to restrict the list of returned objects by their fields.",
            ),
            query_param("resourceVersion", "Where the list or watch starts."),
            query_param("watch", "Watch for changes to the described resources."),
            query_param("limit", "Maximum number of responses to return."),
            query_param("continue", "Continue token of a paged list."),
        ];
        list_params.extend(write());
        paths.insert(
            collection.clone(),
            json!({
                "parameters": scope_params.clone(),
                "get": operation("list", t, list_params),
                "post": operation("post", t, write()),
                "delete": operation("deletecollection", t, vec![query_param("dryRun", "When present, indicates that modifications should not be persisted.")]),
            }),
        );
        scope_params.push(path_param("name"));
        let mut patch_params = write();
        patch_params.push(query_param(
            "force",
            "Force an apply request, taking conflicting fields from other managers.",
        ));
        let item = json!({
            "parameters": scope_params.clone(),
            "get": operation("get", t, vec![]),
            "put": operation("put", t, write()),
            "patch": operation("patch", t, patch_params.clone()),
            "delete": operation("delete", t, vec![query_param("dryRun", "When present, indicates that modifications should not be persisted.")]),
        });
        paths.insert(format!("{collection}/{{name}}"), item);
        if t.status_subresource {
            paths.insert(
                format!("{collection}/{{name}}/status"),
                json!({
                    "parameters": scope_params,
                    "get": operation("get", t, vec![]),
                    "put": operation("put", t, write()),
                    "patch": operation("patch", t, patch_params),
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": kubernetes_version},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

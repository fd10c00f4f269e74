//! Protobuf request and response bodies (`application/vnd.kubernetes.protobuf`) for the built-in
//! kinds kubectl writes in protobuf: Namespace, ConfigMap and Secret (and their lists), plus
//! `Status` (errors) and `DeleteOptions`.
//!
//! The wire format is apimachinery's `runtime/serializer/protobuf`: the 4-byte magic prefix
//! `k8s\0`, then a `runtime.Unknown` envelope (`typeMeta {apiVersion, kind}`, `raw` = the
//! message of that kind, `contentEncoding`, `contentType`). The messages are kube-rs's `k8s-pb`
//! (prost-generated from the Kubernetes `.proto` files). `k8s-pb` has no serde and no conversion
//! to k8s-openapi, so the mapping to the JSON the emulator stores is written field by field here,
//! only for the kinds above; every field of those messages is mapped (JSON names as in the
//! Kubernetes API reference, empty fields omitted as Go's `omitempty` omits them).

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use prost::Message as _;
use serde_json::{json, Map, Value};

/// The protobuf media type of the Kubernetes API.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The prefix of every protobuf-encoded Kubernetes object (apimachinery
/// `runtime/serializer/protobuf`, `protoEncodingPrefix`).
const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtoError {
    /// The body does not start with `k8s\0` (the Go serializer's wording).
    #[error(
        "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]"
    )]
    NoPrefix,
    /// The `runtime.Unknown` envelope or the message inside it is not valid protobuf.
    #[error("{0}")]
    Decode(#[from] prost::DecodeError),
    /// The envelope names a kind the emulator has no protobuf mapping for.
    #[error("no kind {kind:?} is registered for version {api_version:?}")]
    UnknownKind {
        /// `typeMeta.apiVersion` of the envelope.
        api_version: String,
        /// `typeMeta.kind` of the envelope.
        kind: String,
    },
    /// `contentEncoding` is set (the API server never sets it; nothing else is defined).
    #[error("unsupported content encoding {0:?}")]
    Encoding(String),
}

/// Whether objects of kind `kind` in `api_version` have a protobuf mapping here.
pub(crate) fn has_kind(api_version: &str, kind: &str) -> bool {
    api_version == "v1" && matches!(kind, "Namespace" | "ConfigMap" | "Secret")
}

/// Whether a request's `Accept` header asks for protobuf first (its first media range is
/// `application/vnd.kubernetes.protobuf` without an `as=` conversion such as `as=Table`), as
/// client-go's typed clients send `application/vnd.kubernetes.protobuf,application/json`.
pub(crate) fn accepts(accept: Option<&str>) -> bool {
    let Some(first) = accept.and_then(|a| a.split(',').next()) else {
        return false;
    };
    let mut parts = first.split(';').map(str::trim);
    parts.next() == Some(MEDIA_TYPE) && !parts.any(|p| p.starts_with("as="))
}

/// Decodes a protobuf request body into the JSON object the emulator stores (`apiVersion`
/// and `kind` from the envelope's `typeMeta`).
///
/// Errors: [`ProtoError::NoPrefix`] without the magic prefix, [`ProtoError::Decode`] for
/// malformed protobuf, [`ProtoError::UnknownKind`] for kinds other than Namespace, ConfigMap,
/// Secret and DeleteOptions, [`ProtoError::Encoding`] for a `contentEncoding`.
pub(crate) fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtoError::NoPrefix)?;
    let env = Unknown::decode(rest)?;
    if let Some(e) = env.content_encoding.filter(|e| !e.is_empty()) {
        return Err(ProtoError::Encoding(e));
    }
    let tm = env.type_meta.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let raw = env.raw.unwrap_or_default();
    let raw = raw.as_slice();
    let mut obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace_json(&core::Namespace::decode(raw)?),
        ("v1", "ConfigMap") => configmap_json(&core::ConfigMap::decode(raw)?),
        ("v1", "Secret") => secret_json(&core::Secret::decode(raw)?),
        ("v1" | "meta.k8s.io/v1", "DeleteOptions") => {
            delete_options_json(&meta::DeleteOptions::decode(raw)?)
        }
        _ => return Err(ProtoError::UnknownKind { api_version, kind }),
    };
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

/// Encodes a JSON object (Namespace, ConfigMap, Secret, their lists, or a `Status`) as a
/// protobuf response body; `None` when its `apiVersion`/`kind` has no mapping (the caller then
/// answers JSON, as a real API server does for types without protobuf).
pub(crate) fn encode(v: &Value) -> Option<Vec<u8>> {
    let api_version = v.get("apiVersion").and_then(Value::as_str)?;
    let kind = v.get("kind").and_then(Value::as_str)?;
    if api_version != "v1" {
        return None;
    }
    let raw = match kind {
        "Namespace" => namespace_pb(v).encode_to_vec(),
        "ConfigMap" => configmap_pb(v).encode_to_vec(),
        "Secret" => secret_pb(v).encode_to_vec(),
        "NamespaceList" => core::NamespaceList {
            metadata: Some(list_meta_pb(v)),
            items: items(v).map(namespace_pb).collect(),
        }
        .encode_to_vec(),
        "ConfigMapList" => core::ConfigMapList {
            metadata: Some(list_meta_pb(v)),
            items: items(v).map(configmap_pb).collect(),
        }
        .encode_to_vec(),
        "SecretList" => core::SecretList {
            metadata: Some(list_meta_pb(v)),
            items: items(v).map(secret_pb).collect(),
        }
        .encode_to_vec(),
        "Status" => status_pb(v).encode_to_vec(),
        _ => return None,
    };
    let env = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.to_string()),
            kind: Some(kind.to_string()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    env.encode(&mut out).ok()?;
    Some(out)
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

// ---- protobuf → JSON ----

fn put(m: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(k.to_string(), v);
    }
}

/// An `omitempty` string: absent when empty (Go's protobuf encodes non-pointer strings even
/// when empty; its JSON omits them).
fn str_opt(s: &Option<String>) -> Option<Value> {
    s.as_ref().filter(|s| !s.is_empty()).map(|s| json!(s))
}

/// A required string: present even when empty.
fn str_req(s: &Option<String>) -> Option<Value> {
    Some(json!(s.as_deref().unwrap_or_default()))
}

fn str_map(m: &BTreeMap<String, String>) -> Option<Value> {
    (!m.is_empty()).then(|| json!(m))
}

fn bytes_map(m: &BTreeMap<String, Vec<u8>>) -> Option<Value> {
    (!m.is_empty()).then(|| {
        let b64 = base64::engine::general_purpose::STANDARD;
        Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), json!(b64.encode(v))))
                .collect(),
        )
    })
}

fn str_list(l: &[String]) -> Option<Value> {
    (!l.is_empty()).then(|| json!(l))
}

/// `meta.v1.Time` as RFC 3339 with seconds (how `metav1.Time` marshals to JSON).
fn time_json(t: &Option<meta::Time>) -> Option<Value> {
    // A zero `Time` is how Go encodes an unset non-pointer time.
    let t = t.as_ref().filter(|t| t.seconds.unwrap_or(0) != 0)?;
    let dt = chrono::DateTime::from_timestamp(t.seconds.unwrap_or(0), 0)?;
    Some(json!(dt.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
}

fn object_meta_json(m: &meta::ObjectMeta) -> Value {
    let mut o = Map::new();
    put(&mut o, "name", str_opt(&m.name));
    put(&mut o, "generateName", str_opt(&m.generate_name));
    put(&mut o, "namespace", str_opt(&m.namespace));
    put(&mut o, "selfLink", str_opt(&m.self_link));
    put(&mut o, "uid", str_opt(&m.uid));
    put(&mut o, "resourceVersion", str_opt(&m.resource_version));
    put(
        &mut o,
        "generation",
        m.generation.filter(|g| *g != 0).map(|g| json!(g)),
    );
    put(
        &mut o,
        "creationTimestamp",
        time_json(&m.creation_timestamp),
    );
    put(
        &mut o,
        "deletionTimestamp",
        time_json(&m.deletion_timestamp),
    );
    put(
        &mut o,
        "deletionGracePeriodSeconds",
        m.deletion_grace_period_seconds.map(|g| json!(g)),
    );
    put(&mut o, "labels", str_map(&m.labels));
    put(&mut o, "annotations", str_map(&m.annotations));
    if !m.owner_references.is_empty() {
        let refs: Vec<Value> = m
            .owner_references
            .iter()
            .map(|r| {
                let mut o = Map::new();
                put(&mut o, "apiVersion", str_req(&r.api_version));
                put(&mut o, "kind", str_req(&r.kind));
                put(&mut o, "name", str_req(&r.name));
                put(&mut o, "uid", str_req(&r.uid));
                put(&mut o, "controller", r.controller.map(|b| json!(b)));
                put(
                    &mut o,
                    "blockOwnerDeletion",
                    r.block_owner_deletion.map(|b| json!(b)),
                );
                Value::Object(o)
            })
            .collect();
        o.insert("ownerReferences".into(), Value::Array(refs));
    }
    put(&mut o, "finalizers", str_list(&m.finalizers));
    if !m.managed_fields.is_empty() {
        let entries: Vec<Value> = m
            .managed_fields
            .iter()
            .map(|e| {
                let mut o = Map::new();
                put(&mut o, "manager", str_opt(&e.manager));
                put(&mut o, "operation", str_opt(&e.operation));
                put(&mut o, "apiVersion", str_opt(&e.api_version));
                put(&mut o, "time", time_json(&e.time));
                put(&mut o, "fieldsType", str_opt(&e.fields_type));
                put(
                    &mut o,
                    "fieldsV1",
                    e.fields_v1
                        .as_ref()
                        .and_then(|f| f.raw.as_deref())
                        .and_then(|raw| serde_json::from_slice(raw).ok()),
                );
                put(&mut o, "subresource", str_opt(&e.subresource));
                Value::Object(o)
            })
            .collect();
        o.insert("managedFields".into(), Value::Array(entries));
    }
    Value::Object(o)
}

fn with_meta(m: &Option<meta::ObjectMeta>) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        m.as_ref()
            .map(object_meta_json)
            .unwrap_or_else(|| json!({})),
    );
    o
}

fn namespace_json(ns: &core::Namespace) -> Value {
    let mut o = with_meta(&ns.metadata);
    if let Some(spec) = &ns.spec {
        let mut s = Map::new();
        put(&mut s, "finalizers", str_list(&spec.finalizers));
        o.insert("spec".into(), Value::Object(s));
    }
    if let Some(status) = &ns.status {
        let mut s = Map::new();
        put(&mut s, "phase", str_opt(&status.phase));
        if !status.conditions.is_empty() {
            let conds: Vec<Value> = status
                .conditions
                .iter()
                .map(|c| {
                    let mut o = Map::new();
                    put(&mut o, "type", str_req(&c.r#type));
                    put(&mut o, "status", str_req(&c.status));
                    put(
                        &mut o,
                        "lastTransitionTime",
                        time_json(&c.last_transition_time),
                    );
                    put(&mut o, "reason", str_opt(&c.reason));
                    put(&mut o, "message", str_opt(&c.message));
                    Value::Object(o)
                })
                .collect();
            s.insert("conditions".into(), Value::Array(conds));
        }
        o.insert("status".into(), Value::Object(s));
    }
    Value::Object(o)
}

fn configmap_json(cm: &core::ConfigMap) -> Value {
    let mut o = with_meta(&cm.metadata);
    put(&mut o, "immutable", cm.immutable.map(|b| json!(b)));
    put(&mut o, "data", str_map(&cm.data));
    put(&mut o, "binaryData", bytes_map(&cm.binary_data));
    Value::Object(o)
}

fn secret_json(s: &core::Secret) -> Value {
    let mut o = with_meta(&s.metadata);
    put(&mut o, "immutable", s.immutable.map(|b| json!(b)));
    put(&mut o, "data", bytes_map(&s.data));
    put(&mut o, "stringData", str_map(&s.string_data));
    put(&mut o, "type", str_opt(&s.r#type));
    Value::Object(o)
}

fn delete_options_json(d: &meta::DeleteOptions) -> Value {
    let mut o = Map::new();
    put(
        &mut o,
        "gracePeriodSeconds",
        d.grace_period_seconds.map(|g| json!(g)),
    );
    if let Some(p) = &d.preconditions {
        let mut pm = Map::new();
        put(&mut pm, "uid", str_opt(&p.uid));
        put(&mut pm, "resourceVersion", str_opt(&p.resource_version));
        o.insert("preconditions".into(), Value::Object(pm));
    }
    put(
        &mut o,
        "orphanDependents",
        d.orphan_dependents.map(|b| json!(b)),
    );
    put(&mut o, "propagationPolicy", str_opt(&d.propagation_policy));
    put(&mut o, "dryRun", str_list(&d.dry_run));
    Value::Object(o)
}

// ---- JSON → protobuf ----

fn js(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn ji(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_i64)
}

fn jb(v: &Value, k: &str) -> Option<bool> {
    v.get(k).and_then(Value::as_bool)
}

fn jstr_map(v: &Value, k: &str) -> BTreeMap<String, String> {
    v.get(k)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn jbytes_map(v: &Value, k: &str) -> BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    v.get(k)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), b64.decode(v.as_str()?).ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn jstr_list(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn jtime(v: &Value, k: &str) -> Option<meta::Time> {
    let s = v.get(k)?.as_str()?;
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(meta::Time {
        seconds: Some(t.timestamp()),
        nanos: Some(0),
    })
}

fn object_meta_pb(v: &Value) -> meta::ObjectMeta {
    let m = v.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let m = &m;
    meta::ObjectMeta {
        name: js(m, "name"),
        generate_name: js(m, "generateName"),
        namespace: js(m, "namespace"),
        self_link: js(m, "selfLink"),
        uid: js(m, "uid"),
        resource_version: js(m, "resourceVersion"),
        generation: ji(m, "generation"),
        creation_timestamp: jtime(m, "creationTimestamp"),
        deletion_timestamp: jtime(m, "deletionTimestamp"),
        deletion_grace_period_seconds: ji(m, "deletionGracePeriodSeconds"),
        labels: jstr_map(m, "labels"),
        annotations: jstr_map(m, "annotations"),
        owner_references: m
            .get("ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| meta::OwnerReference {
                api_version: js(r, "apiVersion"),
                kind: js(r, "kind"),
                name: js(r, "name"),
                uid: js(r, "uid"),
                controller: jb(r, "controller"),
                block_owner_deletion: jb(r, "blockOwnerDeletion"),
            })
            .collect(),
        finalizers: jstr_list(m, "finalizers"),
        managed_fields: m
            .get("managedFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| meta::ManagedFieldsEntry {
                manager: js(e, "manager"),
                operation: js(e, "operation"),
                api_version: js(e, "apiVersion"),
                time: jtime(e, "time"),
                fields_type: js(e, "fieldsType"),
                fields_v1: e.get("fieldsV1").map(|f| meta::FieldsV1 {
                    raw: Some(f.to_string().into_bytes()),
                }),
                subresource: js(e, "subresource"),
            })
            .collect(),
    }
}

fn namespace_pb(v: &Value) -> core::Namespace {
    core::Namespace {
        metadata: Some(object_meta_pb(v)),
        spec: v.get("spec").map(|s| core::NamespaceSpec {
            finalizers: jstr_list(s, "finalizers"),
        }),
        status: v.get("status").map(|s| core::NamespaceStatus {
            phase: js(s, "phase"),
            conditions: s
                .get("conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| core::NamespaceCondition {
                    r#type: js(c, "type"),
                    status: js(c, "status"),
                    last_transition_time: jtime(c, "lastTransitionTime"),
                    reason: js(c, "reason"),
                    message: js(c, "message"),
                })
                .collect(),
        }),
    }
}

fn configmap_pb(v: &Value) -> core::ConfigMap {
    core::ConfigMap {
        metadata: Some(object_meta_pb(v)),
        immutable: jb(v, "immutable"),
        data: jstr_map(v, "data"),
        binary_data: jbytes_map(v, "binaryData"),
    }
}

fn secret_pb(v: &Value) -> core::Secret {
    core::Secret {
        metadata: Some(object_meta_pb(v)),
        immutable: jb(v, "immutable"),
        data: jbytes_map(v, "data"),
        string_data: jstr_map(v, "stringData"),
        r#type: js(v, "type"),
    }
}

fn list_meta_pb(v: &Value) -> meta::ListMeta {
    let m = v.get("metadata").cloned().unwrap_or_else(|| json!({}));
    meta::ListMeta {
        self_link: js(&m, "selfLink"),
        resource_version: js(&m, "resourceVersion"),
        r#continue: js(&m, "continue"),
        remaining_item_count: ji(&m, "remainingItemCount"),
    }
}

fn status_pb(v: &Value) -> meta::Status {
    let d = v.get("details").cloned().unwrap_or_else(|| json!({}));
    meta::Status {
        metadata: Some(list_meta_pb(v)),
        status: js(v, "status"),
        message: js(v, "message"),
        reason: js(v, "reason"),
        details: Some(meta::StatusDetails {
            name: js(&d, "name"),
            group: js(&d, "group"),
            kind: js(&d, "kind"),
            uid: js(&d, "uid"),
            causes: d
                .get("causes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| meta::StatusCause {
                    reason: js(c, "reason"),
                    message: js(c, "message"),
                    field: js(c, "field"),
                })
                .collect(),
            retry_after_seconds: ji(&d, "retryAfterSeconds").and_then(|s| i32::try_from(s).ok()),
        }),
        code: ji(v, "code").and_then(|c| i32::try_from(c).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_through_protobuf() {
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default", "uid": "u1", "resourceVersion": "7",
                "creationTimestamp": "2026-01-02T03:04:05Z", "labels": {"a": "b"},
                "managedFields": [{"manager": "m", "operation": "Update", "apiVersion": "v1",
                    "time": "2026-01-02T03:04:05Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {"f:k": {}}}}]},
            "data": {"k": "v"}, "binaryData": {"b": "AAE="}
        });
        let body = encode(&cm).expect("a ConfigMap encodes");
        assert_eq!(&body[..4], b"k8s\0");
        assert_eq!(decode(&body).unwrap(), cm);
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "type": "Opaque", "data": {"x": "eHl6"}});
        assert_eq!(decode(&encode(&secret).unwrap()).unwrap(), secret);
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        assert_eq!(decode(&encode(&ns).unwrap()).unwrap(), ns);
    }

    #[test]
    fn empty_go_fields_are_omitted_as_go_json_omits_them() {
        let cm = core::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                name: Some("c".into()),
                generate_name: Some(String::new()),
                creation_timestamp: Some(meta::Time {
                    seconds: Some(0),
                    nanos: Some(0),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let env = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
            }),
            raw: Some(cm.encode_to_vec()),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        env.encode(&mut body).unwrap();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(matches!(decode(b"{}"), Err(ProtoError::NoPrefix)));
        assert!(matches!(
            decode(b"k8s\0\xff\xff\xff"),
            Err(ProtoError::Decode(_))
        ));
        let env = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
            }),
            raw: Some(vec![0x0a, 0xff, 0x01]),
            content_encoding: None,
            content_type: None,
        };
        let mut body = MAGIC.to_vec();
        env.encode(&mut body).unwrap();
        assert!(matches!(decode(&body), Err(ProtoError::Decode(_))));
        let pod = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
            }),
            ..env
        };
        let mut body = MAGIC.to_vec();
        pod.encode(&mut body).unwrap();
        assert!(matches!(decode(&body), Err(ProtoError::UnknownKind { .. })));
        assert!(encode(&json!({"apiVersion": "v1", "kind": "Pod"})).is_none());
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepts(Some(
            "application/vnd.kubernetes.protobuf,application/json"
        )));
        assert!(!accepts(Some("application/json, */*")));
        assert!(!accepts(Some(
            "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json"
        )));
        assert!(!accepts(None));
    }
}

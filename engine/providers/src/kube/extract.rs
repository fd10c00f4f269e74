//! What a field manager last applied to an object: the part of the live object that its
//! `Apply` entry in `metadata.managedFields` owns, as client-go's
//! `managedfields.ExtractInto` reads it.
//!
//! A day-2 change of a Cluster re-applies exactly this, with the planned change on top, so
//! that tkgops writes the Cluster the way it always writes it (server-side apply, field
//! manager `tkgops`, operation `Apply`): the fields it owns stay owned by the same manager,
//! fields it never applied are left to their owners, and nothing it did not plan changes.
//! Writing the same object both by apply and by a merge patch makes two managers of one name,
//! and the next apply then conflicts with the patch (kubernetes/kubernetes#107417; see
//! `docs/design.md`, "Writing to the management cluster").
//!
//! `FieldsV1` is the API server's encoding of a field set: `f:<name>` a field of a map,
//! `k:<json>` the entry of an associative list whose key fields have these values, `v:<json>`
//! the entry of a set list with this value, `i:<n>` a list entry by index, and `.` the node
//! itself. An empty node is a leaf: the whole value at that place is owned.

use serde_json::{Map, Value};

/// The fields of `live` (a whole object as JSON, `metadata.managedFields` included) that the
/// `Apply` entry of `manager` on the main resource owns, as an object with those fields and
/// their live values (list entries in their live order). `None` when `manager` has no such
/// entry (it never applied this object, or other managers took every field it applied).
///
/// The `apiVersion`, `kind`, `metadata.name` and `metadata.namespace` are not part of any field
/// set: the caller adds them to make an apply configuration.
pub fn applied_by(live: &Value, manager: &str) -> Option<Value> {
    let entry = live
        .pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .find(|e| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Apply")
                && e.get("subresource")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        })?;
    let set = entry.get("fieldsV1")?.as_object()?;
    extract(live, set)
}

/// The owned part of `v` under the field-set node `set`; `None` when nothing under it exists.
fn extract(v: &Value, set: &Map<String, Value>) -> Option<Value> {
    let children: Vec<(&str, &Map<String, Value>)> = set
        .iter()
        .filter(|(k, _)| k.as_str() != ".")
        .filter_map(|(k, c)| Some((k.as_str(), c.as_object()?)))
        .collect();
    if children.is_empty() {
        // A leaf (or a node owned as a whole with no owned children): its whole value.
        return Some(v.clone());
    }
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, child) in children {
                let Some(name) = k.strip_prefix("f:") else {
                    continue;
                };
                if let Some(x) = m.get(name).and_then(|cv| extract(cv, child)) {
                    out.insert(name.to_string(), x);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => {
            // Owned entries, in the live list's order.
            let mut owned: Vec<(usize, Value)> = Vec::new();
            for (k, child) in children {
                let found = if let Some(key) = k.strip_prefix("k:") {
                    let key: Map<String, Value> = serde_json::from_str(key).ok()?;
                    items.iter().position(|item| {
                        key.iter().all(|(kf, kv)| item.get(kf.as_str()) == Some(kv))
                    })
                } else if let Some(val) = k.strip_prefix("v:") {
                    let val: Value = serde_json::from_str(val).ok()?;
                    items.iter().position(|item| *item == val)
                } else if let Some(i) = k.strip_prefix("i:") {
                    i.parse::<usize>().ok().filter(|i| *i < items.len())
                } else {
                    None
                };
                if let Some(i) = found {
                    if let Some(x) = extract(&items[i], child) {
                        owned.push((i, x));
                    }
                }
            }
            owned.sort_by_key(|(i, _)| *i);
            Some(Value::Array(owned.into_iter().map(|(_, x)| x).collect()))
        }
        // The set names children of a scalar: the live value changed shape; nothing is owned.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(fields_v1: Value, operation: &str) -> Value {
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1",
            "kind": "Cluster",
            "metadata": {
                "name": "c", "namespace": "default", "resourceVersion": "7",
                "labels": {"mine": "a", "theirs": "b"},
                "managedFields": [
                    {"manager": "tkgops", "operation": operation, "apiVersion": "cluster.x-k8s.io/v1beta1",
                     "fieldsType": "FieldsV1", "fieldsV1": fields_v1},
                    {"manager": "capi", "operation": "Update", "apiVersion": "cluster.x-k8s.io/v1beta1",
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:theirs": {}}}}}
                ]
            },
            "spec": {
                "paused": false,
                "topology": {
                    "version": "v1.25.7+vmware.2",
                    "variables": [
                        {"name": "controlPlane", "value": {"machine": {"instanceType": "m5.large"}}},
                        {"name": "TKR_DATA", "value": {"v1.25.7+vmware.2": {}}},
                        {"name": "proxy", "value": {"httpProxy": "http://p"}}
                    ],
                    "workers": {"machineDeployments": [
                        {"class": "tkg-worker", "name": "md-0", "replicas": 3},
                        {"class": "tkg-worker", "name": "md-1", "replicas": 2}
                    ]}
                }
            },
            "status": {"phase": "Provisioned"}
        })
    }

    /// The real API server's encoding: associative lists by key, with `.` on entries.
    #[test]
    fn extracts_owned_fields_and_list_entries_by_key() {
        let set = json!({
            "f:metadata": {"f:labels": {".": {}, "f:mine": {}}},
            "f:spec": {"f:topology": {
                "f:version": {},
                "f:variables": {
                    "k:{\"name\":\"proxy\"}": {".": {}, "f:name": {}, "f:value": {}},
                    "k:{\"name\":\"controlPlane\"}": {".": {}, "f:name": {}, "f:value": {}}
                },
                "f:workers": {"f:machineDeployments": {
                    "k:{\"class\":\"tkg-worker\",\"name\":\"md-1\"}": {".": {}, "f:class": {}, "f:name": {}, "f:replicas": {}}
                }}
            }}
        });
        let got = applied_by(&object(set, "Apply"), "tkgops").unwrap();
        assert_eq!(
            got,
            json!({
                "metadata": {"labels": {"mine": "a"}},
                "spec": {"topology": {
                    "version": "v1.25.7+vmware.2",
                    "variables": [
                        {"name": "controlPlane", "value": {"machine": {"instanceType": "m5.large"}}},
                        {"name": "proxy", "value": {"httpProxy": "http://p"}}
                    ],
                    "workers": {"machineDeployments": [{"class": "tkg-worker", "name": "md-1", "replicas": 2}]}
                }}
            })
        );
    }

    /// Atomic lists (a leaf), set lists by value, and an entry whose owner is an Update: none.
    #[test]
    fn atomic_lists_sets_and_other_operations() {
        let set = json!({"f:spec": {"f:topology": {"f:variables": {}}}});
        let got = applied_by(&object(set.clone(), "Apply"), "tkgops").unwrap();
        assert_eq!(
            got["spec"]["topology"]["variables"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(applied_by(&object(set, "Update"), "tkgops"), None);
        assert_eq!(applied_by(&object(json!({}), "Apply"), "other"), None);

        let live = json!({"metadata": {"finalizers": ["a", "b", "c"], "managedFields": [
            {"manager": "m", "operation": "Apply", "fieldsV1": {"f:metadata": {"f:finalizers": {"v:\"c\"": {}, "v:\"a\"": {}}}}}
        ]}});
        assert_eq!(
            applied_by(&live, "m").unwrap(),
            json!({"metadata": {"finalizers": ["a", "c"]}})
        );
    }
}

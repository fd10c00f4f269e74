//! Field sets for server-side apply: leaf paths of objects, `FieldsV1` encoding, managedFields
//! entries, ownership transfer and conflict detection.
//!
//! A field path is the list of object keys from the root to a *leaf*: a scalar, a `null`, a list
//! (lists are atomic: the whole list is one leaf) or an empty object. See the module docs of
//! [`super`] for how far ownership tracking goes.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

/// A path of object keys from the root of an object to a leaf.
pub(crate) type FieldPath = Vec<String>;

/// A set of owned leaf paths.
pub(crate) type FieldSet = BTreeSet<FieldPath>;

/// Metadata keys that are maintained by the server and never owned by a field manager.
const SYSTEM_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// A copy of `obj` without `apiVersion`, `kind` and server-maintained metadata: the part of an
/// object whose fields can be owned.
pub(crate) fn tracked_view(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        let mut drop_meta = false;
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in SYSTEM_METADATA {
                meta.remove(*k);
            }
            drop_meta = meta.is_empty();
        }
        if drop_meta {
            m.remove("metadata");
        }
    }
    v
}

/// Every leaf path of `v` (see the module docs for what a leaf is). The root itself is never a leaf.
pub(crate) fn leaf_paths(v: &Value) -> FieldSet {
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut FieldSet) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    prefix.push(k.clone());
                    walk(c, prefix, out);
                    prefix.pop();
                }
            }
            _ => {
                if !prefix.is_empty() {
                    out.insert(prefix.clone());
                }
            }
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The value at `path` in `v`, if every key on the way exists.
pub(crate) fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for k in path {
        cur = cur.as_object()?.get(k)?;
    }
    Some(cur)
}

/// Removes the value at `path` from `v`; parent objects that become empty are removed too, except
/// top-level keys (so `spec` stays as `{}`).
pub(crate) fn remove_path(v: &mut Value, path: &[String]) {
    fn rec(v: &mut Value, path: &[String], depth: usize) {
        let Some(m) = v.as_object_mut() else { return };
        if path.len() == 1 {
            m.remove(&path[0]);
        } else if let Some(child) = m.get_mut(&path[0]) {
            rec(child, &path[1..], depth + 1);
            let empty = child.as_object().is_some_and(|c| c.is_empty());
            if empty && depth > 0 {
                m.remove(&path[0]);
            }
        }
    }
    if !path.is_empty() {
        rec(v, path, 0);
    }
}

/// Deep-merges `patch` into `target` as server-side apply does with atomic lists: objects are
/// merged key by key, anything else replaces; a `null` in `patch` removes the key.
pub(crate) fn deep_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, pv) in p {
                if pv.is_null() {
                    t.remove(k);
                } else if let Some(tv) = t.get_mut(k) {
                    if tv.is_object() && pv.is_object() {
                        deep_merge(tv, pv);
                    } else {
                        *tv = pv.clone();
                    }
                } else {
                    let mut nv = Value::Object(Map::new());
                    if pv.is_object() {
                        deep_merge(&mut nv, pv);
                    } else {
                        nv = pv.clone();
                    }
                    t.insert(k.clone(), nv);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Whether one path is a prefix of (or equal to) the other.
pub(crate) fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Renders a path the way the API server does in conflict messages: `.spec.replicas`.
pub(crate) fn display_path(p: &[String]) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

/// Encodes a field set as a `FieldsV1` object (`{"f:spec":{"f:replicas":{}}}`).
pub(crate) fn encode_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for seg in path {
            let key = format!("f:{seg}");
            let entry = cur.entry(key).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            cur = entry.as_object_mut().expect("just made an object");
        }
        if !cur.is_empty() {
            cur.insert(".".to_string(), json!({}));
        }
    }
    // A node that got children after being inserted as a leaf must keep its own ownership.
    fn mark(node: &mut Map<String, Value>, path: &mut Vec<String>, set: &FieldSet) {
        let keys: Vec<String> = node.keys().cloned().collect();
        for k in keys {
            let Some(seg) = k.strip_prefix("f:") else {
                continue;
            };
            path.push(seg.to_string());
            if let Some(child) = node.get_mut(&k).and_then(Value::as_object_mut) {
                if !child.is_empty() && set.contains(path) {
                    child.insert(".".to_string(), json!({}));
                }
                mark(child, path, set);
            }
            path.pop();
        }
    }
    mark(&mut root, &mut Vec::new(), set);
    Value::Object(root)
}

/// Decodes a `FieldsV1` object into a field set (keys other than `f:` and `.` are ignored).
pub(crate) fn decode_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        let children: Vec<(&String, &Value)> =
            m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
        if (children.is_empty() || m.contains_key(".")) && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        for (k, c) in children {
            prefix.push(k[2..].to_string());
            walk(c, prefix, out);
            prefix.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ManagedEntry {
    /// Field manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// apiVersion of the object when the fields were set.
    pub api_version: String,
    /// RFC 3339 time of the last change of this entry.
    pub time: String,
    /// `Some("status")` for writes to the status subresource.
    pub subresource: Option<String>,
    /// Owned leaf paths.
    pub fields: FieldSet,
}

impl ManagedEntry {
    fn same_slot(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

/// Parses `metadata.managedFields` of `obj`; malformed entries are skipped.
pub(crate) fn parse_managed(obj: &Value) -> Vec<ManagedEntry> {
    let Some(arr) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    arr.iter()
        .filter_map(|e| {
            Some(ManagedEntry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("Update")
                    .to_string(),
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                fields: e.get("fieldsV1").map(decode_fields_v1).unwrap_or_default(),
            })
        })
        .collect()
}

/// Serializes entries back to the `metadata.managedFields` JSON form.
pub(crate) fn render_managed(entries: &[ManagedEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut m = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": encode_fields_v1(&e.fields),
                });
                if let Some(s) = &e.subresource {
                    m["subresource"] = json!(s);
                }
                m
            })
            .collect(),
    )
}

/// Field sets of all entries, ignoring times (to detect no-op applies).
pub(crate) fn same_ownership(a: &[ManagedEntry], b: &[ManagedEntry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.manager == y.manager
                && x.operation == y.operation
                && x.subresource == y.subresource
                && x.fields == y.fields
        })
}

/// Records a non-apply write (`Update` operation) by `manager`: every leaf whose value changed
/// between `old` and `new` (tracked views) becomes owned by the manager's Update entry and is
/// taken from every other entry; then ownership of fields that no longer exist is dropped.
pub(crate) fn record_update(
    entries: &mut Vec<ManagedEntry>,
    old: &Value,
    new: &Value,
    manager: &str,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) {
    record_changes(
        entries,
        old,
        new,
        (manager, "Update", subresource),
        api_version,
        now,
    );
}

/// Attributes what mutating admission changed during an apply by `manager` (`before`: the
/// applied result, `after`: as admission left it; tracked views) to the request's own
/// `(manager, Apply, subresource)` entry, as the API server attributes webhook changes to the
/// request's manager (docs/kubernetes-wire.md, "Field ownership and wire formats").
pub(crate) fn record_admission_of_apply(
    entries: &mut Vec<ManagedEntry>,
    before: &Value,
    after: &Value,
    manager: &str,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) {
    record_changes(
        entries,
        before,
        after,
        (manager, "Apply", subresource),
        api_version,
        now,
    );
}

/// Every leaf whose value changed between `old` and `new` becomes owned by the entry `slot`
/// (`(manager, operation, subresource)`, created if absent) and is taken from every other
/// entry; then ownership of fields that no longer exist in `new` is dropped.
fn record_changes(
    entries: &mut Vec<ManagedEntry>,
    old: &Value,
    new: &Value,
    slot: (&str, &str, Option<&str>),
    api_version: &str,
    now: &str,
) {
    let (manager, operation, subresource) = slot;
    let changed: FieldSet = leaf_paths(new)
        .into_iter()
        .filter(|p| get_path(old, p) != get_path(new, p))
        .collect();
    if !changed.is_empty() {
        for e in entries.iter_mut() {
            if !e.same_slot(manager, operation, subresource) {
                e.fields.retain(|q| !changed.iter().any(|p| overlaps(p, q)));
            }
        }
        match entries
            .iter_mut()
            .find(|e| e.same_slot(manager, operation, subresource))
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now.to_string();
                e.api_version = api_version.to_string();
            }
            None => entries.push(ManagedEntry {
                manager: manager.to_string(),
                operation: operation.to_string(),
                api_version: api_version.to_string(),
                time: now.to_string(),
                subresource: subresource.map(str::to_string),
                fields: changed,
            }),
        }
    }
    prune_missing(entries, new);
}

/// Drops owned paths that no longer exist in `obj` (tracked view) and entries left empty.
pub(crate) fn prune_missing(entries: &mut Vec<ManagedEntry>, obj: &Value) {
    for e in entries.iter_mut() {
        e.fields.retain(|p| get_path(obj, p).is_some());
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// One field conflict found by [`apply`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Conflict {
    /// The manager owning the field.
    pub manager: String,
    /// apiVersion recorded in that manager's entry.
    pub api_version: String,
    /// The conflicting path.
    pub path: FieldPath,
}

/// Server-side apply of `config` (tracked view of the applied object, restricted to the part the
/// endpoint may change) by `manager` onto `live` (tracked view; `Value::Object(empty)` when
/// creating). Returns the new tracked view, or the conflicts when not forced.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply(
    entries: &mut Vec<ManagedEntry>,
    live: &Value,
    config: &Value,
    manager: &str,
    subresource: Option<&str>,
    force: bool,
    api_version: &str,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let new_set = leaf_paths(config);
    let mut conflicts = BTreeSet::new();
    // Managers are keyed by (manager, operation, subresource): the same name's `Update` entry
    // is another manager, and conflicts like any other (kubernetes/kubernetes#107417).
    for e in entries.iter() {
        if e.same_slot(manager, "Apply", subresource) {
            continue;
        }
        for q in &e.fields {
            for p in &new_set {
                if overlaps(p, q) && get_path(live, p) != get_path(config, p) {
                    conflicts.insert(Conflict {
                        manager: e.manager.clone(),
                        api_version: e.api_version.clone(),
                        path: p.clone(),
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts.into_iter().collect());
        }
        for e in entries.iter_mut() {
            if !e.same_slot(manager, "Apply", subresource) {
                e.fields.retain(|q| {
                    !new_set
                        .iter()
                        .any(|p| overlaps(p, q) && get_path(live, p) != get_path(config, p))
                });
            }
        }
    }
    let prev: FieldSet = entries
        .iter()
        .find(|e| e.same_slot(manager, "Apply", subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut result = live.clone();
    for gone in prev.difference(&new_set) {
        let owned_elsewhere = entries
            .iter()
            .filter(|e| !e.same_slot(manager, "Apply", subresource))
            .any(|e| e.fields.iter().any(|q| overlaps(q, gone)));
        if !owned_elsewhere {
            remove_path(&mut result, gone);
        }
    }
    deep_merge(&mut result, config);
    match entries
        .iter_mut()
        .find(|e| e.same_slot(manager, "Apply", subresource))
    {
        Some(e) => {
            if e.fields != new_set {
                e.time = now.to_string();
            }
            e.fields = new_set;
            e.api_version = api_version.to_string();
        }
        None => entries.push(ManagedEntry {
            manager: manager.to_string(),
            operation: "Apply".to_string(),
            api_version: api_version.to_string(),
            time: now.to_string(),
            subresource: subresource.map(str::to_string),
            fields: new_set,
        }),
    }
    prune_missing(entries, &result);
    Ok(result)
}

/// The API server's conflict message: `Apply failed with 1 conflict: conflict with "m" using v1: .spec.x`.
pub(crate) fn conflict_message(conflicts: &[Conflict]) -> String {
    if conflicts.len() == 1 {
        let c = &conflicts[0];
        return format!(
            "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
            c.manager,
            c.api_version,
            display_path(&c.path)
        );
    }
    let mut msg = format!("Apply failed with {} conflicts: ", conflicts.len());
    let mut by_mgr: Vec<(String, String, Vec<String>)> = Vec::new();
    for c in conflicts {
        match by_mgr.iter_mut().find(|(m, _, _)| *m == c.manager) {
            Some((_, _, ps)) => ps.push(display_path(&c.path)),
            None => by_mgr.push((
                c.manager.clone(),
                c.api_version.clone(),
                vec![display_path(&c.path)],
            )),
        }
    }
    let parts: Vec<String> = by_mgr
        .into_iter()
        .map(|(m, av, ps)| format!("conflicts with \"{m}\" using {av}:\n- {}", ps.join("\n- ")))
        .collect();
    msg.push_str(&parts.join("\n"));
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kubernetes/kubernetes#107417: an `Update` and an `Apply` by one manager name are two
    /// managers. The Apply conflicts with the Update's field, forcing moves it, and the Update
    /// itself never conflicts.
    #[test]
    fn an_update_and_an_apply_by_one_name_are_two_managers() {
        let mut entries = Vec::new();
        let applied = apply(
            &mut entries,
            &json!({}),
            &json!({"data": {"a": "1"}}),
            "tkgops",
            None,
            false,
            "v1",
            "t",
        )
        .unwrap();
        // `kubectl patch --type merge --field-manager=tkgops`: an Update, no conflict.
        let patched = json!({"data": {"a": "2"}});
        record_update(&mut entries, &applied, &patched, "tkgops", None, "v1", "t");
        let slots: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.manager.as_str(), e.operation.as_str()))
            .collect();
        assert_eq!(slots, [("tkgops", "Update")], "the Update took the field");
        // The first apply again: a conflict with the Update manager of the same name.
        let err = apply(
            &mut entries.clone(),
            &patched,
            &json!({"data": {"a": "1"}}),
            "tkgops",
            None,
            false,
            "v1",
            "t",
        )
        .unwrap_err();
        assert_eq!(
            conflict_message(&err),
            "Apply failed with 1 conflict: conflict with \"tkgops\" using v1: .data.a"
        );
        // The same value is shared ownership, not a conflict.
        apply(
            &mut entries.clone(),
            &patched,
            &json!({"data": {"a": "2"}}),
            "tkgops",
            None,
            false,
            "v1",
            "t",
        )
        .unwrap();
        // Forced: the Apply entry takes the field.
        apply(
            &mut entries,
            &patched,
            &json!({"data": {"a": "1"}}),
            "tkgops",
            None,
            true,
            "v1",
            "t",
        )
        .unwrap();
        let slots: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.manager.as_str(), e.operation.as_str()))
            .collect();
        assert_eq!(slots, [("tkgops", "Apply")]);
    }

    /// What mutating admission changes during an apply belongs to the request's Apply entry.
    #[test]
    fn admission_changes_of_an_apply_belong_to_its_manager() {
        let mut entries = Vec::new();
        let applied = apply(
            &mut entries,
            &json!({}),
            &json!({"spec": {"version": "v1.25.7---vmware.2-tkg.1"}}),
            "tkgops",
            None,
            false,
            "v1",
            "t",
        )
        .unwrap();
        let admitted = json!({"metadata": {"labels": {"tkr": "v1.25.7---vmware.2-tkg.1"}},
            "spec": {"version": "v1.25.7+vmware.2"}});
        record_admission_of_apply(&mut entries, &applied, &admitted, "tkgops", None, "v1", "t");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].operation, "Apply");
        assert!(entries[0].fields.contains(&vec![
            "metadata".to_string(),
            "labels".into(),
            "tkr".into()
        ]));
    }

    #[test]
    fn fields_v1_roundtrip() {
        let obj =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1, "l": [1, 2], "e": {}}});
        let set = leaf_paths(&obj);
        assert_eq!(set.len(), 4);
        assert_eq!(decode_fields_v1(&encode_fields_v1(&set)), set);
    }

    #[test]
    fn apply_removes_omitted_and_detects_conflicts() {
        let mut entries = Vec::new();
        let live = json!({});
        let r = apply(
            &mut entries,
            &live,
            &json!({"spec": {"a": 1, "b": 2}}),
            "m1",
            None,
            false,
            "v1",
            "t",
        )
        .unwrap();
        let r = apply(
            &mut entries,
            &r,
            &json!({"spec": {"a": 1}}),
            "m1",
            None,
            false,
            "v1",
            "t",
        )
        .unwrap();
        assert_eq!(r, json!({"spec": {"a": 1}}));
        let err = apply(
            &mut entries.clone(),
            &r,
            &json!({"spec": {"a": 2}}),
            "m2",
            None,
            false,
            "v1",
            "t",
        )
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(conflict_message(&err).contains(".spec.a"));
        let r = apply(
            &mut entries,
            &r,
            &json!({"spec": {"a": 2}}),
            "m2",
            None,
            true,
            "v1",
            "t",
        )
        .unwrap();
        assert_eq!(r, json!({"spec": {"a": 2}}));
        assert_eq!(entries.len(), 1);
    }
}

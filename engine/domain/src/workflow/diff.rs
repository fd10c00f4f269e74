//! The semantic diff of a changed cluster's Cluster object and PackageInstalls (issue 8 item
//! 10; PackageInstalls: [`package_diffs`]): the Cluster as
//! `manifests/cluster.yaml.hbs` renders it for the desired state before and after the change,
//! compared field by field with `json-patch`'s RFC 6902 diff, so a reviewer reads
//! `spec.topology.version: v1.24.11+vmware.1-tkg.1 → v1.25.7+vmware.2-tkg.1` instead of the whole
//! new object. List entries that carry a `name` (ClusterClass variables, MachineDeployments) are
//! shown by name. Display only: not part of the plan's digest.

use serde::Serialize;
use serde_json::Value;

use super::catalog::Catalog;
use super::plan::render_context;
use crate::request::ClusterSpec;

/// The template the Cluster is rendered from.
pub const CLUSTER_TEMPLATE: &str = "manifests/cluster.yaml.hbs";

/// Fields listed at most per object (the rest are counted).
pub const MAX_CHANGES: usize = 40;

/// One changed field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// `spec.topology.variables[controlPlane].value.machine.instanceType`.
    pub path: String,
    /// The old value as compact JSON (`–` when the field is new).
    pub from: String,
    /// The new value as compact JSON (`–` when the field is removed).
    pub to: String,
}

/// The changed fields of one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectDiff {
    /// `Cluster default/team-a-prod`.
    pub object: String,
    /// At most [`MAX_CHANGES`] changes, in document order.
    pub changes: Vec<FieldChange>,
    /// How many more changed fields there are.
    pub more: usize,
}

fn render(spec: &ClusterSpec, repository: &str, catalog: &Catalog) -> Option<Vec<Value>> {
    let yaml = catalog
        .render(CLUSTER_TEMPLATE, &render_context(spec, repository))
        .ok()?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).ok()?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Some(out)
}

fn identity(v: &Value) -> String {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("");
    let ns = s("/metadata/namespace");
    if ns.is_empty() {
        format!("{} {}", s("/kind"), s("/metadata/name"))
    } else {
        format!("{} {ns}/{}", s("/kind"), s("/metadata/name"))
    }
}

fn short(v: Option<&Value>) -> String {
    match v {
        None => "–".into(),
        Some(v) => {
            let t = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            super::markdown::cell(&t, 120)
        }
    }
}

/// `a.b[name].c` for JSON pointer `tokens` into `doc` (array entries with a `name` by name).
fn display_path(doc: &Value, tokens: &[String]) -> String {
    let mut out = String::new();
    let mut cur = Some(doc);
    for t in tokens {
        let next = match cur {
            Some(Value::Array(a)) => {
                let item = t.parse::<usize>().ok().and_then(|i| a.get(i));
                match item.and_then(|i| i.get("name")).and_then(Value::as_str) {
                    Some(n) => out.push_str(&format!("[{n}]")),
                    None => out.push_str(&format!("[{t}]")),
                }
                item
            }
            Some(Value::Object(o)) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(t);
                o.get(t)
            }
            _ => {
                out.push('.');
                out.push_str(t);
                None
            }
        };
        cur = next;
    }
    out
}

/// The field changes between two versions of one object.
fn object_diff(before: &Value, after: &Value) -> ObjectDiff {
    let patch = json_patch::diff(before, after);
    let mut changes = Vec::new();
    for op in patch.iter() {
        let pointer = op.path();
        let tokens: Vec<String> = pointer.tokens().map(|t| t.decoded().into_owned()).collect();
        let (from, to) = match op {
            json_patch::PatchOperation::Add(a) => (None, Some(&a.value)),
            json_patch::PatchOperation::Remove(_) => (before.pointer(pointer.as_str()), None),
            json_patch::PatchOperation::Replace(r) => {
                (before.pointer(pointer.as_str()), Some(&r.value))
            }
            _ => (
                before.pointer(pointer.as_str()),
                after.pointer(pointer.as_str()),
            ),
        };
        let doc = if to.is_some() { after } else { before };
        changes.push(FieldChange {
            path: display_path(doc, &tokens),
            from: short(from),
            to: short(to),
        });
    }
    let more = changes.len().saturating_sub(MAX_CHANGES);
    changes.truncate(MAX_CHANGES);
    ObjectDiff {
        object: identity(after),
        changes,
        more,
    }
}

/// The changed fields of the Cluster between the desired state `before` and `after`, rendered
/// for config repository `repository`; empty when nothing changes or a side does not render
/// (the plan reports render errors itself).
pub fn cluster_diff(
    before: &ClusterSpec,
    after: &ClusterSpec,
    repository: &str,
    catalog: &Catalog,
) -> Vec<ObjectDiff> {
    let (Some(old), Some(new)) = (
        render(before, repository, catalog),
        render(after, repository, catalog),
    ) else {
        return Vec::new();
    };
    new.iter()
        .filter_map(|n| {
            let id = identity(n);
            let o = old.iter().find(|o| identity(o) == id)?;
            let d = object_diff(o, n);
            (!d.changes.is_empty()).then_some(d)
        })
        .collect()
}

/// A PackageInstall as a reviewer compares it: its package reference, version constraint, the
/// values tkgops writes to its values Secret (parsed), and the Secrets it also reads.
fn package_object(p: &crate::request::PackageSpec) -> Value {
    let values: Value = if p.values_yaml.trim().is_empty() {
        Value::Null
    } else {
        serde_yaml::from_str(&p.values_yaml).unwrap_or(Value::String(p.values_yaml.clone()))
    };
    serde_json::json!({
        "kind": "PackageInstall",
        "metadata": {"name": p.name, "namespace": p.namespace},
        "spec": {
            "packageRef": {"refName": p.ref_name, "versionSelection": {"constraints": p.version}},
            "values": values,
            "valuesFrom": p.values_from,
        },
    })
}

/// The changed fields of every PackageInstall present before and after the change (version,
/// values as parsed YAML, values Secrets); added and removed packages are in the summary row.
pub fn package_diffs(before: &ClusterSpec, after: &ClusterSpec) -> Vec<ObjectDiff> {
    after
        .packages
        .iter()
        .filter_map(|n| {
            let o = before.packages.iter().find(|o| o.name == n.name)?;
            let d = object_diff(&package_object(o), &package_object(n));
            (!d.changes.is_empty()).then_some(d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_named_and_list_entries_by_name() {
        let a = json!({"kind": "Cluster", "metadata": {"name": "c", "namespace": "default"},
            "spec": {"topology": {"version": "v1.24.11", "variables": [
                {"name": "a", "value": 1}, {"name": "controlPlane", "value": {"machine": {"instanceType": "m5.large"}}}]}}});
        let b = json!({"kind": "Cluster", "metadata": {"name": "c", "namespace": "default"},
            "spec": {"topology": {"version": "v1.25.7", "variables": [
                {"name": "a", "value": 1}, {"name": "controlPlane", "value": {"machine": {"instanceType": "m5.xlarge"}}}],
                "extra": true}}});
        let d = object_diff(&a, &b);
        assert_eq!(d.object, "Cluster default/c");
        let shown: Vec<(String, String, String)> = d
            .changes
            .iter()
            .map(|c| (c.path.clone(), c.from.clone(), c.to.clone()))
            .collect();
        assert!(shown.contains(&(
            "spec.topology.version".into(),
            "v1.24.11".into(),
            "v1.25.7".into()
        )));
        assert!(shown.contains(&(
            "spec.topology.variables[controlPlane].value.machine.instanceType".into(),
            "m5.large".into(),
            "m5.xlarge".into()
        )));
        assert!(shown.contains(&("spec.topology.extra".into(), "–".into(), "true".into())));
        assert_eq!(d.changes.len(), 3, "{shown:?}");
    }
}

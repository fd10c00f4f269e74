//! The machine fields of a Cluster that a resize sets, field by field, and the checks that make
//! a resize do exactly what its plan showed (issue 18 item 4).
//!
//! A field is addressed by a [`FieldPath`]: object keys, and list entries by their `name`, as
//! the ClusterClass topology names them (`spec.topology.variables[controlPlane]`,
//! `spec.topology.workers.machineDeployments[md-0]`). Lists whose entries have no `name` are
//! one field (atomic). Pure: the planner computes the fields from the rendered Cluster before
//! and after the change ([`machine_fields`]); `kube.resize-cluster` checks them against the
//! live Cluster and a server-side dry run ([`unexpected_live`], [`unplanned`]) before it
//! writes.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One step of a [`FieldPath`]: a key of an object, or the entry of a list with this `name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PathSegment {
    /// A key of an object.
    Key(String),
    /// The entry of a list whose `name` is this.
    Named {
        /// The entry's `name`.
        name: String,
    },
}

/// A field of an object: [`PathSegment`]s from the root. Displayed as
/// `spec.topology.variables[controlPlane].value.machine.instanceType`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FieldPath(pub Vec<PathSegment>);

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                PathSegment::Key(k) if i == 0 => write!(f, "{k}")?,
                PathSegment::Key(k) => write!(f, ".{k}")?,
                PathSegment::Named { name } => write!(f, "[{name}]")?,
            }
        }
        Ok(())
    }
}

impl FieldPath {
    /// Whether `self` starts with `prefix`, where a `Named` segment `*` in `prefix` matches
    /// any entry.
    fn matches_prefix(&self, prefix: &[PathSegment]) -> bool {
        self.0.len() >= prefix.len()
            && self.0.iter().zip(prefix).all(|(s, p)| match (s, p) {
                (PathSegment::Named { .. }, PathSegment::Named { name }) if name == "*" => true,
                _ => s == p,
            })
    }
}

/// One field a resize sets: its value before the change (`from`) and after it (`to`); `None`
/// when the field is absent on that side. Equal for a field the change keeps as it is: the
/// resize still checks that the live Cluster has it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFieldChange {
    /// The field.
    pub path: FieldPath,
    /// The value the plan expects on the live Cluster before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The value after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

impl ClusterFieldChange {
    /// Whether the change sets another value than the field had.
    pub fn changes(&self) -> bool {
        self.from != self.to
    }
}

impl fmt::Display for ClusterFieldChange {
    /// `path: from → to`, values as compact JSON, `–` for an absent one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} → {}",
            self.path,
            show(&self.from),
            show(&self.to)
        )
    }
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "–".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn key(k: &str) -> PathSegment {
    PathSegment::Key(k.to_string())
}

fn named(n: &str) -> PathSegment {
    PathSegment::Named {
        name: n.to_string(),
    }
}

/// The fields of a class-based TKG Cluster that shape its machines, the only ones a resize
/// writes (docs/tkg2-class-based.md §2 `controlPlane` and `worker` variables, §3 replicas and
/// the per-MachineDeployment worker overrides): the control plane's replicas, each
/// MachineDeployment's replicas and variable overrides, and the `controlPlane` and `worker`
/// variables.
fn machine_roots() -> [Vec<PathSegment>; 5] {
    let topology = || vec![key("spec"), key("topology")];
    let md = || {
        let mut p = topology();
        p.extend([key("workers"), key("machineDeployments"), named("*")]);
        p
    };
    [
        [topology(), vec![key("controlPlane"), key("replicas")]].concat(),
        [md(), vec![key("replicas")]].concat(),
        [md(), vec![key("variables")]].concat(),
        [topology(), vec![key("variables"), named("controlPlane")]].concat(),
        [topology(), vec![key("variables"), named("worker")]].concat(),
    ]
}

/// Whether every entry of `items` is an object with a string `name` (an associative list).
fn named_list(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|i| i.get("name").and_then(Value::as_str).is_some())
}

/// Every leaf of `v` with its path: scalars, empty objects, and lists (atomic) except lists of
/// named entries, which are walked entry by entry (the `name` itself is not a leaf).
pub fn leaves(v: &Value) -> Vec<(FieldPath, Value)> {
    fn walk(v: &Value, path: &mut Vec<PathSegment>, out: &mut Vec<(FieldPath, Value)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    if k == "name" && matches!(path.last(), Some(PathSegment::Named { .. })) {
                        continue;
                    }
                    path.push(key(k));
                    walk(c, path, out);
                    path.pop();
                }
            }
            Value::Array(items) if named_list(items) => {
                for item in items {
                    let name = item["name"].as_str().unwrap_or_default();
                    path.push(named(name));
                    walk(item, path, out);
                    path.pop();
                }
            }
            _ => out.push((FieldPath(path.clone()), v.clone())),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The value at `path` in `v`, if every step exists.
pub fn get<'a>(v: &'a Value, path: &FieldPath) -> Option<&'a Value> {
    path.0.iter().try_fold(v, |cur, s| match s {
        PathSegment::Key(k) => cur.as_object()?.get(k),
        PathSegment::Named { name } => cur
            .as_array()?
            .iter()
            .find(|i| i.get("name").and_then(Value::as_str) == Some(name)),
    })
}

/// Sets the field `path` of `v` to `to` (removes it when `None`). Missing objects are created;
/// a missing named list entry is copied from the same place in `fallback` (the live object)
/// when it is there, else created as `{"name": …}`, and appended.
pub fn set(v: &mut Value, path: &FieldPath, to: Option<&Value>, fallback: &Value) {
    fn rec(
        v: &mut Value,
        rest: &[PathSegment],
        done: &mut Vec<PathSegment>,
        to: Option<&Value>,
        fallback: &Value,
    ) {
        let Some((first, rest)) = rest.split_first() else {
            return;
        };
        done.push(first.clone());
        match first {
            PathSegment::Key(k) => {
                if !v.is_object() {
                    *v = Value::Object(Map::new());
                }
                let m = v.as_object_mut().expect("made an object");
                if rest.is_empty() {
                    match to {
                        Some(t) => {
                            m.insert(k.clone(), t.clone());
                        }
                        None => {
                            m.remove(k);
                        }
                    }
                } else {
                    let child = m.entry(k.clone()).or_insert(Value::Null);
                    rec(child, rest, done, to, fallback);
                }
            }
            PathSegment::Named { name } => {
                if !v.is_array() {
                    *v = Value::Array(Vec::new());
                }
                let items = v.as_array_mut().expect("made an array");
                let pos = items
                    .iter()
                    .position(|i| i.get("name").and_then(Value::as_str) == Some(name.as_str()));
                if rest.is_empty() {
                    match (pos, to) {
                        (Some(i), Some(t)) => items[i] = t.clone(),
                        (None, Some(t)) => items.push(t.clone()),
                        (Some(i), None) => {
                            items.remove(i);
                        }
                        (None, None) => {}
                    }
                } else {
                    let i = match pos {
                        Some(i) => i,
                        None => {
                            let entry = get(fallback, &FieldPath(done.clone()))
                                .cloned()
                                .unwrap_or_else(|| serde_json::json!({ "name": name }));
                            items.push(entry);
                            items.len() - 1
                        }
                    };
                    rec(&mut items[i], rest, done, to, fallback);
                }
            }
        }
    }
    rec(v, &path.0, &mut Vec::new(), to, fallback);
}

/// The machine fields a resize sets, from the Cluster rendered before the change (`before`)
/// and with the change (`after`): every leaf under the machine roots (the control plane's and
/// each MachineDeployment's replicas, each MachineDeployment's variable overrides, the
/// `controlPlane` and `worker` variables) on either side, with both values, in path order.
/// Fields the change keeps are included (`from == to`): the resize checks them on the live
/// Cluster too.
pub fn machine_fields(before: &Value, after: &Value) -> Vec<ClusterFieldChange> {
    let roots = machine_roots();
    paired_leaves(before, after)
        .into_iter()
        .filter(|f| roots.iter().any(|r| f.path.matches_prefix(r)))
        .collect()
}

/// Every leaf path of `before` or `after` ([`leaves`]), once each in path order, with its
/// value on both sides.
fn paired_leaves(before: &Value, after: &Value) -> Vec<ClusterFieldChange> {
    let mut paths: Vec<FieldPath> = leaves(before)
        .into_iter()
        .chain(leaves(after))
        .map(|(p, _)| p)
        .collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .map(|path| ClusterFieldChange {
            from: get(before, &path).cloned(),
            to: get(after, &path).cloned(),
            path,
        })
        .collect()
}

/// The planned fields whose live value (in `live`) is neither the plan's `from` nor its `to`:
/// the Cluster drifted from what the plan was made against, or the plan was wrong. Each is
/// returned with `from` = the live value and `to` = the plan's `from`.
pub fn unexpected_live(fields: &[ClusterFieldChange], live: &Value) -> Vec<ClusterFieldChange> {
    fields
        .iter()
        .filter_map(|f| {
            let now = get(live, &f.path).cloned();
            (now != f.from && now != f.to).then(|| ClusterFieldChange {
                path: f.path.clone(),
                from: now,
                to: f.from.clone(),
            })
        })
        .collect()
}

/// Every field under `spec` whose value differs between `live` and `dry_run` (the object a
/// server-side dry run returned), with both values, in path order.
pub fn spec_changes(live: &Value, dry_run: &Value) -> Vec<ClusterFieldChange> {
    let spec = |v: &Value| v.get("spec").cloned().unwrap_or(Value::Null);
    paired_leaves(&spec(live), &spec(dry_run))
        .into_iter()
        .filter(ClusterFieldChange::changes)
        .map(|mut c| {
            c.path.0.insert(0, key("spec"));
            c
        })
        .collect()
}

/// The changes between `live` and `dry_run` under `spec` ([`spec_changes`]) that the plan's
/// `fields` do not set to that value: what the write would change beyond the plan.
pub fn unplanned(
    fields: &[ClusterFieldChange],
    live: &Value,
    dry_run: &Value,
) -> Vec<ClusterFieldChange> {
    spec_changes(live, dry_run)
        .into_iter()
        .filter(|c| !fields.iter().any(|f| f.path == c.path && f.to == c.to))
        .collect()
}

/// Whether an upgrade (a new `spec.topology.version`) changes `path` itself, through TKG's
/// webhooks (docs/tkg2-class-based.md §4): the version (which the TKR resolver rewrites to the
/// TKR's Kubernetes version), `spec.paused` (the ClusterBootstrap pause of a TKR change), and
/// the `TKR_DATA` variable and overrides the resolver writes.
pub fn changed_by_upgrade(path: &FieldPath) -> bool {
    let s = |v: &[&str]| -> Vec<PathSegment> { v.iter().map(|k| key(k)).collect() };
    path.0 == s(&["spec", "topology", "version"])
        || path.0 == s(&["spec", "paused"])
        || path
            .0
            .iter()
            .any(|p| matches!(p, PathSegment::Named { name } if name == "TKR_DATA"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(cp_type: &str, replicas: [u64; 2], audit: bool) -> Value {
        json!({
            "metadata": {"name": "c"},
            "spec": {"topology": {
                "version": "v1.25.7+vmware.2",
                "controlPlane": {"replicas": 3},
                "workers": {"machineDeployments": [
                    {"class": "tkg-worker", "name": "md-0", "replicas": replicas[0]},
                    {"class": "tkg-worker", "name": "md-1", "replicas": replicas[1],
                     "variables": {"overrides": [{"name": "worker", "value": {"instanceType": "m5.xlarge"}}]}}
                ]},
                "variables": [
                    {"name": "auditLogging", "value": {"enabled": audit}},
                    {"name": "controlPlane", "value": {"machine": {"instanceType": cp_type}}},
                    {"name": "worker", "value": {"machine": {"instanceType": "m5.xlarge"}}}
                ]
            }}
        })
    }

    #[test]
    fn machine_fields_are_the_machine_leaves_only() {
        let before = cluster("m5.large", [1, 1], false);
        let after = cluster("m5.xlarge", [2, 1], true);
        let fields = machine_fields(&before, &after);
        let changed: Vec<String> = fields
            .iter()
            .filter(|f| f.changes())
            .map(|f| f.to_string())
            .collect();
        assert_eq!(
            changed,
            [
                "spec.topology.variables[controlPlane].value.machine.instanceType: m5.large → m5.xlarge",
                "spec.topology.workers.machineDeployments[md-0].replicas: 1 → 2",
            ]
        );
        // The audit-logging change is not a machine field; kept fields are listed unchanged.
        assert!(fields
            .iter()
            .all(|f| !f.path.to_string().contains("auditLogging")));
        assert!(fields.iter().any(|f| f.path.to_string()
            == "spec.topology.workers.machineDeployments[md-1].variables.overrides[worker].value.instanceType"
            && !f.changes()));
        assert_eq!(fields.len(), 6, "{fields:#?}");
    }

    #[test]
    fn set_and_get_by_name_and_the_checks() {
        let live = cluster("m5.large", [1, 1], false);
        let fields = machine_fields(&live, &cluster("m5.large", [2, 1], false));
        // An apply configuration without the MachineDeployments: the entry comes from live.
        let mut config = json!({"spec": {"topology": {"version": "v1.25.7+vmware.2"}}});
        for f in &fields {
            set(&mut config, &f.path, f.to.as_ref(), &live);
        }
        let md0 = FieldPath(vec![
            key("spec"),
            key("topology"),
            key("workers"),
            key("machineDeployments"),
            named("md-0"),
            key("replicas"),
        ]);
        assert_eq!(get(&config, &md0), Some(&json!(2)));
        assert_eq!(
            config["spec"]["topology"]["workers"]["machineDeployments"][0]["class"],
            "tkg-worker"
        );
        assert!(unexpected_live(&fields, &live).is_empty());
        // Drift: md-1 has 3 replicas live, the plan expects 1.
        let drifted = cluster("m5.large", [1, 3], false);
        let d = unexpected_live(&fields, &drifted);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].to_string(),
            "spec.topology.workers.machineDeployments[md-1].replicas: 3 → 1"
        );
        // The dry run: the planned change passes; anything else is unplanned.
        let dry = cluster("m5.large", [2, 1], false);
        assert!(unplanned(&fields, &live, &dry).is_empty());
        let dry = cluster("m5.large", [2, 1], true);
        let u = unplanned(&fields, &live, &dry);
        assert_eq!(u.len(), 1);
        assert_eq!(
            u[0].to_string(),
            "spec.topology.variables[auditLogging].value.enabled: false → true"
        );
        // Removing a field.
        set(&mut config, &md0, None, &live);
        assert_eq!(get(&config, &md0), None);
    }
}

//! Drift: where the live state of a cluster tkgops deployed differs from what Git says at the
//! commit it deployed (the bot's drift scan, README "Drift").
//!
//! Every function here compares two observations and names each drifted field as the API
//! names it (Cluster API `spec.topology.…`, TMC `spec.clusterGroupName`, `meta.description`,
//! `meta.labels[…]`), with the value Git implies and the live value, rendered as short text.
//!
//! - [`topology_drift`]: the Cluster's managed topology (Kubernetes version, control-plane
//!   and MachineDeployment replicas, worker classes and variable overrides, the topology
//!   variables, which carry the machine types). Its `desired` side is the object a
//!   server-side dry run of the rendered Cluster under tkgops's field manager answers, so a
//!   field only counts when tkgops's apply would change it: fields tkgops does not manage
//!   (a hand-set annotation, the autoscaler's replicas when the request leaves them out) are
//!   identical on both sides.
//! - [`tmc_drift`]: the TMC cluster's group, description and the labels tkgops manages.
//! - [`package_drift`]: each PackageInstall the request declares: present, its version
//!   (`spec.packageRef.versionSelection.constraints`, as tkgops sets it), and the values Secret
//!   tkgops renders, compared by digest only ([`values_digest`]): values may hold secrets and
//!   never reach a report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest a rendered value gets in a drift report (characters); longer values end in `…`.
pub const MAX_VALUE_CHARS: usize = 120;

/// What a value is shown as when the field does not exist on that side.
pub const ABSENT: &str = "(absent)";

/// One drifted field of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DriftField {
    /// The field as the API names it, e.g. `spec.topology.workers.machineDeployments[md-0].replicas`
    /// (list items named by their `name` key, the list-map key Cluster API declares).
    pub field: String,
    /// The value Git implies (what tkgops's apply would leave), as text ([`render_value`]).
    pub git: String,
    /// The live value, as text ([`render_value`]); [`ABSENT`] when the field is not set.
    pub live: String,
}

impl DriftField {
    fn new(field: impl Into<String>, git: Option<&Value>, live: Option<&Value>) -> DriftField {
        DriftField {
            field: field.into(),
            git: git.map_or_else(|| ABSENT.to_string(), render_value),
            live: live.map_or_else(|| ABSENT.to_string(), render_value),
        }
    }
}

/// `v` as short text: strings without quotes, anything else as compact JSON, cut to
/// [`MAX_VALUE_CHARS`] characters.
pub fn render_value(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > MAX_VALUE_CHARS {
        let cut: String = s.chars().take(MAX_VALUE_CHARS).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// The items of the list at `list` keyed by their `name` (Cluster API's list-map key of
/// `machineDeployments`, `variables` and `overrides`); items without a name are skipped.
fn by_name(list: Option<&Value>) -> BTreeMap<String, &Value> {
    list.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| Some((i.get("name")?.as_str()?.to_string(), i)))
                .collect()
        })
        .unwrap_or_default()
}

/// The value at JSON pointer `p` below `v`.
fn at<'v>(v: Option<&'v Value>, p: &str) -> Option<&'v Value> {
    v.and_then(|t| t.pointer(p))
}

/// Pushes a [`DriftField`] for `field` when `git` and `live` differ.
fn compare(out: &mut Vec<DriftField>, field: String, git: Option<&Value>, live: Option<&Value>) {
    if git != live {
        out.push(DriftField::new(field, git, live));
    }
}

/// Compares the list-map at `key` of `git` and `live` item by item (by `name`), each item's
/// `value_key` (or the whole item when `None`).
fn compare_named(
    out: &mut Vec<DriftField>,
    prefix: &str,
    git: Option<&Value>,
    live: Option<&Value>,
    value_key: &str,
) {
    let (g, l) = (by_name(git), by_name(live));
    let mut names: Vec<&String> = g.keys().chain(l.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        compare(
            out,
            format!("{prefix}[{name}]"),
            g.get(name).and_then(|i| i.get(value_key)),
            l.get(name).and_then(|i| i.get(value_key)),
        );
    }
}

/// The drifted fields of a class-based Cluster's `spec.topology` (Cluster API v1beta1): `desired`
/// is the Cluster as tkgops's server-side apply would leave it (the answer of a `dryRun=All`
/// apply of the rendered Cluster under tkgops's field manager), `live` the Cluster as stored.
///
/// Compared: `version`, `controlPlane.replicas`, every `workers.machineDeployments[]` (by
/// `name`: presence, `class`, `replicas`, `variables.overrides[]` by name) and every
/// `variables[]` by name (`value`; the TKG ClusterClass's `controlPlane` and `worker` variables
/// hold the machine types). Returns the fields in that order; empty when none differ.
pub fn topology_drift(desired: &Value, live: &Value) -> Vec<DriftField> {
    let mut out = Vec::new();
    let (d, l) = (
        desired.pointer("/spec/topology"),
        live.pointer("/spec/topology"),
    );
    const T: &str = "spec.topology";
    compare(
        &mut out,
        format!("{T}.version"),
        at(d, "/version"),
        at(l, "/version"),
    );
    compare(
        &mut out,
        format!("{T}.controlPlane.replicas"),
        at(d, "/controlPlane/replicas"),
        at(l, "/controlPlane/replicas"),
    );
    let (dm, lm) = (
        by_name(at(d, "/workers/machineDeployments")),
        by_name(at(l, "/workers/machineDeployments")),
    );
    let mut names: Vec<&String> = dm.keys().chain(lm.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let md = format!("{T}.workers.machineDeployments[{name}]");
        match (dm.get(name), lm.get(name)) {
            (Some(g), Some(v)) => {
                for key in ["class", "replicas"] {
                    compare(&mut out, format!("{md}.{key}"), g.get(key), v.get(key));
                }
                compare_named(
                    &mut out,
                    &format!("{md}.variables.overrides"),
                    g.pointer("/variables/overrides"),
                    v.pointer("/variables/overrides"),
                    "value",
                );
            }
            (g, v) => out.push(DriftField {
                field: md,
                git: if g.is_some() { "present" } else { ABSENT }.into(),
                live: if v.is_some() { "present" } else { ABSENT }.into(),
            }),
        }
    }
    compare_named(
        &mut out,
        &format!("{T}.variables"),
        at(d, "/variables"),
        at(l, "/variables"),
        "value",
    );
    out
}

/// The TMC cluster as tkgops wants it (from the request's `tmc` settings and labels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TmcWanted<'a> {
    /// `spec.clusterGroupName`.
    pub cluster_group: &'a str,
    /// `meta.description`.
    pub description: &'a str,
    /// `meta.labels` tkgops sets: the request's labels and the ownership label.
    pub labels: &'a BTreeMap<String, String>,
}

/// The TMC cluster as TMC answers a `GET` of it (`v1alpha1/clusters/{name}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TmcLive<'a> {
    /// `spec.clusterGroupName`; `None` is TMC's default group `default`.
    pub cluster_group: Option<&'a str>,
    /// `meta.description`.
    pub description: Option<&'a str>,
    /// `meta.labels`, TMC's own `tmc.cloud.vmware.com/…` labels included.
    pub labels: &'a BTreeMap<String, String>,
}

/// The prefix of the labels TMC sets itself (not tkgops's to manage; docs/tanzu-apis.md §3.2).
pub const TMC_OWN_LABEL_PREFIX: &str = "tmc.cloud.vmware.com/";

/// The drifted fields of a TMC cluster: `spec.clusterGroupName` (an absent group is TMC's
/// `default`), `meta.description`, and every `meta.labels[key]` that tkgops sets or that is
/// live but neither tkgops's nor TMC's own (a label added by hand is drift too: tkgops's
/// update replaces the user labels, as the `tmc.attach` step's converge does).
pub fn tmc_drift(wanted: &TmcWanted<'_>, live: &TmcLive<'_>) -> Vec<DriftField> {
    let mut out = Vec::new();
    let group = live.cluster_group.unwrap_or("default");
    if group != wanted.cluster_group {
        out.push(DriftField {
            field: "spec.clusterGroupName".into(),
            git: wanted.cluster_group.into(),
            live: group.into(),
        });
    }
    if live.description.unwrap_or("") != wanted.description {
        out.push(DriftField {
            field: "meta.description".into(),
            git: wanted.description.into(),
            live: live.description.unwrap_or(ABSENT).into(),
        });
    }
    let user: BTreeMap<&String, &String> = live
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with(TMC_OWN_LABEL_PREFIX))
        .collect();
    let mut keys: Vec<&String> = wanted.labels.keys().chain(user.keys().copied()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (g, l) = (wanted.labels.get(k), user.get(k).copied());
        if g != l {
            out.push(DriftField {
                field: format!("meta.labels[{k}]"),
                git: g.cloned().unwrap_or_else(|| ABSENT.into()),
                live: l.cloned().unwrap_or_else(|| ABSENT.into()),
            });
        }
    }
    out
}

/// A package as Git wants it on the workload cluster (the request's resolved packages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageWanted<'a> {
    /// PackageInstall `metadata.name`.
    pub name: &'a str,
    /// PackageInstall namespace.
    pub namespace: &'a str,
    /// `spec.packageRef.versionSelection.constraints` (the exact version tkgops sets).
    pub version: &'a str,
    /// The values file tkgops renders into the `<name>-<namespace>-values` Secret; `""`: no
    /// values (tkgops writes no Secret, so none is compared).
    pub values_yaml: &'a str,
}

/// A package as the workload cluster has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackageLive {
    /// The PackageInstall's `spec.packageRef.versionSelection.constraints`; `None` when the
    /// PackageInstall does not exist.
    pub version: Option<String>,
    /// Whether the PackageInstall exists.
    pub present: bool,
    /// The digest ([`values_digest`]) of the `values.yaml` key of the values Secret; `None`
    /// when the Secret or the key does not exist.
    pub values_digest: Option<String>,
}

/// How many hexadecimal digits of a SHA-256 a drift report shows.
pub const DIGEST_CHARS: usize = 12;

/// The digest a drift report shows for values `bytes`: `sha256:` and the first
/// [`DIGEST_CHARS`] hexadecimal digits of their SHA-256 (never the values themselves).
pub fn values_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hex = format!("{:x}", Sha256::digest(bytes));
    format!("sha256:{}", &hex[..DIGEST_CHARS])
}

/// The drifted fields of one package: `PackageInstall[<ns>/<name>]` when it is missing (all a
/// missing one reports), else its `….spec.packageRef.versionSelection.constraints` and, when
/// Git renders values, `….values` (the values Secret's `values.yaml`, as [`values_digest`]s).
pub fn package_drift(wanted: &PackageWanted<'_>, live: &PackageLive) -> Vec<DriftField> {
    let pkgi = format!("PackageInstall[{}/{}]", wanted.namespace, wanted.name);
    if !live.present {
        return vec![DriftField {
            field: pkgi,
            git: "present".into(),
            live: ABSENT.into(),
        }];
    }
    let mut out = Vec::new();
    let version = live.version.as_deref().unwrap_or(ABSENT);
    if version != wanted.version {
        out.push(DriftField {
            field: format!("{pkgi}.spec.packageRef.versionSelection.constraints"),
            git: wanted.version.into(),
            live: version.into(),
        });
    }
    if !wanted.values_yaml.trim().is_empty() {
        let git = values_digest(wanted.values_yaml.as_bytes());
        let live = live.values_digest.as_deref().unwrap_or(ABSENT);
        if live != git {
            out.push(DriftField {
                field: format!("{pkgi}.values"),
                git,
                live: live.into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(version: &str, md0: i64, worker_type: &str) -> Value {
        json!({"spec": {"topology": {
            "class": "tkg-aws-default-v1.1.0",
            "version": version,
            "controlPlane": {"replicas": 3},
            "workers": {"machineDeployments": [
                {"class": "tkg-worker", "name": "md-0", "replicas": md0},
                {"class": "tkg-worker", "name": "md-1", "replicas": 2,
                 "variables": {"overrides": [{"name": "worker", "value": {"instanceType": "m5.xlarge"}}]}},
            ]},
            "variables": [
                {"name": "worker", "value": {"instanceType": worker_type}},
                {"name": "sshKeyName", "value": "default"},
            ],
        }}})
    }

    #[test]
    fn identical_topologies_have_no_drift() {
        let c = cluster("v1.31.1+vmware.2-tkg.1", 3, "m5.large");
        assert_eq!(topology_drift(&c, &c), vec![]);
    }

    #[test]
    fn a_hand_scaled_machine_deployment_is_named_by_its_name() {
        let git = cluster("v1.31.1+vmware.2-tkg.1", 3, "m5.large");
        let live = cluster("v1.31.1+vmware.2-tkg.1", 5, "m5.large");
        assert_eq!(
            topology_drift(&git, &live),
            vec![DriftField {
                field: "spec.topology.workers.machineDeployments[md-0].replicas".into(),
                git: "3".into(),
                live: "5".into(),
            }]
        );
    }

    #[test]
    fn version_machine_type_and_missing_items_are_drift() {
        let git = cluster("v1.31.1+vmware.2-tkg.1", 3, "m5.large");
        let mut live = cluster("v1.30.2+vmware.1-tkg.1", 3, "m5.2xlarge");
        live["spec"]["topology"]["workers"]["machineDeployments"]
            .as_array_mut()
            .unwrap()
            .remove(1);
        let fields: Vec<String> = topology_drift(&git, &live)
            .into_iter()
            .map(|f| format!("{}: {} -> {}", f.field, f.git, f.live))
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.topology.version: v1.31.1+vmware.2-tkg.1 -> v1.30.2+vmware.1-tkg.1",
                "spec.topology.workers.machineDeployments[md-1]: present -> (absent)",
                "spec.topology.variables[worker]: {\"instanceType\":\"m5.large\"} -> {\"instanceType\":\"m5.2xlarge\"}",
            ]
        );
    }

    #[test]
    fn fields_outside_the_topology_are_not_compared() {
        let git = cluster("v1", 3, "m5.large");
        let mut live = git.clone();
        live["metadata"] = json!({"annotations": {"hand": "made"}});
        live["spec"]["paused"] = json!(true);
        assert!(topology_drift(&git, &live).is_empty());
    }

    #[test]
    fn long_values_are_cut() {
        let v = Value::String("x".repeat(500));
        let r = render_value(&v);
        assert_eq!(r.chars().count(), MAX_VALUE_CHARS + 1);
        assert!(r.ends_with('…'));
    }

    #[test]
    fn tmc_group_description_and_labels() {
        let wanted_labels = BTreeMap::from([
            ("team".to_string(), "a".to_string()),
            ("tkgops.dev/owner".to_string(), "o".to_string()),
        ]);
        let wanted = TmcWanted {
            cluster_group: "team-a",
            description: "managed by tkgops",
            labels: &wanted_labels,
        };
        let mut live_labels = wanted_labels.clone();
        live_labels.insert("tmc.cloud.vmware.com/creator".into(), "x".into());
        let live = TmcLive {
            cluster_group: Some("team-a"),
            description: Some("managed by tkgops"),
            labels: &live_labels,
        };
        assert!(
            tmc_drift(&wanted, &live).is_empty(),
            "TMC's own labels are not drift"
        );

        live_labels.insert("hand".into(), "made".into());
        live_labels.remove("team");
        let live = TmcLive {
            cluster_group: None,
            description: None,
            labels: &live_labels,
        };
        let fields: Vec<String> = tmc_drift(&wanted, &live)
            .into_iter()
            .map(|f| format!("{}: {} -> {}", f.field, f.git, f.live))
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.clusterGroupName: team-a -> default",
                "meta.description: managed by tkgops -> (absent)",
                "meta.labels[hand]: (absent) -> made",
                "meta.labels[team]: a -> (absent)",
            ]
        );
    }

    #[test]
    fn packages_are_compared_by_presence_version_and_values_digest() {
        let values = "secret_password: hunter2\n";
        let wanted = PackageWanted {
            name: "contour",
            namespace: "tanzu-packages",
            version: "1.20.2+vmware.2-tkg.1",
            values_yaml: values,
        };
        let same = PackageLive {
            present: true,
            version: Some(wanted.version.into()),
            values_digest: Some(values_digest(values.as_bytes())),
        };
        assert!(package_drift(&wanted, &same).is_empty());
        let missing = package_drift(&wanted, &PackageLive::default());
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].field, "PackageInstall[tanzu-packages/contour]");
        let changed = PackageLive {
            present: true,
            version: Some("1.18.0".into()),
            values_digest: Some(values_digest(b"other")),
        };
        let fields = package_drift(&wanted, &changed);
        let text = format!("{fields:?}");
        assert_eq!(fields.len(), 2, "{text}");
        assert_eq!(
            fields[0].field,
            "PackageInstall[tanzu-packages/contour].spec.packageRef.versionSelection.constraints"
        );
        assert!(fields[1].git.starts_with("sha256:") && fields[1].git.len() == 7 + DIGEST_CHARS);
        assert!(
            !text.contains("hunter2"),
            "values never reach a report: {text}"
        );
    }
}

//! What the waits read of a watched object, and nothing more.
//!
//! The providers' shared watches hold every object of a resource type on a management cluster
//! (a fleet of a thousand clusters: about 11,000 Cluster API objects) for the provider's life.
//! Most of an object is never read by a judge of this module's parent: `metadata.managedFields`
//! (a third to a half of an object), annotations, a KubeadmControlPlane's `kubeadmConfigSpec`,
//! a Cluster's topology variables, a MachineDeployment's Machine template. [`retain_read`]
//! keeps what the judges read, so the watches hold only that:
//!
//! - `apiVersion`, `kind`, the whole `status`;
//! - of `metadata`: [`METADATA_READ`];
//! - of `spec`: for the kinds in [`SPEC_READ`], the listed paths; of any other kind (a
//!   PackageInstall, a PackageRepository, …), all of it.
//!
//! A judge that starts reading another field adds it here; the tests of this module pin every
//! path the judges read.

use serde_json::{Map, Value};

/// The `metadata` fields the waits read (or the index keys objects by): everything else
/// (`managedFields`, `annotations`, `finalizers`, `creationTimestamp`, …) is dropped.
pub const METADATA_READ: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "labels",
    "resourceVersion",
    "generation",
    "ownerReferences",
    "deletionTimestamp",
];

/// The `spec` paths the waits read, by kind (path segments below `spec`; `*` is every element
/// of an array). A kind not listed keeps its whole `spec`.
pub const SPEC_READ: &[(&str, &[&[&str]])] = &[
    (
        // ClusterReady, ControlPlaneRolled, MachineDeploymentsRolled: whether the Cluster is
        // class-based, its version and its topology's MachineDeployments.
        "Cluster",
        &[
            &["paused"],
            &["topology", "class"],
            &["topology", "version"],
            &["topology", "workers", "machineDeployments", "*", "name"],
            &["topology", "workers", "machineDeployments", "*", "class"],
            &["topology", "workers", "machineDeployments", "*", "replicas"],
        ],
    ),
    (
        // ... and the machine template whose shape the rollout waits check once rolled.
        "KubeadmControlPlane",
        &[
            &["replicas"],
            &["version"],
            &["machineTemplate", "infrastructureRef", "name"],
        ],
    ),
    (
        "MachineDeployment",
        &[
            &["replicas"],
            &["clusterName"],
            &["template", "spec", "version"],
            &["template", "spec", "infrastructureRef", "name"],
        ],
    ),
    ("Machine", &[&["clusterName"], &["version"]]),
    (
        // core_packages: each core package's refName and valuesFrom.
        "ClusterBootstrap",
        &[&["kapp"], &["cni"], &["csi"], &["cpi"]],
    ),
];

/// The `status` fields no wait reads, by kind (dropped; the rest of `status` is kept).
pub const STATUS_UNREAD: &[(&str, &[&str])] = &[("Machine", &["addresses", "nodeInfo"])];

/// Reduces `obj`, an object of kind `kind` as the API server returns it, to what the waits
/// read (module docs). An object that is not a JSON object is left as it is.
pub fn retain_read(kind: &str, obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    o.retain(|k, _| {
        matches!(
            k.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        )
    });
    if let Some(Value::Object(md)) = o.get_mut("metadata") {
        md.retain(|k, _| METADATA_READ.contains(&k.as_str()));
    }
    if let Some((_, paths)) = SPEC_READ.iter().find(|(k, _)| *k == kind) {
        if let Some(spec) = o.remove("spec") {
            let mut kept = Value::Object(Map::new());
            for path in *paths {
                copy_path(&spec, &mut kept, path);
            }
            o.insert("spec".into(), kept);
        }
    }
    if let Some((_, unread)) = STATUS_UNREAD.iter().find(|(k, _)| *k == kind) {
        if let Some(Value::Object(status)) = o.get_mut("status") {
            status.retain(|k, _| !unread.contains(&k.as_str()));
        }
    }
}

/// Copies what `from` holds at `path` into `to`, creating the objects on the way; returns
/// whether `from` has `path`. `*` walks every element of an array: the array is kept with all
/// its elements (an element without the rest of the path kept as `{}`), so its length stays.
fn copy_path(from: &Value, to: &mut Value, path: &[&str]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        *to = from.clone();
        return true;
    };
    match (*first, from) {
        ("*", Value::Array(items)) => {
            let mut out = match to.take() {
                Value::Array(a) if a.len() == items.len() => a,
                _ => vec![Value::Object(Map::new()); items.len()],
            };
            for (item, slot) in items.iter().zip(out.iter_mut()) {
                copy_path(item, slot, rest);
            }
            *to = Value::Array(out);
            true
        }
        (key, Value::Object(m)) => {
            let Some(next) = m.get(key) else {
                return false;
            };
            let mut slot = to
                .as_object_mut()
                .and_then(|o| o.remove(key))
                .unwrap_or(Value::Null);
            let had = !slot.is_null();
            let copied = copy_path(next, &mut slot, rest);
            if copied || had {
                if !to.is_object() {
                    *to = Value::Object(Map::new());
                }
                if let Value::Object(out) = to {
                    out.insert(key.to_string(), slot);
                }
            }
            copied
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(name: &str) -> Value {
        json!({"name": name, "namespace": "default", "uid": "u-1", "resourceVersion": "7",
               "generation": 3, "labels": {"cluster.x-k8s.io/cluster-name": "wc1"},
               "ownerReferences": [{"kind": "Cluster", "name": "wc1"}],
               "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{…}"},
               "managedFields": [{"manager": "capi", "fieldsV1": {"f:spec": {}}}],
               "finalizers": ["cluster.cluster.x-k8s.io"],
               "creationTimestamp": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn a_cluster_keeps_its_metadata_status_and_topology_shape_only() {
        let mut c = json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "metadata": meta("wc1"),
            "spec": {"clusterNetwork": {"pods": {"cidrBlocks": ["100.96.0.0/11"]}},
                     "topology": {"class": "tkg-aws-default-v1.1.0", "version": "v1.25.7+vmware.2-tkg.1",
                                  "variables": [{"name": "network", "value": {"ipv6Primary": false}}],
                                  "controlPlane": {"replicas": 3},
                                  "workers": {"machineDeployments": [
                                      {"name": "md-0", "class": "tkg-worker", "replicas": 2,
                                       "variables": {"overrides": [{"name": "x", "value": 1}]}},
                                      {"name": "md-1", "class": "tkg-worker"}]}}},
            "status": {"phase": "Provisioned", "conditions": [{"type": "Ready", "status": "True"}],
                       "controlPlaneReady": true}});
        let status = c["status"].clone();
        retain_read("Cluster", &mut c);
        assert_eq!(
            c["spec"],
            json!({"topology": {"class": "tkg-aws-default-v1.1.0", "version": "v1.25.7+vmware.2-tkg.1",
                                "workers": {"machineDeployments": [
                                    {"name": "md-0", "class": "tkg-worker", "replicas": 2},
                                    {"name": "md-1", "class": "tkg-worker"}]}}})
        );
        assert_eq!(c["status"], status);
        assert_eq!(
            c["metadata"],
            json!({"name": "wc1", "namespace": "default", "uid": "u-1", "resourceVersion": "7",
                   "generation": 3, "labels": {"cluster.x-k8s.io/cluster-name": "wc1"},
                   "ownerReferences": [{"kind": "Cluster", "name": "wc1"}]})
        );
        assert_eq!(c["kind"], "Cluster");
    }

    #[test]
    fn rolling_objects_keep_the_replicas_and_versions_the_judges_read() {
        let mut kcp = json!({"kind": "KubeadmControlPlane", "metadata": meta("wc1-cp"),
            "spec": {"replicas": 3, "version": "v1.25.7+vmware.2",
                     "kubeadmConfigSpec": {"files": [{"path": "/etc/x", "content": "…"}]},
                     "machineTemplate": {"infrastructureRef": {"name": "t"}}},
            "status": {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
                       "version": "v1.25.7+vmware.2", "observedGeneration": 3}});
        retain_read("KubeadmControlPlane", &mut kcp);
        assert_eq!(
            kcp["spec"],
            json!({"replicas": 3, "version": "v1.25.7+vmware.2",
                   "machineTemplate": {"infrastructureRef": {"name": "t"}}})
        );
        assert_eq!(kcp["status"]["observedGeneration"], 3);

        let mut md = json!({"kind": "MachineDeployment", "metadata": meta("wc1-md-0"),
            "spec": {"replicas": 2, "clusterName": "wc1", "selector": {"matchLabels": {}},
                     "template": {"metadata": {"labels": {}},
                                  "spec": {"version": "v1.25.7+vmware.2", "bootstrap": {},
                                           "infrastructureRef": {"kind": "AWSMachineTemplate", "name": "t"}}}},
            "status": {"replicas": 2}});
        retain_read("MachineDeployment", &mut md);
        assert_eq!(
            md["spec"],
            json!({"replicas": 2, "clusterName": "wc1",
                   "template": {"spec": {"version": "v1.25.7+vmware.2",
                                         "infrastructureRef": {"name": "t"}}}})
        );

        let mut m = json!({"kind": "Machine", "metadata": meta("wc1-md-0-x"),
            "spec": {"clusterName": "wc1", "version": "v1.25.7+vmware.2",
                     "bootstrap": {"dataSecretName": "s"}, "infrastructureRef": {"name": "i"},
                     "providerID": "aws:///us-west-2a/i-1"},
            "status": {"phase": "Running", "nodeRef": {"name": "ip-10-0-0-1"},
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                       "nodeInfo": {"kubeletVersion": "v1.25.7"},
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        retain_read("Machine", &mut m);
        assert_eq!(
            m["spec"],
            json!({"clusterName": "wc1", "version": "v1.25.7+vmware.2"})
        );
        assert_eq!(
            m["status"],
            json!({"phase": "Running", "nodeRef": {"name": "ip-10-0-0-1"},
                   "conditions": [{"type": "Ready", "status": "True"}]})
        );
    }

    #[test]
    fn a_bootstrap_keeps_its_core_packages_and_other_kinds_their_whole_spec() {
        let entry = json!({"refName": "antrea.tanzu.vmware.com.1.9.0",
                           "valuesFrom": {"providerRef": {"kind": "AntreaConfig", "name": "wc1"}}});
        let mut cb = json!({"kind": "ClusterBootstrap", "metadata": meta("wc1"),
            "spec": {"cni": entry, "kapp": entry, "additionalPackages": [{"refName": "x"}],
                     "paused": false}});
        retain_read("ClusterBootstrap", &mut cb);
        assert_eq!(cb["spec"], json!({"cni": entry, "kapp": entry}));
        let spec = json!({"packageRef": {"refName": "contour.tanzu.vmware.com",
                          "versionSelection": {"constraints": "1.23.5"}},
                          "serviceAccountName": "sa", "values": [{"secretRef": {"name": "v"}}]});
        let mut pkgi = json!({"kind": "PackageInstall", "metadata": meta("contour"),
                              "spec": spec, "status": {"usefulErrorMessage": "…"}});
        retain_read("PackageInstall", &mut pkgi);
        assert_eq!(pkgi["spec"], spec);
        assert_eq!(pkgi["status"]["usefulErrorMessage"], "…");
        assert!(pkgi["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn a_missing_spec_stays_missing_and_a_non_object_is_left_alone() {
        let mut c = json!({"kind": "Cluster", "metadata": meta("wc1")});
        retain_read("Cluster", &mut c);
        assert!(c.get("spec").is_none());
        let mut md = json!({"kind": "MachineDeployment", "metadata": meta("wc1-md-0"),
                            "spec": {"template": {"spec": {"bootstrap": {}}}}});
        retain_read("MachineDeployment", &mut md);
        assert_eq!(md["spec"], json!({}));
        let mut s = json!("text");
        retain_read("Cluster", &mut s);
        assert_eq!(s, "text");
    }
}

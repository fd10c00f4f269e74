//! Small helpers shared by the simulated controllers: resource coordinates, JSON accessors,
//! condition bookkeeping and deterministic names.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::super::{EmulatedCluster, Gvr};

/// `cluster.x-k8s.io/v1beta1` Cluster.
pub(crate) fn gvr_cluster() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters")
}
/// `cluster.x-k8s.io/v1beta1` ClusterClass.
pub(crate) fn gvr_cluster_class() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "clusterclasses")
}
/// `cluster.x-k8s.io/v1beta1` MachineDeployment.
pub(crate) fn gvr_machine_deployment() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "machinedeployments")
}
/// `cluster.x-k8s.io/v1beta1` Machine.
pub(crate) fn gvr_machine() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "machines")
}
/// `cluster.x-k8s.io/v1beta1` MachineHealthCheck.
pub(crate) fn gvr_machine_health_check() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "machinehealthchecks")
}
/// `controlplane.cluster.x-k8s.io/v1beta1` KubeadmControlPlane.
pub(crate) fn gvr_kcp() -> Gvr {
    Gvr::new(
        "controlplane.cluster.x-k8s.io",
        "v1beta1",
        "kubeadmcontrolplanes",
    )
}
/// `infrastructure.cluster.x-k8s.io/v1beta1` AWSMachineTemplate.
pub(crate) fn gvr_aws_machine_template() -> Gvr {
    Gvr::new(
        "infrastructure.cluster.x-k8s.io",
        "v1beta1",
        "awsmachinetemplates",
    )
}
/// `infrastructure.cluster.x-k8s.io/v1beta1` AWSCluster.
pub(crate) fn gvr_aws_cluster() -> Gvr {
    Gvr::new("infrastructure.cluster.x-k8s.io", "v1beta1", "awsclusters")
}
/// `run.tanzu.vmware.com/v1alpha3` TanzuKubernetesRelease.
pub(crate) fn gvr_tkr() -> Gvr {
    Gvr::new(
        "run.tanzu.vmware.com",
        "v1alpha3",
        "tanzukubernetesreleases",
    )
}
/// `run.tanzu.vmware.com/v1alpha3` OSImage (cluster-scoped).
pub(crate) fn gvr_osimage() -> Gvr {
    Gvr::new("run.tanzu.vmware.com", "v1alpha3", "osimages")
}
/// `run.tanzu.vmware.com/v1alpha3` ClusterBootstrap.
pub(crate) fn gvr_cluster_bootstrap() -> Gvr {
    Gvr::new("run.tanzu.vmware.com", "v1alpha3", "clusterbootstraps")
}
/// Core v1 Secret.
pub(crate) fn gvr_secret() -> Gvr {
    Gvr::new("", "v1", "secrets")
}
/// Core v1 ConfigMap.
pub(crate) fn gvr_config_map() -> Gvr {
    Gvr::new("", "v1", "configmaps")
}
/// Core v1 ServiceAccount.
pub(crate) fn gvr_service_account() -> Gvr {
    Gvr::new("", "v1", "serviceaccounts")
}
/// Core v1 Namespace.
pub(crate) fn gvr_namespace() -> Gvr {
    Gvr::new("", "v1", "namespaces")
}
/// Core v1 Node.
pub(crate) fn gvr_node() -> Gvr {
    Gvr::new("", "v1", "nodes")
}
/// `packaging.carvel.dev/v1alpha1` PackageRepository.
pub(crate) fn gvr_package_repository() -> Gvr {
    Gvr::new("packaging.carvel.dev", "v1alpha1", "packagerepositories")
}
/// `packaging.carvel.dev/v1alpha1` PackageInstall.
pub(crate) fn gvr_package_install() -> Gvr {
    Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls")
}
/// `data.packaging.carvel.dev/v1alpha1` Package.
pub(crate) fn gvr_package() -> Gvr {
    Gvr::new("data.packaging.carvel.dev", "v1alpha1", "packages")
}
/// `data.packaging.carvel.dev/v1alpha1` PackageMetadata.
pub(crate) fn gvr_package_metadata() -> Gvr {
    Gvr::new("data.packaging.carvel.dev", "v1alpha1", "packagemetadatas")
}

/// Whether two resource coordinates name the same resource (group, version and plural).
pub(crate) fn same_gvr(a: &Gvr, b: &Gvr) -> bool {
    a.group == b.group && a.version == b.version && a.plural == b.plural
}

/// `metadata.name`, or `None` when missing.
pub(crate) fn name_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/name").and_then(Value::as_str)
}
/// `metadata.namespace`, or `None` for cluster-scoped objects.
pub(crate) fn namespace_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}
/// `metadata.uid`, or an empty string.
pub(crate) fn uid_of(obj: &Value) -> &str {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}
/// `metadata.generation` (1 when absent, as for a freshly created object).
pub(crate) fn generation_of(obj: &Value) -> i64 {
    obj.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}
/// `status.observedGeneration`, if any.
pub(crate) fn observed_generation_of(obj: &Value) -> Option<i64> {
    obj.pointer("/status/observedGeneration")
        .and_then(Value::as_i64)
}
/// A label value.
pub(crate) fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
}
/// An annotation value.
pub(crate) fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
}
/// A string at a JSON pointer.
pub(crate) fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}
/// An integer at a JSON pointer (also accepts integral floats and numeric strings).
pub(crate) fn i64_at(obj: &Value, pointer: &str) -> Option<i64> {
    match obj.pointer(pointer)? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
/// The `status` object, or an empty object.
pub(crate) fn status_of(obj: &Value) -> Map<String, Value> {
    obj.get("status")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Current time as RFC 3339 with second precision, as Kubernetes serialises `metav1.Time`.
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The alphabet of Kubernetes' `SimpleNameGenerator` (no vowels, no confusable digits).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A deterministic 5-character suffix derived from `seed`, in the alphabet real generated names use.
pub(crate) fn suffix5(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    digest
        .iter()
        .take(5)
        .map(|b| NAME_ALPHABET[(*b as usize) % NAME_ALPHABET.len()] as char)
        .collect()
}

/// A deterministic decimal string of `len` digits derived from `seed`.
pub(crate) fn digits(seed: &str, len: usize) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    digest
        .iter()
        .cycle()
        .take(len)
        .map(|b| char::from(b'0' + b % 10))
        .collect()
}

/// A Cluster API condition (`api/v1beta1/condition_types.go`). Empty severity, reason and message
/// are omitted, as with the real `omitempty` JSON tags.
pub(crate) fn capi_condition(
    type_: &str,
    status: &str,
    severity: &str,
    reason: &str,
    message: &str,
) -> Value {
    let mut c = Map::new();
    c.insert("type".into(), json!(type_));
    c.insert("status".into(), json!(status));
    if !severity.is_empty() {
        c.insert("severity".into(), json!(severity));
    }
    if !reason.is_empty() {
        c.insert("reason".into(), json!(reason));
    }
    if !message.is_empty() {
        c.insert("message".into(), json!(message));
    }
    c.insert("lastTransitionTime".into(), json!(now_rfc3339()));
    Value::Object(c)
}

/// A `True` Cluster API condition.
pub(crate) fn cond_true(type_: &str) -> Value {
    capi_condition(type_, "True", "", "", "")
}

/// A `False` Cluster API condition.
pub(crate) fn cond_false(type_: &str, severity: &str, reason: &str, message: &str) -> Value {
    capi_condition(type_, "False", severity, reason, message)
}

/// Sets (adds or replaces) a condition in a `status.conditions` list.
///
/// Like `conditions.Set` in Cluster API: `lastTransitionTime` is kept when the status does not change,
/// and the list is kept sorted with `Ready` first, then alphabetically by type.
pub(crate) fn set_condition(status: &mut Map<String, Value>, mut cond: Value) {
    let type_ = cond
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut list: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(existing) = list
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_.as_str()))
    {
        if existing.get("status") == cond.get("status") {
            if let (Some(old), Some(obj)) = (
                existing.get("lastTransitionTime").cloned(),
                cond.as_object_mut(),
            ) {
                obj.insert("lastTransitionTime".into(), old);
            }
        }
        *existing = cond;
    } else {
        list.push(cond);
    }
    list.sort_by(|a, b| {
        let ta = a.get("type").and_then(Value::as_str).unwrap_or("");
        let tb = b.get("type").and_then(Value::as_str).unwrap_or("");
        (ta != "Ready", ta).cmp(&(tb != "Ready", tb))
    });
    status.insert("conditions".into(), Value::Array(list));
}

/// The condition of `type_` in an object's `status.conditions`, if any.
pub(crate) fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

/// Whether the condition `type_` exists with `status: "True"`.
pub(crate) fn condition_true(obj: &Value, type_: &str) -> bool {
    condition(obj, type_)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

/// Writes `status` unless it equals the object's current status (avoids needless writes and events).
/// Returns the stored object after the write, or the unchanged object.
pub(crate) fn write_status(
    cluster: &EmulatedCluster,
    gvr: &Gvr,
    obj: &Value,
    status: Map<String, Value>,
) -> Result<Value, super::super::KubeEmulatorError> {
    let status = Value::Object(status);
    if obj.get("status") == Some(&status) {
        return Ok(obj.clone());
    }
    let name = name_of(obj).unwrap_or_default();
    cluster.update_status(gvr, namespace_of(obj), name, status)
}

/// Creates `obj` unless an object with its name already exists; returns the stored object.
///
/// The emulator's error variants are not inspected: when the create fails, a second `get` decides
/// whether the object exists after all (created concurrently) or the error is real.
pub(crate) fn create_if_absent(
    cluster: &EmulatedCluster,
    gvr: &Gvr,
    obj: Value,
) -> Result<Value, super::super::KubeEmulatorError> {
    let name = name_of(&obj).unwrap_or_default().to_string();
    let ns = namespace_of(&obj).map(str::to_string);
    if let Some(existing) = cluster.get(gvr, ns.as_deref(), &name) {
        return Ok(existing);
    }
    match cluster.create(gvr, obj) {
        Ok(created) => Ok(created),
        Err(err) => cluster.get(gvr, ns.as_deref(), &name).ok_or(err),
    }
}

/// Ensures a namespace exists (ignores the case where it already does).
pub(crate) fn ensure_namespace(
    cluster: &EmulatedCluster,
    name: &str,
) -> Result<(), super::super::KubeEmulatorError> {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    create_if_absent(cluster, &gvr_namespace(), ns).map(|_| ())
}

/// A Kubernetes `IntOrString` such as a rollout's `maxSurge`: an integer, a numeric string, or a
/// percentage of `total` (`"25%"`), rounded up or down as `round_up` says (apimachinery's
/// `GetScaledValueFromIntOrPercent`); `default` when absent or malformed.
pub(crate) fn int_or_percent(v: Option<&Value>, total: i64, default: i64, round_up: bool) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
        Some(Value::String(s)) => match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<i64>() {
                Ok(p) if round_up => (p * total + 99) / 100,
                Ok(p) => p * total / 100,
                Err(_) => default,
            },
            None => s.trim().parse().unwrap_or(default),
        },
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_or_percent_scales_and_rounds() {
        assert_eq!(int_or_percent(None, 4, 1, true), 1);
        assert_eq!(int_or_percent(Some(&json!(2)), 4, 1, true), 2);
        assert_eq!(int_or_percent(Some(&json!("3")), 4, 1, true), 3);
        assert_eq!(int_or_percent(Some(&json!("25%")), 3, 1, true), 1);
        assert_eq!(int_or_percent(Some(&json!("50%")), 3, 0, true), 2);
        assert_eq!(int_or_percent(Some(&json!("50%")), 3, 0, false), 1);
        assert_eq!(int_or_percent(Some(&json!("x%")), 3, 7, false), 7);
    }

    #[test]
    fn suffix_is_deterministic_and_in_alphabet() {
        let a = suffix5("uid-1:kcp");
        assert_eq!(a.len(), 5);
        assert_eq!(a, suffix5("uid-1:kcp"));
        assert_ne!(a, suffix5("uid-2:kcp"));
        assert!(a.bytes().all(|b| NAME_ALPHABET.contains(&b)));
    }

    #[test]
    fn set_condition_keeps_transition_time_and_sorts() {
        let mut st = Map::new();
        let mut c = cond_true("InfrastructureReady");
        c["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        set_condition(&mut st, c);
        set_condition(
            &mut st,
            cond_false("Ready", "Info", "WaitingForControlPlane", ""),
        );
        set_condition(&mut st, cond_true("InfrastructureReady"));
        let list = st["conditions"].as_array().unwrap();
        assert_eq!(list[0]["type"], "Ready");
        assert_eq!(list[1]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert!(list[0].get("message").is_none());
    }
}

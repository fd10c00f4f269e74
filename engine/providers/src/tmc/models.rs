//! TMC wire models for clusters (TMC-TF `internal/models/cluster/*.go`,
//! `internal/models/objectmeta/object_meta.go`, `internal/models/akscluster/status_condition*.go`).
//!
//! Every field is optional or defaulted and unknown fields are ignored, so newer TMC responses
//! still parse. Enumerations (`phase`, `health`, `type`, …) are kept as strings for the same
//! reason; the known values are in the `PHASE_*` / `HEALTH_*` constants. grpc-gateway encodes
//! 64-bit integers as JSON strings (`generation`, `resourceVersion`, `nodeCount`); those fields
//! accept a string or a number and keep the string form.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::SecretToken;

/// `status.phase` once the agent is connected (TMC-TF `cluster_phase.go`).
pub const PHASE_READY: &str = "READY";
/// `status.phase` right after `POST /v1alpha1/clusters`, before the agent connects.
pub const PHASE_PENDING: &str = "PENDING";
/// `status.phase` of a cluster in a failed state (a stop condition of TMC-TF's
/// `isClusterStopStatus`).
pub const PHASE_ERROR: &str = "ERROR";
/// `status.phase` after a failed upgrade (a stop condition of TMC-TF's `isClusterStopStatus`).
pub const PHASE_UPGRADE_FAILED: &str = "UPGRADE_FAILED";
/// `status.phase` while a detach (`DELETE`) is in progress.
pub const PHASE_DETACHING: &str = "DETACHING";
/// `status.phase` while a provisioned cluster is being deleted.
pub const PHASE_DELETING: &str = "DELETING";
/// `status.health` of a connected, healthy cluster (TMC-TF `cluster_health.go`).
pub const HEALTH_HEALTHY: &str = "HEALTHY";
/// The value `managementClusterName` and `provisionerName` take for attached clusters
/// (TMC-TF `internal/resources/cluster/constants.go` `attachedValue`).
pub const ATTACHED: &str = "attached";

/// Accepts a JSON string or number (grpc-gateway int64) and keeps it as a string.
fn de_opt_stringish<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    })
}

/// A cluster's full name (TMC-TF `internal/models/cluster/fullname.go`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FullName {
    /// The org id; set by TMC in responses, omitted in requests when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// Management cluster name; `attached` for attached clusters.
    pub management_cluster_name: String,
    /// Provisioner name; `attached` for attached clusters.
    pub provisioner_name: String,
    /// Cluster name (a DNS label, at most 63 characters).
    pub name: String,
}

impl FullName {
    /// The full name of an attached cluster: management cluster and provisioner `attached`.
    pub fn attached(name: &str) -> Self {
        FullName {
            org_id: None,
            management_cluster_name: ATTACHED.to_string(),
            provisioner_name: ATTACHED.to_string(),
            name: name.to_string(),
        }
    }
}

/// Common object metadata (TMC-TF `internal/models/objectmeta/object_meta.go`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    /// Unique id, e.g. `c:01H…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Free-text description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Creation time, RFC 3339 text as sent by TMC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
    /// Last update time, RFC 3339 text as sent by TMC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_time: Option<String>,
    /// Resource version (int64 as a string).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_stringish"
    )]
    pub resource_version: Option<String>,
    /// Generation (int64 as a string).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_stringish"
    )]
    pub generation: Option<String>,
    /// Fields this model does not name (e.g. `parentReferences`), kept so that a `PUT` of an
    /// object read with `GET` sends them back unchanged (docs/tanzu-apis.md §3.2 common `meta`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Cluster spec (TMC-TF `internal/models/cluster/cluster_spec.go`). The provisioned-cluster
/// variants (`tkgAws`, `tkgVsphere`, …) are not modelled; they are kept in `extra`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterSpec {
    /// Cluster group; TMC defaults it to `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_group_name: Option<String>,
    /// Name of a TMC proxy configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_name: Option<String>,
    /// Name of a TMC image registry configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_registry: Option<String>,
    /// Fields this model does not name (e.g. `tkgAws` of a provisioned cluster), kept so that
    /// a `PUT` of an object read with `GET` sends them back unchanged (docs/tanzu-apis.md §3.4).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One status condition (TMC-TF `internal/models/akscluster/status_condition*.go`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    /// Condition type, e.g. `Agent-READY` (also the map key).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// `STATUS_UNSPECIFIED` | `TRUE` | `FALSE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `SEVERITY_UNSPECIFIED` | `ERROR` | `WARNING` | `INFO`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Machine-readable reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message, e.g. `cluster is connected to TMC and healthy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// `status.kubernetesProvider`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KubernetesProvider {
    /// E.g. `VMWARE_TANZU_KUBERNETES_GRID`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Kubernetes version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Cluster status (TMC-TF `internal/models/cluster/cluster_status.go`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterStatus {
    /// `PHASE_UNSPECIFIED`, `PENDING`, `PROCESSING`, `CREATING`, `READY`, `DELETING`, `ERROR`,
    /// `DETACHING`, `UPGRADING`, `UPGRADE_FAILED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `HEALTH_UNSPECIFIED`, `HEALTHY`, `WARNING`, `UNHEALTHY`, `DISCONNECTED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The unauthenticated installer URL. It embeds a credential (whoever fetches it gets the
    /// agent's registration token), so it is a [`SecretToken`] and is never serialized back.
    #[serde(skip_serializing)]
    pub installer_link: Option<SecretToken>,
    /// Conditions keyed by type (e.g. `Agent-READY`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub conditions: BTreeMap<String, Condition>,
    /// Kubernetes server version reported by the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kube_server_version: Option<String>,
    /// Node count (int64 as a string).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_stringish"
    )]
    pub node_count: Option<String>,
    /// `ATTACHED`, `PROVISIONED`, `TANZU_KUBERNETES_GRID`, ….
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// E.g. `AWS_EC2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infrastructure_provider: Option<String>,
    /// Infrastructure region, when reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infrastructure_provider_region: Option<String>,
    /// Kubernetes distribution and version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_provider: Option<KubernetesProvider>,
    /// `healthDetails{message, timestamp, controllerManagerHealth, schedulerHealth, etcdHealth[]}`,
    /// kept as raw JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_details: Option<serde_json::Value>,
}

/// A TMC cluster: the content of the `{"cluster":{…}}` envelope.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Cluster {
    /// Full name.
    pub full_name: FullName,
    /// Metadata.
    pub meta: Meta,
    /// Spec.
    pub spec: ClusterSpec,
    /// Status (set by TMC).
    pub status: ClusterStatus,
}

impl Cluster {
    /// `status.phase`, or `PHASE_UNSPECIFIED` when absent.
    pub fn phase(&self) -> &str {
        self.status.phase.as_deref().unwrap_or("PHASE_UNSPECIFIED")
    }

    /// `status.health`, or `HEALTH_UNSPECIFIED` when absent.
    pub fn health(&self) -> &str {
        self.status
            .health
            .as_deref()
            .unwrap_or("HEALTH_UNSPECIFIED")
    }

    /// `phase == READY && health == HEALTHY` (TMC-TF `isClusterStopStatus`' success case for
    /// TMC-provisioned clusters).
    pub fn is_ready_and_healthy(&self) -> bool {
        self.is_ready() && self.health() == HEALTH_HEALTHY
    }

    /// `phase == READY`: the agent is connected. What the attach wait ends on (TMC-TF
    /// `resource_cluster.go` polls until READY only, docs/tanzu-apis.md §3.5 step 4); the health
    /// (`HEALTHY`, `WARNING`, …) is reported, not required.
    pub fn is_ready(&self) -> bool {
        self.phase() == PHASE_READY
    }

    /// `phase` is `ERROR` or `UPGRADE_FAILED`: the failure stop conditions of TMC-TF's
    /// `isClusterStopStatus`.
    pub fn is_failed(&self) -> bool {
        matches!(self.phase(), PHASE_ERROR | PHASE_UPGRADE_FAILED)
    }

    /// The conditions as `type: message` text joined with `; ` (for error messages), skipping
    /// conditions without a message.
    pub fn condition_messages(&self) -> String {
        self.status
            .conditions
            .iter()
            .filter_map(|(k, c)| c.message.as_deref().map(|m| format!("{k}: {m}")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_parse() {
        let c: Cluster = serde_json::from_value(serde_json::json!({
            "fullName": {"orgId": "o", "managementClusterName": "attached", "provisionerName": "attached", "name": "x"},
            "meta": {"uid": "c:01", "generation": 3, "resourceVersion": "7", "extra": true},
            "status": {"phase": "READY", "health": "HEALTHY", "nodeCount": "6", "type": "ATTACHED",
                "installerLink": "http://h/installer?id=secret",
                "conditions": {"Agent-READY": {"type": "Agent-READY", "message": "ok", "new": 1}}},
            "unknown": {}
        }))
        .unwrap();
        assert!(c.is_ready_and_healthy());
        assert_eq!(c.meta.generation.as_deref(), Some("3"));
        assert_eq!(c.status.node_count.as_deref(), Some("6"));
        assert_eq!(c.condition_messages(), "Agent-READY: ok");
        assert!(!format!("{c:?}").contains("secret"));
        assert!(!serde_json::to_string(&c).unwrap().contains("secret"));
    }
}

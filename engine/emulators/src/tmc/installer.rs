//! The attach installer manifest served at the unauthenticated `installerLink`.
//!
//! The real link returns a multi-document YAML with the TMC agent stack: the namespace
//! `vmware-system-tmc` (the namespace named in TMC-TF's delete-path error text), the `stack-config`
//! ConfigMap the agents read their TMC URL and registration token from, and the `cluster-agent`
//! workload. The emulator's version keeps that shape so an applier and a simulated agent can use it.

use serde_json::json;

/// Everything the installer manifest of one cluster is rendered from.
pub(crate) struct InstallerParams<'a> {
    /// The emulator's base URL (`http://127.0.0.1:PORT`), written as `tmc_url`.
    pub tmc_url: &'a str,
    /// The org id, written as `org_id`.
    pub org_id: &'a str,
    /// `fullName.name` of the attached cluster.
    pub cluster_name: &'a str,
    /// `fullName.managementClusterName`.
    pub management_cluster_name: &'a str,
    /// `fullName.provisionerName`.
    pub provisioner_name: &'a str,
    /// `meta.uid` of the cluster.
    pub uid: &'a str,
    /// The per-cluster registration token the agent presents on connect.
    pub registration_token: &'a str,
}

/// Renders the multi-document installer YAML. Starts with blank lines on purpose: TMC-TF's
/// `GetK8sManifest` trims leading whitespace, and clients must do the same.
pub(crate) fn render(p: &InstallerParams<'_>) -> String {
    const NS: &str = "vmware-system-tmc";
    let labels =
        json!({"app.kubernetes.io/part-of": "tmc-agent", "tmc.cloud.vmware.com/managed": "true"});
    let docs = vec![
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NS, "labels": labels},
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "stack-config", "namespace": NS, "labels": labels},
            "data": {
                "tmc_url": p.tmc_url,
                "org_id": p.org_id,
                "cluster_name": p.cluster_name,
                "management_cluster_name": p.management_cluster_name,
                "provisioner_name": p.provisioner_name,
                "cluster_uid": p.uid,
                "cluster_type": "ATTACHED",
                "registration_token": p.registration_token,
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "cluster-agent", "namespace": NS, "labels": labels},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "cluster-agent-cluster-admin", "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "cluster-agent", "namespace": NS}],
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "cluster-agent", "namespace": NS, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "cluster-agent"}},
                "template": {
                    "metadata": {"labels": {"app": "cluster-agent"}},
                    "spec": {
                        "serviceAccountName": "cluster-agent",
                        "containers": [{
                            "name": "cluster-agent",
                            "image": "vmware-docker-tmc.bintray.io/extensions/agent-updater/cluster-agent:latest",
                            "envFrom": [{"configMapRef": {"name": "stack-config"}}],
                        }],
                    },
                },
            },
        }),
    ];
    let mut out = String::from("\n  \n");
    for doc in docs {
        out.push_str("---\n");
        // serde_yaml cannot fail on a serde_json::Value built from plain maps and strings.
        out.push_str(&serde_yaml::to_string(&doc).unwrap_or_default());
    }
    out
}

//! Providers own all network I/O: AWS EC2, Kubernetes, Tanzu Mission Control and GitHub.
//!
//! Each provider implements [`crate::runner::StepExecutor`] for its step kinds.

pub mod aws;
pub mod github;
pub mod kube;
pub mod tmc;

use serde::{Deserialize, Serialize};

use crate::runner::StepError;

/// How the bot reaches a management cluster (from the config repository's `tkgops.yaml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum KubeconfigSource {
    /// A kubeconfig file on the bot's host.
    File(String),
    /// An environment variable of the bot holding a whole kubeconfig (YAML text).
    Env(String),
    /// A Secret in the cluster the bot runs in (in-cluster config), key holding a kubeconfig.
    Secret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// Data key holding the kubeconfig; defaults to `value` (the Cluster API convention).
        #[serde(default = "default_secret_key")]
        key: String,
    },
}

fn default_secret_key() -> String {
    "value".to_string()
}

/// A workload cluster as seen from its management cluster: its kubeconfig is the Cluster API
/// Secret `<cluster_name>-kubeconfig` (key `value`) in `namespace` on `management_cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadTarget {
    /// Name of the management cluster (a key of the repository's `managementClusters`).
    pub management_cluster: String,
    /// Namespace of the Cluster object on the management cluster (TKG `NAMESPACE`).
    pub namespace: String,
    /// The workload cluster's name (TKG `CLUSTER_NAME`).
    pub cluster_name: String,
}

/// Applies manifests to workload clusters. Implemented by the Kubernetes provider; used by the
/// TMC provider to apply the TMC installer manifest.
#[async_trait::async_trait]
pub trait ManifestApplier: Send + Sync {
    /// Server-side applies every document of the multi-document `yaml` to the workload cluster
    /// `target` with `field_manager`, creating namespaces first. Returns `kind/namespace/name`
    /// of each applied object.
    ///
    /// Errors: [`StepError::Transient`] for connection errors, 5xx and 409 conflicts;
    /// [`StepError::Permanent`] for unparsable YAML, unknown kinds or a missing kubeconfig Secret.
    async fn apply_to_workload(
        &self,
        target: &WorkloadTarget,
        yaml: &str,
        field_manager: &str,
    ) -> Result<Vec<String>, StepError>;
}

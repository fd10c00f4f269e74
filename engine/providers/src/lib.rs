//! Providers own all network I/O: AWS EC2, Kubernetes, Tanzu Mission Control and GitHub.
//!
//! Each provider implements [`tkgops_engine::StepExecutor`] for its step kinds; this crate is
//! the only one of the product that opens network connections (git aside, which the bot owns).

pub mod aws;
pub mod github;
pub mod kube;
pub mod tmc;

/// Installs the rustls `ring` crypto provider as the process default.
///
/// Both `ring` (kube, octocrab) and `aws-lc-rs` (AWS SDK) are linked, so rustls cannot pick a
/// default by itself and the first TLS client would panic. Call this once at the top of `main`
/// and of every test that builds a kube, octocrab or reqwest client. Calling it again is a no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

use serde::{Deserialize, Serialize};

pub use tkgops_domain::request::KubeconfigSource;
use tkgops_engine::StepError;

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

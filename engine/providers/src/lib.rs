//! Providers own the network I/O of the steps: AWS EC2, Kubernetes and Tanzu Mission Control.
//!
//! Each provider has one typed method per step kind it executes (the kind's inputs in, its
//! output of `tkgops_domain::output` out), which the bot's executor table
//! ([`tkgops_domain::executor::ExecutorTable`]) routes to; this crate is
//! the only one of the product that opens network connections apart from GitHub (the
//! `tkgops-github` crate, which only the bot uses) and git (which the bot owns).
//! Every wait runs through the one wait driver ([`wait`]) over a verdict of
//! `tkgops_domain::wait`.

pub mod aws;
pub mod kube;
pub mod proxy;
pub mod tmc;
pub mod wait;

/// Installs the rustls `ring` crypto provider as the process default.
///
/// Both `ring` (kube, octocrab) and `aws-lc-rs` (AWS SDK) are linked, so rustls cannot pick a
/// default by itself and the first TLS client would panic. Call this once at the top of `main`
/// and of every test that builds a kube, octocrab or reqwest client. Calling it again is a no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

use tkgops_domain::executor::StepError;
pub use tkgops_domain::request::KubeconfigSource;
pub use tkgops_domain::step::WorkloadTarget;

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

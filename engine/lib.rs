//! tkgops: a GitOps pull-request bot for Tanzu Kubernetes Grid (TKG) cluster operations on AWS.
//!
//! Module map (see `DESIGN.md` of the project and the README):
//! - [`request`]: the config repository format (cluster requests) and the reference-design rules. Pure.
//! - [`workflow`]: workflow definitions, intents, plan rendering and the PR comment Markdown. Pure.
//! - [`gitops`]: git2 access to the config repository (fetch, diff, read trees).
//! - [`store`]: the durable run/step journal on sled.
//! - [`runner`]: the step engine (state machine per step, retries, resume).
//! - [`providers`]: all network I/O: AWS EC2, Kubernetes (management and workload clusters), TMC, GitHub.
//! - [`bot`]: the pull-request loop (poll, plan, sticky comment, runs on merge).
//! - [`emulators`]: wire-level emulators of GitHub, the Kubernetes API and TMC for tests and the sandbox.
//! - [`sandbox`]: the one-command demo that wires everything together (and the moto launcher).

pub mod bot;
pub mod emulators;
pub mod gitops;
pub mod providers;
pub mod request;
pub mod runner;
pub mod sandbox;
pub mod serde_duration;
pub mod store;
pub mod workflow;

/// Installs the rustls `ring` crypto provider as the process default.
///
/// Both `ring` (kube, octocrab) and `aws-lc-rs` (AWS SDK) are linked, so rustls cannot pick a
/// default by itself and the first TLS client would panic. Call this once at the top of `main`
/// and of every test that builds a kube, octocrab or reqwest client. Calling it again is a no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

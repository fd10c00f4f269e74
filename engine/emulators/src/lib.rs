//! tkgops-emulators: wire-level emulators of the external services tkgops talks to (GitHub REST, the Kubernetes API, TMC).
//!
//! The real clients (octocrab, kube, kubectl, reqwest, git2) talk to them over HTTP(S) or the file protocol exactly as
//! to the real services. Every emulator is stateful and can inject faults on demand through [`faults`].
//!
//! This crate depends on no other tkgops crate: it is held to the real services' contracts, not to
//! tkgops's types. It is a dev-dependency of the product crates and a dependency of the sandbox only.

pub mod faults;
pub mod git_remote;
pub mod github;
pub mod kube;
pub mod tmc;

/// Installs the rustls `ring` crypto provider as the process default (the emulators' kube
/// clients need one; `ring` and `aws-lc-rs` are both linked in the test binaries). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

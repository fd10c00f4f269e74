//! Wire-level emulators of the external services tkgops talks to (GitHub REST, the Kubernetes API, TMC).
//!
//! The real clients (octocrab, kube, reqwest, git2) talk to them over HTTP or the file protocol exactly as
//! to the real services. Every emulator is stateful and can inject faults on demand through [`faults`].

pub mod faults;
pub mod github;
pub mod kube;
pub mod tmc;

//! Provider: Tanzu Mission Control (TMC).
//!
//! * [`TmcClient`]: a reqwest client for the TMC REST API with the CSP API-token exchange
//!   (TMC-TF `internal/authctx/saas.go`, `internal/client/cluster/cluster_resource.go`).
//! * [`TmcExecutor`]: the `tmc.attach` step (attach a workload cluster to TMC and converge its
//!   cluster group, description and labels, TMC-TF `internal/resources/cluster/resource_cluster.go`
//!   create and update paths) and the `tmc.detach` step (`resourceClusterDelete`,
//!   docs/tanzu-apis.md §3.5 step 5).
//! * [`models`]: the cluster wire model.
//!
//! Secrets (the CSP API token, access tokens, the installer link) are held in [`SecretToken`]s
//! and never appear in logs, errors, `Debug` output or step outputs.

mod attach;
mod client;
mod detach;
pub mod models;

pub use attach::{TmcExecutor, TokenSource, DEFAULT_DETACH_TIMEOUT};
pub use client::{TmcClient, TmcSettings};
pub use models::{
    Cluster, ClusterSpec, ClusterStatus, Condition, FullName, KubernetesProvider, Meta,
};

use std::time::Duration;

/// A secret string (CSP API token, access token, installer link). `Debug` prints `<redacted>`;
/// there is no `Display` and no `Serialize`, so it cannot leak through formatting or outputs by
/// accident. Read it with [`SecretToken::expose`] only where it goes on the wire.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretToken(String);

impl SecretToken {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<String>) -> Self {
        SecretToken(secret.into())
    }

    /// The secret text, for putting it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretToken {
    fn from(s: String) -> Self {
        SecretToken(s)
    }
}

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// grpc status code `InvalidArgument`.
pub const GRPC_INVALID_ARGUMENT: i32 = 3;
/// grpc status code `NotFound`.
pub const GRPC_NOT_FOUND: i32 = 5;
/// grpc status code `AlreadyExists`.
pub const GRPC_ALREADY_EXISTS: i32 = 6;
/// grpc status code `Aborted` (HTTP 409): a write with a stale `meta.resourceVersion`.
pub const GRPC_ABORTED: i32 = 10;
/// grpc status code `PermissionDenied`.
pub const GRPC_PERMISSION_DENIED: i32 = 7;
/// grpc status code `Unauthenticated`.
pub const GRPC_UNAUTHENTICATED: i32 = 16;

/// Errors of the TMC client. Messages never contain tokens or the installer link (reqwest errors
/// are stripped of their URL).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TmcError {
    /// The settings are unusable (bad endpoint URL, empty token, HTTP client setup).
    #[error("TMC settings: {0}")]
    Config(String),
    /// The CSP API-token exchange was refused (e.g. 400 `invalid_grant: Invalid refresh token`).
    #[error("CSP API-token exchange failed (HTTP {status}): {message}")]
    TokenExchange {
        /// HTTP status.
        status: u16,
        /// CSP's `message`, or the body text.
        message: String,
    },
    /// grpc `NotFound` (HTTP 404).
    #[error("TMC: not found (code {code}): {message}")]
    NotFound {
        /// grpc code from the body (5), or 5 when the body had none.
        code: i32,
        /// TMC's `message`.
        message: String,
    },
    /// grpc `AlreadyExists` (HTTP 409).
    #[error("TMC: already exists (code {code}): {message}")]
    AlreadyExists {
        /// grpc code (6).
        code: i32,
        /// TMC's `message`.
        message: String,
    },
    /// grpc `Aborted` (HTTP 409 with code 10): an update carried a stale
    /// `meta.resourceVersion`; GET the object again and retry.
    #[error("TMC: conflict (code {code}): {message}")]
    Conflict {
        /// grpc code (10).
        code: i32,
        /// TMC's `message`.
        message: String,
    },
    /// grpc `InvalidArgument` (HTTP 400).
    #[error("TMC: invalid argument (code {code}): {message}")]
    InvalidArgument {
        /// grpc code (3).
        code: i32,
        /// TMC's `message`.
        message: String,
    },
    /// grpc `Unauthenticated` (HTTP 401), after one token re-exchange and retry.
    #[error("TMC: unauthenticated (code {code}): {message}")]
    Unauthenticated {
        /// grpc code (16).
        code: i32,
        /// TMC's `message`.
        message: String,
    },
    /// Any other non-200 answer (403, 429, 5xx, …).
    #[error("TMC: HTTP {status} (code {code:?}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// grpc code from the body, when it had one.
        code: Option<i32>,
        /// TMC's `message`, or a prefix of the body text.
        message: String,
        /// `Retry-After` of a 429/503, when sent.
        retry_after: Option<Duration>,
    },
    /// Connection refused/reset, timeout, or a body cut off mid-way.
    #[error("TMC transport error: {0}")]
    Transport(String),
    /// A 200 answer whose body is not the expected JSON.
    #[error("unexpected TMC response: {0}")]
    Decode(String),
}

impl TmcError {
    /// Worth retrying: HTTP 429 and 5xx (from TMC or CSP), connection errors and timeouts.
    pub fn is_transient(&self) -> bool {
        match self {
            TmcError::Transport(_) => true,
            TmcError::Api { status, .. } | TmcError::TokenExchange { status, .. } => {
                *status == 429 || *status >= 500
            }
            _ => false,
        }
    }

    /// The grpc code carried by the error, when there is one.
    pub fn grpc_code(&self) -> Option<i32> {
        match self {
            TmcError::NotFound { code, .. }
            | TmcError::AlreadyExists { code, .. }
            | TmcError::Conflict { code, .. }
            | TmcError::InvalidArgument { code, .. }
            | TmcError::Unauthenticated { code, .. } => Some(*code),
            TmcError::Api { code, .. } => *code,
            _ => None,
        }
    }
}

impl From<TmcError> for tkgops_domain::executor::StepError {
    /// [`TmcError::is_transient`] → `Transient`, everything else → `Permanent`.
    fn from(e: TmcError) -> Self {
        if e.is_transient() {
            tkgops_domain::executor::StepError::Transient(e.to_string())
        } else {
            tkgops_domain::executor::StepError::Permanent(e.to_string())
        }
    }
}

//! The bot's own configuration file (`tkgops serve --config FILE`): where GitHub is, where the
//! state lives, how often to poll. Credentials are never in this file: it names the environment
//! variables holding them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors reading the bot configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// Path of the file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML or violates the schema (unknown keys are errors).
    #[error("{path}: {message}")]
    Invalid {
        /// Path of the file.
        path: String,
        /// What is wrong, with line and column when known.
        message: String,
    },
    /// An environment variable named by the configuration is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
}

/// GitHub settings.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitHubSettings {
    /// REST API base URL; `https://api.github.com` by default (GitHub Enterprise: `https://HOST/api/v3`).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Owner (user or organisation) of the config repository.
    pub owner: String,
    /// Name of the config repository.
    pub repo: String,
    /// Environment variable holding the token (a PAT or a token minted elsewhere); not used
    /// when `appId` is set.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// GitHub App id: the bot authenticates as the App's installation on the repository
    /// (installation tokens are minted and refreshed before they expire, for the API and git).
    #[serde(default)]
    pub app_id: Option<u64>,
    /// Environment variable holding the App's private key (PEM); default
    /// `GITHUB_APP_PRIVATE_KEY`. Ignored when `privateKeyFile` is set.
    #[serde(default)]
    pub private_key_env: Option<String>,
    /// File holding the App's private key (PEM) on the bot host.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The App's installation id; looked up from the repository when absent.
    #[serde(default)]
    pub installation_id: Option<u64>,
    /// Git remote to fetch from; defaults to the repository's `clone_url` reported by the API.
    #[serde(default)]
    pub clone_url: Option<String>,
}

fn default_api_url() -> String {
    "https://api.github.com".into()
}
fn default_token_env() -> String {
    "GITHUB_TOKEN".into()
}
fn default_tmc_token_env() -> String {
    "VMW_CLOUD_API_TOKEN".into()
}
fn default_poll() -> Duration {
    Duration::from_secs(30)
}
fn default_kube_poll() -> Duration {
    Duration::from_secs(15)
}
fn default_tmc_poll() -> Duration {
    Duration::from_secs(10)
}
fn default_comment_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_admin_listen() -> Option<String> {
    Some("127.0.0.1:8081".into())
}
fn default_drift_scan_interval() -> Duration {
    Duration::from_secs(600)
}

/// `driftScanInterval`: a humantime duration, `null` read as zero (off).
mod drift_interval_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        tkgops_domain::serde_duration::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Duration::ZERO),
            Some(s) => humantime::parse_duration(&s).map_err(serde::de::Error::custom),
        }
    }
}

fn default_run_retention() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

/// The bot configuration file.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BotConfig {
    /// GitHub settings.
    pub github: GitHubSettings,
    /// Directory for the sled journal and the git mirror.
    pub state_dir: PathBuf,
    /// How often open and recently closed pull requests are polled (humantime; default 30s).
    #[serde(default = "default_poll", with = "tkgops_domain::serde_duration")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Poll interval of cluster readiness and PackageInstall waits (default 15s, as TKG).
    #[serde(default = "default_kube_poll", with = "tkgops_domain::serde_duration")]
    #[schemars(with = "String")]
    pub kube_poll_interval: Duration,
    /// Poll interval of TMC attach waits (default 10s, as the TMC Terraform provider).
    #[serde(default = "default_tmc_poll", with = "tkgops_domain::serde_duration")]
    #[schemars(with = "String")]
    pub tmc_poll_interval: Duration,
    /// Minimum time between two edits of the same PR comment (GitHub content-creation limits).
    #[serde(
        default = "default_comment_interval",
        with = "tkgops_domain::serde_duration"
    )]
    #[schemars(with = "String")]
    pub comment_min_interval: Duration,
    /// Environment variable holding the TMC (CSP) API token.
    #[serde(default = "default_tmc_token_env")]
    pub tmc_token_env: String,
    /// A file holding the TMC (CSP) API token (e.g. a mounted Kubernetes Secret), used instead
    /// of `tmcTokenEnv` when set: read again whenever it changes, so the next TMC step uses a
    /// rotated token without a restart.
    #[serde(default)]
    pub tmc_token_file: Option<PathBuf>,
    /// EC2 endpoint override (e.g. moto on loopback); the AWS SDK also honours `AWS_ENDPOINT_URL`.
    #[serde(default)]
    pub aws_endpoint_url: Option<String>,
    /// Directory with an operator-supplied `workflows/` and `templates/` replacing the built-in ones.
    #[serde(default)]
    pub catalog_dir: Option<PathBuf>,
    /// Address of the HTTP server (`POST /webhooks/github`, `/healthz`, `/readyz`), e.g.
    /// `0.0.0.0:8080`; no server when absent (the bot then only polls).
    #[serde(default)]
    pub listen: Option<String>,
    /// Address of the read-only admin HTTP server (`GET /admin/runs`, `GET /admin/runs/{id}`:
    /// the run history, `tkgops runs --url`), separate from `listen` so that it is never
    /// exposed with the webhook; default `127.0.0.1:8081` (this host only). `null` turns it
    /// off. It has no authentication: bind it to loopback (or a port only operators reach).
    #[serde(default = "default_admin_listen")]
    pub admin_listen: Option<String>,
    /// How long finished runs (succeeded, failed, cancelled) are kept in the journal
    /// (humantime; default 90d): older ones are deleted with their steps at start and daily,
    /// except each cluster's latest succeeded run. `tkgops journal export` before, for audit.
    #[serde(
        default = "default_run_retention",
        with = "tkgops_domain::serde_duration"
    )]
    #[schemars(with = "String")]
    pub run_retention: Duration,
    /// How often every cluster tkgops deployed is compared with Git at its deployed commit
    /// (its Cluster's topology by a server-side dry run, its TMC cluster, its PackageInstalls):
    /// drift is shown on the fleet dashboard issue, in plans and in `tkgops_drift_clusters`, and
    /// reverted for clusters with `driftPolicy: revert` (humantime; default 10m; `0s` or `null`
    /// turns the scans off). The first scan runs one interval after start; between scans, a
    /// change of a deployed Cluster outside tkgops wakes a scan of that cluster within seconds
    /// (docs/drift.md). A cluster's reverts are at least one interval apart.
    #[serde(default = "default_drift_scan_interval", with = "drift_interval_serde")]
    #[schemars(with = "Option<String>")]
    pub drift_scan_interval: Duration,
    /// How long a graceful stop (SIGTERM, Ctrl-C) lets the steps in flight run to their end
    /// (humantime; default 30s; keep it below the pod's `terminationGracePeriodSeconds`). No new
    /// work starts once the signal arrived; a step still running after the grace is cut, its
    /// attempt recorded as cut short by the shutdown (not counted against its retries), and it
    /// runs again at the next start. A step that only reads and waits is cut at once.
    #[serde(
        default = "default_shutdown_grace",
        with = "tkgops_domain::serde_duration"
    )]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// Environment variable holding the webhook secret GitHub signs deliveries with
    /// (default `GITHUB_WEBHOOK_SECRET`); when it is unset every delivery is refused.
    #[serde(default = "default_webhook_secret_env")]
    pub webhook_secret_env: String,
    /// A file holding the webhook secret (e.g. a mounted Kubernetes Secret), used instead of
    /// `webhookSecretEnv` when set: read again whenever it changes, so the secret rotates
    /// without a restart (the replaced value is accepted for 10 more minutes).
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
    /// The trusted policy commit at the first start (security rule 1): the commit of the
    /// default branch whose `tkgops.yaml` and `CODEOWNERS` tkgops enforces until an approved
    /// pull request changes them. Absent: the default branch's tip at the first start. A new
    /// value replaces the journalled trusted policy commit once (the operator's repair of the
    /// chain); it must be in the default branch's history.
    #[serde(default)]
    pub trusted_policy_commit: Option<String>,
    /// Leader election on a `coordination.k8s.io/v1` Lease (off by default): only the holder
    /// opens the journal and acts; see README "High availability and failure model".
    #[serde(default)]
    pub leader_election: LeaderElectionSettings,
}

/// The `leaderElection` section of the bot configuration (README "High availability and
/// failure model"). The durations must satisfy `retryPeriod < renewDeadline < leaseDuration`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElectionSettings {
    /// Whether `tkgops serve` takes part in leader election (default false: it acts at once).
    #[serde(default)]
    pub enabled: bool,
    /// Name of the Lease (default `tkgops`; the Helm chart sets its release's full name, the
    /// one Lease its Role lets the bot get and update).
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// Namespace of the Lease; default the `POD_NAMESPACE` variable, else the namespace of the
    /// pod's ServiceAccount token, else `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The holder identity written into the Lease; default the `POD_NAME` variable, else the
    /// host name. Must differ between the replicas.
    #[serde(default)]
    pub identity: Option<String>,
    /// Kubeconfig of the cluster holding the Lease; default the in-cluster configuration (the
    /// pod's ServiceAccount). For tests and running outside the cluster.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// How long a Lease not renewed stays the holder's: a standby takes over this long after it
    /// last saw the Lease change (default 15s, as client-go's leader election).
    #[serde(
        default = "default_lease_duration",
        with = "tkgops_domain::serde_duration"
    )]
    #[schemars(with = "String")]
    pub lease_duration: Duration,
    /// How long the holder keeps acting without a successful renewal before it stops and
    /// exits (default 10s).
    #[serde(
        default = "default_renew_deadline",
        with = "tkgops_domain::serde_duration"
    )]
    #[schemars(with = "String")]
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew the Lease (default 2s).
    #[serde(
        default = "default_retry_period",
        with = "tkgops_domain::serde_duration"
    )]
    #[schemars(with = "String")]
    pub retry_period: Duration,
}

fn default_lease_name() -> String {
    "tkgops".into()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}
fn default_renew_deadline() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_period() -> Duration {
    Duration::from_secs(2)
}

impl Default for LeaderElectionSettings {
    fn default() -> Self {
        LeaderElectionSettings {
            enabled: false,
            lease_name: default_lease_name(),
            namespace: None,
            identity: None,
            kubeconfig: None,
            lease_duration: default_lease_duration(),
            renew_deadline: default_renew_deadline(),
            retry_period: default_retry_period(),
        }
    }
}

impl LeaderElectionSettings {
    /// Checks `retryPeriod < renewDeadline < leaseDuration` and whole seconds of
    /// `leaseDuration` (the Lease stores seconds).
    ///
    /// Errors: [`ConfigError::Invalid`] naming the keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: "leaderElection".into(),
            message,
        };
        if !(self.retry_period < self.renew_deadline && self.renew_deadline < self.lease_duration) {
            return Err(invalid(format!(
                "retryPeriod ({:?}) < renewDeadline ({:?}) < leaseDuration ({:?}) must hold",
                self.retry_period, self.renew_deadline, self.lease_duration
            )));
        }
        if self.lease_duration.subsec_nanos() != 0
            || self.lease_duration.as_secs() > i32::MAX as u64
        {
            return Err(invalid(format!(
                "leaseDuration ({:?}) must be whole seconds",
                self.lease_duration
            )));
        }
        if self.lease_name.is_empty() {
            return Err(invalid("leaseName must not be empty".into()));
        }
        Ok(())
    }
}

fn default_webhook_secret_env() -> String {
    "GITHUB_WEBHOOK_SECRET".into()
}

impl BotConfig {
    /// Reads and validates the configuration file at `path`.
    ///
    /// Errors: [`ConfigError::Io`], [`ConfigError::Invalid`] (with line and column; or an
    /// enabled `leaderElection` whose durations are out of order).
    pub fn load(path: &std::path::Path) -> Result<BotConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: BotConfig = serde_yaml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if cfg.leader_election.enabled {
            cfg.leader_election.validate()?;
        }
        Ok(cfg)
    }

    /// How to authenticate to GitHub: the App (with its private key from `privateKeyFile` or
    /// the `privateKeyEnv` variable) when `appId` is set, else the token of `tokenEnv`. A key
    /// file is read again whenever it changes (a rotated Kubernetes Secret), so the next
    /// request signs with the new key, without a restart.
    ///
    /// Errors: [`ConfigError::MissingEnv`] for an unset variable, [`ConfigError::Io`] for an
    /// unreadable or empty key file.
    pub fn github_auth(&self) -> Result<tkgops_github::GitHubAuth, ConfigError> {
        use tkgops_github::{AppPrivateKey, GitHubAuth};
        let Some(app_id) = self.github.app_id else {
            return self.github_token().map(GitHubAuth::Token);
        };
        let private_key = match &self.github.private_key_file {
            Some(path) => {
                let file = std::sync::Arc::new(crate::secrets::RotatingSecret::new(
                    crate::secrets::SecretSource::File(path.clone()),
                ));
                if file.accepted().is_empty() {
                    // Read it once now, for the error the operator needs.
                    let source = match std::fs::read_to_string(path) {
                        Err(e) => e,
                        Ok(_) => std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "the file is empty",
                        ),
                    };
                    return Err(ConfigError::Io {
                        path: path.display().to_string(),
                        source,
                    });
                }
                AppPrivateKey::Source(std::sync::Arc::new(move || {
                    // The current key only: a replaced App key is not used again.
                    file.accepted().into_iter().next()
                }))
            }
            None => {
                let var = self
                    .github
                    .private_key_env
                    .clone()
                    .unwrap_or_else(|| "GITHUB_APP_PRIVATE_KEY".into());
                AppPrivateKey::Pem(std::env::var(&var).map_err(|_| ConfigError::MissingEnv(var))?)
            }
        };
        Ok(GitHubAuth::App {
            app_id,
            private_key,
            installation_id: self.github.installation_id,
        })
    }

    /// The GitHub token from the environment.
    ///
    /// Errors: [`ConfigError::MissingEnv`].
    pub fn github_token(&self) -> Result<String, ConfigError> {
        std::env::var(&self.github.token_env)
            .map_err(|_| ConfigError::MissingEnv(self.github.token_env.clone()))
    }

    /// Where the webhook secret comes from: `webhookSecretFile` when set (re-read when it
    /// changes), else the `webhookSecretEnv` variable.
    pub fn webhook_secret_source(&self) -> crate::secrets::RotatingSecret {
        crate::secrets::RotatingSecret::new(match &self.webhook_secret_file {
            Some(path) => crate::secrets::SecretSource::File(path.clone()),
            None => crate::secrets::SecretSource::Env(self.webhook_secret_env.clone()),
        })
    }

    /// The webhook secret from the environment, if set and not empty.
    pub fn webhook_secret(&self) -> Option<String> {
        std::env::var(&self.webhook_secret_env)
            .ok()
            .filter(|t| !t.is_empty())
    }

    /// Where the TMC API token comes from when `tmcTokenFile` is set: that file, read again
    /// when it changes. `None`: the `tmcTokenEnv` variable ([`BotConfig::tmc_token`]).
    pub fn tmc_token_file_source(&self) -> Option<crate::secrets::RotatingSecret> {
        self.tmc_token_file.as_ref().map(|p| {
            crate::secrets::RotatingSecret::new(crate::secrets::SecretSource::File(p.clone()))
        })
    }

    /// The TMC API token from the environment, if set.
    pub fn tmc_token(&self) -> Option<String> {
        std::env::var(&self.tmc_token_env)
            .ok()
            .filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "github: {owner: acme, repo: tkg-clusters}\nstateDir: /var/lib/tkgops\n";

    fn load(extra: &str) -> Result<BotConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bot.yaml");
        std::fs::write(&path, format!("{BASE}{extra}")).unwrap();
        BotConfig::load(&path)
    }

    #[test]
    fn a_webhook_secret_file_is_used_instead_of_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a-webhook-secret-from-a-file-0123456789\n").unwrap();
        let path = dir.path().join("bot.yaml");
        std::fs::write(
            &path,
            format!(
                "github: {{owner: acme, repo: r}}\nstateDir: /tmp/tkgops-test-state\nwebhookSecretEnv: TKGOPS_TEST_UNSET_WEBHOOK_SECRET\nwebhookSecretFile: {}\n",
                secret.display()
            ),
        )
        .unwrap();
        let cfg = BotConfig::load(&path).expect("config");
        assert_eq!(
            cfg.webhook_secret_source().accepted(),
            ["a-webhook-secret-from-a-file-0123456789"]
        );
    }

    #[test]
    fn leader_election_is_off_by_default_and_its_durations_are_checked() {
        let cfg = load("").unwrap();
        assert_eq!(cfg.leader_election, LeaderElectionSettings::default());
        assert!(!cfg.leader_election.enabled);

        let cfg = load(
            "leaderElection: {enabled: true, leaseName: tkgops-prod, namespace: ops, \
             leaseDuration: 20s, renewDeadline: 12s, retryPeriod: 500ms}\n",
        )
        .unwrap();
        let le = &cfg.leader_election;
        assert_eq!(le.lease_name, "tkgops-prod");
        assert_eq!(le.namespace.as_deref(), Some("ops"));
        assert_eq!(le.lease_duration, Duration::from_secs(20));
        assert_eq!(le.renew_deadline, Duration::from_secs(12));
        assert_eq!(le.retry_period, Duration::from_millis(500));

        // The holder must stop before a standby may take over.
        let e = load("leaderElection: {enabled: true, leaseDuration: 10s, renewDeadline: 10s}\n")
            .unwrap_err();
        assert!(e.to_string().contains("renewDeadline"), "{e}");
        let e = load("leaderElection: {enabled: true, leaseDuration: 1500ms, renewDeadline: 1s, retryPeriod: 200ms}\n")
            .unwrap_err();
        assert!(e.to_string().contains("whole seconds"), "{e}");
        // Unknown keys are errors, as everywhere in the file.
        let e = load("leaderElection: {enabled: true, leaseDurationSeconds: 15}\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}

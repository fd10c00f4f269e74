//! Launcher for moto's EC2 server on loopback (used by the sandbox and the tests).
//!
//! moto (<https://github.com/getmoto/moto>, pinned to `moto[server,ec2]==5.2.1` by
//! `scripts/setup-venv.sh`) emulates the EC2 Query API closely enough for aws-sdk-ec2: see
//! `docs/moto-ec2.md` for the calls verified against it. [`MotoServer::start`] finds the
//! `moto_server` executable, runs it on a free `127.0.0.1` port and waits until it answers;
//! [`seed_vpc`] creates a VPC with one private and one public subnet per availability zone.
//!
//! moto accepts any credentials; [`MotoServer::credentials`] returns the conventional dummy pair
//! (`testing`/`testing`), which is not a secret.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use ipnet::Ipv4Net;
use tokio::process::{Child, Command};

/// Environment variable naming the `moto_server` executable to use (overrides every lookup).
pub const MOTO_SERVER_ENV: &str = "TKGOPS_MOTO_SERVER";

/// How long [`MotoServer::start`] waits for moto to answer `GET /moto-api/`: 30 s.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Prefix of [`MotoError::NotReady`] reasons for a process that exited during startup.
const EXITED: &str = "process exited";

/// The hint added to every "moto not found / not starting" error.
const SETUP_HINT: &str = "run scripts/setup-venv.sh (creates .venv with moto[server,ec2]==5.2.1), \
     or set TKGOPS_MOTO_SERVER to a moto_server executable";

/// Why moto could not be started, reset or seeded.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    /// No `moto_server` executable was found (env var, `.venv`, `PATH`).
    #[error("moto_server not found (looked at ${env}, .venv/bin/moto_server above {searched}, and PATH); {hint}",
        env = MOTO_SERVER_ENV, hint = SETUP_HINT)]
    NotFound {
        /// The directories whose ancestors were searched for `.venv`, comma-separated.
        searched: String,
    },
    /// The executable exists but could not be spawned.
    #[error("cannot spawn {path}: {source}; {hint}", hint = SETUP_HINT)]
    Spawn {
        /// The executable.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// moto exited or did not answer `GET /moto-api/` within [`STARTUP_TIMEOUT`].
    #[error("moto_server ({path}) did not become ready on {endpoint}: {reason}; log tail: {log_tail}; {hint}",
        hint = SETUP_HINT)]
    NotReady {
        /// The executable.
        path: String,
        /// The endpoint it was started on.
        endpoint: String,
        /// What happened (exit status or timeout).
        reason: String,
        /// The last lines of moto's output.
        log_tail: String,
    },
    /// Local I/O failed (picking a port, creating the log file).
    #[error("moto launcher I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An HTTP call to moto's control API (`/moto-api/...`) failed.
    #[error("moto control API {what} failed: {message}")]
    Control {
        /// The call (e.g. `POST /moto-api/reset`).
        what: String,
        /// The error or the unexpected status.
        message: String,
    },
    /// An EC2 call made by [`seed_vpc`] failed.
    #[error("seeding EC2 in moto: {op} failed: {message}")]
    Seed {
        /// The EC2 operation (e.g. `CreateSubnet`).
        op: &'static str,
        /// The SDK error, without credentials.
        message: String,
    },
    /// Invalid input to [`seed_vpc`] (CIDR that cannot be carved, no AZs).
    #[error("seed_vpc: {0}")]
    InvalidSeed(String),
}

/// A running `moto_server` child process on `127.0.0.1`.
///
/// The process is killed when the value is dropped (`kill_on_drop`) or by [`MotoServer::stop`].
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
    http: reqwest::Client,
    // Keeps moto's log file alive (deleted on drop).
    _log: tempfile::NamedTempFile,
    // moto's request recording (`MOTO_ENABLE_RECORDING`), read by `MotoServer::actions_sent_by`.
    recording: tempfile::NamedTempFile,
}

impl MotoServer {
    /// Finds `moto_server` (see [`find_moto_server`]), starts it on a free loopback port and
    /// waits (at most [`STARTUP_TIMEOUT`]) until `GET /moto-api/` answers.
    ///
    /// Returns the running server. Errors: [`MotoError::NotFound`] (with the hint to run
    /// `scripts/setup-venv.sh`), [`MotoError::Spawn`], [`MotoError::NotReady`] (with moto's
    /// log tail), [`MotoError::Io`]. A process exiting during startup (e.g. its port was taken
    /// between picking and binding) is retried (3 attempts); a timeout is not.
    pub async fn start() -> Result<MotoServer, MotoError> {
        let path = find_moto_server()?;
        tkgops_providers::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| MotoError::Control {
                what: "client setup".into(),
                message: e.to_string(),
            })?;
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(&path, http.clone()).await {
                Ok(server) => return Ok(server),
                // Only an early exit (e.g. the port was taken after we picked it) is worth a retry.
                Err(MotoError::NotReady {
                    path,
                    endpoint,
                    reason,
                    log_tail,
                }) if reason.starts_with(EXITED) => {
                    last = Some(MotoError::NotReady {
                        path,
                        endpoint,
                        reason,
                        log_tail,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| MotoError::Control {
            what: "start".into(),
            message: "no attempt made".into(),
        }))
    }

    async fn start_once(path: &Path, http: reqwest::Client) -> Result<MotoServer, MotoError> {
        let port = free_port()?;
        let log = tempfile::Builder::new()
            .prefix("tkgops-moto-")
            .suffix(".log")
            .tempfile()?;
        let stdout = log.reopen()?;
        let stderr = log.reopen()?;
        let recording = tempfile::Builder::new()
            .prefix("tkgops-moto-")
            .suffix(".recording")
            .tempfile()?;
        let child = Command::new(path)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_RECORDING", "True")
            .env("MOTO_RECORDER_FILEPATH", recording.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| MotoError::Spawn {
                path: path.display().to_string(),
                source,
            })?;
        let mut server = MotoServer {
            child,
            port,
            http,
            _log: log,
            recording,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let probe = format!("{}/moto-api/", server.endpoint_url());
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(server.not_ready(path, format!("{EXITED} with {status}")));
            }
            if let Ok(resp) = server.http.get(&probe).send().await {
                if resp.status().is_success() {
                    tracing::debug!(port, "moto_server ready");
                    return Ok(server);
                }
            }
            if Instant::now() >= deadline {
                let _ = server.child.kill().await;
                return Err(server.not_ready(
                    path,
                    format!(
                        "no answer to GET /moto-api/ within {} s",
                        STARTUP_TIMEOUT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn not_ready(&self, path: &Path, reason: String) -> MotoError {
        let text = std::fs::read_to_string(self._log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join(" | ");
        MotoError::NotReady {
            path: path.display().to_string(),
            endpoint: self.endpoint_url(),
            reason,
            log_tail: if tail.is_empty() {
                "(empty)".into()
            } else {
                tail
            },
        }
    }

    /// The server's base URL, `http://127.0.0.1:<port>` (no trailing slash); pass it as the
    /// EC2 `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port moto listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Dummy static credentials moto accepts (`testing`/`testing`; not a secret).
    pub fn credentials() -> Credentials {
        Credentials::new("testing", "testing", None, None, "moto")
    }

    /// An EC2 client for `region` pointed at this server, with [`MotoServer::credentials`].
    pub fn ec2_client(&self, region: &str) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .credentials_provider(Self::credentials())
            .endpoint_url(self.endpoint_url())
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }

    /// Resets all of moto's state (`POST /moto-api/reset`; every region and account).
    ///
    /// Errors: [`MotoError::Control`] if the call fails or does not answer 200.
    pub async fn reset(&self) -> Result<(), MotoError> {
        let what = "POST /moto-api/reset";
        let resp = self
            .http
            .post(format!("{}/moto-api/reset", self.endpoint_url()))
            .send()
            .await
            .map_err(|e| MotoError::Control {
                what: what.into(),
                message: e.to_string(),
            })?;
        if !resp.status().is_success() {
            return Err(MotoError::Control {
                what: what.into(),
                message: format!("HTTP {}", resp.status()),
            });
        }
        Ok(())
    }

    /// Every request moto received, in order, from its own request recording
    /// (`MOTO_ENABLE_RECORDING`), as [`RecordedRequest`]s.
    ///
    /// Errors: [`MotoError::Io`] when the recording cannot be read; lines that are not JSON
    /// are skipped.
    pub fn recorded(&self) -> Result<Vec<RecordedRequest>, MotoError> {
        use base64::Engine as _;
        let text = std::fs::read_to_string(self.recording.path())?;
        let mut out = Vec::new();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let header = |name: &str| {
                entry["headers"].as_object().and_then(|h| {
                    h.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .and_then(|(_, v)| v.as_str())
                        .map(str::to_string)
                })
            };
            let body = entry["body"].as_str().unwrap_or("");
            let body = if entry["body_encoded"].as_bool() == Some(true) {
                base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default()
            } else {
                body.to_string()
            };
            let params: Vec<(String, String)> =
                serde_urlencoded::from_str(&body).unwrap_or_default();
            let access_key_id = header("authorization").and_then(|a| {
                a.split("Credential=")
                    .nth(1)
                    .and_then(|c| c.split('/').next())
                    .map(str::to_string)
            });
            out.push(RecordedRequest {
                user_agent: header("user-agent").unwrap_or_default(),
                access_key_id,
                params,
            });
        }
        Ok(out)
    }

    /// The AWS API actions (`ec2:DescribeSubnets`, …) of the requests moto received from
    /// clients whose User-Agent names `app/<app>` (the SDK's app name; tkgops sends
    /// [`tkgops_providers::aws::APP_NAME`]), from [`MotoServer::recorded`]. The seeding and the
    /// tests' own clients send no app name, so they are not counted.
    ///
    /// Errors: as [`MotoError::Io`].
    pub fn actions_sent_by(
        &self,
        app: &str,
    ) -> Result<std::collections::BTreeSet<String>, MotoError> {
        Ok(self
            .recorded()?
            .iter()
            .filter(|r| r.from_app(app))
            .filter_map(RecordedRequest::action)
            .collect())
    }

    /// Kills the process and waits for it to exit. Never fails (a process that already exited
    /// is fine).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Locates the `moto_server` executable.
///
/// Order: the path in `$TKGOPS_MOTO_SERVER`; `.venv/bin/moto_server` in the current directory or
/// any ancestor, then in this crate's manifest directory or any ancestor; `moto_server` on
/// `PATH`. Returns the path. Errors: [`MotoError::NotFound`] with the hint to run
/// `scripts/setup-venv.sh`.
pub fn find_moto_server() -> Result<PathBuf, MotoError> {
    if let Some(p) = std::env::var_os(MOTO_SERVER_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for root in &roots {
        for dir in root.ancestors() {
            let candidate = dir.join(".venv").join("bin").join("moto_server");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("moto_server");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(MotoError::NotFound {
        searched: roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

fn free_port() -> Result<u16, MotoError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// A VPC created by [`seed_vpc`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeededVpc {
    /// The VPC id (`vpc-…`).
    pub vpc_id: String,
    /// The VPC's IPv4 CIDR, as given.
    pub cidr: String,
    /// One private subnet per AZ, in the order of `azs`.
    pub private_subnet_ids: Vec<String>,
    /// One public subnet per AZ, in the order of `azs`.
    pub public_subnet_ids: Vec<String>,
    /// The AZs, as given.
    pub azs: Vec<String>,
}

/// Creates a VPC with IPv4 `cidr` and, for each AZ in `azs`, one private and one public subnet
/// (sandbox and test helper; no tags are set).
///
/// The subnets are carved from `cidr` in order with a prefix 4 bits longer than the VPC's
/// (a /16 gives /20s; at most /28): AZ *i* gets block 2*i* (private) and 2*i*+1 (public), so at
/// most 8 AZs fit. Returns the ids. Errors: [`MotoError::InvalidSeed`] for an unparsable
/// CIDR, no AZs or too many AZs; [`MotoError::Seed`] if an EC2 call fails.
pub async fn seed_vpc(
    client: &aws_sdk_ec2::Client,
    cidr: &str,
    azs: &[&str],
) -> Result<SeededVpc, MotoError> {
    let net: Ipv4Net = cidr
        .parse()
        .map_err(|_| MotoError::InvalidSeed(format!("not an IPv4 CIDR: {cidr}")))?;
    if azs.is_empty() {
        return Err(MotoError::InvalidSeed("at least one AZ is required".into()));
    }
    let sub_prefix = (net.prefix_len() + 4).min(28);
    let blocks: Vec<Ipv4Net> = net
        .subnets(sub_prefix)
        .map_err(|e| {
            MotoError::InvalidSeed(format!("cannot carve /{sub_prefix}s from {cidr}: {e}"))
        })?
        .take(azs.len() * 2)
        .collect();
    if blocks.len() < azs.len() * 2 {
        return Err(MotoError::InvalidSeed(format!(
            "{cidr} is too small for {} AZs",
            azs.len()
        )));
    }
    let vpc = client
        .create_vpc()
        .cidr_block(cidr)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Vpc)
                .tags(Tag::builder().key("Name").value("tkgops-seeded").build())
                .build(),
        )
        .send()
        .await
        .map_err(|e| seed_err("CreateVpc", e))?;
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .ok_or_else(|| MotoError::Seed {
            op: "CreateVpc",
            message: "no VPC id in the answer".into(),
        })?
        .to_string();
    let mut private_subnet_ids = Vec::new();
    let mut public_subnet_ids = Vec::new();
    for (i, az) in azs.iter().enumerate() {
        for (public, block) in [(false, blocks[2 * i]), (true, blocks[2 * i + 1])] {
            let out = client
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block(block.to_string())
                .availability_zone(*az)
                .send()
                .await
                .map_err(|e| seed_err("CreateSubnet", e))?;
            let id = out
                .subnet()
                .and_then(|s| s.subnet_id())
                .ok_or_else(|| MotoError::Seed {
                    op: "CreateSubnet",
                    message: "no subnet id in the answer".into(),
                })?
                .to_string();
            if public {
                public_subnet_ids.push(id);
            } else {
                private_subnet_ids.push(id);
            }
        }
    }
    Ok(SeededVpc {
        vpc_id,
        cidr: cidr.to_string(),
        private_subnet_ids,
        public_subnet_ids,
        azs: azs.iter().map(|s| s.to_string()).collect(),
    })
}

fn seed_err<E>(
    op: &'static str,
    e: aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
) -> MotoError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = match e.as_service_error().and_then(|s| s.code()) {
        Some(code) => format!(
            "{code}: {}",
            e.as_service_error().and_then(|s| s.message()).unwrap_or("")
        ),
        None => DisplayErrorContext(&e).to_string(),
    };
    MotoError::Seed { op, message }
}

/// One request moto recorded (see [`MotoServer::recorded`]).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The `User-Agent` header.
    pub user_agent: String,
    /// The access key ID of its SigV4 `Authorization` header, if signed.
    pub access_key_id: Option<String>,
    /// The form parameters of its body (EC2 and STS are query APIs: `Action`, `RoleArn`, …).
    pub params: Vec<(String, String)>,
}

impl RecordedRequest {
    /// Whether the request came from a client with SDK app name `app` (`app/<app>` in the
    /// User-Agent).
    pub fn from_app(&self, app: &str) -> bool {
        let marker = format!("app/{app}");
        self.user_agent.split(' ').any(|p| p == marker)
    }

    /// Whether tkgops (SDK app name [`tkgops_providers::aws::APP_NAME`]) sent EC2 action
    /// `action` (e.g. `CreateTags`) naming `resource` (a subnet id) in a `ResourceId.N`
    /// parameter: what the exactly-once audits count.
    pub fn is_tkgops_action_on(&self, action: &str, resource: &str) -> bool {
        self.from_app(tkgops_providers::aws::APP_NAME)
            && self.param("Action") == Some(action)
            && self
                .params
                .iter()
                .any(|(k, v)| k.starts_with("ResourceId.") && v == resource)
    }

    /// The value of form parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The action as IAM names it, `ec2:<Action>` or `sts:<Action>` (moto serves every
    /// service on one endpoint; tkgops calls EC2 and STS).
    pub fn action(&self) -> Option<String> {
        let action = self.param("Action")?;
        let service = if action.starts_with("AssumeRole") || action == "GetCallerIdentity" {
            "sts"
        } else {
            "ec2"
        };
        Some(format!("{service}:{action}"))
    }
}

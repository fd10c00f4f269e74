//! Provider: AWS EC2 (step kinds `aws.preflight` and `aws.remove-subnet-tags`).
//!
//! [`AwsExecutor`] checks a cluster request against the real AWS account before anything is
//! created (region, availability zones, instance types, VPC and subnets, CIDR overlaps) and tags
//! the subnets of a bring-your-own VPC the way Cluster API Provider AWS expects. See
//! [`preflight`] for the checks and their sources. After the cluster is deleted,
//! `aws.remove-subnet-tags` ([`untag`]) removes the cluster's tag again. It is tested against moto's EC2 server on
//! loopback (the sandbox's moto launcher).
//!
//! Credentials come from the default AWS chain (environment, profile, web identity, ECS, IMDS)
//! unless [`AwsExecutor::with_credentials`] sets static ones; they never appear in logs, errors
//! or step outputs.

pub mod error;
pub mod preflight;
pub mod untag;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};

use tkgops_domain::executor::{StepContext, StepError};
use tkgops_domain::request::AwsIdentity;

pub use tkgops_domain::output::{AwsPreflightOutput, AwsRemoveSubnetTagsOutput};
pub use tkgops_domain::step::AwsPreflightInputs;

/// Region whose EC2 endpoint lists the regions when the requested region's endpoint cannot be
/// reached (a region that does not exist has no endpoint): `us-east-1`.
pub const FALLBACK_REGION: &str = "us-east-1";

/// TCP connect timeout of EC2 clients built here: 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeout of one HTTP attempt of an EC2 call: 30 s (the engine bounds the whole step).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The SDK app name tkgops's AWS clients send (`app/tkgops` in the User-Agent).
pub const APP_NAME: &str = "tkgops";

/// Builds an EC2 client for `region` (e.g. `us-west-2`), optionally pointed at `endpoint_url`
/// (e.g. moto's `http://127.0.0.1:PORT`).
///
/// Configuration: `aws_config::defaults(BehaviorVersion::latest())` with the region, standard
/// retry mode (3 attempts, the SDK's throttling backoff), [`CONNECT_TIMEOUT`] and
/// [`ATTEMPT_TIMEOUT`]. Credentials come from the default chain (`AWS_ACCESS_KEY_ID`/
/// `AWS_SECRET_ACCESS_KEY`, profile, web identity, ECS, IMDS); `AWS_ENDPOINT_URL(_EC2)` is
/// honoured by aws-config when `endpoint_url` is `None`. Never fails: missing credentials
/// surface as errors of the first call.
pub async fn ec2_client(region: &str, endpoint_url: Option<&str>) -> aws_sdk_ec2::Client {
    build_client(region, endpoint_url, None, None).await
}

async fn build_client(
    region: &str,
    endpoint_url: Option<&str>,
    credentials: Option<&Credentials>,
    identity: Option<&AwsIdentity>,
) -> aws_sdk_ec2::Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        // `app/tkgops` in every request's User-Agent: what CloudTrail shows, and how the
        // sandbox tells tkgops's calls from its own.
        .app_name(aws_config::AppName::new(APP_NAME).expect("a valid app name"))
        .region(Region::new(region.to_string()))
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        );
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(creds) = credentials {
        loader = loader.credentials_provider(creds.clone());
    }
    let conf = loader.load().await;
    let Some(identity) = identity else {
        return aws_sdk_ec2::Client::new(&conf);
    };
    // The management cluster's role, assumed with the base identity (STS AssumeRole, session
    // name `tkgops`); the SDK's identity cache refreshes the credentials before they expire.
    let mut role = aws_config::sts::AssumeRoleProvider::builder(identity.role_arn.clone())
        .session_name(APP_NAME)
        .region(Region::new(
            identity
                .region
                .clone()
                .unwrap_or_else(|| region.to_string()),
        ))
        .configure(&conf);
    if let Some(id) = &identity.external_id {
        role = role.external_id(id.clone());
    }
    let role = role.build().await;
    let conf = conf
        .into_builder()
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(role))
        .build();
    aws_sdk_ec2::Client::from_conf(aws_sdk_ec2::config::Builder::from(&conf).build())
}

/// Executes `aws.preflight` and `aws.remove-subnet-tags` steps. Caches one EC2 client per
/// region.
pub struct AwsExecutor {
    endpoint_url: Option<String>,
    credentials: Option<Credentials>,
    /// One client per (region, role assumed): `None` for the bot's own identity.
    clients: tokio::sync::Mutex<HashMap<(String, Option<AwsIdentity>), aws_sdk_ec2::Client>>,
}

impl std::fmt::Debug for AwsExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsExecutor")
            .field("endpoint_url", &self.endpoint_url)
            .field("static_credentials", &self.credentials.is_some())
            .finish()
    }
}

impl AwsExecutor {
    /// An executor whose EC2 clients use `endpoint_url` (e.g. moto's; `None` = AWS's regional
    /// endpoints or `AWS_ENDPOINT_URL`) and the default credential chain.
    pub fn new(endpoint_url: Option<String>) -> Self {
        AwsExecutor {
            endpoint_url,
            credentials: None,
            clients: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Uses static `credentials` instead of the default chain (sandbox and tests; e.g.
    /// `MotoServer::credentials()`). Takes and returns the executor (builder style).
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The endpoint override, if any.
    pub fn endpoint_url(&self) -> Option<&str> {
        self.endpoint_url.as_deref()
    }

    /// The cached EC2 client for `region`, built on first use (see [`ec2_client`]), with the
    /// bot's own identity.
    pub async fn client(&self, region: &str) -> aws_sdk_ec2::Client {
        self.client_as(region, None).await
    }

    /// The cached EC2 client for `region` acting as `identity` (the management cluster's role,
    /// assumed through STS with the bot's own identity; `None`: the bot's own identity). The
    /// role is assumed on the first call, not here.
    pub async fn client_as(
        &self,
        region: &str,
        identity: Option<&AwsIdentity>,
    ) -> aws_sdk_ec2::Client {
        let key = (region.to_string(), identity.cloned());
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return c.clone();
        }
        let c = build_client(
            region,
            self.endpoint_url.as_deref(),
            self.credentials.as_ref(),
            identity,
        )
        .await;
        clients.insert(key, c.clone());
        c
    }
}

/// The AWS step kinds, one method each (what the bot's executor table routes to).
impl AwsExecutor {
    /// Runs one attempt of `aws.preflight`: [`preflight::run`] on `inputs` with the cached
    /// client of `inputs.region` (and of [`FALLBACK_REGION`] for the region list).
    ///
    /// Errors: [`StepError::Permanent`] for empty inputs or a failed check (message names the
    /// check and the value); [`StepError::Transient`] for throttling, 5xx, timeouts and
    /// connection errors.
    pub async fn preflight(
        &self,
        ctx: &StepContext,
        inputs: &AwsPreflightInputs,
    ) -> Result<AwsPreflightOutput, StepError> {
        let identity = inputs.identity.as_ref();
        let client = self.client_as(&inputs.region, identity).await;
        let fallback = if inputs.region == FALLBACK_REGION {
            None
        } else {
            Some(self.client_as(FALLBACK_REGION, identity).await)
        };
        preflight::run(&client, fallback.as_ref(), inputs, &ctx.progress)
            .await
            .map_err(|e| as_role(e, identity))
    }

    /// Runs one attempt of `aws.remove-subnet-tags`: [`untag::run`] on `inputs` with the
    /// cached client of `inputs.region`.
    ///
    /// Errors: as [`untag::run`].
    pub async fn remove_subnet_tags(
        &self,
        ctx: &StepContext,
        inputs: &AwsPreflightInputs,
    ) -> Result<AwsRemoveSubnetTagsOutput, StepError> {
        let identity = inputs.identity.as_ref();
        let client = self.client_as(inputs.region.trim(), identity).await;
        untag::run(&client, inputs, &ctx.progress)
            .await
            .map_err(|e| as_role(e, identity))
    }
}

/// `e`, saying which role the calls were made as when one was assumed (a refused
/// `AssumeRole` surfaces as the first EC2 call's credentials error).
fn as_role(e: StepError, identity: Option<&AwsIdentity>) -> StepError {
    let Some(id) = identity else { return e };
    let with = |m: String| format!("{m} (as role {})", id.role_arn);
    match e {
        StepError::Permanent(m) => StepError::Permanent(with(m)),
        StepError::Transient(m) => StepError::Transient(with(m)),
    }
}

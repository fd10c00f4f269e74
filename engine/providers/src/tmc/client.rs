//! The TMC REST client: CSP API-token exchange with a cached access token, and the cluster
//! endpoints (TMC-TF `internal/client/cluster/cluster_resource.go`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use super::models::Cluster;
use super::{FullName, SecretToken, TmcError};

/// Path of the CSP API-token exchange (TMC-TF `internal/authctx/saas.go`).
const AUTHORIZE_PATH: &str = "csp/gateway/am/api/auth/api-tokens/authorize";
/// Connect timeout of every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Overall timeout of every request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how to reach TMC.
#[derive(Clone, Debug)]
pub struct TmcSettings {
    /// TMC base URL, e.g. `https://org.tmc.cloud.vmware.com` (TMC-TF env `TMC_ENDPOINT`).
    pub endpoint: String,
    /// CSP base URL, e.g. `https://console.tanzu.broadcom.com` (TMC-TF's default since commit
    /// 612b0fc1, 2024-09; `https://console.cloud.vmware.com` before; docs/tanzu-apis.md §3.1).
    pub csp_endpoint: String,
    /// The CSP API (refresh) token (TMC-TF env `VMW_CLOUD_API_TOKEN`).
    pub api_token: SecretToken,
}

struct CachedToken {
    access: SecretToken,
    /// When to stop using it: CSP's `expires_in` minus a safety margin.
    refresh_at: Instant,
}

/// A TMC REST client. Exchanges the CSP API token for an access token on first use, caches it
/// until shortly before `expires_in`, and on a 401 re-exchanges once and retries the request.
/// Does not retry anything else: the step engine retries transient errors.
pub struct TmcClient {
    http: reqwest::Client,
    endpoint: Url,
    csp_endpoint: Url,
    api_token: SecretToken,
    token: tokio::sync::Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for TmcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TmcClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("csp_endpoint", &self.csp_endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// CSP's token response (TMC-TF `saas.go` `tokenResponse`); only the fields used.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretToken,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// grpc-gateway error body (TMC-TF `grpc_gateway_runtime_error.go`), CSP error body fields too.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorBody {
    code: Option<i32>,
    error: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct ClusterEnvelope {
    cluster: Option<Cluster>,
}

#[derive(Deserialize)]
struct ClusterList {
    #[serde(default)]
    clusters: Vec<Cluster>,
}

fn parse_base(what: &str, s: &str) -> Result<Url, TmcError> {
    let url = Url::parse(s.trim())
        .map_err(|e| TmcError::Config(format!("{what} {s:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(TmcError::Config(format!(
            "{what} {s:?} must be an http(s) URL"
        )));
    }
    Ok(url)
}

/// `base` joined with path `segments` (each percent-encoded).
fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    if let Ok(mut p) = url.path_segments_mut() {
        p.pop_if_empty().extend(segments);
    }
    url
}

/// A reqwest error as text without its URL (the URL may carry a secret, e.g. the installer id).
fn transport(e: reqwest::Error) -> TmcError {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if timeout && !msg.contains("timed out") {
        msg.push_str(" (timed out)");
    }
    TmcError::Transport(msg)
}

/// A JSON decoding error without the offending value (it could be a token or the installer link).
fn decode_err(what: &str, e: &serde_json::Error) -> TmcError {
    TmcError::Decode(format!(
        "{what}: {:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    ))
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Maps a non-200 TMC answer to a [`TmcError`] by HTTP status (grpc code from the body).
fn classify(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> TmcError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let message = parsed
        .message
        .filter(|m| !m.is_empty())
        .or(parsed.error.filter(|m| !m.is_empty()))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text.chars().take(300).collect()
            }
        });
    let code = parsed.code;
    match status.as_u16() {
        400 => TmcError::InvalidArgument {
            code: code.unwrap_or(3),
            message,
        },
        401 => TmcError::Unauthenticated {
            code: code.unwrap_or(16),
            message,
        },
        404 => TmcError::NotFound {
            code: code.unwrap_or(5),
            message,
        },
        409 if code == Some(crate::tmc::GRPC_ABORTED) => TmcError::Conflict {
            code: crate::tmc::GRPC_ABORTED,
            message,
        },
        409 => TmcError::AlreadyExists {
            code: code.unwrap_or(6),
            message,
        },
        s => TmcError::Api {
            status: s,
            code,
            message,
            retry_after,
        },
    }
}

impl TmcClient {
    /// A client for `settings`. No network I/O happens until the first call.
    ///
    /// Errors: [`TmcError::Config`] when an endpoint is not an http(s) URL, the API token is
    /// empty, or the HTTP client cannot be built.
    pub fn new(settings: TmcSettings) -> Result<Self, TmcError> {
        crate::install_crypto_provider();
        let endpoint = parse_base("TMC endpoint", &settings.endpoint)?;
        let csp_endpoint = parse_base("CSP endpoint", &settings.csp_endpoint)?;
        if settings.api_token.expose().trim().is_empty() {
            return Err(TmcError::Config("the TMC API token is empty".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("tkgops/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                TmcError::Config(format!("cannot build the HTTP client: {}", e.without_url()))
            })?;
        Ok(TmcClient {
            http,
            endpoint,
            csp_endpoint,
            api_token: settings.api_token,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// Exchanges the API token at CSP: `POST <csp>/csp/gateway/am/api/auth/api-tokens/authorize`
    /// with the form body `refresh_token=<API token>` (TMC-TF `internal/authctx/saas.go`).
    async fn exchange(&self) -> Result<CachedToken, TmcError> {
        let url = join(
            &self.csp_endpoint,
            &AUTHORIZE_PATH.split('/').collect::<Vec<_>>(),
        );
        let resp = self
            .http
            .post(url)
            .header(ACCEPT, "application/json")
            .form(&[("refresh_token", self.api_token.expose())])
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport)?;
        if status != StatusCode::OK {
            let parsed: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
            let message = parsed
                .message
                .or(parsed.error)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
            return Err(TmcError::TokenExchange {
                status: status.as_u16(),
                message,
            });
        }
        let tr: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| decode_err("CSP token response", &e))?;
        if tr.access_token.is_empty() {
            return Err(TmcError::Decode(
                "CSP token response has an empty access_token".into(),
            ));
        }
        // CSP issues 1799 s tokens; refresh a little early (a tenth of the lifetime, at most 60 s).
        let ttl = Duration::from_secs(tr.expires_in.unwrap_or(1799));
        let margin = (ttl / 10).min(Duration::from_secs(60));
        Ok(CachedToken {
            access: tr.access_token,
            refresh_at: Instant::now() + ttl - margin,
        })
    }

    /// The cached access token, exchanged anew when absent, expiring, or equal to `rejected`
    /// (a token TMC just answered 401 to).
    async fn access_token(&self, rejected: Option<&SecretToken>) -> Result<SecretToken, TmcError> {
        let mut slot = self.token.lock().await;
        if let Some(cached) = slot.as_ref() {
            let stale = Instant::now() >= cached.refresh_at
                || rejected.is_some_and(|r| *r == cached.access);
            if !stale {
                return Ok(cached.access.clone());
            }
        }
        *slot = None;
        let fresh = self.exchange().await?;
        let access = fresh.access.clone();
        *slot = Some(fresh);
        Ok(access)
    }

    /// Sends an authenticated request; on 401 re-exchanges the token once and retries.
    /// Returns the body of a 200 answer.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<bytes::Bytes, TmcError> {
        let mut rejected: Option<SecretToken> = None;
        loop {
            let token = self.access_token(rejected.as_ref()).await?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose())
                .header(ACCEPT, "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status();
            let ra = retry_after(&resp);
            let bytes = resp.bytes().await.map_err(transport)?;
            if status == StatusCode::OK {
                return Ok(bytes);
            }
            if status == StatusCode::UNAUTHORIZED && rejected.is_none() {
                tracing::debug!(%method, path = url.path(), "TMC answered 401; re-exchanging the API token");
                rejected = Some(token);
                continue;
            }
            return Err(classify(status, &bytes, ra));
        }
    }

    fn cluster_url(&self, full_name: &FullName) -> Url {
        let mut url = join(&self.endpoint, &["v1alpha1", "clusters", &full_name.name]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair(
                "fullName.managementClusterName",
                &full_name.management_cluster_name,
            );
            q.append_pair("fullName.provisionerName", &full_name.provisioner_name);
            if let Some(org) = full_name.org_id.as_deref().filter(|o| !o.is_empty()) {
                q.append_pair("fullName.orgId", org);
            }
        }
        url
    }

    fn decode_cluster(body: &[u8]) -> Result<Cluster, TmcError> {
        let env: ClusterEnvelope =
            serde_json::from_slice(body).map_err(|e| decode_err("cluster envelope", &e))?;
        env.cluster
            .ok_or_else(|| TmcError::Decode("response has no \"cluster\" object".into()))
    }

    /// `GET /v1alpha1/clusters/{name}?fullName.managementClusterName=…&fullName.provisionerName=…`
    /// (TMC-TF `cluster_resource.go` `ManageV1alpha1ClusterResourceServiceGet`).
    ///
    /// Returns `Ok(None)` on 404 (the GET of GET-before-POST).
    /// Errors: [`TmcError`] for every other non-200 answer, transport and decoding failures.
    pub async fn get_cluster(&self, full_name: &FullName) -> Result<Option<Cluster>, TmcError> {
        match self
            .call(Method::GET, self.cluster_url(full_name), None)
            .await
        {
            Ok(body) => Self::decode_cluster(&body).map(Some),
            Err(TmcError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1alpha1/clusters` → every cluster of the org (`{clusters:[…],totalCount}`, SIVT
    /// `tmc_api_constants.py`).
    ///
    /// Errors: [`TmcError`] for non-200 answers, transport and decoding failures.
    pub async fn list_clusters(&self) -> Result<Vec<Cluster>, TmcError> {
        let body = self
            .call(
                Method::GET,
                join(&self.endpoint, &["v1alpha1", "clusters"]),
                None,
            )
            .await?;
        let list: ClusterList =
            serde_json::from_slice(&body).map_err(|e| decode_err("cluster list", &e))?;
        Ok(list.clusters)
    }

    /// `POST /v1alpha1/clusters` with `{"cluster":{fullName, meta{description, labels},
    /// spec{clusterGroupName}}}` (TMC-TF `cluster_resource.go` `ManageV1alpha1ClusterResourceServiceCreate`).
    /// An empty `cluster_group` or `description` is omitted (TMC defaults the group to `default`).
    ///
    /// Returns the created cluster, whose `status.installerLink` is the attach manifest URL.
    /// Errors: [`TmcError::AlreadyExists`] when the full name is taken,
    /// [`TmcError::InvalidArgument`] for an invalid name, other [`TmcError`]s as usual.
    pub async fn create_cluster(
        &self,
        full_name: &FullName,
        cluster_group: &str,
        description: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Cluster, TmcError> {
        let mut meta = json!({ "labels": labels });
        if !description.is_empty() {
            meta["description"] = json!(description);
        }
        let mut spec = json!({});
        if !cluster_group.is_empty() {
            spec["clusterGroupName"] = json!(cluster_group);
        }
        let body = json!({"cluster": {"fullName": full_name, "meta": meta, "spec": spec}});
        let resp = self
            .call(
                Method::POST,
                join(&self.endpoint, &["v1alpha1", "clusters"]),
                Some(&body),
            )
            .await?;
        Self::decode_cluster(&resp)
    }

    /// `PUT /v1alpha1/clusters/{fullName.name}` with the whole object `{"cluster":{fullName,
    /// meta, spec}}` (TMC-TF `cluster_resource.go` `ManageV1alpha1ClusterResourceServiceUpdate`,
    /// which sends no query parameters; docs/tanzu-apis.md §3.2, §3.3). `cluster` is normally an
    /// object read with [`TmcClient::get_cluster`] and modified: its `meta.resourceVersion`
    /// makes the update conditional. `status` is never sent.
    ///
    /// Returns the updated cluster.
    /// Errors: [`TmcError::Conflict`] when `meta.resourceVersion` is stale,
    /// [`TmcError::NotFound`] when the cluster (or, in the emulator, its cluster group) does not
    /// exist, [`TmcError::InvalidArgument`] for a refused spec, other [`TmcError`]s as usual.
    pub async fn update_cluster(&self, cluster: &Cluster) -> Result<Cluster, TmcError> {
        let body = json!({"cluster": {
            "fullName": cluster.full_name,
            "meta": cluster.meta,
            "spec": cluster.spec,
        }});
        let url = join(
            &self.endpoint,
            &["v1alpha1", "clusters", &cluster.full_name.name],
        );
        let resp = self.call(Method::PUT, url, Some(&body)).await?;
        Self::decode_cluster(&resp)
    }

    /// `DELETE /v1alpha1/clusters/{name}?force=…&fullName…` (TMC-TF `cluster_resource.go`
    /// `ManageV1alpha1ClusterResourceServiceDelete`). TMC then detaches the cluster; poll
    /// [`TmcClient::get_cluster`] until it returns `None`.
    ///
    /// Returns `Ok(())` also when the cluster does not exist (idempotent).
    /// Errors: [`TmcError`] for other non-200 answers and transport failures.
    pub async fn delete_cluster(&self, full_name: &FullName, force: bool) -> Result<(), TmcError> {
        let mut url = self.cluster_url(full_name);
        url.query_pairs_mut()
            .append_pair("force", if force { "true" } else { "false" });
        match self.call(Method::DELETE, url, None).await {
            Ok(_) | Err(TmcError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1alpha1/clusters:manifest/{name}?fullName…` → `{"manifest":"<yaml>"}`: the attach
    /// manifest TMC-TF uses instead of the installer link when the cluster's `spec.proxyName` or
    /// `spec.imageRegistry` is set (TMC-TF `internal/client/cluster/manifest/manifest.go`,
    /// `resource_cluster.go`; docs/tanzu-apis.md §3.3, §3.5 step 3).
    ///
    /// Returns the multi-document YAML text, leading whitespace trimmed.
    /// Errors: [`TmcError::NotFound`] when the cluster does not exist, [`TmcError::Decode`] when
    /// the answer has no `manifest` string, other [`TmcError`]s as usual.
    pub async fn attach_manifest(&self, full_name: &FullName) -> Result<String, TmcError> {
        let mut url = self.cluster_url(full_name);
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop()
                .pop()
                .push("clusters:manifest")
                .push(&full_name.name);
        }
        let body = self.call(Method::GET, url, None).await?;
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| decode_err("attach manifest", &e))?;
        let manifest = v
            .get("manifest")
            .and_then(Value::as_str)
            .ok_or_else(|| TmcError::Decode("response has no \"manifest\" string".into()))?;
        Ok(manifest.trim_start().to_string())
    }

    /// Fetches the attach manifest from a cluster's `status.installerLink` with a plain,
    /// unauthenticated GET and trims leading whitespace (TMC-TF
    /// `internal/resources/cluster/manifest/helper.go` `GetK8sManifest`).
    ///
    /// Returns the multi-document YAML text.
    /// Errors: [`TmcError::Config`] when the link is not an http(s) URL, [`TmcError::NotFound`]
    /// / [`TmcError::Api`] for non-200 answers, [`TmcError::Transport`], [`TmcError::Decode`] when
    /// the body is not UTF-8. Error texts never contain the link.
    pub async fn installer_manifest(&self, installer_link: &str) -> Result<String, TmcError> {
        let url = Url::parse(installer_link.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                TmcError::Config("the cluster's installerLink is not an http(s) URL".into())
            })?;
        let resp = self.http.get(url).send().await.map_err(transport)?;
        let status = resp.status();
        let ra = retry_after(&resp);
        let body = resp.bytes().await.map_err(transport)?;
        if status != StatusCode::OK {
            return Err(classify(status, &body, ra));
        }
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| TmcError::Decode("installer manifest is not UTF-8".into()))?;
        Ok(text.trim_start().to_string())
    }
}

/// The TMC waits' snapshot source: `GET` of one cluster (TMC has no watch API), once at the
/// start and then every poll interval (a `tokio::time::interval`; a late poll delays the next
/// ones rather than bursting). A failed `GET` is a trouble the driver's error budget counts.
pub(super) struct ClusterPoll<'a> {
    client: &'a TmcClient,
    full_name: &'a FullName,
    interval: tokio::time::Interval,
}

impl<'a> ClusterPoll<'a> {
    /// Polls `full_name` through `client` every `every` (at least 1 ms).
    pub(super) fn new(client: &'a TmcClient, full_name: &'a FullName, every: Duration) -> Self {
        let mut interval = tokio::time::interval(every.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first observation is now: the first tick is one period away.
        interval.reset();
        ClusterPoll {
            client,
            full_name,
            interval,
        }
    }
}

#[async_trait::async_trait]
impl crate::wait::Source for ClusterPoll<'_> {
    type Snapshot = Option<Cluster>;

    async fn observe(
        &mut self,
        _progress: &mut crate::wait::Reporter,
    ) -> Result<crate::wait::Observed<Option<Cluster>>, tkgops_domain::executor::StepError> {
        use crate::wait::Observed;
        Ok(match self.client.get_cluster(self.full_name).await {
            Ok(c) => Observed::Snapshot(c),
            Err(e) => Observed::Trouble(e.into()),
        })
    }

    async fn changed(&mut self, until: Option<tokio::time::Instant>) {
        match until {
            Some(u) => {
                tokio::select! {
                    _ = self.interval.tick() => {}
                    _ = tokio::time::sleep_until(u) => {}
                }
            }
            None => {
                self.interval.tick().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_codes() {
        let e = classify(
            StatusCode::CONFLICT,
            br#"{"code":6,"error":"x","message":"dup"}"#,
            None,
        );
        assert_eq!(
            e,
            TmcError::AlreadyExists {
                code: 6,
                message: "dup".into()
            }
        );
        let e = classify(StatusCode::SERVICE_UNAVAILABLE, b"oops", None);
        assert!(e.is_transient());
        let e = classify(
            StatusCode::TOO_MANY_REQUESTS,
            b"{}",
            Some(Duration::from_secs(3)),
        );
        assert!(e.is_transient());
        assert!(!classify(StatusCode::FORBIDDEN, b"{}", None).is_transient());
    }

    #[test]
    fn urls() {
        let base = parse_base("x", "https://org.tmc.example.com/").unwrap();
        let u = join(&base, &["v1alpha1", "clusters", "a b"]);
        assert_eq!(
            u.as_str(),
            "https://org.tmc.example.com/v1alpha1/clusters/a%20b"
        );
        assert!(parse_base("x", "not a url").is_err());
    }

    #[test]
    fn settings_debug_redacts() {
        let s = TmcSettings {
            endpoint: "https://e".into(),
            csp_endpoint: "https://c".into(),
            api_token: SecretToken::new("hunter2"),
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}

//! Provider: Kubernetes (management and workload clusters), through kube-rs.
//!
//! [`KubeProvider`] executes the step kinds
//! - `kube.apply`: server-side apply of Cluster API objects to a management cluster
//!   ([`apply`]);
//! - `kube.wait-cluster`: TKG's cluster readiness algorithm ([`cluster`]; TF
//!   `pkg/v1/tkg/clusterclient/clusterclient.go` and `resource.go`);
//! - `kube.read-kubeconfig`: reads the Cluster API `<cluster>-kubeconfig` Secret and connects to the
//!   workload API server (CAPI `util/secret`);
//! - `packages.rollout`: what `tanzu package install` does, one package after the other
//!   ([`packages`]; TF `tkgpackageclient/package_install.go`, KC status semantics);
//! - `kube.upgrade-cluster`, `kube.resize-cluster`, `kube.wait-control-plane`, `kube.wait-machine-deployments`,
//!   `kube.delete-cluster`: day-2 changes of an existing Cluster ([`rollout`]; what
//!   `tanzu cluster upgrade` does, docs/tkg2-class-based.md §8); deletes carry a `uid`
//!   precondition read in the same attempt;
//! - `kube.check-owner`: the Cluster, when it exists, carries this request's ownership label
//!   ([`rollout::check_owner`]; the delete workflow's first step),
//!
//! and implements [`ManifestApplier`] (used by the TMC provider for the installer manifest).
//!
//! Secrets (kubeconfig contents, Secret data) never appear in logs, errors, step outputs or
//! progress lines: errors about kubeconfigs only name where the kubeconfig came from.

pub mod apply;
pub mod cluster;
pub mod drift;
pub mod extract;
pub mod health;
pub mod packages;
pub mod preflight;
pub mod rollout;
mod watch;

pub use watch::WaitOptions;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use kube::Api;

use crate::{KubeconfigSource, ManifestApplier, WorkloadTarget};
use serde::Deserialize;
use tkgops_domain::executor::{StepContext, StepError};
use tkgops_domain::output::{
    KubeApplyOutput, KubeCheckOwnerOutput, KubeDeleteClusterOutput, KubePreflightOutput,
    KubeReadKubeconfigOutput, KubeResizeClusterOutput, KubeUpgradeClusterOutput,
    KubeWaitClusterOutput, KubeWaitControlPlaneOutput, KubeWaitMachineDeploymentsOutput,
    PackagesRolloutOutput, PackagesUpdateOutput, PackagesVerifyOutput,
};
use tkgops_domain::step::{
    KubeApplyInputs, KubeDeleteInputs, KubePreflightInputs, KubeRolloutInputs, PackagesInputs,
    PackagesUpdateInputs, ResizeClusterInputs, UpgradeClusterInputs,
};
use tkgops_domain::workflow::plan::OWNER_LABEL;

/// The field manager tkgops uses for every server-side apply it makes on its own behalf.
pub const FIELD_MANAGER: &str = "tkgops";

/// Data key of the Cluster API kubeconfig Secret (CAPI `util/secret/consts.go` `KubeconfigDataName`).
pub const KUBECONFIG_SECRET_KEY: &str = "value";

/// Read timeout of every HTTP request to an API server: a request that has not answered in this
/// time is considered a lost connection. Watches ask the server to end them earlier
/// (`timeoutSeconds`, see `watch.rs`) and are re-opened by the watcher.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// How many consecutive transient errors a wait tolerates before it returns
/// [`StepError::Transient`] to the engine: the fifth in a row fails (a shared watch's errors,
/// [`crate::wait::ErrorBudget::kube`]).
pub(crate) const MAX_CONSECUTIVE_POLL_ERRORS: u32 = 5;

/// Executes the Kubernetes step kinds and applies manifests to workload clusters.
///
/// Cheap to clone: all state (configuration, client and discovery caches) is behind an [`Arc`].
#[derive(Clone)]
pub struct KubeProvider {
    inner: Arc<Inner>,
}

struct Inner {
    management_clusters: BTreeMap<String, KubeconfigSource>,
    poll_interval: Duration,
    /// Management clients by management cluster name.
    management: Mutex<HashMap<String, kube::Client>>,
    /// Workload clients by target, with the kubeconfig Secret's `resourceVersion` they were built
    /// from (a rotated kubeconfig gives a new client) and the API server URL.
    /// Workload cluster clients, least recently used first, at most [`WORKLOAD_CLIENTS_MAX`].
    workload: Mutex<indexmap::IndexMap<WorkloadKey, CachedWorkload>>,
    /// Client of the cluster the bot runs in (for [`KubeconfigSource::Secret`]).
    in_cluster: tokio::sync::Mutex<Option<kube::Client>>,
    /// Discovery results by (client cache key, apiVersion, kind).
    discovery: apply::DiscoveryCache,
    /// The shared watches every wait reads ([`watch`]).
    watches: watch::SharedWatches,
    /// Tolerances and timeouts of the waits.
    wait: WaitOptions,
}

type WorkloadKey = (String, String, String);

/// The most workload cluster clients kept (each holds a TLS configuration and a connection
/// pool): more than the upgrades a scheduled wave runs at once, far fewer than a fleet.
const WORKLOAD_CLIENTS_MAX: usize = 64;

#[derive(Clone)]
struct CachedWorkload {
    resource_version: String,
    client: kube::Client,
    server: String,
}

impl std::fmt::Debug for KubeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeProvider")
            .field(
                "management_clusters",
                &self.inner.management_clusters.keys().collect::<Vec<_>>(),
            )
            .field("poll_interval", &self.inner.poll_interval)
            .finish()
    }
}

/// A workload cluster client together with where it came from (no secret material).
#[derive(Clone)]
pub struct WorkloadClient {
    /// The client, authenticated with the credentials of the workload kubeconfig.
    pub client: kube::Client,
    /// The API server URL of the workload cluster (from the kubeconfig's current context).
    pub server: String,
    /// `<namespace>/<cluster>-kubeconfig`: the management-cluster Secret the kubeconfig came from.
    pub secret: String,
}

impl KubeProvider {
    /// A provider for the given management clusters.
    ///
    /// Takes `management_clusters` (management cluster name → where its kubeconfig is, from the
    /// config repository's `tkgops.yaml`) and `poll_interval` (the bot's configured readiness
    /// interval, reported by [`Self::poll_interval`]; waits no longer poll: shared watches wake
    /// them, see [`WaitOptions`] for their timeouts). Makes no network calls; clients and
    /// watches are built lazily and cached.
    pub fn new(
        management_clusters: BTreeMap<String, KubeconfigSource>,
        poll_interval: Duration,
    ) -> Self {
        Self::with_wait_options(management_clusters, poll_interval, WaitOptions::default())
    }

    /// As [`Self::new`], with the waits' tolerances and timeouts `wait` (TKG's by default,
    /// docs/tkg2-class-based.md §6; tests shorten them). Makes no network calls.
    pub fn with_wait_options(
        management_clusters: BTreeMap<String, KubeconfigSource>,
        poll_interval: Duration,
        wait: WaitOptions,
    ) -> Self {
        KubeProvider {
            inner: Arc::new(Inner {
                management_clusters,
                poll_interval,
                management: Mutex::new(HashMap::new()),
                workload: Mutex::new(indexmap::IndexMap::new()),
                in_cluster: tokio::sync::Mutex::new(None),
                discovery: apply::DiscoveryCache::default(),
                watches: watch::SharedWatches::default(),
                wait,
            }),
        }
    }

    /// The readiness interval the provider was built with (informational: waits are woken by
    /// shared watches, not by polls).
    pub fn poll_interval(&self) -> Duration {
        self.inner.poll_interval
    }

    /// The waits' tolerances and timeouts.
    pub fn wait_options(&self) -> &WaitOptions {
        &self.inner.wait
    }

    /// Number of shared watches running (one per API server and resource type in use).
    pub fn shared_watches(&self) -> usize {
        self.inner.watches.count()
    }

    /// A client for the management cluster `name`, built from its [`KubeconfigSource`] and cached:
    /// - `File(path)`: the kubeconfig file at `path` (read at first use);
    /// - `Env(var)`: the whole kubeconfig YAML in environment variable `var`;
    /// - `Secret{namespace, name, key}`: key `key` of that Secret in the cluster the bot runs in
    ///   (in-cluster config, `kube::Client::try_default()`).
    ///
    /// The kubeconfig's current context is used. Building the client makes no request to the
    /// management cluster, so bad credentials show up on first use (401 → Permanent).
    ///
    /// Errors: [`StepError::Permanent`] for an unknown `name`, an unreadable file, a missing
    /// variable or Secret key, or a kubeconfig that does not parse; [`StepError::Transient`] when
    /// the in-cluster API server cannot be reached to read the Secret.
    pub async fn management_client(&self, name: &str) -> Result<kube::Client, StepError> {
        self.management_client_with(name, None).await
    }

    /// As [`Self::management_client`], reaching `name` through `source` when given (the
    /// kubeconfig source recorded in a step's inputs, from the policy the run was approved
    /// under) instead of the provider's configured one. Clients are cached per name and source.
    ///
    /// Errors: as [`Self::management_client`].
    pub async fn management_client_with(
        &self,
        name: &str,
        source: Option<&KubeconfigSource>,
    ) -> Result<kube::Client, StepError> {
        let key = match source {
            Some(s) => format!("{name}#{s:?}"),
            None => name.to_string(),
        };
        if let Some(c) = self.lock_management().get(&key) {
            return Ok(c.clone());
        }
        let configured = self.inner.management_clusters.get(name);
        let source = source.or(configured).ok_or_else(|| {
            let known: Vec<&str> = self
                .inner
                .management_clusters
                .keys()
                .map(String::as_str)
                .collect();
            StepError::Permanent(format!(
                "unknown management cluster '{name}' (configured: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })?;
        let (yaml, origin) = match source {
            KubeconfigSource::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    StepError::Permanent(format!(
                        "management cluster '{name}': cannot read kubeconfig file {path}: {e}"
                    ))
                })?;
                (text, format!("file {path}"))
            }
            KubeconfigSource::Env(var) => {
                let text = std::env::var(var).map_err(|_| {
                    StepError::Permanent(format!(
                        "management cluster '{name}': environment variable {var} (kubeconfig) is not set or not UTF-8"
                    ))
                })?;
                (text, format!("environment variable {var}"))
            }
            KubeconfigSource::Secret {
                namespace,
                name: secret,
                key,
            } => {
                let in_cluster = self.in_cluster_client().await?;
                let what = format!("Secret {namespace}/{secret}");
                let text = read_secret_key(&in_cluster, namespace, secret, key, false)
                    .await
                    .map_err(|e| match e {
                        StepError::Transient(m) => {
                            StepError::Transient(format!("management cluster '{name}': {m}"))
                        }
                        StepError::Permanent(m) => {
                            StepError::Permanent(format!("management cluster '{name}': {m}"))
                        }
                    })?;
                (text, format!("{what} key {key}"))
            }
        };
        let (client, _server) =
            client_from_kubeconfig(&yaml, &format!("management cluster '{name}' ({origin})"))
                .await?;
        self.lock_management().insert(key, client.clone());
        tracing::debug!(management_cluster = name, "built management cluster client");
        Ok(client)
    }

    /// A client for the workload cluster `target`, from the Cluster API Secret
    /// `<cluster_name>-kubeconfig` (key `value`) in `target.namespace` on the management cluster
    /// (tanzu-apis §2.3). Cached per target while the Secret's `resourceVersion` is unchanged.
    ///
    /// Errors: [`StepError::Transient`] when the Secret does not exist yet (Cluster API writes it
    /// once the control plane is initialized) or the management cluster is unreachable;
    /// [`StepError::Permanent`] when the Secret has no `value` key or the kubeconfig does not parse.
    pub async fn workload_client(
        &self,
        target: &WorkloadTarget,
    ) -> Result<kube::Client, StepError> {
        Ok(self.workload(target).await?.client)
    }

    /// Like [`Self::workload_client`], also returning the API server URL and the Secret's name.
    ///
    /// Errors: as [`Self::workload_client`].
    pub async fn workload(&self, target: &WorkloadTarget) -> Result<WorkloadClient, StepError> {
        let mgmt = self
            .management_client_with(&target.management_cluster, target.kubeconfig.as_ref())
            .await?;
        let secret_name = format!("{}-kubeconfig", target.cluster_name);
        let secret_ref = format!("{}/{}", target.namespace, secret_name);
        let api: Api<Secret> = Api::namespaced(mgmt, &target.namespace);
        let secret = match api.get_opt(&secret_name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(StepError::Transient(format!(
                    "Secret/{secret_ref} not found on management cluster '{}' (Cluster API writes it once the control plane is initialized)",
                    target.management_cluster
                )))
            }
            Err(e) => return Err(self.classify_mgmt(&target.management_cluster, &format!("Secret/{secret_ref}"), e)),
        };
        let rv = secret.metadata.resource_version.clone().unwrap_or_default();
        let key: WorkloadKey = (
            target.management_cluster.clone(),
            target.namespace.clone(),
            target.cluster_name.clone(),
        );
        {
            let mut cache = self.lock_workload();
            if let Some((i, _, c)) = cache.get_full(&key) {
                if !rv.is_empty() && c.resource_version == rv {
                    let found = WorkloadClient {
                        client: c.client.clone(),
                        server: c.server.clone(),
                        secret: secret_ref,
                    };
                    // Most recently used last.
                    let last = cache.len() - 1;
                    cache.move_index(i, last);
                    return Ok(found);
                }
            }
        }
        let yaml = secret_value(
            &secret,
            KUBECONFIG_SECRET_KEY,
            &format!("Secret/{secret_ref}"),
        )?;
        let (client, server) =
            client_from_kubeconfig(&yaml, &format!("workload kubeconfig Secret/{secret_ref}"))
                .await?;
        {
            let mut cache = self.lock_workload();
            cache.shift_remove(&key);
            if cache.len() >= WORKLOAD_CLIENTS_MAX {
                cache.shift_remove_index(0);
            }
            cache.insert(
                key,
                CachedWorkload {
                    resource_version: rv,
                    client: client.clone(),
                    server: server.clone(),
                },
            );
        }
        Ok(WorkloadClient {
            client,
            server,
            secret: secret_ref,
        })
    }

    /// Server-side applies every document of the multi-document `yaml` with `field_manager`,
    /// never forcing: like `kubectl apply --server-side` without `--force-conflicts`, a field
    /// another field manager owns with a different value makes the apply fail (security rule
    /// 7).
    ///
    /// Each document's `apiVersion`/`kind` is resolved to its resource and scope through API
    /// discovery (cached per call); Namespaces are applied first, then CustomResourceDefinitions,
    /// then everything else in document order. Namespaced objects without `metadata.namespace`
    /// go to the client's default namespace; cluster-scoped objects drop a stray namespace.
    /// Empty documents are skipped and `kind: List` documents are expanded.
    ///
    /// Returns `Kind/namespace/name` (cluster-scoped: `Kind/name`) of each applied object, in
    /// apply order.
    ///
    /// Errors: [`StepError::Permanent`] for unparsable YAML, a document without
    /// `apiVersion`/`kind`/`metadata.name`, a kind the server does not know, and 4xx answers
    /// (422 Invalid, 403 Forbidden, 401) and for a server-side apply conflict (409 "Apply
    /// failed", naming the field and its manager); [`StepError::Transient`] for connection
    /// errors, 5xx, other 409 Conflicts and 429. Messages name the object
    /// ("Cluster/default/team-a: ...").
    pub async fn apply_yaml(
        &self,
        client: &kube::Client,
        yaml: &str,
        field_manager: &str,
    ) -> Result<Vec<String>, StepError> {
        apply::apply_yaml(client, None, yaml, field_manager, apply::ApplyMode::APPLY).await
    }

    /// [`Self::apply_yaml`] with discovery results cached under `cache_key` across calls.
    pub(crate) async fn apply_yaml_cached(
        &self,
        client: &kube::Client,
        cache_key: &str,
        yaml: &str,
        field_manager: &str,
        mode: apply::ApplyMode,
    ) -> Result<Vec<String>, StepError> {
        apply::apply_yaml(
            client,
            Some((&self.inner.discovery, cache_key)),
            yaml,
            field_manager,
            mode,
        )
        .await
    }

    /// Forgets the cached client of management cluster `name` (after a 401, so that a rotated
    /// kubeconfig file or variable is re-read on the next attempt).
    pub(crate) fn forget_management(&self, name: &str) {
        let prefix = format!("{name}#");
        self.lock_management()
            .retain(|k, _| k != name && !k.starts_with(&prefix));
    }

    /// Maps a kube error from a call to management cluster `mc` to a [`StepError`], forgetting
    /// the cached client on 401.
    pub(crate) fn classify_mgmt(&self, mc: &str, what: &str, e: kube::Error) -> StepError {
        if matches!(&e, kube::Error::Api(s) if s.code == 401) {
            self.forget_management(mc);
        }
        classify(what, &e)
    }

    async fn in_cluster_client(&self) -> Result<kube::Client, StepError> {
        let mut guard = self.inner.in_cluster.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let cannot = |e: &dyn std::fmt::Display| {
            StepError::Permanent(format!(
                "cannot build the in-cluster Kubernetes client: {e}"
            ))
        };
        // `Client::try_default()`'s configuration, with the proxy chosen by `settle_proxy`.
        let mut config = kube::Config::infer()
            .await
            .map_err(|e| cannot(&error_text(&kube::Error::InferConfig(e))))?;
        let explicit = config
            .proxy_url
            .take()
            .filter(|p| !kube_env_proxies().contains(p));
        settle_proxy(&mut config, explicit);
        let c = kube::Client::try_from(config).map_err(|e| cannot(&error_text(&e)))?;
        *guard = Some(c.clone());
        Ok(c)
    }

    fn lock_management(&self) -> std::sync::MutexGuard<'_, HashMap<String, kube::Client>> {
        self.inner
            .management
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock_workload(
        &self,
    ) -> std::sync::MutexGuard<'_, indexmap::IndexMap<WorkloadKey, CachedWorkload>> {
        self.inner
            .workload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Parses a kubeconfig and builds a client for its current context. Returns the client and the
/// API server URL. `origin` names where the kubeconfig came from; error messages never include
/// the kubeconfig's text (parser errors can quote it).
async fn client_from_kubeconfig(
    yaml: &str,
    origin: &str,
) -> Result<(kube::Client, String), StepError> {
    let kc = Kubeconfig::from_yaml(yaml).map_err(|_| {
        StepError::Permanent(format!(
            "{origin}: not a valid kubeconfig (YAML does not parse)"
        ))
    })?;
    let explicit = kubeconfig_proxy_url(&kc)
        .map(|p| {
            p.parse::<http::Uri>().map_err(|_| {
                StepError::Permanent(format!(
                    "{origin}: unusable kubeconfig: the cluster's proxy-url does not parse"
                ))
            })
        })
        .transpose()?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| {
            StepError::Permanent(format!(
                "{origin}: unusable kubeconfig: {}",
                kubeconfig_error_kind(&e)
            ))
        })?;
    config.read_timeout = Some(READ_TIMEOUT);
    settle_proxy(&mut config, explicit);
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = kube::Client::try_from(config).map_err(|e| {
        StepError::Permanent(format!(
            "{origin}: cannot build a client for {server}: {}",
            error_text(&e)
        ))
    })?;
    Ok((client, server))
}

/// The `proxy-url` of the current context's cluster in `kc`, if it names one.
fn kubeconfig_proxy_url(kc: &Kubeconfig) -> Option<String> {
    let context = kc.current_context.as_deref()?;
    let cluster = kc
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?
        .cluster
        .as_str();
    kc.clusters
        .iter()
        .find(|c| c.name == cluster)?
        .cluster
        .as_ref()?
        .proxy_url
        .clone()
        .filter(|p| !p.trim().is_empty())
}

/// The proxy URLs kube-client itself takes from `HTTPS_PROXY`/`https_proxy` when a kubeconfig
/// names none (as it reads them: the first non-empty one).
fn kube_env_proxies() -> Vec<http::Uri> {
    ["HTTPS_PROXY", "https_proxy"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .filter(|v| !v.is_empty())
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// Sets the proxy of the API server connection: the kubeconfig cluster's `proxy-url` when it
/// has one (`explicit`; `NO_PROXY` does not apply to it, as with kubectl), else the proxy the
/// environment gives for the API server URL by the rules of [`crate::proxy`] (the same as the
/// bot's other clients; kube-client's own reading of `HTTPS_PROXY` applies `NO_PROXY` to the
/// proxy's address rather than the API server's, so its choice is replaced).
fn settle_proxy(config: &mut kube::Config, explicit: Option<http::Uri>) {
    let server = config.cluster_url.to_string();
    config.proxy_url = explicit.or_else(|| {
        crate::proxy::proxy_for(&server).and_then(|p| p.expose().parse::<http::Uri>().ok())
    });
    if let Some(p) = &config.proxy_url {
        tracing::debug!(
            server = %server,
            proxy = %p.host().unwrap_or_default(),
            "the Kubernetes API server is reached through a proxy"
        );
    }
}

/// A description of a kubeconfig error that cannot contain kubeconfig contents.
fn kubeconfig_error_kind(e: &kube::config::KubeconfigError) -> String {
    use kube::config::KubeconfigError as K;
    match e {
        K::CurrentContextNotSet => "current-context is not set".into(),
        K::KindMismatch | K::ApiVersionMismatch => "not a kubeconfig (kind/apiVersion)".into(),
        K::LoadContext(c) => format!("context '{c}' not found"),
        K::LoadClusterOfContext(c) => format!("cluster '{c}' of the current context not found"),
        K::MissingClusterUrl => "the cluster has no server URL".into(),
        K::ParseClusterUrl(_) => "the cluster's server URL does not parse".into(),
        K::ParseProxyUrl(_) => "the proxy URL (proxy-url or HTTPS_PROXY) does not parse".into(),
        K::ParseNoProxy(_) => {
            "NO_PROXY has an entry kube-client cannot read (an empty item, or a pattern other than a host, an IP address or a CIDR range)".into()
        }
        _ => "invalid certificate, credential or proxy settings".into(),
    }
}

/// Reads data key `key` of Secret `namespace/name` as UTF-8 text. `missing_is_transient` decides
/// the class of a missing Secret. The value is never put in an error.
async fn read_secret_key(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
    missing_is_transient: bool,
) -> Result<String, StepError> {
    let what = format!("Secret/{namespace}/{name}");
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(s)) => secret_value(&s, key, &what),
        Ok(None) if missing_is_transient => Err(StepError::Transient(format!("{what} not found"))),
        Ok(None) => Err(StepError::Permanent(format!("{what} not found"))),
        Err(e) => Err(classify(&what, &e)),
    }
}

/// The text of data key `key` of `secret` (`data`, or `stringData` from servers that keep it).
fn secret_value(secret: &Secret, key: &str, what: &str) -> Result<String, StepError> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| StepError::Permanent(format!("{what} has no data key '{key}'")))?;
    String::from_utf8(bytes)
        .map_err(|_| StepError::Permanent(format!("{what} key '{key}' is not UTF-8 text")))
}

/// An admission webhook's denial (docs/tkg2-class-based.md §4 "Error shape"): permanent, with the
/// webhook's message, for 4xx (CAPI's 422 validation, the TKR resolver's 403) and for a 500 that
/// cannot heal (the defaulting webhook's "ClusterClass … can not be retrieved", "not found");
/// transient for other 5xx (e.g. the resolver's 502 on a failed lookup).
fn classify_denial(msg: String, code: u16, message: &str) -> StepError {
    let permanent =
        code < 500 || message.contains("can not be retrieved") || message.contains("not found");
    if permanent {
        StepError::Permanent(msg)
    } else {
        StepError::Transient(msg)
    }
}

/// Maps a kube error to a [`StepError`], prefixed with `what` (e.g. `Cluster/default/team-a`).
///
/// Transient: connection and I/O errors, undecodable responses, HTTP 5xx, 409 Conflict, 410 Gone
/// (an expired resourceVersion or `continue` token: the next attempt lists afresh), 429 and
/// error answers without a status code. Permanent: every other 4xx (401 and 403 with a hint),
/// discovery misses, request-building and configuration errors. An admission webhook's denial
/// keeps the webhook's message and is permanent unless it can heal (see `classify_denial`).
pub fn classify(what: &str, e: &kube::Error) -> StepError {
    match e {
        kube::Error::Api(s) => {
            let detail = if s.message.is_empty() {
                s.reason.clone()
            } else {
                s.message.clone()
            };
            // kube-rs reports a non-`Status` error body (proxy, gateway) with this reason.
            let msg = if s.reason.is_empty() || s.reason == "Failed to parse error data" {
                format!("{what}: HTTP {}: {detail}", s.code)
            } else {
                format!("{what}: {} ({}): {detail}", s.reason, s.code)
            };
            if s.message.contains("admission webhook") && s.message.contains("denied the request") {
                return classify_denial(msg, s.code, &s.message);
            }
            match s.code {
                0 | 409 | 410 | 429 | 500..=599 => StepError::Transient(msg),
                401 => StepError::Permanent(format!(
                    "{msg} (the kubeconfig's credentials were rejected)"
                )),
                403 => StepError::Permanent(format!(
                    "{msg} (the kubeconfig's user is not allowed to do this)"
                )),
                _ => StepError::Permanent(msg),
            }
        }
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::SerdeError(_) => StepError::Transient(format!("{what}: {}", error_text(e))),
        kube::Error::Discovery(d) => {
            StepError::Permanent(format!("{what}: unknown to the API server ({d})"))
        }
        _ => StepError::Permanent(format!("{what}: {}", error_text(e))),
    }
}

/// Display text of a kube error including its sources (e.g. "connection refused").
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// The `ApiResource` of a Cluster API / Carvel custom kind served at `plural`.
pub(crate) fn custom_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk(group, version, kind),
        plural,
    )
}

impl KubeProvider {
    /// Runs one attempt of `kube.apply`: the ownership check ([`check_cluster_ownership`],
    /// security rule 7), a server-side dry run, then the server-side apply of
    /// `inputs.manifests` to the management cluster ([`KubeProvider::apply_yaml`] semantics).
    /// Output: the applied objects, `Kind/namespace/name` in apply order.
    ///
    /// Errors: as [`check_cluster_ownership`] and [`KubeProvider::apply_yaml`]; a dry-run
    /// denial is permanent with the webhook's message; rejected credentials are permanent and
    /// drop the cached management client.
    pub async fn apply(
        &self,
        ctx: &StepContext,
        inputs: &KubeApplyInputs,
    ) -> Result<KubeApplyOutput, StepError> {
        let mc = &inputs.target.management_cluster;
        let client = self
            .management_client_with(mc, inputs.target.kubeconfig.as_ref())
            .await?;
        check_cluster_ownership(&client, mc, &inputs.manifests).await?;
        if inputs.revert {
            check_clusters_exist(&client, mc, &inputs.manifests).await?;
        }
        // A drift revert is forced over the fields its manifests set ([`apply::ApplyMode`]).
        let (dry_run, apply) = (
            apply::ApplyMode::DRY_RUN.forced(inputs.revert),
            apply::ApplyMode::APPLY.forced(inputs.revert),
        );
        let cache_key = format!("mgmt/{mc}");
        // The real webhooks judge the objects first (CAPI variable validation and defaulting,
        // the TKR resolver: docs/tkg2-class-based.md §4); a denial fails the step before anything
        // is written.
        self.apply_yaml_cached(
            &client,
            &cache_key,
            &inputs.manifests,
            FIELD_MANAGER,
            dry_run,
        )
        .await
        .map_err(|e| match e {
            StepError::Permanent(m) => StepError::Permanent(format!(
                "management cluster '{mc}' refused the server-side dry run: {m}"
            )),
            other => other,
        })?;
        ctx.progress.report("server-side dry run accepted");
        let applied = match self
            .apply_yaml_cached(&client, &cache_key, &inputs.manifests, FIELD_MANAGER, apply)
            .await
        {
            Ok(a) => a,
            Err(StepError::Permanent(m)) if m.contains("credentials were rejected") => {
                self.forget_management(mc);
                return Err(StepError::Permanent(format!(
                    "management cluster '{mc}': {m}"
                )));
            }
            Err(e) => return Err(e),
        };
        ctx.progress
            .report(&format!("applied {} objects", applied.len()));
        tracing::info!(step = %ctx.step.id, management_cluster = %mc, count = applied.len(), "kube.apply done");
        Ok(KubeApplyOutput { applied })
    }

    /// Sends the manifests of a `kube.apply` step to its management cluster as a server-side
    /// dry run only (`dryRun=All`: every webhook judges them, nothing is stored), after the same
    /// ownership check as the step: what `tkgops plan --server-dry-run` does.
    ///
    /// Returns the objects the API server accepted (`Kind/namespace/name`). Errors: as
    /// `kube.apply` (a webhook denial is permanent with the webhook's message).
    pub async fn server_dry_run(&self, inputs: &KubeApplyInputs) -> Result<Vec<String>, StepError> {
        let mc = &inputs.target.management_cluster;
        let client = self
            .management_client_with(mc, inputs.target.kubeconfig.as_ref())
            .await?;
        check_cluster_ownership(&client, mc, &inputs.manifests).await?;
        self.apply_yaml_cached(
            &client,
            &format!("mgmt/{mc}"),
            &inputs.manifests,
            FIELD_MANAGER,
            apply::ApplyMode::DRY_RUN,
        )
        .await
    }

    /// Runs one attempt of `kube.read-kubeconfig`: reads the `<cluster>-kubeconfig` Secret of
    /// `inputs` and asks the workload API server for its version. Output: the Secret, the
    /// server URL and its Kubernetes version (no secret material).
    ///
    /// Errors: as [`KubeProvider::workload`]; the version request as [`classify`].
    pub async fn read_kubeconfig(
        &self,
        ctx: &StepContext,
        inputs: &WorkloadTarget,
    ) -> Result<KubeReadKubeconfigOutput, StepError> {
        let wl = self.workload(inputs).await?;
        let version = wl.client.apiserver_version().await.map_err(|e| {
            classify(
                &format!("workload cluster {} ({})", inputs.cluster_name, wl.server),
                &e,
            )
        })?;
        ctx.progress.report(&format!(
            "connected to {} (Kubernetes {})",
            wl.server, version.git_version
        ));
        Ok(KubeReadKubeconfigOutput {
            secret: wl.secret,
            server: wl.server,
            kubernetes_version: version.git_version,
        })
    }
}

/// The `cluster.x-k8s.io` Cluster documents of `manifests` (a `kube.apply` step's YAML
/// stream), in order. Stops at the first document that does not parse (serde_yaml's document
/// iterator does not recover from a syntax error); the apply then reports it with its position.
fn cluster_documents(manifests: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(manifests)
        .map_while(|doc| serde_json::Value::deserialize(doc).ok())
        .filter(|v| {
            v["kind"] == "Cluster"
                && v["apiVersion"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("cluster.x-k8s.io/"))
        })
        .collect()
}

/// A drift revert never creates a Cluster (README "Drift"): every `cluster.x-k8s.io` Cluster
/// document of `manifests` must exist on `management_cluster`.
///
/// Errors: [`StepError::Permanent`] naming the first missing Cluster; reading a Cluster
/// classifies as [`classify`] does.
pub async fn check_clusters_exist(
    client: &kube::Client,
    management_cluster: &str,
    manifests: &str,
) -> Result<(), StepError> {
    for v in cluster_documents(manifests) {
        let name = v["metadata"]["name"].as_str().unwrap_or("");
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
        let what = format!("Cluster/{ns}/{name} on management cluster '{management_cluster}'");
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &cluster::cluster_resource());
        if api
            .get_opt(name)
            .await
            .map_err(|e| classify(&what, &e))?
            .is_none()
        {
            return Err(StepError::Permanent(format!(
                "{what} does not exist: a drift revert never creates a Cluster (it stays reported on the fleet dashboard issue)"
            )));
        }
    }
    Ok(())
}

/// Security rule 7: tkgops creates a Cluster only when none exists, and changes an existing one
/// only when it carries the same [`OWNER_LABEL`] value as the manifest (same config repository
/// and cluster path). Checks every `cluster.x-k8s.io` `Cluster` document of `manifests`.
///
/// Errors: [`StepError::Permanent`] when a Cluster manifest has no owner label, or the Cluster
/// exists without it or with another value (naming both); reading the Cluster classifies as
/// [`classify`] does.
pub async fn check_cluster_ownership(
    client: &kube::Client,
    management_cluster: &str,
    manifests: &str,
) -> Result<(), StepError> {
    for v in cluster_documents(manifests) {
        let meta = &v["metadata"];
        let name = meta["name"].as_str().unwrap_or("");
        let ns = meta["namespace"].as_str().unwrap_or("default");
        let what = format!("Cluster/{ns}/{name}");
        let Some(expected) = meta["labels"][OWNER_LABEL].as_str() else {
            return Err(StepError::Permanent(format!(
                "{what}: the manifest has no {OWNER_LABEL} label; tkgops applies only Clusters it can prove it owns"
            )));
        };
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &cluster::cluster_resource());
        let existing = api.get_opt(name).await.map_err(|e| {
            classify(
                &format!("{what} on management cluster '{management_cluster}'"),
                &e,
            )
        })?;
        if let Some(existing) = existing {
            let found = existing
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(OWNER_LABEL));
            if found.map(String::as_str) != Some(expected) {
                let found = match found {
                    Some(f) => format!("its {OWNER_LABEL} label is {f}"),
                    None => format!("it has no {OWNER_LABEL} label"),
                };
                let repo = v["metadata"]["annotations"]["tkgops.dev/config-repository"]
                    .as_str()
                    .unwrap_or("this config repository");
                return Err(StepError::Permanent(format!(
                    "{what} already exists on management cluster '{management_cluster}' and is not owned by {repo} ({found}, expected {expected}); tkgops changes only Clusters it created for the same config repository and cluster path. Choose another CLUSTER_NAME or NAMESPACE, or adopt the Cluster by setting that label on it yourself."
                )));
            }
        }
    }
    Ok(())
}

/// The Kubernetes step kinds, one method each (what the bot's executor table routes to); see
/// the module documentation and each kind's function for its inputs, output and errors.
impl KubeProvider {
    /// Runs one attempt of `kube.preflight` ([`preflight::preflight`]).
    pub async fn preflight(
        &self,
        ctx: &StepContext,
        inputs: &KubePreflightInputs,
    ) -> Result<KubePreflightOutput, StepError> {
        preflight::preflight(self, &ctx.progress, inputs).await
    }

    /// Runs one attempt of `kube.wait-cluster` ([`cluster::wait_cluster`]).
    pub async fn wait_cluster(
        &self,
        ctx: &StepContext,
        target: &WorkloadTarget,
    ) -> Result<KubeWaitClusterOutput, StepError> {
        cluster::wait_cluster(self, ctx, target).await
    }

    /// Runs one attempt of `packages.rollout` ([`packages::rollout`]).
    pub async fn packages_rollout(
        &self,
        ctx: &StepContext,
        inputs: &PackagesInputs,
    ) -> Result<PackagesRolloutOutput, StepError> {
        packages::rollout(self, ctx, inputs).await
    }

    /// Runs one attempt of `kube.upgrade-cluster` ([`rollout::upgrade_cluster`]).
    pub async fn upgrade_cluster(
        &self,
        ctx: &StepContext,
        inputs: &UpgradeClusterInputs,
    ) -> Result<KubeUpgradeClusterOutput, StepError> {
        rollout::upgrade_cluster(self, ctx, inputs).await
    }

    /// Runs one attempt of `kube.resize-cluster` ([`rollout::resize_cluster`]).
    pub async fn resize_cluster(
        &self,
        ctx: &StepContext,
        inputs: &ResizeClusterInputs,
    ) -> Result<KubeResizeClusterOutput, StepError> {
        rollout::resize_cluster(self, ctx, inputs).await
    }

    /// Runs one attempt of `kube.wait-control-plane` ([`rollout::wait_control_plane`]).
    pub async fn wait_control_plane(
        &self,
        ctx: &StepContext,
        inputs: &KubeRolloutInputs,
    ) -> Result<KubeWaitControlPlaneOutput, StepError> {
        rollout::wait_control_plane(self, ctx, inputs).await
    }

    /// Runs one attempt of `kube.wait-machine-deployments`
    /// ([`rollout::wait_machine_deployments`]).
    pub async fn wait_machine_deployments(
        &self,
        ctx: &StepContext,
        inputs: &KubeRolloutInputs,
    ) -> Result<KubeWaitMachineDeploymentsOutput, StepError> {
        rollout::wait_machine_deployments(self, ctx, inputs).await
    }

    /// Runs one attempt of `packages.update` ([`packages::update`]).
    pub async fn packages_update(
        &self,
        ctx: &StepContext,
        inputs: &PackagesUpdateInputs,
    ) -> Result<PackagesUpdateOutput, StepError> {
        packages::update(self, ctx, inputs).await
    }

    /// Runs one attempt of `packages.verify` ([`rollout::verify_packages`]).
    pub async fn packages_verify(
        &self,
        ctx: &StepContext,
        target: &WorkloadTarget,
    ) -> Result<PackagesVerifyOutput, StepError> {
        rollout::verify_packages(self, ctx, target).await
    }

    /// Runs one attempt of `kube.check-owner` ([`rollout::check_owner`]).
    pub async fn check_owner(
        &self,
        ctx: &StepContext,
        inputs: &KubeDeleteInputs,
    ) -> Result<KubeCheckOwnerOutput, StepError> {
        rollout::check_owner(self, ctx, inputs).await
    }

    /// Runs one attempt of `kube.delete-cluster` ([`rollout::delete_cluster`]).
    pub async fn delete_cluster(
        &self,
        ctx: &StepContext,
        inputs: &KubeDeleteInputs,
    ) -> Result<KubeDeleteClusterOutput, StepError> {
        rollout::delete_cluster(self, ctx, inputs).await
    }
}

#[async_trait::async_trait]
impl ManifestApplier for KubeProvider {
    /// Server-side applies `yaml` to the workload cluster `target` (client from
    /// [`KubeProvider::workload_client`]) with [`KubeProvider::apply_yaml`] semantics.
    ///
    /// Errors: as [`KubeProvider::workload_client`] and [`KubeProvider::apply_yaml`].
    async fn apply_to_workload(
        &self,
        target: &WorkloadTarget,
        yaml: &str,
        field_manager: &str,
    ) -> Result<Vec<String>, StepError> {
        let wl = self.workload(target).await?;
        let key = format!(
            "workload/{}/{}/{}",
            target.management_cluster, target.namespace, target.cluster_name
        );
        self.apply_yaml_cached(
            &wl.client,
            &key,
            yaml,
            field_manager,
            apply::ApplyMode::APPLY,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_url_is_the_current_contexts_clusters() {
        let kc = Kubeconfig::from_yaml(
            r#"
apiVersion: v1
kind: Config
current-context: mgmt
contexts:
  - name: other
    context: {cluster: other, user: u}
  - name: mgmt
    context: {cluster: mgmt, user: u}
clusters:
  - name: other
    cluster: {server: "https://other:6443", proxy-url: "http://wrong:3128"}
  - name: mgmt
    cluster: {server: "https://mgmt:6443", proxy-url: "http://proxy.corp:3128"}
users:
  - name: u
    user: {token: t}
"#,
        )
        .unwrap();
        assert_eq!(
            kubeconfig_proxy_url(&kc).as_deref(),
            Some("http://proxy.corp:3128")
        );
        let mut none = kc.clone();
        none.clusters[1].cluster.as_mut().unwrap().proxy_url = Some(" ".into());
        assert_eq!(kubeconfig_proxy_url(&none), None);
        none.current_context = None;
        assert_eq!(kubeconfig_proxy_url(&none), None);
    }
}

//! The `tmc.attach` step: attach a workload cluster to TMC (reference §3.5; TMC-TF
//! `internal/resources/cluster/resource_cluster.go` create path) and converge an existing
//! cluster's group, description and labels (its update path, §3.2/§3.3 `PUT`). The executor
//! also runs `tmc.detach` (see `detach.rs`).
//!
//! **Ownership** (security rule 7). TMC cluster names are organisation-wide, Kubernetes names
//! only per management cluster and namespace, so a TMC cluster of the same name may belong to
//! another team. tkgops marks every TMC cluster it registers with the ownership label of its
//! cluster request ([`OWNER_LABEL`] in `meta.labels`, the same value as on the Cluster) and
//! converges or detaches only TMC clusters carrying that value. An existing TMC cluster without
//! it (or with another request's) fails the step permanently and is left untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::client::{ClusterPoll, TmcClient, TmcSettings};
use super::models::{Cluster, FullName, ATTACHED};
use super::{SecretToken, TmcError};
use crate::wait::{drive, step_error, DriveOptions};
use crate::ManifestApplier;
use std::collections::BTreeMap;
use tkgops_domain::executor::{StepContext, StepError};
use tkgops_domain::output::TmcAttachOutput;
use tkgops_domain::step::TmcClusterInputs;
use tkgops_domain::wait::tmc::{cluster_failure, TmcCluster, TmcClusterReady};
use tkgops_domain::workflow::plan::OWNER_LABEL;
use tokio::time::Instant;

/// Field manager of the installer apply.
const FIELD_MANAGER: &str = "tkgops";
/// Consecutive transient poll failures tolerated before the attempt fails (transiently).
pub(super) const MAX_POLL_ERRORS: u32 = 3;
/// Attempts of the converging `PUT` when TMC answers 409 (stale `resourceVersion`): each retry
/// GETs the cluster again first.
const MAX_UPDATE_CONFLICTS: u32 = 3;
/// Label keys TMC sets itself (e.g. `tmc.cloud.vmware.com/creator`); never compared with the
/// inputs and kept on update.
const SYSTEM_LABEL_PREFIX: &str = "tmc.cloud.vmware.com/";
/// The group TMC assigns when none is given (docs/tanzu-apis.md §3.5 step 1).
const DEFAULT_GROUP: &str = "default";

/// How long `tmc.detach` waits for a `force=false` detach to finish before deleting again with
/// `force=true`: 5 minutes. TMC-TF polls every 10 s, 25 times (about 4 minutes;
/// docs/tanzu-apis.md §3.5 step 5). Change it with [`TmcExecutor::with_detach_timeout`].
pub const DEFAULT_DETACH_TIMEOUT: Duration = Duration::from_secs(300);

/// Where [`TmcExecutor`] gets the CSP API token at each use: the current value (`None`: not
/// configured). A source that re-reads a rotated file makes the next client use the new token
/// without a restart.
pub type TokenSource = Arc<dyn Fn() -> Option<SecretToken> + Send + Sync>;

/// A cached client and the API token it was built with.
type BuiltClient = (SecretToken, Arc<TmcClient>);

/// Executes `tmc.attach`: exchange the CSP API token, GET the cluster, POST it when absent (a
/// 409 means a concurrent or earlier attempt created it: GET again and continue), fetch the
/// installer manifest from `status.installerLink` (from `GET /v1alpha1/clusters:manifest/{name}`
/// when the cluster's `spec.proxyName` or `spec.imageRegistry` is set, as TMC-TF does), apply it to the workload cluster with the
/// [`ManifestApplier`], then poll GET every `poll_interval` until `phase == READY` (TMC-TF
/// `resource_cluster.go` waits for READY only, docs/tanzu-apis.md §3.5 step 4; TMC has no watch API).
/// The health (`HEALTHY`, `WARNING`, `UNHEALTHY`, …) is reported in the progress and the
/// output, not required: a degraded component does not fail the attach. A cluster that is
/// already READY is done at once (no POST, no apply), so a re-run is a no-op.
///
/// The POST sets `meta.labels` to the request's labels plus the ownership label
/// ([`OWNER_LABEL`] = `inputs.owner.label`). A cluster that already exists (found by the GET,
/// or after a 409 on the POST) must carry that label value, or the attempt fails permanently
/// ("TMC cluster … exists and is not owned by \<repository\>/\<path\>; tkgops will not adopt it")
/// before anything is sent: no PUT, no installer. A cluster an earlier attempt created carries
/// it, so a retry after a crash converges it normally.
///
/// When the cluster already exists and is owned, and its
/// `spec.clusterGroupName`, `meta.description` or `meta.labels` differ from the inputs, it is
/// updated first with a `PUT` of the whole object read by the GET, `meta.resourceVersion`
/// included (TMC-TF's update path; docs/tanzu-apis.md §3.2, §3.3). Labels under
/// `tmc.cloud.vmware.com/` are TMC's own: they are neither compared nor removed. A 409 (stale
/// `resourceVersion`) re-reads and retries up to 3 times. An empty group input means `default`.
/// The update does not touch the agent: a READY cluster is done after it (no apply).
///
/// Output: `{"uid","phase","health","clusterGroup","installerApplied":bool,"updated":[…]}`
/// (`updated` names the converged fields: `clusterGroup`, `description`, `labels`; never a
/// token or the installer link).
///
/// The same executor runs `tmc.detach`: `DELETE …?force=false`, poll until 404, and after
/// [`DEFAULT_DETACH_TIMEOUT`] (or [`TmcExecutor::with_detach_timeout`]) `DELETE …?force=true`
/// (docs/tanzu-apis.md §3.5 step 5).
pub struct TmcExecutor {
    api_token: TokenSource,
    applier: Arc<dyn ManifestApplier>,
    pub(super) poll_interval: Duration,
    pub(super) detach_timeout: Duration,
    /// One client (and cached access token) per (TMC endpoint, CSP endpoint), with the API
    /// token it was built with: a different current token builds a new client.
    clients: Mutex<HashMap<(String, String), BuiltClient>>,
}

impl std::fmt::Debug for TmcExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TmcExecutor")
            .field("api_token", &"<redacted>")
            .field("poll_interval", &self.poll_interval)
            .field("detach_timeout", &self.detach_timeout)
            .finish_non_exhaustive()
    }
}

impl TmcExecutor {
    /// An executor using the CSP API token `api_token` (`None`: every attach fails permanently
    /// with "TMC API token not configured"), applying installer manifests with `applier`, and
    /// polling the cluster every `poll_interval` (TMC-TF polls every 10 s).
    pub fn new(
        api_token: Option<SecretToken>,
        applier: Arc<dyn ManifestApplier>,
        poll_interval: Duration,
    ) -> Self {
        Self::with_token_source(Arc::new(move || api_token.clone()), applier, poll_interval)
    }

    /// As [`TmcExecutor::new`], reading the API token from `api_token` at each use (a rotated
    /// token is used by the next step, whose client exchanges it for a new access token).
    pub fn with_token_source(
        api_token: TokenSource,
        applier: Arc<dyn ManifestApplier>,
        poll_interval: Duration,
    ) -> Self {
        TmcExecutor {
            api_token,
            applier,
            poll_interval,
            detach_timeout: DEFAULT_DETACH_TIMEOUT,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Sets how long `tmc.detach` waits for a `force=false` detach before it deletes again with
    /// `force=true`, and how long it then waits for the forced one (default
    /// [`DEFAULT_DETACH_TIMEOUT`]; docs/tanzu-apis.md §3.5 step 5). Takes and returns the executor
    /// (builder style); tests pass a short timeout.
    pub fn with_detach_timeout(mut self, timeout: Duration) -> Self {
        self.detach_timeout = timeout;
        self
    }

    /// The TMC client for `endpoint`/`csp_endpoint`, created on first use and cached.
    ///
    /// Errors: Permanent when no API token is configured or the settings are unusable.
    pub(super) fn client(
        &self,
        endpoint: &str,
        csp_endpoint: &str,
    ) -> Result<Arc<TmcClient>, StepError> {
        let token = (self.api_token)()
            .filter(|t| !t.expose().trim().is_empty())
            .ok_or_else(|| {
                StepError::Permanent(
                    "TMC API token not configured (set VMW_CLOUD_API_TOKEN)".into(),
                )
            })?;
        let key = (endpoint.to_string(), csp_endpoint.to_string());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built_with, c)) = clients.get(&key) {
            if built_with.expose() == token.expose() {
                return Ok(c.clone());
            }
        }
        let client = Arc::new(TmcClient::new(TmcSettings {
            endpoint: endpoint.to_string(),
            csp_endpoint: csp_endpoint.to_string(),
            api_token: token.clone(),
        })?);
        clients.insert(key, (token, client.clone()));
        Ok(client)
    }

    /// The drift scan's read of the TMC cluster of `inputs` (a `tmc.attach` step's, as the
    /// last run rendered it): the cluster as TMC answers a `GET`, `None` when TMC has none by
    /// that name; the ownership label is not checked here (the caller reports an unowned one).
    /// Also returns the group tkgops wants (the inputs' group, TMC's `default` when empty) and
    /// the `meta.labels` it sets (the request's labels and the ownership label).
    ///
    /// Errors: Permanent for a missing API token or a refused token exchange; the client's
    /// errors as [`StepError`]s (429/5xx and connection errors transient).
    pub async fn read_cluster(
        &self,
        inputs: &TmcClusterInputs,
    ) -> Result<(Option<Cluster>, String, BTreeMap<String, String>), StepError> {
        let client = self.client(&inputs.endpoint, &inputs.csp_endpoint)?;
        let (full_name, _) = resolve_full_name(inputs);
        let found = client.get_cluster(&full_name).await?;
        Ok((found, desired_group(inputs), desired_labels(inputs)))
    }

    /// Runs one attempt of `tmc.attach` for `inputs` (see [`TmcExecutor`]); returns the
    /// cluster once `READY`.
    ///
    /// Errors: Permanent for inputs without an ownership mark, an existing TMC cluster that
    /// does not carry this request's ownership label (it is not adopted), a missing API token,
    /// a refused token exchange, 4xx answers (a cluster group TMC does not know included) and a
    /// cluster in phase `ERROR`/`UPGRADE_FAILED`; Transient for 429/5xx, connection errors,
    /// timeouts and a cluster being detached; the applier's own errors as is.
    pub async fn attach(
        &self,
        ctx: &StepContext,
        inputs: &TmcClusterInputs,
    ) -> Result<TmcAttachOutput, StepError> {
        require_owner_mark(inputs)?;
        let client = self.client(&inputs.endpoint, &inputs.csp_endpoint)?;
        let (full_name, shown) = resolve_full_name(inputs);
        let group = desired_group(inputs);
        let mut updated: Vec<&'static str> = Vec::new();

        // GET-before-POST.
        let cluster = match client.get_cluster(&full_name).await? {
            Some(c) => {
                check_owned(&c, inputs, &shown, "adopt")?;
                ctx.progress.report(&format!(
                    "TMC cluster {shown} exists (phase {}, health {})",
                    c.phase(),
                    c.health()
                ));
                check_not_failed(&c, &shown)?;
                converge(ctx, &client, c, inputs, &shown, &mut updated).await?
            }
            None => {
                match client
                    .create_cluster(
                        &full_name,
                        &inputs.cluster_group,
                        &inputs.description,
                        &desired_labels(inputs),
                    )
                    .await
                {
                    Ok(c) => {
                        ctx.progress.report(&format!("registered {shown} in TMC"));
                        c
                    }
                    Err(TmcError::AlreadyExists { .. }) => {
                        let c = client.get_cluster(&full_name).await?.ok_or_else(|| {
                            StepError::Transient(format!(
                                "TMC reported {shown} as existing but GET answers 404"
                            ))
                        })?;
                        check_owned(&c, inputs, &shown, "adopt")?;
                        check_not_failed(&c, &shown)?;
                        converge(ctx, &client, c, inputs, &shown, &mut updated).await?
                    }
                    Err(e @ (TmcError::NotFound { .. } | TmcError::InvalidArgument { .. })) => {
                        return Err(StepError::Permanent(format!(
                            "TMC refused to register {shown} in cluster group {group:?} (does the \
                             group exist?): {e}"
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        check_not_failed(&cluster, &shown)?;
        if cluster.is_ready() {
            report_health(ctx, &cluster, &shown);
            return Ok(output(&cluster, inputs, false, &updated));
        }

        let behind_proxy_or_registry = [&cluster.spec.proxy_name, &cluster.spec.image_registry]
            .iter()
            .any(|v| v.as_deref().is_some_and(|v| !v.is_empty()));
        let manifest = if behind_proxy_or_registry {
            // TMC-TF: with a proxy or a private image registry, the manifest endpoint renders
            // them into the agent's configuration (docs/tanzu-apis.md §3.5 step 3).
            client.attach_manifest(&full_name).await?
        } else {
            let link = cluster
                .status
                .installer_link
                .clone()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| {
                    StepError::Transient(format!(
                        "TMC has not published an installerLink for {shown} yet"
                    ))
                })?;
            client.installer_manifest(link.expose()).await?
        };
        ctx.progress.report(&format!(
            "applying the TMC agent installer to {}/{}",
            inputs.target.namespace, inputs.target.cluster_name
        ));
        let applied = self
            .applier
            .apply_to_workload(&inputs.target, &manifest, FIELD_MANAGER)
            .await?;
        tracing::info!(cluster = %shown, objects = applied.len(), "applied the TMC installer manifest");

        // Poll until the agent connects (TMC-TF: GET every 10 s until READY).
        let mut poll = ClusterPoll::new(&client, &full_name, self.poll_interval);
        let mut judge = TmcClusterReady::<Cluster>::new(&shown);
        let c = drive(
            &mut poll,
            &mut judge,
            &ctx.progress,
            &DriveOptions::tmc(Instant::now(), MAX_POLL_ERRORS),
        )
        .await?;
        report_health(ctx, &c, &shown);
        Ok(output(&c, inputs, true, &updated))
    }
}

impl TmcCluster for Cluster {
    fn phase(&self) -> &str {
        Cluster::phase(self)
    }
    fn health(&self) -> &str {
        Cluster::health(self)
    }
    fn uid(&self) -> Option<&str> {
        self.meta.uid.as_deref()
    }
    fn condition_messages(&self) -> String {
        Cluster::condition_messages(self)
    }
}

/// Reports a READY cluster's health; a health other than `HEALTHY` names the message of
/// `healthDetails` so the PR shows what is degraded.
fn report_health(ctx: &StepContext, c: &Cluster, shown: &str) {
    if c.is_ready_and_healthy() {
        return;
    }
    let detail = c
        .status
        .health_details
        .as_ref()
        .and_then(|h| h.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    ctx.progress.report(&format!(
        "TMC cluster {shown} is READY with health {}{detail}",
        c.health()
    ));
}

/// Fails permanently when the inputs carry no ownership mark (a step planned before tkgops
/// recorded it): without it no TMC cluster can be proven to be this request's.
pub(super) fn require_owner_mark(inputs: &TmcClusterInputs) -> Result<(), StepError> {
    if inputs.owner.label.trim().is_empty() {
        return Err(StepError::Permanent(format!(
            "the step inputs carry no {OWNER_LABEL} value (planned by an older tkgops?); tkgops \
             changes only TMC clusters it can prove it owns: plan the change again"
        )));
    }
    Ok(())
}

/// Checks that the existing TMC cluster `c` carries this request's ownership label
/// (`meta.labels[OWNER_LABEL] == inputs.owner.label`). `verb` says what tkgops refuses to do
/// (`adopt`, `detach`).
///
/// Errors: [`StepError::Permanent`] "TMC cluster <shown> exists and is not owned by
/// <repository>/<path> (…); tkgops will not <verb> it", naming the label it carries and the
/// label an operator may add in TMC when the cluster really is this request's (e.g. one
/// attached by a tkgops version that did not mark its TMC clusters).
pub(super) fn check_owned(
    c: &Cluster,
    inputs: &TmcClusterInputs,
    shown: &str,
    verb: &str,
) -> Result<(), StepError> {
    let want = inputs.owner.label.as_str();
    let found = c.meta.labels.get(OWNER_LABEL).map(String::as_str);
    if !want.is_empty() && found == Some(want) {
        return Ok(());
    }
    let carries = match found {
        Some(f) => format!("its {OWNER_LABEL} label is {f:?}"),
        None => format!("it has no {OWNER_LABEL} label"),
    };
    Err(StepError::Permanent(format!(
        "TMC cluster {shown} exists and is not owned by {} ({carries}); tkgops will not {verb} \
         it. TMC cluster names are organisation-wide: rename the cluster, or, if this TMC \
         cluster really is this request's, label it {OWNER_LABEL}={want} in TMC",
        inputs.owner.display()
    )))
}

/// `ERROR` / `UPGRADE_FAILED` → Permanent with the condition messages; `DETACHING` /
/// `DELETING` → Transient (a detach is in progress; a later attempt re-creates the cluster).
fn check_not_failed(c: &Cluster, shown: &str) -> Result<(), StepError> {
    match cluster_failure(c, shown) {
        Some(f) => Err(step_error(f)),
        None => Ok(()),
    }
}

/// The cluster's TMC full name from the inputs (`attached`/`attached`/the workload cluster's
/// name where the inputs leave a part empty) and its `mc/provisioner/name` display form.
pub(super) fn resolve_full_name(inputs: &TmcClusterInputs) -> (FullName, String) {
    let mut full_name = FullName {
        org_id: None,
        management_cluster_name: inputs.full_name.management_cluster_name.clone(),
        provisioner_name: inputs.full_name.provisioner_name.clone(),
        name: inputs.full_name.name.clone(),
    };
    if full_name.management_cluster_name.is_empty() {
        full_name.management_cluster_name = ATTACHED.to_string();
    }
    if full_name.provisioner_name.is_empty() {
        full_name.provisioner_name = ATTACHED.to_string();
    }
    if full_name.name.is_empty() {
        full_name.name = inputs.target.cluster_name.clone();
    }
    let shown = format!(
        "{}/{}/{}",
        full_name.management_cluster_name, full_name.provisioner_name, full_name.name
    );
    (full_name, shown)
}

/// The cluster group the inputs ask for (`default` when empty).
fn desired_group(inputs: &TmcClusterInputs) -> String {
    let g = inputs.cluster_group.trim();
    if g.is_empty() {
        DEFAULT_GROUP.to_string()
    } else {
        g.to_string()
    }
}

/// A cluster's group (`default` when TMC left it empty).
fn current_group(c: &Cluster) -> String {
    c.spec
        .cluster_group_name
        .as_deref()
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .unwrap_or(DEFAULT_GROUP)
        .to_string()
}

/// The `meta.labels` tkgops wants on the TMC cluster (besides TMC's own): the request's labels
/// and the ownership label [`OWNER_LABEL`], which wins over a request label of the same key.
fn desired_labels(inputs: &TmcClusterInputs) -> BTreeMap<String, String> {
    let mut labels = inputs.labels.clone();
    labels.insert(OWNER_LABEL.to_string(), inputs.owner.label.clone());
    labels
}

/// The labels tkgops manages: all but TMC's own `tmc.cloud.vmware.com/…`.
fn user_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| !k.starts_with(SYSTEM_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Brings an existing cluster's group, description and labels to the inputs with a `PUT` of
/// the object as read (see [`TmcExecutor`]). Reports one progress line per changed field and
/// appends its name to `updated`. Returns the cluster as TMC answered the `PUT` (or `c`
/// unchanged when nothing differs).
///
/// Errors: Permanent when the cluster (as read, or re-read after a conflict) does not carry
/// this request's ownership label, or TMC refuses the group (404/400 while the cluster exists); after
/// [`MAX_UPDATE_CONFLICTS`] stale-version conflicts in a row is Transient; other
/// [`TmcError`]s classified as usual.
async fn converge(
    ctx: &StepContext,
    client: &TmcClient,
    mut c: Cluster,
    inputs: &TmcClusterInputs,
    shown: &str,
    updated: &mut Vec<&'static str>,
) -> Result<Cluster, StepError> {
    let group = desired_group(inputs);
    let want_labels = desired_labels(inputs);
    let mut conflicts = 0u32;
    loop {
        // Re-read after a conflict: the cluster must still be this request's.
        check_owned(&c, inputs, shown, "adopt")?;
        let was_group = current_group(&c);
        let was_description = c.meta.description.clone().unwrap_or_default();
        let group_differs = was_group != group;
        let description_differs = was_description != inputs.description;
        let labels_differ = user_labels(&c.meta.labels) != want_labels;
        if !(group_differs || description_differs || labels_differ) {
            return Ok(c);
        }
        let mut want = c.clone();
        want.spec.cluster_group_name = Some(group.clone());
        want.meta.description = Some(inputs.description.clone()).filter(|d| !d.is_empty());
        let mut labels: BTreeMap<String, String> = c
            .meta
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with(SYSTEM_LABEL_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend(want_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        want.meta.labels = labels;
        match client.update_cluster(&want).await {
            Ok(now) => {
                if group_differs {
                    ctx.progress
                        .report(&format!("moved to cluster group {group} (was {was_group})"));
                    updated.push("clusterGroup");
                }
                if description_differs {
                    ctx.progress
                        .report(&format!("updated the TMC description of {shown}"));
                    updated.push("description");
                }
                if labels_differ {
                    ctx.progress.report(&format!(
                        "updated the TMC labels of {shown}: {}",
                        inputs
                            .labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    updated.push("labels");
                }
                return Ok(now);
            }
            Err(TmcError::Conflict { message, .. }) => {
                conflicts += 1;
                if conflicts >= MAX_UPDATE_CONFLICTS {
                    return Err(StepError::Transient(format!(
                        "TMC cluster {shown} kept changing while tkgops updated it ({conflicts} \
                         conflicts): {message}"
                    )));
                }
                ctx.progress.report(&format!(
                    "TMC cluster {shown} changed meanwhile ({message}); reading it again"
                ));
                c = client.get_cluster(&c.full_name).await?.ok_or_else(|| {
                    StepError::Transient(format!(
                        "TMC cluster {shown} disappeared during the update"
                    ))
                })?;
            }
            Err(e @ (TmcError::NotFound { .. } | TmcError::InvalidArgument { .. })) => {
                // Not found: the cluster or the group. Tell them apart by reading the cluster.
                if matches!(e, TmcError::NotFound { .. })
                    && client.get_cluster(&c.full_name).await?.is_none()
                {
                    return Err(StepError::Transient(format!(
                        "TMC cluster {shown} disappeared during the update"
                    )));
                }
                return Err(StepError::Permanent(format!(
                    "TMC refused to move {shown} to cluster group {group:?} (was {was_group}); \
                     the group must exist in TMC: {e}"
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn output(
    c: &Cluster,
    inputs: &TmcClusterInputs,
    installer_applied: bool,
    updated: &[&str],
) -> TmcAttachOutput {
    let group = c
        .spec
        .cluster_group_name
        .clone()
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| {
            if inputs.cluster_group.is_empty() {
                "default".into()
            } else {
                inputs.cluster_group.clone()
            }
        });
    TmcAttachOutput {
        uid: c.meta.uid.clone(),
        phase: c.phase().to_string(),
        health: c.health().to_string(),
        cluster_group: group,
        installer_applied,
        updated: updated.iter().map(|f| f.to_string()).collect(),
    }
}

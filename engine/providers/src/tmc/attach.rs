//! The `tmc.attach` step: attach a workload cluster to TMC (reference §3.5; TMC-TF
//! `internal/resources/cluster/resource_cluster.go` create path).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{TmcClient, TmcSettings};
use super::models::{Cluster, FullName, ATTACHED, PHASE_DELETING, PHASE_DETACHING};
use super::{SecretToken, TmcError};
use crate::ManifestApplier;
use tkgops_domain::step::TmcClusterInputs;
use tkgops_engine::{StepContext, StepError, StepExecutor, StepInputs, StepKind};

/// Field manager of the installer apply.
const FIELD_MANAGER: &str = "tkgops";
/// Consecutive transient poll failures tolerated before the attempt fails (transiently).
const MAX_POLL_ERRORS: u32 = 3;

/// Executes `tmc.attach`: exchange the CSP API token, GET the cluster, POST it when absent (a
/// 409 means a concurrent or earlier attempt created it: GET again and continue), fetch the
/// installer manifest from `status.installerLink` (from `GET /v1alpha1/clusters:manifest/{name}`
/// when the cluster's `spec.proxyName` or `spec.imageRegistry` is set, as TMC-TF does), apply it to the workload cluster with the
/// [`ManifestApplier`], then poll GET every `poll_interval` until `phase == READY` (TMC-TF
/// `resource_cluster.go` waits for READY only, tanzu-apis.md §3.5 step 4; TMC has no watch API).
/// The health (`HEALTHY`, `WARNING`, `UNHEALTHY`, …) is reported in the progress and the
/// output, not required: a degraded component does not fail the attach. A cluster that is
/// already READY is done at once (no POST, no apply), so a re-run is a no-op.
///
/// Output: `{"uid","phase","health","clusterGroup","installerApplied":bool}` (never a token or
/// the installer link).
pub struct TmcExecutor {
    api_token: Option<SecretToken>,
    applier: Arc<dyn ManifestApplier>,
    poll_interval: Duration,
    /// One client (and cached access token) per (TMC endpoint, CSP endpoint).
    clients: Mutex<HashMap<(String, String), Arc<TmcClient>>>,
}

impl std::fmt::Debug for TmcExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TmcExecutor")
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("poll_interval", &self.poll_interval)
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
        TmcExecutor {
            api_token,
            applier,
            poll_interval,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, endpoint: &str, csp_endpoint: &str) -> Result<Arc<TmcClient>, StepError> {
        let token = self
            .api_token
            .as_ref()
            .filter(|t| !t.expose().trim().is_empty())
            .ok_or_else(|| {
                StepError::Permanent(
                    "TMC API token not configured (set VMW_CLOUD_API_TOKEN)".into(),
                )
            })?;
        let key = (endpoint.to_string(), csp_endpoint.to_string());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let client = Arc::new(TmcClient::new(TmcSettings {
            endpoint: endpoint.to_string(),
            csp_endpoint: csp_endpoint.to_string(),
            api_token: token.clone(),
        })?);
        clients.insert(key, client.clone());
        Ok(client)
    }

    async fn attach(
        &self,
        ctx: &StepContext,
        inputs: &TmcClusterInputs,
    ) -> Result<Value, StepError> {
        let client = self.client(&inputs.endpoint, &inputs.csp_endpoint)?;
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

        // GET-before-POST.
        let cluster = match client.get_cluster(&full_name).await? {
            Some(c) => {
                ctx.progress.report(&format!(
                    "TMC cluster {shown} exists (phase {}, health {})",
                    c.phase(),
                    c.health()
                ));
                c
            }
            None => {
                match client
                    .create_cluster(
                        &full_name,
                        &inputs.cluster_group,
                        &inputs.description,
                        &inputs.labels,
                    )
                    .await
                {
                    Ok(c) => {
                        ctx.progress.report(&format!("registered {shown} in TMC"));
                        c
                    }
                    Err(TmcError::AlreadyExists { .. }) => {
                        client.get_cluster(&full_name).await?.ok_or_else(|| {
                            StepError::Transient(format!(
                                "TMC reported {shown} as existing but GET answers 404"
                            ))
                        })?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        check_not_failed(&cluster, &shown)?;
        if cluster.is_ready() {
            report_health(ctx, &cluster, &shown);
            return Ok(output(&cluster, inputs, false));
        }

        let behind_proxy_or_registry = [&cluster.spec.proxy_name, &cluster.spec.image_registry]
            .iter()
            .any(|v| v.as_deref().is_some_and(|v| !v.is_empty()));
        let manifest = if behind_proxy_or_registry {
            // TMC-TF: with a proxy or a private image registry, the manifest endpoint renders
            // them into the agent's configuration (tanzu-apis.md §3.5 step 3).
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
        let mut errors = 0u32;
        let mut last_line = String::new();
        loop {
            match client.get_cluster(&full_name).await {
                Ok(Some(c)) => {
                    errors = 0;
                    let line = format!("TMC phase {}, health {}", c.phase(), c.health());
                    if line != last_line {
                        ctx.progress.report(&line);
                        last_line = line;
                    }
                    check_not_failed(&c, &shown)?;
                    if c.is_ready() {
                        report_health(ctx, &c, &shown);
                        return Ok(output(&c, inputs, true));
                    }
                }
                Ok(None) => {
                    return Err(StepError::Transient(format!(
                        "TMC cluster {shown} disappeared while waiting for its agent to connect"
                    )))
                }
                Err(e) if e.is_transient() && errors < MAX_POLL_ERRORS => {
                    errors += 1;
                    ctx.progress
                        .report(&format!("polling TMC failed ({e}); retrying"));
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(self.poll_interval).await;
        }
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

/// `ERROR` / `UPGRADE_FAILED` → Permanent with the condition messages; `DETACHING` /
/// `DELETING` → Transient (a detach is in progress; a later attempt re-creates the cluster).
fn check_not_failed(c: &Cluster, shown: &str) -> Result<(), StepError> {
    if c.is_failed() {
        let conds = c.condition_messages();
        let detail = if conds.is_empty() {
            String::new()
        } else {
            format!(": {conds}")
        };
        return Err(StepError::Permanent(format!(
            "TMC cluster {shown} is in phase {} (health {}){detail}",
            c.phase(),
            c.health()
        )));
    }
    if matches!(c.phase(), PHASE_DETACHING | PHASE_DELETING) {
        return Err(StepError::Transient(format!(
            "TMC cluster {shown} is being detached (phase {})",
            c.phase()
        )));
    }
    Ok(())
}

fn output(c: &Cluster, inputs: &TmcClusterInputs, installer_applied: bool) -> Value {
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
    json!({
        "uid": c.meta.uid,
        "phase": c.phase(),
        "health": c.health(),
        "clusterGroup": group,
        "installerApplied": installer_applied,
    })
}

#[async_trait::async_trait]
impl StepExecutor for TmcExecutor {
    /// `[tmc.attach]`.
    fn kinds(&self) -> &'static [StepKind] {
        &[StepKind::TmcAttach]
    }

    /// Runs one attempt of `tmc.attach` (see [`TmcExecutor`]).
    ///
    /// Errors: Permanent for a kind of another provider, a missing API token, a refused token exchange,
    /// 4xx answers and a cluster in phase `ERROR`/`UPGRADE_FAILED`; Transient for 429/5xx,
    /// connection errors, timeouts and a cluster being detached; the applier's own errors as is.
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        match &ctx.step.inputs {
            StepInputs::TmcAttach(inputs) => self.attach(ctx, inputs).await,
            other => Err(StepError::Permanent(format!(
                "TMC executor cannot run step kind {}",
                other.kind()
            ))),
        }
    }
}

//! Simulated TMC cluster agent on a workload cluster.
//!
//! TMC's installer manifest (applied by the attach flow, docs/tanzu-apis.md §3.5) creates the ConfigMap
//! `vmware-system-tmc/stack-config`. Like the real agent, which connects outward to TMC, this one
//! reads `tmc_url`, `cluster_name`, `management_cluster_name`, `provisioner_name` and
//! `registration_token` from it and calls
//! `POST {tmc_url}/v1alpha1/clusters/{cluster_name}:agentconnect` with
//! `{"fullName":{"managementClusterName","provisionerName","name"},"registrationToken","kubeServerVersion","nodeCount"}`,
//! retrying every tick until TMC answers 2xx. It then annotates the ConfigMap with
//! [`TMC_CONNECTED_ANNOTATION`] (value: a digest of the connection data), so it connects once per
//! configuration; a changed configuration (re-attach with a new token) connects again.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::super::{ChangeEvent, EmulatedCluster};
use super::capi::cluster_version_and_nodes;
use super::util::*;
use super::Reconciler;

/// Namespace of the TMC agents.
pub const TMC_NAMESPACE: &str = "vmware-system-tmc";
/// Name of the ConfigMap the TMC installer manifest creates with the agent's connection settings.
pub const TMC_STACK_CONFIG: &str = "stack-config";
/// Annotation the simulated agent sets on `stack-config` once `agentconnect` succeeded.
pub const TMC_CONNECTED_ANNOTATION: &str = "emulator.tkgops.dev/connected";

/// Kubernetes version reported when the workload cluster's Cluster object cannot be found.
const DEFAULT_KUBE_VERSION: &str = "v1.23.8+vmware.2";

/// The TMC agent of one workload cluster.
pub(crate) struct TmcAgent {
    workload: EmulatedCluster,
    management: EmulatedCluster,
    http: Option<reqwest::Client>,
    last_error: Option<String>,
}

impl TmcAgent {
    pub(crate) fn new(workload: EmulatedCluster, management: EmulatedCluster) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| warn!(error = %e, "TMC agent: could not build HTTP client"))
            .ok();
        TmcAgent {
            workload,
            management,
            http,
            last_error: None,
        }
    }

    /// The Cluster object (management cluster) this workload cluster belongs to.
    fn cluster_object(&self) -> Option<Value> {
        self.management
            .list(&gvr_cluster(), None)
            .into_iter()
            .find(|c| name_of(c) == Some(self.workload.name()))
    }

    async fn connect_once(&mut self) {
        let Some(cm) = self
            .workload
            .get(&gvr_config_map(), Some(TMC_NAMESPACE), TMC_STACK_CONFIG)
        else {
            return;
        };
        let data = |k: &str| str_at(&cm, &format!("/data/{k}")).unwrap_or("").to_string();
        let (tmc_url, cluster_name, mc, provisioner, token) = (
            data("tmc_url"),
            data("cluster_name"),
            data("management_cluster_name"),
            data("provisioner_name"),
            data("registration_token"),
        );
        let digest = hex::encode(
            &Sha256::digest(
                format!("{tmc_url}\n{cluster_name}\n{mc}\n{provisioner}\n{token}").as_bytes(),
            )[..8],
        );
        if annotation(&cm, TMC_CONNECTED_ANNOTATION) == Some(digest.as_str()) {
            return;
        }
        if tmc_url.is_empty() {
            self.note_error("stack-config has no tmc_url".into());
            return;
        }
        let cluster_name = if cluster_name.is_empty() {
            self.workload.name().to_string()
        } else {
            cluster_name
        };
        let cluster = self.cluster_object();
        let (version, nodes) = match &cluster {
            Some(c) => cluster_version_and_nodes(&self.management, c),
            None => (
                None,
                self.workload.list(&gvr_node(), None).len().max(1) as i64,
            ),
        };
        let version = version.unwrap_or_else(|| DEFAULT_KUBE_VERSION.to_string());
        let body = json!({
            "fullName": {"managementClusterName": mc, "provisionerName": provisioner, "name": cluster_name},
            "registrationToken": token,
            "kubeServerVersion": version,
            "nodeCount": nodes.to_string(),
        });
        let url = format!(
            "{}/v1alpha1/clusters/{}:agentconnect",
            tmc_url.trim_end_matches('/'),
            cluster_name
        );
        let Some(http) = self.http.as_ref() else {
            return;
        };
        match http.post(&url).json(&body).send().await {
            Ok(resp) if resp.status().is_success() => {
                info!(cluster = %cluster_name, workload = self.workload.name(), "TMC agent connected");
                let patch =
                    json!({"metadata": {"annotations": {TMC_CONNECTED_ANNOTATION: digest}}});
                if let Err(err) = self.workload.patch_merge(
                    &gvr_config_map(),
                    Some(TMC_NAMESPACE),
                    TMC_STACK_CONFIG,
                    patch,
                ) {
                    warn!(error = %err, "TMC agent: could not annotate stack-config");
                }
                self.last_error = None;
            }
            Ok(resp) => self.note_error(format!("agentconnect {url}: HTTP {}", resp.status())),
            Err(err) => self.note_error(format!("agentconnect {url}: {err}")),
        }
    }

    /// Logs a connection problem once per distinct message (the agent retries every tick).
    fn note_error(&mut self, msg: String) {
        if self.last_error.as_deref() != Some(msg.as_str()) {
            debug!(workload = self.workload.name(), error = %msg, "TMC agent not connected yet; retrying");
            self.last_error = Some(msg);
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for TmcAgent {
    async fn on_tick(&mut self) {
        self.connect_once().await;
    }

    async fn on_event(&mut self, event: ChangeEvent) {
        if event.kind != "DELETED"
            && same_gvr(&event.gvr, &gvr_config_map())
            && name_of(&event.object) == Some(TMC_STACK_CONFIG)
            && namespace_of(&event.object) == Some(TMC_NAMESPACE)
        {
            self.connect_once().await;
        }
    }
}

//! Simulated controllers that drive object status on the emulated clusters as the real ones do:
//! Cluster API, kapp-controller and the TMC cluster agent.
//!
//! [`start_controllers`] runs, as Tokio tasks using the emulator's direct API (no HTTP):
//! - the **Cluster API** controllers (topology, Cluster, KubeadmControlPlane, MachineDeployment,
//!   MachineHealthCheck, CAPA's AWSCluster) on the management cluster;
//! - **kapp-controller** (PackageRepository, PackageInstall) and the **TMC cluster agent** on every
//!   workload cluster that the Cluster API controller creates.
//!
//! Each controller reacts to the emulator's change events and also runs a periodic tick, so progress
//! continues without new events. Every tick advances each object by at most one phase. All progress
//! is derived from object state (status, conditions, deterministic names), never from task memory,
//! so a restarted tkgops bot (or restarted controllers) sees consistent objects.
//!
//! Test-only knobs, as annotations on the objects:
//! - [`FAIL_ANNOTATION`] on a Cluster: after `Provisioning`, the Cluster fails with `Ready=False`,
//!   `severity: Error`, reason `ProvisioningFailed` and the annotation value as message.
//! - [`TMC_CONNECTED_ANNOTATION`] is written by the TMC agent on ConfigMap
//!   `vmware-system-tmc/stack-config` once its `agentconnect` call succeeded.

mod capi;
mod catalog;
mod kapp;
mod tmc_agent;
mod util;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::task::AbortHandle;

use super::{ChangeEvent, EmulatedCluster, KubeEmulator, KubeEmulatorError};

pub use capi::{FAIL_ANNOTATION, MACHINES_VERSION_ANNOTATION};
pub use catalog::{
    StandardPackage, CLUSTER_CLASS_NAME, PACKAGING_GLOBAL_NAMESPACE, STANDARD_PACKAGES,
    STANDARD_REPO_IMAGE, STANDARD_REPO_NAME, TANZU_KUBERNETES_RELEASES,
};
pub use tmc_agent::{TMC_CONNECTED_ANNOTATION, TMC_NAMESPACE, TMC_STACK_CONFIG};

/// Errors of the simulated controllers.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The emulator rejected a read or write.
    #[error("kube emulator: {0}")]
    Emulator(#[from] KubeEmulatorError),
    /// An object lacks a field the controller needs.
    #[error("malformed {kind} {name}: {reason}")]
    Malformed {
        /// Object kind, e.g. `Cluster`.
        kind: &'static str,
        /// `namespace/name` of the object.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Options of [`start_controllers`].
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Period of the reconcile tick. Each tick advances each object by one phase. Default 200 ms.
    pub tick: Duration,
    /// Seed the TKG 1.6 standard package catalog (one `Package` per package of the `tanzu-standard`
    /// repository) on every new workload cluster. Default `true`.
    pub standard_packages: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            tick: Duration::from_millis(200),
            standard_packages: true,
        }
    }
}

/// Handle on the running controller tasks. Dropping it (or calling [`Controllers::shutdown`]) aborts
/// every task, including the per-workload-cluster ones started later.
pub struct Controllers {
    shared: Arc<Shared>,
}

/// State shared between the controller tasks.
pub(crate) struct Shared {
    /// Abort handles of every task started so far.
    tasks: Mutex<Vec<AbortHandle>>,
    /// Workload clusters whose kapp-controller and TMC agent tasks are running.
    workload: Mutex<HashSet<String>>,
    /// Set on shutdown: no new task is started after it.
    stopped: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn push(&self, handle: AbortHandle) {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            handle.abort();
            return;
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(handle);
        }
    }

    /// Starts kapp-controller and the TMC agent on a workload cluster, once per cluster name.
    pub(crate) fn start_workload(
        &self,
        workload: &EmulatedCluster,
        management: &EmulatedCluster,
        opts: &ControllerOptions,
    ) {
        {
            let Ok(mut started) = self.workload.lock() else {
                return;
            };
            if !started.insert(workload.name().to_string()) {
                return;
            }
        }
        let kapp = kapp::KappController::new(workload.clone());
        self.push(tokio::spawn(run_loop(kapp, workload.subscribe(), opts.tick)).abort_handle());
        let agent = tmc_agent::TmcAgent::new(workload.clone(), management.clone());
        self.push(tokio::spawn(run_loop(agent, workload.subscribe(), opts.tick)).abort_handle());
    }
}

impl Controllers {
    /// Names of the workload clusters whose kapp-controller and TMC agent are running.
    pub fn workload_clusters(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .shared
            .workload
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Aborts every controller task.
    pub fn shutdown(self) {
        drop(self)
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.shared
            .stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut tasks) = self.shared.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

/// Prepares a management cluster: registers the Cluster API types, creates the ClusterClass
/// `tkg-aws-default` in namespace `default` (TKG 1.6 cconly) and the TanzuKubernetesReleases
/// `v1.23.8---vmware.2-tkg.1` and `v1.22.11---vmware.2-tkg.1` (cluster-scoped, `Ready` and
/// `Compatible` True). Idempotent.
pub fn seed_management_cluster(cluster: &EmulatedCluster) -> Result<(), ControllerError> {
    catalog::seed_management(cluster)
}

/// Seeds a workload cluster as the Cluster API controller does when its control plane initializes:
/// kapp types, the reconciled `tanzu-standard` PackageRepository in `tanzu-package-repo-global` and,
/// when `standard_packages` is set, the TKG 1.6 package catalog. Idempotent.
pub fn seed_workload_cluster(
    cluster: &EmulatedCluster,
    standard_packages: bool,
) -> Result<(), ControllerError> {
    catalog::seed_workload(cluster, standard_packages)
}

/// Starts the simulated controllers: Cluster API on the management cluster `management_cluster`,
/// and kapp-controller plus the TMC agent on every workload cluster it creates (also on workload
/// clusters created by an earlier run, so restarting is safe).
///
/// Must be called inside a Tokio runtime. When `management_cluster` does not exist in `emu`, the
/// Cluster API task waits for it to appear.
pub fn start_controllers(
    emu: &KubeEmulator,
    management_cluster: &str,
    opts: ControllerOptions,
) -> Controllers {
    // The TMC agent builds a reqwest client; rustls needs a process-wide provider (no-op if set).
    crate::install_crypto_provider();
    let shared = Arc::new(Shared {
        tasks: Mutex::new(Vec::new()),
        workload: Mutex::new(HashSet::new()),
        stopped: std::sync::atomic::AtomicBool::new(false),
    });
    let emu = emu.clone();
    let name = management_cluster.to_string();
    let weak = Arc::downgrade(&shared);
    let handle = tokio::spawn(async move {
        let mgmt = loop {
            if let Some(c) = emu.cluster(&name) {
                break c;
            }
            tokio::time::sleep(opts.tick).await;
        };
        let rx = mgmt.subscribe();
        let ctrl = capi::CapiController::new(emu, mgmt, opts.clone(), weak);
        run_loop(ctrl, rx, opts.tick).await;
    });
    shared.push(handle.abort_handle());
    Controllers { shared }
}

/// One controller: a periodic reconcile plus reactions to change events.
#[async_trait::async_trait]
pub(crate) trait Reconciler: Send {
    /// Periodic pass: advances every object by at most one phase.
    async fn on_tick(&mut self);
    /// Reaction to one change event of the watched cluster. Must only perform transitions that do
    /// not cascade through the events they cause (e.g. entering `Reconciling`).
    async fn on_event(&mut self, event: ChangeEvent);
}

/// Drives a [`Reconciler`] from a change-event receiver and a periodic tick, forever.
pub(crate) async fn run_loop<R: Reconciler>(mut r: R, rx: Receiver<ChangeEvent>, tick: Duration) {
    let mut interval = tokio::time::interval(tick.max(Duration::from_millis(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rx = Some(rx);
    loop {
        match rx.as_mut() {
            Some(receiver) => {
                tokio::select! {
                    _ = interval.tick() => r.on_tick().await,
                    ev = receiver.recv() => match ev {
                        Ok(ev) => r.on_event(ev).await,
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => rx = None,
                    },
                }
            }
            None => {
                interval.tick().await;
                r.on_tick().await;
            }
        }
    }
}

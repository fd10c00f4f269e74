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
//! Tests synchronise on the controllers' progress instead of sleeping:
//! [`Controllers::wait_until`] re-checks a condition after every reconcile pass, and
//! [`Controllers::wait_ticks`] waits for a number of complete periodic passes, after which a test
//! can assert that something did *not* happen.
//!
//! # The emulated TKG 2.x management cluster (docs/tkg2-class-based.md)
//! [`seed_management_cluster_with`] makes a TKG 2.1–2.4 management cluster ([`TkgVersion`]):
//! - the class-based AWS ClusterClass [`TkgVersion::cluster_class`] in `tkg-system` with the real
//!   variable schemas of `tkg-aws-default-v1.0.0` (fixture
//!   `fixtures/tkg-aws-default-v1.0.0-variables.yaml`, sources named in it; defaults from the
//!   [`ManagementSeed`]) and the class-level MachineHealthChecks (§5); the object-propagation
//!   controller (each tick and on Namespace creation) copies it into every namespace except
//!   [`PROPAGATION_EXCLUDED_NAMESPACES`] and those labelled `cluster.x-k8s.io/provider` (§1);
//! - TanzuKubernetesReleases ([`TkgVersion::compatible_tkrs`], plus [`INCOMPATIBLE_TKR`] labelled
//!   `incompatible`) with version-prefix labels and `Ready`/`Compatible`/`Valid` conditions, and
//!   their OSImages (ubuntu 20.04 and amazon 2, amd64, in [`OSIMAGE_REGIONS`]) (§8);
//! - the management cluster's own Cluster in `tkg-system` (`TKGVERSION`, management role label) and,
//!   optionally, `kube-public/pinniped-info` (§7);
//! - the Cluster admission chain (§4): CAPI defaulting (`default.cluster.cluster.x-k8s.io`: class
//!   in the Cluster's namespace or 500, undeclared variables 422, top-level and nested defaults),
//!   cluster pause on a TKR change (UPDATE), the TKR resolver (label [`TKR_LABEL`], `TKR_DATA`, MD
//!   overrides, version rewrite; 403 when nothing resolves), CAPI validation
//!   (`validation.cluster.cluster.x-k8s.io`, 422: Cluster name as a label value, removal of
//!   `spec.topology`, class, `version.KubeSemver`, MachineDeployment classes and names, required
//!   variables, schemas through the `jsonschema` crate, overrides, version decrease with build
//!   metadata / +2 minors; unknown nested fields rejected only for 2.3/2.4), and between them the
//!   API server's DNS-1123 check of `metadata.name` on create.
//!
//! The Cluster API controllers then create the topology (KCP, MDs `<cluster>-md-N-xxxxx`,
//! AWSCluster, class MHCs), Machines with `nodeRef`s, the ClusterBootstrap and the core
//! PackageInstalls, and unpause Clusters paused for a new TKR (see `capi.rs`).
//!
//! ## Remaining leniencies (not modelled)
//! - ClusterClass templates (`…-kcp`, `…-control-plane`, `…-worker`, `…-md-config`, `…-cluster`)
//!   are named by the class but not created; class patches are not evaluated (the AWSCluster spec
//!   is derived directly from the variables).
//! - 2.3/2.4 facts are assumptions (class names, `controlPlane` casing in the schema, CAPI ≥1.3
//!   unknown-field rejection); CAPI 1.4's skip of defaulting for unreconciled classes and
//!   `status.variables` are not modelled.
//! - Formats other than `cidr` follow the `jsonschema` crate, not go-openapi's `strfmt`;
//!   `format: int32` ranges and `x-kubernetes-validations` are not checked; with several errors
//!   their order may differ from go-openapi's.
//! - The resolver's query/result text is JSON, not Go's `%+v`; TKR selectors other than the
//!   `resolve-tkr` annotation, TKR discovery, `bom-metadata` compatibility and
//!   additional-compatible-TKR ConfigMaps are not modelled; `UpdatesAvailable` does not resolve
//!   an OSImage per offered TKR.
//! - Admission is skipped for Clusters being deleted; a class change to another *existing* class
//!   skips CAPI's ClusterClass compatibility check; MachineDeployment topology names that are not
//!   label values are admitted (as by CAPI 1.2.8) but do not fail the topology reconcile; replica
//!   and MachineHealthCheck rules are not modelled.
//! - ClusterBootstrap (`bootstrap`): a client-created one is adopted, else the template is
//!   cloned as Antrea, EBS CSI and kapp-controller; provider `*Config` objects are not cloned nor
//!   read, `additionalPackages` are not installed; the management-side `<cluster>-kapp-controller` PackageInstall is marked
//!   `ReconcileSucceeded` directly; the workload core packages run as ServiceAccount
//!   `tkg-system/tkg-core-packages-sa` (unverified name); package versions are representative.
//! - Workload clusters still get the TKG 1.6 `tanzu-standard` repository and catalog.
//!
//! Test-only knobs, as annotations on the objects:
//! - [`FAIL_ANNOTATION`] on a Cluster: after `Provisioning`, the Cluster fails with `Ready=False`,
//!   `severity: Error`, reason `ProvisioningFailed` and the annotation value as message.
//! - [`TMC_CONNECTED_ANNOTATION`] is written by the TMC agent on ConfigMap
//!   `vmware-system-tmc/stack-config` once its `agentconnect` call succeeded.
//! - [`TopologyFaults`] (argument of [`start_controllers_with`]; [`start_controllers`] uses its
//!   default, on at 1 in 17 topology reconciles): transient `TopologyReconciled=False`.

mod admission;
mod bootstrap;
mod capi;
mod catalog;
mod kapp;
mod tmc_agent;
mod util;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::{ChangeEvent, EmulatedCluster, KubeEmulator, KubeEmulatorError};

pub use admission::PAUSED_ANNOTATION;
pub use capi::{FAIL_ANNOTATION, MACHINES_VERSION_ANNOTATION};
pub use catalog::{
    ami_id, tkr_kubernetes_version, tkr_name, version_prefix_labels, ManagementSeed,
    StandardPackage, TkgVersion, INCOMPATIBLE_TKR, OSIMAGE_REGIONS, PACKAGING_GLOBAL_NAMESPACE,
    PROPAGATION_EXCLUDED_NAMESPACES, RESOLVE_OS_IMAGE_ANNOTATION, RESOLVE_TKR_ANNOTATION,
    STANDARD_PACKAGES, STANDARD_REPO_IMAGE, STANDARD_REPO_NAME, TKG_SYSTEM_NAMESPACE, TKR_LABEL,
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

/// Transient topology failures of the simulated Cluster API topology controller: every
/// `transient_every`-th topology reconcile of each Cluster (counted per Cluster uid, so the pattern
/// is deterministic) skips the sync and sets `TopologyReconciled=False`, severity `Error`, reason
/// `TopologyReconcileFailed`, for one tick; the next reconcile sets it `True` again. Real CAPI
/// shows this on conflicts and API timeouts; `tanzu cluster create` never checks the condition
/// (docs/tkg2-class-based.md §6), so a client waiting on it must tolerate it.
#[derive(Clone, Debug)]
pub struct TopologyFaults {
    /// Period in topology reconciles; 0 disables the fault. Default 17.
    pub transient_every: u64,
    /// The transient error text in the condition message. Default
    /// `Internal error occurred: etcdserver: request timed out (transient)`.
    pub message: String,
}

impl Default for TopologyFaults {
    fn default() -> Self {
        TopologyFaults {
            transient_every: 17,
            message: "Internal error occurred: etcdserver: request timed out (transient)".into(),
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
    stopped: AtomicBool,
    /// Pass counters of every controller task started so far (see [`Controllers::wait_ticks`]).
    progress: Mutex<Vec<Arc<TaskProgress>>>,
    /// Number of reconcile passes completed by all controller tasks; every completed pass (tick
    /// or event reaction) bumps it and wakes [`Controllers::wait_until`] and
    /// [`Controllers::wait_ticks`].
    passes: Arc<watch::Sender<u64>>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            tasks: Mutex::new(Vec::new()),
            workload: Mutex::new(HashSet::new()),
            stopped: AtomicBool::new(false),
            progress: Mutex::new(Vec::new()),
            passes: Arc::new(watch::channel(0).0),
        }
    }

    fn push(&self, handle: AbortHandle) {
        if self.stopped.load(Ordering::SeqCst) {
            handle.abort();
            return;
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(handle);
        }
    }

    /// Pass counters for one new controller task, registered for [`Controllers::wait_ticks`].
    fn new_progress(&self) -> Arc<TaskProgress> {
        let p = Arc::new(TaskProgress {
            ticks_started: AtomicU64::new(0),
            ticks_done: AtomicU64::new(0),
            passes: self.passes.clone(),
        });
        if let Ok(mut all) = self.progress.lock() {
            all.push(p.clone());
        }
        p
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
        let progress = self.new_progress();
        self.push(
            tokio::spawn(run_loop(kapp, workload.subscribe(), opts.tick, progress)).abort_handle(),
        );
        let agent = tmc_agent::TmcAgent::new(workload.clone(), management.clone());
        let progress = self.new_progress();
        self.push(
            tokio::spawn(run_loop(agent, workload.subscribe(), opts.tick, progress)).abort_handle(),
        );
    }
}

/// Reconcile-pass counters of one controller task.
pub(crate) struct TaskProgress {
    /// Periodic passes (ticks) begun.
    ticks_started: AtomicU64,
    /// Periodic passes (ticks) completed.
    ticks_done: AtomicU64,
    /// The shared pass counter of all tasks, bumped after every completed pass.
    passes: Arc<watch::Sender<u64>>,
}

impl TaskProgress {
    /// Runs one periodic pass of `r` (skipped when `idle`: nothing it reads changed since a pass
    /// that wrote nothing), counting it either way.
    async fn tick<R: Reconciler>(&self, r: &mut R, idle: bool) {
        self.ticks_started.fetch_add(1, Ordering::SeqCst);
        if !idle {
            r.on_tick().await;
        }
        self.ticks_done.fetch_add(1, Ordering::SeqCst);
        self.passes.send_modify(|n| *n += 1);
    }

    /// Runs the reaction of `r` to one change event, counting it.
    async fn event<R: Reconciler>(&self, r: &mut R, event: ChangeEvent) {
        r.on_event(event).await;
        self.passes.send_modify(|n| *n += 1);
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

    /// Waits until `check` returns `Some`, evaluating it now and again after every reconcile pass
    /// (periodic tick or reaction to a change event) that any controller task completes: use it
    /// for conditions the controllers bring about. Returns the value `check` returned, or `None`
    /// when `timeout` elapses first.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        // Subscribed before the first check: a pass completing in between is not missed.
        let mut passes = self.shared.passes.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(v) = check() {
                    return v;
                }
                if passes.changed().await.is_err() {
                    // Unreachable: `self.shared` holds the sender. Never spin.
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .ok()
    }

    /// Waits until every controller task started so far has completed `n` periodic reconcile
    /// passes (ticks) that began after this call. Every tick considers every object, so once
    /// this returns `true` the controllers have had `n` full chances to act on the state as it
    /// was when called: a test can then assert that something did *not* happen. Tasks started
    /// later (controllers of a new workload cluster) are not waited for. Returns `false` when
    /// `timeout` elapses first (for example while the management cluster does not exist yet, or
    /// after a controller task panicked).
    pub async fn wait_ticks(&self, n: u64, timeout: Duration) -> bool {
        let mut passes = self.shared.passes.subscribe();
        let targets: Vec<(Arc<TaskProgress>, u64)> = self
            .shared
            .progress
            .lock()
            .map(|all| {
                all.iter()
                    .map(|p| (p.clone(), p.ticks_started.load(Ordering::SeqCst) + n))
                    .collect()
            })
            .unwrap_or_default();
        tokio::time::timeout(timeout, async {
            while !targets
                .iter()
                .all(|(p, target)| p.ticks_done.load(Ordering::SeqCst) >= *target)
            {
                if passes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Aborts every controller task.
    pub fn shutdown(self) {
        drop(self)
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Ok(mut tasks) = self.shared.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

/// Prepares a TKG **2.2** management cluster with the default [`ManagementSeed`] (region
/// `us-west-2`, SSH key `tkg-mgmt-key`, CNI `antrea`, bastion on, no Pinniped); see
/// [`seed_management_cluster_with`]. Idempotent. Errors: [`ControllerError::Emulator`] when a
/// seed object cannot be written.
pub fn seed_management_cluster(cluster: &EmulatedCluster) -> Result<(), ControllerError> {
    catalog::seed_management(cluster, &ManagementSeed::default())
}

/// Prepares a TKG 2.x management cluster (docs/tkg2-class-based.md §1, §2, §4, §5, §7, §8):
/// registers the Cluster API, Tanzu and Carvel types; installs the Cluster admission (CAPI
/// defaulting, cluster pause, TKR resolver, CAPI validation); creates namespaces `default`,
/// `tkg-system`, `tkr-system`, the ClusterClass [`TkgVersion::cluster_class`] in `tkg-system`
/// (annotated `run.tanzu.vmware.com/resolve-tkr: ""`, variable defaults from `seed`) and its
/// propagated copies, the compatible TKRs [`TkgVersion::compatible_tkrs`] plus the incompatible
/// [`INCOMPATIBLE_TKR`] with their OSImages ([`OSIMAGE_REGIONS`] × ubuntu 20.04 / amazon 2), the
/// management cluster's own Cluster `tkg-system/<seed.name>` (annotation `TKGVERSION`, label
/// `cluster-role.tkg.tanzu.vmware.com/management`) and, when `seed.pinniped_issuer` is set,
/// ConfigMap `kube-public/pinniped-info`. Idempotent. Errors: [`ControllerError::Emulator`].
pub fn seed_management_cluster_with(
    cluster: &EmulatedCluster,
    seed: &ManagementSeed,
) -> Result<(), ControllerError> {
    catalog::seed_management(cluster, seed)
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
    start_controllers_with(emu, management_cluster, opts, TopologyFaults::default())
}

/// [`start_controllers`] with explicit transient topology faults (the default is on at a low,
/// deterministic rate, see [`TopologyFaults`]).
pub fn start_controllers_with(
    emu: &KubeEmulator,
    management_cluster: &str,
    opts: ControllerOptions,
    faults: TopologyFaults,
) -> Controllers {
    // The TMC agent builds a reqwest client; rustls needs a process-wide provider (no-op if set).
    crate::install_crypto_provider();
    let shared = Arc::new(Shared::new());
    let emu = emu.clone();
    let name = management_cluster.to_string();
    let weak = Arc::downgrade(&shared);
    let progress = shared.new_progress();
    let handle = tokio::spawn(async move {
        let mgmt = loop {
            if let Some(c) = emu.cluster(&name) {
                break c;
            }
            tokio::time::sleep(opts.tick).await;
        };
        let rx = mgmt.subscribe();
        let ctrl = capi::CapiController::new(emu, mgmt, opts.clone(), weak, faults);
        run_loop(ctrl, rx, opts.tick, progress).await;
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
    /// Change events were lost (the receiver lagged behind the broadcast).
    fn on_lagged(&mut self) {}
    /// The revision of everything the periodic pass reads (e.g. the watched cluster's
    /// resourceVersion counter), for a pass that is a function of that state alone: a tick is
    /// skipped while the revision stays where a pass that wrote nothing left it, as that pass
    /// would write nothing again. `None` (the default): every tick runs. With a fleet of
    /// workload clusters, the idle ones cost nothing per tick.
    fn revision(&self) -> Option<u64> {
        None
    }
}

/// Drives a [`Reconciler`] from a change-event receiver and a periodic tick, forever, counting
/// its passes in `progress`.
pub(crate) async fn run_loop<R: Reconciler>(
    mut r: R,
    rx: Receiver<ChangeEvent>,
    tick: Duration,
    progress: Arc<TaskProgress>,
) {
    let mut interval = tokio::time::interval(tick.max(Duration::from_millis(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rx = Some(rx);
    // The revision after the last pass, when that pass left it unchanged (it wrote nothing).
    let mut quiet: Option<u64> = None;
    loop {
        match rx.as_mut() {
            Some(receiver) => {
                tokio::select! {
                    _ = interval.tick() => quiet = ticked(&mut r, &progress, quiet).await,
                    ev = receiver.recv() => match ev {
                        Ok(ev) => progress.event(&mut r, ev).await,
                        Err(RecvError::Lagged(_)) => r.on_lagged(),
                        Err(RecvError::Closed) => rx = None,
                    },
                }
            }
            None => {
                interval.tick().await;
                quiet = ticked(&mut r, &progress, quiet).await;
            }
        }
    }
}

/// One tick of `r`: skipped when its [`Reconciler::revision`] is `quiet` (unchanged since a
/// pass that wrote nothing). Returns the new `quiet`.
async fn ticked<R: Reconciler>(
    r: &mut R,
    progress: &TaskProgress,
    quiet: Option<u64>,
) -> Option<u64> {
    let before = r.revision();
    let idle = before.is_some() && before == quiet;
    progress.tick(r, idle).await;
    if idle {
        return quiet;
    }
    let after = r.revision();
    (after == before).then_some(after).flatten()
}

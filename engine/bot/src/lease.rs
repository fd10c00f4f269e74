//! Leader election on a `coordination.k8s.io/v1` Lease, with the Lease's transition count as the
//! journal's fencing token (README "High availability and failure model").
//!
//! The algorithm is client-go's `tryAcquireOrRenew`, on kube's typed `Api<Lease>`:
//! - every write is a `replace` (PUT) carrying the `resourceVersion` of the Lease just read, so
//!   two candidates writing the same version get one success and one 409 Conflict, and a create
//!   of an existing Lease is a 409 AlreadyExists: the API server decides, never a client's
//!   clock;
//! - a Lease held by another identity is taken only when it has not changed for its
//!   `leaseDurationSeconds`, measured on this process's monotonic clock from when this process
//!   saw it change (no comparison of clocks between hosts);
//! - an acquisition writes the holder, the times and `leaseTransitions + 1` in the same guarded
//!   write, so every holder has its own token, strictly greater than its predecessor's; a Lease
//!   held by this identity in an earlier life (a restarted pod keeps its name) is taken like
//!   anyone else's, with a new token;
//! - the holder renews every `retryPeriod`; when no renewal succeeded for `renewDeadline`
//!   (shorter than `leaseDuration`, counted from before the last successful request was sent),
//!   or the Lease shows another holder or token, leadership is lost.
//!
//! Why not a crate: `kube-lease-manager` 0.13 (the one release for kube 5) acquires with a
//! server-side apply and increments `leaseTransitions` in a second, unguarded patch, so a
//! crash between them gives two holders the same token; it reports API errors while holding as
//! errors, not as a lost lease, so a partitioned holder cannot stop by a renew deadline; and it
//! needs the `patch` verb. `kube-leader-election` 0.44 is built on kube 4. kube-runtime has no
//! leader election.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::LeaderElectionSettings;
use tkgops_engine::store::FencingHandle;

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The Kubernetes client could not be configured (no in-cluster configuration, an
    /// unreadable kubeconfig).
    #[error("leader election: kubernetes client: {0}")]
    Client(String),
    /// The API server refused a request for another reason than a conflict (e.g. 403: the
    /// Role does not allow it), or could not be reached.
    #[error("leader election: lease {lease}: {source}")]
    Api {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The kube error.
        #[source]
        source: kube::Error,
    },
}

/// This process's hold on the Lease, returned by [`LeaderElector::acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// The Lease's `leaseTransitions` written at this acquisition: the fencing token of every
    /// journal write while this process holds the Lease.
    pub token: u64,
}

/// Why [`LeaderElector::hold`] returned: this process must stop acting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// No renewal succeeded for `renewDeadline`.
    RenewDeadline {
        /// The last error, if any.
        last_error: String,
    },
    /// The Lease names another holder (or another token): it was taken over.
    TakenOver {
        /// The holder the Lease names.
        holder: String,
        /// Its `leaseTransitions`.
        token: u64,
    },
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::RenewDeadline { last_error } => {
                write!(
                    f,
                    "no renewal succeeded within the renew deadline ({last_error})"
                )
            }
            Lost::TakenOver { holder, token } => {
                write!(f, "the lease was taken over by {holder:?} (token {token})")
            }
        }
    }
}

/// What this process last saw of the Lease, and when it saw it change (monotonic clock).
#[derive(Clone, Debug)]
struct Observed {
    spec: LeaseSpec,
    changed_at: Instant,
}

/// One candidate of leader election on one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    settings: LeaderElectionSettings,
    observed: Option<Observed>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("lease", &self.lease())
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Result of one attempt.
enum Attempt {
    /// This process holds the Lease with this token.
    Held(u64),
    /// Another identity holds it (holder, token), or a write lost a race.
    Other(String, u64),
}

impl LeaderElector {
    /// A candidate configured by `settings`: the client from `settings.kubeconfig` or the
    /// in-cluster configuration, the namespace and identity as [`LeaderElectionSettings`]
    /// documents their defaults.
    ///
    /// Errors: [`LeaseError::Client`] when no client can be configured or no identity found.
    pub async fn from_settings(settings: &LeaderElectionSettings) -> Result<Self, LeaseError> {
        let client_err = |e: &dyn std::fmt::Display| LeaseError::Client(e.to_string());
        let config = match &settings.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| client_err(&e))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| client_err(&e))?
            }
            None => kube::Config::incluster().map_err(|e| client_err(&e))?,
        };
        let client = Client::try_from(config).map_err(|e| client_err(&e))?;
        let namespace = settings
            .namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "default".into());
        let identity = settings
            .identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                LeaseError::Client("no identity: set leaderElection.identity or POD_NAME".into())
            })?;
        Ok(Self::new(client, &namespace, &identity, settings))
    }

    /// A candidate for the Lease `settings.lease_name` in `namespace` with `client`, writing
    /// `identity` as the holder.
    pub fn new(
        client: Client,
        namespace: &str,
        identity: &str,
        settings: &LeaderElectionSettings,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: settings.lease_name.clone(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            settings: settings.clone(),
            observed: None,
        }
    }

    /// `namespace/name` of the Lease.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The holder identity this candidate writes.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn api_err(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            lease: self.lease(),
            source,
        }
    }

    /// Waits (trying every `retryPeriod`) until this process holds the Lease; returns the
    /// fencing token written at the acquisition. Conflicts and unreachable API servers are
    /// retried; `on_standby(holder)` is called whenever the Lease is seen held by another.
    ///
    /// Errors: [`LeaseError::Api`] when the API server refuses a request for another reason
    /// than a conflict or being unreachable (a 403 from RBAC, a 404 of the namespace).
    pub async fn acquire(
        &mut self,
        mut on_standby: impl FnMut(&str),
    ) -> Result<Leadership, LeaseError> {
        let mut interval = tokio::time::interval(self.settings.retry_period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_holder = None;
        loop {
            interval.tick().await;
            match self.try_acquire_or_renew(None).await {
                Ok(Attempt::Held(token)) => {
                    info!(lease = %self.lease(), identity = %self.identity, token, "acquired the lease");
                    return Ok(Leadership { token });
                }
                Ok(Attempt::Other(holder, _)) => {
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        info!(lease = %self.lease(), %holder, "standby: the lease is held by another replica");
                        last_holder = Some(holder.clone());
                    }
                    on_standby(&holder);
                }
                Err(e) if retryable(&e) => {
                    warn!(lease = %self.lease(), error = %e, "cannot reach the lease; trying again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Renews the Lease every `retryPeriod` while this process holds it with `leadership`;
    /// returns as soon as it is lost ([`Lost`]): the caller must stop acting at once. Never
    /// returns while the Lease is held.
    pub async fn hold(&mut self, leadership: Leadership) -> Lost {
        let deadline = self.settings.renew_deadline;
        // Counted from before the acquisition's request was sent: conservative.
        let mut renewed = self
            .observed
            .as_ref()
            .map(|o| o.changed_at)
            .unwrap_or_else(Instant::now);
        let mut last_error = String::from("none");
        let mut interval = tokio::time::interval(self.settings.retry_period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            let left = deadline.saturating_sub(renewed.elapsed());
            if left.is_zero() {
                return Lost::RenewDeadline { last_error };
            }
            tokio::select! {
                _ = interval.tick() => {}
                _ = tokio::time::sleep(left) => return Lost::RenewDeadline { last_error },
            }
            let sent = Instant::now();
            let attempt = tokio::time::timeout(
                deadline.saturating_sub(renewed.elapsed()),
                self.try_acquire_or_renew(Some(leadership.token)),
            )
            .await;
            match attempt {
                Ok(Ok(Attempt::Held(_))) => {
                    renewed = sent;
                    debug!(lease = %self.lease(), "renewed the lease");
                }
                Ok(Ok(Attempt::Other(holder, token))) => {
                    if holder != self.identity || token != leadership.token {
                        return Lost::TakenOver { holder, token };
                    }
                    last_error = "conflict".into();
                }
                Ok(Err(e)) => {
                    warn!(lease = %self.lease(), error = %e, "renewing the lease failed");
                    last_error = e.to_string();
                }
                Err(_) => last_error = "request timed out".into(),
            }
        }
    }

    /// Gives the Lease up (holder cleared, duration 1 s) when this process holds it with
    /// `leadership`, so a standby takes over without waiting for it to expire. For a
    /// graceful shutdown; a failure is only logged (the Lease then expires).
    pub async fn release(&mut self, leadership: Leadership) {
        let Ok(Some(lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str())
            || token_of(&spec) != leadership.token
        {
            return;
        }
        let mut new = lease.clone();
        new.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &new)
            .await
        {
            Ok(_) => info!(lease = %self.lease(), "released the lease"),
            Err(e) => warn!(lease = %self.lease(), error = %e, "releasing the lease failed"),
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`: `holding` is the token this process
    /// holds the Lease with, `None` when it does not hold it.
    async fn try_acquire_or_renew(&mut self, holding: Option<u64>) -> Result<Attempt, LeaseError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let duration_secs = self.settings.lease_duration.as_secs() as i32;
        let Some(lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_err(e))?
        else {
            if holding.is_some() {
                // Deleted under us: someone else's doing; never recreate while acting.
                return Ok(Attempt::Other("<deleted>".into(), 0));
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            let sent = Instant::now();
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created, sent);
                    Ok(Attempt::Held(0))
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other(String::new(), 0)),
                Err(e) => Err(self.api_err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(&lease, Instant::now());
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let token = token_of(&spec);
        let mine = holding.is_some_and(|t| holder == self.identity && token == t);
        if holding.is_some() && !mine {
            return Ok(Attempt::Other(holder, token));
        }
        if !mine && !holder.is_empty() && !self.expired() {
            return Ok(Attempt::Other(holder, token));
        }
        let new_spec = if mine {
            LeaseSpec {
                renew_time: Some(now),
                lease_duration_seconds: Some(duration_secs),
                ..spec
            }
        } else {
            LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(spec.lease_transitions.unwrap_or(0).saturating_add(1)),
                ..spec
            }
        };
        let new_token = token_of(&new_spec);
        // The resourceVersion just read guards the write: a concurrent writer makes it a 409.
        let mut new = lease.clone();
        new.spec = Some(new_spec);
        let sent = Instant::now();
        match self
            .api
            .replace(&self.name, &PostParams::default(), &new)
            .await
        {
            Ok(written) => {
                self.observe(&written, sent);
                Ok(Attempt::Held(new_token))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other(holder, token)),
            Err(e) => Err(self.api_err(e)),
        }
    }

    /// Records `lease` as seen at `at`, keeping the earlier time when its spec did not change.
    fn observe(&mut self, lease: &Lease, at: Instant) {
        let spec = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|o| o.spec != spec) {
            self.observed = Some(Observed {
                spec,
                changed_at: at,
            });
        }
    }

    /// Whether the observed Lease has not changed for its duration.
    fn expired(&self) -> bool {
        let Some(o) = &self.observed else {
            return false;
        };
        let secs = o
            .spec
            .lease_duration_seconds
            .unwrap_or(self.settings.lease_duration.as_secs() as i32)
            .max(0) as u64;
        o.changed_at.elapsed() >= Duration::from_secs(secs)
    }
}

/// The Lease's `leaseTransitions` as a token (0 when absent or negative).
fn token_of(spec: &LeaseSpec) -> u64 {
    spec.lease_transitions.unwrap_or(0).max(0) as u64
}

/// Errors worth trying again: the API server unreachable or answering 5xx / 429.
fn retryable(e: &LeaseError) -> bool {
    match e {
        LeaseError::Api {
            source: kube::Error::Api(s),
            ..
        } => s.code >= 500 || s.code == 429,
        LeaseError::Api { .. } => true,
        LeaseError::Client(_) => false,
    }
}

/// A Lease this process holds, renewed by a background task from the acquisition on
/// ([`HeldLease::spawn`]). When it is lost, the journal's writes are refused at once (through
/// the [`FencingHandle`] given with [`HeldLease::set_fencing`]) and [`HeldLease::lost`]
/// resolves.
pub struct HeldLease {
    leadership: Leadership,
    lost: tokio::sync::watch::Receiver<Option<Lost>>,
    fencing: std::sync::Arc<std::sync::Mutex<Option<FencingHandle>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl HeldLease {
    /// Starts renewing the Lease `elector` acquired with `leadership`.
    pub fn spawn(mut elector: LeaderElector, leadership: Leadership) -> Self {
        let (lost_tx, lost) = tokio::sync::watch::channel(None);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let fencing: std::sync::Arc<std::sync::Mutex<Option<FencingHandle>>> = Default::default();
        let f = fencing.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                why = elector.hold(leadership) => {
                    let newer = match &why {
                        Lost::TakenOver { token, .. } => (*token).max(leadership.token + 1),
                        Lost::RenewDeadline { .. } => leadership.token + 1,
                    };
                    let guard = f.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(h) = guard.as_ref() {
                        h.observe(newer);
                    }
                    tracing::error!(lease = %elector.lease(), reason = %why, "lost the lease: the journal refuses writes, stopping");
                    let _ = lost_tx.send(Some(why));
                    drop(guard);
                }
                _ = stop_rx => elector.release(leadership).await,
            }
        });
        HeldLease {
            leadership,
            lost,
            fencing,
            stop: Some(stop),
            task,
        }
    }

    /// The fencing token of this hold.
    pub fn token(&self) -> u64 {
        self.leadership.token
    }

    /// Hands over the journal's fencing handle: refused at once when the Lease is lost
    /// already, else at the moment it is lost.
    pub fn set_fencing(&self, handle: FencingHandle) {
        let mut guard = self.fencing.lock().unwrap_or_else(|p| p.into_inner());
        if self.lost.borrow().is_some() {
            handle.observe(self.leadership.token + 1);
        }
        *guard = Some(handle);
    }

    /// Why the Lease was lost, if it was.
    pub fn lost_now(&self) -> Option<Lost> {
        self.lost.borrow().clone()
    }

    /// Resolves when the Lease is lost, with why.
    pub async fn lost(&self) -> Lost {
        let mut rx = self.lost.clone();
        let seen = rx.wait_for(Option::is_some).await.map(|v| v.clone());
        match seen {
            Ok(Some(why)) => why,
            // The renewal task ended without losing the Lease (released): never resolves.
            _ => std::future::pending().await,
        }
    }

    /// Stops renewing and releases the Lease (graceful shutdown), unless it was lost.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

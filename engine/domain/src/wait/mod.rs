//! Wait verdicts: what every tkgops wait decides, as pure functions of what it observed.
//!
//! A wait (`kube.wait-cluster`, `kube.wait-control-plane`, a PackageInstall reconcile, a TMC
//! attach, …) repeatedly looks at some objects and decides whether it is done, still waiting, or
//! failed. The looking (shared watches, polled GETs) and the clock live in the providers' one
//! wait driver; the deciding lives here, in one [`Judge`] per wait, so every rule is unit-tested
//! on fixtures shaped like what Cluster API, kapp-controller and TMC return:
//!
//! | judge | wait | rule source |
//! |---|---|---|
//! | [`cluster::ClusterReady`] | `kube.wait-cluster` | docs/tkg2-class-based.md §6 |
//! | [`rollout::ControlPlaneRolled`] | `kube.wait-control-plane` | §8 "Wait", CP |
//! | [`rollout::MachineDeploymentsRolled`] | `kube.wait-machine-deployments` | §8 "Wait", workers |
//! | [`rollout::ClusterDeleted`] | `kube.delete-cluster` | Cluster API deletion |
//! | [`packages::PackageReconciled`] | a PackageRepository or PackageInstall reconciled | docs/tanzu-apis.md §4.3, §6 step 5 |
//! | [`packages::PackagesVerified`] | `packages.verify` | docs/tanzu-apis.md §4.3 |
//! | [`packages::PackageDeleted`] | a PackageInstall uninstalled (`tanzu package installed delete`) | docs/tanzu-apis.md §4.2 |
//! | [`packages::ValuesReconciled`] | a values-only change reconciled | docs/tanzu-apis.md §4.3 |
//! | [`tmc::TmcClusterReady`] | `tmc.attach` | docs/tanzu-apis.md §3.5 step 4 |
//! | [`tmc::TmcClusterGone`] | `tmc.detach` | docs/tanzu-apis.md §3.5 step 5 |
//!
//! Time-based rules (TKG's error persistence, unchanged and bootstrap timeouts, package
//! timeouts) take the observed time as an input (`at`, a [`Duration`] since the wait's origin,
//! normally the step's start) and never read a clock; a [`Progress`] tells the driver when to
//! judge again even if nothing changes ([`Progress::recheck_at`]).
//!
//! What the judges read of a watched object is listed in [`watched`]: the providers' shared
//! watches keep only that ([`watched::retain_read`]).

pub mod cluster;
pub mod packages;
pub mod rollout;
pub mod tmc;
pub mod watched;

use std::borrow::Borrow;
use std::time::Duration;

use serde_json::Value;

/// What a [`Judge`] decided about one snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict<O> {
    /// The wait is over; carries the wait's output.
    Done(O),
    /// Not yet: report the progress and wait for a change (or the recheck time).
    Waiting(Progress),
    /// The wait has failed.
    Failed(Failure),
}

/// Where a wait stands while it waits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The progress line to report (deduplicated by the driver), or `None` for nothing new.
    pub line: Option<String>,
    /// Judge again at this observed time (since the wait's origin) even if nothing changes: a
    /// time-based rule may fire then. `None`: only a change wakes the wait.
    pub recheck_at: Option<Duration>,
}

impl Progress {
    /// Waiting, reporting `line`, woken only by a change.
    pub fn line(line: impl Into<String>) -> Self {
        Progress {
            line: Some(line.into()),
            recheck_at: None,
        }
    }

    /// Waiting without a new line, woken only by a change.
    pub fn silent() -> Self {
        Progress::default()
    }

    /// The same, judged again at `at` at the latest (the earlier of `at` and an existing recheck).
    pub fn recheck_at(mut self, at: Duration) -> Self {
        self.recheck_at = Some(self.recheck_at.map_or(at, |r| r.min(at)));
        self
    }

    /// As [`Self::recheck_at`] when `at` is `Some`.
    pub fn recheck_at_opt(self, at: Option<Duration>) -> Self {
        match at {
            Some(at) => self.recheck_at(at),
            None => self,
        }
    }
}

/// Whether a failed wait is worth another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Another attempt would fail the same way (the step fails).
    Never,
    /// Another attempt may succeed (the engine retries the step).
    Later,
}

/// Why a wait failed: the message the pull request shows and whether to retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The message, naming the object and the reason (no secrets).
    pub message: String,
    /// Whether another attempt may succeed.
    pub retry: Retry,
}

impl Failure {
    /// A failure another attempt would repeat.
    pub fn permanent(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retry: Retry::Never,
        }
    }

    /// A failure another attempt may not repeat.
    pub fn transient(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retry: Retry::Later,
        }
    }
}

/// The decision of one wait, as a function of what it observed.
///
/// A judge holds the wait's parameters and the little memory TKG's rules need (since when an
/// error condition has persisted, the Machines present at the start, the latest
/// `usefulErrorMessage`), all plain data; it never reads a clock or does I/O, so the same
/// snapshots at the same times give the same verdicts.
pub trait Judge {
    /// What one observation holds (plain data: JSON objects as the API returns them).
    type Snapshot;
    /// What the wait returns when done.
    type Output;

    /// Judges `snapshot`, observed at `at` (observed time since the wait's origin).
    fn judge(&mut self, snapshot: &Self::Snapshot, at: Duration) -> Verdict<Self::Output>;

    /// The progress line to report when the wait ends with `output` (`None`: nothing).
    fn closing_line(&self, _output: &Self::Output) -> Option<String> {
        None
    }

    /// What the wait ends with when the driver's deadline passes at `at` before a verdict
    /// ended it (e.g. no snapshot could be taken). Default: a transient "timed out" failure.
    fn deadline_passed(&mut self, at: Duration) -> Result<Self::Output, Failure> {
        Err(Failure::transient(format!(
            "timed out after {} s",
            at.as_secs()
        )))
    }
}

/// How the waits tolerate failures and how long they wait, as `tanzu cluster create` does
/// (docs/tkg2-class-based.md §6). Every field is a duration of observed time, so tests can
/// shorten them or drive them with a paused clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitOptions {
    /// `kube.wait-cluster` fails with "cluster creation failed, reason: …" once the Cluster has
    /// shown `Ready=False` with severity `Error` continuously for this long (messages containing
    /// "context deadline exceeded" or "context canceled" do not count). TKG: 20 consecutive 15 s
    /// polls, so the default is 5 min (§6 step 2).
    pub error_persistence: Duration,
    /// `kube.wait-cluster` fails with "timed out waiting for cluster creation to complete" when
    /// nothing changed for this long: Ready's `lastTransitionTime`, or any MachineDeployment's
    /// `replicas`, `readyReplicas` or `updatedReplicas`. TKG's `operationTimeout`: 30 min (§6
    /// step 2).
    pub unchanged_timeout: Duration,
    /// How long `kube.wait-cluster` waits for the ClusterBootstrap `<cluster>` to exist once the
    /// machines are ready. TKG: 10 min (§6 step 5).
    pub bootstrap_timeout: Duration,
    /// How long a PackageInstall may keep failing (`ReconcileFailed`; kapp-controller retries)
    /// before the wait fails with its `usefulErrorMessage`: core packages in
    /// `kube.wait-cluster` (TKG `PACKAGE_INSTALL_TIMEOUT`, default 10 min, §6 step 5) and
    /// packages of `packages.rollout`. Also bounded by the step deadline minus
    /// [`Self::deadline_margin`].
    pub package_timeout: Duration,
    /// How long `packages.rollout` waits for its PackageRepository to reconcile before the
    /// attempt fails transiently (the old 20 polls × 15 s: 5 min).
    pub repository_timeout: Duration,
    /// A wait that has a failure to report (a failing PackageInstall) ends this long before the
    /// step deadline (`timeout_secs`), so the failure, not "timed out", reaches the PR. Capped at
    /// a tenth of the step timeout. Default 5 s.
    pub deadline_margin: Duration,
    /// The pause between two tries of an upgrade's write while the TKR resolver cannot
    /// resolve the TKR yet. TKG: 30 s (docs/tkg2-class-based.md §8 "Patch"); the number of
    /// tries is the release's ([`crate::tkg::TkgVersion::upgrade_patch_tries`]).
    pub resolver_retry_interval: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            error_persistence: Duration::from_secs(5 * 60),
            unchanged_timeout: Duration::from_secs(30 * 60),
            bootstrap_timeout: Duration::from_secs(10 * 60),
            package_timeout: Duration::from_secs(10 * 60),
            repository_timeout: Duration::from_secs(5 * 60),
            deadline_margin: Duration::from_secs(5),
            resolver_retry_interval: Duration::from_secs(30),
        }
    }
}

impl WaitOptions {
    /// When, after the step's start, a wait with a failure to report must end, for a step with
    /// `timeout_secs` (0: no step deadline, `None`): the step timeout minus
    /// [`Self::deadline_margin`] (at most a tenth of the timeout).
    pub fn report_after(&self, timeout_secs: u64) -> Option<Duration> {
        if timeout_secs == 0 {
            return None;
        }
        let timeout = Duration::from_secs(timeout_secs);
        let margin = self.deadline_margin.min(timeout / 10);
        Some(timeout - margin)
    }
}

/// The condition of `type_` in `status.conditions` of `obj` (Cluster API and kapp-controller
/// conditions are a list of `{type, status, severity, reason, message, lastTransitionTime}`).
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

/// Whether the condition `type_` of `obj` has `status: "True"`.
pub fn condition_true(obj: &Value, type_: &str) -> bool {
    condition(obj, type_)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

/// The string at JSON pointer `ptr` of `v`, or "".
pub fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// The integer at JSON pointer `ptr` of `v`.
pub fn int_at(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

/// The value of label `key` of `v` (`metadata.labels`), or "".
pub fn label<'a>(v: &'a Value, key: &str) -> &'a str {
    v.pointer("/metadata/labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.name` of `v`, or "".
pub fn name_of(v: &Value) -> &str {
    str_at(v, "/metadata/name")
}

/// `metadata.namespace` of `v`, or "".
pub fn namespace_of(v: &Value) -> &str {
    str_at(v, "/metadata/namespace")
}

/// The objects of `objs` as plain references.
fn values<V: Borrow<Value>>(objs: &[V]) -> impl Iterator<Item = &Value> {
    objs.iter().map(Borrow::borrow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_rechecks_at_the_earliest_time() {
        let p = Progress::line("x")
            .recheck_at(Duration::from_secs(9))
            .recheck_at(Duration::from_secs(3))
            .recheck_at_opt(None)
            .recheck_at_opt(Some(Duration::from_secs(5)));
        assert_eq!(p.recheck_at, Some(Duration::from_secs(3)));
        assert_eq!(p.line.as_deref(), Some("x"));
        assert_eq!(Progress::silent().line, None);
    }

    #[test]
    fn the_report_deadline_keeps_a_margin_of_at_most_a_tenth() {
        let o = WaitOptions::default();
        assert_eq!(o.report_after(0), None);
        assert_eq!(o.report_after(3600), Some(Duration::from_secs(3595)));
        assert_eq!(o.report_after(20), Some(Duration::from_secs(18)));
    }

    #[test]
    fn conditions_are_found_by_type() {
        let v = serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "X", "status": "False"}]}});
        assert!(condition_true(&v, "Ready"));
        assert!(!condition_true(&v, "X"));
        assert!(condition(&v, "Y").is_none());
        assert!(!condition_true(&Value::Null, "Ready"));
    }
}

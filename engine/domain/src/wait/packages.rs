//! Waits on kapp-controller objects (docs/tanzu-apis.md §4.2, §4.3; KC
//! `pkg/apis/kappctrl/v1alpha1/status.go`): a PackageRepository or PackageInstall reconciled
//! ([`PackageReconciled`]), every PackageInstall of a workload cluster reconciled
//! ([`PackagesVerified`]), a PackageInstall uninstalled ([`PackageDeleted`]), a values-only
//! change reconciled ([`ValuesReconciled`]).
//!
//! A `ReconcileFailed` object is not failed at once: kapp-controller keeps retrying and TKG
//! tolerates it (docs/tkg2-class-based.md §6 step 5), so the judges report the
//! `usefulErrorMessage` as progress and fail with it only at their timeout or the step's report
//! deadline ([`super::WaitOptions::report_after`]). kapp-controller alternates
//! `ReconcileFailed` and `Reconciling` while it retries, so a retry in progress still counts as
//! failing, with the last message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::output::PackagesVerifyOutput;

use super::{
    condition, condition_true, name_of, namespace_of, str_at, Failure, Judge, Progress, Verdict,
};

/// The kapp-controller reconcile state of a PackageRepository or PackageInstall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReconcileState {
    /// `observedGeneration == metadata.generation` and the condition is `ReconcileSucceeded`.
    Succeeded,
    /// The current generation failed; carries `usefulErrorMessage` (or the condition message).
    Failed(String),
    /// Anything else; carries a short description (`Reconciling`, `not reconciled yet`, …).
    Pending(String),
}

/// Reads the KC generic status of `obj` (KC `pkg/apis/kappctrl/v1alpha1/status.go`): only the
/// current generation counts, and exactly one condition is present at a time.
pub fn reconcile_state(obj: &Value) -> ReconcileState {
    let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = obj
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    if generation.is_some() && observed != generation {
        return ReconcileState::Pending(
            "waiting for kapp-controller to observe the latest generation".into(),
        );
    }
    if condition_true(obj, "ReconcileFailed") {
        let useful = obj
            .pointer("/status/usefulErrorMessage")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim();
        let msg = if useful.is_empty() {
            condition(obj, "ReconcileFailed")
                .and_then(|c| c.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("reconcile failed")
        } else {
            useful
        };
        return ReconcileState::Failed(msg.to_string());
    }
    if condition_true(obj, "ReconcileSucceeded") {
        return ReconcileState::Succeeded;
    }
    let desc = obj
        .pointer("/status/friendlyDescription")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            obj.pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.first())
                .and_then(|c| c.get("type"))
                .and_then(Value::as_str)
        })
        .unwrap_or("not reconciled yet");
    ReconcileState::Pending(desc.to_string())
}

/// `status.friendlyDescription` of `v`, or `default` when absent or empty.
pub fn friendly_or(v: &Value, default: &str) -> String {
    v.pointer("/status/friendlyDescription")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(default)
        .to_string()
}

/// How a [`PackageReconciled`] wait fails when its object is still pending (not failing) at its
/// timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PendingFailure {
    /// A PackageRepository: transient "`<waiting>` (`<description>`)", the next attempt waits
    /// again.
    Repository { waiting: String },
    /// A PackageInstall: permanent "`<what>`: not reconciled after `<n>` s (`<description>`)".
    Package { timeout: Duration },
}

/// Waits until one kapp-controller object (PackageRepository or PackageInstall) is
/// `ReconcileSucceeded` for at least the generation tkgops applied (what `tanzu package
/// install` and TF `VerifyPackageInstallReconciledSuccessfully` wait for, docs/tanzu-apis.md §4.3).
///
/// Snapshot: the object as the watch holds it (`None`: not found). Output: the object.
/// Progress: "`<label>`: `<description>`", or "`<label>`: reconcile failed, kapp-controller
/// retries: `<message>`". Failures at `until` (or, once a failure was seen, at the report
/// deadline): permanent "`<what>`: `<usefulErrorMessage>`" for a failing object; otherwise the
/// pending failure of the constructor.
#[derive(Clone, Debug)]
pub struct PackageReconciled {
    what: String,
    label: String,
    until: Duration,
    report_deadline: Option<Duration>,
    min_generation: i64,
    pending: PendingFailure,
    last_failure: Option<String>,
}

impl PackageReconciled {
    /// The PackageRepository `namespace/name` wait of every packages step: until
    /// `until` (observed time; the step's start + [`super::WaitOptions::repository_timeout`]),
    /// a failure ended by `report_deadline` at the latest. Still pending then: transient
    /// "waiting for PackageRepository `<name>` (`<description>`)"; still failing: permanent
    /// "PackageRepository/`<ns>`/`<name>`: reconcile failed: `<message>`".
    pub fn repository(
        namespace: &str,
        name: &str,
        until: Duration,
        report_deadline: Option<Duration>,
    ) -> Self {
        let waiting = format!("waiting for PackageRepository {name}");
        PackageReconciled {
            what: format!("PackageRepository/{namespace}/{name}: reconcile failed"),
            label: waiting.clone(),
            until,
            report_deadline,
            min_generation: 0,
            pending: PendingFailure::Repository { waiting },
            last_failure: None,
        }
    }

    /// The PackageInstall wait of `packages.rollout` and `packages.update`: `what` names it in
    /// failures ("PackageInstall `<ns>`/`<name>`"), `label` in progress lines; judged only at
    /// `min_generation` or later (the generation the apply stored); until `until` (observed
    /// time; the wait's start + `timeout`), a failure ended by `report_deadline` at the latest.
    /// Still pending then: permanent "`<what>`: not reconciled after `<timeout>` s (`<description>`)".
    pub fn package(
        what: &str,
        label: &str,
        min_generation: i64,
        until: Duration,
        timeout: Duration,
        report_deadline: Option<Duration>,
    ) -> Self {
        PackageReconciled {
            what: what.to_string(),
            label: label.to_string(),
            until,
            report_deadline,
            min_generation,
            pending: PendingFailure::Package { timeout },
            last_failure: None,
        }
    }

    fn pending_failure(&self, description: &str) -> Failure {
        match &self.pending {
            PendingFailure::Repository { waiting } => {
                Failure::transient(format!("{waiting} ({description})"))
            }
            PendingFailure::Package { timeout } => Failure::permanent(format!(
                "{}: not reconciled after {} s ({description})",
                self.what,
                timeout.as_secs()
            )),
        }
    }

    /// The state of `obj` for this wait: an object older than the applied generation is not
    /// judged (the watch has not delivered the new spec yet).
    fn state(&self, obj: Option<&Value>) -> ReconcileState {
        let Some(v) = obj else {
            return ReconcileState::Pending("not found".into());
        };
        let generation = v
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if generation < self.min_generation {
            return ReconcileState::Pending("waiting for the applied generation".into());
        }
        reconcile_state(v)
    }
}

impl Judge for PackageReconciled {
    type Snapshot = Option<Arc<Value>>;
    type Output = Arc<Value>;

    fn judge(&mut self, obj: &Option<Arc<Value>>, at: Duration) -> Verdict<Arc<Value>> {
        let state = self.state(obj.as_deref());
        if let ReconcileState::Failed(m) = &state {
            self.last_failure = Some(m.clone());
        }
        let deadline = failure_deadline(self.until, self.report_deadline, &self.last_failure);
        match (state, &self.last_failure) {
            (ReconcileState::Succeeded, _) => match obj {
                Some(o) => Verdict::Done(o.clone()),
                None => Verdict::Waiting(Progress::silent()),
            },
            (_, Some(m)) if at >= deadline => {
                Verdict::Failed(Failure::permanent(format!("{}: {m}", self.what)))
            }
            (ReconcileState::Failed(m), _) => Verdict::Waiting(
                Progress::line(format!(
                    "{}: reconcile failed, kapp-controller retries: {m}",
                    self.label
                ))
                .recheck_at(deadline),
            ),
            (ReconcileState::Pending(d), _) if at >= deadline => {
                Verdict::Failed(self.pending_failure(&d))
            }
            (ReconcileState::Pending(d), _) => Verdict::Waiting(
                Progress::line(format!("{}: {d}", self.label)).recheck_at(deadline),
            ),
        }
    }

    /// The watch never listed before `until`: the pending failure "… (the watch has not synced)".
    fn deadline_passed(&mut self, _at: Duration) -> Result<Arc<Value>, Failure> {
        Err(self.pending_failure("the watch has not synced"))
    }
}

/// One PackageInstall `packages.verify` judges: `namespace/name`, the generation one LIST saw
/// at the step's start, and the object as the watch holds it now (`None`: deleted meanwhile,
/// no longer part of the cluster).
#[derive(Clone, Debug, PartialEq)]
pub struct ListedPackage {
    /// `<namespace>/<name>`.
    pub id: String,
    /// `metadata.generation` as listed at the start.
    pub generation: i64,
    /// The object now.
    pub object: Option<Arc<Value>>,
}

/// `packages.verify`: every PackageInstall of the workload cluster (listed at the step's start)
/// must be `ReconcileSucceeded` for (at least) the listed generation (docs/tanzu-apis.md §4.3).
///
/// Output `{"packageInstalls": {"<ns>/<name>": "<version>", …}}` (the version is
/// `status.version`, else the version constraint). Progress "`<ok>`/`<listed>` PackageInstalls
/// reconciled; waiting: …; failing: …". Fails permanently at `until` (observed time):
/// "workload cluster '`<name>`': PackageInstalls did not reconcile within `<n>` s: …".
#[derive(Clone, Debug)]
pub struct PackagesVerified {
    cluster: String,
    until: Duration,
    last_failures: BTreeMap<String, String>,
    closing: Option<String>,
}

impl PackagesVerified {
    /// The judge for workload cluster `cluster`, failing at `until` (observed time since the
    /// wait's origin, which is the step's start).
    pub fn new(cluster: &str, until: Duration) -> Self {
        PackagesVerified {
            cluster: cluster.to_string(),
            until,
            last_failures: BTreeMap::new(),
            closing: None,
        }
    }
}

impl Judge for PackagesVerified {
    type Snapshot = Vec<ListedPackage>;
    type Output = PackagesVerifyOutput;

    fn judge(
        &mut self,
        listed: &Vec<ListedPackage>,
        at: Duration,
    ) -> Verdict<PackagesVerifyOutput> {
        let mut ok = BTreeMap::new();
        let mut pending = Vec::new();
        let mut failed = Vec::new();
        let mut all: Vec<&Value> = Vec::new();
        for p in listed {
            match &p.object {
                None => {}
                Some(o)
                    if o.pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                        < p.generation =>
                {
                    pending.push(format!(
                        "{} (waiting for generation {})",
                        p.id, p.generation
                    ))
                }
                Some(o) => all.push(o),
            }
        }
        for p in all {
            let id = format!("{}/{}", namespace_of(p), name_of(p));
            match reconcile_state(p) {
                ReconcileState::Succeeded => {
                    self.last_failures.remove(&id);
                    let version = match str_at(p, "/status/version") {
                        "" => str_at(p, "/spec/packageRef/versionSelection/constraints"),
                        v => v,
                    };
                    ok.insert(id, version.to_string());
                }
                ReconcileState::Failed(m) => {
                    failed.push(format!("PackageInstall {id}: {m}"));
                    self.last_failures.insert(id, m);
                }
                ReconcileState::Pending(d) => match self.last_failures.get(&id) {
                    Some(m) => failed.push(format!("PackageInstall {id}: {m}")),
                    None => pending.push(format!("{id} ({d})")),
                },
            }
        }
        if failed.is_empty() && pending.is_empty() {
            self.closing = Some(format!("{} PackageInstalls reconciled", ok.len()));
            return Verdict::Done(PackagesVerifyOutput {
                package_installs: ok,
            });
        }
        if at >= self.until {
            let detail = if failed.is_empty() {
                format!("not reconciled: {}", pending.join(", "))
            } else {
                failed.join("; ")
            };
            return Verdict::Failed(Failure::permanent(format!(
                "workload cluster '{}': PackageInstalls did not reconcile within {} s: {detail}",
                self.cluster,
                at.as_secs()
            )));
        }
        Verdict::Waiting(
            Progress::line(format!(
                "{}/{} PackageInstalls reconciled{}{}",
                ok.len(),
                listed.len(),
                if pending.is_empty() {
                    String::new()
                } else {
                    format!("; waiting: {}", pending.join(", "))
                },
                if failed.is_empty() {
                    String::new()
                } else {
                    format!("; failing: {}", failed.join("; "))
                }
            ))
            .recheck_at(self.until),
        )
    }

    fn closing_line(&self, _output: &PackagesVerifyOutput) -> Option<String> {
        self.closing.clone()
    }
}

/// When a package wait gives up (observed time since its start): at `until`, or, once
/// kapp-controller reported a failure (`last_failure`), at `report_deadline` if that is sooner,
/// so the failure rather than "timed out" reaches the pull request (TKG's package timeout, §6).
fn failure_deadline(
    until: Duration,
    report_deadline: Option<Duration>,
    last_failure: &Option<String>,
) -> Duration {
    match (last_failure, report_deadline) {
        (Some(_), Some(d)) => until.min(d),
        _ => until,
    }
}

/// Waits until a deleted PackageInstall is gone: kapp-controller has uninstalled it and dropped
/// its finalizer (what `tanzu package installed delete` waits for, docs/tanzu-apis.md §4.2).
///
/// Snapshot: the object (`None`: gone). Output `()`. Progress "`<package>`: `<description>`"
/// or "`<package>`: delete failed, kapp-controller retries: `<message>`". `DeleteFailed` is
/// tolerated until `until` (or, once seen, the report deadline), then permanent "`<what>`:
/// delete failed: `<message>`"; still there without a failure: "`<what>`: not deleted after
/// `<n>` s (`<description>`)".
#[derive(Clone, Debug)]
pub struct PackageDeleted {
    what: String,
    package: String,
    until: Duration,
    timeout: Duration,
    report_deadline: Option<Duration>,
    last_failure: Option<String>,
    last_desc: String,
}

impl PackageDeleted {
    /// The judge for the PackageInstall `what` ("PackageInstall `<ns>`/`<name>`") of package
    /// `package`, deleted at the wait's start, failing at `until` (observed time; the start +
    /// `timeout`) or, once a failure was seen, at `report_deadline`.
    pub fn new(
        what: &str,
        package: &str,
        until: Duration,
        timeout: Duration,
        report_deadline: Option<Duration>,
    ) -> Self {
        PackageDeleted {
            what: what.to_string(),
            package: package.to_string(),
            until,
            timeout,
            report_deadline,
            last_failure: None,
            last_desc: "waiting for kapp-controller".into(),
        }
    }

    fn deadline(&self) -> Duration {
        failure_deadline(self.until, self.report_deadline, &self.last_failure)
    }

    fn failure(&self) -> Failure {
        match &self.last_failure {
            Some(m) => Failure::permanent(format!("{}: delete failed: {m}", self.what)),
            None => Failure::permanent(format!(
                "{}: not deleted after {} s ({})",
                self.what,
                self.timeout.as_secs(),
                self.last_desc
            )),
        }
    }
}

impl Judge for PackageDeleted {
    type Snapshot = Option<Arc<Value>>;
    type Output = ();

    fn judge(&mut self, obj: &Option<Arc<Value>>, at: Duration) -> Verdict<()> {
        let Some(v) = obj else {
            return Verdict::Done(());
        };
        let line = if condition_true(v, "DeleteFailed") {
            let m = v
                .pointer("/status/usefulErrorMessage")
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .unwrap_or("delete failed")
                .trim()
                .to_string();
            let line = format!(
                "{}: delete failed, kapp-controller retries: {m}",
                self.package
            );
            self.last_failure = Some(m);
            line
        } else {
            let d = friendly_or(v, "waiting for kapp-controller to uninstall it");
            let line = format!("{}: {d}", self.package);
            self.last_desc = d;
            line
        };
        if at >= self.deadline() {
            return Verdict::Failed(self.failure());
        }
        Verdict::Waiting(Progress::line(line).recheck_at(self.deadline()))
    }

    fn deadline_passed(&mut self, _at: Duration) -> Result<(), Failure> {
        Err(self.failure())
    }
}

/// Waits, over every state of a PackageInstall in order (a private watch opened before its
/// values Secret changed, which kapp-controller answers with a new reconcile of the same
/// generation), until kapp-controller has started a reconcile after the change and finished it
/// with `ReconcileSucceeded` (docs/tanzu-apis.md §4.3). A `ReconcileSucceeded` before anything else
/// is the old state and does not count.
///
/// Snapshot: the object (`None`: it disappeared). Output: its `friendlyDescription` (default
/// "Reconcile succeeded"). Failures (permanent): "`<what>` disappeared while its new values
/// were being reconciled"; at `until` (or, once a failure was seen, the report deadline)
/// "`<what>`: `<message>`", or "`<what>`: not reconciled after `<n>` s (`<description>`)".
#[derive(Clone, Debug)]
pub struct ValuesReconciled {
    what: String,
    label: String,
    until: Duration,
    timeout: Duration,
    report_deadline: Option<Duration>,
    started: bool,
    last_failure: Option<String>,
    last_desc: String,
}

impl ValuesReconciled {
    /// The judge for PackageInstall `what` ("PackageInstall `<ns>`/`<name>`"), reporting under
    /// `label`, failing at `until` (observed time; the wait's start + `timeout`) or, once a
    /// failure was seen, at `report_deadline`.
    pub fn new(
        what: &str,
        label: &str,
        until: Duration,
        timeout: Duration,
        report_deadline: Option<Duration>,
    ) -> Self {
        ValuesReconciled {
            what: what.to_string(),
            label: label.to_string(),
            until,
            timeout,
            report_deadline,
            started: false,
            last_failure: None,
            last_desc: "waiting for kapp-controller to reconcile the new values".into(),
        }
    }

    fn deadline(&self) -> Duration {
        failure_deadline(self.until, self.report_deadline, &self.last_failure)
    }

    fn failure(&self) -> Failure {
        match &self.last_failure {
            Some(m) => Failure::permanent(format!("{}: {m}", self.what)),
            None => Failure::permanent(format!(
                "{}: not reconciled after {} s ({})",
                self.what,
                self.timeout.as_secs(),
                self.last_desc
            )),
        }
    }
}

impl Judge for ValuesReconciled {
    type Snapshot = Option<Arc<Value>>;
    type Output = String;

    fn judge(&mut self, obj: &Option<Arc<Value>>, at: Duration) -> Verdict<String> {
        let Some(v) = obj else {
            return Verdict::Failed(Failure::permanent(format!(
                "{} disappeared while its new values were being reconciled",
                self.what
            )));
        };
        let state = reconcile_state(v);
        let mut line = None;
        if self.started || state != ReconcileState::Succeeded {
            self.started = true;
            match state {
                ReconcileState::Succeeded => {
                    return Verdict::Done(friendly_or(v, "Reconcile succeeded"))
                }
                ReconcileState::Failed(m) => {
                    line = Some(format!(
                        "{}: reconcile failed, kapp-controller retries: {m}",
                        self.label
                    ));
                    self.last_failure = Some(m);
                }
                ReconcileState::Pending(d) => {
                    line = Some(format!("{}: {d}", self.label));
                    self.last_desc = d;
                }
            }
        }
        if at >= self.deadline() {
            return Verdict::Failed(self.failure());
        }
        Verdict::Waiting(Progress {
            line,
            recheck_at: Some(self.deadline()),
        })
    }

    fn deadline_passed(&mut self, _at: Duration) -> Result<String, Failure> {
        Err(self.failure())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A PackageInstall as kapp-controller reports it (KC generic status).
    fn pkgi(generation: i64, observed: i64, cond: &str, useful: &str) -> Arc<Value> {
        Arc::new(
            json!({"apiVersion": "packaging.carvel.dev/v1alpha1", "kind": "PackageInstall",
            "metadata": {"name": "contour", "namespace": "tanzu-system-ingress", "generation": generation},
            "spec": {"packageRef": {"refName": "contour.tanzu.vmware.com",
                     "versionSelection": {"constraints": "1.20.2+vmware.1-tkg.1"}}},
            "status": {"observedGeneration": observed, "conditions": [{"type": cond, "status": "True"}],
                       "usefulErrorMessage": useful, "friendlyDescription": if cond == "ReconcileSucceeded" {"Reconcile succeeded"} else {cond},
                       "version": "1.20.2+vmware.1-tkg.1"}}),
        )
    }

    #[test]
    fn reconcile_state_honours_generation() {
        let v = json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 1,
            "conditions": [{"type": "ReconcileFailed", "status": "True"}], "usefulErrorMessage": "old"}});
        assert!(matches!(reconcile_state(&v), ReconcileState::Pending(_)));
        let v = json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 2,
            "conditions": [{"type": "ReconcileFailed", "status": "True"}], "usefulErrorMessage": "Could not find package"}});
        assert_eq!(
            reconcile_state(&v),
            ReconcileState::Failed("Could not find package".into())
        );
        let v = json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 2,
            "conditions": [{"type": "ReconcileSucceeded", "status": "True"}]}});
        assert_eq!(reconcile_state(&v), ReconcileState::Succeeded);
        let v = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
            "conditions": [{"type": "ReconcileFailed", "status": "True", "message": "from the condition"}]}});
        assert_eq!(
            reconcile_state(&v),
            ReconcileState::Failed("from the condition".into())
        );
        assert_eq!(
            reconcile_state(&json!({})),
            ReconcileState::Pending("not reconciled yet".into())
        );
    }

    fn waiting_line<O: std::fmt::Debug>(v: Verdict<O>) -> String {
        match v {
            Verdict::Waiting(p) => p.line.unwrap_or_default(),
            other => panic!("not waiting: {other:?}"),
        }
    }

    #[test]
    fn a_package_waits_for_the_applied_generation_and_tolerates_failures() {
        let label = "contour 1.20.2 (tanzu-system-ingress)";
        let mut j = PackageReconciled::package(
            "PackageInstall tanzu-system-ingress/contour",
            label,
            2,
            secs(600),
            secs(600),
            Some(secs(100)),
        );
        assert_eq!(
            waiting_line(j.judge(&None, secs(1))),
            format!("{label}: not found")
        );
        // The old generation's success does not count.
        assert_eq!(
            waiting_line(j.judge(&Some(pkgi(1, 1, "ReconcileSucceeded", "")), secs(2))),
            format!("{label}: waiting for the applied generation")
        );
        let failing = Some(pkgi(2, 2, "ReconcileFailed", "Could not find package"));
        let v = j.judge(&failing, secs(3));
        let Verdict::Waiting(p) = &v else { panic!() };
        // Once failing, the report deadline bounds the wait.
        assert_eq!(p.recheck_at, Some(secs(100)));
        assert_eq!(
            waiting_line(v),
            format!("{label}: reconcile failed, kapp-controller retries: Could not find package")
        );
        // Reconciling again: still the last failure at the deadline.
        let retrying = Some(pkgi(2, 2, "Reconciling", ""));
        assert!(matches!(j.judge(&retrying, secs(50)), Verdict::Waiting(_)));
        assert_eq!(
            j.judge(&retrying, secs(100)),
            Verdict::Failed(Failure::permanent(
                "PackageInstall tanzu-system-ingress/contour: Could not find package"
            ))
        );
        let ok = pkgi(2, 2, "ReconcileSucceeded", "");
        assert_eq!(j.judge(&Some(ok.clone()), secs(101)), Verdict::Done(ok));
    }

    #[test]
    fn a_pending_package_or_repository_fails_at_its_timeout() {
        let mut j =
            PackageReconciled::package("PackageInstall ns/p", "p", 0, secs(60), secs(60), None);
        assert_eq!(
            j.judge(&Some(pkgi(1, 1, "Reconciling", "")), secs(60)),
            Verdict::Failed(Failure::permanent(
                "PackageInstall ns/p: not reconciled after 60 s (Reconciling)"
            ))
        );
        let mut r = PackageReconciled::repository(
            "tanzu-package-repo-global",
            "tanzu-standard",
            secs(300),
            None,
        );
        assert_eq!(
            waiting_line(r.judge(&None, secs(1))),
            "waiting for PackageRepository tanzu-standard: not found"
        );
        assert_eq!(
            r.judge(&None, secs(300)),
            Verdict::Failed(Failure::transient(
                "waiting for PackageRepository tanzu-standard (not found)"
            ))
        );
        assert_eq!(
            r.deadline_passed(secs(300)),
            Err(Failure::transient(
                "waiting for PackageRepository tanzu-standard (the watch has not synced)"
            ))
        );
        let mut r = PackageReconciled::repository("ns", "repo", secs(300), None);
        r.judge(&Some(pkgi(1, 1, "ReconcileFailed", "fetch: 404")), secs(1));
        assert_eq!(
            r.judge(
                &Some(pkgi(1, 1, "ReconcileFailed", "fetch: 404")),
                secs(300)
            ),
            Verdict::Failed(Failure::permanent(
                "PackageRepository/ns/repo: reconcile failed: fetch: 404"
            ))
        );
    }

    fn listed(o: Option<Arc<Value>>, generation: i64) -> ListedPackage {
        ListedPackage {
            id: "tanzu-system-ingress/contour".into(),
            generation,
            object: o,
        }
    }

    #[test]
    fn verify_judges_every_listed_package_at_its_listed_generation() {
        let mut j = PackagesVerified::new("wc1", secs(600));
        let v = j.judge(
            &vec![listed(Some(pkgi(1, 1, "ReconcileSucceeded", "")), 2)],
            secs(1),
        );
        assert_eq!(
            waiting_line(v),
            "0/1 PackageInstalls reconciled; waiting: tanzu-system-ingress/contour (waiting for generation 2)"
        );
        let v = j.judge(
            &vec![listed(Some(pkgi(2, 2, "ReconcileFailed", "boom")), 2)],
            secs(2),
        );
        assert_eq!(
            waiting_line(v),
            "0/1 PackageInstalls reconciled; failing: PackageInstall tanzu-system-ingress/contour: boom"
        );
        assert_eq!(
            j.judge(&vec![listed(Some(pkgi(2, 2, "Reconciling", "")), 2)], secs(600)),
            Verdict::Failed(Failure::permanent(
                "workload cluster 'wc1': PackageInstalls did not reconcile within 600 s: PackageInstall tanzu-system-ingress/contour: boom"
            ))
        );
        // Deleted meanwhile: not part of the cluster any more.
        let mut j = PackagesVerified::new("wc1", secs(600));
        let snap = vec![
            listed(Some(pkgi(2, 2, "ReconcileSucceeded", "")), 2),
            ListedPackage {
                id: "x/gone".into(),
                generation: 1,
                object: None,
            },
        ];
        let Verdict::Done(out) = j.judge(&snap, secs(3)) else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"packageInstalls": {"tanzu-system-ingress/contour": "1.20.2+vmware.1-tkg.1"}})
        );
        assert_eq!(
            j.closing_line(&out).unwrap(),
            "1 PackageInstalls reconciled"
        );
    }

    #[test]
    fn a_deleted_package_is_waited_for_until_its_finalizer_goes() {
        let mut j = PackageDeleted::new(
            "PackageInstall ns/harbor",
            "harbor",
            secs(600),
            secs(600),
            Some(secs(90)),
        );
        let mut deleting = (*pkgi(1, 1, "Deleting", "")).clone();
        deleting["status"]["friendlyDescription"] = json!("Deleting");
        assert_eq!(
            waiting_line(j.judge(&Some(Arc::new(deleting)), secs(1))),
            "harbor: Deleting"
        );
        let mut failed = (*pkgi(1, 1, "DeleteFailed", "kapp: delete failed: finalizer")).clone();
        failed["status"]["friendlyDescription"] = json!("");
        let failed = Some(Arc::new(failed));
        assert_eq!(
            waiting_line(j.judge(&failed, secs(2))),
            "harbor: delete failed, kapp-controller retries: kapp: delete failed: finalizer"
        );
        assert_eq!(
            j.judge(&failed, secs(90)),
            Verdict::Failed(Failure::permanent(
                "PackageInstall ns/harbor: delete failed: kapp: delete failed: finalizer"
            ))
        );
        assert_eq!(j.judge(&None, secs(91)), Verdict::Done(()));
        let mut j = PackageDeleted::new(
            "PackageInstall ns/harbor",
            "harbor",
            secs(60),
            secs(60),
            None,
        );
        assert_eq!(
            j.deadline_passed(secs(60)),
            Err(Failure::permanent(
                "PackageInstall ns/harbor: not deleted after 60 s (waiting for kapp-controller)"
            ))
        );
    }

    #[test]
    fn a_values_change_counts_only_after_a_new_reconcile_started() {
        let mut j = ValuesReconciled::new(
            "PackageInstall ns/contour",
            "contour",
            secs(600),
            secs(600),
            None,
        );
        let ok = Some(pkgi(1, 1, "ReconcileSucceeded", ""));
        // The old state: not done, nothing to report.
        assert_eq!(
            j.judge(&ok, secs(1)),
            Verdict::Waiting(Progress {
                line: None,
                recheck_at: Some(secs(600))
            })
        );
        assert_eq!(
            waiting_line(j.judge(&Some(pkgi(1, 1, "Reconciling", "")), secs(2))),
            "contour: Reconciling"
        );
        assert_eq!(
            j.judge(&ok, secs(3)),
            Verdict::Done("Reconcile succeeded".into())
        );
        let mut j = ValuesReconciled::new(
            "PackageInstall ns/contour",
            "contour",
            secs(600),
            secs(600),
            None,
        );
        assert_eq!(
            j.judge(&None, secs(1)),
            Verdict::Failed(Failure::permanent(
                "PackageInstall ns/contour disappeared while its new values were being reconciled"
            ))
        );
        let mut j = ValuesReconciled::new(
            "PackageInstall ns/contour",
            "contour",
            secs(600),
            secs(600),
            None,
        );
        assert_eq!(
            j.deadline_passed(secs(600)),
            Err(Failure::permanent(
                "PackageInstall ns/contour: not reconciled after 600 s (waiting for kapp-controller to reconcile the new values)"
            ))
        );
    }
}

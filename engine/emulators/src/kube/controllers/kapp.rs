//! Simulated kapp-controller on a workload cluster: PackageRepository and PackageInstall status
//! (`packaging.carvel.dev/v1alpha1`) with the generic kapp-controller status semantics
//! (docs/tanzu-apis.md §4.3): exactly one condition at a time, `observedGeneration` bumped when a
//! reconcile starts, `usefulErrorMessage` holding the failure detail.
//!
//! PackageInstall, one step per tick:
//! 0. A PackageInstall without kapp-controller's delete finalizer
//!    ([`PACKAGE_INSTALL_FINALIZER`], KC `pkg/packageinstall/finalizers.go`) gets it first, so a
//!    DELETE only marks it (`deletionTimestamp`) while kapp-controller uninstalls the package;
//! 1. `metadata.generation != status.observedGeneration` → `Reconciling` (also right away on the
//!    change event);
//! 2. `Reconciling` → `ReconcileFailed` or `ReconcileSucceeded`. Checks, in kapp-controller's order:
//!    the Package `<refName>` at the constrained version in the PackageInstall's namespace or the
//!    global packaging namespace, the ServiceAccount `spec.serviceAccountName`, then every
//!    `spec.values[].secretRef` Secret.
//! 3. A `ReconcileFailed` PackageInstall is retried (back to `Reconciling`) once the outcome would
//!    differ, e.g. after the missing ServiceAccount appears, like kapp-controller's periodic retries.
//! 4. A change to a Secret that `spec.values[].secretRef` names starts a new reconcile of the
//!    (already reconciled) PackageInstall, `observedGeneration` unchanged (kapp-controller watches
//!    the values Secrets of its Apps).
//!
//! Deletion (`deletionTimestamp` set, finalizer present), one step per tick: the single condition
//! becomes `Deleting` (`friendlyDescription "Deleting"`, KC `SetDeleting`); on the next tick the
//! package's resources are uninstalled (the emulator models none beyond the PackageInstall) and
//! the finalizer is dropped, so the API server removes the object. An injected delete failure
//! instead sets `DeleteFailed` with `usefulErrorMessage` (KC `SetDeleteCompleted(err)`), retried
//! (back to `Deleting`) on the following tick.
//!
//! Test knob, injected reconcile failures: ConfigMap [`KAPP_FAULTS_CONFIGMAP`] in namespace
//! [`KAPP_FAULTS_NAMESPACE`] of the workload cluster, one data key per PackageInstall,
//! `<namespace>.<name>`, with value `<N>:<usefulErrorMessage>` (`N` a count, or `*` for every
//! reconcile). The first `N` reconciles of the PackageInstall's current generation end in
//! `ReconcileFailed` with that message, each retried on the next tick (kapp-controller keeps
//! retrying), before the normal checks run. The count is kept in the controller's memory per
//! PackageInstall uid and generation (a restarted controller starts over).
//!
//! Test knob, injected delete failures: in the same ConfigMap, data key
//! `delete.<namespace>.<name>` with value `<N>:<usefulErrorMessage>` (`N` a count or `*`): the
//! first `N` uninstall attempts of the PackageInstall end in `DeleteFailed` with that message.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{json, Map, Value};
use tracing::warn;

use super::super::{ChangeEvent, EmulatedCluster};
use super::catalog::PACKAGING_GLOBAL_NAMESPACE;
use super::util::*;
use super::Reconciler;

/// Name of the ConfigMap holding injected PackageInstall reconcile failures (see module docs).
pub const KAPP_FAULTS_CONFIGMAP: &str = "emulator-kapp-faults";
/// Namespace of [`KAPP_FAULTS_CONFIGMAP`].
pub const KAPP_FAULTS_NAMESPACE: &str = "kube-system";

/// kapp-controller's finalizer on every PackageInstall (KC `pkg/packageinstall`
/// `deleteFinalizerName`): held while the package is uninstalled after a DELETE.
pub const PACKAGE_INSTALL_FINALIZER: &str = "finalizers.packageinstall.packaging.carvel.dev/delete";

/// kapp-controller for one workload cluster.
pub(crate) struct KappController {
    cluster: EmulatedCluster,
    /// Injected failures already served, by PackageInstall `uid/generation`.
    injected: HashMap<String, u64>,
}

/// An injected failure: how many reconciles fail (`None`: all) and the message.
struct InjectedFault {
    count: Option<u64>,
    message: String,
}

/// The only condition in a kapp-controller status, if any.
fn single_condition(obj: &Value) -> Option<&str> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|l| l.first())
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
}

/// `SetReconciling`: one `Reconciling` condition, `observedGeneration = generation`.
fn reconciling_status(obj: &Value) -> Map<String, Value> {
    let mut st = status_of(obj);
    st.insert(
        "conditions".into(),
        json!([{"type": "Reconciling", "status": "True"}]),
    );
    st.insert("observedGeneration".into(), json!(generation_of(obj)));
    st.insert("friendlyDescription".into(), json!("Reconciling"));
    st.remove("usefulErrorMessage");
    st
}

/// `SetReconcileCompleted(err)` for a failure.
fn failed_status(mut st: Map<String, Value>, err: &str) -> Map<String, Value> {
    st.insert(
        "conditions".into(),
        json!([{"type": "ReconcileFailed", "status": "True", "message": "Error (see .status.usefulErrorMessage for details)"}]),
    );
    st.insert(
        "friendlyDescription".into(),
        json!(format!("Reconcile failed: {err}")),
    );
    st.insert("usefulErrorMessage".into(), json!(err));
    st
}

/// `SetReconcileCompleted(nil)`.
fn succeeded_status(mut st: Map<String, Value>) -> Map<String, Value> {
    st.insert(
        "conditions".into(),
        json!([{"type": "ReconcileSucceeded", "status": "True"}]),
    );
    st.insert("friendlyDescription".into(), json!("Reconcile succeeded"));
    st.remove("usefulErrorMessage");
    st
}

/// Orders versions like semver where possible (`1.10.0 > 1.9.1`), falling back to string order.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| -> Vec<u64> {
        v.trim_start_matches('v')
            .split(['+', '-'])
            .next()
            .unwrap_or("")
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    parts(a).cmp(&parts(b)).then_with(|| a.cmp(b))
}

/// Whether `version` satisfies a kapp-controller version constraint. Exact versions (what
/// `tanzu package install --version` writes) are matched exactly; `>=`, `>`, `<=`, `<` and a
/// leading `=` are understood for single-clause constraints; an empty constraint matches all.
fn satisfies(version: &str, constraints: &str) -> bool {
    let c = constraints.trim();
    if c.is_empty() {
        return true;
    }
    for (op, ok) in [
        (">=", &[Ordering::Greater, Ordering::Equal][..]),
        ("<=", &[Ordering::Less, Ordering::Equal][..]),
        (">", &[Ordering::Greater][..]),
        ("<", &[Ordering::Less][..]),
        ("=", &[Ordering::Equal][..]),
    ] {
        if let Some(rest) = c.strip_prefix(op) {
            let rest = rest.trim();
            if op == "=" {
                return version == rest;
            }
            return ok.contains(&compare_versions(version, rest));
        }
    }
    version == c
}

impl KappController {
    pub(crate) fn new(cluster: EmulatedCluster) -> Self {
        KappController {
            cluster,
            injected: HashMap::new(),
        }
    }

    /// The injected fault configured for `pkgi`, if any.
    fn fault_for(&self, pkgi: &Value) -> Option<InjectedFault> {
        self.fault_at(pkgi, "")
    }

    /// The injected fault under data key `<prefix><namespace>.<name>`, if any.
    fn fault_at(&self, pkgi: &Value, prefix: &str) -> Option<InjectedFault> {
        let key = format!(
            "{prefix}{}.{}",
            namespace_of(pkgi).unwrap_or(""),
            name_of(pkgi).unwrap_or("")
        );
        let cm = self.cluster.get(
            &gvr_config_map(),
            Some(KAPP_FAULTS_NAMESPACE),
            KAPP_FAULTS_CONFIGMAP,
        )?;
        let raw = str_at(&cm, &format!("/data/{key}"))?;
        let (n, message) = raw.split_once(':')?;
        let count = match n.trim() {
            "*" => None,
            n => Some(n.parse().ok()?),
        };
        Some(InjectedFault {
            count,
            message: message.trim().to_string(),
        })
    }

    /// Whether the next reconcile of `pkgi` must fail with an injected fault (counting it).
    fn take_injected(&mut self, pkgi: &Value) -> Option<String> {
        let fault = self.fault_for(pkgi)?;
        let key = format!("{}/{}", uid_of(pkgi), generation_of(pkgi));
        let served = self.injected.entry(key).or_insert(0);
        if fault.count.is_some_and(|n| *served >= n) {
            return None;
        }
        *served += 1;
        Some(fault.message)
    }

    /// Whether the next uninstall of `pkgi` must fail with an injected fault (counting it).
    fn take_injected_delete(&mut self, pkgi: &Value) -> Option<String> {
        let fault = self.fault_at(pkgi, "delete.")?;
        let key = format!("{}/delete", uid_of(pkgi));
        let served = self.injected.entry(key).or_insert(0);
        if fault.count.is_some_and(|n| *served >= n) {
            return None;
        }
        *served += 1;
        Some(fault.message)
    }

    /// Adds [`PACKAGE_INSTALL_FINALIZER`] to `pkgi` when missing; returns the object as stored.
    fn ensure_finalizer(&self, pkgi: &Value) -> Option<Value> {
        let mut finalizers: Vec<Value> = pkgi
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if finalizers.iter().any(|f| f == PACKAGE_INSTALL_FINALIZER) {
            return Some(pkgi.clone());
        }
        finalizers.push(json!(PACKAGE_INSTALL_FINALIZER));
        match self.cluster.patch_merge(
            &gvr_package_install(),
            namespace_of(pkgi),
            name_of(pkgi)?,
            json!({"metadata": {"finalizers": finalizers}}),
        ) {
            Ok(v) => Some(v),
            Err(err) => {
                warn!(packageinstall = name_of(pkgi).unwrap_or(""), error = %err, "could not add the delete finalizer");
                None
            }
        }
    }

    /// One deletion step of a PackageInstall marked for deletion (see the module docs).
    fn reconcile_deletion(&mut self, pkgi: &Value) {
        let gvr = gvr_package_install();
        let name = name_of(pkgi).unwrap_or("");
        let finalizers: Vec<Value> = pkgi
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !finalizers.iter().any(|f| f == PACKAGE_INSTALL_FINALIZER) {
            return;
        }
        let result = match single_condition(pkgi) {
            Some("Deleting") => {
                if let Some(err) = self.take_injected_delete(pkgi) {
                    let mut st = status_of(pkgi);
                    st.insert(
                        "conditions".into(),
                        json!([{"type": "DeleteFailed", "status": "True", "message": "Error (see .status.usefulErrorMessage for details)"}]),
                    );
                    st.insert(
                        "friendlyDescription".into(),
                        json!(format!("Delete failed: {err}")),
                    );
                    st.insert("usefulErrorMessage".into(), json!(err));
                    write_status(&self.cluster, &gvr, pkgi, st).map(|_| ())
                } else {
                    // Uninstalled (no app resources are modelled): release the object.
                    let rest: Vec<Value> = finalizers
                        .into_iter()
                        .filter(|f| f != PACKAGE_INSTALL_FINALIZER)
                        .collect();
                    let value = if rest.is_empty() {
                        Value::Null
                    } else {
                        Value::Array(rest)
                    };
                    self.cluster
                        .patch_merge(
                            &gvr,
                            namespace_of(pkgi),
                            name,
                            json!({"metadata": {"finalizers": value}}),
                        )
                        .map(|_| ())
                }
            }
            // SetDeleting, also the retry after DeleteFailed.
            _ => {
                let mut st = status_of(pkgi);
                st.insert(
                    "conditions".into(),
                    json!([{"type": "Deleting", "status": "True"}]),
                );
                st.insert("observedGeneration".into(), json!(generation_of(pkgi)));
                st.insert("friendlyDescription".into(), json!("Deleting"));
                st.remove("usefulErrorMessage");
                write_status(&self.cluster, &gvr, pkgi, st).map(|_| ())
            }
        };
        if let Err(err) = result {
            warn!(packageinstall = name, error = %err, "could not advance the deletion");
        }
    }

    /// A values Secret changed: every reconciled PackageInstall in its namespace that names it
    /// in `spec.values` starts a new reconcile.
    fn on_secret_change(&self, secret: &Value) {
        let (Some(ns), Some(secret_name)) = (namespace_of(secret), name_of(secret)) else {
            return;
        };
        for pkgi in self.cluster.list(&gvr_package_install(), Some(ns)) {
            if pkgi.pointer("/metadata/deletionTimestamp").is_some()
                || observed_generation_of(&pkgi) != Some(generation_of(&pkgi))
                || !matches!(
                    single_condition(&pkgi),
                    Some("ReconcileSucceeded") | Some("ReconcileFailed")
                )
            {
                continue;
            }
            let refers = pkgi
                .pointer("/spec/values")
                .and_then(Value::as_array)
                .is_some_and(|l| {
                    l.iter().any(|v| {
                        v.pointer("/secretRef/name").and_then(Value::as_str) == Some(secret_name)
                    })
                });
            if refers {
                if let Err(err) = write_status(
                    &self.cluster,
                    &gvr_package_install(),
                    &pkgi,
                    reconciling_status(&pkgi),
                ) {
                    warn!(packageinstall = name_of(&pkgi).unwrap_or(""), error = %err, "could not write Reconciling status");
                }
            }
        }
    }

    /// Finds the Package a PackageInstall selects. Returns its version or kapp-controller's error text.
    fn select_package(
        &self,
        ns: &str,
        ref_name: &str,
        constraints: &str,
    ) -> Result<String, String> {
        let mut candidates: Vec<String> = Vec::new();
        let mut namespaces = vec![ns.to_string()];
        if ns != PACKAGING_GLOBAL_NAMESPACE {
            namespaces.push(PACKAGING_GLOBAL_NAMESPACE.to_string());
        }
        for n in &namespaces {
            for p in self.cluster.list(&gvr_package(), Some(n)) {
                if str_at(&p, "/spec/refName") != Some(ref_name) {
                    continue;
                }
                if let Some(v) = str_at(&p, "/spec/version") {
                    if satisfies(v, constraints) {
                        candidates.push(v.to_string());
                    }
                }
            }
        }
        candidates.sort_by(|a, b| compare_versions(a, b));
        candidates.pop().ok_or_else(|| {
            format!("Could not find package with name '{ref_name}' and version '{constraints}'")
        })
    }

    /// What a reconcile of this PackageInstall would end with: the version installed, or the error.
    /// `Err((message, attempted version))`.
    fn evaluate(&self, pkgi: &Value) -> Result<String, (String, Option<String>)> {
        let ns = namespace_of(pkgi).unwrap_or("default");
        let ref_name = str_at(pkgi, "/spec/packageRef/refName").unwrap_or("");
        let constraints =
            str_at(pkgi, "/spec/packageRef/versionSelection/constraints").unwrap_or("");
        let version = self
            .select_package(ns, ref_name, constraints)
            .map_err(|e| (e, None))?;
        let attempted = Some(version.clone());
        let sa = str_at(pkgi, "/spec/serviceAccountName").unwrap_or("");
        if sa.is_empty() {
            if pkgi.pointer("/spec/cluster").is_none() {
                return Err((
                    "Expected service account or cluster specified".to_string(),
                    attempted,
                ));
            }
        } else if self
            .cluster
            .get(&gvr_service_account(), Some(ns), sa)
            .is_none()
        {
            return Err((
                format!("Getting service account: serviceaccounts \"{sa}\" not found"),
                attempted,
            ));
        }
        for v in pkgi
            .pointer("/spec/values")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let Some(secret) = v.pointer("/secretRef/name").and_then(Value::as_str) else {
                continue;
            };
            match self.cluster.get(&gvr_secret(), Some(ns), secret) {
                None => {
                    return Err((
                        format!("Getting secret: secrets \"{secret}\" not found"),
                        attempted,
                    ))
                }
                Some(s) => {
                    if let Some(k) = v.pointer("/secretRef/key").and_then(Value::as_str) {
                        let has = s.pointer(&format!("/data/{k}")).is_some()
                            || s.pointer(&format!("/stringData/{k}")).is_some();
                        if !has {
                            return Err((
                                format!("Expected to find key '{k}' in secret '{secret}'"),
                                attempted,
                            ));
                        }
                    }
                }
            }
        }
        Ok(version)
    }

    fn reconcile_package_install(&mut self, pkgi: &Value) {
        let gvr = gvr_package_install();
        let id = format!(
            "{}/{}",
            namespace_of(pkgi).unwrap_or(""),
            name_of(pkgi).unwrap_or("")
        );
        if name_of(pkgi).is_none() {
            return;
        }
        if pkgi.pointer("/metadata/deletionTimestamp").is_some() {
            self.reconcile_deletion(pkgi);
            return;
        }
        let Some(stored) = self.ensure_finalizer(pkgi) else {
            return;
        };
        let pkgi = &stored;
        let result = if observed_generation_of(pkgi) != Some(generation_of(pkgi))
            || single_condition(pkgi).is_none()
        {
            write_status(&self.cluster, &gvr, pkgi, reconciling_status(pkgi))
        } else if pkgi.pointer("/spec/paused").and_then(Value::as_bool) == Some(true)
            || pkgi.pointer("/spec/canceled").and_then(Value::as_bool) == Some(true)
        {
            return;
        } else {
            match single_condition(pkgi) {
                Some("Reconciling") => {
                    let mut st = status_of(pkgi);
                    if let Some(err) = self.take_injected(pkgi) {
                        let result =
                            write_status(&self.cluster, &gvr, pkgi, failed_status(st, &err));
                        if let Err(err) = result {
                            warn!(packageinstall = %id, error = %err, "could not write PackageInstall status");
                        }
                        return;
                    }
                    match self.evaluate(pkgi) {
                        Ok(version) => {
                            st.insert("version".into(), json!(version));
                            st.insert("lastAttemptedVersion".into(), json!(version));
                            write_status(&self.cluster, &gvr, pkgi, succeeded_status(st))
                        }
                        Err((err, attempted)) => {
                            if let Some(v) = attempted {
                                st.insert("lastAttemptedVersion".into(), json!(v));
                            }
                            write_status(&self.cluster, &gvr, pkgi, failed_status(st, &err))
                        }
                    }
                }
                Some("ReconcileFailed") => {
                    let current = str_at(pkgi, "/status/usefulErrorMessage").unwrap_or("");
                    // An injected failure is retried every tick, like kapp-controller's retries.
                    let injected = self.fault_for(pkgi).is_some_and(|f| f.message == current);
                    let changed = injected
                        || match self.evaluate(pkgi) {
                            Ok(_) => true,
                            Err((err, _)) => err != current,
                        };
                    if !changed {
                        return;
                    }
                    write_status(&self.cluster, &gvr, pkgi, reconciling_status(pkgi))
                }
                _ => return,
            }
        };
        if let Err(err) = result {
            warn!(packageinstall = %id, error = %err, "could not write PackageInstall status");
        }
    }

    fn reconcile_package_repository(&self, repo: &Value) {
        let gvr = gvr_package_repository();
        if name_of(repo).is_none() {
            return;
        }
        let result = if observed_generation_of(repo) != Some(generation_of(repo))
            || single_condition(repo).is_none()
        {
            write_status(&self.cluster, &gvr, repo, reconciling_status(repo))
        } else if single_condition(repo) == Some("Reconciling") {
            if repo.pointer("/spec/fetch").is_none() {
                let st = failed_status(status_of(repo), "Expected at least one fetch option");
                write_status(&self.cluster, &gvr, repo, st)
            } else {
                let successes =
                    i64_at(repo, "/status/consecutiveReconcileSuccesses").unwrap_or(0) + 1;
                let st = super::catalog::repo_succeeded_status(generation_of(repo), successes);
                write_status(&self.cluster, &gvr, repo, st)
            }
        } else {
            return;
        };
        if let Err(err) = result {
            warn!(repository = name_of(repo).unwrap_or(""), error = %err, "could not write PackageRepository status");
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for KappController {
    async fn on_tick(&mut self) {
        for repo in self.cluster.list(&gvr_package_repository(), None) {
            self.reconcile_package_repository(&repo);
        }
        for pkgi in self.cluster.list(&gvr_package_install(), None) {
            self.reconcile_package_install(&pkgi);
        }
    }

    /// The workload cluster's resourceVersion counter: a pass reads only that cluster's
    /// PackageRepositories, PackageInstalls, Packages, ServiceAccounts, Secrets and the faults
    /// ConfigMap, and every step it takes (injected failures included) is a write.
    fn revision(&self) -> Option<u64> {
        Some(self.cluster.resource_version())
    }

    async fn on_event(&mut self, event: ChangeEvent) {
        if event.kind == "DELETED" {
            return;
        }
        if same_gvr(&event.gvr, &gvr_secret()) {
            self.on_secret_change(&event.object);
            return;
        }
        let is_pkgi = same_gvr(&event.gvr, &gvr_package_install());
        let is_repo = same_gvr(&event.gvr, &gvr_package_repository());
        if !is_pkgi && !is_repo {
            return;
        }
        let Some(name) = name_of(&event.object) else {
            return;
        };
        let Some(current) = self
            .cluster
            .get(&event.gvr, namespace_of(&event.object), name)
        else {
            return;
        };
        // Deletion advances on ticks only (`Deleting` shows for a tick).
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return;
        }
        // Only the entry transition (start of a reconcile) reacts to events; completion waits a tick.
        if observed_generation_of(&current) == Some(generation_of(&current))
            && single_condition(&current).is_some()
        {
            return;
        }
        let st = reconciling_status(&current);
        if let Err(err) = write_status(&self.cluster, &event.gvr, &current, st) {
            warn!(object = name, error = %err, "could not write Reconciling status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints() {
        assert!(satisfies("1.7.2+vmware.1-tkg.1", "1.7.2+vmware.1-tkg.1"));
        assert!(!satisfies("1.7.2+vmware.1-tkg.1", "1.7.3+vmware.1-tkg.1"));
        assert!(satisfies("1.10.0", ">=1.9.0"));
        assert!(!satisfies("1.8.0", ">=1.9.0"));
        assert!(satisfies("1.8.0", ""));
        assert_eq!(compare_versions("1.10.0", "1.9.9"), Ordering::Greater);
    }
}

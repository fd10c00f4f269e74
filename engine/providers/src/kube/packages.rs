//! `packages.rollout`: installs Tanzu packages on a workload cluster the way `tanzu package
//! install` does (TF `pkg/v1/tkg/tkgpackageclient/package_install.go`, tanzu-apis §4.2), one
//! package at a time, each waited for as TF `clusterclient/resource.go`
//! `VerifyPackageInstallReconciledSuccessfully` does (KC status semantics, §4.3).
//!
//! Objects are server-side applied (field manager `tkgops`), so a repeated attempt converges
//! instead of failing with "already exists" like the CLI.
//!
//! Waits read the provider's shared watches of the workload cluster (kube-runtime reflectors,
//! see `watch.rs`), not polls. A `ReconcileFailed` package is not failed at once: kapp-controller
//! keeps retrying and TKG tolerates it (tkg2-aws-class-based.md §6 step 5), so the wait reports
//! the `usefulErrorMessage` as progress and fails with it only at
//! [`super::WaitOptions::package_timeout`] or shortly before the step deadline.

use std::sync::Arc;

use kube::discovery::ApiResource;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::apply::{apply_object, Resolved};
use super::cluster::condition;
use super::watch::{changed_or, SharedWatch};
use super::{custom_resource, KubeProvider, ProgressDedup, FIELD_MANAGER};
use crate::WorkloadTarget;
use tkgops_engine::{StepContext, StepError};

/// Annotation `tanzu package install` puts on every object it creates for a package install
/// (TF `tkgpackagedatamodel.TanzuPkgPluginAnnotation`); value `<pkgi>-<namespace>`.
pub const TANZU_PACKAGE_ANNOTATION: &str = "tkg.tanzu.vmware.com/tanzu-package";

/// `packaging.carvel.dev/v1alpha1` PackageInstall.
pub fn package_install_resource() -> ApiResource {
    custom_resource(
        "packaging.carvel.dev",
        "v1alpha1",
        "PackageInstall",
        "packageinstalls",
    )
}
/// `packaging.carvel.dev/v1alpha1` PackageRepository.
pub fn package_repository_resource() -> ApiResource {
    custom_resource(
        "packaging.carvel.dev",
        "v1alpha1",
        "PackageRepository",
        "packagerepositories",
    )
}

fn core(kind: &str, plural: &str, namespaced: bool) -> Resolved {
    Resolved::known(custom_resource("", "v1", kind, plural), namespaced)
}
fn rbac(kind: &str, plural: &str) -> Resolved {
    Resolved::known(
        custom_resource("rbac.authorization.k8s.io", "v1", kind, plural),
        false,
    )
}

pub use tkgops_domain::request::{PackageRepositoryRef, PackageSpec};
pub use tkgops_domain::step::PackagesInputs;

/// The objects `tanzu package install` creates for `pkg`, in creation order: Namespace,
/// ServiceAccount, ClusterRole, ClusterRoleBinding, values Secret (only with values) and the
/// PackageInstall, each with the resource it is applied to.
pub fn package_objects(pkg: &PackageSpec) -> Vec<(Resolved, Value)> {
    let (pkgi, ns) = (&pkg.name, &pkg.namespace);
    let owner = format!("{pkgi}-{ns}");
    let ann = json!({ TANZU_PACKAGE_ANNOTATION: owner });
    let sa = format!("{pkgi}-{ns}-sa");
    let role = format!("{pkgi}-{ns}-cluster-role");
    let binding = format!("{pkgi}-{ns}-cluster-rolebinding");
    let secret = format!("{pkgi}-{ns}-values");
    let has_values = !pkg.values_yaml.trim().is_empty();

    let mut objs = vec![
        (
            core("Namespace", "namespaces", false),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        ),
        (
            core("ServiceAccount", "serviceaccounts", true),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": sa, "namespace": ns, "annotations": ann}}),
        ),
        (
            rbac("ClusterRole", "clusterroles"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": role, "annotations": ann},
                   "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
        ),
        (
            rbac("ClusterRoleBinding", "clusterrolebindings"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": binding, "annotations": ann},
                   "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}}),
        ),
    ];
    if has_values {
        objs.push((
            core("Secret", "secrets", true),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": secret, "namespace": ns, "annotations": ann},
                   "stringData": {"values.yaml": pkg.values_yaml}}),
        ));
    }
    // kapp client CreatePackageInstall: annotations naming the resources the plugin created.
    let mut pkgi_ann = serde_json::Map::new();
    pkgi_ann.insert(
        format!("{TANZU_PACKAGE_ANNOTATION}-ClusterRole"),
        json!(role),
    );
    pkgi_ann.insert(
        format!("{TANZU_PACKAGE_ANNOTATION}-ClusterRoleBinding"),
        json!(binding),
    );
    pkgi_ann.insert(
        format!("{TANZU_PACKAGE_ANNOTATION}-ServiceAccount"),
        json!(sa),
    );
    let mut spec = json!({
        "serviceAccountName": sa,
        "packageRef": {"refName": pkg.ref_name,
                       "versionSelection": {"constraints": pkg.version, "prereleases": {}}},
    });
    let mut values = Vec::new();
    if has_values {
        pkgi_ann.insert(format!("{TANZU_PACKAGE_ANNOTATION}-Secret"), json!(secret));
        values.push(json!({"secretRef": {"name": secret}}));
    }
    // Secrets the request references (valuesFrom), never written by tkgops: kapp-controller
    // reads them in order, after the values above.
    values.extend(
        pkg.values_from
            .iter()
            .map(|name| json!({"secretRef": {"name": name}})),
    );
    if !values.is_empty() {
        spec["values"] = Value::Array(values);
    }
    objs.push((
        Resolved::known(package_install_resource(), true),
        json!({"apiVersion": "packaging.carvel.dev/v1alpha1", "kind": "PackageInstall",
               "metadata": {"name": pkgi, "namespace": ns, "annotations": pkgi_ann},
               "spec": spec}),
    ));
    objs
}

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
    let is_true = |t: &str| {
        condition(obj, t)
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
            == Some("True")
    };
    if is_true("ReconcileFailed") {
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
    if is_true("ReconcileSucceeded") {
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

fn validate(inputs: &PackagesInputs) -> Result<(), StepError> {
    let bad = |field: &str, v: &str| {
        StepError::Permanent(format!(
            "packages.rollout: {field} '{v}' is not a valid Kubernetes name"
        ))
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    if !ok(&inputs.repository.name) {
        return Err(bad("repository.name", &inputs.repository.name));
    }
    if !ok(&inputs.repository.namespace) {
        return Err(bad("repository.namespace", &inputs.repository.namespace));
    }
    for p in &inputs.packages {
        if !ok(&p.name) {
            return Err(bad("package name", &p.name));
        }
        if !ok(&p.namespace) {
            return Err(bad("package namespace", &p.namespace));
        }
        if p.ref_name.is_empty() || p.version.is_empty() {
            return Err(StepError::Permanent(format!(
                "packages.rollout: package '{}' needs refName and version",
                p.name
            )));
        }
    }
    Ok(())
}

/// What one wait on a kapp-controller object sees: the object in the shared watch's store.
/// An object older than `min_generation` (the generation tkgops just applied) is not judged:
/// the watch has not delivered the new spec yet.
async fn watched_state(
    w: &SharedWatch,
    namespace: &str,
    name: &str,
    min_generation: i64,
) -> Option<(Value, ReconcileState)> {
    let obj = w.get(namespace, name)?;
    let v = serde_json::to_value(obj.as_ref()).ok()?;
    let generation = v
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if generation < min_generation {
        return Some((
            v,
            ReconcileState::Pending("waiting for the applied generation".into()),
        ));
    }
    let st = reconcile_state(&v);
    Some((v, st))
}

/// Waits on the shared watch `w` until `namespace/name` is `ReconcileSucceeded` and returns it.
/// `ReconcileFailed` is tolerated (kapp-controller retries; TKG too, tkg2-aws-class-based.md §6
/// step 5), reported as progress, until `until` (or the step's report deadline, whichever is
/// first), when it becomes a [`StepError::Permanent`] naming `what` with the last
/// `usefulErrorMessage`. Still pending at `until`: `pending_error(description)`.
#[allow(clippy::too_many_arguments)]
async fn wait_reconciled(
    provider: &KubeProvider,
    ctx: &StepContext,
    target: &WorkloadTarget,
    w: &Arc<SharedWatch>,
    (namespace, name, what, label): (&str, &str, &str, &str),
    until: Instant,
    report_deadline: Option<Instant>,
    min_generation: i64,
    pending_error: impl Fn(&str) -> StepError,
) -> Result<Value, StepError> {
    let mut rx = [w.subscribe()];
    let mut progress = ProgressDedup::new();
    // The latest failure seen: kapp-controller alternates ReconcileFailed and Reconciling while
    // it retries, so a retry in progress still counts as failing.
    let mut last_failure: Option<String> = None;
    loop {
        rx[0].borrow_and_update();
        if let Some(line) = provider.watch_health(target, w)? {
            progress.report(ctx, line);
        }
        if !w.ready() {
            changed_or(&mut rx, Some(until)).await;
            if Instant::now() >= until {
                return Err(pending_error("the watch has not synced"));
            }
            continue;
        }
        let now = Instant::now();
        let (obj, state) = match watched_state(w, namespace, name, min_generation).await {
            Some(x) => x,
            None => (Value::Null, ReconcileState::Pending("not found".into())),
        };
        let mut deadline = until;
        if let ReconcileState::Failed(m) = &state {
            last_failure = Some(m.clone());
        }
        if last_failure.is_some() {
            if let Some(d) = report_deadline {
                deadline = deadline.min(d);
            }
        }
        match (state, &last_failure) {
            (ReconcileState::Succeeded, _) => return Ok(obj),
            (_, Some(m)) if now >= deadline => {
                return Err(StepError::Permanent(format!("{what}: {m}")));
            }
            (ReconcileState::Failed(m), _) => {
                progress.report(
                    ctx,
                    format!("{label}: reconcile failed, kapp-controller retries: {m}"),
                );
            }
            (ReconcileState::Pending(d), _) if now >= deadline => return Err(pending_error(&d)),
            (ReconcileState::Pending(d), _) => progress.report(ctx, format!("{label}: {d}")),
        }
        changed_or(&mut rx, Some(deadline)).await;
    }
}

/// Runs `packages.rollout`: waits for the PackageRepository, then installs each package in order
/// (fully reconciled before the next starts). Output
/// `{"packages":[{"name","namespace","version","status":"Reconcile succeeded"}]}`.
///
/// Waits read the provider's shared PackageRepository and PackageInstall watches of the
/// workload cluster. `ReconcileFailed` is tolerated while kapp-controller retries, until
/// [`super::WaitOptions::package_timeout`] (repository: [`super::WaitOptions::repository_timeout`]) or
/// shortly before the step deadline.
///
/// Errors: [`StepError::Transient`] while the workload kubeconfig Secret is missing or the
/// PackageRepository is missing or reconciling after [`super::WaitOptions::repository_timeout`];
/// [`StepError::Permanent`] for invalid inputs, a PackageRepository or PackageInstall still
/// failing at its deadline ("PackageInstall <ns>/<name>: <usefulErrorMessage>"), or a
/// PackageInstall not reconciled after [`super::WaitOptions::package_timeout`].
pub async fn rollout(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &PackagesInputs,
) -> Result<Value, StepError> {
    validate(inputs)?;
    let opts = provider.wait_options().clone();
    let start = Instant::now();
    let report_deadline = opts.report_deadline(start, ctx.step.timeout_secs);
    let client = provider.workload_client(&inputs.target).await?;
    let repos = provider
        .workload_watch(&inputs.target, &package_repository_resource())
        .await?;
    let repo = &inputs.repository;
    let what = format!("PackageRepository/{}/{}", repo.namespace, repo.name);
    let waiting = format!("waiting for PackageRepository {}", repo.name);
    wait_reconciled(
        provider,
        ctx,
        &inputs.target,
        &repos,
        (
            &repo.namespace,
            &repo.name,
            &format!("{what}: reconcile failed"),
            &waiting,
        ),
        start + opts.repository_timeout,
        report_deadline,
        0,
        |d| StepError::Transient(format!("{waiting} ({d})")),
    )
    .await?;
    ctx.progress.report(&format!(
        "PackageRepository {}: Reconcile succeeded",
        repo.name
    ));
    let pkgis = provider
        .workload_watch(&inputs.target, &package_install_resource())
        .await?;
    let mut done = Vec::with_capacity(inputs.packages.len());
    for pkg in &inputs.packages {
        let label = format!("{} {} ({})", pkg.name, pkg.version, pkg.namespace);
        ctx.progress.report(&format!(
            "{label}: applying PackageInstall and its ServiceAccount, RBAC and values"
        ));
        let mut applied_generation = 0;
        for (res, obj) in package_objects(pkg) {
            let (_, stored) = apply_object(&client, &res, obj, FIELD_MANAGER).await?;
            applied_generation = stored
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
        }
        let what = format!("PackageInstall {}/{}", pkg.namespace, pkg.name);
        let pkg_start = Instant::now();
        let v = wait_reconciled(
            provider,
            ctx,
            &inputs.target,
            &pkgis,
            (&pkg.namespace, &pkg.name, &what, &label),
            pkg_start + opts.package_timeout,
            report_deadline,
            applied_generation,
            |d| {
                StepError::Permanent(format!(
                    "{what}: not reconciled after {} s ({d})",
                    opts.package_timeout.as_secs()
                ))
            },
        )
        .await?;
        let desc = v
            .pointer("/status/friendlyDescription")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("Reconcile succeeded")
            .to_string();
        ctx.progress.report(&format!("{label}: {desc}"));
        tracing::info!(step = %ctx.step.id, package = %pkg.name, namespace = %pkg.namespace, "package reconciled");
        done.push(json!({"name": pkg.name, "namespace": pkg.namespace, "version": pkg.version, "status": desc}));
    }
    Ok(json!({ "packages": done }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(values: &str) -> PackageSpec {
        PackageSpec {
            name: "contour".into(),
            ref_name: "contour.tanzu.vmware.com".into(),
            version: "1.20.2+vmware.1-tkg.1".into(),
            namespace: "tanzu-system-ingress".into(),
            values_yaml: values.into(),
            values_from: Vec::new(),
        }
    }

    #[test]
    fn values_from_secrets_follow_the_own_values_and_are_never_written() {
        let mut p = pkg("infrastructure_provider: aws\n");
        p.values_from = vec!["contour-tls".into(), "contour-extra".into()];
        let objs = package_objects(&p);
        let pkgi = &objs.last().unwrap().1;
        let names: Vec<&str> = pkgi["spec"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["secretRef"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "contour-tanzu-system-ingress-values",
                "contour-tls",
                "contour-extra"
            ]
        );
        let written: Vec<&str> = objs
            .iter()
            .filter(|(_, o)| o["kind"] == "Secret")
            .map(|(_, o)| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(written, ["contour-tanzu-system-ingress-values"]);
        // Only referenced Secrets: no values Secret of tkgops's own.
        p.values_yaml.clear();
        let objs = package_objects(&p);
        assert!(objs.iter().all(|(_, o)| o["kind"] != "Secret"));
        assert_eq!(
            objs.last().unwrap().1["spec"]["values"][0]["secretRef"]["name"],
            "contour-tls"
        );
    }

    #[test]
    fn objects_match_tanzu_package_install() {
        let objs = package_objects(&pkg("infrastructure_provider: aws\n"));
        let kinds: Vec<&str> = objs
            .iter()
            .map(|(_, o)| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Secret",
                "PackageInstall"
            ]
        );
        let pkgi = &objs[5].1;
        assert_eq!(
            pkgi["spec"]["serviceAccountName"],
            "contour-tanzu-system-ingress-sa"
        );
        assert_eq!(
            pkgi["spec"]["packageRef"]["versionSelection"]["constraints"],
            "1.20.2+vmware.1-tkg.1"
        );
        assert_eq!(
            pkgi["spec"]["values"][0]["secretRef"]["name"],
            "contour-tanzu-system-ingress-values"
        );
        assert_eq!(
            objs[4].1["metadata"]["annotations"][TANZU_PACKAGE_ANNOTATION],
            "contour-tanzu-system-ingress"
        );
        let objs = package_objects(&pkg(""));
        assert_eq!(objs.len(), 5);
        assert!(objs[4].1["spec"].get("values").is_none());
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
    }
}

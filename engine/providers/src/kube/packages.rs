//! `packages.rollout`: installs Tanzu packages on a workload cluster the way `tanzu package
//! install` does (TF `pkg/v1/tkg/tkgpackageclient/package_install.go`, tanzu-apis §4.2), one
//! package at a time, each waited for as TF `clusterclient/resource.go`
//! `VerifyPackageInstallReconciledSuccessfully` does (KC status semantics, §4.3).
//!
//! Objects are server-side applied (field manager `tkgops`), so a repeated attempt converges
//! instead of failing with "already exists" like the CLI.
//!
//! Waits are the judges of `tkgops_domain::wait::packages`, run by the one wait driver
//! ([`crate::wait`]) over the provider's shared watches of the workload cluster (see
//! `watch.rs`), or over a private watch of one PackageInstall where every state counts, not
//! polls. A `ReconcileFailed` package is not failed at once: kapp-controller
//! keeps retrying and TKG tolerates it (docs/tkg2-class-based.md §6 step 5), so the wait reports
//! the `usefulErrorMessage` as progress and fails with it only at
//! [`super::WaitOptions::package_timeout`] or shortly before the step deadline.
//!
//! `packages.update` ([`update`]) shares the repository wait, the apply and the package wait
//! with `packages.rollout`, then removes packages the way `tanzu package installed delete` does:
//! the PackageInstall is deleted and waited for until kapp-controller has uninstalled it and
//! dropped its finalizer (tanzu-apis §4.2, §4.3), then the values Secret and the ServiceAccount
//! and RBAC objects tkgops created for it are deleted. `packages.verify` ([`super::rollout::verify_packages`]) checks every
//! PackageInstall of the workload cluster after an upgrade.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject, Preconditions};
use kube::discovery::ApiResource;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::apply::{apply_object_with, ApplyMode, Resolved};
use super::watch::{SharedWatch, Subscription};
use super::{classify, custom_resource, KubeProvider, FIELD_MANAGER};
use crate::wait::{drive, DriveOptions, Observed, Reporter, Source};
use crate::WorkloadTarget;
use tkgops_domain::executor::{StepContext, StepError};
use tkgops_domain::output::{
    PackageVersion, PackagesRolloutOutput, PackagesUpdateOutput, ReconciledPackage, RemovedPackage,
    UpdatedPackage,
};
use tkgops_domain::wait::packages::{
    friendly_or, PackageDeleted, PackageReconciled, ValuesReconciled,
};

pub use tkgops_domain::wait::packages::{reconcile_state, ReconcileState};

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
pub use tkgops_domain::step::{PackagesInputs, PackagesUpdateInputs};

/// Name of the values Secret `tanzu package install` (and `packages.rollout`) writes for
/// PackageInstall `name` in `namespace`: `<pkgi>-<ns>-values` (tanzu-apis §4.2).
pub fn values_secret_name(name: &str, namespace: &str) -> String {
    format!("{name}-{namespace}-values")
}

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

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Checks the repository and package names of a step `step` (`packages.rollout`,
/// `packages.update`): Kubernetes names; packages to install also need refName and version.
fn validate(
    step: &str,
    repository: &PackageRepositoryRef,
    install: &[PackageSpec],
    remove: &[PackageSpec],
) -> Result<(), StepError> {
    let bad = |field: &str, v: &str| {
        StepError::Permanent(format!(
            "{step}: {field} '{v}' is not a valid Kubernetes name"
        ))
    };
    if !valid_name(&repository.name) {
        return Err(bad("repository.name", &repository.name));
    }
    if !valid_name(&repository.namespace) {
        return Err(bad("repository.namespace", &repository.namespace));
    }
    for p in install.iter().chain(remove) {
        if !valid_name(&p.name) {
            return Err(bad("package name", &p.name));
        }
        if !valid_name(&p.namespace) {
            return Err(bad("package namespace", &p.namespace));
        }
    }
    for p in install {
        if p.ref_name.is_empty() || p.version.is_empty() {
            return Err(StepError::Permanent(format!(
                "{step}: package '{}' needs refName and version",
                p.name
            )));
        }
    }
    Ok(())
}

/// Where a wait on one kapp-controller object reads its snapshots: the object `namespace/name`
/// in a shared watch of the workload cluster.
struct ObjectSource<'a> {
    provider: &'a KubeProvider,
    target: &'a WorkloadTarget,
    sub: Subscription,
    watch: Arc<SharedWatch>,
    namespace: String,
    name: String,
}

impl<'a> ObjectSource<'a> {
    fn new(
        provider: &'a KubeProvider,
        target: &'a WorkloadTarget,
        watch: &Arc<SharedWatch>,
        namespace: &str,
        name: &str,
    ) -> Self {
        let mut sub = Subscription::default();
        sub.key(watch, namespace, name);
        ObjectSource {
            provider,
            target,
            sub,
            watch: watch.clone(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Source for ObjectSource<'_> {
    type Snapshot = Option<Arc<Value>>;

    async fn observe(
        &mut self,
        progress: &mut Reporter,
    ) -> Result<Observed<Option<Arc<Value>>>, StepError> {
        self.sub.mark_seen();
        if !self.sub.check(self.provider, self.target, progress)? {
            return Ok(Observed::NotYet);
        }
        Ok(Observed::Snapshot(
            self.watch.get(&self.namespace, &self.name),
        ))
    }

    async fn changed(&mut self, until: Option<Instant>) {
        self.sub.changed(until).await
    }
}

/// Where a wait that must see every state of one PackageInstall in order reads its snapshots:
/// a private `kube::runtime::watcher::watch_object` stream. Between events (a recheck) the last
/// state is judged again.
struct StreamSource {
    what: String,
    stream: ObjectStream,
    /// The next event, received by [`Source::changed`]; `Some(None)`: the stream ended.
    next: Option<Option<ObjectEvent>>,
    last: Option<Option<Arc<Value>>>,
}

type ObjectEvent = Result<Option<DynamicObject>, kube::runtime::watcher::Error>;

impl StreamSource {
    fn new(what: &str, stream: ObjectStream) -> Self {
        StreamSource {
            what: what.to_string(),
            stream,
            next: None,
            last: None,
        }
    }
}

#[async_trait::async_trait]
impl Source for StreamSource {
    type Snapshot = Option<Arc<Value>>;

    async fn observe(
        &mut self,
        _progress: &mut Reporter,
    ) -> Result<Observed<Option<Arc<Value>>>, StepError> {
        match self.next.take() {
            Some(Some(item)) => {
                let obj = item.map_err(|e| object_watch_error(&self.what, e))?;
                let v = obj.map(|o| Arc::new(serde_json::to_value(&o).unwrap_or(Value::Null)));
                self.last = Some(v.clone());
                Ok(Observed::Snapshot(v))
            }
            Some(None) => Err(StepError::Transient(format!(
                "watch of {} ended unexpectedly",
                self.what
            ))),
            None => Ok(match &self.last {
                Some(v) => Observed::Snapshot(v.clone()),
                None => Observed::NotYet,
            }),
        }
    }

    async fn changed(&mut self, until: Option<Instant>) {
        if self.next.is_some() {
            return;
        }
        match until {
            Some(u) => {
                if let Ok(item) = tokio::time::timeout_at(u, self.stream.next()).await {
                    self.next = Some(item);
                }
            }
            None => self.next = Some(self.stream.next().await),
        }
    }
}

/// Waits (shared PackageRepository watch) until `repo` on `target` is `ReconcileSucceeded`, as
/// every packages step does first, and reports it as progress. `start` is when the step began.
///
/// Errors: [`StepError::Transient`] while it is missing or reconciling after
/// [`super::WaitOptions::repository_timeout`]; [`StepError::Permanent`] when it is still failing
/// then (`PackageRepository/<ns>/<name>: reconcile failed: <usefulErrorMessage>`).
async fn wait_repository(
    provider: &KubeProvider,
    ctx: &StepContext,
    target: &WorkloadTarget,
    repo: &PackageRepositoryRef,
    start: Instant,
    report_deadline: Option<Instant>,
) -> Result<(), StepError> {
    let opts = provider.wait_options();
    let repos = provider
        .workload_watch(target, &package_repository_resource())
        .await?;
    let origin = start;
    let until = start + opts.repository_timeout;
    let mut judge = PackageReconciled::repository(
        &repo.namespace,
        &repo.name,
        opts.repository_timeout,
        report_deadline.map(|d| d.saturating_duration_since(origin)),
    );
    let mut source = ObjectSource::new(provider, target, &repos, &repo.namespace, &repo.name);
    drive(
        &mut source,
        &mut judge,
        &ctx.progress,
        &DriveOptions::kube(origin).with_deadline(until),
    )
    .await?;
    ctx.progress.report(&format!(
        "PackageRepository {}: Reconcile succeeded",
        repo.name
    ));
    Ok(())
}

/// Server-side applies the objects of `pkg` ([`package_objects`]) in order; returns the
/// PackageInstall's generation as stored. Errors: as [`apply_object_with`].
async fn apply_package(
    client: &kube::Client,
    pkg: &PackageSpec,
    mode: ApplyMode,
) -> Result<i64, StepError> {
    let mut applied_generation = 0;
    for (res, obj) in package_objects(pkg) {
        let (_, stored) = apply_object_with(client, &res, obj, FIELD_MANAGER, mode).await?;
        applied_generation = stored
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
    }
    Ok(applied_generation)
}

/// `PackageInstall <ns>/<name>`, how errors name a package.
fn pkgi_what(pkg: &PackageSpec) -> String {
    format!("PackageInstall {}/{}", pkg.namespace, pkg.name)
}

/// Waits (shared PackageInstall watch `pkgis`) until `pkg`'s PackageInstall is
/// `ReconcileSucceeded` for at least `generation`; returns its `friendlyDescription`.
/// `ReconcileFailed` is tolerated until [`super::WaitOptions::package_timeout`] or
/// `report_deadline`, then fails permanently with `PackageInstall <ns>/<name>: <message>`.
#[allow(clippy::too_many_arguments)]
async fn wait_package(
    provider: &KubeProvider,
    ctx: &StepContext,
    target: &WorkloadTarget,
    pkgis: &Arc<SharedWatch>,
    pkg: &PackageSpec,
    label: &str,
    generation: i64,
    report_deadline: Option<Instant>,
) -> Result<String, StepError> {
    let timeout = provider.wait_options().package_timeout;
    let what = pkgi_what(pkg);
    let origin = Instant::now();
    let mut judge = PackageReconciled::package(
        &what,
        label,
        generation,
        timeout,
        timeout,
        report_deadline.map(|d| d.saturating_duration_since(origin)),
    );
    let mut source = ObjectSource::new(provider, target, pkgis, &pkg.namespace, &pkg.name);
    let v = drive(
        &mut source,
        &mut judge,
        &ctx.progress,
        &DriveOptions::kube(origin).with_deadline(origin + timeout),
    )
    .await?;
    Ok(friendly(&v))
}

fn friendly(v: &Value) -> String {
    friendly_or(v, "Reconcile succeeded")
}

/// Runs `packages.rollout`: waits for the PackageRepository, then installs each package in order
/// (fully reconciled before the next starts). Output [`PackagesRolloutOutput`]
/// (`{"packages":[{"name","namespace","version","status":"Reconcile succeeded"}]}`).
///
/// Waits read the provider's shared PackageRepository and PackageInstall watches of the
/// workload cluster. `ReconcileFailed` is tolerated while kapp-controller retries, until
/// [`super::WaitOptions::package_timeout`] (repository: [`super::WaitOptions::repository_timeout`]) or
/// shortly before the step deadline.
///
/// Errors: [`StepError::Transient`] while the workload kubeconfig Secret is missing or the
/// PackageRepository is missing or reconciling after [`super::WaitOptions::repository_timeout`];
/// [`StepError::Permanent`] for invalid inputs, a PackageRepository or PackageInstall still
/// failing at its deadline ("PackageInstall \<ns\>/\<name\>: \<usefulErrorMessage\>"), or a
/// PackageInstall not reconciled after [`super::WaitOptions::package_timeout`].
pub async fn rollout(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &PackagesInputs,
) -> Result<PackagesRolloutOutput, StepError> {
    validate(
        "packages.rollout",
        &inputs.repository,
        &inputs.packages,
        &[],
    )?;
    let start = Instant::now();
    let report_deadline = provider
        .wait_options()
        .report_after(ctx.step.timeout_secs)
        .map(|d| start + d);
    let client = provider.workload_client(&inputs.target).await?;
    wait_repository(
        provider,
        ctx,
        &inputs.target,
        &inputs.repository,
        start,
        report_deadline,
    )
    .await?;
    let pkgis = provider
        .workload_watch(&inputs.target, &package_install_resource())
        .await?;
    let mut done = Vec::with_capacity(inputs.packages.len());
    for pkg in &inputs.packages {
        let label = format!("{} {} ({})", pkg.name, pkg.version, pkg.namespace);
        ctx.progress.report(&format!(
            "{label}: applying PackageInstall and its ServiceAccount, RBAC and values"
        ));
        // A drift revert takes its fields back from a hand change ([`ApplyMode`]).
        let mode = ApplyMode::APPLY.forced(inputs.revert);
        let generation = apply_package(&client, pkg, mode).await?;
        let desc = wait_package(
            provider,
            ctx,
            &inputs.target,
            &pkgis,
            pkg,
            &label,
            generation,
            report_deadline,
        )
        .await?;
        ctx.progress.report(&format!("{label}: {desc}"));
        tracing::info!(step = %ctx.step.id, package = %pkg.name, namespace = %pkg.namespace, "package reconciled");
        done.push(ReconciledPackage {
            name: pkg.name.clone(),
            namespace: pkg.namespace.clone(),
            version: pkg.version.clone(),
            status: desc,
        });
    }
    Ok(PackagesRolloutOutput { packages: done })
}

/// The version a PackageInstall asks for: `spec.packageRef.versionSelection.constraints`.
fn wanted_version(pkgi: &Value) -> String {
    pkgi.pointer("/spec/packageRef/versionSelection/constraints")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// A watch error of a private object watch, classified like a request error.
fn object_watch_error(what: &str, e: kube::runtime::watcher::Error) -> StepError {
    use kube::runtime::watcher::Error as W;
    match e {
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => {
            classify(&format!("watch of {what}"), &e)
        }
        W::WatchError(s) => classify(&format!("watch of {what}"), &kube::Error::Api(s)),
        W::NoResourceVersion => StepError::Transient(format!(
            "watch of {what}: watch event without a resourceVersion"
        )),
    }
}

/// A PackageInstall event stream (`kube::runtime::watcher::watch_object`): every state in order,
/// `None` when the object is absent or deleted.
type ObjectStream = std::pin::Pin<
    Box<
        dyn futures::Stream<Item = Result<Option<DynamicObject>, kube::runtime::watcher::Error>>
            + Send,
    >,
>;

/// Follows `stream` (opened before a values Secret change that kapp-controller answers with a
/// new reconcile of the same generation) until kapp-controller has started a reconcile after
/// the change and finished it with `ReconcileSucceeded`. Failures are tolerated as in
/// the shared-watch waits ([`PackageReconciled`]) until [`super::WaitOptions::package_timeout`] or `report_deadline`.
///
/// Errors: [`StepError::Permanent`] `PackageInstall <ns>/<name>: <message>` for a failure at the
/// deadline, or "not reconciled after"; watch errors are classified as requests.
async fn wait_values_reconcile(
    provider: &KubeProvider,
    ctx: &StepContext,
    pkg: &PackageSpec,
    label: &str,
    stream: ObjectStream,
    report_deadline: Option<Instant>,
) -> Result<String, StepError> {
    let timeout = provider.wait_options().package_timeout;
    let origin = Instant::now();
    let what = pkgi_what(pkg);
    let mut judge = ValuesReconciled::new(
        &what,
        label,
        timeout,
        timeout,
        report_deadline.map(|d| d.saturating_duration_since(origin)),
    );
    drive(
        &mut StreamSource::new(&what, stream),
        &mut judge,
        &ctx.progress,
        &DriveOptions::kube(origin).with_deadline(origin + timeout),
    )
    .await
}

/// What `packages.update` did to one package.
enum Change {
    Installed,
    Updated { from: String, values: bool },
    Unchanged,
}

/// Whether the values Secret `name` in `namespace` holds exactly `values_yaml` under
/// `values.yaml` (`None`: no such Secret).
async fn values_secret_matches(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    values_yaml: &str,
) -> Result<Option<bool>, StepError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("Secret/{namespace}/{name}");
    let secret = api.get_opt(name).await.map_err(|e| classify(&what, &e))?;
    Ok(secret.map(|s| {
        let current = s
            .data
            .as_ref()
            .and_then(|d| d.get("values.yaml"))
            .map(|b| b.0.clone())
            .or_else(|| {
                s.string_data
                    .as_ref()
                    .and_then(|d| d.get("values.yaml"))
                    .map(|t| t.clone().into_bytes())
            });
        current.as_deref() == Some(values_yaml.as_bytes())
    }))
}

/// Installs or updates one package of `packages.update`: applies its objects and waits until
/// kapp-controller has reconciled what was applied. A values-only change (same generation) is
/// waited for through a private watch of the PackageInstall opened before the Secret changes.
#[allow(clippy::too_many_arguments)]
async fn update_package(
    provider: &KubeProvider,
    ctx: &StepContext,
    target: &WorkloadTarget,
    client: &kube::Client,
    pkgis: &Arc<SharedWatch>,
    pkg: &PackageSpec,
    report_deadline: Option<Instant>,
) -> Result<(Change, String), StepError> {
    let what = pkgi_what(pkg);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &pkg.namespace, &package_install_resource());
    let existing = api
        .get_opt(&pkg.name)
        .await
        .map_err(|e| classify(&what, &e))?
        .map(|o| serde_json::to_value(&o).unwrap_or(Value::Null));
    let values_changed = match &existing {
        Some(_) if !pkg.values_yaml.trim().is_empty() => {
            let secret = values_secret_name(&pkg.name, &pkg.namespace);
            values_secret_matches(client, &pkg.namespace, &secret, &pkg.values_yaml).await?
                != Some(true)
        }
        _ => false,
    };
    // Opened (and its initial state received) before the Secret changes, so kapp-controller's
    // reconcile of the new values cannot be missed.
    let mut values_watch: Option<ObjectStream> = None;
    if values_changed {
        let mut stream: ObjectStream =
            Box::pin(kube::runtime::watcher::watch_object(api.clone(), &pkg.name));
        match stream.next().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(object_watch_error(&what, e)),
            None => {
                return Err(StepError::Transient(format!(
                    "watch of {what} ended unexpectedly"
                )))
            }
        }
        values_watch = Some(stream);
    }
    let old_generation = existing
        .as_ref()
        .and_then(|e| e.pointer("/metadata/generation"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let label = format!("{} {} ({})", pkg.name, pkg.version, pkg.namespace);
    let generation = apply_package(client, pkg, ApplyMode::APPLY).await?;
    let change = match &existing {
        None => Change::Installed,
        Some(e) if generation != old_generation || values_changed => Change::Updated {
            from: wanted_version(e),
            values: values_changed,
        },
        Some(_) => Change::Unchanged,
    };
    let desc = match values_watch {
        Some(stream) if generation == old_generation => {
            wait_values_reconcile(provider, ctx, pkg, &label, stream, report_deadline).await?
        }
        _ => {
            wait_package(
                provider,
                ctx,
                target,
                pkgis,
                pkg,
                &label,
                generation,
                report_deadline,
            )
            .await?
        }
    };
    Ok((change, desc))
}

/// Deletes `name` of `resource` unless absent; `Ok(true)` when it existed. With `owner`, only
/// an object whose [`TANZU_PACKAGE_ANNOTATION`] is `owner` is deleted (tkgops created it), and
/// the DELETE carries a `uid` precondition with the uid of the object just read, so a
/// same-named object created in between (not checked) is never deleted: the API server answers
/// 409 and the object is left alone (`Ok(false)`).
async fn delete_owned(
    client: &kube::Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    name: &str,
    owner: Option<&str>,
) -> Result<bool, StepError> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    };
    let what = match namespace {
        Some(ns) => format!("{}/{ns}/{name}", resource.kind),
        None => format!("{}/{name}", resource.kind),
    };
    let mut params = DeleteParams::default();
    if let Some(owner) = owner {
        let Some(obj) = api.get_opt(name).await.map_err(|e| classify(&what, &e))? else {
            return Ok(false);
        };
        let ann = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TANZU_PACKAGE_ANNOTATION));
        if ann.map(String::as_str) != Some(owner) {
            return Ok(false);
        }
        params.preconditions = Some(Preconditions {
            uid: obj.metadata.uid.clone(),
            resource_version: None,
        });
    }
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(kube::Error::Api(s))
            if owner.is_some() && s.code == 409 && s.message.contains("Precondition failed") =>
        {
            Ok(false)
        }
        Err(e) => Err(classify(&what, &e)),
    }
}

/// Removes one package the way `tanzu package installed delete` does: deletes the
/// PackageInstall, waits (private watch, `kube::runtime::watcher::watch_object`) until
/// kapp-controller has uninstalled it and dropped its finalizer, then deletes its values
/// Secret and the ServiceAccount, ClusterRole and ClusterRoleBinding tkgops created for it
/// (only those carrying its [`TANZU_PACKAGE_ANNOTATION`]). Returns whether the PackageInstall
/// existed. `DeleteFailed` is tolerated (kapp-controller retries) until
/// [`super::WaitOptions::package_timeout`] or `report_deadline`.
///
/// Errors: [`StepError::Permanent`] `PackageInstall <ns>/<name>: delete failed: <message>` for
/// a deletion still failing at its deadline, or "not deleted after"; requests are classified.
async fn remove_package(
    provider: &KubeProvider,
    ctx: &StepContext,
    client: &kube::Client,
    pkg: &PackageSpec,
    report_deadline: Option<Instant>,
) -> Result<bool, StepError> {
    let what = pkgi_what(pkg);
    let timeout = provider.wait_options().package_timeout;
    let res = package_install_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &pkg.namespace, &res);
    let existed = match api.delete(&pkg.name, &DeleteParams::default()).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        Err(e) => return Err(classify(&what, &e)),
    };
    if existed {
        ctx.progress
            .report(&format!("{}: deleting PackageInstall", pkg.name));
        let origin = Instant::now();
        let stream: ObjectStream =
            Box::pin(kube::runtime::watcher::watch_object(api.clone(), &pkg.name));
        let mut judge = PackageDeleted::new(
            &what,
            &pkg.name,
            timeout,
            timeout,
            report_deadline.map(|d| d.saturating_duration_since(origin)),
        );
        drive(
            &mut StreamSource::new(&what, stream),
            &mut judge,
            &ctx.progress,
            &DriveOptions::kube(origin).with_deadline(origin + timeout),
        )
        .await?;
    }
    let owner = format!("{}-{}", pkg.name, pkg.namespace);
    let ns = Some(pkg.namespace.as_str());
    delete_owned(
        client,
        &custom_resource("", "v1", "Secret", "secrets"),
        ns,
        &values_secret_name(&pkg.name, &pkg.namespace),
        None,
    )
    .await?;
    for (res, namespace, name) in [
        (
            custom_resource("", "v1", "ServiceAccount", "serviceaccounts"),
            ns,
            format!("{owner}-sa"),
        ),
        (
            custom_resource(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
            ),
            None,
            format!("{owner}-cluster-rolebinding"),
        ),
        (
            custom_resource(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
            ),
            None,
            format!("{owner}-cluster-role"),
        ),
    ] {
        delete_owned(client, &res, namespace, &name, Some(&owner)).await?;
    }
    Ok(existed)
}

/// Runs `packages.update`: waits for the PackageRepository like [`rollout`], installs or
/// updates each package of `packages` in order (values Secret and PackageInstall server-side
/// applied, waited for until `ReconcileSucceeded` for what was applied; an unchanged package is
/// a no-op apply), then removes each package of `remove` in the given order (dependents first):
/// the PackageInstall is deleted and waited for until kapp-controller has uninstalled it and
/// released its finalizer, then its values Secret and the ServiceAccount and RBAC objects tkgops
/// created for it are deleted. A package already gone counts as removed, so the step is
/// idempotent (tanzu-apis §4.2, §4.3).
///
/// Progress: one line per package (`contour 1.20.2 → 1.21.0 reconciled`, `removed harbor`).
/// Output [`PackagesUpdateOutput`]: `{"installed":[{"name","namespace","version"}],
/// "updated":[{"name","namespace","from","to","valuesChanged"}],
/// "unchanged":[{"name","namespace","version"}],
/// "removed":[{"name","namespace","status":"removed"|"already absent"}]}`.
///
/// Errors: as [`rollout`]; and [`StepError::Permanent`]
/// `PackageInstall <ns>/<name>: delete failed: <usefulErrorMessage>` when kapp-controller's
/// `DeleteFailed` persists until [`super::WaitOptions::package_timeout`] (or shortly before the
/// step deadline), or "not deleted after" when the finalizer is never released.
pub async fn update(
    provider: &KubeProvider,
    ctx: &StepContext,
    inputs: &PackagesUpdateInputs,
) -> Result<PackagesUpdateOutput, StepError> {
    validate(
        "packages.update",
        &inputs.repository,
        &inputs.packages,
        &inputs.remove,
    )?;
    let start = Instant::now();
    let report_deadline = provider
        .wait_options()
        .report_after(ctx.step.timeout_secs)
        .map(|d| start + d);
    let client = provider.workload_client(&inputs.target).await?;
    wait_repository(
        provider,
        ctx,
        &inputs.target,
        &inputs.repository,
        start,
        report_deadline,
    )
    .await?;
    let pkgis = provider
        .workload_watch(&inputs.target, &package_install_resource())
        .await?;
    let mut out = PackagesUpdateOutput {
        installed: Vec::new(),
        updated: Vec::new(),
        unchanged: Vec::new(),
        removed: Vec::new(),
    };
    let version_of = |pkg: &PackageSpec| PackageVersion {
        name: pkg.name.clone(),
        namespace: pkg.namespace.clone(),
        version: pkg.version.clone(),
    };
    for pkg in &inputs.packages {
        let (change, desc) = update_package(
            provider,
            ctx,
            &inputs.target,
            &client,
            &pkgis,
            pkg,
            report_deadline,
        )
        .await?;
        let (name, ns, version) = (&pkg.name, &pkg.namespace, &pkg.version);
        match change {
            Change::Installed => {
                ctx.progress.report(&format!(
                    "{name} {version} installed, {}",
                    desc.to_lowercase()
                ));
                out.installed.push(version_of(pkg));
            }
            Change::Updated { from, values } => {
                let line = if from == *version {
                    format!("{name} {version} values updated, reconciled")
                } else {
                    format!("{name} {from} → {version} reconciled")
                };
                ctx.progress.report(&line);
                out.updated.push(UpdatedPackage {
                    name: name.clone(),
                    namespace: ns.clone(),
                    from,
                    to: version.clone(),
                    values_changed: values,
                });
            }
            Change::Unchanged => {
                ctx.progress.report(&format!(
                    "{name} {version} unchanged, {}",
                    desc.to_lowercase()
                ));
                out.unchanged.push(version_of(pkg));
            }
        }
        tracing::info!(step = %ctx.step.id, package = %pkg.name, namespace = %pkg.namespace, "package reconciled");
    }
    for pkg in &inputs.remove {
        let existed = remove_package(provider, ctx, &client, pkg, report_deadline).await?;
        let status = if existed {
            ctx.progress.report(&format!("removed {}", pkg.name));
            "removed"
        } else {
            ctx.progress.report(&format!("{} already absent", pkg.name));
            "already absent"
        };
        tracing::info!(step = %ctx.step.id, package = %pkg.name, namespace = %pkg.namespace, status, "package removed");
        out.removed.push(RemovedPackage {
            name: pkg.name.clone(),
            namespace: pkg.namespace.clone(),
            status: status.to_string(),
        });
    }
    Ok(out)
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
}

//! Emulated Kubernetes API servers (management and workload clusters) and simulated controllers.
//!
//! [`KubeEmulator`] runs any number of clusters in one process. Each [`EmulatedCluster`] is an
//! axum server on `127.0.0.1:<random port>` speaking the Kubernetes REST API over **HTTPS only**,
//! so the real `kube::Client` (built from [`EmulatedCluster::kubeconfig_yaml`]) and the real
//! `kubectl` talk to it exactly as to a real API server. Requests must carry
//! `Authorization: Bearer <token>`, else 401: the cluster admin's random token (group
//! `system:masters`, allowed everything), or a ServiceAccount's token
//! ([`EmulatedCluster::service_account_token`]), whose requests are authorized by RBAC over the
//! Roles, ClusterRoles and bindings the cluster stores, with the API server's 403 when denied
//! (module `rbac`; every cluster starts with the default `cluster-admin`, `system:discovery`
//! and `system:public-info-viewer` ClusterRoles and their bindings). What ServiceAccounts were
//! allowed, and by which stored rule, is kept for tests that check RBAC is least-privilege
//! ([`EmulatedCluster::authorized_requests`]). Each cluster's router
//! is wrapped with the shared fault layer ([`crate::faults`]), so tests can inject 5xx, 409, 429,
//! delays and drops.
//!
//! # TLS
//! Each [`KubeEmulator`] generates its own CA (ECDSA P-256) when created; every cluster it adds
//! serves a certificate signed by that CA for `127.0.0.1` (IP SAN) and `localhost` (DNS SAN).
//! [`EmulatedCluster::kubeconfig_yaml`] carries the CA as `certificate-authority-data`, so
//! clients verify the server as usual (no insecure-skip anywhere), and the `<cluster>-kubeconfig`
//! Secrets written by the simulated Cluster API controller carry it too. For raw HTTPS (e.g.
//! `reqwest` with `tls_certs_only`) use [`KubeEmulator::ca_pem`] /
//! [`EmulatedCluster::ca_pem`]. A plain-HTTP request fails the TLS handshake and the connection is
//! closed (a real API server answers it with a 400 first; clients fail either way). ALPN offers
//! `http/1.1` only (no HTTP/2; watches stream as chunked HTTP/1.1 responses).
//!
//! # What is emulated
//! - `/version`, discovery (`/api`, `/api/v1`, `/apis`, `/apis/{g}/{v}`; aggregated-discovery
//!   requests get the plain form), `/healthz`, `/livez`, `/readyz`.
//! - `/openapi/v3` (index) and `/openapi/v3/{api/v1|apis/g/v}`: every resource path with its
//!   operations (`x-kubernetes-group-version-kind`) and query parameters, so `kubectl apply`
//!   sees that the server takes `fieldValidation` and leaves validation to it, and
//!   `components.schemas` with the types' schemas, so `kubectl explain` works: the built-in
//!   kinds' from k8s-openapi (generated from Kubernetes's OpenAPI spec, descriptions included),
//!   a custom resource's from its CRD version's `openAPIV3Schema` (named as the API server names
//!   them, `io.x-k8s.cluster.v1beta1.Cluster`). Types registered without a CRD object (all
//!   Cluster API, Tanzu and Carvel types but `Cluster`) have no schema. No `/openapi/v2` (404).
//! - Protobuf (`application/vnd.kubernetes.protobuf`: the `k8s\0` prefix and the
//!   `runtime.Unknown` envelope, messages from kube-rs's `k8s-pb`) for Namespace, ConfigMap and
//!   Secret: POST/PUT bodies are decoded into the stored JSON (kubectl's typed `create namespace`,
//!   `create configmap`, `create secret` send them), DELETE bodies as `DeleteOptions`, and
//!   single objects, lists and `Status` errors are answered in protobuf when `Accept` names it
//!   first; everything else is answered in JSON (as a real server answers for types without
//!   protobuf). A malformed protobuf body is 400 (`ConfigMap in version "v1" cannot be handled
//!   as a ConfigMap: …`); a protobuf body of another kind is 400 too (a real server decodes
//!   every built-in kind). Watch streams are always JSON.
//! - CRUD for every registered type (built-ins, [`EmulatedCluster::register`], CAPI/kapp helpers and
//!   CustomResourceDefinitions created through the API), namespaced and cluster-scoped, list across
//!   namespaces, `limit`/`continue` paging, `deletecollection`, `dryRun=All`.
//! - metadata: uid, per-cluster monotonically increasing `resourceVersion`, `generation` (1 on
//!   create, +1 when anything outside `metadata`/`status` changes, and when `deletionTimestamp` is
//!   set), `creationTimestamp`, `managedFields`, finalizers/`deletionTimestamp`.
//! - Optimistic concurrency: a PUT/patch whose body carries a stale `metadata.resourceVersion` → 409.
//! - No-op writes (the stored object would not change) do not bump `resourceVersion` and emit no
//!   watch event.
//! - Status subresource split: main-resource writes keep the stored `status`, `/status` writes change
//!   only `status`; `status` is dropped on create for such types (as real CRDs and Deployments do).
//! - Secrets: `stringData` is folded into base64 `data` on every write.
//! - Namespaces: objects in a missing namespace → 404 `namespaces "x" not found`; deleting a
//!   Namespace removes it at once and deletes its contents (objects with finalizers get a
//!   `deletionTimestamp` and stay until their finalizers are removed).
//! - Label selectors (`=`, `==`, `!=`, exists, `!k`, `in`, `notin`) and field selectors on any
//!   dotted path (`metadata.name`, `metadata.namespace`, `status.phase`; `=`, `==`, `!=`).
//! - Watch with replay from an in-memory log of the last 1000 events per cluster, 410 Expired when
//!   the requested resourceVersion is older, bookmarks every second when allowed,
//!   `sendInitialEvents=true` (initial ADDED events then a bookmark annotated
//!   `k8s.io/initial-events-end`), `timeoutSeconds`, selectors. A watch from resourceVersion `""`
//!   or `"0"` starts with synthetic ADDED events for the current objects.
//!
//! # Direct access
//! Simulated controllers and test assertions use [`EmulatedCluster::get`], `list`, `create`,
//! `apply`, `update_status`, `patch_merge`, `delete` and `subscribe` without HTTP; they share the
//! store, resourceVersion counter, managedFields bookkeeping and watch event log with the HTTP API,
//! so HTTP watchers see their changes. [`EmulatedCluster::writes`] audits successful HTTP writes
//! only (rejected requests are visible in the fault layer's request log).
//!
//! # How far server-side apply goes
//! - Field ownership is tracked per (manager, operation, subresource) as sets of *leaf paths*: a
//!   leaf is a scalar, a `null`, an empty object or **a list — lists are atomic** (no
//!   `k:`/`v:` associative-list keys; whoever applies a list owns all of it). Recorded as
//!   `FieldsV1` (`{"f:spec":{"f:replicas":{}}}`) in `metadata.managedFields`.
//! - Apply merges the applied configuration into the live object (objects merged key by key, lists
//!   and scalars replaced, `null` removes), removes fields this manager applied before and omits now
//!   (unless another manager also owns them), and records the manager's `Apply` entry.
//! - Conflicts: a leaf the applier sets to a value different from the live one, owned (same path,
//!   a parent or a child path) by another manager → 409 reason `Conflict`, message
//!   `Apply failed with 1 conflict: conflict with "mgr" using v1: .spec.x` (plus
//!   `details.causes`); `force=true` takes the fields away from the other managers. Equal values
//!   are shared ownership, as in Kubernetes. A manager is (name, operation, subresource): the
//!   `Update` entry of the applier's own name is another manager, so an apply conflicts with a
//!   merge patch sent under the same `fieldManager` (kubernetes/kubernetes#107417).
//! - What mutating admission changes during a request belongs to that request's manager: to
//!   the applier's `Apply` entry for an apply, to the writer's `Update` entry otherwise.
//! - Non-apply writes (POST/PUT/merge/JSON patch and the direct API) record an `Update` entry
//!   for the leaves they changed and take those leaves from other managers without conflict. The
//!   manager is `?fieldManager=`, else the User-Agent up to the first `/`, else `unknown`; the
//!   direct API writes as manager [`DIRECT_MANAGER`].
//! - An identical re-apply changes nothing (same resourceVersion, generation, no event).
//! - Strategic merge patch is a plain JSON merge patch (what the API server does for CRDs; for
//!   built-ins this means lists are replaced, not merged by key).
//! - `?fieldValidation=` (`Ignore`, `Warn`, `Strict`; absent means `Warn`, the API server's
//!   default, `fieldValidation()` in `k8s.io/apiserver/pkg/endpoints/handlers/rest.go`; any other
//!   value is 400) on HTTP writes: fields the type's schema does not declare (built-ins:
//!   k8s-openapi's schemas; custom resources: the CRD's `openAPIV3Schema`, honouring
//!   `x-kubernetes-preserve-unknown-fields`, `additionalProperties` and `items`) are dropped from
//!   the stored object in every mode. `Strict` refuses the write with 400 BadRequest
//!   (`ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error:
//!   unknown field "extra"` for POST/PUT, `strict decoding error: …` for patches); `Warn` answers
//!   with one `Warning: 299 - "unknown field \"spec.foo\""` header per field; `Ignore` says
//!   nothing. Keys a JSON POST/PUT body repeats are `duplicate field "…"` the same way.
//!   Server-side apply of an undeclared field fails whatever the mode, with the API server's
//!   500 `failed to create typed patch object (ns/name; group/version, Kind=K): .spec.foo: field
//!   not declared in schema` (kubernetes/kubernetes#139253). Writes through the direct API are
//!   not checked; undeclared fields the stored object already had are dropped without a report.
//!   Leniencies: an object schema with neither `properties` nor `additionalProperties` keeps
//!   every field (the API server would prune them for CRDs); wrong value types are not refused;
//!   duplicates in YAML bodies and in patches are not reported; the Cluster CRD's `status`
//!   keeps unknown fields.
//! - DELETE reads the `DeleteOptions` body (kube-rs sends its `DeleteParams` there, kubectl
//!   `{"kind":"DeleteOptions",…}`): `preconditions.uid` and `preconditions.resourceVersion` are
//!   checked before anything is written, and a mismatch is 409 Conflict worded as the API
//!   server's (`Operation cannot be fulfilled on <resource> "<name>": StorageError: invalid
//!   object, Code: 4, Key: /registry/…, ResourceVersion: 0, AdditionalErrorMsg: Precondition
//!   failed: UID in precondition: <want>, UID in object meta: <have>`); `dryRun: ["All"]` in the
//!   body stores nothing, as `?dryRun=All` does. `propagationPolicy` and `gracePeriodSeconds` are
//!   accepted and ignored.
//! - Not modelled: apply of lists by merge key, `managedFields` sent by clients, CRD schema
//!   defaulting and value validation, ownerReference garbage collection, watch `DELETED` events for
//!   objects leaving a selector, `resourceVersionMatch`.
//!
//! # Admission
//! A type can have an admission step (mutating then validating webhooks, crate-internal
//! `store::Admission`), run on every write of the main resource: POST, PUT, merge/JSON/strategic
//! patch and server-side apply, over HTTP and through the direct API, `dryRun=All` included (the
//! dry-run response is the admitted object; nothing is stored, no resourceVersion is consumed, no
//! watch event is sent). It is skipped for `/status` writes and for objects being deleted.
//! Denials are `Status` objects with the webhook's code and reason, so kube-rs yields
//! `kube::Error::Api` and kubectl prints `Error from server (<Reason>): admission webhook "<name>"
//! denied the request: …`. Webhook mutations are not recorded in `managedFields`, and admission
//! runs after the existence check (a create of an existing name is 409 before any webhook). The
//! seeded TKG management cluster installs the Cluster admission
//! ([`controllers::seed_management_cluster_with`]).

pub mod controllers;

mod crds;
mod fields;
mod openapi;
mod proto;
mod rbac;
mod schema;
mod select;
mod server;
mod store;
mod tls;

pub use tls::TlsError;

/// Serves `router` over HTTPS on `listener` (bound on 127.0.0.1) with a certificate for
/// `127.0.0.1` and `localhost` signed by a fresh CA, as the emulated API servers are served, so
/// that tests can stand up other HTTPS endpoints (e.g. a git server, which libgit2 reaches
/// through a proxy only over HTTPS). Returns the CA certificate (PEM) and the serving task,
/// which runs until aborted.
///
/// Errors: [`TlsError`] when the CA or the certificate cannot be made.
pub fn serve_https(
    listener: tokio::net::TcpListener,
    name: &str,
    router: axum::Router,
) -> Result<(String, tokio::task::JoinHandle<()>), TlsError> {
    let ca = tls::Ca::generate()?;
    let config = ca.server_config(name)?;
    Ok((
        ca.pem().to_string(),
        tokio::spawn(tls::serve(listener, config, router)),
    ))
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::faults::Faults;
pub use rbac::{AllowingRule, Authorization, AuthorizedRequest};
use store::{ApiError, State, WriteCtx};

/// Field manager name used by the direct (no HTTP) write methods of [`EmulatedCluster`].
pub const DIRECT_MANAGER: &str = "kube-emulator";

/// Group/version/plural triple identifying a resource type; group "" = core.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    /// API group, "" for the core group.
    pub group: String,
    /// API version, e.g. `v1beta1`.
    pub version: String,
    /// Plural resource name, e.g. `clusters`.
    pub plural: String,
}

impl Gvr {
    /// Builds a `Gvr` from `group` ("" for core), `version` and `plural`.
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        Gvr {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
        }
    }

    /// `v1` for the core group, else `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// A resource type served by an emulated cluster (what a CRD declares for one version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// Group/version/plural.
    pub gvr: Gvr,
    /// Kind, e.g. `Cluster`.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether the type has a `/status` subresource (main writes then ignore `status`).
    pub status_subresource: bool,
    /// Short names listed in discovery (e.g. `cm`).
    pub short_names: Vec<String>,
}

impl ResourceType {
    /// A type with the given properties and no short names.
    pub fn new(gvr: Gvr, kind: &str, namespaced: bool, status_subresource: bool) -> Self {
        ResourceType {
            gvr,
            kind: kind.to_string(),
            namespaced,
            status_subresource,
            short_names: Vec::new(),
        }
    }

    /// `apiVersion` of objects of this type (`v1`, `cluster.x-k8s.io/v1beta1`).
    pub fn api_version(&self) -> String {
        self.gvr.api_version()
    }
}

/// One change of a stored object, as broadcast by [`EmulatedCluster::subscribe`].
#[derive(Clone, Debug)]
pub struct ChangeEvent {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: String,
    /// Type of the object.
    pub gvr: Gvr,
    /// The object after the change (for `DELETED`, its last state with the deletion's
    /// resourceVersion), shared with the store and every other receiver of the event.
    pub object: std::sync::Arc<Value>,
}

/// One HTTP write seen by a cluster (see [`EmulatedCluster::writes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    /// `create`, `update`, `patch`, `apply`, `delete`, `update-status`, `patch-status`, `apply-status`.
    pub verb: String,
    /// Type written.
    pub gvr: Gvr,
    /// Namespace from the request path, `None` for cluster-scoped paths.
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// `?fieldManager=` of the request, if any.
    pub field_manager: Option<String>,
    /// Whether the stored object changed.
    pub changed: bool,
    /// The request was a server-side dry run (`dryRun=All`): admission ran, nothing was stored.
    pub dry_run: bool,
}

/// Errors of the emulator's Rust API.
#[derive(Debug, thiserror::Error)]
pub enum KubeEmulatorError {
    /// [`KubeEmulator::add_cluster`] with a name that is already taken.
    #[error("cluster {0:?} already exists")]
    ClusterExists(String),
    /// Binding the listener failed.
    #[error("binding the emulated API server: {0}")]
    Io(#[from] std::io::Error),
    /// Issuing the cluster's serving certificate failed.
    #[error("TLS for the emulated API server: {0}")]
    Tls(#[from] TlsError),
    /// Building the kube client from the kubeconfig failed.
    #[error("building a kube client for the emulated cluster: {0}")]
    Client(String),
    /// The operation failed as the API server would fail it (`code` is the HTTP status, `reason`
    /// the Status reason: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`).
    #[error("{code} {reason}: {message}")]
    Api {
        /// HTTP status code.
        code: u16,
        /// Status reason.
        reason: String,
        /// Human-readable message.
        message: String,
    },
}

impl KubeEmulatorError {
    /// Whether this is an API failure with HTTP status 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeEmulatorError::Api { code: 404, .. })
    }
    /// Whether this is an API failure with HTTP status 409 (Conflict or AlreadyExists).
    pub fn is_conflict(&self) -> bool {
        matches!(self, KubeEmulatorError::Api { code: 409, .. })
    }
}

impl From<ApiError> for KubeEmulatorError {
    fn from(e: ApiError) -> Self {
        KubeEmulatorError::Api {
            code: e.code,
            reason: e.reason.to_string(),
            message: e.message,
        }
    }
}

/// Many emulated clusters in one process, sharing one CA. `Clone` shares state.
#[derive(Clone)]
pub struct KubeEmulator {
    clusters: Arc<Mutex<BTreeMap<String, EmulatedCluster>>>,
    ca: Arc<tls::Ca>,
}

impl Default for KubeEmulator {
    fn default() -> Self {
        Self::new()
    }
}

impl KubeEmulator {
    /// An emulator without clusters, with a freshly generated CA (see the module docs, "TLS").
    /// Panics only if ring cannot generate a P-256 key pair (a broken crypto backend).
    pub fn new() -> Self {
        KubeEmulator {
            clusters: Arc::default(),
            ca: Arc::new(tls::Ca::generate().expect("generating the kube emulator's CA with ring")),
        }
    }

    /// The PEM-encoded CA certificate that signs every cluster's serving certificate (what
    /// kubeconfigs carry as `certificate-authority-data`, base64-encoded).
    pub fn ca_pem(&self) -> String {
        self.ca.pem().to_string()
    }

    /// Starts a new cluster `name`: an HTTPS server on `127.0.0.1:0` with a certificate signed by
    /// this emulator's CA (spawned on the current tokio runtime; it lives as long as the runtime),
    /// a random bearer token, built-in kinds registered and namespaces `default`, `kube-system`,
    /// `kube-public` created.
    /// Errors: [`KubeEmulatorError::ClusterExists`] if the name is taken, [`KubeEmulatorError::Io`]
    /// if the listener cannot be bound, [`KubeEmulatorError::Tls`] if the certificate cannot be
    /// issued.
    pub async fn add_cluster(&self, name: &str) -> Result<EmulatedCluster, KubeEmulatorError> {
        if self.lock().contains_key(name) {
            return Err(KubeEmulatorError::ClusterExists(name.to_string()));
        }
        let tls_config = self.ca.server_config(name)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, _) = broadcast::channel(4096);
        let inner = Arc::new(ClusterInner {
            name: name.to_string(),
            url: format!("https://{addr}"),
            token: uuid::Uuid::new_v4().simple().to_string(),
            ca_pem: self.ca.pem().to_string(),
            faults: Faults::new(),
            state: Mutex::new(State::new(tx)),
            version: Mutex::new((DEFAULT_KUBERNETES_VERSION.to_string(), None)),
            list_snapshots: Mutex::new(server::ListSnapshots::default()),
            service_accounts: Mutex::default(),
            authorizations: Mutex::default(),
            authorized_requests: Mutex::default(),
        });
        let cluster = EmulatedCluster { inner };
        for rt in builtin_types() {
            cluster.register(rt);
        }
        for ns in ["default", "kube-system", "kube-public"] {
            cluster.create(
                &Gvr::new("", "v1", "namespaces"),
                serde_json::json!({"metadata": {"name": ns}}),
            )?;
        }
        for (gvr, obj) in rbac::bootstrap_policy() {
            cluster.create(&gvr, obj)?;
        }
        {
            let mut clusters = self.lock();
            if clusters.contains_key(name) {
                return Err(KubeEmulatorError::ClusterExists(name.to_string()));
            }
            clusters.insert(name.to_string(), cluster.clone());
        }
        let router = cluster.faults().layer(server::router(cluster.clone()));
        tokio::spawn(tls::serve(listener, tls_config, router));
        Ok(cluster)
    }

    /// The cluster named `name`, if it was added.
    pub fn cluster(&self, name: &str) -> Option<EmulatedCluster> {
        self.lock().get(name).cloned()
    }

    /// Names of all clusters, sorted.
    pub fn cluster_names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, EmulatedCluster>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Kubernetes version an emulated cluster reports until [`EmulatedCluster::set_kubernetes_version`].
pub const DEFAULT_KUBERNETES_VERSION: &str = "v1.33.1+vmware.1";

struct ClusterInner {
    name: String,
    url: String,
    token: String,
    /// PEM of the emulator's CA (which signed this cluster's serving certificate).
    ca_pem: String,
    faults: Faults,
    state: Mutex<State>,
    /// `gitVersion` served at `/version` (the Kubernetes version of the emulated cluster), and
    /// when it was last changed (`None`: never since the cluster was added).
    version: Mutex<(String, Option<std::time::SystemTime>)>,
    /// The results of paged LISTs whose later pages are still to be read: every page of one
    /// LIST comes from the same snapshot, as the real API server serves them.
    list_snapshots: Mutex<server::ListSnapshots>,
    /// ServiceAccount tokens minted by [`EmulatedCluster::service_account_token`]: token →
    /// (namespace, name).
    service_accounts: Mutex<std::collections::HashMap<String, (String, String)>>,
    /// The distinct RBAC decisions on ServiceAccounts' requests.
    authorizations: Mutex<rbac::AuthorizationLog>,
    /// The distinct requests of ServiceAccounts that RBAC allowed, with the rule that did.
    authorized_requests: Mutex<rbac::AuthorizedRequestLog>,
}

/// One emulated cluster (API server + store). `Clone` shares state.
#[derive(Clone)]
pub struct EmulatedCluster {
    inner: Arc<ClusterInner>,
}

impl EmulatedCluster {
    /// Sets the Kubernetes version served at `GET /version` (e.g. `v1.23.8+vmware.2`, the
    /// version of the TKR a workload cluster runs). Simulated Cluster API sets it from the
    /// KubeadmControlPlane's `spec.version`.
    pub fn set_kubernetes_version(&self, git_version: &str) {
        if let Ok(mut v) = self.inner.version.lock() {
            if v.0 != git_version {
                *v = (git_version.to_string(), Some(std::time::SystemTime::now()));
            }
        }
    }

    /// The Kubernetes version served at `GET /version`.
    pub fn kubernetes_version(&self) -> String {
        self.inner
            .version
            .lock()
            .map(|v| v.0.clone())
            .unwrap_or_else(|_| DEFAULT_KUBERNETES_VERSION.to_string())
    }

    /// When the version served at `GET /version` last changed (wall clock), `None` when it never
    /// changed since the cluster was added. The fleet benchmark times the workload API server's
    /// version change with it.
    pub fn kubernetes_version_changed_at(&self) -> Option<std::time::SystemTime> {
        self.inner.version.lock().ok().and_then(|v| v.1)
    }

    /// The cluster name given to [`KubeEmulator::add_cluster`].
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Base URL of the API server, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// The PEM-encoded CA certificate that signed this cluster's serving certificate (the same
    /// for every cluster of one [`KubeEmulator`]).
    pub fn ca_pem(&self) -> String {
        self.inner.ca_pem.clone()
    }

    /// The bearer token the API server accepts.
    pub fn token(&self) -> String {
        self.inner.token.clone()
    }

    /// Fault table and request log of this cluster's API server.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// A kubeconfig in TKG style: cluster `<name>` (HTTPS `server` and the CA as base64
    /// `certificate-authority-data`), user `<name>-admin` (token), context `<name>-admin@<name>`,
    /// `current-context` set. Works as-is with `kubectl` and `kube::Config`. Its token is the
    /// cluster admin's (group `system:masters`): every request is allowed.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_for(&format!("{}-admin", self.inner.name), &self.inner.token)
    }

    /// Mints a bearer token for the ServiceAccount `namespace`/`name` (as `kubectl create
    /// token` does): requests with it authenticate as `system:serviceaccount:<namespace>:<name>`
    /// (groups `system:serviceaccounts`, `system:serviceaccounts:<namespace>`,
    /// `system:authenticated`) and are authorized by the RBAC objects the cluster stores. The
    /// token is refused (401) while the ServiceAccount does not exist.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.inner
            .service_accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), (namespace.to_string(), name.to_string()));
        token
    }

    /// [`Self::kubeconfig_yaml`] with a new token of the ServiceAccount `namespace`/`name`
    /// ([`Self::service_account_token`]) as user `<namespace>-<name>`.
    pub fn service_account_kubeconfig_yaml(&self, namespace: &str, name: &str) -> String {
        let token = self.service_account_token(namespace, name);
        self.kubeconfig_for(&format!("{namespace}-{name}"), &token)
    }

    /// The distinct RBAC decisions on ServiceAccounts' requests so far (what they asked, without
    /// object names; the admin's requests are not recorded), sorted.
    pub fn authorizations(&self) -> Vec<Authorization> {
        self.inner
            .authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The distinct requests of ServiceAccounts that RBAC allowed so far, sorted (by user, then
    /// verb, API group, resource, …): each with its verb, API group, resource, subresource,
    /// namespace and object name, and the stored rule that allowed it
    /// ([`AuthorizedRequest::allowed_by`]: binding, role, rule index, matching verb). Filter by
    /// [`AuthorizedRequest::user`] for one ServiceAccount's usage. Denied requests are not in it
    /// (see [`Self::authorizations`]); nor are the admin's (allowed before RBAC is asked).
    pub fn authorized_requests(&self) -> Vec<AuthorizedRequest> {
        self.inner
            .authorized_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The user a bearer token authenticates as, `None` (401) for an unknown token or a
    /// ServiceAccount that no longer exists.
    fn authenticate(&self, token: &str) -> Option<rbac::UserInfo> {
        if token == self.inner.token {
            return Some(rbac::UserInfo::admin());
        }
        let (ns, name) = self
            .inner
            .service_accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()?;
        self.get_shared(&Gvr::new("", "v1", "serviceaccounts"), Some(&ns), &name)?;
        Some(rbac::UserInfo::service_account(&ns, &name))
    }

    /// Authorizes `a` for `user` and records the decision of a ServiceAccount's request (and,
    /// when allowed, the request with the rule that allowed it); `Err`
    /// carries the authorizer's reason (see `rbac::authorize`).
    fn authorize(&self, user: &rbac::UserInfo, a: &rbac::Attributes) -> Result<(), String> {
        let decision = rbac::authorize(self, user, a);
        if user.name.starts_with("system:serviceaccount:") {
            self.inner
                .authorizations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(Authorization::of(user, a, decision.is_ok()));
            if let Ok(Some(rule)) = &decision {
                self.inner
                    .authorized_requests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(rbac::AuthorizedRequest::of(user, a, rule.clone()));
            }
        }
        decision.map(|_| ())
    }

    fn kubeconfig_for(&self, user: &str, token: &str) -> String {
        let n = &self.inner.name;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.inner.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    certificate-authority-data: {ca}\n    server: {url}\ncontexts:\n- name: {user}@{n}\n  context:\n    cluster: {n}\n    user: {user}\ncurrent-context: {user}@{n}\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
            url = self.inner.url,
        )
    }

    /// A `kube::Client` built from [`Self::kubeconfig_yaml`] (`Config::from_custom_kubeconfig`):
    /// it verifies the server certificate against the emulator's CA and sends the token.
    /// Call `crate::install_crypto_provider()` (or the providers' one) first. Errors: [`KubeEmulatorError::Client`].
    pub async fn client(&self) -> Result<kube::Client, KubeEmulatorError> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())
            .map_err(|e| KubeEmulatorError::Client(e.to_string()))?;
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeEmulatorError::Client(e.to_string()))?;
        kube::Client::try_from(cfg).map_err(|e| KubeEmulatorError::Client(e.to_string()))
    }

    /// Registers (or replaces) a resource type at run time; discovery reflects it at once.
    pub fn register(&self, rt: ResourceType) {
        self.state().types.insert(rt.gvr.clone(), rt);
    }

    /// Registers the Cluster API types (all namespaced with a status subresource except
    /// `TanzuKubernetesRelease` and `OSImage`, which are cluster-scoped): cluster.x-k8s.io/v1beta1 Cluster,
    /// ClusterClass, MachineDeployment, MachineSet, Machine, MachineHealthCheck;
    /// controlplane.cluster.x-k8s.io/v1beta1 KubeadmControlPlane; infrastructure.cluster.x-k8s.io/v1beta1
    /// AWSCluster, AWSMachine, AWSMachineTemplate, AWSClusterTemplate;
    /// bootstrap.cluster.x-k8s.io/v1beta1 KubeadmConfig, KubeadmConfigTemplate;
    /// addons.cluster.x-k8s.io/v1beta1 ClusterResourceSet; run.tanzu.vmware.com/v1alpha3
    /// TanzuKubernetesRelease (`tkr`), OSImage (`osimg`) and ClusterBootstrap (`cb`)
    /// (docs/tkg2-class-based.md §6, §8). The Cluster type also gets its CustomResourceDefinition
    /// object `clusters.cluster.x-k8s.io` with an `openAPIV3Schema` (see `crds`), so writes
    /// of Clusters are checked against it (`fieldValidation`) and `kubectl explain clusters`
    /// describes it; the other types have no schema.
    pub fn register_capi_types(&self) {
        let ns = |g: &str, v: &str, p: &str, k: &str, short: &[&str]| ResourceType {
            gvr: Gvr::new(g, v, p),
            kind: k.to_string(),
            namespaced: true,
            status_subresource: true,
            short_names: short.iter().map(|s| s.to_string()).collect(),
        };
        let c = "cluster.x-k8s.io";
        let mut types = vec![
            ns(c, "v1beta1", "clusters", "Cluster", &["cl"]),
            ns(c, "v1beta1", "clusterclasses", "ClusterClass", &["cc"]),
            ns(
                c,
                "v1beta1",
                "machinedeployments",
                "MachineDeployment",
                &["md"],
            ),
            ns(c, "v1beta1", "machinesets", "MachineSet", &["ms"]),
            ns(c, "v1beta1", "machines", "Machine", &["ma"]),
            ns(
                c,
                "v1beta1",
                "machinehealthchecks",
                "MachineHealthCheck",
                &["mhc"],
            ),
            ns(
                "controlplane.cluster.x-k8s.io",
                "v1beta1",
                "kubeadmcontrolplanes",
                "KubeadmControlPlane",
                &["kcp"],
            ),
            ns(
                "bootstrap.cluster.x-k8s.io",
                "v1beta1",
                "kubeadmconfigs",
                "KubeadmConfig",
                &[],
            ),
            ns(
                "bootstrap.cluster.x-k8s.io",
                "v1beta1",
                "kubeadmconfigtemplates",
                "KubeadmConfigTemplate",
                &[],
            ),
            ns(
                "addons.cluster.x-k8s.io",
                "v1beta1",
                "clusterresourcesets",
                "ClusterResourceSet",
                &["crs"],
            ),
        ];
        let i = "infrastructure.cluster.x-k8s.io";
        types.push(ns(i, "v1beta1", "awsclusters", "AWSCluster", &[]));
        types.push(ns(i, "v1beta1", "awsmachines", "AWSMachine", &[]));
        types.push(ns(
            i,
            "v1beta1",
            "awsmachinetemplates",
            "AWSMachineTemplate",
            &[],
        ));
        types.push(ns(
            i,
            "v1beta1",
            "awsclustertemplates",
            "AWSClusterTemplate",
            &[],
        ));
        let mut tkr = ns(
            "run.tanzu.vmware.com",
            "v1alpha3",
            "tanzukubernetesreleases",
            "TanzuKubernetesRelease",
            &["tkr"],
        );
        tkr.namespaced = false;
        types.push(tkr);
        let mut osimage = ns(
            "run.tanzu.vmware.com",
            "v1alpha3",
            "osimages",
            "OSImage",
            &["osimg"],
        );
        osimage.namespaced = false;
        types.push(osimage);
        types.push(ns(
            "run.tanzu.vmware.com",
            "v1alpha3",
            "clusterbootstraps",
            "ClusterBootstrap",
            &["cb"],
        ));
        // The provider configuration a ClusterBootstrap points at (addons manager CRDs).
        types.push(ns(
            "cni.tanzu.vmware.com",
            "v1alpha1",
            "antreaconfigs",
            "AntreaConfig",
            &[],
        ));
        types.push(ns(
            "cni.tanzu.vmware.com",
            "v1alpha1",
            "calicoconfigs",
            "CalicoConfig",
            &[],
        ));
        types.push(ns(
            "csi.tanzu.vmware.com",
            "v1alpha1",
            "awsebscsiconfigs",
            "AwsEbsCSIConfig",
            &[],
        ));
        types.push(ns(
            "run.tanzu.vmware.com",
            "v1alpha1",
            "kappcontrollerconfigs",
            "KappControllerConfig",
            &[],
        ));
        for t in types {
            self.register(t);
        }
        if self
            .get(&store::crd_gvr(), None, "clusters.cluster.x-k8s.io")
            .is_none()
        {
            // Cannot fail: the type is registered and the name is free.
            let _ = self.create(&store::crd_gvr(), crds::cluster_crd());
        }
    }

    /// Registers the Carvel types (namespaced, status subresource): packaging.carvel.dev/v1alpha1
    /// PackageInstall, PackageRepository; data.packaging.carvel.dev/v1alpha1 Package, PackageMetadata;
    /// kappctrl.k14s.io/v1alpha1 App.
    pub fn register_kapp_types(&self) {
        let ns = |g: &str, p: &str, k: &str, status: bool, short: &[&str]| ResourceType {
            gvr: Gvr::new(g, "v1alpha1", p),
            kind: k.to_string(),
            namespaced: true,
            status_subresource: status,
            short_names: short.iter().map(|s| s.to_string()).collect(),
        };
        for t in [
            ns(
                "packaging.carvel.dev",
                "packageinstalls",
                "PackageInstall",
                true,
                &["pkgi"],
            ),
            ns(
                "packaging.carvel.dev",
                "packagerepositories",
                "PackageRepository",
                true,
                &["pkgr"],
            ),
            ns(
                "data.packaging.carvel.dev",
                "packages",
                "Package",
                false,
                &["pkg"],
            ),
            ns(
                "data.packaging.carvel.dev",
                "packagemetadatas",
                "PackageMetadata",
                false,
                &["pkgm"],
            ),
            ns("kappctrl.k14s.io", "apps", "App", true, &[]),
        ] {
            self.register(t);
        }
    }

    /// Registers the admission (mutating and validating webhooks) of one resource type; it runs
    /// on every main-resource write, HTTP or direct, dry runs included (see `store::Admission`).
    pub(crate) fn set_admission(&self, gvr: Gvr, hook: Arc<dyn store::Admission>) {
        self.state().admission.insert(gvr, hook);
    }

    /// All registered types, sorted by group/version/plural.
    pub fn types(&self) -> Vec<ResourceType> {
        self.state().types.values().cloned().collect()
    }

    /// The object `name` (in `namespace` for namespaced types), or `None` if absent or the type is unknown.
    pub fn get(&self, gvr: &Gvr, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.get_shared(gvr, namespace, name)
            .map(Arc::unwrap_or_clone)
    }

    /// [`Self::get`] without a copy: the stored object itself, shared (cheap at any size).
    pub fn get_shared(&self, gvr: &Gvr, namespace: Option<&str>, name: &str) -> Option<Arc<Value>> {
        self.state().get(gvr, namespace, name).ok()
    }

    /// Objects of a type in `namespace` (`None`: all namespaces, or cluster-scoped), sorted by
    /// namespace and name; empty if the type is unknown.
    pub fn list(&self, gvr: &Gvr, namespace: Option<&str>) -> Vec<Value> {
        self.list_shared(gvr, namespace)
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect()
    }

    /// [`Self::list`] without copies: the stored objects themselves, shared. What the simulated
    /// controllers use for their periodic passes over a fleet.
    pub fn list_shared(&self, gvr: &Gvr, namespace: Option<&str>) -> Vec<Arc<Value>> {
        self.state()
            .list(gvr, namespace, None, None)
            .unwrap_or_default()
    }

    /// Objects of a type in `namespace` (`None`: all namespaces) whose label `key` is `value`,
    /// sorted by namespace and name; empty if the type is unknown. Only the matching objects
    /// are copied, so the simulated controllers can look up one cluster's objects in a
    /// management cluster holding thousands.
    pub fn list_labeled(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        key: &str,
        value: &str,
    ) -> Vec<Value> {
        let Ok(sel) = select::LabelSelector::parse(&format!("{key}={value}")) else {
            return Vec::new();
        };
        self.state()
            .list(gvr, namespace, Some(&sel), None)
            .unwrap_or_default()
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect()
    }

    /// Creates `obj` like a POST (namespace from `metadata.namespace`, default `default` for
    /// namespaced types); returns the stored object. Errors ([`KubeEmulatorError::Api`]): unknown
    /// type 404, missing namespace 404, existing name 409 AlreadyExists, no name 422.
    pub fn create(&self, gvr: &Gvr, obj: Value) -> Result<Value, KubeEmulatorError> {
        Ok(self.state().create(gvr, None, obj, &direct_ctx())?)
    }

    /// Replaces `.status` like a PUT to `/status` (for types without the subresource, the status of
    /// the main object is replaced); returns the stored object. Errors: 404 when absent.
    pub fn update_status(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) -> Result<Value, KubeEmulatorError> {
        let mut st = self.state();
        let rt = st.rt(gvr)?;
        let mut body = Value::clone(&*st.get(gvr, namespace, name)?);
        body["status"] = status;
        if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let (v, _) = st.update(
            gvr,
            namespace,
            name,
            body,
            rt.status_subresource,
            &direct_ctx(),
        )?;
        Ok(v)
    }

    /// Applies an RFC 7386 merge patch to the main resource (for types with a status subresource
    /// the patch cannot change `.status`; use [`Self::update_status`]); returns the stored object.
    /// Removing the last finalizer of an object being deleted removes it. Errors: 404 when absent,
    /// 409 when the patch carries a stale `metadata.resourceVersion`.
    pub fn patch_merge(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value, KubeEmulatorError> {
        let body = serde_json::to_vec(&patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let (v, _) = self.state().patch(
            gvr,
            namespace,
            name,
            store::PatchKind::Merge,
            &body,
            false,
            false,
            &direct_ctx(),
        )?;
        Ok(v)
    }

    /// Server-side applies `obj` (which must carry `metadata.name`, and `metadata.namespace` for
    /// namespaced types) as `field_manager`, like a PATCH with `application/apply-patch+yaml`
    /// (`force` = `?force=true`); creates the object when absent. For types with a status
    /// subresource `.status` is ignored. Errors: 409 Conflict (field owned by another manager),
    /// 404 (unknown type or missing namespace), 400 (no name, kind/apiVersion mismatch).
    pub fn apply(
        &self,
        gvr: &Gvr,
        obj: Value,
        field_manager: &str,
        force: bool,
    ) -> Result<Value, KubeEmulatorError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(ApiError::bad_request("metadata.name is required").into());
        }
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        let body = serde_json::to_vec(&obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let ctx = WriteCtx {
            manager: field_manager.to_string(),
            ..WriteCtx::default()
        };
        let (v, _) = self.state().patch(
            gvr,
            ns.as_deref(),
            &name,
            store::PatchKind::Apply,
            &body,
            false,
            force,
            &ctx,
        )?;
        Ok(v)
    }

    /// Deletes like a DELETE: with finalizers only sets `deletionTimestamp`. Errors: 404 when absent.
    pub fn delete(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), KubeEmulatorError> {
        self.state().delete(gvr, namespace, name, false)?;
        Ok(())
    }

    /// A receiver of every change (HTTP and direct writes), in resourceVersion order. The channel
    /// holds 4096 events; a slow receiver gets `RecvError::Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.state().tx.subscribe()
    }

    /// The audit of HTTP writes, in order (direct-API writes are not recorded).
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.state().writes.clone()
    }

    /// The cluster's current resourceVersion counter (the resourceVersion of the latest write).
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn list_snapshots(&self) -> MutexGuard<'_, server::ListSnapshots> {
        self.inner
            .list_snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

fn direct_ctx() -> WriteCtx {
    WriteCtx {
        manager: DIRECT_MANAGER.to_string(),
        ..WriteCtx::default()
    }
}

/// The built-in kinds every cluster serves.
fn builtin_types() -> Vec<ResourceType> {
    let t = |g: &str, v: &str, p: &str, k: &str, namespaced: bool, status: bool, short: &[&str]| {
        ResourceType {
            gvr: Gvr::new(g, v, p),
            kind: k.to_string(),
            namespaced,
            status_subresource: status,
            short_names: short.iter().map(|s| s.to_string()).collect(),
        }
    };
    let rbac = "rbac.authorization.k8s.io";
    vec![
        t("", "v1", "namespaces", "Namespace", false, true, &["ns"]),
        t("", "v1", "secrets", "Secret", true, false, &[]),
        t("", "v1", "configmaps", "ConfigMap", true, false, &["cm"]),
        t(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            false,
            &["sa"],
        ),
        t("", "v1", "services", "Service", true, true, &["svc"]),
        t("", "v1", "pods", "Pod", true, true, &["po"]),
        t("", "v1", "nodes", "Node", false, true, &["no"]),
        t("", "v1", "events", "Event", true, false, &["ev"]),
        t(rbac, "v1", "clusterroles", "ClusterRole", false, false, &[]),
        t(
            rbac,
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            false,
            &[],
        ),
        t(rbac, "v1", "roles", "Role", true, false, &[]),
        t(rbac, "v1", "rolebindings", "RoleBinding", true, false, &[]),
        t(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            true,
            &["deploy"],
        ),
        t("apps", "v1", "daemonsets", "DaemonSet", true, true, &["ds"]),
        t(
            "apps",
            "v1",
            "statefulsets",
            "StatefulSet",
            true,
            true,
            &["sts"],
        ),
        t(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
            true,
            &["pvc"],
        ),
        t(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            false,
            &["netpol"],
        ),
        t(
            "networking.k8s.io",
            "v1",
            "ingresses",
            "Ingress",
            true,
            true,
            &["ing"],
        ),
        t(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            false,
            &[],
        ),
        t(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
            &["crd", "crds"],
        ),
    ]
}

//! Emulated Tanzu Mission Control REST API with the CSP token exchange.
//!
//! One axum server on `127.0.0.1:0` serves both hosts the TMC client talks to, so its
//! [`TmcEmulator::url`] is used as the TMC endpoint and as the CSP endpoint:
//!
//! * `POST /csp/gateway/am/api/auth/api-tokens/authorize`: the CSP API-token exchange. The API
//!   (refresh) token is accepted in the form body `refresh_token=…` (TMC-TF
//!   `internal/authctx/saas.go`) or in the query `?refresh_token=…` with an empty body (SIVT
//!   `tmc_api_constants.py` `TMC_LOGIN_API`).
//! * `POST|GET /v1alpha1/clusters`, `GET|PUT|DELETE /v1alpha1/clusters/{name}` (TMC-TF
//!   `internal/client/cluster/cluster_resource.go`), `GET /v1alpha1/clusters:manifest/{name}`
//!   (TMC-TF `internal/client/cluster/manifest/manifest.go`). They need
//!   `Authorization: Bearer <access token>` or the raw access token (SIVT `saas_util.py`).
//! * `GET /installer?id=…&source=attach`: the unauthenticated `installerLink`, multi-document YAML.
//! * `POST /v1alpha1/clusters/{name}:agentconnect`: emulator-private. Stands in for the outbound
//!   connection of the TMC cluster agent: the simulated agent on an emulated workload cluster
//!   posts `{"fullName":{…},"registrationToken":"…","kubeServerVersion":"…","nodeCount":"6"}`
//!   (no auth header) and the cluster goes `PENDING → READY/HEALTHY` with
//!   `conditions["Agent-READY"]`.
//!
//! Errors follow grpc-gateway: `{"code":<grpc code>,"error":"…","message":"…","details":[]}`
//! (TMC-TF `internal/models/kubeconfig/grpc_gateway_runtime_error.go`). CSP errors use CSP's
//! own shape `{"statusCode":400,"message":"invalid_grant: Invalid refresh token"}`.
//!
//! Every path goes through [`Faults`], so tests can inject 5xx, 429, delays and dropped
//! connections and count the requests made.
//!
//! Test knobs: [`TmcEmulator::set_phase`] forces a phase/health,
//! [`TmcEmulator::set_health_on_connect`] makes a cluster come up `READY` with a degraded health
//! (`WARNING`, `UNHEALTHY`) when its agent connects, and [`TmcEmulator::replace_cluster`] swaps
//! a cluster for a same-named one with a new uid between two requests.
//!
//! `meta.labels` are kept exactly as the last `POST` or `PUT` sent them (a `PUT` without
//! `labels` removes them all) and returned by every `GET` and list: tkgops's ownership label
//! lives there, so the emulator neither adds, drops nor rewrites a label. Label keys and
//! values are not validated (TMC's rules are not in the reference).
//!
//! # Update (`PUT /v1alpha1/clusters/{name}`)
//!
//! TMC-TF's `ManageV1alpha1ClusterResourceServiceUpdate` sends the whole object
//! `{"cluster":{fullName, meta, spec}}` to `PUT /v1alpha1/clusters/{fullName.name}` without
//! query parameters (docs/tanzu-apis.md §3.2, §3.3). The emulator:
//!
//! * takes the management cluster and provisioner from the body's `fullName` (falling back to the
//!   `fullName.*` query and then `attached`); a body `fullName.name` other than the path's is
//!   400 (grpc 3);
//! * replaces `meta.description`, `meta.labels` and `meta.annotations` with the request's
//!   (absent = removed) and `spec` with the request's when it is sent (`clusterGroupName`
//!   defaults to `default`); `status`, `uid` and the timestamps are the server's;
//! * compares `meta.resourceVersion` when the request carries one: a stale version is
//!   **409 with grpc code 10 (`Aborted`)**, as grpc-gateway maps `Aborted`. A request without
//!   `resourceVersion` is applied unconditionally (last writer wins);
//! * bumps `resourceVersion` (and `generation` when the spec changed).
//!
//! # Cluster groups
//!
//! Until a test calls [`TmcEmulator::set_cluster_groups`], every group name exists (a leniency:
//! the sandbox and older tests do not declare their groups). Once declared, `POST` and `PUT`
//! naming another `spec.clusterGroupName` answer **404 with grpc code 5** and the message
//! `cluster group "<name>" not found`. The reference (docs/tanzu-apis.md §3) does not document what
//! real TMC answers for a missing group; 404 `NotFound` is the grpc convention for a missing
//! referenced object, and tkgops treats a 400 the same way, so neither hides a bug.
//!
//! # Detach (`DELETE /v1alpha1/clusters/{name}?force=…`)
//!
//! TMC-TF deletes with `force=false`, polls `GET` until 404 and, when that does not come,
//! deletes again with `force=true` (docs/tanzu-apis.md §3.5 step 5). The emulator:
//!
//! * `force=false`: the cluster goes to `status.phase: DETACHING` (TMC tells the agent to
//!   uninstall itself). The emulator does not model the agent's acknowledgement on the workload
//!   cluster; it counts ticks instead, one tick per `GET` of that cluster: the first `GET` after
//!   the `DELETE` still shows `DETACHING`, the next one answers 404 and the cluster is gone.
//!   Deleting a cluster that is already `DETACHING` answers 200 and changes nothing.
//! * `force=true`: the cluster is removed at once, whatever its phase.
//! * a missing cluster is 404 (grpc 5) for either.
//! * Knob [`TmcEmulator::set_stuck_detaching`]: a `force=false` delete of that cluster never
//!   completes (it stays `DETACHING` on every `GET`), as when the agent is unreachable; only
//!   `force=true` removes it.
//! * While a cluster is `DETACHING`, an `:agentconnect` no longer makes it `READY`.

mod installer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};

use super::faults::Faults;

/// Settings of one [`TmcEmulator`].
#[derive(Clone)]
pub struct TmcEmulatorOptions {
    /// The CSP API (refresh) token valid at the start; exchanged for access tokens. More are
    /// added with [`TmcEmulator::add_api_token`] and revoked with
    /// [`TmcEmulator::revoke_api_token`].
    pub api_token: String,
    /// The org id written into every `fullName.orgId` and into the CSP `id_token`.
    pub org_id: String,
    /// Lifetime of an issued access token (`expires_in`, whole seconds on the wire). CSP uses
    /// 1799 s.
    pub access_token_ttl: Duration,
    /// How long after a successful agent connect the cluster turns `READY`/`HEALTHY`
    /// (0: at once, before the connect call answers).
    pub agent_connect_delay: Duration,
}

impl Default for TmcEmulatorOptions {
    /// API token `tmc-emulator-api-token`, org id `emulated-org`, TTL 1799 s, no connect delay.
    fn default() -> Self {
        TmcEmulatorOptions {
            api_token: "tmc-emulator-api-token".to_string(),
            org_id: "emulated-org".to_string(),
            access_token_ttl: Duration::from_secs(1799),
            agent_connect_delay: Duration::ZERO,
        }
    }
}

impl std::fmt::Debug for TmcEmulatorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TmcEmulatorOptions")
            .field("api_token", &"<redacted>")
            .field("org_id", &self.org_id)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("agent_connect_delay", &self.agent_connect_delay)
            .finish()
    }
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum TmcEmulatorError {
    /// Binding `127.0.0.1:0` or reading the bound address failed.
    #[error("TMC emulator: cannot bind a loopback port: {0}")]
    Bind(#[from] std::io::Error),
}

/// A running TMC + CSP emulator. Cheap to clone (shared state); the server runs on the tokio
/// runtime that called [`TmcEmulator::start`] until that runtime shuts down.
#[derive(Clone)]
pub struct TmcEmulator {
    url: String,
    faults: Faults,
    state: Arc<Shared>,
}

impl std::fmt::Debug for TmcEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TmcEmulator")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Key of a stored cluster: (managementClusterName, provisionerName, name).
type ClusterKey = (String, String, String);

struct Record {
    /// The `cluster` object as served (the envelope content).
    cluster: Value,
    installer_id: String,
    registration_token: String,
    /// `Some(n)`: detaching; the cluster disappears after `n` more GETs of it.
    detach_gets_left: Option<u32>,
}

#[derive(Default)]
struct Db {
    /// access token → expiry.
    tokens: BTreeMap<String, Instant>,
    /// access token → the API token it was exchanged for.
    issued_for: BTreeMap<String, String>,
    /// API tokens revoked with [`TmcEmulator::revoke_api_token`].
    revoked: BTreeSet<String>,
    /// API tokens added with [`TmcEmulator::add_api_token`].
    added: BTreeSet<String>,
    clusters: BTreeMap<ClusterKey, Record>,
}

struct Shared {
    opts: TmcEmulatorOptions,
    url: String,
    db: Mutex<Db>,
    /// Test knob: cluster name → the `health` its agent reports on connect (default `HEALTHY`).
    connect_health: Mutex<BTreeMap<String, String>>,
    /// The org's cluster groups; `None`: every group exists (see the module docs).
    cluster_groups: Mutex<Option<BTreeSet<String>>>,
    /// Test knob: names of clusters whose `force=false` detach never completes.
    stuck_detaching: Mutex<BTreeSet<String>>,
}

impl Shared {
    /// `Err` (404, grpc 5) when cluster groups are declared and `group` is not one of them.
    fn check_group(&self, group: &str) -> Result<(), ApiError> {
        let groups = self
            .cluster_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match groups.as_ref() {
            Some(g) if !g.contains(group) => {
                Err(ApiError(5, format!("cluster group {group:?} not found")))
            }
            _ => Ok(()),
        }
    }

    fn is_stuck(&self, name: &str) -> bool {
        self.stuck_detaching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // to tests; keep serving instead of propagating the poison.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TmcEmulator {
    /// Binds `127.0.0.1:0` and serves the CSP and TMC paths on it (see the module docs).
    ///
    /// Errors: [`TmcEmulatorError::Bind`] when no loopback port can be bound.
    pub async fn start(opts: TmcEmulatorOptions) -> Result<TmcEmulator, TmcEmulatorError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let faults = Faults::new();
        let state = Arc::new(Shared {
            opts,
            url: url.clone(),
            db: Mutex::new(Db::default()),
            connect_health: Mutex::new(BTreeMap::new()),
            cluster_groups: Mutex::new(None),
            stuck_detaching: Mutex::new(BTreeSet::new()),
        });
        let router = Router::new()
            .route(
                "/csp/gateway/am/api/auth/api-tokens/authorize",
                post(authorize),
            )
            .route(
                "/v1alpha1/clusters",
                post(create_cluster).get(list_clusters),
            )
            .route(
                "/v1alpha1/clusters/{name}",
                get(get_cluster)
                    .put(update_cluster)
                    .delete(delete_cluster)
                    .post(post_cluster_action),
            )
            .route("/v1alpha1/clusters:manifest/{name}", get(cluster_manifest))
            .route("/installer", get(installer))
            .fallback(|| async { grpc_error(5, "Not Found") })
            .with_state(state.clone());
        let router = faults.layer(router);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "TMC emulator server stopped");
            }
        });
        Ok(TmcEmulator { url, faults, state })
    }

    /// Base URL `http://127.0.0.1:PORT`, without a trailing slash. Use it as both the TMC
    /// endpoint and the CSP endpoint.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The fault table and request log of this emulator (every path).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The stored `cluster` object (envelope content) of the first cluster named `name`, under
    /// any management cluster and provisioner; `None` when there is none.
    pub fn cluster(&self, name: &str) -> Option<Value> {
        let db = self.state.db();
        db.clusters
            .iter()
            .find(|(k, _)| k.2 == name)
            .map(|(_, r)| r.cluster.clone())
    }

    /// Every stored `cluster` object, ordered by (managementClusterName, provisionerName, name).
    pub fn clusters(&self) -> Vec<Value> {
        self.state
            .db()
            .clusters
            .values()
            .map(|r| r.cluster.clone())
            .collect()
    }

    /// Test helper: forces the first cluster named `name` into `phase` / `health` (e.g. `ERROR`,
    /// `UNHEALTHY`). For `ERROR` and `UPGRADE_FAILED` it also sets a failed `Agent-READY`
    /// condition. Returns whether such a cluster exists.
    pub fn set_phase(&self, name: &str, phase: &str, health: &str) -> bool {
        let mut db = self.state.db();
        let Some(rec) = db
            .clusters
            .iter_mut()
            .find(|(k, _)| k.2 == name)
            .map(|(_, r)| r)
        else {
            return false;
        };
        let status = ensure_object(&mut rec.cluster, "status");
        status.insert("phase".into(), json!(phase));
        status.insert("health".into(), json!(health));
        if phase == "ERROR" || phase == "UPGRADE_FAILED" {
            let cond = json!({
                "type": "Agent-READY",
                "status": "FALSE",
                "severity": "ERROR",
                "reason": "AgentError",
                "message": format!("cluster agent reported phase {phase} (forced by the emulator)"),
                "lastTransitionTime": now(),
            });
            ensure_object_in(status, "conditions").insert("Agent-READY".into(), cond);
        }
        touch(&mut rec.cluster, false);
        true
    }

    /// Test knob: clusters named `name` report `health` (e.g. `WARNING`, `UNHEALTHY`) instead
    /// of `HEALTHY` when their agent connects; the phase still becomes `READY` and
    /// `healthDetails.message` says which component is degraded. Applies to later connects.
    pub fn set_health_on_connect(&self, name: &str, health: &str) {
        if let Ok(mut m) = self.state.connect_health.lock() {
            m.insert(name.to_string(), health.to_string());
        }
    }

    /// Declares the org's cluster groups (`default` is not implied). From then on `POST` and
    /// `PUT` of a cluster whose `spec.clusterGroupName` is not one of `groups` answer 404 with
    /// grpc code 5 and `cluster group "<name>" not found` (see the module docs). Before the
    /// first call every group exists.
    pub fn set_cluster_groups(&self, groups: &[&str]) {
        let mut g = self
            .state
            .cluster_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *g = Some(groups.iter().map(|s| s.to_string()).collect());
    }

    /// Test knob: when `stuck` is true, a `force=false` detach of clusters named `name` never
    /// completes: the cluster stays `DETACHING` on every `GET` until a `force=true` delete
    /// removes it (as when its agent is unreachable). `false` lets pending detaches finish on
    /// the next ticks.
    pub fn set_stuck_detaching(&self, name: &str, stuck: bool) {
        let mut s = self
            .state
            .stuck_detaching
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if stuck {
            s.insert(name.to_string());
        } else {
            s.remove(name);
        }
    }

    /// Test knob: replaces the first cluster named `name` at once by a new cluster of the same
    /// full name, as if its owner had detached it and someone else attached another cluster
    /// under that name between two requests: a new `meta.uid`, `resourceVersion` 1, phase
    /// `PENDING`, `spec.clusterGroupName` `group` and `meta.labels` `labels` (no description).
    /// Returns the new uid, or `None` when there is no such cluster.
    pub fn replace_cluster(
        &self,
        name: &str,
        group: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<String> {
        let mut db = self.state.db();
        let (key, rec) = db.clusters.iter_mut().find(|(k, _)| k.2 == name)?;
        let uid = new_uid();
        let ts = now();
        rec.cluster = json!({
            "fullName": {"orgId": self.state.opts.org_id, "managementClusterName": key.0,
                         "provisionerName": key.1, "name": key.2},
            "meta": {"uid": uid, "creationTime": ts, "updateTime": ts, "resourceVersion": "1",
                     "generation": "1", "labels": labels, "annotations": {}},
            "spec": {"clusterGroupName": group},
            "status": {
                "phase": "PENDING",
                "health": "HEALTH_UNSPECIFIED",
                "type": "ATTACHED",
                "installerLink": format!("{}/installer?id={}&source=attach", self.state.url, rec.installer_id),
                "conditions": {},
            },
        });
        rec.detach_gets_left = None;
        Some(uid)
    }

    /// Test hook: makes every access token issued so far expire now, as if its TTL had elapsed.
    /// From then on the TMC paths answer them with 401 (grpc code 16), exactly as for a token
    /// past its `expires_in`; tokens issued later are unaffected. Lets a test exercise token
    /// expiry without waiting for [`TmcEmulatorOptions::access_token_ttl`]. Returns how many
    /// unexpired tokens it expired.
    pub fn expire_access_tokens(&self) -> usize {
        let mut db = self.state.db();
        let now = Instant::now();
        let live = db.tokens.values().filter(|exp| **exp > now).count();
        db.tokens.clear();
        db.issued_for.clear();
        live
    }

    /// Adds a valid CSP API token, as generating a second API token in the CSP console does
    /// (both are valid until one is revoked).
    pub fn add_api_token(&self, token: &str) {
        let mut db = self.state.db();
        db.revoked.remove(token);
        db.added.insert(token.to_string());
    }

    /// Revokes CSP API token `token`: it is refused from then on (`invalid_grant`), and the
    /// access tokens exchanged for it stop working at once (401). Whether CSP ends those
    /// access tokens before their `expires_in` is not documented; the emulator takes the
    /// stricter reading, so a client that keeps using one fails here first. Returns how many
    /// unexpired access tokens it ended.
    pub fn revoke_api_token(&self, token: &str) -> usize {
        let mut db = self.state.db();
        db.added.remove(token);
        db.revoked.insert(token.to_string());
        let now = Instant::now();
        let ended: Vec<String> = db
            .issued_for
            .iter()
            .filter(|(_, api)| api.as_str() == token)
            .map(|(access, _)| access.clone())
            .collect();
        let mut live = 0;
        for access in ended {
            db.issued_for.remove(&access);
            if db.tokens.remove(&access).is_some_and(|exp| exp > now) {
                live += 1;
            }
        }
        live
    }

    /// The registration token the agent of the first cluster named `name` must present on
    /// `:agentconnect` (the value in the installer's `stack-config`); `None` when absent.
    pub fn registration_token(&self, name: &str) -> Option<String> {
        let db = self.state.db();
        db.clusters
            .iter()
            .find(|(k, _)| k.2 == name)
            .map(|(_, r)| r.registration_token.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// helpers

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A ULID-shaped TMC uid: `c:01` + 24 Crockford base32 characters.
fn new_uid() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let bits = u128::from_be_bytes(*uuid::Uuid::new_v4().as_bytes());
    let mut s = String::from("c:01");
    for i in 0..24 {
        s.push(ALPHABET[((bits >> (i * 5)) & 31) as usize] as char);
    }
    s
}

/// A grpc-gateway error response: HTTP status from the grpc `code`.
fn grpc_error(code: i32, message: impl Into<String>) -> Response {
    let message = message.into();
    let status = match code {
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(json!({"code": code, "error": message, "message": message, "details": []})),
    )
        .into_response()
}

/// A grpc error not yet rendered (small, unlike [`Response`]); see [`grpc_error`].
struct ApiError(i32, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        grpc_error(self.0, self.1)
    }
}

fn ok_json(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn ensure_object<'a>(v: &'a mut Value, key: &str) -> &'a mut serde_json::Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    let Value::Object(map) = v else {
        unreachable!("just made an object")
    };
    ensure_object_in(map, key)
}

fn ensure_object_in<'a>(
    map: &'a mut serde_json::Map<String, Value>,
    key: &str,
) -> &'a mut serde_json::Map<String, Value> {
    let slot = map.entry(key.to_string()).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Bumps `meta.resourceVersion` and `meta.updateTime` (and `meta.generation` for spec changes).
fn touch(cluster: &mut Value, spec_changed: bool) {
    let meta = ensure_object(cluster, "meta");
    let rv = meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    meta.insert("resourceVersion".into(), json!((rv + 1).to_string()));
    meta.insert("updateTime".into(), json!(now()));
    if spec_changed {
        let g = meta
            .get("generation")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        meta.insert("generation".into(), json!((g + 1).to_string()));
    }
}

/// DNS-label rule TMC applies to cluster names: `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, 1..=63 chars.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && inner(&b[0])
        && inner(&b[b.len() - 1])
        && b.iter().all(|c| inner(c) || *c == b'-')
}

/// Checks `Authorization: Bearer <token>` or a raw token against the issued access tokens.
fn check_auth(state: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(raw) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ApiError(16, "missing authorization header".into()));
    };
    let raw = raw.trim();
    let token = match raw.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => raw,
    };
    let mut db = state.db();
    let now = Instant::now();
    db.tokens.retain(|_, exp| *exp > now);
    if db.tokens.contains_key(token) {
        Ok(())
    } else {
        Err(ApiError(16, "token is invalid or expired".into()))
    }
}

/// Full-name query parameters, both spellings; both default to `attached`.
fn key_from_query(name: &str, q: &BTreeMap<String, String>) -> ClusterKey {
    let pick = |field: &str| {
        q.get(&format!("fullName.{field}"))
            .or_else(|| q.get(&format!("full_name.{field}")))
            .or_else(|| q.get(&format!("full_name.{}", camel_to_snake(field))))
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "attached".to_string())
    };
    (
        pick("managementClusterName"),
        pick("provisionerName"),
        name.to_string(),
    )
}

fn camel_to_snake(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice::<Value>(body)
        .map_err(|e| ApiError(3, format!("invalid request body: {e}")))
}

// ---------------------------------------------------------------------------------------------
// CSP

async fn authorize(
    State(state): State<Arc<Shared>>,
    Query(q): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let presented = form.get("refresh_token").or_else(|| q.get("refresh_token"));
    let csp_error = |status: StatusCode, msg: &str| {
        (
            status,
            axum::Json(json!({"statusCode": status.as_u16(), "message": msg})),
        )
            .into_response()
    };
    let Some(presented) = presented else {
        return csp_error(
            StatusCode::BAD_REQUEST,
            "invalid_request: refresh_token is required",
        );
    };
    let valid = {
        let db = state.db();
        !presented.is_empty()
            && !db.revoked.contains(presented)
            && (*presented == state.opts.api_token || db.added.contains(presented))
    };
    if !valid {
        return csp_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant: Invalid refresh token",
        );
    }
    let ttl = state.opts.access_token_ttl;
    let access = format!("csp-at-{}{}", random_hex(), random_hex());
    {
        let mut db = state.db();
        db.tokens.insert(access.clone(), Instant::now() + ttl);
        db.issued_for.insert(access.clone(), presented.clone());
    }
    let exp = chrono::Utc::now().timestamp() + ttl.as_secs() as i64;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let id_token = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(
            json!({"sub": "tkgops-emulator", "context_name": state.opts.org_id, "exp": exp})
                .to_string()
        )
    );
    ok_json(json!({
        "id_token": id_token,
        "token_type": "bearer",
        "expires_in": ttl.as_secs(),
        "scope": "ALL_PERMISSIONS customer_number openid group_ids group_names",
        "access_token": access,
        "refresh_token": presented,
    }))
}

// ---------------------------------------------------------------------------------------------
// clusters

async fn create_cluster(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = check_auth(&state, &headers) {
        return r.into_response();
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let Some(req) = body.get("cluster").filter(|c| c.is_object()) else {
        return grpc_error(3, "request body must be {\"cluster\":{…}}");
    };
    let name = str_field(req, &["fullName", "name"]).unwrap_or("");
    if !valid_name(name) {
        return grpc_error(
            3,
            format!("invalid cluster name {name:?}: must match ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ and be at most 63 characters"),
        );
    }
    let mgmt = str_field(req, &["fullName", "managementClusterName"])
        .filter(|s| !s.is_empty())
        .unwrap_or("attached");
    let prov = str_field(req, &["fullName", "provisionerName"])
        .filter(|s| !s.is_empty())
        .unwrap_or("attached");
    let key: ClusterKey = (mgmt.to_string(), prov.to_string(), name.to_string());

    let meta_in = req.get("meta").cloned().unwrap_or_else(|| json!({}));
    let mut spec = req
        .get("spec")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    if str_field(&spec, &["clusterGroupName"]).is_none_or(str::is_empty) {
        spec["clusterGroupName"] = json!("default");
    }
    if let Err(e) = state.check_group(str_field(&spec, &["clusterGroupName"]).unwrap_or("")) {
        return e.into_response();
    }
    let mut db = state.db();
    if db.clusters.contains_key(&key) {
        return grpc_error(6, format!("cluster {mgmt}/{prov}/{name} already exists"));
    }
    let installer_id = random_hex();
    let registration_token = random_hex();
    let ts = now();
    let mut meta = json!({
        "uid": new_uid(),
        "creationTime": ts,
        "updateTime": ts,
        "resourceVersion": "1",
        "generation": "1",
        "labels": meta_in.get("labels").cloned().filter(Value::is_object).unwrap_or_else(|| json!({})),
        "annotations": meta_in.get("annotations").cloned().filter(Value::is_object).unwrap_or_else(|| json!({})),
    });
    if let Some(d) = meta_in.get("description").and_then(Value::as_str) {
        meta["description"] = json!(d);
    }
    let cluster = json!({
        "fullName": {"orgId": state.opts.org_id, "managementClusterName": mgmt, "provisionerName": prov, "name": name},
        "meta": meta,
        "spec": spec,
        "status": {
            "phase": "PENDING",
            "health": "HEALTH_UNSPECIFIED",
            "type": "ATTACHED",
            "installerLink": format!("{}/installer?id={installer_id}&source=attach", state.url),
            "conditions": {},
        },
    });
    db.clusters.insert(
        key,
        Record {
            cluster: cluster.clone(),
            installer_id,
            registration_token,
            detach_gets_left: None,
        },
    );
    ok_json(json!({"cluster": cluster}))
}

async fn list_clusters(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = check_auth(&state, &headers) {
        return r.into_response();
    }
    let db = state.db();
    let filter = |field: &str| {
        q.get(&format!("searchScope.{field}"))
            .filter(|s| !s.is_empty() && s.as_str() != "*")
    };
    let clusters: Vec<Value> = db
        .clusters
        .iter()
        .filter(|(k, _)| filter("managementClusterName").is_none_or(|m| *m == k.0))
        .filter(|(k, _)| filter("provisionerName").is_none_or(|p| *p == k.1))
        .filter(|(k, _)| filter("name").is_none_or(|n| *n == k.2))
        .map(|(_, r)| r.cluster.clone())
        .collect();
    let total = clusters.len().to_string();
    ok_json(json!({"clusters": clusters, "totalCount": total}))
}

async fn get_cluster(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = check_auth(&state, &headers) {
        return r.into_response();
    }
    let key = key_from_query(&name, &q);
    let mut db = state.db();
    let Some(rec) = db.clusters.get_mut(&key) else {
        return grpc_error(
            5,
            format!("cluster {}/{}/{} not found", key.0, key.1, key.2),
        );
    };
    let left = rec.detach_gets_left;
    if left.is_some() && state.is_stuck(&key.2) {
        return ok_json(json!({"cluster": rec.cluster}));
    }
    match left {
        Some(0) => {
            db.clusters.remove(&key);
            grpc_error(
                5,
                format!("cluster {}/{}/{} not found", key.0, key.1, key.2),
            )
        }
        Some(n) => {
            rec.detach_gets_left = Some(n - 1);
            ok_json(json!({"cluster": rec.cluster}))
        }
        None => ok_json(json!({"cluster": rec.cluster})),
    }
}

async fn update_cluster(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Err(r) = check_auth(&state, &headers) {
        return r.into_response();
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let Some(req) = body.get("cluster").filter(|c| c.is_object()) else {
        return grpc_error(3, "request body must be {\"cluster\":{…}}");
    };
    let mut key = key_from_query(&name, &q);
    if let Some(m) =
        str_field(req, &["fullName", "managementClusterName"]).filter(|s| !s.is_empty())
    {
        key.0 = m.to_string();
    }
    if let Some(p) = str_field(req, &["fullName", "provisionerName"]).filter(|s| !s.is_empty()) {
        key.1 = p.to_string();
    }
    if let Some(n) = str_field(req, &["fullName", "name"]).filter(|s| !s.is_empty()) {
        if n != key.2 {
            return grpc_error(
                3,
                format!(
                    "fullName.name {n:?} does not match the path's cluster name {:?}",
                    key.2
                ),
            );
        }
    }
    let spec_in = match req.get("spec") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            let mut m = m.clone();
            if m.get("clusterGroupName")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                m.insert("clusterGroupName".into(), json!("default"));
            }
            Some(m)
        }
        Some(_) => return grpc_error(3, "cluster.spec must be an object"),
    };
    if let Some(spec) = &spec_in {
        let group = spec
            .get("clusterGroupName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Err(e) = state.check_group(group) {
            return e.into_response();
        }
    }
    let mut db = state.db();
    let Some(rec) = db.clusters.get_mut(&key) else {
        return grpc_error(
            5,
            format!("cluster {}/{}/{} not found", key.0, key.1, key.2),
        );
    };
    let meta_in = req.get("meta").cloned().unwrap_or_else(|| json!({}));
    if let Some(want) = meta_in.get("resourceVersion").filter(|v| !v.is_null()) {
        let want = match want {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let have = str_field(&rec.cluster, &["meta", "resourceVersion"])
            .unwrap_or("")
            .to_string();
        if want != have {
            return grpc_error(
                10,
                format!(
                    "cluster {}/{}/{} was modified: meta.resourceVersion is {have}, the request has {want}; GET it again and retry",
                    key.0, key.1, key.2
                ),
            );
        }
    }
    {
        let meta = ensure_object(&mut rec.cluster, "meta");
        match meta_in.get("description").and_then(Value::as_str) {
            Some(d) if !d.is_empty() => {
                meta.insert("description".into(), json!(d));
            }
            _ => {
                meta.remove("description");
            }
        }
        for field in ["labels", "annotations"] {
            let v = meta_in
                .get(field)
                .cloned()
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            meta.insert(field.into(), v);
        }
    }
    let mut spec_changed = false;
    if let Some(spec_in) = spec_in {
        let spec = ensure_object(&mut rec.cluster, "spec");
        if *spec != spec_in {
            *spec = spec_in;
            spec_changed = true;
        }
    }
    touch(&mut rec.cluster, spec_changed);
    ok_json(json!({"cluster": rec.cluster}))
}

async fn delete_cluster(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = check_auth(&state, &headers) {
        return r.into_response();
    }
    let key = key_from_query(&name, &q);
    let force = q
        .get("force")
        .is_some_and(|f| f.eq_ignore_ascii_case("true"));
    let mut db = state.db();
    if force {
        return match db.clusters.remove(&key) {
            Some(_) => ok_json(json!({})),
            None => grpc_error(
                5,
                format!("cluster {}/{}/{} not found", key.0, key.1, key.2),
            ),
        };
    }
    let Some(rec) = db.clusters.get_mut(&key) else {
        return grpc_error(
            5,
            format!("cluster {}/{}/{} not found", key.0, key.1, key.2),
        );
    };
    if rec.detach_gets_left.is_none() {
        let status = ensure_object(&mut rec.cluster, "status");
        status.insert("phase".into(), json!("DETACHING"));
        touch(&mut rec.cluster, false);
        // The next GET still shows DETACHING; the one after answers 404 (one tick per GET).
        rec.detach_gets_left = Some(1);
    }
    ok_json(json!({}))
}

async fn post_cluster_action(
    State(state): State<Arc<Shared>>,
    Path(name_action): Path<String>,
    body: Bytes,
) -> Response {
    match name_action.split_once(':') {
        Some((name, "agentconnect")) => agent_connect(state, name.to_string(), body).await,
        _ => grpc_error(
            12,
            format!("method POST not supported on /v1alpha1/clusters/{name_action}"),
        ),
    }
}

/// Emulator-private: the simulated cluster agent's outbound connection.
async fn agent_connect(state: Arc<Shared>, name: String, body: Bytes) -> Response {
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let mgmt = str_field(&body, &["fullName", "managementClusterName"])
        .filter(|s| !s.is_empty())
        .unwrap_or("attached");
    let prov = str_field(&body, &["fullName", "provisionerName"])
        .filter(|s| !s.is_empty())
        .unwrap_or("attached");
    let key: ClusterKey = (mgmt.to_string(), prov.to_string(), name);
    let presented = str_field(&body, &["registrationToken"])
        .unwrap_or("")
        .to_string();
    let kube_version = str_field(&body, &["kubeServerVersion"])
        .unwrap_or("v1.23.8+vmware.2")
        .to_string();
    let node_count = match body.get("nodeCount") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "1".to_string(),
    };
    {
        let db = state.db();
        let Some(rec) = db.clusters.get(&key) else {
            return grpc_error(
                5,
                format!("cluster {}/{}/{} not found", key.0, key.1, key.2),
            );
        };
        if presented.is_empty() || presented != rec.registration_token {
            return grpc_error(7, "registration token is invalid for this cluster");
        }
    }
    let delay = state.opts.agent_connect_delay;
    let connect = move |state: &Shared| {
        let mut db = state.db();
        let Some(rec) = db.clusters.get_mut(&key) else {
            return;
        };
        if rec.detach_gets_left.is_some() {
            return;
        }
        let ts = now();
        let health = state
            .connect_health
            .lock()
            .ok()
            .and_then(|m| m.get(&key.2).cloned())
            .unwrap_or_else(|| "HEALTHY".to_string());
        let scheduler = if health == "HEALTHY" {
            json!({"name": "scheduler", "health": "HEALTHY", "message": "ok"})
        } else {
            json!({"name": "scheduler", "health": health, "message": "scheduler is degraded (emulated)"})
        };
        let status = ensure_object(&mut rec.cluster, "status");
        status.insert("phase".into(), json!("READY"));
        status.insert("health".into(), json!(health));
        status.insert("kubeServerVersion".into(), json!(kube_version));
        status.insert("nodeCount".into(), json!(node_count));
        status.insert("infrastructureProvider".into(), json!("AWS_EC2"));
        status.insert(
            "kubernetesProvider".into(),
            json!({"type": "VMWARE_TANZU_KUBERNETES_GRID", "version": kube_version}),
        );
        status.insert(
            "healthDetails".into(),
            json!({
                "message": if health == "HEALTHY" { "Cluster is healthy" } else { "Cluster is degraded" },
                "timestamp": ts,
                "controllerManagerHealth": {"name": "controller-manager", "health": "HEALTHY", "message": "ok"},
                "schedulerHealth": scheduler,
                "etcdHealth": [{"name": "etcd-0", "health": "HEALTHY", "message": "ok"}],
            }),
        );
        ensure_object_in(status, "conditions").insert(
            "Agent-READY".into(),
            json!({
                "type": "Agent-READY",
                "status": "TRUE",
                "severity": "INFO",
                "reason": "AgentConnected",
                "message": "cluster is connected to TMC and healthy",
                "lastTransitionTime": ts,
            }),
        );
        touch(&mut rec.cluster, false);
    };
    if delay.is_zero() {
        connect(&state);
    } else {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            connect(&state);
        });
    }
    ok_json(json!({}))
}

async fn cluster_manifest(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = check_auth(&state, &headers) {
        return r.into_response();
    }
    let key = key_from_query(&name, &q);
    let db = state.db();
    match db.clusters.get(&key) {
        Some(rec) => ok_json(json!({"manifest": render_installer(&state, &key, rec)})),
        None => grpc_error(
            5,
            format!("cluster {}/{}/{} not found", key.0, key.1, key.2),
        ),
    }
}

fn render_installer(state: &Shared, key: &ClusterKey, rec: &Record) -> String {
    installer::render(&installer::InstallerParams {
        tmc_url: &state.url,
        org_id: &state.opts.org_id,
        cluster_name: &key.2,
        management_cluster_name: &key.0,
        provisioner_name: &key.1,
        uid: str_field(&rec.cluster, &["meta", "uid"]).unwrap_or(""),
        registration_token: &rec.registration_token,
    })
}

async fn installer(
    State(state): State<Arc<Shared>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let id = q.get("id").map(String::as_str).unwrap_or("");
    let db = state.db();
    let found = db
        .clusters
        .iter()
        .find(|(_, r)| !id.is_empty() && r.installer_id == id);
    match found {
        Some((key, rec)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/yaml")],
            render_installer(&state, key, rec),
        )
            .into_response(),
        None => grpc_error(5, "installer not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("team-a-prod"));
        assert!(valid_name("a"));
        assert!(!valid_name(""));
        assert!(!valid_name("-a"));
        assert!(!valid_name("a-"));
        assert!(!valid_name("Team"));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn uid_shape() {
        let u = new_uid();
        assert!(u.starts_with("c:01"));
        assert_eq!(u.len(), 28);
    }
}

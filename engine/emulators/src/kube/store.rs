//! The per-cluster object store: types, objects, resourceVersion counter, event log, write audit,
//! and every write operation with API-server semantics (shared by HTTP handlers and the direct API).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::fields::{self, ManagedEntry};
use super::schema;
use super::select::{FieldSelector, LabelSelector};
use super::{ChangeEvent, Gvr, ResourceType, WriteRecord};

/// How many watch events each cluster keeps for resuming watches from a resourceVersion.
pub(crate) const EVENT_WINDOW: usize = 1000;

/// An API failure, rendered as a `Status` object over HTTP.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    /// A failure with an explicit code and reason (admission webhooks choose their own).
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: json!({}),
        }
    }
    fn with_details(mut self, gvr: &Gvr, name: &str) -> Self {
        let mut d = Map::new();
        if !name.is_empty() {
            d.insert("name".into(), json!(name));
        }
        if !gvr.group.is_empty() {
            d.insert("group".into(), json!(gvr.group));
        }
        d.insert("kind".into(), json!(gvr.plural));
        self.details = Value::Object(d);
        self
    }
    /// Adds `details.causes` (`[{reason, message, field}]`) and the object's name and kind.
    pub(crate) fn with_causes(mut self, gvr: &Gvr, name: &str, causes: Vec<Value>) -> Self {
        self = self.with_details(gvr, name);
        if !causes.is_empty() {
            if let Some(d) = self.details.as_object_mut() {
                d.insert("causes".into(), Value::Array(causes));
            }
        }
        self
    }
    /// 404 NotFound for an object.
    pub(crate) fn not_found(gvr: &Gvr, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource_label(gvr)),
        )
        .with_details(gvr, name)
    }
    /// 404 for an unknown resource type or path.
    pub(crate) fn no_resource() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
    /// 400 BadRequest.
    pub(crate) fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }
    /// 422 Invalid.
    pub(crate) fn invalid(gvr: &Gvr, name: &str, msg: impl Into<String>) -> Self {
        Self::new(422, "Invalid", msg).with_details(gvr, name)
    }
    /// 409 Conflict.
    pub(crate) fn conflict(gvr: &Gvr, name: &str, msg: impl Into<String>) -> Self {
        Self::new(409, "Conflict", msg).with_details(gvr, name)
    }
    /// 409 Conflict for a failed DELETE precondition, worded as the API server words it: the
    /// storage layer's `InvalidObjError` (`k8s.io/apiserver/pkg/storage` `Preconditions.Check`)
    /// wrapped by `InterpretDeleteError` into `NewConflict`. `field` is `UID` or
    /// `ResourceVersion`.
    pub(crate) fn precondition_failed(
        gvr: &Gvr,
        ns: Option<&str>,
        name: &str,
        field: &str,
        wanted: &str,
        actual: &str,
    ) -> Self {
        let mut key = String::from("/registry/");
        if !gvr.group.is_empty() {
            key.push_str(&gvr.group);
            key.push('/');
        }
        key.push_str(&gvr.plural);
        if let Some(ns) = ns {
            key.push('/');
            key.push_str(ns);
        }
        key.push('/');
        key.push_str(name);
        Self::conflict(
            gvr,
            name,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": StorageError: invalid object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {field} in precondition: {wanted}, {field} in object meta: {actual}",
                resource_label(gvr)
            ),
        )
    }
    /// 401 Unauthorized.
    pub(crate) fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    /// 405 MethodNotAllowed.
    pub(crate) fn method_not_allowed(msg: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", msg)
    }
    /// 410 Expired (used in watch ERROR events).
    pub(crate) fn expired(msg: impl Into<String>) -> Self {
        Self::new(410, "Expired", msg)
    }
    /// The `Status` JSON body.
    pub(crate) fn status_json(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        });
        if self.reason.is_empty() {
            if let Some(m) = v.as_object_mut() {
                m.remove("reason");
            }
        }
        v
    }
}

/// `configmaps` or `clusters.cluster.x-k8s.io`, as used in API server messages.
fn resource_label(gvr: &Gvr) -> String {
    if gvr.group.is_empty() {
        gvr.plural.clone()
    } else {
        format!("{}.{}", gvr.plural, gvr.group)
    }
}

/// Current time as RFC 3339 with seconds precision (`2025-01-02T03:04:05Z`).
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Which patch a PATCH request carries (by Content-Type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

/// One retained watch event.
#[derive(Clone, Debug)]
pub(crate) struct StoredEvent {
    pub rv: u64,
    pub kind: &'static str,
    pub gvr: Gvr,
    pub object: Arc<Value>,
}

/// What the writer is, whether the write is a dry run, and how it handles unknown fields.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteCtx {
    pub manager: String,
    pub dry_run: bool,
    /// `?fieldValidation=` of an HTTP write; `None` for the direct API (not checked).
    pub validation: Option<FieldValidation>,
    /// Paths of fields the request body repeated (JSON bodies of POST and PUT).
    pub duplicates: Vec<String>,
    /// What the response reports in `Warning` headers (`fieldValidation=Warn`).
    pub warnings: std::cell::RefCell<Vec<String>>,
}

/// How a write treats fields its type's schema does not declare, and duplicate fields
/// (`?fieldValidation=`, KEP-2885). Unknown fields are dropped from the stored object in
/// every mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning: 299 - "unknown field \"…\""` header per field.
    /// The API server's default when the parameter is absent (`fieldValidation()` in
    /// `k8s.io/apiserver/pkg/endpoints/handlers/rest.go`: "Warn (default)").
    Warn,
    /// Refuse the write: 400 BadRequest `strict decoding error: unknown field "spec.foo"`.
    Strict,
}

impl FieldValidation {
    /// Parses `?fieldValidation=` (absent or empty: [`FieldValidation::Warn`]).
    ///
    /// Errors: any other value is the API server's 400 for an unsupported directive.
    pub(crate) fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v.unwrap_or("") {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Which handler decodes the body, for the wording of a strict decoding error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decoding {
    /// POST and PUT: the body is decoded as an object of the kind.
    Object,
    /// Merge, JSON and strategic merge patches: the patched object is decoded.
    Patch,
}

/// An admission step (mutating then validating webhooks) run on every write of the main resource
/// of one type: create, update, every kind of patch and server-side apply, dry runs included, never
/// `/status` writes nor writes to an object being deleted.
pub(crate) trait Admission: Send + Sync {
    /// `old` is the stored object (`None` on create), `obj` the candidate with `metadata.name` and
    /// (for namespaced types) `metadata.namespace` set. Returns the object to store, or the denial.
    fn admit(&self, st: &State, old: Option<&Value>, obj: Value) -> Result<Value, ApiError>;
}

/// Key of a stored object: type, namespace ("" when cluster-scoped), name.
type Key = (Gvr, String, String);

/// Key of the label index: type, label key, label value.
type LabelKey = (Gvr, String, String);

/// The state of one emulated cluster.
pub(crate) struct State {
    pub types: BTreeMap<Gvr, ResourceType>,
    /// Written only through `put` and `take`, which keep `by_label` in step. Shared: a list,
    /// a watch event and the event log hand out the same allocation instead of deep copies.
    objects: BTreeMap<Key, Arc<Value>>,
    /// `(namespace, name)` of the objects of a type carrying a label with a value: a LIST with
    /// a `key=value` label selector reads its candidates here instead of scanning the type
    /// (one cluster's Machines among a fleet's).
    by_label: BTreeMap<LabelKey, BTreeSet<(String, String)>>,
    pub rv: u64,
    pub log: VecDeque<StoredEvent>,
    /// Every event with rv > `log_floor` is still in `log`.
    pub log_floor: u64,
    pub writes: Vec<WriteRecord>,
    pub tx: broadcast::Sender<ChangeEvent>,
    /// Admission per resource type (see [`Admission`]).
    pub admission: BTreeMap<Gvr, std::sync::Arc<dyn Admission>>,
}

/// Parses an object body that may be JSON or YAML; 400 on anything else or a non-object.
pub(crate) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("request body is not UTF-8"))?;
            serde_yaml::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?
        }
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "request body must be a JSON or YAML object",
        ));
    }
    Ok(v)
}

fn meta(obj: &Value, key: &str) -> Option<String> {
    obj.get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let m = obj.as_object_mut().expect("object");
    let md = m.entry("metadata").or_insert_with(|| json!({}));
    if !md.is_object() {
        *md = json!({});
    }
    md.as_object_mut().expect("object")
}

/// Moves `stringData` of a Secret into base64 `data` (as the API server does).
fn fold_string_data(gvr: &Gvr, obj: &mut Value) {
    if !(gvr.group.is_empty() && gvr.plural == "secrets") {
        return;
    }
    let Some(m) = obj.as_object_mut() else { return };
    let Some(sd) = m.remove("stringData") else {
        return;
    };
    let Some(sd) = sd.as_object() else { return };
    let data = m.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    let data = data.as_object_mut().expect("object");
    for (k, v) in sd {
        let s = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        data.insert(
            k.clone(),
            json!(base64::engine::general_purpose::STANDARD.encode(s)),
        );
    }
}

/// The object without metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// The fields a write to the main resource (`status == false`) or `/status` may change.
fn restrict(rt: &ResourceType, tracked: Value, status: bool) -> Value {
    if !rt.status_subresource {
        return tracked;
    }
    let mut m = tracked.as_object().cloned().unwrap_or_default();
    if status {
        let mut out = Map::new();
        if let Some(s) = m.remove("status") {
            out.insert("status".into(), s);
        }
        Value::Object(out)
    } else {
        m.remove("status");
        Value::Object(m)
    }
}

impl State {
    /// An empty store.
    pub(crate) fn new(tx: broadcast::Sender<ChangeEvent>) -> Self {
        State {
            types: BTreeMap::new(),
            objects: BTreeMap::new(),
            by_label: BTreeMap::new(),
            rv: 0,
            log: VecDeque::new(),
            log_floor: 0,
            writes: Vec::new(),
            tx,
            admission: BTreeMap::new(),
        }
    }

    /// Stores `obj` at `key`, keeping the label index in step.
    fn put(&mut self, key: Key, obj: Arc<Value>) {
        self.take(&key);
        self.index(&key, &obj, true);
        self.objects.insert(key, obj);
    }

    /// Removes the object at `key`, keeping the label index in step.
    fn take(&mut self, key: &Key) -> Option<Arc<Value>> {
        let old = self.objects.remove(key)?;
        self.index(key, &old, false);
        Some(old)
    }

    /// Adds (`add`) or removes the label index entries of `obj` stored at `key`.
    fn index(&mut self, key: &Key, obj: &Value, add: bool) {
        let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) else {
            return;
        };
        let (gvr, ns, name) = key;
        for (k, v) in labels {
            let Some(v) = v.as_str() else { continue };
            let lk = (gvr.clone(), k.clone(), v.to_string());
            if add {
                self.by_label
                    .entry(lk)
                    .or_default()
                    .insert((ns.clone(), name.clone()));
            } else if let Some(set) = self.by_label.get_mut(&lk) {
                set.remove(&(ns.clone(), name.clone()));
                if set.is_empty() {
                    self.by_label.remove(&lk);
                }
            }
        }
    }

    /// Every stored object, in key order (type, namespace, name).
    pub(crate) fn objects(&self) -> &BTreeMap<Key, Arc<Value>> {
        &self.objects
    }

    /// The registered type or 404.
    pub(crate) fn rt(&self, gvr: &Gvr) -> Result<ResourceType, ApiError> {
        self.types
            .get(gvr)
            .cloned()
            .ok_or_else(ApiError::no_resource)
    }

    fn key(rt: &ResourceType, ns: Option<&str>, name: &str) -> Key {
        let ns = if rt.namespaced {
            ns.unwrap_or("").to_string()
        } else {
            String::new()
        };
        (rt.gvr.clone(), ns, name.to_string())
    }

    fn emit(&mut self, kind: &'static str, gvr: &Gvr, object: &Arc<Value>) {
        self.log.push_back(StoredEvent {
            rv: self.rv,
            kind,
            gvr: gvr.clone(),
            object: object.clone(),
        });
        while self.log.len() > EVENT_WINDOW {
            if let Some(e) = self.log.pop_front() {
                self.log_floor = e.rv;
            }
        }
        let _ = self.tx.send(ChangeEvent {
            kind: kind.to_string(),
            gvr: gvr.clone(),
            object: object.clone(),
        });
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects.contains_key(&(
            Gvr::new("", "v1", "namespaces"),
            String::new(),
            ns.to_string(),
        ))
    }

    /// Appends to the write audit (one field of [`WriteRecord`] per argument).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn audit(
        &mut self,
        verb: &str,
        gvr: &Gvr,
        ns: Option<&str>,
        name: &str,
        fm: Option<&str>,
        changed: bool,
        dry_run: bool,
    ) {
        self.writes.push(WriteRecord {
            verb: verb.to_string(),
            gvr: gvr.clone(),
            namespace: ns.map(str::to_string),
            name: name.to_string(),
            field_manager: fm.map(str::to_string),
            changed,
            dry_run,
        });
    }

    /// One object (shared with the store: no copy).
    pub(crate) fn get(
        &self,
        gvr: &Gvr,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = self.rt(gvr)?;
        self.objects
            .get(&Self::key(&rt, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(gvr, name))
    }

    /// Objects of a type, in one namespace (`Some`) or all (`None`), sorted by namespace and
    /// name; shared with the store (no copies).
    pub(crate) fn list(
        &self,
        gvr: &Gvr,
        ns: Option<&str>,
        labels: Option<&LabelSelector>,
        fsel: Option<&FieldSelector>,
    ) -> Result<Vec<Arc<Value>>, ApiError> {
        let rt = self.rt(gvr)?;
        let ns = if rt.namespaced { ns } else { None };
        let matches =
            |o: &Value| labels.is_none_or(|l| l.matches(o)) && fsel.is_none_or(|f| f.matches(o));
        if let Some((k, v)) = labels.and_then(LabelSelector::equality) {
            let lk = (gvr.clone(), k.to_string(), v.to_string());
            return Ok(self
                .by_label
                .get(&lk)
                .into_iter()
                .flatten()
                .filter(|(n, _)| ns.is_none_or(|want| n == want))
                .filter_map(|(n, name)| self.objects.get(&(gvr.clone(), n.clone(), name.clone())))
                .filter(|o| matches(o))
                .cloned()
                .collect());
        }
        Ok(self
            .objects
            .range((gvr.clone(), String::new(), String::new())..)
            .take_while(|((g, _, _), _)| g == gvr)
            .filter(|((_, n, _), _)| ns.is_none_or(|want| n == want))
            .filter(|(_, o)| {
                labels.is_none_or(|l| l.matches(o)) && fsel.is_none_or(|f| f.matches(o))
            })
            .map(|(_, o)| o.clone())
            .collect())
    }

    /// Runs the admission registered for the type on a main-resource write (`status == false`) of
    /// an object not being deleted; the candidate gets the key's name and namespace first.
    fn admit(
        &self,
        rt: &ResourceType,
        key: &Key,
        old: Option<&Value>,
        mut cand: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let Some(hook) = self.admission.get(&rt.gvr).cloned() else {
            return Ok(cand);
        };
        let deleting = |v: &Value| {
            v.pointer("/metadata/deletionTimestamp")
                .is_some_and(|d| !d.is_null())
        };
        if status || deleting(&cand) || old.is_some_and(deleting) {
            return Ok(cand);
        }
        {
            let md = meta_mut(&mut cand);
            md.insert("name".into(), json!(key.2));
            if rt.namespaced {
                md.insert("namespace".into(), json!(key.1));
            }
        }
        hook.admit(self, old, cand)
    }

    /// Stores `cand` (a full object) as the new state of `key` after `old`, with API-server
    /// bookkeeping. Returns the stored object and whether anything changed.
    fn finalize(
        &mut self,
        rt: &ResourceType,
        key: Key,
        old: Option<&Value>,
        mut cand: Value,
        entries: Vec<ManagedEntry>,
        dry_run: bool,
    ) -> (Value, bool) {
        fold_string_data(&rt.gvr, &mut cand);
        if let Some(m) = cand.as_object_mut() {
            m.insert("apiVersion".into(), json!(rt.api_version()));
            m.insert("kind".into(), json!(rt.kind));
        }
        {
            let md = meta_mut(&mut cand);
            md.insert("name".into(), json!(key.2));
            if rt.namespaced {
                md.insert("namespace".into(), json!(key.1));
            } else {
                md.remove("namespace");
            }
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
                "managedFields",
                "selfLink",
            ] {
                md.remove(k);
            }
            match old {
                Some(o) => {
                    for k in [
                        "uid",
                        "creationTimestamp",
                        "deletionTimestamp",
                        "deletionGracePeriodSeconds",
                        "generation",
                    ] {
                        if let Some(v) = o.get("metadata").and_then(|m| m.get(k)) {
                            md.insert(k.into(), v.clone());
                        }
                    }
                }
                None => {
                    md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
                    md.insert("creationTimestamp".into(), json!(now()));
                    md.insert("generation".into(), json!(1));
                }
            }
            if !entries.is_empty() {
                md.insert("managedFields".into(), fields::render_managed(&entries));
            }
        }
        if let Some(o) = old {
            let same_content = fields::tracked_view(o) == fields::tracked_view(&cand);
            if same_content && fields::same_ownership(&fields::parse_managed(o), &entries) {
                return (o.clone(), false);
            }
            if spec_part(o) != spec_part(&cand) {
                let g = o
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                meta_mut(&mut cand).insert("generation".into(), json!(g + 1));
            }
        }
        let next_rv = self.rv + 1;
        meta_mut(&mut cand).insert("resourceVersion".into(), json!(next_rv.to_string()));
        if dry_run {
            return (cand, true);
        }
        self.rv = next_rv;
        let deleting = cand
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null());
        let no_finalizers = cand
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        let shared = Arc::new(cand);
        if deleting && no_finalizers {
            self.take(&key);
            self.emit("DELETED", &rt.gvr, &shared);
            self.after_removal(rt, &shared);
        } else {
            let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
            self.put(key, shared.clone());
            self.emit(kind, &rt.gvr, &shared);
            if rt.gvr == crd_gvr() {
                self.register_crd(&shared);
            }
        }
        (Arc::unwrap_or_clone(shared), true)
    }

    /// The schema objects of `rt` are checked against: a built-in kind's, or the
    /// `openAPIV3Schema` of the CRD object declaring the type (none for types registered
    /// without one).
    fn type_schema(&self, rt: &ResourceType) -> Option<schema::TypeSchema> {
        if let Some(s) = schema::TypeSchema::builtin(&rt.gvr) {
            return Some(s);
        }
        let name = format!("{}.{}", rt.gvr.plural, rt.gvr.group);
        let crd = self.objects.get(&(crd_gvr(), String::new(), name))?;
        let version = crd
            .pointer("/spec/versions")?
            .as_array()?
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(rt.gvr.version.as_str()))?;
        schema::TypeSchema::custom(version.pointer("/schema/openAPIV3Schema")?)
    }

    /// The `openAPIV3Schema` of every served custom resource version whose CRD object declares
    /// one, by group/version/plural.
    pub(crate) fn crd_schemas(&self) -> BTreeMap<Gvr, Value> {
        let mut out = BTreeMap::new();
        for ((_, _, _), crd) in self
            .objects
            .range((crd_gvr(), String::new(), String::new())..)
            .take_while(|((g, _, _), _)| *g == crd_gvr())
        {
            let types = crd_types(crd);
            for t in types {
                let schema = crd
                    .pointer("/spec/versions")
                    .and_then(Value::as_array)
                    .and_then(|vs| {
                        vs.iter().find(|v| {
                            v.get("name").and_then(Value::as_str) == Some(t.gvr.version.as_str())
                        })
                    })
                    .and_then(|v| v.pointer("/schema/openAPIV3Schema"));
                if let Some(s) = schema {
                    out.insert(t.gvr, s.clone());
                }
            }
        }
        out
    }

    /// Drops the fields of `obj` that `rt`'s schema does not declare and handles them (and
    /// `ctx.duplicates`) as `ctx.validation` says: nothing more under `Ignore`, warnings under
    /// `Warn`, a 400 under `Strict` worded as the API server's strict decoding errors
    /// (`ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error:
    /// unknown field "spec.foo"` for POST/PUT, `strict decoding error: …` for patches). Fields
    /// `old` already had (written through the direct API) are dropped without a report.
    fn check_fields(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
        ctx: &WriteCtx,
        how: Decoding,
    ) -> Result<(), ApiError> {
        let Some(mode) = ctx.validation else {
            return Ok(());
        };
        let mut unknown = match self.type_schema(rt) {
            Some(s) => {
                let before = old
                    .map(|o| schema::prune(&s, &mut o.clone()))
                    .unwrap_or_default();
                let mut u = schema::prune(&s, obj);
                u.retain(|p| !before.contains(p));
                u
            }
            None => Vec::new(),
        };
        let mut problems: Vec<String> = std::mem::take(&mut unknown)
            .into_iter()
            .map(|p| format!("unknown field \"{p}\""))
            .collect();
        if how == Decoding::Object {
            problems.extend(
                ctx.duplicates
                    .iter()
                    .map(|p| format!("duplicate field \"{p}\"")),
            );
        }
        if problems.is_empty() {
            return Ok(());
        }
        match mode {
            FieldValidation::Ignore => Ok(()),
            FieldValidation::Warn => {
                ctx.warnings.borrow_mut().extend(problems);
                Ok(())
            }
            FieldValidation::Strict => {
                let e = format!("strict decoding error: {}", problems.join(", "));
                Err(ApiError::bad_request(match how {
                    Decoding::Object => format!(
                        "{k} in version \"{v}\" cannot be handled as a {k}: {e}",
                        k = rt.kind,
                        v = rt.gvr.version
                    ),
                    Decoding::Patch => e,
                }))
            }
        }
    }

    /// Server-side apply's check of the applied configuration: a field its type's schema does
    /// not declare fails the apply whatever `fieldValidation` says, with the API server's
    /// 500 (`failed to create typed patch object (ns/name; group/version, Kind=K): .spec.foo:
    /// field not declared in schema`; structured-merge-diff's typed conversion,
    /// kubernetes/kubernetes#122480 and #139253).
    fn check_applied(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        cfg: &Value,
        ctx: &WriteCtx,
    ) -> Result<(), ApiError> {
        if ctx.validation.is_none() {
            return Ok(());
        }
        let Some(s) = self.type_schema(rt) else {
            return Ok(());
        };
        let unknown = schema::prune(&s, &mut cfg.clone());
        if unknown.is_empty() {
            return Ok(());
        }
        let errs: Vec<String> = unknown
            .iter()
            .map(|p| format!(".{p}: field not declared in schema"))
            .collect();
        let errs = match errs.as_slice() {
            [one] => one.clone(),
            _ => format!("errors:\n  {}", errs.join("\n  ")),
        };
        // `schema.GroupVersionKind.String()`: `/v1, Kind=ConfigMap` for the core group.
        let gv = format!("{}/{}", rt.gvr.group, rt.gvr.version);
        Err(ApiError::new(
            500,
            "",
            format!(
                "failed to create typed patch object ({}/{name}; {gv}, Kind={}): {errs}",
                ns.unwrap_or(""),
                rt.kind
            ),
        ))
    }

    /// POST: creates `obj` (namespace from `ns` or the body; name from `metadata.name` or
    /// `metadata.generateName`).
    pub(crate) fn create(
        &mut self,
        gvr: &Gvr,
        ns: Option<&str>,
        mut obj: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let rt = self.rt(gvr)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request("request body must be an object"));
        }
        self.check_fields(&rt, &mut obj, None, ctx, Decoding::Object)?;
        let body_ns = meta(&obj, "namespace").filter(|s| !s.is_empty());
        let ns: Option<String> = if rt.namespaced {
            match (ns, body_ns) {
                (Some(p), Some(b)) if p != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                (Some(p), _) => Some(p.to_string()),
                (None, Some(b)) => Some(b),
                (None, None) => Some("default".to_string()),
            }
        } else {
            None
        };
        let name = match meta(&obj, "name").filter(|s| !s.is_empty()) {
            Some(n) => n,
            None => match meta(&obj, "generateName").filter(|s| !s.is_empty()) {
                Some(g) => format!("{g}{}", &uuid::Uuid::new_v4().simple().to_string()[..5]),
                None => {
                    return Err(ApiError::invalid(
                        gvr,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ))
                }
            },
        };
        if let Some(n) = &ns {
            if !self.namespace_exists(n) {
                return Err(ApiError::not_found(&Gvr::new("", "v1", "namespaces"), n));
            }
        }
        let key = Self::key(&rt, ns.as_deref(), &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", resource_label(gvr)),
            )
            .with_details(gvr, &name));
        }
        if rt.status_subresource {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        create_defaults(gvr, &mut obj);
        fold_string_data(gvr, &mut obj);
        let obj = self.admit(&rt, &key, None, obj, false)?;
        let mut entries = Vec::new();
        fields::record_update(
            &mut entries,
            &json!({}),
            &fields::tracked_view(&obj),
            &ctx.manager,
            None,
            &rt.api_version(),
            &now(),
        );
        let (v, _) = self.finalize(&rt, key, None, obj, entries, ctx.dry_run);
        Ok(v)
    }

    /// PUT of the main resource (`status == false`) or of `/status`.
    pub(crate) fn update(
        &mut self,
        gvr: &Gvr,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        status: bool,
        ctx: &WriteCtx,
    ) -> Result<(Value, bool), ApiError> {
        let rt = self.rt(gvr)?;
        if status && !rt.status_subresource {
            return Err(ApiError::no_resource());
        }
        if !body.is_object() {
            return Err(ApiError::bad_request("request body must be an object"));
        }
        let stored = self.objects.get(&Self::key(&rt, ns, name)).cloned();
        self.check_fields(&rt, &mut body, stored.as_deref(), ctx, Decoding::Object)?;
        if let Some(bn) = meta(&body, "name") {
            if bn != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({bn}) does not match the name on the URL ({name})"
                )));
            }
        }
        if rt.namespaced {
            if let (Some(bn), Some(p)) = (meta(&body, "namespace").filter(|s| !s.is_empty()), ns) {
                if bn != p {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        }
        let key = Self::key(&rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .map(|o| Value::clone(o))
            .ok_or_else(|| ApiError::not_found(gvr, name))?;
        self.check_rv(&rt, name, &old, &body)?;
        fold_string_data(gvr, &mut body);
        let cand = self.merge_scope(&rt, &old, body, status);
        let cand = self.admit(&rt, &key, Some(&old), cand, status)?;
        let mut entries = fields::parse_managed(&old);
        fields::record_update(
            &mut entries,
            &fields::tracked_view(&old),
            &fields::tracked_view(&cand),
            &ctx.manager,
            status.then_some("status"),
            &rt.api_version(),
            &now(),
        );
        Ok(self.finalize(&rt, key, Some(&old), cand, entries, ctx.dry_run))
    }

    /// Builds the candidate of a main-resource or status write from the written object `new`.
    fn merge_scope(&self, rt: &ResourceType, old: &Value, new: Value, status: bool) -> Value {
        if !rt.status_subresource {
            return new;
        }
        if status {
            let mut cand = old.clone();
            let m = cand.as_object_mut().expect("stored objects are objects");
            match new.get("status") {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
            cand
        } else {
            let mut cand = new;
            let m = cand.as_object_mut().expect("checked object");
            match old.get("status") {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
            cand
        }
    }

    fn check_rv(
        &self,
        rt: &ResourceType,
        name: &str,
        old: &Value,
        body: &Value,
    ) -> Result<(), ApiError> {
        if let Some(rv) = meta(body, "resourceVersion").filter(|s| !s.is_empty()) {
            if Some(rv) != meta(old, "resourceVersion") {
                return Err(ApiError::conflict(
                    &rt.gvr,
                    name,
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        resource_label(&rt.gvr)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// PATCH (merge, JSON, strategic-as-merge, apply). Returns the object and whether it changed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch(
        &mut self,
        gvr: &Gvr,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        status: bool,
        force: bool,
        ctx: &WriteCtx,
    ) -> Result<(Value, bool), ApiError> {
        let rt = self.rt(gvr)?;
        if status && !rt.status_subresource {
            return Err(ApiError::no_resource());
        }
        if kind == PatchKind::Apply {
            let cfg = parse_body(body)?;
            return self.apply(&rt, ns, name, cfg, status, force, ctx);
        }
        let key = Self::key(&rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .map(|o| Value::clone(o))
            .ok_or_else(|| ApiError::not_found(gvr, name))?;
        let mut patched = old.clone();
        match kind {
            PatchKind::Json => {
                let p: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("error decoding JSON patch: {e}"))
                })?;
                json_patch::patch(&mut patched, &p.0).map_err(|e| {
                    ApiError::invalid(
                        gvr,
                        name,
                        format!("the JSON patch could not be applied: {e}"),
                    )
                })?;
            }
            _ => {
                let p: Value = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("error decoding merge patch: {e}"))
                })?;
                if !p.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                json_patch::merge(&mut patched, &p);
            }
        }
        if !patched.is_object() {
            return Err(ApiError::invalid(
                gvr,
                name,
                "the patch result is not an object",
            ));
        }
        self.check_fields(&rt, &mut patched, Some(&old), ctx, Decoding::Patch)?;
        self.check_rv(&rt, name, &old, &patched)?;
        fold_string_data(gvr, &mut patched);
        let cand = self.merge_scope(&rt, &old, patched, status);
        let cand = self.admit(&rt, &key, Some(&old), cand, status)?;
        let mut entries = fields::parse_managed(&old);
        fields::record_update(
            &mut entries,
            &fields::tracked_view(&old),
            &fields::tracked_view(&cand),
            &ctx.manager,
            status.then_some("status"),
            &rt.api_version(),
            &now(),
        );
        Ok(self.finalize(&rt, key, Some(&old), cand, entries, ctx.dry_run))
    }

    /// Server-side apply of `cfg` by `ctx.manager`.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut cfg: Value,
        status: bool,
        force: bool,
        ctx: &WriteCtx,
    ) -> Result<(Value, bool), ApiError> {
        let gvr = &rt.gvr;
        if let Some(av) = cfg.get("apiVersion").and_then(Value::as_str) {
            if av != rt.api_version() {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    rt.api_version()
                )));
            }
        }
        if let Some(k) = cfg.get("kind").and_then(Value::as_str) {
            if k != rt.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
        }
        if let Some(bn) = meta(&cfg, "name") {
            if bn != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({bn}) does not match the name on the URL ({name})"
                )));
            }
        }
        if rt.namespaced {
            if let (Some(bn), Some(p)) = (meta(&cfg, "namespace"), ns) {
                if bn != p {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        }
        self.check_applied(rt, ns, name, &cfg, ctx)?;
        fold_string_data(gvr, &mut cfg);
        let key = Self::key(rt, ns, name);
        let old = self.objects.get(&key).map(|o| Value::clone(o));
        if let Some(o) = &old {
            self.check_rv(rt, name, o, &cfg)?;
        }
        let config = restrict(rt, fields::tracked_view(&cfg), status);
        let sub = status.then_some("status");
        let now = now();
        match old {
            None => {
                if status {
                    return Err(ApiError::not_found(gvr, name));
                }
                if let Some(n) = ns.filter(|_| rt.namespaced) {
                    if !self.namespace_exists(n) {
                        return Err(ApiError::not_found(&Gvr::new("", "v1", "namespaces"), n));
                    }
                }
                if rt.namespaced && ns.is_none() {
                    return Err(ApiError::bad_request(
                        "a namespace is required to apply a namespaced object",
                    ));
                }
                let mut entries = Vec::new();
                let mut cand = fields::apply(
                    &mut entries,
                    &json!({}),
                    &config,
                    &ctx.manager,
                    None,
                    force,
                    &rt.api_version(),
                    &now,
                )
                .map_err(|c| apply_conflict(gvr, name, &c))?;
                create_defaults(gvr, &mut cand);
                let before = fields::tracked_view(&cand);
                let cand = self.admit(rt, &key, None, cand, false)?;
                fields::record_admission_of_apply(
                    &mut entries,
                    &before,
                    &fields::tracked_view(&cand),
                    &ctx.manager,
                    None,
                    &rt.api_version(),
                    &now,
                );
                let (v, changed) = self.finalize(rt, key, None, cand, entries, ctx.dry_run);
                Ok((v, changed))
            }
            Some(o) => {
                let mut entries = fields::parse_managed(&o);
                let live = fields::tracked_view(&o);
                let result = fields::apply(
                    &mut entries,
                    &live,
                    &config,
                    &ctx.manager,
                    sub,
                    force,
                    &rt.api_version(),
                    &now,
                )
                .map_err(|c| apply_conflict(gvr, name, &c))?;
                let before = result.clone();
                let result = self.admit(rt, &key, Some(&o), result, status)?;
                fields::record_admission_of_apply(
                    &mut entries,
                    &before,
                    &fields::tracked_view(&result),
                    &ctx.manager,
                    sub,
                    &rt.api_version(),
                    &now,
                );
                Ok(self.finalize(rt, key, Some(&o), result, entries, ctx.dry_run))
            }
        }
    }

    /// DELETE: with finalizers sets `deletionTimestamp` and keeps the object; otherwise removes it.
    /// Returns the object (its last state) and whether anything changed.
    pub(crate) fn delete(
        &mut self,
        gvr: &Gvr,
        ns: Option<&str>,
        name: &str,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        let rt = self.rt(gvr)?;
        let key = Self::key(&rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .map(|o| Value::clone(o))
            .ok_or_else(|| ApiError::not_found(gvr, name))?;
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null())
            {
                return Ok((old, false));
            }
            let mut cand = old.clone();
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let md = meta_mut(&mut cand);
            md.insert("deletionTimestamp".into(), json!(now()));
            md.insert("deletionGracePeriodSeconds".into(), json!(0));
            md.insert("generation".into(), json!(g + 1));
            let next = self.rv + 1;
            md.insert("resourceVersion".into(), json!(next.to_string()));
            if dry_run {
                return Ok((cand, true));
            }
            self.rv = next;
            let shared = Arc::new(cand);
            self.put(key, shared.clone());
            self.emit("MODIFIED", gvr, &shared);
            return Ok((Arc::unwrap_or_clone(shared), true));
        }
        let mut gone = old;
        let next = self.rv + 1;
        meta_mut(&mut gone).insert("resourceVersion".into(), json!(next.to_string()));
        if dry_run {
            return Ok((gone, true));
        }
        self.rv = next;
        self.take(&key);
        let gone = Arc::new(gone);
        self.emit("DELETED", gvr, &gone);
        self.after_removal(&rt, &gone);
        Ok((Arc::unwrap_or_clone(gone), true))
    }

    /// Cascades after an object is gone: a Namespace deletes its contents; a CRD unregisters its types.
    fn after_removal(&mut self, rt: &ResourceType, obj: &Value) {
        let name = meta(obj, "name").unwrap_or_default();
        if rt.gvr == Gvr::new("", "v1", "namespaces") {
            let keys: Vec<Key> = self
                .objects
                .keys()
                .filter(|(_, n, _)| *n == name)
                .cloned()
                .collect();
            for (g, n, nm) in keys {
                let _ = self.delete(&g, Some(&n), &nm, false);
            }
        } else if rt.gvr == crd_gvr() {
            for gvr in crd_types(obj).into_iter().map(|t| t.gvr) {
                self.types.remove(&gvr);
                let keys: Vec<Key> = self
                    .objects
                    .keys()
                    .filter(|(g, _, _)| *g == gvr)
                    .cloned()
                    .collect();
                for k in keys {
                    self.take(&k);
                }
            }
        }
    }

    /// Registers the served versions of a CustomResourceDefinition object.
    fn register_crd(&mut self, crd: &Value) {
        for t in crd_types(crd) {
            self.types.insert(t.gvr.clone(), t);
        }
    }
}

/// The 409 for apply conflicts.
fn apply_conflict(gvr: &Gvr, name: &str, c: &[fields::Conflict]) -> ApiError {
    let mut e = ApiError::conflict(gvr, name, fields::conflict_message(c));
    let causes: Vec<Value> = c
        .iter()
        .map(|c| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version), "field": fields::display_path(&c.path)})
        })
        .collect();
    e.details["causes"] = Value::Array(causes);
    e
}

/// What the API server (and its built-in controllers) add to a new object: a Namespace's
/// `kubernetes` finalizer and `Active` phase, a CRD's Established status, a Secret's `Opaque`
/// type.
fn create_defaults(gvr: &Gvr, obj: &mut Value) {
    if gvr == &Gvr::new("", "v1", "namespaces") {
        if let Some(m) = obj.as_object_mut() {
            let spec = m.entry("spec").or_insert_with(|| json!({}));
            if !spec.is_object() {
                *spec = json!({});
            }
            if spec.get("finalizers").is_none_or(Value::is_null) {
                spec["finalizers"] = json!(["kubernetes"]);
            }
            m.insert("status".into(), json!({"phase": "Active"}));
        }
    }
    if gvr == &crd_gvr() {
        crd_accept(obj);
    }
    // `SetDefaults_Secret`: a Secret without a type is `Opaque`.
    if gvr == &Gvr::new("", "v1", "secrets") {
        if let Some(m) = obj.as_object_mut() {
            if m.get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                m.insert("type".into(), json!("Opaque"));
            }
        }
    }
}

/// `apiextensions.k8s.io/v1 customresourcedefinitions`.
pub(crate) fn crd_gvr() -> Gvr {
    Gvr::new("apiextensions.k8s.io", "v1", "customresourcedefinitions")
}

/// Marks a new CRD as established (what the apiextensions controller does at once).
fn crd_accept(obj: &mut Value) {
    let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let t = now();
    let stored: Vec<Value> = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool).unwrap_or(false))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    if let Some(m) = obj.as_object_mut() {
        m.insert(
            "status".into(),
            json!({
                "acceptedNames": names,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
                ],
                "storedVersions": stored,
            }),
        );
    }
}

/// The resource types a CRD object declares (one per served version).
fn crd_types(crd: &Value) -> Vec<ResourceType> {
    let spec = crd.get("spec").cloned().unwrap_or(json!({}));
    let s = |p: &str| spec.pointer(p).and_then(Value::as_str).map(str::to_string);
    let (Some(group), Some(plural), Some(kind)) =
        (s("/group"), s("/names/plural"), s("/names/kind"))
    else {
        return Vec::new();
    };
    let namespaced = s("/scope").as_deref() != Some("Cluster");
    let short_names: Vec<String> = spec
        .pointer("/names/shortNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    spec.get("versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
                .filter_map(|v| {
                    let version = v.get("name")?.as_str()?;
                    Some(ResourceType {
                        gvr: Gvr::new(&group, version, &plural),
                        kind: kind.clone(),
                        namespaced,
                        status_subresource: v.pointer("/subresources/status").is_some(),
                        short_names: short_names.clone(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

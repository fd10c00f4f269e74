//! Admission of `clusters.cluster.x-k8s.io` on an emulated TKG 2.x management cluster
//! (tkg2-aws-class-based.md §4), in the real order:
//! 1. CAPI defaulting webhook `default.cluster.cluster.x-k8s.io` (CREATE, UPDATE): the class must
//!    exist **in the Cluster's namespace** (else 500 InternalError), undeclared variables are
//!    rejected (422), class variables with a top-level default are appended, nested defaults filled;
//! 2. cluster pause `clusterpause.mutating.vmware.com` (UPDATE; reinvoked after the resolver):
//!    a changed `run.tanzu.vmware.com/tkr` label pauses the Cluster;
//! 3. TKR resolver `tkr-resolver-cluster-webhook.tanzu.vmware.com`: label, `TKR_DATA`, MD
//!    overrides, `topology.version` ← Kubernetes version; 403 when nothing resolves;
//! 4. CAPI validation `validation.cluster.cluster.x-k8s.io`: class, version, MachineDeployments,
//!    variables against the class schemas, version changes on update (422).
//!
//! Denials carry the API server's prefix `admission webhook "<name>" denied the request: `.

use std::cmp::Ordering;

use serde_json::{json, Map, Value};

use super::super::select::LabelSelector;
use super::super::store::{Admission, ApiError, State};
use super::catalog::{
    tkr_name, TkgVersion, RESOLVE_OS_IMAGE_ANNOTATION, RESOLVE_TKR_ANNOTATION, TKR_LABEL,
};
use super::util::*;

/// The CAPI defaulting webhook.
pub(crate) const DEFAULT_WEBHOOK: &str = "default.cluster.cluster.x-k8s.io";
/// The CAPI validating webhook.
pub(crate) const VALIDATE_WEBHOOK: &str = "validation.cluster.cluster.x-k8s.io";
/// The TKR resolver webhook.
pub(crate) const TKR_WEBHOOK: &str = "tkr-resolver-cluster-webhook.tanzu.vmware.com";
/// Annotation the cluster-pause webhook sets (value: the new TKR name) next to `spec.paused: true`
/// when an update changes the `run.tanzu.vmware.com/tkr` label; removed with `spec.paused` when the
/// ClusterBootstrap controller unpauses (tkg2-aws-class-based.md §4 "Cluster pause on update").
pub const PAUSED_ANNOTATION: &str = "tkg.tanzu.vmware.com/paused";

/// The admission chain for Clusters of one management cluster.
pub(crate) struct ClusterAdmission {
    version: TkgVersion,
}

/// One field error, rendered like `k8s.io/apimachinery/pkg/util/validation/field.Error`.
struct FieldErr {
    path: String,
    kind: ErrKind,
    detail: String,
}

enum ErrKind {
    Required,
    Invalid(Value),
    Unsupported(Value, Vec<Value>),
    Forbidden,
}

fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl FieldErr {
    fn required(path: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldErr {
            path: path.into(),
            kind: ErrKind::Required,
            detail: detail.into(),
        }
    }
    fn invalid(path: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        FieldErr {
            path: path.into(),
            kind: ErrKind::Invalid(value),
            detail: detail.into(),
        }
    }
    fn forbidden(path: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldErr {
            path: path.into(),
            kind: ErrKind::Forbidden,
            detail: detail.into(),
        }
    }
    fn body(&self) -> (String, &'static str) {
        let detail = |prefix: String| {
            if self.detail.is_empty() {
                prefix
            } else {
                format!("{prefix}: {}", self.detail)
            }
        };
        match &self.kind {
            ErrKind::Required => (detail("Required value".into()), "FieldValueRequired"),
            ErrKind::Invalid(v) => (
                detail(format!("Invalid value: {}", go_value(v))),
                "FieldValueInvalid",
            ),
            ErrKind::Unsupported(v, allowed) => (
                format!(
                    "Unsupported value: {}: supported values: {}",
                    go_value(v),
                    allowed.iter().map(go_value).collect::<Vec<_>>().join(", ")
                ),
                "FieldValueNotSupported",
            ),
            ErrKind::Forbidden => (detail("Forbidden".into()), "FieldValueForbidden"),
        }
    }
}

/// 422 Invalid from `webhook` for Cluster `name` with `errs` (`NewInvalid` aggregate message).
fn invalid(webhook: &str, name: &str, errs: &[FieldErr]) -> ApiError {
    let rendered: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: {}", e.path, e.body().0))
        .collect();
    let list = if rendered.len() == 1 {
        rendered[0].clone()
    } else {
        format!("[{}]", rendered.join(", "))
    };
    let causes = errs
        .iter()
        .map(|e| {
            let (msg, reason) = e.body();
            json!({"reason": reason, "message": msg, "field": e.path})
        })
        .collect();
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!(
            "admission webhook \"{webhook}\" denied the request: Cluster.cluster.x-k8s.io \"{name}\" is invalid: {list}"
        ),
    )
    .with_causes(&gvr_cluster(), name, causes);
    // `NewInvalid` names the kind, not the resource.
    e.details["kind"] = json!("Cluster");
    e
}

fn forbidden(webhook: &str, name: &str, msg: &str) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!("admission webhook \"{webhook}\" denied the request: {msg}"),
    )
    .with_causes(&gvr_cluster(), name, Vec::new())
}

/// Parses a (tolerant, `v`-prefixed) semantic version into (major, minor, patch); missing minor or
/// patch count as 0, like `semver.ParseTolerant`.
pub(crate) fn parse_semver(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['+', '-']).next()?;
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let mut n = [0u64; 3];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n[i] = p.parse().ok()?;
    }
    // Pre-release and build parts: non-empty dot-separated alphanumerics.
    let rest = &v[core.len()..];
    if !rest.is_empty()
        && !rest[1..]
            .split(['.', '-', '+'])
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return None;
    }
    Some((n[0], n[1], n[2]))
}

/// Orders two TKR versions by every numeric group in order (`v1.25.7+vmware.2-tkg.1`).
fn compare_tkr_versions(a: &str, b: &str) -> Ordering {
    let nums = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|x| !x.is_empty())
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    nums(a).cmp(&nums(b))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Fills the nested defaults of `schema` into `v` (structural defaulting).
fn apply_defaults(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, ps) in props {
                    if !m.contains_key(k) {
                        if let Some(d) = ps.get("default") {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                    if let Some(child) = m.get_mut(k) {
                        apply_defaults(ps, child);
                    }
                }
            }
            if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in m.values_mut() {
                    apply_defaults(ap, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for child in items {
                    apply_defaults(is, child);
                }
            }
        }
        _ => {}
    }
}

/// Validates `v` against an openAPIV3Schema; `rel` is the path inside the variable value (for
/// the unknown-field report), `unknown` collects undeclared fields.
fn validate_schema(
    schema: &Value,
    v: &Value,
    path: &str,
    rel: &str,
    unknown: &mut Vec<String>,
    errs: &mut Vec<FieldErr>,
) {
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            errs.push(FieldErr::invalid(
                path,
                json!(actual),
                format!("{path} in body must be of type {t}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            errs.push(FieldErr {
                path: path.to_string(),
                kind: ErrKind::Unsupported(v.clone(), allowed.clone()),
                detail: String::new(),
            });
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            errs.push(FieldErr::invalid(
                path,
                v.clone(),
                format!("{path} in body should be greater than or equal to {min}"),
            ));
        }
    }
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match v {
        Value::Object(m) => {
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(r) {
                    errs.push(FieldErr::required(format!("{path}.{r}"), ""));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in m {
                let child_path = format!("{path}.{k}");
                let child_rel = if rel.is_empty() {
                    k.clone()
                } else {
                    format!("{rel}.{k}")
                };
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(ps), _) | (None, Some(ps)) => {
                        validate_schema(ps, child, &child_path, &child_rel, unknown, errs)
                    }
                    (None, None) if !preserve => unknown.push(child_rel),
                    (None, None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, child) in items.iter().enumerate() {
                    validate_schema(
                        is,
                        child,
                        &format!("{path}[{i}]"),
                        &format!("{rel}[{i}]"),
                        unknown,
                        errs,
                    );
                }
            }
        }
        _ => {}
    }
}

fn class_schema<'a>(class: &'a Value, name: &str) -> Option<&'a Value> {
    class
        .pointer("/spec/variables")
        .and_then(Value::as_array)?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .map(|v| v.pointer("/schema/openAPIV3Schema").unwrap_or(&Value::Null))
}

fn variables_mut(topology: &mut Value) -> &mut Vec<Value> {
    if !topology.get("variables").is_some_and(Value::is_array) {
        topology["variables"] = json!([]);
    }
    topology["variables"]
        .as_array_mut()
        .expect("variables is an array")
}

fn annotation_in(obj: Option<&Value>, ptr: &str) -> Option<String> {
    obj?.pointer(ptr)?
        .get(RESOLVE_OS_IMAGE_ANNOTATION)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// What one resolution (control plane or one MD) asked for and found.
struct Query {
    prefix: String,
    tkr_selector: String,
    os_selector: String,
}

struct Resolved {
    tkr: Value,
    osimage: Value,
}

impl ClusterAdmission {
    /// The chain for a management cluster running `version` (decides unknown-field handling).
    pub(crate) fn new(version: TkgVersion) -> Self {
        ClusterAdmission { version }
    }

    /// CAPI defaulting webhook (§4 "Defaulting").
    fn default(&self, st: &State, obj: &mut Value, name: &str, ns: &str) -> Result<(), ApiError> {
        let class_name = str_at(obj, "/spec/topology/class")
            .unwrap_or("")
            .to_string();
        if class_name.is_empty() {
            return Ok(());
        }
        // CAPI adds a missing "v" prefix to the version.
        if let Some(v) = str_at(obj, "/spec/topology/version") {
            if !v.is_empty() && !v.starts_with('v') {
                obj["spec"]["topology"]["version"] = json!(format!("v{v}"));
            }
        }
        let class = st
            .get(&gvr_cluster_class(), Some(ns), &class_name)
            .map_err(|e| {
                ApiError::new(
                    500,
                    "InternalError",
                    format!(
                        "admission webhook \"{DEFAULT_WEBHOOK}\" denied the request: Cluster {name} can't be validated. ClusterClass {class_name} can not be retrieved: {}",
                        e.message
                    ),
                )
                .with_causes(&gvr_cluster(), name, Vec::new())
            })?;
        let topology = &mut obj["spec"]["topology"];
        let mut errs = Vec::new();
        let vars = variables_mut(topology);
        for (i, var) in vars.iter_mut().enumerate() {
            let vname = var
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match class_schema(&class, &vname) {
                None => errs.push(FieldErr::invalid(
                    format!("spec.topology.variables[{i}].name"),
                    json!(vname),
                    format!("variable with name {vname:?} is not defined in the ClusterClass"),
                )),
                Some(schema) => {
                    if let Some(value) = var.get_mut("value") {
                        apply_defaults(schema, value);
                    }
                }
            }
        }
        for cv in class
            .pointer("/spec/variables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let cname = cv.get("name").and_then(Value::as_str).unwrap_or("");
            let schema = cv
                .pointer("/schema/openAPIV3Schema")
                .unwrap_or(&Value::Null);
            if vars
                .iter()
                .any(|v| v.get("name").and_then(Value::as_str) == Some(cname))
            {
                continue;
            }
            if let Some(d) = schema.get("default") {
                let mut value = d.clone();
                apply_defaults(schema, &mut value);
                vars.push(json!({"name": cname, "value": value}));
            }
        }
        if let Some(mds) = topology
            .pointer_mut("/workers/machineDeployments")
            .and_then(Value::as_array_mut)
        {
            for (m, md) in mds.iter_mut().enumerate() {
                if let Some(ovs) = md
                    .pointer_mut("/variables/overrides")
                    .and_then(Value::as_array_mut)
                {
                    for (i, var) in ovs.iter_mut().enumerate() {
                        let vname = var
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        match class_schema(&class, &vname) {
                            None => errs.push(FieldErr::invalid(
                                format!("spec.topology.workers.machineDeployments[{m}].variables.overrides[{i}].name"),
                                json!(vname),
                                format!("variable with name {vname:?} is not defined in the ClusterClass"),
                            )),
                            Some(schema) => {
                                if let Some(value) = var.get_mut("value") {
                                    apply_defaults(schema, value);
                                }
                            }
                        }
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(invalid(DEFAULT_WEBHOOK, name, &errs))
        }
    }

    /// Resolves one query against the TKRs and OSImages: the exact TKR named by the prefix, else
    /// the latest TKR labelled with it; the first TKR with a matching OSImage must have exactly one.
    fn resolve_one(st: &State, q: &Query, result: &mut Map<String, Value>) -> Result<Resolved, ()> {
        let tkr_sel = LabelSelector::parse(&q.tkr_selector).map_err(|_| ())?;
        let os_sel = LabelSelector::parse(&q.os_selector).map_err(|_| ())?;
        let all = st.list(&gvr_tkr(), None, None, None).unwrap_or_default();
        let usable = |t: &&Value| {
            ["incompatible", "deactivated", "invalid"]
                .iter()
                .all(|l| label(t, l).is_none())
                && tkr_sel.matches(t)
        };
        let want = tkr_name(&q.prefix);
        let mut tkrs: Vec<&Value> = all.iter().map(|t| t.as_ref()).filter(usable).collect();
        if tkrs.iter().any(|t| name_of(t) == Some(want.as_str())) {
            tkrs.retain(|t| name_of(t) == Some(want.as_str()));
        } else {
            tkrs.retain(|t| label(t, &want).is_some());
        }
        tkrs.sort_by(|a, b| {
            compare_tkr_versions(
                str_at(b, "/spec/version").unwrap_or(""),
                str_at(a, "/spec/version").unwrap_or(""),
            )
        });
        let mut by_tkr = Map::new();
        let mut found = None;
        for tkr in tkrs {
            let images: Vec<Value> = tkr
                .pointer("/spec/osImages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("name").and_then(Value::as_str))
                .filter_map(|n| st.get(&gvr_osimage(), None, n).ok())
                .filter(|i| os_sel.matches(i))
                .map(|i| Value::clone(&i))
                .collect();
            let tname = name_of(tkr).unwrap_or_default().to_string();
            by_tkr.insert(
                tname.clone(),
                json!(images.iter().filter_map(name_of).collect::<Vec<_>>()),
            );
            if !images.is_empty() && found.is_none() {
                found = Some((tkr.clone(), images));
            }
        }
        result.insert("osImagesByTKR".into(), Value::Object(by_tkr));
        match found {
            Some((tkr, mut images)) if images.len() == 1 => {
                result.insert("tkrName".into(), json!(name_of(&tkr)));
                Ok(Resolved {
                    tkr,
                    osimage: images.remove(0),
                })
            }
            _ => Err(()),
        }
    }

    fn tkr_data(r: &Resolved) -> Value {
        let k8s = str_at(&r.tkr, "/spec/kubernetes/version")
            .unwrap_or("")
            .to_string();
        let mut labels = Map::new();
        for k in ["os-type", "os-name", "os-version", "os-arch", "image-type"] {
            if let Some(v) = label(&r.osimage, k) {
                labels.insert(k.into(), json!(v));
            }
        }
        let image_ref = r
            .osimage
            .pointer("/spec/image/ref")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, v) in &image_ref {
            labels.insert(format!("ami-{k}"), v.clone());
        }
        labels.insert(TKR_LABEL.into(), json!(name_of(&r.tkr)));
        labels.insert(
            "run.tanzu.vmware.com/os-image".into(),
            json!(name_of(&r.osimage)),
        );
        json!({k8s: {
            "kubernetesSpec": r.tkr.pointer("/spec/kubernetes").cloned().unwrap_or(json!({})),
            "osImageRef": image_ref,
            "labels": labels,
        }})
    }

    /// The TKR resolver (§4 "TKR resolver").
    fn resolve(&self, st: &State, obj: &mut Value, name: &str, ns: &str) -> Result<(), ApiError> {
        if obj.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        let class_name = str_at(obj, "/spec/topology/class")
            .unwrap_or("")
            .to_string();
        let Ok(class) = st.get(&gvr_cluster_class(), Some(ns), &class_name) else {
            return Err(forbidden(TKR_WEBHOOK, name, "ClusterClass not found"));
        };
        let tkr_selector = match annotation(obj, RESOLVE_TKR_ANNOTATION)
            .or_else(|| annotation(&class, RESOLVE_TKR_ANNOTATION))
        {
            Some(s) => s.to_string(),
            None => return Ok(()),
        };
        let class_os = |ptr: &str| {
            annotation_in(Some(&class), ptr)
                .or_else(|| annotation(&class, RESOLVE_OS_IMAGE_ANNOTATION).map(str::to_string))
                .unwrap_or_default()
        };
        let topology = obj["spec"]["topology"].clone();
        let version = str_at(&topology, "/version").unwrap_or("").to_string();
        let cp_query = Query {
            prefix: version.clone(),
            tkr_selector: tkr_selector.clone(),
            os_selector: annotation_in(topology.get("controlPlane"), "/metadata/annotations")
                .unwrap_or_else(|| class_os("/spec/controlPlane/metadata/annotations")),
        };
        let mut cp_result = Map::new();
        let cp = Self::resolve_one(st, &cp_query, &mut cp_result);
        let mds: Vec<Value> = topology
            .pointer("/workers/machineDeployments")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let md_prefix = cp
            .as_ref()
            .ok()
            .and_then(|r| str_at(&r.tkr, "/spec/version"))
            .unwrap_or(&version)
            .to_string();
        let mut md_results = Vec::new();
        let mut failed_mds = Vec::new();
        let mut md_queries = Map::new();
        let mut md_result_json = Map::new();
        for md in &mds {
            let md_name = md
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let q = Query {
                prefix: md_prefix.clone(),
                tkr_selector: tkr_selector.clone(),
                os_selector: annotation_in(Some(md), "/metadata/annotations").unwrap_or_else(
                    || class_os("/spec/workers/machineDeployments/0/template/metadata/annotations"),
                ),
            };
            let mut res = Map::new();
            let r = Self::resolve_one(st, &q, &mut res);
            md_queries.insert(md_name.clone(), query_json(&q));
            md_result_json.insert(md_name.clone(), Value::Object(res));
            if r.is_err() {
                failed_mds.push(md_name.clone());
            }
            md_results.push(r);
        }
        if cp.is_err() || !failed_mds.is_empty() {
            let who = if cp.is_err() {
                "controlPlane, machineDeployments"
            } else {
                "machineDeployments"
            };
            let msg = format!(
                "could not resolve TKR/OSImage for {who}: [{}], query: {}, result: {}",
                failed_mds.join(", "),
                json!({"controlPlane": query_json(&cp_query), "machineDeployments": md_queries}),
                json!({"controlPlane": cp_result, "machineDeployments": md_result_json}),
            );
            return Err(forbidden(TKR_WEBHOOK, name, &msg));
        }
        let cp = cp.expect("checked");
        let cluster_data = Self::tkr_data(&cp);
        let tkr = name_of(&cp.tkr).unwrap_or_default().to_string();
        let k8s = str_at(&cp.tkr, "/spec/kubernetes/version")
            .unwrap_or("")
            .to_string();
        {
            let md = obj["metadata"].as_object_mut().expect("object metadata");
            let labels = md.entry("labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            labels[TKR_LABEL] = json!(tkr);
        }
        let topo = &mut obj["spec"]["topology"];
        topo["version"] = json!(k8s);
        set_variable(variables_mut(topo), "TKR_DATA", cluster_data.clone());
        if let Some(list) = topo
            .pointer_mut("/workers/machineDeployments")
            .and_then(Value::as_array_mut)
        {
            for (md, r) in list.iter_mut().zip(md_results) {
                let data = Self::tkr_data(&r.expect("checked"));
                if data != cluster_data {
                    if !md.get("variables").is_some_and(Value::is_object) {
                        md["variables"] = json!({});
                    }
                    let ovs = md["variables"]
                        .as_object_mut()
                        .expect("object")
                        .entry("overrides")
                        .or_insert_with(|| json!([]));
                    if !ovs.is_array() {
                        *ovs = json!([]);
                    }
                    set_variable(ovs.as_array_mut().expect("array"), "TKR_DATA", data);
                } else if let Some(ovs) = md
                    .pointer_mut("/variables/overrides")
                    .and_then(Value::as_array_mut)
                {
                    ovs.retain(|v| v.get("name").and_then(Value::as_str) != Some("TKR_DATA"));
                }
            }
        }
        Ok(())
    }

    /// CAPI validating webhook (§4 table).
    fn validate(
        &self,
        st: &State,
        old: Option<&Value>,
        obj: &Value,
        name: &str,
        ns: &str,
    ) -> Result<(), ApiError> {
        let mut errs = Vec::new();
        let topology = &obj["spec"]["topology"];
        let class_name = str_at(topology, "/class").unwrap_or("");
        if class_name.is_empty() {
            errs.push(FieldErr::required(
                "spec.topology.class",
                "class cannot be empty",
            ));
            return Err(invalid(VALIDATE_WEBHOOK, name, &errs));
        }
        let version = str_at(topology, "/version").unwrap_or("");
        if parse_semver(version).is_none() {
            errs.push(FieldErr::invalid(
                "spec.topology.version",
                json!(version),
                "version must be a valid semantic version",
            ));
        }
        let Ok(class) = st.get(&gvr_cluster_class(), Some(ns), class_name) else {
            errs.push(FieldErr::invalid(
                "spec.topology.class",
                json!(class_name),
                format!("ClusterClass with name {class_name:?} could not be found"),
            ));
            return Err(invalid(VALIDATE_WEBHOOK, name, &errs));
        };
        // MachineDeployments.
        let md_classes: Vec<&str> = class
            .pointer("/spec/workers/machineDeployments")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("class").and_then(Value::as_str))
            .collect();
        let mut seen = Vec::new();
        let mds = topology
            .pointer("/workers/machineDeployments")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, md) in mds.iter().enumerate() {
            let p = format!("spec.topology.workers.machineDeployments[{i}]");
            let mclass = md.get("class").and_then(Value::as_str).unwrap_or("");
            if !md_classes.contains(&mclass) {
                errs.push(FieldErr::invalid(
                    format!("{p}.class"),
                    json!(mclass),
                    format!("MachineDeploymentClass with name {mclass:?} does not exist in ClusterClass {class_name:?}"),
                ));
            }
            let mname = md.get("name").and_then(Value::as_str).unwrap_or("");
            if mname.is_empty() {
                errs.push(FieldErr::required(
                    format!("{p}.name"),
                    "name must not be empty",
                ));
            } else if seen.contains(&mname) {
                errs.push(FieldErr::invalid(
                    format!("{p}.name"),
                    json!(mname),
                    "name must be unique",
                ));
            } else {
                seen.push(mname);
            }
        }
        // Variables.
        let vars: Vec<Value> = topology
            .get("variables")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let var_names: Vec<&str> = vars
            .iter()
            .filter_map(|v| v.get("name").and_then(Value::as_str))
            .collect();
        for cv in class
            .pointer("/spec/variables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let cname = cv.get("name").and_then(Value::as_str).unwrap_or("");
            if cv.get("required").and_then(Value::as_bool) == Some(true)
                && !var_names.contains(&cname)
            {
                errs.push(FieldErr::required(
                    "spec.topology.variables",
                    format!("required variable with name {cname:?} must be defined"),
                ));
            }
        }
        for (i, var) in vars.iter().enumerate() {
            let vname = var.get("name").and_then(Value::as_str).unwrap_or("");
            self.validate_variable(
                &class,
                var,
                &format!("spec.topology.variables[{i}]"),
                &mut errs,
            );
            let _ = vname;
        }
        for (m, md) in mds.iter().enumerate() {
            for (i, ov) in md
                .pointer("/variables/overrides")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let p = format!(
                    "spec.topology.workers.machineDeployments[{m}].variables.overrides[{i}]"
                );
                let vname = ov.get("name").and_then(Value::as_str).unwrap_or("");
                if !var_names.contains(&vname) {
                    errs.push(FieldErr::invalid(
                        format!("{p}.name"),
                        json!(vname),
                        format!("variable override with name {vname:?} is missing a corresponding top-level variable"),
                    ));
                    continue;
                }
                self.validate_variable(&class, ov, &p, &mut errs);
            }
        }
        // Version changes on update.
        if let Some(old_version) = old.and_then(|o| str_at(o, "/spec/topology/version")) {
            if let (Some(o), Some(n)) = (parse_semver(old_version), parse_semver(version)) {
                if n < o {
                    errs.push(FieldErr::invalid(
                        "spec.topology.version",
                        json!(version),
                        format!("version cannot be decreased from {old_version:?} to {version:?}"),
                    ));
                } else if n.0 == o.0 && n.1 >= o.1 + 2 || n.0 > o.0 {
                    errs.push(FieldErr::forbidden(
                        "spec.topology.version",
                        format!("version cannot be increased from {old_version:?} to {version:?}"),
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(invalid(VALIDATE_WEBHOOK, name, &errs))
        }
    }

    fn validate_variable(&self, class: &Value, var: &Value, p: &str, errs: &mut Vec<FieldErr>) {
        let vname = var.get("name").and_then(Value::as_str).unwrap_or("");
        let Some(schema) = class_schema(class, vname) else {
            errs.push(FieldErr::invalid(
                format!("{p}.name"),
                json!(vname),
                format!("variable with name {vname:?} is not defined in the ClusterClass"),
            ));
            return;
        };
        let value = var.get("value").cloned().unwrap_or(Value::Null);
        let mut unknown = Vec::new();
        validate_schema(
            schema,
            &value,
            &format!("{p}.value"),
            "",
            &mut unknown,
            errs,
        );
        if self.version.rejects_unknown_fields() && !unknown.is_empty() {
            errs.push(FieldErr::invalid(
                format!("{p}.value"),
                json!(value.to_string()),
                format!(
                    "failed validation: {:?} fields are not specified in the variable schema of variable {vname:?}",
                    unknown.join(",")
                ),
            ));
        }
    }
}

fn query_json(q: &Query) -> Value {
    json!({"k8sVersionPrefix": q.prefix, "tkrSelector": q.tkr_selector, "osImageSelector": q.os_selector})
}

fn set_variable(vars: &mut Vec<Value>, name: &str, value: Value) {
    match vars
        .iter_mut()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
    {
        Some(v) => v["value"] = value,
        None => vars.push(json!({"name": name, "value": value})),
    }
}

impl Admission for ClusterAdmission {
    fn admit(&self, st: &State, old: Option<&Value>, mut obj: Value) -> Result<Value, ApiError> {
        if !obj.pointer("/spec/topology").is_some_and(Value::is_object) {
            return Ok(obj);
        }
        let name = name_of(&obj).unwrap_or_default().to_string();
        let ns = namespace_of(&obj).unwrap_or("default").to_string();
        self.default(st, &mut obj, &name, &ns)?;
        if !str_at(&obj, "/spec/topology/class")
            .unwrap_or("")
            .is_empty()
        {
            self.resolve(st, &mut obj, &name, &ns)?;
        }
        // Cluster pause, reinvoked after the resolver changed the TKR label.
        if let Some(old_tkr) = old.and_then(|o| label(o, TKR_LABEL)) {
            let new_tkr = label(&obj, TKR_LABEL).unwrap_or("").to_string();
            if !new_tkr.is_empty() && new_tkr != old_tkr {
                obj["spec"]["paused"] = json!(true);
                let md = obj["metadata"].as_object_mut().expect("object metadata");
                let ann = md.entry("annotations").or_insert_with(|| json!({}));
                if !ann.is_object() {
                    *ann = json!({});
                }
                ann[PAUSED_ANNOTATION] = json!(new_tkr);
            }
        }
        self.validate(st, old, &obj, &name, &ns)?;
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_parsing_is_tolerant_but_rejects_garbage() {
        assert_eq!(parse_semver("v1.25.7+vmware.2"), Some((1, 25, 7)));
        assert_eq!(parse_semver("v1.25.7+vmware.2-tkg.1"), Some((1, 25, 7)));
        assert_eq!(parse_semver("1.25"), Some((1, 25, 0)));
        assert_eq!(parse_semver("latest"), None);
        assert_eq!(parse_semver("v1.x.3"), None);
    }

    #[test]
    fn tkr_versions_order_numerically() {
        assert_eq!(
            compare_tkr_versions("v1.25.10+vmware.2-tkg.1", "v1.25.7+vmware.2-tkg.1"),
            Ordering::Greater
        );
    }

    #[test]
    fn schema_reports_paths_and_unknown_fields() {
        let schema = json!({"type": "object", "required": ["vpc"], "properties": {
            "vpc": {"type": "object"}, "days": {"type": "integer", "minimum": 7},
            "cni": {"type": "string", "enum": ["antrea", "calico"]}}});
        let mut unknown = Vec::new();
        let mut errs = Vec::new();
        validate_schema(
            &schema,
            &json!({"days": 3, "cni": "flannel", "extra": {"a": 1}}),
            "spec.topology.variables[2].value",
            "",
            &mut unknown,
            &mut errs,
        );
        let msgs: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.path, e.body().0))
            .collect();
        assert!(
            msgs.contains(&"spec.topology.variables[2].value.vpc: Required value".to_string()),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("spec.topology.variables[2].value.days: Invalid value: 3")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("Unsupported value: \"flannel\"")),
            "{msgs:?}"
        );
        assert_eq!(unknown, vec!["extra".to_string()]);
    }

    #[test]
    fn defaults_fill_nested_objects() {
        let schema = json!({"type": "object", "properties": {
            "kind": {"type": "string", "default": "AWSClusterRoleIdentity"},
            "vpc": {"type": "object", "properties": {"cidr": {"type": "string", "default": "10.0.0.0/16"}}}}});
        let mut v = json!({"vpc": {}});
        apply_defaults(&schema, &mut v);
        assert_eq!(
            v,
            json!({"kind": "AWSClusterRoleIdentity", "vpc": {"cidr": "10.0.0.0/16"}})
        );
    }
}

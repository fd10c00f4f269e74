//! The HTTP side of an emulated cluster: routing, auth, discovery, verbs, watch streaming.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::select::{FieldSelector, LabelSelector};
use super::store::{parse_body, ApiError, FieldValidation, PatchKind, WriteCtx};
use super::{proto, schema};
use super::{EmulatedCluster, Gvr, ResourceType};

/// The cluster's router (without the fault layer).
pub(super) fn router(c: EmulatedCluster) -> Router {
    Router::new().fallback(handle).with_state(c)
}

fn json_resp(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// A response in protobuf when `proto_out` (the client asked for protobuf first and the type has
/// a protobuf mapping) and the body encodes, else in JSON, with one `Warning` header per
/// warning (`299 - "…"`, the API server's form; kubectl prints `Warning: …`).
fn respond(code: StatusCode, v: &Value, proto_out: bool, warnings: &[String]) -> Response {
    let mut resp = match proto_out.then(|| proto::encode(v)).flatten() {
        Some(body) => (code, [(header::CONTENT_TYPE, proto::MEDIA_TYPE)], body).into_response(),
        None => json_resp(code, v),
    };
    for w in warnings {
        let quoted = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(h) = axum::http::HeaderValue::from_str(&quoted) {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
    resp
}

/// Whether the request body is protobuf (`Content-Type: application/vnd.kubernetes.protobuf`).
fn is_proto(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| ct.trim() == proto::MEDIA_TYPE)
}

/// The object in a POST or PUT body (protobuf, JSON or YAML) and the fields a JSON body
/// repeats.
///
/// Errors: 400 BadRequest for a body that does not decode; for protobuf worded as the API
/// server's `transformDecodeError` (`ConfigMap in version "v1" cannot be handled as a
/// ConfigMap: …`).
fn object_body(
    rt: &ResourceType,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Value, Vec<String>), ApiError> {
    if is_proto(headers) {
        return proto::decode(body).map(|v| (v, Vec::new())).map_err(|e| {
            ApiError::bad_request(format!(
                "{k} in version \"{v}\" cannot be handled as a {k}: {e}",
                k = rt.kind,
                v = rt.gvr.version
            ))
        });
    }
    let v = parse_body(body)?;
    Ok((v, schema::duplicate_fields(body)))
}

fn err_resp(e: ApiError) -> Response {
    json_resp(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status_json(),
    )
}

/// Version priority as Kubernetes sorts versions: GA > beta > alpha, higher numbers first.
fn version_priority(v: &str) -> (u8, u32, u32) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stability, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stability, major, minor)
}

/// Versions of each named group, preferred first.
fn groups(types: &[ResourceType]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in types.iter().filter(|t| !t.gvr.group.is_empty()) {
        let vs = out.entry(t.gvr.group.clone()).or_default();
        if !vs.contains(&t.gvr.version) {
            vs.push(t.gvr.version.clone());
        }
    }
    for vs in out.values_mut() {
        vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    }
    out
}

fn api_group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(json!({}))})
}

fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mine: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.gvr.group == group && t.gvr.version == version)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in mine {
        let mut r = json!({
            "name": t.gvr.plural,
            "singularName": t.kind.to_lowercase(),
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        resources.push(r);
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.gvr.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": t_gv(group, version),
        "resources": resources,
    }))
}

fn t_gv(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// A parsed resource path.
struct Target {
    rt: ResourceType,
    ns: Option<String>,
    name: Option<String>,
    status: bool,
}

/// Resolves `rest` (segments after `/api/v1` or `/apis/g/v`) to a target; 404 if unknown.
fn resolve(
    types: &[ResourceType],
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Target, ApiError> {
    let find = |plural: &str| {
        types
            .iter()
            .find(|t| t.gvr.group == group && t.gvr.version == version && t.gvr.plural == plural)
            .cloned()
            .ok_or_else(ApiError::no_resource)
    };
    let (ns, plural, tail): (Option<String>, &str, &[&str]) = if rest.len() >= 3
        && rest[0] == "namespaces"
        && !matches!(rest[2], "status" | "finalize")
    {
        (Some(rest[1].to_string()), rest[2], &rest[3..])
    } else {
        (None, rest[0], &rest[1..])
    };
    let rt = find(plural)?;
    if ns.is_some() && !rt.namespaced {
        return Err(ApiError::no_resource());
    }
    let name = tail.first().map(|s| s.to_string());
    let status = match tail.get(1) {
        None => false,
        Some(&"status") if rt.status_subresource && tail.len() == 2 => true,
        Some(_) => return Err(ApiError::no_resource()),
    };
    Ok(Target {
        rt,
        ns,
        name,
        status,
    })
}

fn query_map(q: Option<&str>) -> HashMap<String, String> {
    q.and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

fn manager(q: &HashMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(m) = q.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn selectors(
    q: &HashMap<String, String>,
) -> Result<(Option<LabelSelector>, Option<FieldSelector>), ApiError> {
    let l = match q.get("labelSelector").filter(|s| !s.trim().is_empty()) {
        Some(s) => Some(
            LabelSelector::parse(s)
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
        ),
        None => None,
    };
    let f = match q.get("fieldSelector").filter(|s| !s.trim().is_empty()) {
        Some(s) => Some(FieldSelector::parse(s).map_err(ApiError::bad_request)?),
        None => None,
    };
    Ok((l, f))
}

async fn handle(State(c): State<EmulatedCluster>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let user = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| c.authenticate(token.trim()));
    let Some(user) = user else {
        return err_resp(ApiError::unauthorized());
    };
    let q = query_map(parts.uri.query());
    let attrs = super::rbac::attributes(parts.method.as_str(), parts.uri.path(), &q);
    if let Err(reason) = c.authorize(&user, &attrs) {
        return err_resp(super::rbac::forbidden(&user, &attrs, &reason));
    }
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => {
            return err_resp(ApiError::bad_request(format!(
                "reading the request body: {e}"
            )))
        }
    };
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = parts.method.clone();
    let types = c.types();
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["version"]) => {
            let git_version = c.kubernetes_version();
            let mut parts = git_version.trim_start_matches('v').split('.');
            let (major, minor) = (
                parts.next().unwrap_or("1").to_string(),
                parts.next().unwrap_or("0").to_string(),
            );
            json_resp(
                StatusCode::OK,
                &json!({
                    "major": major, "minor": minor, "gitVersion": git_version, "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean", "buildDate": "2025-05-15T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc", "platform": "linux/amd64",
                }),
            )
        }
        (Method::GET, ["healthz" | "livez" | "readyz"]) => (StatusCode::OK, "ok").into_response(),
        (Method::GET, ["openapi", "v3"]) => {
            json_resp(StatusCode::OK, &super::openapi::index(&types))
        }
        (Method::GET, ["openapi", "v3", rest @ ..]) => {
            let crd_schemas = c.state().crd_schemas();
            match super::openapi::document(
                &types,
                &crd_schemas,
                &rest.join("/"),
                &c.kubernetes_version(),
            ) {
                Some(doc) => json_resp(StatusCode::OK, &doc),
                None => err_resp(ApiError::no_resource()),
            }
        }
        (Method::GET, ["api"]) => json_resp(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": c.inner.url.trim_start_matches("https://")}]}),
        ),
        (Method::GET, ["apis"]) => {
            let gs: Vec<Value> = groups(&types)
                .iter()
                .map(|(g, vs)| api_group_json(g, vs))
                .collect();
            json_resp(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}),
            )
        }
        (Method::GET, ["apis", g]) => match groups(&types).get(*g) {
            Some(vs) => {
                let mut v = api_group_json(g, vs);
                v["kind"] = json!("APIGroup");
                v["apiVersion"] = json!("v1");
                json_resp(StatusCode::OK, &v)
            }
            None => err_resp(ApiError::no_resource()),
        },
        (Method::GET, ["api", "v1"]) => match resource_list(&types, "", "v1") {
            Some(v) => json_resp(StatusCode::OK, &v),
            None => err_resp(ApiError::no_resource()),
        },
        (Method::GET, ["apis", g, v]) => match resource_list(&types, g, v) {
            Some(v) => json_resp(StatusCode::OK, &v),
            None => err_resp(ApiError::no_resource()),
        },
        (_, ["api", "v1", rest @ ..]) if !rest.is_empty() => resource_request(
            &c,
            &user,
            &types,
            "",
            "v1",
            rest,
            method,
            &parts.headers,
            &q,
            body,
        ),
        (_, ["apis", g, v, rest @ ..]) if !rest.is_empty() => resource_request(
            &c,
            &user,
            &types,
            g,
            v,
            rest,
            method,
            &parts.headers,
            &q,
            body,
        ),
        _ => err_resp(ApiError::no_resource()),
    }
}

#[allow(clippy::too_many_arguments)]
fn resource_request(
    c: &EmulatedCluster,
    user: &super::rbac::UserInfo,
    types: &[ResourceType],
    group: &str,
    version: &str,
    rest: &[&str],
    method: Method,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: Bytes,
) -> Response {
    let t = match resolve(types, group, version, rest) {
        Ok(t) => t,
        Err(e) => return err_resp(e),
    };
    let gvr = t.rt.gvr.clone();
    let ns = t.ns.as_deref();
    let proto_out = proto::has_kind(&t.rt.api_version(), &t.rt.kind)
        && proto::accepts(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let validation = match FieldValidation::parse(q.get("fieldValidation").map(String::as_str)) {
        Ok(v) => v,
        Err(e) if matches!(method, Method::POST | Method::PUT | Method::PATCH) => {
            return respond(StatusCode::BAD_REQUEST, &e.status_json(), proto_out, &[])
        }
        Err(_) => FieldValidation::Warn,
    };
    let mut ctx = WriteCtx {
        manager: manager(q, headers),
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        validation: Some(validation),
        ..WriteCtx::default()
    };
    let fm = q.get("fieldManager").map(String::as_str);
    let result: Result<(StatusCode, Value), ApiError> = match (&method, &t.name) {
        (&Method::GET, None) => {
            if truthy(q, "watch") {
                return watch(c, t.rt, t.ns, q);
            }
            list(c, &t.rt, ns, q)
        }
        (&Method::GET, Some(name)) => c
            .state()
            .get(&gvr, ns, name)
            .map(|v| (StatusCode::OK, Value::clone(&v))),
        (&Method::POST, None) => match object_body(&t.rt, headers, &body) {
            Ok((obj, dups)) => {
                ctx.duplicates = dups;
                let mut st = c.state();
                let r = st.create(&gvr, ns, obj, &ctx);
                if let Ok(v) = &r {
                    let name = v
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    st.audit("create", &gvr, ns, &name, fm, !ctx.dry_run, ctx.dry_run);
                }
                r.map(|v| (StatusCode::CREATED, v))
            }
            Err(e) => Err(e),
        },
        (&Method::PUT, Some(name)) => match object_body(&t.rt, headers, &body) {
            Ok((obj, dups)) => {
                ctx.duplicates = dups;
                let mut st = c.state();
                let r = st.update(&gvr, ns, name, obj, t.status, &ctx);
                if let Ok((_, changed)) = &r {
                    st.audit(
                        if t.status { "update-status" } else { "update" },
                        &gvr,
                        ns,
                        name,
                        fm,
                        *changed && !ctx.dry_run,
                        ctx.dry_run,
                    );
                }
                r.map(|(v, _)| (StatusCode::OK, v))
            }
            Err(e) => Err(e),
        },
        (&Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let ct = ct.split(';').next().unwrap_or("").trim();
            let kind = match ct {
                "application/merge-patch+json" => Some(PatchKind::Merge),
                "application/json-patch+json" => Some(PatchKind::Json),
                "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
                "application/apply-patch+yaml"
                | "application/apply-patch+json"
                | "application/apply-patch+cbor" => Some(PatchKind::Apply),
                _ => None,
            };
            match kind {
                None => Err(ApiError {
                    code: 415,
                    reason: "UnsupportedMediaType",
                    message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {ct:?})"),
                    details: json!({}),
                }),
                Some(PatchKind::Apply) if fm.is_none_or(str::is_empty) => Err(ApiError::invalid(
                    &gvr,
                    name,
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                )),
                Some(kind) => 'apply: {
                    // An apply that creates the object needs `create` too (the patch handler's
                    // `withAuthorization` of its create-on-update).
                    if kind == PatchKind::Apply && c.get_shared(&gvr, ns, name).is_none() {
                        let create = super::rbac::Attributes {
                            verb: "create".into(),
                            resource_request: true,
                            api_group: group.to_string(),
                            api_version: version.to_string(),
                            namespace: ns.unwrap_or_default().to_string(),
                            resource: gvr.plural.clone(),
                            name: name.clone(),
                            ..super::rbac::Attributes::default()
                        };
                        if let Err(reason) = c.authorize(user, &create) {
                            break 'apply Err(super::rbac::forbidden_error(
                                group,
                                &gvr.plural,
                                name,
                                &reason,
                            ));
                        }
                    }
                    let mut st = c.state();
                    let existed = st.get(&gvr, ns, name).is_ok();
                    let r = st.patch(&gvr, ns, name, kind, &body, t.status, truthy(q, "force"), &ctx);
                    if let Ok((_, changed)) = &r {
                        let verb = match (kind == PatchKind::Apply, t.status) {
                            (true, false) => "apply",
                            (true, true) => "apply-status",
                            (false, false) => "patch",
                            (false, true) => "patch-status",
                        };
                        st.audit(verb, &gvr, ns, name, fm, *changed && !ctx.dry_run, ctx.dry_run);
                    }
                    let code = if existed { StatusCode::OK } else { StatusCode::CREATED };
                    r.map(|(v, _)| (code, v))
                }
            }
        }
        (&Method::DELETE, Some(name)) if !t.status => {
            let mut st = c.state();
            let mut dry_run = ctx.dry_run;
            let r = delete_body(headers, &body).and_then(|opts| {
                dry_run |= opts.dry_run;
                check_preconditions(&st, &gvr, ns, name, &opts)?;
                st.delete(&gvr, ns, name, dry_run)
            });
            if let Ok((_, changed)) = &r {
                st.audit("delete", &gvr, ns, name, fm, *changed && !dry_run, dry_run);
            }
            r.map(|(v, _)| (StatusCode::OK, v))
        }
        (&Method::DELETE, None) => delete_body(headers, &body).and_then(|opts| {
            let ctx = WriteCtx {
                dry_run: ctx.dry_run || opts.dry_run,
                ..ctx.clone()
            };
            delete_collection(c, &t.rt, ns, q, &ctx)
        }),
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    };
    let warnings = ctx.warnings.borrow().clone();
    match result {
        Ok((code, v)) => respond(code, &v, proto_out, &warnings),
        Err(e) => respond(
            StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &e.status_json(),
            proto_out,
            &[],
        ),
    }
}

/// The `DeleteOptions` of a DELETE body in protobuf (client-go's typed clients) or JSON.
///
/// Errors: 400 BadRequest when the body does not decode.
fn delete_body(headers: &HeaderMap, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    if is_proto(headers) && !body.is_empty() {
        let v = proto::decode(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions body: {e}")))?;
        return delete_options(v.to_string().as_bytes());
    }
    delete_options(body)
}

/// The parts of a DELETE's `DeleteOptions` body (`meta.k8s.io/v1`) the emulator honours:
/// `preconditions.uid`, `preconditions.resourceVersion` and `dryRun: ["All"]`. kube-rs sends
/// its `DeleteParams` as this body; kubectl sends `{"kind":"DeleteOptions",…}`.
#[derive(Default)]
struct DeleteOptions {
    uid: Option<String>,
    resource_version: Option<String>,
    dry_run: bool,
}

/// Parses the DELETE body; an empty body is the default options.
///
/// Errors: 400 BadRequest when the body is not a JSON object.
fn delete_options(body: &[u8]) -> Result<DeleteOptions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeleteOptions::default());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "invalid DeleteOptions body: not an object",
        ));
    }
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    Ok(DeleteOptions {
        uid: s("/preconditions/uid"),
        resource_version: s("/preconditions/resourceVersion"),
        dry_run: v
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All")),
    })
}

/// Checks a DELETE's preconditions against the stored object, as the API server's
/// `Preconditions.Check` does before anything is written (uid first, then resourceVersion).
///
/// Errors: 404 when the object is absent; 409 Conflict ([`ApiError::precondition_failed`])
/// when a precondition does not hold.
fn check_preconditions(
    st: &super::store::State,
    gvr: &Gvr,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(), ApiError> {
    if opts.uid.is_none() && opts.resource_version.is_none() {
        return Ok(());
    }
    let obj = st.get(gvr, ns, name)?;
    let meta = |k: &str| {
        obj.pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if let Some(want) = &opts.uid {
        let have = meta("uid");
        if *want != have {
            return Err(ApiError::precondition_failed(
                gvr, ns, name, "UID", want, &have,
            ));
        }
    }
    if let Some(want) = &opts.resource_version {
        let have = meta("resourceVersion");
        if *want != have {
            return Err(ApiError::precondition_failed(
                gvr,
                ns,
                name,
                "ResourceVersion",
                want,
                &have,
            ));
        }
    }
    Ok(())
}

fn continue_key(v: &Value) -> (String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

/// How long the later pages of a paged LIST stay readable: the real API server keeps the
/// snapshot a continue token points to until etcd compacts it (every 5 minutes by default),
/// then answers 410 Expired.
const LIST_SNAPSHOT_TTL: Duration = Duration::from_secs(300);

/// The most paged LISTs kept open at once; the oldest is dropped (its token then answers 410).
const LIST_SNAPSHOTS_MAX: usize = 64;

/// One paged LIST's result, kept for its later pages.
struct ListSnapshot {
    id: u64,
    /// The resourceVersion of the first page: every page reports it.
    rv: u64,
    /// The resource and selectors it was listed with: a token only continues the same LIST.
    query: String,
    items: Arc<Vec<Arc<Value>>>,
    taken: std::time::Instant,
}

/// The open paged LISTs of one emulated cluster (see [`list`]).
#[derive(Default)]
pub(crate) struct ListSnapshots {
    next: u64,
    open: std::collections::VecDeque<ListSnapshot>,
}

impl ListSnapshots {
    fn keep(&mut self, rv: u64, query: String, items: Arc<Vec<Arc<Value>>>) -> u64 {
        self.next += 1;
        self.open.retain(|s| s.taken.elapsed() < LIST_SNAPSHOT_TTL);
        while self.open.len() >= LIST_SNAPSHOTS_MAX {
            self.open.pop_front();
        }
        self.open.push_back(ListSnapshot {
            id: self.next,
            rv,
            query,
            items,
            taken: std::time::Instant::now(),
        });
        self.next
    }

    fn find(&self, id: u64) -> Option<&ListSnapshot> {
        self.open
            .iter()
            .find(|s| s.id == id && s.taken.elapsed() < LIST_SNAPSHOT_TTL)
    }
}

/// What a continue token carries: the snapshot, and the last key served.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    snapshot: u64,
    after: (String, String),
}

/// LIST with `limit`/`continue` as the real API server pages: the first page's
/// resourceVersion is the list's, and every later page is cut from the same snapshot, so a
/// client that lists in pages and then watches from that resourceVersion misses no change
/// (objects written between two pages show up in the watch, not half in the list). A token of
/// a snapshot no longer kept answers 410 Expired, as after etcd compacted it.
fn list(
    c: &EmulatedCluster,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<(StatusCode, Value), ApiError> {
    let (l, f) = selectors(q)?;
    let query = format!(
        "{:?}|{}|{}|{}",
        rt.gvr,
        ns.unwrap_or(""),
        q.get("labelSelector").map(String::as_str).unwrap_or(""),
        q.get("fieldSelector").map(String::as_str).unwrap_or("")
    );
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (items, rv, start, snapshot) = match q.get("continue").filter(|s| !s.is_empty()) {
        Some(token) => {
            let token: ContinueToken = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            let snaps = c.list_snapshots();
            let Some(snap) = snaps.find(token.snapshot) else {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            };
            if snap.query != query {
                return Err(ApiError::bad_request(
                    "continue key is not valid: it continues a list of another resource or selector",
                ));
            }
            let start = snap
                .items
                .partition_point(|v| continue_key(v) <= token.after);
            (snap.items.clone(), snap.rv, start, Some(snap.id))
        }
        None => {
            let st = c.state();
            let items = st.list(&rt.gvr, ns, l.as_ref(), f.as_ref())?;
            (Arc::new(items), st.rv, 0, None)
        }
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    let end = match limit {
        Some(limit) if items.len() - start > limit => {
            let end = start + limit;
            // A later page continues the snapshot its token names; a first page keeps its own.
            let snapshot =
                snapshot.unwrap_or_else(|| c.list_snapshots().keep(rv, query, items.clone()));
            let token = ContinueToken {
                snapshot,
                after: continue_key(&items[end - 1]),
            };
            meta["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&token).unwrap_or_default()));
            meta["remainingItemCount"] = json!(items.len() - end);
            end
        }
        _ => items.len(),
    };
    let page: Vec<&Value> = items[start..end].iter().map(|o| o.as_ref()).collect();
    Ok((
        StatusCode::OK,
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": page}),
    ))
}

fn delete_collection(
    c: &EmulatedCluster,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &HashMap<String, String>,
    ctx: &WriteCtx,
) -> Result<(StatusCode, Value), ApiError> {
    let (l, f) = selectors(q)?;
    let mut st = c.state();
    let victims = st.list(&rt.gvr, ns, l.as_ref(), f.as_ref())?;
    let mut items = Vec::new();
    for v in victims {
        let (vns, name) = continue_key(&v);
        let vns = (!vns.is_empty()).then_some(vns);
        if let Ok((obj, changed)) = st.delete(&rt.gvr, vns.as_deref(), &name, ctx.dry_run) {
            st.audit(
                "delete",
                &rt.gvr,
                vns.as_deref(),
                &name,
                q.get("fieldManager").map(String::as_str),
                changed && !ctx.dry_run,
                ctx.dry_run,
            );
            items.push(obj);
        }
    }
    let rv = st.rv;
    Ok((
        StatusCode::OK,
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    ))
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}),
    )
}

fn obj_rv(v: &Value) -> u64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Streams watch events as newline-delimited JSON.
fn watch(
    c: &EmulatedCluster,
    rt: ResourceType,
    ns: Option<String>,
    q: &HashMap<String, String>,
) -> Response {
    let (l, f) = match selectors(q) {
        Ok(s) => s,
        Err(e) => return err_resp(e),
    };
    let ns = if rt.namespaced { ns } else { None };
    let gvr = rt.gvr.clone();
    let matches = move |g: &Gvr, o: &Value| {
        *g == gvr
            && ns
                .as_deref()
                .is_none_or(|n| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n))
            && l.as_ref().is_none_or(|l| l.matches(o))
            && f.as_ref().is_none_or(|f| f.matches(o))
    };
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let bookmarks = truthy(q, "allowWatchBookmarks");
    let send_initial = truthy(q, "sendInitialEvents");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let mut initial: Vec<Bytes> = Vec::new();
    let (brx, mut last_rv) = {
        let st = c.state();
        let brx = st.tx.subscribe();
        if send_initial || rv_param.is_empty() || rv_param == "0" {
            for (_, o) in st
                .objects()
                .range((rt.gvr.clone(), String::new(), String::new())..)
                .take_while(|((g, _, _), _)| *g == rt.gvr)
            {
                if matches(&rt.gvr, o) {
                    initial.push(event_line("ADDED", o));
                }
            }
            if send_initial {
                initial.push(bookmark(&rt, st.rv, true));
            }
            (brx, st.rv)
        } else {
            let Ok(n) = rv_param.parse::<u64>() else {
                return err_resp(ApiError::bad_request(format!(
                    "invalid resource version {rv_param:?}"
                )));
            };
            if n < st.log_floor {
                let e = ApiError::expired(format!(
                    "too old resource version: {n} ({})",
                    st.log_floor + 1
                ));
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    event_line("ERROR", &e.status_json()),
                )
                    .into_response();
            }
            for e in st.log.iter().filter(|e| e.rv > n) {
                if matches(&e.gvr, &e.object) {
                    initial.push(event_line(e.kind, &e.object));
                }
            }
            (brx, st.rv.max(n))
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    tokio::spawn(async move {
        let mut brx: broadcast::Receiver<super::ChangeEvent> = brx;
        for line in initial {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = tx.closed() => break,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(Ok(bookmark(&rt, last_rv, false))).await.is_err() { break; }
                }
                r = brx.recv() => match r {
                    Ok(ev) => {
                        let rv = obj_rv(&ev.object);
                        if rv <= last_rv { continue; }
                        last_rv = rv;
                        if matches(&ev.gvr, &ev.object) {
                            let kind = ev.kind.clone();
                            if tx.send(Ok(event_line(&kind, &ev.object))).await.is_err() { break; }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let e = ApiError::expired("watch fell behind; too old resource version");
                        let _ = tx.send(Ok(event_line("ERROR", &e.status_json()))).await;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap_or_else(|_| err_resp(ApiError::bad_request("building the watch response")))
}

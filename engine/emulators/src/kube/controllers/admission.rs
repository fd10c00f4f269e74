//! Admission of `clusters.cluster.x-k8s.io` on an emulated TKG 2.x management cluster
//! (docs/tkg2-class-based.md §4), in the real order:
//! 1. CAPI defaulting webhook `default.cluster.cluster.x-k8s.io` (CREATE, UPDATE): the class must
//!    exist **in the Cluster's namespace** (else 500 InternalError), undeclared variables are
//!    rejected (422), class variables with a top-level default are appended, nested defaults filled;
//! 2. cluster pause `clusterpause.mutating.vmware.com` (UPDATE; reinvoked after the resolver):
//!    a changed `run.tanzu.vmware.com/tkr` label pauses the Cluster;
//! 3. TKR resolver `tkr-resolver-cluster-webhook.tanzu.vmware.com`: label, `TKR_DATA`, MD
//!    overrides, `topology.version` ← Kubernetes version; 403 when nothing resolves;
//! 4. the API server's own `metadata.name` check on create (DNS-1123 subdomain, 422 without a
//!    webhook prefix);
//! 5. CAPI validation `validation.cluster.cluster.x-k8s.io`: Cluster name as a label value,
//!    removal of `spec.topology`, class, version, MachineDeployments, variables against the class
//!    schemas (the `jsonschema` crate, errors rendered as CAPI renders go-openapi's), version
//!    changes on update with build metadata (422).
//!
//! Sources: kubernetes-sigs/cluster-api v1.2 `internal/webhooks/cluster.go` (`Default`,
//! `validate`, `validateTopology`), `internal/topology/check/compatibility.go`,
//! `internal/topology/variables/cluster_variable_validation.go`, `util/version/version.go`;
//! k8s.io/apimachinery `pkg/util/validation`; docs/tkg2-class-based.md §4.
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
/// ClusterBootstrap controller unpauses (docs/tkg2-class-based.md §4 "Cluster pause on update").
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
    /// `field.TypeInvalid` (go-openapi type and format failures); renders as "Invalid value".
    TypeInvalid(Value),
    Unsupported(Value, Vec<Value>),
    Forbidden,
    /// `field.TooLongMaxLength`: no value shown.
    TooLong,
    /// `field.TooMany` (CAPI replaces the count with the variable's raw JSON).
    TooMany(Value),
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
            ErrKind::TypeInvalid(v) => (
                detail(format!("Invalid value: {}", go_value(v))),
                "FieldValueTypeInvalid",
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
            ErrKind::TooLong => (detail("Too long".into()), "FieldValueTooLong"),
            ErrKind::TooMany(v) => (
                detail(format!("Too many: {}", go_value(v))),
                "FieldValueTooMany",
            ),
        }
    }
}

/// 422 Invalid from `webhook` for Cluster `name` with `errs` (`NewInvalid` aggregate message);
/// an empty `webhook` is the API server's own validation (no "denied the request" prefix).
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
    let prefix = if webhook.is_empty() {
        String::new()
    } else {
        format!("admission webhook \"{webhook}\" denied the request: ")
    };
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("{prefix}Cluster.cluster.x-k8s.io \"{name}\" is invalid: {list}"),
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

/// Whether `v` matches CAPI's `version.KubeSemver`
/// `^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)([-0-9a-zA-Z_\.+]*)?$`
/// (kubernetes-sigs/cluster-api:util/version/version.go:30-31, stored version 0ce2fd66), which
/// the validating webhook requires of `spec.topology.version`
/// (kubernetes-sigs/cluster-api:internal/webhooks/cluster.go `validateTopology`, "version must be a
/// valid semantic version").
pub(crate) fn is_kube_semver(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let mut parts = rest.splitn(3, '.');
    let num = |p: Option<&str>| -> Option<usize> {
        let p = p?;
        let n = p.bytes().take_while(u8::is_ascii_digit).count();
        (n > 0 && (n == 1 || !p.starts_with('0'))).then_some(n)
    };
    let (Some(_), Some(_)) = (num(parts.next()), num(parts.next())) else {
        return false;
    };
    let Some(last) = parts.next() else {
        return false;
    };
    let Some(n) = num(Some(last)) else {
        return false;
    };
    last[n..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
}

/// A version as `github.com/blang/semver` parses it (`ParseTolerant`: surrounding spaces and a
/// `v` prefix dropped, a missing minor or patch counted as 0), which CAPI 1.2's webhook compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GoSemver {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<String>,
    build: Vec<String>,
}

impl std::fmt::Display for GoSemver {
    /// blang's `Version.String()`: no `v` prefix (what CAPI's `%q` messages show).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre.join("."))?;
        }
        if !self.build.is_empty() {
            write!(f, "+{}", self.build.join("."))?;
        }
        Ok(())
    }
}

impl GoSemver {
    /// (major, minor, patch).
    pub(crate) fn triple(&self) -> (u64, u64, u64) {
        (self.major, self.minor, self.patch)
    }

    /// `semver.ParseTolerant(v)`; `None` where blang returns an error.
    pub(crate) fn parse_tolerant(v: &str) -> Option<Self> {
        let v = v.trim();
        let v = v.strip_prefix('v').unwrap_or(v);
        let mut parts: Vec<String> = v.splitn(3, '.').map(str::to_string).collect();
        for p in parts.iter_mut() {
            if p.len() > 1 {
                let t = p.trim_start_matches('0');
                *p = if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("0{t}")
                } else {
                    t.to_string()
                };
            }
        }
        if parts.len() < 3 {
            if parts.last().is_some_and(|p| p.contains(['+', '-'])) {
                return None;
            }
            parts.resize(3, "0".into());
        }
        let s = parts.join(".");
        let (rest, build) = match s.split_once('+') {
            Some((r, b)) => (r, Some(b)),
            None => (s.as_str(), None),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (rest, None),
        };
        let nums: Vec<&str> = core.split('.').collect();
        if nums.len() != 3 {
            return None;
        }
        let mut n = [0u64; 3];
        for (i, p) in nums.iter().enumerate() {
            if p.is_empty()
                || !p.bytes().all(|b| b.is_ascii_digit())
                || (p.len() > 1 && p.starts_with('0'))
            {
                return None;
            }
            n[i] = p.parse().ok()?;
        }
        let idents = |s: Option<&str>, pre: bool| -> Option<Vec<String>> {
            let Some(s) = s else {
                return Some(Vec::new());
            };
            s.split('.')
                .map(|id| {
                    let ok = !id.is_empty()
                        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !(pre
                            && id.len() > 1
                            && id.starts_with('0')
                            && id.bytes().all(|b| b.is_ascii_digit()));
                    ok.then(|| id.to_string())
                })
                .collect()
        };
        Some(GoSemver {
            major: n[0],
            minor: n[1],
            patch: n[2],
            pre: idents(pre, true)?,
            build: idents(build, false)?,
        })
    }

    /// blang `Version.Compare`: major, minor, patch, then pre-release (a version without one is
    /// greater; numeric identifiers compare numerically and sort before alphanumeric ones).
    fn compare(&self, o: &Self) -> Ordering {
        let core = (self.major, self.minor, self.patch).cmp(&(o.major, o.minor, o.patch));
        if core != Ordering::Equal {
            return core;
        }
        match (self.pre.is_empty(), o.pre.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            _ => {}
        }
        for (a, b) in self.pre.iter().zip(&o.pre) {
            let c = match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                (Ok(_), Err(_)) => Ordering::Less,
                (Err(_), Ok(_)) => Ordering::Greater,
                (Err(_), Err(_)) => a.cmp(b),
            };
            if c != Ordering::Equal {
                return c;
            }
        }
        self.pre.len().cmp(&o.pre.len())
    }

    /// CAPI's `version.Compare(a, b, version.WithBuildTags())`
    /// (kubernetes-sigs/cluster-api:util/version/version.go:89-173 and `Compare`, stored version
    /// 0ce2fd66): blang's comparison, then the build identifiers left to right (numeric ones
    /// numerically, numeric before non-numeric, different non-numeric ones incomparable, the
    /// longer list greater). `None` is CAPI's 2, "different but not ordered".
    pub(crate) fn compare_with_build_tags(&self, o: &Self) -> Option<Ordering> {
        let c = self.compare(o);
        if c != Ordering::Equal {
            return Some(c);
        }
        for (a, b) in self.build.iter().zip(&o.build) {
            let num = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
            let c = match (num(a), num(b)) {
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (true, true) => {
                    let x: u64 = a.parse().unwrap_or(0);
                    let y: u64 = b.parse().unwrap_or(0);
                    x.cmp(&y)
                }
                (false, false) if a == b => Ordering::Equal,
                (false, false) => return None,
            };
            if c != Ordering::Equal {
                return Some(c);
            }
        }
        Some(self.build.len().cmp(&o.build.len()))
    }
}

/// `k8s.io/apimachinery/pkg/util/validation.RegexError`: the message, the examples and the regex.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{e}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

/// `validation.IsValidLabelValue` (k8s.io/apimachinery `pkg/util/validation/validation.go`,
/// `LabelValueMaxLength` 63, `labelValueFmt`, `labelValueErrMsg`): the error strings, empty when
/// `v` is a valid label value.
pub(crate) fn label_value_errors(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    let ok = v.is_empty()
        || (v.bytes().next().is_some_and(alnum)
            && v.bytes().last().is_some_and(alnum)
            && v.bytes()
                .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.')));
    if !ok {
        errs.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?",
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `validation.IsDNS1123Subdomain` (k8s.io/apimachinery `pkg/util/validation/validation.go`,
/// `DNS1123SubdomainMaxLength` 253), which the API server applies to `metadata.name` of every
/// custom resource (`ValidateObjectMeta` with `NameIsDNSSubdomain`): the error strings.
pub(crate) fn dns1123_subdomain_errors(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    let label_ok = |l: &str| {
        let lower = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        l.bytes().next().is_some_and(lower)
            && l.bytes().last().is_some_and(lower)
            && l.bytes().all(|c| lower(c) || c == b'-')
    };
    if !v.split('.').all(label_ok) {
        errs.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
            &["example.com"],
        ));
    }
    errs
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

/// go-openapi's `strfmt` `cidr` format (`net.ParseCIDR`): an IPv4 or IPv6 address, `/`, and a
/// decimal prefix length within the address size. The empty string is not a CIDR.
fn is_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(len) = len.parse::<u32>() else {
        return false;
    };
    if let Ok(_v4) = addr.parse::<std::net::Ipv4Addr>() {
        len <= 32
    } else if let Ok(_v6) = addr.parse::<std::net::Ipv6Addr>() {
        len <= 128
    } else {
        false
    }
}

/// The openAPIV3Schema of a variable as a JSON Schema draft 4 document: `nullable: true` adds
/// `null` to the type; `default`, `description` and `x-kubernetes-*` stay (annotations).
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let v = match k.as_str() {
                    "properties" | "patternProperties" | "definitions" => match v {
                        Value::Object(props) => Value::Object(
                            props
                                .iter()
                                .map(|(pk, pv)| (pk.clone(), to_json_schema(pv)))
                                .collect(),
                        ),
                        other => other.clone(),
                    },
                    "items" | "additionalProperties" | "not" => to_json_schema(v),
                    "allOf" | "anyOf" | "oneOf" => match v {
                        Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
                        other => other.clone(),
                    },
                    _ => v.clone(),
                };
                out.insert(k.clone(), v);
            }
            if out.get("nullable").and_then(Value::as_bool) == Some(true) {
                if let Some(t) = out.get("type").and_then(Value::as_str).map(str::to_string) {
                    out.insert("type".into(), json!([t, "null"]));
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// The go-openapi name of an instance location (`vpc.cidr`, `subnets[0].private.cidr`; empty for
/// the value itself).
fn openapi_name(loc: &jsonschema::paths::Location) -> String {
    let mut out = String::new();
    for seg in loc.iter() {
        match seg {
            jsonschema::paths::LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
            jsonschema::paths::LocationSegment::Property(p) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&p);
            }
        }
    }
    out
}

/// The JSON type name go-openapi reports for a value.
fn openapi_type_name(v: &Value) -> &'static str {
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

/// The schema node at a JSON Pointer-like instance location (for the declared `type`).
fn schema_at<'a>(schema: &'a Value, loc: &jsonschema::paths::Location) -> Option<&'a Value> {
    let mut s = schema;
    for seg in loc.iter() {
        s = match seg {
            jsonschema::paths::LocationSegment::Index(_) => s.get("items")?,
            jsonschema::paths::LocationSegment::Property(p) => s
                .get("properties")
                .and_then(|ps| ps.get(p.as_ref()))
                .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))?,
        };
    }
    Some(s)
}

/// Validates a variable `value` against its openAPIV3Schema `schema` as CAPI 1.2 does: the
/// apiextensions CR validator (`validation.ValidateCustomResource`, go-openapi), with CAPI's
/// fix-ups (kubernetes-sigs/cluster-api:internal/topology/variables/cluster_variable_validation.go
/// `ValidateClusterVariable`: every error's value is the variable's raw JSON, the detail loses
/// its leading " in body "). `path` is the field path of the value
/// (`spec.topology.variables[i].value`). Keywords are checked by the `jsonschema` crate (draft 4,
/// formats asserted, `cidr` as Go's `net.ParseCIDR`); each error is rendered with go-openapi's
/// message for that keyword. A schema the crate cannot compile is reported as the webhook's
/// internal field error.
fn schema_errors(schema: &Value, value: &Value, path: &str) -> Vec<FieldErr> {
    let raw = json!(value.to_string());
    let validator = match jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .with_format("cidr", is_cidr)
        .build(&to_json_schema(schema))
    {
        Ok(v) => v,
        Err(e) => {
            return vec![FieldErr {
                path: path.to_string(),
                kind: ErrKind::Invalid(raw),
                detail: format!("failed to create schema validator: {e}"),
            }]
        }
    };
    let mut errs = Vec::new();
    for e in validator.iter_errors(value) {
        use jsonschema::error::ValidationErrorKind as K;
        let name = openapi_name(e.instance_path());
        let field = if name.is_empty() {
            path.to_string()
        } else if name.starts_with('[') {
            format!("{path}{name}")
        } else {
            format!("{path}.{name}")
        };
        // go-openapi's "<name> in body <text>", with CAPI's trimmed prefix for the value itself.
        let body = |text: String| {
            if name.is_empty() {
                text
            } else {
                format!("{name} in body {text}")
            }
        };
        let instance = e.instance().as_ref().clone();
        let err = match e.kind() {
            K::Required { property } => {
                let prop = property.as_str().unwrap_or_default();
                FieldErr::required(
                    if field.is_empty() {
                        prop.to_string()
                    } else {
                        format!("{field}.{prop}")
                    },
                    "",
                )
            }
            K::Type { .. } => {
                let declared = schema_at(schema, e.instance_path())
                    .and_then(|s| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                FieldErr {
                    path: field,
                    kind: ErrKind::TypeInvalid(raw.clone()),
                    detail: body(format!(
                        "must be of type {declared}: {:?}",
                        openapi_type_name(&instance)
                    )),
                }
            }
            K::Format { format } => FieldErr {
                path: field,
                kind: ErrKind::TypeInvalid(raw.clone()),
                detail: body(format!(
                    "must be of type {format}: {:?}",
                    instance.as_str().unwrap_or_default()
                )),
            },
            K::Enum { options } => FieldErr {
                path: field,
                kind: ErrKind::Unsupported(
                    raw.clone(),
                    options
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|o| match o {
                            Value::String(_) => o.clone(),
                            other => json!(other.to_string()),
                        })
                        .collect(),
                ),
                detail: String::new(),
            },
            K::Minimum { limit } => FieldErr::invalid(
                field,
                raw.clone(),
                body(format!("should be greater than or equal to {limit}")),
            ),
            K::Maximum { limit } => FieldErr::invalid(
                field,
                raw.clone(),
                body(format!("should be less than or equal to {limit}")),
            ),
            K::ExclusiveMinimum { limit } => FieldErr::invalid(
                field,
                raw.clone(),
                body(format!("should be greater than {limit}")),
            ),
            K::ExclusiveMaximum { limit } => FieldErr::invalid(
                field,
                raw.clone(),
                body(format!("should be less than {limit}")),
            ),
            K::MultipleOf { .. } => FieldErr::invalid(
                field,
                raw.clone(),
                body(format!(
                    "should be a multiple of {}",
                    schema_at(schema, e.instance_path())
                        .and_then(|s| s.get("multipleOf"))
                        .map(Value::to_string)
                        .unwrap_or_default()
                )),
            ),
            K::MinLength { limit } => FieldErr::invalid(
                field,
                raw.clone(),
                body(format!("should be at least {limit} chars long")),
            ),
            K::MaxLength { limit } => FieldErr {
                path: field,
                kind: ErrKind::TooLong,
                detail: format!("may not be longer than {limit}"),
            },
            K::Pattern { pattern } => FieldErr::invalid(
                field,
                raw.clone(),
                body(format!("should match '{pattern}'")),
            ),
            K::MinItems { limit } => FieldErr::invalid(
                field,
                raw.clone(),
                body(format!("should have at least {limit} items")),
            ),
            K::MaxItems { limit } => FieldErr {
                path: field,
                kind: ErrKind::TooMany(raw.clone()),
                detail: format!("must have at most {limit} items"),
            },
            K::UniqueItems => FieldErr::invalid(
                field,
                raw.clone(),
                body("shouldn't contain duplicates".into()),
            ),
            K::MinProperties { limit } => FieldErr::invalid(
                field,
                raw.clone(),
                body(format!("should have at least {limit} properties")),
            ),
            K::MaxProperties { limit } => FieldErr::invalid(
                field,
                raw.clone(),
                body(format!("should have at most {limit} properties")),
            ),
            _ => FieldErr::invalid(field, raw.clone(), e.to_string()),
        };
        errs.push(err);
    }
    errs
}

/// Collects the fields of `v` that `schema` does not declare (CAPI ≥1.3's unknown-field check);
/// `rel` is the path inside the variable value.
fn unknown_fields(schema: &Value, v: &Value, rel: &str, unknown: &mut Vec<String>) {
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in m {
                let child_rel = if rel.is_empty() {
                    k.clone()
                } else {
                    format!("{rel}.{k}")
                };
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(ps), _) | (None, Some(ps)) => {
                        unknown_fields(ps, child, &child_rel, unknown)
                    }
                    (None, None) if !preserve => unknown.push(child_rel),
                    (None, None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, child) in items.iter().enumerate() {
                    unknown_fields(is, child, &format!("{rel}[{i}]"), unknown);
                }
            }
        }
        _ => {}
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

    /// CAPI defaulting webhook (§4 "Defaulting"; CAPI 1.2
    /// kubernetes-sigs/cluster-api:internal/webhooks/cluster.go `Default`): a missing `v` is
    /// prefixed to the version, then the class is read **from the webhook's cache** in the
    /// Cluster's namespace. Any read failure, an empty or removed class name included, is a 500
    /// `NewInternalError(errors.Wrapf(err, "Cluster %s can't be validated. ClusterClass %s can not
    /// be retrieved."))`, where the cache's not-found error names the kind
    /// (`ClusterClass.cluster.x-k8s.io "x" not found`, controller-runtime `CacheReader.Get`).
    fn default(&self, st: &State, obj: &mut Value, name: &str, ns: &str) -> Result<(), ApiError> {
        let class_name = str_at(obj, "/spec/topology/class")
            .unwrap_or("")
            .to_string();
        // CAPI adds a missing "v" prefix to the version.
        let v = str_at(obj, "/spec/topology/version").unwrap_or("");
        if !v.starts_with('v') {
            obj["spec"]["topology"]["version"] = json!(format!("v{v}"));
        }
        let found = if class_name.is_empty() {
            None
        } else {
            st.get(&gvr_cluster_class(), Some(ns), &class_name).ok()
        };
        let Some(class) = found else {
            let cause = format!(
                "Cluster {name} can't be validated. ClusterClass {class_name} can not be retrieved.: ClusterClass.cluster.x-k8s.io \"{class_name}\" not found"
            );
            let mut e = ApiError::new(
                500,
                "InternalError",
                format!(
                    "admission webhook \"{DEFAULT_WEBHOOK}\" denied the request: Internal error occurred: {cause}"
                ),
            );
            // `NewInternalError` carries only the cause's message in its details.
            e.details = json!({"causes": [{"message": cause}]});
            return Err(e);
        };
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

    /// CAPI validating webhook (§4 table; CAPI 1.2
    /// kubernetes-sigs/cluster-api:internal/webhooks/cluster.go `validate`, `validateTopology`):
    /// - the Cluster name must be a valid label value (it becomes `cluster.x-k8s.io/cluster-name`):
    ///   `metadata.name: Invalid value: "…": must be a valid label value <IsValidLabelValue error>`
    ///   (release-1.2 PR kubernetes-sigs/cluster-api#7741, 2022-12-13);
    /// - an update may not remove `spec.topology` (Forbidden "cannot be removed from an existing
    ///   Cluster");
    /// - with a topology: the class (Required "class cannot be empty"), the version
    ///   (`version.KubeSemver`), the class's existence, MachineDeployment classes and names
    ///   (internal/topology/check/compatibility.go
    ///   `MachineDeploymentTopologiesAreValidAndDefinedInClusterClass`), the variables
    ///   (internal/topology/variables/cluster_variable_validation.go), and on update "class cannot
    ///   be set on an existing Cluster", no decrease (`version.Compare(new, old, WithBuildTags())
    ///   == -1`, so `+vmware.2` → `+vmware.1` is a decrease) and no jump to old minor + 2.
    ///
    /// All errors are one 422 Invalid.
    fn validate(
        &self,
        st: &State,
        old: Option<&Value>,
        obj: &Value,
        name: &str,
        ns: &str,
    ) -> Result<(), ApiError> {
        let mut errs = Vec::new();
        for e in label_value_errors(name) {
            errs.push(FieldErr::invalid(
                "metadata.name",
                json!(name),
                format!("must be a valid label value {e}"),
            ));
        }
        if obj.pointer("/spec/topology").is_some_and(Value::is_object) {
            self.validate_topology(st, old, obj, ns, &mut errs);
        }
        if old.is_some_and(|o| o.pointer("/spec/topology").is_some_and(Value::is_object))
            && !obj.pointer("/spec/topology").is_some_and(Value::is_object)
        {
            errs.push(FieldErr::forbidden(
                "spec.topology",
                "cannot be removed from an existing Cluster",
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(invalid(VALIDATE_WEBHOOK, name, &errs))
        }
    }

    /// `validateTopology` of CAPI 1.2 (see [`Self::validate`]); appends to `errs`.
    fn validate_topology(
        &self,
        st: &State,
        old: Option<&Value>,
        obj: &Value,
        ns: &str,
        errs: &mut Vec<FieldErr>,
    ) {
        let topology = &obj["spec"]["topology"];
        let class_name = str_at(topology, "/class").unwrap_or("");
        if class_name.is_empty() {
            errs.push(FieldErr::required(
                "spec.topology.class",
                "class cannot be empty",
            ));
        }
        let version = str_at(topology, "/version").unwrap_or("");
        if !is_kube_semver(version) {
            errs.push(FieldErr::invalid(
                "spec.topology.version",
                json!(version),
                "version must be a valid semantic version",
            ));
        }
        let Some(class) = (!class_name.is_empty())
            .then(|| st.get(&gvr_cluster_class(), Some(ns), class_name).ok())
            .flatten()
        else {
            errs.push(FieldErr::invalid(
                "spec.topology.class",
                json!(name_of(obj).unwrap_or_default()),
                format!("ClusterClass with name {class_name:?} could not be found"),
            ));
            return;
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
                continue;
            }
            if seen.contains(&mname) {
                errs.push(FieldErr::invalid(
                    format!("{p}.name"),
                    json!(mname),
                    format!(
                        "name must be unique. MachineDeployment with name {mname:?} is defined more than once"
                    ),
                ));
            }
            seen.push(mname);
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
            self.validate_variable(&class, var, &format!("spec.topology.variables[{i}]"), errs);
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
                self.validate_variable(&class, ov, &p, errs);
            }
        }
        // On update.
        let Some(old) = old else { return };
        let old_class = str_at(old, "/spec/topology/class").unwrap_or("");
        if !old.pointer("/spec/topology").is_some_and(Value::is_object) || old_class.is_empty() {
            errs.push(FieldErr::forbidden(
                "spec.topology.class",
                "class cannot be set on an existing Cluster",
            ));
            return;
        }
        let old_version = str_at(old, "/spec/topology/version").unwrap_or("");
        let new_v = GoSemver::parse_tolerant(version);
        if new_v.is_none() {
            errs.push(FieldErr::invalid(
                "spec.topology.version",
                json!(version),
                "version must be a valid semantic version",
            ));
        }
        let old_v = GoSemver::parse_tolerant(old_version);
        let zero = GoSemver::parse_tolerant("0.0.0");
        if let (Some(n), Some(o)) = (&new_v, &old_v) {
            if Some(n) != zero.as_ref()
                && Some(o) != zero.as_ref()
                && n.compare_with_build_tags(o) == Some(Ordering::Less)
            {
                errs.push(FieldErr::invalid(
                    "spec.topology.version",
                    json!(version),
                    format!(
                        "version cannot be decreased from {:?} to {:?}",
                        o.to_string(),
                        n.to_string()
                    ),
                ));
            }
            let ceil = GoSemver {
                major: o.major,
                minor: o.minor + 2,
                patch: 0,
                pre: Vec::new(),
                build: Vec::new(),
            };
            if n.compare(&ceil) != Ordering::Less {
                errs.push(FieldErr::forbidden(
                    "spec.topology.version",
                    format!(
                        "version cannot be increased from {:?} to {:?}",
                        o.to_string(),
                        n.to_string()
                    ),
                ));
            }
        }
    }

    /// One variable (or MachineDeployment override) against its class schema
    /// (`ValidateClusterVariable`): undeclared names, then [`schema_errors`], then, for
    /// 2.3/2.4 (CAPI ≥1.3), undeclared fields.
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
        let found = schema_errors(schema, &value, &format!("{p}.value"));
        if !found.is_empty() {
            errs.extend(found);
            return;
        }
        let mut unknown = Vec::new();
        unknown_fields(schema, &value, "", &mut unknown);
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
    /// The chain in the API server's order: the mutating webhooks (only for a Cluster with a
    /// topology, as each of them skips one without), the API server's own `metadata.name` check
    /// on create (422 without a webhook prefix, apiserver `rest.BeforeCreate` →
    /// `ValidateObjectMeta`, which runs after mutating and before validating admission), then
    /// CAPI's validating webhook.
    fn admit(&self, st: &State, old: Option<&Value>, mut obj: Value) -> Result<Value, ApiError> {
        let name = name_of(&obj).unwrap_or_default().to_string();
        let ns = namespace_of(&obj).unwrap_or("default").to_string();
        if obj.pointer("/spec/topology").is_some_and(Value::is_object) {
            self.default(st, &mut obj, &name, &ns)?;
            self.resolve(st, &mut obj, &name, &ns)?;
            // Cluster pause, reinvoked after the resolver changed the TKR label.
            if let Some(old_tkr) = old.and_then(|o| label(o, TKR_LABEL)) {
                let new_tkr = label(&obj, TKR_LABEL).unwrap_or("").to_string();
                if !new_tkr.is_empty() && new_tkr != old_tkr {
                    obj["spec"]["paused"] = json!(true);
                    if let Some(md) = obj["metadata"].as_object_mut() {
                        let ann = md.entry("annotations").or_insert_with(|| json!({}));
                        if !ann.is_object() {
                            *ann = json!({});
                        }
                        ann[PAUSED_ANNOTATION] = json!(new_tkr);
                    }
                }
            }
        }
        if old.is_none() {
            let errs: Vec<FieldErr> = dns1123_subdomain_errors(&name)
                .into_iter()
                .map(|e| FieldErr::invalid("metadata.name", json!(name), e))
                .collect();
            if !errs.is_empty() {
                return Err(invalid("", &name, &errs));
            }
        }
        self.validate(st, old, &obj, &name, &ns)?;
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(errs: &[FieldErr]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.path, e.body().0))
            .collect()
    }

    #[test]
    fn kube_semver_is_capi_s_regex() {
        for ok in [
            "v1.25.7",
            "v1.25.7+vmware.2",
            "v1.25.7+vmware.2-tkg.1",
            "v0.0.0",
        ] {
            assert!(is_kube_semver(ok), "{ok}");
        }
        for bad in [
            "1.25.7",
            "v1.25",
            "v01.25.7",
            "latest",
            "v1.x.3",
            "v1.25.7 ",
            "v1.25.7/x",
        ] {
            assert!(!is_kube_semver(bad), "{bad}");
        }
    }

    #[test]
    fn tolerant_parsing_follows_blang_semver() {
        let v = GoSemver::parse_tolerant("v1.25.7+vmware.2-tkg.1").unwrap();
        assert_eq!(v.to_string(), "1.25.7+vmware.2-tkg.1");
        assert_eq!(
            GoSemver::parse_tolerant(" v1.25 ").unwrap().to_string(),
            "1.25.0"
        );
        assert!(GoSemver::parse_tolerant("v1.25+vmware.1").is_none());
        assert!(GoSemver::parse_tolerant("latest").is_none());
    }

    #[test]
    fn build_metadata_orders_as_capi_compares_it() {
        let p = |s: &str| GoSemver::parse_tolerant(s).unwrap();
        let lt = Some(Ordering::Less);
        assert_eq!(
            p("v1.25.7+vmware.1").compare_with_build_tags(&p("v1.25.7+vmware.2")),
            lt
        );
        assert_eq!(
            p("v1.25.7+vmware.2").compare_with_build_tags(&p("v1.25.7+vmware.10")),
            lt
        );
        // The longer build list is greater; a numeric identifier sorts before a word.
        assert_eq!(
            p("v1.25.7+vmware.2").compare_with_build_tags(&p("v1.25.7+vmware.2.1")),
            lt
        );
        assert_eq!(
            p("v1.25.7+vmware.2").compare_with_build_tags(&p("v1.25.7+vmware.x")),
            lt
        );
        // Different words are not ordered (CAPI's 2): never a decrease.
        assert_eq!(
            p("v1.25.7+tkg.1").compare_with_build_tags(&p("v1.25.7+vmware.1")),
            None
        );
        assert_eq!(
            p("v1.24.11+vmware.9").compare_with_build_tags(&p("v1.25.7+vmware.1")),
            lt
        );
        assert_eq!(
            p("v1.25.7-rc.1+vmware.9").compare_with_build_tags(&p("v1.25.7+vmware.1")),
            lt
        );
    }

    #[test]
    fn label_values_and_subdomains_follow_apimachinery() {
        assert!(label_value_errors("tkg-wc-1").is_empty());
        assert!(label_value_errors("My_Value.1").is_empty());
        let long = "a".repeat(64);
        assert_eq!(
            label_value_errors(&long),
            vec!["must be no more than 63 characters".to_string()]
        );
        assert_eq!(
            label_value_errors("-bad"),
            vec!["a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string()]
        );
        assert!(dns1123_subdomain_errors("tkg-wc.example").is_empty());
        assert_eq!(dns1123_subdomain_errors("Bad_Name").len(), 1);
        assert_eq!(dns1123_subdomain_errors("a..b").len(), 1);
        assert_eq!(dns1123_subdomain_errors(&"a".repeat(254)).len(), 1);
    }

    #[test]
    fn cidr_format_is_go_parse_cidr() {
        for ok in ["10.0.0.0/16", "10.0.0.1/32", "0.0.0.0/0", "fd00::/8"] {
            assert!(is_cidr(ok), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/16",
            "010.0.0.0/16",
            "fd00::/129",
            "x/1",
        ] {
            assert!(!is_cidr(bad), "{bad}");
        }
    }

    #[test]
    fn schema_errors_have_capi_shape() {
        let schema = json!({"type": "object", "required": ["vpc"], "properties": {
            "vpc": {"type": "object", "properties": {"cidr": {"type": "string", "format": "cidr"}}},
            "subnets": {"type": "array", "maxItems": 1, "items": {"type": "object", "properties": {
                "cidr": {"type": "string", "format": "cidr"}}}},
            "days": {"type": "integer", "minimum": 7},
            "name": {"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z]+$"},
            "cni": {"type": "string", "enum": ["antrea", "calico"]},
            "note": {"type": "string", "nullable": true}}});
        let p = "spec.topology.variables[2].value";
        let value = json!({"days": 3, "cni": "flannel", "name": "A", "subnets": [{"cidr": "10.0.1.0"}, {}]});
        let raw = format!("{:?}", value.to_string());
        let msgs = rendered(&schema_errors(&schema, &value, p));
        for want in [
            format!("{p}.vpc: Required value"),
            format!("{p}.days: Invalid value: {raw}: days in body should be greater than or equal to 7"),
            format!("{p}.cni: Unsupported value: {raw}: supported values: \"antrea\", \"calico\""),
            format!("{p}.name: Invalid value: {raw}: name in body should be at least 2 chars long"),
            format!("{p}.name: Invalid value: {raw}: name in body should match '^[a-z]+$'"),
            format!("{p}.subnets: Too many: {raw}: must have at most 1 items"),
            format!("{p}.subnets[0].cidr: Invalid value: {raw}: subnets[0].cidr in body must be of type cidr: \"10.0.1.0\""),
        ] {
            assert!(msgs.contains(&want), "missing {want}\nin {msgs:#?}");
        }
        assert_eq!(msgs.len(), 7, "{msgs:#?}");
        // nullable admits null; a wrong type at the root drops the " in body " prefix.
        assert!(schema_errors(&schema, &json!({"vpc": {}, "note": null}), p).is_empty());
        // A null where the schema is not nullable: the type and the enum both refuse it.
        assert_eq!(
            schema_errors(&schema, &json!({"vpc": {}, "cni": null}), p).len(),
            2
        );
        assert_eq!(
            rendered(&schema_errors(&json!({"type": "string"}), &json!(5), p)),
            vec![format!(
                "{p}: Invalid value: \"5\": must be of type string: \"integer\""
            )]
        );
        let long = json!({"vpc": {}, "name": "abcd"});
        assert_eq!(
            rendered(&schema_errors(&schema, &long, p)),
            vec![format!("{p}.name: Too long: may not be longer than 3")]
        );
    }

    #[test]
    fn unknown_fields_are_listed_with_their_paths() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "array", "items": {
            "type": "object", "properties": {"b": {"type": "string"}}}}}});
        let mut unknown = Vec::new();
        unknown_fields(
            &schema,
            &json!({"a": [{"b": "x", "c": 1}], "d": 2}),
            "",
            &mut unknown,
        );
        assert_eq!(unknown, vec!["a[0].c".to_string(), "d".to_string()]);
    }

    #[test]
    fn tkr_versions_order_numerically() {
        assert_eq!(
            compare_tkr_versions("v1.25.10+vmware.2-tkg.1", "v1.25.7+vmware.2-tkg.1"),
            Ordering::Greater
        );
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

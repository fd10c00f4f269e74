//! The TKG cluster configuration file: a flat YAML map `VARIABLE: value` (reference
//! `docs/tanzu-apis.md` §1.1), as `tanzu cluster create --file` takes it.

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml::Value;

use super::{Finding, Severity};

/// Largest accepted input file, in bytes (1 MiB). Larger files are rejected with `TKGOPS-PARSE`.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Rule ID of every parse error.
pub(crate) const PARSE: &str = "TKGOPS-PARSE";

/// One variable of a TKG cluster configuration file: its value as text and its 1-based line.
///
/// Scalars are normalized to text: `true` → `"true"`, `3` → `"3"`, null/empty → `""`.
/// `Debug` never shows the value (it may be a secret); use [`TkgConfig::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub struct TkgVar {
    /// The value as text (`""` means unset).
    pub value: String,
    /// 1-based line of the key in the file.
    pub line: u32,
}

impl fmt::Debug for TkgVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TkgVar")
            .field(
                "value",
                &format_args!("<{} chars>", self.value.chars().count()),
            )
            .field("line", &self.line)
            .finish()
    }
}

/// A parsed TKG cluster configuration file (reference `docs/tanzu-apis.md` §1).
///
/// `path` is the file path as given to [`parse_tkg_config`]; `vars` maps variable name to value
/// and line. `Debug` shows secret variables ([`is_secret_variable`]) as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TkgConfig {
    /// Path of the file (as given).
    pub path: String,
    /// Variables by name.
    pub vars: BTreeMap<String, TkgVar>,
}

impl fmt::Debug for TkgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vars: BTreeMap<&str, (String, u32)> = self
            .vars
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_variable(k) {
                    "<redacted>".to_string()
                } else {
                    v.value.clone()
                };
                (k.as_str(), (shown, v.line))
            })
            .collect();
        f.debug_struct("TkgConfig")
            .field("path", &self.path)
            .field("vars", &vars)
            .finish()
    }
}

impl TkgConfig {
    /// The value of variable `key`; `None` when absent or empty (TKG treats `""` as unset).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(|v| v.value.as_str())
            .filter(|v| !v.trim().is_empty())
            .map(str::trim)
    }

    /// The 1-based line of variable `key`, when present in the file (even with an empty value).
    pub fn line(&self, key: &str) -> Option<u32> {
        self.vars.get(key).map(|v| v.line).filter(|l| *l > 0)
    }

    /// Variable `key` as a boolean: `true`/`false` (YAML bool or string, case-insensitive).
    /// `None` when absent, empty or anything else (see [`TkgConfig::get`] for the raw value).
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)?.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// This file with `defaults` merged under it: a variable the file leaves unset or empty
    /// takes the default's value, with line 0 (no line in this file). Used for
    /// `managementClusters[].defaults` (docs/tkg2-class-based.md §1: workload files inherit the
    /// management cluster's settings).
    pub fn with_defaults(&self, defaults: &BTreeMap<String, String>) -> TkgConfig {
        let mut out = self.clone();
        for (k, v) in defaults {
            if self.get(k).is_none() && !v.trim().is_empty() {
                out.vars.insert(
                    k.clone(),
                    TkgVar {
                        value: v.clone(),
                        line: 0,
                    },
                );
            }
        }
        out
    }

    /// Whether variable `key` is set in the file itself (not inherited through
    /// [`TkgConfig::with_defaults`]).
    pub fn is_own(&self, key: &str) -> bool {
        self.vars.get(key).is_some_and(|v| v.line > 0)
    }

    /// All variables by name with secret values ([`is_secret_variable`]) replaced by
    /// `<redacted>` (empty secrets stay empty). Safe for comments, logs and the store.
    pub fn redacted(&self) -> BTreeMap<String, String> {
        self.vars
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_variable(k) && !v.value.is_empty() {
                    "<redacted>".to_string()
                } else {
                    v.value.clone()
                };
                (k.clone(), shown)
            })
            .collect()
    }
}

/// Whether TKG variable `name` holds a secret (password, client secret, token, credentials,
/// private key, CA bundle) whose value must never appear in findings, comments, logs or the
/// store (docs/design.md security rule 5). Case-insensitive.
///
/// Matches `*PASSWORD*`, `*SECRET*` (incl. `AWS_SECRET_ACCESS_KEY`, `*_CLIENT_SECRET`),
/// `*TOKEN*` (incl. `AWS_SESSION_TOKEN`), `*CREDENTIALS*` (e.g. `AWS_B64ENCODED_CREDENTIALS`),
/// `*_B64` (e.g. `LDAP_ROOT_CA_DATA_B64`, `AVI_CA_DATA_B64`), `*_CA_CERTIFICATE`, `*_CA_CERT`,
/// `*_CA_DATA`, `*PRIVATE_KEY*`, `AWS_ACCESS_KEY_ID`.
pub fn is_secret_variable(name: &str) -> bool {
    let n = name.trim().to_ascii_uppercase();
    const CONTAINS: &[&str] = &[
        "PASSWORD",
        "SECRET",
        "TOKEN",
        "CREDENTIALS",
        "PRIVATE_KEY",
        "PASSWD",
    ];
    const SUFFIX: &[&str] = &[
        "_B64",
        "_CA_CERTIFICATE",
        "_CA_CERT",
        "_CA_DATA",
        "_CA_BUNDLE",
    ];
    CONTAINS.iter().any(|c| n.contains(c))
        || SUFFIX.iter().any(|s| n.ends_with(s))
        || n == "AWS_ACCESS_KEY_ID"
}

/// Whether `name` is a TKG variable holding a credential that must never be committed to Git
/// (rule `TKGOPS-SECRET`): `*PASSWORD*`, `*PASSWD*`, `*SECRET*` (e.g.
/// `OIDC_IDENTITY_PROVIDER_CLIENT_SECRET`, `AWS_SECRET_ACCESS_KEY`), `*TOKEN*`,
/// `*CREDENTIALS*` (e.g. `AWS_B64ENCODED_CREDENTIALS`), `*PRIVATE_KEY*` and
/// `AWS_ACCESS_KEY_ID`. Unlike [`is_secret_variable`], CA certificates (public) are not
/// credentials.
pub fn is_credential_variable(name: &str) -> bool {
    let n = name.trim().to_ascii_uppercase();
    const CONTAINS: &[&str] = &[
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "CREDENTIALS",
        "PRIVATE_KEY",
    ];
    CONTAINS.iter().any(|c| n.contains(c)) || n == "AWS_ACCESS_KEY_ID"
}

/// TKG configuration variables known to tkgops: every variable of reference
/// `docs/tanzu-apis.md` §1.2 plus the common ones of TF `pkg/v1/providers/config_default.yaml`.
const KNOWN_VARIABLES: &[&str] = &[
    "CLUSTER_NAME",
    "CLUSTER_PLAN",
    "NAMESPACE",
    "INFRASTRUCTURE_PROVIDER",
    "CLUSTER_API_SERVER_PORT",
    "CLUSTER_CLASS",
    "TKG_IP_FAMILY",
    "TKG_CLUSTER_ROLE",
    // AWS
    "AWS_REGION",
    "AWS_SSH_KEY_NAME",
    "AWS_LOAD_BALANCER_SCHEME_INTERNAL",
    "AWS_NODE_AZ",
    "AWS_NODE_AZ_1",
    "AWS_NODE_AZ_2",
    "AWS_VPC_ID",
    "AWS_VPC_CIDR",
    "AWS_PRIVATE_NODE_CIDR",
    "AWS_PRIVATE_NODE_CIDR_1",
    "AWS_PRIVATE_NODE_CIDR_2",
    "AWS_PUBLIC_NODE_CIDR",
    "AWS_PUBLIC_NODE_CIDR_1",
    "AWS_PUBLIC_NODE_CIDR_2",
    "AWS_PRIVATE_SUBNET_ID",
    "AWS_PRIVATE_SUBNET_ID_1",
    "AWS_PRIVATE_SUBNET_ID_2",
    "AWS_PUBLIC_SUBNET_ID",
    "AWS_PUBLIC_SUBNET_ID_1",
    "AWS_PUBLIC_SUBNET_ID_2",
    "AWS_SECURITY_GROUP_APISERVER_LB",
    "AWS_SECURITY_GROUP_BASTION",
    "AWS_SECURITY_GROUP_CONTROLPLANE",
    "AWS_SECURITY_GROUP_LB",
    "AWS_SECURITY_GROUP_NODE",
    "AWS_IDENTITY_REF_KIND",
    "AWS_IDENTITY_REF_NAME",
    "AWS_CONTROL_PLANE_OS_DISK_SIZE_GIB",
    "AWS_NODE_OS_DISK_SIZE_GIB",
    "AWS_AMI_ID",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_B64ENCODED_CREDENTIALS",
    "AWS_CONTROL_PLANE_INSTANCE_PROFILE",
    "AWS_NODE_INSTANCE_PROFILE",
    // machines
    "CONTROL_PLANE_MACHINE_TYPE",
    "NODE_MACHINE_TYPE",
    "NODE_MACHINE_TYPE_1",
    "NODE_MACHINE_TYPE_2",
    "CONTROL_PLANE_MACHINE_COUNT",
    "WORKER_MACHINE_COUNT",
    "WORKER_MACHINE_COUNT_0",
    "WORKER_MACHINE_COUNT_1",
    "WORKER_MACHINE_COUNT_2",
    "WORKER_ROLLOUT_STRATEGY",
    "BASTION_HOST_ENABLED",
    "SIZE",
    "CONTROLPLANE_SIZE",
    "WORKER_SIZE",
    "OS_NAME",
    "OS_VERSION",
    "OS_ARCH",
    "CONTROL_PLANE_NODE_LABELS",
    "WORKER_NODE_LABELS",
    // autoscaler
    "ENABLE_AUTOSCALER",
    // MHC
    "ENABLE_MHC",
    "ENABLE_MHC_WORKER_NODE",
    "ENABLE_MHC_CONTROL_PLANE",
    "MHC_UNKNOWN_STATUS_TIMEOUT",
    "MHC_FALSE_STATUS_TIMEOUT",
    "MHC_MAX_UNHEALTHY_CONTROL_PLANE",
    "MHC_MAX_UNHEALTHY_WORKER_NODE",
    "NODE_STARTUP_TIMEOUT",
    // network
    "CNI",
    "CLUSTER_CIDR",
    "SERVICE_CIDR",
    "ANTREA_NO_SNAT",
    "ANTREA_TRAFFIC_ENCAP_MODE",
    "ANTREA_PROXY",
    "ANTREA_POLICY",
    "ANTREA_TRACEFLOW",
    "ANTREA_NODEPORTLOCAL",
    "ANTREA_EGRESS",
    "ANTREA_FLOWEXPORTER",
    "ANTREA_NETWORKPOLICY_STATS",
    "ANTREA_DISABLE_UDP_TUNNEL_OFFLOAD",
    // identity
    "IDENTITY_MANAGEMENT_TYPE",
    "OIDC_IDENTITY_PROVIDER_NAME",
    "OIDC_IDENTITY_PROVIDER_ISSUER_URL",
    "OIDC_IDENTITY_PROVIDER_CLIENT_ID",
    "OIDC_IDENTITY_PROVIDER_CLIENT_SECRET",
    "OIDC_IDENTITY_PROVIDER_SCOPES",
    "OIDC_IDENTITY_PROVIDER_USERNAME_CLAIM",
    "OIDC_IDENTITY_PROVIDER_GROUPS_CLAIM",
    "OIDC_IDENTITY_PROVIDER_EXTRA_PARAMS",
    "LDAP_HOST",
    "LDAP_BIND_DN",
    "LDAP_BIND_PASSWORD",
    "LDAP_USER_SEARCH_BASE_DN",
    "LDAP_USER_SEARCH_FILTER",
    "LDAP_USER_SEARCH_USERNAME",
    "LDAP_USER_SEARCH_NAME_ATTRIBUTE",
    "LDAP_GROUP_SEARCH_BASE_DN",
    "LDAP_GROUP_SEARCH_FILTER",
    "LDAP_GROUP_SEARCH_USER_ATTRIBUTE",
    "LDAP_GROUP_SEARCH_GROUP_ATTRIBUTE",
    "LDAP_GROUP_SEARCH_NAME_ATTRIBUTE",
    "LDAP_ROOT_CA_DATA_B64",
    "CERT_DURATION",
    "CERT_RENEW_BEFORE",
    // registry and proxy
    "TKG_CUSTOM_IMAGE_REPOSITORY",
    "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY",
    "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE",
    "TKG_HTTP_PROXY",
    "TKG_HTTPS_PROXY",
    "TKG_NO_PROXY",
    "TKG_PROXY_CA_CERT",
    "TKG_HTTP_PROXY_ENABLED",
    // misc
    "ENABLE_AUDIT_LOGGING",
    "ENABLE_CEIP_PARTICIPATION",
    "ENABLE_DEFAULT_STORAGE_CLASS",
    "TMC_REGISTRATION_URL",
    "DEPLOY_TKG_ON_VSPHERE7",
    "ENABLE_TKGS_ON_VSPHERE7",
    "CORE_DNS_IP",
    "ENABLE_CLUSTER_OPTIONS",
    "ADDITIONAL_IMAGE_REGISTRY_1",
    "ADDITIONAL_IMAGE_REGISTRY_2",
    "ADDITIONAL_IMAGE_REGISTRY_3",
    "NTP_SERVERS",
    "ENABLE_SERVING_CERTS",
    "PROTECT_KERNEL_DEFAULTS",
    "CONTROLPLANE_CERTIFICATE_ROTATION_ENABLED",
    "CONTROLPLANE_CERTIFICATE_ROTATION_DAYS_BEFORE",
    "TKG_CLUSTER_ROLE",
    "ENABLE_POD_SECURITY_STANDARD",
    // TKG 2.x (docs/tkg2-class-based.md §2)
    "ETCD_EXTRA_ARGS",
    "APISERVER_EXTRA_ARGS",
    "KUBE_SCHEDULER_EXTRA_ARGS",
    "KUBE_CONTROLLER_MANAGER_EXTRA_ARGS",
    "CONTROLPLANE_KUBELET_EXTRA_ARGS",
    "WORKER_KUBELET_EXTRA_ARGS",
    "APISERVER_EVENT_RATE_LIMIT_CONF_BASE64",
    "AWS_CLUSTER_CLASS_VERSION",
    "KUBERNETES_RELEASE",
    "PACKAGE_INSTALL_TIMEOUT",
    "ALLOW_LEGACY_CLUSTER",
    "NODE_IPAM_IP_POOL_NAME",
    "CLUSTER_ANNOTATIONS",
    "MACHINE_HEALTH_CHECK_ENABLED",
    "TKG_PROXY_SYSTEM_WIDE",
];

/// Prefixes of whole TKG variable families known to tkgops (autoscaler tuning, other providers'
/// variables — those are reported by `TKGOPS-PROVIDER` instead —, NSX ALB, Antrea, Pinniped).
const KNOWN_PREFIXES: &[&str] = &[
    "AUTOSCALER_",
    "VSPHERE_",
    "AVI_",
    "AZURE_",
    "NSXT_",
    "ANTREA_",
    "PINNIPED_",
    "DOCKER_",
    "CUSTOM_TDNF_",
    "ADDITIONAL_IMAGE_REGISTRY_",
    "POD_SECURITY_STANDARD_",
];

/// Whether `name` is a TKG configuration variable known to tkgops (rule `TKGOPS-UNKNOWN-VAR`):
/// reference `docs/tanzu-apis.md` §1.2 plus the common variables of TF `config_default.yaml` and the
/// variable families of other providers (`VSPHERE_*`, `AVI_*`, `AZURE_*`) and the autoscaler.
pub fn is_known_variable(name: &str) -> bool {
    KNOWN_VARIABLES.contains(&name) || KNOWN_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn parse_error(path: &str, line: Option<u32>, message: impl Into<String>) -> Finding {
    Finding::new(path, line, PARSE, Severity::Error, message)
}

/// Checks size, encoding and NUL bytes of a file given as `bytes`; returns the text.
///
/// Errors (`TKGOPS-PARSE`): larger than [`MAX_CONFIG_BYTES`]; not UTF-8 or containing NUL
/// ("binary file").
pub(crate) fn decode_text<'a>(path: &str, bytes: &'a [u8]) -> Result<&'a str, Finding> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(parse_error(
            path,
            None,
            format!(
                "file is {} bytes, larger than the {} byte (1 MiB) limit",
                bytes.len(),
                MAX_CONFIG_BYTES
            ),
        ));
    }
    if bytes.contains(&0) {
        return Err(parse_error(
            path,
            None,
            "binary file (contains NUL bytes); expected YAML text",
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        parse_error(
            path,
            None,
            "binary file (not valid UTF-8); expected YAML text",
        )
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Parses YAML text into one document, mapping serde_yaml errors to `TKGOPS-PARSE` findings
/// (line from the error location). Rejects multi-document input and empty documents.
pub(crate) fn parse_yaml_document(path: &str, text: &str) -> Result<Value, Finding> {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Null) => Err(parse_error(
            path,
            None,
            "file is empty (no YAML content, only comments or blanks)",
        )),
        Ok(v) => Ok(v),
        Err(e) => Err(yaml_error(path, &e)),
    }
}

/// Maps a serde_yaml error to a `TKGOPS-PARSE` finding with its line.
pub(crate) fn yaml_error(path: &str, e: &serde_yaml::Error) -> Finding {
    let line = e
        .location()
        .and_then(|l| u32::try_from(l.line()).ok())
        .filter(|l| *l > 0);
    let raw = e.to_string();
    let message = if raw.contains("more than one document") {
        "multiple YAML documents ('---') in one file; expected a single document".to_string()
    } else if raw.contains("recursion limit exceeded") {
        "YAML nesting is too deep (recursion limit exceeded)".to_string()
    } else {
        // Strip serde_yaml's own " at line L column C" suffix: the line is in the finding.
        let msg = match raw.find(" at line ") {
            Some(i) => raw[..i].to_string(),
            None => raw,
        };
        format!("invalid YAML: {msg}")
    };
    parse_error(path, line, message)
}

/// Top-level keys at column 0 with their 1-based lines, in file order (serde_yaml gives no
/// spans). Skips comments, blank lines, document markers, indented and sequence lines.
pub(crate) fn top_level_key_lines(text: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let first = match line.chars().next() {
            Some(c) => c,
            None => continue,
        };
        if first.is_whitespace() || matches!(first, '#' | '-' | '[' | '{' | '|' | '>' | '%' | '.') {
            continue;
        }
        if let Some(key) = split_key(line) {
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            out.push((key, n));
        }
    }
    out
}

/// The key of a `key: value` line (quotes removed), if the line has that shape.
fn split_key(line: &str) -> Option<String> {
    let (key, rest) = if let Some(q) = line.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = line[1..].find(q)? + 1;
        (line[1..end].to_string(), &line[end + 1..])
    } else {
        // A plain key ends at the first ": " or ":" at end of line.
        let mut idx = None;
        let b = line.as_bytes();
        for (j, c) in b.iter().enumerate() {
            if *c == b':' && (j + 1 == b.len() || b[j + 1] == b' ' || b[j + 1] == b'\t') {
                idx = Some(j);
                break;
            }
            if *c == b'#' && j > 0 && b[j - 1] == b' ' {
                return None;
            }
        }
        let j = idx?;
        (line[..j].trim_end().to_string(), &line[j..])
    };
    let rest = rest.trim_start();
    if rest.starts_with(':') {
        Some(key)
    } else {
        None
    }
}

/// Renders a YAML scalar as TKG variable text; `None` for maps, sequences and tagged values.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(String::new()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Tagged(t) => scalar_text(&t.value),
        Value::Sequence(_) | Value::Mapping(_) => None,
    }
}

/// Parses a TKG cluster configuration file (reference `docs/tanzu-apis.md` §1.1) from `bytes`;
/// `path` is only used in findings and stored in [`TkgConfig::path`].
///
/// Accepts strings, bools, ints, floats, null/empty and block scalars; records each key's
/// 1-based line. Errors (one `TKGOPS-PARSE` [`Finding`] with the line when known): larger than
/// 1 MiB, binary (NUL / not UTF-8), invalid YAML (line from serde_yaml), several documents,
/// empty or comments only, top level not a map, a map or list as a value, a non-scalar key, a
/// duplicate key (line of the second occurrence), nesting beyond serde_yaml's recursion limit.
/// Never includes a variable's value in the message.
pub fn parse_tkg_config(path: &str, bytes: &[u8]) -> Result<TkgConfig, Finding> {
    let text = decode_text(path, bytes)?;
    let key_lines = top_level_key_lines(text);
    let mut first_line: BTreeMap<&str, u32> = BTreeMap::new();
    for (k, l) in &key_lines {
        if let Some(prev) = first_line.get(k.as_str()) {
            return Err(parse_error(
                path,
                Some(*l),
                format!("duplicate variable {k} (first defined on line {prev})"),
            ));
        }
        first_line.insert(k, *l);
    }
    let doc = parse_yaml_document(path, text)?;
    let map = match doc {
        Value::Mapping(m) => m,
        other => {
            let kind = match other {
                Value::Sequence(_) => "a list",
                Value::Mapping(_) => "a map",
                _ => "a scalar",
            };
            return Err(parse_error(
                path,
                Some(1),
                format!("top level is {kind}; expected a flat map of VARIABLE: value"),
            ));
        }
    };
    let mut vars = BTreeMap::new();
    for (k, v) in map {
        let key = match scalar_text(&k) {
            Some(s) if !s.is_empty() => s,
            _ => {
                return Err(parse_error(
                    path,
                    None,
                    "a key is not a plain scalar variable name",
                ))
            }
        };
        let line = first_line.get(key.as_str()).copied();
        let value = match scalar_text(&v) {
            Some(s) => s,
            None => {
                let kind = if v.is_sequence() { "a list" } else { "a map" };
                return Err(parse_error(
                    path,
                    line,
                    format!(
                        "variable {key}: value is {kind}; TKG variables take scalar values only"
                    ),
                ));
            }
        };
        if vars.contains_key(&key) {
            return Err(parse_error(path, line, format!("duplicate variable {key}")));
        }
        vars.insert(
            key,
            TkgVar {
                value,
                line: line.unwrap_or(0),
            },
        );
    }
    Ok(TkgConfig {
        path: path.to_string(),
        vars,
    })
}

//! JSON Schemas (draft-07, what editors' YAML language servers read) of tkgops's three YAML
//! files, derived from their Rust types with `schemars`, and the configuration reference
//! tables of README.md generated from them:
//!
//! - `schemas/tkgops.schema.json`: the config repository's `tkgops.yaml`
//!   ([`tkgops_domain::request::RepoConfig`]);
//! - `schemas/cluster-tkgops.schema.json`: a cluster's `clusters/<name>/tkgops.yaml`
//!   ([`tkgops_domain::request::ClusterSettings`]);
//! - `schemas/bot-config.schema.json`: the bot configuration of `tkgops serve --config`
//!   ([`crate::BotConfig`]).
//!
//! The committed files are checked against [`schema_files`] by the `cli` tests
//! (`tests/cli/schemas.rs`); `TKGOPS_UPDATE_SCHEMAS=1 cargo test -p tkgops --test cli schemas`
//! rewrites them and README's tables.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::Value;

/// The repository directory holding the schema files.
pub const SCHEMA_DIR: &str = "schemas";

/// One generated schema file.
#[derive(Clone, Debug, PartialEq)]
pub struct SchemaFile {
    /// File name under [`SCHEMA_DIR`] (`tkgops.schema.json`).
    pub file_name: &'static str,
    /// The YAML file it describes, as README names it (`tkgops.yaml`).
    pub describes: &'static str,
    /// The schema.
    pub schema: Value,
}

impl SchemaFile {
    /// The file's text: pretty-printed JSON, two-space indented, with a final newline.
    pub fn text(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.schema).expect("a schema serializes");
        s.push('\n');
        s
    }
}

/// The three schemas, in README order.
pub fn schema_files() -> Vec<SchemaFile> {
    vec![
        SchemaFile {
            file_name: "tkgops.schema.json",
            describes: "tkgops.yaml",
            schema: schema_of::<tkgops_domain::request::RepoConfig>(
                "tkgops.yaml",
                "The config repository's settings (tkgops.yaml at its root; read from the default branch only). Unknown keys are errors.",
            ),
        },
        SchemaFile {
            file_name: "cluster-tkgops.schema.json",
            describes: "clusters/<name>/tkgops.yaml",
            schema: schema_of::<tkgops_domain::request::ClusterSettings>(
                "clusters/<name>/tkgops.yaml",
                "tkgops's settings for one cluster of the config repository (clusters/<name>/tkgops.yaml, beside its cluster-config.yaml). Unknown keys are errors.",
            ),
        },
        SchemaFile {
            file_name: "bot-config.schema.json",
            describes: "the bot configuration",
            schema: schema_of::<crate::BotConfig>(
                "tkgops bot configuration",
                "The configuration file of `tkgops serve --config FILE`. Credentials are never in it: it names the variables or files holding them. Unknown keys are errors.",
            ),
        },
    ]
}

fn schema_of<T: JsonSchema>(title: &str, description: &str) -> Value {
    let schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>();
    let mut v = schema.to_value();
    tidy(&mut v);
    if let Value::Object(o) = &mut v {
        o.insert("title".into(), title.into());
        o.insert("description".into(), description.into());
    }
    v
}

/// Descriptions come from doc comments: rustdoc's intra-doc link brackets (`` [`X`] ``) are
/// dropped, so editors show `` `X` ``.
fn tidy(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                match child {
                    Value::String(s) if k == "description" => {
                        *s = field_names(&s.replace("[`", "`").replace("`]", "`"));
                    }
                    _ => tidy(child),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// `` `Type::snake_field` `` (a Rust path in a doc comment) as the YAML key, `` `snakeField` ``.
fn field_names(text: &str) -> String {
    let parts: Vec<&str> = text.split('`').collect();
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('`');
        }
        let rust_path = i % 2 == 1
            && part.split_once("::").is_some_and(|(ty, field)| {
                ty.starts_with(|c: char| c.is_ascii_uppercase())
                    && !field.is_empty()
                    && field.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
        if rust_path {
            let field = part.rsplit("::").next().unwrap_or(part);
            let mut upper = false;
            for c in field.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.push(c.to_ascii_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
        } else {
            out.push_str(part);
        }
    }
    out
}

/// One key of a schema, for the reference tables.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRow {
    /// Dotted path (`managementClusters[].kubeconfig.secret.key`).
    pub path: String,
    /// The JSON type(s) or allowed values.
    pub kind: String,
    /// Whether the key is required in its object.
    pub required: bool,
    /// The default, compact JSON, when the schema has one.
    pub default: Option<String>,
    /// The description (one line).
    pub description: String,
}

/// Every key of `schema`, depth first in declaration order: properties of objects, of list
/// items (`key[].`) and of each `oneOf`/`anyOf` branch.
pub fn key_rows(schema: &Value) -> Vec<KeyRow> {
    let mut out = Vec::new();
    walk(schema, schema, "", &mut out);
    out
}

/// `s`, or the definition it names (`$ref`, or an `allOf` of one `$ref` as schemars writes
/// a reference with a description in draft-07).
fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    if let Some(Value::Array(all)) = s.get("allOf") {
        if let [only] = all.as_slice() {
            return resolve(root, only);
        }
    }
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/definitions/")
            .and_then(|name| root.get("definitions")?.get(name))
            .unwrap_or(s),
        None => s,
    }
}

/// The non-null branches of `s`: itself, or those of its `anyOf`/`oneOf`/`allOf`.
fn branches<'a>(root: &'a Value, s: &'a Value) -> Vec<&'a Value> {
    let s = resolve(root, s);
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(items)) = s.get(key) {
            if s.get("properties").is_none() {
                return items
                    .iter()
                    .map(|i| resolve(root, i))
                    .filter(|i| i.get("type") != Some(&Value::String("null".into())))
                    .collect();
            }
        }
    }
    vec![s]
}

fn walk(root: &Value, s: &Value, prefix: &str, out: &mut Vec<KeyRow>) {
    let s = resolve(root, s);
    let mut objects = vec![s];
    if let Some(Value::Array(items)) = s.get("oneOf").or_else(|| s.get("anyOf")) {
        objects.extend(items.iter().map(|i| resolve(root, i)));
    }
    for obj in objects {
        let Some(Value::Object(props)) = obj.get("properties") else {
            continue;
        };
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (name, sub) in props {
            let path = format!("{prefix}{name}");
            out.push(KeyRow {
                path: path.clone(),
                kind: kind_of(root, sub),
                required: required.contains(&name.as_str()),
                default: sub
                    .get("default")
                    .or_else(|| resolve(root, sub).get("default"))
                    .filter(|d| !d.is_null())
                    .map(|d| d.to_string()),
                description: description_of(root, sub),
            });
            for b in branches(root, sub) {
                if b.get("properties").is_some() || b.get("oneOf").is_some() {
                    walk(root, b, &format!("{path}."), out);
                }
                if let Some(items) = b.get("items") {
                    for i in branches(root, items) {
                        if i.get("properties").is_some() {
                            walk(root, i, &format!("{path}[]."), out);
                        }
                    }
                }
            }
        }
    }
}

fn description_of(root: &Value, s: &Value) -> String {
    let d = s
        .get("description")
        .or_else(|| resolve(root, s).get("description"))
        .and_then(Value::as_str)
        .unwrap_or("");
    d.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn kind_of(root: &Value, s: &Value) -> String {
    let r = resolve(root, s);
    if let Some(Value::Array(vals)) = r.get("enum") {
        return vals
            .iter()
            .map(|v| match v {
                Value::String(s) => format!("`{s}`"),
                other => format!("`{other}`"),
            })
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(Value::Array(items)) = r.get("oneOf") {
        let consts: Vec<String> = items
            .iter()
            .filter_map(|i| i.get("const"))
            .map(|c| match c {
                Value::String(s) => format!("`{s}`"),
                other => format!("`{other}`"),
            })
            .collect();
        if !consts.is_empty() && consts.len() == items.len() {
            return consts.join(" \\| ");
        }
    }
    if r.get("deprecated") == Some(&Value::Bool(true)) {
        return "any (deprecated)".into();
    }
    let mut kinds: Vec<String> = Vec::new();
    let mut push = |k: String| {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    };
    let types: Vec<&str> = match r.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    for t in types {
        match t {
            "null" => {}
            "array" => {
                let item = r.get("items").map(|i| kind_of(root, i)).unwrap_or_default();
                push(format!("list of {item}"));
            }
            "object" if r.get("properties").is_none() && r.get("oneOf").is_none() => {
                match r.get("additionalProperties") {
                    Some(Value::Bool(false)) | None => push("map".into()),
                    Some(v) => push(format!("map of {}", kind_of(root, v))),
                }
            }
            t => push(t.to_string()),
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(items)) = r.get(key) {
            for i in items {
                let ri = resolve(root, i);
                if ri.get("type") == Some(&Value::String("null".into())) {
                    continue;
                }
                let k = if ri.get("properties").is_some() {
                    "object".to_string()
                } else {
                    kind_of(root, i)
                };
                push(k);
            }
        }
    }
    if kinds.is_empty() {
        "any".into()
    } else {
        kinds.join(" or ")
    }
}

/// The Markdown reference table of `schema`'s keys (key, type, required/default, description).
pub fn reference_table(schema: &Value) -> String {
    let mut s = String::from("| key | type | default | description |\n|---|---|---|---|\n");
    for row in key_rows(schema) {
        let default = match (&row.default, row.required) {
            (_, true) => "required".to_string(),
            (Some(d), false) => format!("`{d}`"),
            (None, false) => String::new(),
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            row.path,
            row.kind,
            default.replace('|', "\\|"),
            row.description.replace('|', "\\|"),
        ));
    }
    s
}

/// Marker lines around the generated reference table of `file` in README.md.
pub fn readme_markers(file: &SchemaFile) -> (String, String) {
    (
        format!(
            "<!-- BEGIN generated from schemas/{} (TKGOPS_UPDATE_SCHEMAS=1) -->",
            file.file_name
        ),
        format!("<!-- END generated from schemas/{} -->", file.file_name),
    )
}

/// `readme` with the text between each schema's markers replaced by its generated reference
/// table. Errors: the markers of a schema are missing or out of order.
pub fn update_readme(readme: &str, files: &[SchemaFile]) -> Result<String, String> {
    let mut out = readme.to_string();
    for f in files {
        let (begin, end) = readme_markers(f);
        let b = out
            .find(&begin)
            .ok_or_else(|| format!("README.md lacks the line {begin}"))?;
        let e = out
            .find(&end)
            .filter(|e| *e > b)
            .ok_or_else(|| format!("README.md lacks the line {end} after {begin}"))?;
        let table = reference_table(&f.schema);
        out.replace_range(b + begin.len()..e, &format!("\n{table}"));
    }
    Ok(out)
}

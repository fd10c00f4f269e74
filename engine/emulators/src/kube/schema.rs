//! Type schemas: what `fieldValidation` checks writes against and what `/openapi/v3` serves.
//!
//! - Built-in kinds: the OpenAPI schemas k8s-openapi (feature `v1_33`, `schemars`) generates
//!   from Kubernetes's own OpenAPI spec, descriptions included, collected with schemars's
//!   OpenAPI 3 settings (`$ref: #/components/schemas/io.k8s.api.core.v1.ConfigMap`, a `$ref`
//!   with siblings wrapped in `allOf`, as the API server writes them).
//! - Custom resources: the `openAPIV3Schema` of the CRD version (with `metadata` checked as
//!   `ObjectMeta`, as the API server decodes it), when a CRD object declares one.
//!
//! [`prune`] walks an object against a schema and removes what the schema does not declare, as
//! the API server's strict decoding (built-ins) and structural pruning (custom resources) do.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::api::{apps, coordination, core, networking, rbac};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Resource;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use super::Gvr;

/// Name of ObjectMeta's schema in `components.schemas`.
pub(crate) const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The built-in kinds' schemas: every definition, and the definition of each served kind.
pub(crate) struct Builtins {
    /// `components.schemas` of all built-in kinds (and everything they reference).
    pub defs: Map<String, Value>,
    /// Definition name of each built-in kind, by group/version/plural.
    pub by_gvr: BTreeMap<Gvr, String>,
}

fn add<T: JsonSchema + Resource>(
    g: &mut schemars::SchemaGenerator,
    by_gvr: &mut BTreeMap<Gvr, String>,
) {
    g.subschema_for::<T>();
    by_gvr.insert(
        Gvr::new(T::GROUP, T::VERSION, T::URL_PATH_SEGMENT),
        T::schema_name().into_owned(),
    );
}

/// The schemas of the built-in kinds every emulated cluster serves (see `builtin_types`),
/// generated once. Each kind's definition carries `x-kubernetes-group-version-kind`, which is
/// how `kubectl explain` finds it.
pub(crate) fn builtins() -> &'static Builtins {
    static B: OnceLock<Builtins> = OnceLock::new();
    B.get_or_init(|| {
        let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
        let mut by_gvr = BTreeMap::new();
        add::<core::v1::Namespace>(&mut g, &mut by_gvr);
        add::<core::v1::Secret>(&mut g, &mut by_gvr);
        add::<core::v1::ConfigMap>(&mut g, &mut by_gvr);
        add::<core::v1::ServiceAccount>(&mut g, &mut by_gvr);
        add::<core::v1::Service>(&mut g, &mut by_gvr);
        add::<core::v1::Pod>(&mut g, &mut by_gvr);
        add::<core::v1::Node>(&mut g, &mut by_gvr);
        add::<core::v1::Event>(&mut g, &mut by_gvr);
        add::<rbac::v1::ClusterRole>(&mut g, &mut by_gvr);
        add::<rbac::v1::ClusterRoleBinding>(&mut g, &mut by_gvr);
        add::<rbac::v1::Role>(&mut g, &mut by_gvr);
        add::<rbac::v1::RoleBinding>(&mut g, &mut by_gvr);
        add::<apps::v1::Deployment>(&mut g, &mut by_gvr);
        add::<apps::v1::DaemonSet>(&mut g, &mut by_gvr);
        add::<apps::v1::StatefulSet>(&mut g, &mut by_gvr);
        add::<core::v1::PersistentVolumeClaim>(&mut g, &mut by_gvr);
        add::<networking::v1::NetworkPolicy>(&mut g, &mut by_gvr);
        add::<networking::v1::Ingress>(&mut g, &mut by_gvr);
        add::<coordination::v1::Lease>(&mut g, &mut by_gvr);
        add::<apiext::CustomResourceDefinition>(&mut g, &mut by_gvr);
        g.subschema_for::<ObjectMeta>();
        let mut defs = g.take_definitions(true);
        for (gvr, name) in &by_gvr {
            let kind = name.rsplit('.').next().unwrap_or(name).to_string();
            if let Some(d) = defs.get_mut(name).and_then(Value::as_object_mut) {
                d.insert(
                    "x-kubernetes-group-version-kind".into(),
                    json!([{"group": gvr.group, "version": gvr.version, "kind": kind}]),
                );
            }
        }
        Builtins { defs, by_gvr }
    })
}

/// A schema to check objects of one type against: the root schema and the definitions its
/// `$ref`s point into.
#[derive(Clone, Debug)]
pub(crate) struct TypeSchema {
    /// The root schema of the type.
    pub root: Value,
}

impl TypeSchema {
    /// The schema of a built-in kind, if `gvr` is one.
    pub(crate) fn builtin(gvr: &Gvr) -> Option<TypeSchema> {
        let name = builtins().by_gvr.get(gvr)?;
        Some(TypeSchema {
            root: json!({"$ref": format!("#/components/schemas/{name}")}),
        })
    }

    /// The schema of a custom resource from its CRD version's `openAPIV3Schema` (`None`
    /// without one): `apiVersion`, `kind` and `metadata` (as ObjectMeta) are always declared.
    pub(crate) fn custom(open_api_v3_schema: &Value) -> Option<TypeSchema> {
        let mut root = open_api_v3_schema.clone();
        let m = root.as_object_mut()?;
        let props = m
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()?;
        props.insert("apiVersion".into(), json!({"type": "string"}));
        props.insert("kind".into(), json!({"type": "string"}));
        props.insert(
            "metadata".into(),
            json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}]}),
        );
        Some(TypeSchema { root })
    }
}

/// Follows `$ref` (and an `allOf` of one `$ref`, the API server's form of a described
/// reference) into the built-in definitions.
fn resolve(schema: &Value) -> &Value {
    let mut s = schema;
    for _ in 0..8 {
        let target = s.get("$ref").and_then(Value::as_str).or_else(|| {
            match s.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
                Some([one]) => one.get("$ref").and_then(Value::as_str),
                _ => None,
            }
        });
        let Some(name) = target.and_then(|r| r.strip_prefix("#/components/schemas/")) else {
            return s;
        };
        match builtins().defs.get(name) {
            Some(d) => s = d,
            None => return s,
        }
    }
    s
}

/// Removes from `obj` every field `schema` does not declare and returns their paths
/// (`spec.foo`, `spec.items[0].bar`: the form of the API server's `unknown field "…"`),
/// sorted. An object schema declares its `properties`; `additionalProperties` declares any
/// key with that value schema; `x-kubernetes-preserve-unknown-fields: true` keeps unknown
/// keys; an object schema with neither `properties` nor `additionalProperties` keeps
/// everything (a leniency for CRD schemas, where the API server would prune it all).
pub(crate) fn prune(schema: &TypeSchema, obj: &mut Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(&schema.root, obj, "", &mut out);
    out.sort();
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(schema: &Value, v: &mut Value, path: &str, out: &mut Vec<String>) {
    let s = resolve(schema);
    match v {
        Value::Object(m) => {
            let preserve = s
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && additional.is_none() {
                return;
            }
            let mut unknown = Vec::new();
            for (k, child) in m.iter_mut() {
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(cs), _) | (None, Some(cs)) => walk(cs, child, &join(path, k), out),
                    (None, None) if preserve => {}
                    (None, None) => unknown.push(k.clone()),
                }
            }
            for k in unknown {
                m.remove(&k);
                out.push(join(path, &k));
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, child) in a.iter_mut().enumerate() {
                    walk(items, child, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The definitions `roots` reference, transitively (names in `components.schemas`).
pub(crate) fn reachable(roots: &[&Value]) -> Map<String, Value> {
    let defs = &builtins().defs;
    let mut out = Map::new();
    let mut todo: Vec<String> = Vec::new();
    fn refs(v: &Value, todo: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    if let Some(n) = r.strip_prefix("#/components/schemas/") {
                        todo.push(n.to_string());
                    }
                }
                m.values().for_each(|c| refs(c, todo));
            }
            Value::Array(a) => a.iter().for_each(|c| refs(c, todo)),
            _ => {}
        }
    }
    for r in roots {
        refs(r, &mut todo);
    }
    while let Some(n) = todo.pop() {
        if out.contains_key(&n) {
            continue;
        }
        if let Some(d) = defs.get(&n) {
            refs(d, &mut todo);
            out.insert(n, d.clone());
        }
    }
    out
}

/// The paths of the keys a JSON body repeats in one object (`data.a`, `spec.items[0].b`), as
/// the API server's strict JSON decoding reports them (`duplicate field "data.a"`). Empty when
/// the body is not JSON (YAML bodies are not checked).
pub(crate) fn duplicate_fields(body: &[u8]) -> Vec<String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;

    struct Seed<'a> {
        path: String,
        out: &'a RefCell<Vec<String>>,
    }
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen = std::collections::BTreeSet::new();
            while let Some(k) = m.next_key::<String>()? {
                let path = join(&self.path, &k);
                if !seen.insert(k) {
                    self.out.borrow_mut().push(path.clone());
                }
                m.next_value_seed(Seed {
                    path,
                    out: self.out,
                })?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            let mut i = 0;
            while s
                .next_element_seed(Seed {
                    path: format!("{}[{i}]", self.path),
                    out: self.out,
                })?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
    }
    let out = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(body);
    if (Seed {
        path: String::new(),
        out: &out,
    })
    .deserialize(&mut de)
    .is_err()
    {
        return Vec::new();
    }
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_schemas_prune_unknown_fields() {
        let s = TypeSchema::builtin(&Gvr::new("", "v1", "configmaps")).expect("ConfigMap");
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": {"x": "y"}, "bogus": 1,
                "managedFields": [{"manager": "m", "fieldsV1": {"f:data": {}}, "nope": true}]},
            "data": {"k": "v"}, "spec": {"foo": 1}});
        assert_eq!(
            prune(&s, &mut cm),
            vec!["metadata.bogus", "metadata.managedFields[0].nope", "spec"]
        );
        assert_eq!(
            cm,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "labels": {"x": "y"},
                    "managedFields": [{"manager": "m", "fieldsV1": {"f:data": {}}}]},
                "data": {"k": "v"}})
        );
        let d = TypeSchema::builtin(&Gvr::new("apps", "v1", "deployments")).unwrap();
        let mut dep =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "imagee": "x"}]}}}});
        assert_eq!(
            prune(&d, &mut dep),
            vec!["spec.template.spec.containers[0].imagee"]
        );
    }

    #[test]
    fn duplicate_keys_are_found_with_their_paths() {
        assert_eq!(
            duplicate_fields(br#"{"data": {"a": "1", "a": "2"}, "kind": "x", "kind": "y", "l": [{"b": 1, "b": 2}]}"#),
            vec!["data.a", "kind", "l[0].b"]
        );
        assert!(duplicate_fields(b"kind: x\nkind: y\n").is_empty());
        assert!(duplicate_fields(br#"{"a": {"b": 1}, "b": 2}"#).is_empty());
    }

    #[test]
    fn crd_schemas_prune_but_preserve_where_declared() {
        let s = TypeSchema::custom(&json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "a": {"type": "string"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "vars": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "value": {"x-kubernetes-preserve-unknown-fields": true}}}}}}}}))
        .unwrap();
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "nope": 1},
            "spec": {"a": "b", "foo": 1, "free": {"anything": {"x": 1}},
                "vars": [{"name": "v", "value": {"deep": 1}, "extra": 2}]}, "status": {}});
        assert_eq!(
            prune(&s, &mut o),
            vec!["metadata.nope", "spec.foo", "spec.vars[0].extra", "status"]
        );
        assert_eq!(o["spec"]["free"], json!({"anything": {"x": 1}}));
        assert_eq!(
            o["spec"]["vars"][0],
            json!({"name": "v", "value": {"deep": 1}})
        );
    }
}

//! Label and field selectors as the API server parses them from `?labelSelector=` and
//! `?fieldSelector=`.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector: all requirements must hold (AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<LabelReq>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '(' => {
                depth += 1;
                cur.push(ch)
            }
            ')' => {
                depth -= 1;
                cur.push(ch)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesized value set, found {rest:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses `k=v,k2!=v,k3 in (a,b),!k4,...`; an error message on malformed input.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_top(s) {
            if let Some(k) = term.strip_prefix('!') {
                let k = k.trim();
                if k.is_empty() {
                    return Err(format!("invalid label selector term {term:?}"));
                }
                reqs.push(LabelReq::NotExists(k.to_string()));
                continue;
            }
            let key_end = term
                .find(|c: char| c.is_whitespace() || "=!(".contains(c))
                .unwrap_or(term.len());
            let key = term[..key_end].to_string();
            if key.is_empty() {
                return Err(format!("invalid label selector term {term:?}"));
            }
            let rest = term[key_end..].trim();
            let req = if rest.is_empty() {
                LabelReq::Exists(key)
            } else if let Some(r) = rest.strip_prefix("notin") {
                LabelReq::NotIn(key, parse_set(r)?)
            } else if let Some(r) = rest.strip_prefix("in") {
                LabelReq::In(key, parse_set(r)?)
            } else if let Some(r) = rest.strip_prefix("!=") {
                LabelReq::NotEq(key, r.trim().to_string())
            } else if let Some(r) = rest.strip_prefix("==") {
                LabelReq::Eq(key, r.trim().to_string())
            } else if let Some(r) = rest.strip_prefix('=') {
                LabelReq::Eq(key, r.trim().to_string())
            } else {
                return Err(format!("invalid label selector term {term:?}"));
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// The first `key=value` requirement, if any: the store looks candidates up by it in its
    /// label index before matching the rest.
    pub(crate) fn equality(&self) -> Option<(&str, &str)> {
        self.0.iter().find_map(|r| match r {
            LabelReq::Eq(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector: `path=v`, `path==v`, `path!=v` terms, ANDed. Paths are dotted
/// (`metadata.name`, `metadata.namespace`, `status.phase`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(Vec<String>, bool, String)>);

impl FieldSelector {
    /// Parses a field selector; an error message on malformed input.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in split_top(s) {
            let (path, eq, val) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                return Err(format!("invalid field selector term {term:?}"));
            }
            terms.push((path, eq, val.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether the object satisfies every term (absent fields compare as the empty string).
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, val)| {
            let actual = super::fields::get_path(obj, path)
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (actual == *val) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_operators() {
        let o = json!({"metadata": {"labels": {"env": "prod", "tier": "web"}}});
        for (sel, want) in [
            ("env=prod", true),
            ("env==prod", true),
            ("env!=prod", false),
            ("env", true),
            ("!env", false),
            ("!missing", true),
            ("env in (prod, dev)", true),
            ("env in (dev)", false),
            ("env notin (dev,qa)", true),
            ("missing notin (dev)", true),
            ("env in (prod),tier=web", true),
            ("env in (prod),tier=api", false),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("env in prod").is_err());
    }

    #[test]
    fn field_selector() {
        let o =
            json!({"metadata": {"name": "a", "namespace": "ns"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("metadata.name=a,metadata.namespace!=x")
                .unwrap()
                .matches(&o)
        );
        assert!(!FieldSelector::parse("status.phase=Pending")
            .unwrap()
            .matches(&o));
    }
}

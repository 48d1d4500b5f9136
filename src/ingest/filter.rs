//! Target filters: conditions on values in the JSON body. They are
//! evaluated at ingest, where the JSON is at hand: a target that filters
//! an event out gets no delivery for it at all.

use serde::Deserialize;
use serde_json::Value;

/// A target's `filter`: conditions on values in the JSON body, each naming
/// a JSON pointer. `eq` and `in` compare JSON values (numbers by value, so
/// `1` equals `1.0`; a string never equals a number). A body that is not JSON,
/// or a pointer to nothing, matches no `eq` or `in`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `{ json = "/pointer", eq = value }`
    Eq { pointer: String, value: Value },
    /// `{ json = "/pointer", in = [values] }`
    In { pointer: String, values: Vec<Value> },
    /// `{ all = [filters] }`: every one matches (an empty list always matches).
    All(Vec<Filter>),
    /// `{ any = [filters] }`: at least one matches.
    Any(Vec<Filter>),
    /// `{ not = filter }`
    Not(Box<Filter>),
}

impl Filter {
    pub fn matches(&self, json: Option<&Value>) -> bool {
        let at = |pointer: &str| json.and_then(|j| j.pointer(pointer));
        match self {
            Filter::Eq { pointer, value } => at(pointer).is_some_and(|v| json_eq(v, value)),
            Filter::In { pointer, values } => {
                at(pointer).is_some_and(|v| values.iter().any(|x| json_eq(v, x)))
            }
            Filter::All(fs) => fs.iter().all(|f| f.matches(json)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(json)),
            Filter::Not(f) => !f.matches(json),
        }
    }

    /// The filter as written, in JSON (what the admin API shows).
    pub fn to_json(&self) -> Value {
        match self {
            Filter::Eq { pointer, value } => serde_json::json!({"json": pointer, "eq": value}),
            Filter::In { pointer, values } => serde_json::json!({"json": pointer, "in": values}),
            Filter::All(fs) => {
                serde_json::json!({"all": fs.iter().map(Filter::to_json).collect::<Vec<_>>()})
            }
            Filter::Any(fs) => {
                serde_json::json!({"any": fs.iter().map(Filter::to_json).collect::<Vec<_>>()})
            }
            Filter::Not(f) => serde_json::json!({"not": f.to_json()}),
        }
    }
}

/// JSON equality, with numbers compared by value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (as_int(x), as_int(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

fn as_int(n: &serde_json::Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            json: Option<String>,
            eq: Option<Value>,
            #[serde(rename = "in")]
            one_of: Option<Vec<Value>>,
            all: Option<Vec<Filter>>,
            any: Option<Vec<Filter>>,
            not: Option<Box<Filter>>,
        }
        use serde::de::Error;
        let raw = Raw::deserialize(d)?;
        let shape = "a filter is { json = \"/pointer\", eq = value }, { json = \"/pointer\", in = [values] }, { all = [...] }, { any = [...] } or { not = {...} }";
        match raw {
            Raw {
                json: Some(p),
                eq,
                one_of,
                all: None,
                any: None,
                not: None,
            } => {
                if !p.starts_with('/') {
                    return Err(D::Error::custom(format!(
                        "`{p}`: a JSON pointer starts with '/', like /notifiableId"
                    )));
                }
                match (eq, one_of) {
                    (Some(value), None) => Ok(Filter::Eq { pointer: p, value }),
                    (None, Some(values)) => Ok(Filter::In { pointer: p, values }),
                    _ => Err(D::Error::custom(format!(
                        "`json` needs exactly one of `eq` or `in`; {shape}"
                    ))),
                }
            }
            Raw {
                json: None,
                eq: None,
                one_of: None,
                all,
                any,
                not,
            } => match (all, any, not) {
                (Some(fs), None, None) => Ok(Filter::All(fs)),
                (None, Some(fs), None) => Ok(Filter::Any(fs)),
                (None, None, Some(f)) => Ok(Filter::Not(f)),
                _ => Err(D::Error::custom(shape)),
            },
            _ => Err(D::Error::custom(shape)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(toml_text: &str) -> Result<Filter, String> {
        #[derive(Deserialize)]
        struct W {
            filter: Filter,
        }
        toml::from_str::<W>(toml_text)
            .map(|w| w.filter)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn filters_compare_json_values() {
        let body = json!({"notifiableId": "c-1", "n": 3, "user": {"ok": true}, "x": null});
        let f = filter(r#"filter = { json = "/notifiableId", in = ["c-1", "c-2"] }"#).unwrap();
        assert!(f.matches(Some(&body)));
        assert!(!f.matches(Some(&json!({"notifiableId": "c-3"}))));
        assert!(!f.matches(Some(&json!({}))));
        assert!(!f.matches(None), "a body that is not JSON matches nothing");
        let f = filter(r#"filter = { json = "/n", eq = 3.0 }"#).unwrap();
        assert!(f.matches(Some(&body)));
        let f = filter(r#"filter = { json = "/n", eq = "3" }"#).unwrap();
        assert!(!f.matches(Some(&body)), "a string is not a number");
        let f = filter(
            r#"filter = { all = [ { json = "/user/ok", eq = true }, { any = [ { json = "/n", in = [1, 2] }, { not = { json = "/notifiableId", eq = "c-9" } } ] } ] }"#,
        )
        .unwrap();
        assert!(f.matches(Some(&body)));
        let f = filter(r#"filter = { not = { json = "/notifiableId", eq = "c-1" } }"#).unwrap();
        assert!(!f.matches(Some(&body)));
        assert!(filter(r#"filter = { all = [] }"#).unwrap().matches(None));
        assert!(!filter(r#"filter = { any = [] }"#)
            .unwrap()
            .matches(Some(&body)));
    }

    #[test]
    fn malformed_filters_are_refused() {
        for bad in [
            r#"filter = { json = "notifiableId", eq = 1 }"#,
            r#"filter = { json = "/a" }"#,
            r#"filter = { json = "/a", eq = 1, in = [1] }"#,
            r#"filter = { eq = 1 }"#,
            r#"filter = { all = [], any = [] }"#,
            r#"filter = { json = "/a", eq = 1, all = [] }"#,
            r#"filter = { json = "/a", equals = 1 }"#,
        ] {
            assert!(filter(bad).is_err(), "{bad}");
        }
    }
}

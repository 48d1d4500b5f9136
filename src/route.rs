//! Routing: which route a request path belongs to, what its event type and
//! dedup key are, and the patterns and filters by which a target says which
//! events it wants: by type (`events`) and by values in the JSON body (`filter`).
//!
//! Patterns, templates and filters are parsed once at config load; matching
//! a request allocates only the captured values. Filters are evaluated here,
//! at ingest, where the JSON is at hand: a target that filters an event out
//! gets no delivery for it at all.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// A route path such as `/heights/{event}`: literal segments, and `{name}`
/// segments that capture exactly one non-empty path segment.
#[derive(Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(String),
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.starts_with('/') {
            return Err(format!("`{s}`: a route path starts with '/'"));
        }
        let mut segments = Vec::new();
        let mut names = Vec::new();
        for seg in split_path(s) {
            if let Some(inner) = seg.strip_prefix('{') {
                let name = inner
                    .strip_suffix('}')
                    .filter(|n| is_ident(n))
                    .ok_or_else(|| format!("`{s}`: `{seg}` is not a capture like {{name}}"))?;
                if names.contains(&name) {
                    return Err(format!("`{s}`: {{{name}}} is captured twice"));
                }
                names.push(name);
                segments.push(Segment::Capture(name.to_string()));
            } else if seg.contains(['{', '}']) {
                return Err(format!(
                    "`{s}`: a capture must be a whole segment, like /{{name}}/"
                ));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        Ok(PathPattern {
            source: s.to_string(),
            segments,
        })
    }

    /// The captured values if `path` (without query) matches.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut captures = Vec::new();
        let mut parts = split_path(path);
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Capture(name) => captures.push((name.clone(), part.to_string())),
            }
        }
        parts.next().is_none().then_some(captures)
    }

    pub fn captures(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Capture(n) if n == name))
    }
}

fn split_path(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PathPattern::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A value template such as `{json./resource}.{json./action}`: literal text
/// and placeholders `{path.X}`, `{header.X}`, `{json./pointer}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Path(String),
    Header(http::HeaderName),
    Json(String),
}

/// What a template is evaluated against.
pub struct Context<'a> {
    pub path: &'a [(String, String)],
    pub headers: &'a http::HeaderMap,
    /// The body parsed as JSON, if it is JSON.
    pub json: Option<&'a serde_json::Value>,
}

/// Why a template has no value for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("the body is not JSON, and {0} needs it")]
    NotJson(String),
    #[error("{0} has no value in this request")]
    Absent(String),
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{s}`: '{{' without a closing '}}'"))?
                + open;
            let inner = &rest[open + 1..close];
            let part = if let Some(name) = inner.strip_prefix("path.") {
                is_ident(name)
                    .then(|| Part::Path(name.to_string()))
                    .ok_or_else(|| format!("`{s}`: `{{{inner}}}` is not a path capture name"))?
            } else if let Some(name) = inner.strip_prefix("header.") {
                http::HeaderName::from_bytes(name.as_bytes())
                    .map(Part::Header)
                    .map_err(|_| format!("`{s}`: `{inner}` is not a header name"))?
            } else if let Some(pointer) = inner.strip_prefix("json.") {
                if !pointer.starts_with('/') {
                    return Err(format!(
                        "`{s}`: `{{{inner}}}` needs a JSON pointer starting with '/', like {{json./id}}"
                    ));
                }
                Part::Json(pointer.to_string())
            } else {
                return Err(format!(
                    "`{s}`: `{{{inner}}}` is not {{path.X}}, {{header.X}} or {{json./pointer}}"
                ));
            };
            parts.push(part);
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{s}`: '}}' without an opening '{{'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            source: s.to_string(),
            parts,
        })
    }

    /// A template that always gives `text`.
    pub fn literal(text: &str) -> Template {
        Template {
            source: text.to_string(),
            parts: vec![Part::Text(text.to_string())],
        }
    }

    pub fn needs_json(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Json(_)))
    }

    pub fn path_captures(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Path(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Renders the template. Strings are used as they are; numbers and
    /// booleans as their JSON text; null, objects, arrays and absent values
    /// are `Missing`.
    pub fn render(&self, cx: &Context<'_>) -> Result<String, Missing> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Path(name) => {
                    let v = cx
                        .path
                        .iter()
                        .find(|(n, _)| n == name)
                        .ok_or_else(|| Missing::Absent(format!("{{path.{name}}}")))?;
                    out.push_str(&v.1);
                }
                Part::Header(name) => {
                    let v = cx
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| Missing::Absent(format!("{{header.{name}}}")))?;
                    out.push_str(v);
                }
                Part::Json(pointer) => {
                    let json = cx
                        .json
                        .ok_or_else(|| Missing::NotJson(format!("{{json.{pointer}}}")))?;
                    match json.pointer(pointer) {
                        Some(serde_json::Value::String(s)) => out.push_str(s),
                        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                            out.push_str(&v.to_string())
                        }
                        _ => return Err(Missing::Absent(format!("{{json.{pointer}}}"))),
                    }
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Template::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An entry of a target's `events`: an exact name, `*`, or a prefix glob
/// ending in `*` such as `course_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    Exact(String),
    Prefix(String),
}

impl EventPattern {
    pub fn parse(s: &str) -> Result<EventPattern, String> {
        if s.is_empty() {
            return Err("an event pattern cannot be empty".into());
        }
        match s.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Ok(EventPattern::Prefix(prefix.to_string())),
            None if !s.contains('*') => Ok(EventPattern::Exact(s.to_string())),
            _ => Err(format!("`{s}`: '*' may only end a pattern, like course_*")),
        }
    }

    pub fn matches(&self, event: &str) -> bool {
        match self {
            EventPattern::Exact(e) => e == event,
            EventPattern::Prefix(p) => event.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventPattern::Exact(e) => f.write_str(e),
            EventPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

impl<'de> Deserialize<'de> for EventPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EventPattern::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

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

/// The routes of a configuration, ready to match requests.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

/// One route: its path, templates and kept headers.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// Proxy routes only: the host they take requests for.
    pub host: Option<crate::config::ProxyHost>,
    pub upgrade_https: bool,
    pub path: PathPattern,
    pub event: Template,
    pub dedup: Option<Template>,
    pub forward_headers: Vec<http::HeaderName>,
    /// A configured target filters on the body, so it is parsed as JSON.
    pub filtered: bool,
    /// A target renders a template, so the request's headers are kept for it.
    pub keep_request_headers: bool,
}

impl Route {
    /// Whether matching a request needs its body parsed as JSON.
    pub fn needs_json(&self) -> bool {
        self.filtered
            || self.event.needs_json()
            || self.dedup.as_ref().is_some_and(Template::needs_json)
    }
}

impl Router {
    pub fn new(config: &crate::config::Config) -> Router {
        let routes = config
            .routes
            .iter()
            .map(|r| Route {
                name: r.name.clone(),
                host: r.host.clone(),
                upgrade_https: r.upgrade_https,
                path: r.path.clone(),
                event: r.event.clone().unwrap_or_else(|| {
                    if r.path.captures("event") {
                        Template::parse("{path.event}").expect("literal template")
                    } else {
                        Template::literal(&r.name)
                    }
                }),
                dedup: r.dedup.clone(),
                forward_headers: r.forward_headers.iter().map(|h| h.0.clone()).collect(),
                filtered: r.targets.iter().any(|t| t.filter.is_some()),
                keep_request_headers: r.targets.iter().any(|t| t.renders_template()),
            })
            .collect();
        Router { routes }
    }

    /// The first route without a host whose path matches, with its captures.
    pub fn find(&self, path: &str) -> Option<(&Route, Vec<(String, String)>)> {
        self.routes
            .iter()
            .filter(|r| r.host.is_none())
            .find_map(|r| r.path.matches(path).map(|c| (r, c)))
    }

    /// Proxy mode: the first route for `host` (and `port`, if the route
    /// names one) whose path matches.
    pub fn find_proxy(
        &self,
        host: &str,
        port: u16,
        path: &str,
    ) -> Option<(&Route, Vec<(String, String)>)> {
        self.routes
            .iter()
            .filter(|r| r.host.as_ref().is_some_and(|h| h.matches(host, port)))
            .find_map(|r| r.path.matches(path).map(|c| (r, c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn path_patterns() {
        let p = PathPattern::parse("/heights/{event}").unwrap();
        assert_eq!(
            p.matches("/heights/new_order"),
            Some(vec![("event".into(), "new_order".into())])
        );
        assert_eq!(p.matches("/heights/new_order/").map(|c| c.len()), Some(1));
        assert_eq!(p.matches("/heights"), None);
        assert_eq!(p.matches("/heights/a/b"), None);
        assert_eq!(p.matches("/other/a"), None);
        assert!(PathPattern::parse("heights").is_err());
        assert!(PathPattern::parse("/a/{x}/{x}").is_err());
        assert!(PathPattern::parse("/a/b{x}").is_err());
        assert!(PathPattern::parse("/a/{x").is_err());
    }

    #[test]
    fn templates_concatenate() {
        let t = Template::parse("{json./resource}.{json./action}").unwrap();
        let body = json!({"resource": "course_completion", "action": "completed", "n": 7});
        let headers = http::HeaderMap::new();
        let cx = Context {
            path: &[],
            headers: &headers,
            json: Some(&body),
        };
        assert_eq!(t.render(&cx).unwrap(), "course_completion.completed");
        let t = Template::parse("n-{json./n}").unwrap();
        assert_eq!(t.render(&cx).unwrap(), "n-7");
        let t = Template::parse("{json./nope}").unwrap();
        assert!(matches!(t.render(&cx), Err(Missing::Absent(_))));
        let cx = Context {
            path: &[],
            headers: &headers,
            json: None,
        };
        let t = Template::parse("{json./resource}").unwrap();
        assert!(matches!(t.render(&cx), Err(Missing::NotJson(_))));
    }

    #[test]
    fn templates_read_path_and_headers() {
        let t = Template::parse("{path.event}:{header.x-kind}").unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-kind", "a".parse().unwrap());
        let path = vec![("event".to_string(), "new_order".to_string())];
        let cx = Context {
            path: &path,
            headers: &headers,
            json: None,
        };
        assert_eq!(t.render(&cx).unwrap(), "new_order:a");
        assert!(Template::parse("{body}").is_err());
        assert!(Template::parse("{json.id}").is_err());
        assert!(Template::parse("x}").is_err());
        assert!(Template::parse("{path.a").is_err());
    }

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

    #[test]
    fn event_patterns() {
        let p = EventPattern::parse("course_*").unwrap();
        assert!(p.matches("course_created") && !p.matches("new_order"));
        assert!(EventPattern::parse("*").unwrap().matches("anything"));
        assert!(EventPattern::parse("new_order")
            .unwrap()
            .matches("new_order"));
        assert!(!EventPattern::parse("new_order")
            .unwrap()
            .matches("new_order2"));
        assert!(EventPattern::parse("a*b").is_err());
        assert!(EventPattern::parse("").is_err());
    }
}

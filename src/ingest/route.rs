//! Routing patterns: which route a request path (or, in proxy mode, host)
//! belongs to, what its event type and dedup key are, and the event
//! patterns by which a target says which types it wants (`events`; the
//! conditions on the body are in `filter.rs`).
//!
//! Patterns and templates are parsed once at config load; matching a
//! request allocates only the captured values.

use std::fmt;

use serde::Deserialize;

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
/// and placeholders `{path.X}`, `{header.X}`, `{json./pointer}`, each with
/// an optional default after `|` (`{json./event|unknown}`) used when the
/// request has no value for it.
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
    /// A placeholder, and the text used when it has no value.
    Or(Box<Part>, String),
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
            let (inner, default) = match rest[open + 1..close].split_once('|') {
                Some((p, d)) => (p, Some(d)),
                None => (&rest[open + 1..close], None),
            };
            if default.is_some_and(|d| d.is_empty() || d.contains('|')) {
                return Err(format!(
                    "`{s}`: a default after '|' is one non-empty text, like {{json./event|unknown}}"
                ));
            }
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
            parts.push(match default {
                Some(d) => Part::Or(Box::new(part), d.to_string()),
                None => part,
            });
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

    /// The placeholders, defaults looked through.
    fn placeholders(&self) -> impl Iterator<Item = &Part> {
        self.parts.iter().map(|p| match p {
            Part::Or(inner, _) => inner,
            other => other,
        })
    }

    /// The template in words, for `check-config`: where each part of the
    /// value is taken from.
    pub fn describe(&self) -> String {
        fn part(p: &Part) -> String {
            match p {
                Part::Text(t) => format!("the text \"{t}\""),
                Part::Path(n) => format!("the path segment {{{n}}}"),
                Part::Header(h) => format!("the header {h}"),
                Part::Json(ptr) => format!("the JSON body at {ptr}"),
                Part::Or(p, d) => format!("{} (\"{d}\" when it has none)", part(p)),
            }
        }
        match self.parts.as_slice() {
            [Part::Text(t)] => format!("always \"{t}\""),
            parts => parts.iter().map(part).collect::<Vec<_>>().join(", then "),
        }
    }

    pub fn needs_json(&self) -> bool {
        self.placeholders().any(|p| matches!(p, Part::Json(_)))
    }

    pub fn path_captures(&self) -> impl Iterator<Item = &str> {
        self.placeholders().filter_map(|p| match p {
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
            part.render(cx, &mut out)?;
        }
        Ok(out)
    }
}

impl Part {
    /// Appends this part's value for `cx` to `out`.
    fn render(&self, cx: &Context<'_>, out: &mut String) -> Result<(), Missing> {
        match self {
            Part::Or(inner, default) => {
                // A part that fails has appended nothing.
                if inner.render(cx, out).is_err() {
                    out.push_str(default);
                }
            }
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
        Ok(())
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

/// A proxy route's `host`: a lower-case host name or IP literal, with an
/// optional port. Without a port, any port matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHost {
    pub host: String,
    pub port: Option<u16>,
}

impl ProxyHost {
    pub fn parse(s: &str) -> Result<ProxyHost, String> {
        let authority: http::uri::Authority = s
            .parse()
            .map_err(|_| format!("`{s}` is not a host or host:port"))?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(format!("`{s}` is not a host or host:port"));
        }
        Ok(ProxyHost {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16(),
        })
    }

    /// Whether a request for `host` on `port` is for this route's host.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host) && self.port.is_none_or(|p| p == port)
    }
}

impl<'de> Deserialize<'de> for ProxyHost {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ProxyHost::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
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
    fn a_default_stands_in_for_a_missing_value() {
        let t = Template::parse("{json./event|unknown}").unwrap();
        assert!(t.needs_json());
        let headers = http::HeaderMap::new();
        let cx = |json| Context {
            path: &[],
            headers: &headers,
            json,
        };
        let body = json!({"event": "courseCompletion"});
        assert_eq!(t.render(&cx(Some(&body))).unwrap(), "courseCompletion");
        let empty = json!({});
        assert_eq!(t.render(&cx(Some(&empty))).unwrap(), "unknown");
        assert_eq!(t.render(&cx(None)).unwrap(), "unknown");
        assert!(Template::parse("{json./e|}").is_err());
        assert!(Template::parse("{json./e|a|b}").is_err());
        assert!(Template::parse("{nope|x}").is_err());
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

//! Shaping: the body a target receives, built from a stored event.
//!
//! A target gets the original bytes (`format = "json"`, the default), the
//! JSON body converted to XML (`format = "xml"`), or the output of its
//! template. Shaping is pure: the same event gives the same bytes on every
//! attempt, and the signature is computed over exactly the bytes sent.
//! Templates are compiled at config load, so a syntax error never reaches
//! delivery; a failure that depends on the event (a missing field, a body
//! that is not JSON) cannot be cured by retrying, so it is not retryable and
//! the delivery goes dead with the reason recorded.
//!
//! The JSON→XML mapping (also in docs/CONFIG.md):
//! - the document starts with `<?xml version="1.0" encoding="UTF-8"?>`; the
//!   root element (`xml_root`, default `event`) declares the `xsi` namespace
//!   and holds the whole JSON value;
//! - an object's members become child elements in key order (sorted by
//!   code point), named by the key;
//! - an array that is a member's value becomes one element per item, each
//!   named by the key (an empty array gives no element); any other array
//!   (the whole body, an array inside an array) becomes `<item>` children;
//! - strings are text; numbers are their JSON text; booleans `true`/`false`;
//!   an empty object is an empty element; `null` is an empty element with
//!   `xsi:nil="true"`;
//! - a key that is not an XML name is escaped: each character not allowed
//!   at its place (and every `:`) is written `_xHHHH_` (its code point, at
//!   least four upper-case hex digits), an `_` followed by `x` is written
//!   `_x005F_`, and the empty key is `_x_`;
//! - characters XML 1.0 cannot carry (control characters other than tab,
//!   line feed and carriage return, U+FFFE, U+FFFF) become U+FFFD; a carriage
//!   return is written `&#13;` so parsers keep it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use quick_xml::events::{BytesDecl, BytesStart, BytesText, Event as XmlEvent};
use quick_xml::Writer;
use serde::Deserialize;
use serde_json::Value;

use crate::store::Event;

/// What a template may do in one render: minijinja's fuel, roughly one unit
/// per instruction. Enough to walk a large payload, not enough to spin.
pub const TEMPLATE_FUEL: u64 = 1_000_000;
/// The variables a template sees.
pub const TEMPLATE_VARIABLES: [&str; 3] = ["payload", "headers", "event"];
/// The namespace of `xsi:nil`.
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Why an event could not be shaped for a target. Shaping is deterministic,
/// so none of these is cured by trying again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("format = \"xml\" needs a JSON body, and this one is not JSON: {0}")]
    NotJson(String),
    #[error("the template failed for this event: {0}")]
    Render(String),
    #[error("the template rendered an empty body")]
    Empty,
    #[error("the template's output is not valid JSON ({0}); pass values through `tojson`")]
    BadJson(String),
    #[error("cannot write XML: {0}")]
    Xml(String),
}

impl ShapeError {
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// A body ready to send, and the content type it needs (`None`: keep the
/// original's).
#[derive(Debug, Clone, PartialEq)]
pub struct Shaped {
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
}

/// How a target's body is built.
#[derive(Debug, Clone, Default)]
pub enum Body {
    /// The bytes the LMS sent, untouched.
    #[default]
    Original,
    /// The JSON body as XML under this root element.
    Xml(XmlName),
    Template(BodyTemplate),
}

/// A target's body and content type, fixed at config load.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub body: Body,
    /// Replaces the content type the body would otherwise have.
    pub content_type: Option<HeaderValue>,
}

impl Shape {
    pub fn apply(&self, event: &Event) -> Result<Shaped, ShapeError> {
        let shaped = match &self.body {
            Body::Original => Shaped {
                body: event.body.clone(),
                content_type: None,
            },
            Body::Xml(root) => {
                let json: Value = serde_json::from_slice(&event.body)
                    .map_err(|e| ShapeError::NotJson(e.to_string()))?;
                Shaped {
                    body: Bytes::from(to_xml(&json, root)?),
                    content_type: Some(HeaderValue::from_static("application/xml")),
                }
            }
            Body::Template(t) => Shaped {
                body: Bytes::from(t.render(event, self.content_type.as_ref())?),
                content_type: Some(HeaderValue::from_static("application/json")),
            },
        };
        Ok(Shaped {
            content_type: self.content_type.clone().or(shaped.content_type),
            ..shaped
        })
    }
}

// === impl BodyTemplate ===

/// A compiled body template (minijinja). Sees `payload` (the body as JSON,
/// or none when it is not JSON), `headers` (lower-case names) and `event`
/// (`id`, `type`, `received_at`).
#[derive(Clone)]
pub struct BodyTemplate {
    env: Arc<Environment<'static>>,
}

const NAME: &str = "body";

impl BodyTemplate {
    /// Compiles `source`, and refuses variables other than [`TEMPLATE_VARIABLES`]
    /// so that a typo is found at load rather than at the first event.
    pub fn parse(source: &str) -> Result<BodyTemplate, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| describe(&e))?;
        let tmpl = env.get_template(NAME).map_err(|e| describe(&e))?;
        // minijinja reports a variable that is only `set` inside a branch as
        // undeclared; names the template assigns itself are not typos.
        let assigned = assigned_names(source);
        let mut unknown: Vec<String> = tmpl
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| {
                !TEMPLATE_VARIABLES.contains(&v.as_str())
                    && !assigned.contains(v)
                    && env.globals().all(|(g, _)| g != v)
            })
            .collect();
        unknown.sort();
        if let Some(v) = unknown.first() {
            return Err(format!(
                "unknown variable `{v}`; a template sees payload, headers and event"
            ));
        }
        dry_run(source)?;
        Ok(BodyTemplate { env: Arc::new(env) })
    }

    fn render(
        &self,
        event: &Event,
        content_type: Option<&HeaderValue>,
    ) -> Result<Vec<u8>, ShapeError> {
        let payload: Value = serde_json::from_slice(&event.body).unwrap_or(Value::Null);
        let mut headers: BTreeMap<&str, String> = BTreeMap::new();
        for (name, value) in event.meta.headers.iter().chain(&event.meta.request_headers) {
            headers
                .entry(name.as_str())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        let received = UNIX_EPOCH + Duration::from_millis(event.meta.received_at_ms);
        let cx = serde_json::json!({
            "payload": payload,
            "headers": headers,
            "event": {
                "id": event.id.to_string(),
                "type": event.meta.event_type,
                "received_at": humantime::format_rfc3339_millis(received).to_string(),
            },
        });
        let out = self
            .env
            .get_template(NAME)
            .and_then(|t| t.render(minijinja::value::Serde(&cx)))
            .map_err(|e| ShapeError::Render(describe(&e)))?;
        if out.trim().is_empty() {
            return Err(ShapeError::Empty);
        }
        let is_json = content_type.is_none_or(is_json_type);
        if is_json {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&out) {
                return Err(ShapeError::BadJson(e.to_string()));
            }
        }
        Ok(out.into_bytes())
    }
}

/// Renders `source` once with nothing defined, where undefined values are
/// allowed everywhere, to find misspelled filters, tests and functions
/// (minijinja resolves those only when they run). Other errors depend on
/// the event and are left to render time.
fn dry_run(source: &str) -> Result<(), String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_fuel(Some(TEMPLATE_FUEL));
    let result = env
        .template_from_str(source)
        .and_then(|t| t.render(minijinja::context! {}));
    match result {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnknownFilter | ErrorKind::UnknownTest | ErrorKind::UnknownFunction
            ) =>
        {
            Err(describe(&e))
        }
        _ => Ok(()),
    }
}

/// Names assigned by `{% set a = ... %}` or `{% set a, b = ... %}` tags.
fn assigned_names(source: &str) -> Vec<String> {
    source
        .split("{%")
        .skip(1)
        .filter_map(|tag| {
            let tag = tag
                .split("%}")
                .next()?
                .trim_start_matches(['-', '+'])
                .trim();
            let rest = tag.strip_prefix("set")?;
            let targets = rest.split('=').next()?;
            Some(
                targets
                    .split(',')
                    .map(|n| n.trim().trim_matches(['(', ')']).trim().to_string())
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .filter(|n| !n.is_empty())
        .collect()
}

/// `application/json`, or any `+json` type.
fn is_json_type(v: &HeaderValue) -> bool {
    let essence = v
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// A minijinja error with its detail and place, on one line.
fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

impl fmt::Debug for BodyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyTemplate")
    }
}

// === XML ===

/// An XML element name without a namespace prefix, checked at load.
#[derive(Clone, PartialEq, Eq)]
pub struct XmlName(String);

impl XmlName {
    pub fn parse(s: &str) -> Result<XmlName, String> {
        let mut chars = s.chars();
        let valid = chars.next().is_some_and(is_name_start) && chars.all(is_name_char);
        if valid {
            Ok(XmlName(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not an XML element name (a letter or '_', then letters, digits, '-', '.', '_'; no ':')"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for XmlName {
    fn default() -> Self {
        XmlName("event".into())
    }
}

impl fmt::Debug for XmlName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for XmlName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        XmlName::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// XML 1.0 `NameStartChar`, without ':'.
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 `NameChar`, without ':'.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// The element name for an object key (see the module docs for the rule).
pub fn element_name(key: &str) -> Cow<'_, str> {
    if key.is_empty() {
        return Cow::Borrowed("_x_");
    }
    let mut chars = key.chars();
    let plain =
        chars.next().is_some_and(is_name_start) && chars.all(is_name_char) && !key.contains("_x");
    if plain {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 8);
    let mut rest = key;
    let mut first = true;
    while let Some(c) = rest.chars().next() {
        let ok = if first {
            is_name_start(c)
        } else {
            is_name_char(c)
        };
        if c == '_' && rest[1..].starts_with('x') {
            out.push_str("_x005F_");
        } else if ok {
            out.push(c);
        } else {
            out.push_str(&format!("_x{:04X}_", c as u32));
        }
        rest = &rest[c.len_utf8()..];
        first = false;
    }
    Cow::Owned(out)
}

/// The XML document for `value` under `root`.
pub fn to_xml(value: &Value, root: &XmlName) -> Result<Vec<u8>, ShapeError> {
    let mut w = Writer::new(Vec::new());
    let io = |e: std::io::Error| ShapeError::Xml(e.to_string());
    w.write_event(XmlEvent::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .map_err(io)?;
    let mut start = BytesStart::new(root.as_str());
    start.push_attribute(("xmlns:xsi", XSI));
    // Nesting is bounded: serde_json refuses bodies nested over 128 levels.
    write_value(&mut w, start, value).map_err(io)?;
    Ok(w.into_inner())
}

fn write_value(
    w: &mut Writer<Vec<u8>>,
    mut start: BytesStart<'_>,
    value: &Value,
) -> std::io::Result<()> {
    let children = match value {
        Value::Null => {
            start.push_attribute(("xsi:nil", "true"));
            return w.write_event(XmlEvent::Empty(start));
        }
        Value::Object(map) if map.is_empty() => return w.write_event(XmlEvent::Empty(start)),
        Value::Array(items) if items.is_empty() => return w.write_event(XmlEvent::Empty(start)),
        Value::Object(_) | Value::Array(_) => true,
        Value::String(_) | Value::Number(_) | Value::Bool(_) => false,
    };
    let end = start.to_end().into_owned();
    w.write_event(XmlEvent::Start(start))?;
    if children {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    write_member(w, &element_name(key), v)?;
                }
            }
            Value::Array(items) => {
                for item in items {
                    write_value(w, BytesStart::new("item"), item)?;
                }
            }
            _ => {}
        }
    } else {
        let text = match value {
            Value::String(s) => escape_text(s),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => String::new(),
        };
        w.write_event(XmlEvent::Text(BytesText::from_escaped(text)))?;
    }
    w.write_event(XmlEvent::End(end))
}

/// An object member: arrays repeat the element, anything else is one element.
fn write_member(w: &mut Writer<Vec<u8>>, name: &str, value: &Value) -> std::io::Result<()> {
    match value {
        Value::Array(items) => {
            for item in items {
                write_value(w, BytesStart::new(name), item)?;
            }
            Ok(())
        }
        _ => write_value(w, BytesStart::new(name), value),
    }
}

/// Text content: XML-escaped, with characters XML cannot carry replaced.
fn escape_text(s: &str) -> String {
    let clean: Cow<'_, str> = if s.chars().all(is_xml_char) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(
            s.chars()
                .map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' })
                .collect(),
        )
    };
    quick_xml::escape::escape(clean).replace('\r', "&#13;")
}

/// XML 1.0 `Char`.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventId, EventMeta};
    use serde_json::json;

    fn event(body: &str) -> Event {
        Event {
            id: EventId(ulid::Ulid(42)),
            meta: EventMeta {
                received_at_ms: 1_700_000_000_123,
                source: "127.0.0.1".into(),
                route: "r".into(),
                event_type: "course.created".into(),
                headers: vec![("content-type".into(), "application/json".into())],
                request_headers: vec![("x-lms".into(), "acme".into())],
                url: None,
            },
            body: Bytes::from(body.to_string()),
        }
    }

    fn xml(value: Value) -> String {
        String::from_utf8(to_xml(&value, &XmlName::default()).unwrap()).unwrap()
    }

    const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?><event xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#;

    #[test]
    fn xml_mapping_is_the_documented_one() {
        let out = xml(json!({
            "b": 1.5, "a": "x < y & z", "t": true, "n": null, "e": {}, "none": [],
            "list": [{"id": 1}, {"id": 2}], "grid": [[1, 2], []],
        }));
        assert_eq!(
            out,
            format!(
                "{HEAD}<a>x &lt; y &amp; z</a><b>1.5</b><e/><grid><item>1</item><item>2</item></grid><grid/>\
                 <list><id>1</id></list><list><id>2</id></list><n xsi:nil=\"true\"/><t>true</t></event>"
            )
        );
        assert_eq!(
            xml(json!([1, "two"])),
            format!("{HEAD}<item>1</item><item>two</item></event>")
        );
        let root = XmlName::parse("order").unwrap();
        let out = String::from_utf8(to_xml(&json!(null), &root).unwrap()).unwrap();
        assert!(
            out.ends_with(
                "<order xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:nil=\"true\"/>"
            ),
            "{out}"
        );
    }

    #[test]
    fn keys_that_are_not_xml_names_are_escaped() {
        assert_eq!(element_name("course_id"), "course_id");
        assert_eq!(element_name("first name"), "first_x0020_name");
        assert_eq!(element_name("1st"), "_x0031_st");
        assert_eq!(element_name("a:b"), "a_x003A_b");
        assert_eq!(element_name("_x0020_"), "_x005F_x0020_");
        assert_eq!(element_name(""), "_x_");
        assert_eq!(element_name("é-1"), "é-1");
        assert_eq!(element_name("😀"), "😀");
        assert_eq!(element_name("-"), "_x002D_");
        for key in ["first name", "1st", "a:b", "", "-", "a/b"] {
            XmlName::parse(&element_name(key)).unwrap();
        }
    }

    #[test]
    fn text_xml_cannot_carry_is_replaced() {
        let out = xml(json!({"s": "a\u{1}b\r\n\"'"}));
        assert!(
            out.contains("<s>a\u{FFFD}b&#13;\n&quot;&apos;</s>"),
            "{out}"
        );
    }

    #[test]
    fn xml_names_are_checked() {
        assert!(XmlName::parse("order").is_ok());
        assert!(XmlName::parse("lms.event-1").is_ok());
        for bad in ["", "1x", "a b", "ns:x", "<x>"] {
            assert!(XmlName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xml_shape_sets_content_type_and_needs_json() {
        let shape = Shape {
            body: Body::Xml(XmlName::default()),
            content_type: None,
        };
        let out = shape.apply(&event(r#"{"a":1}"#)).unwrap();
        assert_eq!(out.content_type.unwrap(), "application/xml");
        assert!(std::str::from_utf8(&out.body)
            .unwrap()
            .ends_with("<a>1</a></event>"));
        assert!(matches!(
            shape.apply(&event("a=1")),
            Err(ShapeError::NotJson(_))
        ));
        let original = Shape::default().apply(&event("a=1")).unwrap();
        assert_eq!(
            (&original.body[..], original.content_type),
            (&b"a=1"[..], None)
        );
    }

    #[test]
    fn templates_see_payload_headers_and_event() {
        let t = BodyTemplate::parse(
            r#"{"name": {{ payload.user.name | tojson }}, "lms": {{ headers["x-lms"] | tojson }},
                "type": {{ event.type | tojson }}, "id": {{ event.id | tojson }}, "at": {{ event.received_at | tojson }},
                "n": {{ range(3) | length }}}"#,
        )
        .unwrap();
        let shape = Shape {
            body: Body::Template(t),
            content_type: None,
        };
        let ev = event(r#"{"user": {"name": "Jo \"JJ\" <x>"}}"#);
        let out = shape.apply(&ev).unwrap();
        assert_eq!(out.content_type.unwrap(), "application/json");
        let got: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            got,
            json!({"name": "Jo \"JJ\" <x>", "lms": "acme", "type": "course.created",
                   "id": ev.id.to_string(), "at": "2023-11-14T22:13:20.123Z", "n": 3})
        );
    }

    #[test]
    fn bad_templates_are_refused_at_parse() {
        assert!(BodyTemplate::parse("{{ payload.x ").is_err());
        assert!(BodyTemplate::parse("{% for %}").is_err());
        let e = BodyTemplate::parse("{{ payload.x | tojosn }}").unwrap_err();
        assert!(e.contains("tojosn"), "{e}");
        let e = BodyTemplate::parse("{% if payload.x is definde %}{% endif %}").unwrap_err();
        assert!(e.contains("definde"), "{e}");
        let e = BodyTemplate::parse("{{ rnage(3) }}").unwrap_err();
        assert!(e.contains("rnage"), "{e}");
        let e = BodyTemplate::parse("{{ paylod.x }}").unwrap_err();
        assert!(e.contains("paylod"), "{e}");
        assert!(BodyTemplate::parse(
            "{% set x = 1 %}{{ x }}{% for i in payload.items %}{{ loop.index }}{% endfor %}"
        )
        .is_ok());
        assert!(BodyTemplate::parse(
            "{%- if payload.a -%}{%- set what, n = 1, 2 -%}{% else %}{% set what = 2 %}{% set n = 3 %}{%- endif -%}{{ what }}{{ n }}"
        )
        .is_ok());
    }

    #[test]
    fn render_failures_are_errors_never_empty_bodies() {
        let shape = |src: &str, ct: Option<&'static str>| Shape {
            body: Body::Template(BodyTemplate::parse(src).unwrap()),
            content_type: ct.map(HeaderValue::from_static),
        };
        let ev = event(r#"{"user": {}}"#);
        let e = shape("{{ payload.user.name.first }}", None)
            .apply(&ev)
            .unwrap_err();
        assert!(matches!(e, ShapeError::Render(_)), "{e}");
        assert!(!e.is_retryable());
        let e = shape("{{ payload.user.missing }}", None)
            .apply(&ev)
            .unwrap_err();
        assert!(matches!(e, ShapeError::Render(_)), "{e}");
        let out = shape(
            "{% if payload.user.name is defined %}1{% else %}{{ payload.user.name | default('anon') | tojson }}{% endif %}",
            None,
        )
        .apply(&ev)
        .unwrap();
        assert_eq!(&out.body[..], b"\"anon\"");
        let e = shape("{% if payload.user.x %}x{% endif %}  ", None)
            .apply(&ev)
            .unwrap_err();
        assert_eq!(e, ShapeError::Empty);
        let e = shape("{\"a\": {{ 'x' }}}", None).apply(&ev).unwrap_err();
        assert!(matches!(e, ShapeError::BadJson(_)), "{e}");
        let e = shape(
            "{% for i in range(100000) %}{% for j in range(100) %}{% endfor %}{% endfor %}x",
            Some("text/plain"),
        )
        .apply(&ev)
        .unwrap_err();
        assert!(matches!(e, ShapeError::Render(_)), "{e}");
        // Not JSON-typed: any non-empty text goes.
        let out = shape(
            "a={{ event.type }}",
            Some("application/x-www-form-urlencoded"),
        )
        .apply(&ev)
        .unwrap();
        assert_eq!(&out.body[..], b"a=course.created");
        assert_eq!(
            out.content_type.unwrap(),
            "application/x-www-form-urlencoded"
        );
    }
}

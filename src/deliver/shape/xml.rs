//! The JSON→XML mapping (see the module docs of `shape` and docs/CONFIG.md).

use std::borrow::Cow;
use std::fmt;

use quick_xml::events::{BytesDecl, BytesStart, BytesText, Event as XmlEvent};
use quick_xml::Writer;
use serde::Deserialize;
use serde_json::Value;

use crate::deliver::shape::ShapeError;

/// The namespace of `xsi:nil`.
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

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

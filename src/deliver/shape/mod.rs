//! Shaping: the body a target receives, built from a stored event.
//!
//! A target gets the original bytes (`format = "original"`, the default),
//! the same bytes checked to be JSON and sent as `application/json`
//! (`format = "json"`), the JSON body converted to XML (`format = "xml"`),
//! or the output of its template (`format = "template"`). Shaping is pure: the same event gives the same bytes on every
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

use std::fmt;

use bytes::Bytes;
use http::HeaderValue;
use serde_json::Value;

use crate::store::Event;

mod template;
#[cfg(test)]
mod tests;
mod xml;

pub use template::{BodyTemplate, TEMPLATE_FUEL, TEMPLATE_VARIABLES};
pub use xml::{element_name, to_xml, XmlName};

/// Why an event could not be shaped for a target. Shaping is deterministic,
/// so none of these is cured by trying again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("this target's format needs a JSON body, and this one is not JSON: {0}")]
    NotJson(String),
    #[error("the template failed for this event: {0}")]
    Render(String),
    #[error("the template rendered an empty body")]
    Empty,
    #[error("the template's output is not valid JSON ({0}); values are written as JSON, so check the text around them (and any `| safe`)")]
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
    /// The bytes the LMS sent, which must be JSON, as `application/json`.
    Json,
    /// The JSON body as XML under this root element.
    Xml(XmlName),
    Template(BodyTemplate),
}

impl Body {
    /// The `format` that gives this body.
    pub fn format(&self) -> &'static str {
        match self {
            Body::Original => "original",
            Body::Json => "json",
            Body::Xml(_) => "xml",
            Body::Template(_) => "template",
        }
    }
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
        self.apply_as(event, &event.id.to_string())
    }

    /// `apply`, with templates seeing `id` as the event's id (a test send's
    /// `evt_test_…`).
    pub fn apply_as(&self, event: &Event, id: &str) -> Result<Shaped, ShapeError> {
        let shaped = match &self.body {
            Body::Original => Shaped {
                body: event.body.clone(),
                content_type: None,
            },
            Body::Json => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&event.body)
                    .map_err(|e| ShapeError::NotJson(e.to_string()))?;
                Shaped {
                    body: event.body.clone(),
                    content_type: Some(HeaderValue::from_static("application/json")),
                }
            }
            Body::Xml(root) => {
                let json: Value = serde_json::from_slice(&event.body)
                    .map_err(|e| ShapeError::NotJson(e.to_string()))?;
                Shaped {
                    body: Bytes::from(to_xml(&json, root)?),
                    content_type: Some(HeaderValue::from_static("application/xml")),
                }
            }
            Body::Template(t) => Shaped {
                body: Bytes::from(t.render(event, id)?),
                content_type: Some(HeaderValue::from_static("application/json")),
            },
        };
        Ok(Shaped {
            content_type: self.content_type.clone().or(shaped.content_type),
            ..shaped
        })
    }
}

/// What a target adds to each request, resolved at load.
#[derive(Clone, Default)]
pub struct Outbound {
    pub shape: Shape,
    /// `basic_auth` and `headers`, values marked sensitive.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Outbound")
            .field("shape", &self.shape)
            .field("headers", &names)
            .finish()
    }
}

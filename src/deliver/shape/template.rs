//! Body templates (minijinja), compiled at config load and rendered per
//! event with a bounded amount of fuel.
//!
//! Invariant: a template whose output is JSON (no content type, or a JSON
//! one) writes every `{{ value }}` as JSON (minijinja's JSON auto-escape),
//! so no payload value can end a string early or add keys: `{{ name }}`
//! gives `"Alice"`, quotes included. Only `| safe` writes raw text.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::HeaderValue;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

use crate::deliver::shape::ShapeError;
use crate::store::Event;

/// What a template may do in one render: minijinja's fuel, roughly one unit
/// per instruction. Enough to walk a large payload, not enough to spin.
pub const TEMPLATE_FUEL: u64 = 1_000_000;
/// The variables a template sees.
pub const TEMPLATE_VARIABLES: [&str; 3] = ["payload", "headers", "event"];

/// A compiled body template (minijinja). Sees `payload` (the body as JSON,
/// or none when it is not JSON), `headers` (lower-case names) and `event`
/// (`id`, `type`, `received_at`).
#[derive(Clone)]
pub struct BodyTemplate {
    env: Arc<Environment<'static>>,
    /// The output is JSON: values are escaped as JSON and the rendered
    /// body must parse.
    json: bool,
}

const NAME: &str = "body";

impl BodyTemplate {
    /// Compiles `source` for a body sent as `content_type` (none: JSON),
    /// and refuses variables other than [`TEMPLATE_VARIABLES`] so that a
    /// typo is found at load rather than at the first event.
    pub fn parse(source: &str, content_type: Option<&HeaderValue>) -> Result<BodyTemplate, String> {
        let json = content_type.is_none_or(is_json_type);
        // Quotes around a value would now be doubled (`""Alice""`): a
        // template written for raw values is refused at load, not left to
        // dead-letter every delivery.
        if json && (source.contains("\"{{") || source.contains("}}\"")) {
            return Err(
                "values are written as JSON, quotes included: write {{ payload.name }}, not \"{{ payload.name }}\" (join strings with ~)"
                    .into(),
            );
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_fuel(Some(TEMPLATE_FUEL));
        if json {
            env.set_auto_escape_callback(|_| AutoEscape::Json);
        }
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
        Ok(BodyTemplate {
            env: Arc::new(env),
            json,
        })
    }

    pub(super) fn render(&self, event: &Event, id: &str) -> Result<Vec<u8>, ShapeError> {
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
                "id": id,
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
        if self.json {
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

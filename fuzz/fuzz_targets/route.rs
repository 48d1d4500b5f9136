//! Route patterns, value templates and event patterns: parse whatever the
//! input holds, then match and render against request-like values from the
//! same input. Nothing may panic.
#![no_main]

use hookrelay::ingest::route::{Context, EventPattern, PathPattern, Template};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    // Fields separated by newlines: path pattern, path, template, header
    // value, body, event pattern, event.
    let mut f = input.split('\n');
    let mut next = || f.next().unwrap_or("");
    let (pattern, path, template, header, body, events, event) =
        (next(), next(), next(), next(), next(), next(), next());
    let captures = match PathPattern::parse(pattern) {
        Ok(p) => {
            let _ = p.captures("event");
            p.matches(path).unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    if let Ok(t) = Template::parse(template) {
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(header) {
            headers.insert("x-kind", v.clone());
            headers.insert("idempotency-key", v);
        }
        let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let cx = Context {
            path: &captures,
            headers: &headers,
            json: json.as_ref(),
        };
        let _ = t.needs_json();
        let _ = t.path_captures().count();
        let _ = t.render(&cx);
    }
    if let Ok(p) = EventPattern::parse(events) {
        let _ = p.matches(event);
    }
});

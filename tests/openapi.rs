//! docs/openapi.json against the real admin API: every documented
//! operation is called, every answer's status must be documented for it,
//! and every JSON answer must fit the documented schema.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use serde_json::{json, Value};

fn spec() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Checks `v` against `schema`, for the parts of JSON Schema the document
/// uses: `$ref`, `allOf`, `oneOf`, `type` (one or a list), `enum`,
/// `required`, `properties`, `additionalProperties`, `items`.
fn check(spec: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return check(spec, &spec["components"]["schemas"][name], v, at);
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(spec, s, v, at)?;
        }
    }
    if let Some(any) = schema["oneOf"].as_array() {
        if !any.iter().any(|s| check(spec, s, v, at).is_ok()) {
            return Err(format!("{at}: fits none of oneOf: {v}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let type_ok = |t: &str| match t {
        "string" => v.is_string(),
        "integer" => v.is_u64() || v.is_i64(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| type_ok(t)) {
        return Err(format!("{at}: {v} is not {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            return Err(format!("{at}: {v} not in {allowed:?}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for req in schema["required"].as_array().into_iter().flatten() {
            let key = req.as_str().unwrap();
            if !obj.contains_key(key) {
                return Err(format!("{at}: missing `{key}` in {v}"));
            }
        }
        for (k, sub) in obj {
            match schema["properties"].get(k) {
                Some(s) => check(spec, s, sub, &format!("{at}.{k}"))?,
                None => {
                    if let Some(extra) =
                        schema.get("additionalProperties").filter(|e| e.is_object())
                    {
                        check(spec, extra, sub, &format!("{at}.{k}"))?;
                    }
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(spec, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Every documented (METHOD, path template).
fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| *m != "parameters")
                .map(move |m| (m.to_uppercase(), p.clone()))
        })
        .collect()
}

/// The documented path template that `path` (without query) falls under.
fn template_of(spec: &Value, path: &str) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let paths = spec["paths"].as_object().unwrap();
    // Literal segments win over `{param}` ones (`/api/deliveries/retry`).
    let mut best: Option<(usize, &String)> = None;
    for template in paths.keys() {
        let t: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
        if t.len() != segs.len() {
            continue;
        }
        let fits = t
            .iter()
            .zip(&segs)
            .all(|(a, b)| a.starts_with('{') || a == b);
        let literals = t.iter().filter(|a| !a.starts_with('{')).count();
        if fits && best.is_none_or(|(n, _)| literals > n) {
            best = Some((literals, template));
        }
    }
    best.unwrap_or_else(|| panic!("{path} is not in docs/openapi.json"))
        .1
        .clone()
}

struct Checker {
    spec: Value,
    seen: BTreeSet<(String, String)>,
}

impl Checker {
    async fn call(
        &mut self,
        app: &TestApp,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let r = admin_as(app, token, method, path, body).await;
        let template = template_of(&self.spec, path.split('?').next().unwrap());
        let op = &self.spec["paths"][&template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        let documented = &op["responses"][r.status.as_str()];
        assert!(
            documented.is_object(),
            "{method} {path} answered {} which is not documented",
            r.status
        );
        if let Some(schema) = documented.pointer("/content/application~1json/schema") {
            let v: Value = serde_json::from_slice(&r.body).expect("JSON answer");
            check(&self.spec, schema, &v, "$")
                .unwrap_or_else(|e| panic!("{method} {path} {}: {e}", r.status));
        }
        if r.status.is_success() {
            self.seen.insert((method.to_uppercase(), template));
        }
        r
    }
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&one_route(&rx.url("/hook"), "")).await;
    let mut c = Checker {
        spec: spec(),
        seen: BTreeSet::new(),
    };
    c.call(&app, None, "GET", "/healthz", None).await;
    c.call(&app, None, "GET", "/readyz", None).await;
    c.call(&app, None, "GET", "/metrics", None).await;
    c.call(&app, None, "GET", "/api/hooks", None).await;
    c.call(&app, Some("wrong"), "GET", "/api/targets", None)
        .await;

    let body = json!({"target_url": rx.url("/sub"), "event": "*"});
    let hook = c
        .call(&app, Some(TOKEN), "POST", "/api/hooks", Some(body))
        .await
        .json();
    let id = hook["id"].as_str().unwrap();
    c.call(
        &app,
        Some(TOKEN),
        "POST",
        "/api/hooks",
        Some(json!({"event": "x"})),
    )
    .await;
    c.call(&app, Some(TOKEN), "GET", "/api/hooks", None).await;
    c.call(&app, Some(TOKEN), "GET", &format!("/api/hooks/{id}"), None)
        .await;
    c.call(&app, Some(TOKEN), "GET", "/api/hooks/hook_missing", None)
        .await;
    c.call(
        &app,
        Some(TOKEN),
        "POST",
        &format!("/api/hooks/{id}/test"),
        None,
    )
    .await;

    let event = post_json(app.addr, "/t/new_order", fixture("heights/new_order.json")).await;
    let event = event.json()["id"].as_str().unwrap().to_string();
    rx.wait_for(3).await;
    c.call(&app, Some(TOKEN), "GET", "/api/targets", None).await;
    let ev = c
        .call(
            &app,
            Some(TOKEN),
            "GET",
            &format!("/api/events/{event}"),
            None,
        )
        .await;
    let did = ev.json()["deliveries"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.call(&app, Some(TOKEN), "GET", "/api/events/evt_missing", None)
        .await;
    c.call(&app, Some(TOKEN), "GET", "/api/deliveries?limit=1", None)
        .await;
    c.call(&app, Some(TOKEN), "GET", "/api/deliveries?state=nope", None)
        .await;
    c.call(
        &app,
        Some(TOKEN),
        "POST",
        &format!("/api/deliveries/{did}/retry"),
        None,
    )
    .await;
    c.call(
        &app,
        Some(TOKEN),
        "POST",
        "/api/deliveries/dlv_missing/retry",
        None,
    )
    .await;
    let bulk = json!({"state": "dead"});
    c.call(
        &app,
        Some(TOKEN),
        "POST",
        "/api/deliveries/retry",
        Some(bulk),
    )
    .await;
    c.call(
        &app,
        Some(TOKEN),
        "POST",
        "/api/deliveries/retry",
        Some(json!({})),
    )
    .await;
    c.call(
        &app,
        Some(TOKEN),
        "DELETE",
        &format!("/api/hooks/{id}"),
        None,
    )
    .await;
    c.call(
        &app,
        Some(TOKEN),
        "DELETE",
        &format!("/api/hooks/{id}"),
        None,
    )
    .await;

    let documented = operations(&c.spec);
    let missing: Vec<_> = documented.difference(&c.seen).collect();
    assert!(
        missing.is_empty(),
        "documented but never answered 2xx: {missing:?}"
    );
}

#[test]
fn the_checker_catches_misfits() {
    let spec = spec();
    let delivery = json!({"$ref": "#/components/schemas/Delivery"});
    let good = json!({"id": "dlv_1", "event": "evt_1", "target": "t/rx", "state": "dead",
        "attempts": 1, "next_at": null, "last": null, "note": null});
    assert!(check(&spec, &delivery, &good, "$").is_ok());
    let mut bad = good.clone();
    bad["state"] = json!("lost");
    assert!(check(&spec, &delivery, &bad, "$").is_err());
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("target");
    assert!(check(&spec, &delivery, &bad, "$").is_err());
    let mut bad = good;
    bad["attempts"] = json!("one");
    assert!(check(&spec, &delivery, &bad, "$").is_err());
}

#[test]
fn the_route_table_and_the_document_name_the_same_operations() {
    let documented = operations(&spec());
    let served: BTreeSet<(String, String)> = hookrelay::admin::operations().into_iter().collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );
}

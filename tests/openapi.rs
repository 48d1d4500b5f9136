//! docs/openapi.json against the real admin API: every documented
//! operation is called, every answer's status must be documented for it,
//! and every JSON answer must fit the documented schema; the document's
//! patterns take exactly the values the relay takes. (The generated run is
//! tests/conformance/schemathesis.sh.)

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
/// `required`, `properties`, `additionalProperties` (a schema, or `false`:
/// no key beyond `properties`), `items`.
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
        "number" => v.is_number(),
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
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Err(format!("{at}: `{k}` is not allowed in {v}"));
                    }
                    Some(extra) if extra.is_object() => {
                        check(spec, extra, sub, &format!("{at}.{k}"))?;
                    }
                    _ => {}
                },
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

    /// `call`, and the answer must have `status`.
    async fn expect(
        &mut self,
        app: &TestApp,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Reply {
        let r = self.call(app, token, method, path, body).await;
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r
    }
}

/// A `read` token and a `subscriber` one, besides the admin `TOKEN`.
const READ: &str = "test-read-token";
const SUB: &str = "test-subscriber-token";

/// A catalog entry of route `t`, with the example test sends use.
const EVENT_TYPES: &str = "[[routes.event_types]]\n\
    name = \"new_order\"\n\
    display_name = \"New Order\"\n\
    category = \"Sales\"\n\
    description = \"A customer bought a product.\"\n\
    example = '{\"id\": \"order_1\", \"amount\": 49.99, \"status\": \"paid\"}'\n";

/// `spawn_app`, with the `READ` and `SUB` tokens in the tokens file too.
async fn spawn_app_with_scopes(toml: &str) -> TestApp {
    spawn_app_with_tokens(
        toml,
        &format!(
            "{TOKEN}\n{READ} read name=dashboard\n# a subscriber\n{SUB} subscriber name=zapier\n"
        ),
    )
    .await
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let rx = Receiver::ok().await;
    // The API endpoints' receiver, apart from `rx` so that `rx`'s count
    // stays the hook's and the config target's.
    let erx = Receiver::ok().await;
    let toml = format!(
        "admin.max_endpoints_per_token = 2\n{}{EVENT_TYPES}",
        one_route(&rx.url("/hook"), "")
    );
    let app = spawn_app_with_scopes(&toml).await;
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
        .expect(
            &app,
            Some(TOKEN),
            "POST",
            "/api/hooks",
            Some(body.clone()),
            201,
        )
        .await
        .json();
    let id = hook["id"].as_str().unwrap();
    // The same subscription again: the hook there is, without its secret.
    let again = c
        .expect(&app, Some(TOKEN), "POST", "/api/hooks", Some(body), 200)
        .await
        .json();
    assert_eq!(again["id"], hook["id"]);
    assert!(again.get("secret").is_none(), "{again}");
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

    // === endpoints ===
    let bad = json!({"name": "x", "url": "not a url"});
    let r = c
        .expect(&app, Some(TOKEN), "POST", "/api/endpoints", Some(bad), 422)
        .await
        .json();
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("url"), "{message}");
    let new = json!({
        "name": "Nouvelle vente → CRM",
        "description": "Sales to the CRM, as XML",
        "url": erx.url("/ep"),
        "events": ["new_order"],
        "route": "t",
        "enabled": true,
        "format": "xml",
        "content_type": "application/xml",
        "xml_root": "sale",
        "basic_auth": {"username": "lms", "password": "basic-auth-password"},
        "headers": {"x-api-key": "header-value"},
        "filter": {"json": "/status", "in": ["paid", "refunded"]},
        "retry": {
            "max_attempts": 3,
            "timeout": "5s",
            "success": ["200-299"],
            "backoff": {"initial": "20ms", "max": "200ms", "multiplier": 2.0, "jitter": 0.1}
        },
        "rate": {"per_second": 10, "burst": 20},
        "concurrency": 4,
        "metadata": {"team": "sales"},
        "secret": SECRET
    });
    let made = c
        .expect(&app, Some(TOKEN), "POST", "/api/endpoints", Some(new), 201)
        .await
        .json();
    assert_eq!(made["secret"], SECRET);
    let ep = made["id"].as_str().unwrap().to_string();
    let at = format!("/api/endpoints/{ep}");
    let shown = c.expect(&app, Some(TOKEN), "GET", &at, None, 200).await;
    let text = String::from_utf8_lossy(&shown.body);
    assert!(
        !text.contains("basic-auth-password") && !text.contains("header-value"),
        "{text}"
    );
    let page = c
        .expect(
            &app,
            Some(TOKEN),
            "GET",
            "/api/endpoints?limit=1",
            None,
            200,
        )
        .await
        .json();
    assert_eq!(page["endpoints"][0]["id"], "t/rx", "config ones first");
    let next = page["next"].as_str().expect("a next page").to_string();
    let rest = c
        .expect(
            &app,
            Some(TOKEN),
            "GET",
            &format!("/api/endpoints?route=t&limit=1000&after={next}"),
            None,
            200,
        )
        .await
        .json();
    assert!(
        rest["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == ep.as_str()),
        "{rest}"
    );

    // A config endpoint: its id `t/rx` has a `/`, percent-encoded in a path.
    let config_ep = c
        .expect(&app, Some(TOKEN), "GET", "/api/endpoints/t%2Frx", None, 200)
        .await
        .json();
    assert_eq!(config_ep["id"], "t/rx");
    assert_eq!(config_ep["origin"], "config");
    let r = c
        .expect(
            &app,
            Some(TOKEN),
            "PATCH",
            "/api/endpoints/t%2Frx",
            Some(json!({"enabled": false})),
            409,
        )
        .await
        .json();
    assert_eq!(r["error"]["code"], "read_only");
    c.expect(
        &app,
        Some(TOKEN),
        "POST",
        "/api/endpoints/t%2Frx/rotate-secret",
        Some(json!({})),
        409,
    )
    .await;
    c.expect(
        &app,
        Some(TOKEN),
        "DELETE",
        "/api/endpoints/t%2Frx",
        None,
        409,
    )
    .await;
    c.expect(
        &app,
        Some(TOKEN),
        "GET",
        "/api/endpoints/ep_missing",
        None,
        404,
    )
    .await;

    // Test sends: the catalog's example, then a payload of our own.
    let test = format!("{at}/test");
    let sent = c
        .expect(
            &app,
            Some(TOKEN),
            "POST",
            &test,
            Some(json!({"event_type": "new_order"})),
            200,
        )
        .await
        .json();
    assert_eq!(sent["succeeded"], true, "{sent}");
    erx.wait_for(1).await;
    let own = json!({"event_type": "new_order", "payload": {"id": "order_2", "status": "paid"}});
    c.expect(&app, Some(TOKEN), "POST", &test, Some(own), 200)
        .await;
    let no_example = json!({"event_type": "no_such_type"});
    c.expect(&app, Some(TOKEN), "POST", &test, Some(no_example), 422)
        .await;

    let patch = json!({
        "name": "Ventes → CRM (JSON)",
        "description": null,
        "format": "template",
        "template": "{\"order\": {{ payload.id | tojson }}}",
        "content_type": "application/json",
        "xml_root": null,
        "headers": {"x-api-key": "***", "x-team": "sales"},
        "metadata": {"team": null, "env": "test"},
        "retry": {"max_attempts": 5},
        "enabled": false
    });
    let changed = c
        .expect(&app, Some(TOKEN), "PATCH", &at, Some(patch), 200)
        .await
        .json();
    assert_eq!(changed["format"], "template");
    assert_eq!(changed["enabled"], false);
    c.expect(
        &app,
        Some(TOKEN),
        "PATCH",
        &at,
        Some(json!({"enabled": true})),
        200,
    )
    .await;
    c.expect(
        &app,
        Some(TOKEN),
        "PATCH",
        &at,
        Some(json!({"url": "not a url"})),
        422,
    )
    .await;

    let rotate = format!("{at}/rotate-secret");
    let rotated = c
        .expect(
            &app,
            Some(TOKEN),
            "POST",
            &rotate,
            Some(json!({"grace": "1h"})),
            200,
        )
        .await
        .json();
    assert_ne!(rotated["secret"], SECRET);
    let shown = c
        .expect(&app, Some(TOKEN), "GET", &at, None, 200)
        .await
        .json();
    assert_eq!(shown["secrets"], 2, "{shown}");
    c.expect(
        &app,
        Some(TOKEN),
        "POST",
        &rotate,
        Some(json!({"grace": "31d"})),
        422,
    )
    .await;

    // === scopes ===
    let mine = json!({"name": "Zap", "url": erx.url("/zap"), "events": ["new_order"]});
    let zap = c
        .expect(
            &app,
            Some(SUB),
            "POST",
            "/api/endpoints",
            Some(mine.clone()),
            201,
        )
        .await
        .json();
    assert_eq!(zap["owner"], "zapier");
    let zap = zap["id"].as_str().unwrap().to_string();
    let zap_test = c
        .expect(
            &app,
            Some(SUB),
            "POST",
            &format!("/api/endpoints/{zap}/test"),
            Some(json!({"event_type": "new_order"})),
            200,
        )
        .await
        .json();
    assert!(zap_test.get("excerpt").is_none(), "{zap_test}");
    let theirs = c
        .expect(&app, Some(SUB), "GET", "/api/endpoints", None, 200)
        .await
        .json();
    let ids: Vec<&Value> = theirs["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, [&json!(zap)], "a subscriber sees only its own");
    c.expect(&app, Some(SUB), "GET", &at, None, 404).await;
    c.expect(
        &app,
        Some(SUB),
        "GET",
        &format!("/api/endpoints/{zap}"),
        None,
        200,
    )
    .await;
    let sub_hook = json!({"target_url": erx.url("/zap-hook"), "event": "new_order"});
    let sub_hook = c
        .expect(&app, Some(SUB), "POST", "/api/hooks", Some(sub_hook), 201)
        .await
        .json();
    let r = c
        .expect(
            &app,
            Some(SUB),
            "POST",
            "/api/endpoints",
            Some(mine.clone()),
            409,
        )
        .await
        .json();
    assert_eq!(r["error"]["code"], "limit_reached");
    let r = c
        .expect(
            &app,
            Some(SUB),
            "PATCH",
            &format!("/api/endpoints/{zap}"),
            Some(json!({"enabled": false})),
            403,
        )
        .await
        .json();
    assert_eq!(r["error"]["code"], "forbidden");
    c.expect(&app, Some(SUB), "GET", "/api/targets", None, 403)
        .await;
    c.expect(&app, Some(SUB), "GET", "/api/event-types", None, 200)
        .await;
    c.expect(&app, Some(READ), "GET", "/api/endpoints", None, 200)
        .await;
    c.expect(&app, Some(READ), "POST", "/api/endpoints", Some(mine), 403)
        .await;
    c.expect(
        &app,
        Some(SUB),
        "DELETE",
        &format!("/api/hooks/{}", sub_hook["id"].as_str().unwrap()),
        None,
        204,
    )
    .await;
    c.expect(
        &app,
        Some(SUB),
        "DELETE",
        &format!("/api/endpoints/{zap}"),
        None,
        204,
    )
    .await;

    // === the inbound log ===
    let refused = post_json(app.addr, "/nowhere", "{}").await;
    assert_eq!(refused.status, 404);
    let event = post_json(app.addr, "/t/new_order", fixture("heights/new_order.json")).await;
    let event = event.json()["id"].as_str().unwrap().to_string();
    rx.wait_for(3).await;
    // Three test sends and this event's delivery to `ep`.
    erx.wait_for(4).await;
    let undeclared = post_json(
        app.addr,
        "/t/new_student",
        fixture("heights/new_student.json"),
    )
    .await;
    assert_eq!(undeclared.status, 202);
    eventually_async("the 404 in the inbound log", async || {
        let r = admin(&app, "GET", "/api/events?outcome=rejected", None).await;
        let log = (r.status == 200).then(|| r.json())?;
        (!log["events"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let log = c
        .expect(&app, Some(TOKEN), "GET", "/api/events?limit=10", None, 200)
        .await
        .json();
    let outcomes: BTreeSet<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert!(
        outcomes.contains("accepted") && outcomes.contains("rejected"),
        "{log}"
    );
    let accepted = c
        .expect(
            &app,
            Some(TOKEN),
            "GET",
            "/api/events?route=t&type=new_order&outcome=accepted&limit=1",
            None,
            200,
        )
        .await
        .json();
    assert_eq!(accepted["events"][0]["event"], event.as_str(), "{accepted}");
    c.expect(
        &app,
        Some(TOKEN),
        "GET",
        "/api/events?outcome=nope",
        None,
        422,
    )
    .await;

    // === event types: new_order is declared, new_student only seen ===
    eventually_async("new_student among the event types", async || {
        let r = admin(&app, "GET", "/api/event-types?route=t", None).await;
        let types = (r.status == 200).then(|| r.json())?;
        types["event_types"]
            .as_array()?
            .iter()
            .any(|t| t["name"] == "new_student")
            .then_some(())
    })
    .await;
    let types = c
        .expect(
            &app,
            Some(TOKEN),
            "GET",
            "/api/event-types?route=t",
            None,
            200,
        )
        .await
        .json();
    let declared = |name: &str| {
        types["event_types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["declared"].clone())
    };
    assert_eq!(declared("new_order"), Some(json!(true)), "{types}");
    assert_eq!(declared("new_student"), Some(json!(false)), "{types}");

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
    c.expect(&app, Some(TOKEN), "DELETE", &at, None, 204).await;
    c.expect(&app, Some(TOKEN), "DELETE", &at, None, 404).await;
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

    // A fraction is a number; `additionalProperties: false` is enforced, so
    // a basic-auth password in an answer is caught.
    let endpoint = &spec["components"]["schemas"]["Endpoint"]["properties"];
    assert!(check(&spec, &endpoint["success_rate"], &json!(0.5), "$").is_ok());
    assert!(check(&spec, &endpoint["success_rate"], &json!("half"), "$").is_err());
    let auth = &endpoint["basic_auth"];
    assert!(check(&spec, auth, &json!({"username": "lms"}), "$").is_ok());
    assert!(check(&spec, auth, &json!(null), "$").is_ok());
    let leaked = json!({"username": "lms", "password": "pw"});
    assert!(check(&spec, auth, &leaked, "$").is_err());
    assert!(check(&spec, &endpoint["headers"], &json!({"x-key": "***"}), "$").is_ok());
    assert!(check(&spec, &endpoint["headers"], &json!({"x-key": "k"}), "$").is_err());
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

/// The `pattern` of `schema` (following one `$ref`), as a regex.
fn pattern(spec: &Value, schema: &Value) -> regex::Regex {
    let schema = match schema["$ref"].as_str() {
        Some(r) => &spec["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => schema,
    };
    let p = schema["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("no pattern in {schema}"));
    regex::Regex::new(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// A key of `bytes` bytes in the Standard Webhooks form.
fn secret_of(bytes: usize) -> String {
    use base64::Engine;
    let key: Vec<u8> = (0..bytes).map(|i| (i * 37 % 251) as u8).collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

#[tokio::test]
async fn the_documents_patterns_refuse_what_the_relay_refuses_and_no_more() {
    let spec = spec();
    let app = spawn_app("[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n").await;
    let hook = &spec["components"]["schemas"]["NewHook"]["properties"];
    let base = json!({"target_url": "http://127.0.0.1:9/hook", "event": "new_order"});
    // (field of NewHook, value, whether the relay takes it)
    let mut cases: Vec<(&str, String, bool)> = Vec::new();
    for (v, ok) in [
        ("course_*", true),
        ("*", true),
        ("virtual classroom.*", true),
        ("a *", true),
        ("", false),
        (" padded", false),
        ("padded ", false),
        ("a*b", false),
        ("**", false),
        ("bell\u{7}", false),
    ] {
        cases.push(("event", v.to_string(), ok));
    }
    for (v, ok) in [
        (secret_of(24), true),
        (secret_of(25), true),
        (secret_of(26), true),
        (secret_of(64), true),
        (secret_of(23), false),
        (secret_of(65), false),
        ("hunter2".to_string(), false),
        // Non-canonical padding bits.
        (format!("whsec_{}B=", "A".repeat(34)), false),
    ] {
        cases.push(("secret", v, ok));
    }
    for (v, ok) in [
        ("http://127.0.0.1:9/x?y=1", true),
        ("https://lms.example/hooks", true),
        ("ftp://lms.example/", false),
        ("lms.example/hooks", false),
        ("http://user:pw@lms.example/", false),
        ("http:///nohost", false),
    ] {
        cases.push(("target_url", v.to_string(), ok));
    }
    for (i, (field, value, takes)) in cases.into_iter().enumerate() {
        let documented = pattern(&spec, &hook[field]).is_match(&value);
        assert_eq!(documented, takes, "the document on {field} = {value:?}");
        let mut body = base.clone();
        // A new event each time: the same URL and event give the same hook.
        body["event"] = json!(format!("case_{i}"));
        body[field] = json!(value);
        let r = admin(&app, "POST", "/api/hooks", Some(body)).await;
        let want = if takes { 201 } else { 422 };
        assert_eq!(
            r.status, want,
            "the relay on {field} = {value:?}: {:?}",
            r.body
        );
    }

    // Page cursors: the relay's ids, nothing else.
    let params = |path: &str| spec["paths"][path]["get"]["parameters"].clone();
    let after = |path: &str| {
        let ps = params(path);
        let p = ps
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "after")
            .unwrap()
            .clone();
        pattern(&spec, &p["schema"])
    };
    let ulid = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    for (path, prefix) in [("/api/deliveries", "dlv_"), ("/api/events", "in_")] {
        let re = after(path);
        for (v, takes) in [
            (format!("{prefix}{ulid}"), true),
            (format!("{prefix}{}", ulid.to_lowercase()), true),
            (String::new(), false),
            (prefix.to_string(), false),
            (format!("evt_{ulid}"), false),
            (format!("{prefix}{ulid}0"), false),
        ] {
            assert_eq!(re.is_match(&v), takes, "the document on {path}?after={v}");
            let r = admin(&app, "GET", &format!("{path}?after={v}"), None).await;
            let want = if takes { 200 } else { 422 };
            assert_eq!(r.status, want, "the relay on {path}?after={v}");
        }
    }

    // Bulk replay: `target` is a string; null is not "every target".
    let bulk = &spec["components"]["schemas"]["BulkRetry"];
    let null = json!({"state": "dead", "target": null});
    assert!(check(&spec, bulk, &null, "BulkRetry").is_err());
    let r = admin(&app, "POST", "/api/deliveries/retry", Some(null)).await;
    assert_eq!(r.status, 422);
    let absent = json!({"state": "dead"});
    assert!(check(&spec, bulk, &absent, "BulkRetry").is_ok());
    let r = admin(&app, "POST", "/api/deliveries/retry", Some(absent)).await;
    assert_eq!(r.status, 200);
}

//! Endpoints, the way the people who configure them tell it: a BrainCert
//! "New Sale" form to an XML CRM behind basic auth, an online school's list
//! of receivers by category, REST Hooks under a subscriber token, a
//! configured target renamed under live traffic, the inbound log, what the
//! API refuses, pausing, and rotating a secret. Real relay, real HTTP, real
//! loopback receivers.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use common::*;
use hookrelay::config::Config;
use hookrelay::Relay;
use serde_json::{json, Value};
use sha2::Digest;

// === helpers ===

/// `[[routes.event_types]]` tables for the route above them: (name,
/// display name, category, example as JSON text).
fn catalog(entries: &[(&str, &str, &str, &[u8])]) -> String {
    let mut out = String::new();
    for (name, display, category, example) in entries {
        let example = std::str::from_utf8(example).unwrap();
        assert!(!example.contains("'''"));
        out.push_str(&format!(
            "[[routes.event_types]]\nname = \"{name}\"\ndisplay_name = \"{display}\"\n\
             category = \"{category}\"\nexample = '''\n{example}'''\n"
        ));
    }
    out
}

/// A config endpoint id as it goes in a URL path.
fn enc(id: &str) -> String {
    id.replace('/', "%2F")
}

/// The name the relay gives a token that has no `name=`.
fn default_token_name(token: &str) -> String {
    let digest = sha2::Sha256::digest(token.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("token-{hex}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The `webhook-id`s a receiver got, in order.
fn webhook_ids(rx: &Receiver) -> Vec<String> {
    rx.received()
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect()
}

/// POSTs an endpoint as `token`; it must be created. Returns the 201 answer.
async fn create_as(app: &TestApp, token: &str, body: Value) -> Value {
    let r = admin_as(
        app,
        Some(token),
        "POST",
        "/api/endpoints",
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 201, "{body}: {:?}", r.body);
    r.json()
}

async fn create(app: &TestApp, body: Value) -> Value {
    create_as(app, TOKEN, body).await
}

/// The ids of the deliveries a `GET /api/deliveries` answer lists.
fn delivery_ids(page: &Value) -> BTreeSet<String> {
    page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts a 422 `invalid` whose message starts with `field`; returns the message.
fn assert_invalid(r: &Reply, field: &str, what: &str) -> String {
    assert_eq!(r.status, 422, "{what}: {:?}", r.body);
    let j = r.json();
    assert_eq!(j["error"]["code"], "invalid", "{what}: {j}");
    let msg = j["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.starts_with(field), "{what}: {msg}");
    msg
}

/// A route `/t/{event}` with no configured targets.
const BARE_ROUTE: &str = "[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n";

/// BARE_ROUTE with one configured target `audit` that gets every event: a
/// witness that the relay has dispatched what was posted.
fn route_with_witness(witness: &Receiver) -> String {
    format!(
        "{BARE_ROUTE}[[routes.targets]]\nname = \"audit\"\nurl = \"{}\"\n",
        witness.url("/audit")
    )
}

// === 1. BrainCert's "New Sale" form ===

fn braincert_route() -> String {
    format!(
        "[[routes]]\nname = \"braincert\"\npath = \"/braincert\"\n\
         event = \"{{json./resource}}.{{json./action}}\"\n{}",
        catalog(&[(
            "purchase.completed",
            "New Sale",
            "Sales",
            &fixture("braincert/new_sale.json"),
        )])
    )
}

#[tokio::test]
async fn braincert_new_sale_goes_as_xml_to_a_crm_behind_basic_auth_and_test_sends_show() {
    let crm = Receiver::ok().await;
    let sheet = Receiver::ok().await;
    let app = spawn_app(&braincert_route()).await;
    let password = "s3cret-pw";
    let sale: Value = serde_json::from_slice(&fixture("braincert/new_sale.json")).unwrap();
    // Every answer of the story, to check none shows the password.
    let mut answers: Vec<Bytes> = Vec::new();

    // The form offers the catalog: "New Sale" under "Sales", with its example.
    let r = admin(&app, "GET", "/api/event-types?route=braincert", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let types = r.json();
    answers.push(r.body);
    let new_sale = types["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "purchase.completed")
        .unwrap_or_else(|| panic!("purchase.completed not offered: {types}"))
        .clone();
    assert_eq!(new_sale["route"], "braincert");
    assert_eq!(new_sale["display_name"], "New Sale");
    assert_eq!(new_sale["category"], "Sales");
    assert_eq!(new_sale["declared"], true);
    assert_eq!(new_sale["example"], sale);

    // Submitted: XML under <sale>, basic auth, a custom header.
    let r = admin(
        &app,
        "POST",
        "/api/endpoints",
        Some(json!({
            "name": "Nouvelle vente → CRM",
            "url": crm.url("/crm/sales"),
            "route": "braincert",
            "events": ["purchase.completed"],
            "format": "xml",
            "xml_root": "sale",
            "basic_auth": {"username": "lms", "password": password},
            "headers": {"x-api-key": "crm-key-123"},
            "metadata": {"team": "sales"},
        })),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let ep = r.json();
    answers.push(r.body);
    let id = ep["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ep_"), "{id}");
    let secret = ep["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(ep["origin"], "api");
    assert_eq!(ep["owner"], default_token_name(TOKEN).as_str());
    assert_eq!(ep["name"], "Nouvelle vente → CRM");
    assert_eq!(ep["route"], "braincert");
    assert_eq!(ep["events"], json!(["purchase.completed"]));
    assert_eq!(ep["enabled"], true);
    assert_eq!(ep["format"], "xml");
    assert_eq!(ep["xml_root"], "sale");
    assert_eq!(ep["basic_auth"], json!({"username": "lms"}));
    assert_eq!(ep["headers"], json!({"x-api-key": "***"}));
    assert_eq!(ep["metadata"], json!({"team": "sales"}));
    assert_eq!(ep["secrets"], 1);

    // A second one for the same sale: a custom body for a spreadsheet.
    let r = admin(
        &app,
        "POST",
        "/api/endpoints",
        Some(json!({
            "name": "Ventes — tableur",
            "url": sheet.url("/sheet"),
            "route": "braincert",
            "events": ["purchase.completed"],
            "format": "template",
            "template": "{\"order\": {{ payload.payload.order_id | tojson }}, \
                         \"buyer\": {{ payload.payload.user.email | tojson }}, \
                         \"type\": {{ event.type | tojson }}}",
            "content_type": "application/json",
        })),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let sheet_ep = r.json();
    answers.push(r.body);
    let sheet_id = sheet_ep["id"].as_str().unwrap().to_string();
    let sheet_secret = sheet_ep["secret"].as_str().unwrap().to_string();
    assert_eq!(sheet_ep["format"], "template");
    assert_eq!(sheet_ep["basic_auth"], Value::Null);

    // Send Test: the catalog's example goes out, as XML, with basic auth.
    let r = admin(
        &app,
        "POST",
        &format!("/api/endpoints/{id}/test"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let test = r.json();
    answers.push(r.body);
    assert_eq!(test["status"], 200, "{test}");
    assert_eq!(test["succeeded"], true, "{test}");
    assert_eq!(test["error"], Value::Null);
    assert_eq!(test["event_type"], "purchase.completed");
    assert_eq!(test["excerpt"], "ok");
    let test_event = test["event_id"].as_str().unwrap().to_string();
    assert!(test_event.starts_with("evt_test_"), "{test_event}");

    let got = crm.wait_for(1).await;
    let req = &got[0];
    assert_eq!(req.path, "/crm/sales");
    let h = &req.headers;
    assert_eq!(h["content-type"], "application/xml");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("lms:{password}"));
    assert_eq!(h["authorization"], format!("Basic {basic}").as_str());
    assert_eq!(h["x-api-key"], "crm-key-123");
    assert_eq!(h["webhook-id"], test_event.as_str());
    assert!(
        verify_signature(&secret, h, &req.body),
        "signed with the 201's secret"
    );
    let text = std::str::from_utf8(&req.body).unwrap();
    assert!(text.starts_with("<?xml"), "{text}");
    let doc = roxmltree::Document::parse(text).unwrap();
    assert_eq!(doc.root_element().tag_name().name(), "sale");
    let order = doc
        .descendants()
        .find(|n| n.has_tag_name("order_id"))
        .unwrap_or_else(|| panic!("no order_id in {text}"));
    assert_eq!(order.text(), Some("ORD_ep3FVWZ9lC"));

    // Tests count as calls and as tests, never as successes.
    let shown = eventually_json(&app, &format!("/api/endpoints/{id}"), |v| {
        v["counters"]["calls"] == 1
    })
    .await;
    let c = &shown["counters"];
    assert_eq!(c["calls"], 1, "{shown}");
    assert_eq!(c["succeeded"], 0, "{shown}");
    assert_eq!(c["failed"], 0, "{shown}");
    assert_eq!(c["tests"], 1, "{shown}");
    assert_eq!(shown["success_rate"], Value::Null, "no real delivery yet");
    assert_eq!(shown["basic_auth"], json!({"username": "lms"}));
    assert!(shown.get("secret").is_none());
    let recent = &shown["recent_tests"][0];
    assert_eq!(recent["event_id"], test_event.as_str());
    assert_eq!(recent["status"], 200);
    assert_eq!(recent["succeeded"], true);
    answers.push(
        admin(&app, "GET", &format!("/api/endpoints/{id}"), None)
            .await
            .body,
    );

    // The custom body's test, rendered from the same example.
    let r = admin(
        &app,
        "POST",
        &format!("/api/endpoints/{sheet_id}/test"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["succeeded"], true, "{:?}", r.body);
    answers.push(r.body);
    let got = sheet.wait_for(1).await;
    assert_eq!(got[0].headers["content-type"], "application/json");
    assert!(verify_signature(
        &sheet_secret,
        &got[0].headers,
        &got[0].body
    ));
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        body,
        json!({"order": "ORD_ep3FVWZ9lC", "buyer": "learner@example.com", "type": "purchase.completed"})
    );

    // An edit that does not touch the password keeps it.
    let r = admin(
        &app,
        "PATCH",
        &format!("/api/endpoints/{id}"),
        Some(json!({"description": "BrainCert sales into the CRM"})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["description"], "BrainCert sales into the CRM");
    assert_eq!(r.json()["basic_auth"], json!({"username": "lms"}));
    answers.push(r.body);

    // A real sale from BrainCert reaches both, and counts as a success.
    let r = post_json(app.addr, "/braincert", fixture("braincert/new_sale.json")).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.json()["deliveries"], 2);
    let event = r.json()["id"].as_str().unwrap().to_string();
    let got = crm.wait_for(2).await;
    assert_eq!(got[1].headers["webhook-id"], event.as_str());
    assert_eq!(
        got[1].headers["authorization"],
        format!("Basic {basic}").as_str()
    );
    assert!(verify_signature(&secret, &got[1].headers, &got[1].body));
    sheet.wait_for(2).await;
    let shown = eventually_json(&app, &format!("/api/endpoints/{id}"), |v| {
        v["counters"]["succeeded"] == 1
    })
    .await;
    assert_eq!(shown["counters"]["calls"], 2);
    assert_eq!(shown["counters"]["tests"], 1);
    assert_eq!(shown["success_rate"], 1.0);

    let r = admin(&app, "GET", "/api/endpoints", None).await;
    assert_eq!(r.status, 200);
    let names: BTreeSet<String> = r.json()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains("Nouvelle vente → CRM"), "{names:?}");
    assert!(names.contains("Ventes — tableur"), "{names:?}");
    answers.push(r.body);
    answers.push(
        admin(&app, "GET", &format!("/api/events/{event}"), None)
            .await
            .body,
    );
    answers.push(admin(&app, "GET", "/api/deliveries", None).await.body);
    answers.push(admin(&app, "GET", "/api/targets", None).await.body);

    for body in &answers {
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains(password), "the password shows in {text}");
        assert!(
            !text.contains("crm-key-123"),
            "a header value shows in {text}"
        );
    }
}

// === 2. The online school's list ===

/// A creator platform's webhook: the event named in the body's `type`.
fn creator_event(kind: &str, n: usize) -> Vec<u8> {
    json!({"type": kind, "id": format!("evt_{kind}_{n}"), "created_at": "2025-03-14T09:26:53Z",
           "data": {"n": n}})
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn the_online_school_lists_its_endpoints_by_category_with_their_counts() {
    let kinds = [
        ("order.paid", "Order Paid", "Sales"),
        ("subscription.renewed", "Subscription Renewed", "Sales"),
        ("customer.created", "Customer Created", "CRM"),
        ("student.enrolled", "Student Enrolled", "Education"),
        ("lesson.completed", "Lesson Completed", "Education"),
    ];
    let examples: Vec<Vec<u8>> = kinds.iter().map(|(k, _, _)| creator_event(k, 0)).collect();
    let entries: Vec<(&str, &str, &str, &[u8])> = kinds
        .iter()
        .zip(&examples)
        .map(|((k, d, c), e)| (*k, *d, *c, &e[..]))
        .collect();
    let route = format!(
        "[[routes]]\nname = \"creator\"\npath = \"/creator\"\nevent = \"{{json./type}}\"\n{}",
        catalog(&entries)
    );
    let app = spawn_app(&route).await;

    // The events of each category, as the catalog gives them to the form.
    let types = admin(&app, "GET", "/api/event-types?route=creator", None)
        .await
        .json();
    let mut by_category: HashMap<String, Vec<String>> = HashMap::new();
    for t in types["event_types"].as_array().unwrap() {
        assert_eq!(t["declared"], true, "{t}");
        by_category
            .entry(t["category"].as_str().unwrap().to_string())
            .or_default()
            .push(t["name"].as_str().unwrap().to_string());
    }
    for events in by_category.values_mut() {
        events.sort();
    }
    assert_eq!(
        by_category["Sales"],
        vec!["order.paid", "subscription.renewed"]
    );
    assert_eq!(by_category["CRM"], vec!["customer.created"]);
    assert_eq!(
        by_category["Education"],
        vec!["lesson.completed", "student.enrolled"]
    );

    // One endpoint per category, each to its own receiver.
    let plan = [
        ("Sales", "Ventes → comptabilité"),
        ("CRM", "CRM sync"),
        ("Education", "Lernfortschritt / Education"),
    ];
    let mut endpoints = Vec::new();
    for (category, name) in plan {
        let rx = Receiver::ok().await;
        let events = by_category[category].clone();
        let ep = create(
            &app,
            json!({"name": name, "url": rx.url("/in"), "route": "creator", "events": events}),
        )
        .await;
        endpoints.push((ep["id"].as_str().unwrap().to_string(), name, events, rx));
    }

    // N1 = 3 sales, N2 = 2 new customers, N3 = 4 learning events.
    let posts: [(&str, usize); 5] = [
        ("order.paid", 2),
        ("subscription.renewed", 1),
        ("customer.created", 2),
        ("student.enrolled", 1),
        ("lesson.completed", 3),
    ];
    for (kind, n) in posts {
        for i in 1..=n {
            let r = post_json(app.addr, "/creator", creator_event(kind, i)).await;
            assert_eq!(r.status, 202, "{kind}: {:?}", r.body);
            assert_eq!(r.json()["deliveries"], 1, "{kind}");
        }
    }
    for ((_, name, _, rx), n) in endpoints.iter().zip([3, 2, 4]) {
        let got = rx.wait_for(n).await;
        assert_eq!(got.len(), n, "{name}");
    }

    let list = eventually_json(&app, "/api/endpoints?route=creator", |v| {
        let items = v["endpoints"].as_array().unwrap();
        endpoints.iter().all(|(id, _, _, rx)| {
            items.iter().any(|e| {
                e["id"] == id.as_str()
                    && e["counters"]["calls"].as_u64() == Some(rx.received().len() as u64)
            })
        })
    })
    .await;
    let items = list["endpoints"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{list}");
    assert!(list["next"].is_null());
    for (id, name, events, rx) in &endpoints {
        let e = items.iter().find(|e| e["id"] == id.as_str()).unwrap();
        assert_eq!(e["name"], *name);
        assert_eq!(e["route"], "creator");
        assert_eq!(e["events"], json!(events));
        let got = rx.received().len() as u64;
        assert_eq!(e["counters"]["calls"].as_u64(), Some(got), "{name}: {e}");
        assert_eq!(e["counters"]["tests"], 0);
        // Each receiver got the events of its category only.
        for req in rx.received() {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            let kind = body["type"].as_str().unwrap().to_string();
            assert!(events.contains(&kind), "{name} got {kind}");
        }
    }
    let all_ok = eventually_json(&app, "/api/endpoints?route=creator", |v| {
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["counters"]["succeeded"] == e["counters"]["calls"])
    })
    .await;
    for e in all_ok["endpoints"].as_array().unwrap() {
        assert_eq!(e["success_rate"], 1.0, "{e}");
    }
}

// === 3. REST Hooks with a subscriber token ===

#[tokio::test]
async fn a_subscriber_token_sees_only_its_hooks_and_a_410_unsubscribes() {
    const ZAPIER: &str = "zapier-subscriber-token";
    const OTHER: &str = "other-subscriber-token";
    let witness = Receiver::ok().await;
    let up = Arc::new(AtomicBool::new(true));
    // Answers 410 Gone once `up` is cleared.
    let zap = Receiver::switchable(up.clone(), 410).await;
    let tokens = format!(
        "# admin, then two integrations\n{TOKEN} admin\n\n\
         {ZAPIER} subscriber name=zapier\n{OTHER} subscriber name=other\n"
    );
    let app = spawn_app_with_tokens(&route_with_witness(&witness), &tokens).await;
    let hook_body = json!({"target_url": zap.url("/zap"), "event": "new_order"});

    let r = admin_as(
        &app,
        Some(ZAPIER),
        "POST",
        "/api/hooks",
        Some(hook_body.clone()),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let hook = r.json();
    let id = hook["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("hook_"), "{id}");
    let secret = hook["secret"].as_str().unwrap().to_string();
    assert_eq!(hook["target_url"], zap.url("/zap").as_str());
    assert_eq!(hook["event"], "new_order");

    // Subscribing again is idempotent, and the secret is not shown again.
    let r = admin_as(&app, Some(ZAPIER), "POST", "/api/hooks", Some(hook_body)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let again = r.json();
    assert_eq!(again["id"], id.as_str());
    assert!(again.get("secret").is_none(), "{again}");
    assert!(!String::from_utf8_lossy(&r.body).contains(&secret));

    // Another subscriber neither sees nor touches it.
    let r = admin_as(&app, Some(OTHER), "GET", "/api/hooks", None).await;
    assert_eq!(r.status, 200);
    assert!(
        !r.json()["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["id"] == id.as_str()),
        "{:?}",
        r.body
    );
    for (method, path) in [
        ("GET", format!("/api/hooks/{id}")),
        ("GET", format!("/api/endpoints/{id}")),
        ("DELETE", format!("/api/hooks/{id}")),
        ("DELETE", format!("/api/endpoints/{id}")),
    ] {
        let r = admin_as(&app, Some(OTHER), method, &path, None).await;
        assert_eq!(r.status, 404, "{method} {path} as other: {:?}", r.body);
        assert_eq!(r.json()["error"]["code"], "not_found");
    }
    let r = admin_as(&app, Some(OTHER), "GET", "/api/endpoints", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["endpoints"], json!([]), "not even the config ones");

    // Zapier sees its own, and only its own.
    let r = admin_as(&app, Some(ZAPIER), "GET", "/api/hooks", None).await;
    let hooks = r.json()["hooks"].as_array().unwrap().clone();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["id"], id.as_str());
    assert_eq!(hooks[0]["enabled"], true);
    let r = admin_as(&app, Some(ZAPIER), "GET", "/api/endpoints", None).await;
    assert_eq!(r.status, 200);
    let mine = r.json()["endpoints"].as_array().unwrap().clone();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["id"], id.as_str());
    assert_eq!(mine[0]["owner"], "zapier");
    assert_eq!(mine[0]["origin"], "api");
    // The admin sees the config one and the hook.
    let all = admin(&app, "GET", "/api/endpoints", None).await.json();
    let all_ids: Vec<_> = all["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all_ids, vec!["t/audit".to_string(), id.clone()]);

    // A test send as the subscriber: no receiver excerpt in the answer.
    let r = admin_as(
        &app,
        Some(ZAPIER),
        "POST",
        &format!("/api/endpoints/{id}/test"),
        Some(json!({"event_type": "new_order", "payload": {"order": 1}})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let test = r.json();
    assert_eq!(test["succeeded"], true, "{test}");
    assert!(test.get("excerpt").is_none(), "{test}");
    let got = zap.wait_for(1).await;
    assert!(verify_signature(&secret, &got[0].headers, &got[0].body));
    let shown = admin_as(
        &app,
        Some(ZAPIER),
        "GET",
        &format!("/api/endpoints/{id}"),
        None,
    )
    .await
    .json();
    assert!(shown["recent_tests"][0].get("excerpt").is_none(), "{shown}");

    // A real order reaches it, signed.
    let order = fixture("heights/new_order.json");
    let r = post_json(app.addr, "/t/new_order", order.clone()).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["deliveries"], 2);
    let event = r.json()["id"].as_str().unwrap().to_string();
    let got = zap.wait_for(2).await;
    assert_eq!(got[1].headers["webhook-id"], event.as_str());
    assert_eq!(&got[1].body[..], &order[..]);
    assert!(verify_signature(&secret, &got[1].headers, &got[1].body));

    // What is not the subscriber's to see.
    for (method, path) in [
        ("GET", format!("/api/events/{event}")),
        ("GET", "/api/deliveries".to_string()),
        ("GET", "/api/targets".to_string()),
        ("POST", "/api/deliveries/retry".to_string()),
    ] {
        let body = (method == "POST").then(|| json!({"state": "dead"}));
        let r = admin_as(&app, Some(ZAPIER), method, &path, body).await;
        assert_eq!(r.status, 403, "{method} {path}: {:?}", r.body);
        assert_eq!(r.json()["error"]["code"], "forbidden");
    }
    assert_eq!(
        admin(&app, "GET", &format!("/api/events/{event}"), None)
            .await
            .status,
        200
    );

    // Zapier's side is gone: its receiver answers 410 to the next delivery.
    up.store(false, Ordering::SeqCst);
    let r = post_json(app.addr, "/t/new_order", order.clone()).await;
    assert_eq!(r.status, 202);
    zap.wait_for(3).await;
    let disabled = eventually_json_as(&app, ZAPIER, &format!("/api/endpoints/{id}"), |v| {
        v["enabled"] == false
    })
    .await;
    let reason = disabled["disabled_reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "{disabled}");
    let h = admin_as(&app, Some(ZAPIER), "GET", &format!("/api/hooks/{id}"), None)
        .await
        .json();
    assert_eq!(h["enabled"], false, "{h}");

    // After that, orders reach the audit target but no longer the hook.
    let r = post_json(app.addr, "/t/new_order", order).await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.json()["deliveries"],
        1,
        "only the audit target is queued: {:?}",
        r.body
    );
    let after = r.json()["id"].as_str().unwrap().to_string();
    let seen = witness.wait_for(3).await;
    assert_eq!(seen[2].headers["webhook-id"], after.as_str());
    let ev = admin(&app, "GET", &format!("/api/events/{after}"), None)
        .await
        .json();
    assert!(
        !ev["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["target"] == id.as_str()),
        "no delivery for a disabled hook: {ev}"
    );
    assert_eq!(zap.received().len(), 3, "no delivery after the 410");
}

// === 4. A configured target, renamed under live traffic ===

/// The heights route with one target `name` at `url` (its id stays
/// `heights/crm`: given by the first name, kept by route + url).
fn heights_crm(url: &str, name: &str) -> String {
    format!(
        "[[routes]]\nname = \"heights\"\npath = \"/heights/{{event}}\"\nevent = \"{{path.event}}\"\n\
         [[routes.targets]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n\
         max_attempts = 1000\n"
    )
}

#[tokio::test]
async fn a_configured_target_keeps_its_id_counters_and_pending_deliveries_across_a_rename() {
    let up = Arc::new(AtomicBool::new(true));
    let rx = Receiver::switchable(up.clone(), 500).await;
    let url = rx.url("/crm");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hookrelay.toml");
    std::fs::write(
        &file,
        test_config_text(&heights_crm(&url, "crm"), dir.path()),
    )
    .unwrap();
    let relay = Relay::start(Config::load(&file).unwrap())
        .await
        .expect("relay starts");
    let app = TestApp {
        addr: relay.ingest_addrs()[0],
        relay,
        dir,
    };
    let id = "heights/crm";
    let path = format!("/api/endpoints/{}", enc(id));

    let shown = admin(&app, "GET", &path, None).await;
    assert_eq!(shown.status, 200, "{:?}", shown.body);
    let shown = shown.json();
    assert_eq!(shown["id"], id);
    assert_eq!(shown["origin"], "config");
    assert_eq!(shown["owner"], Value::Null);
    assert_eq!(shown["name"], "crm");
    assert!(shown.get("secret").is_none());
    // The file owns it.
    let r = admin(&app, "PATCH", &path, Some(json!({"name": "x"}))).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.json()["error"]["code"], "read_only");

    // Send Test on it.
    let order = fixture("heights/new_order.json");
    let payload: Value = serde_json::from_slice(&order).unwrap();
    let r = admin(
        &app,
        "POST",
        &format!("{path}/test"),
        Some(json!({"event_type": "new_order", "payload": payload})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let test = r.json();
    assert_eq!(test["status"], 200, "{test}");
    assert_eq!(test["succeeded"], true);
    let got = rx.wait_for(1).await;
    assert!(got[0].headers["webhook-id"]
        .to_str()
        .unwrap()
        .starts_with("evt_test_"));
    assert!(verify_signature(SECRET, &got[0].headers, &got[0].body));

    // One real order goes through.
    let first = post_json(app.addr, "/heights/new_order", order.clone()).await;
    assert_eq!(first.status, 202);
    rx.wait_for(2).await;
    eventually_json(&app, &path, |v| v["counters"]["succeeded"] == 1).await;

    // The CRM goes down; two orders wait for it.
    up.store(false, Ordering::SeqCst);
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let r = post_json(app.addr, "/heights/new_order", order.clone()).await;
        assert_eq!(r.status, 202);
        waiting.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let pending_path = format!("/api/deliveries?target={}&state=pending", enc(id));
    let pending = eventually_json(&app, &pending_path, |v| {
        let events: BTreeSet<_> = v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["event"].as_str().unwrap().to_string())
            .collect();
        events == waiting.iter().cloned().collect() && v["deliveries"][0]["attempts"] != 0
    })
    .await;
    let pending_ids = delivery_ids(&pending);
    let before = admin(&app, "GET", &path, None).await.json();
    assert_eq!(before["counters"]["succeeded"], 1);
    assert_eq!(before["counters"]["tests"], 1);

    // The operator gives it a display name and reloads.
    std::fs::write(
        &file,
        test_config_text(&heights_crm(&url, "CRM (Heights)"), app.dir.path()),
    )
    .unwrap();
    app.relay
        .reload(Config::load(&file).unwrap())
        .await
        .expect("reload");
    let after = admin(&app, "GET", &path, None).await;
    assert_eq!(after.status, 200, "the id is kept: {:?}", after.body);
    let after = after.json();
    assert_eq!(after["id"], id);
    assert_eq!(after["name"], "CRM (Heights)");
    assert_eq!(after["url"], url.as_str());
    assert_eq!(after["route"], "heights");
    let (b, a) = (&before["counters"], &after["counters"]);
    assert_eq!(a["succeeded"], 1, "{after}");
    assert_eq!(a["tests"], 1, "{after}");
    assert!(
        a["calls"].as_u64() >= b["calls"].as_u64(),
        "{before} → {after}"
    );
    assert!(
        a["failed"].as_u64() >= b["failed"].as_u64(),
        "{before} → {after}"
    );
    let list = admin(&app, "GET", "/api/endpoints", None).await.json();
    let ids: Vec<_> = list["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(id)], "renamed, not replaced");
    eventually_json(&app, &pending_path, |v| delivery_ids(v) == pending_ids).await;

    // The CRM is back: both orders arrive after that, and succeed once each.
    let n0 = rx.received().len();
    up.store(true, Ordering::SeqCst);
    eventually_json(&app, &path, |v| v["counters"]["succeeded"] == 3).await;
    let ids = webhook_ids(&rx);
    for event in &waiting {
        let arrived = rx.received()[n0..]
            .iter()
            .filter(|r| r.headers["webhook-id"] == event.as_str())
            .count();
        assert!(
            arrived >= 1,
            "{event} did not arrive once the CRM was back: {ids:?}"
        );
    }
    let none = admin(&app, "GET", &pending_path, None).await.json();
    assert_eq!(none["deliveries"], json!([]));
    for event in &waiting {
        let ev = admin(&app, "GET", &format!("/api/events/{event}"), None)
            .await
            .json();
        assert_eq!(ev["deliveries"][0]["state"], "succeeded", "{ev}");
        assert_eq!(ev["deliveries"][0]["target"], id);
    }
}

// === 5. The inbound log ===

#[tokio::test]
async fn the_inbound_log_shows_rejected_accepted_and_defaulted_posts() {
    let route = format!(
        "{BARE_ROUTE}[[routes]]\nname = \"lms\"\npath = \"/lms\"\nevent = \"{{json./event|unknown}}\"\n\
         dedup = \"{{header.idempotency-key}}\"\n"
    );
    let app = spawn_app(&route).await;

    // A mistyped webhook URL in the LMS.
    let r = post_json(app.addr, "/tt/new_order", "{}").await;
    assert_eq!(r.status, 404);
    let log = eventually_json(&app, "/api/events?outcome=rejected", |v| {
        !v["events"].as_array().unwrap().is_empty()
    })
    .await;
    let e = &log["events"][0];
    assert!(e["id"].as_str().unwrap().starts_with("in_"), "{e}");
    assert_eq!(e["outcome"], "rejected");
    assert_eq!(e["status"], 404);
    assert_eq!(e["code"], "no_route");
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/tt/new_order");
    assert_eq!(e["route"], Value::Null);
    assert_eq!(e["event"], Value::Null);

    // The right URL, but nobody listens yet.
    let r = post_json(app.addr, "/t/new_order", "{}").await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["deliveries"], 0);
    let event = r.json()["id"].as_str().unwrap().to_string();
    let log = eventually_json(&app, "/api/events?outcome=accepted", |v| {
        v["events"][0]["event"] == event.as_str()
    })
    .await;
    let e = &log["events"][0];
    assert_eq!(e["outcome"], "accepted");
    assert_eq!(e["status"], 202);
    assert_eq!(e["code"], Value::Null);
    assert_eq!(e["deliveries"], 0);
    assert_eq!(e["route"], "t");
    assert_eq!(e["type"], "new_order");
    assert_eq!(e["path"], "/t/new_order");
    let log = admin(&app, "GET", "/api/events?outcome=rejected", None)
        .await
        .json();
    assert_eq!(log["events"].as_array().unwrap().len(), 1, "{log}");

    // The LMS's "send test" button posts a bare {}: the type falls back.
    let r = post_json(app.addr, "/lms", "{}").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let test = r.json()["id"].as_str().unwrap().to_string();
    let log = eventually_json(&app, "/api/events?route=lms", |v| {
        v["events"][0]["event"] == test.as_str()
    })
    .await;
    let e = &log["events"][0];
    assert_eq!(e["type"], "unknown");
    assert_eq!(e["outcome"], "accepted");
    let by_type = admin(&app, "GET", "/api/events?type=unknown", None)
        .await
        .json();
    assert_eq!(by_type["events"].as_array().unwrap().len(), 1, "{by_type}");

    // Newest first, all three.
    let all = admin(&app, "GET", "/api/events", None).await.json();
    let paths: Vec<_> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, vec!["/lms", "/t/new_order", "/tt/new_order"]);
    assert!(all["next"].is_null());

    // A type seen at ingest that no catalog declares.
    let types = admin(&app, "GET", "/api/event-types?route=t", None)
        .await
        .json();
    let seen = types["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "new_order")
        .unwrap_or_else(|| panic!("{types}"))
        .clone();
    assert_eq!(seen["declared"], false);
    assert_eq!(seen["display_name"], Value::Null);
    assert!(seen["last_seen"].as_i64().is_some(), "{seen}");

    // The same idempotency key again: a duplicate, with the first event's id.
    let keyed = [
        ("content-type", "application/json"),
        ("idempotency-key", "order-7"),
    ];
    let first = send(app.addr, None, "POST", "/lms", &keyed, "{}").await;
    let again = send(app.addr, None, "POST", "/lms", &keyed, "{}").await;
    assert_eq!(again.json()["duplicate"], true, "{:?}", again.body);
    let log = eventually_json(&app, "/api/events?outcome=duplicate", |v| {
        !v["events"].as_array().unwrap().is_empty()
    })
    .await;
    let e = &log["events"][0];
    assert_eq!(e["outcome"], "duplicate");
    assert_eq!(e["event"], first.json()["id"]);
    assert_eq!(log["events"].as_array().unwrap().len(), 1, "{log}");
}

// === 6. What the API refuses ===

#[tokio::test]
async fn invalid_endpoints_are_refused_and_the_limit_holds() {
    let rx = Receiver::ok().await;
    let route = format!(
        "admin.max_endpoints = 2\n\
         [[routes]]\nname = \"shop\"\npath = \"/shop\"\nevent = \"{{json./event}}\"\n{}",
        catalog(&[
            (
                "new_order",
                "New Order",
                "Sales",
                b"{\"event\": \"new_order\"}\n"
            ),
            (
                "refund_issued",
                "Refund",
                "Sales",
                b"{\"event\": \"refund_issued\"}\n"
            ),
        ])
    );
    let app = spawn_app(&route).await;
    let ok =
        json!({"name": "Orders", "url": rx.url("/in"), "route": "shop", "events": ["new_order"]});
    let with = |key: &str, value: Value| {
        let mut body = ok.clone();
        body[key] = value;
        body
    };

    let cases = [
        (
            with("name", json!("a\u{7}b")),
            "name",
            "a control character",
        ),
        (with("name", json!("")), "name", "an empty name"),
        (
            with("events", json!(["new_order\u{1b}[31m"])),
            "events",
            "an ANSI escape",
        ),
        (
            with("url", json!("http://169.254.169.254/latest")),
            "url",
            "a link-local address",
        ),
    ];
    for (body, field, what) in cases {
        let r = admin(&app, "POST", "/api/endpoints", Some(body)).await;
        assert_invalid(&r, field, what);
    }
    let r = admin(
        &app,
        "POST",
        "/api/endpoints",
        Some(with("colour", json!("red"))),
    )
    .await;
    let msg = assert_invalid(&r, "", "an unknown key");
    assert!(msg.contains("colour"), "{msg}");
    // An event the route's catalog does not know: the message lists those it does.
    let r = admin(
        &app,
        "POST",
        "/api/endpoints",
        Some(with("events", json!(["new_ordr"]))),
    )
    .await;
    let msg = assert_invalid(&r, "events", "an unknown event");
    assert!(
        msg.contains("new_order") && msg.contains("refund_issued"),
        "{msg}"
    );
    let r = admin(&app, "GET", "/api/endpoints", None).await;
    assert_eq!(r.json()["endpoints"], json!([]), "nothing was made");

    // admin.max_endpoints = 2.
    let first = create(&app, ok.clone()).await;
    // A pattern goes through on a catalogued route: it may match types to come.
    let refunds = create(&app, with("events", json!(["refund_*"]))).await;
    assert_eq!(refunds["events"], json!(["refund_*"]));
    let r = admin(
        &app,
        "POST",
        "/api/endpoints",
        Some(with("name", json!("Third"))),
    )
    .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.json()["error"]["code"], "limit_reached");
    // PATCH validates like POST.
    let r = admin(
        &app,
        "PATCH",
        &format!("/api/endpoints/{}", first["id"].as_str().unwrap()),
        Some(json!({"name": "x\u{1b}]0;pwned\u{7}"})),
    )
    .await;
    assert_invalid(&r, "name", "a control character in a PATCH");
    // Deleting one makes room.
    let r = admin(
        &app,
        "DELETE",
        &format!("/api/endpoints/{}", first["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    create(&app, with("name", json!("Third"))).await;
}

// === 7. Pause ===

#[tokio::test]
async fn a_paused_endpoint_queues_and_resumes_where_it_stopped() {
    let witness = Receiver::ok().await;
    let rx = Receiver::ok().await;
    let app = spawn_app(&route_with_witness(&witness)).await;
    let ep = create(
        &app,
        json!({"name": "CRM", "url": rx.url("/crm"), "route": "t"}),
    )
    .await;
    let id = ep["id"].as_str().unwrap().to_string();
    let path = format!("/api/endpoints/{id}");

    post_event(&app, "/t/new_order", b"{\"n\": 0}".to_vec()).await;
    rx.wait_for(1).await;

    let r = admin(&app, "PATCH", &path, Some(json!({"enabled": false}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["enabled"], false);
    let mut queued = BTreeSet::new();
    for n in 1..=2 {
        let r = post_json(app.addr, "/t/new_order", format!("{{\"n\": {n}}}")).await;
        assert_eq!(r.status, 202);
        assert_eq!(r.json()["deliveries"], 2, "still queued for the paused one");
        queued.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    // The other target got them: the relay did dispatch.
    witness.wait_for(3).await;
    let pending_path = format!("/api/deliveries?target={id}&state=pending");
    let pending = eventually_json(&app, &pending_path, |v| {
        v["deliveries"].as_array().unwrap().len() == 2
    })
    .await;
    for d in pending["deliveries"].as_array().unwrap() {
        assert!(queued.contains(d["event"].as_str().unwrap()), "{d}");
        assert_eq!(d["attempts"], 0, "nothing attempted while paused: {d}");
    }
    assert_eq!(rx.received().len(), 1, "the paused receiver got nothing");

    let r = admin(&app, "PATCH", &path, Some(json!({"enabled": true}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["enabled"], true);
    rx.wait_for(3).await;
    let arrived: BTreeSet<String> = webhook_ids(&rx)[1..].iter().cloned().collect();
    assert_eq!(arrived, queued);
    eventually_json(&app, &pending_path, |v| v["deliveries"] == json!([])).await;
    // The counters agree with the receiver, though the two queued ones
    // went out together.
    let got = rx.received().len() as u64;
    eventually_json(&app, &path, |v| {
        v["counters"]["calls"] == got && v["counters"]["succeeded"] == 3
    })
    .await;
}

// === 8. Rotate secret ===

#[tokio::test]
async fn rotating_a_secret_signs_with_old_and_new_during_the_grace() {
    let rx = Receiver::ok().await;
    let app = spawn_app(BARE_ROUTE).await;
    let ep = create(
        &app,
        json!({"name": "CRM", "url": rx.url("/crm"), "secret": SECRET}),
    )
    .await;
    assert_eq!(ep["secret"], SECRET);
    let id = ep["id"].as_str().unwrap().to_string();
    let rotate = format!("/api/endpoints/{id}/rotate-secret");

    let r = admin(&app, "POST", &rotate, Some(json!({"grace": "31d"}))).await;
    assert_invalid(&r, "grace", "a grace over 30 days");

    let asked = now_ms();
    let r = admin(&app, "POST", &rotate, Some(json!({"grace": "1h"}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rotated = r.json();
    assert_eq!(rotated["id"], id.as_str());
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert!(new.starts_with("whsec_"), "{new}");
    assert_ne!(new, SECRET);
    let expires = rotated["previous_expires_at"].as_i64().unwrap();
    let hour = 3_600_000;
    assert!(
        (asked + hour - 60_000..=now_ms() + hour + 60_000).contains(&expires),
        "{expires}"
    );

    let shown = admin(&app, "GET", &format!("/api/endpoints/{id}"), None).await;
    assert_eq!(shown.json()["secrets"], 2);
    let text = String::from_utf8_lossy(&shown.body);
    assert!(!text.contains(SECRET) && !text.contains(&new), "{text}");

    post_event(&app, "/t/new_order", fixture("heights/new_order.json")).await;
    let got = rx.wait_for(1).await;
    let h = &got[0].headers;
    let sigs: Vec<_> = h["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    assert!(sigs.iter().all(|s| s.starts_with("v1,")), "{sigs:?}");
    assert!(
        verify_signature(SECRET, h, &got[0].body),
        "the old secret verifies"
    );
    assert!(
        verify_signature(&new, h, &got[0].body),
        "the new secret verifies"
    );
}

// === Matching follows the endpoint list ===

/// The relay keeps what an event kind matched; an endpoint added, filtered
/// or removed after events of that kind were matched still counts from
/// the next event on, and a filter still decides per event.
#[tokio::test]
async fn matches_follow_endpoints_added_and_removed_and_filters_decide_per_event() {
    let witness = Receiver::ok().await;
    let crm = Receiver::ok().await;
    let paid = Receiver::ok().await;
    let app = spawn_app(&route_with_witness(&witness)).await;
    let deliveries = |r: Reply| {
        assert_eq!(r.status, 202, "{:?}", r.body);
        r.json()["deliveries"].as_u64().unwrap()
    };
    // Matched once with the witness alone.
    let r = post_json(app.addr, "/t/new_order", r#"{"status": "paid"}"#).await;
    assert_eq!(deliveries(r), 1);

    let ep = create(
        &app,
        json!({"name": "CRM", "url": crm.url("/crm"), "route": "t"}),
    )
    .await;
    create(
        &app,
        json!({"name": "Paid", "url": paid.url("/paid"), "route": "t",
               "filter": {"json": "/status", "in": ["paid"]}}),
    )
    .await;
    let r = post_json(app.addr, "/t/new_order", r#"{"status": "paid"}"#).await;
    assert_eq!(
        deliveries(r),
        3,
        "the new endpoints count from the next event"
    );
    let r = post_json(app.addr, "/t/new_order", r#"{"status": "open"}"#).await;
    assert_eq!(deliveries(r), 2, "the filter decides for each event");
    // Delivered before it goes: removing an endpoint cancels what it has
    // pending.
    crm.wait_for(2).await;

    let r = admin(
        &app,
        "DELETE",
        &format!("/api/endpoints/{}", ep["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert!(r.status == 204 || r.status == 200, "{:?}", r.body);
    let r = post_json(app.addr, "/t/new_order", r#"{"status": "paid"}"#).await;
    assert_eq!(deliveries(r), 2, "a removed endpoint no longer matches");

    witness.wait_for(4).await;
    paid.wait_for(2).await;
    assert_eq!(paid.received().len(), 2);
    assert_eq!(crm.received().len(), 2);
}

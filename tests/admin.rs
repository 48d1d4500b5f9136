//! The admin API as integrators and operators use it: REST Hooks
//! subscriptions, tokens, the delivery log, dead letters and repair,
//! counters, the circuit breaker, and restarts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A route `/t/{event}` with no configured targets.
const BARE_ROUTE: &str = "[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n";

async fn subscribe(app: &TestApp, url: &str, event: &str) -> Value {
    let r = admin(
        app,
        "POST",
        "/api/hooks",
        Some(json!({"target_url": url, "event": event})),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn rest_hooks_story() {
    let rx = Receiver::ok().await;
    let app = spawn_app(BARE_ROUTE).await;
    let hook = subscribe(&app, &rx.url("/zap"), "new_order").await;
    let id = hook["id"].as_str().unwrap().to_string();
    let secret = hook["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(hook["event"], "new_order");

    let order = fixture("heights/new_order.json");
    let r = post_json(app.addr, "/t/new_order", order.clone()).await;
    assert_eq!(r.json()["deliveries"], 1);
    let r = post_json(
        app.addr,
        "/t/new_student",
        fixture("heights/new_student.json"),
    )
    .await;
    assert_eq!(r.json()["deliveries"], 0, "the hook only wants new_order");
    let got = rx.wait_for(1).await;
    assert_eq!(&got[0].body[..], &order[..]);
    assert!(verify_signature(&secret, &got[0].headers, &got[0].body));

    // The secret is shown once: never in a listing or a lookup.
    let shown = admin(&app, "GET", &format!("/api/hooks/{id}"), None).await;
    assert_eq!(shown.status, 200);
    assert!(shown.json().get("secret").is_none());
    assert!(!String::from_utf8_lossy(&shown.body).contains(&secret));
    let list = admin(&app, "GET", "/api/hooks", None).await;
    assert_eq!(list.json()["hooks"].as_array().unwrap().len(), 1);
    assert!(!String::from_utf8_lossy(&list.body).contains(&secret));

    let r = admin(&app, "DELETE", &format!("/api/hooks/{id}"), None).await;
    assert_eq!(r.status, 204);
    let r = post_json(app.addr, "/t/new_order", order).await;
    assert_eq!(r.json()["deliveries"], 0, "no delivery after unsubscribing");
    assert_eq!(
        admin(&app, "GET", &format!("/api/hooks/{id}"), None)
            .await
            .status,
        404
    );
    assert_eq!(rx.received().len(), 1);
}

#[tokio::test]
async fn unsubscribing_cancels_queued_deliveries() {
    let down = format!("http://127.0.0.1:{}/hook", free_port());
    // After one failure the circuit holds the retry back for 30s.
    let app = spawn_app(&format!(
        "delivery.circuit = {{ failures = 1, cooldown = \"30s\" }}\n{BARE_ROUTE}"
    ))
    .await;
    let hook = subscribe(&app, &down, "*").await;
    let r = post_json(app.addr, "/t/x", "{}").await;
    let event = r.json()["id"].as_str().unwrap().to_string();
    // The first attempt fails; the next waits.
    let path = format!("/api/events/{event}");
    let store = app.relay.store().clone();
    eventually_async("first attempt", async || {
        let id = hookrelay::store::EventId::parse(&event)?;
        let (_, d) = store.deliveries_of(id).await.ok()?.pop()?;
        (d.attempts == 1 && d.state == hookrelay::store::State::Pending).then_some(())
    })
    .await;
    let r = admin(
        &app,
        "DELETE",
        &format!("/api/hooks/{}", hook["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    let ev = admin(&app, "GET", &path, None).await.json();
    let d = &ev["deliveries"][0];
    assert_eq!(d["state"], "cancelled");
    assert_eq!(d["note"], "subscription deleted");
    assert_eq!(d["history"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn tokens_allowlist_and_errors() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&format!("admin.allow = [\"127.0.0.1/32\"]\n{BARE_ROUTE}")).await;
    assert_eq!(
        admin_as(&app, None, "GET", "/healthz", None).await.status,
        200
    );
    assert_eq!(
        admin_as(&app, None, "GET", "/readyz", None).await.status,
        200
    );
    let r = admin_as(&app, None, "GET", "/api/hooks", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    assert_eq!(
        admin_as(&app, Some("wrong"), "GET", "/api/hooks", None)
            .await
            .status,
        401
    );
    assert_eq!(
        admin_as(&app, Some(&TOKEN[..4]), "GET", "/api/hooks", None)
            .await
            .status,
        401
    );
    assert_eq!(admin(&app, "GET", "/api/hooks", None).await.status, 200);

    // A source outside admin.allow gets 403, token or not, and the token's
    // call is not made.
    let other = "127.0.0.2".parse().unwrap();
    let bearer = format!("Bearer {TOKEN}");
    let r = send(
        app.relay.admin_addrs()[0],
        Some(other),
        "GET",
        "/api/hooks",
        &[("authorization", bearer.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "source_not_allowed");

    for path in [
        "/api/hooks/hook_nope",
        "/api/events/evt_01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "/api/events/garbage",
        "/nothing/here",
    ] {
        let r = admin(&app, "GET", path, None).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"]["code"], "not_found");
    }
    let r = admin(
        &app,
        "POST",
        "/api/deliveries/dlv_01ARZ3NDEKTSV4RRFFQ69G5FAV/retry",
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        admin(&app, "DELETE", "/api/hooks/hook_nope", None)
            .await
            .status,
        404
    );

    let url = rx.url("/x");
    let cases = [
        (
            json!({"target_url": "not a url", "event": "a"}),
            "target_url",
        ),
        (
            json!({"target_url": "ftp://x/y", "event": "a"}),
            "target_url",
        ),
        (json!({"event": "a"}), "target_url"),
        (json!({"target_url": url, "event": ""}), "event"),
        (json!({"target_url": url}), "event"),
        (
            json!({"target_url": url, "event": "a", "route": "nope"}),
            "route",
        ),
        (
            json!({"target_url": url, "event": "a", "secret": "hunter2"}),
            "secret",
        ),
        (
            json!({"target_url": url, "event": "a", "colour": "red"}),
            "body",
        ),
    ];
    for (body, field) in cases {
        let r = admin(&app, "POST", "/api/hooks", Some(body.clone())).await;
        assert_eq!(r.status, 422, "{body}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.starts_with(field), "{body}: {msg}");
        assert!(!msg.contains("hunter2"));
    }
    let r = send(
        app.relay.admin_addrs()[0],
        None,
        "POST",
        "/api/hooks",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "{not json",
    )
    .await;
    assert_eq!(r.status, 422);
    // JSON, but not an object: never read as a struct's fields in order.
    let hook = subscribe(&app, &rx.url("/h"), "new_order").await;
    let test = format!("/api/endpoints/{}/test", hook["id"].as_str().unwrap());
    for (path, body) in [
        ("/api/hooks", json!([rx.url("/h"), "new_order"])),
        (test.as_str(), json!([null, null])),
        ("/api/deliveries/retry", json!(["dead"])),
    ] {
        let r = admin(&app, "POST", path, Some(body.clone())).await;
        assert_eq!(r.status, 422, "{path} {body}: {:?}", r.body);
        assert_eq!(r.json()["error"]["message"], "body: must be a JSON object");
    }
    let r = admin(&app, "GET", "/api/deliveries?state=lost", None).await;
    assert_eq!(r.status, 422);
    let r = admin(&app, "GET", "/api/deliveries?limit=0", None).await;
    assert_eq!(r.status, 422);
    let r = admin(
        &app,
        "POST",
        "/api/deliveries/retry",
        Some(json!({"state": "pending"})),
    )
    .await;
    assert_eq!(r.status, 422);
    // A null target is not "every target": only leaving it out is.
    let r = admin(
        &app,
        "POST",
        "/api/deliveries/retry",
        Some(json!({"state": "dead", "target": null})),
    )
    .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("target"));
    let r = admin(&app, "PUT", "/api/hooks", None).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn dead_letter_then_bulk_repair_delivers_exactly_once_more() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let app = spawn_app(&one_route(&url, "max_attempts = 2")).await;
    let r = post_json(app.addr, "/t/new_order", fixture("heights/new_order.json")).await;
    let event = r.json()["id"].as_str().unwrap().to_string();

    eventually_async("a dead delivery", async || {
        let store = app.relay.store().clone();
        let page = store
            .list_deliveries(Some(hookrelay::store::State::Dead), None, None, 10, 1000)
            .await
            .ok()?;
        (!page.deliveries.is_empty()).then_some(())
    })
    .await;
    let r = admin(&app, "GET", "/api/deliveries?state=dead", None).await;
    let list = r.json()["deliveries"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["event"], event.as_str());
    assert_eq!(list[0]["target"], "t/rx");
    assert_eq!(list[0]["attempts"], 2);
    assert!(list[0]["last"]["error"]
        .as_str()
        .unwrap()
        .contains("cannot connect"));

    // The receiver comes up on the address it was configured with.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let rx = Receiver::serve(listener, Arc::new(|_| (200, Duration::ZERO)));
    let r = admin(
        &app,
        "POST",
        "/api/deliveries/retry",
        Some(json!({"state": "dead", "target": "t/rx"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["retried"], 1);
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].headers["webhook-id"], event.as_str());
    let path = format!("/api/events/{event}");
    let ev = eventually_json(&app, &path, |v| v["deliveries"][0]["state"] == "succeeded").await;
    assert_eq!(ev["deliveries"][0]["history"].as_array().unwrap().len(), 3);
    // Nothing is dead any more, so a second bulk retry finds nothing.
    let r = admin(
        &app,
        "POST",
        "/api/deliveries/retry",
        Some(json!({"state": "dead"})),
    )
    .await;
    assert_eq!(r.json()["retried"], 0);
    assert_eq!(rx.received().len(), 1, "exactly once more");
}

#[tokio::test]
async fn retry_one_delivery_by_id() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&one_route(&rx.url("/hook"), "")).await;
    let r = post_json(app.addr, "/t/a", "{}").await;
    let event = r.json()["id"].as_str().unwrap().to_string();
    rx.wait_for(1).await;
    let ev = eventually_json(&app, &format!("/api/events/{event}"), |v| {
        v["deliveries"][0]["state"] == "succeeded"
    })
    .await;
    let did = ev["deliveries"][0]["id"].as_str().unwrap().to_string();
    // Replaying a succeeded delivery sends it again, same webhook-id.
    let r = admin(&app, "POST", &format!("/api/deliveries/{did}/retry"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "pending");
    let got = rx.wait_for(2).await;
    assert_eq!(got[1].headers["webhook-id"], got[0].headers["webhook-id"]);
}

#[tokio::test]
async fn counters_match_what_the_receiver_saw() {
    let rx = Receiver::start(Arc::new(|n| {
        (if n < 2 { 500 } else { 200 }, Duration::ZERO)
    }))
    .await;
    let app = spawn_app(&one_route(&rx.url("/hook"), "")).await;
    post_json(app.addr, "/t/a", "{}").await;
    rx.wait_for(3).await;
    post_json(app.addr, "/t/b", "{}").await;
    rx.wait_for(4).await;
    let targets = eventually_json(&app, "/api/targets", |v| {
        v["targets"][0]["counters"]["calls"] == 4
    })
    .await;
    let t = &targets["targets"][0];
    assert_eq!(t["key"], "t/rx");
    assert_eq!(t["origin"], "config");
    assert_eq!(t["circuit"], "closed");
    let c = &t["counters"];
    assert_eq!(c["calls"].as_u64().unwrap() as usize, rx.received().len());
    assert_eq!(c["succeeded"], 2);
    assert_eq!(c["failed"], 2);
    assert_eq!(c["dead"], 0);
    assert_eq!(c["last_status"], 200);
}

#[tokio::test]
async fn subscriptions_and_counters_survive_a_restart() {
    let rx = Receiver::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(BARE_ROUTE, dir.path());
    let relay = hookrelay::Relay::start(config.clone()).await.unwrap();
    let app = TestApp {
        addr: relay.ingest_addrs()[0],
        relay,
        dir: tempfile::tempdir().unwrap(),
    };
    let hook = subscribe(&app, &rx.url("/hook"), "*").await;
    let id = hook["id"].as_str().unwrap().to_string();
    post_json(app.addr, "/t/a", "{}").await;
    rx.wait_for(1).await;
    eventually_json(&app, &format!("/api/hooks/{id}"), |v| {
        v["counters"]["calls"] == 1
    })
    .await;
    app.relay.shutdown().await.unwrap();

    let relay = hookrelay::Relay::start(config).await.unwrap();
    let app = TestApp {
        addr: relay.ingest_addrs()[0],
        relay,
        dir,
    };
    let shown = admin(&app, "GET", &format!("/api/hooks/{id}"), None)
        .await
        .json();
    assert_eq!(shown["counters"]["calls"], 1);
    assert_eq!(shown["counters"]["succeeded"], 1);
    let r = post_json(app.addr, "/t/b", "{}").await;
    assert_eq!(r.json()["deliveries"], 1);
    let got = rx.wait_for(2).await;
    assert!(verify_signature(
        hook["secret"].as_str().unwrap(),
        &got[1].headers,
        &got[1].body
    ));
}

#[tokio::test]
async fn test_send_reaches_the_hook_signed() {
    let rx = Receiver::ok().await;
    let app = spawn_app(BARE_ROUTE).await;
    let hook = subscribe(&app, &rx.url("/hook"), "new_order").await;
    let id = hook["id"].as_str().unwrap();
    let r = admin(&app, "POST", &format!("/api/hooks/{id}/test"), None).await;
    assert_eq!(r.status, 200);
    let out = r.json();
    assert_eq!(out["status"], 200);
    assert_eq!(out["succeeded"], true);
    let got = rx.wait_for(1).await;
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["type"], "hookrelay.test");
    assert!(verify_signature(
        hook["secret"].as_str().unwrap(),
        &got[0].headers,
        &got[0].body
    ));

    // A hook whose receiver is down reports the error.
    let down = subscribe(&app, &format!("http://127.0.0.1:{}/", free_port()), "*").await;
    let r = admin(
        &app,
        "POST",
        &format!("/api/hooks/{}/test", down["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.json()["succeeded"], false);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("cannot connect"));
}

#[tokio::test]
async fn delivery_log_pages_newest_first() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&one_route(&rx.url("/hook"), "")).await;
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(post_json(app.addr, "/t/a", "{}").await.json()["id"].clone());
    }
    rx.wait_for(5).await;
    let first = admin(&app, "GET", "/api/deliveries?limit=2&target=t%2Frx", None)
        .await
        .json();
    let page: Vec<_> = first["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"].clone())
        .collect();
    assert_eq!(page, vec![events[4].clone(), events[3].clone()]);
    let next = first["next"].as_str().unwrap();
    let second = admin(
        &app,
        "GET",
        &format!("/api/deliveries?limit=2&after={next}"),
        None,
    )
    .await
    .json();
    let page: Vec<_> = second["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"].clone())
        .collect();
    assert_eq!(page, vec![events[2].clone(), events[1].clone()]);
    let none = admin(&app, "GET", "/api/deliveries?target=other", None)
        .await
        .json();
    assert!(none["deliveries"].as_array().unwrap().is_empty());
    assert!(none["next"].is_null());
}

#[tokio::test]
async fn circuit_opens_and_a_probe_closes_it() {
    let rx = Receiver::start(Arc::new(|n| {
        (if n < 2 { 500 } else { 200 }, Duration::ZERO)
    }))
    .await;
    let app = spawn_app(&one_route(
        &rx.url("/hook"),
        "circuit = { failures = 2, cooldown = \"1500ms\" }",
    ))
    .await;
    post_json(app.addr, "/t/a", "{}").await;
    let got = rx.wait_for(2).await;
    // Backoff alone would retry after 40ms; the open circuit holds it.
    eventually_json(&app, "/api/targets", |v| {
        v["targets"][0]["circuit"] == "open"
    })
    .await;
    let got3 = rx.wait_for(3).await;
    assert!(
        got3[2].at - got[1].at >= Duration::from_millis(1200),
        "{:?}",
        got3[2].at - got[1].at
    );
    eventually_json(&app, "/api/targets", |v| {
        v["targets"][0]["circuit"] == "closed"
    })
    .await;
}

#[tokio::test]
async fn readiness_fails_when_the_store_cannot_take_writes() {
    // A disk limit below the store's size: nothing more may be written.
    let app = spawn_app(&format!("store.max_disk_bytes = 1\n{BARE_ROUTE}")).await;
    let r = admin_as(&app, None, "GET", "/readyz", None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "not_ready");
    assert_eq!(
        admin_as(&app, None, "GET", "/healthz", None).await.status,
        200
    );
}

#[tokio::test]
async fn reload_takes_new_admin_tokens() {
    let app = spawn_app(BARE_ROUTE).await;
    assert_eq!(admin(&app, "GET", "/api/hooks", None).await.status, 200);
    let config = test_config(BARE_ROUTE, app.dir.path());
    // test_config wrote the usual token; the operator replaces it.
    std::fs::write(app.dir.path().join("admin.tokens"), "rotated-token\n").unwrap();
    app.relay.reload(config).await.unwrap();
    assert_eq!(admin(&app, "GET", "/api/hooks", None).await.status, 401);
    let r = admin_as(&app, Some("rotated-token"), "GET", "/api/hooks", None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_tokens_file_is_read_again_when_it_changes_and_a_missing_one_is_named() {
    let app = spawn_app(BARE_ROUTE).await;
    let file = app.dir.path().join("admin.tokens");
    assert_eq!(admin(&app, "GET", "/api/hooks", None).await.status, 200);

    // No SIGHUP: a new line is taken within a second or two.
    std::fs::write(
        &file,
        format!("{TOKEN}\nsecond-token-for-grafana read name=grafana\n"),
    )
    .unwrap();
    eventually_async("the new token", async || {
        let r = admin_as(
            &app,
            Some("second-token-for-grafana"),
            "GET",
            "/api/hooks",
            None,
        )
        .await;
        (r.status == 200).then_some(())
    })
    .await;
    // It reads; it changes nothing.
    let r = admin_as(
        &app,
        Some("second-token-for-grafana"),
        "POST",
        "/api/hooks",
        Some(json!({"target_url": "https://x.example/", "event": "e"})),
    )
    .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.json()["error"]["code"], "forbidden");

    // The file goes: every call is 401, and the answer says why.
    std::fs::remove_file(&file).unwrap();
    let r = eventually_async("the file to be missed", async || {
        let r = admin(&app, "GET", "/api/hooks", None).await;
        (r.status == 401).then_some(r)
    })
    .await;
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("does not exist") && message.contains("admin.tokens"),
        "{message}"
    );

    // And back.
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    eventually_async("the file to be back", async || {
        (admin(&app, "GET", "/api/hooks", None).await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_wrong_method_gets_405_with_the_allowed_ones_and_an_unknown_path_404() {
    let app = spawn_app(BARE_ROUTE).await;
    for (method, path, allow) in [
        ("PUT", "/api/hooks", "POST, GET"),
        ("POST", "/api/hooks/hook_x", "GET, DELETE"),
        ("GET", "/api/hooks/hook_x/test", "POST"),
        ("DELETE", "/api/deliveries/retry", "POST"),
        ("POST", "/healthz", "GET"),
        ("HEAD", "/metrics", "GET"),
    ] {
        for token in [Some(TOKEN), None] {
            let r = admin_as(&app, token, method, path, None).await;
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.headers["allow"], allow, "{method} {path}");
            if method != "HEAD" {
                assert_eq!(r.json()["error"]["code"], "method_not_allowed");
            }
        }
    }
    // The console's sign-in page on the same listener names its methods too.
    let r = admin_as(&app, None, "PUT", "/ui/signin", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, POST");
    // Unknown paths are 404 whatever the method, with or without a token.
    for (method, path) in [
        ("GET", "/api"),
        ("POST", "/api/hooks/a/b"),
        ("GET", "/nothing/here"),
    ] {
        for token in [Some(TOKEN), None] {
            let r = admin_as(&app, token, method, path, None).await;
            assert_eq!(r.status, 404, "{method} {path}");
            assert_eq!(r.json()["error"]["code"], "not_found");
        }
    }
    // A known path still needs the token.
    let r = admin_as(&app, None, "GET", "/api/hooks/hook_x", None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case() {
    let app = spawn_app(BARE_ROUTE).await;
    let addr = app.relay.admin_addrs()[0];
    let get = |auth: String| async move {
        send(
            addr,
            None,
            "GET",
            "/api/hooks",
            &[("authorization", &auth)],
            "",
        )
        .await
    };
    // RFC 9110 §11.1: the scheme is case-insensitive.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = get(format!("{scheme} {TOKEN}")).await;
        assert_eq!(r.status, 200, "{scheme}: {:?}", r.body);
    }
    // The token itself is not: neither is a scheme other than bearer.
    for auth in [
        format!("Bearer {}", TOKEN.to_uppercase()),
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
        "Bearer ".to_string(),
    ] {
        let r = get(auth.clone()).await;
        assert_eq!(r.status, 401, "{auth}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
}

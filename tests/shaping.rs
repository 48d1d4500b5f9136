//! Per-target request shaping, end to end: basic auth and extra headers
//! (from the file, the environment, a file on disk), reserved headers and
//! broken templates refused at load, and a template that fails for one
//! event dead-lettering that delivery only.

mod common;

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use common::*;
use hookrelay::config::Config;
use hookrelay::store::{EventId, State};
use hookrelay::Relay;
use serde_json::{json, Value};

/// Starts the relay on `toml` with `env:` values taken from `vars`.
async fn start_with_env(toml: &str, vars: &[(&str, &str)]) -> (Relay, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config_text(toml, dir.path());
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::parse_with(&text, Path::new("test.toml"), &env)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    (Relay::start(config).await.expect("relay starts"), dir)
}

fn load_error(toml: &str) -> hookrelay::config::ConfigError {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config_text(toml, dir.path());
    Config::parse_with(&text, Path::new("test.toml"), &HashMap::new())
        .expect_err("config must be refused")
}

#[tokio::test]
async fn basic_auth_and_headers_from_env_and_file_arrive() {
    let rx = Receiver::ok().await;
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secrets.path().join("api-key");
    std::fs::write(&key_file, "key-from-file\n").unwrap();
    let route = one_route(
        &rx.url("/hook"),
        &format!(
            "basic_auth = {{ username = \"relay\", password = \"env:RX_PASSWORD\" }}\n\
             headers = {{ X-Api-Key = \"file:{}\", x-tenant = \"env:RX_TENANT\", x-plain = \"literal\" }}",
            key_file.display()
        ),
    );
    let (relay, _dir) = start_with_env(
        &route,
        &[("RX_PASSWORD", "s3cr3t:with:colons"), ("RX_TENANT", "acme")],
    )
    .await;
    let r = post_json(relay.ingest_addrs()[0], "/t/new_order", "{\"a\":1}").await;
    assert_eq!(r.status, 202);
    let got = rx.wait_for(1).await;
    let h = &got[0].headers;
    let expected = base64::engine::general_purpose::STANDARD.encode("relay:s3cr3t:with:colons");
    assert_eq!(h["authorization"], format!("Basic {expected}").as_str());
    assert_eq!(h["x-api-key"], "key-from-file");
    assert_eq!(h["x-tenant"], "acme");
    assert_eq!(h["x-plain"], "literal");
    assert_eq!(h["content-type"], "application/json");
    assert!(verify_signature(SECRET, h, &got[0].body));
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_target_header_replaces_a_forwarded_one() {
    let rx = Receiver::ok().await;
    let route = one_route(&rx.url("/hook"), "headers = { x-account = \"relay-side\" }").replace(
        "[[routes.targets]]",
        "forward_headers = [\"x-account\"]\n[[routes.targets]]",
    );
    let (relay, _dir) = start_with_env(&route, &[]).await;
    let r = send(
        relay.ingest_addrs()[0],
        None,
        "POST",
        "/t/x",
        &[
            ("content-type", "application/json"),
            ("x-account", "lms-side"),
        ],
        "{}",
    )
    .await;
    assert_eq!(r.status, 202);
    let got = rx.wait_for(1).await;
    let values: Vec<_> = got[0].headers.get_all("x-account").iter().collect();
    assert_eq!(values, vec!["relay-side"]);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_secrets_and_reserved_headers_are_refused_at_load() {
    let url = "http://127.0.0.1:9/hook";
    let e = load_error(&one_route(
        url,
        "basic_auth = { username = \"u\", password = \"env:NOT_SET_ANYWHERE\" }",
    ));
    assert_eq!(e.key, "routes[0].targets[0].basic_auth.password");
    assert!(e.reason.contains("NOT_SET_ANYWHERE is not set"), "{e}");

    let e = load_error(&one_route(
        url,
        "headers = { x-key = \"file:/nonexistent/key\" }",
    ));
    assert_eq!(e.key, "routes[0].targets[0].headers.x-key");
    assert!(e.reason.contains("/nonexistent/key"), "{e}");

    for name in [
        "webhook-signature",
        "webhook-id",
        "content-length",
        "host",
        "content-type",
    ] {
        let e = load_error(&one_route(url, &format!("headers = {{ {name} = \"x\" }}")));
        assert_eq!(e.key, format!("routes[0].targets[0].headers.{name}"));
        assert!(e.reason.contains("cannot be set"), "{e}");
        assert!(e.to_string().contains("test.toml"), "{e}");
    }

    // The value of a secret never shows in an error.
    let e = load_error(&one_route(
        url,
        "basic_auth = { username = \"u:x\", password = \"hunter2\" }",
    ));
    assert_eq!(e.key, "routes[0].targets[0].basic_auth.username");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[tokio::test]
async fn a_broken_template_is_refused_at_load() {
    let url = "http://127.0.0.1:9/hook";
    let e = load_error(&one_route(
        url,
        "template = '{\"a\": {{ payload.a | tojson }'",
    ));
    assert_eq!(e.key, "routes[0].targets[0].template");
    assert!(e.reason.contains("syntax error"), "{e}");

    let e = load_error(&one_route(
        url,
        "template = '{\"a\": {{ paylod.a | tojson }}}'",
    ));
    assert_eq!(e.key, "routes[0].targets[0].template");
    assert!(e.reason.contains("paylod"), "{e}");

    let e = load_error(&one_route(url, "template = '{{ payload | nosuchfilter }}'"));
    assert_eq!(e.key, "routes[0].targets[0].template");
    assert!(e.reason.contains("nosuchfilter"), "{e}");
}

#[tokio::test]
async fn a_template_that_fails_for_an_event_dead_letters_that_delivery_only() {
    let shaped = Receiver::ok().await;
    let plain = Receiver::ok().await;
    let route = format!(
        "[[routes]]\nname = \"t\"\npath = \"/t/{{event}}\"\n\
         [[routes.targets]]\nname = \"shaped\"\nurl = \"{}\"\n\
         template = '{{\"email\": {{{{ payload.user.email | tojson }}}}}}'\n\
         [[routes.targets]]\nname = \"plain\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        shaped.url("/"),
        plain.url("/")
    );
    let (relay, _dir) = start_with_env(&route, &[]).await;
    let addr = relay.ingest_addrs()[0];

    // Renders: both targets get it.
    let r = post_json(addr, "/t/signup", r#"{"user": {"email": "a@example.com"}}"#).await;
    assert_eq!(r.json()["deliveries"], 2);
    let got = shaped.wait_for(1).await;
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body, json!({"email": "a@example.com"}));

    // No user in this one: the template fails for the shaped target only.
    let r = post_json(addr, "/t/signup", r#"{"account": 7}"#).await;
    assert_eq!(r.status, 202);
    let id = EventId::parse(r.json()["id"].as_str().unwrap()).unwrap();
    let store = relay.store().clone();
    let deliveries = eventually_async("both deliveries finished", async || {
        let ds = store.deliveries_of(id).await.unwrap();
        ds.iter()
            .all(|(_, d)| matches!(d.state, State::Succeeded | State::Dead))
            .then_some(ds)
    })
    .await;
    let by_target: HashMap<_, _> = deliveries
        .iter()
        .map(|(did, d)| (d.target.as_str(), (did, d)))
        .collect();
    let (did, dead) = by_target["t/shaped"];
    assert_eq!(dead.state, State::Dead);
    assert_eq!(dead.attempts, 1, "not retried: it would fail the same way");
    let attempts = store.attempts(*did).await.unwrap();
    let err = attempts[0].error.as_deref().unwrap();
    assert!(err.contains("template failed"), "{err}");
    assert!(err.contains("undefined"), "{err}");
    assert_eq!(attempts[0].status, None);
    assert_eq!(by_target["t/plain"].1.state, State::Succeeded);

    let got = plain.wait_for(2).await;
    assert_eq!(&got[1].body[..], br#"{"account": 7}"#);
    assert_eq!(
        shaped.received().len(),
        1,
        "nothing sent for the failed render"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_template_sees_the_lms_headers_and_event_but_they_are_not_forwarded() {
    let rx = Receiver::ok().await;
    let route = one_route(
        &rx.url("/hook"),
        "template = '{\"lms\": {{ headers[\"x-lms-tenant\"] | tojson }}, \"ct\": {{ headers[\"content-type\"] | tojson }}, \
         \"type\": {{ event.type | tojson }}, \"id\": {{ event.id | tojson }}, \"auth\": {{ (headers.authorization is defined) | tojson }}}'\n\
         content_type = \"application/vnd.lms+json\"",
    );
    let (relay, _dir) = start_with_env(&route, &[]).await;
    let r = send(
        relay.ingest_addrs()[0],
        None,
        "POST",
        "/t/course_completed",
        &[
            ("content-type", "application/json"),
            ("x-lms-tenant", "north"),
            ("authorization", "Bearer lms-token"),
        ],
        "{}",
    )
    .await;
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let got = rx.wait_for(1).await;
    let req = &got[0];
    assert_eq!(req.headers["content-type"], "application/vnd.lms+json");
    assert!(req.headers.get("x-lms-tenant").is_none(), "not forwarded");
    assert!(req.headers.get("authorization").is_none());
    assert!(verify_signature(SECRET, &req.headers, &req.body));
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        json!({"lms": "north", "ct": "application/json", "type": "course_completed", "id": id, "auth": false})
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn xml_for_a_body_that_is_not_json_is_dead_with_the_reason() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&one_route(&rx.url("/hook"), "format = \"xml\"")).await;
    let r = send(
        app.addr,
        None,
        "POST",
        "/t/x",
        &[("content-type", "text/plain")],
        "not json",
    )
    .await;
    let id = EventId::parse(r.json()["id"].as_str().unwrap()).unwrap();
    let store = app.relay.store().clone();
    let attempts = eventually_async("delivery dead", async || {
        let (did, d) = store.deliveries_of(id).await.unwrap().into_iter().next()?;
        if d.state != State::Dead {
            return None;
        }
        Some(store.attempts(did).await.unwrap())
    })
    .await;
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].error.as_deref().unwrap().contains("not JSON"));
    assert!(rx.received().is_empty());
}

#[tokio::test]
async fn payload_values_cannot_break_a_json_template() {
    let rx = Receiver::ok().await;
    let route = format!(
        "[[routes]]\nname = \"t\"\npath = \"/t/{{event}}\"\n\
         [[routes.targets]]\nname = \"shaped\"\nurl = \"{}\"\n\
         template = '{{\"name\": {{{{ payload.name }}}}, \"course\": {{{{ \"course:\" ~ payload.course }}}}, \"event\": {{{{ event.type }}}}}}'\n",
        rx.url("/")
    );
    let (relay, _dir) = start_with_env(&route, &[]).await;
    let addr = relay.ingest_addrs()[0];
    // A quote, a brace and a line break: as text pasted into the
    // template, each would end the string or the object early.
    let name = "O\"Brien\"}, \"role\": \"admin\", \"x\": {\"\nsecond line";
    let r = post_json(
        addr,
        "/t/signup",
        json!({"name": name, "course": "}\"{"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 202);
    let got = rx.wait_for(1).await;
    let body: Value = serde_json::from_slice(&got[0].body).expect("the body is JSON");
    assert_eq!(
        body,
        json!({"name": name, "course": "course:}\"{", "event": "signup"})
    );
    assert_eq!(got[0].headers["content-type"], "application/json");
}

//! What receivers' answers reveal, end to end: a receiver that echoes the
//! request never gets hookrelay's credentials into a stored excerpt, and a
//! subscriber token learns from a test send only whether it was delivered.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use common::*;
use hookrelay::store::State;

const PASSWORD: &str = "pw-Zq8/7v+Lk2";
const API_KEY: &str = "key-4f1c9e2b7d";

/// A loopback receiver that answers 200 with every request header it got,
/// as JSON and as `name: value` lines (how request bins echo).
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let mut lines = String::new();
                let mut map = serde_json::Map::new();
                for (n, v) in req.headers() {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    lines.push_str(&format!("{n}: {v}\n"));
                    map.insert(n.to_string(), json!(v));
                }
                let _ = req.into_body().collect().await;
                let body = format!("{}\n{lines}", Value::Object(map));
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Every spelling of the credentials the targets below are sent with.
fn secrets() -> Vec<String> {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("lms:{PASSWORD}"));
    vec![
        PASSWORD.to_string(),
        PASSWORD.replace('/', "\\/"),
        API_KEY.to_string(),
        format!("Basic {token}"),
        token,
    ]
}

fn assert_redacted(excerpt: &str) {
    assert!(excerpt.contains("***"), "{excerpt}");
    assert!(
        excerpt.contains("webhook-id"),
        "the rest is kept: {excerpt}"
    );
    for s in secrets() {
        assert!(!excerpt.contains(&s), "{s} in {excerpt}");
    }
}

fn credentials() -> String {
    format!(
        "basic_auth = {{ username = \"lms\", password = \"{PASSWORD}\" }}\n\
         headers = {{ x-api-key = \"{API_KEY}\" }}\n"
    )
}

#[tokio::test]
async fn an_echoing_receiver_never_gets_credentials_into_an_excerpt() {
    let rx = echo().await;
    let url = format!("http://{rx}/hook");
    let app = spawn_app(&one_route(&url, &credentials())).await;

    // A delivery: the stored attempt, as the API shows it.
    let id = post_event(&app, "/t/new_order", "{}").await;
    let attempts = settled(&app, id, State::Succeeded).await;
    assert_redacted(&attempts[0].excerpt);
    let event = admin(&app, "GET", &format!("/api/events/{id}"), None)
        .await
        .json();
    let history = &event["deliveries"][0]["history"][0];
    assert_redacted(history["excerpt"].as_str().unwrap());
    // The headers sent are shown without their values too.
    let sent = history["request_headers"].to_string();
    assert!(
        !sent.contains(API_KEY) && !sent.contains(PASSWORD),
        "{sent}"
    );

    // A test send of the config target, and of an API endpoint.
    let r = admin(&app, "POST", "/api/endpoints/t%2Frx/test", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_redacted(r.json()["excerpt"].as_str().unwrap());
    let made = admin(
        &app,
        "POST",
        "/api/endpoints",
        Some(json!({
            "name": "echo", "url": url,
            "basic_auth": {"username": "lms", "password": PASSWORD},
            "headers": {"x-api-key": API_KEY},
        })),
    )
    .await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let ep = made.json()["id"].as_str().unwrap().to_string();
    let r = admin(&app, "POST", &format!("/api/endpoints/{ep}/test"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_redacted(r.json()["excerpt"].as_str().unwrap());
    let shown = admin(&app, "GET", &format!("/api/endpoints/{ep}"), None)
        .await
        .json();
    assert_redacted(shown["recent_tests"][0]["excerpt"].as_str().unwrap());
}

const SUBSCRIBER: &str = "subscriber-token-0123456789";
const OTHER: &str = "other-subscriber-token-0123";

/// A port on loopback where nothing listens.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

async fn hook(app: &TestApp, token: &str, url: &str) -> String {
    let body = json!({"target_url": url, "event": "new_order"});
    let r = admin_as(app, Some(token), "POST", "/api/hooks", Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

async fn test_send(app: &TestApp, token: &str, id: &str) -> Reply {
    admin_as(
        app,
        Some(token),
        "POST",
        &format!("/api/hooks/{id}/test"),
        None,
    )
    .await
}

/// Every answer a subscriber gets about its endpoint `id`, as one text.
async fn everything_shown(app: &TestApp, id: &str) -> String {
    let mut all = String::new();
    for path in [
        format!("/api/hooks/{id}"),
        "/api/hooks".to_string(),
        format!("/api/endpoints/{id}"),
        "/api/endpoints".to_string(),
    ] {
        let r = admin_as(app, Some(SUBSCRIBER), "GET", &path, None).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        all.push_str(&String::from_utf8_lossy(&r.body));
    }
    all
}

#[tokio::test]
async fn a_subscriber_learns_only_whether_a_test_send_was_delivered() {
    // Receivers inside what egress.allow opens (loopback, in the test base).
    let rx = echo().await;
    let closed = closed_port().await;
    let tokens =
        format!("{TOKEN}\n{SUBSCRIBER} subscriber name=zapier\n{OTHER} subscriber name=other\n");
    let app = spawn_app_with_tokens(&one_route(&format!("http://{rx}/config"), ""), &tokens).await;

    // A receiver that answers: delivered, 2xx, and nothing of what it said.
    let answering = hook(&app, SUBSCRIBER, &format!("http://{rx}/hook")).await;
    let r = test_send(&app, SUBSCRIBER, &answering).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let t = r.json();
    assert_eq!(t["succeeded"], true, "{t}");
    assert_eq!(t["status_class"], "2xx", "{t}");
    assert_eq!(t["status"], Value::Null, "{t}");
    assert_eq!(t["error"], Value::Null, "{t}");
    assert!(t.get("excerpt").is_none(), "{t}");

    // A port where nothing listens: "not delivered", not why.
    let silent = hook(&app, SUBSCRIBER, &format!("http://127.0.0.1:{closed}/hook")).await;
    let r = test_send(&app, SUBSCRIBER, &silent).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let t = r.json();
    assert_eq!(t["succeeded"], false, "{t}");
    assert_eq!(t["status"], Value::Null, "{t}");
    assert_eq!(t["status_class"], Value::Null, "{t}");
    assert_eq!(t["error"], "not delivered", "{t}");

    // A real delivery fails there too; its error stays with the operator.
    post_event(&app, "/t/new_order", "{}").await;
    let seen = eventually_json(&app, &format!("/api/hooks/{silent}"), |v| {
        v["counters"]["last_error"].is_string()
    })
    .await;
    let why = seen["counters"]["last_error"].as_str().unwrap().to_string();
    assert!(why.contains("cannot connect"), "{why}");
    eventually_json(&app, &format!("/api/hooks/{answering}"), |v| {
        v["counters"]["last_status"] == 200
    })
    .await;

    // No other answer tells the subscriber more.
    for id in [&answering, &silent] {
        let shown = everything_shown(&app, id).await;
        assert!(!shown.contains("\"excerpt\""), "{shown}");
        assert!(!shown.contains("webhook-id"), "the echo's body: {shown}");
        assert!(!shown.contains(&why), "{shown}");
        assert!(!shown.contains("\"last_status\":200"), "{shown}");
        assert!(!shown.contains("\"status\":200"), "{shown}");
    }
    let shown = admin_as(
        &app,
        Some(SUBSCRIBER),
        "GET",
        &format!("/api/hooks/{silent}"),
        None,
    )
    .await
    .json();
    assert_eq!(shown["counters"]["last_error"], "not delivered", "{shown}");
    let shown = admin_as(
        &app,
        Some(SUBSCRIBER),
        "GET",
        &format!("/api/hooks/{answering}"),
        None,
    )
    .await
    .json();
    assert_eq!(shown["counters"]["last_status_class"], "2xx", "{shown}");

    // The operator sees all of it.
    let full = admin(&app, "GET", &format!("/api/endpoints/{answering}"), None)
        .await
        .json();
    let test = &full["recent_tests"][0];
    assert_eq!(test["status"], 200, "{full}");
    assert!(
        test["excerpt"].as_str().unwrap().contains("webhook-id"),
        "{full}"
    );
    let full = admin(&app, "GET", &format!("/api/endpoints/{silent}"), None)
        .await
        .json();
    assert!(
        full["recent_tests"][0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{full}"
    );
}

#[tokio::test]
async fn test_sends_of_a_subscriber_token_are_rate_limited() {
    let rx = echo().await;
    let tokens =
        format!("{TOKEN}\n{SUBSCRIBER} subscriber name=zapier\n{OTHER} subscriber name=other\n");
    let app = spawn_app_with_tokens(&one_route(&format!("http://{rx}/config"), ""), &tokens).await;
    let mine = hook(&app, SUBSCRIBER, &format!("http://{rx}/mine")).await;
    let started = std::time::Instant::now();
    let burst = 10;
    let mut sent = 0;
    let limited = loop {
        let r = test_send(&app, SUBSCRIBER, &mine).await;
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 200, "{:?}", r.body);
        sent += 1;
        assert!(sent <= 3 * burst, "never limited");
    };
    // The whole burst went, and at most what came back meanwhile.
    let refilled = (started.elapsed().as_secs() / 6) as usize;
    assert!(sent >= burst && sent <= burst + refilled, "{sent} sent");
    let body = limited.json();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&wait), "Retry-After: {wait}");

    // A limited test send reaches no receiver: the hook got only the burst.
    let again = test_send(&app, SUBSCRIBER, &mine).await;
    assert_eq!(again.status, 429);
    let to_mine = |c: &Value| c["counters"]["tests"].as_u64().unwrap();
    let shown = admin(&app, "GET", &format!("/api/hooks/{mine}"), None)
        .await
        .json();
    assert_eq!(to_mine(&shown), sent as u64, "{shown}");

    // Another token has its own bucket; the operator's is not limited.
    let theirs = hook(&app, OTHER, &format!("http://{rx}/theirs")).await;
    assert_eq!(test_send(&app, OTHER, &theirs).await.status, 200);
    for _ in 0..=burst {
        assert_eq!(test_send(&app, TOKEN, &mine).await.status, 200);
    }
}

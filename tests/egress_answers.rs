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

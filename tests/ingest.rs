//! Every ingest status of DESIGN.md's table, over real loopback HTTP.

mod common;

use std::net::IpAddr;

use common::*;
use hookrelay::store::EventId;

fn routes(url: &str) -> String {
    format!(
        "{}\n[[routes]]\nname = \"braincert\"\npath = \"/braincert\"\n\
         event = \"{{json./resource}}.{{json./action}}\"\n\
         dedup = \"{{header.idempotency-key}}\"\n\
         [[routes.targets]]\nname = \"rx\"\nurl = \"{url}\"\n",
        one_route(url, "events = [\"new_order\"]")
    )
}

#[tokio::test]
async fn accepted_event_is_stored_before_202() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&routes(&rx.url("/hook"))).await;
    let body = fixture("heights/new_order.json");
    let r = post_json(app.addr, "/t/new_order", body.clone()).await;
    assert_eq!(r.status, 202);
    let json = r.json();
    assert_eq!(json["deliveries"], 1);
    let id = EventId::parse(json["id"].as_str().unwrap()).expect("an event id");
    let event = app.relay.store().event(id).await.unwrap().expect("stored");
    assert_eq!(&event.body[..], &body[..]);
    assert_eq!(event.meta.event_type, "new_order");
    assert_eq!(event.meta.route, "t");

    // An event no target wants is still accepted, with no deliveries.
    let r = post_json(app.addr, "/t/new_student", "{}").await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["deliveries"], 0);
}

#[tokio::test]
async fn same_dedup_key_is_acknowledged_once() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&routes(&rx.url("/hook"))).await;
    let body = fixture("braincert/course_completed.json");
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", "k-1"),
    ];
    let first = send(app.addr, None, "POST", "/braincert", &headers, body.clone()).await;
    assert_eq!(first.status, 202);
    let second = send(app.addr, None, "POST", "/braincert", &headers, body.clone()).await;
    assert_eq!(second.status, 202);
    assert_eq!(second.json()["duplicate"], true);
    assert_eq!(second.json()["id"], first.json()["id"]);
    // A new key is a new event.
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", "k-2"),
    ];
    let third = send(app.addr, None, "POST", "/braincert", &headers, body).await;
    assert_ne!(third.json()["id"], first.json()["id"]);
    assert!(third.json().get("duplicate").is_none());
    // The receiver gets the two distinct events, once each.
    let got = rx.wait_for(2).await;
    assert_eq!(got.len(), 2);
}

#[tokio::test]
async fn source_outside_allowlist_gets_403() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&format!(
        "ingest.allow = [\"127.0.0.1/32\"]\n{}",
        routes(&rx.url("/hook"))
    ))
    .await;
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let r = send(app.addr, Some(other), "POST", "/t/new_order", &[], "{}").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "source_not_allowed");
    let s = scrape(app.relay.admin_addrs()[0]).await;
    let refused = metric(
        &s,
        "hookrelay_events_rejected_total",
        Some(("reason", "source_not_allowed")),
    );
    assert_eq!(refused, 1.0, "the refusal is counted");
    let r = send(
        app.addr,
        Some("127.0.0.1".parse().unwrap()),
        "POST",
        "/t/new_order",
        &[],
        "{}",
    )
    .await;
    assert_eq!(r.status, 202);
}

#[tokio::test]
async fn unknown_path_gets_404_and_wrong_method_405() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&routes(&rx.url("/hook"))).await;
    let r = post_json(app.addr, "/nowhere", "{}").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "no_route");
    let r = post_json(app.addr, "/t/a/b", "{}").await;
    assert_eq!(r.status, 404);

    for method in ["GET", "PUT", "DELETE"] {
        let r = send(app.addr, None, method, "/t/new_order", &[], "").await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.headers["allow"], "POST");
        assert_eq!(r.json()["error"]["code"], "method_not_allowed");
    }
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&format!(
        "ingest.max_body_bytes = 1000\n{}",
        routes(&rx.url("/hook"))
    ))
    .await;
    let r = post_json(app.addr, "/t/new_order", vec![b'x'; 1001]).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "body_too_large");
    let r = post_json(app.addr, "/t/new_order", vec![b'x'; 1000]).await;
    assert_eq!(r.status, 202);
}

#[tokio::test]
async fn template_needing_json_on_non_json_body_gets_400() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&routes(&rx.url("/hook"))).await;
    let r = post_json(app.addr, "/braincert", "not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "bad_payload");
    // JSON without the fields the template reads is refused too.
    let r = post_json(app.addr, "/braincert", "{\"resource\": \"course\"}").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/action"));
    let r = post_json(
        app.addr,
        "/braincert",
        fixture("braincert/course_completed.json"),
    )
    .await;
    assert_eq!(r.status, 202);
}

#[tokio::test]
async fn burst_over_rate_gets_429_with_retry_after() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&format!(
        "ingest.rate = {{ per_second = 1, burst = 5 }}\n{}",
        routes(&rx.url("/hook"))
    ))
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let r = post_json(app.addr, "/t/other", "{}").await;
        if r.status == 429 {
            retry_after = Some(
                r.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
            assert_eq!(r.json()["error"]["code"], "rate_limited");
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(&statuses[..5], &[202; 5]);
    assert!(statuses[5..].iter().all(|&s| s == 429), "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1));
}

#[tokio::test]
async fn full_store_gets_503_and_keeps_nothing() {
    let rx = Receiver::ok().await;
    // A limit below the size of a fresh store: nothing can be accepted.
    let app = spawn_app(&format!(
        "store.max_disk_bytes = 1\n{}",
        routes(&rx.url("/hook"))
    ))
    .await;
    let r = post_json(app.addr, "/t/new_order", fixture("heights/new_order.json")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "store_full");
    assert!(
        app.relay.store().due_entries(10).await.unwrap().is_empty(),
        "nothing queued"
    );
    assert!(rx.received().is_empty());
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&routes(&rx.url("/hook"))).await;
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/t/new_order", app.addr))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 202);
    rx.wait_for(1).await;
}

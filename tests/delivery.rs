//! Delivery stories: what a receiver sees, retries, dead letters, timeouts,
//! rate limits, Retry-After, and shutdown, over real loopback HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hookrelay::store::{EventId, State};

#[tokio::test]
async fn delivery_arrives_intact_and_signed() {
    let rx = Receiver::ok().await;
    let route = one_route(&rx.url("/hook?src=lms"), "").replace(
        "[[routes.targets]]",
        "forward_headers = [\"x-lms-account\"]\n[[routes.targets]]",
    );
    let app = spawn_app(&route).await;
    let body = fixture("heights/new_order.json");
    let headers = [
        ("content-type", "application/json; charset=utf-8"),
        ("x-lms-account", "acme"),
        ("authorization", "Bearer lms-secret"),
        ("cookie", "session=1"),
        ("x-not-listed", "1"),
    ];
    let r = send(
        app.addr,
        None,
        "POST",
        "/t/new_order",
        &headers,
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_string();

    let got = rx.wait_for(1).await;
    let req = &got[0];
    assert_eq!(&req.body[..], &body[..], "body bytes untouched");
    let h = &req.headers;
    assert_eq!(h["webhook-id"], id.as_str());
    assert_eq!(h["content-type"], "application/json; charset=utf-8");
    assert_eq!(h["x-lms-account"], "acme");
    assert!(h["user-agent"].to_str().unwrap().starts_with("hookrelay/"));
    for absent in ["authorization", "cookie", "x-not-listed"] {
        assert!(h.get(absent).is_none(), "{absent} must not be forwarded");
    }
    let ts: i64 = h["webhook-timestamp"].to_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - ts).abs() < 60);
    assert!(verify_signature(SECRET, h, &req.body), "signature verifies");
    assert!(!verify_signature(SECRET, h, b"tampered"));

    let attempts = settled(&app, EventId::parse(&id).unwrap(), State::Succeeded).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, Some(200));
    assert_eq!(attempts[0].excerpt, "ok");
}

#[tokio::test]
async fn rotating_secrets_sign_twice() {
    let rx = Receiver::ok().await;
    let second = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let route = one_route(&rx.url("/hook"), "").replace(
        &format!("secret = \"{SECRET}\""),
        &format!("secret = [\"{SECRET}\", \"{second}\"]"),
    );
    let app = spawn_app(&route).await;
    post_event(&app, "/t/a", b"{}".to_vec()).await;
    let got = rx.wait_for(1).await;
    let sig = got[0].headers["webhook-signature"].to_str().unwrap();
    assert_eq!(sig.split(' ').count(), 2);
    assert!(verify_signature(SECRET, &got[0].headers, &got[0].body));
    assert!(verify_signature(second, &got[0].headers, &got[0].body));
}

#[tokio::test]
async fn two_failures_then_success_arrives_on_attempt_three() {
    let rx = Receiver::start(Arc::new(|n| {
        (if n < 2 { 500 } else { 200 }, Duration::ZERO)
    }))
    .await;
    let app = spawn_app(&one_route(&rx.url("/hook"), "")).await;
    let id = post_event(&app, "/t/new_order", fixture("heights/new_order.json")).await;
    let got = rx.wait_for(3).await;
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert!(
        ids.iter().all(|i| i == &id.to_string()),
        "same id on every attempt"
    );
    let attempts = settled(&app, id, State::Succeeded).await;
    let statuses: Vec<_> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![Some(500), Some(500), Some(200)]);
    // Backoff: 20ms, then 40ms (no jitter in the test config).
    assert!(got[1].at - got[0].at >= Duration::from_millis(20));
    assert!(got[2].at - got[1].at >= Duration::from_millis(40));
}

#[tokio::test]
async fn always_failing_receiver_ends_dead_after_max_attempts() {
    let rx = Receiver::start(Arc::new(|_| (500, Duration::ZERO))).await;
    let app = spawn_app(&one_route(&rx.url("/hook"), "max_attempts = 4")).await;
    let id = post_event(&app, "/t/x", b"{}".to_vec()).await;
    let attempts = settled(&app, id, State::Dead).await;
    assert_eq!(attempts.len(), 4);
    assert!(attempts.iter().all(|a| a.status == Some(500)));
    assert_eq!(rx.received().len(), 4, "no attempt after dead");
}

#[tokio::test]
async fn unreachable_receiver_counts_as_failed_attempts() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app(&one_route(
        &format!("http://127.0.0.1:{port}/hook"),
        "max_attempts = 2",
    ))
    .await;
    let id = post_event(&app, "/t/x", b"{}".to_vec()).await;
    let attempts = settled(&app, id, State::Dead).await;
    assert_eq!(attempts.len(), 2);
    let err = attempts[0].error.as_deref().unwrap();
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn receiver_slower_than_timeout_is_a_failed_attempt() {
    let rx = Receiver::start(Arc::new(|n| {
        (
            200,
            if n == 0 {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            },
        )
    }))
    .await;
    let app = spawn_app(&one_route(&rx.url("/hook"), "timeout = \"300ms\"")).await;
    let id = post_event(&app, "/t/x", b"{}".to_vec()).await;
    let attempts = settled(&app, id, State::Succeeded).await;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].status, None);
    assert!(attempts[0]
        .error
        .as_deref()
        .unwrap()
        .contains("no response within"));
    assert!(attempts[0].duration_ms >= 300);
    assert_eq!(attempts[1].status, Some(200));
}

#[tokio::test]
async fn success_ranges_decide_what_counts() {
    let rx = Receiver::start(Arc::new(|_| (302, Duration::ZERO))).await;
    let app = spawn_app(&format!(
        "{}\n{}",
        one_route(&rx.url("/a"), "success = [\"200-308\"]"),
        one_route(&rx.url("/b"), "max_attempts = 2")
            .replace("name = \"t\"", "name = \"u\"")
            .replace("/t/{event}", "/u/{event}")
    ))
    .await;
    let a = post_event(&app, "/t/x", b"{}".to_vec()).await;
    let b = post_event(&app, "/u/x", b"{}".to_vec()).await;
    assert_eq!(settled(&app, a, State::Succeeded).await.len(), 1);
    let attempts = settled(&app, b, State::Dead).await;
    assert_eq!(
        attempts.len(),
        2,
        "302 is a failure by default, and redirects are not followed"
    );
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_backoff_max() {
    let rx = Receiver::start(Arc::new(|n| {
        (if n == 0 { 429 } else { 200 }, Duration::ZERO)
    }))
    .await;
    // Backoff alone would retry after 20ms; Retry-After says 1s.
    let app = spawn_app(&one_route(
        &rx.url("/hook"),
        "backoff = { initial = \"20ms\", max = \"5s\" }",
    ))
    .await;
    let id = post_event(&app, "/t/x", b"{}".to_vec()).await;
    let got = rx.wait_for(2).await;
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(900),
        "{:?}",
        got[1].at - got[0].at
    );
    settled(&app, id, State::Succeeded).await;

    // With max below Retry-After, max wins.
    let rx = Receiver::start(Arc::new(|n| {
        (if n == 0 { 503 } else { 200 }, Duration::ZERO)
    }))
    .await;
    let app = spawn_app(&one_route(
        &rx.url("/hook"),
        "backoff = { initial = \"20ms\", max = \"100ms\" }",
    ))
    .await;
    post_event(&app, "/t/x", b"{}".to_vec()).await;
    let got = rx.wait_for(2).await;
    assert!(got[1].at - got[0].at < Duration::from_millis(900));
}

#[tokio::test]
async fn target_rate_limit_spaces_deliveries() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&one_route(
        &rx.url("/hook"),
        "rate = { per_second = 10, burst = 1 }",
    ))
    .await;
    for _ in 0..6 {
        post_event(&app, "/t/x", b"{}".to_vec()).await;
    }
    let got = rx.wait_for(6).await;
    let mut times: Vec<_> = got.iter().map(|r| r.at).collect();
    times.sort();
    // 6 deliveries at 10/s with no burst take at least 5 intervals of 100ms.
    let span = *times.last().unwrap() - times[0];
    assert!(span >= Duration::from_millis(400), "span {span:?}");
}

#[tokio::test]
async fn fan_out_reaches_every_matching_target_only() {
    let orders = Receiver::ok().await;
    let everything = Receiver::ok().await;
    let courses = Receiver::ok().await;
    let both = Receiver::ok().await;
    let app = spawn_app(&format!(
        "[[routes]]\nname = \"t\"\npath = \"/t/{{event}}\"\n\
         [[routes.targets]]\nname = \"orders\"\nurl = \"{}\"\nevents = [\"new_order\"]\n\
         [[routes.targets]]\nname = \"all\"\nurl = \"{}\"\n\
         [[routes.targets]]\nname = \"courses\"\nurl = \"{}\"\nevents = [\"course_*\"]\n\
         [[routes.targets]]\nname = \"both\"\nurl = \"{}\"\nevents = [\"course_*\", \"course_completed\"]\n",
        orders.url("/"),
        everything.url("/"),
        courses.url("/"),
        both.url("/")
    ))
    .await;
    let r = post_json(app.addr, "/t/new_order", "{}").await;
    assert_eq!(r.json()["deliveries"], 2);
    // Two of `both`'s patterns match: still one delivery.
    let r = post_json(app.addr, "/t/course_completed", "{}").await;
    assert_eq!(r.json()["deliveries"], 3);
    everything.wait_for(2).await;
    courses.wait_for(1).await;
    orders.wait_for(1).await;
    both.wait_for(1).await;
    let d = app.relay.store().due_entries(10).await.unwrap();
    assert!(d.is_empty());
    assert_eq!(orders.received().len(), 1);
    assert_eq!(courses.received().len(), 1);
    assert_eq!(both.received().len(), 1);
}

#[tokio::test]
async fn shutdown_lets_attempts_under_way_finish() {
    let rx = Receiver::start(Arc::new(|_| (200, Duration::from_millis(500)))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&one_route(&rx.url("/hook"), ""), dir.path());
    let relay = hookrelay::Relay::start(config.clone()).await.unwrap();
    let addr = relay.ingest_addrs()[0];
    let r = post_json(addr, "/t/x", "{}").await;
    let id = EventId::parse(r.json()["id"].as_str().unwrap()).unwrap();
    rx.wait_for(1).await;
    // The receiver holds the request for 500ms; shut down meanwhile.
    relay.shutdown().await.unwrap();
    let relay = hookrelay::Relay::start(config).await.unwrap();
    let (_, d) = relay.store().deliveries_of(id).await.unwrap().remove(0);
    assert_eq!(
        d.state,
        State::Succeeded,
        "the attempt under way finished and was recorded"
    );
    assert_eq!(d.attempts, 1);
    relay.shutdown().await.unwrap();
    assert_eq!(rx.received().len(), 1, "not sent again after restart");
}

/// A receiver that writes `answers[n]` as the raw HTTP response to its
/// `n`th request (the last one from then on) and closes the connection;
/// returns its address and when each request arrived.
async fn raw_receiver(
    answers: Vec<String>,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = Vec::new();
            // The relay's request: headers, then a body of Content-Length.
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let n = {
                let mut seen = log.lock().unwrap();
                seen.push(std::time::Instant::now());
                seen.len() - 1
            };
            let answer = &answers[n.min(answers.len() - 1)];
            let _ = conn.write_all(answer.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_response_cut_short_is_a_failed_attempt_and_is_retried() {
    let (addr, seen) = raw_receiver(vec![
        // Promises 100 bytes, sends 7, hangs up.
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial".into(),
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into(),
    ])
    .await;
    let app = spawn_app(&one_route(
        &format!("http://{addr}/hook"),
        "backoff = { initial = \"20ms\", max = \"100ms\" }",
    ))
    .await;
    let id = post_event(&app, "/t/x", b"{}".to_vec()).await;
    let attempts = settled(&app, id, State::Succeeded).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].status, None, "{:?}", attempts[0]);
    assert!(
        attempts[0].error.as_deref().unwrap().contains("cut short"),
        "{:?}",
        attempts[0].error
    );
    assert_eq!(attempts[1].status, Some(200));
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    // Two seconds ahead, so at least one second away once truncated to a
    // whole second; backoff alone would retry after 20ms.
    let at = std::time::SystemTime::now() + Duration::from_secs(2);
    let (addr, seen) = raw_receiver(vec![
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            httpdate::fmt_http_date(at)
        ),
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
    ])
    .await;
    let app = spawn_app(&one_route(
        &format!("http://{addr}/hook"),
        "backoff = { initial = \"20ms\", max = \"5s\" }",
    ))
    .await;
    let id = post_event(&app, "/t/x", b"{}".to_vec()).await;
    settled(&app, id, State::Succeeded).await;
    let times = seen.lock().unwrap().clone();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= Duration::from_millis(900),
        "retried after {:?}",
        times[1] - times[0]
    );
}

//! The egress guard and the fixed source address, end to end: a host name
//! that resolves to loopback, literal addresses at load, `egress.bind`.

mod common;

use std::path::Path;

use common::*;
use hookrelay::store::State;

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_by_default() {
    let rx = Receiver::ok().await;
    let url = format!("http://localhost:{}/hook", rx.addr.port());
    let app = spawn_app_with(&one_route(&url, "max_attempts = 2")).await;
    let id = post_event(&app, "/t/new_order", "{}").await;
    let attempts = settled(&app, id, State::Dead).await;
    assert_eq!(attempts.len(), 2);
    let err = attempts[0].error.as_deref().unwrap();
    assert!(
        err.contains("refused to connect to localhost") && err.contains("loopback"),
        "{err}"
    );
    assert!(rx.received().is_empty(), "nothing reached the receiver");
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_delivered_when_allowed() {
    for allowance in [
        "egress.allow = [\"127.0.0.0/8\", \"::1/128\"]\n",
        "egress.allow_private = true\n",
    ] {
        let rx = Receiver::ok().await;
        let url = format!("http://localhost:{}/hook", rx.addr.port());
        let app = spawn_app_with(&format!("{allowance}{}", one_route(&url, ""))).await;
        let id = post_event(&app, "/t/new_order", "{}").await;
        settled(&app, id, State::Succeeded).await;
        assert_eq!(rx.wait_for(1).await.len(), 1, "{allowance}");
    }
}

#[tokio::test]
async fn deny_wins_over_allow() {
    let rx = Receiver::ok().await;
    let url = format!("http://localhost:{}/hook", rx.addr.port());
    let app = spawn_app_with(&format!(
        "egress.allow_private = true\negress.deny = [\"127.0.0.0/8\", \"::1/128\"]\n{}",
        one_route(&url, "max_attempts = 1")
    ))
    .await;
    let id = post_event(&app, "/t/new_order", "{}").await;
    let attempts = settled(&app, id, State::Dead).await;
    assert!(
        attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("egress.deny"),
        "{attempts:?}"
    );
    assert!(rx.received().is_empty());
}

/// Literal target URLs the default policy refuses, and the kind each
/// refusal names; the config file and the API refuse the same ones.
const REFUSED_LITERALS: &[(&str, &str)] = &[
    ("http://127.0.0.1:9/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[::ffff:10.0.0.1]/hook", "private"),
    ("http://[fd00:ec2::254]/", "private"),
    ("http://[5f00::1]/", "reserved"),
    ("http://[2001:10::1]/", "reserved"),
    ("http://[100:0:0:1::1]/", "reserved"),
    ("http://0.0.0.0:80/", "unspecified"),
];

#[test]
fn literal_targets_that_can_never_pass_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for &(url, reason) in REFUSED_LITERALS {
        let text = test_config_text_with(&one_route(url, ""), dir.path());
        let e = hookrelay::config::Config::parse(&text, Path::new("t.toml")).unwrap_err();
        assert_eq!(e.key, "routes[0].targets[0].url", "{url}");
        assert!(e.reason.contains(reason), "{url}: {e}");
    }
    // The unspecified address stays refused even when egress.allow covers it.
    let text = test_config_text_with(
        &format!(
            "egress.allow = [\"0.0.0.0/0\"]\n{}",
            one_route("http://0.0.0.0/", "")
        ),
        dir.path(),
    );
    assert!(hookrelay::config::Config::parse(&text, Path::new("t.toml")).is_err());
    // A public literal passes.
    let text = test_config_text_with(&one_route("https://93.184.216.34/hook", ""), dir.path());
    hookrelay::config::Config::parse(&text, Path::new("t.toml")).unwrap();
}

#[tokio::test]
async fn bind_makes_deliveries_leave_from_that_address() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&format!(
        "egress.bind = \"127.0.0.2\"\n{}",
        one_route(&rx.url("/hook"), "")
    ))
    .await;
    post_event(&app, "/t/new_order", "{}").await;
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].peer.ip().to_string(), "127.0.0.2");
}

#[tokio::test]
async fn bind_to_an_address_that_is_not_local_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // 192.0.2.1 is a documentation address: never one of this host's.
    let config = test_config("egress.bind = \"192.0.2.1\"\n", dir.path());
    let e = hookrelay::Relay::start(config)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("egress.bind"), "{e}");
    let text = test_config_text("egress.bind = \"not-an-ip\"\n", dir.path());
    let e = hookrelay::config::Config::parse(&text, Path::new("t.toml")).unwrap_err();
    assert_eq!(e.key, "egress.bind");
}

/// A subscriber token of the API stories below.
const SUBSCRIBER: &str = "subscriber-token-0123456789";

fn with_subscriber() -> String {
    format!("{TOKEN}\n{SUBSCRIBER} subscriber name=zapier\n")
}

#[tokio::test]
async fn the_api_refuses_what_the_config_refuses() {
    // Loopback is allowed (the test base), so only the spelling is wrong.
    let app = spawn_app_with_tokens("", &with_subscriber()).await;
    let spellings = [
        ("http://2130706433/hook", "127.0.0.1"),
        ("http://0x7f.1/hook", "127.0.0.1"),
        ("http://127.1:9/hook", "127.0.0.1"),
        ("http://0177.0.0.1/hook", "127.0.0.1"),
        ("http://0x7f000001/hook", "127.0.0.1"),
        (
            "http://0xa9.0xfe.0xa9.0xfe/latest/meta-data",
            "169.254.169.254",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (url, canonical) in spellings {
        let why = format!("not a canonical IPv4 address; write {canonical}");
        // The config file ...
        let text = test_config_text(&one_route(url, ""), dir.path());
        let e = hookrelay::config::Config::parse(&text, Path::new("t.toml")).unwrap_err();
        assert_eq!(e.key, "routes[0].targets[0].url", "{url}");
        assert!(e.reason.contains(&why), "{url}: {e}");
        // ... and every way in through the API.
        for token in [TOKEN, SUBSCRIBER] {
            let hook = serde_json::json!({"target_url": url, "event": "new_order"});
            let r = admin_as(&app, Some(token), "POST", "/api/hooks", Some(hook)).await;
            assert_eq!(r.status, 422, "{url}: {:?}", r.body);
            let message = r.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(
                message.starts_with("target_url: ") && message.contains(&why),
                "{message}"
            );

            let endpoint = serde_json::json!({"name": "n", "url": url});
            let r = admin_as(&app, Some(token), "POST", "/api/endpoints", Some(endpoint)).await;
            assert_eq!(r.status, 422, "{url}: {:?}", r.body);
            let message = r.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(
                message.starts_with("url: ") && message.contains(&why),
                "{message}"
            );
        }
    }
    // A change to an endpoint is held to the same rule.
    let rx = Receiver::ok().await;
    let made = admin(
        &app,
        "POST",
        "/api/endpoints",
        Some(serde_json::json!({"name": "n", "url": rx.url("/hook")})),
    )
    .await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let id = made.json()["id"].as_str().unwrap().to_string();
    let r = admin(
        &app,
        "PATCH",
        &format!("/api/endpoints/{id}"),
        Some(serde_json::json!({"url": format!("http://127.1:{}/hook", rx.addr.port())})),
    )
    .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("write 127.0.0.1"),
        "{:?}",
        r.body
    );
    // Nothing was made or changed by the refusals.
    let all = admin(&app, "GET", "/api/endpoints", None).await.json();
    let endpoints = all["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{all}");
    assert_eq!(endpoints[0]["url"], rx.url("/hook"));
}

#[tokio::test]
async fn literals_the_policy_refuses_are_refused_by_the_api_as_at_load() {
    // The default policy: loopback, private, link-local and the rest denied.
    let app = spawn_app_in_default_policy().await;
    for &(url, reason) in REFUSED_LITERALS {
        for token in [TOKEN, SUBSCRIBER] {
            let hook = serde_json::json!({"target_url": url, "event": "new_order"});
            let r = admin_as(&app, Some(token), "POST", "/api/hooks", Some(hook)).await;
            assert_eq!(r.status, 422, "{url}: {:?}", r.body);
            let message = r.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(
                message.starts_with("target_url: ") && message.contains(reason),
                "{message}"
            );
            let endpoint = serde_json::json!({"name": "n", "url": url});
            let r = admin_as(&app, Some(token), "POST", "/api/endpoints", Some(endpoint)).await;
            assert_eq!(r.status, 422, "{url}: {:?}", r.body);
            assert!(r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(reason));
        }
    }
    let all = admin(&app, "GET", "/api/endpoints", None).await.json();
    assert_eq!(all["endpoints"], serde_json::json!([]));
}

/// A relay with the default egress policy and the subscriber token.
async fn spawn_app_in_default_policy() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config_text_with("", dir.path());
    std::fs::write(dir.path().join("admin.tokens"), with_subscriber()).unwrap();
    let config = hookrelay::config::Config::parse(&text, Path::new("test.toml")).unwrap();
    let relay = hookrelay::Relay::start(config).await.expect("relay starts");
    TestApp {
        addr: relay.ingest_addrs()[0],
        relay,
        dir,
    }
}

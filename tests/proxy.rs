//! Proxy mode: an LMS whose outbound proxy is hookrelay. Absolute-form
//! requests are stored and relayed to their own URL; CONNECT is tunnelled
//! only where `ingest.connect_allow` and the egress policy both allow it.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn proxy_route(extra: &str) -> String {
    format!(
        "ingest.proxy = true\n{extra}\
         [[routes]]\nname = \"crm\"\nhost = \"localhost\"\npath = \"/hook/{{event}}\"\n"
    )
}

#[tokio::test]
async fn absolute_form_request_is_stored_and_relayed_to_its_url() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&proxy_route("")).await;
    let url = format!("http://localhost:{}/hook/new_order?x=1", rx.addr.port());
    let r = send(
        app.addr,
        None,
        "POST",
        &url,
        &[("content-type", "application/json")],
        "{\"id\":7}",
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.json()["deliveries"], 1);
    let got = rx.wait_for(1).await;
    assert_eq!(&got[0].body[..], b"{\"id\":7}");
    assert_eq!(got[0].headers["content-type"], "application/json");
    assert!(got[0].headers.contains_key("webhook-id"));

    // A host no route names is not relayed anywhere.
    let other = format!("http://127.0.0.1:{}/hook/new_order", rx.addr.port());
    let r = post_json(app.addr, &other, "{}").await;
    assert_eq!(r.status, 404);
    // An origin-form request does not match a proxy route.
    let r = post_json(app.addr, "/hook/new_order", "{}").await;
    assert_eq!(r.status, 404);
}

/// Sends a CONNECT and returns the status line the relay answered.
async fn connect(app: &TestApp, target: &str) -> (tokio::net::TcpStream, String) {
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = tokio::time::timeout(DEADLINE, tcp.read(&mut byte))
            .await
            .expect("answer to CONNECT")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    (tcp, head)
}

#[tokio::test]
async fn connect_to_a_host_not_allowed_is_refused() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&proxy_route(
        "ingest.connect_allow = [\"crm.example.com:443\"]\n",
    ))
    .await;
    let (_, head) = connect(&app, &format!("localhost:{}", rx.addr.port())).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(rx.received().is_empty());
    assert!(
        app.relay.store().due_entries(10).await.unwrap().is_empty(),
        "never stored"
    );
}

#[tokio::test]
async fn connect_allowed_by_the_list_but_not_by_egress_is_refused() {
    let rx = Receiver::ok().await;
    let target = format!("localhost:{}", rx.addr.port());
    let app = spawn_app_with(&proxy_route(&format!(
        "ingest.connect_allow = [\"{target}\"]\n"
    )))
    .await;
    let (_, head) = connect(&app, &target).await;
    // 403 although the list allows it: the egress guard refused loopback.
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(rx.received().is_empty());
}

#[tokio::test]
async fn connect_allowed_by_both_is_tunnelled_and_not_stored() {
    let rx = Receiver::ok().await;
    let target = format!("localhost:{}", rx.addr.port());
    let app = spawn_app(&proxy_route(&format!(
        "ingest.connect_allow = [\"{target}\"]\n"
    )))
    .await;
    let (mut tcp, head) = connect(&app, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Through the tunnel, plain HTTP to the receiver (the LMS would speak TLS).
    tcp.write_all(
        b"POST /direct HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer))
        .await
        .expect("receiver answers through the tunnel")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    assert_eq!(&rx.wait_for(1).await[0].body[..], b"hi");
    assert!(
        app.relay.store().due_entries(10).await.unwrap().is_empty(),
        "never stored"
    );
}

#[test]
fn proxy_routes_need_proxy_mode_and_https_only_needs_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |t: &str| {
        hookrelay::config::Config::parse(
            &test_config_text(t, dir.path()),
            std::path::Path::new("t.toml"),
        )
    };
    let e =
        parse("[[routes]]\nname = \"r\"\nhost = \"crm.example.com\"\npath = \"/a\"\n").unwrap_err();
    assert_eq!(e.key, "routes[0].host");
    let e = parse("ingest.connect_allow = [\"crm.example.com\"]\n").unwrap_err();
    assert_eq!(e.key, "ingest.connect_allow");
    let e = parse(
        "ingest.proxy = true\negress.https_only = true\n[[routes]]\nname = \"r\"\nhost = \"crm.example.com\"\npath = \"/a\"\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "routes[0].upgrade_https");
    parse(
        "ingest.proxy = true\negress.https_only = true\n[[routes]]\nname = \"r\"\nhost = \"crm.example.com\"\nupgrade_https = true\npath = \"/a\"\n",
    )
    .unwrap();
    let e = parse("ingest.proxy = true\n[[routes]]\nname = \"r\"\nhost = \"169.254.169.254\"\npath = \"/a\"\n")
        .unwrap_err();
    assert_eq!(e.key, "routes[0].host");
}

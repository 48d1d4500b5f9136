//! TLS on the ingest and admin listeners: server certificates, client certificates
//! (mTLS), plain HTTP refused cleanly, and certificate reload.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and key in PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn issue(&self, name: &str, server: bool) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// Writes the server's files into `dir`; returns the `ingest.tls` line.
fn tls_line(dir: &Path, server: &Issued, client_ca: Option<&Ca>) -> String {
    std::fs::write(dir.join("server.pem"), &server.cert).unwrap();
    std::fs::write(dir.join("server.key"), &server.key).unwrap();
    let mut line = format!(
        "ingest.tls = {{ cert = {:?}, key = {:?}",
        dir.join("server.pem").display().to_string(),
        dir.join("server.key").display().to_string()
    );
    if let Some(ca) = client_ca {
        std::fs::write(dir.join("clients.pem"), ca.pem()).unwrap();
        line.push_str(&format!(
            ", client_ca = {:?}",
            dir.join("clients.pem").display().to_string()
        ));
    }
    line.push_str(" }\n");
    line
}

fn client_config(trust: &Ca, identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trust.pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(id.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    Arc::new(config)
}

type TlsSender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Opens a TLS connection and an HTTP/1.1 session over it. Errors are
/// returned as text: a refused client may fail at the handshake or at the
/// first request (TLS 1.3 checks the client certificate after the client
/// considers the handshake done).
async fn open(app: &TestApp, config: Arc<rustls::ClientConfig>) -> Result<TlsSender, String> {
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn post(sender: &mut TlsSender) -> Result<u16, String> {
    let req = http::Request::post("/t/new_order")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

async fn post_over(app: &TestApp, config: Arc<rustls::ClientConfig>) -> Result<u16, String> {
    let mut sender = open(app, config).await?;
    post(&mut sender).await
}

/// The certificate the listener presents on a new connection.
async fn presented(app: &TestApp, trust: &Ca) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(trust, None))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn mtls_accepts_clients_of_the_ca_and_refuses_others() {
    let rx = Receiver::ok().await;
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let other_ca = Ca::new("other ca");
    let files = tempfile::tempdir().unwrap();
    let tls = tls_line(
        files.path(),
        &server_ca.issue("hookrelay", true),
        Some(&client_ca),
    );
    let app = spawn_app(&format!("{tls}{}", one_route(&rx.url("/hook"), ""))).await;

    let good = client_ca.issue("lms", false);
    assert_eq!(
        post_over(&app, client_config(&server_ca, Some(&good))).await,
        Ok(202)
    );
    rx.wait_for(1).await;

    let none = post_over(&app, client_config(&server_ca, None)).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    let stranger = other_ca.issue("intruder", false);
    let other = post_over(&app, client_config(&server_ca, Some(&stranger))).await;
    assert!(other.is_err(), "certificate from another CA: {other:?}");

    // The refusals did not disturb the listener.
    assert_eq!(
        post_over(&app, client_config(&server_ca, Some(&good))).await,
        Ok(202)
    );
}

#[tokio::test]
async fn plain_http_to_a_tls_listener_fails_cleanly() {
    let rx = Receiver::ok().await;
    let ca = Ca::new("server ca");
    let files = tempfile::tempdir().unwrap();
    let tls = tls_line(files.path(), &ca.issue("hookrelay", true), None);
    let app = spawn_app(&format!("{tls}{}", one_route(&rx.url("/hook"), ""))).await;

    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"POST /t/new_order HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut got = Vec::new();
    // The connection ends (closed or reset) without an HTTP answer.
    let read = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut got))
        .await
        .expect("the listener closes the connection");
    assert!(
        !got.starts_with(b"HTTP/"),
        "{read:?} {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(post_over(&app, client_config(&ca, None)).await, Ok(202));
    rx.wait_for(1).await;
    assert!(app.relay.store().due_entries(10).await.is_ok());
}

#[tokio::test]
async fn reload_swaps_certificates_for_new_connections_only() {
    let rx = Receiver::ok().await;
    let old_ca = Ca::new("old ca");
    let new_ca = Ca::new("new ca");
    let files = tempfile::tempdir().unwrap();
    let first = old_ca.issue("hookrelay", true);
    let tls = tls_line(files.path(), &first, None);
    let app = spawn_app(&format!("{tls}{}", one_route(&rx.url("/hook"), ""))).await;

    let mut kept = open(&app, client_config(&old_ca, None)).await.unwrap();
    assert_eq!(post(&mut kept).await, Ok(202));

    // A broken file: the reload fails and the old certificate stays.
    std::fs::write(files.path().join("server.pem"), "not a certificate").unwrap();
    let errors = app.relay.reload_tls();
    assert_eq!(errors.len(), 1);
    assert!(
        !errors[0].to_string().contains("PRIVATE KEY"),
        "{}",
        errors[0]
    );
    assert_eq!(post_over(&app, client_config(&old_ca, None)).await, Ok(202));

    // A good new pair: new connections get it, the open one keeps working.
    let second = new_ca.issue("hookrelay", true);
    tls_line(files.path(), &second, None);
    assert!(app.relay.reload_tls().is_empty());
    let cert = presented(&app, &new_ca).await;
    assert_eq!(
        cert,
        CertificateDer::from_pem_slice(second.cert.as_bytes())
            .unwrap()
            .to_vec()
    );
    assert!(post_over(&app, client_config(&old_ca, None)).await.is_err());
    assert_eq!(post(&mut kept).await, Ok(202), "open connection survives");
    rx.wait_for(3).await;
}

#[tokio::test]
async fn unusable_tls_files_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let a = ca.issue("a", true);
    let b = ca.issue("b", true);
    std::fs::write(dir.path().join("a.pem"), &a.cert).unwrap();
    std::fs::write(dir.path().join("b.key"), &b.key).unwrap();
    let text = format!(
        "ingest.tls = {{ cert = {:?}, key = {:?} }}\n",
        dir.path().join("a.pem").display().to_string(),
        dir.path().join("b.key").display().to_string()
    );
    let e = hookrelay::config::Config::parse(&text, Path::new("t.toml")).unwrap_err();
    assert_eq!(e.key, "ingest.tls");
    let text = "ingest.tls = { cert = \"/nonexistent.pem\", key = \"/nonexistent.key\" }\n";
    let e = hookrelay::config::Config::parse(text, Path::new("t.toml")).unwrap_err();
    assert!(e.reason.contains("/nonexistent.pem"), "{e}");
}

/// `GET /api/hooks` with the test token over TLS to the admin listener.
async fn admin_over(app: &TestApp, config: Arc<rustls::ClientConfig>) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(app.relay.admin_addrs()[0])
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("/api/hooks")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// Signs in to the console over TLS; the answer's `Set-Cookie`.
async fn console_cookie_over(app: &TestApp, config: Arc<rustls::ClientConfig>) -> String {
    let tcp = tokio::net::TcpStream::connect(app.relay.admin_addrs()[0])
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/ui/signin")
        .header("host", "localhost")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!("token={TOKEN}"))))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 303);
    resp.headers()["set-cookie"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn admin_listener_takes_tls_and_client_certificates_too() {
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let stranger_ca = Ca::new("stranger ca");
    let dir = tempfile::tempdir().unwrap();
    let line = tls_line(
        dir.path(),
        &server_ca.issue("relay", true),
        Some(&client_ca),
    )
    .replace("ingest.tls", "admin.tls");
    let app = spawn_app(&format!(
        "{line}[[routes]]\nname = \"t\"\npath = \"/t/{{event}}\"\n"
    ))
    .await;

    let member = client_ca.issue("operator", false);
    let ok = admin_over(&app, client_config(&server_ca, Some(&member))).await;
    assert_eq!(ok, Ok(200));
    // Over TLS the console's session cookie is Secure.
    let cookie = console_cookie_over(&app, client_config(&server_ca, Some(&member))).await;
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let anonymous = admin_over(&app, client_config(&server_ca, None)).await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    let stranger = stranger_ca.issue("stranger", false);
    let refused = admin_over(&app, client_config(&server_ca, Some(&stranger))).await;
    assert!(refused.is_err(), "{refused:?}");

    // Plain HTTP to the TLS admin listener gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(app.relay.admin_addrs()[0])
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // Ingest stays plain.
    assert_eq!(post_json(app.addr, "/t/x", "{}").await.status, 202);
}

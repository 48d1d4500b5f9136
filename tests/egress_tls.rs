//! Delivery over https to a receiver whose certificate comes from a test CA:
//! trusted through `egress.ca_file`, refused without it.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use common::*;
use hookrelay::config::Config;
use hookrelay::store::{EventId, State};

/// A CA and a leaf for `localhost` and 127.0.0.1, signed by it.
struct Pki {
    ca_pem: String,
    leaf_chain: Vec<CertificateDer<'static>>,
    leaf_key: PrivateKeyDer<'static>,
}

fn make_pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "hookrelay test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();

    let leaf_key = rcgen::KeyPair::generate().unwrap();
    // "127.0.0.1" becomes an IP address SAN, "localhost" a DNS name SAN.
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();

    Pki {
        ca_pem: ca_cert.pem(),
        leaf_chain: vec![leaf_cert.der().clone()],
        leaf_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

/// A loopback https receiver (tests/common's `Receiver` over rustls) and a
/// count of the handshakes that failed.
struct TlsReceiver {
    rx: Receiver,
    failed_handshakes: Arc<AtomicUsize>,
}

impl TlsReceiver {
    async fn start(pki: &Pki) -> TlsReceiver {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.leaf_chain.clone(), pki.leaf_key.clone_key())
            .unwrap();
        let (rx, failed_handshakes) =
            Receiver::start_tls(TlsAcceptor::from(Arc::new(config))).await;
        TlsReceiver {
            rx,
            failed_handshakes,
        }
    }

    /// `https://localhost:<port>/hook` when `localhost` resolves to
    /// 127.0.0.1 only (where the receiver listens); else the IP literal,
    /// which the certificate also names.
    async fn url(&self) -> String {
        let port = self.rx.addr.port();
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", port))
            .await
            .map(|a| a.collect())
            .unwrap_or_default();
        let loopback_v4_only = !resolved.is_empty()
            && resolved
                .iter()
                .all(|a| a.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST));
        if loopback_v4_only {
            format!("https://localhost:{port}/hook")
        } else {
            format!("https://127.0.0.1:{port}/hook")
        }
    }

    async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.rx.wait_for(n).await
    }

    fn received(&self) -> Vec<Received> {
        self.rx.received()
    }
}

fn write_ca(dir: &Path, pki: &Pki) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &pki.ca_pem).unwrap();
    path
}

fn posted_id(reply: &Reply) -> EventId {
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert_eq!(reply.json()["deliveries"], 1);
    EventId::parse(reply.json()["id"].as_str().unwrap()).expect("an event id")
}

#[tokio::test]
async fn https_receiver_trusted_through_ca_file() {
    let pki = make_pki();
    let rx = TlsReceiver::start(&pki).await;
    let url = rx.url().await;
    eprintln!("https receiver at {url}");
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = write_ca(ca_dir.path(), &pki);

    let app = spawn_app(&format!(
        "egress.ca_file = {:?}\n{}",
        ca.display().to_string(),
        one_route(&url, "")
    ))
    .await;
    let body = fixture("heights/new_order.json");
    let id = posted_id(&post_json(app.addr, "/t/new_order", body.clone()).await);

    let got = rx.wait_for(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(r.path, "/hook");
    assert_eq!(r.headers["webhook-id"], id.to_string().as_str());
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(&r.body[..], &body[..], "body changed on the way");
    assert!(
        verify_signature(SECRET, &r.headers, &r.body),
        "signature does not verify: {:?}",
        r.headers
    );
    assert_eq!(rx.failed_handshakes.load(Ordering::SeqCst), 0);

    // The store agrees: one attempt, a 200, succeeded.
    let store = app.relay.store().clone();
    let (did, d) = eventually_async("the delivery to be recorded as succeeded", async || {
        let ds = store.deliveries_of(id).await.unwrap();
        ds.into_iter().find(|(_, d)| d.state == State::Succeeded)
    })
    .await;
    assert_eq!(d.attempts, 1);
    let attempts = store.attempts(did).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, Some(200));
    assert_eq!(attempts[0].error, None);
}

#[tokio::test]
async fn https_receiver_refused_without_ca_file() {
    let pki = make_pki();
    let rx = TlsReceiver::start(&pki).await;
    let url = rx.url().await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = write_ca(ca_dir.path(), &pki);

    // A relay that trusts the CA reaches the receiver (the control)...
    let trusting = spawn_app(&format!(
        "egress.ca_file = {:?}\n{}",
        ca.display().to_string(),
        one_route(&url, "")
    ))
    .await;
    let trusted_id = posted_id(&post_json(trusting.addr, "/t/new_order", "{\"n\":1}").await);
    rx.wait_for(1).await;

    // ...and one with only the built-in roots never does.
    let app = spawn_app(&one_route(&url, "max_attempts = 2")).await;
    let id = posted_id(&post_json(app.addr, "/t/new_order", "{\"n\":2}").await);
    let store = app.relay.store().clone();
    let (did, d) = eventually_async(
        "the untrusted delivery to be dead after 2 attempts",
        async || {
            let ds = store.deliveries_of(id).await.unwrap();
            ds.into_iter().find(|(_, d)| d.state == State::Dead)
        },
    )
    .await;
    assert_eq!(d.attempts, 2);
    let attempts = store.attempts(did).await.unwrap();
    assert_eq!(attempts.len(), 2);
    eprintln!("attempt errors without ca_file: {:?}", attempts[0].error);
    for a in &attempts {
        assert_eq!(a.status, None, "{a:?}");
        let error = a.error.as_deref().unwrap_or_default();
        assert!(error.contains("TLS handshake"), "not a TLS error: {a:?}");
        assert!(
            error.contains("certificate") || error.contains("UnknownIssuer"),
            "not a certificate error: {a:?}"
        );
    }
    // The relay did reach the port: the receiver saw the handshakes fail
    // (it notices the relay's alert a moment after the relay gives up).
    eventually("the receiver to see both handshakes fail", || {
        (rx.failed_handshakes.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    // No request of the untrusting relay got through.
    let got = rx.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].headers["webhook-id"],
        trusted_id.to_string().as_str()
    );
}

fn parse_with_ca(ca_file: &Path) -> Result<Config, hookrelay::config::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config_text(
        &format!("egress.ca_file = {:?}\n", ca_file.display().to_string()),
        dir.path(),
    );
    Config::parse(&text, Path::new("test.toml"))
}

#[test]
fn ca_file_must_exist_and_hold_pem_certificates() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.pem");
    let e = parse_with_ca(&missing).unwrap_err();
    assert_eq!(e.key, "egress.ca_file", "{e}");
    assert!(e.reason.contains("missing.pem"), "{e}");

    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let e = parse_with_ca(&not_pem).unwrap_err();
    assert_eq!(e.key, "egress.ca_file", "{e}");

    // A PEM block that claims to be a certificate but is not base64.
    let bad_block = dir.path().join("bad-block.pem");
    std::fs::write(
        &bad_block,
        "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = parse_with_ca(&bad_block).unwrap_err();
    assert_eq!(e.key, "egress.ca_file", "{e}");

    // A key is PEM, but no certificate.
    let key_only = dir.path().join("key.pem");
    std::fs::write(
        &key_only,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let e = parse_with_ca(&key_only).unwrap_err();
    assert_eq!(e.key, "egress.ca_file", "{e}");

    // The control: a real CA certificate loads.
    let good = write_ca(dir.path(), &make_pki());
    let c = parse_with_ca(&good).unwrap();
    assert_eq!(c.egress.ca_file.as_deref(), Some(good.as_path()));
}

//! Shared test helpers: start the relay on port 0 with a fresh store, run
//! real loopback receivers, and send real HTTP.
#![allow(dead_code)]

pub mod binary;
pub mod browser;
pub mod postgres;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use hookrelay::config::Config;
use hookrelay::Relay;

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The admin bearer token of test relays.
pub const TOKEN: &str = "test-admin-token";

/// A secret for tests (the Standard Webhooks example key).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A fixture shipped under tests/fixtures.
pub fn fixture(path: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

// === the relay ===

/// A BrainCert-style route (`/braincert`, typed `resource.action`) with a
/// catalog of two: "New Sale" (Sales) and "New User" (Users), the shipped
/// fixtures as their examples.
pub fn braincert_catalog_route() -> String {
    let sale = String::from_utf8(fixture("braincert/new_sale.json")).unwrap();
    let user = String::from_utf8(fixture("braincert/user_created.json")).unwrap();
    format!(
        "[[routes]]\nname = \"braincert\"\npath = \"/braincert\"\n\
         event = \"{{json./resource}}.{{json./action}}\"\n\
         [[routes.event_types]]\nname = \"purchase.completed\"\ndisplay_name = \"New Sale\"\n\
         category = \"Sales\"\nexample = '''\n{sale}'''\n\
         [[routes.event_types]]\nname = \"user.signup\"\ndisplay_name = \"New User\"\n\
         category = \"Users\"\nexample = '''\n{user}'''\n"
    )
}

pub struct TestApp {
    pub relay: Relay,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// The egress allowance of the test base: receivers run on loopback, which
/// the egress guard denies by default.
pub const LOOPBACK_EGRESS: &str = "egress.allow = [\"127.0.0.0/8\", \"::1/128\"]\n";

/// Starts the relay in-process on port 0 with a fresh store. `toml` is
/// appended to a base that sets the listener and store and allows egress to
/// loopback; it may use `[delivery]`, `[ingest]` keys via dotted keys, and
/// `[[routes]]`.
pub async fn spawn_app(toml: &str) -> TestApp {
    spawn_app_with(&format!("{LOOPBACK_EGRESS}{toml}")).await
}

/// Like `spawn_app`, but the egress policy is the default one (loopback
/// denied) unless `toml` sets it.
pub async fn spawn_app_with(toml: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config_text_with(toml, dir.path());
    let config =
        Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let relay = Relay::start(config).await.expect("relay starts");
    let addr = relay.ingest_addrs()[0];
    TestApp { relay, addr, dir }
}

/// Starts the relay on `toml` (test base, loopback egress allowed) with its
/// store in `dir` (a new one, or one a stopped relay left) and `tokens` as
/// the text of its admin tokens file.
pub async fn spawn_app_in(dir: tempfile::TempDir, toml: &str, tokens: &str) -> TestApp {
    let text = test_config_text(toml, dir.path());
    // test_config_text wrote the one-token file; this relay has its own.
    std::fs::write(dir.path().join("admin.tokens"), tokens).unwrap();
    let config =
        Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let relay = Relay::start(config).await.expect("relay starts");
    TestApp {
        addr: relay.ingest_addrs()[0],
        relay,
        dir,
    }
}

/// `spawn_app_in` a fresh directory.
pub async fn spawn_app_with_tokens(toml: &str, tokens: &str) -> TestApp {
    spawn_app_in(tempfile::tempdir().unwrap(), toml, tokens).await
}

/// The test base config with `toml` added, its store under `store_dir`.
pub fn test_config(toml: &str, store_dir: &Path) -> Config {
    let text = test_config_text(toml, store_dir);
    Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The test base config text with `toml` added (egress to loopback
/// allowed); writes the admin tokens file (holding `TOKEN`) into `store_dir`.
pub fn test_config_text(toml: &str, store_dir: &Path) -> String {
    test_config_text_with(&format!("{LOOPBACK_EGRESS}{toml}"), store_dir)
}

/// The base without the loopback egress allowance.
pub fn test_config_text_with(toml: &str, store_dir: &Path) -> String {
    let tokens = store_dir.join("admin.tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    format!(
        "ingest.listen = [\"127.0.0.1:0\"]\n\
         admin.listen = [\"127.0.0.1:0\"]\n\
         admin.tokens_file = {:?}\n\
         store.path = {:?}\n\
         delivery.backoff = {{ initial = \"20ms\", max = \"200ms\", multiplier = 2.0, jitter = 0.0 }}\n\
         delivery.timeout = \"2s\"\n\
         delivery.shutdown_grace = \"2s\"\n\
         {toml}",
        tokens.display().to_string(),
        store_dir.join("store").display().to_string()
    )
}

/// A route `/t/{event}` named `t` with one target `rx` at `url`, plus `extra`
/// lines inside the target table.
pub fn one_route(url: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"t\"\npath = \"/t/{{event}}\"\n\
         [[routes.targets]]\nname = \"rx\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n"
    )
}

// === sending ===

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Sends one request over a new HTTP/1.1 connection, optionally from `source`.
pub async fn send(
    addr: SocketAddr,
    source: Option<IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let stream = socket.connect(addr).await.expect("connect to relay");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(body.into())).unwrap())
        .await
        .expect("response from relay");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// GETs `path` from `addr` with no token: the status, and the body as JSON
/// (`Null` when it is not JSON).
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let r = send(addr, None, "GET", path, &[], Vec::<u8>::new()).await;
    let body = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status.as_u16(), body)
}

/// GETs `/metrics` from the admin listener at `addr` and parses it (the
/// answer must be a 200 in Prometheus' text format).
pub async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let r = send(addr, None, "GET", "/metrics", &[], Vec::<u8>::new()).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

/// The sum of `name`'s samples in `s` (those with `label`, if given).
pub fn metric(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// POSTs a JSON body that must be accepted; returns its event id.
pub async fn post_event(
    app: &TestApp,
    path: &str,
    body: impl Into<Bytes>,
) -> hookrelay::store::EventId {
    let r = post_json(app.addr, path, body).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    hookrelay::store::EventId::parse(r.json()["id"].as_str().unwrap()).unwrap()
}

/// Waits until the event's first delivery reaches `state`; returns its attempts.
pub async fn settled(
    app: &TestApp,
    id: hookrelay::store::EventId,
    state: hookrelay::store::State,
) -> Vec<hookrelay::store::Attempt> {
    let store = app.relay.store().clone();
    eventually_async(&format!("delivery {state:?}"), async || {
        let (did, d) = store.deliveries_of(id).await.unwrap().into_iter().next()?;
        if d.state != state {
            return None;
        }
        Some(store.attempts(did).await.unwrap())
    })
    .await
}

/// POSTs a JSON body to the relay.
pub async fn post_json(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Reply {
    send(
        addr,
        None,
        "POST",
        path,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

// === receivers ===

/// A request as a receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub peer: SocketAddr,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// How a receiver answers its `n`th request (0-based): status, and a delay
/// first. A 429 or 503 comes with `Retry-After: 1`.
pub type Script = Arc<dyn Fn(usize) -> (u16, Duration) + Send + Sync>;

/// A loopback HTTP server that records what it gets.
pub struct Receiver {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
}

impl Receiver {
    /// Answers 200 to everything.
    pub async fn ok() -> Receiver {
        Receiver::start(Arc::new(|_| (200, Duration::ZERO))).await
    }

    pub async fn start(script: Script) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::serve(listener, script)
    }

    /// Answers `200` while `up` holds and `down_status` otherwise.
    pub async fn switchable(up: Arc<std::sync::atomic::AtomicBool>, down_status: u16) -> Receiver {
        Receiver::start(Arc::new(move |_| {
            let status = if up.load(Ordering::SeqCst) {
                200
            } else {
                down_status
            };
            (status, Duration::ZERO)
        }))
        .await
    }

    pub fn serve(listener: TcpListener, script: Script) -> Receiver {
        Receiver::serve_with(listener, script, None)
    }

    /// Answers 200 over TLS with `acceptor`; also returns a count of the
    /// handshakes that failed.
    pub async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> (Receiver, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let failed = Arc::new(AtomicUsize::new(0));
        let script: Script = Arc::new(|_| (200, Duration::ZERO));
        let rx = Receiver::serve_with(listener, script, Some((acceptor, failed.clone())));
        (rx, failed)
    }

    fn serve_with(
        listener: TcpListener,
        script: Script,
        tls: Option<(tokio_rustls::TlsAcceptor, Arc<AtomicUsize>)>,
    ) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let log2 = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let (log, tx, script) = (log2.clone(), tx.clone(), script.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (log, tx, script) = (log.clone(), tx.clone(), script.clone());
                    async move {
                        let at = Instant::now();
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push(Received {
                                at,
                                peer,
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body,
                            });
                            log.len()
                        };
                        let (status, delay) = script(n - 1);
                        tx.send_replace(n);
                        tokio::time::sleep(delay).await;
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        if matches!(status, 429 | 503) {
                            resp.headers_mut()
                                .insert("retry-after", "1".parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let tls = tls.clone();
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some((acceptor, failed)) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        Receiver { addr, log, count }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until at least `n` requests arrived; fails the test at the deadline.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let mut count = self.count.clone();
        tokio::time::timeout(DEADLINE, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "receiver got {} requests, expected {n}",
                    self.received().len()
                )
            })
            .unwrap();
        self.received()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        *self.count.borrow()
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }
}

/// Waits for a child process to exit and returns its exit code; kills it
/// and fails the test at the deadline.
pub async fn wait_exit(child: &mut std::process::Child) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the process did not exit");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it gives `Some`, failing the test at the deadline.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    eventually_async(what, async || check()).await
}

/// `eventually`, for checks that ask the store (its calls are async).
pub async fn eventually_async<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls an admin GET as `token` until `done` holds for its JSON (each
/// answer must be a 200), failing the test at the deadline.
pub async fn eventually_json_as(
    app: &TestApp,
    token: &str,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually_async(&format!("GET {path}"), async || {
        let r = admin_as(app, Some(token), "GET", path, None).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        let v = r.json();
        done(&v).then_some(v)
    })
    .await
}

/// `eventually_json_as` with the admin token.
pub async fn eventually_json(
    app: &TestApp,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually_json_as(app, TOKEN, path, done).await
}

/// Checks a Standard Webhooks signature the way a receiver would.
pub fn verify_signature(secret: &str, headers: &http::HeaderMap, body: &[u8]) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = headers["webhook-id"].to_str().unwrap();
    let ts = headers["webhook-timestamp"].to_str().unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .any(|s| s == expected)
}

// === admin API ===

/// Calls the admin API of `app` with the test token.
pub async fn admin(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    admin_as(app, Some(TOKEN), method, path, body).await
}

/// Creates something through `POST path` with the test token (an endpoint,
/// a hook) and returns its id; anything but 201 fails the test.
pub async fn created(app: &TestApp, path: &str, body: serde_json::Value) -> String {
    let r = admin(app, "POST", path, Some(body)).await;
    assert_eq!(r.status, 201, "POST {path}: {:?}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

/// Calls the admin API with `token` (or none).
pub async fn admin_as(
    app: &TestApp,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    send(
        app.relay.admin_addrs()[0],
        None,
        method,
        path,
        &headers,
        body,
    )
    .await
}

//! A fleet: several relays on one PostgreSQL store, as an LMS on several
//! app servers runs them. Events posted to any relay reach the receivers
//! even when one relay is killed; a hook made on one relay gets what
//! another ingests; every relay shows the same counters; a target's rate
//! holds for the fleet; and while PostgreSQL is away, ingest refuses and
//! acknowledges nothing, then carries on by itself.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use common::binary::Binary;
use common::postgres::Postgres;
use common::*;

/// How long the fleet may take to deliver what it acknowledged, a lapsed
/// lease (a killed relay's claims) included.
const SETTLE: Duration = Duration::from_secs(60);
/// The lease of the relays here: above the 2 s delivery timeout plus the
/// 5 s margin the config asks for.
const LEASE: &str = "8s";

async fn database() -> String {
    Postgres::shared()
        .await
        .expect("PostgreSQL 15 is needed for these tests: install Debian's postgresql package")
        .database()
        .await
}

/// A relay's config on the shared store at `url`, delivering to `rx`.
fn relay_config(
    dir: &std::path::Path,
    url: &str,
    ingest: u16,
    admin: u16,
    targets: &str,
) -> String {
    std::fs::write(dir.join("admin.tokens"), format!("{TOKEN}\n")).unwrap();
    format!(
        "log.level = \"info\"\n\
         ingest.listen = [\"127.0.0.1:{ingest}\"]\n\
         ingest.rate = {{ per_second = 100000, burst = 100000 }}\n\
         admin.listen = [\"127.0.0.1:{admin}\"]\n\
         admin.tokens_file = {:?}\n\
         egress.allow = [\"127.0.0.0/8\"]\n\
         store.backend = \"postgres\"\n\
         store.path = {:?}\n\
         store.postgres.url = {url:?}\n\
         store.postgres.lease = \"{LEASE}\"\n\
         store.postgres.pool_size = 4\n\
         delivery.backoff = {{ initial = \"20ms\", max = \"200ms\", multiplier = 2.0, jitter = 0.0 }}\n\
         delivery.timeout = \"2s\"\n\
         delivery.shutdown_grace = \"2s\"\n\
         delivery.max_attempts = 1000\n\
         {targets}",
        dir.join("admin.tokens").display().to_string(),
        dir.join("store").display().to_string(),
    )
}

/// The route `/t/{event}` with one target at `url`, at `rate` a second.
fn target_at(url: &str, rate: u32) -> String {
    one_route(
        url,
        &format!("rate = {{ per_second = {rate}, burst = {rate} }}"),
    )
}

/// Starts `n` relays of the binary on the store at `url`.
async fn fleet(n: usize, url: &str, targets: &str) -> Vec<Binary> {
    let mut relays = Vec::new();
    for _ in 0..n {
        let mut b = Binary::new();
        let dir = b.dir().to_path_buf();
        let targets = targets.to_string();
        let url = url.to_string();
        b.start(move |i, a| relay_config(&dir, &url, i, a, &targets))
            .await;
        b.wait_ready().await;
        relays.push(b);
    }
    relays
}

/// One POST; `None` when the relay did not answer (it was killed).
async fn try_post(addr: SocketAddr, path: &str, body: Bytes) -> Option<(u16, Value)> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = hyper::Request::post(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(body))
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .ok()?
            .to_bytes();
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .ok()
        .flatten()
}

/// The admin API of a relay process.
async fn api(relay: &Binary, method: &str, path: &str, body: Option<Value>) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    send(
        relay.admin,
        None,
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.map(|b| b.to_string()).unwrap_or_default(),
    )
    .await
}

/// The `webhook-id`s the receiver got, with how often each came.
fn delivered(rx: &Receiver) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in rx.received() {
        let id = r
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

/// Waits (up to [`SETTLE`]) until every id in `acked` was delivered.
async fn all_delivered(rx: &Receiver, acked: &HashSet<String>) -> HashMap<String, usize> {
    let started = Instant::now();
    loop {
        let seen = delivered(rx);
        let missing = acked.iter().filter(|id| !seen.contains_key(*id)).count();
        if missing == 0 {
            return seen;
        }
        assert!(
            started.elapsed() < SETTLE,
            "{missing} of {} acknowledged events never reached the receiver",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three relays, one store: events go to all three; one relay is killed
/// with SIGKILL mid-load. Every 202 reaches the receiver; a hook made on
/// one relay gets what another ingests; every relay left shows the same
/// counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_on_one_store_lose_nothing_when_one_is_killed() {
    let url = database().await;
    let rx = Receiver::ok().await;
    let mut relays = fleet(3, &url, &target_at(&rx.url("/in"), 100_000)).await;
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.ingest).collect();

    const POSTS: usize = 150;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let acks = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let unexpected = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (n, addr) in addrs.iter().copied().enumerate() {
        let (acked, acks, killed, unexpected) = (
            acked.clone(),
            acks.clone(),
            killed.clone(),
            unexpected.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for seq in 0..POSTS {
                let body = Bytes::from(format!("{{\"relay\":{n},\"seq\":{seq}}}"));
                match try_post(addr, "/t/fleet", body).await {
                    Some((202, reply)) => {
                        let id = reply["id"].as_str().unwrap_or_default().to_string();
                        acked.lock().unwrap().insert(id);
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Some((status, reply)) => unexpected
                        .lock()
                        .unwrap()
                        .push(format!("relay {n}: {status} {reply}")),
                    None if killed.load(Ordering::SeqCst) && n == 2 => return,
                    None => unexpected
                        .lock()
                        .unwrap()
                        .push(format!("relay {n}: no answer")),
                }
            }
        }));
    }
    // Mid-load: the third relay dies, with claims and commits under way.
    eventually("a third of the events acknowledged", || {
        (acks.load(Ordering::SeqCst) >= POSTS).then_some(())
    })
    .await;
    killed.store(true, Ordering::SeqCst);
    relays[2].kill();
    for t in tasks {
        t.await.unwrap();
    }
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 2 * POSTS, "{} acknowledged", acked.len());

    let seen = all_delivered(&rx, &acked).await;
    let twice = seen.values().filter(|&&n| n > 1).count();
    eprintln!(
        "{} acknowledged, {} delivered, {twice} more than once (claims of the killed relay)",
        acked.len(),
        seen.len()
    );

    // A hook made on relay A gets the events relay B ingests.
    let hook_rx = Receiver::ok().await;
    let created = api(
        &relays[0],
        "POST",
        "/api/endpoints",
        Some(json!({"name": "zap", "url": hook_rx.url("/zap"), "route": "t", "events": ["fleet_hook"]})),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_string();
    let known = Instant::now();
    while api(&relays[1], "GET", &format!("/api/endpoints/{id}"), None)
        .await
        .status
        != 200
    {
        assert!(
            known.elapsed() < DEADLINE,
            "relay B never heard of the new endpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("relay B knew of the endpoint after {:?}", known.elapsed());
    let (status, reply) = try_post(relays[1].ingest, "/t/fleet_hook", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(status, 202);
    assert_eq!(
        reply["deliveries"], 2,
        "the route's target and A's hook: {reply}"
    );
    let got = hook_rx.wait_for(1).await;
    assert_eq!(got[0].headers["webhook-id"], reply["id"].as_str().unwrap());

    // Both relays left show the fleet's counters, the same on each.
    let counters = |r: Reply| -> Value {
        let all = r.json();
        let list = all["endpoints"].as_array().cloned().unwrap_or_default();
        json!(list
            .iter()
            .map(|e| json!([e["id"], e["counters"]["succeeded"], e["counters"]["calls"]]))
            .collect::<Vec<_>>())
    };
    // A killed relay loses what it counted since its last save (at most a
    // second's worth), so the fleet's counters may lag the receiver a bit;
    // what matters is that every relay shows the same ones.
    let started = Instant::now();
    let mut last = None;
    loop {
        let a = counters(api(&relays[0], "GET", "/api/endpoints", None).await);
        let b = counters(api(&relays[1], "GET", "/api/endpoints", None).await);
        let rx_total = seen.values().sum::<usize>() as u64;
        let counted = a
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e[1].as_u64().is_some_and(|n| n > 0));
        if a == b && counted {
            // The same again after every relay read the fleet's again.
            if last.as_ref() == Some(&a) {
                eprintln!(
                    "the same counters on both after {:?}: {a}",
                    started.elapsed()
                );
                let succeeded = a[0][1].as_u64().unwrap();
                assert!(
                    succeeded <= rx_total && succeeded >= rx_total / 2,
                    "{succeeded} counted, the receiver got {rx_total}"
                );
                break;
            }
            last = Some(a);
            tokio::time::sleep(Duration::from_millis(2500)).await;
            continue;
        }
        last = None;
        assert!(
            started.elapsed() < DEADLINE,
            "relays disagree on counters: A {a}, B {b} (receiver got {rx_total})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two relays claiming the same due work, both alive: each delivery goes
/// out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_relays_never_deliver_one_event_twice() {
    let url = database().await;
    let rx = Receiver::ok().await;
    let relays = fleet(2, &url, &target_at(&rx.url("/in"), 100_000)).await;
    let mut acked = HashSet::new();
    for seq in 0..200 {
        let addr = relays[seq % 2].ingest;
        let (status, reply) = try_post(addr, "/t/once", Bytes::from(format!("{{\"seq\":{seq}}}")))
            .await
            .expect("answered");
        assert_eq!(status, 202, "{reply}");
        acked.insert(reply["id"].as_str().unwrap().to_string());
    }
    let seen = all_delivered(&rx, &acked).await;
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(seen.len(), acked.len());
}

/// A target's rate of 20/s holds for two relays together, measured at the
/// receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_of_20_a_second_holds_for_the_fleet() {
    let url = database().await;
    let rx = Receiver::ok().await;
    let relays = fleet(2, &url, &target_at(&rx.url("/in"), 20)).await;
    const EVENTS: usize = 100;
    for seq in 0..EVENTS {
        let addr = relays[seq % 2].ingest;
        let (status, _) = try_post(addr, "/t/paced", Bytes::from(format!("{{\"seq\":{seq}}}")))
            .await
            .expect("answered");
        assert_eq!(status, 202);
    }
    let started = Instant::now();
    let got = loop {
        let got = rx.received();
        if got.len() >= EVENTS {
            break got;
        }
        assert!(
            started.elapsed() < SETTLE,
            "{} of {EVENTS} delivered",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The burst (20) goes at once; the other 80 at 20/s take 4 s. Two
    // relays each at 20/s would take 2 s. Generously: at least 3 s.
    let first = got.iter().map(|r| r.at).min().unwrap();
    let last = got.iter().map(|r| r.at).max().unwrap();
    let span = last - first;
    let rate = (EVENTS - 20) as f64 / span.as_secs_f64();
    eprintln!("{EVENTS} deliveries over {span:?}: {rate:.1}/s after the burst");
    assert!(
        span >= Duration::from_secs(3),
        "{EVENTS} deliveries in {span:?}: faster than 20/s for the fleet"
    );
    // And both relays delivered (the bucket is shared, not one relay's).
    let peers: HashSet<_> = got.iter().map(|r| r.peer.port()).collect();
    assert!(peers.len() >= 2, "deliveries from one connection only");
}

/// PostgreSQL stops mid-load: ingest answers 503 and acknowledges nothing
/// that is not committed; when it is back, ingest resumes by itself and
/// every acknowledged event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_stopped_nothing_is_acknowledged_and_all_resumes_after() {
    let pg = Postgres::start().await.expect("PostgreSQL 15 is needed");
    let url = pg.database().await;
    let rx = Receiver::ok().await;
    let mut relays = fleet(1, &url, &target_at(&rx.url("/in"), 100_000)).await;
    let relay = relays.remove(0);

    let mut acked = HashSet::new();
    let mut refused = 0;
    let post = |seq: usize| {
        try_post(
            relay.ingest,
            "/t/outage",
            Bytes::from(format!("{{\"seq\":{seq}}}")),
        )
    };
    let mut seq = 0;
    for _ in 0..50 {
        let (status, reply) = post(seq).await.expect("answered");
        assert_eq!(status, 202, "{reply}");
        acked.insert(reply["id"].as_str().unwrap().to_string());
        seq += 1;
    }
    pg.stop().await;
    // Every answer while it is away is a 503 with a JSON error, none a 202.
    for _ in 0..20 {
        let (status, reply) = post(seq)
            .await
            .expect("answered while the database is away");
        seq += 1;
        assert_eq!(status, 503, "{reply}");
        assert_eq!(
            reply["error"]["code"].as_str().or(reply["code"].as_str()),
            Some("store_unavailable"),
            "{reply}"
        );
        refused += 1;
    }
    let (status, ready) = get_json(relay.admin, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.to_string().contains("store_unavailable"), "{ready}");

    pg.restart().await;
    let back = Instant::now();
    loop {
        let (status, reply) = post(seq).await.expect("answered");
        seq += 1;
        if status == 202 {
            acked.insert(reply["id"].as_str().unwrap().to_string());
            break;
        }
        assert_eq!(status, 503, "{reply}");
        assert!(back.elapsed() < DEADLINE, "ingest never resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "ingest resumed {:?} after PostgreSQL did; {refused} refused",
        back.elapsed()
    );
    for _ in 0..20 {
        let (status, reply) = post(seq).await.expect("answered");
        seq += 1;
        assert_eq!(status, 202, "{reply}");
        acked.insert(reply["id"].as_str().unwrap().to_string());
    }
    let (status, _) = get_json(relay.admin, "/readyz").await;
    assert_eq!(status, 200);
    let seen = all_delivered(&rx, &acked).await;
    assert!(seen.len() >= acked.len());
}

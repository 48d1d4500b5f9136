//! The store contract (tests/contract/) against the PostgreSQL backend, on
//! a real PostgreSQL server the harness starts; then what only a shared
//! store does: several relays on one database, claims and their leases,
//! notifications, schema versions, and a database that goes away.

mod common;
mod contract;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hookrelay::store::{
    now_ms, Attempt, Backend, DeliveryId, EventMeta, NewEvent, Next, PostgresConfig, PostgresStore,
    State, Store, StoreConfig, StoreError, PREFETCH_BODY_BYTES,
};
use tokio::sync::OnceCell;

use common::postgres::Postgres;
use common::DEADLINE;

/// The shared test server, which every test of this file needs: when the
/// binaries are missing (outside CI), the harness said why and this fails.
async fn server() -> &'static Postgres {
    Postgres::shared()
        .await
        .expect("PostgreSQL 15 is needed for these tests: install Debian's postgresql package")
}

/// Settings for a test relay on `url`: a short lease, so lapsed claims
/// come back within a test, and no polling unless a test asks for it.
fn config(url: &str, retention: Duration) -> StoreConfig {
    StoreConfig {
        backend: Backend::Postgres,
        retention,
        postgres: PostgresConfig {
            url: url.to_string(),
            pool_size: 4,
            lease: Duration::from_secs(1),
            poll_interval: Duration::from_secs(3600),
            ..PostgresConfig::default()
        },
        ..StoreConfig::default()
    }
}

async fn open(config: &StoreConfig) -> Arc<dyn Store> {
    Arc::new(PostgresStore::open(config).await.expect("opens"))
}

/// A database of its own per contract case, made when it is first opened.
struct Pg {
    retention: Duration,
    url: OnceCell<String>,
}

impl contract::Backend for Pg {
    fn new(retention: Duration) -> Pg {
        Pg {
            retention,
            url: OnceCell::new(),
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        let url = self
            .url
            .get_or_init(|| async { server().await.database().await })
            .await;
        open(&config(url, self.retention)).await
    }
}

contract::store_contract!(Pg);

// === a fleet on one database ===

const DAY: Duration = Duration::from_secs(24 * 3600);

fn new_event(targets: &[&str]) -> NewEvent {
    NewEvent {
        meta: EventMeta {
            received_at_ms: now_ms(),
            source: "127.0.0.1".into(),
            route: "r".into(),
            event_type: "course.created".into(),
            headers: Vec::new(),
            request_headers: Vec::new(),
            url: None,
        },
        body: Bytes::from_static(b"{}"),
        targets: targets.iter().map(|s| s.to_string()).collect(),
        dedup: None,
        path: "/r".into(),
    }
}

fn attempt(status: u16) -> Attempt {
    Attempt {
        at_ms: now_ms(),
        duration_ms: 1,
        status: Some(status),
        error: None,
        excerpt: String::new(),
        request_headers: Vec::new(),
    }
}

/// Calls `maintain` until `check` holds, within the deadline.
async fn maintained_until(store: &dyn Store, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        store.maintain().await;
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ends the lease of `id`'s claim in the database (its owner has lost
/// touch), and lets `relay`'s maintenance put it back to pending.
async fn lapse(url: &str, id: DeliveryId, relay: &dyn Store) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "UPDATE hookrelay.deliveries SET lease_until_ms = 0 WHERE id = $1",
            &[&id.to_key().as_slice()],
        )
        .await
        .unwrap();
    maintained_until(relay, "the lapsed claim is pending again", async || {
        relay.delivery(id).await.unwrap().unwrap().state == State::Pending
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_claiming_the_same_work_never_take_one_delivery_twice() {
    let url = server().await.database().await;
    let (a, b) = (
        open(&config(&url, DAY)).await,
        open(&config(&url, DAY)).await,
    );
    const N: usize = 300;
    for _ in 0..N / 3 {
        a.accept(new_event(&["r/x", "r/y", "r/z"])).await.unwrap();
    }
    // Both claim every target's due work in small batches, at once, until
    // nothing is left.
    let drain = |store: Arc<dyn Store>| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut idle = 0;
            while idle < 3 {
                let mut got = 0;
                for t in ["r/x", "r/y", "r/z"] {
                    let c = store.claim_due(t, now_ms(), 7, 1000).await.unwrap();
                    got += c.deliveries.len();
                    for (_, id, d) in c.deliveries {
                        assert_eq!(d.state, State::InFlight);
                        store
                            .finish(id, &attempt(200), Next::Succeeded)
                            .await
                            .unwrap();
                        mine.push(id);
                    }
                }
                idle = if got == 0 { idle + 1 } else { 0 };
            }
            mine
        })
    };
    let (from_a, from_b) = (drain(a.clone()), drain(b.clone()));
    let (from_a, from_b) = (from_a.await.unwrap(), from_b.await.unwrap());
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both took a share: {} and {}",
        from_a.len(),
        from_b.len()
    );
    let all: HashSet<DeliveryId> = from_a.iter().chain(&from_b).copied().collect();
    assert_eq!(all.len(), from_a.len() + from_b.len(), "none taken twice");
    assert_eq!(all.len(), N, "every delivery taken");
    for id in all.iter().take(20) {
        let d = a.delivery(*id).await.unwrap().unwrap();
        assert_eq!(
            (d.state, d.attempts),
            (State::Succeeded, 1),
            "one attempt each"
        );
    }
}

#[tokio::test]
async fn a_lapsed_claim_goes_to_another_relay_and_the_old_owner_cannot_overwrite_it() {
    let server = server().await;
    let url = server.database().await;
    let (a, b) = (
        open(&config(&url, DAY)).await,
        open(&config(&url, DAY)).await,
    );
    a.accept(new_event(&["r/x"])).await.unwrap();
    let claimed = a.claim_due("r/x", now_ms(), 10, 1000).await.unwrap();
    let (_, id, _) = claimed.deliveries[0];
    assert!(b
        .claim_due("r/x", now_ms(), 10, 1000)
        .await
        .unwrap()
        .deliveries
        .is_empty());

    // Relay A loses touch: its lease runs out without a renewal.
    lapse(&url, id, &*b).await;
    let again = b.claim_due("r/x", now_ms(), 10, 1000).await.unwrap();
    assert_eq!(again.deliveries.len(), 1);
    assert_eq!(
        again.deliveries[0].1, id,
        "the same delivery, so the same webhook-id"
    );

    // A's late outcome is refused; B's is the one recorded.
    let late = a.finish(id, &attempt(500), Next::Dead).await.unwrap_err();
    assert!(matches!(late, StoreError::ClaimLost(_)), "{late}");
    let d = b.finish(id, &attempt(200), Next::Succeeded).await.unwrap();
    assert_eq!((d.state, d.attempts), (State::Succeeded, 1));
    let statuses: Vec<_> = b
        .attempts(id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(statuses, [Some(200)]);
}

#[tokio::test]
async fn the_claims_of_a_relay_that_died_are_taken_by_another_once_their_lease_runs_out() {
    let url = server().await.database().await;
    let survivor = open(&config(&url, DAY)).await;
    let id = {
        let dying = open(&config(&url, DAY)).await;
        dying.accept(new_event(&["r/x"])).await.unwrap();
        let (_, id, _) = dying
            .claim_due("r/x", now_ms(), 1, 1000)
            .await
            .unwrap()
            .deliveries[0];
        // Dropped without closing: its tasks stop, nothing is given back
        // and its lease is no longer renewed, as when the process is killed.
        drop(dying);
        id
    };
    assert_eq!(
        survivor.delivery(id).await.unwrap().unwrap().state,
        State::InFlight
    );
    maintained_until(&*survivor, "the dead relay's claim came back", async || {
        !survivor
            .claim_due("r/x", now_ms(), 1, 1000)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_relay_hears_of_work_another_relay_committed() {
    let url = server().await.database().await;
    let (a, b) = (
        open(&config(&url, DAY)).await,
        open(&config(&url, DAY)).await,
    );
    // The listener connects in the background: wait until b hears a's
    // events, then check a second one wakes it too.
    let wake = b.new_work();
    let heard = tokio::time::timeout(DEADLINE, async {
        loop {
            a.accept(new_event(&["r/notified"])).await.unwrap();
            if tokio::time::timeout(Duration::from_millis(200), wake.notified())
                .await
                .is_ok()
                && b.woken().contains(&"r/notified".to_string())
            {
                break;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "relay b was never told of relay a's work");
    assert!(
        a.woken().contains(&"r/notified".to_string()),
        "a woke itself"
    );
}

#[tokio::test]
async fn without_listen_a_relay_finds_new_work_by_polling() {
    let url = server().await.database().await;
    let a = open(&config(&url, DAY)).await;
    let mut polling = config(&url, DAY);
    polling.postgres.listen = false;
    polling.postgres.poll_interval = Duration::from_millis(100);
    let b = open(&polling).await;
    b.woken();
    a.accept(new_event(&["r/polled"])).await.unwrap();
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            if b.woken().contains(&"r/polled".to_string()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "the poller never found the work");
}

// === the schema ===

#[tokio::test]
async fn a_schema_newer_than_this_hookrelay_is_refused() {
    let url = server().await.database().await;
    let store = open(&config(&url, DAY)).await;
    store.close().await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "INSERT INTO hookrelay.schema_migrations (version, name) VALUES (99, 'from the future')",
            &[],
        )
        .await
        .unwrap();
    let e = PostgresStore::open(&config(&url, DAY))
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, StoreError::Schema { found: 99, .. }), "{e}");
    assert!(!e.to_string().contains("password"), "{e}");
}

#[tokio::test]
async fn with_migrate_off_a_relay_waits_for_hookrelay_migrate() {
    let url = server().await.database().await;
    let mut manual = config(&url, DAY);
    manual.postgres.migrate = false;
    let e = PostgresStore::open(&manual).await.err().expect("refused");
    assert!(matches!(e, StoreError::Migrate { found: 0, .. }), "{e}");
    assert!(e.to_string().contains("hookrelay migrate"), "{e}");
    let applied = hookrelay::store::postgres::schema::migrate(&manual.postgres)
        .await
        .unwrap();
    assert_eq!(applied, [(1, "initial")]);
    assert!(
        hookrelay::store::postgres::schema::migrate(&manual.postgres)
            .await
            .unwrap()
            .is_empty(),
        "applied once"
    );
    let store = open(&manual).await;
    store.accept(new_event(&["r/x"])).await.unwrap();
}

// === a database that goes away ===

#[tokio::test]
async fn while_the_database_is_away_accepts_are_refused_and_they_resume_when_it_returns() {
    let own = Postgres::start().await.expect("PostgreSQL 15 is needed");
    let url = own.database().await;
    let mut c = config(&url, DAY);
    c.postgres.connect_timeout = Duration::from_secs(1);
    c.postgres.statement_timeout = Duration::from_secs(2);
    let store = open(&c).await;
    let kept = store.accept(new_event(&["r/x"])).await.unwrap();

    own.stop().await;
    let e = store.accept(new_event(&["r/x"])).await.unwrap_err();
    assert_eq!(e.code(), "store_unavailable", "{e}");
    let health = store.maintain().await;
    let (code, reason) = health.refusing.expect("refusing while away");
    assert_eq!(code, "store_unavailable");
    assert!(!reason.is_empty());
    let e = store.accept(new_event(&["r/x"])).await.unwrap_err();
    assert_eq!(e.code(), "store_unavailable", "refused at once: {e}");

    own.restart().await;
    maintained_until(&*store, "the store takes events again", async || {
        store.health().accepting()
    })
    .await;
    let after = store.accept(new_event(&["r/x"])).await.unwrap();
    assert!(store.event(kept.id).await.unwrap().is_some());
    assert!(store.event(after.id).await.unwrap().is_some());
    assert_eq!(store.due_for("r/x", now_ms(), 10).await.unwrap().len(), 2);
}

// === fleet-wide limits ===

#[tokio::test]
async fn a_targets_concurrency_holds_across_relays() {
    let url = server().await.database().await;
    let (a, b) = (
        open(&config(&url, DAY)).await,
        open(&config(&url, DAY)).await,
    );
    for _ in 0..10 {
        a.accept(new_event(&["r/x"])).await.unwrap();
    }
    let first = a.claim_due("r/x", now_ms(), 10, 3).await.unwrap();
    assert_eq!(first.deliveries.len(), 3, "up to the concurrency");
    let second = b.claim_due("r/x", now_ms(), 10, 3).await.unwrap();
    assert!(
        second.deliveries.is_empty(),
        "the fleet has 3 in flight already"
    );
    let (_, id, _) = first.deliveries[0];
    a.finish(id, &attempt(200), Next::Succeeded).await.unwrap();
    let third = b.claim_due("r/x", now_ms(), 10, 3).await.unwrap();
    assert_eq!(third.deliveries.len(), 1, "one slot came free");
}

#[tokio::test]
async fn a_targets_rate_is_one_bucket_for_the_fleet() {
    let url = server().await.database().await;
    let (a, b) = (
        open(&config(&url, DAY)).await,
        open(&config(&url, DAY)).await,
    );
    // 10/s, burst 5: both relays together get the burst, then about ten a
    // second, however they ask.
    let started = std::time::Instant::now();
    let mut granted = 0u32;
    while started.elapsed() < Duration::from_millis(1000) {
        for store in [&a, &b] {
            let t = store.take_tokens("r/x", 10, 5, 3).await.unwrap();
            granted += t.granted;
            if t.granted == 0 {
                assert!(t.next_in_ms > 0 && t.next_in_ms <= 100, "{t:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let most = 5.0 + 10.0 * elapsed + 1.0;
    assert!(
        (granted as f64) <= most && granted >= 10,
        "{granted} tokens in {elapsed:.2}s (at most {most:.1})"
    );
    // Another target has its own bucket.
    assert_eq!(a.take_tokens("r/y", 10, 5, 5).await.unwrap().granted, 5);
}

#[tokio::test]
async fn a_circuit_one_relay_opens_is_open_for_the_fleet() {
    let url = server().await.database().await;
    let (a, b) = (
        open(&config(&url, DAY)).await,
        open(&config(&url, DAY)).await,
    );
    assert!(b.circuits().await.unwrap().is_empty());
    let until = now_ms() + 30_000;
    a.set_circuit("r/x", until).await.unwrap();
    assert_eq!(b.circuits().await.unwrap(), [("r/x".to_string(), until)]);
    b.set_circuit("r/x", 0).await.unwrap();
    assert!(a.circuits().await.unwrap().is_empty(), "closed for all");
}

#[tokio::test]
async fn past_max_disk_bytes_new_events_are_refused_as_store_full() {
    let url = server().await.database().await;
    let mut small = config(&url, DAY);
    small.max_disk_bytes = 64 * 1024;
    let store = open(&small).await;
    let health = store.maintain().await;
    assert!(health.disk_bytes > 0, "{health:?}");
    // The schema's tables and indexes alone take more than 64 KiB.
    let (code, reason) = health.refusing.expect("refusing");
    assert_eq!(code, "store_full", "{reason}");
    assert!(reason.contains("max_disk_bytes"), "{reason}");
    let e = store.accept(new_event(&["r/x"])).await.unwrap_err();
    assert_eq!(e.code(), "store_full", "{e}");

    // With room, the same store takes events again without a restart.
    let roomy = open(&config(&url, DAY)).await;
    assert!(roomy.maintain().await.accepting());
    roomy.accept(new_event(&["r/x"])).await.unwrap();
}

// === `hookrelay migrate` ===

#[tokio::test]
async fn hookrelay_migrate_applies_the_schema_once_and_says_so() {
    let url = server().await.database().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookrelay.toml");
    std::fs::write(
        &config,
        "store.backend = \"postgres\"\nstore.postgres.url = \"env:HOOKRELAY_PG_URL\"\n",
    )
    .unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .args(["migrate", "--config"])
            .arg(&config)
            .env("HOOKRELAY_PG_URL", &url)
            .output()
            .unwrap()
    };
    let first = run();
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(out.contains("applied migration 1 (initial)"), "{out}");
    assert!(
        out.contains("(schema hookrelay) is at schema version 1"),
        "{out}"
    );
    let again = run();
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(!out.contains("applied"), "nothing left to apply: {out}");

    // On the embedded store there is nothing to migrate by hand.
    std::fs::write(&config, "store.path = \"data\"\n").unwrap();
    let sled = run();
    assert!(!sled.status.success());
    let err = String::from_utf8_lossy(&sled.stderr);
    assert!(err.contains("store.backend is \"sled\""), "{err}");
}

#[tokio::test]
async fn a_claim_brings_its_events_with_bodies_up_to_the_prefetch_size() {
    let url = server().await.database().await;
    let store = open(&config(&url, DAY)).await;
    let small = Bytes::from(vec![b'a'; 100]);
    let large = Bytes::from(vec![b'b'; PREFETCH_BODY_BYTES + 1]);
    let mut ids = Vec::new();
    for body in [&small, &large] {
        let mut new = new_event(&["r/x"]);
        new.body = body.clone();
        ids.push(store.accept(new).await.unwrap().id);
    }
    let claimed = store.claim_due("r/x", now_ms(), 10, 1000).await.unwrap();
    assert_eq!(claimed.deliveries.len(), 2);
    assert_eq!(
        claimed.events.len(),
        1,
        "the large body is read by its attempt"
    );
    let event = &claimed.events[0];
    assert_eq!((event.id, &event.body), (ids[0], &small));
    assert_eq!(event.meta.event_type, "course.created");
    // The other one is read as it always was.
    let read = store.event(ids[1]).await.unwrap().unwrap();
    assert_eq!(read.body, large);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_finished_together_are_each_recorded_or_refused() {
    let url = server().await.database().await;
    let (a, b) = (
        open(&config(&url, DAY)).await,
        open(&config(&url, DAY)).await,
    );
    const N: usize = 50;
    for _ in 0..N {
        a.accept(new_event(&["r/x"])).await.unwrap();
    }
    let claimed = a.claim_due("r/x", now_ms(), N, 1000).await.unwrap();
    assert_eq!(claimed.deliveries.len(), N);
    // One claim lapses and relay B takes it: A's outcome for it is refused,
    // whichever batch it is written in.
    let (_, lost, _) = claimed.deliveries[7];
    lapse(&url, lost, &*b).await;
    assert_eq!(
        b.claim_due("r/x", now_ms(), N, 1000)
            .await
            .unwrap()
            .deliveries
            .len(),
        1
    );

    // Every outcome at once, so the writers take them in batches.
    let mut finishes = tokio::task::JoinSet::new();
    for (i, (_, id, _)) in claimed.deliveries.iter().enumerate() {
        let a = a.clone();
        let id = *id;
        finishes.spawn(async move {
            let (status, next) = if i % 2 == 0 {
                (200, Next::Succeeded)
            } else {
                (503, Next::RetryAt(now_ms() + 60_000))
            };
            (id, i, a.finish(id, &attempt(status), next).await)
        });
    }
    let results = finishes.join_all().await;
    assert_eq!(results.len(), N);
    for (id, i, result) in results {
        if id == lost {
            assert!(
                matches!(result, Err(StoreError::ClaimLost(_))),
                "{result:?}"
            );
            continue;
        }
        let d = result.unwrap();
        let want = if i % 2 == 0 {
            State::Succeeded
        } else {
            State::Pending
        };
        assert_eq!((d.state, d.attempts), (want, 1), "delivery {i}");
        let stored = a.delivery(id).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.attempts), (want, 1));
        let attempts = a.attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1, "one attempt record for delivery {i}");
        assert_eq!(attempts[0].status, Some(if i % 2 == 0 { 200 } else { 503 }));
    }
    // The lost one is still B's, untouched by A.
    let d = b.delivery(lost).await.unwrap().unwrap();
    assert_eq!((d.state, d.attempts), (State::InFlight, 0));
    assert!(a.attempts(lost).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_claim_says_when_the_target_next_has_work_due() {
    let url = server().await.database().await;
    let store = open(&config(&url, DAY)).await;
    for _ in 0..2 {
        store.accept(new_event(&["r/x"])).await.unwrap();
    }
    let first = store.claim_due("r/x", now_ms(), 1, 1000).await.unwrap();
    assert_eq!(first.deliveries.len(), 1);
    let left = first.next_due.expect("the claim looked").expect("one left");
    assert!(left <= now_ms(), "the other is due now");
    let second = store.claim_due("r/x", now_ms(), 10, 1000).await.unwrap();
    assert_eq!(second.deliveries.len(), 1);
    assert_eq!(second.next_due, Some(None), "nothing left pending");

    // A retry later on: the next claim takes nothing and names its time.
    let (_, id, _) = second.deliveries[0];
    let retry_at = now_ms() + 60_000;
    store
        .finish(id, &attempt(503), Next::RetryAt(retry_at))
        .await
        .unwrap();
    let third = store.claim_due("r/x", now_ms(), 10, 1000).await.unwrap();
    assert!(third.deliveries.is_empty());
    assert_eq!(third.next_due, Some(Some(retry_at)));
    assert_eq!(store.next_due("r/x").await.unwrap(), Some(retry_at));
}

#[tokio::test]
async fn work_committed_right_after_a_notice_is_told_when_its_time_is_up() {
    let url = server().await.database().await;
    let (a, b) = (
        open(&config(&url, DAY)).await,
        open(&config(&url, DAY)).await,
    );
    // Once b's listener is connected (it connects in the background)...
    let ready = tokio::time::timeout(DEADLINE, async {
        loop {
            a.accept(new_event(&["r/ready"])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            if b.woken().contains(&"r/ready".to_string()) {
                break;
            }
        }
    })
    .await;
    assert!(ready.is_ok(), "relay b never heard relay a");
    let heard = async |what: &str| {
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                if b.woken().contains(&"r/x".to_string()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(found.is_ok(), "relay b was never told of {what}");
    };
    // ... the first event's notice goes out at once, and the second one,
    // committed while the first notice is fresh, is told a little later
    // instead of never (the poller is an hour away here).
    a.accept(new_event(&["r/x"])).await.unwrap();
    heard("the first event").await;
    a.accept(new_event(&["r/x"])).await.unwrap();
    heard("the second event").await;
}

#[tokio::test]
async fn a_nul_in_an_answer_or_an_event_type_is_stored_as_a_replacement_character() {
    let url = server().await.database().await;
    let store = open(&config(&url, DAY)).await;
    // jsonb cannot hold U+0000: the write would fail, and with it the
    // whole batch the value is in.
    let mut new = new_event(&["r/x"]);
    new.meta.event_type = "course\0created".into();
    let id = store.accept(new).await.unwrap().id;
    let event = store.event(id).await.unwrap().unwrap();
    assert_eq!(event.meta.event_type, "course\u{FFFD}created");

    let claimed = store.claim_due("r/x", now_ms(), 10, 1000).await.unwrap();
    let (_, delivery, _) = claimed.deliveries[0];
    let mut answer = attempt(200);
    answer.excerpt = "binary\0body".into();
    let d = store
        .finish(delivery, &answer, Next::Succeeded)
        .await
        .unwrap();
    assert_eq!(d.state, State::Succeeded);
    let attempts = store.attempts(delivery).await.unwrap();
    assert_eq!(attempts[0].excerpt, "binary\u{FFFD}body");
}

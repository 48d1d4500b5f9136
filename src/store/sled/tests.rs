//! Unit tests of what only the sled backend does (the shared behaviour is
//! in the contract suite, tests/contract/).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::counts::{Scan, COUNT_STEP};
use super::keys::{attempt_key, due_key, encode, BODY_CHUNK};
use super::{check_schema, Shared, Sled};
use crate::store::*;

fn open(dir: &Path) -> Arc<Sled> {
    open_with(StoreConfig {
        path: dir.to_path_buf(),
        ..StoreConfig::default()
    })
}

fn open_with(config: StoreConfig) -> Arc<Sled> {
    Sled::open(&config, Shared::new(&config)).unwrap()
}

/// Runs `purge` and checks that what it removed counts as room sled can
/// reuse (`what` names it); returns what `purge` returned.
fn counted_as_room<T>(store: &Sled, what: &str, purge: impl FnOnce() -> T) -> T {
    let before = store.shared.space.credit();
    let out = purge();
    assert!(
        store.shared.space.credit() > before,
        "the room of {what} was not counted"
    );
    out
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

/// Claims the first due delivery and records one attempt with `next`.
fn attempt_first(store: &Sled, status: u16, next: Next) -> DeliveryId {
    let (target, at, id) = store.due_entries(1).unwrap().remove(0);
    store.claim(&target, at, id).unwrap().unwrap();
    store.finish(id, &attempt(status), next).unwrap();
    id
}

fn new_event(targets: &[&str], dedup: Option<&str>) -> NewEvent {
    NewEvent {
        meta: EventMeta {
            received_at_ms: now_ms(),
            source: "127.0.0.1".into(),
            route: "r".into(),
            event_type: "e".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            request_headers: Vec::new(),
            url: None,
        },
        body: Bytes::from_static(b"{\"a\":1}"),
        targets: targets.iter().map(|s| s.to_string()).collect(),
        dedup: dedup.map(|k| ("r".to_string(), k.to_string())),
        path: "/r".into(),
    }
}

/// Accepts `n` events for `r/a`, all sent to the committer at once.
async fn accept_at_once(store: &Arc<Sled>, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.accept(new_event(&["r/a"], None)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn concurrent_accepts_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    accept_at_once(&store, 64).await;
    assert_eq!(store.flushed_events.load(Ordering::Relaxed), 64);
    assert!(
        store.flushes.load(Ordering::Relaxed) < 64,
        "concurrent accepts shared no flush"
    );
}

#[test]
fn another_schema_version_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = ::sled::open(dir.path()).unwrap();
    check_schema(&db, dir.path()).expect("a new store takes this version");
    check_schema(&db, dir.path()).expect("and keeps it");
    db.open_tree("meta")
        .unwrap()
        .insert("schema_version", &[9u8])
        .unwrap();
    let msg = check_schema(&db, dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("schema version 9") && msg.contains("reads version 1"),
        "{msg}"
    );
}

#[tokio::test]
async fn large_bodies_are_kept_in_chunks_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let body: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    let mut new = new_event(&["r/a"], None);
    new.body = Bytes::from(body.clone());
    let a = store.accept(new).await.unwrap();
    let ev = store.event(a.id).unwrap().unwrap();
    assert_eq!(&ev.body[..], &body[..]);
    assert_eq!(store.bodies.scan_prefix(a.id.to_key()).count(), 5);
    // No value in the store is over one chunk (plus its header).
    for tree in [&store.events, &store.bodies] {
        assert!(tree
            .iter()
            .values()
            .all(|v| v.unwrap().len() <= BODY_CHUNK + 1024));
    }
    // Purged with its event once finished.
    attempt_first(&store, 200, Next::Succeeded);
    assert_eq!(store.purge(now_ms() + 1, 10).unwrap().removed, 1);
    assert_eq!(store.bodies.iter().count(), 0);
}

#[tokio::test]
async fn cancel_all_takes_pending_and_stale_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for _ in 0..3 {
        store.accept(new_event(&["r/a"], None)).await.unwrap();
    }
    store.accept(new_event(&["r/b"], None)).await.unwrap();
    // A stale index entry, as a crash between claim's two writes leaves.
    let (_, at, id) = store.due_entries(1).unwrap().remove(0);
    store.due.insert(due_key("r/a", at + 5, id), &[]).unwrap();
    assert_eq!(store.cancel_all("r/a", "gone").unwrap(), 3);
    assert_eq!(store.count(State::Cancelled), Some(3));
    assert_eq!(store.count(State::Pending), Some(1));
    let left = store.due_entries(10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, "r/b");
    assert_eq!(
        store.delivery(id).unwrap().unwrap().note.as_deref(),
        Some("gone")
    );
}

#[test]
fn ids_round_trip() {
    let id = EventId(ulid::Ulid::new());
    assert_eq!(EventId::parse(&id.to_string()), Some(id));
    assert_eq!(EventId::from_key(&id.to_key()), Some(id));
    assert_eq!(DeliveryId::parse(&id.to_string()), None);
}

#[test]
fn an_older_stores_subscriptions_become_endpoints_with_names_an_endpoint_may_have() {
    let dir = tempfile::tempdir().unwrap();
    let long_event = "course.".to_string() + &"x".repeat(120);
    {
        let store = open(dir.path());
        let old = serde_json::json!({
            "id": "hook_01",
            "target_url": "https://hooks.example.com/catch/1",
            "event": long_event,
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "route": null,
            "created_at_ms": 1_700_000_000_000u64,
        });
        store
            .subscriptions
            .insert(b"hook_01", super::keys::encode(&old))
            .unwrap();
        store.sync().unwrap();
    }
    let store = open(dir.path());
    let endpoints = store.endpoints().unwrap();
    assert_eq!(endpoints.len(), 1);
    let e = &endpoints[0];
    assert_eq!(e.id, "hook_01");
    assert_eq!(
        e.secrets[0].secret,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    );
    let name = e.spec["name"].as_str().unwrap();
    assert_eq!(name.chars().count(), 100, "{name}");
    assert!(name.starts_with("course.x"));
    assert_eq!(e.spec["events"], serde_json::json!([long_event]));
    assert!(store.subscriptions.is_empty(), "moved once");
}

#[tokio::test]
async fn after_an_unclean_stop_the_counts_are_read_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for _ in 0..20 {
            store
                .accept(new_event(&["r/a", "r/b"], None))
                .await
                .unwrap();
        }
        attempt_first(&store, 200, Next::Succeeded);
        // Dropped without `close`, as after kill -9.
        store.sync().unwrap();
    }
    let store = open(dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.count(State::Pending).is_none() {
        assert!(std::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        State::ALL.map(|s| store.count(s).unwrap()),
        [39, 0, 1, 0, 0]
    );
}

/// Runs steps of the count until it has read past `id` (or is done).
fn count_past(store: &Sled, id: DeliveryId) {
    let mut requeued = 0;
    while !store.count_step(&mut requeued).unwrap() {
        if let Scan::Reading { upto: Some(u), .. } = store.counts.scan() {
            if u >= id.0 .0 {
                return;
            }
        }
    }
}

#[tokio::test]
async fn the_count_after_an_unclean_stop_leaves_what_changes_meanwhile_to_the_step_that_reads_it() {
    const N: usize = 10 * COUNT_STEP;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for _ in 0..N / 500 {
        accept_at_once(&store, 500).await;
    }
    for _ in 0..10 {
        attempt_first(&store, 200, Next::Succeeded);
    }
    let ids: Vec<DeliveryId> = store
        .deliveries
        .iter()
        .keys()
        .map(|k| DeliveryId::from_key(&k.unwrap()).unwrap())
        .collect();
    assert_eq!(ids.len(), N);
    // As an open after an unclean stop does, with the steps taken here.
    store.counts.start_reading(ids[N - 1].0 .0);
    assert_eq!(store.count(State::Pending), None);
    count_past(&store, ids[19]);
    // Deliveries the count has yet to read change.
    let Scan::Reading {
        upto: Some(upto), ..
    } = store.counts.scan()
    else {
        panic!("not reading")
    };
    for id in ids.iter().rev().take(10) {
        assert!(id.0 .0 > upto);
        assert!(store.cancel(*id, "gone").unwrap());
    }
    // Deliveries it has read change, one is claimed, and new ones arrive.
    count_past(&store, ids[N / 2]);
    for _ in 0..10 {
        let id = attempt_first(&store, 200, Next::Succeeded);
        assert!(id <= ids[N / 2]);
    }
    let (target, at, id) = store.due_entries(1).unwrap().remove(0);
    store.claim(&target, at, id).unwrap().unwrap();
    for _ in 0..10 {
        store.accept(new_event(&["r/a"], None)).await.unwrap();
    }
    assert_eq!(store.count(State::Pending), None);
    count_past(&store, ids[N - 1]);
    let counts = State::ALL.map(|s| store.count(s).unwrap());
    // Pending, in flight, succeeded, dead, cancelled: ten succeeded before
    // the count; ten cancelled, ten succeeded and one claimed during it;
    // ten new.
    assert_eq!(counts, [(N - 10 - 10 - 10 - 1 + 10) as i64, 1, 20, 0, 10]);
    // A clean close leaves them for the next open, the claimed one pending.
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.count(State::Pending), Some((N - 30 + 10) as i64));
}

#[tokio::test]
async fn a_large_fan_out_is_written_in_steps_each_target_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Several chunks, each written over several steps.
    let names: Vec<String> = (0..300)
        .map(|i| format!("r/endpoint-{i:0>w$}", w = i % 40))
        .collect();
    let targets: Vec<&str> = names.iter().map(String::as_str).collect();
    let a = store.accept(new_event(&targets, None)).await.unwrap();
    assert_eq!(a.deliveries, 300);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.expanding(a.id).unwrap() {
        assert!(std::time::Instant::now() < deadline, "never expanded");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let written = store.deliveries_of(a.id).unwrap();
    assert_eq!(written.len(), 300);
    for (i, (id, d)) in written.iter().enumerate() {
        assert_eq!(id.0 .0, a.id.0 .0 + 1 + i as u128);
        assert_eq!(d.target, names[i]);
        assert_eq!(d.state, State::Pending);
        let due = store.due_for(&d.target, now_ms(), 10).unwrap();
        assert_eq!(due.iter().map(|(_, due)| *due).collect::<Vec<_>>(), [*id]);
    }
    assert_eq!(store.count(State::Pending), Some(300));
}

#[tokio::test]
async fn trimming_the_inbound_log_counts_as_room_to_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    accept_at_once(&store, 10).await;
    let trimmed = counted_as_room(&store, "the trimmed records", || {
        store.purge_inbound(now_ms() + 1, 0, 1000).unwrap()
    });
    assert_eq!(trimmed.removed, 10);
}

#[tokio::test]
async fn expired_dedup_keys_count_as_room_to_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(StoreConfig {
        path: dir.path().to_path_buf(),
        // Dedup keys expire with retention: at once here.
        retention: std::time::Duration::ZERO,
        ..StoreConfig::default()
    });
    for k in ["a", "b", "c"] {
        store.accept(new_event(&["r/a"], Some(k))).await.unwrap();
    }
    let removed = counted_as_room(&store, "the expired keys", || store.purge_dedup().unwrap());
    assert_eq!(removed, 3);
}

#[tokio::test]
async fn the_last_attempt_is_kept_with_its_delivery_and_earlier_ones_in_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.accept(new_event(&["r/a"], None)).await.unwrap();
    let id = attempt_first(&store, 500, Next::RetryAt(now_ms() + 1));
    assert_eq!(store.attempts.len(), 0, "one attempt lives in its delivery");
    for (status, next) in [(502, Next::RetryAt(now_ms() + 2)), (200, Next::Succeeded)] {
        assert_eq!(attempt_first(&store, status, next), id);
    }
    let statuses = |store: &Sled| -> Vec<Option<u16>> {
        let attempts = store.attempts(id).unwrap();
        attempts.iter().map(|a| a.status).collect()
    };
    assert_eq!(statuses(&store), [Some(500), Some(502), Some(200)]);
    assert_eq!(store.attempts.len(), 2, "the two before the last");
    assert_eq!(store.delivery(id).unwrap().unwrap().attempts, 3);

    // A store written while every attempt went to the tree has the last
    // one there too: it is read once.
    let last = store.delivery(id).unwrap().unwrap().last.unwrap();
    store
        .attempts
        .insert(attempt_key(id, 3), encode(&last))
        .unwrap();
    assert_eq!(statuses(&store), [Some(500), Some(502), Some(200)]);

    // Another delivery that succeeds at once writes no attempt record.
    store.accept(new_event(&["r/a"], None)).await.unwrap();
    let first = attempt_first(&store, 200, Next::Succeeded);
    assert_eq!(store.attempts(first).unwrap().len(), 1);
    assert_eq!(store.attempts.len(), 3);
}

//! Unit tests of what only the sled backend does (the shared behaviour is
//! in the contract suite, tests/contract/).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::keys::{due_key, BODY_CHUNK};
use super::{check_schema, Shared, Sled};
use crate::store::*;

fn open(dir: &Path) -> Arc<Sled> {
    let config = StoreConfig {
        path: dir.to_path_buf(),
        ..StoreConfig::default()
    };
    Sled::open(&config, Shared::new(&config)).unwrap()
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

#[tokio::test]
async fn concurrent_accepts_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.accept(new_event(&["r/a"], None)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
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
    assert_eq!(store.count(State::Cancelled), 3);
    assert_eq!(store.count(State::Pending), 1);
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

//! The store contract: what every backend of `hookrelay::store::Store` does,
//! case by case. A backend's test file implements [`Backend`] and calls
//! `store_contract!(ItsBackend)`, which makes one test of each case:
//!
//! ```ignore
//! mod contract;
//! struct Sled { .. }
//! impl contract::Backend for Sled { .. }
//! contract::store_contract!(Sled);
//! ```
//!
//! Cases talk to the store only through the trait, so a case that passes
//! on one backend and fails on another is a difference in behaviour.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hookrelay::store::{
    now_ms, Attempt, Counters, Delivery, DeliveryId, EndpointRecord, EventId, EventMeta, Gauges,
    Inbound, InboundFilter, NewEvent, Next, Origin, Outcome, Resolution, StatRow, StatValues,
    State, Store, StoreError, StoredSecret, ALL_SERIES,
};

/// How the contract reaches a backend.
pub trait Backend: Sized {
    /// A fresh, empty store location that keeps finished events and dedup
    /// keys for `retention`.
    fn new(retention: Duration) -> Self;

    /// Opens the store at this location: empty the first time, and on each
    /// later call the same store again, as a restart finds it (the caller
    /// closed and dropped the previous handle).
    fn open(&self) -> impl std::future::Future<Output = Arc<dyn Store>>;
}

/// One `#[tokio::test]` per contract case, against `$backend`.
macro_rules! store_contract {
    ($backend:ty) => {
        $crate::contract::store_contract!(@cases $backend;
            accept_keeps_the_event_and_one_pending_delivery_per_target,
            an_event_for_no_target_is_kept_with_nothing_due,
            a_large_fan_out_reaches_every_target_across_a_restart,
            a_dedup_key_within_retention_answers_with_the_first_event,
            dedup_keys_expire_after_retention,
            a_claim_takes_a_delivery_once,
            a_claim_for_another_due_time_is_refused,
            a_retry_is_recorded_and_due_again_at_its_time,
            succeeded_and_dead_are_final,
            release_gives_a_delivery_back_without_an_attempt,
            deliveries_in_flight_at_a_restart_are_pending_again,
            everything_acknowledged_survives_a_restart,
            requeue_gives_a_fresh_attempt_budget,
            bulk_requeue_pages_through_every_batch,
            cancel_and_cancel_all,
            the_delivery_log_pages_newest_first_with_filters,
            endpoints_and_counters_round_trip,
            the_inbound_log_records_every_request_newest_first,
            purge_removes_old_finished_events_only,
            purge_steps_go_past_events_still_pending,
            concurrent_accepts_all_get_their_own_ids,
            large_bodies_come_back_whole,
            a_closed_store_refuses_writes,
            accepts_and_requeues_wake_the_scheduler,
            the_scheduler_is_told_which_targets_have_new_work,
            history_rows_add_up_and_read_by_range,
            history_gauges_are_replaced_not_added,
            history_survives_a_restart,
            purge_stats_removes_old_rows_of_each_resolution,
            an_endpoints_history_goes_with_it,
        );
    };
    (@cases $backend:ty; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::contract::$case::<$backend>().await
            }
        )*
    };
}
pub(crate) use store_contract;

// === helpers ===

const DAY: Duration = Duration::from_secs(24 * 3600);

fn new_event(targets: &[&str], dedup: Option<&str>) -> NewEvent {
    NewEvent {
        meta: EventMeta {
            received_at_ms: now_ms(),
            source: "127.0.0.1".into(),
            route: "r".into(),
            event_type: "course.created".into(),
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

fn attempt(status: u16) -> Attempt {
    Attempt {
        at_ms: now_ms(),
        duration_ms: 3,
        status: Some(status),
        error: None,
        excerpt: format!("status {status}"),
        request_headers: vec![("webhook-id".into(), "evt_1".into())],
    }
}

/// Claims the first due delivery of `target`.
async fn claim_first(store: &dyn Store, target: &str) -> (u64, DeliveryId) {
    let (at, id) = store.due_for(target, now_ms(), 1).await.unwrap()[0];
    let d = store.claim(target, at, id).await.unwrap().expect("claimed");
    assert_eq!(d.state, State::InFlight);
    (at, id)
}

/// Claims the first due delivery of `target` and records one attempt.
async fn attempt_first(store: &dyn Store, target: &str, status: u16, next: Next) -> DeliveryId {
    let (_, id) = claim_first(store, target).await;
    store.finish(id, &attempt(status), next).await.unwrap();
    id
}

/// Deliveries by state, in `State::ALL` order: pending, in flight,
/// succeeded, dead, cancelled; waited for while the store still counts.
async fn counts(store: &dyn Store) -> [i64; 5] {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let [Some(a), Some(b), Some(c), Some(d), Some(e)] = State::ALL.map(|s| store.count(s)) {
            return [a, b, c, d, e];
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not count its deliveries within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn reopen<B: Backend>(backend: &B, store: Arc<dyn Store>) -> Arc<dyn Store> {
    store.close().await.unwrap();
    drop(store);
    backend.open().await
}

// === ingest ===

pub async fn accept_keeps_the_event_and_one_pending_delivery_per_target<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let new = new_event(&["r/a", "r/b"], None);
    let meta = new.meta.clone();
    let a = store.accept(new).await.unwrap();
    assert_eq!((a.deliveries, a.duplicate), (2, false));

    let ev = store.event(a.id).await.unwrap().expect("stored");
    assert_eq!(ev.id, a.id);
    assert_eq!(&ev.body[..], b"{\"a\":1}");
    assert_eq!(ev.meta.event_type, meta.event_type);
    assert_eq!(ev.meta.headers, meta.headers);
    assert_eq!(ev.meta.received_at_ms, meta.received_at_ms);

    let ds = store.deliveries_of(a.id).await.unwrap();
    let targets: Vec<&str> = ds.iter().map(|(_, d)| d.target.as_str()).collect();
    assert_eq!(targets, ["r/a", "r/b"], "in creation order");
    for (id, d) in &ds {
        assert_eq!((d.event, d.state, d.attempts), (a.id, State::Pending, 0));
        assert_eq!(store.delivery(*id).await.unwrap().unwrap().target, d.target);
        assert!(store.attempts(*id).await.unwrap().is_empty());
    }
    assert_eq!(counts(&*store).await, [2, 0, 0, 0, 0]);
    let mut due_targets = store.due_targets().await.unwrap();
    due_targets.sort();
    assert_eq!(due_targets, ["r/a", "r/b"]);
    let due = store.due_entries(10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|(_, at, _)| *at <= now_ms()));
    assert_eq!(store.due_for("r/a", now_ms(), 10).await.unwrap().len(), 1);
    assert!(store.next_due("r/a").await.unwrap().is_some());
    assert!(store.next_due("r/none").await.unwrap().is_none());
}

pub async fn an_event_for_no_target_is_kept_with_nothing_due<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let a = store.accept(new_event(&[], None)).await.unwrap();
    assert_eq!(a.deliveries, 0);
    assert!(store.event(a.id).await.unwrap().is_some());
    assert!(store.deliveries_of(a.id).await.unwrap().is_empty());
    assert!(store.due_entries(10).await.unwrap().is_empty());
    assert!(store.due_targets().await.unwrap().is_empty());
}

pub async fn a_dedup_key_within_retention_answers_with_the_first_event<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let a = store.accept(new_event(&["r/a"], Some("k1"))).await.unwrap();
    let again = store.accept(new_event(&["r/a"], Some("k1"))).await.unwrap();
    assert!(again.duplicate);
    assert_eq!((again.id, again.deliveries), (a.id, 0));
    let other = store.accept(new_event(&["r/a"], Some("k2"))).await.unwrap();
    assert!(!other.duplicate);
    assert_ne!(other.id, a.id);
    assert_eq!(
        store.due_entries(10).await.unwrap().len(),
        2,
        "the duplicate queued nothing"
    );
    assert_eq!(counts(&*store).await, [2, 0, 0, 0, 0]);
    // The same key on another route is another key.
    let mut elsewhere = new_event(&["r/a"], None);
    elsewhere.dedup = Some(("other".into(), "k1".into()));
    assert!(!store.accept(elsewhere).await.unwrap().duplicate);
}

pub async fn dedup_keys_expire_after_retention<B: Backend>() {
    let b = B::new(Duration::ZERO);
    let store = b.open().await;
    let first = store.accept(new_event(&["r/a"], Some("k"))).await.unwrap();
    let second = store.accept(new_event(&["r/a"], Some("k"))).await.unwrap();
    assert!(!second.duplicate, "an expired key is not a duplicate");
    assert_ne!(first.id, second.id);
    assert!(store.purge_dedup().await.unwrap() >= 1);
}

// === scheduling ===

pub async fn a_claim_takes_a_delivery_once<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    store.accept(new_event(&["r/a"], None)).await.unwrap();
    let (at, id) = claim_first(&*store, "r/a").await;
    assert!(
        store.claim("r/a", at, id).await.unwrap().is_none(),
        "claimed twice"
    );
    assert!(store.due_for("r/a", now_ms(), 10).await.unwrap().is_empty());
    assert!(store.due_entries(10).await.unwrap().is_empty());
    assert_eq!(
        store.delivery(id).await.unwrap().unwrap().state,
        State::InFlight
    );
    assert_eq!(counts(&*store).await, [0, 1, 0, 0, 0]);
}

pub async fn a_claim_for_another_due_time_is_refused<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    store.accept(new_event(&["r/a"], None)).await.unwrap();
    let (at, id) = store.due_for("r/a", now_ms(), 1).await.unwrap()[0];
    assert!(store.claim("r/a", at + 1, id).await.unwrap().is_none());
    assert!(
        store.claim("r/a", at, id).await.unwrap().is_some(),
        "the real one still works"
    );
}

pub async fn a_retry_is_recorded_and_due_again_at_its_time<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    store.accept(new_event(&["r/a"], None)).await.unwrap();
    let (_, id) = claim_first(&*store, "r/a").await;
    let later = now_ms() + 60_000;
    let tried = attempt(500);
    let d = store
        .finish(id, &tried, Next::RetryAt(later))
        .await
        .unwrap();
    assert_eq!(
        (d.state, d.attempts, d.next_at_ms),
        (State::Pending, 1, later)
    );
    assert_eq!(d.last.as_ref(), Some(&tried));
    assert_eq!(store.attempts(id).await.unwrap(), vec![tried.clone()]);
    assert!(
        store.due_for("r/a", now_ms(), 10).await.unwrap().is_empty(),
        "not due yet"
    );
    assert_eq!(
        store.due_for("r/a", later, 10).await.unwrap(),
        vec![(later, id)]
    );
    assert_eq!(store.next_due("r/a").await.unwrap(), Some(later));
    assert_eq!(counts(&*store).await, [1, 0, 0, 0, 0]);

    // The second attempt is numbered after the first.
    store
        .claim("r/a", later, id)
        .await
        .unwrap()
        .expect("claimed at its time");
    let d = store
        .finish(id, &attempt(200), Next::Succeeded)
        .await
        .unwrap();
    assert_eq!((d.state, d.attempts), (State::Succeeded, 2));
    let statuses: Vec<_> = store
        .attempts(id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(statuses, [Some(500), Some(200)]);
}

pub async fn succeeded_and_dead_are_final<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    store
        .accept(new_event(&["r/ok", "r/bad"], None))
        .await
        .unwrap();
    let ok = attempt_first(&*store, "r/ok", 200, Next::Succeeded).await;
    let bad = attempt_first(&*store, "r/bad", 500, Next::Dead).await;
    assert_eq!(
        store.delivery(ok).await.unwrap().unwrap().state,
        State::Succeeded
    );
    assert_eq!(
        store.delivery(bad).await.unwrap().unwrap().state,
        State::Dead
    );
    assert!(store.due_entries(10).await.unwrap().is_empty());
    assert!(store.due_targets().await.unwrap().is_empty());
    assert_eq!(counts(&*store).await, [0, 0, 1, 1, 0]);
}

pub async fn release_gives_a_delivery_back_without_an_attempt<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    store.accept(new_event(&["r/a"], None)).await.unwrap();
    let (at, id) = claim_first(&*store, "r/a").await;
    store.release(id, at).await.unwrap();
    let d = store.delivery(id).await.unwrap().unwrap();
    assert_eq!((d.state, d.attempts), (State::Pending, 0));
    assert!(store.attempts(id).await.unwrap().is_empty());
    assert_eq!(
        store.due_for("r/a", now_ms(), 10).await.unwrap(),
        vec![(at, id)]
    );
    // Releasing one that is not in flight changes nothing.
    store.release(id, at + 5).await.unwrap();
    assert_eq!(store.delivery(id).await.unwrap().unwrap().next_at_ms, at);
}

pub async fn deliveries_in_flight_at_a_restart_are_pending_again<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    store
        .accept(new_event(&["r/a", "r/b"], None))
        .await
        .unwrap();
    let (_, taken) = claim_first(&*store, "r/a").await;
    // A "crash": the attempt never finishes.
    let store = reopen(&b, store).await;
    let d = store.delivery(taken).await.unwrap().unwrap();
    assert_eq!((d.state, d.attempts), (State::Pending, 0));
    assert!(d.next_at_ms <= now_ms(), "due now");
    assert_eq!(store.due_entries(10).await.unwrap().len(), 2);
    assert_eq!(counts(&*store).await, [2, 0, 0, 0, 0]);
    let (at, id) = store.due_for("r/a", now_ms(), 1).await.unwrap()[0];
    assert_eq!(id, taken);
    assert!(store.claim("r/a", at, id).await.unwrap().is_some());
}

pub async fn everything_acknowledged_survives_a_restart<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let mut new = new_event(&["r/a"], Some(&format!("k{n}")));
        new.body = Bytes::from(format!("{{\"n\":{n}}}"));
        ids.push(store.accept(new).await.unwrap().id);
    }
    let done = attempt_first(&*store, "r/a", 200, Next::Succeeded).await;
    let sub = endpoint("ep_1");
    store.put_endpoint(&sub).await.unwrap();
    let counters = Counters {
        calls: 3,
        succeeded: 2,
        failed: 1,
        ..Counters::default()
    };
    store.save_counters("r/a", &counters).await.unwrap();

    let store = reopen(&b, store).await;
    for (n, id) in ids.iter().enumerate() {
        let ev = store.event(*id).await.unwrap().expect("survived");
        assert_eq!(ev.body, Bytes::from(format!("{{\"n\":{n}}}")));
        assert_eq!(store.deliveries_of(*id).await.unwrap().len(), 1);
    }
    assert_eq!(
        store.delivery(done).await.unwrap().unwrap().state,
        State::Succeeded
    );
    assert_eq!(store.attempts(done).await.unwrap().len(), 1);
    assert_eq!(counts(&*store).await, [19, 0, 1, 0, 0]);
    let again = store.accept(new_event(&["r/a"], Some("k3"))).await.unwrap();
    assert_eq!(
        (again.duplicate, again.id),
        (true, ids[3]),
        "dedup keys survive"
    );
    let subs = store.endpoints().await.unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].id, "ep_1");
    assert!(subs[0].secrets == sub.secrets && subs[0].spec == sub.spec);
    let log = store
        .inbound(&InboundFilter::default(), None, 100, 100)
        .await
        .unwrap();
    assert_eq!(log.records.len(), 21, "the inbound log survives too");
    assert_eq!(store.counters("r/a").await.unwrap(), counters);
}

// === repair ===

pub async fn requeue_gives_a_fresh_attempt_budget<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    store
        .accept(new_event(&["r/a", "r/b"], None))
        .await
        .unwrap();
    let dead = attempt_first(&*store, "r/a", 500, Next::Dead).await;
    let d = store.requeue(dead, "by hand").await.unwrap().unwrap();
    assert_eq!((d.state, d.attempts, d.base), (State::Pending, 1, 1));
    assert_eq!(d.note.as_deref(), Some("by hand"));
    assert_eq!(store.due_for("r/a", now_ms(), 10).await.unwrap().len(), 1);
    assert_eq!(counts(&*store).await, [2, 0, 0, 0, 0]);

    let (_, flying) = claim_first(&*store, "r/b").await;
    let d = store.requeue(flying, "by hand").await.unwrap().unwrap();
    assert_eq!(
        d.state,
        State::InFlight,
        "one being attempted is left alone"
    );
    assert_eq!(
        store.delivery(flying).await.unwrap().unwrap().state,
        State::InFlight
    );

    let unknown = DeliveryId(ulid::Ulid::new());
    assert!(store.requeue(unknown, "x").await.unwrap().is_none());
}

pub async fn bulk_requeue_pages_through_every_batch<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    for _ in 0..5 {
        store.accept(new_event(&["r/a"], None)).await.unwrap();
        attempt_first(&*store, "r/a", 500, Next::Dead).await;
    }
    store.accept(new_event(&["r/b"], None)).await.unwrap();
    attempt_first(&*store, "r/b", 500, Next::Dead).await;
    let (mut total, mut from, mut batches) = (0, None, 0);
    loop {
        let (n, next) = store
            .requeue_batch(State::Dead, Some("r/a"), from, 2)
            .await
            .unwrap();
        total += n;
        batches += 1;
        match next {
            Some(next) => from = Some(next),
            None => break,
        }
        assert!(batches < 20, "the cursor does not advance");
    }
    assert_eq!(total, 5);
    assert!(batches >= 3, "{batches} batches of at most 2");
    assert_eq!(counts(&*store).await, [5, 0, 0, 1, 0], "r/b is left alone");
    let due = store.due_entries(10).await.unwrap();
    assert!(due.iter().all(|(t, _, _)| t == "r/a"));
}

pub async fn cancel_and_cancel_all<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    for _ in 0..3 {
        store.accept(new_event(&["r/a"], None)).await.unwrap();
    }
    store.accept(new_event(&["r/b"], None)).await.unwrap();
    let (_, one) = store.due_for("r/a", now_ms(), 1).await.unwrap()[0];
    assert!(store.cancel(one, "not wanted").await.unwrap());
    let d = store.delivery(one).await.unwrap().unwrap();
    assert_eq!(
        (d.state, d.note.as_deref()),
        (State::Cancelled, Some("not wanted"))
    );
    assert!(
        !store.cancel(one, "again").await.unwrap(),
        "a finished one stays"
    );
    assert_eq!(store.cancel_all("r/a", "gone").await.unwrap(), 2);
    assert_eq!(counts(&*store).await, [1, 0, 0, 0, 3]);
    let left = store.due_entries(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, "r/b");
    assert_eq!(store.cancel_all("r/a", "gone").await.unwrap(), 0);
}

// === queries ===

pub async fn the_delivery_log_pages_newest_first_with_filters<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let mut all = Vec::new();
    for _ in 0..5 {
        let a = store
            .accept(new_event(&["r/a", "r/b"], None))
            .await
            .unwrap();
        all.extend(
            store
                .deliveries_of(a.id)
                .await
                .unwrap()
                .into_iter()
                .map(|(id, _)| id),
        );
    }
    attempt_first(&*store, "r/a", 500, Next::Dead).await;
    all.reverse();

    let page = store
        .list_deliveries(None, None, None, 4, 1000)
        .await
        .unwrap();
    let ids: Vec<_> = page.deliveries.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, all[..4]);
    let next = store
        .list_deliveries(None, None, page.next, 100, 1000)
        .await
        .unwrap();
    let ids: Vec<_> = next.deliveries.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, all[4..]);
    assert!(next.next.is_none());

    let only_b = store
        .list_deliveries(None, Some("r/b"), None, 100, 1000)
        .await
        .unwrap();
    assert_eq!(only_b.deliveries.len(), 5);
    assert!(only_b.deliveries.iter().all(|(_, d)| d.target == "r/b"));
    let dead = store
        .list_deliveries(Some(State::Dead), None, None, 100, 1000)
        .await
        .unwrap();
    assert_eq!(dead.deliveries.len(), 1);
    assert_eq!(dead.deliveries[0].1.target, "r/a");

    // A scan bound stops early and says where to go on.
    let bounded = store
        .list_deliveries(Some(State::Dead), None, None, 100, 2)
        .await
        .unwrap();
    assert!(bounded.deliveries.len() <= 2);
    assert!(bounded.next.is_some());
}

fn endpoint(id: &str) -> EndpointRecord {
    EndpointRecord {
        id: id.into(),
        origin: Origin::Api,
        route: None,
        url: String::new(),
        owner: Some("zapier".into()),
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
        secrets: vec![StoredSecret {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            expires_at_ms: None,
        }],
        disabled_reason: None,
        tests: Vec::new(),
        spec: serde_json::json!({"name": "Nouvelle vente → CRM", "url": "https://crm.example.com/hook"}),
    }
}

pub async fn endpoints_and_counters_round_trip<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    assert!(store.endpoints().await.unwrap().is_empty());
    assert_eq!(store.counters("ep_b").await.unwrap(), Counters::default());
    store.put_endpoint(&endpoint("ep_b")).await.unwrap();
    store.put_endpoint(&endpoint("ep_a")).await.unwrap();
    let ids: Vec<String> = store
        .endpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["ep_a", "ep_b"], "by id");
    let mut changed = endpoint("ep_b");
    changed.spec["name"] = serde_json::json!("renamed");
    store.put_endpoint(&changed).await.unwrap();
    let all = store.endpoints().await.unwrap();
    assert_eq!(all.len(), 2, "a put replaces, it does not add");
    let got = all.iter().find(|e| e.id == "ep_b").unwrap();
    assert_eq!(got.spec["name"], "renamed", "a put replaces");
    assert!(!all.iter().any(|e| e.id == "ep_z"));

    let c = Counters {
        calls: 7,
        succeeded: 5,
        failed: 2,
        dead: 1,
        tests: 1,
        duration_ms: 42,
        last_status: Some(503),
        last_error: None,
        last_at_ms: Some(now_ms()),
    };
    store.save_counters("ep_b", &c).await.unwrap();
    assert_eq!(store.counters("ep_b").await.unwrap(), c);

    assert!(store.delete_endpoint("ep_b").await.unwrap());
    assert!(!store.delete_endpoint("ep_b").await.unwrap());
    assert_eq!(
        store.counters("ep_b").await.unwrap(),
        Counters::default(),
        "counters go too"
    );
    let ids: Vec<String> = store
        .endpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["ep_a"]);
}

fn refusal(path: &str, status: u16) -> Inbound {
    Inbound {
        at_ms: now_ms(),
        source: "127.0.0.1".into(),
        method: "POST".into(),
        path: path.into(),
        route: None,
        event_type: None,
        outcome: Outcome::Rejected,
        status,
        code: Some("no_route".into()),
        reason: Some("no route matches".into()),
        deliveries: 0,
        event: None,
    }
}

pub async fn the_inbound_log_records_every_request_newest_first<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let first = store
        .accept(new_event(&["r/a", "r/b"], Some("k")))
        .await
        .unwrap();
    store.record_inbound(&refusal("/nope", 404)).await.unwrap();
    store.accept(new_event(&["r/a"], Some("k"))).await.unwrap();
    store.accept(new_event(&[], None)).await.unwrap();
    let all = store
        .inbound(&InboundFilter::default(), None, 10, 100)
        .await
        .unwrap();
    let outcomes: Vec<(Outcome, usize)> = all
        .records
        .iter()
        .map(|(_, r)| (r.outcome, r.deliveries))
        .collect();
    assert_eq!(
        outcomes,
        [
            (Outcome::Accepted, 0),
            (Outcome::Duplicate, 0),
            (Outcome::Rejected, 0),
            (Outcome::Accepted, 2),
        ]
    );
    let (_, oldest) = &all.records[3];
    assert_eq!(oldest.event, Some(first.id));
    assert_eq!(
        (oldest.path.as_str(), oldest.route.as_deref()),
        ("/r", Some("r"))
    );
    assert_eq!(
        all.records[1].1.event,
        Some(first.id),
        "a duplicate names the first event"
    );
    assert!(all.next.is_none());

    let rejected = InboundFilter {
        outcome: Some(Outcome::Rejected),
        ..Default::default()
    };
    let page = store.inbound(&rejected, None, 10, 100).await.unwrap();
    assert_eq!(page.records.len(), 1);
    let mut want = refusal("/nope", 404);
    want.at_ms = page.records[0].1.at_ms;
    assert_eq!(page.records[0].1, want);

    // Pages: two at a time, then on from the cursor.
    let p1 = store
        .inbound(&InboundFilter::default(), None, 2, 100)
        .await
        .unwrap();
    assert_eq!(p1.records.len(), 2);
    let p2 = store
        .inbound(&InboundFilter::default(), p1.next, 2, 100)
        .await
        .unwrap();
    assert_eq!(p2.records[0].0, all.records[2].0);

    // Bounded by count: keep the newest 2, one record per step.
    let step = store.purge_inbound(0, 2, 1).await.unwrap();
    assert_eq!(
        (step.removed, step.more),
        (1, true),
        "a step stops at its limit"
    );
    let step = store.purge_inbound(0, 2, 1).await.unwrap();
    assert_eq!((step.removed, step.more), (1, false));
    let step = store.purge_inbound(0, 2, 1).await.unwrap();
    assert_eq!((step.removed, step.more), (0, false));
    let kept = store
        .inbound(&InboundFilter::default(), None, 10, 100)
        .await
        .unwrap();
    assert_eq!(kept.records.len(), 2);
    assert_eq!(kept.records[0].0, all.records[0].0);
    // And by age.
    let step = store.purge_inbound(now_ms() + 1, 100, 100).await.unwrap();
    assert_eq!((step.removed, step.more), (2, false));
    // Records written after the count are counted too.
    store.record_inbound(&refusal("/nope", 404)).await.unwrap();
    store.record_inbound(&refusal("/nope", 404)).await.unwrap();
    let step = store.purge_inbound(0, 1, 100).await.unwrap();
    assert_eq!((step.removed, step.more), (1, false));
}

// === retention ===

pub async fn purge_removes_old_finished_events_only<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let done = store.accept(new_event(&["r/a"], Some("k"))).await.unwrap();
    let waiting = store.accept(new_event(&["r/a"], None)).await.unwrap();
    let did = attempt_first(&*store, "r/a", 200, Next::Succeeded).await;
    // Nothing is older than a cutoff in the past.
    assert_eq!(
        store
            .purge(done.id.0.timestamp_ms(), 100)
            .await
            .unwrap()
            .removed,
        0
    );
    // Past both: the finished one goes, the pending one stays.
    assert_eq!(store.purge(now_ms() + 1, 100).await.unwrap().removed, 1);
    assert!(store.event(done.id).await.unwrap().is_none());
    assert!(store.delivery(did).await.unwrap().is_none());
    assert!(store.attempts(did).await.unwrap().is_empty());
    assert!(store.event(waiting.id).await.unwrap().is_some());
    assert_eq!(store.deliveries_of(waiting.id).await.unwrap().len(), 1);
    assert_eq!(
        counts(&*store).await,
        [1, 0, 0, 0, 0],
        "the purged delivery is counted no more"
    );
    // The dedup key has not expired, so it still answers.
    let again = store.accept(new_event(&["r/a"], Some("k"))).await.unwrap();
    assert!(again.duplicate);
}

pub async fn purge_steps_go_past_events_still_pending<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    // Five events still pending on one target, then three finished on another.
    for _ in 0..5 {
        store.accept(new_event(&["r/wait"], None)).await.unwrap();
    }
    for _ in 0..3 {
        store.accept(new_event(&["r/done"], None)).await.unwrap();
        attempt_first(&*store, "r/done", 200, Next::Succeeded).await;
    }
    let cutoff = now_ms() + 1;
    // Steps of two: the pending ones are looked at once, not at every step.
    let mut removed = 0;
    let mut steps = 0;
    loop {
        let step = store.purge(cutoff, 2).await.unwrap();
        removed += step.removed;
        steps += 1;
        assert!(steps <= 5, "stepping never ends");
        if !step.more {
            break;
        }
    }
    assert_eq!(removed, 3, "every finished event went, in {steps} steps");
    assert_eq!(counts(&*store).await, [5, 0, 0, 0, 0]);
    // The next round starts from the oldest again.
    let step = store.purge(cutoff, 100).await.unwrap();
    assert_eq!((step.removed, step.more), (0, false));
}

// === concurrency, size, life ===

pub async fn concurrent_accepts_all_get_their_own_ids<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.accept(new_event(&["r/a"], None)).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap().id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 64);
    assert_eq!(counts(&*store).await, [64, 0, 0, 0, 0]);
    assert_eq!(store.due_entries(100).await.unwrap().len(), 64);
}

pub async fn large_bodies_come_back_whole<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let body: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    let mut new = new_event(&["r/a"], None);
    new.body = Bytes::from(body.clone());
    let a = store.accept(new).await.unwrap();
    let store = reopen(&b, store).await;
    assert_eq!(
        &store.event(a.id).await.unwrap().unwrap().body[..],
        &body[..]
    );
    attempt_first(&*store, "r/a", 200, Next::Succeeded).await;
    assert_eq!(store.purge(now_ms() + 1, 10).await.unwrap().removed, 1);
    assert!(store.event(a.id).await.unwrap().is_none());
}

pub async fn a_closed_store_refuses_writes<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let health = store.maintain().await;
    assert!(health.accepting(), "{health:?}");
    assert!(health.disk_bytes > 0);
    assert_eq!(store.disk_bytes(), health.disk_bytes);
    store.close().await.unwrap();
    let e = store.accept(new_event(&["r/a"], None)).await.unwrap_err();
    assert!(matches!(e, StoreError::Closed), "{e}");
    let row = stat("ep_a", Resolution::Minute, 0, 1);
    assert!(store.add_stats(&[row]).await.is_err());
    let health = store.health();
    assert_eq!(
        health.refusing.map(|(code, _)| code).as_deref(),
        Some("store_unavailable")
    );
}

pub async fn accepts_and_requeues_wake_the_scheduler<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let wake = store.new_work();
    // The scheduler sleeps until woken when nothing is due: a backend that
    // does not wake it leaves new work waiting.
    let woken = || tokio::time::timeout(Duration::from_secs(5), wake.notified());
    store.accept(new_event(&["r/a"], None)).await.unwrap();
    woken().await.expect("an accept wakes the scheduler");
    let dead = attempt_first(&*store, "r/a", 500, Next::Dead).await;
    store.requeue(dead, "by hand").await.unwrap();
    woken().await.expect("a re-queue wakes the scheduler");
}

pub async fn the_scheduler_is_told_which_targets_have_new_work<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    store.woken();
    store
        .accept(new_event(&["r/a", "r/b"], None))
        .await
        .unwrap();
    store.accept(new_event(&["r/b"], None)).await.unwrap();
    assert_eq!(sorted(store.woken()), ["r/a", "r/b"], "each target once");
    assert!(store.woken().is_empty(), "told once");
    let dead = attempt_first(&*store, "r/a", 500, Next::Dead).await;
    assert!(
        store.woken().is_empty(),
        "an attempt is the scheduler's own news"
    );
    store.requeue(dead, "by hand").await.unwrap();
    assert_eq!(store.woken(), ["r/a"]);
}

/// Waits (bounded) until `event` has `n` deliveries; returns them.
async fn deliveries_eventually(
    store: &dyn Store,
    event: EventId,
    n: usize,
) -> Vec<(DeliveryId, Delivery)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = store.deliveries_of(event).await.unwrap();
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn a_large_fan_out_reaches_every_target_across_a_restart<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let names: Vec<String> = (0..1500)
        .map(|i| format!("route/endpoint-{i:04}"))
        .collect();
    let targets: Vec<&str> = names.iter().map(String::as_str).collect();
    let a = store.accept(new_event(&targets, None)).await.unwrap();
    assert_eq!(a.deliveries, 1500);
    // Closed at once: what was acknowledged is all there after a restart.
    let store = reopen(&b, store).await;
    let got = deliveries_eventually(&*store, a.id, 1500).await;
    assert_eq!(got.len(), 1500);
    let mut seen: Vec<&str> = got.iter().map(|(_, d)| d.target.as_str()).collect();
    seen.sort();
    assert_eq!(seen, targets, "one delivery per target, none twice");
    assert!(got
        .iter()
        .all(|(_, d)| d.state == State::Pending && d.event == a.id));
    assert_eq!(counts(&*store).await, [1500, 0, 0, 0, 0]);
    // Each is due on its own target.
    for t in ["route/endpoint-0000", "route/endpoint-1499"] {
        assert_eq!(store.due_for(t, now_ms(), 10).await.unwrap().len(), 1);
    }
    // Not purged while it waits.
    assert_eq!(store.purge(now_ms() + 1, 10).await.unwrap().removed, 0);
}

// === history ===

const MINUTE: u64 = 60_000;
const HOUR: u64 = 3_600_000;

/// A row of `series` with `succeeded` counted.
fn stat(series: &str, resolution: Resolution, start_ms: u64, succeeded: u64) -> StatRow {
    StatRow {
        series: series.into(),
        resolution,
        start_ms,
        values: StatValues {
            succeeded,
            attempts: succeeded,
            ..StatValues::default()
        },
    }
}

/// (start, succeeded) of `series`' rows in [from, to).
async fn succeeded(
    store: &dyn Store,
    series: &str,
    resolution: Resolution,
    from_ms: u64,
    to_ms: u64,
) -> Vec<(u64, u64)> {
    store
        .stats(series, resolution, from_ms, to_ms)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!((r.series.as_str(), r.resolution), (series, resolution));
            (r.start_ms, r.values.succeeded)
        })
        .collect()
}

pub async fn history_rows_add_up_and_read_by_range<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let t = 1_700_000_000_000 / HOUR * HOUR;
    let none = succeeded(&*store, "ep_a", Resolution::Minute, 0, u64::MAX).await;
    assert!(none.is_empty());
    store
        .add_stats(&[
            stat("ep_a", Resolution::Minute, t + 2 * MINUTE, 1),
            stat("ep_a", Resolution::Minute, t, 2),
            stat("ep_a", Resolution::Hour, t, 3),
            stat("ep_ab", Resolution::Minute, t, 4),
            stat(ALL_SERIES, Resolution::Minute, t, 5),
            // Twice in one batch: both count.
            stat("ep_a", Resolution::Minute, t + MINUTE, 6),
            stat("ep_a", Resolution::Minute, t + MINUTE, 7),
        ])
        .await
        .unwrap();
    // Another relay (or the next minute) adds its own.
    store
        .add_stats(&[stat("ep_a", Resolution::Minute, t, 10)])
        .await
        .unwrap();
    assert_eq!(
        succeeded(&*store, "ep_a", Resolution::Minute, 0, u64::MAX).await,
        [(t, 12), (t + MINUTE, 13), (t + 2 * MINUTE, 1)],
        "oldest first, added up, one series and resolution"
    );
    assert_eq!(
        succeeded(
            &*store,
            "ep_a",
            Resolution::Minute,
            t + MINUTE,
            t + 2 * MINUTE
        )
        .await,
        [(t + MINUTE, 13)],
        "from is in the range, to is not"
    );
    assert!(succeeded(
        &*store,
        "ep_a",
        Resolution::Minute,
        t + 3 * MINUTE,
        u64::MAX
    )
    .await
    .is_empty());
    assert_eq!(
        succeeded(&*store, "ep_a", Resolution::Hour, 0, u64::MAX).await,
        [(t, 3)]
    );
    assert_eq!(
        succeeded(&*store, "ep_ab", Resolution::Minute, 0, u64::MAX).await,
        [(t, 4)]
    );
    assert_eq!(
        succeeded(&*store, ALL_SERIES, Resolution::Minute, 0, u64::MAX).await,
        [(t, 5)]
    );
    let row = &store
        .stats("ep_a", Resolution::Minute, t, t + 1)
        .await
        .unwrap()[0];
    assert_eq!(row.values.attempts, 12, "every count is added");
    assert_eq!(row.values.gauges, None);
}

pub async fn history_gauges_are_replaced_not_added<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let gauges = |pending| Gauges {
        pending,
        in_flight: 1,
        dead: 2,
        open_circuits: 3,
        store_bytes: 4096,
    };
    let mut first = stat(ALL_SERIES, Resolution::Hour, 0, 1);
    first.values.gauges = Some(gauges(10));
    let mut second = stat(ALL_SERIES, Resolution::Hour, 0, 1);
    second.values.gauges = Some(gauges(7));
    let without = stat(ALL_SERIES, Resolution::Hour, 0, 1);
    store.add_stats(&[first, second]).await.unwrap();
    store.add_stats(&[without]).await.unwrap();
    let row = &store
        .stats(ALL_SERIES, Resolution::Hour, 0, HOUR)
        .await
        .unwrap()[0];
    assert_eq!(row.values.succeeded, 3);
    assert_eq!(
        row.values.gauges,
        Some(gauges(7)),
        "the last gauges given; a row without keeps them"
    );
}

pub async fn history_survives_a_restart<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let mut row = stat("ep_a", Resolution::Minute, MINUTE, 2);
    row.values.gauges = Some(Gauges::default());
    row.values.duration_ms = 40;
    store
        .add_stats(&[row.clone(), stat("ep_a", Resolution::Hour, 0, 2)])
        .await
        .unwrap();
    let store = reopen(&b, store).await;
    let rows = store
        .stats("ep_a", Resolution::Minute, 0, u64::MAX)
        .await
        .unwrap();
    assert_eq!(rows, [row]);
    assert_eq!(
        succeeded(&*store, "ep_a", Resolution::Hour, 0, u64::MAX).await,
        [(0, 2)]
    );
}

pub async fn purge_stats_removes_old_rows_of_each_resolution<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    let mut rows = Vec::new();
    for series in ["ep_a", "ep_b", ALL_SERIES] {
        for m in 0..5 {
            rows.push(stat(series, Resolution::Minute, m * MINUTE, 1));
        }
        for h in 0..3 {
            rows.push(stat(series, Resolution::Hour, h * HOUR, 1));
        }
    }
    store.add_stats(&rows).await.unwrap();
    // Minutes before 3, hours before 1.
    let removed = store.purge_stats(3 * MINUTE, HOUR).await.unwrap();
    assert_eq!(removed, 3 * (3 + 1));
    for series in ["ep_a", "ep_b", ALL_SERIES] {
        assert_eq!(
            succeeded(&*store, series, Resolution::Minute, 0, u64::MAX).await,
            [(3 * MINUTE, 1), (4 * MINUTE, 1)],
            "{series}"
        );
        assert_eq!(
            succeeded(&*store, series, Resolution::Hour, 0, u64::MAX).await,
            [(HOUR, 1), (2 * HOUR, 1)],
            "{series}"
        );
    }
    assert_eq!(store.purge_stats(3 * MINUTE, HOUR).await.unwrap(), 0);
    // Each cutoff applies to its own resolution only.
    assert_eq!(store.purge_stats(0, 3 * HOUR).await.unwrap(), 3 * 2);
    assert_eq!(
        succeeded(&*store, "ep_a", Resolution::Minute, 0, u64::MAX)
            .await
            .len(),
        2
    );
}

pub async fn an_endpoints_history_goes_with_it<B: Backend>() {
    let b = B::new(DAY);
    let store = b.open().await;
    store.put_endpoint(&endpoint("ep_a")).await.unwrap();
    store
        .add_stats(&[
            stat("ep_a", Resolution::Minute, 0, 1),
            stat("ep_a", Resolution::Hour, 0, 1),
            stat("ep_ab", Resolution::Minute, 0, 1),
            stat(ALL_SERIES, Resolution::Minute, 0, 1),
        ])
        .await
        .unwrap();
    assert!(store.delete_endpoint("ep_a").await.unwrap());
    for resolution in [Resolution::Minute, Resolution::Hour] {
        let rows = store.stats("ep_a", resolution, 0, u64::MAX).await.unwrap();
        assert!(rows.is_empty(), "{resolution:?}");
    }
    assert_eq!(
        succeeded(&*store, "ep_ab", Resolution::Minute, 0, u64::MAX).await,
        [(0, 1)],
        "another series stays"
    );
    assert_eq!(
        succeeded(&*store, ALL_SERIES, Resolution::Minute, 0, u64::MAX).await,
        [(0, 1)]
    );
}

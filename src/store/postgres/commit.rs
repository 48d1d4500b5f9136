//! Group commit: the events accepted at the same moment are written in one
//! transaction, committed with `synchronous_commit` on, and only then
//! answered. A few committers run at once, so one batch's commit (a WAL
//! flush on the server) overlaps the next batch's statements.
//!
//! Within a batch: dedup keys first (a key another relay holds, or an
//! earlier event of the same batch, makes a duplicate), then every event,
//! delivery and inbound record with one multi-row statement each, then a
//! `NOTIFY` per target, which the server sends only once the commit is
//! durable. A failed commit answers every event of the batch with the
//! error: nothing of it was kept, so nothing is acknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{db_error, retryable, to_json, Cached, Inner};
use crate::store::{now_ms, Accepted, DeliveryId, EventId, Inbound, NewEvent, State, StoreError};

/// Most events written in one transaction.
const MAX_BATCH: usize = 256;
/// A commit naming more targets than this wakes the fleet with one
/// notification that names none (each relay then looks for due work).
const MAX_NOTIFY_TARGETS: usize = 32;

pub(super) struct Waiting {
    new: NewEvent,
    done: oneshot::Sender<Result<Accepted, StoreError>>,
}

/// Queues the event for a committer and waits for its commit.
pub(super) async fn accept(inner: &Inner, new: NewEvent) -> Result<Accepted, StoreError> {
    if inner.closed.load(Ordering::Relaxed) {
        return Err(StoreError::Closed);
    }
    // While the database is out of reach (or the store is full), refuse at
    // once: `maintain` looks every second and lifts the refusal.
    let health = inner.health.lock().expect("lock poisoned").clone();
    if let Some((code, reason)) = health.refusing {
        return Err(match code.as_str() {
            "store_full" => StoreError::Full {
                used: health.disk_bytes,
                limit: inner.max_disk_bytes,
            },
            _ => StoreError::Unavailable(reason),
        });
    }
    let sender = inner
        .commits
        .lock()
        .expect("lock poisoned")
        .clone()
        .ok_or(StoreError::Closed)?;
    let (done, answer) = oneshot::channel();
    sender
        .send(Waiting { new, done })
        .await
        .map_err(|_| StoreError::Closed)?;
    answer.await.map_err(|_| StoreError::Closed)?
}

/// Takes whatever is waiting (up to [`MAX_BATCH`]), commits it, answers
/// each event; until the queue is closed and empty.
pub(super) async fn committer(
    inner: Arc<Inner>,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Waiting>>>,
) {
    loop {
        let batch = {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            batch
        };
        let started = Instant::now();
        let news: Vec<&NewEvent> = batch.iter().map(|w| &w.new).collect();
        let mut result = bounded(&inner, &news).await;
        if matches!(&result, Err(Failure::Conflict)) {
            // Lost a deadlock to another relay's batch: nothing was kept;
            // once more.
            result = bounded(&inner, &news).await;
        }
        inner
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        inner.commit_batch.observe(batch.len() as f64);
        match result {
            Ok(accepted) => {
                for (w, a) in batch.into_iter().zip(accepted) {
                    let _ = w.done.send(Ok(a));
                }
            }
            Err(f) => {
                let e = match f {
                    Failure::Conflict => {
                        StoreError::Commit("the commit conflicted with another relay's".into())
                    }
                    Failure::Store(e) => inner.failed(e),
                };
                for w in batch {
                    let _ = w.done.send(Err(e.clone()));
                }
            }
        }
    }
    inner.committers.fetch_sub(1, Ordering::Relaxed);
    inner.committers_stopped.notify_waiters();
}

enum Failure {
    /// A deadlock or serialization failure: may simply be run again.
    Conflict,
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        if retryable(&e) {
            Failure::Conflict
        } else {
            Failure::Store(db_error(&e))
        }
    }
}

/// What one event of a batch becomes.
enum Fate {
    New,
    /// A duplicate of an event of this batch (its place).
    SameAs(usize),
    /// A duplicate of this stored event.
    Stored(EventId),
}

/// [`commit`] within twice the statement timeout: a commit that waits
/// longer (for a synchronous standby that is gone, which no statement
/// timeout cuts short) is answered as failed. It may still commit later;
/// its events are then delivered without having been acknowledged, which
/// is allowed (a sender retries what got no 202).
async fn bounded(inner: &Inner, batch: &[&NewEvent]) -> Result<Vec<Accepted>, Failure> {
    let limit = inner.config.statement_timeout * 2;
    match tokio::time::timeout(limit, commit(inner, batch)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Store(StoreError::Unavailable(format!(
            "PostgreSQL did not commit within {}",
            humantime::format_duration(limit)
        )))),
    }
}

/// Writes and commits one batch; the answers in the batch's order.
async fn commit(inner: &Inner, batch: &[&NewEvent]) -> Result<Vec<Accepted>, Failure> {
    let now = now_ms();
    let expiry = now + inner.retention_ms;
    let ids: Vec<(EventId, Vec<DeliveryId>)> = batch
        .iter()
        .map(|n| inner.next_ids(n.targets.len()))
        .collect();
    let mut fates: Vec<Fate> = Vec::with_capacity(batch.len());
    let mut first_of: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, n) in batch.iter().enumerate() {
        match &n.dedup {
            Some((route, key)) => match first_of.get(&(route.as_str(), key.as_str())) {
                Some(&j) => fates.push(Fate::SameAs(j)),
                None => {
                    first_of.insert((route.as_str(), key.as_str()), i);
                    fates.push(Fate::New);
                }
            },
            None => fates.push(Fate::New),
        }
    }

    let mut client = inner.client().await.map_err(Failure::Store)?;
    // synchronous_commit is on for every connection (`connect_config`).
    let tx = client.transaction().await?;

    // Dedup keys: a key is ours if it is new or has expired; otherwise the
    // event is a duplicate of the one the key names.
    if !first_of.is_empty() {
        let mut keyed: Vec<(&str, &str, usize)> =
            first_of.iter().map(|(&(r, k), &i)| (r, k, i)).collect();
        // The same order in every relay, so two batches cannot deadlock.
        keyed.sort();
        let routes: Vec<&str> = keyed.iter().map(|k| k.0).collect();
        let keys: Vec<&str> = keyed.iter().map(|k| k.1).collect();
        let events: Vec<Vec<u8>> = keyed.iter().map(|k| ids[k.2].0.to_key().to_vec()).collect();
        let won = tx
            .rows(
                "INSERT INTO dedup (route, key, event, expires_at_ms) \
                 SELECT r, k, e, $4 FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u(r, k, e) \
                 ORDER BY r, k \
                 ON CONFLICT (route, key) DO UPDATE \
                 SET event = excluded.event, expires_at_ms = excluded.expires_at_ms \
                 WHERE dedup.expires_at_ms <= $5 \
                 RETURNING route, key",
                &[&routes, &keys, &events, &(expiry as i64), &(now as i64)],
            )
            .await?;
        let won: HashSet<(String, String)> = won
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        let lost: Vec<&(&str, &str, usize)> = keyed
            .iter()
            .filter(|(r, k, _)| !won.contains(&(r.to_string(), k.to_string())))
            .collect();
        if !lost.is_empty() {
            let routes: Vec<&str> = lost.iter().map(|k| k.0).collect();
            let keys: Vec<&str> = lost.iter().map(|k| k.1).collect();
            let rows = tx
                .rows(
                    "SELECT d.route, d.key, d.event FROM dedup d \
                     JOIN unnest($1::text[], $2::text[]) AS u(r, k) ON d.route = u.r AND d.key = u.k",
                    &[&routes, &keys],
                )
                .await?;
            for row in rows {
                let (route, key, event): (String, String, Vec<u8>) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                let Some(first) = EventId::from_key(&event) else {
                    continue;
                };
                if let Some(&i) = first_of.get(&(route.as_str(), key.as_str())) {
                    fates[i] = Fate::Stored(first);
                }
            }
        }
    }
    let first_id = |i: usize, fates: &[Fate]| match fates[i] {
        Fate::Stored(id) => Some(id),
        _ => None,
    };
    let answers: Vec<Accepted> = (0..batch.len())
        .map(|i| match fates[i] {
            Fate::New => Accepted {
                id: ids[i].0,
                deliveries: ids[i].1.len(),
                duplicate: false,
            },
            Fate::Stored(first) => Accepted {
                id: first,
                deliveries: 0,
                duplicate: true,
            },
            Fate::SameAs(j) => Accepted {
                id: first_id(j, &fates).unwrap_or(ids[j].0),
                deliveries: 0,
                duplicate: true,
            },
        })
        .collect();

    // The events and their deliveries.
    let fresh: Vec<usize> = (0..batch.len())
        .filter(|&i| !answers[i].duplicate)
        .collect();
    let mut woken: Vec<&String> = Vec::new();
    if !fresh.is_empty() {
        let ev_ids: Vec<Vec<u8>> = fresh.iter().map(|&i| ids[i].0.to_key().to_vec()).collect();
        let received: Vec<i64> = fresh
            .iter()
            .map(|&i| batch[i].meta.received_at_ms as i64)
            .collect();
        let metas: Vec<serde_json::Value> =
            fresh.iter().map(|&i| to_json(&batch[i].meta)).collect();
        let bodies: Vec<&[u8]> = fresh.iter().map(|&i| &batch[i].body[..]).collect();
        tx.exec(
            "INSERT INTO events (id, received_at_ms, meta, body) \
             SELECT * FROM unnest($1::bytea[], $2::int8[], $3::jsonb[], $4::bytea[])",
            &[&ev_ids, &received, &metas, &bodies],
        )
        .await?;
        let mut d_ids: Vec<Vec<u8>> = Vec::new();
        let mut d_events: Vec<Vec<u8>> = Vec::new();
        let mut d_targets: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for &i in &fresh {
            for (d, t) in ids[i].1.iter().zip(&batch[i].targets) {
                d_ids.push(d.to_key().to_vec());
                d_events.push(ids[i].0.to_key().to_vec());
                d_targets.push(t.as_str());
                if seen.insert(t.as_str()) {
                    woken.push(t);
                }
            }
        }
        if !d_ids.is_empty() {
            tx.exec(
                "INSERT INTO deliveries (id, event, target, state, next_at_ms) \
                 SELECT i, e, t, 0, $4 FROM unnest($1::bytea[], $2::bytea[], $3::text[]) AS u(i, e, t)",
                &[&d_ids, &d_events, &d_targets, &(now as i64)],
            )
            .await?;
        }
    }

    // The inbound log: one record per request, duplicates included.
    let in_ids: Vec<Vec<u8>> = (0..batch.len())
        .map(|_| inner.next_ids(0).0.to_key().to_vec())
        .collect();
    let records: Vec<serde_json::Value> = batch
        .iter()
        .zip(&answers)
        .map(|(n, a)| to_json(&Inbound::accepted(n, a)))
        .collect();
    tx.exec(
        "INSERT INTO inbound (id, record) SELECT * FROM unnest($1::bytea[], $2::jsonb[])",
        &[&in_ids, &records],
    )
    .await?;

    tx.commit().await?;

    let delivered: usize = fresh.iter().map(|&i| ids[i].1.len()).sum();
    inner.moved(None, Some(State::Pending), delivered as i64);
    inner.wake(woken.iter().copied());
    // The fleet is told after the commit, in a statement of its own: a
    // transaction that notifies holds the server's notify lock through its
    // commit, which would make every relay's commits wait on each other.
    if inner.config.listen && !woken.is_empty() {
        let payloads: Vec<String> = if woken.len() > MAX_NOTIFY_TARGETS {
            vec![format!("{}:*", inner.instance)]
        } else {
            woken
                .iter()
                .map(|t| format!("{}:{t}", inner.instance))
                .collect()
        };
        let _ = client
            .exec(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                &[&inner.channel, &payloads],
            )
            .await;
    }
    Ok(answers)
}

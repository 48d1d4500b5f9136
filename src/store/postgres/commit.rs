//! Group commit: the events accepted at the same moment are written in one
//! transaction, committed with `synchronous_commit` on, and only then
//! answered. A few committers run at once, so one batch's commit (a WAL
//! flush on the server) overlaps the next batch's statements.
//!
//! Within a batch: dedup keys first (a key another relay holds, or an
//! earlier event of the same batch, makes a duplicate), then every event,
//! delivery and inbound record with one multi-row statement each. A batch
//! without dedup keys sends `BEGIN`, those statements and `COMMIT` in one
//! round trip ([`pipeline`]). Once committed, a `NOTIFY` per target tells
//! the fleet. A failed commit answers every event of the batch with the
//! error: nothing of it was kept, so nothing is acknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::{next_batch, pipeline, to_json, wake, Cached, Failure, Inner};
use crate::store::{now_ms, Accepted, DeliveryId, EventId, Inbound, NewEvent, State, StoreError};

/// Most events written in one transaction.
const MAX_BATCH: usize = 256;
/// A batch takes no more events once their bodies reach this size: one
/// statement's parameter (all the bodies of a batch) stays far below what
/// the protocol can carry (1 GiB), whatever `ingest.max_body_bytes` is.
const MAX_BATCH_BYTES: usize = 64 << 20;

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
    while let Some(batch) = next_batch(&queue, MAX_BATCH, MAX_BATCH_BYTES, |w: &Waiting| {
        w.new.body.len()
    })
    .await
    {
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
    inner.batcher_stopped();
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
async fn bounded(inner: &Arc<Inner>, batch: &[&NewEvent]) -> Result<Vec<Accepted>, Failure> {
    let limit = inner.config.statement_timeout * 2;
    match tokio::time::timeout(limit, commit(inner, batch)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Store(StoreError::Unavailable(format!(
            "PostgreSQL did not commit within {}",
            humantime::format_duration(limit)
        )))),
    }
}

const INSERT_EVENTS: &str = "INSERT INTO events (id, received_at_ms, meta, body) \
     SELECT * FROM unnest($1::bytea[], $2::int8[], $3::jsonb[], $4::bytea[])";
const INSERT_DELIVERIES: &str = "INSERT INTO deliveries (id, event, target, state, next_at_ms) \
     SELECT i, e, t, 0, $4 FROM unnest($1::bytea[], $2::bytea[], $3::text[]) AS u(i, e, t)";
const INSERT_INBOUND: &str =
    "INSERT INTO inbound (id, record) SELECT * FROM unnest($1::bytea[], $2::jsonb[])";

/// Takes the batch's dedup keys (`first_of`: each key's first event) in
/// `tx`: a key is ours if it is new or has expired; otherwise the event is
/// a duplicate of the one the key names (its fate says which).
async fn claim_keys(
    tx: &deadpool_postgres::Transaction<'_>,
    first_of: &HashMap<(&str, &str), usize>,
    ids: &[(EventId, Vec<DeliveryId>)],
    expiry: u64,
    now: u64,
    fates: &mut [Fate],
) -> Result<(), Failure> {
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
    Ok(())
}

/// What each event of the batch is answered, from its fate.
fn answers_of(ids: &[(EventId, Vec<DeliveryId>)], fates: &[Fate]) -> Vec<Accepted> {
    let first_id = |i: usize| match fates[i] {
        Fate::Stored(id) => Some(id),
        _ => None,
    };
    (0..fates.len())
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
                id: first_id(j).unwrap_or(ids[j].0),
                deliveries: 0,
                duplicate: true,
            },
        })
        .collect()
}

/// The rows one batch writes, as the parameters of its three statements.
struct Rows<'a> {
    ev_ids: Vec<Vec<u8>>,
    received: Vec<i64>,
    metas: Vec<serde_json::Value>,
    bodies: Vec<&'a [u8]>,
    d_ids: Vec<Vec<u8>>,
    d_events: Vec<Vec<u8>>,
    d_targets: Vec<&'a str>,
    now: i64,
    in_ids: Vec<Vec<u8>>,
    records: Vec<serde_json::Value>,
    /// The targets that have new deliveries, each once.
    woken: Vec<&'a String>,
}

impl<'a> Rows<'a> {
    fn new(
        inner: &Inner,
        batch: &[&'a NewEvent],
        ids: &[(EventId, Vec<DeliveryId>)],
        answers: &[Accepted],
        now: u64,
    ) -> Rows<'a> {
        let fresh: Vec<usize> = (0..batch.len())
            .filter(|&i| !answers[i].duplicate)
            .collect();
        let mut rows = Rows {
            ev_ids: fresh.iter().map(|&i| ids[i].0.to_key().to_vec()).collect(),
            received: fresh
                .iter()
                .map(|&i| batch[i].meta.received_at_ms as i64)
                .collect(),
            metas: fresh.iter().map(|&i| to_json(&batch[i].meta)).collect(),
            bodies: fresh.iter().map(|&i| &batch[i].body[..]).collect(),
            d_ids: Vec::new(),
            d_events: Vec::new(),
            d_targets: Vec::new(),
            now: now as i64,
            // The inbound log: one record per request, duplicates included.
            in_ids: (0..batch.len())
                .map(|_| inner.next_ids(0).0.to_key().to_vec())
                .collect(),
            records: batch
                .iter()
                .zip(answers)
                .map(|(n, a)| to_json(&Inbound::accepted(n, a)))
                .collect(),
            woken: Vec::new(),
        };
        let mut seen: HashSet<&str> = HashSet::new();
        for &i in &fresh {
            for (d, t) in ids[i].1.iter().zip(batch[i].targets.iter()) {
                rows.d_ids.push(d.to_key().to_vec());
                rows.d_events.push(ids[i].0.to_key().to_vec());
                rows.d_targets.push(t.as_str());
                if seen.insert(t.as_str()) {
                    rows.woken.push(t);
                }
            }
        }
        rows
    }

    /// The statements that write the rows (`INSERT_EVENTS`,
    /// `INSERT_DELIVERIES` and `INSERT_INBOUND`, prepared), with their
    /// parameters; none for a table without rows.
    fn statements<'s>(
        &'s self,
        (events, deliveries, inbound): &'s (Statement, Statement, Statement),
    ) -> Vec<(&'s Statement, Vec<&'s (dyn ToSql + Sync)>)> {
        let mut out: Vec<(&Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::with_capacity(3);
        if !self.ev_ids.is_empty() {
            out.push((
                events,
                vec![&self.ev_ids, &self.received, &self.metas, &self.bodies],
            ));
        }
        if !self.d_ids.is_empty() {
            out.push((
                deliveries,
                vec![&self.d_ids, &self.d_events, &self.d_targets, &self.now],
            ));
        }
        out.push((inbound, vec![&self.in_ids, &self.records]));
        out
    }
}

/// Writes and commits one batch; the answers in the batch's order.
async fn commit(inner: &Arc<Inner>, batch: &[&NewEvent]) -> Result<Vec<Accepted>, Failure> {
    let now = now_ms();
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

    // synchronous_commit is on for every connection (`connect_config`).
    let mut client = inner.client().await.map_err(Failure::Store)?;
    let (answers, rows) = if first_of.is_empty() {
        // Nothing can be a duplicate: the whole batch in one round trip.
        let answers = answers_of(&ids, &fates);
        let rows = Rows::new(inner, batch, &ids, &answers, now);
        let statements = (
            client.prepare_cached(INSERT_EVENTS).await?,
            client.prepare_cached(INSERT_DELIVERIES).await?,
            client.prepare_cached(INSERT_INBOUND).await?,
        );
        let statements = rows.statements(&statements);
        let statements: Vec<_> = statements.iter().map(|(s, p)| (*s, &p[..])).collect();
        pipeline::one_trip(&client, pipeline::DURABLE, &statements).await?;
        (answers, rows)
    } else {
        // The dedup keys first: which events are duplicates is the
        // server's answer, so the rest waits for it.
        let tx = client.transaction().await?;
        claim_keys(
            &tx,
            &first_of,
            &ids,
            now + inner.retention_ms,
            now,
            &mut fates,
        )
        .await?;
        let answers = answers_of(&ids, &fates);
        let rows = Rows::new(inner, batch, &ids, &answers, now);
        let statements = (
            tx.prepare_cached(INSERT_EVENTS).await?,
            tx.prepare_cached(INSERT_DELIVERIES).await?,
            tx.prepare_cached(INSERT_INBOUND).await?,
        );
        for (statement, params) in rows.statements(&statements) {
            tx.execute(statement, &params).await?;
        }
        tx.commit().await?;
        (answers, rows)
    };
    let woken = &rows.woken;
    let delivered = rows.d_ids.len();
    inner.moved(None, Some(State::Pending), delivered as i64);
    inner.wake(woken.iter().copied());
    // The fleet is told after the commit, in a statement of its own: a
    // transaction that notifies holds the server's notify lock through its
    // commit, which would make every relay's commits wait on each other.
    // The batch is answered without waiting for it.
    if inner.config.listen && !woken.is_empty() {
        wake::tell(inner, client, woken);
    }
    Ok(answers)
}

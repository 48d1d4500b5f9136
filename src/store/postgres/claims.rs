//! Claims and the changes of a delivery's state.
//!
//! A claim is one `UPDATE` that takes pending rows (picked `FOR UPDATE
//! SKIP LOCKED`, so relays claiming at once never wait on each other or
//! take the same row) in flight, with this relay as owner, a fresh claim
//! token and a lease. The token stays in memory with the relay; `finish`
//! and `release` write only where it still matches, so once a lease has
//! run out and another relay has the delivery, the old owner's outcome is
//! refused ([`StoreError::ClaimLost`]) instead of overwriting the new one.
//!
//! Leases are renewed while held ([`renew`]); lapsed ones go back to
//! pending, due now ([`reap`], from `maintain` and the poller).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Row;

use super::{col, delivery_row, outcomes, pipeline, state_code, to_json, Cached, Inner, DELIVERY};
use crate::store::{
    now_ms, Attempt, Claimed, Delivery, DeliveryId, Event, EventId, Next, State, StoreError,
    PREFETCH_BODY_BYTES,
};

/// Most lapsed leases taken back by one statement.
const REAP_BATCH: i64 = 1000;
/// Most deliveries one step of `cancel_all` cancels.
const CANCEL_STEP: i64 = 1000;

fn key(id: DeliveryId) -> Vec<u8> {
    id.to_key().to_vec()
}

impl Inner {
    fn lease_until(&self, now: u64) -> i64 {
        (now + self.config.lease.as_millis() as u64) as i64
    }

    fn hold(&self, ids: impl IntoIterator<Item = DeliveryId>, token: i64) {
        let mut claims = self.claims.lock().expect("lock poisoned");
        for id in ids {
            claims.insert(id, token);
        }
    }

    fn token(&self, id: DeliveryId) -> Option<i64> {
        self.claims.lock().expect("lock poisoned").remove(&id)
    }

    /// Tells the fleet (and this relay) that `targets` have work due now.
    /// Best effort: the poller finds the work anyway.
    pub(super) async fn announce(&self, targets: &[String]) {
        if targets.is_empty() {
            return;
        }
        self.wake(targets);
        if !self.config.listen {
            return;
        }
        if let Ok(c) = self.client().await {
            self.notify(&c, targets).await;
        }
    }
}

/// In-flight deliveries went back to pending (`rows`: their targets):
/// counted, and the fleet told.
async fn back_to_pending(inner: &Inner, rows: &[Row]) -> Result<(), StoreError> {
    inner.moved(
        Some(State::InFlight),
        Some(State::Pending),
        rows.len() as i64,
    );
    inner.announce(&targets_of(rows)?).await;
    Ok(())
}

/// The distinct targets of the returned rows' first column.
fn targets_of(rows: &[Row]) -> Result<Vec<String>, StoreError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for row in rows {
        let t: String = col(row, 0, "deliveries")?;
        if seen.insert(t.clone()) {
            out.push(t);
        }
    }
    Ok(out)
}

// === the scheduler's reads ===

/// Every target with pending deliveries and its earliest due time: one
/// index probe per target (a loose index scan), not a read of every row.
pub(super) async fn pending_targets(inner: &Inner) -> Result<Vec<(String, u64)>, StoreError> {
    let c = inner.client().await?;
    let rows = c
        .rows(
            "WITH RECURSIVE t AS ( \
               (SELECT target, next_at_ms FROM deliveries WHERE state = 0 \
                ORDER BY target, next_at_ms LIMIT 1) \
               UNION ALL \
               SELECT n.target, n.next_at_ms FROM t CROSS JOIN LATERAL \
                 (SELECT target, next_at_ms FROM deliveries \
                  WHERE state = 0 AND target > t.target \
                  ORDER BY target, next_at_ms LIMIT 1) n \
             ) SELECT target, next_at_ms FROM t",
            &[],
        )
        .await
        .map_err(|e| inner.db(e))?;
    rows.iter()
        .map(|r| {
            Ok((
                col(r, 0, "deliveries")?,
                col::<i64>(r, 1, "deliveries")? as u64,
            ))
        })
        .collect()
}

pub(super) async fn due_for(
    inner: &Inner,
    target: &str,
    now: u64,
    limit: usize,
) -> Result<Vec<(u64, DeliveryId)>, StoreError> {
    let c = inner.client().await?;
    let rows = c
        .rows(
            "SELECT next_at_ms, id FROM deliveries \
             WHERE target = $1 AND state = 0 AND next_at_ms <= $2 \
             ORDER BY next_at_ms, id LIMIT $3",
            &[&target, &(now as i64), &(limit as i64)],
        )
        .await
        .map_err(|e| inner.db(e))?;
    rows.iter()
        .map(|r| {
            let id = DeliveryId::from_key(col::<&[u8]>(r, 1, "deliveries")?)
                .ok_or_else(|| super::corrupt("deliveries", "bad id"))?;
            Ok((col::<i64>(r, 0, "deliveries")? as u64, id))
        })
        .collect()
}

pub(super) async fn next_due(inner: &Inner, target: &str) -> Result<Option<u64>, StoreError> {
    let c = inner.client().await?;
    let row = c
        .row(
            "SELECT min(next_at_ms) FROM deliveries WHERE target = $1 AND state = 0",
            &[&target],
        )
        .await
        .map_err(|e| inner.db(e))?;
    Ok(col::<Option<i64>>(&row, 0, "deliveries")?.map(|v| v as u64))
}

pub(super) async fn due_entries(
    inner: &Inner,
    limit: usize,
) -> Result<Vec<(String, u64, DeliveryId)>, StoreError> {
    let c = inner.client().await?;
    let rows = c
        .rows(
            "SELECT target, next_at_ms, id FROM deliveries WHERE state = 0 \
             ORDER BY target, next_at_ms, id LIMIT $1",
            &[&(limit as i64)],
        )
        .await
        .map_err(|e| inner.db(e))?;
    rows.iter()
        .map(|r| {
            let id = DeliveryId::from_key(col::<&[u8]>(r, 2, "deliveries")?)
                .ok_or_else(|| super::corrupt("deliveries", "bad id"))?;
            Ok((
                col(r, 0, "deliveries")?,
                col::<i64>(r, 1, "deliveries")? as u64,
                id,
            ))
        })
        .collect()
}

// === claims ===

pub(super) async fn claim(
    inner: &Inner,
    target: &str,
    at: u64,
    id: DeliveryId,
) -> Result<Option<Delivery>, StoreError> {
    let token = rand::random::<i64>();
    let now = now_ms();
    let c = inner.client().await?;
    let row = c
        .row_opt(
            &format!(
                "UPDATE deliveries SET state = 1, owner = $1, claim_token = $2, lease_until_ms = $3 \
                 WHERE id = $4 AND target = $5 AND state = 0 AND next_at_ms = $6 \
                 RETURNING {DELIVERY}"
            ),
            &[
                &inner.instance,
                &token,
                &inner.lease_until(now),
                &key(id),
                &target,
                &(at as i64),
            ],
        )
        .await
        .map_err(|e| inner.db(e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (_, d) = delivery_row(&row)?;
    inner.hold([id], token);
    inner.moved(Some(State::Pending), Some(State::InFlight), 1);
    Ok(Some(d))
}

/// Claims up to `limit` of `target`'s due deliveries (with their events,
/// bodies up to [`PREFETCH_BODY_BYTES`]), skipping rows
/// another relay is claiming at this moment, and no more than leave
/// `concurrency` of the target's in flight across the fleet. The count and
/// the claim run under the target's advisory lock, in statements after it
/// (a statement's snapshot is taken when it starts), so two relays cannot
/// both count the same room.
pub(super) async fn claim_due(
    inner: &Inner,
    target: &str,
    now: u64,
    limit: usize,
    concurrency: usize,
) -> Result<Claimed, StoreError> {
    if limit == 0 {
        return Ok(Claimed::default());
    }
    let token = rand::random::<i64>();
    let c = inner.client().await?;
    let lock = c
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtext($1))")
        .await
        .map_err(|e| inner.db(e))?;
    let update = c
        .prepare_cached(&format!(
            "WITH room AS ( \
               SELECT greatest(0, least($6, $7 - (SELECT count(*) FROM deliveries \
                 WHERE target = $4 AND state = 1))) AS n), \
             c AS (SELECT id FROM deliveries \
               WHERE target = $4 AND state = 0 AND next_at_ms <= $5 \
               ORDER BY next_at_ms LIMIT (SELECT n FROM room) FOR UPDATE SKIP LOCKED), \
             u AS (UPDATE deliveries d SET state = 1, owner = $1, claim_token = $2, lease_until_ms = $3 \
               FROM c WHERE d.id = c.id \
               RETURNING {}) \
             SELECT u.*, e.meta, CASE WHEN octet_length(e.body) <= $8 THEN e.body END \
             FROM u LEFT JOIN events e ON e.id = u.event",
            prefixed("d")
        ))
        .await
        .map_err(|e| inner.db(e))?;
    let next = c
        .prepare_cached("SELECT min(next_at_ms) FROM deliveries WHERE target = $1 AND state = 0")
        .await
        .map_err(|e| inner.db(e))?;
    let lock_name = format!("hookrelay:{}:claim:{target}", inner.config.schema);
    let lease_until = inner.lease_until(now_ms());
    let now = now as i64;
    let limit = limit as i64;
    let concurrency = concurrency.min(i64::MAX as usize) as i64;
    // One round trip: the lock is held only while the server runs the
    // count and the claim, never while the relay is between statements.
    let mut answers = pipeline::one_trip(
        &c,
        pipeline::LAZY,
        &[
            (&lock, &[&lock_name]),
            (
                &update,
                &[
                    &inner.instance,
                    &token,
                    &lease_until,
                    &target,
                    &now,
                    &limit,
                    &concurrency,
                    &(PREFETCH_BODY_BYTES as i32),
                ],
            ),
            // After the claim, in its transaction: what is left pending.
            (&next, &[&target]),
        ],
    )
    .await
    .map_err(|e| inner.db(e))?;
    let next_due = match answers.pop().unwrap_or_default().first() {
        Some(row) => col::<Option<i64>>(row, 0, "deliveries")?.map(|v| v as u64),
        None => None,
    };
    let rows = answers.pop().unwrap_or_default();
    let mut out = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    // The event's columns follow the delivery's.
    let event_at = DELIVERY.split(", ").count();
    for row in &rows {
        let (id, d) = delivery_row(row)?;
        if let Some(event) = prefetched(row, event_at, d.event) {
            events.push(event);
        }
        out.push((d.next_at_ms, id, d));
    }
    out.sort_by_key(|(at, id, _)| (*at, *id));
    inner.hold(out.iter().map(|(_, id, _)| *id), token);
    inner.moved(
        Some(State::Pending),
        Some(State::InFlight),
        out.len() as i64,
    );
    Ok(Claimed {
        looked: out.len(),
        deliveries: out,
        events,
        next_due: Some(next_due),
    })
}

/// The event a claim's row carries from column `at` (its meta, and its
/// body when small enough); none when it has no body there or the event
/// is gone (the attempt then reads it, and says so).
fn prefetched(row: &Row, at: usize, id: EventId) -> Option<Event> {
    let meta: Option<serde_json::Value> = row.try_get(at).ok()?;
    let body: Option<Vec<u8>> = row.try_get(at + 1).ok()?;
    Some(Event {
        id,
        meta: serde_json::from_value(meta?).ok()?,
        body: body?.into(),
    })
}

/// [`DELIVERY`]'s columns of the table called `alias`.
fn prefixed(alias: &str) -> String {
    DELIVERY
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) async fn finish(
    inner: &Inner,
    id: DeliveryId,
    attempt: &Attempt,
    next: Next,
) -> Result<Delivery, StoreError> {
    // Taken out now: if the write fails, the claim is not renewed, its
    // lease runs out and the delivery is tried again.
    let token = inner
        .token(id)
        .ok_or_else(|| StoreError::ClaimLost(id.to_string()))?;
    let (state, at) = match next {
        Next::Succeeded => (State::Succeeded, None),
        Next::Dead => (State::Dead, None),
        Next::RetryAt(at) => (State::Pending, Some(at as i64)),
    };
    let (done, answer) = tokio::sync::oneshot::channel();
    let outcome = outcomes::Outcome {
        id,
        token,
        state,
        at,
        record: to_json(attempt),
        done,
    };
    outcomes::write(inner, outcome, answer).await
}

pub(super) async fn release(inner: &Inner, id: DeliveryId, at: u64) -> Result<(), StoreError> {
    let Some(token) = inner.token(id) else {
        // Not held by this relay: nothing to give back.
        return Ok(());
    };
    let c = inner.client().await?;
    let rows = c
        .rows(
            "UPDATE deliveries SET state = 0, next_at_ms = $3, \
               owner = NULL, claim_token = NULL, lease_until_ms = NULL \
             WHERE id = $1 AND state = 1 AND claim_token = $2 RETURNING target",
            &[&key(id), &token, &(at as i64)],
        )
        .await
        .map_err(|e| inner.db(e))?;
    drop(c);
    back_to_pending(inner, &rows).await?;
    Ok(())
}

// === repair ===

pub(super) async fn requeue(
    inner: &Inner,
    id: DeliveryId,
    note: &str,
) -> Result<Option<Delivery>, StoreError> {
    let c = inner.client().await?;
    let row = c
        .row_opt(
            &format!(
                "UPDATE deliveries d SET state = 0, next_at_ms = $2, base = d.attempts, note = $3, \
                   owner = NULL, claim_token = NULL, lease_until_ms = NULL \
                 FROM (SELECT id, state AS was FROM deliveries WHERE id = $1 FOR UPDATE) o \
                 WHERE d.id = o.id AND d.state <> 1 \
                 RETURNING {}, o.was",
                prefixed("d")
            ),
            &[&key(id), &(now_ms() as i64), &note],
        )
        .await
        .map_err(|e| inner.db(e))?;
    let Some(row) = row else {
        // In flight (left alone) or unknown.
        let row = c
            .row_opt(
                &format!("SELECT {DELIVERY} FROM deliveries WHERE id = $1"),
                &[&key(id)],
            )
            .await
            .map_err(|e| inner.db(e))?;
        return row.map(|r| delivery_row(&r).map(|(_, d)| d)).transpose();
    };
    drop(c);
    let (_, d) = delivery_row(&row)?;
    let was = super::state_of(col(&row, 9, "deliveries")?)?;
    inner.moved(Some(was), Some(State::Pending), 1);
    inner.announce(std::slice::from_ref(&d.target)).await;
    Ok(Some(d))
}

pub(super) async fn requeue_batch(
    inner: &Inner,
    state: State,
    target: Option<&str>,
    from: Option<DeliveryId>,
    limit: usize,
) -> Result<(usize, Option<DeliveryId>), StoreError> {
    let from = from.map(key).unwrap_or_default();
    let c = inner.client().await?;
    let picked = c
        .rows(
            "SELECT id FROM deliveries \
             WHERE state = $1 AND ($2::text IS NULL OR target = $2) AND id > $3 \
             ORDER BY id LIMIT $4",
            &[&state_code(state), &target, &from, &(limit as i64)],
        )
        .await
        .map_err(|e| inner.db(e))?;
    let ids: Vec<Vec<u8>> = picked
        .iter()
        .map(|r| col(r, 0, "deliveries"))
        .collect::<Result<_, _>>()?;
    let next = if ids.len() == limit {
        ids.last().and_then(|k| DeliveryId::from_key(k))
    } else {
        None
    };
    let rows = c
        .rows(
            "UPDATE deliveries SET state = 0, next_at_ms = $3, base = attempts, \
               note = 're-queued in bulk' \
             WHERE id = ANY($1) AND state = $2 AND state <> 1 RETURNING target",
            &[&ids, &state_code(state), &(now_ms() as i64)],
        )
        .await
        .map_err(|e| inner.db(e))?;
    drop(c);
    inner.moved(Some(state), Some(State::Pending), rows.len() as i64);
    inner.announce(&targets_of(&rows)?).await;
    Ok((rows.len(), next))
}

pub(super) async fn cancel(
    inner: &Inner,
    id: DeliveryId,
    reason: &str,
) -> Result<bool, StoreError> {
    let c = inner.client().await?;
    let row = c
        .row_opt(
            "UPDATE deliveries d SET state = 4, note = $2, \
               owner = NULL, claim_token = NULL, lease_until_ms = NULL \
             FROM (SELECT id, state AS was FROM deliveries WHERE id = $1 FOR UPDATE) o \
             WHERE d.id = o.id AND d.state IN (0, 1) RETURNING o.was",
            &[&key(id), &reason],
        )
        .await
        .map_err(|e| inner.db(e))?;
    let Some(row) = row else {
        return Ok(false);
    };
    let was = super::state_of(col(&row, 0, "deliveries")?)?;
    inner.token(id);
    inner.moved(Some(was), Some(State::Cancelled), 1);
    Ok(true)
}

pub(super) async fn cancel_all(
    inner: &Inner,
    target: &str,
    reason: &str,
) -> Result<usize, StoreError> {
    let c = inner.client().await?;
    let mut total = 0;
    loop {
        let n = c
            .exec(
                "UPDATE deliveries SET state = 4, note = $2 WHERE id IN \
                 (SELECT id FROM deliveries WHERE target = $1 AND state = 0 LIMIT $3 \
                  FOR UPDATE SKIP LOCKED)",
                &[&target, &reason, &CANCEL_STEP],
            )
            .await
            .map_err(|e| inner.db(e))?;
        total += n as usize;
        inner.moved(Some(State::Pending), Some(State::Cancelled), n as i64);
        if (n as i64) < CANCEL_STEP {
            return Ok(total);
        }
    }
}

// === leases ===

/// Takes back deliveries whose lease has run out (their relay died or
/// lost the database): pending again, due now, and the fleet is told.
pub(super) async fn reap(inner: &Inner) -> Result<usize, StoreError> {
    let now = now_ms() as i64;
    let c = inner.client().await?;
    let rows = c
        .rows(
            "UPDATE deliveries SET state = 0, next_at_ms = $1, \
               owner = NULL, claim_token = NULL, lease_until_ms = NULL \
             WHERE id IN (SELECT id FROM deliveries WHERE state = 1 AND lease_until_ms < $1 \
                          LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING target",
            &[&now, &REAP_BATCH],
        )
        .await
        .map_err(|e| inner.db(e))?;
    drop(c);
    if rows.is_empty() {
        return Ok(0);
    }
    tracing::warn!(
        deliveries = rows.len(),
        "deliveries whose claim lapsed are pending again"
    );
    back_to_pending(inner, &rows).await?;
    Ok(rows.len())
}

/// Renews the leases of the claims this relay holds, every quarter lease,
/// until the store is dropped.
pub(super) async fn renew(inner: Arc<Inner>) {
    let every = (inner.config.lease / 4).max(Duration::from_millis(10));
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let held: Vec<Vec<u8>> = inner
            .claims
            .lock()
            .expect("lock poisoned")
            .keys()
            .map(|id| key(*id))
            .collect();
        if held.is_empty() {
            continue;
        }
        let result = async {
            let c = inner.client().await?;
            c.exec(
                "UPDATE deliveries SET lease_until_ms = $1 \
                 WHERE id = ANY($2) AND owner = $3 AND state = 1",
                &[&inner.lease_until(now_ms()), &held, &inner.instance],
            )
            .await
            .map_err(|e| inner.db(e))
        }
        .await;
        match result {
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "cannot renew the leases of claimed deliveries");
            }
            Ok(_) => failing = false,
            Err(_) => {}
        }
    }
}

/// Gives every claim this relay holds back to the fleet (at close).
pub(super) async fn give_back_all(inner: &Inner) -> Result<usize, StoreError> {
    let held: Vec<Vec<u8>> = inner
        .claims
        .lock()
        .expect("lock poisoned")
        .drain()
        .map(|(id, _)| key(id))
        .collect();
    if held.is_empty() {
        return Ok(0);
    }
    let c = inner.client().await?;
    let rows = c
        .rows(
            "UPDATE deliveries SET state = 0, next_at_ms = $1, \
               owner = NULL, claim_token = NULL, lease_until_ms = NULL \
             WHERE id = ANY($2) AND owner = $3 AND state = 1 RETURNING target",
            &[&(now_ms() as i64), &held, &inner.instance],
        )
        .await
        .map_err(|e| inner.db(e))?;
    drop(c);
    back_to_pending(inner, &rows).await?;
    Ok(rows.len())
}

// === fleet-wide limits ===

/// Takes up to `want` tokens of `target`'s bucket. The bucket fills at
/// `per_second` up to `burst`, by the database's clock (one clock for the
/// whole fleet); a new bucket starts full.
pub(super) async fn take_tokens(
    inner: &Inner,
    target: &str,
    per_second: u32,
    burst: u32,
    want: u32,
) -> Result<crate::store::Tokens, StoreError> {
    const NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";
    let c = inner.client().await?;
    let (rate, burst, want) = (per_second as f64, burst as f64, want as f64);
    for _ in 0..2 {
        let row = c
            .row_opt(
                &format!(
                    "WITH b AS ( \
                       SELECT least($2::float8, tokens + greatest(0, {NOW} - updated_at_ms) \
                         * $3::float8 / 1000.0) AS avail \
                       FROM buckets WHERE target = $1 FOR UPDATE) \
                     UPDATE buckets SET tokens = b.avail - least(floor(b.avail), $4::float8), \
                       updated_at_ms = {NOW} \
                     FROM b WHERE buckets.target = $1 \
                     RETURNING least(floor(b.avail), $4::float8), b.avail"
                ),
                &[&target, &burst, &rate, &want],
            )
            .await
            .map_err(|e| inner.db(e))?;
        let Some(row) = row else {
            c.exec(
                &format!(
                    "INSERT INTO buckets (target, tokens, updated_at_ms) VALUES ($1, $2, {NOW}) \
                     ON CONFLICT (target) DO NOTHING"
                ),
                &[&target, &burst],
            )
            .await
            .map_err(|e| inner.db(e))?;
            continue;
        };
        let granted: f64 = col(&row, 0, "buckets")?;
        let avail: f64 = col(&row, 1, "buckets")?;
        let next_in_ms = if granted >= 1.0 {
            0
        } else {
            (((1.0 - avail).max(0.0) / rate.max(1e-3)) * 1000.0).ceil() as u64
        };
        return Ok(crate::store::Tokens {
            granted: granted.max(0.0) as u32,
            next_in_ms,
        });
    }
    Err(StoreError::Io(format!("no token bucket for {target}")))
}

pub(super) async fn set_circuit(
    inner: &Inner,
    target: &str,
    open_until_ms: u64,
) -> Result<(), StoreError> {
    let c = inner.client().await?;
    if open_until_ms == 0 {
        c.exec("DELETE FROM circuits WHERE target = $1", &[&target])
            .await
    } else {
        c.exec(
            "INSERT INTO circuits (target, open_until_ms) VALUES ($1, $2) \
             ON CONFLICT (target) DO UPDATE SET open_until_ms = excluded.open_until_ms",
            &[&target, &(open_until_ms as i64)],
        )
        .await
    }
    .map_err(|e| inner.db(e))?;
    Ok(())
}

pub(super) async fn circuits(inner: &Inner) -> Result<Vec<(String, u64)>, StoreError> {
    let c = inner.client().await?;
    let rows = c
        .rows("SELECT target, open_until_ms FROM circuits", &[])
        .await
        .map_err(|e| inner.db(e))?;
    rows.iter()
        .map(|r| {
            Ok((
                col(r, 0, "circuits")?,
                col::<i64>(r, 1, "circuits")?.max(0) as u64,
            ))
        })
        .collect()
}

//! Attempt outcomes written in batches: the deliveries that finish at the
//! same moment are recorded (the delivery's new state and its attempt
//! record) by one statement, in one transaction of one round trip, which
//! commits without waiting for the WAL flush ([`pipeline::LAZY`]).
//!
//! Each outcome still carries its claim token: only the deliveries whose
//! token still matches are written, the others are answered
//! [`StoreError::ClaimLost`], as one at a time would be. A batch the
//! server refuses is written again one outcome at a time, so that one
//! outcome the server cannot take fails alone. A failed outcome is
//! answered with the error; its claim is no longer renewed, so its lease
//! runs out and the delivery is tried again.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{delivery_row, next_batch, pipeline, state_code, Failure, Inner, DELIVERY};
use crate::store::{Delivery, DeliveryId, State, StoreError};

/// Most outcomes written by one statement.
const MAX_BATCH: usize = 256;
/// Outcomes waiting for a writer, at most.
pub(super) const QUEUE: usize = 4096;
/// Batches written at once.
pub(super) const WRITERS: usize = 2;

pub(super) struct Outcome {
    pub(super) id: DeliveryId,
    pub(super) token: i64,
    pub(super) state: State,
    /// The next attempt's time, for a delivery that goes back to pending.
    pub(super) at: Option<i64>,
    pub(super) record: serde_json::Value,
    pub(super) done: oneshot::Sender<Result<Delivery, StoreError>>,
}

/// Queues `outcome` for a writer and waits until it is written.
pub(super) async fn write(
    inner: &Inner,
    outcome: Outcome,
    answer: oneshot::Receiver<Result<Delivery, StoreError>>,
) -> Result<Delivery, StoreError> {
    let sender = inner
        .outcomes
        .lock()
        .expect("lock poisoned")
        .clone()
        .ok_or(StoreError::Closed)?;
    sender.send(outcome).await.map_err(|_| StoreError::Closed)?;
    answer.await.map_err(|_| StoreError::Closed)?
}

/// Takes whatever is waiting (up to [`MAX_BATCH`]), writes it, answers
/// each outcome; until the queue is closed and empty.
pub(super) async fn writer(
    inner: Arc<Inner>,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Outcome>>>,
) {
    while let Some(batch) = next_batch(&queue, MAX_BATCH, usize::MAX, |_: &Outcome| 0).await {
        match written(&inner, &batch).await {
            Ok(mut written) => answer(&inner, batch, &mut written),
            // Out of reach, or nothing to split: every outcome fails.
            Err(e)
                if batch.len() == 1
                    || matches!(e, StoreError::Unavailable(_) | StoreError::Closed) =>
            {
                for o in batch {
                    let _ = o.done.send(Err(e.clone()));
                }
            }
            Err(e) => {
                // The server refused the batch, perhaps for one outcome in
                // it: each is written alone, so only that one fails.
                tracing::debug!(error = %e, outcomes = batch.len(), "a batch of outcomes was refused; writing them one at a time");
                for o in batch {
                    match written(&inner, std::slice::from_ref(&o)).await {
                        Ok(mut w) => answer(&inner, vec![o], &mut w),
                        Err(e) => {
                            let _ = o.done.send(Err(e));
                        }
                    }
                }
            }
        }
    }
    inner.batcher_stopped();
}

/// [`record`], once more after a lost deadlock; the error as the store
/// reports it.
async fn written(
    inner: &Inner,
    batch: &[Outcome],
) -> Result<HashMap<DeliveryId, Delivery>, StoreError> {
    let mut result = record(inner, batch).await;
    if matches!(&result, Err(Failure::Conflict)) {
        // Lost a deadlock to another relay's change of the same rows:
        // nothing was written; once more.
        result = record(inner, batch).await;
    }
    result.map_err(|f| match f {
        Failure::Conflict => {
            StoreError::Io("the outcomes conflicted twice with another relay's changes".into())
        }
        Failure::Store(e) => inner.failed(e),
    })
}

/// Answers each outcome of `batch`: its delivery as written, or
/// [`StoreError::ClaimLost`] where its claim no longer held.
fn answer(inner: &Inner, batch: Vec<Outcome>, written: &mut HashMap<DeliveryId, Delivery>) {
    for o in batch {
        let answer = written
            .remove(&o.id)
            .ok_or_else(|| StoreError::ClaimLost(o.id.to_string()));
        if let Ok(d) = &answer {
            inner.moved(Some(State::InFlight), Some(d.state), 1);
        }
        let _ = o.done.send(answer);
    }
}

/// Writes `batch`; the deliveries written, by id.
async fn record(
    inner: &Inner,
    batch: &[Outcome],
) -> Result<HashMap<DeliveryId, Delivery>, Failure> {
    let mut sorted: Vec<&Outcome> = batch.iter().collect();
    // Rows locked in the same order by every writer.
    sorted.sort_by_key(|o| o.id);
    let ids: Vec<Vec<u8>> = sorted.iter().map(|o| o.id.to_key().to_vec()).collect();
    let tokens: Vec<i64> = sorted.iter().map(|o| o.token).collect();
    let states: Vec<i16> = sorted.iter().map(|o| state_code(o.state)).collect();
    let ats: Vec<Option<i64>> = sorted.iter().map(|o| o.at).collect();
    let records: Vec<&serde_json::Value> = sorted.iter().map(|o| &o.record).collect();
    let c = inner.client().await.map_err(Failure::Store)?;
    let statement = c
        .prepare_cached(&format!(
            "WITH o AS (SELECT * FROM unnest($1::bytea[], $2::int8[], $3::int2[], $4::int8[], $5::jsonb[]) \
               AS o(id, token, state, at, last)), \
             d AS (UPDATE deliveries d SET state = o.state, attempts = d.attempts + 1, \
                 next_at_ms = coalesce(o.at, d.next_at_ms), last = o.last, \
                 owner = NULL, claim_token = NULL, lease_until_ms = NULL \
               FROM o WHERE d.id = o.id AND d.state = 1 AND d.claim_token = o.token \
               RETURNING d.*), \
             a AS (INSERT INTO attempts (delivery, n, record) SELECT id, attempts, last FROM d) \
             SELECT {DELIVERY} FROM d"
        ))
        .await?;
    let mut answers = pipeline::one_trip(
        &c,
        pipeline::LAZY,
        &[(&statement, &[&ids, &tokens, &states, &ats, &records])],
    )
    .await?;
    let mut written = HashMap::with_capacity(batch.len());
    for row in answers.pop().unwrap_or_default() {
        match delivery_row(&row) {
            Ok((id, d)) => {
                written.insert(id, d);
            }
            Err(e) => tracing::error!(error = %e, "an outcome was written but cannot be read back"),
        }
    }
    Ok(written)
}

//! Group commit: every event waiting at the moment is written in one
//! transaction and made durable with one sync.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use ::sled::transaction::ConflictableTransactionError;
use ::sled::Transactional;
use tokio::sync::oneshot;

use crate::store::sled::keys::{chunk_key, dedup_key, due_key, encode, encode_event, BODY_CHUNK};
use crate::store::sled::{tx_error, Sled};
use crate::store::{
    now_ms, Accepted, Delivery, DeliveryId, EventId, Inbound, NewEvent, Outcome, State, StoreError,
};

/// Most events written in one commit.
const MAX_BATCH: usize = 256;

impl Sled {
    /// Hands the event to the committer, which writes it (and every other
    /// event waiting at that moment) in one transaction, flushes, and syncs
    /// the log file to the disk. Only `Ok` may be acknowledged to the sender.
    pub(super) async fn accept(&self, new: NewEvent) -> Result<Accepted, StoreError> {
        // The event, and a delivery record and index entry per target.
        let bytes = new.body.len() as u64 + 512 * (1 + new.targets.len() as u64);
        self.check_room(bytes)?;
        let (done, answer) = oneshot::channel();
        {
            let commits = self.commits.lock().expect("lock poisoned");
            let sender = commits.as_ref().ok_or(StoreError::Closed)?;
            sender
                .send(Waiting { new, done })
                .map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes a batch of events and their deliveries in one transaction,
    /// then makes it durable. On a failed flush the batch is taken back
    /// out, so nothing in it is delivered either.
    fn commit(&self, batch: &[NewEvent]) -> Result<Vec<Accepted>, String> {
        struct Prepared<'a> {
            id: EventId,
            deliveries: Vec<DeliveryId>,
            targets: &'a [String],
            value: Vec<u8>,
            body: &'a [u8],
            dedup: Option<Vec<u8>>,
        }
        let now = now_ms();
        let expiry = now + self.retention.as_millis() as u64;
        let prepared: Vec<Prepared> = batch
            .iter()
            .map(|new| {
                let (id, deliveries) = self.next_ids(new.targets.len());
                Prepared {
                    id,
                    deliveries,
                    targets: &new.targets,
                    value: encode_event(&new.meta, &new.body),
                    body: &new.body,
                    dedup: new.dedup.as_ref().map(|(r, k)| dedup_key(r, k)),
                }
            })
            .collect();
        let trees = (
            &self.events,
            &self.deliveries,
            &self.due,
            &self.dedup,
            &self.bodies,
        );
        let result = trees.transaction(|(events, deliveries, due, dedup_tree, bodies)| {
            let mut out = Vec::with_capacity(prepared.len());
            for p in &prepared {
                if let Some(k) = &p.dedup {
                    if let Some(first) = live_dedup(dedup_tree.get(k)?, now) {
                        out.push(Accepted {
                            id: first,
                            deliveries: 0,
                            duplicate: true,
                        });
                        continue;
                    }
                    let mut v = p.id.to_key().to_vec();
                    v.extend_from_slice(&expiry.to_be_bytes());
                    dedup_tree.insert(k.as_slice(), v)?;
                }
                events.insert(&p.id.to_key(), p.value.as_slice())?;
                if p.body.len() > BODY_CHUNK {
                    for (n, chunk) in p.body.chunks(BODY_CHUNK).enumerate() {
                        bodies.insert(&chunk_key(p.id, n as u32), chunk)?;
                    }
                }
                for (did, target) in p.deliveries.iter().zip(p.targets) {
                    let d = Delivery {
                        event: p.id,
                        target: target.clone(),
                        state: State::Pending,
                        attempts: 0,
                        next_at_ms: now,
                        last: None,
                        note: None,
                        base: 0,
                    };
                    deliveries.insert(&did.to_key(), encode(&d))?;
                    due.insert(due_key(target, now, *did), &[])?;
                }
                out.push(Accepted {
                    id: p.id,
                    deliveries: p.deliveries.len(),
                    duplicate: false,
                });
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(out)
        });
        let accepted = result.map_err(|e| tx_error(e).to_string())?;
        // The inbound log records go with the batch's sync; they need no
        // transaction (nothing reads them to decide anything).
        let mut logged = Vec::with_capacity(batch.len());
        for (new, a) in batch.iter().zip(&accepted) {
            let id = self.next_ids(0).0 .0;
            let record = Inbound {
                at_ms: new.meta.received_at_ms,
                source: new.meta.source.clone(),
                method: "POST".into(),
                path: new.path.clone(),
                route: Some(new.meta.route.clone()),
                event_type: Some(new.meta.event_type.clone()),
                outcome: if a.duplicate {
                    Outcome::Duplicate
                } else {
                    Outcome::Accepted
                },
                status: 202,
                code: None,
                reason: None,
                deliveries: a.deliveries,
                event: Some(a.id),
            };
            if self
                .inbound
                .insert(id.0.to_be_bytes(), encode(&record))
                .is_ok()
            {
                logged.push(id.0.to_be_bytes());
            }
        }
        if let Err(e) = self.sync() {
            for key in logged {
                let _ = self.inbound.remove(key);
            }
            // Not acknowledged: take the batch back out so it is not
            // delivered either, if the store still takes that.
            for (p, a) in prepared.iter().zip(&accepted) {
                if a.duplicate {
                    continue;
                }
                let _ = self.events.remove(p.id.to_key());
                let _ = self.remove_body(p.id);
                for (did, target) in p.deliveries.iter().zip(p.targets) {
                    let _ = self.deliveries.remove(did.to_key());
                    let _ = self.due.remove(due_key(target, now, *did));
                }
                if let Some(k) = &p.dedup {
                    let _ = self.dedup.remove(k);
                }
            }
            return Err(e.to_string());
        }
        for a in &accepted {
            for _ in 0..a.deliveries {
                self.counts.moved(None, Some(State::Pending));
            }
        }
        self.committed_at_ms.store(now_ms(), Ordering::Relaxed);
        // Counted first, then claimable: the pending gauge never dips.
        if let Some(last) = prepared.iter().filter_map(|p| p.deliveries.last()).max() {
            self.mark_durable(*last);
        }
        self.shared.wake(
            prepared
                .iter()
                .zip(&accepted)
                .filter(|(_, a)| !a.duplicate)
                .flat_map(|(p, _)| p.targets.iter()),
        );
        Ok(accepted)
    }
}

/// An event waiting for the committer, and where its answer goes.
pub(super) struct Waiting {
    new: NewEvent,
    done: oneshot::Sender<Result<Accepted, StoreError>>,
}

/// The group-commit loop: takes every event queued so far (up to
/// `MAX_BATCH`), writes them in one transaction, makes that durable once,
/// and answers them all. Ends when the store is closed or dropped.
pub(super) fn committer(store: std::sync::Weak<Sled>, rx: mpsc::Receiver<Waiting>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter().take(MAX_BATCH - 1));
        let Some(store) = store.upgrade() else {
            return;
        };
        let (events, answers): (Vec<NewEvent>, Vec<_>) =
            waiting.into_iter().map(|w| (w.new, w.done)).unzip();
        let started = Instant::now();
        let result = store.commit(&events);
        store
            .shared
            .flush_duration
            .observe(started.elapsed().as_secs_f64());
        store.shared.flush_batch.observe(events.len() as f64);
        store.flushes.fetch_add(1, Ordering::Relaxed);
        store
            .flushed_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        match result {
            Ok(accepted) => {
                for (done, a) in answers.into_iter().zip(accepted) {
                    let _ = done.send(Ok(a));
                }
                store.shared.new_work.notify_one();
            }
            Err(e) => {
                // sled refuses every write after a failed one; the store
                // takes no more until it has been opened again.
                store.fail(&StoreError::Commit(e.clone()));
                tracing::error!(error = %e, events = events.len(), "store commit failed; the events are refused");
                for done in answers {
                    let _ = done.send(Err(StoreError::Commit(e.clone())));
                }
            }
        }
    }
}

/// The first event of a dedup entry that has not expired at `now`.
fn live_dedup(entry: Option<sled::IVec>, now: u64) -> Option<EventId> {
    let v = entry?;
    let expiry = u64::from_be_bytes(v.get(16..24)?.try_into().ok()?);
    (expiry > now).then(|| EventId::from_key(&v)).flatten()
}

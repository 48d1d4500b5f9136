//! Group commit: every event waiting at the moment is written in one
//! transaction and made durable with one sync.
//!
//! An event for many targets (more than [`INLINE_FANOUT`]) is written with
//! its targets in a few `fanout` chunks instead of a delivery record and an
//! index entry per target, so its 202 costs about what a small event's
//! does. The committer then writes the deliveries of the first
//! [`EXPAND_STEP`] targets of a chunk per transaction, writing back the
//! rest of the chunk (or removing it) in the same transaction (a crash
//! leaves either both or neither), between commits: a commit that comes
//! waits for one step's deliveries at most. Delivery ids were kept for
//! them at ingest (`id_block`), so they still follow the event's id.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use ::sled::transaction::ConflictableTransactionError;
use ::sled::Transactional;
use tokio::sync::oneshot;

use crate::store::sled::keys::{
    chunk_key, decode, dedup_key, due_key, encode, encode_event, BODY_CHUNK,
};
use crate::store::sled::{tx_error, Sled};
use crate::store::{
    now_ms, Accepted, Delivery, DeliveryId, EventId, Inbound, NewEvent, State, StoreError,
};

/// Most events written in one commit.
const MAX_BATCH: usize = 256;
/// Events for more targets than this are written with `fanout` chunks.
pub(super) const INLINE_FANOUT: usize = 64;
/// Most bytes of target ids in one chunk: about a hundred targets, so
/// that writing back the rest of a chunk after each step is short.
const CHUNK_BYTES: usize = 2 * 1024;
/// Deliveries written from a chunk per transaction: a commit that comes
/// meanwhile waits for this many (a whole chunk's took 8 ms at the median
/// while 2,500 deliveries a second went out).
const EXPAND_STEP: usize = 16;

/// A run of an event's targets whose deliveries are still to be written.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FanoutChunk {
    /// The place of the chunk's first target among the event's targets:
    /// its delivery id is the event's id + 1 + `first`.
    first: u32,
    targets: Vec<String>,
}

/// `event id ‖ chunk number` in the `fanout` tree.
fn fanout_key(id: EventId, n: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&id.to_key());
    k[16..].copy_from_slice(&n.to_be_bytes());
    k
}

/// A [`FanoutChunk`] as it is written: its targets borrowed from the event.
#[derive(serde::Serialize)]
struct ChunkOut<'a> {
    first: u32,
    targets: &'a [String],
}

/// `targets` in chunks of at most [`CHUNK_BYTES`], encoded: written in
/// the commit's transaction, so encoded before it.
fn chunks(targets: &[String]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, t) in targets.iter().enumerate() {
        if i > start && bytes + t.len() > CHUNK_BYTES {
            out.push(chunk_out(targets, start, i));
            (start, bytes) = (i, 0);
        }
        bytes += t.len();
    }
    if start < targets.len() {
        out.push(chunk_out(targets, start, targets.len()));
    }
    out
}

fn chunk_out(targets: &[String], start: usize, end: usize) -> Vec<u8> {
    encode(&ChunkOut {
        first: start as u32,
        targets: &targets[start..end],
    })
}

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
            /// The encoded `fanout` chunks, for more than `INLINE_FANOUT`.
            chunks: Vec<Vec<u8>>,
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
                    chunks: if new.targets.len() > INLINE_FANOUT {
                        chunks(&new.targets)
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        let trees = (
            &self.events,
            &self.deliveries,
            &self.due,
            &self.dedup,
            &self.bodies,
            &self.fanout,
        );
        let result = trees.transaction(|(events, deliveries, due, dedup_tree, bodies, fanout)| {
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
                if p.targets.len() > INLINE_FANOUT {
                    for (n, chunk) in p.chunks.iter().enumerate() {
                        fanout.insert(&fanout_key(p.id, n as u32), chunk.as_slice())?;
                    }
                } else {
                    for (did, target) in p.deliveries.iter().zip(p.targets) {
                        deliveries.insert(&did.to_key(), encode(&pending(p.id, target, now)))?;
                        due.insert(due_key(target, now, *did), &[])?;
                    }
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
            let record = Inbound::accepted(new, a);
            if self
                .inbound
                .insert(id.0.to_be_bytes(), encode(&record))
                .is_ok()
            {
                logged.push(id.0.to_be_bytes());
            }
        }
        self.inbound_len.add(logged.len() as i64);
        if let Err(e) = self.sync() {
            self.inbound_len.add(-(logged.len() as i64));
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
                if p.targets.len() > INLINE_FANOUT {
                    for n in 0..p.chunks.len() {
                        let _ = self.fanout.remove(fanout_key(p.id, n as u32));
                    }
                    continue;
                }
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
        let inline =
            |(p, a): &(&Prepared, &Accepted)| !a.duplicate && p.targets.len() <= INLINE_FANOUT;
        // New ids sort after every delivery a count after an unclean stop
        // reads, so these always count.
        let counted = self.counts.transition();
        for (p, _) in prepared.iter().zip(&accepted).filter(inline) {
            for id in &p.deliveries {
                counted.moved(*id, None, Some(State::Pending));
            }
        }
        drop(counted);
        self.committed_at_ms.store(now_ms(), Ordering::Relaxed);
        // Counted first, then claimable: the pending gauge never dips.
        if let Some(last) = prepared
            .iter()
            .zip(&accepted)
            .filter(inline)
            .filter_map(|(p, _)| p.deliveries.last())
            .max()
        {
            self.mark_durable(*last);
        }
        self.shared.wake(
            prepared
                .iter()
                .zip(&accepted)
                .filter(inline)
                .flat_map(|(p, _)| p.targets.iter()),
        );
        Ok(accepted)
    }
}

/// A new delivery of `event` to `target`, pending and due at `now`.
fn pending(event: EventId, target: &str, now: u64) -> Delivery {
    Delivery {
        event,
        target: target.to_string(),
        state: State::Pending,
        attempts: 0,
        next_at_ms: now,
        last: None,
        note: None,
        base: 0,
    }
}

impl Sled {
    /// Whether some event's deliveries are still to be written.
    pub(super) fn fanout_pending(&self) -> bool {
        !self.fanout.is_empty()
    }

    /// Whether `event` still has deliveries to be written.
    pub(super) fn expanding(&self, event: EventId) -> Result<bool, StoreError> {
        Ok(self
            .fanout
            .scan_prefix(event.to_key())
            .next()
            .transpose()?
            .is_some())
    }

    /// Writes the deliveries of the first [`EXPAND_STEP`] targets of the
    /// first `fanout` chunk and writes back the rest of the chunk, or
    /// removes it, in one transaction; how many deliveries.
    pub(super) fn expand_one(&self) -> Result<usize, StoreError> {
        let Some((key, value)) = self.fanout.first()? else {
            return Ok(0);
        };
        let Some(event) = EventId::from_key(&key[..16.min(key.len())]) else {
            self.fanout.remove(key)?;
            return Ok(0);
        };
        let mut chunk: FanoutChunk = decode("fanout", &value)?;
        let now = now_ms();
        let rest = chunk
            .targets
            .split_off(EXPAND_STEP.min(chunk.targets.len()));
        let rest = (!rest.is_empty()).then(|| {
            encode(&FanoutChunk {
                first: chunk.first + chunk.targets.len() as u32,
                targets: rest,
            })
        });
        let ids: Vec<DeliveryId> = (0..chunk.targets.len() as u128)
            .map(|i| DeliveryId(ulid::Ulid(event.0 .0 + 1 + chunk.first as u128 + i)))
            .collect();
        // A chunk left by the last run has ids a count may still read.
        let counted = self.counts.transition();
        (&self.deliveries, &self.due, &self.fanout)
            .transaction(|(deliveries, due, fanout)| {
                for (did, target) in ids.iter().zip(&chunk.targets) {
                    deliveries.insert(&did.to_key(), encode(&pending(event, target, now)))?;
                    due.insert(due_key(target, now, *did), &[])?;
                }
                match &rest {
                    Some(rest) => fanout.insert(&key, rest.as_slice())?,
                    None => fanout.remove(&key)?,
                };
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        for id in &ids {
            counted.moved(*id, None, Some(State::Pending));
        }
        drop(counted);
        if let Some(last) = ids.last() {
            self.mark_durable(*last);
        }
        self.shared.wake(chunk.targets.iter());
        self.shared.new_work.notify_one();
        Ok(ids.len())
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
    loop {
        // Deliveries of large fan-outs are written between commits; with
        // none to write, wait for the next event.
        let expanding = store.upgrade().is_some_and(|s| s.fanout_pending());
        let first = if expanding {
            match rx.try_recv() {
                Ok(w) => Some(w),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(w) => Some(w),
                Err(_) => return,
            }
        };
        let Some(first) = first else {
            let Some(store) = store.upgrade() else {
                return;
            };
            if let Err(e) = store.expand_one() {
                store.fail(&e);
                return;
            }
            continue;
        };
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

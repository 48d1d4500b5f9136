//! The durable store: one sled `Db` with the trees of DESIGN.md (and a
//! `bodies` tree for bodies over 64 KiB; see docs/STORAGE.md).
//!
//! Invariants:
//! - An event and all its deliveries (and their `due` entries, its dedup
//!   key and its body chunks) are written in one transaction.
//! - `accept` returns only after that transaction, sled's flush and an
//!   `fdatasync` of sled's log have returned, so a 202 built on it survives
//!   `kill -9` and power loss. Concurrent accepts share one transaction and
//!   one sync (group commit, on the `committer` thread).
//! - No value is larger than 64 KiB plus a header, so sled never puts one
//!   in its (unsynced) blob files.
//! - Every pending delivery has a `due` entry; `due` keys start with the
//!   target, so each target's deliveries form one run in due order. An
//!   entry whose delivery is no longer pending at that time is stale, and
//!   the claim that meets it removes it.
//! - Deliveries found `in_flight` at open are put back to `pending` and due now.
//! - Values carry a version byte; keys are big-endian so ranges sort by time.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{oneshot, Notify};

use crate::config::StoreConfig;

mod queries;
mod records;

pub use records::*;
use records::{
    attempt_key, chunk_key, decode, decode_event, dedup_key, due_key, due_prefix, encode,
    encode_event, parse_due_key, BODY_CHUNK,
};

/// The on-disk layout this code reads and writes.
const SCHEMA_VERSION: u8 = 1;
/// The first byte of every value.
const VALUE_VERSION: u8 = 1;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(#[from] sled::Error),
    #[error("store is full: {used} bytes on disk, limit {limit}")]
    Full { used: u64, limit: u64 },
    #[error(
        "store at {path} has schema version {found}; this hookrelay reads version {SCHEMA_VERSION}"
    )]
    Schema { path: String, found: u8 },
    #[error("corrupt record in tree `{tree}`: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    #[error("the store is shutting down")]
    Closed,
    #[error("store commit failed: {0}")]
    Commit(String),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// === Store ===

/// Most events written in one commit.
const MAX_BATCH: usize = 256;

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    db: sled::Db,
    events: sled::Tree,
    deliveries: sled::Tree,
    due: sled::Tree,
    attempts: sled::Tree,
    dedup: sled::Tree,
    /// Bodies over `BODY_CHUNK`, in chunks.
    bodies: sled::Tree,
    subscriptions: sled::Tree,
    meta: sled::Tree,
    ids: Mutex<ulid::Generator>,
    commits: Mutex<Option<mpsc::Sender<Waiting>>>,
    /// sled's log file, synced after every commit.
    log: std::fs::File,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Woken after each flush that made new deliveries durable.
    pub new_work: Arc<Notify>,
    retention: Duration,
    path: std::path::PathBuf,
    max_disk_bytes: u64,
    disk_bytes: AtomicU64,
    writable: AtomicBool,
    /// Flushes done, and events they covered (for metrics and tests).
    pub flushes: AtomicU64,
    pub flushed_events: AtomicU64,
    /// Events per flush, and how long each flush took (seconds).
    pub flush_batch: Histogram,
    pub flush_duration: Histogram,
    /// Deliveries by state, kept up to date by every transition.
    counts: StateCounts,
}

/// How many deliveries are in each state.
#[derive(Default)]
struct StateCounts([AtomicI64; 5]);

impl StateCounts {
    fn moved(&self, from: Option<State>, to: Option<State>) {
        if from == to {
            return;
        }
        if let Some(f) = from {
            self.0[f.index()].fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(t) = to {
            self.0[t.index()].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Store {
    /// Opens (or creates) the store, checks its schema version, and puts
    /// deliveries that a crash left in flight back to pending.
    pub fn open(config: &StoreConfig) -> Result<Arc<Store>, StoreError> {
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(Some(500))
            .open()?;
        check_schema(&db, &config.path)?;
        // sled keeps its log in `<path>/db`; any handle on it can sync it.
        let log = std::fs::File::open(config.path.join("db")).map_err(sled::Error::Io)?;
        let store = Arc::new(Store {
            log,
            events: db.open_tree("events")?,
            deliveries: db.open_tree("deliveries")?,
            due: db.open_tree("due")?,
            attempts: db.open_tree("attempts")?,
            dedup: db.open_tree("dedup")?,
            bodies: db.open_tree("bodies")?,
            subscriptions: db.open_tree("subscriptions")?,
            meta: db.open_tree("meta")?,
            ids: Mutex::new(ulid::Generator::new()),
            commits: Mutex::new(None),
            committer: Mutex::new(None),
            new_work: Arc::new(Notify::new()),
            retention: config.retention,
            max_disk_bytes: config.max_disk_bytes,
            disk_bytes: AtomicU64::new(0),
            path: config.path.clone(),
            writable: AtomicBool::new(true),
            flushes: AtomicU64::new(0),
            flushed_events: AtomicU64::new(0),
            flush_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            flush_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            counts: StateCounts::default(),
            db,
        });
        store.recover()?;
        for item in store.deliveries.iter().values() {
            let d: Delivery = decode("deliveries", &item?)?;
            store.counts.moved(None, Some(d.state));
        }
        store.db.flush()?;
        store.refresh_disk_usage();
        let (tx, rx) = mpsc::channel();
        let weak = Arc::downgrade(&store);
        let handle = std::thread::Builder::new()
            .name("hookrelay-commit".into())
            .spawn(move || committer(weak, rx))
            .map_err(|e| StoreError::Io(sled::Error::Io(e)))?;
        *store.commits.lock().expect("lock poisoned") = Some(tx);
        *store.committer.lock().expect("lock poisoned") = Some(handle);
        Ok(store)
    }

    /// In-flight deliveries back to pending, due now.
    fn recover(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let mut n = 0;
        for item in self.deliveries.iter() {
            let (k, v) = item?;
            let mut d: Delivery = decode("deliveries", &v)?;
            if d.state != State::InFlight {
                continue;
            }
            let Some(id) = DeliveryId::from_key(&k) else {
                continue;
            };
            d.state = State::Pending;
            d.next_at_ms = now;
            self.deliveries.insert(k, encode(&d))?;
            self.due.insert(due_key(&d.target, now, id), &[])?;
            n += 1;
        }
        if n > 0 {
            tracing::info!(
                deliveries = n,
                "requeued deliveries left in flight by the last run"
            );
        }
        Ok(n)
    }

    /// An event id and `n` delivery ids, consecutive in id order, so an
    /// event's deliveries sit next to each other in the `deliveries` tree
    /// and no other id sorts between the event and its first delivery.
    fn next_ids(&self, n: usize) -> (EventId, Vec<DeliveryId>) {
        let mut g = self.ids.lock().expect("lock poisoned");
        // The generator only fails when 2^80 ids are asked for in one
        // millisecond; a fresh ULID then still sorts after the last one.
        let mut next = || g.generate().unwrap_or_else(|_| ulid::Ulid::new());
        let event = EventId(next());
        let deliveries = (0..n).map(|_| DeliveryId(next())).collect();
        (event, deliveries)
    }

    /// Refuses writes the store might not be able to keep.
    fn check_room(&self) -> Result<(), StoreError> {
        if !self.writable.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        let used = self.disk_bytes.load(Ordering::Relaxed);
        if self.max_disk_bytes > 0 && used >= self.max_disk_bytes {
            return Err(StoreError::Full {
                used,
                limit: self.max_disk_bytes,
            });
        }
        Ok(())
    }

    /// Re-reads the store's size on disk (the janitor calls this periodically).
    pub fn refresh_disk_usage(&self) -> u64 {
        let used = dir_size(&self.path);
        self.disk_bytes.store(used, Ordering::Relaxed);
        used
    }

    /// Hands the event to the committer, which writes it (and every other
    /// event waiting at that moment) in one transaction, flushes, and syncs
    /// the log file to the disk. Only `Ok` may be acknowledged to the sender.
    pub async fn accept(&self, new: NewEvent) -> Result<Accepted, StoreError> {
        self.check_room()?;
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
        if let Err(e) = self.sync() {
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
        Ok(accepted)
    }

    /// Flushes sled's buffers and then syncs the log file itself: sled's own
    /// flush only asks the kernel to write the range out (`sync_file_range`),
    /// which survives a crash of the process but not of the machine.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log
            .sync_data()
            .map_err(|e| StoreError::Io(sled::Error::Io(e)))
    }

    /// `target`'s deliveries due at or before `now_ms`, earliest first.
    pub fn due_for(
        &self,
        target: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeliveryId)>, StoreError> {
        let start = due_prefix(target);
        let mut end = start.clone();
        end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
        let mut out = Vec::new();
        for item in self.due.range(start..end).keys().take(limit) {
            if let Some((_, at, id)) = parse_due_key(&item?) {
                out.push((at, id));
            }
        }
        Ok(out)
    }

    /// When `target`'s earliest pending delivery is due.
    pub fn next_due(&self, target: &str) -> Result<Option<u64>, StoreError> {
        let Some(item) = self.due.scan_prefix(due_prefix(target)).keys().next() else {
            return Ok(None);
        };
        Ok(parse_due_key(&item?).map(|(_, at, _)| at))
    }

    /// The first `limit` entries of the `due` index: (target, due at, delivery).
    pub fn due_entries(&self, limit: usize) -> Result<Vec<(String, u64, DeliveryId)>, StoreError> {
        let mut out = Vec::new();
        for item in self.due.iter().keys().take(limit) {
            if let Some((t, at, id)) = parse_due_key(&item?) {
                out.push((t.to_string(), at, id));
            }
        }
        Ok(out)
    }

    /// Every target that has pending deliveries.
    pub fn due_targets(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut from = Vec::new();
        while let Some(item) = self.due.range(from.clone()..).keys().next() {
            let k = item?;
            let Some((target, _, _)) = parse_due_key(&k) else {
                // Not a key of ours: step past it.
                from = k.to_vec();
                from.push(0);
                continue;
            };
            out.push(target.to_string());
            from = due_prefix(target);
            // 0 ends the prefix; 1 sorts after every key with this prefix.
            *from.last_mut().expect("prefix ends in 0") = 1;
        }
        Ok(out)
    }

    /// Takes a pending delivery for an attempt: `in_flight`, off the `due`
    /// index. `None` if it is no longer pending at `at_ms`.
    ///
    /// Not a transaction (each sled transaction costs a log write of its
    /// own): the delivery is swapped to `in_flight` first, then the index
    /// entry goes. A crash in between leaves a stale index entry next to an
    /// in-flight delivery; `recover` requeues the delivery and a later claim
    /// drops the stale entry.
    pub fn claim(
        &self,
        target: &str,
        at_ms: u64,
        id: DeliveryId,
    ) -> Result<Option<Delivery>, StoreError> {
        let key = id.to_key();
        let index = due_key(target, at_ms, id);
        let Some(v) = self.deliveries.get(key)? else {
            self.due.remove(index)?;
            return Ok(None);
        };
        let mut d: Delivery = decode("deliveries", &v)?;
        if d.state != State::Pending || d.next_at_ms != at_ms {
            self.due.remove(index)?;
            return Ok(None);
        }
        d.state = State::InFlight;
        if self
            .deliveries
            .compare_and_swap(key, Some(v), Some(encode(&d)))?
            .is_err()
        {
            // Changed meanwhile (re-queued or cancelled by hand): not ours.
            return Ok(None);
        }
        self.due.remove(index)?;
        self.counts
            .moved(Some(State::Pending), Some(State::InFlight));
        Ok(Some(d))
    }

    /// Records attempt number `d.attempts + 1` and what follows it.
    ///
    /// Not a transaction (see `claim`): the attempt record and, for a retry,
    /// the new index entry are written first, then the delivery is swapped
    /// to its new state. A crash before the swap leaves the delivery in
    /// flight, so it is attempted again after restart (at least once), and
    /// any index entry written early is dropped by the next claim.
    pub fn finish(
        &self,
        id: DeliveryId,
        attempt: &Attempt,
        next: Next,
    ) -> Result<Delivery, StoreError> {
        let key = id.to_key();
        loop {
            let Some(v) = self.deliveries.get(key)? else {
                return Err(StoreError::Corrupt {
                    tree: "deliveries",
                    reason: format!("{id} vanished while in flight"),
                });
            };
            let mut d: Delivery = decode("deliveries", &v)?;
            let was = d.state;
            d.attempts += 1;
            d.last = Some(attempt.clone());
            self.attempts
                .insert(attempt_key(id, d.attempts), encode(attempt))?;
            match next {
                Next::Succeeded => d.state = State::Succeeded,
                Next::Dead => d.state = State::Dead,
                Next::RetryAt(at) => {
                    d.state = State::Pending;
                    d.next_at_ms = at;
                    self.due.insert(due_key(&d.target, at, id), &[])?;
                }
            }
            if self
                .deliveries
                .compare_and_swap(key, Some(v), Some(encode(&d)))?
                .is_ok()
            {
                self.counts.moved(Some(was), Some(d.state));
                return Ok(d);
            }
            // Changed by hand meanwhile: read it again and record on top.
        }
    }

    /// Changes one delivery in a transaction, keeping the `due` index and
    /// the state counts in step with it; `change` returns false to leave the
    /// delivery as it is. Returns whether it changed and the delivery as it
    /// now is; `None` if there is no such delivery.
    pub(super) fn change(
        &self,
        id: DeliveryId,
        change: impl Fn(&mut Delivery) -> bool,
    ) -> Result<Option<(bool, Delivery)>, StoreError> {
        let key = id.to_key();
        let result = (&self.deliveries, &self.due).transaction(|(deliveries, due)| {
            let Some(v) = deliveries.get(key)? else {
                return Ok(None);
            };
            let mut d: Delivery =
                decode("deliveries", &v).map_err(ConflictableTransactionError::Abort)?;
            let (was, was_due) = (d.state, due_key(&d.target, d.next_at_ms, id));
            if !change(&mut d) {
                return Ok(Some((was, false, d)));
            }
            if was == State::Pending {
                due.remove(was_due)?;
            }
            if d.state == State::Pending {
                due.insert(due_key(&d.target, d.next_at_ms, id), &[])?;
            }
            deliveries.insert(&key, encode(&d))?;
            Ok(Some((was, true, d)))
        });
        let Some((was, changed, d)) = result.map_err(tx_error)? else {
            return Ok(None);
        };
        if changed {
            self.counts.moved(Some(was), Some(d.state));
        }
        Ok(Some((changed, d)))
    }

    /// Puts an in-flight delivery back to pending at `at_ms` without counting
    /// an attempt (used when shutdown interrupts it before it was sent).
    pub fn release(&self, id: DeliveryId, at_ms: u64) -> Result<(), StoreError> {
        self.change(id, |d| {
            if d.state != State::InFlight {
                return false;
            }
            d.state = State::Pending;
            d.next_at_ms = at_ms;
            true
        })?;
        Ok(())
    }

    /// How many deliveries are in `state` now.
    pub fn count(&self, state: State) -> i64 {
        self.counts.0[state.index()].load(Ordering::Relaxed)
    }

    /// The store's size on disk at the last check (every second).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }

    pub fn event(&self, id: EventId) -> Result<Option<Event>, StoreError> {
        let Some(v) = self.events.get(id.to_key())? else {
            return Ok(None);
        };
        let (meta, inline, chunked) = decode_event(&v)?;
        let body = if chunked {
            let mut body = Vec::new();
            for chunk in self.bodies.scan_prefix(id.to_key()).values() {
                body.extend_from_slice(&chunk?);
            }
            Bytes::from(body)
        } else {
            Bytes::copy_from_slice(inline)
        };
        Ok(Some(Event { id, meta, body }))
    }

    /// Removes the chunks of an event's body, if it has any.
    fn remove_body(&self, id: EventId) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.bodies.scan_prefix(id.to_key()).keys() {
            batch.remove(key?);
        }
        self.bodies.apply_batch(batch)?;
        Ok(())
    }

    pub fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        self.deliveries
            .get(id.to_key())?
            .map(|v| decode("deliveries", &v))
            .transpose()
    }

    /// Every delivery of `event`, in creation order.
    pub fn deliveries_of(&self, event: EventId) -> Result<Vec<(DeliveryId, Delivery)>, StoreError> {
        // An event's delivery ids directly follow its own id (`next_ids`), so
        // they are the run of deliveries starting at the event's key.
        let mut out = Vec::new();
        for item in self.deliveries.range(event.to_key()..) {
            let (k, v) = item?;
            let d: Delivery = decode("deliveries", &v)?;
            if d.event != event {
                break;
            }
            if let Some(id) = DeliveryId::from_key(&k) {
                out.push((id, d));
            }
        }
        Ok(out)
    }

    /// The attempts of a delivery, in order.
    pub fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>, StoreError> {
        self.attempts
            .scan_prefix(id.to_key())
            .values()
            .map(|v| decode("attempts", &v?))
            .collect()
    }

    /// Removes events received before `cutoff_ms` whose deliveries have all
    /// finished (succeeded or dead), with their deliveries and attempts,
    /// looking at no more than `limit` events. Returns how many it removed.
    pub fn purge(&self, cutoff_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.events.iter().keys().take(limit) {
            let Some(event) = EventId::from_key(&item?) else {
                continue;
            };
            if event.0.timestamp_ms() >= cutoff_ms {
                break;
            }
            let deliveries = self.deliveries_of(event)?;
            if deliveries
                .iter()
                .any(|(_, d)| matches!(d.state, State::Pending | State::InFlight))
            {
                continue;
            }
            let mut batch = sled::Batch::default();
            for (id, _) in &deliveries {
                for key in self.attempts.scan_prefix(id.to_key()).keys() {
                    batch.remove(key?);
                }
            }
            self.attempts.apply_batch(batch)?;
            let mut batch = sled::Batch::default();
            for (id, _) in &deliveries {
                batch.remove(&id.to_key());
            }
            self.deliveries.apply_batch(batch)?;
            for (_, d) in &deliveries {
                self.counts.moved(Some(d.state), None);
            }
            self.remove_body(event)?;
            self.events.remove(event.to_key())?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Drops dedup keys that have expired; returns how many.
    pub fn purge_dedup(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let mut removed = 0;
        for item in self.dedup.iter() {
            let (k, v) = item?;
            let expired = v
                .get(16..24)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")) <= now)
                .unwrap_or(true);
            if expired {
                self.dedup.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Writes and flushes a probe value: can the store take writes now?
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.check_room()?;
        self.meta.insert("ready_probe", &now_ms().to_be_bytes())?;
        self.sync()
    }

    /// Flushes once more and stops the committer; later accepts fail with `Closed`.
    pub fn close(&self) -> Result<(), StoreError> {
        self.writable.store(false, Ordering::Relaxed);
        self.commits.lock().expect("lock poisoned").take();
        if let Some(h) = self.committer.lock().expect("lock poisoned").take() {
            let _ = h.join();
        }
        self.sync()?;
        Ok(())
    }
}

/// Bytes used by the files under `dir` (sled keeps a flat tree: a log, a
/// snapshot or two, and a directory of blobs).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Io(e),
    }
}

fn check_schema(db: &sled::Db, path: &Path) -> Result<(), StoreError> {
    let meta = db.open_tree("meta")?;
    match meta.get("schema_version")? {
        None => {
            meta.insert("schema_version", &[SCHEMA_VERSION])?;
            Ok(())
        }
        Some(v) if v.as_ref() == [SCHEMA_VERSION] => Ok(()),
        Some(v) => Err(StoreError::Schema {
            path: path.display().to_string(),
            found: v.first().copied().unwrap_or(0),
        }),
    }
}

/// An event waiting for the committer, and where its answer goes.
struct Waiting {
    new: NewEvent,
    done: oneshot::Sender<Result<Accepted, StoreError>>,
}

/// The group-commit loop: takes every event queued so far (up to
/// `MAX_BATCH`), writes them in one transaction, makes that durable once,
/// and answers them all. Ends when the store is closed or dropped.
fn committer(store: std::sync::Weak<Store>, rx: mpsc::Receiver<Waiting>) {
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
            .flush_duration
            .observe(started.elapsed().as_secs_f64());
        store.flush_batch.observe(events.len() as f64);
        store.flushes.fetch_add(1, Ordering::Relaxed);
        store
            .flushed_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        match result {
            Ok(accepted) => {
                for (done, a) in answers.into_iter().zip(accepted) {
                    let _ = done.send(Ok(a));
                }
                store.new_work.notify_one();
            }
            Err(e) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Arc<Store> {
        Store::open(&StoreConfig {
            path: dir.to_path_buf(),
            ..StoreConfig::default()
        })
        .unwrap()
    }

    fn attempt(status: u16) -> Attempt {
        Attempt {
            at_ms: now_ms(),
            duration_ms: 1,
            status: Some(status),
            error: None,
            excerpt: String::new(),
        }
    }

    /// Claims the first due delivery and records one attempt with `next`.
    fn attempt_first(store: &Store, status: u16, next: Next) -> DeliveryId {
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
        }
    }

    #[tokio::test]
    async fn accept_claim_finish_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store
            .accept(new_event(&["r/a", "r/b"], None))
            .await
            .unwrap();
        assert_eq!(a.deliveries, 2);
        let ev = store.event(a.id).unwrap().unwrap();
        assert_eq!(&ev.body[..], b"{\"a\":1}");
        let due = store.due_entries(10).unwrap();
        assert_eq!(due.len(), 2);
        let (target, at, did) = due[0].clone();
        let d = store.claim(&target, at, did).unwrap().unwrap();
        assert_eq!(d.state, State::InFlight);
        assert!(
            store.claim(&target, at, did).unwrap().is_none(),
            "claimed twice"
        );
        assert_eq!(store.due_entries(10).unwrap().len(), 1);
        let attempt = Attempt {
            at_ms: now_ms(),
            duration_ms: 3,
            status: Some(500),
            error: None,
            excerpt: "no".into(),
        };
        let d = store
            .finish(did, &attempt, Next::RetryAt(at + 1000))
            .unwrap();
        assert_eq!((d.state, d.attempts), (State::Pending, 1));
        assert_eq!(store.attempts(did).unwrap(), vec![attempt]);
        assert_eq!(store.deliveries_of(a.id).unwrap().len(), 2);

        // The other one is left in flight by a "crash".
        let (target2, at2, did2) = {
            let (t, at, id) = store.due_entries(10).unwrap().remove(0);
            (t, at, id)
        };
        store.claim(&target2, at2, did2).unwrap().unwrap();
        store.close().unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.delivery(did2).unwrap().unwrap().state, State::Pending);
        assert_eq!(store.due_entries(10).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn dedup_returns_the_first_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store.accept(new_event(&["r/a"], Some("k1"))).await.unwrap();
        let b = store.accept(new_event(&["r/a"], Some("k1"))).await.unwrap();
        assert!(b.duplicate);
        assert_eq!(b.id, a.id);
        let c = store.accept(new_event(&["r/a"], Some("k2"))).await.unwrap();
        assert!(!c.duplicate);
        assert_eq!(store.due_entries(10).unwrap().len(), 2);
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

    #[tokio::test]
    async fn purge_removes_old_finished_events_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let done = store.accept(new_event(&["r/a"], Some("k"))).await.unwrap();
        let waiting = store.accept(new_event(&["r/a"], None)).await.unwrap();
        let did = attempt_first(&store, 200, Next::Succeeded);
        // Nothing is older than a cutoff in the past.
        assert_eq!(store.purge(done.id.0.timestamp_ms(), 100).unwrap(), 0);
        // Past both: the finished one goes, the pending one stays.
        let cutoff = now_ms() + 1;
        assert_eq!(store.purge(cutoff, 100).unwrap(), 1);
        assert!(store.event(done.id).unwrap().is_none());
        assert!(store.delivery(did).unwrap().is_none());
        assert!(store.attempts(did).unwrap().is_empty());
        assert!(store.event(waiting.id).unwrap().is_some());
        assert_eq!(store.deliveries_of(waiting.id).unwrap().len(), 1);
        // The dedup key has not expired, so it still answers.
        let again = store.accept(new_event(&["r/a"], Some("k"))).await.unwrap();
        assert!(again.duplicate);
    }

    #[test]
    fn another_schema_version_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
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
        assert_eq!(store.purge(now_ms() + 1, 10).unwrap(), 1);
        assert_eq!(store.bodies.iter().count(), 0);
    }

    #[tokio::test]
    async fn bulk_requeue_pages_through_every_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for _ in 0..5 {
            store.accept(new_event(&["r/a"], None)).await.unwrap();
            attempt_first(&store, 500, Next::Dead);
        }
        store.accept(new_event(&["r/b"], None)).await.unwrap();
        attempt_first(&store, 500, Next::Dead);
        let (mut total, mut from, mut batches) = (0, None, 0);
        loop {
            let (n, next) = store
                .requeue_batch(State::Dead, Some("r/a"), from, 2)
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
        assert_eq!(store.count(State::Dead), 1, "r/b is left alone");
        assert_eq!(store.count(State::Pending), 5);
        assert!(store
            .due_entries(10)
            .unwrap()
            .iter()
            .all(|(t, _, _)| t == "r/a"));
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
}

//! The embedded backend: one sled `Db` with the trees of DESIGN.md (and a
//! `bodies` tree for bodies over 64 KiB, and `stats` for the delivery
//! history; see docs/STORAGE.md).
//!
//! Invariants:
//! - An event and all its deliveries (and their `due` entries, its dedup
//!   key and its body chunks) are written in one transaction.
//! - `accept` returns only after that transaction, sled's flush and an
//!   `fdatasync` of sled's log have returned, so a 202 built on it survives
//!   `kill -9` and power loss. Concurrent accepts share one transaction and
//!   one sync (group commit, on the `committer` thread; `commit.rs`).
//! - No value is larger than 64 KiB plus a header, so sled never puts one
//!   in its (unsynced) blob files.
//! - Every pending delivery has a `due` entry; `due` keys start with the
//!   target, so each target's deliveries form one run in due order. An
//!   entry whose delivery is no longer pending at that time is stale, and
//!   the claim that meets it removes it.
//! - Claims live in memory: a claimed delivery stays `pending` on disk (with
//!   its `due` entry) until `finish` records the attempt, so a crash leaves
//!   nothing to repair and a restart reads no delivery to find claims.
//!   Queries show claimed ones `in_flight`. Deliveries an older version
//!   left `in_flight` on disk are put back to pending when counted.
//! - A clean close leaves the counts by state; only after a crash are the
//!   deliveries counted at open.
//! - Values carry a version byte; keys are big-endian so ranges sort by time
//!   (`keys.rs`).
//!
//! - A write sled fails (a full disk, an I/O error) leaves sled refusing
//!   every later write. The store then refuses new events at once (no sled
//!   call), and `maintain` opens it again, in the running process, as a
//!   restart would (in-flight deliveries back to pending); ingest resumes
//!   when there is room again (`space.rs`).
//!
//! sled's calls block. The quick ones (a claim, a read) run in place; those
//! that sync the log or scan many records run on tokio's blocking pool.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ::sled::transaction::TransactionError;
use async_trait::async_trait;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::Notify;

use crate::store::{
    now_ms, Accepted, Attempt, Counters, Delivery, DeliveryId, EndpointRecord, Event, EventId,
    Health, Inbound, InboundFilter, InboundId, InboundPage, NewEvent, Next, Page, Purged,
    Resolution, StatRow, State, Store, StoreConfig, StoreError,
};

mod commit;
mod counts;
mod deliveries;
mod keys;
mod queries;
mod space;
mod stats;
#[cfg(test)]
mod tests;

use commit::{committer, Waiting};
use counts::{StateCounts, COUNT_STEP};
use keys::{decode, due_key, encode};
use space::{Space, MIN_FREE_BYTES};

/// The on-disk layout this code reads and writes.
const SCHEMA_VERSION: u8 = 1;
/// The first byte of every value.
const VALUE_VERSION: u8 = 1;

impl From<::sled::Error> for StoreError {
    fn from(e: ::sled::Error) -> StoreError {
        match &e {
            ::sled::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                StoreError::DiskFull { free: 0 }
            }
            _ => StoreError::Io(e.to_string()),
        }
    }
}

/// The `meta` key a clean close leaves, with the counts by state.
const CLEAN_CLOSE: &str = "clean_close";
/// How long an open waits for sled's lock on its files.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How long a reopen waits for calls under way on the old store.
const REOPEN_WAIT: Duration = Duration::from_secs(5);
/// A commit within this long is as good as a probe.
const PROBE_AFTER_MS: u64 = 1000;
/// How often sled writes its buffers in the background. A commit's sync
/// writes whatever delivery outcomes are still buffered; written every
/// 100 ms, that stays small, so a 202 waits less behind deliveries.
const FLUSH_EVERY_MS: u64 = 100;

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// What outlives a reopen of the store: the scheduler's wake-up, metrics,
/// the room on disk, and whether the store was closed.
struct Shared {
    /// Woken after each flush that made new deliveries durable.
    new_work: Arc<Notify>,
    /// Events per flush, and how long each flush took (seconds).
    flush_batch: Histogram,
    flush_duration: Histogram,
    space: Space,
    closed: AtomicBool,
    /// When `maintain` last finished.
    checked_at_ms: AtomicU64,
    /// Targets that got work due now since the scheduler last asked.
    woken: Mutex<std::collections::HashSet<String>>,
    /// Never woken: only this relay's API changes endpoints here.
    endpoints_changed: Arc<Notify>,
}

impl Shared {
    /// `targets` have work due now: noted for the scheduler.
    fn wake<'a>(&self, targets: impl IntoIterator<Item = &'a String>) {
        let mut woken = self.woken.lock().expect("lock poisoned");
        for t in targets {
            if !woken.contains(t) {
                woken.insert(t.clone());
            }
        }
    }
}

impl Shared {
    fn new(config: &StoreConfig) -> Arc<Shared> {
        Arc::new(Shared {
            new_work: Arc::new(Notify::new()),
            flush_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            flush_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            space: Space::new(&config.path, config.max_disk_bytes),
            closed: AtomicBool::new(false),
            checked_at_ms: AtomicU64::new(now_ms()),
            woken: Mutex::new(std::collections::HashSet::new()),
            endpoints_changed: Arc::new(Notify::new()),
        })
    }
}

/// One open of the sled store; [`SledStore`] is its face to the relay.
struct Sled {
    shared: Arc<Shared>,
    db: sled::Db,
    events: sled::Tree,
    deliveries: sled::Tree,
    due: sled::Tree,
    attempts: sled::Tree,
    dedup: sled::Tree,
    /// Bodies over `BODY_CHUNK`, in chunks.
    bodies: sled::Tree,
    /// REST Hooks subscriptions of an older store, moved to `endpoints` at open.
    subscriptions: sled::Tree,
    endpoints: sled::Tree,
    /// The inbound log: one record per ingest request.
    inbound: sled::Tree,
    /// About how many records `inbound` holds: counted by the first trim
    /// (sled counts by reading the tree), then moved by every write.
    inbound_len: InboundLen,
    /// Delivery history: counts per series and minute or hour.
    stats: sled::Tree,
    /// Events whose deliveries are still to be written, in chunks of
    /// targets (`commit.rs`: a large fan-out is one small write at ingest).
    fanout: sled::Tree,
    meta: sled::Tree,
    /// The last id handed out (ids are ULIDs, as numbers).
    ids: Mutex<u128>,
    commits: Mutex<Option<mpsc::Sender<Waiting>>>,
    /// sled's log file, synced after every commit.
    log: std::fs::File,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    retention: Duration,
    /// Flushes done, and events they covered (for metrics and tests).
    flushes: AtomicU64,
    flushed_events: AtomicU64,
    /// When a commit last made events durable.
    committed_at_ms: AtomicU64,
    /// A write sled failed: it refuses every write from now on, so this
    /// open of the store takes no more (the reason is kept).
    broken: Mutex<Option<String>>,
    /// Where the last retention step stopped.
    purge_from: Mutex<Option<EventId>>,
    /// Deliveries claimed for an attempt, with the due time they were
    /// claimed at. Only here: on disk they stay pending until `finish`.
    claimed: Mutex<std::collections::HashMap<DeliveryId, u64>>,
    /// Deliveries by state, kept up to date by every transition, and read
    /// again in the background after an unclean stop (`counts.rs`).
    counts: StateCounts,
    /// That background count, while it runs.
    counter: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set by `stop`: the background count ends at its next step.
    stopping: AtomicBool,
    /// The highest delivery id known to be durable. A group commit's
    /// deliveries are in the trees (and visible) before its sync returns;
    /// until then none of them may be claimed, or a commit whose sync fails
    /// (and so was never acknowledged) could still be delivered. Ids only
    /// grow, so one mark covers every commit before it.
    durable: Mutex<u128>,
}

/// How many records the inbound log holds, once counted. Writes before the
/// count move it too, and the count then replaces them: a bound for the
/// trim, not a figure anyone reads.
#[derive(Default)]
struct InboundLen {
    len: AtomicI64,
    counted: std::sync::atomic::AtomicBool,
}

impl InboundLen {
    fn add(&self, n: i64) {
        self.len.fetch_add(n, Ordering::Relaxed);
    }

    /// The count, reading the tree the first time.
    fn get(&self, tree: &sled::Tree) -> usize {
        if !self.counted.swap(true, Ordering::Relaxed) {
            self.len.store(tree.len() as i64, Ordering::Relaxed);
        }
        usize::try_from(self.len.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

impl Sled {
    /// Opens (or creates) the store, checks its schema version, and puts
    /// deliveries that a crash left in flight back to pending.
    fn open(config: &StoreConfig, shared: Arc<Shared>) -> Result<Arc<Sled>, StoreError> {
        let started = Instant::now();
        create_private_dir(&config.path)?;
        let db = open_db(config)?;
        let sled_ms = started.elapsed().as_millis() as u64;
        make_private(&config.path);
        check_schema(&db, &config.path)?;
        // sled keeps its log in `<path>/db`; any handle on it can sync it.
        let log = std::fs::File::open(config.path.join("db")).map_err(io_error)?;
        let store = Arc::new(Sled {
            shared,
            log,
            events: db.open_tree("events")?,
            deliveries: db.open_tree("deliveries")?,
            due: db.open_tree("due")?,
            attempts: db.open_tree("attempts")?,
            dedup: db.open_tree("dedup")?,
            bodies: db.open_tree("bodies")?,
            subscriptions: db.open_tree("subscriptions")?,
            endpoints: db.open_tree("endpoints")?,
            inbound: db.open_tree("inbound")?,
            inbound_len: InboundLen::default(),
            stats: db.open_tree("stats")?,
            fanout: db.open_tree("fanout")?,
            meta: db.open_tree("meta")?,
            ids: Mutex::new(0),
            commits: Mutex::new(None),
            committer: Mutex::new(None),
            retention: config.retention,
            flushes: AtomicU64::new(0),
            flushed_events: AtomicU64::new(0),
            committed_at_ms: AtomicU64::new(0),
            broken: Mutex::new(None),
            purge_from: Mutex::new(None),
            claimed: Mutex::new(std::collections::HashMap::new()),
            counts: StateCounts::default(),
            counter: Mutex::new(None),
            stopping: AtomicBool::new(false),
            durable: Mutex::new(0),
            db,
        });
        // Everything written before this open is as durable as it gets, and
        // every id handed out from now on sorts after it.
        let last = store
            .deliveries
            .last()?
            .and_then(|(k, _)| DeliveryId::from_key(&k));
        if let Some(id) = last {
            store.mark_durable(id);
        }
        let last_event = store
            .events
            .last()?
            .and_then(|(k, _)| EventId::from_key(&k));
        *store.ids.lock().expect("lock poisoned") = last
            .map_or(0, |d| d.0 .0)
            .max(last_event.map_or(0, |e| e.0 .0));
        // A clean close left the counts; otherwise they are read again, in
        // the background (`counts.rs`).
        let counting = match store.meta.remove(CLEAN_CLOSE)? {
            Some(v) => {
                store.counts.set(decode("meta", &v)?);
                false
            }
            // A new store has nothing to count.
            None => match last {
                Some(end) => {
                    store.counts.start_reading(end.0 .0);
                    true
                }
                None => false,
            },
        };
        store.migrate_subscriptions()?;
        // The marker is gone for good before anything changes: a crash from
        // here on means counting at the next open.
        store.sync()?;
        let (tx, rx) = mpsc::channel();
        let weak = Arc::downgrade(&store);
        let handle = std::thread::Builder::new()
            .name("hookrelay-commit".into())
            .spawn(move || committer(weak, rx))
            .map_err(io_error)?;
        *store.commits.lock().expect("lock poisoned") = Some(tx);
        *store.committer.lock().expect("lock poisoned") = Some(handle);
        if counting {
            let weak = Arc::downgrade(&store);
            let handle = std::thread::Builder::new()
                .name("hookrelay-count".into())
                .spawn(move || count_in_background(weak))
                .map_err(io_error)?;
            *store.counter.lock().expect("lock poisoned") = Some(handle);
        }
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            sled_ms,
            counting,
            "store: opened"
        );
        Ok(store)
    }

    /// One step of the count after an unclean stop: reads the state of up
    /// to `COUNT_STEP` deliveries after `from`, up to `end`, with
    /// transitions held off. A delivery claimed now counts as in flight;
    /// one an older version left `in_flight` on disk is put back to
    /// pending, due now (this version keeps claims in memory: on disk a
    /// claimed delivery is still pending, so a crash needs no repair).
    /// Returns whether the count is done.
    fn count_step(&self, requeued: &mut usize) -> Result<bool, StoreError> {
        #[derive(serde::Deserialize)]
        struct StateOf {
            state: State,
        }
        self.counts.step(|from, end| {
            let start = match from {
                Some(u) => DeliveryId(ulid::Ulid(u + 1)).to_key(),
                None => [0; 16],
            };
            let end_key = DeliveryId(ulid::Ulid(end)).to_key();
            let mut states = Vec::with_capacity(COUNT_STEP);
            let mut last = None;
            for item in self.deliveries.range(start..=end_key).take(COUNT_STEP) {
                let (k, v) = item?;
                let Some(id) = DeliveryId::from_key(&k) else {
                    continue;
                };
                last = Some(id.0 .0);
                let StateOf { state } = decode("deliveries", &v)?;
                match state {
                    State::Pending if self.is_claimed(id) => states.push(State::InFlight),
                    State::InFlight => {
                        let now = now_ms();
                        let mut d: Delivery = decode("deliveries", &v)?;
                        d.state = State::Pending;
                        d.next_at_ms = now;
                        self.deliveries.insert(k, encode(&d))?;
                        self.due.insert(due_key(&d.target, now, id), &[])?;
                        self.shared.wake([&d.target]);
                        self.shared.new_work.notify_one();
                        states.push(State::Pending);
                        *requeued += 1;
                    }
                    s => states.push(s),
                }
            }
            Ok((states, last))
        })
    }

    /// An event id and `n` delivery ids, consecutive in id order, so an
    /// event's deliveries sit next to each other in the `deliveries` tree
    /// and no other id sorts between the event and its first delivery.
    fn next_ids(&self, n: usize) -> (EventId, Vec<DeliveryId>) {
        let event = self.id_block(n);
        let deliveries = (1..=n as u128)
            .map(|i| DeliveryId(ulid::Ulid(event.0 .0 + i)))
            .collect();
        (event, deliveries)
    }

    /// An event id `e` with `e + 1 ..= e + n` kept for its deliveries: a
    /// fresh ULID, or one past the last id handed out if that is later (the
    /// same millisecond, or a clock that stepped back). The random part
    /// (80 bits) makes room for any block.
    fn id_block(&self, n: usize) -> EventId {
        let mut last = self.ids.lock().expect("lock poisoned");
        let start = ulid::Ulid::new().0.max(*last + 1);
        *last = start + n as u128;
        EventId(ulid::Ulid(start))
    }

    /// Deliveries up to `id` are durable: they may be claimed.
    fn mark_durable(&self, id: DeliveryId) {
        let mut d = self.durable.lock().expect("lock poisoned");
        *d = (*d).max(id.0 .0);
    }

    /// Whether a delivery's commit has been synced.
    fn is_durable(&self, id: DeliveryId) -> bool {
        id.0 .0 <= *self.durable.lock().expect("lock poisoned")
    }

    /// Refuses writes the store might not be able to keep: when closed,
    /// broken, or short of room for about `bytes` more.
    fn check_room(&self, bytes: u64) -> Result<(), StoreError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        if let Some(reason) = self.broken() {
            return Err(StoreError::Unavailable(reason));
        }
        self.shared.space.admit(bytes)
    }

    /// Why this open of the store takes no more writes, if it does not.
    fn broken(&self) -> Option<String> {
        self.broken.lock().expect("lock poisoned").clone()
    }

    /// sled failed a write with `e`: nothing more is written through this
    /// open of the store (sled would refuse it anyway) until it is opened again.
    fn fail(&self, e: &StoreError) {
        let mut broken = self.broken.lock().expect("lock poisoned");
        if broken.is_none() {
            tracing::error!(error = %e, "store: a write failed; the store is opened again when it can be");
            *broken = Some(e.to_string());
        }
    }

    /// Flushes sled's buffers and then syncs the log file itself: sled's own
    /// flush only asks the kernel to write the range out (`sync_file_range`),
    /// which survives a crash of the process but not of the machine.
    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log.sync_data().map_err(io_error)
    }

    /// How many deliveries are in `state` now; `None` until counted.
    pub fn count(&self, state: State) -> Option<i64> {
        self.counts.get(state)
    }

    /// Writes and syncs a probe value, unless a commit did as much just now;
    /// a failure breaks this open of the store.
    fn probe(&self) {
        if self.broken().is_some()
            || now_ms().saturating_sub(self.committed_at_ms.load(Ordering::Relaxed))
                < PROBE_AFTER_MS
        {
            return;
        }
        let result = self
            .meta
            .insert("ready_probe", &now_ms().to_be_bytes())
            .map_err(StoreError::from)
            .and_then(|_| self.sync());
        if let Err(e) = result {
            self.fail(&e);
        }
    }

    /// Stops the committer: accepts from now on fail with `Closed`, and
    /// those it holds are answered first.
    fn stop(&self) {
        self.commits.lock().expect("lock poisoned").take();
        if let Some(h) = self.committer.lock().expect("lock poisoned").take() {
            let _ = h.join();
        }
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(h) = self.counter.lock().expect("lock poisoned").take() {
            let _ = h.join();
        }
    }

    /// Stops the committer, leaves the counts for the next open (claims
    /// in memory end here: on disk those deliveries are pending), and
    /// flushes once more.
    /// A count still under way leaves nothing, so the next open counts.
    pub fn close(&self) -> Result<(), StoreError> {
        self.stop();
        let counts = State::ALL.map(|s| self.count(s));
        if let (Some(pending), Some(in_flight)) = (
            counts[State::Pending.index()],
            counts[State::InFlight.index()],
        ) {
            let mut counts = counts.map(|c| c.unwrap_or(0));
            counts[State::Pending.index()] = pending + in_flight;
            counts[State::InFlight.index()] = 0;
            self.meta.insert(CLEAN_CLOSE, encode(&counts))?;
        }
        self.sync()
    }
}

/// The count after an unclean stop, step by step, until it is done, the
/// store is stopped, or a read fails (then the counts stay unknown, and the
/// next open counts again).
fn count_in_background(store: std::sync::Weak<Sled>) {
    let started = Instant::now();
    let mut requeued = 0;
    loop {
        let Some(store) = store.upgrade() else {
            return;
        };
        if store.stopping.load(Ordering::Relaxed) {
            return;
        }
        match store.count_step(&mut requeued) {
            Ok(false) => {}
            Ok(true) => break,
            Err(e) => {
                tracing::error!(error = %e, "store: counting deliveries failed; the counts stay unknown until the next start");
                return;
            }
        }
    }
    if requeued > 0 {
        tracing::info!(
            deliveries = requeued,
            "requeued deliveries left in flight by the last run"
        );
    }
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "store: counted deliveries by state (the last run did not close the store)"
    );
}

/// Opens sled's `Db`. sled holds a lock on its files until the background
/// threads of the last open of them have finished, a moment after it was
/// dropped (a store closed and opened again in one process, a reopen after
/// a failed write): a lock still held is waited for, within `LOCK_WAIT`.
fn open_db(config: &StoreConfig) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(Some(FLUSH_EVERY_MS))
            .open();
        match opened {
            // sled says so only in the message.
            // Another process's lock is not waited for; this one's is let
            // go a moment after its last handle was dropped.
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                let pid = lock_holder(&config.path.join("db"))
                    .ok()
                    .flatten()
                    .flatten();
                if Instant::now() >= deadline || pid.is_some_and(|p| p != std::process::id()) {
                    return Err(StoreError::Locked {
                        path: config.path.display().to_string(),
                        pid,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

// === files on disk ===

/// Makes the store's directory (0700) when it is missing.
fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    if path.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", path.display())))
}

/// The store holds signing secrets and every event's body, so its
/// directory is kept 0700 and its files 0600 whatever the umask was: one
/// made by an older hookrelay or copied in is tightened, and the log says
/// so. Not being able to tighten (another owner) is logged, not fatal.
fn make_private(path: &Path) {
    let mut tightened = 0usize;
    let mut pending = vec![(path.to_path_buf(), 0usize)];
    while let Some((at, depth)) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&at) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() && depth < PRIVATE_DEPTH {
            if let Ok(entries) = std::fs::read_dir(&at) {
                pending.extend(entries.flatten().map(|e| (e.path(), depth + 1)));
            }
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 == 0 {
            continue;
        }
        let private = std::fs::Permissions::from_mode(mode & 0o700);
        match std::fs::set_permissions(&at, private) {
            Ok(()) => tightened += 1,
            Err(e) => tracing::warn!(
                file = %at.display(),
                error = %e,
                "a store file is readable by other users and cannot be made private"
            ),
        }
    }
    if tightened > 0 {
        tracing::warn!(
            store = %path.display(),
            files = tightened,
            "store files were readable by other users; made private (directories 0700, files 0600)"
        );
    }
}

/// How deep `make_private` looks: sled's files and its `blobs` directory.
const PRIVATE_DEPTH: usize = 3;

/// The process holding the lock sled takes on `<store>/db`, found without
/// taking it for more than a moment: `Some(pid)` when another open file
/// holds it (the pid is `None` when `/proc/locks` does not name it),
/// `None` when the file is free. A missing file is free.
pub fn lock_holder(db_file: &Path) -> std::io::Result<Option<Option<u32>>> {
    use rustix::fs::{flock, FlockOperation};
    let file = match std::fs::File::open(db_file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // A shared lock conflicts with sled's exclusive one and with no reader;
    // it is let go at once (and with the file when it closes).
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = flock(&file, FlockOperation::Unlock);
            Ok(None)
        }
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let meta = file.metadata()?;
            Ok(Some(flock_pid(&meta)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The pid `/proc/locks` gives for the flock on the file `meta` describes.
/// Its lines read `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`
/// (device numbers in hex, the inode in decimal).
fn flock_pid(meta: &std::fs::Metadata) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Waiters are marked `->` and shift the fields; they hold nothing.
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let mut id = f.get(5)?.split(':');
        let same = u32::from_str_radix(id.next()?, 16).ok()? == major
            && u32::from_str_radix(id.next()?, 16).ok()? == minor
            && id.next()?.parse::<u64>().ok()? == meta.ino();
        same.then(|| f.get(4)?.parse().ok()).flatten()
    })
}

/// Whether a store could be opened at `path`, checked without opening it
/// (for `check-config`): an existing one must be a writable directory. Its
/// lock held by another process is a warning (that relay runs; a second
/// would be refused). A missing one is made at start; a parent this user
/// cannot write to is a warning too, since under systemd `StateDirectory=`
/// makes it for the service's user.
pub fn check_path(path: &Path) -> Result<Option<String>, StoreError> {
    use rustix::fs::{access, Access};
    let shown = path.display();
    if path.exists() {
        if !path.is_dir() {
            return Err(StoreError::Unavailable(format!(
                "{shown} is not a directory"
            )));
        }
        access(path, Access::WRITE_OK | Access::EXEC_OK).map_err(|e| {
            StoreError::Unavailable(format!("{shown} is not writable by this user: {e}"))
        })?;
        return match lock_holder(&path.join("db")) {
            Ok(None) => Ok(None),
            // The running relay a changed file is checked for before its
            // reload holds it: said, not an error.
            Ok(Some(pid)) => {
                let locked = StoreError::Locked {
                    path: shown.to_string(),
                    pid,
                };
                Ok(Some(format!(
                    "{locked}: a relay started with this file is refused while that one runs \
                     (reloading that one is fine)"
                )))
            }
            Err(e) => Err(StoreError::Unavailable(format!(
                "cannot read {}: {e}",
                path.join("db").display()
            ))),
        };
    }
    let parent = path
        .ancestors()
        .skip(1)
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        return Err(StoreError::Unavailable(format!(
            "cannot create {shown}: {} is not a directory",
            parent.display()
        )));
    }
    Ok(access(parent, Access::WRITE_OK | Access::EXEC_OK)
        .err()
        .map(|e| {
            format!(
                "store.path: {shown} does not exist, and this user cannot create it ({}: {e}); \
                 the user hookrelay runs as must (under systemd, StateDirectory= does)",
                parent.display()
            )
        }))
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::from(e),
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
            known: SCHEMA_VERSION,
        }),
    }
}

// === impl Store ===

/// The sled backend, as the relay holds it: the open store (swapped for a
/// fresh open after a failed write) and what outlives it.
pub struct SledStore(Arc<Handle>);

struct Handle {
    config: StoreConfig,
    shared: Arc<Shared>,
    /// `None` only while the store is being opened again.
    live: RwLock<Option<Arc<Sled>>>,
    /// One `maintain` at a time.
    maintaining: Mutex<()>,
}

impl SledStore {
    /// Opens (or creates) the store at `config.path`, checks its schema
    /// version, and puts deliveries that a crash left in flight back to
    /// pending. Fails with [`StoreError::Schema`] for a store written by a
    /// hookrelay with another layout.
    pub fn open(config: &StoreConfig) -> Result<SledStore, StoreError> {
        let shared = Shared::new(config);
        let sled = Sled::open(config, shared.clone())?;
        let handle = Handle {
            config: config.clone(),
            shared,
            live: RwLock::new(Some(sled)),
            maintaining: Mutex::new(()),
        };
        handle.maintain();
        Ok(SledStore(Arc::new(handle)))
    }

    /// The open store, or why there is none.
    fn sled(&self) -> Result<Arc<Sled>, StoreError> {
        self.0.sled()
    }

    /// Runs `f` on tokio's blocking pool: for calls that sync the log or
    /// scan many records.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Sled) -> Result<T, StoreError> + Send + 'static,
    {
        let sled = self.sled()?;
        tokio::task::spawn_blocking(move || f(&sled))
            .await
            .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
    }
}

impl Handle {
    fn sled(&self) -> Result<Arc<Sled>, StoreError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        self.live
            .read()
            .expect("lock poisoned")
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is being opened again".into()))
    }

    /// Measures the room on disk, probes the store, opens it again if a
    /// write failed, keeps the disk reserve, and decides whether new events
    /// are taken. Blocks; the relay calls it every second.
    fn maintain(&self) -> Health {
        let _one = self.maintaining.lock().expect("lock poisoned");
        let space = &self.shared.space;
        space.measure();
        let closed = self.shared.closed.load(Ordering::Relaxed);
        let mut broken = match self.sled() {
            Ok(sled) => {
                sled.probe();
                sled.broken()
            }
            Err(StoreError::Closed) => None,
            Err(e) => Some(e.to_string()),
        };
        if broken.is_some() && !closed {
            if space.free() < MIN_FREE_BYTES {
                // sled must write to open and to record deliveries.
                space.release_reserve();
                space.measure();
            }
            match self.reopen() {
                Ok(()) => {
                    tracing::warn!("store: opened again after a failed write");
                    broken = None;
                    space.measure();
                }
                Err(e) => broken = Some(format!("cannot open the store again: {e}")),
            }
        }
        if broken.is_none() && !closed {
            space.keep_reserve();
        }
        space.set(space.assess(broken));
        self.shared.checked_at_ms.store(now_ms(), Ordering::Relaxed);
        self.health()
    }

    /// Swaps the open store for a fresh open of the same files, as a
    /// restart would: the old one is stopped and dropped first (sled locks
    /// its files), once calls under way on it are done.
    fn reopen(&self) -> Result<(), StoreError> {
        let old = self.live.write().expect("lock poisoned").take();
        if let Some(old) = old {
            old.stop();
            let deadline = Instant::now() + REOPEN_WAIT;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if Arc::strong_count(&old) > 1 {
                *self.live.write().expect("lock poisoned") = Some(old);
                return Err(StoreError::Unavailable(
                    "calls on the failed store are still under way".into(),
                ));
            }
        }
        let fresh = Sled::open(&self.config, self.shared.clone())?;
        *self.live.write().expect("lock poisoned") = Some(fresh);
        self.shared.new_work.notify_one();
        Ok(())
    }

    fn health(&self) -> Health {
        let space = &self.shared.space;
        let refusal = if self.shared.closed.load(Ordering::Relaxed) {
            Some(StoreError::Closed)
        } else {
            space.refusal().map(|r| r.error())
        };
        Health {
            refusing: refusal.map(|e| (e.code().to_string(), e.to_string())),
            disk_bytes: space.files(),
            free_bytes: space.free(),
            checked_at_ms: self.shared.checked_at_ms.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl Store for SledStore {
    async fn accept(&self, new: NewEvent) -> Result<Accepted, StoreError> {
        self.sled()?.accept(new).await
    }

    async fn due_targets(&self) -> Result<Vec<String>, StoreError> {
        self.sled()?.due_targets()
    }

    async fn due_for(
        &self,
        target: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeliveryId)>, StoreError> {
        self.sled()?.due_for(target, now_ms, limit)
    }

    async fn next_due(&self, target: &str) -> Result<Option<u64>, StoreError> {
        self.sled()?.next_due(target)
    }

    async fn due_entries(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, u64, DeliveryId)>, StoreError> {
        self.sled()?.due_entries(limit)
    }

    async fn claim(
        &self,
        target: &str,
        at_ms: u64,
        id: DeliveryId,
    ) -> Result<Option<Delivery>, StoreError> {
        self.sled()?.claim(target, at_ms, id)
    }

    async fn finish(
        &self,
        id: DeliveryId,
        attempt: &Attempt,
        next: Next,
    ) -> Result<Delivery, StoreError> {
        self.sled()?.finish(id, attempt, next)
    }

    async fn release(&self, id: DeliveryId, at_ms: u64) -> Result<(), StoreError> {
        self.sled()?.release(id, at_ms)
    }

    fn new_work(&self) -> Arc<Notify> {
        self.0.shared.new_work.clone()
    }

    fn woken(&self) -> Vec<String> {
        let mut woken = self.0.shared.woken.lock().expect("lock poisoned");
        woken.drain().collect()
    }

    async fn requeue(&self, id: DeliveryId, note: &str) -> Result<Option<Delivery>, StoreError> {
        self.sled()?.requeue(id, note)
    }

    async fn requeue_batch(
        &self,
        state: State,
        target: Option<&str>,
        from: Option<DeliveryId>,
        limit: usize,
    ) -> Result<(usize, Option<DeliveryId>), StoreError> {
        let target = target.map(str::to_string);
        self.blocking(move |s| s.requeue_batch(state, target.as_deref(), from, limit))
            .await
    }

    async fn cancel(&self, id: DeliveryId, reason: &str) -> Result<bool, StoreError> {
        self.sled()?.cancel(id, reason)
    }

    async fn cancel_all(&self, target: &str, reason: &str) -> Result<usize, StoreError> {
        let (target, reason) = (target.to_string(), reason.to_string());
        self.blocking(move |s| s.cancel_all(&target, &reason)).await
    }

    async fn event(&self, id: EventId) -> Result<Option<Event>, StoreError> {
        self.sled()?.event(id)
    }

    async fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        self.sled()?.delivery(id)
    }

    async fn deliveries_of(
        &self,
        event: EventId,
    ) -> Result<Vec<(DeliveryId, Delivery)>, StoreError> {
        self.sled()?.deliveries_of(event)
    }

    async fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>, StoreError> {
        self.sled()?.attempts(id)
    }

    async fn list_deliveries(
        &self,
        state: Option<State>,
        target: Option<&str>,
        after: Option<DeliveryId>,
        limit: usize,
        scan: usize,
    ) -> Result<Page, StoreError> {
        let target = target.map(str::to_string);
        self.blocking(move |s| s.list_deliveries(state, target.as_deref(), after, limit, scan))
            .await
    }

    fn count(&self, state: State) -> Option<i64> {
        self.sled().ok().and_then(|s| s.count(state))
    }

    async fn put_endpoint(&self, endpoint: &EndpointRecord) -> Result<(), StoreError> {
        let e = endpoint.clone();
        self.blocking(move |s| s.put_endpoint(&e)).await
    }

    async fn endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        self.blocking(|s| s.endpoints()).await
    }

    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.blocking(move |s| s.delete_endpoint(&id)).await
    }

    async fn record_inbound(&self, record: &Inbound) -> Result<(), StoreError> {
        let sled = self.sled()?;
        sled.check_room(0)?;
        sled.record_inbound(record)
    }

    async fn inbound(
        &self,
        filter: &InboundFilter,
        after: Option<InboundId>,
        limit: usize,
        scan: usize,
    ) -> Result<InboundPage, StoreError> {
        let filter = filter.clone();
        self.blocking(move |s| s.inbound(&filter, after, limit, scan))
            .await
    }

    async fn purge_inbound(
        &self,
        cutoff_ms: u64,
        keep: usize,
        limit: usize,
    ) -> Result<Purged, StoreError> {
        self.blocking(move |s| s.purge_inbound(cutoff_ms, keep, limit))
            .await
    }

    async fn counters(&self, target: &str) -> Result<Counters, StoreError> {
        self.sled()?.counters(target)
    }

    async fn save_counters(&self, target: &str, counters: &Counters) -> Result<(), StoreError> {
        self.sled()?.save_counters(target, counters)
    }

    async fn all_counters(&self) -> Result<Vec<(String, Counters)>, StoreError> {
        self.blocking(|s| s.all_counters()).await
    }

    fn endpoints_changed(&self) -> Arc<Notify> {
        self.0.shared.endpoints_changed.clone()
    }

    async fn purge(&self, cutoff_ms: u64, limit: usize) -> Result<Purged, StoreError> {
        self.blocking(move |s| s.purge(cutoff_ms, limit)).await
    }

    async fn purge_dedup(&self) -> Result<usize, StoreError> {
        self.blocking(|s| s.purge_dedup()).await
    }

    async fn add_stats(&self, rows: &[StatRow]) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.blocking(move |s| s.add_stats(&rows)).await
    }

    async fn stats(
        &self,
        series: &str,
        resolution: Resolution,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<StatRow>, StoreError> {
        let series = series.to_string();
        self.blocking(move |s| s.stats(&series, resolution, from_ms, to_ms))
            .await
    }

    async fn purge_stats(
        &self,
        minutes_before_ms: u64,
        hours_before_ms: u64,
    ) -> Result<usize, StoreError> {
        self.blocking(move |s| s.purge_stats(minutes_before_ms, hours_before_ms))
            .await
    }

    async fn maintain(&self) -> Health {
        let handle = self.0.clone();
        tokio::task::spawn_blocking(move || handle.maintain())
            .await
            .unwrap_or_else(|_| self.0.health())
    }

    fn health(&self) -> Health {
        self.0.health()
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "fsync_batch_events",
            "Events made durable by one flush (group commit)",
            self.0.shared.flush_batch.clone(),
        );
        registry.register_with_unit(
            "fsync_duration",
            "Time one store flush took",
            Unit::Seconds,
            self.0.shared.flush_duration.clone(),
        );
    }

    async fn close(&self) -> Result<(), StoreError> {
        let sled = self.sled()?;
        self.0.shared.closed.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || sled.close())
            .await
            .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
    }
}

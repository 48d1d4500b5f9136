//! The store: everything hookrelay keeps, behind one interface.
//!
//! [`Store`] is what the relay asks of storage; callers hold an
//! `Arc<dyn Store>` and never a backend's own types. [`SledStore`] (the
//! embedded default, `store/sled/`) is one implementation. Every backend
//! passes the same contract suite (`tests/contract/`), which is where the
//! behaviour below is pinned down case by case.
//!
//! The contract, in short:
//! - `accept` answers `Ok` only once the event, all its deliveries (pending,
//!   due now) and its dedup key are durable together: a 202 built on it
//!   survives `kill -9` and power loss. A dedup key seen within retention
//!   gives the first event's id, `duplicate: true`, and queues nothing.
//! - A delivery moves `pending → in_flight → succeeded | pending | dead`
//!   (or `cancelled`). Only `claim` takes a pending one in flight, and only
//!   once for a given due time; `finish` records the attempt and what
//!   follows; `release` gives an in-flight one back without an attempt.
//! - Deliveries left in flight by a crash are pending again, due now, when
//!   the store is next opened (at least once).
//! - Work that becomes due now (an accepted event, a re-queue) wakes
//!   `new_work`, on which the scheduler sleeps when nothing else is due.
//! - Every scan is bounded by a caller-given limit (or, for history, range).
//! - A store that cannot take writes refuses them with an error; nothing
//!   it refused was kept. It says why in `health`, and heals without a
//!   restart once it can (`maintain`): space freed, a failed disk back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::Notify;

pub mod postgres;
mod records;
pub mod sled;

pub use self::postgres::{PostgresConfig, PostgresStore};
pub use self::sled::SledStore;
pub use records::*;

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("store is full: {used} bytes on disk, limit {limit} (store.max_disk_bytes)")]
    Full { used: u64, limit: u64 },
    #[error("the disk holding the store is full: {free} bytes free")]
    DiskFull { free: u64 },
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("store at {path} has schema version {found}; this hookrelay reads version {known}")]
    Schema { path: String, found: u8, known: u8 },
    #[error("corrupt record in `{tree}`: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    #[error("store {path} is locked by another hookrelay process{}", locker(*.pid))]
    Locked { path: String, pid: Option<u32> },
    #[error("the store is shutting down")]
    Closed,
    #[error("store commit failed: {0}")]
    Commit(String),
    #[error("the PostgreSQL schema is at version {found} and this hookrelay needs {known}: run `hookrelay migrate` (store.postgres.migrate is off)")]
    Migrate { found: u8, known: u8 },
    #[error("delivery {0} is no longer claimed by this relay: its lease ran out, or it was changed by hand")]
    ClaimLost(String),
}

/// ` (pid N)` when the process holding a store's lock is known.
fn locker(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

impl StoreError {
    /// No room: the disk or `store.max_disk_bytes`. The store logs the
    /// change once; it heals when space returns.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full { .. } | StoreError::DiskFull { .. })
    }

    /// The error code a sender (and `/readyz`) is given when the store
    /// refuses an event for this: `store_full` when there is no room,
    /// `store_unavailable` otherwise.
    pub fn code(&self) -> &'static str {
        if self.is_full() {
            "store_full"
        } else {
            "store_unavailable"
        }
    }
}

/// Which backend keeps the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded, on this host's disk (`store.path`).
    #[default]
    Sled,
    /// A PostgreSQL database shared by a fleet of relays (`[store.postgres]`).
    Postgres,
}

/// `[store]`: where and how long events are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sled` (the default) or `postgres`.
    pub backend: Backend,
    /// The sled directory; relative paths are taken from the working directory.
    pub path: PathBuf,
    /// How long finished events are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// When the store's files reach this size, ingest answers 503 instead of
    /// accepting events it might not be able to keep. 0 means no limit.
    pub max_disk_bytes: u64,
    /// Most records the inbound log keeps (older ones go first; none is
    /// kept past `retention` either).
    pub inbound_log_entries: usize,
    /// The PostgreSQL backend's settings.
    pub postgres: PostgresConfig,
}

impl StoreConfig {
    /// Where the store is, for messages (never with credentials).
    pub fn location(&self) -> String {
        match self.backend {
            Backend::Sled => self.path.display().to_string(),
            Backend::Postgres => self.postgres.location(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Sled,
            path: PathBuf::from("data"),
            retention: Duration::from_secs(7 * 24 * 3600),
            cache_bytes: 4 * 1024 * 1024,
            max_disk_bytes: 0,
            inbound_log_entries: 100_000,
            postgres: PostgresConfig::default(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything the relay asks of storage. Methods that touch the disk or the
/// network are async; the two in-memory gauges are not.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // === ingest ===

    /// Makes the event, its deliveries (one per target, pending and due now)
    /// and its dedup key durable in one step, then answers. Only `Ok` may be
    /// acknowledged to the sender. Concurrent calls may share one commit.
    async fn accept(&self, new: NewEvent) -> Result<Accepted, StoreError>;

    // === scheduling ===

    /// Every target that has pending deliveries.
    async fn due_targets(&self) -> Result<Vec<String>, StoreError>;

    /// Up to `limit` of `target`'s pending deliveries due at or before
    /// `now_ms`, earliest first, as (due at, delivery).
    async fn due_for(
        &self,
        target: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeliveryId)>, StoreError>;

    /// When `target`'s earliest pending delivery is due.
    async fn next_due(&self, target: &str) -> Result<Option<u64>, StoreError>;

    /// The first `limit` pending deliveries of all targets, by target then
    /// due time: (target, due at, delivery).
    async fn due_entries(&self, limit: usize)
        -> Result<Vec<(String, u64, DeliveryId)>, StoreError>;

    /// Takes a delivery pending at `at_ms` in flight. `None` if it is not
    /// (any more) pending at that time: someone else has it.
    async fn claim(
        &self,
        target: &str,
        at_ms: u64,
        id: DeliveryId,
    ) -> Result<Option<Delivery>, StoreError>;

    /// Claims up to `limit` of `target`'s deliveries due at or before
    /// `now_ms`, earliest first; on a shared store, never so many that more
    /// than `concurrency` of the target's are in flight across the fleet. `looked` counts the due entries the claim
    /// looked at (an index entry left stale by a crash is looked at but not
    /// claimed), so fewer than `limit` looked at means none is left due.
    /// By default `due_for`, then `claim` of each; a shared store claims
    /// them in one step that skips what another relay is claiming.
    async fn claim_due(
        &self,
        target: &str,
        now_ms: u64,
        limit: usize,
        concurrency: usize,
    ) -> Result<Claimed, StoreError> {
        // One relay: its lane's own bounds are the fleet's.
        let _ = concurrency;
        let due = self.due_for(target, now_ms, limit).await?;
        let mut claimed = Claimed {
            deliveries: Vec::with_capacity(due.len()),
            looked: due.len(),
            events: Vec::new(),
            next_due: None,
        };
        for (at, id) in due {
            if let Some(d) = self.claim(target, at, id).await? {
                claimed.deliveries.push((at, id, d));
            }
        }
        Ok(claimed)
    }

    /// Records attempt number `attempts + 1` of an in-flight delivery and
    /// what follows it; returns the delivery as it now is.
    async fn finish(
        &self,
        id: DeliveryId,
        attempt: &Attempt,
        next: Next,
    ) -> Result<Delivery, StoreError>;

    /// Puts an in-flight delivery back to pending at `at_ms` without
    /// counting an attempt (shutdown interrupted it before it was sent).
    async fn release(&self, id: DeliveryId, at_ms: u64) -> Result<(), StoreError>;

    /// Woken whenever new work becomes due now: accepted events, re-queues.
    fn new_work(&self) -> Arc<Notify>;

    /// The targets that got work due now (accepted events, re-queues,
    /// releases) since the last call, each once; so the scheduler looks at
    /// those, not at every target. In memory: after a restart the scheduler
    /// starts from `due_targets`.
    fn woken(&self) -> Vec<String>;

    // === repair ===

    /// Re-queues a delivery now, with a fresh attempt budget. One in flight
    /// is left as it is and comes back unchanged. `None`: no such delivery.
    async fn requeue(&self, id: DeliveryId, note: &str) -> Result<Option<Delivery>, StoreError>;

    /// Re-queues up to `limit` deliveries in `state` (and of `target`),
    /// oldest first from just after `from`. Returns how many, and where the
    /// next batch starts (`None` once the end is reached).
    async fn requeue_batch(
        &self,
        state: State,
        target: Option<&str>,
        from: Option<DeliveryId>,
        limit: usize,
    ) -> Result<(usize, Option<DeliveryId>), StoreError>;

    /// Cancels a pending or in-flight delivery; whether it was cancelled.
    async fn cancel(&self, id: DeliveryId, reason: &str) -> Result<bool, StoreError>;

    /// Cancels every pending delivery of `target`; how many.
    async fn cancel_all(&self, target: &str, reason: &str) -> Result<usize, StoreError>;

    // === queries ===

    async fn event(&self, id: EventId) -> Result<Option<Event>, StoreError>;

    async fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError>;

    /// Every delivery of `event`, in creation order.
    async fn deliveries_of(
        &self,
        event: EventId,
    ) -> Result<Vec<(DeliveryId, Delivery)>, StoreError>;

    /// The attempts of a delivery, in order.
    async fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>, StoreError>;

    /// Deliveries newest first, from just before `after`, matching `state`
    /// and `target`; looks at no more than `scan` records, and `next` then
    /// says where to go on.
    async fn list_deliveries(
        &self,
        state: Option<State>,
        target: Option<&str>,
        after: Option<DeliveryId>,
        limit: usize,
        scan: usize,
    ) -> Result<Page, StoreError>;

    /// How many deliveries are in `state` now (kept in memory); `None`
    /// while the store does not know yet (sled counts in the background
    /// after a run that did not close it).
    fn count(&self, state: State) -> Option<i64>;

    // === endpoints and counters ===

    /// Stores an endpoint durably (replacing one with the same id).
    async fn put_endpoint(&self, endpoint: &EndpointRecord) -> Result<(), StoreError>;

    /// Every endpoint, by id.
    async fn endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError>;

    /// Removes an endpoint, its counters and its history; whether it existed.
    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError>;

    /// A target's saved counters (zero if none were saved).
    async fn counters(&self, target: &str) -> Result<Counters, StoreError>;

    async fn save_counters(&self, target: &str, counters: &Counters) -> Result<(), StoreError>;

    /// Adds `delta` to `target`'s saved counters (see [`Counters::add`])
    /// and returns the sum: on a shared store, what every relay counted.
    async fn add_counters(&self, target: &str, delta: &Counters) -> Result<Counters, StoreError> {
        let mut c = self.counters(target).await?;
        c.add(delta);
        self.save_counters(target, &c).await?;
        Ok(c)
    }

    /// Every target's saved counters (a shared store's relays read what
    /// the others counted).
    async fn all_counters(&self) -> Result<Vec<(String, Counters)>, StoreError>;

    // === a fleet ===

    /// Whether other relays share this store: counters are then added, not
    /// replaced, and endpoints may change without this relay's API.
    fn shared(&self) -> bool {
        false
    }

    /// Woken when another relay changed the endpoints (a shared store).
    fn endpoints_changed(&self) -> Arc<Notify>;

    /// Takes up to `want` tokens from `target`'s bucket for the fleet
    /// (`per_second` sustained, `burst` at most), as [`Tokens`]. One relay
    /// alone: its own limiter is the whole rate, so every token is granted.
    async fn take_tokens(
        &self,
        target: &str,
        per_second: u32,
        burst: u32,
        want: u32,
    ) -> Result<Tokens, StoreError> {
        let _ = (target, per_second, burst);
        Ok(Tokens {
            granted: want,
            next_in_ms: 0,
        })
    }

    /// Notes for the fleet that `target`'s circuit is open until
    /// `open_until_ms` (0: closed). One relay alone: nothing to tell.
    async fn set_circuit(&self, target: &str, open_until_ms: u64) -> Result<(), StoreError> {
        let _ = (target, open_until_ms);
        Ok(())
    }

    /// The targets whose circuit a relay opened, with until when.
    async fn circuits(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(Vec::new())
    }

    // === the inbound log ===

    /// Records an ingest request that `accept` did not see (a refusal).
    /// Not synced: a crash may lose the last ones. Accepted and duplicate
    /// requests are recorded by `accept`, with the event.
    async fn record_inbound(&self, record: &Inbound) -> Result<(), StoreError>;

    /// Inbound records newest first, from just before `after`, matching
    /// `filter`; looks at no more than `scan` records.
    async fn inbound(
        &self,
        filter: &InboundFilter,
        after: Option<InboundId>,
        limit: usize,
        scan: usize,
    ) -> Result<InboundPage, StoreError>;

    /// One step of the inbound log's trim: removes up to `limit` records,
    /// oldest first, that are older than `cutoff_ms` or beyond the newest
    /// `keep`. `more` when it stopped at `limit` with more to remove.
    async fn purge_inbound(
        &self,
        cutoff_ms: u64,
        keep: usize,
        limit: usize,
    ) -> Result<Purged, StoreError>;

    // === retention ===

    /// Removes events received before `cutoff_ms` whose deliveries have all
    /// finished, with their deliveries and attempts, looking at no more than
    /// `limit` events: one bounded step. Each step goes on where the last
    /// one stopped (events still pending are stepped over, not looked at
    /// again and again), until `more` is false: every event before the
    /// cutoff has been looked at, and the next step starts from the oldest.
    async fn purge(&self, cutoff_ms: u64, limit: usize) -> Result<Purged, StoreError>;

    /// Drops expired dedup keys; how many.
    async fn purge_dedup(&self) -> Result<usize, StoreError>;

    // === history ===

    /// Adds each row's values to the stored row of the same series,
    /// resolution and start (creating it if there is none): counts are
    /// summed, gauges replaced. Adding, not replacing, lets several relays
    /// that share a store each add what they counted. One batch, not
    /// synced: a crash may lose the last minute's rows.
    async fn add_stats(&self, rows: &[StatRow]) -> Result<(), StoreError>;

    /// `series`' rows of `resolution` with `from_ms <= start_ms < to_ms`,
    /// oldest first (as many as there are buckets in the range at most).
    async fn stats(
        &self,
        series: &str,
        resolution: Resolution,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<StatRow>, StoreError>;

    /// Removes minute rows that start before `minutes_before_ms` and hour
    /// rows that start before `hours_before_ms`, of every series; how many.
    async fn purge_stats(
        &self,
        minutes_before_ms: u64,
        hours_before_ms: u64,
    ) -> Result<usize, StoreError>;

    // === size, health, life ===

    /// Measures the room on disk, checks that the store takes writes, and
    /// repairs what it can without a restart (a store that failed a write
    /// is opened again); decides whether new events are taken. The relay
    /// calls it every second.
    async fn maintain(&self) -> Health;

    /// What the last `maintain` found, and any refusal since: in memory,
    /// so `/readyz` costs no disk I/O.
    fn health(&self) -> Health;

    /// The store's size on disk at the last measure.
    fn disk_bytes(&self) -> u64 {
        self.health().disk_bytes
    }

    /// Adds the backend's own metrics (commit batches, durations).
    fn register_metrics(&self, registry: &mut Registry);

    /// Makes everything durable and stops taking writes; later calls that
    /// write fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}

/// What `take_tokens` granted; with none, when the next token comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    pub granted: u32,
    pub next_in_ms: u64,
}

/// What `claim_due` took in flight: (due at, id, delivery), and how many
/// due entries it looked at.
#[derive(Debug, Default)]
pub struct Claimed {
    pub deliveries: Vec<(u64, DeliveryId, Delivery)>,
    pub looked: usize,
    /// Events of the claimed deliveries that the store read with the claim
    /// (a shared store does, for bodies up to [`PREFETCH_BODY_BYTES`]): the
    /// relay need not ask for them again. Any may be missing.
    pub events: Vec<Event>,
    /// When the store looked with the claim: the earliest due time of the
    /// target's deliveries still pending after it (`Some(None)`: none), as
    /// `next_due` would answer.
    pub next_due: Option<Option<u64>>,
}

/// The largest body a store reads with a claim ([`Claimed::events`]).
pub const PREFETCH_BODY_BYTES: usize = 64 * 1024;

/// One retention step's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Events removed (with their deliveries and attempts), or inbound
    /// records.
    pub removed: usize,
    /// Whether there is more to look at before the cutoff.
    pub more: bool,
}

/// Whether the store takes new events, and what it measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Why new events are refused (503): the code ingest answers with
    /// ([`StoreError::code`]) and the reason; `None`: they are taken.
    pub refusing: Option<(String, String)>,
    /// The store's files (the disk reserve not counted).
    pub disk_bytes: u64,
    /// Free on the store's filesystem.
    pub free_bytes: u64,
    /// When `maintain` last finished; a relay whose store calls hang stops
    /// moving it (the watchdog watches it).
    pub checked_at_ms: u64,
}

impl Health {
    pub fn accepting(&self) -> bool {
        self.refusing.is_none()
    }
}

/// Opens the store `config` describes.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config.backend {
        Backend::Sled => Arc::new(SledStore::open(config)?),
        Backend::Postgres => Arc::new(PostgresStore::open(config).await?),
    })
}

//! The PostgreSQL backend: one database shared by a fleet of relays.
//!
//! Every relay of the fleet keeps nothing of its own but claims it holds:
//! events, deliveries, attempts, endpoints, counters, dedup keys, the
//! inbound log and the history all live in the database, so any relay
//! answers for the fleet and any relay can deliver anything.
//!
//! Invariants:
//! - `accept` answers `Ok` only after the transaction holding the event,
//!   its deliveries, its dedup key and its inbound record has committed
//!   with `synchronous_commit` on. Concurrent accepts share a transaction
//!   (`commit.rs`): one commit per batch, not per event.
//! - A delivery is taken in flight only by a claim (`claims.rs`): an
//!   `UPDATE` of pending rows picked `FOR UPDATE SKIP LOCKED`, which sets
//!   this relay as owner, a fresh claim token and a lease. Two relays never
//!   hold one delivery at once. The HTTP attempt runs outside any
//!   transaction; its outcome is written only while the token still
//!   matches, so a relay whose lease ran out cannot overwrite the new
//!   owner's work. Leases are renewed while held; a relay that dies stops
//!   renewing, and the others take its deliveries back once the lease has
//!   run out (at least once; the `webhook-id` is the event's, unchanged).
//! - Work committed due now wakes the fleet by `NOTIFY` (delivered after
//!   commit), and every relay also polls (`wake.rs`), so a lost
//!   notification, or a pooler that cannot LISTEN, delays work by at most
//!   `poll_interval`.
//! - Retention, the dedup expiry and the inbound and history trims run in
//!   bounded batches, by one relay at a time (a transaction-level advisory
//!   lock): the others skip the step.
//! - The delivery counts by state are kept in memory: this relay's own
//!   changes at once, the fleet's on the next count (`maintain`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::Row;

use crate::store::{
    now_ms, Accepted, Attempt, Claimed, Counters, Delivery, DeliveryId, EndpointRecord, Event,
    EventId, Health, Inbound, InboundFilter, InboundId, InboundPage, NewEvent, Next, Page, Purged,
    Resolution, StatRow, State, Store, StoreConfig, StoreError, Tokens,
};

mod claims;
mod commit;
mod config;
mod outcomes;
mod pipeline;
mod queries;
pub mod schema;
mod wake;

pub use config::PostgresConfig;

/// The target a notification names when the endpoints changed (no
/// target's key starts with `!`).
const ENDPOINTS: &str = "!endpoints";

/// A notice naming more targets than this wakes the fleet with one
/// notification that names none (each relay then looks for due work).
const MAX_NOTIFY_TARGETS: usize = 32;
/// Accepted events waiting for a committer, at most.
const QUEUE: usize = 4096;
/// Transactions committing accepted events at once.
const COMMITTERS: usize = 2;
/// `maintain` counts the deliveries by state every this many calls.
const COUNT_EVERY: u64 = 10;

/// The PostgreSQL store. Dropping it stops its background tasks.
pub struct PostgresStore {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the store and its background tasks share.
pub(crate) struct Inner {
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pool: Pool,
    config: PostgresConfig,
    /// `NOTIFY` channel of this schema's fleet.
    channel: String,
    retention_ms: u64,
    max_disk_bytes: u64,
    /// This relay among the fleet's: the owner of its claims, and the
    /// sender of its notifications (which it ignores).
    instance: i64,
    /// The last id handed out (ids of one relay always increase).
    ids: Mutex<u128>,
    /// The claim token of each delivery this relay holds.
    claims: Mutex<HashMap<DeliveryId, i64>>,
    commits: Mutex<Option<mpsc::Sender<commit::Waiting>>>,
    /// Attempt outcomes waiting for a writer.
    outcomes: Mutex<Option<mpsc::Sender<outcomes::Outcome>>>,
    /// Committer and outcome writer tasks still running, and a wake-up
    /// when one stops.
    batchers: std::sync::atomic::AtomicUsize,
    batcher_stopped: Notify,
    counts: [AtomicI64; 5],
    woken: Mutex<Vec<String>>,
    /// What the fleet was told of new work, and what it is owed.
    told: Mutex<wake::Told>,
    new_work: Arc<Notify>,
    /// Wakes the poller at once (a notification that names no target).
    poll_now: Notify,
    /// Woken when another relay changed the endpoints.
    endpoints_changed: Arc<Notify>,
    /// The endpoints' generation this relay has seen (or made).
    endpoints_seen: AtomicI64,
    health: Mutex<Health>,
    closed: AtomicBool,
    maintained: AtomicU64,
    /// Where the next retention step starts (an event id).
    purge_from: Mutex<Option<Vec<u8>>>,
    commit_batch: Histogram,
    commit_duration: Histogram,
}

// === statements ===

/// Statements prepared once per connection (the pool keeps them): the
/// server parses and plans each query once, and every later run is one
/// round trip instead of two.
#[async_trait]
pub(crate) trait Cached: deadpool_postgres::GenericClient {
    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query(&statement, params).await
    }

    async fn row(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_one(&statement, params).await
    }

    async fn row_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_opt(&statement, params).await
    }

    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }
}

impl<T: deadpool_postgres::GenericClient + ?Sized> Cached for T {}

// === errors ===

/// A database error as the store reports it: the server's message (never
/// the connection string), and whether the database is out of reach.
pub(crate) fn db_error(e: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        if code == "53100" {
            return StoreError::DiskFull { free: 0 };
        }
        if code == "57014" {
            // One statement ran past statement_timeout: this request fails
            // (503), the database is not out of reach.
            return StoreError::Io(format!("PostgreSQL: {} ({code})", db.message()));
        }
        // Connection exceptions, operator intervention (shutdown, a
        // cancelled statement), insufficient resources.
        if code.starts_with("08") || code.starts_with("57") || code.starts_with("53") {
            return StoreError::Unavailable(format!("PostgreSQL: {} ({code})", db.message()));
        }
        return StoreError::Io(format!("PostgreSQL: {} ({code})", db.message()));
    }
    StoreError::Unavailable(format!("cannot reach PostgreSQL: {e}"))
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db_error(&e),
        // Every connection busy: this request fails, the database is fine.
        PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => StoreError::Io(
            "every PostgreSQL connection of the pool stayed busy for connect_timeout (store.postgres.pool_size)".into(),
        ),
        PoolError::Timeout(_) => {
            StoreError::Unavailable("no PostgreSQL connection within connect_timeout".into())
        }
        PoolError::Closed => StoreError::Closed,
        other => StoreError::Unavailable(format!("PostgreSQL connection: {other}")),
    }
}

/// Why a batch's transaction failed.
pub(super) enum Failure {
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

/// What the committers and the outcome writers wait on: the next item of
/// `queue`, then whatever else is already waiting, up to `max` items or
/// until their `weight` reaches `max_weight`. `None` once the queue is
/// closed and empty.
async fn next_batch<T>(
    queue: &tokio::sync::Mutex<mpsc::Receiver<T>>,
    max: usize,
    max_weight: usize,
    weight: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let mut rx = queue.lock().await;
    let first = rx.recv().await?;
    let mut total = weight(&first);
    let mut batch = vec![first];
    while batch.len() < max && total < max_weight {
        match rx.try_recv() {
            Ok(item) => {
                total += weight(&item);
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Whether a transaction lost a conflict and may simply be run again.
fn retryable(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| matches!(db.code().code(), "40P01" | "40001"))
}

fn corrupt(table: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree: table,
        reason: reason.into(),
    }
}

/// Column `idx` of `row`, or a corrupt-record error naming `table`.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
    table: &'static str,
) -> Result<T, StoreError> {
    row.try_get(idx)
        .map_err(|e| corrupt(table, format!("column {idx}: {e}")))
}

fn json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    table: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_value(value).map_err(|e| corrupt(table, e.to_string()))
}

/// `value` as a jsonb value. jsonb cannot hold the NUL character, which a
/// receiver's answer (the excerpt) or an event type taken from a payload
/// may carry: it is written as U+FFFD instead, so that no value can make
/// a whole batch's write fail.
fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    // Records are plain data (strings, numbers, maps with string keys):
    // serializing them cannot fail.
    without_nul(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
}

fn without_nul(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{FFFD}")),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nul).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k.replace('\0', "\u{FFFD}"), without_nul(v)))
                .collect(),
        ),
        v => v,
    }
}

// === rows ===

fn state_code(s: State) -> i16 {
    s.index() as i16
}

fn state_of(code: i16) -> Result<State, StoreError> {
    State::ALL
        .get(code as usize)
        .copied()
        .ok_or_else(|| corrupt("deliveries", format!("unknown state {code}")))
}

/// The columns a delivery is read from, in the order [`delivery_row`] takes.
const DELIVERY: &str = "id, event, target, state, attempts, base, next_at_ms, last, note";

fn delivery_row(row: &Row) -> Result<(DeliveryId, Delivery), StoreError> {
    const T: &str = "deliveries";
    let id = DeliveryId::from_key(col::<&[u8]>(row, 0, T)?).ok_or_else(|| corrupt(T, "bad id"))?;
    let event =
        EventId::from_key(col::<&[u8]>(row, 1, T)?).ok_or_else(|| corrupt(T, "bad event id"))?;
    let last: Option<serde_json::Value> = col(row, 7, T)?;
    Ok((
        id,
        Delivery {
            event,
            target: col(row, 2, T)?,
            state: state_of(col(row, 3, T)?)?,
            attempts: col::<i32>(row, 4, T)? as u32,
            base: col::<i32>(row, 5, T)? as u32,
            next_at_ms: col::<i64>(row, 6, T)? as u64,
            last: last.map(|v| json(v, "attempts")).transpose()?,
            note: col(row, 8, T)?,
        },
    ))
}

/// The share of a table's files its live rows fill: from the rows' width
/// when the statistics know it (a tuple header is about 28 bytes), else
/// from the count of live and dead rows; never more than all of it.
fn live_share(table_bytes: f64, live: f64, dead: f64, width: Option<f64>) -> f64 {
    if table_bytes <= 0.0 {
        return 1.0;
    }
    let share = match width {
        Some(w) if live > 0.0 => live * (w + 28.0) / table_bytes,
        _ if live + dead > 0.0 => live / (live + dead),
        _ => 1.0,
    };
    share.clamp(0.0, 1.0)
}

/// The smallest id of a ULID made at `ms`: ids below it are older.
fn id_at(ms: u64) -> Vec<u8> {
    ((ms as u128) << 80).to_be_bytes().to_vec()
}

// === impl PostgresStore ===

impl PostgresStore {
    /// Connects, brings the schema up to date (or refuses a newer one),
    /// and starts the committers, the outcome writers, the listener, the poller and the lease
    /// renewal on the current runtime.
    pub async fn open(config: &StoreConfig) -> Result<PostgresStore, StoreError> {
        let pg = config.postgres.clone();
        let pool = pool(&pg)?;
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::prepare(&mut client, &pg).await?;
        }
        let (sender, receiver) = mpsc::channel(QUEUE);
        let (outcome_sender, outcome_receiver) = mpsc::channel(outcomes::QUEUE);
        let inner = Arc::new(Inner {
            tls: tls(&pg)?,
            channel: format!("{}_work", pg.schema),
            pool,
            retention_ms: config.retention.as_millis() as u64,
            max_disk_bytes: config.max_disk_bytes,
            instance: rand::random::<i64>(),
            ids: Mutex::new(0),
            claims: Mutex::new(HashMap::new()),
            commits: Mutex::new(Some(sender)),
            outcomes: Mutex::new(Some(outcome_sender)),
            batchers: std::sync::atomic::AtomicUsize::new(COMMITTERS + outcomes::WRITERS),
            batcher_stopped: Notify::new(),
            counts: Default::default(),
            woken: Mutex::new(Vec::new()),
            told: Mutex::new(wake::Told::default()),
            new_work: Arc::new(Notify::new()),
            poll_now: Notify::new(),
            endpoints_changed: Arc::new(Notify::new()),
            endpoints_seen: AtomicI64::new(0),
            health: Mutex::new(Health {
                refusing: None,
                disk_bytes: 0,
                free_bytes: u64::MAX,
                checked_at_ms: now_ms(),
            }),
            closed: AtomicBool::new(false),
            maintained: AtomicU64::new(0),
            purge_from: Mutex::new(None),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            config: pg,
        });
        inner.count_states().await?;
        inner.measure().await?;
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let mut tasks: Vec<JoinHandle<()>> = (0..COMMITTERS)
            .map(|_| tokio::spawn(commit::committer(inner.clone(), receiver.clone())))
            .collect();
        let outcome_receiver = Arc::new(tokio::sync::Mutex::new(outcome_receiver));
        tasks.extend(
            (0..outcomes::WRITERS)
                .map(|_| tokio::spawn(outcomes::writer(inner.clone(), outcome_receiver.clone()))),
        );
        tasks.push(tokio::spawn(wake::poll(inner.clone())));
        tasks.push(tokio::spawn(claims::renew(inner.clone())));
        if inner.config.listen {
            tasks.push(tokio::spawn(wake::listen(inner.clone())));
        }
        Ok(PostgresStore { inner, tasks })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How every connection of this relay is made: in the schema, with the
/// statement timeout set and synchronous commits.
fn connect_config(pg: &PostgresConfig) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = pg
        .url
        .parse()
        .map_err(|e| StoreError::Unavailable(format!("store.postgres.url: {e}")))?;
    config
        .application_name("hookrelay")
        .connect_timeout(pg.connect_timeout)
        // synchronous_commit on for every session, whatever the server's
        // default: a commit returns once it is durable.
        .options(format!(
            "-c search_path={} -c statement_timeout={} -c synchronous_commit=on",
            pg.schema,
            pg.statement_timeout.as_millis()
        ));
    Ok(config)
}

/// TLS to the database: the built-in roots and `ca_file`.
fn tls(pg: &PostgresConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let config = crate::roots::client_config(pg.ca_file.as_deref())
        .map_err(|e| StoreError::Unavailable(format!("store.postgres.ca_file: {e}")))?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
        Arc::unwrap_or_clone(config),
    ))
}

/// The connection pool `pg` describes: every connection in the schema,
/// with the statement timeout set.
fn pool(pg: &PostgresConfig) -> Result<Pool, StoreError> {
    let config = connect_config(pg)?;
    let manager = Manager::from_config(
        config,
        tls(pg)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(pg.pool_size)
        .wait_timeout(Some(pg.connect_timeout))
        .create_timeout(Some(pg.connect_timeout))
        .recycle_timeout(Some(pg.connect_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))
}

// === impl Inner ===

impl Inner {
    /// A connection from the pool; a failure says the database is away.
    async fn client(&self) -> Result<Object, StoreError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        match self.pool.get().await {
            Ok(c) => Ok(c),
            Err(e) => Err(self.failed(pool_error(e))),
        }
    }

    /// `e` from a statement: recorded in the health when the database is
    /// out of reach or full, so `/readyz` and ingest say so at once.
    fn db(&self, e: tokio_postgres::Error) -> StoreError {
        self.failed(db_error(&e))
    }

    fn failed(&self, e: StoreError) -> StoreError {
        if matches!(
            e,
            StoreError::Unavailable(_) | StoreError::DiskFull { .. } | StoreError::Full { .. }
        ) {
            let mut h = self.health.lock().expect("lock poisoned");
            if h.refusing.is_none() {
                tracing::error!(error = %e, "the store refuses new events");
            }
            h.refusing = Some((e.code().to_string(), e.to_string()));
        }
        e
    }

    /// The next `n + 1` ids: an event's, then its deliveries'.
    fn next_ids(&self, n: usize) -> (EventId, Vec<DeliveryId>) {
        let mut last = self.ids.lock().expect("lock poisoned");
        let start = ulid::Ulid::new().0.max(*last + 1);
        *last = start + n as u128;
        let deliveries = (1..=n as u128)
            .map(|i| DeliveryId(ulid::Ulid(start + i)))
            .collect();
        (EventId(ulid::Ulid(start)), deliveries)
    }

    /// One `NOTIFY` per target (or one for all, past [`MAX_NOTIFY_TARGETS`]);
    /// best effort: the other relays' pollers find the work anyway.
    pub(super) async fn notify(&self, client: &Object, targets: &[String]) {
        if targets.is_empty() {
            return;
        }
        let payloads: Vec<String> = if targets.len() > MAX_NOTIFY_TARGETS {
            vec![format!("{}:*", self.instance)]
        } else {
            targets
                .iter()
                .map(|t| format!("{}:{t}", self.instance))
                .collect()
        };
        let _ = client
            .exec(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                &[&self.channel, &payloads],
            )
            .await;
    }

    /// A committer or outcome writer has stopped; `close` waits for all.
    fn batcher_stopped(&self) {
        self.batchers.fetch_sub(1, Ordering::Relaxed);
        self.batcher_stopped.notify_waiters();
    }

    fn moved(&self, from: Option<State>, to: Option<State>, n: i64) {
        if let Some(s) = from {
            self.counts[s.index()].fetch_sub(n, Ordering::Relaxed);
        }
        if let Some(s) = to {
            self.counts[s.index()].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Tells this relay's scheduler that `targets` have work due now.
    fn wake<'a>(&self, targets: impl IntoIterator<Item = &'a String>) {
        let mut woken = self.woken.lock().expect("lock poisoned");
        let mut any = false;
        for t in targets {
            any = true;
            if !woken.contains(t) {
                woken.push(t.clone());
            }
        }
        drop(woken);
        if any {
            self.new_work.notify_one();
        }
    }

    /// Counts the fleet's deliveries by state.
    async fn count_states(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        let rows = c
            .rows("SELECT state, count(*) FROM deliveries GROUP BY state", &[])
            .await
            .map_err(|e| self.db(e))?;
        let mut counts = [0i64; 5];
        for row in &rows {
            let state = state_of(col(row, 0, "deliveries")?)?;
            counts[state.index()] = col(row, 1, "deliveries")?;
        }
        for (slot, n) in self.counts.iter().zip(counts) {
            slot.store(n, Ordering::Relaxed);
        }
        Ok(())
    }

    /// What hookrelay's data takes: each table's size on disk (with its
    /// indexes and TOAST) times the share of it that live rows fill. A
    /// table's files do not shrink when rows are deleted, but PostgreSQL
    /// reuses the room once vacuumed, so the room a purge made counts as
    /// free, as it does for sled: `store_full` lifts once retention has
    /// run. The share is estimated from the table statistics (live and
    /// dead rows, average row width), which autovacuum keeps current.
    async fn measure(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let rows = c
            .rows(
                "SELECT pg_total_relation_size(c.oid)::float8, pg_table_size(c.oid)::float8, \
                   coalesce(s.n_live_tup, 0)::float8, coalesce(s.n_dead_tup, 0)::float8, \
                   (SELECT sum(p.avg_width) FROM pg_stats p \
                    WHERE p.schemaname = n.nspname AND p.tablename = c.relname)::float8 \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
                 WHERE n.nspname = $1 AND c.relkind = 'r'",
                &[&self.config.schema],
            )
            .await
            .map_err(|e| self.db(e))?;
        let mut bytes = 0.0;
        for row in &rows {
            const T: &str = "pg_class";
            let total: f64 = col(row, 0, T)?;
            let table: f64 = col(row, 1, T)?;
            let live: f64 = col(row, 2, T)?;
            let dead: f64 = col(row, 3, T)?;
            let width: Option<f64> = col(row, 4, T)?;
            bytes += total * live_share(table, live, dead, width);
        }
        let bytes = bytes.max(0.0) as u64;
        self.health.lock().expect("lock poisoned").disk_bytes = bytes;
        Ok(bytes)
    }

    /// One round of `maintain`: reachable, within its size limit, lapsed
    /// leases taken back, and now and then the counts.
    async fn check(&self) -> Result<u64, StoreError> {
        let bytes = self.measure().await?;
        claims::reap(self).await?;
        if self.maintained.fetch_add(1, Ordering::Relaxed) % COUNT_EVERY == COUNT_EVERY - 1 {
            self.count_states().await?;
        }
        Ok(bytes)
    }

    /// Runs `f` in a transaction that holds this schema's advisory lock
    /// for `what`, or returns `None` at once when another relay holds it.
    async fn exclusively<T, F>(&self, what: &str, f: F) -> Result<Option<T>, StoreError>
    where
        F: for<'t> FnOnce(
            &'t deadpool_postgres::Transaction<'t>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 't>,
        >,
    {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| self.db(e))?;
        let got: bool = tx
            .row(
                "SELECT pg_try_advisory_xact_lock(hashtext($1))",
                &[&format!("hookrelay:{}:{what}", self.config.schema)],
            )
            .await
            .map_err(|e| self.db(e))?
            .try_get(0)
            .map_err(|e| self.db(e))?;
        if !got {
            return Ok(None);
        }
        let out = f(&tx).await.map_err(|e| self.db(e))?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(Some(out))
    }
}

// === impl Store ===

#[async_trait]
impl Store for PostgresStore {
    async fn accept(&self, new: NewEvent) -> Result<Accepted, StoreError> {
        commit::accept(&self.inner, new).await
    }

    async fn due_targets(&self) -> Result<Vec<String>, StoreError> {
        Ok(claims::pending_targets(&self.inner)
            .await?
            .into_iter()
            .map(|(t, _)| t)
            .collect())
    }

    async fn due_for(
        &self,
        target: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeliveryId)>, StoreError> {
        claims::due_for(&self.inner, target, now_ms, limit).await
    }

    async fn next_due(&self, target: &str) -> Result<Option<u64>, StoreError> {
        claims::next_due(&self.inner, target).await
    }

    async fn due_entries(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, u64, DeliveryId)>, StoreError> {
        claims::due_entries(&self.inner, limit).await
    }

    async fn claim(
        &self,
        target: &str,
        at_ms: u64,
        id: DeliveryId,
    ) -> Result<Option<Delivery>, StoreError> {
        claims::claim(&self.inner, target, at_ms, id).await
    }

    async fn claim_due(
        &self,
        target: &str,
        now_ms: u64,
        limit: usize,
        concurrency: usize,
    ) -> Result<Claimed, StoreError> {
        claims::claim_due(&self.inner, target, now_ms, limit, concurrency).await
    }

    async fn finish(
        &self,
        id: DeliveryId,
        attempt: &Attempt,
        next: Next,
    ) -> Result<Delivery, StoreError> {
        claims::finish(&self.inner, id, attempt, next).await
    }

    async fn release(&self, id: DeliveryId, at_ms: u64) -> Result<(), StoreError> {
        claims::release(&self.inner, id, at_ms).await
    }

    fn new_work(&self) -> Arc<Notify> {
        self.inner.new_work.clone()
    }

    fn woken(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner.woken.lock().expect("lock poisoned"))
    }

    async fn requeue(&self, id: DeliveryId, note: &str) -> Result<Option<Delivery>, StoreError> {
        claims::requeue(&self.inner, id, note).await
    }

    async fn requeue_batch(
        &self,
        state: State,
        target: Option<&str>,
        from: Option<DeliveryId>,
        limit: usize,
    ) -> Result<(usize, Option<DeliveryId>), StoreError> {
        claims::requeue_batch(&self.inner, state, target, from, limit).await
    }

    async fn cancel(&self, id: DeliveryId, reason: &str) -> Result<bool, StoreError> {
        claims::cancel(&self.inner, id, reason).await
    }

    async fn cancel_all(&self, target: &str, reason: &str) -> Result<usize, StoreError> {
        claims::cancel_all(&self.inner, target, reason).await
    }

    async fn event(&self, id: EventId) -> Result<Option<Event>, StoreError> {
        queries::event(&self.inner, id).await
    }

    async fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        queries::delivery(&self.inner, id).await
    }

    async fn deliveries_of(
        &self,
        event: EventId,
    ) -> Result<Vec<(DeliveryId, Delivery)>, StoreError> {
        queries::deliveries_of(&self.inner, event).await
    }

    async fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>, StoreError> {
        queries::attempts(&self.inner, id).await
    }

    async fn list_deliveries(
        &self,
        state: Option<State>,
        target: Option<&str>,
        after: Option<DeliveryId>,
        limit: usize,
        scan: usize,
    ) -> Result<Page, StoreError> {
        queries::list_deliveries(&self.inner, state, target, after, limit, scan).await
    }

    fn count(&self, state: State) -> Option<i64> {
        Some(
            self.inner.counts[state.index()]
                .load(Ordering::Relaxed)
                .max(0),
        )
    }

    async fn put_endpoint(&self, endpoint: &EndpointRecord) -> Result<(), StoreError> {
        queries::put_endpoint(&self.inner, endpoint).await
    }

    async fn endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        queries::endpoints(&self.inner).await
    }

    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        queries::delete_endpoint(&self.inner, id).await
    }

    async fn counters(&self, target: &str) -> Result<Counters, StoreError> {
        queries::counters(&self.inner, target).await
    }

    async fn save_counters(&self, target: &str, counters: &Counters) -> Result<(), StoreError> {
        queries::save_counters(&self.inner, target, counters).await
    }

    async fn add_counters(&self, target: &str, delta: &Counters) -> Result<Counters, StoreError> {
        queries::add_counters(&self.inner, target, delta).await
    }

    async fn all_counters(&self) -> Result<Vec<(String, Counters)>, StoreError> {
        queries::all_counters(&self.inner).await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn take_tokens(
        &self,
        target: &str,
        per_second: u32,
        burst: u32,
        want: u32,
    ) -> Result<Tokens, StoreError> {
        claims::take_tokens(&self.inner, target, per_second, burst, want).await
    }

    async fn set_circuit(&self, target: &str, open_until_ms: u64) -> Result<(), StoreError> {
        claims::set_circuit(&self.inner, target, open_until_ms).await
    }

    async fn circuits(&self) -> Result<Vec<(String, u64)>, StoreError> {
        claims::circuits(&self.inner).await
    }

    fn endpoints_changed(&self) -> Arc<Notify> {
        self.inner.endpoints_changed.clone()
    }

    async fn record_inbound(&self, record: &Inbound) -> Result<(), StoreError> {
        queries::record_inbound(&self.inner, record).await
    }

    async fn inbound(
        &self,
        filter: &InboundFilter,
        after: Option<InboundId>,
        limit: usize,
        scan: usize,
    ) -> Result<InboundPage, StoreError> {
        queries::inbound(&self.inner, filter, after, limit, scan).await
    }

    async fn purge_inbound(
        &self,
        cutoff_ms: u64,
        keep: usize,
        limit: usize,
    ) -> Result<Purged, StoreError> {
        queries::purge_inbound(&self.inner, cutoff_ms, keep, limit).await
    }

    async fn purge(&self, cutoff_ms: u64, limit: usize) -> Result<Purged, StoreError> {
        queries::purge(&self.inner, cutoff_ms, limit).await
    }

    async fn purge_dedup(&self) -> Result<usize, StoreError> {
        queries::purge_dedup(&self.inner).await
    }

    async fn add_stats(&self, rows: &[StatRow]) -> Result<(), StoreError> {
        queries::add_stats(&self.inner, rows).await
    }

    async fn stats(
        &self,
        series: &str,
        resolution: Resolution,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<StatRow>, StoreError> {
        queries::stats(&self.inner, series, resolution, from_ms, to_ms).await
    }

    async fn purge_stats(
        &self,
        minutes_before_ms: u64,
        hours_before_ms: u64,
    ) -> Result<usize, StoreError> {
        queries::purge_stats(&self.inner, minutes_before_ms, hours_before_ms).await
    }

    async fn maintain(&self) -> Health {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            return self.health();
        }
        let checked = inner.check().await;
        let mut h = inner.health.lock().expect("lock poisoned");
        h.checked_at_ms = now_ms();
        let refusing = match checked {
            Err(e) => Some(e),
            Ok(bytes) if inner.max_disk_bytes > 0 && bytes >= inner.max_disk_bytes => {
                Some(StoreError::Full {
                    used: bytes,
                    limit: inner.max_disk_bytes,
                })
            }
            Ok(_) => None,
        };
        match (&h.refusing, refusing) {
            (None, Some(e)) => {
                tracing::error!(error = %e, "the store refuses new events");
                h.refusing = Some((e.code().to_string(), e.to_string()));
            }
            (Some(_), Some(e)) => h.refusing = Some((e.code().to_string(), e.to_string())),
            (Some(_), None) => {
                tracing::warn!("the store takes new events again");
                h.refusing = None;
            }
            (None, None) => {}
        }
        h.clone()
    }

    fn health(&self) -> Health {
        let inner = &self.inner;
        let mut h = inner.health.lock().expect("lock poisoned").clone();
        if inner.closed.load(Ordering::Relaxed) {
            h.refusing = Some((
                StoreError::Closed.code().to_string(),
                StoreError::Closed.to_string(),
            ));
        }
        h
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "fsync_batch_events",
            "Events made durable by one commit (group commit)",
            self.inner.commit_batch.clone(),
        );
        registry.register_with_unit(
            "fsync_duration",
            "Time one commit of accepted events took",
            Unit::Seconds,
            self.inner.commit_duration.clone(),
        );
    }

    async fn close(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        // No new events or outcomes; the committers and outcome writers
        // write what is queued, then stop.
        drop(inner.commits.lock().expect("lock poisoned").take());
        drop(inner.outcomes.lock().expect("lock poisoned").take());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stopped = inner.batcher_stopped.notified();
            if inner.batchers.load(Ordering::Relaxed) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, stopped).await.is_err() {
                tracing::warn!("closing the store with commits still under way");
                break;
            }
        }
        // Claims this relay still holds go back to the fleet at once,
        // instead of when their leases run out.
        let given_back = claims::give_back_all(inner).await;
        inner.closed.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        inner.pool.close();
        given_back.map(|_| ())
    }
}

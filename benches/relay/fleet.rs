//! (h) a fleet on PostgreSQL: two hookrelay processes with
//! `store.backend = "postgres"` on one database of a throwaway PostgreSQL
//! 15 server (`pg.rs`, the tests' harness: fsync and synchronous_commit
//! on), each with its own ingest and admin ports and the route and target
//! of (b) and (c), both delivering to one loopback receiver here. Two runs,
//! each on a fresh database with a fresh pair of relays:
//!
//! - ingest: the closed-loop load of (b), its connections dealt over the
//!   two relays in turn; only 202s count. Then up to `DRAIN_LIMIT` for the
//!   deliveries still owed, so the run's costs include delivering;
//! - end to end: the open-loop 1,000 events/s of (c), dealt over the two;
//!   POST to delivery and POST to 202, and the duplicates and missing
//!   deliveries (a fleet delivers at least once). Then the same at
//!   `SUSTAINED` events/s, a rate under what the fleet ingests here, so
//!   that the latency is not a queue's growth when 1,000/s is past it.
//!
//! Each run also reads what explains it: each relay's `/metrics` (events
//! per commit, commit time), the CPU of each relay, of PostgreSQL (the
//! postmaster, its backends and helpers) and of this bench process; and
//! from the server, from before the relays start to after they are
//! stopped and their sessions gone (a backend writes its statistics when
//! it exits, so they are complete then): transaction ids taken (write
//! transactions), WAL bytes, WAL writes and syncs (`pg_stat_wal`), commits
//! (`pg_stat_database`), and each statement's calls (`pg_stat_statements`,
//! loaded at the server's start when the server has it). While the load
//! runs, a sampler reads what the relays' sessions are doing every
//! `SAMPLE_EVERY` (`pg_stat_activity`: running, waiting on a lock, on the
//! WAL, or on the relay), which shows where a commit's time goes.
//!
//! `HOOKRELAY_BENCH_PG_KEYS` adds lines to the relays' `[store.postgres]`
//! (`pool_size = 64`, say), to see what a setting changes.
//!
//! PostgreSQL missing: (h) is skipped and says why, unless `CI` is set,
//! when the harness fails the run instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

use crate::load::{closed_loop_on, paced_on, Latency, Pace, Throughput};
use crate::pg::Postgres;
use crate::procs::{
    children_cpu, cpu_secs, flushes, log_summary, memory, tree_cpu_secs, Flushes, LogSummary,
    Memory, RelayConfig, RelayDir, Spawned,
};
use crate::server::Receiver;
use crate::{progress, PACED, PG_KEYS_VAR, STARTUP};

/// The second end-to-end run: a rate the fleet keeps up with here.
pub(crate) const SUSTAINED: Pace = Pace {
    rate: 200.0,
    secs: 10,
    connections: 16,
};
/// Relays in the fleet.
pub(crate) const RELAYS: usize = 2;
/// How often the sampler reads `pg_stat_activity`, and at most how many
/// times in one load.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const MAX_SAMPLES: u64 = 2_000;
/// Kinds of session activity the report lists, most seen first.
pub(crate) const TOP_WAITS: usize = 8;
/// Where the harness looks for initdb and postgres unless `PG_BIN` is set
/// (for the message when they are missing).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The schema the relays use (`store.postgres.schema`'s default).
const SCHEMA: &str = "hookrelay";
/// The longest wait for the deliveries still owed after the ingest load.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// A drain that delivers nothing for this long has stalled.
const STALL: Duration = Duration::from_secs(10);
/// The longest wait for a relay's sessions to leave the server.
const SESSIONS_GONE: Duration = Duration::from_secs(10);
/// The longest any one monitoring statement may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Statements listed per run, most called first.
pub(crate) const TOP_STATEMENTS: usize = 12;
/// The server settings the report shows (durability, memory, WAL).
const SETTINGS: &[&str] = &[
    "server_version",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "shared_buffers",
    "max_connections",
    "shared_preload_libraries",
];

/// What (h) found.
pub(crate) enum Fleet {
    /// PostgreSQL is not installed here, and `CI` is not set.
    Skipped(String),
    Ran(Box<Ran>),
}

pub(crate) struct Ran {
    /// `HOOKRELAY_BENCH_PG_KEYS`, if set.
    pub(crate) extra_keys: Option<String>,
    /// (name, value with unit) of `SETTINGS`, as the server reports them.
    pub(crate) settings: Vec<(String, String)>,
    /// Whether pg_stat_statements is loaded (else: why not).
    pub(crate) statements: Result<(), String>,
    pub(crate) ingest: Result<IngestRun, String>,
    /// At `PACED`'s rate, then at `SUSTAINED`'s.
    pub(crate) latency: Vec<(Pace, Result<LatencyRun, String>)>,
}

pub(crate) struct IngestRun {
    /// Per relay, in start order.
    pub(crate) load: Vec<Throughput>,
    /// Deliveries the receiver got during the load (warm-up included).
    pub(crate) delivered_during: u64,
    pub(crate) drain: Drain,
    pub(crate) readings: Readings,
}

/// The wait after the ingest load for the deliveries still owed.
pub(crate) struct Drain {
    /// 202s of the whole load, warm-up included: the deliveries owed.
    pub(crate) owed: u64,
    /// Deliveries received by the end of the wait (duplicates included).
    pub(crate) delivered: u64,
    /// From the end of the load to the last delivery, or to giving up.
    pub(crate) took: Duration,
    pub(crate) end: DrainEnd,
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum DrainEnd {
    Done,
    Stalled,
    Deadline,
}

pub(crate) struct LatencyRun {
    pub(crate) latency: Latency,
    pub(crate) readings: Readings,
}

/// What a run cost, from the relays' start to their stop.
pub(crate) struct Readings {
    pub(crate) elapsed: Duration,
    /// What the relays' sessions were doing while the load ran.
    pub(crate) activity: Result<Activity, String>,
    pub(crate) relays: Vec<RelayReading>,
    /// CPU seconds of PostgreSQL (every process of the server) and of
    /// this bench process (load generator and receiver).
    pub(crate) postgres_cpu: f64,
    /// Of `postgres_cpu`: the relays' sessions; and each of the server's
    /// own processes (checkpointer, WAL writer, autovacuum...) by name.
    /// The rest is the bench's sessions and processes that exited.
    pub(crate) postgres_sessions_cpu: f64,
    pub(crate) postgres_own_cpu: Vec<(String, f64)>,
    pub(crate) bench_cpu: f64,
    pub(crate) server: Result<ServerDelta, String>,
    pub(crate) statements: Result<Vec<Statement>, String>,
    pub(crate) tables: Result<Tables, String>,
}

pub(crate) struct RelayReading {
    pub(crate) cpu_secs: f64,
    pub(crate) flushes: Option<Flushes>,
    pub(crate) mem: Memory,
    pub(crate) log: LogSummary,
}

/// Samples of the relays' sessions: how many samples, and per (state,
/// wait event) how many sessions were seen in it over all of them.
pub(crate) struct Activity {
    pub(crate) samples: u64,
    pub(crate) seen: Vec<(String, u64)>,
    /// Locks waited for (`pg_locks`, not granted): what, and how many
    /// waiters over all samples.
    pub(crate) lock_waits: Vec<(String, u64)>,
}

/// Cluster-wide counters of the server, and this database's.
#[derive(Clone, Copy, Default)]
struct ServerStats {
    next_xid: i64,
    wal_lsn: i64,
    wal_records: i64,
    wal_write: i64,
    wal_sync: i64,
    xact_commit: i64,
    xact_rollback: i64,
    tup_inserted: i64,
    tup_updated: i64,
    tup_deleted: i64,
}

/// The server's counters over a run.
#[derive(Clone, Copy)]
pub(crate) struct ServerDelta {
    /// Transaction ids taken: transactions that wrote.
    pub(crate) write_xacts: i64,
    pub(crate) wal_bytes: i64,
    pub(crate) wal_records: i64,
    pub(crate) wal_write: i64,
    pub(crate) wal_sync: i64,
    pub(crate) xact_commit: i64,
    pub(crate) xact_rollback: i64,
    pub(crate) tup_inserted: i64,
    pub(crate) tup_updated: i64,
    pub(crate) tup_deleted: i64,
}

/// One statement of the relays, from pg_stat_statements.
pub(crate) struct Statement {
    pub(crate) calls: i64,
    pub(crate) rows: i64,
    pub(crate) total_ms: f64,
    pub(crate) query: String,
}

/// What the database holds at the end of a run.
pub(crate) struct Tables {
    pub(crate) events: i64,
    pub(crate) attempts: i64,
    /// Per table that was updated: (name, rows updated, of them HOT, that
    /// is without a new index entry).
    pub(crate) updates: Vec<(String, i64, i64)>,
    /// Deliveries by state (0 pending, 1 in flight, 2 succeeded, 3 dead,
    /// 4 cancelled).
    pub(crate) by_state: Vec<(i16, i64)>,
}

impl Readings {
    /// Every relay's CPU seconds together.
    pub(crate) fn relays_cpu(&self) -> f64 {
        self.relays.iter().map(|r| r.cpu_secs).sum()
    }
}

/// Runs (h): a server, then the two runs; `Skipped` without PostgreSQL.
pub(crate) fn measure(rt: &tokio::runtime::Runtime, bin: &Path) -> Fleet {
    progress("(h) fleet: starting PostgreSQL");
    let Some(pg) = rt.block_on(Postgres::start()) else {
        let dir = std::env::var("PG_BIN").unwrap_or_else(|_| PG_BIN.into());
        return Fleet::Skipped(format!(
            "PostgreSQL is not installed: initdb and postgres are not in {dir} \
             (Debian's postgresql package puts them there; PG_BIN names another directory)"
        ));
    };
    let admin = rt.block_on(admin_url(&pg));
    let statements = rt.block_on(track_statements(&pg, &admin));
    let monitor = match rt.block_on(Monitor::connect(&admin)) {
        Ok(m) => m,
        Err(e) => {
            return Fleet::Ran(Box::new(Ran {
                extra_keys: extra_keys(),
                settings: Vec::new(),
                statements,
                ingest: Err(e.clone()),
                latency: vec![(PACED, Err(e))],
            }))
        }
    };
    let settings = rt.block_on(monitor.settings()).unwrap_or_default();
    let tracked = statements.is_ok();
    progress("(h) fleet: durable ingest, two relays");
    let ingest = measure_ingest(rt, bin, &pg, &monitor, tracked);
    let latency = [PACED, SUSTAINED]
        .into_iter()
        .map(|pace| {
            progress(&format!(
                "(h) fleet: end-to-end at {}/s, two relays",
                pace.rate
            ));
            (pace, measure_latency(rt, bin, &pg, &monitor, tracked, pace))
        })
        .collect();
    drop(monitor);
    drop(pg);
    Fleet::Ran(Box::new(Ran {
        extra_keys: extra_keys(),
        settings,
        statements,
        ingest,
        latency,
    }))
}

/// `HOOKRELAY_BENCH_PG_KEYS`, unless unset or blank.
fn extra_keys() -> Option<String> {
    std::env::var(PG_KEYS_VAR)
        .ok()
        .filter(|k| !k.trim().is_empty())
}

fn measure_ingest(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    pg: &Postgres,
    monitor: &Monitor,
    tracked: bool,
) -> Result<IngestRun, String> {
    let rx = rt.block_on(Receiver::start());
    let mut pair = Pair::start(rt, bin, pg, monitor, rx.addr, tracked)?;
    let sampler = Sampler::start(rt, monitor, &pair.db);
    let load = rt.block_on(closed_loop_on(&pair.addrs(), "/bench/new_order", 202));
    pair.activity = rt.block_on(sampler.finish());
    let delivered_during = rx.total();
    let owed = Throughput::sum(&load).ok_all;
    let drain = rt.block_on(drain(&rx, owed));
    let readings = pair.stop(rt, monitor, tracked);
    Ok(IngestRun {
        load,
        delivered_during,
        drain,
        readings,
    })
}

fn measure_latency(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    pg: &Postgres,
    monitor: &Monitor,
    tracked: bool,
    pace: Pace,
) -> Result<LatencyRun, String> {
    let rx = rt.block_on(Receiver::start_on(1, pace.events(), StatusCode::OK));
    let mut pair = Pair::start(rt, bin, pg, monitor, rx.addr, tracked)?;
    let sampler = Sampler::start(rt, monitor, &pair.db);
    let latency = rt.block_on(paced_on(&pair.addrs(), &rx, pace));
    pair.activity = rt.block_on(sampler.finish());
    let readings = pair.stop(rt, monitor, tracked);
    Ok(LatencyRun { latency, readings })
}

/// Waits until the receiver has had `owed` deliveries, or nothing came for
/// `STALL`, or `DRAIN_LIMIT` has passed.
async fn drain(rx: &Receiver, owed: u64) -> Drain {
    let started = Instant::now();
    let (mut last, mut last_at) = (rx.total(), started);
    let end = loop {
        let now = Instant::now();
        let got = rx.total();
        if got != last {
            (last, last_at) = (got, now);
        }
        if got >= owed {
            break DrainEnd::Done;
        }
        if now - last_at >= STALL {
            break DrainEnd::Stalled;
        }
        if now - started >= DRAIN_LIMIT {
            break DrainEnd::Deadline;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Drain {
        owed,
        delivered: last,
        took: last_at - started,
        end,
    }
}

// === the pair of relays ===

/// Two relays on one fresh database, and the readings taken before they
/// started.
struct Pair {
    db: String,
    relays: Vec<(RelayDir, Spawned)>,
    activity: Result<Activity, String>,
    before: Result<ServerStats, String>,
    postgres_cpu: f64,
    /// The server's processes and their CPU seconds at the start.
    postgres_children: HashMap<u32, f64>,
    bench_cpu: f64,
    postmaster: Option<u32>,
    started: Instant,
}

impl Pair {
    /// A new database, the counters, then the relays one after the other
    /// (each waited for until its ingest port accepts).
    fn start(
        rt: &tokio::runtime::Runtime,
        bin: &Path,
        pg: &Postgres,
        monitor: &Monitor,
        rx: SocketAddr,
        tracked: bool,
    ) -> Result<Pair, String> {
        let url = rt.block_on(pg.database());
        let db = url.rsplit_once('/').map_or("", |(_, d)| d).to_string();
        if tracked {
            rt.block_on(monitor.reset_statements())?;
        }
        let postmaster = postmaster_pid(pg.dir());
        let mut pair = Pair {
            before: rt.block_on(monitor.stats(&db)),
            postgres_cpu: postmaster.map_or(f64::NAN, tree_cpu_secs),
            postgres_children: postmaster
                .map(children_cpu)
                .unwrap_or_default()
                .into_iter()
                .map(|(pid, _, cpu)| (pid, cpu))
                .collect(),
            bench_cpu: cpu_secs(std::process::id()),
            postmaster,
            db,
            relays: Vec::new(),
            activity: Err("not sampled".into()),
            started: Instant::now(),
        };
        let mut config = RelayConfig::single(rx);
        config.store = format!(
            "backend = \"postgres\"\n\n[store.postgres]\nurl = {url:?}\n{}\n",
            extra_keys().unwrap_or_default()
        );
        for _ in 0..RELAYS {
            let mut dir = RelayDir::new(&config);
            let mut relay = dir.spawn(bin, None);
            relay.wait_listening(dir.addr, STARTUP)?;
            pair.relays.push((dir, relay));
        }
        Ok(pair)
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.relays.iter().map(|(d, _)| d.addr).collect()
    }

    /// Reads each relay, stops it (`kill -9`), waits for its sessions to
    /// leave the server, then reads the server.
    fn stop(self, rt: &tokio::runtime::Runtime, monitor: &Monitor, tracked: bool) -> Readings {
        // What each of the server's processes did, while the relays'
        // sessions are still there to be read.
        let (mut sessions_cpu, mut own) = (0.0, HashMap::<String, f64>::new());
        for (pid, cmdline, cpu) in self.postmaster.map(children_cpu).unwrap_or_default() {
            let used = cpu - self.postgres_children.get(&pid).copied().unwrap_or(0.0);
            if cmdline.contains(&format!(" {} ", self.db)) {
                sessions_cpu += used;
            } else if let Some(name) = server_process(&cmdline) {
                *own.entry(name).or_default() += used;
            }
        }
        let mut own: Vec<(String, f64)> = own.into_iter().collect();
        own.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut relays = Vec::new();
        // Each dir (and its log) goes once its relay has been read.
        for (dir, spawned) in self.relays {
            let flushes = rt.block_on(flushes(dir.admin));
            let pid = spawned.guard.pid();
            let (cpu_secs, mem) = (cpu_secs(pid), memory(pid));
            let log = spawned.log.clone();
            spawned.guard.kill9();
            relays.push(RelayReading {
                cpu_secs,
                flushes,
                mem,
                log: log_summary(&log),
            });
            drop(dir);
        }
        let elapsed = self.started.elapsed();
        let gone = rt.block_on(monitor.wait_sessions_gone(&self.db));
        let after = gone.and_then(|()| rt.block_on(monitor.stats(&self.db)));
        let server = match (self.before, after) {
            (Ok(b), Ok(a)) => Ok(a.since(&b)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let statements = if tracked {
            rt.block_on(monitor.statements(&self.db))
        } else {
            Err("pg_stat_statements is not loaded".into())
        };
        let tables = rt.block_on(tables(&monitor.url_of(&self.db)));
        Readings {
            elapsed,
            activity: self.activity,
            relays,
            postgres_cpu: self.postmaster.map_or(f64::NAN, tree_cpu_secs) - self.postgres_cpu,
            postgres_sessions_cpu: sessions_cpu,
            postgres_own_cpu: own,
            bench_cpu: cpu_secs(std::process::id()) - self.bench_cpu,
            server,
            statements,
            tables,
        }
    }
}

/// The name of one of the server's own processes from its title
/// (`postgres: checkpointer`, `postgres: autovacuum worker`), or `None`
/// for a session (`postgres: <user> <database> <client> <state>`).
fn server_process(cmdline: &str) -> Option<String> {
    const OWN: &[&str] = &[
        "checkpointer",
        "background writer",
        "walwriter",
        "autovacuum",
        "logical replication",
        "archiver",
        "stats",
    ];
    let title = cmdline.strip_prefix("postgres: ")?;
    OWN.iter()
        .any(|p| title.starts_with(p))
        .then(|| title.to_string())
}

/// The postmaster's pid: the first line of `postmaster.pid` in the data
/// directory.
fn postmaster_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("data/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

// === the server's side ===

/// Loads pg_stat_statements: `shared_preload_libraries` by `ALTER SYSTEM`
/// (the harness's command line does not set it), a restart, and the
/// extension in the `postgres` database, where the monitor reads it.
async fn track_statements(pg: &Postgres, admin: &str) -> Result<(), String> {
    let client = connect(admin).await?;
    let rows = query(
        &client,
        "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'",
        &[],
    )
    .await?;
    let lib: String = rows
        .first()
        .and_then(|r| r.try_get(0).ok())
        .ok_or("the server does not say where its libraries are")?;
    let so = Path::new(&lib).join("pg_stat_statements.so");
    if !so.is_file() {
        return Err(format!("{} is missing", so.display()));
    }
    simple(
        &client,
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
    )
    .await?;
    drop(client);
    pg.restart().await;
    let client = connect(admin).await?;
    simple(&client, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await?;
    Ok(())
}

/// The URL of the server's `postgres` database, from the URL of a database
/// the harness makes for it (the harness keeps its URL builder to itself).
async fn admin_url(pg: &Postgres) -> String {
    let url = pg.database().await;
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/postgres"),
        None => url,
    }
}

async fn connect(url: &str) -> Result<Client, String> {
    let connecting = tokio_postgres::connect(url, NoTls);
    let (client, connection) = tokio::time::timeout(QUERY_TIMEOUT, connecting)
        .await
        .map_err(|_| format!("no connection to PostgreSQL within {QUERY_TIMEOUT:?}"))?
        .map_err(|e| format!("connect to PostgreSQL: {e}"))?;
    // Ends when the client drops.
    tokio::spawn(connection);
    Ok(client)
}

async fn query(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, String> {
    tokio::time::timeout(QUERY_TIMEOUT, client.query(sql, params))
        .await
        .map_err(|_| format!("{sql}: no answer within {QUERY_TIMEOUT:?}"))?
        .map_err(|e| format!("{sql}: {e}"))
}

/// A statement by the simple query protocol (for the utility statements:
/// ALTER SYSTEM runs outside any transaction block).
async fn simple(client: &Client, sql: &str) -> Result<(), String> {
    tokio::time::timeout(QUERY_TIMEOUT, client.batch_execute(sql))
        .await
        .map_err(|_| format!("{sql}: no answer within {QUERY_TIMEOUT:?}"))?
        .map_err(|e| format!("{sql}: {e}"))
}

fn int(row: &Row, i: usize) -> i64 {
    row.try_get::<_, Option<i64>>(i).ok().flatten().unwrap_or(0)
}

/// A session on the `postgres` database that reads the server's counters
/// (so its own statements are not counted as the relays').
struct Monitor {
    client: Client,
    base: String,
}

impl Monitor {
    async fn connect(admin: &str) -> Result<Monitor, String> {
        Ok(Monitor {
            client: connect(admin).await?,
            base: admin.trim_end_matches("/postgres").to_string(),
        })
    }

    fn url_of(&self, db: &str) -> String {
        format!("{}/{db}", self.base)
    }

    async fn settings(&self) -> Result<Vec<(String, String)>, String> {
        let names: Vec<String> = SETTINGS.iter().map(|s| s.to_string()).collect();
        let rows = query(
            &self.client,
            "SELECT name, setting, coalesce(unit, '') FROM pg_settings WHERE name = ANY($1)",
            &[&names],
        )
        .await?;
        let mut out: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                let (name, value, unit): (String, String, String) = (
                    r.try_get(0).unwrap_or_default(),
                    r.try_get(1).unwrap_or_default(),
                    r.try_get(2).unwrap_or_default(),
                );
                (name, format!("{value}{}", shown_unit(&unit)))
            })
            .collect();
        out.sort_by_key(|(name, _)| SETTINGS.iter().position(|s| s == name));
        Ok(out)
    }

    async fn stats(&self, db: &str) -> Result<ServerStats, String> {
        let rows = query(
            &self.client,
            "SELECT txid_snapshot_xmax(txid_current_snapshot()), \
               pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, \
               w.wal_records, w.wal_write, w.wal_sync, \
               d.xact_commit, d.xact_rollback, d.tup_inserted, d.tup_updated, d.tup_deleted \
             FROM pg_stat_wal w, pg_stat_database d WHERE d.datname = $1",
            &[&db],
        )
        .await?;
        let r = rows
            .first()
            .ok_or_else(|| format!("no pg_stat_database row for {db}"))?;
        Ok(ServerStats {
            next_xid: int(r, 0),
            wal_lsn: int(r, 1),
            wal_records: int(r, 2),
            wal_write: int(r, 3),
            wal_sync: int(r, 4),
            xact_commit: int(r, 5),
            xact_rollback: int(r, 6),
            tup_inserted: int(r, 7),
            tup_updated: int(r, 8),
            tup_deleted: int(r, 9),
        })
    }

    async fn reset_statements(&self) -> Result<(), String> {
        query(&self.client, "SELECT pg_stat_statements_reset()", &[])
            .await
            .map(|_| ())
    }

    /// The statements run in `db` since the last reset, most called first.
    async fn statements(&self, db: &str) -> Result<Vec<Statement>, String> {
        let rows = query(
            &self.client,
            "SELECT calls, rows, total_exec_time, query FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1) \
             ORDER BY calls DESC, total_exec_time DESC",
            &[&db],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| Statement {
                calls: int(r, 0),
                rows: int(r, 1),
                total_ms: r.try_get(2).unwrap_or(0.0),
                query: r
                    .try_get::<_, String>(3)
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            })
            .collect())
    }

    /// Waits until no session is connected to `db`, and a moment more for
    /// the last ones to write their statistics as they exit.
    async fn wait_sessions_gone(&self, db: &str) -> Result<(), String> {
        let deadline = Instant::now() + SESSIONS_GONE;
        loop {
            let rows = query(
                &self.client,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&db],
            )
            .await?;
            let left = rows.first().map_or(0, |r| int(r, 0));
            if left == 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{left} sessions still on {db} {SESSIONS_GONE:?} after the relays stopped"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn most_first(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// Reads the relays' sessions in `pg_stat_activity` every `SAMPLE_EVERY`
/// on a connection of its own, until finished.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Activity, String>>,
}

impl Sampler {
    fn start(rt: &tokio::runtime::Runtime, monitor: &Monitor, db: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, url, db) = (stop.clone(), monitor.url_of("postgres"), db.to_string());
        let task = rt.spawn(async move {
            let client = connect(&url).await?;
            let mut seen: HashMap<String, u64> = HashMap::new();
            let mut locks: HashMap<String, u64> = HashMap::new();
            let mut samples = 0;
            while samples < MAX_SAMPLES && !flag.load(Ordering::Relaxed) {
                let rows = query(
                    &client,
                    "SELECT state, coalesce(wait_event_type || ':' || wait_event, '') \
                     FROM pg_stat_activity WHERE datname = $1",
                    &[&db],
                )
                .await?;
                let waits = query(
                    &client,
                    "SELECT l.locktype || ' ' || coalesce(l.classid::regclass::text || ' ' || l.objid, \
                       l.relation::regclass::text, '') || ' ' || l.mode \
                     FROM pg_locks l WHERE NOT l.granted",
                    &[],
                )
                .await?;
                samples += 1;
                for r in &waits {
                    let lock: String = r.try_get(0).unwrap_or_default();
                    *locks.entry(lock).or_default() += 1;
                }
                for r in &rows {
                    let state: Option<String> = r.try_get(0).unwrap_or(None);
                    let wait: String = r.try_get(1).unwrap_or_default();
                    let state = state.unwrap_or_else(|| "?".into());
                    let key = match wait.as_str() {
                        "" => state,
                        w => format!("{state}, waiting on {w}"),
                    };
                    *seen.entry(key).or_default() += 1;
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            Ok(Activity {
                samples,
                seen: most_first(seen),
                lock_waits: most_first(locks),
            })
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Result<Activity, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .map_err(|e| format!("the sampler failed: {e}"))?
    }
}

impl ServerStats {
    fn since(&self, before: &ServerStats) -> ServerDelta {
        ServerDelta {
            write_xacts: self.next_xid - before.next_xid,
            wal_bytes: self.wal_lsn - before.wal_lsn,
            wal_records: self.wal_records - before.wal_records,
            wal_write: self.wal_write - before.wal_write,
            wal_sync: self.wal_sync - before.wal_sync,
            xact_commit: self.xact_commit - before.xact_commit,
            xact_rollback: self.xact_rollback - before.xact_rollback,
            tup_inserted: self.tup_inserted - before.tup_inserted,
            tup_updated: self.tup_updated - before.tup_updated,
            tup_deleted: self.tup_deleted - before.tup_deleted,
        }
    }
}

/// pg_settings' unit as a suffix: `8kB` pages shown as such.
fn shown_unit(unit: &str) -> String {
    match unit {
        "" => String::new(),
        u if u.starts_with(|c: char| c.is_ascii_digit()) => format!(" x {u}"),
        u => u.to_string(),
    }
}

/// Rows of the relays' tables at the end of a run, read after the
/// statements so that these reads are not among them.
async fn tables(url: &str) -> Result<Tables, String> {
    let client = connect(url).await?;
    let count = |table: &'static str| {
        let client = &client;
        async move {
            let rows = query(
                client,
                &format!("SELECT count(*) FROM {SCHEMA}.{table}"),
                &[],
            )
            .await?;
            Ok::<i64, String>(rows.first().map_or(0, |r| int(r, 0)))
        }
    };
    let events = count("events").await?;
    let attempts = count("attempts").await?;
    let rows = query(
        &client,
        &format!("SELECT state, count(*) FROM {SCHEMA}.deliveries GROUP BY state ORDER BY state"),
        &[],
    )
    .await?;
    let by_state = rows
        .iter()
        .map(|r| (r.try_get::<_, i16>(0).unwrap_or(-1), int(r, 1)))
        .collect();
    let rows = query(
        &client,
        "SELECT relname::text, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND n_tup_upd > 0 ORDER BY n_tup_upd DESC",
        &[&SCHEMA],
    )
    .await?;
    let updates = rows
        .iter()
        .map(|r| (r.try_get(0).unwrap_or_default(), int(r, 1), int(r, 2)))
        .collect();
    Ok(Tables {
        events,
        attempts,
        updates,
        by_state,
    })
}

//! (f) backlog: the receiver is down (it answers 503, no `Retry-After`)
//! while N events come in as fast as the load generator sends them; then
//! the relay is killed (`kill -9`) and started again on the same store;
//! then the receiver comes back and the backlog drains; then the janitor
//! purges what was delivered.
//!
//! How the backlog waits: the target's circuit opens after
//! `circuit.failures` = 10 failed attempts in a row (the default), so most
//! deliveries are never attempted while the receiver is down; the few that
//! are (the first ones, and one probe per `circuit.cooldown`) get
//! `backoff = 1h` and stay pending past the end of the bench. The short
//! cooldown (2 s) means that once the receiver answers 200 again, the next
//! probe closes the circuit and the drain starts within about 2 s, in the
//! same process. `store.retention = "1s"`, so every delivered event is past
//! retention at the janitor's next round (every `PURGE_EVERY`, the first at
//! start; at most `PURGE_ROUND_MAX` events a round), which is waited for,
//! up to `PURGE_ROUNDS` rounds.
//!
//! Every wait has a deadline; a deadline hit is reported, not a panic.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;

use crate::load::{burst, Burst};
use crate::procs::{
    fd_limit, get, log_summary, memory, unit_fd_limit, wait_ready, LogSummary, Memory, PurgeLog,
    Ready, RelayConfig, RelayDir, Sample, Sampler, Spawned,
};
use crate::server::Receiver;
use crate::{progress, BACKLOG_VAR, STARTUP};

/// `[delivery]` of (f): as (b), with a long backoff and a short circuit
/// cooldown.
pub(crate) const DELIVERY: &str = r#"concurrency = 64
rate = { per_second = 100000, burst = 100000 }
backoff = { initial = "1h", max = "1h" }
circuit = { failures = 10, cooldown = "2s" }
"#;
pub(crate) const RETENTION: &str = "1s";
/// The janitor's period: `PURGE_EVERY` in src/lib.rs.
pub(crate) const PURGE_EVERY: Duration = Duration::from_secs(60);
/// A drain that delivers nothing new for this long has stalled.
const STALL: Duration = Duration::from_secs(30);
/// The most events one janitor round removes: `PURGE_STEPS` × `PURGE_STEP`
/// in src/lib.rs. Each round logs one line with its total.
pub(crate) const PURGE_ROUND_MAX: u64 = 100_000;
/// The purge is waited for this many rounds at most.
pub(crate) const PURGE_ROUNDS: u64 = 3;
/// A relay past this VmRSS is not pushed further (the machine's safety).
pub(crate) const RSS_CAP_MIB: f64 = 8192.0;

/// The backlog's size: `HOOKRELAY_BENCH_BACKLOG`, else 20,000 in quick mode
/// and 1,000,000 otherwise.
pub(crate) fn events(quick: bool) -> u64 {
    match std::env::var(BACKLOG_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(n) if n > 0 => n,
        _ if quick => 20_000,
        _ => 1_000_000,
    }
}

pub(crate) struct Backlog {
    pub(crate) events: u64,
    pub(crate) run: Result<Run, String>,
}

pub(crate) struct Run {
    pub(crate) ingest: Burst,
    pub(crate) ingest_limit: Duration,
    /// The ingest was stopped at `RSS_CAP_MIB`.
    pub(crate) ingest_rss_cap: bool,
    /// VmRSS (MiB) when 10 %, 20 %, ... of the events were acknowledged.
    pub(crate) ingest_rss: Vec<(u64, f64)>,
    pub(crate) ingest_rss_peak: f64,
    pub(crate) mem_after_ingest: Memory,
    /// Attempts the receiver answered 503 during the ingest.
    pub(crate) refused_during_ingest: u64,
    pub(crate) store_bytes: u64,
    pub(crate) fd_limit: Option<u64>,
    pub(crate) restart: Ready,
    pub(crate) restart_limit: Duration,
    /// The restarted relay, when `/readyz` first answered 200.
    pub(crate) mem_ready: Memory,
    /// When the restarted relay's store had counted its deliveries (after
    /// `kill -9` it counts in the background): `/metrics` has a
    /// `hookrelay_queue_depth` series again. From the spawn.
    pub(crate) counted: Option<Duration>,
    pub(crate) mem_counted: Memory,
    pub(crate) drain: Option<Drain>,
    pub(crate) purge: Option<Purge>,
    pub(crate) logs: Vec<(&'static str, LogSummary)>,
}

/// How a bounded wait ended.
pub(crate) enum End {
    /// What it waited for happened.
    Done,
    /// Nothing moved for `STALL`.
    Stalled,
    /// Its deadline, counted from the start of the wait (for the purge:
    /// the restarted relay's age).
    Deadline(Duration),
    /// The relay's VmRSS passed `RSS_CAP_MIB`.
    RssCap,
}

pub(crate) struct Drain {
    /// Acknowledged events not waiting on a 1 h backoff.
    pub(crate) expected: u64,
    /// Answered 503 at some point and not delivered since: waiting 1 h.
    pub(crate) waiting: u64,
    /// Distinct events delivered, and deliveries of one already delivered.
    pub(crate) delivered: u64,
    pub(crate) duplicates: u64,
    /// First and last delivery, from the receiver answering 200 again.
    pub(crate) first: Option<Duration>,
    pub(crate) last: Option<Duration>,
    pub(crate) end: End,
    pub(crate) rss: Vec<(u64, f64)>,
    pub(crate) rss_peak: f64,
    pub(crate) mem_after: Memory,
}

impl Drain {
    /// Deliveries per second from the first delivery to the last.
    pub(crate) fn per_sec(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) if b > a => self.delivered as f64 / (b - a).as_secs_f64(),
            _ => f64::NAN,
        }
    }
}

pub(crate) struct Purge {
    /// Events the janitor removed while the drain ran, and in all.
    pub(crate) removed_during_drain: u64,
    pub(crate) removed: u64,
    /// Events that were finished (delivered) and so removable.
    pub(crate) finished: u64,
    /// The restarted relay's age when the drain ended, when the janitor's
    /// next round was due, and when the first and the last line of removals
    /// after it were seen (one line per round, at its end).
    pub(crate) drain_end_uptime: Duration,
    pub(crate) next_pass: Duration,
    pub(crate) first_removal_uptime: Option<Duration>,
    pub(crate) last_removal_uptime: Option<Duration>,
    pub(crate) end: End,
    pub(crate) mem_after: Memory,
}

pub(crate) fn measure(rt: &tokio::runtime::Runtime, bin: &Path, events: u64) -> Backlog {
    Backlog {
        events,
        run: run(rt, bin, events),
    }
}

/// Polls `/metrics` every 20 ms until it has a `hookrelay_queue_depth`
/// series; the time from the spawn, or `None` past `limit` from it.
async fn wait_counted(admin: SocketAddr, relay: &Spawned, limit: Duration) -> Option<Duration> {
    let deadline = relay.at + limit;
    while Instant::now() < deadline {
        if let Some((200, body)) = get(admin, "/metrics").await {
            if String::from_utf8_lossy(&body).contains("hookrelay_queue_depth{") {
                return Some(relay.at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn run(rt: &tokio::runtime::Runtime, bin: &Path, n: u64) -> Result<Run, String> {
    let rx = rt.block_on(Receiver::start_on(
        1,
        n as usize,
        StatusCode::SERVICE_UNAVAILABLE,
    ));
    let config = RelayConfig {
        delivery: DELIVERY.into(),
        store: format!("retention = {RETENTION:?}\n"),
        egress: String::new(),
        targets: vec![("rx".into(), format!("http://{}/hook", rx.addr))],
    };
    let mut dir = RelayDir::new(&config);

    // Ingest while the receiver is down.
    progress(&format!(
        "(f) backlog: ingesting {n} events, receiver answering 503"
    ));
    let mut first = dir.spawn(bin, unit_fd_limit());
    first.wait_listening(dir.addr, STARTUP)?;
    let pid = first.guard.pid();
    let fd_limit = fd_limit(pid);
    let acked = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(pid, Duration::from_millis(250), acked.clone());
    let ingest_limit = Duration::from_secs(60 + n / 1000);
    let stop = Arc::new(AtomicBool::new(false));
    let sending = rt.spawn(burst(
        dir.addr,
        "/bench/new_order",
        n,
        ingest_limit,
        acked.clone(),
        stop.clone(),
    ));
    let mut ingest_rss_cap = false;
    while !sending.is_finished() {
        if memory(pid).rss_mib > RSS_CAP_MIB {
            ingest_rss_cap = true;
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let ingest = rt
        .block_on(sending)
        .map_err(|e| format!("the load task failed: {e}"))?;
    let samples = sampler.finish();
    let mem_after_ingest = memory(pid);
    let refused_during_ingest = rx.refused_total();
    let store_bytes = dir.store_bytes();

    // kill -9, and start again on the same store.
    progress("(f) backlog: kill -9, restart on the same store");
    let first_log = first.log.clone();
    first.guard.kill9();
    let mut second = dir.spawn(bin, unit_fd_limit());
    let restart_limit = Duration::from_secs(120 + n / 2000);
    let restart = rt.block_on(wait_ready(&mut second, dir.addr, dir.admin, restart_limit));
    let pid = second.guard.pid();
    let mem_ready = memory(pid);
    let counted = rt.block_on(wait_counted(dir.admin, &second, restart_limit));
    let mem_counted = memory(pid);
    let mut logs = vec![("ingest relay", log_summary(&first_log))];
    let ok = ingest.ok;
    let mut result = Run {
        ingest,
        ingest_limit,
        ingest_rss_cap,
        ingest_rss: by_tenths(&samples, ok),
        ingest_rss_peak: peak_rss(&samples),
        mem_after_ingest,
        refused_during_ingest,
        store_bytes,
        fd_limit,
        restart,
        restart_limit,
        mem_ready,
        counted,
        mem_counted,
        drain: None,
        purge: None,
        logs: Vec::new(),
    };
    if result.restart.failure.is_some() {
        logs.push(("restarted relay", log_summary(&second.log)));
        result.logs = logs;
        return Ok(result);
    }

    // The receiver comes back: the drain.
    progress("(f) backlog: receiver answering 200, draining");
    let mut purges = PurgeLog::new(&second.log);
    rx.set_status(StatusCode::OK);
    let back = Instant::now();
    let sampler = Sampler::start(pid, Duration::from_millis(500), rx.total_counter());
    let drain_limit = Duration::from_secs(120 + n / 1000);
    let (mut first_at, mut last_at) = (None, None);
    let mut seen = 0;
    let mut moved = Instant::now();
    let (end, delivered, waiting) = loop {
        let delivered = rx.unique_arrivals() as u64;
        let waiting = rx.refused_only() as u64;
        if delivered > seen {
            seen = delivered;
            moved = Instant::now();
            last_at = Some(back.elapsed());
            first_at.get_or_insert(back.elapsed());
        }
        if delivered + waiting >= ok {
            break (End::Done, delivered, waiting);
        }
        if moved.elapsed() >= STALL {
            break (End::Stalled, delivered, waiting);
        }
        if back.elapsed() >= drain_limit {
            break (End::Deadline(drain_limit), delivered, waiting);
        }
        if memory(pid).rss_mib > RSS_CAP_MIB {
            break (End::RssCap, delivered, waiting);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let samples = sampler.finish();
    let expected = ok.saturating_sub(waiting);
    result.drain = Some(Drain {
        expected,
        waiting,
        delivered,
        duplicates: rx.duplicates.load(Ordering::Relaxed),
        first: first_at,
        last: last_at,
        end,
        rss: by_tenths(&samples, expected),
        rss_peak: peak_rss(&samples),
        mem_after: memory(pid),
    });

    // The janitor's next pass after the drain removes what was delivered.
    progress("(f) backlog: waiting for the janitor's purge");
    purges.poll();
    let removed_during_drain = purges.removed;
    let drain_end_uptime = second.at.elapsed();
    let passes = drain_end_uptime.as_secs() / PURGE_EVERY.as_secs() + 1;
    let next_pass = PURGE_EVERY * passes as u32;
    let rounds = (delivered / PURGE_ROUND_MAX + 1).min(PURGE_ROUNDS);
    let purge_limit = next_pass + PURGE_EVERY * (rounds as u32 - 1) + PURGE_EVERY / 2;
    let mut last_removal = None;
    let mut first_removal = None;
    let end = loop {
        if purges.poll() > 0 {
            last_removal = Some(second.at.elapsed());
            if second.at.elapsed() > next_pass {
                first_removal.get_or_insert(second.at.elapsed());
            }
        }
        let uptime = second.at.elapsed();
        if purges.removed >= delivered {
            break End::Done;
        }
        if uptime >= purge_limit {
            break End::Deadline(purge_limit);
        }
        if memory(pid).rss_mib > RSS_CAP_MIB {
            break End::RssCap;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    // Let the round finish (the inbound log, dedup keys) before reading
    // the memory.
    std::thread::sleep(Duration::from_secs(1));
    purges.poll();
    result.purge = Some(Purge {
        removed_during_drain,
        removed: purges.removed,
        finished: delivered,
        drain_end_uptime,
        next_pass,
        first_removal_uptime: first_removal,
        last_removal_uptime: last_removal,
        end,
        mem_after: memory(pid),
    });
    let second_log = second.log.clone();
    drop(second);
    logs.push(("restarted relay", log_summary(&second_log)));
    result.logs = logs;
    Ok(result)
}

/// VmRSS at the first sample at or past each tenth of `total` progress.
fn by_tenths(samples: &[Sample], total: u64) -> Vec<(u64, f64)> {
    (1..=10)
        .filter_map(|k| {
            let at = total * k / 10;
            samples
                .iter()
                .find(|s| s.progress >= at)
                .map(|s| (k * 10, s.rss_mib))
        })
        .collect()
}

fn peak_rss(samples: &[Sample]) -> f64 {
    samples.iter().map(|s| s.rss_mib).fold(f64::NAN, f64::max)
}

//! (e) fan-out: one route whose every event matches 1, 100 or 10,000
//! targets (1,000 in quick mode), all pointing at one loopback receiver
//! (`/hook/<n>` each), and 10,000 at a rate the relay can deliver. Each
//! case gets a fresh relay and store, events at a fixed rate (open loop),
//! and reports POST-to-202 latency and the deliveries the receiver got per
//! second.
//!
//! `[delivery] concurrency` is left at its default (16 attempts in flight
//! per target, so up to 16 × targets at once: the relay has no global cap
//! today) and `[delivery] rate` is raised so that the per-target limiter
//! does not cap the run. The relay runs with the shipped unit's open-file
//! limit (`unit_fd_limit`), below the bench's own, so that the receiver
//! here does not run out first.

use std::path::Path;
use std::time::{Duration, Instant};

use hyper::StatusCode;

use crate::load::{send_paced, Pace};
use crate::procs::{
    fd_limit, flushes, log_summary, memory, queue, unit_fd_limit, Flushes, LogSummary, Memory,
    Queue, RelayConfig, RelayDir, Sampler,
};
use crate::progress;
use crate::server::Receiver;

/// `[delivery]` of (e) and (g): the default concurrency, a rate that does
/// not cap.
pub(crate) const DELIVERY: &str = "rate = { per_second = 100000, burst = 100000 }\n";
/// `[delivery] concurrency`'s default (docs/CONFIG.md).
pub(crate) const DEFAULT_CONCURRENCY: usize = 16;
/// Connections the events are sent over.
const CONNECTIONS: usize = 16;
/// How long a POST of (e) and (g) may wait for its 202: an event for
/// thousands of targets is one large commit.
pub(crate) const FANOUT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long deliveries are still counted after the sending stops.
pub(crate) const TAIL: Duration = Duration::from_secs(5);
/// A relay with 10,000 targets may take a while to start.
const STARTUP: Duration = Duration::from_secs(300);

/// One case: how many targets, the load, and what came of it.
pub(crate) struct Case {
    pub(crate) targets: usize,
    pub(crate) pace: Pace,
    pub(crate) run: Result<Run, String>,
}

pub(crate) struct Run {
    /// Spawn to the ingest port accepting.
    pub(crate) startup: Duration,
    /// POST sent -> 202 received, µs, sorted.
    pub(crate) ack_us: Vec<u64>,
    /// The slowest 202: its event's place in the sending order, and µs.
    pub(crate) slowest: Option<(usize, u64)>,
    /// Answered with another status; no answer within `FANOUT_REQUEST_TIMEOUT`.
    pub(crate) refused: u64,
    pub(crate) failed: u64,
    /// Deliveries received while sending, over `window`; and by `TAIL`
    /// after it.
    pub(crate) delivered_sending: u64,
    pub(crate) window: Duration,
    pub(crate) delivered_by_tail: u64,
    /// Deliveries the 202s promised (202s × targets).
    pub(crate) promised: u64,
    pub(crate) fds_peak: usize,
    pub(crate) fd_limit: Option<u64>,
    pub(crate) rx_conns_peak: u64,
    pub(crate) rx_accept_errors: u64,
    pub(crate) rss_peak: f64,
    pub(crate) mem_after: Memory,
    /// The relay's queue at the end (its `/metrics`).
    pub(crate) queue_after: Option<Queue>,
    /// The store's commits over the run (its `/metrics`): how much of a
    /// 202 is the commit.
    pub(crate) flushes: Option<Flushes>,
    pub(crate) log: LogSummary,
}

/// The cases: targets and pace. The first three send at the same event
/// rate, so the 202s compare; at 10,000 targets that is more deliveries
/// than the relay sends here (100,000/s), so that case shows how ingest
/// holds up while deliveries take the CPU. The last sends 10,000 targets'
/// events at a rate the relay can deliver (2,500 deliveries/s), in quick
/// mode too: the 202 of a large fan-out. It sends over one connection:
/// spread over `CONNECTIONS`, most would wait past the ingest listener's
/// `header_read_timeout` (10 s) for their first request, and be closed.
fn cases(quick: bool) -> Vec<(usize, Pace)> {
    let secs = if quick { 5 } else { 10 };
    let most = if quick { 1_000 } else { 10_000 };
    let paced = |rate, secs, connections| Pace {
        rate,
        secs,
        connections,
    };
    vec![
        (1, paced(10.0, secs, CONNECTIONS)),
        (100, paced(10.0, secs, CONNECTIONS)),
        (most, paced(10.0, secs, CONNECTIONS)),
        (10_000, paced(0.25, 80, 1)),
    ]
}

pub(crate) fn measure(rt: &tokio::runtime::Runtime, bin: &Path, quick: bool) -> Vec<Case> {
    cases(quick)
        .into_iter()
        .map(|(targets, pace)| {
            progress(&format!(
                "(e) fan-out to {targets} targets, {}/s for {}s",
                pace.rate, pace.secs
            ));
            Case {
                targets,
                pace,
                run: run(rt, bin, targets, pace),
            }
        })
        .collect()
}

/// `n` targets `t0..t<n-1>`, all at `rx`, at `/hook/<i>`.
pub(crate) fn targets_at(
    n: usize,
    addr: impl Fn(usize) -> std::net::SocketAddr,
) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("t{i}"), format!("http://{}/hook/{i}", addr(i))))
        .collect()
}

fn run(rt: &tokio::runtime::Runtime, bin: &Path, n: usize, pace: Pace) -> Result<Run, String> {
    let rx = rt.block_on(Receiver::start_on(1, 0, StatusCode::OK));
    let config = RelayConfig {
        delivery: DELIVERY.into(),
        store: String::new(),
        egress: String::new(),
        targets: targets_at(n, |_| rx.addr),
    };
    let mut dir = RelayDir::new(&config);
    let mut relay = dir.spawn(bin, unit_fd_limit());
    let startup = relay.wait_listening(dir.addr, STARTUP)?;
    let pid = relay.guard.pid();
    let sampler = Sampler::start(pid, Duration::from_millis(200), rx.total_counter());
    let started = Instant::now();
    let before = rx.total();
    // The receiver's connections, sampled while the load runs.
    let sending = rt.spawn(send_paced(
        dir.addr,
        pace,
        "/bench/new_order",
        FANOUT_REQUEST_TIMEOUT,
    ));
    let mut rx_conns_peak = 0;
    while !sending.is_finished() {
        rx_conns_peak = rx_conns_peak.max(rx.open_connections());
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = rt
        .block_on(sending)
        .map_err(|e| format!("the load task failed: {e}"))?;
    let window = started.elapsed();
    let delivered_sending = rx.total() - before;
    let tail_end = Instant::now() + TAIL;
    while Instant::now() < tail_end {
        rx_conns_peak = rx_conns_peak.max(rx.open_connections());
        std::thread::sleep(Duration::from_millis(100));
    }
    let delivered_by_tail = rx.total() - before;
    let samples = sampler.finish();
    let mem_after = memory(pid);
    let queue_after = rt.block_on(queue(dir.admin));
    let flushes = rt.block_on(flushes(dir.admin));
    let fd_limit = fd_limit(pid);
    let log = relay.log.clone();
    drop(relay);
    Ok(Run {
        startup,
        ack_us: sent.ack_us(),
        slowest: sent.slowest(),
        refused: sent.refused,
        failed: sent.failed,
        delivered_sending,
        window,
        delivered_by_tail,
        promised: sent.acks() as u64 * n as u64,
        fds_peak: samples.iter().map(|s| s.fds).max().unwrap_or(0),
        fd_limit,
        rx_conns_peak,
        rx_accept_errors: rx.accept_errors(),
        rss_peak: samples.iter().map(|s| s.rss_mib).fold(f64::NAN, f64::max),
        mem_after,
        queue_after,
        flushes,
        log: log_summary(&log),
    })
}

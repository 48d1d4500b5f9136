//! (g) file descriptors: 2,000 targets spread over 50 loopback ports of one
//! receiver (40 targets a port) that answers 200, keeps every connection
//! alive and never closes an idle one. A bounded burst of events fans out
//! to all of them; the relay's open fds (entries of /proc/<pid>/fd) are
//! sampled at peak, and 5 s, 35 s and 65 s after the load stops: when the
//! relay's `/metrics` shows nothing pending or in flight (or `SETTLE` after
//! the sending, if it never does).
//!
//! The relay will get `[egress] max_connections` (global cap, default
//! 4096), `max_connections_per_origin` and `idle_timeout` (default 30s).
//! Today's binary refuses unknown keys, so they are written only with
//! `HOOKRELAY_BENCH_EGRESS_KEYS=1`.

use std::path::Path;
use std::time::{Duration, Instant};

use hyper::StatusCode;

use crate::fanout::{targets_at, DELIVERY, FANOUT_REQUEST_TIMEOUT};
use crate::load::{send_paced, Pace};
use crate::procs::{
    fd_limit, log_summary, memory, open_fds, queue, unit_fd_limit, LogSummary, Memory, Queue,
    RelayConfig, RelayDir,
};
use crate::server::Receiver;
use crate::{progress, EGRESS_KEYS_VAR};

pub(crate) const PORTS: usize = 50;
pub(crate) const PER_PORT: usize = 40;
/// The coming `[egress]` keys and the values (g) sets when asked to.
pub(crate) const EGRESS_KEYS: [(&str, &str); 3] = [
    ("max_connections", "4096"),
    ("max_connections_per_origin", "64"),
    ("idle_timeout", "\"30s\""),
];
/// The load: 5 events/s for 5 s (2/s in quick mode), each to every target.
pub(crate) fn load(quick: bool) -> Pace {
    Pace {
        rate: if quick { 2.0 } else { 5.0 },
        secs: 5,
        connections: 4,
    }
}
/// The readings after the load stops: 5 s and 35 s, and 65 s because the
/// client pool's reaper looks for idle connections once per `idle_timeout`
/// (hyper-util), so one idle for 30 s closes between 30 s and 60 s.
pub(crate) const AFTER: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(35),
    Duration::from_secs(65),
];
/// The queue still not empty this long after the sending ended: stop
/// waiting for it.
pub(crate) const SETTLE: Duration = Duration::from_secs(60);
const STARTUP: Duration = Duration::from_secs(120);
const EVERY: Duration = Duration::from_millis(100);
/// The relay's `/metrics` is read every this many samples.
const METRICS_EVERY: u32 = 5;

pub(crate) struct Fds {
    /// Whether the `[egress]` keys were written.
    pub(crate) egress_keys: bool,
    pub(crate) load: Pace,
    pub(crate) run: Result<Run, String>,
}

/// One reading: open fds of the relay, connections open at the receiver,
/// deliveries so far, the relay's own queue and connection count (when
/// read); `at` from the start of the load.
#[derive(Clone, Copy)]
pub(crate) struct Reading {
    pub(crate) at: Duration,
    pub(crate) fds: usize,
    pub(crate) rx_conns: u64,
    pub(crate) delivered: u64,
    pub(crate) queue: Option<Queue>,
}

pub(crate) struct Run {
    pub(crate) fd_limit: Option<u64>,
    pub(crate) idle: Reading,
    pub(crate) peak: Reading,
    /// When the sending ended, and when the load stopped (the relay's
    /// queue empty, or `SETTLE` after the sending).
    pub(crate) sent_by: Duration,
    pub(crate) stopped: Reading,
    /// `SETTLE` passed with deliveries still queued.
    pub(crate) settle_hit: bool,
    pub(crate) promised: u64,
    pub(crate) refused: u64,
    pub(crate) failed: u64,
    /// At `stopped` + each of `AFTER`.
    pub(crate) after: Vec<(Duration, Reading)>,
    pub(crate) rx_accept_errors: u64,
    pub(crate) mem_after: Memory,
    pub(crate) log: LogSummary,
}

pub(crate) fn measure(rt: &tokio::runtime::Runtime, bin: &Path, quick: bool) -> Fds {
    let egress_keys = std::env::var(EGRESS_KEYS_VAR).as_deref() == Ok("1");
    progress(&format!(
        "(g) file descriptors: {} targets on {PORTS} ports",
        PORTS * PER_PORT
    ));
    let load = load(quick);
    Fds {
        egress_keys,
        load,
        run: run(rt, bin, egress_keys, load),
    }
}

fn run(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    egress_keys: bool,
    load: Pace,
) -> Result<Run, String> {
    let targets = PORTS * PER_PORT;
    let rx = rt.block_on(Receiver::start_on(PORTS, 0, StatusCode::OK));
    let egress = if egress_keys {
        EGRESS_KEYS
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    } else {
        String::new()
    };
    let config = RelayConfig {
        delivery: DELIVERY.into(),
        store: String::new(),
        egress,
        targets: targets_at(targets, |i| rx.addrs[i / PER_PORT]),
    };
    let mut dir = RelayDir::new(&config);
    let mut relay = dir.spawn(bin, unit_fd_limit());
    relay.wait_listening(dir.addr, STARTUP)?;
    let pid = relay.guard.pid();
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    let admin = dir.admin;
    let read = |with_metrics: bool| Reading {
        at: start.elapsed(),
        fds: open_fds(pid),
        rx_conns: rx.open_connections(),
        delivered: rx.total(),
        queue: if with_metrics {
            rt.block_on(queue(admin))
        } else {
            None
        },
    };
    let idle = read(true);
    let sending = rt.spawn(send_paced(
        dir.addr,
        load,
        "/bench/new_order",
        FANOUT_REQUEST_TIMEOUT,
    ));
    let mut peak = idle;
    let mut n = 0u32;
    let mut sample = |peak: &mut Reading| {
        n += 1;
        let r = read(n % METRICS_EVERY == 0);
        if r.fds > peak.fds {
            *peak = r;
        }
        std::thread::sleep(EVERY);
        r
    };
    let send_limit = Duration::from_secs(load.secs * 3) + FANOUT_REQUEST_TIMEOUT;
    while !sending.is_finished() && start.elapsed() < send_limit {
        sample(&mut peak);
    }
    let sent = rt
        .block_on(sending)
        .map_err(|e| format!("the load task failed: {e}"))?;
    let sent_by = start.elapsed();
    let promised = sent.acks() as u64 * targets as u64;
    let (stopped, settle_hit) = loop {
        let r = sample(&mut peak);
        if r.queue.is_some_and(|q| q.is_empty()) {
            break (r, false);
        }
        if r.at.saturating_sub(sent_by) >= SETTLE {
            break (read(true), true);
        }
    };
    let mut after = Vec::new();
    for wait in AFTER {
        while start.elapsed() < stopped.at + wait {
            sample(&mut peak);
        }
        after.push((wait, read(true)));
    }
    let mem_after = memory(pid);
    let fd_limit = fd_limit(pid);
    let log = relay.log.clone();
    drop(relay);
    Ok(Run {
        fd_limit,
        idle,
        peak,
        sent_by,
        stopped,
        settle_hit,
        promised,
        refused: sent.refused,
        failed: sent.failed,
        after,
        rx_accept_errors: rx.accept_errors(),
        mem_after,
        log: log_summary(&log),
    })
}

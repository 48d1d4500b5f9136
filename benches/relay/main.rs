//! `cargo bench --bench relay`: what durability costs, measured against a
//! ceiling on the same machine in the same run.
//!
//! Absolute requests/s mean little across machines; the ratio to a plain
//! HTTP server under the same load does not. So one run measures:
//!
//! - (a) the ceiling: a plain hyper 1.x server answering 202 with no storage,
//!   in its own process (this binary re-executed with
//!   `HOOKRELAY_BENCH_ROLE=plain`);
//! - (b) hookrelay's durable ingest rate: the release binary (the one `cargo
//!   bench` builds, `target/release/hookrelay`) with a fresh sled store,
//!   delivering to a loopback receiver in this process while it ingests.
//!   Only 202s count, and a 202 is sent only after the store's flush that
//!   covers the event (group commit);
//! - (c) end-to-end latency, from sending the POST to the receiver getting
//!   the signed delivery, at a fixed 1000 events/s (open loop, so a slow
//!   answer does not slow the sender down and hide itself);
//! - (d) the relay's memory after each run (VmRSS, and VmHWM for the peak);
//! - (c) again at 5000 events/s;
//! - (e) fan-out: 1, 100 and 10,000 targets on one route (1,000 in quick
//!   mode), 202 latency and deliveries/s at a modest fixed rate, and
//!   10,000 targets at a rate the relay can deliver (`fanout.rs`);
//! - (f) backlog: a million events (`HOOKRELAY_BENCH_BACKLOG`; 20,000 in
//!   quick mode) held while the receiver answers 503, `kill -9`, restart
//!   time, drain rate and memory, and memory after the janitor's purge
//!   (`backlog.rs`);
//! - (g) file descriptors: 2,000 targets on 50 keep-alive receiver ports,
//!   the relay's open fds at peak and 5 s, 35 s and 65 s after the load
//!   (`fds.rs`);
//! - (h) a fleet: two relays with `store.backend = "postgres"` on one
//!   database of a throwaway local PostgreSQL 15 (fsync on), the loads of
//!   (b) and (c) dealt over the two, and what the server did per event
//!   (`fleet.rs`; the server is the tests' harness, `pg.rs`). Skipped,
//!   saying why, where PostgreSQL is not installed; with `CI` set, that
//!   fails the run instead.
//!
//! `HOOKRELAY_BENCH_ONLY=fleet` runs (a), (b) and (h) only: the fleet, the
//! ceiling its ratio is taken against and the embedded store it is
//! compared with, all in the same run (about a minute once built).
//! `HOOKRELAY_BENCH_ONLY=backlog` runs (a) and (f) only, `fanout` (a) and
//! (e) only.
//!
//! `HOOKRELAY_BENCH_QUICK=1` shrinks (e), (f) and (g)'s load so the whole
//! run takes about four minutes, most of it fixed waits (the janitor's
//! 60 s round in (f), the readings after the load in (g)).
//! (e) to (g) run the relay with the shipped unit's open-file limit.
//!
//! It also reads the relay's own `/metrics` (admin listener) for the store's
//! flush count, events per flush and flush time, which explain (b) and (c).
//!
//! Load for (a) and (b): 32 HTTP/1.1 keep-alive connections, each sending
//! 1 KiB JSON POSTs back to back, 1 s warm-up then 5 s counted. The load
//! generator and the receiver share the machine with the server under test,
//! as they would on a one-box deployment; the ratio is what to compare.
//!
//! Everything stays on 127.0.0.1. Every loop is bounded in count and time,
//! and child processes are killed when their guard drops (also on panic).

mod backlog;
mod fanout;
mod fds;
mod fleet;
mod load;
mod pg;
mod procs;
mod report;
mod server;

use std::path::Path;
use std::time::Duration;

use hyper::StatusCode;

use load::{base, closed_loop, paced, Latency, Pace, Throughput};
use procs::{
    cpu_secs, flushes, machine_info, memory, relay_binary, start_plain_server, start_relay,
    Flushes, Memory,
};
use report::{print_fleet_report, print_report};
use server::{plain_server_main, Receiver};

const ROLE_VAR: &str = "HOOKRELAY_BENCH_ROLE";
const BODY_BYTES: usize = 1024;
/// Closed-loop load, (a) and (b).
const CONNECTIONS: usize = 32;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
/// Open-loop load, (c), at 1000 and at 5000 events/s.
const PACED: Pace = Pace {
    rate: 1000.0,
    secs: 10,
    connections: 16,
};
const PACED_FAST: Pace = Pace {
    rate: 5000.0,
    secs: 10,
    connections: 16,
};
/// How long (c) waits for the last deliveries after the sending stops.
const DRAIN: Duration = Duration::from_secs(10);
/// Bounds on every loop and wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUESTS_PER_CONNECTION: u64 = 10_000_000;
const MAX_ACCEPTS: usize = 10_000;
/// Receivers take many more: one pool per target in (e) and (g).
const RECEIVER_MAX_ACCEPTS: usize = 1_000_000;
const STARTUP: Duration = Duration::from_secs(10);
const CHILD_LIFETIME: Duration = Duration::from_secs(300);
/// The target's signing secret (the Standard Webhooks example key).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Goals the figures are checked against.
const GOAL_INGEST_RATIO: f64 = 1.0 / 3.0;
const GOAL_P99_MS: f64 = 5.0;
const GOAL_RSS_MIB: f64 = 30.0;
/// (e): the most-targets case's 202 p99 at most this many times the
/// single target's.
const GOAL_FANOUT_P99_RATIO: f64 = 2.0;
/// Environment: quick mode; the backlog's size; whether (g) sets the
/// coming `[egress]` connection keys.
const QUICK_VAR: &str = "HOOKRELAY_BENCH_QUICK";
const BACKLOG_VAR: &str = "HOOKRELAY_BENCH_BACKLOG";
const EGRESS_KEYS_VAR: &str = "HOOKRELAY_BENCH_EGRESS_KEYS";
/// Environment: run only some sections (`fleet`: (a), (b) and (h)); lines
/// added to the fleet's `[store.postgres]`.
const ONLY_VAR: &str = "HOOKRELAY_BENCH_ONLY";
const PG_KEYS_VAR: &str = "HOOKRELAY_BENCH_PG_KEYS";

/// Which sections run.
#[derive(Clone, Copy, PartialEq)]
enum Only {
    All,
    /// (a), (b) and (h).
    Fleet,
    /// (a) and (f).
    Backlog,
    /// (a) and (e).
    Fanout,
}

/// `HOOKRELAY_BENCH_ONLY`: unset or empty for every section, `fleet` for
/// (a), (b) and (h), `backlog` for (a) and (f), `fanout` for (a) and (e);
/// anything else stops the run before it starts.
fn only() -> Only {
    match std::env::var(ONLY_VAR).as_deref() {
        Err(_) | Ok("") => Only::All,
        Ok("fleet") => Only::Fleet,
        Ok("backlog") => Only::Backlog,
        Ok("fanout") => Only::Fanout,
        Ok(other) => {
            panic!("{ONLY_VAR}={other:?}: the sections that run alone are: fleet, backlog, fanout")
        }
    }
}

/// `HOOKRELAY_BENCH_QUICK=1`: (e) up to 1,000 targets, (f) 20,000 events.
fn quick() -> bool {
    std::env::var(QUICK_VAR).as_deref() == Ok("1")
}

/// A progress line on standard error (the report itself is on stdout).
fn progress(what: &str) {
    eprintln!("[{:>6.1}s] {what}", base().elapsed().as_secs_f64());
}

fn main() {
    if std::env::var(ROLE_VAR).as_deref() == Ok("plain") {
        plain_server_main();
    }
    let only = only();
    base();
    println!("{}", machine_info());
    let quick = quick();
    let backlog_events = backlog::events(quick);
    println!(
        "mode: {}",
        if only == Only::Fleet {
            format!("{ONLY_VAR}=fleet: (a), (b) and (h) only")
        } else if only == Only::Backlog {
            format!("{ONLY_VAR}=backlog: (a) and (f) only, (f) {backlog_events} events")
        } else if only == Only::Fanout {
            format!("{ONLY_VAR}=fanout: (a) and (e) only, quick {quick}")
        } else if quick {
            format!("quick ({QUICK_VAR}=1): (e) 1/100/1000 targets, (f) {backlog_events} events")
        } else {
            format!("full: (e) 1/100/10000 targets, (f) {backlog_events} events ({QUICK_VAR}=1 for a quick run)")
        }
    );
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    progress("(a) ceiling");
    let ceiling = measure_ceiling(&rt);
    let bin = relay_binary();
    if only == Only::Backlog {
        let backlog = backlog::measure(&rt, &bin, backlog_events);
        progress("done");
        report::print_backlog_report(&ceiling, &backlog);
        return;
    }
    if only == Only::Fanout {
        let fanout = fanout::measure(&rt, &bin, quick);
        progress("done");
        report::print_fanout_report(&ceiling, &fanout);
        return;
    }
    progress("(b) durable ingest");
    let ingest = measure_ingest(&rt, &bin);
    if only == Only::Fleet {
        let fleet = fleet::measure(&rt, &bin);
        progress("done");
        print_fleet_report(&ceiling, &ingest, &fleet);
        return;
    }
    progress("(c) end-to-end at 1000/s");
    let end_to_end = measure_end_to_end(&rt, &bin, PACED);
    progress("(c) end-to-end at 5000/s");
    let end_to_end_fast = measure_end_to_end(&rt, &bin, PACED_FAST);
    let fanout = fanout::measure(&rt, &bin, quick);
    let backlog = backlog::measure(&rt, &bin, backlog_events);
    let fds = fds::measure(&rt, &bin, quick);
    let fleet = fleet::measure(&rt, &bin);
    progress("done");
    print_report(
        &ceiling,
        &ingest,
        &[end_to_end, end_to_end_fast],
        &fanout,
        &backlog,
        &fds,
        &fleet,
    );
}

/// (a): the plain server under the closed-loop load.
struct Ceiling {
    load: Throughput,
    cpu_secs: f64,
}

fn measure_ceiling(rt: &tokio::runtime::Runtime) -> Ceiling {
    let plain = start_plain_server();
    let load = rt.block_on(closed_loop(plain.addr, "/bench/new_order", 202));
    Ceiling {
        load,
        cpu_secs: cpu_secs(plain.guard.pid()),
    }
}

/// (b) and (d): hookrelay under the same load, delivering as it ingests.
struct Ingest {
    load: Throughput,
    cpu_secs: f64,
    delivered: u64,
    flushes: Option<Flushes>,
    mem_at_start: Memory,
    mem_after: Memory,
}

fn measure_ingest(rt: &tokio::runtime::Runtime, bin: &Path) -> Ingest {
    let rx = rt.block_on(Receiver::start());
    let relay = start_relay(bin, rx.addr);
    let mem_at_start = memory(relay.guard.pid());
    let load = rt.block_on(closed_loop(relay.addr, "/bench/new_order", 202));
    let (cpu_secs, delivered) = (cpu_secs(relay.guard.pid()), rx.total());
    let mem_after = memory(relay.guard.pid());
    Ingest {
        load,
        cpu_secs,
        delivered,
        flushes: rt.block_on(flushes(relay.admin)),
        mem_at_start,
        mem_after,
    }
}

/// (c) and (d): a fresh relay at a fixed rate.
struct EndToEnd {
    latency: Latency,
    flushes: Option<Flushes>,
    mem_after: Memory,
}

fn measure_end_to_end(rt: &tokio::runtime::Runtime, bin: &Path, pace: Pace) -> EndToEnd {
    let rx = rt.block_on(Receiver::start_on(1, pace.events(), StatusCode::OK));
    let relay = start_relay(bin, rx.addr);
    let latency = rt.block_on(paced(relay.addr, &rx, pace));
    let mem_after = memory(relay.guard.pid());
    EndToEnd {
        latency,
        flushes: rt.block_on(flushes(relay.admin)),
        mem_after,
    }
}

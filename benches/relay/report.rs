//! The report: the figures of (a) to (h) as tables, and the goals they are
//! checked against.

use std::time::Duration;

use crate::backlog::{self, Backlog, End, RSS_CAP_MIB};
use crate::fanout::{self, Case};
use crate::fds::{self, Fds};
use crate::fleet::{self, DrainEnd, Fleet, LatencyRun, Readings};
use crate::load::{pct_ms, Latency, Pace, Throughput};
use crate::procs::{compiler_processes, load_average, unit_fd_limit, Flushes, LogSummary, Memory};
use crate::{
    Ceiling, EndToEnd, Ingest, BODY_BYTES, CONNECTIONS, DRAIN, EGRESS_KEYS_VAR,
    GOAL_FANOUT_P99_RATIO, GOAL_INGEST_RATIO, GOAL_P99_MS, GOAL_RSS_MIB, MEASURE, PG_KEYS_VAR,
    WARMUP,
};

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

const RULE: &str = "------------------------------------------------------------------------------";

/// `HOOKRELAY_BENCH_ONLY=backlog`: (a) and (f).
pub(crate) fn print_backlog_report(ceiling: &Ceiling, backlog: &Backlog) {
    print_load_header();
    println!("(a) ceiling: {:.0} req/s", ceiling.load.per_sec());
    println!("{RULE}");
    print_backlog(backlog, ceiling.load.per_sec());
    print_load_after();
}

/// `HOOKRELAY_BENCH_ONLY=fanout`: (a) and (e).
pub(crate) fn print_fanout_report(ceiling: &Ceiling, fanout: &[Case]) {
    print_load_header();
    println!("(a) ceiling: {:.0} req/s", ceiling.load.per_sec());
    println!("{RULE}");
    print_fanout(fanout, ceiling.load.per_sec());
    print_load_after();
}

pub(crate) fn print_report(
    ceiling: &Ceiling,
    ingest: &Ingest,
    e2e: &[EndToEnd],
    fanout: &[Case],
    backlog: &Backlog,
    fds: &Fds,
    fleet: &Fleet,
) {
    print_load_header();
    print_throughput(ceiling, ingest);
    for run in e2e {
        println!("{RULE}");
        print_latency(&run.latency, run.flushes);
    }
    println!("{RULE}");
    print_memory(ingest, e2e);
    println!("{RULE}");
    let ceiling_rate = ceiling.load.per_sec();
    print_fanout(fanout, ceiling_rate);
    println!("{RULE}");
    print_backlog(backlog, ceiling_rate);
    println!("{RULE}");
    print_fds(fds, ceiling_rate);
    println!("{RULE}");
    print_fleet(fleet, ceiling, ingest);
    println!("{RULE}");
    print_goals(ceiling, ingest, e2e, fanout);
    print_load_after();
}

/// `HOOKRELAY_BENCH_ONLY=fleet`: (a), (b) and (h).
pub(crate) fn print_fleet_report(ceiling: &Ceiling, ingest: &Ingest, fleet: &Fleet) {
    print_load_header();
    print_throughput(ceiling, ingest);
    println!("{RULE}");
    print_fleet(fleet, ceiling, ingest);
    println!("{RULE}");
    print_load_after();
}

fn print_load_header() {
    println!(
        "\nload (a), (b): {CONNECTIONS} keep-alive HTTP/1.1 connections, {BODY_BYTES} B JSON POSTs, \
         {}s warm-up + {}s counted\n{RULE}",
        WARMUP.as_secs(),
        MEASURE.as_secs()
    );
}

/// Other work on the machine skews the figures: say how busy it was.
fn print_load_after() {
    println!(
        "after the run: load average {}, compiler processes running: {}",
        load_average(),
        compiler_processes()
    );
}

/// Server CPU µs per counted request, over the whole run (warm-up included).
fn cpu_us_per_req(cpu_secs: f64, t: &Throughput) -> f64 {
    let requests = t.per_sec() * (WARMUP + MEASURE).as_secs_f64();
    cpu_secs * 1e6 / requests
}

fn print_throughput(ceiling: &Ceiling, ingest: &Ingest) {
    println!(
        "{:<40}{:>12}{:>10}{:>14}",
        "", "req/s", "vs (a)", "server CPU"
    );
    let rows = [
        (
            "(a) ceiling: plain hyper, 202",
            &ceiling.load,
            ceiling.cpu_secs,
        ),
        (
            "(b) hookrelay durable ingest, 202",
            &ingest.load,
            ingest.cpu_secs,
        ),
    ];
    for (name, t, cpu) in rows {
        println!(
            "{name:<40}{:>12.0}{:>10.2}{:>9.0} µs/req",
            t.per_sec(),
            t.per_sec() / ceiling.load.per_sec(),
            cpu_us_per_req(cpu, t)
        );
        if t.other_status + t.errors > 0 {
            println!("    other statuses {}, errors {}", t.other_status, t.errors);
        }
    }
    println!(
        "    deliveries received during (b): {:.0}/s",
        ingest.delivered as f64 / (WARMUP + MEASURE).as_secs_f64()
    );
    print_flushes("(b)", ingest.flushes);
}

fn print_flushes(run: &str, f: Option<Flushes>) {
    match f {
        Some(f) => println!(
            "    store flushes in {run}: {:.0}, {:.1} events and {:.2} ms each (relay's /metrics)",
            f.count, f.events_per_flush, f.ms_per_flush
        ),
        None => println!("    store flushes in {run}: not reported (no /metrics)"),
    }
}

fn print_latency(l: &Latency, f: Option<Flushes>) {
    let p = l.pace;
    println!(
        "(c) {} events/s for {}s over {} connections (open loop)",
        p.rate, p.secs, p.connections
    );
    println!(
        "{:<40}{:>10}{:>10}{:>10}{:>8}",
        "", "p50 ms", "p99 ms", "max ms", "n"
    );
    let rows = [
        ("    POST sent -> delivery received", &l.end_to_end_us),
        ("    POST sent -> 202 received", &l.ack_us),
    ];
    for (name, v) in rows {
        println!(
            "{name:<40}{:>10.2}{:>10.2}{:>10.2}{:>8}",
            pct_ms(v, 50.0),
            pct_ms(v, 99.0),
            pct_ms(v, 100.0),
            v.len()
        );
    }
    println!(
        "    refused or failed: {}, not delivered within {}s: {}, duplicate deliveries: {}",
        l.refused,
        DRAIN.as_secs(),
        p.events() - l.end_to_end_us.len(),
        l.duplicates
    );
    print_flushes("(c)", f);
}

fn print_memory(ingest: &Ingest, e2e: &[EndToEnd]) {
    println!(
        "(d) relay process{:>23}{:>12}{:>10}",
        "VmRSS MiB", "VmHWM MiB", "threads"
    );
    let mut rows = vec![
        (
            "    (b) relay, started, idle".to_string(),
            ingest.mem_at_start,
        ),
        ("    (b) relay, after its run".to_string(), ingest.mem_after),
    ];
    for (i, run) in e2e.iter().enumerate() {
        let name = match i {
            0 => "    (c) relay, after its run".to_string(),
            _ => format!("    (c) {}/s relay, after its run", run.latency.pace.rate),
        };
        rows.push((name, run.mem_after));
    }
    for (name, m) in rows {
        print_mem_row(&name, m);
    }
}

fn print_mem_row(name: &str, m: Memory) {
    println!(
        "{name:<40}{:>12.1}{:>12.1}{:>10.0}",
        m.rss_mib, m.hwm_mib, m.threads
    );
}

fn print_goals(ceiling: &Ceiling, ingest: &Ingest, e2e: &[EndToEnd], fanout: &[Case]) {
    let ratio = ingest.load.per_sec() / ceiling.load.per_sec();
    let l = &e2e[0].latency;
    let p99 = pct_ms(&l.end_to_end_us, 99.0);
    let all_delivered = l.end_to_end_us.len() == l.pace.events();
    let rss = ingest.mem_after.rss_mib.max(e2e[0].mem_after.rss_mib);
    println!(
        "goal: durable ingest >= 1/3 of (a)        {ratio:>8.2}      {}",
        verdict(ratio >= GOAL_INGEST_RATIO)
    );
    println!(
        "goal: p99 end-to-end < {GOAL_P99_MS} ms             {p99:>8.2} ms   {}",
        verdict(p99 < GOAL_P99_MS && all_delivered)
    );
    println!(
        "goal: RSS after the runs < {GOAL_RSS_MIB} MiB       {rss:>8.1} MiB  {}",
        verdict(rss < GOAL_RSS_MIB)
    );
    for run in &e2e[1..] {
        let l = &run.latency;
        let p99 = pct_ms(&l.end_to_end_us, 99.0);
        let all_delivered = l.end_to_end_us.len() == l.pace.events();
        let label = format!(
            "goal: p99 end-to-end < {GOAL_P99_MS} ms at {}/s",
            l.pace.rate
        );
        println!(
            "{label:<40}{p99:>8.2} ms   {}",
            verdict(p99 < GOAL_P99_MS && all_delivered)
        );
    }
    if let Some((most, ratio)) = fanout_ratio(fanout) {
        let label = format!("goal: (e) 202 p99 {most} vs 1 target <= {GOAL_FANOUT_P99_RATIO}x");
        println!(
            "{label:<42}{ratio:>8.2}x     {}",
            verdict(ratio <= GOAL_FANOUT_P99_RATIO)
        );
    } else {
        println!("goal: (e) 202 p99 within {GOAL_FANOUT_P99_RATIO}x of 1 target: not measured (a case failed)");
    }
}

/// `vs (a)` of a rate.
fn vs(rate: f64, ceiling: f64) -> f64 {
    rate / ceiling
}

fn fd_limit_note(limit: Option<u64>) -> String {
    match (limit, unit_fd_limit()) {
        (Some(n), Some(u)) if n == u => {
            format!("relay open-file limit {n} (LimitNOFILE of systemd/hookrelay.service)")
        }
        (Some(n), _) => format!("relay open-file limit {n}"),
        (None, _) => "relay open-file limit: unknown".into(),
    }
}

/// A relay's log, in one line, and its first distinct warnings and errors.
fn print_log(name: &str, l: &LogSummary) {
    println!(
        "    {name} log: {} WARN, {} ERROR, {} lines with 'os error 24' (too many open files), {} failed attempts",
        l.warn, l.error, l.emfile, l.failed_attempts
    );
    for (message, n) in &l.messages {
        let message: String = message.chars().take(110).collect();
        println!("      {n:>8} x {message}");
    }
    for (error, n) in &l.attempt_errors {
        let error: String = error.chars().take(100).collect();
        println!("      {n:>8} x failed attempt: {error}");
    }
}

/// The most-targets case's 202 p99 over the single target's.
fn fanout_ratio(cases: &[Case]) -> Option<(usize, f64)> {
    let one = cases.iter().find(|c| c.targets == 1)?.run.as_ref().ok()?;
    let most = cases.iter().max_by_key(|c| c.targets)?;
    let run = most.run.as_ref().ok()?;
    Some((
        most.targets,
        pct_ms(&run.ack_us, 99.0) / pct_ms(&one.ack_us, 99.0),
    ))
}

fn print_fanout(cases: &[Case], ceiling: f64) {
    println!("(e) fan-out: one route, each event to every one of N targets, all at one loopback receiver");
    println!(
        "    delivery.concurrency: default, {} per target (so up to {} x N attempts in flight); delivery.rate 100000/s per target",
        fanout::DEFAULT_CONCURRENCY,
        fanout::DEFAULT_CONCURRENCY
    );
    let limit = cases.iter().find_map(|c| c.run.as_ref().ok()?.fd_limit);
    println!("    {}", fd_limit_note(limit));
    println!(
        "{:<20}{:>10}{:>9}{:>9}{:>9}{:>12}{:>8}",
        "    N targets", "events", "p50 ms", "p99 ms", "max ms", "deliv./s", "vs (a)"
    );
    for c in cases {
        let load = format!("{}/s x{}s", c.pace.rate, c.pace.secs);
        let name = format!("    {}", c.targets);
        match &c.run {
            Ok(r) => {
                let dps = r.delivered_sending as f64 / r.window.as_secs_f64();
                println!(
                    "{name:<20}{load:>10}{:>9.2}{:>9.2}{:>9.2}{dps:>12.0}{:>8.2}",
                    pct_ms(&r.ack_us, 50.0),
                    pct_ms(&r.ack_us, 99.0),
                    pct_ms(&r.ack_us, 100.0),
                    vs(dps, ceiling)
                );
            }
            Err(e) => println!("{name:<20}{load:>10}  not measured: {e}"),
        }
    }
    println!(
        "    p50/p99/max: POST sent -> 202 received; deliv./s: deliveries received while sending"
    );
    for c in cases {
        let Ok(r) = &c.run else { continue };
        println!(
            "    {} target{}: relay listening {:.2}s after spawn; 202s {} of {} (other status {}, no answer within {}s {})",
            c.targets,
            if c.targets == 1 { "" } else { "s" },
            r.startup.as_secs_f64(),
            r.ack_us.len(),
            c.pace.events(),
            r.refused,
            fanout::FANOUT_REQUEST_TIMEOUT.as_secs(),
            r.failed,
        );
        if let Some((place, us)) = r.slowest {
            println!(
                "      slowest 202: {:.2} ms, event {} of {} sent{}",
                us as f64 / 1000.0,
                place + 1,
                c.pace.events(),
                if place == 0 { " (the first sent)" } else { "" }
            );
        }
        println!(
            "      delivered {} of {} promised (202s x targets) by {}s after the sending; still queued then: {}",
            r.delivered_by_tail,
            r.promised,
            fanout::TAIL.as_secs(),
            r.queue_after.map_or("unknown".into(), |q| format!(
                "{:.0} pending, {:.0} in flight",
                q.pending, q.in_flight
            ))
        );
        println!(
            "      relay fds peak {}, receiver connections peak {}, receiver accept errors {}; relay VmRSS peak {:.1} MiB, after {:.1} MiB",
            r.fds_peak, r.rx_conns_peak, r.rx_accept_errors, r.rss_peak, r.mem_after.rss_mib
        );
        match r.flushes {
            Some(f) => println!(
                "      store commits: {:.0}, {:.1} events and {:.2} ms each (relay's /metrics)",
                f.count, f.events_per_flush, f.ms_per_flush
            ),
            None => println!("      store commits: not reported (no /metrics)"),
        }
        print_log("  relay", &r.log);
    }
    match fanout_ratio(cases) {
        Some((most, ratio)) => println!(
            "    202 p99, {most} targets vs 1 target: {ratio:.2}x (goal: within {GOAL_FANOUT_P99_RATIO}x)"
        ),
        None => println!("    202 p99 ratio: not measured"),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn tenths(v: &[(u64, f64)]) -> String {
    v.iter()
        .map(|(_, rss)| format!("{rss:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_backlog(b: &Backlog, ceiling: f64) {
    println!(
        "(f) backlog: {} events while the receiver answers 503 (no Retry-After); kill -9; restart; drain; purge",
        b.events
    );
    println!(
        "    delivery: concurrency 64, backoff 1h, circuit 10 failures / 2s cooldown; store.retention {:?}",
        backlog::RETENTION
    );
    let r = match &b.run {
        Ok(r) => r,
        Err(e) => {
            println!("    not measured: {e}");
            return;
        }
    };
    println!("    {}", fd_limit_note(r.fd_limit));
    let i = &r.ingest;
    println!("{:<40}{:>12}{:>10}", "", "req/s", "vs (a)");
    println!(
        "{:<40}{:>12.0}{:>10.2}",
        format!("    ingest, {CONNECTIONS} connections, back to back"),
        i.per_sec(),
        vs(i.per_sec(), ceiling)
    );
    println!(
        "    {} 202s in {}; other statuses {}, errors {}",
        i.ok,
        secs(i.elapsed),
        i.other_status,
        i.errors
    );
    if r.ingest_rss_cap {
        println!(
            "    RSS CAP: the ingest was stopped with the relay past {RSS_CAP_MIB:.0} MiB; {} of {} events acknowledged",
            i.ok, b.events
        );
    }
    if i.hit_deadline {
        println!(
            "    DEADLINE: the ingest stopped at its limit of {}s, {} of {} events acknowledged",
            r.ingest_limit.as_secs(),
            i.ok,
            b.events
        );
    }
    println!(
        "    attempts the receiver answered 503 during the ingest: {} (the rest waited behind the open circuit)",
        r.refused_during_ingest
    );
    println!(
        "    relay VmRSS while ingesting, MiB, at 10%..100% of the events: {}",
        tenths(&r.ingest_rss)
    );
    println!(
        "    relay after the ingest: VmRSS {:.1} MiB (sampled peak {:.1}, VmHWM {:.1}), store on disk {:.1} MiB",
        r.mem_after_ingest.rss_mib,
        r.ingest_rss_peak,
        r.mem_after_ingest.hwm_mib,
        r.store_bytes as f64 / 1048576.0
    );
    let show = |d: Option<Duration>| d.map_or("never".into(), secs);
    println!(
        "    kill -9, restart on the same store: ingest port accepting {} after spawn, /readyz 200 {} after spawn",
        show(r.restart.tcp),
        show(r.restart.ready)
    );
    if let Some(f) = &r.restart.failure {
        println!(
            "    RESTART FAILED (limit {}s): {f}",
            r.restart_limit.as_secs()
        );
    }
    println!(
        "    restarted relay at /readyz 200: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        r.mem_ready.rss_mib, r.mem_ready.hwm_mib
    );
    println!(
        "    deliveries counted in the background: queue gauge back {} after spawn; VmRSS {:.1} MiB then",
        show(r.counted),
        r.mem_counted.rss_mib
    );
    if let Some(d) = &r.drain {
        println!("{:<40}{:>12}{:>10}", "", "deliv./s", "vs (a)");
        println!(
            "{:<40}{:>12.0}{:>10.2}",
            "    drain, receiver answering 200 again",
            d.per_sec(),
            vs(d.per_sec(), ceiling)
        );
        println!(
            "    {} of {} delivered, first delivery {} and last {} after the receiver came back; duplicates {}",
            d.delivered,
            d.expected,
            show(d.first),
            show(d.last),
            d.duplicates
        );
        println!(
            "    left waiting on the 1h backoff (answered 503, never delivered): {}",
            d.waiting
        );
        match d.end {
            End::Done => {}
            End::Stalled => println!(
                "    STALLED: no new delivery for 30s; {} of {} delivered",
                d.delivered, d.expected
            ),
            End::Deadline(limit) => println!(
                "    DEADLINE: the drain was cut at {}s; {} of {} delivered",
                limit.as_secs(),
                d.delivered,
                d.expected
            ),
            End::RssCap => println!(
                "    RSS CAP: the drain was cut with the relay past {RSS_CAP_MIB:.0} MiB; {} of {} delivered",
                d.delivered, d.expected
            ),
        }
        println!(
            "    relay VmRSS while draining, MiB, at 10%..100% of the deliveries: {}",
            tenths(&d.rss)
        );
        println!(
            "    relay after the drain: VmRSS {:.1} MiB (sampled peak {:.1}, VmHWM {:.1})",
            d.mem_after.rss_mib, d.rss_peak, d.mem_after.hwm_mib
        );
    }
    if let Some(p) = &r.purge {
        println!(
            "    purge (janitor round every {}s from the relay's start, at most {} events a round): \
             {} of {} delivered events removed, {} of them during the drain",
            backlog::PURGE_EVERY.as_secs(),
            backlog::PURGE_ROUND_MAX,
            p.removed,
            p.finished,
            p.removed_during_drain
        );
        println!(
            "    the drain ended {} into the restarted relay's life; the next round was due at {}",
            secs(p.drain_end_uptime),
            secs(p.next_pass),
        );
        match (p.first_removal_uptime, p.last_removal_uptime) {
            (Some(a), Some(b)) => {
                let removed = p.removed - p.removed_during_drain;
                let took = b.saturating_sub(p.next_pass);
                println!(
                    "    its removals logged (once a round, at its end) at {}{}: {removed} events in about {} ({:.0} events/s)",
                    secs(a),
                    if b > a { format!(" to {}", secs(b)) } else { String::new() },
                    secs(took),
                    removed as f64 / took.as_secs_f64()
                );
            }
            _ => println!("    no removal logged after the drain"),
        }
        match p.end {
            End::Done => {}
            End::Stalled => {}
            End::Deadline(limit) => println!(
                "    DEADLINE: waited until {}s of the relay's life (at most {} rounds); purge {}",
                limit.as_secs(),
                backlog::PURGE_ROUNDS,
                if p.removed > p.removed_during_drain {
                    "partly observed"
                } else {
                    "not observed"
                }
            ),
            End::RssCap => {
                println!("    RSS CAP: stopped waiting with the relay past {RSS_CAP_MIB:.0} MiB")
            }
        }
        println!(
            "    relay after the purge: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            p.mem_after.rss_mib, p.mem_after.hwm_mib
        );
    }
    for (name, l) in &r.logs {
        print_log(name, l);
    }
}

fn print_fds(f: &Fds, ceiling: f64) {
    let targets = fds::PORTS * fds::PER_PORT;
    println!(
        "(g) file descriptors: {targets} targets on {} receiver ports ({} each); the receiver keeps \
         connections alive and never closes idle ones",
        fds::PORTS,
        fds::PER_PORT
    );
    let keys = fds::EGRESS_KEYS
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    if f.egress_keys {
        println!("    [egress] {keys} ({EGRESS_KEYS_VAR}=1)");
    } else {
        println!("    [egress] connection keys: not set, the relay's defaults ({EGRESS_KEYS_VAR}=1 sets {keys})");
    }
    let l = f.load;
    println!(
        "    load: {} events/s for {}s over {} connections; delivery.concurrency default ({} per target)",
        l.rate,
        l.secs,
        l.connections,
        fanout::DEFAULT_CONCURRENCY
    );
    let r = match &f.run {
        Ok(r) => r,
        Err(e) => {
            println!("    not measured: {e}");
            return;
        }
    };
    println!("    {}", fd_limit_note(r.fd_limit));
    println!(
        "{:<34}{:>10}{:>9}{:>9}{:>10}{:>8}",
        "", "relay fds", "egress", "rx conns", "delivered", "at"
    );
    let mut rows = vec![
        ("    idle, before the load".to_string(), r.idle),
        ("    peak (sampled every 0.1s)".to_string(), r.peak),
        ("    the load stopped".to_string(), r.stopped),
    ];
    for (wait, reading) in &r.after {
        rows.push((
            format!("    {}s after the load stopped", wait.as_secs()),
            *reading,
        ));
    }
    for (name, x) in rows {
        let egress = x
            .queue
            .and_then(|q| q.egress_connections)
            .map_or("-".into(), |n| format!("{n:.0}"));
        println!(
            "{name:<34}{:>10}{egress:>9}{:>9}{:>10}{:>8}",
            x.fds,
            x.rx_conns,
            x.delivered,
            secs(x.at)
        );
    }
    println!("    egress: the relay's own count of outbound connections (/metrics hookrelay_egress_connections)");
    let q = r.stopped.queue;
    println!(
        "    sending ended at {}; the load stopped at {}: {}",
        secs(r.sent_by),
        secs(r.stopped.at),
        match (r.settle_hit, q) {
            (false, _) => "the relay's queue was empty".to_string(),
            (true, Some(q)) => format!(
                "DEADLINE ({}s after the sending), {:.0} pending and {:.0} in flight still",
                fds::SETTLE.as_secs(),
                q.pending,
                q.in_flight
            ),
            (true, None) => format!(
                "DEADLINE ({}s after the sending), queue unknown",
                fds::SETTLE.as_secs()
            ),
        }
    );
    println!(
        "    202s x targets = {} deliveries promised; POSTs with another status {}, with no answer within {}s {}",
        r.promised,
        r.refused,
        fanout::FANOUT_REQUEST_TIMEOUT.as_secs(),
        r.failed
    );
    let dps = r.stopped.delivered as f64 / r.stopped.at.as_secs_f64();
    println!(
        "    deliveries/s from the first event to the load stopping: {dps:.0} (vs (a) {:.2}); receiver accept errors {}; relay VmRSS after {:.1} MiB",
        vs(dps, ceiling),
        r.rx_accept_errors,
        r.mem_after.rss_mib
    );
    print_log("relay", &r.log);
}

// === (h) ===

fn print_fleet(f: &Fleet, ceiling: &Ceiling, sled: &Ingest) {
    println!(
        "(h) fleet: {} relays with store.backend = \"postgres\" on one database of a local PostgreSQL \
         (store.postgres: url set, the rest at its defaults); route, target and [delivery] as (b)",
        fleet::RELAYS
    );
    let ran = match f {
        Fleet::Skipped(why) => {
            println!("    SKIPPED: {why}");
            return;
        }
        Fleet::Ran(ran) => ran,
    };
    if let Some(keys) = &ran.extra_keys {
        println!(
            "    [store.postgres] also: {} ({})",
            keys.lines().collect::<Vec<_>>().join("; "),
            PG_KEYS_VAR
        );
    }
    let settings: Vec<String> = ran
        .settings
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("    server: {}", settings.join(", "));
    if let Err(why) = &ran.statements {
        println!("    statement counts: not measured ({why})");
    }
    let ceiling_rate = ceiling.load.per_sec();
    match &ran.ingest {
        Ok(run) => {
            let total = Throughput::sum(&run.load);
            println!(
                "    load: as (b), its {CONNECTIONS} connections dealt over the {} relays in turn",
                fleet::RELAYS
            );
            println!(
                "{:<40}{:>12}{:>10}{:>14}",
                "", "req/s", "vs (a)", "vs (b) sled"
            );
            println!(
                "{:<40}{:>12.0}{:>10.3}{:>14.2}",
                "(h) fleet durable ingest, 202",
                total.per_sec(),
                total.per_sec() / ceiling_rate,
                total.per_sec() / sled.load.per_sec()
            );
            let per: Vec<String> = run
                .load
                .iter()
                .enumerate()
                .map(|(i, t)| format!("relay {} {:.0} req/s", i + 1, t.per_sec()))
                .collect();
            println!(
                "    {}; other statuses {}, errors {}",
                per.join(", "),
                total.other_status,
                total.errors
            );
            let window = (WARMUP + MEASURE).as_secs_f64();
            println!(
                "    deliveries received during the load: {:.0}/s; 202s of the load (warm-up included) {}, not yet delivered at its end {}",
                run.delivered_during as f64 / window,
                run.drain.owed,
                run.drain.owed.saturating_sub(run.delivered_during)
            );
            let d = &run.drain;
            println!(
                "    after the load: {} of {} delivered (duplicates included) {} after it{}",
                d.delivered,
                d.owed,
                secs(d.took),
                match d.end {
                    DrainEnd::Done => String::new(),
                    DrainEnd::Stalled => " — STALLED, nothing more came".into(),
                    DrainEnd::Deadline => format!(
                        " — DEADLINE, gave up {}s after the load",
                        fleet::DRAIN_LIMIT.as_secs()
                    ),
                }
            );
            print_readings(&run.readings, d.owed);
        }
        Err(e) => println!("    ingest: not measured: {e}"),
    }
    for (pace, run) in &ran.latency {
        println!("{RULE}");
        print_fleet_latency(*pace, run);
    }
}

fn print_fleet_latency(pace: Pace, run: &Result<LatencyRun, String>) {
    match run {
        Ok(run) => {
            let l = &run.latency;
            let p = l.pace;
            println!(
                "(h) fleet end to end: {} events/s for {}s over {} connections dealt over the {} relays (open loop)",
                p.rate,
                p.secs,
                p.connections,
                fleet::RELAYS
            );
            println!(
                "{:<40}{:>10}{:>10}{:>10}{:>8}",
                "", "p50 ms", "p99 ms", "max ms", "n"
            );
            for (name, v) in [
                ("    POST sent -> delivery received", &l.end_to_end_us),
                ("    POST sent -> 202 received", &l.ack_us),
            ] {
                println!(
                    "{name:<40}{:>10.2}{:>10.2}{:>10.2}{:>8}",
                    pct_ms(v, 50.0),
                    pct_ms(v, 99.0),
                    pct_ms(v, 100.0),
                    v.len()
                );
            }
            println!(
                "    202s {} of {}; refused or failed {}; missing (202 but no delivery within {}s) {}; duplicate deliveries {}",
                l.ack_us.len(),
                p.events(),
                l.refused,
                DRAIN.as_secs(),
                l.missing,
                l.duplicates
            );
            print_readings(&run.readings, l.ack_us.len() as u64);
        }
        Err(e) => println!("(h) fleet end to end at {}/s: not measured: {e}", pace.rate),
    }
}

/// A fleet run's costs, `events` (the run's 202s) the denominator.
fn print_readings(r: &Readings, events: u64) {
    let n = events.max(1) as f64;
    for (i, relay) in r.relays.iter().enumerate() {
        match relay.flushes {
            Some(f) => println!(
                "    relay {} commits of accepted events: {:.0}, {:.1} events and {:.2} ms each (its /metrics)",
                i + 1,
                f.count,
                f.events_per_flush,
                f.ms_per_flush
            ),
            None => println!("    relay {} commits: not reported (no /metrics)", i + 1),
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let wall = r.elapsed.as_secs_f64();
    let relays: Vec<String> = r
        .relays
        .iter()
        .map(|x| format!("{:.2}", x.cpu_secs))
        .collect();
    println!(
        "    CPU s from the relays' start to their stop ({:.1}s, {:.1} CPU-s on {cpus:.0} CPUs): relays {} , PostgreSQL {:.2}, bench (load + receiver) {:.2}",
        wall,
        wall * cpus,
        relays.join(" + "),
        r.postgres_cpu,
        r.bench_cpu
    );
    let own: Vec<String> = r
        .postgres_own_cpu
        .iter()
        .filter(|(_, cpu)| *cpu >= 0.005)
        .map(|(name, cpu)| format!("{name} {cpu:.2}"))
        .collect();
    let own_total: f64 = r.postgres_own_cpu.iter().map(|(_, cpu)| cpu).sum();
    println!(
        "    of PostgreSQL's: the relays' sessions {:.2}, the server's own processes {:.2} ({}), the rest (the bench's sessions, processes that exited) {:.2}",
        r.postgres_sessions_cpu,
        own_total,
        if own.is_empty() { "none above 0.005".into() } else { own.join(", ") },
        r.postgres_cpu - r.postgres_sessions_cpu - own_total
    );
    println!(
        "    CPU per 202 ({events} of them): relays {:.0} µs, PostgreSQL {:.0} µs, bench {:.0} µs",
        r.relays_cpu() * 1e6 / n,
        r.postgres_cpu * 1e6 / n,
        r.bench_cpu * 1e6 / n
    );
    match &r.activity {
        Ok(a) => {
            let sessions: u64 = a.seen.iter().map(|(_, n)| n).sum();
            println!(
                "    the relays' sessions while the load ran ({} samples of pg_stat_activity, {:.0} ms apart): {:.1} on average",
                a.samples,
                fleet::SAMPLE_EVERY.as_millis(),
                sessions as f64 / a.samples.max(1) as f64
            );
            for (what, n) in a.seen.iter().take(fleet::TOP_WAITS) {
                println!("    {:>9.2} {what}", *n as f64 / a.samples.max(1) as f64);
            }
            println!("    locks waited for (pg_locks, not granted), waiters on average:");
            for (what, n) in a.lock_waits.iter().take(fleet::TOP_WAITS) {
                println!("    {:>9.2} {what}", *n as f64 / a.samples.max(1) as f64);
            }
        }
        Err(e) => println!("    sessions: not sampled: {e}"),
    }
    match &r.server {
        Ok(s) => {
            println!(
                "    server per 202: {:.2} write transactions, {:.2} commits ({} rolled back in all), {:.2} WAL syncs, {:.2} WAL writes, {:.0} WAL bytes in {:.1} records",
                s.write_xacts as f64 / n,
                s.xact_commit as f64 / n,
                s.xact_rollback,
                s.wal_sync as f64 / n,
                s.wal_write as f64 / n,
                s.wal_bytes as f64 / n,
                s.wal_records as f64 / n
            );
            println!(
                "    rows per 202: {:.2} inserted, {:.2} updated, {:.2} deleted",
                s.tup_inserted as f64 / n,
                s.tup_updated as f64 / n,
                s.tup_deleted as f64 / n
            );
        }
        Err(e) => println!("    server counters: not read: {e}"),
    }
    match &r.statements {
        Ok(list) => {
            let calls: i64 = list.iter().map(|s| s.calls).sum();
            let ms: f64 = list.iter().map(|s| s.total_ms).sum();
            println!(
                "    statements (pg_stat_statements): {calls} in all, {:.2} per 202, {:.0} µs of execution per 202; most called:",
                calls as f64 / n,
                ms * 1000.0 / n
            );
            println!(
                "    {:>9}{:>10}{:>9}  statement",
                "per 202", "rows/call", "µs/call"
            );
            for st in list.iter().take(fleet::TOP_STATEMENTS) {
                let q: String = st.query.chars().take(96).collect();
                println!(
                    "    {:>9.3}{:>10.1}{:>9.0}  {q}",
                    st.calls as f64 / n,
                    st.rows as f64 / st.calls.max(1) as f64,
                    st.total_ms * 1000.0 / st.calls.max(1) as f64
                );
            }
        }
        Err(e) => println!("    statements: not counted: {e}"),
    }
    match &r.tables {
        Ok(t) => {
            const STATES: [&str; 5] = ["pending", "in flight", "succeeded", "dead", "cancelled"];
            let states: Vec<String> = t
                .by_state
                .iter()
                .map(|(s, count)| {
                    let name = STATES.get(*s as usize).copied().unwrap_or("unknown");
                    format!("{name} {count}")
                })
                .collect();
            println!(
                "    in the database at the end: events {}, attempts {}, deliveries: {}",
                t.events,
                t.attempts,
                states.join(", ")
            );
            let updates: Vec<String> = t
                .updates
                .iter()
                .map(|(table, n, hot)| format!("{table} {n} ({hot} HOT)"))
                .collect();
            println!(
                "    rows updated (pg_stat_user_tables; HOT: no index entry written): {}",
                updates.join(", ")
            );
        }
        Err(e) => println!("    tables: not read: {e}"),
    }
    for (i, relay) in r.relays.iter().enumerate() {
        println!(
            "    relay {} at its stop: VmRSS {:.1} MiB (VmHWM {:.1}), {:.0} threads",
            i + 1,
            relay.mem.rss_mib,
            relay.mem.hwm_mib,
            relay.mem.threads
        );
        print_log(&format!("relay {}", i + 1), &relay.log);
    }
}

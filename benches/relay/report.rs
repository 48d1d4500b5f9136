//! The report: the figures of (a) to (d) as tables, and the goals they are
//! checked against.

use crate::load::{pct_ms, Latency, Throughput};
use crate::procs::Flushes;
use crate::{
    Ceiling, EndToEnd, Ingest, BODY_BYTES, CONNECTIONS, DRAIN, GOAL_INGEST_RATIO, GOAL_P99_MS,
    GOAL_RSS_MIB, MEASURE, PACED_CONNECTIONS, PACED_EVENTS, PACED_RATE, PACED_SECS, WARMUP,
};

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

const RULE: &str = "------------------------------------------------------------------------------";

pub(crate) fn print_report(ceiling: &Ceiling, ingest: &Ingest, e2e: &EndToEnd) {
    println!(
        "\nload (a), (b): {CONNECTIONS} keep-alive HTTP/1.1 connections, {BODY_BYTES} B JSON POSTs, \
         {}s warm-up + {}s counted\n{RULE}",
        WARMUP.as_secs(),
        MEASURE.as_secs()
    );
    print_throughput(ceiling, ingest);
    println!("{RULE}");
    print_latency(&e2e.latency, e2e.flushes);
    println!("{RULE}");
    print_memory(ingest, e2e);
    println!("{RULE}");
    print_goals(ceiling, ingest, e2e);
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
    println!("(c) {PACED_RATE} events/s for {PACED_SECS}s over {PACED_CONNECTIONS} connections (open loop)");
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
        PACED_EVENTS - l.end_to_end_us.len(),
        l.duplicates
    );
    print_flushes("(c)", f);
}

fn print_memory(ingest: &Ingest, e2e: &EndToEnd) {
    println!(
        "(d) relay process{:>23}{:>12}{:>10}",
        "VmRSS MiB", "VmHWM MiB", "threads"
    );
    let rows = [
        ("    (b) relay, started, idle", ingest.mem_at_start),
        ("    (b) relay, after its run", ingest.mem_after),
        ("    (c) relay, after its run", e2e.mem_after),
    ];
    for (name, m) in rows {
        println!(
            "{name:<40}{:>12.1}{:>12.1}{:>10.0}",
            m.rss_mib, m.hwm_mib, m.threads
        );
    }
}

fn print_goals(ceiling: &Ceiling, ingest: &Ingest, e2e: &EndToEnd) {
    let ratio = ingest.load.per_sec() / ceiling.load.per_sec();
    let l = &e2e.latency;
    let p99 = pct_ms(&l.end_to_end_us, 99.0);
    let all_delivered = l.end_to_end_us.len() == PACED_EVENTS;
    let rss = ingest.mem_after.rss_mib.max(e2e.mem_after.rss_mib);
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
}

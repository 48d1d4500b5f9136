//! The load generator: request bodies and timestamps, the closed-loop runs
//! (timed, and of a fixed count), the open-loop (paced) runs, and the
//! latency figures drawn from them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::server::Receiver;
use crate::{
    BODY_BYTES, CONNECTIONS, DRAIN, MAX_REQUESTS_PER_CONNECTION, MEASURE, REQUEST_TIMEOUT, WARMUP,
};

// === time and bodies ===

/// The instant every timestamp of this run is measured from.
pub(crate) fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since `base()`, plus one so that 0 can mean "not yet".
pub(crate) fn stamp(t: Instant) -> u64 {
    t.saturating_duration_since(base()).as_nanos() as u64 + 1
}

/// A 1 KiB JSON body that starts with a fixed-width sequence number, so the
/// receiver can tell which event a delivery is without parsing JSON.
fn body(seq: u64) -> Bytes {
    let mut s = format!(r#"{{"seq":"{seq:010}","event":"new_order","lms":"bench","pad":""#);
    let tail = r#""}"#;
    let pad = BODY_BYTES - s.len() - tail.len();
    s.push_str(&"x".repeat(pad));
    s.push_str(tail);
    Bytes::from(s)
}

/// The sequence number `body` put at bytes 8..18.
pub(crate) fn seq_of(body: &[u8]) -> Option<usize> {
    std::str::from_utf8(body.get(8..18)?).ok()?.parse().ok()
}

// === the load generator ===

type Conn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The connection in `conn`, or a new one put there; `None` (counted in
/// `errors`, after a short pause) when connecting failed.
async fn reuse_or_connect<'a>(
    conn: &'a mut Option<Conn>,
    addr: SocketAddr,
    errors: &mut u64,
) -> Option<&'a mut Conn> {
    if conn.is_none() {
        match connect(addr).await {
            Ok(c) => *conn = Some(c),
            Err(_) => {
                *errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                return None;
            }
        }
    }
    conn.as_mut()
}

pub(crate) async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// POSTs `body` and reads the whole answer within `timeout`; returns the
/// status.
async fn post(
    conn: &mut Conn,
    addr: SocketAddr,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<u16, String> {
    let work = async {
        conn.ready().await?;
        let req = Request::post(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("valid request");
        let resp = conn.send_request(req).await?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok::<_, hyper::Error>(status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

/// Counts of one closed-loop run, inside the counted window only; and
/// every answer with the wanted status, warm-up included.
#[derive(Default)]
pub(crate) struct Throughput {
    pub(crate) ok: u64,
    pub(crate) other_status: u64,
    pub(crate) errors: u64,
    pub(crate) ok_all: u64,
}

impl Throughput {
    pub(crate) fn per_sec(&self) -> f64 {
        self.ok as f64 / MEASURE.as_secs_f64()
    }

    fn add(&mut self, t: &Throughput) {
        self.ok += t.ok;
        self.other_status += t.other_status;
        self.errors += t.errors;
        self.ok_all += t.ok_all;
    }

    /// The sum of several runs' counts.
    pub(crate) fn sum<'a>(runs: impl IntoIterator<Item = &'a Throughput>) -> Throughput {
        let mut total = Throughput::default();
        for t in runs {
            total.add(t);
        }
        total
    }
}

/// `CONNECTIONS` keep-alive connections sending back to back for
/// `WARMUP + MEASURE`; answers with status `want` inside the window count.
pub(crate) async fn closed_loop(addr: SocketAddr, path: &'static str, want: u16) -> Throughput {
    Throughput::sum(&closed_loop_on(&[addr], path, want).await)
}

/// `closed_loop` with its connections dealt over `addrs` in turn (the
/// servers of a fleet); the counts per address, in `addrs`' order.
pub(crate) async fn closed_loop_on(
    addrs: &[SocketAddr],
    path: &'static str,
    want: u16,
) -> Vec<Throughput> {
    let from = Instant::now() + WARMUP;
    let until = from + MEASURE;
    let payload = body(9_999_999_999);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            let task = one_connection(addr, path, payload.clone(), want, from, until);
            (i % addrs.len(), tokio::spawn(task))
        })
        .collect();
    let mut per_addr: Vec<Throughput> = addrs.iter().map(|_| Throughput::default()).collect();
    for (i, t) in tasks {
        per_addr[i].add(&t.await.expect("load task"));
    }
    per_addr
}

async fn one_connection(
    addr: SocketAddr,
    path: &str,
    payload: Bytes,
    want: u16,
    from: Instant,
    until: Instant,
) -> Throughput {
    let mut counts = Throughput::default();
    let mut conn = None;
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        if Instant::now() >= until {
            break;
        }
        let Some(c) = reuse_or_connect(&mut conn, addr, &mut counts.errors).await else {
            continue;
        };
        let result = post(c, addr, path, payload.clone(), REQUEST_TIMEOUT).await;
        let now = Instant::now();
        let counted = now >= from && now < until;
        match result {
            Ok(s) if s == want => {
                counts.ok += u64::from(counted);
                counts.ok_all += 1;
            }
            Ok(_) => counts.other_status += u64::from(counted),
            Err(_) => {
                counts.errors += 1;
                conn = None;
            }
        }
    }
    counts
}

/// An open-loop schedule: `rate` events/s (below 1 too) for `secs`
/// seconds, spread over `connections` connections.
#[derive(Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) rate: f64,
    pub(crate) secs: u64,
    pub(crate) connections: usize,
}

impl Pace {
    pub(crate) fn events(&self) -> usize {
        (self.rate * self.secs as f64).round() as usize
    }
}

/// Results of the open-loop run: latencies in µs, sorted.
pub(crate) struct Latency {
    pub(crate) pace: Pace,
    pub(crate) end_to_end_us: Vec<u64>,
    pub(crate) ack_us: Vec<u64>,
    pub(crate) refused: u64,
    pub(crate) duplicates: u64,
    /// Events answered 202 whose delivery did not arrive within `DRAIN`.
    pub(crate) missing: usize,
}

/// What an open-loop send stamped, per sequence number: the scheduled send
/// time and the 202's arrival (0: none); and how many were answered with
/// another status (`refused`) or got no answer in time (`failed`).
pub(crate) struct Sent {
    sent: Vec<AtomicU64>,
    acked: Arc<Vec<AtomicU64>>,
    pub(crate) refused: u64,
    pub(crate) failed: u64,
}

impl Sent {
    /// Events answered 202.
    pub(crate) fn acks(&self) -> usize {
        self.acked
            .iter()
            .filter(|a| a.load(Ordering::Relaxed) > 0)
            .count()
    }

    /// POST sent -> 202 received, µs, sorted.
    pub(crate) fn ack_us(&self) -> Vec<u64> {
        deltas_us(&self.sent, &self.acked)
    }

    /// The slowest POST answered 202: its place in the sending order (0 is
    /// the first) and its POST sent -> 202 received, µs.
    pub(crate) fn slowest(&self) -> Option<(usize, u64)> {
        stamped_us(&self.sent, &self.acked).max_by_key(|&(_, us)| us)
    }
}

/// Sends `pace.events()` events to `path` at `pace.rate`/s, spread over
/// `pace.connections` connections, each stamped at its scheduled send time
/// (open loop: a slow answer does not slow the schedule down); each POST
/// waits up to `timeout` for its answer.
pub(crate) async fn send_paced(
    addr: SocketAddr,
    pace: Pace,
    path: &'static str,
    timeout: Duration,
) -> Sent {
    send_paced_on(&[addr], pace, path, timeout).await
}

/// `send_paced` with its connections dealt over `addrs` in turn (the
/// servers of a fleet), so each gets every `addrs.len()`-th event.
pub(crate) async fn send_paced_on(
    addrs: &[SocketAddr],
    pace: Pace,
    path: &'static str,
    timeout: Duration,
) -> Sent {
    let events = pace.events();
    let sent: Vec<AtomicU64> = (0..events).map(|_| AtomicU64::new(0)).collect();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let refused = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    for i in 0..pace.connections {
        let addr = addrs[i % addrs.len()];
        let (tx, mut rx_seq) = mpsc::unbounded_channel::<usize>();
        queues.push(tx);
        let mut conn = connect(addr).await.expect("connect to relay");
        let (acked, refused, failed) = (acked.clone(), refused.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while let Some(seq) = rx_seq.recv().await {
                match post(&mut conn, addr, path, body(seq as u64), timeout).await {
                    Ok(202) => acked[seq].store(stamp(Instant::now()), Ordering::Relaxed),
                    Ok(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(c) = connect(addr).await {
                            conn = c;
                        }
                    }
                }
            }
        }));
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / pace.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for (seq, slot) in sent.iter().enumerate() {
        let at = tick.tick().await.into_std();
        slot.store(stamp(at), Ordering::Relaxed);
        let _ = queues[seq % pace.connections].send(seq);
    }
    drop(queues);
    for w in workers {
        let _ = w.await;
    }
    Sent {
        sent,
        acked,
        refused: refused.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    }
}

/// (c): sends on `pace`, then waits up to `DRAIN` for the deliveries still
/// on their way to `rx`.
pub(crate) async fn paced(addr: SocketAddr, rx: &Receiver, pace: Pace) -> Latency {
    paced_on(&[addr], rx, pace).await
}

/// `paced` with the connections dealt over `addrs` (the fleet of (h)).
pub(crate) async fn paced_on(addrs: &[SocketAddr], rx: &Receiver, pace: Pace) -> Latency {
    let s = send_paced_on(addrs, pace, "/bench/new_order", REQUEST_TIMEOUT).await;
    let deadline = Instant::now() + DRAIN;
    let acks = s.acks();
    while Instant::now() < deadline && rx.unique_arrivals() < acks {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Latency {
        pace,
        end_to_end_us: deltas_us(&s.sent, &rx.arrived),
        ack_us: s.ack_us(),
        refused: s.refused + s.failed,
        duplicates: rx.duplicates.load(Ordering::Relaxed),
        missing: s
            .acked
            .iter()
            .zip(rx.arrived.iter())
            .filter(|(a, r)| a.load(Ordering::Relaxed) > 0 && r.load(Ordering::Relaxed) == 0)
            .count(),
    }
}

/// Counts of a fixed-count closed-loop run.
#[derive(Default)]
pub(crate) struct Burst {
    pub(crate) ok: u64,
    pub(crate) other_status: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    /// `limit` passed before every event was sent.
    pub(crate) hit_deadline: bool,
}

impl Burst {
    pub(crate) fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends events numbered `0..n` back to back over `CONNECTIONS` keep-alive
/// connections (each takes the next number from a shared counter), until
/// all are sent, `limit` has passed or `stop` is set; `acked` counts the
/// 202s as they come.
pub(crate) async fn burst(
    addr: SocketAddr,
    path: &'static str,
    n: u64,
    limit: Duration,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Burst {
    let started = Instant::now();
    let deadline = started + limit;
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (next, acked, stop) = (next.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut counts = Burst::default();
                let mut conn = None;
                loop {
                    if Instant::now() >= deadline {
                        counts.hit_deadline = next.load(Ordering::Relaxed) < n;
                        break;
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Some(c) = reuse_or_connect(&mut conn, addr, &mut counts.errors).await
                    else {
                        continue;
                    };
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= n {
                        break;
                    }
                    match post(c, addr, path, body(seq), REQUEST_TIMEOUT).await {
                        Ok(202) => {
                            counts.ok += 1;
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => counts.other_status += 1,
                        Err(_) => {
                            counts.errors += 1;
                            conn = None;
                        }
                    }
                }
                counts
            })
        })
        .collect();
    let mut total = Burst::default();
    for t in tasks {
        let t = t.await.expect("load task");
        total.ok += t.ok;
        total.other_status += t.other_status;
        total.errors += t.errors;
        total.hit_deadline |= t.hit_deadline;
    }
    total.elapsed = started.elapsed();
    total
}

/// `to - from` in µs for every index stamped in both, sorted.
fn deltas_us(from: &[AtomicU64], to: &[AtomicU64]) -> Vec<u64> {
    let mut out: Vec<u64> = stamped_us(from, to).map(|(_, us)| us).collect();
    out.sort_unstable();
    out
}

/// Each index stamped in both, with `to - from` in µs, in index order.
fn stamped_us<'a>(
    from: &'a [AtomicU64],
    to: &'a [AtomicU64],
) -> impl Iterator<Item = (usize, u64)> + 'a {
    from.iter().zip(to).enumerate().filter_map(|(i, (a, b))| {
        let (a, b) = (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
        (a > 0 && b > 0).then(|| (i, b.saturating_sub(a) / 1000))
    })
}

/// Nearest-rank percentile of a sorted list, in ms.
pub(crate) fn pct_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

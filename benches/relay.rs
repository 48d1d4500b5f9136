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
//! - (d) the relay's memory after each run (VmRSS, and VmHWM for the peak).
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

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const ROLE_VAR: &str = "HOOKRELAY_BENCH_ROLE";
const BODY_BYTES: usize = 1024;
/// Closed-loop load, (a) and (b).
const CONNECTIONS: usize = 32;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
/// Open-loop load, (c).
const PACED_RATE: u64 = 1000;
const PACED_SECS: u64 = 10;
const PACED_EVENTS: usize = (PACED_RATE * PACED_SECS) as usize;
const PACED_CONNECTIONS: usize = 16;
/// How long (c) waits for the last deliveries after the sending stops.
const DRAIN: Duration = Duration::from_secs(10);
/// Bounds on every loop and wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUESTS_PER_CONNECTION: u64 = 10_000_000;
const MAX_ACCEPTS: usize = 10_000;
const STARTUP: Duration = Duration::from_secs(10);
const CHILD_LIFETIME: Duration = Duration::from_secs(300);
/// The target's signing secret (the Standard Webhooks example key).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Goals the figures are checked against.
const GOAL_INGEST_RATIO: f64 = 1.0 / 3.0;
const GOAL_P99_MS: f64 = 5.0;
const GOAL_RSS_MIB: f64 = 30.0;

fn main() {
    if std::env::var(ROLE_VAR).as_deref() == Ok("plain") {
        plain_server_main();
    }
    base();
    println!("{}", machine_info());
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let ceiling = measure_ceiling(&rt);
    let bin = relay_binary();
    let ingest = measure_ingest(&rt, &bin);
    let end_to_end = measure_end_to_end(&rt, &bin);
    print_report(&ceiling, &ingest, &end_to_end);
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

fn measure_end_to_end(rt: &tokio::runtime::Runtime, bin: &Path) -> EndToEnd {
    let rx = rt.block_on(Receiver::start());
    let relay = start_relay(bin, rx.addr);
    let latency = rt.block_on(paced(relay.addr, &rx));
    let mem_after = memory(relay.guard.pid());
    EndToEnd {
        latency,
        flushes: rt.block_on(flushes(relay.admin)),
        mem_after,
    }
}

// === time and bodies ===

/// The instant every timestamp of this run is measured from.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since `base()`, plus one so that 0 can mean "not yet".
fn stamp(t: Instant) -> u64 {
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
fn seq_of(body: &[u8]) -> Option<usize> {
    std::str::from_utf8(body.get(8..18)?).ok()?.parse().ok()
}

// === a minimal HTTP/1.1 server: the ceiling and the receiver ===

type OnRequest = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Accepts up to `MAX_ACCEPTS` connections and answers every request with
/// `status` and `reply` after reading the whole body and passing it to `on`.
async fn serve(listener: TcpListener, status: StatusCode, reply: Bytes, on: OnRequest) {
    for _ in 0..MAX_ACCEPTS {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (reply, on) = (reply.clone(), on.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (reply, on) = (reply.clone(), on.clone());
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                on(&body.unwrap_or_default());
                let mut resp = Response::new(Full::new(reply));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(resp)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The ceiling's process: serves until the parent closes our stdin (or the
/// lifetime cap), printing the bound port first.
fn plain_server_main() -> ! {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", listener.local_addr().expect("bound").port());
        std::io::stdout().flush().expect("stdout");
        // Same shape and size as hookrelay's 202 body.
        let reply =
            Bytes::from_static(br#"{"id":"evt_01JD0000000000000000000000","deliveries":1}"#);
        tokio::spawn(serve(
            listener,
            StatusCode::ACCEPTED,
            reply,
            Arc::new(|_| {}),
        ));
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        });
        let _ = tokio::time::timeout(CHILD_LIFETIME, stdin_closed).await;
    });
    std::process::exit(0)
}

/// The receiver hookrelay delivers to: answers 200, counts every delivery,
/// and stamps the first arrival of each sequence number below `PACED_EVENTS`.
struct Receiver {
    addr: SocketAddr,
    total: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
    arrived: Arc<Vec<AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let total = Arc::new(AtomicU64::new(0));
        let duplicates = Arc::new(AtomicU64::new(0));
        let arrived: Arc<Vec<AtomicU64>> =
            Arc::new((0..PACED_EVENTS).map(|_| AtomicU64::new(0)).collect());
        let (t, d, a) = (total.clone(), duplicates.clone(), arrived.clone());
        let on: OnRequest = Arc::new(move |body| {
            let now = stamp(Instant::now());
            t.fetch_add(1, Ordering::Relaxed);
            if let Some(slot) = seq_of(body).and_then(|s| a.get(s)) {
                if slot
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let task = tokio::spawn(serve(listener, StatusCode::OK, Bytes::new(), on));
        Receiver {
            addr,
            total,
            duplicates,
            arrived,
            task,
        }
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === the load generator ===

type Conn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// POSTs `body` and reads the whole answer; returns the status.
async fn post(conn: &mut Conn, addr: SocketAddr, path: &str, body: Bytes) -> Result<u16, String> {
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
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

/// Counts of one closed-loop run, inside the counted window only.
#[derive(Default)]
struct Throughput {
    ok: u64,
    other_status: u64,
    errors: u64,
}

impl Throughput {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / MEASURE.as_secs_f64()
    }
}

/// `CONNECTIONS` keep-alive connections sending back to back for
/// `WARMUP + MEASURE`; answers with status `want` inside the window count.
async fn closed_loop(addr: SocketAddr, path: &'static str, want: u16) -> Throughput {
    let from = Instant::now() + WARMUP;
    let until = from + MEASURE;
    let payload = body(9_999_999_999);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(one_connection(
                addr,
                path,
                payload.clone(),
                want,
                from,
                until,
            ))
        })
        .collect();
    let mut total = Throughput::default();
    for t in tasks {
        let t = t.await.expect("load task");
        total.ok += t.ok;
        total.other_status += t.other_status;
        total.errors += t.errors;
    }
    total
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
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(addr).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    counts.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let result = post(c, addr, path, payload.clone()).await;
        let now = Instant::now();
        let counted = now >= from && now < until;
        match result {
            Ok(s) if s == want => counts.ok += u64::from(counted),
            Ok(_) => counts.other_status += u64::from(counted),
            Err(_) => {
                counts.errors += 1;
                conn = None;
            }
        }
    }
    counts
}

/// Results of the open-loop run: latencies in µs, sorted.
struct Latency {
    end_to_end_us: Vec<u64>,
    ack_us: Vec<u64>,
    refused: u64,
    duplicates: u64,
}

/// Sends `PACED_EVENTS` events at `PACED_RATE`/s, spread over
/// `PACED_CONNECTIONS` connections, each stamped at its scheduled send time;
/// then waits up to `DRAIN` for the deliveries still on their way.
async fn paced(addr: SocketAddr, rx: &Receiver) -> Latency {
    let sent: Arc<Vec<AtomicU64>> =
        Arc::new((0..PACED_EVENTS).map(|_| AtomicU64::new(0)).collect());
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new((0..PACED_EVENTS).map(|_| AtomicU64::new(0)).collect());
    let refused = Arc::new(AtomicU64::new(0));
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..PACED_CONNECTIONS {
        let (tx, mut rx_seq) = mpsc::unbounded_channel::<usize>();
        queues.push(tx);
        let mut conn = connect(addr).await.expect("connect to relay");
        let (acked, refused) = (acked.clone(), refused.clone());
        workers.push(tokio::spawn(async move {
            while let Some(seq) = rx_seq.recv().await {
                match post(&mut conn, addr, "/bench/new_order", body(seq as u64)).await {
                    Ok(202) => acked[seq].store(stamp(Instant::now()), Ordering::Relaxed),
                    Ok(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        if let Ok(c) = connect(addr).await {
                            conn = c;
                        }
                    }
                }
            }
        }));
    }
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / PACED_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..PACED_EVENTS {
        let at = tick.tick().await.into_std();
        sent[seq].store(stamp(at), Ordering::Relaxed);
        let _ = queues[seq % PACED_CONNECTIONS].send(seq);
    }
    drop(queues);
    for w in workers {
        let _ = w.await;
    }
    let deadline = Instant::now() + DRAIN;
    let acks = acked
        .iter()
        .filter(|a| a.load(Ordering::Relaxed) > 0)
        .count();
    while Instant::now() < deadline && arrivals(rx) < acks {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Latency {
        end_to_end_us: deltas_us(&sent, &rx.arrived),
        ack_us: deltas_us(&sent, &acked),
        refused: refused.load(Ordering::Relaxed),
        duplicates: rx.duplicates.load(Ordering::Relaxed),
    }
}

fn arrivals(rx: &Receiver) -> usize {
    rx.arrived
        .iter()
        .filter(|a| a.load(Ordering::Relaxed) > 0)
        .count()
}

/// `to - from` in µs for every index stamped in both, sorted.
fn deltas_us(from: &[AtomicU64], to: &[AtomicU64]) -> Vec<u64> {
    let mut out: Vec<u64> = from
        .iter()
        .zip(to)
        .filter_map(|(a, b)| {
            let (a, b) = (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
            (a > 0 && b > 0).then(|| b.saturating_sub(a) / 1000)
        })
        .collect();
    out.sort_unstable();
    out
}

/// Nearest-rank percentile of a sorted list, in ms.
fn pct_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

// === child processes ===

/// Kills and reaps its child when dropped, panics included.
struct ChildGuard(Child);

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Plain {
    addr: SocketAddr,
    guard: ChildGuard,
}

/// Re-executes this binary as the plain server and reads its port.
fn start_plain_server() -> Plain {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .env(ROLE_VAR, "plain")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the plain server");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("port line");
    let port: u16 = line
        .trim()
        .parse()
        .expect("the plain server prints its port");
    Plain {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        guard,
    }
}

/// The hookrelay binary `cargo bench` built with this bench (release
/// settings, `target/release/hookrelay`); built on demand if it is missing.
fn relay_binary() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_hookrelay"));
    if !bin.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", "hookrelay"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(
            status.success() && bin.exists(),
            "cannot build {}",
            bin.display()
        );
    }
    bin
}

struct RelayProcess {
    addr: SocketAddr,
    admin: SocketAddr,
    // Field order: the process is killed before its store is deleted.
    guard: ChildGuard,
    _dir: tempfile::TempDir,
}

/// A free loopback port: bound, then released for the relay to take.
fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("bound").port()
}

/// Loopback everything; limits raised so that they do not cap the run; the
/// admin listener on for `/metrics`; the receiver allowed past the egress
/// guard, which refuses loopback targets by default.
fn relay_config(port: u16, admin_port: u16, store: &Path, rx: SocketAddr) -> String {
    format!(
        r#"[ingest]
listen = ["127.0.0.1:{port}"]
rate = {{ per_second = 1000000, burst = 1000000 }}

[admin]
listen = ["127.0.0.1:{admin_port}"]

[egress]
allow = ["127.0.0.1/32"]

[store]
path = {store:?}

[delivery]
concurrency = 64
rate = {{ per_second = 100000, burst = 100000 }}

[[routes]]
name = "bench"
path = "/bench/{{event}}"
event = "{{path.event}}"

  [[routes.targets]]
  name = "rx"
  url = "http://{rx}/hook"
  secret = "{SECRET}"
"#
    )
}

/// Starts the relay on a fresh store with logs in its temp dir, and waits
/// until its ingest port accepts connections.
fn start_relay(bin: &Path, rx: SocketAddr) -> RelayProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = dir.path().join("hookrelay.toml");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = relay_config(port, admin.port(), &dir.path().join("store"), rx);
    std::fs::write(&config, text).expect("write config");
    let log = |name| std::fs::File::create(dir.path().join(name)).expect("log file");
    let child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log("stdout.log"))
        .stderr(log("stderr.log"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let mut guard = ChildGuard(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + STARTUP;
    while StdStream::connect(addr).is_err() {
        if let Ok(Some(status)) = guard.0.try_wait() {
            let err = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
            panic!("hookrelay exited at startup ({status}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "hookrelay did not listen within {STARTUP:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    RelayProcess {
        addr,
        guard,
        admin,
        _dir: dir,
    }
}

// === what the relay reports about itself ===

/// The store's group commit, from the relay's `/metrics`.
#[derive(Clone, Copy)]
struct Flushes {
    count: f64,
    events_per_flush: f64,
    ms_per_flush: f64,
}

/// Reads `/metrics` from the admin listener; `None` if it is not served or
/// the flush metrics are not in it.
async fn flushes(admin: SocketAddr) -> Option<Flushes> {
    let mut conn = connect(admin).await.ok()?;
    let req = Request::get("/metrics")
        .header(http::header::HOST, admin.to_string())
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let work = async {
        let resp = conn.send_request(req).await.ok()?;
        resp.into_body().collect().await.ok().map(|b| b.to_bytes())
    };
    let body = tokio::time::timeout(REQUEST_TIMEOUT, work).await.ok()??;
    let text = String::from_utf8_lossy(&body);
    let count = metric(&text, "hookrelay_fsync_batch_events_count")?;
    Some(Flushes {
        count,
        events_per_flush: metric(&text, "hookrelay_fsync_batch_events_sum")? / count,
        ms_per_flush: metric(&text, "hookrelay_fsync_duration_seconds_sum")? * 1000.0 / count,
    })
}

/// The sum of a metric's samples over all its label sets.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let key = parts.next()?.split('{').next()?;
            if key != name {
                return None;
            }
            parts.next()?.parse::<f64>().ok()
        })
        .reduce(|a, b| a + b)
}

// === /proc ===

/// VmRSS and VmHWM of `pid` in MiB, and its thread count.
#[derive(Clone, Copy)]
struct Memory {
    rss_mib: f64,
    hwm_mib: f64,
    threads: f64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Memory {
        rss_mib: field("VmRSS:") / 1024.0,
        hwm_mib: field("VmHWM:") / 1024.0,
        threads: field("Threads:"),
    }
}

/// User + system CPU seconds `pid` has used (USER_HZ is 100 on Linux).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    if f.len() < 13 {
        return f64::NAN;
    }
    (f[11] + f[12]) / 100.0
}

fn machine_info() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |k| k / 1024.0 / 1024.0);
    let load = read("/proc/loadavg");
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "machine: {nproc} CPUs, {model}, Linux {}, {mem_gib:.1} GiB RAM\n\
         before the run: load average {load}, rustc processes running: {}",
        read("/proc/sys/kernel/osrelease").trim(),
        rustc_processes()
    )
}

/// How many `rustc` processes run now: a concurrent build skews the figures.
fn rustc_processes() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .take(100_000)
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "rustc")
        })
        .count()
}

// === the report ===

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

const RULE: &str = "------------------------------------------------------------------------------";

fn print_report(ceiling: &Ceiling, ingest: &Ingest, e2e: &EndToEnd) {
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

//! Child processes (the plain server and the relay, its config and start),
//! the relay's own `/metrics`, `/readyz` and logs, and readings from /proc.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;

use crate::load::connect;
use crate::{REQUEST_TIMEOUT, ROLE_VAR, SECRET, STARTUP};

// === child processes ===

/// Kills (SIGKILL) and reaps its child when dropped, panics included.
pub(crate) struct ChildGuard(Child);

impl ChildGuard {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// `kill -9` now, and reap it.
    pub(crate) fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) struct Plain {
    pub(crate) addr: SocketAddr,
    pub(crate) guard: ChildGuard,
}

/// Re-executes this binary as the plain server and reads its port.
pub(crate) fn start_plain_server() -> Plain {
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
pub(crate) fn relay_binary() -> PathBuf {
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

/// A free loopback port: bound, then released for the relay to take.
pub(crate) fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("bound").port()
}

/// What varies between the relay configurations of the runs. Everything
/// else is fixed: loopback listeners, the ingest limiter raised so that it
/// does not cap the run, the admin listener on (for `/metrics` and
/// `/readyz`), the receivers allowed past the egress guard (which refuses
/// loopback targets by default), and one route, `/bench/{event}`.
pub(crate) struct RelayConfig {
    /// The lines of `[delivery]`.
    pub(crate) delivery: String,
    /// Lines of `[store]` after `path`.
    pub(crate) store: String,
    /// Lines of `[egress]` after `allow`.
    pub(crate) egress: String,
    /// The route's targets: name and URL, all signed with `SECRET`.
    pub(crate) targets: Vec<(String, String)>,
}

impl RelayConfig {
    /// (b) and (c): one target, `rx`; 64 attempts in flight, a rate that
    /// does not cap.
    pub(crate) fn single(rx: SocketAddr) -> RelayConfig {
        RelayConfig {
            delivery: "concurrency = 64\nrate = { per_second = 100000, burst = 100000 }\n".into(),
            store: String::new(),
            egress: String::new(),
            targets: vec![("rx".into(), format!("http://{rx}/hook"))],
        }
    }

    fn render(&self, port: u16, admin_port: u16, store: &Path) -> String {
        let mut text = format!(
            r#"[ingest]
listen = ["127.0.0.1:{port}"]
rate = {{ per_second = 1000000, burst = 1000000 }}

[admin]
listen = ["127.0.0.1:{admin_port}"]

[egress]
allow = ["127.0.0.1/32"]
{egress}
[store]
path = {store:?}
{store_extra}
[delivery]
{delivery}
[[routes]]
name = "bench"
path = "/bench/{{event}}"
event = "{{path.event}}"
"#,
            egress = self.egress,
            store_extra = self.store,
            delivery = self.delivery,
        );
        for (name, url) in &self.targets {
            text.push_str(&format!(
                "\n  [[routes.targets]]\n  name = {name:?}\n  url = {url:?}\n  secret = \"{SECRET}\"\n"
            ));
        }
        text
    }
}

/// A relay's temp dir (config, store, logs) and ports, kept across restarts
/// on the same store. The store is deleted when it drops.
pub(crate) struct RelayDir {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    config: PathBuf,
    spawns: u32,
    dir: tempfile::TempDir,
}

/// A started relay process.
pub(crate) struct Spawned {
    pub(crate) guard: ChildGuard,
    /// When it was spawned.
    pub(crate) at: Instant,
    /// Its standard error (its log).
    pub(crate) log: PathBuf,
}

impl RelayDir {
    /// A temp dir with `config` written into it, ports chosen free.
    pub(crate) fn new(config: &RelayConfig) -> RelayDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let path = dir.path().join("hookrelay.toml");
        let text = config.render(addr.port(), admin.port(), &dir.path().join("store"));
        std::fs::write(&path, text).expect("write config");
        RelayDir {
            addr,
            admin,
            config: path,
            spawns: 0,
            dir,
        }
    }

    /// Starts the relay on this dir's config and store, with its output in
    /// the dir (`stderr.log`, then `stderr.2.log`... for restarts), and,
    /// with `fd_limit`, that open-file limit (through `prlimit`).
    pub(crate) fn spawn(&mut self, bin: &Path, fd_limit: Option<u64>) -> Spawned {
        self.spawns += 1;
        let name = |base: &str| match self.spawns {
            1 => format!("{base}.log"),
            n => format!("{base}.{n}.log"),
        };
        let log = self.dir.path().join(name("stderr"));
        let file = |p: PathBuf| std::fs::File::create(p).expect("log file");
        let mut cmd = match fd_limit {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let at = Instant::now();
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(file(self.dir.path().join(name("stdout"))))
            .stderr(file(log.clone()))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Spawned {
            guard: ChildGuard(child),
            at,
            log,
        }
    }

    /// Bytes of the store's files on disk.
    pub(crate) fn store_bytes(&self) -> u64 {
        fn walk(p: &Path, depth: usize) -> u64 {
            let Ok(dir) = std::fs::read_dir(p) else {
                return 0;
            };
            dir.flatten()
                .take(100_000)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() && depth < 8 => walk(&e.path(), depth + 1),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir.path().join("store"), 0)
    }
}

impl Spawned {
    /// Waits until `addr` accepts TCP connections; returns the time since
    /// the spawn, or why not (the relay exited, with its log; or `limit`).
    pub(crate) fn wait_listening(
        &mut self,
        addr: SocketAddr,
        limit: Duration,
    ) -> Result<Duration, String> {
        let deadline = self.at + limit;
        loop {
            if StdStream::connect(addr).is_ok() {
                return Ok(self.at.elapsed());
            }
            if let Some(status) = self.guard.exited() {
                return Err(self.exit_report(status));
            }
            if Instant::now() >= deadline {
                return Err(format!("hookrelay did not listen within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exit_report(&self, status: ExitStatus) -> String {
        let err = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: String = err.chars().take(2000).collect();
        format!("hookrelay exited at startup ({status}): {}", tail.trim())
    }
}

/// A running relay for (b) and (c), its own store in a temp dir.
pub(crate) struct RelayProcess {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    // Field order: the process is killed before its store is deleted.
    pub(crate) guard: ChildGuard,
    _dir: RelayDir,
}

/// Starts the relay of (b) and (c) on a fresh store, and waits until its
/// ingest port accepts connections.
pub(crate) fn start_relay(bin: &Path, rx: SocketAddr) -> RelayProcess {
    let mut dir = RelayDir::new(&RelayConfig::single(rx));
    let mut relay = dir.spawn(bin, None);
    if let Err(e) = relay.wait_listening(dir.addr, STARTUP) {
        panic!("{e}");
    }
    RelayProcess {
        addr: dir.addr,
        admin: dir.admin,
        guard: relay.guard,
        _dir: dir,
    }
}

/// The open-file limit the shipped unit gives the relay (`LimitNOFILE=` in
/// systemd/hookrelay.service), if `prlimit` is there to apply it.
pub(crate) fn unit_fd_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/hookrelay.service");
        let limit = std::fs::read_to_string(unit)
            .ok()?
            .lines()
            .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
            .and_then(|v| v.split(':').next()?.trim().parse().ok())?;
        let prlimit = Command::new("prlimit")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        prlimit.is_ok_and(|s| s.success()).then_some(limit)
    })
}

// === what the relay reports about itself ===

/// GETs `path` from `addr`; the status and body, or `None` if there is no
/// answer within `REQUEST_TIMEOUT`.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Option<(u16, Bytes)> {
    let work = async {
        let mut conn = connect(addr).await.ok()?;
        let req = Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let resp = conn.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work).await.ok()?
}

/// The store's group commit, from the relay's `/metrics`.
#[derive(Clone, Copy)]
pub(crate) struct Flushes {
    pub(crate) count: f64,
    pub(crate) events_per_flush: f64,
    pub(crate) ms_per_flush: f64,
}

/// Reads `/metrics` from the admin listener; `None` if it is not served or
/// the flush metrics are not in it.
pub(crate) async fn flushes(admin: SocketAddr) -> Option<Flushes> {
    let (_, body) = get(admin, "/metrics").await?;
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
    metric_where(text, name, "")
}

/// The sum of a metric's samples whose labels contain `label` (such as
/// `state="pending"`; "" for all).
fn metric_where(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let series = parts.next()?;
            let (key, labels) = series.split_once('{').unwrap_or((series, ""));
            if key != name || !labels.contains(label) {
                return None;
            }
            parts.next()?.parse::<f64>().ok()
        })
        .reduce(|a, b| a + b)
}

/// Deliveries pending and in flight, and outbound connections open, as
/// the relay's `/metrics` says (the last only from relays that count them).
#[derive(Clone, Copy)]
pub(crate) struct Queue {
    pub(crate) pending: f64,
    pub(crate) in_flight: f64,
    pub(crate) egress_connections: Option<f64>,
}

impl Queue {
    pub(crate) fn is_empty(&self) -> bool {
        self.pending + self.in_flight == 0.0
    }
}

pub(crate) async fn queue(admin: SocketAddr) -> Option<Queue> {
    let (_, body) = get(admin, "/metrics").await?;
    let text = String::from_utf8_lossy(&body);
    let depth = |state: &str| {
        metric_where(
            &text,
            "hookrelay_queue_depth",
            &format!("state=\"{state}\""),
        )
    };
    Some(Queue {
        pending: depth("pending").unwrap_or(0.0),
        in_flight: depth("in_flight").unwrap_or(0.0),
        egress_connections: metric(&text, "hookrelay_egress_connections"),
    })
}

/// When a restarted relay's ingest port accepted TCP and its `/readyz`
/// answered 200, counted from the spawn; `failure` if not both in time.
pub(crate) struct Ready {
    pub(crate) tcp: Option<Duration>,
    pub(crate) ready: Option<Duration>,
    pub(crate) failure: Option<String>,
}

/// Polls the ingest port and `GET /readyz` on the admin listener every
/// 10 ms until both answer, the relay exits, or `limit` has passed.
pub(crate) async fn wait_ready(
    relay: &mut Spawned,
    ingest: SocketAddr,
    admin: SocketAddr,
    limit: Duration,
) -> Ready {
    let deadline = relay.at + limit;
    let mut r = Ready {
        tcp: None,
        ready: None,
        failure: None,
    };
    loop {
        if r.tcp.is_none() && tokio::net::TcpStream::connect(ingest).await.is_ok() {
            r.tcp = Some(relay.at.elapsed());
        }
        if r.ready.is_none() && matches!(get(admin, "/readyz").await, Some((200, _))) {
            r.ready = Some(relay.at.elapsed());
        }
        if r.tcp.is_some() && r.ready.is_some() {
            return r;
        }
        if let Some(status) = relay.guard.exited() {
            r.failure = Some(relay.exit_report(status));
            return r;
        }
        if Instant::now() >= deadline {
            r.failure = Some(format!("not ready within {limit:?} of the spawn"));
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a relay's log (standard error, text format) says: warnings,
/// errors, out-of-file-descriptor errors, failed attempts, and the first
/// distinct warning and error messages with their counts. The warning that
/// there is no admin tokens file (the bench uses none) is left out.
#[derive(Default)]
pub(crate) struct LogSummary {
    pub(crate) warn: u64,
    pub(crate) error: u64,
    /// Lines that mention `os error 24` (EMFILE, too many open files).
    pub(crate) emfile: u64,
    /// `delivery attempt` lines whose outcome is not `succeeded`.
    pub(crate) failed_attempts: u64,
    pub(crate) messages: Vec<(String, u64)>,
    /// The first distinct errors of failed attempts (digits as `#`).
    pub(crate) attempt_errors: Vec<(String, u64)>,
}

/// Counts `key` in a short list of distinct keys.
fn count_distinct(list: &mut Vec<(String, u64)>, key: String) {
    if let Some((_, n)) = list.iter_mut().find(|(k, _)| *k == key) {
        *n += 1;
    } else if list.len() < LOG_MESSAGES {
        list.push((key, 1));
    }
}

/// `status NNN` of an attempt line that has no error.
fn attempt_status(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("status="))
        .map_or("(no status, no error)".into(), |s| format!("status {s}"))
}

/// The `error=` field of an attempt line, digits written `#`.
fn attempt_error(line: &str) -> Option<String> {
    let (_, rest) = line.split_once(" error=")?;
    let end = rest.find(" duration_ms=").unwrap_or(rest.len());
    let text: String = rest[..end]
        .trim_matches('"')
        .chars()
        .take(200)
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    let mut out = String::new();
    for c in text.chars() {
        if !(c == '#' && out.ends_with('#')) {
            out.push(c);
        }
    }
    Some(out)
}

/// Distinct warning and error messages a summary keeps.
const LOG_MESSAGES: usize = 6;

pub(crate) fn log_summary(path: &Path) -> LogSummary {
    let mut s = LogSummary::default();
    let Ok(file) = std::fs::File::open(path) else {
        return s;
    };
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        if line.contains("os error 24") {
            s.emfile += 1;
        }
        if line.contains("delivery attempt") && !line.contains("succeeded") {
            s.failed_attempts += 1;
            let error = attempt_error(&line).unwrap_or_else(|| attempt_status(&line));
            count_distinct(&mut s.attempt_errors, error);
        }
        let mut words = line.split_whitespace();
        let _time = words.next();
        let level = words.next().unwrap_or("");
        // The bench gives the relay no admin tokens; that warning is expected.
        if line.contains("admin tokens file") {
            continue;
        }
        match level {
            "WARN" => s.warn += 1,
            "ERROR" => s.error += 1,
            _ => continue,
        }
        let _module = words.next();
        let message: Vec<&str> = words.take_while(|w| !w.contains('=')).collect();
        count_distinct(&mut s.messages, format!("{level} {}", message.join(" ")));
    }
    s
}

/// How much of a log `PurgeLog` reads at once.
const CHUNK: u64 = 64 << 20;

/// Follows a relay's log for the janitor's `removed events past retention
/// events=N` lines, reading only what was added since the last look.
pub(crate) struct PurgeLog {
    path: PathBuf,
    pos: u64,
    /// Events the janitor reported removed so far.
    pub(crate) removed: u64,
}

impl PurgeLog {
    pub(crate) fn new(path: &Path) -> PurgeLog {
        PurgeLog {
            path: path.to_path_buf(),
            pos: 0,
            removed: 0,
        }
    }

    /// Reads the complete lines added since the last call; returns how many
    /// events they report removed.
    pub(crate) fn poll(&mut self) -> u64 {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return 0;
        };
        if file.seek(SeekFrom::Start(self.pos)).is_err() {
            return 0;
        }
        let mut removed = 0;
        // 64 MiB at a time, up to what is there now (at most 1 TiB).
        for _ in 0..16_384 {
            let mut text = Vec::new();
            let Ok(n) = (&mut file).take(CHUNK).read_to_end(&mut text) else {
                break;
            };
            let Some(end) = text.iter().rposition(|&b| b == b'\n') else {
                break;
            };
            self.pos += end as u64 + 1;
            for line in String::from_utf8_lossy(&text[..end]).lines() {
                if !line.contains("removed events past retention") {
                    continue;
                }
                removed += line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("events="))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if (n as u64) < CHUNK || file.seek(SeekFrom::Start(self.pos)).is_err() {
                break;
            }
        }
        self.removed += removed;
        removed
    }
}

// === /proc ===

/// VmRSS and VmHWM of `pid` in MiB, and its thread count.
#[derive(Clone, Copy)]
pub(crate) struct Memory {
    pub(crate) rss_mib: f64,
    pub(crate) hwm_mib: f64,
    pub(crate) threads: f64,
}

pub(crate) fn memory(pid: u32) -> Memory {
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

/// Open file descriptors of `pid` (entries of /proc/<pid>/fd).
pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.take(10_000_000).count())
}

/// The soft `Max open files` limit of `pid`.
pub(crate) fn fd_limit(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One reading of a process, and of a progress counter.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) rss_mib: f64,
    pub(crate) fds: usize,
    pub(crate) progress: u64,
}

/// Most samples one sampler takes.
const MAX_SAMPLES: usize = 100_000;

/// Reads a process's VmRSS and open fds, and a progress counter, on a
/// thread of its own every `every`, until finished.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub(crate) fn start(pid: u32, every: Duration, progress: Arc<AtomicU64>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            while out.len() < MAX_SAMPLES {
                out.push(Sample {
                    rss_mib: memory(pid).rss_mib,
                    fds: open_fds(pid),
                    progress: progress.load(Ordering::Relaxed),
                });
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(every);
            }
            out
        });
        Sampler { stop, handle }
    }

    /// Stops it (after one last sample) and returns the samples.
    pub(crate) fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// The fields of `/proc/<pid>/stat` after the command name, as numbers
/// (the state letter reads as 0): ppid is `[1]`, utime `[11]`, stime
/// `[12]`, cutime and cstime (reaped children) `[13]` and `[14]`.
fn stat_fields(pid: u32) -> Option<Vec<f64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.len() >= 15).then_some(f)
}

/// User + system CPU seconds `pid` has used (USER_HZ is 100 on Linux).
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    stat_fields(pid).map_or(f64::NAN, |f| (f[11] + f[12]) / 100.0)
}

/// CPU seconds of `pid`, its children now running, and those it has
/// reaped: a server that forks a process per connection (PostgreSQL's
/// backends, which exit with their connection), counted whole.
pub(crate) fn tree_cpu_secs(pid: u32) -> f64 {
    let Some(own) = stat_fields(pid) else {
        return f64::NAN;
    };
    let children: f64 = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .take(100_000)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(stat_fields)
                .filter(|f| f[1] == f64::from(pid))
                .map(|f| f[11] + f[12])
                .sum()
        })
        .unwrap_or(0.0);
    (own[11] + own[12] + own[13] + own[14] + children) / 100.0
}

/// The children of `pid` now running: pid, command line (a server such
/// as PostgreSQL shows there what each process is), CPU seconds.
pub(crate) fn children_cpu(pid: u32) -> Vec<(u32, String, f64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .take(100_000)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| {
            let f = stat_fields(child)?;
            if f[1] != f64::from(pid) {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .trim()
                .to_string();
            Some((child, cmdline, (f[11] + f[12]) / 100.0))
        })
        .collect()
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn machine_info() -> String {
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
    let load = load_average();
    format!(
        "machine: {nproc} CPUs, {model}, Linux {}, {mem_gib:.1} GiB RAM\n\
         before the run: load average {load}, compiler processes running: {}",
        read("/proc/sys/kernel/osrelease").trim(),
        compiler_processes()
    )
}

/// How many compiler processes (`rustc`, and `clippy-driver`, which
/// compiles too) run now: a concurrent build skews the figures.
pub(crate) fn compiler_processes() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .take(100_000)
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| matches!(c.trim(), "rustc" | "clippy-driver"))
        })
        .count()
}

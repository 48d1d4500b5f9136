//! Child processes (the plain server and the relay, its config and start),
//! the relay's own `/metrics`, and readings from /proc.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;

use crate::load::connect;
use crate::{REQUEST_TIMEOUT, ROLE_VAR, SECRET, STARTUP};

// === child processes ===

/// Kills and reaps its child when dropped, panics included.
pub(crate) struct ChildGuard(Child);

impl ChildGuard {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
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

pub(crate) struct RelayProcess {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    // Field order: the process is killed before its store is deleted.
    pub(crate) guard: ChildGuard,
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
pub(crate) fn start_relay(bin: &Path, rx: SocketAddr) -> RelayProcess {
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
pub(crate) struct Flushes {
    pub(crate) count: f64,
    pub(crate) events_per_flush: f64,
    pub(crate) ms_per_flush: f64,
}

/// Reads `/metrics` from the admin listener; `None` if it is not served or
/// the flush metrics are not in it.
pub(crate) async fn flushes(admin: SocketAddr) -> Option<Flushes> {
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

/// User + system CPU seconds `pid` has used (USER_HZ is 100 on Linux).
pub(crate) fn cpu_secs(pid: u32) -> f64 {
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

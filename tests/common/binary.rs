//! The relay binary as its own process, for stories that need what only a
//! process shows: `kill -9`, its file descriptors, its memory, a restart.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// A free loopback port: bind port 0, note the port, let it go.
pub fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Runs `hookrelay serve`, one process at a time, from one directory. On
/// drop it kills the process still running and, when the test is failing,
/// prints the tail of the stderr of every process it ran.
pub struct Binary {
    dir: tempfile::TempDir,
    child: Option<Child>,
    logs: Vec<PathBuf>,
    /// Where the running (or last) process listens.
    pub ingest: SocketAddr,
    pub admin: SocketAddr,
}

impl Default for Binary {
    fn default() -> Self {
        Binary::new()
    }
}

impl Binary {
    pub fn new() -> Binary {
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        Binary {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            logs: Vec::new(),
            ingest: unset,
            admin: unset,
        }
    }

    /// A directory for the config, logs and (usually) the store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the binary with the config `config(ingest port, admin port)`
    /// returns; returns once ingest accepts connections. The ports are
    /// picked before the child binds them, so another process may take one
    /// in between: a start that fails to bind is tried again.
    pub async fn start(&mut self, config: impl Fn(u16, u16) -> String) -> SocketAddr {
        for _ in 0..3 {
            let (ingest, admin) = (free_port(), free_port());
            if let Some(addr) = self.try_start(&config(ingest, admin), ingest, admin).await {
                return addr;
            }
        }
        panic!("hookrelay could not bind a free port in 3 tries");
    }

    async fn try_start(&mut self, text: &str, port: u16, admin: u16) -> Option<SocketAddr> {
        assert!(self.child.is_none(), "a relay is already running");
        let n = self.logs.len();
        let config = self.dir.path().join(format!("hookrelay-{n}.toml"));
        std::fs::write(&config, text).unwrap();
        let log = self.dir.path().join(format!("stderr-{n}.log"));
        self.logs.push(log.clone());
        let child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&log).unwrap()))
            .spawn()
            .expect("start the hookrelay binary");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.ingest = addr;
        self.admin = SocketAddr::from(([127, 0, 0, 1], admin));
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                if stderr.contains("cannot listen on") {
                    return None;
                }
                panic!("hookrelay exited at startup: {status}\n{stderr}");
            }
            let connect = tokio::net::TcpStream::connect(addr);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                return Some(addr);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "hookrelay did not accept on {addr} within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until the admin listener's `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        super::eventually_async("ready", async || {
            (super::get_json(admin, "/readyz").await.0 == 200).then_some(())
        })
        .await;
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a relay is running").id()
    }

    /// How many file descriptors the running process has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The running process's resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// What the running (or last) process has logged so far.
    pub fn log(&self) -> String {
        self.logs
            .last()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let code = super::wait_exit(&mut child).await;
            assert_eq!(code, Some(0), "hookrelay did not stop cleanly");
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            for log in &self.logs {
                let mut text = String::new();
                let _ = File::open(log).and_then(|mut f| f.read_to_string(&mut text));
                // The tail is where a failure shows; the head is mostly attempts.
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(200)..];
                eprintln!("----- {} (last {} lines) -----", log.display(), tail.len());
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
    }
}

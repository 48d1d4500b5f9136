//! A throwaway PostgreSQL 15 server for the PostgreSQL store's tests: a
//! fresh cluster in a temp dir, listening on 127.0.0.1 only, trust auth,
//! superuser `hookrelay`, and fsync on, because what those tests check is
//! durability and a server that skips fsync would not keep the promise the
//! store relies on.
//!
//! No postgres outlives the test process, however that process ends. The
//! server runs under a small `sh` supervisor (`SUPERVISOR`) whose stdin is a
//! pipe; the test process holds the only write end (std opens it
//! close-on-exec, so no other child inherits it). When the test process
//! goes — main returns (which runs no destructors of statics, so the shared
//! server is never dropped), a panic, even SIGKILL — the kernel closes that
//! end, and the supervisor reads end-of-file, stops postgres, waits for it
//! and removes the temp dir, which no destructor would remove then.
//! Dropping a `Postgres` closes the pipe the same way. PR_SET_PDEATHSIG is
//! not used: it fires when the spawning *thread* exits, and test threads
//! exit while the shared server must live on.
//!
//! `stop` writes a line to the pipe instead: SIGINT, a fast shutdown, which
//! cuts sessions and writes a shutdown checkpoint so `restart` finds the
//! data as committed. End-of-file sends SIGQUIT, an immediate shutdown: the
//! data is about to go, and the checkpoint would fsync every file of every
//! database made (each `database()` adds some 300), which takes seconds.
//!
//! The supervisor exits when postgres does, so a server that died shows as
//! an exited child. It and postgres run in a process group of their own, so
//! a Ctrl-C at the terminal reaches the test process only and the server
//! still stops by the pipe, the one way it ever stops.
//!
//! PostgreSQL refuses to run as root. The tests run as root here and in CI,
//! so then initdb and postgres run as `nobody`, who owns the temp dir.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

use super::binary::free_port;
use super::DEADLINE;

/// Debian's `postgresql` package (PostgreSQL 15 on bookworm); `PG_BIN`
/// overrides it.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser initdb creates; trust auth lets it in without a password.
const SUPERUSER: &str = "hookrelay";

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// The settings of a test server, besides its port and socket directory.
/// fsync and synchronous_commit are the defaults, spelled out because the
/// durability tests depend on them; several relays, each with a pool, share
/// one server, hence max_connections.
const SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "fsync=on",
    "synchronous_commit=on",
    "max_connections=200",
    "shared_buffers=32MB",
];

/// Runs postgres (`$2...`) and stops it when stdin says so: a line means
/// "stop, keep the data" (a fast shutdown); end-of-file means the owner is
/// gone (an immediate shutdown, then the temp dir `$1` goes). A watcher in
/// the background reads stdin (saved as fd 3, since a background job's
/// stdin is /dev/null) while the shell waits for postgres; the shell then
/// ends the watcher, so it exits when postgres does, with its status.
const SUPERVISOR: &str = r#"
dir=$1
shift
exec 3<&0
"$@" </dev/null 3<&- &
pg=$!
{
    if read -r _ <&3; then
        kill -INT "$pg" 2>/dev/null
    else
        : >"$dir/discard"
        kill -QUIT "$pg" 2>/dev/null
    fi
} &
watcher=$!
wait "$pg"
status=$?
kill "$watcher" 2>/dev/null
if [ -e "$dir/discard" ]; then
    rm -rf -- "$dir"
fi
exit "$status"
"#;

pub struct Postgres {
    server: Mutex<Option<Server>>,
    postgres: PathBuf,
    user: User,
    port: u16,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// A fresh server of its own, ready for connections. Missing binaries:
    /// panics when the `CI` env var is set (CI installs them), else returns
    /// None after printing why, so a developer without PostgreSQL can still
    /// run the rest.
    pub async fn start() -> Option<Postgres> {
        let bin = std::env::var_os("PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(PG_BIN));
        let (initdb, postgres) = (bin.join("initdb"), bin.join("postgres"));
        for path in [&initdb, &postgres] {
            if !path.is_file() {
                let why = format!(
                    "{} is missing: install Debian's postgresql package (or set PG_BIN)",
                    path.display()
                );
                if std::env::var_os("CI").is_some() {
                    panic!("{why}");
                }
                eprintln!("skipping the PostgreSQL test: {why}");
                return None;
            }
        }

        let user = User::for_server();
        let dir = tempfile::Builder::new()
            .prefix("hookrelay-pg-")
            .tempdir()
            .expect("a temp dir for PostgreSQL");
        user.own(dir.path());
        init_cluster(&initdb, user, dir.path()).await;

        // The port is picked before postgres binds it, so another process
        // may take it in between: a start that fails to bind is tried again.
        let mut pg = Postgres {
            server: Mutex::new(None),
            postgres,
            user,
            port: free_port(),
            dir,
        };
        for _ in 0..3 {
            match pg.launch().await {
                Ok(()) => return Some(pg),
                Err(Refused::Port) => pg.port = free_port(),
                Err(Refused::Other) => panic!(
                    "postgres did not start on port {}:\n{}",
                    pg.port,
                    pg.log_tail()
                ),
            }
        }
        panic!("postgres could not bind a free port in 3 tries");
    }

    /// One server for every test in this test binary, started by the first
    /// that asks. Each #[tokio::test] has a runtime of its own that ends with
    /// it, so the server holds no connection or task of any runtime: only
    /// std processes and files. It is never dropped; the supervisor stops
    /// it when the test process exits. `stop` and `restart` on it reach
    /// every test at once: a test that stops its server starts its own.
    pub async fn shared() -> Option<&'static Postgres> {
        static SHARED: OnceCell<Option<Postgres>> = OnceCell::const_new();
        SHARED.get_or_init(Postgres::start).await.as_ref()
    }

    /// Creates a new, empty database and returns its URL. Names are a
    /// counter plus the process id, so no two calls anywhere share one.
    pub async fn database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "hookrelay_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let create = async {
            let (client, connection) = tokio_postgres::connect(&self.url("postgres"), NoTls)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            // The connection task ends when `client` drops, below: nothing
            // of this caller's runtime outlives the call.
            let connection = tokio::spawn(connection);
            let created = client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .map_err(|e| format!("CREATE DATABASE {name}: {e}"));
            drop(client);
            let _ = connection.await;
            created
        };
        match tokio::time::timeout(DEADLINE, create).await {
            Ok(Ok(())) => self.url(&name),
            Ok(Err(e)) => panic!("{e}\n{}", self.log_tail()),
            Err(_) => panic!("CREATE DATABASE {name} took over {DEADLINE:?}"),
        }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir that holds the data directory (`data`), the unix socket
    /// and the server's log (`postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server with a fast shutdown: open sessions are cut, as when
    /// a database goes away. Returns once postgres has exited and its port
    /// is closed; a stopped server stays stopped. Its shutdown checkpoint
    /// fsyncs what is not yet on disk, so this takes longer the more
    /// databases were made since the last one (a second or so for a few).
    pub async fn stop(&self) {
        let Some(mut server) = self.server.lock().unwrap().take() else {
            return;
        };
        server.ask_to_stop();
        let deadline = Instant::now() + DEADLINE;
        while server.exited().is_none() {
            if Instant::now() >= deadline {
                server.kill();
                panic!(
                    "postgres did not stop within {DEADLINE:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "port {} still open after postgres stopped",
                self.port
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts the server again (stopping it first if it runs) on the same
    /// data directory and port; returns once it accepts connections.
    pub async fn restart(&self) {
        self.stop().await;
        if self.launch().await.is_err() {
            panic!(
                "postgres did not restart on port {}:\n{}",
                self.port,
                self.log_tail()
            );
        }
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Runs postgres under its supervisor and waits until it accepts
    /// connections, or until it exits (then says whether its port was taken).
    async fn launch(&self) -> Result<(), Refused> {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap_or_else(|e| panic!("{}: {e}", self.log().display()));
        let logged_before = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", SUPERVISOR, "sh"])
            .arg(dir)
            .arg(&self.postgres)
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()));
        for setting in SETTINGS {
            command.args(["-c", setting]);
        }
        let mut child = self
            .user
            .run_as(&mut command)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log.try_clone().expect("a second log handle")))
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .expect("start the postgres supervisor (/bin/sh)");
        let mut server = Server {
            pipe: child.stdin.take(),
            shell: child,
        };

        let url = self.url("postgres");
        let deadline = Instant::now() + DEADLINE;
        loop {
            // A session that completes its startup means the server is up
            // (while it starts, postgres refuses sessions with an error).
            let connect = tokio_postgres::connect(&url, NoTls);
            if let Ok(Ok(_session)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
                *self.server.lock().unwrap() = Some(server);
                return Ok(());
            }
            if server.exited().is_some() {
                let text = std::fs::read(self.log()).unwrap_or_default();
                let since = String::from_utf8_lossy(&text[logged_before as usize..]);
                return Err(if since.contains("could not bind") {
                    Refused::Port
                } else {
                    Refused::Other
                });
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections on port {} within {DEADLINE:?}:\n{}",
                self.port,
                self.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The end of postgres's log, for a failure message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Postgres {
    /// When the test is failing, prints the end of postgres's log; then
    /// stops the server, whose supervisor removes the log with the rest.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} (last 30 lines) -----\n{}",
                self.log().display(),
                self.log_tail()
            );
        }
        drop(self.server.get_mut().unwrap().take());
    }
}

/// Why postgres exited before it accepted connections.
enum Refused {
    /// Another process took the port.
    Port,
    /// Anything else: its log says.
    Other,
}

// === the supervisor ===

/// A running postgres under its supervising shell.
struct Server {
    shell: Child,
    /// The supervisor's stdin: a line asks for a stop that keeps the data;
    /// its end without a line (a drop, or the test process gone) for an
    /// immediate stop and the temp dir's removal.
    pipe: Option<ChildStdin>,
}

impl Server {
    /// Asks for a fast shutdown that keeps the data directory.
    fn ask_to_stop(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            // A supervisor that has exited cannot read it, and needs no asking.
            let _ = pipe.write_all(b"stop\n");
        }
    }

    /// The supervisor's exit status, once it (and so postgres) has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.shell.try_wait().expect("the supervisor's status")
    }

    /// SIGKILL to the supervisor's process group (it leads it), then reap.
    fn kill(&mut self) {
        let group = rustix::process::Pid::from_child(&self.shell);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.shell.wait();
    }
}

impl Drop for Server {
    /// Stops postgres and removes the temp dir (the `TempDir` then finds it
    /// gone). Drop cannot await, so this one polls with a thread sleep.
    fn drop(&mut self) {
        drop(self.pipe.take());
        let deadline = Instant::now() + DEADLINE;
        while self.exited().is_none() {
            if Instant::now() >= deadline {
                self.kill();
                return;
            }
            std::thread::sleep(POLL);
        }
    }
}

// === the cluster ===

/// Who runs initdb and postgres: the current user, or `nobody` when that is
/// root, which postgres refuses to run as.
#[derive(Clone, Copy)]
struct User(Option<(u32, u32)>);

impl User {
    fn for_server() -> User {
        if rustix::process::geteuid().is_root() {
            User(Some(nobody()))
        } else {
            User(None)
        }
    }

    fn run_as(self, command: &mut Command) -> &mut Command {
        if let Some((uid, gid)) = self.0 {
            // std also drops root's supplementary groups when it sets a uid.
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Gives `dir` (a temp dir: root's, mode 0700) to the server's user;
    /// initdb then creates the data directory inside, owned by that user
    /// with mode 0700, as postgres requires.
    fn own(self, dir: &Path) {
        if let Some((uid, gid)) = self.0 {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
        }
    }
}

/// The uid and gid of `nobody` in /etc/passwd, or Debian's 65534.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.first() != Some(&"nobody") || fields.len() < 4 {
                return None;
            }
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        })
        .unwrap_or((65534, 65534))
}

/// Creates the cluster in `dir/data`. `--no-sync` only skips initdb's own
/// flush of the files it wrote (a second saved per start; a crash of the
/// machine mid-test loses a throwaway cluster); the server itself runs with
/// fsync on.
async fn init_cluster(initdb: &Path, user: User, dir: &Path) {
    let mut command = Command::new(initdb);
    command
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "--username",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .current_dir(dir)
        .stdin(Stdio::null());
    user.run_as(&mut command);
    let what = format!("{} into {}", initdb.display(), dir.display());
    let run = tokio::task::spawn_blocking(move || command.output());
    let output = match tokio::time::timeout(DEADLINE, run).await {
        Ok(output) => output
            .expect("initdb's thread")
            .unwrap_or_else(|e| panic!("{what}: {e}")),
        // initdb, stuck, would be left to run; the test fails either way.
        Err(_) => panic!("{what} took over {DEADLINE:?}"),
    };
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

//! Running as a service: sd_notify readiness and watchdog, SIGHUP reload,
//! Prometheus metrics, journald and JSON logs, and the full-disk limit.

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay");

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The binary running on a config file in a temp dir; killed on drop.
struct Running {
    child: Child,
    ingest: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts `hookrelay serve` on `routes` (plus `extra` top-level keys),
    /// with `env` added to its environment.
    async fn start(extra: &str, routes: &str, env: &[(&str, &str)]) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let (ingest, admin) = (free_addr(), free_addr());
        let config = dir.path().join("hookrelay.toml");
        let text = test_config_text(&format!("{extra}\n{routes}"), dir.path())
            .replacen("127.0.0.1:0", &ingest.to_string(), 1)
            .replacen("127.0.0.1:0", &admin.to_string(), 1);
        std::fs::write(&config, text).unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let r = Running {
            child,
            ingest,
            admin,
            config,
            stderr,
            _dir: dir,
        };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(admin).await.is_err() {
            assert!(
                start.elapsed() < DEADLINE,
                "relay never listened: {}",
                r.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    async fn wait_exit(&mut self) -> Option<i32> {
        wait_exit(&mut self.child).await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A unix datagram socket standing in for the service manager's.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            sock,
            path,
            _dir: dir,
        }
    }

    /// Waits for a message containing `want`; returns every line seen up to it.
    async fn wait_for(&self, want: &str) -> Vec<String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            assert!(
                start.elapsed() < DEADLINE,
                "no {want} from the relay; got {seen:?}"
            );
            let sock = self.sock.try_clone().unwrap();
            let got =
                tokio::task::spawn_blocking(move || sock.recv(&mut buf).map(|n| buf[..n].to_vec()))
                    .await
                    .unwrap();
            if let Ok(msg) = got {
                let text = String::from_utf8_lossy(&msg).into_owned();
                let done = text.lines().any(|l| l == want);
                seen.extend(text.lines().map(String::from));
                if done {
                    return seen;
                }
            }
        }
    }
}

#[tokio::test]
async fn ready_after_listeners_accept_then_watchdog_keeps_coming() {
    let notify = NotifySocket::new();
    let path = notify.path.to_str().unwrap().to_string();
    let mut relay = Running::start(
        "",
        "",
        &[
            ("NOTIFY_SOCKET", path.as_str()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .await;
    notify.wait_for("READY=1").await;
    // Ready means both listeners accept now.
    tokio::net::TcpStream::connect(relay.ingest).await.unwrap();
    tokio::net::TcpStream::connect(relay.admin).await.unwrap();
    // Every 200ms (half of WATCHDOG_USEC): wait for three in a row.
    for _ in 0..3 {
        notify.wait_for("WATCHDOG=1").await;
    }
    relay.signal("-TERM");
    notify.wait_for("STOPPING=1").await;
    assert_eq!(relay.wait_exit().await, Some(0));
}

#[tokio::test]
async fn sighup_adds_a_target_and_a_broken_file_changes_nothing() {
    let first = Receiver::ok().await;
    let second = Receiver::ok().await;
    let notify = NotifySocket::new();
    let path = notify.path.to_str().unwrap().to_string();
    let relay = Running::start(
        "",
        &one_route(&first.url("/a"), ""),
        &[("NOTIFY_SOCKET", path.as_str())],
    )
    .await;
    notify.wait_for("READY=1").await;

    // Add a second target to the route.
    let text = std::fs::read_to_string(&relay.config).unwrap();
    let grown = format!(
        "{text}\n[[routes.targets]]\nname = \"second\"\nurl = \"{}\"\n",
        second.url("/b")
    );
    std::fs::write(&relay.config, &grown).unwrap();
    relay.signal("-HUP");
    notify.wait_for("RELOADING=1").await;
    notify.wait_for("READY=1").await;
    let r = post_json(relay.ingest, "/t/new_order", "{}").await;
    assert_eq!(r.json()["deliveries"], 2, "{}", relay.log());
    first.wait_for(1).await;
    second.wait_for(1).await;

    // A broken file is refused; the running config keeps working.
    std::fs::write(
        &relay.config,
        format!("{grown}\n[delivery]\ntimeout = \"soon\"\n"),
    )
    .unwrap();
    relay.signal("-HUP");
    notify.wait_for("RELOADING=1").await;
    notify.wait_for("READY=1").await;
    assert!(relay.log().contains("reload refused"), "{}", relay.log());
    let r = post_json(relay.ingest, "/t/new_order", "{}").await;
    assert_eq!(r.json()["deliveries"], 2);
    first.wait_for(2).await;
    second.wait_for(2).await;
}

#[tokio::test]
async fn reload_cancels_deliveries_of_a_removed_target() {
    let down = format!("http://{}/gone", free_addr());
    let rx = Receiver::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let circuit = "delivery.circuit = { failures = 1, cooldown = \"30s\" }\n";
    let kept = format!(
        "[[routes.targets]]\nname = \"kept\"\nurl = \"{}\"\n",
        rx.url("/k")
    );
    let both = format!("{circuit}{}\n{kept}", one_route(&down, ""));
    let relay = hookrelay::Relay::start(test_config(&both, dir.path()))
        .await
        .unwrap();
    let addr = relay.ingest_addrs()[0];
    post_json(addr, "/t/a", "{}").await;
    let store = relay.store().clone();
    // The first attempt to the dead receiver fails; its circuit holds the rest.
    eventually_async("a failed attempt", async || {
        let page = store
            .list_deliveries(None, Some("t/rx"), None, 10, 100)
            .await
            .ok()?;
        page.deliveries
            .iter()
            .any(|(_, d)| d.attempts == 1)
            .then_some(())
    })
    .await;
    post_json(addr, "/t/b", "{}").await;
    rx.wait_for(2).await;

    let only_kept = format!("{circuit}[[routes]]\nname = \"t\"\npath = \"/t/{{event}}\"\n{kept}");
    let restart_only = relay
        .reload(test_config(&only_kept, dir.path()))
        .await
        .unwrap();
    assert!(restart_only.is_empty(), "{restart_only:?}");
    let page = store
        .list_deliveries(None, Some("t/rx"), None, 10, 100)
        .await
        .unwrap();
    assert_eq!(page.deliveries.len(), 2);
    for (_, d) in &page.deliveries {
        assert_eq!(d.state, hookrelay::store::State::Cancelled);
        assert_eq!(d.note.as_deref(), Some("target removed from configuration"));
    }
    // The kept target still delivers.
    post_json(addr, "/t/c", "{}").await;
    rx.wait_for(3).await;
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&one_route(&rx.url("/hook"), "")).await;
    let admin = app.relay.admin_addrs()[0];
    let before = scrape(admin).await;
    assert_eq!(
        metric(&before, "hookrelay_events_received_total", None),
        0.0
    );

    for _ in 0..3 {
        post_json(app.addr, "/t/new_order", "{}").await;
    }
    post_json(app.addr, "/nowhere", "{}").await;
    rx.wait_for(3).await;
    // An attempt is counted just after the store records it.
    let after = eventually_async("deliveries counted", async || {
        let s = scrape(admin).await;
        let delivered = metric(
            &s,
            "hookrelay_deliveries_total",
            Some(("outcome", "delivered")),
        );
        (delivered == 3.0).then_some(s)
    })
    .await;
    assert_eq!(metric(&after, "hookrelay_events_received_total", None), 4.0);
    assert_eq!(
        metric(
            &after,
            "hookrelay_events_accepted_total",
            Some(("route", "t"))
        ),
        3.0
    );
    assert_eq!(
        metric(
            &after,
            "hookrelay_events_rejected_total",
            Some(("reason", "no_route"))
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "hookrelay_attempts_total",
            Some(("outcome", "succeeded"))
        ),
        3.0
    );
    assert_eq!(
        metric(
            &after,
            "hookrelay_deliveries_total",
            Some(("outcome", "delivered"))
        ),
        3.0
    );
    assert_eq!(
        metric(&after, "hookrelay_queue_depth", Some(("state", "pending"))),
        0.0
    );
    assert_eq!(
        metric(&after, "hookrelay_circuit_state", Some(("target", "t/rx"))),
        0.0
    );
    assert!(metric(&after, "hookrelay_store_disk_bytes", None) > 0.0);
    // Histograms: three attempts and three end-to-end observations.
    let count = |name: &str| {
        after
            .samples
            .iter()
            .find(|x| x.metric == name)
            .map(|x| match &x.value {
                prometheus_parse::Value::Histogram(h) => h.last().map(|b| b.count).unwrap_or(0.0),
                _ => -1.0,
            })
            .unwrap_or(-2.0)
    };
    assert_eq!(count("hookrelay_attempt_duration_seconds"), 3.0);
    assert_eq!(count("hookrelay_end_to_end_latency_seconds"), 3.0);
    assert!(count("hookrelay_fsync_batch_events") >= 1.0);
}

#[tokio::test]
async fn journald_and_json_logs() {
    let rx = Receiver::ok().await;
    let mut relay = Running::start(
        "",
        &one_route(&rx.url("/a"), ""),
        &[("JOURNAL_STREAM", "8:1234")],
    )
    .await;
    post_json(relay.ingest, "/t/x", "{}").await;
    rx.wait_for(1).await;
    relay.signal("-TERM");
    relay.wait_exit().await;
    let log = relay.log();
    assert!(log.lines().all(|l| l.starts_with('<')), "{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>") && l.contains("delivery attempt")),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "no colour codes: {log}");

    let rx = Receiver::ok().await;
    let mut relay =
        Running::start("log.format = \"json\"", &one_route(&rx.url("/a"), ""), &[]).await;
    let r = post_json(relay.ingest, "/t/x", "{\"secret\": \"do-not-log\"}").await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    rx.wait_for(1).await;
    relay.signal("-TERM");
    relay.wait_exit().await;
    let log = relay.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let attempt = lines
        .iter()
        .find(|l| l["message"] == "delivery attempt")
        .expect("one line per delivery outcome");
    assert_eq!(attempt["event"], json!(id));
    assert_eq!(attempt["target"], "t/rx");
    assert_eq!(attempt["attempt"], 1);
    assert_eq!(attempt["status"], 200);
    assert!(attempt["duration_ms"].is_u64());
    assert_eq!(attempt["outcome"], "succeeded");
    assert!(!log.contains("do-not-log"), "bodies are not logged");
    assert!(!log.contains(SECRET), "secrets are not logged");
}

/// Runs `hookrelay ARGS --config CONFIG` to its end; its standard output.
async fn cli(config: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(config);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn user_supplied_text_cannot_forge_log_lines_or_drive_the_terminal() {
    let rx = Receiver::ok().await;
    let route = format!(
        "[[routes]]\nname = \"t\"\npath = \"/t\"\nevent = \"{{json./type}}\"\n\
         [[routes.targets]]\nname = \"rx\"\nurl = \"{}\"\n",
        rx.url("/a")
    );
    let mut relay = Running::start("", &route, &[("JOURNAL_STREAM", "8:1234")]).await;
    // Red text, then a line of its own that looks like a journald error.
    let evil = "evil\u{1b}[31m\n<3>hookrelay: FORGED";
    let shown = r"evil\u{1b}[31m\n<3>hookrelay: FORGED";
    let r = post_json(relay.ingest, "/t", json!({ "type": evil }).to_string()).await;
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_string();
    rx.wait_for(1).await;

    // What the CLI prints: the event type on its own row, escaped.
    for args in [
        vec!["events", "list"],
        vec!["event-types"],
        vec!["events", "show", id.as_str()],
    ] {
        let out = cli(&relay.config, &args).await;
        assert!(!out.contains('\u{1b}'), "{args:?}: {out:?}");
        assert!(
            out.lines()
                .filter(|l| l.contains("FORGED"))
                .all(|l| l.contains("evil")),
            "{args:?}: a value started a line of its own: {out}"
        );
        if args[0] == "events" && args[1] == "list" || args[0] == "event-types" {
            assert!(out.contains(shown), "{args:?}: {out}");
        }
    }

    relay.signal("-TERM");
    relay.wait_exit().await;
    let log = relay.log();
    assert!(!log.contains('\u{1b}'), "{log}");
    let attempt = log
        .lines()
        .find(|l| l.contains("delivery attempt"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        attempt.contains(&format!("event_type={shown}")),
        "{attempt}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("FORGED"))
            .all(|l| l.contains("delivery attempt")),
        "a value started a log line of its own: {log}"
    );
}

#[tokio::test]
async fn log_levels_follow_what_happened_and_values_are_plain() {
    let up = Arc::new(AtomicBool::new(false));
    let rx = Receiver::switchable(up.clone(), 500).await;
    let mut relay = Running::start(
        "delivery.max_attempts = 2\n\
         delivery.circuit = { failures = 1, cooldown = \"100ms\" }\n",
        &one_route(&rx.url("/a"), ""),
        &[("JOURNAL_STREAM", "8:1234")],
    )
    .await;
    post_json(relay.ingest, "/t/x", "{}").await;
    rx.wait_for(2).await;
    eventually("the delivery goes dead", || {
        relay.log().contains("outcome=dead").then_some(())
    })
    .await;
    // The receiver is back; the operator re-queues what went dead.
    up.store(true, Ordering::SeqCst);
    let auth = format!("Bearer {TOKEN}");
    let r = send(
        relay.admin,
        None,
        "POST",
        "/api/deliveries/retry",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        json!({"state": "dead", "target": "t/rx"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    rx.wait_for(3).await;
    eventually("the circuit closes", || {
        relay.log().contains("circuit closed").then_some(())
    })
    .await;
    relay.signal("-TERM");
    relay.wait_exit().await;
    let log = relay.log();
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what}: {log}"))
    };
    // A failed attempt is a warning with its status, a delivery going
    // dead an error, a success and a recovery news.
    assert!(line("outcome=retry").starts_with("<4>"), "{log}");
    assert!(line("outcome=retry").contains("status=500"), "{log}");
    assert!(line("outcome=dead").starts_with("<3>"), "{log}");
    assert!(line("outcome=succeeded").starts_with("<6>"), "{log}");
    assert!(line("circuit open").starts_with("<4>"), "{log}");
    assert!(line("circuit closed").starts_with("<6>"), "{log}");
    // Values as the API spells them, not as Rust's Debug does.
    let requeue = line("bulk re-queue");
    assert!(
        requeue.contains("state=dead") && requeue.contains("target=t/rx"),
        "{requeue}"
    );
    assert!(!log.contains("Some(") && !log.contains("\\\""), "{log}");
}

#[tokio::test]
async fn a_fatal_start_error_is_a_json_line_with_json_logs() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookrelay.toml");
    let text = test_config_text("log.format = \"json\"\n", dir.path()).replacen(
        "127.0.0.1:0",
        &format!("127.0.0.1:{port}"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    drop(taken);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let last = lines.last().unwrap_or_else(|| panic!("nothing logged"));
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert_eq!(last["message"], "hookrelay stopped on an error", "{stderr}");
    let error = last["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{error}"
    );
}

#[tokio::test]
async fn full_disk_limit_refuses_before_losing_anything() {
    let rx = Receiver::ok().await;
    let dir = tempfile::tempdir().unwrap();
    // Learn how big a fresh store is, then allow 2 MiB more.
    let fresh = {
        let relay = hookrelay::Relay::start(test_config("", dir.path()))
            .await
            .unwrap();
        relay.shutdown().await.unwrap();
        dir_size(&dir.path().join("store"))
    };
    let limit = fresh + 2 * 1024 * 1024;
    let config = test_config(
        &format!(
            "store.max_disk_bytes = {limit}\n{}",
            one_route(&rx.url("/a"), "")
        ),
        dir.path(),
    );
    let relay = hookrelay::Relay::start(config).await.unwrap();
    let addr = relay.ingest_addrs()[0];
    let body = format!("{{\"pad\": \"{}\"}}", "x".repeat(60 * 1024));
    let mut acked = Vec::new();
    let start = Instant::now();
    let mut refused = false;
    for _ in 0..400 {
        let r = post_json(addr, "/t/x", body.clone()).await;
        match r.status.as_u16() {
            202 => acked.push(r.json()["id"].as_str().unwrap().to_string()),
            503 => {
                assert_eq!(r.json()["error"]["code"], "store_full");
                refused = true;
                break;
            }
            s => panic!("unexpected {s}"),
        }
        if start.elapsed() > DEADLINE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        refused,
        "the limit was never reached after {} events",
        acked.len()
    );
    assert!(!acked.is_empty());
    let got = rx.wait_for(acked.len()).await;
    for id in &acked {
        assert!(
            got.iter().any(|g| g.headers["webhook-id"] == id.as_str()),
            "{id} lost"
        );
    }
    relay.shutdown().await.unwrap();
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn socket_activation_serves_ingest_on_the_passed_socket() {
    let Ok(tool) = which("systemd-socket-activate") else {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    };
    let rx = Receiver::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let activated = free_addr();
    // ingest.listen names another port: the passed socket must win.
    let text = test_config_text(&one_route(&rx.url("/a"), ""), dir.path());
    let config = dir.path().join("hookrelay.toml");
    std::fs::write(&config, text).unwrap();
    let child = Command::new(tool)
        .args(["--listen", &activated.to_string(), BIN, "serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends.
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Reaped(child);
    // The tool listens at once and starts hookrelay on the first connection.
    let start = Instant::now();
    let r = loop {
        if tokio::net::TcpStream::connect(activated).await.is_ok() {
            break post_json(activated, "/t/x", "{}").await;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "nothing listened on {activated}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.status, 202);
    rx.wait_for(1).await;
}

/// The path of an installed program, if there is one.
fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

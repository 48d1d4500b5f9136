//! A full disk and a full store heal by themselves: ingest refuses (503,
//! nothing acknowledged that is not durable), deliveries go on, and once
//! there is room again events are taken, with no restart. Measured from
//! outside on the real binary.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::binary::Binary;
use common::*;

/// A tmpfs of `size` mounted at `at` for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one, or says why it cannot: mounting needs root, which CI
    /// has (there the test must run, so not being able to is a failure).
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_path_buf())),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                if std::env::var_os("CI").is_some() {
                    panic!("cannot mount a tmpfs for the disk-full test: {why}");
                }
                eprintln!("skipped: cannot mount a tmpfs (needs root): {why}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with a file until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 256 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // Whatever is left of a chunk, byte by byte in small pieces.
    while f.write_all(&chunk[..512]).is_ok() {}
    path
}

fn config(ingest: u16, admin: u16, store: &Path, rx: &Receiver, extra: &str) -> String {
    format!(
        "ingest.listen = [\"127.0.0.1:{ingest}\"]\n\
         ingest.rate = {{ per_second = 100000, burst = 100000 }}\n\
         admin.listen = [\"127.0.0.1:{admin}\"]\n\
         egress.allow = [\"127.0.0.0/8\"]\n\
         delivery.rate = {{ per_second = 100000, burst = 100000 }}\n\
         delivery.backoff = {{ initial = \"50ms\", max = \"200ms\" }}\n\
         [store]\npath = {:?}\n{extra}\n{}",
        store.display().to_string(),
        one_route(&rx.url("/hook"), "")
    )
}

/// POSTs one event: its id when acknowledged, else the status and error code.
async fn post(addr: std::net::SocketAddr, n: usize) -> Result<String, (u16, String)> {
    let body = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(1000));
    let r = post_json(addr, "/t/disk.test", body).await;
    let json = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap_or_default();
    if r.status == 202 {
        Ok(json["id"].as_str().unwrap().to_string())
    } else {
        Err((
            r.status.as_u16(),
            json["error"]["code"].as_str().unwrap_or("").to_string(),
        ))
    }
}

/// The event ids the receiver got (`webhook-id`).
fn delivered(rx: &Receiver) -> HashSet<String> {
    rx.received()
        .iter()
        .filter_map(|r| r.headers.get("webhook-id"))
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

async fn all_delivered(rx: &Receiver, acknowledged: &HashSet<String>, what: &str) {
    eventually(what, || {
        let got = delivered(rx);
        acknowledged.iter().all(|id| got.contains(id)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_events_then_takes_them_again_without_a_restart() {
    let mut relay = Binary::new();
    let Some(mnt) = Tmpfs::mount(&relay.dir().join("mnt"), "64m") else {
        return;
    };
    let rx = Receiver::ok().await;
    let store = mnt.0.join("store");
    relay.start(|i, a| config(i, a, &store, &rx, "")).await;
    let pid = relay.pid();
    relay.wait_ready().await;
    assert!(
        store.join("hookrelay.reserve").exists(),
        "the disk reserve is written at start"
    );

    let mut acknowledged = HashSet::new();
    let mut n = 0;
    for _ in 0..10 {
        acknowledged.insert(post(relay.ingest, n).await.unwrap());
        n += 1;
    }

    // Fill the disk, then post at once, before the relay's next look at
    // its room: sled meets ENOSPC, and the store must heal. A round in
    // which the relay looked first (and refused at once) is tried again.
    let mut failed_write_seen = false;
    let mut filler = None;
    for round in 0..5 {
        filler = Some(fill(&mnt.0));
        let mut codes = Vec::new();
        for _ in 0..300 {
            match post(relay.ingest, n).await {
                Ok(id) => {
                    acknowledged.insert(id);
                }
                Err((status, code)) => {
                    assert_eq!(status, 503, "{code}");
                    codes.push(code);
                }
            }
            n += 1;
            if codes.len() >= 20 {
                break;
            }
        }
        eprintln!("round {round}: refusals {codes:?}");
        assert!(!codes.is_empty(), "a full disk refused nothing");
        if codes.iter().any(|c| c == "store_unavailable") {
            failed_write_seen = true;
            break;
        }
        // The relay refused before any write failed: room again, retry.
        std::fs::remove_file(filler.take().unwrap()).unwrap();
        relay.wait_ready().await;
    }
    assert!(
        failed_write_seen,
        "the disk never filled before the relay looked"
    );
    let filler = filler.unwrap();

    // Opened again in the running process; /readyz says why it refuses.
    eventually("the store opened again", || {
        relay
            .log()
            .contains("opened again after a failed write")
            .then_some(())
    })
    .await;
    let (status, why) = get_json(relay.admin, "/readyz").await;
    assert_eq!(status, 503, "{why}");
    assert_eq!(why["code"], "store_full", "{why}");
    assert!(why["reason"].as_str().unwrap().contains("disk"), "{why}");
    let refused = post(relay.ingest, n).await.unwrap_err();
    assert_eq!(refused, (503, "store_full".to_string()));

    // Deliveries go on while the disk is full (the reserve made room).
    all_delivered(&rx, &acknowledged, "deliveries while the disk is full").await;

    // Room again: events are taken within seconds, no restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let id = eventually_async("a 202 after space was freed", async || {
        post(relay.ingest, n).await.ok()
    })
    .await;
    eprintln!(
        "accepting again {:?} after space was freed",
        freed.elapsed()
    );
    acknowledged.insert(id);
    assert_eq!(get_json(relay.admin, "/readyz").await.0, 200);
    for k in 0..20 {
        acknowledged.insert(post(relay.ingest, n + 1 + k).await.unwrap());
    }
    all_delivered(&rx, &acknowledged, "every acknowledged event").await;
    assert_eq!(relay.pid(), pid, "the relay was not restarted");
    assert!(
        store.join("hookrelay.reserve").exists(),
        "the reserve is back"
    );

    // The log says each change once, not once per refused request (sled
    // adds its own lines when its write fails, once per tree).
    let log = relay.log();
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR hookrelay"))
        .count();
    eprintln!("{} acknowledged, {errors} ERROR lines", acknowledged.len());
    assert!(errors <= 6, "{errors} ERROR lines:\n{log}");
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_at_max_disk_bytes_takes_events_again_once_retention_made_room() {
    const LIMIT: u64 = 8 << 20;
    let rx = Receiver::ok().await;
    let mut relay = Binary::new();
    let store = relay.dir().join("store");
    relay
        .start(|i, a| {
            config(
                i,
                a,
                &store,
                &rx,
                &format!("max_disk_bytes = {LIMIT}\nretention = \"2s\""),
            )
        })
        .await;
    let files = || common_dir_size(&store);
    let start_size = files();
    eprintln!("store files at start: {start_size} bytes; limit {LIMIT}");
    assert!(
        start_size < LIMIT / 2,
        "an empty store is {start_size} bytes"
    );

    // Fill it to the limit (bounded in count).
    let mut acknowledged = HashSet::new();
    let mut peak = 0;
    let mut full = false;
    for n in 0..20_000 {
        match post(relay.ingest, n).await {
            Ok(id) => {
                acknowledged.insert(id);
            }
            Err((503, code)) => {
                assert_eq!(code, "store_full");
                full = true;
                break;
            }
            Err(other) => panic!("{other:?}"),
        }
        if n % 50 == 0 {
            peak = peak.max(files());
        }
    }
    assert!(
        full,
        "{} events never filled {LIMIT} bytes",
        acknowledged.len()
    );
    let (status, why) = get_json(relay.admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        why["reason"].as_str().unwrap().contains("max_disk_bytes"),
        "{why}"
    );
    all_delivered(&rx, &acknowledged, "deliveries of the events taken").await;

    // Retention removes the delivered events; ingest resumes by itself.
    let filled = Instant::now();
    let first = eventually_async("a 202 after retention made room", async || {
        peak = peak.max(files());
        post(relay.ingest, 100_000).await.ok()
    })
    .await;
    eprintln!(
        "{} events filled the store; accepting again {:?} later",
        acknowledged.len(),
        filled.elapsed()
    );
    acknowledged.insert(first);
    // And it goes on taking events, within the limit.
    for n in 0..500 {
        match post(relay.ingest, 200_000 + n).await {
            Ok(id) => {
                acknowledged.insert(id);
            }
            Err((503, _)) => break,
            Err(other) => panic!("{other:?}"),
        }
        peak = peak.max(files());
    }
    peak = peak.max(files());
    eprintln!(
        "largest store seen: {peak} bytes ({:.2} of the limit)",
        peak as f64 / LIMIT as f64
    );
    assert!(
        peak <= LIMIT + LIMIT / 10,
        "the store reached {peak} bytes, over {LIMIT} by more than a tenth"
    );
    all_delivered(&rx, &acknowledged, "every acknowledged event").await;
}

/// The store's files, as the relay counts them (the reserve aside).
fn common_dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name() != "hookrelay.reserve")
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => common_dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

//! Hostile clients: slowloris, silent connections, oversized and too many
//! headers, connection floods, garbage bytes, truncated bodies, idle
//! connections from sources outside the allowlists. Throughout,
//! well-formed clients keep being served and the relay's memory stays
//! bounded.
//!
//! One test in its own binary, so the RSS it reads from /proc/self/status
//! is the relay's and this test's alone.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Writes `bytes` and reads what comes back until the relay closes the
/// connection; the answer's status code, if it sent one.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The relay may close before everything is written.
    let _ = tcp.write_all(bytes).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut got))
        .await
        .expect("the relay answers or closes");
    status_of(&got)
}

fn status_of(got: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(got.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

/// Waits until the relay closes `tcp`; how long that took.
async fn closed_within(mut tcp: TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the relay kept a hostile connection open"),
        }
    }
}

async fn well_formed_client_is_served(addr: SocketAddr) {
    let r = tokio::time::timeout(DEADLINE, post_json(addr, "/t/new_order", "{}"))
        .await
        .expect("a well-formed client is served in time");
    assert_eq!(r.status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_stop_service_or_grow_memory() {
    let rx = Receiver::ok().await;
    let app = spawn_app(&format!(
        "ingest.header_read_timeout = \"500ms\"\n\
         ingest.body_read_timeout = \"500ms\"\n\
         ingest.idle_timeout = \"1s\"\n\
         ingest.max_connections = 32\n\
         ingest.max_body_bytes = 65536\n\
         ingest.rate = {{ per_second = 100000, burst = 100000 }}\n{}",
        one_route(&rx.url("/hook"), "")
    ))
    .await;
    let addr = app.addr;
    well_formed_client_is_served(addr).await;
    let baseline = rss_kib();

    for round in 0..3 {
        // Slowloris: headers trickled a byte at a time are cut off at the
        // header read timeout, however steadily they trickle.
        let mut trickle = Vec::new();
        for _ in 0..8 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            trickle.push(tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let writer = tokio::spawn(async move {
                    for b in b"POST /t/new_order HTTP/1.1\r\nhost: x\r\nx-slow: "
                        .iter()
                        .cycle()
                    {
                        if w.write_all(&[*b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
                let start = Instant::now();
                let mut buf = [0u8; 256];
                let until_closed = loop {
                    match tokio::time::timeout(DEADLINE, r.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break start.elapsed(),
                        Ok(Ok(_)) => {}
                        Err(_) => panic!("slowloris connection never closed"),
                    }
                };
                writer.abort();
                until_closed
            }));
        }
        // Silent connections: nothing sent at all.
        let mut silent = Vec::new();
        for _ in 0..8 {
            silent.push(tokio::spawn(closed_within(
                TcpStream::connect(addr).await.unwrap(),
            )));
        }
        well_formed_client_is_served(addr).await;

        // Oversized header block and too many header fields: 431.
        let big = format!(
            "POST /t/new_order HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        assert_eq!(
            exchange(addr, big.as_bytes()).await,
            Some(431),
            "round {round}"
        );
        let mut many = String::from("POST /t/new_order HTTP/1.1\r\nhost: x\r\n");
        for i in 0..200 {
            many.push_str(&format!("x-h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            exchange(addr, many.as_bytes()).await,
            Some(431),
            "round {round}"
        );

        // Garbage bytes: a 400 or a closed connection, never a hang.
        let mut garbage = Vec::with_capacity(32 * 1024);
        let mut x: u32 = 0x9e37_79b9 ^ round;
        for _ in 0..32 * 1024 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            garbage.push(x as u8);
        }
        let status = exchange(addr, &garbage).await;
        assert!(matches!(status, None | Some(400)), "{status:?}");
        let status = exchange(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").await;
        assert!(matches!(status, None | Some(400)), "{status:?}");

        // Truncated body, connection held open: 408 at the body timeout.
        let status = exchange_holding(
            addr,
            b"POST /t/new_order HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"a\":",
        )
        .await;
        assert_eq!(status, Some(408));
        // Truncated body, then the client closes: refused, nothing stored.
        let status = exchange_closing(
            addr,
            b"POST /t/new_order HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{",
        )
        .await;
        assert!(matches!(status, None | Some(400)), "{status:?}");
        // Declared body over the limit: 413 before reading it.
        let status = exchange(
            addr,
            b"POST /t/new_order HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n",
        )
        .await;
        assert_eq!(status, Some(413));

        // A flood past max_connections: the extra ones wait, the silent ones
        // are closed at the header timeout, and service resumes.
        let mut flood = Vec::new();
        for _ in 0..96 {
            flood.push(TcpStream::connect(addr).await.unwrap());
        }
        well_formed_client_is_served(addr).await;
        drop(flood);

        for t in trickle {
            let took = t.await.unwrap();
            assert!(took < Duration::from_secs(5), "slowloris lasted {took:?}");
        }
        for t in silent {
            let took = t.await.unwrap();
            assert!(
                took < Duration::from_secs(5),
                "silent connection lasted {took:?}"
            );
        }
        well_formed_client_is_served(addr).await;
    }

    // Only the well-formed events were stored: 1 + 3 rounds of 3.
    rx.wait_for(10).await;
    let grown = rss_kib().saturating_sub(baseline);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}

/// Like `exchange`, but closes the write side after sending.
async fn exchange_closing(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut got))
        .await
        .expect("the relay answers or closes");
    status_of(&got)
}

/// Like `exchange`, but keeps the write side open after sending.
async fn exchange_holding(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut got = vec![0u8; 1024];
    let n = tokio::time::timeout(DEADLINE, tcp.read(&mut got))
        .await
        .expect("an answer before the deadline")
        .unwrap_or(0);
    status_of(&got[..n])
}

/// A flood of refused requests is answered and counted, but only the first
/// couple of hundred (then 20 a second) are written to the inbound log, so
/// it cannot fill the disk.
#[tokio::test]
async fn a_flood_of_refused_requests_is_recorded_at_a_bounded_rate() {
    let app = spawn_app("[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n").await;
    const FLOOD: usize = 400;
    let started = Instant::now();
    for _ in 0..FLOOD {
        assert_eq!(post_json(app.addr, "/nowhere", "{}").await.status, 404);
    }
    let secs = started.elapsed().as_secs() as usize + 1;
    let log = admin(&app, "GET", "/api/events?outcome=rejected&limit=1000", None)
        .await
        .json();
    let recorded = log["events"].as_array().unwrap().len();
    assert!(recorded >= 200, "the burst is recorded: {recorded}");
    assert!(
        recorded <= 200 + 20 * secs && recorded < FLOOD,
        "{recorded} of {FLOOD} refusals recorded in {secs} s"
    );
}

/// Connections from outside `ingest.allow` and `admin.allow` get their 403
/// without taking a connection slot: however many a refused source holds
/// open, an allowed client finds a free one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sources_hold_no_connection_slot() {
    const SLOTS: usize = 8;
    // Well under the header read timeout, which is how long a refused but
    // idle connection would keep its slot if it got one.
    const PROMPT: Duration = Duration::from_secs(3);
    let rx = Receiver::ok().await;
    let app = spawn_app(&format!(
        "ingest.allow = [\"127.0.0.1/32\"]\n\
         admin.allow = [\"127.0.0.1/32\"]\n\
         ingest.max_connections = {SLOTS}\n\
         ingest.header_read_timeout = \"15s\"\n{}",
        one_route(&rx.url("/hook"), "")
    ))
    .await;
    let refused: IpAddr = "127.0.0.2".parse().unwrap();
    for (listener, path, expected) in [
        (app.addr, "/t/new_order", 202),
        (app.relay.admin_addrs()[0], "/healthz", 200),
    ] {
        let mut idle = Vec::new();
        for _ in 0..3 * SLOTS {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(refused, 0)).unwrap();
            idle.push(socket.connect(listener).await.expect("the kernel accepts"));
        }
        let start = Instant::now();
        let method = if expected == 202 { "POST" } else { "GET" };
        let r = tokio::time::timeout(PROMPT, send(listener, None, method, path, &[], "{}"))
            .await
            .unwrap_or_else(|_| panic!("{path}: an allowed client waited past {PROMPT:?}"));
        assert_eq!(r.status, expected, "{path}");
        assert!(start.elapsed() < PROMPT);
        for mut tcp in idle {
            let mut got = Vec::new();
            tokio::time::timeout(PROMPT, tcp.read_to_end(&mut got))
                .await
                .unwrap_or_else(|_| panic!("{path}: a refused connection was left open"))
                .expect("closed, not reset");
            let got = String::from_utf8_lossy(&got);
            assert!(got.starts_with("HTTP/1.1 403 "), "{path}: {got}");
            assert!(got.contains("source_not_allowed"), "{path}: {got}");
        }
    }
}

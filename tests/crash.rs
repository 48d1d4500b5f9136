//! Crash safety of the real binary: every event answered 202 survives
//! `kill -9` and is delivered after a restart (at least once, none missing).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

use common::binary::Binary;
use common::*;

/// Posting tasks per round, and posts each makes at most.
const TASKS: usize = 4;
const POSTS_PER_TASK: usize = 200;
/// Rounds of start, post, kill on the same store.
const ROUNDS: usize = 3;
/// How many 202s each round sees before the kill.
const KILL_AFTER: [usize; ROUNDS] = [100, 150, 60];
/// The longest one post may take before the posting task gives up.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// The relay's config for this test, on `port`, with the store in `dir`.
/// Ingest and delivery rates are raised so neither limits this test: every
/// post must get 202 and deliveries must drain quickly. No admin listener.
fn config(port: u16, dir: &std::path::Path, receiver_url: &str) -> String {
    format!(
        "log.level = \"info\"\n\
         ingest.listen = [\"127.0.0.1:{port}\"]\n\
         ingest.rate = {{ per_second = 100000, burst = 100000 }}\n\
         admin.listen = []\n\
         egress.allow = [\"127.0.0.0/8\"]\n\
         store.path = {:?}\n\
         delivery.backoff = {{ initial = \"20ms\", max = \"200ms\", multiplier = 2.0, jitter = 0.0 }}\n\
         delivery.timeout = \"2s\"\n\
         delivery.shutdown_grace = \"2s\"\n\
         delivery.max_attempts = 1000\n\
         delivery.rate = {{ per_second = 100000, burst = 100000 }}\n\
         {}",
        dir.join("store").display().to_string(),
        one_route(receiver_url, ""),
    )
}

/// One POST over a new connection; errors are returned, not panicked on,
/// since connections break when the relay is killed.
async fn try_post(addr: SocketAddr, path: &str, body: Bytes) -> Result<(u16, Bytes), String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = Request::post(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(POST_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer within {POST_TIMEOUT:?}"))?
}

/// What one round of posting saw.
#[derive(Default)]
struct Round {
    /// Event id → the body that was posted for it.
    accepted: Mutex<HashMap<String, Bytes>>,
    accepted_count: AtomicUsize,
    /// Set just before the kill; errors before it are failures.
    killed: AtomicBool,
    /// Anything but a 202 with an id, or an error before the kill.
    unexpected: Mutex<Vec<String>>,
    /// Errors after the kill (expected).
    cut_off: AtomicUsize,
}

async fn post_stream(addr: SocketAddr, round: usize, task: usize, state: Arc<Round>) {
    for seq in 0..POSTS_PER_TASK {
        let body = Bytes::from(format!(
            "{{\"round\":{round},\"task\":{task},\"seq\":{seq},\"pad\":\"{}\"}}",
            "x".repeat(64 + seq % 128)
        ));
        match try_post(addr, "/t/crash", body.clone()).await {
            Ok((202, reply)) => {
                let json: serde_json::Value = match serde_json::from_slice(&reply) {
                    Ok(v) => v,
                    Err(e) => {
                        state
                            .unexpected
                            .lock()
                            .unwrap()
                            .push(format!("202 with a body that is not JSON ({e}): {reply:?}"));
                        continue;
                    }
                };
                let (Some(id), Some(1)) = (json["id"].as_str(), json["deliveries"].as_u64()) else {
                    state
                        .unexpected
                        .lock()
                        .unwrap()
                        .push(format!("202 without an id and 1 delivery: {json}"));
                    continue;
                };
                state.accepted.lock().unwrap().insert(id.to_string(), body);
                state.accepted_count.fetch_add(1, Ordering::SeqCst);
            }
            Ok((status, reply)) => {
                state
                    .unexpected
                    .lock()
                    .unwrap()
                    .push(format!("status {status}: {reply:?}"));
            }
            Err(e) => {
                if state.killed.load(Ordering::SeqCst) {
                    state.cut_off.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                state
                    .unexpected
                    .lock()
                    .unwrap()
                    .push(format!("error before the kill: {e}"));
                return;
            }
        }
    }
}

/// Waits until the receiver has seen a `webhook-id` for every id of
/// `expected`, checking each body against what was posted. Returns how many
/// requests it saw in all (duplicates included).
async fn wait_delivered(rx: &Receiver, expected: &HashMap<String, Bytes>, what: &str) -> usize {
    let start = Instant::now();
    loop {
        let got = rx.received();
        let mut seen = HashSet::new();
        for r in &got {
            let id = r
                .headers
                .get("webhook-id")
                .expect("every delivery has webhook-id")
                .to_str()
                .unwrap()
                .to_string();
            match expected.get(&id) {
                Some(body) => assert_eq!(&r.body, body, "body of {id} changed on the way"),
                None => {
                    // An id never acknowledged (cut off by the kill after its
                    // commit) may still be delivered; it must be one of ours.
                    assert!(id.starts_with("evt_"), "delivery with a foreign id {id:?}");
                }
            }
            assert!(
                verify_signature(SECRET, &r.headers, &r.body),
                "bad signature on {id}"
            );
            seen.insert(id);
        }
        let missing: Vec<&String> = expected.keys().filter(|id| !seen.contains(*id)).collect();
        if missing.is_empty() {
            return got.len();
        }
        if start.elapsed() >= DEADLINE {
            panic!(
                "{what}: {} of {} acknowledged events never reached the receiver \
                 (it got {} requests), e.g. {:?}",
                missing.len(),
                expected.len(),
                got.len(),
                &missing[..missing.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_kill_9_and_restart() {
    let test_start = Instant::now();
    let rx = Receiver::ok().await;
    let mut relay = Binary::new();
    let dir = relay.dir().to_path_buf();
    let url = rx.url("/hook");
    let start_relay = |port: u16, _admin: u16| config(port, &dir, &url);
    // Every id answered 202 over all rounds, with its body.
    let mut acknowledged: HashMap<String, Bytes> = HashMap::new();

    for (round, &kill_after) in KILL_AFTER.iter().enumerate() {
        let addr = relay.start(start_relay).await;
        // What earlier rounds acknowledged must come through after the restart.
        if !acknowledged.is_empty() {
            wait_delivered(&rx, &acknowledged, &format!("after restart {round}")).await;
        }

        let state = Arc::new(Round::default());
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| tokio::spawn(post_stream(addr, round, task, state.clone())))
            .collect();
        // Kill once enough 202s have been seen (or all posting stopped).
        let start = Instant::now();
        while state.accepted_count.load(Ordering::SeqCst) < kill_after
            && !tasks.iter().all(|t| t.is_finished())
        {
            assert!(
                start.elapsed() < DEADLINE,
                "round {round}: only {} 202s within {DEADLINE:?}",
                state.accepted_count.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        state.killed.store(true, Ordering::SeqCst);
        relay.kill();
        for t in tasks {
            t.await.expect("posting task");
        }

        let unexpected = state.unexpected.lock().unwrap().clone();
        assert!(
            unexpected.is_empty(),
            "round {round}: unexpected replies before the kill: {unexpected:?}"
        );
        let accepted = std::mem::take(&mut *state.accepted.lock().unwrap());
        assert!(
            accepted.len() >= kill_after,
            "round {round}: only {} 202s before the kill",
            accepted.len()
        );
        assert!(
            accepted.len() < TASKS * POSTS_PER_TASK,
            "round {round}: every post finished before the kill, so nothing was cut off"
        );
        eprintln!(
            "round {round}: {} acknowledged, {} posts cut off by the kill, receiver has {} requests",
            accepted.len(),
            state.cut_off.load(Ordering::Relaxed),
            rx.received().len()
        );
        let before = acknowledged.len();
        acknowledged.extend(accepted);
        assert_eq!(
            acknowledged.len(),
            before + state.accepted_count.load(Ordering::SeqCst),
            "round {round}: an event id was handed out twice"
        );
    }

    // One last start on the same store delivers whatever the last kill left.
    relay.start(start_relay).await;
    let requests = wait_delivered(&rx, &acknowledged, "after the final restart").await;
    eprintln!(
        "all {} acknowledged events delivered ({} requests in all) in {:?}",
        acknowledged.len(),
        requests,
        test_start.elapsed()
    );
    assert!(dir.join("store").exists());
}

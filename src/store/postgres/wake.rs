//! How a relay learns of work it did not create: notifications, and a
//! poll as the backstop.
//!
//! Committed work due now is announced on the schema's channel with
//! `NOTIFY` (`<relay>:<target>`, or `<relay>:*` for many targets); the
//! listener wakes this relay's scheduler for the target, or the poller
//! for `*`. A relay ignores its own notifications: it woke itself when it
//! committed. Notifications can be lost (the listener reconnecting, a
//! pooler that cannot LISTEN), and retries another relay scheduled are
//! never announced, so the poller also looks every `poll_interval` for
//! targets with work due and for lapsed leases. How often a relay tells
//! the fleet of one target's new work is bounded here too ([`tell`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Object;

use tokio_postgres::AsyncMessage;

use super::{claims, db_error, Cached, Inner};
use crate::store::{now_ms, StoreError};

/// A target's new work is told to the fleet at most once in this long
/// (the relay that accepted it claims it at once, and a relay told once
/// looks at all of the target's due work when it claims); what came in the
/// meantime is told when the time is up.
const NOTIFY_EVERY: Duration = Duration::from_millis(50);
/// Targets whose last notice is remembered, at most (older ones are
/// forgotten first).
const TOLD_TARGETS: usize = 10_000;
/// The longest wait between two attempts to connect the listener.
const MAX_RECONNECT: Duration = Duration::from_secs(5);

/// Looks for due work every `poll_interval`, or at once when asked.
pub(super) async fn poll(inner: Arc<Inner>) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.config.poll_interval) => {}
            _ = inner.poll_now.notified() => {}
        }
        if inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let round = async {
            endpoints_generation(&inner).await?;
            claims::reap(&inner).await?;
            let now = now_ms();
            let due: Vec<String> = claims::pending_targets(&inner)
                .await?
                .into_iter()
                .filter(|(_, at)| *at <= now)
                .map(|(t, _)| t)
                .collect();
            inner.wake(&due);
            Ok::<_, StoreError>(())
        }
        .await;
        match round {
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "cannot look for due work in the store; trying again");
            }
            Ok(()) if failing => {
                failing = false;
                tracing::warn!("looking for due work in the store again");
            }
            _ => {}
        }
    }
}

/// Keeps a connection listening on the schema's channel, and connects it
/// again whenever it drops.
pub(super) async fn listen(inner: Arc<Inner>) {
    let mut wait = Duration::from_millis(100);
    let mut failing = false;
    // The first time, the scheduler has just looked at every target; after
    // a reconnect, something may have been announced unheard.
    let mut catch_up = false;
    loop {
        let result = listen_once(&inner, catch_up).await;
        catch_up = true;
        match result {
            Ok(()) => wait = Duration::from_millis(100),
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "not listening for the fleet's notifications; polling meanwhile");
                }
                failing = true;
            }
        }
        if inner.closed.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_RECONNECT);
    }
}

/// One listening connection, until it fails.
async fn listen_once(inner: &Inner, catch_up: bool) -> Result<(), StoreError> {
    let config = super::connect_config(&inner.config)?;
    let (client, mut connection) = config
        .connect(inner.tls.clone())
        .await
        .map_err(|e| db_error(&e))?;
    let listen_sql = format!("LISTEN {}", inner.channel);
    let mut listening = std::pin::pin!(client.batch_execute(&listen_sql));
    let mut started = false;
    loop {
        tokio::select! {
            r = &mut listening, if !started => {
                r.map_err(|e| db_error(&e))?;
                started = true;
                tracing::info!(channel = %inner.channel, "listening for the fleet's notifications");
                if catch_up {
                    // Whatever was announced while not listening.
                    inner.poll_now.notify_one();
                }
            }
            m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                Some(Ok(AsyncMessage::Notification(n))) => heard(inner, n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(db_error(&e)),
                None => return Ok(()),
            }
        }
    }
}

/// A notification's payload: `<relay>:<target>` or `<relay>:*`.
fn heard(inner: &Inner, payload: &str) {
    let Some((from, target)) = payload.split_once(':') else {
        return;
    };
    if from.parse::<i64>().ok() == Some(inner.instance) {
        return;
    }
    if target == "*" {
        inner.poll_now.notify_one();
    } else if target == super::ENDPOINTS {
        inner.endpoints_changed.notify_one();
    } else {
        inner.wake([&target.to_string()]);
    }
}

/// Wakes `endpoints_changed` when the endpoints' generation moved past
/// what this relay has seen: a change whose notification was missed.
async fn endpoints_generation(inner: &Inner) -> Result<(), StoreError> {
    let c = inner.client().await?;
    let row = c
        .row_opt(
            "SELECT value FROM generations WHERE name = 'endpoints'",
            &[],
        )
        .await
        .map_err(|e| inner.db(e))?;
    let Some(row) = row else {
        return Ok(());
    };
    let generation: i64 = super::col(&row, 0, "generations")?;
    if inner
        .endpoints_seen
        .fetch_max(generation, Ordering::Relaxed)
        < generation
    {
        inner.endpoints_changed.notify_one();
    }
    Ok(())
}

// === telling the fleet ===

/// What the fleet was told of: when each target's new work was last
/// named, and the targets a notice left untold because one had named them
/// within [`NOTIFY_EVERY`] (one notice names those once the time is up).
#[derive(Default)]
pub(super) struct Told {
    at: HashMap<String, Instant>,
    owed: HashSet<String>,
    /// A notice of what is owed is on its way.
    settling: bool,
}

/// Tells the fleet of the new work of `woken` (after its commit): at
/// once for the targets not named in the last [`NOTIFY_EVERY`], and once
/// that time is up for the others.
pub(super) fn tell(inner: &Arc<Inner>, client: Object, woken: &[&String]) {
    let now = Instant::now();
    let (now_told, settle) = {
        let mut told = inner.told.lock().expect("lock poisoned");
        if told.at.len() > TOLD_TARGETS {
            told.at
                .retain(|_, at| now.duration_since(*at) < NOTIFY_EVERY);
        }
        let mut now_told = Vec::new();
        for t in woken {
            match told.at.get(t.as_str()) {
                Some(at) if now.duration_since(*at) < NOTIFY_EVERY => {
                    told.owed.insert(t.to_string());
                }
                _ => {
                    told.at.insert(t.to_string(), now);
                    now_told.push(t.to_string());
                }
            }
        }
        let settle = !told.owed.is_empty() && !told.settling;
        told.settling |= settle;
        (now_told, settle)
    };
    if !now_told.is_empty() {
        let inner = inner.clone();
        tokio::spawn(async move { inner.notify(&client, &now_told).await });
    }
    if settle {
        let inner = inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(NOTIFY_EVERY).await;
            let owed: Vec<String> = {
                let mut told = inner.told.lock().expect("lock poisoned");
                told.settling = false;
                let owed: Vec<String> = told.owed.drain().collect();
                let now = Instant::now();
                for t in &owed {
                    told.at.insert(t.clone(), now);
                }
                owed
            };
            if let Ok(client) = inner.client().await {
                inner.notify(&client, &owed).await;
            }
        });
    }
}

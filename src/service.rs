//! Life under a service manager (systemd): readiness and stopping
//! notifications, the watchdog, and sockets passed by socket activation.
//!
//! Everything here is a no-op when the matching environment variables
//! (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `LISTEN_FDS`) are absent, so the same
//! binary runs by hand, under systemd, and in tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::shutdown::stopped;
use crate::store::{self, Store};

/// How long the dispatcher gets to show it is alive when poked.
const HEARTBEAT_WAIT: Duration = Duration::from_secs(2);

/// Tells the service manager the relay is ready (store open, listeners bound).
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Tells the service manager the relay is stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Tells the service manager a reload is under way, then done.
pub fn notify_reloading(done: bool) {
    let state = if done {
        NotifyState::Ready
    } else {
        NotifyState::Reloading
    };
    let _ = sd_notify::notify(&[state]);
}

/// Half the watchdog period the service manager asked for, if it asked.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// The dispatcher's sign of life: its scheduler loop counts its passes,
/// and can be poked to make one.
#[derive(Clone)]
pub struct Heartbeat {
    pub passes: Arc<AtomicU64>,
    pub poke: Arc<Notify>,
}

impl Heartbeat {
    /// Pokes the scheduler and waits for it to complete a pass.
    async fn alive(&self) -> bool {
        let before = self.passes.load(Ordering::Relaxed);
        self.poke.notify_one();
        let deadline = tokio::time::Instant::now() + HEARTBEAT_WAIT;
        while tokio::time::Instant::now() < deadline {
            if self.passes.load(Ordering::Relaxed) != before {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

/// Sends `WATCHDOG=1` every `every` while the store's checks keep running
/// and the dispatcher answers; stays silent otherwise, so the service
/// manager restarts a relay that hangs. A store that refuses events (a full
/// disk) is not hung: it heals without a restart, and deliveries go on.
pub async fn watchdog(
    every: Duration,
    store: Arc<dyn Store>,
    heartbeat: Heartbeat,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut shutdown) => return,
        }
        let checked = store.health().checked_at_ms;
        let stale = store::now_ms().saturating_sub(checked);
        if stale > 3 * every.as_millis() as u64 + 3000 {
            tracing::error!(
                last_check_ms_ago = stale,
                "watchdog: the store's checks have stopped"
            );
            continue;
        }
        if !heartbeat.alive().await {
            tracing::error!("watchdog: the dispatcher does not answer");
            continue;
        }
        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
    }
}

/// TCP listening sockets passed by socket activation (`LISTEN_FDS`), in
/// order; empty when none were passed.
pub fn activated_listeners() -> std::io::Result<Vec<TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::new();
    for i in 0..fds.len() {
        if let Some(l) = fds.take_tcp_listener(i)? {
            l.set_nonblocking(true)?;
            out.push(TcpListener::from_std(l)?);
        }
    }
    Ok(out)
}

//! Outbound connections as one bounded resource, shared by every endpoint.
//!
//! One hyper client pool per connect timeout (almost always one), keyed by
//! origin (scheme, host, port; the source address is `egress.bind` for
//! all), so endpoints that send to the same receiver share its connections.
//! The [`Budget`] bounds them all:
//!
//! - At most `max_connections` outbound connections are open at once: each
//!   one holds a permit for as long as its socket lives.
//! - At most `max_connections` requests are under way at once, and at most
//!   `max_connections_per_origin` to one origin. A request takes its slot
//!   *before* its timeout starts, so a full pool makes attempts wait; it
//!   never fails them.
//! - There are never more requests than connection permits, so when a new
//!   connection finds every permit taken, some connection is idle: the one
//!   idle longest is closed to make room (`evict_idle`), and the wait is
//!   short.
//! - Idle connections are closed after `idle_timeout` (the pool's timer).
//!
//! The budget is fitted under the process's file descriptor limit at start,
//! keeping a reserve for the listeners' connections and the store's files,
//! so no number of endpoints or receivers can take descriptors from them.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::deliver::egress::EgressError;

/// Descriptors kept for the store's files, logs, the tokens file and the
/// like, beside the listeners' own connections.
pub const FD_RESERVE: u64 = 256;
/// The smallest budget the relay runs with, whatever the limit.
const MIN_CONNECTIONS: usize = 8;
/// How often a connect that found the budget spent looks again for an
/// idle connection to close.
const EVICT_AGAIN: Duration = Duration::from_millis(50);
/// Past this many origins, those with no request under way are forgotten.
const ORIGINS_KEPT: usize = 1024;

/// `[egress]`'s connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most outbound connections open at once, over all receivers.
    pub max_connections: usize,
    /// Most requests under way at once to one origin (scheme, host, port).
    pub max_connections_per_origin: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 4096,
            max_connections_per_origin: 256,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Raises the soft limit on open files to the hard one (systemd's
/// `LimitNOFILE` sets both; a shell often keeps the soft one low) and
/// returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(current) = limit.current else {
        return u64::MAX;
    };
    let max = limit.maximum.unwrap_or(u64::MAX);
    if max > current
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )
        .is_ok()
    {
        return max;
    }
    current
}

// === impl Budget ===

const BUSY: u8 = 0;
const IDLE: u8 = 1;
const EVICTED: u8 = 2;

/// What the budget knows of one open connection.
pub struct ConnState {
    state: AtomicU8,
    /// When it last became idle (a counter, not a clock: only the order matters).
    idle_since: AtomicU64,
    /// Who to wake when it is evicted: the read hyper keeps pending on it.
    reader: Mutex<Option<Waker>>,
}

impl ConnState {
    /// The response to the request it carried has been read in full.
    pub(super) fn idle(&self, tick: u64) {
        self.idle_since.store(tick, Ordering::Relaxed);
        let _ = self
            .state
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// A connection's entry in the response's extensions, so the client can
/// tell the budget when the connection is idle again.
#[derive(Clone)]
pub(super) struct ConnHandle(pub(super) Arc<ConnState>);

/// The bounds on outbound connections and requests; shared by every client
/// pool for the life of the relay.
pub struct Budget {
    settings: PoolSettings,
    connections: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    origins: Mutex<HashMap<String, Arc<Semaphore>>>,
    open: Mutex<Vec<Weak<ConnState>>>,
    ticks: AtomicU64,
}

impl Budget {
    /// A budget of `settings`, lowered (with a warning in the answer) to
    /// fit the process's descriptor limit less what the listeners may hold
    /// (`listener_fds`) and [`FD_RESERVE`]. `nofile`: the soft limit.
    pub fn new(settings: PoolSettings, nofile: u64, listener_fds: u64) -> (Budget, Option<String>) {
        let room = nofile.saturating_sub(listener_fds + FD_RESERVE);
        let fitted = (settings.max_connections as u64).min(room) as usize;
        let fitted = fitted.max(MIN_CONNECTIONS);
        let warning = (fitted < settings.max_connections).then(|| {
            format!(
                "egress.max_connections lowered from {} to {fitted}: the file descriptor limit is {nofile}, and {listener_fds} are kept for the listeners and {FD_RESERVE} for the store",
                settings.max_connections
            )
        });
        let settings = PoolSettings {
            max_connections: fitted,
            max_connections_per_origin: settings.max_connections_per_origin.min(fitted),
            ..settings
        };
        let budget = Budget {
            settings,
            connections: Arc::new(Semaphore::new(fitted)),
            requests: Arc::new(Semaphore::new(fitted)),
            origins: Mutex::new(HashMap::new()),
            open: Mutex::new(Vec::new()),
            ticks: AtomicU64::new(0),
        };
        (budget, warning)
    }

    /// The settings in force (after fitting under the descriptor limit).
    pub fn settings(&self) -> PoolSettings {
        self.settings
    }

    /// How many outbound connections are open now.
    pub fn open_connections(&self) -> usize {
        self.settings.max_connections - self.connections.available_permits()
    }

    /// How many requests are under way now.
    pub fn requests_under_way(&self) -> usize {
        self.settings.max_connections - self.requests.available_permits()
    }

    pub(super) fn tick(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::Relaxed)
    }

    /// Waits for a request slot to `origin` and one overall.
    pub(super) async fn request_slot(&self, origin: &str) -> Result<RequestSlot, EgressError> {
        let per_origin = {
            let mut origins = self.origins.lock().expect("lock poisoned");
            if origins.len() > ORIGINS_KEPT {
                // Only the map holds those with nothing under way.
                origins.retain(|_, s| Arc::strong_count(s) > 1);
            }
            origins
                .entry(origin.to_string())
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(self.settings.max_connections_per_origin))
                })
                .clone()
        };
        let closed = |_| EgressError::Http("the connection pool is closed".into());
        let origin = per_origin.acquire_owned().await.map_err(closed)?;
        let any = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .map_err(closed)?;
        Ok(RequestSlot {
            _origin: origin,
            _any: any,
        })
    }

    /// A permit for one more open connection: at once if the budget has
    /// room, else after closing the connection idle longest.
    pub(super) async fn connection(
        &self,
    ) -> Result<(OwnedSemaphorePermit, Arc<ConnState>), EgressError> {
        let permit = loop {
            if let Ok(p) = self.connections.clone().try_acquire_owned() {
                break p;
            }
            self.evict_idle();
            tokio::select! {
                p = self.connections.clone().acquire_owned() => {
                    break p.map_err(|_| EgressError::Http("the connection pool is closed".into()))?;
                }
                _ = tokio::time::sleep(EVICT_AGAIN) => {}
            }
        };
        let conn = Arc::new(ConnState {
            state: AtomicU8::new(BUSY),
            idle_since: AtomicU64::new(0),
            reader: Mutex::new(None),
        });
        let mut open = self.open.lock().expect("lock poisoned");
        if open.len() >= 2 * self.settings.max_connections {
            open.retain(|c| c.strong_count() > 0);
        }
        open.push(Arc::downgrade(&conn));
        Ok((permit, conn))
    }

    /// Closes the connection that has been idle longest; whether there was one.
    fn evict_idle(&self) -> bool {
        let mut open = self.open.lock().expect("lock poisoned");
        open.retain(|c| c.strong_count() > 0);
        let oldest = open
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.state.load(Ordering::Acquire) == IDLE)
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        let Some(conn) = oldest else {
            return false;
        };
        if conn
            .state
            .compare_exchange(IDLE, EVICTED, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Taken for a request just now; the next round finds another.
            return false;
        }
        if let Some(w) = conn.reader.lock().expect("lock poisoned").take() {
            w.wake();
        }
        true
    }
}

/// A request's place in the budget, held until its response is read.
pub struct RequestSlot {
    _origin: OwnedSemaphorePermit,
    _any: OwnedSemaphorePermit,
}

/// A connection's socket with its place in the budget. Once evicted it
/// reads as closed, so hyper drops it and the permit with it.
pub struct Budgeted<S> {
    io: S,
    conn: Arc<ConnState>,
    _permit: OwnedSemaphorePermit,
}

impl<S> Budgeted<S> {
    pub(super) fn new(io: S, permit: OwnedSemaphorePermit, conn: Arc<ConnState>) -> Budgeted<S> {
        Budgeted {
            io,
            conn,
            _permit: permit,
        }
    }

    pub(super) fn handle(&self) -> ConnHandle {
        ConnHandle(self.conn.clone())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.state.load(Ordering::Acquire) == EVICTED {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if polled.is_pending() {
            let mut reader = this.conn.reader.lock().expect("lock poisoned");
            if !reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *reader = Some(cx.waker().clone());
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !buf.is_empty() {
            // A request starts on it: busy, unless it was just evicted.
            let _ =
                this.conn
                    .state
                    .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Relaxed);
            if this.conn.state.load(Ordering::Acquire) == EVICTED {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "connection closed to stay within egress.max_connections",
                )));
            }
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The origin a request goes to, as the pool keys it.
pub(super) fn origin_of(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!("{scheme}://{}:{port}", uri.host().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_fits_under_the_descriptor_limit() {
        let settings = PoolSettings::default();
        let (b, warning) = Budget::new(settings, 16384, 2048);
        assert_eq!(b.settings().max_connections, 4096);
        assert!(warning.is_none());
        let (b, warning) = Budget::new(settings, 1024, 512);
        assert_eq!(
            b.settings().max_connections,
            1024 - 512 - FD_RESERVE as usize
        );
        assert!(warning.unwrap().contains("lowered from 4096 to 256"));
        let (b, _) = Budget::new(settings, 100, 512);
        assert_eq!(b.settings().max_connections, MIN_CONNECTIONS);
        assert_eq!(b.settings().max_connections_per_origin, MIN_CONNECTIONS);
    }

    #[test]
    fn origins_name_scheme_host_and_port() {
        let o = |s: &str| origin_of(&s.parse().unwrap());
        assert_eq!(
            o("https://hooks.example.com/a?b"),
            "https://hooks.example.com:443"
        );
        assert_eq!(o("http://127.0.0.1:8080/x"), "http://127.0.0.1:8080");
        assert_eq!(o("http://[::1]/x"), "http://[::1]:80");
    }
}

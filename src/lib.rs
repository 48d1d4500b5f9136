//! hookrelay: a durable webhook relay for learning platforms.
//!
//! The LMS posts its webhooks to hookrelay; hookrelay stores each one durably,
//! answers 202, and delivers it to every matching receiver, signed, rate
//! limited, retried with backoff, and dead-lettered when it gives up.
//!
//! Layout (data flows one way: ingest → store → dispatch → egress):
//! - [`config`]: the TOML file, parsed into checked types.
//! - [`route`]: path patterns, value templates, event patterns.
//! - [`listener`]: serving HTTP with connection, header and time limits,
//!   optional TLS, and graceful shutdown.
//! - [`tls`]: listener certificates, client-certificate auth, SIGHUP reload.
//! - [`ingest`]: the LMS-facing listener: guard, route, store, 202.
//! - [`tunnel`]: proxy-mode `CONNECT` tunnels through the egress guard.
//! - [`store`]: sled trees, transactions, group commit.
//! - [`dispatch`]: the scheduler and per-target lanes.
//! - [`egress`]: the outbound client, its connector and the egress guard.
//! - [`sign`]: Standard Webhooks signatures.
//!
//! [`Relay::start`] wires them together; `main.rs` only parses the command line.

#![forbid(unsafe_code)]

pub mod config;
pub mod dispatch;
pub mod egress;
pub mod ingest;
pub mod listener;
pub mod route;
pub mod sign;
pub mod store;
pub mod tls;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use config::Config;
use store::{Store, StoreError};

/// `user-agent` of every outbound request.
pub const USER_AGENT: &str = concat!("hookrelay/", env!("CARGO_PKG_VERSION"));

/// How often rate-limit state of idle sources is dropped.
const EVICT_EVERY: Duration = Duration::from_secs(60);
/// How often the store's size on disk is re-read.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often events past retention are removed, and how many are looked at
/// in one step (the janitor yields between steps).
const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_STEP: usize = 1000;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store at {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("egress: {0}")]
    Egress(String),
    #[error("ingest.tls: {0}")]
    Tls(#[from] tls::TlsError),
}

/// A running relay: its listeners, scheduler and store.
pub struct Relay {
    ingest_addrs: Vec<SocketAddr>,
    tls: Vec<Arc<tls::ReloadableTls>>,
    store: Arc<Store>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Opens the store, binds the listeners and starts the dispatcher.
    /// Listen addresses with port 0 get a free port; see [`Relay::ingest_addrs`].
    pub async fn start(config: Config) -> Result<Relay, StartError> {
        let store = Store::open(&config.store).map_err(|source| StartError::Store {
            path: config.store.path.display().to_string(),
            source,
        })?;
        let dispatcher =
            dispatch::Dispatcher::new(&config, store.clone()).map_err(StartError::Egress)?;
        let (shutdown, rx) = watch::channel(false);

        let mut listeners = Vec::new();
        for addr in &config.ingest.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
            listeners.push(l);
        }
        let ingest_addrs = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();

        let ingest_tls = match &config.ingest.tls {
            Some(files) => Some(Arc::new(tls::ReloadableTls::load(files)?)),
            None => None,
        };
        let ingest = Arc::new(ingest::Ingest::new(&config, store.clone()));
        let c = &config.ingest;
        let limits = listener::Limits {
            max_connections: c.max_connections,
            header_read_timeout: c.header_read_timeout,
            max_headers: c.max_headers,
            max_header_bytes: c.max_header_bytes,
            idle_timeout: c.idle_timeout,
            shutdown_grace: config.delivery.shutdown_grace,
        };
        let mut tasks = Vec::new();
        for l in listeners {
            let ingest = ingest.clone();
            let handler = move |req, peer| ingest.clone().handle(req, peer);
            tasks.push(tokio::spawn(listener::serve(
                l,
                handler,
                limits,
                ingest_tls.clone(),
                rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(dispatcher.run(rx.clone())));
        tasks.push(tokio::spawn(housekeeping(
            ingest,
            store.clone(),
            config.store.retention,
            rx,
        )));
        for addr in &ingest_addrs {
            tracing::info!(%addr, "ingest listening");
        }
        Ok(Relay {
            ingest_addrs,
            tls: ingest_tls.into_iter().collect(),
            store,
            shutdown,
            tasks,
        })
    }

    /// The bound ingest addresses, in `ingest.listen` order.
    pub fn ingest_addrs(&self) -> &[SocketAddr] {
        &self.ingest_addrs
    }

    /// Reads every listener's certificate files again (on SIGHUP). New
    /// connections use the new files; open ones keep theirs. A listener
    /// whose files fail to load keeps its current certificates; the errors
    /// are logged and returned.
    pub fn reload_tls(&self) -> Vec<tls::TlsError> {
        let mut errors = Vec::new();
        for t in &self.tls {
            match t.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; the current certificates stay in use");
                    errors.push(e);
                }
            }
        }
        errors
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops accepting, lets requests and attempts under way finish within
    /// the grace period, flushes the store, and returns.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.store.close()
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Periodic chores: forget idle rate-limit keys, re-read disk usage,
/// remove finished events past `store.retention`.
async fn housekeeping(
    ingest: Arc<ingest::Ingest>,
    store: Arc<Store>,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut evict = tokio::time::interval(EVICT_EVERY);
    let mut disk = tokio::time::interval(DISK_CHECK_EVERY);
    let mut purge = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            _ = evict.tick() => ingest.evict_idle_sources(),
            _ = disk.tick() => {
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || s.refresh_disk_usage()).await;
            }
            _ = purge.tick() => {
                let cutoff = store::now_ms().saturating_sub(retention.as_millis() as u64);
                loop {
                    let s = store.clone();
                    let step = tokio::task::spawn_blocking(move || s.purge(cutoff, PURGE_STEP)).await;
                    match step {
                        Ok(Ok(n)) if n > 0 => tracing::info!(events = n, "removed events past retention"),
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "retention cleanup failed");
                            break;
                        }
                        Err(_) => break,
                    }
                    if *shutdown.borrow() {
                        break;
                    }
                }
                let s = store.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.purge_dedup()).await {
                    tracing::error!(error = %e, "dedup cleanup failed");
                }
            }
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

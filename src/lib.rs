//! hookrelay: a durable webhook relay for learning platforms.
//!
//! The LMS posts its webhooks to hookrelay; hookrelay stores each one durably,
//! answers 202, and delivers it to every matching receiver, signed, rate
//! limited, retried with backoff, and dead-lettered when it gives up.
//!
//! Layout (data flows one way: ingest → store → dispatch → egress):
//! - [`config`]: the TOML file, parsed into checked types.
//! - [`route`]: path patterns, value templates, event patterns, filters.
//! - [`listener`]: serving HTTP with connection, header and time limits,
//!   optional TLS, and graceful shutdown.
//! - [`tls`]: listener certificates, client-certificate auth, SIGHUP reload.
//! - [`ingest`]: the LMS-facing listener: guard, route, store, 202.
//! - [`tunnel`]: proxy-mode `CONNECT` tunnels through the egress guard.
//! - [`store`]: sled trees, transactions, group commit.
//! - [`dispatch`]: the scheduler and per-target lanes.
//! - [`shape`]: a target's body: the original, XML, or a template's output.
//! - [`egress`]: the outbound client, its connector and the egress guard.
//! - [`sign`]: Standard Webhooks signatures.
//! - [`catalog`]: configured targets and subscriptions, with their lanes.
//! - [`admin`]: the admin API; [`client`]: the CLI's side of it.
//! - [`telemetry`]: metrics and logs; [`service`]: systemd integration.
//!
//! [`Relay::start`] wires them together; `main.rs` only parses the command line.

#![forbid(unsafe_code)]

pub mod admin;
pub mod catalog;
pub mod client;
pub mod config;
pub mod dispatch;
pub mod egress;
pub mod ingest;
pub mod listener;
pub mod route;
pub mod service;
pub mod shape;
pub mod sign;
pub mod store;
pub mod telemetry;
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
/// How often the store's size on disk is re-read and counters are saved.
const EVERY_SECOND: Duration = Duration::from_secs(1);
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
    #[error("sockets passed by the service manager: {0}")]
    Activation(std::io::Error),
    #[error("egress: {0}")]
    Egress(String),
    #[error("admin.tokens_file: {0}")]
    Tokens(String),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// A running relay: its listeners, scheduler and store.
pub struct Relay {
    ingest_addrs: Vec<SocketAddr>,
    admin_addrs: Vec<SocketAddr>,
    tls: Vec<Arc<tls::ReloadableTls>>,
    store: Arc<Store>,
    catalog: Arc<catalog::Catalog>,
    ingest: Arc<ingest::Ingest>,
    admin: Arc<admin::Admin>,
    metrics: Arc<telemetry::Metrics>,
    /// The configuration in force, to tell what a reload changes.
    config: std::sync::Mutex<Config>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Opens the store, binds the listeners (or takes the ones the service
    /// manager passed) and starts the dispatcher. Listen addresses with port
    /// 0 get a free port; see [`Relay::ingest_addrs`].
    pub async fn start(config: Config) -> Result<Relay, StartError> {
        let store = Store::open(&config.store).map_err(|source| StartError::Store {
            path: config.store.path.display().to_string(),
            source,
        })?;
        let metrics = telemetry::Metrics::new(&store);
        let catalog = catalog::Catalog::new(&config, store.clone()).map_err(StartError::Egress)?;
        let dispatcher = dispatch::Dispatcher::new(
            catalog.clone(),
            store.clone(),
            metrics.clone(),
            config.delivery.shutdown_grace,
        );
        let heartbeat = dispatcher.heartbeat();
        let (shutdown, rx) = watch::channel(false);

        let tokens = admin::Tokens::load(&config.admin.tokens_path(&config.base_dir))
            .map_err(StartError::Tokens)?;
        let activated = service::activated_listeners().map_err(StartError::Activation)?;
        let listeners = if activated.is_empty() {
            bind_all(&config.ingest.listen).await?
        } else {
            tracing::info!(
                sockets = activated.len(),
                "ingest on sockets passed by the service manager"
            );
            activated
        };
        let admin_listeners = bind_all(&config.admin.listen).await?;
        let local = |ls: &[TcpListener]| ls.iter().filter_map(|l| l.local_addr().ok()).collect();
        let ingest_addrs: Vec<SocketAddr> = local(&listeners);
        let admin_addrs: Vec<SocketAddr> = local(&admin_listeners);

        let load_tls = |files: &Option<config::TlsFiles>| -> Result<_, StartError> {
            Ok(match files {
                Some(f) => Some(Arc::new(tls::ReloadableTls::load(f)?)),
                None => None,
            })
        };
        let ingest_tls = load_tls(&config.ingest.tls)?;
        let admin_tls = load_tls(&config.admin.tls)?;
        let ingest = Arc::new(ingest::Ingest::new(
            &config,
            catalog.clone(),
            store.clone(),
            metrics.clone(),
        ));
        let admin = Arc::new(admin::Admin::new(
            &config,
            store.clone(),
            catalog.clone(),
            metrics.clone(),
            tokens,
        ));
        let c = &config.ingest;
        let limits = listener::Limits {
            max_connections: c.max_connections,
            header_read_timeout: c.header_read_timeout,
            max_headers: c.max_headers,
            max_header_bytes: c.max_header_bytes,
            idle_timeout: c.idle_timeout,
            shutdown_grace: config.delivery.shutdown_grace,
        };
        // The admin listener shares ingest's connection limits.
        let mut tasks = Vec::new();
        let ingest_handler = {
            let ingest = ingest.clone();
            move |req, peer| ingest.clone().handle(req, peer)
        };
        let admin_handler = {
            let admin = admin.clone();
            move |req, peer| admin.clone().handle(req, peer)
        };
        spawn_listeners(
            &mut tasks,
            listeners,
            ingest_handler,
            limits,
            &ingest_tls,
            &rx,
        );
        spawn_listeners(
            &mut tasks,
            admin_listeners,
            admin_handler,
            limits,
            &admin_tls,
            &rx,
        );
        tasks.push(tokio::spawn(dispatcher.run(rx.clone())));
        tasks.push(tokio::spawn(housekeeping(
            ingest.clone(),
            catalog.clone(),
            store.clone(),
            config.store.retention,
            rx.clone(),
        )));
        if let Some(every) = service::watchdog_interval() {
            tasks.push(tokio::spawn(service::watchdog(
                every,
                store.clone(),
                heartbeat,
                rx,
            )));
        }
        for addr in &ingest_addrs {
            tracing::info!(%addr, "ingest listening");
        }
        for addr in &admin_addrs {
            tracing::info!(%addr, "admin listening");
        }
        Ok(Relay {
            ingest_addrs,
            admin_addrs,
            tls: ingest_tls.into_iter().chain(admin_tls).collect(),
            store,
            catalog,
            ingest,
            admin,
            metrics,
            config: std::sync::Mutex::new(config),
            shutdown,
            tasks,
        })
    }

    /// The bound ingest addresses, in `ingest.listen` order.
    pub fn ingest_addrs(&self) -> &[SocketAddr] {
        &self.ingest_addrs
    }

    /// The bound admin addresses, in `admin.listen` order.
    pub fn admin_addrs(&self) -> &[SocketAddr] {
        &self.admin_addrs
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

    pub fn catalog(&self) -> &Arc<catalog::Catalog> {
        &self.catalog
    }

    pub fn metrics(&self) -> &Arc<telemetry::Metrics> {
        &self.metrics
    }

    /// Takes routes, targets, limits, admin tokens and the egress policy
    /// from a new configuration, and reads the listeners' certificate files
    /// again, without dropping work under way. Targets that are gone
    /// have their pending deliveries cancelled, with the reason recorded.
    /// Listen addresses and store settings change only with a restart;
    /// the answer lists such keys, which keep their running values.
    pub async fn reload(&self, config: Config) -> Result<Vec<&'static str>, String> {
        let tokens = admin::Tokens::load(&config.admin.tokens_path(&config.base_dir))?;
        let removed = self.catalog.reload(&config)?;
        self.ingest.reload(&config);
        self.admin.reload(&config, tokens);
        self.reload_tls();
        let restart_only = {
            let mut running = self.config.lock().expect("lock poisoned");
            let mut keys = Vec::new();
            // The files named at start are read again; naming others needs a restart.
            if running.ingest.tls != config.ingest.tls {
                keys.push("ingest.tls");
            }
            if running.admin.tls != config.admin.tls {
                keys.push("admin.tls");
            }
            if running.ingest.listen != config.ingest.listen {
                keys.push("ingest.listen");
            }
            if running.admin.listen != config.admin.listen {
                keys.push("admin.listen");
            }
            if running.store.path != config.store.path
                || running.store.cache_bytes != config.store.cache_bytes
            {
                keys.push("store");
            }
            *running = config;
            keys
        };
        for key in &removed {
            let (store, k) = (self.store.clone(), key.clone());
            let n = tokio::task::spawn_blocking(move || {
                store.cancel_all(&k, "target removed from configuration")
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            tracing::info!(target = %key, cancelled = n, "target removed");
        }
        self.store.new_work.notify_one();
        Ok(restart_only)
    }

    /// Stops accepting, lets requests and attempts under way finish within
    /// the grace period, flushes the store, and returns.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.catalog.save_counters()?;
        self.store.close()
    }
}

/// Serves `handler` on each of `listeners`, one task each.
fn spawn_listeners<H, F>(
    tasks: &mut Vec<JoinHandle<()>>,
    listeners: Vec<TcpListener>,
    handler: H,
    limits: listener::Limits,
    tls: &Option<Arc<tls::ReloadableTls>>,
    shutdown: &watch::Receiver<bool>,
) where
    H: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    for l in listeners {
        tasks.push(tokio::spawn(listener::serve(
            l,
            handler.clone(),
            limits,
            tls.clone(),
            shutdown.clone(),
        )));
    }
}

async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, StartError> {
    let mut out = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
        out.push(l);
    }
    Ok(out)
}

/// Resolves once `shutdown` is true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Periodic chores: forget idle rate-limit keys, re-read disk usage, save
/// counters, remove finished events past `store.retention`.
async fn housekeeping(
    ingest: Arc<ingest::Ingest>,
    catalog: Arc<catalog::Catalog>,
    store: Arc<Store>,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut evict = tokio::time::interval(EVICT_EVERY);
    let mut every_second = tokio::time::interval(EVERY_SECOND);
    let mut purge = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            _ = evict.tick() => ingest.evict_idle_sources(),
            _ = every_second.tick() => {
                let (s, c) = (store.clone(), catalog.clone());
                let saved = tokio::task::spawn_blocking(move || {
                    s.refresh_disk_usage();
                    c.save_counters()
                });
                if let Ok(Err(e)) = saved.await {
                    tracing::error!(error = %e, "cannot save counters");
                }
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

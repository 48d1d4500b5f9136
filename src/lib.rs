//! hookrelay: a durable webhook relay for learning platforms.
//!
//! The LMS posts its webhooks to hookrelay; hookrelay stores each one durably,
//! answers 202, and delivers it to every matching receiver, signed, rate
//! limited, retried with backoff, and dead-lettered when it gives up.
//!
//! The map, in the order data flows (ingest → store → deliver → egress);
//! no module imports one above it (`python3 ../shared/tools/layers.py`
//! prints the floors, and `cycles: 0`):
//!
//! - [`ingest`]: the LMS-facing handler: guard, route, filters, store, 202;
//!   proxy-mode tunnels.
//! - [`store`]: the [`store::Store`] interface, its records, and its two
//!   backends: sled (embedded, one host) and PostgreSQL (a fleet).
//! - [`deliver`]: the scheduler and per-target lanes, delivery policy,
//!   shaping, signing, and the egress client and guard.
//! - [`catalog`]: every receiver (configured targets and subscriptions),
//!   what each wants, and its lane; where ingest, delivery and admin meet.
//! - [`admin`]: the admin API (a route table) and the CLI's client of it.
//! - [`server`]: serving plumbing both listeners share: limits, TLS, shutdown.
//! - [`config`]: the TOML file, parsed into the settings types the modules
//!   above own.
//! - [`telemetry`]: metrics and logs; [`service`]: systemd integration;
//!   [`rate`]: token-bucket rates; [`shutdown`]: the stop signal.
//!
//! The bottom floor (`deliver::sign`, `deliver::shape`, `deliver::policy`,
//! `deliver::egress`, `ingest::route`, `ingest::filter`, `server`, `store`)
//! knows nothing of the file; `config` builds their settings; `catalog`,
//! `ingest`, `deliver::dispatch` and `admin` wire them; [`Relay`] (here)
//! starts them all; `main.rs` only parses the command line.
//! docs/ARCHITECTURE.md tells the same story for contributors.

#![forbid(unsafe_code)]

pub mod admin;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod console;
pub mod deliver;
pub mod history;
pub mod ingest;
pub mod rate;
pub mod roots;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use config::Config;
use server::serve::Limits;
use server::tls::{ReloadableTls, TlsError, TlsFiles};
use shutdown::stopped;
use store::{Store, StoreError};

pub use deliver::request::USER_AGENT;

/// How often rate-limit state of idle sources is dropped.
const EVICT_EVERY: Duration = Duration::from_secs(60);
/// How often the store's size on disk is re-read and counters are saved.
const EVERY_SECOND: Duration = Duration::from_secs(1);
/// How often a relay on a shared store reads the endpoints and counters
/// the other relays changed, when no notice told it sooner.
const FLEET_SYNC_EVERY: Duration = Duration::from_secs(30);
/// How often (in seconds) it reads the fleet's counters.
const FLEET_COUNTERS_EVERY: u64 = 2;
/// How often events past retention are removed, and how many are looked at
/// in one step (the janitor yields between steps).
const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_STEP: usize = 1000;
/// Most steps in one retention round (the next round goes on from there).
const PURGE_STEPS: usize = 100;

/// Why the relay could not start. Each message already ends with its
/// cause, so no variant also hands the cause out as its `source()`: a
/// chain printed in full (`{:#}`) says each thing once.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", store_message(.path, .cause))]
    Store { path: String, cause: StoreError },
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("sockets passed by the service manager: {0}")]
    Activation(std::io::Error),
    #[error("egress: {0}")]
    Egress(String),
    #[error("admin.tokens_file: {0}")]
    Tokens(String),
    #[error("TLS: {0}")]
    Tls(TlsError),
    #[error("console: {0}")]
    Console(String),
    #[error("cannot start serving: {0}")]
    Serve(std::io::Error),
}

impl From<TlsError> for StartError {
    fn from(e: TlsError) -> StartError {
        StartError::Tls(e)
    }
}

/// A locked store names itself; other failures say which store.
fn store_message(path: &str, cause: &StoreError) -> String {
    match cause {
        StoreError::Locked { .. } => cause.to_string(),
        other => format!("cannot open the store at {path}: {other}"),
    }
}

/// A running relay: its listeners, scheduler and store.
pub struct Relay {
    ingest_addrs: Vec<SocketAddr>,
    admin_addrs: Vec<SocketAddr>,
    tls: Vec<Arc<ReloadableTls>>,
    store: Arc<dyn Store>,
    catalog: Arc<catalog::Catalog>,
    ingest: Arc<ingest::Ingest>,
    admin: Arc<admin::Admin>,
    console: Arc<console::Console>,
    history: Arc<history::History>,
    metrics: Arc<telemetry::Metrics>,
    /// The configuration in force, to tell what a reload changes.
    config: std::sync::Mutex<Config>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Where the ingest listeners are served; declared last, so that it
    /// ends after everything else of the relay has.
    _ingest_thread: server::thread::ServingThread,
}

impl Relay {
    /// Opens the store, binds the listeners (or takes the ones the service
    /// manager passed) and starts the dispatcher. Listen addresses with port
    /// 0 get a free port; see [`Relay::ingest_addrs`].
    pub async fn start(config: Config) -> Result<Relay, StartError> {
        let store = store::open(&config.store)
            .await
            .map_err(|cause| StartError::Store {
                path: config.store.location(),
                cause,
            })?;
        let metrics = telemetry::Metrics::new(&*store);
        let catalog = catalog::Catalog::new(&config, store.clone())
            .await
            .map_err(StartError::Egress)?;
        let dispatcher = deliver::dispatch::Dispatcher::new(
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

        let load_tls = |files: &Option<TlsFiles>| -> Result<_, StartError> {
            Ok(match files {
                Some(f) => Some(Arc::new(ReloadableTls::load(f)?)),
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
        let history = history::History::new(store.clone(), catalog.clone(), metrics.clone());
        let console =
            console::Console::new(admin.clone(), history.clone(), config.admin.tls.is_some())
                .map_err(StartError::Console)?;
        // The admin listener shares ingest's connection limits.
        let limits = config.ingest.limits(config.delivery.shutdown_grace);
        let mut tasks = Vec::new();
        let ingest_thread =
            server::thread::ServingThread::start("hookrelay-ingest").map_err(StartError::Serve)?;
        let ingest_handler = {
            let ingest = ingest.clone();
            move |req, peer| ingest.clone().handle(req, peer)
        };
        let admin_handler = {
            let (admin, console) = (admin.clone(), console.clone());
            move |req: hyper::Request<hyper::body::Incoming>, peer| {
                let (admin, console) = (admin.clone(), console.clone());
                async move {
                    // The console's pages at /ui/, the API everywhere else.
                    if console::Console::serves(req.uri().path()) {
                        console.handle(req, peer).await
                    } else {
                        admin.handle(req, peer).await
                    }
                }
            }
        };
        // Ingest on its own thread, so that a POST does not queue behind
        // deliveries; the admin API and the console with the rest.
        tasks.extend(spawn_listeners(
            ingest_thread.handle(),
            listeners,
            ingest_handler,
            {
                let ingest = ingest.clone();
                move |source| ingest.admits(source)
            },
            limits,
            &ingest_tls,
            &rx,
        )?);
        tasks.extend(spawn_listeners(
            &tokio::runtime::Handle::current(),
            admin_listeners,
            admin_handler,
            {
                let admin = admin.clone();
                move |source| admin.allows_source(source)
            },
            limits,
            &admin_tls,
            &rx,
        )?);
        tasks.push(tokio::spawn(dispatcher.run(rx.clone())));
        tasks.push(tokio::spawn(history.clone().run(rx.clone())));
        if store.shared() {
            tasks.push(tokio::spawn(fleet(
                catalog.clone(),
                store.clone(),
                rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(housekeeping(
            ingest.clone(),
            admin.clone(),
            console.clone(),
            catalog.clone(),
            store.clone(),
            config.store.clone(),
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
            console,
            history,
            metrics,
            config: std::sync::Mutex::new(config),
            shutdown,
            tasks,
            _ingest_thread: ingest_thread,
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
    pub fn reload_tls(&self) -> Vec<TlsError> {
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

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn catalog(&self) -> &Arc<catalog::Catalog> {
        &self.catalog
    }

    pub fn metrics(&self) -> &Arc<telemetry::Metrics> {
        &self.metrics
    }

    /// The per-minute and per-hour counts behind the console's charts.
    pub fn history(&self) -> &Arc<history::History> {
        &self.history
    }

    /// Takes routes, targets, limits, admin tokens and the egress policy
    /// from a new configuration, and reads the listeners' certificate files
    /// again, without dropping work under way. Targets that are gone
    /// have their pending deliveries cancelled, with the reason recorded.
    /// Listen addresses and store settings change only with a restart;
    /// the answer lists such keys, which keep their running values.
    pub async fn reload(&self, config: Config) -> Result<Vec<&'static str>, String> {
        let tokens = admin::Tokens::load(&config.admin.tokens_path(&config.base_dir))?;
        let removed = self.catalog.reload(&config).await?;
        self.ingest.reload(&config);
        self.admin.reload(&config, tokens);
        self.console.forget_revoked();
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
            // The connection budget is sized once, at start.
            let (was, now) = (running.egress.pool(), config.egress.pool());
            if was.max_connections != now.max_connections {
                keys.push("egress.max_connections");
            }
            if was.max_connections_per_origin != now.max_connections_per_origin {
                keys.push("egress.max_connections_per_origin");
            }
            if was.idle_timeout != now.idle_timeout {
                keys.push("egress.idle_timeout");
            }
            if running.store.path != config.store.path
                || running.store.cache_bytes != config.store.cache_bytes
                || running.store.backend != config.store.backend
                || running.store.postgres != config.store.postgres
            {
                keys.push("store");
            }
            *running = config;
            keys
        };
        for key in &removed {
            let n = self
                .store
                .cancel_all(key, "target removed from configuration")
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(target = %key, cancelled = n, "target removed");
        }
        self.store.new_work().notify_one();
        Ok(restart_only)
    }

    /// Stops accepting, lets requests and attempts under way finish within
    /// the grace period, flushes the store, and returns.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Attempts that finished during the grace period reach the history too.
        if let Err(e) = self.history.tick(store::now_ms()).await {
            tracing::warn!(error = %e, "the last minute of delivery history was not written");
        }
        self.catalog.save_counters().await?;
        self.store.close().await
    }
}

/// Serves `handler` on each of `listeners`, one task each, on the runtime
/// of `on` (whose I/O driver then owns the sockets).
fn spawn_listeners<H, F, A>(
    on: &tokio::runtime::Handle,
    listeners: Vec<TcpListener>,
    handler: H,
    admits: A,
    limits: Limits,
    tls: &Option<Arc<ReloadableTls>>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, StartError>
where
    H: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
    A: Fn(std::net::IpAddr) -> bool + Clone + Send + 'static,
{
    let _in = on.enter();
    let mut tasks = Vec::with_capacity(listeners.len());
    for l in listeners {
        let l = l
            .into_std()
            .and_then(TcpListener::from_std)
            .map_err(StartError::Serve)?;
        tasks.push(on.spawn(server::serve::serve(
            l,
            handler.clone(),
            admits.clone(),
            limits,
            tls.clone(),
            shutdown.clone(),
        )));
    }
    Ok(tasks)
}

async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, StartError> {
    let mut out = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|cause| StartError::Bind { addr: *addr, cause })?;
        out.push(l);
    }
    Ok(out)
}

/// A shared store: takes the endpoints other relays changed, when told
/// (or every `FLEET_SYNC_EVERY`, for a notice that went missing).
async fn fleet(
    catalog: Arc<catalog::Catalog>,
    store: Arc<dyn Store>,
    mut shutdown: watch::Receiver<bool>,
) {
    let changed = store.endpoints_changed();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(FLEET_SYNC_EVERY) => {}
            _ = stopped(&mut shutdown) => return,
        }
        match catalog.sync().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(endpoints = n, "took the endpoints other relays changed"),
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "cannot read the fleet's endpoints; trying again");
                continue;
            }
            Err(_) => continue,
        }
        failing = false;
    }
}

/// Periodic chores: forget idle rate-limit keys, look after the store
/// (room on disk, repair) and re-read the admin tokens file every second,
/// save counters, and remove finished events and inbound records past
/// `store.retention` (and beyond `store.inbound_log_entries`): once a
/// minute, or every second while the store refuses events for want of room.
async fn housekeeping(
    ingest: Arc<ingest::Ingest>,
    admin: Arc<admin::Admin>,
    console: Arc<console::Console>,
    catalog: Arc<catalog::Catalog>,
    store: Arc<dyn Store>,
    settings: store::StoreConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut evict = tokio::time::interval(EVICT_EVERY);
    let mut every_second = tokio::time::interval(EVERY_SECOND);
    let mut purge = tokio::time::interval(PURGE_EVERY);
    let mut seconds = 0u64;
    loop {
        tokio::select! {
            _ = evict.tick() => ingest.evict_idle_sources(),
            _ = every_second.tick() => {
                let health = store.maintain().await;
                if admin.refresh_tokens() {
                    console.forget_revoked();
                }
                if let Err(e) = catalog.save_counters().await {
                    tracing::debug!(error = %e, "cannot save counters");
                }
                seconds += 1;
                if store.shared() && seconds % FLEET_COUNTERS_EVERY == 0 {
                    if let Err(e) = catalog.refresh_counters().await {
                        tracing::debug!(error = %e, "cannot read the fleet's counters");
                    }
                }
                if health.refusing.as_ref().is_some_and(|(code, _)| code == "store_full") {
                    // Retention is what makes room.
                    retention(&*store, &settings, &shutdown).await;
                }
            }
            _ = purge.tick() => retention(&*store, &settings, &shutdown).await,
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Runs one cleanup `step` after another until it has nothing more to
/// remove, it fails, shutdown begins or `PURGE_STEPS` have run, yielding
/// between steps; how many things the steps removed.
async fn in_steps<Fut>(
    what: &str,
    shutdown: &watch::Receiver<bool>,
    mut step: impl FnMut() -> Fut,
) -> usize
where
    Fut: std::future::Future<Output = Result<store::Purged, StoreError>>,
{
    let mut removed = 0;
    for _ in 0..PURGE_STEPS {
        match step().await {
            Ok(done) => {
                removed += done.removed;
                if !done.more {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "{what} failed");
                break;
            }
        }
        if *shutdown.borrow() {
            break;
        }
        tokio::task::yield_now().await;
    }
    removed
}

/// One retention round: finished events past `store.retention` (in
/// bounded steps, at most `PURGE_STEPS` of them), then the inbound log and
/// expired dedup keys.
async fn retention(
    store: &dyn Store,
    settings: &store::StoreConfig,
    shutdown: &watch::Receiver<bool>,
) {
    let cutoff = store::now_ms().saturating_sub(settings.retention.as_millis() as u64);
    let removed = in_steps("retention cleanup", shutdown, || {
        store.purge(cutoff, PURGE_STEP)
    })
    .await;
    if removed > 0 {
        tracing::info!(events = removed, "removed events past retention");
    }
    let trimmed = in_steps("inbound log cleanup", shutdown, || {
        store.purge_inbound(cutoff, settings.inbound_log_entries, PURGE_STEP)
    })
    .await;
    if trimmed > 0 {
        tracing::debug!(records = trimmed, "trimmed the inbound log");
    }
    if let Err(e) = store.purge_dedup().await {
        tracing::debug!(error = %e, "dedup cleanup failed");
    }
}

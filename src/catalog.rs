//! The catalog of targets: the configured ones and the REST Hooks
//! subscriptions, each with its delivery lane.
//!
//! Ingest asks the catalog which targets want an event; the dispatcher asks
//! it for each target's lane; the admin API adds and removes subscriptions.
//! A lane holds what an attempt needs (client, signing secrets, policy), the
//! bounds on work (a concurrency semaphore, a rate limiter deliveries wait
//! on, a cap on claimed deliveries), the circuit breaker and the counters.
//!
//! Counters live in memory and are saved to the store every second and at
//! shutdown, so after a crash they may lag by up to a second.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use governor::{DefaultDirectRateLimiter, RateLimiter};
use serde::Serialize;
use tokio::sync::Semaphore;

use serde_json::Value;

use crate::config::{Config, DeliveryConfig, Outbound, TargetUrl, ORIGIN_TARGET};
use crate::egress::{Connector, EgressClient, Policy};
use crate::route::{EventPattern, Filter};
use crate::sign::Secret;
use crate::store::{now_ms, Attempt, Counters, Store, StoreError, Subscription};

/// A lane holds at most this many deliveries per unit of concurrency claimed
/// at once (in flight or waiting on its rate limit).
const CLAIMED_PER_SLOT: usize = 2;

/// The key a configured target is known by: `route/target`.
pub fn target_key(route: &str, target: &str) -> String {
    format!("{route}/{target}")
}

/// Where a target comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Config,
    Subscription,
}

/// What a target is: where it is, what it wants, how to deliver to it.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub key: String,
    pub origin: Origin,
    /// Only events of this route; `None`: of every route.
    pub route: Option<String>,
    pub events: Vec<EventPattern>,
    /// Only events whose JSON body matches.
    pub filter: Option<Filter>,
    pub url: TargetUrl,
    pub secrets: Vec<Secret>,
    /// How the body is shaped, and the target's own headers.
    pub outbound: Outbound,
    pub policy: DeliveryConfig,
    /// A proxy route's `origin` target: each event goes to the URL it was
    /// sent to, not to `url`.
    pub to_event_url: bool,
}

impl TargetSpec {
    pub fn wants(&self, route: &str, event: &str, json: Option<&Value>) -> bool {
        self.route.as_deref().is_none_or(|r| r == route)
            && self.events.iter().any(|p| p.matches(event))
            && self.filter.as_ref().is_none_or(|f| f.matches(json))
    }

    /// The spec of a subscription, delivered with the `[delivery]` defaults.
    pub fn of_subscription(
        sub: &Subscription,
        defaults: &DeliveryConfig,
    ) -> Result<TargetSpec, String> {
        Ok(TargetSpec {
            key: sub.id.clone(),
            origin: Origin::Subscription,
            route: sub.route.clone(),
            events: vec![EventPattern::parse(&sub.event)?],
            filter: None,
            url: TargetUrl::parse(&sub.target_url)?,
            secrets: vec![Secret::parse(&sub.secret)?],
            outbound: Outbound::default(),
            policy: defaults.clone(),
            to_event_url: false,
        })
    }
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed {
        failures: u32,
    },
    /// Deliveries wait until `until_ms`.
    Open {
        until_ms: u64,
    },
    /// One probe at a time decides whether to close.
    HalfOpen {
        probing: bool,
    },
}

/// A target and its delivery lane.
pub struct Target {
    pub spec: TargetSpec,
    pub client: EgressClient,
    pub slots: Semaphore,
    pub limiter: DefaultDirectRateLimiter,
    claimed: AtomicUsize,
    circuit: Mutex<Circuit>,
    counters: Mutex<Counters>,
    dirty: AtomicBool,
}

impl Target {
    fn new(spec: TargetSpec, egress: &Egress, counters: Counters) -> Target {
        let connector = Connector::new(
            egress.tls.clone(),
            egress.guard.clone(),
            spec.policy.connect_timeout,
        );
        Target {
            client: EgressClient::new(connector, spec.policy.concurrency),
            slots: Semaphore::new(spec.policy.concurrency),
            limiter: RateLimiter::direct(spec.policy.rate.quota()),
            claimed: AtomicUsize::new(0),
            circuit: Mutex::new(Circuit::Closed { failures: 0 }),
            counters: Mutex::new(counters),
            dirty: AtomicBool::new(false),
            spec,
        }
    }

    /// This target with `other`'s circuit state (a reload keeps it).
    fn with_circuit_of(self, other: &Target) -> Target {
        let state = *other.circuit.lock().expect("lock poisoned");
        *self.circuit.lock().expect("lock poisoned") = match state {
            // A probe under way belongs to the old lane; let the new one probe.
            Circuit::HalfOpen { .. } => Circuit::HalfOpen { probing: false },
            s => s,
        };
        self
    }

    /// How many more deliveries may be claimed now; when the circuit is
    /// open, also when to look again.
    pub fn room(&self, now: u64) -> (usize, Option<u64>) {
        let mut circuit = self.circuit.lock().expect("lock poisoned");
        if let Circuit::Open { until_ms } = *circuit {
            if until_ms > now {
                return (0, Some(until_ms));
            }
            *circuit = Circuit::HalfOpen { probing: false };
        }
        let cap = self.spec.policy.concurrency * CLAIMED_PER_SLOT;
        let free = cap.saturating_sub(self.claimed.load(Ordering::Relaxed));
        match *circuit {
            Circuit::HalfOpen { probing: true } => (0, None),
            Circuit::HalfOpen { probing: false } => (free.min(1), None),
            _ => (free, None),
        }
    }

    /// A delivery was claimed for this lane (in half-open, it is the probe).
    pub fn claimed(&self) {
        self.claimed.fetch_add(1, Ordering::Relaxed);
        let mut circuit = self.circuit.lock().expect("lock poisoned");
        if let Circuit::HalfOpen { probing: false } = *circuit {
            *circuit = Circuit::HalfOpen { probing: true };
        }
    }

    /// A claimed delivery left the lane. `released`: it was given back
    /// without an attempt (a probe given back lets another probe go).
    pub fn unclaimed(&self, released: bool) {
        self.claimed.fetch_sub(1, Ordering::Relaxed);
        if released {
            let mut circuit = self.circuit.lock().expect("lock poisoned");
            if let Circuit::HalfOpen { probing: true } = *circuit {
                *circuit = Circuit::HalfOpen { probing: false };
            }
        }
    }

    /// Counts an attempt and moves the circuit.
    pub fn record(&self, attempt: &Attempt, succeeded: bool, dead: bool) {
        {
            let mut c = self.counters.lock().expect("lock poisoned");
            c.calls += 1;
            if succeeded {
                c.succeeded += 1;
            } else {
                c.failed += 1;
            }
            if dead {
                c.dead += 1;
            }
            c.last_status = attempt.status;
            c.last_error = attempt.error.clone();
            c.last_at_ms = Some(attempt.at_ms);
        }
        self.dirty.store(true, Ordering::Relaxed);

        let threshold = self.spec.policy.circuit.failures;
        let mut circuit = self.circuit.lock().expect("lock poisoned");
        *circuit = match (*circuit, succeeded) {
            (_, true) => Circuit::Closed { failures: 0 },
            (_, false) if threshold == 0 => Circuit::Closed { failures: 0 },
            (Circuit::Closed { failures }, false) if failures + 1 < threshold => Circuit::Closed {
                failures: failures + 1,
            },
            (Circuit::Open { until_ms }, false) => Circuit::Open { until_ms },
            (_, false) => {
                let until_ms = now_ms() + self.spec.policy.circuit.cooldown.as_millis() as u64;
                tracing::warn!(target = %self.spec.key, "circuit open: deliveries wait");
                Circuit::Open { until_ms }
            }
        };
    }

    pub fn counters(&self) -> Counters {
        self.counters.lock().expect("lock poisoned").clone()
    }

    /// `closed`, `open` or `half_open`.
    pub fn circuit_state(&self) -> &'static str {
        match *self.circuit.lock().expect("lock poisoned") {
            Circuit::Closed { .. } => "closed",
            Circuit::Open { until_ms } if until_ms > now_ms() => "open",
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => "half_open",
        }
    }
}

/// Every target the relay delivers to, in a stable order: configured
/// targets in file order, then subscriptions by id.
pub struct Catalog {
    targets: RwLock<Vec<Arc<Target>>>,
    egress: RwLock<Egress>,
    store: Arc<Store>,
}

/// What every target's lane is built with.
struct Egress {
    tls: Arc<rustls::ClientConfig>,
    guard: Arc<Policy>,
    defaults: DeliveryConfig,
}

impl Egress {
    fn new(config: &Config) -> Result<Egress, String> {
        let guard = Policy::new(&config.egress);
        guard.check_bind()?;
        Ok(Egress {
            tls: crate::egress::tls_config(config.egress.ca_file.as_deref())?,
            guard: Arc::new(guard),
            defaults: config.delivery.clone(),
        })
    }
}

/// The configured targets of `config`, in file order; a proxy route
/// (one with a `host`) first gets its implicit `origin` target.
fn configured(config: &Config) -> Result<Vec<TargetSpec>, String> {
    let mut out = Vec::new();
    for route in &config.routes {
        if let Some(host) = &route.host {
            let scheme = if route.upgrade_https { "https" } else { "http" };
            let port = host.port.map(|p| format!(":{p}")).unwrap_or_default();
            out.push(TargetSpec {
                key: target_key(&route.name, ORIGIN_TARGET),
                origin: Origin::Config,
                route: Some(route.name.clone()),
                events: vec![EventPattern::Prefix(String::new())],
                filter: None,
                url: TargetUrl::parse(&format!("{scheme}://{}{port}/", host.host))?,
                secrets: Vec::new(),
                outbound: Outbound::default(),
                policy: config.delivery.clone(),
                to_event_url: true,
            });
        }
        for t in &route.targets {
            out.push(TargetSpec {
                key: target_key(&route.name, &t.name),
                origin: Origin::Config,
                route: Some(route.name.clone()),
                events: t.events.clone(),
                filter: t.filter.clone(),
                url: t.url.clone(),
                secrets: t.secret.0.clone(),
                outbound: t.outbound.clone(),
                policy: config.delivery.with(t),
                to_event_url: false,
            });
        }
    }
    Ok(out)
}

impl Catalog {
    /// The configured targets and the stored subscriptions, with their
    /// saved counters. Fails if `egress.bind` is not a local address.
    pub fn new(config: &Config, store: Arc<Store>) -> Result<Arc<Catalog>, String> {
        let egress = Egress::new(config)?;
        let mut targets = Vec::new();
        let counters = |key: &str| store.counters(key).map_err(|e| e.to_string());
        for spec in configured(config)? {
            let saved = counters(&spec.key)?;
            targets.push(Arc::new(Target::new(spec, &egress, saved)));
        }
        for sub in store.subscriptions().map_err(|e| e.to_string())? {
            match TargetSpec::of_subscription(&sub, &config.delivery) {
                Ok(spec) => targets.push(Arc::new(Target::new(spec, &egress, counters(&sub.id)?))),
                Err(e) => {
                    tracing::error!(subscription = %sub.id, error = %e, "stored subscription is unusable; skipped")
                }
            }
        }
        Ok(Arc::new(Catalog {
            targets: RwLock::new(targets),
            egress: RwLock::new(egress),
            store,
        }))
    }

    /// Takes the configured targets, delivery defaults and egress settings
    /// of a new config. Every lane is built anew (settings, shapes, trust
    /// roots and the egress guard may have changed); counters and circuit
    /// state carry over. Attempts under way finish on the lane they started
    /// on. Subscriptions stay. Returns the keys of configured targets that
    /// are gone.
    pub fn reload(&self, config: &Config) -> Result<Vec<String>, String> {
        let fresh = Egress::new(config)?;
        let specs = configured(config)?;
        let mut egress = self.egress.write().expect("lock poisoned");
        *egress = fresh;
        let old = self.all();
        let find = |key: &str| old.iter().find(|t| t.spec.key == key);
        let mut next = Vec::new();
        for spec in specs {
            let target = match find(&spec.key) {
                Some(t) => Target::new(spec, &egress, t.counters()).with_circuit_of(t),
                None => {
                    let saved = self.store.counters(&spec.key).map_err(|e| e.to_string())?;
                    Target::new(spec, &egress, saved)
                }
            };
            next.push(Arc::new(target));
        }
        for t in old.iter().filter(|t| t.spec.origin == Origin::Subscription) {
            let spec = TargetSpec {
                policy: config.delivery.clone(),
                ..t.spec.clone()
            };
            next.push(Arc::new(
                Target::new(spec, &egress, t.counters()).with_circuit_of(t),
            ));
        }
        let removed = old
            .iter()
            .filter(|t| !next.iter().any(|n| n.spec.key == t.spec.key))
            .map(|t| t.spec.key.clone())
            .collect();
        *self.targets.write().expect("lock poisoned") = next;
        Ok(removed)
    }

    /// Keys of the targets that want an `event` that came in on `route`.
    pub fn matching(&self, route: &str, event: &str, json: Option<&Value>) -> Vec<String> {
        self.targets
            .read()
            .expect("lock poisoned")
            .iter()
            .filter(|t| t.spec.wants(route, event, json))
            .map(|t| t.spec.key.clone())
            .collect()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Target>> {
        self.targets
            .read()
            .expect("lock poisoned")
            .iter()
            .find(|t| t.spec.key == key)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Target>> {
        self.targets.read().expect("lock poisoned").clone()
    }

    /// Adds a subscription's target (it is already stored).
    pub fn add_subscription(&self, sub: &Subscription) -> Result<Arc<Target>, String> {
        let egress = self.egress.read().expect("lock poisoned");
        let spec = TargetSpec::of_subscription(sub, &egress.defaults)?;
        let target = Arc::new(Target::new(spec, &egress, Counters::default()));
        self.targets
            .write()
            .expect("lock poisoned")
            .push(target.clone());
        Ok(target)
    }

    /// Takes a target out; deliveries still queued for it are cancelled by the caller.
    pub fn remove(&self, key: &str) -> Option<Arc<Target>> {
        let mut targets = self.targets.write().expect("lock poisoned");
        let i = targets.iter().position(|t| t.spec.key == key)?;
        Some(targets.remove(i))
    }

    /// Saves the counters that changed since the last save.
    pub fn save_counters(&self) -> Result<(), StoreError> {
        for t in self.all() {
            if t.dirty.swap(false, Ordering::Relaxed) {
                self.store.save_counters(&t.spec.key, &t.counters())?;
            }
        }
        Ok(())
    }
}

//! The catalog of targets: the configured ones and the REST Hooks
//! subscriptions, each with what it wants and its delivery lane.
//!
//! Ingest asks the catalog which targets want an event; the dispatcher asks
//! it for each target's lane; the admin API adds and removes subscriptions.
//! A target's spec holds what an attempt needs (URL, signing secrets, shape,
//! policy); its [`Lane`] holds the bounds on work, the circuit breaker and
//! the counters.
//!
//! Counters live in memory and are saved to the store every second and at
//! shutdown, so after a crash they may lag by up to a second.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, ORIGIN_TARGET};
use crate::deliver::egress::{tls_config, Connector, EgressError, Policy, Reply, TargetUrl};
use crate::deliver::lane::Lane;
use crate::deliver::policy::DeliveryConfig;
use crate::deliver::request::build_request;
use crate::deliver::shape::{Outbound, Shaped};
use crate::deliver::sign::Secret;
use crate::ingest::filter::Filter;
use crate::ingest::route::EventPattern;
use crate::store::{Counters, EventMeta, Store, StoreError, Subscription};

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

/// A target and its delivery lane.
pub struct Target {
    pub spec: TargetSpec,
    pub lane: Lane,
}

impl Target {
    /// Sends one signed attempt of `meta`'s event (id `event_id`, body
    /// `shaped`) to `uri`, within the target's timeout.
    pub async fn send(
        &self,
        uri: http::Uri,
        event_id: &str,
        timestamp: i64,
        meta: &EventMeta,
        shaped: Shaped,
    ) -> Result<Reply, EgressError> {
        let spec = &self.spec;
        let request = build_request(
            &spec.secrets,
            &spec.outbound,
            uri,
            event_id,
            timestamp,
            meta,
            shaped,
        );
        self.lane.client.send(request, spec.policy.timeout).await
    }

    fn new(spec: TargetSpec, egress: &Egress, counters: Counters) -> Target {
        let connector = Connector::new(
            egress.tls.clone(),
            egress.guard.clone(),
            spec.policy.connect_timeout,
        );
        Target {
            lane: Lane::new(&spec.key, &spec.policy, connector, counters),
            spec,
        }
    }
}

/// Every target the relay delivers to, in a stable order: configured
/// targets in file order, then subscriptions by id.
pub struct Catalog {
    targets: RwLock<Vec<Arc<Target>>>,
    egress: RwLock<Egress>,
    store: Arc<dyn Store>,
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
            tls: tls_config(config.egress.ca_file.as_deref())?,
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
                policy: t.policy(&config.delivery),
                to_event_url: false,
            });
        }
    }
    Ok(out)
}

impl Catalog {
    /// The configured targets and the stored subscriptions, with their
    /// saved counters. Fails if `egress.bind` is not a local address.
    pub async fn new(config: &Config, store: Arc<dyn Store>) -> Result<Arc<Catalog>, String> {
        let egress = Egress::new(config)?;
        let mut targets = Vec::new();
        for spec in configured(config)? {
            let saved = store.counters(&spec.key).await.map_err(|e| e.to_string())?;
            targets.push(Arc::new(Target::new(spec, &egress, saved)));
        }
        for sub in store.subscriptions().await.map_err(|e| e.to_string())? {
            match TargetSpec::of_subscription(&sub, &config.delivery) {
                Ok(spec) => {
                    let saved = store.counters(&sub.id).await.map_err(|e| e.to_string())?;
                    targets.push(Arc::new(Target::new(spec, &egress, saved)))
                }
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
    pub async fn reload(&self, config: &Config) -> Result<Vec<String>, String> {
        let fresh = Egress::new(config)?;
        let specs = configured(config)?;
        // Targets new to this config start from their saved counters, read
        // before the lock is taken (a std lock is not held across an await).
        let mut saved = HashMap::new();
        {
            let before = self.all();
            let known: HashSet<&str> = before.iter().map(|t| t.spec.key.as_str()).collect();
            for spec in specs.iter().filter(|s| !known.contains(s.key.as_str())) {
                let c = self
                    .store
                    .counters(&spec.key)
                    .await
                    .map_err(|e| e.to_string())?;
                saved.insert(spec.key.clone(), c);
            }
        }
        // From here to the swap the egress lock is held, so a subscription
        // added meanwhile waits and lands in the new list.
        let mut egress = self.egress.write().expect("lock poisoned");
        *egress = fresh;
        let old = self.all();
        let by_key: HashMap<&str, &Arc<Target>> =
            old.iter().map(|t| (t.spec.key.as_str(), t)).collect();
        // A lane built anew keeps the counters and circuit of the one it replaces.
        let carried = |spec: TargetSpec, t: &Target| {
            let target = Target::new(spec, &egress, t.lane.counters());
            target.lane.keep_circuit_of(&t.lane);
            target
        };
        let mut next = Vec::new();
        for spec in specs {
            let target = match by_key.get(spec.key.as_str()) {
                Some(t) => carried(spec, t),
                None => {
                    let c = saved.remove(&spec.key).unwrap_or_default();
                    Target::new(spec, &egress, c)
                }
            };
            next.push(Arc::new(target));
        }
        for t in old.iter().filter(|t| t.spec.origin == Origin::Subscription) {
            let spec = TargetSpec {
                policy: config.delivery.clone(),
                ..t.spec.clone()
            };
            next.push(Arc::new(carried(spec, t)));
        }
        let kept: HashSet<&str> = next.iter().map(|t| t.spec.key.as_str()).collect();
        let removed = old
            .iter()
            .filter(|t| !kept.contains(t.spec.key.as_str()))
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
    pub async fn save_counters(&self) -> Result<(), StoreError> {
        for t in self.all() {
            if let Some(c) = t.lane.take_dirty_counters() {
                self.store.save_counters(&t.spec.key, &c).await?;
            }
        }
        Ok(())
    }
}

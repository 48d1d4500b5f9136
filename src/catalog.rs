//! The catalog of endpoints: every receiver, from the config file or made
//! through the admin API, each with what it wants and its delivery lane.
//!
//! Ingest asks the catalog which endpoints want an event; the dispatcher
//! asks it for each endpoint's lane; the admin API makes, changes and
//! removes API endpoints through it. An endpoint's spec holds what an
//! attempt needs (URL, signing secrets, shape, policy); its [`Lane`] holds
//! the bounds on work, the circuit breaker and the counters; its record is
//! what the store keeps.
//!
//! Invariants:
//! - Config endpoints and API endpoints are checked by the same code
//!   (`TargetConfig::validate`, the shared `outbound`): what the file
//!   refuses, the API refuses.
//! - A config endpoint keeps its id for as long as its route and URL, or
//!   its route and name, stay: the store remembers which id a (route, URL,
//!   name) was given, so a rename keeps counters and pending deliveries.
//! - An API endpoint is written to the store before it is in the catalog,
//!   and taken out of the catalog before it leaves the store.
//!
//! Counters live in memory and are saved to the store every second and at
//! shutdown, so after a crash they may lag by up to a second.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;

use crate::config::endpoint::{EndpointDef, Invalid, RouteCatalogs, Rules};
use crate::config::targets::valid_id;
use crate::config::{Config, TargetConfig, ORIGIN_TARGET};
use crate::deliver::egress::pool::{raise_fd_limit, RequestSlot};
use crate::deliver::egress::{tls_config, Budget, Connector, EgressClient, Policy, TargetUrl};
use crate::deliver::lane::Lane;
use crate::deliver::policy::DeliveryConfig;
use crate::deliver::request::build_request;
use crate::deliver::shape::{Body, Outbound, Shaped};
use crate::deliver::sign::Secret;
use crate::ingest::filter::Filter;
use crate::ingest::route::EventPattern;
pub use crate::store::Origin;
use crate::store::{
    now_ms, Attempt, Counters, EndpointRecord, EventMeta, Store, StoreError, StoredSecret, TestSend,
};
use crate::telemetry::log::Escaped;

/// How many test sends an endpoint's record keeps.
const KEPT_TESTS: usize = 10;
/// The longest grace a rotated secret may keep signing.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The id a configured target gets when it has no `id` and none was given
/// to it before: `route/target`, as older versions named every target.
pub fn target_key(route: &str, target: &str) -> String {
    format!("{route}/{target}")
}

/// Why the catalog refused a change.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{}: {}", .0.field, .0.reason)]
    Invalid(Invalid),
    #[error("endpoint {0} not found")]
    NotFound(String),
    #[error("endpoint {0} comes from the config file; change it there and reload")]
    ReadOnly(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an endpoint is: where it is, what it wants, how to deliver to it.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// The endpoint's id.
    pub key: String,
    pub origin: Origin,
    pub name: String,
    /// Only events of this route; `None`: of every route.
    pub route: Option<String>,
    pub events: Vec<EventPattern>,
    /// Only events whose JSON body matches.
    pub filter: Option<Filter>,
    pub url: TargetUrl,
    /// Signing secrets, with when each stops signing (after a rotation).
    pub secrets: Vec<(Secret, Option<u64>)>,
    /// How the body is shaped, and the endpoint's own headers.
    pub outbound: Outbound,
    pub policy: DeliveryConfig,
    /// A proxy route's `origin` target: each event goes to the URL it was
    /// sent to, not to `url`.
    pub to_event_url: bool,
    /// `false`: paused; events queue, nothing is attempted.
    pub enabled: bool,
    /// The receiver said `410 Gone`: no new deliveries are queued.
    pub gone: bool,
    /// What it was made from (absent for a proxy route's `origin`).
    pub config: Option<Arc<TargetConfig>>,
    /// The name of the token that made it (API endpoints).
    pub owner: Option<String>,
}

impl TargetSpec {
    pub fn wants(&self, route: &str, event: &str, json: Option<&Value>) -> bool {
        !self.gone
            && self.route.as_deref().is_none_or(|r| r == route)
            && self.events.iter().any(|p| p.matches(event))
            && self.filter.as_ref().is_none_or(|f| f.matches(json))
    }

    /// The secrets that sign at `now`.
    pub fn live_secrets(&self, now: u64) -> Vec<Secret> {
        self.secrets
            .iter()
            .filter(|(_, until)| until.is_none_or(|u| u > now))
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn of_target(
        key: String,
        origin: Origin,
        route: Option<String>,
        t: TargetConfig,
        secrets: Vec<(Secret, Option<u64>)>,
        defaults: &DeliveryConfig,
    ) -> TargetSpec {
        TargetSpec {
            key,
            origin,
            name: t.name.clone(),
            route,
            events: t.events.clone(),
            filter: t.filter.clone(),
            url: t.url.clone(),
            secrets,
            outbound: t.outbound.clone(),
            policy: t.policy(defaults),
            to_event_url: false,
            enabled: t.enabled,
            gone: false,
            config: Some(Arc::new(t)),
            owner: None,
        }
    }
}

/// An endpoint, its delivery lane, and its record in the store.
pub struct Target {
    pub spec: TargetSpec,
    pub lane: Lane,
    /// Changes without a new lane only for what does not change delivery
    /// (test sends); every other change builds a new `Target`.
    record: std::sync::Mutex<EndpointRecord>,
}

impl Target {
    /// Sends one signed attempt of `meta`'s event (id `event_id`, body
    /// `shaped`) to `uri` now, within the endpoint's timeout, and says what
    /// happened: the attempt as the store keeps it (with the headers sent),
    /// and the `Retry-After` a 429 or 503 came with. Deliveries and test
    /// sends both go through here. `slot`: a connection slot taken for
    /// `uri`'s origin beforehand (else one is waited for here).
    pub async fn attempt(
        &self,
        uri: http::Uri,
        event_id: &str,
        meta: &EventMeta,
        shaped: Shaped,
        slot: Option<RequestSlot>,
    ) -> (Attempt, Option<Duration>) {
        let spec = &self.spec;
        let started = now_ms();
        let request = build_request(
            &spec.live_secrets(started),
            &spec.outbound,
            uri,
            event_id,
            (started / 1000) as i64,
            meta,
            shaped,
        );
        let request_headers = shown_headers(request.headers());
        match self
            .lane
            .client
            .send(request, spec.policy.timeout, slot)
            .await
        {
            Ok(reply) => {
                let retry_after = matches!(reply.status, 429 | 503)
                    .then_some(reply.retry_after)
                    .flatten();
                let attempt = Attempt {
                    at_ms: started,
                    duration_ms: reply.duration.as_millis() as u64,
                    status: Some(reply.status),
                    error: None,
                    excerpt: reply.excerpt,
                    request_headers,
                };
                (attempt, retry_after)
            }
            Err(e) => {
                let attempt = Attempt {
                    at_ms: started,
                    duration_ms: now_ms().saturating_sub(started),
                    status: None,
                    error: Some(e.to_string()),
                    excerpt: String::new(),
                    request_headers,
                };
                (attempt, None)
            }
        }
    }

    fn new(
        spec: TargetSpec,
        record: EndpointRecord,
        egress: &Egress,
        counters: Counters,
    ) -> Target {
        Target {
            lane: Lane::new(
                &spec.key,
                &spec.policy,
                egress.client(spec.policy.connect_timeout),
                counters,
            ),
            spec,
            record: std::sync::Mutex::new(record),
        }
    }

    /// The endpoint's record as the store has it.
    pub fn record(&self) -> EndpointRecord {
        self.record.lock().expect("lock poisoned").clone()
    }

    /// A new lane for `spec` that shares this one's counters and keeps
    /// its circuit.
    fn carried(&self, spec: TargetSpec, record: EndpointRecord, egress: &Egress) -> Target {
        Target {
            lane: Lane::replacing(
                &spec.key,
                &spec.policy,
                egress.client(spec.policy.connect_timeout),
                &self.lane,
            ),
            spec,
            record: std::sync::Mutex::new(record),
        }
    }
}

/// What the endpoints of a route need of each request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Needs {
    /// One filters on the body, so it is parsed as JSON.
    pub json: bool,
    /// One renders a template, so the request's other headers are kept.
    pub request_headers: bool,
}

/// Every endpoint the relay delivers to, in a stable order: configured
/// ones in file order, then API ones by id.
pub struct Catalog {
    index: RwLock<Index>,
    egress: RwLock<Egress>,
    store: Arc<dyn Store>,
    version: std::sync::atomic::AtomicU64,
}

/// The endpoints, and what is derived from them whenever they change (not
/// per request): each one's place by id, which ones an event may match, and
/// what each route's endpoints need of a request.
struct Index {
    targets: Vec<Arc<Target>>,
    /// Place in `targets`, by id.
    by_key: HashMap<String, usize>,
    /// Endpoints with an exact event name, by (route or `None` for every
    /// route, event name).
    exact: HashMap<(Option<String>, String), Vec<usize>>,
    /// Endpoints with a prefix pattern (`course_*`, `*`), by route.
    prefixes: HashMap<Option<String>, Vec<(String, usize)>>,
    /// Endpoints of one route, by route name.
    by_route: HashMap<String, Needs>,
    /// Endpoints of every route.
    any_route: Needs,
    /// What `candidates` and the filter-free part of `wants` gave, by
    /// (route, event name): the same answer for every event of a kind
    /// until the list changes.
    matched: Mutex<Kept>,
}

/// Kinds of event whose matches are kept, and endpoint ids over all of
/// them; past either the store of them starts again. Event names come from
/// payloads, so neither is bounded otherwise; 100,000 ids are a few MiB.
const MATCHED_KINDS: usize = 1024;
const MATCHED_IDS: usize = 100_000;

/// The matches kept, by (route, event name), and how many ids they hold.
#[derive(Default)]
struct Kept {
    kinds: HashMap<(String, String), Matched>,
    ids: usize,
}

/// The endpoints an event of one kind goes to: those that take every
/// such event, and those whose filter decides per event.
#[derive(Clone)]
struct Matched {
    always: Arc<[String]>,
    filtered: Vec<usize>,
}

impl Index {
    fn new(targets: Vec<Arc<Target>>) -> Index {
        let mut index = Index {
            targets,
            by_key: HashMap::new(),
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            by_route: HashMap::new(),
            any_route: Needs::default(),
            matched: Mutex::new(Kept::default()),
        };
        index.derive();
        index
    }

    fn derive(&mut self) {
        self.by_key.clear();
        self.exact.clear();
        self.prefixes.clear();
        self.by_route.clear();
        self.any_route = Needs::default();
        *self.matched.lock().expect("lock poisoned") = Kept::default();
        for (i, t) in self.targets.iter().enumerate() {
            self.by_key.insert(t.spec.key.clone(), i);
            if t.spec.gone {
                continue;
            }
            for p in &t.spec.events {
                match p {
                    EventPattern::Exact(e) => self
                        .exact
                        .entry((t.spec.route.clone(), e.clone()))
                        .or_default()
                        .push(i),
                    EventPattern::Prefix(prefix) => self
                        .prefixes
                        .entry(t.spec.route.clone())
                        .or_default()
                        .push((prefix.clone(), i)),
                }
            }
            let needs = match &t.spec.route {
                Some(r) => self.by_route.entry(r.clone()).or_default(),
                None => &mut self.any_route,
            };
            needs.json |= t.spec.filter.is_some();
            needs.request_headers |= matches!(t.spec.outbound.shape.body, Body::Template(_));
        }
    }

    /// Places of the endpoints whose route and patterns take `event` on
    /// `route` (filters not yet applied), in catalog order, each once.
    fn candidates(&self, route: &str, event: &str) -> Vec<usize> {
        let mut out = Vec::new();
        for r in [Some(route.to_string()), None] {
            if let Some(list) = self.exact.get(&(r.clone(), event.to_string())) {
                out.extend_from_slice(list);
            }
            if let Some(list) = self.prefixes.get(&r) {
                out.extend(
                    list.iter()
                        .filter(|(p, _)| event.starts_with(p.as_str()))
                        .map(|(_, i)| *i),
                );
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A request's headers as an attempt keeps them: sensitive values (basic
/// auth, an endpoint's own headers) as `***`.
fn shown_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            let shown = if v.is_sensitive() {
                "***".to_string()
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            };
            (n.to_string(), shown)
        })
        .collect()
}

/// What every lane is built with, and what API endpoints are checked against.
struct Egress {
    tls: Arc<rustls::ClientConfig>,
    guard: Arc<Policy>,
    defaults: DeliveryConfig,
    https_only: bool,
    /// The routes and their event catalogs (API endpoints are checked
    /// against them; the admin API lists them).
    routes: Arc<RouteCatalogs>,
    /// The budget every client counts against, for the life of the relay.
    budget: Arc<Budget>,
    /// One client (one pool, keyed by origin) per connect timeout in use.
    clients: std::sync::Mutex<HashMap<Duration, EgressClient>>,
}

impl Egress {
    fn new(config: &Config, budget: Arc<Budget>) -> Result<Egress, String> {
        let guard = Policy::new(&config.egress);
        guard.check_bind()?;
        Ok(Egress {
            budget,
            clients: std::sync::Mutex::new(HashMap::new()),
            tls: tls_config(config.egress.ca_file.as_deref())?,
            guard: Arc::new(guard),
            defaults: config.delivery.clone(),
            https_only: config.egress.https_only,
            routes: Arc::new(
                config
                    .routes
                    .iter()
                    .map(|r| (r.name.clone(), r.catalog.clone()))
                    .collect(),
            ),
        })
    }

    /// The shared client for endpoints with this connect timeout.
    fn client(&self, connect_timeout: Duration) -> EgressClient {
        let mut clients = self.clients.lock().expect("lock poisoned");
        clients
            .entry(connect_timeout)
            .or_insert_with(|| {
                let connector = Connector::new(
                    self.tls.clone(),
                    self.guard.clone(),
                    self.budget.clone(),
                    connect_timeout,
                );
                EgressClient::new(connector, self.budget.clone())
            })
            .clone()
    }

    fn rules(&self) -> Rules<'_> {
        Rules {
            guard: &self.guard,
            https_only: self.https_only,
            defaults: &self.defaults,
            routes: &self.routes,
        }
    }

    /// A new or changed API endpoint's spec: `compile`, and its event
    /// names checked against its route's catalog.
    fn compile_new(&self, record: &EndpointRecord) -> Result<TargetSpec, Invalid> {
        EndpointDef::from_json(record.spec.clone())?.check_catalog(&self.rules())?;
        self.compile(record)
    }

    /// An API endpoint's spec from its record.
    fn compile(&self, record: &EndpointRecord) -> Result<TargetSpec, Invalid> {
        let def = EndpointDef::from_json(record.spec.clone())?;
        let secrets = parse_secrets(&record.secrets)?;
        let plain = secrets.iter().map(|(s, _)| s.clone()).collect();
        let target = def.compile(plain, &self.rules())?;
        let mut spec = TargetSpec::of_target(
            record.id.clone(),
            Origin::Api,
            def.route.clone(),
            target,
            secrets,
            &self.defaults,
        );
        spec.gone = record.disabled_reason.is_some();
        spec.owner = record.owner.clone();
        Ok(spec)
    }
}

fn parse_secrets(stored: &[StoredSecret]) -> Result<Vec<(Secret, Option<u64>)>, Invalid> {
    stored
        .iter()
        .map(|s| {
            Secret::parse(&s.secret)
                .map(|p| (p, s.expires_at_ms))
                .map_err(|reason| Invalid {
                    field: "secret".into(),
                    reason,
                })
        })
        .collect()
}

/// The configured targets of `config`, in file order, each with its id and
/// record: the id it was given before (by `id`, by route and name, or by
/// route and URL when its name changed), else a new one. A proxy route
/// (one with a `host`) first gets its implicit `origin` target.
fn configured(
    config: &Config,
    stored: &[EndpointRecord],
) -> Result<Vec<(TargetSpec, EndpointRecord)>, String> {
    let known: Vec<&EndpointRecord> = stored
        .iter()
        .filter(|r| r.origin == Origin::Config)
        .collect();
    let name_of = |r: &EndpointRecord| r.spec["name"].as_str().map(str::to_string);
    let mut taken: HashSet<String> = HashSet::new();
    // Ids named in the file are theirs, whatever was stored.
    for route in &config.routes {
        for t in &route.targets {
            if let Some(id) = &t.id {
                taken.insert(id.clone());
            }
        }
    }
    let now = now_ms();
    let mut out = Vec::new();
    for route in &config.routes {
        if let Some(host) = &route.host {
            let scheme = if route.upgrade_https { "https" } else { "http" };
            let port = host.port.map(|p| format!(":{p}")).unwrap_or_default();
            let key = target_key(&route.name, ORIGIN_TARGET);
            let spec = TargetSpec {
                key: key.clone(),
                origin: Origin::Config,
                name: ORIGIN_TARGET.to_string(),
                route: Some(route.name.clone()),
                events: vec![EventPattern::Prefix(String::new())],
                filter: None,
                url: TargetUrl::parse(&format!("{scheme}://{}{port}/", host.host))?,
                secrets: Vec::new(),
                outbound: Outbound::default(),
                policy: config.delivery.clone(),
                to_event_url: true,
                enabled: true,
                gone: false,
                config: None,
                owner: None,
            };
            let record = config_record(&key, &route.name, &spec.url, ORIGIN_TARGET, stored, now);
            taken.insert(key);
            out.push((spec, record));
        }
        let names: HashSet<&str> = route.targets.iter().map(|t| t.name.as_str()).collect();
        for t in &route.targets {
            let url = t.url.to_string();
            let same_route = |r: &&&EndpointRecord| r.route.as_deref() == Some(&route.name);
            let id = t
                .id
                .clone()
                .or_else(|| {
                    known
                        .iter()
                        .filter(same_route)
                        .find(|r| name_of(r).as_deref() == Some(&t.name) && !taken.contains(&r.id))
                        .map(|r| r.id.clone())
                })
                .or_else(|| {
                    // Renamed: the same URL on the same route, under a name
                    // this route no longer has.
                    known
                        .iter()
                        .filter(same_route)
                        .find(|r| {
                            r.url == url
                                && !taken.contains(&r.id)
                                && name_of(r).is_none_or(|n| !names.contains(n.as_str()))
                        })
                        .map(|r| r.id.clone())
                })
                .unwrap_or_else(|| {
                    let legacy = target_key(&route.name, &t.name);
                    if valid_id(&t.name) && !taken.contains(&legacy) {
                        legacy
                    } else {
                        target_key(&route.name, &ulid::Ulid::new().to_string().to_lowercase())
                    }
                });
            taken.insert(id.clone());
            let secrets = t.secret.0.iter().map(|s| (s.clone(), None)).collect();
            let record = config_record(&id, &route.name, &t.url, &t.name, stored, now);
            let spec = TargetSpec::of_target(
                id,
                Origin::Config,
                Some(route.name.clone()),
                t.clone(),
                secrets,
                &config.delivery,
            );
            out.push((spec, record));
        }
    }
    Ok(out)
}

/// The record of a configured target: the stored one with its route, URL
/// and name brought up to date, or a new one.
fn config_record(
    id: &str,
    route: &str,
    url: &TargetUrl,
    name: &str,
    stored: &[EndpointRecord],
    now: u64,
) -> EndpointRecord {
    let mut r = stored
        .iter()
        .find(|r| r.id == id)
        .cloned()
        .unwrap_or_else(|| EndpointRecord {
            id: id.to_string(),
            origin: Origin::Config,
            route: None,
            url: String::new(),
            owner: None,
            created_at_ms: now,
            updated_at_ms: now,
            secrets: Vec::new(),
            disabled_reason: None,
            tests: Vec::new(),
            spec: serde_json::json!({}),
        });
    let url = url.to_string();
    if r.route.as_deref() != Some(route) || r.url != url || r.spec["name"] != name {
        r.origin = Origin::Config;
        r.route = Some(route.to_string());
        r.url = url;
        r.spec = serde_json::json!({ "name": name });
        r.updated_at_ms = now;
    }
    r
}

/// Saves the configured records that changed (or are new).
async fn save_config_records(
    store: &dyn Store,
    specs: &[(TargetSpec, EndpointRecord)],
    stored: &[EndpointRecord],
) -> Result<(), StoreError> {
    let before: HashMap<&str, &EndpointRecord> =
        stored.iter().map(|r| (r.id.as_str(), r)).collect();
    for (_, r) in specs {
        let same = before.get(r.id.as_str()).is_some_and(|b| {
            b.origin == r.origin && b.route == r.route && b.url == r.url && b.spec == r.spec
        });
        if !same {
            store.put_endpoint(r).await?;
        }
    }
    Ok(())
}

/// Applies a JSON merge patch (RFC 7396) to `target`.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(obj) = target else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            obj.remove(k);
        } else {
            merge_patch(obj.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

impl Catalog {
    /// The configured endpoints and the stored API ones, with their saved
    /// counters. Fails if `egress.bind` is not a local address.
    pub async fn new(config: &Config, store: Arc<dyn Store>) -> Result<Arc<Catalog>, String> {
        // Each listener serves up to `ingest.max_connections` at once.
        let listeners = (config.ingest.listen.len() + config.admin.listen.len()) as u64;
        let listener_fds = listeners * (config.ingest.max_connections as u64 + 1);
        let (budget, warning) = Budget::new(config.egress.pool(), raise_fd_limit(), listener_fds);
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        let egress = Egress::new(config, Arc::new(budget))?;
        let stored = store.endpoints().await.map_err(|e| e.to_string())?;
        let specs = configured(config, &stored)?;
        save_config_records(&*store, &specs, &stored)
            .await
            .map_err(|e| e.to_string())?;
        let mut targets = Vec::new();
        for (spec, record) in specs {
            let saved = store.counters(&spec.key).await.map_err(|e| e.to_string())?;
            targets.push(Arc::new(Target::new(spec, record, &egress, saved)));
        }
        for record in stored.into_iter().filter(|r| r.origin == Origin::Api) {
            match egress.compile(&record) {
                Ok(spec) => {
                    let saved = store
                        .counters(&record.id)
                        .await
                        .map_err(|e| e.to_string())?;
                    targets.push(Arc::new(Target::new(spec, record, &egress, saved)))
                }
                Err(e) => {
                    tracing::error!(endpoint = %Escaped(&record.id), field = %e.field, error = %Escaped(&e.reason), "stored endpoint is unusable; skipped")
                }
            }
        }
        Ok(Arc::new(Catalog {
            index: RwLock::new(Index::new(targets)),
            egress: RwLock::new(egress),
            store,
            version: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Takes the configured endpoints, delivery defaults and egress
    /// settings of a new config. Every lane is built anew (settings,
    /// shapes, trust roots and the egress guard may have changed); counters
    /// and circuit state carry over. Attempts under way finish on the lane
    /// they started on. API endpoints stay. Returns the ids of configured
    /// endpoints that are gone.
    pub async fn reload(&self, config: &Config) -> Result<Vec<String>, String> {
        let budget = self.egress.read().expect("lock poisoned").budget.clone();
        let fresh = Egress::new(config, budget)?;
        let stored = self.store.endpoints().await.map_err(|e| e.to_string())?;
        let specs = configured(config, &stored)?;
        save_config_records(&*self.store, &specs, &stored)
            .await
            .map_err(|e| e.to_string())?;
        // Endpoints new to this config start from their saved counters, read
        // before the lock is taken (a std lock is not held across an await).
        let mut saved = HashMap::new();
        {
            let before = self.all();
            let known: HashSet<&str> = before.iter().map(|t| t.spec.key.as_str()).collect();
            for (spec, _) in specs
                .iter()
                .filter(|(s, _)| !known.contains(s.key.as_str()))
            {
                let c = self
                    .store
                    .counters(&spec.key)
                    .await
                    .map_err(|e| e.to_string())?;
                saved.insert(spec.key.clone(), c);
            }
        }
        let removed = {
            // From here to the swap the egress lock is held, so an endpoint
            // added meanwhile waits and lands in the new list.
            let mut egress = self.egress.write().expect("lock poisoned");
            *egress = fresh;
            let old = self.all();
            let by_key: HashMap<&str, &Arc<Target>> =
                old.iter().map(|t| (t.spec.key.as_str(), t)).collect();
            let mut next = Vec::new();
            for (spec, record) in specs {
                let target = match by_key.get(spec.key.as_str()) {
                    Some(t) => t.carried(spec, record, &egress),
                    None => {
                        let c = saved.remove(&spec.key).unwrap_or_default();
                        Target::new(spec, record, &egress, c)
                    }
                };
                next.push(Arc::new(target));
            }
            for t in old.iter().filter(|t| t.spec.origin == Origin::Api) {
                let record = t.record();
                let spec = match egress.compile(&record) {
                    Ok(spec) => spec,
                    Err(e) => {
                        tracing::error!(endpoint = %Escaped(&t.spec.key), field = %e.field, error = %Escaped(&e.reason), "endpoint does not fit the new configuration; it keeps its settings");
                        TargetSpec {
                            policy: egress.defaults.clone(),
                            ..t.spec.clone()
                        }
                    }
                };
                next.push(Arc::new(t.carried(spec, record, &egress)));
            }
            let kept: HashSet<&str> = next.iter().map(|t| t.spec.key.as_str()).collect();
            let removed: Vec<String> = old
                .iter()
                .filter(|t| !kept.contains(t.spec.key.as_str()))
                .map(|t| t.spec.key.clone())
                .collect();
            *self.index.write().expect("lock poisoned") = Index::new(next);
            self.version
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            removed
        };
        for id in &removed {
            self.store
                .delete_endpoint(id)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(removed)
    }

    /// Changes the endpoint list (and what follows from it) in one step.
    fn edit<R>(&self, f: impl FnOnce(&mut Vec<Arc<Target>>) -> R) -> R {
        let mut index = self.index.write().expect("lock poisoned");
        let r = f(&mut index.targets);
        index.derive();
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        r
    }

    /// Ids of the endpoints that want an `event` that came in on `route`,
    /// found through the index (by route and event name, then prefixes),
    /// so the cost follows the endpoints that match, not all of them.
    pub fn matching(&self, route: &str, event: &str, json: Option<&Value>) -> Arc<[String]> {
        let index = self.index.read().expect("lock poisoned");
        let kind = (route.to_string(), event.to_string());
        let known = index
            .matched
            .lock()
            .expect("lock poisoned")
            .kinds
            .get(&kind)
            .cloned();
        let matched = known.unwrap_or_else(|| {
            let (mut always, mut filtered) = (Vec::new(), Vec::new());
            for i in index.candidates(route, event) {
                let spec = &index.targets[i].spec;
                if spec.filter.is_some() {
                    filtered.push(i);
                } else if spec.wants(route, event, None) {
                    always.push(spec.key.clone());
                }
            }
            let matched = Matched {
                always: always.into(),
                filtered,
            };
            let mut kept = index.matched.lock().expect("lock poisoned");
            let ids = matched.always.len() + matched.filtered.len();
            if kept.kinds.len() >= MATCHED_KINDS || kept.ids + ids > MATCHED_IDS {
                *kept = Kept::default();
            }
            if ids <= MATCHED_IDS && kept.kinds.insert(kind, matched.clone()).is_none() {
                kept.ids += ids;
            }
            matched
        });
        if matched.filtered.is_empty() {
            return matched.always;
        }
        // In catalog order, as without filters.
        let mut places: Vec<usize> = matched
            .filtered
            .iter()
            .copied()
            .filter(|&i| index.targets[i].spec.wants(route, event, json))
            .collect();
        places.extend(
            matched
                .always
                .iter()
                .filter_map(|k| index.by_key.get(k).copied()),
        );
        places.sort_unstable();
        places
            .into_iter()
            .map(|i| index.targets[i].spec.key.clone())
            .collect()
    }

    /// Bumped by every change of the endpoint list or of an endpoint.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What the endpoints that may take events of `route` need of a request.
    pub fn needs(&self, route: &str) -> Needs {
        let index = self.index.read().expect("lock poisoned");
        let own = index.by_route.get(route).copied().unwrap_or_default();
        Needs {
            json: own.json || index.any_route.json,
            request_headers: own.request_headers || index.any_route.request_headers,
        }
    }

    /// The routes of the running configuration with their event catalogs.
    pub fn event_types(&self) -> Arc<RouteCatalogs> {
        self.egress.read().expect("lock poisoned").routes.clone()
    }

    /// The outbound connection budget (for metrics and tests).
    pub fn budget(&self) -> Arc<Budget> {
        self.egress.read().expect("lock poisoned").budget.clone()
    }

    /// The `[delivery]` policy an endpoint has where it sets nothing.
    pub fn defaults(&self) -> DeliveryConfig {
        self.egress.read().expect("lock poisoned").defaults.clone()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Target>> {
        let index = self.index.read().expect("lock poisoned");
        index.by_key.get(key).map(|&i| index.targets[i].clone())
    }

    pub fn all(&self) -> Vec<Arc<Target>> {
        self.index.read().expect("lock poisoned").targets.clone()
    }

    /// How many API endpoints there are, and how many of them `owner` made.
    pub fn api_counts(&self, owner: Option<&str>) -> (usize, usize) {
        let index = self.index.read().expect("lock poisoned");
        let api = index
            .targets
            .iter()
            .filter(|t| t.spec.origin == Origin::Api);
        let mine = api
            .clone()
            .filter(|t| owner.is_some() && t.spec.owner.as_deref() == owner)
            .count();
        (api.count(), mine)
    }

    /// Makes an API endpoint `id` from `body` (the API's endpoint body,
    /// without `secret`), signed with `secret`: stored, then delivered to.
    pub async fn create(
        &self,
        id: String,
        body: Value,
        secret: String,
        owner: Option<String>,
    ) -> Result<Arc<Target>, CatalogError> {
        let now = now_ms();
        let record = EndpointRecord {
            id,
            origin: Origin::Api,
            route: None,
            url: String::new(),
            owner,
            created_at_ms: now,
            updated_at_ms: now,
            secrets: vec![StoredSecret {
                secret,
                expires_at_ms: None,
            }],
            disabled_reason: None,
            tests: Vec::new(),
            spec: body,
        };
        let spec = self
            .egress
            .read()
            .expect("lock poisoned")
            .compile_new(&record)
            .map_err(CatalogError::Invalid)?;
        self.store.put_endpoint(&record).await?;
        let target = {
            let egress = self.egress.read().expect("lock poisoned");
            Arc::new(Target::new(spec, record, &egress, Counters::default()))
        };
        // Config endpoints in file order, then API ones by id.
        self.edit(|targets| {
            let at = targets.partition_point(|t| {
                t.spec.origin == Origin::Config || t.spec.key < target.spec.key
            });
            targets.insert(at, target.clone())
        });
        Ok(target)
    }

    /// An API endpoint, or why not.
    fn api_target(&self, id: &str) -> Result<Arc<Target>, CatalogError> {
        let t = self
            .get(id)
            .ok_or_else(|| CatalogError::NotFound(id.to_string()))?;
        if t.spec.origin != Origin::Api {
            return Err(CatalogError::ReadOnly(id.to_string()));
        }
        Ok(t)
    }

    /// Stores `record` (a changed version of `old`'s) and swaps the
    /// endpoint's lane for one built from it, keeping counters and circuit.
    /// `changed`: its definition changed, so it is checked as a new one is.
    async fn replace(
        &self,
        old: &Target,
        record: EndpointRecord,
        changed: bool,
    ) -> Result<Arc<Target>, CatalogError> {
        let spec = {
            let egress = self.egress.read().expect("lock poisoned");
            if changed {
                egress.compile_new(&record)
            } else {
                egress.compile(&record)
            }
        }
        .map_err(CatalogError::Invalid)?;
        self.store.put_endpoint(&record).await?;
        let target = {
            let egress = self.egress.read().expect("lock poisoned");
            Arc::new(old.carried(spec, record, &egress))
        };
        self.edit(|targets| {
            let i = targets.iter().position(|t| t.spec.key == old.spec.key);
            i.map(|i| targets[i] = target.clone())
        })
        .ok_or_else(|| CatalogError::NotFound(old.spec.key.clone()))?;
        Ok(target)
    }

    /// Applies a merge patch of the API's endpoint body to an API endpoint.
    /// A header value `"***"` keeps the current value.
    pub async fn update(&self, id: &str, patch: &Value) -> Result<Arc<Target>, CatalogError> {
        let old = self.api_target(id)?;
        let mut patch = patch.clone();
        if let Some(headers) = patch.get_mut("headers").and_then(Value::as_object_mut) {
            headers.retain(|_, v| v != "***");
        }
        let mut record = old.record();
        merge_patch(&mut record.spec, &patch);
        if record.spec.get("enabled") == Some(&Value::Bool(true)) {
            record.disabled_reason = None;
        }
        record.updated_at_ms = now_ms();
        let target = self.replace(&old, record, true).await?;
        if target.spec.enabled {
            // Deliveries that waited while it was paused are due again.
            self.store.new_work().notify_one();
        }
        Ok(target)
    }

    /// Removes an API endpoint; its pending deliveries are cancelled.
    pub async fn delete(&self, id: &str, reason: &str) -> Result<usize, CatalogError> {
        self.api_target(id)?;
        self.edit(|targets| targets.retain(|t| t.spec.key != id));
        self.store.delete_endpoint(id).await?;
        Ok(self.store.cancel_all(id, reason).await?)
    }

    /// Gives an API endpoint a new secret (returned); the ones it had sign
    /// on for `grace`.
    pub async fn rotate(
        &self,
        id: &str,
        secret: String,
        grace: Duration,
    ) -> Result<(Arc<Target>, u64), CatalogError> {
        let old = self.api_target(id)?;
        let now = now_ms();
        let until = now + grace.as_millis() as u64;
        let mut record = old.record();
        let mut secrets = vec![StoredSecret {
            secret,
            expires_at_ms: None,
        }];
        for s in &record.secrets {
            let end = s.expires_at_ms.map_or(until, |e| e.min(until));
            if end > now {
                secrets.push(StoredSecret {
                    secret: s.secret.clone(),
                    expires_at_ms: Some(end),
                });
            }
        }
        record.secrets = secrets;
        record.updated_at_ms = now;
        Ok((self.replace(&old, record, false).await?, until))
    }

    /// The receiver said `410 Gone`: the API endpoint is disabled, and its
    /// pending deliveries are cancelled with `reason`. Config endpoints are
    /// the file's to change; for them this does nothing.
    pub async fn disable_gone(&self, id: &str, reason: &str) -> Result<usize, CatalogError> {
        let old = match self.api_target(id) {
            Ok(t) => t,
            Err(CatalogError::ReadOnly(_) | CatalogError::NotFound(_)) => return Ok(0),
            Err(e) => return Err(e),
        };
        if old.spec.gone {
            return Ok(0);
        }
        let mut record = old.record();
        merge_patch(&mut record.spec, &serde_json::json!({"enabled": false}));
        record.disabled_reason = Some(reason.to_string());
        record.updated_at_ms = now_ms();
        self.replace(&old, record, false).await?;
        Ok(self.store.cancel_all(id, reason).await?)
    }

    /// Keeps a test send in the endpoint's record (the last few).
    pub async fn record_test(&self, id: &str, test: TestSend) -> Result<(), CatalogError> {
        let target = self
            .get(id)
            .ok_or_else(|| CatalogError::NotFound(id.to_string()))?;
        let record = {
            let mut r = target.record.lock().expect("lock poisoned");
            r.tests.insert(0, test);
            r.tests.truncate(KEPT_TESTS);
            r.clone()
        };
        self.store.put_endpoint(&record).await?;
        Ok(())
    }

    /// Takes the API endpoints as the store has them now: another relay
    /// of a shared store made, changed or removed some. Endpoints this
    /// relay already has, unchanged, keep their lanes; changed ones keep
    /// their counters and circuit. Nothing is cancelled: the relay that
    /// removed an endpoint did that. Returns how many changed.
    pub async fn sync(&self) -> Result<usize, StoreError> {
        let stored = self.store.endpoints().await?;
        let current: HashMap<String, Arc<Target>> = self
            .all()
            .into_iter()
            .filter(|t| t.spec.origin == Origin::Api)
            .map(|t| (t.spec.key.clone(), t))
            .collect();
        // What tells two versions of one record apart.
        let mark = |r: &EndpointRecord| {
            (
                r.updated_at_ms,
                r.disabled_reason.clone(),
                r.tests.first().map(|t| t.at_ms),
            )
        };
        let wanted: Vec<EndpointRecord> = stored
            .into_iter()
            .filter(|r| r.origin == Origin::Api)
            .collect();
        let mut fresh_counters = HashMap::new();
        for r in wanted.iter().filter(|r| !current.contains_key(&r.id)) {
            fresh_counters.insert(r.id.clone(), self.store.counters(&r.id).await?);
        }
        let ids: HashSet<&str> = wanted.iter().map(|r| r.id.as_str()).collect();
        let egress = self.egress.read().expect("lock poisoned");
        let mut changes: Vec<Arc<Target>> = Vec::new();
        for record in &wanted {
            let old = current.get(&record.id);
            if old.is_some_and(|t| mark(&t.record()) == mark(record)) {
                continue;
            }
            let spec = match egress.compile(record) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!(endpoint = %Escaped(&record.id), field = %e.field, error = %Escaped(&e.reason), "endpoint from the shared store is unusable here; skipped");
                    continue;
                }
            };
            changes.push(Arc::new(match old {
                Some(t) => t.carried(spec, record.clone(), &egress),
                None => {
                    let c = fresh_counters.remove(&record.id).unwrap_or_default();
                    Target::new(spec, record.clone(), &egress, c)
                }
            }));
        }
        drop(egress);
        let gone = current.keys().filter(|k| !ids.contains(k.as_str())).count();
        if changes.is_empty() && gone == 0 {
            return Ok(0);
        }
        let n = changes.len() + gone;
        self.edit(|targets| {
            targets
                .retain(|t| t.spec.origin == Origin::Config || ids.contains(t.spec.key.as_str()));
            for target in changes {
                match targets.iter().position(|t| t.spec.key == target.spec.key) {
                    Some(i) => targets[i] = target,
                    None => {
                        let at = targets.partition_point(|t| {
                            t.spec.origin == Origin::Config || t.spec.key < target.spec.key
                        });
                        targets.insert(at, target);
                    }
                }
            }
        });
        // Deliveries of an endpoint resumed elsewhere are due again.
        self.store.new_work().notify_one();
        Ok(n)
    }

    /// Adds what each endpoint counted since the last save to its saved
    /// counters. On a shared store, every relay adds its own, so the saved
    /// counters are the fleet's.
    pub async fn save_counters(&self) -> Result<(), StoreError> {
        for t in self.all() {
            if let Some((delta, own)) = t.lane.take_unsaved() {
                match self.store.add_counters(&t.spec.key, &delta).await {
                    Ok(totals) => t.lane.saved(own, totals),
                    Err(e) => {
                        t.lane.unsaved();
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads what the other relays of a shared store counted, so every
    /// relay shows the fleet's counters, and which circuits they opened.
    pub async fn refresh_counters(&self) -> Result<(), StoreError> {
        let all = self.store.all_counters().await?;
        for (key, totals) in all {
            if let Some(t) = self.get(&key) {
                t.lane.refresh(totals);
            }
        }
        // And the circuits other relays opened or closed.
        let open: HashMap<String, u64> = self.store.circuits().await?.into_iter().collect();
        for t in self.all() {
            t.lane.fleet_circuit(open.get(&t.spec.key).copied());
        }
        Ok(())
    }
}

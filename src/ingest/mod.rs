//! The ingest listener: where the LMS posts its webhooks.
//!
//! Order of checks: source allowlist (403: the listener answers a
//! connection from outside `ingest.allow` right after accepting it, without
//! reading the request, and counts it; a request on a connection accepted
//! before a reload narrowed the list gets 403 here), per-source rate (429), method (405), route (404), body size
//! (413), event template (400), store (503).
//! Which targets get a delivery (their `events` and `filter`) is decided
//! here, where the body's JSON is at hand; dispatch only sees the result.
//! Invariant: a 202 is sent only after `Store::accept` returned, that is after
//! the flush that covers this event. Every refusal is a JSON error body.
//!
//! Every request leaves a record in the inbound log: accepted and duplicate
//! ones with the event (`Store::accept` writes it), refused ones with their
//! status and reason, at most `REFUSAL_RECORDS` a second, so a flood of
//! refused requests cannot fill the disk (every refusal is counted in
//! `hookrelay_events_rejected_total`). Refusals are also logged, at most
//! `REFUSALS_PER_SECOND` lines a second, so a flood cannot fill the journal.
//!
//! Proxy mode (`ingest.proxy`): an HTTP/1 absolute-form request
//! (`POST http://host/path`) is matched against the routes that name a
//! `host`, and is stored with its URL, which the route's implicit `origin`
//! target delivers to (over https if the route upgrades). `CONNECT` is handed
//! to [`tunnel`] and never stored. Origin-form requests are routed by
//! path as usual.
//!
//! The room: [`route`] (path patterns, value templates, event patterns,
//! proxy hosts), [`filter`] (target filters on the JSON body), [`headers`]
//! (what is kept and forwarded), [`router`] (a config's routes, ready to
//! match), [`tunnel`] (`CONNECT`), [`error`] (refusals and their statuses).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::json;

use crate::catalog::Catalog;
use crate::config::{Config, IngestConfig};
use crate::deliver::egress::Policy;
use crate::rate::{Rate, Throttle};
use crate::server::json_response;
use crate::store::{now_ms, EventMeta, Inbound, NewEvent, Outcome, Store};
use crate::telemetry::log::Escaped;
use crate::telemetry::Metrics;

pub mod error;
pub mod filter;
pub mod headers;
pub mod route;
pub mod router;
pub mod tunnel;

pub use error::IngestError;
use headers::{kept_headers, other_headers};
use route::Context;
use router::Router;
use tunnel::Tunnels;

/// Refusal log lines per second (and burst); the rest are counted and the
/// count is given on the next line logged.
const REFUSALS_PER_SECOND: Rate = Rate::of(5, 20);

/// Refused requests recorded in the inbound log per second (and burst).
const REFUSAL_RECORDS: Rate = Rate::of(20, 200);

/// What a config decides about ingest; replaced whole on reload.
struct Settings {
    router: Router,
    allow: Vec<ipnet::IpNet>,
    rate: Rate,
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    proxy: bool,
    tunnels: Tunnels,
}

impl Settings {
    /// Settings from `config`; the rate limiter (and its state) is kept
    /// from `old` when the rate did not change.
    fn new(config: &Config, old: Option<&Settings>) -> Settings {
        let c: &IngestConfig = &config.ingest;
        let limiter = match old {
            Some(o) if o.rate == c.rate => o.limiter.clone(),
            _ => Arc::new(RateLimiter::dashmap(c.rate.quota())),
        };
        Settings {
            router: Router::new(config),
            allow: c.allow.clone(),
            rate: c.rate,
            limiter,
            max_body_bytes: c.max_body_bytes,
            body_read_timeout: c.body_read_timeout,
            proxy: c.proxy,
            tunnels: Tunnels::new(
                c.connect_allow.clone(),
                Policy::new(&config.egress),
                config.delivery.connect_timeout,
                c.max_connections,
            ),
        }
    }

    /// Whether `source` (canonical) is inside `ingest.allow`.
    fn allows(&self, source: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&source))
    }
}

/// The ingest service: shared by every connection of the ingest listener.
pub struct Ingest {
    settings: RwLock<Arc<Settings>>,
    catalog: Arc<Catalog>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    refusal_log: Throttle,
    refusal_records: Throttle,
}

impl Ingest {
    pub fn new(
        config: &Config,
        catalog: Arc<Catalog>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Ingest {
        Ingest {
            settings: RwLock::new(Arc::new(Settings::new(config, None))),
            catalog,
            store,
            metrics,
            refusal_log: Throttle::new(REFUSALS_PER_SECOND),
            refusal_records: Throttle::new(REFUSAL_RECORDS),
        }
    }

    /// Takes routes and limits from a new config; requests under way finish
    /// with the settings they started with.
    pub fn reload(&self, config: &Config) {
        let mut settings = self.settings.write().expect("lock poisoned");
        *settings = Arc::new(Settings::new(config, Some(&settings)));
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings.read().expect("lock poisoned").clone()
    }

    /// Whether a connection from `source` is served: inside `ingest.allow`.
    /// The listener asks this right after `accept()` and answers a refused
    /// connection with 403 unread; the refusal is counted as
    /// `source_not_allowed`.
    pub fn admits(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        if self.settings().allows(source) {
            return true;
        }
        self.metrics.rejected("source_not_allowed");
        if let Some(suppressed) = self.refusal_log.admit() {
            tracing::warn!(%source, suppressed, "ingest refused a connection from a source outside ingest.allow");
        }
        false
    }

    /// Forgets rate-limit state of sources that are back to a full bucket,
    /// so the key set stays bounded by recently active sources.
    pub fn evict_idle_sources(&self) {
        let s = self.settings();
        s.limiter.retain_recent();
        s.limiter.shrink_to_fit();
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        self.metrics.events_received.inc();
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let mut seen = Seen::default();
        match self.accept(req, peer, &mut seen).await {
            Ok(resp) => resp,
            Err(e) => {
                let (status, code) = e.status();
                self.metrics.rejected(code);
                let record = Inbound {
                    at_ms: now_ms(),
                    source: peer.ip().to_canonical().to_string(),
                    method,
                    path,
                    route: seen.route,
                    event_type: seen.event_type,
                    outcome: Outcome::Rejected,
                    status: status.as_u16(),
                    code: Some(code.to_string()),
                    reason: Some(e.public_message()),
                    deliveries: 0,
                    event: None,
                };
                self.log_refusal(&record);
                // A store that cannot take the record (full, failing) has
                // already made this a 503; the answer does not wait on it.
                if self.refusal_records.admit().is_some() {
                    let _ = self.store.record_inbound(&record).await;
                }
                e.into_response()
            }
        }
    }

    fn log_refusal(&self, r: &Inbound) {
        let Some(suppressed) = self.refusal_log.admit() else {
            return;
        };
        tracing::warn!(
            source = %r.source,
            method = %r.method,
            path = %Escaped(&r.path),
            status = r.status,
            code = r.code.as_deref().unwrap_or(""),
            suppressed,
            "ingest refused a request"
        );
    }

    async fn accept(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        seen: &mut Seen,
    ) -> Result<Response<Full<Bytes>>, IngestError> {
        let settings = self.settings();
        let source = peer.ip().to_canonical();
        if !settings.allows(source) {
            return Err(IngestError::SourceNotAllowed(source));
        }
        if let Err(not_until) = settings.limiter.check_key(&source) {
            return Err(IngestError::RateLimited(
                not_until.wait_time_from(DefaultClock::default().now()),
            ));
        }
        if settings.proxy && req.method() == Method::CONNECT {
            return Ok(settings.tunnels.open(req).await?);
        }
        if req.method() != Method::POST {
            return Err(IngestError::MethodNotAllowed(req.method().clone()));
        }
        let path = req.uri().path().to_string();
        let (route, captures, url) = if settings.proxy && is_absolute_form(&req) {
            let uri = req.uri();
            let (Some("http"), Some(host)) = (uri.scheme_str(), uri.host()) else {
                return Err(IngestError::BadProxyTarget(uri.to_string()));
            };
            let port = uri.port_u16().unwrap_or(80);
            let (route, captures) = settings
                .router
                .find_proxy(host, port, &path)
                .ok_or_else(|| IngestError::NoRoute(uri.to_string()))?;
            let url = relay_url(uri, route.upgrade_https)
                .ok_or_else(|| IngestError::BadProxyTarget(uri.to_string()))?;
            (route, captures, Some(url))
        } else {
            let (route, captures) = settings
                .router
                .find(&path)
                .ok_or(IngestError::NoRoute(path))?;
            (route, captures, None)
        };
        seen.route = Some(route.name.clone());
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > settings.max_body_bytes as u64) {
            return Err(IngestError::TooLarge(settings.max_body_bytes));
        }
        let (parts, body) = req.into_parts();
        let body = read_body(body, settings.max_body_bytes, settings.body_read_timeout).await?;

        let needs = self.catalog.needs(&route.name);
        let json: Option<serde_json::Value> = if route.needs_json() || needs.json {
            serde_json::from_slice(&body).ok()
        } else {
            None
        };
        let cx = Context {
            path: &captures,
            headers: &parts.headers,
            json: json.as_ref(),
        };
        let event_type = route.event.render(&cx).map_err(IngestError::BadPayload)?;
        seen.event_type = Some(event_type.clone());
        // A request without a dedup key is simply not deduplicated.
        let dedup = route
            .dedup
            .as_ref()
            .and_then(|t| t.render(&cx).ok())
            .map(|key| (route.name.clone(), key));
        let targets = self
            .catalog
            .matching(&route.name, &event_type, json.as_ref());
        let meta = EventMeta {
            received_at_ms: now_ms(),
            source: source.to_string(),
            route: route.name.clone(),
            event_type,
            headers: kept_headers(&parts.headers, &route.forward_headers),
            request_headers: if needs.request_headers {
                other_headers(&parts.headers, &route.forward_headers)
            } else {
                Vec::new()
            },
            url,
        };
        let accepted = self
            .store
            .accept(NewEvent {
                meta,
                body,
                targets,
                dedup,
                path: parts.uri.path().to_string(),
            })
            .await?;
        let mut out = json!({"id": accepted.id.to_string(), "deliveries": accepted.deliveries});
        if accepted.duplicate {
            out["duplicate"] = json!(true);
            self.metrics.events_duplicate.inc();
        } else {
            self.metrics.accepted(&route.name);
        }
        Ok(json_response(StatusCode::ACCEPTED, out))
    }
}

/// What a request was found to be before it was refused.
#[derive(Default)]
struct Seen {
    route: Option<String>,
    event_type: Option<String>,
}

async fn read_body(body: Incoming, max: usize, timeout: Duration) -> Result<Bytes, IngestError> {
    let limited = Limited::new(body, max);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(IngestError::BodyTimeout(timeout)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(IngestError::TooLarge(max)),
        Ok(Err(e)) => Err(IngestError::BadBody(e.to_string())),
    }
}

/// An HTTP/1 request in absolute form (`POST http://host/path`), as a
/// client sends to its proxy. HTTP/2 requests always carry a scheme and
/// authority, so they are never proxy requests here.
fn is_absolute_form<B>(req: &Request<B>) -> bool {
    req.version() < http::Version::HTTP_2 && req.uri().scheme().is_some()
}

/// Where a proxy request is relayed: its own URL, switched to https (with
/// the default port) when the route upgrades.
fn relay_url(uri: &http::Uri, upgrade_https: bool) -> Option<String> {
    if !upgrade_https {
        return Some(uri.to_string());
    }
    let authority = uri.authority()?;
    let authority = match authority.port_u16() {
        Some(80) | None => authority.host().to_string(),
        Some(p) => format!("{}:{p}", authority.host()),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("https://{authority}{path}"))
}

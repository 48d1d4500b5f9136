//! The admin listener: REST Hooks subscriptions, targets and their counters,
//! the event and delivery log, repair (re-queue), test sends, health.
//!
//! Invariants: every path but `/healthz`, `/readyz` and `/metrics` needs a bearer token
//! from `admin.tokens_file`, compared in constant time; sources outside
//! `admin.allow` get 403 before anything else. A subscription's secret is in
//! the answer to its creation and in no other answer or log line. Errors map
//! to HTTP in one place (`AdminError::into_response`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use base64::Engine;
use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::catalog::{Catalog, Target};
use crate::config::{Config, TargetUrl};
use crate::ingest::json_response;
use crate::route::EventPattern;
use crate::shape::Shaped;
use crate::sign::Secret;
use crate::store::{
    now_ms, Attempt, Counters, Delivery, DeliveryId, EventId, EventMeta, State, Store, StoreError,
    Subscription,
};
use crate::telemetry::Metrics;

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;
/// Page size of `GET /api/deliveries`: default and most.
const PAGE_DEFAULT: usize = 50;
const PAGE_MAX: usize = 1000;
/// Records one page request may look at before answering with a cursor.
const PAGE_SCAN: usize = 100_000;
/// Deliveries re-queued per step of a bulk retry; the relay serves other
/// work between steps.
const RETRY_STEP: usize = 500;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("source {0} may not use the admin API")]
    SourceNotAllowed(std::net::IpAddr),
    #[error("a valid bearer token is needed")]
    Unauthorized,
    #[error("{0} not found")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl AdminError {
    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, code) = match &self {
            AdminError::SourceNotAllowed(_) => (StatusCode::FORBIDDEN, "source_not_allowed"),
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AdminError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        };
        if let AdminError::Store(e) = &self {
            tracing::error!(error = %e, "admin request failed: store");
        }
        let mut resp = json_response(
            status,
            json!({"error": {"code": code, "message": self.to_string()}}),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(format!("{field}: {reason}"))
}

/// Bearer tokens, kept as SHA-256 digests so comparing them takes the same
/// time whatever the candidate.
pub struct Tokens(Vec<[u8; 32]>);

impl Tokens {
    /// Reads one token a line; blank lines and `#` comments are skipped. A
    /// missing file gives no tokens (every API call is then refused).
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %path.display(), "no admin tokens file: the admin API refuses every call");
                return Ok(Tokens(Vec::new()));
            }
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        let tokens: Vec<[u8; 32]> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect();
        if tokens.is_empty() {
            tracing::warn!(file = %path.display(), "admin tokens file has no tokens: the admin API refuses every call");
        }
        Ok(Tokens(tokens))
    }

    fn accepts(&self, candidate: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        // Look at every token, so the time taken does not tell which matched.
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |acc, t| acc | t.ct_eq(&digest))
            .into()
    }
}

/// What a config decides about the admin API; replaced whole on reload.
struct Settings {
    tokens: Tokens,
    allow: Vec<ipnet::IpNet>,
    routes: Vec<String>,
    https_only: bool,
}

impl Settings {
    fn new(config: &Config, tokens: Tokens) -> Settings {
        Settings {
            tokens,
            allow: config.admin.allow.clone(),
            routes: config.routes.iter().map(|r| r.name.clone()).collect(),
            https_only: config.egress.https_only,
        }
    }
}

/// The admin service, shared by every admin connection.
pub struct Admin {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    settings: RwLock<Arc<Settings>>,
}

impl Admin {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
        tokens: Tokens,
    ) -> Admin {
        Admin {
            store,
            catalog,
            metrics,
            settings: RwLock::new(Arc::new(Settings::new(config, tokens))),
        }
    }

    /// Takes tokens, the allowlist and route names from a new config.
    pub fn reload(&self, config: &Config, tokens: Tokens) {
        *self.settings.write().expect("lock poisoned") = Arc::new(Settings::new(config, tokens));
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings.read().expect("lock poisoned").clone()
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        match self.route(req, peer).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Full<Bytes>>, AdminError> {
        let source = peer.ip().to_canonical();
        if !self.settings().allow.iter().any(|n| n.contains(&source)) {
            return Err(AdminError::SourceNotAllowed(source));
        }
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method().clone();
        match (method.clone(), segments.as_slice()) {
            (Method::GET, ["healthz"]) => return Ok(ok(json!({"status": "ok"}))),
            (Method::GET, ["readyz"]) => return Ok(self.ready()),
            (Method::GET, ["metrics"]) => return Ok(self.metrics()),
            _ => {}
        }
        self.authorize(&req)?;
        let query = req.uri().query().unwrap_or("").to_string();
        match (method, segments.as_slice()) {
            (Method::POST, ["api", "hooks"]) => self.subscribe(read_json(req).await?),
            (Method::GET, ["api", "hooks"]) => self.list_hooks(),
            (Method::GET, ["api", "hooks", id]) => self.show_hook(id),
            (Method::DELETE, ["api", "hooks", id]) => self.unsubscribe(id).await,
            (Method::POST, ["api", "hooks", id, "test"]) => self.test_send(id).await,
            (Method::GET, ["api", "targets"]) => Ok(ok(self.targets())),
            (Method::GET, ["api", "events", id]) => self.event(id),
            (Method::GET, ["api", "deliveries"]) => self.deliveries(&query),
            (Method::POST, ["api", "deliveries", "retry"]) => {
                self.retry_many(read_json(req).await?).await
            }
            (Method::POST, ["api", "deliveries", id, "retry"]) => self.retry_one(id),
            (_, ["api", "hooks"])
            | (_, ["api", "hooks", _])
            | (_, ["api", "hooks", _, "test"])
            | (_, ["api", "targets"])
            | (_, ["api", "events", _])
            | (_, ["api", "deliveries"])
            | (_, ["api", "deliveries", "retry"])
            | (_, ["api", "deliveries", _, "retry"]) => Err(AdminError::MethodNotAllowed),
            _ => Err(AdminError::NotFound(format!("path {path}"))),
        }
    }

    fn authorize(&self, req: &Request<Incoming>) -> Result<(), AdminError> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AdminError::Unauthorized)?;
        if self.settings().tokens.accepts(token.trim()) {
            Ok(())
        } else {
            Err(AdminError::Unauthorized)
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let text = self.metrics.render(&self.store, &self.catalog);
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    fn ready(&self) -> Response<Full<Bytes>> {
        match self.store.check_writable() {
            Ok(()) => ok(json!({"status": "ready"})),
            Err(e) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "reason": e.to_string()}),
            ),
        }
    }

    // === subscriptions ===

    fn subscribe(&self, body: Value) -> Result<Response<Full<Bytes>>, AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NewHook {
            target_url: Option<String>,
            event: Option<String>,
            secret: Option<String>,
            route: Option<String>,
        }
        let req: NewHook = serde_json::from_value(body).map_err(|e| invalid("body", e))?;
        let url = req
            .target_url
            .ok_or_else(|| invalid("target_url", "is required"))?;
        let parsed = TargetUrl::parse(&url).map_err(|e| invalid("target_url", e))?;
        let settings = self.settings();
        if settings.https_only && !parsed.is_https() {
            return Err(invalid(
                "target_url",
                "egress.https_only is set and this URL is http",
            ));
        }
        let event = req.event.ok_or_else(|| invalid("event", "is required"))?;
        EventPattern::parse(event.trim()).map_err(|e| invalid("event", e))?;
        let secret = match req.secret {
            Some(s) => {
                Secret::parse(&s).map_err(|e| invalid("secret", e))?;
                s
            }
            None => new_secret(),
        };
        if let Some(route) = &req.route {
            if !settings.routes.contains(route) {
                return Err(invalid("route", format!("no route is named `{route}`")));
            }
        }
        let sub = Subscription {
            id: format!("hook_{}", ulid::Ulid::new()),
            target_url: url,
            event: event.trim().to_string(),
            secret,
            route: req.route,
            created_at_ms: now_ms(),
        };
        self.store.put_subscription(&sub)?;
        self.catalog
            .add_subscription(&sub)
            .map_err(AdminError::Invalid)?;
        tracing::info!(hook = %sub.id, url = %sub.target_url, event = %sub.event, "subscribed");
        let mut out = hook_json(&sub, None);
        out["secret"] = json!(sub.secret);
        Ok(json_response(StatusCode::CREATED, out))
    }

    fn subscription(&self, id: &str) -> Result<(Subscription, Arc<Target>), AdminError> {
        let not_found = || AdminError::NotFound(format!("hook {id}"));
        let sub = self
            .store
            .subscriptions()?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(not_found)?;
        let target = self.catalog.get(id).ok_or_else(not_found)?;
        Ok((sub, target))
    }

    fn list_hooks(&self) -> Result<Response<Full<Bytes>>, AdminError> {
        let hooks: Vec<Value> = self
            .store
            .subscriptions()?
            .iter()
            .map(|s| hook_json(s, self.catalog.get(&s.id).as_deref()))
            .collect();
        Ok(ok(json!({ "hooks": hooks })))
    }

    fn show_hook(&self, id: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let (sub, target) = self.subscription(id)?;
        Ok(ok(hook_json(&sub, Some(&target))))
    }

    async fn unsubscribe(&self, id: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        self.subscription(id)?;
        self.catalog.remove(id);
        self.store.delete_subscription(id)?;
        let (store, key) = (self.store.clone(), id.to_string());
        let cancelled =
            tokio::task::spawn_blocking(move || store.cancel_all(&key, "subscription deleted"))
                .await
                .map_err(|e| AdminError::Conflict(e.to_string()))??;
        tracing::info!(hook = %id, cancelled, "unsubscribed");
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }

    /// Sends a synthetic, signed event to the hook now; not stored, not counted.
    async fn test_send(&self, id: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let (sub, target) = self.subscription(id)?;
        let event_id = format!("evt_test_{}", ulid::Ulid::new());
        let body = json!({
            "type": "hookrelay.test",
            "id": event_id,
            "hook": sub.id,
            "event": sub.event,
            "created_at": now_ms(),
        })
        .to_string();
        let timestamp = (now_ms() / 1000) as i64;
        let meta = EventMeta {
            received_at_ms: now_ms(),
            source: "admin".into(),
            route: String::new(),
            event_type: "hookrelay.test".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            request_headers: Vec::new(),
            url: None,
        };
        // Subscriptions send bodies as they are: no shaping to apply.
        let shaped = Shaped {
            body: Bytes::from(body),
            content_type: None,
        };
        let uri = target.spec.url.uri().clone();
        let request =
            crate::dispatch::build_request(&target, uri, &event_id, timestamp, &meta, shaped);
        let started = now_ms();
        let result = target
            .client
            .send(request, target.spec.policy.timeout)
            .await;
        let out = match result {
            Ok(reply) => json!({
                "event_id": event_id,
                "status": reply.status,
                "succeeded": target.spec.policy.success.contains(reply.status),
                "error": null,
                "duration_ms": reply.duration.as_millis() as u64,
                "excerpt": reply.excerpt,
            }),
            Err(e) => json!({
                "event_id": event_id,
                "status": null,
                "succeeded": false,
                "error": e.to_string(),
                "duration_ms": now_ms().saturating_sub(started),
                "excerpt": "",
            }),
        };
        Ok(ok(out))
    }

    // === targets, events, deliveries ===

    fn targets(&self) -> Value {
        let targets: Vec<Value> = self.catalog.all().iter().map(|t| target_json(t)).collect();
        json!({ "targets": targets })
    }

    fn event(&self, id: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let not_found = || AdminError::NotFound(format!("event {id}"));
        let event_id = EventId::parse(id).ok_or_else(not_found)?;
        let event = self.store.event(event_id)?.ok_or_else(not_found)?;
        let mut deliveries = Vec::new();
        for (did, d) in self.store.deliveries_of(event_id)? {
            let mut j = delivery_json(did, &d);
            let history: Vec<Value> = self.store.attempts(did)?.iter().map(attempt_json).collect();
            j["history"] = json!(history);
            deliveries.push(j);
        }
        let headers: serde_json::Map<String, Value> = event
            .meta
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let mut out = json!({
            "id": event.id.to_string(),
            "received_at": event.meta.received_at_ms,
            "source": event.meta.source,
            "route": event.meta.route,
            "type": event.meta.event_type,
            "headers": headers,
            "deliveries": deliveries,
        });
        match std::str::from_utf8(&event.body) {
            Ok(text) => out["body"] = json!(text),
            Err(_) => {
                out["body_base64"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(&event.body))
            }
        }
        Ok(ok(out))
    }

    fn deliveries(&self, query: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let mut state = None;
        let mut target = None;
        let mut after = None;
        let mut limit = PAGE_DEFAULT;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "state" => {
                    state = Some(State::parse(&v).ok_or_else(|| {
                        invalid(
                            "state",
                            "one of pending, in_flight, succeeded, dead, cancelled",
                        )
                    })?)
                }
                "target" => target = Some(v.into_owned()),
                "after" => {
                    after = Some(
                        DeliveryId::parse(&v)
                            .ok_or_else(|| invalid("after", "not a delivery id"))?,
                    )
                }
                "limit" => {
                    limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=PAGE_MAX).contains(n))
                        .ok_or_else(|| invalid("limit", format!("a number from 1 to {PAGE_MAX}")))?
                }
                other => return Err(invalid(other, "unknown query parameter")),
            }
        }
        let page = self
            .store
            .list_deliveries(state, target.as_deref(), after, limit, PAGE_SCAN)?;
        let list: Vec<Value> = page
            .deliveries
            .iter()
            .map(|(id, d)| delivery_json(*id, d))
            .collect();
        Ok(ok(json!({
            "deliveries": list,
            "next": page.next.map(|n| n.to_string()),
        })))
    }

    fn retry_one(&self, id: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let not_found = || AdminError::NotFound(format!("delivery {id}"));
        let did = DeliveryId::parse(id).ok_or_else(not_found)?;
        let d = self
            .store
            .requeue(did, "re-queued by hand")?
            .ok_or_else(not_found)?;
        if d.state == State::InFlight {
            return Err(AdminError::Conflict(format!(
                "delivery {id} is being attempted now"
            )));
        }
        if self.catalog.get(&d.target).is_none() {
            tracing::warn!(delivery = %id, target = %d.target, "re-queued for a removed target; it will be cancelled");
        }
        Ok(ok(delivery_json(did, &d)))
    }

    async fn retry_many(&self, body: Value) -> Result<Response<Full<Bytes>>, AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Bulk {
            state: Option<String>,
            target: Option<String>,
        }
        let req: Bulk = serde_json::from_value(body).map_err(|e| invalid("body", e))?;
        let state = req
            .state
            .as_deref()
            .map(|s| State::parse(s).ok_or_else(|| invalid("state", "not a delivery state")))
            .transpose()?
            .ok_or_else(|| invalid("state", "is required"))?;
        if !state.is_finished() {
            return Err(invalid(
                "state",
                "only dead, cancelled or succeeded deliveries are re-queued",
            ));
        }
        let mut total = 0;
        let mut from = None;
        loop {
            let (store, target) = (self.store.clone(), req.target.clone());
            let (n, next) = tokio::task::spawn_blocking(move || {
                store.requeue_batch(state, target.as_deref(), from, RETRY_STEP)
            })
            .await
            .map_err(|e| AdminError::Conflict(e.to_string()))??;
            total += n;
            match next {
                Some(n) => from = Some(n),
                None => break,
            }
            tokio::task::yield_now().await;
        }
        tracing::info!(retried = total, state = ?state, target = ?req.target, "bulk re-queue");
        Ok(ok(json!({ "retried": total })))
    }
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, body)
}

async fn read_json(req: Request<Incoming>) -> Result<Value, AdminError> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| invalid("body", format!("unreadable or over {MAX_BODY} bytes")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| invalid("body", format!("not JSON: {e}")))
}

/// A fresh Standard Webhooks secret: 32 random bytes.
fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

// === JSON shapes ===

fn counters_json(c: &Counters) -> Value {
    json!({
        "calls": c.calls,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "dead": c.dead,
        "last_status": c.last_status,
        "last_error": c.last_error,
        "last_at": c.last_at_ms,
    })
}

fn hook_json(sub: &Subscription, target: Option<&Target>) -> Value {
    let mut j = json!({
        "id": sub.id,
        "target_url": sub.target_url,
        "event": sub.event,
        "route": sub.route,
        "created_at": sub.created_at_ms,
    });
    if let Some(t) = target {
        j["counters"] = counters_json(&t.counters());
        j["circuit"] = json!(t.circuit_state());
    }
    j
}

fn target_json(t: &Target) -> Value {
    let events: Vec<String> = t.spec.events.iter().map(ToString::to_string).collect();
    json!({
        "key": t.spec.key,
        "origin": t.spec.origin,
        "route": t.spec.route,
        "url": t.spec.url.to_string(),
        "events": events,
        "counters": counters_json(&t.counters()),
        "circuit": t.circuit_state(),
    })
}

fn attempt_json(a: &Attempt) -> Value {
    json!({
        "at": a.at_ms,
        "duration_ms": a.duration_ms,
        "status": a.status,
        "error": a.error,
        "excerpt": a.excerpt,
    })
}

fn delivery_json(id: DeliveryId, d: &Delivery) -> Value {
    json!({
        "id": id.to_string(),
        "event": d.event.to_string(),
        "target": d.target,
        "state": d.state,
        "attempts": d.attempts,
        "next_at": (d.state == State::Pending).then_some(d.next_at_ms),
        "last": d.last.as_ref().map(attempt_json),
        "note": d.note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "# ops\nalpha-token\n\n  beta-token  \n").unwrap();
        let t = Tokens::load(&p).unwrap();
        assert!(t.accepts("alpha-token") && t.accepts("beta-token"));
        assert!(!t.accepts("alpha") && !t.accepts("") && !t.accepts("# ops"));
        let none = Tokens::load(&dir.path().join("missing")).unwrap();
        assert!(!none.accepts("alpha-token"));
    }

    #[test]
    fn generated_secrets_parse() {
        assert!(Secret::parse(&new_secret()).is_ok());
        assert_ne!(new_secret(), new_secret());
    }
}

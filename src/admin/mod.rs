//! The admin listener: endpoints (and their REST Hooks view), Send Test,
//! the event catalog, the inbound log, deliveries and repair, health.
//!
//! Invariants: a connection from outside `admin.allow` gets 403 as soon as
//! it is accepted (`allows_source`, answered by the listener), and so does
//! a request on a connection accepted before a reload narrowed the list;
//! every route the table does not mark `Open` needs a bearer token from
//! `admin.tokens_file`, compared in constant time, whose scope the route
//! allows (403 otherwise). A subscriber token sees only the endpoints it
//! made, no event body and no response excerpt. A secret is in the answer
//! to its creation (or rotation) and in no other answer or log line.
//! Errors map to HTTP in one place (`AdminError::into_response`). The
//! console makes its calls through [`Admin::call`]: the same table, scopes
//! and handlers, without the HTTP.
//!
//! The room: [`routes`] (the route table: 404, 405, `Allow` and each
//! route's scopes follow from it), [`endpoints`] (endpoints, Send Test,
//! event types, the inbound log), [`hooks`] (the REST Hooks view),
//! [`deliveries`] (targets, events, deliveries, re-queues), [`json`]
//! (answer shapes), [`tokens`], [`error`], and [`client`] (the CLI's side).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::server::json_response;
use crate::store::Store;
use crate::telemetry::{Format, Metrics};

pub mod client;
mod deliveries;
mod endpoints;
pub mod error;
mod hooks;
mod json;
pub mod routes;
pub mod tokens;

pub use error::AdminError;
use routes::{Access, Call, CallBody, Resolved, Route};
pub use tokens::{Grant, Scope, Tokens};

/// What a handler answers.
type Reply = Result<Response<Full<Bytes>>, AdminError>;

/// What a config decides about the admin API; replaced whole on reload.
struct Settings {
    allow: Vec<ipnet::IpNet>,
    max_endpoints: usize,
    max_endpoints_per_token: usize,
}

impl Settings {
    fn new(config: &Config) -> Settings {
        Settings {
            allow: config.admin.allow.clone(),
            max_endpoints: config.admin.max_endpoints,
            max_endpoints_per_token: config.admin.max_endpoints_per_token,
        }
    }
}

/// The tokens in force, and the file they came from (re-read when it changes).
struct TokenFile {
    path: PathBuf,
    stamp: Option<tokens::FileStamp>,
    tokens: Arc<Tokens>,
}

/// The admin service, shared by every admin connection.
pub struct Admin {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    settings: RwLock<Arc<Settings>>,
    tokens: Mutex<TokenFile>,
    /// What subscriber tokens have left of their test sends.
    test_sends: endpoints::TestSends,
    /// The route table, built once.
    table: Vec<Route>,
}

impl Admin {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
        tokens: Tokens,
    ) -> Admin {
        let path = config.admin.tokens_path(&config.base_dir);
        Admin {
            store,
            catalog,
            metrics,
            settings: RwLock::new(Arc::new(Settings::new(config))),
            tokens: Mutex::new(TokenFile {
                stamp: tokens::stamp(&path),
                path,
                tokens: Arc::new(tokens),
            }),
            test_sends: endpoints::TestSends::default(),
            table: routes::table(),
        }
    }

    /// Takes tokens, the allowlist, routes and caps from a new config.
    pub fn reload(&self, config: &Config, tokens: Tokens) {
        *self.settings.write().expect("lock poisoned") = Arc::new(Settings::new(config));
        let path = config.admin.tokens_path(&config.base_dir);
        *self.tokens.lock().expect("lock poisoned") = TokenFile {
            stamp: tokens::stamp(&path),
            path,
            tokens: Arc::new(tokens),
        };
    }

    /// Reads the tokens file again if it changed since it was last read
    /// (called every second); whether the tokens in force changed. A file
    /// that no longer parses is logged and the tokens in force stay.
    pub fn refresh_tokens(&self) -> bool {
        let path = {
            let file = self.tokens.lock().expect("lock poisoned");
            if tokens::stamp(&file.path) == file.stamp {
                return false;
            }
            file.path.clone()
        };
        let stamp = tokens::stamp(&path);
        let loaded = Tokens::load(&path);
        let mut file = self.tokens.lock().expect("lock poisoned");
        file.stamp = stamp;
        match loaded {
            Ok(t) => {
                tracing::info!(file = %path.display(), tokens = t.len(), "admin tokens file read again");
                file.tokens = Arc::new(t);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "admin tokens file does not parse; the tokens in force stay");
                false
            }
        }
    }

    fn current_tokens(&self) -> Arc<Tokens> {
        self.tokens.lock().expect("lock poisoned").tokens.clone()
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

    /// Source allowlist, then the route table, then the token.
    async fn route(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        if !self.allows_source(peer.ip()) {
            return Err(AdminError::SourceNotAllowed(peer.ip().to_canonical()));
        }
        let path = req.uri().path().to_string();
        let (route, params) = match routes::resolve(&self.table, req.method(), &path) {
            Resolved::Found(route, params) => (route, params),
            Resolved::WrongMethod(allow) => {
                return Err(AdminError::MethodNotAllowed {
                    method: req.method().to_string(),
                    allow,
                })
            }
            Resolved::NotFound => {
                return Err(AdminError::NotFound(format!(
                    "path {}",
                    path.trim_end_matches('/')
                )))
            }
        };
        let grant = match route.access {
            Access::Open => None,
            access => {
                let grant = self.authorize(&req)?;
                if !access.allows(grant.scope) {
                    return Err(AdminError::Forbidden(format!(
                        "a {} token may not call {} {}",
                        grant.scope, route.method, route.path
                    )));
                }
                Some(grant)
            }
        };
        let query = req.uri().query().unwrap_or("").to_string();
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let call = Call {
            body: CallBody::Http(req.into_body()),
            params,
            query,
            grant,
            accept,
        };
        route.call(self.clone(), call).await
    }

    /// Makes one API call in-process, as `who`, through the same route
    /// table, scope checks and handlers as a request over HTTP (the
    /// console's way in). Answers the status and the JSON body (`null`
    /// for an empty one).
    pub async fn call(
        self: &Arc<Self>,
        method: Method,
        path: &str,
        query: &str,
        body: Option<Value>,
        who: &Grant,
    ) -> Result<(StatusCode, Value), AdminError> {
        let Resolved::Found(route, params) = routes::resolve(&self.table, &method, path) else {
            return Err(AdminError::NotFound(format!("path {path}")));
        };
        if !route.access.allows(who.scope) {
            return Err(AdminError::Forbidden(format!(
                "a {} token may not call {} {}",
                who.scope, route.method, route.path
            )));
        }
        let call = Call {
            body: CallBody::Json(body.unwrap_or_else(|| json!({}))),
            params,
            query: query.to_string(),
            grant: Some(who.clone()),
            accept: None,
        };
        let resp = route.call(self.clone(), call).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, value))
    }

    /// Whether `who` may make the API call `method path` (the table's rule).
    pub fn may(&self, method: &Method, path: &str, who: &Grant) -> bool {
        match routes::resolve(&self.table, method, path) {
            Resolved::Found(route, _) => route.access.allows(who.scope),
            _ => false,
        }
    }

    /// The grant of a token of the tokens file in force, if it is one.
    pub fn grant_of(&self, token: &str) -> Option<Grant> {
        self.current_tokens().find(token)
    }

    /// Whether `source` is inside `admin.allow` (the console is held to it too).
    pub fn allows_source(&self, source: std::net::IpAddr) -> bool {
        let source = source.to_canonical();
        self.settings().allow.iter().any(|n| n.contains(&source))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Who the request's bearer token belongs to.
    fn authorize(&self, req: &Request<Incoming>) -> Result<Grant, AdminError> {
        let tokens = self.current_tokens();
        let refused = || AdminError::Unauthorized(tokens.problem().map(str::to_string));
        let value = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(refused)?;
        // The scheme is case-insensitive (RFC 9110).
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(refused)?;
        tokens.find(token).ok_or_else(refused)
    }

    /// The metrics in the format the scraper's `Accept` header prefers.
    fn metrics(&self, accept: Option<&str>) -> Response<Full<Bytes>> {
        let format = Format::from_accept(accept);
        let text = self.metrics.render(&*self.store, &self.catalog, format);
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(format.content_type()),
        );
        resp
    }

    /// Whether new events are taken, from what the store last found (no
    /// disk I/O per request, so probing it costs nothing).
    async fn ready(&self) -> Response<Full<Bytes>> {
        let health = self.store.health();
        match health.refusing {
            None => ok(json!({"status": "ready"})),
            Some((code, reason)) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "status": "not_ready",
                    "code": code,
                    "reason": reason,
                    "store_bytes": health.disk_bytes,
                    // Unknown (null) for a database on another host.
                    "free_bytes": (health.free_bytes != u64::MAX).then_some(health.free_bytes),
                }),
            ),
        }
    }
}

/// Every (method, path pattern) the admin API answers, from its route table.
pub fn operations() -> Vec<(String, String)> {
    routes::table()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect()
}

/// The most items one page of a listing holds.
const PAGE_MAX: usize = 1000;

/// A listing's `limit` query parameter.
fn page_limit(v: &str) -> Result<usize, AdminError> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=PAGE_MAX).contains(n))
        .ok_or_else(|| error::invalid("limit", format!("a number from 1 to {PAGE_MAX}")))
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, body)
}

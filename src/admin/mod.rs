//! The admin listener: REST Hooks subscriptions, targets and their counters,
//! the event and delivery log, repair (re-queue), test sends, health.
//!
//! Invariants: sources outside `admin.allow` get 403 before anything else;
//! every route the table marks `Token` needs a bearer token from
//! `admin.tokens_file`, compared in constant time. A subscription's secret
//! is in the answer to its creation and in no other answer or log line.
//! Errors map to HTTP in one place (`AdminError::into_response`).
//!
//! The room: [`routes`] (the route table: 404, 405 and `Allow` follow from
//! it), [`hooks`] (subscriptions and test sends), [`deliveries`] (targets,
//! events, deliveries, re-queues), [`json`] (answer shapes), [`tokens`],
//! [`error`], and [`client`] (the CLI's side of the API).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{header, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::server::json_response;
use crate::store::Store;
use crate::telemetry::Metrics;

pub mod client;
mod deliveries;
pub mod error;
mod hooks;
mod json;
pub mod routes;
pub mod tokens;

pub use error::AdminError;
use routes::{Access, Call, Resolved, Route};
pub use tokens::Tokens;

/// What a handler answers.
type Reply = Result<Response<Full<Bytes>>, AdminError>;

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
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    settings: RwLock<Arc<Settings>>,
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
        Admin {
            store,
            catalog,
            metrics,
            settings: RwLock::new(Arc::new(Settings::new(config, tokens))),
            table: routes::table(),
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

    /// Source allowlist, then the route table, then the token.
    async fn route(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let source = peer.ip().to_canonical();
        if !self.settings().allow.iter().any(|n| n.contains(&source)) {
            return Err(AdminError::SourceNotAllowed(source));
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
        if route.access == Access::Token {
            self.authorize(&req)?;
        }
        let query = req.uri().query().unwrap_or("").to_string();
        let call = Call { req, params, query };
        route.call(self.clone(), call).await
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
        let text = self.metrics.render(&*self.store, &self.catalog);
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    async fn ready(&self) -> Response<Full<Bytes>> {
        match self.store.check_writable().await {
            Ok(()) => ok(json!({"status": "ready"})),
            Err(e) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "reason": e.to_string()}),
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

fn ok(body: Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, body)
}

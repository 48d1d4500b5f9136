//! The admin API's route table: method + path pattern → handler, declared
//! once. A path that matches no pattern is 404; one that matches patterns
//! of other methods only is 405 with an `Allow` header from the table.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::admin::error::{invalid, AdminError};
use crate::admin::tokens::{Grant, Scope};
use crate::admin::{ok, Admin, Reply};

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

/// Who may call a route. Every access but `Open` needs a valid token;
/// `admin` tokens may call every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone the source allowlist lets in (health and metrics).
    Open,
    /// Reads: `admin` and `read` tokens.
    Read,
    /// Changes: `admin` tokens.
    Write,
    /// Reads a subscriber may make too, of what it made.
    ReadOwn,
    /// Changes a subscriber may make too, to what it made.
    WriteOwn,
}

impl Access {
    pub fn allows(self, scope: Scope) -> bool {
        match scope {
            Scope::Admin => true,
            Scope::Read => matches!(self, Access::Open | Access::Read | Access::ReadOwn),
            Scope::Subscriber => matches!(self, Access::Open | Access::ReadOwn | Access::WriteOwn),
        }
    }
}

/// A request as a handler gets it: the path's `{params}` in order
/// (percent-decoded), the query, and who is calling.
pub struct Call {
    pub body: CallBody,
    pub params: Vec<String>,
    pub query: String,
    pub grant: Option<Grant>,
    /// The request's `Accept` header: which format `/metrics` answers in.
    pub accept: Option<String>,
}

/// A call's body: still on the wire, or already JSON (a call the console
/// makes in-process, through the same table).
pub enum CallBody {
    Http(Incoming),
    Json(Value),
}

impl Call {
    /// The first path parameter (the table gives every route that reads it one).
    fn id(&self) -> String {
        let raw = self.params.first().map_or("", String::as_str);
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned()
    }

    /// The caller (every route but `Open` ones has one).
    fn who(&self) -> Grant {
        self.grant.clone().unwrap_or(Grant {
            scope: Scope::Read,
            name: String::new(),
        })
    }

    /// The body as JSON; an empty body is `{}`.
    async fn json_or_empty(self) -> Result<Value, AdminError> {
        self.read_json(true).await
    }

    /// The body as JSON, at most `MAX_BODY` bytes.
    async fn json(self) -> Result<Value, AdminError> {
        self.read_json(false).await
    }

    /// Every body the API takes is a JSON object: anything else is refused
    /// here, before serde could read an array as a struct's fields in order.
    async fn read_json(self, empty_is_object: bool) -> Result<Value, AdminError> {
        let incoming = match self.body {
            CallBody::Json(v) => return object(v),
            CallBody::Http(incoming) => incoming,
        };
        let body = http_body_util::Limited::new(incoming, MAX_BODY)
            .collect()
            .await
            .map_err(|_| invalid("body", format!("unreadable or over {MAX_BODY} bytes")))?
            .to_bytes();
        if empty_is_object && body.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        let value =
            serde_json::from_slice(&body).map_err(|e| invalid("body", format!("not JSON: {e}")))?;
        object(value)
    }
}

fn object(value: Value) -> Result<Value, AdminError> {
    if value.is_object() {
        Ok(value)
    } else {
        Err(invalid("body", "must be a JSON object"))
    }
}

type Handler = fn(Arc<Admin>, Call) -> Pin<Box<dyn Future<Output = Reply> + Send>>;

/// One entry of the table.
pub struct Route {
    pub method: Method,
    /// Literal segments and `{name}` segments, e.g. `/api/hooks/{id}/test`.
    pub path: &'static str,
    pub access: Access,
    /// `path` split at `/`, once.
    segments: Vec<&'static str>,
    handler: Handler,
}

/// A handler from an async block over `a` (the admin service) and `c` (the call).
macro_rules! handler {
    (|$a:pat_param, $c:pat_param| $body:expr) => {{
        let h: Handler = |$a, $c| Box::pin(async move { $body });
        h
    }};
}

/// Every route of the admin API.
pub fn table() -> Vec<Route> {
    use Access::{Open, Read, ReadOwn, Write, WriteOwn};
    let r = |method: Method, path: &'static str, access, handler| Route {
        method,
        path,
        access,
        segments: segments(path),
        handler,
    };
    vec![
        r(
            Method::GET,
            "/healthz",
            Open,
            handler!(|_, _| Ok(ok(json!({"status": "ok"})))),
        ),
        r(
            Method::GET,
            "/readyz",
            Open,
            handler!(|a, _| Ok(a.ready().await)),
        ),
        r(
            Method::GET,
            "/metrics",
            Open,
            handler!(|a, c| Ok(a.metrics(c.accept.as_deref()))),
        ),
        r(
            Method::POST,
            "/api/hooks",
            WriteOwn,
            handler!(|a, c| {
                let who = c.who();
                a.subscribe(c.json().await?, &who).await
            }),
        ),
        r(
            Method::GET,
            "/api/hooks",
            ReadOwn,
            handler!(|a, c| a.list_hooks(&c.who())),
        ),
        r(
            Method::GET,
            "/api/hooks/{id}",
            ReadOwn,
            handler!(|a, c| a.show_hook(&c.id(), &c.who())),
        ),
        r(
            Method::DELETE,
            "/api/hooks/{id}",
            WriteOwn,
            handler!(|a, c| a.unsubscribe(&c.id(), &c.who()).await),
        ),
        r(
            Method::POST,
            "/api/hooks/{id}/test",
            WriteOwn,
            handler!(|a, c| {
                let (id, who) = (c.id(), c.who());
                a.test_send(&id, json!({}), &who).await
            }),
        ),
        r(
            Method::GET,
            "/api/endpoints",
            ReadOwn,
            handler!(|a, c| a.list_endpoints(&c.query, &c.who())),
        ),
        r(
            Method::POST,
            "/api/endpoints",
            WriteOwn,
            handler!(|a, c| {
                let who = c.who();
                a.create_endpoint(c.json().await?, &who).await
            }),
        ),
        r(
            Method::GET,
            "/api/endpoints/{id}",
            ReadOwn,
            handler!(|a, c| a.show_endpoint(&c.id(), &c.who())),
        ),
        r(
            Method::PATCH,
            "/api/endpoints/{id}",
            Write,
            handler!(|a, c| {
                let id = c.id();
                a.patch_endpoint(&id, c.json().await?).await
            }),
        ),
        r(
            Method::DELETE,
            "/api/endpoints/{id}",
            WriteOwn,
            handler!(|a, c| a.delete_endpoint(&c.id(), &c.who()).await),
        ),
        r(
            Method::POST,
            "/api/endpoints/{id}/test",
            WriteOwn,
            handler!(|a, c| {
                let (id, who) = (c.id(), c.who());
                a.test_send(&id, c.json_or_empty().await?, &who).await
            }),
        ),
        r(
            Method::POST,
            "/api/endpoints/{id}/rotate-secret",
            Write,
            handler!(|a, c| {
                let id = c.id();
                a.rotate_secret(&id, c.json_or_empty().await?).await
            }),
        ),
        r(
            Method::GET,
            "/api/event-types",
            ReadOwn,
            handler!(|a, c| a.event_types(&c.query).await),
        ),
        r(
            Method::GET,
            "/api/targets",
            Read,
            handler!(|a, _| Ok(ok(a.targets()))),
        ),
        r(
            Method::GET,
            "/api/events",
            Read,
            handler!(|a, c| a.inbound_log(&c.query).await),
        ),
        r(
            Method::GET,
            "/api/events/{id}",
            Read,
            handler!(|a, c| a.event(&c.id()).await),
        ),
        r(
            Method::GET,
            "/api/deliveries",
            Read,
            handler!(|a, c| a.deliveries(&c.query).await),
        ),
        r(
            Method::POST,
            "/api/deliveries/retry",
            Write,
            handler!(|a, c| a.retry_many(c.json().await?).await),
        ),
        r(
            Method::POST,
            "/api/deliveries/{id}/retry",
            Write,
            handler!(|a, c| a.retry_one(&c.id()).await),
        ),
    ]
}

/// What the table says about a request.
pub enum Resolved<'t> {
    /// This route, with the path's parameters.
    Found(&'t Route, Vec<String>),
    /// The path is known, but not for this method: these methods are.
    WrongMethod(Vec<String>),
    NotFound,
}

impl Route {
    /// The path's `{params}` if `path` fits this route's pattern.
    fn matches(&self, path: &[&str]) -> Option<Vec<String>> {
        if self.segments.len() != path.len() {
            return None;
        }
        let mut params = Vec::new();
        for (p, s) in self.segments.iter().zip(path) {
            if p.starts_with('{') {
                params.push((*s).to_string());
            } else if p != s {
                return None;
            }
        }
        Some(params)
    }

    /// Literal segments: where two patterns fit a path, the more literal wins.
    fn literals(&self) -> usize {
        self.segments.iter().filter(|s| !s.starts_with('{')).count()
    }

    pub async fn call(&self, admin: Arc<Admin>, call: Call) -> Reply {
        (self.handler)(admin, call).await
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Finds the route for `method` and `path`.
pub fn resolve<'t>(table: &'t [Route], method: &Method, path: &str) -> Resolved<'t> {
    let path = segments(path);
    let fitting: Vec<(&Route, Vec<String>)> = table
        .iter()
        .filter_map(|r| r.matches(&path).map(|params| (r, params)))
        .collect();
    let found = fitting
        .iter()
        .filter(|(r, _)| r.method == *method)
        .max_by_key(|(r, _)| r.literals());
    if let Some((route, params)) = found {
        return Resolved::Found(route, params.clone());
    }
    if fitting.is_empty() {
        return Resolved::NotFound;
    }
    let mut allow: Vec<String> = Vec::new();
    for (r, _) in &fitting {
        let m = r.method.to_string();
        if !allow.contains(&m) {
            allow.push(m);
        }
    }
    Resolved::WrongMethod(allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(t: &[Route], method: Method, path: &str) -> Option<(&'static str, Vec<String>)> {
        match resolve(t, &method, path) {
            Resolved::Found(r, p) => Some((r.path, p)),
            _ => None,
        }
    }

    #[test]
    fn paths_resolve_to_one_route_with_their_params() {
        let t = table();
        assert_eq!(
            found(&t, Method::POST, "/api/hooks/hook_1/test"),
            Some(("/api/hooks/{id}/test", vec!["hook_1".into()]))
        );
        assert_eq!(
            found(&t, Method::POST, "/api/deliveries/retry/"),
            Some(("/api/deliveries/retry", vec![]))
        );
        assert_eq!(
            found(&t, Method::POST, "/api/deliveries/dlv_1/retry"),
            Some(("/api/deliveries/{id}/retry", vec!["dlv_1".into()]))
        );
        assert!(matches!(
            resolve(&t, &Method::GET, "/api/nothing"),
            Resolved::NotFound
        ));
        assert!(matches!(
            resolve(&t, &Method::GET, "/api/hooks/a/b/c"),
            Resolved::NotFound
        ));
    }

    #[test]
    fn other_methods_get_the_allowed_ones_from_the_table() {
        let t = table();
        let Resolved::WrongMethod(allow) = resolve(&t, &Method::PUT, "/api/hooks") else {
            panic!("PUT /api/hooks is not a 405");
        };
        assert_eq!(allow, ["POST", "GET"]);
        let Resolved::WrongMethod(allow) = resolve(&t, &Method::POST, "/api/hooks/h") else {
            panic!("POST /api/hooks/h is not a 405");
        };
        assert_eq!(allow, ["GET", "DELETE"]);
    }

    #[test]
    fn every_route_is_declared_once() {
        let t = table();
        for (i, a) in t.iter().enumerate() {
            for b in &t[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
    }
}

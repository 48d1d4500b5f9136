//! The console: the admin API's pages for a browser, at `/ui/` on the
//! admin listener. Templates, stylesheet and script are in the binary.
//!
//! Invariants:
//! - the console is a client of the admin API in-process: every read and
//!   change goes through [`Admin::call`], so the route table's scopes,
//!   checks and errors are the API's own, and a button is shown only when
//!   the table lets the session's token make the call behind it
//!   ([`Admin::may`]);
//! - sources outside `admin.allow` get 403; every page but sign-in and the
//!   assets needs a session (see [`session`]), and every POST but sign-in
//!   carries the session's form key (CSRF); a POST whose `Origin` is not
//!   this host is refused; failed sign-ins past `SIGN_IN_FAILURES` close
//!   sign-in for `SIGN_IN_PAUSE_MS`, so tokens cannot be guessed quickly;
//! - pages go out with a Content-Security-Policy that allows no inline
//!   script or style, and everything a receiver, the LMS or a token holder
//!   wrote reaches the page through minijinja's HTML escaping (or the
//!   charts' XML escaping), so it shows as text.
//!
//! The room: [`session`] (cookies, sessions, form keys), [`pages`]
//! (overview, endpoints, an endpoint and its actions), [`form`] (the
//! endpoint form and its preview), [`log`] (events, an event, dead
//! letters), [`chart`] (SVG charts), [`view`] (templates and filters).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use minijinja::Value as Tv;
use serde_json::Value;

use crate::admin::{Admin, AdminError, Grant};
use crate::history::History;
use crate::rate::{Rate, Throttle};

pub mod chart;
mod form;
mod log;
mod pages;
pub mod session;
mod view;

use session::{Flash, Sessions};

/// Largest form body the console reads.
const MAX_FORM: usize = 256 * 1024;

/// Failed sign-ins let through (and logged): past it, sign-in answers 429
/// without looking at the token, so tokens cannot be guessed quickly.
const SIGN_IN_FAILURES: Rate = Rate::of(5, 20);
/// How long sign-in stays closed once failures pass that rate.
const SIGN_IN_PAUSE_MS: u64 = 2000;
const SIGN_IN_CLOSED: &str = "Too many failed sign-ins; wait a few seconds and try again.";

/// Every page's security headers. Scripts and styles come only from the
/// console's own files; nothing may frame it; forms post only to it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// The console service, shared by every admin connection.
pub struct Console {
    admin: Arc<Admin>,
    history: Arc<History>,
    sessions: Sessions,
    views: view::Views,
    /// Whether the admin listener speaks TLS (cookies are then `Secure`).
    tls: bool,
    failed_sign_ins: Throttle,
    /// Until when (unix ms) sign-in is refused after too many failures.
    sign_in_closed_until: AtomicU64,
}

/// A console request, read whole: path segments (percent-decoded), query
/// and form pairs, headers.
pub struct Req {
    pub method: Method,
    pub segs: Vec<String>,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    pub headers: HeaderMap,
}

impl Req {
    /// The first value of query parameter `k`, if it is not empty.
    pub fn q(&self, k: &str) -> Option<&str> {
        first(&self.query, k)
    }

    /// The first value of form field `k` (possibly empty).
    pub fn f(&self, k: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of form field `k`.
    pub fn f_all(&self, k: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn first<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, v)| n == k && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// Who is asking, in an open session.
pub struct Ctx {
    pub who: Grant,
    pub sid: String,
    pub csrf: String,
    pub flash: Vec<Flash>,
}

/// What a page handler answers.
pub enum Reply {
    Html(StatusCode, String),
    /// 303 to a console path.
    Redirect(String),
    /// `text/plain` (the form's preview).
    Text(String),
}

/// Why a page could not be shown: the API's refusal, shown on an error page.
pub type Shown = Result<Reply, AdminError>;

impl Console {
    pub fn new(
        admin: Arc<Admin>,
        history: Arc<History>,
        tls: bool,
    ) -> Result<Arc<Console>, String> {
        Ok(Arc::new(Console {
            admin,
            history,
            sessions: Sessions::default(),
            views: view::Views::new()?,
            tls,
            failed_sign_ins: Throttle::new(SIGN_IN_FAILURES),
            sign_in_closed_until: AtomicU64::new(0),
        }))
    }

    /// Whether a path is the console's.
    pub fn serves(path: &str) -> bool {
        path == "/ui" || path.starts_with("/ui/")
    }

    /// Ends the sessions whose token is no longer in the tokens file
    /// (called when the file has been read again; each request checks its
    /// own token too, this frees the memory of the ones not coming back).
    pub fn forget_revoked(&self) {
        self.sessions
            .close_where(|token| self.admin.grant_of(token).is_none());
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        if !self.admin.allows_source(peer.ip()) {
            return plain(
                StatusCode::FORBIDDEN,
                "This address may not use the console.",
            );
        }
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        match (&parts.method, path.as_str()) {
            (&Method::GET, "/ui/assets/console.css") => {
                return asset("text/css; charset=utf-8", STYLE)
            }
            (&Method::GET, "/ui/assets/console.js") => {
                return asset("text/javascript; charset=utf-8", SCRIPT)
            }
            _ => {}
        }
        let form = if parts.method == Method::POST {
            match http_body_util::Limited::new(body, MAX_FORM).collect().await {
                Ok(b) => pairs(&b.to_bytes()),
                Err(_) => {
                    return plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "The form is larger than the console takes.",
                    )
                }
            }
        } else {
            Vec::new()
        };
        let req = Req {
            method: parts.method,
            segs: path
                .split('/')
                .filter(|s| !s.is_empty())
                .skip(1)
                .map(|s| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect(),
            query: pairs(parts.uri.query().unwrap_or("").as_bytes()),
            form,
            headers: parts.headers,
        };
        let mut resp = self.respond(req, peer).await;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        h.entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        resp
    }

    async fn respond(self: &Arc<Self>, req: Req, peer: SocketAddr) -> Response<Full<Bytes>> {
        if req.method == Method::POST && !same_origin(&req.headers) {
            return plain(
                StatusCode::FORBIDDEN,
                "This form was sent from another site.",
            );
        }
        let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
        if segs.as_slice() == ["signin"] {
            return self.signin(&req, peer);
        }
        let session = session::cookie_id(&req.headers)
            .and_then(|sid| self.sessions.get(&sid).map(|open| (sid, open)));
        let Some((sid, open)) = session else {
            return self.to_signin(&req);
        };
        let Some(who) = self.admin.grant_of(&open.token) else {
            self.sessions.close(&sid);
            return self.to_signin(&req);
        };
        if req.method == Method::POST
            && !req
                .f("csrf")
                .is_some_and(|k| session::csrf_matches(&open.csrf, k))
        {
            return plain(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this console; open the page again.",
            );
        }
        // Waiting messages go to the next page a browser opens, not to a
        // script's request or a form's answer.
        let flash = if req.method == Method::GET {
            self.sessions.take_flash(&sid)
        } else {
            Vec::new()
        };
        let ctx = Ctx {
            who,
            sid,
            csrf: open.csrf,
            flash,
        };
        if segs.as_slice() == ["signout"] && req.method == Method::POST {
            self.sessions.close(&ctx.sid);
            let mut resp = redirect("/ui/signin");
            set_cookie(&mut resp, &session::set_cookie(None, self.tls));
            return resp;
        }
        let shown = match (req.method.clone(), segs.as_slice()) {
            (Method::GET, []) => self.overview(&ctx).await,
            (Method::GET, ["endpoints"]) => self.endpoints(&ctx, &req).await,
            (Method::GET, ["endpoints", "new"]) => self.new_endpoint(&ctx, &req).await,
            (Method::POST, ["endpoints"]) => self.create_endpoint(&ctx, &req).await,
            (Method::POST, ["preview"]) => self.preview(&req),
            (Method::GET, ["endpoints", id]) => self.endpoint(&ctx, id).await,
            (Method::GET, ["endpoints", id, "edit"]) => self.edit_endpoint(&ctx, id).await,
            (Method::POST, ["endpoints", id, "edit"]) => self.save_endpoint(&ctx, id, &req).await,
            (Method::POST, ["endpoints", id, "test"]) => self.test_send(&ctx, id, &req).await,
            (Method::POST, ["endpoints", id, "rotate"]) => self.rotate(&ctx, id).await,
            (Method::POST, ["endpoints", id, "enabled"]) => self.set_enabled(&ctx, id, &req).await,
            (Method::GET, ["endpoints", id, "delete"]) => self.confirm_delete(&ctx, id).await,
            (Method::POST, ["endpoints", id, "delete"]) => self.delete(&ctx, id).await,
            (Method::GET, ["events"]) => self.events(&ctx, &req).await,
            (Method::GET, ["events", id]) => self.event(&ctx, id).await,
            (Method::POST, ["deliveries", id, "replay"]) => self.replay(&ctx, id, &req).await,
            (Method::GET, ["dead"]) => self.dead(&ctx, &req).await,
            (Method::GET, ["dead", "replay"]) => self.confirm_replay_all(&ctx, &req).await,
            (Method::POST, ["dead", "replay"]) => self.replay_all(&ctx, &req).await,
            _ => Err(AdminError::NotFound("page".into())),
        };
        match shown {
            Ok(Reply::Html(status, body)) => html(status, body),
            Ok(Reply::Redirect(to)) => redirect(&to),
            Ok(Reply::Text(body)) => answer(StatusCode::OK, TEXT, Bytes::from(body)),
            Err(e) => self.error_page(&ctx, e),
        }
    }

    /// `GET /ui/signin` shows the form; `POST` opens a session for a token
    /// of the tokens file.
    fn signin(&self, req: &Req, peer: SocketAddr) -> Response<Full<Bytes>> {
        let next = req
            .q("next")
            .or(req.f("next"))
            .filter(|n| local_path(n))
            .unwrap_or("/ui/")
            .to_string();
        if req.method == Method::POST {
            let now = crate::store::now_ms();
            if now < self.sign_in_closed_until.load(Ordering::Relaxed) {
                return plain(StatusCode::TOO_MANY_REQUESTS, SIGN_IN_CLOSED);
            }
            let token = req.f("token").unwrap_or("").trim().to_string();
            if let Some(grant) = (!token.is_empty())
                .then(|| self.admin.grant_of(&token))
                .flatten()
            {
                let sid = self.sessions.open(&token);
                tracing::info!(by = %grant.name, scope = %grant.scope, source = %peer.ip(), "console sign-in");
                let mut resp = redirect(&next);
                set_cookie(&mut resp, &session::set_cookie(Some(&sid), self.tls));
                return resp;
            }
            let Some(suppressed) = self.failed_sign_ins.admit() else {
                self.sign_in_closed_until
                    .store(now + SIGN_IN_PAUSE_MS, Ordering::Relaxed);
                return plain(StatusCode::TOO_MANY_REQUESTS, SIGN_IN_CLOSED);
            };
            tracing::warn!(source = %peer.ip(), suppressed, "console sign-in refused: not a token of the tokens file");
            let body = self.views.render(
                "signin.html",
                view::plain_context(&[
                    ("next", Tv::from(next)),
                    (
                        "error",
                        Tv::from("That is not a token of this hookrelay's tokens file."),
                    ),
                ]),
            );
            return html(StatusCode::UNAUTHORIZED, body);
        }
        if req.method != Method::GET {
            let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "Use GET or POST.");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            return resp;
        }
        let body = self.views.render(
            "signin.html",
            view::plain_context(&[("next", Tv::from(next))]),
        );
        html(StatusCode::OK, body)
    }

    fn to_signin(&self, req: &Req) -> Response<Full<Bytes>> {
        let here = format!("/ui/{}", req.segs.join("/"));
        if req.method == Method::GET && local_path(&here) {
            let next: String = form_urlencoded::byte_serialize(here.as_bytes()).collect();
            redirect(&format!("/ui/signin?next={next}"))
        } else {
            redirect("/ui/signin")
        }
    }

    fn error_page(&self, ctx: &Ctx, e: AdminError) -> Response<Full<Bytes>> {
        let status = e.status();
        let body = self.page(
            ctx,
            "error.html",
            "",
            &serde_json::json!({"status": status.as_u16(), "message": e.to_string()}),
            None,
        );
        html(status, body)
    }

    /// Renders `template` in the page frame: the session, the navigation
    /// the token may use, waiting messages, `data`, and `charts` (SVG the
    /// console drew itself, put in the page as it is).
    pub fn page(
        &self,
        ctx: &Ctx,
        template: &str,
        active: &str,
        data: &Value,
        charts: Option<String>,
    ) -> String {
        let read = self.admin.may(&Method::GET, "/api/targets", &ctx.who);
        let mut cx: BTreeMap<String, Tv> = BTreeMap::new();
        cx.insert(
            "me".into(),
            view::tv(&serde_json::json!({
                "name": ctx.who.name,
                "scope": ctx.who.scope.as_str(),
            })),
        );
        cx.insert("csrf".into(), Tv::from(ctx.csrf.clone()));
        cx.insert(
            "nav".into(),
            view::tv(&serde_json::json!({
                "overview": read,
                "endpoints": true,
                "events": self.admin.may(&Method::GET, "/api/events", &ctx.who),
                "dead": self.admin.may(&Method::GET, "/api/deliveries", &ctx.who),
                "active": active,
            })),
        );
        cx.insert("flash".into(), view::tv(&ctx.flash));
        cx.insert("page".into(), view::tv(data));
        if let Some(svg) = charts {
            cx.insert("charts".into(), Tv::from_safe_string(svg));
        }
        self.views.render(template, view::tv(&cx))
    }

    /// A page that answers 200.
    pub fn ok_page(
        &self,
        ctx: &Ctx,
        template: &str,
        active: &str,
        data: &Value,
        charts: Option<String>,
    ) -> Reply {
        Reply::Html(
            StatusCode::OK,
            self.page(ctx, template, active, data, charts),
        )
    }

    /// An API call as the session's token.
    pub async fn api(
        &self,
        ctx: &Ctx,
        method: Method,
        path: &str,
        query: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        self.admin
            .call(method, path, query, body, &ctx.who)
            .await
            .map(|(_, v)| v)
    }

    /// Whether the session's token may make this API call.
    pub fn may(&self, ctx: &Ctx, method: Method, path: &str) -> bool {
        self.admin.may(&method, path, &ctx.who)
    }

    pub fn flash(&self, ctx: &Ctx, flash: Flash) {
        self.sessions.flash(&ctx.sid, flash);
    }
}

/// Name=value pairs of a query or an `application/x-www-form-urlencoded` body.
fn pairs(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// Whether `p` is a console path to send a browser back to (never another site).
pub fn local_path(p: &str) -> bool {
    p.starts_with("/ui/") && !p.starts_with("//") && !p.contains('\\') && !p.contains("://")
}

/// A POST's `Origin`, when the browser sent one, names this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    bare.is_some_and(|b| !host.is_empty() && b.eq_ignore_ascii_case(host))
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Every answer the console builds: a status, a content type, a body.
fn answer(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    answer(status, "text/html; charset=utf-8", Bytes::from(body))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    answer(status, TEXT, Bytes::from_static(text.as_bytes()))
}

/// The stylesheet and the script: cached for an hour.
fn asset(content_type: &'static str, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = answer(
        StatusCode::OK,
        content_type,
        Bytes::from_static(text.as_bytes()),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}

fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let to = if local_path(to) { to } else { "/ui/" };
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn set_cookie(resp: &mut Response<Full<Bytes>>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_places_to_go_back_to() {
        assert!(local_path("/ui/endpoints"));
        assert!(!local_path("//evil.example/ui/"));
        assert!(!local_path("https://evil.example/ui/"));
        assert!(!local_path("/api/endpoints"));
        assert!(!local_path("/ui/\\evil"));
    }

    #[test]
    fn a_post_from_another_origin_is_told_apart() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9090".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:9090".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&h));
    }
}

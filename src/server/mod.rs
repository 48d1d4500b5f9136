//! Serving plumbing shared by both listeners (ingest and admin): connection,
//! header and time limits, TLS with certificate reload, graceful shutdown,
//! and the JSON answers both send.
//!
//! - [`serve`]: the accept loop and each connection's limits.
//! - [`tls`]: listener certificates, client-certificate auth, SIGHUP reload.
//! - [`thread`]: the ingest listeners' own thread and runtime.
//!
//! Invariants: a connection from a source the listener's allowlist refuses
//! gets a fixed 403 once it has sent its first bytes (see [`serve`]),
//! without a slot and without its request being
//! parsed; every connection is
//! bounded (at most `max_connections` at once, header read time, header
//! count and bytes, idle time); a TLS
//! listener finishes its handshake within the header read time; at
//! shutdown no new connection is accepted and open ones get the grace
//! period to finish. Nothing here knows what the handlers do.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::Full;
use hyper::Response;

pub mod serve;
pub mod thread;
pub mod tls;

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

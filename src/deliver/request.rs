//! The outbound request: the shaped body, the kept headers, the target's
//! own headers, and the Standard Webhooks headers, signed over exactly the
//! bytes sent.

use bytes::Bytes;
use http_body_util::Full;

use crate::deliver::shape::{Outbound, Shaped};
use crate::deliver::sign::{signature_header, Secret};
use crate::store::EventMeta;

/// `user-agent` of every outbound request.
pub const USER_AGENT: &str = concat!("hookrelay/", env!("CARGO_PKG_VERSION"));

/// The outbound request: the shaped body, the kept headers, the target's
/// own headers, and the Standard Webhooks headers, signed over the bytes sent.
pub fn build_request(
    secrets: &[Secret],
    outbound: &Outbound,
    uri: http::Uri,
    event_id: &str,
    timestamp: i64,
    meta: &EventMeta,
    shaped: Shaped,
) -> http::Request<Full<Bytes>> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &meta.headers {
        // Stored names and values were valid headers when they arrived.
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    if let Some(ct) = shaped.content_type {
        headers.insert(http::header::CONTENT_TYPE, ct);
    }
    // The target's headers replace forwarded ones of the same name; config
    // load refused any that hookrelay sets below.
    for (name, value) in &outbound.headers {
        headers.insert(name.clone(), value.clone());
    }
    let text = |s: &str| http::HeaderValue::from_str(s);
    if let Ok(v) = text(event_id) {
        headers.insert("webhook-id", v);
    }
    headers.insert("webhook-timestamp", http::HeaderValue::from(timestamp));
    if let Ok(v) = text(&meta.event_type) {
        headers.insert("webhook-event-type", v);
    }
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    );
    if let Some(sig) = signature_header(secrets, event_id, timestamp, &shaped.body) {
        if let Ok(v) = text(&sig) {
            headers.insert("webhook-signature", v);
        }
    }
    let mut request = http::Request::new(Full::new(shaped.body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

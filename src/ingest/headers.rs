//! Which request headers are kept with an event, forwarded to receivers,
//! shown to templates, or never passed on.

use http::{header, HeaderMap};
use serde::Deserialize;

/// Request headers that are never kept or forwarded: hop-by-hop headers,
/// credentials, and the ones hookrelay sets itself.
pub fn never_forwarded(name: &http::HeaderName) -> bool {
    const NAMES: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "authorization",
        "cookie",
        "set-cookie",
        "host",
        "content-length",
        "user-agent",
    ];
    let n = name.as_str();
    NAMES.contains(&n) || n.starts_with("webhook-")
}

/// A `forward_headers` entry: a lower-case header name that may be
/// forwarded, checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardHeader(pub http::HeaderName);

impl<'de> Deserialize<'de> for ForwardHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let name = http::HeaderName::from_bytes(s.as_bytes())
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a header name")))?;
        if never_forwarded(&name) {
            return Err(serde::de::Error::custom(format!(
                "`{s}` is never forwarded (hop-by-hop, credentials or set by hookrelay)"
            )));
        }
        Ok(ForwardHeader(name))
    }
}

/// `content-type` and the route's `forward_headers`, as lower-case pairs.
pub fn kept_headers(headers: &HeaderMap, forward: &[http::HeaderName]) -> Vec<(String, String)> {
    std::iter::once(&header::CONTENT_TYPE)
        .chain(forward)
        .flat_map(|name| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| (name.as_str().to_string(), v.to_string()))
        })
        .collect()
}

/// The request's headers that are neither kept for forwarding nor ever
/// forwarded (credentials, hop-by-hop): what a body template sees besides
/// the kept ones.
pub fn other_headers(headers: &HeaderMap, forward: &[http::HeaderName]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            **name != header::CONTENT_TYPE && !forward.contains(name) && !never_forwarded(name)
        })
        .filter_map(|(name, v)| Some((name.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

//! Egress: how hookrelay reaches receivers, and where it may not go.
//!
//! - [`guard`]: the egress policy (denied address ranges, `egress.allow`,
//!   `egress.deny`, `egress.bind`) and the guarded connect.
//! - [`client`]: the outbound HTTP client and its TLS settings.
//! - [`pool`]: the budget every outbound connection and request counts
//!   against (`egress.max_connections` and friends).
//! - [`redact`]: the credentials a reply's excerpt may not repeat.
//!
//! The guard's connect is the one place where outbound sockets are opened:
//! deliveries, test sends and proxy-mode tunnels all go through it.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

pub mod client;
pub mod guard;
pub mod pool;
pub mod redact;

pub use crate::roots::{client_config as tls_config, load_ca_file};
pub use client::{Connector, EgressClient, Reply};
pub use guard::{classify, noncanonical, BindAddr, EgressConfig, Kind, Policy};
pub use pool::{Budget, PoolSettings};

/// The longest response body read back from a receiver; past it the
/// connection is dropped rather than read further.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How much of the response body is kept with the attempt.
pub const EXCERPT_BYTES: usize = 1024;

/// Why an attempt got no response. Every kind is a failed attempt, so all
/// are retryable; the text is what operators see in the attempt log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EgressError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("refused to connect to {host}: {reason}")]
    Refused { host: String, reason: String },
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Http(String),
}

/// An absolute http or https URL with a host, checked at load: no
/// credentials, and an IP address only in its one canonical spelling.
#[derive(Clone, PartialEq, Eq)]
pub struct TargetUrl(http::Uri);

impl TargetUrl {
    pub fn parse(s: &str) -> Result<TargetUrl, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(format!("`{s}`: the scheme must be http or https")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("`{s}`: the URL has no host"));
        }
        if let Some(reason) = uri.host().and_then(guard::noncanonical) {
            return Err(format!("`{s}`: {reason}"));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!(
                "`{s}`: credentials in the URL are not allowed (they would leak into logs)"
            ));
        }
        Ok(TargetUrl(uri))
    }

    pub fn uri(&self) -> &http::Uri {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.scheme_str() == Some("https")
    }
}

impl fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for TargetUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TargetUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

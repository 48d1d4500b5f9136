//! Why ingest refused a request, and the one place such refusals get their
//! HTTP status, error code and headers.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::Response;
use serde_json::json;

use crate::deliver::egress::EgressError;
use crate::ingest::route::Missing;
use crate::ingest::tunnel::TunnelError;
use crate::server::json_response;
use crate::store::StoreError;

/// Seconds a sender is asked to wait after the store refused its event
/// (`Retry-After`); the store looks again at its room every second.
const STORE_RETRY_AFTER: u64 = 5;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("source {0} is not allowed to post")]
    SourceNotAllowed(IpAddr),
    #[error("too many requests from this source")]
    RateLimited(Duration),
    #[error("method {0} is not allowed; use POST")]
    MethodNotAllowed(Method),
    #[error("a proxy request must be for an http:// URL, got `{0}`")]
    BadProxyTarget(String),
    #[error("{0}")]
    Tunnel(#[from] TunnelError),
    #[error("no route matches {0}")]
    NoRoute(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body was not received within {0:?}")]
    BodyTimeout(Duration),
    #[error("request body could not be read: {0}")]
    BadBody(String),
    #[error("{0}")]
    BadPayload(Missing),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl IngestError {
    /// The one place ingest errors get their HTTP status and error code.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            IngestError::SourceNotAllowed(_) => (StatusCode::FORBIDDEN, "source_not_allowed"),
            IngestError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            IngestError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            IngestError::BadProxyTarget(_) => (StatusCode::BAD_REQUEST, "bad_proxy_target"),
            IngestError::Tunnel(TunnelError::BadTarget(_)) => {
                (StatusCode::BAD_REQUEST, "bad_connect_target")
            }
            IngestError::Tunnel(TunnelError::NotAllowed(_)) => {
                (StatusCode::FORBIDDEN, "connect_not_allowed")
            }
            IngestError::Tunnel(TunnelError::Busy) => {
                (StatusCode::SERVICE_UNAVAILABLE, "too_many_tunnels")
            }
            IngestError::Tunnel(TunnelError::Egress(EgressError::Refused { .. })) => {
                (StatusCode::FORBIDDEN, "egress_refused")
            }
            IngestError::Tunnel(TunnelError::Egress(_)) => {
                (StatusCode::BAD_GATEWAY, "connect_failed")
            }
            IngestError::NoRoute(_) => (StatusCode::NOT_FOUND, "no_route"),
            IngestError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            IngestError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            IngestError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            IngestError::BadPayload(_) => (StatusCode::BAD_REQUEST, "bad_payload"),
            IngestError::Store(e) => (StatusCode::SERVICE_UNAVAILABLE, e.code()),
        }
    }

    /// The reason the client is given (store errors are logged in full
    /// instead).
    pub fn public_message(&self) -> String {
        match self {
            IngestError::Store(StoreError::Full { .. } | StoreError::DiskFull { .. }) => {
                "the store is full; nothing was accepted".to_string()
            }
            IngestError::Store(_) => {
                "the store cannot take writes; nothing was accepted".to_string()
            }
            other => other.to_string(),
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let (status, code) = self.status();
        let message = self.public_message();
        let mut resp = json_response(status, json!({"error": {"code": code, "message": message}}));
        match self {
            IngestError::RateLimited(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            IngestError::MethodNotAllowed(_) => {
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            IngestError::Tunnel(e) => tracing::info!(error = %e, "CONNECT refused"),
            IngestError::Store(e) => {
                // The store logs each change of its state once; a refusal
                // per request would flood the log while the disk is full.
                tracing::debug!(error = %e, "event refused: store");
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(STORE_RETRY_AFTER));
            }
            _ => {}
        }
        resp
    }
}

//! Why an admin request failed, and the one place such failures get their
//! HTTP status, error code and headers.

use bytes::Bytes;
use http::{header, StatusCode};
use http_body_util::Full;
use hyper::Response;
use serde_json::json;

use crate::catalog::CatalogError;
use crate::server::json_response;
use crate::store::StoreError;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("source {0} may not use the admin API")]
    SourceNotAllowed(std::net::IpAddr),
    #[error("a valid bearer token is needed{}", .0.as_ref().map(|p| format!(" ({p}: no token is accepted)")).unwrap_or_default())]
    Unauthorized(Option<String>),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("method {method} is not allowed here; use {}", allow.join(", "))]
    MethodNotAllowed { method: String, allow: Vec<String> },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    ReadOnly(String),
    #[error("{0}")]
    Limit(String),
    /// Too many calls of a rate-limited kind; one more after `retry_after`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl AdminError {
    /// The HTTP status this failure answers with.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AdminError::SourceNotAllowed(_) => (StatusCode::FORBIDDEN, "source_not_allowed"),
            AdminError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            AdminError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::ReadOnly(_) => (StatusCode::CONFLICT, "read_only"),
            AdminError::Limit(_) => (StatusCode::CONFLICT, "limit_reached"),
            AdminError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AdminError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let (status, code) = self.status_and_code();
        if let AdminError::Store(e) = &self {
            tracing::error!(error = %e, "admin request failed: store");
        }
        let mut resp = json_response(
            status,
            json!({"error": {"code": code, "message": self.to_string()}}),
        );
        match &self {
            AdminError::Unauthorized(_) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            AdminError::MethodNotAllowed { allow, .. } => {
                // Method names are tokens, so the joined list is a valid value.
                if let Ok(v) = header::HeaderValue::from_str(&allow.join(", ")) {
                    resp.headers_mut().insert(header::ALLOW, v);
                }
            }
            AdminError::RateLimited { retry_after, .. } => {
                // Whole seconds, rounded up: a client that waits as told succeeds.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
            }
            _ => {}
        }
        resp
    }
}

impl From<CatalogError> for AdminError {
    fn from(e: CatalogError) -> AdminError {
        match e {
            CatalogError::Invalid(i) => invalid(&i.field, i.reason),
            CatalogError::NotFound(id) => AdminError::NotFound(format!("endpoint {id}")),
            e @ CatalogError::ReadOnly(_) => AdminError::ReadOnly(e.to_string()),
            CatalogError::Store(e) => AdminError::Store(e),
        }
    }
}

/// A 422 naming the field and what is wrong with it.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(format!("{field}: {reason}"))
}

//! The one error envelope every endpoint uses: `{"error": {"code", "message"}}` with the
//! right status. 5xx responses never carry internals; 401 carries `WWW-Authenticate`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::identity::TokenError;
use crate::task::IssueError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// snake_case code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Seconds to wait before trying again (`Retry-After`), for 429 and 503 `overloaded`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// Build an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429: a rate limit was reached; come back after `retry_after_secs`.
    pub fn rate_limited(what: &str, retry_after_secs: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after_secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{what}; retry after {retry_after_secs}s"),
            )
        }
    }

    /// 404 for unknown paths.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    /// 503 when an audit record cannot be written: the request is refused, nothing changed
    /// (a certificate, revocation or completion never goes out without its record, and a
    /// refusal is never answered without its own).
    pub fn audit_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit store is unavailable",
        )
    }

    /// 405 for a known path with a method it does not serve (the router adds `Allow`).
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that method; see the Allow header",
        )
    }
}

impl From<&TokenError> for ApiError {
    fn from(e: &TokenError) -> ApiError {
        match e {
            TokenError::IssuerUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "issuer_unavailable",
                "the token issuer's keys could not be fetched; try again later",
            ),
            other => ApiError::new(
                StatusCode::UNAUTHORIZED,
                other.reason_code(),
                other.to_string(),
            ),
        }
    }
}

impl From<&IssueError> for ApiError {
    fn from(e: &IssueError) -> ApiError {
        let status = match e {
            IssueError::StoreUnavailable(_) => return ApiError::audit_unavailable(),
            IssueError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            IssueError::Unacceptable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            IssueError::Denied(_) => StatusCode::FORBIDDEN,
            IssueError::TokenReplayed(_) => StatusCode::UNAUTHORIZED,
            IssueError::TaskNotFound | IssueError::CertificateNotFound => StatusCode::NOT_FOUND,
            IssueError::TaskNotActive(_) | IssueError::CertificateRevoked => StatusCode::CONFLICT,
            IssueError::Forbidden { .. } => StatusCode::FORBIDDEN,
            IssueError::Signing(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// The error code of a response built from an [`ApiError`], kept in the response's
/// extensions for the log line of the connection loop (`server::connections`).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message =
            if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
                "internal error".to_owned()
            } else {
                self.message
            };
        let body = json!({"error": {"code": self.code, "message": message}});
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if self.status == StatusCode::UNAUTHORIZED {
            let value = format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                self.code
            );
            if let Ok(value) = HeaderValue::from_str(&value) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

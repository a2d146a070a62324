//! What happens around every request, in one layer ([`observe`]) that the router puts
//! around each route (knowing its template) and around the fallback for unknown paths, so
//! no handler repeats it:
//!
//! - a fresh request id ([`RequestId`]) goes into the request, where the
//!   [`RequestContext`] extractor finds it, so the audit records a request leaves carry
//!   the id its response's `X-Request-Id` header shows; every response carries one, also
//!   for requests that leave no record (`/healthz`, `/metrics`, unknown paths);
//! - the request must be read and answered within `request_timeout`, else 408 in the
//!   JSON envelope (a client trickling its body is cut off);
//! - it is counted once, when answered: `writ_requests_total{endpoint,status}` and
//!   `writ_request_duration_seconds{endpoint}`, where `endpoint` is the route template
//!   (`/v1/tasks/{task_id}`), never the raw path, or `other` for a path no route matches.
//!
//! It never reads a body, a token or a header's value.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand_core::{OsRng, RngCore};
use time::OffsetDateTime;

use super::ApiError;
use crate::audit;
use crate::metrics::{Metrics, OTHER_ENDPOINT};
use crate::task::RequestContext;

/// The response header that carries the request id.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One request's id: 16 lowercase hex characters (64 random bits), made when the request
/// is routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh random id.
    pub fn new() -> RequestId {
        let mut id = [0u8; 8];
        OsRng.fill_bytes(&mut id);
        RequestId(audit::hex(&id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

/// What [`observe`] needs around one route: where to count, under which `endpoint`
/// label (the route's template, as the router registers it, so the two cannot drift), and
/// how long a request may take.
#[derive(Clone)]
pub struct Observer {
    metrics: Arc<Metrics>,
    request_timeout: Duration,
    endpoint: &'static str,
}

impl Observer {
    /// Count into `metrics` and cut requests off after `request_timeout`; the endpoint is
    /// [`OTHER_ENDPOINT`] until [`Observer::at`] names a route.
    pub fn new(metrics: Arc<Metrics>, request_timeout: Duration) -> Observer {
        Observer {
            metrics,
            request_timeout,
            endpoint: OTHER_ENDPOINT,
        }
    }

    /// The same, for the route `endpoint` (its template, e.g. `/v1/tasks/{task_id}`).
    pub fn at(&self, endpoint: &'static str) -> Observer {
        Observer {
            endpoint,
            ..self.clone()
        }
    }
}

/// The layer (see the module documentation).
pub async fn observe(
    State(observer): State<Observer>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = RequestId::new();
    let header = HeaderValue::from_str(id.as_str()).ok();
    request.extensions_mut().insert(id);
    let mut response = match tokio::time::timeout(observer.request_timeout, next.run(request)).await
    {
        Ok(response) => response,
        Err(_elapsed) => request_timeout(observer.request_timeout),
    };
    observer.metrics.request(
        observer.endpoint,
        response.status().as_u16(),
        started.elapsed(),
    );
    if let Some(value) = header {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}

fn request_timeout(limit: Duration) -> Response {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request was not received and answered within {}",
            crate::duration::format(limit)
        ),
    )
    .into_response()
}

/// A handler's audit context: the client address, the request id [`observe`] made, and
/// the request's time, read here once.
impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let id = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_default();
        Ok(RequestContext {
            source_ip: peer.map(|p| p.ip().to_string()),
            request_id: Some(id.0),
            now: OffsetDateTime::now_utc(),
        })
    }
}

//! The HTTP API v1 (SPEC §3): the router, shared state, and one file per endpoint group.
//! Handlers are thin: decode, authenticate, call [`crate::task`], render. Around every
//! route, one layer ([`observe`]) gives the request its id, its time limit and its count
//! in the metrics.

pub mod auth;
pub mod authorize;
pub mod ca;
pub mod certificates;
pub mod error;
pub mod health;
pub mod host_certificates;
pub mod host_reports;
pub mod metrics;
pub mod observe;
pub mod rate;
pub mod refusal;
pub mod revocation;
pub mod tasks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodRouter, get, post};

use crate::authority::LiveKeyring;
use crate::identity::Verifier;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::task::Issuer;
use crate::task::host_certificates::HostIssuer;

pub use error::ApiError;
pub use observe::{RequestId, X_REQUEST_ID};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything handlers need.
pub struct AppState {
    /// Token verification.
    pub verifier: Verifier,
    /// Issuance.
    pub issuer: Issuer,
    /// Host certificate issuance.
    pub host_issuer: HostIssuer,
    /// User CA keys (reloaded while serving; take [`LiveKeyring::current`] once per
    /// request).
    pub keyring: Arc<LiveKeyring>,
    /// Host CA keys, likewise.
    pub host_keyring: Arc<LiveKeyring>,
    /// `[ca] host_patterns`: the hosts `GET /v1/ca/known-hosts` trusts the host CA for.
    pub host_patterns: Vec<String>,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// The development issuer's JWKS, served at `/v1/dev/jwks` in dev mode only.
    pub dev_jwks: Option<String>,
    /// How long revocations stay published after their certificate or task ended:
    /// [`crate::revocation::feed::retention_after_end`] of `[ca] clock_skew`.
    pub revocation_retention: Duration,
    /// Rate limits and flood summaries (`[limits]`).
    pub rate: Arc<rate::RateLimits>,
    /// The server's metrics (`GET /metrics`).
    pub metrics: Arc<Metrics>,
    /// The names of the configured audit sinks (`writ_audit_sink_lag_records{sink}`).
    pub audit_sinks: Vec<String>,
    /// `[server] readyz_requires_issuers`: `/readyz` also needs every issuer's keys.
    pub readyz_requires_issuers: bool,
    /// Whether this replica runs the once-only background work ([`crate::server::leader`]).
    pub leadership: Arc<crate::server::leader::Leadership>,
    /// Held `GET /v1/revocations?after=&wait=` requests wait on this (push to hosts).
    pub revocation_watch: Arc<crate::revocation::watch::RevocationWatch>,
}

/// Where `GET /metrics` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsRoute {
    /// On the API's own listener (no `metrics_listen`).
    WithApi,
    /// Only on a listener of its own ([`metrics_router`]).
    Elsewhere,
}

type Routes = Vec<(&'static str, MethodRouter<Arc<AppState>>)>;

/// The router for all endpoints; every request is read and answered within
/// `request_timeout` ([`observe`]).
pub fn router(state: Arc<AppState>, request_timeout: Duration, metrics: MetricsRoute) -> Router {
    let mut routes: Routes = vec![
        ("/v1/certificates", post(certificates::create)),
        ("/v1/ca/trusted-keys", get(ca::trusted_keys)),
        ("/v1/host-certificates", post(host_certificates::create)),
        ("/v1/ca/known-hosts", get(ca::known_hosts)),
        ("/v1/tasks/{task_id}", get(tasks::show)),
        ("/v1/tasks/{task_id}/certificates", post(tasks::renew)),
        ("/v1/tasks/{task_id}/complete", post(tasks::complete)),
        ("/v1/tasks/{task_id}/revoke", post(tasks::revoke)),
        ("/v1/tasks/{task_id}/runs", post(tasks::record_run)),
        (
            "/v1/certificates/{serial}/revoke",
            post(tasks::revoke_certificate),
        ),
        ("/v1/revocations", get(revocation::feed)),
        ("/v1/revocations/applied", post(host_reports::feed_applied)),
        ("/v1/krl", get(revocation::krl)),
        ("/v1/authorize", post(authorize::authorize)),
        ("/v1/inventory", post(host_reports::inventory)),
        ("/healthz", get(health::healthz)),
        ("/readyz", get(health::readyz)),
    ];
    if metrics == MetricsRoute::WithApi {
        routes.push(("/metrics", get(self::metrics::scrape)));
    }
    if state.dev_jwks.is_some() {
        routes.push(("/v1/dev/jwks", get(ca::dev_jwks)));
    }
    assemble(state, request_timeout, routes)
}

/// The router of a separate metrics listener (`[server] metrics_listen`): `GET /metrics`
/// only.
pub fn metrics_router(state: Arc<AppState>, request_timeout: Duration) -> Router {
    assemble(
        state,
        request_timeout,
        vec![("/metrics", get(self::metrics::scrape))],
    )
}

/// `routes` (each answering 405 to other methods; axum adds `Allow`), 404 for unknown
/// paths, the body limit, and around each route and the 404, [`observe`] naming it.
fn assemble(state: Arc<AppState>, request_timeout: Duration, routes: Routes) -> Router {
    let observer = observe::Observer::new(Arc::clone(&state.metrics), request_timeout);
    let mut router = Router::new();
    for (path, method) in routes {
        let method = method
            .fallback(method_not_allowed)
            .layer(from_fn_with_state(observer.at(path), observe::observe));
        router = router.route(path, method);
    }
    router
        .fallback(not_found.layer(from_fn_with_state(observer, observe::observe)))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Decode a JSON request body, mapping failures to 413 (too large) or 400.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    use axum::http::StatusCode;
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "could not read the request body",
            )
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid request body: {e}"),
        )
    })
}

//! The HTTP API v1 (SPEC §3): the router, shared state, and one file per endpoint group.
//! Handlers are thin: decode, authenticate, call [`crate::task`], render.

pub mod auth;
pub mod authorize;
pub mod ca;
pub mod certificates;
pub mod error;
pub mod health;
pub mod rate;
pub mod refusal;
pub mod revocation;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use rand_core::{OsRng, RngCore};
use time::OffsetDateTime;

use crate::audit;
use crate::authority::LiveKeyring;
use crate::identity::Verifier;
use crate::store::Store;
use crate::task::{Issuer, RequestContext};

pub use error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything handlers need.
pub struct AppState {
    /// Token verification.
    pub verifier: Verifier,
    /// Issuance.
    pub issuer: Issuer,
    /// CA keys (reloaded while serving; take [`LiveKeyring::current`] once per request).
    pub keyring: Arc<LiveKeyring>,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// The development issuer's JWKS, served at `/v1/dev/jwks` in dev mode only.
    pub dev_jwks: Option<String>,
    /// How long revocations stay published after their certificate or task ended:
    /// [`crate::revocation::feed::retention_after_end`] of `[ca] clock_skew`.
    pub revocation_retention: std::time::Duration,
    /// Rate limits and flood summaries (`[limits]`).
    pub rate: Arc<rate::RateLimits>,
}

/// The router for all endpoints.
pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/v1/certificates", post(certificates::create))
        .route("/v1/ca/trusted-keys", get(ca::trusted_keys))
        .route("/v1/tasks/{task_id}", get(tasks::show))
        .route("/v1/tasks/{task_id}/certificates", post(tasks::renew))
        .route("/v1/tasks/{task_id}/complete", post(tasks::complete))
        .route("/v1/tasks/{task_id}/revoke", post(tasks::revoke))
        .route(
            "/v1/certificates/{serial}/revoke",
            post(tasks::revoke_certificate),
        )
        .route("/v1/revocations", get(revocation::feed))
        .route("/v1/krl", get(revocation::krl))
        .route("/v1/authorize", post(authorize::authorize))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if state.dev_jwks.is_some() {
        router = router.route("/v1/dev/jwks", get(ca::dev_jwks));
    }
    router
        // After every route: applies to each path's method router. axum adds `Allow`.
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Audit context of one request: client address, a fresh request id, and the request's
/// time, read here once.
pub fn request_context(peer: SocketAddr) -> RequestContext {
    let mut id = [0u8; 8];
    OsRng.fill_bytes(&mut id);
    RequestContext {
        source_ip: Some(peer.ip().to_string()),
        request_id: Some(audit::hex(&id)),
        now: OffsetDateTime::now_utc(),
    }
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

//! The HTTP API v1 (SPEC §3): the router, shared state, and one file per endpoint group.
//! Handlers are thin: decode, authenticate, call [`crate::task`], render.

pub mod ca;
pub mod certificates;
pub mod error;
pub mod health;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use rand_core::{OsRng, RngCore};

use crate::audit;
use crate::authority::Keyring;
use crate::identity::{MAX_TOKEN_BYTES, TokenError, Verifier};
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
    /// CA keys.
    pub keyring: Arc<Keyring>,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// The development issuer's JWKS, served at `/v1/dev/jwks` in dev mode only.
    pub dev_jwks: Option<String>,
}

/// The router for all endpoints.
pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/v1/certificates", post(certificates::create))
        .route("/v1/ca/trusted-keys", get(ca::trusted_keys))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if state.dev_jwks.is_some() {
        router = router.route("/v1/dev/jwks", get(ca::dev_jwks));
    }
    router
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Audit context of one request: client address and a fresh request id.
pub fn request_context(peer: SocketAddr) -> RequestContext {
    let mut id = [0u8; 8];
    OsRng.fill_bytes(&mut id);
    RequestContext {
        source_ip: Some(peer.ip().to_string()),
        request_id: Some(audit::hex(&id)),
    }
}

/// The bearer token of a request.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(TokenError::Missing)?;
    if value.len() > MAX_TOKEN_BYTES + 7 {
        return Err(TokenError::TooLarge);
    }
    let value = value
        .to_str()
        .map_err(|_| TokenError::Malformed("non-ASCII Authorization header".into()))?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing);
    }
    Ok(token.trim())
}

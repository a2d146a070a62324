//! Public CA material: `GET /v1/ca/trusted-keys` (the `TrustedUserCAKeys` bundle: user CA
//! keys only), `GET /v1/ca/known-hosts` (`@cert-authority` lines: host CA keys only) and,
//! in dev mode, the development issuer's JWKS.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;

use super::AppState;
use crate::revocation::publisher;

/// One OpenSSH public key per line: every CA key hosts must trust now. Never cached
/// (`Cache-Control: no-store`): a stale bundle could trust a revoked key, which is why a
/// version-2 revocation feed names this body's digest.
pub async fn trusted_keys(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            super::revocation::NO_STORE,
        ],
        publisher::trust_bundle(&state.keyring.current()),
    )
}

/// `known_hosts` lines for clients: `@cert-authority PATTERNS KEY` for every host CA key
/// clients must trust now (`next`, `active`, `retiring`) and `@revoked * KEY` for every
/// revoked one. Never cached, like the trust bundle.
pub async fn known_hosts(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            super::revocation::NO_STORE,
        ],
        publisher::known_hosts(&state.host_keyring.current(), &state.host_patterns),
    )
}

/// The dev issuer's JWKS.
pub async fn dev_jwks(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.dev_jwks.clone().unwrap_or_default(),
    )
}

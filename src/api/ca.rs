//! Public CA material: `GET /v1/ca/trusted-keys` (the `TrustedUserCAKeys` bundle) and, in
//! dev mode, the development issuer's JWKS.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;

/// One OpenSSH public key per line: every CA key hosts must trust now.
pub async fn trusted_keys(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        state.keyring.current().trusted_keys_text(),
    )
}

/// The dev issuer's JWKS.
pub async fn dev_jwks(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.dev_jwks.clone().unwrap_or_default(),
    )
}

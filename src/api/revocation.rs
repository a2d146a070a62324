//! `GET /v1/revocations` (the signed revocation feed) and `GET /v1/krl` (the OpenSSH KRL
//! for sshd's `RevokedKeys`). Both are public: they reveal only serials and task ids.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use time::OffsetDateTime;

use super::{ApiError, AppState};
use crate::revocation::feed::SignedFeed;
use crate::revocation::publisher;

fn unavailable(e: publisher::PublishError) -> ApiError {
    tracing::error!(error = %e, "could not build revocation data");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "revocation data is unavailable",
    )
}

/// The signed feed.
pub async fn feed(State(state): State<Arc<AppState>>) -> Result<Json<SignedFeed>, ApiError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    publisher::signed_feed(state.store.as_ref(), &state.keyring.current(), now)
        .await
        .map(Json)
        .map_err(unavailable)
}

/// The KRL.
pub async fn krl(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let bytes = publisher::krl(state.store.as_ref(), &state.keyring.current(), now)
        .await
        .map_err(unavailable)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

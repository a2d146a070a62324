//! `GET /v1/revocations` (the signed revocation feed) and `GET /v1/krl` (the OpenSSH KRL
//! for sshd's `RevokedKeys`). Both are public: they reveal only serials and task ids.
//!
//! - `GET /v1/revocations?version=2` is the feed with its binding (the digests of the
//!   trust bundle and KRL of the same snapshot, see [`crate::revocation::publisher`]);
//!   without `version` (or with `version=1`) it is the version-1 feed that hosts older
//!   than the binding understand.
//! - `…&after=S&wait=W` (push, [`crate::revocation::watch`]): answered at once when the
//!   revocation lists changed in a snapshot newer than the host's feed `S`, else held until
//!   they do on any replica or `W` seconds (at most 60, and 5 less than
//!   `request_timeout`) have passed, then the feed as usual, with [`WAIT_HEADER`].
//! - `GET /v1/krl?sequence=S&issued_at=T` is the KRL the feed `S`/`T` names; `issued_at`
//!   must lie within [`KRL_SNAPSHOT_WINDOW`] of now. Without them, the KRL now.
//!
//! Every answer carries `Cache-Control: no-store`: these documents are only ever right
//! together and now, so no cache should keep one.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{ApiError, AppState};
use crate::revocation::feed;
use crate::revocation::publisher;

/// How far from the CA's clock the `issued_at` of a requested KRL may be. A host asks for
/// it right after fetching the feed; the window only absorbs that delay and replica clock
/// differences, and keeps the public endpoint from building KRLs for arbitrary times.
pub const KRL_SNAPSHOT_WINDOW: Duration = Duration::from_secs(300);

/// `Cache-Control: no-store` for the three documents hosts sync.
pub const NO_STORE: (header::HeaderName, HeaderValue) =
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store"));

/// Query of `GET /v1/revocations`.
#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    /// Feed format version: 1 (default) or 2.
    version: Option<u32>,
    /// Push: the sequence of the feed the host has; with `wait`, answer once the
    /// revocation lists changed after it.
    after: Option<i64>,
    /// Push: how long to wait for that, in seconds (capped, see [`WAIT_HEADER`]).
    wait: Option<u64>,
}

/// Answer header of a held feed request: the wait granted, in seconds. A host that does
/// not see it talks to a CA without push and polls instead.
pub const WAIT_HEADER: &str = "writ-feed-wait";

/// Query of `GET /v1/krl`.
#[derive(Debug, Deserialize)]
pub struct KrlQuery {
    /// The feed's sequence (the KRL version).
    sequence: Option<i64>,
    /// The feed's issue time (the KRL's generation time, and the time it is built for).
    issued_at: Option<i64>,
}

fn unavailable(e: publisher::PublishError) -> ApiError {
    tracing::error!(error = %e, "could not build revocation data");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "revocation data is unavailable",
    )
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
}

/// The signed feed.
pub async fn feed(
    State(state): State<Arc<AppState>>,
    query: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let version = match query.version {
        None | Some(feed::VERSION_UNBOUND) => feed::VERSION_UNBOUND,
        Some(feed::VERSION) => feed::VERSION,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_feed_version",
                format!("feed version {other} is not served; ask for version 1 or 2"),
            ));
        }
    };
    let granted = match (query.after, query.wait) {
        (None, None) => None,
        (Some(after), Some(wait)) if after >= 0 => {
            let wait = Duration::from_secs(wait).min(state.revocation_watch.max_wait());
            state.revocation_watch.changed_after(after, wait).await;
            Some(wait)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "give both after (the sequence of the feed you have, >= 0) and wait \
                 (seconds), or neither",
            ));
        }
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let signed = publisher::signed_feed(
        state.store.as_ref(),
        &state.keyring.current(),
        Some(&state.host_keyring.current()),
        now,
        state.revocation_retention,
        version,
    )
    .await
    .map_err(unavailable)?;
    let mut response = ([NO_STORE], Json(signed)).into_response();
    if let Some(wait) = granted {
        response
            .headers_mut()
            .insert(WAIT_HEADER, HeaderValue::from(wait.as_secs()));
    }
    Ok(response)
}

/// The KRL.
pub async fn krl(
    State(state): State<Arc<AppState>>,
    query: Result<Query<KrlQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let issued_at = match (query.sequence, query.issued_at) {
        (None, None) => now,
        (Some(sequence), Some(issued_at))
            if sequence >= 0 && issued_at.abs_diff(now) <= KRL_SNAPSHOT_WINDOW.as_secs() =>
        {
            issued_at
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_krl_snapshot",
                format!(
                    "give both sequence (>= 0) and issued_at (within {}s of now), or neither",
                    KRL_SNAPSHOT_WINDOW.as_secs()
                ),
            ));
        }
    };
    let bytes = publisher::krl(
        state.store.as_ref(),
        &state.keyring.current(),
        Some(&state.host_keyring.current()),
        issued_at,
        query.sequence,
        state.revocation_retention,
    )
    .await
    .map_err(unavailable)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            NO_STORE,
        ],
        bytes,
    )
        .into_response())
}

//! `GET /metrics`: the Prometheus text format ([`crate::metrics`]). Served on the API's
//! listener, or only on `[server] metrics_listen` when that is set.
//!
//! A scrape first sets the gauges that describe state — tasks active now (one count on a
//! store reader), the active CA key's age (from the keyring in memory) and each audit
//! sink's lag (the log's head and the sinks' stored positions) — then encodes every
//! series. A store that cannot answer leaves those gauges at their last value (`/readyz`
//! says why); the scrape itself still succeeds.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use time::OffsetDateTime;

use super::AppState;
use crate::metrics::{CONTENT_TYPE, ScrapeState};

/// The handler.
pub async fn scrape(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    state.metrics.set_state(&read_state(&state, now).await);
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        state.metrics.encode(),
    )
}

/// The state gauges' values at `now`.
async fn read_state(state: &AppState, now: i64) -> ScrapeState {
    let active_tasks = match state.store.active_tasks(now).await {
        Ok(n) => Some(n),
        Err(error) => {
            tracing::debug!(%error, "metrics: cannot count active tasks");
            None
        }
    };
    let keyring = state.keyring.current();
    let since = keyring
        .key(keyring.active_id())
        .map_or(now, |key| key.activated_at.unwrap_or(key.created_at));
    ScrapeState {
        active_tasks,
        ca_key_age_seconds: now.saturating_sub(since).max(0),
        sink_lag: sink_lag(state).await,
    }
}

/// Per configured sink: the log's head minus the sink's stored position (a sink that
/// never delivered starts from the beginning of the log).
async fn sink_lag(state: &AppState) -> Vec<(String, i64)> {
    if state.audit_sinks.is_empty() {
        return Vec::new();
    }
    let read = async {
        let head = state.store.audit_head().await?.map_or(0, |(seq, _)| seq);
        let positions = state.store.audit_sink_positions().await?;
        Ok::<_, crate::store::StoreError>((head, positions))
    };
    match read.await {
        Ok((head, positions)) => state
            .audit_sinks
            .iter()
            .map(|sink| {
                let position = positions
                    .iter()
                    .find(|(name, _)| name == sink)
                    .map_or(0, |(_, seq)| *seq);
                (sink.clone(), head.saturating_sub(position).max(0))
            })
            .collect(),
        Err(error) => {
            tracing::debug!(%error, "metrics: cannot read the audit sinks' positions");
            Vec::new()
        }
    }
}

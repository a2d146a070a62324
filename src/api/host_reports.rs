//! What hosts report about themselves, each request authenticated with the host's own
//! workload token under a `role = "host"` policy whose `hosts` cover the name it reports
//! for:
//!
//! - `POST /v1/revocations/applied` `{"host", "sequence"}`: the revocation feed the host
//!   has just applied (`writ-principals sync`, when it has a token). Stored per host and
//!   read by `writ admin task revoke`, which counts the hosts that acknowledged. Accepted
//!   reports are bookkeeping, not audit records; a refused one is `host.feed_denied`.
//!
//! - `POST /v1/inventory` (the document `writ-principals inventory --json` prints, up to
//!   [`crate::inventory::MAX_REPORT_BYTES`], read only once the token verified): the host's
//!   standing-access inventory, stored with its findings compared to the last report, in
//!   one transaction with its `inventory.reported` record (a refusal: the same event,
//!   outcome failure).
//!
//! Never trusts a host name the identity may not speak for, and never lets one host's
//! report change another's row.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::auth::authenticate;
use super::refusal::{self, Refusal, Who};
use super::{ApiError, AppState};
use crate::audit::event;
use crate::audit::{AuditEntry, Outcome};
use crate::identity::Identity;
use crate::inventory::{self, MAX_REPORT_BYTES};
use crate::profile;
use crate::store::{FeedApplied, InventoryChange, InventoryHost, InventoryUpdate};
use crate::task::RequestContext;

/// `POST /v1/revocations/applied` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedAppliedBody {
    /// The host's name.
    pub host: String,
    /// The sequence of the feed it applied.
    pub sequence: i64,
}

/// `POST /v1/revocations/applied` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct FeedAppliedAnswer {
    /// The host, as recorded (lowercase).
    pub host: String,
    /// The sequence recorded.
    pub sequence: i64,
}

/// The host name of a report, lowercase, if `identity` may speak for it; else the refusal.
fn host_for(
    state: &AppState,
    identity: &Identity,
    host: &str,
    denied_event: &'static str,
) -> Result<String, Box<Refusal>> {
    let host = host.to_ascii_lowercase();
    let refused = |code: &'static str, message: String, status: StatusCode| {
        let mut record = refusal::entry(denied_event, Who::Identity(identity), None);
        record.host = Some(host.chars().filter(|c| !c.is_control()).take(253).collect());
        Box::new(Refusal::new(record, ApiError::new(status, code, message)))
    };
    if !profile::is_valid_host_name(&host) {
        return Err(refused(
            "invalid_host",
            "host must be a DNS name".into(),
            StatusCode::BAD_REQUEST,
        ));
    }
    if !state.issuer.speaks_for_host(identity, &host) {
        return Err(refused(
            "host_not_authorized",
            format!("no role = \"host\" policy lets this identity speak for host {host:?}"),
            StatusCode::FORBIDDEN,
        ));
    }
    Ok(host)
}

/// `POST /v1/revocations/applied`.
pub async fn feed_applied(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FeedAppliedAnswer>, ApiError> {
    let identity = authenticate(&state, &headers, &context).await?;
    let body: FeedAppliedBody = match super::decode_json(body) {
        Ok(body) => body,
        Err(error) => {
            let refused = Refusal::of(
                event::HOST_FEED_DENIED,
                Who::Identity(&identity),
                None,
                error,
            );
            return Err(refusal::record(&state, refused, &context).await);
        }
    };
    let host = match host_for(&state, &identity, &body.host, event::HOST_FEED_DENIED) {
        Ok(host) => host,
        Err(refused) => return Err(refusal::record(&state, *refused, &context).await),
    };
    if body.sequence < 0 {
        let error = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_sequence",
            "sequence must be a feed's sequence (0 or more)",
        );
        let refused = Refusal::of(
            event::HOST_FEED_DENIED,
            Who::Identity(&identity),
            None,
            error,
        );
        return Err(refusal::record(&state, refused, &context).await);
    }
    let now = context.now.unix_timestamp();
    let report = FeedApplied {
        host: host.clone(),
        issuer: identity.issuer_name.clone(),
        subject: identity.subject.clone(),
        sequence: body.sequence,
        applied_at: now,
        reported_at: now,
    };
    if let Err(e) = state.issuer.store().record_feed_applied(report).await {
        tracing::error!(error = %e, "could not record a host's applied feed");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the report could not be recorded",
        ));
    }
    Ok(Json(FeedAppliedAnswer {
        host,
        sequence: body.sequence,
    }))
}

/// `POST /v1/inventory` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct InventoryAnswer {
    /// The host, as recorded (lowercase).
    pub host: String,
    /// When the CA recorded it (Unix seconds).
    pub recorded_at: i64,
    /// Findings no earlier report of this host had.
    pub new_findings: usize,
    /// Findings earlier reports had and this one does not.
    pub gone_findings: usize,
}

/// `POST /v1/inventory`.
pub async fn inventory(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<InventoryAnswer>, ApiError> {
    let identity = authenticate(&state, &headers, &context).await?;
    let refuse = |error: ApiError| {
        Refusal::of(
            event::INVENTORY_REPORTED,
            Who::Identity(&identity),
            None,
            error,
        )
    };
    // Read only now: an unauthenticated client never gets the larger limit.
    let bytes = match axum::body::to_bytes(body, MAX_REPORT_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let error = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("an inventory report is at most {MAX_REPORT_BYTES} bytes"),
            );
            return Err(refusal::record(&state, refuse(error), &context).await);
        }
    };
    let report: writ_principals::inventory::model::Inventory = match super::decode_json(Ok(bytes)) {
        Ok(report) => report,
        Err(error) => return Err(refusal::record(&state, refuse(error), &context).await),
    };
    let checked = match inventory::check(&report) {
        Ok(checked) => checked,
        Err(e) => {
            let error = ApiError::new(StatusCode::BAD_REQUEST, "invalid_inventory", e.to_string());
            return Err(refusal::record(&state, refuse(error), &context).await);
        }
    };
    let host = match host_for(&state, &identity, &checked.host, event::INVENTORY_REPORTED) {
        Ok(host) => host,
        Err(refused) => return Err(refusal::record(&state, *refused, &context).await),
    };
    let now = context.now.unix_timestamp();
    let summary = checked.summary.clone();
    let mut record = AuditEntry::new(event::INVENTORY_REPORTED, Outcome::Success);
    record.issuer = Some(identity.issuer_name.clone());
    record.subject = Some(identity.subject.clone());
    record.host = Some(host.clone());
    context.stamp(&mut record);
    let update = InventoryUpdate {
        host: InventoryHost {
            host: host.clone(),
            issuer: identity.issuer_name.clone(),
            subject: identity.subject.clone(),
            reported_at: now,
            writ_enforced: checked.writ_enforced,
            summary: serde_json::to_string(&checked.summary).unwrap_or_default(),
        },
        findings: checked.findings,
        audit: Box::new(move |change: &InventoryChange| {
            record.reason = Some(inventory::audit_reason(
                &summary,
                change.new.len(),
                change.gone.len(),
            ));
            vec![record]
        }),
        at: context.now,
    };
    match state.issuer.store().record_inventory(update).await {
        Ok(change) => Ok(Json(InventoryAnswer {
            host,
            recorded_at: now,
            new_findings: change.new.len(),
            gone_findings: change.gone.len(),
        })),
        Err(e) => {
            tracing::error!(error = %e, "could not record an inventory report");
            Err(ApiError::audit_unavailable())
        }
    }
}

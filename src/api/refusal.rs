//! Audit records for requests the API layer itself refuses — a body that is too large or
//! does not decode, a missing or unprintable reason, an unknown phase — so that every
//! refused request leaves exactly one record, like the refusals decided further in
//! (SPEC §2, invariant 7). If the record cannot be written the answer is 503
//! `audit_unavailable` instead.

use axum::http::StatusCode;

use super::{ApiError, AppState};
use crate::audit::{AuditEntry, Outcome};
use crate::identity::Identity;
use crate::profile;
use crate::task::RequestContext;
use crate::task::lifecycle::Caller;

/// Longest message kept in a record: decode errors can quote the request body.
const MAX_MESSAGE_CHARS: usize = 256;

/// Who made the refused request, as far as the API layer knows.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// Not authenticated (yet).
    Nobody,
    /// A verified workload token.
    Identity(&'a Identity),
    /// A task caller (token or proof of possession).
    Caller(&'a Caller),
}

/// A refusal record of `event` by `who`, about the task named in the path (if any).
pub fn entry(
    event: &str,
    who: Who<'_>,
    task_id: Option<&str>,
    context: &RequestContext,
) -> AuditEntry {
    let mut entry = AuditEntry::new(event, Outcome::Failure);
    match who {
        Who::Nobody => {}
        Who::Identity(identity) | Who::Caller(Caller::Token(identity)) => {
            entry.issuer = Some(identity.issuer_name.clone());
            entry.subject = Some(identity.subject.clone());
        }
        Who::Caller(Caller::Possession {
            task_id, serial, ..
        }) => {
            entry.task_id = Some(task_id.clone());
            entry.serial = Some(serial.to_string());
        }
    }
    if let Some(id) = task_id.filter(|id| profile::is_valid_task_id(id)) {
        entry.task_id = Some(id.to_owned());
    }
    entry.source_ip = context.source_ip.clone();
    entry.request_id = context.request_id.clone();
    entry
}

/// Append `entry` with `error` as its reason; answer `error`, or 503 if the record could
/// not be written.
pub async fn record(state: &AppState, mut entry: AuditEntry, error: ApiError) -> ApiError {
    let message: String = error.message.chars().take(MAX_MESSAGE_CHARS).collect();
    entry.reason = Some(format!("{}: {message}", error.code));
    match state.store.append_audit(&entry).await {
        Ok(()) => error,
        Err(e) => {
            tracing::error!(error = %e, event = %entry.event, "could not record a refusal");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit store is unavailable",
            )
        }
    }
}

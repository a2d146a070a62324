//! The one refusal path (SPEC §2, invariant 7): every refused request leaves exactly one
//! audit record before it is answered, and [`record`] is where that happens — for the
//! refusals the API layer decides itself (a token or proof of possession that does not
//! verify, a body that is too large or does not decode, a missing or unprintable reason,
//! an unknown phase) and for those the task layer reports as data
//! ([`crate::task::Refused`], through [`settle`]). It stamps the request, writes the
//! reason as `"{code}: {message}"` (the message bounded), appends the record, and answers
//! the refusal's error — or 503 `audit_unavailable` ([`ApiError::audit_unavailable`]) if
//! the record cannot be written. Each refusal counts once in
//! `writ_refusals_total{reason}`, under the refusal's own code, whether or not its record
//! could be written.

use super::{ApiError, AppState};
use crate::audit::{AuditEntry, Outcome, event};
use crate::identity::{Identity, TokenError};
use crate::profile;
use crate::task::lifecycle::Caller;
use crate::task::{Refused, RequestContext};

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

/// A refused request: the record that describes it (event, who, what about) and the
/// answer. The record's reason is the answer's code and message unless the refusal names
/// its own ([`Refusal::token`]: the answer of an unreachable issuer hides what the
/// record keeps).
#[derive(Debug)]
pub struct Refusal {
    record: AuditEntry,
    code: &'static str,
    message: String,
    answer: ApiError,
}

impl Refusal {
    /// `answer`, recorded as `record` (its reason is left to [`record`]).
    pub fn new(record: AuditEntry, answer: ApiError) -> Refusal {
        Refusal {
            code: answer.code,
            message: answer.message.clone(),
            record,
            answer,
        }
    }

    /// `answer` to a request of `event` by `who`, about the task named in the path (if
    /// any): [`entry`].
    pub fn of(event: &str, who: Who<'_>, task_id: Option<&str>, answer: ApiError) -> Refusal {
        Refusal::new(entry(event, who, task_id), answer)
    }

    /// A token or proof of possession that does not verify: `token.rejected`, naming the
    /// issuer the token claims (unverified) if any.
    pub fn token(claimed_issuer: Option<String>, error: &TokenError) -> Refusal {
        let mut record = AuditEntry::new(event::TOKEN_REJECTED, Outcome::Failure);
        record.issuer = claimed_issuer;
        Refusal {
            record,
            code: error.reason_code(),
            message: error.to_string(),
            answer: ApiError::from(error),
        }
    }

    /// The record this refusal leaves, stamped by `context`.
    fn into_record(self, context: &RequestContext) -> (AuditEntry, ApiError) {
        let Refusal {
            mut record,
            code,
            message,
            answer,
        } = self;
        let message: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
        record.reason = Some(format!("{code}: {message}"));
        context.stamp(&mut record);
        (record, answer)
    }
}

/// The record of a request of `event` refused to `who`, about the task named in the path
/// (if any).
pub fn entry(event: &str, who: Who<'_>, task_id: Option<&str>) -> AuditEntry {
    let mut record = AuditEntry::new(event, Outcome::Failure);
    match who {
        Who::Nobody => {}
        Who::Identity(identity) | Who::Caller(Caller::Token(identity)) => {
            record.issuer = Some(identity.issuer_name.clone());
            record.subject = Some(identity.subject.clone());
        }
        Who::Caller(Caller::Possession {
            task_id, serial, ..
        }) => {
            record.task_id = Some(task_id.clone());
            record.serial = Some(serial.to_string());
        }
    }
    if let Some(id) = task_id.filter(|id| profile::is_valid_task_id(id)) {
        record.task_id = Some(id.to_owned());
    }
    record
}

/// Record `refusal` and answer it: its error once the record is written, 503
/// `audit_unavailable` if it cannot be. A refusal of a client address that is flooding
/// (over its budget of failed authentications, [`super::rate`]) is counted into that
/// address's summary record instead, written once per interval.
pub async fn record(state: &AppState, refusal: Refusal, context: &RequestContext) -> ApiError {
    state.metrics.refused(refusal.code);
    if let Some(address) = context.client_ip() {
        if refusal.code == "rate_limited" {
            state.metrics.rate_limited();
            // A client that ignores Retry-After spends its refusal budget like one that
            // sends bad tokens.
            state.rate.failed_auth_from(address);
        }
        if state.rate.flooding(address).is_some() {
            // Over its budget: counted into the address's summary record, not one each.
            state.rate.summarise(address, refusal.code, context.now);
            return refusal.answer;
        }
    }
    let (entry, answer) = refusal.into_record(context);
    match state.store.append_audit(&entry, context.now).await {
        Ok(()) => answer,
        Err(e) => {
            tracing::error!(error = %e, event = %entry.event, "could not record a refusal");
            ApiError::audit_unavailable()
        }
    }
}

/// The answer to a task-layer call: its value, or its refusal recorded and answered
/// ([`record`]); a failure that is no refusal (the store failed) is answered as it is.
pub async fn settle<T>(
    state: &AppState,
    context: &RequestContext,
    result: Result<T, Refused>,
) -> Result<T, ApiError> {
    let Refused {
        error,
        record: entry,
    } = match result {
        Ok(value) => return Ok(value),
        Err(refused) => refused,
    };
    let answer = ApiError::from(&error);
    Err(match entry {
        Some(entry) => record(state, Refusal::new(*entry, answer), context).await,
        None => answer,
    })
}

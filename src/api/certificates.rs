//! `POST /v1/certificates`: open a task and get its first certificate.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::auth::authenticate;
use super::refusal::{self, Refusal, Who};
use super::{ApiError, AppState};
use crate::audit::event;
use crate::identity::Identity;
use crate::task::{Issued, NewTask, RequestContext};

/// Request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// OpenSSH public key line.
    pub public_key: String,
    /// The task.
    pub task: TaskBody,
    /// Certificate lifetime in seconds.
    pub ttl_seconds: Option<u64>,
    /// Extensions (default: all the policy grants).
    pub extensions: Option<Vec<String>>,
    /// `force-command` critical option.
    pub force_command: Option<String>,
    /// `source-address` critical option.
    pub source_address: Option<Vec<String>>,
}

/// The `task` object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    /// Logins.
    pub logins: Vec<String>,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Task lifetime in seconds.
    pub ttl_seconds: Option<u64>,
    /// What the task is for.
    #[serde(default)]
    pub purpose: String,
}

/// Response body.
#[derive(Debug, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// Task id.
    pub task_id: String,
    /// Serial, decimal.
    pub serial: String,
    /// The certificate, OpenSSH format.
    pub certificate: String,
    /// Principals in the certificate.
    pub principals: Vec<String>,
    /// RFC 3339.
    pub valid_after: String,
    /// RFC 3339.
    pub valid_before: String,
    /// RFC 3339.
    pub task_expires_at: String,
    /// `SHA256:…`
    pub ca_fingerprint: String,
}

/// Handler.
pub async fn create(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CertificateResponse>), ApiError> {
    let announced = state.issuer.announce_issuance();
    let identity = admit(&state, &context, &headers, event::CERT_DENIED).await?;
    let request = match decode_body(body) {
        Ok(request) => request,
        Err(error) => {
            let refused = Refusal::of(event::CERT_DENIED, Who::Identity(&identity), None, error);
            return Err(refusal::record(&state, refused, &context).await);
        }
    };
    let new_task = NewTask {
        public_key: request.public_key,
        logins: request.task.logins,
        hosts: request.task.hosts,
        task_ttl_seconds: request.task.ttl_seconds,
        purpose: request.task.purpose,
        cert_ttl_seconds: request.ttl_seconds,
        extensions: request.extensions,
        force_command: request.force_command,
        source_address: request.source_address,
    };
    let opened = state
        .issuer
        .open_task(&identity, &new_task, &context, announced)
        .await;
    let issued = refusal::settle(&state, &context, opened).await?;
    Ok((StatusCode::CREATED, Json(render(issued))))
}

/// The identity of a request that asks for certificates (user or host), once it passed
/// the issuance rate limits of its address and of its identity and its bearer token
/// verified; a refusal is recorded as `denied_event` (`token.rejected` for the token).
pub(crate) async fn admit(
    state: &AppState,
    context: &RequestContext,
    headers: &HeaderMap,
    denied_event: &str,
) -> Result<Identity, ApiError> {
    if let Some(address) = context.client_ip()
        && let Err(limited) = state.rate.issuance_from(address)
    {
        let answer = limited.answer("too many certificates requested from this address");
        let refused = Refusal::of(denied_event, Who::Nobody, None, answer);
        return Err(refusal::record(state, refused, context).await);
    }
    let identity = authenticate(state, headers, context).await?;
    if let Err(limited) = state
        .rate
        .issuance_for(&identity.issuer_name, &identity.subject)
    {
        let answer = limited.answer("too many certificates requested for this identity");
        let refused = Refusal::of(denied_event, Who::Identity(&identity), None, answer);
        return Err(refusal::record(state, refused, context).await);
    }
    Ok(identity)
}

fn decode_body(body: Result<Bytes, BytesRejection>) -> Result<CreateRequest, ApiError> {
    super::decode_json(body)
}

pub(crate) fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub(crate) fn render(issued: Issued) -> CertificateResponse {
    CertificateResponse {
        task_id: issued.task_id,
        serial: issued.serial.to_string(),
        certificate: issued.certificate,
        principals: issued.principals,
        valid_after: rfc3339(issued.valid_after),
        valid_before: rfc3339(issued.valid_before),
        task_expires_at: rfc3339(issued.task_expires_at),
        ca_fingerprint: issued.ca_fingerprint,
    }
}

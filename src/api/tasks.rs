//! Task endpoints: `GET /v1/tasks/{id}`, `POST /v1/tasks/{id}/certificates` (another
//! certificate, owner only), `POST /v1/tasks/{id}/complete` (owner or admin),
//! `POST /v1/tasks/{id}/revoke` (admin), `POST /v1/tasks/{id}/runs` (owner: a command
//! about to run, kept as a `task.run` record) and `POST /v1/certificates/{serial}/revoke`.
//! Callers authenticate with a fresh workload token or a proof of possession. Every
//! refusal leaves one audit record: `cert.denied` for certificate requests, `task.denied`
//! for reads, runs, completions and revocations.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde::{Deserialize, Serialize};

use super::auth::caller;
use super::certificates::{CertificateResponse, render, rfc3339};
use super::refusal::{self, Refusal, Who};
use super::{ApiError, AppState};
use crate::audit::event;
use crate::task::RequestContext;
use crate::task::lifecycle::{Caller, Ending, NewCertificate, TaskView};

/// Longest accepted reason text.
const MAX_REASON_BYTES: usize = 512;

/// `POST /v1/tasks/{id}/certificates` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// OpenSSH public key line.
    pub public_key: String,
    /// Certificate lifetime in seconds.
    pub ttl_seconds: Option<u64>,
    /// Extensions.
    pub extensions: Option<Vec<String>>,
    /// `force-command`.
    pub force_command: Option<String>,
    /// `source-address`.
    pub source_address: Option<Vec<String>>,
}

/// Body of complete / revoke calls.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// Why.
    pub reason: Option<String>,
}

/// A certificate in a task view.
#[derive(Debug, Serialize, Deserialize)]
pub struct CertificateSummary {
    /// Serial, decimal.
    pub serial: String,
    /// RFC 3339.
    pub valid_after: String,
    /// RFC 3339.
    pub valid_before: String,
    /// Whether it is revoked.
    pub revoked: bool,
    /// SHA-256 fingerprint of the certified key.
    pub key_fingerprint: String,
}

/// `GET /v1/tasks/{id}` response.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskResponse {
    /// Task id.
    pub task_id: String,
    /// `active`, `completed`, `revoked`, `expired`.
    pub state: String,
    /// Owner's issuer.
    pub issuer: String,
    /// Owner's subject.
    pub subject: String,
    /// Granting policy.
    pub policy: String,
    /// Logins.
    pub logins: Vec<String>,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Purpose.
    pub purpose: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Certificates, oldest first.
    pub certificates: Vec<CertificateSummary>,
}

fn render_task(view: TaskView) -> TaskResponse {
    let task = view.task;
    TaskResponse {
        task_id: task.id,
        state: view.state.to_owned(),
        issuer: task.issuer,
        subject: task.subject,
        policy: task.policy,
        logins: task.logins,
        hosts: task.hosts,
        purpose: task.purpose,
        created_at: rfc3339(task.created_at),
        expires_at: rfc3339(task.expires_at),
        certificates: view
            .certificates
            .into_iter()
            .map(|c| CertificateSummary {
                serial: c.serial.to_string(),
                valid_after: rfc3339(c.valid_after),
                valid_before: rfc3339(c.valid_before),
                revoked: c.revoked_at.is_some(),
                key_fingerprint: c.key_fingerprint,
            })
            .collect(),
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body is too large",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "could not read the request body",
            )
        }
    })
}

fn reason(request: ReasonRequest, required: bool) -> Result<Option<String>, ApiError> {
    let reason = request.reason.filter(|r| !r.trim().is_empty());
    match &reason {
        None if required => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "give {\"reason\": \"…\"}",
        )),
        Some(r) if r.len() > MAX_REASON_BYTES || r.chars().any(char::is_control) => {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_reason",
                format!(
                    "reason must be at most {MAX_REASON_BYTES} bytes without control characters"
                ),
            ))
        }
        _ => Ok(reason),
    }
}

/// A task call's body and who sent it: a body that cannot be read is refused (recorded as
/// `refused` says, nobody named) before the caller is authenticated over it.
async fn body_and_caller(
    state: &Arc<AppState>,
    context: &RequestContext,
    (method, uri, headers): (&Method, &Uri, &HeaderMap),
    body: Result<Bytes, BytesRejection>,
    refused: &impl Fn(Who<'_>, ApiError) -> Refusal,
) -> Result<(Bytes, Caller), ApiError> {
    let bytes = match body_bytes(body) {
        Ok(bytes) => bytes,
        Err(e) => return Err(refusal::record(state, refused(Who::Nobody, e), context).await),
    };
    let caller = caller(state, headers, method, uri.path(), &bytes, context).await?;
    Ok((bytes, caller))
}

/// Optional JSON body: empty means defaults.
fn optional_json<T: serde::de::DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    super::decode_json(Ok(bytes.clone()))
}

/// `GET /v1/tasks/{task_id}`
pub async fn show(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    Path(task_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<TaskResponse>, ApiError> {
    let caller = caller(&state, &headers, &method, uri.path(), b"", &context).await?;
    let view = state.issuer.task(&caller, &task_id, context.now).await;
    let view = refusal::settle(&state, &context, view).await?;
    Ok(Json(render_task(view)))
}

/// `POST /v1/tasks/{task_id}/certificates`
pub async fn renew(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    Path(task_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CertificateResponse>), ApiError> {
    let announced = state.issuer.announce_issuance();
    let refused = |who: Who<'_>, error| Refusal::of(event::CERT_DENIED, who, Some(&task_id), error);
    if let Some(address) = context.client_ip()
        && let Err(limited) = state.rate.issuance_from(address)
    {
        let answer = limited.answer("too many certificates requested from this address");
        return Err(refusal::record(&state, refused(Who::Nobody, answer), &context).await);
    }
    let (bytes, caller) =
        body_and_caller(&state, &context, (&method, &uri, &headers), body, &refused).await?;
    if let Caller::Token(identity) = &caller
        && let Err(limited) = state
            .rate
            .issuance_for(&identity.issuer_name, &identity.subject)
    {
        let answer = limited.answer("too many certificates requested for this identity");
        return Err(refusal::record(&state, refused(Who::Caller(&caller), answer), &context).await);
    }
    let request: RenewRequest = match super::decode_json(Ok(bytes)) {
        Ok(request) => request,
        Err(e) => {
            return Err(refusal::record(&state, refused(Who::Caller(&caller), e), &context).await);
        }
    };
    let request = NewCertificate {
        public_key: request.public_key,
        cert_ttl_seconds: request.ttl_seconds,
        extensions: request.extensions,
        force_command: request.force_command,
        source_address: request.source_address,
    };
    let issued = state
        .issuer
        .renew(&caller, &task_id, &request, &context, announced)
        .await;
    let issued = refusal::settle(&state, &context, issued).await?;
    Ok((StatusCode::CREATED, Json(render(issued))))
}

#[allow(clippy::too_many_arguments)]
async fn end(
    state: Arc<AppState>,
    context: RequestContext,
    task_id: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    ending: Ending,
) -> Result<Json<TaskResponse>, ApiError> {
    let refused = |who: Who<'_>, error| Refusal::of(event::TASK_DENIED, who, Some(&task_id), error);
    let (bytes, caller) =
        body_and_caller(&state, &context, (&method, &uri, &headers), body, &refused).await?;
    let why = match optional_json(&bytes).and_then(|r| reason(r, ending == Ending::Revoke)) {
        Ok(why) => why,
        Err(e) => {
            return Err(refusal::record(&state, refused(Who::Caller(&caller), e), &context).await);
        }
    };
    let view = state
        .issuer
        .end_task(&caller, &task_id, ending, why, &context)
        .await;
    let view = refusal::settle(&state, &context, view).await?;
    // Hosts waiting for the feed hear of it now.
    state.revocation_watch.poke();
    Ok(Json(render_task(view)))
}

/// `POST /v1/tasks/{task_id}/runs` body: a command about to run with the task.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The host it runs on.
    pub host: String,
    /// The login it runs as.
    pub login: String,
    /// The command.
    pub command: String,
    /// Why (optional).
    pub purpose: Option<String>,
}

/// `POST /v1/tasks/{task_id}/runs` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunRecorded {
    /// The task.
    pub task_id: String,
    /// Always true: the `task.run` record is durable.
    pub recorded: bool,
}

/// `POST /v1/tasks/{task_id}/runs`: record what the owner's agent is about to run
/// ([`crate::task::runs`]); 201 once the record is durable.
pub async fn record_run(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    Path(task_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RunRecorded>), ApiError> {
    let refused = |who: Who<'_>, error| Refusal::of(event::TASK_DENIED, who, Some(&task_id), error);
    let (bytes, caller) =
        body_and_caller(&state, &context, (&method, &uri, &headers), body, &refused).await?;
    let request: RunRequest = match super::decode_json(Ok(bytes)) {
        Ok(request) => request,
        Err(e) => {
            return Err(refusal::record(&state, refused(Who::Caller(&caller), e), &context).await);
        }
    };
    let run = crate::task::runs::Run {
        host: request.host,
        login: request.login,
        command: request.command,
        purpose: request.purpose.filter(|p| !p.trim().is_empty()),
    };
    let recorded = state
        .issuer
        .record_run(&caller, &task_id, &run, &context)
        .await;
    refusal::settle(&state, &context, recorded).await?;
    Ok((
        StatusCode::CREATED,
        Json(RunRecorded {
            task_id,
            recorded: true,
        }),
    ))
}

/// `POST /v1/tasks/{task_id}/complete`
pub async fn complete(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    Path(task_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskResponse>, ApiError> {
    end(
        state,
        context,
        task_id,
        method,
        uri,
        headers,
        body,
        Ending::Complete,
    )
    .await
}

/// `POST /v1/tasks/{task_id}/revoke`
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    Path(task_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskResponse>, ApiError> {
    end(
        state,
        context,
        task_id,
        method,
        uri,
        headers,
        body,
        Ending::Revoke,
    )
    .await
}

/// `POST /v1/certificates/{serial}/revoke`
pub async fn revoke_certificate(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    Path(serial): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let refused = |who: Who<'_>, error| {
        let mut entry = refusal::entry(event::TASK_DENIED, who, None);
        entry.serial = serial.parse::<u64>().ok().map(|s| s.to_string());
        Refusal::new(entry, error)
    };
    let (bytes, caller) =
        body_and_caller(&state, &context, (&method, &uri, &headers), body, &refused).await?;
    let why = match optional_json(&bytes).and_then(|r| reason(r, false)) {
        Ok(why) => why,
        Err(e) => {
            return Err(refusal::record(&state, refused(Who::Caller(&caller), e), &context).await);
        }
    };
    let revoked = state
        .issuer
        .revoke_certificate(&caller, &serial, why, &context)
        .await;
    refusal::settle(&state, &context, revoked).await?;
    state.revocation_watch.poke();
    Ok(Json(serde_json::json!({"serial": serial, "revoked": true})))
}

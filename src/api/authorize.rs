//! `POST /v1/authorize`: a host's online check (`writ-principals`, `mode = "online"`),
//! authenticated with the host's own workload token (a `role = "host"` policy).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::auth::authenticate;
use super::refusal::{self, Refusal, Who};
use super::{ApiError, AppState};
use crate::audit::event;
use crate::task::RequestContext;
use crate::task::authorize::{AuthorizeRequest, Decision, Phase};

/// Request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// Login asked for.
    pub login: String,
    /// Certificate blob, base64.
    pub certificate: String,
    /// Host name.
    pub host: String,
    /// `check` (default), `session` or `session_ended`.
    #[serde(default)]
    pub phase: Option<String>,
    /// Why the session ended (`session_ended` only).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Response body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    /// Admit?
    pub allow: bool,
    /// The principal to print, when admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Why not, when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Handler.
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Answer>, ApiError> {
    let identity = authenticate(&state, &headers, &context).await?;
    let refused = |error| {
        Refusal::of(
            event::CERT_USE_DENIED,
            Who::Identity(&identity),
            None,
            error,
        )
    };
    let body: Body = match super::decode_json(body) {
        Ok(body) => body,
        Err(e) => return Err(refusal::record(&state, refused(e), &context).await),
    };
    let phase = match body.phase.as_deref() {
        None | Some("check") => Phase::Check,
        Some("session") => Phase::Session,
        Some("session_ended") => Phase::SessionEnded,
        Some(_) => {
            let error = ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_phase",
                "phase must be \"check\", \"session\" or \"session_ended\"",
            );
            return Err(refusal::record(&state, refused(error), &context).await);
        }
    };
    let reason = match (phase, body.reason) {
        (Phase::SessionEnded, Some(reason))
            if crate::task::authorize::SESSION_END_REASONS.contains(&reason.as_str()) =>
        {
            Some(reason)
        }
        (Phase::SessionEnded, _) => {
            let error = ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_reason",
                format!(
                    "phase session_ended needs a reason: one of {}",
                    crate::task::authorize::SESSION_END_REASONS.join(", ")
                ),
            );
            return Err(refusal::record(&state, refused(error), &context).await);
        }
        (_, _) => None,
    };
    let request = AuthorizeRequest {
        login: body.login,
        certificate: body.certificate,
        host: body.host,
        phase,
        reason,
    };
    let answer = state.issuer.authorize(&identity, &request, &context).await;
    let decision = refusal::settle(&state, &context, answer).await?;
    Ok(Json(match decision {
        Decision::Allow(principal) => Answer {
            allow: true,
            principal: Some(principal),
            reason: None,
        },
        Decision::Deny(reason) => Answer {
            allow: false,
            principal: None,
            reason: Some(reason.to_owned()),
        },
    }))
}

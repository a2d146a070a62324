//! Who is calling: a workload token (`Authorization: Bearer …`) or, for task calls, a
//! proof-of-possession signature (`Authorization: Writ-PoP …`). Every refusal is recorded
//! as `token.rejected` ([`refusal::Refusal::token`]) before the 401 goes out.

use axum::http::{HeaderMap, Method};

use super::refusal::{self, Refusal};
use super::{ApiError, AppState};
use crate::identity::{Identity, MAX_TOKEN_BYTES, TokenError};
use crate::task::RequestContext;
use crate::task::lifecycle::Caller;
use crate::task::possession;

/// The `Authorization` header, split into scheme and credentials.
fn authorization(headers: &HeaderMap) -> Result<(&str, &str), TokenError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(TokenError::Missing)?;
    if value.len() > 2 * MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let value = value
        .to_str()
        .map_err(|_| TokenError::Malformed("non-ASCII Authorization header".into()))?;
    let (scheme, credentials) = value.split_once(' ').ok_or(TokenError::Missing)?;
    Ok((scheme, credentials.trim()))
}

/// The bearer token of a request.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenError> {
    let (scheme, token) = authorization(headers)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing);
    }
    Ok(token)
}

async fn reject(
    state: &AppState,
    token: Option<&str>,
    error: &TokenError,
    context: &RequestContext,
) -> ApiError {
    let claimed_issuer = token.and_then(|t| state.verifier.claimed_issuer(t));
    let answer = refusal::record(state, Refusal::token(claimed_issuer, error), context).await;
    if let Some(address) = context.client_ip() {
        state.rate.failed_auth_from(address);
    }
    answer
}

/// A client address over its budget of failed authentications is answered 429 before
/// its credentials are even looked at (and the refusal joins its flood summary).
async fn refuse_if_flooding(state: &AppState, context: &RequestContext) -> Result<(), ApiError> {
    let Some(limited) = context.client_ip().and_then(|a| state.rate.flooding(a)) else {
        return Ok(());
    };
    let answer = ApiError::rate_limited(
        "too many failed authentications from this address",
        limited.retry_after_secs,
    );
    let refused = Refusal::new(
        crate::audit::AuditEntry::new(
            crate::audit::event::TOKEN_REJECTED,
            crate::audit::Outcome::Failure,
        ),
        answer,
    );
    Err(refusal::record(state, refused, context).await)
}

/// Verify the bearer token at the request's time, auditing a refusal as
/// `token.rejected`.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    context: &RequestContext,
) -> Result<Identity, ApiError> {
    refuse_if_flooding(state, context).await?;
    let now_unix = context.now.unix_timestamp();
    let token = bearer_token(headers);
    let result = match &token {
        Ok(token) => state.verifier.verify(token, now_unix).await,
        Err(e) => Err(e.clone()),
    };
    match result {
        Ok(identity) => Ok(identity),
        Err(error) => Err(reject(state, token.ok(), &error, context).await),
    }
}

/// The caller of a task endpoint: a bearer token or a proof of possession over
/// `method path` and `body`, judged at the request's time.
pub async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    body: &[u8],
    context: &RequestContext,
) -> Result<Caller, ApiError> {
    refuse_if_flooding(state, context).await?;
    let now_unix = context.now.unix_timestamp();
    if let Ok((scheme, params)) = authorization(headers)
        && scheme.eq_ignore_ascii_case(possession::SCHEME)
    {
        let result = match possession::parse(params) {
            Some(p) => {
                state
                    .issuer
                    .verify_possession(&p, method.as_str(), path, body, now_unix)
                    .await
            }
            None => Err(TokenError::Malformed(
                "proof of possession header does not parse".into(),
            )),
        };
        return match result {
            Ok(caller) => Ok(caller),
            Err(error) => Err(reject(state, None, &error, context).await),
        };
    }
    authenticate(state, headers, context)
        .await
        .map(Caller::Token)
}

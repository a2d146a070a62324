//! `POST /v1/host-certificates`: a host, authenticated by its own workload token, gets a
//! host certificate for each of its public keys, naming the host names a `role = "host"`
//! policy grants it. Same verification, replay rules, rate limits and failed-auth budget
//! as `POST /v1/certificates`; every refusal is a `host_cert.denied` (or
//! `token.rejected`) record before the answer.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::certificates::{admit, rfc3339};
use super::refusal::{self, Refusal, Who};
use super::{ApiError, AppState};
use crate::audit::event;
use crate::task::RequestContext;
use crate::task::host_certificates::{HostIssued, HostRequest};

/// Request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCertificatesRequest {
    /// OpenSSH public key lines (the host's `/etc/ssh/ssh_host_*_key.pub`).
    pub public_keys: Vec<String>,
    /// Host names every certificate names.
    pub names: Vec<String>,
}

/// One certificate of the response.
#[derive(Debug, Serialize, Deserialize)]
pub struct HostCertificateBody {
    /// The certificate, OpenSSH format (what `…-cert.pub` holds).
    pub certificate: String,
    /// Serial, decimal.
    pub serial: String,
    /// `SHA256:…` of the certified host key (which request key it is for).
    pub public_key_fingerprint: String,
    /// RFC 3339.
    pub valid_after: String,
    /// RFC 3339.
    pub valid_before: String,
}

/// Response body.
#[derive(Debug, Serialize, Deserialize)]
pub struct HostCertificatesResponse {
    /// One per requested key, in the request's order.
    pub certificates: Vec<HostCertificateBody>,
    /// The principals of every certificate: exactly the requested names.
    pub names: Vec<String>,
    /// Seconds from now until the certificates expire (renew at two thirds).
    pub ttl_seconds: i64,
    /// `SHA256:…` of the host CA key that signed them.
    pub ca_fingerprint: String,
}

/// Handler.
pub async fn create(
    State(state): State<Arc<AppState>>,
    context: RequestContext,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<HostCertificatesResponse>), ApiError> {
    let identity = admit(&state, &context, &headers, event::HOST_CERT_DENIED).await?;
    let request: HostCertificatesRequest = match super::decode_json(body) {
        Ok(request) => request,
        Err(error) => {
            let refused = Refusal::of(
                event::HOST_CERT_DENIED,
                Who::Identity(&identity),
                None,
                error,
            );
            return Err(refusal::record(&state, refused, &context).await);
        }
    };
    let request = HostRequest {
        public_keys: request.public_keys,
        names: request.names,
    };
    let issued = state.host_issuer.issue(&identity, &request, &context).await;
    let issued = refusal::settle(&state, &context, issued).await?;
    let now = context.now.unix_timestamp();
    Ok((StatusCode::CREATED, Json(render(issued, now))))
}

fn render(issued: HostIssued, now: i64) -> HostCertificatesResponse {
    let (valid_after, valid_before) = (rfc3339(issued.valid_after), rfc3339(issued.valid_before));
    HostCertificatesResponse {
        certificates: issued
            .certificates
            .into_iter()
            .map(|c| HostCertificateBody {
                certificate: c.certificate,
                serial: c.serial.to_string(),
                public_key_fingerprint: c.public_key_fingerprint,
                valid_after: valid_after.clone(),
                valid_before: valid_before.clone(),
            })
            .collect(),
        names: issued.names,
        ttl_seconds: issued.valid_before.saturating_sub(now),
        ca_fingerprint: issued.ca_fingerprint,
    }
}

//! Telling the CA which revocation feed this host has applied:
//! `POST {ca_url}/v1/revocations/applied` `{"host", "sequence"}`, authenticated with the
//! host's workload token (`token_file`), so `writ admin task revoke` can show an operator
//! how many hosts have the revocation in force.
//!
//! Only for hosts with a `token_file` (the CA must know who speaks). Best effort and
//! bounded by the host config's `timeout`: a failed acknowledgement is reported, never a
//! reason to fail the sync that installed the feed. Never sends or logs the token
//! anywhere but the CA's `Authorization` header.

use serde::Serialize;

use crate::ca_post::{self, PostError};
use crate::config::HostConfig;
use crate::online::{ErrorEnvelope, MAX_RESPONSE_BYTES, read_token};

/// Path of the acknowledgement endpoint below `ca_url`.
pub const APPLIED_PATH: &str = "/v1/revocations/applied";

/// What became of an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acknowledgement {
    /// Not sent: no `token_file`, or nothing new to say this round.
    NotSent,
    /// The CA recorded it.
    Recorded,
    /// It could not be delivered or the CA refused it (why, in words).
    Failed(String),
}

#[derive(Serialize)]
struct Applied<'a> {
    host: &'a str,
    sequence: i64,
}

/// Tell the CA this host applied the feed `sequence` (see the module documentation).
pub fn acknowledge(config: &HostConfig, sequence: i64) -> Acknowledgement {
    if config.token_file.is_none() {
        return Acknowledgement::NotSent;
    }
    let url = ca_post::url(config, APPLIED_PATH);
    let failed = |detail: String| Acknowledgement::Failed(format!("POST {url}: {detail}"));
    let token = match read_token(config) {
        Ok(token) => token,
        Err(e) => return failed(e.to_string()),
    };
    let Some(host) = config.host_name.as_deref() else {
        return failed("this host has no name (host_name)".into());
    };
    let applied = Applied { host, sequence };
    let reply = match ca_post::post_json(config, &token, APPLIED_PATH, &applied) {
        Ok(reply) => reply,
        Err(PostError::Encode(e)) => return failed(format!("cannot encode the report: {e}")),
        Err(e) => return failed(e.to_string()),
    };
    let status = reply.status();
    if status == 200 {
        return Acknowledgement::Recorded;
    }
    let code = reply
        .body(MAX_RESPONSE_BYTES)
        .ok()
        .and_then(|b| serde_json::from_slice::<ErrorEnvelope>(&b).ok())
        .map(|e| e.error.code)
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .unwrap_or_else(|| "unknown".to_owned());
    failed(format!("HTTP {status} {code}"))
}

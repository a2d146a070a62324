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

use crate::config::HostConfig;
use crate::online::{ErrorEnvelope, MAX_RESPONSE_BYTES, http_agent, read_token, transport_error};

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
    let url = format!("{}{APPLIED_PATH}", config.ca_base_url());
    let failed = |detail: String| Acknowledgement::Failed(format!("POST {url}: {detail}"));
    let token = match read_token(config) {
        Ok(token) => token,
        Err(e) => return failed(e.to_string()),
    };
    let Some(host) = config.host_name.as_deref() else {
        return failed("this host has no name (host_name)".into());
    };
    let body = match serde_json::to_vec(&Applied { host, sequence }) {
        Ok(body) => body,
        Err(e) => return failed(format!("cannot encode the report: {e}")),
    };
    let agent = match http_agent(config) {
        Ok(agent) => agent,
        Err(e) => return failed(e.to_string()),
    };
    let mut response = match agent
        .post(&url)
        .header("Authorization", format!("Bearer {token}"))
        .content_type("application/json")
        .send(&body[..])
    {
        Ok(response) => response,
        Err(e) => return failed(transport_error(config, &e)),
    };
    let status = response.status().as_u16();
    if status == 200 {
        return Acknowledgement::Recorded;
    }
    let code = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .ok()
        .and_then(|b| serde_json::from_slice::<ErrorEnvelope>(&b).ok())
        .map(|e| e.error.code)
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .unwrap_or_else(|| "unknown".to_owned());
    failed(format!("HTTP {status} {code}"))
}

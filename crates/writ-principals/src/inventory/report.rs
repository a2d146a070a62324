//! `inventory --report`: `POST {ca_url}/v1/inventory` with the inventory document,
//! authenticated with this host's own workload token exactly as `host-cert` and online
//! `check` are ([`crate::online::read_token`], `ca_post::post_json`: TLS from
//! the host config, every call bounded by its `timeout`). The CA answers
//! `{"host", "recorded_at", "new_findings"}`.
//!
//! It never logs the token, reads at most [`MAX_ANSWER_BYTES`] of the answer, and repeats
//! only a code-shaped error code and a bounded, escaped message from the CA.

use serde::Deserialize;

use super::model::Inventory;
use crate::ca_post::{self, PostError};
use crate::config::HostConfig;
use crate::online::{TokenError, read_token};

/// The CA's endpoint for host inventories.
pub const INVENTORY_PATH: &str = "/v1/inventory";
/// Largest answer read from the CA.
pub const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// Longest CA message repeated.
const MAX_MESSAGE: usize = 200;

/// Why the report was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The host's token could not be read.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The CA could not be reached or its answer could not be read.
    #[error("POST {url}: {detail}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The CA refused the report.
    #[error("POST {url}: the CA refused the report: HTTP {status} {code}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Refused {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The CA's error code (`unknown` if it gave none).
        code: String,
        /// The CA's message (bounded, escaped).
        message: String,
    },
}

/// What the CA recorded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Recorded {
    /// The host the CA recorded the inventory for.
    pub host: String,
    /// When (Unix seconds).
    pub recorded_at: i64,
    /// Findings the CA had not seen from this host before.
    pub new_findings: u64,
}

/// Send `inventory` to the CA named by `config`.
pub fn send(config: &HostConfig, inventory: &Inventory) -> Result<Recorded, ReportError> {
    let token = read_token(config)?;
    let url = ca_post::url(config, INVENTORY_PATH);
    let unreachable = |detail: String| ReportError::Unreachable {
        url: url.clone(),
        detail,
    };
    let reply = ca_post::post_json(config, &token, INVENTORY_PATH, inventory).map_err(|e| {
        unreachable(match e {
            PostError::Encode(e) => format!("cannot encode the inventory: {e}"),
            e => e.to_string(),
        })
    })?;
    let status = reply.status();
    let text = reply
        .body_prefix(MAX_ANSWER_BYTES)
        .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
    if status != 200 {
        let (code, message) = error_of(&text);
        return Err(ReportError::Refused {
            url,
            status,
            code,
            message,
        });
    }
    serde_json::from_slice::<Recorded>(&text)
        .map_err(|e| unreachable(format!("not an inventory answer: {e}")))
}

/// The code and message of the CA's error body: `{"error": "code", "message": "…"}` or
/// the envelope `{"error": {"code": "…", "message": "…"}}`.
fn error_of(body: &[u8]) -> (String, String) {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let (code, message) = match value.get("error") {
        Some(serde_json::Value::String(code)) => (
            Some(code.as_str()),
            value.get("message").and_then(|m| m.as_str()),
        ),
        Some(error @ serde_json::Value::Object(_)) => (
            error.get("code").and_then(|c| c.as_str()),
            error.get("message").and_then(|m| m.as_str()),
        ),
        _ => (None, None),
    };
    let code = code
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .unwrap_or("unknown")
        .to_owned();
    let mut shown = String::new();
    let message: String = message
        .unwrap_or_default()
        .chars()
        .take(MAX_MESSAGE)
        .collect();
    // Writing to a String cannot fail.
    let _ = writ_formats::text::write_escaped(&mut shown, &message);
    (code, shown)
}

/// The one-line result printed after a report.
pub fn result_line(recorded: &Recorded) -> String {
    let mut host = String::new();
    let _ = writ_formats::text::write_escaped(&mut host, &recorded.host);
    format!(
        "inventory of {host} recorded by the CA at {} ({} new finding(s))",
        writ_formats::text::rfc3339(recorded.recorded_at),
        recorded.new_findings
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::model::{Summary, VERSION};
    use crate::online::tests::{ca_stand_in, online_config};
    use std::time::Duration;

    fn inventory() -> Inventory {
        Inventory {
            version: VERSION,
            host: "web-01.prod.example.com".to_owned(),
            generated_at: 1_700_000_000,
            sshd: crate::inventory::model::Sshd {
                config: "/etc/ssh/sshd_config".to_owned(),
                error: None,
                authorized_keys_files: vec![".ssh/authorized_keys".to_owned()],
                authorized_keys_command: None,
                authorized_principals_file: None,
                authorized_principals_command: None,
                trusted_user_ca_keys: None,
                password_authentication: true,
                kbd_interactive_authentication: false,
                permit_root_login: "prohibit-password".to_owned(),
                pubkey_authentication: true,
                match_blocks_not_evaluated: vec![],
            },
            writ_enforced: false,
            enforcement_problems: vec!["x".to_owned()],
            accounts: vec![],
            private_keys: vec![],
            encrypted_private_keys: 0,
            skipped: vec![],
            limits_hit: false,
            summary: Summary::default(),
        }
    }

    fn config(url: String, dir: &std::path::Path) -> HostConfig {
        let token = dir.join("token");
        std::fs::write(&token, "host.jwt.token\n").expect("token");
        online_config(url, dir, token)
    }

    #[test]
    fn posts_the_document_with_the_hosts_token() {
        let (url, requests) = ca_stand_in(
            "200 OK",
            r#"{"host": "web-01.prod.example.com", "recorded_at": 1700000001, "new_findings": 3}"#,
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let recorded = send(&config(url, dir.path()), &inventory()).expect("recorded");
        assert_eq!(recorded.new_findings, 3);
        assert!(result_line(&recorded).contains("3 new finding(s)"));
        let request = requests
            .recv_timeout(Duration::from_secs(5))
            .expect("request");
        assert!(
            request.starts_with("POST /v1/inventory HTTP/1.1\r\n"),
            "{request}"
        );
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer host.jwt.token\r\n"));
        assert!(lower.contains("content-type: application/json\r\n"));
        let body = crate::online::tests::request_json(&request);
        let sent: Inventory = serde_json::from_value(body).expect("an inventory");
        assert_eq!(sent, inventory());
    }

    #[test]
    fn refusals_name_the_code() {
        for body in [
            r#"{"error": "unknown_host", "message": "no such host"}"#,
            r#"{"error": {"code": "unknown_host", "message": "no such host"}}"#,
        ] {
            let (url, _requests) = ca_stand_in("403 Forbidden", body);
            let dir = tempfile::tempdir().expect("tempdir");
            let error = send(&config(url, dir.path()), &inventory()).expect_err("refused");
            let text = error.to_string();
            assert!(
                text.contains("HTTP 403 unknown_host: no such host"),
                "{text}"
            );
        }
    }

    #[test]
    fn an_unreachable_ca_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Bound but never listening: connection refused, and the port stays taken.
        let held = tokio::net::TcpSocket::new_v4().expect("socket");
        held.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let port = held.local_addr().expect("local addr").port();
        let error = send(
            &config(format!("http://127.0.0.1:{port}"), dir.path()),
            &inventory(),
        )
        .expect_err("unreachable");
        assert!(matches!(error, ReportError::Unreachable { .. }), "{error}");
    }
}

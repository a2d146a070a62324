//! The host's authenticated calls to the CA: `POST {ca_url}{path}` with a JSON body and
//! this host's own workload token as `Authorization: Bearer`, through
//! [`crate::online`]'s HTTP agent (TLS as [`crate::tls`] says, no redirects, every call —
//! body included — bounded by the host config's `timeout`). Used by online `check`,
//! `session` and `sessions` ([`crate::online::authorize`]), the sync's acknowledgement
//! ([`crate::acknowledge`]), `inventory --report` ([`crate::inventory::report`]) and
//! `host-cert` ([`crate::host_cert`]).
//!
//! It owns the URL, the JSON encoding of the body, the request itself and the words for a
//! failed one ([`PostError`]). It reads no token (callers read it with
//! [`crate::online::read_token`], each at its own moment), interprets no status, and reads
//! no more of an answer than the caller allows ([`Reply`]).
//!
//! It must never log the token, put it in an error or a URL, or send it anywhere but the
//! `Authorization` header of a request to the configured `ca_url` (hence no redirects).

use std::fmt;
use std::io::Read;

use serde::Serialize;

use crate::config::HostConfig;
use crate::online::http_agent;
use crate::tls::TlsFileError;

/// The URL of the CA's endpoint `path` (`/v1/…`).
pub(crate) fn url(config: &HostConfig, path: &str) -> String {
    format!("{}{path}", config.ca_base_url())
}

/// Why a POST got no answer. None of them holds the token.
#[derive(Debug)]
pub(crate) enum PostError {
    /// The body could not be encoded as JSON.
    Encode(serde_json::Error),
    /// The TLS files of the host config could not be read.
    Tls(TlsFileError),
    /// The CA could not be reached, or the TLS handshake or the request failed (in words,
    /// an untrusted CA certificate saying what it must chain to).
    Transport(String),
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostError::Encode(e) => write!(f, "cannot encode the request: {e}"),
            PostError::Tls(e) => write!(f, "{e}"),
            PostError::Transport(detail) => f.write_str(detail),
        }
    }
}

/// The CA's answer: its status, and its body not read yet. Callers read it their own way:
/// `authorize` and `acknowledge` refuse a longer answer than they allow ([`Reply::body`]),
/// `inventory --report` and `host-cert` read only its first bytes ([`Reply::body_prefix`]),
/// and `acknowledge` reads none of a 200.
pub(crate) struct Reply(ureq::http::Response<ureq::Body>);

impl Reply {
    /// The HTTP status.
    pub(crate) fn status(&self) -> u16 {
        self.0.status().as_u16()
    }

    /// The body; one longer than `limit` bytes is an error.
    pub(crate) fn body(mut self, limit: u64) -> Result<Vec<u8>, ureq::Error> {
        self.0.body_mut().with_config().limit(limit).read_to_vec()
    }

    /// At most the first `limit` bytes of the body (the rest is not read).
    pub(crate) fn body_prefix(mut self, limit: u64) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        self.0
            .body_mut()
            .as_reader()
            .take(limit)
            .read_to_end(&mut body)?;
        Ok(body)
    }
}

/// `POST {ca_url}{path}` with `body` as JSON and `token` as the bearer token (see the
/// module documentation). Any HTTP status is a [`Reply`]; bounded by `config.timeout`.
pub(crate) fn post_json<T: Serialize + ?Sized>(
    config: &HostConfig,
    token: &str,
    path: &str,
    body: &T,
) -> Result<Reply, PostError> {
    let body = serde_json::to_vec(body).map_err(PostError::Encode)?;
    let agent = http_agent(config).map_err(PostError::Tls)?;
    agent
        .post(url(config, path))
        .header("Authorization", format!("Bearer {token}"))
        .content_type("application/json")
        .send(&body[..])
        .map(Reply)
        .map_err(|e| PostError::Transport(transport_error(config, &e)))
}

/// A transport error in words; an untrusted CA certificate says what it must chain to.
fn transport_error(config: &HostConfig, error: &ureq::Error) -> String {
    if crate::tls::is_untrusted_certificate(error) {
        format!(
            "the CA's TLS certificate is not trusted ({error}): it does not chain to {}",
            crate::tls::trust_source(config)
        )
    } else if crate::tls::may_need_client_certificate(config, error) {
        format!(
            "{error}; if the CA requires client certificates (mutual TLS), set client_cert \
             and client_key in the host config"
        )
    } else {
        error.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::online::tests::{ca_stand_in, online_config, request_json};

    #[test]
    fn posts_json_with_the_bearer_token_and_returns_any_status() {
        let (url, requests) = ca_stand_in("403 Forbidden", r#"{"error": {"code": "no"}}"#);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = online_config(url, dir.path(), dir.path().join("token"));
        let reply = post_json(
            &config,
            "host.jwt.token",
            "/v1/x",
            &serde_json::json!({"a": 1}),
        )
        .expect("a reply");
        assert_eq!(reply.status(), 403);
        assert_eq!(
            reply.body(64).expect("body"),
            br#"{"error": {"code": "no"}}"#
        );
        let request = requests
            .recv_timeout(Duration::from_secs(5))
            .expect("request");
        assert!(request.starts_with("POST /v1/x HTTP/1.1\r\n"), "{request}");
        let lower = request.to_ascii_lowercase();
        assert!(
            lower.contains("authorization: bearer host.jwt.token\r\n"),
            "{request}"
        );
        assert!(
            lower.contains("content-type: application/json\r\n"),
            "{request}"
        );
        assert_eq!(request_json(&request), serde_json::json!({"a": 1}));
    }

    #[test]
    fn a_long_answer_is_refused_by_body_and_cut_by_body_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let post = || {
            let (url, _requests) = ca_stand_in("200 OK", r#"{"long": "answer"}"#);
            let config = online_config(url, dir.path(), dir.path().join("token"));
            post_json(&config, "t", "/v1/x", &()).expect("a reply")
        };
        let error = post().body(4).expect_err("too long");
        assert!(matches!(error, ureq::Error::BodyExceedsLimit(4)), "{error}");
        assert_eq!(post().body_prefix(4).expect("prefix"), br#"{"lo"#);
    }

    #[test]
    fn failures_never_name_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Bound but never listening: connection refused, and the port stays taken.
        let held = tokio::net::TcpSocket::new_v4().expect("socket");
        held.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let port = held.local_addr().expect("local addr").port();
        let config = online_config(
            format!("http://127.0.0.1:{port}"),
            dir.path(),
            dir.path().join("token"),
        );
        let Err(error) = post_json(&config, "secret.token", "/v1/x", &()) else {
            panic!("a never-listening socket answered");
        };
        assert!(matches!(error, PostError::Transport(_)), "{error}");
        assert!(!error.to_string().contains("secret.token"), "{error}");
        assert!(!format!("{error:?}").contains("secret.token"), "{error:?}");
    }
}

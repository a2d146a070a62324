//! Online mode's one network call: `POST {ca_url}/v1/authorize`, authenticated with this
//! host's own workload token, asking the CA whether a certificate may log in now
//! (`phase: "check"`, from `writ-principals check`) or recording that it did
//! (`phase: "session"`, from `writ-principals session` after a real login).
//!
//! The call is blocking and bounded by the host config's `timeout` as a whole — DNS,
//! connect, TLS, request, response and body — so a hung CA holds sshd's pre-auth slot
//! for at most that long. [`authorize`] never fails: every outcome is an [`Answer`], and
//! the caller decides what each means (`check` falls back to the local revocation feed
//! only on [`Answer::Unavailable`]). The request itself is `ca_post::post_json`.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ca_post::{self, PostError};
use crate::config::HostConfig;
use crate::tls::TlsFileError;

/// Path of the authorize endpoint below `ca_url`.
pub const AUTHORIZE_PATH: &str = "/v1/authorize";
/// Largest accepted token file.
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// Largest accepted answer from the CA.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// Longest reason or error code taken over from the CA.
const MAX_CODE_LEN: usize = 64;

/// Why a `POST /v1/authorize` is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// sshd's AuthorizedPrincipalsCommand (also runs for probes): the CA records nothing.
    Check,
    /// A session was opened after successful authentication: the CA records `cert.used`.
    Session,
    /// This host ended a session with its task ([`crate::sessions`]): the CA records
    /// `cert.session_ended` with the request's `reason`.
    #[serde(rename = "session_ended")]
    SessionEnded,
}

/// The request body of `POST /v1/authorize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorizeRequest<'a> {
    /// The login asked for.
    pub login: &'a str,
    /// The certificate as sshd's `%k`: base64 of the binary certificate.
    pub certificate: &'a str,
    /// This host's name.
    pub host: &'a str,
    /// Check or session.
    pub phase: Phase,
    /// Why the session ended (`session_ended` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// What the CA said, or why it said nothing useful.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 `{"allow": true, "principal": …}`.
    Allow {
        /// The principal the CA admits.
        principal: String,
    },
    /// 200 `{"allow": false, "reason": …}`; `reason` is the CA's snake_case code (or
    /// `ca_denied` if it gave none that looks like one).
    Deny {
        /// The CA's reason code.
        reason: String,
    },
    /// 401 or 403: the CA refused this host's own token. A configuration error, not an
    /// outage: callers deny rather than fall back.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error envelope's code, if any (`unknown` otherwise).
        code: String,
    },
    /// No usable answer: connection or TLS failure, timeout, 5xx, another status, or a
    /// body that is not the documented JSON.
    Unavailable {
        /// What went wrong, for logs.
        detail: String,
    },
}

/// Why the host's own token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// `token_file` is not set (config validation requires it in online mode).
    #[error("token_file is not set in the host config")]
    NotConfigured,
    /// The file could not be read.
    #[error("cannot read token file {}: {detail}", path.display())]
    Read {
        /// The token file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The file is empty or holds something that cannot be a bearer token.
    #[error("token file {} does not hold a token", path.display())]
    Invalid {
        /// The token file.
        path: PathBuf,
    },
}

/// Read this host's workload token from `token_file`: one token, surrounding whitespace
/// ignored, printable ASCII only (it goes into an HTTP header). Never logged.
pub fn read_token(config: &HostConfig) -> Result<String, TokenError> {
    let path = config
        .token_file
        .as_ref()
        .ok_or(TokenError::NotConfigured)?;
    let read_error = |detail: String| TokenError::Read {
        path: path.clone(),
        detail,
    };
    let mut text = String::new();
    File::open(path)
        .and_then(|file| file.take(MAX_TOKEN_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| read_error(e.to_string()))?;
    if text.len() as u64 > MAX_TOKEN_BYTES {
        return Err(read_error(format!("larger than {MAX_TOKEN_BYTES} bytes")));
    }
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Invalid { path: path.clone() });
    }
    Ok(token.to_owned())
}

/// A blocking HTTP agent for `config`'s CA whose every call, body included, ends within
/// `config.timeout`. No redirects (the CA's URL is configured, not discovered), statuses
/// are returned rather than turned into errors, and an `https://` CA is trusted as
/// [`crate::tls`] says.
pub(crate) fn http_agent(config: &HostConfig) -> Result<ureq::Agent, TlsFileError> {
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("writ-principals/", env!("CARGO_PKG_VERSION")))
        .tls_config(crate::tls::tls_config(config)?)
        .build()
        .into())
}

#[derive(Deserialize)]
struct AuthorizeResponse {
    allow: bool,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// The CA's error envelope (`{"error": {"code", "message"}}`).
#[derive(Deserialize)]
pub(crate) struct ErrorEnvelope {
    pub(crate) error: ErrorBody,
}

/// The CA's error: a stable code and a message for people.
#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) message: String,
}

/// Ask the CA (see the module documentation). Bounded by `config.timeout`.
pub fn authorize(config: &HostConfig, token: &str, request: &AuthorizeRequest<'_>) -> Answer {
    let url = ca_post::url(config, AUTHORIZE_PATH);
    let unavailable = |detail: String| Answer::Unavailable { detail };
    let reply = match ca_post::post_json(config, token, AUTHORIZE_PATH, request) {
        Ok(reply) => reply,
        Err(e @ PostError::Transport(_)) => return unavailable(format!("POST {url}: {e}")),
        Err(e) => return unavailable(e.to_string()),
    };
    let status = reply.status();
    let body = reply.body(MAX_RESPONSE_BYTES);
    match status {
        200 => {
            let body = match body {
                Ok(body) => body,
                Err(e) => return unavailable(format!("POST {url}: reading the answer: {e}")),
            };
            match serde_json::from_slice::<AuthorizeResponse>(&body) {
                Ok(AuthorizeResponse {
                    allow: true,
                    principal: Some(principal),
                    ..
                }) => Answer::Allow { principal },
                Ok(AuthorizeResponse {
                    allow: false,
                    reason,
                    ..
                }) => Answer::Deny {
                    reason: reason
                        .filter(|r| is_code(r))
                        .unwrap_or_else(|| "ca_denied".to_owned()),
                },
                Ok(_) => unavailable(format!("POST {url}: allow without a principal")),
                Err(e) => unavailable(format!("POST {url}: malformed answer: {e}")),
            }
        }
        401 | 403 => {
            let code = body
                .ok()
                .and_then(|b| serde_json::from_slice::<ErrorEnvelope>(&b).ok())
                .map(|e| e.error.code)
                .filter(|c| is_code(c))
                .unwrap_or_else(|| "unknown".to_owned());
            Answer::Refused { status, code }
        }
        other => unavailable(format!("POST {url}: HTTP {other}")),
    }
}

/// A snake_case code as the CA writes them; anything else is not repeated in our logs.
fn is_code(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_CODE_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::path::Path;
    use std::sync::mpsc;
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::Mode;

    /// A one-request HTTP responder standing in for the CA at the protocol level: it
    /// answers `status` with a JSON `body` and hands the request (head and body) back.
    pub(crate) fn ca_stand_in(
        status: &'static str,
        body: &'static str,
    ) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map(|n| n == 0).unwrap_or(true) {
                    return;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                request.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut payload = vec![0; length];
            if reader.read_exact(&mut payload).is_err() {
                return;
            }
            request.push_str(&String::from_utf8_lossy(&payload));
            let _ = tx.send(request);
            let mut stream = reader.into_inner();
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        });
        (format!("http://{addr}"), rx)
    }

    /// The JSON body of a request seen by [`ca_stand_in`].
    pub(crate) fn request_json(request: &str) -> serde_json::Value {
        let body = request.split("\r\n\r\n").nth(1).expect("body");
        serde_json::from_str(body).expect("json body")
    }

    pub(crate) fn online_config(
        ca_url: String,
        state_dir: &Path,
        token_file: PathBuf,
    ) -> HostConfig {
        HostConfig {
            mode: Mode::Online,
            token_file: Some(token_file),
            ..HostConfig::for_tests(&ca_url, "web-01.prod.example.com", state_dir)
        }
    }

    fn ask(status: &'static str, body: &'static str) -> (Answer, String) {
        let (url, requests) = ca_stand_in(status, body);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = online_config(url, dir.path(), dir.path().join("token"));
        let request = AuthorizeRequest {
            login: "deploy",
            certificate: "AAAAcert",
            host: "web-01.prod.example.com",
            phase: Phase::Check,
            reason: None,
        };
        let answer = authorize(&config, "host.jwt.token", &request);
        let seen = requests
            .recv_timeout(Duration::from_secs(5))
            .expect("request seen");
        (answer, seen)
    }

    #[test]
    fn sends_bearer_token_and_json() {
        let (answer, request) = ask("200 OK", r#"{"allow": true, "principal": "writ:t:deploy"}"#);
        assert_eq!(
            answer,
            Answer::Allow {
                principal: "writ:t:deploy".to_owned()
            }
        );
        assert!(
            request.starts_with("POST /v1/authorize HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer host.jwt.token\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-type: application/json\r\n"),
            "{request}"
        );
        assert_eq!(
            request_json(&request),
            serde_json::json!({"login": "deploy", "certificate": "AAAAcert",
                               "host": "web-01.prod.example.com", "phase": "check"})
        );
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(
            ask("200 OK", r#"{"allow": false, "reason": "task_revoked"}"#).0,
            Answer::Deny {
                reason: "task_revoked".to_owned()
            }
        );
        // A reason that is not a code is not repeated.
        assert_eq!(
            ask("200 OK", r#"{"allow": false, "reason": "x\ny"}"#).0,
            Answer::Deny {
                reason: "ca_denied".to_owned()
            }
        );
        assert_eq!(
            ask(
                "403 Forbidden",
                r#"{"error": {"code": "not_a_host", "message": "no"}}"#
            )
            .0,
            Answer::Refused {
                status: 403,
                code: "not_a_host".to_owned()
            }
        );
        assert!(matches!(
            ask("401 Unauthorized", "").0,
            Answer::Refused { status: 401, .. }
        ));
        for (status, body) in [
            ("503 Service Unavailable", r#"{"error": {"code": "x"}}"#),
            ("500 Internal Server Error", ""),
            ("404 Not Found", ""),
            ("200 OK", "not json"),
            ("200 OK", r#"{"allow": true}"#),
        ] {
            let (answer, _) = ask(status, body);
            assert!(
                matches!(answer, Answer::Unavailable { .. }),
                "{status} {body}: {answer:?}"
            );
        }
    }

    #[test]
    fn a_silent_ca_is_unavailable_within_the_timeout() {
        // The kernel completes the handshake into the backlog; nobody ever answers.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = online_config(url, dir.path(), dir.path().join("token"));
        config.timeout = Duration::from_millis(300);
        let request = AuthorizeRequest {
            login: "deploy",
            certificate: "AAAA",
            host: "h",
            phase: Phase::Session,
            reason: None,
        };
        let started = Instant::now();
        let answer = authorize(&config, "t", &request);
        let elapsed = started.elapsed();
        assert!(matches!(answer, Answer::Unavailable { .. }), "{answer:?}");
        assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
        drop(listener);
    }

    #[test]
    fn tokens_are_read_trimmed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let mut config = online_config("https://ca".to_owned(), dir.path(), path.clone());
        assert!(matches!(read_token(&config), Err(TokenError::Read { .. })));
        std::fs::write(&path, "  eyJ.abc.def\n").expect("write");
        assert_eq!(read_token(&config).expect("token"), "eyJ.abc.def");
        for bad in ["", "\n", "a b", "a\r\nX-Injected: 1"] {
            std::fs::write(&path, bad).expect("write");
            assert!(
                matches!(read_token(&config), Err(TokenError::Invalid { .. })),
                "{bad:?}"
            );
        }
        config.token_file = None;
        assert!(matches!(
            read_token(&config),
            Err(TokenError::NotConfigured)
        ));
    }
}

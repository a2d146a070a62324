//! How the agent commands (`writ cert`, `writ ssh`, `writ task`) end when they fail: one
//! exit status per kind of failure, so a script or an agent can tell "get a token" from
//! "ask for less" from "try again later", and a one-line message naming what failed.
//!
//! | status | failure |
//! |---|---|
//! | 80 | no workload token: none found, or its source failed ([`Failure::NoToken`]) |
//! | 81 | the CA refused the token or proof of possession (401) |
//! | 82 | the CA's policy denied the request (403) |
//! | 83 | the CA is unreachable or unavailable (connection, TLS, timeout, 429, 5xx) |
//! | 84 | the host did not prove itself with a host certificate from the CA |
//! | 255 | ssh failed (ssh's own status for its errors; also when ssh cannot be started) |
//! | 1 | anything else (a bad flag value, a config file, a key file, other CA answers) |
//!
//! 80–84 are outside what shells (126, 127, 128+N), ssh (255) and sysexits.h (64–78)
//! use. On success `writ ssh` exits with the remote command's status, as ssh does.
//!
//! Messages never hold a token: they name its source (`file:/…`, `env:VAR`, …).

use super::ClientError;
use super::config::ClientConfigError;
use super::token_source::TokenSourceError;

/// The kinds of failure that have their own exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No workload token could be had.
    NoToken,
    /// The CA refused the token (or the proof of possession).
    TokenRefused,
    /// The CA's policy denied the request.
    PolicyDenied,
    /// The CA could not be reached, or cannot serve now.
    CaUnavailable,
    /// The host did not prove itself with a host certificate from the CA.
    HostUntrusted,
    /// ssh failed.
    Ssh,
    /// Anything else.
    Other,
}

impl Failure {
    /// The exit status.
    pub const fn code(self) -> u8 {
        match self {
            Failure::NoToken => 80,
            Failure::TokenRefused => 81,
            Failure::PolicyDenied => 82,
            Failure::CaUnavailable => 83,
            Failure::HostUntrusted => 84,
            Failure::Ssh => 255,
            Failure::Other => 1,
        }
    }
}

/// A failed agent command: its exit status and its one-line message.
#[derive(Debug)]
pub struct Exit {
    /// The kind of failure.
    pub failure: Failure,
    /// What to print after `writ: error: `.
    pub message: String,
}

impl From<TokenSourceError> for Exit {
    fn from(error: TokenSourceError) -> Exit {
        let failure = match error {
            // A spelling mistake in --token-source is a usage error, not a missing token.
            TokenSourceError::UnknownSource(_) | TokenSourceError::BadSpec { .. } => Failure::Other,
            _ => Failure::NoToken,
        };
        Exit {
            failure,
            message: error.to_string(),
        }
    }
}

impl From<ClientConfigError> for Exit {
    fn from(error: ClientConfigError) -> Exit {
        Exit {
            failure: Failure::Other,
            message: error.to_string(),
        }
    }
}

impl Exit {
    /// `error` of a call made with the workload token from `token_from` (`None`: with a
    /// proof of possession, or no credential).
    pub fn from_client(error: &ClientError, token_from: Option<&str>) -> Exit {
        let (failure, message) = match error {
            ClientError::Refused {
                status: 401,
                code,
                message,
            } => {
                let from = token_from.map_or_else(String::new, |f| format!(" from {f}"));
                (
                    Failure::TokenRefused,
                    format!("the CA refused the workload token{from} ({code}): {message}"),
                )
            }
            ClientError::PossessionRefused(_) => (Failure::TokenRefused, error.to_string()),
            ClientError::Refused {
                status: 403,
                code,
                message,
            } => (
                Failure::PolicyDenied,
                format!("the CA's policy denied the request ({code}): {message}"),
            ),
            ClientError::Refused {
                status: 429 | 500..,
                ..
            }
            | ClientError::Unreachable { .. } => (Failure::CaUnavailable, error.to_string()),
            ClientError::HostUntrusted(_) => (Failure::HostUntrusted, error.to_string()),
            ClientError::Ssh(_) | ClientError::Agent(_) => (Failure::Ssh, error.to_string()),
            _ => (Failure::Other, error.to_string()),
        };
        Exit {
            failure,
            message: one_line(&message),
        }
    }
}

/// `text` on one line: line breaks (a CA's message may hold some) become spaces.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|part| !part.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, code: &str) -> ClientError {
        ClientError::Refused {
            status,
            code: code.into(),
            message: "why\nexactly".into(),
        }
    }

    #[test]
    fn each_failure_has_its_own_status_and_one_line() {
        let exit = Exit::from_client(&refused(401, "token_expired"), Some("file:/t"));
        assert_eq!(exit.failure.code(), 81);
        assert_eq!(
            exit.message,
            "the CA refused the workload token from file:/t (token_expired): why exactly"
        );
        let exit = Exit::from_client(&refused(403, "host_not_allowed"), None);
        assert_eq!(exit.failure.code(), 82);
        assert!(exit.message.contains("(host_not_allowed)"));
        assert_eq!(
            Exit::from_client(&refused(503, "issuer_unavailable"), None).failure,
            Failure::CaUnavailable
        );
        assert_eq!(
            Exit::from_client(&refused(409, "task_not_active"), None).failure,
            Failure::Other
        );
        let codes = [
            Failure::NoToken,
            Failure::TokenRefused,
            Failure::PolicyDenied,
            Failure::CaUnavailable,
            Failure::HostUntrusted,
            Failure::Ssh,
            Failure::Other,
        ]
        .map(Failure::code);
        for (i, code) in codes.iter().enumerate() {
            assert!(!codes[i + 1..].contains(code), "{code} twice");
        }
        let none = TokenSourceError::NotFound { tried: vec![] };
        assert_eq!(Exit::from(none).failure, Failure::NoToken);
    }
}

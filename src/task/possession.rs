//! Proof of possession: an agent may authenticate task calls (renew, complete, inspect)
//! with a signature made by the private key of one of the task's live certificates,
//! instead of a fresh workload token — so an agent whose platform gives it one token per
//! hour never has to reuse a token.
//!
//! `Authorization: Writ-PoP cert=<base64 certificate blob>, ts=<unix seconds>,
//! sig=<base64 of an SSHSIG PEM>` where the SSHSIG (what `ssh-keygen -Y sign -n
//! pop@writ.dev` makes) covers [`message`]: the method, path, timestamp and the SHA-256 of
//! the body, one per line. A signature is accepted once, within [`MAX_SKEW_SECS`] of the
//! server's clock.

use base64ct::{Base64, Encoding};
use sha2::{Digest, Sha256};

use crate::audit;

/// Authorization scheme name.
pub const SCHEME: &str = "Writ-PoP";
/// SSHSIG namespace of proof-of-possession signatures.
pub const NAMESPACE: &str = "pop@writ.dev";
/// How far the signed timestamp may be from the server's clock.
pub const MAX_SKEW_SECS: i64 = 60;

/// A parsed proof-of-possession header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Possession {
    /// The certificate (OpenSSH wire format).
    pub certificate: Vec<u8>,
    /// Signed timestamp (Unix seconds).
    pub timestamp: i64,
    /// The SSHSIG, PEM text.
    pub signature_pem: String,
}

/// Parse the part of an `Authorization` header after the scheme.
pub fn parse(params: &str) -> Option<Possession> {
    let (mut cert, mut ts, mut sig) = (None, None, None);
    for part in params.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        let value = value.trim();
        match name.trim() {
            "cert" => cert = Some(Base64::decode_vec(value).ok()?),
            "ts" => ts = Some(value.parse::<i64>().ok()?),
            "sig" => sig = Some(String::from_utf8(Base64::decode_vec(value).ok()?).ok()?),
            _ => return None,
        }
    }
    Some(Possession {
        certificate: cert?,
        timestamp: ts?,
        signature_pem: sig?,
    })
}

/// The bytes an agent signs.
pub fn message(method: &str, path: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    format!(
        "writ-pop-v1\n{}\n{path}\n{timestamp}\n{}\n",
        method.to_ascii_uppercase(),
        audit::hex(&Sha256::digest(body))
    )
    .into_bytes()
}

/// Whether a signed `timestamp` is within [`MAX_SKEW_SECS`] of `now_unix`. The timestamp
/// comes from the request, so the distance is taken without overflow.
pub fn is_fresh(timestamp: i64, now_unix: i64) -> bool {
    timestamp.abs_diff(now_unix) <= MAX_SKEW_SECS.unsigned_abs()
}

/// Build the header value (for clients and tests).
pub fn header(certificate: &[u8], timestamp: i64, signature_pem: &str) -> String {
    format!(
        "{SCHEME} cert={}, ts={timestamp}, sig={}",
        Base64::encode_string(certificate),
        Base64::encode_string(signature_pem.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window is checked without overflow: `ts = i64::MIN + now` once passed, because
    /// `(ts - now).abs()` wrapped around.
    #[test]
    fn timestamps_far_from_now_are_not_fresh() {
        let now = 1_700_000_000;
        assert!(is_fresh(now, now));
        assert!(is_fresh(now - MAX_SKEW_SECS, now));
        assert!(is_fresh(now + MAX_SKEW_SECS, now));
        assert!(!is_fresh(now - MAX_SKEW_SECS - 1, now));
        assert!(!is_fresh(now + MAX_SKEW_SECS + 1, now));
        for ts in [i64::MIN, i64::MIN + now, i64::MIN + 1, i64::MAX, -now, 0] {
            assert!(!is_fresh(ts, now), "{ts}");
        }
        assert!(!is_fresh(i64::MAX, i64::MIN) && !is_fresh(i64::MIN, i64::MAX));
    }

    #[test]
    fn header_round_trips() {
        let value = header(
            b"certbytes",
            1234,
            "-----BEGIN SSH SIGNATURE-----\nabc\n-----END SSH SIGNATURE-----\n",
        );
        let params = value.strip_prefix("Writ-PoP ").expect("scheme");
        let parsed = parse(params).expect("parse");
        assert_eq!(parsed.certificate, b"certbytes");
        assert_eq!(parsed.timestamp, 1234);
        assert!(parsed.signature_pem.contains("abc"));
        assert!(parse("cert=AAAA, ts=1").is_none());
        assert!(parse("cert=AAAA, ts=1, sig=AAAA, extra=1").is_none());
    }

    #[test]
    fn message_binds_method_path_time_and_body() {
        let m = message("post", "/v1/tasks/x/complete", 5, b"{}");
        assert!(
            String::from_utf8_lossy(&m).starts_with("writ-pop-v1\nPOST\n/v1/tasks/x/complete\n5\n")
        );
        assert_ne!(m, message("POST", "/v1/tasks/x/complete", 5, b"{ }"));
    }
}

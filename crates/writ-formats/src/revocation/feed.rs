//! The revocation feed (`GET /v1/revocations`, `state_dir/revocations.json`): revoked tasks
//! and certificates that are still inside their validity, with an issue time and a
//! sequence number, signed by the CA.
//!
//! Wire form: `{"feed": "<JSON text of Feed>", "signature": "<SSHSIG PEM>"}`. The feed is
//! carried as a string so the signed bytes are exactly the bytes received — no JSON
//! canonicalisation. The signature is an OpenSSH SSHSIG (as `ssh-keygen -Y sign` makes)
//! in namespace [`NAMESPACE`] by a CA key; hosts accept it from any key they trust.
//!
//! Version 2 (`GET /v1/revocations?version=2`) adds a [`Binding`]: the SHA-256 digests of
//! the exact trust bundle and KRL bytes the CA built from the same snapshot. The bundle
//! and KRL are not signed themselves; the binding is what lets `sync` refuse an old
//! bundle or KRL (from a cache, a mirror, an attacker) served next to a current feed.
//! Version 1 has no binding; the CA still serves it by default, for hosts that predate
//! version 2 (they refuse unknown fields), and `sync` refuses it.
//!
//! Pure: the CA signs through its keyring (`writ::authority`), hosts verify with
//! [`verify`]; time is an input.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ssh_key::{PublicKey, SshSig};

/// SSHSIG namespace of feed signatures (keeps them useless for anything else).
pub const NAMESPACE: &str = "revocations@writ.dev";
/// Current feed format version: carries a [`Binding`].
pub const VERSION: u32 = 2;
/// The first format, without a [`Binding`]: served to hosts that do not ask for
/// [`VERSION`], read by `check` from a state directory synced before an upgrade, refused
/// by `sync`.
pub const VERSION_UNBOUND: u32 = 1;
/// Largest feed a host accepts.
pub const MAX_FEED_BYTES: usize = 16 * 1024 * 1024;
/// How far in the future a feed's `issued_at` may lie before a host refuses it: the clock
/// skew between the CA and a host that writ tolerates. A host whose clock is behind the
/// CA's by this much still sees a certificate as valid for this long after its
/// `valid_before`, which is why revocations are published that much longer too
/// ([`retention_after_end`]).
pub const HOST_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How long after a certificate's `valid_before` (a task's expiry) its revocation stays
/// in the feed and the KRL: the larger of the CA's `[ca] clock_skew` (how far behind the CA
/// it expects host clocks to be) and [`HOST_CLOCK_SKEW`] (how far behind a host may be and
/// still accept feeds). Dropping an entry exactly at `valid_before`, by the CA's clock,
/// would let a host whose clock lags admit a completed or revoked task's certificate
/// until its own clock reached `valid_before`.
pub fn retention_after_end(ca_clock_skew: Duration) -> Duration {
    ca_clock_skew.max(HOST_CLOCK_SKEW)
}

/// The revocation state at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feed {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// When the CA generated this feed (Unix seconds).
    pub issued_at: i64,
    /// Monotonic: never smaller in a later feed.
    pub sequence: i64,
    /// Ended (completed or revoked) tasks that have not expired yet.
    pub revoked_tasks: Vec<RevokedTask>,
    /// Revoked certificates still inside their validity window.
    pub revoked_serials: Vec<RevokedSerial>,
    /// Version 2: the trust bundle and KRL this feed goes with; absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
}

/// The documents a version-2 feed was published with, by the SHA-256 (lowercase hex) of
/// their exact bytes as served: `GET /v1/ca/trusted-keys`, and `GET /v1/krl` for this
/// feed's `sequence` and `issued_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// SHA-256 of the trust bundle body.
    pub trusted_keys_sha256: String,
    /// SHA-256 of the KRL body.
    pub krl_sha256: String,
}

impl Binding {
    /// The binding of these exact bodies.
    pub fn of(trusted_keys: &[u8], krl: &[u8]) -> Binding {
        Binding {
            trusted_keys_sha256: sha256_hex(trusted_keys),
            krl_sha256: sha256_hex(krl),
        }
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An ended task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedTask {
    /// Task id.
    pub task_id: String,
    /// When the task would have expired (after that no certificate of it is valid).
    pub until: i64,
}

/// A revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedSerial {
    /// Serial (decimal).
    pub serial: String,
    /// SHA-256 fingerprint of the CA key that signed it.
    pub ca_fingerprint: String,
    /// The certificate's `valid_before`.
    pub until: i64,
}

/// A feed with its signature, as served and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedFeed {
    /// JSON text of a [`Feed`].
    pub feed: String,
    /// SSHSIG PEM over the bytes of `feed`.
    pub signature: String,
}

/// Why a feed is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// Not a signed feed document.
    #[error("malformed revocation feed: {0}")]
    Malformed(String),
    /// Signature missing, invalid, in the wrong namespace, or by an untrusted key.
    #[error("revocation feed signature is not from a trusted CA key")]
    BadSignature,
    /// Unknown format version.
    #[error("unsupported revocation feed version {0}")]
    Version(u32),
    /// A version-1 feed where a [`Binding`] is required (`sync`): the CA predates it.
    #[error(
        "revocation feed version 1 does not name the trust bundle and KRL it goes with; \
         upgrade the CA before its hosts"
    )]
    Unbound,
    /// Older than allowed.
    #[error("revocation feed is stale: issued {age}s ago, max_staleness is {max}s")]
    Stale {
        /// Seconds since issue.
        age: i64,
        /// Allowed seconds.
        max: i64,
    },
    /// Issued in the future beyond the allowed skew.
    #[error("revocation feed is dated {0}s in the future")]
    FromTheFuture(i64),
    /// Older than a feed already accepted.
    #[error("revocation feed goes backwards (sequence {got} < {have})")]
    Rollback {
        /// Received sequence.
        got: i64,
        /// Last accepted sequence.
        have: i64,
    },
}

impl FeedError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            FeedError::Malformed(_) => "feed_malformed",
            FeedError::BadSignature => "feed_bad_signature",
            FeedError::Version(_) => "feed_version",
            FeedError::Unbound => "feed_unbound",
            FeedError::Stale { .. } => "feed_stale",
            FeedError::FromTheFuture(_) => "feed_from_the_future",
            FeedError::Rollback { .. } => "feed_rollback",
        }
    }
}

impl Feed {
    /// The JSON text that gets signed.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a feed of strings and integers always serialises")
    }

    /// Whether a certificate of `task_id` with `serial` (signed by `ca_fingerprint`) is
    /// revoked by this feed.
    pub fn revokes(&self, task_id: &str, serial: u64, ca_fingerprint: &str) -> bool {
        let serial = serial.to_string();
        self.revoked_tasks.iter().any(|t| t.task_id == task_id)
            || self
                .revoked_serials
                .iter()
                .any(|s| s.serial == serial && s.ca_fingerprint == ca_fingerprint)
    }
}

/// Parse a stored or received signed feed document.
pub fn parse(text: &[u8]) -> Result<SignedFeed, FeedError> {
    if text.len() > MAX_FEED_BYTES {
        return Err(FeedError::Malformed("too large".into()));
    }
    serde_json::from_slice(text).map_err(|e| FeedError::Malformed(e.to_string()))
}

/// The feed inside `signed`, NOT verified: only for deciding what to fetch or compare
/// before [`verify`] can run, never for deciding what to admit.
pub fn unverified(signed: &SignedFeed) -> Result<Feed, FeedError> {
    serde_json::from_str(&signed.feed).map_err(|e| FeedError::Malformed(e.to_string()))
}

/// Verify `signed` against `trusted` CA keys and its age at `now_unix`
/// (`max_staleness_secs`, and at most `skew_secs` into the future). Both versions are
/// accepted; a version-2 feed must carry its [`Binding`], a version-1 feed must not.
pub fn verify(
    signed: &SignedFeed,
    trusted: &[PublicKey],
    now_unix: i64,
    max_staleness_secs: i64,
    skew_secs: i64,
) -> Result<Feed, FeedError> {
    let signature =
        SshSig::from_pem(signed.signature.as_bytes()).map_err(|_| FeedError::BadSignature)?;
    let signer_trusted = trusted
        .iter()
        .any(|k| k.key_data() == signature.public_key());
    if !signer_trusted {
        return Err(FeedError::BadSignature);
    }
    let key = PublicKey::from(signature.public_key().clone());
    key.verify(NAMESPACE, signed.feed.as_bytes(), &signature)
        .map_err(|_| FeedError::BadSignature)?;
    let feed: Feed =
        serde_json::from_str(&signed.feed).map_err(|e| FeedError::Malformed(e.to_string()))?;
    match (feed.version, &feed.binding) {
        (VERSION, Some(_)) | (VERSION_UNBOUND, None) => {}
        (VERSION, None) => return Err(FeedError::Malformed("version 2 without binding".into())),
        (VERSION_UNBOUND, Some(_)) => {
            return Err(FeedError::Malformed("version 1 with a binding".into()));
        }
        (other, _) => return Err(FeedError::Version(other)),
    }
    // `issued_at` is signed but still read from outside: saturate rather than wrap, so an
    // extreme value stays stale (or in the future) instead of turning fresh.
    let age = now_unix.saturating_sub(feed.issued_at);
    if age > max_staleness_secs {
        return Err(FeedError::Stale {
            age,
            max: max_staleness_secs,
        });
    }
    if age.saturating_neg() > skew_secs {
        return Err(FeedError::FromTheFuture(age.saturating_neg()));
    }
    Ok(feed)
}

/// Refuse a feed older than one already accepted.
pub fn check_not_older(new: &Feed, previous: &Feed) -> Result<(), FeedError> {
    if new.sequence < previous.sequence || new.issued_at < previous.issued_at {
        return Err(FeedError::Rollback {
            got: new.sequence,
            have: previous.sequence,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;
    use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};

    fn sign(feed: &Feed, key: &PrivateKey, namespace: &str) -> SignedFeed {
        let json = feed.to_json();
        let sig = key
            .sign(namespace, HashAlg::Sha512, json.as_bytes())
            .expect("sign");
        SignedFeed {
            feed: json,
            signature: sig.to_pem(LineEnding::LF).expect("pem"),
        }
    }

    fn feed(issued_at: i64, sequence: i64) -> Feed {
        Feed {
            version: VERSION,
            issued_at,
            sequence,
            revoked_tasks: vec![RevokedTask {
                task_id: "ab".repeat(16),
                until: issued_at + 60,
            }],
            revoked_serials: vec![RevokedSerial {
                serial: "42".into(),
                ca_fingerprint: "SHA256:x".into(),
                until: 9,
            }],
            binding: Some(Binding::of(b"bundle", b"krl")),
        }
    }

    #[test]
    fn verifies_signature_namespace_trust_and_age() {
        let ca = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("key");
        let other = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("key");
        let trusted = vec![ca.public_key().clone()];
        let good = sign(&feed(1000, 5), &ca, NAMESPACE);
        let parsed = verify(&good, &trusted, 1030, 120, 30).expect("valid");
        assert!(parsed.revokes(&"ab".repeat(16), 1, "SHA256:y"));
        assert!(parsed.revokes("other", 42, "SHA256:x"));
        assert!(!parsed.revokes("other", 42, "SHA256:z"));

        assert_eq!(
            verify(
                &sign(&feed(1000, 5), &other, NAMESPACE),
                &trusted,
                1030,
                120,
                30
            ),
            Err(FeedError::BadSignature)
        );
        assert_eq!(
            verify(&sign(&feed(1000, 5), &ca, "file"), &trusted, 1030, 120, 30),
            Err(FeedError::BadSignature)
        );
        let mut tampered = good.clone();
        tampered.feed = tampered.feed.replace("\"sequence\":5", "\"sequence\":6");
        assert_eq!(
            verify(&tampered, &trusted, 1030, 120, 30),
            Err(FeedError::BadSignature)
        );
        assert!(matches!(
            verify(&good, &trusted, 1200, 120, 30),
            Err(FeedError::Stale { .. })
        ));
        assert!(matches!(
            verify(&good, &trusted, 900, 120, 30),
            Err(FeedError::FromTheFuture(100))
        ));
        assert!(matches!(
            verify(&good, &[], 1030, 120, 30),
            Err(FeedError::BadSignature)
        ));
    }

    /// Extreme `issued_at` values (signed by a trusted key, so they reach the arithmetic)
    /// are stale or in the future, never fresh, and never overflow.
    #[test]
    fn extreme_issue_times_are_refused_without_overflow() {
        let ca = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("key");
        let trusted = vec![ca.public_key().clone()];
        let at = |issued_at: i64| {
            let mut f = feed(0, 5);
            f.issued_at = issued_at;
            sign(&f, &ca, NAMESPACE)
        };
        for now in [1030, 0, -1] {
            assert!(
                matches!(
                    verify(&at(i64::MIN), &trusted, now, 120, 30),
                    Err(FeedError::Stale { age: i64::MAX, .. })
                ),
                "issued_at = i64::MIN at {now}"
            );
            assert!(
                matches!(
                    verify(&at(i64::MAX), &trusted, now, 120, 30),
                    Err(FeedError::FromTheFuture(_))
                ),
                "issued_at = i64::MAX at {now}"
            );
        }
        assert!(matches!(
            verify(&at(i64::MAX), &trusted, -2, 120, 30),
            Err(FeedError::FromTheFuture(i64::MAX))
        ));
        // Near the ends of the range, the arithmetic is still exact.
        assert!(verify(&at(i64::MIN + 1000), &trusted, i64::MIN + 1030, 120, 30).is_ok());
    }

    #[test]
    fn version_2_carries_a_binding_and_version_1_does_not() {
        let ca = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("key");
        let trusted = vec![ca.public_key().clone()];
        let bound = verify(
            &sign(&feed(1000, 5), &ca, NAMESPACE),
            &trusted,
            1000,
            120,
            30,
        )
        .expect("version 2");
        assert_eq!(bound.binding, Some(Binding::of(b"bundle", b"krl")));
        let mut unbound = feed(1000, 5);
        unbound.version = VERSION_UNBOUND;
        unbound.binding = None;
        let json = sign(&unbound, &ca, NAMESPACE);
        assert!(
            !json.feed.contains("binding"),
            "version 1 is written as before"
        );
        assert_eq!(
            verify(&json, &trusted, 1000, 120, 30)
                .expect("version 1")
                .binding,
            None
        );
        for (version, binding) in [
            (VERSION, None),
            (VERSION_UNBOUND, Some(Binding::of(b"", b""))),
        ] {
            let mut odd = feed(1000, 5);
            odd.version = version;
            odd.binding = binding;
            assert!(matches!(
                verify(&sign(&odd, &ca, NAMESPACE), &trusted, 1000, 120, 30),
                Err(FeedError::Malformed(_))
            ));
        }
        let mut future = feed(1000, 5);
        future.version = 3;
        assert_eq!(
            verify(&sign(&future, &ca, NAMESPACE), &trusted, 1000, 120, 30),
            Err(FeedError::Version(3))
        );
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        // `printf abc | sha256sum`
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn revocations_outlive_validity_by_the_larger_skew() {
        assert_eq!(
            retention_after_end(Duration::from_secs(30)),
            HOST_CLOCK_SKEW
        );
        assert_eq!(
            retention_after_end(Duration::from_secs(300)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn rollback_is_refused() {
        assert!(check_not_older(&feed(1000, 5), &feed(990, 5)).is_ok());
        assert!(check_not_older(&feed(1000, 4), &feed(990, 5)).is_err());
        assert!(check_not_older(&feed(980, 5), &feed(990, 5)).is_err());
    }
}

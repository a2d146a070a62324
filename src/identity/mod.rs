//! Workload identity: verifying `Authorization: Bearer` JWTs from the configured
//! `[[issuer]]`s against their JWKS, and the verified [`Identity`] that policies match.
//!
//! The token's `iss` is read unverified only to pick the issuer's key store; everything
//! else is trusted only after the signature checks out. Header fields that point at keys
//! (`jku`, `x5u`, `jwk`, `x5c`) are never used; `kid` is only a lookup key. Never logs a
//! whole token.

pub mod crypto;
pub mod jwks;
pub mod verify;

use serde_json::{Map, Value};

pub use verify::Verifier;

/// Longest accepted bearer token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A verified workload identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Configured `[[issuer]]` name.
    pub issuer_name: String,
    /// The token's `iss`.
    pub issuer: String,
    /// The token's `sub`.
    pub subject: String,
    /// All claims, for policy matching and login templates.
    pub claims: Map<String, Value>,
    /// The token's `jti`, if any.
    pub jti: Option<String>,
    /// The token's `exp` (Unix seconds).
    pub expires_at: i64,
    /// Set when the issuer rejects replays: the token may open only one task or
    /// certificate, recorded in the same transaction as the issuance.
    pub replay_key: Option<ReplayKey>,
}

/// The once-only use of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayKey {
    /// Configured issuer name.
    pub issuer: String,
    /// SHA-256 (hex) of `jti:` and the token's `jti`, or, when it has none, of `jws:` and
    /// its JWS signing input (`header.payload`, what the signature covers; never the
    /// signature, which an ECDSA token can carry in two forms).
    pub token_hash: String,
    /// The token's `exp` + [`MAX_LEEWAY`] (Unix seconds): part of the key, so it must not
    /// depend on a setting that can change between two uses of one token; after it no
    /// issuer accepts the token and the record may be pruned.
    ///
    /// [`MAX_LEEWAY`]: crate::config::MAX_LEEWAY
    pub expires_at: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No bearer token.
    #[error("no bearer token; send Authorization: Bearer <workload JWT>")]
    Missing,
    /// Larger than [`MAX_TOKEN_BYTES`].
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not a signed JWT (JWE, wrong segment count, bad base64 or JSON).
    #[error("token is not a well-formed signed JWT: {0}")]
    Malformed(String),
    /// `iss` names no configured issuer.
    #[error("token issuer is not configured")]
    UnknownIssuer,
    /// The algorithm is not allowed for this issuer (or is `none`/HMAC).
    #[error("algorithm {0} is not allowed for this issuer")]
    AlgorithmNotAllowed(String),
    /// No key with this `kid` in the issuer's JWKS.
    #[error("no key in the issuer's JWKS matches the token's kid")]
    UnknownKey,
    /// The key's type or declared algorithm does not fit the token's algorithm.
    #[error("the issuer key does not fit algorithm {0}")]
    KeyMismatch(String),
    /// Signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `aud` is missing or not one of the issuer's audiences (named, so the agent's
    /// operator can mint the right token).
    #[error(
        "token audience is not accepted: this issuer's tokens must name one of {accepted:?} in aud"
    )]
    WrongAudience {
        /// The issuer's configured audiences.
        accepted: Vec<String>,
    },
    /// `iss` does not match.
    #[error("token issuer does not match")]
    WrongIssuer,
    /// A required claim is absent or has the wrong type.
    #[error("token claim {0} is missing or invalid")]
    BadClaim(String),
    /// The token lives longer than the issuer's `max_token_lifetime`.
    #[error("token lifetime {lifetime}s exceeds the issuer's max_token_lifetime of {max}s")]
    LifetimeTooLong {
        /// Seconds from `iat` (or now) to `exp`.
        lifetime: i64,
        /// The maximum.
        max: i64,
    },
    /// The token was already used (replay protection).
    #[error(
        "token was already used; issuer {issuer:?} has replay = \"reject\" (each token opens one task; \
         set replay = \"allow\" on the [[issuer]] for platforms that hand out one token per hour)"
    )]
    Replayed {
        /// Configured issuer name.
        issuer: String,
    },
    /// The issuer's keys have never been fetched successfully.
    #[error("issuer keys are unavailable: {0}")]
    IssuerUnavailable(String),
}

impl TokenError {
    /// Stable snake_case reason code for errors and audit records.
    pub fn reason_code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::TooLarge => "token_too_large",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::UnknownIssuer => "unknown_issuer",
            TokenError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::KeyMismatch(_) => "key_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongAudience { .. } => "wrong_audience",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::BadClaim(_) => "bad_claim",
            TokenError::LifetimeTooLong { .. } => "token_lifetime_too_long",
            TokenError::Replayed { .. } => "token_replayed",
            TokenError::IssuerUnavailable(_) => "issuer_unavailable",
        }
    }
}

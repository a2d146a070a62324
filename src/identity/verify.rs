//! Token verification (RFC 8725 practice): pick the issuer by the unverified `iss`, find
//! the key by `kid` in that issuer's JWKS only, tie the algorithm to the key type and the
//! issuer's allow-list (never to the header alone), then check signature, `iss`, `aud`,
//! `exp`, `nbf` with a small leeway.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use sha2::{Digest, Sha256};

use super::jwks::{CachePolicy, JwksSource, KeyCache};
use super::{Identity, MAX_TOKEN_BYTES, ReplayKey, TokenError};
use crate::audit;
use crate::config::{IssuerConfig, MAX_LEEWAY, Replay};
use crate::metrics::Metrics;

/// One configured issuer with its key cache.
pub struct TrustedIssuer {
    /// Its configuration.
    pub config: IssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: KeyCache,
}

impl TrustedIssuer {
    /// The issuer's key cache.
    pub fn keys(&self) -> &KeyCache {
        &self.keys
    }
}

/// Verifies workload tokens against every configured issuer.
#[derive(Clone)]
pub struct Verifier {
    by_iss: Arc<HashMap<String, Arc<TrustedIssuer>>>,
}

impl Verifier {
    /// Build from `[[issuer]]` configuration (validated already).
    pub fn new(issuers: &[IssuerConfig]) -> Verifier {
        Verifier::with_metrics(issuers, None)
    }

    /// [`Verifier::new`], counting every issuer's key fetches in `metrics` (`writ serve`).
    pub fn with_metrics(issuers: &[IssuerConfig], metrics: Option<Arc<Metrics>>) -> Verifier {
        if !super::crypto::install() {
            tracing::warn!(
                "another JWT crypto provider was installed first; token verification is slower"
            );
        }
        let by_iss = issuers
            .iter()
            .map(|config| {
                let algorithms = config
                    .algorithms
                    .iter()
                    .filter_map(|a| Algorithm::from_str(a).ok())
                    .collect();
                let mut keys = KeyCache::new(
                    JwksSource::from_config(config),
                    CachePolicy {
                        refresh: config.jwks_refresh,
                        max_stale: config.jwks_max_stale,
                    },
                );
                if let Some(metrics) = &metrics {
                    keys = keys.with_metrics(&config.name, Arc::clone(metrics));
                }
                let issuer = TrustedIssuer {
                    config: config.clone(),
                    algorithms,
                    keys,
                };
                (config.issuer.clone(), Arc::new(issuer))
            })
            .collect();
        Verifier {
            by_iss: Arc::new(by_iss),
        }
    }

    /// Fetch every issuer's keys once (at start-up); failures are logged, not fatal.
    pub async fn prefetch(&self) {
        for issuer in self.by_iss.values() {
            if let Err(e) = issuer.keys.refresh().await {
                tracing::warn!(issuer = %issuer.config.name, error = %e, "could not fetch issuer keys at start-up");
            }
        }
    }

    /// The configured issuers whose keys are not loaded (never fetched, or not refreshed
    /// within `jwks_max_stale`), by name, sorted: `/readyz` with `readyz_requires_issuers`.
    pub fn issuers_without_keys(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_iss
            .values()
            .filter(|issuer| !issuer.keys.has_keys())
            .map(|issuer| issuer.config.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The configured issuer name a token claims to come from (unverified), for audit
    /// records of refused tokens.
    pub fn claimed_issuer(&self, token: &str) -> Option<String> {
        let iss = unverified_iss(token).ok()?;
        self.by_iss.get(&iss).map(|i| i.config.name.clone())
    }

    /// Verify `token` at time `now_unix` and return the identity it proves.
    pub async fn verify(&self, token: &str, now_unix: i64) -> Result<Identity, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        if token.split('.').count() != 3 {
            return Err(TokenError::Malformed(
                "expected three dot-separated parts (JWE is not accepted)".into(),
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        let iss = unverified_iss(token)?;
        let issuer = self.by_iss.get(&iss).ok_or(TokenError::UnknownIssuer)?;
        let alg = header.alg;
        if !issuer.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed(format!("{alg:?}")));
        }
        let cached = issuer.keys.find(header.kid.as_deref()).await?;
        check_key_fits(&cached.jwk, alg)?;

        let config = &issuer.config;
        let mut validation = Validation::new(alg);
        // `exp` and `nbf` are checked below against writ's `now_unix`, never against
        // jsonwebtoken's own clock: one clock per request, and tests can pin it.
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = true;
        validation.set_audience(&config.audiences);
        validation.set_issuer(&[&config.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &cached.key, &validation)
            .map_err(|e| map_error(e, &config.audiences))?;
        let claims = data.claims;
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(TokenError::BadClaim("sub".into())),
        };
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .filter(|exp| *exp >= 0)
            .ok_or_else(|| TokenError::BadClaim("exp".into()))?;
        let leeway = i64::try_from(config.leeway.as_secs()).unwrap_or(0);
        if expires_at.saturating_add(leeway) < now_unix {
            return Err(TokenError::Expired);
        }
        // NumericDate: a non-negative integer (RFC 7519 §2); compared without overflow.
        if let Some(v) = claims.get("nbf") {
            let not_before = v
                .as_u64()
                .ok_or_else(|| TokenError::BadClaim("nbf".into()))?;
            if i128::from(not_before) > i128::from(now_unix) + i128::from(leeway) {
                return Err(TokenError::NotYetValid);
            }
        }
        let issued_at = match claims.get("iat") {
            None => None,
            Some(v) => Some(
                v.as_i64()
                    .ok_or_else(|| TokenError::BadClaim("iat".into()))?,
            ),
        };
        if issued_at.is_some_and(|iat| iat > now_unix.saturating_add(leeway)) {
            return Err(TokenError::BadClaim("iat (in the future)".into()));
        }
        let max_lifetime = i64::try_from(config.max_token_lifetime.as_secs()).unwrap_or(i64::MAX);
        // `iat` and `exp` come from the token: a difference that does not fit in i64 (say
        // iat = i64::MIN) is an endless lifetime, not a wrapped-around short one.
        let lifetime = expires_at
            .checked_sub(issued_at.unwrap_or(now_unix))
            .unwrap_or(i64::MAX);
        if lifetime > max_lifetime.saturating_add(leeway) {
            return Err(TokenError::LifetimeTooLong {
                lifetime,
                max: max_lifetime,
            });
        }
        let jti = match claims.get("jti") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
            Some(_) => return Err(TokenError::BadClaim("jti".into())),
        };
        let replay_key = (config.replay == Replay::Reject).then(|| {
            // What the issuer signed, never how the signature is encoded: an ECDSA
            // signature (r, s) has a twin (r, n - s) that verifies as well, and issuers
            // sign with either half the time, so the twin cannot be refused, only recognised.
            let digest = match &jti {
                Some(jti) => Sha256::new().chain_update("jti:").chain_update(jti),
                None => Sha256::new()
                    .chain_update("jws:")
                    .chain_update(signing_input(token)),
            }
            .finalize();
            ReplayKey {
                issuer: config.name.clone(),
                token_hash: audit::hex(&digest),
                expires_at: expires_at.saturating_add(MAX_LEEWAY.as_secs() as i64),
            }
        });
        Ok(Identity {
            issuer_name: config.name.clone(),
            issuer: config.issuer.clone(),
            subject,
            claims,
            jti,
            expires_at,
            replay_key,
        })
    }
}

/// The JWS signing input, `header.payload`: the bytes the signature covers.
fn signing_input(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(input, _)| input)
}

fn unverified_iss(token: &str) -> Result<String, TokenError> {
    let claims: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
    match claims.get("iss") {
        Some(Value::String(iss)) => Ok(iss.clone()),
        _ => Err(TokenError::BadClaim("iss".into())),
    }
}

/// The key's type (and declared `alg`, `use`) must fit the algorithm.
fn check_key_fits(jwk: &Jwk, alg: Algorithm) -> Result<(), TokenError> {
    let mismatch = || TokenError::KeyMismatch(format!("{alg:?}"));
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err(mismatch());
    }
    if let Some(declared) = jwk.common.key_algorithm
        && declared.to_string() != format!("{alg:?}")
    {
        return Err(mismatch());
    }
    let fits = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            (&ec.curve, alg),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(okp) => {
            okp.curve == EllipticCurve::Ed25519 && alg == Algorithm::EdDSA
        }
        // Symmetric and unknown keys never verify workload tokens.
        _ => false,
    };
    if fits { Ok(()) } else { Err(mismatch()) }
}

fn map_error(e: jsonwebtoken::errors::Error, audiences: &[String]) -> TokenError {
    let wrong_audience = || TokenError::WrongAudience {
        accepted: audiences.to_vec(),
    };
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => wrong_audience(),
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => wrong_audience(),
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
            TokenError::BadClaim(c.clone())
        }
        ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed("header".into()),
        other => TokenError::Malformed(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A verifier for the dev issuer of a fresh data directory, and that directory.
    fn dev_verifier() -> (Verifier, i64, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, _jwks) =
            crate::dev::prepare(dir.path(), "127.0.0.1:0".parse().expect("addr")).expect("dev");
        let leeway = i64::try_from(config.issuers[0].leeway.as_secs()).expect("leeway");
        (Verifier::new(&config.issuers), leeway, dir)
    }

    #[test]
    fn expiry_and_not_before_are_judged_by_the_callers_clock() {
        let (verifier, leeway, dir) = dev_verifier();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        // Minted long ago, valid for 10 minutes then: jsonwebtoken's own clock would
        // call it expired; writ's `now` says when it is judged.
        let minted = 1_000_000_000;
        let token = crate::dev::mint_token(
            dir.path(),
            "agent-1",
            "writ",
            Duration::from_secs(600),
            minted,
        )
        .expect("token");
        let at = |now: i64| runtime.block_on(verifier.verify(&token, now));
        assert!(at(minted).is_ok());
        assert!(at(minted + 600 + leeway).is_ok(), "within the leeway");
        assert!(matches!(
            at(minted + 600 + leeway + 1),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            at(minted - leeway - 1),
            Err(TokenError::NotYetValid)
        ));
        assert!(matches!(at(i64::MAX), Err(TokenError::Expired)));
    }
}

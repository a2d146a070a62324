//! The bench token issuer: a throwaway signing key (RSA 2048 for RS256, P-256 for ES256,
//! Ed25519 for EdDSA), its JWKS, and single-use workload tokens (a distinct `jti` each),
//! minted ahead of a run on every core so that minting never competes with the server
//! being measured.
//!
//! The key is generated per run; with `--target` it is kept in a PKCS#8 PEM file (mode
//! 0600) so the target CA can be configured once with the matching JWKS. It never signs
//! anything but benchmark tokens for [`ISSUER`], which no real CA should trust.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use zeroize::Zeroizing;

use super::BenchError;

/// `iss` of bench tokens (an `.invalid` name: never a real issuer).
pub const ISSUER: &str = "https://bench.writ.invalid";
/// `aud` of bench tokens.
pub const AUDIENCE: &str = "writ";
/// `sub` of bench tokens.
pub const SUBJECT: &str = "bench-agent";
/// `[[issuer]] name` in the configuration the bench writes or prints.
pub const ISSUER_NAME: &str = "bench";

/// The token signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA 2048 (the most common workload-token algorithm:
    /// Kubernetes, GitHub Actions, most clouds).
    #[default]
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// Every algorithm, for the micro-benchmarks.
    pub const ALL: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::EdDsa];

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The jsonwebtoken algorithm.
    pub fn jwt(self) -> Algorithm {
        match self {
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
            Alg::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = String;

    fn from_str(s: &str) -> Result<Alg, String> {
        match s.to_ascii_uppercase().as_str() {
            "RS256" => Ok(Alg::Rs256),
            "ES256" => Ok(Alg::Es256),
            "EDDSA" | "ED25519" => Ok(Alg::EdDsa),
            _ => Err(format!(
                "unknown algorithm {s:?}; use RS256, ES256 or EdDSA"
            )),
        }
    }
}

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410 §7) before the 32-byte seed.
/// jsonwebtoken derives a JWK only from this 48-byte form, not from the v2 form with the
/// public key that ed25519-dalek writes.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A bench token issuer.
pub struct BenchIssuer {
    alg: Alg,
    kid: String,
    /// PKCS#8 DER of the private key (what the PEM file holds).
    pkcs8: Zeroizing<Vec<u8>>,
    key: TokenSigner,
    /// `base64url(header) "."`, the same for every token.
    header_b64: String,
    jwk: Jwk,
}

/// The parsed private key. Tokens are signed with it directly (JWS compact form, RFC
/// 7515) rather than through `jsonwebtoken::encode`, which re-parses and re-validates the
/// key for every token: for RSA that tripled the cost of minting a pool.
enum TokenSigner {
    Rsa(Box<rsa::pkcs1v15::SigningKey<sha2::Sha256>>),
    Ec(p256::ecdsa::SigningKey),
    Ed(ed25519_dalek::SigningKey),
}

impl TokenSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        use signature::{SignatureEncoding, Signer};
        Ok(match self {
            TokenSigner::Rsa(key) => key.try_sign(message)?.to_vec(),
            TokenSigner::Ec(key) => {
                let sig: p256::ecdsa::Signature = key.try_sign(message)?;
                sig.to_bytes().to_vec()
            }
            TokenSigner::Ed(key) => key.try_sign(message)?.to_bytes().to_vec(),
        })
    }
}

impl fmt::Debug for BenchIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BenchIssuer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn issuer_error(what: &str) -> impl FnOnce(String) -> BenchError + '_ {
    move |e| BenchError::Issuer(format!("{what}: {e}"))
}

impl BenchIssuer {
    /// A fresh key for `alg`.
    pub fn generate(alg: Alg) -> Result<BenchIssuer, BenchError> {
        let pkcs8 = match alg {
            Alg::Rs256 => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048)
                    .map_err(|e| issuer_error("generating an RSA key")(e.to_string()))?;
                key.to_pkcs8_der()
                    .map_err(|e| issuer_error("encoding the RSA key")(e.to_string()))?
                    .as_bytes()
                    .to_vec()
            }
            Alg::Es256 => {
                use p256::pkcs8::EncodePrivateKey;
                p256::SecretKey::random(&mut OsRng)
                    .to_pkcs8_der()
                    .map_err(|e| issuer_error("encoding the P-256 key")(e.to_string()))?
                    .as_bytes()
                    .to_vec()
            }
            Alg::EdDsa => {
                let mut seed = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(seed.as_mut());
                let mut der = ED25519_PKCS8_V1_PREFIX.to_vec();
                der.extend_from_slice(seed.as_ref());
                der
            }
        };
        BenchIssuer::from_pkcs8(alg, Zeroizing::new(pkcs8))
    }

    /// The issuer for a PKCS#8 DER private key of `alg`.
    fn from_pkcs8(alg: Alg, pkcs8: Zeroizing<Vec<u8>>) -> Result<BenchIssuer, BenchError> {
        let wrong = |e: String| BenchError::Issuer(format!("not an {alg} private key: {e}"));
        let (key, encoding) = match alg {
            Alg::Rs256 => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                use rsa::pkcs8::DecodePrivateKey;
                let key =
                    rsa::RsaPrivateKey::from_pkcs8_der(&pkcs8).map_err(|e| wrong(e.to_string()))?;
                let pkcs1 = key.to_pkcs1_der().map_err(|e| wrong(e.to_string()))?;
                (
                    TokenSigner::Rsa(Box::new(rsa::pkcs1v15::SigningKey::new(key))),
                    EncodingKey::from_rsa_der(pkcs1.as_bytes()),
                )
            }
            Alg::Es256 => {
                use p256::pkcs8::DecodePrivateKey;
                let key = p256::ecdsa::SigningKey::from_pkcs8_der(&pkcs8)
                    .map_err(|e| wrong(e.to_string()))?;
                (TokenSigner::Ec(key), EncodingKey::from_ec_der(&pkcs8))
            }
            Alg::EdDsa => {
                let seed: [u8; 32] = match pkcs8.strip_prefix(&ED25519_PKCS8_V1_PREFIX) {
                    Some(seed) => seed
                        .try_into()
                        .map_err(|_| wrong("expected a PKCS#8 v1 Ed25519 key".into()))?,
                    None => return Err(wrong("expected a PKCS#8 v1 Ed25519 key".into())),
                };
                let seed = Zeroizing::new(seed);
                (
                    TokenSigner::Ed(ed25519_dalek::SigningKey::from_bytes(&seed)),
                    EncodingKey::from_ed_der(&pkcs8),
                )
            }
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg.jwt())
            .map_err(|e| issuer_error("building the JWK")(e.to_string()))?;
        let kid = format!("bench-{}", alg.as_str().to_ascii_lowercase());
        jwk.common.key_id = Some(kid.clone());
        let mut header = Header::new(alg.jwt());
        header.kid = Some(kid.clone());
        let header_json = serde_json::to_vec(&header)
            .map_err(|e| issuer_error("encoding the JWT header")(e.to_string()))?;
        let mut header_b64 = Base64UrlUnpadded::encode_string(&header_json);
        header_b64.push('.');
        Ok(BenchIssuer {
            alg,
            kid,
            pkcs8,
            key,
            header_b64,
            jwk,
        })
    }

    /// The algorithm.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The public JWK (with its `kid`).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The public JWKS document (one key).
    pub fn jwks_json(&self) -> String {
        let set = JwkSet {
            keys: vec![self.jwk.clone()],
        };
        serde_json::to_string_pretty(&set).unwrap_or_default()
    }

    /// Load the key kept in `path`, or generate one and keep it there (mode 0600). Returns
    /// the issuer and whether it was just created.
    pub fn load_or_create(alg: Alg, path: &Path) -> Result<(BenchIssuer, bool), BenchError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                let der = pem_decode(&text).ok_or_else(|| {
                    BenchError::Issuer(format!(
                        "{} is not a PKCS#8 PEM private key",
                        path.display()
                    ))
                })?;
                Ok((BenchIssuer::from_pkcs8(alg, der)?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let issuer = BenchIssuer::generate(alg)?;
                let pem = issuer.to_pem();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(BenchError::io(path))?;
                file.write_all(pem.as_bytes())
                    .map_err(BenchError::io(path))?;
                Ok((issuer, true))
            }
            Err(e) => Err(BenchError::io(path)(e)),
        }
    }

    /// The private key as PKCS#8 PEM.
    fn to_pem(&self) -> Zeroizing<String> {
        let b64 = Zeroizing::new(Base64::encode_string(&self.pkcs8));
        let mut pem = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    /// One token for `claims`: `base64url(header).base64url(claims).base64url(signature)`.
    pub fn mint(&self, claims: &Claims<'_>) -> Result<String, BenchError> {
        let claims = serde_json::to_vec(claims)
            .map_err(|e| issuer_error("encoding the claims")(e.to_string()))?;
        let mut token = String::with_capacity(self.header_b64.len() + claims.len() * 2 + 400);
        token.push_str(&self.header_b64);
        token.push_str(&Base64UrlUnpadded::encode_string(&claims));
        let signature = self
            .key
            .sign(token.as_bytes())
            .map_err(|e| issuer_error("signing a token")(e.to_string()))?;
        token.push('.');
        token.push_str(&Base64UrlUnpadded::encode_string(&signature));
        Ok(token)
    }

    /// `count` single-use tokens (each with its own random `jti`), valid from `now_unix`,
    /// minted on `threads` threads, to be used in order. Their `exp` models a stream of
    /// `per_second` requests a second whose tokens a platform mints just before each use:
    /// token `i` expires `lifetime_s + i / per_second` seconds after `now_unix`, so each
    /// second of traffic shares one `exp`, as it would in production. (One `exp` for the
    /// whole pool would put every consumed token on a random page of the store's replay
    /// index; an `exp` taken from the minting clock would make the workload depend on how
    /// fast the bench mints.)
    pub fn mint_pool(
        &self,
        count: usize,
        threads: usize,
        now_unix: i64,
        lifetime_s: i64,
        per_second: usize,
    ) -> Result<Vec<String>, BenchError> {
        let per_second = per_second.max(1);
        let threads = threads.clamp(1, count.max(1));
        let per_thread = count.div_ceil(threads);
        let failed = AtomicBool::new(false);
        let chunks: Vec<Result<Vec<String>, BenchError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let first = t * per_thread;
                    let n = per_thread.min(count.saturating_sub(first));
                    let failed = &failed;
                    scope.spawn(move || {
                        let mut out = Vec::with_capacity(n);
                        let mut jti = [0u8; 16];
                        for i in first..first + n {
                            if failed.load(Ordering::Relaxed) {
                                break;
                            }
                            OsRng.fill_bytes(&mut jti);
                            let jti = crate::audit::hex(&jti);
                            let second = i64::try_from(i / per_second).unwrap_or(i64::MAX);
                            let claims = Claims {
                                iss: ISSUER,
                                sub: SUBJECT,
                                aud: AUDIENCE,
                                iat: now_unix,
                                nbf: now_unix,
                                exp: now_unix + lifetime_s + second,
                                jti: &jti,
                            };
                            match self.mint(&claims) {
                                Ok(token) => out.push(token),
                                Err(e) => {
                                    failed.store(true, Ordering::Relaxed);
                                    return Err(e);
                                }
                            }
                        }
                        Ok(out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(BenchError::Issuer("a minting thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut pool = Vec::with_capacity(count);
        for chunk in chunks {
            pool.extend(chunk?);
        }
        Ok(pool)
    }
}

/// The claims of a bench token.
#[derive(Debug, Clone, Serialize)]
pub struct Claims<'a> {
    /// [`ISSUER`].
    pub iss: &'a str,
    /// [`SUBJECT`].
    pub sub: &'a str,
    /// [`AUDIENCE`].
    pub aud: &'a str,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// Unique token id: the CA records it and refuses a second use (`replay = "reject"`).
    pub jti: &'a str,
}

/// Decode a `-----BEGIN PRIVATE KEY-----` PEM document.
fn pem_decode(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let body = text
        .trim()
        .strip_prefix("-----BEGIN PRIVATE KEY-----")?
        .strip_suffix("-----END PRIVATE KEY-----")?;
    let b64: Zeroizing<String> = Zeroizing::new(body.split_whitespace().collect());
    Base64::decode_vec(&b64).ok().map(Zeroizing::new)
}

/// The `[[issuer]]` and `[[policy]]` tables that make a CA accept bench tokens signed with
/// `alg` (keys in `jwks_file`): replay protection on (each token opens one task), and a
/// permissive policy for the bench subject only.
pub fn config_tables(alg: Alg, jwks_file: &Path) -> String {
    format!(
        r#"[[issuer]]
name = "{ISSUER_NAME}"
issuer = "{ISSUER}"
jwks_file = {jwks}
audiences = ["{AUDIENCE}"]
algorithms = ["{alg}"]
replay = "reject"
max_token_lifetime = "24h"

[[policy]]
name = "bench-permissive"
issuer = "{ISSUER_NAME}"
subject = "{SUBJECT}"
role = "agent"
logins = ["*"]
hosts = ["*"]
extensions = ["permit-pty"]
"#,
        jwks = toml_string(&jwks_file.display().to_string()),
    )
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn every_algorithm_mints_tokens_its_jwk_verifies() {
        for alg in Alg::ALL {
            let issuer = BenchIssuer::generate(alg).expect("generate");
            let tokens = issuer.mint_pool(3, 2, 1_700_000_000, 600, 2).expect("mint");
            assert_eq!(tokens.len(), 3);
            let mut exps = Vec::new();
            let set: JwkSet = serde_json::from_str(&issuer.jwks_json()).expect("jwks");
            let key = DecodingKey::from_jwk(&set.keys[0]).expect("decoding key");
            let mut validation = Validation::new(alg.jwt());
            validation.validate_exp = false;
            validation.set_audience(&[AUDIENCE]);
            let mut jtis = std::collections::HashSet::new();
            for token in &tokens {
                let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
                    .expect("verifies");
                assert_eq!(data.header.kid.as_deref(), Some(issuer.kid.as_str()));
                assert!(jtis.insert(data.claims["jti"].as_str().expect("jti").to_owned()));
                assert_eq!(data.claims["nbf"], 1_700_000_000);
                exps.push(data.claims["exp"].as_i64().expect("exp"));
            }
            // Two tokens per `exp` second, in pool order.
            assert_eq!(exps, [1_700_000_600, 1_700_000_600, 1_700_000_601]);
        }
    }

    #[test]
    fn kept_keys_load_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("issuer.pem");
        let (first, created) = BenchIssuer::load_or_create(Alg::EdDsa, &path).expect("create");
        assert!(created);
        let (second, created) = BenchIssuer::load_or_create(Alg::EdDsa, &path).expect("load");
        assert!(!created);
        assert_eq!(first.jwks_json(), second.jwks_json());
        assert!(BenchIssuer::load_or_create(Alg::Rs256, &path).is_err());
    }

    #[test]
    fn algorithm_names() {
        assert_eq!("rs256".parse::<Alg>(), Ok(Alg::Rs256));
        assert_eq!("EdDSA".parse::<Alg>(), Ok(Alg::EdDsa));
        assert!("HS256".parse::<Alg>().is_err());
    }
}

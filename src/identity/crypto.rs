//! The signature backend of token verification: a `jsonwebtoken` [`CryptoProvider`] that
//! verifies RS*/PS*, ES256/ES384 and EdDSA signatures with `ring`, installed once per
//! process by [`install`].
//!
//! Why: RSA is what most workload issuers sign with (Kubernetes, GitHub Actions), and
//! pure-Rust RSA verification costs ~125 µs per token here against ~25 µs with `ring`,
//! which the tree already compiles for rustls (so it adds no build time). `ring` also
//! refuses RSA moduli under 2048 bits. HMAC algorithms are refused outright (a workload
//! token is never verified with a shared secret); signing, which only tests, `writ dev
//! token` and `writ bench` do, stays with the RustCrypto provider.

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, KeyUtils, rust_crypto};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{Error as SignatureError, Verifier as SignatureVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature::{self as ring_sig, RsaPublicKeyComponents, UnparsedPublicKey};

/// writ's provider: `ring` verification, RustCrypto signing and JWK utilities.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: rust_crypto::DEFAULT_PROVIDER.signer_factory,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: RUST_CRYPTO_KEYS.rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key: RUST_CRYPTO_KEYS.rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key: RUST_CRYPTO_KEYS.ec_pub_components_from_private_key,
        ed_pub_components_from_private_key: RUST_CRYPTO_KEYS.ed_pub_components_from_private_key,
        compute_digest: RUST_CRYPTO_KEYS.compute_digest,
    },
};

static RUST_CRYPTO_KEYS: &KeyUtils = &rust_crypto::DEFAULT_PROVIDER.key_utils;

/// Install [`PROVIDER`] as the process default. Idempotent; returns false if another
/// provider was installed first (verification then still works, only slower), which
/// happens only if something used `jsonwebtoken` before this was called.
pub fn install() -> bool {
    match PROVIDER.install_default() {
        Ok(()) => true,
        Err(current) => std::ptr::eq(current, &PROVIDER),
    }
}

/// The public key as `ring` wants it.
enum Key {
    /// RSA modulus and exponent, big-endian.
    RsaComponents { n: Vec<u8>, e: Vec<u8> },
    /// PKCS#1 `RSAPublicKey` DER, an uncompressed EC point, or an Ed25519 key.
    Bytes(Vec<u8>),
}

struct RingVerifier {
    algorithm: Algorithm,
    key: Key,
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let key = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => Key::RsaComponents {
            n: n.clone(),
            e: e.clone(),
        },
        DecodingKeyKind::SecretOrDer(bytes) => Key::Bytes(bytes.clone()),
    };
    if ring_algorithm(*algorithm).is_none() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        key,
    }))
}

/// The `ring` algorithm for a JWS algorithm; `None` for HMAC (never accepted).
fn ring_algorithm(algorithm: Algorithm) -> Option<Ring> {
    use Algorithm::*;
    Some(match algorithm {
        RS256 => Ring::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256),
        RS384 => Ring::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA384),
        RS512 => Ring::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA512),
        PS256 => Ring::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA256),
        PS384 => Ring::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA384),
        PS512 => Ring::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA512),
        ES256 => Ring::Other(&ring_sig::ECDSA_P256_SHA256_FIXED),
        ES384 => Ring::Other(&ring_sig::ECDSA_P384_SHA384_FIXED),
        EdDSA => Ring::Other(&ring_sig::ED25519),
        // HS256/HS384/HS512, and anything newer than this list.
        _ => return None,
    })
}

enum Ring {
    Rsa(&'static ring_sig::RsaParameters),
    Other(&'static dyn ring_sig::VerificationAlgorithm),
}

impl SignatureVerifier<Vec<u8>> for RingVerifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), SignatureError> {
        let verified = match (ring_algorithm(self.algorithm), &self.key) {
            (Some(Ring::Rsa(params)), Key::RsaComponents { n, e }) => {
                RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            (Some(Ring::Rsa(params)), Key::Bytes(der)) => {
                UnparsedPublicKey::new(params, der).verify(message, signature)
            }
            (Some(Ring::Other(alg)), Key::Bytes(bytes)) => {
                UnparsedPublicKey::new(alg, bytes).verify(message, signature)
            }
            _ => return Err(SignatureError::new()),
        };
        verified.map_err(|_| SignatureError::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use base64ct::{Base64UrlUnpadded, Encoding};
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::DecodePrivateKey;
    use serde_json::{Value, json};

    use super::*;

    fn claims() -> Value {
        json!({"sub": "agent", "aud": "writ", "iss": "https://idp", "exp": 4_000_000_000_u64})
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A signing key from the test fixtures and its public half as a JWK would give it.
    fn pair(alg: Algorithm, name: &str) -> (EncodingKey, DecodingKey) {
        let pem = fixture(name);
        let signing = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .expect("fixture key");
        let jwk = Jwk::from_encoding_key(&signing, alg).expect("jwk");
        (signing, DecodingKey::from_jwk(&jwk).expect("decoding key"))
    }

    /// Check `token`'s signature with [`PROVIDER`] itself (whatever provider the test
    /// process installed first).
    fn ring_accepts(token: &str, key: &DecodingKey, alg: Algorithm) -> bool {
        let (message, signature) = token.rsplit_once('.').expect("three parts");
        let signature = Base64UrlUnpadded::decode_vec(signature).expect("base64");
        let verifier = (PROVIDER.verifier_factory)(&alg, key).expect("verifier");
        assert_eq!(verifier.algorithm(), alg);
        verifier.verify(message.as_bytes(), &signature).is_ok()
    }

    fn assert_verifies_and_refuses_tampering(
        alg: Algorithm,
        signing: &EncodingKey,
        verifying: &DecodingKey,
    ) {
        let token = encode(&Header::new(alg), &claims(), signing).expect("sign");
        assert!(ring_accepts(&token, verifying, alg), "{alg:?}");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut payload = claims();
        payload["sub"] = json!("root");
        parts[1] = Base64UrlUnpadded::encode_string(&serde_json::to_vec(&payload).expect("json"));
        assert!(
            !ring_accepts(&parts.join("."), verifying, alg),
            "{alg:?} tampered"
        );
    }

    /// Each supported algorithm verifies a good token and refuses one whose payload was
    /// changed after signing, through the installed provider.
    #[test]
    fn ring_verifies_what_rustcrypto_signs_and_refuses_tampering() {
        for (alg, name) in [
            (Algorithm::RS256, "idp-rsa.pem"),
            (Algorithm::RS512, "idp-rsa.pem"),
            (Algorithm::PS256, "idp-rsa.pem"),
            (Algorithm::ES256, "idp-ec.pem"),
            (Algorithm::EdDSA, "idp-ed25519.pem"),
        ] {
            let (signing, verifying) = pair(alg, name);
            assert_verifies_and_refuses_tampering(alg, &signing, &verifying);
        }
        // RSA keys given as PKCS#1 DER rather than (n, e) take the other path.
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(
            std::str::from_utf8(&fixture("idp-rsa.pem")).expect("utf8"),
        )
        .expect("rsa");
        let der = private.to_public_key().to_pkcs1_der().expect("der");
        let signing = EncodingKey::from_rsa_pem(&fixture("idp-rsa.pem")).expect("rsa");
        assert_verifies_and_refuses_tampering(
            Algorithm::RS256,
            &signing,
            &DecodingKey::from_rsa_der(der.as_bytes()),
        );
    }

    /// A key of one family never verifies a signature of another (RSA key, ES256 token).
    #[test]
    fn a_key_of_the_wrong_type_verifies_nothing() {
        let (ec_signing, _) = pair(Algorithm::ES256, "idp-ec.pem");
        let (_, rsa_verifying) = pair(Algorithm::RS256, "idp-rsa.pem");
        let token = encode(&Header::new(Algorithm::ES256), &claims(), &ec_signing).expect("sign");
        assert!(!ring_accepts(&token, &rsa_verifying, Algorithm::ES256));
    }

    #[test]
    fn hmac_is_never_verified() {
        let key = DecodingKey::from_secret(b"secret");
        assert!(new_verifier(&Algorithm::HS256, &key).is_err());
    }
}

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
//!
//! What counts as "once" is what was signed — the signer's key and the message
//! ([`once_only`]) — never the signature's encoding: an ECDSA signature (r, s) has a twin
//! (r, n − s) that verifies too, and OpenSSH signs with either half the time, so twins
//! cannot be refused, only recognised. Signatures are checked by [`verify_signature`]:
//! the key must pass [`super::subject_key::check`] (a certificate issued before that check
//! existed may carry a weak key), and Ed25519 uses the strict verification that refuses
//! small-order keys and commitments.

use base64ct::{Base64, Encoding};
use sha2::{Digest, Sha256};
use signature::Verifier;
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, SshSig};

use super::subject_key;
use crate::audit;
use crate::identity::TokenError;
use crate::store::TokenUse;

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

/// Verify that `signature` is `key`'s SSHSIG over `message` in [`NAMESPACE`].
pub fn verify_signature(
    key: &KeyData,
    message: &[u8],
    signature: &SshSig,
) -> Result<(), TokenError> {
    let bad = |why: &str| TokenError::Malformed(format!("proof of possession: {why}"));
    if signature.public_key() != key {
        return Err(bad("signature is not by the certificate's key"));
    }
    if signature.namespace() != NAMESPACE {
        return Err(TokenError::BadSignature);
    }
    if let Err(problem) = subject_key::check(key) {
        return Err(bad(&format!("the certificate's key is refused: {problem}")));
    }
    let signed = SshSig::signed_data(NAMESPACE, signature.hash_alg(), message)
        .map_err(|_| TokenError::BadSignature)?;
    let verified = match key {
        KeyData::Ed25519(public) => {
            let key = ed25519_dalek::VerifyingKey::from_bytes(&public.0)
                .map_err(|_| TokenError::BadSignature)?;
            let sig = ed25519_dalek::Signature::from_slice(signature.signature_bytes())
                .map_err(|_| TokenError::BadSignature)?;
            // verify_strict: also refuses small-order keys and `R` (the plain `verify`
            // accepts R = identity, s = 0 for the identity key).
            key.verify_strict(&signed, &sig).is_ok()
        }
        other => other.verify(&signed, signature.signature()).is_ok(),
    };
    if verified {
        Ok(())
    } else {
        Err(TokenError::BadSignature)
    }
}

/// The once-only record of a verified proof: the signer's key and the signed message
/// (which holds the timestamp), so a second signature over the same message — an ECDSA
/// twin, or a fresh signature — is the same use. Prunable once the timestamp is out of
/// the window.
pub fn once_only(key: &KeyData, message: &[u8], timestamp: i64) -> TokenUse {
    let mut hash = Sha256::new();
    hash.update(b"writ-pop-once-v2\n");
    hash.update(key.fingerprint(HashAlg::Sha256).as_bytes());
    hash.update(message);
    TokenUse {
        issuer: "proof-of-possession".into(),
        token_hash: audit::hex(&hash.finalize()),
        expires_at: timestamp.saturating_add(2 * MAX_SKEW_SECS),
    }
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
    use p256::elliptic_curve::ff::PrimeField;
    use rand_core::OsRng;
    use ssh_key::public::{Ed25519PublicKey, RsaPublicKey};
    use ssh_key::{Algorithm, EcdsaCurve, Mpint, PrivateKey, Signature};

    use super::*;

    const MESSAGE: &[u8] = b"writ-pop-v1\nPOST\n/v1/tasks/x/complete\n5\n00\n";

    /// An SSH `string`: length-prefixed bytes.
    fn ssh_string(bytes: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(bytes.len())
            .expect("len")
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(bytes);
        out
    }

    /// The other ECDSA P-256 signature over the same data: (r, s) -> (r, n - s).
    fn ecdsa_twin(signature: &SshSig) -> SshSig {
        let data = signature.signature_bytes();
        let r_len = u32::from_be_bytes(data[..4].try_into().expect("len")) as usize;
        let r = &data[4..4 + r_len];
        let s = Mpint::from_bytes(&data[8 + r_len..]).expect("s");
        let mut padded = [0u8; 32];
        let s = s.as_positive_bytes().expect("positive");
        padded[32 - s.len()..].copy_from_slice(s);
        let s = p256::Scalar::from_repr(padded.into()).expect("scalar");
        let twin = Mpint::from_positive_bytes(&(-s).to_repr()).expect("mpint");
        let mut bytes = ssh_string(r);
        bytes.extend_from_slice(&ssh_string(twin.as_bytes()));
        let twin = Signature::new(signature.algorithm(), bytes).expect("signature");
        SshSig::new(
            signature.public_key().clone(),
            NAMESPACE,
            signature.hash_alg(),
            twin,
        )
        .expect("sshsig")
    }

    #[test]
    fn real_signatures_verify_and_tampered_ones_do_not() {
        for algorithm in [
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        ] {
            let key = PrivateKey::random(&mut OsRng, algorithm.clone()).expect("key");
            let signature = key.sign(NAMESPACE, HashAlg::Sha512, MESSAGE).expect("sign");
            let public = key.public_key().key_data();
            assert_eq!(
                verify_signature(public, MESSAGE, &signature),
                Ok(()),
                "{algorithm:?}"
            );
            assert!(verify_signature(public, b"another message", &signature).is_err());
            let other = PrivateKey::random(&mut OsRng, algorithm.clone()).expect("key");
            assert!(verify_signature(other.public_key().key_data(), MESSAGE, &signature).is_err());
            let elsewhere = key.sign("file", HashAlg::Sha512, MESSAGE).expect("sign");
            assert!(verify_signature(public, MESSAGE, &elsewhere).is_err());
        }
    }

    /// The Ed25519 identity point as a key, and a "signature" made without any private
    /// key (R = identity, s = 0): the plain RFC 8032 check accepts it, ours must not.
    #[test]
    fn a_forgery_for_a_small_order_key_is_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let key = KeyData::Ed25519(Ed25519PublicKey(identity));
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let signed = SshSig::signed_data(NAMESPACE, HashAlg::Sha512, MESSAGE).expect("data");
        // The forgery is real: what ssh-key's SSHSIG check (dalek's `verify`) runs accepts it.
        let dalek = ed25519_dalek::VerifyingKey::from_bytes(&identity).expect("point");
        let sig = ed25519_dalek::Signature::from_bytes(&forged);
        assert!(signature::Verifier::verify(&dalek, &signed, &sig).is_ok());
        assert!(dalek.verify_strict(&signed, &sig).is_err());
        let forged = SshSig::new(
            key.clone(),
            NAMESPACE,
            HashAlg::Sha512,
            Signature::new(Algorithm::Ed25519, forged.to_vec()).expect("signature"),
        )
        .expect("sshsig");
        assert!(verify_signature(&key, MESSAGE, &forged).is_err());
    }

    /// Keys whose signatures anyone can make are refused even on certificates issued before
    /// issuance checked them: RSA with e = 1 (every number is its own signature).
    #[test]
    fn a_certificate_with_a_weak_rsa_key_proves_nothing() {
        let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("key");
        let signature = key.sign(NAMESPACE, HashAlg::Sha512, MESSAGE).expect("sign");
        let mut n = vec![0xc5u8; 256];
        n[255] |= 1;
        let weak = KeyData::Rsa(RsaPublicKey {
            e: Mpint::from_positive_bytes(&[1]).expect("e"),
            n: Mpint::from_positive_bytes(&n).expect("n"),
        });
        let error = verify_signature(&weak, MESSAGE, &signature).expect_err("weak");
        assert!(matches!(error, TokenError::Malformed(_)), "{error:?}");
    }

    /// An ECDSA signature and its twin (r, n - s) both verify (OpenSSH signs with a high s
    /// half the time, so neither form can be refused) and are one use.
    #[test]
    fn an_ecdsa_twin_is_the_same_use() {
        let key = PrivateKey::random(
            &mut OsRng,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        )
        .expect("key");
        let public = key.public_key().key_data();
        let signature = key.sign(NAMESPACE, HashAlg::Sha512, MESSAGE).expect("sign");
        let twin = ecdsa_twin(&signature);
        assert_ne!(twin.signature_bytes(), signature.signature_bytes());
        assert_eq!(verify_signature(public, MESSAGE, &twin), Ok(()));
        assert_eq!(
            once_only(public, MESSAGE, 5),
            once_only(twin.public_key(), MESSAGE, 5)
        );
        // Another key or another message is another use.
        let other = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("key");
        assert_ne!(
            once_only(public, MESSAGE, 5),
            once_only(other.public_key().key_data(), MESSAGE, 5)
        );
        assert_ne!(
            once_only(public, MESSAGE, 5).token_hash,
            once_only(public, b"another message", 5).token_hash
        );
    }

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
        assert_eq!(
            once_only(
                &KeyData::Ed25519(Ed25519PublicKey([9; 32])),
                MESSAGE,
                i64::MAX
            )
            .expires_at,
            i64::MAX
        );
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

//! Which SSH public keys writ certifies, and accepts proofs of possession from: the key's
//! parameters are checked in full before anything is signed, because a certificate for a
//! key nobody holds the private half of, or whose signatures anyone can forge, lets anyone
//! who sees the public certificate act as its task's owner.
//!
//! Rules, in order (each with the crate that checks it; no curve arithmetic here):
//! 1. Ed25519: the 32 bytes decode to a curve point (`ed25519-dalek`) that is not of small
//!    order (`VerifyingKey::is_weak`): for the identity and the other seven small-order
//!    points a signature verifies without any private key.
//! 2. ECDSA (NIST P-256/384/521): an uncompressed SEC1 point on the curve, not the point at
//!    infinity (`p256`/`p384`/`p521` `PublicKey::from_sec1_bytes`). Compressed points are
//!    refused so that a key has one encoding, one fingerprint, and compares equal to itself.
//! 3. RSA: an odd modulus of [`MIN_RSA_BITS`] to [`MAX_RSA_BITS`] bits; an odd public
//!    exponent of at least 65537 and at most 2^33 − 1 (the largest that `ring` and the `rsa`
//!    crate verify with). With e = 1 every number is its own signature; even or tiny
//!    exponents are not RSA.
//! 4. Every other type (DSA, security keys, unknown) is unsupported.
//!
//! Whether the key is one of the CA's own is checked where the keyring is at hand
//! ([`super::Issuer`]). Never logs key material.

use ssh_key::public::{EcdsaPublicKey, KeyData, RsaPublicKey};

/// Smallest accepted RSA modulus, in bits.
pub const MIN_RSA_BITS: u32 = 2048;
/// Largest accepted RSA modulus, in bits (OpenSSH's own limit, `SSH_RSA_MAXIMUM_MODULUS_SIZE`).
pub const MAX_RSA_BITS: u32 = 16384;
/// Smallest accepted RSA public exponent (what every current key generator uses).
const MIN_RSA_EXPONENT: u64 = 65537;
/// Largest accepted RSA public exponent: 2^33 − 1, the largest `ring` and the `rsa` crate
/// verify with.
const MAX_RSA_EXPONENT: u64 = (1 << 33) - 1;

/// Why a key is not certified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// A key type writ does not certify.
    #[error(
        "key type {0} is not accepted; use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or rsa (≥ {MIN_RSA_BITS} bits)"
    )]
    Unsupported(String),
    /// Valid, but its signatures can be forged or it is too small.
    #[error("{0}")]
    Weak(&'static str),
    /// Not a valid key of its type (e.g. a point that is not on the curve).
    #[error("{0}")]
    Invalid(&'static str),
}

impl KeyProblem {
    /// Stable snake_case reason code (answered with 422).
    pub fn code(&self) -> &'static str {
        match self {
            KeyProblem::Unsupported(_) => "unsupported_key_type",
            KeyProblem::Weak(_) => "weak_key",
            KeyProblem::Invalid(_) => "invalid_key",
        }
    }
}

/// Check `key` against the rules in the module documentation.
pub fn check(key: &KeyData) -> Result<(), KeyProblem> {
    match key {
        KeyData::Ed25519(key) => check_ed25519(&key.0),
        KeyData::Ecdsa(key) => check_ecdsa(key),
        KeyData::Rsa(key) => check_rsa(key),
        other => Err(KeyProblem::Unsupported(
            other.algorithm().as_str().to_owned(),
        )),
    }
}

fn check_ed25519(bytes: &[u8; 32]) -> Result<(), KeyProblem> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .map_err(|_| KeyProblem::Invalid("the Ed25519 key is not a point on the curve"))?;
    if key.is_weak() {
        return Err(KeyProblem::Weak(
            "the Ed25519 key is a small-order point: signatures verify without a private key",
        ));
    }
    Ok(())
}

fn check_ecdsa(key: &EcdsaPublicKey) -> Result<(), KeyProblem> {
    let sec1 = key.as_sec1_bytes();
    if sec1.first() != Some(&0x04) {
        return Err(KeyProblem::Invalid(
            "the ECDSA key must be an uncompressed point (as OpenSSH writes it)",
        ));
    }
    let on_curve = match key {
        EcdsaPublicKey::NistP256(_) => p256::PublicKey::from_sec1_bytes(sec1).is_ok(),
        EcdsaPublicKey::NistP384(_) => p384::PublicKey::from_sec1_bytes(sec1).is_ok(),
        EcdsaPublicKey::NistP521(_) => p521::PublicKey::from_sec1_bytes(sec1).is_ok(),
    };
    if on_curve {
        Ok(())
    } else {
        Err(KeyProblem::Invalid(
            "the ECDSA key is not a point on its curve",
        ))
    }
}

fn check_rsa(key: &RsaPublicKey) -> Result<(), KeyProblem> {
    let (Some(e), Some(n)) = (key.e.as_positive_bytes(), key.n.as_positive_bytes()) else {
        return Err(KeyProblem::Invalid(
            "the RSA exponent and modulus must be positive",
        ));
    };
    let bits = bit_length(n);
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(KeyProblem::Weak(
            "RSA keys must have a modulus of 2048 to 16384 bits",
        ));
    }
    if n.last().is_none_or(|b| b & 1 == 0) {
        return Err(KeyProblem::Invalid("the RSA modulus is even"));
    }
    let exponent = (e.len() <= 8).then(|| e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)));
    match exponent {
        Some(e) if e & 1 == 1 && (MIN_RSA_EXPONENT..=MAX_RSA_EXPONENT).contains(&e) => Ok(()),
        _ => Err(KeyProblem::Weak(
            "the RSA public exponent must be odd, at least 65537 and below 2^33",
        )),
    }
}

/// Bit length of a big-endian positive integer without leading zero bytes.
fn bit_length(bytes: &[u8]) -> u32 {
    match bytes.first() {
        Some(first) => {
            (u32::try_from(bytes.len()).unwrap_or(u32::MAX) - 1) * 8 + (8 - first.leading_zeros())
        }
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use rand_core::OsRng;
    use ssh_key::public::Ed25519PublicKey;
    use ssh_key::{Algorithm, EcdsaCurve, Mpint, PrivateKey};

    use super::*;

    fn hex32(text: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex");
        }
        out
    }

    /// The eight points of small order on edwards25519 (libsodium's blocklist), and two
    /// non-canonical encodings of them.
    const SMALL_ORDER: [&str; 10] = [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];

    #[test]
    fn generated_keys_pass() {
        for algorithm in [
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        ] {
            let key = PrivateKey::random(&mut OsRng, algorithm).expect("key");
            assert_eq!(check(key.public_key().key_data()), Ok(()));
        }
    }

    #[test]
    fn small_order_ed25519_points_are_weak() {
        for point in SMALL_ORDER {
            let key = KeyData::Ed25519(Ed25519PublicKey(hex32(point)));
            assert_eq!(
                check(&key).map_err(|p| p.code()),
                Err("weak_key"),
                "{point}"
            );
        }
    }

    #[test]
    fn ed25519_bytes_that_are_no_point_are_invalid() {
        // y = 2 has no x on the curve.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        let key = KeyData::Ed25519(Ed25519PublicKey(bytes));
        assert_eq!(check(&key).map_err(|p| p.code()), Err("invalid_key"));
    }

    #[test]
    fn ecdsa_points_off_the_curve_or_compressed_are_invalid() {
        let key = PrivateKey::random(
            &mut OsRng,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        )
        .expect("key");
        let KeyData::Ecdsa(EcdsaPublicKey::NistP256(point)) = key.public_key().key_data() else {
            panic!("not P-256");
        };
        let mut off = point.as_bytes().to_vec();
        off[64] ^= 1;
        let compressed = p256::PublicKey::from_sec1_bytes(point.as_bytes())
            .expect("valid")
            .to_encoded_point(true)
            .as_bytes()
            .to_vec();
        for (case, sec1) in [("off the curve", off), ("compressed", compressed)] {
            let parsed = EcdsaPublicKey::from_sec1_bytes(&sec1).expect("ssh-key parses it");
            assert_eq!(
                check(&KeyData::Ecdsa(parsed)).map_err(|p| p.code()),
                Err("invalid_key"),
                "{case}"
            );
        }
    }

    #[test]
    fn rsa_needs_a_large_odd_modulus_and_a_proper_exponent() {
        let mut n = vec![0xc5u8; 256];
        n[255] |= 1;
        let rsa = |e: &[u8], n: &[u8]| {
            KeyData::Rsa(RsaPublicKey {
                e: Mpint::from_positive_bytes(e).expect("e"),
                n: Mpint::from_positive_bytes(n).expect("n"),
            })
        };
        assert_eq!(check(&rsa(&[1, 0, 1], &n)), Ok(()));
        assert_eq!(check(&rsa(&[1, 0, 1], &vec![0xc5; 2048])), Ok(()));
        let mut even = n.clone();
        even[255] &= !1;
        for (case, key, code) in [
            ("e = 1", rsa(&[1], &n), "weak_key"),
            ("e = 3", rsa(&[3], &n), "weak_key"),
            ("e = 65535", rsa(&[0xff, 0xff], &n), "weak_key"),
            ("e even", rsa(&[1, 0, 2], &n), "weak_key"),
            ("e = 2^33 + 1", rsa(&[2, 0, 0, 0, 1], &n), "weak_key"),
            (
                "e of 9 bytes",
                rsa(&[1, 0, 0, 0, 0, 0, 0, 0, 1], &n),
                "weak_key",
            ),
            ("1024-bit modulus", rsa(&[1, 0, 1], &n[..128]), "weak_key"),
            (
                "2047-bit modulus",
                rsa(&[1, 0, 1], &[&[0x7f][..], &n[1..]].concat()),
                "weak_key",
            ),
            (
                "16392-bit modulus",
                rsa(&[1, 0, 1], &vec![0xc5; 2049]),
                "weak_key",
            ),
            ("even modulus", rsa(&[1, 0, 1], &even), "invalid_key"),
        ] {
            assert_eq!(check(&key).map_err(|p| p.code()), Err(code), "{case}");
        }
    }
}

//! Signing with a CA key, behind the small [`Signer`] trait so a KMS or PKCS#11 signer can
//! be added without touching callers.
//!
//! Two in-memory signers exist, picked by the key's algorithm in [`signer_for`]:
//! - [`CaSigner`] (ed25519, the default) keeps the expanded ed25519 key in memory
//!   (zeroized on drop by `ed25519-dalek`), which signs about twice as fast as re-expanding
//!   it per signature;
//! - [`EcdsaSigner`] (ECDSA P-256, `[ca] key_algorithm = "ecdsa-p256"`, for sites whose
//!   policies require NIST curves) keeps ssh-key's `EcdsaKeypair`, whose private scalar is
//!   zeroized on drop, and signs with deterministic (RFC 6979) nonces.
//!
//! Neither ever exposes its private key: `Debug` shows the fingerprint only, and the
//! trait has no method that returns key material.

use std::sync::Arc;

use ssh_key::private::{EcdsaKeypair, KeypairData};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, PrivateKey, Signature};

/// Anything that can sign certificates for the CA.
pub trait Signer: Send + Sync {
    /// The CA public key certificates will name as their signature key.
    fn public_key(&self) -> &KeyData;
    /// SHA-256 fingerprint of [`Signer::public_key`], as `SHA256:…`.
    fn fingerprint(&self) -> &str;
    /// Sign `message` (a certificate's to-be-signed bytes).
    fn sign(&self, message: &[u8]) -> Result<Signature, signature::Error>;
}

/// An in-memory ed25519 CA key.
pub struct CaSigner {
    key: ed25519_dalek::SigningKey,
    public: KeyData,
    fingerprint: String,
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Why a private key cannot be used as a signer.
#[derive(Debug, thiserror::Error)]
#[error("unsupported CA key algorithm {0}; writ signs with ed25519 or ECDSA P-256")]
pub struct UnsupportedKey(pub Algorithm);

/// The in-memory signer for a decrypted CA key, by its algorithm.
pub fn signer_for(key: &PrivateKey) -> Result<Arc<dyn Signer>, UnsupportedKey> {
    match key.key_data() {
        KeypairData::Ed25519(_) => Ok(Arc::new(CaSigner::from_private_key(key)?)),
        KeypairData::Ecdsa(_) => Ok(Arc::new(EcdsaSigner::from_private_key(key)?)),
        _ => Err(UnsupportedKey(key.algorithm())),
    }
}

impl CaSigner {
    /// Build a signer from a decrypted OpenSSH private key.
    pub fn from_private_key(key: &PrivateKey) -> Result<CaSigner, UnsupportedKey> {
        let keypair = key
            .key_data()
            .ed25519()
            .ok_or_else(|| UnsupportedKey(key.algorithm()))?;
        let signing = ed25519_dalek::SigningKey::from(&keypair.private);
        let public = KeyData::Ed25519(Ed25519PublicKey(signing.verifying_key().to_bytes()));
        let fingerprint = public.fingerprint(HashAlg::Sha256).to_string();
        Ok(CaSigner {
            key: signing,
            public,
            fingerprint,
        })
    }
}

impl Signer for CaSigner {
    fn public_key(&self) -> &KeyData {
        &self.public
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, signature::Error> {
        use ed25519_dalek::Signer as _;
        let sig = self.key.sign(message);
        Signature::new(Algorithm::Ed25519, sig.to_bytes().to_vec())
            .map_err(signature::Error::from_source)
    }
}

/// An in-memory ECDSA P-256 CA key.
pub struct EcdsaSigner {
    keypair: EcdsaKeypair,
    public: KeyData,
    fingerprint: String,
}

impl std::fmt::Debug for EcdsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaSigner")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl EcdsaSigner {
    /// Build a signer from a decrypted OpenSSH ECDSA P-256 private key.
    pub fn from_private_key(key: &PrivateKey) -> Result<EcdsaSigner, UnsupportedKey> {
        let keypair = key
            .key_data()
            .ecdsa()
            .filter(|k| k.curve() == EcdsaCurve::NistP256)
            .ok_or_else(|| UnsupportedKey(key.algorithm()))?
            .clone();
        let public = key.public_key().key_data().clone();
        let fingerprint = public.fingerprint(HashAlg::Sha256).to_string();
        Ok(EcdsaSigner {
            keypair,
            public,
            fingerprint,
        })
    }
}

impl Signer for EcdsaSigner {
    fn public_key(&self) -> &KeyData {
        &self.public
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, signature::Error> {
        signature::Signer::try_sign(&self.keypair, message)
    }
}

/// Adapter so `ssh_key::certificate::Builder::sign` can use any [`Signer`].
pub(crate) struct SshKeySigner<'a>(pub &'a dyn Signer);

impl signature::Signer<Signature> for SshKeySigner<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, signature::Error> {
        self.0.sign(msg)
    }
}

impl From<&SshKeySigner<'_>> for KeyData {
    fn from(signer: &SshKeySigner<'_>) -> KeyData {
        signer.0.public_key().clone()
    }
}

/// The SSHSIG namespace of [`probe`]'s signatures, so they can never pass for anything
/// else the CA key signs (certificates, revocation feeds, audit checkpoints).
pub const PROBE_NAMESPACE: &str = "readiness-probe@writ.dev";

/// Check that `signer` can sign, and signs as `expected` (the active key's public half
/// in the keyring): one SSHSIG in [`PROBE_NAMESPACE`], verified and discarded. For
/// `/readyz`; the error says what failed, never with key material.
pub fn probe(signer: &dyn Signer, expected: &ssh_key::PublicKey) -> Result<(), String> {
    let message = b"writ readiness probe";
    let signature = ssh_key::SshSig::sign(
        &SshKeySigner(signer),
        PROBE_NAMESPACE,
        HashAlg::Sha512,
        message,
    )
    .map_err(|e| format!("the active CA key cannot sign: {e}"))?;
    expected
        .verify(PROBE_NAMESPACE, message, &signature)
        .map_err(|_| "the signer does not sign as the active CA key".to_owned())
}

/// Sign `message` as an OpenSSH SSHSIG (what `ssh-keygen -Y sign -n NAMESPACE` makes) and
/// return it PEM-armoured.
pub fn sign_sshsig(
    signer: &dyn Signer,
    namespace: &str,
    message: &[u8],
) -> Result<String, ssh_key::Error> {
    let signature =
        ssh_key::SshSig::sign(&SshKeySigner(signer), namespace, HashAlg::Sha512, message)?;
    signature.to_pem(ssh_key::LineEnding::LF)
}

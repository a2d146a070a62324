//! Signing with a CA key, behind the small [`Signer`] trait so a KMS or PKCS#11 signer can
//! be added without touching callers.
//!
//! [`CaSigner`] keeps the expanded ed25519 key in memory (zeroized on drop by
//! `ed25519-dalek`), which signs about twice as fast as re-expanding it per signature.

use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{Algorithm, HashAlg, PrivateKey, Signature};

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
#[error("unsupported CA key algorithm {0}; writ signs with ed25519")]
pub struct UnsupportedKey(pub Algorithm);

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

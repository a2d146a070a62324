//! The certificate authority proper: the CA keyring (keys encrypted at rest, one active
//! signer per kind: user and host), its rotation, and the building and signing of writ
//! user certificates and SSH host certificates.
//!
//! - [`keyring`] — key states, an immutable snapshot of the stored keys, key generation
//!   and encryption at rest.
//! - [`rotation`] — rotate, revoke, retire, schedule, rewrap: each a planned change
//!   committed with its audit record in one transaction.
//! - [`live`] — the running server's reloadable keyring and its maintenance round.
//! - [`signer`] — the [`Signer`] trait, the only way anything signs (ed25519, ECDSA P-256).
//! - [`certificate`] — building and signing one certificate.
//! - [`serial`] — time-ordered certificate serial numbers.
//!
//! Never returns or logs private key material; only public keys and fingerprints leave.

pub mod certificate;
pub mod keyring;
pub mod live;
pub mod rotation;
pub mod serial;
pub mod signer;

pub use certificate::{
    CertificateSpec, HostCertificateSpec, sign_certificate, sign_host_certificate,
};
pub use keyring::{CaKey, KeyState, Keyring, KeyringError};
pub use live::LiveKeyring;
pub use signer::{CaSigner, EcdsaSigner, Signer, sign_sshsig};

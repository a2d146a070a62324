//! The certificate authority proper: the CA keyring (keys encrypted at rest, one active
//! signer) and the building and signing of writ user certificates.
//!
//! Never returns or logs private key material; only public keys and fingerprints leave.

pub mod certificate;
pub mod keyring;
pub mod signer;

pub use certificate::{CertificateSpec, sign_certificate};
pub use keyring::{CaKey, KeyState, Keyring, KeyringError};
pub use signer::{CaSigner, Signer, sign_sshsig};

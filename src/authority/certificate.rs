//! Building and signing one writ user certificate from a [`CertificateSpec`], following
//! the profile in [`crate::profile`], and one SSH host certificate from a
//! [`HostCertificateSpec`]. Time and randomness are inputs. Which key signs is the
//! caller's: a user certificate only ever with the user keyring's signer, a host
//! certificate only with the host keyring's (the store refuses either the other way).

use std::collections::BTreeMap;

use rand_core::CryptoRngCore;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Certificate, PublicKey};

use super::signer::{Signer, SshKeySigner};
use crate::profile;

/// Everything that goes into a certificate.
#[derive(Debug, Clone)]
pub struct CertificateSpec {
    /// The key being certified.
    pub public_key: PublicKey,
    /// CA-generated, random, non-zero.
    pub serial: u64,
    /// CA-generated key id (shown in sshd's logs).
    pub key_id: String,
    /// Task the certificate is bound to.
    pub task_id: String,
    /// Logins the task names; each becomes a `writ:<task>:<login>` principal.
    pub logins: Vec<String>,
    /// Host patterns the task names.
    pub hosts: Vec<String>,
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds.
    pub valid_before: u64,
    /// Standard extensions such as `permit-pty`.
    pub extensions: Vec<String>,
    /// `force-command` critical option.
    pub force_command: Option<String>,
    /// `source-address` critical option entries.
    pub source_address: Option<Vec<String>>,
    /// When the task expires (Unix seconds), for [`profile::EXT_TASK_EXPIRES`].
    pub task_expires_at: Option<u64>,
}

/// A certificate builder for `public_key` of `cert_type` with its serial, key id and
/// validity window set (Unix seconds) and a random nonce.
fn builder(
    public_key: &PublicKey,
    serial: u64,
    key_id: &str,
    cert_type: CertType,
    (valid_after, valid_before): (u64, u64),
    rng: &mut impl CryptoRngCore,
) -> Result<Builder, ssh_key::Error> {
    let mut builder = Builder::new_with_random_nonce(
        rng,
        public_key.key_data().clone(),
        valid_after,
        valid_before,
    )?;
    builder
        .serial(serial)?
        .key_id(key_id)?
        .cert_type(cert_type)?;
    Ok(builder)
}

/// Sign `spec` with `signer`.
pub fn sign_certificate(
    spec: &CertificateSpec,
    signer: &dyn Signer,
    rng: &mut impl CryptoRngCore,
) -> Result<Certificate, ssh_key::Error> {
    let mut builder = builder(
        &spec.public_key,
        spec.serial,
        &spec.key_id,
        CertType::User,
        (spec.valid_after, spec.valid_before),
        rng,
    )?;
    for login in &spec.logins {
        builder.valid_principal(profile::principal(&spec.task_id, login))?;
    }
    // Extensions must be sorted by name in the encoding; a BTreeMap keeps them so.
    let mut extensions: BTreeMap<&str, String> = spec
        .extensions
        .iter()
        .map(|e| (e.as_str(), String::new()))
        .collect();
    extensions.insert(profile::EXT_TASK, spec.task_id.clone());
    extensions.insert(profile::EXT_HOSTS, profile::encode_hosts(&spec.hosts));
    if let Some(expires) = spec.task_expires_at {
        extensions.insert(profile::EXT_TASK_EXPIRES, expires.to_string());
    }
    for (name, value) in extensions {
        builder.extension(name, value)?;
    }
    if let Some(command) = &spec.force_command {
        builder.critical_option("force-command", command.as_str())?;
    }
    if let Some(addresses) = &spec.source_address {
        builder.critical_option("source-address", addresses.join(","))?;
    }
    builder.sign(&SshKeySigner(signer))
}

/// Everything that goes into a host certificate.
#[derive(Debug, Clone)]
pub struct HostCertificateSpec {
    /// The host key being certified.
    pub public_key: PublicKey,
    /// CA-generated, random, non-zero.
    pub serial: u64,
    /// CA-generated key id.
    pub key_id: String,
    /// The host names: the certificate's principals, exactly.
    pub names: Vec<String>,
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds.
    pub valid_before: u64,
}

/// Sign `spec` as a host certificate (no critical options, no extensions) with `signer`.
pub fn sign_host_certificate(
    spec: &HostCertificateSpec,
    signer: &dyn Signer,
    rng: &mut impl CryptoRngCore,
) -> Result<Certificate, ssh_key::Error> {
    let mut builder = builder(
        &spec.public_key,
        spec.serial,
        &spec.key_id,
        CertType::Host,
        (spec.valid_after, spec.valid_before),
        rng,
    )?;
    for name in &spec.names {
        builder.valid_principal(name.as_str())?;
    }
    builder.sign(&SshKeySigner(signer))
}

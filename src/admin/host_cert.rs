//! `writ admin host-cert list|revoke`: operators listing and revoking host certificates
//! directly in the CA's store (the store a running `writ serve` uses: a revocation is in
//! the next KRL it hands out, in the section of the host CA key that signed it).
//!
//! Each revoked certificate is one `host_cert.revoked` record by `local-admin` and the
//! operator, committed with the revocation. Prints no key material.

use std::fmt::Write as _;
use std::io::Write;

use serde::Serialize;

use super::task::LOCAL_ADMIN;
use super::{AdminError, Context, Render, Status, emit, pretty};
use crate::audit::{AuditEntry, Outcome, event};
use crate::store::{HostCertificateRecord, HostRevocation, StoreError};

/// `writ admin host-cert …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum HostCertCommand {
    /// Host certificates that have not expired (revoked ones marked).
    List {
        /// Only those naming this host.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one host certificate by serial, or every unexpired one naming a host.
    Revoke {
        /// Serial (decimal, as `list` and the issuance response show it).
        #[arg(required_unless_present = "host", conflicts_with = "host")]
        serial: Option<i64>,
        /// Revoke every unexpired host certificate whose names include NAME.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Why a host-cert command failed.
#[derive(Debug, thiserror::Error)]
pub enum HostCertCommandError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing live matched.
    #[error("no unrevoked, unexpired host certificate {0}")]
    NothingToRevoke(String),
    /// The reason is empty or unprintable.
    #[error("--reason must be 1 to 512 bytes of text without control characters")]
    BadReason,
}

/// Host certificates, for printing.
#[derive(Debug, Serialize)]
pub struct HostCertificates {
    /// The certificates, oldest first.
    pub certificates: Vec<HostCertificateListing>,
}

/// One host certificate, for printing.
#[derive(Debug, Serialize)]
pub struct HostCertificateListing {
    /// Serial, decimal.
    pub serial: String,
    /// Host names.
    pub names: Vec<String>,
    /// Who asked: issuer / subject.
    pub identity: String,
    /// The policy that granted the names.
    pub policy: String,
    /// `SHA256:…` of the host key.
    pub key_fingerprint: String,
    /// Host CA key id.
    pub ca_key_id: String,
    /// Unix seconds.
    pub valid_before: i64,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<i64>,
}

impl From<&HostCertificateRecord> for HostCertificateListing {
    fn from(c: &HostCertificateRecord) -> HostCertificateListing {
        HostCertificateListing {
            serial: c.serial.to_string(),
            names: c.principals.clone(),
            identity: format!("{} / {}", c.issuer, c.subject),
            policy: c.policy.clone(),
            key_fingerprint: c.key_fingerprint.clone(),
            ca_key_id: c.ca_key_id.clone(),
            valid_before: c.valid_before,
            revoked_at: c.revoked_at,
        }
    }
}

impl Render for HostCertificates {
    fn text(&self) -> String {
        let mut text = String::new();
        if self.certificates.is_empty() {
            text.push_str("no host certificates\n");
        }
        for c in &self.certificates {
            let _ = writeln!(
                text,
                "{} {} [{}] {} policy {} key {} valid_before {}",
                c.serial,
                if c.revoked_at.is_some() {
                    "revoked"
                } else {
                    "valid"
                },
                c.names.join(","),
                c.identity,
                c.policy,
                c.key_fingerprint,
                crate::api::certificates::rfc3339(c.valid_before),
            );
        }
        text
    }

    fn json(&self) -> String {
        pretty(self)
    }
}

/// Run `writ admin host-cert …`.
pub async fn run(
    context: &Context,
    command: HostCertCommand,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    let store = context.store().await?;
    let now = context.now();
    let (listed, json) = match command {
        HostCertCommand::List { host, json } => {
            let certs = store
                .host_certificates(now.unix_timestamp(), host.as_deref())
                .await
                .map_err(HostCertCommandError::from)?;
            (certs, json)
        }
        HostCertCommand::Revoke {
            serial,
            host,
            reason,
            json,
        } => {
            let reason = reason.trim().to_owned();
            if reason.is_empty() || reason.len() > 512 || reason.chars().any(char::is_control) {
                return Err(HostCertCommandError::BadReason.into());
            }
            let (which, what) = match (serial, host) {
                (_, Some(name)) => (
                    HostRevocation::Name(name.clone()),
                    format!("names {name:?}"),
                ),
                (Some(serial), None) => (
                    HostRevocation::Serial(serial),
                    format!("has serial {serial}"),
                ),
                (None, None) => {
                    return Err(HostCertCommandError::NothingToRevoke(
                        "named: give a SERIAL or --host NAME".into(),
                    )
                    .into());
                }
            };
            let operator = context.operator.clone();
            let audit = Box::new(move |revoked: &[HostCertificateRecord]| {
                revoked
                    .iter()
                    .map(|c| {
                        let mut entry = AuditEntry::new(event::HOST_CERT_REVOKED, Outcome::Success);
                        entry.issuer = Some(LOCAL_ADMIN.to_owned());
                        entry.subject = Some(operator.clone());
                        entry.serial = Some(c.serial.to_string());
                        entry.key_fingerprint = Some(c.key_fingerprint.clone());
                        entry.hosts = c.principals.clone();
                        entry.reason = Some(reason.clone());
                        entry
                    })
                    .collect()
            });
            let revoked = store
                .revoke_host_certificates(&which, now, audit)
                .await
                .map_err(HostCertCommandError::from)?;
            if revoked.is_empty() {
                return Err(HostCertCommandError::NothingToRevoke(format!("that {what}")).into());
            }
            (revoked, json)
        }
    };
    let report = HostCertificates {
        certificates: listed.iter().map(HostCertificateListing::from).collect(),
    };
    emit(out, &report, json)?;
    Ok(Status::Success)
}

//! Host certificates (issue 17): a host's verified workload identity, its public host
//! keys and the names it asks for become signed, recorded SSH host certificates. Order is
//! fixed, as for user certificates: validate input → `role = "host"` policy → sign with
//! the host CA key → commit every certificate with its audit record → only then hand them
//! out. A refusal changes nothing and is returned as data ([`Refused`], a
//! `host_cert.denied` record) for the API layer to record.
//!
//! Never signs with the user CA key, never certifies one of the CA's own keys, and never
//! puts a name in a certificate that the matching host policy does not cover.

use std::collections::HashSet;
use std::sync::Arc;

use rand_core::OsRng;
use ssh_key::HashAlg;

use super::{IssueError, Refused, RequestContext, SERIAL_ATTEMPTS, parse_public_key, truncate};
use crate::audit::{AuditEntry, Outcome, event};
use crate::authority::serial::new_serial;
use crate::authority::{HostCertificateSpec, LiveKeyring, sign_host_certificate};
use crate::config::CaConfig;
use crate::duration::secs;
use crate::identity::{Identity, TokenError};
use crate::policy::Policies;
use crate::profile;
use crate::store::{HostCertificateRecord, HostIssuance, Store, StoreError, TokenUse};

/// Most host keys one request may certify (a host has a handful: ed25519, ecdsa, rsa).
pub const MAX_HOST_KEYS: usize = 8;
/// Most names one host certificate may carry.
pub const MAX_HOST_NAMES: usize = 32;

/// A request for host certificates (already decoded from JSON).
#[derive(Debug, Clone)]
pub struct HostRequest {
    /// OpenSSH public key lines, one certificate each.
    pub public_keys: Vec<String>,
    /// Host names every certificate names.
    pub names: Vec<String>,
}

/// One issued host certificate.
#[derive(Debug, Clone)]
pub struct IssuedHostCertificate {
    /// Serial.
    pub serial: u64,
    /// `…-cert-v01@openssh.com AAAA…`
    pub certificate: String,
    /// `SHA256:…` of the certified host key.
    pub public_key_fingerprint: String,
}

/// What one request got: a certificate per key, all with the same names and window.
#[derive(Debug, Clone)]
pub struct HostIssued {
    /// In the order of the request's keys.
    pub certificates: Vec<IssuedHostCertificate>,
    /// The names (principals) of every certificate.
    pub names: Vec<String>,
    /// Unix seconds.
    pub valid_after: i64,
    /// Unix seconds.
    pub valid_before: i64,
    /// `SHA256:…` of the host CA key that signed.
    pub ca_fingerprint: String,
}

/// Issues host certificates.
pub struct HostIssuer {
    store: Arc<dyn Store>,
    host_keyring: Arc<LiveKeyring>,
    user_keyring: Arc<LiveKeyring>,
    policies: Policies,
    limits: CaConfig,
}

impl HostIssuer {
    /// Build the service: `host_keyring` signs, `user_keyring` only names keys that must
    /// never be certified.
    pub fn new(
        store: Arc<dyn Store>,
        host_keyring: Arc<LiveKeyring>,
        user_keyring: Arc<LiveKeyring>,
        policies: Policies,
        limits: CaConfig,
    ) -> HostIssuer {
        HostIssuer {
            store,
            host_keyring,
            user_keyring,
            policies,
            limits,
        }
    }

    /// Certify `request.public_keys` for `request.names`, at the request's time. A
    /// refusal is `host_cert.denied` naming the identity and the names asked for.
    pub async fn issue(
        &self,
        identity: &Identity,
        request: &HostRequest,
        context: &RequestContext,
    ) -> Result<HostIssued, Refused> {
        self.try_issue(identity, request, context)
            .await
            .map_err(|error| {
                let mut denied = AuditEntry::new(event::HOST_CERT_DENIED, Outcome::Failure);
                denied.issuer = Some(identity.issuer_name.clone());
                denied.subject = Some(identity.subject.clone());
                denied.hosts = request
                    .names
                    .iter()
                    .take(MAX_HOST_NAMES)
                    .map(|n| truncate(n))
                    .collect();
                Refused::new(error, denied)
            })
    }

    async fn try_issue(
        &self,
        identity: &Identity,
        request: &HostRequest,
        context: &RequestContext,
    ) -> Result<HostIssued, IssueError> {
        validate_names(&request.names)?;
        let keys = parse_keys(&request.public_keys)?;
        let grant = self.policies.evaluate_host(identity, &request.names)?;

        // One snapshot of each keyring for the whole request.
        let host_keyring = self.host_keyring.current();
        let user_keyring = self.user_keyring.current();
        let own = host_keyring.keys().iter().chain(user_keyring.keys());
        let own: Vec<_> = own.map(|k| k.public_key.key_data().clone()).collect();
        if keys.iter().any(|k| own.contains(k.key_data())) {
            return Err(IssueError::Unacceptable {
                code: "ca_key_as_subject",
                message: "a public key is one of this CA's own keys; certify the host's keys"
                    .into(),
            });
        }
        let signer = host_keyring.signer();
        let now = context.now;
        let now_unix = now.unix_timestamp();
        let valid_after = now_unix.saturating_sub(secs(self.limits.clock_skew));
        let valid_before = now_unix
            .checked_add(secs(self.limits.host_cert_ttl))
            .ok_or_else(|| IssueError::Signing("host certificate lifetime overflows".into()))?;
        let token_use = identity.replay_key.as_ref().map(|k| TokenUse {
            issuer: k.issuer.clone(),
            token_hash: k.token_hash.clone(),
            expires_at: k.expires_at,
        });
        let subject: String = identity
            .subject
            .chars()
            .take(128)
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' {
                    c
                } else {
                    '_'
                }
            })
            .collect();

        for _ in 0..SERIAL_ATTEMPTS {
            let mut serials = HashSet::new();
            let mut issued = Vec::with_capacity(keys.len());
            let mut records = Vec::with_capacity(keys.len());
            let mut audit = Vec::with_capacity(keys.len());
            for key in &keys {
                let serial = loop {
                    let serial = new_serial(now, &mut OsRng);
                    if serials.insert(serial) {
                        break serial;
                    }
                };
                let spec = HostCertificateSpec {
                    public_key: key.clone(),
                    serial,
                    key_id: format!("writ host serial={serial} sub={subject}"),
                    names: grant.names.clone(),
                    valid_after: u64::try_from(valid_after).unwrap_or(0),
                    valid_before: u64::try_from(valid_before).unwrap_or(0),
                };
                let certificate = sign_host_certificate(&spec, signer.as_ref(), &mut OsRng)
                    .and_then(|c| c.to_openssh())
                    .map_err(|e| IssueError::Signing(e.to_string()))?;
                let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                let serial_i64 =
                    i64::try_from(serial).map_err(|e| IssueError::Signing(e.to_string()))?;
                let mut entry = AuditEntry::new(event::HOST_CERT_ISSUED, Outcome::Success);
                entry.issuer = Some(identity.issuer_name.clone());
                entry.subject = Some(identity.subject.clone());
                entry.policy = Some(grant.policy.clone());
                entry.serial = Some(serial.to_string());
                entry.key_fingerprint = Some(fingerprint.clone());
                entry.hosts = grant.names.clone();
                entry.ca_fingerprint = Some(signer.fingerprint().to_owned());
                context.stamp(&mut entry);
                audit.push(entry);
                records.push(HostCertificateRecord {
                    serial: serial_i64,
                    ca_key_id: host_keyring.active_id().to_owned(),
                    key_fingerprint: fingerprint.clone(),
                    principals: grant.names.clone(),
                    issuer: identity.issuer_name.clone(),
                    subject: identity.subject.clone(),
                    policy: grant.policy.clone(),
                    valid_after,
                    valid_before,
                    issued_at: now_unix,
                    revoked_at: None,
                });
                issued.push(IssuedHostCertificate {
                    serial,
                    certificate,
                    public_key_fingerprint: fingerprint,
                });
            }
            let issuance = HostIssuance {
                certificates: records,
                audit,
                token_use: token_use.clone(),
                at: now,
            };
            match self.store.record_host_issuance(issuance).await {
                Ok(()) => {
                    tracing::info!(
                        certificates = issued.len(), subject = ?identity.subject,
                        policy = %grant.policy, "host certificates issued"
                    );
                    return Ok(HostIssued {
                        certificates: issued,
                        names: grant.names,
                        valid_after,
                        valid_before,
                        ca_fingerprint: signer.fingerprint().to_owned(),
                    });
                }
                Err(StoreError::TokenReused) => {
                    return Err(IssueError::TokenReplayed(TokenError::Replayed {
                        issuer: identity.issuer_name.clone(),
                    }));
                }
                Err(StoreError::Conflict(what)) => {
                    tracing::debug!(conflict = %what, "host certificate serial collision; retrying");
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not record host certificates; none returned");
                    return Err(IssueError::StoreUnavailable(e));
                }
            }
        }
        Err(IssueError::StoreUnavailable(StoreError::Conflict(
            "no free serial".into(),
        )))
    }
}

fn bad(code: &'static str, message: String) -> IssueError {
    IssueError::BadRequest { code, message }
}

/// `names`: 1 to [`MAX_HOST_NAMES`] distinct lowercase DNS names, no wildcards.
fn validate_names(names: &[String]) -> Result<(), IssueError> {
    if names.is_empty() || names.len() > MAX_HOST_NAMES {
        return Err(bad(
            "invalid_host_names",
            format!("names must list 1 to {MAX_HOST_NAMES} host names"),
        ));
    }
    if let Some(name) = names.iter().find(|n| !profile::is_valid_host_name(n)) {
        return Err(bad(
            "invalid_host_name",
            format!(
                "{:?} is not a host name (a lowercase DNS name: letters, digits, '-' and dots; \
                 no wildcards)",
                truncate(name)
            ),
        ));
    }
    let mut seen = HashSet::new();
    if let Some(name) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(bad(
            "invalid_host_names",
            format!("{:?} is named twice", truncate(name)),
        ));
    }
    Ok(())
}

/// `public_keys`: 1 to [`MAX_HOST_KEYS`] distinct keys, each one writ certifies
/// ([`parse_public_key`]: the subject-key rules of user certificates).
fn parse_keys(lines: &[String]) -> Result<Vec<ssh_key::PublicKey>, IssueError> {
    if lines.is_empty() || lines.len() > MAX_HOST_KEYS {
        return Err(bad(
            "invalid_public_keys",
            format!("public_keys must list 1 to {MAX_HOST_KEYS} OpenSSH public keys"),
        ));
    }
    let mut keys: Vec<ssh_key::PublicKey> = Vec::with_capacity(lines.len());
    for line in lines {
        let key = parse_public_key(line)?;
        if keys.iter().any(|k| k.key_data() == key.key_data()) {
            return Err(bad(
                "invalid_public_keys",
                "the same public key is listed twice".into(),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_distinct_dns_names() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(validate_names(&names(&["web1.example.com", "web1"])).is_ok());
        for bad in [
            names(&[]),
            names(&["*.example.com"]),
            names(&["Web1.example.com"]),
            names(&["a", "a"]),
            (0..=MAX_HOST_NAMES).map(|i| format!("h{i}")).collect(),
        ] {
            let code = validate_names(&bad).expect_err("refused").code();
            assert!(code.starts_with("invalid_host_name"), "{bad:?}: {code}");
        }
    }
}

//! The CA's online answer to a host (`POST /v1/authorize`): is this certificate, for this
//! login, on this host, admitted right now? Same rules as `writ-principals check`, plus the
//! live state of the task and certificate in the store. A `session` report of an admitted
//! certificate is recorded as `cert.used`; a plain `check` records nothing, because sshd
//! runs the check for unauthenticated probes too.

use base64ct::{Base64, Encoding};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, HashAlg};

use super::lifecycle::task_state;
use super::{IssueError, Issuer, Refused, RequestContext};
use crate::audit::{AuditEntry, Outcome, event};

use crate::identity::Identity;
use crate::profile;

/// Why the request is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// sshd is asking (maybe for a probe): record nothing.
    Check,
    /// A session opened after authentication: record a use.
    Session,
    /// The host ended a session with its task: record `cert.session_ended`.
    SessionEnded,
}

/// The question a host asks.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    /// Login asked for.
    pub login: String,
    /// Certificate blob, base64 (sshd's `%k`).
    pub certificate: String,
    /// The host's name.
    pub host: String,
    /// Check or session.
    pub phase: Phase,
    /// Why the host ended the session (`session_ended`): one of [`SESSION_END_REASONS`].
    pub reason: Option<String>,
}

/// The reasons a host gives for ending a session (README "Sessions end with their task").
pub const SESSION_END_REASONS: [&str; 4] = ["task_ended", "revoked", "expired", "stale"];

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admit with this principal.
    Allow(String),
    /// Refuse, with a reason code.
    Deny(&'static str),
}

impl Issuer {
    /// Answer a host. `host_identity` must match a `role = "host"` policy whose `hosts`
    /// cover the host name it asks about; if it does not, the refusal is a
    /// `cert.use_denied` record naming the host.
    pub async fn authorize(
        &self,
        host_identity: &Identity,
        request: &AuthorizeRequest,
        context: &RequestContext,
    ) -> Result<Decision, Refused> {
        let now = context.now;
        let host = request.host.to_ascii_lowercase();
        if !self.speaks_for_host(host_identity, &host) {
            let error = IssueError::Forbidden {
                code: "host_not_authorized",
                message: format!(
                    "no role = \"host\" policy lets this identity speak for host {:?}",
                    truncate(&host)
                ),
            };
            let mut entry = AuditEntry::new(event::CERT_USE_DENIED, Outcome::Failure);
            entry.issuer = Some(host_identity.issuer_name.clone());
            entry.subject = Some(host_identity.subject.clone());
            entry.host = Some(truncate(&host));
            return Err(Refused::new(error, entry));
        }
        let (decision, cert) = self.decide(request, &host, now.unix_timestamp()).await?;
        if request.phase == Phase::SessionEnded {
            // The certificate is usually dead by now: record the end, admit nothing.
            let mut entry = AuditEntry::new(event::CERT_SESSION_ENDED, Outcome::Success);
            entry.issuer = Some(host_identity.issuer_name.clone());
            entry.subject = Some(host_identity.subject.clone());
            entry.host = Some(truncate(&host));
            entry.logins = vec![truncate(&request.login)];
            entry.reason = request.reason.clone();
            if let Some(cert) = &cert {
                entry.serial = Some(cert.serial().to_string());
                entry.task_id = cert.extensions().get(profile::EXT_TASK).cloned();
                entry.ca_fingerprint = Some(
                    cert.signature_key()
                        .fingerprint(HashAlg::Sha256)
                        .to_string(),
                );
            }
            context.stamp(&mut entry);
            self.store
                .append_audit(&entry, now)
                .await
                .map_err(IssueError::StoreUnavailable)?;
            return Ok(Decision::Deny("session_ended"));
        }
        if request.phase == Phase::Session {
            let name = if matches!(decision, Decision::Allow(_)) {
                event::CERT_USED
            } else {
                event::CERT_USE_DENIED
            };
            let outcome = if matches!(decision, Decision::Allow(_)) {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            let mut entry = AuditEntry::new(name, outcome);
            entry.issuer = Some(host_identity.issuer_name.clone());
            entry.subject = Some(host_identity.subject.clone());
            entry.host = Some(truncate(&host));
            entry.logins = vec![truncate(&request.login)];
            if let Some(cert) = &cert {
                entry.serial = Some(cert.serial().to_string());
                entry.task_id = cert.extensions().get(profile::EXT_TASK).cloned();
                entry.key_fingerprint =
                    Some(cert.public_key().fingerprint(HashAlg::Sha256).to_string());
                entry.ca_fingerprint = Some(
                    cert.signature_key()
                        .fingerprint(HashAlg::Sha256)
                        .to_string(),
                );
            }
            if let Decision::Deny(reason) = decision {
                entry.reason = Some(reason.to_owned());
            }
            context.stamp(&mut entry);
            self.store
                .append_audit(&entry, now)
                .await
                .map_err(IssueError::StoreUnavailable)?;
        }
        Ok(decision)
    }

    async fn decide(
        &self,
        request: &AuthorizeRequest,
        host: &str,
        now_unix: i64,
    ) -> Result<(Decision, Option<Certificate>), IssueError> {
        let deny = |reason| Ok((Decision::Deny(reason), None));
        let Ok(blob) = Base64::decode_vec(request.certificate.trim()) else {
            return deny("malformed_certificate");
        };
        let Ok(cert) = Certificate::from_bytes(&blob) else {
            return deny("malformed_certificate");
        };
        let with = |reason| Ok((Decision::Deny(reason), Some(cert.clone())));
        if cert.cert_type() != CertType::User {
            return with("not_user_certificate");
        }
        let trusted: Vec<ssh_key::Fingerprint> = self
            .keyring
            .current()
            .trusted_keys()
            .map(|k| k.public_key.fingerprint(HashAlg::Sha256))
            .collect();
        if cert
            .validate_at(u64::try_from(now_unix).unwrap_or(0), &trusted)
            .is_err()
        {
            return with("untrusted_or_expired");
        }
        let Some(task_id) = cert
            .extensions()
            .get(profile::EXT_TASK)
            .filter(|t| profile::is_valid_task_id(t))
        else {
            return with("missing_task_extension");
        };
        let hosts = cert
            .extensions()
            .get(profile::EXT_HOSTS)
            .and_then(|h| profile::decode_hosts(h));
        let Some(hosts) = hosts else {
            return with("invalid_hosts_extension");
        };
        if !profile::is_valid_login(&request.login) {
            return with("invalid_login");
        }
        if !profile::host_allowed(&hosts, host) {
            return with("host_not_in_task");
        }
        let principal = profile::principal(task_id, &request.login);
        if !cert.valid_principals().contains(&principal) {
            return with("login_not_in_task");
        }
        let serial = i64::try_from(cert.serial()).unwrap_or(0);
        let record = self
            .store
            .certificate(serial)
            .await
            .map_err(IssueError::StoreUnavailable)?;
        match record {
            Some(r) if r.task_id == *task_id => {
                if r.revoked_at.is_some() {
                    return with("serial_revoked");
                }
            }
            _ => return with("unknown_certificate"),
        }
        let task = self
            .store
            .task(task_id)
            .await
            .map_err(IssueError::StoreUnavailable)?;
        match task.as_ref().map(|t| task_state(t, now_unix)) {
            Some("active") => Ok((Decision::Allow(principal), Some(cert))),
            Some("completed") => with("task_completed"),
            Some("revoked") => with("task_revoked"),
            Some(_) => with("task_expired"),
            None => with("unknown_task"),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(253).collect()
}

//! What happens to a task after it is opened: more certificates for it (new key or
//! renewal), completion by its owner or an admin, revocation by an admin, revocation of a
//! single certificate, and inspection. Authorisation rules:
//! - the **owner** is the identity (issuer + subject) that opened the task, proven by a
//!   fresh workload token or by a proof-of-possession signature from one of the task's
//!   live certificates ([`super::possession`]);
//! - an **admin** is an identity matching a `role = "admin"` policy;
//! - callers who may not see a task get 404, as if it did not exist.
//!
//! Every refusal is audited; every change commits with its audit records.

use ssh_key::{Certificate, HashAlg, SshSig};
use time::OffsetDateTime;

use super::possession::{self, Possession};
use super::{IssueError, Issued, Issuer, RequestContext, parse_public_key, validate_options};
use crate::audit::{AuditEntry, Outcome, event};
use crate::config::Role;
use crate::identity::{Identity, TokenError};
use crate::policy::Request;
use crate::profile;
use crate::store::{CertificateRecord, Store, StoreError, TaskEnd, TaskRecord, TokenUse};

/// Who is calling a task endpoint.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A verified workload token.
    Token(Identity),
    /// A proof-of-possession signature, already verified, from a live certificate of
    /// `task_id`.
    Possession {
        /// The task the certificate belongs to.
        task_id: String,
        /// The certificate's serial.
        serial: u64,
        /// Once-only record of the signature.
        token_use: TokenUse,
    },
}

/// What the caller is to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Owner,
    Admin,
}

/// A request for another certificate of a live task.
#[derive(Debug, Clone, Default)]
pub struct NewCertificate {
    /// OpenSSH public key line.
    pub public_key: String,
    /// Certificate lifetime in seconds.
    pub cert_ttl_seconds: Option<u64>,
    /// Extensions asked for (default: all the policy grants).
    pub extensions: Option<Vec<String>>,
    /// `force-command` asked for.
    pub force_command: Option<String>,
    /// `source-address` blocks asked for.
    pub source_address: Option<Vec<String>>,
}

/// How a task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The owner (or an admin) says the work is done.
    Complete,
    /// An admin withdraws access.
    Revoke,
}

impl Ending {
    fn state(self) -> &'static str {
        match self {
            Ending::Complete => "completed",
            Ending::Revoke => "revoked",
        }
    }
    fn event(self) -> &'static str {
        match self {
            Ending::Complete => event::TASK_COMPLETED,
            Ending::Revoke => event::TASK_REVOKED,
        }
    }
}

/// A task as its owner or an admin sees it.
#[derive(Debug, Clone)]
pub struct TaskView {
    /// The stored task.
    pub task: TaskRecord,
    /// `active`, `completed`, `revoked` or `expired`.
    pub state: &'static str,
    /// Its certificates.
    pub certificates: Vec<CertificateRecord>,
}

/// The state of a task at `now_unix` (`expired` is derived, never stored).
pub fn task_state(task: &TaskRecord, now_unix: i64) -> &'static str {
    match task.state.as_str() {
        "completed" => "completed",
        "revoked" => "revoked",
        _ if task.expires_at <= now_unix => "expired",
        _ => "active",
    }
}

impl Caller {
    fn subject_for_audit(&self, task: Option<&TaskRecord>) -> (Option<String>, Option<String>) {
        match self {
            Caller::Token(identity) => (
                Some(identity.issuer_name.clone()),
                Some(identity.subject.clone()),
            ),
            Caller::Possession { .. } => (
                task.map(|t| t.issuer.clone()),
                task.map(|t| t.subject.clone()),
            ),
        }
    }

    fn token_use(&self) -> Option<TokenUse> {
        match self {
            Caller::Token(identity) => identity.replay_key.as_ref().map(|k| TokenUse {
                issuer: k.issuer.clone(),
                token_hash: k.token_hash.clone(),
                expires_at: k.expires_at,
            }),
            Caller::Possession { token_use, .. } => Some(token_use.clone()),
        }
    }
}

impl Issuer {
    fn relation(&self, caller: &Caller, task: &TaskRecord) -> Option<Relation> {
        match caller {
            Caller::Possession { task_id, .. } => (*task_id == task.id).then_some(Relation::Owner),
            Caller::Token(identity) => {
                if identity.issuer_name == task.issuer && identity.subject == task.subject {
                    Some(Relation::Owner)
                } else if self
                    .policies
                    .matching(identity, Role::Admin)
                    .next()
                    .is_some()
                {
                    Some(Relation::Admin)
                } else {
                    None
                }
            }
        }
    }

    /// Whether `identity` matches an admin policy.
    pub fn is_admin(&self, identity: &Identity) -> bool {
        self.policies
            .matching(identity, Role::Admin)
            .next()
            .is_some()
    }

    /// Load a task the caller may see, or `TaskNotFound`.
    async fn visible_task(
        &self,
        caller: &Caller,
        task_id: &str,
    ) -> Result<(TaskRecord, Relation), IssueError> {
        if !profile::is_valid_task_id(task_id) {
            return Err(IssueError::TaskNotFound);
        }
        let task = self
            .store
            .task(task_id)
            .await
            .map_err(IssueError::StoreUnavailable)?;
        let task = task.ok_or(IssueError::TaskNotFound)?;
        let relation = self
            .relation(caller, &task)
            .ok_or(IssueError::TaskNotFound)?;
        Ok((task, relation))
    }

    async fn audit_refusal(
        &self,
        event_name: &str,
        caller: &Caller,
        task_id: &str,
        error: &IssueError,
        context: &RequestContext,
    ) -> Result<(), IssueError> {
        let task = self.store.task(task_id).await.ok().flatten();
        let (issuer, subject) = caller.subject_for_audit(task.as_ref());
        let mut entry = AuditEntry::new(event_name, Outcome::Failure);
        entry.issuer = issuer;
        entry.subject = subject;
        entry.task_id = profile::is_valid_task_id(task_id).then(|| task_id.to_owned());
        entry.reason = Some(format!("{}: {error}", error.code()));
        entry.source_ip = context.source_ip.clone();
        entry.request_id = context.request_id.clone();
        if let Caller::Possession { serial, .. } = caller {
            entry.serial = Some(serial.to_string());
        }
        self.store
            .append_audit(&entry)
            .await
            .map_err(IssueError::StoreUnavailable)
    }

    /// Another certificate for a live task (a new key, or a renewal), owner only.
    pub async fn renew(
        &self,
        caller: &Caller,
        task_id: &str,
        request: &NewCertificate,
        context: &RequestContext,
        now: OffsetDateTime,
    ) -> Result<Issued, IssueError> {
        match self.try_renew(caller, task_id, request, context, now).await {
            Err(IssueError::StoreUnavailable(e)) => Err(IssueError::StoreUnavailable(e)),
            Err(error) => {
                let name = if matches!(error, IssueError::TokenReplayed(_)) {
                    event::TOKEN_REJECTED
                } else {
                    event::CERT_DENIED
                };
                self.audit_refusal(name, caller, task_id, &error, context)
                    .await?;
                Err(error)
            }
            ok => ok,
        }
    }

    async fn try_renew(
        &self,
        caller: &Caller,
        task_id: &str,
        request: &NewCertificate,
        context: &RequestContext,
        now: OffsetDateTime,
    ) -> Result<Issued, IssueError> {
        let (task, relation) = self.visible_task(caller, task_id).await?;
        if relation != Relation::Owner {
            return Err(IssueError::Forbidden {
                code: "not_task_owner",
                message: "only the identity that opened the task may get certificates for it"
                    .into(),
            });
        }
        let now_unix = now.unix_timestamp();
        let state = task_state(&task, now_unix);
        if state != "active" {
            return Err(IssueError::TaskNotActive(state));
        }
        let public_key = parse_public_key(&request.public_key)?;
        validate_options(
            &request.extensions,
            &request.force_command,
            &request.source_address,
            request.cert_ttl_seconds,
        )?;
        let policy = self
            .policies
            .named(&task.policy)
            .ok_or_else(|| IssueError::Forbidden {
                code: "policy_removed",
                message: format!(
                    "policy {:?} that granted this task no longer exists",
                    task.policy
                ),
            })?;
        // A token caller must still match the task's policy; logins and hosts were granted
        // when the task opened and are fixed, so only lifetimes and options are re-checked.
        let identity = match caller {
            Caller::Token(identity) => {
                if self
                    .policies
                    .matching(identity, Role::Agent)
                    .all(|p| p.name != policy.name)
                {
                    return Err(IssueError::Forbidden {
                        code: "policy_no_longer_matches",
                        message: format!(
                            "policy {:?} no longer matches this identity",
                            policy.name
                        ),
                    });
                }
                identity.clone()
            }
            Caller::Possession { .. } => Identity {
                issuer_name: task.issuer.clone(),
                issuer: String::new(),
                subject: task.subject.clone(),
                claims: Default::default(),
                jti: None,
                expires_at: 0,
                replay_key: None,
            },
        };
        let policy_request = Request {
            logins: Vec::new(),
            hosts: Vec::new(),
            task_ttl: None,
            cert_ttl: request.cert_ttl_seconds.map(std::time::Duration::from_secs),
            extensions: request.extensions.clone(),
            force_command: request.force_command.clone(),
            source_address: request.source_address.clone(),
        };
        let mut grant = self.policies.grant(policy, &identity, &policy_request)?;
        grant.logins = task.logins.clone();
        grant.hosts = task.hosts.clone();
        let mut identity = identity;
        identity.replay_key = None;
        let token_use = caller.token_use();
        self.issue_with_token(
            &identity, &task, &grant, public_key, token_use, context, now,
        )
        .await
    }

    /// End a task: `Complete` (owner or admin) or `Revoke` (admin). All its certificates
    /// are revoked in the same transaction.
    pub async fn end_task(
        &self,
        caller: &Caller,
        task_id: &str,
        ending: Ending,
        reason: Option<String>,
        context: &RequestContext,
        now: OffsetDateTime,
    ) -> Result<TaskView, IssueError> {
        match self
            .try_end_task(caller, task_id, ending, reason, context, now)
            .await
        {
            Err(IssueError::StoreUnavailable(e)) => Err(IssueError::StoreUnavailable(e)),
            Err(error) => {
                let name = if matches!(error, IssueError::TokenReplayed(_)) {
                    event::TOKEN_REJECTED
                } else {
                    event::TASK_DENIED
                };
                self.audit_refusal(name, caller, task_id, &error, context)
                    .await?;
                Err(error)
            }
            ok => ok,
        }
    }

    async fn try_end_task(
        &self,
        caller: &Caller,
        task_id: &str,
        ending: Ending,
        reason: Option<String>,
        context: &RequestContext,
        now: OffsetDateTime,
    ) -> Result<TaskView, IssueError> {
        let (task, relation) = self.visible_task(caller, task_id).await?;
        if ending == Ending::Revoke && relation != Relation::Admin {
            return Err(IssueError::Forbidden {
                code: "admin_required",
                message: "revoking a task needs an identity matching a role = \"admin\" policy"
                    .into(),
            });
        }
        let now_unix = now.unix_timestamp();
        let state = task_state(&task, now_unix);
        if state != "active" {
            return Err(IssueError::TaskNotActive(state));
        }
        let (issuer, subject) = caller.subject_for_audit(Some(&task));
        let actor = Actor { issuer, subject };
        let fingerprints: Vec<(String, String)> = self
            .keyring
            .current()
            .keys()
            .iter()
            .map(|k| (k.id.clone(), k.fingerprint.clone()))
            .collect();
        let result = end_in_store(
            self.store.as_ref(),
            &task,
            ending,
            &actor,
            reason,
            context,
            &fingerprints,
            caller.token_use(),
            now_unix,
        )
        .await;
        match result {
            Ok(_) => {}
            Err(StoreError::TaskNotActive) => return Err(IssueError::TaskNotActive("ended")),
            Err(StoreError::TokenReused) => return Err(replayed(caller)),
            Err(e) => return Err(IssueError::StoreUnavailable(e)),
        }
        tracing::info!(task_id = %task.id, state = ending.state(), "task ended; its certificates are revoked");
        self.view_task(&task.id, now_unix).await
    }

    async fn view_task(&self, task_id: &str, now_unix: i64) -> Result<TaskView, IssueError> {
        let task = self
            .store
            .task(task_id)
            .await
            .map_err(IssueError::StoreUnavailable)?
            .ok_or(IssueError::TaskNotFound)?;
        let certificates = self
            .store
            .task_certificates(task_id)
            .await
            .map_err(IssueError::StoreUnavailable)?;
        Ok(TaskView {
            state: task_state(&task, now_unix),
            task,
            certificates,
        })
    }

    /// A task as its owner or an admin sees it. A refusal (unknown or someone else's
    /// task) is audited as `task.denied`; a successful read is not recorded.
    pub async fn task(
        &self,
        caller: &Caller,
        task_id: &str,
        context: &RequestContext,
        now: OffsetDateTime,
    ) -> Result<TaskView, IssueError> {
        let task = match self.visible_task(caller, task_id).await {
            Ok((task, _)) => task,
            Err(IssueError::StoreUnavailable(e)) => return Err(IssueError::StoreUnavailable(e)),
            Err(error) => {
                self.audit_refusal(event::TASK_DENIED, caller, task_id, &error, context)
                    .await?;
                return Err(error);
            }
        };
        self.view_task(&task.id, now.unix_timestamp()).await
    }

    /// Revoke one certificate (owner of its task or admin). A refusal (unknown or
    /// invisible certificate, already revoked) is audited as `task.denied` naming the serial
    /// and, when the certificate exists, its task.
    pub async fn revoke_certificate(
        &self,
        caller: &Caller,
        serial: &str,
        reason: Option<String>,
        context: &RequestContext,
        now: OffsetDateTime,
    ) -> Result<(), IssueError> {
        let error = match self
            .try_revoke_certificate(caller, serial, reason, context, now)
            .await
        {
            Ok(()) => return Ok(()),
            Err(IssueError::StoreUnavailable(e)) => return Err(IssueError::StoreUnavailable(e)),
            Err(error) => error,
        };
        let serial = serial.parse::<i64>().ok().filter(|s| *s > 0);
        let cert = match serial {
            Some(s) => self.store.certificate(s).await.ok().flatten(),
            None => None,
        };
        let task = match &cert {
            Some(c) => self.store.task(&c.task_id).await.ok().flatten(),
            None => None,
        };
        let (issuer, subject) = caller.subject_for_audit(task.as_ref());
        let mut entry = AuditEntry::new(event::TASK_DENIED, Outcome::Failure);
        entry.issuer = issuer;
        entry.subject = subject;
        entry.task_id = cert.as_ref().map(|c| c.task_id.clone());
        entry.serial = serial.map(|s| s.to_string());
        entry.key_fingerprint = cert.as_ref().map(|c| c.key_fingerprint.clone());
        entry.reason = Some(format!("{}: {error}", error.code()));
        entry.source_ip = context.source_ip.clone();
        entry.request_id = context.request_id.clone();
        self.store
            .append_audit(&entry)
            .await
            .map_err(IssueError::StoreUnavailable)?;
        Err(error)
    }

    async fn try_revoke_certificate(
        &self,
        caller: &Caller,
        serial: &str,
        reason: Option<String>,
        context: &RequestContext,
        now: OffsetDateTime,
    ) -> Result<(), IssueError> {
        let cert = match serial.parse::<i64>() {
            Ok(s) if s > 0 => self
                .store
                .certificate(s)
                .await
                .map_err(IssueError::StoreUnavailable)?,
            _ => None,
        };
        let Some(cert) = cert else {
            return Err(IssueError::CertificateNotFound);
        };
        let (task, _) = match self.visible_task(caller, &cert.task_id).await {
            Ok(found) => found,
            Err(IssueError::TaskNotFound) => return Err(IssueError::CertificateNotFound),
            Err(e) => return Err(e),
        };
        let (issuer, subject) = caller.subject_for_audit(Some(&task));
        let mut entry = AuditEntry::new(event::CERT_REVOKED, Outcome::Success);
        entry.issuer = issuer;
        entry.subject = subject;
        entry.policy = Some(task.policy.clone());
        entry.task_id = Some(task.id.clone());
        entry.serial = Some(cert.serial.to_string());
        entry.key_fingerprint = Some(cert.key_fingerprint.clone());
        entry.logins = task.logins.clone();
        entry.hosts = task.hosts.clone();
        entry.reason = reason;
        entry.source_ip = context.source_ip.clone();
        entry.request_id = context.request_id.clone();
        let revoked = self
            .store
            .revoke_certificate(cert.serial, now.unix_timestamp(), &entry)
            .await
            .map_err(IssueError::StoreUnavailable)?;
        if !revoked {
            return Err(IssueError::CertificateRevoked);
        }
        Ok(())
    }

    /// Verify a proof-of-possession header for a request to `method path` with `body`.
    pub async fn verify_possession(
        &self,
        possession: &Possession,
        method: &str,
        path: &str,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Caller, TokenError> {
        let bad = |why: &str| TokenError::Malformed(format!("proof of possession: {why}"));
        if !possession::is_fresh(possession.timestamp, now_unix) {
            return Err(bad("timestamp too far from the server's clock"));
        }
        let cert = Certificate::from_bytes(&possession.certificate)
            .map_err(|_| bad("certificate does not parse"))?;
        let trusted: Vec<ssh_key::Fingerprint> = self
            .keyring
            .current()
            .trusted_keys()
            .map(|k| k.public_key.fingerprint(HashAlg::Sha256))
            .collect();
        let now = u64::try_from(now_unix).unwrap_or(0);
        cert.validate_at(now, &trusted)
            .map_err(|_| bad("certificate is not valid now or not from this CA"))?;
        let task_id = cert
            .extensions()
            .get(profile::EXT_TASK)
            .filter(|t| profile::is_valid_task_id(t))
            .ok_or_else(|| bad("not a writ certificate"))?
            .clone();
        let serial = i64::try_from(cert.serial()).map_err(|_| bad("unknown certificate"))?;
        let record = self
            .store
            .certificate(serial)
            .await
            .map_err(|e| TokenError::IssuerUnavailable(e.to_string()))?;
        match record {
            Some(r) if r.task_id == task_id && r.revoked_at.is_none() => {}
            _ => return Err(bad("certificate is unknown or revoked")),
        }
        let signature = SshSig::from_pem(possession.signature_pem.as_bytes())
            .map_err(|_| bad("signature does not parse"))?;
        let message = possession::message(method, path, possession.timestamp, body);
        possession::verify_signature(cert.public_key(), &message, &signature)?;
        Ok(Caller::Possession {
            task_id,
            serial: cert.serial(),
            token_use: possession::once_only(cert.public_key(), &message, possession.timestamp),
        })
    }
}

/// Who ended a task, as audit records name them.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// Issuer name (or `local-admin` for `writ admin`).
    pub issuer: Option<String>,
    /// Subject (or the operator's login).
    pub subject: Option<String>,
}

/// End `task` in `store` with its audit records (`task.completed`/`task.revoked` and one
/// `cert.revoked` per live certificate), all in one transaction. Shared by the API and
/// `writ admin task revoke`. `ca_fingerprints` maps CA key ids to fingerprints.
#[allow(clippy::too_many_arguments)]
pub async fn end_in_store(
    store: &dyn Store,
    task: &TaskRecord,
    ending: Ending,
    actor: &Actor,
    reason: Option<String>,
    context: &RequestContext,
    ca_fingerprints: &[(String, String)],
    token_use: Option<TokenUse>,
    now_unix: i64,
) -> Result<Vec<CertificateRecord>, StoreError> {
    let base = |name: &str| {
        let mut entry = AuditEntry::new(name, Outcome::Success);
        entry.issuer = actor.issuer.clone();
        entry.subject = actor.subject.clone();
        entry.policy = Some(task.policy.clone());
        entry.task_id = Some(task.id.clone());
        entry.logins = task.logins.clone();
        entry.hosts = task.hosts.clone();
        entry.reason = reason.clone();
        entry.source_ip = context.source_ip.clone();
        entry.request_id = context.request_id.clone();
        entry
    };
    let build_audit = |live: &[CertificateRecord]| {
        let mut entries = vec![base(ending.event())];
        for cert in live {
            let mut revoked = base(event::CERT_REVOKED);
            revoked.serial = Some(cert.serial.to_string());
            revoked.key_fingerprint = Some(cert.key_fingerprint.clone());
            revoked.ca_fingerprint = ca_fingerprints
                .iter()
                .find(|(id, _)| *id == cert.ca_key_id)
                .map(|(_, f)| f.clone());
            entries.push(revoked);
        }
        entries
    };
    let end = TaskEnd {
        task_id: task.id.clone(),
        state: ending.state().to_owned(),
        reason: reason.clone(),
        now_unix,
        token_use,
    };
    store.end_task(&end, &build_audit).await
}

fn replayed(caller: &Caller) -> IssueError {
    let issuer = match caller {
        Caller::Token(identity) => identity.issuer_name.clone(),
        Caller::Possession { .. } => "proof-of-possession".into(),
    };
    IssueError::TokenReplayed(TokenError::Replayed { issuer })
}

//! What happens to a task after it is opened: more certificates for it (new key or
//! renewal), completion by its owner or an admin, revocation by an admin, revocation of a
//! single certificate, and inspection. Authorisation rules:
//! - the **owner** is the identity (issuer + subject) that opened the task, proven by a
//!   fresh workload token or by a proof-of-possession signature from one of the task's
//!   live certificates ([`super::possession`]);
//! - an **admin** is an identity matching a `role = "admin"` policy;
//! - callers who may not see a task get 404, as if it did not exist.
//!
//! A task's restrictions (extensions, `force-command`, `source-address`) are fixed when it
//! opens and stored with it: every later certificate carries at most those
//! ([`within_task`]), and the policy's forced values still apply. A task opened before
//! migration 0009 recorded none; its renewals are bounded by its policy as it is now, as
//! they were before.
//!
//! A certificate renewed by proof of possession records the certificate it was renewed
//! from. Revoking one certificate revokes every certificate renewed from it, directly or
//! through other renewals, in the same transaction: whoever held the revoked key could
//! have renewed. Once that revocation commits nothing more is renewed from it (the store
//! checks the proving certificate when it commits the renewal).
//!
//! Every refusal is returned as data ([`Refused`]) for the API layer to record; every
//! change commits with its audit records.

use ssh_key::{Certificate, HashAlg, SshSig};
use time::OffsetDateTime;

use super::possession::{self, Possession};
use super::{
    IssueError, Issued, Issuer, Refused, RequestContext, parse_public_key, validate_options,
};
use crate::audit::{AuditEntry, Outcome, event};
use crate::cidr::Cidr;
use crate::config::Role;
use crate::identity::{Identity, TokenError};
use crate::policy::Request;
use crate::profile;
use crate::store::{
    Announcement, CertificateRecord, Store, StoreError, TaskEnd, TaskRecord, TaskRestrictions,
    TaskState, TokenUse,
};

/// Why a proof of possession is refused when its certificate is unknown or revoked, at
/// verification or when the renewal it allowed commits.
pub(crate) const POSSESSION_REVOKED: &str =
    "proof of possession: certificate is unknown or revoked";

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
    fn state(self) -> TaskState {
        match self {
            Ending::Complete => TaskState::Completed,
            Ending::Revoke => TaskState::Revoked,
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
    match task.state {
        TaskState::Completed => "completed",
        TaskState::Revoked => "revoked",
        TaskState::Active if task.expires_at <= now_unix => "expired",
        TaskState::Active => "active",
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
                } else if self.is_admin(identity) {
                    Some(Relation::Admin)
                } else {
                    None
                }
            }
        }
    }

    /// Whether `identity` matches an admin policy.
    fn is_admin(&self, identity: &Identity) -> bool {
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

    /// A task `caller` owns (an admin is refused: only the owner speaks for what its
    /// agent does), or `TaskNotFound` / `Forbidden`.
    pub(super) async fn owned_task(
        &self,
        caller: &Caller,
        task_id: &str,
    ) -> Result<TaskRecord, IssueError> {
        match self.visible_task(caller, task_id).await? {
            (task, Relation::Owner) => Ok(task),
            (_, Relation::Admin) => Err(IssueError::Forbidden {
                code: "owner_required",
                message: "only the task's owner records what it runs".into(),
            }),
        }
    }

    /// `error`, refused to `caller` about `task_id`: a record of `event_name` naming the
    /// caller (for a proof of possession, the owner of the task and the proving serial)
    /// and the task.
    pub(super) async fn refusal(
        &self,
        event_name: &str,
        caller: &Caller,
        task_id: &str,
        error: IssueError,
    ) -> Refused {
        if matches!(error, IssueError::StoreUnavailable(_)) {
            return Refused::from(error);
        }
        let task = self.store.task(task_id).await.ok().flatten();
        let (issuer, subject) = caller.subject_for_audit(task.as_ref());
        let mut entry = AuditEntry::new(event_name, Outcome::Failure);
        entry.issuer = issuer;
        entry.subject = subject;
        entry.task_id = profile::is_valid_task_id(task_id).then(|| task_id.to_owned());
        if let Caller::Possession { serial, .. } = caller {
            entry.serial = Some(serial.to_string());
        }
        Refused::new(error, entry)
    }

    /// Another certificate for a live task (a new key, or a renewal), owner only.
    pub async fn renew(
        &self,
        caller: &Caller,
        task_id: &str,
        request: &NewCertificate,
        context: &RequestContext,
        announced: Announcement,
    ) -> Result<Issued, Refused> {
        match self
            .try_renew(caller, task_id, request, context, announced)
            .await
        {
            Err(error) => Err(self
                .refusal(event::CERT_DENIED, caller, task_id, error)
                .await),
            Ok(issued) => Ok(issued),
        }
    }

    async fn try_renew(
        &self,
        caller: &Caller,
        task_id: &str,
        request: &NewCertificate,
        context: &RequestContext,
        announced: Announcement,
    ) -> Result<Issued, IssueError> {
        let (task, relation) = self.visible_task(caller, task_id).await?;
        if relation != Relation::Owner {
            return Err(IssueError::Forbidden {
                code: "not_task_owner",
                message: "only the identity that opened the task may get certificates for it"
                    .into(),
            });
        }
        let state = task_state(&task, context.now.unix_timestamp());
        if state != "active" {
            return Err(IssueError::TaskNotActive(state));
        }
        let issued = self
            .store
            .task_certificates(&task.id)
            .await
            .map_err(IssueError::StoreUnavailable)?
            .len();
        if issued >= self.certificates_per_task {
            return Err(IssueError::Forbidden {
                code: "task_certificate_limit",
                message: format!(
                    "this task has had {issued} certificates, the most one task may get \
                     ([limits] certificates_per_task); open a new task"
                ),
            });
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
        // A task opened before migration 0009 recorded no restrictions: the most its
        // policy grants now, which is what its renewals got before.
        let restrictions = task
            .restrictions
            .clone()
            .unwrap_or_else(|| TaskRestrictions {
                extensions: policy.extensions.clone(),
                force_command: policy.force_command.clone(),
                source_address: policy.source_address.clone(),
            });
        let mut allowed = within_task(&restrictions, request)?;
        if request.extensions.is_none() {
            // Left out: the task's, less any its policy has stopped granting since.
            allowed.extensions.retain(|e| policy.extensions.contains(e));
        }
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
            extensions: Some(allowed.extensions),
            force_command: allowed.force_command,
            source_address: allowed.source_address,
        };
        let mut grant = self.policies.grant(policy, &identity, &policy_request)?;
        grant.logins = task.logins.clone();
        grant.hosts = task.hosts.clone();
        let mut identity = identity;
        identity.replay_key = None;
        let token_use = caller.token_use();
        let renewed_from = match caller {
            Caller::Possession { serial, .. } => Some(
                i64::try_from(*serial)
                    .map_err(|_| IssueError::TokenReplayed(possession_revoked()))?,
            ),
            Caller::Token(_) => None,
        };
        self.issue_with_token(
            &identity,
            &task,
            &grant,
            public_key,
            token_use,
            renewed_from,
            context,
            announced,
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
    ) -> Result<TaskView, Refused> {
        match self
            .try_end_task(caller, task_id, ending, reason, context)
            .await
        {
            Err(error) => Err(self
                .refusal(event::TASK_DENIED, caller, task_id, error)
                .await),
            Ok(view) => Ok(view),
        }
    }

    async fn try_end_task(
        &self,
        caller: &Caller,
        task_id: &str,
        ending: Ending,
        reason: Option<String>,
        context: &RequestContext,
    ) -> Result<TaskView, IssueError> {
        let now = context.now;
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
            now,
        )
        .await;
        match result {
            Ok(_) => {}
            Err(StoreError::TaskNotActive) => return Err(IssueError::TaskNotActive("ended")),
            Err(StoreError::TokenReused) => return Err(replayed(caller)),
            Err(e) => return Err(IssueError::StoreUnavailable(e)),
        }
        tracing::info!(task_id = %task.id, state = %ending.state(), "task ended; its certificates are revoked");
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
    /// task) is a `task.denied` record; a successful read is not recorded.
    pub async fn task(
        &self,
        caller: &Caller,
        task_id: &str,
        now: OffsetDateTime,
    ) -> Result<TaskView, Refused> {
        let task = match self.visible_task(caller, task_id).await {
            Ok((task, _)) => task,
            Err(error) => {
                return Err(self
                    .refusal(event::TASK_DENIED, caller, task_id, error)
                    .await);
            }
        };
        self.view_task(&task.id, now.unix_timestamp())
            .await
            .map_err(Refused::from)
    }

    /// Revoke one certificate (owner of its task or admin). A refusal (unknown or
    /// invisible certificate, already revoked) is a `task.denied` record naming the serial
    /// and, when the certificate exists, its task.
    pub async fn revoke_certificate(
        &self,
        caller: &Caller,
        serial: &str,
        reason: Option<String>,
        context: &RequestContext,
    ) -> Result<(), Refused> {
        let error = match self
            .try_revoke_certificate(caller, serial, reason, context)
            .await
        {
            Ok(()) => return Ok(()),
            Err(error @ IssueError::StoreUnavailable(_)) => return Err(Refused::from(error)),
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
        Err(Refused::new(error, entry))
    }

    async fn try_revoke_certificate(
        &self,
        caller: &Caller,
        serial: &str,
        reason: Option<String>,
        context: &RequestContext,
    ) -> Result<(), IssueError> {
        let now = context.now;
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
        entry.logins = task.logins.clone();
        entry.hosts = task.hosts.clone();
        context.stamp(&mut entry);
        // One record per certificate: the one asked for with the caller's reason, each
        // renewal of it naming its parent, then the reason.
        let asked = cert.serial;
        let why = reason.clone();
        let build_audit = move |revoked: &[CertificateRecord]| {
            revoked
                .iter()
                .map(|c| {
                    let mut record = entry.clone();
                    record.serial = Some(c.serial.to_string());
                    record.key_fingerprint = Some(c.key_fingerprint.clone());
                    record.reason = match (c.serial == asked, c.renewed_from, &why) {
                        (false, Some(parent), Some(why)) => {
                            Some(format!("renewed_from: {parent} (revoked); {why}"))
                        }
                        (false, Some(parent), None) => {
                            Some(format!("renewed_from: {parent} (revoked)"))
                        }
                        _ => why.clone(),
                    };
                    record
                })
                .collect()
        };
        let revoked = self
            .store
            .revoke_certificate(cert.serial, now, Box::new(build_audit))
            .await
            .map_err(IssueError::StoreUnavailable)?;
        if revoked.is_empty() {
            return Err(IssueError::CertificateRevoked);
        }
        if revoked.len() > 1 {
            tracing::info!(
                task_id = %task.id, serial = cert.serial, renewals = revoked.len() - 1,
                "certificate revoked with the certificates renewed from it"
            );
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
            _ => return Err(possession_revoked()),
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
    now: OffsetDateTime,
) -> Result<Vec<CertificateRecord>, StoreError> {
    let (actor, task, reason, context) =
        (actor.clone(), task.clone(), reason.clone(), context.clone());
    let ca_fingerprints = ca_fingerprints.to_vec();
    let end = TaskEnd {
        task_id: task.id.clone(),
        state: ending.state(),
        reason: reason.clone(),
        now,
        token_use,
    };
    let base = move |name: &str| {
        let mut entry = AuditEntry::new(name, Outcome::Success);
        entry.issuer = actor.issuer.clone();
        entry.subject = actor.subject.clone();
        entry.policy = Some(task.policy.clone());
        entry.task_id = Some(task.id.clone());
        entry.logins = task.logins.clone();
        entry.hosts = task.hosts.clone();
        entry.reason = reason.clone();
        context.stamp(&mut entry);
        entry
    };
    let build_audit = move |live: &[CertificateRecord]| {
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
    store.end_task(&end, Box::new(build_audit)).await
}

fn possession_revoked() -> TokenError {
    TokenError::Malformed(POSSESSION_REVOKED.into())
}

/// What a renewal of a task restricted to `task` may carry for `request`: at most the
/// task's. What the request leaves out is the task's; what it names must be inside the
/// task's, or it is refused (403) naming the option: each extension one the task has;
/// the task's forced command, if it has one, exactly (a task without one may be narrowed
/// to one); each `source-address` block inside one of the task's blocks, if it has any.
/// The policy then checks the result like any request, so its forced values still apply.
fn within_task(
    task: &TaskRestrictions,
    request: &NewCertificate,
) -> Result<TaskRestrictions, IssueError> {
    let wider = |code: &'static str, what: String| IssueError::Forbidden {
        code,
        message: format!("{what}; a renewal may narrow its task's options, never widen them"),
    };
    let extensions = match &request.extensions {
        None => task.extensions.clone(),
        Some(asked) => {
            if let Some(extension) = asked.iter().find(|e| !task.extensions.contains(e)) {
                return Err(wider(
                    "extension_not_in_task",
                    format!("the task does not carry extension {extension:?}"),
                ));
            }
            asked.clone()
        }
    };
    let force_command = match (&task.force_command, &request.force_command) {
        (Some(forced), Some(asked)) if forced != asked => {
            return Err(wider(
                "force_command_not_in_task",
                "the task forces another command".into(),
            ));
        }
        (Some(forced), _) => Some(forced.clone()),
        (None, asked) => asked.clone(),
    };
    let source_address = match (&task.source_address, &request.source_address) {
        (Some(allowed), Some(asked)) => {
            let allowed: Vec<Cidr> = allowed.iter().filter_map(|a| Cidr::parse(a)).collect();
            if let Some(outside) = asked.iter().find(|address| {
                !Cidr::parse(address).is_some_and(|c| allowed.iter().any(|a| a.contains(&c)))
            }) {
                return Err(wider(
                    "source_address_not_in_task",
                    format!("source address {outside:?} is outside the task's"),
                ));
            }
            Some(asked.clone())
        }
        (Some(allowed), None) => Some(allowed.clone()),
        (None, asked) => asked.clone(),
    };
    Ok(TaskRestrictions {
        extensions,
        force_command,
        source_address,
    })
}

fn replayed(caller: &Caller) -> IssueError {
    let issuer = match caller {
        Caller::Token(identity) => identity.issuer_name.clone(),
        Caller::Possession { .. } => "proof-of-possession".into(),
    };
    IssueError::TokenReplayed(TokenError::Replayed { issuer })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskRestrictions {
        TaskRestrictions {
            extensions: vec!["permit-pty".into()],
            force_command: Some("/usr/bin/backup".into()),
            source_address: Some(vec!["10.1.0.0/16".into(), "192.168.7.7".into()]),
        }
    }

    fn asking(
        extensions: Option<&[&str]>,
        force_command: Option<&str>,
        source_address: Option<&[&str]>,
    ) -> NewCertificate {
        let list = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
        NewCertificate {
            extensions: extensions.map(list),
            force_command: force_command.map(str::to_owned),
            source_address: source_address.map(list),
            ..NewCertificate::default()
        }
    }

    fn refusal(request: &NewCertificate) -> &'static str {
        match within_task(&task(), request) {
            Err(e) => e.code(),
            Ok(granted) => panic!("{request:?} was granted {granted:?}"),
        }
    }

    #[test]
    fn a_renewal_gets_the_tasks_restrictions_when_it_names_none() {
        assert_eq!(
            within_task(&task(), &asking(None, None, None)).expect("same"),
            task()
        );
    }

    #[test]
    fn a_renewal_may_narrow_its_tasks_restrictions() {
        let narrower = within_task(
            &task(),
            &asking(Some(&[]), Some("/usr/bin/backup"), Some(&["10.1.2.0/24"])),
        )
        .expect("narrower");
        assert_eq!(
            narrower,
            TaskRestrictions {
                extensions: vec![],
                force_command: Some("/usr/bin/backup".into()),
                source_address: Some(vec!["10.1.2.0/24".into()]),
            }
        );
        // A task without a command or blocks may be narrowed to one.
        let open = TaskRestrictions::default();
        let request = asking(None, Some("/bin/true"), Some(&["10.0.0.1"]));
        let narrowed = within_task(&open, &request).expect("narrowed");
        assert_eq!(narrowed.force_command.as_deref(), Some("/bin/true"));
        assert_eq!(narrowed.source_address, Some(vec!["10.0.0.1".to_owned()]));
        assert!(narrowed.extensions.is_empty());
    }

    #[test]
    fn a_renewal_never_widens_its_tasks_restrictions() {
        assert_eq!(
            refusal(&asking(
                Some(&["permit-pty", "permit-port-forwarding"]),
                None,
                None
            )),
            "extension_not_in_task"
        );
        assert_eq!(
            refusal(&asking(None, Some("/bin/sh"), None)),
            "force_command_not_in_task"
        );
        for blocks in [
            &["10.0.0.0/8"][..],
            &["10.1.0.0/16", "10.2.0.1"],
            &["192.168.7.0/24"],
        ] {
            assert_eq!(
                refusal(&asking(None, None, Some(blocks))),
                "source_address_not_in_task",
                "{blocks:?}"
            );
        }
        let none = TaskRestrictions::default();
        let pty = asking(Some(&["permit-pty"]), None, None);
        assert_eq!(
            within_task(&none, &pty).map_err(|e| e.code()).err(),
            Some("extension_not_in_task"),
            "a task without extensions gets none"
        );
    }
}

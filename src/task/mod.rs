//! Tasks and issuance: turns a verified identity and a task request into a signed,
//! recorded certificate. Order is fixed: validate input → policy → sign → commit task,
//! certificate and audit records in one transaction → only then hand out the certificate.
//! A refusal changes nothing; it is returned as data ([`Refused`]: the error and the
//! record that describes it) for the API layer to record before it answers.
//!
//! [`lifecycle`] adds what happens to a task afterwards (more certificates, completion,
//! revocation, inspection) and [`possession`] the proof-of-possession signatures agents
//! may use instead of a fresh token; [`authorize`] answers hosts' online checks;
//! [`host_certificates`] issues SSH host certificates to hosts.

pub mod authorize;
pub mod host_certificates;
pub mod lifecycle;
pub mod possession;
pub mod runs;
pub mod subject_key;

use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use ssh_key::{HashAlg, PublicKey};
use time::OffsetDateTime;

use crate::audit::{self, AuditEntry, Outcome, event};
use crate::authority::serial::new_serial;
use crate::authority::{CertificateSpec, LiveKeyring, sign_certificate};
use crate::cidr::Cidr;
use crate::config::{CaConfig, KNOWN_EXTENSIONS};
use crate::duration::secs;
use crate::identity::{Identity, TokenError};
use crate::metrics::Metrics;
use crate::policy::{Grant, Policies, PolicyError, Request};
use crate::profile;
use crate::store::{
    Announcement, CertificateRecord, Issuance, Store, StoreError, TaskRecord, TaskRestrictions,
    TaskState, TokenUse,
};

/// Most logins one task may name.
pub const MAX_LOGINS: usize = 16;
/// Most host patterns one task may name.
pub const MAX_HOSTS: usize = 32;
/// Longest task purpose, in bytes.
pub const MAX_PURPOSE_BYTES: usize = 512;
/// Smallest accepted RSA key.
pub use subject_key::MIN_RSA_BITS;
/// Tries to find an unused serial before giving up (two serials collide only within one
/// millisecond, 2^-21 per pair: `authority::serial`).
pub(crate) const SERIAL_ATTEMPTS: usize = 4;

/// A request for a new task and its first certificate (already decoded from JSON).
#[derive(Debug, Clone)]
pub struct NewTask {
    /// OpenSSH public key line.
    pub public_key: String,
    /// Logins.
    pub logins: Vec<String>,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Task lifetime in seconds.
    pub task_ttl_seconds: Option<u64>,
    /// Free text.
    pub purpose: String,
    /// Certificate lifetime in seconds.
    pub cert_ttl_seconds: Option<u64>,
    /// Extensions asked for (default: all the policy grants).
    pub extensions: Option<Vec<String>>,
    /// `force-command` asked for.
    pub force_command: Option<String>,
    /// `source-address` blocks asked for.
    pub source_address: Option<Vec<String>>,
}

/// Who is asking and when, for audit: the one time a request goes by, read once when it
/// arrives and passed down to everything it decides and records.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Client IP.
    pub source_ip: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// The request's time.
    pub now: OffsetDateTime,
}

impl RequestContext {
    /// A request made on this machine (`writ admin`), at `now`.
    pub fn local(now: OffsetDateTime) -> RequestContext {
        RequestContext {
            source_ip: None,
            request_id: None,
            now,
        }
    }

    /// The client's address, when the request came over the network.
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.source_ip.as_deref()?.parse().ok()
    }

    /// Stamp `entry` with this request's client address and id: every record a request
    /// leaves, refusal or change, carries them, so its records can be tied together.
    pub fn stamp(&self, entry: &mut AuditEntry) {
        entry.source_ip = self.source_ip.clone();
        entry.request_id = self.request_id.clone();
    }
}

/// A certificate that was signed and recorded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Task id.
    pub task_id: String,
    /// Serial.
    pub serial: u64,
    /// `ssh-…-cert-v01@openssh.com AAAA…`
    pub certificate: String,
    /// Principals.
    pub principals: Vec<String>,
    /// Unix seconds.
    pub valid_after: i64,
    /// Unix seconds.
    pub valid_before: i64,
    /// Unix seconds.
    pub task_expires_at: i64,
    /// CA fingerprint.
    pub ca_fingerprint: String,
}

/// Why issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Malformed request (400).
    #[error("{message}")]
    BadRequest {
        /// Code.
        code: &'static str,
        /// Message.
        message: String,
    },
    /// Well-formed but unacceptable, e.g. a weak key (422).
    #[error("{message}")]
    Unacceptable {
        /// Code.
        code: &'static str,
        /// Message.
        message: String,
    },
    /// Policy refused (403).
    #[error(transparent)]
    Denied(#[from] PolicyError),
    /// The token or proof of possession was refused when the issuance committed: the token
    /// was already used, or the proving certificate was revoked meanwhile (401).
    #[error(transparent)]
    TokenReplayed(TokenError),
    /// No such task, or not visible to the caller (404).
    #[error("no such task")]
    TaskNotFound,
    /// No such certificate, or not visible to the caller (404).
    #[error("no such certificate")]
    CertificateNotFound,
    /// The certificate is already revoked (409).
    #[error("the certificate is already revoked")]
    CertificateRevoked,
    /// The task is completed, revoked or expired (409).
    #[error("task is {0}")]
    TaskNotActive(&'static str),
    /// The caller may not do this (403).
    #[error("{message}")]
    Forbidden {
        /// Code.
        code: &'static str,
        /// Message.
        message: String,
    },
    /// Storage failed: nothing was issued (503).
    #[error("the audit store is unavailable; no certificate was issued")]
    StoreUnavailable(#[source] StoreError),
    /// Signing failed (500).
    #[error("signing failed")]
    Signing(String),
}

/// A task request that failed, as data: the error and, when it is a refusal, the audit
/// record that describes it (event, who asked, what about), still without its reason and
/// the request's stamps. The task layer appends no refusal record itself: the API layer
/// records every refused request in one place (`api::refusal`), with the error's
/// `"{code}: {message}"` as the reason, and answers only once the record is written.
#[derive(Debug)]
pub struct Refused {
    /// What went wrong.
    pub error: IssueError,
    /// The refusal's record; `None` when the store failed, which is no refusal and leaves
    /// nothing to record (nowhere to record it either).
    pub record: Option<Box<AuditEntry>>,
}

impl Refused {
    /// `error`, recorded as `record` unless the store failed. A replayed token or proof of
    /// possession is recorded as `token.rejected`, whatever the request was for.
    pub(crate) fn new(error: IssueError, mut record: AuditEntry) -> Refused {
        match error {
            IssueError::StoreUnavailable(_) => Refused::from(error),
            _ => {
                if matches!(error, IssueError::TokenReplayed(_)) {
                    record.event = event::TOKEN_REJECTED.to_owned();
                }
                Refused {
                    error,
                    record: Some(Box::new(record)),
                }
            }
        }
    }
}

/// A failure with nothing to record.
impl From<IssueError> for Refused {
    fn from(error: IssueError) -> Refused {
        Refused {
            error,
            record: None,
        }
    }
}

impl IssueError {
    fn bad(code: &'static str, message: impl Into<String>) -> IssueError {
        IssueError::BadRequest {
            code,
            message: message.into(),
        }
    }
    fn unacceptable(code: &'static str, message: impl Into<String>) -> IssueError {
        IssueError::Unacceptable {
            code,
            message: message.into(),
        }
    }

    /// Reason code for audit records.
    pub fn code(&self) -> &'static str {
        match self {
            IssueError::BadRequest { code, .. } | IssueError::Unacceptable { code, .. } => code,
            IssueError::Denied(e) => e.code(),
            IssueError::TokenReplayed(e) => e.reason_code(),
            IssueError::TaskNotFound => "task_not_found",
            IssueError::CertificateNotFound => "certificate_not_found",
            IssueError::CertificateRevoked => "certificate_revoked",
            IssueError::TaskNotActive(_) => "task_not_active",
            IssueError::Forbidden { code, .. } => code,
            IssueError::StoreUnavailable(_) => "audit_unavailable",
            IssueError::Signing(_) => "signing_failed",
        }
    }
}

/// Issues certificates for tasks.
pub struct Issuer {
    store: Arc<dyn Store>,
    keyring: Arc<LiveKeyring>,
    policies: Policies,
    limits: CaConfig,
    /// Certificates one task may get in all (`[limits] certificates_per_task`).
    certificates_per_task: usize,
    metrics: Arc<Metrics>,
}

impl Issuer {
    /// Build the issuance service; every certificate it issues counts in `metrics`
    /// (`writ_certificates_issued_total`).
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<LiveKeyring>,
        policies: Policies,
        limits: CaConfig,
        metrics: Arc<Metrics>,
    ) -> Issuer {
        Issuer {
            store,
            keyring,
            policies,
            limits,
            certificates_per_task: usize::MAX,
            metrics,
        }
    }

    /// Refuse a task's certificates beyond `cap` in all (its first included).
    pub fn cap_certificates_per_task(mut self, cap: u32) -> Issuer {
        self.certificates_per_task = usize::try_from(cap).unwrap_or(usize::MAX);
        self
    }

    /// Whether `identity` matches a `role = "host"` policy whose `hosts` cover `host`
    /// (lowercase): what lets a host's workload identity speak for that host name.
    pub fn speaks_for_host(&self, identity: &Identity, host: &str) -> bool {
        self.policies
            .matching(identity, crate::config::Role::Host)
            .any(|p| {
                crate::policy::host_patterns(p, identity)
                    .iter()
                    .any(|pattern| crate::glob::matches(pattern, host))
            })
    }

    /// The store, for audit records of requests refused before issuance.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A request that may issue a certificate says so as soon as it arrives, before its
    /// token is even checked: the store may then commit it together with others on their
    /// way ([`Store::announce_issuance`]). Hand it to [`Issuer::open_task`] or
    /// [`Issuer::renew`].
    pub fn announce_issuance(&self) -> Announcement {
        self.store.announce_issuance()
    }

    /// Open a task for `identity` and issue its first certificate, at the request's time.
    /// A refusal is `cert.denied` naming the identity and the logins and hosts asked for.
    pub async fn open_task(
        &self,
        identity: &Identity,
        request: &NewTask,
        context: &RequestContext,
        announced: Announcement,
    ) -> Result<Issued, Refused> {
        self.try_open_task(identity, request, context, announced)
            .await
            .map_err(|error| {
                let mut denied = AuditEntry::new(event::CERT_DENIED, Outcome::Failure);
                denied.issuer = Some(identity.issuer_name.clone());
                denied.subject = Some(identity.subject.clone());
                denied.logins = request.logins.iter().take(MAX_LOGINS).cloned().collect();
                denied.hosts = request.hosts.iter().take(MAX_HOSTS).cloned().collect();
                Refused::new(error, denied)
            })
    }

    async fn try_open_task(
        &self,
        identity: &Identity,
        request: &NewTask,
        context: &RequestContext,
        announced: Announcement,
    ) -> Result<Issued, IssueError> {
        let public_key = parse_public_key(&request.public_key)?;
        validate_task_shape(request)?;
        let policy_request = Request {
            logins: request.logins.clone(),
            hosts: request.hosts.clone(),
            task_ttl: request.task_ttl_seconds.map(Duration::from_secs),
            cert_ttl: request.cert_ttl_seconds.map(Duration::from_secs),
            extensions: request.extensions.clone(),
            force_command: request.force_command.clone(),
            source_address: request.source_address.clone(),
        };
        let grant = self.policies.evaluate(identity, &policy_request)?;

        let now_unix = context.now.unix_timestamp();
        let task_id = new_task_id(context.now, &mut OsRng);
        let task = TaskRecord {
            id: task_id.clone(),
            issuer: identity.issuer_name.clone(),
            subject: identity.subject.clone(),
            policy: grant.policy.clone(),
            logins: grant.logins.clone(),
            hosts: grant.hosts.clone(),
            purpose: request.purpose.clone(),
            state: TaskState::Active,
            created_at: now_unix,
            expires_at: now_unix.saturating_add(secs(grant.task_ttl)),
            // Every later certificate of the task carries at most these (`lifecycle::within_task`).
            restrictions: Some(TaskRestrictions {
                extensions: grant.extensions.clone(),
                force_command: grant.force_command.clone(),
                source_address: grant.source_address.clone(),
            }),
        };
        let token_use = identity.replay_key.as_ref().map(|k| TokenUse {
            issuer: k.issuer.clone(),
            token_hash: k.token_hash.clone(),
            expires_at: k.expires_at,
        });
        self.issue(
            identity, &task, true, &grant, public_key, token_use, None, context, announced,
        )
        .await
    }

    /// Another certificate for an existing task, consuming `token_use`; `renewed_from` is
    /// the serial of the certificate whose proof of possession allowed it, if one did.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn issue_with_token(
        &self,
        identity: &Identity,
        task: &TaskRecord,
        grant: &Grant,
        public_key: PublicKey,
        token_use: Option<TokenUse>,
        renewed_from: Option<i64>,
        context: &RequestContext,
        announced: Announcement,
    ) -> Result<Issued, IssueError> {
        self.issue(
            identity,
            task,
            false,
            grant,
            public_key,
            token_use,
            renewed_from,
            context,
            announced,
        )
        .await
    }

    /// Sign and record one certificate for `task` (creating the task when `create`), at
    /// the request's time.
    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        identity: &Identity,
        task: &TaskRecord,
        create: bool,
        grant: &Grant,
        public_key: PublicKey,
        token_use: Option<TokenUse>,
        renewed_from: Option<i64>,
        context: &RequestContext,
        mut announced: Announcement,
    ) -> Result<Issued, IssueError> {
        let new_task = create.then(|| task.clone());
        let now = context.now;
        let now_unix = now.unix_timestamp();
        let valid_after = now_unix.saturating_sub(secs(self.limits.clock_skew));
        let valid_before = now_unix
            .saturating_add(secs(grant.cert_ttl))
            .min(task.expires_at);
        // One snapshot for the whole issuance: the signer and the key id recorded with
        // the certificate must agree even if the keyring is reloaded meanwhile.
        let keyring = self.keyring.current();
        // Never certify one of the CA's own keys, in any state (next, active, retiring,
        // retired, revoked): no agent holds its private half, and nothing the CA key signs
        // (certificates, revocation feeds) may ever count as a signature by a task's key.
        if keyring
            .keys()
            .iter()
            .any(|k| k.public_key.key_data() == public_key.key_data())
        {
            return Err(IssueError::unacceptable(
                "ca_key_as_subject",
                "public_key is one of this CA's own keys; certify a key of the agent's own",
            ));
        }
        let signer = keyring.signer();
        let key_fingerprint = public_key.fingerprint(HashAlg::Sha256).to_string();
        let principals: Vec<String> = grant
            .logins
            .iter()
            .map(|l| profile::principal(&task.id, l))
            .collect();

        for _ in 0..SERIAL_ATTEMPTS {
            let serial = new_serial(now, &mut OsRng);
            let spec = CertificateSpec {
                public_key: public_key.clone(),
                serial,
                key_id: key_id(&task.id, serial, &identity.subject),
                task_id: task.id.clone(),
                logins: grant.logins.clone(),
                hosts: grant.hosts.clone(),
                valid_after: u64::try_from(valid_after).unwrap_or(0),
                valid_before: u64::try_from(valid_before).unwrap_or(0),
                extensions: grant.extensions.clone(),
                force_command: grant.force_command.clone(),
                source_address: grant.source_address.clone(),
                task_expires_at: u64::try_from(task.expires_at).ok(),
            };
            let certificate = sign_certificate(&spec, signer.as_ref(), &mut OsRng)
                .map_err(|e| IssueError::Signing(e.to_string()))?;
            let certificate_text = certificate
                .to_openssh()
                .map_err(|e| IssueError::Signing(e.to_string()))?;

            let base = |name: &str| {
                let mut entry = AuditEntry::new(name, Outcome::Success);
                entry.issuer = Some(identity.issuer_name.clone());
                entry.subject = Some(identity.subject.clone());
                entry.policy = Some(grant.policy.clone());
                entry.task_id = Some(task.id.clone());
                entry.logins = grant.logins.clone();
                entry.hosts = grant.hosts.clone();
                context.stamp(&mut entry);
                entry
            };
            let mut audit = Vec::with_capacity(2);
            if new_task.is_some() {
                let mut created = base(event::TASK_CREATED);
                created.purpose = (!task.purpose.is_empty()).then(|| task.purpose.clone());
                audit.push(created);
            }
            let mut issued = base(event::CERT_ISSUED);
            issued.serial = Some(serial.to_string());
            // Names the parent, as the `cert.revoked` records of a cascade do.
            issued.reason = renewed_from.map(|parent| format!("renewed_from: {parent}"));
            issued.key_fingerprint = Some(key_fingerprint.clone());
            issued.ca_fingerprint = Some(signer.fingerprint().to_owned());
            audit.push(issued);

            let record = Issuance {
                new_task: new_task.clone(),
                certificate: CertificateRecord {
                    serial: i64::try_from(serial)
                        .map_err(|e| IssueError::Signing(e.to_string()))?,
                    task_id: task.id.clone(),
                    ca_key_id: keyring.active_id().to_owned(),
                    key_fingerprint: key_fingerprint.clone(),
                    principals: principals.clone(),
                    valid_after,
                    valid_before,
                    issued_at: now_unix,
                    revoked_at: None,
                    renewed_from,
                },
                audit,
                token_use: token_use.clone(),
                at: now,
            };
            // Handed over now: the store need not wait for it any more.
            announced.withdraw();
            match self.store.record_issuance(record).await {
                Ok(()) => {
                    self.metrics.certificate_issued();
                    tracing::info!(
                        task_id = %task.id, serial, subject = ?identity.subject,
                        policy = %grant.policy, "certificate issued"
                    );
                    return Ok(Issued {
                        task_id: task.id.clone(),
                        serial,
                        certificate: certificate_text,
                        principals,
                        valid_after,
                        valid_before,
                        task_expires_at: task.expires_at,
                        ca_fingerprint: signer.fingerprint().to_owned(),
                    });
                }
                Err(StoreError::TaskNotActive) => {
                    return Err(IssueError::TaskNotActive("ended"));
                }
                Err(StoreError::TokenReused) => {
                    return Err(IssueError::TokenReplayed(TokenError::Replayed {
                        issuer: identity.issuer_name.clone(),
                    }));
                }
                Err(StoreError::RenewedFromRevoked) => {
                    // The same answer as a proof that arrives after the revocation.
                    return Err(IssueError::TokenReplayed(TokenError::Malformed(
                        lifecycle::POSSESSION_REVOKED.into(),
                    )));
                }
                Err(StoreError::Conflict(what)) => {
                    // Expected now and then under load (authority::serial); harmless.
                    tracing::debug!(serial, conflict = %what, "serial or task id collision; retrying");
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not record issuance; no certificate returned");
                    return Err(IssueError::StoreUnavailable(e));
                }
            }
        }
        Err(IssueError::StoreUnavailable(StoreError::Conflict(
            "no free serial".into(),
        )))
    }
}

/// A fresh task id, 32 lowercase hex characters: the creation time in milliseconds (48
/// bits) followed by 80 random bits, like a UUIDv7. Unguessable all the same, and
/// time-ordered, so every index keyed by task id (tasks, certificates, audit records)
/// grows at its right edge instead of dirtying a random page per issuance. `now` and the
/// random source are the caller's (tests pin both).
pub fn new_task_id(now: OffsetDateTime, rng: &mut impl RngCore) -> String {
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    rng.fill_bytes(&mut bytes[6..]);
    audit::hex(&bytes)
}

/// The key id sshd logs: task, serial and a sanitised subject.
fn key_id(task_id: &str, serial: u64, subject: &str) -> String {
    let subject: String = subject
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("writ task={task_id} serial={serial} sub={subject}")
}

/// Parse the submitted key and refuse unsupported, weak or invalid keys
/// ([`subject_key::check`]).
pub(crate) fn parse_public_key(text: &str) -> Result<PublicKey, IssueError> {
    if text.len() > 16 * 1024 {
        return Err(IssueError::bad(
            "invalid_public_key",
            "public_key is too long",
        ));
    }
    let key = PublicKey::from_openssh(text.trim()).map_err(|_| {
        IssueError::bad(
            "invalid_public_key",
            "public_key is not an OpenSSH public key line",
        )
    })?;
    subject_key::check(key.key_data())
        .map_err(|problem| IssueError::unacceptable(problem.code(), problem.to_string()))?;
    Ok(key)
}

fn validate_task_shape(request: &NewTask) -> Result<(), IssueError> {
    if request.logins.is_empty() {
        return Err(IssueError::bad(
            "invalid_task",
            "task.logins must name at least one login",
        ));
    }
    if request.logins.len() > MAX_LOGINS {
        return Err(IssueError::bad(
            "invalid_task",
            format!("task.logins may name at most {MAX_LOGINS} logins"),
        ));
    }
    if let Some(login) = request.logins.iter().find(|l| !profile::is_valid_login(l)) {
        return Err(IssueError::bad(
            "invalid_login",
            format!(
                "{:?} is not a valid login name (^[a-z_][a-z0-9_-]{{0,31}}$)",
                truncate(login)
            ),
        ));
    }
    if request.hosts.is_empty() {
        return Err(IssueError::bad(
            "invalid_task",
            "task.hosts must name at least one host pattern",
        ));
    }
    if request.hosts.len() > MAX_HOSTS {
        return Err(IssueError::bad(
            "invalid_task",
            format!("task.hosts may name at most {MAX_HOSTS} patterns"),
        ));
    }
    if let Some(host) = request
        .hosts
        .iter()
        .find(|h| !profile::is_valid_host_pattern(h))
    {
        return Err(IssueError::bad(
            "invalid_host",
            format!(
                "{:?} is not a host pattern (lowercase DNS characters and '*')",
                truncate(host)
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if !request.logins.iter().all(|l| seen.insert(l)) {
        return Err(IssueError::bad(
            "invalid_task",
            "task.logins lists a login twice",
        ));
    }
    if request.purpose.len() > MAX_PURPOSE_BYTES
        || request.purpose.chars().any(crate::text::is_unsafe_char)
    {
        return Err(IssueError::bad(
            "invalid_task",
            format!(
                "task.purpose must be at most {MAX_PURPOSE_BYTES} bytes without control, \
                 line-separator or bidirectional-formatting characters"
            ),
        ));
    }
    validate_options(
        &request.extensions,
        &request.force_command,
        &request.source_address,
        request.cert_ttl_seconds,
    )?;
    if request.task_ttl_seconds == Some(0) {
        return Err(IssueError::bad(
            "invalid_ttl",
            "task.ttl_seconds must be at least 1",
        ));
    }
    Ok(())
}

/// Check certificate options and lifetime in a request (shape only; policy decides the rest).
fn validate_options(
    extensions: &Option<Vec<String>>,
    force_command: &Option<String>,
    source_address: &Option<Vec<String>>,
    cert_ttl_seconds: Option<u64>,
) -> Result<(), IssueError> {
    if let Some(extensions) = extensions
        && let Some(bad) = extensions
            .iter()
            .find(|e| !KNOWN_EXTENSIONS.contains(&e.as_str()))
    {
        return Err(IssueError::bad(
            "invalid_extension",
            format!(
                "{:?} is not one of {}",
                truncate(bad),
                KNOWN_EXTENSIONS.join(", ")
            ),
        ));
    }
    if let Some(command) = force_command
        && (command.is_empty() || command.len() > 1024 || command.chars().any(char::is_control))
    {
        return Err(IssueError::bad(
            "invalid_force_command",
            "force_command must be 1 to 1024 bytes without control characters",
        ));
    }
    if let Some(addresses) = source_address
        && (addresses.is_empty()
            || addresses.len() > 32
            || addresses.iter().any(|a| Cidr::parse(a).is_none()))
    {
        return Err(IssueError::bad(
            "invalid_source_address",
            "source_address must list 1 to 32 addresses or CIDR blocks such as 10.0.0.0/8",
        ));
    }
    if cert_ttl_seconds == Some(0) {
        return Err(IssueError::bad(
            "invalid_ttl",
            "ttl_seconds must be at least 1",
        ));
    }
    Ok(())
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_hex_unique_and_ordered_by_creation_time() {
        let created = time::macros::datetime!(2026-12-02 06:00:00.123 UTC);
        let first = new_task_id(created, &mut OsRng);
        let later = created + Duration::from_millis(1);
        let ids: Vec<String> = (0..1000).map(|_| new_task_id(later, &mut OsRng)).collect();
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(*id > first, "{id} is not after {first}");
        }
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert_eq!(&first[..12], format!("{:012x}", 1_796_191_200_123_u64));
    }
}

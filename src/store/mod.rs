//! Storage: one small [`Store`] trait that every caller uses, and one implementation per
//! backend (SQLite now, chosen by the `sqlite://` URL prefix). Queries are runtime
//! `query`/`query_as`; migrations live in `migrations/<backend>/` and are append-only.
//!
//! Every write that the audit log must record takes the [`AuditEntry`]s with it and
//! commits them in the same transaction, chained by the single writer (see
//! [`crate::audit`]).

pub mod arrivals;
pub mod audit_log;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::audit::{AuditEntry, AuditRecord};

pub use arrivals::{Arrival, Arrivals};
pub use audit_log::AuditLog;

/// A CA key as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct CaKeyRecord {
    /// Short random id.
    pub id: String,
    /// SSH algorithm name, e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// `next`, `active`, `retiring`, `retired`, `revoked`.
    pub state: String,
    /// `SHA256:…`
    pub fingerprint: String,
    /// OpenSSH public key line.
    pub public_key: String,
    /// Encrypted OpenSSH private key.
    pub private_key: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub activated_at: Option<i64>,
    /// Unix seconds.
    pub retired_at: Option<i64>,
    /// Unix seconds, when it stopped signing (became `retiring`, or was revoked while active).
    pub deactivated_at: Option<i64>,
    /// Unix seconds, when it was revoked.
    pub revoked_at: Option<i64>,
}

/// A change to the CA keyring ([`Store::change_keyring`]): state changes, new keys and
/// re-encrypted private keys, committed with the audit entries in one transaction or not
/// at all.
#[derive(Debug, Clone, Default)]
pub struct KeyringChange {
    /// State changes, applied in order.
    pub transitions: Vec<KeyTransition>,
    /// Keys to insert, after the transitions.
    pub new_keys: Vec<CaKeyRecord>,
    /// Re-encrypted private keys (`writ admin ca rewrap`).
    pub rewraps: Vec<KeyRewrap>,
    /// Audit entries, in order.
    pub audit: Vec<AuditEntry>,
}

/// One CA key state change. It applies only if the key is still in state `from` (and,
/// with `unless_valid_after`, only if no certificate it signed is valid after that
/// time); otherwise the whole change fails with [`StoreError::Conflict`]. Moving to
/// `retired` or `revoked` erases the stored private key: such a key never signs again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTransition {
    /// Key id.
    pub id: String,
    /// Expected current state.
    pub from: String,
    /// New state.
    pub to: String,
    /// Unix seconds, recorded in the timestamp column of the new state.
    pub at: i64,
    /// Guard for retirement: no certificate of this key may have `valid_before` above it.
    pub unless_valid_after: Option<i64>,
}

/// A re-encrypted private key; applies only if the stored one is still `old`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRewrap {
    /// Key id.
    pub id: String,
    /// The encrypted private key expected in the store.
    pub old: String,
    /// The same key encrypted with the new passphrase.
    pub new: String,
}

impl std::fmt::Debug for KeyRewrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRewrap")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Certificates signed by one CA key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// CA key id.
    pub key_id: String,
    /// Certificates signed by it that are neither expired nor revoked.
    pub valid_certificates: i64,
    /// The latest `valid_before` of any certificate it signed.
    pub last_valid_before: Option<i64>,
}

/// The automatic rotation schedule (`writ admin ca schedule --every …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationSchedule {
    /// Rotate when the active key has signed for this many seconds.
    pub every_seconds: i64,
    /// Unix seconds, when it was set.
    pub set_at: i64,
}

impl std::fmt::Debug for CaKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKeyRecord")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// 32 hex characters.
    pub id: String,
    /// Configured issuer name of the owner.
    pub issuer: String,
    /// Token subject of the owner.
    pub subject: String,
    /// Policy that granted the task.
    pub policy: String,
    /// Logins the task names.
    pub logins: Vec<String>,
    /// Host patterns the task names.
    pub hosts: Vec<String>,
    /// Free text from the agent.
    pub purpose: String,
    /// `active`, `completed`, `revoked`.
    pub state: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// What every certificate of the task carries at most; `None` for a task opened
    /// before migration 0009, which did not record them.
    pub restrictions: Option<TaskRestrictions>,
}

/// The certificate options a task was granted when it opened: its renewals may narrow
/// them, never widen them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskRestrictions {
    /// Standard extensions (may be empty).
    pub extensions: Vec<String>,
    /// `force-command`, if any.
    pub force_command: Option<String>,
    /// `source-address` blocks, if any.
    pub source_address: Option<Vec<String>>,
}

/// A certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Non-zero, 63-bit.
    pub serial: i64,
    /// Task it is bound to.
    pub task_id: String,
    /// CA key that signed it.
    pub ca_key_id: String,
    /// Fingerprint of the certified key.
    pub key_fingerprint: String,
    /// Principals in the certificate.
    pub principals: Vec<String>,
    /// Unix seconds.
    pub valid_after: i64,
    /// Unix seconds.
    pub valid_before: i64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds, when revoked (directly, by its task ending, or with the certificate
    /// it was renewed from).
    pub revoked_at: Option<i64>,
    /// Serial of the certificate whose proof of possession allowed this one, if one did.
    pub renewed_from: Option<i64>,
}

/// One issuance: an optional new task, the certificate, and their audit entries, committed
/// together or not at all.
#[derive(Debug, Clone)]
pub struct Issuance {
    /// A task to create in the same transaction.
    pub new_task: Option<TaskRecord>,
    /// The certificate.
    pub certificate: CertificateRecord,
    /// Audit entries, in order.
    pub audit: Vec<AuditEntry>,
    /// The once-only token this issuance consumes (replay protection), if any.
    pub token_use: Option<TokenUse>,
}

/// Ending a task.
#[derive(Debug, Clone)]
pub struct TaskEnd {
    /// Task id.
    pub task_id: String,
    /// `completed` or `revoked`.
    pub state: String,
    /// Why (free text, audited).
    pub reason: Option<String>,
    /// Unix seconds.
    pub now_unix: i64,
    /// The once-only token this call consumes, if any.
    pub token_use: Option<TokenUse>,
}

/// Revocation state still relevant to hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Ended tasks and when they would have expired anyway.
    pub tasks: Vec<(String, i64)>,
    /// Revoked certificates: serial, signing CA key id, valid_before.
    pub certificates: Vec<(i64, String, i64)>,
    /// Highest audit sequence number when the snapshot was taken (monotonic).
    pub sequence: i64,
}

/// A workload token consumed by an issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    /// Configured issuer name.
    pub issuer: String,
    /// SHA-256 hex of the token's `jti` (or of the token).
    pub token_hash: String,
    /// Prunable after this Unix time.
    pub expires_at: i64,
}

/// Storage failures, in domain words.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The serial (or another unique value) is already taken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or written.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data does not decode.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The task is not active (completed, revoked, expired or unknown).
    #[error("task is not active")]
    TaskNotActive,
    /// The issuance's token was already used; nothing was written.
    #[error("token already used")]
    TokenReused,
    /// The certificate whose proof of possession allowed the issuance is revoked or
    /// unknown; nothing was written.
    #[error("the certificate it was renewed from is revoked")]
    RenewedFromRevoked,
    /// The URL names no supported backend (held redacted: [`crate::text::redact_url`]).
    #[error("unsupported storage URL {0:?}: use sqlite://PATH")]
    UnsupportedUrl(String),
}

/// What the CA needs from storage.
#[async_trait]
pub trait Store: AuditLog + Send + Sync {
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Where requests announce an issuance before they record it (see [`Arrivals`]);
    /// a store that does not group its commits keeps the default, which nobody reads.
    fn arrivals(&self) -> Arrivals {
        Arrivals::default()
    }
    /// Every CA key, oldest first.
    async fn ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError>;
    /// Apply a [`KeyringChange`] and its audit entries in one transaction. `Conflict` (and
    /// nothing written) if a transition's guard fails or a key would become a second
    /// `active` or `next`.
    async fn change_keyring(&self, change: &KeyringChange) -> Result<(), StoreError>;
    /// Per CA key: certificates still valid at `now_unix`, and the latest expiry.
    async fn ca_key_usage(&self, now_unix: i64) -> Result<Vec<KeyUsage>, StoreError>;
    /// The rotation schedule, if any.
    async fn rotation_schedule(&self) -> Result<Option<RotationSchedule>, StoreError>;
    /// Set (or with `None` clear) the rotation schedule, with its audit entry.
    async fn set_rotation_schedule(
        &self,
        schedule: Option<RotationSchedule>,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Commit an issuance (concurrent ones may share a transaction; each answer comes
    /// only after its own rows are durable). `Conflict` if the serial is taken,
    /// `TokenReused` if its token was used before, `TaskNotActive` if an existing task
    /// has ended, `RenewedFromRevoked` if the certificate it is renewed from is revoked by
    /// then; in each case nothing of it is written.
    async fn record_issuance(&self, issuance: Issuance) -> Result<(), StoreError>;
    /// Forget used tokens that expired before `now_unix`; returns how many.
    async fn prune_used_tokens(&self, now_unix: i64) -> Result<u64, StoreError>;
    /// Append one audit entry on its own.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Audit records with `seq > after`, in order, at most `limit`.
    async fn audit_records(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>, StoreError>;
    /// A task by id.
    async fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError>;
    /// Certificates of a task, oldest first.
    async fn task_certificates(&self, task_id: &str) -> Result<Vec<CertificateRecord>, StoreError>;
    /// A certificate by serial.
    async fn certificate(&self, serial: i64) -> Result<Option<CertificateRecord>, StoreError>;
    /// End an active, unexpired task (`completed` or `revoked`) and revoke its
    /// certificates, with the audit entries built by `audit` from the certificates that
    /// were still live, all in one transaction. `TaskNotActive` if the task is not active
    /// at `now_unix`; `TokenReused` if `token_use` was consumed before.
    async fn end_task(
        &self,
        end: &TaskEnd,
        audit: &(dyn for<'c> Fn(&'c [CertificateRecord]) -> Vec<AuditEntry> + Send + Sync),
    ) -> Result<Vec<CertificateRecord>, StoreError>;
    /// Revoke one certificate (if not revoked already) and every live certificate renewed
    /// from it, directly or through other renewals, with the audit entries built by
    /// `audit` from them, all in one transaction. Returns them, the certificate first and
    /// then its renewals in issue order; empty (and nothing written) if the certificate was
    /// already revoked.
    async fn revoke_certificate(
        &self,
        serial: i64,
        now_unix: i64,
        audit: &(dyn for<'c> Fn(&'c [CertificateRecord]) -> Vec<AuditEntry> + Send + Sync),
    ) -> Result<Vec<CertificateRecord>, StoreError>;
    /// What hosts must refuse at `now_unix`: ended tasks that have not expired yet and
    /// revoked certificates still inside their validity window.
    async fn revocations(&self, now_unix: i64) -> Result<Revocations, StoreError>;
}

/// Open (creating and migrating if needed) the store a URL names.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(sqlite::SqliteStore::open(path).await?))
    } else {
        Err(StoreError::UnsupportedUrl(crate::text::redact_url(url)))
    }
}

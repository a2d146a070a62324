//! The store's records: what it keeps (CA keys, tasks, certificates, used tokens), the
//! changes it commits whole or not at all, and the states a task and a CA key move
//! through. Plain data: nothing here reads a clock or knows a backend.

use time::OffsetDateTime;

use crate::audit::AuditEntry;

/// Lifecycle state of a CA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Published for trust, not yet signing.
    Next,
    /// Signs; exactly one.
    Active,
    /// No longer signs; trusted until its certificates expire.
    Retiring,
    /// No longer trusted.
    Retired,
    /// Emergency removal: untrusted and listed in the KRL.
    Revoked,
}

impl KeyState {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(text: &str) -> Option<KeyState> {
        Some(match text {
            "next" => KeyState::Next,
            "active" => KeyState::Active,
            "retiring" => KeyState::Retiring,
            "retired" => KeyState::Retired,
            "revoked" => KeyState::Revoked,
            _ => return None,
        })
    }

    /// Whether hosts must trust keys in this state.
    pub fn is_trusted(self) -> bool {
        matches!(self, KeyState::Next | KeyState::Active | KeyState::Retiring)
    }

    /// Whether a certificate signed by a key in this state may still be recorded:
    /// `retiring` still may, until a server with a stale keyring reloads.
    pub fn may_sign(self) -> bool {
        matches!(self, KeyState::Active | KeyState::Retiring)
    }

    /// Whether a key may move from this state to `to`. Keys only move forward: a key
    /// that stopped signing never signs again, and a revoked key stays revoked.
    pub fn can_become(self, to: KeyState) -> bool {
        use KeyState::*;
        matches!(
            (self, to),
            (Next, Active)
                | (Active, Retiring)
                | (Retiring, Retired)
                | (Next | Active | Retiring | Retired, Revoked)
        )
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle state of a task. Expiry is not a state: an `Active` task past its
/// `expires_at` is over all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Open: its certificates admit it until it expires.
    Active,
    /// Ended by its owner.
    Completed,
    /// Ended by an operator or by revocation.
    Revoked,
}

impl TaskState {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Active => "active",
            TaskState::Completed => "completed",
            TaskState::Revoked => "revoked",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(text: &str) -> Option<TaskState> {
        Some(match text {
            "active" => TaskState::Active,
            "completed" => TaskState::Completed,
            "revoked" => TaskState::Revoked,
            _ => return None,
        })
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a CA key signs: user certificates (trusted by hosts through
/// `TrustedUserCAKeys`) or host certificates (trusted by clients through an
/// `@cert-authority` line). Each kind has its own keyring: its own `active` key, its own
/// `next` key and rotation; a key never changes kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyKind {
    /// Signs writ user certificates (every key before migration 0013 is one).
    #[default]
    User,
    /// Signs SSH host certificates.
    Host,
}

impl KeyKind {
    /// Stored spelling (also the `--kind` value and the word in audit reasons).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::User => "user",
            KeyKind::Host => "host",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(text: &str) -> Option<KeyKind> {
        match text {
            "user" => Some(KeyKind::User),
            "host" => Some(KeyKind::Host),
            _ => None,
        }
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CA key as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct CaKeyRecord {
    /// Short random id.
    pub id: String,
    /// What it signs.
    pub kind: KeyKind,
    /// SSH algorithm name, e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// Where it is in its lifecycle.
    pub state: KeyState,
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
#[derive(Debug, Clone)]
pub struct KeyringChange {
    /// State changes, applied in order.
    pub transitions: Vec<KeyTransition>,
    /// Keys to insert, after the transitions.
    pub new_keys: Vec<CaKeyRecord>,
    /// Re-encrypted private keys (`writ admin ca rewrap`).
    pub rewraps: Vec<KeyRewrap>,
    /// Audit entries, in order.
    pub audit: Vec<AuditEntry>,
    /// When: the audit entries carry this time.
    pub at: OffsetDateTime,
}

impl KeyringChange {
    /// A change at `at` that does nothing yet: fill in what it does.
    pub fn at(at: OffsetDateTime) -> KeyringChange {
        KeyringChange {
            transitions: Vec::new(),
            new_keys: Vec::new(),
            rewraps: Vec::new(),
            audit: Vec::new(),
            at,
        }
    }
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
    pub from: KeyState,
    /// New state.
    pub to: KeyState,
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
            .field("kind", &self.kind)
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
    /// Open or how it ended.
    pub state: TaskState,
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
    /// The request's time: its audit records carry it.
    pub at: OffsetDateTime,
}

/// A host certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCertificateRecord {
    /// Non-zero, 63-bit, from the same allocator as user certificates.
    pub serial: i64,
    /// Host CA key that signed it.
    pub ca_key_id: String,
    /// Fingerprint of the certified host key.
    pub key_fingerprint: String,
    /// The host names in the certificate.
    pub principals: Vec<String>,
    /// Configured issuer name of the host's identity.
    pub issuer: String,
    /// Token subject of the host's identity.
    pub subject: String,
    /// The `role = "host"` policy that granted the names.
    pub policy: String,
    /// Unix seconds.
    pub valid_after: i64,
    /// Unix seconds.
    pub valid_before: i64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds, when revoked.
    pub revoked_at: Option<i64>,
}

/// One host-certificate request's certificates (one per host key) and their audit
/// entries, committed together or not at all.
#[derive(Debug, Clone)]
pub struct HostIssuance {
    /// The certificates.
    pub certificates: Vec<HostCertificateRecord>,
    /// Audit entries, in order.
    pub audit: Vec<AuditEntry>,
    /// The once-only token this issuance consumes (replay protection), if any.
    pub token_use: Option<TokenUse>,
    /// The request's time: its audit records carry it.
    pub at: OffsetDateTime,
}

/// Which host certificates a revocation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRevocation {
    /// The one with this serial.
    Serial(i64),
    /// Every one whose principals include this name.
    Name(String),
}

/// Builds the audit entries of a host-certificate revocation from the certificates it
/// revoked, inside its transaction.
pub type HostAuditFor = Box<dyn FnOnce(&[HostCertificateRecord]) -> Vec<AuditEntry> + Send>;

/// Ending a task.
#[derive(Debug, Clone)]
pub struct TaskEnd {
    /// Task id.
    pub task_id: String,
    /// How it ends: [`TaskState::Completed`] or [`TaskState::Revoked`].
    pub state: TaskState,
    /// Why (free text, audited).
    pub reason: Option<String>,
    /// When: the task must be live then, and its records carry this time.
    pub now: OffsetDateTime,
    /// The once-only token this call consumes, if any.
    pub token_use: Option<TokenUse>,
}

/// Revocation state still relevant to hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Ended tasks and when they would have expired anyway.
    pub tasks: Vec<(String, i64)>,
    /// Revoked certificates, user and host: serial, signing CA key id, valid_before (the
    /// key's kind tells which; the KRL has a section per CA key).
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

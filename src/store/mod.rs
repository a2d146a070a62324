//! Storage: the [`Store`] contract every caller uses — typed records and states
//! ([`records`]), one method per operation, each write committed whole or not at all with
//! its audit entries — and one backend per database, chosen by the URL prefix: SQLite
//! (`sqlite://`, embedded, the default) and PostgreSQL (`postgres://`, several replicas
//! sharing one database). Migrations live in `migrations/<backend>/` and are append-only.
//!
//! The contract never reads a clock: every write carries its time (`at`/`now`) from the
//! request that makes it. Nothing of how a backend commits leaks through it: a backend
//! that groups commits may use [`Store::announce_issuance`], the others ignore it. What
//! every backend must do is pinned down by the tests in `contract`, which each backend
//! runs unchanged.

mod arrivals;
pub mod audit_log;
#[cfg(test)]
pub(crate) mod contract;
pub mod copy;
pub mod host_reports;
pub mod postgres;
pub mod records;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::audit::{AuditEntry, AuditRecord};
use crate::metrics::Metrics;

pub use audit_log::AuditLog;
pub use host_reports::{
    FeedApplied, Finding, FindingKind, Inventory, InventoryChange, InventoryHost, InventoryUpdate,
    StoredFinding,
};
pub use records::{
    CaKeyRecord, CertificateRecord, HostAuditFor, HostCertificateRecord, HostIssuance,
    HostRevocation, Issuance, KeyKind, KeyRewrap, KeyState, KeyTransition, KeyUsage, KeyringChange,
    Revocations, RotationSchedule, TaskEnd, TaskRecord, TaskRestrictions, TaskState, TokenUse,
};

/// Builds the audit entries of a write from the certificates it touched, inside its
/// transaction (so they name exactly what changed).
pub type AuditFor = Box<dyn FnOnce(&[CertificateRecord]) -> Vec<AuditEntry> + Send>;

/// An issuance a request expects to hand to the store shortly (see
/// [`Store::announce_issuance`]). A request withdraws it just before it calls
/// [`Store::record_issuance`]; dropping it (when the request gives up) withdraws it too.
#[must_use = "an announcement counts until it is dropped"]
pub struct Announcement(Option<Box<dyn Send + Sync>>);

impl Announcement {
    /// An announcement nobody listens to.
    pub fn unheard() -> Announcement {
        Announcement(None)
    }

    /// An announcement held by `guard`, which withdraws it when dropped.
    pub fn held_by(guard: impl Send + Sync + 'static) -> Announcement {
        Announcement(Some(Box::new(guard)))
    }

    /// Withdraw it (the issuance is being handed over, or will not come); only the first
    /// call counts.
    pub fn withdraw(&mut self) {
        self.0 = None;
    }
}

impl std::fmt::Debug for Announcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Announcement")
            .field(&self.0.is_some())
            .finish()
    }
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
    #[error("unsupported storage URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedUrl(String),
    /// The URL carries a password (held redacted): it belongs in `[storage]
    /// password_file` or `PGPASSWORD`, never in the configuration.
    #[error(
        "the storage URL {0:?} carries a password: put it in the file [storage] \
         password_file names (or the PGPASSWORD environment variable) instead"
    )]
    PasswordInUrl(String),
}

/// What the CA needs from storage.
#[async_trait]
pub trait Store: AuditLog + Send + Sync {
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// A request that will shortly record an issuance says so as early as it can: a
    /// backend that groups concurrent issuances into one commit waits briefly for the ones
    /// announced; the default is heard by nobody.
    fn announce_issuance(&self) -> Announcement {
        Announcement::unheard()
    }
    /// Every CA key of every kind, oldest first.
    async fn ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError>;
    /// Apply a [`KeyringChange`] and its audit entries in one transaction. `Conflict` (and
    /// nothing written) if a transition's guard fails or a key would become a second
    /// `active` or `next` of its kind.
    async fn change_keyring(&self, change: &KeyringChange) -> Result<(), StoreError>;
    /// Per CA key: certificates still valid at `now_unix`, and the latest expiry.
    async fn ca_key_usage(&self, now_unix: i64) -> Result<Vec<KeyUsage>, StoreError>;
    /// The rotation schedule, if any.
    async fn rotation_schedule(&self) -> Result<Option<RotationSchedule>, StoreError>;
    /// Set (or with `None` clear) the rotation schedule, with its audit entry, at `at`.
    async fn set_rotation_schedule(
        &self,
        schedule: Option<RotationSchedule>,
        audit: &AuditEntry,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Commit an issuance (concurrent ones may share a transaction; each answer comes
    /// only after its own rows are durable). `Conflict` if the serial or task id is taken,
    /// `TokenReused` if its token was used before, `TaskNotActive` if an existing task
    /// has ended, `RenewedFromRevoked` if the certificate it is renewed from is revoked by
    /// then, `Unavailable` if its CA key may no longer sign; in each case nothing of it is
    /// written.
    async fn record_issuance(&self, issuance: Issuance) -> Result<(), StoreError>;
    /// Commit a host issuance: every certificate of it and its audit entries, on the same
    /// writer as [`Store::record_issuance`], answering only once durable. `Conflict` if a
    /// serial is taken (by a user or a host certificate), `TokenReused` if its token was
    /// used before, `Unavailable` if a signing key is not a host key that may sign; in
    /// each case nothing of it is written.
    async fn record_host_issuance(&self, issuance: HostIssuance) -> Result<(), StoreError>;
    /// Host certificates still valid at `now_unix` (revoked ones included), optionally
    /// only those naming `name`, oldest first.
    async fn host_certificates(
        &self,
        now_unix: i64,
        name: Option<&str>,
    ) -> Result<Vec<HostCertificateRecord>, StoreError>;
    /// Revoke the host certificates `which` names that are neither revoked nor expired at
    /// `now`, with the audit entries `audit` builds from them, in one transaction. Returns
    /// them (empty, and nothing written, if there were none).
    async fn revoke_host_certificates(
        &self,
        which: &HostRevocation,
        now: OffsetDateTime,
        audit: HostAuditFor,
    ) -> Result<Vec<HostCertificateRecord>, StoreError>;
    /// Forget used tokens that expired before `now_unix`; returns how many.
    async fn prune_used_tokens(&self, now_unix: i64) -> Result<u64, StoreError>;
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
    /// at `end.now`; `TokenReused` if `token_use` was consumed before.
    async fn end_task(
        &self,
        end: &TaskEnd,
        audit: AuditFor,
    ) -> Result<Vec<CertificateRecord>, StoreError>;
    /// Revoke one certificate (if not revoked already) and every live certificate renewed
    /// from it, directly or through other renewals, at `now`, with the audit entries built
    /// by `audit` from them, all in one transaction. Returns them, the certificate first
    /// and then its renewals in issue order; empty (and nothing written) if the
    /// certificate was already revoked.
    async fn revoke_certificate(
        &self,
        serial: i64,
        now: OffsetDateTime,
        audit: AuditFor,
    ) -> Result<Vec<CertificateRecord>, StoreError>;
    /// What hosts must refuse at `now_unix`: ended tasks that have not expired yet and
    /// revoked certificates (user and host) still inside their validity window.
    async fn revocations(&self, now_unix: i64) -> Result<Revocations, StoreError>;
    /// How many tasks are active and unexpired at `now_unix` (`writ_active_tasks`, read on
    /// each metrics scrape, on a reader: it never waits for the writer).
    async fn active_tasks(&self, now_unix: i64) -> Result<i64, StoreError>;
    /// Take or keep the lease `name` for `holder` until `until_unix`: true if `holder`
    /// held it already or nobody holds it at `now_unix` (never held, or expired), and
    /// then it is `holder`'s until `until_unix`; false (nothing written) if another
    /// holder's lease runs past `now_unix`. The database decides, so of several processes
    /// asking at once exactly one gets it.
    async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        now_unix: i64,
        until_unix: i64,
    ) -> Result<bool, StoreError>;
    /// Give the lease `name` up if `holder` holds it (a clean shutdown), so another
    /// process may take it at once.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
    /// Record (overwrite) the revocation feed a host last applied.
    async fn record_feed_applied(&self, report: FeedApplied) -> Result<(), StoreError>;
    /// Every host's last applied feed, by host name.
    async fn feeds_applied(&self) -> Result<Vec<FeedApplied>, StoreError>;
    /// Record a host's inventory report: replace its summary, add new findings, mark
    /// those it no longer has gone, and append the audit entries built from that change,
    /// all in one transaction. Returns the change.
    async fn record_inventory(
        &self,
        update: InventoryUpdate,
    ) -> Result<InventoryChange, StoreError>;
    /// Every host's latest inventory with the live findings, plus the findings gone at or
    /// after `gone_since` when given.
    async fn inventory(&self, gone_since: Option<i64>) -> Result<Inventory, StoreError>;
}

/// Take or keep a lease (both backends; `$1` name, `$2` holder, `$3` until, `$4` now).
/// The update applies only to the holder's own lease or an expired one, so the row
/// changes (one row affected) exactly when the lease is granted.
pub(crate) const SQL_HOLD_LEASE: &str = "INSERT INTO leases (name, holder, expires_at) \
     VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
     SET holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE leases.holder = excluded.holder OR leases.expires_at <= $4";
/// Give a lease up (`$1` name, `$2` holder).
pub(crate) const SQL_RELEASE_LEASE: &str = "DELETE FROM leases WHERE name = $1 AND holder = $2";

/// How to open a store (`[storage]`): its URL and, for PostgreSQL, the password and the
/// pool's settings. `Debug` shows no password.
#[derive(Clone)]
pub struct StoreOptions {
    /// `sqlite://PATH` or `postgres://USER@HOST[:PORT]/DATABASE[?sslmode=…]`.
    pub url: String,
    /// The PostgreSQL password (read from `[storage] password_file`); `None`: the
    /// `PGPASSWORD` environment variable or `~/.pgpass`, as for libpq.
    pub password: Option<Zeroizing<String>>,
    /// PostgreSQL: most connections the pool keeps open.
    pub pool_size: u32,
    /// PostgreSQL: longest wait to connect, or for a free connection of the pool.
    pub connect_timeout: Duration,
    /// PostgreSQL: longest any one statement may run (a wait for a lock included).
    pub statement_timeout: Duration,
}

impl StoreOptions {
    /// Default `[storage] pool_size`.
    pub const DEFAULT_POOL_SIZE: u32 = 10;
    /// Default `[storage] connect_timeout`.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default `[storage] statement_timeout`.
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The store at `url`, with every other setting at its default.
    pub fn new(url: &str) -> StoreOptions {
        StoreOptions {
            url: url.to_owned(),
            password: None,
            pool_size: StoreOptions::DEFAULT_POOL_SIZE,
            connect_timeout: StoreOptions::DEFAULT_CONNECT_TIMEOUT,
            statement_timeout: StoreOptions::DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &crate::text::redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// A migration [`migrate`] (or opening a store) applied: its number and the words of its
/// file name (`migrations/<backend>/NNNN_words.sql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its number.
    pub version: i64,
    /// What it does, in the words of its file name.
    pub description: &'static str,
}

/// Bring the schema of the store `options` names up to date, exactly as opening it does,
/// and return the migrations this call applied (none: it was up to date). PostgreSQL
/// migrates under sqlx's advisory lock, so this is safe while replicas run; a SQLite file
/// is created if it does not exist, as opening creates it.
pub async fn migrate(options: &StoreOptions) -> Result<Vec<AppliedMigration>, StoreError> {
    let url = options.url.as_str();
    if let Some(path) = url.strip_prefix("sqlite://") {
        sqlite::migrate(path).await
    } else if postgres::is_postgres_url(url) {
        postgres::migrate(options).await
    } else {
        Err(StoreError::UnsupportedUrl(crate::text::redact_url(url)))
    }
}

/// Open (creating and migrating if needed) the store a URL names, with default settings.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(&StoreOptions::new(url), None).await
}

/// Open the store `options` names, recording the writer's transactions into `metrics`
/// (`writ serve`): `writ_store_commit_duration_seconds` and
/// `writ_group_commit_batch_size`.
pub async fn open_with(
    options: &StoreOptions,
    metrics: Option<Arc<Metrics>>,
) -> Result<Arc<dyn Store>, StoreError> {
    let url = options.url.as_str();
    if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(
            sqlite::SqliteStore::open_with(path, metrics).await?,
        ))
    } else if postgres::is_postgres_url(url) {
        Ok(Arc::new(postgres::PgStore::open(options, metrics).await?))
    } else {
        Err(StoreError::UnsupportedUrl(crate::text::redact_url(url)))
    }
}

//! The SQLite backend (embedded, the default): WAL journal, `synchronous = FULL` so a
//! commit is on disk before a certificate leaves, and one writer at a time (a process-wide
//! lock plus `BEGIN IMMEDIATE` against other processes such as `writ admin`), which also
//! keeps the audit hash chain from forking.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;
use tokio::sync::Mutex;

use super::{
    Arrivals, CaKeyRecord, CertificateRecord, Issuance, KeyUsage, KeyringChange, Revocations,
    RotationSchedule, Store, StoreError, TaskEnd, TaskRecord, TaskRestrictions, TokenUse,
};
use crate::audit::{self, AuditEntry, AuditRecord, Outcome};

mod audit_log;
mod group_commit;
mod keyring;
mod private_files;

use group_commit::GroupCommit;
pub(crate) use group_commit::{insert_audit_row, read_chain_head};

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    pool: SqlitePool,
    /// Held by every writer in this process (the group-commit task included).
    write_lock: Arc<Mutex<()>>,
    group_commit: GroupCommit,
    /// Issuances on their way to `group_commit`, which waits for them.
    arrivals: Arrivals,
}

impl SqliteStore {
    /// Open or create the database file at `path` and run migrations.
    pub async fn open(path: &str) -> Result<SqliteStore, StoreError> {
        private_files::prepare(Path::new(path))?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(unavailable)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))?;
        let write_lock = Arc::new(Mutex::new(()));
        let arrivals = Arrivals::default();
        Ok(SqliteStore {
            group_commit: GroupCommit::start(
                Path::new(path),
                write_lock.clone(),
                arrivals.clone(),
            )?,
            pool,
            write_lock,
            arrivals,
        })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// Queries here read every row (`fetch_all`) even when they want one: sqlx leaves a
/// statement that was not stepped to its end active, and an active statement holds a read
/// snapshot that stops the WAL from ever starting over (it grows without bound under
/// load). A query that must return a row and returned none is this error.
fn no_row() -> StoreError {
    StoreError::Corrupt("a query that always returns a row returned none".into())
}

fn to_json(values: &[String]) -> String {
    serde_json::to_string(values).expect("a list of strings always serialises")
}

fn from_json(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("bad JSON list: {e}")))
}

/// The newest audit record.
const SQL_CHAIN_HEAD: &str = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1";
/// One audit record; parameters in [`AuditEntry`] order, see [`append_after`].
const SQL_INSERT_AUDIT: &str = "INSERT INTO audit_events (seq, time, event, outcome, issuer, \
     subject, policy, task_id, serial, key_fingerprint, logins, hosts, host, ca_fingerprint, \
     source_ip, reason, request_id, prev_hash, hash, purpose) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
     $20)";
/// A new task; its restrictions are bound with [`restriction_columns`].
const SQL_INSERT_TASK: &str = "INSERT INTO tasks (id, issuer, subject, policy, logins, hosts, \
     purpose, state, created_at, expires_at, extensions, force_command, source_address) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
/// A consumed once-only token.
const SQL_INSERT_USED_TOKEN: &str =
    "INSERT INTO used_tokens (issuer, token_hash, expires_at) VALUES ($1, $2, $3)";
/// Was this token consumed before migration 0006 (see that migration)?
const SQL_USED_BEFORE_0006: &str =
    "SELECT 1 FROM used_tokens_before_0006 WHERE issuer = $1 AND token_hash = $2";
/// A new certificate.
const SQL_INSERT_CERTIFICATE: &str = "INSERT INTO certificates (serial, task_id, ca_key_id, \
     key_fingerprint, principals, valid_after, valid_before, issued_at, renewed_from) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
/// Whether a certificate is live (not revoked): `None` when there is no such certificate.
/// One lookup in the serial index, made only for renewals by proof of possession.
const SQL_CERTIFICATE_LIVE: &str = "SELECT revoked_at IS NULL FROM certificates WHERE serial = $1";
/// A certificate and every certificate renewed from it, directly or through other
/// renewals, that is not revoked yet: the certificate first, then in issue order. Each
/// step of the walk reads the partial index `certificates_renewed_from` (migration 0010).
const SQL_LIVE_RENEWAL_TREE: &str = "WITH RECURSIVE tree (serial) AS (SELECT $1 \
     UNION SELECT c.serial FROM certificates c JOIN tree ON c.renewed_from = tree.serial) \
     SELECT certificates.* FROM certificates JOIN tree USING (serial) \
     WHERE certificates.revoked_at IS NULL \
     ORDER BY certificates.serial != $1, certificates.rowid";
/// A task's state and expiry.
const SQL_TASK_STATE: &str = "SELECT state, expires_at FROM tasks WHERE id = $1";
/// The revocation feed's tasks: ended before they expired, read through the partial index
/// `tasks_ended_expires_at` (migration 0008) so the feed costs what it lists. `INDEXED BY`:
/// without statistics SQLite prefers walking the whole table in `id` order to sorting.
const SQL_FEED_TASKS: &str = "SELECT id, expires_at FROM tasks INDEXED BY tasks_ended_expires_at \
     WHERE state != 'active' AND expires_at > $1 ORDER BY id";
/// The revocation feed's certificates: revoked and still inside their validity window,
/// through the partial index `certificates_revoked_valid_before` (migration 0008).
const SQL_FEED_CERTIFICATES: &str = "SELECT serial, ca_key_id, valid_before FROM certificates \
     INDEXED BY certificates_revoked_valid_before \
     WHERE revoked_at IS NOT NULL AND valid_before > $1 ORDER BY serial";

/// The newest record's `(seq, hash)`, or `(0, GENESIS_HASH)` for an empty chain.
async fn chain_head(tx: &mut Transaction<'static, Sqlite>) -> Result<(i64, String), StoreError> {
    let last = sqlx::query(SQL_CHAIN_HEAD)
        .fetch_all(&mut **tx)
        .await
        .map_err(unavailable)?
        .into_iter()
        .next();
    Ok(match last {
        Some(row) => (row.get::<i64, _>(0), row.get::<String, _>(1)),
        None => (0, audit::GENESIS_HASH.to_owned()),
    })
}

/// Append `entry` to the chain inside `tx`.
async fn append(
    tx: &mut Transaction<'static, Sqlite>,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    let head = chain_head(tx).await?;
    append_after(tx, &head, entry).await.map(|_| ())
}

/// Insert `entry` as the record after `head` inside `tx`; returns the new head. The
/// caller holds the writer lock, so `head` is the chain's real head.
async fn append_after(
    tx: &mut Transaction<'static, Sqlite>,
    head: &(i64, String),
    entry: &AuditEntry,
) -> Result<(i64, String), StoreError> {
    let (prev_seq, prev_hash) = head;
    let seq = prev_seq + 1;
    let time = audit::format_time(OffsetDateTime::now_utc());
    let hash = audit::chain_hash(seq, &time, entry, prev_hash);
    sqlx::query(SQL_INSERT_AUDIT)
        .bind(seq)
        .bind(&time)
        .bind(&entry.event)
        .bind(entry.outcome.unwrap_or(Outcome::Success).as_str())
        .bind(&entry.issuer)
        .bind(&entry.subject)
        .bind(&entry.policy)
        .bind(&entry.task_id)
        .bind(&entry.serial)
        .bind(&entry.key_fingerprint)
        .bind(to_json(&entry.logins))
        .bind(to_json(&entry.hosts))
        .bind(&entry.host)
        .bind(&entry.ca_fingerprint)
        .bind(&entry.source_ip)
        .bind(&entry.reason)
        .bind(&entry.request_id)
        .bind(prev_hash)
        .bind(&hash)
        .bind(&entry.purpose)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    Ok((seq, hash))
}

/// Record a once-only token; `TokenReused` if it was recorded before.
async fn consume_token(
    tx: &mut Transaction<'static, Sqlite>,
    token: &TokenUse,
) -> Result<(), StoreError> {
    let used_before = sqlx::query(SQL_USED_BEFORE_0006)
        .bind(&token.issuer)
        .bind(&token.token_hash)
        .fetch_all(&mut **tx)
        .await
        .map_err(unavailable)?;
    if !used_before.is_empty() {
        return Err(StoreError::TokenReused);
    }
    sqlx::query(SQL_INSERT_USED_TOKEN)
        .bind(&token.issuer)
        .bind(&token.token_hash)
        .bind(token.expires_at)
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(|e| match unavailable(e) {
            StoreError::Conflict(_) => StoreError::TokenReused,
            other => other,
        })
}

/// Fail with `TaskNotActive` unless the task is active and unexpired at `now_unix`.
async fn require_active(
    tx: &mut Transaction<'static, Sqlite>,
    task_id: &str,
    now_unix: i64,
) -> Result<(), StoreError> {
    let row = sqlx::query(SQL_TASK_STATE)
        .bind(task_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(unavailable)?
        .into_iter()
        .next();
    match row {
        Some(row) if row.get::<String, _>(0) == "active" && row.get::<i64, _>(1) > now_unix => {
            Ok(())
        }
        _ => Err(StoreError::TaskNotActive),
    }
}

/// A task's restrictions as the `extensions`, `force_command` and `source_address` columns
/// store them (see migration 0009).
fn restriction_columns(
    restrictions: Option<&TaskRestrictions>,
) -> (Option<String>, Option<String>, Option<String>) {
    match restrictions {
        Some(r) => (
            Some(to_json(&r.extensions)),
            r.force_command.clone(),
            r.source_address.as_deref().map(to_json),
        ),
        None => (None, None, None),
    }
}

fn certificate_record(row: &SqliteRow) -> Result<CertificateRecord, StoreError> {
    Ok(CertificateRecord {
        serial: row.get("serial"),
        task_id: row.get("task_id"),
        ca_key_id: row.get("ca_key_id"),
        key_fingerprint: row.get("key_fingerprint"),
        principals: from_json(row.get("principals"))?,
        valid_after: row.get("valid_after"),
        valid_before: row.get("valid_before"),
        issued_at: row.get("issued_at"),
        revoked_at: row.get("revoked_at"),
        renewed_from: row.get("renewed_from"),
    })
}

fn audit_record(row: &SqliteRow) -> Result<AuditRecord, StoreError> {
    let outcome: String = row.get("outcome");
    Ok(AuditRecord {
        seq: row.get("seq"),
        time: row.get("time"),
        entry: AuditEntry {
            event: row.get("event"),
            outcome: Some(
                Outcome::parse(&outcome)
                    .ok_or_else(|| StoreError::Corrupt(format!("bad outcome {outcome:?}")))?,
            ),
            issuer: row.get("issuer"),
            subject: row.get("subject"),
            policy: row.get("policy"),
            task_id: row.get("task_id"),
            serial: row.get("serial"),
            key_fingerprint: row.get("key_fingerprint"),
            logins: from_json(row.get("logins"))?,
            hosts: from_json(row.get("hosts"))?,
            host: row.get("host"),
            ca_fingerprint: row.get("ca_fingerprint"),
            source_ip: row.get("source_ip"),
            reason: row.get("reason"),
            request_id: row.get("request_id"),
            purpose: row.get("purpose"),
        },
        prev_hash: row.get("prev_hash"),
        hash: row.get("hash"),
    })
}

fn task_record(row: &SqliteRow) -> Result<TaskRecord, StoreError> {
    Ok(TaskRecord {
        id: row.get("id"),
        issuer: row.get("issuer"),
        subject: row.get("subject"),
        policy: row.get("policy"),
        logins: from_json(row.get("logins"))?,
        hosts: from_json(row.get("hosts"))?,
        purpose: row.get("purpose"),
        state: row.get("state"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        restrictions: match row.get::<Option<&str>, _>("extensions") {
            None => None,
            Some(extensions) => Some(TaskRestrictions {
                extensions: from_json(extensions)?,
                force_command: row.get("force_command"),
                source_address: row
                    .get::<Option<&str>, _>("source_address")
                    .map(from_json)
                    .transpose()?,
            }),
        },
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn arrivals(&self) -> Arrivals {
        self.arrivals.clone()
    }

    async fn ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        let rows = sqlx::query(keyring::SELECT_CA_KEYS)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(keyring::ca_key_record).collect())
    }

    async fn change_keyring(&self, change: &KeyringChange) -> Result<(), StoreError> {
        keyring::change_keyring(self, change).await
    }

    async fn ca_key_usage(&self, now_unix: i64) -> Result<Vec<KeyUsage>, StoreError> {
        keyring::ca_key_usage(self, now_unix).await
    }

    async fn rotation_schedule(&self) -> Result<Option<RotationSchedule>, StoreError> {
        keyring::rotation_schedule(self).await
    }

    async fn set_rotation_schedule(
        &self,
        schedule: Option<RotationSchedule>,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        keyring::set_rotation_schedule(self, schedule, audit).await
    }

    async fn record_issuance(&self, issuance: Issuance) -> Result<(), StoreError> {
        self.group_commit.record(issuance).await
    }

    async fn prune_used_tokens(&self, now_unix: i64) -> Result<u64, StoreError> {
        let _guard = self.write_lock.lock().await;
        let mut pruned = 0;
        for sql in [
            "DELETE FROM used_tokens WHERE expires_at < $1",
            "DELETE FROM used_tokens_before_0006 WHERE expires_at < $1",
        ] {
            pruned += sqlx::query(sql)
                .bind(now_unix)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?
                .rows_affected();
        }
        Ok(pruned)
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        append(&mut tx, entry).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn audit_records(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(audit_record).collect()
    }

    async fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .into_iter()
            .next();
        row.as_ref().map(task_record).transpose()
    }

    async fn task_certificates(&self, task_id: &str) -> Result<Vec<CertificateRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM certificates WHERE task_id = $1 ORDER BY issued_at, serial")
                .bind(task_id)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        rows.iter().map(certificate_record).collect()
    }

    async fn certificate(&self, serial: i64) -> Result<Option<CertificateRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM certificates WHERE serial = $1")
            .bind(serial)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .into_iter()
            .next();
        row.as_ref().map(certificate_record).transpose()
    }

    async fn end_task(
        &self,
        end: &TaskEnd,
        audit: &(dyn for<'c> Fn(&'c [CertificateRecord]) -> Vec<AuditEntry> + Send + Sync),
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        if let Some(token) = &end.token_use {
            consume_token(&mut tx, token).await?;
        }
        require_active(&mut tx, &end.task_id, end.now_unix).await?;
        sqlx::query("UPDATE tasks SET state = $1, ended_at = $2, end_reason = $3 WHERE id = $4")
            .bind(&end.state)
            .bind(end.now_unix)
            .bind(&end.reason)
            .bind(&end.task_id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let live = sqlx::query(
            "SELECT * FROM certificates WHERE task_id = $1 AND revoked_at IS NULL AND valid_before > $2 \
             ORDER BY issued_at, serial",
        )
        .bind(&end.task_id)
        .bind(end.now_unix)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?
        .iter()
        .map(certificate_record)
        .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "UPDATE certificates SET revoked_at = $1 WHERE task_id = $2 AND revoked_at IS NULL",
        )
        .bind(end.now_unix)
        .bind(&end.task_id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        for entry in audit(&live) {
            append(&mut tx, &entry).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(live)
    }

    async fn revoke_certificate(
        &self,
        serial: i64,
        now_unix: i64,
        audit: &(dyn for<'c> Fn(&'c [CertificateRecord]) -> Vec<AuditEntry> + Send + Sync),
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        // Under the writer lock, like the group-commit writer: a renewal from any of these
        // certificates either committed before (and is found here) or commits after and
        // is refused there (`group_commit::refusal`).
        let _guard = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let live = sqlx::query(SQL_LIVE_RENEWAL_TREE)
            .bind(serial)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?
            .iter()
            .map(certificate_record)
            .collect::<Result<Vec<_>, _>>()?;
        if live.first().map(|c| c.serial) != Some(serial) {
            return Ok(Vec::new());
        }
        for cert in &live {
            sqlx::query("UPDATE certificates SET revoked_at = $1 WHERE serial = $2")
                .bind(now_unix)
                .bind(cert.serial)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        for entry in audit(&live) {
            append(&mut tx, &entry).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(live)
    }

    async fn revocations(&self, now_unix: i64) -> Result<Revocations, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(unavailable)?;
        let sequence: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_events")
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?
            .into_iter()
            .next()
            .ok_or_else(no_row)?;
        let tasks = sqlx::query(SQL_FEED_TASKS)
            .bind(now_unix)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| (row.get::<String, _>(0), row.get::<i64, _>(1)))
            .collect();
        let certificates = sqlx::query(SQL_FEED_CERTIFICATES)
            .bind(now_unix)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| {
                (
                    row.get::<i64, _>(0),
                    row.get::<String, _>(1),
                    row.get::<i64, _>(2),
                )
            })
            .collect();
        tx.commit().await.map_err(unavailable)?;
        Ok(Revocations {
            tasks,
            certificates,
            sequence,
        })
    }
}

#[cfg(test)]
mod test_issuance {
    use crate::audit::{AuditEntry, Outcome, event};
    use crate::store::{CertificateRecord, Issuance, TaskRecord, TokenUse};

    /// An issuance signed by `ca_key_id` with `serial`: for a new task (id derived from the
    /// serial) unless `task` names an existing one, consuming `token` when given. The task
    /// runs from 100 to 10,000 and the certificate is valid from 100 to 1,000 (Unix
    /// seconds).
    pub(super) fn issuance(
        ca_key_id: &str,
        serial: i64,
        task: Option<&str>,
        token: Option<&str>,
    ) -> Issuance {
        let task_id = task.map_or_else(|| format!("{serial:032x}"), str::to_owned);
        Issuance {
            new_task: task.is_none().then(|| TaskRecord {
                id: task_id.clone(),
                issuer: "i".into(),
                subject: "s".into(),
                policy: "p".into(),
                logins: vec!["deploy".into()],
                hosts: vec!["*".into()],
                purpose: String::new(),
                state: "active".into(),
                created_at: 100,
                expires_at: 10_000,
                restrictions: Some(Default::default()),
            }),
            certificate: CertificateRecord {
                serial,
                task_id: task_id.clone(),
                ca_key_id: ca_key_id.into(),
                key_fingerprint: "SHA256:x".into(),
                principals: vec![format!("writ:{task_id}:deploy")],
                valid_after: 100,
                valid_before: 1_000,
                issued_at: 100,
                revoked_at: None,
                renewed_from: None,
            },
            audit: vec![{
                let mut e = AuditEntry::new(event::CERT_ISSUED, Outcome::Success);
                e.serial = Some(serial.to_string());
                e
            }],
            token_use: token.map(|token| TokenUse {
                issuer: "i".into(),
                token_hash: token.into(),
                expires_at: 10_000,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::{
        SQL_CERTIFICATE_LIVE, SQL_FEED_CERTIFICATES, SQL_FEED_TASKS, SQL_LIVE_RENEWAL_TREE,
    };

    use crate::audit::{self, AuditEntry, Outcome, event};

    const BEFORE_0005: [&str; 4] = [
        include_str!("../../../migrations/sqlite/0001_init.sql"),
        include_str!("../../../migrations/sqlite/0002_used_tokens.sql"),
        include_str!("../../../migrations/sqlite/0003_ca_key_rotation.sql"),
        include_str!("../../../migrations/sqlite/0004_audit_checkpoints_sinks_prune.sql"),
    ];
    const MIGRATION_0005: &str =
        include_str!("../../../migrations/sqlite/0005_fewer_pages_per_issuance.sql");
    const MIGRATION_0006: &str =
        include_str!("../../../migrations/sqlite/0006_used_tokens_by_expiry.sql");
    const MIGRATION_0007: &str =
        include_str!("../../../migrations/sqlite/0007_certificates_in_issue_order.sql");
    const MIGRATION_0008: &str =
        include_str!("../../../migrations/sqlite/0008_feed_indexes_for_ended_only.sql");
    const MIGRATION_0009: &str =
        include_str!("../../../migrations/sqlite/0009_task_restrictions.sql");
    const MIGRATION_0010: &str =
        include_str!("../../../migrations/sqlite/0010_certificates_renewed_from.sql");

    /// The single value `sql` selects.
    fn one<T: rusqlite::types::FromSql>(db: &Connection, sql: &str) -> T {
        db.query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Migration 0005 rebuilds two tables, 0006 re-keys the consumed tokens, 0007 the
    /// certificates and 0008 the feed's indexes: everything in them survives, the guards
    /// (unique tokens and serials, append-only audit log) still hold afterwards, and the
    /// feed's queries read its partial indexes.
    #[test]
    fn migrations_0005_to_0008_keep_tokens_records_certificates_and_guards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Connection::open(dir.path().join("writ.db")).expect("open");
        for sql in BEFORE_0005 {
            db.execute_batch(sql).expect("older migration");
        }
        db.execute(
            "INSERT INTO used_tokens (issuer, token_hash, expires_at) VALUES ('i', 'h1', 9)",
            [],
        )
        .expect("token");
        db.execute_batch(
            "INSERT INTO ca_keys (id, algorithm, state, fingerprint, public_key, private_key, \
             created_at) VALUES ('k', 'ssh-ed25519', 'active', 'SHA256:k', 'pk', 'sk', 0); \
             INSERT INTO tasks (id, issuer, subject, policy, logins, hosts, state, created_at, \
             expires_at) VALUES ('t', 'i', 's', 'p', '[]', '[]', 'active', 0, 9); \
             INSERT INTO certificates (serial, task_id, ca_key_id, key_fingerprint, principals, \
             valid_after, valid_before, issued_at) VALUES (77, 't', 'k', 'SHA256:x', '[]', 0, 9, 0);",
        )
        .expect("certificate");
        let mut prev = audit::GENESIS_HASH.to_owned();
        let mut hashes = Vec::new();
        for seq in 1..=3_i64 {
            let mut entry = AuditEntry::new(event::CERT_ISSUED, Outcome::Success);
            entry.serial = Some(seq.to_string());
            let time = format!("2026-11-25T00:00:0{seq}Z");
            let hash = audit::chain_hash(seq, &time, &entry, &prev);
            db.execute(
                "INSERT INTO audit_events (seq, time, event, outcome, serial, logins, hosts, \
                 prev_hash, hash) VALUES (?1, ?2, ?3, 'success', ?4, '[]', '[]', ?5, ?6)",
                rusqlite::params![seq, time, entry.event, entry.serial, prev, hash],
            )
            .expect("record");
            hashes.push(hash.clone());
            prev = hash;
        }

        db.execute_batch(MIGRATION_0005).expect("0005");

        let token: i64 = one(
            &db,
            "SELECT expires_at FROM used_tokens WHERE token_hash = 'h1'",
        );
        assert_eq!(token, 9);
        assert!(
            db.execute(
                "INSERT INTO used_tokens (issuer, token_hash, expires_at) VALUES ('i', 'h1', 9)",
                [],
            )
            .is_err(),
            "a token is still recorded once"
        );
        let mut read = db
            .prepare("SELECT hash FROM audit_events ORDER BY seq")
            .expect("select");
        let after: Vec<String> = read
            .query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("hashes");
        assert_eq!(after, hashes);
        assert!(
            db.execute("UPDATE audit_events SET reason = 'x'", [])
                .is_err()
        );
        assert!(
            db.execute("DELETE FROM audit_events WHERE seq = 1", [])
                .is_err()
        );

        // 0006 keeps tokens recorded so far under their old key and starts a new table.
        db.execute_batch(MIGRATION_0006).expect("0006");
        let kept: i64 = one(
            &db,
            "SELECT expires_at FROM used_tokens_before_0006 \
             WHERE issuer = 'i' AND token_hash = 'h1'",
        );
        assert_eq!(kept, 9);
        let fresh: i64 = one(&db, "SELECT COUNT(*) FROM used_tokens");
        assert_eq!(fresh, 0);
        let insert =
            "INSERT INTO used_tokens (issuer, token_hash, expires_at) VALUES ('i', 'h2', 70)";
        db.execute(insert, []).expect("new token");
        assert!(db.execute(insert, []).is_err(), "a token is recorded once");

        // 0007 stores certificates in issue order; the row and its serial's uniqueness stay.
        db.execute_batch(MIGRATION_0007).expect("0007");
        let task: String = one(&db, "SELECT task_id FROM certificates WHERE serial = 77");
        assert_eq!(task, "t");
        assert!(
            db.execute(
                "INSERT INTO certificates (serial, task_id, ca_key_id, key_fingerprint, \
                 principals, valid_after, valid_before, issued_at) \
                 VALUES (77, 't', 'k', 'SHA256:y', '[]', 0, 9, 0)",
                [],
            )
            .is_err(),
            "a serial is issued once"
        );

        // 0008: the feed's range indexes hold only ended tasks and revoked certificates,
        // and the feed's queries read them.
        db.execute_batch(MIGRATION_0008).expect("0008");
        db.execute_batch(
            "INSERT INTO tasks (id, issuer, subject, policy, logins, hosts, state, created_at, \
             expires_at, ended_at) VALUES ('done', 'i', 's', 'p', '[]', '[]', 'completed', 0, 99, 5); \
             INSERT INTO certificates (serial, task_id, ca_key_id, key_fingerprint, principals, \
             valid_after, valid_before, issued_at, revoked_at) \
             VALUES (78, 'done', 'k', 'SHA256:z', '[]', 0, 99, 0, 5);",
        )
        .expect("ended task and revoked certificate");
        let in_index = |index: &str| -> i64 {
            one(
                &db,
                &format!(
                    "SELECT COUNT(*) FROM tasks INDEXED BY {index} WHERE state != 'active' AND expires_at > 0"
                ),
            )
        };
        assert_eq!(in_index("tasks_ended_expires_at"), 1);
        let revoked: i64 = one(
            &db,
            "SELECT COUNT(*) FROM certificates INDEXED BY certificates_revoked_valid_before \
             WHERE revoked_at IS NOT NULL AND valid_before > 0",
        );
        assert_eq!(revoked, 1);
        for (sql, index) in [
            (SQL_FEED_TASKS, "tasks_ended_expires_at"),
            (SQL_FEED_CERTIFICATES, "certificates_revoked_valid_before"),
        ] {
            let plan: Vec<String> = db
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan")
                .query_map([10], |r| r.get(3))
                .expect("plan rows")
                .collect::<Result<_, _>>()
                .expect("plan text");
            assert!(
                plan.iter().any(|step| step.contains(index)),
                "{sql} should read {index}: {plan:?}"
            );
        }
        let feed_tasks: Vec<String> = db
            .prepare(SQL_FEED_TASKS)
            .expect("feed tasks")
            .query_map([10], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("ids");
        assert_eq!(feed_tasks, ["done"]);
    }

    /// The steps of SQLite's plan for `sql` with `parameter`.
    fn plan(db: &Connection, sql: &str, parameter: i64) -> Vec<String> {
        db.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan")
            .query_map([parameter], |r| r.get(3))
            .expect("plan rows")
            .collect::<Result<_, _>>()
            .expect("plan text")
    }

    /// Migrations 0009 and 0010: tasks opened before them keep NULL restrictions (read as
    /// "not recorded"), certificates issued before them were renewed from nothing, and
    /// both lookups of the renewal rules read an index: the proving certificate's state by
    /// serial, and the renewals of a certificate by the partial index of renewals.
    #[test]
    fn migrations_0009_0010_leave_older_rows_unrecorded_and_index_renewals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Connection::open(dir.path().join("writ.db")).expect("open");
        for sql in BEFORE_0005.iter().chain(&[
            MIGRATION_0005,
            MIGRATION_0006,
            MIGRATION_0007,
            MIGRATION_0008,
        ]) {
            db.execute_batch(sql).expect("older migration");
        }
        db.execute_batch(
            "INSERT INTO ca_keys (id, algorithm, state, fingerprint, public_key, private_key, \
             created_at) VALUES ('k', 'ssh-ed25519', 'active', 'SHA256:k', 'pk', 'sk', 0); \
             INSERT INTO tasks (id, issuer, subject, policy, logins, hosts, state, created_at, \
             expires_at) VALUES ('old', 'i', 's', 'p', '[]', '[]', 'active', 0, 9); \
             INSERT INTO certificates (serial, task_id, ca_key_id, key_fingerprint, principals, \
             valid_after, valid_before, issued_at) VALUES (77, 'old', 'k', 'SHA256:x', '[]', 0, 9, 0);",
        )
        .expect("rows before 0009 and 0010");

        db.execute_batch(MIGRATION_0009).expect("0009");
        db.execute_batch(MIGRATION_0010).expect("0010");
        let unrecorded: i64 = one(
            &db,
            "SELECT COUNT(*) FROM tasks WHERE id = 'old' AND extensions IS NULL \
             AND force_command IS NULL AND source_address IS NULL",
        );
        assert_eq!(unrecorded, 1);
        let parentless: i64 = one(
            &db,
            "SELECT COUNT(*) FROM certificates WHERE serial = 77 AND renewed_from IS NULL",
        );
        assert_eq!(parentless, 1);
        db.execute_batch(
            "INSERT INTO certificates (serial, task_id, ca_key_id, key_fingerprint, principals, \
             valid_after, valid_before, issued_at, renewed_from) \
             VALUES (78, 'old', 'k', 'SHA256:y', '[]', 0, 9, 0, 77), \
                    (79, 'old', 'k', 'SHA256:y', '[]', 0, 9, 0, 78);",
        )
        .expect("renewals");
        let tree: Vec<i64> = db
            .prepare(SQL_LIVE_RENEWAL_TREE)
            .expect("tree")
            .query_map([77], |r| r.get("serial"))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("serials");
        assert_eq!(tree, [77, 78, 79]);
        let in_index: i64 = one(
            &db,
            "SELECT COUNT(*) FROM certificates INDEXED BY certificates_renewed_from \
             WHERE renewed_from IS NOT NULL",
        );
        assert_eq!(in_index, 2, "the index holds renewals only");
        let steps = plan(&db, SQL_LIVE_RENEWAL_TREE, 77);
        assert!(
            steps
                .iter()
                .any(|s| s.contains("certificates_renewed_from")),
            "{steps:?}"
        );
        let steps = plan(&db, SQL_CERTIFICATE_LIVE, 77);
        assert!(steps.iter().all(|s| s.contains("INDEX")), "{steps:?}");
    }
}

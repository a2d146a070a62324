//! The SQLite backend (embedded, the default): WAL journal, `synchronous = FULL` so a
//! commit is on disk before a certificate leaves, one writer thread per process
//! ([`writer`]) plus `BEGIN IMMEDIATE` against other processes such as `writ admin`,
//! which also keeps the audit hash chain from forking, and read-only connections for
//! reads ([`connection::Readers`]). One driver (rusqlite, synchronous, on threads of its
//! own), one write path per operation. The SQL of this backend lives here and nowhere
//! else.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{
    Announcement, AppliedMigration, AuditFor, CaKeyRecord, CertificateRecord, FeedApplied,
    HostAuditFor, HostCertificateRecord, HostIssuance, HostRevocation, Inventory, InventoryChange,
    InventoryUpdate, Issuance, KeyUsage, KeyringChange, Revocations, RotationSchedule, Store,
    StoreError, TaskEnd, TaskRecord,
};
use crate::audit::{AuditEntry, AuditRecord};
use crate::metrics::Metrics;

mod audit_log;
mod chain;
mod connection;
pub(crate) mod copy;
mod host_certificates;
mod host_reports;
mod issuance;
mod keyring;
mod migrate;
mod private_files;
mod rows;
mod tasks;
mod writer;

use crate::store::arrivals::Arrivals;
use connection::Readers;
use rows::{audit_record, collect};
use writer::Writer;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    readers: Readers,
    writer: Writer,
    /// Issuances announced and on their way to `writer`, which waits for them.
    arrivals: Arrivals,
}

impl SqliteStore {
    /// Open or create the database file at `path` and run migrations.
    pub async fn open(path: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, None).await
    }

    /// [`SqliteStore::open`], the writer recording each transaction into `metrics`.
    pub async fn open_with(
        path: &str,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<SqliteStore, StoreError> {
        migrate(path).await?;
        let path = Path::new(path).to_owned();
        let arrivals = Arrivals::default();
        Ok(SqliteStore {
            readers: Readers::new(&path),
            writer: Writer::start(&path, arrivals.clone(), metrics)?,
            arrivals,
        })
    }
}

/// Create the database file at `path` if needed (privately), make its journal a WAL and
/// apply the migrations it has not recorded; returns those applied. What opening a store
/// does first, and all `writ admin store migrate` does.
pub async fn migrate(path: &str) -> Result<Vec<AppliedMigration>, StoreError> {
    let path = Path::new(path).to_owned();
    tokio::task::spawn_blocking(move || {
        private_files::prepare(&path)?;
        let mut setup = connection::open(&path)?;
        connection::use_wal(&setup)?;
        migrate::migrate(&mut setup)
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("opening the database stopped: {e}")))?
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.readers
            .read(|db| Ok(db.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    fn announce_issuance(&self) -> Announcement {
        Announcement::held_by(self.arrivals.expect())
    }

    async fn ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        self.readers.read(keyring::ca_keys).await
    }

    async fn change_keyring(&self, change: &KeyringChange) -> Result<(), StoreError> {
        let change = change.clone();
        self.writer
            .write(move |tx| keyring::change_keyring(tx, &change))
            .await
    }

    async fn ca_key_usage(&self, now_unix: i64) -> Result<Vec<KeyUsage>, StoreError> {
        self.readers
            .read(move |db| keyring::ca_key_usage(db, now_unix))
            .await
    }

    async fn rotation_schedule(&self) -> Result<Option<RotationSchedule>, StoreError> {
        self.readers.read(keyring::rotation_schedule).await
    }

    async fn set_rotation_schedule(
        &self,
        schedule: Option<RotationSchedule>,
        audit: &AuditEntry,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let audit = audit.clone();
        self.writer
            .write(move |tx| keyring::set_rotation_schedule(tx, schedule, &audit, at))
            .await
    }

    async fn record_issuance(&self, issuance: Issuance) -> Result<(), StoreError> {
        self.writer.record(issuance).await
    }

    async fn record_host_issuance(&self, issuance: HostIssuance) -> Result<(), StoreError> {
        self.writer
            .write(move |tx| host_certificates::record(tx, &issuance))
            .await
    }

    async fn host_certificates(
        &self,
        now_unix: i64,
        name: Option<&str>,
    ) -> Result<Vec<HostCertificateRecord>, StoreError> {
        let name = name.map(str::to_owned);
        self.readers
            .read(move |db| host_certificates::list(db, now_unix, name.as_deref()))
            .await
    }

    async fn revoke_host_certificates(
        &self,
        which: &HostRevocation,
        now: OffsetDateTime,
        audit: HostAuditFor,
    ) -> Result<Vec<HostCertificateRecord>, StoreError> {
        let which = which.clone();
        self.writer
            .write(move |tx| host_certificates::revoke(tx, &which, now, audit))
            .await
    }

    async fn prune_used_tokens(&self, now_unix: i64) -> Result<u64, StoreError> {
        self.writer
            .write(move |tx| tasks::prune_used_tokens(tx, now_unix))
            .await
    }

    async fn audit_records(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        self.readers
            .read(move |db| {
                let mut statement = db.prepare_cached(
                    "SELECT * FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                collect(statement.query([after, limit])?, audit_record)
            })
            .await
    }

    async fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let id = id.to_owned();
        self.readers.read(move |db| tasks::task(db, &id)).await
    }

    async fn task_certificates(&self, task_id: &str) -> Result<Vec<CertificateRecord>, StoreError> {
        let task_id = task_id.to_owned();
        self.readers
            .read(move |db| tasks::task_certificates(db, &task_id))
            .await
    }

    async fn certificate(&self, serial: i64) -> Result<Option<CertificateRecord>, StoreError> {
        self.readers
            .read(move |db| tasks::certificate(db, serial))
            .await
    }

    async fn end_task(
        &self,
        end: &TaskEnd,
        audit: AuditFor,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let end = end.clone();
        self.writer
            .write(move |tx| tasks::end_task(tx, &end, audit))
            .await
    }

    async fn revoke_certificate(
        &self,
        serial: i64,
        now: OffsetDateTime,
        audit: AuditFor,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        self.writer
            .write(move |tx| tasks::revoke_certificate(tx, serial, now, audit))
            .await
    }

    async fn revocations(&self, now_unix: i64) -> Result<Revocations, StoreError> {
        self.readers
            .read(move |db| tasks::revocations(db, now_unix))
            .await
    }

    async fn active_tasks(&self, now_unix: i64) -> Result<i64, StoreError> {
        self.readers
            .read(move |db| tasks::active_tasks(db, now_unix))
            .await
    }

    async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        now_unix: i64,
        until_unix: i64,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.writer
            .write(move |tx| {
                let changed = tx.execute(
                    super::SQL_HOLD_LEASE,
                    rusqlite::params![name, holder, until_unix, now_unix],
                )?;
                Ok(changed == 1)
            })
            .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.writer
            .write(move |tx| {
                tx.execute(super::SQL_RELEASE_LEASE, rusqlite::params![name, holder])?;
                Ok(())
            })
            .await
    }

    async fn record_feed_applied(&self, report: FeedApplied) -> Result<(), StoreError> {
        self.writer
            .write(move |tx| host_reports::record_feed_applied(tx, &report))
            .await
    }

    async fn feeds_applied(&self) -> Result<Vec<FeedApplied>, StoreError> {
        self.readers.read(host_reports::feeds_applied).await
    }

    async fn record_inventory(
        &self,
        update: InventoryUpdate,
    ) -> Result<InventoryChange, StoreError> {
        self.writer
            .write(move |tx| host_reports::record_inventory(tx, update))
            .await
    }

    async fn inventory(&self, gone_since: Option<i64>) -> Result<Inventory, StoreError> {
        self.readers
            .read(move |db| host_reports::inventory(db, gone_since))
            .await
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::issuance::SQL_CERTIFICATE_LIVE;
    use super::tasks::{SQL_FEED_CERTIFICATES, SQL_FEED_TASKS, SQL_LIVE_RENEWAL_TREE};
    use super::{SqliteStore, Store, StoreError};
    use crate::store::contract::{issuance, with_active_key};

    use crate::audit::{self, AuditEntry, Outcome, event};

    /// A fresh store in a temporary directory.
    async fn open() -> (tempfile::TempDir, std::sync::Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let store = SqliteStore::open(path.to_str().expect("path"))
            .await
            .expect("open");
        (dir, std::sync::Arc::new(store))
    }

    crate::store::contract::store_contract_tests!(open);

    /// A token consumed before migration 0006 (kept in its own table, keyed without the
    /// expiry) is still refused, and the refusal writes nothing. Only an old database can
    /// hold one, so the test writes it behind the store, as that database would have it.
    #[tokio::test]
    async fn a_token_consumed_before_migration_0006_is_still_refused() {
        let (dir, store) = open().await;
        let key_id = with_active_key(store.as_ref()).await;
        Connection::open(dir.path().join("writ.db"))
            .expect("open")
            .execute(
                "INSERT INTO used_tokens_before_0006 (issuer, token_hash, expires_at) \
                 VALUES ('i', 'old', 10000)",
                [],
            )
            .expect("old token");
        let again = store
            .record_issuance(issuance(&key_id, 9, None, Some("old")))
            .await;
        assert!(matches!(again, Err(StoreError::TokenReused)), "{again:?}");
        assert!(store.certificate(9).await.expect("read").is_none());
        store
            .record_issuance(issuance(&key_id, 10, None, Some("new")))
            .await
            .expect("a fresh token");
    }

    /// Readers cannot write: every write goes through the writer.
    #[tokio::test]
    async fn readers_are_read_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let store = SqliteStore::open(path.to_str().expect("path"))
            .await
            .expect("open");
        let refused = store
            .readers
            .read(|db| Ok(db.execute("DELETE FROM used_tokens", [])?))
            .await;
        assert!(refused.is_err(), "{refused:?}");
    }

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

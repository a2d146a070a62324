//! The PostgreSQL backend (`postgres://…`): several `writ serve` replicas, and `writ
//! admin`, sharing one database. One driver (sqlx, async, a pool of connections on the
//! server's runtime), one write path per operation; the SQL of this backend lives here
//! and nowhere else.
//!
//! What the database enforces, so that no process needs to know about the others:
//! unique serials, task ids and consumed tokens (primary keys, `INSERT … ON CONFLICT DO
//! NOTHING`), one `active` and one `next` CA key (partial unique indexes), task and
//! certificate states checked and changed under row locks in the writing transaction (a
//! task ended by one process is refused by another at once), and an audit chain appended
//! under one transaction-scoped advisory lock ([`chain`]), so it never forks.
//!
//! Issuances are grouped into one transaction per batch by one writer task per process
//! ([`writer`]), each in a savepoint of its own; every other write runs in a transaction
//! of its own on the pool, and reads run on the pool directly. This module never reads a
//! clock and never shows a password (see [`connection`]).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::arrivals::Arrivals;
use super::{
    Announcement, AppliedMigration, AuditFor, CaKeyRecord, CertificateRecord, FeedApplied,
    HostAuditFor, HostCertificateRecord, HostIssuance, HostRevocation, Inventory, InventoryChange,
    InventoryUpdate, Issuance, KeyUsage, KeyringChange, Revocations, RotationSchedule, Store,
    StoreError, StoreOptions, TaskEnd, TaskRecord,
};
use crate::audit::{AuditEntry, AuditRecord};
use crate::metrics::Metrics;

mod audit_log;
mod batch;
mod chain;
mod connection;
pub(crate) mod copy;
mod host_certificates;
mod host_reports;
mod issuance;
mod keyring;
mod migrate;
mod rows;
mod tasks;
mod writer;

pub use connection::{is_postgres_url, url_has_password};
use rows::{audit_record, decode_all};
use writer::Writer;

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    pool: PgPool,
    writer: Writer,
    /// Issuances announced and on their way to `writer`, which waits for them.
    arrivals: Arrivals,
}

impl PgStore {
    /// Connect to the database `options` names, run migrations, and start the writer
    /// task (on the current tokio runtime).
    pub async fn open(
        options: &StoreOptions,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<PgStore, StoreError> {
        let connect = connection::connect_options(options)?;
        let pool = connection::pool(connect, options).await?;
        migrate::migrate(&pool).await?;
        let arrivals = Arrivals::default();
        Ok(PgStore {
            writer: Writer::start(pool.clone(), options.pool_size, arrivals.clone(), metrics),
            pool,
            arrivals,
        })
    }
}

/// Connect to the database `options` names and apply the migrations it has not recorded
/// (under the migrator's advisory lock); returns those applied. What opening a store does
/// first, and all `writ admin store migrate` does.
pub async fn migrate(options: &StoreOptions) -> Result<Vec<AppliedMigration>, StoreError> {
    let connect = connection::connect_options(options)?;
    let mut one = options.clone();
    one.pool_size = 1;
    let pool = connection::pool(connect, &one).await?;
    let applied = migrate::migrate(&pool).await;
    pool.close().await;
    applied
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn announce_issuance(&self) -> Announcement {
        Announcement::held_by(self.arrivals.expect())
    }

    async fn ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        keyring::ca_keys(&mut *self.pool.acquire().await?).await
    }

    async fn change_keyring(&self, change: &KeyringChange) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        keyring::change_keyring(&mut tx, change).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ca_key_usage(&self, now_unix: i64) -> Result<Vec<KeyUsage>, StoreError> {
        keyring::ca_key_usage(&mut *self.pool.acquire().await?, now_unix).await
    }

    async fn rotation_schedule(&self) -> Result<Option<RotationSchedule>, StoreError> {
        keyring::rotation_schedule(&mut *self.pool.acquire().await?).await
    }

    async fn set_rotation_schedule(
        &self,
        schedule: Option<RotationSchedule>,
        audit: &AuditEntry,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        keyring::set_rotation_schedule(&mut tx, schedule, audit, at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_issuance(&self, issuance: Issuance) -> Result<(), StoreError> {
        self.writer.record(issuance).await
    }

    async fn record_host_issuance(&self, issuance: HostIssuance) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        host_certificates::record(&mut tx, &issuance).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn host_certificates(
        &self,
        now_unix: i64,
        name: Option<&str>,
    ) -> Result<Vec<HostCertificateRecord>, StoreError> {
        host_certificates::list(&mut *self.pool.acquire().await?, now_unix, name).await
    }

    async fn revoke_host_certificates(
        &self,
        which: &HostRevocation,
        now: OffsetDateTime,
        audit: HostAuditFor,
    ) -> Result<Vec<HostCertificateRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let revoked = host_certificates::revoke(&mut tx, which, now, audit).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn prune_used_tokens(&self, now_unix: i64) -> Result<u64, StoreError> {
        tasks::prune_used_tokens(&mut *self.pool.acquire().await?, now_unix).await
    }

    async fn audit_records(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        decode_all(&rows, audit_record)
    }

    async fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        tasks::task(&mut *self.pool.acquire().await?, id).await
    }

    async fn task_certificates(&self, task_id: &str) -> Result<Vec<CertificateRecord>, StoreError> {
        tasks::task_certificates(&mut *self.pool.acquire().await?, task_id).await
    }

    async fn certificate(&self, serial: i64) -> Result<Option<CertificateRecord>, StoreError> {
        tasks::certificate(&mut *self.pool.acquire().await?, serial).await
    }

    async fn end_task(
        &self,
        end: &TaskEnd,
        audit: AuditFor,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let live = tasks::end_task(&mut tx, end, audit).await?;
        tx.commit().await?;
        Ok(live)
    }

    async fn revoke_certificate(
        &self,
        serial: i64,
        now: OffsetDateTime,
        audit: AuditFor,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let revoked = tasks::revoke_certificate(&mut tx, serial, now, audit).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn revocations(&self, now_unix: i64) -> Result<Revocations, StoreError> {
        // One snapshot for the sequence number and both lists.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let revocations = tasks::revocations(&mut tx, now_unix).await?;
        tx.commit().await?;
        Ok(revocations)
    }

    async fn active_tasks(&self, now_unix: i64) -> Result<i64, StoreError> {
        tasks::active_tasks(&mut *self.pool.acquire().await?, now_unix).await
    }

    async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        now_unix: i64,
        until_unix: i64,
    ) -> Result<bool, StoreError> {
        let granted = sqlx::query(super::SQL_HOLD_LEASE)
            .bind(name)
            .bind(holder)
            .bind(until_unix)
            .bind(now_unix)
            .execute(&self.pool)
            .await?;
        Ok(granted.rows_affected() == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(super::SQL_RELEASE_LEASE)
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_feed_applied(&self, report: FeedApplied) -> Result<(), StoreError> {
        host_reports::record_feed_applied(&mut *self.pool.acquire().await?, &report).await
    }

    async fn feeds_applied(&self) -> Result<Vec<FeedApplied>, StoreError> {
        host_reports::feeds_applied(&mut *self.pool.acquire().await?).await
    }

    async fn record_inventory(
        &self,
        update: InventoryUpdate,
    ) -> Result<InventoryChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        let change = host_reports::record_inventory(&mut tx, update).await?;
        tx.commit().await?;
        Ok(change)
    }

    async fn inventory(&self, gone_since: Option<i64>) -> Result<Inventory, StoreError> {
        // One snapshot for the hosts and their findings.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let inventory = host_reports::inventory(&mut tx, gone_since).await?;
        tx.commit().await?;
        Ok(inventory)
    }
}

impl PgStore {
    /// The highest audit `seq` (0 for an empty log); for tests that compare replicas.
    #[cfg(test)]
    async fn audit_len(&self) -> i64 {
        use sqlx::Row;
        sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM audit_events")
            .fetch_one(&self.pool)
            .await
            .expect("audit length")
            .get::<i64, _>(0)
    }
}

#[cfg(test)]
pub(crate) mod scratch;
#[cfg(test)]
mod tests;

//! The PostgreSQL side of [`AuditLog`]: appends on their own, reads of the chain, signed
//! checkpoints, sink positions, and pruning under the `audit_prune_marker` guard (the
//! triggers of `migrations/postgres/0001_init.sql` refuse any other delete). Every write
//! runs in a transaction of its own and appends through `super::chain`; reads run on a
//! pooled connection. Never edits a record.

use async_trait::async_trait;
use sqlx::Row;
use time::OffsetDateTime;

use super::PgStore;
use super::chain::Chain;
use super::rows::{audit_record, decode_all};
use crate::audit::checkpoint::SignedCheckpoint;
use crate::audit::{self, AuditEntry, AuditRecord};
use crate::store::{AuditLog, StoreError};

#[async_trait]
impl AuditLog for PgStore {
    async fn append_audit_entries(
        &self,
        entries: Vec<AuditEntry>,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Chain::append_all(&mut tx, &entries, at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
            None => None,
        })
    }

    async fn audit_first_seq(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query("SELECT MIN(seq) FROM audit_events")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    async fn audit_seq_at_time(&self, time: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query("SELECT MIN(seq) FROM audit_events WHERE time >= $1")
                .bind(time)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    async fn audit_trail(&self, task_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM audit_events WHERE task_id = $1 OR (task_id IS NULL AND \
             serial IN (SELECT serial FROM audit_events WHERE task_id = $1 AND \
             serial IS NOT NULL)) ORDER BY seq",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, audit_record)
    }

    async fn audit_checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, hash, time, ca_fingerprint, signature FROM audit_checkpoints \
             ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SignedCheckpoint::new(
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }

    async fn insert_audit_checkpoint(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, time, ca_fingerprint, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(checkpoint.seq)
        .bind(&checkpoint.hash)
        .bind(&checkpoint.time)
        .bind(&checkpoint.ca_fingerprint)
        .bind(&checkpoint.signature)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() > 0)
    }

    async fn audit_sink_position(&self, sink: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT seq FROM audit_sink_positions WHERE sink = $1")
            .bind(sink)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get(0)?,
            None => 0,
        })
    }

    async fn audit_sink_positions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT sink, seq FROM audit_sink_positions ORDER BY sink")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn set_audit_sink_position(
        &self,
        sink: &str,
        seq: i64,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_sink_positions (sink, seq, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq, \
             updated_at = excluded.updated_at",
        )
        .bind(sink)
        .bind(seq)
        .bind(audit::format_time(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn prune_audit(
        &self,
        start_seq: i64,
        start_hash: &str,
        record: Box<dyn FnOnce(u64) -> AuditEntry + Send>,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The chain's lock first: no record is appended (nor another prune run) meanwhile.
        let mut chain = Chain::lock(&mut tx).await?;
        let hash: Option<String> = sqlx::query("SELECT hash FROM audit_events WHERE seq = $1")
            .bind(start_seq)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        if hash.as_deref() != Some(start_hash) {
            return Err(StoreError::Conflict(format!(
                "audit record {start_seq} is not the one its checkpoint names"
            )));
        }
        sqlx::query("INSERT INTO audit_prune_marker (id, before_seq) VALUES (1, $1)")
            .bind(start_seq)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM audit_events WHERE seq < $1")
            .bind(start_seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM audit_prune_marker")
            .execute(&mut *tx)
            .await?;
        chain.push(&record(deleted), at)?;
        chain.insert(&mut tx).await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

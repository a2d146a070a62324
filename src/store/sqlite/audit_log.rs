//! The SQLite side of [`AuditLog`]: reads of the chain, signed checkpoints, sink
//! positions, and pruning under the `audit_prune_marker` guard of migration 0004. Writes
//! take the store's writer lock and `BEGIN IMMEDIATE`, like every other write.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteStore, append, audit_record, no_row, unavailable};
use crate::audit::checkpoint::SignedCheckpoint;
use crate::audit::{self, AuditEntry, AuditRecord};
use crate::store::{AuditLog, StoreError};

#[async_trait]
impl AuditLog for SqliteStore {
    async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .into_iter()
            .next();
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn audit_first_seq(&self) -> Result<Option<i64>, StoreError> {
        self.min_seq("SELECT MIN(seq) FROM audit_events", None)
            .await
    }

    async fn audit_seq_at_time(&self, time: &str) -> Result<Option<i64>, StoreError> {
        // Through the time index, this reads the records from `time` on (which an export
        // from there reads anyway); left to itself SQLite walks the log from its first
        // record in seq order until a time matches.
        self.min_seq(
            "SELECT MIN(seq) FROM audit_events INDEXED BY audit_events_time WHERE time >= $1",
            Some(time),
        )
        .await
    }

    async fn audit_trail(&self, task_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM audit_events WHERE task_id = $1 OR (task_id IS NULL AND serial IN \
             (SELECT serial FROM audit_events WHERE task_id = $1 AND serial IS NOT NULL)) \
             ORDER BY seq",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(audit_record).collect()
    }

    async fn audit_checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, hash, time, ca_fingerprint, signature FROM audit_checkpoints ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| SignedCheckpoint::new(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect())
    }

    async fn insert_audit_checkpoint(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, time, ca_fingerprint, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(checkpoint.seq)
        .bind(&checkpoint.hash)
        .bind(&checkpoint.time)
        .bind(&checkpoint.ca_fingerprint)
        .bind(&checkpoint.signature)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        tx.commit().await.map_err(unavailable)?;
        Ok(inserted > 0)
    }

    async fn audit_sink_position(&self, sink: &str) -> Result<i64, StoreError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM audit_sink_positions WHERE sink = $1")
                .bind(sink)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?
                .into_iter()
                .next();
        Ok(seq.unwrap_or(0))
    }

    async fn audit_sink_positions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT sink, seq FROM audit_sink_positions ORDER BY sink")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn set_audit_sink_position(&self, sink: &str, seq: i64) -> Result<(), StoreError> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO audit_sink_positions (sink, seq, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
        )
        .bind(sink)
        .bind(seq)
        .bind(audit::format_time(time::OffsetDateTime::now_utc()))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn prune_audit(
        &self,
        start_seq: i64,
        start_hash: &str,
        record: &(dyn Fn(u64) -> AuditEntry + Send + Sync),
    ) -> Result<u64, StoreError> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let hash: Option<String> =
            sqlx::query_scalar("SELECT hash FROM audit_events WHERE seq = $1")
                .bind(start_seq)
                .fetch_all(&mut *tx)
                .await
                .map_err(unavailable)?
                .into_iter()
                .next();
        if hash.as_deref() != Some(start_hash) {
            return Err(StoreError::Conflict(format!(
                "audit record {start_seq} is not the one its checkpoint names"
            )));
        }
        sqlx::query("INSERT INTO audit_prune_marker (id, before_seq) VALUES (1, $1)")
            .bind(start_seq)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let deleted = sqlx::query("DELETE FROM audit_events WHERE seq < $1")
            .bind(start_seq)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        sqlx::query("DELETE FROM audit_prune_marker")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        append(&mut tx, &record(deleted)).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(deleted)
    }
}

impl SqliteStore {
    /// The one value of a `MIN(seq)` query (`None` on an empty match), with `time` bound
    /// when given. Read with `fetch_all`, so the statement runs to its end and no pooled
    /// connection keeps a read snapshot (and with it the WAL) pinned.
    async fn min_seq(
        &self,
        sql: &'static str,
        time: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        let mut query = sqlx::query_scalar(sql);
        if let Some(time) = time {
            query = query.bind(time);
        }
        query
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .into_iter()
            .next()
            .ok_or_else(no_row)
    }
}

//! The SQLite side of [`AuditLog`]: appends on their own, reads of the chain, signed
//! checkpoints, sink positions, and pruning under the `audit_prune_marker` guard of
//! migration 0004. Writes run through the store's writer like every other write; reads
//! on a reader's connection.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::SqliteStore;
use super::chain::Chain;
use super::rows::{audit_record, collect};
use crate::audit::checkpoint::SignedCheckpoint;
use crate::audit::{self, AuditEntry, AuditRecord};
use crate::store::{AuditLog, StoreError};

/// The one value of a `MIN(seq)` query (`None` on an empty match).
fn min_seq(db: &Connection, sql: &str, time: Option<&str>) -> Result<Option<i64>, StoreError> {
    let mut statement = db.prepare_cached(sql)?;
    Ok(match time {
        Some(time) => statement.query_row([time], |row| row.get(0))?,
        None => statement.query_row([], |row| row.get(0))?,
    })
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append_audit_entries(
        &self,
        entries: Vec<AuditEntry>,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.writer
            .write(move |tx| Chain::append_all(tx, &entries, at))
            .await
    }

    async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        self.readers
            .read(|db| {
                Ok(db
                    .prepare_cached("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")?
                    .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?)
            })
            .await
    }

    async fn audit_first_seq(&self) -> Result<Option<i64>, StoreError> {
        self.readers
            .read(|db| min_seq(db, "SELECT MIN(seq) FROM audit_events", None))
            .await
    }

    async fn audit_seq_at_time(&self, time: &str) -> Result<Option<i64>, StoreError> {
        let time = time.to_owned();
        // Through the time index, this reads the records from `time` on (which an export
        // from there reads anyway); left to itself SQLite walks the log from its first
        // record in seq order until a time matches.
        self.readers
            .read(move |db| {
                min_seq(
                    db,
                    "SELECT MIN(seq) FROM audit_events INDEXED BY audit_events_time \
                     WHERE time >= ?1",
                    Some(&time),
                )
            })
            .await
    }

    async fn audit_trail(&self, task_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let task_id = task_id.to_owned();
        self.readers
            .read(move |db| {
                let mut statement = db.prepare_cached(
                    "SELECT * FROM audit_events WHERE task_id = ?1 OR (task_id IS NULL AND \
                     serial IN (SELECT serial FROM audit_events WHERE task_id = ?1 AND \
                     serial IS NOT NULL)) ORDER BY seq",
                )?;
                collect(statement.query([&task_id])?, audit_record)
            })
            .await
    }

    async fn audit_checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StoreError> {
        self.readers
            .read(|db| {
                let checkpoints = db
                    .prepare_cached(
                        "SELECT seq, hash, time, ca_fingerprint, signature \
                         FROM audit_checkpoints ORDER BY seq",
                    )?
                    .query_map([], |r| {
                        Ok(SignedCheckpoint::new(
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                        ))
                    })?
                    .collect::<Result<_, _>>()?;
                Ok(checkpoints)
            })
            .await
    }

    async fn insert_audit_checkpoint(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> Result<bool, StoreError> {
        let checkpoint = checkpoint.clone();
        self.writer
            .write(move |tx| {
                let inserted = tx.execute(
                    "INSERT INTO audit_checkpoints (seq, hash, time, ca_fingerprint, \
                     signature) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (seq) DO NOTHING",
                    params![
                        checkpoint.seq,
                        checkpoint.hash,
                        checkpoint.time,
                        checkpoint.ca_fingerprint,
                        checkpoint.signature
                    ],
                )?;
                Ok(inserted > 0)
            })
            .await
    }

    async fn audit_sink_position(&self, sink: &str) -> Result<i64, StoreError> {
        let sink = sink.to_owned();
        self.readers
            .read(move |db| {
                let seq: Option<i64> = db
                    .prepare_cached("SELECT seq FROM audit_sink_positions WHERE sink = ?1")?
                    .query_row([&sink], |row| row.get(0))
                    .optional()?;
                Ok(seq.unwrap_or(0))
            })
            .await
    }

    async fn audit_sink_positions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.readers
            .read(|db| {
                let positions = db
                    .prepare_cached("SELECT sink, seq FROM audit_sink_positions ORDER BY sink")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                Ok(positions)
            })
            .await
    }

    async fn set_audit_sink_position(
        &self,
        sink: &str,
        seq: i64,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let sink = sink.to_owned();
        self.writer
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO audit_sink_positions (sink, seq, updated_at) \
                     VALUES (?1, ?2, ?3) ON CONFLICT (sink) DO UPDATE SET \
                     seq = excluded.seq, updated_at = excluded.updated_at",
                    params![sink, seq, audit::format_time(at)],
                )?;
                Ok(())
            })
            .await
    }

    async fn prune_audit(
        &self,
        start_seq: i64,
        start_hash: &str,
        record: Box<dyn FnOnce(u64) -> AuditEntry + Send>,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let start_hash = start_hash.to_owned();
        self.writer
            .write(move |tx| {
                let hash: Option<String> = tx
                    .query_row(
                        "SELECT hash FROM audit_events WHERE seq = ?1",
                        [start_seq],
                        |row| row.get(0),
                    )
                    .optional()?;
                if hash.as_deref() != Some(start_hash.as_str()) {
                    return Err(StoreError::Conflict(format!(
                        "audit record {start_seq} is not the one its checkpoint names"
                    )));
                }
                tx.execute(
                    "INSERT INTO audit_prune_marker (id, before_seq) VALUES (1, ?1)",
                    [start_seq],
                )?;
                let deleted = tx.execute("DELETE FROM audit_events WHERE seq < ?1", [start_seq])?;
                tx.execute("DELETE FROM audit_prune_marker", [])?;
                let deleted = u64::try_from(deleted).unwrap_or(u64::MAX);
                Chain::append_all(tx, [&record(deleted)], at)?;
                Ok(deleted)
            })
            .await
    }
}

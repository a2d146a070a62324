//! What the audit log's readers and keepers need from storage, beyond the appends that
//! ride in every write transaction ([`super::Store`]): appends on their own, the head of
//! the chain, a task's records, signed checkpoints, per-sink delivery positions, and
//! pruning up to a signed checkpoint. Every [`super::Store`] is an [`AuditLog`].
//!
//! A record's time is the time its write was made at (`at`), never the store's clock;
//! the store keeps times in the chain from going backwards (a record is never stamped
//! before the one it follows).
//!
//! None of these methods edits a record. Pruning deletes whole records from the start of
//! the log only, in one transaction with the `audit.pruned` record that says so.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreError;
use crate::audit::checkpoint::SignedCheckpoint;
use crate::audit::{self, AuditEntry, AuditRecord};

/// The link a new record makes after the head (`seq`, `time`, `hash`): its `seq`, its
/// time (`at`, or the head's time if that is later, so times never go backwards) and its
/// chain hash. Every backend chains with this, so every chain verifies the same way.
pub(crate) fn next_link(
    head_seq: i64,
    head_time: &str,
    head_hash: &str,
    entry: &AuditEntry,
    at: OffsetDateTime,
) -> Result<(i64, String, String), StoreError> {
    let seq = head_seq
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("the audit log is full".into()))?;
    let stamped = audit::format_time(at);
    let time = if stamped.as_str() < head_time {
        head_time.to_owned()
    } else {
        stamped
    };
    let hash = audit::chain_hash(seq, &time, entry, head_hash);
    Ok((seq, time, hash))
}

/// The audit log's bookkeeping in the store.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Append `entries` on their own, in order, in one transaction, at `at`.
    async fn append_audit_entries(
        &self,
        entries: Vec<AuditEntry>,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Append one entry on its own, at `at`.
    async fn append_audit(&self, entry: &AuditEntry, at: OffsetDateTime) -> Result<(), StoreError> {
        self.append_audit_entries(vec![entry.clone()], at).await
    }
    /// The newest record's `seq` and `hash`, if any.
    async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError>;
    /// The oldest record's `seq`, if any (1 unless the log was pruned).
    async fn audit_first_seq(&self) -> Result<Option<i64>, StoreError>;
    /// The first `seq` whose time is at or after `time` (stored form, RFC 3339 UTC with
    /// milliseconds), if any.
    async fn audit_seq_at_time(&self, time: &str) -> Result<Option<i64>, StoreError>;
    /// Every record about a task — its `task_id`, or a serial of one of its certificates —
    /// in order.
    async fn audit_trail(&self, task_id: &str) -> Result<Vec<AuditRecord>, StoreError>;
    /// Every signed checkpoint in the store, oldest first.
    async fn audit_checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StoreError>;
    /// Store a signed checkpoint; false if one for that `seq` was already stored.
    async fn insert_audit_checkpoint(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> Result<bool, StoreError>;
    /// The last `seq` a sink delivered (0 if it never delivered).
    async fn audit_sink_position(&self, sink: &str) -> Result<i64, StoreError>;
    /// Every sink's last delivered `seq`.
    async fn audit_sink_positions(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Record that `sink` delivered everything up to `seq`, at `at`.
    async fn set_audit_sink_position(
        &self,
        sink: &str,
        seq: i64,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Delete every record before `start_seq`, which must exist with hash `start_hash`
    /// (the record a signed checkpoint vouches for), and append `record` (an
    /// `audit.pruned` entry, built from how many were deleted) in the same transaction,
    /// at `at`. Returns how many records were deleted. `Conflict` if the record at
    /// `start_seq` is not the one expected.
    async fn prune_audit(
        &self,
        start_seq: i64,
        start_hash: &str,
        record: Box<dyn FnOnce(u64) -> AuditEntry + Send>,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError>;
}

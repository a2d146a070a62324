//! The one place audit records enter the SQLite log: read the chain's head, then append
//! entries after it, each hashed over the one before ([`crate::audit::chain_hash`]).
//! Every write that records something — an issuance batch, a keyring change, a task's
//! end, an append on its own — appends through [`Chain`] inside its own transaction, as
//! the only writer, so the chain cannot fork.
//!
//! A record's time is the write's time (`at`), but never earlier than the record before
//! it: concurrent requests reach the writer in an order their clocks need not agree with,
//! and a log whose times go backwards would mislead whoever reads it by time.

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::rows::to_json;
use crate::audit::{self, AuditEntry, Outcome};
use crate::store::StoreError;

/// The newest audit record.
const SQL_CHAIN_HEAD: &str = "SELECT seq, hash, time FROM audit_events ORDER BY seq DESC LIMIT 1";
/// One audit record; parameters in [`AuditEntry`] order, see [`Chain::append`].
const SQL_INSERT_AUDIT: &str = "INSERT INTO audit_events (seq, time, event, outcome, issuer, \
     subject, policy, task_id, serial, key_fingerprint, logins, hosts, host, ca_fingerprint, \
     source_ip, reason, request_id, prev_hash, hash, purpose, command) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20, ?21)";

/// The head of the chain inside one write transaction.
pub(super) struct Chain {
    seq: i64,
    hash: String,
    /// The head record's time, stored form (empty for an empty log).
    time: String,
}

impl Chain {
    /// The chain's head as `tx` sees it: `(0, GENESIS_HASH)` for an empty log.
    pub(super) fn head(tx: &Connection) -> Result<Chain, StoreError> {
        let head = tx
            .prepare_cached(SQL_CHAIN_HEAD)?
            .query_row([], |row| {
                Ok(Chain {
                    seq: row.get(0)?,
                    hash: row.get(1)?,
                    time: row.get(2)?,
                })
            })
            .optional()?;
        Ok(head.unwrap_or_else(|| Chain {
            seq: 0,
            hash: audit::GENESIS_HASH.to_owned(),
            time: String::new(),
        }))
    }

    /// Append `entry` after the head, at `at` (or the head's time if that is later).
    pub(super) fn append(
        &mut self,
        tx: &Connection,
        entry: &AuditEntry,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let (seq, time, hash) =
            crate::store::audit_log::next_link(self.seq, &self.time, &self.hash, entry, at)?;
        tx.prepare_cached(SQL_INSERT_AUDIT)?.execute(params![
            seq,
            time,
            entry.event,
            entry.outcome.unwrap_or(Outcome::Success).as_str(),
            entry.issuer,
            entry.subject,
            entry.policy,
            entry.task_id,
            entry.serial,
            entry.key_fingerprint,
            to_json(&entry.logins),
            to_json(&entry.hosts),
            entry.host,
            entry.ca_fingerprint,
            entry.source_ip,
            entry.reason,
            entry.request_id,
            self.hash,
            hash,
            entry.purpose,
            entry.command,
        ])?;
        *self = Chain { seq, hash, time };
        Ok(())
    }

    /// Read the head and append every entry of `entries`, at `at`.
    pub(super) fn append_all<'e>(
        tx: &Connection,
        entries: impl IntoIterator<Item = &'e AuditEntry>,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut chain = Chain::head(tx)?;
        for entry in entries {
            chain.append(tx, entry, at)?;
        }
        Ok(())
    }
}

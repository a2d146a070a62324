//! The one place audit records enter the PostgreSQL log. Every transaction that appends
//! — an issuance batch, a keyring change, a task's end, a revocation, an append on its
//! own, a prune — first takes [`CHAIN_LOCK`], a transaction-scoped advisory lock
//! (`pg_advisory_xact_lock`), then reads the head (seq, hash, time) inside the
//! transaction, chains its records after it ([`crate::audit::chain_hash`], exactly as
//! the SQLite backend does, so `writ admin audit verify` walks either), inserts them, and
//! commits, which releases the lock. So appends from every process sharing the database
//! are serialised and the chain cannot fork; the primary key on `seq` is the backstop (a
//! second record with the same `seq` fails its transaction instead of forking).
//!
//! The lock is released only once the commit is visible, so records become visible in
//! `seq` order: a reader following the log (a sink, the feed's sequence number) never
//! sees a gap that fills in later.
//!
//! The lock is the last one a transaction takes (after its own rows are written and
//! locked), and nothing waits for a row lock while holding it, so it never takes part in
//! a deadlock and is held only for the head read, one insert and the commit.
//!
//! A record's time is its write's time (`at`), but never earlier than the record before
//! it: writes reach the lock in an order their clocks need not agree with.

use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use crate::audit::{self, AuditEntry, Outcome};
use crate::store::StoreError;

/// The advisory lock key that serialises appends to the audit chain ("writ" "chain" in
/// ASCII). Advisory locks are per database, so it is writ's own in writ's database.
pub(super) const CHAIN_LOCK: i64 = 0x7772_6974_6368_6e00;

const SQL_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
/// The newest audit record.
const SQL_HEAD: &str = "SELECT seq, hash, time FROM audit_events ORDER BY seq DESC LIMIT 1";
/// Many audit records in one statement: one array per column, lists as JSON arrays of
/// text (PostgreSQL arrays cannot nest lists of different lengths), unpacked in order.
const SQL_INSERT: &str = "INSERT INTO audit_events (seq, time, event, outcome, issuer, \
     subject, policy, task_id, serial, key_fingerprint, logins, hosts, host, ca_fingerprint, \
     source_ip, reason, request_id, prev_hash, hash, purpose, command) \
     SELECT r.seq, r.time, r.event, r.outcome, r.issuer, r.subject, r.policy, r.task_id, \
     r.serial, r.key_fingerprint, \
     ARRAY(SELECT e FROM jsonb_array_elements_text(r.logins::jsonb) WITH ORDINALITY AS l(e, n) \
       ORDER BY n), \
     ARRAY(SELECT e FROM jsonb_array_elements_text(r.hosts::jsonb) WITH ORDINALITY AS h(e, n) \
       ORDER BY n), \
     r.host, r.ca_fingerprint, r.source_ip, r.reason, r.request_id, r.prev_hash, r.hash, \
     r.purpose, r.command \
     FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
     $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], \
     $20::text[], $21::text[]) AS r(seq, time, event, outcome, issuer, subject, policy, task_id, serial, \
     key_fingerprint, logins, hosts, host, ca_fingerprint, source_ip, reason, request_id, \
     prev_hash, hash, purpose, command)";

/// The head of the chain inside one transaction that holds [`CHAIN_LOCK`], and the
/// records chained after it that are not inserted yet.
pub(super) struct Chain {
    seq: i64,
    hash: String,
    /// The head record's time, stored form (empty for an empty log).
    time: String,
    pending: Columns,
}

/// Records to insert, column by column.
#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    time: Vec<String>,
    event: Vec<String>,
    outcome: Vec<&'static str>,
    issuer: Vec<Option<String>>,
    subject: Vec<Option<String>>,
    policy: Vec<Option<String>>,
    task_id: Vec<Option<String>>,
    serial: Vec<Option<String>>,
    key_fingerprint: Vec<Option<String>>,
    logins: Vec<String>,
    hosts: Vec<String>,
    host: Vec<Option<String>>,
    ca_fingerprint: Vec<Option<String>>,
    source_ip: Vec<Option<String>>,
    reason: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
    purpose: Vec<Option<String>>,
    command: Vec<Option<String>>,
}

fn to_json(values: &[String]) -> String {
    serde_json::to_string(values).expect("a list of strings always serialises")
}

impl Chain {
    /// Take [`CHAIN_LOCK`] (waiting for any other appender to commit) and read the head as
    /// it is then: `(0, GENESIS_HASH)` for an empty log.
    pub(super) async fn lock(conn: &mut PgConnection) -> Result<Chain, StoreError> {
        sqlx::query(SQL_LOCK)
            .bind(CHAIN_LOCK)
            .execute(&mut *conn)
            .await?;
        let head = sqlx::query(SQL_HEAD).fetch_optional(&mut *conn).await?;
        let (seq, hash, time) = match head {
            Some(row) => (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
            None => (0, audit::GENESIS_HASH.to_owned(), String::new()),
        };
        Ok(Chain {
            seq,
            hash,
            time,
            pending: Columns::default(),
        })
    }

    /// Chain `entry` after the head, at `at` (or the head's time if that is later); it is
    /// written by [`Chain::insert`].
    pub(super) fn push(
        &mut self,
        entry: &AuditEntry,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let (seq, time, hash) =
            crate::store::audit_log::next_link(self.seq, &self.time, &self.hash, entry, at)?;
        let p = &mut self.pending;
        p.seq.push(seq);
        p.time.push(time.clone());
        p.event.push(entry.event.clone());
        p.outcome
            .push(entry.outcome.unwrap_or(Outcome::Success).as_str());
        p.issuer.push(entry.issuer.clone());
        p.subject.push(entry.subject.clone());
        p.policy.push(entry.policy.clone());
        p.task_id.push(entry.task_id.clone());
        p.serial.push(entry.serial.clone());
        p.key_fingerprint.push(entry.key_fingerprint.clone());
        p.logins.push(to_json(&entry.logins));
        p.hosts.push(to_json(&entry.hosts));
        p.host.push(entry.host.clone());
        p.ca_fingerprint.push(entry.ca_fingerprint.clone());
        p.source_ip.push(entry.source_ip.clone());
        p.reason.push(entry.reason.clone());
        p.request_id.push(entry.request_id.clone());
        p.prev_hash
            .push(std::mem::replace(&mut self.hash, hash.clone()));
        p.hash.push(hash);
        p.purpose.push(entry.purpose.clone());
        p.command.push(entry.command.clone());
        self.seq = seq;
        self.time = time;
        Ok(())
    }

    /// Insert every record pushed since the last insert, in one statement.
    pub(super) async fn insert(&mut self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.pending.seq.is_empty() {
            return Ok(());
        }
        let p = std::mem::take(&mut self.pending);
        sqlx::query(SQL_INSERT)
            .bind(p.seq)
            .bind(p.time)
            .bind(p.event)
            .bind(p.outcome)
            .bind(p.issuer)
            .bind(p.subject)
            .bind(p.policy)
            .bind(p.task_id)
            .bind(p.serial)
            .bind(p.key_fingerprint)
            .bind(p.logins)
            .bind(p.hosts)
            .bind(p.host)
            .bind(p.ca_fingerprint)
            .bind(p.source_ip)
            .bind(p.reason)
            .bind(p.request_id)
            .bind(p.prev_hash)
            .bind(p.hash)
            .bind(p.purpose)
            .bind(p.command)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Lock the chain, append `entries` at `at`, insert them. Takes no lock when there is
    /// nothing to append.
    pub(super) async fn append_all<'e>(
        conn: &mut PgConnection,
        entries: impl IntoIterator<Item = &'e AuditEntry>,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut entries = entries.into_iter().peekable();
        if entries.peek().is_none() {
            return Ok(());
        }
        let mut chain = Chain::lock(conn).await?;
        for entry in entries {
            chain.push(entry, at)?;
        }
        chain.insert(conn).await
    }
}

//! Tasks and certificates in SQLite, beyond issuance (`super::issuance`): reads, ending a
//! task, revoking a certificate with its renewals, the revocation feed's snapshot, and
//! pruning used tokens. Each function runs on a connection it is given — a reader's for
//! reads, the writer's transaction for writes — and never opens one itself.

use rusqlite::{Connection, params};
use time::OffsetDateTime;

use super::chain::Chain;
use super::issuance::{consume_token_alone, task_is_live};
use super::rows::{certificate_record, collect, task_record};
use crate::store::{AuditFor, CertificateRecord, Revocations, StoreError, TaskEnd, TaskRecord};

/// A certificate and every certificate renewed from it, directly or through other
/// renewals, that is not revoked yet: the certificate first, then in issue order. Each
/// step of the walk reads the partial index `certificates_renewed_from` (migration 0010).
pub(super) const SQL_LIVE_RENEWAL_TREE: &str = "WITH RECURSIVE tree (serial) AS (SELECT ?1 \
     UNION SELECT c.serial FROM certificates c JOIN tree ON c.renewed_from = tree.serial) \
     SELECT certificates.* FROM certificates JOIN tree USING (serial) \
     WHERE certificates.revoked_at IS NULL \
     ORDER BY certificates.serial != ?1, certificates.rowid";
/// The revocation feed's tasks: ended before they expired, read through the partial index
/// `tasks_ended_expires_at` (migration 0008) so the feed costs what it lists. `INDEXED BY`:
/// without statistics SQLite prefers walking the whole table in `id` order to sorting.
pub(super) const SQL_FEED_TASKS: &str = "SELECT id, expires_at FROM tasks \
     INDEXED BY tasks_ended_expires_at WHERE state != 'active' AND expires_at > ?1 ORDER BY id";
/// The revocation feed's certificates: revoked and still inside their validity window,
/// through the partial index `certificates_revoked_valid_before` (migration 0008).
pub(super) const SQL_FEED_CERTIFICATES: &str = "SELECT serial, ca_key_id, valid_before \
     FROM certificates INDEXED BY certificates_revoked_valid_before \
     WHERE revoked_at IS NOT NULL AND valid_before > ?1 ORDER BY serial";

pub(super) fn task(db: &Connection, id: &str) -> Result<Option<TaskRecord>, StoreError> {
    let mut statement = db.prepare_cached("SELECT * FROM tasks WHERE id = ?1")?;
    Ok(collect(statement.query([id])?, task_record)?.pop())
}

pub(super) fn task_certificates(
    db: &Connection,
    task_id: &str,
) -> Result<Vec<CertificateRecord>, StoreError> {
    let mut statement = db.prepare_cached(
        "SELECT * FROM certificates WHERE task_id = ?1 ORDER BY issued_at, serial",
    )?;
    collect(statement.query([task_id])?, certificate_record)
}

pub(super) fn certificate(
    db: &Connection,
    serial: i64,
) -> Result<Option<CertificateRecord>, StoreError> {
    let mut statement = db.prepare_cached("SELECT * FROM certificates WHERE serial = ?1")?;
    Ok(collect(statement.query([serial])?, certificate_record)?.pop())
}

/// End a live task and revoke its certificates, with the audit entries `audit` builds
/// from the certificates that were still live.
pub(super) fn end_task(
    tx: &Connection,
    end: &TaskEnd,
    audit: AuditFor,
) -> Result<Vec<CertificateRecord>, StoreError> {
    if let Some(token) = &end.token_use {
        consume_token_alone(tx, token)?;
    }
    let now_unix = end.now.unix_timestamp();
    if !task_is_live(tx, &end.task_id, now_unix)? {
        return Err(StoreError::TaskNotActive);
    }
    tx.execute(
        "UPDATE tasks SET state = ?1, ended_at = ?2, end_reason = ?3 WHERE id = ?4",
        params![end.state.as_str(), now_unix, end.reason, end.task_id],
    )?;
    let live = {
        let mut statement = tx.prepare_cached(
            "SELECT * FROM certificates WHERE task_id = ?1 AND revoked_at IS NULL \
             AND valid_before > ?2 ORDER BY issued_at, serial",
        )?;
        collect(
            statement.query(params![end.task_id, now_unix])?,
            certificate_record,
        )?
    };
    tx.execute(
        "UPDATE certificates SET revoked_at = ?1 WHERE task_id = ?2 AND revoked_at IS NULL",
        params![now_unix, end.task_id],
    )?;
    Chain::append_all(tx, &audit(&live), end.now)?;
    Ok(live)
}

/// Revoke a certificate and its live renewals (see `Store::revoke_certificate`). As the
/// only writer, this sees every renewal that committed before it; one that commits after
/// is refused there (`super::issuance::refusal`).
pub(super) fn revoke_certificate(
    tx: &Connection,
    serial: i64,
    now: OffsetDateTime,
    audit: AuditFor,
) -> Result<Vec<CertificateRecord>, StoreError> {
    let live = {
        let mut statement = tx.prepare_cached(SQL_LIVE_RENEWAL_TREE)?;
        collect(statement.query([serial])?, certificate_record)?
    };
    if live.first().map(|c| c.serial) != Some(serial) {
        return Ok(Vec::new());
    }
    let now_unix = now.unix_timestamp();
    for cert in &live {
        tx.prepare_cached("UPDATE certificates SET revoked_at = ?1 WHERE serial = ?2")?
            .execute(params![now_unix, cert.serial])?;
    }
    Chain::append_all(tx, &audit(&live), now)?;
    Ok(live)
}

/// What hosts must refuse at `now_unix`, read in one snapshot.
pub(super) fn revocations(db: &Connection, now_unix: i64) -> Result<Revocations, StoreError> {
    let snapshot = db.unchecked_transaction()?;
    let sequence: i64 = snapshot.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM audit_events",
        [],
        |row| row.get(0),
    )?;
    let tasks = snapshot
        .prepare_cached(SQL_FEED_TASKS)?
        .query_map([now_unix], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut certificates: Vec<(i64, String, i64)> = Vec::new();
    for sql in [
        SQL_FEED_CERTIFICATES,
        super::host_certificates::SQL_FEED_HOST_CERTIFICATES,
    ] {
        let rows = snapshot
            .prepare_cached(sql)?
            .query_map([now_unix], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        certificates.extend(rows);
    }
    snapshot.commit()?;
    Ok(Revocations {
        tasks,
        certificates,
        sequence,
    })
}

/// Tasks active and unexpired at `now_unix`. A scan of `tasks` (no index holds active
/// tasks: one would cost every issuance a page, migration 0008), run once per metrics
/// scrape on a reader.
pub(super) fn active_tasks(db: &Connection, now_unix: i64) -> Result<i64, StoreError> {
    Ok(db
        .prepare_cached("SELECT COUNT(*) FROM tasks WHERE state = 'active' AND expires_at > ?1")?
        .query_row([now_unix], |row| row.get(0))?)
}

/// Forget used tokens that expired before `now_unix`; returns how many.
pub(super) fn prune_used_tokens(tx: &Connection, now_unix: i64) -> Result<u64, StoreError> {
    let mut pruned = 0;
    for sql in [
        "DELETE FROM used_tokens WHERE expires_at < ?1",
        "DELETE FROM used_tokens_before_0006 WHERE expires_at < ?1",
    ] {
        pruned += tx.execute(sql, [now_unix])?;
    }
    Ok(u64::try_from(pruned).unwrap_or(u64::MAX))
}

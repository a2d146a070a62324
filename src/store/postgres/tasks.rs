//! Tasks and certificates in PostgreSQL, beyond issuance (`super::issuance`): reads,
//! ending a task, revoking a certificate with its renewals, the revocation feed's
//! snapshot, and pruning used tokens. Each function runs on the connection it is given —
//! a pooled one for reads, a transaction for writes — and never opens one itself nor
//! commits.
//!
//! The writes hold row locks that order them against issuances in other processes:
//! ending a task updates its row only if it is still active (an issuance holding the row
//! `FOR SHARE` commits first, and its certificate is then revoked with the others; one
//! that comes later sees the task ended), and revoking a certificate locks the
//! certificates it revokes before it looks for more renewals, until it finds none.

use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::chain::Chain;
use super::issuance::consume_token;
use super::rows::{certificate_record, decode_all, task_record};
use crate::store::{AuditFor, CertificateRecord, Revocations, StoreError, TaskEnd, TaskRecord};

/// Live certificates in the renewal tree of `$1` (the certificate itself included):
/// walked through the partial index `certificates_renewed_from`.
pub(super) const SQL_LIVE_RENEWAL_TREE: &str = "WITH RECURSIVE tree (serial) AS (SELECT $1::bigint \
     UNION SELECT c.serial FROM certificates c JOIN tree ON c.renewed_from = tree.serial) \
     SELECT certificates.* FROM certificates JOIN tree USING (serial) \
     WHERE certificates.revoked_at IS NULL ORDER BY certificates.issue_order";
/// The revocation feed's tasks: ended before they expired (partial index
/// `tasks_ended_expires_at`).
pub(super) const SQL_FEED_TASKS: &str = "SELECT id, expires_at FROM tasks \
     WHERE state <> 'active' AND expires_at > $1 ORDER BY id";
/// The revocation feed's certificates: revoked and still inside their validity window
/// (partial index `certificates_revoked_valid_before`).
pub(super) const SQL_FEED_CERTIFICATES: &str = "SELECT serial, ca_key_id, valid_before \
     FROM certificates WHERE revoked_at IS NOT NULL AND valid_before > $1 ORDER BY serial";

pub(super) async fn task(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<TaskRecord>, StoreError> {
    sqlx::query("SELECT * FROM tasks WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(task_record)
        .transpose()
}

pub(super) async fn task_certificates(
    conn: &mut PgConnection,
    task_id: &str,
) -> Result<Vec<CertificateRecord>, StoreError> {
    let rows =
        sqlx::query("SELECT * FROM certificates WHERE task_id = $1 ORDER BY issued_at, serial")
            .bind(task_id)
            .fetch_all(conn)
            .await?;
    decode_all(&rows, certificate_record)
}

pub(super) async fn certificate(
    conn: &mut PgConnection,
    serial: i64,
) -> Result<Option<CertificateRecord>, StoreError> {
    sqlx::query("SELECT * FROM certificates WHERE serial = $1")
        .bind(serial)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(certificate_record)
        .transpose()
}

/// End a live task and revoke its certificates, with the audit entries `audit` builds
/// from the certificates that were still live.
pub(super) async fn end_task(
    conn: &mut PgConnection,
    end: &TaskEnd,
    audit: AuditFor,
) -> Result<Vec<CertificateRecord>, StoreError> {
    if let Some(token) = &end.token_use {
        consume_token(conn, token).await?;
    }
    let now_unix = end.now.unix_timestamp();
    // The check and the change are one statement: under another writer it waits for the
    // row and re-checks the newest version.
    let ended = sqlx::query(
        "UPDATE tasks SET state = $1, ended_at = $2, end_reason = $3 \
         WHERE id = $4 AND state = 'active' AND expires_at > $2",
    )
    .bind(end.state.as_str())
    .bind(now_unix)
    .bind(&end.reason)
    .bind(&end.task_id)
    .execute(&mut *conn)
    .await?;
    if ended.rows_affected() != 1 {
        return Err(StoreError::TaskNotActive);
    }
    let rows = sqlx::query(
        "UPDATE certificates SET revoked_at = $1 WHERE task_id = $2 AND revoked_at IS NULL \
         RETURNING *",
    )
    .bind(now_unix)
    .bind(&end.task_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut live = decode_all(&rows, certificate_record)?;
    // Those still valid then, as the audit records them, in issue order.
    live.retain(|c| c.valid_before > now_unix);
    live.sort_by_key(|c| (c.issued_at, c.serial));
    for cert in &mut live {
        cert.revoked_at = None;
    }
    Chain::append_all(conn, &audit(&live), end.now).await?;
    Ok(live)
}

/// Revoke a certificate and its live renewals (see `Store::revoke_certificate`).
pub(super) async fn revoke_certificate(
    conn: &mut PgConnection,
    serial: i64,
    now: OffsetDateTime,
    audit: AuditFor,
) -> Result<Vec<CertificateRecord>, StoreError> {
    let live: Option<bool> =
        sqlx::query("SELECT revoked_at IS NULL FROM certificates WHERE serial = $1 FOR UPDATE")
            .bind(serial)
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
    if live != Some(true) {
        return Ok(Vec::new());
    }
    let now_unix = now.unix_timestamp();
    let mut revoked: Vec<CertificateRecord> = Vec::new();
    // A renewal that another process is committing holds its parent `FOR SHARE`: the
    // update below waits for it, and the next walk (a new statement, a new snapshot)
    // finds it. Once a certificate is updated here, later renewals from it are refused.
    loop {
        let rows = sqlx::query(SQL_LIVE_RENEWAL_TREE)
            .bind(serial)
            .fetch_all(&mut *conn)
            .await?;
        let found = decode_all(&rows, certificate_record)?;
        if found.is_empty() {
            break;
        }
        let serials: Vec<i64> = found.iter().map(|c| c.serial).collect();
        let updated = sqlx::query(
            "UPDATE certificates SET revoked_at = $1 \
             WHERE serial = ANY($2) AND revoked_at IS NULL RETURNING serial",
        )
        .bind(now_unix)
        .bind(&serials)
        .fetch_all(&mut *conn)
        .await?;
        let updated: Vec<i64> = updated
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        revoked.extend(found.into_iter().filter(|c| updated.contains(&c.serial)));
    }
    // The certificate first, then its renewals in issue order (the walks found them in
    // that order, each walk's after the one before).
    revoked.sort_by_key(|c| c.serial != serial);
    Chain::append_all(conn, &audit(&revoked), now).await?;
    Ok(revoked)
}

/// What hosts must refuse at `now_unix`, read in one snapshot: the caller runs this in a
/// `REPEATABLE READ` transaction.
pub(super) async fn revocations(
    conn: &mut PgConnection,
    now_unix: i64,
) -> Result<Revocations, StoreError> {
    let sequence: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM audit_events")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    let tasks = sqlx::query(SQL_FEED_TASKS)
        .bind(now_unix)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let mut certificates: Vec<(i64, String, i64)> = Vec::new();
    for sql in [
        SQL_FEED_CERTIFICATES,
        super::host_certificates::SQL_FEED_HOST_CERTIFICATES,
    ] {
        let rows = sqlx::query(sql)
            .bind(now_unix)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        certificates.extend(rows);
    }
    Ok(Revocations {
        tasks,
        certificates,
        sequence,
    })
}

/// Tasks active and unexpired at `now_unix`.
pub(super) async fn active_tasks(
    conn: &mut PgConnection,
    now_unix: i64,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("SELECT COUNT(*) FROM tasks WHERE state = 'active' AND expires_at > $1")
            .bind(now_unix)
            .fetch_one(conn)
            .await?
            .try_get(0)?,
    )
}

/// Forget used tokens that expired before `now_unix`; returns how many.
pub(super) async fn prune_used_tokens(
    conn: &mut PgConnection,
    now_unix: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM used_tokens WHERE expires_at < $1")
        .bind(now_unix)
        .execute(conn)
        .await?
        .rows_affected())
}

//! Host certificates in PostgreSQL: recording one request's certificates (in one
//! transaction with their audit records and the token they consume), listing them,
//! revoking them by serial or by name, and the KRL's revoked ones. Each function runs on
//! the connection it is given and never commits.
//!
//! Recording locks the signing host keys `FOR SHARE` (so a retirement or revocation waits
//! for it, as for user issuances, `super::issuance`), and inserts with `ON CONFLICT DO
//! NOTHING`, so a serial taken by another replica is a `Conflict`. Revoking locks the
//! certificates it revokes `FOR UPDATE`.

use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::chain::Chain;
use super::issuance::consume_token;
use super::rows::{decode_all, host_certificate_record};
use crate::store::{
    HostAuditFor, HostCertificateRecord, HostIssuance, HostRevocation, KeyState, StoreError,
};

/// The signing keys of a host issuance that are host keys, locked until the commit.
const SQL_LOCK_HOST_KEYS: &str =
    "SELECT id, state FROM ca_keys WHERE id = ANY($1) AND kind = 'host' ORDER BY id FOR SHARE";
const SQL_USER_SERIAL_EXISTS: &str = "SELECT 1 FROM certificates WHERE serial = $1";
const SQL_INSERT: &str = "INSERT INTO host_certificates (serial, ca_key_id, key_fingerprint, \
     principals, issuer, subject, policy, valid_after, valid_before, issued_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (serial) DO NOTHING RETURNING 1";
const SQL_LIST: &str = "SELECT * FROM host_certificates WHERE valid_before > $1 \
     AND ($2::text IS NULL OR $2::text = ANY(principals)) ORDER BY issued_at, serial";
const SQL_LIVE_BY_SERIAL: &str = "SELECT * FROM host_certificates \
     WHERE serial = $1 AND revoked_at IS NULL AND valid_before > $2 FOR UPDATE";
const SQL_LIVE_BY_NAME: &str = "SELECT * FROM host_certificates \
     WHERE $1 = ANY(principals) AND revoked_at IS NULL AND valid_before > $2 \
     ORDER BY issued_at, serial FOR UPDATE";
/// The KRL's host certificates: revoked and still inside their validity window (partial
/// index `host_certificates_revoked_valid_before`).
pub(super) const SQL_FEED_HOST_CERTIFICATES: &str = "SELECT serial, ca_key_id, valid_before \
     FROM host_certificates WHERE revoked_at IS NOT NULL AND valid_before > $1 ORDER BY serial";

/// Check and write `issuance`; any refusal is an error and the caller rolls back.
pub(super) async fn record(
    conn: &mut PgConnection,
    issuance: &HostIssuance,
) -> Result<(), StoreError> {
    let mut ids: Vec<String> = issuance
        .certificates
        .iter()
        .map(|c| c.ca_key_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    let keys = sqlx::query(SQL_LOCK_HOST_KEYS)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut may_sign = Vec::with_capacity(keys.len());
    for row in &keys {
        let state: &str = row.try_get(1)?;
        if KeyState::parse(state).is_some_and(KeyState::may_sign) {
            may_sign.push(row.try_get::<String, _>(0)?);
        }
    }
    if ids.iter().any(|id| !may_sign.contains(id)) {
        return Err(StoreError::Unavailable(
            "the signing key is not a host CA key that may sign".into(),
        ));
    }
    if let Some(token) = &issuance.token_use {
        consume_token(conn, token).await?;
    }
    for cert in &issuance.certificates {
        let taken = sqlx::query(SQL_USER_SERIAL_EXISTS)
            .bind(cert.serial)
            .fetch_optional(&mut *conn)
            .await?
            .is_some();
        let inserted = !taken
            && sqlx::query(SQL_INSERT)
                .bind(cert.serial)
                .bind(&cert.ca_key_id)
                .bind(&cert.key_fingerprint)
                .bind(&cert.principals)
                .bind(&cert.issuer)
                .bind(&cert.subject)
                .bind(&cert.policy)
                .bind(cert.valid_after)
                .bind(cert.valid_before)
                .bind(cert.issued_at)
                .fetch_optional(&mut *conn)
                .await?
                .is_some();
        if !inserted {
            return Err(StoreError::Conflict(format!(
                "serial {} is taken",
                cert.serial
            )));
        }
    }
    Chain::append_all(conn, &issuance.audit, issuance.at).await
}

/// Host certificates valid at `now_unix`, optionally only those naming `name`.
pub(super) async fn list(
    conn: &mut PgConnection,
    now_unix: i64,
    name: Option<&str>,
) -> Result<Vec<HostCertificateRecord>, StoreError> {
    let rows = sqlx::query(SQL_LIST)
        .bind(now_unix)
        .bind(name)
        .fetch_all(conn)
        .await?;
    decode_all(&rows, host_certificate_record)
}

/// Revoke the live host certificates `which` names, with their audit records.
pub(super) async fn revoke(
    conn: &mut PgConnection,
    which: &HostRevocation,
    now: OffsetDateTime,
    audit: HostAuditFor,
) -> Result<Vec<HostCertificateRecord>, StoreError> {
    let now_unix = now.unix_timestamp();
    let rows = match which {
        HostRevocation::Serial(serial) => sqlx::query(SQL_LIVE_BY_SERIAL).bind(*serial),
        HostRevocation::Name(name) => sqlx::query(SQL_LIVE_BY_NAME).bind(name.as_str()),
    }
    .bind(now_unix)
    .fetch_all(&mut *conn)
    .await?;
    let mut live = decode_all(&rows, host_certificate_record)?;
    if live.is_empty() {
        return Ok(live);
    }
    let serials: Vec<i64> = live.iter().map(|c| c.serial).collect();
    sqlx::query("UPDATE host_certificates SET revoked_at = $1 WHERE serial = ANY($2)")
        .bind(now_unix)
        .bind(&serials)
        .execute(&mut *conn)
        .await?;
    for cert in &mut live {
        cert.revoked_at = Some(now_unix);
    }
    Chain::append_all(conn, &audit(&live), now).await?;
    Ok(live)
}

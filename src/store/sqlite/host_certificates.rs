//! Host certificates in SQLite: recording one request's certificates (on the writer, in
//! one transaction with their audit records and the token they consume), listing them,
//! revoking them by serial or by name, and the KRL's revoked ones. Each function runs on
//! the connection it is given and never opens one itself.

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::chain::Chain;
use super::issuance::consume_token_alone;
use super::rows::{collect, host_certificate_record, to_json};
use crate::store::{
    HostAuditFor, HostCertificateRecord, HostIssuance, HostRevocation, KeyState, StoreError,
};

/// A host CA key's state (no row: no such key, or not a host key).
const SQL_HOST_KEY_STATE: &str = "SELECT state FROM ca_keys WHERE id = ?1 AND kind = 'host'";
/// Is this serial taken, by a user or a host certificate?
pub(super) const SQL_ANY_SERIAL_EXISTS: &str = "SELECT 1 FROM certificates WHERE serial = ?1 \
     UNION ALL SELECT 1 FROM host_certificates WHERE serial = ?1";
const SQL_INSERT: &str = "INSERT INTO host_certificates (serial, ca_key_id, key_fingerprint, \
     principals, issuer, subject, policy, valid_after, valid_before, issued_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
/// Unexpired host certificates, optionally only those naming `?2`.
const SQL_LIST: &str = "SELECT * FROM host_certificates WHERE valid_before > ?1 \
     AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(principals) WHERE value = ?2)) \
     ORDER BY issued_at, serial";
/// Live (unrevoked, unexpired) host certificates by serial.
const SQL_LIVE_BY_SERIAL: &str = "SELECT * FROM host_certificates \
     WHERE serial = ?1 AND revoked_at IS NULL AND valid_before > ?2";
/// Live host certificates naming a host.
const SQL_LIVE_BY_NAME: &str = "SELECT * FROM host_certificates \
     WHERE revoked_at IS NULL AND valid_before > ?2 \
     AND EXISTS (SELECT 1 FROM json_each(principals) WHERE value = ?1) ORDER BY issued_at, serial";
/// The KRL's host certificates: revoked and still inside their validity window, through
/// the partial index `host_certificates_revoked_valid_before` (migration 0013).
pub(super) const SQL_FEED_HOST_CERTIFICATES: &str = "SELECT serial, ca_key_id, valid_before \
     FROM host_certificates INDEXED BY host_certificates_revoked_valid_before \
     WHERE revoked_at IS NOT NULL AND valid_before > ?1 ORDER BY serial";

/// Check and write `issuance` in the writer's transaction `tx`; any refusal is an error,
/// which rolls the whole transaction back (nothing of it is written, its token included).
pub(super) fn record(tx: &Connection, issuance: &HostIssuance) -> Result<(), StoreError> {
    for cert in &issuance.certificates {
        let state = tx
            .prepare_cached(SQL_HOST_KEY_STATE)?
            .query_row([&cert.ca_key_id], |row| row.get::<_, String>(0))
            .optional()?;
        if !state
            .as_deref()
            .and_then(KeyState::parse)
            .is_some_and(KeyState::may_sign)
        {
            return Err(StoreError::Unavailable(
                "the signing key is not a host CA key that may sign".into(),
            ));
        }
        if tx
            .prepare_cached(SQL_ANY_SERIAL_EXISTS)?
            .exists([cert.serial])?
        {
            return Err(StoreError::Conflict(format!(
                "serial {} is taken",
                cert.serial
            )));
        }
    }
    if let Some(token) = &issuance.token_use {
        consume_token_alone(tx, token)?;
    }
    for cert in &issuance.certificates {
        tx.prepare_cached(SQL_INSERT)?.execute(params![
            cert.serial,
            cert.ca_key_id,
            cert.key_fingerprint,
            to_json(&cert.principals),
            cert.issuer,
            cert.subject,
            cert.policy,
            cert.valid_after,
            cert.valid_before,
            cert.issued_at,
        ])?;
    }
    Chain::append_all(tx, &issuance.audit, issuance.at)
}

/// Host certificates valid at `now_unix`, optionally only those naming `name`.
pub(super) fn list(
    db: &Connection,
    now_unix: i64,
    name: Option<&str>,
) -> Result<Vec<HostCertificateRecord>, StoreError> {
    let mut statement = db.prepare_cached(SQL_LIST)?;
    collect(
        statement.query(params![now_unix, name])?,
        host_certificate_record,
    )
}

/// Revoke the live host certificates `which` names, with their audit records.
pub(super) fn revoke(
    tx: &Connection,
    which: &HostRevocation,
    now: OffsetDateTime,
    audit: HostAuditFor,
) -> Result<Vec<HostCertificateRecord>, StoreError> {
    let now_unix = now.unix_timestamp();
    let mut live = match which {
        HostRevocation::Serial(serial) => collect(
            tx.prepare_cached(SQL_LIVE_BY_SERIAL)?
                .query(params![serial, now_unix])?,
            host_certificate_record,
        )?,
        HostRevocation::Name(name) => collect(
            tx.prepare_cached(SQL_LIVE_BY_NAME)?
                .query(params![name, now_unix])?,
            host_certificate_record,
        )?,
    };
    if live.is_empty() {
        return Ok(live);
    }
    for cert in &mut live {
        tx.prepare_cached("UPDATE host_certificates SET revoked_at = ?1 WHERE serial = ?2")?
            .execute(params![now_unix, cert.serial])?;
        cert.revoked_at = Some(now_unix);
    }
    Chain::append_all(tx, &audit(&live), now)?;
    Ok(live)
}

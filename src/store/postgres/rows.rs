//! How the store's records are laid out in PostgreSQL rows: the decoders from rows to
//! [`crate::store::records`], and the mapping of driver errors to [`StoreError`]. Reads
//! nothing and writes nothing on its own.

use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::audit::{AuditEntry, AuditRecord, Outcome};
use crate::store::{
    CaKeyRecord, CertificateRecord, HostCertificateRecord, KeyKind, KeyState, StoreError,
    TaskRecord, TaskRestrictions, TaskState,
};

/// SQLSTATE of a deadlock PostgreSQL broke by failing one side.
const DEADLOCK_DETECTED: &str = "40P01";

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_owned())
            }
            sqlx::Error::Database(db) if db.code().as_deref() == Some(DEADLOCK_DETECTED) => {
                StoreError::Unavailable(format!("{} (retry)", db.message()))
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
            // Connection failures, timeouts (the pool's and `statement_timeout`), a closed
            // pool, and every other refusal of the server.
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// Whether `e` came from the server about one statement (a constraint, a timeout, a
/// deadlock): the transaction is still there to roll back to a savepoint. Anything else
/// (the connection broke, the pool is closed) is the whole transaction's.
pub(super) fn is_statement_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(_))
}

pub(super) fn task_state(text: &str) -> Result<TaskState, StoreError> {
    TaskState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("task state {text:?}")))
}

fn key_state(text: &str) -> Result<KeyState, StoreError> {
    KeyState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("CA key state {text:?}")))
}

/// A `tasks` row (`SELECT *`).
pub(super) fn task_record(row: &PgRow) -> Result<TaskRecord, StoreError> {
    Ok(TaskRecord {
        id: row.try_get("id")?,
        issuer: row.try_get("issuer")?,
        subject: row.try_get("subject")?,
        policy: row.try_get("policy")?,
        logins: row.try_get("logins")?,
        hosts: row.try_get("hosts")?,
        purpose: row.try_get("purpose")?,
        state: task_state(row.try_get("state")?)?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        restrictions: match row.try_get::<Option<Vec<String>>, _>("extensions")? {
            None => None,
            Some(extensions) => Some(TaskRestrictions {
                extensions,
                force_command: row.try_get("force_command")?,
                source_address: row.try_get("source_address")?,
            }),
        },
    })
}

/// A `certificates` row (`SELECT *`).
pub(super) fn certificate_record(row: &PgRow) -> Result<CertificateRecord, StoreError> {
    Ok(CertificateRecord {
        serial: row.try_get("serial")?,
        task_id: row.try_get("task_id")?,
        ca_key_id: row.try_get("ca_key_id")?,
        key_fingerprint: row.try_get("key_fingerprint")?,
        principals: row.try_get("principals")?,
        valid_after: row.try_get("valid_after")?,
        valid_before: row.try_get("valid_before")?,
        issued_at: row.try_get("issued_at")?,
        revoked_at: row.try_get("revoked_at")?,
        renewed_from: row.try_get("renewed_from")?,
    })
}

/// A `host_certificates` row (`SELECT *`).
pub(super) fn host_certificate_record(row: &PgRow) -> Result<HostCertificateRecord, StoreError> {
    Ok(HostCertificateRecord {
        serial: row.try_get("serial")?,
        ca_key_id: row.try_get("ca_key_id")?,
        key_fingerprint: row.try_get("key_fingerprint")?,
        principals: row.try_get("principals")?,
        issuer: row.try_get("issuer")?,
        subject: row.try_get("subject")?,
        policy: row.try_get("policy")?,
        valid_after: row.try_get("valid_after")?,
        valid_before: row.try_get("valid_before")?,
        issued_at: row.try_get("issued_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// An `audit_events` row (`SELECT *`).
pub(super) fn audit_record(row: &PgRow) -> Result<AuditRecord, StoreError> {
    let outcome: &str = row.try_get("outcome")?;
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        time: row.try_get("time")?,
        entry: AuditEntry {
            event: row.try_get("event")?,
            outcome: Some(
                Outcome::parse(outcome)
                    .ok_or_else(|| StoreError::Corrupt(format!("bad outcome {outcome:?}")))?,
            ),
            issuer: row.try_get("issuer")?,
            subject: row.try_get("subject")?,
            policy: row.try_get("policy")?,
            task_id: row.try_get("task_id")?,
            serial: row.try_get("serial")?,
            key_fingerprint: row.try_get("key_fingerprint")?,
            logins: row.try_get("logins")?,
            hosts: row.try_get("hosts")?,
            host: row.try_get("host")?,
            ca_fingerprint: row.try_get("ca_fingerprint")?,
            source_ip: row.try_get("source_ip")?,
            reason: row.try_get("reason")?,
            request_id: row.try_get("request_id")?,
            purpose: row.try_get("purpose")?,
            command: row.try_get("command")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// A `ca_keys` row (`SELECT *`).
pub(super) fn ca_key_record(row: &PgRow) -> Result<CaKeyRecord, StoreError> {
    let kind: &str = row.try_get("kind")?;
    Ok(CaKeyRecord {
        id: row.try_get("id")?,
        kind: KeyKind::parse(kind)
            .ok_or_else(|| StoreError::Corrupt(format!("bad CA key kind {kind:?}")))?,
        algorithm: row.try_get("algorithm")?,
        state: key_state(row.try_get("state")?)?,
        fingerprint: row.try_get("fingerprint")?,
        public_key: row.try_get("public_key")?,
        private_key: row.try_get("private_key")?,
        created_at: row.try_get("created_at")?,
        activated_at: row.try_get("activated_at")?,
        retired_at: row.try_get("retired_at")?,
        deactivated_at: row.try_get("deactivated_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Decode every row of `rows`.
pub(super) fn decode_all<T>(
    rows: &[PgRow],
    decode: fn(&PgRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(decode).collect()
}

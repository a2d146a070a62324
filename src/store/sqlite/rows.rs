//! How the store's records are laid out in SQLite rows: the decoders from rows to
//! [`crate::store::records`], the JSON columns, and the mapping of SQLite errors to
//! [`StoreError`]. Reads nothing and writes nothing on its own.

use rusqlite::{ErrorCode, Row};

use crate::audit::{AuditEntry, AuditRecord, Outcome};
use crate::store::{
    CaKeyRecord, CertificateRecord, HostCertificateRecord, KeyKind, KeyState, StoreError,
    TaskRecord, TaskRestrictions, TaskState,
};

/// Extended result codes of a UNIQUE or PRIMARY KEY violation: a value is taken.
const SQLITE_CONSTRAINT_UNIQUE: i32 = 2067;
const SQLITE_CONSTRAINT_PRIMARYKEY: i32 = 1555;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        match &e {
            rusqlite::Error::SqliteFailure(failure, message)
                if failure.code == ErrorCode::ConstraintViolation
                    && matches!(
                        failure.extended_code,
                        SQLITE_CONSTRAINT_UNIQUE | SQLITE_CONSTRAINT_PRIMARYKEY
                    ) =>
            {
                StoreError::Conflict(message.clone().unwrap_or_else(|| e.to_string()))
            }
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// A list column's stored form.
pub(super) fn to_json(values: &[String]) -> String {
    serde_json::to_string(values).expect("a list of strings always serialises")
}

pub(super) fn from_json(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("bad JSON list: {e}")))
}

/// A row decoder's result: a row that does not decode is corrupt data.
type Decoded<T> = Result<T, StoreError>;

/// Read every row of `rows` through `decode`.
pub(super) fn collect<T>(
    mut rows: rusqlite::Rows<'_>,
    decode: fn(&Row<'_>) -> Decoded<T>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

/// The restriction columns (`extensions`, `force_command`, `source_address`) of a task;
/// all NULL for a task that recorded none (opened before migration 0009).
pub(super) fn restriction_columns(
    restrictions: Option<&TaskRestrictions>,
) -> (Option<String>, Option<String>, Option<String>) {
    match restrictions {
        Some(r) => (
            Some(to_json(&r.extensions)),
            r.force_command.clone(),
            r.source_address.as_deref().map(to_json),
        ),
        None => (None, None, None),
    }
}

pub(super) fn task_state(text: &str) -> Result<TaskState, StoreError> {
    TaskState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("task state {text:?}")))
}

pub(super) fn key_state(text: &str) -> Result<KeyState, StoreError> {
    KeyState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("CA key state {text:?}")))
}

/// A `tasks` row (`SELECT *`).
pub(super) fn task_record(row: &Row<'_>) -> Decoded<TaskRecord> {
    Ok(TaskRecord {
        id: row.get("id")?,
        issuer: row.get("issuer")?,
        subject: row.get("subject")?,
        policy: row.get("policy")?,
        logins: from_json(&row.get::<_, String>("logins")?)?,
        hosts: from_json(&row.get::<_, String>("hosts")?)?,
        purpose: row.get("purpose")?,
        state: task_state(&row.get::<_, String>("state")?)?,
        created_at: row.get("created_at")?,
        expires_at: row.get("expires_at")?,
        restrictions: match row.get::<_, Option<String>>("extensions")? {
            None => None,
            Some(extensions) => Some(TaskRestrictions {
                extensions: from_json(&extensions)?,
                force_command: row.get("force_command")?,
                source_address: row
                    .get::<_, Option<String>>("source_address")?
                    .as_deref()
                    .map(from_json)
                    .transpose()?,
            }),
        },
    })
}

/// A `certificates` row (`SELECT *`).
pub(super) fn certificate_record(row: &Row<'_>) -> Decoded<CertificateRecord> {
    Ok(CertificateRecord {
        serial: row.get("serial")?,
        task_id: row.get("task_id")?,
        ca_key_id: row.get("ca_key_id")?,
        key_fingerprint: row.get("key_fingerprint")?,
        principals: from_json(&row.get::<_, String>("principals")?)?,
        valid_after: row.get("valid_after")?,
        valid_before: row.get("valid_before")?,
        issued_at: row.get("issued_at")?,
        revoked_at: row.get("revoked_at")?,
        renewed_from: row.get("renewed_from")?,
    })
}

/// A `host_certificates` row (`SELECT *`).
pub(super) fn host_certificate_record(row: &Row<'_>) -> Decoded<HostCertificateRecord> {
    Ok(HostCertificateRecord {
        serial: row.get("serial")?,
        ca_key_id: row.get("ca_key_id")?,
        key_fingerprint: row.get("key_fingerprint")?,
        principals: from_json(&row.get::<_, String>("principals")?)?,
        issuer: row.get("issuer")?,
        subject: row.get("subject")?,
        policy: row.get("policy")?,
        valid_after: row.get("valid_after")?,
        valid_before: row.get("valid_before")?,
        issued_at: row.get("issued_at")?,
        revoked_at: row.get("revoked_at")?,
    })
}

/// An `audit_events` row (`SELECT *`).
pub(super) fn audit_record(row: &Row<'_>) -> Decoded<AuditRecord> {
    let outcome: String = row.get("outcome")?;
    Ok(AuditRecord {
        seq: row.get("seq")?,
        time: row.get("time")?,
        entry: AuditEntry {
            event: row.get("event")?,
            outcome: Some(
                Outcome::parse(&outcome)
                    .ok_or_else(|| StoreError::Corrupt(format!("bad outcome {outcome:?}")))?,
            ),
            issuer: row.get("issuer")?,
            subject: row.get("subject")?,
            policy: row.get("policy")?,
            task_id: row.get("task_id")?,
            serial: row.get("serial")?,
            key_fingerprint: row.get("key_fingerprint")?,
            logins: from_json(&row.get::<_, String>("logins")?)?,
            hosts: from_json(&row.get::<_, String>("hosts")?)?,
            host: row.get("host")?,
            ca_fingerprint: row.get("ca_fingerprint")?,
            source_ip: row.get("source_ip")?,
            reason: row.get("reason")?,
            request_id: row.get("request_id")?,
            purpose: row.get("purpose")?,
            command: row.get("command")?,
        },
        prev_hash: row.get("prev_hash")?,
        hash: row.get("hash")?,
    })
}

/// A `ca_keys` row with the columns of `keyring::SELECT_CA_KEYS`.
pub(super) fn ca_key_record(row: &Row<'_>) -> Decoded<CaKeyRecord> {
    let kind: String = row.get("kind")?;
    Ok(CaKeyRecord {
        id: row.get("id")?,
        kind: KeyKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("bad CA key kind {kind:?}")))?,
        algorithm: row.get("algorithm")?,
        state: key_state(&row.get::<_, String>("state")?)?,
        fingerprint: row.get("fingerprint")?,
        public_key: row.get("public_key")?,
        private_key: row.get("private_key")?,
        created_at: row.get("created_at")?,
        activated_at: row.get("activated_at")?,
        retired_at: row.get("retired_at")?,
        deactivated_at: row.get("deactivated_at")?,
        revoked_at: row.get("revoked_at")?,
    })
}

//! The SQLite side of CA key rotation: keyring changes (state transitions, new keys,
//! rewrapped private keys) committed with their audit entries in one transaction,
//! per-key certificate usage, and the rotation schedule. Writes run in the writer's
//! transaction they are given; reads on a reader's connection.

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::chain::Chain;
use super::rows::{ca_key_record, collect};
use crate::audit::AuditEntry;
use crate::store::{
    CaKeyRecord, KeyState, KeyTransition, KeyUsage, KeyringChange, RotationSchedule, StoreError,
};

/// Every CA key, oldest first, with the columns [`ca_key_record`] reads.
const SELECT_CA_KEYS: &str = "SELECT id, kind, algorithm, state, fingerprint, public_key, \
     private_key, created_at, activated_at, retired_at, deactivated_at, revoked_at \
     FROM ca_keys ORDER BY created_at, id";

pub(super) fn ca_keys(db: &Connection) -> Result<Vec<CaKeyRecord>, StoreError> {
    let mut statement = db.prepare_cached(SELECT_CA_KEYS)?;
    collect(statement.query([])?, ca_key_record)
}

/// The `UPDATE` for one transition; the guard is part of its `WHERE`, so the check and
/// the change are one statement inside the write transaction.
fn transition_sql(to: KeyState) -> Result<&'static str, StoreError> {
    Ok(match to {
        KeyState::Active => {
            "UPDATE ca_keys SET state = ?1, activated_at = ?2 WHERE id = ?3 AND state = ?4"
        }
        KeyState::Retiring => {
            "UPDATE ca_keys SET state = ?1, deactivated_at = ?2 WHERE id = ?3 AND state = ?4"
        }
        KeyState::Retired => {
            "UPDATE ca_keys SET state = ?1, retired_at = ?2, private_key = '' \
             WHERE id = ?3 AND state = ?4 AND (?5 IS NULL OR (NOT EXISTS (SELECT 1 \
             FROM certificates WHERE ca_key_id = ?3 AND valid_before > ?5) AND NOT EXISTS \
             (SELECT 1 FROM host_certificates WHERE ca_key_id = ?3 AND valid_before > ?5)))"
        }
        KeyState::Revoked => {
            "UPDATE ca_keys SET state = ?1, revoked_at = ?2, private_key = '', \
             deactivated_at = CASE WHEN state = 'active' THEN ?2 ELSE deactivated_at END \
             WHERE id = ?3 AND state = ?4"
        }
        KeyState::Next => {
            return Err(StoreError::Corrupt(
                "no transition into CA key state \"next\"".into(),
            ));
        }
    })
}

fn transition(tx: &Connection, t: &KeyTransition) -> Result<(), StoreError> {
    let sql = transition_sql(t.to)?;
    let (to, from) = (t.to.as_str(), t.from.as_str());
    // Only retirement has a guard.
    let changed = if t.to == KeyState::Retired {
        tx.execute(sql, params![to, t.at, t.id, from, t.unless_valid_after])?
    } else {
        tx.execute(sql, params![to, t.at, t.id, from])?
    };
    if changed != 1 {
        return Err(StoreError::Conflict(format!(
            "CA key {} is no longer {} (or still has valid certificates)",
            t.id, t.from
        )));
    }
    Ok(())
}

pub(super) fn change_keyring(tx: &Connection, change: &KeyringChange) -> Result<(), StoreError> {
    for t in &change.transitions {
        transition(tx, t)?;
    }
    for key in &change.new_keys {
        tx.execute(
            "INSERT INTO ca_keys (id, algorithm, state, fingerprint, public_key, private_key, \
             created_at, activated_at, retired_at, deactivated_at, revoked_at, kind) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                key.id,
                key.algorithm,
                key.state.as_str(),
                key.fingerprint,
                key.public_key,
                key.private_key,
                key.created_at,
                key.activated_at,
                key.retired_at,
                key.deactivated_at,
                key.revoked_at,
                key.kind.as_str(),
            ],
        )?;
    }
    for rewrap in &change.rewraps {
        let changed = tx.execute(
            "UPDATE ca_keys SET private_key = ?1 WHERE id = ?2 AND private_key = ?3",
            params![rewrap.new, rewrap.id, rewrap.old],
        )?;
        if changed != 1 {
            return Err(StoreError::Conflict(format!(
                "CA key {} changed while it was being re-encrypted",
                rewrap.id
            )));
        }
    }
    Chain::append_all(tx, &change.audit, change.at)
}

pub(super) fn ca_key_usage(db: &Connection, now_unix: i64) -> Result<Vec<KeyUsage>, StoreError> {
    // A user key signs only `certificates`, a host key only `host_certificates`.
    let mut statement = db.prepare_cached(
        "SELECT k.id, CASE k.kind WHEN 'host' THEN \
           (SELECT COUNT(*) FROM host_certificates c WHERE c.ca_key_id = k.id \
              AND c.valid_before > ?1 AND c.revoked_at IS NULL) ELSE \
           (SELECT COUNT(*) FROM certificates c WHERE c.ca_key_id = k.id \
              AND c.valid_before > ?1 AND c.revoked_at IS NULL) END AS valid, \
           CASE k.kind WHEN 'host' THEN \
           (SELECT MAX(c.valid_before) FROM host_certificates c WHERE c.ca_key_id = k.id) ELSE \
           (SELECT MAX(c.valid_before) FROM certificates c WHERE c.ca_key_id = k.id) END AS last \
         FROM ca_keys k ORDER BY k.created_at, k.id",
    )?;
    let usage = statement
        .query_map([now_unix], |row| {
            Ok(KeyUsage {
                key_id: row.get(0)?,
                valid_certificates: row.get(1)?,
                last_valid_before: row.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(usage)
}

pub(super) fn rotation_schedule(db: &Connection) -> Result<Option<RotationSchedule>, StoreError> {
    Ok(db
        .prepare_cached("SELECT every_seconds, set_at FROM ca_rotation_schedule WHERE id = 1")?
        .query_row([], |row| {
            Ok(RotationSchedule {
                every_seconds: row.get(0)?,
                set_at: row.get(1)?,
            })
        })
        .optional()?)
}

pub(super) fn set_rotation_schedule(
    tx: &Connection,
    schedule: Option<RotationSchedule>,
    audit: &AuditEntry,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    match schedule {
        Some(s) => tx.execute(
            "INSERT INTO ca_rotation_schedule (id, every_seconds, set_at) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET every_seconds = excluded.every_seconds, \
             set_at = excluded.set_at",
            params![s.every_seconds, s.set_at],
        )?,
        None => tx.execute("DELETE FROM ca_rotation_schedule", [])?,
    };
    Chain::append_all(tx, [audit], at)
}

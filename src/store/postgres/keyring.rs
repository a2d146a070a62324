//! The PostgreSQL side of CA key rotation: keyring changes (state transitions, new keys,
//! rewrapped private keys) committed with their audit entries in one transaction,
//! per-key certificate usage, and the rotation schedule. Writes run in the transaction
//! they are given; reads on a pooled connection.
//!
//! A transition first locks its key's row `FOR UPDATE`: issuances signed by the key hold
//! it `FOR SHARE` until they commit (`super::issuance`), so the transition's guard (the
//! expected state, and for retirement "no certificate valid after …") is checked after
//! every such issuance has committed, and issuances after it see the new state. The
//! partial unique indexes refuse a second `active` or `next` key from any process.

use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::chain::Chain;
use super::rows::{ca_key_record, decode_all};
use crate::audit::AuditEntry;
use crate::store::{
    CaKeyRecord, KeyState, KeyTransition, KeyUsage, KeyringChange, RotationSchedule, StoreError,
};

pub(super) async fn ca_keys(conn: &mut PgConnection) -> Result<Vec<CaKeyRecord>, StoreError> {
    let rows = sqlx::query("SELECT * FROM ca_keys ORDER BY created_at, id")
        .fetch_all(conn)
        .await?;
    decode_all(&rows, ca_key_record)
}

/// The `UPDATE` for one transition; the guard is part of its `WHERE`.
fn transition_sql(to: KeyState) -> Result<&'static str, StoreError> {
    Ok(match to {
        KeyState::Active => {
            "UPDATE ca_keys SET state = $1, activated_at = $2 WHERE id = $3 AND state = $4"
        }
        KeyState::Retiring => {
            "UPDATE ca_keys SET state = $1, deactivated_at = $2 WHERE id = $3 AND state = $4"
        }
        KeyState::Retired => {
            "UPDATE ca_keys SET state = $1, retired_at = $2, private_key = '' \
             WHERE id = $3 AND state = $4 AND ($5::bigint IS NULL OR (NOT EXISTS (SELECT 1 \
             FROM certificates WHERE ca_key_id = $3 AND valid_before > $5::bigint) AND NOT \
             EXISTS (SELECT 1 FROM host_certificates WHERE ca_key_id = $3 \
             AND valid_before > $5::bigint)))"
        }
        KeyState::Revoked => {
            "UPDATE ca_keys SET state = $1, revoked_at = $2, private_key = '', \
             deactivated_at = CASE WHEN state = 'active' THEN $2 ELSE deactivated_at END \
             WHERE id = $3 AND state = $4"
        }
        KeyState::Next => {
            return Err(StoreError::Corrupt(
                "no transition into CA key state \"next\"".into(),
            ));
        }
    })
}

async fn transition(conn: &mut PgConnection, t: &KeyTransition) -> Result<(), StoreError> {
    let sql = transition_sql(t.to)?;
    // Wait for issuances signed by this key to commit; the guard below then sees them.
    sqlx::query("SELECT 1 FROM ca_keys WHERE id = $1 FOR UPDATE")
        .bind(&t.id)
        .execute(&mut *conn)
        .await?;
    let mut update = sqlx::query(sql)
        .bind(t.to.as_str())
        .bind(t.at)
        .bind(&t.id)
        .bind(t.from.as_str());
    // Only retirement has a guard.
    if t.to == KeyState::Retired {
        update = update.bind(t.unless_valid_after);
    }
    if update.execute(&mut *conn).await?.rows_affected() != 1 {
        return Err(StoreError::Conflict(format!(
            "CA key {} is no longer {} (or still has valid certificates)",
            t.id, t.from
        )));
    }
    Ok(())
}

pub(super) async fn change_keyring(
    conn: &mut PgConnection,
    change: &KeyringChange,
) -> Result<(), StoreError> {
    for t in &change.transitions {
        transition(conn, t).await?;
    }
    for key in &change.new_keys {
        sqlx::query(
            "INSERT INTO ca_keys (id, algorithm, state, fingerprint, public_key, private_key, \
             created_at, activated_at, retired_at, deactivated_at, revoked_at, kind) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&key.id)
        .bind(&key.algorithm)
        .bind(key.state.as_str())
        .bind(&key.fingerprint)
        .bind(&key.public_key)
        .bind(&key.private_key)
        .bind(key.created_at)
        .bind(key.activated_at)
        .bind(key.retired_at)
        .bind(key.deactivated_at)
        .bind(key.revoked_at)
        .bind(key.kind.as_str())
        .execute(&mut *conn)
        .await?;
    }
    for rewrap in &change.rewraps {
        let changed =
            sqlx::query("UPDATE ca_keys SET private_key = $1 WHERE id = $2 AND private_key = $3")
                .bind(&rewrap.new)
                .bind(&rewrap.id)
                .bind(&rewrap.old)
                .execute(&mut *conn)
                .await?;
        if changed.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "CA key {} changed while it was being re-encrypted",
                rewrap.id
            )));
        }
    }
    Chain::append_all(conn, &change.audit, change.at).await
}

pub(super) async fn ca_key_usage(
    conn: &mut PgConnection,
    now_unix: i64,
) -> Result<Vec<KeyUsage>, StoreError> {
    let rows = sqlx::query(
        // A user key signs only `certificates`, a host key only `host_certificates`.
        "SELECT k.id, CASE k.kind WHEN 'host' THEN \
           (SELECT COUNT(*) FROM host_certificates c WHERE c.ca_key_id = k.id \
              AND c.valid_before > $1 AND c.revoked_at IS NULL) ELSE \
           (SELECT COUNT(*) FROM certificates c WHERE c.ca_key_id = k.id \
              AND c.valid_before > $1 AND c.revoked_at IS NULL) END AS valid, \
           CASE k.kind WHEN 'host' THEN \
           (SELECT MAX(c.valid_before) FROM host_certificates c WHERE c.ca_key_id = k.id) ELSE \
           (SELECT MAX(c.valid_before) FROM certificates c WHERE c.ca_key_id = k.id) END AS last \
         FROM ca_keys k ORDER BY k.created_at, k.id",
    )
    .bind(now_unix)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(KeyUsage {
                key_id: row.try_get(0)?,
                valid_certificates: row.try_get(1)?,
                last_valid_before: row.try_get(2)?,
            })
        })
        .collect()
}

pub(super) async fn rotation_schedule(
    conn: &mut PgConnection,
) -> Result<Option<RotationSchedule>, StoreError> {
    let row = sqlx::query("SELECT every_seconds, set_at FROM ca_rotation_schedule WHERE id = 1")
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(row) => Some(RotationSchedule {
            every_seconds: row.try_get(0)?,
            set_at: row.try_get(1)?,
        }),
        None => None,
    })
}

pub(super) async fn set_rotation_schedule(
    conn: &mut PgConnection,
    schedule: Option<RotationSchedule>,
    audit: &AuditEntry,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    match schedule {
        Some(s) => {
            sqlx::query(
                "INSERT INTO ca_rotation_schedule (id, every_seconds, set_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET every_seconds = excluded.every_seconds, \
                 set_at = excluded.set_at",
            )
            .bind(s.every_seconds)
            .bind(s.set_at)
            .execute(&mut *conn)
            .await?
        }
        None => {
            sqlx::query("DELETE FROM ca_rotation_schedule")
                .execute(&mut *conn)
                .await?
        }
    };
    Chain::append_all(conn, [audit], at).await
}

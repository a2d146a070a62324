//! The SQLite side of CA key rotation: keyring changes (state transitions, new keys,
//! rewrapped private keys) committed with their audit entries in one `BEGIN IMMEDIATE`
//! transaction, per-key certificate usage, and the rotation schedule.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, append, unavailable};
use crate::audit::AuditEntry;
use crate::store::{
    CaKeyRecord, KeyTransition, KeyUsage, KeyringChange, RotationSchedule, StoreError,
};

/// Every CA key, oldest first, with the columns [`ca_key_record`] reads.
pub(super) const SELECT_CA_KEYS: &str = "SELECT id, algorithm, state, fingerprint, public_key, \
     private_key, created_at, activated_at, retired_at, deactivated_at, revoked_at \
     FROM ca_keys ORDER BY created_at, id";

pub(super) fn ca_key_record(row: &SqliteRow) -> CaKeyRecord {
    CaKeyRecord {
        id: row.get("id"),
        algorithm: row.get("algorithm"),
        state: row.get("state"),
        fingerprint: row.get("fingerprint"),
        public_key: row.get("public_key"),
        private_key: row.get("private_key"),
        created_at: row.get("created_at"),
        activated_at: row.get("activated_at"),
        retired_at: row.get("retired_at"),
        deactivated_at: row.get("deactivated_at"),
        revoked_at: row.get("revoked_at"),
    }
}

/// The `UPDATE` for one transition; the guard is part of its `WHERE`, so the check and
/// the change are one statement inside the write transaction.
fn transition_sql(t: &KeyTransition) -> Result<&'static str, StoreError> {
    Ok(match t.to.as_str() {
        "active" => "UPDATE ca_keys SET state = $1, activated_at = $2 WHERE id = $3 AND state = $4",
        "retiring" => {
            "UPDATE ca_keys SET state = $1, deactivated_at = $2 WHERE id = $3 AND state = $4"
        }
        "retired" => {
            "UPDATE ca_keys SET state = $1, retired_at = $2, private_key = '' \
             WHERE id = $3 AND state = $4 AND ($5 IS NULL OR NOT EXISTS (SELECT 1 \
             FROM certificates WHERE ca_key_id = $3 AND valid_before > $5))"
        }
        "revoked" => {
            "UPDATE ca_keys SET state = $1, revoked_at = $2, private_key = '', \
             deactivated_at = CASE WHEN state = 'active' THEN $2 ELSE deactivated_at END \
             WHERE id = $3 AND state = $4"
        }
        other => {
            return Err(StoreError::Corrupt(format!(
                "no transition into CA key state {other:?}"
            )));
        }
    })
}

pub(super) async fn change_keyring(
    store: &SqliteStore,
    change: &KeyringChange,
) -> Result<(), StoreError> {
    let _guard = store.write_lock.lock().await;
    let mut tx = store.begin_write().await?;
    for t in &change.transitions {
        let mut query = sqlx::query(transition_sql(t)?)
            .bind(&t.to)
            .bind(t.at)
            .bind(&t.id)
            .bind(&t.from);
        if t.to == "retired" {
            query = query.bind(t.unless_valid_after);
        }
        let changed = query
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        if changed != 1 {
            return Err(StoreError::Conflict(format!(
                "CA key {} is no longer {} (or still has valid certificates)",
                t.id, t.from
            )));
        }
    }
    for key in &change.new_keys {
        sqlx::query(
            "INSERT INTO ca_keys (id, algorithm, state, fingerprint, public_key, private_key, \
             created_at, activated_at, retired_at, deactivated_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&key.id)
        .bind(&key.algorithm)
        .bind(&key.state)
        .bind(&key.fingerprint)
        .bind(&key.public_key)
        .bind(&key.private_key)
        .bind(key.created_at)
        .bind(key.activated_at)
        .bind(key.retired_at)
        .bind(key.deactivated_at)
        .bind(key.revoked_at)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    }
    for rewrap in &change.rewraps {
        let changed =
            sqlx::query("UPDATE ca_keys SET private_key = $1 WHERE id = $2 AND private_key = $3")
                .bind(&rewrap.new)
                .bind(&rewrap.id)
                .bind(&rewrap.old)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected();
        if changed != 1 {
            return Err(StoreError::Conflict(format!(
                "CA key {} changed while it was being re-encrypted",
                rewrap.id
            )));
        }
    }
    for entry in &change.audit {
        append(&mut tx, entry).await?;
    }
    tx.commit().await.map_err(unavailable)
}

pub(super) async fn ca_key_usage(
    store: &SqliteStore,
    now_unix: i64,
) -> Result<Vec<KeyUsage>, StoreError> {
    let rows = sqlx::query(
        "SELECT k.id, \
           (SELECT COUNT(*) FROM certificates c WHERE c.ca_key_id = k.id \
              AND c.valid_before > $1 AND c.revoked_at IS NULL) AS valid, \
           (SELECT MAX(c.valid_before) FROM certificates c WHERE c.ca_key_id = k.id) AS last \
         FROM ca_keys k ORDER BY k.created_at, k.id",
    )
    .bind(now_unix)
    .fetch_all(&store.pool)
    .await
    .map_err(unavailable)?;
    Ok(rows
        .iter()
        .map(|row| KeyUsage {
            key_id: row.get(0),
            valid_certificates: row.get(1),
            last_valid_before: row.get(2),
        })
        .collect())
}

pub(super) async fn rotation_schedule(
    store: &SqliteStore,
) -> Result<Option<RotationSchedule>, StoreError> {
    let row = sqlx::query("SELECT every_seconds, set_at FROM ca_rotation_schedule WHERE id = 1")
        .fetch_all(&store.pool)
        .await
        .map_err(unavailable)?
        .into_iter()
        .next();
    Ok(row.map(|row| RotationSchedule {
        every_seconds: row.get(0),
        set_at: row.get(1),
    }))
}

pub(super) async fn set_rotation_schedule(
    store: &SqliteStore,
    schedule: Option<RotationSchedule>,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    let _guard = store.write_lock.lock().await;
    let mut tx = store.begin_write().await?;
    match schedule {
        Some(s) => sqlx::query(
            "INSERT INTO ca_rotation_schedule (id, every_seconds, set_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET every_seconds = excluded.every_seconds, \
             set_at = excluded.set_at",
        )
        .bind(s.every_seconds)
        .bind(s.set_at),
        None => sqlx::query("DELETE FROM ca_rotation_schedule"),
    }
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    append(&mut tx, audit).await?;
    tx.commit().await.map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::super::test_issuance::issuance;
    use super::*;
    use crate::audit::{Outcome, event};
    use crate::authority::keyring::{KeyState, new_key_record};
    use crate::config::KeyAlgorithm;
    use crate::store::Store;
    use rand_core::OsRng;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let store = SqliteStore::open(path.to_str().expect("path"))
            .await
            .expect("open");
        (dir, store)
    }

    fn key(state: KeyState, now: i64) -> CaKeyRecord {
        new_key_record("pass", KeyAlgorithm::Ed25519, state, now, &mut OsRng).expect("key")
    }

    fn entry() -> AuditEntry {
        AuditEntry::new(event::CA_KEY_ROTATED, Outcome::Success)
    }

    fn t(id: &str, from: KeyState, to: KeyState, at: i64) -> KeyTransition {
        KeyTransition {
            id: id.into(),
            from: from.as_str().into(),
            to: to.as_str().into(),
            at,
            unless_valid_after: None,
        }
    }

    async fn audit_len(store: &SqliteStore) -> usize {
        store.audit_records(0, i64::MAX).await.expect("audit").len()
    }

    async fn state_of(store: &SqliteStore, id: &str) -> CaKeyRecord {
        store
            .ca_keys()
            .await
            .expect("keys")
            .into_iter()
            .find(|k| k.id == id)
            .expect("key")
    }

    /// A certificate signed by `ca_key_id`, issued at 0 and valid until `valid_before`.
    async fn issue(
        store: &SqliteStore,
        ca_key_id: &str,
        serial: i64,
        valid_before: i64,
    ) -> Result<(), StoreError> {
        let mut issuance = issuance(ca_key_id, serial, None, None);
        if let Some(task) = &mut issuance.new_task {
            (task.created_at, task.expires_at) = (0, valid_before);
        }
        let certificate = &mut issuance.certificate;
        (certificate.valid_after, certificate.valid_before) = (0, valid_before);
        certificate.issued_at = 0;
        store.record_issuance(issuance).await
    }

    #[tokio::test]
    async fn a_rotation_commits_whole_or_not_at_all() {
        let (_dir, store) = store().await;
        let (a, n) = (key(KeyState::Active, 1), key(KeyState::Next, 1));
        store
            .change_keyring(&KeyringChange {
                new_keys: vec![a.clone(), n.clone()],
                audit: vec![entry()],
                ..KeyringChange::default()
            })
            .await
            .expect("init");
        // A second active key, a second next key: refused, nothing written.
        for extra in [key(KeyState::Active, 2), key(KeyState::Next, 2)] {
            let err = store
                .change_keyring(&KeyringChange {
                    new_keys: vec![extra],
                    audit: vec![entry()],
                    ..KeyringChange::default()
                })
                .await
                .expect_err("second key in a unique state");
            assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        }
        // A transition whose key is not in the expected state rolls back the others.
        let err = store
            .change_keyring(&KeyringChange {
                transitions: vec![
                    t(&a.id, KeyState::Active, KeyState::Retiring, 5),
                    t(&n.id, KeyState::Retiring, KeyState::Retired, 5),
                ],
                audit: vec![entry()],
                ..KeyringChange::default()
            })
            .await
            .expect_err("stale state");
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert_eq!(state_of(&store, &a.id).await.state, "active");
        assert_eq!(audit_len(&store).await, 1);

        let next2 = key(KeyState::Next, 5);
        store
            .change_keyring(&KeyringChange {
                transitions: vec![
                    t(&a.id, KeyState::Active, KeyState::Retiring, 5),
                    t(&n.id, KeyState::Next, KeyState::Active, 5),
                ],
                new_keys: vec![next2.clone()],
                audit: vec![entry()],
                ..KeyringChange::default()
            })
            .await
            .expect("rotate");
        let old = state_of(&store, &a.id).await;
        assert_eq!(
            (old.state.as_str(), old.deactivated_at),
            ("retiring", Some(5))
        );
        let new = state_of(&store, &n.id).await;
        assert_eq!((new.state.as_str(), new.activated_at), ("active", Some(5)));
        assert_eq!(state_of(&store, &next2.id).await.state, "next");
        assert_eq!(audit_len(&store).await, 2);
    }

    #[tokio::test]
    async fn retirement_waits_for_certificates_and_retired_keys_never_sign() {
        let (_dir, store) = store().await;
        let (a, n) = (key(KeyState::Active, 1), key(KeyState::Next, 1));
        store
            .change_keyring(&KeyringChange {
                new_keys: vec![a.clone(), n.clone()],
                audit: vec![entry()],
                ..KeyringChange::default()
            })
            .await
            .expect("init");
        issue(&store, &a.id, 1, 100)
            .await
            .expect("certificate of the active key");
        store
            .change_keyring(&KeyringChange {
                transitions: vec![
                    t(&a.id, KeyState::Active, KeyState::Retiring, 10),
                    t(&n.id, KeyState::Next, KeyState::Active, 10),
                ],
                audit: vec![entry()],
                ..KeyringChange::default()
            })
            .await
            .expect("rotate");
        // A server that has not reloaded yet may still sign with the retiring key.
        issue(&store, &a.id, 2, 120)
            .await
            .expect("retiring key still signs");
        let usage = store.ca_key_usage(50).await.expect("usage");
        let of_a = usage.iter().find(|u| u.key_id == a.id).expect("usage of a");
        assert_eq!(
            (of_a.valid_certificates, of_a.last_valid_before),
            (2, Some(120))
        );

        let mut retire = t(&a.id, KeyState::Retiring, KeyState::Retired, 110);
        retire.unless_valid_after = Some(110);
        let change = KeyringChange {
            transitions: vec![retire.clone()],
            audit: vec![entry()],
            ..KeyringChange::default()
        };
        let err = store
            .change_keyring(&change)
            .await
            .expect_err("a certificate is valid");
        assert!(matches!(err, StoreError::Conflict(_)));
        let mut later = change.clone();
        later.transitions[0].unless_valid_after = Some(120);
        store.change_keyring(&later).await.expect("retire");
        let retired = state_of(&store, &a.id).await;
        assert_eq!(retired.state, "retired");
        assert!(retired.private_key.is_empty(), "the private key is erased");
        let err = issue(&store, &a.id, 3, 200)
            .await
            .expect_err("retired keys never sign");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");

        // Revoking the active key erases it too, and records when it stopped signing.
        store
            .change_keyring(&KeyringChange {
                transitions: vec![t(&n.id, KeyState::Active, KeyState::Revoked, 130)],
                audit: vec![entry()],
                ..KeyringChange::default()
            })
            .await
            .expect("revoke");
        let revoked = state_of(&store, &n.id).await;
        assert_eq!(
            (
                revoked.state.as_str(),
                revoked.revoked_at,
                revoked.deactivated_at
            ),
            ("revoked", Some(130), Some(130))
        );
        assert!(revoked.private_key.is_empty());
        assert!(issue(&store, &n.id, 4, 200).await.is_err());
    }

    #[tokio::test]
    async fn rewrap_and_schedule() {
        let (_dir, store) = store().await;
        let a = key(KeyState::Active, 1);
        store
            .change_keyring(&KeyringChange {
                new_keys: vec![a.clone()],
                audit: vec![entry()],
                ..KeyringChange::default()
            })
            .await
            .expect("init");
        let stale = KeyringChange {
            rewraps: vec![crate::store::KeyRewrap {
                id: a.id.clone(),
                old: "not what is stored".into(),
                new: "x".into(),
            }],
            audit: vec![entry()],
            ..KeyringChange::default()
        };
        assert!(matches!(
            store.change_keyring(&stale).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(state_of(&store, &a.id).await.private_key, a.private_key);

        assert_eq!(store.rotation_schedule().await.expect("schedule"), None);
        let every = RotationSchedule {
            every_seconds: 60,
            set_at: 5,
        };
        store
            .set_rotation_schedule(Some(every), &entry())
            .await
            .expect("set");
        store
            .set_rotation_schedule(Some(every), &entry())
            .await
            .expect("set again");
        assert_eq!(
            store.rotation_schedule().await.expect("schedule"),
            Some(every)
        );
        store
            .set_rotation_schedule(None, &entry())
            .await
            .expect("clear");
        assert_eq!(store.rotation_schedule().await.expect("schedule"), None);
    }
}

//! Bringing a SQLite database's schema up to date: the migrations in `migrations/sqlite/`,
//! each applied once, in order, in its own `BEGIN IMMEDIATE` transaction with the row
//! that records it, so two processes opening the same file cannot both apply one.
//!
//! The bookkeeping is the `_sqlx_migrations` table, in the layout and with the checksums
//! (SHA-384 of the file) that earlier versions of writ wrote through sqlx: a database
//! they created opens here unchanged, and one created here opens with them. A recorded
//! migration whose file changed since, or one that failed halfway, stops the store from
//! opening rather than running on a schema nobody knows. Never edits a migration that
//! was recorded; never deletes a row.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha384};

use crate::store::{AppliedMigration, StoreError};

/// One migration: version, description (the file name's words), SQL.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

macro_rules! migrations {
    ($(($version:literal, $description:literal, $file:literal)),* $(,)?) => {
        &[$(Migration {
            version: $version,
            description: $description,
            sql: include_str!(concat!("../../../migrations/sqlite/", $file)),
        }),*]
    };
}

/// Every migration, in order. A new file in `migrations/sqlite/` is listed here too (a
/// test checks the two agree).
const MIGRATIONS: &[Migration] = migrations![
    (1, "init", "0001_init.sql"),
    (2, "used tokens", "0002_used_tokens.sql"),
    (3, "ca key rotation", "0003_ca_key_rotation.sql"),
    (
        4,
        "audit checkpoints sinks prune",
        "0004_audit_checkpoints_sinks_prune.sql"
    ),
    (
        5,
        "fewer pages per issuance",
        "0005_fewer_pages_per_issuance.sql"
    ),
    (6, "used tokens by expiry", "0006_used_tokens_by_expiry.sql"),
    (
        7,
        "certificates in issue order",
        "0007_certificates_in_issue_order.sql"
    ),
    (
        8,
        "feed indexes for ended only",
        "0008_feed_indexes_for_ended_only.sql"
    ),
    (9, "task restrictions", "0009_task_restrictions.sql"),
    (
        10,
        "certificates renewed from",
        "0010_certificates_renewed_from.sql"
    ),
    (11, "audit purpose", "0011_audit_purpose.sql"),
    (12, "leases", "0012_leases.sql"),
    (13, "host certificates", "0013_host_certificates.sql"),
    (14, "host reports", "0014_host_reports.sql"),
    (15, "audit command", "0015_audit_command.sql"),
];

const SQL_CREATE_BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)";

fn failed(version: i64, why: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("migration {version} failed: {why}"))
}

/// Whether `migration` is applied, given its bookkeeping row (`success`, `checksum`), if
/// any: an error if it was applied from a different file or stopped halfway.
fn is_applied(
    migration: &Migration,
    recorded: Option<(bool, Vec<u8>)>,
) -> Result<bool, StoreError> {
    match recorded {
        Some((true, stored)) if stored == checksum(migration) => Ok(true),
        Some((true, _)) => Err(failed(
            migration.version,
            "it was applied from a different file than this version of writ has",
        )),
        Some((false, _)) => Err(failed(
            migration.version,
            "an earlier attempt stopped halfway; restore the database from a backup",
        )),
        None => Ok(false),
    }
}

fn checksum(migration: &Migration) -> Vec<u8> {
    Sha384::digest(migration.sql.as_bytes()).to_vec()
}

const SQL_RECORDED: &str = "SELECT success, checksum FROM _sqlx_migrations WHERE version = ?1";

/// Apply every migration `connection`'s database has not recorded yet; returns those it
/// applied, in order.
pub(super) fn migrate(connection: &mut Connection) -> Result<Vec<AppliedMigration>, StoreError> {
    connection.execute_batch(SQL_CREATE_BOOKKEEPING)?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let recorded = tx
            .query_row(SQL_RECORDED, [migration.version], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        if is_applied(migration, recorded)? {
            continue;
        }
        let started = std::time::Instant::now();
        tx.execute_batch(migration.sql)
            .map_err(|e| failed(migration.version, e))?;
        let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (?1, ?2, TRUE, ?3, ?4)",
            params![
                migration.version,
                migration.description,
                checksum(migration),
                nanos
            ],
        )?;
        tx.commit()?;
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "database migrated"
        );
        applied.push(AppliedMigration {
            version: migration.version,
            description: migration.description,
        });
    }
    Ok(applied)
}

/// The migrations `connection`'s database has not recorded yet, read without writing
/// anything (the store copy reads a database it must not change). An error if a recorded
/// one differs from this version's file or stopped halfway, or if the database records a
/// migration this version of writ does not have (a newer writ migrated it).
pub(super) fn pending(connection: &Connection) -> Result<Vec<AppliedMigration>, StoreError> {
    let has_bookkeeping: bool = connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
         AND name = '_sqlx_migrations')",
        [],
        |row| row.get(0),
    )?;
    if has_bookkeeping {
        let newest: Option<i64> =
            connection.query_row("SELECT MAX(version) FROM _sqlx_migrations", [], |row| {
                row.get(0)
            })?;
        let known = MIGRATIONS.last().map_or(0, |m| m.version);
        if let Some(newest) = newest.filter(|&v| v > known) {
            return Err(StoreError::Unavailable(format!(
                "the database records migration {newest}, which this version of writ \
                 (migrations up to {known}) does not have: a newer writ migrated it"
            )));
        }
    }
    let mut pending = Vec::new();
    for migration in MIGRATIONS {
        let recorded = if has_bookkeeping {
            connection
                .query_row(SQL_RECORDED, [migration.version], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?
        } else {
            None
        };
        if !is_applied(migration, recorded)? {
            pending.push(AppliedMigration {
                version: migration.version,
                description: migration.description,
            });
        }
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/sqlite/` is listed, in order, under the version and
    /// description its name gives (the way sqlx read them).
    #[test]
    fn every_migration_file_is_listed_as_its_name_says() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "{files:?}");
        for (file, migration) in files.iter().zip(MIGRATIONS) {
            let (version, rest) = file.split_once('_').expect("NNNN_words.sql");
            let words = rest.trim_end_matches(".sql").replace('_', " ");
            assert_eq!(version.parse::<i64>().expect("number"), migration.version);
            assert_eq!(words, migration.description);
            let text = std::fs::read_to_string(format!("{dir}/{file}")).expect("read");
            assert_eq!(text, migration.sql, "{file}");
        }
    }

    /// Opening twice applies nothing the second time; a recorded migration whose file
    /// differs stops the open, and so does one recorded as failed.
    #[test]
    fn migrations_apply_once_and_refuse_a_changed_or_failed_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let mut db = Connection::open(&path).expect("open");
        assert_eq!(pending(&db).expect("nothing yet").len(), MIGRATIONS.len());
        let first = migrate(&mut db).expect("first");
        assert_eq!(first.len(), MIGRATIONS.len());
        assert_eq!(first.last().map(|m| m.version), Some(15));
        assert_eq!(migrate(&mut db).expect("second"), []);
        assert_eq!(pending(&db).expect("all applied"), []);
        let count: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM _sqlx_migrations WHERE success",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(count, i64::try_from(MIGRATIONS.len()).expect("small"));

        db.execute(
            "UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 3",
            [],
        )
        .expect("tamper");
        let changed = migrate(&mut db).expect_err("changed");
        assert!(changed.to_string().contains("migration 3"), "{changed}");
        let changed = pending(&db).expect_err("changed");
        assert!(changed.to_string().contains("migration 3"), "{changed}");

        db.execute(
            "UPDATE _sqlx_migrations SET success = FALSE, checksum = ?1 WHERE version = 3",
            [Sha384::digest(MIGRATIONS[2].sql.as_bytes()).to_vec()],
        )
        .expect("tamper");
        let halfway = migrate(&mut db).expect_err("failed before");
        assert!(halfway.to_string().contains("halfway"), "{halfway}");
        let halfway = pending(&db).expect_err("failed before");
        assert!(halfway.to_string().contains("halfway"), "{halfway}");
    }

    /// A database a newer writ migrated is not read as if it had this version's schema.
    #[test]
    fn a_migration_from_a_newer_writ_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = Connection::open(dir.path().join("writ.db")).expect("open");
        migrate(&mut db).expect("migrate");
        db.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (99, 'future', TRUE, x'00', 0)",
            [],
        )
        .expect("a newer migration");
        let newer = pending(&db).expect_err("newer");
        assert!(newer.to_string().contains("migration 99"), "{newer}");
        assert!(newer.to_string().contains("newer writ"), "{newer}");
    }
}

//! Bringing a PostgreSQL database's schema up to date: the migrations in
//! `migrations/postgres/`, embedded in the binary, applied by sqlx's `Migrator` with its
//! `_sqlx_migrations` bookkeeping (SHA-384 checksums). A recorded migration whose file
//! changed since, or one that failed halfway, stops the store from opening.
//!
//! The `Migrator` takes a session-level PostgreSQL advisory lock for the whole run
//! (`locking`, on by default and kept on here): replicas that start together wait for one
//! another, and the second finds everything applied. Never edits a migration that was
//! recorded; never deletes a row.

use std::borrow::Cow;

use std::collections::HashSet;

use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType, Migrator};
use sqlx::{PgConnection, PgPool, SqlSafeStr};

use crate::store::{AppliedMigration, StoreError};

/// Every migration, in order: version, description (the file name's words), SQL. A new
/// file in `migrations/postgres/` is listed here too (a test checks the two agree).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "leases",
        include_str!("../../../migrations/postgres/0002_leases.sql"),
    ),
    (
        3,
        "host certificates",
        include_str!("../../../migrations/postgres/0003_host_certificates.sql"),
    ),
    (
        4,
        "host reports",
        include_str!("../../../migrations/postgres/0004_host_reports.sql"),
    ),
    (
        5,
        "audit command",
        include_str!("../../../migrations/postgres/0005_audit_command.sql"),
    ),
];

/// How many migrations there are (each recorded once when applied).
#[cfg(test)]
pub(super) fn count() -> usize {
    MIGRATIONS.len()
}

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    // Replicas starting together serialise on the migrator's advisory lock.
    migrator.set_locking(true);
    migrator
}

/// Apply every migration the database behind `pool` has not recorded yet; returns those
/// this call applied, in order.
///
/// What was applied is read under the migrator's own advisory lock, taken once more
/// around its run (PostgreSQL's session locks nest): the versions recorded before the
/// run, compared with the list, are exactly what this run applies, even while other
/// processes migrate the same database.
pub(super) async fn migrate(pool: &PgPool) -> Result<Vec<AppliedMigration>, StoreError> {
    let mut connection = pool.acquire().await?;
    let migrated = run_locked(&mut connection).await;
    if migrated.is_err() {
        // The session may still hold the lock: end it rather than hand it back to the pool.
        let _ = connection.close().await;
    }
    migrated.map_err(|e| StoreError::Unavailable(format!("migrating the database failed: {e}")))
}

async fn run_locked(connection: &mut PgConnection) -> Result<Vec<AppliedMigration>, MigrateError> {
    let migrator = migrator();
    connection.lock().await?;
    connection
        .ensure_migrations_table(&migrator.table_name)
        .await?;
    let before: HashSet<i64> = connection
        .list_applied_migrations(&migrator.table_name)
        .await?
        .into_iter()
        .map(|m| m.version)
        .collect();
    migrator.run_direct(None, &mut *connection, false).await?;
    connection.unlock().await?;
    Ok(MIGRATIONS
        .iter()
        .filter(|(version, _, _)| !before.contains(version))
        .map(|&(version, description, _)| AppliedMigration {
            version,
            description,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// Every file in `migrations/postgres/` is listed, in order, under the version and
    /// description its name gives.
    #[test]
    fn every_postgres_migration_file_is_listed_as_its_name_says() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "{files:?}");
        for (file, (version, description, sql)) in files.iter().zip(MIGRATIONS) {
            let (number, rest) = file.split_once('_').expect("NNNN_words.sql");
            assert_eq!(number.parse::<i64>().expect("number"), *version);
            assert_eq!(
                rest.trim_end_matches(".sql").replace('_', " "),
                *description
            );
            let text = std::fs::read_to_string(format!("{dir}/{file}")).expect("read");
            assert_eq!(text, *sql, "{file}");
        }
    }
}

//! The destination side of the store copy ([`crate::store::copy`]): ONE transaction on a
//! PostgreSQL database, migrated first, that takes a whole store's rows and is committed
//! only when the copy has checked them; dropped before that, it rolls back and leaves the
//! database as it was.
//!
//! The transaction locks every table it fills `IN EXCLUSIVE MODE` before it looks at
//! them: others may read, nobody may write until it ends, so the tables it found empty
//! stay empty but for the copy, and a replica started too early waits (or times out)
//! instead of interleaving its writes.

use sqlx::{AssertSqlSafe, PgPool, Postgres, QueryBuilder, Row, Transaction};

use super::rows::{audit_record, decode_all};
use super::{connection, migrate};
use crate::audit::AuditRecord;
use crate::store::copy::{Batch, Table, Value};
use crate::store::{AppliedMigration, StoreError, StoreOptions};

/// The copy's one transaction on the destination.
pub(crate) struct Target {
    tx: Transaction<'static, Postgres>,
    pool: PgPool,
}

impl Target {
    /// Connect to the database `options` names (one connection), apply its pending
    /// migrations, begin the transaction and lock `tables` in it. Returns the migrations
    /// applied.
    pub(crate) async fn begin(
        options: &StoreOptions,
        tables: &[&str],
    ) -> Result<(Target, Vec<AppliedMigration>), StoreError> {
        let connect = connection::connect_options(options)?;
        let mut one = options.clone();
        one.pool_size = 1;
        let pool = connection::pool(connect, &one).await?;
        let migrated = migrate::migrate(&pool).await?;
        let mut tx = pool.begin().await?;
        sqlx::query(AssertSqlSafe(format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            tables.join(", ")
        )))
        .execute(&mut *tx)
        .await?;
        Ok((Target { tx, pool }, migrated))
    }

    /// Those of `tables` that hold any row.
    pub(crate) async fn tables_with_rows(
        &mut self,
        tables: &[&'static str],
    ) -> Result<Vec<&'static str>, StoreError> {
        let mut occupied = Vec::new();
        for table in tables {
            let any: bool = sqlx::query(AssertSqlSafe(format!(
                "SELECT EXISTS (SELECT 1 FROM {table})"
            )))
            .fetch_one(&mut *self.tx)
            .await?
            .try_get(0)?;
            if any {
                occupied.push(*table);
            }
        }
        Ok(occupied)
    }

    /// Insert a batch of rows, in its order, with one statement.
    pub(crate) async fn insert(&mut self, batch: Batch) -> Result<(), StoreError> {
        let table = batch.table;
        let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
        let overriding = if table.identity.is_some() {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let mut insert = QueryBuilder::<Postgres>::new(format!(
            "INSERT INTO {} ({}){overriding} ",
            table.name,
            columns.join(", ")
        ));
        insert.push_values(batch.rows, |mut row, values| {
            for value in values {
                match value {
                    Value::Integer(v) => row.push_bind(v),
                    Value::Text(v) => row.push_bind(v),
                    Value::List(v) => row.push_bind(v),
                };
            }
        });
        insert
            .build()
            .persistent(false)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Set the sequence of `table`'s identity column to its largest value, so rows added
    /// after the copy continue after the copied ones.
    pub(crate) async fn continue_identity(&mut self, table: &Table) -> Result<(), StoreError> {
        let Some(column) = table.identity else {
            return Ok(());
        };
        let name = table.name;
        sqlx::query(AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('{name}', '{column}'), MAX({column})) \
             FROM {name} HAVING MAX({column}) IS NOT NULL"
        )))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// How many rows `table` holds, inside the transaction.
    pub(crate) async fn count(&mut self, table: &str) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&mut *self.tx)
            .await?
            .try_get(0)?;
        Ok(count.unsigned_abs())
    }

    /// Audit records with `seq > after`, in order, at most `limit`.
    pub(crate) async fn audit_records(
        &mut self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await?;
        decode_all(&rows, audit_record)
    }

    /// Every checkpoint's (seq, hash), oldest first.
    pub(crate) async fn audit_checkpoints(&mut self) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query("SELECT seq, hash FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Every sink's last delivered `seq`.
    pub(crate) async fn audit_sink_positions(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT sink, seq FROM audit_sink_positions ORDER BY sink")
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Commit the copy.
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        self.pool.close().await;
        Ok(())
    }
}

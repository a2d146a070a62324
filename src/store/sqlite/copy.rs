//! The source side of the store copy ([`crate::store::copy`]): a SQLite store read whole,
//! inside one read transaction, so what is copied is one consistent snapshot, and handed
//! on in batches. Reads through a `query_only` connection to an existing file: it never
//! creates, migrates or writes the database it reads.

use std::path::Path;

use rusqlite::{Connection, Row};

use super::{connection, migrate, rows};
use crate::store::copy::{Batch, Column, Kind, Snapshot, Table, Value};
use crate::store::{AppliedMigration, StoreError};

/// What the source says before it is copied.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceCheck {
    /// Migrations it has not recorded.
    pub(crate) pending: Vec<AppliedMigration>,
    /// The lease held longest, if one runs past `now`: a `writ serve` holds it.
    pub(crate) live_lease: Option<(String, i64)>,
}

/// The longest-held lease (holder, until) that runs past `now_unix`, if any.
const SQL_LIVE_LEASE: &str =
    "SELECT holder, expires_at FROM leases WHERE expires_at > ?1 ORDER BY expires_at DESC LIMIT 1";
/// The head of the audit log.
const SQL_HEAD: &str = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1";

fn live_lease(db: &Connection, now_unix: i64) -> Result<Option<(String, i64)>, StoreError> {
    use rusqlite::OptionalExtension;
    Ok(db
        .query_row(SQL_LIVE_LEASE, [now_unix], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Whether the database at `path` can be copied now: the migrations it lacks (the copy
/// needs exactly this version's schema), and a lease a running server holds at
/// `now_unix`.
pub(crate) fn check_source(path: &Path, now_unix: i64) -> Result<SourceCheck, StoreError> {
    let db = connection::open_existing_query_only(path)?;
    let pending = migrate::pending(&db)?;
    if !pending.is_empty() {
        return Ok(SourceCheck {
            pending,
            live_lease: None,
        });
    }
    Ok(SourceCheck {
        pending,
        live_lease: live_lease(&db, now_unix)?,
    })
}

/// Read every table of `tables` from the database at `path` in one read transaction, in
/// each table's order, and hand the rows to `send` in batches of at most `batch_rows`;
/// returns how many rows each table had, the audit head and any lease live at
/// `now_unix`, all from the same snapshot. Stops at the first error of `send`.
pub(crate) fn read_snapshot(
    path: &Path,
    tables: &'static [Table],
    batch_rows: usize,
    now_unix: i64,
    mut send: impl FnMut(Batch) -> Result<(), StoreError>,
) -> Result<Snapshot, StoreError> {
    let mut db = connection::open_existing_query_only(path)?;
    // Deferred: the snapshot starts at the first read and lasts until the end.
    let tx = db.transaction()?;
    if !migrate::pending(&tx)?.is_empty() {
        return Err(StoreError::Unavailable(
            "the database's schema changed since it was checked".to_owned(),
        ));
    }
    let mut snapshot = Snapshot::default();
    for table in tables {
        let columns: Vec<&str> = table.columns.iter().map(|c| c.from).collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            columns.join(", "),
            table.from,
            table.order
        );
        let mut statement = tx.prepare(&sql)?;
        let mut found = statement.query([])?;
        let mut batch = Vec::with_capacity(batch_rows);
        let mut count = 0_u64;
        while let Some(row) = found.next()? {
            batch.push(values(row, table)?);
            count += 1;
            if batch.len() == batch_rows {
                send(Batch {
                    table,
                    rows: std::mem::replace(&mut batch, Vec::with_capacity(batch_rows)),
                })?;
            }
        }
        if !batch.is_empty() {
            send(Batch { table, rows: batch })?;
        }
        snapshot.rows.push(count);
    }
    snapshot.head = {
        use rusqlite::OptionalExtension;
        tx.query_row(SQL_HEAD, [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
    };
    snapshot.live_lease = live_lease(&tx, now_unix)?;
    tx.rollback()?;
    Ok(snapshot)
}

/// One row's values, in `table`'s column order.
fn values(row: &Row<'_>, table: &Table) -> Result<Vec<Value>, StoreError> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, column)| value(row, i, table, column))
        .collect()
}

/// One value, as `column`'s kind says; a value of another type, or a list that is not a
/// JSON array of strings, is corrupt data named by its table and column.
fn value(row: &Row<'_>, i: usize, table: &Table, column: &Column) -> Result<Value, StoreError> {
    let corrupt =
        |why: String| StoreError::Corrupt(format!("{}.{}: {why}", table.from, column.from));
    let read = |e: rusqlite::Error| corrupt(e.to_string());
    Ok(match column.kind {
        Kind::Integer => Value::Integer(row.get(i).map_err(read)?),
        Kind::Text => Value::Text(row.get(i).map_err(read)?),
        Kind::List => Value::List(
            row.get::<_, Option<String>>(i)
                .map_err(read)?
                .as_deref()
                .map(rows::from_json)
                .transpose()
                .map_err(|e| match e {
                    StoreError::Corrupt(why) => corrupt(why),
                    other => other,
                })?,
        ),
    })
}

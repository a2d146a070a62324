//! Copying a SQLite store into an empty PostgreSQL database, row for row (`writ admin
//! store copy`): the move from one `writ serve` on a file to replicas sharing a database.
//!
//! This module owns what is copied (`TABLES`: every table of the schema, every column,
//! in an order the destination's foreign keys accept) and the order of the work:
//!
//! 1. migrate the destination and open ONE transaction on it, locking every table it
//!    fills against writers; refuse, writing nothing, unless all of them are empty;
//! 2. read the source inside ONE read transaction (a consistent snapshot), from a
//!    `query_only` connection, after checking that its schema is exactly this version's;
//!    stream its rows in batches into the destination's transaction (the backends'
//!    halves: `sqlite::copy` reads, `postgres::copy` writes);
//! 3. before committing, check the destination against what was read: the row count of
//!    every table, the audit chain walked end to end (read back from the destination
//!    with [`crate::audit::verify::Walker`], anchored by the copied checkpoints and
//!    witnessed by the copied sink positions, as `writ admin audit verify` walks it), and
//!    its head (seq, hash) equal to the source's; only then commit.
//!
//! It never writes to the source, never decrypts a CA key (the encrypted text is copied
//! as stored), never leaves a half copy (any failure before the commit rolls the one
//! destination transaction back, leaving the database as empty as it was), and never
//! invents a row, save one mapping: tokens SQLite kept in `used_tokens_before_0006` (see
//! `TABLES`). Signed checkpoints' signatures, and the checkpoint file, are checked by
//! the caller after the commit, with `writ admin audit verify`'s own code.

use std::path::{Path, PathBuf};

use crate::audit::verify::{Problem, Summary, Walker};
use crate::store::{AppliedMigration, StoreError, StoreOptions, postgres, sqlite};

/// How a column's values are read from SQLite and written to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `INTEGER` → `BIGINT` (or `SMALLINT`).
    Integer,
    /// `TEXT` → `TEXT`.
    Text,
    /// A JSON array of strings in `TEXT` → `TEXT[]`.
    List,
}

/// One destination column and the source expression it is read from.
#[derive(Debug)]
pub(crate) struct Column {
    /// The destination column.
    pub(crate) name: &'static str,
    /// The source's SQL expression (its column of the same name, but for two mappings).
    pub(crate) from: &'static str,
    /// Its type.
    pub(crate) kind: Kind,
}

/// A column copied as it is named.
const fn same(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        from: name,
        kind,
    }
}

/// One source table copied into one destination table.
#[derive(Debug)]
pub(crate) struct Table {
    /// The destination table.
    pub(crate) name: &'static str,
    /// The source table.
    pub(crate) from: &'static str,
    /// The source's `ORDER BY`: the order rows are written in.
    pub(crate) order: &'static str,
    /// A destination column `GENERATED ALWAYS AS IDENTITY` that is copied (with
    /// `OVERRIDING SYSTEM VALUE`); its sequence then continues after the largest value.
    pub(crate) identity: Option<&'static str>,
    /// Every column.
    pub(crate) columns: &'static [Column],
}

use Kind::{Integer, List, Text};

/// Everything copied, in this order (CA keys and tasks before the certificates that
/// reference them). Every column of every table of `migrations/sqlite` (up to 0014) and
/// of `migrations/postgres` is here, except what [`NOT_COPIED`] names; a test holds both
/// schemas to it.
pub(crate) const TABLES: &[Table] = &[
    Table {
        name: "ca_keys",
        from: "ca_keys",
        order: "rowid",
        identity: None,
        columns: &[
            same("id", Text),
            same("kind", Text),
            same("algorithm", Text),
            same("state", Text),
            same("fingerprint", Text),
            same("public_key", Text),
            // Encrypted with the CA passphrase ('' once retired): copied as stored.
            same("private_key", Text),
            same("created_at", Integer),
            same("activated_at", Integer),
            same("retired_at", Integer),
            same("deactivated_at", Integer),
            same("revoked_at", Integer),
        ],
    },
    Table {
        name: "ca_rotation_schedule",
        from: "ca_rotation_schedule",
        order: "id",
        identity: None,
        columns: &[
            same("id", Integer),
            same("every_seconds", Integer),
            same("set_at", Integer),
        ],
    },
    Table {
        name: "tasks",
        from: "tasks",
        order: "rowid",
        identity: None,
        columns: &[
            same("id", Text),
            same("issuer", Text),
            same("subject", Text),
            same("policy", Text),
            same("logins", List),
            same("hosts", List),
            same("purpose", Text),
            same("state", Text),
            same("created_at", Integer),
            same("expires_at", Integer),
            same("ended_at", Integer),
            same("end_reason", Text),
            same("extensions", List),
            same("force_command", Text),
            same("source_address", List),
        ],
    },
    // Issue order is SQLite's rowid (migration 0007 appends certificates in the order
    // they were issued): it becomes `issue_order`, which lists a certificate's renewals.
    Table {
        name: "certificates",
        from: "certificates",
        order: "rowid",
        identity: Some("issue_order"),
        columns: &[
            Column {
                name: "issue_order",
                from: "rowid",
                kind: Integer,
            },
            same("serial", Integer),
            same("task_id", Text),
            same("ca_key_id", Text),
            same("key_fingerprint", Text),
            same("principals", List),
            same("valid_after", Integer),
            same("valid_before", Integer),
            same("issued_at", Integer),
            same("revoked_at", Integer),
            same("renewed_from", Integer),
        ],
    },
    Table {
        name: "host_certificates",
        from: "host_certificates",
        order: "rowid",
        identity: None,
        columns: &[
            same("serial", Integer),
            same("ca_key_id", Text),
            same("key_fingerprint", Text),
            same("principals", List),
            same("issuer", Text),
            same("subject", Text),
            same("policy", Text),
            same("valid_after", Integer),
            same("valid_before", Integer),
            same("issued_at", Integer),
            same("revoked_at", Integer),
        ],
    },
    Table {
        name: "host_feeds",
        from: "host_feeds",
        order: "host",
        identity: None,
        columns: &[
            same("host", Text),
            same("issuer", Text),
            same("subject", Text),
            same("sequence", Integer),
            same("applied_at", Integer),
            same("reported_at", Integer),
        ],
    },
    Table {
        name: "inventory_hosts",
        from: "inventory_hosts",
        order: "host",
        identity: None,
        columns: &[
            same("host", Text),
            same("issuer", Text),
            same("subject", Text),
            same("reported_at", Integer),
            same("writ_enforced", Integer),
            same("summary", Text),
        ],
    },
    Table {
        name: "inventory_findings",
        from: "inventory_findings",
        order: "id",
        identity: Some("id"),
        columns: &[
            same("id", Integer),
            same("host", Text),
            same("kind", Text),
            same("subject", Text),
            same("fingerprint", Text),
            same("detail", Text),
            same("first_seen", Integer),
            same("last_seen", Integer),
            same("gone_at", Integer),
        ],
    },
    Table {
        name: "used_tokens",
        from: "used_tokens",
        order: "expires_at, issuer, token_hash",
        identity: None,
        columns: &[
            same("expires_at", Integer),
            same("issuer", Text),
            same("token_hash", Text),
        ],
    },
    // Tokens consumed before SQLite's migration 0006 keep their old table there, keyed
    // without an expiry a replay could reproduce; PostgreSQL has no such table. They are
    // mapped into `used_tokens` with a far-future `expires_at` (9999-12-31T23:59:59Z), so
    // every consumed token is still on record after the move and pruning (which removes
    // rows by `expires_at`) never drops them. What the mapping cannot do: PostgreSQL
    // finds a replay by the exact key (`exp` plus the longest leeway, issuer, hash), which
    // these rows do not carry, so they no longer refuse a replay by themselves. A token
    // used before 0006 expired long ago (lifetimes are at most 24 h), and an expired
    // token is refused before any replay check.
    Table {
        name: "used_tokens",
        from: "used_tokens_before_0006",
        order: "issuer, token_hash",
        identity: None,
        columns: &[
            Column {
                name: "expires_at",
                from: LEGACY_TOKENS_EXPIRE_AT,
                kind: Integer,
            },
            same("issuer", Text),
            same("token_hash", Text),
        ],
    },
    // With their exact seq, time and hashes: the chain is copied, not re-chained.
    Table {
        name: "audit_events",
        from: "audit_events",
        order: "seq",
        identity: None,
        columns: &[
            same("seq", Integer),
            same("time", Text),
            same("event", Text),
            same("outcome", Text),
            same("issuer", Text),
            same("subject", Text),
            same("policy", Text),
            same("task_id", Text),
            same("serial", Text),
            same("key_fingerprint", Text),
            same("logins", List),
            same("hosts", List),
            same("host", Text),
            same("ca_fingerprint", Text),
            same("source_ip", Text),
            same("reason", Text),
            same("request_id", Text),
            same("prev_hash", Text),
            same("hash", Text),
            same("purpose", Text),
            same("command", Text),
        ],
    },
    Table {
        name: "audit_checkpoints",
        from: "audit_checkpoints",
        order: "seq",
        identity: None,
        columns: &[
            same("seq", Integer),
            same("hash", Text),
            same("time", Text),
            same("ca_fingerprint", Text),
            same("signature", Text),
        ],
    },
    Table {
        name: "audit_sink_positions",
        from: "audit_sink_positions",
        order: "sink",
        identity: None,
        columns: &[
            same("sink", Text),
            same("seq", Integer),
            same("updated_at", Text),
        ],
    },
];

/// The `expires_at` given to tokens from SQLite's `used_tokens_before_0006` (an SQL
/// literal): 9999-12-31T23:59:59Z, see `TABLES`.
pub(crate) const LEGACY_TOKENS_EXPIRE_AT: &str = "253402300799";

/// Tables of either schema that are not copied, and why.
#[cfg(test)]
pub(crate) const NOT_COPIED: &[(&str, &str)] = &[
    (
        "_sqlx_migrations",
        "each database's own migration bookkeeping; the destination's is written by its \
         migrations",
    ),
    (
        "audit_prune_marker",
        "holds a row only inside a prune's transaction, never once it committed",
    ),
    (
        "leases",
        "held by processes of the old deployment, which is stopped; the replicas take \
         their own",
    ),
];

/// Rows per batch: at most 20 columns, so at most 10 000 parameters per `INSERT`
/// (PostgreSQL takes 65 535).
pub(crate) const BATCH_ROWS: usize = 500;

/// A value read from the source, as the destination takes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// An integer or NULL.
    Integer(Option<i64>),
    /// A text or NULL.
    Text(Option<String>),
    /// A list or NULL.
    List(Option<Vec<String>>),
}

/// Rows of one [`Table`], each with a value per column, in column order.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Which table.
    pub(crate) table: &'static Table,
    /// The rows.
    pub(crate) rows: Vec<Vec<Value>>,
}

/// What the source's snapshot held.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Rows read per entry of `TABLES`, in its order.
    pub(crate) rows: Vec<u64>,
    /// The audit log's head (seq, hash), if it has records.
    pub(crate) head: Option<(i64, String)>,
    /// A lease (holder, until) that runs past the copy's `now`: a `writ serve` holds it.
    pub(crate) live_lease: Option<(String, i64)>,
}

/// Why a copy failed. Unless it says otherwise, nothing was committed: the destination
/// is as it was.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the source failed.
    #[error("the source: {0}")]
    Source(StoreError),
    /// The source's schema is older than this version's.
    #[error(
        "the source is not at this version's schema (migrations {} not applied): \
         run `writ admin store migrate` on it first",
        list(.0)
    )]
    SourceBehind(Vec<AppliedMigration>),
    /// A `writ serve` holds the source's lease: it is running, and would go on writing
    /// what the copy would miss.
    #[error(
        "a writ serve ({holder}) is using the source: its lease runs until {until} (Unix \
         time); stop it first (a server stopped uncleanly lets its lease run out within \
         seconds)"
    )]
    SourceInUse {
        /// The lease's holder (`host:pid:random`).
        holder: String,
        /// Unix seconds.
        until: i64,
    },
    /// The destination failed.
    #[error("the destination: {0}")]
    Destination(StoreError),
    /// The destination already holds rows.
    #[error(
        "the destination is not empty ({} already hold rows): copy only into a database \
         no writ has used; nothing was copied",
        .0.join(", ")
    )]
    NotEmpty(Vec<&'static str>),
    /// A table's row count in the destination is not what was read.
    #[error(
        "{table}: {source_rows} rows read from the source, {copied} in the copy; nothing \
         was committed"
    )]
    CountMismatch {
        /// The destination table.
        table: &'static str,
        /// Rows read.
        source_rows: u64,
        /// Rows the destination holds.
        copied: u64,
    },
    /// The copied audit chain does not verify.
    #[error("the copied audit log does not verify: {0}; nothing was committed")]
    Chain(Problem),
    /// The copy's audit head is not the source's.
    #[error(
        "the copy's audit head ({}) is not the source's ({}); nothing was committed",
        head(.copied),
        head(.source_head)
    )]
    HeadMismatch {
        /// The source's head.
        source_head: Option<(i64, String)>,
        /// The copy's.
        copied: Option<(i64, String)>,
    },
}

fn list(migrations: &[AppliedMigration]) -> String {
    migrations
        .iter()
        .map(|m| format!("{:04}", m.version))
        .collect::<Vec<_>>()
        .join(", ")
}

fn head(head: &Option<(i64, String)>) -> String {
    match head {
        Some((seq, hash)) => format!("seq {seq}, hash {hash}"),
        None => "empty".to_owned(),
    }
}

/// Rows copied into one destination table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRows {
    /// The destination table.
    pub table: &'static str,
    /// Rows it holds now.
    pub rows: u64,
}

/// What a committed copy holds.
#[derive(Debug, Clone)]
pub struct Copied {
    /// Migrations applied to the destination first.
    pub migrated: Vec<AppliedMigration>,
    /// Rows per destination table, in the order they were copied.
    pub tables: Vec<TableRows>,
    /// Of `used_tokens`, the rows from SQLite's `used_tokens_before_0006`.
    pub legacy_tokens: u64,
    /// The audit log's head (seq, hash), the source's and the copy's.
    pub audit_head: Option<(i64, String)>,
    /// The walk of the copied chain before the commit.
    pub walked: Summary,
}

/// Copy the SQLite database at `source` into the empty PostgreSQL database `destination`
/// names, at `now_unix` (see the module's documentation for the steps and what it never
/// does). Refused while a `writ serve` holds the source's lease at `now_unix`.
pub async fn sqlite_to_postgres(
    source: &Path,
    destination: &StoreOptions,
    now_unix: i64,
) -> Result<Copied, CopyError> {
    // The source first: a source that cannot be copied changes nothing anywhere.
    let check = {
        let source = source.to_owned();
        blocking(move || sqlite::copy::check_source(&source, now_unix))
            .await
            .map_err(CopyError::Source)?
    };
    if !check.pending.is_empty() {
        return Err(CopyError::SourceBehind(check.pending));
    }
    if let Some((holder, until)) = check.live_lease {
        return Err(CopyError::SourceInUse { holder, until });
    }

    let destination_tables = destination_tables();
    let (mut target, migrated) = postgres::copy::Target::begin(destination, &destination_tables)
        .await
        .map_err(CopyError::Destination)?;
    let occupied = target
        .tables_with_rows(&destination_tables)
        .await
        .map_err(CopyError::Destination)?;
    if !occupied.is_empty() {
        return Err(CopyError::NotEmpty(occupied));
    }

    let snapshot = stream(source.to_owned(), now_unix, &mut target).await?;
    if let Some((holder, until)) = snapshot.live_lease {
        return Err(CopyError::SourceInUse { holder, until });
    }
    for table in TABLES.iter().filter(|t| t.identity.is_some()) {
        target
            .continue_identity(table)
            .await
            .map_err(CopyError::Destination)?;
    }

    let mut tables = Vec::new();
    for name in &destination_tables {
        let source_rows: u64 = TABLES
            .iter()
            .zip(&snapshot.rows)
            .filter(|(t, _)| t.name == *name)
            .map(|(_, rows)| rows)
            .sum();
        let copied = target.count(name).await.map_err(CopyError::Destination)?;
        if copied != source_rows {
            return Err(CopyError::CountMismatch {
                table: name,
                source_rows,
                copied,
            });
        }
        tables.push(TableRows {
            table: name,
            rows: copied,
        });
    }

    let walked = walk(&mut target).await?;
    let copied_head = walked.head_hash.clone().map(|hash| (walked.last, hash));
    if copied_head != snapshot.head {
        return Err(CopyError::HeadMismatch {
            source_head: snapshot.head,
            copied: copied_head,
        });
    }

    target.commit().await.map_err(CopyError::Destination)?;
    let legacy_tokens = TABLES
        .iter()
        .zip(&snapshot.rows)
        .filter(|(t, _)| t.from == "used_tokens_before_0006")
        .map(|(_, rows)| rows)
        .sum();
    Ok(Copied {
        migrated,
        tables,
        legacy_tokens,
        audit_head: snapshot.head,
        walked,
    })
}

/// The destination tables, each once, in copy order.
fn destination_tables() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for table in TABLES {
        if !names.contains(&table.name) {
            names.push(table.name);
        }
    }
    names
}

/// Read the source's snapshot on a blocking thread and write each batch into `target` as
/// it arrives. A failure on either side stops both: the reader's next send fails once
/// the receiver is gone, and the destination's transaction is rolled back by the caller.
async fn stream(
    source: PathBuf,
    now_unix: i64,
    target: &mut postgres::copy::Target,
) -> Result<Snapshot, CopyError> {
    let (send, mut receive) = tokio::sync::mpsc::channel::<Batch>(4);
    let reader = tokio::task::spawn_blocking(move || {
        sqlite::copy::read_snapshot(&source, TABLES, BATCH_ROWS, now_unix, |batch| {
            send.blocking_send(batch).map_err(|_| {
                StoreError::Unavailable("the destination stopped taking rows".to_owned())
            })
        })
    });
    while let Some(batch) = receive.recv().await {
        target.insert(batch).await.map_err(CopyError::Destination)?;
    }
    reader
        .await
        .map_err(|e| CopyError::Source(StoreError::Unavailable(format!("reading stopped: {e}"))))?
        .map_err(CopyError::Source)
}

/// Records read back per query while walking the copied chain.
const WALK_BATCH: i64 = 1000;

/// Walk the copied chain inside the destination's transaction, as `writ admin audit
/// verify` walks a store: from its oldest record, anchored by the checkpoints, witnessed
/// by the sink positions.
async fn walk(target: &mut postgres::copy::Target) -> Result<Summary, CopyError> {
    let checkpoints = target
        .audit_checkpoints()
        .await
        .map_err(CopyError::Destination)?;
    let mut walker = Walker::new(checkpoints, true).map_err(CopyError::Chain)?;
    for (sink, seq) in target
        .audit_sink_positions()
        .await
        .map_err(CopyError::Destination)?
    {
        walker.witness(seq, format!("sink {sink:?}"));
    }
    let mut after = 0;
    loop {
        let batch = target
            .audit_records(after, WALK_BATCH)
            .await
            .map_err(CopyError::Destination)?;
        for record in &batch {
            walker.push(record).map_err(CopyError::Chain)?;
        }
        match batch.last() {
            Some(last) if i64::try_from(batch.len()).unwrap_or(WALK_BATCH) == WALK_BATCH => {
                after = last.seq;
            }
            _ => break,
        }
    }
    walker.finish().map_err(CopyError::Chain)
}

/// Run `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Unavailable(format!("reading stopped: {e}")))?
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use rusqlite::Connection;

    use super::{NOT_COPIED, TABLES};

    /// The copy's view of one schema: table → its columns.
    type Schema = BTreeMap<String, BTreeSet<String>>;

    /// What `TABLES` reads from the source: table → columns.
    fn read_from_source() -> Schema {
        let mut schema = Schema::new();
        for table in TABLES {
            let columns = schema.entry(table.from.to_owned()).or_default();
            columns.extend(
                table
                    .columns
                    .iter()
                    .filter(|c| c.from != "rowid" && c.from.parse::<i64>().is_err())
                    .map(|c| c.from.to_owned()),
            );
        }
        schema
    }

    /// Every table of a store migrated to this version's SQLite schema is copied, every
    /// one of its columns read, or the table is named with a reason; the one column not
    /// read is the legacy tokens' expiry, which the copy replaces (see `TABLES`).
    #[tokio::test]
    async fn every_sqlite_table_and_column_is_copied_or_said_why_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        crate::store::sqlite::migrate(path.to_str().expect("path"))
            .await
            .expect("migrate");
        let db = Connection::open(&path).expect("open");
        let mut actual = Schema::new();
        let tables: Vec<String> = db
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .expect("tables")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("names");
        for table in tables {
            if NOT_COPIED.iter().any(|(name, _)| *name == table) {
                continue;
            }
            let columns: BTreeSet<String> = db
                .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .expect("columns")
                .query_map([], |r| r.get(0))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("names");
            actual.insert(table, columns);
        }
        let mut expected = read_from_source();
        expected
            .get_mut("used_tokens_before_0006")
            .expect("legacy tokens")
            .insert("expires_at".to_owned());
        assert_eq!(actual, expected);
    }

    /// Under `postgres` so that `--skip postgres` leaves these out.
    mod postgres {
        use std::collections::BTreeSet;
        use std::path::PathBuf;

        use rand_core::OsRng;
        use rusqlite::Connection;
        use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

        use super::super::{CopyError, LEGACY_TOKENS_EXPIRE_AT, TABLES, sqlite_to_postgres};
        use super::{NOT_COPIED, Schema};
        use crate::admin::audit::{VerifyOptions, verify};
        use crate::audit::service::checkpoint_now;
        use crate::audit::verify::Problem;
        use crate::audit::{AuditEntry, Outcome, event};
        use crate::authority::Keyring;
        use crate::authority::keyring::new_key_record;
        use crate::config::KeyAlgorithm;
        use crate::store::contract::{at, issuance, task_id_of, with_active_key};
        use crate::store::postgres::PgStore;
        use crate::store::postgres::scratch::ScratchDatabase;
        use crate::store::sqlite::SqliteStore;
        use crate::store::{
            AuditLog, KeyState, KeyTransition, KeyringChange, RotationSchedule, Store, StoreError,
            StoreOptions, TaskEnd, TaskState,
        };

        /// A connection to the scratch database, behind the store: for reading what a
        /// test must see row by row.
        async fn connect(options: &StoreOptions) -> PgConnection {
            PgConnection::connect(&options.url).await.expect("connect")
        }

        async fn rows_in(options: &StoreOptions, table: &str) -> i64 {
            let mut db = connect(options).await;
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&mut db)
                .await
                .expect("count")
        }

        /// Every table of the PostgreSQL schema is filled by the copy, every one of its
        /// columns by every source table copied into it, or the table is named with a
        /// reason.
        #[tokio::test]
        async fn every_postgres_table_and_column_is_filled_or_said_why_not() {
            let database = ScratchDatabase::create().await;
            crate::store::migrate(&database.options)
                .await
                .expect("migrate");
            let mut db = connect(&database.options).await;
            let columns: Vec<(String, String)> = sqlx::query_as(
                "SELECT table_name::text, column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public'",
            )
            .fetch_all(&mut db)
            .await
            .expect("columns");
            let mut actual = Schema::new();
            for (table, column) in columns {
                if !NOT_COPIED.iter().any(|(name, _)| *name == table) {
                    actual.entry(table).or_default().insert(column);
                }
            }
            let mut filled = Schema::new();
            for table in TABLES {
                let columns: BTreeSet<String> =
                    table.columns.iter().map(|c| c.name.to_owned()).collect();
                if let Some(earlier) = filled.get(table.name) {
                    assert_eq!(earlier, &columns, "{} fills other columns", table.from);
                }
                filled.insert(table.name.to_owned(), columns);
            }
            assert_eq!(actual, filled);
        }

        /// The passphrase the contract's keys are encrypted with.
        const PASSPHRASE: &str = "pass";

        /// A SQLite store with some of everything: two tasks (one completed), a renewal,
        /// a revoked certificate, a rotation (so three keys), a rotation schedule, a
        /// signed checkpoint, a sink position, a consumed token and one kept from before
        /// SQLite's migration 0006. Returns its directory and the file.
        async fn filled_sqlite() -> (tempfile::TempDir, PathBuf) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("writ.db");
            let store = SqliteStore::open(path.to_str().expect("path"))
                .await
                .expect("open");
            let first = with_active_key(&store).await;
            store
                .record_issuance(issuance(&first, 1, None, Some("token-1")))
                .await
                .expect("issue 1");
            let mut renewal = issuance(&first, 2, Some(&task_id_of(1)), None);
            renewal.certificate.renewed_from = Some(1);
            store.record_issuance(renewal).await.expect("renew 1");
            store
                .record_issuance(issuance(&first, 3, None, Some("token-3")))
                .await
                .expect("issue 3");
            store
                .end_task(
                    &TaskEnd {
                        task_id: task_id_of(3),
                        state: TaskState::Completed,
                        reason: Some("done".into()),
                        now: at(200),
                        token_use: None,
                    },
                    Box::new(|live| {
                        let mut records =
                            vec![AuditEntry::new(event::TASK_COMPLETED, Outcome::Success)];
                        records.extend(live.iter().map(|c| {
                            let mut e = AuditEntry::new(event::CERT_REVOKED, Outcome::Success);
                            e.serial = Some(c.serial.to_string());
                            e
                        }));
                        records
                    }),
                )
                .await
                .expect("complete task 3");
            // A rotation: the first key retires, a new one signs, another waits.
            let next = new_key_record(
                PASSPHRASE,
                KeyAlgorithm::Ed25519,
                crate::store::KeyKind::User,
                KeyState::Next,
                300,
                &mut OsRng,
            )
            .expect("key");
            let spare = new_key_record(
                PASSPHRASE,
                KeyAlgorithm::Ed25519,
                crate::store::KeyKind::User,
                KeyState::Next,
                310,
                &mut OsRng,
            )
            .expect("key");
            store
                .change_keyring(&KeyringChange {
                    new_keys: vec![next.clone()],
                    audit: vec![AuditEntry::new(event::CA_KEY_ROTATED, Outcome::Success)],
                    ..KeyringChange::at(at(300))
                })
                .await
                .expect("publish next");
            store
                .change_keyring(&KeyringChange {
                    transitions: vec![
                        KeyTransition {
                            id: first.clone(),
                            from: KeyState::Active,
                            to: KeyState::Retiring,
                            at: 310,
                            unless_valid_after: None,
                        },
                        KeyTransition {
                            id: next.id.clone(),
                            from: KeyState::Next,
                            to: KeyState::Active,
                            at: 310,
                            unless_valid_after: None,
                        },
                    ],
                    new_keys: vec![spare],
                    audit: vec![AuditEntry::new(event::CA_KEY_ROTATED, Outcome::Success)],
                    ..KeyringChange::at(at(310))
                })
                .await
                .expect("rotate");
            store
                .record_issuance(issuance(&next.id, 4, None, Some("token-4")))
                .await
                .expect("issue 4 with the new key");
            store
                .set_rotation_schedule(
                    Some(RotationSchedule {
                        every_seconds: 86_400,
                        set_at: 320,
                    }),
                    &AuditEntry::new(event::CA_KEY_ROTATED, Outcome::Success),
                    at(320),
                )
                .await
                .expect("schedule");
            let keyring = Keyring::from_records(&store.ca_keys().await.expect("keys"), PASSPHRASE)
                .expect("keyring");
            checkpoint_now(&store, keyring.signer().as_ref(), None, at(330))
                .await
                .expect("checkpoint")
                .expect("a head to sign");
            store
                .append_audit(
                    &AuditEntry::new(event::AUDIT_PRUNED, Outcome::Success),
                    at(340),
                )
                .await
                .expect("one more record after the checkpoint");
            store
                .set_audit_sink_position("siem", 5, at(350))
                .await
                .expect("sink");
            drop(store);
            Connection::open(&path)
                .expect("open")
                .execute(
                    "INSERT INTO used_tokens_before_0006 (issuer, token_hash, expires_at) \
                     VALUES ('i', 'old', 50)",
                    [],
                )
                .expect("a token kept from before migration 0006");
            (dir, path)
        }

        /// The copy reads back, through the store, exactly what the source holds: keys,
        /// tasks, certificates in issue order, the audit log, checkpoints, sinks, the
        /// schedule, the revocation feed; consumed tokens stay consumed; `writ admin audit
        /// verify` passes; what is issued afterwards continues the issue order. A second
        /// copy into it is refused and changes nothing.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_store_is_copied_row_for_row_and_once() {
            let (_dir, path) = filled_sqlite().await;
            let database = ScratchDatabase::create().await;
            let copied = sqlite_to_postgres(&path, &database.options, 1_000)
                .await
                .expect("copy");
            let rows: Vec<(&str, u64)> = copied.tables.iter().map(|t| (t.table, t.rows)).collect();
            assert_eq!(
                rows,
                [
                    ("ca_keys", 3),
                    ("ca_rotation_schedule", 1),
                    ("tasks", 3),
                    ("certificates", 4),
                    ("host_certificates", 0),
                    ("host_feeds", 0),
                    ("inventory_hosts", 0),
                    ("inventory_findings", 0),
                    ("used_tokens", 4),
                    ("audit_events", 10),
                    ("audit_checkpoints", 1),
                    ("audit_sink_positions", 1),
                ]
            );
            assert_eq!(copied.legacy_tokens, 1);
            assert_eq!(copied.walked.checkpoints_matched, 1);

            let source = SqliteStore::open(path.to_str().expect("path"))
                .await
                .expect("source");
            let copy = PgStore::open(&database.options, None).await.expect("copy");
            let (source, copy): (&dyn Store, &dyn Store) = (&source, &copy);
            assert_eq!(copied.audit_head, source.audit_head().await.expect("head"));
            assert_eq!(copy.audit_head().await.expect("head"), copied.audit_head);
            assert!(copy.ca_keys().await.expect("keys") == source.ca_keys().await.expect("keys"));
            assert_eq!(
                copy.rotation_schedule().await.expect("schedule"),
                source.rotation_schedule().await.expect("schedule")
            );
            for serial in 1..=4 {
                let task = task_id_of(if serial == 2 { 1 } else { serial });
                assert_eq!(
                    copy.task(&task).await.expect("task"),
                    source.task(&task).await.expect("task")
                );
                assert_eq!(
                    copy.task_certificates(&task).await.expect("certificates"),
                    source.task_certificates(&task).await.expect("certificates")
                );
                assert_eq!(
                    copy.certificate(serial).await.expect("certificate"),
                    source.certificate(serial).await.expect("certificate")
                );
            }
            assert_eq!(
                copy.audit_records(0, i64::MAX).await.expect("records"),
                source.audit_records(0, i64::MAX).await.expect("records")
            );
            assert_eq!(
                copy.audit_checkpoints().await.expect("checkpoints"),
                source.audit_checkpoints().await.expect("checkpoints")
            );
            assert_eq!(
                copy.audit_sink_positions().await.expect("sinks"),
                source.audit_sink_positions().await.expect("sinks")
            );
            for now in [150, 500, 5_000] {
                assert_eq!(
                    copy.revocations(now).await.expect("feed"),
                    source.revocations(now).await.expect("feed")
                );
                assert_eq!(
                    copy.ca_key_usage(now).await.expect("usage"),
                    source.ca_key_usage(now).await.expect("usage")
                );
            }
            let report = verify(copy, &VerifyOptions::default())
                .await
                .expect("verify");
            assert!(report.ok, "{report:?}");
            assert_eq!(report.checkpoints_matched, 1);

            // Consumed tokens stay consumed; the legacy one is kept far in the future.
            let active = copy
                .ca_keys()
                .await
                .expect("keys")
                .into_iter()
                .find(|k| k.state == KeyState::Active)
                .expect("active key");
            let replay = copy
                .record_issuance(issuance(&active.id, 9, None, Some("token-1")))
                .await;
            assert!(matches!(replay, Err(StoreError::TokenReused)), "{replay:?}");
            let mut db = connect(&database.options).await;
            let legacy: i64 =
                sqlx::query_scalar("SELECT expires_at FROM used_tokens WHERE token_hash = 'old'")
                    .fetch_one(&mut db)
                    .await
                    .expect("legacy token");
            assert_eq!(Some(legacy), LEGACY_TOKENS_EXPIRE_AT.parse().ok());
            // Issue order continues after the copied certificates: a renewal issued now
            // comes after the copied one when its parent is revoked.
            let mut renewal = issuance(&active.id, 10, Some(&task_id_of(1)), None);
            renewal.certificate.renewed_from = Some(1);
            copy.record_issuance(renewal)
                .await
                .expect("renew on the copy");
            let revoked = copy
                .revoke_certificate(1, at(400), Box::new(|_| Vec::new()))
                .await
                .expect("revoke");
            let serials: Vec<i64> = revoked.iter().map(|c| c.serial).collect();
            assert_eq!(serials, [1, 2, 10]);

            // A second copy is refused and changes nothing.
            let before = rows_in(&database.options, "audit_events").await;
            let again = sqlite_to_postgres(&path, &database.options, 1_000).await;
            let Err(CopyError::NotEmpty(tables)) = again else {
                panic!("a second copy was not refused: {again:?}");
            };
            assert!(tables.contains(&"audit_events"), "{tables:?}");
            assert_eq!(rows_in(&database.options, "audit_events").await, before);
            assert_eq!(rows_in(&database.options, "certificates").await, 5);
        }

        /// Each table of the destination is empty.
        async fn assert_empty(options: &StoreOptions) {
            for table in TABLES {
                assert_eq!(rows_in(options, table.name).await, 0, "{}", table.name);
            }
        }

        /// A row that does not decode stops the copy halfway (after the CA keys were
        /// written into the transaction): named by table and column, nothing committed.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_copy_that_fails_halfway_leaves_the_destination_empty() {
            let (_dir, path) = filled_sqlite().await;
            Connection::open(&path)
                .expect("open")
                .execute_batch("UPDATE tasks SET logins = 'not a list'")
                .expect("a corrupt row");
            let database = ScratchDatabase::create().await;
            let failed = sqlite_to_postgres(&path, &database.options, 1_000).await;
            let Err(CopyError::Source(StoreError::Corrupt(why))) = &failed else {
                panic!("{failed:?}");
            };
            assert!(why.starts_with("tasks.logins: bad JSON list"), "{why}");
            assert_empty(&database.options).await;
        }

        /// A source whose audit log was edited is not committed: the copy stops at the
        /// edited record and the destination stays empty.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_broken_chain_leaves_the_destination_empty() {
            let (_dir, path) = filled_sqlite().await;
            // An attacker with the file: the append-only trigger goes first.
            Connection::open(&path)
                .expect("open")
                .execute_batch(
                    "DROP TRIGGER audit_events_no_update; \
                     UPDATE audit_events SET reason = 'edited' WHERE seq = 4;",
                )
                .expect("tamper");
            let database = ScratchDatabase::create().await;
            let refused = sqlite_to_postgres(&path, &database.options, 1_000).await;
            assert!(
                matches!(refused, Err(CopyError::Chain(Problem::Edited { seq: 4 }))),
                "{refused:?}"
            );
            assert_empty(&database.options).await;
        }

        /// A running server (its lease live), or a source on an older schema, is refused
        /// before anything is written anywhere; the source is not migrated either.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_source_in_use_or_behind_is_refused() {
            let (_dir, path) = filled_sqlite().await;
            let database = ScratchDatabase::create().await;
            {
                let store = SqliteStore::open(path.to_str().expect("path"))
                    .await
                    .expect("open");
                assert!(
                    store
                        .hold_lease("background-work", "ca-1:42:ab", 900, 1_010)
                        .await
                        .expect("lease")
                );
            }
            let in_use = sqlite_to_postgres(&path, &database.options, 1_000).await;
            assert!(
                matches!(&in_use, Err(CopyError::SourceInUse { until: 1_010, .. })),
                "{in_use:?}"
            );
            sqlite_to_postgres(&path, &database.options, 1_011)
                .await
                .map(|_| ())
                .expect("copied once the lease ran out");

            let behind = ScratchDatabase::create().await;
            Connection::open(&path)
                .expect("open")
                .execute_batch("DELETE FROM _sqlx_migrations WHERE version = 15")
                .expect("as if migration 15 never ran");
            let refused = sqlite_to_postgres(&path, &behind.options, 2_000).await;
            let Err(CopyError::SourceBehind(pending)) = refused else {
                panic!("{refused:?}");
            };
            assert_eq!(pending.iter().map(|m| m.version).collect::<Vec<_>>(), [15]);
            let mut db = connect(&behind.options).await;
            let migrated: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(&mut db)
                    .await
                    .expect("bookkeeping");
            assert!(!migrated, "the destination was touched");
            let still: i64 = Connection::open(&path)
                .expect("open")
                .query_row("SELECT COUNT(*) FROM _sqlx_migrations", [], |r| r.get(0))
                .expect("count");
            assert_eq!(still, 14, "the source was migrated");
        }
    }
}

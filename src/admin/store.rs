//! `writ admin store …`: the operator's commands on the store itself rather than on what
//! it holds.
//!
//! - `migrate` — bring the configured store's schema up to date and say which migrations
//!   were applied. Opening a store migrates it too; this is for operators who migrate
//!   with a new binary before they roll it out. PostgreSQL migrates under sqlx's advisory lock,
//!   so it is safe while replicas run.
//! - `copy --to postgres://…` — copy the configured SQLite store into an empty PostgreSQL
//!   database ([`crate::store::copy`] does the rows, in one snapshot and one transaction),
//!   then open the copy as the replicas will and check it with `writ admin audit
//!   verify`'s own code ([`super::audit::verify`]): the chain end to end, the signed
//!   checkpoints (the database's and the configured checkpoint file), the sinks, and the
//!   head, which must be the source's.
//!
//! Never writes to the configured store when copying it, and never takes a password from
//! a URL or prints one: every URL shown goes through [`crate::text::redact_url`].

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::audit::{AuditCommandError, VerifyOptions, VerifyReport, verify};
use super::{AdminError, Context, Render, Status, emit, pretty};
use crate::config::{ConfigError, read_password_file};
use crate::store::copy::{CopyError, sqlite_to_postgres};
use crate::store::{self as stores, AppliedMigration, StoreError, StoreOptions, postgres};
use crate::text::redact_url;

/// Longest one statement of the copy may run: an `INSERT` of one batch, or a count or a
/// read of a whole copied table before the commit, on a database nothing else uses yet.
/// Far above `[storage] statement_timeout`, which bounds a request's statements.
const COPY_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);

/// `writ admin store …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StoreCommand {
    /// Bring the store's schema up to date; print which migrations were applied.
    ///
    /// `writ serve` and every `writ admin` command migrate the store when they open it;
    /// run the new binary's once to migrate before rolling it out. On PostgreSQL it takes the
    /// migrations' advisory lock, so it is safe while replicas run (they wait for it, or
    /// find the migrations applied).
    Migrate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy the configured SQLite store into an empty PostgreSQL database.
    ///
    /// Stop `writ serve` first (the copy is refused while it holds the store's lease).
    /// Every row is copied exactly: CA keys still encrypted, tasks, certificates in issue
    /// order, used tokens, the audit log with its sequence numbers, times and hashes,
    /// signed checkpoints and sink positions. The source is read in one snapshot and never
    /// written; the destination is migrated, must hold no data, and is written in one
    /// transaction committed only after its row counts, audit chain and head match the
    /// source. The copy is then opened as the replicas will open it and verified like
    /// `writ admin audit verify`. Then point `[storage] url` at the database.
    #[command(after_help = "\
Example:
  systemctl stop writ
  writ admin --config /etc/writ/writ.toml store copy \\
      --to 'postgres://writ@db.example.com/writ?sslmode=verify-full' \\
      --password-file /etc/writ/db.pass")]
    Copy {
        /// The PostgreSQL database, never with a password:
        /// `postgres://USER@HOST[:PORT]/DATABASE[?sslmode=…]`.
        #[arg(long, value_name = "URL")]
        to: String,
        /// A file holding the database password (one line, not readable by every local
        /// user). Unset: the PGPASSWORD environment variable or ~/.pgpass.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Why a store command failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreCommandError {
    /// `[storage]` could not be turned into store options (its password file).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `store copy` copies a SQLite store only.
    #[error(
        "[storage] url is {0}: `store copy` copies a SQLite store (sqlite://PATH) into \
         PostgreSQL"
    )]
    SourceNotSqlite(String),
    /// `--to` does not name a PostgreSQL database.
    #[error("--to {0} is not a PostgreSQL URL: use postgres://USER@HOST[:PORT]/DATABASE")]
    DestinationNotPostgres(String),
    /// `--to` carries a password (held redacted).
    #[error(
        "--to {0} carries a password: put it in a file --password-file names (or in the \
         PGPASSWORD environment variable), never in the URL"
    )]
    PasswordInUrl(String),
    /// The copy failed; the destination is as it was.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// The copy was committed, but opening or verifying it failed.
    #[error(
        "the copy in {destination} was committed but does not verify: {why}; the source is \
         unchanged: drop and recreate that database before copying again"
    )]
    Unverified {
        /// The destination (redacted).
        destination: String,
        /// What failed.
        why: String,
    },
}

/// Run `writ admin store …`, writing its report to `out`.
pub async fn run(
    context: &Context,
    command: StoreCommand,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    match command {
        StoreCommand::Migrate { json } => {
            let report = migrate(context).await?;
            emit(out, &report, json)?;
        }
        StoreCommand::Copy {
            to,
            password_file,
            json,
        } => {
            let report = copy(context, &to, password_file.as_deref()).await?;
            emit(out, &report, json)?;
        }
    }
    Ok(Status::Success)
}

/// One migration, for printing.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationLine {
    /// Its number.
    pub version: i64,
    /// What it does.
    pub description: String,
}

impl From<&AppliedMigration> for MigrationLine {
    fn from(m: &AppliedMigration) -> MigrationLine {
        MigrationLine {
            version: m.version,
            description: m.description.to_owned(),
        }
    }
}

/// What `store migrate` did.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    /// The store's URL, without any password.
    pub store: String,
    /// Whether nothing needed applying.
    pub up_to_date: bool,
    /// The migrations applied now, in order.
    pub applied: Vec<MigrationLine>,
}

impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.up_to_date {
            return writeln!(f, "{} is up to date: no migration applied", self.store);
        }
        writeln!(
            f,
            "migrated {}: applied {} migration{}",
            self.store,
            self.applied.len(),
            if self.applied.len() == 1 { "" } else { "s" }
        )?;
        for m in &self.applied {
            writeln!(f, "  {:04} {}", m.version, m.description)?;
        }
        Ok(())
    }
}

impl Render for MigrateReport {
    fn text(&self) -> String {
        self.to_string()
    }

    fn json(&self) -> String {
        pretty(self)
    }
}

/// Migrate the configured store.
pub async fn migrate(context: &Context) -> Result<MigrateReport, StoreCommandError> {
    let options = context.config.storage.store_options()?;
    let applied = stores::migrate(&options).await?;
    Ok(MigrateReport {
        store: redact_url(&options.url),
        up_to_date: applied.is_empty(),
        applied: applied.iter().map(MigrationLine::from).collect(),
    })
}

/// Rows in one table of the copy.
#[derive(Debug, Clone, Serialize)]
pub struct TableLine {
    /// The table.
    pub table: &'static str,
    /// Its rows.
    pub rows: u64,
}

/// An audit head.
#[derive(Debug, Clone, Serialize)]
pub struct Head {
    /// The newest record's seq.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
}

/// What `store copy` did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// The source's URL.
    pub source: String,
    /// The destination's URL, without any password.
    pub destination: String,
    /// Migrations applied to the destination first.
    pub migrated: Vec<MigrationLine>,
    /// Rows per table, as in the source and the copy.
    pub tables: Vec<TableLine>,
    /// Of `used_tokens`, the rows from SQLite's `used_tokens_before_0006` (kept with a
    /// far-future expiry).
    pub legacy_tokens: u64,
    /// The audit log's head, the source's and the copy's (`null`: empty log).
    pub audit_head: Option<Head>,
    /// `writ admin audit verify` of the copy.
    pub verify: VerifyReport,
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "copied {} to {}", self.source, self.destination)?;
        if !self.migrated.is_empty() {
            let versions: Vec<String> = self
                .migrated
                .iter()
                .map(|m| format!("{:04}", m.version))
                .collect();
            writeln!(f, "migrated the destination first: {}", versions.join(", "))?;
        }
        for line in &self.tables {
            write!(f, "  {:<22} {:>10}", line.table, line.rows)?;
            if line.table == "used_tokens" && self.legacy_tokens > 0 {
                write!(
                    f,
                    " ({} from used_tokens_before_0006, kept until 9999-12-31)",
                    self.legacy_tokens
                )?;
            }
            writeln!(f)?;
        }
        match &self.audit_head {
            Some(head) => writeln!(f, "audit head: seq {} hash {}", head.seq, head.hash)?,
            None => writeln!(f, "audit head: none (the log is empty)")?,
        }
        writeln!(
            f,
            "verified: every table has the source's row count, the copy's head is the \
             source's, and:"
        )?;
        for line in self.verify.to_string().lines() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl Render for CopyReport {
    fn text(&self) -> String {
        self.to_string()
    }

    fn json(&self) -> String {
        pretty(self)
    }
}

/// Copy the configured SQLite store into the empty PostgreSQL database `to` (password
/// from `password_file`, else `PGPASSWORD` or `~/.pgpass`), then open and verify the
/// copy.
pub async fn copy(
    context: &Context,
    to: &str,
    password_file: Option<&Path>,
) -> Result<CopyReport, StoreCommandError> {
    let config = &context.config;
    let source_url = config.storage.url.as_str();
    let Some(source_path) = source_url.strip_prefix("sqlite://") else {
        return Err(StoreCommandError::SourceNotSqlite(redact_url(source_url)));
    };
    if !postgres::is_postgres_url(to) {
        return Err(StoreCommandError::DestinationNotPostgres(redact_url(to)));
    }
    if postgres::url_has_password(to) {
        return Err(StoreCommandError::PasswordInUrl(redact_url(to)));
    }
    let password = password_file
        .map(|file| read_password_file(file, "--password-file"))
        .transpose()?;
    let destination = StoreOptions {
        url: to.to_owned(),
        password,
        pool_size: 1,
        connect_timeout: config.storage.connect_timeout,
        statement_timeout: COPY_STATEMENT_TIMEOUT,
    };
    let now = context.now();
    let copied =
        sqlite_to_postgres(Path::new(source_path), &destination, now.unix_timestamp()).await?;

    // Committed. Now the copy as the replicas will open it, checked as `audit verify`
    // checks a store (against the checkpoint file the source's configuration names too).
    let unverified = |why: String| StoreCommandError::Unverified {
        destination: redact_url(to),
        why,
    };
    let store = stores::open_with(&destination, None)
        .await
        .map_err(|e| unverified(e.to_string()))?;
    let options = VerifyOptions {
        from_checkpoint: false,
        checkpoint_files: config
            .audit
            .checkpoint_path(source_url)
            .into_iter()
            .map(|file| (file, false))
            .collect(),
    };
    let report = verify(store.as_ref(), &options)
        .await
        .map_err(|e: AuditCommandError| unverified(e.to_string()))?;
    if !report.ok {
        return Err(unverified(
            report
                .problem
                .clone()
                .unwrap_or_else(|| "the audit log is broken".to_owned()),
        ));
    }
    let verified_head = report.head_hash.clone().map(|hash| (report.last_seq, hash));
    if verified_head != copied.audit_head {
        return Err(unverified(format!(
            "its audit head is seq {} but the source's is {}",
            report.last_seq,
            copied
                .audit_head
                .as_ref()
                .map_or("empty".to_owned(), |(seq, _)| format!("seq {seq}"))
        )));
    }
    Ok(CopyReport {
        source: redact_url(source_url),
        destination: redact_url(to),
        migrated: copied.migrated.iter().map(MigrationLine::from).collect(),
        tables: copied
            .tables
            .iter()
            .map(|t| TableLine {
                table: t.table,
                rows: t.rows,
            })
            .collect(),
        legacy_tokens: copied.legacy_tokens,
        audit_head: copied.audit_head.map(|(seq, hash)| Head { seq, hash }),
        verify: report,
    })
}

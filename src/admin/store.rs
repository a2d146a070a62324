//! `writ admin store …`: the operator's commands on the store itself rather than on what
//! it holds.
//!
//! - `migrate` — bring the configured store's schema up to date and say which migrations
//!   were applied. Opening a store migrates it too; this is for operators who migrate
//!   before they roll a new binary out. PostgreSQL migrates under sqlx's advisory lock,
//!   so it is safe while replicas run.
//!
//! Never prints a password: every URL shown goes through [`crate::text::redact_url`].

use std::fmt;
use std::io::Write;

use serde::Serialize;

use super::{AdminError, Context, Render, Status, emit, pretty};
use crate::config::ConfigError;
use crate::store::{self as stores, AppliedMigration, StoreError};
use crate::text::redact_url;

/// `writ admin store …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StoreCommand {
    /// Bring the store's schema up to date; print which migrations were applied.
    ///
    /// `writ serve` and every `writ admin` command migrate the store when they open it;
    /// run this to migrate before rolling out a new binary. On PostgreSQL it takes the
    /// migrations' advisory lock, so it is safe while replicas run (they wait for it, or
    /// find the migrations applied).
    Migrate {
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

//! Operator commands (`writ admin …`): the library side of what operators run against a
//! CA's configuration.
//!
//! Every admin command has the same shape:
//! - its arguments are a clap type next to it ([`AdminCommand`] here, and
//!   [`explain::PolicyCommand`], [`task::TaskCommand`], [`ca::CaCommand`],
//!   [`audit::AuditCommand`], [`store::StoreCommand`]), so `src/bin/writ.rs` only embeds [`AdminCommand`];
//! - it is `async fn run(&Context, command, out: &mut dyn Write) -> Result<Status,
//!   AdminError>` in its module: it does its work with functions that return structured
//!   data and their module's own error, renders that as text or `--json` ([`Render`]) onto
//!   `out`, and says whether the command succeeded ([`Status`]);
//! - [`main`] is the one way in from the command line: it loads the configuration into a
//!   [`Context`] (with the operator's login and the clock), runs the command on
//!   [`crate::cli::runtime`] and writes on stdout, where a closed pipe is a quiet end. The
//!   binary turns the [`Status`] or the [`AdminError`] into the exit status and
//!   `writ: error: …` line.
//!
//! - [`explain`] — `writ admin policy explain`: which issuer verifies a token, which
//!   policy matches it (or why each does not), and what would be granted.
//! - [`task`] — `writ admin task show|revoke`: operators acting on tasks in the store.
//! - [`ca`] — `writ admin ca list|rotate|revoke|schedule|export-public|rewrap`: the CA
//!   keyring, in the store a running `writ serve` shares.
//! - [`audit`] — `writ admin audit export|verify|trail|checkpoint|prune`: the audit log.
//! - [`store`] — `writ admin store migrate|copy`: the store's schema, and moving a SQLite
//!   store to PostgreSQL.
//! - [`inventory`] — `writ admin inventory`: the fleet's standing access, from the
//!   inventories hosts report (read only).
//! - [`defaults`] — `writ admin default-config`: the complete commented example
//!   configuration (it needs no `--config`).
//! - [`check`] — `writ check-config` (top level, SPEC §9, as it runs before a
//!   configuration is trusted): validate a file as `writ serve` does, resolve what it
//!   points at, show each policy's effective grant, warn on risky patterns. It loads the
//!   file itself, so an invalid one is its report rather than a [`Context`] error.
//!
//! Commands here never print or log a whole bearer token or key material. A command that
//! only inspects (like `policy explain`) issues nothing, writes nothing and touches no
//! store or audit log.

pub mod audit;
pub mod ca;
pub mod check;
pub mod defaults;
pub mod explain;
pub mod host_cert;
pub mod inventory;
pub mod store;
pub mod task;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::{Config, ConfigError};
use crate::store::{Store, StoreError};

/// `writ admin …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Inspect the `[[policy]]` tables.
    Policy {
        #[command(subcommand)]
        command: explain::PolicyCommand,
    },
    /// Show or revoke tasks, directly in the CA's store.
    Task {
        #[command(subcommand)]
        command: task::TaskCommand,
    },
    /// Manage the CA keys: list, rotate, revoke, schedule, export-public, rewrap.
    ///
    /// Works on the store a running `writ serve` uses; servers pick changes up within
    /// seconds. Every change is a `ca.key.*` audit record by `local-admin` and your login.
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
        /// Which keyring: user CA keys (the default) or host CA keys.
        #[arg(long, global = true, value_enum, default_value_t = ca::CaKind::User)]
        kind: ca::CaKind,
        /// Print JSON (list, rotate, revoke, schedule, rewrap).
        #[arg(long, global = true)]
        json: bool,
    },
    /// Host certificates: list them, or revoke one by serial or every one naming a host.
    ///
    /// A revocation is in the next KRL (`GET /v1/krl`, under the host CA key's section),
    /// recorded as `host_cert.revoked` by `local-admin` and your login.
    #[command(after_help = "\
Examples:
  writ admin --config /etc/writ/writ.toml host-cert list --host web1.prod.example.com
  writ admin --config /etc/writ/writ.toml host-cert revoke 123456789
  writ admin --config /etc/writ/writ.toml host-cert revoke --host web1.prod.example.com")]
    HostCert {
        #[command(subcommand)]
        command: host_cert::HostCertCommand,
    },
    /// The audit log: export (JSON Lines or OCSF), verify, trail of a task, checkpoint,
    /// prune.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// The store itself: migrate its schema, or copy a SQLite store to PostgreSQL.
    ///
    /// `migrate` brings the schema of the store `[storage] url` names up to date (as
    /// opening it does) and says which migrations it applied: run the new binary's once
    /// before rolling it out. On PostgreSQL it is safe while replicas run.
    ///
    /// `copy --to postgres://USER@HOST/DB` copies the configured SQLite store, stopped,
    /// into an empty PostgreSQL database (password from --password-file or PGPASSWORD,
    /// never in the URL), in one transaction, and verifies the copy; then point
    /// `[storage] url` at that database and start the replicas.
    #[command(after_help = "\
Examples:
  writ admin --config /etc/writ/writ.toml store migrate
  writ admin --config /etc/writ/writ.toml store copy \\
      --to 'postgres://writ@db.example.com/writ?sslmode=verify-full' \\
      --password-file /etc/writ/db.pass")]
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// The fleet's standing access, from the inventories hosts report.
    ///
    /// Hosts run `writ-principals inventory --report` (README "Finding standing access"):
    /// this shows which enforce writ, the logins that still take static keys and since
    /// when, keys in the authorized_keys of several hosts, unencrypted private keys (and
    /// which logins they open), hosts that stopped reporting, and with --since what
    /// appeared and went.
    #[command(after_help = "\
Examples:
  writ admin --config /etc/writ/writ.toml inventory
  writ admin --config /etc/writ/writ.toml inventory --host '*.prod.example.com' --since 24h
  writ admin --config /etc/writ/writ.toml inventory --json")]
    Inventory(inventory::InventoryArgs),
    /// Print a complete, commented example CA configuration (needs no --config).
    ///
    /// Every key of writ.toml, set to a safe example or commented out at its default.
    /// Start from it, then check your edits with `writ check-config --config FILE`.
    #[command(after_help = "\
Example:
  writ admin default-config > /etc/writ/writ.toml
  writ check-config --config /etc/writ/writ.toml")]
    DefaultConfig,
}

/// Why an operator command could not run. A command's own failures keep their module's
/// error ([`task::TaskCommandError`], …) and read the same here.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No configuration file was named.
    #[error("no configuration: give --config FILE (or set WRIT_CONFIG)")]
    NoConfig,
    /// The configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token could not be read (`--token`).
    #[error(transparent)]
    Token(#[from] crate::client::token_source::TokenSourceError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `writ admin task` failed.
    #[error(transparent)]
    Task(#[from] task::TaskCommandError),
    /// `writ admin ca` failed.
    #[error(transparent)]
    Ca(#[from] ca::CaCommandError),
    /// `writ admin host-cert` failed.
    #[error(transparent)]
    HostCert(#[from] host_cert::HostCertCommandError),
    /// `writ admin audit` failed.
    #[error(transparent)]
    Audit(#[from] audit::AuditCommandError),
    /// `writ admin inventory` failed.
    #[error(transparent)]
    Inventory(#[from] inventory::InventoryCommandError),
    /// `writ admin store` failed.
    #[error(transparent)]
    StoreCommand(#[from] store::StoreCommandError),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// Writing the output failed (other than a reader that went away).
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

/// How a command that ran to the end went, for the exit status. (A command that could not
/// run returns an [`AdminError`] instead.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exit 0.
    Success,
    /// Exit 1, the output saying why (`audit verify` found the log broken, `policy
    /// explain` saw the token refused).
    Failure,
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> ExitCode {
        match status {
            Status::Success => ExitCode::SUCCESS,
            Status::Failure => ExitCode::FAILURE,
        }
    }
}

/// What every admin command runs with: the CA configuration, where it came from, and who
/// runs the command.
#[derive(Debug)]
pub struct Context {
    /// The validated configuration.
    pub config: Config,
    /// Its file (relative paths in it, like `passphrase_file`, are read from there).
    pub config_path: PathBuf,
    /// The operator's login, for audit records ([`operator`]).
    pub operator: String,
}

impl Context {
    /// Load and validate the configuration at `path`; the operator is [`operator`].
    pub fn load(path: Option<&Path>) -> Result<Context, AdminError> {
        let path = path.ok_or(AdminError::NoConfig)?;
        Ok(Context {
            config: Config::load(path)?,
            config_path: path.to_owned(),
            operator: operator(),
        })
    }

    /// The time now: the one clock admin commands read, when they need it (after any input,
    /// so a token pasted on stdin is judged when it arrived).
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// The CA's store (the one a running `writ serve` uses).
    pub async fn store(&self) -> Result<Arc<dyn Store>, StoreError> {
        open_store(&self.config).await
    }
}

/// Open the store `config`'s `[storage]` names (its password file read now).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let options = config
        .storage
        .store_options()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    crate::store::open_with(&options, None).await
}

/// Something a command prints: for people, or for scripts (`--json`).
pub trait Render {
    /// The text form.
    fn text(&self) -> String;
    /// The JSON form.
    fn json(&self) -> String;
}

/// `value` as pretty JSON and a newline.
pub(crate) fn pretty(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// Write `text` to `out`; a reader that went away is a quiet end (see
/// [`crate::cli::write_quietly`]).
pub(crate) fn write(out: &mut dyn Write, text: &str) -> Result<(), AdminError> {
    crate::cli::write_quietly(out, text).map_err(AdminError::Output)
}

/// Write `value` to `out` as JSON (`json`) or text.
pub(crate) fn emit(out: &mut dyn Write, value: &dyn Render, json: bool) -> Result<(), AdminError> {
    write(out, &if json { value.json() } else { value.text() })
}

/// Run `writ admin …` from the command line: load the configuration at `config_path`, run
/// `command` on the command-line runtime, print on stdout.
pub fn main(config_path: Option<&Path>, command: AdminCommand) -> Result<Status, AdminError> {
    if let AdminCommand::DefaultConfig = command {
        write(&mut std::io::stdout().lock(), defaults::DEFAULT_CONFIG)?;
        return Ok(Status::Success);
    }
    let context = Context::load(config_path)?;
    let runtime = crate::cli::runtime().map_err(AdminError::Runtime)?;
    runtime.block_on(run(&context, command, &mut std::io::stdout().lock()))
}

/// Run `command` with `context`, writing what it prints to `out`.
pub async fn run(
    context: &Context,
    command: AdminCommand,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    match command {
        AdminCommand::Policy { command } => explain::run(context, command, out).await,
        AdminCommand::Task { command } => task::run(context, command, out).await,
        AdminCommand::Ca {
            command,
            kind,
            json,
        } => ca::run(context, command, kind, json, out).await,
        AdminCommand::HostCert { command } => host_cert::run(context, command, out).await,
        AdminCommand::Audit { command } => audit::run(context, command, out).await,
        AdminCommand::Store { command } => store::run(context, command, out).await,
        AdminCommand::Inventory(args) => inventory::run(context, args, out).await,
        AdminCommand::DefaultConfig => {
            write(out, defaults::DEFAULT_CONFIG)?;
            Ok(Status::Success)
        }
    }
}

/// The operator's login, for the audit records of admin commands: `$SUDO_USER` (the person
/// behind `sudo`), else `$USER`, else the name of the effective uid in `/etc/passwd`
/// (cron jobs and service managers often set no `$USER`), else `uid:N`.
pub fn operator() -> String {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(name) = from_env("SUDO_USER").or_else(|| from_env("USER")) {
        return name;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match effective_uid(&status) {
        Some(uid) => {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            user_name(&passwd, uid).unwrap_or_else(|| format!("uid:{uid}"))
        }
        None => "unknown".into(),
    }
}

/// The effective uid in `/proc/self/status` text (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
}

/// The first login with `uid` in `/etc/passwd` text (`name:x:uid:gid:…`).
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid_field = fields.nth(1)?;
        (!name.is_empty() && !name.starts_with('#') && uid_field.parse() == Ok(uid))
            .then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_configuration() {
        assert!(matches!(Context::load(None), Err(AdminError::NoConfig)));
    }

    /// Every command runs on a [`Context`], writes to the writer it is given and fails with
    /// its own error, readable through [`AdminError`].
    #[tokio::test]
    async fn commands_share_one_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.toml");
        let text = format!(
            "[ca]\npassphrase_file = \"/nonexistent/ca.pass\"\n\n\
             [storage]\nurl = \"sqlite://{}\"\n\n\
             [[issuer]]\nname = \"k8s\"\nissuer = \"https://k8s.example\"\n\
             jwks_file = \"/nonexistent/jwks.json\"\naudiences = [\"writ\"]\n\n\
             [[policy]]\nname = \"ci\"\nissuer = \"k8s\"\nlogins = [\"deploy\"]\nhosts = [\"*\"]\n",
            dir.path().join("writ.db").display()
        );
        std::fs::write(&path, text).expect("write");
        let context = Context {
            config: Config::load(&path).expect("config"),
            config_path: path,
            operator: "alice".into(),
        };
        let mut out = Vec::new();
        let list = AdminCommand::Ca {
            command: ca::CaCommand::List,
            kind: ca::CaKind::User,
            json: true,
        };
        let status = run(&context, list, &mut out).await.expect("ca list");
        assert_eq!(status, Status::Success);
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(value["keys"], serde_json::json!([]));

        let mut out = Vec::new();
        let verify = AdminCommand::Audit {
            command: audit::AuditCommand::Verify {
                from_checkpoint: false,
                checkpoints: Vec::new(),
                json: false,
            },
        };
        let status = run(&context, verify, &mut out).await.expect("verify");
        assert_eq!(status, Status::Success);
        assert!(String::from_utf8_lossy(&out).starts_with("audit log OK: empty\n"));

        let show = AdminCommand::Task {
            command: task::TaskCommand::Show {
                id: "t-unknown".into(),
                json: false,
            },
        };
        let error = run(&context, show, &mut Vec::new())
            .await
            .expect_err("unknown");
        assert!(matches!(
            error,
            AdminError::Task(task::TaskCommandError::NotFound(_))
        ));
        assert_eq!(error.to_string(), "no task t-unknown");
    }

    #[test]
    fn operator_name_from_the_effective_uid() {
        let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tcat\n"), None);
        let passwd =
            "# comment\nroot:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(user_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name(passwd, 4242), None);
    }
}

//! `writ admin ca list|rotate|revoke|schedule|export-public|rewrap`: operators managing
//! the CA keyring directly in the CA's store — the same store a running `writ serve`
//! uses, which picks every change up within a few seconds (see
//! [`crate::authority::live`]). Each change is one transaction with its `ca.key.*` audit
//! record (see [`crate::authority::rotation`]).
//!
//! Nothing here prints, logs or returns private key material: only ids, fingerprints and
//! public keys. Passphrases are read from files (or the environment), never from the
//! command line.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand_core::OsRng;
use serde::Serialize;
use zeroize::Zeroizing;

use super::task::LOCAL_ADMIN;
use super::{AdminError, Context, Render, Status, emit, pretty, write};
use crate::authority::keyring::{KeyState, public_half, rows_of};
use crate::authority::rotation::{
    self, Actor, KeyRef, RotationError, RotationSettings, ScheduleStatus,
};
use crate::config::ConfigError;
use crate::store::{KeyKind, Store, StoreError};

/// `--kind`: which keyring a `writ admin ca` command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CaKind {
    /// User CA keys (`TrustedUserCAKeys` on hosts): the default.
    #[default]
    User,
    /// Host CA keys (`@cert-authority` lines on clients).
    Host,
}

impl From<CaKind> for KeyKind {
    fn from(kind: CaKind) -> KeyKind {
        match kind {
            CaKind::User => KeyKind::User,
            CaKind::Host => KeyKind::Host,
        }
    }
}

/// `writ admin ca …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CaCommand {
    /// Every CA key: id, state, fingerprint, history, certificates still valid; and the
    /// rotation schedule.
    List,
    /// next → active, active → retiring, and a new next key. Refused while the next key
    /// has been published for less than [ca] rotation_min_publish (hosts may not trust it
    /// yet); with no next key, one is published first.
    Rotate {
        /// Rotate anyway: hosts that have not synced the next key refuse its certificates.
        #[arg(long)]
        force: bool,
    },
    /// Emergency: remove a key from trust now and list it in the KRL. Revoking the
    /// active key makes the next key sign at once.
    Revoke {
        /// Key id or fingerprint (see `writ admin ca list`).
        key: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Let `writ serve` rotate the user CA keys automatically, e.g. --every 30d (or
    /// --off). Host CA keys rotate only with `rotate --kind host`.
    Schedule {
        /// Rotation period, e.g. 30d (user CA keys only).
        #[arg(long, value_parser = crate::duration::parse, required_unless_present = "off", conflicts_with = "off")]
        every: Option<Duration>,
        /// Stop rotating automatically.
        #[arg(long)]
        off: bool,
    },
    /// Print the public keys to trust (user: TrustedUserCAKeys format; host: one key per
    /// line, for `@cert-authority` lines — see GET /v1/ca/known-hosts).
    ExportPublic {
        /// Every key whatever its state, each after a `# id state fingerprint` comment.
        #[arg(long)]
        all: bool,
    },
    /// Re-encrypt every CA private key (user and host) with a new passphrase, in one
    /// transaction.
    Rewrap {
        /// File holding the new passphrase (then make it the CA's passphrase_file).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: PathBuf,
    },
}

/// Why a `writ admin ca` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CaCommandError {
    /// The passphrase could not be read.
    #[error(transparent)]
    Passphrase(#[from] ConfigError),
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The keyring change was refused or failed.
    #[error(transparent)]
    Rotation(#[from] RotationError),
    /// The command does not apply to host CA keys.
    #[error("{0}")]
    NotForHostKeys(&'static str),
    /// The new passphrase file could not be read or is empty.
    #[error("cannot use the new passphrase file {path}: {detail}")]
    NewPassphrase {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// One key as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyListing {
    /// Key id.
    pub id: String,
    /// State.
    pub state: String,
    /// SSH algorithm.
    pub algorithm: String,
    /// `SHA256:…`
    pub fingerprint: String,
    /// OpenSSH public key line.
    pub public_key: String,
    /// Unix seconds (a `next` key is published from then on).
    pub created_at: i64,
    /// Unix seconds.
    pub activated_at: Option<i64>,
    /// Unix seconds.
    pub deactivated_at: Option<i64>,
    /// Unix seconds.
    pub retired_at: Option<i64>,
    /// Unix seconds.
    pub revoked_at: Option<i64>,
    /// Certificates it signed that are neither expired nor revoked.
    pub valid_certificates: i64,
    /// The latest expiry of a certificate it signed.
    pub last_valid_before: Option<i64>,
}

/// The whole keyring as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyList {
    /// Keys, oldest first.
    pub keys: Vec<KeyListing>,
    /// Automatic rotation period in seconds, if scheduled.
    pub schedule_every_seconds: Option<i64>,
    /// When the schedule rotates next (Unix seconds), if known.
    pub next_rotation_at: Option<i64>,
    /// `[ca] rotation_min_publish` in seconds.
    pub rotation_min_publish_seconds: i64,
    /// Earliest time `rotate` without `--force` is accepted (Unix seconds).
    pub rotate_allowed_at: Option<i64>,
}

/// Who runs the command, for the audit record.
fn actor(operator: &str) -> Actor {
    Actor {
        issuer: LOCAL_ADMIN.to_owned(),
        subject: operator.to_owned(),
    }
}

/// Run `writ admin ca …` as `context.operator` (their login, for the audit record),
/// writing the result to `out` (JSON with `json`).
pub async fn run(
    context: &Context,
    command: CaCommand,
    kind: CaKind,
    json: bool,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    let config = &context.config;
    let config_path = context.config_path.as_path();
    let store = context.store().await?;
    let now_unix = context.now().unix_timestamp();
    let settings = RotationSettings::for_kind(&config.ca, kind.into());
    let actor = actor(&context.operator);
    let passphrase = || {
        config
            .ca_passphrase(config_path)
            .map_err(CaCommandError::from)
    };
    match command {
        CaCommand::List => {
            let list = list(store.as_ref(), &settings, now_unix).await?;
            emit(out, &list, json)?;
        }
        CaCommand::Rotate { force } => {
            let report = rotation::rotate(
                store.as_ref(),
                &passphrase()?,
                &settings,
                now_unix,
                force,
                &actor,
                &mut OsRng,
            )
            .await
            .map_err(CaCommandError::from)?;
            emit(out, &Rotated(report, settings), json)?;
        }
        CaCommand::Revoke { key, reason } => {
            let report = rotation::revoke(
                store.as_ref(),
                &passphrase()?,
                &settings,
                &key,
                &reason,
                now_unix,
                &actor,
                &mut OsRng,
            )
            .await
            .map_err(CaCommandError::from)?;
            emit(out, &report, json)?;
        }
        CaCommand::Schedule { .. } if kind == CaKind::Host => {
            return Err(CaCommandError::NotForHostKeys(
                "the rotation schedule is the user CA keys'; rotate host CA keys with \
                 `writ admin ca rotate --kind host`",
            )
            .into());
        }
        CaCommand::Schedule { every, off: _ } => {
            let schedule = rotation::set_schedule(store.as_ref(), every, now_unix, &actor)
                .await
                .map_err(CaCommandError::from)?;
            let list = list(store.as_ref(), &settings, now_unix).await?;
            emit(
                out,
                &Scheduled(schedule.map(|s| s.every_seconds), list),
                json,
            )?;
        }
        CaCommand::ExportPublic { all } => {
            let text = export_public(store, kind.into(), &actor, all, now_unix).await?;
            write(out, &text)?;
        }
        CaCommand::Rewrap {
            new_passphrase_file,
        } => {
            let old = passphrase()?;
            let new = read_new_passphrase(&new_passphrase_file)?;
            let count = rotation::rewrap(store.as_ref(), &old, &new, &actor, now_unix, &mut OsRng)
                .await
                .map_err(CaCommandError::from)?;
            emit(out, &Rewrapped(count, new_passphrase_file), json)?;
        }
    }
    Ok(Status::Success)
}

fn read_new_passphrase(path: &Path) -> Result<Zeroizing<String>, CaCommandError> {
    let bad = |detail: String| CaCommandError::NewPassphrase {
        path: path.to_owned(),
        detail,
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
    let pass = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned());
    if pass.is_empty() {
        return Err(bad("it is empty".into()));
    }
    Ok(pass)
}

/// The keyring of `settings.kind` with its certificate counts and (user keys) schedule.
pub async fn list(
    store: &dyn Store,
    settings: &RotationSettings,
    now_unix: i64,
) -> Result<KeyList, CaCommandError> {
    let rows = rows_of(store, settings.kind).await?;
    let usage = store.ca_key_usage(now_unix).await?;
    let schedule = match settings.kind {
        KeyKind::User => store.rotation_schedule().await?,
        KeyKind::Host => None,
    };
    let keys = rows
        .iter()
        .map(public_half)
        .collect::<Result<Vec<_>, _>>()
        .map_err(RotationError::from)?;
    let next_rotation_at =
        match rotation::schedule_status(schedule, &keys, now_unix, settings.min_publish_secs) {
            ScheduleStatus::Unscheduled => None,
            ScheduleStatus::NotDue { at } => Some(at),
            ScheduleStatus::WaitingForNext { at } => at,
            ScheduleStatus::Due => Some(now_unix),
        };
    let rotate_allowed_at = keys
        .iter()
        .find(|k| k.state == KeyState::Next)
        .map(|k| k.created_at + settings.min_publish_secs);
    let keys = keys
        .iter()
        .map(|k| {
            let used = usage.iter().find(|u| u.key_id == k.id);
            KeyListing {
                id: k.id.clone(),
                state: k.state.as_str().to_owned(),
                algorithm: k.algorithm.clone(),
                fingerprint: k.fingerprint.clone(),
                public_key: k.public_key.to_openssh().unwrap_or_default(),
                created_at: k.created_at,
                activated_at: k.activated_at,
                deactivated_at: k.deactivated_at,
                retired_at: k.retired_at,
                revoked_at: k.revoked_at,
                valid_certificates: used.map_or(0, |u| u.valid_certificates),
                last_valid_before: used.and_then(|u| u.last_valid_before),
            }
        })
        .collect();
    Ok(KeyList {
        keys,
        schedule_every_seconds: schedule.map(|s| s.every_seconds),
        next_rotation_at,
        rotation_min_publish_seconds: settings.min_publish_secs,
        rotate_allowed_at,
    })
}

async fn export_public(
    store: Arc<dyn Store>,
    kind: KeyKind,
    actor: &Actor,
    all: bool,
    now_unix: i64,
) -> Result<String, CaCommandError> {
    // Only keys of one kind: a host key must never land in TrustedUserCAKeys.
    let rows = rows_of(store.as_ref(), kind).await?;
    let mut text = String::new();
    let mut exported = Vec::new();
    for row in &rows {
        let key = public_half(row).map_err(RotationError::from)?;
        if !all && !key.state.is_trusted() {
            continue;
        }
        let line = key
            .public_key
            .to_openssh()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if all {
            // A comment line per key: TrustedUserCAKeys ignores lines starting with '#'.
            let _ = writeln!(text, "# {} {} {}", key.id, key.state, key.fingerprint);
        }
        text.push_str(&line);
        text.push('\n');
        exported.push(KeyRef {
            id: key.id,
            fingerprint: key.fingerprint,
        });
    }
    rotation::record_export(store.as_ref(), &exported, actor, now_unix).await?;
    Ok(text)
}

/// RFC 3339 UTC, or `-`.
fn when(t: Option<i64>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

fn period(seconds: i64) -> String {
    crate::duration::format(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

impl Render for KeyList {
    fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16}  {:<8}  {:<19}  {:<50}  {:<20}  {:<20}  {:<20}  {:<20}  VALID CERTS",
            "ID",
            "STATE",
            "ALGORITHM",
            "FINGERPRINT",
            "CREATED",
            "ACTIVATED",
            "DEACTIVATED",
            "RETIRED/REVOKED"
        );
        for k in &self.keys {
            let _ = writeln!(
                out,
                "{:<16}  {:<8}  {:<19}  {:<50}  {:<20}  {:<20}  {:<20}  {:<20}  {}",
                k.id,
                k.state,
                k.algorithm,
                k.fingerprint,
                when(Some(k.created_at)),
                when(k.activated_at),
                when(k.deactivated_at),
                when(k.retired_at.or(k.revoked_at)),
                k.valid_certificates
            );
        }
        let _ = writeln!(
            out,
            "\nrotation_min_publish: {} (a next key must be published this long before it signs)",
            period(self.rotation_min_publish_seconds)
        );
        match self.rotate_allowed_at {
            Some(at) => {
                let _ = writeln!(out, "rotate allowed from: {}", when(Some(at)));
            }
            None => {
                let _ = writeln!(
                    out,
                    "rotate allowed from: no next key yet (writ serve publishes one)"
                );
            }
        }
        match self.schedule_every_seconds {
            Some(every) => {
                let _ = writeln!(
                    out,
                    "automatic rotation: every {} (next: {})",
                    period(every),
                    when(self.next_rotation_at)
                );
            }
            None => {
                let _ = writeln!(out, "automatic rotation: off");
            }
        }
        out
    }

    fn json(&self) -> String {
        pretty(self)
    }
}

struct Rotated(rotation::RotationReport, RotationSettings);

impl Render for Rotated {
    fn text(&self) -> String {
        let Rotated(r, settings) = self;
        let mut out = String::new();
        if r.forced {
            let _ = writeln!(
                out,
                "FORCED: the new active key was published less than rotation_min_publish ago; \
                 hosts that have not synced since refuse its certificates until they do."
            );
        }
        let _ = writeln!(out, "active    {}  (signs from now on)", r.activated);
        let _ = writeln!(
            out,
            "retiring  {}  (still trusted; retires once its certificates expired, at least {} from now)",
            r.retiring,
            period(settings.max_cert_ttl_secs)
        );
        let _ = writeln!(
            out,
            "next      {}  (published now; the next rotation is allowed in {})",
            r.next,
            period(settings.min_publish_secs)
        );
        let _ = writeln!(
            out,
            "Running writ serve instances pick this up within seconds."
        );
        out
    }

    fn json(&self) -> String {
        pretty(&self.0)
    }
}

impl Render for rotation::RevocationReport {
    fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "revoked   {}  (was {}; out of the trust bundle and in the KRL at the hosts' next sync)",
            self.revoked, self.was
        );
        if let Some(a) = &self.activated {
            let _ = writeln!(out, "active    {a}  (signs from now on)");
        }
        if let Some(n) = &self.next {
            let _ = writeln!(out, "next      {n}  (published now)");
        }
        out
    }

    fn json(&self) -> String {
        pretty(self)
    }
}

struct Scheduled(Option<i64>, KeyList);

impl Render for Scheduled {
    fn text(&self) -> String {
        match self.0 {
            Some(every) => format!(
                "automatic rotation every {}; next rotation: {} (writ serve rotates when due and the next key has been published for rotation_min_publish)\n",
                period(every),
                when(self.1.next_rotation_at)
            ),
            None => "automatic rotation off\n".into(),
        }
    }

    fn json(&self) -> String {
        pretty(&serde_json::json!({
            "every_seconds": self.0,
            "next_rotation_at": self.1.next_rotation_at,
        }))
    }
}

struct Rewrapped(usize, PathBuf);

impl Render for Rewrapped {
    fn text(&self) -> String {
        format!(
            "{} CA private keys re-encrypted with the passphrase in {}.\n\
             Now make that the CA passphrase: replace the contents of passphrase_file with it \
             (or point passphrase_file at {}) on every writ serve host. Running servers keep \
             signing and re-read the passphrase file when they next need it.\n",
            self.0,
            self.1.display(),
            self.1.display()
        )
    }

    fn json(&self) -> String {
        pretty(&serde_json::json!({ "rewrapped": self.0 }))
    }
}

//! `writ admin audit …`: the operator's view of the audit log, read straight from the CA's
//! store (safe while `writ serve` runs).
//!
//! - `export --format jsonl|ocsf [--since T] [--follow]` — records as JSON Lines;
//! - `verify [--from-checkpoint] [--checkpoints FILE]…` — walk the hash chain and check it
//!   against every signed checkpoint (database, checkpoint file, given copies) and what
//!   sinks already delivered; exit 1 naming the first bad record;
//! - `trail --task ID` — everything about one task, in order;
//! - `checkpoint` — sign a checkpoint of the head now (needs the CA passphrase);
//! - `prune --before T` — delete old records up to a signed checkpoint, leaving a log that
//!   still verifies from that checkpoint.
//!
//! The argument shape ([`AuditCommand`]) lives here, next to the commands (see [`super`]
//! for the shape every admin command shares). Nothing here edits a record; `prune`
//! deletes from the start only, after the whole log verified, in one transaction with the
//! `audit.pruned` record that says so.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use ssh_key::PublicKey;
use time::OffsetDateTime;

use super::task::LOCAL_ADMIN;
use super::{AdminError, Context, Render, Status, emit, pretty, write};
use crate::audit::checkpoint::{self, CheckpointError, SignedCheckpoint};
use crate::audit::export::{Format, Position};
use crate::audit::service::{CheckpointWriteError, checkpoint_now};
use crate::audit::verify::{Problem, Summary, Walker, pruned_reason};
use crate::audit::{AuditEntry, AuditRecord, Outcome, event};
use crate::authority::KeyState;
use crate::config::{Config, ConfigError};
use crate::store::{Store, StoreError, TaskRecord};

/// How often `export --follow` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Records read per query.
const BATCH: i64 = 1000;

/// `writ admin audit …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Print audit records, one JSON object a line.
    ///
    /// --format jsonl prints writ's records (every hashed field plus seq, time, prev_hash
    /// and hash, so the chain can be re-verified anywhere); --format ocsf prints OCSF 1.3
    /// events (see the README, "Audit and SIEM").
    Export {
        /// jsonl or ocsf.
        #[arg(long, default_value = "jsonl", value_name = "jsonl|ocsf")]
        format: Format,
        /// Only records after this sequence number (so `--since LAST_SEQ_YOU_HAVE` resumes
        /// without repeats), or at or after this RFC 3339 time.
        #[arg(long, value_name = "SEQ|TIME")]
        since: Option<Position>,
        /// Keep running and print records as they commit (until interrupted).
        #[arg(long)]
        follow: bool,
    },
    /// Verify the hash chain, signed checkpoints and sink positions.
    ///
    /// Exit status 0: intact. 1: broken — the message names the first bad (edited,
    /// reordered or missing) record's seq — or the check could not run.
    Verify {
        /// Start at the newest signed checkpoint instead of the oldest record (faster; the
        /// part before it was verified when that checkpoint was checked).
        #[arg(long)]
        from_checkpoint: bool,
        /// More copies of checkpoint files to check against (e.g. fetched from the SIEM).
        #[arg(long, value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Everything the audit log says about one task, in order.
    ///
    /// Who opened it and from where, each certificate (serial, key, CA key), each use on
    /// a host, refusals, and how it ended.
    Trail {
        /// Task id.
        #[arg(long, value_name = "ID")]
        task: String,
        /// Print the records as JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// Sign a checkpoint of the head of the log now.
    ///
    /// Signed with the active CA key (needs the CA passphrase), stored in the database and
    /// appended to the checkpoint file. `writ serve` also does this periodically.
    Checkpoint,
    /// Delete records older than T, up to the newest signed checkpoint at or before T.
    ///
    /// The log must verify first. The record the checkpoint names stays, and `verify`
    /// passes from it afterwards; an audit.pruned record says what was deleted.
    Prune {
        /// RFC 3339 time, or a sequence number: delete records before it.
        #[arg(long, value_name = "TIME|SEQ")]
        before: Position,
    },
}

/// Why an audit command failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditCommandError {
    /// The CA passphrase could not be read.
    #[error(transparent)]
    Passphrase(#[from] ConfigError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A CA key in the store does not parse.
    #[error("CA key {0} in the store is unreadable")]
    BadKey(String),
    /// A checkpoint file could not be read or parsed.
    #[error("cannot read checkpoints from {path}: {message}")]
    CheckpointFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A checkpoint's signature does not verify, so the log is not pruned.
    #[error("refusing to prune: {0}")]
    BadCheckpoint(CheckpointError),
    /// Checkpointing failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointWriteError),
    /// The CA keyring could not be loaded.
    #[error(transparent)]
    Keyring(#[from] crate::authority::KeyringError),
    /// The log does not verify, so it is not pruned.
    #[error("refusing to prune: the audit log does not verify: {0}")]
    Broken(Problem),
    /// No task of that id, and no record about it.
    #[error("no audit records for task {0}")]
    UnknownTask(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

/// Run `writ admin audit …`, writing to `out`.
pub async fn run(
    context: &Context,
    command: AuditCommand,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    let config = &context.config;
    let store = context.store().await?;
    let now = context.now();
    // The configured checkpoint file, which may not exist yet.
    let configured_checkpoints = || {
        config
            .audit
            .checkpoint_path(&config.storage.url)
            .into_iter()
            .map(|p| (p, false))
    };
    match command {
        AuditCommand::Export {
            format,
            since,
            follow,
        } => {
            let poll = follow.then_some(FOLLOW_POLL);
            match export(store.as_ref(), format, since.as_ref(), poll, out).await {
                Ok(_) => {}
                // `| head` has all it wanted (with --follow, this is how export ends).
                Err(AuditCommandError::Output(e)) if crate::cli::is_closed_pipe(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        AuditCommand::Verify {
            from_checkpoint,
            checkpoints,
            json,
        } => {
            let options = VerifyOptions {
                from_checkpoint,
                checkpoint_files: configured_checkpoints()
                    .chain(checkpoints.into_iter().map(|p| (p, true)))
                    .collect(),
            };
            let report = verify(store.as_ref(), &options).await?;
            emit(out, &report, json)?;
            if !report.ok {
                return Ok(Status::Failure);
            }
        }
        AuditCommand::Trail { task, json } => {
            let trail = trail(store.as_ref(), &task).await?;
            emit(out, &trail, json)?;
        }
        AuditCommand::Checkpoint => {
            let text = match checkpoint(config, &context.config_path, &store, now).await? {
                Some(c) => format!(
                    "checkpoint: seq {} hash {} signed by {} at {}\n",
                    c.seq, c.hash, c.ca_fingerprint, c.time
                ),
                None => "nothing to checkpoint: the head of the log is already checkpointed \
                         (or the log is empty)\n"
                    .to_owned(),
            };
            write(out, &text)?;
        }
        AuditCommand::Prune { before } => {
            let files = configured_checkpoints().collect();
            let report = prune(store.as_ref(), &before, &context.operator, files, now).await?;
            write(out, &report.to_string())?;
        }
    }
    Ok(Status::Success)
}

/// Write records after `since` to `out` in `format`. With `follow`, keep polling at that
/// interval for new records (never returns unless writing fails). Returns how many records
/// were written.
pub async fn export(
    store: &dyn Store,
    format: Format,
    since: Option<&Position>,
    follow: Option<Duration>,
    out: &mut dyn Write,
) -> Result<u64, AuditCommandError> {
    let mut after = match since {
        None => 0,
        Some(Position::Seq(seq)) => *seq,
        Some(Position::Time(time)) => match store.audit_seq_at_time(time).await? {
            Some(seq) => seq - 1,
            None => store.audit_head().await?.map_or(0, |(seq, _)| seq),
        },
    };
    let mut written = 0;
    loop {
        let batch = store.audit_records(after, BATCH).await?;
        let mut text = String::new();
        for record in &batch {
            text.push_str(&format.line(record));
            text.push('\n');
        }
        if !text.is_empty() {
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(AuditCommandError::Output)?;
        }
        written += batch.len() as u64;
        if let Some(last) = batch.last() {
            after = last.seq;
        }
        if i64::try_from(batch.len()).unwrap_or(BATCH) < BATCH {
            match follow {
                Some(poll) => tokio::time::sleep(poll).await,
                None => return Ok(written),
            }
        }
    }
}

/// What `verify` checks against.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Start at the newest signed checkpoint.
    pub from_checkpoint: bool,
    /// Checkpoint files, each with whether it must exist (given on the command line) or
    /// may be missing (the configured default).
    pub checkpoint_files: Vec<(PathBuf, bool)>,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Whether the log is intact.
    pub ok: bool,
    /// First bad record's seq, when broken.
    pub first_bad_seq: Option<i64>,
    /// What is wrong, when broken.
    pub problem: Option<String>,
    /// First record walked.
    pub first_seq: i64,
    /// Last record walked.
    pub last_seq: i64,
    /// Records walked.
    pub records: u64,
    /// Hash of the last record.
    pub head_hash: Option<String>,
    /// Signed checkpoints found (after removing duplicates) and checked.
    pub checkpoints: usize,
    /// Checkpoints that matched a walked record.
    pub checkpoints_matched: u64,
    /// Newest checkpoint matched.
    pub newest_checkpoint: Option<i64>,
    /// Where checkpoints were read from, with how many each held.
    pub checkpoint_sources: Vec<(String, usize)>,
    /// Notes (e.g. a checkpoint file that does not exist yet).
    pub notes: Vec<String>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (false, Some(seq), Some(problem)) = (self.ok, self.first_bad_seq, &self.problem) {
            writeln!(f, "audit log BROKEN at seq {seq}: {problem}")?;
        } else if self.records == 0 {
            writeln!(f, "audit log OK: empty")?;
        } else {
            writeln!(
                f,
                "audit log OK: records seq {} to {} ({} records), head hash {}",
                self.first_seq,
                self.last_seq,
                self.records,
                self.head_hash.as_deref().unwrap_or("-")
            )?;
        }
        match self.newest_checkpoint {
            Some(seq) => writeln!(
                f,
                "signed checkpoints: {} checked, {} matched, newest at seq {seq}",
                self.checkpoints, self.checkpoints_matched
            )?,
            None => writeln!(
                f,
                "signed checkpoints: {} checked, none inside the part walked",
                self.checkpoints
            )?,
        }
        for (source, n) in &self.checkpoint_sources {
            writeln!(f, "  {n} from {source}")?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

impl Render for VerifyReport {
    fn text(&self) -> String {
        self.to_string()
    }

    fn json(&self) -> String {
        pretty(self)
    }
}

/// CA public keys that may sign checkpoints (every key not revoked), and revoked ones.
async fn ca_public_keys(
    store: &dyn Store,
) -> Result<(Vec<PublicKey>, Vec<PublicKey>), AuditCommandError> {
    let mut trusted = Vec::new();
    let mut revoked = Vec::new();
    for row in store.ca_keys().await? {
        let key = PublicKey::from_openssh(&row.public_key)
            .map_err(|_| AuditCommandError::BadKey(row.id.clone()))?;
        if row.state == KeyState::Revoked {
            revoked.push(key);
        } else {
            trusted.push(key);
        }
    }
    Ok((trusted, revoked))
}

/// Every checkpoint from the store and `files`, signatures checked. Returns the valid
/// ones (seq, hash), the sources, notes, and the first invalid one.
async fn gather_checkpoints(
    store: &dyn Store,
    files: &[(PathBuf, bool)],
) -> Result<
    (
        Vec<SignedCheckpoint>,
        Vec<(String, usize)>,
        Vec<String>,
        Option<CheckpointError>,
    ),
    AuditCommandError,
> {
    let (trusted, revoked) = ca_public_keys(store).await?;
    let mut all = Vec::new();
    let mut sources = Vec::new();
    let mut notes = Vec::new();
    let in_db = store.audit_checkpoints().await?;
    sources.push(("the database".to_owned(), in_db.len()));
    all.extend(in_db);
    for (path, required) in files {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let parsed = checkpoint::parse_lines(&text).map_err(|line| {
                    AuditCommandError::CheckpointFile {
                        path: path.clone(),
                        message: format!("line {line} is not a checkpoint"),
                    }
                })?;
                sources.push((path.display().to_string(), parsed.len()));
                all.extend(parsed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                notes.push(format!(
                    "checkpoint file {} does not exist (yet)",
                    path.display()
                ));
            }
            Err(e) => {
                return Err(AuditCommandError::CheckpointFile {
                    path: path.clone(),
                    message: e.to_string(),
                });
            }
        }
    }
    all.sort_by(|a, b| a.seq.cmp(&b.seq).then(a.signature.cmp(&b.signature)));
    all.dedup();
    let mut valid = Vec::new();
    let mut first_invalid = None;
    for c in all {
        match c.verify(&trusted) {
            Ok(()) => valid.push(c),
            Err(CheckpointError::UnknownKey { seq, .. }) if c.verify(&revoked).is_ok() => {
                notes.push(format!(
                    "checkpoint at seq {seq} is signed by a since revoked CA key; not relied on"
                ));
            }
            Err(e) => {
                if first_invalid.is_none() {
                    first_invalid = Some(e);
                }
            }
        }
    }
    Ok((valid, sources, notes, first_invalid))
}

/// Walk the log (see [`VerifyOptions`]).
pub async fn verify(
    store: &dyn Store,
    options: &VerifyOptions,
) -> Result<VerifyReport, AuditCommandError> {
    let (valid, sources, mut notes, invalid) =
        gather_checkpoints(store, &options.checkpoint_files).await?;
    let mut report = VerifyReport {
        ok: false,
        first_bad_seq: None,
        problem: None,
        first_seq: 0,
        last_seq: 0,
        records: 0,
        head_hash: None,
        checkpoints: valid.len(),
        checkpoints_matched: 0,
        newest_checkpoint: None,
        checkpoint_sources: sources,
        notes: Vec::new(),
    };
    if let Some(e) = invalid {
        let seq = match &e {
            CheckpointError::Malformed { seq }
            | CheckpointError::UnknownKey { seq, .. }
            | CheckpointError::BadSignature { seq } => *seq,
        };
        report.first_bad_seq = Some(seq);
        report.problem = Some(format!(
            "{e}: a checkpoint was forged or altered, so the log around it cannot be trusted"
        ));
        report.notes = notes;
        return Ok(report);
    }
    let outcome = walk(store, &valid, options.from_checkpoint, &mut notes).await?;
    report.notes = notes;
    match outcome {
        Ok(summary) => {
            report.ok = true;
            report.first_seq = summary.first;
            report.last_seq = summary.last;
            report.records = summary.records;
            report.head_hash = summary.head_hash;
            report.checkpoints_matched = summary.checkpoints_matched;
            report.newest_checkpoint = summary.newest_checkpoint;
        }
        Err(problem) => {
            report.first_bad_seq = Some(problem.first_bad_seq());
            report.problem = Some(problem.to_string());
        }
    }
    Ok(report)
}

async fn walk(
    store: &dyn Store,
    checkpoints: &[SignedCheckpoint],
    from_checkpoint: bool,
    notes: &mut Vec<String>,
) -> Result<Result<Summary, Problem>, AuditCommandError> {
    let head = store.audit_head().await?.map_or(0, |(seq, _)| seq);
    let start_after = if from_checkpoint {
        match checkpoints.iter().rev().find(|c| c.seq <= head) {
            Some(c) => c.seq - 1,
            None => {
                notes.push("no signed checkpoint inside the log: walked all of it".into());
                0
            }
        }
    } else {
        0
    };
    let anchors = checkpoints.iter().map(|c| (c.seq, c.hash.clone()));
    let mut walker = match Walker::new(anchors, start_after == 0) {
        Ok(w) => w,
        Err(problem) => return Ok(Err(problem)),
    };
    for (sink, seq) in store.audit_sink_positions().await? {
        walker.witness(seq, format!("sink {sink:?}"));
    }
    let mut after = start_after;
    loop {
        let batch = store.audit_records(after, BATCH).await?;
        for record in &batch {
            if let Err(problem) = walker.push(record) {
                return Ok(Err(problem));
            }
        }
        match batch.last() {
            Some(last) if i64::try_from(batch.len()).unwrap_or(BATCH) == BATCH => after = last.seq,
            _ => break,
        }
    }
    Ok(walker.finish())
}

/// Everything the log says about one task.
#[derive(Debug, Clone)]
pub struct Trail {
    /// The task id asked for.
    pub task_id: String,
    /// The task, if it is still in the store.
    pub task: Option<TaskRecord>,
    /// Its records, in order.
    pub records: Vec<AuditRecord>,
}

/// The trail of `task_id`.
pub async fn trail(store: &dyn Store, task_id: &str) -> Result<Trail, AuditCommandError> {
    let task_id: String = task_id.chars().take(64).collect();
    let records = store.audit_trail(&task_id).await?;
    let task = store.task(&task_id).await?;
    if records.is_empty() && task.is_none() {
        return Err(AuditCommandError::UnknownTask(task_id));
    }
    Ok(Trail {
        task_id,
        task,
        records,
    })
}

impl fmt::Display for Trail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {}", self.task_id)?;
        if let Some(t) = &self.task {
            write!(
                f,
                ": owner {} / {}, policy {}, logins {}, hosts {}",
                t.issuer,
                t.subject,
                t.policy,
                t.logins.join(","),
                t.hosts.join(",")
            )?;
            if !t.purpose.is_empty() {
                write!(f, ", purpose {:?}", t.purpose)?;
            }
        }
        writeln!(f)?;
        for r in &self.records {
            let e = &r.entry;
            let outcome = match e.outcome {
                Some(Outcome::Failure) => "REFUSED",
                _ => "ok",
            };
            write!(
                f,
                "  #{:<6} {}  {:<16} {:<7}",
                r.seq, r.time, e.event, outcome
            )?;
            let mut field = |name: &str, value: Option<String>| -> fmt::Result {
                match value {
                    Some(v) if !v.is_empty() => write!(f, " {name}={v}"),
                    _ => Ok(()),
                }
            };
            field(
                "by",
                match (&e.issuer, &e.subject) {
                    (Some(i), Some(s)) => Some(format!("{s}({i})")),
                    (None, Some(s)) => Some(s.clone()),
                    (Some(i), None) => Some(format!("({i})")),
                    (None, None) => None,
                },
            )?;
            field("serial", e.serial.clone())?;
            field("key", e.key_fingerprint.clone())?;
            field("ca", e.ca_fingerprint.clone())?;
            field("host", e.host.clone())?;
            field("logins", Some(e.logins.join(",")))?;
            field("from", e.source_ip.clone())?;
            field("request", e.request_id.clone())?;
            field("reason", e.reason.as_ref().map(|r| format!("{r:?}")))?;
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Trail text for people; JSON Lines of its records (as `export --format jsonl`) for
/// scripts.
impl Render for Trail {
    fn text(&self) -> String {
        self.to_string()
    }

    fn json(&self) -> String {
        self.records
            .iter()
            .map(|record| Format::Jsonl.line(record) + "\n")
            .collect()
    }
}

/// Sign a checkpoint of the head now with the active CA key (the CA passphrase is read
/// as `config`, loaded from `config_path`, says).
pub async fn checkpoint(
    config: &Config,
    config_path: &Path,
    store: &Arc<dyn Store>,
    now: OffsetDateTime,
) -> Result<Option<SignedCheckpoint>, AuditCommandError> {
    let passphrase = config.ca_passphrase(config_path)?;
    let rows = store.ca_keys().await?;
    let keyring = crate::authority::Keyring::from_records(&rows, &passphrase)?;
    drop(passphrase);
    let file = config.audit.checkpoint_path(&config.storage.url);
    Ok(checkpoint_now(
        store.as_ref(),
        keyring.signer().as_ref(),
        file.as_deref(),
        now,
    )
    .await?)
}

/// What `prune` did.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Records deleted.
    pub deleted: u64,
    /// The log's first record now (a signed checkpoint's), when something was deleted.
    pub start_seq: Option<i64>,
    /// Why nothing was deleted, when nothing was.
    pub note: Option<String>,
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.start_seq, &self.note) {
            (Some(start), _) => writeln!(
                f,
                "pruned {} records; the log now starts at seq {start}, a signed checkpoint \
                 (`writ admin audit verify` checks from there)",
                self.deleted
            ),
            (None, Some(note)) => writeln!(f, "nothing pruned: {note}"),
            (None, None) => writeln!(f, "nothing pruned"),
        }
    }
}

/// Delete records before `before`, up to the newest signed checkpoint at or before it, as
/// `operator`. The whole log must verify first (against the store's checkpoints and
/// `checkpoint_files`).
pub async fn prune(
    store: &dyn Store,
    before: &Position,
    operator: &str,
    checkpoint_files: Vec<(PathBuf, bool)>,
    now: OffsetDateTime,
) -> Result<PruneReport, AuditCommandError> {
    let options = VerifyOptions {
        from_checkpoint: false,
        checkpoint_files,
    };
    let (valid, _, mut notes, invalid) =
        gather_checkpoints(store, &options.checkpoint_files).await?;
    if let Some(e) = invalid {
        return Err(AuditCommandError::BadCheckpoint(e));
    }
    walk(store, &valid, false, &mut notes)
        .await?
        .map_err(AuditCommandError::Broken)?;
    let nothing = |note: &str| PruneReport {
        deleted: 0,
        start_seq: None,
        note: Some(note.to_owned()),
    };
    let Some(first) = store.audit_first_seq().await? else {
        return Ok(nothing("the log is empty"));
    };
    let head = store.audit_head().await?.map_or(0, |(seq, _)| seq);
    // Records before `limit` may go.
    let (limit, before_text) = match before {
        Position::Seq(seq) => (*seq, seq.to_string()),
        Position::Time(time) => (
            store.audit_seq_at_time(time).await?.unwrap_or(head + 1),
            time.clone(),
        ),
    };
    let Some(anchor) = valid.iter().rev().find(|c| c.seq <= limit && c.seq <= head) else {
        return Ok(nothing(
            "no signed checkpoint at or before that point; run `writ admin audit checkpoint` \
             or wait for the periodic one, then prune",
        ));
    };
    if anchor.seq <= first {
        return Ok(nothing(
            "every record before the newest signed checkpoint at or before that point is \
             already gone",
        ));
    }
    let start = anchor.seq;
    let operator = operator.to_owned();
    let make = move |deleted: u64| {
        let mut entry = AuditEntry::new(event::AUDIT_PRUNED, Outcome::Success);
        entry.issuer = Some(LOCAL_ADMIN.to_owned());
        entry.subject = Some(operator.clone());
        entry.reason = Some(pruned_reason(start, deleted, &before_text));
        entry
    };
    let deleted = store
        .prune_audit(start, &anchor.hash, Box::new(make), now)
        .await?;
    Ok(PruneReport {
        deleted,
        start_seq: Some(start),
        note: None,
    })
}

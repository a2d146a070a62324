//! The audit log's background work inside `writ serve`, off the request path:
//!
//! - one task per `[[audit.sink]]` that reads records committed after the sink's stored
//!   position, in `seq` order, delivers them ([`super::sink`]) and stores the new position.
//!   It reads the database rather than listening to this process, so records written by
//!   other processes (`writ admin`, other replicas) are delivered too;
//! - one task that every `[audit] checkpoint_interval` signs a checkpoint of the head of the
//!   log with the CA's active key, when the head moved, and stores it in the database and
//!   appends it to the checkpoint file ([`checkpoint_now`], also behind
//!   `writ admin audit checkpoint`).
//!
//! Both run only while this process holds the store's background-work lease
//! ([`crate::server::leader`]), so of several replicas exactly one delivers and signs; a
//! sink that (re)starts leading reads its position from the store again, where the
//! previous leader left it. The tasks hold the store weakly and end when the server that
//! spawned them is gone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use time::OffsetDateTime;

use super::checkpoint::{self, SignedCheckpoint};
use super::format_time;
use super::sink::Sink;
use crate::authority::{Signer, sign_sshsig};
use crate::config::AuditConfig;
use crate::store::{Store, StoreError};

/// How often a sink looks for new records when it is caught up.
pub const SINK_POLL: Duration = Duration::from_millis(200);
/// How long a sink waits after a failed delivery before it tries again.
pub const SINK_RETRY: Duration = Duration::from_secs(2);
/// Records read and delivered per batch.
const BATCH: i64 = 500;

/// The CA key that signs checkpoints now (the keyring may change while serving).
pub type SignerSource = Arc<dyn Fn() -> Arc<dyn Signer> + Send + Sync>;

/// Whether this process does the once-only work now (holds the lease).
pub type Leading = Arc<dyn Fn() -> bool + Send + Sync>;

/// Why a checkpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointWriteError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed.
    #[error("signing the audit checkpoint failed: {0}")]
    Sign(String),
    /// The checkpoint file could not be written (the checkpoint is in the database).
    #[error("cannot append the audit checkpoint to {path}: {source}")]
    File {
        /// The checkpoint file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Start the sinks and the checkpointer for `config` (inside a tokio runtime).
pub fn spawn(
    config: &AuditConfig,
    storage_url: &str,
    store: &Arc<dyn Store>,
    signer: SignerSource,
    leading: Leading,
) {
    let weak = Arc::downgrade(store);
    for sink in &config.sinks {
        tokio::spawn(run_sink(weak.clone(), Sink::new(sink), leading.clone()));
    }
    tokio::spawn(run_checkpoints(
        weak,
        signer,
        leading,
        config.checkpoint_path(storage_url),
        config.checkpoint_interval,
    ));
}

async fn run_sink(store: Weak<dyn Store>, sink: Sink, leading: Leading) {
    let name = sink.name().to_owned();
    let sink = Arc::new(Mutex::new(sink));
    let mut position = None;
    let mut failing = false;
    loop {
        let Some(strong) = store.upgrade() else {
            return;
        };
        if !leading() {
            // Another replica delivers; when this one leads again it starts from the
            // position stored by then.
            drop(strong);
            position = None;
            tokio::time::sleep(SINK_POLL).await;
            continue;
        }
        let result = deliver_step(strong.as_ref(), &name, &sink, &mut position).await;
        drop(strong);
        match result {
            Ok(true) => {
                if failing {
                    tracing::info!(sink = %name, "audit sink delivering again");
                }
                failing = false;
                continue;
            }
            Ok(false) => failing = false,
            Err(error) => {
                if !failing {
                    tracing::warn!(sink = %name, %error, "audit sink delivery failed; retrying");
                }
                failing = true;
            }
        }
        tokio::time::sleep(if failing { SINK_RETRY } else { SINK_POLL }).await;
    }
}

/// One step of a sink: find where it is (the first time), then deliver the next batch.
/// Returns whether anything was delivered.
async fn deliver_step(
    store: &dyn Store,
    name: &str,
    sink: &Arc<Mutex<Sink>>,
    position: &mut Option<i64>,
) -> Result<bool, String> {
    let after = match *position {
        Some(p) => p,
        None => {
            let stored = store
                .audit_sink_position(name)
                .await
                .map_err(|e| e.to_string())?;
            let in_sink = on_sink(sink, |s| s.recover())
                .await?
                .map_err(|e| format!("reading the sink's last record: {e}"))?
                .unwrap_or(0);
            if in_sink > stored {
                // Delivered just before a crash, before its position was stored.
                store
                    .set_audit_sink_position(name, in_sink, OffsetDateTime::now_utc())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let start = stored.max(in_sink);
            *position = Some(start);
            start
        }
    };
    let batch = store
        .audit_records(after, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let Some(first) = batch.first().map(|r| r.seq) else {
        return Ok(false);
    };
    let to_send = batch.clone();
    let (sent, error) = on_sink(sink, move |s| s.deliver(&to_send)).await?;
    if sent > 0 {
        // Delivered: never again from this process, even if storing the position fails
        // (then a restart resumes from the sink file, or resends to syslog).
        let seq = batch[sent - 1].seq;
        *position = Some(seq);
        store
            .set_audit_sink_position(name, seq, OffsetDateTime::now_utc())
            .await
            .map_err(|e| format!("records {first} to {seq} delivered, position not stored: {e}"))?;
    }
    match error {
        Some(e) => Err(e.to_string()),
        None => Ok(true),
    }
}

/// Run `f` on the sink on a blocking thread (file writes and fsync, socket sends).
async fn on_sink<T: Send + 'static>(
    sink: &Arc<Mutex<Sink>>,
    f: impl FnOnce(&mut Sink) -> T + Send + 'static,
) -> Result<T, String> {
    let sink = Arc::clone(sink);
    tokio::task::spawn_blocking(move || {
        let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut sink)
    })
    .await
    .map_err(|e| format!("sink thread failed: {e}"))
}

async fn run_checkpoints(
    store: Weak<dyn Store>,
    signer: SignerSource,
    leading: Leading,
    file: Option<PathBuf>,
    every: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<i64> = None;
    loop {
        ticker.tick().await;
        let Some(strong) = store.upgrade() else {
            return;
        };
        if !leading() {
            // Another replica signs; read where it got to when this one leads again.
            last = None;
            continue;
        }
        if last.is_none() {
            match strong.audit_checkpoints().await {
                Ok(all) => last = Some(all.last().map_or(0, |c| c.seq)),
                Err(error) => {
                    tracing::warn!(%error, "cannot read audit checkpoints");
                    continue;
                }
            }
        }
        let head = match strong.audit_head().await {
            Ok(head) => head,
            Err(error) => {
                tracing::warn!(%error, "cannot read the audit log's head");
                continue;
            }
        };
        if head.as_ref().map(|(seq, _)| *seq) <= last {
            continue;
        }
        let signer = signer();
        match checkpoint_now(
            strong.as_ref(),
            signer.as_ref(),
            file.as_deref(),
            OffsetDateTime::now_utc(),
        )
        .await
        {
            Ok(Some(c)) => last = Some(c.seq),
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "audit checkpoint failed"),
        }
    }
}

/// Sign a checkpoint of the head of the log at `now`, store it, and append it to `file`.
/// `None` when the log is empty or its head is already checkpointed.
pub async fn checkpoint_now(
    store: &dyn Store,
    signer: &dyn Signer,
    file: Option<&Path>,
    now: OffsetDateTime,
) -> Result<Option<SignedCheckpoint>, CheckpointWriteError> {
    let Some((seq, hash)) = store.audit_head().await? else {
        return Ok(None);
    };
    let time = format_time(now);
    let signature = sign_sshsig(
        signer,
        checkpoint::NAMESPACE,
        &checkpoint::message(seq, &hash, &time),
    )
    .map_err(|e| CheckpointWriteError::Sign(e.to_string()))?;
    let made = SignedCheckpoint::new(seq, hash, time, signer.fingerprint().to_owned(), signature);
    if !store.insert_audit_checkpoint(&made).await? {
        return Ok(None);
    }
    if let Some(path) = file {
        let line = format!("{}\n", made.to_line());
        let path = path.to_owned();
        let written = tokio::task::spawn_blocking({
            let path = path.clone();
            move || super::sink::append_synced(&path, line.as_bytes())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        written.map_err(|source| CheckpointWriteError::File { path, source })?;
    }
    Ok(Some(made))
}

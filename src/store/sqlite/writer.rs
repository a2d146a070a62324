//! The SQLite store's only writer in this process: one thread that owns the write
//! connection and runs every write, in the order they arrive, each in its own
//! `BEGIN IMMEDIATE` transaction (which also holds off writers in other processes, such
//! as `writ admin`). Issuances are grouped: concurrent [`Writer::record`] calls share one
//! transaction and one fsync.
//!
//! For a batch of issuances the writer takes every issuance that queued up while the
//! previous write was committing (up to [`MAX_BATCH`]), waits briefly for those announced
//! and still on their way ([`Arrivals`]), checks each one before writing any of its rows
//! (`super::issuance`), reads the audit chain's head once and chains the batch's records,
//! commits (WAL, `synchronous = FULL`: the commit is on disk), and only then answers every
//! caller: no certificate leaves before its audit record is durable. If the commit fails,
//! every caller in the batch gets the error.
//!
//! Why a thread and not an async driver: a whole batch costs one thread hop, where a
//! driver that runs each statement on a worker thread behind a channel costs two context
//! switches per statement.
//!
//! A second thread checkpoints the WAL into the database, so commits never pay for it.
//!
//! With metrics (`writ serve`), the writer times each transaction it runs, from `BEGIN`
//! to the answers (`writ_store_commit_duration_seconds`), and counts each batch's
//! issuances (`writ_group_commit_batch_size`): a few atomic adds per transaction, on this
//! thread, after its callers have their answers.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::chain::Chain;
use super::connection;
use super::issuance::{self, BatchFacts};
use crate::metrics::Metrics;
use crate::store::arrivals::Arrivals;
use crate::store::{Issuance, StoreError};

/// Most issuances committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Longest the writer waits for issuances on their way before it commits.
const GATHER_WINDOW: Duration = Duration::from_millis(2);
/// How often it looks for them meanwhile.
const GATHER_POLL: Duration = Duration::from_micros(200);
/// Writes that may wait for the writer before callers queue on the channel.
const QUEUE_DEPTH: usize = 4 * MAX_BATCH;

/// How often the checkpointer copies committed pages from the WAL into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);
/// Most unlocked checkpoint passes before the locked one.
const CATCH_UP_PASSES: usize = 4;
/// Frames added during a pass below which the locked pass may follow.
const SMALL_DELTA_FRAMES: i64 = 64;

/// A write on its own: runs in its own transaction on the writer's connection and
/// answers its caller itself.
type Change = Box<dyn FnOnce(&mut Connection) + Send>;

// Nearly every job is an issuance: boxing it to shrink the rare `Change` would cost an
// allocation per certificate for nothing.
#[allow(clippy::large_enum_variant)]
enum Job {
    Issue(Pending),
    Change(Change),
}

struct Pending {
    issuance: Issuance,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The callers' side of the writer and checkpointer threads; both end when this is
/// dropped.
pub(super) struct Writer {
    queue: mpsc::Sender<Job>,
    _stop_checkpointer: std::sync::mpsc::Sender<()>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped".into())
}

impl Writer {
    /// Open the writer's connection to the (already migrated) database at `path` and
    /// start the writer and checkpointer threads.
    pub(super) fn start(
        path: &Path,
        arrivals: Arrivals,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Writer, StoreError> {
        let connection = open_for_writing(path)?;
        let checkpoint_connection = connection::open(path)?;
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        let (stop_checkpointer, stop) = std::sync::mpsc::channel();
        let spawn_failed =
            |e: std::io::Error| StoreError::Unavailable(format!("cannot start the writer: {e}"));
        // Held by the writer while it writes and by the checkpointer's final pass.
        let write_lock = Arc::new(Mutex::new(()));
        let writer_lock = write_lock.clone();
        std::thread::Builder::new()
            .name("writ-store-writer".into())
            .spawn(move || {
                run(
                    connection,
                    &writer_lock,
                    receiver,
                    &arrivals,
                    metrics.as_deref(),
                );
            })
            .map_err(spawn_failed)?;
        std::thread::Builder::new()
            .name("writ-checkpoint".into())
            .spawn(move || checkpoint_until(&checkpoint_connection, &write_lock, &stop))
            .map_err(spawn_failed)?;
        Ok(Writer {
            queue,
            _stop_checkpointer: stop_checkpointer,
        })
    }

    /// Queue `issuance` and wait until its batch has committed (or failed).
    pub(super) async fn record(&self, issuance: Issuance) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job::Issue(Pending { issuance, reply }))
            .await
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Run `change` in a transaction of its own and commit it if it succeeds (an error
    /// rolls everything of it back).
    pub(super) async fn write<T, F>(&self, change: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Change = Box::new(move |connection: &mut Connection| {
            let result = in_transaction(connection, change);
            // A caller that went away just does not hear the answer.
            let _ = reply.send(result);
        });
        self.queue
            .send(Job::Change(job))
            .await
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn in_transaction<T>(
    connection: &mut Connection,
    change: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = change(&tx)?;
    tx.commit()?;
    Ok(value)
}

fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    let connection = connection::open(path)?;
    // Keep the index pages issuances touch in this connection's cache (16 MiB) rather
    // than re-reading them from the OS for every batch. Not more: when a page split
    // reorders pages, SQLite parks one at a page number far past the end of the file, and
    // the next commit then walks the whole cache's hash table to drop it, so every commit
    // costs time in proportion to the cache's size (measured: 4% of the server's CPU at
    // 64 MiB).
    connection.pragma_update(None, "cache_size", -16_384)?;
    // Checkpoints run on their own thread (see `checkpoint_until`), not inside a commit
    // callers are waiting for; a WAL that grew under a burst is cut back when it restarts.
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    connection.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(connection)
}

fn lock(write_lock: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    write_lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every [`CHECKPOINT_INTERVAL`] until `stop`'s sender is dropped, copy committed pages
/// from the WAL into the database without holding up the writer, then copy the few pages
/// committed meanwhile under the writer lock (a checkpoint only sees the WAL as it was
/// when it started). The WAL is then fully copied, so the writer's next commit starts it
/// from the beginning again and it stays bounded.
fn checkpoint_until(
    connection: &Connection,
    write_lock: &Mutex<()>,
    stop: &std::sync::mpsc::Receiver<()>,
) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(CHECKPOINT_INTERVAL)
    {
        let result = catch_up(connection).and_then(|()| {
            let _guard = lock(write_lock);
            checkpoint(connection).map(|_| ())
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        }
    }
}

/// Unlocked checkpoints until the writer added few frames during the last one (at most
/// [`CATCH_UP_PASSES`]), so the locked pass that follows is short.
fn catch_up(connection: &Connection) -> rusqlite::Result<()> {
    let mut seen = checkpoint(connection)?;
    for _ in 1..CATCH_UP_PASSES {
        let now = checkpoint(connection)?;
        if now.saturating_sub(seen) < SMALL_DELTA_FRAMES {
            break;
        }
        seen = now;
    }
    Ok(())
}

/// One PASSIVE checkpoint (it never waits for the writer or for readers); returns how
/// many frames the WAL held when it started.
fn checkpoint(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

fn run(
    mut connection: Connection,
    write_lock: &Mutex<()>,
    mut receiver: mpsc::Receiver<Job>,
    arrivals: &Arrivals,
    metrics: Option<&Metrics>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut changes = Vec::new();
    while let Some(job) = receiver.blocking_recv() {
        match job {
            Job::Change(change) => changes.push(change),
            Job::Issue(first) => {
                batch.push(first);
                drain(&mut receiver, &mut batch, &mut changes);
                if changes.is_empty() {
                    gather(&mut receiver, &mut batch, &mut changes, arrivals);
                }
            }
        }
        let _guard = lock(write_lock);
        if !batch.is_empty() {
            let (started, issuances) = (Instant::now(), batch.len());
            commit_batch(&mut connection, &mut batch);
            if let Some(metrics) = metrics {
                metrics.store_commit(started.elapsed(), Some(issuances));
            }
        }
        for change in changes.drain(..) {
            let started = Instant::now();
            change(&mut connection);
            if let Some(metrics) = metrics {
                metrics.store_commit(started.elapsed(), None);
            }
        }
    }
}

/// Move what is queued into `batch` (issuances, up to [`MAX_BATCH`]) and `changes`.
fn drain(receiver: &mut mpsc::Receiver<Job>, batch: &mut Vec<Pending>, changes: &mut Vec<Change>) {
    while batch.len() < MAX_BATCH
        && let Ok(next) = receiver.try_recv()
    {
        match next {
            Job::Issue(pending) => batch.push(pending),
            Job::Change(change) => changes.push(change),
        }
    }
}

/// While issuances are on their way (being checked and signed by other requests), wait
/// for them in steps of [`GATHER_POLL`], at most [`GATHER_WINDOW`] in all, so they join
/// this batch. A commit costs about the same for one issuance as for twenty (the same
/// right-edge pages of every table and index, one fsync, then one checkpoint of them), so
/// under load this cuts the server's CPU per certificate, and with it the latency; a lone
/// request has nothing to wait for and commits at once. A write of another kind that
/// arrives meanwhile ends the wait.
fn gather(
    receiver: &mut mpsc::Receiver<Job>,
    batch: &mut Vec<Pending>,
    changes: &mut Vec<Change>,
    arrivals: &Arrivals,
) {
    let deadline = Instant::now() + GATHER_WINDOW;
    while batch.len() < MAX_BATCH
        && changes.is_empty()
        && arrivals.on_the_way() > 0
        && Instant::now() < deadline
    {
        std::thread::sleep(GATHER_POLL);
        drain(receiver, batch, changes);
    }
}

/// Write, commit and answer one batch.
fn commit_batch(connection: &mut Connection, batch: &mut Vec<Pending>) {
    let results = match write_batch(connection, batch) {
        Ok(results) => results,
        Err(e) => {
            tracing::error!(error = %e, issuances = batch.len(), "issuance batch failed to commit");
            let message = e.to_string();
            batch
                .iter()
                .map(|_| Err(StoreError::Unavailable(message.clone())))
                .collect()
        }
    };
    for (pending, result) in batch.drain(..).zip(results) {
        // A caller that went away just does not hear the answer; its rows stand.
        let _ = pending.reply.send(result);
    }
}

/// Write and commit one batch; the outer error fails the whole batch (nothing of it
/// commits), the inner results are per issuance.
fn write_batch(
    connection: &mut Connection,
    batch: &[Pending],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    in_transaction(connection, |tx| {
        let mut chain = Chain::head(tx)?;
        let mut facts = BatchFacts::read(tx)?;
        let mut results = Vec::with_capacity(batch.len());
        for pending in batch {
            // A refusal is the issuance's own; a failed write fails the batch (`?`).
            let result = match issuance::refusal(tx, &mut facts, &pending.issuance)? {
                Some(refused) => Err(refused),
                None => {
                    issuance::write(tx, &pending.issuance, &mut chain)?;
                    Ok(())
                }
            };
            results.push(result);
        }
        Ok(results)
    })
}

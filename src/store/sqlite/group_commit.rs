//! Group commit for issuances: concurrent [`Store::record_issuance`] calls share one
//! SQLite transaction and one fsync.
//!
//! One writer thread owns its own synchronous SQLite connection. It takes every issuance
//! that queued up while the previous batch was committing (up to [`MAX_BATCH`]) and, under
//! the store's writer lock and `BEGIN IMMEDIATE`, checks each one before writing any of its
//! rows, so a reused token, a serial collision or an ended task refuses only its own
//! issuance and leaves nothing behind (no savepoint to undo, see [`refusal`]). It
//! reads the audit chain's head once per batch and chains the batch's records itself,
//! commits (WAL, `synchronous = FULL`: the commit is on disk), and only then answers every
//! caller: no certificate leaves before its audit record is durable. If the commit fails,
//! every caller in the batch gets the error.
//!
//! Why a thread and not sqlx: sqlx runs each SQLite statement on a worker thread behind a
//! channel, two context switches per statement; here a whole batch costs one hop.
//!
//! [`Store::record_issuance`]: crate::store::Store::record_issuance

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{
    SQL_CERTIFICATE_LIVE, SQL_CHAIN_HEAD, SQL_INSERT_AUDIT, SQL_INSERT_CERTIFICATE,
    SQL_INSERT_TASK, SQL_TASK_STATE, SQL_USED_BEFORE_0006, restriction_columns, to_json,
};
use crate::audit::{self, AuditEntry, Outcome};
use crate::store::{Arrivals, Issuance, StoreError};

/// Most issuances committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Longest the writer waits for issuances on their way before it commits.
const GATHER_WINDOW: Duration = Duration::from_millis(2);
/// How often it looks for them meanwhile.
const GATHER_POLL: Duration = Duration::from_micros(200);
/// Issuances that may wait for the writer before callers queue on the channel.
const QUEUE_DEPTH: usize = 4 * MAX_BATCH;

struct Pending {
    issuance: Issuance,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// A CA key's state.
const SQL_CA_KEY_STATE: &str = "SELECT state FROM ca_keys WHERE id = $1";
const SQL_ANY_USED_BEFORE_0006: &str = "SELECT 1 FROM used_tokens_before_0006 LIMIT 1";
/// Is this task id taken?
const SQL_TASK_EXISTS: &str = "SELECT 1 FROM tasks WHERE id = $1";
/// Is this serial taken?
const SQL_SERIAL_EXISTS: &str = "SELECT 1 FROM certificates WHERE serial = $1";
/// Record a once-only token; changes nothing (0 rows) when it was used before.
const SQL_CONSUME_TOKEN: &str = "INSERT INTO used_tokens (issuer, token_hash, expires_at) \
     VALUES ($1, $2, $3) ON CONFLICT (expires_at, issuer, token_hash) DO NOTHING";

/// How often the checkpointer copies committed pages from the WAL into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);
/// Most unlocked checkpoint passes before the locked one.
const CATCH_UP_PASSES: usize = 4;
/// Frames added during a pass below which the locked pass may follow.
const SMALL_DELTA_FRAMES: i64 = 64;

/// The callers' side of the writer and checkpointer threads; both end when this is
/// dropped.
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
    _stop_checkpointer: std::sync::mpsc::Sender<()>,
}

impl GroupCommit {
    /// Open the writer's connection to the (already migrated) database at `path` and
    /// start the writer thread.
    pub fn start(
        path: &Path,
        write_lock: Arc<Mutex<()>>,
        arrivals: Arrivals,
    ) -> Result<GroupCommit, StoreError> {
        let connection = open(path).map_err(unavailable)?;
        let checkpoint_connection = open(path).map_err(unavailable)?;
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        let (stop_checkpointer, stop) = std::sync::mpsc::channel();
        let spawn_failed =
            |e: std::io::Error| StoreError::Unavailable(format!("cannot start the writer: {e}"));
        let writer_lock = write_lock.clone();
        std::thread::Builder::new()
            .name("writ-group-commit".into())
            .spawn(move || run(connection, &writer_lock, receiver, &arrivals))
            .map_err(spawn_failed)?;
        std::thread::Builder::new()
            .name("writ-checkpoint".into())
            .spawn(move || checkpoint_until(&checkpoint_connection, &write_lock, &stop))
            .map_err(spawn_failed)?;
        Ok(GroupCommit {
            queue,
            _stop_checkpointer: stop_checkpointer,
        })
    }

    /// Queue `issuance` and wait until its batch has committed (or failed).
    pub async fn record(&self, issuance: Issuance) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the store's writer has stopped".into());
        self.queue
            .send(Pending { issuance, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    // The journal mode (WAL) is a property of the file, set when the store opened it.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Any statement journal stays in memory, not in a temporary file created and
    // unlinked on every batch.
    connection.pragma_update(None, "temp_store", "MEMORY")?;
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
            let _guard = write_lock.blocking_lock();
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
    mut receiver: mpsc::Receiver<Pending>,
    arrivals: &Arrivals,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        drain(&mut receiver, &mut batch);
        gather(&mut receiver, &mut batch, arrivals);
        let results = {
            let _guard = write_lock.blocking_lock();
            match write_batch(&mut connection, &batch) {
                Ok(results) => results,
                Err(e) => {
                    let e = unavailable(e);
                    tracing::error!(error = %e, issuances = batch.len(), "issuance batch failed to commit");
                    let message = e.to_string();
                    batch
                        .iter()
                        .map(|_| Err(StoreError::Unavailable(message.clone())))
                        .collect()
                }
            }
        };
        for (pending, result) in batch.drain(..).zip(results) {
            // A caller that went away just does not hear the answer; its rows stand.
            let _ = pending.reply.send(result);
        }
    }
}

/// Move what is queued into `batch`, up to [`MAX_BATCH`].
fn drain(receiver: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH
        && let Ok(next) = receiver.try_recv()
    {
        batch.push(next);
    }
}

/// While issuances are on their way (being checked and signed by other requests), wait
/// for them in steps of [`GATHER_POLL`], at most [`GATHER_WINDOW`] in all, so they join
/// this batch. A commit costs about the same for one issuance as for twenty (the same
/// right-edge pages of every table and index, one fsync, then one checkpoint of them), so
/// under load this cuts the server's CPU per certificate, and with it the latency; a lone
/// request has nothing to wait for and commits at once.
fn gather(receiver: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>, arrivals: &Arrivals) {
    let deadline = Instant::now() + GATHER_WINDOW;
    while batch.len() < MAX_BATCH && arrivals.on_the_way() > 0 && Instant::now() < deadline {
        std::thread::sleep(GATHER_POLL);
        drain(receiver, batch);
    }
}

/// Write and commit one batch; the outer error fails the whole batch (nothing of it
/// commits), the inner results are per issuance.
fn write_batch(
    connection: &mut Connection,
    batch: &[Pending],
) -> rusqlite::Result<Vec<Result<(), StoreError>>> {
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut head = read_chain_head(&tx)?;
    let mut facts = BatchFacts::read(&tx)?;
    let mut results = Vec::with_capacity(batch.len());
    for pending in batch {
        let result = match refusal(&tx, &mut facts, &pending.issuance)? {
            Some(refused) => Err(refused),
            None => {
                head = write_one(&tx, &pending.issuance, &head)?;
                Ok(())
            }
        };
        results.push(result);
    }
    tx.commit()?;
    Ok(results)
}

/// What every issuance of a batch checks and no issuance of it changes, read once per
/// batch inside its write transaction (no other connection writes until it commits).
struct BatchFacts {
    /// CA key id → whether it may still sign (`active` or `retiring`).
    key_may_sign: Vec<(String, bool)>,
    /// Whether tokens consumed before migration 0006 are still kept (that table only
    /// shrinks, by pruning).
    tokens_before_0006: bool,
}

impl BatchFacts {
    fn read(tx: &Connection) -> rusqlite::Result<BatchFacts> {
        Ok(BatchFacts {
            key_may_sign: Vec::new(),
            tokens_before_0006: tx.prepare_cached(SQL_ANY_USED_BEFORE_0006)?.exists([])?,
        })
    }

    /// A key that is retired or revoked never signs again, even from a server whose
    /// keyring is stale; `retiring` still may until that server reloads (migration 0007).
    fn key_may_sign(&mut self, tx: &Connection, ca_key_id: &str) -> rusqlite::Result<bool> {
        if let Some((_, may)) = self.key_may_sign.iter().find(|(id, _)| id == ca_key_id) {
            return Ok(*may);
        }
        let state = tx
            .prepare_cached(SQL_CA_KEY_STATE)?
            .query_row([ca_key_id], |row| row.get::<_, String>(0))
            .optional()?;
        let may = matches!(state.as_deref(), Some("active" | "retiring"));
        self.key_may_sign.push((ca_key_id.to_owned(), may));
        Ok(may)
    }
}

/// Why `issuance` must not commit, if it must not: its CA key may no longer sign, its task
/// id or serial is taken, its task is no longer live, the certificate it is renewed from
/// (by proof of possession) is revoked, or its token was used already. Checked inside the
/// batch's write transaction by the only writer, before any of its rows is written, so a
/// refused issuance writes nothing and needs no savepoint; the last check consumes the
/// token.
fn refusal(
    tx: &Connection,
    facts: &mut BatchFacts,
    issuance: &Issuance,
) -> rusqlite::Result<Option<StoreError>> {
    let cert = &issuance.certificate;
    if !facts.key_may_sign(tx, &cert.ca_key_id)? {
        return Ok(Some(StoreError::Unavailable(
            "the signing CA key is retired or revoked".into(),
        )));
    }
    match &issuance.new_task {
        Some(task) => {
            if tx.prepare_cached(SQL_TASK_EXISTS)?.exists([&task.id])? {
                return Ok(Some(StoreError::Conflict(format!(
                    "task id {} is taken",
                    task.id
                ))));
            }
        }
        None => {
            // Another certificate for an existing task: the task must still be live when
            // the certificate commits, not only when the request was checked.
            let state = tx
                .prepare_cached(SQL_TASK_STATE)?
                .query_row([&cert.task_id], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()?;
            if !matches!(state, Some((s, expires)) if s == "active" && expires > cert.issued_at) {
                return Ok(Some(StoreError::TaskNotActive));
            }
        }
    }
    // A renewal by proof of possession: the proving certificate must still be live when
    // this one commits, not only when the request was checked, so that once its
    // revocation has committed (which revokes what was renewed from it before) nothing
    // more is renewed from it. One lookup in the serial index; none for a token issuance.
    if let Some(parent) = cert.renewed_from {
        let live = tx
            .prepare_cached(SQL_CERTIFICATE_LIVE)?
            .query_row([parent], |row| row.get::<_, bool>(0))
            .optional()?;
        if live != Some(true) {
            return Ok(Some(StoreError::RenewedFromRevoked));
        }
    }
    if tx
        .prepare_cached(SQL_SERIAL_EXISTS)?
        .exists([cert.serial])?
    {
        return Ok(Some(StoreError::Conflict(format!(
            "serial {} is taken",
            cert.serial
        ))));
    }
    if let Some(token) = &issuance.token_use {
        if facts.tokens_before_0006
            && tx
                .prepare_cached(SQL_USED_BEFORE_0006)?
                .exists([&token.issuer, &token.token_hash])?
        {
            return Ok(Some(StoreError::TokenReused));
        }
        let consumed = tx.prepare_cached(SQL_CONSUME_TOKEN)?.execute(params![
            token.issuer,
            token.token_hash,
            token.expires_at,
        ])?;
        if consumed == 0 {
            return Ok(Some(StoreError::TokenReused));
        }
    }
    Ok(None)
}

/// One checked issuance's task, certificate and audit rows, chained after `head`; returns
/// the new head. Any error here fails the whole batch.
fn write_one(
    tx: &Connection,
    issuance: &Issuance,
    head: &(i64, String),
) -> rusqlite::Result<(i64, String)> {
    let cert = &issuance.certificate;
    if let Some(task) = &issuance.new_task {
        let (extensions, force_command, source_address) =
            restriction_columns(task.restrictions.as_ref());
        tx.prepare_cached(SQL_INSERT_TASK)?.execute(params![
            task.id,
            task.issuer,
            task.subject,
            task.policy,
            to_json(&task.logins),
            to_json(&task.hosts),
            task.purpose,
            task.state,
            task.created_at,
            task.expires_at,
            extensions,
            force_command,
            source_address,
        ])?;
    }
    tx.prepare_cached(SQL_INSERT_CERTIFICATE)?.execute(params![
        cert.serial,
        cert.task_id,
        cert.ca_key_id,
        cert.key_fingerprint,
        to_json(&cert.principals),
        cert.valid_after,
        cert.valid_before,
        cert.issued_at,
        cert.renewed_from,
    ])?;
    let mut head = head.clone();
    for entry in &issuance.audit {
        let (prev_seq, prev_hash) = &head;
        let seq = prev_seq + 1;
        let time = audit::format_time(OffsetDateTime::now_utc());
        let hash = audit::chain_hash(seq, &time, entry, prev_hash);
        insert_audit_row(tx, seq, &time, entry, prev_hash, &hash)?;
        head = (seq, hash);
    }
    Ok(head)
}

/// The audit chain's head `(seq, hash)`, or `(0, GENESIS_HASH)` for an empty log, read
/// through a synchronous connection (the writer's, or the bench's prefill).
pub(crate) fn read_chain_head(connection: &Connection) -> rusqlite::Result<(i64, String)> {
    Ok(connection
        .prepare_cached(SQL_CHAIN_HEAD)?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?
        .unwrap_or_else(|| (0, audit::GENESIS_HASH.to_owned())))
}

/// Insert one audit record already chained (`seq`, `hash` over `prev_hash`) through a
/// synchronous connection.
pub(crate) fn insert_audit_row(
    connection: &Connection,
    seq: i64,
    time: &str,
    entry: &AuditEntry,
    prev_hash: &str,
    hash: &str,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached(SQL_INSERT_AUDIT)?
        .execute(params![
            seq,
            time,
            entry.event,
            entry.outcome.unwrap_or(Outcome::Success).as_str(),
            entry.issuer,
            entry.subject,
            entry.policy,
            entry.task_id,
            entry.serial,
            entry.key_fingerprint,
            to_json(&entry.logins),
            to_json(&entry.hosts),
            entry.host,
            entry.ca_fingerprint,
            entry.source_ip,
            entry.reason,
            entry.request_id,
            prev_hash,
            hash,
            entry.purpose,
        ])?;
    Ok(())
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand_core::OsRng;

    use super::super::SqliteStore;
    use super::super::test_issuance::issuance;
    use crate::audit::{self, event};
    use crate::authority::keyring::{KeyState, new_key_record};
    use crate::config::KeyAlgorithm;
    use crate::store::{KeyringChange, Store, StoreError};

    /// A fresh store in a temporary directory with one active CA key; returns its id.
    async fn store_with_active_key() -> (tempfile::TempDir, SqliteStore, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let store = SqliteStore::open(path.to_str().expect("path"))
            .await
            .expect("open");
        let key = new_key_record(
            "pass",
            KeyAlgorithm::Ed25519,
            KeyState::Active,
            0,
            &mut OsRng,
        )
        .expect("key");
        let key_id = key.id.clone();
        store
            .change_keyring(&KeyringChange {
                new_keys: vec![key],
                ..KeyringChange::default()
            })
            .await
            .expect("key");
        (dir, store, key_id)
    }

    /// Many concurrent issuances, some of which must fail on their own (a token used
    /// twice, a serial taken twice, a task that is not active): each gets its own answer,
    /// the others commit, and the audit chain stays unbroken with one record per success.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_issuances_share_commits_and_fail_one_by_one() {
        let (_dir, store, key_id) = store_with_active_key().await;
        let store = std::sync::Arc::new(store);

        let mut calls = Vec::new();
        for n in 1..=120_i64 {
            // Every tenth reuses token "t1"; every 15th reuses serial 2; every 40th names
            // a task that does not exist.
            let token = if n % 10 == 0 {
                "t1".to_owned()
            } else {
                format!("t{n}")
            };
            let serial = if n % 15 == 0 { 2 } else { n };
            let task = (n % 40 == 0).then_some("no-such-task");
            let store = store.clone();
            let issuance = issuance(&key_id, serial, task, Some(&token));
            calls.push(tokio::spawn(async move {
                (n, store.record_issuance(issuance).await)
            }));
        }
        // Whichever contender runs first wins a contended token or serial: exactly one
        // call per contended resource commits, every uncontended call commits, and a call
        // naming a missing task never does.
        let mut committed = BTreeSet::new();
        let (mut token_winners, mut serial_winners) = (0, 0);
        for call in calls {
            let (n, result) = call.await.expect("join");
            let wants_t1 = n == 1 || n % 10 == 0;
            let wants_serial_2 = n == 2 || n % 15 == 0;
            let missing_task = n % 40 == 0;
            match result {
                Ok(()) => {
                    assert!(!missing_task, "issuance {n} named a missing task");
                    token_winners += usize::from(wants_t1);
                    serial_winners += usize::from(wants_serial_2);
                    committed.insert(if wants_serial_2 { 2 } else { n });
                }
                Err(
                    StoreError::TokenReused | StoreError::Conflict(_) | StoreError::TaskNotActive,
                ) => {
                    assert!(
                        wants_t1 || wants_serial_2 || missing_task,
                        "uncontended issuance {n} failed"
                    );
                }
                Err(e) => panic!("issuance {n}: {e}"),
            }
        }
        assert_eq!(token_winners, 1, "token t1 is used exactly once");
        assert_eq!(serial_winners, 1, "serial 2 is issued exactly once");
        // Serial 2 and token t1 each committed exactly once, whichever call won.
        let records = store.audit_records(0, 1_000).await.expect("records");
        assert_eq!(audit::verify_chain(&records, audit::GENESIS_HASH), Ok(()));
        let issued: Vec<i64> = records
            .iter()
            .filter(|r| r.entry.event == event::CERT_ISSUED)
            .map(|r| {
                r.entry
                    .serial
                    .as_deref()
                    .expect("serial")
                    .parse()
                    .expect("n")
            })
            .collect();
        let issued_set: BTreeSet<i64> = issued.iter().copied().collect();
        assert_eq!(issued.len(), issued_set.len(), "one record per certificate");
        for serial in &issued_set {
            assert!(store.certificate(*serial).await.expect("read").is_some());
        }
        // Every success has its certificate and record; the losers left nothing.
        assert!(committed.is_subset(&issued_set));
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM certificates")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        assert_eq!(rows as usize, issued_set.len());
        let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM used_tokens")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        assert_eq!(tokens as usize, issued_set.len());
        let tasks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        assert_eq!(
            tasks as usize,
            issued_set.len(),
            "a refused issuance leaves no task"
        );
    }

    /// A token consumed before migration 0006 (kept in its own table, keyed without the
    /// expiry) is still refused, and the refusal writes nothing.
    #[tokio::test]
    async fn a_token_consumed_before_migration_0006_is_still_refused() {
        let (_dir, store, key_id) = store_with_active_key().await;
        sqlx::query(
            "INSERT INTO used_tokens_before_0006 (issuer, token_hash, expires_at) \
             VALUES ('i', 'old', 10000)",
        )
        .execute(&store.pool)
        .await
        .expect("old token");
        let again = store
            .record_issuance(issuance(&key_id, 9, None, Some("old")))
            .await;
        assert!(matches!(again, Err(StoreError::TokenReused)), "{again:?}");
        assert!(store.certificate(9).await.expect("read").is_none());
        store
            .record_issuance(issuance(&key_id, 10, None, Some("new")))
            .await
            .expect("a fresh token");
    }

    /// The writer waits for announced issuances only for the gather window: one that never
    /// arrives (its request failed, or hangs) does not hold the others up.
    #[tokio::test]
    async fn an_issuance_that_never_arrives_does_not_hold_up_the_batch() {
        let (_dir, store, key_id) = store_with_active_key().await;
        let never = store.arrivals().expect();
        assert_eq!(store.arrivals().on_the_way(), 1);
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            store.record_issuance(issuance(&key_id, 11, None, Some("x"))),
        )
        .await
        .expect("committed after the gather window")
        .expect("recorded");
        drop(never);
        assert_eq!(store.arrivals().on_the_way(), 0);
    }

    /// Another certificate for a task that ended after the request was checked is not
    /// committed.
    #[tokio::test]
    async fn a_certificate_for_an_ended_task_is_not_committed() {
        let (_dir, store, key_id) = store_with_active_key().await;
        store
            .record_issuance(issuance(&key_id, 7, None, Some("a")))
            .await
            .expect("first");
        let task_id = format!("{:032x}", 7);
        sqlx::query("UPDATE tasks SET state = 'completed' WHERE id = $1")
            .bind(&task_id)
            .execute(&store.pool)
            .await
            .expect("end");
        let again = store
            .record_issuance(issuance(&key_id, 8, Some(&task_id), Some("b")))
            .await;
        assert!(matches!(again, Err(StoreError::TaskNotActive)), "{again:?}");
        assert!(store.certificate(8).await.expect("read").is_none());
    }

    /// Revoke `serial` through the store, one plain record per certificate revoked.
    async fn revoke(store: &SqliteStore, serial: i64) -> Vec<i64> {
        let audit = |revoked: &[crate::store::CertificateRecord]| {
            revoked
                .iter()
                .map(|c| {
                    let mut e =
                        crate::audit::AuditEntry::new(event::CERT_REVOKED, audit::Outcome::Success);
                    e.serial = Some(c.serial.to_string());
                    e
                })
                .collect()
        };
        store
            .revoke_certificate(serial, 500, &audit)
            .await
            .expect("revoke")
            .iter()
            .map(|c| c.serial)
            .collect()
    }

    /// Revoking a certificate revokes what was renewed from it, directly or not, and
    /// nothing else; once that has committed, a renewal from it (checked before the
    /// revocation, committed after) is refused and writes nothing, its token included.
    #[tokio::test]
    async fn revocation_takes_renewals_along_and_stops_later_ones() {
        let (_dir, store, key_id) = store_with_active_key().await;
        let task_id = format!("{:032x}", 7);
        store
            .record_issuance(issuance(&key_id, 7, None, Some("a")))
            .await
            .expect("first");
        for (serial, parent) in [(8, Some(7)), (9, Some(8)), (10, None), (11, Some(10))] {
            let mut renewal =
                issuance(&key_id, serial, Some(&task_id), Some(&format!("t{serial}")));
            renewal.certificate.renewed_from = parent;
            store.record_issuance(renewal).await.expect("renewal");
        }
        assert_eq!(revoke(&store, 7).await, [7, 8, 9]);
        assert!(revoke(&store, 7).await.is_empty(), "already revoked");
        for serial in [10, 11] {
            let cert = store
                .certificate(serial)
                .await
                .expect("read")
                .expect("cert");
            assert_eq!(cert.revoked_at, None, "{serial} was not renewed from 7");
        }
        let records = store.audit_records(0, 100).await.expect("records");
        let revoked: Vec<&str> = records
            .iter()
            .filter(|r| r.entry.event == event::CERT_REVOKED)
            .filter_map(|r| r.entry.serial.as_deref())
            .collect();
        assert_eq!(revoked, ["7", "8", "9"]);

        for parent in [7, 9, 12345] {
            let mut late = issuance(&key_id, 20 + parent, Some(&task_id), Some("late"));
            late.certificate.renewed_from = Some(parent);
            let refused = store.record_issuance(late).await;
            assert!(
                matches!(refused, Err(StoreError::RenewedFromRevoked)),
                "from {parent}: {refused:?}"
            );
            assert!(
                store
                    .certificate(20 + parent)
                    .await
                    .expect("read")
                    .is_none()
            );
        }
        let mut fresh = issuance(&key_id, 30, Some(&task_id), Some("late"));
        fresh.certificate.renewed_from = Some(11);
        store
            .record_issuance(fresh)
            .await
            .expect("the refusals did not consume the token");
    }
}

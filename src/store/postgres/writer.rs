//! Group commit for the PostgreSQL store: one task per process that takes every issuance
//! queued (up to [`MAX_BATCH`]), waits briefly for those announced and still on their way
//! ([`Arrivals`]), and records them all in one transaction on one pooled connection, then
//! answers every caller only after `COMMIT` has returned: no certificate leaves before its
//! rows and audit records are durable.
//!
//! Up to [`IN_FLIGHT`] batches are written at once, each on its own connection: while one
//! waits for its commit to reach the disk, the next checks and writes its rows, and then
//! waits for the chain's lock (`super::chain`), which orders their audit records. With
//! one batch at a time, the requests answered by a commit and the commit of the requests
//! after them could never overlap, and both the CPU and the disk sat idle half the time.
//!
//! Each issuance runs in a savepoint of its own (`super::issuance`): a refusal, or an
//! error the server raises about one of its statements (a unique key another process
//! took, a statement timeout, a broken deadlock), rolls back only that savepoint and is
//! only that caller's answer; the others commit. After the last issuance the batch takes
//! the audit chain's lock (`super::chain`), reads the head and appends every committed
//! issuance's records in one statement. If the connection fails or `COMMIT` fails, every
//! caller of the batch gets `Unavailable` (and nothing of the batch is written).
//!
//! Every other write runs in a transaction of its own on the pool, not here: the
//! database orders it against issuances (row locks, the chain's lock).
//!
//! With metrics (`writ serve`), each batch's time from `BEGIN` to the answers
//! (`writ_store_commit_duration_seconds`) and its size (`writ_group_commit_batch_size`)
//! are recorded after the callers have their answers.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::batch::{self, Outcome};
use super::chain::Chain;
use super::issuance::{self, SigningKeys};
use super::rows::is_statement_error;
use crate::metrics::Metrics;
use crate::store::arrivals::Arrivals;
use crate::store::{Issuance, StoreError};

/// Most issuances committed in one transaction. Each writes in a subtransaction (its
/// savepoint), and a transaction with more than 64 subtransactions that wrote overflows
/// PostgreSQL's per-backend cache of them, which makes every other session's snapshot
/// checks slower until it ends; so a batch stays within the cache.
pub const MAX_BATCH: usize = 64;
/// Most batches written at once (fewer if the pool is too small to leave a connection
/// for everything else, see [`in_flight`]).
pub const IN_FLIGHT: usize = 2;
/// Longest the writer waits for issuances on their way before it commits.
const GATHER_WINDOW: Duration = Duration::from_millis(2);
/// Issuances that may wait for the writer before callers queue on the channel.
const QUEUE_DEPTH: usize = 16 * MAX_BATCH;

/// Between two issuances of a batch: keep the one before, open one for the next.
const SQL_NEXT_SAVEPOINT: &str = "RELEASE SAVEPOINT issuance; SAVEPOINT issuance";
const SQL_FIRST_SAVEPOINT: &str = "SAVEPOINT issuance";
/// Undo a refused issuance; the savepoint stays, where the next issuance starts.
const SQL_UNDO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT issuance";
/// After the last issuance: keep it; the audit records are the batch's own.
const SQL_LAST_SAVEPOINT: &str = "RELEASE SAVEPOINT issuance";

struct Pending {
    issuance: Issuance,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The callers' side of the writer task; the task ends when this is dropped.
pub(super) struct Writer {
    queue: mpsc::Sender<Pending>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped".into())
}

impl Writer {
    /// Start the writer task on the current runtime.
    /// `pool_size` is the pool's size, which bounds the batches written at once.
    pub(super) fn start(
        pool: PgPool,
        pool_size: u32,
        arrivals: Arrivals,
        metrics: Option<Arc<Metrics>>,
    ) -> Writer {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        let batches = Arc::new(Semaphore::new(in_flight(pool_size)));
        tokio::spawn(run(pool, receiver, arrivals, batches, metrics));
        Writer { queue }
    }

    /// Queue `issuance` and wait until its batch has committed (or failed).
    pub(super) async fn record(&self, issuance: Issuance) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { issuance, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Batches written at once with a pool of `pool_size`: [`IN_FLIGHT`], but always one
/// connection left for reads and other writes, and at least one batch.
fn in_flight(pool_size: u32) -> usize {
    let spare = usize::try_from(pool_size.saturating_sub(1)).unwrap_or(usize::MAX);
    spare.clamp(1, IN_FLIGHT)
}

async fn run(
    pool: PgPool,
    mut receiver: mpsc::Receiver<Pending>,
    arrivals: Arrivals,
    batches: Arc<Semaphore>,
    metrics: Option<Arc<Metrics>>,
) {
    loop {
        // A batch starts gathering only when it can be written at once.
        let Ok(slot) = batches.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        batch.push(first);
        gather(&mut receiver, &mut batch, &arrivals).await;
        let (pool, metrics) = (pool.clone(), metrics.clone());
        tokio::spawn(async move {
            let (started, issuances) = (std::time::Instant::now(), batch.len());
            commit_batch(&pool, &mut batch).await;
            drop(slot);
            if let Some(metrics) = &metrics {
                metrics.store_commit(started.elapsed(), Some(issuances));
            }
        });
    }
}

/// Take what is queued, then, while issuances are on their way (being checked and signed
/// by other requests), wait for them, at most [`GATHER_WINDOW`] in all, so they join this
/// batch. A lone request has nothing to wait for and commits at once.
async fn gather(
    receiver: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    arrivals: &Arrivals,
) {
    let deadline = Instant::now() + GATHER_WINDOW;
    loop {
        while batch.len() < MAX_BATCH
            && let Ok(next) = receiver.try_recv()
        {
            batch.push(next);
        }
        if batch.len() >= MAX_BATCH || arrivals.on_the_way() == 0 {
            return;
        }
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(next)) => batch.push(next),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Write, commit and answer one batch.
async fn commit_batch(pool: &PgPool, batch: &mut Vec<Pending>) {
    let results = match write_batch(pool, batch).await {
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

/// The batch's signing keys, locked.
async fn lock_keys(conn: &mut PgConnection, batch: &[Pending]) -> Result<SigningKeys, StoreError> {
    let mut ids: Vec<String> = batch
        .iter()
        .map(|p| p.issuance.certificate.ca_key_id.clone())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(SigningKeys::lock(conn, ids).await?)
}

/// Write and commit one batch; the outer error fails the whole batch (nothing of it
/// commits), the inner results are per issuance. First with a few set-based statements
/// ([`batch`]); if those meet a taken task id or serial, or the database refuses one of
/// them (a deadlock, a timeout), everything is rolled back and the batch is written one
/// issuance at a time, each in a savepoint, which confines the failure to its issuance.
async fn write_batch(
    pool: &PgPool,
    batch: &[Pending],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    let keys = lock_keys(&mut tx, batch).await?;
    let issuances: Vec<&Issuance> = batch.iter().map(|p| &p.issuance).collect();
    match batch::record(&mut tx, &keys, &issuances).await {
        Ok(Outcome::Done(results)) => append_and_commit(tx, batch, results).await,
        Ok(Outcome::Retry) => {
            tx.rollback().await?;
            write_batch_one_by_one(pool, batch).await
        }
        Err(e) if is_statement_error(&e) => {
            tx.rollback().await?;
            write_batch_one_by_one(pool, batch).await
        }
        Err(e) => Err(e.into()),
    }
}

/// [`write_batch`]'s careful path: each issuance in a savepoint of its own.
async fn write_batch_one_by_one(
    pool: &PgPool,
    batch: &[Pending],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    let keys = lock_keys(&mut tx, batch).await?;
    let mut results = Vec::with_capacity(batch.len());
    sqlx::raw_sql(SQL_FIRST_SAVEPOINT).execute(&mut *tx).await?;
    let mut open = false;
    for pending in batch {
        if open {
            sqlx::raw_sql(SQL_NEXT_SAVEPOINT).execute(&mut *tx).await?;
        }
        let result = match issuance::record(&mut tx, &keys, &pending.issuance).await {
            Ok(result) => result,
            Err(e) if is_statement_error(&e) => Err(StoreError::from(e)),
            Err(e) => return Err(e.into()),
        };
        open = result.is_ok();
        if !open {
            undo(&mut tx).await?;
        }
        results.push(result);
    }
    if open {
        sqlx::raw_sql(SQL_LAST_SAVEPOINT).execute(&mut *tx).await?;
    }
    append_and_commit(tx, batch, results).await
}

/// Append the committed issuances' audit records under the chain's lock, then commit.
async fn append_and_commit(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &[Pending],
    results: Vec<Result<(), StoreError>>,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    // The committed issuances' records, in batch order (collected first: the lock is
    // taken only if there is something to append).
    let mut records = Vec::new();
    for (pending, result) in batch.iter().zip(&results) {
        if result.is_ok() {
            let at = pending.issuance.at;
            records.extend(pending.issuance.audit.iter().map(|entry| (entry, at)));
        }
    }
    if !records.is_empty() {
        let mut chain = Chain::lock(&mut tx).await?;
        for (entry, at) in records {
            chain.push(entry, at)?;
        }
        chain.insert(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(results)
}

async fn undo(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::raw_sql(SQL_UNDO_SAVEPOINT).execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_pool_keeps_a_connection_for_everything_else() {
        assert_eq!(in_flight(0), 1);
        assert_eq!(in_flight(1), 1);
        assert_eq!(in_flight(2), 1);
        assert_eq!(in_flight(3), IN_FLIGHT);
        assert_eq!(in_flight(u32::MAX), IN_FLIGHT);
    }
}

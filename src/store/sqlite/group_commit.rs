//! Group commit for issuances: concurrent [`Store::record_issuance`] calls share one
//! SQLite transaction and one fsync.
//!
//! A single writer task takes every issuance that queued up while the previous batch was
//! committing (up to [`MAX_BATCH`]), and under the store's writer lock writes each one
//! inside its own savepoint, so a reused token, a serial collision or an ended task fails
//! only its own issuance. It reads the audit chain's head once per batch and chains the
//! batch's records in memory, commits, and only then answers every caller: no certificate
//! leaves before its audit record is durable. If the commit fails, every caller in the
//! batch gets the error.
//!
//! [`Store::record_issuance`]: crate::store::Store::record_issuance

use std::sync::Arc;

use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{append_after, chain_head, require_active, to_json, unavailable};
use crate::store::{Issuance, StoreError};

/// Most issuances committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Issuances that may wait for the writer before callers queue on the channel.
const QUEUE_DEPTH: usize = 4 * MAX_BATCH;

struct Pending {
    issuance: Issuance,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The callers' side of the writer task; the task ends when this is dropped.
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Start the writer task on the current Tokio runtime.
    pub fn start(pool: SqlitePool, write_lock: Arc<Mutex<()>>) -> GroupCommit {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(pool, write_lock, receiver));
        GroupCommit { queue }
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

async fn run(pool: SqlitePool, write_lock: Arc<Mutex<()>>, mut receiver: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let results = {
            let _guard = write_lock.lock().await;
            match write_batch(&pool, &batch).await {
                Ok(results) => results,
                Err(e) => {
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

/// Write and commit one batch; the outer error fails the whole batch, the inner results
/// are per issuance.
async fn write_batch(
    pool: &SqlitePool,
    batch: &[Pending],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(unavailable)?;
    let mut head = chain_head(&mut tx).await?;
    let mut results = Vec::with_capacity(batch.len());
    for pending in batch {
        savepoint(&mut tx, "SAVEPOINT issuance").await?;
        match write_one(&mut tx, &pending.issuance, &head).await {
            Ok(new_head) => {
                savepoint(&mut tx, "RELEASE issuance").await?;
                head = new_head;
                results.push(Ok(()));
            }
            Err(
                e @ (StoreError::Conflict(_) | StoreError::TokenReused | StoreError::TaskNotActive),
            ) => {
                savepoint(&mut tx, "ROLLBACK TO issuance").await?;
                savepoint(&mut tx, "RELEASE issuance").await?;
                results.push(Err(e));
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(results)
}

async fn savepoint(
    tx: &mut Transaction<'static, Sqlite>,
    statement: &'static str,
) -> Result<(), StoreError> {
    sqlx::query(statement)
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// One issuance's rows, chained after `head`; returns the new head.
async fn write_one(
    tx: &mut Transaction<'static, Sqlite>,
    issuance: &Issuance,
    head: &(i64, String),
) -> Result<(i64, String), StoreError> {
    let cert = &issuance.certificate;
    match &issuance.new_task {
        Some(task) => {
            sqlx::query(
                "INSERT INTO tasks (id, issuer, subject, policy, logins, hosts, purpose, state, \
                 created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&task.id)
            .bind(&task.issuer)
            .bind(&task.subject)
            .bind(&task.policy)
            .bind(to_json(&task.logins))
            .bind(to_json(&task.hosts))
            .bind(&task.purpose)
            .bind(&task.state)
            .bind(task.created_at)
            .bind(task.expires_at)
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
        }
        // Another certificate for an existing task: the task must still be live when the
        // certificate commits, not only when the request was checked.
        None => require_active(tx, &cert.task_id, cert.issued_at).await?,
    }
    if let Some(token) = &issuance.token_use {
        super::consume_token(tx, token).await?;
    }
    sqlx::query(
        "INSERT INTO certificates (serial, task_id, ca_key_id, key_fingerprint, principals, \
         valid_after, valid_before, issued_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(cert.serial)
    .bind(&cert.task_id)
    .bind(&cert.ca_key_id)
    .bind(&cert.key_fingerprint)
    .bind(to_json(&cert.principals))
    .bind(cert.valid_after)
    .bind(cert.valid_before)
    .bind(cert.issued_at)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    let mut head = head.clone();
    for entry in &issuance.audit {
        head = append_after(tx, &head, entry).await?;
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand_core::OsRng;

    use super::super::SqliteStore;
    use crate::audit::{self, AuditEntry, Outcome, event};
    use crate::authority::keyring::{KeyState, new_key_record};
    use crate::config::KeyAlgorithm;
    use crate::store::{
        CertificateRecord, Issuance, KeyringChange, Store, StoreError, TaskRecord, TokenUse,
    };

    fn issuance(ca_key_id: &str, serial: i64, task: Option<&str>, token: &str) -> Issuance {
        let task_id = task.map_or_else(|| format!("{serial:032x}"), str::to_owned);
        Issuance {
            new_task: task.is_none().then(|| TaskRecord {
                id: task_id.clone(),
                issuer: "i".into(),
                subject: "s".into(),
                policy: "p".into(),
                logins: vec!["deploy".into()],
                hosts: vec!["*".into()],
                purpose: String::new(),
                state: "active".into(),
                created_at: 100,
                expires_at: 10_000,
            }),
            certificate: CertificateRecord {
                serial,
                task_id: task_id.clone(),
                ca_key_id: ca_key_id.into(),
                key_fingerprint: "SHA256:x".into(),
                principals: vec![format!("writ:{task_id}:deploy")],
                valid_after: 100,
                valid_before: 1_000,
                issued_at: 100,
                revoked_at: None,
            },
            audit: vec![{
                let mut e = AuditEntry::new(event::CERT_ISSUED, Outcome::Success);
                e.serial = Some(serial.to_string());
                e
            }],
            token_use: Some(TokenUse {
                issuer: "i".into(),
                token_hash: token.into(),
                expires_at: 10_000,
            }),
        }
    }

    /// Many concurrent issuances, some of which must fail on their own (a token used
    /// twice, a serial taken twice, a task that is not active): each gets its own answer,
    /// the others commit, and the audit chain stays unbroken with one record per success.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_issuances_share_commits_and_fail_one_by_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let store = std::sync::Arc::new(
            SqliteStore::open(path.to_str().expect("path"))
                .await
                .expect("open"),
        );
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
            let issuance = issuance(&key_id, serial, task, &token);
            calls.push(tokio::spawn(async move {
                (n, store.record_issuance(issuance).await)
            }));
        }
        let mut committed = BTreeSet::new();
        for call in calls {
            let (n, result) = call.await.expect("join");
            let expected_failure = n % 10 == 0 || n % 15 == 0 || n % 40 == 0;
            match result {
                Ok(()) => {
                    assert!(!expected_failure, "issuance {n} should have failed");
                    committed.insert(if n % 15 == 0 { 2 } else { n });
                }
                Err(
                    StoreError::TokenReused | StoreError::Conflict(_) | StoreError::TaskNotActive,
                ) => {
                    assert!(expected_failure || n == 1 || n == 2, "issuance {n} failed");
                }
                Err(e) => panic!("issuance {n}: {e}"),
            }
        }
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
    }

    /// Another certificate for a task that ended after the request was checked is not
    /// committed.
    #[tokio::test]
    async fn a_certificate_for_an_ended_task_is_not_committed() {
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
        store
            .record_issuance(issuance(&key_id, 7, None, "a"))
            .await
            .expect("first");
        let task_id = format!("{:032x}", 7);
        sqlx::query("UPDATE tasks SET state = 'completed' WHERE id = $1")
            .bind(&task_id)
            .execute(&store.pool)
            .await
            .expect("end");
        let again = store
            .record_issuance(issuance(&key_id, 8, Some(&task_id), "b"))
            .await;
        assert!(matches!(again, Err(StoreError::TaskNotActive)), "{again:?}");
        assert!(store.certificate(8).await.expect("read").is_none());
    }
}

//! The writer's fast path: a whole batch of issuances checked and written with a handful
//! of set-based statements (`= ANY($1)` reads, `INSERT … SELECT FROM UNNEST(…)` writes),
//! so a batch costs the same few round trips to PostgreSQL whatever its size, instead of
//! several per issuance in a savepoint each ([`super::issuance`]).
//!
//! It decides exactly what the per-issuance path decides, in the same order of checks:
//! 1. the signing key may sign (locked `FOR SHARE` by the writer, [`SigningKeys`]);
//! 2. an existing task is active and unexpired at the certificate's issue time, and a
//!    renewal's parent certificate is live — both rows locked `FOR SHARE`, in key order;
//! 3. the token is unused: inserted with `ON CONFLICT DO NOTHING`, in key order (so two
//!    replicas' batches never wait on each other in a cycle); a token named twice in one
//!    batch goes to the first issuance that names it, as it would in batch order.
//!
//! Issuances refused by these checks are answered and leave nothing. The rest insert
//! their new tasks and then their certificates (in batch order, which is issue order). A
//! task id or serial that turns out to be taken — which only a bug or a collision of
//! random ids makes happen — would leave that issuance's token behind: then the fast path
//! gives up ([`Outcome::Retry`]), the writer rolls the whole transaction back and writes
//! the batch again on the per-issuance path, which isolates the conflict. It never takes
//! the audit chain's lock and never commits: the writer does both.

use std::collections::HashSet;

use sqlx::{PgConnection, Row};

use super::issuance::SigningKeys;
use super::rows::task_state;
use crate::store::{Issuance, StoreError, TaskState};

/// Existing tasks of a batch, locked against their end, in id order.
const SQL_LOCK_TASKS: &str =
    "SELECT id, state, expires_at FROM tasks WHERE id = ANY($1) ORDER BY id FOR SHARE";
/// Parents of a batch's renewals, locked against their revocation, in serial order.
const SQL_LOCK_PARENTS: &str = "SELECT serial, revoked_at IS NULL FROM certificates \
     WHERE serial = ANY($1) ORDER BY serial FOR SHARE";
/// A batch's tokens, in key order; the ones returned were unused.
const SQL_CONSUME_TOKENS: &str = "INSERT INTO used_tokens (expires_at, issuer, token_hash) \
     SELECT e, i, h FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS t(e, i, h) \
     ORDER BY e, i, h ON CONFLICT DO NOTHING RETURNING expires_at, issuer, token_hash";
/// A list passed as a JSON array of strings, as a `TEXT[]` in its order.
macro_rules! list {
    ($column:literal) => {
        concat!(
            "ARRAY(SELECT v FROM jsonb_array_elements_text(",
            $column,
            "::jsonb) WITH ORDINALITY AS a(v, n) ORDER BY n)"
        )
    };
}
/// A batch's new tasks, in id order; the ids returned were free.
const SQL_INSERT_TASKS: &str = concat!(
    "INSERT INTO tasks (id, issuer, subject, policy, logins, hosts, purpose, state, \
     created_at, expires_at, extensions, force_command, source_address) \
     SELECT id, issuer, subject, policy, ",
    list!("logins"),
    ", ",
    list!("hosts"),
    ", purpose, state, created_at, expires_at, \
     CASE WHEN extensions IS NULL THEN NULL ELSE ",
    list!("extensions"),
    " END, force_command, CASE WHEN source_address IS NULL THEN NULL ELSE ",
    list!("source_address"),
    " END \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], \
     $13::text[]) AS t(id, issuer, subject, policy, logins, hosts, purpose, state, \
     created_at, expires_at, extensions, force_command, source_address) \
     ORDER BY id ON CONFLICT (id) DO NOTHING RETURNING id"
);
/// A batch's certificates, in batch (issue) order; the serials returned were free.
const SQL_INSERT_CERTIFICATES: &str = concat!(
    "INSERT INTO certificates (serial, task_id, ca_key_id, key_fingerprint, principals, \
     valid_after, valid_before, issued_at, renewed_from) \
     SELECT serial, task_id, ca_key_id, key_fingerprint, ",
    list!("principals"),
    ", valid_after, valid_before, issued_at, renewed_from \
     FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) \
     AS c(serial, task_id, ca_key_id, key_fingerprint, principals, valid_after, \
     valid_before, issued_at, renewed_from, ord) \
     ORDER BY ord ON CONFLICT (serial) DO NOTHING RETURNING serial"
);

/// What the fast path made of a batch.
pub(super) enum Outcome {
    /// Every issuance's answer; the accepted ones are written (not committed).
    Done(Vec<Result<(), StoreError>>),
    /// A task id or serial was taken: roll back and use the per-issuance path.
    Retry,
}

fn json(list: &[String]) -> String {
    serde_json::to_string(list).expect("a list of strings always serialises")
}

/// Check and write `batch` (see the module doc), inside the writer's transaction, after
/// the writer locked the batch's signing keys (`keys`).
pub(super) async fn record(
    conn: &mut PgConnection,
    keys: &SigningKeys,
    batch: &[&Issuance],
) -> Result<Outcome, sqlx::Error> {
    let mut results: Vec<Option<Result<(), StoreError>>> = (0..batch.len()).map(|_| None).collect();
    let refuse = |results: &mut Vec<Option<Result<(), StoreError>>>, i: usize, e: StoreError| {
        results[i] = Some(Err(e));
    };

    // 1. The signing key.
    for (i, issuance) in batch.iter().enumerate() {
        if !keys.may_sign(&issuance.certificate.ca_key_id) {
            refuse(
                &mut results,
                i,
                StoreError::Unavailable("the signing CA key is retired or revoked".into()),
            );
        }
    }

    // 2. Existing tasks and renewals' parents, locked.
    let mut task_ids: Vec<String> = batch
        .iter()
        .filter(|i| i.new_task.is_none())
        .map(|i| i.certificate.task_id.clone())
        .collect();
    task_ids.sort_unstable();
    task_ids.dedup();
    let mut tasks = Vec::new();
    if !task_ids.is_empty() {
        for row in sqlx::query(SQL_LOCK_TASKS)
            .bind(&task_ids)
            .fetch_all(&mut *conn)
            .await?
        {
            let (id, state, expires_at): (String, String, i64) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            tasks.push((id, state, expires_at));
        }
    }
    let mut parents: Vec<i64> = batch
        .iter()
        .filter_map(|i| i.certificate.renewed_from)
        .collect();
    parents.sort_unstable();
    parents.dedup();
    let mut live_parents = HashSet::new();
    if !parents.is_empty() {
        for row in sqlx::query(SQL_LOCK_PARENTS)
            .bind(&parents)
            .fetch_all(&mut *conn)
            .await?
        {
            if row.try_get::<bool, _>(1)? {
                live_parents.insert(row.try_get::<i64, _>(0)?);
            }
        }
    }
    for (i, issuance) in batch.iter().enumerate() {
        if results[i].is_some() {
            continue;
        }
        let cert = &issuance.certificate;
        if issuance.new_task.is_none() {
            let live = match tasks.iter().find(|(id, ..)| *id == cert.task_id) {
                None => Ok(false),
                Some((_, state, expires_at)) => task_state(state)
                    .map(|state| state == TaskState::Active && *expires_at > cert.issued_at),
            };
            match live {
                Ok(true) => {}
                Ok(false) => {
                    refuse(&mut results, i, StoreError::TaskNotActive);
                    continue;
                }
                Err(corrupt) => {
                    refuse(&mut results, i, corrupt);
                    continue;
                }
            }
        }
        if let Some(parent) = cert.renewed_from
            && !live_parents.contains(&parent)
        {
            refuse(&mut results, i, StoreError::RenewedFromRevoked);
        }
    }

    // 3. Tokens: the first issuance naming a token gets it, if it was unused.
    let mut claimed = HashSet::new();
    let mut wanted: Vec<(usize, (i64, &str, &str))> = Vec::new();
    for (i, issuance) in batch.iter().enumerate() {
        let Some(token) = &issuance.token_use else {
            continue;
        };
        if results[i].is_some() {
            continue;
        }
        let key = (
            token.expires_at,
            token.issuer.as_str(),
            token.token_hash.as_str(),
        );
        if claimed.insert(key) {
            wanted.push((i, key));
        } else {
            refuse(&mut results, i, StoreError::TokenReused);
        }
    }
    if !wanted.is_empty() {
        let rows = sqlx::query(SQL_CONSUME_TOKENS)
            .bind(wanted.iter().map(|(_, k)| k.0).collect::<Vec<i64>>())
            .bind(wanted.iter().map(|(_, k)| k.1).collect::<Vec<&str>>())
            .bind(wanted.iter().map(|(_, k)| k.2).collect::<Vec<&str>>())
            .fetch_all(&mut *conn)
            .await?;
        let mut consumed = HashSet::new();
        for row in rows {
            let key: (i64, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            consumed.insert(key);
        }
        for (i, (e, issuer, hash)) in wanted {
            if !consumed.contains(&(e, issuer.to_owned(), hash.to_owned())) {
                refuse(&mut results, i, StoreError::TokenReused);
            }
        }
    }

    // 4. New tasks, then certificates, of the issuances still accepted.
    let accepted: Vec<usize> = (0..batch.len()).filter(|i| results[*i].is_none()).collect();
    let new_tasks: Vec<&crate::store::TaskRecord> = accepted
        .iter()
        .filter_map(|i| batch[*i].new_task.as_ref())
        .collect();
    if !new_tasks.is_empty() {
        let restrictions = |t: &crate::store::TaskRecord| t.restrictions.clone();
        let inserted = sqlx::query(SQL_INSERT_TASKS)
            .bind(new_tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>())
            .bind(
                new_tasks
                    .iter()
                    .map(|t| t.issuer.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                new_tasks
                    .iter()
                    .map(|t| t.subject.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                new_tasks
                    .iter()
                    .map(|t| t.policy.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                new_tasks
                    .iter()
                    .map(|t| json(&t.logins))
                    .collect::<Vec<_>>(),
            )
            .bind(new_tasks.iter().map(|t| json(&t.hosts)).collect::<Vec<_>>())
            .bind(
                new_tasks
                    .iter()
                    .map(|t| t.purpose.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                new_tasks
                    .iter()
                    .map(|t| t.state.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(new_tasks.iter().map(|t| t.created_at).collect::<Vec<_>>())
            .bind(new_tasks.iter().map(|t| t.expires_at).collect::<Vec<_>>())
            .bind(
                new_tasks
                    .iter()
                    .map(|t| restrictions(t).map(|r| json(&r.extensions)))
                    .collect::<Vec<_>>(),
            )
            .bind(
                new_tasks
                    .iter()
                    .map(|t| restrictions(t).and_then(|r| r.force_command))
                    .collect::<Vec<_>>(),
            )
            .bind(
                new_tasks
                    .iter()
                    .map(|t| {
                        restrictions(t)
                            .and_then(|r| r.source_address)
                            .map(|s| json(&s))
                    })
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *conn)
            .await?;
        if inserted.len() != new_tasks.len() {
            return Ok(Outcome::Retry);
        }
    }
    if !accepted.is_empty() {
        let certs: Vec<&crate::store::CertificateRecord> =
            accepted.iter().map(|i| &batch[*i].certificate).collect();
        let inserted = sqlx::query(SQL_INSERT_CERTIFICATES)
            .bind(certs.iter().map(|c| c.serial).collect::<Vec<_>>())
            .bind(certs.iter().map(|c| c.task_id.as_str()).collect::<Vec<_>>())
            .bind(
                certs
                    .iter()
                    .map(|c| c.ca_key_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                certs
                    .iter()
                    .map(|c| c.key_fingerprint.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                certs
                    .iter()
                    .map(|c| json(&c.principals))
                    .collect::<Vec<_>>(),
            )
            .bind(certs.iter().map(|c| c.valid_after).collect::<Vec<_>>())
            .bind(certs.iter().map(|c| c.valid_before).collect::<Vec<_>>())
            .bind(certs.iter().map(|c| c.issued_at).collect::<Vec<_>>())
            .bind(certs.iter().map(|c| c.renewed_from).collect::<Vec<_>>())
            .bind((0..certs.len() as i64).collect::<Vec<i64>>())
            .fetch_all(&mut *conn)
            .await?;
        if inserted.len() != certs.len() {
            return Ok(Outcome::Retry);
        }
    }
    Ok(Outcome::Done(
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect(),
    ))
}

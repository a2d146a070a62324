//! One issuance inside the writer's batch transaction (`super::writer`), in a savepoint of
//! its own: the checks that decide whether it may commit and its task and certificate
//! rows, decided by the database under several writers. Also the once-only token check
//! every write that consumes a token uses ([`consume_token`]).
//!
//! What each check holds until the batch commits, so that another process's write that
//! would change the answer waits for it (or is seen by it):
//! - the signing key: `FOR SHARE` on its `ca_keys` row, for the whole batch
//!   ([`SigningKeys`]), so a retirement or revocation waits and a key retired first is seen;
//! - an existing task: `FOR SHARE` on its row, so `end_task` waits, and a task ended first
//!   is seen as ended;
//! - the certificate a renewal is renewed from: `FOR SHARE` on its row, likewise against
//!   its revocation;
//! - a new task id, a serial, a token: `INSERT … ON CONFLICT DO NOTHING`, which waits for
//!   a concurrent insert of the same key and then finds it taken (or free, if that
//!   transaction rolled back).
//!
//! A refusal returns before the batch writes anything else; the writer rolls the
//! savepoint back, so a refused issuance leaves nothing, its token included. Never takes
//! the audit chain's lock: the writer appends the batch's records after every issuance.

use sqlx::{PgConnection, Row};

use super::rows::task_state;
use crate::store::{Issuance, KeyState, StoreError, TaskState, TokenUse};

/// The signing keys of a batch, locked and read once; only user keys (a host key never
/// signs a user certificate, so it reads as one that may not sign).
const SQL_LOCK_KEYS: &str =
    "SELECT id, state FROM ca_keys WHERE id = ANY($1) AND kind = 'user' ORDER BY id FOR SHARE";
/// A task's state and expiry, locked against its end.
const SQL_LOCK_TASK: &str = "SELECT state, expires_at FROM tasks WHERE id = $1 FOR SHARE";
/// Whether a certificate is live, locked against its revocation (no row: unknown).
const SQL_LOCK_PARENT: &str =
    "SELECT revoked_at IS NULL FROM certificates WHERE serial = $1 FOR SHARE";
/// Record a once-only token; no row returned when it was used before.
const SQL_CONSUME_TOKEN: &str = "INSERT INTO used_tokens (expires_at, issuer, token_hash) \
     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1";
/// A new task; no row returned when the id is taken.
const SQL_INSERT_TASK: &str = "INSERT INTO tasks (id, issuer, subject, policy, logins, hosts, \
     purpose, state, created_at, expires_at, extensions, force_command, source_address) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (id) DO NOTHING RETURNING 1";
/// A new certificate; no row returned when the serial is taken.
const SQL_INSERT_CERTIFICATE: &str = "INSERT INTO certificates (serial, task_id, ca_key_id, \
     key_fingerprint, principals, valid_after, valid_before, issued_at, renewed_from) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (serial) DO NOTHING RETURNING 1";

/// The signing keys a batch uses, each locked `FOR SHARE` until the batch commits, and
/// whether each may still sign.
pub(super) struct SigningKeys(Vec<(String, bool)>);

impl SigningKeys {
    /// Lock and read the keys with these ids (once each). Taken outside any issuance's
    /// savepoint, so rolling one back keeps the locks.
    pub(super) async fn lock(
        conn: &mut PgConnection,
        ids: Vec<String>,
    ) -> Result<SigningKeys, sqlx::Error> {
        let rows = sqlx::query(SQL_LOCK_KEYS)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let state: &str = row.try_get(1)?;
            // `retiring` still may sign, until a replica with a stale keyring reloads; a
            // retired or revoked key never signs again.
            let may = KeyState::parse(state).is_some_and(KeyState::may_sign);
            keys.push((row.try_get(0)?, may));
        }
        Ok(SigningKeys(keys))
    }

    pub(super) fn may_sign(&self, id: &str) -> bool {
        self.0.iter().any(|(key, may)| key == id && *may)
    }
}

/// Consume `token`: `TokenReused` if it was consumed before (nothing is written then).
pub(super) async fn consume_token(
    conn: &mut PgConnection,
    token: &TokenUse,
) -> Result<(), StoreError> {
    match consume(conn, token).await? {
        true => Ok(()),
        false => Err(StoreError::TokenReused),
    }
}

async fn consume(conn: &mut PgConnection, token: &TokenUse) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(SQL_CONSUME_TOKEN)
        .bind(token.expires_at)
        .bind(&token.issuer)
        .bind(&token.token_hash)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(inserted.is_some())
}

/// Whether task `task_id` is active and unexpired at `now_unix`, locking its row until the
/// transaction ends.
async fn task_is_live(
    conn: &mut PgConnection,
    task_id: &str,
    now_unix: i64,
) -> Result<Result<bool, StoreError>, sqlx::Error> {
    let row = sqlx::query(SQL_LOCK_TASK)
        .bind(task_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(Ok(false));
    };
    let (state, expires_at): (&str, i64) = (row.try_get(0)?, row.try_get(1)?);
    Ok(task_state(state).map(|state| state == TaskState::Active && expires_at > now_unix))
}

/// Check `issuance` and write its task and certificate rows and its token use, in the
/// caller's savepoint. The outer error is the driver's (the caller decides whether it is
/// this issuance's or the batch's); the inner one is a refusal, after which the caller
/// must roll the savepoint back. Its audit records are not written here.
pub(super) async fn record(
    conn: &mut PgConnection,
    keys: &SigningKeys,
    issuance: &Issuance,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    let cert = &issuance.certificate;
    if !keys.may_sign(&cert.ca_key_id) {
        return Ok(Err(StoreError::Unavailable(
            "the signing CA key is retired or revoked".into(),
        )));
    }
    match &issuance.new_task {
        Some(task) => {
            let restrictions = task.restrictions.as_ref();
            let inserted = sqlx::query(SQL_INSERT_TASK)
                .bind(&task.id)
                .bind(&task.issuer)
                .bind(&task.subject)
                .bind(&task.policy)
                .bind(&task.logins)
                .bind(&task.hosts)
                .bind(&task.purpose)
                .bind(task.state.as_str())
                .bind(task.created_at)
                .bind(task.expires_at)
                .bind(restrictions.map(|r| &r.extensions))
                .bind(restrictions.and_then(|r| r.force_command.as_ref()))
                .bind(restrictions.and_then(|r| r.source_address.as_ref()))
                .fetch_optional(&mut *conn)
                .await?;
            if inserted.is_none() {
                return Ok(Err(StoreError::Conflict(format!(
                    "task id {} is taken",
                    task.id
                ))));
            }
        }
        // Another certificate for an existing task: the task must still be live when the
        // certificate commits, not only when the request was checked.
        None => match task_is_live(conn, &cert.task_id, cert.issued_at).await? {
            Ok(true) => {}
            Ok(false) => return Ok(Err(StoreError::TaskNotActive)),
            Err(corrupt) => return Ok(Err(corrupt)),
        },
    }
    // A renewal by proof of possession: the proving certificate must still be live when
    // this one commits, so that once its revocation has committed nothing more is renewed
    // from it.
    if let Some(parent) = cert.renewed_from {
        let live = sqlx::query(SQL_LOCK_PARENT)
            .bind(parent)
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| row.try_get::<bool, _>(0))
            .transpose()?;
        if live != Some(true) {
            return Ok(Err(StoreError::RenewedFromRevoked));
        }
    }
    let inserted = sqlx::query(SQL_INSERT_CERTIFICATE)
        .bind(cert.serial)
        .bind(&cert.task_id)
        .bind(&cert.ca_key_id)
        .bind(&cert.key_fingerprint)
        .bind(&cert.principals)
        .bind(cert.valid_after)
        .bind(cert.valid_before)
        .bind(cert.issued_at)
        .bind(cert.renewed_from)
        .fetch_optional(&mut *conn)
        .await?;
    if inserted.is_none() {
        return Ok(Err(StoreError::Conflict(format!(
            "serial {} is taken",
            cert.serial
        ))));
    }
    if let Some(token) = &issuance.token_use
        && !consume(conn, token).await?
    {
        return Ok(Err(StoreError::TokenReused));
    }
    Ok(Ok(()))
}

//! One issuance inside the writer's transaction: the checks that decide whether it may
//! commit, then its task, certificate and audit rows. Checked by the only writer before
//! any of its rows is written, so a refused issuance writes nothing and needs no
//! savepoint; the last check consumes its once-only token. Also the once-only token check
//! every other write that consumes a token uses ([`consume_token`]).

use rusqlite::{Connection, OptionalExtension, params};

use super::chain::Chain;
use super::rows::{restriction_columns, task_state, to_json};
use crate::store::{Issuance, KeyState, StoreError, TaskState, TokenUse};

/// A user CA key's state (no row: no such key, or a host key, which never signs a user
/// certificate).
const SQL_CA_KEY_STATE: &str = "SELECT state FROM ca_keys WHERE id = ?1 AND kind = 'user'";
const SQL_ANY_USED_BEFORE_0006: &str = "SELECT 1 FROM used_tokens_before_0006 LIMIT 1";
/// Was this token consumed before migration 0006 (see that migration)?
const SQL_USED_BEFORE_0006: &str =
    "SELECT 1 FROM used_tokens_before_0006 WHERE issuer = ?1 AND token_hash = ?2";
/// Record a once-only token; changes nothing (0 rows) when it was used before.
const SQL_CONSUME_TOKEN: &str = "INSERT INTO used_tokens (issuer, token_hash, expires_at) \
     VALUES (?1, ?2, ?3) ON CONFLICT (expires_at, issuer, token_hash) DO NOTHING";
/// Is this task id taken?
const SQL_TASK_EXISTS: &str = "SELECT 1 FROM tasks WHERE id = ?1";
/// A task's state and expiry.
pub(super) const SQL_TASK_STATE: &str = "SELECT state, expires_at FROM tasks WHERE id = ?1";
/// Whether a certificate is live (not revoked): `None` when there is no such certificate.
/// One lookup in the serial index, made only for renewals by proof of possession.
pub(super) const SQL_CERTIFICATE_LIVE: &str =
    "SELECT revoked_at IS NULL FROM certificates WHERE serial = ?1";
/// A new task; its restrictions are bound with [`restriction_columns`].
const SQL_INSERT_TASK: &str = "INSERT INTO tasks (id, issuer, subject, policy, logins, hosts, \
     purpose, state, created_at, expires_at, extensions, force_command, source_address) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
/// A new certificate.
const SQL_INSERT_CERTIFICATE: &str = "INSERT INTO certificates (serial, task_id, ca_key_id, \
     key_fingerprint, principals, valid_after, valid_before, issued_at, renewed_from) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// What every issuance of a batch checks and no issuance of it changes, read once per
/// batch inside its write transaction (no other connection writes until it commits).
pub(super) struct BatchFacts {
    /// CA key id → whether it may still sign.
    key_may_sign: Vec<(String, bool)>,
    /// Whether tokens consumed before migration 0006 are still kept (that table only
    /// shrinks, by pruning).
    tokens_before_0006: bool,
}

impl BatchFacts {
    pub(super) fn read(tx: &Connection) -> Result<BatchFacts, StoreError> {
        Ok(BatchFacts {
            key_may_sign: Vec::new(),
            tokens_before_0006: tokens_before_0006(tx)?,
        })
    }

    /// A key that is retired or revoked never signs again, even from a server whose
    /// keyring is stale; `retiring` still may until that server reloads (migration 0007).
    /// A host key never signs a user certificate.
    fn key_may_sign(&mut self, tx: &Connection, ca_key_id: &str) -> Result<bool, StoreError> {
        if let Some((_, may)) = self.key_may_sign.iter().find(|(id, _)| id == ca_key_id) {
            return Ok(*may);
        }
        let state = tx
            .prepare_cached(SQL_CA_KEY_STATE)?
            .query_row([ca_key_id], |row| row.get::<_, String>(0))
            .optional()?;
        let may = state
            .as_deref()
            .and_then(KeyState::parse)
            .is_some_and(KeyState::may_sign);
        self.key_may_sign.push((ca_key_id.to_owned(), may));
        Ok(may)
    }
}

fn tokens_before_0006(tx: &Connection) -> Result<bool, StoreError> {
    Ok(tx.prepare_cached(SQL_ANY_USED_BEFORE_0006)?.exists([])?)
}

/// Whether task `task_id` is active and unexpired at `now_unix`.
pub(super) fn task_is_live(
    tx: &Connection,
    task_id: &str,
    now_unix: i64,
) -> Result<bool, StoreError> {
    let row = tx
        .prepare_cached(SQL_TASK_STATE)?
        .query_row([task_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()?;
    Ok(match row {
        Some((state, expires_at)) => {
            task_state(&state)? == TaskState::Active && expires_at > now_unix
        }
        None => false,
    })
}

/// Consume `token` inside `tx`: `TokenReused` if it was consumed before (nothing is
/// written then).
pub(super) fn consume_token(
    tx: &Connection,
    token: &TokenUse,
    tokens_before_0006: bool,
) -> Result<(), StoreError> {
    if tokens_before_0006
        && tx
            .prepare_cached(SQL_USED_BEFORE_0006)?
            .exists([&token.issuer, &token.token_hash])?
    {
        return Err(StoreError::TokenReused);
    }
    let consumed = tx.prepare_cached(SQL_CONSUME_TOKEN)?.execute(params![
        token.issuer,
        token.token_hash,
        token.expires_at,
    ])?;
    if consumed == 0 {
        return Err(StoreError::TokenReused);
    }
    Ok(())
}

/// [`consume_token`] for a write on its own (it reads whether old tokens are kept).
pub(super) fn consume_token_alone(tx: &Connection, token: &TokenUse) -> Result<(), StoreError> {
    consume_token(tx, token, tokens_before_0006(tx)?)
}

/// Why `issuance` must not commit, if it must not: its CA key may no longer sign, its task
/// id or serial is taken, its task is no longer live, the certificate it is renewed from
/// (by proof of possession) is revoked, or its token was used already. The outer error
/// fails the whole batch.
pub(super) fn refusal(
    tx: &Connection,
    facts: &mut BatchFacts,
    issuance: &Issuance,
) -> Result<Option<StoreError>, StoreError> {
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
        // Another certificate for an existing task: the task must still be live when the
        // certificate commits, not only when the request was checked.
        None => {
            if !task_is_live(tx, &cert.task_id, cert.issued_at)? {
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
        .prepare_cached(super::host_certificates::SQL_ANY_SERIAL_EXISTS)?
        .exists([cert.serial])?
    {
        return Ok(Some(StoreError::Conflict(format!(
            "serial {} is taken",
            cert.serial
        ))));
    }
    if let Some(token) = &issuance.token_use {
        match consume_token(tx, token, facts.tokens_before_0006) {
            Ok(()) => {}
            Err(StoreError::TokenReused) => return Ok(Some(StoreError::TokenReused)),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// One checked issuance's task, certificate and audit rows, chained after `chain`'s head.
/// Any error here fails the whole batch.
pub(super) fn write(
    tx: &Connection,
    issuance: &Issuance,
    chain: &mut Chain,
) -> Result<(), StoreError> {
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
            task.state.as_str(),
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
    for entry in &issuance.audit {
        chain.append(tx, entry, issuance.at)?;
    }
    Ok(())
}

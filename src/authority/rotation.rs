//! Changing the CA keyring (SPEC §5): rotation, emergency revocation, automatic
//! retirement, the rotation schedule and re-encryption under a new passphrase.
//!
//! Each operation reads the stored keys, decides with a pure planning function (unit
//! tested below), and commits the state changes, any new key and its audit record in one
//! [`Store::change_keyring`] transaction whose guards ("key X is still `next`") make a
//! concurrent change by another `writ admin` or `writ serve` fail cleanly instead of
//! interleaving. Time and randomness are inputs.
//!
//! The rules that keep logins working:
//! - a key signs only after it has been published as `next` for at least
//!   `rotation_min_publish` (so every host has synced it), unless the operator forces it;
//! - a key that stopped signing stays trusted (`retiring`) until every certificate it
//!   signed has expired and at least `max_cert_ttl` has passed, then retires;
//! - there is always a `next` key, so the next rotation is safe too.
//!
//! Revocation is the exception on purpose: the key leaves trust at once, and if it was
//! the active key the `next` key signs from then on.

use std::time::Duration;

use rand_core::CryptoRngCore;
use serde::Serialize;
use time::OffsetDateTime;

use super::keyring::{
    CaKey, KeyKind, KeyState, KeyringError, audit_reason, check_passphrase, new_key_record,
    public_half, rewrap_private_key, rows_of,
};
use crate::audit::{AuditEntry, Outcome, event};
use crate::config::{CaConfig, KeyAlgorithm};
use crate::duration::secs;
use crate::store::{
    CaKeyRecord, KeyRewrap, KeyTransition, KeyringChange, RotationSchedule, Store, StoreError,
};

/// What rotation needs from the configuration, for one kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationSettings {
    /// The keyring changed: user or host CA keys.
    pub kind: KeyKind,
    /// Algorithm of new keys.
    pub algorithm: KeyAlgorithm,
    /// Seconds a `next` key must have been published before it may sign.
    pub min_publish_secs: i64,
    /// Longest certificate lifetime (seconds): a retiring key stays trusted at least this
    /// long after it stopped signing.
    pub max_cert_ttl_secs: i64,
}

impl RotationSettings {
    /// The user keyring's, from `[ca]`.
    pub fn from_config(ca: &CaConfig) -> RotationSettings {
        RotationSettings::for_kind(ca, KeyKind::User)
    }

    /// The keyring of `kind`'s, from `[ca]`: a host key stays trusted at least
    /// `max_host_cert_ttl` after it stopped signing.
    pub fn for_kind(ca: &CaConfig, kind: KeyKind) -> RotationSettings {
        RotationSettings {
            kind,
            algorithm: ca.key_algorithm,
            min_publish_secs: secs(ca.rotation_min_publish),
            max_cert_ttl_secs: secs(match kind {
                KeyKind::User => ca.max_cert_ttl,
                KeyKind::Host => ca.max_host_cert_ttl,
            }),
        }
    }
}

/// Who changes the keyring, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Where the change came from, e.g. `writ-admin` or `writ-serve`.
    pub issuer: String,
    /// Who, e.g. the operator's login or `scheduler`.
    pub subject: String,
}

/// Unix seconds as the time of an audit record (the store stamps no time itself).
fn time_of(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Actor {
    /// `writ serve`'s own maintenance (schedule, retirement).
    pub fn scheduler() -> Actor {
        Actor {
            issuer: "writ-serve".into(),
            subject: "scheduler".into(),
        }
    }

    fn entry(&self, name: &str, outcome: Outcome) -> AuditEntry {
        let mut entry = AuditEntry::new(name, outcome);
        entry.issuer = Some(self.issuer.clone());
        entry.subject = Some(self.subject.clone());
        entry
    }
}

/// Why a keyring change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// Loading, decrypting or generating a key failed (e.g. a wrong passphrase).
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// Another process changed the keyring at the same moment; nothing was written.
    #[error(
        "the CA keyring changed while this ran (another writ admin or writ serve); nothing was changed, run it again ({0})"
    )]
    Concurrent(String),
    /// The `next` key has not been published long enough for hosts to trust it.
    #[error(
        "next CA key {id} ({fingerprint}) was published {published}s ago, less than rotation_min_publish ({min}s): hosts may not trust it yet; try again in {wait}s, or use --force if failed logins on hosts that have not synced are acceptable"
    )]
    NextTooNew {
        /// Key id.
        id: String,
        /// Fingerprint.
        fingerprint: String,
        /// Seconds since it was published.
        published: i64,
        /// `rotation_min_publish` in seconds.
        min: i64,
        /// Seconds until it may sign.
        wait: i64,
    },
    /// No key matches what the operator named.
    #[error(
        "no CA key matches {0:?}; name a key by the id or fingerprint `writ admin ca list` shows"
    )]
    UnknownKey(String),
    /// The key is revoked already.
    #[error("CA key {0} is already revoked")]
    AlreadyRevoked(String),
    /// There is no active key to rotate away from.
    #[error(
        "no active CA key in the store (writ serve creates the first keys when it first starts)"
    )]
    NoActiveKey,
    /// Bad input (reason, schedule, new passphrase).
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for RotationError {
    fn from(e: StoreError) -> RotationError {
        match e {
            StoreError::Conflict(what) => RotationError::Concurrent(what),
            other => RotationError::Keyring(KeyringError::Store(other)),
        }
    }
}

impl RotationError {
    /// Whether the passphrase in use does not decrypt the stored keys.
    pub fn is_wrong_passphrase(&self) -> bool {
        matches!(
            self,
            RotationError::Keyring(KeyringError::WrongPassphrase { .. })
        )
    }
}

/// A key as reports show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRef {
    /// Key id.
    pub id: String,
    /// `SHA256:…`
    pub fingerprint: String,
}

impl KeyRef {
    fn of(key: &CaKey) -> KeyRef {
        KeyRef {
            id: key.id.clone(),
            fingerprint: key.fingerprint.clone(),
        }
    }

    fn of_record(key: &CaKeyRecord) -> KeyRef {
        KeyRef {
            id: key.id.clone(),
            fingerprint: key.fingerprint.clone(),
        }
    }
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.id, self.fingerprint)
    }
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotationReport {
    /// The key that signs from now on.
    pub activated: KeyRef,
    /// The key that stopped signing (trusted until its certificates expire).
    pub retiring: KeyRef,
    /// The new `next` key, published for the rotation after this one.
    pub next: KeyRef,
    /// Whether the `next` key was activated before `rotation_min_publish` had passed.
    pub forced: bool,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevocationReport {
    /// The revoked key.
    pub revoked: KeyRef,
    /// Its state before.
    pub was: String,
    /// The key that signs now, if the active key was revoked.
    pub activated: Option<KeyRef>,
    /// A new `next` key, if the revoked key was `active` or `next`.
    pub next: Option<KeyRef>,
}

// ---------------------------------------------------------------------------------------
// Planning: pure decisions over the stored keys.

/// What a rotation will change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPlan {
    /// The active key, to become `retiring`.
    pub retire: String,
    /// The `next` key to activate; `None` when there is none and a fresh key must be
    /// activated directly (only with `force`).
    pub promote: Option<String>,
    /// Whether the promoted key is younger than `rotation_min_publish`.
    pub forced: bool,
}

/// Why a rotation cannot happen now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationRefusal {
    /// No active key.
    NoActiveKey,
    /// No `next` key: one must be published first.
    NoNextKey,
    /// The `next` key is too recent.
    NextTooNew {
        /// The next key.
        id: String,
        /// Seconds since it was published.
        published: i64,
    },
}

/// Decide a rotation at `now`.
pub fn plan_rotation(
    keys: &[CaKey],
    now: i64,
    min_publish_secs: i64,
    force: bool,
) -> Result<RotationPlan, RotationRefusal> {
    let active = find(keys, KeyState::Active).ok_or(RotationRefusal::NoActiveKey)?;
    let Some(next) = find(keys, KeyState::Next) else {
        return if force {
            Ok(RotationPlan {
                retire: active.id.clone(),
                promote: None,
                forced: true,
            })
        } else {
            Err(RotationRefusal::NoNextKey)
        };
    };
    let published = now - next.created_at;
    let too_new = published < min_publish_secs;
    if too_new && !force {
        return Err(RotationRefusal::NextTooNew {
            id: next.id.clone(),
            published,
        });
    }
    Ok(RotationPlan {
        retire: active.id.clone(),
        promote: Some(next.id.clone()),
        forced: too_new,
    })
}

/// Retiring keys that may retire at `now`: they stopped signing at least `max_cert_ttl`
/// ago and no certificate they signed is valid after `now` (`last_valid_before` gives
/// each key's latest certificate expiry).
pub fn plan_retirements(
    keys: &[CaKey],
    last_valid_before: impl Fn(&str) -> Option<i64>,
    now: i64,
    max_cert_ttl_secs: i64,
) -> Vec<String> {
    keys.iter()
        .filter(|k| k.state == KeyState::Retiring)
        .filter(|k| {
            let stopped = k.deactivated_at.or(k.activated_at).unwrap_or(k.created_at);
            now >= stopped.saturating_add(max_cert_ttl_secs)
                && last_valid_before(&k.id).is_none_or(|last| last <= now)
        })
        .map(|k| k.id.clone())
        .collect()
}

/// Where a scheduled rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleStatus {
    /// No schedule.
    Unscheduled,
    /// The active key has not signed for the scheduled period yet.
    NotDue {
        /// When it will be due (Unix seconds).
        at: i64,
    },
    /// Due, but the `next` key is missing or too recent; it rotates once it is ready.
    WaitingForNext {
        /// When the next key will have been published long enough (if there is one).
        at: Option<i64>,
    },
    /// Rotate now.
    Due,
}

/// Whether the schedule asks for a rotation at `now`.
pub fn schedule_status(
    schedule: Option<RotationSchedule>,
    keys: &[CaKey],
    now: i64,
    min_publish_secs: i64,
) -> ScheduleStatus {
    let Some(schedule) = schedule else {
        return ScheduleStatus::Unscheduled;
    };
    let Some(active) = find(keys, KeyState::Active) else {
        return ScheduleStatus::Unscheduled;
    };
    let since = active.activated_at.unwrap_or(active.created_at);
    let due_at = since.saturating_add(schedule.every_seconds);
    if now < due_at {
        return ScheduleStatus::NotDue { at: due_at };
    }
    match find(keys, KeyState::Next) {
        Some(next) if now - next.created_at >= min_publish_secs => ScheduleStatus::Due,
        Some(next) => ScheduleStatus::WaitingForNext {
            at: Some(next.created_at.saturating_add(min_publish_secs)),
        },
        None => ScheduleStatus::WaitingForNext { at: None },
    }
}

/// The oldest key in `state` (there is at most one `active` and one `next`).
fn find(keys: &[CaKey], state: KeyState) -> Option<&CaKey> {
    keys.iter().find(|k| k.state == state)
}

/// The key an operator named by id or fingerprint (`SHA256:…`, with or without the
/// prefix).
pub fn find_key<'a>(keys: &'a [CaKey], name: &str) -> Option<&'a CaKey> {
    let name = name.trim();
    keys.iter().find(|k| {
        k.id == name || k.fingerprint == name || k.fingerprint.strip_prefix("SHA256:") == Some(name)
    })
}

// ---------------------------------------------------------------------------------------
// Operations on the store.

/// A new key of `settings`' kind and algorithm in `state`, encrypted with `passphrase`.
fn new_key(
    passphrase: &str,
    settings: &RotationSettings,
    state: KeyState,
    now: i64,
    rng: &mut impl CryptoRngCore,
) -> Result<CaKeyRecord, KeyringError> {
    new_key_record(
        passphrase,
        settings.algorithm,
        settings.kind,
        state,
        now,
        rng,
    )
}

/// The stored keys of `kind`, as rows and public halves.
async fn load(
    store: &dyn Store,
    kind: KeyKind,
) -> Result<(Vec<CaKeyRecord>, Vec<CaKey>), RotationError> {
    let rows = rows_of(store, kind).await?;
    let keys = rows
        .iter()
        .map(public_half)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rows, keys))
}

fn row<'a>(rows: &'a [CaKeyRecord], id: &str) -> Result<&'a CaKeyRecord, RotationError> {
    rows.iter()
        .find(|r| r.id == id)
        .ok_or_else(|| RotationError::Concurrent(format!("CA key {id} disappeared")))
}

/// A row whose private key proves the passphrase: the given one, else the active key.
fn prove_passphrase(
    rows: &[CaKeyRecord],
    id: Option<&str>,
    passphrase: &str,
) -> Result<(), RotationError> {
    let candidate = match id {
        Some(id) => Some(row(rows, id)?),
        None => rows.iter().find(|r| r.state == KeyState::Active),
    };
    match candidate {
        Some(r) => Ok(check_passphrase(r, passphrase)?),
        None => Err(RotationError::NoActiveKey),
    }
}

fn transition(id: &str, from: KeyState, to: KeyState, at: i64) -> KeyTransition {
    debug_assert!(from.can_become(to));
    KeyTransition {
        id: id.to_owned(),
        from,
        to,
        at,
        unless_valid_after: None,
    }
}

/// `writ admin ca rotate` (and the schedule): next → active, active → retiring, a new
/// next. Refused while the next key is younger than `rotation_min_publish` unless
/// `force`. With no `next` key, one is created (and published) first and the rotation
/// is refused, unless `force` activates a fresh key at once.
pub async fn rotate(
    store: &dyn Store,
    passphrase: &str,
    settings: &RotationSettings,
    now: i64,
    force: bool,
    actor: &Actor,
    rng: &mut (impl CryptoRngCore + Send),
) -> Result<RotationReport, RotationError> {
    let (rows, keys) = load(store, settings.kind).await?;
    let plan = match plan_rotation(&keys, now, settings.min_publish_secs, force) {
        Ok(plan) => plan,
        Err(RotationRefusal::NoActiveKey) => return Err(RotationError::NoActiveKey),
        Err(RotationRefusal::NoNextKey) => {
            let next = ensure_next(store, passphrase, settings, now, actor, rng).await?;
            let next = match next {
                Some(created) => created,
                None => return Err(RotationError::Concurrent("a next key appeared".into())),
            };
            return Err(refuse(store, actor, &next, 0, settings, now).await);
        }
        Err(RotationRefusal::NextTooNew { id, published }) => {
            let next = KeyRef::of(find_key(&keys, &id).ok_or(RotationError::NoActiveKey)?);
            return Err(refuse(store, actor, &next, published, settings, now).await);
        }
    };
    // The key that will sign must open with this passphrase, and new keys are encrypted
    // with it: proving it first keeps every stored key under one passphrase.
    prove_passphrase(&rows, plan.promote.as_deref(), passphrase)?;
    let retiring = KeyRef::of_record(row(&rows, &plan.retire)?);
    let mut change = KeyringChange {
        transitions: vec![transition(
            &plan.retire,
            KeyState::Active,
            KeyState::Retiring,
            now,
        )],
        ..KeyringChange::at(time_of(now))
    };
    let activated = match &plan.promote {
        Some(id) => {
            change
                .transitions
                .push(transition(id, KeyState::Next, KeyState::Active, now));
            KeyRef::of_record(row(&rows, id)?)
        }
        None => {
            let fresh = new_key(passphrase, settings, KeyState::Active, now, rng)?;
            let key = KeyRef::of_record(&fresh);
            change.new_keys.push(fresh);
            key
        }
    };
    let next = new_key(passphrase, settings, KeyState::Next, now, rng)?;
    let next_ref = KeyRef::of_record(&next);
    change.new_keys.push(next);
    let mut entry = actor.entry(event::CA_KEY_ROTATED, Outcome::Success);
    entry.ca_fingerprint = Some(activated.fingerprint.clone());
    entry.reason = Some(audit_reason(
        settings.kind,
        &format!(
            "{}key {activated} next -> active; key {retiring} active -> retiring; key {next_ref} created next",
            if plan.forced { "forced: " } else { "" }
        ),
    ));
    change.audit.push(entry);
    store.change_keyring(&change).await?;
    Ok(RotationReport {
        activated,
        retiring,
        next: next_ref,
        forced: plan.forced,
    })
}

/// Record a refused rotation and build its error.
async fn refuse(
    store: &dyn Store,
    actor: &Actor,
    next: &KeyRef,
    published: i64,
    settings: &RotationSettings,
    now: i64,
) -> RotationError {
    let error = RotationError::NextTooNew {
        id: next.id.clone(),
        fingerprint: next.fingerprint.clone(),
        published,
        min: settings.min_publish_secs,
        wait: settings.min_publish_secs - published,
    };
    let mut entry = actor.entry(event::CA_KEY_ROTATED, Outcome::Failure);
    entry.ca_fingerprint = Some(next.fingerprint.clone());
    entry.reason = Some(audit_reason(
        settings.kind,
        &format!(
            "next_too_new: key {next} published {published}s ago, rotation_min_publish {}s",
            settings.min_publish_secs
        ),
    ));
    if let Err(e) = store.append_audit(&entry, time_of(now)).await {
        return e.into();
    }
    error
}

/// `writ admin ca revoke KEY --reason …`: the key leaves trust at once (and enters the
/// KRL). If it was active, the `next` key signs from now on (or, with no `next`, a fresh
/// key); if it was active or next, a new `next` key is published.
#[allow(clippy::too_many_arguments)]
pub async fn revoke(
    store: &dyn Store,
    passphrase: &str,
    settings: &RotationSettings,
    name: &str,
    reason: &str,
    now: i64,
    actor: &Actor,
    rng: &mut (impl CryptoRngCore + Send),
) -> Result<RevocationReport, RotationError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(RotationError::Invalid(
            "give a --reason for the revocation (it goes into the audit log)".into(),
        ));
    }
    let (rows, keys) = load(store, settings.kind).await?;
    let key = find_key(&keys, name).ok_or_else(|| RotationError::UnknownKey(name.to_owned()))?;
    if key.state == KeyState::Revoked {
        return Err(RotationError::AlreadyRevoked(key.id.clone()));
    }
    let revoked = KeyRef::of(key);
    let mut change = KeyringChange {
        transitions: vec![transition(&key.id, key.state, KeyState::Revoked, now)],
        ..KeyringChange::at(time_of(now))
    };
    let mut activated = None;
    let mut next = None;
    if matches!(key.state, KeyState::Active | KeyState::Next) {
        let waiting = find(&keys, KeyState::Next).filter(|n| n.id != key.id);
        // New keys must be encrypted under the stored keys' passphrase.
        let proof = waiting
            .map(|n| n.id.as_str())
            .or((key.state == KeyState::Next).then_some(key.id.as_str()));
        match proof {
            Some(id) => prove_passphrase(&rows, Some(id), passphrase)?,
            None => prove_passphrase(&rows, None, passphrase)?,
        }
        if key.state == KeyState::Active {
            match waiting {
                Some(n) => {
                    change.transitions.push(transition(
                        &n.id,
                        KeyState::Next,
                        KeyState::Active,
                        now,
                    ));
                    activated = Some(KeyRef::of(n));
                }
                None => {
                    let fresh = new_key(passphrase, settings, KeyState::Active, now, rng)?;
                    activated = Some(KeyRef::of_record(&fresh));
                    change.new_keys.push(fresh);
                }
            }
        }
        let fresh = new_key(passphrase, settings, KeyState::Next, now, rng)?;
        next = Some(KeyRef::of_record(&fresh));
        change.new_keys.push(fresh);
    }
    let mut entry = actor.entry(event::CA_KEY_REVOKED, Outcome::Success);
    entry.ca_fingerprint = Some(revoked.fingerprint.clone());
    let mut detail = format!("{reason}; key {revoked} {} -> revoked", key.state);
    if let Some(a) = &activated {
        detail.push_str(&format!("; key {a} now active"));
    }
    if let Some(n) = &next {
        detail.push_str(&format!("; key {n} created next"));
    }
    entry.reason = Some(audit_reason(settings.kind, &detail));
    change.audit.push(entry);
    store.change_keyring(&change).await?;
    Ok(RevocationReport {
        revoked,
        was: key.state.as_str().to_owned(),
        activated,
        next,
    })
}

/// Retire every retiring key whose certificates have all expired at `now` (and that
/// stopped signing at least `max_cert_ttl` ago). Returns the retired keys.
pub async fn retire_expired(
    store: &dyn Store,
    settings: &RotationSettings,
    now: i64,
    actor: &Actor,
) -> Result<Vec<KeyRef>, RotationError> {
    let (_, keys) = load(store, settings.kind).await?;
    if !keys.iter().any(|k| k.state == KeyState::Retiring) {
        return Ok(Vec::new());
    }
    let usage = store.ca_key_usage(now).await?;
    let last = |id: &str| {
        usage
            .iter()
            .find(|u| u.key_id == id)
            .and_then(|u| u.last_valid_before)
    };
    let mut retired = Vec::new();
    for id in plan_retirements(&keys, last, now, settings.max_cert_ttl_secs) {
        let Some(key) = find_key(&keys, &id) else {
            continue;
        };
        let mut t = transition(&id, KeyState::Retiring, KeyState::Retired, now);
        // Checked again inside the transaction, against certificates recorded since.
        t.unless_valid_after = Some(now);
        let mut entry = actor.entry(event::CA_KEY_RETIRED, Outcome::Success);
        entry.ca_fingerprint = Some(key.fingerprint.clone());
        entry.reason = Some(audit_reason(
            settings.kind,
            &format!(
                "key {} retiring -> retired: every certificate it signed has expired",
                KeyRef::of(key)
            ),
        ));
        let change = KeyringChange {
            transitions: vec![t],
            audit: vec![entry],
            ..KeyringChange::at(time_of(now))
        };
        match store.change_keyring(&change).await {
            Ok(()) => retired.push(KeyRef::of(key)),
            // A certificate appeared, or someone else retired or revoked it first.
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(retired)
}

/// Publish a `next` key if there is none. Returns it if one was created.
pub async fn ensure_next(
    store: &dyn Store,
    passphrase: &str,
    settings: &RotationSettings,
    now: i64,
    actor: &Actor,
    rng: &mut (impl CryptoRngCore + Send),
) -> Result<Option<KeyRef>, RotationError> {
    let (rows, keys) = load(store, settings.kind).await?;
    if find(&keys, KeyState::Next).is_some() {
        return Ok(None);
    }
    prove_passphrase(&rows, None, passphrase)?;
    let next = new_key(passphrase, settings, KeyState::Next, now, rng)?;
    let key = KeyRef::of_record(&next);
    let mut entry = actor.entry(event::CA_KEY_CREATED, Outcome::Success);
    entry.ca_fingerprint = Some(key.fingerprint.clone());
    entry.reason = Some(audit_reason(
        settings.kind,
        &format!("CA key {key} created next"),
    ));
    let change = KeyringChange {
        new_keys: vec![next],
        audit: vec![entry],
        ..KeyringChange::at(time_of(now))
    };
    match store.change_keyring(&change).await {
        Ok(()) => Ok(Some(key)),
        // Another process published one at the same moment (one `next` at most).
        Err(StoreError::Conflict(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Rotate if the schedule says so and the `next` key is ready. The schedule is the user
/// keyring's: host CA keys rotate only when an operator says so (`writ admin ca rotate
/// --kind host`), since a host keeps its certificate for days.
pub async fn rotate_if_due(
    store: &dyn Store,
    passphrase: &str,
    settings: &RotationSettings,
    now: i64,
    rng: &mut (impl CryptoRngCore + Send),
) -> Result<Option<RotationReport>, RotationError> {
    if settings.kind != KeyKind::User {
        return Ok(None);
    }
    let schedule = store.rotation_schedule().await?;
    if schedule.is_none() {
        return Ok(None);
    }
    let (_, keys) = load(store, settings.kind).await?;
    if schedule_status(schedule, &keys, now, settings.min_publish_secs) != ScheduleStatus::Due {
        return Ok(None);
    }
    match rotate(
        store,
        passphrase,
        settings,
        now,
        false,
        &Actor::scheduler(),
        rng,
    )
    .await
    {
        Ok(report) => Ok(Some(report)),
        // Another replica rotated first.
        Err(RotationError::Concurrent(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Shortest accepted rotation period.
pub const MIN_SCHEDULE: Duration = Duration::from_secs(1);

/// `writ admin ca schedule --every PERIOD` (or `--off` with `None`).
pub async fn set_schedule(
    store: &dyn Store,
    every: Option<Duration>,
    now: i64,
    actor: &Actor,
) -> Result<Option<RotationSchedule>, RotationError> {
    let schedule = match every {
        Some(every) if every < MIN_SCHEDULE => {
            return Err(RotationError::Invalid(
                "the rotation period must be at least 1s".into(),
            ));
        }
        Some(every) => Some(RotationSchedule {
            every_seconds: secs(every),
            set_at: now,
        }),
        None => None,
    };
    let mut entry = actor.entry(event::CA_KEY_SCHEDULED, Outcome::Success);
    let what = match every {
        Some(every) => format!(
            "rotate every {} ({}s)",
            crate::duration::format(every),
            every.as_secs()
        ),
        None => "automatic rotation off".into(),
    };
    entry.reason = Some(audit_reason(KeyKind::User, &what));
    store
        .set_rotation_schedule(schedule, &entry, time_of(now))
        .await?;
    Ok(schedule)
}

/// `writ admin ca rewrap`: re-encrypt every stored private key from `old` to `new`
/// passphrase in one transaction. Returns how many keys were re-encrypted.
pub async fn rewrap(
    store: &dyn Store,
    old: &str,
    new: &str,
    actor: &Actor,
    now: i64,
    rng: &mut (impl CryptoRngCore + Send),
) -> Result<usize, RotationError> {
    if new.is_empty() {
        return Err(RotationError::Invalid("the new passphrase is empty".into()));
    }
    if new == old {
        return Err(RotationError::Invalid(
            "the new passphrase is the current one".into(),
        ));
    }
    // Every kind: all keys are encrypted under the one CA passphrase.
    let rows = store.ca_keys().await?;
    let mut rewraps = Vec::new();
    for row in rows.iter().filter(|r| !r.private_key.is_empty()) {
        rewraps.push(KeyRewrap {
            id: row.id.clone(),
            old: row.private_key.clone(),
            new: rewrap_private_key(row, old, new, rng)?,
        });
    }
    let mut entry = actor.entry(event::CA_KEY_REWRAPPED, Outcome::Success);
    entry.reason = Some(format!(
        "{} CA private keys re-encrypted with a new passphrase: {}",
        rewraps.len(),
        rewraps
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let count = rewraps.len();
    store
        .change_keyring(&KeyringChange {
            rewraps,
            audit: vec![entry],
            ..KeyringChange::at(time_of(now))
        })
        .await?;
    Ok(count)
}

/// Record that the public keys were exported.
pub async fn record_export(
    store: &dyn Store,
    keys: &[KeyRef],
    actor: &Actor,
    now: i64,
) -> Result<(), RotationError> {
    let mut entry = actor.entry(event::CA_KEY_EXPORTED, Outcome::Success);
    entry.reason = Some(format!(
        "public keys exported: {}",
        keys.iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(store.append_audit(&entry, time_of(now)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::{Algorithm, PrivateKey};

    fn key(id: &str, state: KeyState, created_at: i64) -> CaKey {
        let private = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).expect("key");
        let public_key = private.public_key().clone();
        CaKey {
            id: id.into(),
            kind: KeyKind::User,
            state,
            algorithm: "ssh-ed25519".into(),
            fingerprint: public_key.fingerprint(Default::default()).to_string(),
            public_key,
            created_at,
            activated_at: (state == KeyState::Active).then_some(created_at),
            deactivated_at: None,
            retired_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn rotation_waits_until_the_next_key_is_published_long_enough() {
        let keys = [key("a", KeyState::Active, 0), key("n", KeyState::Next, 100)];
        assert_eq!(
            plan_rotation(&keys, 150, 60, false),
            Err(RotationRefusal::NextTooNew {
                id: "n".into(),
                published: 50
            })
        );
        let plan = RotationPlan {
            retire: "a".into(),
            promote: Some("n".into()),
            forced: false,
        };
        assert_eq!(plan_rotation(&keys, 160, 60, false), Ok(plan.clone()));
        assert_eq!(
            plan_rotation(&keys, 150, 60, true),
            Ok(RotationPlan {
                forced: true,
                ..plan
            })
        );
    }

    #[test]
    fn rotation_without_a_next_key_publishes_one_first() {
        let keys = [
            key("a", KeyState::Active, 0),
            key("r", KeyState::Retiring, 0),
        ];
        assert_eq!(
            plan_rotation(&keys, 1000, 60, false),
            Err(RotationRefusal::NoNextKey)
        );
        assert_eq!(
            plan_rotation(&keys, 1000, 60, true),
            Ok(RotationPlan {
                retire: "a".into(),
                promote: None,
                forced: true
            })
        );
        assert_eq!(
            plan_rotation(&[key("n", KeyState::Next, 0)], 1000, 60, true),
            Err(RotationRefusal::NoActiveKey)
        );
    }

    #[test]
    fn retiring_keys_retire_once_their_certificates_expired() {
        let mut old = key("old", KeyState::Retiring, 0);
        old.deactivated_at = Some(1000);
        let keys = [old, key("a", KeyState::Active, 1000)];
        let none = |_: &str| None;
        // Not before max_cert_ttl has passed since it stopped signing, even without
        // certificates (a replica may still be signing with a stale keyring).
        assert!(plan_retirements(&keys, none, 1299, 300).is_empty());
        assert_eq!(plan_retirements(&keys, none, 1300, 300), vec!["old"]);
        // Not while a certificate it signed is valid.
        let last = |id: &str| (id == "old").then_some(1400);
        assert!(plan_retirements(&keys, last, 1399, 300).is_empty());
        assert_eq!(plan_retirements(&keys, last, 1400, 300), vec!["old"]);
    }

    #[test]
    fn the_schedule_rotates_when_due_and_the_next_key_is_ready() {
        let mut active = key("a", KeyState::Active, 0);
        active.activated_at = Some(1000);
        let keys = [active.clone(), key("n", KeyState::Next, 1000)];
        let every = Some(RotationSchedule {
            every_seconds: 500,
            set_at: 0,
        });
        assert_eq!(
            schedule_status(None, &keys, 5000, 60),
            ScheduleStatus::Unscheduled
        );
        assert_eq!(
            schedule_status(every, &keys, 1499, 60),
            ScheduleStatus::NotDue { at: 1500 }
        );
        assert_eq!(schedule_status(every, &keys, 1500, 60), ScheduleStatus::Due);
        let fresh_next = [active.clone(), key("n", KeyState::Next, 1480)];
        assert_eq!(
            schedule_status(every, &fresh_next, 1500, 60),
            ScheduleStatus::WaitingForNext { at: Some(1540) }
        );
        assert_eq!(
            schedule_status(every, &[active], 1500, 60),
            ScheduleStatus::WaitingForNext { at: None }
        );
    }

    #[test]
    fn keys_are_named_by_id_or_fingerprint() {
        let keys = [key("a1", KeyState::Active, 0), key("n1", KeyState::Next, 0)];
        let fp = keys[1].fingerprint.clone();
        assert_eq!(find_key(&keys, "a1").map(|k| k.id.as_str()), Some("a1"));
        assert_eq!(find_key(&keys, &fp).map(|k| k.id.as_str()), Some("n1"));
        let bare = fp.strip_prefix("SHA256:").expect("prefix");
        assert_eq!(find_key(&keys, bare).map(|k| k.id.as_str()), Some("n1"));
        assert!(find_key(&keys, "zz").is_none());
    }
}

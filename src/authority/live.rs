//! The running CA's keyring of one kind (`writ serve` runs one for user and one for host
//! CA keys): the current [`Keyring`] snapshot behind a short read lock,
//! swapped for a new one when the stored keys change — after this server's own
//! maintenance, or within one [`MAINTENANCE_INTERVAL`] of a change made by `writ admin`
//! or another replica — without a restart.
//!
//! The hot path ([`LiveKeyring::current`]) is an `Arc` clone under an uncontended
//! `RwLock` read; callers take one snapshot per request, so a certificate's signer and
//! the key id recorded with it always agree.
//!
//! The CA passphrase stays in memory (zeroized on drop) to decrypt a newly active key
//! and to encrypt the keys this server creates. If it stops decrypting the stored keys
//! (`writ admin ca rewrap` ran), it is read again from its source (`passphrase_file` or
//! the environment) before giving up, and until then the server keeps signing with the
//! key it holds and creates no key.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand_core::OsRng;
use zeroize::Zeroizing;

use super::keyring::{Keyring, KeyringError, rows_of};
use super::rotation::{self, Actor, KeyRef, RotationError, RotationReport, RotationSettings};
use crate::store::Store;

/// How often `writ serve` reloads the keyring and runs retirement and the schedule.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(2);

/// Reads the CA passphrase again from wherever it came from.
pub type PassphraseSource = Box<dyn Fn() -> Result<Zeroizing<String>, String> + Send + Sync>;

/// What one maintenance round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Keys that retired.
    pub retired: Vec<KeyRef>,
    /// A `next` key that was published.
    pub published: Option<KeyRef>,
    /// A scheduled rotation.
    pub rotated: Option<RotationReport>,
    /// Whether a new snapshot was installed.
    pub reloaded: bool,
}

/// The keyring of a running CA.
pub struct LiveKeyring {
    current: RwLock<Arc<Keyring>>,
    /// Also serialises reloads and maintenance rounds.
    passphrase: tokio::sync::Mutex<Zeroizing<String>>,
    source: Option<PassphraseSource>,
    settings: RotationSettings,
}

impl std::fmt::Debug for LiveKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKeyring")
            .field("current", &self.current())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl LiveKeyring {
    /// Load the keyring of `settings.kind` (creating its first keys if the store has none
    /// of that kind).
    pub async fn open(
        store: &dyn Store,
        passphrase: Zeroizing<String>,
        source: Option<PassphraseSource>,
        settings: RotationSettings,
        now_unix: i64,
    ) -> Result<LiveKeyring, KeyringError> {
        let keyring = Keyring::load_or_init(
            store,
            &passphrase,
            settings.algorithm,
            settings.kind,
            now_unix,
            &mut OsRng,
        )
        .await?;
        Ok(LiveKeyring::new(keyring, passphrase, source, settings))
    }

    /// Wrap a loaded keyring.
    pub fn new(
        keyring: Keyring,
        passphrase: Zeroizing<String>,
        source: Option<PassphraseSource>,
        settings: RotationSettings,
    ) -> LiveKeyring {
        LiveKeyring {
            current: RwLock::new(Arc::new(keyring)),
            passphrase: tokio::sync::Mutex::new(passphrase),
            source,
            settings,
        }
    }

    /// The current snapshot. Take it once per request.
    pub fn current(&self) -> Arc<Keyring> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&guard)
    }

    /// Rotation settings from the configuration.
    pub fn settings(&self) -> &RotationSettings {
        &self.settings
    }

    fn install(&self, keyring: Keyring) {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(keyring);
    }

    /// Read the passphrase from its source again; true if it changed.
    fn refresh_passphrase(&self, passphrase: &mut Zeroizing<String>) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        match source() {
            Ok(fresh) if *fresh != **passphrase => {
                tracing::info!("CA passphrase re-read from its source");
                *passphrase = fresh;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::error!(error = %e, "cannot re-read the CA passphrase");
                false
            }
        }
    }

    /// Install a new snapshot if the stored keys changed. Returns whether it did.
    pub async fn reload(&self, store: &dyn Store) -> Result<bool, KeyringError> {
        let mut passphrase = self.passphrase.lock().await;
        self.reload_locked(store, &mut passphrase).await
    }

    async fn reload_locked(
        &self,
        store: &dyn Store,
        passphrase: &mut Zeroizing<String>,
    ) -> Result<bool, KeyringError> {
        let kind = self.settings.kind;
        let rows = rows_of(store, kind).await?;
        let current = self.current();
        if rows == current.rows() {
            return Ok(false);
        }
        let built = match Keyring::from_records_reusing(kind, &rows, passphrase, Some(&current)) {
            Err(KeyringError::WrongPassphrase { .. }) if self.refresh_passphrase(passphrase) => {
                Keyring::from_records_reusing(kind, &rows, passphrase, Some(&current))
            }
            other => other,
        }?;
        if built.active_id() != current.active_id() {
            tracing::info!(
                kind = %kind,
                active = built.active_id(),
                ca_fingerprint = built.signer().fingerprint(),
                "CA keyring reloaded: a new key signs"
            );
        } else {
            tracing::info!(kind = %kind, "CA keyring reloaded");
        }
        self.install(built);
        Ok(true)
    }

    /// One maintenance round at `now`: if `leading` (this replica holds the background-work
    /// lease, [`crate::server::leader`]), retire keys whose certificates have all expired,
    /// publish a `next` key if there is none and rotate if the schedule says so; then, on
    /// every replica, reload.
    /// Failures are logged (once, here) and reported in the result's absence of effects;
    /// the current snapshot stays in use.
    pub async fn maintain(&self, store: &dyn Store, now_unix: i64, leading: bool) -> Maintenance {
        let mut passphrase = self.passphrase.lock().await;
        let mut done = Maintenance::default();
        if !leading {
            // Another replica retires, publishes and rotates; this one follows.
            self.reload_after_maintenance(store, &mut passphrase, &mut done)
                .await;
            return done;
        }
        let actor = Actor::scheduler();
        match rotation::retire_expired(store, &self.settings, now_unix, &actor).await {
            Ok(retired) => {
                for key in &retired {
                    tracing::info!(key = %key, "CA key retired: every certificate it signed has expired");
                }
                done.retired = retired;
            }
            Err(e) => tracing::error!(error = %e, "CA key retirement failed"),
        }
        let mut published = rotation::ensure_next(
            store,
            &passphrase,
            &self.settings,
            now_unix,
            &actor,
            &mut OsRng,
        )
        .await;
        if matches!(&published, Err(e) if e.is_wrong_passphrase())
            && self.refresh_passphrase(&mut passphrase)
        {
            published = rotation::ensure_next(
                store,
                &passphrase,
                &self.settings,
                now_unix,
                &actor,
                &mut OsRng,
            )
            .await;
        }
        match published {
            Ok(Some(key)) => {
                tracing::info!(key = %key, "next CA key published");
                done.published = Some(key);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot publish a next CA key"),
        }
        let mut rotated =
            rotation::rotate_if_due(store, &passphrase, &self.settings, now_unix, &mut OsRng).await;
        if matches!(&rotated, Err(e) if e.is_wrong_passphrase())
            && self.refresh_passphrase(&mut passphrase)
        {
            rotated =
                rotation::rotate_if_due(store, &passphrase, &self.settings, now_unix, &mut OsRng)
                    .await;
        }
        match rotated {
            Ok(Some(report)) => {
                tracing::info!(
                    activated = %report.activated,
                    retiring = %report.retiring,
                    next = %report.next,
                    "scheduled CA key rotation"
                );
                done.rotated = Some(report);
            }
            Ok(None) => {}
            Err(e) => log_rotation_error(&e),
        }
        self.reload_after_maintenance(store, &mut passphrase, &mut done)
            .await;
        done
    }

    async fn reload_after_maintenance(
        &self,
        store: &dyn Store,
        passphrase: &mut Zeroizing<String>,
        done: &mut Maintenance,
    ) {
        match self.reload_locked(store, passphrase).await {
            Ok(reloaded) => done.reloaded = reloaded,
            Err(e) => tracing::error!(
                error = %e,
                "cannot reload the CA keyring; still signing with the key loaded before"
            ),
        }
    }
}

fn log_rotation_error(e: &RotationError) {
    tracing::error!(error = %e, "scheduled CA key rotation failed");
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::KeyAlgorithm;
    use crate::store::sqlite::SqliteStore;

    const SETTINGS: RotationSettings = RotationSettings {
        kind: crate::store::KeyKind::User,
        algorithm: KeyAlgorithm::Ed25519,
        min_publish_secs: 600,
        max_cert_ttl_secs: 300,
    };

    #[tokio::test]
    async fn maintenance_rotates_on_schedule_retires_and_follows_a_rewrap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path().join("writ.db").to_str().expect("path"))
            .await
            .expect("store");
        let source_pass = Arc::new(Mutex::new("first".to_owned()));
        let source: PassphraseSource = {
            let pass = Arc::clone(&source_pass);
            Box::new(move || Ok(Zeroizing::new(pass.lock().expect("lock").clone())))
        };
        let t0 = 1_000_000;
        let live = LiveKeyring::open(
            &store,
            Zeroizing::new("first".into()),
            Some(source),
            SETTINGS,
            t0,
        )
        .await
        .expect("open");
        let first = live.current();
        let next = first
            .key_in(crate::authority::KeyState::Next)
            .expect("next")
            .id
            .clone();
        assert_eq!(
            live.maintain(&store, t0 + 1, true).await,
            Maintenance::default()
        );

        // Scheduled every 60 s: due at t0 + 60, but the next key must be published 600 s.
        rotation::set_schedule(
            &store,
            Some(Duration::from_secs(60)),
            t0,
            &Actor::scheduler(),
        )
        .await
        .expect("schedule");
        assert_eq!(
            live.maintain(&store, t0 + 100, true).await,
            Maintenance::default()
        );
        // Due, but another replica holds the lease: this one only follows.
        assert_eq!(
            live.maintain(&store, t0 + 600, false).await,
            Maintenance::default()
        );
        assert_eq!(live.current().active_id(), first.active_id());
        let done = live.maintain(&store, t0 + 600, true).await;
        let rotated = done.rotated.expect("rotated");
        assert!(done.reloaded);
        assert_eq!(rotated.activated.id, next);
        assert_eq!(rotated.retiring.id, first.active_id());
        assert_eq!(live.current().active_id(), next);
        assert_eq!(live.current().trusted_keys().count(), 3);

        // The retiring key retires max_cert_ttl after it stopped signing.
        assert!(
            live.maintain(&store, t0 + 899, true)
                .await
                .retired
                .is_empty()
        );
        let done = live.maintain(&store, t0 + 900, true).await;
        assert_eq!(done.retired.len(), 1);
        assert_eq!(done.retired[0].id, first.active_id());
        assert!(
            live.current()
                .key(first.active_id())
                .is_some_and(|k| !k.state.is_trusted())
        );
        rotation::set_schedule(&store, None, t0, &Actor::scheduler())
            .await
            .expect("unschedule");

        // Rewrapped under the server, then rotated by an operator: the server re-reads
        // the passphrase to decrypt the newly active key.
        rotation::rewrap(
            &store,
            "first",
            "second",
            &Actor::scheduler(),
            0,
            &mut OsRng,
        )
        .await
        .expect("rewrap");
        let before = live.current().signer();
        assert!(
            live.reload(&store)
                .await
                .expect("reload without decrypting")
        );
        assert!(Arc::ptr_eq(&before, &live.current().signer()));
        *source_pass.lock().expect("lock") = "second".into();
        let report = rotation::rotate(
            &store,
            "second",
            &SETTINGS,
            t0 + 2000,
            false,
            &Actor::scheduler(),
            &mut OsRng,
        )
        .await
        .expect("rotate");
        assert!(live.reload(&store).await.expect("reload"));
        assert_eq!(live.current().active_id(), report.activated.id);
        assert_eq!(
            live.current().signer().fingerprint(),
            report.activated.fingerprint
        );
    }
}

//! The CA keyring: CA keys with their states (SPEC §5), encrypted at rest with the CA
//! passphrase in the OpenSSH private-key format (bcrypt-pbkdf + aes256-ctr, the format
//! `ssh-keygen` itself writes, so an operator can inspect a key with standard tools).
//!
//! A [`Keyring`] is an immutable snapshot of the stored keys: the decrypted signer of the
//! one `active` key, and every key's public half. [`crate::authority::live`] swaps
//! snapshots when the stored keys change; [`crate::authority::rotation`] changes them.
//!
//! ```text
//!   next ──rotate──▶ active ──rotate──▶ retiring ──(its certificates expired)──▶ retired
//!     │                │                    │                                      │
//!     └────────────────┴──── revoke ────────┴──────────────────────────────────────┴──▶ revoked
//! ```
//!
//! There is one keyring per [`KeyKind`]: user CA keys sign user certificates, host CA
//! keys sign host certificates, and each kind has its own `active` and `next` key (the
//! store enforces one of each per kind). A [`Keyring`] holds the keys of one kind only.
//!
//! On first start the keyring creates an `active` key *and* a `next` key, so hosts learn
//! the key of the first rotation from their very first sync. Only the active key is ever
//! decrypted; a retired or revoked key's private half is erased from the store. Private
//! key material never leaves this module and [`super::signer`]: `Debug` shows ids and
//! fingerprints only.

use std::sync::Arc;

use rand_core::CryptoRngCore;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::signer::{Signer, signer_for};
use crate::audit::{self, AuditEntry, Outcome};
use crate::config::KeyAlgorithm;
use crate::store::{CaKeyRecord, KeyringChange, Store, StoreError};
pub use crate::store::{KeyKind, KeyState};

/// A CA key's public half, state and history.
#[derive(Debug, Clone)]
pub struct CaKey {
    /// Key id.
    pub id: String,
    /// What it signs.
    pub kind: KeyKind,
    /// State.
    pub state: KeyState,
    /// SSH algorithm name, e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// Public key.
    pub public_key: PublicKey,
    /// `SHA256:…`
    pub fingerprint: String,
    /// Unix seconds; a `next` key is published from then on.
    pub created_at: i64,
    /// Unix seconds, when it started signing.
    pub activated_at: Option<i64>,
    /// Unix seconds, when it stopped signing.
    pub deactivated_at: Option<i64>,
    /// Unix seconds, when it retired.
    pub retired_at: Option<i64>,
    /// Unix seconds, when it was revoked.
    pub revoked_at: Option<i64>,
}

/// Why the keyring could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The passphrase does not decrypt a CA key.
    #[error(
        "the CA passphrase does not decrypt CA key {id} ({fingerprint}); check passphrase_file / WRIT_CA_PASSPHRASE"
    )]
    WrongPassphrase {
        /// Key id.
        id: String,
        /// Key fingerprint.
        fingerprint: String,
    },
    /// A stored key is malformed.
    #[error("CA key {id} is unreadable: {detail}")]
    Corrupt {
        /// Key id.
        id: String,
        /// What is wrong.
        detail: String,
    },
    /// The store has keys of this kind but none is active.
    #[error("no active {0} CA key in the store")]
    NoActiveKey(KeyKind),
    /// Key generation or encryption failed.
    #[error("CA key generation failed: {0}")]
    Generate(String),
}

/// The loaded keyring of one kind: the active signer and every key's public half.
pub struct Keyring {
    kind: KeyKind,
    active_id: String,
    signer: Arc<dyn Signer>,
    keys: Vec<CaKey>,
    /// The rows this snapshot was built from (private keys encrypted), to tell whether
    /// the store changed.
    rows: Vec<CaKeyRecord>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("kind", &self.kind)
            .field("active_id", &self.active_id)
            .field("keys", &self.keys)
            .finish()
    }
}

/// The stored keys of `kind`, oldest first.
pub async fn rows_of(store: &dyn Store, kind: KeyKind) -> Result<Vec<CaKeyRecord>, StoreError> {
    let mut rows = store.ca_keys().await?;
    rows.retain(|r| r.kind == kind);
    Ok(rows)
}

/// The reason of a `ca.key.*` audit record: the key kind first (`kind=user; …` or
/// `kind=host; …`), so every such record says which keyring it changed.
pub fn audit_reason(kind: KeyKind, text: &str) -> String {
    format!("kind={kind}; {text}")
}

impl Keyring {
    /// Load the keyring of `kind`, creating its first keys (one `active`, one `next`, of
    /// `algorithm`) if the store has none of that kind.
    pub async fn load_or_init(
        store: &dyn Store,
        passphrase: &str,
        algorithm: KeyAlgorithm,
        kind: KeyKind,
        now_unix: i64,
        rng: &mut (impl CryptoRngCore + Send),
    ) -> Result<Keyring, KeyringError> {
        let mut rows = rows_of(store, kind).await?;
        if rows.is_empty() {
            let active =
                new_key_record(passphrase, algorithm, kind, KeyState::Active, now_unix, rng)?;
            let next = new_key_record(passphrase, algorithm, kind, KeyState::Next, now_unix, rng)?;
            let created = |key: &CaKeyRecord, what: &str| {
                let mut entry = AuditEntry::new(audit::event::CA_KEY_CREATED, Outcome::Success);
                entry.subject = Some("writ serve (first start)".into());
                entry.ca_fingerprint = Some(key.fingerprint.clone());
                entry.reason = Some(audit_reason(
                    kind,
                    &format!("CA key {} created {what}", key.id),
                ));
                entry
            };
            let change = KeyringChange {
                audit: vec![created(&active, "active"), created(&next, "next")],
                new_keys: vec![active, next],
                ..KeyringChange::at(
                    time::OffsetDateTime::from_unix_timestamp(now_unix)
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                )
            };
            match store.change_keyring(&change).await {
                // Another process initialised the keyring first: use its keys.
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            rows = rows_of(store, kind).await?;
        }
        Keyring::from_records_reusing(kind, &rows, passphrase, None)
    }

    /// Build the user keyring from stored rows (keys of other kinds are left out),
    /// decrypting the active key.
    pub fn from_records(rows: &[CaKeyRecord], passphrase: &str) -> Result<Keyring, KeyringError> {
        Keyring::from_records_reusing(KeyKind::User, rows, passphrase, None)
    }

    /// Build the keyring of `kind` from stored rows (keys of other kinds are left out). If
    /// `previous` has the same active key, its signer is reused and nothing is decrypted
    /// (so a keyring rewrapped with a new passphrase reloads without it); otherwise the
    /// active key is decrypted.
    pub fn from_records_reusing(
        kind: KeyKind,
        rows: &[CaKeyRecord],
        passphrase: &str,
        previous: Option<&Keyring>,
    ) -> Result<Keyring, KeyringError> {
        let rows: Vec<CaKeyRecord> = rows.iter().filter(|r| r.kind == kind).cloned().collect();
        let mut keys = Vec::with_capacity(rows.len());
        let mut active = None;
        for row in &rows {
            let key = public_half(row)?;
            if key.state == KeyState::Active {
                active = Some((row, key.public_key.key_data().clone()));
            }
            keys.push(key);
        }
        let (row, public) = active.ok_or(KeyringError::NoActiveKey(kind))?;
        let signer = match previous {
            Some(prev) if prev.active_id == row.id && *prev.signer.public_key() == public => {
                Arc::clone(&prev.signer)
            }
            _ => decrypt_signer(row, passphrase)?,
        };
        Ok(Keyring {
            kind,
            active_id: row.id.clone(),
            signer,
            keys,
            rows,
        })
    }

    /// What its keys sign.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The signer of the active key.
    pub fn signer(&self) -> Arc<dyn Signer> {
        Arc::clone(&self.signer)
    }

    /// Id of the active key.
    pub fn active_id(&self) -> &str {
        &self.active_id
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> &[CaKey] {
        &self.keys
    }

    /// A key by id.
    pub fn key(&self, id: &str) -> Option<&CaKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The key in `state` (the newest, should there be several).
    pub fn key_in(&self, state: KeyState) -> Option<&CaKey> {
        self.keys.iter().rev().find(|k| k.state == state)
    }

    /// The stored rows (of its kind) this snapshot was built from.
    pub fn rows(&self) -> &[CaKeyRecord] {
        &self.rows
    }

    /// Keys hosts must trust now (`next`, `active`, `retiring`).
    pub fn trusted_keys(&self) -> impl Iterator<Item = &CaKey> {
        self.keys.iter().filter(|k| k.state.is_trusted())
    }
}

/// The public half and history of a stored key.
pub fn public_half(row: &CaKeyRecord) -> Result<CaKey, KeyringError> {
    let corrupt = |detail: String| KeyringError::Corrupt {
        id: row.id.clone(),
        detail,
    };
    let state = row.state;
    let public_key =
        PublicKey::from_openssh(&row.public_key).map_err(|e| corrupt(e.to_string()))?;
    Ok(CaKey {
        id: row.id.clone(),
        kind: row.kind,
        state,
        algorithm: row.algorithm.clone(),
        fingerprint: public_key.fingerprint(HashAlg::Sha256).to_string(),
        public_key,
        created_at: row.created_at,
        activated_at: row.activated_at,
        deactivated_at: row.deactivated_at,
        retired_at: row.retired_at,
        revoked_at: row.revoked_at,
    })
}

fn ssh_algorithm(algorithm: KeyAlgorithm) -> Algorithm {
    match algorithm {
        KeyAlgorithm::Ed25519 => Algorithm::Ed25519,
        KeyAlgorithm::EcdsaP256 => Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        },
    }
}

/// Generate a new CA key of `algorithm` and `kind` in `state`, encrypted with
/// `passphrase`. The cleartext key exists only in memory (zeroized on drop) and is never
/// written.
pub fn new_key_record(
    passphrase: &str,
    algorithm: KeyAlgorithm,
    kind: KeyKind,
    state: KeyState,
    now_unix: i64,
    rng: &mut impl CryptoRngCore,
) -> Result<CaKeyRecord, KeyringError> {
    let mut id_bytes = [0u8; 8];
    rng.fill_bytes(&mut id_bytes);
    let id = audit::hex(&id_bytes);
    let algorithm = ssh_algorithm(algorithm);
    let mut key = PrivateKey::random(rng, algorithm.clone())
        .map_err(|e| KeyringError::Generate(e.to_string()))?;
    key.set_comment(match kind {
        KeyKind::User => format!("writ-ca-{id}"),
        KeyKind::Host => format!("writ-host-ca-{id}"),
    });
    let public_key = key
        .public_key()
        .to_openssh()
        .map_err(|e| KeyringError::Generate(e.to_string()))?;
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let private_key = encrypt(&key, passphrase, rng)?;
    Ok(CaKeyRecord {
        id,
        kind,
        algorithm: algorithm.as_str().to_owned(),
        state,
        fingerprint,
        public_key,
        private_key: private_key.to_string(),
        created_at: now_unix,
        activated_at: (state == KeyState::Active).then_some(now_unix),
        retired_at: None,
        deactivated_at: None,
        revoked_at: None,
    })
}

/// `key` in the OpenSSH format, encrypted with `passphrase` (bcrypt-pbkdf, aes256-ctr).
fn encrypt(
    key: &PrivateKey,
    passphrase: &str,
    rng: &mut impl CryptoRngCore,
) -> Result<Zeroizing<String>, KeyringError> {
    key.encrypt(rng, passphrase)
        .and_then(|encrypted| encrypted.to_openssh(LineEnding::LF))
        .map_err(|e| KeyringError::Generate(e.to_string()))
}

/// Decrypt a stored key with `passphrase`. The result zeroizes its key material on drop.
fn decrypt(row: &CaKeyRecord, passphrase: &str) -> Result<PrivateKey, KeyringError> {
    let corrupt = |detail: String| KeyringError::Corrupt {
        id: row.id.clone(),
        detail,
    };
    if row.private_key.is_empty() {
        return Err(corrupt(format!(
            "its private key was erased when it became {}",
            row.state
        )));
    }
    let encrypted =
        PrivateKey::from_openssh(&row.private_key).map_err(|e| corrupt(e.to_string()))?;
    if !encrypted.is_encrypted() {
        return Err(corrupt(
            "private key is stored unencrypted; refusing to use it".into(),
        ));
    }
    encrypted
        .decrypt(passphrase)
        .map_err(|_| KeyringError::WrongPassphrase {
            id: row.id.clone(),
            fingerprint: row.fingerprint.clone(),
        })
}

/// The in-memory signer for a stored key.
pub fn decrypt_signer(
    row: &CaKeyRecord,
    passphrase: &str,
) -> Result<Arc<dyn Signer>, KeyringError> {
    let key = decrypt(row, passphrase)?;
    let signer = signer_for(&key).map_err(|e| KeyringError::Corrupt {
        id: row.id.clone(),
        detail: e.to_string(),
    })?;
    if signer.fingerprint() != row.fingerprint {
        return Err(KeyringError::Corrupt {
            id: row.id.clone(),
            detail: "private key does not match the stored fingerprint".into(),
        });
    }
    Ok(signer)
}

/// Fail with [`KeyringError::WrongPassphrase`] unless `passphrase` decrypts `row`.
pub fn check_passphrase(row: &CaKeyRecord, passphrase: &str) -> Result<(), KeyringError> {
    decrypt(row, passphrase).map(drop)
}

/// `row`'s private key re-encrypted from `old` to `new` passphrase.
pub fn rewrap_private_key(
    row: &CaKeyRecord,
    old: &str,
    new: &str,
    rng: &mut impl CryptoRngCore,
) -> Result<String, KeyringError> {
    let key = decrypt(row, old)?;
    Ok(encrypt(&key, new, rng)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn record(algorithm: KeyAlgorithm, state: KeyState) -> CaKeyRecord {
        new_key_record(
            "correct horse",
            algorithm,
            KeyKind::User,
            state,
            1,
            &mut OsRng,
        )
        .expect("key")
    }

    #[test]
    fn stored_keys_are_encrypted_and_need_the_passphrase() {
        let record = record(KeyAlgorithm::Ed25519, KeyState::Active);
        assert!(record.private_key.contains("BEGIN OPENSSH PRIVATE KEY"));
        let parsed = PrivateKey::from_openssh(&record.private_key).expect("parse");
        assert!(parsed.is_encrypted());
        let ring =
            Keyring::from_records(std::slice::from_ref(&record), "correct horse").expect("ring");
        assert_eq!(ring.signer().fingerprint(), record.fingerprint);
        let err = Keyring::from_records(&[record], "wrong").expect_err("wrong passphrase");
        assert!(matches!(err, KeyringError::WrongPassphrase { .. }));
    }

    #[test]
    fn ecdsa_p256_keys_sign_certificates_that_verify() {
        use crate::authority::{CertificateSpec, sign_certificate};
        let record = record(KeyAlgorithm::EcdsaP256, KeyState::Active);
        assert_eq!(record.algorithm, "ecdsa-sha2-nistp256");
        assert!(record.public_key.starts_with("ecdsa-sha2-nistp256 "));
        let ring =
            Keyring::from_records(std::slice::from_ref(&record), "correct horse").expect("ring");
        let user = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("user key");
        let spec = CertificateSpec {
            public_key: user.public_key().clone(),
            serial: 7,
            key_id: "test".into(),
            task_id: "0123456789abcdef0123456789abcdef".into(),
            logins: vec!["deploy".into()],
            hosts: vec!["*".into()],
            valid_after: 100,
            valid_before: 200,
            extensions: vec![],
            force_command: None,
            source_address: None,
            task_expires_at: Some(200),
        };
        let cert = sign_certificate(&spec, ring.signer().as_ref(), &mut OsRng).expect("sign");
        let ca = PublicKey::from_openssh(&record.public_key).expect("ca");
        cert.validate_at(150, &[ca.fingerprint(HashAlg::Sha256)])
            .expect("an ECDSA-signed certificate verifies");
    }

    #[test]
    fn the_signer_of_an_unchanged_active_key_is_reused() {
        let active = record(KeyAlgorithm::Ed25519, KeyState::Active);
        let ring =
            Keyring::from_records(std::slice::from_ref(&active), "correct horse").expect("ring");
        // Rewrapped with another passphrase: the reload must not need to decrypt it.
        let mut rewrapped = active.clone();
        rewrapped.private_key =
            rewrap_private_key(&active, "correct horse", "battery staple", &mut OsRng)
                .expect("rewrap");
        assert_ne!(rewrapped.private_key, active.private_key);
        let reloaded = Keyring::from_records_reusing(
            KeyKind::User,
            &[rewrapped.clone()],
            "stale",
            Some(&ring),
        )
        .expect("reused signer");
        assert!(Arc::ptr_eq(&reloaded.signer, &ring.signer));
        check_passphrase(&rewrapped, "battery staple").expect("new passphrase");
        assert!(check_passphrase(&rewrapped, "correct horse").is_err());
    }

    #[test]
    fn erased_keys_are_public_only() {
        let active = record(KeyAlgorithm::Ed25519, KeyState::Active);
        let mut retired = record(KeyAlgorithm::Ed25519, KeyState::Retired);
        retired.private_key.clear();
        let ring = Keyring::from_records(&[retired.clone(), active], "correct horse")
            .expect("a retired key needs no private half");
        assert_eq!(ring.trusted_keys().count(), 1);
        assert!(matches!(
            check_passphrase(&retired, "correct horse"),
            Err(KeyringError::Corrupt { .. })
        ));
    }

    #[test]
    fn key_states_only_move_forward() {
        use KeyState::*;
        let all = [Next, Active, Retiring, Retired, Revoked];
        let allowed: Vec<(KeyState, KeyState)> = all
            .iter()
            .flat_map(|&a| all.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| a.can_become(b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Next, Active),
                (Next, Revoked),
                (Active, Retiring),
                (Active, Revoked),
                (Retiring, Retired),
                (Retiring, Revoked),
                (Retired, Revoked),
            ]
        );
        for state in all {
            assert_eq!(KeyState::parse(state.as_str()), Some(state));
        }
        assert_eq!(
            all.iter().filter(|s| s.is_trusted()).collect::<Vec<_>>(),
            vec![&Next, &Active, &Retiring]
        );
    }
}

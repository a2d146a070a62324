//! The CA keyring: CA keys with their states (SPEC §5), encrypted at rest with the CA
//! passphrase in the OpenSSH private-key format (bcrypt-pbkdf + aes256-ctr, the format
//! `ssh-keygen` itself writes, so an operator can inspect a key with standard tools).
//!
//! On first start the keyring creates one ed25519 key and makes it `active`. Only the
//! active key is ever decrypted; the others are held as public keys for the trust bundle.

use std::sync::Arc;

use rand_core::{CryptoRngCore, RngCore};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::signer::{CaSigner, Signer};
use crate::audit::{self, AuditEntry, Outcome};
use crate::store::{CaKeyRecord, Store, StoreError};

/// Lifecycle state of a CA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published for trust, not yet signing.
    Next,
    /// Signs; exactly one.
    Active,
    /// No longer signs; trusted until its certificates expire.
    Retiring,
    /// No longer trusted.
    Retired,
    /// Emergency removal: untrusted and listed in the KRL.
    Revoked,
}

impl KeyState {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(text: &str) -> Option<KeyState> {
        Some(match text {
            "next" => KeyState::Next,
            "active" => KeyState::Active,
            "retiring" => KeyState::Retiring,
            "retired" => KeyState::Retired,
            "revoked" => KeyState::Revoked,
            _ => return None,
        })
    }

    /// Whether hosts must trust keys in this state.
    pub fn is_trusted(self) -> bool {
        matches!(self, KeyState::Next | KeyState::Active | KeyState::Retiring)
    }
}

/// A CA key's public half and state.
#[derive(Debug, Clone)]
pub struct CaKey {
    /// Key id.
    pub id: String,
    /// State.
    pub state: KeyState,
    /// Public key.
    pub public_key: PublicKey,
    /// `SHA256:…`
    pub fingerprint: String,
}

/// Why the keyring could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The passphrase does not decrypt the active key.
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
    /// The store has keys but none is active.
    #[error("no active CA key in the store")]
    NoActiveKey,
    /// Key generation or encryption failed.
    #[error("CA key generation failed: {0}")]
    Generate(String),
}

/// The loaded keyring: the active signer and every key's public half.
pub struct Keyring {
    active_id: String,
    signer: Arc<dyn Signer>,
    keys: Vec<CaKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("active_id", &self.active_id)
            .field("keys", &self.keys)
            .finish()
    }
}

impl Keyring {
    /// Load the keyring, creating the first (active) key if the store has none.
    pub async fn load_or_init(
        store: &dyn Store,
        passphrase: &str,
        now_unix: i64,
        rng: &mut (impl CryptoRngCore + Send),
    ) -> Result<Keyring, KeyringError> {
        let mut rows = store.ca_keys().await?;
        if rows.is_empty() {
            let record = new_key_record(passphrase, KeyState::Active, now_unix, rng)?;
            let mut entry = AuditEntry::new(audit::event::CA_KEY_CREATED, Outcome::Success);
            entry.ca_fingerprint = Some(record.fingerprint.clone());
            entry.reason = Some(format!("first CA key {} created active", record.id));
            match store.insert_ca_key(&record, &entry).await {
                // Another process initialised the keyring first: use its key.
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            rows = store.ca_keys().await?;
        }
        Keyring::from_records(&rows, passphrase)
    }

    /// Build the keyring from stored rows, decrypting the active key.
    pub fn from_records(rows: &[CaKeyRecord], passphrase: &str) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::with_capacity(rows.len());
        let mut active = None;
        for row in rows {
            let corrupt = |detail: String| KeyringError::Corrupt {
                id: row.id.clone(),
                detail,
            };
            let state = KeyState::parse(&row.state)
                .ok_or_else(|| corrupt(format!("state {:?}", row.state)))?;
            let public_key =
                PublicKey::from_openssh(&row.public_key).map_err(|e| corrupt(e.to_string()))?;
            if state == KeyState::Active {
                active = Some(row);
            }
            keys.push(CaKey {
                id: row.id.clone(),
                state,
                fingerprint: public_key.fingerprint(HashAlg::Sha256).to_string(),
                public_key,
            });
        }
        let row = active.ok_or(KeyringError::NoActiveKey)?;
        let signer = decrypt_signer(row, passphrase)?;
        Ok(Keyring {
            active_id: row.id.clone(),
            signer: Arc::new(signer),
            keys,
        })
    }

    /// The signer of the active key.
    pub fn signer(&self) -> Arc<dyn Signer> {
        Arc::clone(&self.signer)
    }

    /// Id of the active key.
    pub fn active_id(&self) -> &str {
        &self.active_id
    }

    /// Every key.
    pub fn keys(&self) -> &[CaKey] {
        &self.keys
    }

    /// Keys hosts must trust now (`next`, `active`, `retiring`).
    pub fn trusted_keys(&self) -> impl Iterator<Item = &CaKey> {
        self.keys.iter().filter(|k| k.state.is_trusted())
    }

    /// The trust bundle as `TrustedUserCAKeys` text: one OpenSSH public key per line.
    pub fn trusted_keys_text(&self) -> String {
        let mut text = String::new();
        for key in self.trusted_keys() {
            if let Ok(line) = key.public_key.to_openssh() {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    }
}

/// Generate a new ed25519 CA key, encrypted with `passphrase`.
pub fn new_key_record(
    passphrase: &str,
    state: KeyState,
    now_unix: i64,
    rng: &mut impl CryptoRngCore,
) -> Result<CaKeyRecord, KeyringError> {
    let mut id_bytes = [0u8; 8];
    rng.fill_bytes(&mut id_bytes);
    let id = audit::hex(&id_bytes);
    let mut key = PrivateKey::random(rng, Algorithm::Ed25519)
        .map_err(|e| KeyringError::Generate(e.to_string()))?;
    key.set_comment(format!("writ-ca-{id}"));
    let public_key = key
        .public_key()
        .to_openssh()
        .map_err(|e| KeyringError::Generate(e.to_string()))?;
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let encrypted = key
        .encrypt(rng, passphrase)
        .map_err(|e| KeyringError::Generate(e.to_string()))?;
    let private_key: Zeroizing<String> = encrypted
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyringError::Generate(e.to_string()))?;
    Ok(CaKeyRecord {
        id,
        algorithm: Algorithm::Ed25519.as_str().to_owned(),
        state: state.as_str().to_owned(),
        fingerprint,
        public_key,
        private_key: private_key.to_string(),
        created_at: now_unix,
        activated_at: (state == KeyState::Active).then_some(now_unix),
        retired_at: None,
    })
}

fn decrypt_signer(row: &CaKeyRecord, passphrase: &str) -> Result<CaSigner, KeyringError> {
    let corrupt = |detail: String| KeyringError::Corrupt {
        id: row.id.clone(),
        detail,
    };
    let encrypted =
        PrivateKey::from_openssh(&row.private_key).map_err(|e| corrupt(e.to_string()))?;
    if !encrypted.is_encrypted() {
        return Err(corrupt(
            "private key is stored unencrypted; refusing to use it".into(),
        ));
    }
    let key = encrypted
        .decrypt(passphrase)
        .map_err(|_| KeyringError::WrongPassphrase {
            id: row.id.clone(),
            fingerprint: row.fingerprint.clone(),
        })?;
    CaSigner::from_private_key(&key).map_err(|e| corrupt(e.to_string()))
}

/// A random, non-zero, 63-bit serial (fits a signed 64-bit database column).
pub fn random_serial(rng: &mut impl RngCore) -> u64 {
    loop {
        let serial = rng.next_u64() >> 1;
        if serial != 0 {
            return serial;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn stored_keys_are_encrypted_and_need_the_passphrase() {
        let record = new_key_record("correct horse", KeyState::Active, 1, &mut OsRng).expect("key");
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
    fn serials_are_non_zero_and_63_bit() {
        for _ in 0..1000 {
            let s = random_serial(&mut OsRng);
            assert!(s > 0 && s <= i64::MAX as u64);
        }
    }
}

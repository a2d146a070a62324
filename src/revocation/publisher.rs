//! The CA side of revocation: turns the store's revocation state into the signed feed
//! and the KRL that hosts fetch. Both list only what is still inside its validity window,
//! so their size is bounded by live certificates, not by history.

use ssh_key::PublicKey;

use super::feed::{self, Feed, RevokedSerial, RevokedTask, SignedFeed};
use super::krl::KrlBuilder;
use crate::authority::{KeyState, Keyring, sign_sshsig};
use crate::store::{Store, StoreError};

/// Why a revocation document could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed.
    #[error("signing the revocation feed failed: {0}")]
    Sign(String),
}

fn fingerprint_of(keyring: &Keyring, key_id: &str) -> Option<String> {
    keyring
        .keys()
        .iter()
        .find(|k| k.id == key_id)
        .map(|k| k.fingerprint.clone())
}

/// The signed revocation feed at `now_unix`.
pub async fn signed_feed(
    store: &dyn Store,
    keyring: &Keyring,
    now_unix: i64,
) -> Result<SignedFeed, PublishError> {
    let state = store.revocations(now_unix).await?;
    let feed = Feed {
        version: feed::VERSION,
        issued_at: now_unix,
        sequence: state.sequence,
        revoked_tasks: state
            .tasks
            .into_iter()
            .map(|(task_id, until)| RevokedTask { task_id, until })
            .collect(),
        revoked_serials: state
            .certificates
            .into_iter()
            .filter_map(|(serial, key_id, until)| {
                Some(RevokedSerial {
                    serial: serial.to_string(),
                    ca_fingerprint: fingerprint_of(keyring, &key_id)?,
                    until,
                })
            })
            .collect(),
    };
    let json = feed.to_json();
    let signature = sign_sshsig(keyring.signer().as_ref(), feed::NAMESPACE, json.as_bytes())
        .map_err(|e| PublishError::Sign(e.to_string()))?;
    Ok(SignedFeed {
        feed: json,
        signature,
    })
}

/// The KRL at `now_unix`: revoked serials per signing CA key, and revoked CA keys.
pub async fn krl(
    store: &dyn Store,
    keyring: &Keyring,
    now_unix: i64,
) -> Result<Vec<u8>, PublishError> {
    let state = store.revocations(now_unix).await?;
    let generated = u64::try_from(now_unix).unwrap_or(0);
    let mut builder = KrlBuilder::new(u64::try_from(state.sequence).unwrap_or(0), generated);
    builder.comment("writ");
    for key in keyring.keys() {
        let serials = state
            .certificates
            .iter()
            .filter(|(_, key_id, _)| *key_id == key.id)
            .filter_map(|(serial, _, _)| u64::try_from(*serial).ok());
        builder.revoke_serials(key.public_key.key_data(), serials);
        if key.state == KeyState::Revoked {
            builder.revoke_key(key.public_key.key_data());
        }
    }
    Ok(builder.encode())
}

/// Keys a host should trust when verifying a feed (for the CA's own tests and tools).
pub fn trusted_public_keys(keyring: &Keyring) -> Vec<PublicKey> {
    keyring
        .trusted_keys()
        .map(|k| k.public_key.clone())
        .collect()
}

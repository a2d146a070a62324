//! The CA side of revocation: turns the store's revocation state into the signed feed
//! and the KRL that hosts fetch. Both list only what is still inside its validity window
//! plus [`feed::retention_after_end`], so their size is bounded by live certificates, not
//! by history, and a host whose clock lags the CA's never sees an entry vanish while the
//! certificate is still valid by its own clock.
//!
//! One snapshot, three documents: a version-2 feed is built from one keyring snapshot
//! and one store read together with the trust bundle and the KRL of that same snapshot,
//! and names their digests ([`feed::Binding`]). The KRL is a function of the revocation
//! state, the keyring, and the `(sequence, issued_at)` it is published for, so
//! `GET /v1/krl?sequence=S&issued_at=T` rebuilds byte for byte the KRL that the feed
//! `S`/`T` names, on any replica, as long as no revocation happened in between (then the
//! digests differ and the host fetches again).

use std::time::Duration;

use super::bundle;
use super::feed::{self, Binding, Feed, RevokedSerial, RevokedTask, SignedFeed};
use super::krl::KrlBuilder;
use crate::authority::{KeyState, Keyring, sign_sshsig};
use crate::duration;
use crate::store::{Revocations, Store, StoreError};

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

/// The store's revocations that hosts still need at `now_unix`: everything whose end
/// (`valid_before`, task expiry) is later than `now_unix - retention`.
async fn revocations(
    store: &dyn Store,
    now_unix: i64,
    retention: Duration,
) -> Result<Revocations, StoreError> {
    store
        .revocations(now_unix.saturating_sub(duration::secs(retention)))
        .await
}

/// The trust bundle (`GET /v1/ca/trusted-keys`): every key hosts must trust now
/// (`next`, `active`, `retiring`), in [`bundle`] format.
pub fn trust_bundle(keyring: &Keyring) -> String {
    bundle::write(keyring.trusted_keys().map(|k| &k.public_key))
}

/// `known_hosts` lines for the host CA (`GET /v1/ca/known-hosts`): one `@cert-authority`
/// line naming `patterns` (comma-joined) for every host CA key clients must trust now
/// (`next`, `active`, `retiring`), and one `@revoked *` line for every revoked host CA
/// key, in keyring order.
pub fn known_hosts(host_keyring: &Keyring, patterns: &[String]) -> String {
    let patterns = patterns.join(",");
    let mut out = String::new();
    for key in host_keyring.keys() {
        let marker = match key.state {
            state if state.is_trusted() => format!("@cert-authority {patterns}"),
            KeyState::Revoked => "@revoked *".to_owned(),
            _ => continue,
        };
        let Ok(line) = key.public_key.to_openssh() else {
            continue;
        };
        out.push_str(&marker);
        out.push(' ');
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The signed revocation feed at `now_unix`, in format `version` ([`feed::VERSION`] with
/// its binding, or [`feed::VERSION_UNBOUND`] for hosts that predate it). `retention`:
/// how long entries outlive their end ([`feed::retention_after_end`]).
pub async fn signed_feed(
    store: &dyn Store,
    keyring: &Keyring,
    host_keyring: Option<&Keyring>,
    now_unix: i64,
    retention: Duration,
    version: u32,
) -> Result<SignedFeed, PublishError> {
    let state = revocations(store, now_unix, retention).await?;
    let binding = (version == feed::VERSION).then(|| {
        let krl = encode_krl(keyring, host_keyring, &state, state.sequence, now_unix);
        Binding::of(trust_bundle(keyring).as_bytes(), &krl)
    });
    let feed = Feed {
        version,
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
        binding,
    };
    let json = feed.to_json();
    let signature = sign_sshsig(keyring.signer().as_ref(), feed::NAMESPACE, json.as_bytes())
        .map_err(|e| PublishError::Sign(e.to_string()))?;
    Ok(SignedFeed {
        feed: json,
        signature,
    })
}

/// The KRL at `issued_at` (Unix seconds): revoked serials per signing CA key (user
/// certificates under their user CA key, host certificates under their host CA key: KRL
/// certificate sections are per CA key), and revoked CA keys of both kinds. Its KRL
/// version is `sequence` when given (the feed it goes with), else the store's current
/// sequence. One KRL serves sshd's `RevokedKeys` and clients' `RevokedHostKeys`.
pub async fn krl(
    store: &dyn Store,
    keyring: &Keyring,
    host_keyring: Option<&Keyring>,
    issued_at: i64,
    sequence: Option<i64>,
    retention: Duration,
) -> Result<Vec<u8>, PublishError> {
    let state = revocations(store, issued_at, retention).await?;
    let sequence = sequence.unwrap_or(state.sequence);
    Ok(encode_krl(
        keyring,
        host_keyring,
        &state,
        sequence,
        issued_at,
    ))
}

/// The KRL of one revocation state: a pure function of its arguments.
fn encode_krl(
    keyring: &Keyring,
    host_keyring: Option<&Keyring>,
    state: &Revocations,
    sequence: i64,
    issued_at: i64,
) -> Vec<u8> {
    let generated = u64::try_from(issued_at).unwrap_or(0);
    let mut builder = KrlBuilder::new(u64::try_from(sequence).unwrap_or(0), generated);
    builder.comment("writ");
    let host_keys = host_keyring.map(Keyring::keys).unwrap_or_default();
    for key in keyring.keys().iter().chain(host_keys) {
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
    builder.encode()
}

#[cfg(test)]
mod tests {
    use rand_core::OsRng;

    use super::*;
    use crate::audit::{AuditEntry, Outcome, event};
    use crate::config::KeyAlgorithm;
    use crate::store::contract;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{CertificateRecord, Issuance, TaskEnd, TaskState};

    /// The certificate's `valid_before` and the task's expiry (Unix seconds).
    const CERT_END: i64 = 1_000;
    const TASK_END: i64 = 10_000;
    const SERIAL: i64 = 4242;
    const TASK: &str = "0123456789abcdef0123456789abcdef";
    const OTHER_TASK: &str = "fedcba9876543210fedcba9876543210";

    /// The contract's issuance for a new task, under task id `task`.
    fn issuance(task: &str, serial: i64, key_id: &str) -> Issuance {
        let mut issuance = contract::issuance(key_id, serial, None, None);
        if let Some(new_task) = &mut issuance.new_task {
            new_task.id = task.into();
            new_task.restrictions = None;
            assert_eq!(new_task.expires_at, TASK_END);
        }
        issuance.certificate.task_id = task.into();
        assert_eq!(issuance.certificate.valid_before, CERT_END);
        issuance
    }

    /// A store holding one revoked certificate (valid until [`CERT_END`], its task still
    /// active) and one ended task (expiring at [`TASK_END`]), and its keyring.
    async fn world(dir: &std::path::Path) -> (SqliteStore, Keyring) {
        let store = SqliteStore::open(dir.join("writ.db").to_str().expect("path"))
            .await
            .expect("store");
        let keyring = Keyring::load_or_init(
            &store,
            "pass",
            KeyAlgorithm::Ed25519,
            crate::store::KeyKind::User,
            100,
            &mut OsRng,
        )
        .await
        .expect("keyring");
        let key_id = keyring.active_id().to_owned();
        store
            .record_issuance(issuance(TASK, SERIAL, &key_id))
            .await
            .expect("issue");
        store
            .record_issuance(issuance(OTHER_TASK, SERIAL + 1, &key_id))
            .await
            .expect("issue");
        let revoked = store
            .revoke_certificate(
                SERIAL,
                contract::at(500),
                Box::new(|certificates: &[CertificateRecord]| {
                    certificates
                        .iter()
                        .map(|_| AuditEntry::new(event::CERT_REVOKED, Outcome::Success))
                        .collect()
                }),
            )
            .await
            .expect("revoke");
        assert_eq!(revoked.len(), 1);
        let end = TaskEnd {
            task_id: OTHER_TASK.into(),
            state: TaskState::Revoked,
            reason: None,
            now: contract::at(500),
            token_use: None,
        };
        store
            .end_task(&end, Box::new(|_| Vec::new()))
            .await
            .expect("end task");
        (store, keyring)
    }

    /// What the feed and the KRL published at `now` say: (serial listed in the feed,
    /// serial in the KRL, task listed in the feed).
    async fn published(
        store: &SqliteStore,
        keyring: &Keyring,
        now: i64,
        retention: Duration,
    ) -> (bool, bool, bool) {
        let signed = signed_feed(store, keyring, None, now, retention, feed::VERSION)
            .await
            .expect("feed");
        let feed = feed::unverified(&signed).expect("feed json");
        let krl = krl(store, keyring, None, now, None, retention)
            .await
            .expect("krl");
        let serial = SERIAL.to_string();
        let krl_has = |serial: i64| krl.windows(8).any(|w| w == serial.to_be_bytes());
        (
            feed.revoked_serials.iter().any(|s| s.serial == serial),
            krl_has(SERIAL),
            feed.revoked_tasks.iter().any(|t| t.task_id == OTHER_TASK),
        )
    }

    #[tokio::test]
    async fn revocations_stay_published_for_the_clock_skew_after_they_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, keyring) = world(dir.path()).await;
        // `[ca] clock_skew` of 30 s is below what hosts accept (60 s): 60 s it is.
        let retention = feed::retention_after_end(Duration::from_secs(30));
        assert_eq!(retention, feed::HOST_CLOCK_SKEW);
        let skew = 60;

        // A host 59 s behind the CA still sees the certificate as valid at CA time
        // CERT_END + 59: the serial must still be listed, in the feed and in the KRL.
        for now in [CERT_END - 1, CERT_END, CERT_END + skew - 1] {
            assert_eq!(
                published(&store, &keyring, now, retention).await,
                (true, true, true),
                "at {now}"
            );
        }
        // From CERT_END + skew on, no host that accepts the feed sees it valid.
        assert_eq!(
            published(&store, &keyring, CERT_END + skew, retention).await,
            (false, false, true)
        );
        // The same for the ended task: kept until its expiry + skew.
        assert!(
            published(&store, &keyring, TASK_END + skew - 1, retention)
                .await
                .2
        );
        assert!(
            !published(&store, &keyring, TASK_END + skew, retention)
                .await
                .2
        );

        // A larger `[ca] clock_skew` keeps entries that much longer.
        let retention = feed::retention_after_end(Duration::from_secs(300));
        assert_eq!(
            published(&store, &keyring, CERT_END + 299, retention).await,
            (true, true, true)
        );
        assert_eq!(
            published(&store, &keyring, CERT_END + 300, retention).await,
            (false, false, true)
        );
    }

    #[tokio::test]
    async fn the_feed_binds_the_bundle_and_the_krl_of_its_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, keyring) = world(dir.path()).await;
        let retention = feed::HOST_CLOCK_SKEW;
        let signed = signed_feed(&store, &keyring, None, 900, retention, feed::VERSION)
            .await
            .expect("feed");
        let feed = feed::unverified(&signed).expect("feed json");
        let binding = feed.binding.expect("version 2 binds");
        assert_eq!(
            binding.trusted_keys_sha256,
            feed::sha256_hex(trust_bundle(&keyring).as_bytes())
        );
        // The KRL for the feed's (sequence, issued_at), built later, is the same bytes…
        let same = krl(
            &store,
            &keyring,
            None,
            feed.issued_at,
            Some(feed.sequence),
            retention,
        )
        .await
        .expect("krl");
        assert_eq!(feed::sha256_hex(&same), binding.krl_sha256);
        // …while the KRL of another moment is not.
        let later = krl(&store, &keyring, None, 901, None, retention)
            .await
            .expect("krl");
        assert_ne!(feed::sha256_hex(&later), binding.krl_sha256);

        // Version 1 is unbound, and otherwise the same feed.
        let v1 = signed_feed(
            &store,
            &keyring,
            None,
            900,
            retention,
            feed::VERSION_UNBOUND,
        )
        .await
        .expect("feed");
        let v1 = feed::unverified(&v1).expect("feed json");
        assert_eq!(v1.binding, None);
        assert_eq!(v1.revoked_serials, feed.revoked_serials);
    }
}

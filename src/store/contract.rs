//! The store contract as tests: what every backend must do, written against
//! [`Store`] alone, so a second backend runs them unchanged. A backend runs them all
//! with [`store_contract_tests!`], naming an async function that opens a fresh, empty
//! store and returns it with whatever must live as long as it (a temporary directory, a
//! scratch database).
//!
//! These never reach behind the trait: what they check, they read back through it.

use std::collections::BTreeSet;
use std::sync::Arc;

use rand_core::OsRng;
use time::OffsetDateTime;

use crate::audit::{self, AuditEntry, Outcome, event};
use crate::authority::keyring::new_key_record;
use crate::config::KeyAlgorithm;
use crate::store::{
    CaKeyRecord, CertificateRecord, FeedApplied, Finding, FindingKind, HostAuditFor,
    HostCertificateRecord, HostIssuance, HostRevocation, InventoryChange, InventoryHost,
    InventoryUpdate, Issuance, KeyKind, KeyRewrap, KeyState, KeyTransition, KeyringChange,
    RotationSchedule, Store, StoreError, TaskEnd, TaskRecord, TaskState, TokenUse,
};

/// Unix seconds as a time.
pub(crate) fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).expect("in range")
}

/// An issuance signed by `ca_key_id` with `serial`: for a new task (id derived from the
/// serial) unless `task` names an existing one, consuming `token` when given. The task
/// runs from 100 to 10,000 and the certificate is valid from 100 to 1,000 (Unix seconds).
pub(crate) fn issuance(
    ca_key_id: &str,
    serial: i64,
    task: Option<&str>,
    token: Option<&str>,
) -> Issuance {
    let task_id = task.map_or_else(|| task_id_of(serial), str::to_owned);
    Issuance {
        new_task: task.is_none().then(|| TaskRecord {
            id: task_id.clone(),
            issuer: "i".into(),
            subject: "s".into(),
            policy: "p".into(),
            logins: vec!["deploy".into()],
            hosts: vec!["*".into()],
            purpose: String::new(),
            state: TaskState::Active,
            created_at: 100,
            expires_at: 10_000,
            restrictions: Some(Default::default()),
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
            renewed_from: None,
        },
        audit: vec![{
            let mut e = AuditEntry::new(event::CERT_ISSUED, Outcome::Success);
            e.serial = Some(serial.to_string());
            e
        }],
        token_use: token.map(|token| TokenUse {
            issuer: "i".into(),
            token_hash: token.into(),
            expires_at: 10_000,
        }),
        at: at(100),
    }
}

/// The task id [`issuance`] gives a new task for `serial`.
pub(crate) fn task_id_of(serial: i64) -> String {
    format!("{serial:032x}")
}

fn key(state: KeyState, now: i64) -> CaKeyRecord {
    new_key_record(
        "pass",
        KeyAlgorithm::Ed25519,
        crate::store::KeyKind::User,
        state,
        now,
        &mut OsRng,
    )
    .expect("key")
}

fn entry() -> AuditEntry {
    AuditEntry::new(event::CA_KEY_ROTATED, Outcome::Success)
}

fn transition(id: &str, from: KeyState, to: KeyState, at: i64) -> KeyTransition {
    KeyTransition {
        id: id.into(),
        from,
        to,
        at,
        unless_valid_after: None,
    }
}

/// Add one active CA key to `store`; returns its id.
pub(crate) async fn with_active_key(store: &dyn Store) -> String {
    let key = key(KeyState::Active, 0);
    let key_id = key.id.clone();
    store
        .change_keyring(&KeyringChange {
            new_keys: vec![key],
            ..KeyringChange::at(at(0))
        })
        .await
        .expect("key");
    key_id
}

/// Add an active and a next CA key to `store`, with one audit record.
async fn active_and_next(store: &dyn Store) -> (CaKeyRecord, CaKeyRecord) {
    let (a, n) = (key(KeyState::Active, 1), key(KeyState::Next, 1));
    store
        .change_keyring(&KeyringChange {
            new_keys: vec![a.clone(), n.clone()],
            audit: vec![entry()],
            ..KeyringChange::at(at(1))
        })
        .await
        .expect("init");
    (a, n)
}

async fn audit_len(store: &dyn Store) -> usize {
    store.audit_records(0, i64::MAX).await.expect("audit").len()
}

async fn key_of(store: &dyn Store, id: &str) -> CaKeyRecord {
    store
        .ca_keys()
        .await
        .expect("keys")
        .into_iter()
        .find(|k| k.id == id)
        .expect("key")
}

/// A certificate signed by `ca_key_id`, issued at 0 and valid until `valid_before`.
async fn issue_until(
    store: &dyn Store,
    ca_key_id: &str,
    serial: i64,
    valid_before: i64,
) -> Result<(), StoreError> {
    let mut issuance = issuance(ca_key_id, serial, None, None);
    if let Some(task) = &mut issuance.new_task {
        (task.created_at, task.expires_at) = (0, valid_before);
    }
    let certificate = &mut issuance.certificate;
    (certificate.valid_after, certificate.valid_before) = (0, valid_before);
    certificate.issued_at = 0;
    store.record_issuance(issuance).await
}

/// Revoke `serial` at 500, one plain record per certificate revoked; the serials revoked.
async fn revoke(store: &dyn Store, serial: i64) -> Vec<i64> {
    let audit = Box::new(|revoked: &[CertificateRecord]| {
        revoked
            .iter()
            .map(|c| {
                let mut e = AuditEntry::new(event::CERT_REVOKED, Outcome::Success);
                e.serial = Some(c.serial.to_string());
                e
            })
            .collect()
    });
    store
        .revoke_certificate(serial, at(500), audit)
        .await
        .expect("revoke")
        .iter()
        .map(|c| c.serial)
        .collect()
}

/// Many concurrent issuances, some of which must fail on their own (a token used twice, a
/// serial taken twice, a task that does not exist): each gets its own answer, the others
/// commit, the audit chain stays unbroken with one record per success, and a refused
/// issuance leaves nothing behind — no certificate, no task, its token unconsumed.
pub(crate) async fn concurrent_issuances_commit_or_fail_one_by_one(store: Arc<dyn Store>) {
    let key_id = with_active_key(store.as_ref()).await;
    let mut calls = Vec::new();
    for n in 1..=120_i64 {
        // Every tenth reuses token "t1"; every 15th reuses serial 2; every 40th names a
        // task that does not exist.
        let token = if n % 10 == 0 {
            "t1".to_owned()
        } else {
            format!("t{n}")
        };
        let serial = if n % 15 == 0 { 2 } else { n };
        let task = (n % 40 == 0).then_some("no-such-task");
        let store = store.clone();
        let issuance = issuance(&key_id, serial, task, Some(&token));
        calls.push(tokio::spawn(async move {
            (n, store.record_issuance(issuance).await)
        }));
    }
    // Whichever contender runs first wins a contended token or serial: exactly one call
    // per contended resource commits, every uncontended call commits, and a call naming a
    // missing task never does.
    let mut committed = BTreeSet::new();
    let mut refused = Vec::new();
    let (mut token_winners, mut serial_winners) = (0, 0);
    for call in calls {
        let (n, result) = call.await.expect("join");
        let wants_t1 = n == 1 || n % 10 == 0;
        let wants_serial_2 = n == 2 || n % 15 == 0;
        let missing_task = n % 40 == 0;
        match result {
            Ok(()) => {
                assert!(!missing_task, "issuance {n} named a missing task");
                token_winners += usize::from(wants_t1);
                serial_winners += usize::from(wants_serial_2);
                committed.insert(if wants_serial_2 { 2 } else { n });
            }
            Err(StoreError::TokenReused | StoreError::Conflict(_) | StoreError::TaskNotActive) => {
                assert!(
                    wants_t1 || wants_serial_2 || missing_task,
                    "uncontended issuance {n} failed"
                );
                refused.push(n);
            }
            Err(e) => panic!("issuance {n}: {e}"),
        }
    }
    assert_eq!(token_winners, 1, "token t1 is used exactly once");
    assert_eq!(serial_winners, 1, "serial 2 is issued exactly once");
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
    assert_eq!(
        committed, issued_set,
        "a record for every success, none more"
    );
    for serial in &issued_set {
        assert!(store.certificate(*serial).await.expect("read").is_some());
    }
    // What a refused issuance would have written is not there, and the token it brought
    // (unless another issuance used it: issuance 1 brings "t1" too) is still unused.
    for n in refused.into_iter().filter(|n| n % 15 != 0 && *n != 2) {
        assert!(store.certificate(n).await.expect("read").is_none(), "{n}");
        assert!(
            store.task(&task_id_of(n)).await.expect("read").is_none(),
            "{n}"
        );
        if n % 10 != 0 && n != 1 {
            store
                .record_issuance(issuance(&key_id, 1_000 + n, None, Some(&format!("t{n}"))))
                .await
                .unwrap_or_else(|e| panic!("token t{n} was consumed by a refusal: {e}"));
        }
    }
    let again = store
        .record_issuance(issuance(&key_id, 5_000, None, Some("t1")))
        .await;
    assert!(matches!(again, Err(StoreError::TokenReused)), "{again:?}");
}

/// A backend that waits for announced issuances waits only briefly: one that never
/// arrives (its request failed, or hangs) does not hold the others up.
pub(crate) async fn an_announced_issuance_that_never_arrives_holds_nothing_up(
    store: Arc<dyn Store>,
) {
    let key_id = with_active_key(store.as_ref()).await;
    let never = store.announce_issuance();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.record_issuance(issuance(&key_id, 11, None, Some("x"))),
    )
    .await
    .expect("committed without the announced issuance")
    .expect("recorded");
    drop(never);
}

/// Another certificate for a task that ended after the request was checked is not
/// committed, and ending a task revokes its certificates with records that say so.
pub(crate) async fn a_certificate_for_an_ended_task_is_not_committed(store: Arc<dyn Store>) {
    let key_id = with_active_key(store.as_ref()).await;
    store
        .record_issuance(issuance(&key_id, 7, None, Some("a")))
        .await
        .expect("first");
    let task_id = task_id_of(7);
    let end = TaskEnd {
        task_id: task_id.clone(),
        state: TaskState::Completed,
        reason: Some("done".into()),
        now: at(200),
        token_use: None,
    };
    let ended = store
        .end_task(
            &end,
            Box::new(|live: &[CertificateRecord]| {
                let mut records = vec![AuditEntry::new(event::TASK_COMPLETED, Outcome::Success)];
                records.extend(live.iter().map(|c| {
                    let mut e = AuditEntry::new(event::CERT_REVOKED, Outcome::Success);
                    e.serial = Some(c.serial.to_string());
                    e
                }));
                records
            }),
        )
        .await
        .expect("end");
    assert_eq!(ended.iter().map(|c| c.serial).collect::<Vec<_>>(), [7]);
    let task = store.task(&task_id).await.expect("read").expect("task");
    assert_eq!(task.state, TaskState::Completed);
    let cert = store.certificate(7).await.expect("read").expect("cert");
    assert_eq!(cert.revoked_at, Some(200));
    let again = store.end_task(&end, Box::new(|_| Vec::new())).await;
    assert!(matches!(again, Err(StoreError::TaskNotActive)), "{again:?}");

    let late = store
        .record_issuance(issuance(&key_id, 8, Some(&task_id), Some("b")))
        .await;
    assert!(matches!(late, Err(StoreError::TaskNotActive)), "{late:?}");
    assert!(store.certificate(8).await.expect("read").is_none());
    let revocations = store.revocations(300).await.expect("feed");
    assert_eq!(revocations.tasks, [(task_id, 10_000)]);
    assert_eq!(revocations.certificates.len(), 1);
    let events: Vec<String> = store
        .audit_records(0, 100)
        .await
        .expect("records")
        .into_iter()
        .map(|r| r.entry.event)
        .collect();
    assert_eq!(
        events,
        [
            event::CERT_ISSUED,
            event::TASK_COMPLETED,
            event::CERT_REVOKED
        ]
    );
}

/// Revoking a certificate revokes what was renewed from it, directly or not, and nothing
/// else; once that has committed, a renewal from it (checked before the revocation,
/// committed after) is refused and writes nothing, its token included.
pub(crate) async fn revocation_takes_renewals_along_and_stops_later_ones(store: Arc<dyn Store>) {
    let key_id = with_active_key(store.as_ref()).await;
    let store = store.as_ref();
    let task_id = task_id_of(7);
    store
        .record_issuance(issuance(&key_id, 7, None, Some("a")))
        .await
        .expect("first");
    for (serial, parent) in [(8, Some(7)), (9, Some(8)), (10, None), (11, Some(10))] {
        let mut renewal = issuance(&key_id, serial, Some(&task_id), Some(&format!("t{serial}")));
        renewal.certificate.renewed_from = parent;
        store.record_issuance(renewal).await.expect("renewal");
    }
    assert_eq!(revoke(store, 7).await, [7, 8, 9]);
    assert!(revoke(store, 7).await.is_empty(), "already revoked");
    for serial in [10, 11] {
        let cert = store
            .certificate(serial)
            .await
            .expect("read")
            .expect("cert");
        assert_eq!(cert.revoked_at, None, "{serial} was not renewed from 7");
    }
    let records = store.audit_records(0, 100).await.expect("records");
    let revoked: Vec<&str> = records
        .iter()
        .filter(|r| r.entry.event == event::CERT_REVOKED)
        .filter_map(|r| r.entry.serial.as_deref())
        .collect();
    assert_eq!(revoked, ["7", "8", "9"]);

    for parent in [7, 9, 12345] {
        let mut late = issuance(&key_id, 20 + parent, Some(&task_id), Some("late"));
        late.certificate.renewed_from = Some(parent);
        let refused = store.record_issuance(late).await;
        assert!(
            matches!(refused, Err(StoreError::RenewedFromRevoked)),
            "from {parent}: {refused:?}"
        );
        assert!(
            store
                .certificate(20 + parent)
                .await
                .expect("read")
                .is_none()
        );
    }
    let mut fresh = issuance(&key_id, 30, Some(&task_id), Some("late"));
    fresh.certificate.renewed_from = Some(11);
    store
        .record_issuance(fresh)
        .await
        .expect("the refusals did not consume the token");
}

/// A record's time is its write's time, never earlier than the record before it.
pub(crate) async fn records_carry_their_writes_time_and_never_go_back(store: Arc<dyn Store>) {
    let later = at(2_000);
    let earlier = at(1_000);
    store.append_audit(&entry(), later).await.expect("first");
    store
        .append_audit_entries(vec![entry(), entry()], earlier)
        .await
        .expect("second");
    let records = store.audit_records(0, 10).await.expect("records");
    let times: Vec<&str> = records.iter().map(|r| r.time.as_str()).collect();
    let stamped = audit::format_time(later);
    assert_eq!(times, [stamped.as_str(); 3]);
    assert_eq!(audit::verify_chain(&records, audit::GENESIS_HASH), Ok(()));
}

pub(crate) async fn a_rotation_commits_whole_or_not_at_all(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let (a, n) = active_and_next(store).await;
    // A second active key, a second next key: refused, nothing written.
    for extra in [key(KeyState::Active, 2), key(KeyState::Next, 2)] {
        let err = store
            .change_keyring(&KeyringChange {
                new_keys: vec![extra],
                audit: vec![entry()],
                ..KeyringChange::at(at(2))
            })
            .await
            .expect_err("second key in a unique state");
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    }
    // A transition whose key is not in the expected state rolls back the others.
    let err = store
        .change_keyring(&KeyringChange {
            transitions: vec![
                transition(&a.id, KeyState::Active, KeyState::Retiring, 5),
                transition(&n.id, KeyState::Retiring, KeyState::Retired, 5),
            ],
            audit: vec![entry()],
            ..KeyringChange::at(at(5))
        })
        .await
        .expect_err("stale state");
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(key_of(store, &a.id).await.state, KeyState::Active);
    assert_eq!(audit_len(store).await, 1);

    let next2 = key(KeyState::Next, 5);
    store
        .change_keyring(&KeyringChange {
            transitions: vec![
                transition(&a.id, KeyState::Active, KeyState::Retiring, 5),
                transition(&n.id, KeyState::Next, KeyState::Active, 5),
            ],
            new_keys: vec![next2.clone()],
            audit: vec![entry()],
            ..KeyringChange::at(at(5))
        })
        .await
        .expect("rotate");
    let old = key_of(store, &a.id).await;
    assert_eq!(
        (old.state, old.deactivated_at),
        (KeyState::Retiring, Some(5))
    );
    let new = key_of(store, &n.id).await;
    assert_eq!((new.state, new.activated_at), (KeyState::Active, Some(5)));
    assert_eq!(key_of(store, &next2.id).await.state, KeyState::Next);
    assert_eq!(audit_len(store).await, 2);
}

pub(crate) async fn retirement_waits_for_certificates_and_retired_keys_never_sign(
    store: Arc<dyn Store>,
) {
    let store = store.as_ref();
    let (a, n) = active_and_next(store).await;
    issue_until(store, &a.id, 1, 100)
        .await
        .expect("certificate of the active key");
    store
        .change_keyring(&KeyringChange {
            transitions: vec![
                transition(&a.id, KeyState::Active, KeyState::Retiring, 10),
                transition(&n.id, KeyState::Next, KeyState::Active, 10),
            ],
            audit: vec![entry()],
            ..KeyringChange::at(at(10))
        })
        .await
        .expect("rotate");
    // A server that has not reloaded yet may still sign with the retiring key.
    issue_until(store, &a.id, 2, 120)
        .await
        .expect("retiring key still signs");
    let usage = store.ca_key_usage(50).await.expect("usage");
    let of_a = usage.iter().find(|u| u.key_id == a.id).expect("usage of a");
    assert_eq!(
        (of_a.valid_certificates, of_a.last_valid_before),
        (2, Some(120))
    );

    let mut retire = transition(&a.id, KeyState::Retiring, KeyState::Retired, 110);
    retire.unless_valid_after = Some(110);
    let change = KeyringChange {
        transitions: vec![retire.clone()],
        audit: vec![entry()],
        ..KeyringChange::at(at(110))
    };
    let err = store
        .change_keyring(&change)
        .await
        .expect_err("a certificate is valid");
    assert!(matches!(err, StoreError::Conflict(_)));
    let mut later = change.clone();
    later.transitions[0].unless_valid_after = Some(120);
    store.change_keyring(&later).await.expect("retire");
    let retired = key_of(store, &a.id).await;
    assert_eq!(retired.state, KeyState::Retired);
    assert!(retired.private_key.is_empty(), "the private key is erased");
    let err = issue_until(store, &a.id, 3, 200)
        .await
        .expect_err("retired keys never sign");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");

    // Revoking the active key erases it too, and records when it stopped signing.
    store
        .change_keyring(&KeyringChange {
            transitions: vec![transition(&n.id, KeyState::Active, KeyState::Revoked, 130)],
            audit: vec![entry()],
            ..KeyringChange::at(at(130))
        })
        .await
        .expect("revoke");
    let revoked = key_of(store, &n.id).await;
    assert_eq!(
        (revoked.state, revoked.revoked_at, revoked.deactivated_at),
        (KeyState::Revoked, Some(130), Some(130))
    );
    assert!(revoked.private_key.is_empty());
    assert!(issue_until(store, &n.id, 4, 200).await.is_err());
}

pub(crate) async fn rewrap_and_schedule(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let a = key(KeyState::Active, 1);
    store
        .change_keyring(&KeyringChange {
            new_keys: vec![a.clone()],
            audit: vec![entry()],
            ..KeyringChange::at(at(1))
        })
        .await
        .expect("init");
    let stale = KeyringChange {
        rewraps: vec![KeyRewrap {
            id: a.id.clone(),
            old: "not what is stored".into(),
            new: "x".into(),
        }],
        audit: vec![entry()],
        ..KeyringChange::at(at(2))
    };
    assert!(matches!(
        store.change_keyring(&stale).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(key_of(store, &a.id).await.private_key, a.private_key);

    assert_eq!(store.rotation_schedule().await.expect("schedule"), None);
    let every = RotationSchedule {
        every_seconds: 60,
        set_at: 5,
    };
    for _ in 0..2 {
        store
            .set_rotation_schedule(Some(every), &entry(), at(5))
            .await
            .expect("set");
    }
    assert_eq!(
        store.rotation_schedule().await.expect("schedule"),
        Some(every)
    );
    store
        .set_rotation_schedule(None, &entry(), at(6))
        .await
        .expect("clear");
    assert_eq!(store.rotation_schedule().await.expect("schedule"), None);
}

/// Active tasks are counted at the time asked about: a task that ended or expired by then
/// is not, and a renewal does not count its task twice.
pub(crate) async fn active_tasks_are_counted_at_the_time_asked(store: Arc<dyn Store>) {
    let store = store.as_ref();
    assert_eq!(store.active_tasks(500).await.expect("count"), 0);
    let key_id = with_active_key(store).await;
    for serial in [11, 12, 13] {
        store
            .record_issuance(issuance(&key_id, serial, None, None))
            .await
            .expect("issue");
    }
    store
        .record_issuance(issuance(&key_id, 14, Some(&task_id_of(11)), None))
        .await
        .expect("renew");
    assert_eq!(store.active_tasks(500).await.expect("count"), 3);
    let end = TaskEnd {
        task_id: task_id_of(12),
        state: TaskState::Revoked,
        reason: Some("test".into()),
        now: at(600),
        token_use: None,
    };
    store
        .end_task(&end, Box::new(|_| Vec::new()))
        .await
        .expect("end");
    assert_eq!(store.active_tasks(700).await.expect("count"), 2);
    // The tasks of `issuance` run until 10,000.
    assert_eq!(store.active_tasks(9_999).await.expect("count"), 2);
    assert_eq!(store.active_tasks(10_000).await.expect("count"), 0);
}

/// A lease is one holder's until it expires or is given up; a holder keeps renewing its
/// own; of many asking at once exactly one gets it.
pub(crate) async fn a_lease_is_one_holders_until_it_expires_or_is_released(store: Arc<dyn Store>) {
    assert!(store.hold_lease("work", "a", 100, 110).await.expect("take"));
    assert!(
        !store
            .hold_lease("work", "b", 105, 115)
            .await
            .expect("held by a")
    );
    assert!(
        store
            .hold_lease("work", "a", 108, 118)
            .await
            .expect("renew")
    );
    assert!(
        !store
            .hold_lease("work", "b", 117, 127)
            .await
            .expect("renewed by a")
    );
    assert!(
        store
            .hold_lease("other", "b", 117, 127)
            .await
            .expect("another lease")
    );
    // Expired: anyone may take it, and then the old holder may not.
    assert!(
        store
            .hold_lease("work", "b", 118, 128)
            .await
            .expect("expired")
    );
    assert!(
        !store
            .hold_lease("work", "a", 119, 129)
            .await
            .expect("b's now")
    );
    // Only the holder releases it.
    store.release_lease("work", "a").await.expect("not a's");
    assert!(
        !store
            .hold_lease("work", "a", 120, 130)
            .await
            .expect("still b's")
    );
    store.release_lease("work", "b").await.expect("release");
    assert!(
        store
            .hold_lease("work", "a", 120, 130)
            .await
            .expect("released")
    );
    // Many at once, on an expired lease: exactly one wins.
    let mut calls = Vec::new();
    for n in 0..8 {
        let store = Arc::clone(&store);
        calls.push(tokio::spawn(async move {
            store
                .hold_lease("work", &format!("c{n}"), 200, 210)
                .await
                .expect("ask")
        }));
    }
    let mut granted = 0;
    for call in calls {
        granted += usize::from(call.await.expect("join"));
    }
    assert_eq!(granted, 1);
}

fn host_key(state: KeyState, now: i64) -> CaKeyRecord {
    new_key_record(
        "pass",
        KeyAlgorithm::Ed25519,
        KeyKind::Host,
        state,
        now,
        &mut OsRng,
    )
    .expect("key")
}

/// A host certificate signed by `ca_key_id`, valid from 100 to 5,000, for `names`.
pub(crate) fn host_certificate(
    ca_key_id: &str,
    serial: i64,
    names: &[&str],
) -> HostCertificateRecord {
    HostCertificateRecord {
        serial,
        ca_key_id: ca_key_id.into(),
        key_fingerprint: format!("SHA256:host{serial}"),
        principals: names.iter().map(|n| n.to_string()).collect(),
        issuer: "i".into(),
        subject: "host".into(),
        policy: "hosts".into(),
        valid_after: 100,
        valid_before: 5_000,
        issued_at: 100,
        revoked_at: None,
    }
}

/// A host issuance of `certificates`, one audit record, consuming `token` when given.
fn host_issuance(certificates: Vec<HostCertificateRecord>, token: Option<&str>) -> HostIssuance {
    HostIssuance {
        audit: vec![AuditEntry::new(event::HOST_CERT_ISSUED, Outcome::Success)],
        certificates,
        token_use: token.map(|token| TokenUse {
            issuer: "i".into(),
            token_hash: token.into(),
            expires_at: 10_000,
        }),
        at: at(100),
    }
}

/// Each kind of CA key has its own `active` and `next` key, and the database refuses a
/// second of either within a kind, whoever asks.
pub(crate) async fn one_active_and_one_next_key_per_kind(store: Arc<dyn Store>) {
    active_and_next(store.as_ref()).await;
    let (ha, hn) = (host_key(KeyState::Active, 1), host_key(KeyState::Next, 1));
    store
        .change_keyring(&KeyringChange {
            new_keys: vec![ha.clone(), hn.clone()],
            ..KeyringChange::at(at(1))
        })
        .await
        .expect("a host keyring beside the user keyring");
    for state in [KeyState::Active, KeyState::Next] {
        for second in [key(state, 2), host_key(state, 2)] {
            let refused = store
                .change_keyring(&KeyringChange {
                    new_keys: vec![second.clone()],
                    audit: vec![entry()],
                    ..KeyringChange::at(at(2))
                })
                .await;
            assert!(
                matches!(refused, Err(StoreError::Conflict(_))),
                "a second {state} {} key: {refused:?}",
                second.kind
            );
        }
    }
    let keys = store.ca_keys().await.expect("keys");
    assert_eq!(keys.len(), 4);
    assert_eq!(key_of(store.as_ref(), &ha.id).await.kind, KeyKind::Host);
    assert_eq!(key_of(store.as_ref(), &hn.id).await.kind, KeyKind::Host);
    assert_eq!(keys.iter().filter(|k| k.kind == KeyKind::User).count(), 2);
    assert_eq!(audit_len(store.as_ref()).await, 1, "refusals wrote nothing");
}

/// Host certificates: signed only by a host key that may sign (and user certificates
/// never by a host key), whole or nothing with their token and audit records, serials
/// unique across user and host certificates, listed by name, revoked by serial or name
/// (once), published with the revocations and counted in their key's usage.
pub(crate) async fn host_certificates_are_recorded_listed_and_revoked(store: Arc<dyn Store>) {
    let (user, _) = active_and_next(store.as_ref()).await;
    let host = host_key(KeyState::Active, 1);
    store
        .change_keyring(&KeyringChange {
            new_keys: vec![host.clone()],
            ..KeyringChange::at(at(1))
        })
        .await
        .expect("host key");
    let before = audit_len(store.as_ref()).await;

    // Cross-kind signing is refused by the store, and leaves nothing.
    let wrong = store
        .record_host_issuance(host_issuance(
            vec![host_certificate(&user.id, 11, &["web1.example.com"])],
            Some("t1"),
        ))
        .await;
    assert!(
        matches!(wrong, Err(StoreError::Unavailable(_))),
        "{wrong:?}"
    );
    let wrong = store
        .record_issuance(issuance(&host.id, 12, None, None))
        .await;
    assert!(
        matches!(wrong, Err(StoreError::Unavailable(_))),
        "{wrong:?}"
    );
    // A serial a user certificate took is taken for host certificates too.
    store
        .record_issuance(issuance(&user.id, 13, None, None))
        .await
        .expect("user certificate");
    let taken = store
        .record_host_issuance(host_issuance(
            vec![
                host_certificate(&host.id, 14, &["web1.example.com"]),
                host_certificate(&host.id, 13, &["web1.example.com"]),
            ],
            Some("t1"),
        ))
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    assert!(
        store
            .host_certificates(0, None)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        audit_len(store.as_ref()).await,
        before + 1,
        "only the user issuance"
    );

    // Whole: both certificates, the token, the record.
    store
        .record_host_issuance(host_issuance(
            vec![
                host_certificate(&host.id, 14, &["web1.example.com", "web1"]),
                host_certificate(&host.id, 15, &["web1.example.com", "web1"]),
            ],
            Some("t1"),
        ))
        .await
        .expect("host issuance");
    let replay = store
        .record_host_issuance(host_issuance(
            vec![host_certificate(&host.id, 16, &["web1.example.com"])],
            Some("t1"),
        ))
        .await;
    assert!(matches!(replay, Err(StoreError::TokenReused)), "{replay:?}");
    store
        .record_host_issuance(host_issuance(
            vec![host_certificate(&host.id, 17, &["db1.example.com"])],
            None,
        ))
        .await
        .expect("another host");
    let serials = |certs: Vec<HostCertificateRecord>| -> Vec<i64> {
        certs.iter().map(|c| c.serial).collect()
    };
    assert_eq!(
        serials(store.host_certificates(0, None).await.expect("list")),
        [14, 15, 17]
    );
    assert_eq!(
        serials(
            store
                .host_certificates(0, Some("web1"))
                .await
                .expect("by name")
        ),
        [14, 15]
    );
    assert!(
        store
            .host_certificates(5_000, None)
            .await
            .expect("list")
            .is_empty()
    );
    let usage = store.ca_key_usage(200).await.expect("usage");
    let of_host = usage
        .iter()
        .find(|u| u.key_id == host.id)
        .expect("host usage");
    assert_eq!(
        (of_host.valid_certificates, of_host.last_valid_before),
        (3, Some(5_000))
    );

    let audit_for = || -> HostAuditFor {
        Box::new(|certs: &[HostCertificateRecord]| {
            certs
                .iter()
                .map(|c| {
                    let mut e = AuditEntry::new(event::HOST_CERT_REVOKED, Outcome::Success);
                    e.serial = Some(c.serial.to_string());
                    e
                })
                .collect()
        })
    };
    let revoked = store
        .revoke_host_certificates(
            &HostRevocation::Name("web1.example.com".into()),
            at(300),
            audit_for(),
        )
        .await
        .expect("revoke by name");
    assert_eq!(serials(revoked.clone()), [14, 15]);
    assert!(revoked.iter().all(|c| c.revoked_at == Some(300)));
    let again = store
        .revoke_host_certificates(&HostRevocation::Serial(14), at(301), audit_for())
        .await
        .expect("again");
    assert!(again.is_empty(), "already revoked: nothing written");
    let by_serial = store
        .revoke_host_certificates(&HostRevocation::Serial(17), at(302), audit_for())
        .await
        .expect("by serial");
    assert_eq!(serials(by_serial), [17]);
    let listed = store.host_certificates(0, None).await.expect("list");
    assert!(listed.iter().all(|c| c.revoked_at.is_some()));
    let published = store.revocations(400).await.expect("revocations");
    let host_entries: BTreeSet<(i64, String)> = published
        .certificates
        .iter()
        .filter(|(_, key, _)| *key == host.id)
        .map(|(serial, key, _)| (*serial, key.clone()))
        .collect();
    assert_eq!(
        host_entries,
        [14, 15, 17]
            .into_iter()
            .map(|s| (s, host.id.clone()))
            .collect()
    );
    assert!(
        store
            .revocations(5_000)
            .await
            .expect("later")
            .certificates
            .is_empty()
    );
    // Issue, refusals-free writes: 1 user + 2 host issuances + 3 revocation records.
    assert_eq!(audit_len(store.as_ref()).await, before + 1 + 2 + 3);
}

/// A host's applied feed is overwritten by its next report; other hosts keep theirs.
pub(crate) async fn feeds_applied_are_one_row_per_host(store: Arc<dyn Store>) {
    let report = |host: &str, sequence: i64, at: i64| FeedApplied {
        host: host.into(),
        issuer: "k8s".into(),
        subject: format!("node:{host}"),
        sequence,
        applied_at: at - 1,
        reported_at: at,
    };
    assert!(store.feeds_applied().await.expect("none yet").is_empty());
    for r in [
        report("web-2", 7, 100),
        report("web-1", 7, 101),
        report("web-2", 9, 102),
    ] {
        store.record_feed_applied(r).await.expect("recorded");
    }
    assert_eq!(
        store.feeds_applied().await.expect("read"),
        vec![report("web-1", 7, 101), report("web-2", 9, 102)]
    );
}

/// An inventory report replaces the host's summary, adds what is new, marks gone what
/// is no longer reported (a key that comes back is new again), and records its audit
/// entries in the same transaction.
pub(crate) async fn inventories_track_findings_across_reports(store: Arc<dyn Store>) {
    let key = |login: &str, fingerprint: &str| Finding {
        kind: FindingKind::StaticKey,
        subject: login.into(),
        fingerprint: fingerprint.into(),
        detail: "{}".into(),
    };
    let private = Finding {
        kind: FindingKind::PrivateKey,
        subject: "/root/.ssh/id_rsa".into(),
        fingerprint: "SHA256:p".into(),
        detail: r#"{"format":"pkcs1"}"#.into(),
    };
    let before = audit_len(store.as_ref()).await;
    let report = |host: &str, t: i64, findings: Vec<Finding>| InventoryUpdate {
        host: InventoryHost {
            host: host.into(),
            issuer: "k8s".into(),
            subject: format!("node:{host}"),
            reported_at: t,
            writ_enforced: t > 100,
            summary: format!(r#"{{"at":{t}}}"#),
        },
        findings,
        audit: Box::new(|change: &InventoryChange| {
            vec![AuditEntry {
                reason: Some(format!(
                    "new={} gone={}",
                    change.new.len(),
                    change.gone.len()
                )),
                ..AuditEntry::new(event::INVENTORY_REPORTED, Outcome::Success)
            }]
        }),
        at: at(t),
    };
    let first = store
        .record_inventory(report(
            "web-1",
            100,
            vec![key("deploy", "SHA256:a"), private.clone()],
        ))
        .await
        .expect("first report");
    assert_eq!(first.new.len(), 2);
    assert!(first.gone.is_empty());
    store
        .record_inventory(report("web-2", 100, vec![key("deploy", "SHA256:a")]))
        .await
        .expect("other host");
    // The same again, with the private key gone and a new key.
    let second = store
        .record_inventory(report(
            "web-1",
            200,
            vec![key("deploy", "SHA256:a"), key("ops", "SHA256:b")],
        ))
        .await
        .expect("second report");
    assert_eq!(second.new, vec![key("ops", "SHA256:b")]);
    assert_eq!(second.gone.len(), 1);
    assert_eq!(second.gone[0].finding, private);
    assert_eq!(second.gone[0].gone_at, Some(200));

    let now = store.inventory(None).await.expect("inventory");
    let hosts: Vec<_> = now
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.reported_at, h.writ_enforced))
        .collect();
    assert_eq!(hosts, vec![("web-1", 200, true), ("web-2", 100, false)]);
    assert_eq!(now.hosts[0].summary, r#"{"at":200}"#);
    let live: Vec<_> = now
        .findings
        .iter()
        .map(|f| {
            (
                f.host.as_str(),
                f.finding.subject.as_str(),
                f.first_seen,
                f.last_seen,
            )
        })
        .collect();
    assert_eq!(
        live,
        vec![
            ("web-1", "deploy", 100, 200),
            ("web-1", "ops", 200, 200),
            ("web-2", "deploy", 100, 100)
        ]
    );
    // Asked for what went since 150, the gone private key is listed too.
    let since = store.inventory(Some(150)).await.expect("since");
    assert_eq!(since.findings.len(), 4);
    assert!(
        since
            .findings
            .iter()
            .any(|f| f.finding == private && f.gone_at == Some(200))
    );
    // The private key coming back is a new finding.
    let third = store
        .record_inventory(report("web-1", 300, vec![private.clone()]))
        .await
        .expect("third report");
    assert_eq!(third.new, vec![private]);
    assert_eq!(third.gone.len(), 2);
    let reasons: Vec<_> = store
        .audit_records(0, 1_000)
        .await
        .expect("audit")
        .into_iter()
        .skip(before)
        .filter_map(|r| r.entry.reason)
        .collect();
    assert_eq!(
        reasons,
        [
            "new=2 gone=0",
            "new=1 gone=0",
            "new=1 gone=1",
            "new=1 gone=2"
        ]
    );
}

/// Every contract test, for the backend `$open` opens: `async fn() -> (impl Drop-guard,
/// Arc<dyn Store>)`, a fresh empty store each call.
macro_rules! store_contract_tests {
    ($open:ident) => {
        mod contract {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let (_keep, store) = super::$open().await;
                        $crate::store::contract::$name(store).await;
                    }
                };
            }
            case!(concurrent_issuances_commit_or_fail_one_by_one);
            case!(an_announced_issuance_that_never_arrives_holds_nothing_up);
            case!(a_certificate_for_an_ended_task_is_not_committed);
            case!(revocation_takes_renewals_along_and_stops_later_ones);
            case!(records_carry_their_writes_time_and_never_go_back);
            case!(a_rotation_commits_whole_or_not_at_all);
            case!(retirement_waits_for_certificates_and_retired_keys_never_sign);
            case!(rewrap_and_schedule);
            case!(active_tasks_are_counted_at_the_time_asked);
            case!(a_lease_is_one_holders_until_it_expires_or_is_released);
            case!(one_active_and_one_next_key_per_kind);
            case!(host_certificates_are_recorded_listed_and_revoked);
            case!(feeds_applied_are_one_row_per_host);
            case!(inventories_track_findings_across_reports);
        }
    };
}
pub(crate) use store_contract_tests;

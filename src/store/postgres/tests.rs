//! The PostgreSQL backend against a real server (`WRIT_TEST_POSTGRES_URL`, see
//! `super::scratch`): the store contract unchanged, then what the contract cannot show
//! with one store — two stores on one database ("replicas") writing at once, and
//! migrations run twice or together.

use std::collections::BTreeSet;
use std::sync::Arc;

use rand_core::OsRng;
use sqlx::AssertSqlSafe;

use super::PgStore;
use super::scratch::ScratchDatabase;
use crate::admin::audit::{VerifyOptions, verify};
use crate::audit::{self, AuditEntry, Outcome, event};
use crate::authority::keyring::new_key_record;
use crate::config::KeyAlgorithm;
use crate::store::contract::{at, issuance, task_id_of, with_active_key};
use crate::store::{
    AuditLog, CertificateRecord, KeyState, KeyringChange, Store, StoreError, TaskEnd, TaskState,
};

/// A fresh store on a scratch database; the database goes when the guard does.
async fn open() -> (ScratchDatabase, Arc<dyn Store>) {
    let database = ScratchDatabase::create().await;
    let store = PgStore::open(&database.options, None)
        .await
        .expect("open the store");
    (database, Arc::new(store))
}

crate::store::contract::store_contract_tests!(open);

/// Two stores on one scratch database, as two `writ serve` replicas have.
async fn two_replicas() -> (ScratchDatabase, Arc<PgStore>, Arc<PgStore>) {
    let database = ScratchDatabase::create().await;
    let (a, b) = tokio::join!(
        PgStore::open(&database.options, None),
        PgStore::open(&database.options, None)
    );
    (
        database,
        Arc::new(a.expect("replica a")),
        Arc::new(b.expect("replica b")),
    )
}

/// The whole log verifies as `writ admin audit verify` walks it; returns its length.
async fn verified_length(store: &dyn Store) -> u64 {
    let report = verify(store, &VerifyOptions::default())
        .await
        .expect("verify");
    assert!(report.ok, "the audit chain is broken: {report:?}");
    let records = store.audit_records(0, i64::MAX).await.expect("records");
    assert_eq!(audit::verify_chain(&records, audit::GENESIS_HASH), Ok(()));
    report.records
}

fn end(task_id: &str, now: i64) -> TaskEnd {
    TaskEnd {
        task_id: task_id.to_owned(),
        state: TaskState::Completed,
        reason: None,
        now: at(now),
        token_use: None,
    }
}

fn ended_records(live: &[CertificateRecord]) -> Vec<AuditEntry> {
    let mut records = vec![AuditEntry::new(event::TASK_COMPLETED, Outcome::Success)];
    records.extend(live.iter().map(|c| {
        let mut e = AuditEntry::new(event::CERT_REVOKED, Outcome::Success);
        e.serial = Some(c.serial.to_string());
        e
    }));
    records
}

/// 200 issuances split across two replicas, with audit appends on their own in between,
/// and 20 serials each sent to both: every issuance commits exactly once, a contended
/// serial once in all, and the audit chain both replicas wrote is one unbroken chain that
/// `writ admin audit verify` accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_issue_at_once_into_one_unbroken_chain() {
    let (_database, a, b) = two_replicas().await;
    let key_id = with_active_key(a.as_ref()).await;
    b.record_issuance(issuance(&key_id, 500, None, None))
        .await
        .expect("the task contended serials are for");
    let mut calls = Vec::new();
    for n in 1..=200_i64 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let issuance = issuance(&key_id, n, None, Some(&format!("t{n}")));
        calls.push(tokio::spawn(async move {
            (n, store.record_issuance(issuance).await)
        }));
        if n % 10 == 0 {
            let store = if n % 20 == 0 { b.clone() } else { a.clone() };
            calls.push(tokio::spawn(async move {
                let entry = AuditEntry::new(event::CA_KEY_ROTATED, Outcome::Success);
                (0, store.append_audit(&entry, at(100)).await)
            }));
        }
    }
    for n in 201..=220_i64 {
        for (store, side) in [(a.clone(), "a"), (b.clone(), "b")] {
            let issuance = issuance(
                &key_id,
                n,
                Some(&task_id_of(500)),
                Some(&format!("{side}{n}")),
            );
            calls.push(tokio::spawn(async move {
                (n, store.record_issuance(issuance).await)
            }));
        }
    }
    let mut contended_wins = BTreeSet::new();
    for call in calls {
        let (n, result) = call.await.expect("join");
        match (n, result) {
            (201..=220, Ok(())) => assert!(contended_wins.insert(n), "serial {n} issued twice"),
            (201..=220, Err(StoreError::Conflict(_))) => {}
            (_, Ok(())) => {}
            (n, Err(e)) => panic!("issuance {n}: {e}"),
        }
    }
    assert_eq!(
        contended_wins.len(),
        20,
        "each contended serial issued once"
    );
    for serial in (1..=220).chain([500]) {
        assert!(
            a.certificate(serial).await.expect("read").is_some(),
            "{serial}"
        );
    }
    let length = verified_length(a.as_ref()).await;
    assert_eq!(
        length,
        1 + 200 + 20 + 20,
        "one record per issuance and per append"
    );
    assert_eq!(b.audit_len().await, a.audit_len().await);
    let issued: BTreeSet<String> = a
        .audit_records(0, i64::MAX)
        .await
        .expect("records")
        .into_iter()
        .filter(|r| r.entry.event == event::CERT_ISSUED)
        .filter_map(|r| r.entry.serial)
        .collect();
    assert_eq!(issued.len(), 221, "one record per certificate");
}

/// A token consumed through one replica is refused through the other, and two replicas
/// offered the same token at once let exactly one use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_consumed_through_one_replica_is_refused_by_the_other() {
    let (_database, a, b) = two_replicas().await;
    let key_id = with_active_key(a.as_ref()).await;
    a.record_issuance(issuance(&key_id, 1, None, Some("once")))
        .await
        .expect("first use");
    let replay = b
        .record_issuance(issuance(&key_id, 2, None, Some("once")))
        .await;
    assert!(matches!(replay, Err(StoreError::TokenReused)), "{replay:?}");
    assert!(b.certificate(2).await.expect("read").is_none());
    assert!(b.task(&task_id_of(2)).await.expect("read").is_none());

    for round in 0..10_i64 {
        let token = format!("race{round}");
        let (first, second) = tokio::join!(
            a.record_issuance(issuance(&key_id, 100 + 2 * round, None, Some(&token))),
            b.record_issuance(issuance(&key_id, 101 + 2 * round, None, Some(&token))),
        );
        let wins = usize::from(first.is_ok()) + usize::from(second.is_ok());
        assert_eq!(wins, 1, "round {round}: {first:?} {second:?}");
        for result in [first, second] {
            assert!(
                matches!(result, Ok(()) | Err(StoreError::TokenReused)),
                "{result:?}"
            );
        }
    }
    verified_length(b.as_ref()).await;
}

/// A task ended through one replica is refused new certificates through the other at
/// once; and with renewals racing the end across both replicas, every certificate the
/// task got is revoked afterwards — none slips in after the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ended_through_one_replica_is_refused_by_the_other() {
    let (_database, a, b) = two_replicas().await;
    let key_id = with_active_key(a.as_ref()).await;
    a.record_issuance(issuance(&key_id, 1, None, None))
        .await
        .expect("open");
    let task_id = task_id_of(1);
    b.end_task(&end(&task_id, 200), Box::new(ended_records))
        .await
        .expect("end");
    let late = a
        .record_issuance(issuance(&key_id, 2, Some(&task_id), None))
        .await;
    assert!(matches!(late, Err(StoreError::TaskNotActive)), "{late:?}");
    let again = a
        .end_task(&end(&task_id, 201), Box::new(ended_records))
        .await;
    assert!(matches!(again, Err(StoreError::TaskNotActive)), "{again:?}");

    a.record_issuance(issuance(&key_id, 1_000, None, None))
        .await
        .expect("open");
    let racing = task_id_of(1_000);
    let mut renewals = Vec::new();
    for n in 1_001..=1_040_i64 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let renewal = issuance(&key_id, n, Some(&racing), None);
        renewals.push(tokio::spawn(
            async move { store.record_issuance(renewal).await },
        ));
        if n == 1_020 {
            let (store, racing) = (b.clone(), racing.clone());
            renewals.push(tokio::spawn(async move {
                store
                    .end_task(&end(&racing, 200), Box::new(ended_records))
                    .await
                    .map(|_| ())
            }));
        }
    }
    for renewal in renewals {
        let result = renewal.await.expect("join");
        assert!(
            matches!(result, Ok(()) | Err(StoreError::TaskNotActive)),
            "{result:?}"
        );
    }
    let task = a.task(&racing).await.expect("read").expect("task");
    assert_eq!(task.state, TaskState::Completed);
    for cert in a.task_certificates(&racing).await.expect("read") {
        assert_eq!(
            cert.revoked_at,
            Some(200),
            "serial {} outlived its task",
            cert.serial
        );
    }
    verified_length(a.as_ref()).await;
}

/// A certificate revoked through one replica cannot be renewed from through the other,
/// and a second active key offered by two replicas at once is taken by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_keyring_changes_hold_across_replicas() {
    let (_database, a, b) = two_replicas().await;
    let key_id = with_active_key(a.as_ref()).await;
    a.record_issuance(issuance(&key_id, 7, None, Some("a")))
        .await
        .expect("first");
    let revoked = b
        .revoke_certificate(7, at(300), Box::new(|_| Vec::new()))
        .await
        .expect("revoke");
    assert_eq!(revoked.len(), 1);
    let mut renewal = issuance(&key_id, 8, Some(&task_id_of(7)), Some("b"));
    renewal.certificate.renewed_from = Some(7);
    let refused = a.record_issuance(renewal).await;
    assert!(
        matches!(refused, Err(StoreError::RenewedFromRevoked)),
        "{refused:?}"
    );

    // Two replicas each add a `next` key at once: one is taken, the other refused.
    let offer = |now| KeyringChange {
        new_keys: vec![
            new_key_record(
                "pass",
                KeyAlgorithm::Ed25519,
                crate::store::KeyKind::User,
                KeyState::Next,
                now,
                &mut OsRng,
            )
            .expect("key"),
        ],
        ..KeyringChange::at(at(now))
    };
    let (one, two) = (offer(1), offer(2));
    let (first, second) = tokio::join!(a.change_keyring(&one), b.change_keyring(&two));
    let wins = usize::from(first.is_ok()) + usize::from(second.is_ok());
    assert_eq!(wins, 1, "{first:?} {second:?}");
    assert!(
        matches!(first, Ok(()) | Err(StoreError::Conflict(_)))
            && matches!(second, Ok(()) | Err(StoreError::Conflict(_))),
        "{first:?} {second:?}"
    );
}

/// Concurrent issuances on one store share a transaction: their audit records, written
/// by the batch itself, carry fewer transaction ids than there are issuances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issuances_share_a_commit() {
    let (_database, a, _b) = two_replicas().await;
    let key_id = with_active_key(a.as_ref()).await;
    let mut calls = Vec::new();
    for n in 1..=40_i64 {
        let store = a.clone();
        let mut announced = store.announce_issuance();
        let issuance = issuance(&key_id, n, None, Some(&format!("t{n}")));
        calls.push(tokio::spawn(async move {
            announced.withdraw();
            store.record_issuance(issuance).await
        }));
    }
    for call in calls {
        call.await.expect("join").expect("issue");
    }
    let transactions: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT xmin::text) FROM audit_events WHERE event = 'cert.issued'",
    )
    .fetch_one(&a.pool)
    .await
    .expect("count");
    assert!(
        (1..40).contains(&transactions),
        "40 issuances in {transactions} transactions"
    );
    assert_eq!(verified_length(a.as_ref()).await, 40);
}

/// Renewals racing a revocation across replicas: chains of renewals through both
/// replicas while one revokes the certificate they all descend from. Whatever the order,
/// nothing renewed from it is left live: each renewal either committed before the
/// revocation reached it (and was revoked with it) or was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_racing_a_revocation_across_replicas_are_all_revoked() {
    let (_database, a, b) = two_replicas().await;
    let key_id = with_active_key(a.as_ref()).await;
    a.record_issuance(issuance(&key_id, 7, None, None))
        .await
        .expect("root");
    let task_id = task_id_of(7);
    let mut chains = Vec::new();
    for chain in 0..4_i64 {
        let store = if chain % 2 == 0 { a.clone() } else { b.clone() };
        let (key_id, task_id) = (key_id.clone(), task_id.clone());
        chains.push(tokio::spawn(async move {
            let mut parent = 7;
            for step in 0..15_i64 {
                let serial = 1_000 * (chain + 1) + step;
                let mut renewal = issuance(&key_id, serial, Some(&task_id), None);
                renewal.certificate.renewed_from = Some(parent);
                match store.record_issuance(renewal).await {
                    Ok(()) => parent = serial,
                    Err(StoreError::RenewedFromRevoked) => return,
                    Err(e) => panic!("renewal {serial}: {e}"),
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let revoked = b
        .revoke_certificate(7, at(300), Box::new(|_| Vec::new()))
        .await
        .expect("revoke");
    assert_eq!(revoked.first().map(|c| c.serial), Some(7));
    for chain in chains {
        chain.await.expect("join");
    }
    let certificates = a.task_certificates(&task_id).await.expect("read");
    for cert in &certificates {
        assert_eq!(
            cert.revoked_at,
            Some(300),
            "serial {} outlived its root",
            cert.serial
        );
    }
    assert_eq!(
        revoked.len(),
        certificates.len(),
        "the revocation returns every certificate it revoked"
    );
}

/// A retirement racing issuances by the retiring key on another replica: either the
/// retirement sees a certificate valid past its guard and is refused, or it commits and
/// every issuance that comes after is refused; never a retired key with a certificate
/// valid past the guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retirement_and_issuances_by_its_key_on_another_replica_never_both_commit() {
    let (_database, a, b) = two_replicas().await;
    let new_key = |state| {
        new_key_record(
            "pass",
            KeyAlgorithm::Ed25519,
            crate::store::KeyKind::User,
            state,
            1,
            &mut OsRng,
        )
        .expect("key")
    };
    let (old, new) = (new_key(KeyState::Retiring), new_key(KeyState::Active));
    a.change_keyring(&KeyringChange {
        new_keys: vec![old.clone(), new],
        ..KeyringChange::at(at(1))
    })
    .await
    .expect("keys");
    let mut issuances = Vec::new();
    for n in 1..=20_i64 {
        let (store, key_id) = (a.clone(), old.id.clone());
        issuances.push(tokio::spawn(async move {
            let mut late = issuance(&key_id, n, None, None);
            late.certificate.valid_before = 120;
            store.record_issuance(late).await
        }));
    }
    let retire = KeyringChange {
        transitions: vec![crate::store::KeyTransition {
            id: old.id.clone(),
            from: KeyState::Retiring,
            to: KeyState::Retired,
            at: 110,
            unless_valid_after: Some(110),
        }],
        ..KeyringChange::at(at(110))
    };
    let retired = b.change_keyring(&retire).await;
    let mut issued = 0;
    for call in issuances {
        match call.await.expect("join") {
            Ok(()) => issued += 1,
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("issuance: {e}"),
        }
    }
    let state = b
        .ca_keys()
        .await
        .expect("keys")
        .into_iter()
        .find(|k| k.id == old.id)
        .expect("old key")
        .state;
    match retired {
        Ok(()) => {
            assert_eq!(state, KeyState::Retired);
            assert_eq!(
                issued, 0,
                "a certificate valid past the guard of a retired key"
            );
        }
        Err(StoreError::Conflict(_)) => {
            assert_eq!(state, KeyState::Retiring);
            assert!(issued > 0, "refused with no certificate in the way");
        }
        Err(e) => panic!("retire: {e}"),
    }
}

/// Migrations run again, or by several processes at once, change nothing: the migrator's
/// advisory lock lets one apply them and the others find them applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_twice_or_together_are_harmless() {
    let database = ScratchDatabase::create().await;
    let opened = open_together(4, &database).await;
    for store in &opened {
        store.ping().await.expect("ping");
    }
    let pool = &opened[0].pool;
    super::migrate::migrate(pool).await.expect("again");
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .expect("count");
    assert_eq!(
        applied,
        i64::try_from(super::migrate::count()).expect("few")
    );
    // The schema is whole: a store opened after them works.
    let key_id = with_active_key(&opened[1]).await;
    opened[2]
        .record_issuance(issuance(&key_id, 1, None, Some("t")))
        .await
        .expect("issue");
}

/// `store::migrate` says what it applied: everything on a fresh database, nothing the
/// second time, and of several run at once, each migration is reported by exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_reports_each_migration_once() {
    let fresh = ScratchDatabase::create().await;
    let applied = crate::store::migrate(&fresh.options)
        .await
        .expect("migrate");
    let versions: Vec<i64> = applied.iter().map(|m| m.version).collect();
    let every: Vec<i64> = (1..=i64::try_from(super::migrate::count()).expect("few")).collect();
    assert_eq!(versions, every);
    assert_eq!(applied[0].description, "init");
    assert_eq!(
        crate::store::migrate(&fresh.options).await.expect("again"),
        []
    );

    let together = ScratchDatabase::create().await;
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let options = together.options.clone();
        running.spawn(async move { crate::store::migrate(&options).await });
    }
    let mut reported: Vec<i64> = Vec::new();
    while let Some(done) = running.join_next().await {
        reported.extend(
            done.expect("join")
                .expect("migrate")
                .iter()
                .map(|m| m.version),
        );
    }
    reported.sort_unstable();
    assert_eq!(reported, every);
}

/// `count` stores opened on `database` at once.
async fn open_together(count: usize, database: &ScratchDatabase) -> Vec<PgStore> {
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..count {
        let options = database.options.clone();
        opening.spawn(async move { PgStore::open(&options, None).await });
    }
    let mut stores = Vec::new();
    while let Some(opened) = opening.join_next().await {
        stores.push(opened.expect("join").expect("open"));
    }
    stores
}

/// The revocation feed's queries and the renewal walk can read their partial indexes
/// (the planner prefers a scan of a table this small; with scans off, the plan shows
/// whether the index matches the query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_and_renewal_queries_match_their_partial_indexes() {
    let (_database, a, _b) = two_replicas().await;
    let key_id = with_active_key(a.as_ref()).await;
    for serial in 1..=3 {
        a.record_issuance(issuance(&key_id, serial, None, None))
            .await
            .expect("issue");
    }
    let mut tx = a.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .expect("set");
    for (sql, index) in [
        (super::tasks::SQL_FEED_TASKS, "tasks_ended_expires_at"),
        (
            super::tasks::SQL_FEED_CERTIFICATES,
            "certificates_revoked_valid_before",
        ),
        (
            super::tasks::SQL_LIVE_RENEWAL_TREE,
            "certificates_renewed_from",
        ),
    ] {
        let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN {sql}")))
            .bind(10_i64)
            .fetch_all(&mut *tx)
            .await
            .expect("plan");
        assert!(
            plan.iter().any(|step| step.contains(index)),
            "{sql} should read {index}: {plan:#?}"
        );
    }
    tx.rollback().await.expect("rollback");
}

/// The audit log refuses edits and deletes outside a prune, from any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_append_only_in_the_database() {
    let (_database, a, _b) = two_replicas().await;
    a.append_audit(
        &AuditEntry::new(event::CA_KEY_ROTATED, Outcome::Success),
        at(1),
    )
    .await
    .expect("append");
    for sql in [
        "UPDATE audit_events SET reason = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ] {
        let refused = sqlx::query(sql).execute(&a.pool).await;
        assert!(refused.is_err(), "{sql} was allowed");
    }
    assert_eq!(verified_length(a.as_ref()).await, 1);
}

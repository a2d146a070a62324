//! The audit log end to end, against a real CA (in process on port 0, or the real `writ`
//! binary), a real test IdP and real files: one correctly shaped record per API outcome;
//! `writ admin audit verify` on clean and tampered logs (rows edited, deleted, reordered,
//! the tail cut off, history rewritten — tampered with straight in the SQLite file, the
//! append-only triggers dropped first as an attacker would); no issued certificate without
//! its record after `kill -9` during a burst; 503 and no certificate on a read-only or full
//! database; export (JSON Lines, OCSF, `--since`, `--follow`), trails, signed checkpoints,
//! pruning, and sinks that neither skip nor repeat across a crash.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::agents::{World, policies};
use common::ca::{TestCa, certificate_request};
use common::idp::{Key, TestIdp, sign_with};
use common::{http, now, public_key, ssh_keygen};
use serde_json::{Value, json};
use writ::audit::{AuditRecord, Outcome, event};

/// Longest any wait for an observable condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

impl World {
    fn post_raw(&self, path: &str, token: &str, body: &str) -> http::Response {
        http::post_raw(&format!("{}{path}", self.ca.url), Some(token), body)
    }

    fn authorize(&self, certificate: &str, login: &str, phase: &str, sub: &str) -> http::Response {
        let blob = certificate.split_whitespace().nth(1).expect("blob");
        self.post(
            "/v1/authorize",
            &self.token(sub),
            json!({"login": login, "certificate": blob, "host": "web-01.prod.example.com", "phase": phase}),
        )
    }

    fn config(&self) -> PathBuf {
        self.ca.dir().join("writ.toml")
    }

    /// `writ admin --config … audit ARGS`
    fn audit_cli(&self, args: &[&str]) -> Output {
        writ_admin(&self.config(), "audit", args)
    }
}

/// Run `writ admin --config CONFIG GROUP ARGS…` (the real binary).
fn writ_admin(config: &Path, group: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("admin")
        .arg("--config")
        .arg(config)
        .arg(group)
        .args(args)
        .output()
        .expect("run writ admin")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn both(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Parse JSON Lines.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line ({e}): {l}")))
        .collect()
}

/// Events that are refusals.
fn is_refusal(name: &str) -> bool {
    [
        event::TOKEN_REJECTED,
        event::CERT_DENIED,
        event::TASK_DENIED,
        event::CERT_USE_DENIED,
    ]
    .contains(&name)
}

/// What every record written for an API request looks like.
fn assert_shaped(r: &AuditRecord) {
    let e = &r.entry;
    assert_eq!(r.time.len(), 24, "time {:?}", r.time);
    assert!(r.time.ends_with('Z'), "time {:?}", r.time);
    time::OffsetDateTime::parse(&r.time, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 time");
    assert_eq!(r.hash.len(), 64);
    assert!(r.hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        e.outcome,
        Some(if is_refusal(&e.event) {
            Outcome::Failure
        } else {
            Outcome::Success
        }),
        "{e:?}"
    );
    assert_eq!(e.source_ip.as_deref(), Some("127.0.0.1"), "{e:?}");
    assert!(
        e.request_id
            .as_deref()
            .is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())),
        "{e:?}"
    );
    if e.outcome == Some(Outcome::Failure) {
        assert!(e.reason.is_some(), "a refusal names its reason: {e:?}");
    }
    if let Some(serial) = &e.serial {
        assert!(serial.parse::<u64>().is_ok_and(|s| s > 0), "{e:?}");
    }
    if let Some(task) = &e.task_id {
        assert!(writ::profile::is_valid_task_id(task), "{e:?}");
    }
}

/// Follows the log: what each step appended.
struct Tail {
    seen: usize,
}

impl Tail {
    fn new(ca: &TestCa) -> Tail {
        Tail {
            seen: ca.audit().len(),
        }
    }

    /// The records appended since the last call (leaving out `ca.key.*` records of the
    /// keyring's own background maintenance), checked to be exactly `expected`.
    fn expect(&mut self, ca: &TestCa, what: &str, expected: &[&str]) -> Vec<AuditRecord> {
        let log = ca.audit();
        let new: Vec<AuditRecord> = log[self.seen..]
            .iter()
            .filter(|r| !r.entry.event.starts_with("ca.key."))
            .cloned()
            .collect();
        self.seen = log.len();
        let names: Vec<&str> = new.iter().map(|r| r.entry.event.as_str()).collect();
        assert_eq!(names, expected, "{what}: records {new:#?}");
        for r in &new {
            assert_shaped(r);
        }
        // Records of one request share its request id.
        let ids: BTreeSet<_> = new.iter().map(|r| r.entry.request_id.clone()).collect();
        assert!(
            ids.len() <= 1,
            "{what}: one request, one request id: {new:#?}"
        );
        new
    }

    /// One refusal of `event` whose reason starts with `code`.
    fn refusal(&mut self, ca: &TestCa, event_name: &str, code: &str) -> AuditRecord {
        let records = self.expect(ca, code, &[event_name]);
        let reason = records[0].entry.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with(code),
            "{event_name}: reason {reason:?}, want {code}"
        );
        records[0].clone()
    }
}

#[test]
fn every_api_outcome_leaves_exactly_one_correctly_shaped_record() {
    let w = World::start("");
    let pubkey = public_key(&w.key);

    // CA keys created at start: one ca.key.created per stored key, naming it.
    let keys = common::runtime()
        .block_on(w.ca.state.store.ca_keys())
        .expect("keys");
    let created: Vec<AuditRecord> = w.ca.audit_events(event::CA_KEY_CREATED);
    assert_eq!(created.len(), keys.len(), "{created:#?}");
    for key in &keys {
        assert_eq!(
            created
                .iter()
                .filter(|r| r.entry.ca_fingerprint.as_deref() == Some(key.fingerprint.as_str()))
                .count(),
            1,
            "one ca.key.created for {}",
            key.fingerprint
        );
    }
    let mut tail = Tail::new(&w.ca);

    // Issued: task.created + cert.issued, tied to the response.
    let token = w.token("agent-1");
    let body = certificate_request(&pubkey, &["deploy"], &["web-*.prod.example.com"], Some(120));
    let first = w.ca.request_certificate(Some(&token), &body);
    assert_eq!(first.status, 201, "{}", first.text);
    let first = first.json();
    let task_id = first["task_id"].as_str().expect("task id").to_owned();
    let serial1 = first["serial"].as_str().expect("serial").to_owned();
    let records = tail.expect(
        &w.ca,
        "issuance",
        &[event::TASK_CREATED, event::CERT_ISSUED],
    );
    for r in &records {
        assert_eq!(r.entry.issuer.as_deref(), Some("test"));
        assert_eq!(r.entry.subject.as_deref(), Some("agent-1"));
        assert_eq!(r.entry.policy.as_deref(), Some("agents"));
        assert_eq!(r.entry.task_id.as_deref(), Some(task_id.as_str()));
        assert_eq!(r.entry.logins, ["deploy"]);
        assert_eq!(r.entry.hosts, ["web-*.prod.example.com"]);
    }
    // The purpose has its own field (format 2), not the refusal/revocation `reason`.
    let created = &records[0].entry;
    assert_eq!(created.purpose.as_deref(), Some("integration test"));
    assert_eq!(created.reason, None);
    let issued = &records[1].entry;
    assert_eq!(issued.serial.as_deref(), Some(serial1.as_str()));
    assert_eq!(
        issued.ca_fingerprint.as_deref(),
        first["ca_fingerprint"].as_str()
    );
    let fingerprint = ssh_key::PublicKey::from_openssh(&pubkey)
        .expect("key")
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    assert_eq!(
        issued.key_fingerprint.as_deref(),
        Some(fingerprint.as_str())
    );

    // Token rejected, per reason (the same token again is a replay).
    let replayed = w.ca.request_certificate(Some(&token), &body);
    assert_eq!(replayed.status, 401);
    tail.refusal(&w.ca, event::TOKEN_REJECTED, "token_replayed");
    let t = now();
    let mut expired = w.idp.claims("agent-1");
    expired["iat"] = json!(t - 900);
    expired["nbf"] = json!(t - 900);
    expired["exp"] = json!(t - 600);
    let mut wrong_aud = w.idp.claims("agent-1");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = w.idp.claims("agent-1");
    wrong_iss["iss"] = json!("https://evil.example.com");
    for (token, code) in [
        (None, "token_missing"),
        (Some("not-a-jwt".to_owned()), "token_malformed"),
        (Some(w.idp.sign(Key::Rsa, &expired)), "token_expired"),
        (Some(w.idp.sign(Key::Rsa, &wrong_aud)), "wrong_audience"),
        (Some(w.idp.sign(Key::Rsa, &wrong_iss)), "unknown_issuer"),
        (
            Some(sign_with(
                Key::RsaOther,
                Key::Rsa.kid(),
                &w.idp.claims("agent-1"),
            )),
            "bad_signature",
        ),
        (
            Some(w.idp.sign(Key::RsaOther, &w.idp.claims("agent-1"))),
            "unknown_key",
        ),
    ] {
        let response = w.ca.request_certificate(token.as_deref(), &body);
        assert_eq!(response.status, 401, "{code}: {}", response.text);
        assert_eq!(response.error_code(), code);
        let record = tail.refusal(&w.ca, event::TOKEN_REJECTED, code);
        if let Some(token) = token {
            let text = serde_json::to_string(&record).expect("json");
            assert!(
                !text.contains(&token),
                "{code}: the token leaked into the log"
            );
        }
    }

    // Certificate refused, per reason: policy, input, key.
    let weak = ssh_keygen(w.dir.path(), "weak", &["-t", "rsa", "-b", "1024"]);
    let url = format!("{}/v1/certificates", w.ca.url);
    for (body, status, code) in [
        (
            certificate_request(&pubkey, &["root"], &["a.prod.example.com"], None).to_string(),
            403,
            "login_not_allowed",
        ),
        (
            certificate_request(&pubkey, &["deploy"], &["db.staging.example.com"], None)
                .to_string(),
            403,
            "host_not_allowed",
        ),
        (
            certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], Some(301))
                .to_string(),
            403,
            "ttl_exceeds_max",
        ),
        (
            certificate_request(
                &public_key(&weak),
                &["deploy"],
                &["a.prod.example.com"],
                None,
            )
            .to_string(),
            422,
            "weak_key",
        ),
        (
            certificate_request(
                "ssh-ed25519 AAAAnope",
                &["deploy"],
                &["a.prod.example.com"],
                None,
            )
            .to_string(),
            400,
            "invalid_public_key",
        ),
        ("{not json".to_owned(), 400, "invalid_json"),
        (
            format!("{{\"public_key\": \"{}\"}}", "A".repeat(70 * 1024)),
            413,
            "body_too_large",
        ),
    ] {
        let response = http::post_raw(&url, Some(&w.token("agent-1")), &body);
        assert_eq!(response.status, status, "{code}: {}", response.text);
        assert_eq!(response.error_code(), code);
        let record = tail.refusal(&w.ca, event::CERT_DENIED, code);
        assert_eq!(record.entry.subject.as_deref(), Some("agent-1"));
    }
    let response = w.ca.request_certificate(
        Some(&w.token("intruder")),
        &certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], None),
    );
    assert_eq!(response.status, 403);
    let record = tail.refusal(&w.ca, event::CERT_DENIED, "no_matching_policy");
    assert_eq!(record.entry.subject.as_deref(), Some("intruder"));

    // Another certificate for the task: issued, refused to a stranger, refused bad input.
    let renew_path = format!("/v1/tasks/{task_id}/certificates");
    let key2 = ssh_keygen(w.dir.path(), "agent2", &["-t", "ed25519"]);
    let renewed = w.post(
        &renew_path,
        &w.token("agent-1"),
        json!({"public_key": public_key(&key2), "ttl_seconds": 60}),
    );
    assert_eq!(renewed.status, 201, "{}", renewed.text);
    let renewed = renewed.json();
    let serial2 = renewed["serial"].as_str().expect("serial").to_owned();
    let records = tail.expect(&w.ca, "renewal", &[event::CERT_ISSUED]);
    assert_eq!(records[0].entry.serial.as_deref(), Some(serial2.as_str()));
    assert_eq!(records[0].entry.task_id.as_deref(), Some(task_id.as_str()));
    let stranger = w.post(
        &renew_path,
        &w.token("agent-2"),
        json!({"public_key": pubkey}),
    );
    assert_eq!(stranger.status, 404);
    let record = tail.refusal(&w.ca, event::CERT_DENIED, "task_not_found");
    assert_eq!(record.entry.task_id.as_deref(), Some(task_id.as_str()));
    assert_eq!(record.entry.subject.as_deref(), Some("agent-2"));
    let garbage = w.post_raw(&renew_path, &w.token("agent-1"), "{nope");
    assert_eq!(garbage.status, 400);
    tail.refusal(&w.ca, event::CERT_DENIED, "invalid_json");

    // Reading a task: the owner's read is not recorded, a stranger's refusal is.
    assert_eq!(
        w.get(&format!("/v1/tasks/{task_id}"), &w.token("agent-1"))
            .status,
        200
    );
    tail.expect(&w.ca, "owner reads", &[]);
    assert_eq!(
        w.get(&format!("/v1/tasks/{task_id}"), &w.token("agent-2"))
            .status,
        404
    );
    let record = tail.refusal(&w.ca, event::TASK_DENIED, "task_not_found");
    assert_eq!(record.entry.task_id.as_deref(), Some(task_id.as_str()));

    // Use on a host: a check is not a use; a session is, once.
    let cert1 = first["certificate"].as_str().expect("cert").to_owned();
    let check = w.authorize(&cert1, "deploy", "check", "host:web-01");
    assert_eq!(check.json()["allow"], true);
    tail.expect(&w.ca, "check", &[]);
    let session = w.authorize(&cert1, "deploy", "session", "host:web-01");
    assert_eq!(session.json()["allow"], true, "{}", session.text);
    let used = tail.expect(&w.ca, "session", &[event::CERT_USED]);
    let e = &used[0].entry;
    assert_eq!(e.host.as_deref(), Some("web-01.prod.example.com"));
    assert_eq!(e.serial.as_deref(), Some(serial1.as_str()));
    assert_eq!(e.task_id.as_deref(), Some(task_id.as_str()));
    assert_eq!(e.logins, ["deploy"]);
    assert_eq!(e.key_fingerprint.as_deref(), Some(fingerprint.as_str()));
    assert_eq!(
        e.ca_fingerprint.as_deref(),
        first["ca_fingerprint"].as_str()
    );
    assert_eq!(e.subject.as_deref(), Some("host:web-01"));
    let wrong_login = w.authorize(&cert1, "root", "session", "host:web-01");
    assert_eq!(wrong_login.json()["allow"], false);
    tail.refusal(&w.ca, event::CERT_USE_DENIED, "login_not_in_task");
    let not_a_host = w.authorize(&cert1, "deploy", "session", "agent-1");
    assert_eq!(not_a_host.status, 403);
    tail.refusal(&w.ca, event::CERT_USE_DENIED, "host_not_authorized");
    let bad_phase = w.authorize(&cert1, "deploy", "later", "host:web-01");
    assert_eq!(bad_phase.status, 400);
    tail.refusal(&w.ca, event::CERT_USE_DENIED, "invalid_phase");

    // One certificate revoked; again (409); an unknown one (404).
    let revoke2 = format!("/v1/certificates/{serial2}/revoke");
    let response = w.post(
        &revoke2,
        &w.token("agent-1"),
        json!({"reason": "key leaked"}),
    );
    assert_eq!(response.status, 200, "{}", response.text);
    let records = tail.expect(&w.ca, "revoke one", &[event::CERT_REVOKED]);
    assert_eq!(records[0].entry.serial.as_deref(), Some(serial2.as_str()));
    assert_eq!(records[0].entry.reason.as_deref(), Some("key leaked"));
    let again = w.post(&revoke2, &w.token("agent-1"), json!({}));
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.error_code(), "certificate_revoked");
    let record = tail.refusal(&w.ca, event::TASK_DENIED, "certificate_revoked");
    assert_eq!(record.entry.serial.as_deref(), Some(serial2.as_str()));
    assert_eq!(record.entry.task_id.as_deref(), Some(task_id.as_str()));
    let unknown = w.post(
        "/v1/certificates/12345/revoke",
        &w.token("agent-1"),
        json!({}),
    );
    assert_eq!(unknown.status, 404);
    tail.refusal(&w.ca, event::TASK_DENIED, "certificate_not_found");

    // Completed: task.completed + cert.revoked for the one live certificate; twice: 409.
    let complete = format!("/v1/tasks/{task_id}/complete");
    let done = w.post(&complete, &w.token("agent-1"), json!({"reason": "done"}));
    assert_eq!(done.status, 200, "{}", done.text);
    let records = tail.expect(
        &w.ca,
        "completion",
        &[event::TASK_COMPLETED, event::CERT_REVOKED],
    );
    assert_eq!(records[1].entry.serial.as_deref(), Some(serial1.as_str()));
    let twice = w.post(&complete, &w.token("agent-1"), json!({}));
    assert_eq!(twice.status, 409);
    tail.refusal(&w.ca, event::TASK_DENIED, "task_not_active");
    let bad_body = w.post_raw(&complete, &w.token("agent-1"), "[1,2");
    assert_eq!(bad_body.status, 400);
    tail.refusal(&w.ca, event::TASK_DENIED, "invalid_json");
    // The used certificate is refused now, and that is recorded.
    let late = w.authorize(&cert1, "deploy", "session", "host:web-01");
    assert_eq!(late.json()["allow"], false);
    tail.refusal(&w.ca, event::CERT_USE_DENIED, "serial_revoked");

    // Revoked by an admin; refused to the owner and without a reason.
    let second = w.open_task();
    tail.expect(
        &w.ca,
        "second task",
        &[event::TASK_CREATED, event::CERT_ISSUED],
    );
    let revoke = format!(
        "/v1/tasks/{}/revoke",
        second["task_id"].as_str().expect("id")
    );
    let by_owner = w.post(&revoke, &w.token("agent-1"), json!({"reason": "mine"}));
    assert_eq!(by_owner.status, 403);
    tail.refusal(&w.ca, event::TASK_DENIED, "admin_required");
    let no_reason = w.post(&revoke, &w.token("admin-1"), json!({}));
    assert_eq!(no_reason.status, 400);
    tail.refusal(&w.ca, event::TASK_DENIED, "reason_required");
    let revoked = w.post(
        &revoke,
        &w.token("admin-1"),
        json!({"reason": "incident 7"}),
    );
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    let records = tail.expect(
        &w.ca,
        "admin revocation",
        &[event::TASK_REVOKED, event::CERT_REVOKED],
    );
    assert_eq!(records[0].entry.subject.as_deref(), Some("admin-1"));
    assert_eq!(records[0].entry.reason.as_deref(), Some("incident 7"));
    assert_eq!(
        records[1].entry.serial.as_deref(),
        second["serial"].as_str()
    );

    // CA rotated (writ admin ca rotate): one ca.key.rotated, and only ca.key.* records.
    let before = w.ca.audit().len();
    let rotated = writ_admin(&w.config(), "ca", &["rotate", "--force"]);
    assert!(rotated.status.success(), "{}", both(&rotated));
    let new: Vec<AuditRecord> = w.ca.audit()[before..].to_vec();
    assert!(
        new.iter().all(|r| r.entry.event.starts_with("ca.key.")),
        "{new:#?}"
    );
    let rotations: Vec<&AuditRecord> = new
        .iter()
        .filter(|r| r.entry.event == event::CA_KEY_ROTATED)
        .collect();
    assert_eq!(rotations.len(), 1, "{new:#?}");
    assert_eq!(rotations[0].entry.outcome, Some(Outcome::Success));
    assert_eq!(rotations[0].entry.issuer.as_deref(), Some("local-admin"));

    // And the whole log verifies.
    let verified = w.audit_cli(&["verify"]);
    assert!(verified.status.success(), "{}", both(&verified));
    assert!(
        stdout(&verified).contains("audit log OK"),
        "{}",
        both(&verified)
    );
}

/// A consistent copy of the CA's database and checkpoint file, with a configuration
/// naming it, for an attacker to edit.
fn copy_log(w: &World, name: &str) -> (PathBuf, PathBuf) {
    let dir = w.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let db = dir.join("writ.db");
    common::database(&w.ca.db_path())
        .execute(&format!("VACUUM INTO '{}'", db.display()), [])
        .expect("copy db");
    let checkpoints = w.ca.dir().join("audit-checkpoints.jsonl");
    if checkpoints.exists() {
        std::fs::copy(&checkpoints, dir.join("audit-checkpoints.jsonl")).expect("copy");
    }
    let text = std::fs::read_to_string(w.config()).expect("config");
    let text = text.replace(
        &w.ca.db_path().display().to_string(),
        &db.display().to_string(),
    );
    let config = dir.join("writ.toml");
    std::fs::write(&config, text).expect("write config");
    (config, db)
}

/// Run `statements` on the database file directly.
fn tamper(db: &Path, statements: &[String]) {
    let conn = common::database(db);
    for sql in statements {
        conn.execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// `verify` on a copy must fail naming `seq`.
fn assert_broken_at(config: &Path, seq: i64, why: &str) -> String {
    let out = writ_admin(config, "audit", &["verify"]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{why}: {text}");
    assert!(
        text.contains(&format!("audit log BROKEN at seq {seq}:")),
        "{why}: want first bad seq {seq}: {text}"
    );
    let json = writ_admin(config, "audit", &["verify", "--json"]);
    let report: Value = serde_json::from_slice(&json.stdout).expect("verify --json");
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad_seq"], seq, "{why}: {report}");
    text
}

#[test]
fn verify_passes_on_a_clean_log_and_names_the_first_bad_record() {
    let w = World::start("");
    for _ in 0..3 {
        w.open_task();
    }
    // A signed checkpoint of the head (in the database and the checkpoint file).
    let made = w.audit_cli(&["checkpoint"]);
    assert!(made.status.success(), "{}", both(&made));
    let checkpointed = w.ca.audit().last().expect("head").seq;
    assert!(
        stdout(&made).contains(&format!("seq {checkpointed} ")),
        "{}",
        both(&made)
    );
    w.open_task();
    let head = w.ca.audit().last().expect("head").seq;
    assert_eq!(head, checkpointed + 2);

    let clean = w.audit_cli(&["verify"]);
    assert!(clean.status.success(), "{}", both(&clean));
    let text = stdout(&clean);
    assert!(
        text.contains(&format!("audit log OK: records seq 1 to {head}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("newest at seq {checkpointed}")),
        "{text}"
    );
    let fast = w.audit_cli(&["verify", "--from-checkpoint"]);
    assert!(fast.status.success(), "{}", both(&fast));
    assert!(
        stdout(&fast).contains(&format!("records seq {checkpointed} to {head}")),
        "{}",
        both(&fast)
    );

    // The triggers stop casual edits and deletions outright.
    let (config, db) = copy_log(&w, "guarded");
    for sql in [
        "UPDATE audit_events SET subject = 'mallory' WHERE seq = 3",
        "DELETE FROM audit_events WHERE seq = 3",
    ] {
        let result = common::database(&db).execute(sql, []);
        let error = result.expect_err(sql).to_string();
        assert!(error.contains("append-only"), "{sql}: {error}");
    }
    let copy_ok = writ_admin(&config, "audit", &["verify"]);
    assert!(
        copy_ok.status.success(),
        "a faithful copy verifies: {}",
        both(&copy_ok)
    );

    // An edited row.
    let (config, db) = copy_log(&w, "edited");
    tamper(
        &db,
        &[
            "DROP TRIGGER audit_events_no_update".into(),
            "UPDATE audit_events SET subject = 'mallory' WHERE seq = 3".into(),
        ],
    );
    assert_broken_at(&config, 3, "edited");

    // A deleted row.
    let (config, db) = copy_log(&w, "deleted");
    tamper(
        &db,
        &[
            "DROP TRIGGER audit_events_no_delete".into(),
            "DELETE FROM audit_events WHERE seq = 4".into(),
        ],
    );
    let text = assert_broken_at(&config, 4, "deleted");
    assert!(text.contains("missing"), "{text}");

    // Two rows swapped.
    let (config, db) = copy_log(&w, "reordered");
    tamper(
        &db,
        &[
            "DROP TRIGGER audit_events_no_update".into(),
            "UPDATE audit_events SET seq = -1 WHERE seq = 3".into(),
            "UPDATE audit_events SET seq = 3 WHERE seq = 4".into(),
            "UPDATE audit_events SET seq = 4 WHERE seq = -1".into(),
        ],
    );
    assert_broken_at(&config, 3, "reordered");

    // The tail cut off (into the checkpointed part), the database's checkpoints deleted
    // too: the checkpoint file still knows.
    let (config, db) = copy_log(&w, "truncated");
    let cut = checkpointed - 1;
    tamper(
        &db,
        &[
            "DROP TRIGGER audit_events_no_delete".into(),
            format!("DELETE FROM audit_events WHERE seq >= {cut}"),
            "DELETE FROM audit_checkpoints".into(),
        ],
    );
    let text = assert_broken_at(&config, cut, "truncated");
    assert!(text.contains("cut off the end"), "{text}");

    // History rewritten from seq 2 on with recomputed hashes: the chain holds, the
    // signed checkpoint does not.
    let (config, db) = copy_log(&w, "rewritten");
    let records = common::runtime().block_on(async {
        let store = writ::store::open(&format!("sqlite://{}", db.display()))
            .await
            .expect("open copy");
        store.audit_records(0, i64::MAX).await.expect("records")
    });
    let mut statements = vec!["DROP TRIGGER audit_events_no_update".to_owned()];
    let mut prev = records[0].hash.clone();
    for r in &records[1..] {
        let mut entry = r.entry.clone();
        if r.seq == 2 {
            entry.subject = Some("mallory".into());
        }
        let hash = writ::audit::chain_hash(r.seq, &r.time, &entry, &prev);
        statements.push(format!(
            "UPDATE audit_events SET subject = {}, prev_hash = '{prev}', hash = '{hash}' WHERE seq = {}",
            entry
                .subject
                .as_deref()
                .map_or("NULL".to_owned(), |s| format!("'{s}'")),
            r.seq
        ));
        prev = hash;
    }
    tamper(&db, &statements);
    let out = writ_admin(&config, "audit", &["verify"]);
    assert_eq!(out.status.code(), Some(1), "rewritten: {}", both(&out));
    assert!(
        both(&out).contains("differs from the signed checkpoint"),
        "{}",
        both(&out)
    );

    // A checkpoint whose hash was altered no longer verifies.
    let (config, _db) = copy_log(&w, "forged-checkpoint");
    let file = config.with_file_name("audit-checkpoints.jsonl");
    let forged = std::fs::read_to_string(&file)
        .expect("checkpoint file")
        .replacen("\"hash\":\"", "\"hash\":\"00", 1);
    std::fs::write(&file, forged).expect("write");
    let out = writ_admin(&config, "audit", &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        both(&out).contains("signature does not match"),
        "{}",
        both(&out)
    );
}

/// A real `writ serve` process.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    /// Start `writ serve --config CONFIG` and wait until /readyz answers.
    fn start(config: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_writ"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .env("WRIT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start writ serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let mut seen = String::new();
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("writ serve did not say where it listens:\n{seen}"));
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("listening")
                && let Some(at) = line.find("127.0.0.1:")
            {
                let digits: String = line[at + 10..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                break format!("127.0.0.1:{digits}");
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let url = format!("http://{addr}");
        loop {
            if let Ok(mut r) = ureq::get(&format!("{url}/readyz")).call()
                && r.status() == 200
            {
                let _ = r.body_mut().read_to_string();
                break;
            }
            assert!(Instant::now() < deadline, "writ serve never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        Serve { child, url }
    }

    /// SIGKILL, and reap it.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Configuration text for `writ serve` in `dir` with the database at `db`, trusting `idp`.
fn serve_config(dir: &Path, db: &Path, idp: &TestIdp, extra: &str) -> PathBuf {
    let pass = dir.join("ca.pass");
    std::fs::write(&pass, "test passphrase\n").expect("passphrase");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\nurl = \"sqlite://{db}\"\n\n\
         [ca]\npassphrase_file = \"{pass}\"\n\n\
         [[issuer]]\nname = \"test\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\naudiences = [\"writ\"]\n\n\
         [[policy]]\nissuer = \"test\"\n{policies}\n{extra}\n",
        db = db.display(),
        pass = pass.display(),
        policies = policies(),
        iss = idp.issuer,
        jwks = idp.jwks_url(),
    );
    let path = dir.join("writ.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// POST /v1/certificates without panicking on a dead server.
fn try_issue(url: &str, token: &str, pubkey: &str) -> Result<(u16, Value), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let body = certificate_request(pubkey, &["deploy"], &["web-*.prod.example.com"], Some(60));
    let mut response = agent
        .post(&format!("{url}/v1/certificates"))
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let json = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    Ok((status, json))
}

/// Serials of every `cert.issued` record, from `writ admin audit export`.
fn exported_serials(config: &Path) -> BTreeSet<String> {
    let out = writ_admin(config, "audit", &["export", "--format", "jsonl"]);
    assert!(out.status.success(), "{}", both(&out));
    json_lines(&stdout(&out))
        .iter()
        .filter(|r| r["event"] == event::CERT_ISSUED)
        .map(|r| r["serial"].as_str().expect("serial").to_owned())
        .collect()
}

#[test]
fn kill_9_during_a_burst_of_issuance_loses_no_record_of_a_certificate_a_client_received() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = serve_config(dir.path(), &dir.path().join("writ.db"), &idp, "");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let pubkey = public_key(&key);
    let mut serve = Serve::start(&config);

    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<()>();
    let idp = Arc::new(idp);
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (received, stop, tx, idp) = (
                Arc::clone(&received),
                Arc::clone(&stop),
                tx.clone(),
                Arc::clone(&idp),
            );
            let (url, pubkey) = (serve.url.clone(), pubkey.clone());
            std::thread::spawn(move || {
                let mut failures = 0;
                while !stop.load(Ordering::SeqCst) {
                    let token = idp.token(Key::Ed25519, "agent-1");
                    match try_issue(&url, &token, &pubkey) {
                        Ok((201, body)) => {
                            let serial = body["serial"].as_str().expect("serial").to_owned();
                            received.lock().expect("lock").push(serial);
                            let _ = tx.send(());
                        }
                        Ok((status, body)) => panic!("unexpected {status}: {body}"),
                        // The server is gone: every later request fails too.
                        Err(_) => {
                            failures += 1;
                            if failures > 3 {
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    drop(tx);
    // Kill the CA in the middle of the burst: after 40 certificates, with six clients
    // still sending.
    for _ in 0..40 {
        rx.recv_timeout(PATIENCE).expect("certificates keep coming");
    }
    serve.kill9();
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.join().expect("client thread");
    }
    let received = received.lock().expect("lock").clone();
    assert!(received.len() >= 40);

    // Every certificate a client holds has its record in the log.
    let recorded = exported_serials(&config);
    let missing: Vec<&String> = received.iter().filter(|s| !recorded.contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "certificates without an audit record: {missing:?}"
    );
    let verified = writ_admin(&config, "audit", &["verify"]);
    assert!(verified.status.success(), "{}", both(&verified));

    // And the CA comes back on the same database.
    let serve = Serve::start(&config);
    let (status, body) = try_issue(&serve.url, &idp.token(Key::Ed25519, "agent-1"), &pubkey)
        .expect("issue after restart");
    assert_eq!(status, 201, "{body}");
    assert!(exported_serials(&config).contains(body["serial"].as_str().expect("serial")));
}

/// Files made immutable (`chattr +i`) until dropped.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(paths: Vec<PathBuf>) -> Immutable {
        for path in &paths {
            let status = Command::new("chattr")
                .arg("+i")
                .arg(path)
                .status()
                .expect("run chattr (e2fsprogs)");
            assert!(
                status.success(),
                "chattr +i {} failed: this test needs root on ext4 or another filesystem with the immutable flag",
                path.display()
            );
        }
        Immutable(paths)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(path).status();
        }
    }
}

#[test]
fn a_read_only_database_makes_issuance_fail_with_503_and_no_certificate() {
    let w = World::start("");
    w.open_task();
    let issued_before = w.ca.audit_events(event::CERT_ISSUED).len();
    // Every database file becomes unwritable under the running CA — what a read-only
    // disk is to an open SQLite handle (root ignores permission bits and a read-only
    // remount refuses while files are open for writing; the immutable flag binds root).
    // (Not the -shm file: SQLite maps it into memory, and a store into an immutable
    // mapping is a SIGBUS, not an error it could report.)
    let files: Vec<PathBuf> = ["writ.db", "writ.db-wal"]
        .iter()
        .map(|f| w.ca.dir().join(f))
        .filter(|p| p.exists())
        .collect();
    let guard = Immutable::set(files);
    let response = w.ca.request_certificate(
        Some(&w.token("agent-1")),
        &certificate_request(
            &public_key(&w.key),
            &["deploy"],
            &["a.prod.example.com"],
            None,
        ),
    );
    assert_eq!(response.status, 503, "{}", response.text);
    assert_eq!(response.error_code(), "audit_unavailable");
    assert!(
        !response.text.contains("certificate\":"),
        "{}",
        response.text
    );
    drop(guard);

    // Writable again: issuance works, and the refused request left nothing behind.
    w.open_task();
    assert_eq!(
        w.ca.audit_events(event::CERT_ISSUED).len(),
        issued_before + 1
    );
    let verified = w.audit_cli(&["verify"]);
    assert!(verified.status.success(), "{}", both(&verified));
}

/// A small tmpfs mounted on a fresh directory until dropped.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(size: &str) -> TinyDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (this test needs root with CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TinyDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fill the filesystem under `dir` with a file until it is full; returns the file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = file.sync_all();
    path
}

#[test]
fn a_full_disk_makes_issuance_fail_with_503_and_no_certificate() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = TinyDisk::mount("8m");
    let config = serve_config(dir.path(), &disk.path().join("writ.db"), &idp, "");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let pubkey = public_key(&key);
    let mut serve = Serve::start(&config);
    let token = || idp.token(Key::Ed25519, "agent-1");
    let (status, _) = try_issue(&serve.url, &token(), &pubkey).expect("issue");
    assert_eq!(status, 201);

    // SQLite reuses WAL space it already holds, so a commit may still fit once the disk
    // is full (and is then durable: fine). Issue until the log needs space it cannot get;
    // from then on every answer is 503 without a certificate.
    let filler = fill(disk.path());
    let mut issued_while_full = 0;
    let refusal = loop {
        let (status, body) = try_issue(&serve.url, &token(), &pubkey).expect("answer");
        if status != 201 {
            break (status, body);
        }
        issued_while_full += 1;
        assert!(
            issued_while_full < 2_000,
            "a full disk never refused issuance"
        );
    };
    let (status, body) = refusal;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "audit_unavailable");
    assert!(body.get("certificate").is_none(), "{body}");

    std::fs::remove_file(&filler).expect("free the disk");
    let (status, body) = try_issue(&serve.url, &token(), &pubkey).expect("issue");
    assert_eq!(status, 201, "{body}");
    serve.kill9();
    // Every certificate handed out has its record; the refused ones left none.
    assert_eq!(exported_serials(&config).len(), 2 + issued_while_full);
    let verified = writ_admin(&config, "audit", &["verify"]);
    assert!(verified.status.success(), "{}", both(&verified));
}

#[test]
fn completion_and_revocation_fail_with_503_when_their_records_cannot_be_written() {
    let w = World::start("");
    let task = w.open_task();
    let task_id = task["task_id"].as_str().expect("id");
    let serial = task["serial"].as_str().expect("serial");
    let block = |on: bool| {
        let sql = if on {
            "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        } else {
            "DROP TRIGGER fail_audit"
        };
        tamper(&w.ca.db_path(), &[sql.to_owned()]);
    };
    block(true);
    for path in [
        format!("/v1/tasks/{task_id}/complete"),
        format!("/v1/certificates/{serial}/revoke"),
    ] {
        let response = w.post(&path, &w.token("agent-1"), json!({"reason": "done"}));
        assert_eq!(response.status, 503, "{path}: {}", response.text);
        assert_eq!(response.error_code(), "audit_unavailable");
        assert!(
            !response.text.contains("disk full"),
            "5xx must not leak internals"
        );
    }
    // Nothing changed: the task is active and its certificate is not revoked.
    let view = w.get(&format!("/v1/tasks/{task_id}"), &w.token("agent-1"));
    let view = view.json();
    assert_eq!(view["state"], "active");
    assert_eq!(view["certificates"][0]["revoked"], false);
    block(false);
    let done = w.post(
        &format!("/v1/tasks/{task_id}/complete"),
        &w.token("agent-1"),
        json!({}),
    );
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(w.ca.audit_events(event::TASK_COMPLETED).len(), 1);
}

#[test]
fn export_as_json_lines_and_ocsf_since_a_seq_or_time_and_following() {
    let w = World::start("");
    let task = w.open_task();
    let cert = task["certificate"].as_str().expect("cert");
    assert_eq!(
        w.authorize(cert, "deploy", "session", "host:web-01").status,
        200
    );
    let _ = w.ca.request_certificate(None, &json!({}));
    let log = w.ca.audit();

    let all = w.audit_cli(&["export", "--format", "jsonl"]);
    assert!(all.status.success(), "{}", both(&all));
    let lines = stdout(&all);
    let exported: Vec<AuditRecord> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("a record per line"))
        .collect();
    assert_eq!(exported, log);
    assert_eq!(
        writ::audit::verify_chain(&exported, writ::audit::GENESIS_HASH),
        Ok(()),
        "an export re-verifies on its own"
    );

    let since = w.audit_cli(&["export", "--format", "jsonl", "--since", "3"]);
    let seqs: Vec<i64> = json_lines(&stdout(&since))
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, (4..=log.len() as i64).collect::<Vec<_>>());
    let at = &log[log.len() - 2];
    let since_time = w.audit_cli(&["export", "--since", &at.time]);
    let first = json_lines(&stdout(&since_time))[0]["seq"].as_i64();
    assert!(first.is_some_and(|s| s <= at.seq), "{}", both(&since_time));
    let bad = w.audit_cli(&["export", "--since", "yesterday"]);
    assert!(!bad.status.success());

    let ocsf = w.audit_cli(&["export", "--format", "ocsf"]);
    assert!(ocsf.status.success(), "{}", both(&ocsf));
    let events = json_lines(&stdout(&ocsf));
    assert_eq!(events.len(), log.len());
    for (event, record) in events.iter().zip(&log) {
        assert_eq!(event["metadata"]["sequence"], record.seq);
        assert_eq!(event["metadata"]["uid"], record.hash.as_str());
        assert_eq!(event["metadata"]["version"], "1.3.0");
        assert_eq!(
            event["unmapped"]["writ"]["event"],
            record.entry.event.as_str()
        );
        let class = event["class_uid"].as_u64().expect("class");
        let want = match record.entry.event.as_str() {
            "token.rejected" | "cert.used" | "cert.use_denied" => 3002,
            _ => 3001,
        };
        assert_eq!(class, want, "{event}");
        assert_eq!(
            event["type_uid"].as_u64(),
            Some(class * 100 + event["activity_id"].as_u64().expect("activity"))
        );
        assert!(
            event["time"]
                .as_i64()
                .is_some_and(|t| t > 1_700_000_000_000)
        );
        let failed = record.entry.outcome == Some(Outcome::Failure);
        assert_eq!(event["status_id"], if failed { 2 } else { 1 });
    }
    let used = events
        .iter()
        .find(|e| e["unmapped"]["writ"]["event"] == event::CERT_USED)
        .expect("cert.used");
    assert_eq!(used["dst_endpoint"]["hostname"], "web-01.prod.example.com");
    assert_eq!(used["user"]["name"], "deploy");
    assert_eq!(used["certificate"]["serial_number"], task["serial"]);

    // --follow prints what commits later.
    let head = log.last().expect("head").seq.to_string();
    let mut follower = Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("admin")
        .arg("--config")
        .arg(w.config())
        .args([
            "audit", "export", "--format", "jsonl", "--follow", "--since", &head,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("export --follow");
    let out = follower.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let later = w.open_task();
    let mut followed = Vec::new();
    while followed.len() < 2 {
        let line = rx.recv_timeout(PATIENCE).expect("followed record");
        followed.push(serde_json::from_str::<Value>(&line).expect("json"));
    }
    assert_eq!(followed[0]["event"], event::TASK_CREATED);
    assert_eq!(followed[1]["event"], event::CERT_ISSUED);
    assert_eq!(followed[1]["serial"], later["serial"]);
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn trail_tells_the_whole_story_of_one_task() {
    let w = World::start("");
    let task = w.open_task();
    let task_id = task["task_id"].as_str().expect("id").to_owned();
    let cert = task["certificate"].as_str().expect("cert");
    let other = w.open_task();
    let renewed = w.post(
        &format!("/v1/tasks/{task_id}/certificates"),
        &w.token("agent-1"),
        json!({"public_key": public_key(&w.key)}),
    );
    assert_eq!(renewed.status, 201);
    assert_eq!(
        w.get(&format!("/v1/tasks/{task_id}"), &w.token("agent-2"))
            .status,
        404
    );
    assert_eq!(
        w.authorize(cert, "deploy", "session", "host:web-01").status,
        200
    );
    assert_eq!(
        w.post(
            &format!("/v1/tasks/{task_id}/complete"),
            &w.token("agent-1"),
            json!({"reason": "rotated the logs"}),
        )
        .status,
        200
    );

    let out = w.audit_cli(&["trail", "--task", &task_id, "--json"]);
    assert!(out.status.success(), "{}", both(&out));
    let records = json_lines(&stdout(&out));
    let names: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().expect("event"))
        .collect();
    assert_eq!(
        names,
        [
            event::TASK_CREATED,
            event::CERT_ISSUED,
            event::CERT_ISSUED,
            event::TASK_DENIED,
            event::CERT_USED,
            event::TASK_COMPLETED,
            event::CERT_REVOKED,
            event::CERT_REVOKED,
        ]
    );
    let seqs: Vec<i64> = records
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "in order: {seqs:?}");
    assert!(
        records.iter().all(|r| r["task_id"] == task_id.as_str()),
        "nothing about the other task {}",
        other["task_id"]
    );

    let text = w.audit_cli(&["trail", "--task", &task_id]);
    let text = stdout(&text);
    assert!(
        text.starts_with(&format!("task {task_id}: owner test / agent-1")),
        "{text}"
    );
    assert!(text.contains("cert.used"), "{text}");
    assert!(text.contains("host=web-01.prod.example.com"), "{text}");
    assert!(text.contains("rotated the logs"), "{text}");
    let unknown = w.audit_cli(&["trail", "--task", "0123456789abcdef0123456789abcdef"]);
    assert!(!unknown.status.success());
}

/// Wait for `condition`, checking it every few milliseconds, for at most [`PATIENCE`].
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn periodic_signed_checkpoints_verify_with_ssh_keygen_and_prune_keeps_the_log_verifiable() {
    let w = World::start("[audit]\ncheckpoint_interval = \"1s\"\n");
    for _ in 0..3 {
        w.open_task();
    }
    let head = w.ca.audit().last().expect("head").seq;
    let file = w.ca.dir().join("audit-checkpoints.jsonl");
    // The server signs the head within a second or so.
    let checkpoint = {
        let mut found = None;
        wait_for("a periodic checkpoint of the head", || {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            found = writ::audit::checkpoint::parse_lines(&text)
                .expect("checkpoint lines")
                .into_iter()
                .find(|c| c.seq >= head);
            found.is_some()
        });
        found.expect("checkpoint")
    };
    assert_eq!(checkpoint.seq, head);
    assert_eq!(checkpoint.hash, w.ca.audit()[head as usize - 1].hash);

    // Anyone can check it with OpenSSH and the CA's public keys.
    let trusted = http::get(&format!("{}/v1/ca/trusted-keys", w.ca.url)).text;
    let allowed: String = trusted
        .lines()
        .map(|k| {
            format!(
                "writ-ca namespaces=\"{}\" {k}\n",
                writ::audit::checkpoint::NAMESPACE
            )
        })
        .collect();
    let allowed_file = w.dir.path().join("allowed_signers");
    std::fs::write(&allowed_file, allowed).expect("allowed signers");
    let sig_file = w.dir.path().join("checkpoint.sig");
    std::fs::write(&sig_file, &checkpoint.signature).expect("sig");
    let mut child = Command::new("ssh-keygen")
        .args([
            "-Y",
            "verify",
            "-I",
            "writ-ca",
            "-n",
            writ::audit::checkpoint::NAMESPACE,
            "-f",
        ])
        .arg(&allowed_file)
        .arg("-s")
        .arg(&sig_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh-keygen -Y verify");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&checkpoint.message())
        .expect("message");
    let verdict = child.wait_with_output().expect("ssh-keygen");
    assert!(verdict.status.success(), "{}", both(&verdict));

    // More records after the checkpoint, then prune everything before the record after
    // it: the log is cut at the checkpoint.
    w.open_task();
    w.open_task();
    // head + 1 is never a head (task.created and cert.issued commit together), so the
    // newest checkpoint at or before it is the one at head, whatever else was signed since.
    let cut = head + 1;
    let pruned = w.audit_cli(&["prune", "--before", &cut.to_string()]);
    assert!(pruned.status.success(), "{}", both(&pruned));
    assert!(
        stdout(&pruned).contains(&format!("pruned {} records", head - 1)),
        "{}",
        both(&pruned)
    );
    let log = w.ca.audit();
    assert_eq!(log[0].seq, head, "the checkpointed record stays");
    let last = log.last().expect("last");
    assert_eq!(last.entry.event, event::AUDIT_PRUNED);
    assert_eq!(last.entry.issuer.as_deref(), Some("local-admin"));
    let verified = w.audit_cli(&["verify"]);
    assert!(verified.status.success(), "{}", both(&verified));
    assert!(
        stdout(&verified).contains(&format!("records seq {head} to {}", last.seq)),
        "{}",
        both(&verified)
    );
    let export = w.audit_cli(&["export"]);
    assert_eq!(json_lines(&stdout(&export))[0]["seq"].as_i64(), Some(head));

    // Nothing more to prune before the same point; a time before everything prunes nothing.
    let again = w.audit_cli(&["prune", "--before", &cut.to_string()]);
    assert!(
        stdout(&again).contains("nothing pruned"),
        "{}",
        both(&again)
    );
    let early = w.audit_cli(&["prune", "--before", "2000-01-01T00:00:00Z"]);
    assert!(
        stdout(&early).contains("nothing pruned"),
        "{}",
        both(&early)
    );

    // Deleting the start outside `prune` (trigger dropped) is caught, and prune refuses
    // to work on a broken log.
    tamper(
        &w.ca.db_path(),
        &[
            "DROP TRIGGER audit_events_no_delete".into(),
            format!("DELETE FROM audit_events WHERE seq = {head}"),
        ],
    );
    let broken = w.audit_cli(&["verify"]);
    assert_eq!(broken.status.code(), Some(1), "{}", both(&broken));
    let refused = w.audit_cli(&["prune", "--before", &(head + 5).to_string()]);
    assert!(!refused.status.success());
    assert!(
        both(&refused).contains("does not verify"),
        "{}",
        both(&refused)
    );
}

/// The seqs of the records in a sink file (writ's JSON Lines or OCSF).
fn sink_seqs(path: &Path) -> Vec<i64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            v["seq"]
                .as_i64()
                .or(v["metadata"]["sequence"].as_i64())
                .expect("seq")
        })
        .collect()
}

/// The head of the log, read from the database file.
fn head_of(db: &Path) -> i64 {
    common::database_count(db, "SELECT COALESCE(MAX(seq), 0) FROM audit_events")
}

/// A sink's stored position.
fn position_of(db: &Path, sink: &str) -> i64 {
    assert!(sink.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    common::database_count(
        db,
        &format!(
            "SELECT COALESCE((SELECT seq FROM audit_sink_positions WHERE sink = '{sink}'), 0)"
        ),
    )
}

#[test]
fn sinks_receive_every_record_once_across_a_crash_and_a_restart() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("writ.db");
    let jsonl = dir.path().join("audit.jsonl");
    let ocsf = dir.path().join("audit.ocsf.jsonl");
    let socket = dir.path().join("syslog.sock");
    let syslog = UnixDatagram::bind(&socket).expect("syslog socket");
    syslog.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let config = serve_config(
        dir.path(),
        &db,
        &idp,
        &format!(
            "[audit]\n\
             [[audit.sink]]\nname = \"file\"\ntype = \"jsonl\"\npath = \"{}\"\n\
             [[audit.sink]]\nname = \"ocsf\"\ntype = \"jsonl\"\nformat = \"ocsf\"\npath = \"{}\"\n\
             [[audit.sink]]\nname = \"syslog\"\ntype = \"syslog\"\nsocket = \"{}\"\n",
            jsonl.display(),
            ocsf.display(),
            socket.display()
        ),
    );
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let pubkey = public_key(&key);
    let token = || idp.token(Key::Ed25519, "agent-1");

    let mut received_syslog = Vec::new();
    let read_syslog = |upto: i64, into: &mut Vec<i64>| {
        let mut buf = vec![0u8; 65536];
        while into.last().copied().unwrap_or(0) < upto {
            let n = syslog.recv(&mut buf).expect("a syslog message");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(
                text.starts_with("<86>1 "),
                "authpriv.info, RFC 5424: {text}"
            );
            let json = &text[text.find(" audit - ").expect("msgid") + 9..];
            let record: Value = serde_json::from_str(json).expect("record");
            into.push(record["seq"].as_i64().expect("seq"));
        }
    };

    let mut serve = Serve::start(&config);
    let mut task_ids = Vec::new();
    for _ in 0..3 {
        let (status, body) = try_issue(&serve.url, &token(), &pubkey).expect("issue");
        assert_eq!(status, 201);
        task_ids.push(body["task_id"].as_str().expect("id").to_owned());
    }
    let head = head_of(&db);
    let caught_up = |head: i64| {
        sink_seqs(&jsonl).last().is_some_and(|s| *s >= head)
            && sink_seqs(&ocsf).last().is_some_and(|s| *s >= head)
    };
    wait_for("the file sinks to catch up", || caught_up(head));
    read_syslog(head, &mut received_syslog);
    wait_for("the syslog position to be stored", || {
        position_of(&db, "syslog") >= received_syslog.last().copied().unwrap_or(0)
    });

    // Crash. While the CA is down an operator revokes a task (more records), the file
    // sink's position is set back as if the crash came between a write and its
    // bookkeeping, and a half-written line is left at the end of the file.
    serve.kill9();
    let revoked = writ_admin(
        &config,
        "task",
        &["revoke", &task_ids[0], "--reason", "offline revocation"],
    );
    assert!(revoked.status.success(), "{}", both(&revoked));
    tamper(
        &db,
        &["UPDATE audit_sink_positions SET seq = seq - 3 WHERE sink = 'file'".into()],
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&jsonl)
        .expect("open sink file")
        .write_all(b"{\"seq\": 99999, \"ev")
        .expect("torn line");

    let serve = Serve::start(&config);
    for _ in 0..2 {
        let (status, _) = try_issue(&serve.url, &token(), &pubkey).expect("issue");
        assert_eq!(status, 201);
    }
    let head = head_of(&db);
    wait_for("the file sinks to catch up after the restart", || {
        caught_up(head)
    });
    read_syslog(head, &mut received_syslog);
    drop(serve);
    let waited = head;

    // Every record, in order, exactly once — the same as the export.
    let exported: Vec<i64> = {
        let out = writ_admin(&config, "audit", &["export"]);
        json_lines(&stdout(&out))
            .iter()
            .map(|r| r["seq"].as_i64().expect("seq"))
            .collect()
    };
    let head = *exported.last().expect("records");
    assert_eq!(exported, (1..=head).collect::<Vec<_>>());
    for (name, delivered) in [
        ("file sink", sink_seqs(&jsonl)),
        ("OCSF sink", sink_seqs(&ocsf)),
        ("syslog sink", received_syslog.clone()),
    ] {
        // No gap, no repeat, in order, up to at least the head seen before the wait.
        assert!(
            delivered.last().is_some_and(|s| *s >= waited),
            "{name}: {delivered:?}"
        );
        assert_eq!(delivered, exported[..delivered.len()], "{name}");
    }
    let lines = std::fs::read_to_string(&jsonl).expect("sink file");
    assert!(
        lines.ends_with('\n') && !lines.contains("99999"),
        "torn line removed"
    );
    // The sink's records are the log's records, byte for byte re-verifiable.
    let records: Vec<AuditRecord> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    assert_eq!(
        writ::audit::verify_chain(&records, writ::audit::GENESIS_HASH),
        Ok(())
    );
    // What the sinks delivered also guards the log: cutting records the sink already
    // has makes `verify` fail.
    let head = sink_seqs(&jsonl).last().copied().expect("delivered");
    tamper(
        &db,
        &[
            "DROP TRIGGER audit_events_no_delete".into(),
            format!("DELETE FROM audit_events WHERE seq = {head}"),
        ],
    );
    let out = writ_admin(&config, "audit", &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        both(&out).contains(&format!("BROKEN at seq {head}")),
        "{}",
        both(&out)
    );
}

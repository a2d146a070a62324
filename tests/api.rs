//! The HTTP API against a real test IdP: issuance, every token refusal (401), policy
//! refusals (403), bad input (400/413/422), durability (503 when the store cannot write),
//! and the audit record each of them leaves.

mod common;

use std::process::Command;

use common::ca::{TestCa, certificate_request};
use common::idp::{Key, TestIdp, sign_with};
use common::{http, now, public_key, ssh_keygen};
use serde_json::json;
use writ::audit::{self, GENESIS_HASH};

const POLICY: &str = r#"
name = "deployers"
subject = "agent-*"
logins = ["deploy", "{sub}"]
hosts = ["*.prod.example.com"]
max_cert_ttl = "5m"
extensions = ["permit-pty"]
"#;

fn setup() -> (TestIdp, TestCa, tempfile::TempDir, String) {
    let idp = TestIdp::start(&[Key::Rsa, Key::Ec, Key::Ed25519]);
    let ca = TestCa::with_policy(&idp, "", POLICY);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    (idp, ca, dir, public_key(&key))
}

/// `ssh-keygen -L` output for a certificate line.
fn ssh_keygen_l(dir: &std::path::Path, certificate: &str) -> String {
    let path = dir.join("inspect-cert.pub");
    std::fs::write(&path, certificate).expect("write cert");
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("ssh-keygen -L");
    assert!(
        out.status.success(),
        "ssh-keygen -L failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn issues_task_bound_user_certificates_for_every_token_algorithm() {
    let (idp, ca, dir, pubkey) = setup();
    for key in [Key::Rsa, Key::Ec, Key::Ed25519] {
        let before = now();
        let token = idp.token(key, "agent-7");
        let response = ca.request_certificate(
            Some(&token),
            &certificate_request(
                &pubkey,
                &["deploy", "agent-7"],
                &["web-*.prod.example.com"],
                Some(120),
            ),
        );
        assert_eq!(response.status, 201, "{key:?}: {}", response.text);
        let body = response.json();
        let task_id = body["task_id"].as_str().expect("task_id");
        assert!(writ::profile::is_valid_task_id(task_id));
        let serial: u64 = body["serial"]
            .as_str()
            .expect("serial")
            .parse()
            .expect("decimal serial");
        assert_ne!(serial, 0);
        let principals: Vec<&str> = body["principals"]
            .as_array()
            .expect("principals")
            .iter()
            .map(|p| p.as_str().expect("str"))
            .collect();
        assert_eq!(
            principals,
            [
                format!("writ:{task_id}:deploy"),
                format!("writ:{task_id}:agent-7")
            ]
        );

        let listing = ssh_keygen_l(dir.path(), body["certificate"].as_str().expect("cert"));
        assert!(listing.contains("user certificate"), "{listing}");
        assert!(listing.contains(&format!("Serial: {serial}")), "{listing}");
        assert!(
            listing.contains(&format!("task={task_id}")),
            "key id names the task: {listing}"
        );
        assert!(listing.contains("permit-pty"), "{listing}");
        let principal_lines: Vec<&str> = listing
            .lines()
            .skip_while(|l| !l.contains("Principals:"))
            .skip(1)
            .take_while(|l| !l.contains("Critical Options"))
            .map(str::trim)
            .collect();
        assert_eq!(principal_lines.len(), 2, "{listing}");
        for p in principal_lines {
            assert!(p.starts_with("writ:"), "bare login {p:?} in certificate");
            assert_ne!(p, "deploy");
        }

        let cert = ssh_key::Certificate::from_openssh(body["certificate"].as_str().expect("cert"))
            .expect("parse");
        let after = now();
        // Valid from issue time minus clock_skew (30 s default) to issue time + requested TTL.
        assert!(
            cert.valid_after() as i64 >= before - 30 && cert.valid_after() as i64 <= after - 30
        );
        assert!(
            cert.valid_before() as i64 >= before + 120 && cert.valid_before() as i64 <= after + 120
        );
        assert_eq!(
            cert.extensions()
                .get(writ::profile::EXT_TASK)
                .map(String::as_str),
            Some(task_id)
        );
        assert_eq!(
            cert.extensions()
                .get(writ::profile::EXT_HOSTS)
                .map(String::as_str),
            Some("web-*.prod.example.com")
        );
        assert_eq!(
            body["ca_fingerprint"],
            cert.signature_key()
                .fingerprint(ssh_key::HashAlg::Sha256)
                .to_string()
        );
    }
    // Three tasks, three certificates, each recorded, and the chain holds.
    let log = ca.audit();
    assert_eq!(ca.audit_events(audit::event::CERT_ISSUED).len(), 3);
    assert_eq!(ca.audit_events(audit::event::TASK_CREATED).len(), 3);
    assert_eq!(audit::verify_chain(&log, GENESIS_HASH), Ok(()));
    let issued = &ca.audit_events(audit::event::CERT_ISSUED)[0].entry;
    assert_eq!(issued.subject.as_deref(), Some("agent-7"));
    assert_eq!(issued.policy.as_deref(), Some("deployers"));
    assert_eq!(issued.source_ip.as_deref(), Some("127.0.0.1"));
    assert!(
        issued
            .key_fingerprint
            .as_deref()
            .is_some_and(|f| f.starts_with("SHA256:"))
    );
}

#[test]
fn accepts_ecdsa_and_rsa_keys_and_refuses_weak_ones() {
    let (idp, ca, dir, _) = setup();
    for (name, args, status) in [
        ("ecdsa", vec!["-t", "ecdsa", "-b", "256"], 201),
        ("rsa3072", vec!["-t", "rsa", "-b", "3072"], 201),
        ("rsa1024", vec!["-t", "rsa", "-b", "1024"], 422),
    ] {
        let key = ssh_keygen(dir.path(), name, &args);
        let response = ca.request_certificate(
            Some(&idp.token(Key::Ed25519, "agent-1")),
            &certificate_request(
                &public_key(&key),
                &["deploy"],
                &["a.prod.example.com"],
                None,
            ),
        );
        assert_eq!(response.status, status, "{name}: {}", response.text);
        if status == 422 {
            assert_eq!(response.error_code(), "weak_key");
        }
    }
    let denied = ca.audit_events(audit::event::CERT_DENIED);
    assert_eq!(denied.len(), 1);
    assert!(
        denied[0]
            .entry
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("weak_key"))
    );
}

/// Sends a certificate request for `public_key` that must be refused with 422 `code`, and
/// checks it left one `cert.denied` record with that reason.
fn refused_key(ca: &TestCa, idp: &TestIdp, public_key: &str, code: &str, case: &str) {
    let before = ca.audit_events(audit::event::CERT_DENIED).len();
    let response = ca.request_certificate(
        Some(&idp.token(Key::Ed25519, "agent-1")),
        &certificate_request(public_key, &["deploy"], &["a.prod.example.com"], None),
    );
    assert_eq!(response.status, 422, "{case}: {}", response.text);
    assert_eq!(response.error_code(), code, "{case}: {}", response.text);
    let denied = ca.audit_events(audit::event::CERT_DENIED);
    assert_eq!(denied.len(), before + 1, "{case}: one cert.denied record");
    let reason = denied[before].entry.reason.as_deref().unwrap_or_default();
    assert!(reason.starts_with(code), "{case}: {reason}");
}

fn openssh_line(key: ssh_key::public::KeyData) -> String {
    ssh_key::PublicKey::new(key, "test")
        .to_openssh()
        .expect("OpenSSH line")
}

/// Keys anyone can sign for, or that are not keys at all, are never certified (422 with
/// an audit record): RSA with a bad exponent, Ed25519 points of small order (for the
/// identity, R = identity and s = 0 "signs" anything), ECDSA points off the curve.
#[test]
fn weak_and_invalid_subject_keys_are_refused() {
    use ssh_key::Mpint;
    use ssh_key::public::{EcdsaPublicKey, Ed25519PublicKey, KeyData, RsaPublicKey};

    let (idp, ca, dir, _) = setup();
    let rsa = ssh_key::PublicKey::from_openssh(&public_key(&ssh_keygen(
        dir.path(),
        "rsa",
        &["-t", "rsa", "-b", "2048"],
    )))
    .expect("rsa key");
    let n = rsa.key_data().rsa().expect("rsa").n.clone();
    let with_e = |e: &[u8]| {
        openssh_line(KeyData::Rsa(RsaPublicKey {
            e: Mpint::from_positive_bytes(e).expect("e"),
            n: n.clone(),
        }))
    };
    for (case, e) in [
        ("e = 1", &[1][..]),
        ("e = 3", &[3]),
        ("e = 65535", &[0xff, 0xff]),
        ("e = 65538 (even)", &[1, 0, 2]),
        ("e = 2^40 + 1", &[1, 0, 0, 0, 0, 1]),
    ] {
        refused_key(&ca, &idp, &with_e(e), "weak_key", case);
    }
    let small_order = [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    ];
    for point in small_order {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&point[2 * i..2 * i + 2], 16).expect("hex");
        }
        let line = openssh_line(KeyData::Ed25519(Ed25519PublicKey(bytes)));
        refused_key(&ca, &idp, &line, "weak_key", &format!("Ed25519 {point}"));
    }
    let mut no_point = [0u8; 32];
    no_point[0] = 2;
    let line = openssh_line(KeyData::Ed25519(Ed25519PublicKey(no_point)));
    refused_key(
        &ca,
        &idp,
        &line,
        "invalid_key",
        "Ed25519 y = 2 (no such point)",
    );

    let ecdsa = ssh_key::PublicKey::from_openssh(&public_key(&ssh_keygen(
        dir.path(),
        "ecdsa",
        &["-t", "ecdsa", "-b", "256"],
    )))
    .expect("ecdsa key");
    let mut off_curve = ecdsa
        .key_data()
        .ecdsa()
        .expect("ecdsa")
        .as_sec1_bytes()
        .to_vec();
    off_curve[64] ^= 1;
    let line = openssh_line(KeyData::Ecdsa(
        EcdsaPublicKey::from_sec1_bytes(&off_curve).expect("parses"),
    ));
    refused_key(&ca, &idp, &line, "invalid_key", "P-256 point off the curve");

    // Control: the keys they were derived from are fine.
    for key in [rsa, ecdsa] {
        let response = ca.request_certificate(
            Some(&idp.token(Key::Ed25519, "agent-1")),
            &certificate_request(
                &key.to_openssh().expect("line"),
                &["deploy"],
                &["a.prod.example.com"],
                None,
            ),
        );
        assert_eq!(response.status, 201, "{}", response.text);
    }
}

/// The CA never certifies one of its own keys, in any state of the keyring: next, active,
/// retiring, retired and revoked.
#[test]
fn the_cas_own_keys_are_never_subjects() {
    use writ::authority::rotation::{self, Actor};

    let (idp, ca, _dir, _) = setup();
    let store = ca.state.store.as_ref();
    let settings = *ca.state.keyring.settings();
    let actor = Actor::scheduler();
    let passphrase = "test passphrase";
    let t = now();
    let next = ca
        .state
        .keyring
        .current()
        .key_in(writ::authority::KeyState::Next)
        .expect("next")
        .id
        .clone();
    common::runtime().block_on(async {
        // k2 (next) revoked; k3 next. Rotate: k3 active, k1 retiring; retire k1. Rotate
        // again: k4 active, k3 retiring, k5 next.
        rotation::revoke(
            store,
            passphrase,
            &settings,
            &next,
            "test",
            t,
            &actor,
            &mut rand_core::OsRng,
        )
        .await
        .expect("revoke next");
        rotation::rotate(
            store,
            passphrase,
            &settings,
            t,
            true,
            &actor,
            &mut rand_core::OsRng,
        )
        .await
        .expect("rotate");
        rotation::retire_expired(store, &settings, t + 3600, &actor)
            .await
            .expect("retire");
        rotation::rotate(
            store,
            passphrase,
            &settings,
            t,
            true,
            &actor,
            &mut rand_core::OsRng,
        )
        .await
        .expect("rotate again");
        ca.state.keyring.reload(store).await.expect("reload");
    });
    let keyring = ca.state.keyring.current();
    let mut states: Vec<&str> = keyring.keys().iter().map(|k| k.state.as_str()).collect();
    states.sort_unstable();
    assert_eq!(states, ["active", "next", "retired", "retiring", "revoked"]);
    for key in keyring.keys() {
        let line = key.public_key.to_openssh().expect("line");
        refused_key(&ca, &idp, &line, "ca_key_as_subject", key.state.as_str());
    }
}

#[test]
fn bad_tokens_get_401_and_an_audit_record() {
    let (idp, ca, _dir, pubkey) = setup();
    let body = certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], None);
    let t = now();
    let mut expired = idp.claims("agent-1");
    expired["iat"] = json!(t - 900);
    expired["nbf"] = json!(t - 900);
    expired["exp"] = json!(t - 600);
    let mut wrong_aud = idp.claims("agent-1");
    wrong_aud["aud"] = json!("someone-else");
    let mut no_aud = idp.claims("agent-1");
    no_aud.as_object_mut().expect("object").remove("aud");
    let mut wrong_iss = idp.claims("agent-1");
    wrong_iss["iss"] = json!("https://evil.example.com");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "token_missing"),
        ("garbage", Some("not-a-jwt".into()), "token_malformed"),
        (
            "expired",
            Some(idp.sign(Key::Rsa, &expired)),
            "token_expired",
        ),
        (
            "wrong audience",
            Some(idp.sign(Key::Rsa, &wrong_aud)),
            "wrong_audience",
        ),
        (
            "no audience",
            Some(idp.sign(Key::Rsa, &no_aud)),
            "wrong_audience",
        ),
        (
            "wrong issuer",
            Some(idp.sign(Key::Rsa, &wrong_iss)),
            "unknown_issuer",
        ),
        // Signed by a key the IdP never published, claiming the published kid.
        (
            "bad signature",
            Some(sign_with(
                Key::RsaOther,
                Key::Rsa.kid(),
                &idp.claims("agent-1"),
            )),
            "bad_signature",
        ),
        (
            "unknown kid",
            Some(idp.sign(Key::RsaOther, &idp.claims("agent-1"))),
            "unknown_key",
        ),
    ];
    for (name, token, code) in &cases {
        let response = ca.request_certificate(token.as_deref(), &body);
        assert_eq!(response.status, 401, "{name}: {}", response.text);
        assert_eq!(response.error_code(), *code, "{name}");
        assert!(
            response
                .www_authenticate
                .as_deref()
                .is_some_and(|h| h.starts_with("Bearer")),
            "{name}"
        );
    }
    let rejected = ca.audit_events(audit::event::TOKEN_REJECTED);
    assert_eq!(rejected.len(), cases.len());
    for (record, (name, token, code)) in rejected.iter().zip(&cases) {
        let reason = record.entry.reason.as_deref().unwrap_or_default();
        assert!(reason.starts_with(code), "{name}: {reason}");
        assert_eq!(record.entry.source_ip.as_deref(), Some("127.0.0.1"));
        if let Some(token) = token {
            let signature = token.rsplit('.').next().unwrap_or_default();
            let text = serde_json::to_string(record).expect("json");
            assert!(
                signature.len() < 8 || !text.contains(signature),
                "{name}: token leaked into audit"
            );
        }
    }
    assert!(ca.audit_events(audit::event::CERT_ISSUED).is_empty());
    assert_eq!(task_count(&ca), 0);
}

/// Rows in the tasks table, read straight from the database file.
fn task_count(ca: &TestCa) -> i64 {
    count_rows(&ca.db_path(), "SELECT count(*) FROM tasks")
}

/// Run a count query on the database file (read-only, outside the CA).
fn count_rows(db: &std::path::Path, sql: &'static str) -> i64 {
    common::database_count(db, sql)
}

#[test]
fn policy_refusals_get_403_naming_the_rule() {
    let (idp, ca, _dir, pubkey) = setup();
    let token = || idp.token(Key::Ec, "agent-1");
    let cases = [
        (
            certificate_request(&pubkey, &["root"], &["a.prod.example.com"], None),
            "login_not_allowed",
        ),
        (
            certificate_request(&pubkey, &["deploy"], &["db.staging.example.com"], None),
            "host_not_allowed",
        ),
        (
            certificate_request(&pubkey, &["deploy"], &["*"], None),
            "host_not_allowed",
        ),
        (
            certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], Some(301)),
            "ttl_exceeds_max",
        ),
    ];
    for (body, code) in &cases {
        let response = ca.request_certificate(Some(&token()), body);
        assert_eq!(response.status, 403, "{code}: {}", response.text);
        assert_eq!(response.error_code(), *code);
        assert!(
            response.json()["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("deployers")
        );
    }
    // A subject no policy matches.
    let response = ca.request_certificate(
        Some(&idp.token(Key::Ec, "intruder")),
        &certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], None),
    );
    assert_eq!(response.status, 403);
    assert_eq!(response.error_code(), "no_matching_policy");

    let denied = ca.audit_events(audit::event::CERT_DENIED);
    assert_eq!(denied.len(), cases.len() + 1);
    assert!(
        denied
            .iter()
            .all(|r| r.entry.outcome == Some(audit::Outcome::Failure))
    );
    assert_eq!(denied[0].entry.subject.as_deref(), Some("agent-1"));
    assert_eq!(denied[0].entry.logins, ["root"]);
    assert!(ca.audit_events(audit::event::CERT_ISSUED).is_empty());
    assert_eq!(task_count(&ca), 0);
}

/// TTLs are JSON integers up to u64::MAX; extremes are refused by the policy (403) or as
/// malformed (400) before any arithmetic on Unix times, never wrapped into a short one.
#[test]
fn extreme_ttls_are_refused_without_overflow() {
    let (idp, ca, _dir, pubkey) = setup();
    let token = || idp.token(Key::Ec, "agent-1");
    let huge = [
        u64::MAX,
        1 << 63,
        (1 << 63) - 1,
        (1 << 63) + 1,
        u64::MAX - 300,
    ];
    for ttl in huge {
        let body = certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], Some(ttl));
        let response = ca.request_certificate(Some(&token()), &body);
        assert_eq!(response.status, 403, "ttl_seconds {ttl}: {}", response.text);
        assert_eq!(
            response.error_code(),
            "ttl_exceeds_max",
            "ttl_seconds {ttl}"
        );
        let mut body = certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], None);
        body["task"]["ttl_seconds"] = ttl.into();
        let response = ca.request_certificate(Some(&token()), &body);
        assert_eq!(
            response.status, 403,
            "task.ttl_seconds {ttl}: {}",
            response.text
        );
        assert_eq!(response.error_code(), "task_ttl_exceeds_max");
    }
    for ttl in [
        json!(-1),
        json!(i64::MIN),
        json!(1e300),
        json!("18446744073709551616"),
    ] {
        let mut body = certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], None);
        body["ttl_seconds"] = ttl.clone();
        let response = ca.request_certificate(Some(&token()), &body);
        assert_eq!(response.status, 400, "ttl_seconds {ttl}: {}", response.text);
    }
    assert_eq!(task_count(&ca), 0);
}

#[test]
fn malformed_input_gets_400_and_oversized_gets_413() {
    let (idp, ca, _dir, pubkey) = setup();
    let url = format!("{}/v1/certificates", ca.url);
    let token = || idp.token(Key::Ed25519, "agent-1");
    let cases = [
        ("{not json".to_owned(), 400, "invalid_json"),
        (json!({"public_key": pubkey, "task": {"logins": ["deploy"], "hosts": ["a.prod.example.com"]}, "key_id": "mine"}).to_string(), 400, "invalid_json"),
        (certificate_request("ssh-ed25519 AAAAnope", &["deploy"], &["a.prod.example.com"], None).to_string(), 400, "invalid_public_key"),
        (certificate_request(&pubkey, &["Deploy,root"], &["a.prod.example.com"], None).to_string(), 400, "invalid_login"),
        (certificate_request(&pubkey, &["deploy"], &["a.prod.example.com\nb"], None).to_string(), 400, "invalid_host"),
        (certificate_request(&pubkey, &[], &["a.prod.example.com"], None).to_string(), 400, "invalid_task"),
        (certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], Some(0)).to_string(), 400, "invalid_ttl"),
        (format!("{{\"public_key\": \"{}\"}}", "A".repeat(70 * 1024)), 413, "body_too_large"),
    ];
    for (body, status, code) in &cases {
        let response = http::post_raw(&url, Some(&token()), body);
        assert_eq!(response.status, *status, "{code}: {}", response.text);
        assert_eq!(response.error_code(), *code);
    }
    assert_eq!(
        ca.audit_events(audit::event::CERT_DENIED).len(),
        cases.len()
    );
    assert!(ca.audit_events(audit::event::CERT_ISSUED).is_empty());
}

#[test]
fn no_certificate_leaves_when_the_store_cannot_write() {
    let (idp, ca, _dir, pubkey) = setup();
    // Make every certificate insert fail inside the database, as a full or broken disk would.
    common::database(&ca.db_path())
        .execute_batch(
            "CREATE TRIGGER fail_certs BEFORE INSERT ON certificates \
             BEGIN SELECT RAISE(ABORT, 'disk full'); END",
        )
        .expect("trigger");
    let response = ca.request_certificate(
        Some(&idp.token(Key::Rsa, "agent-1")),
        &certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], None),
    );
    assert_eq!(response.status, 503, "{}", response.text);
    assert_eq!(response.error_code(), "audit_unavailable");
    assert!(
        !response.text.contains("certificate\":"),
        "no certificate in a failed response"
    );
    assert!(
        !response.text.contains("disk full"),
        "5xx must not leak internals"
    );
    assert_eq!(
        task_count(&ca),
        0,
        "the task rolled back with the certificate"
    );
    assert!(ca.audit_events(audit::event::CERT_ISSUED).is_empty());
    assert!(ca.audit_events(audit::event::TASK_CREATED).is_empty());
}

#[test]
fn trusted_keys_health_and_readiness() {
    let (_idp, ca, _dir, _) = setup();
    let keys = http::get(&format!("{}/v1/ca/trusted-keys", ca.url));
    assert_eq!(keys.status, 200);
    // The active key and the next key (published from the first start, so the first
    // rotation is safe).
    let lines: Vec<&str> = keys.text.lines().collect();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert!(line.starts_with("ssh-ed25519 "));
        ssh_key::PublicKey::from_openssh(line).expect("OpenSSH public key");
    }
    assert!(!keys.text.contains("PRIVATE"));
    assert_eq!(http::get(&format!("{}/healthz", ca.url)).status, 200);
    let ready = http::get(&format!("{}/readyz", ca.url));
    assert_eq!(ready.status, 200);
    assert!(
        ready.json()["ca_fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("SHA256:"))
    );
    let missing = http::get(&format!("{}/v1/nope", ca.url));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "not_found");
}

#[test]
fn wrong_method_gets_405_in_the_json_envelope_with_allow() {
    let (_idp, ca, _dir, _) = setup();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for (method, path, allowed) in [
        ("GET", "/v1/certificates", "POST"),
        ("DELETE", "/v1/krl", "GET,HEAD"),
        ("PUT", "/v1/tasks/abc/complete", "POST"),
    ] {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", ca.url))
            .body(())
            .expect("request");
        let mut response = agent.run(request).expect("HTTP request");
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        let allow = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(allow.as_deref(), Some(allowed), "{method} {path}");
        let text = response.body_mut().read_to_string().expect("body");
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"));
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}

#[test]
fn database_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (idp, ca, dir, key) = setup();
    // An issuance writes the WAL (and its shared-memory index) too.
    let issued = ca.request_certificate(
        Some(&idp.token(Key::Ed25519, "agent-1")),
        &certificate_request(&key, &["deploy"], &["web-01.prod.example.com"], None),
    );
    assert_eq!(issued.status, 201, "{}", issued.text);
    let mut checked = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", ca.db_path().display()));
        if let Ok(metadata) = std::fs::metadata(&path) {
            let mode = metadata.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
            checked.push(suffix);
        }
    }
    assert!(
        checked.contains(&"") && checked.contains(&"-wal"),
        "{checked:?}"
    );
    drop(dir);
}

#[test]
fn ca_private_key_is_encrypted_at_rest() {
    let (_idp, ca, _dir, _) = setup();
    let rows = common::runtime()
        .block_on(ca.state.store.ca_keys())
        .expect("keys");
    assert_eq!(
        rows.len(),
        4,
        "an active and a next key of each kind (user and host)"
    );
    for row in &rows {
        let key = ssh_key::PrivateKey::from_openssh(&row.private_key).expect("stored key parses");
        assert!(key.is_encrypted(), "CA key stored in clear");
    }
    // No file writ wrote (database, WAL, journal) holds an unencrypted OpenSSH private key:
    // those start with the base64 of "openssh-key-v1\0" + cipher "none".
    const CLEARTEXT_KEY_PREFIX: &str = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU";
    let mut scanned = 0;
    for entry in std::fs::read_dir(ca.dir()).expect("read dir") {
        let path = entry.expect("entry").path();
        let raw = std::fs::read(&path).expect("read file");
        assert!(
            !String::from_utf8_lossy(&raw).contains(CLEARTEXT_KEY_PREFIX),
            "cleartext private key in {}",
            path.display()
        );
        scanned += 1;
    }
    assert!(scanned >= 2, "expected the database files to be scanned");
    // The detector itself works: a cleartext key does carry the prefix.
    let clear = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
        .expect("key")
        .to_openssh(ssh_key::LineEnding::LF)
        .expect("pem");
    assert!(clear.replace('\n', "").contains(CLEARTEXT_KEY_PREFIX));
}

#[test]
fn a_certificate_never_outlives_its_task() {
    let (idp, ca, _dir, pubkey) = setup();
    let mut body = certificate_request(&pubkey, &["deploy"], &["a.prod.example.com"], Some(300));
    body["task"]["ttl_seconds"] = json!(60);
    let response = ca.request_certificate(Some(&idp.token(Key::Rsa, "agent-1")), &body);
    assert_eq!(response.status, 201, "{}", response.text);
    let body = response.json();
    let cert = ssh_key::Certificate::from_openssh(body["certificate"].as_str().expect("cert"))
        .expect("parse");
    let task_expires = time::OffsetDateTime::parse(
        body["task_expires_at"].as_str().expect("task_expires_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339")
    .unix_timestamp();
    assert_eq!(
        cert.valid_before() as i64,
        task_expires,
        "certificate must end with its task"
    );
    assert!(task_expires - now() <= 60);
}

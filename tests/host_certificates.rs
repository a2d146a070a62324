//! Host certificates through the real HTTP API (issue 17): a host's workload token and
//! its public keys become SSH host certificates for the names a `role = "host"` policy
//! grants, signed by the host CA key that `GET /v1/ca/known-hosts` lists (and never by
//! the user CA key, which `GET /v1/ca/trusted-keys` lists alone); refusals are 4xx with a
//! `host_cert.denied` record; host CA rotation keeps old and new keys trusted during the
//! overlap; `writ admin host-cert revoke` puts serials into the KRL under the host CA key.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use ssh_key::certificate::CertType;
use ssh_key::public::KeyData;
use ssh_key::{Certificate, HashAlg, PublicKey};

use common::ca::{TestCa, certificate_request};
use common::http;
use common::idp::{Key, TestIdp};
use common::{now, public_key, runtime, ssh_keygen};

const HOST_DOMAIN: &str = "prod.example.com";

/// A CA with a host policy (names templated from the token's `hostname` claim) and an
/// agent policy whose hosts would cover everything.
fn start(idp: &TestIdp) -> TestCa {
    TestCa::start(
        "host_patterns = [\"*.prod.example.com\", \"*.stage.example.com\"]\n",
        &format!(
            "[[issuer]]\nname = \"test\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\naudiences = [\"writ\"]\n\n\
             [[policy]]\nname = \"hosts\"\nissuer = \"test\"\nsubject = \"host-*\"\nrole = \"host\"\n\
             hosts = [\"{{claims.hostname}}.{HOST_DOMAIN}\", \"{{claims.hostname}}\"]\n\n\
             [[policy]]\nname = \"agents\"\nissuer = \"test\"\nsubject = \"agent-*\"\n\
             logins = [\"deploy\"]\nhosts = [\"*\"]\n",
            iss = idp.issuer,
            jwks = idp.jwks_url(),
        ),
    )
}

/// A host token for `host-NAME` whose `hostname` claim is NAME.
fn host_token(idp: &TestIdp, name: &str) -> String {
    let mut claims = idp.claims(&format!("host-{name}"));
    claims["hostname"] = json!(name);
    idp.sign(Key::Ed25519, &claims)
}

fn request(ca: &TestCa, token: Option<&str>, body: &Value) -> http::Response {
    http::post(&format!("{}/v1/host-certificates", ca.url), token, body)
}

fn known_hosts(ca: &TestCa) -> String {
    let response = http::get(&format!("{}/v1/ca/known-hosts", ca.url));
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    response.text
}

/// The keys of the `@cert-authority` lines, and of the `@revoked` lines.
fn known_hosts_keys(text: &str) -> (Vec<KeyData>, Vec<KeyData>) {
    let (mut trusted, mut revoked) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (marker, patterns, key) = (parts.next(), parts.next(), parts.next());
        let key = PublicKey::from_openssh(key.expect("key"))
            .expect("an OpenSSH key")
            .key_data()
            .clone();
        match marker {
            Some("@cert-authority") => {
                assert_eq!(patterns, Some("*.prod.example.com,*.stage.example.com"));
                trusted.push(key);
            }
            Some("@revoked") => {
                assert_eq!(patterns, Some("*"));
                revoked.push(key);
            }
            other => panic!("unexpected known_hosts line {line:?} ({other:?})"),
        }
    }
    (trusted, revoked)
}

fn trusted_user_keys(ca: &TestCa) -> Vec<KeyData> {
    let response = http::get(&format!("{}/v1/ca/trusted-keys", ca.url));
    assert_eq!(response.status, 200);
    response
        .text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| PublicKey::from_openssh(l).expect("key").key_data().clone())
        .collect()
}

/// `writ --config <the CA's config> admin ARGS…`
fn admin(ca: &TestCa, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("--config")
        .arg(ca.dir().join("writ.toml"))
        .arg("admin")
        .args(args)
        .env_remove("WRIT_CA_PASSPHRASE")
        .output()
        .expect("run writ admin")
}

fn admin_ok(ca: &TestCa, args: &[&str]) -> String {
    let out = admin(ca, args);
    assert!(
        out.status.success(),
        "writ admin {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue certificates for `keys` and `names` with a fresh token of host `host`.
fn issue(ca: &TestCa, idp: &TestIdp, host: &str, keys: &[String], names: &[&str]) -> Value {
    let response = request(
        ca,
        Some(&host_token(idp, host)),
        &json!({"public_keys": keys, "names": names}),
    );
    assert_eq!(response.status, 201, "{}", response.text);
    response.json()
}

fn certificate(issued: &Value, i: usize) -> Certificate {
    Certificate::from_openssh(
        issued["certificates"][i]["certificate"]
            .as_str()
            .expect("cert"),
    )
    .expect("an OpenSSH certificate")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn host_certificates_name_exactly_the_granted_names_and_verify_by_the_known_hosts_key() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = start(&idp);
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = [
        public_key(&ssh_keygen(
            dir.path(),
            "ssh_host_ed25519_key",
            &["-t", "ed25519"],
        )),
        public_key(&ssh_keygen(
            dir.path(),
            "ssh_host_ecdsa_key",
            &["-t", "ecdsa"],
        )),
    ];
    let names = ["web1.prod.example.com", "web1"];
    let before = now();
    let issued = issue(&ca, &idp, "web1", &keys, &names);
    let after = now();

    let (trusted, revoked) = known_hosts_keys(&known_hosts(&ca));
    assert_eq!(trusted.len(), 2, "the active and the next host CA key");
    assert!(revoked.is_empty());
    let user_keys = trusted_user_keys(&ca);
    assert!(
        trusted.iter().all(|k| !user_keys.contains(k)),
        "no host CA key is a user CA key"
    );
    let active = ca.state.host_keyring.current();
    let signer = active.signer();
    assert_eq!(issued["ca_fingerprint"], signer.fingerprint());
    let ttl = issued["ttl_seconds"].as_i64().expect("ttl");
    assert!((7 * 86_400 - 5..=7 * 86_400).contains(&ttl), "{ttl}");
    assert_eq!(issued["names"], json!(names));

    let mut serials = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let cert = certificate(&issued, i);
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.valid_principals(), names);
        assert_eq!(
            cert.public_key(),
            PublicKey::from_openssh(key).expect("key").key_data()
        );
        assert!(cert.critical_options().is_empty() && cert.extensions().is_empty());
        let after_skew = i64::try_from(cert.valid_after()).expect("time");
        let before_end = i64::try_from(cert.valid_before()).expect("time");
        assert!((before - 30..=after - 30).contains(&after_skew));
        assert!((before + 7 * 86_400..=after + 7 * 86_400).contains(&before_end));
        let signing = cert.signature_key().clone();
        assert!(
            trusted.contains(&signing),
            "signed by a key known-hosts lists"
        );
        assert!(!user_keys.contains(&signing), "never by the user CA key");
        cert.validate_at(
            u64::try_from(now()).expect("now"),
            &[signing.fingerprint(HashAlg::Sha256)],
        )
        .expect("the signature verifies");
        assert!(cert.key_id().contains("sub=host-web1"), "{}", cert.key_id());
        let serial = issued["certificates"][i]["serial"]
            .as_str()
            .expect("serial");
        assert_eq!(serial, cert.serial().to_string());
        serials.push(serial.to_owned());

        // OpenSSH reads it as a host certificate for those names.
        let path = write(
            dir.path(),
            &format!("cert{i}-cert.pub"),
            &cert.to_openssh().expect("text"),
        );
        let listing = Command::new("ssh-keygen")
            .arg("-L")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("ssh-keygen -L");
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(listing.contains("host certificate"), "{listing}");
        assert!(listing.contains("web1.prod.example.com"), "{listing}");
    }

    // One host_cert.issued record per certificate, naming serial, names and identity.
    let records = ca.audit_events("host_cert.issued");
    let recorded: Vec<String> = records
        .iter()
        .map(|r| r.entry.serial.clone().expect("serial"))
        .collect();
    assert_eq!(recorded, serials);
    for record in &records {
        assert_eq!(record.entry.hosts, names);
        assert_eq!(record.entry.subject.as_deref(), Some("host-web1"));
        assert_eq!(record.entry.policy.as_deref(), Some("hosts"));
    }
    let listed = admin_ok(&ca, &["host-cert", "list", "--host", "web1", "--json"]);
    let listed: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed["certificates"].as_array().expect("list").len(), 2);
}

#[test]
fn refusals_are_clear_audited_and_issue_nothing() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = start(&idp);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "host_key", &["-t", "ed25519"]));
    let body = |keys: Value, names: Value| json!({"public_keys": keys, "names": names});
    let cases: Vec<(String, Value, u16, &str)> = vec![
        // A name the host policy does not cover for this host.
        (
            host_token(&idp, "web1"),
            body(json!([key]), json!(["web2.prod.example.com"])),
            403,
            "host_not_allowed",
        ),
        // One covered, one not: nothing at all.
        (
            host_token(&idp, "web1"),
            body(json!([key]), json!(["web1", "db.prod.example.com"])),
            403,
            "host_not_allowed",
        ),
        // An agent's token: agent policies never grant host certificates.
        (
            idp.token(Key::Ed25519, "agent-1"),
            body(json!([key]), json!(["web1"])),
            403,
            "no_matching_policy",
        ),
        (
            host_token(&idp, "web1"),
            body(json!([key]), json!(["*.prod.example.com"])),
            400,
            "invalid_host_name",
        ),
        (
            host_token(&idp, "web1"),
            body(json!([key]), json!([])),
            400,
            "invalid_host_names",
        ),
        (
            host_token(&idp, "web1"),
            body(json!(["ssh-ed25519 not-base64"]), json!(["web1"])),
            400,
            "invalid_public_key",
        ),
        (
            host_token(&idp, "web1"),
            body(json!([]), json!(["web1"])),
            400,
            "invalid_public_keys",
        ),
        (
            host_token(&idp, "web1"),
            json!({"public_keys": [key], "names": ["web1"], "ttl_seconds": 60}),
            400,
            "invalid_json",
        ),
    ];
    for (token, body, status, code) in &cases {
        let response = request(&ca, Some(token), body);
        assert_eq!(response.status, *status, "{body}: {}", response.text);
        assert_eq!(response.error_code(), *code, "{body}");
    }
    let denied = ca.audit_events("host_cert.denied");
    assert_eq!(denied.len(), cases.len());
    for (record, (_, _, _, code)) in denied.iter().zip(&cases) {
        let reason = record.entry.reason.as_deref().unwrap_or_default();
        assert!(reason.starts_with(code), "{reason}");
    }
    assert!(ca.audit_events("host_cert.issued").is_empty());
    assert!(
        runtime()
            .block_on(ca.state.store.host_certificates(0, None))
            .expect("list")
            .is_empty()
    );

    // No token: 401 and token.rejected. A host's token opens no task either.
    let response = request(&ca, None, &body(json!([key]), json!(["web1"])));
    assert_eq!(response.status, 401);
    let response = ca.request_certificate(
        Some(&host_token(&idp, "web1")),
        &certificate_request(&key, &["deploy"], &["web1"], None),
    );
    assert_eq!(response.status, 403, "{}", response.text);
    // A token is used once.
    let token = host_token(&idp, "web1");
    let ok = request(&ca, Some(&token), &body(json!([key]), json!(["web1"])));
    assert_eq!(ok.status, 201, "{}", ok.text);
    let replay = request(&ca, Some(&token), &body(json!([key]), json!(["web1"])));
    assert_eq!(replay.status, 401, "{}", replay.text);
    assert_eq!(ca.audit_events("host_cert.issued").len(), 1);
}

#[test]
fn a_user_certificate_is_signed_only_by_the_user_key_and_a_host_one_only_by_the_host_key() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = start(&idp);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "key", &["-t", "ed25519"]));
    let user = ca.request_certificate(
        Some(&idp.token(Key::Ed25519, "agent-1")),
        &certificate_request(&key, &["deploy"], &["web1"], None),
    );
    assert_eq!(user.status, 201, "{}", user.text);
    let user_cert = Certificate::from_openssh(user.json()["certificate"].as_str().expect("cert"))
        .expect("cert");
    let host = issue(&ca, &idp, "web1", &[key], &["web1"]);
    let host_cert = certificate(&host, 0);
    let (host_trusted, _) = known_hosts_keys(&known_hosts(&ca));
    let user_trusted = trusted_user_keys(&ca);
    let user_signer = user_cert.signature_key().clone();
    let host_signer = host_cert.signature_key().clone();
    assert_eq!(user_cert.cert_type(), CertType::User);
    assert!(user_trusted.contains(&user_signer) && !host_trusted.contains(&user_signer));
    assert!(host_trusted.contains(&host_signer) && !user_trusted.contains(&host_signer));
    // TrustedUserCAKeys (the user bundle) and export-public never carry a host key.
    let exported = admin_ok(&ca, &["ca", "export-public"]);
    let exported_host = admin_ok(&ca, &["ca", "export-public", "--kind", "host"]);
    for key in &host_trusted {
        let line = PublicKey::from(key.clone()).to_openssh().expect("line");
        let base64 = line.split(' ').nth(1).expect("base64");
        assert!(!exported.contains(base64));
        assert!(exported_host.contains(base64));
    }
}

#[test]
fn host_ca_rotation_keeps_both_keys_trusted_and_revocations_reach_the_krl() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = start(&idp);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "k1", &["-t", "ed25519"]));
    let key2 = public_key(&ssh_keygen(dir.path(), "k2", &["-t", "ed25519"]));
    let user_before = trusted_user_keys(&ca);
    let first = issue(&ca, &idp, "web1", std::slice::from_ref(&key), &["web1"]);
    let old_signer = certificate(&first, 0).signature_key().clone();

    // next → active for the host keyring only (forced: the next key is brand new).
    let rotated = admin_ok(
        &ca,
        &["ca", "rotate", "--kind", "host", "--force", "--json"],
    );
    let rotated: Value = serde_json::from_str(&rotated).expect("json");
    let list: Value =
        serde_json::from_str(&admin_ok(&ca, &["ca", "list", "--kind", "host", "--json"]))
            .expect("json");
    let states: Vec<&str> = list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["state"].as_str().expect("state"))
        .collect();
    let mut states = states;
    states.sort_unstable();
    assert_eq!(states, ["active", "next", "retiring"]);
    assert_eq!(
        trusted_user_keys(&ca),
        user_before,
        "the user keyring did not move"
    );
    // The server follows within one maintenance round.
    let new_fingerprint = rotated["activated"]["fingerprint"]
        .as_str()
        .expect("fp")
        .to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ca.state.host_keyring.current().signer().fingerprint() != new_fingerprint {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never reloaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (trusted, _) = known_hosts_keys(&known_hosts(&ca));
    assert_eq!(trusted.len(), 3, "retiring, active and next");
    assert!(
        trusted.contains(&old_signer),
        "old certificates still verify"
    );
    let second = issue(&ca, &idp, "web1", std::slice::from_ref(&key2), &["web1"]);
    let new_signer = certificate(&second, 0).signature_key().clone();
    assert_ne!(new_signer, old_signer);
    assert!(trusted.contains(&new_signer));
    assert_eq!(second["ca_fingerprint"], new_fingerprint);

    // Revoke the first by serial, then everything naming web1: the KRL lists both serials.
    let third = issue(&ca, &idp, "web1", std::slice::from_ref(&key), &["web1"]);
    let serial = first["certificates"][0]["serial"].as_str().expect("serial");
    let revoked = admin_ok(&ca, &["host-cert", "revoke", serial, "--json"]);
    assert!(revoked.contains(serial), "{revoked}");
    let again = admin(&ca, &["host-cert", "revoke", serial]);
    assert!(!again.status.success(), "already revoked");
    admin_ok(
        &ca,
        &[
            "host-cert",
            "revoke",
            "--host",
            "web1",
            "--reason",
            "decommissioned",
        ],
    );
    assert_eq!(ca.audit_events("host_cert.revoked").len(), 3);

    let (status, krl) = http::get_bytes(&format!("{}/v1/krl", ca.url));
    assert_eq!(status, 200);
    let krl_path = dir.path().join("revoked.krl");
    std::fs::write(&krl_path, krl).expect("write KRL");
    let mut files = Vec::new();
    for (i, issued) in [&first, &second, &third].into_iter().enumerate() {
        let text = issued["certificates"][0]["certificate"]
            .as_str()
            .expect("cert");
        files.push(write(dir.path(), &format!("host{i}-cert.pub"), text));
    }
    let query = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(&krl_path)
        .args(&files)
        .output()
        .expect("ssh-keygen -Q");
    let stdout = String::from_utf8_lossy(&query.stdout);
    assert_eq!(stdout.matches("REVOKED").count(), 3, "{stdout}");

    // The audit chain still verifies, every kind of record included.
    admin_ok(&ca, &["audit", "verify"]);
    let keyring_records = ca.audit_events("ca.key.rotated");
    assert!(
        keyring_records.iter().any(|r| r
            .entry
            .reason
            .as_deref()
            .is_some_and(|t| t.starts_with("kind=host; "))),
        "the rotation record names the kind"
    );
}

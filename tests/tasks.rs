//! Task lifecycle over real HTTP: more certificates for a live task, completion, admin
//! revocation, single-certificate revocation, inspection, proof of possession made with
//! `ssh-keygen -Y sign`, and what the revocation feed, the KRL (checked with
//! `ssh-keygen -Q`) and the online authorize endpoint say afterwards.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};

use common::agents::{World, policies_with};
use common::ca::certificate_request;
use common::{http, now, public_key, ssh_keygen};
use serde_json::{Value, json};
use writ::audit::event;
use writ::revocation::feed;

impl World {
    fn get_task(&self, task_id: &str, token: &str) -> http::Response {
        self.get(&format!("/v1/tasks/{task_id}"), token)
    }

    /// The verified feed as a host would see it.
    fn feed(&self) -> feed::Feed {
        let response = http::get(&format!("{}/v1/revocations", self.ca.url));
        assert_eq!(response.status, 200, "{}", response.text);
        let signed = feed::parse(response.text.as_bytes()).expect("signed feed");
        let trusted: Vec<ssh_key::PublicKey> =
            http::get(&format!("{}/v1/ca/trusted-keys", self.ca.url))
                .text
                .lines()
                .map(|l| ssh_key::PublicKey::from_openssh(l).expect("key"))
                .collect();
        feed::verify(&signed, &trusted, now(), 120, 60)
            .expect("feed verifies against the trust bundle")
    }

    /// `ssh-keygen -Q` verdict of the CA's current KRL for a certificate.
    fn krl_revokes(&self, certificate: &str) -> bool {
        let krl = fetch_bytes(&format!("{}/v1/krl", self.ca.url));
        let krl_path = self.dir.path().join("revoked.krl");
        std::fs::write(&krl_path, krl).expect("write krl");
        let cert_path = self.dir.path().join("check-cert.pub");
        std::fs::write(&cert_path, certificate).expect("write cert");
        let out = Command::new("ssh-keygen")
            .arg("-Q")
            .arg("-f")
            .arg(&krl_path)
            .arg(&cert_path)
            .output()
            .expect("ssh-keygen -Q");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(1),
            "ssh-keygen -Q failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.contains("REVOKED")
    }

    fn authorize(&self, certificate: &str, login: &str, phase: &str) -> Value {
        let blob = certificate.split_whitespace().nth(1).expect("blob");
        let response = self.post(
            "/v1/authorize",
            &self.token("host:web-01"),
            json!({"login": login, "certificate": blob, "host": "web-01.prod.example.com", "phase": phase}),
        );
        assert_eq!(response.status, 200, "{}", response.text);
        response.json()
    }
}

fn fetch_bytes(url: &str) -> Vec<u8> {
    let mut response = ureq::get(url).call().expect("GET");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    response.body_mut().read_to_vec().expect("bytes")
}

#[test]
fn owner_renews_and_completes_and_everything_revokes() {
    let w = World::start("");
    let first = w.open_task();
    let task_id = first["task_id"].as_str().expect("task_id").to_owned();
    let cert1 = first["certificate"].as_str().expect("cert").to_owned();

    // Another certificate for a new key, with a fresh token of the same identity.
    let key2 = ssh_keygen(w.dir.path(), "agent2", &["-t", "ecdsa"]);
    let renewed = w.post(
        &format!("/v1/tasks/{task_id}/certificates"),
        &w.token("agent-1"),
        json!({"public_key": public_key(&key2), "ttl_seconds": 60}),
    );
    assert_eq!(renewed.status, 201, "{}", renewed.text);
    let renewed = renewed.json();
    assert_eq!(renewed["task_id"], task_id.as_str());
    assert_eq!(renewed["principals"], first["principals"]);
    assert_ne!(renewed["serial"], first["serial"]);
    let cert2 = renewed["certificate"].as_str().expect("cert").to_owned();

    // Someone else cannot renew, and cannot even see the task.
    let stranger = w.post(
        &format!("/v1/tasks/{task_id}/certificates"),
        &w.token("agent-2"),
        json!({"public_key": public_key(&w.key)}),
    );
    assert_eq!(stranger.status, 404, "{}", stranger.text);
    assert_eq!(w.get_task(&task_id, &w.token("agent-2")).status, 404);

    // Live: online check admits, the feed and the KRL do not list it.
    assert_eq!(w.authorize(&cert1, "deploy", "check")["allow"], true);
    assert!(!w.krl_revokes(&cert1));
    assert!(w.feed().revoked_tasks.is_empty());

    let view = w.get_task(&task_id, &w.token("agent-1"));
    assert_eq!(view.status, 200);
    let view = view.json();
    assert_eq!(view["state"], "active");
    assert_eq!(view["certificates"].as_array().expect("certs").len(), 2);

    // Complete.
    let done = w.post(
        &format!("/v1/tasks/{task_id}/complete"),
        &w.token("agent-1"),
        json!({"reason": "logs rotated"}),
    );
    assert_eq!(done.status, 200, "{}", done.text);
    let done = done.json();
    assert_eq!(done["state"], "completed");
    assert!(
        done["certificates"]
            .as_array()
            .expect("certs")
            .iter()
            .all(|c| c["revoked"] == true)
    );

    // Everything now refuses the task's certificates.
    let feed = w.feed();
    assert!(feed.revoked_tasks.iter().any(|t| t.task_id == task_id));
    assert_eq!(feed.revoked_serials.len(), 2);
    assert!(
        w.krl_revokes(&cert1),
        "KRL must list the completed task's first certificate"
    );
    assert!(
        w.krl_revokes(&cert2),
        "KRL must list the completed task's second certificate"
    );
    let answer = w.authorize(&cert1, "deploy", "check");
    assert_eq!(answer["allow"], false);
    assert_eq!(answer["reason"], "serial_revoked");

    // A completed task gets no more certificates, and cannot be completed twice.
    let late = w.post(
        &format!("/v1/tasks/{task_id}/certificates"),
        &w.token("agent-1"),
        json!({"public_key": public_key(&w.key)}),
    );
    assert_eq!(late.status, 409, "{}", late.text);
    assert_eq!(late.error_code(), "task_not_active");
    let again = w.post(
        &format!("/v1/tasks/{task_id}/complete"),
        &w.token("agent-1"),
        json!({}),
    );
    assert_eq!(again.status, 409);

    assert_eq!(w.ca.audit_events(event::TASK_COMPLETED).len(), 1);
    assert_eq!(w.ca.audit_events(event::CERT_REVOKED).len(), 2);
    assert_eq!(
        w.ca.audit_events(event::CERT_DENIED).len(),
        2,
        "stranger and late renewal"
    );
    assert_eq!(
        w.ca.audit_events(event::TASK_DENIED).len(),
        2,
        "the stranger's read and the second completion"
    );
    let log = w.ca.audit();
    assert_eq!(
        writ::audit::verify_chain(&log, writ::audit::GENESIS_HASH),
        Ok(())
    );
}

#[test]
fn only_admins_revoke_tasks() {
    let w = World::start("");
    let task = w.open_task();
    let task_id = task["task_id"].as_str().expect("task_id");
    let path = format!("/v1/tasks/{task_id}/revoke");

    let by_owner = w.post(&path, &w.token("agent-1"), json!({"reason": "oops"}));
    assert_eq!(by_owner.status, 403, "{}", by_owner.text);
    assert_eq!(by_owner.error_code(), "admin_required");
    let no_reason = w.post(&path, &w.token("admin-1"), json!({}));
    assert_eq!(no_reason.status, 400);
    assert_eq!(no_reason.error_code(), "reason_required");

    // Admins can see any task.
    assert_eq!(w.get_task(task_id, &w.token("admin-1")).status, 200);
    let revoked = w.post(&path, &w.token("admin-1"), json!({"reason": "incident 42"}));
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(revoked.json()["state"], "revoked");
    assert!(w.krl_revokes(task["certificate"].as_str().expect("cert")));
    let records = w.ca.audit_events(event::TASK_REVOKED);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].entry.subject.as_deref(), Some("admin-1"));
    assert_eq!(records[0].entry.reason.as_deref(), Some("incident 42"));
}

#[test]
fn a_single_certificate_can_be_revoked() {
    let w = World::start("");
    let task = w.open_task();
    let serial = task["serial"].as_str().expect("serial");
    let cert = task["certificate"].as_str().expect("cert");
    let response = w.post(
        &format!("/v1/certificates/{serial}/revoke"),
        &w.token("agent-1"),
        json!({"reason": "key leaked"}),
    );
    assert_eq!(response.status, 200, "{}", response.text);
    assert!(w.krl_revokes(cert));
    let feed = w.feed();
    assert!(feed.revoked_serials.iter().any(|s| s.serial == serial));
    assert!(
        feed.revoked_tasks.is_empty(),
        "the task itself stays active"
    );
    assert_eq!(
        w.authorize(cert, "deploy", "check")["reason"],
        "serial_revoked"
    );
    assert_eq!(
        w.post(
            "/v1/certificates/12345/revoke",
            &w.token("agent-1"),
            json!({})
        )
        .status,
        404
    );
}

/// Sign `message` with `ssh-keygen -Y sign` as an agent would.
fn ssh_keygen_sign(key: &Path, message: &[u8]) -> String {
    let dir = key.parent().expect("dir");
    let file = dir.join("pop-message");
    std::fs::write(&file, message).expect("write message");
    let _ = std::fs::remove_file(dir.join("pop-message.sig"));
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-Y",
            "sign",
            "-n",
            writ::task::possession::NAMESPACE,
            "-f",
        ])
        .arg(key)
        .arg(&file)
        .status()
        .expect("ssh-keygen -Y sign");
    assert!(status.success());
    std::fs::read_to_string(dir.join("pop-message.sig")).expect("signature")
}

/// The `Authorization` value of a proof of possession by `key`, the private key of the
/// certificate `cert_line`, for `POST path` with `body`.
fn pop_header(cert_line: &str, key: &Path, path: &str, body: &str) -> String {
    let cert_blob = <base64ct::Base64 as base64ct::Encoding>::decode_vec(
        cert_line.split_whitespace().nth(1).expect("blob"),
    )
    .expect("base64 certificate");
    let ts = now();
    let message = writ::task::possession::message("POST", path, ts, body.as_bytes());
    writ::task::possession::header(&cert_blob, ts, &ssh_keygen_sign(key, &message))
}

/// POST `body` to `url` with the `Authorization` value `authorization`.
fn post_authorized(url: &str, authorization: &str, body: &str) -> http::Response {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(url)
        .header("authorization", authorization)
        .header("content-type", "application/json")
        .send(body)
        .expect("POST");
    http::Response {
        status: r.status().as_u16(),
        www_authenticate: None,
        headers: Vec::new(),
        text: r.body_mut().read_to_string().expect("body"),
    }
}

impl World {
    /// Renew `task_id` by proof of possession of `cert_line` (whose private key is `key`).
    fn renew_by_pop(
        &self,
        task_id: &str,
        cert_line: &str,
        key: &Path,
        body: &Value,
    ) -> http::Response {
        let path = format!("/v1/tasks/{task_id}/certificates");
        let body = body.to_string();
        let header = pop_header(cert_line, key, &path, &body);
        post_authorized(&format!("{}{path}", self.ca.url), &header, &body)
    }
}

#[test]
fn proof_of_possession_replaces_a_fresh_token() {
    let w = World::start("");
    let task = w.open_task();
    let task_id = task["task_id"].as_str().expect("task_id");
    let cert_line = task["certificate"].as_str().expect("cert");
    let cert_blob = <base64ct::Base64 as base64ct::Encoding>::decode_vec(
        cert_line.split_whitespace().nth(1).expect("blob"),
    )
    .expect("base64 certificate");

    let path = format!("/v1/tasks/{task_id}/certificates");
    let body = json!({"public_key": public_key(&w.key), "ttl_seconds": 30}).to_string();
    let ts = now();
    let message = writ::task::possession::message("POST", &path, ts, body.as_bytes());
    let signature = ssh_keygen_sign(&w.key, &message);
    let header = writ::task::possession::header(&cert_blob, ts, &signature);

    let send = |header: &str, body: &str| post_with_authorization(&w, &path, header, body);
    let (status, text) = send(&header, &body);
    assert_eq!(status, 201, "{text}");
    // The same signature is accepted once.
    let (status, _) = send(&header, &body);
    assert_eq!(status, 401);
    // A signature over another body does not cover this one.
    let other = json!({"public_key": public_key(&w.key), "ttl_seconds": 31}).to_string();
    let (status, _) = send(
        &writ::task::possession::header(&cert_blob, ts, &ssh_keygen_sign(&w.key, &message)),
        &other,
    );
    assert_eq!(status, 401);
    // A key that is not the certificate's cannot sign for it.
    let intruder = ssh_keygen(w.dir.path(), "intruder", &["-t", "ed25519"]);
    let (status, _) = send(
        &writ::task::possession::header(&cert_blob, ts, &ssh_keygen_sign(&intruder, &message)),
        &body,
    );
    assert_eq!(status, 401);
    // An old timestamp is refused.
    let old = ts - 600;
    let old_message = writ::task::possession::message("POST", &path, old, body.as_bytes());
    let (status, _) = send(
        &writ::task::possession::header(&cert_blob, old, &ssh_keygen_sign(&w.key, &old_message)),
        &body,
    );
    assert_eq!(status, 401);
    assert_eq!(w.ca.audit_events(event::TOKEN_REJECTED).len(), 4);
}

/// POST `body` to the CA's `path` with `authorization`; status and body text.
fn post_with_authorization(
    w: &World,
    path: &str,
    authorization: &str,
    body: &str,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(&format!("{}{path}", w.ca.url))
        .header("authorization", authorization)
        .header("content-type", "application/json")
        .send(body)
        .expect("POST");
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().expect("body"),
    )
}

/// Open a task as `agent-1` for the public key of `key`; the task id and certificate blob.
fn open_task_for(w: &World, key: &Path) -> (String, Vec<u8>) {
    let response = w.ca.request_certificate(
        Some(&w.token("agent-1")),
        &common::ca::certificate_request(
            &public_key(key),
            &["deploy"],
            &["web-*.prod.example.com"],
            Some(120),
        ),
    );
    assert_eq!(response.status, 201, "{}", response.text);
    let task = response.json();
    let blob = <base64ct::Base64 as base64ct::Encoding>::decode_vec(
        task["certificate"]
            .as_str()
            .expect("cert")
            .split_whitespace()
            .nth(1)
            .expect("blob"),
    )
    .expect("base64 certificate");
    (task["task_id"].as_str().expect("task_id").to_owned(), blob)
}

/// The other ECDSA P-256 SSHSIG over the same data: (r, s) -> (r, n - s).
fn ecdsa_twin(pem: &str) -> String {
    use p256::elliptic_curve::ff::PrimeField;
    use ssh_key::{Mpint, SshSig};
    let sig = SshSig::from_pem(pem).expect("sshsig");
    let data = sig.signature_bytes();
    let r_len = u32::from_be_bytes(data[..4].try_into().expect("len")) as usize;
    let (r, rest) = data[4..].split_at(r_len);
    let s = Mpint::from_bytes(&rest[4..]).expect("s");
    let s = s.as_positive_bytes().expect("positive");
    let mut padded = [0u8; 32];
    padded[32 - s.len()..].copy_from_slice(s);
    let s = p256::Scalar::from_repr(padded.into()).expect("scalar");
    let twin = Mpint::from_positive_bytes(&(-s).to_repr()).expect("mpint");
    let mut bytes = Vec::new();
    for part in [r, twin.as_bytes()] {
        bytes.extend_from_slice(&u32::try_from(part.len()).expect("len").to_be_bytes());
        bytes.extend_from_slice(part);
    }
    let signature = ssh_key::Signature::new(sig.algorithm(), bytes).expect("signature");
    SshSig::new(
        sig.public_key().clone(),
        sig.namespace(),
        sig.hash_alg(),
        signature,
    )
    .expect("sshsig")
    .to_pem(ssh_key::LineEnding::LF)
    .expect("pem")
}

/// A proof of possession is once-only by what was signed: the ECDSA twin of a used
/// signature (r, n - s), which anyone who saw the header can derive, is the same proof.
/// (ssh-keygen signs with a high s about half the time, so neither form can be refused.)
#[test]
fn an_ecdsa_twin_of_a_proof_of_possession_is_the_same_proof() {
    let w = World::start("");
    let key = ssh_keygen(w.dir.path(), "ecdsa", &["-t", "ecdsa", "-b", "256"]);
    let (task_id, cert_blob) = open_task_for(&w, &key);
    let path = format!("/v1/tasks/{task_id}/certificates");
    let body = json!({"public_key": public_key(&key), "ttl_seconds": 30}).to_string();
    for (ts, first_the_twin) in [(now(), false), (now() - 1, true)] {
        let message = writ::task::possession::message("POST", &path, ts, body.as_bytes());
        let signature = ssh_keygen_sign(&key, &message);
        let twin = ecdsa_twin(&signature);
        assert_ne!(twin, signature);
        let (first, second) = if first_the_twin {
            (&twin, &signature)
        } else {
            (&signature, &twin)
        };
        let header = |sig: &str| writ::task::possession::header(&cert_blob, ts, sig);
        let (status, text) = post_with_authorization(&w, &path, &header(first), &body);
        assert_eq!(
            status, 201,
            "first form (twin first: {first_the_twin}): {text}"
        );
        let (status, text) = post_with_authorization(&w, &path, &header(second), &body);
        assert_eq!(
            status, 401,
            "second form (twin first: {first_the_twin}): {text}"
        );
        assert!(text.contains("token_replayed"), "{text}");
    }
    assert_eq!(w.ca.audit_events(event::CERT_ISSUED).len(), 3);
}

/// The signed timestamp is checked against the window without overflow: ts = i64::MIN +
/// now made `(ts - now).abs()` wrap around to a negative number, inside the window.
#[test]
fn a_proof_of_possession_timestamp_cannot_wrap_around_the_window() {
    let w = World::start("");
    let (task_id, cert_blob) = open_task_for(&w, &w.key);
    let path = format!("/v1/tasks/{task_id}/certificates");
    let body = json!({"public_key": public_key(&w.key), "ttl_seconds": 30}).to_string();
    // Relative to now as each request is made, and well outside the 60 s window: a
    // margin of one second let a slow machine's later request fall back inside it.
    let outside: [fn(i64) -> i64; 7] = [
        |t| i64::MIN + t,
        |_| i64::MIN,
        |_| i64::MIN + 1,
        |_| i64::MAX,
        |_| i64::MAX - 30,
        |t| t + 90,
        |t| t - 90,
    ];
    for at in outside {
        let ts = at(now());
        let message = writ::task::possession::message("POST", &path, ts, body.as_bytes());
        let header =
            writ::task::possession::header(&cert_blob, ts, &ssh_keygen_sign(&w.key, &message));
        let (status, text) = post_with_authorization(&w, &path, &header, &body);
        assert_eq!(status, 401, "ts = {ts}: {text}");
        assert!(text.contains("timestamp"), "ts = {ts}: {text}");
    }
    assert_eq!(w.ca.audit_events(event::TOKEN_REJECTED).len(), 7);
    // Control: inside the window.
    let ts = now();
    let message = writ::task::possession::message("POST", &path, ts, body.as_bytes());
    let header = writ::task::possession::header(&cert_blob, ts, &ssh_keygen_sign(&w.key, &message));
    let (status, text) = post_with_authorization(&w, &path, &header, &body);
    assert_eq!(status, 201, "{text}");
}

/// A renewal's `ttl_seconds` at the extremes of u64 is refused by the policy (403), never
/// wrapped into a short lifetime.
#[test]
fn extreme_renewal_ttls_are_refused_without_overflow() {
    let w = World::start("");
    let task = w.open_task();
    let path = format!(
        "/v1/tasks/{}/certificates",
        task["task_id"].as_str().expect("id")
    );
    for ttl in [u64::MAX, 1 << 63, (1 << 63) - 1, u64::MAX - 300] {
        let response = w.post(
            &path,
            &w.token("agent-1"),
            json!({"public_key": public_key(&w.key), "ttl_seconds": ttl}),
        );
        assert_eq!(response.status, 403, "ttl_seconds {ttl}: {}", response.text);
        assert_eq!(response.error_code(), "ttl_exceeds_max");
    }
}

#[test]
fn online_authorize_records_use_only_for_sessions() {
    let w = World::start("");
    let task = w.open_task();
    let cert = task["certificate"].as_str().expect("cert");
    assert_eq!(w.authorize(cert, "deploy", "check")["allow"], true);
    assert_eq!(
        w.authorize(cert, "deploy", "check")["principal"],
        format!("writ:{}:deploy", task["task_id"].as_str().expect("id"))
    );
    assert!(
        w.ca.audit_events(event::CERT_USED).is_empty(),
        "a check is not a use"
    );
    assert_eq!(w.authorize(cert, "deploy", "session")["allow"], true);
    let used = w.ca.audit_events(event::CERT_USED);
    assert_eq!(used.len(), 1);
    assert_eq!(
        used[0].entry.host.as_deref(),
        Some("web-01.prod.example.com")
    );
    assert_eq!(used[0].entry.serial.as_deref(), task["serial"].as_str());
    assert_eq!(
        w.authorize(cert, "root", "check")["reason"],
        "login_not_in_task"
    );

    // Agents are not hosts.
    let blob = cert.split_whitespace().nth(1).expect("blob");
    let as_agent = w.post(
        "/v1/authorize",
        &w.token("agent-1"),
        json!({"login": "deploy", "certificate": blob, "host": "web-01.prod.example.com"}),
    );
    assert_eq!(as_agent.status, 403);
    // A host cannot ask about hosts its policy does not cover.
    let elsewhere = w.post(
        "/v1/authorize",
        &w.token("host:web-01"),
        json!({"login": "deploy", "certificate": blob, "host": "db.staging.example.com"}),
    );
    assert_eq!(elsewhere.status, 403);
}

#[test]
fn operators_revoke_tasks_with_writ_admin_on_a_running_ca() {
    let w = World::start("");
    let task = w.open_task();
    let task_id = task["task_id"].as_str().expect("task_id");
    let config = w.ca.dir().join("writ.toml");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_writ"))
            .arg("admin")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("USER", "oncall-alice")
            .env_remove("SUDO_USER")
            .output()
            .expect("run writ admin")
    };
    let out = run(&[
        "task",
        "revoke",
        task_id,
        "--reason",
        "credential leak drill",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));

    // The running server sees it at once: feed, KRL, online check.
    assert!(w.feed().revoked_tasks.iter().any(|t| t.task_id == task_id));
    assert!(w.krl_revokes(task["certificate"].as_str().expect("cert")));
    let records = w.ca.audit_events(event::TASK_REVOKED);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].entry.issuer.as_deref(), Some("local-admin"));
    assert_eq!(records[0].entry.subject.as_deref(), Some("oncall-alice"));

    let again = run(&["task", "revoke", task_id, "--reason", "twice"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already revoked"));
    let unknown = run(&["task", "show", &"0".repeat(32)]);
    assert!(!unknown.status.success());
    let show = run(&["task", "show", task_id, "--json"]);
    assert!(show.status.success());
    let report: Value = serde_json::from_slice(&show.stdout).expect("json");
    assert_eq!(report["state"], "revoked");
}

/// A renewal carries at most what its task carries. The task is opened with a forced
/// command, a source address and no extensions under a policy that grants `permit-pty` and
/// `permit-port-forwarding`: a renewal that asks for an extension, another command, no
/// command or a wider source address is refused (403, audited); one that asks for nothing
/// gets exactly the task's restrictions; one that narrows the source address gets that.
#[test]
fn a_renewal_keeps_the_tasks_restrictions() {
    let w = World::with_policies(&policies_with(
        "extensions = [\"permit-pty\", \"permit-port-forwarding\"]",
    ));

    let mut open = certificate_request(
        &public_key(&w.key),
        &["deploy"],
        &["web-*.prod.example.com"],
        Some(120),
    );
    open["extensions"] = json!([]);
    open["force_command"] = json!("/usr/local/bin/rotate-logs");
    open["source_address"] = json!(["10.1.0.0/16"]);
    let first = w.ca.request_certificate(Some(&w.token("agent-1")), &open);
    assert_eq!(first.status, 201, "{}", first.text);
    let first = first.json();
    let task_id = first["task_id"].as_str().expect("task_id").to_owned();
    let cert = first["certificate"].as_str().expect("cert").to_owned();
    let options = |line: &str| {
        let cert = ssh_key::Certificate::from_openssh(line).expect("certificate");
        let critical: Vec<(String, String)> = cert
            .critical_options()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let permits: Vec<String> = cert
            .extensions()
            .keys()
            .filter(|k| k.starts_with("permit-"))
            .cloned()
            .collect();
        (critical, permits)
    };
    let task_options = vec![
        (
            "force-command".to_owned(),
            "/usr/local/bin/rotate-logs".to_owned(),
        ),
        ("source-address".to_owned(), "10.1.0.0/16".to_owned()),
    ];
    assert_eq!(options(&cert), (task_options.clone(), vec![]));

    let pk = public_key(&w.key);
    let wider = [
        (
            json!({"public_key": pk, "extensions": ["permit-pty"]}),
            "extension_not_in_task",
        ),
        (
            json!({"public_key": pk, "force_command": "/bin/sh"}),
            "force_command_not_in_task",
        ),
        (
            json!({"public_key": pk, "source_address": ["10.0.0.0/8"]}),
            "source_address_not_in_task",
        ),
        (
            json!({"public_key": pk, "source_address": ["10.1.0.0/16", "192.168.0.1"]}),
            "source_address_not_in_task",
        ),
    ];
    for (body, code) in &wider {
        let refused = w.renew_by_pop(&task_id, &cert, &w.key, body);
        assert_eq!(refused.status, 403, "{body}: {}", refused.text);
        assert_eq!(refused.error_code(), *code, "{body}");
    }
    // The task's restrictions hold whoever asks: a fresh token of the owner too.
    let by_token = w.post(
        &format!("/v1/tasks/{task_id}/certificates"),
        &w.token("agent-1"),
        json!({"public_key": pk, "extensions": ["permit-port-forwarding"]}),
    );
    assert_eq!(by_token.status, 403, "{}", by_token.text);
    assert_eq!(by_token.error_code(), "extension_not_in_task");
    let denied = w.ca.audit_events(event::CERT_DENIED);
    assert_eq!(denied.len(), wider.len() + 1, "every refusal is audited");
    for (record, code) in denied.iter().zip(
        wider
            .iter()
            .map(|(_, c)| *c)
            .chain(["extension_not_in_task"]),
    ) {
        assert_eq!(record.entry.task_id.as_deref(), Some(task_id.as_str()));
        assert!(
            record
                .entry
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(code)),
            "{:?}",
            record.entry.reason
        );
    }

    // Asking for nothing gets the task's restrictions, not the policy's defaults.
    let same = w.renew_by_pop(&task_id, &cert, &w.key, &json!({"public_key": pk}));
    assert_eq!(same.status, 201, "{}", same.text);
    let same = same.json()["certificate"]
        .as_str()
        .expect("cert")
        .to_owned();
    assert_eq!(options(&same), (task_options, vec![]));

    // Narrowing is allowed: a block inside the task's, the same command, no extensions.
    let narrower = w.renew_by_pop(
        &task_id,
        &same,
        &w.key,
        &json!({"public_key": pk, "source_address": ["10.1.2.0/24"],
                "force_command": "/usr/local/bin/rotate-logs", "extensions": []}),
    );
    assert_eq!(narrower.status, 201, "{}", narrower.text);
    let narrower = narrower.json()["certificate"]
        .as_str()
        .expect("cert")
        .to_owned();
    assert_eq!(
        options(&narrower),
        (
            vec![
                (
                    "force-command".to_owned(),
                    "/usr/local/bin/rotate-logs".to_owned()
                ),
                ("source-address".to_owned(), "10.1.2.0/24".to_owned()),
            ],
            vec![]
        )
    );
}

/// A task opened before migration 0009 has no recorded restrictions (NULL columns): its
/// renewals are bounded by its policy as it is now — what they got before, with the
/// policy's forced `source-address` — and a request for more than that is refused.
#[test]
fn a_task_without_recorded_restrictions_renews_within_its_policy() {
    let w = World::with_policies(&policies_with(
        "extensions = [\"permit-pty\"]\nsource_address = [\"10.0.0.0/8\"]",
    ));
    let first = w.open_task();
    let task_id = first["task_id"].as_str().expect("task_id").to_owned();
    let cert = first["certificate"].as_str().expect("cert").to_owned();
    let db = rusqlite::Connection::open(w.ca.db_path()).expect("open database");
    db.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    let changed = db
        .execute(
            "UPDATE tasks SET extensions = NULL, force_command = NULL, source_address = NULL \
             WHERE id = ?1",
            [&task_id],
        )
        .expect("as before 0009");
    assert_eq!(changed, 1);

    let pk = public_key(&w.key);
    let wider = w.renew_by_pop(
        &task_id,
        &cert,
        &w.key,
        &json!({"public_key": pk, "source_address": ["192.168.0.0/16"]}),
    );
    assert_eq!(wider.status, 403, "{}", wider.text);
    assert_eq!(wider.error_code(), "source_address_not_in_task");
    let renewed = w.renew_by_pop(&task_id, &cert, &w.key, &json!({"public_key": pk}));
    assert_eq!(renewed.status, 201, "{}", renewed.text);
    let renewed =
        ssh_key::Certificate::from_openssh(renewed.json()["certificate"].as_str().expect("cert"))
            .expect("certificate");
    assert_eq!(
        renewed
            .critical_options()
            .get("source-address")
            .map(String::as_str),
        Some("10.0.0.0/8")
    );
    assert!(renewed.critical_options().get("force-command").is_none());
    let permits: Vec<&String> = renewed
        .extensions()
        .keys()
        .filter(|k| k.starts_with("permit-"))
        .collect();
    assert_eq!(permits, ["permit-pty"]);
}

/// Revoking one certificate S while 16 renewals by proof of possession of S race it: no
/// certificate renewed from S is recorded after S's revocation (whatever the
/// interleaving), and every certificate renewed from S before it — directly or through
/// another renewal — is revoked with it, each with its own `cert.revoked` record naming
/// its parent. A certificate of the same task got with a fresh token is not.
#[test]
fn revoking_a_certificate_revokes_its_renewals_and_no_renewal_outruns_it() {
    let w = World::start("");
    let first = w.open_task();
    let task_id = first["task_id"].as_str().expect("task_id").to_owned();
    let s_cert = first["certificate"].as_str().expect("cert").to_owned();
    let s_serial = first["serial"].as_str().expect("serial").to_owned();

    // Before the race: a child of S (for key2), a grandchild through the child, and a
    // sibling got with a fresh token.
    let key2 = ssh_keygen(w.dir.path(), "agent2", &["-t", "ed25519"]);
    let child = w.renew_by_pop(
        &task_id,
        &s_cert,
        &w.key,
        &json!({"public_key": public_key(&key2)}),
    );
    assert_eq!(child.status, 201, "{}", child.text);
    let child = child.json();
    let child_cert = child["certificate"].as_str().expect("cert").to_owned();
    let child_serial = child["serial"].as_str().expect("serial").to_owned();
    let grandchild = w.renew_by_pop(
        &task_id,
        &child_cert,
        &key2,
        &json!({"public_key": public_key(&key2)}),
    );
    assert_eq!(grandchild.status, 201, "{}", grandchild.text);
    let grandchild = grandchild.json();
    let grandchild_cert = grandchild["certificate"].as_str().expect("cert").to_owned();
    let grandchild_serial = grandchild["serial"].as_str().expect("serial").to_owned();
    let sibling = w.post(
        &format!("/v1/tasks/{task_id}/certificates"),
        &w.token("agent-1"),
        json!({"public_key": public_key(&key2)}),
    );
    assert_eq!(sibling.status, 201, "{}", sibling.text);
    let sibling = sibling.json();
    let sibling_serial = sibling["serial"].as_str().expect("serial").to_owned();

    // 16 renewals by proof of possession of S (signed beforehand, each over its own body)
    // and the revocation of S, released together.
    let path = format!("/v1/tasks/{task_id}/certificates");
    let url = format!("{}{path}", w.ca.url);
    let renewals: Vec<(String, String)> = (0..16)
        .map(|i| {
            let body = json!({"public_key": public_key(&w.key), "ttl_seconds": 30 + i}).to_string();
            (pop_header(&s_cert, &w.key, &path, &body), body)
        })
        .collect();
    let start = Arc::new(Barrier::new(renewals.len() + 1));
    let racers: Vec<_> = renewals
        .into_iter()
        .map(|(header, body)| {
            let (start, url) = (start.clone(), url.clone());
            std::thread::spawn(move || {
                start.wait();
                post_authorized(&url, &header, &body)
            })
        })
        .collect();
    let revoke_url = format!("{}/v1/certificates/{s_serial}/revoke", w.ca.url);
    let owner = w.token("agent-1");
    let revoker = {
        let start = start.clone();
        std::thread::spawn(move || {
            start.wait();
            http::post(&revoke_url, Some(&owner), &json!({"reason": "key leaked"}))
        })
    };
    let revoked = revoker.join().expect("revoker");
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    let mut raced = Vec::new();
    for racer in racers {
        let answer = racer.join().expect("racer");
        match answer.status {
            201 => raced.push(answer.json()["serial"].as_str().expect("serial").to_owned()),
            401 => {}
            other => panic!("renewal answered {other}: {}", answer.text),
        }
    }

    let log = w.ca.audit();
    assert_eq!(
        writ::audit::verify_chain(&log, writ::audit::GENESIS_HASH),
        Ok(())
    );
    let seq_of = |name: &str, serial: &str| -> Vec<i64> {
        log.iter()
            .filter(|r| r.entry.event == name && r.entry.serial.as_deref() == Some(serial))
            .map(|r| r.seq)
            .collect()
    };
    let s_revoked = seq_of(event::CERT_REVOKED, &s_serial);
    assert_eq!(s_revoked.len(), 1, "S is revoked once");
    let s_revoked = s_revoked[0];
    // The invariant: nothing renewed from S is recorded after S's revocation, whether
    // found by the answers or by the audit log's own account of the parent.
    let from_s = format!("renewed_from: {s_serial}");
    let issued_from_s: Vec<&writ::audit::AuditRecord> = log
        .iter()
        .filter(|r| {
            r.entry.event == event::CERT_ISSUED && r.entry.reason.as_deref() == Some(&from_s)
        })
        .collect();
    for serial in &raced {
        let issued = seq_of(event::CERT_ISSUED, serial);
        assert_eq!(issued.len(), 1);
        assert!(
            issued[0] < s_revoked,
            "certificate {serial} renewed from S was recorded (seq {}) after S's revocation (seq {s_revoked})",
            issued[0]
        );
    }
    assert!(issued_from_s.iter().all(|r| r.seq < s_revoked));
    assert_eq!(
        issued_from_s.len(),
        raced.len() + 1,
        "the child and the racers that won"
    );

    // Everything renewed from S before its revocation is revoked with it, each naming its
    // parent; the sibling is not.
    let feed = w.feed();
    let in_feed = |serial: &str| feed.revoked_serials.iter().any(|s| s.serial == serial);
    let mut descendants: Vec<(String, String)> = vec![
        (child_serial.clone(), s_serial.clone()),
        (grandchild_serial.clone(), child_serial.clone()),
    ];
    descendants.extend(raced.iter().map(|s| (s.clone(), s_serial.clone())));
    for (serial, parent) in &descendants {
        assert!(
            in_feed(serial),
            "certificate {serial} renewed from S is still live"
        );
        let records: Vec<&writ::audit::AuditRecord> = log
            .iter()
            .filter(|r| {
                r.entry.event == event::CERT_REVOKED && r.entry.serial.as_deref() == Some(serial)
            })
            .collect();
        assert_eq!(records.len(), 1, "one cert.revoked for {serial}");
        assert!(records[0].seq > s_revoked);
        let reason = records[0].entry.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains(&format!("renewed_from: {parent}")),
            "{reason}"
        );
    }
    assert!(
        w.krl_revokes(&grandchild_cert),
        "the KRL lists the grandchild"
    );
    assert!(
        !in_feed(&sibling_serial),
        "a certificate got with a token stays live"
    );
    assert!(
        feed.revoked_tasks.is_empty(),
        "the task itself stays active"
    );

    // A revoked descendant proves nothing any more.
    let late = w.renew_by_pop(
        &task_id,
        &child_cert,
        &key2,
        &json!({"public_key": public_key(&key2)}),
    );
    assert_eq!(late.status, 401, "{}", late.text);
}

#[test]
fn only_the_owner_records_runs_and_only_what_the_task_covers_while_it_is_active() {
    let w = World::start("");
    let task = w.open_task();
    let task_id = task["task_id"].as_str().expect("task_id");
    let cert_line = task["certificate"].as_str().expect("cert");
    let path = format!("/v1/tasks/{task_id}/runs");
    let run = |host: &str, login: &str, command: &str| json!({"host": host, "login": login, "command": command, "purpose": "check disk"});
    let denied = || w.ca.audit_events(event::TASK_DENIED).len();

    // By proof of possession (as `writ mcp` does): recorded, durable before the answer.
    let body = run("web-01.prod.example.com", "deploy", "df -h\nuptime").to_string();
    let header = pop_header(cert_line, &w.key, &path, &body);
    let recorded = post_authorized(&format!("{}{path}", w.ca.url), &header, &body);
    assert_eq!(recorded.status, 201, "{}", recorded.text);
    let records = w.ca.audit_events(event::TASK_RUN);
    assert_eq!(records.len(), 1);
    let record = &records[0].entry;
    assert_eq!(record.task_id.as_deref(), Some(task_id));
    assert_eq!(record.subject.as_deref(), Some("agent-1"));
    assert_eq!(record.host.as_deref(), Some("web-01.prod.example.com"));
    assert_eq!(record.logins, ["deploy"]);
    assert_eq!(record.command.as_deref(), Some("df -h\nuptime"));
    assert_eq!(record.purpose.as_deref(), Some("check disk"));
    assert_eq!(record.serial.as_deref(), task["serial"].as_str());

    // Each refusal is a task.denied record and records no run.
    let refusals: [(&str, Value, u16, &str); 6] = [
        (
            "agent-2",
            run("web-01.prod.example.com", "deploy", "id"),
            404,
            "task_not_found",
        ),
        (
            "admin-1",
            run("web-01.prod.example.com", "deploy", "id"),
            403,
            "owner_required",
        ),
        (
            "agent-1",
            run("db-01.prod.example.com", "deploy", "id"),
            403,
            "host_not_in_task",
        ),
        (
            "agent-1",
            run("web-01.prod.example.com", "root", "id"),
            403,
            "login_not_in_task",
        ),
        (
            "agent-1",
            run("web-01.prod.example.com", "deploy", "a\0b"),
            400,
            "invalid_command",
        ),
        (
            "agent-1",
            run("web-01.prod.example.com", "deploy", &"x".repeat(5000)),
            400,
            "invalid_command",
        ),
    ];
    for (n, (subject, body, status, code)) in refusals.into_iter().enumerate() {
        let before = denied();
        let refused = w.post(&path, &w.token(subject), body);
        assert_eq!(refused.status, status, "{n}: {}", refused.text);
        assert_eq!(refused.error_code(), code, "{n}");
        assert_eq!(denied(), before + 1, "{n}: the refusal is recorded");
    }
    let unknown_field = w.post(
        &path,
        &w.token("agent-1"),
        json!({"host": "web-01.prod.example.com", "login": "deploy", "command": "id", "tool": "x"}),
    );
    assert_eq!(unknown_field.status, 400, "{}", unknown_field.text);

    // The owner's token records too; once the task is completed nothing is recorded.
    let by_token = w.post(
        &path,
        &w.token("agent-1"),
        run("web-01.prod.example.com", "deploy", "id"),
    );
    assert_eq!(by_token.status, 201, "{}", by_token.text);
    let done = w.post(
        &format!("/v1/tasks/{task_id}/complete"),
        &w.token("agent-1"),
        json!({}),
    );
    assert_eq!(done.status, 200, "{}", done.text);
    let late = w.post(
        &path,
        &w.token("agent-1"),
        run("web-01.prod.example.com", "deploy", "id"),
    );
    assert_eq!(late.status, 409, "{}", late.text);
    assert_eq!(w.ca.audit_events(event::TASK_RUN).len(), 2);
}

//! Hardening of what hosts fetch and keep, through the real HTTP API, the real
//! `writ-principals` binary and real `sshd`:
//! - the trust bundle, KRL and revocation feed are never cacheable, and the version-2 feed
//!   names the digests of exactly the bundle and KRL served with it;
//! - revocations stay published for the clock skew after the certificate's
//!   `valid_before` (and the task's expiry), so a host whose clock lags cannot admit;
//! - `check` and `sync` refuse a state directory or file that someone other than root
//!   (or `sync_user`) could have written.
//!
//! No sleeps as synchronisation: the one wait polls the clock with a deadline.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use common::ca::{TestCa, certificate_request};
use common::idp::{Key, TestIdp};
use common::sshd::{Sshd, SshdOptions, TestHost, ensure_user, require_root_and_sshd, ssh_login};
use common::{http, now, public_key, ssh_keygen};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ALICE: &str = "writ_alice";
const HOST_NAME: &str = "web-01.prod.example.com";
const OWNER: &str = "agent-1";
/// `nobody` on Debian.
const NOBODY: u32 = 65534;

fn policy() -> String {
    format!(
        "name = \"agents\"\nsubject = \"agent-*\"\nlogins = [\"{ALICE}\"]\nhosts = [\"*.prod.example.com\"]\n"
    )
}

/// GET `url`: status, `Cache-Control`, body.
fn get(url: &str) -> (u16, Option<String>, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().expect("GET");
    let cache_control = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.body_mut().read_to_vec().expect("body");
    (response.status().as_u16(), cache_control, body)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The (unverified) feed inside a signed feed document.
fn feed_of(document: &[u8]) -> Value {
    let signed: Value = serde_json::from_slice(document).expect("signed feed JSON");
    serde_json::from_str(signed["feed"].as_str().expect("feed string")).expect("feed JSON")
}

/// Open a task for `writ_alice` on the web hosts with `agent`'s key; returns the
/// response body.
fn issue(ca: &TestCa, idp: &TestIdp, key: &Path, task_ttl: u64, cert_ttl: Option<u64>) -> Value {
    let mut request = certificate_request(
        &public_key(key),
        &[ALICE],
        &["web-*.prod.example.com"],
        cert_ttl,
    );
    request["task"]["ttl_seconds"] = task_ttl.into();
    let response = ca.request_certificate(Some(&idp.token(Key::Rsa, OWNER)), &request);
    assert_eq!(response.status, 201, "{}", response.text);
    response.json()
}

#[test]
fn revocation_documents_are_never_cached_and_the_feed_binds_them() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::with_policy(&idp, "", &policy());
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let issued = issue(&ca, &idp, &key, 900, None);
    let task_id = issued["task_id"].as_str().expect("task_id");
    let completed = http::post(
        &format!("{}/v1/tasks/{task_id}/complete", ca.url),
        Some(&idp.token(Key::Rsa, OWNER)),
        &json!({}),
    );
    assert_eq!(completed.status, 200, "{}", completed.text);

    for path in [
        "/v1/ca/trusted-keys",
        "/v1/krl",
        "/v1/revocations",
        "/v1/revocations?version=2",
    ] {
        let (status, cache_control, _) = get(&format!("{}{path}", ca.url));
        assert_eq!(status, 200, "{path}");
        assert_eq!(cache_control.as_deref(), Some("no-store"), "{path}");
    }

    // Version 2 names the bundle and the KRL it was published with…
    let (_, _, document) = get(&format!("{}/v1/revocations?version=2", ca.url));
    let feed = feed_of(&document);
    assert_eq!(feed["version"], 2);
    let (_, _, bundle) = get(&format!("{}/v1/ca/trusted-keys", ca.url));
    assert_eq!(
        feed["binding"]["trusted_keys_sha256"],
        sha256_hex(&bundle).as_str()
    );
    let krl_url = format!(
        "{}/v1/krl?sequence={}&issued_at={}",
        ca.url, feed["sequence"], feed["issued_at"]
    );
    let (status, cache_control, krl) = get(&krl_url);
    assert_eq!((status, cache_control.as_deref()), (200, Some("no-store")));
    assert_eq!(feed["binding"]["krl_sha256"], sha256_hex(&krl).as_str());
    assert!(krl.starts_with(b"SSHKRL\n\0"));
    let serial: u64 = issued["serial"]
        .as_str()
        .expect("serial")
        .parse()
        .expect("decimal");
    assert!(
        krl.windows(8).any(|w| w == serial.to_be_bytes()),
        "the bound KRL revokes the completed task's certificate"
    );

    // …version 1 (the default, for hosts that predate the binding) is unchanged.
    let (_, _, document) = get(&format!("{}/v1/revocations", ca.url));
    let v1 = feed_of(&document);
    assert_eq!(v1["version"], 1);
    assert!(v1.get("binding").is_none(), "{v1}");

    // The KRL of a snapshot is only built near now, and only with both values.
    for query in [
        "?sequence=1",
        "?issued_at=1",
        "?sequence=1&issued_at=1",
        "?sequence=-1&issued_at=0",
        "?sequence=x&issued_at=1",
    ] {
        let response = http::get(&format!("{}/v1/krl{query}", ca.url));
        assert_eq!(response.status, 400, "{query}: {}", response.text);
    }
    let response = http::get(&format!("{}/v1/revocations?version=3", ca.url));
    assert_eq!(response.status, 400, "{}", response.text);
    assert_eq!(response.error_code(), "unsupported_feed_version");
}

#[test]
fn revocations_outlive_validity_by_the_clock_skew() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::with_policy(&idp, "", &policy());
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    // A one-second task and certificate, completed at once.
    let issued = issue(&ca, &idp, &key, 1, Some(1));
    let task_id = issued["task_id"].as_str().expect("task_id").to_owned();
    let serial = issued["serial"].as_str().expect("serial").to_owned();
    let completed = http::post(
        &format!("{}/v1/tasks/{task_id}/complete", ca.url),
        Some(&idp.token(Key::Rsa, OWNER)),
        &json!({}),
    );
    assert_eq!(completed.status, 200, "{}", completed.text);
    let valid_before = time::OffsetDateTime::parse(
        issued["valid_before"].as_str().expect("valid_before"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339")
    .unix_timestamp();

    // Once the certificate and the task have ended by the CA's clock…
    let deadline = Instant::now() + Duration::from_secs(10);
    while now() <= valid_before + 1 {
        assert!(Instant::now() < deadline, "the clock did not advance");
        thread::sleep(Duration::from_millis(50));
    }
    // …a host whose clock is up to 60 s behind still sees the certificate as valid, so
    // the feed and the KRL must still list it (for well under 60 s more).
    let (_, _, document) = get(&format!("{}/v1/revocations?version=2", ca.url));
    let feed = feed_of(&document);
    assert!(
        feed["revoked_serials"]
            .as_array()
            .expect("serials")
            .iter()
            .any(|s| s["serial"] == serial.as_str()),
        "serial {serial} dropped at valid_before: {feed}"
    );
    assert!(
        feed["revoked_tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .any(|t| t["task_id"] == task_id.as_str()),
        "task {task_id} dropped at its expiry: {feed}"
    );
    let (_, _, krl) = get(&format!("{}/v1/krl", ca.url));
    let serial: u64 = serial.parse().expect("decimal");
    assert!(
        krl.windows(8).any(|w| w == serial.to_be_bytes()),
        "the KRL dropped serial {serial} at valid_before"
    );
}

/// A host directory synced from a real CA, with an sshd and a certificate it admits.
struct Host {
    _idp: TestIdp,
    ca: TestCa,
    host: TestHost,
    sshd: Sshd,
    _dir: tempfile::TempDir,
    key: PathBuf,
    cert: PathBuf,
    blob: String,
}

fn host_config(ca_url: &str, host: &TestHost, extra: &str) -> String {
    format!(
        "ca_url = \"{ca_url}\"\nhost_name = \"{HOST_NAME}\"\nstate_dir = \"{state}\"\n{extra}",
        state = host.state_dir().display()
    )
}

impl Host {
    fn new() -> Host {
        require_root_and_sshd();
        ensure_user(ALICE);
        let idp = TestIdp::start(&[Key::Rsa]);
        let ca = TestCa::with_policy(&idp, "", &policy());
        let host = TestHost::new(common::writ_principals());
        host.write_host_config(&host_config(&ca.url, &host, ""));
        let out = sync(&host);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sshd = Sshd::start(&host, SshdOptions::default());
        let dir = tempfile::tempdir().expect("tempdir");
        let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
        let issued = issue(&ca, &idp, &key, 900, None);
        let text = issued["certificate"].as_str().expect("certificate");
        let cert = dir.path().join("agent-cert.pub");
        fs::write(&cert, format!("{text}\n")).expect("write certificate");
        Host {
            _idp: idp,
            blob: text.split_whitespace().nth(1).expect("blob").to_owned(),
            ca,
            host,
            sshd,
            _dir: dir,
            key,
            cert,
        }
    }

    /// `writ-principals check` as sshd runs it.
    fn check(&self) -> Output {
        Command::new(self.host.principals_bin())
            .args(["check", "--config"])
            .arg(self.host.host_config_path())
            .args(["--", ALICE, &self.blob])
            .output()
            .expect("run writ-principals check")
    }

    fn login(&self) -> bool {
        ssh_login(self.sshd.port(), ALICE, &self.key, Some(&self.cert)).success
    }

    fn state_files(&self) -> Vec<Vec<u8>> {
        ["trusted_user_ca_keys", "revoked.krl", "revocations.json"]
            .iter()
            .map(|f| fs::read(self.host.state_dir().join(f)).expect("state file"))
            .collect()
    }

    /// `check` denies (nothing on stdout) and `sync` refuses (writing nothing), naming
    /// `why` in its message.
    fn assert_refused(&self, what: &str, why: &str) {
        let out = self.check();
        assert!(!out.status.success(), "{what}: check admitted");
        assert!(out.stdout.is_empty(), "{what}: check printed something");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("insecure_state"), "{what}: {stderr}");
        let before = self.state_files();
        let out = sync(&self.host);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: sync went ahead");
        assert!(stderr.contains(why), "{what}: {stderr}");
        assert!(self.state_files() == before, "{what}: sync wrote");
    }
}

fn sync(host: &TestHost) -> Output {
    Command::new(host.principals_bin())
        .args(["sync", "--config"])
        .arg(host.host_config_path())
        .output()
        .expect("run writ-principals sync")
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), None)
        .unwrap_or_else(|e| panic!("chown {uid} {}: {e}", path.display()));
}

#[test]
fn check_and_sync_refuse_state_others_could_have_written() {
    let h = Host::new();
    let state = h.host.state_dir();
    let trusted = state.join("trusted_user_ca_keys");
    let feed = state.join("revocations.json");
    assert!(
        h.check().status.success(),
        "control: a root-owned 0755 state"
    );
    assert!(h.login(), "control: login");

    // Group- or world-writable, the directory or a file in it.
    for (path, mode, good) in [
        (&state, 0o777, 0o755),
        (&state, 0o1777, 0o755),
        (&state, 0o775, 0o755),
        (&trusted, 0o666, 0o644),
        (&trusted, 0o664, 0o644),
        (&feed, 0o646, 0o644),
    ] {
        chmod(path, mode);
        h.assert_refused(
            &format!("{} mode {mode:o}", path.display()),
            "writable by group or others",
        );
        chmod(path, good);
    }

    // Owned by another user (`nobody`), the directory or a file.
    for path in [&trusted, &feed, &state] {
        chown(path, NOBODY);
        h.assert_refused(
            &format!("{} owned by nobody", path.display()),
            "owned by uid 65534",
        );
        chown(path, 0);
    }

    // Through sshd: a world-writable state directory refuses the login.
    chmod(&state, 0o777);
    let mark = h.sshd.log().len();
    assert!(!h.login(), "login with a world-writable state directory");
    let log = h.sshd.log()[mark..].to_owned();
    assert!(
        log.contains("AuthorizedPrincipalsCommand") && log.contains("failed, status 1"),
        "writ-principals refused the login: {log}"
    );
    chmod(&state, 0o755);
    assert!(h.login(), "control: login again");

    // A state directory run by a dedicated sync user is trusted once host.toml names it.
    for path in [&state, &trusted, &feed] {
        chown(path, NOBODY);
    }
    h.assert_refused("owned by nobody, no sync_user", "owned by uid 65534");
    h.host
        .write_host_config(&host_config(&h.ca.url, &h.host, "sync_user = \"nobody\"\n"));
    let out = h.check();
    assert!(
        out.status.success(),
        "sync_user = nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h.login(), "sync_user = nobody: login");
}
